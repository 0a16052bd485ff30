#!/usr/bin/env bash
# Runs every membership row of docs/benchmarks.md ("Membership (simulator)") with 200 seeds and
# prints one JSON line per row, prefixed by the row's name. Usage: bench/membership.sh [BUILD_DIR]
# Takes about 15 minutes on one core (the simulator is single-threaded).
set -euo pipefail
sim=${1:-build}/bin/meridian-sim
row() {
  local name=$1
  shift
  printf '%s\t' "$name"
  "$sim" --json "$@"
}
row dissemination-10 --scenario dissemination --nodes 10 --loss 0 --runs 200
row dissemination-100 --scenario dissemination --nodes 100 --loss 0 --runs 200
row dissemination-1000 --scenario dissemination --nodes 1000 --loss 0 --runs 200
row dissemination-100-loss --scenario dissemination --nodes 100 --loss 0.1 --runs 200
row dissemination-1000-loss --scenario dissemination --nodes 1000 --loss 0.1 --runs 200
row detection-100 --scenario detection --nodes 100 --loss 0 --runs 200
row detection-1000 --scenario detection --nodes 1000 --loss 0 --runs 200
row false-positives-100-loss --scenario false_positives --nodes 100 --loss 0.1 --runs 1 --duration-s 3600
row false-positives-100-loss-udp-only --scenario false_positives --nodes 100 --loss 0.1 --runs 1 \
  --duration-s 3600 --tcp-fallback off
row bandwidth-1000 --scenario bandwidth --nodes 1000 --loss 0 --runs 1
for lg in on off; do
  row "lifeguard-$lg-slow" --scenario false_positives --nodes 100 --loss 0 --runs 2 --slow-nodes 5 \
    --slow-delay-ms 2000 --duration-s 600 --lifeguard "$lg"
done
