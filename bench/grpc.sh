#!/usr/bin/env bash
# gRPC unary calls side by side: h2load straight to a gRPC echo server (direct) and through
# meridian (workers: 1, an upstream with protocol h2c and a route /bench.Echo/), with the same
# client settings. The server is bench/grpc_echo_server.cc (gRPC C++, callback generic API, echoes
# the request bytes), compiled here with g++ into BUILD_DIR/bench-bin when missing or older than
# its source (not part of CMake). Each call is a POST of one gRPC frame (5-byte prefix and a
# PAYLOAD-byte message) with content-type application/grpc and te: trailers. Checks once that a
# call through meridian comes back 200 with the message echoed and grpc-status 0, and afterwards
# that meridian counted no grpc-status other than 0. Rounds alternate the order; prints the median
# calls/s and mean latency of each path, the CPU the server, meridian and h2load used per second of
# the run (to show what bounded it), and meridian's ratio to direct.
#
# usage: bench/grpc.sh [BUILD_DIR]        (default BUILD_DIR: build)
# env:   DURATION=5 (seconds per h2load run)  ROUNDS=3  CLIENTS=10  STREAMS=10 (per client)
#        PAYLOAD=64 (message bytes)  KEEP_TMP=1 (keep configs, logs)
#        UPSTREAM_STREAMS=N (meridian's pool.max_streams_per_connection for the upstream; unset:
#        its default, 100, so the -c10 -m10 calls share one upstream connection)
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
bench_name=bench/grpc.sh
build_dir=${1:-build}
meridian=$(realpath -m "$build_dir/bin/meridian")
server_src=$here/grpc_echo_server.cc
server=$(realpath -m "$build_dir/bench-bin/grpc_echo_server")
duration=${DURATION:-5}
rounds=${ROUNDS:-3}
clients=${CLIENTS:-10}
streams=${STREAMS:-10}
payload=${PAYLOAD:-64}
upstream_streams=${UPSTREAM_STREAMS:-}

# shellcheck source=bench/common.sh
source "$here/common.sh"
bench_require h2load nghttp curl g++ pkg-config python3
[[ -x "$meridian" ]] || { echo "$bench_name: $meridian is not built (make build)" >&2; exit 1; }
((payload >= 1 && payload <= 16000)) || { echo "$bench_name: PAYLOAD must be 1..16000" >&2; exit 1; }

if [[ ! -x "$server" || "$server" -ot "$server_src" ]]; then
  pkg-config --exists grpc++ ||
    { echo "$bench_name: libgrpc++-dev is missing; install it with: MERIDIAN_BENCH=1 scripts/setup.sh" >&2; exit 1; }
fi
# shellcheck disable=SC2046  # pkg-config's flags are meant to split
bench_compile "$server" "$server_src" $(pkg-config --cflags --libs grpc++ 2>/dev/null)

tmp=$(mktemp -d /tmp/meridian-bench-grpc.XXXXXX)
cleanup() {
  bench_stop_all
  if [[ "${KEEP_TMP:-0}" == 1 ]]; then echo "configs and logs kept in $tmp" >&2; else rm -rf "$tmp"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

read -r grpc_port meridian_port admin_port <<<"$(bench_free_ports 3)"

bench_meridian_conf "$tmp/meridian.yaml" "$meridian_port" "$admin_port" "$grpc_port" \
  "protocol: h2c${upstream_streams:+
pool: {max_streams_per_connection: $upstream_streams\}}"

# One gRPC length-prefixed message: uncompressed flag 0, 4-byte big-endian length, the bytes.
printf '\0%b' "$(printf '\\%03o' $((payload >> 24 & 255)) $((payload >> 16 & 255)) \
  $((payload >> 8 & 255)) $((payload & 255)))" >"$tmp/call.bin"
head -c "$payload" /dev/zero | tr '\0' 'm' >>"$tmp/call.bin"
[[ $(stat -c %s "$tmp/call.bin") == $((payload + 5)) ]] ||
  { echo "$bench_name: could not write the gRPC frame" >&2; exit 1; }

