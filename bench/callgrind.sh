#!/usr/bin/env bash
# CPU cost per proxied request as user-space instructions, under valgrind --tool=callgrind:
# the difference between two meridian runs serving N1 and N2 requests over one keep-alive
# connection (bench/keepalive_client.py), divided by N2-N1, so start-up and exit cancel out.
# Repeatable, unlike wall-clock figures. Also reachable as `bench/proxy.sh --callgrind`.
# usage: bench/callgrind.sh [BUILD_DIR]     env: N1=2000 N2=6000 KEEP_TMP=1 (keep callgrind files)
#        PROFILE=plain (the default: one route, no policies) or PROFILE=featured (the route
#        verifies an HS256 JWT, counts a global rate limit and applies two header transforms)
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
bench_name=bench/callgrind.sh
build_dir=${1:-build}
meridian=$(realpath -m "$build_dir/bin/meridian")
n1=${N1:-2000}
n2=${N2:-6000}
((n2 > n1)) || { echo "$bench_name: N2 ($n2) must be larger than N1 ($n1)" >&2; exit 1; }

# shellcheck source=bench/common.sh
source "$here/common.sh"
bench_require nginx valgrind callgrind_annotate curl python3
[[ -x "$meridian" ]] || { echo "$bench_name: $meridian is not built (make build)" >&2; exit 1; }

tmp=$(mktemp -d /tmp/meridian-callgrind.XXXXXX)
vg_pid=
cleanup() {
  [[ -n "$vg_pid" ]] && kill -KILL "$vg_pid" 2>/dev/null
  bench_stop_all
  if [[ "${KEEP_TMP:-0}" == 1 ]]; then echo "callgrind files kept in $tmp" >&2; else rm -rf "$tmp"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

read -r upstream_port proxy_port admin_port <<<"$(bench_free_ports 3)"
bench_upstream_conf "$tmp/upstream.conf" "$upstream_port"
bench_meridian_conf "$tmp/meridian.yaml" "$proxy_port" "$admin_port" "$upstream_port"
profile=${PROFILE:-plain}
client_headers=()
if [[ "$profile" == featured ]]; then
  # An HS256 key set and a token it verifies (expiring in a day), made here with the stdlib.
  token=$(python3 - "$tmp/jwks.json" <<'PY'
import base64, hashlib, hmac, json, sys, time
b64 = lambda b: base64.urlsafe_b64encode(b).rstrip(b"=").decode()
key = b"bench-secret-bench-secret-bench-secret"
json.dump({"keys": [{"kty": "oct", "kid": "k1", "alg": "HS256", "k": b64(key)}]}, open(sys.argv[1], "w"))
head = b64(json.dumps({"alg": "HS256", "kid": "k1", "typ": "JWT"}).encode())
body = b64(json.dumps({"sub": "bench", "iss": "bench", "exp": int(time.time()) + 86400}).encode())
sig = b64(hmac.new(key, f"{head}.{body}".encode(), hashlib.sha256).digest())
print(f"{head}.{body}.{sig}")
PY
)
  cat >>"$tmp/meridian.yaml" <<CONF
    auth: {methods: [jwt]}
    rate_limit: {limit: 1000000000, window: 1h, key: global}
    request_headers: {set: {x-bench: "1"}, add: {x-gateway: meridian}}
jwt:
  - {name: bench, issuer: bench, jwks_file: $tmp/jwks.json}
CONF
  client_headers=("Authorization: Bearer $token")
elif [[ "$profile" != plain ]]; then
  echo "$bench_name: PROFILE must be plain or featured" >&2
  exit 1
fi
# ANALYTICS=off: without usage analytics (to measure what the usage stage costs).
if [[ "${ANALYTICS:-on}" == off ]]; then
  echo "analytics: {enabled: false}" >>"$tmp/meridian.yaml"
fi
bench_start upstream nginx -p "$tmp" -c "$tmp/upstream.conf"
bench_wait_hello "$upstream_port" || { echo "$bench_name: upstream nginx did not come up" >&2; exit 1; }

# Sets `total` to the instructions (Ir) of one meridian run under callgrind that serves N requests.
# Runs in this shell (not a $(...) subshell) so a failing step stops the script.
instructions() {
  local n=$1 out="$tmp/callgrind.out.$1"
  valgrind --tool=callgrind --callgrind-out-file="$out" "$meridian" run --config "$tmp/meridian.yaml" \
    >"$tmp/valgrind.$n.log" 2>&1 &
  local pid=$!
  vg_pid=$pid
  # Valgrind starts slowly; allow 20 s (bench_wait_hello waits 5 s per call).
  local up=0
  for _ in 1 2 3 4; do bench_wait_hello "$proxy_port" "${client_headers[@]}" && { up=1; break; }; done
  if ((!up)); then
    kill -KILL "$pid" 2>/dev/null || true
    echo "$bench_name: meridian under valgrind did not come up; its log:" >&2
    cat "$tmp/valgrind.$n.log" >&2
    exit 1
  fi
  if ! python3 "$here/keepalive_client.py" "$proxy_port" "$n" "${client_headers[@]}"; then
    kill -KILL "$pid" 2>/dev/null || true
    echo "$bench_name: the client failed against meridian under valgrind; its log:" >&2
    cat "$tmp/valgrind.$n.log" >&2
    exit 1
  fi
  kill -TERM "$pid"
  wait "$pid" || true
  vg_pid=
  total=$(callgrind_annotate "$out" 2>/dev/null |
    awk '/PROGRAM TOTALS/ && !done { gsub(",", "", $1); print $1; done = 1 }')
}

instructions "$n1"
a=$total
instructions "$n2"
b=$total
[[ -n "$a" && -n "$b" ]] || { echo "$bench_name: no instruction totals from callgrind_annotate" >&2; exit 1; }
echo "meridian: $(((b - a) / (n2 - n1))) instructions per proxied request (callgrind, $profile, $n1 vs $n2 requests)"
