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
ORDER = ["bidistreamd", "bidistreamd-hard-reject", "bidistreamd-queue", "bidistreamd-soft-allow",
         "bidistreamd-soft-allow-signal", "grpc-cpp-cb", "grpc-cpp-async", "grpc-go", "raw"]
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
    ("keyed", "keyed work: 1 × 16 × 64 outstanding, 1,000 keys per stream, work_us = 500 (no ceiling: the raw echo does no work)"),
])


def load(d):
    runs = [json.loads(l) for l in open(os.path.join(d, "results.jsonl")) if l.strip()]
    env = {}
    p = os.path.join(d, "env.json")
    if os.path.exists(p):
        env = json.load(open(p))
    return runs, env


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
    runs, env = load(d)
    by = defaultdict(lambda: defaultdict(list))
    for r in runs:
        by[r["tags"]["scenario"]][r["tags"]["server"]].append(r)
    servers_all = sorted({r["tags"]["server"] for r in runs}, key=server_key)
    # The policy variants of bidistreamd run only in overload: not columns elsewhere.
    servers = [s for s in servers_all if not s.startswith(BDS + "-")]
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
        names = [s for s in servers if s in by[scen]]
        md.append(f"## {scen} — {desc}\n")
        extra_rss = scen.startswith("many")
        hdr = "| server | msg/s | p50 | p90 | p99 | p99.9 | max | cli CPU | srv CPU | msg/s per srv core"
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
            row = [f"**{s}**" + (" (ceiling)" if s == CEILING else ""), cell(g["mps"], fmt_num),
                   cell(g["p50"], fmt_lat), cell(g["p90"], fmt_lat), cell(g["p99"], fmt_lat),
                   cell(g["p999"], fmt_lat), cell(g["max"], fmt_lat),
                   cell(g["cli"], lambda v: f"{v:.2f}") + flag, cell(g["srv"], lambda v: f"{v:.2f}"),
                   cell(per_core, fmt_num)]
            if extra_rss:
                row.append("–" if s == CEILING else cell(g["rss"], lambda v: f"{v / 1024:.1f} KiB"))
            row.append(str(sum(g["err"])) if sum(g["err"]) else "0")
            md.append("| " + " | ".join(row) + " |")
        if len(names) > 1:
            md += ratio_table(names, med_mps, "msg/s ratio", False)
            md += ratio_table(names, med_p99, "p99 ratio", True)
        md.append("")

    # ---- open loop: sweep and overload
    sweep = sorted({int(s.split("-")[1]) for s in by if s.startswith("sweep-")})
    loads = [("sweep", p) for p in sweep]
    if loads:
        md.append("## sweep — open-loop latency at a fixed offered rate, % of each server's own peak\n")
        md.append("Rate = the given % of the server's median msg/s in `stream` (same 1 × 16 streams); "
                  "latency from the *intended* send time, so a server (or client) that falls behind "
                  f"shows it (no coordinated omission). Sends are batched per "
                  f"{env.get('open_loop_tick_us', '?')} µs tick, which bounds the client's own "
                  "lateness. Above 100 % queues grow for the whole run; "
                  "`unanswered` counts messages still without a reply when the run ended.\n")
        hdr = "| load | " + " | ".join(f"{s} rate → msg/s | {s} p50 / p99 / p99.9" for s in servers) + " |"
        md.append(hdr)
        md.append("|---" * (1 + 2 * len(servers)) + "|")
        sweep_dat = defaultdict(list)
        for kind, p in loads:
            scen = f"{kind}-{p}"
            row = [f"{p} %" + (" (above the peak)" if p > 100 else "")]
            for s in servers:
                rs = by.get(scen, {}).get(s)
                if not rs:
                    row += ["–", "–"]
                    continue
                g = metrics(rs)
                flag = " ⚠ client-bound" if (med(g["cli_thr"])[0] or 0) > 0.9 else ""
                un = med(g["unans"])[0]
                row.append(f"{fmt_num(med(g['rate'])[0])} → {fmt_num(med(g['mps'])[0])}"
                           + (f", {fmt_num(un)} unanswered" if un else "") + flag)
                row.append(f"{fmt_lat(med(g['p50'])[0])} / {fmt_lat(med(g['p99'])[0])} / "
                           f"{fmt_lat(med(g['p999'])[0])}")
                if p <= 100:
                    sweep_dat[s].append((p, med(g["rate"])[0], med(g["p50"])[0], med(g["p99"])[0],
                                         med(g["p999"])[0]))
            md.append("| " + " | ".join(row) + " |")
        md.append("")
        if sweep_dat:
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

    same_section(md, by)
    overload_section(md, by, env, servers_all)
    perf_section(md, by, env)
    spectrum_plots(md, by, plotdir, servers)

    # ---- summary plots: throughput and latency per closed scenario
    if tput:
        scen_list = list(tput)
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

    md[plots_at:plots_at] = targets_section(by, env) + tls_section(by, env)
    with open(os.path.join(d, "report.md"), "w") as f:
        f.write("\n".join(md) + "\n")
    print(f"report.py: {os.path.join(d, 'report.md')} ({len(runs)} runs)")


