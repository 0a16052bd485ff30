#!/usr/bin/env bash
# What `make bench` runs: every Google Benchmark binary BUILD_DIR/bin/*_bench, then bench/proxy.sh
# (nginx vs haproxy vs meridian), bench/h2.sh (HTTP/2: nginx vs meridian), bench/grpc.sh (gRPC
# unary calls: direct vs through meridian) and bench/websocket.sh (WebSocket echo: nginx vs
# meridian) with BUILD_DIR's meridian. Exits non-zero if anything failed.
# usage: bench/run.sh [BUILD_DIR]     env: MIN_TIME=0.5 (seconds per benchmark), and proxy.sh's
set -uo pipefail

build_dir=${1:-build}
here=$(cd "$(dirname "$0")" && pwd)
min_time=${MIN_TIME:-0.5}
status=0
found=0

for b in "$build_dir"/bin/*_bench; do
  [[ -x "$b" ]] || continue
  found=1
  # Google Benchmark >= 1.8 takes "0.5s" (a bare number is deprecated); 1.7 (Debian 12) only "0.5".
  flag="--benchmark_min_time=${min_time}s"
  "$b" "$flag" --benchmark_filter='^$' >/dev/null 2>&1 || flag="--benchmark_min_time=$min_time"
  echo "== $(basename "$b") $flag"
  if ! "$b" "$flag"; then
    echo "bench/run.sh: $(basename "$b") failed" >&2
    status=1
  fi
done
if ((!found)); then
  echo "bench/run.sh: no *_bench binaries in $build_dir/bin (configure with -DMERIDIAN_BENCH=ON)" >&2
  status=1
fi

echo
echo "== proxy: nginx vs haproxy vs meridian"
if ! "$here/proxy.sh" "$build_dir"; then
  echo "bench/run.sh: bench/proxy.sh failed" >&2
  status=1
fi

echo
echo "== HTTP/2: nginx vs meridian (h2load, h2c and h2)"
if ! "$here/h2.sh" "$build_dir"; then
  echo "bench/run.sh: bench/h2.sh failed" >&2
  status=1
fi

echo
echo "== gRPC: direct vs meridian (h2load, unary calls over h2c)"
if ! "$here/grpc.sh" "$build_dir"; then
  echo "bench/run.sh: bench/grpc.sh failed" >&2
  status=1
fi

echo
echo "== WebSocket: nginx vs meridian (echo round trips)"
if ! "$here/websocket.sh" "$build_dir"; then
  echo "bench/run.sh: bench/websocket.sh failed" >&2
  status=1
fi
exit $status
