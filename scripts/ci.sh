#!/usr/bin/env bash
# The whole test suite: install dependencies; build Debug and ASan+UBSan and
# run every test in both; build with clang -Wthread-safety -Werror; run the
# concurrency tests under TSan; smoke-run the benchmark and the demo.
# Exit status 0 only when everything passed. Skipped tests (exit 77: a kernel
# feature or privilege is missing) are listed and never count as passed.
set -uo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh || exit 1
jobs=$(nproc)
failed=()
logs=()  # logs of failed steps, excerpted at the end (a CI log keeps its tail)
step() {  # step NAME COMMAND...: runs a step, records a failure
  local name=$1
  shift
  echo "=== $name"
  "$@" || failed+=("$name")
}
run_ctest() {
  local dir=$1
  ctest --test-dir "$dir" --output-on-failure -j "$jobs" --timeout 300 | tee "$dir/ctest.log"
  local rc=${PIPESTATUS[0]}
  [ "$rc" -eq 0 ] || logs+=("$dir/ctest.log")
  if grep -qE "\*\*\*Skipped|Not Run" "$dir/ctest.log"; then
    echo "SKIPPED (not passed):"
    grep -E "\*\*\*Skipped|Not Run" "$dir/ctest.log"
    return 1
  fi
  return "$rc"
}

step "build debug" scripts/build.sh debug
step "tests debug" run_ctest build/debug
export ASAN_OPTIONS=handle_segv=0:handle_sigbus=0:detect_leaks=1
export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
step "build asan+ubsan" scripts/build.sh asan
step "tests asan+ubsan" run_ctest build/asan
unset ASAN_OPTIONS UBSAN_OPTIONS
# clang -Wthread-safety checks the annotated code, which is all in the
# libraries, the preload and the emu binary (the tests are built above twice).
clang_tsa() {
  cmake --preset clang-tsa -DEMU_BUILD_TESTS=OFF -DEMU_BUILD_BENCH=OFF >/dev/null &&
    cmake --build build/clang-tsa --target emu emu_preload
}
step "build clang -Wthread-safety" clang_tsa
echo "=== tsan (concurrency tests)"
if cmake --preset tsan -DEMU_BUILD_BENCH=OFF >/dev/null &&
   cmake --build build/tsan --target stress_test model_test demand_paging_test reclaim_test swap_device_test fork_test rmap_test pin_test volatile_test shmem_test file_map_test file_writeback_test; then
  for t in stress_test model_test demand_paging_test reclaim_test swap_device_test fork_test rmap_test pin_test volatile_test shmem_test file_map_test file_writeback_test; do
    TSAN_OPTIONS=halt_on_error=1 build/tsan/tests/$t 2>&1 | tee "build/tsan/$t.log"
    if [ "${PIPESTATUS[0]}" -ne 0 ]; then
      failed+=("tsan $t")
      logs+=("build/tsan/$t.log")
    fi
  done
else
  failed+=("build tsan")
fi
step "benchmark smoke run" build/debug/bench/fault_latency_bench --quick
step "swap benchmark smoke run" build/debug/bench/swap_bench --quick
step "fork/COW benchmark smoke run" build/debug/bench/fork_cow_bench --quick
step "rmap benchmark smoke run" build/debug/bench/rmap_bench --quick
step "volatile benchmark smoke run" build/debug/bench/volatile_bench --quick
step "dirty-tracking benchmark smoke run" build/debug/bench/dirty_bench --quick
step "programs benchmark smoke run" bench/programs_bench.sh --quick --emu build/debug/emu/cli/emu
step "demo" build/debug/emu/cli/emu demo --size 32M
step "emu run (the main job, smaller)" build/debug/emu/cli/emu run --mem-limit 16M -- \
  build/debug/emu/cli/emu workload --size 32M

# What failed, again at the end: the first sanitizer report and the Catch2
# failures of each failed log.
excerpt() {
  echo "=== excerpt of $1"
  awk '/^WARNING: ThreadSanitizer|^==[0-9]+==ERROR|runtime error:/ {n = 60}
       n > 0 {print; n--}' "$1" | head -60
  grep -E -B3 -A12 "^[^ ].*FAILED:$|The following tests FAILED|fatal error condition" "$1" | head -80
}
if [ ${#failed[@]} -gt 0 ]; then
  for l in "${logs[@]}"; do excerpt "$l"; done
  echo "=== FAILED: ${failed[*]}"
  exit 1
fi
echo "=== all passed"
