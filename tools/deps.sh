#!/usr/bin/env bash
# Installs every Debian 12 package the project needs to build, test and run.
# Idempotent: packages already present are not reinstalled. Needs root (or sudo).
set -euo pipefail

pkgs=(
  build-essential cmake pkg-config git
  liburing-dev libnghttp2-dev libprotobuf-c-dev protobuf-c-compiler zlib1g-dev  # zlib: gRPC message compression
  libcriterion-dev spin
  python3 python3-grpcio grpc-proto nghttp2-client
  clang libclang-rt-14-dev  # libFuzzer (tools/fuzz.sh)
  libgrpc++-dev libprotobuf-dev protobuf-compiler protobuf-compiler-grpc  # the gRPC C++ adapter (adapters/grpcpp)
)
[ "${BDS_DEPS_BENCH:-0}" = 1 ] && pkgs+=(gnuplot golang-go)

missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0

sudo=""
[ "$(id -u)" = 0 ] || sudo="sudo"
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -qq
$sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
