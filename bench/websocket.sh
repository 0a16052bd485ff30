#!/usr/bin/env bash
# WebSocket echo round trips side by side: the same client straight to an echo origin (direct, the
# ceiling without a proxy), through nginx (1 worker, proxy_http_version 1.1 and the Upgrade and
# Connection headers set) and through meridian (workers: 1, a route with websocket: true), all
# reaching the same origin. Origin and client are bench/ws_echo.cc (Boost.Beast, one thread each),
# compiled here with g++ into BUILD_DIR/bench-bin when missing or older than their source (not part
# of CMake). The client opens CONNECTIONS connections and on each ping-pongs SIZE-byte binary
# messages as fast as the echoes come back, checking every echo. Rounds rotate the order; prints
# the median messages/s (round trips) per path, the CPU the proxy, the origin and the client used
# per second of the run (to show what bounded it), and meridian's ratio to nginx.
#
# usage: bench/websocket.sh [BUILD_DIR]   (default BUILD_DIR: build)
# env:   DURATION=5 (seconds counted per run, after a 0.5 s warm-up)  ROUNDS=3  CONNECTIONS=20
#        SIZE=64 (message bytes)  CLIENT_PROCS=1 (client processes sharing the connections)
#        KEEP_TMP=1 (keep configs, logs)
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
bench_name=bench/websocket.sh
build_dir=${1:-build}
meridian=$(realpath -m "$build_dir/bin/meridian")
ws_src=$here/ws_echo.cc
ws_echo=$(realpath -m "$build_dir/bench-bin/ws_echo")
duration=${DURATION:-5}
rounds=${ROUNDS:-3}
connections=${CONNECTIONS:-20}
size=${SIZE:-64}
client_procs=${CLIENT_PROCS:-1}

# shellcheck source=bench/common.sh
source "$here/common.sh"
bench_require nginx curl g++ python3
[[ -x "$meridian" ]] || { echo "$bench_name: $meridian is not built (make build)" >&2; exit 1; }
((client_procs >= 1 && connections >= client_procs)) ||
  { echo "$bench_name: need CONNECTIONS >= CLIENT_PROCS >= 1" >&2; exit 1; }

bench_compile "$ws_echo" "$ws_src" -pthread  # about 30 s, once

tmp=$(mktemp -d /tmp/meridian-bench-ws.XXXXXX)
cleanup() {
  bench_stop_all
  if [[ "${KEEP_TMP:-0}" == 1 ]]; then echo "configs and logs kept in $tmp" >&2; else rm -rf "$tmp"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

read -r origin_port nginx_port meridian_port admin_port <<<"$(bench_free_ports 4)"

bench_nginx_conf "$tmp/nginx.conf" nginx "  server {
    listen 127.0.0.1:$nginx_port;
    location / {
      proxy_pass http://127.0.0.1:$origin_port;
      proxy_http_version 1.1;
      proxy_set_header Upgrade \$http_upgrade;
      proxy_set_header Connection \"upgrade\";
      proxy_read_timeout 300s;
    }
  }"
bench_meridian_conf "$tmp/meridian.yaml" "$meridian_port" "$admin_port" "$origin_port" "" \
  "websocket: true"

bench_start origin "$ws_echo" server "$origin_port"
origin_pid=${bench_pids[-1]}
bench_start nginx nginx -p "$tmp" -c "$tmp/nginx.conf"
nginx_pid=${bench_pids[-1]}
bench_start meridian "$meridian" run --config "$tmp/meridian.yaml"
meridian_pid=${bench_pids[-1]}

# Waits up to 5 s until something accepts TCP connections on 127.0.0.1:PORT.
wait_port() {
  for _ in $(seq 100); do
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
    sleep 0.05
  done
  return 1
}
wait_port "$origin_port" || { echo "$bench_name: the echo origin did not come up:" >&2; cat "$tmp/origin.log" >&2; exit 1; }
wait_port "$nginx_port" || { echo "$bench_name: nginx did not come up:" >&2; cat "$tmp/nginx.log" "$tmp/nginx.error.log" >&2; exit 1; }
for _ in $(seq 100); do
  curl -sf --max-time 1 "http://127.0.0.1:$admin_port/health" >/dev/null && break
  sleep 0.05
done
curl -sf --max-time 1 "http://127.0.0.1:$admin_port/health" >/dev/null ||
  { echo "$bench_name: meridian did not come up; its log:" >&2; cat "$tmp/meridian.log" >&2; exit 1; }
nginx_worker=$(pgrep -P "$nginx_pid" | head -1)
[[ -n "$nginx_worker" ]] || { echo "$bench_name: nginx has no worker process" >&2; exit 1; }

declare -A port=([direct]=$origin_port [nginx]=$nginx_port [meridian]=$meridian_port)
declare -A proxy_pid=([direct]="" [nginx]=$nginx_worker [meridian]=$meridian_pid)

# Checks each path once: a short run on 2 connections, every echo compared byte for byte.
for name in direct nginx meridian; do
  "$ws_echo" client 127.0.0.1 "${port[$name]}" 2 0.2 "$size" >"$tmp/check.$name" 2>&1 ||
    { echo "$bench_name: WebSocket echo through $name failed:" >&2; cat "$tmp/check.$name" >&2; exit 1; }
