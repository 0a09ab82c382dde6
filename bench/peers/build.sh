#!/usr/bin/env bash
# Builds the benchmark peers into build/bench-peers/ (not committed):
#   peer-grpc-cpp   gRPC C++ (Debian libgrpc++ 1.51): --api=callback|async [--tls-cert=F --tls-key=F]
#   peer-grpc-go    grpc-go (Debian golang-google-grpc-dev 1.33), GOPATH mode [--tls-cert=F --tls-key=F]
#   raw-echo        the ceiling: io_uring echo of 5-byte-prefixed frames
# Debian packages only, nothing fetched from anywhere else: Go builds with
# GO111MODULE=off against /usr/share/gocode, GOPROXY=off, GOFLAGS unset.
# Gentle on shared cores: nice -n 10, one compiler job at a time.
# Usage: bench/peers/build.sh [--no-install] [--out DIR]
# A binary newer than its sources is not rebuilt.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
out="$root/build/bench-peers"
install=1
while [ $# -gt 0 ]; do
  case "$1" in
    --no-install) install=0 ;;
    --out) out=$2; shift ;;
    *) echo "usage: $0 [--no-install] [--out DIR]" >&2; exit 2 ;;
  esac
  shift
done

# Verified with apt-cache policy on Debian 12 (bookworm):
#   libgrpc++-dev 1.51.1, protobuf-compiler-grpc 1.51.1 (grpc_cpp_plugin),
#   protobuf-compiler 3.21.12, golang-go 1.19, golang-google-grpc-dev 1.33.3,
#   golang-google-protobuf-dev 1.28.1, protoc-gen-go 1.28.1,
#   protoc-gen-go-grpc 1.33.3 (plugin version 1.0), liburing-dev 2.3.
pkgs=(build-essential g++ pkg-config liburing-dev protobuf-compiler
      libgrpc++-dev protobuf-compiler-grpc libprotobuf-dev
      golang-go golang-google-grpc-dev golang-google-protobuf-dev
      protoc-gen-go protoc-gen-go-grpc)
if [ "$install" = 1 ]; then
  missing=()
  for p in "${pkgs[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
  done
  if [ ${#missing[@]} -gt 0 ]; then
    sudo=""; [ "$(id -u)" = 0 ] || sudo="sudo"
    echo "build.sh: installing ${missing[*]}" >&2
    export DEBIAN_FRONTEND=noninteractive
    $sudo apt-get update -qq
    $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
  fi
fi

mkdir -p "$out"
proto_dir="$root/proto"
N="nice -n 10"
CWARN=(-Wall -Wextra -Wshadow -Wstrict-prototypes -Wmissing-prototypes -Wvla -Werror)

stamp() { echo "build.sh: $*" >&2; }
# fresh OUT SRC...: true when OUT exists and is newer than every SRC (skip the build).
fresh() {
  local o=$1; shift
  [ -e "$o" ] || return 1
  for s in "$@"; do [ "$s" -nt "$o" ] && return 1; done
  return 0
}

# ---- raw io_uring echo (the ceiling) ------------------------------------------
if fresh "$out/raw-echo" "$here/raw_echo.c"; then stamp "raw-echo: up to date"; else
stamp "raw-echo"
$N cc -O2 -g -std=gnu11 "${CWARN[@]}" -o "$out/raw-echo" "$here/raw_echo.c" -luring
fi

# ---- grpc-go ---------------------------------------------------------------------
if fresh "$out/peer-grpc-go" "$here/grpc_go/main.go" "$proto_dir/pipeline.proto"; then
  stamp "peer-grpc-go: up to date"; else
stamp "peer-grpc-go (GOPATH mode, offline)"
gp="$out/gopath"
rm -rf "$gp/src/bdspeer"
mkdir -p "$gp/src/bdspeer/pipelinepb"
cp "$here/grpc_go/main.go" "$gp/src/bdspeer/"
# M option: the .proto has no go_package; map it to our GOPATH import path.
$N protoc -I"$proto_dir" \
  --go_out="$gp/src/bdspeer/pipelinepb" --go_opt=paths=source_relative \
  --go_opt=Mpipeline.proto=bdspeer/pipelinepb \
  --go-grpc_out="$gp/src/bdspeer/pipelinepb" --go-grpc_opt=paths=source_relative \
  --go-grpc_opt=Mpipeline.proto=bdspeer/pipelinepb \
  pipeline.proto
(
  cd "$gp/src/bdspeer"
  export GO111MODULE=off GOPATH="$gp:/usr/share/gocode" GOPROXY=off GOFLAGS= \
         GOCACHE="$out/gocache" GOTOOLCHAIN=local
  $N go build -p 1 -o "$out/peer-grpc-go" .
)
fi

# ---- gRPC C++ ------------------------------------------------------------------
if fresh "$out/peer-grpc-cpp" "$here/grpc_cpp/server.cc" "$proto_dir/pipeline.proto"; then
  stamp "peer-grpc-cpp: up to date"; else
stamp "peer-grpc-cpp (callback + async CQ in one binary, -j1)"
gen="$out/cpp-gen"
mkdir -p "$gen"
$N protoc -I"$proto_dir" --cpp_out="$gen" --grpc_out="$gen" \
  --plugin=protoc-gen-grpc="$(command -v grpc_cpp_plugin)" pipeline.proto
# shellcheck disable=SC2046
$N g++ -O2 -g -std=c++17 -Wall -Wextra -Wshadow -Werror -I"$gen" \
  -o "$out/peer-grpc-cpp" "$here/grpc_cpp/server.cc" \
  "$gen/pipeline.pb.cc" "$gen/pipeline.grpc.pb.cc" \
  $(pkg-config --cflags --libs grpc++ protobuf) -lpthread
fi

stamp "done: $(cd "$out" && ls peer-grpc-cpp peer-grpc-go raw-echo | tr '\n' ' ')"