def lat_row(g):
    return (f"{cell(g['p50'], fmt_lat)} | {cell(g['p99'], fmt_lat)} | {cell(g['p999'], fmt_lat)} | "
            f"{cell(g['max'], fmt_lat)}")


def client_bound(g):
    return (med(g["cli_thr"])[0] or 0) > 0.9


def same_section(md, by):
    """same50: bidistreamd and the ceiling at one absolute rate, alternating."""
    if "same50" not in by:
        return
    md.append("## same50 — bidistreamd and the ceiling at the same offered rate\n")
    md.append("Open loop, 1 × 16 streams, 64 B, at 50 % of bidistreamd's peak (its median msg/s in "
              "`stream`), the *same absolute rate* for the raw ceiling; servers alternate run by run. "
              "The p99 target compares these two rows, inside one run of the suite.\n")
    md.append("| server | rate → msg/s | p50 | p99 | p99.9 | max | cli CPU | srv CPU | reps |")
    md.append("|---|---|---|---|---|---|---|---|---|")
    for s in sorted(by["same50"], key=server_key):
        g = metrics(by["same50"][s])
        flag = " ⚠ client-bound" if client_bound(g) else ""
        md.append(f"| **{s}** | {fmt_num(med(g['rate'])[0])} → {cell(g['mps'], fmt_num)} | {lat_row(g)} | "
                  f"{cell(g['cli'], lambda v: f'{v:.2f}')}{flag} | {cell(g['srv'], lambda v: f'{v:.2f}')} | "
                  f"{len(g['mps'])} |")
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


def spectrum_plots(md, by, plotdir, servers):
    """Latency percentile spectrum per server (HdrHistogram style: x = 1/(1-p)),
    element-wise median over the repetitions, one plot per closed scenario."""
    made = []
    for scen in list(CLOSED_DESC) + ["same50"]:
        if scen not in by:
            continue
        lines = []
        for i, s in enumerate(servers):
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


def targets_section(by, env):
    """The issue's targets, computed from this run: a benchmark to report, not a test."""
    out = ["## targets\n",
           "Computed from the medians above (server on one core). Each ratio is bidistreamd ÷ the "
           "other server. A ratio against a ⚠ client-bound ceiling overstates bidistreamd "
           "(the ceiling could go faster).\n",
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

    bds_tp, _ = m("stream", BDS, "mps")
    rows = []
    for peer, goal, label in [("grpc-go", 3, "grpc-go"), ("grpc-cpp-cb", 10, "gRPC C++ callback"),
                              ("grpc-cpp-async", 10, "gRPC C++ async CQ"), ("raw", 0.5, "raw io_uring ceiling")]:
        v, g = m("stream", peer, "mps")
        r = bds_tp / v if bds_tp and v else None
        cb = " (ceiling ⚠ client-bound)" if g and peer == "raw" and client_bound(g) else ""
        meas = (f"{r:.2f}× ({fmt_num(bds_tp)} / {fmt_num(v)} msg/s){cb}" if r else "–")
        rows.append((f"streaming throughput (stream) ÷ {label}", meas, f"≥ {goal}×", verdict(r, goal, True)))
    a, _ = m("pingpong", BDS, "p50")
    b, g = m("pingpong", "raw", "p50")
    r = a / b if a and b else None
    rows.append(("ping-pong p50 ÷ ceiling p50", f"{r:.2f}× ({fmt_lat(a)} / {fmt_lat(b)})" if r else "–",
                 "≤ 1.1×", verdict(r, 1.1, False)))
    a, ga = m("same50", BDS, "p99")
    b, gb = m("same50", "raw", "p99")
    r = a / b if a and b else None
    n = min(len(ga["p99"]), len(gb["p99"])) if ga and gb else 0
    note = ""
    if r:
        note = (f"{r:.2f}× ({fmt_lat(a)} / {fmt_lat(b)} at {fmt_num(med(ga['rate'])[0])} msg/s, "
                f"{n} alternating reps")
        pair = [x / y for x, y in zip(ga["p99"], gb["p99"]) if x and y]
        if len(pair) > 1:
            note += f"; per-rep ratio {min(pair):.2f}–{max(pair):.2f}×"
        note += ")" + (" ⚠ fewer than 5 reps" if n < 5 else "")
    rows.append(("p99 at 50 % of peak ÷ ceiling p99 at the same rate (same50)", note or "–", "≤ 1.5×",
                 verdict(r, 1.5, False)))
    v, g = m("many10k", BDS, "rss_load")
    if v is not None:
        peak = med(g["rss_peak"])[0]
        rng = f" [{min(g['rss_load']) / 1024:.1f}–{max(g['rss_load']) / 1024:.1f}]" if len(g["rss_load"]) > 1 else ""
        meas = f"{v / 1024:.1f} MiB{rng} at load" + (f", high-water {peak / 1024:.1f} MiB" if peak else "")
        rows.append(("server RSS with 10,000 streams (many10k)", meas, "< 64 MiB",
                     "**met**" if v * 1024 < 64 * MIB else "**not met**"))
    else:
        rows.append(("server RSS with 10,000 streams (many10k)", "–", "< 64 MiB", verdict(None, 0, False)))
    for t in rows:
        out.append("| " + " | ".join(t) + " |")
    out.append("")
    return out


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
