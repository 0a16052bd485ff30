#!/usr/bin/env bash
# Loads nginx (1 worker), haproxy (nbthread 1) and meridian (workers: 1), all in front of one shared
# nginx upstream that returns a 12-byte body, with wrk in alternation (the order rotated every
# round), and prints the median requests/s and median p99 per proxy and meridian's ratios to both.
#
# usage: bench/proxy.sh [BUILD_DIR]              (default BUILD_DIR: build)
#        bench/proxy.sh --callgrind [BUILD_DIR]  instructions per request (runs bench/callgrind.sh)
# env:   DURATION=5 (seconds per wrk run)  ROUNDS=3  CONNECTIONS=50  KEEP_TMP=1 (keep configs, logs)
#        SYSCALLS=1 (the default; 0 skips it): after the rounds, one more wrk run per proxy with
#        strace -c attached to all of its threads, printed as system calls per request
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
if [[ "${1:-}" == --callgrind ]]; then
  shift
  exec "$here/callgrind.sh" "$@"
fi

bench_name=bench/proxy.sh
build_dir=${1:-build}
meridian=$(realpath -m "$build_dir/bin/meridian")
duration=${DURATION:-5}
rounds=${ROUNDS:-3}
connections=${CONNECTIONS:-50}

# shellcheck source=bench/common.sh
source "$here/common.sh"
bench_require nginx haproxy wrk curl python3
[[ "${SYSCALLS:-1}" == 1 ]] && bench_require strace
[[ -x "$meridian" ]] || { echo "$bench_name: $meridian is not built (make build)" >&2; exit 1; }

tmp=$(mktemp -d /tmp/meridian-bench.XXXXXX)
cleanup() {
  bench_stop_all
  if [[ "${KEEP_TMP:-0}" == 1 ]]; then echo "configs and logs kept in $tmp" >&2; else rm -rf "$tmp"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

read -r upstream_port nginx_port haproxy_port meridian_port admin_port <<<"$(bench_free_ports 5)"

bench_upstream_conf "$tmp/upstream.conf" "$upstream_port"
bench_nginx_conf "$tmp/nginx.conf" nginx "  keepalive_requests 100000;
  upstream up { server 127.0.0.1:$upstream_port; keepalive 64; }
  server {
    listen 127.0.0.1:$nginx_port;
    location / {
      proxy_pass http://up;
      proxy_http_version 1.1;
      proxy_set_header Connection \"\";
    }
  }"
cat >"$tmp/haproxy.cfg" <<CONF
global
  nbthread 1
  maxconn 4096
defaults
  mode http
  option http-keep-alive
  http-reuse always
  timeout connect 5s
  timeout client 30s
  timeout server 30s
frontend f
  bind 127.0.0.1:$haproxy_port
  default_backend b
backend b
  server upstream 127.0.0.1:$upstream_port
CONF
bench_meridian_conf "$tmp/meridian.yaml" "$meridian_port" "$admin_port" "$upstream_port"

# The upstream first, so no proxy starts against a closed port.
bench_start upstream nginx -p "$tmp" -c "$tmp/upstream.conf"
bench_wait_hello "$upstream_port" || { echo "$bench_name: upstream nginx did not come up" >&2; cat "$tmp"/upstream*.log >&2; exit 1; }
bench_start nginx nginx -p "$tmp" -c "$tmp/nginx.conf"
bench_start haproxy haproxy -db -f "$tmp/haproxy.cfg"
bench_start meridian "$meridian" run --config "$tmp/meridian.yaml"
meridian_pid=${bench_pids[-1]}

names=(nginx haproxy meridian)
declare -A port=([nginx]=$nginx_port [haproxy]=$haproxy_port [meridian]=$meridian_port)
for name in "${names[@]}"; do
  if ! bench_wait_hello "${port[$name]}"; then
    echo "$bench_name: $name did not answer 200 \"hello world\" on port ${port[$name]}; its log:" >&2
    cat "$tmp/$name".*log "$tmp/$name.log" >&2 2>/dev/null || true
    exit 1
  fi
done

# Converts a wrk latency ("812.00us", "1.56ms", "1.02s", "2.00m") to milliseconds.
to_ms() {
  awk -v v="$1" 'BEGIN { n = v + 0
    if (v ~ /us$/) n /= 1000; else if (v ~ /ms$/) n += 0; else if (v ~ /s$/) n *= 1000
    else if (v ~ /m$/) n *= 60000
    printf "%.3f", n }'
}
median() {
  tr ' ' '\n' <<<"$1" | grep -v '^$' | sort -g |
    awk '{ a[NR] = $1 } END { print (NR % 2) ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2 }'
}

