#!/usr/bin/env bash
# What `make bench` runs: every Google Benchmark binary, then the proxy comparison.
# usage: bench/run.sh [BUILD_DIR]
set -euo pipefail
build_dir=${1:-build}
status=0
for b in "$build_dir"/bin/*_bench; do
  [[ -x "$b" ]] || continue
  echo "== $(basename "$b")"
  "$b" --benchmark_min_time=0.5 || status=1
done
echo "== proxy: nginx vs haproxy vs meridian"
"$(dirname "$0")/proxy.sh" "$build_dir" || status=1
exit $status
