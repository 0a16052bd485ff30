#!/usr/bin/env bash
# HTTP/2 side by side: h2load against nginx (1 worker, `http2` listeners) and meridian (workers: 1),
# both in front of one shared nginx upstream that returns a 12-byte body (reached over HTTP/1.1
# with keep-alive), over h2c (prior knowledge) and over h2 (TLS, ALPN). Rounds alternate the order;
# prints the median requests/s per proxy and protocol and meridian's ratio to nginx.
#
# usage: bench/h2.sh [BUILD_DIR]          (default BUILD_DIR: build)
# env:   DURATION=5 (seconds per h2load run)  ROUNDS=3  CLIENTS=10  STREAMS=10 (per client)
#        KEEP_TMP=1 (keep configs, logs)
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
bench_name=bench/h2.sh
build_dir=${1:-build}
meridian=$(realpath -m "$build_dir/bin/meridian")
duration=${DURATION:-5}
rounds=${ROUNDS:-3}
clients=${CLIENTS:-10}
streams=${STREAMS:-10}

# shellcheck source=bench/common.sh
source "$here/common.sh"
bench_require nginx h2load curl openssl python3
[[ -x "$meridian" ]] || { echo "$bench_name: $meridian is not built (make build)" >&2; exit 1; }

tmp=$(mktemp -d /tmp/meridian-bench-h2.XXXXXX)
cleanup() {
  bench_stop_all
  if [[ "${KEEP_TMP:-0}" == 1 ]]; then echo "configs and logs kept in $tmp" >&2; else rm -rf "$tmp"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

read -r upstream_port nginx_port nginx_tls_port meridian_port meridian_tls_port admin_port \
  <<<"$(bench_free_ports 6)"
openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj /CN=localhost \
  -addext subjectAltName=DNS:localhost -keyout "$tmp/key.pem" -out "$tmp/cert.pem" 2>/dev/null

bench_upstream_conf "$tmp/upstream.conf" "$upstream_port"
bench_nginx_conf "$tmp/nginx.conf" nginx "  keepalive_requests 100000;
  http2_max_requests 1000000;
  http2_max_concurrent_streams 256;
  upstream up { server 127.0.0.1:$upstream_port; keepalive 64; }
  server {
    listen 127.0.0.1:$nginx_port http2;
    listen 127.0.0.1:$nginx_tls_port ssl http2;
    ssl_certificate $tmp/cert.pem;
    ssl_certificate_key $tmp/key.pem;
    location / {
      proxy_pass http://up;
      proxy_http_version 1.1;
      proxy_set_header Connection \"\";
    }
  }"
bench_meridian_conf "$tmp/meridian.yaml" "$meridian_port" "$admin_port" "$upstream_port"
cat >>"$tmp/meridian.yaml" <<CONF
tls:
  listen: 127.0.0.1:$meridian_tls_port
  certificates: [{cert: $tmp/cert.pem, key: $tmp/key.pem}]
CONF

bench_start upstream nginx -p "$tmp" -c "$tmp/upstream.conf"
bench_wait_hello "$upstream_port" || { echo "$bench_name: upstream nginx did not come up" >&2; exit 1; }
bench_start nginx nginx -p "$tmp" -c "$tmp/nginx.conf"
bench_start meridian "$meridian" run --config "$tmp/meridian.yaml"
meridian_pid=${bench_pids[-1]}
for p in "$meridian_port"; do
  bench_wait_hello "$p" || { echo "$bench_name: meridian did not come up" >&2; cat "$tmp/meridian.log" >&2; exit 1; }
done
for _ in $(seq 100); do
  curl -s --max-time 1 --http2-prior-knowledge "http://127.0.0.1:$nginx_port/" >/dev/null && break
  sleep 0.05
done

median() {
  tr ' ' '\n' <<<"$1" | grep -v '^$' | sort -g |
    awk '{ a[NR] = $1 } END { print (NR % 2) ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2 }'
}

declare -A url=(
  [nginx.h2c]="http://127.0.0.1:$nginx_port/" [meridian.h2c]="http://127.0.0.1:$meridian_port/"
  [nginx.h2]="https://127.0.0.1:$nginx_tls_port/" [meridian.h2]="https://127.0.0.1:$meridian_tls_port/")
declare -A rps=()
troubled=0
echo "h2load -c$clients -m$streams -D$duration, $rounds rounds, order rotated per round"
echo "(meridian $meridian; $(nginx -v 2>&1 | sed 's/.*version: //'); $(h2load --version | head -1))"
for proto in h2c h2; do
  names=(nginx meridian)
  for ((r = 0; r < rounds; r++)); do
    for ((i = 0; i < 2; i++)); do
      name=${names[$(((i + r) % 2))]}
      out=$(h2load -c"$clients" -m"$streams" -D"$duration" "${url[$name.$proto]}" 2>&1) || {
        echo "$bench_name: h2load failed against $name ($proto):" >&2; echo "$out" >&2; exit 1; }
      req=$(awk '/^finished in/ { print $4 }' <<<"$out")
      codes=$(awk '/^status codes:/ { print $3, $5, $7, $9 }' <<<"$out")
      failed=$(awk '/^requests:/ { print $10 }' <<<"$out")
      note=""
      if [[ "$failed" != 0 || "$codes" != *" 0 0 0" ]]; then note="  (failed: $failed; 2xx 3xx 4xx 5xx: $codes)"; troubled=1; fi
      printf '  %-3s round %d  %-9s %10.0f req/s%s\n' "$proto" $((r + 1)) "$name" "$req" "$note"
      rps[$name.$proto]+="$req "
      kill -0 "$meridian_pid" 2>/dev/null || { echo "$bench_name: meridian exited; its log:" >&2; cat "$tmp/meridian.log" >&2; exit 1; }
    done
  done
done
echo
printf '%-22s %14s\n' "proxy" "req/s (median)"
for proto in h2c h2; do
  for name in nginx meridian; do printf '%-22s %14.0f\n' "$name ($proto)" "$(median "${rps[$name.$proto]}")"; done
  awk -v a="$(median "${rps[meridian.$proto]}")" -v b="$(median "${rps[nginx.$proto]}")" -v p="$proto" \
    'BEGIN { printf "%-22s req/s %.2fx\n", "meridian/nginx (" p ")", a / b }'
done
((troubled == 0))