declare -A rps=() p99=() trouble=()
troubled=0
echo "wrk -t1 -c$connections -d${duration}s --latency, $rounds rounds, order rotated per round"
echo "(meridian $meridian; $(nginx -v 2>&1 | sed 's/.*version: //'); haproxy $(haproxy -v | awk 'NR == 1 {print $3}'))"
for ((r = 0; r < rounds; r++)); do
  for ((i = 0; i < 3; i++)); do
    name=${names[$(((i + r) % 3))]}
    out=$(wrk -t1 -c"$connections" -d"${duration}s" --latency "http://127.0.0.1:${port[$name]}/" 2>&1) || {
      echo "$bench_name: wrk failed against $name:" >&2; echo "$out" >&2; exit 1; }
    req=$(awk '/^Requests\/sec/ { print $2 }' <<<"$out")
    lat=$(awk '$1 == "99%" { print $2 }' <<<"$out")
    if [[ -z "$req" || -z "$lat" ]]; then
      echo "$bench_name: could not read wrk's output for $name:" >&2; echo "$out" >&2; exit 1
    fi
    lat=$(to_ms "$lat")
    # Errors and non-2xx answers make a fast-looking number meaningless: show and flag them.
    errors=$(grep -E 'Non-2xx|Socket errors' <<<"$out" | sed 's/^ *//' | paste -sd ';' - || true)
    if [[ -n "$errors" ]]; then trouble[$name]=1; troubled=1; fi
    printf '  round %d  %-9s %10.0f req/s  p99 %8.3f ms  %s\n' $((r + 1)) "$name" "$req" "$lat" "$errors"
    rps[$name]+="$req "
    p99[$name]+="$lat "
    if ! kill -0 "$meridian_pid" 2>/dev/null; then
      echo "$bench_name: meridian exited during the run; its log:" >&2
      cat "$tmp/meridian.log" >&2
      exit 1
    fi
  done
done

echo
printf '%-20s %14s %14s\n' proxy "req/s (median)" "p99 ms (median)"
for name in "${names[@]}"; do
  printf '%-20s %14.0f %14.3f%s\n' "$name" "$(median "${rps[$name]}")" "$(median "${p99[$name]}")" \
    "${trouble[$name]:+   (errors or non-2xx answers, see above)}"
done
mr=$(median "${rps[meridian]}")
mp=$(median "${p99[meridian]}")
for other in nginx haproxy; do
  awk -v a="$mr" -v b="$(median "${rps[$other]}")" -v c="$mp" -v d="$(median "${p99[$other]}")" -v o="$other" \
    'BEGIN { printf "%-20s req/s %.2fx   p99 %.2fx\n", "meridian/" o, a / b, (d > 0 ? c / d : 0) }'
done
# System calls per request: strace -c on every thread of each proxy (nginx: its worker) over
# one wrk run. strace slows the proxy down, so only the counts mean anything, not the rates.
syscalls_per_request() {
  local name=$1 url=$2
  shift 2
  local attach=() tids=() tid pid
  for pid in "$@"; do
    attach+=(-p "$pid")  # with -f, strace attaches to every thread of the process
    for tid in /proc/"$pid"/task/*; do tids+=("${tid##*/}"); done
  done
  strace -c -f -qq -o "$tmp/strace.$name" "${attach[@]}" &
  local tracer=$!
  # Attached once every thread names a tracer (up to 5 s).
  for _ in $(seq 100); do
    local all=1
    for tid in "${tids[@]}"; do
      awk '/^TracerPid:/ { exit ($2 == 0) }' "/proc/$tid/status" 2>/dev/null || all=0
    done
    ((all)) && break
    sleep 0.05
  done
  local out requests
  out=$(wrk -t1 -c"$connections" -d3s "$url" 2>&1)
  kill -INT "$tracer" 2>/dev/null
  wait "$tracer" 2>/dev/null || true
  requests=$(awk '/requests in/ { print $1 }' <<<"$out")
  awk -v n="$requests" -v who="$name" '
    $NF == "total" || NF < 5 || $1 !~ /^[0-9.]+$/ { next }
    { calls[$NF] = $4; total += $4; if (NF == 6) errors[$NF] = $5 }
    END {
      if (n <= 0) { print "  " who ": no requests counted"; exit }
      line = sprintf("  %-9s %5.2f syscalls/request:", who, total / n)
      for (s in calls) if (calls[s] / n >= 0.05)
        line = line sprintf(" %s %.2f%s", s, calls[s] / n,
                            (s in errors) ? sprintf(" (%.2f failed)", errors[s] / n) : "")
      print line
    }' "$tmp/strace.$name"
}
if [[ "${SYSCALLS:-1}" == 1 ]]; then
  echo
  echo "system calls per request (strace -c over wrk -t1 -c$connections -d3s; failed = EAGAIN and the like)"
  nginx_master=${bench_pids[1]}
  syscalls_per_request nginx "http://127.0.0.1:$nginx_port/" $(pgrep -P "$nginx_master")
  syscalls_per_request haproxy "http://127.0.0.1:$haproxy_port/" "${bench_pids[2]}"
  syscalls_per_request meridian "http://127.0.0.1:$meridian_port/" "$meridian_pid"
fi

if [[ -s "$tmp/meridian.log" ]]; then
  echo
  echo "meridian's log (level warn) during the run:"
  tail -n 20 "$tmp/meridian.log"
fi
# Any error/trouble is reported above, but the measurements themselves ran: a flagged proxy makes
# the run fail so `make bench` does not pass over it.
((troubled == 0))
