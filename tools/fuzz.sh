#!/usr/bin/env bash
# Builds the libFuzzer targets (tests/fuzz, CMake option BDS_FUZZ, clang with
# ASan+UBSan) in build/fuzz and runs each for SECONDS (default 60), one after
# the other, starting from the committed corpus (tests/fuzz/corpus/<target>:
# seeds and every crash ever found, so each run replays them first). New inputs
# go to build/fuzz/corpus/<target>, never into the repository; a crash leaves
# its input in build/fuzz/artifacts/ (fix it, then add it to the corpus as
# crash-<what>, with a regression test in the unit tests).
# Prints per target the executions and libFuzzer's coverage (cov: edges,
# ft: features), then "fuzz: N passed, N failed"; exits 1 if any target failed.
# Usage: tools/fuzz.sh [SECONDS] [TARGET...]   (targets: h2_raw h2_client
#        deframer grpc_wire http1_req decompress messages config; default all)
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
seconds=${1:-60}
shift || true
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(h2_raw h2_client deframer grpc_wire http1_req decompress messages config)
jobs=${BDS_FUZZ_JOBS:-$(nproc)}

bash tools/deps.sh
CC=clang cmake -S . -B build/fuzz -DBDS_FUZZ=ON -DBDS_BUILD_TESTS=OFF -DBDS_BUILD_BENCH=OFF \
      -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
exes=()
for t in "${targets[@]}"; do exes+=("fuzz_$t"); done
cmake --build build/fuzz -j"$jobs" --target "${exes[@]}"

passed=0
failed=0
mkdir -p build/fuzz/artifacts
for t in "${targets[@]}"; do
  work=build/fuzz/corpus/$t
  log=build/fuzz/$t.log
  mkdir -p "$work"
  max_len=4096
  case $t in h2_*) max_len=16384 ;; esac
  set +e
  # -timeout: one input running 10 s is a hang, reported like a crash. The outer
  # timeout only guards against libFuzzer itself not stopping.
  timeout $((seconds + 120)) "build/fuzz/tests/fuzz/fuzz_$t" -max_total_time="$seconds" -timeout=10 \
    -max_len=$max_len -rss_limit_mb=2048 -print_final_stats=1 \
    -artifact_prefix="$root/build/fuzz/artifacts/$t-" "$work" "tests/fuzz/corpus/$t" >"$log" 2>&1
  rc=$?
  set -e
  execs=$(grep -a '^stat::number_of_executed_units' "$log" | awk '{print $2}' | tail -1)
  cov=$(grep -aE '^#[0-9]+.*(DONE|pulse|NEW|REDUCE|INITED).*cov:' "$log" | tail -1 |
        sed -E 's/.*cov: ([0-9]+) ft: ([0-9]+) corp: ([0-9]+).*/cov \1, ft \2, corpus \3 inputs/')
  if [ "$rc" = 0 ]; then
    passed=$((passed + 1))
    printf 'fuzz %-10s ok     %s execs in %s s, %s\n' "$t" "${execs:-?}" "$seconds" "${cov:-?}"
  else
    failed=$((failed + 1))
    printf 'fuzz %-10s FAILED (exit %s) after %s execs, %s; log %s\n' "$t" "$rc" "${execs:-?}" "${cov:-?}" "$log"
    grep -aE 'check failed|ERROR: |SUMMARY|Test unit written|deadly signal' "$log" | head -8 | sed 's/^/    /'
  fi
done
echo "fuzz: $passed passed, $failed failed"
[ "$failed" = 0 ]