bench_start grpc_server "$server" "$grpc_port"
server_pid=${bench_pids[-1]}
bench_start meridian "$meridian" run --config "$tmp/meridian.yaml"
meridian_pid=${bench_pids[-1]}
for _ in $(seq 100); do
  curl -sf --max-time 1 "http://127.0.0.1:$admin_port/health" >/dev/null && break
  sleep 0.05
done
curl -sf --max-time 1 "http://127.0.0.1:$admin_port/health" >/dev/null ||
  { echo "$bench_name: meridian did not come up; its log:" >&2; cat "$tmp/meridian.log" >&2; exit 1; }
grep -q '^ready' "$tmp/grpc_server.log" ||
  { echo "$bench_name: the gRPC echo server did not come up:" >&2; cat "$tmp/grpc_server.log" >&2; exit 1; }

declare -A url=(
  [direct]="http://127.0.0.1:$grpc_port/bench.Echo/Unary"
  [meridian]="http://127.0.0.1:$meridian_port/bench.Echo/Unary")
grpc_headers=(-H 'content-type: application/grpc' -H 'te: trailers')

# Checks one call the way h2load makes it: 200, the frame echoed byte for byte, grpc-status 0.
for name in direct meridian; do
  nghttp -v -d "$tmp/call.bin" "${grpc_headers[@]}" "${url[$name]}" >"$tmp/check.$name" 2>&1 || true
  nghttp -d "$tmp/call.bin" "${grpc_headers[@]}" "${url[$name]}" >"$tmp/check.$name.body" 2>/dev/null || true
  if ! grep -aq ') :status: 200$' "$tmp/check.$name" || ! grep -aq ') grpc-status: 0$' "$tmp/check.$name" ||
    ! cmp -s "$tmp/call.bin" "$tmp/check.$name.body"; then
    echo "$bench_name: a call $name did not come back 200 with its message and grpc-status 0:" >&2
    grep -a -E 'recv \(|recv [A-Z]+ frame' "$tmp/check.$name" >&2 || cat "$tmp/check.$name" >&2
    exit 1
  fi
done

ticks_per_second=$(getconf CLK_TCK)
# Prints the CPU time (user + system) process PID has used so far, in clock ticks.
cpu_ticks() { awk '{ sub(/^.*\) /, ""); print $12 + $13 }' "/proc/$1/stat"; }
# Prints the cores used per second of WALL seconds by TICKS clock ticks.
cores() { awk -v d="$1" -v t="$ticks_per_second" -v w="$2" 'BEGIN { printf "%.2f", d / t / w }'; }

median() {
  tr ' ' '\n' <<<"$1" | grep -v '^$' | sort -g |
    awk '{ a[NR] = $1 } END { print (NR % 2) ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2 }'
}

