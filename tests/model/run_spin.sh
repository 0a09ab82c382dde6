#!/usr/bin/env bash
# Model-checks a Promela file with spin in safety mode.
#   run_spin.sh MODEL.pml WORKDIR expect-ok|expect-error [-DVARIANT ...]
# expect-ok: passes when spin finds no error; expect-error: passes when it
# finds one (a deliberately broken variant: the model must have teeth).
set -euo pipefail
model=$1 work=$2 expect=$3
shift 3
command -v spin >/dev/null || { echo "spin is not installed (tools/deps.sh installs it)"; exit 1; }
rm -rf "$work" && mkdir -p "$work" && cd "$work"
spin "$@" -a "$model" >spin.log
cc -O2 -DSAFETY -o pan pan.c
./pan -m100000 >pan.log 2>&1 || true
errors=$(sed -nE 's/.*errors: ([0-9]+).*/\1/p' pan.log | tail -1)
grep -E 'errors:|states, stored|pan:1' pan.log || true
[ -n "$errors" ] || { echo "could not read spin's result"; cat pan.log; exit 1; }
case $expect in
  expect-ok) [ "$errors" = 0 ] ;;
  expect-error) [ "$errors" != 0 ] ;;
  *) echo "bad expectation $expect"; exit 2 ;;
esac
