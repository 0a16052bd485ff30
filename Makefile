# meridian — the two commands in README.md are `make run` and `make test`.
BUILD_DIR ?= build
BUILD_TYPE ?= RelWithDebInfo
JOBS ?= $(shell nproc)
CMAKE_FLAGS ?=

.PHONY: all setup configure build run test test-asan test-tsan bench format clean package fuzz chaos chaos-short accuracy

all: build

setup:
	@scripts/setup.sh

configure: setup
	@cmake -S . -B $(BUILD_DIR) -G Ninja -DCMAKE_BUILD_TYPE=$(BUILD_TYPE) $(CMAKE_FLAGS) >/dev/null

build: configure
	@cmake --build $(BUILD_DIR) -j $(JOBS)

run: build
	@$(BUILD_DIR)/bin/meridian demo

test: build
	@cd $(BUILD_DIR) && ctest --output-on-failure -j $(JOBS) --timeout 300

package: configure
	@cmake --build $(BUILD_DIR) -j $(JOBS) --target meridian
	@cd $(BUILD_DIR) && cpack --config CPackConfig.cmake
	@ls $(BUILD_DIR)/meridian_*_amd64.deb

test-asan:
	@$(MAKE) --no-print-directory test BUILD_DIR=build-asan BUILD_TYPE=Debug \
		CMAKE_FLAGS="-DMERIDIAN_SANITIZE=ON -DMERIDIAN_BENCH=OFF"

# ThreadSanitizer over the same tests (RelWithDebInfo: TSan's slowdown is large enough).
test-tsan:
	@$(MAKE) --no-print-directory test BUILD_DIR=build-tsan BUILD_TYPE=RelWithDebInfo \
		CMAKE_FLAGS="-DMERIDIAN_TSAN=ON -DMERIDIAN_BENCH=OFF"

bench: build
	@MERIDIAN_BENCH=1 scripts/setup.sh
	@bench/run.sh $(BUILD_DIR)

# Builds the libFuzzer targets with clang in build-fuzz and runs packet_fuzz for FUZZ_SECONDS
# (default 600). The corpus in build-fuzz/corpus is seeded with encoded and sealed sample packets
# and grows across runs; crashing inputs land in build-fuzz/ as crash-*.
FUZZ_SECONDS ?= 600
fuzz:
	@MERIDIAN_FUZZ=1 scripts/setup.sh
	@CC=clang-14 CXX=clang++-14 cmake -S . -B build-fuzz -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo \
		-DMERIDIAN_FUZZ=ON -DMERIDIAN_TESTS=OFF -DMERIDIAN_BENCH=OFF >/dev/null
	@cmake --build build-fuzz -j $(JOBS) --target packet_fuzz
	@mkdir -p build-fuzz/corpus
	@MERIDIAN_FUZZ_SEEDS=build-fuzz/corpus build-fuzz/bin/packet_fuzz
	@build-fuzz/bin/packet_fuzz -max_total_time=$(FUZZ_SECONDS) -print_final_stats=1 \
		-artifact_prefix=build-fuzz/ build-fuzz/corpus

# The chaos suite (needs root): real 3-region clusters in network namespaces under faults.
# Report in build/chaos/report.md (+ report.json, timeline-*.svg). make test runs chaos-short.
chaos: build
	@python3 chaos/run.py --profile full --binary $(BUILD_DIR)/bin/meridian --out $(BUILD_DIR)/chaos

chaos-short: build
	@python3 chaos/run.py --profile short --binary $(BUILD_DIR)/bin/meridian --out $(BUILD_DIR)/chaos

# How well global rate limits hold with 50 ms between regions, on real processes in the chaos
# topology (needs root, ~10 min): cold-key bursts and steady 3x load, eventual and strict.
accuracy: build
	@python3 chaos/accuracy.py --binary $(BUILD_DIR)/bin/meridian --out $(BUILD_DIR)/accuracy

format:
	@git ls-files '*.cc' '*.h' | xargs clang-format -i

clean:
	@rm -rf $(BUILD_DIR) build-asan
