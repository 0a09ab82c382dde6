#!/usr/bin/python3
"""bench/report.py — turns a results directory into report.md and gnuplot plots.

usage: report.py DIR        (DIR holds results.jsonl and env.json from bench/run.sh)

For every scenario: one table, a row per server, medians over the repetitions
with [min–max]; then the ratios of msg/s and of p99 between every pair of
servers (row ÷ column), the ceiling included. Open-loop sweeps get one table of
p50/p99 per offered load and a plot; same50 (bidistreamd and the ceiling at the
same rate), overload (bidistreamd per backpressure policy, the peers as they
are) and perf (server-side cost per message) get a table each; a "targets"
section computes the issue's targets from the results, each met / not met; a
TLS section gives TLS ÷ h2c per server and bidistreamd ÷ each peer over TLS
(tls-pingpong / tls-stream against pingpong / stream of the same run).
Plots are SVG, written by gnuplot (Debian's gnuplot-nox) from .dat/.gp files
kept next to them, so they can be regenerated: throughput and p50/p99 per
scenario, latency vs offered load, and the latency percentile spectrum per
server. Standard library only.
"""
import json
import os
import shutil
import statistics
import subprocess
import sys
from collections import OrderedDict, defaultdict

CEILING = "raw"
BDS = "bidistreamd"
ORDER = ["bidistreamd", "bidistreamd-spin", "bidistreamd-shards1", "bidistreamd-shards2",
         "bidistreamd-hard-reject", "bidistreamd-queue", "bidistreamd-soft-allow",
         "bidistreamd-soft-allow-signal", "grpc-cpp-cb", "grpc-cpp-async", "grpc-go", "raw", "raw-spin"]
GO = "grpc-go"
# The lead's "before" figures for bidistreamd's instructions per message
# (callgrind, commit 3949eba): run.sh records them in env.json
# (BDS_BENCH_IR_BASE_STREAM / _OPEN); these are the defaults.
IR_BASE = {"stream": 3040, "open": 6660}
SPIN_P50_GOAL_US = 30


def is_variant(s):
    """Servers that run only in their own scenarios (policies, spin, shards)."""
    return s.startswith(BDS + "-") or s == "raw-spin"
MIB = 1024 * 1024
CLOSED_DESC = OrderedDict([
    ("pingpong", "ping-pong: 1 connection × 1 stream × 1 outstanding, 64 B"),
    ("stream", "streaming throughput: 1 × 16 streams × 32 outstanding, 64 B"),
    ("tls-pingpong", "ping-pong over TLS: the pingpong shape, TLS 1.3 with the same certificate and cipher for every server"),
    ("tls-stream", "streaming throughput over TLS: the stream shape, TLS 1.3 with the same certificate and cipher for every server"),
    ("many", "many streams: 4 connections × 256 streams × 1 outstanding, 64 B"),
    ("many10k", "10,000 streams: 16 connections × 625 streams × 1 outstanding, 64 B"),
    ("payload4k", "4 KiB payloads: 1 × 16 × 8 outstanding"),
    ("payload64k", "64 KiB payloads: 1 × 4 × 4 outstanding"),
    ("payload1m", "1 MiB payloads: 1 × 1 × 4 outstanding (bytes/s: payload bytes echoed per second, each way)"),
    ("spin-pingpong", "ping-pong with the server spinning before it sleeps: bidistreamd --idle-spin-us, "
                      "the raw echo --spin-us, the same µs"),
    ("keyed", "keyed work: 1 × 16 × 64 outstanding, 1,000 keys per stream, work_us = 500 (no ceiling: the raw echo does no work)"),
])


def load(d):
    runs = [json.loads(l) for l in open(os.path.join(d, "results.jsonl")) if l.strip()]
    # callgrind runs (ir-*) have their own section and fields
    irs = [r for r in runs if r["tags"]["scenario"].startswith("ir-")]
    runs = [r for r in runs if not r["tags"]["scenario"].startswith("ir-")]
    env = {}
    p = os.path.join(d, "env.json")
    if os.path.exists(p):
        env = json.load(open(p))
    return runs, irs, env


def server_key(s):
    return (ORDER.index(s) if s in ORDER else len(ORDER), s)


def med(vals):
    vals = [v for v in vals if v is not None]
    if not vals:
        return None, None, None
    return statistics.median(vals), min(vals), max(vals)


def fmt_num(v, unit=""):
    if v is None:
        return "–"
    if abs(v) >= 1e6:
        return f"{v / 1e6:.2f} M{unit}"
    if abs(v) >= 1e4:
        return f"{v / 1e3:.0f} k{unit}"
    if abs(v) >= 1e3:
        return f"{v / 1e3:.1f} k{unit}"
    if abs(v) >= 100:
        return f"{v:.0f}{unit}"
    return f"{v:.1f}{unit}"


def fmt_bytes(v):
    if v is None:
        return "–"
    if v >= 1e9:
        return f"{v / 1e9:.2f} GB/s"
    return f"{v / 1e6:.0f} MB/s" if v >= 1e7 else f"{v / 1e6:.1f} MB/s"


def fmt_ns(v):
    return "–" if v is None else f"{v:,.0f}"


def fmt_lat(us):
    if us is None:
        return "–"
    if us >= 1e6:
        return f"{us / 1e6:.2f} s"
    if us >= 1e3:
        return f"{us / 1e3:.2f} ms"
    return f"{us:.0f} µs"


def cell(vals, f):
    m, lo, hi = med(vals)
    if m is None:
        return "–"
    if len(vals) == 1 or lo == hi:
        return f(m)
    return f"{f(m)} [{f(lo)}–{f(hi)}]"


def metrics(runs):
    """Per-run metrics, as lists over the repetitions."""
    g = defaultdict(list)
    for r in runs:
        res = r["result"]
        lat = res["lat_us"]
        g["mps"].append(res["msgs_per_s"])
        for k in ("p50", "p90", "p99", "p999", "p9999", "max"):
            g[k].append(lat[k] if res["measured"] else None)
        g["cli"].append(res.get("client_cpu"))
        g["cli_ns"].append(res["client_cpu"] * 1e9 / res["msgs_per_s"]
                           if res.get("client_cpu") is not None and res["msgs_per_s"] else None)
        g["bytes"].append(res["msgs_per_s"] * r["config"]["payload"])
        g["cli_thr"].append(res.get("client_cpu_per_thread"))
        g["srv"].append(res.get("server_cpu"))
        g["rss"].append(res.get("server_rss_per_stream_b"))
        g["rss_load"].append(res.get("server_rss_load_kib"))
        g["rss_peak"].append(res.get("server_rss_peak_kib"))
        g["sent"].append(res["sent"])
        g["failed"].append(res.get("failed_stream_msgs", 0))
        g["reopened"].append(res.get("streams_reopened", 0))
        g["rej_frac"].append(res.get("failed_stream_msgs", 0) / res["sent"] if res["sent"] else None)
        g["rate"].append(r["config"]["rate"])
        e = res["errors"]
        bad = sum(v for k, v in e["grpc_status"].items() if k != "0")
        g["err"].append(bad + e["order_violations"] + e["bad_replies"] + e["conn_errors"] + e["rst_streams"])
        g["unans"].append(res["unanswered"])
    return g


def ratio_table(names, values, label, lower_is_better):
    """values: name -> median. Row ÷ column."""
    out = [f"\n{label} (row ÷ column{'; lower is better' if lower_is_better else ''}):\n"]
    out.append("| | " + " | ".join(names) + " |")
    out.append("|---" * (len(names) + 1) + "|")
    for a in names:
        row = [a]
        for b in names:
            va, vb = values.get(a), values.get(b)
            row.append("–" if a == b or not va or not vb else f"{va / vb:.2f}×")
        out.append("| " + " | ".join(row) + " |")
    return out


