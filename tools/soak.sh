#!/usr/bin/env bash
# Soak: bidistreamd (release build) under tests/e2e/soak.py's mixed load for
# MINUTES (default 30), then the checks: every message answered once and in
# key order (or its stream ended non-OK), RSS flat after warm-up, descriptors
# back to their baseline, exit 0 on SIGTERM with every buffer and session
# returned. Extra arguments go to bidistreamd. The test command runs a 45 s
# version against the ASan build (ctest e2e.soak).
# Usage: tools/soak.sh [MINUTES] [bidistreamd flags...]
set -euo pipefail
cd "$(dirname "$0")/.."
minutes=${1:-30}
shift || true
bash tools/deps.sh
cmake -S . -B build/release -DBDS_WERROR=ON -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build build/release -j"$(nproc)" --target bidistreamd
exec /usr/bin/python3 tests/e2e/soak.py build/release/tools/bidistreamd "$((minutes * 60))" "$@"
