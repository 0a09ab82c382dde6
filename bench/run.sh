#!/usr/bin/env bash
# bench/run.sh — the latency benchmark suite in one command.
#
# Builds the peers (bench/peers/build.sh, Debian packages only) and bds-bench
# (bench/loadgen, standalone CMake build in build/bench-loadgen), then runs every
# scenario against every available server with the same client settings,
# alternating servers (A B C A B C ...) for each repetition, the server pinned to
# one CPU and the client to the others, and writes bench/results/<date>/:
#   results.jsonl   one JSON line per run (bds-bench output + tags)
#   env.json        machine, kernel, package versions, git revision, profile
#   conformance.txt each HTTP/2 server against SPEC §4 first (bench/peers/check.py:
#                   echo, keyed FIFO under work_us, fail -> INTERNAL)
#   report.md       one table per scenario (medians with min–max), ratios
#   plots/*.svg     gnuplot plots (and their .dat/.gp next to them)
#   raw/            server logs (not committed: .gitignore)
#
# Servers: grpc-cpp-cb, grpc-cpp-async, grpc-go (the peers), raw (the ceiling:
# raw io_uring echo, no HTTP/2), and bidistreamd when build/release/tools/bidistreamd
# exists (its command line: BDS_BENCH_BIDISTREAMD_CMD, see below).
#
# usage: bench/run.sh [--full] [--servers a,b,..] [--scenarios a,b,..] [--reps N]
#                     [--out DIR] [--no-build] [--list]
#   --full      the full profile (10 s runs, 2 s warm-up, 5 reps, 9-point sweep);
#               default: the quick profile (1 s runs, 3 reps, a few minutes)
# Environment: BDS_BENCH_BIDISTREAMD (the binary; default build/release/tools/bidistreamd),
#   SERVER_CPUS (default: the last CPU), CLIENT_CPUS (default: the
#   others), BDS_BENCH_PORT_BASE (27100: below the ephemeral port range, so a
#   client's own port never takes a server's), BDS_BENCH_BIDISTREAMD_CMD (a
#   command with {port} and {cpus} placeholders).
# Load goes to 127.0.0.1 only; every run is bounded in time and stops by itself.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
profile=quick
only_servers=""
only_scenarios=""
reps=""
out=""
build=1
list=0
while [ $# -gt 0 ]; do
  case "$1" in
    --full) profile=full ;;
    --quick) profile=quick ;;
    --servers) only_servers=$2; shift ;;
    --scenarios) only_scenarios=$2; shift ;;
    --reps) reps=$2; shift ;;
    --out) out=$2; shift ;;
    --no-build) build=0 ;;
    --list) list=1 ;;
    -h|--help) sed -n '2,30p' "$0"; exit 0 ;;
    *) echo "run.sh: unknown argument $1" >&2; exit 2 ;;
  esac
  shift
done

if [ "$profile" = full ]; then
  DUR=10; WARM=2; REPS=${reps:-5}; SWEEP="10 20 30 40 50 60 70 80 90"; OVER="120 150 200"
else
  DUR=1; WARM=0.5; REPS=${reps:-3}; SWEEP="10 50 90"; OVER="150"
fi
TICK_US=50   # open loop: batch sends per 50 µs (a wake-up costs ~10 µs of CPU on these VMs)

# ---- CPUs: the server on one, the client on the rest ---------------------------------
ncpu=$(nproc)
SERVER_CPUS=${SERVER_CPUS:-$((ncpu - 1))}
if [ -z "${CLIENT_CPUS:-}" ]; then
  CLIENT_CPUS=$(seq -s, 0 $((ncpu - 2)))
  [ "$ncpu" -lt 2 ] && CLIENT_CPUS=0
fi
CLIENT_THREADS=$(( $(echo "$CLIENT_CPUS" | tr ',' '\n' | wc -l) ))

PEERS="$root/build/bench-peers"
LOADGEN="$root/build/bench-loadgen/bds-bench"
BIDISTREAMD=${BDS_BENCH_BIDISTREAMD:-"$root/build/release/tools/bidistreamd"}
# One shard, as each peer gets one core; flags as tools/bidistreamd_config.c
# defines them (--listen, --shards; --idle-spin-us for the spin variant).
BDS_BENCH_BIDISTREAMD_CMD=${BDS_BENCH_BIDISTREAMD_CMD:-"$BIDISTREAMD --listen=127.0.0.1:{port} --shards=1"}