def gnuplot(plotdir, name, script):
    gp = os.path.join(plotdir, name + ".gp")
    with open(gp, "w") as f:
        f.write(script)
    if shutil.which("gnuplot"):
        subprocess.run(["gnuplot", name + ".gp"], cwd=plotdir, check=False)


def main():
    d = sys.argv[1]
    runs, irs, env = load(d)
    by = defaultdict(lambda: defaultdict(list))
    for r in runs:
        by[r["tags"]["scenario"]][r["tags"]["server"]].append(r)
    servers_all = sorted({r["tags"]["server"] for r in runs}, key=server_key)
    # The policy variants of bidistreamd run only in overload: not columns elsewhere.
    servers = [s for s in servers_all if not is_variant(s)]
    plotdir = os.path.join(d, "plots")
    os.makedirs(plotdir, exist_ok=True)

    md = []
    md.append(f"# Benchmark report — {env.get('date', '?')} ({env.get('profile', '?')} profile)\n")
    md.append(f"- git `{env.get('git', '?')}`; {env.get('kernel', '?')}; {env.get('cpu', '?')}, "
              f"{env.get('nproc', '?')} CPUs, {env.get('mem_gib', '?')} GiB")
    md.append(f"- server pinned to CPU {env.get('server_cpus', '?')}; bds-bench on CPU "
              f"{env.get('client_cpus', '?')} ({env.get('client_threads', '?')} thread(s)); "
              f"{env.get('duration_s', '?')} s measured after {env.get('warmup_s', '?')} s warm-up; "
              f"{env.get('reps', '?')} repetitions, servers alternating (A B C … A B C …), "
              f"each run on a freshly started server")
    pk = env.get("packages", {})
    if pk:
        md.append("- packages: " + ", ".join(f"{k} {v}" for k, v in pk.items()))
    md.append(f"- load average at start: {env.get('loadavg_at_start', '?')}")
    conf = os.path.join(d, "conformance.txt")
    if os.path.exists(conf):
        lines = [l.strip() for l in open(conf) if l.strip()]
        if lines:
            md.append("- conformance to docs/SERVICE.md (bench/peers/check.py): " + "; ".join(lines))
    md.append("- servers: " + "; ".join(
        f"**{s}** ({by_any(by, s)['tags'].get('server_version', '')})" for s in servers_all))
    md.append("\nCells: median over the repetitions [min–max]. Latency: from the (intended) send "
              "time to the reply, in the client. CPU in cores over the measured window; the server "
              "runs on one core, so `srv` near 1.0 means it is saturated, and `cli` near 1.0 per "
              "client thread means the *client* was the limit (flagged). p99.9 and beyond of short "
              "runs rest on few samples (a 1 s run at 10 k msg/s has 10 above p99.9): compare tails "
              "only within one run, as docs/ARCHITECTURE.md warns.\n")
    plots_at = len(md)

    # ---- closed-loop scenarios
    tput = OrderedDict()
    for scen, desc in CLOSED_DESC.items():
        if scen not in by:
            continue
        names = sorted(by[scen], key=server_key)
        md.append(f"## {scen} — {desc}\n")
        extra_rss = scen.startswith("many")
        big = by[scen][names[0]][0]["config"]["payload"] >= 4096
        hdr = "| server | msg/s" + (" | bytes/s" if big else "") + " | p50 | p90 | p99 | p99.9 | max | cli CPU | " \
              "cli ns/msg | srv CPU | msg/s per srv core"
        hdr += " | RSS/stream |" if extra_rss else " |"
        hdr += " errors |"
        md.append(hdr)
        md.append("|---" * (hdr.count("|") - 1) + "|")
        med_mps, med_p99 = {}, {}
        tput[scen] = {}
        for s in names:
            g = metrics(by[scen][s])
            med_mps[s] = med(g["mps"])[0]
            med_p99[s] = med(g["p99"])[0]
            tput[scen][s] = (med(g["mps"]), med(g["p50"]), med(g["p99"]))
            per_core = [m / c for m, c in zip(g["mps"], g["srv"]) if c]
            flag = " ⚠ client-bound" if (med(g["cli_thr"])[0] or 0) > 0.9 else ""
            row = [f"**{s}**" + (" (ceiling)" if s == CEILING else ""), cell(g["mps"], fmt_num)]
            if big:
                row.append(cell(g["bytes"], fmt_bytes))
            row += [cell(g["p50"], fmt_lat), cell(g["p90"], fmt_lat), cell(g["p99"], fmt_lat),
                    cell(g["p999"], fmt_lat), cell(g["max"], fmt_lat),
                    cell(g["cli"], lambda v: f"{v:.2f}") + flag, cell(g["cli_ns"], fmt_ns),
                    cell(g["srv"], lambda v: f"{v:.2f}"), cell(per_core, fmt_num)]
            if extra_rss:
                row.append("–" if s == CEILING else cell(g["rss"], lambda v: f"{v / 1024:.1f} KiB"))
            row.append(str(sum(g["err"])) if sum(g["err"]) else "0")
            md.append("| " + " | ".join(row) + " |")
        if len(names) > 1:
            md += ratio_table(names, med_mps, "msg/s ratio", False)
            md += ratio_table(names, med_p99, "p99 ratio", True)
        md.append("")

    sweep_dat = sweep_section(md, by, env, servers)
    sweep_plot(md, plotdir, servers, sweep_dat)
    vsgo_section(md, by)
    same_section(md, by)
    overload_section(md, by, env, servers_all)
    perf_section(md, by, env)
    ir_section(md, irs, env, servers, plotdir)
    shards_section(md, by, env)
    spectrum_plots(md, by, plotdir, servers)

    # ---- summary plots: throughput and latency per closed scenario
    if tput:
        # scenarios of variants only (spin-pingpong) have no column here
        scen_list = [sc for sc in tput if any(s in tput[sc] for s in servers)]
        with open(os.path.join(plotdir, "closed.dat"), "w") as f:
            f.write("# scenario then, per server: mps med min max, p50 med min max, p99 med min max\n")
            f.write("# scenario " + " ".join(f"{s}_mps {s}_lo {s}_hi {s}_p50 {s}_p50lo {s}_p50hi "
                                          f"{s}_p99 {s}_p99lo {s}_p99hi" for s in servers) + "\n")
            for scen in scen_list:
                cols = [scen]
                for s in servers:
                    t = tput[scen].get(s)
                    if not t:
                        cols += ["NaN"] * 9
                    else:
                        for m3 in t:
                            cols += [str(x) if x is not None else "NaN" for x in m3]
                f.write(" ".join(cols) + "\n")

        def bars(col_off, title, ylabel, out, ymin=1):
            parts = []
            for i, s in enumerate(servers):
                b = 2 + 9 * i + col_off
                parts.append(f"'closed.dat' using {b}:{b + 1}:{b + 2}:xtic(1) title '{s}' lc {i + 1}")
            return f"""set terminal svg size 1000,520 font 'sans,11'
set output '{out}'
set title '{title}'
set ylabel '{ylabel}'
set style data histogram
set style histogram errorbars gap 1 lw 1
set style fill solid 0.7 border -1
set logscale y
set yrange [{ymin}:*]
set grid ytics
set key outside right
set xtics rotate by -20
plot {", ".join(parts)}
"""
        gnuplot(plotdir, "throughput", bars(0, "Throughput per scenario (median, min–max), server on one core",
                                             "msg/s", "throughput.svg", 1000))
        gnuplot(plotdir, "latency_p50", bars(3, "p50 latency per scenario (median, min–max)", "µs",
                                              "latency_p50.svg", 10))
        gnuplot(plotdir, "latency_p99", bars(6, "p99 latency per scenario (median, min–max)", "µs",
                                              "latency_p99.svg", 10))
        md.insert(plots_at, "\n![throughput](plots/throughput.svg)\n![p50](plots/latency_p50.svg)\n"
                     "![p99](plots/latency_p99.svg)\n")

    md[plots_at:plots_at] = targets_section(by, irs, env) + tls_section(by, env)
    with open(os.path.join(d, "report.md"), "w") as f:
        f.write("\n".join(md) + "\n")
    print(f"report.py: {os.path.join(d, 'report.md')} ({len(runs)} runs)")


