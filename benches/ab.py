#!/usr/bin/env python3
"""A/B of two ringfwd builds as forwarders, side by side in one run.

Both forwarders (A = --a, B = --b) run at once, each with one shard pinned to
CPU 0, in front of one built-in upstream (`ringfwd echo` from B) pinned to
CPU 1; the load generator (`ringfwd bench` from B) runs on CPU 1 too, the
layout of benches/compare.py. For each workload and repetition both builds
are measured back to back, the order alternating per repetition, so drift of
the shared machine hits both alike. Writes setup.md, raw.csv and summary.md
(median rate of each, B/A of the medians and the range of the per-repetition
paired ratios) under --out.

    benches/ab.py --a /tmp/ringfwd-old --b target/release/ringfwd \
        --out bench-results/<date>-<host>-ab [--reps 5] [--duration 3] [--warmup 1]

The same build with two configurations works too: `--a-config` /
`--b-config` name a file each forwarder also reads (`--config`), e.g. one with
only a `[log]` section to measure the access log on against off.

Every run is bounded by the generator's own --duration/--warmup; processes
started here are stopped by PID at the end.
"""

import argparse
import csv
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

# (name, bench arguments, target kind) — kind picks the upstream listener.
WORKLOADS = [
    ("tcp-rr-1", ["tcp-rr", "--connections", "1", "--size", "64"], "tcp"),
    ("tcp-rr-64", ["tcp-rr", "--connections", "64", "--size", "64"], "tcp"),
    ("tcp-rr-100", ["tcp-rr", "--connections", "100", "--size", "64"], "tcp"),
    ("tcp-crr-50", ["tcp-crr", "--connections", "50"], "tcp"),
    ("tcp-stream-1-up", ["tcp-stream", "--connections", "1", "--direction", "up"], "sink"),
    ("udp-rr-32", ["udp-rr", "--flows", "32", "--size", "64"], "udp"),
]

PORTS = {"tcp": 17101, "sink": 17102, "udp": 17103}
FWD_PORTS = {"A": {"tcp": 17111, "sink": 17112, "udp": 17113}, "B": {"tcp": 17121, "sink": 17122, "udp": 17123}}


def start(argv, cpu):
    return subprocess.Popen(["taskset", "-c", str(cpu), *argv], stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True)


def wait_listening(proc, n, what):
    deadline = time.monotonic() + 15
    seen = 0
    while seen < n:
        if time.monotonic() > deadline or proc.poll() is not None:
            sys.exit(f"ab.py: {what} did not start listening")
        line = proc.stdout.readline()
        if line.startswith("listening"):
            seen += 1


def forwarder(binary, ports, config=None):
    up = PORTS
    extra = ["--config", str(config)] if config else []
    argv = [str(binary), "run", *extra, "--shards", "1", "--cpus", "0",
            "--tcp", f"127.0.0.1:{ports['tcp']}=127.0.0.1:{up['tcp']}",
            "--tcp", f"127.0.0.1:{ports['sink']}=127.0.0.1:{up['sink']}",
            "--udp", f"127.0.0.1:{ports['udp']}=127.0.0.1:{up['udp']}"]
    p = start(argv, 0)
    wait_listening(p, 3, f"forwarder {binary}")
    return p


