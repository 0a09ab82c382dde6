#!/usr/bin/env bash
# tests/services/public_only.sh [DIR] — the built-in services are applications
# of the public API: every #include of DIR (default services/) must be
#   <...>                 a system header, but not liburing, nghttp2 or an
#                         internal header reached through the include path;
#   "bidistream/*.h"      a public header (core/include/bidistream/);
#   "*.pb-c.h"            a message protoc-c generated (proto/, grpc-proto);
#   "name.h"              a header of DIR itself (no "/" or "..": nothing
#                         outside it).
# Prints each violation as FILE:LINE: the include, and exits 1 if there is
# any. --catches plants violations in a scratch folder and exits 0 only if
# every one of them is reported (so the check cannot pass by seeing nothing).
# ctest: services.public_only, services.public_only_catches.
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)

check() { # dir
  local dir=$1 f n=0 lineno line inc
  for f in "$dir"/*.c "$dir"/*.h; do
    [ -f "$f" ] || continue
    while IFS= read -r line; do
      lineno=${line%%:*}
      line=${line#*:}
      if [[ $line =~ ^[[:space:]]*#[[:space:]]*include[[:space:]]*\<([^>]+)\> ]]; then
        inc=${BASH_REMATCH[1]}
        case $inc in
          liburing* | nghttp2/* | *_int.h | server_int.h | pipeline_int.h | base.h | list.h | h2_server.h | grpc_*.h)
            echo "$f:$lineno: <$inc>: not a public or system header"; n=$((n + 1)) ;;
        esac
      elif [[ $line =~ ^[[:space:]]*#[[:space:]]*include[[:space:]]*\"([^\"]+)\" ]]; then
        inc=${BASH_REMATCH[1]}
        if [[ $inc == bidistream/*.h && $inc != *..* && -f "$root/core/include/$inc" ]]; then continue; fi
        if [[ $inc == *.pb-c.h && $inc != *..* ]]; then continue; fi
        if [[ $inc != */* && -f "$dir/$inc" ]]; then continue; fi
        echo "$f:$lineno: \"$inc\": services/ includes only bidistream/*.h, generated *.pb-c.h and its own headers"
        n=$((n + 1))
      fi
    done < <(grep -n '^[[:space:]]*#[[:space:]]*include' "$f")
  done
  echo "$n violation(s) in $dir"
  [ "$n" -eq 0 ]
}

if [ "${1:-}" = --catches ]; then
  scratch=$(mktemp -d)
  trap 'rm -rf "$scratch"' EXIT
  cat > "$scratch/bad.c" <<'C'
#include <stdlib.h>
#include "bidistream/server.h"
#include "server_int.h"
#include "../io/server_int.h"
#include "bidistream/../../../io/shard.h"
# include <nghttp2/nghttp2.h>
#include <liburing.h>
#include "pipeline_int.h"
C
  out=$(check "$scratch")
  echo "$out"
  want=6
  got=$(grep -c ': ' <<<"$out") # each violation; the summary line has no ": "
  if [ "$got" -ne "$want" ]; then
    echo "expected $want violations reported, got $got"
    exit 1
  fi
  exit 0
fi
check "${1:-$root/services}"
