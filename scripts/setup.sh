#!/usr/bin/env bash
# Installs every Debian package that meridian's build, tests and benchmarks need.
# Idempotent: installs only what is missing, so a second run is a no-op.
set -euo pipefail

packages=(
  # toolchain
  build-essential cmake ninja-build ccache pkg-config clang-format
  # libraries
  libboost1.81-all-dev libboost-json1.81-dev libboost-url1.81-dev
  libsodium-dev libthrift-dev thrift-compiler librocksdb-dev libcpp-httplib-dev
  libspdlog-dev libgtest-dev libgmock-dev libbenchmark-dev libyaml-cpp-dev
  nlohmann-json3-dev libssl-dev
  # tests and tools: curl for smoke tests, iproute2/iptables for chaos, python3 for scripts
  curl iproute2 iptables nftables python3
)
if [[ "${MERIDIAN_BENCH:-0}" == 1 ]]; then
  packages+=(nginx-light haproxy wrk valgrind)
fi

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]} == 0)); then
  exit 0
fi

echo "setup: installing ${missing[*]}" >&2
sudo_cmd=()
if [[ $(id -u) -ne 0 ]]; then sudo_cmd=(sudo); fi
export DEBIAN_FRONTEND=noninteractive
"${sudo_cmd[@]}" apt-get update -qq
"${sudo_cmd[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
