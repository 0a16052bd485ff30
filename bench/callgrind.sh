#!/usr/bin/env bash
# CPU cost per proxied request as user-space instructions, under valgrind --tool=callgrind:
# the difference between two runs of N1 and N2 requests over one keep-alive connection, divided
# by N2-N1 (start-up and exit cancel out). Repeatable, unlike wall-clock figures.
# usage: bench/callgrind.sh [BUILD_DIR]     env: N1=2000 N2=6000
set -euo pipefail
build_dir=${1:-build}
meridian="$build_dir/bin/meridian"
n1=${N1:-2000}
n2=${N2:-6000}
here=$(cd "$(dirname "$0")" && pwd)
for tool in nginx valgrind callgrind_annotate python3; do
  command -v "$tool" >/dev/null || { echo "callgrind.sh: $tool missing (MERIDIAN_BENCH=1 scripts/setup.sh)" >&2; exit 1; }
done
tmp=$(mktemp -d /tmp/meridian-callgrind.XXXXXX)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$tmp"; }
trap cleanup EXIT INT TERM
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
up=$(free_port); proxy=$(free_port); admin=$(free_port)
cat > "$tmp/upstream.conf" <<CONF
pid $tmp/up.pid; error_log $tmp/up.err; daemon off; worker_processes 1;
events { worker_connections 1024; }
http { access_log off; keepalive_requests 1000000; client_body_temp_path $tmp; proxy_temp_path $tmp;
  fastcgi_temp_path $tmp; uwsgi_temp_path $tmp; scgi_temp_path $tmp;
  server { listen 127.0.0.1:$up; location / { return 200 "hello world\n"; } } }
CONF
cat > "$tmp/m.yaml" <<CONF
node: {id: cg, region: local, data_dir: $tmp/data, workers: 1}
listen: {proxy: 127.0.0.1:$proxy, admin: 127.0.0.1:$admin}
log: {level: warn}
upstreams: [{name: up, targets: ["127.0.0.1:$up"]}]
routes: [{name: all, match: {path_prefix: /}, upstream: up}]
CONF
nginx -p "$tmp" -c "$tmp/upstream.conf" & pids+=($!)

instructions() {  # N -> total Ir of one meridian run serving N requests
  local out="$tmp/cg.$1"
  valgrind --tool=callgrind --callgrind-out-file="$out" "$meridian" run --config "$tmp/m.yaml" 2>"$tmp/vg.$1.log" &
  local pid=$!
  for _ in $(seq 200); do curl -sf -o /dev/null "http://127.0.0.1:$proxy/" && break; sleep 0.1; done
  python3 "$here/keepalive_client.py" "$proxy" "$1"
  kill -TERM "$pid"; wait "$pid" || true
  callgrind_annotate "$out" 2>/dev/null | awk '/PROGRAM TOTALS/ && !done {gsub(",", "", $1); print $1; done = 1}'
}
a=$(instructions "$n1")
b=$(instructions "$n2")
echo "meridian: $(( (b - a) / (n2 - n1) )) instructions per proxied request (callgrind, $n1 vs $n2 requests)"