# ---- build -------------------------------------------------------------------------------
if [ "$build" = 1 ]; then
  echo "== build (nice, -j1: the cores are shared)" >&2
  "$here/peers/build.sh" >&2
  nice -n 10 cmake -S "$here/loadgen" -B "$root/build/bench-loadgen" -DCMAKE_BUILD_TYPE=Release >/dev/null
  nice -n 10 cmake --build "$root/build/bench-loadgen" -j1 >/dev/null
fi
[ -x "$LOADGEN" ] || { echo "run.sh: $LOADGEN missing (run without --no-build)" >&2; exit 1; }

# ---- servers -----------------------------------------------------------------------------
# name|transport|command ({port} is replaced); the ceiling is marked by transport raw.
servers=()
[ -x "$BIDISTREAMD" ] && servers+=("bidistreamd|h2c|$BDS_BENCH_BIDISTREAMD_CMD")
[ -x "$PEERS/peer-grpc-cpp" ] && servers+=(
  "grpc-cpp-cb|h2c|$PEERS/peer-grpc-cpp --api=callback --threads=1 --port={port}"
  # 4 CQ threads on the one core: measured best of 1/2/4 here (1 CQ leaves the
  # core ~40 % idle waiting on gRPC's internal hand-offs).
  "grpc-cpp-async|h2c|$PEERS/peer-grpc-cpp --api=async --threads=4 --port={port}")
[ -x "$PEERS/peer-grpc-go" ] && servers+=("grpc-go|h2c|$PEERS/peer-grpc-go --procs=1 --port={port}")
[ -x "$PEERS/raw-echo" ] && servers+=("raw|raw|$PEERS/raw-echo --port={port}")
if [ -n "$only_servers" ]; then
  keep=()
  for s in "${servers[@]}"; do
    case ",$only_servers," in *",${s%%|*},"*) keep+=("$s") ;; esac
  done
  servers=("${keep[@]}")
fi
[ ${#servers[@]} -gt 0 ] || { echo "run.sh: no server to measure" >&2; exit 1; }

# ---- scenarios -----------------------------------------------------------------------------
# name|bds-bench arguments|ceiling? (the raw echo ignores work_us, so keyed work
# has no ceiling). Open-loop scenarios (sweep-*, overload-*) are derived below
# from each server's own peak in "stream".
scenarios=(
  "pingpong|--conns 1 --streams 1 --outstanding 1 --payload 64|yes"
  "stream|--conns 1 --streams 16 --outstanding 32 --payload 64|yes"
  "many|--conns 4 --streams 256 --outstanding 1 --payload 64|yes"
  "many10k|--conns 16 --streams 625 --outstanding 1 --payload 64|yes"
  "payload4k|--conns 1 --streams 16 --outstanding 8 --payload 4096|yes"
  "payload64k|--conns 1 --streams 4 --outstanding 4 --payload 65536|yes"
  "keyed|--conns 1 --streams 16 --outstanding 64 --keys 1000 --work-us 500 --payload 64|no"
)
for p in $SWEEP; do scenarios+=("sweep-$p|--conns 1 --streams 16 --payload 64 --mode open|yes"); done
for p in $OVER; do scenarios+=("overload-$p|--conns 1 --streams 16 --payload 64 --mode open|yes"); done
if [ -n "$only_scenarios" ]; then
  keep=()
  for s in "${scenarios[@]}"; do
    n=${s%%|*}
    case ",$only_scenarios," in *",$n,"*|*",${n%%-*},"*) keep+=("$s") ;; esac
  done
  scenarios=("${keep[@]}")
fi

if [ "$list" = 1 ]; then
  printf 'server   %s\n' "${servers[@]%%|*}"
  printf 'scenario %s\n' "${scenarios[@]%%|*}"
  exit 0
fi

# ---- output directory ------------------------------------------------------------------------
if [ -z "$out" ]; then
  out="$here/results/$(date +%Y-%m-%d)"
  [ -e "$out" ] && out="$out-$(date +%H%M%S)"
fi
mkdir -p "$out/raw"
results="$out/results.jsonl"
: > "$results"

git_rev=$(git -C "$root" rev-parse --short HEAD 2>/dev/null || echo unknown)
git -C "$root" diff --quiet HEAD -- 2>/dev/null || git_rev="$git_rev+dirty"
pkgver() { dpkg-query -W -f='${Version}' "$1" 2>/dev/null || echo none; }
server_version() {
  case "$1" in
    grpc-cpp-*) echo "libgrpc++ $(pkgver libgrpc++1.51)" ;;
    grpc-go) echo "grpc-go $(pkgver golang-google-grpc-dev), $(go version 2>/dev/null | awk '{print $3}')" ;;
    raw) echo "raw-echo (liburing $(pkgver liburing2))" ;;
    bidistreamd) echo "bidistreamd $git_rev" ;;
  esac
}
cat > "$out/env.json" <<EOF
{"date":"$(date -u +%Y-%m-%dT%H:%M:%SZ)","profile":"$profile","git":"$git_rev",
 "kernel":"$(uname -sr)","cpu":"$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//')",
 "nproc":$ncpu,"mem_gib":$(awk '/MemTotal/{printf "%.0f", $2/1048576}' /proc/meminfo),
 "server_cpus":"$SERVER_CPUS","client_cpus":"$CLIENT_CPUS","client_threads":$CLIENT_THREADS,
 "duration_s":$DUR,"warmup_s":$WARM,"reps":$REPS,"open_loop_tick_us":$TICK_US,
 "loadavg_at_start":"$(cut -d' ' -f1-3 /proc/loadavg)",
 "packages":{"libgrpc++":"$(pkgver libgrpc++1.51)","golang-google-grpc-dev":"$(pkgver golang-google-grpc-dev)",
  "golang-go":"$(pkgver golang-go)","libnghttp2":"$(pkgver libnghttp2-14)","liburing":"$(pkgver liburing2)",
  "protobuf":"$(pkgver libprotobuf32)"}}