def lat_row(g):
    return (f"{cell(g['p50'], fmt_lat)} | {cell(g['p99'], fmt_lat)} | {cell(g['p999'], fmt_lat)} | "
            f"{cell(g['max'], fmt_lat)}")


def client_bound(g):
    return (med(g["cli_thr"])[0] or 0) > 0.9


def sweep_runs(by, s):
    """{pct: metrics} of the sweep points of server s."""
    out = {}
    for scen in by:
        if scen.startswith("sweep-") and s in by[scen]:
            out[int(scen.split("-")[1])] = metrics(by[scen][s])
    return dict(sorted(out.items()))


def sustained(g, g_low):
    """An open-loop point a server sustains: it answers >= 0.99x the offered
    rate in the window, and its p99 has not exploded (<= 10x its own p99 at its
    lowest sweep point, or <= 2 ms: a backlog that grows for the whole run ends
    up in hundreds of ms)."""
    rate, mps, p99 = med(g["rate"])[0], med(g["mps"])[0], med(g["p99"])[0]
    if not rate or mps is None or p99 is None:
        return None
    low = med(g_low["p99"])[0] if g_low else None
    bound = max(10 * low if low else 0, 2000)
    return mps >= 0.99 * rate and p99 <= bound


def raw_p99_at(by, rate):
    """The raw echo's p99 at this offered rate: a sweep (or same50) point
    within 3 % of it, else log-log interpolation between its two nearest
    points around it (marked ≈), else None."""
    pts = []
    for scen in by:
        if (scen.startswith("sweep-") or scen == "same50") and CEILING in by[scen]:
            g = metrics(by[scen][CEILING])
            r, p = med(g["rate"])[0], med(g["p99"])[0]
            if r and p and int(scen.split("-")[1] if "-" in scen else 50) <= 100:
                pts.append((r, p))
    if not rate or not pts:
        return None, ""
    pts.sort()
    for r, p in pts:
        if abs(r - rate) <= 0.03 * rate:
            return p, ""
    import math
    for (r0, p0), (r1, p1) in zip(pts, pts[1:]):
        if r0 < rate < r1:
            t = (math.log(rate) - math.log(r0)) / (math.log(r1) - math.log(r0))
            return math.exp(math.log(p0) + t * (math.log(p1) - math.log(p0))), "≈"
    return None, ""


def sweep_section(md, by, env, servers):
    sweep = sorted({int(s.split("-")[1]) for s in by if s.startswith("sweep-")})
    if not sweep:
        return {}
    md.append("## sweep — open-loop latency at a fixed offered rate, % of each server's own peak\n")
    md.append("Rate = the given % of the server's median msg/s in `stream` (same 1 × 16 streams); "
              "latency from the *intended* send time, so a server (or client) that falls behind "
              f"shows it (no coordinated omission). Sends are batched per "
              f"{env.get('open_loop_tick_us', '?')} µs tick, which bounds the client's own "
              "lateness. Above 100 % queues grow for the whole run; "
              "`unanswered` counts messages still without a reply when the run ended. "
              "**sustained**: answered ≥ 0.99× offered in the window and p99 ≤ max(10× the "
              "server's own p99 at its lowest point, 2 ms) — no growing backlog. "
              "**p99 ÷ raw**: ÷ the raw echo's p99 at the same offered rate: its sweep or same50 "
              "point within 3 % of the rate, else interpolated (log-log) between its two "
              "points around the rate (≈); – where the raw echo has no point at or around it "
              "(its peak is far higher, so its 10 % point is above most servers' rates).\n")
    md.append("| server | load | offered → answered msg/s | p50 | p99 | p99.9 | p99 ÷ raw | sustained | "
              "cli CPU | cli ns/msg | srv CPU |")
    md.append("|---|---|---|---|---|---|---|---|---|---|---|")
    sweep_dat = defaultdict(list)
    for s in servers:
        pts = sweep_runs(by, s)
        if not pts:
            continue
        low = pts[min(pts)]
        for p, g in pts.items():
            rate = med(g["rate"])[0]
            un = med(g["unans"])[0]
            flag = " ⚠ client-bound" if client_bound(g) else ""
            rp, approx = raw_p99_at(by, rate) if s != CEILING else (None, "")
            p99 = med(g["p99"])[0]
            ratio = f"{approx}{p99 / rp:.2f}×" if rp and p99 else "–"
            sus = sustained(g, low)
            md.append(f"| **{s}** | {p} %{' (above the peak)' if p > 100 else ''} | "
                      f"{fmt_num(rate)} → {cell(g['mps'], fmt_num)}"
                      + (f", {fmt_num(un)} unanswered" if un else "") + f" | {cell(g['p50'], fmt_lat)} | "
                      f"{cell(g['p99'], fmt_lat)} | {fmt_lat(med(g['p999'])[0])} | {ratio} | "
                      f"{'–' if sus is None else ('yes' if sus else '**no**')} | "
                      f"{cell(g['cli'], lambda v: f'{v:.2f}')}{flag} | {cell(g['cli_ns'], fmt_ns)} | "
                      f"{cell(g['srv'], lambda v: f'{v:.2f}')} |")
            if p <= 100:
                sweep_dat[s].append((p, rate, med(g["p50"])[0], p99, med(g["p999"])[0]))
    md.append("")
    return sweep_dat


def sweep_plot(md, plotdir, servers, sweep_dat):
    if not sweep_dat:
        return
    plots = []
    for i, s in enumerate(servers):
        if s not in sweep_dat:
            continue
        fn = f"sweep_{s}.dat"
        with open(os.path.join(plotdir, fn), "w") as f:
            f.write("# pct rate p50_us p99_us p999_us\n")
            for t in sweep_dat[s]:
                f.write(" ".join(str(x if x is not None else "NaN") for x in t) + "\n")
        plots.append(f"'{fn}' using 2:4 with linespoints lw 2 lc {i + 1} title '{s} p99'")
        plots.append(f"'{fn}' using 2:3 with linespoints dt 2 lc {i + 1} title '{s} p50'")
    gnuplot(plotdir, "sweep", f"""set terminal svg size 900,540 font 'sans,11'
set output 'sweep.svg'
set title "Open-loop latency vs offered load (% of each server's own peak)"
set xlabel 'offered load (msg/s)'
set ylabel 'latency from intended send time (µs)'
set logscale xy
set grid
set key outside right
plot {", ".join(plots)}
""")
    md.append("![open-loop sweep](plots/sweep.svg)\n")


def vsgo_rows(by):
    """(pct, rate, grpc-go metrics, go sustained, bidistreamd metrics) for every
    vsgo-P: bidistreamd at the very rate of grpc-go's sweep-P."""
    go = sweep_runs(by, GO)
    rows = []
    for scen in sorted((s for s in by if s.startswith("vsgo-")), key=lambda s: int(s.split("-")[1])):
        p = int(scen.split("-")[1])
        gb = metrics(by[scen][BDS]) if BDS in by[scen] else None
        gg = go.get(p)
        sus = sustained(gg, go[min(go)]) if gg else None
        rows.append((p, med((gb or gg)["rate"])[0], gg, sus, gb))
    return rows


