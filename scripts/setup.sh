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
  libnghttp2-dev libspdlog-dev libgtest-dev libgmock-dev libbenchmark-dev libyaml-cpp-dev
  nlohmann-json3-dev libssl-dev
  libprotobuf-dev protobuf-compiler
  # tests and tools: curl for smoke tests, iproute2/iptables for chaos, python3 for scripts
  curl iproute2 iptables nftables python3
  # openssl: the TLS tests make their certificates with the command-line tool
  openssl
  # tzdata: /usr/share/zoneinfo, for month quotas in a time zone (rate_limit.timezone)
  tzdata
  # the protocol tests' real clients and servers (Debian's python3, not a pyenv one)
  python3-websockets nghttp2-client nghttp2-server python3-grpcio python3-protobuf
  # promtool (in prometheus) lints /metrics in the tests
  prometheus
  # the dashboard's tests drive Debian's Chromium (headless) with playwright-core from npm
  chromium
)
if [[ "${MERIDIAN_BENCH:-0}" == 1 ]]; then
  packages+=(nginx-light haproxy wrk valgrind strace nghttp2-client)
  # bench/grpc.sh compiles its gRPC echo server (bench/grpc_echo_server.cc) against gRPC C++
  packages+=(libgrpc++-dev)
fi
# make fuzz: clang with the libFuzzer and sanitizer runtimes.
if [[ "${MERIDIAN_FUZZ:-0}" == 1 ]]; then
  packages+=(clang-14 libclang-rt-14-dev)
fi
# deployment checks (tests/deploy): dpkg-dev for dpkg-shlibdeps (CPack's Depends line), Node.js
# and npm for the Terraform parser. Node may come from outside Debian (NodeSource bundles npm).
packages+=(dpkg-dev)
command -v node >/dev/null || packages+=(nodejs)
command -v npm >/dev/null || packages+=(npm)

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]} > 0)); then
  echo "setup: installing ${missing[*]}" >&2
  sudo_cmd=()
  if [[ $(id -u) -ne 0 ]]; then sudo_cmd=(sudo); fi
  export DEBIAN_FRONTEND=noninteractive
  "${sudo_cmd[@]}" apt-get update -qq
  "${sudo_cmd[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# HashiCorp's HCL parser (wasm, in the npm package @cdktf/hcl2json) for scripts/check_terraform.py,
# pinned and installed outside the repo so a fresh clone reuses it. The package has no CLI:
# scripts/hcl2json.js calls it.
hcl2json_prefix=${MERIDIAN_HCL2JSON_PREFIX:-/opt/meridian-tools/hcl2json}
hcl2json_version=0.21.0
if ! grep -qs "\"version\": \"$hcl2json_version\"" "$hcl2json_prefix/node_modules/@cdktf/hcl2json/package.json"; then
  echo "setup: installing @cdktf/hcl2json@$hcl2json_version into $hcl2json_prefix" >&2
  as_root=()
  if [[ $(id -u) -ne 0 ]]; then as_root=(sudo); fi
  "${as_root[@]}" mkdir -p "$hcl2json_prefix"
  "${as_root[@]}" npm install --prefix "$hcl2json_prefix" --no-save --no-audit --no-fund \
    --loglevel=error "@cdktf/hcl2json@$hcl2json_version" >/dev/null
fi

# playwright-core (npm, pinned) drives Debian's Chromium in the dashboard's tests (tests/ui); it
# downloads no browser of its own.
playwright_prefix=${MERIDIAN_PLAYWRIGHT_PREFIX:-/opt/meridian-tools/playwright}
playwright_version=1.49.1
if ! grep -qs "\"version\": \"$playwright_version\"" "$playwright_prefix/node_modules/playwright-core/package.json"; then
  echo "setup: installing playwright-core@$playwright_version into $playwright_prefix" >&2
  as_root=()
  if [[ $(id -u) -ne 0 ]]; then as_root=(sudo); fi
  "${as_root[@]}" mkdir -p "$playwright_prefix"
  "${as_root[@]}" npm install --prefix "$playwright_prefix" --no-save --no-audit --no-fund \
    --loglevel=error "playwright-core@$playwright_version" >/dev/null
fi
