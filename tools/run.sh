#!/usr/bin/env bash
# The run command: installs what is missing (Debian 12), builds a release, and
# starts bidistreamd on its defaults (127.0.0.1:50051, one shard per CPU).
# Extra arguments go to bidistreamd (see: tools/run.sh --help).
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/deps.sh
cmake -S . -B build/release -DCMAKE_BUILD_TYPE=Release -DBDS_BUILD_TESTS=OFF -DBDS_BUILD_BENCH=OFF >/dev/null
cmake --build build/release -j"$(nproc)" --target bidistreamd bds
exec build/release/tools/bidistreamd "$@"