def vsgo_section(md, by):
    rows = vsgo_rows(by)
    if not rows:
        return
    md.append("## vsgo — bidistreamd at the rates of grpc-go's sweep\n")
    md.append("`vsgo-P`: bidistreamd in open loop at P % of *grpc-go's* peak, i.e. at the very rate of "
              "grpc-go's `sweep-P` (both from grpc-go's median msg/s in `stream` of this run). The goal: "
              "at every rate grpc-go sustains (see the sweep's definition), bidistreamd's p99 is lower.\n")
    md.append("| load (of grpc-go's peak) | rate | grpc-go answered | grpc-go p50 / p99 | grpc-go sustained | "
              "bidistreamd answered | bidistreamd p50 / p99 | p99 bidistreamd ÷ grpc-go |")
    md.append("|---|---|---|---|---|---|---|---|")
    for p, rate, gg, sus, gb in rows:
        def pp(g):
            return "–" if not g else f"{fmt_lat(med(g['p50'])[0])} / {fmt_lat(med(g['p99'])[0])}"
        r = (med(gb["p99"])[0] / med(gg["p99"])[0]) if gg and gb and med(gg["p99"])[0] else None
        md.append(f"| {p} % | {fmt_num(rate)} | {fmt_num(med(gg['mps'])[0]) if gg else '–'} | {pp(gg)} | "
                  f"{'–' if sus is None else ('yes' if sus else 'no')} | "
                  f"{fmt_num(med(gb['mps'])[0]) if gb else '–'} | {pp(gb)} | "
                  f"{'–' if r is None else f'{r:.2f}×'} |")
    md.append("")


def same_section(md, by):
    """same50: bidistreamd and the ceiling at one absolute rate, alternating."""
    if "same50" not in by:
        return
    md.append("## same50 — bidistreamd and the ceiling at the same offered rate\n")
    md.append("Open loop, 1 × 16 streams, 64 B, at 50 % of bidistreamd's peak (its median msg/s in "
              "`stream`), the *same absolute rate* for the raw ceiling; servers alternate run by run. "
              "The p99 target compares these two rows, inside one run of the suite.\n")
    md.append("| server | rate → msg/s | p50 | p99 | p99.9 | max | cli CPU | cli ns/msg | srv CPU | reps |")
    md.append("|---|---|---|---|---|---|---|---|---|---|")
    for s in sorted(by["same50"], key=server_key):
        g = metrics(by["same50"][s])
        flag = " ⚠ client-bound" if client_bound(g) else ""
        md.append(f"| **{s}** | {fmt_num(med(g['rate'])[0])} → {cell(g['mps'], fmt_num)} | {lat_row(g)} | "
                  f"{cell(g['cli'], lambda v: f'{v:.2f}')}{flag} | {cell(g['cli_ns'], fmt_ns)} | "
                  f"{cell(g['srv'], lambda v: f'{v:.2f}')} | {len(g['mps'])} |")
    md.append("")


