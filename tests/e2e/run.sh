#!/usr/bin/env bash
# tests/e2e/run.sh — the end-to-end suite against a server binary.
#
#   tests/e2e/run.sh SERVER [PATTERN]
#
# SERVER is bidistreamd (e.g. build/tools/bidistreamd): every tests/e2e/test_*.py
# runs, each test group starting its own server on 127.0.0.1 with an ephemeral
# port and the flags it needs, and stopping it with SIGTERM (exit 0 expected).
# SERVER may also be tests/e2e/ref_server.py, the Python reference server
# written from SPEC.md: then only the groups it implements run (it has no
# grpc.testing.TestService and no example_server), which cross-checks the
# tests themselves. PATTERN (optional) keeps only test names containing it.
#
# The C client is exercised too when it is found: $BDS_CLIENT, else a `bds`
# next to SERVER (build/tools/bds).
#
# Prints "N passed, N failed" last; exit 0 only if nothing failed and
# something ran. Client: /usr/bin/python3 with Debian's python3-grpcio.
set -uo pipefail

if [ $# -lt 1 ] || [ ! -x "$1" ]; then
  echo "usage: $0 SERVER [PATTERN]   (SERVER: path to bidistreamd or tests/e2e/ref_server.py)" >&2
  exit 2
fi
here=$(cd "$(dirname "$0")" && pwd)
server=$(cd "$(dirname "$1")" && pwd)/$(basename "$1")
pattern=${2:-}
py=/usr/bin/python3
if ! $py -c 'import grpc' 2>/dev/null; then
  echo "run.sh: $py cannot import grpc (install python3-grpcio: bash tools/deps.sh)" >&2
  exit 2
fi
if [ -z "${BDS_CLIENT:-}" ] && [ -x "$(dirname "$server")/bds" ]; then
  export BDS_CLIENT=$(dirname "$server")/bds
fi

# Each run: suite file + unittest name pattern; the suites print "N passed, N failed" last.
runs=()
case "$(basename "$server")" in
  *.py)
    # The groups docs/SERVICE.md/§4 defines for Pipeline/Process and Health.
    for group in Pipeline Admission NeverReads Shutdown Cli; do
      runs+=("test_grpcio.py|$group.")
    done
    [ -f "$here/test_bds_client.py" ] && runs+=("test_bds_client.py|")
    ;;
  *)
    for f in "$here"/test_*.py; do
      runs+=("$(basename "$f")|")
    done
    ;;
esac

passed=0 failed=0 ran=0
for r in "${runs[@]}"; do
  file=${r%%|*} sel=${r#*|}
  if [ -n "$pattern" ] && [ -n "$sel" ]; then
    sel="$sel*$pattern"
  elif [ -n "$pattern" ]; then
    sel=$pattern
  fi
  echo "== $file ${sel:+($sel)}"
  out=$(mktemp)
  # Bounded: no suite may hang the runner (the suites bound each call too).
  timeout 900 $py "$here/$file" "$server" ${sel:+"$sel"} 2>&1 | tee "$out"
  rc=${PIPESTATUS[0]}
  last=$(grep -E '^[0-9]+ passed, [0-9]+ failed$' "$out" | tail -1)
  rm -f "$out"
  if [ -z "$last" ]; then
    echo "run.sh: $file ended without a summary (exit $rc)"
    failed=$((failed + 1))
    continue
  fi
  p=${last%% passed*} f=${last#*, } f=${f%% failed}
  passed=$((passed + p)) failed=$((failed + f)) ran=$((ran + p + f))
  if [ "$rc" -ne 0 ] && [ "$f" -eq 0 ]; then
    echo "run.sh: $file exited $rc with no failed test"
    failed=$((failed + 1))
  fi
done
echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ] && [ "$ran" -gt 0 ]
