#!/usr/bin/env bash
# tests/tools/exports.sh LIBBIDISTREAM.so PUBLIC-HEADER-DIR — what the shared
# library exports is the public API and nothing else (cmake/bidistream.map):
#   1. every defined dynamic symbol is bds_<letter>... (no internal bds__ name,
#      no other name), apart from the version node BIDISTREAM_*;
#   2. every exported bds_ name is declared in a public header (an internal
#      function named bds_x by mistake and marked BDS_API would leak).
# Prints each offending symbol; exit 0 when there is none, 1 otherwise.
set -uo pipefail
lib=${1:?usage: exports.sh LIB HEADER-DIR}
hdr=${2:?usage: exports.sh LIB HEADER-DIR}
syms=$(nm -D --defined-only "$lib" | awk '{print $3}' | sed 's/@.*//' | sort -u)
if [ -z "$syms" ]; then
  echo "exports: nm found no dynamic symbol in $lib"
  exit 1
fi
status=0
leaked=$(grep -v -E '^(bds_[a-z]|BIDISTREAM_)' <<<"$syms" || true)
if [ -n "$leaked" ]; then
  echo "exports: non-public symbols leave $lib:"
  echo "$leaked"
  status=1
fi
declared=$(grep -ohE '\bbds_[a-z][a-z0-9_]*\b' "$hdr"/*.h | sort -u)
undeclared=$(comm -23 <(grep -E '^bds_[a-z]' <<<"$syms") <(echo "$declared"))
if [ -n "$undeclared" ]; then
  echo "exports: exported but declared in no header of $hdr:"
  echo "$undeclared"
  status=1
fi
[ "$status" = 0 ] && echo "exports: $(grep -c -E '^bds_[a-z]' <<<"$syms") public symbols, nothing else"
exit "$status"
