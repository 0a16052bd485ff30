#!/usr/bin/env bash
# Loads nginx (1 worker), haproxy (nbthread 1) and meridian (workers: 1) in front of the same
# nginx upstream with wrk, in alternation, and prints median requests/s, median p99 and ratios.
#
# usage: bench/proxy.sh [BUILD_DIR]      env: DURATION=5 ROUNDS=3 CONNECTIONS=50
set -euo pipefail

build_dir=${1:-build}
meridian="$build_dir/bin/meridian"
duration=${DURATION:-5}
rounds=${ROUNDS:-3}
connections=${CONNECTIONS:-50}

for tool in nginx haproxy wrk python3; do
  if ! command -v "$tool" >/dev/null; then
    echo "bench/proxy.sh: $tool is missing; install with: MERIDIAN_BENCH=1 scripts/setup.sh" >&2
    exit 1
  fi
done
[[ -x "$meridian" ]] || { echo "bench/proxy.sh: $meridian not built (make build)" >&2; exit 1; }

tmp=$(mktemp -d /tmp/meridian-bench.XXXXXX)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$tmp"
}
trap cleanup EXIT INT TERM

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}
upstream_port=$(free_port)
nginx_port=$(free_port)
haproxy_port=$(free_port)
meridian_port=$(free_port)
admin_port=$(free_port)

nginx_common="pid $tmp/PID.pid; error_log $tmp/PID.err; daemon off; worker_processes 1;
events { worker_connections 4096; }"
temp_paths="client_body_temp_path $tmp; proxy_temp_path $tmp; fastcgi_temp_path $tmp;
  uwsgi_temp_path $tmp; scgi_temp_path $tmp;"

cat > "$tmp/upstream.conf" <<CONF
${nginx_common//PID/upstream}
http { access_log off; keepalive_requests 1000000; $temp_paths
  server { listen 127.0.0.1:$upstream_port; location / { return 200 "hello world\n"; } } }
CONF
cat > "$tmp/nginx.conf" <<CONF
${nginx_common//PID/nginx}
http { access_log off; keepalive_requests 1000000; $temp_paths
  upstream up { server 127.0.0.1:$upstream_port; keepalive 64; }
  server { listen 127.0.0.1:$nginx_port;
    location / { proxy_pass http://up; proxy_http_version 1.1; proxy_set_header Connection ""; } } }
CONF
cat > "$tmp/haproxy.cfg" <<CONF
global
  nbthread 1
  maxconn 4096
defaults
  mode http
  timeout connect 5s
  timeout client 30s
  timeout server 30s
  option http-keep-alive
  http-reuse always
frontend f
  bind 127.0.0.1:$haproxy_port
  default_backend b
backend b
  server u1 127.0.0.1:$upstream_port
CONF
cat > "$tmp/meridian.yaml" <<CONF
node: {id: bench, region: local, data_dir: $tmp/meridian, workers: 1}
listen: {proxy: 127.0.0.1:$meridian_port, admin: 127.0.0.1:$admin_port}
log: {level: warn, access_log: {enabled: false}}
upstreams:
  - name: up
    targets: [127.0.0.1:$upstream_port]
routes:
  - name: all
    match: {path_prefix: /}
    upstream: up
CONF

nginx -p "$tmp" -c "$tmp/upstream.conf" & pids+=($!)
nginx -p "$tmp" -c "$tmp/nginx.conf" & pids+=($!)
haproxy -f "$tmp/haproxy.cfg" 2>"$tmp/haproxy.err" & pids+=($!)
"$meridian" run --config "$tmp/meridian.yaml" 2>"$tmp/meridian.log" & pids+=($!)

declare -A port=([nginx]=$nginx_port [haproxy]=$haproxy_port [meridian]=$meridian_port)
for name in upstream nginx haproxy meridian; do
  p=${port[$name]:-$upstream_port}
  for _ in $(seq 100); do
    curl -sf -o /dev/null "http://127.0.0.1:$p/" && break
    sleep 0.05
  done
  curl -sf -o /dev/null "http://127.0.0.1:$p/" || { echo "$name did not come up" >&2; cat "$tmp"/*.err "$tmp/meridian.log" >&2 || true; exit 1; }
done

# Converts wrk's latency ("812.00us", "1.56ms", "1.02s") to milliseconds.
to_ms() {
  awk -v v="$1" 'BEGIN { n = v + 0; if (v ~ /us$/) n /= 1000; else if (v ~ /ms$/) n = n; else if (v ~ /s$/) n *= 1000; printf "%.3f", n }'
}

declare -A rps p99
names=(nginx haproxy meridian)
echo "wrk -t1 -c$connections -d${duration}s, $rounds rounds, order rotated per round"
for ((r = 0; r < rounds; r++)); do
  for ((i = 0; i < 3; i++)); do
    name=${names[$(((i + r) % 3))]}
    out=$(wrk -t1 -c"$connections" -d"${duration}s" --latency "http://127.0.0.1:${port[$name]}/")
    req=$(awk '/Requests\/sec/ {print $2}' <<<"$out")
    lat=$(to_ms "$(awk '$1 == "99%" {print $2}' <<<"$out")")
    errors=$(awk '/Non-2xx|Socket errors/ {print}' <<<"$out")
    printf '  round %d  %-9s %10s req/s  p99 %7s ms  %s\n' $((r + 1)) "$name" "$req" "$lat" "$errors"
    rps[$name]+="$req "
    p99[$name]+="$lat "
  done
done

median() { tr ' ' '\n' <<<"$1" | grep -v '^$' | sort -g | awk '{a[NR]=$1} END {print (NR%2) ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2}'; }
echo
printf '%-9s %12s %10s\n' proxy "req/s (med)" "p99 ms"
for name in "${names[@]}"; do

  printf '%-9s %12.0f %10.3f\n' "$name" "$(median "${rps[$name]}")" "$(median "${p99[$name]}")"
done
mr=$(median "${rps[meridian]}"); mp=$(median "${p99[meridian]}")
for other in nginx haproxy; do
  awk -v a="$mr" -v b="$(median "${rps[$other]}")" -v c="$mp" -v d="$(median "${p99[$other]}")" -v o="$other" \
    'BEGIN { printf "meridian/%-8s req/s %.2fx   p99 %.2fx\n", o, a / b, c / d }'
done