EOF

# ---- running one measurement -------------------------------------------------------------------
port_base=${BDS_BENCH_PORT_BASE:-27100}
run_no=0
srv_pid=""

stop_server() {
  [ -n "$srv_pid" ] || return 0
  kill -TERM "$srv_pid" 2>/dev/null || true
  for _ in $(seq 30); do kill -0 "$srv_pid" 2>/dev/null || break; sleep 0.1; done
  kill -KILL "$srv_pid" 2>/dev/null || true
  wait "$srv_pid" 2>/dev/null || true
  srv_pid=""
}
trap stop_server EXIT INT TERM

start_server() { # name cmd port
  local cmd=${2//\{port\}/$3}
  cmd=${cmd//\{cpus\}/$SERVER_CPUS}
  # shellcheck disable=SC2086
  taskset -c "$SERVER_CPUS" $cmd >>"$out/raw/$1.log" 2>&1 &
  srv_pid=$!
  for _ in $(seq 100); do   # listening within 5 s (checked without connecting)
    ss -Hltn "sport = :$3" 2>/dev/null | grep -q . && return 0
    kill -0 "$srv_pid" 2>/dev/null || break
    sleep 0.05
  done
  echo "run.sh: $1 did not start (see $out/raw/$1.log)" >&2
  return 1
}

# ---- conformance first: a server that does not do what SPEC §4 says is not compared
: > "$out/conformance.txt"
if /usr/bin/python3 -c 'import grpc' 2>/dev/null; then
  for s in "${servers[@]}"; do
    IFS='|' read -r name transport cmd <<<"$s"
    [ "$transport" = h2c ] || continue
    port=$((port_base + 900))
    if start_server "$name" "$cmd" "$port"; then
      res=$(timeout 30 /usr/bin/python3 "$here/peers/check.py" "$port" 2>&1) || true
      stop_server
    else
      res="did not start"
    fi
    echo "$name: $(echo "$res" | tail -1)" | tee -a "$out/conformance.txt" >&2
  done
else
  echo "conformance not checked: Debian's python3-grpcio is missing" | tee -a "$out/conformance.txt" >&2
fi

declare -A peak   # server -> median msg/s of "stream" in this run

median_of_stream() { # server
  /usr/bin/python3 - "$results" "$1" <<'EOF'
import json, statistics, sys
v = [json.loads(l)["result"]["msgs_per_s"] for l in open(sys.argv[1])
     if json.loads(l)["tags"].get("scenario") == "stream" and json.loads(l)["tags"].get("server") == sys.argv[2]]
print(int(statistics.median(v)) if v else 0)
EOF
}

total=0
for sc in "${scenarios[@]}"; do
  IFS='|' read -r _ _ ceil <<<"$sc"
  for s in "${servers[@]}"; do
    [ "$ceil" = no ] && [ "$(echo "$s" | cut -d'|' -f2)" = raw ] && continue
    total=$((total + REPS))
  done
done
echo "== $profile profile: ${#servers[@]} servers, ${#scenarios[@]} scenarios, $REPS reps, $total runs" \
     "(~$(( total * (${DUR%.*} + 2) / 60 + 1 )) min); server CPU $SERVER_CPUS, client CPUs $CLIENT_CPUS" >&2
echo "== writing $out" >&2
t_start=$(date +%s)

for sc in "${scenarios[@]}"; do
  IFS='|' read -r scen args ceil <<<"$sc"
  for rep in $(seq "$REPS"); do
    for s in "${servers[@]}"; do
      IFS='|' read -r name transport cmd <<<"$s"
      [ "$ceil" = no ] && [ "$transport" = raw ] && continue
      extra=()
      case "$scen" in
        sweep-*|overload-*)
          [ -n "${peak[$name]:-}" ] || peak[$name]=$(median_of_stream "$name")
          if [ "${peak[$name]}" -le 0 ]; then
            echo "run.sh: no 'stream' result for $name: $scen skipped" >&2; continue
          fi
          pct=${scen#*-}
          extra=(--rate $(( peak[$name] * pct / 100 )) --tick-us "$TICK_US") ;;
      esac
      [ "$transport" = raw ] && extra+=(--raw)
      run_no=$((run_no + 1))
      port=$((port_base + run_no % 800))
      start_server "$name" "$cmd" "$port" || continue
      sleep 0.2  # let it settle (idle RSS is sampled at the client's start)
      # shellcheck disable=SC2086
      line=$(timeout $(( ${DUR%.*} * 3 + 40 )) taskset -c "$CLIENT_CPUS" "$LOADGEN" --port "$port" \
        $args "${extra[@]}" --duration "$DUR" --warmup "$WARM" --threads "$CLIENT_THREADS" \
        --cpus "$CLIENT_CPUS" --server-pid "$srv_pid" \
        --tag "server=$name" --tag "scenario=$scen" --tag "rep=$rep" --tag "profile=$profile" \
        --tag "git=$git_rev" --tag "server_version=$(server_version "$name")" \
        --tag "server_cpus=$SERVER_CPUS" 2>>"$out/raw/bds-bench.log") || line=""
      stop_server
      if [ -z "$line" ]; then
        echo "run.sh: [$run_no/$total] $scen $name rep $rep: bds-bench failed (raw/bds-bench.log)" >&2
        continue
      fi
      echo "$line" >> "$results"
      el=$(( $(date +%s) - t_start ))
      eta=$(( el * (total - run_no) / run_no ))
      /usr/bin/python3 -c '
import json, sys
d = json.loads(sys.argv[1]); r = d["result"]; l = r["lat_us"]
warn = "  CLIENT-BOUND" if r["client_cpu_per_thread"] > 0.9 else ""
err = sum(v for k, v in r["errors"]["grpc_status"].items() if k != "0") + r["errors"]["order_violations"] + r["errors"]["conn_errors"]
print("[%s/%s] %-12s %-15s rep %s  %10.0f msg/s  p50 %8.1f us  p99 %9.1f us  cli %.2f srv %s%s%s  (eta %ss)" % (
    sys.argv[2], sys.argv[3], d["tags"]["scenario"], d["tags"]["server"], d["tags"]["rep"], r["msgs_per_s"],
    l["p50"], l["p99"], r["client_cpu"], r["server_cpu"], warn, "  ERRORS %d" % err if err else "", sys.argv[4]))
' "$line" "$run_no" "$total" "$eta" >&2
    done
  done
done

echo "== report" >&2
/usr/bin/python3 "$here/report.py" "$out" >&2
echo "== done: $out/report.md" >&2
