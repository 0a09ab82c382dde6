#!/usr/bin/env bash
# tools/examples.sh PREFIX — builds each program of examples/ as an outside
# project against the libbidistream installed in PREFIX (find_package, as a
# user would: cmake -S examples/X -B build/examples/X -DCMAKE_PREFIX_PATH=PREFIX)
# and runs its grpcio driver (examples/X/test_X.py, /usr/bin/python3).
# Prints each driver's output, then "examples: N passed, N failed" (the
# drivers' tests; an example that does not build counts one failure). Exit 0
# only if everything built and passed. The test command runs it after
# installing a release build to build/stage (tools/test.sh, step 3).
set -uo pipefail
if [ $# -ne 1 ] || [ ! -d "$1" ]; then
  echo "usage: $0 PREFIX   (where libbidistream is installed, e.g. build/stage)" >&2
  exit 2
fi
prefix=$(cd "$1" && pwd)
cd "$(dirname "$0")/.."
py=/usr/bin/python3
passed=0
failed=0

for dir in examples/*/; do
  dir=${dir%/}
  name=$(basename "$dir")
  driver=$dir/test_$name.py
  [ -f "$dir/CMakeLists.txt" ] && [ -f "$driver" ] || continue
  echo "== examples/$name: build against $prefix"
  build=build/examples/$name
  rm -rf "$build" # a fresh configure: no cached path to another install
  if ! cmake -S "$dir" -B "$build" -DCMAKE_PREFIX_PATH="$prefix" >/dev/null ||
     ! cmake --build "$build" -j2; then
    echo "examples/$name: build failed"
    failed=$((failed + 1))
    continue
  fi
  exe=$(find "$build" -maxdepth 1 -type f -executable -name "${name}_server" | head -1)
  if [ -z "$exe" ]; then
    echo "examples/$name: no ${name}_server was built"
    failed=$((failed + 1))
    continue
  fi
  echo "== examples/$name: $driver"
  log=$(mktemp)
  timeout 300 "$py" "$driver" "$exe" 2>&1 | tee "$log"
  rc=${PIPESTATUS[0]}
  line=$(grep -E '^[0-9]+ passed, [0-9]+ failed$' "$log" | tail -1)
  rm -f "$log"
  if [ -n "$line" ]; then
    passed=$((passed + $(sed -E 's/^([0-9]+) passed.*/\1/' <<<"$line")))
    failed=$((failed + $(sed -E 's/.*passed, ([0-9]+) failed$/\1/' <<<"$line")))
  fi
  if [ "$rc" != 0 ] && { [ -z "$line" ] || [ "$(sed -E 's/.*passed, ([0-9]+) failed$/\1/' <<<"$line")" = 0 ]; }; then
    echo "examples/$name: the driver exited $rc"
    failed=$((failed + 1)) # it died before its count, or its count hides the failure
  fi
done

echo "examples: $passed passed, $failed failed"
[ "$failed" = 0 ] && [ "$passed" -gt 0 ]