def overload_section(md, by, env, servers_all):
    over = sorted({int(s.split("-")[1]) for s in by if s.startswith("overload-")})
    if not over:
        return
    o = env.get("overload", {})
    nominal = o.get("nominal_msgs_per_s")
    md.append("## overload — open loop above the admission capacity, per backpressure policy\n")
    md.append(f"1 connection × {o.get('streams', '?')} streams, 64 B, 1,000 keys per stream, every message "
              f"`work_us` = {o.get('work_us', '?')} (a timer: no CPU). bidistreamd admits "
              f"{o.get('inbound_capacity', '?')} concurrent executions per stream "
              f"(`--inbound-capacity`), so its nominal capacity is "
              f"{nominal if nominal is None else format(nominal, ',')} msg/s; the offered rate is the given % of that, the same for every "
              "server, far below any server's CPU peak: the policy, not the CPU, decides. The peers "
              "have no policy (they run everything: the baseline). A stream the server ends "
              "(HARD_REJECT: RESOURCE_EXHAUSTED) is opened again at once by the client; "
              "**rejected** = messages that never got a reply because their stream was ended ÷ "
              "messages sent; **resets/s** = streams ended by the server per second. A rejection "
              "ends the whole stream, not one message (it is terminal for the session, docs/SERVICE.md), so "
              "with arrivals above capacity a HARD_REJECT stream dies within milliseconds of each "
              "opening and few messages are ever answered. Latency is "
              "that of *admitted* messages, from their intended send time. RSS: the server's at "
              "the end of the window, and its high-water mark.\n")
    md.append("| load | server | offered → answered msg/s | rejected | resets/s | p50 | p99 | p99.9 | max | "
              "unanswered | srv CPU | RSS (peak) |")
    md.append("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for p in over:
        scen = f"overload-{p}"
        for s in sorted(by[scen], key=server_key):
            g = metrics(by[scen][s])
            dur = by[scen][s][0]["config"]["duration_s"] + by[scen][s][0]["config"]["warmup_s"]
            resets = [r / dur for r in g["reopened"]]
            rss = cell(g["rss_load"], lambda v: f"{v / 1024:.1f} MiB")
            peak = med(g["rss_peak"])[0]
            md.append(f"| {p} % | **{s}** | {fmt_num(med(g['rate'])[0])} → {cell(g['mps'], fmt_num)} | "
                      f"{cell(g['rej_frac'], lambda v: f'{100 * v:.1f} %')} | {cell(resets, fmt_num)} | "
                      f"{lat_row(g)} | {fmt_num(med(g['unans'])[0])} | "
                      f"{cell(g['srv'], lambda v: f'{v:.2f}')} | {rss}"
                      + (f" ({peak / 1024:.1f} MiB)" if peak else "") + " |")
    md.append("")


PERF_COLS = [("task-clock", "CPU ns/msg", lambda v: f"{v * 1e6:,.0f}"),  # msec per msg -> ns
             ("context-switches", "ctx switches/msg", lambda v: f"{v:.3f}"),
             ("raw_syscalls:sys_enter", "syscalls/msg", lambda v: f"{v:.3f}"),
             ("instructions", "instructions/msg", lambda v: fmt_num(v)),
             ("cycles", "cycles/msg", lambda v: fmt_num(v))]


def perf_section(md, by, env):
    md.append("## server-side cost per message (perf stat)\n")
    scens = [s for s in ("perf-pingpong", "perf-stream") if s in by]
    if not scens:
        md.append(f"No perf runs in these results ({env.get('perf', 'a suite without perf runs')}).\n")
        return
    md.append(f"`perf stat -p <server>` over the measured window of a separate run with the shape of "
              f"`pingpong` / `stream` (so perf never touches the other scenarios' figures), divided "
              f"by the messages answered in that window. {env.get('perf', '')}. A counter the "
              "machine does not support shows as n/a.\n")
    md.append("| shape | server | msg/s | " + " | ".join(c[1] for c in PERF_COLS) + " |")
    md.append("|---" * (3 + len(PERF_COLS)) + "|")
    for scen in scens:
        for s in sorted(by[scen], key=server_key):
            rs = by[scen][s]
            row = [scen[5:], f"**{s}**", cell([r["result"]["msgs_per_s"] for r in rs], fmt_num)]
            for ev, _, f in PERF_COLS:
                vals = []
                for r in rs:
                    res = r["result"]
                    m = res["msgs_per_s"] * res.get("perf_window_s", 0)
                    v = (res.get("perf") or {}).get(ev)
                    if v is not None and m:
                        vals.append(v / m)
                row.append(cell(vals, f) if vals else "n/a")
            md.append("| " + " | ".join(row) + " |")
    md.append("")


IR_SHAPES = OrderedDict([
    ("ir-pingpong", "pingpong shape (1 × 1 × 1)"),
    ("ir-stream", "stream shape (1 × 16 × 32, closed loop)"),
    ("ir-open", "open loop, 1 × 16 streams, {rate} msg/s in 50 µs ticks (the baseline's shape)"),
    ("ir-open2k", "open loop, 1 × 16 streams, 2,000 msg/s in 50 µs ticks (~1 message per DATA frame)"),
])
GO_IR_NOTE = ("n/a (Go runtime under valgrind: callgrind 3.19 aborts on the Go runtime's signals, "
              "threads.c:247 vgCallgrind_post_signal assertion)")


def ir_table(irs):
    """{scenario: {server: [(ir - idle) / recv per rep]}}, plus {(scen, server): info}."""
    idle = defaultdict(list)
    for r in irs:
        if r["tags"]["scenario"] == "ir-idle" and r["result"].get("ir") is not None:
            idle[r["tags"]["server"]].append(r["result"]["ir"])
    per = defaultdict(lambda: defaultdict(list))
    info = {}
    for r in irs:
        scen, s, res = r["tags"]["scenario"], r["tags"]["server"], r["result"]
        if scen == "ir-idle":
            continue
        inf = info.setdefault((scen, s), {"notes": set(), "rate": r["config"].get("rate"), "mps": [],
                                          "recv": [], "ir": []})
        inf["mps"].append(res.get("msgs_per_s"))
        inf.setdefault("p50", []).append((res.get("lat_us") or {}).get("p50"))
        inf["recv"].append(res.get("recv"))
        if res.get("ir") is None:
            inf["notes"].add(res.get("ir_note", "no callgrind dump"))
            continue
        base = statistics.median(idle[s]) if idle.get(s) else 0
        if not idle.get(s):
            inf["notes"].add("no idle run: total Ir, start-up included")
        inf["ir"].append(res["ir"])
        inf["idle"] = base
        if res.get("recv"):
            per[scen][s].append((res["ir"] - base) / res["recv"])
    return per, info


def ir_behind(inf):
    """An open-loop callgrind run the server did not keep up with: it answered
    more or less than the offered rate by over 1 % in the window (a backlog
    building or draining), or its p50 passed 5 ms (queued, not served as sent):
    its batches grew, so its Ir/msg is not that of the intended shape."""
    rate, mps, p50 = inf.get("rate"), med(inf.get("mps", []))[0], med(inf.get("p50", []))[0]
    if not rate or mps is None:
        return False
    return abs(mps - rate) > 0.01 * rate or (p50 or 0) > 5000


def ir_section(md, irs, env, servers, plotdir):
    md.append("## instructions per message (callgrind)\n")
    cg = env.get("callgrind", {})
    if not irs:
        md.append("No callgrind runs in these results (ir-* scenarios; valgrind missing or not selected).\n")
        return
    base = cg.get("baseline_ir_per_msg", {})
    md.append(f"This machine's PMU does not count instructions or cycles for `perf stat` (see the perf "
              f"section), so the server runs under `valgrind --tool=callgrind` ({cg.get('valgrind', '?')}) "
              f"for {cg.get('duration_s', '?')} s after {cg.get('warmup_s', '?')} s, pinned as usual; its "
              "count is dumped with `callgrind_control -d` after bds-bench ends. **Ir/msg** = (the run's Ir − "
              "the median Ir of `ir-idle`, the same server started and dumped after as long without a client) "
              "÷ the messages bds-bench got back (warm-up and drain included, as the Ir are). Instructions "
              "do not move with the machine's noise as times do, but batching does move them: a server "
              "that falls behind under valgrind (~50× slower) batches more and reads lower (flagged when "
              "an open-loop run's answered rate is off the offered one by over 1 % or its p50 passes 5 ms). "
              "bidistreamd runs one shard here; with two shards it stalls under valgrind (see the shards "
              f"section). grpc-go: {GO_IR_NOTE}.\n")
    per, info = ir_table(irs)
    raw_ir = {scen: statistics.median(per[scen][CEILING]) for scen in per if per[scen].get(CEILING)}
    md.append("| shape | server | Ir/msg | ÷ raw | run Ir (idle Ir) | messages | offered → answered msg/s "
              "under valgrind | note |")
    md.append("|---|---|---|---|---|---|---|---|")
    for scen, desc in IR_SHAPES.items():
        names = sorted({s for (sc, s) in info if sc == scen}, key=server_key)
        if not names:
            continue
        desc = desc.format(rate=format(cg.get("open_rate", 20000), ","))
        for s in names + ([GO] if GO in servers and GO not in names else []):
            if s == GO and s not in names:
                md.append(f"| {desc} | **{s}** | n/a | – | – | – | – | {GO_IR_NOTE} |")
                continue
            inf = info[(scen, s)]
            v = per[scen].get(s)
            m = statistics.median(v) if v else None
            rr = raw_ir.get(scen)
            notes = sorted(inf["notes"])
            rate = inf["rate"]
            mps = med(inf["mps"])[0]
            if ir_behind(inf):
                notes.append(f"did not keep up under valgrind (p50 {fmt_lat(med(inf['p50'])[0])}): "
                             "larger batches, Ir/msg understated")
            if s == BDS and scen in ("ir-stream", "ir-open"):
                b = base.get(scen[3:], IR_BASE[scen[3:]])
                if m:
                    notes.append(f"{m / b:.2f}× the {b:,} Ir/msg before ({base.get('commit', '3949eba')})")
            md.append(f"| {desc} | **{s}** | {cell(v, lambda x: f'{x:,.0f}') if v else 'n/a'} | "
                      f"{f'{m / rr:.1f}×' if m and rr and s != CEILING else '–'} | "
                      f"{fmt_num(med(inf['ir'])[0])} ({fmt_num(inf.get('idle'))}) | {fmt_num(med(inf['recv'])[0])} | "
                      f"{fmt_num(rate) + ' → ' if rate else ''}{fmt_num(mps)} | {'; '.join(notes)} |")
    md.append("")
    # Plot: Ir/msg per shape (clusters) and server (bars), log scale.
    names = sorted({s for d in per.values() for s in d}, key=server_key)
    shapes = [sc for sc in IR_SHAPES if per.get(sc)]
    if names and shapes:
        with open(os.path.join(plotdir, "ir.dat"), "w") as f:
            f.write("# shape " + " ".join(names) + "  (Ir per message, median over reps)\n")
            for sc in shapes:
                f.write(sc + " " + " ".join(str(statistics.median(per[sc][s])) if per[sc].get(s) else "NaN"
                                            for s in names) + "\n")
        parts = [f"'ir.dat' using {i + 2}:xtic(1) title '{s}' lc {i + 1}" for i, s in enumerate(names)]
        gnuplot(plotdir, "ir", f"""set terminal svg size 900,480 font 'sans,11'
set output 'ir.svg'
set title 'Server instructions per message (callgrind Ir, idle run subtracted)'
set ylabel 'Ir / message'
set style data histogram
set style histogram clustered gap 1
set style fill solid 0.7 border -1
set logscale y
set yrange [10:*]
set grid ytics
set key outside right
plot {", ".join(parts)}
""")
        md.append("![instructions per message](plots/ir.svg)\n")


def shard_cpu(g_runs):
    """Server CPU ns per message per run: perf task-clock over the window when
    counted, else the server's CPU time sampled by bds-bench (/proc)."""
    out, src = [], set()
    for r in g_runs:
        res = r["result"]
        m = res["msgs_per_s"] * res.get("perf_window_s", 0)
        tc = (res.get("perf") or {}).get("task-clock")
        if tc is not None and m:
            out.append(tc * 1e6 / m)
            src.add("perf task-clock")
        elif res.get("server_cpu") and res["msgs_per_s"]:
            out.append(res["server_cpu"] * 1e9 / res["msgs_per_s"])
            src.add("server CPU from /proc")
    return out, src


def shards_result(by):
    sc = by.get("shards", {})
    a, b = sc.get(BDS + "-shards1"), sc.get(BDS + "-shards2")
    if not a or not b:
        return None
    ca, sa = shard_cpu(a)
    cb, sb = shard_cpu(b)
    # Per-rep ratio of runs side by side (alternating), then the median.
    pair = [y / x for x, y in zip(ca, cb) if x and y]
    ma, mb = med(ca)[0], med(cb)[0]
    return {"one": ma, "two": mb, "ratio": (mb / ma) if ma and mb else None, "pair": pair,
            "src": sorted(sa | sb), "a": metrics(a), "b": metrics(b), "ca": ca, "cb": cb}


def shards_section(md, by, env):
    r = shards_result(by)
    if not r:
        return
    keys = env.get("shard_keys", 1000)
    md.append("## shards — two shards against one, keys spread\n")
    md.append(f"The stream shape with {keys:,} keys per stream (`--keys`): keys hash to shards, so with "
              "`--shards=2` about half the messages are handed to the other shard (MPSC ring and MSG_RING "
              "doorbell) and their replies handed back; with `--shards=1` none are. bidistreamd-shards1 runs "
              "pinned to the server CPU as everywhere; bidistreamd-shards2 on every CPU (a shard per CPU, one "
              "of them shared with bds-bench). **CPU ns/msg** = the server's CPU time over the window ÷ the "
              f"messages answered in it ({', '.join(r['src'])}): the cost per message whatever the "
              "throughput. **hop** = (2 shards − 1 shard) ÷ 0.5 hops per message (a hop: a message handled "
              "on the other shard, there and back; 50.1 % of the messages hop in this shape, counted by hand "
              "with `--metrics-listen`: bench/README.md).\n")
    md.append("| server | msg/s | p50 | p99 | srv CPU | CPU ns/msg |")
    md.append("|---|---|---|---|---|---|")
    for name, g, c in ((BDS + "-shards1", r["a"], r["ca"]), (BDS + "-shards2", r["b"], r["cb"])):
        md.append(f"| **{name}** | {cell(g['mps'], fmt_num)} | {cell(g['p50'], fmt_lat)} | "
                  f"{cell(g['p99'], fmt_lat)} | {cell(g['srv'], lambda v: f'{v:.2f}')} | {cell(c, fmt_ns)} |")
    if r["ratio"]:
        hop = (r["two"] - r["one"]) / 0.5
        pr = (f"; per-rep ratio {min(r['pair']):.2f}–{max(r['pair']):.2f}×" if len(r["pair"]) > 1 else "")
        md.append(f"\n2 shards ÷ 1 shard CPU per message: **{r['ratio']:.2f}×** ({fmt_ns(r['two'])} / "
                  f"{fmt_ns(r['one'])} ns{pr}); cost of a cross-shard hop ≈ **{hop:,.0f} ns** of server CPU.")
    md.append("")


def spectrum_plots(md, by, plotdir, servers):
    """Latency percentile spectrum per server (HdrHistogram style: x = 1/(1-p)),
    element-wise median over the repetitions, one plot per closed scenario."""
    made = []
    for scen in list(CLOSED_DESC) + ["same50"]:
        if scen not in by:
            continue
        lines = []
        for i, s in enumerate(sorted(set(servers) | set(by[scen]), key=server_key)):
            rs = [r for r in by[scen].get(s, []) if r["result"].get("spectrum_us") and r["result"]["measured"]]
            if not rs:
                continue
            pts = []
            for k, (pct, _) in enumerate(rs[0]["result"]["spectrum_us"]):
                v = statistics.median(r["result"]["spectrum_us"][k][1] for r in rs)
                pts.append((pct, v))
            fn = f"spectrum_{scen}_{s}.dat"
            with open(os.path.join(plotdir, fn), "w") as f:
                f.write("# percentile 1/(1-p) latency_us (median over reps)\n")
                for pct, v in pts:
                    x = 1e6 if pct >= 100 else 1 / (1 - pct / 100)
                    f.write(f"{pct} {x} {v}\n")
            lines.append(f"'{fn}' using 2:3 with linespoints lw 2 lc {i + 1} title '{s}'")
        if not lines:
            continue
        gnuplot(plotdir, f"spectrum_{scen}", f"""set terminal svg size 900,520 font 'sans,11'
set output 'spectrum_{scen}.svg'
set title 'Latency by percentile: {scen} (median over repetitions)'
set xlabel 'percentile'
set ylabel 'latency (µs)'
set logscale xy
set xtics ("0" 1, "90" 10, "99" 100, "99.9" 1000, "99.99" 10000, "99.999" 100000, "max" 1000000)
set grid
set key outside right
plot {", ".join(lines)}
""")
        made.append(f"![spectrum {scen}](plots/spectrum_{scen}.svg)")
    if made:
        md.append("## latency percentile spectrum\n")
        md.append("\n".join(made) + "\n")


def targets_section(by, irs, env):
    """Every goal of issue 11 and the suite's older targets, computed from this
    run: each a ratio (or a figure) with its goal, met / not met; a goal whose
    scenario did not run reads "n/a (not measured)", never dropped."""
    out = ["## targets\n",
           "Computed from the medians below (server on one core unless said). Each ratio is bidistreamd ÷ the "
           "other server unless said. A ratio against a ⚠ client-bound ceiling overstates bidistreamd "
           "(the ceiling could go faster). Issue 11's goals first, then the suite's older targets.\n",
           "| target | measured | goal | verdict |", "|---|---|---|---|"]

    def m(scen, s, key):
        rs = by.get(scen, {}).get(s)
        if not rs:
            return None, None
        g = metrics(rs)
        return med(g[key])[0], g

    def verdict(v, goal, ge):
        if v is None:
            return "n/a (not measured)"
        return "**met**" if (v >= goal if ge else v <= goal) else "**not met**"

    def x(r):
        return f"{r:.2f}×"

    rows = []
    # ---- issue 11: open loop
    a, ga = m("same50", BDS, "p99")
    b, gb = m("same50", CEILING, "p99")
    r_same = a / b if a and b else None
    n = min(len(ga["p99"]), len(gb["p99"])) if ga and gb else 0
    same_note = "–"
    if r_same:
        same_note = (f"{x(r_same)} ({fmt_lat(a)} / {fmt_lat(b)} at {fmt_num(med(ga['rate'])[0])} msg/s, "
                     f"{n} alternating reps")
        pair = [p / q for p, q in zip(ga["p99"], gb["p99"]) if p and q]
        if len(pair) > 1:
            same_note += f"; per-rep ratio {min(pair):.2f}–{max(pair):.2f}×"
        same_note += ")" + (" ⚠ fewer than 5 reps" if n < 5 else "")
    rows.append(("open loop: p99 at 50 % of bidistreamd's peak ÷ raw echo's p99 at the same rate (same50)",
                 same_note, "≤ 2×", verdict(r_same, 2, False)))
    pts = sweep_runs(by, BDS)
    peak, _ = m("stream", BDS, "mps")
    g80 = pts.get(80)
    if g80:
        sus = sustained(g80, pts[min(pts)])
        rate, mps = med(g80["rate"])[0], med(g80["mps"])[0]
        meas = (f"sweep-80: offered {fmt_num(rate)} → answered {fmt_num(mps)} msg/s ({mps / rate:.3f}×), "
                f"p99 {fmt_lat(med(g80['p99'])[0])} (at 10 %: {fmt_lat(med(pts[min(pts)]['p99'])[0])}), "
                f"{fmt_num(med(g80['unans'])[0])} unanswered; peak {fmt_num(peak)}")
        rows.append(("open loop: bidistreamd sustains ≥ 0.8× its closed-loop peak, no growing backlog", meas,
                     "answered ≥ 0.99× offered at 80 % of peak, p99 ≤ max(10× its 10 % p99, 2 ms)",
                     "**met**" if sus else "**not met**"))
    else:
        rows.append(("open loop: bidistreamd sustains ≥ 0.8× its closed-loop peak, no growing backlog", "–",
                     "answered ≥ 0.99× offered at 80 % of peak", verdict(None, 0, True)))
    vr = vsgo_rows(by)
    held = [(p, gg, gb) for p, _, gg, sus, gb in vr if sus and gb]
    if held:
        worse = [(p, med(gb["p99"])[0] / med(gg["p99"])[0]) for p, gg, gb in held
                 if med(gb["p99"])[0] >= med(gg["p99"])[0]]
        ratios = [med(gb["p99"])[0] / med(gg["p99"])[0] for p, gg, gb in held]
        meas = (f"{len(held)} rates grpc-go sustains ({', '.join(f'{p} %' for p, _, _ in held)} of its peak): "
                f"bidistreamd p99 ÷ grpc-go p99 {min(ratios):.2f}–{max(ratios):.2f}×"
                + (f"; not lower at {', '.join(f'{p} % ({q:.2f}×)' for p, q in worse)}" if worse else ""))
        rows.append(("open loop: at every rate grpc-go sustains, bidistreamd's p99 is lower (vsgo)", meas,
                     "< 1× at each", "**not met**" if worse else "**met**"))
    else:
        rows.append(("open loop: at every rate grpc-go sustains, bidistreamd's p99 is lower (vsgo)",
                     "–" if not vr else "grpc-go sustained none of the vsgo rates", "< 1× at each",
                     verdict(None, 0, True)))
    # ---- stream 64 B, instructions
    v, g = m("stream", BDS, "mps")
    rows.append(("stream 64 B: bidistreamd msg/s on one core",
                 f"{fmt_num(v)}" + (f" [{fmt_num(min(g['mps']))}–{fmt_num(max(g['mps']))}]" if g else "") if v else "–",
                 "≥ 3 M msg/s", verdict(v, 3e6, True)))
    per, info = ir_table(irs)
    base = env.get("callgrind", {}).get("baseline_ir_per_msg", {})
    for shape, label in (("stream", "closed-loop stream shape"), ("open", "open loop, ~1 message per DATA frame")):
        scen = "ir-" + shape
        bv = base.get(shape, IR_BASE[shape])
        v = per.get(scen, {}).get(BDS)
        mv = statistics.median(v) if v else None
        meas, behind = "–", False
        if mv:
            meas = f"{mv:,.0f} Ir/msg = {mv / bv:.2f}× the {bv:,} before ({base.get('commit', '3949eba')})"
            inf = info.get((scen, BDS), {})
            if ir_behind(inf):
                behind = True
                meas += (f" ⚠ under valgrind it did not keep up with {fmt_num(inf['rate'])} msg/s (answered "
                         f"{fmt_num(med(inf['mps'])[0])} msg/s in the window, p50 {fmt_lat(med(inf['p50'])[0])}): "
                         "batches grew, so the count is not of ~1 message per frame")
        if shape == "open":
            v2 = per.get("ir-open2k", {}).get(BDS)
            if v2:
                meas += f"; at 2,000 msg/s (ir-open2k): {statistics.median(v2):,.0f} Ir/msg"
        rows.append((f"server instructions per message down by a third: bidistreamd, {label} ({scen})", meas,
                     f"≤ {bv * 2 / 3:,.0f} Ir/msg (⅔ × {bv:,})",
                     "n/a (fell behind under valgrind: not the baseline's shape)" if behind
                     else verdict(mv, bv * 2 / 3, False)))
    measured = sorted({s for d in per.values() for s in d}, key=server_key)
    rows.append(("instructions (and cycles where counted) per message for every server",
                 (f"Ir/msg for {', '.join(measured)}" if measured else "no callgrind runs")
                 + ("; grpc-go n/a (Go runtime under valgrind)" if GO in by.get("stream", {}) else "")
                 + "; cycles: the PMU does not count them here" * ("cycles" not in env.get("perf", "cycles")),
                 "every server", "shown" if measured else verdict(None, 0, True)))
    # ---- large messages
    v, _ = m("payload64k", BDS, "mps")
    for peer, goal, label in ((("grpc-cpp-cb", 2, "gRPC C++ callback")), ("grpc-go", 1.5, "grpc-go")):
        w, _ = m("payload64k", peer, "mps")
        r = v / w if v and w else None
        rows.append((f"64 KiB messages (payload64k) ÷ {label}",
                     f"{x(r)} ({fmt_num(v)} / {fmt_num(w)} msg/s)" if r else "–", f"≥ {goal}×",
                     verdict(r, goal, True)))
    v, _ = m("payload1m", BDS, "bytes")
    w, gw = m("payload1m", CEILING, "bytes")
    r = v / w if v and w else None
    cb = " (ceiling ⚠ client-bound)" if gw and client_bound(gw) else ""
    rows.append(("1 MiB messages (payload1m): bytes/s ÷ raw echo's",
                 f"{x(r)} ({fmt_bytes(v)} / {fmt_bytes(w)}){cb}" if r else "–", "≥ 0.5×", verdict(r, 0.5, True)))
    # ---- ping-pong
    a, _ = m("pingpong", BDS, "p50")
    b, _ = m("pingpong", CEILING, "p50")
    r = a / b if a and b else None
    rows.append(("ping-pong p50 ÷ raw echo's p50", f"{x(r)} ({fmt_lat(a)} / {fmt_lat(b)})" if r else "–",
                 "≤ 1.1×", verdict(r, 1.1, False)))
    a, ga = m("spin-pingpong", BDS + "-spin", "p50")
    b, _ = m("spin-pingpong", "raw-spin", "p50")
    spin = env.get("spin_us", "?")
    rows.append((f"ping-pong p50 with --idle-spin-us={spin} (spin-pingpong)",
                 (f"{fmt_lat(a)}" + (f" [{fmt_lat(min(ga['p50']))}–{fmt_lat(max(ga['p50']))}]" if len(ga["p50"]) > 1 else "")
                  + (f"; raw echo --spin-us={spin}: {fmt_lat(b)}" if b else "")) if a else "–",
                 f"≤ {SPIN_P50_GOAL_US} µs", verdict(a, SPIN_P50_GOAL_US, False)))
    # ---- two shards
    sr = shards_result(by)
    if sr and sr["ratio"]:
        hop = (sr["two"] - sr["one"]) / 0.5
        meas = (f"{x(sr['ratio'])} ({fmt_ns(sr['two'])} / {fmt_ns(sr['one'])} ns CPU/msg, "
                f"{', '.join(sr['src'])}); cross-shard hop ≈ {hop:,.0f} ns")
    else:
        meas = "–"
    rows.append(("two shards, keys spread: server CPU per message, 2 shards ÷ 1 shard (shards)", meas, "≤ 1.15×",
                 verdict(sr["ratio"] if sr else None, 1.15, False)))
    # ---- the bench client
    v, graw = m("stream", CEILING, "mps")
    rows.append(("bds-bench drives the raw echo in the stream scenario",
                 (f"{fmt_num(v)} msg/s, bds-bench at {med(graw['cli'])[0]:.2f} core"
                  + (" ⚠ client-bound" if client_bound(graw) else "")) if v else "–",
                 "≥ 4.5 M msg/s", verdict(v, 4.5e6, True)))
    bound = []
    ceil = {sc: med(metrics(by[sc][CEILING])["mps"])[0] for sc in CLOSED_DESC if CEILING in by.get(sc, {})}
    for sc in CLOSED_DESC:
        for s_, rs in by.get(sc, {}).items():
            if s_ == CEILING or s_ == "raw-spin":
                continue
            g = metrics(rs)
            if client_bound(g) and (sc not in ceil or med(g["mps"])[0] < ceil[sc]):
                bound.append(f"{sc}/{s_}")
    rows.append(("no ⚠ client-bound row where the server is slower than the ceiling (closed-loop tables)",
                 ", ".join(bound) if bound else "none", "none",
                 ("**met**" if not bound else "**not met**") if tput_any(by) else verdict(None, 0, True)))
    cn = med(graw["cli_ns"])[0] if graw else None
    rows.append(("bds-bench's own CPU per message in the report (every scenario table: cli ns/msg)",
                 f"{cn:,.0f} ns/msg in stream against the raw echo" if cn else "–", "shown",
                 "shown" if cn else verdict(None, 0, True)))
    # ---- the older targets
    bds_tp, _ = m("stream", BDS, "mps")
    for peer, goal, label in [("grpc-go", 3, "grpc-go"), ("grpc-cpp-cb", 10, "gRPC C++ callback"),
                              ("grpc-cpp-async", 10, "gRPC C++ async CQ"), ("raw", 0.5, "raw io_uring ceiling")]:
        v, g = m("stream", peer, "mps")
        r = bds_tp / v if bds_tp and v else None
        cb = " (ceiling ⚠ client-bound)" if g and peer == "raw" and client_bound(g) else ""
        meas = (f"{r:.2f}× ({fmt_num(bds_tp)} / {fmt_num(v)} msg/s){cb}" if r else "–")
        rows.append((f"(older) streaming throughput (stream) ÷ {label}", meas, f"≥ {goal}×", verdict(r, goal, True)))
    rows.append(("(older) p99 at 50 % of peak ÷ ceiling p99 at the same rate (same50)", same_note, "≤ 1.5×",
                 verdict(r_same, 1.5, False)))
    v, g = m("many10k", BDS, "rss_load")
    if v is not None:
        pk = med(g["rss_peak"])[0]
        rng = f" [{min(g['rss_load']) / 1024:.1f}–{max(g['rss_load']) / 1024:.1f}]" if len(g["rss_load"]) > 1 else ""
        meas = f"{v / 1024:.1f} MiB{rng} at load" + (f", high-water {pk / 1024:.1f} MiB" if pk else "")
        rows.append(("(older) server RSS with 10,000 streams (many10k)", meas, "< 64 MiB",
                     "**met**" if v * 1024 < 64 * MIB else "**not met**"))
    else:
        rows.append(("(older) server RSS with 10,000 streams (many10k)", "–", "< 64 MiB", verdict(None, 0, False)))
    for t in rows:
        out.append("| " + " | ".join(t) + " |")
    out.append("")
    return out


def tput_any(by):
    return any(sc in by for sc in CLOSED_DESC)


def tls_section(by, env):
    """TLS ÷ h2c for each server (same run), and bidistreamd ÷ each peer over TLS."""
    shapes = [(h, "tls-" + h) for h in ("pingpong", "stream") if "tls-" + h in by]
    if not shapes:
        return []
    t = env.get("tls", {})
    negotiated = sorted({f"{r['config']['tls']['version']} {r['config']['tls']['cipher']}"
                         for _, ts in shapes for rs in by[ts].values() for r in rs if r["config"].get("tls")})
    out = ["## TLS — cost of TLS per server, and bidistreamd against the peers over TLS\n",
           f"`tls-pingpong` / `tls-stream` are the `pingpong` / `stream` shapes over TLS, in the same run "
           f"(servers alternating as everywhere). Certificate: {t.get('certificate', '?')}, the same for "
           f"every server; bds-bench verifies it with the CA and offers {t.get('client_suites', '?')} only, "
           f"so every server runs the same cipher (negotiated: {', '.join(negotiated) or '?'}); "
           f"{t.get('openssl', '')}. Handshakes happen before the clock starts; the figures are the "
           "per-message cost of encryption and decryption on both ends (the client's TLS work counts in "
           "`cli`, the same code for every server).\n"]

    def g(scen, s):
        rs = by.get(scen, {}).get(s)
        return metrics(rs) if rs else None

    def ratio(a, b):
        return a / b if a and b else None

    def rtxt(r):
        return "–" if r is None else f"{r:.2f}×"

    servers = sorted({s for _, ts in shapes for s in by[ts]}, key=server_key)
    out.append("TLS ÷ h2c, medians (msg/s: higher is better; below 1× is what TLS costs. Latency: lower "
               "is better; above 1× is what TLS adds. msg/s per srv core = msg/s ÷ the server's CPU "
               "in cores, per run: its cost per message, the figure others' work on the cores "
               "disturbs least):\n")
    out.append("| shape | server | msg/s h2c → TLS | TLS ÷ h2c | p50 h2c → TLS | TLS ÷ h2c | p99 h2c → TLS | "
               "TLS ÷ h2c | srv CPU h2c → TLS | msg/s per srv core h2c → TLS | TLS ÷ h2c |")
    out.append("|---|---|---|---|---|---|---|---|---|---|---|")
    lines = {}
    for h, ts in shapes:
        for s in servers:
            a, b = g(h, s), g(ts, s)
            if not a or not b:
                continue
            ma = {k: med(a[k])[0] for k in ("mps", "p50", "p99", "srv")}
            mb = {k: med(b[k])[0] for k in ("mps", "p50", "p99", "srv")}
            # Messages per server CPU-second: the server's own cost, which CPU
            # taken by other work on a shared machine disturbs least.
            ma["core"] = med([m / c for m, c in zip(a["mps"], a["srv"]) if c])[0]
            mb["core"] = med([m / c for m, c in zip(b["mps"], b["srv"]) if c])[0]
            cb = " ⚠ client-bound" if client_bound(b) else ""
            cpu = lambda v: "–" if v is None else f"{v:.2f}"  # noqa: E731
            out.append(f"| {h} | **{s}** | {fmt_num(ma['mps'])} → {fmt_num(mb['mps'])}{cb} | "
                       f"{rtxt(ratio(mb['mps'], ma['mps']))} | {fmt_lat(ma['p50'])} → {fmt_lat(mb['p50'])} | "
                       f"{rtxt(ratio(mb['p50'], ma['p50']))} | {fmt_lat(ma['p99'])} → {fmt_lat(mb['p99'])} | "
                       f"{rtxt(ratio(mb['p99'], ma['p99']))} | {cpu(ma['srv'])} → {cpu(mb['srv'])} | "
                       f"{fmt_num(ma['core'])} → {fmt_num(mb['core'])} | {rtxt(ratio(mb['core'], ma['core']))} |")
            if s == BDS:
                lines[h] = (f"{h}: msg/s {rtxt(ratio(mb['mps'], ma['mps']))} "
                            f"({fmt_num(mb['mps'])} / {fmt_num(ma['mps'])}){cb}, "
                            f"p50 {rtxt(ratio(mb['p50'], ma['p50']))} ({fmt_lat(mb['p50'])} / {fmt_lat(ma['p50'])}), "
                            f"p99 {rtxt(ratio(mb['p99'], ma['p99']))} ({fmt_lat(mb['p99'])} / {fmt_lat(ma['p99'])}), "
                            f"msg/s per server core {rtxt(ratio(mb['core'], ma['core']))} "
                            f"({fmt_num(mb['core'])} / {fmt_num(ma['core'])})")
    out.append("")
    peers = [s for s in servers if s != BDS]
    vs = []
    if BDS in servers and peers:
        out.append("bidistreamd ÷ each peer, over TLS and (for reference) over h2c in the same run "
                   "(msg/s: above 1× bidistreamd is faster; latency: below 1× bidistreamd is faster):\n")
        out.append("| shape | peer | msg/s TLS | msg/s h2c | p50 TLS | p50 h2c | p99 TLS | p99 h2c |")
        out.append("|---|---|---|---|---|---|---|---|")
        for h, ts in shapes:
            for p in peers:
                cells, keep = [], {}
                for k in ("mps", "p50", "p99"):
                    for sc in (ts, h):
                        a, b = g(sc, BDS), g(sc, p)
                        r = ratio(med(a[k])[0], med(b[k])[0]) if a and b else None
                        cells.append(rtxt(r))
                        keep[(k, sc)] = (r, a, b)
                out.append(f"| {h} | {p} | " + " | ".join(cells) + " |")
                r_m, a, b = keep[("mps", ts)]
                if r_m is not None:
                    vs.append(f"**bidistreamd ÷ {p} over TLS**, {h}: msg/s {rtxt(r_m)} "
                              f"({fmt_num(med(a['mps'])[0])} / {fmt_num(med(b['mps'])[0])}), "
                              f"p50 {rtxt(keep[('p50', ts)][0])}, p99 {rtxt(keep[('p99', ts)][0])}"
                              + (" (⚠ client-bound)" if client_bound(a) or client_bound(b) else ""))
        out.append("")
    summary = [f"- **bidistreamd TLS ÷ h2c**, {v}" for v in lines.values()] + [f"- {v}" for v in vs]
    if summary:
        out.insert(2, "In one line each:\n\n" + "\n".join(summary) + "\n")
    return out


def by_any(by, s):
    for scen in by.values():
        if s in scen:
            return scen[s][0]
    return {"tags": {}}


if __name__ == "__main__":
    main()
