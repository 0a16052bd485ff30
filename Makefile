# meridian — the two commands in README.md are `make run` and `make test`.
BUILD_DIR ?= build
BUILD_TYPE ?= RelWithDebInfo
JOBS ?= $(shell nproc)
CMAKE_FLAGS ?=

.PHONY: all setup configure build run test test-asan bench format clean package

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

bench: build
	@MERIDIAN_BENCH=1 scripts/setup.sh
	@bench/run.sh $(BUILD_DIR)

format:
	@git ls-files '*.cc' '*.h' | xargs clang-format -i

clean:
	@rm -rf $(BUILD_DIR) build-asan
