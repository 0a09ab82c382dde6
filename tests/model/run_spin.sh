#!/usr/bin/env bash
# Model-checks a Promela file with spin in safety mode (assertions and
# invalid end states; no LTL), in a scratch directory.
#   run_spin.sh MODEL.pml WORKDIR expect-ok|expect-error [spin -D options ...]
# expect-ok passes when the search is complete and finds no error;
# expect-error passes when spin finds an error (a deliberately broken variant:
# the model must have teeth). A missing spin is a failure: it is a declared
# dependency (tools/deps.sh installs it).
set -euo pipefail
model=$1 work=$2 expect=$3
shift 3
command -v spin >/dev/null || { echo "FAIL: spin is not installed (tools/deps.sh installs it)"; exit 1; }
command -v cc >/dev/null || { echo "FAIL: no C compiler for pan.c"; exit 1; }
rm -rf "$work" && mkdir -p "$work" && cp "$model" "$work/model.pml" && cd "$work"
spin "$@" -a model.pml >spin.log 2>&1 || { cat spin.log; exit 1; }
# SAFETY: no cycle detection needed; COLLAPSE: exact state compression.
cc -O2 -DSAFETY -DCOLLAPSE -o pan pan.c
./pan -m1000000 >pan.log 2>&1 || true
grep -E 'pan:1|errors:|states, stored|elapsed' pan.log || true
errors=$(sed -nE 's/.*errors: ([0-9]+).*/\1/p' pan.log | tail -1)
[ -n "$errors" ] || { echo "FAIL: could not read spin's result"; cat pan.log; exit 1; }
case $expect in
  expect-ok)
    if grep -qE 'max search depth too small|Search not completed' pan.log; then
      echo "FAIL: the search did not complete"; exit 1
    fi
    [ "$errors" = 0 ] || { spin -t -p "$@" model.pml >trail.txt 2>&1 || true
                           echo "FAIL: spin found an error; counterexample in $work/trail.txt"; exit 1; }
    ;;
  expect-error)
    [ "$errors" != 0 ] || { echo "FAIL: this broken variant should have been caught"; exit 1; }
    spin -t -p "$@" model.pml >trail.txt 2>&1 || true
    echo "caught as expected; counterexample in $work/trail.txt"
    ;;
  *) echo "bad expectation $expect"; exit 2 ;;
esac
