#!/usr/bin/env bash
# Installs every Debian 12 package the project needs to build, test and run.
# Idempotent: packages already present are not reinstalled. Needs root (or sudo).
set -euo pipefail

pkgs=(
  build-essential cmake pkg-config git
  liburing-dev libnghttp2-dev libprotobuf-c-dev protobuf-c-compiler libssl-dev openssl
  zlib1g-dev  # zlib: gRPC message compression
  libcriterion-dev spin
  python3 python3-grpcio grpc-proto nghttp2-client
  prometheus  # promtool check metrics (tests/e2e/test_metrics.py); ~19 MB download, ~96 MB installed
  clang libclang-rt-14-dev  # libFuzzer (tools/fuzz.sh)
  libgrpc++-dev libprotobuf-dev protobuf-compiler protobuf-compiler-grpc  # the gRPC C++ adapter (adapters/grpcpp)
  haproxy nginx  # the balancer configurations of tools/deploy (tests/deploy)
)
# Balancers the tests run themselves, each with its own config on free
# loopback ports: installing them must not leave a system service running
# (nginx's default site takes port 80).
services=(haproxy nginx)
[ "${BDS_DEPS_BENCH:-0}" = 1 ] && pkgs+=(gnuplot golang-go)
# @grpc/grpc-js, the e2e tests' second gRPC client, comes from the npm
# registry (tests/e2e/test_grpcjs.py runs npm ci): Debian's node and npm,
# unless a node with its own npm is installed already.
command -v npm >/dev/null 2>&1 || pkgs+=(nodejs npm)

missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0

sudo=""
[ "$(id -u)" = 0 ] || sudo="sudo"
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -qq
# invoke-rc.d asks policy-rc.d before starting a service: 101 = not now.
# A machine that has its own (containers do) keeps it.
policy=/usr/sbin/policy-rc.d
own_policy=0
if [ ! -e "$policy" ]; then
  printf '#!/bin/sh\nexit 101\n' | $sudo tee "$policy" >/dev/null
  $sudo chmod 755 "$policy"
  own_policy=1
  trap '$sudo rm -f "$policy"' EXIT
fi
$sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
# ... and under systemd, the units these packages enable would start at the
# next boot: only those this run installed are disabled.
if [ -d /run/systemd/system ]; then
  for svc in "${services[@]}"; do
    case " ${missing[*]} " in *" $svc "*) $sudo systemctl disable --now "$svc" >/dev/null 2>&1 || true ;; esac
  done
fi
if [ "$own_policy" = 1 ]; then
  $sudo rm -f "$policy"
  trap - EXIT
fi