def cpu_seconds(pid):
    """utime + stime of a process, in seconds (/proc/PID/stat fields 14 and 15)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return None


def bench(binary, args, target, duration, warmup):
    argv = ["taskset", "-c", "1", str(binary), "bench", *args, "--target", target,
            "--shards", "1", "--cpus", "1", "--duration", f"{int(duration * 1000)}ms",
            "--warmup", f"{int(warmup * 1000)}ms", "--json", "-", "--quiet"]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=duration + warmup + 30)
    try:
        j = json.loads(out.stdout)
    except json.JSONDecodeError:
        return None, f"bench failed: {out.stderr.strip()[:200]}"
    rate = j.get("bits_per_second", {}).get("total") if args[0] == "tcp-stream" else j.get("rate")
    p99 = (j.get("latency_us") or {}).get("p99")
    return (rate, p99, j.get("ok")), None


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--a", type=Path, required=True, help="baseline ringfwd binary")
    ap.add_argument("--b", type=Path, required=True, help="candidate ringfwd binary")
    ap.add_argument("--a-note", default="", help="where A comes from (recorded in setup.md)")
    ap.add_argument("--b-note", default="", help="where B comes from")
    ap.add_argument("--a-config", type=Path, help="a config file A's forwarder also reads (e.g. only a [log] section)")
    ap.add_argument("--b-config", type=Path, help="a config file B's forwarder also reads")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--duration", type=float, default=3.0)
    ap.add_argument("--warmup", type=float, default=1.0)
    ap.add_argument("--only", help="workloads, comma-separated: " + ",".join(w[0] for w in WORKLOADS))
    a = ap.parse_args()
    a.out.mkdir(parents=True, exist_ok=True)
    workloads = [w for w in WORKLOADS if not a.only or w[0] in a.only.split(",")]
    started = time.strftime("%Y-%m-%d %H:%M:%S")
    load_before = os.getloadavg()
    procs = []
    try:
        echo = start([str(a.b), "echo", "--shards", "1", "--cpus", "1",
                      "--tcp-rr", f"127.0.0.1:{PORTS['tcp']}", "--tcp-sink", f"127.0.0.1:{PORTS['sink']}",
                      "--udp", f"127.0.0.1:{PORTS['udp']}"], 1)
        procs.append(echo)
        wait_listening(echo, 3, "upstream")
        fwd = {"A": forwarder(a.a, FWD_PORTS["A"], a.a_config),
               "B": forwarder(a.b, FWD_PORTS["B"], a.b_config)}
        procs += list(fwd.values())
        rows = []
        for name, args, kind in workloads:
            for rep in range(a.reps):
                order = ["A", "B"] if rep % 2 == 0 else ["B", "A"]
                for side in order:
                    target = f"127.0.0.1:{FWD_PORTS[side][kind]}"
                    cpu0 = cpu_seconds(fwd[side].pid)
                    res, err = bench(a.b, args, target, a.duration, a.warmup)
                    cpu1 = cpu_seconds(fwd[side].pid)
                    row = {"workload": name, "rep": rep, "build": side, "rate": "", "p99_us": "", "ok": "",
                           "cpu_us_per_op": "", "error": err or ""}
                    if res:
                        row.update(rate=res[0], p99_us=res[1] if res[1] is not None else "", ok=res[2])
                        # The forwarder's CPU over warm-up and run, per operation
                        # of the measured window (stream: per MB moved).
                        ops = float(res[0] or 0) * (a.duration + a.warmup)
                        if args[0] == "tcp-stream":
                            ops /= 8e6
                        if cpu0 is not None and cpu1 is not None and ops > 0:
                            row["cpu_us_per_op"] = round((cpu1 - cpu0) * 1e6 / ops, 3)
                    rows.append(row)
                    print(f"{name} rep {rep} {side}: {row['rate']} {err or ''}", flush=True)
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(timeout=35)
            except subprocess.TimeoutExpired:
                p.kill()
    finished = time.strftime("%Y-%m-%d %H:%M:%S")
    with open(a.out / "raw.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0].keys()))
        w.writeheader()
        w.writerows(rows)
    lines = ["# A/B summary", "",
             f"A = `{a.a}` {a.a_note}; B = `{a.b}` {a.b_note}", "",
             "| workload | A median | B median | B/A of medians | B/A per repetition (min–max) | A p99 µs (median) | B p99 µs (median) | A CPU µs/op | B CPU µs/op | B/A CPU |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for name, args, _ in workloads:
        per = {s: [r for r in rows if r["workload"] == name and r["build"] == s and r["rate"] != ""] for s in "AB"}
        if not per["A"] or not per["B"]:
            lines.append(f"| {name} | failed | | | | | | | | |")
            continue
        med = {s: statistics.median(float(r["rate"]) for r in per[s]) for s in "AB"}
        p99 = {s: statistics.median(float(r["p99_us"]) for r in per[s] if r["p99_us"] != "") if any(r["p99_us"] != "" for r in per[s]) else float("nan") for s in "AB"}
        paired = []
        for rep in range(a.reps):
            ra = [float(r["rate"]) for r in per["A"] if r["rep"] == rep]
            rb = [float(r["rate"]) for r in per["B"] if r["rep"] == rep]
            if ra and rb and ra[0] > 0:
                paired.append(rb[0] / ra[0])
        unit = "bit/s" if args[0] == "tcp-stream" else "/s"
        cpu = {s: statistics.median(float(r["cpu_us_per_op"]) for r in per[s] if r["cpu_us_per_op"] != "")
               if any(r["cpu_us_per_op"] != "" for r in per[s]) else float("nan") for s in "AB"}
        lines.append(f"| {name} | {med['A']:.4g} {unit} | {med['B']:.4g} {unit} | {med['B'] / med['A']:.3f} | "
                     f"{min(paired):.3f}–{max(paired):.3f} | {p99['A']:.0f} | {p99['B']:.0f} | "
                     f"{cpu['A']:.3g} | {cpu['B']:.3g} | {cpu['B'] / cpu['A']:.3f} |")
    lines += ["", "CPU µs/op: the forwarder's utime+stime (/proc/PID/stat) over warm-up and run, divided by "
              "the measured rate × (warm-up + duration): operations for rr/crr/udp, MB for tcp-stream. "
              "Both builds are measured the same way, so the ratio is what counts."]
    (a.out / "summary.md").write_text("\n".join(lines) + "\n")
    uname = platform.uname()
    setup = [
        "# Setup", "",
        f"- command: `{' '.join(sys.argv)}`",
        f"- started {started}, finished {finished}; load average before {load_before}, after {os.getloadavg()}",
        f"- machine: {os.cpu_count()} CPUs, kernel {uname.release}",
        "- pinning: both forwarders `--shards 1 --cpus 0` (CPU 0); upstream `ringfwd echo` (B's binary) and the generator (B's `ringfwd bench --shards 1 --cpus 1`) on CPU 1",
        f"- each run `--warmup {a.warmup}s --duration {a.duration}s`; {a.reps} repetitions, A and B back to back, order alternating each repetition",
        "- workloads: " + "; ".join(f"{n}: `bench {' '.join(w)}`" for n, w, _ in workloads),
    ]
    (a.out / "setup.md").write_text("\n".join(setup) + "\n")
    print((a.out / "summary.md").read_text())


if __name__ == "__main__":
    main()
