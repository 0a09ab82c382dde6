#!/usr/bin/env bash
# The test command: installs what is missing (Debian 12), then configures,
# builds and runs every test:
#   1. ASan+UBSan build, every test (ctest), warnings as errors;
#   2. TSan build, the concurrent tests (ctest -L tsan);
#   3. release build, installed to a staging prefix, and an outside project
#      built against it with find_package(bidistream) and with pkg-config;
#      then the example services (examples/chat, examples/ledger), each built
#      as an outside project against that install and driven by its grpcio
#      test (tools/examples.sh);
#   4. the layering check (tools/layering.sh: no include points up: core/
#      never includes proto/ or io/, proto/ never io/ nor core's pipeline,
#      public headers nothing internal, core/ and proto/ never liburing);
#   5. every libFuzzer target for a short while (tools/fuzz.sh, 20 s each by
#      default: BDS_TEST_FUZZ_SECONDS, at most 30), replaying every crash found so far.
# Usage: tools/test.sh        (BDS_TEST_SKIP_TSAN=1 skips step 2 for a quick local run)
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
bash tools/deps.sh
jobs=$(nproc)
passed=0
failed=0

run_ctest() { # dir, extra ctest args...
  local dir=$1; shift
  local log; log=$(mktemp)
  set +e
  (cd "$dir" && ctest --output-on-failure --timeout 900 "$@") 2>&1 | tee "$log"
  local rc=${PIPESTATUS[0]}
  set -e
  local line; line=$(grep -E '[0-9]+% tests passed, [0-9]+ tests? failed out of [0-9]+' "$log" | tail -1)
  if [ -n "$line" ]; then
    local total fails
    total=$(sed -E 's/.* out of ([0-9]+).*/\1/' <<<"$line")
    fails=$(sed -E 's/.*passed, ([0-9]+) tests? failed.*/\1/' <<<"$line")
    passed=$((passed + total - fails)); failed=$((failed + fails))
  fi
  rm -f "$log"
  return "$rc"
}

status=0
echo "== layering: no include points up (tools/layering.sh)"
if bash tools/layering.sh; then
  passed=$((passed + 1))
else
  failed=$((failed + 1)); status=1
fi

echo "== ASan+UBSan build: all tests"
cmake -S . -B build/asan -DBDS_SANITIZE=asan -DBDS_WERROR=ON -DCMAKE_BUILD_TYPE=Debug >/dev/null
cmake --build build/asan -j"$jobs"
run_ctest build/asan || status=1

if [ "${BDS_TEST_SKIP_TSAN:-0}" != 1 ]; then
  echo "== TSan build: concurrent tests"
  cmake -S . -B build/tsan -DBDS_SANITIZE=tsan -DBDS_WERROR=ON -DCMAKE_BUILD_TYPE=RelWithDebInfo \
        -DBDS_BUILD_BENCH=OFF >/dev/null
  cmake --build build/tsan -j"$jobs"
  run_ctest build/tsan -L tsan || status=1
fi

echo "== release build, install, and an outside consumer"
# Installed with --prefix to another place than the configured one: the
# CMake package and bidistream.pc must both follow it (relocatable).
rm -rf build/stage build/consumer
cmake -S . -B build/release -DBDS_WERROR=ON -DCMAKE_BUILD_TYPE=Release \
      -DCMAKE_INSTALL_PREFIX=/nonexistent/bidistream >/dev/null
cmake --build build/release -j"$jobs"
cmake --install build/release --prefix "$root/build/stage" >/dev/null
consumer_ok=1
cmake -S tests/consumer -B build/consumer -DCMAKE_PREFIX_PATH="$root/build/stage" >/dev/null &&
  cmake --build build/consumer -j"$jobs" &&
  LD_LIBRARY_PATH="$root/build/stage/lib" build/consumer/consumer_shared &&
  build/consumer/consumer_static || consumer_ok=0
pc_dir=$(dirname "$(find build/stage -name bidistream.pc | head -1)")
pc_prefix=$(PKG_CONFIG_PATH="$pc_dir" pkg-config --variable=prefix bidistream)
if [ "$(realpath "$pc_prefix")" != "$(realpath build/stage)" ]; then
  echo "bidistream.pc: prefix $pc_prefix, installed in build/stage"; consumer_ok=0
fi
cc tests/consumer/main.c -o build/consumer/consumer_pkgconfig \
   $(PKG_CONFIG_PATH="$pc_dir" pkg-config --cflags --libs bidistream) &&
  LD_LIBRARY_PATH="$root/build/stage/lib" build/consumer/consumer_pkgconfig || consumer_ok=0
if [ "$consumer_ok" = 1 ]; then passed=$((passed + 3)); else failed=$((failed + 1)); status=1; fi
# Only the public API leaves the installed shared library (no internal bds__
# name, nothing a public header does not declare).
if bash tests/tools/exports.sh "$(find build/stage -name libbidistream.so | head -1)" build/stage/include/bidistream; then
  passed=$((passed + 1))
else
  failed=$((failed + 1)); status=1
fi

# Runs a step that ends by printing "<name>: N passed, N failed" and adds its
# counts; a step that died before its count is one failure.
run_counted() { # name, command...
  local name=$1; shift
  local log; log=$(mktemp)
  set +e
  "$@" 2>&1 | tee "$log"
  local rc=${PIPESTATUS[0]}
  set -e
  local line; line=$(grep -E "^$name: [0-9]+ passed, [0-9]+ failed" "$log" | tail -1 || true)
  rm -f "$log"
  if [ -n "$line" ]; then
    passed=$((passed + $(sed -E 's/^[a-z]+: ([0-9]+) passed.*/\1/' <<<"$line")))
    failed=$((failed + $(sed -E 's/.*passed, ([0-9]+) failed.*/\1/' <<<"$line")))
  else
    failed=$((failed + 1))
  fi
  [ "$rc" = 0 ] || status=1
}

echo "== examples: built against the install, driven by grpcio (tools/examples.sh)"
run_counted examples bash tools/examples.sh "$root/build/stage"

fuzz_seconds=${BDS_TEST_FUZZ_SECONDS:-20}
[ "$fuzz_seconds" -le 30 ] || fuzz_seconds=30
echo "== fuzzing: each libFuzzer target for $fuzz_seconds s"
run_counted fuzz bash tools/fuzz.sh "$fuzz_seconds"

echo
echo "tests: $passed passed, $failed failed"
exit "$status"