declare -A rps=() mean_ms=() server_cpu=() meridian_cpu=() client_cpu=()
troubled=0
through_meridian=0
echo "h2load -c$clients -m$streams -D$duration, gRPC unary calls of $payload bytes, $rounds rounds, order rotated per round"
echo "(meridian $meridian; server $server, gRPC C++ $(pkg-config --modversion grpc++ 2>/dev/null || echo ?); $(h2load --version | head -1))"
echo "CPU: cores used per second of the h2load run by the server, meridian and h2load"
names=(direct meridian)
for ((r = 0; r < rounds; r++)); do
  for ((i = 0; i < 2; i++)); do
    name=${names[$(((i + r) % 2))]}
    server_before=$(cpu_ticks "$server_pid")
    meridian_before=$(cpu_ticks "$meridian_pid")
    started=$(date +%s.%N)
    TIMEFORMAT='%3U %3S'
    { time h2load -c"$clients" -m"$streams" -D"$duration" -d "$tmp/call.bin" "${grpc_headers[@]}" \
      "${url[$name]}" >"$tmp/h2load.out" 2>&1; } 2>"$tmp/h2load.time" ||
      { echo "$bench_name: h2load failed against $name:" >&2; cat "$tmp/h2load.out" >&2; exit 1; }
    wall=$(awk -v a="$started" -v b="$(date +%s.%N)" 'BEGIN { print b - a }')
    out=$(cat "$tmp/h2load.out")
    scpu=$(cores $(($(cpu_ticks "$server_pid") - server_before)) "$wall")
    mcpu=$(cores $(($(cpu_ticks "$meridian_pid") - meridian_before)) "$wall")
    ccpu=$(awk -v t="$ticks_per_second" '{ print ($1 + $2) * t }' "$tmp/h2load.time")
    ccpu=$(cores "$ccpu" "$wall")
    req=$(awk '/^finished in/ { print $4 }' <<<"$out")
    codes=$(awk '/^status codes:/ { print $3, $5, $7, $9 }' <<<"$out")
    failed=$(awk '/^requests:/ { print $10 }' <<<"$out")
    # "time for request:  min  max  mean  sd ..." with units (us, ms, s) on each figure
    mean=$(awk '/^time for request:/ { v = $6; f = (v ~ /us$/) ? 0.001 : (v ~ /ms$/) ? 1 : 1000
                                       sub(/[a-z]+$/, "", v); print v * f }' <<<"$out")
    note=""
    if [[ "$failed" != 0 || "$codes" != *" 0 0 0" ]]; then note="  (failed: $failed; 2xx 3xx 4xx 5xx: $codes)"; troubled=1; fi
    printf '  round %d  %-9s %10.0f calls/s  mean %7.3f ms   CPU server %4.2f  meridian %4.2f  h2load %4.2f%s\n' \
      $((r + 1)) "$name" "$req" "$mean" "$scpu" "$mcpu" "$ccpu" "$note"
    rps[$name]+="$req "
    mean_ms[$name]+="$mean "
    server_cpu[$name]+="$scpu "
    meridian_cpu[$name]+="$mcpu "
    client_cpu[$name]+="$ccpu "
    [[ $name == meridian ]] && through_meridian=$((through_meridian + ${codes%% *}))
    kill -0 "$meridian_pid" 2>/dev/null || { echo "$bench_name: meridian exited; its log:" >&2; cat "$tmp/meridian.log" >&2; exit 1; }
  done
done

# h2load counts HTTP statuses only, and a gRPC error is a 200 too: meridian's own count of
# grpc-status values must show every call as 0.
metrics=$(curl -sf --max-time 5 -H "Authorization: Bearer $(cat "$tmp/meridian-data/admin.token")" \
  "http://127.0.0.1:$admin_port/metrics") || { echo "$bench_name: could not read meridian's /metrics" >&2; exit 1; }
read -r ok_calls other_calls < <(awk '/^meridian_grpc_responses_total\{/ {
    if ($0 ~ /grpc_status="0"/) ok += $NF; else other += $NF } END { printf "%d %d\n", ok, other }' <<<"$metrics")
if ((other_calls != 0 || ok_calls < through_meridian)); then
  echo "$bench_name: meridian counted $ok_calls calls with grpc-status 0 and $other_calls with another status," \
    "for $through_meridian 2xx answers" >&2
  troubled=1
fi

echo
printf '%-18s %10s %9s %11s %13s %11s\n' "path" "calls/s" "mean ms" "server CPU" "meridian CPU" "h2load CPU"
for name in direct meridian; do
  printf '%-18s %10.0f %9.3f %11.2f %13.2f %11.2f\n' "$name" "$(median "${rps[$name]}")" \
    "$(median "${mean_ms[$name]}")" "$(median "${server_cpu[$name]}")" "$(median "${meridian_cpu[$name]}")" \
    "$(median "${client_cpu[$name]}")"
done
echo "(medians of $rounds rounds)"
awk -v a="$(median "${rps[meridian]}")" -v b="$(median "${rps[direct]}")" \
  -v la="$(median "${mean_ms[meridian]}")" -v lb="$(median "${mean_ms[direct]}")" \
  'BEGIN { printf "%-18s calls/s %.2fx   mean latency %.2fx\n", "meridian/direct", a / b, la / lb }'
echo "grpc-status through meridian (its metrics): $ok_calls calls 0, $other_calls other"
((troubled == 0))
