#!/usr/bin/env bash
# tests/tools/layering_catches.sh SOURCE-ROOT — tools/layering.sh fails on
# each kind of include that points up or sideways: a copy of core/, proto/,
# io/, tools/ and an application in examples/ passes, then each violation below is planted alone in a fresh copy and
# must fail the check with a line naming the file. Exit 0 when every case
# behaves, 1 otherwise (each failure says which case).
set -uo pipefail
src=$(cd "${1:?usage: layering_catches.sh SOURCE-ROOT}" && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
failures=0

fresh() {
  rm -rf "$work/tree"
  mkdir -p "$work/tree/tools"
  cp -r "$src/core" "$src/proto" "$src/io" "$src/services" "$work/tree/"
  cp "$src"/tools/*.sh "$src"/tools/*.c "$src"/tools/*.h "$work/tree/tools/"
  mkdir -p "$work/tree/examples" # an application, written against the public API
  printf '#include "bidistream/server.h"\n#include "pipeline.pb-c.h"\nint main(void) { return 0; }\n' \
    >"$work/tree/examples/app.c"
}

# plant FILE LINE EXPECT: adds the #include LINE at the top of FILE and expects
# the check to fail with a report on FILE:1 containing EXPECT.
plant() {
  local file=$1 line=$2 expect=$3 out rc
  fresh
  sed -i "1i $line" "$work/tree/$file"
  out=$(bash "$work/tree/tools/layering.sh" "$work/tree" 2>&1)
  rc=$?
  if [ "$rc" -ne 1 ] || ! grep -qF "$file:1: " <<<"$out" || ! grep -qF "$expect" <<<"$out"; then
    echo "FAIL: $line in $file: exit $rc, want 1 and a line '$file:1: ...$expect...'; output:"
    echo "$out"
    failures=$((failures + 1))
  else
    echo "ok: $line in $file -> $(grep -F "$file:1: " <<<"$out")"
  fi
}

fresh
if ! out=$(bash "$work/tree/tools/layering.sh" "$work/tree" 2>&1); then
  echo "FAIL: the unchanged tree does not pass:"
  echo "$out"
  failures=$((failures + 1))
fi

plant core/engine.c '#include "net.h"' 'from io'
plant core/status.c '#include "grpc_wire.h"' 'from proto'
plant core/session.c '#include "../io/shard.h"' 'from io'
plant core/mem.c '#include <nghttp2/nghttp2.h>' '<nghttp2/nghttp2.h>'
plant proto/grpc_wire.c '#include "shard.h"' 'from io'
plant proto/grpc_frame.c '#include "mem.h"' 'from core '
plant proto/palloc.c '#include <liburing.h>' '<liburing.h>'
plant core/include/bidistream/status.h '#include "base.h"' 'from core-base'
plant core/include/bidistream/options.h '#include "pipeline_int.h"' 'from core '
plant core/include/bidistream/pipeline.h '#include <liburing.h>' '<liburing.h>'
plant io/net.c '#include "nowhere.h"' 'found in no layer'
plant tools/bidistreamd.c '#include "server_int.h"' 'from io'
plant tools/bidistreamd.c '#include "grpc_wire.h"' 'from proto'
plant tools/bds.c '#include "shard.h"' 'from io'
plant examples/app.c '#include "base.h"' 'from core-base'

if [ "$failures" -gt 0 ]; then
  echo "layering_catches: $failures case(s) failed"
  exit 1
fi
echo "layering_catches: every planted violation was caught"
