# shellcheck shell=bash disable=SC2154  # bench_name and tmp come from the sourcing script
# Helpers shared by bench/proxy.sh and bench/callgrind.sh; sourced, not run.
# The caller sets `set -euo pipefail`, `bench_name` (for messages) and `tmp` (a scratch directory).

bench_pids=()

# Fails with an install hint unless every named command exists.
bench_require() {
  local tool missing=()
  for tool in "$@"; do command -v "$tool" >/dev/null || missing+=("$tool"); done
  if ((${#missing[@]} > 0)); then
    echo "$bench_name: missing ${missing[*]}; install them with: MERIDIAN_BENCH=1 scripts/setup.sh" >&2
    exit 1
  fi
}

# Prints N distinct loopback ports from the kernel's ephemeral range that are free right now: the
# sockets are bound to port 0 and all held open until every port is chosen, so none repeats.
bench_free_ports() {
  python3 - "$1" <<'PY'
import socket, sys
socks = []
for _ in range(int(sys.argv[1])):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    socks.append(s)
print(" ".join(str(s.getsockname()[1]) for s in socks))
PY
}

# Starts a command in the background, its stdout and stderr in $tmp/NAME.log; remembers its pid.
bench_start() {
  local name=$1
  shift
  "$@" >"$tmp/$name.log" 2>&1 &
  bench_pids+=($!)
}

# Stops every process bench_start started: SIGTERM, up to 5 s to exit, then SIGKILL.
bench_stop_all() {
  local p
  for p in "${bench_pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  for _ in $(seq 50); do
    local alive=0
    for p in "${bench_pids[@]}"; do kill -0 "$p" 2>/dev/null && alive=1; done
    ((alive)) || break
    sleep 0.1
  done
  for p in "${bench_pids[@]}"; do kill -KILL "$p" 2>/dev/null || true; done
  for p in "${bench_pids[@]}"; do wait "$p" 2>/dev/null || true; done
  bench_pids=()
}

# Waits up to 5 s until http://127.0.0.1:PORT/ answers 200 with the upstream's "hello world" body
# (HEADER, optional: one more request header line, e.g. the bearer token a route requires).
bench_wait_hello() {
  local port=$1 body
  local header=()
  [[ -n "${2:-}" ]] && header=(-H "$2")  # e.g. the bearer token a route requires
  for _ in $(seq 100); do
    body=$(curl -s --max-time 1 "${header[@]}" "http://127.0.0.1:$port/" 2>/dev/null || true)
    [[ "$body" == "hello world" ]] && return 0
    sleep 0.05
  done
  return 1
}

# Writes an nginx config to FILE: daemon off, one worker, everything writable kept in $tmp.
# HTTP_BODY is the inside of the http {} block.
bench_nginx_conf() {
  local file=$1 name=$2 http_body=$3
  cat >"$file" <<CONF
daemon off;
worker_processes 1;
pid $tmp/$name.pid;
error_log $tmp/$name.error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  client_body_temp_path $tmp/$name.client_body;
  proxy_temp_path $tmp/$name.proxy;
  fastcgi_temp_path $tmp/$name.fastcgi;
  uwsgi_temp_path $tmp/$name.uwsgi;
  scgi_temp_path $tmp/$name.scgi;
$http_body
}
CONF
}

# Writes the upstream nginx config: `return 200 "hello world\n"` (12 bytes) on PORT.
bench_upstream_conf() {
  bench_nginx_conf "$1" upstream "  keepalive_requests 100000;
  server {
    listen 127.0.0.1:$2;
    location / { return 200 \"hello world\\n\"; }
  }"
}

# Writes a meridian config: one worker, one prefix route / to the upstream on UPSTREAM_PORT.
# UPSTREAM_EXTRA and ROUTE_EXTRA (optional) are more keys of the upstream and of the route, one
# "key: value" a line (e.g. "protocol: h2c", "websocket: true").
bench_meridian_conf() {
  local file=$1 proxy_port=$2 admin_port=$3 upstream_port=$4 upstream_extra=${5:-} route_extra=${6:-}
  # shellcheck disable=SC2001  # sed indents every line of a multi-line value
  {
    cat <<CONF
node: {id: bench, region: local, data_dir: $tmp/meridian-data, workers: 1}
listen: {proxy: 127.0.0.1:$proxy_port, admin: 127.0.0.1:$admin_port}
log: {level: warn, access_log: {enabled: false}}
upstreams:
  - name: up
    targets: [127.0.0.1:$upstream_port]
CONF
    [[ -z "$upstream_extra" ]] || sed 's/^/    /' <<<"$upstream_extra"
    cat <<CONF
routes:
  - name: all
    match: {path_prefix: /}
    upstream: up
CONF
    [[ -z "$route_extra" ]] || sed 's/^/    /' <<<"$route_extra"
  } >"$file"
}

# Compiles SRC into BIN with g++ -O2 (and the flags after them) when BIN is missing or older
# than SRC: the benchmarks' own helper programs, outside CMake.
bench_compile() {
  local bin=$1 src=$2
  shift 2
  [[ -x "$bin" && ! "$bin" -ot "$src" ]] && return 0
  mkdir -p "$(dirname "$bin")"
  echo "$bench_name: compiling $bin" >&2
  nice g++ -std=c++17 -O2 -o "$bin.tmp" "$src" "$@"
  mv "$bin.tmp" "$bin"
}
