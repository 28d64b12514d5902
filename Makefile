# SwiftBalancer: the two commands of the README, plus helpers.
BUILD ?= build
TYPE ?= Release
JOBS ?= $(shell nproc)
CMAKE_FLAGS ?=

.PHONY: deps build run test bench sanitize asan tsan fuzz format clean

deps:
	./scripts/install-deps.sh

build: deps
	cmake -S . -B $(BUILD) -DCMAKE_BUILD_TYPE=$(TYPE) -DEPLB_REQUIRE_TORCH=ON $(CMAKE_FLAGS)
	cmake --build $(BUILD) -j $(JOBS)

# Runs the main job on its embedded default workload.
run: build
	./scripts/run-default.sh $(BUILD)

# Every test through ctest: the release build, then the sanitizer builds.
test: build
	ctest --test-dir $(BUILD) --output-on-failure -j $(JOBS)
	$(MAKE) sanitize

sanitize: asan tsan

asan: deps
	cmake -S . -B $(BUILD)-asan -DCMAKE_BUILD_TYPE=Debug -DEPLB_SANITIZE=address,undefined -DEPLB_BUILD_BENCH=OFF -DEPLB_REQUIRE_TORCH=ON
	cmake --build $(BUILD)-asan -j $(JOBS)
	ctest --test-dir $(BUILD)-asan --output-on-failure -j $(JOBS) -LE slow

tsan: deps
	cmake -S . -B $(BUILD)-tsan -DCMAKE_BUILD_TYPE=RelWithDebInfo -DEPLB_SANITIZE=thread -DEPLB_BUILD_BENCH=OFF -DEPLB_BUILD_PYTHON=OFF
	cmake --build $(BUILD)-tsan -j $(JOBS) --target threaded_tests
	ctest --test-dir $(BUILD)-tsan --output-on-failure -j $(JOBS) -L "runtime|threads" -LE mpi

# The libFuzzer targets (clang, ASan + UBSan), each run for FUZZ_SECONDS; not part of `make test`,
# which replays their corpus (fuzz/corpus/) on every build instead.
FUZZ_SECONDS ?= 60
fuzz:
	./scripts/install-deps.sh fuzz
	cmake -S . -B $(BUILD)-fuzz -DCMAKE_CXX_COMPILER=clang++-14 -DCMAKE_BUILD_TYPE=RelWithDebInfo -DEPLB_SANITIZE=address,undefined -DEPLB_BUILD_FUZZ=ON -DEPLB_BUILD_TESTS=OFF -DEPLB_BUILD_BENCH=OFF -DEPLB_BUILD_PYTHON=OFF
	cmake --build $(BUILD)-fuzz -j $(JOBS)
	./scripts/fuzz.sh $(BUILD)-fuzz $(FUZZ_SECONDS)

bench: build
	./$(BUILD)/bench/eplb_algorithms_bench
	./$(BUILD)/bench/eplb_runtime_bench
	./$(BUILD)/bench/eplb_movement_report

format:
	clang-format -i $$(git ls-files '*.h' '*.cc')

clean:
	rm -rf $(BUILD) $(BUILD)-asan $(BUILD)-tsan $(BUILD)-fuzz