done

ticks_per_second=$(getconf CLK_TCK)
# Prints the CPU time (user + system) process PID has used so far, in clock ticks.
cpu_ticks() { awk '{ sub(/^.*\) /, ""); print $12 + $13 }' "/proc/$1/stat"; }
now() { date +%s.%N; }

median() {
  tr ' ' '\n' <<<"$1" | grep -v '^$' | sort -g |
    awk '{ a[NR] = $1 } END { print (NR % 2) ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2 }'
}

# Runs the client processes against PORT at once; prints the summed rate and client CPU seconds
# per counted second.
run_clients() {
  local p i per left pids=() status=0
  per=$((connections / client_procs))
  left=$((connections % client_procs))
  for ((i = 0; i < client_procs; i++)); do
    "$ws_echo" client 127.0.0.1 "$1" $((per + (i < left ? 1 : 0))) "$duration" "$size" \
      >"$tmp/client.$i.out" 2>&1 &
    pids+=($!)
  done
  for p in "${pids[@]}"; do wait "$p" || status=1; done
  if ((status)); then cat "$tmp"/client.*.out >&2; return 1; fi
  cat "$tmp"/client.*.out | awk '{ rate += $6; cpu += $8 / $4 } END { printf "%.1f %.3f\n", rate, cpu }'
  rm -f "$tmp"/client.*.out
}

declare -A rate=() proxy_cpu=() origin_cpu=() client_cpu=()
echo "ws_echo client: $connections connections ($client_procs process(es)), one $size-byte message in flight on each;" \
  "${duration}s counted per run, $rounds rounds, order rotated per round"
echo "(meridian $meridian; $(nginx -v 2>&1 | sed 's/.*version: //'); origin and client $ws_echo, Boost.Beast, 1 thread each)"
echo "CPU: cores used per second of wall time (proxy, origin; client over its counted seconds)"
names=(direct nginx meridian)
for ((r = 0; r < rounds; r++)); do
  for ((i = 0; i < 3; i++)); do
    name=${names[$(((i + r) % 3))]}
    pp=${proxy_pid[$name]}
    origin_before=$(cpu_ticks "$origin_pid")
    proxy_before=0
    [[ -n "$pp" ]] && proxy_before=$(cpu_ticks "$pp")
    started=$(now)
    read -r msgs ccpu <<<"$(run_clients "${port[$name]}")" ||
      { echo "$bench_name: the client failed against $name" >&2; exit 1; }
    [[ -n "$msgs" ]] || { echo "$bench_name: the client failed against $name" >&2; exit 1; }
    wall=$(awk -v a="$started" -v b="$(now)" 'BEGIN { print b - a }')
    ocpu=$(awk -v d=$(($(cpu_ticks "$origin_pid") - origin_before)) -v t="$ticks_per_second" -v w="$wall" \
      'BEGIN { printf "%.2f", d / t / w }')
    pcpu=-
    [[ -n "$pp" ]] && pcpu=$(awk -v d=$(($(cpu_ticks "$pp") - proxy_before)) -v t="$ticks_per_second" \
      -v w="$wall" 'BEGIN { printf "%.2f", d / t / w }')
    printf '  round %d  %-9s %9.0f messages/s   CPU proxy %4s  origin %4s  client %4.2f\n' \
      $((r + 1)) "$name" "$msgs" "$pcpu" "$ocpu" "$ccpu"
    rate[$name]+="$msgs "
    proxy_cpu[$name]+="$pcpu "
    origin_cpu[$name]+="$ocpu "
    client_cpu[$name]+="$ccpu "
    kill -0 "$meridian_pid" 2>/dev/null || { echo "$bench_name: meridian exited; its log:" >&2; cat "$tmp/meridian.log" >&2; exit 1; }
    kill -0 "$nginx_worker" 2>/dev/null || { echo "$bench_name: the nginx worker exited" >&2; exit 1; }
  done
done

# Every connection through meridian was a tunnel: the upgrades it counted cover all of them.
upgrades=$(curl -sf --max-time 5 -H "Authorization: Bearer $(cat "$tmp/meridian-data/admin.token")" \
  "http://127.0.0.1:$admin_port/metrics" | awk '/^meridian_websocket_upgrades_total/ { n += $NF } END { print n + 0 }')
expected=$((rounds * connections + 2))
((upgrades >= expected)) ||
  { echo "$bench_name: meridian counted $upgrades WebSocket upgrades, expected $expected" >&2; exit 1; }

echo
printf '%-20s %14s %10s %10s %10s\n' "path" "messages/s" "proxy CPU" "origin CPU" "client CPU"
for name in direct nginx meridian; do
  pc=-
  [[ $name != direct ]] && pc=$(median "${proxy_cpu[$name]}")
  printf '%-20s %14.0f %10s %10.2f %10.2f\n' "$name" "$(median "${rate[$name]}")" "$pc" \
    "$(median "${origin_cpu[$name]}")" "$(median "${client_cpu[$name]}")"
done
echo "(medians of $rounds rounds; direct: no proxy, the ceiling of this client and origin)"
awk -v a="$(median "${rate[meridian]}")" -v b="$(median "${rate[nginx]}")" \
  'BEGIN { printf "%-20s messages/s %.2fx\n", "meridian/nginx", a / b }'
