#!/usr/bin/env python3
"""Balancing policies side by side: one run, a 4-upstream pool, every variant.

Each variant is a forwarder (a binary and a `[[tcp]]` configuration) in front
of the same four built-in upstreams (`ringfwd echo --tcp-rr`, one process,
CPU 1). All forwarders run at once, each with one shard pinned to CPU 0; the
load generator (`ringfwd bench`, CPU 1) drives one at a time, the variants'
order rotating every repetition so drift of the shared machine hits all
alike. The first variant is the baseline the others are divided by.

    benches/pool.py --before /tmp/ringfwd-old --after target/release/ringfwd \
        --out bench-results/<date>-<host>-balance [--reps 5] [--duration 3]

Variants: `before` (the old build's round robin over the plain list), then
the new build with `balance` = round_robin, least_conn, random_two,
hash_source, and round_robin with an active health check every second.
Writes setup.md, raw.csv and summary.md under --out. Every run is bounded
by the generator's own --duration/--warmup; processes started here are
stopped by PID at the end.
"""

import argparse
import csv
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# The process helpers are ab.py's (same layout: forwarders on CPU 0, the rest on CPU 1).
sys.path.insert(0, str(Path(__file__).resolve().parent))
from ab import cpu_seconds, start, wait_listening  # noqa: E402

WORKLOADS = [
    ("tcp-rr-100", ["tcp-rr", "--connections", "100", "--size", "64"]),
    ("tcp-crr-50", ["tcp-crr", "--connections", "50"]),
]
UPSTREAM_PORTS = [17201, 17202, 17203, 17204]
FIRST_FWD_PORT = 17211


def variants(before, after):
    """(label, binary, extra [[tcp]] lines)."""
    return [
        ("before", before, ""),
        ("round_robin", after, 'balance = "round_robin"'),
        ("least_conn", after, 'balance = "least_conn"'),
        ("random_two", after, 'balance = "random_two"'),
        ("hash_source", after, 'balance = "hash_source"'),
        ("rr-health", after, 'balance = "round_robin"\nhealth_check = { interval = "1s", timeout = "500ms" }'),
    ]


def bench(binary, args, target, duration, warmup):
    argv = ["taskset", "-c", "1", str(binary), "bench", *args, "--target", target,
            "--shards", "1", "--cpus", "1", "--duration", f"{int(duration * 1000)}ms",
            "--warmup", f"{int(warmup * 1000)}ms", "--json", "-", "--quiet"]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=duration + warmup + 30)
    try:
        j = json.loads(out.stdout)
    except json.JSONDecodeError:
        return None, f"bench failed: {out.stderr.strip()[:200]}"
    return (j.get("rate"), (j.get("latency_us") or {}).get("p99")), None


def config_file(dirpath, label, port, extra):
    ups = ", ".join(f'"127.0.0.1:{p}"' for p in UPSTREAM_PORTS)
    text = f'[[tcp]]\nname = "{label}"\nlisten = "127.0.0.1:{port}"\nupstreams = [{ups}]\n{extra}\n'
    path = Path(dirpath) / f"{label}.toml"
    path.write_text(text)
    return path


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--before", type=Path, required=True, help="the build before balancing policies")
    ap.add_argument("--after", type=Path, required=True, help="the build with them")
    ap.add_argument("--before-note", default="")
    ap.add_argument("--after-note", default="")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--duration", type=float, default=3.0)
    ap.add_argument("--warmup", type=float, default=1.0)
    a = ap.parse_args()
    a.out.mkdir(parents=True, exist_ok=True)
    vs = variants(a.before, a.after)
    started = time.strftime("%Y-%m-%d %H:%M:%S")
    load_before = os.getloadavg()
    procs, rows, configs = [], [], {}
    tmp = tempfile.TemporaryDirectory()
    try:
        echo_args = [x for p in UPSTREAM_PORTS for x in ("--tcp-rr", f"127.0.0.1:{p}")]
        echo = start([str(a.after), "echo", "--shards", "1", "--cpus", "1", *echo_args], 1)
        procs.append(echo)
        wait_listening(echo, len(UPSTREAM_PORTS), "upstreams")
        fwd = {}
        for i, (label, binary, extra) in enumerate(vs):
            port = FIRST_FWD_PORT + i
            cfg = config_file(tmp.name, label, port, extra)
            configs[label] = cfg.read_text()
            p = start([str(binary), "run", "--config", str(cfg), "--shards", "1", "--cpus", "0"], 0)
            procs.append(p)
            wait_listening(p, 1, f"forwarder {label}")
            fwd[label] = (p, port)
        for name, args in WORKLOADS:
            for rep in range(a.reps):
                order = vs[rep % len(vs):] + vs[:rep % len(vs)]
                for label, _, _ in order:
                    p, port = fwd[label]
                    cpu0 = cpu_seconds(p.pid)
                    res, err = bench(a.after, args, f"127.0.0.1:{port}", a.duration, a.warmup)
                    cpu1 = cpu_seconds(p.pid)
                    row = {"workload": name, "rep": rep, "variant": label, "rate": "", "p99_us": "",
                           "cpu_us_per_op": "", "error": err or ""}
                    if res and res[0]:
                        row.update(rate=res[0], p99_us=res[1] if res[1] is not None else "")
                        ops = float(res[0]) * (a.duration + a.warmup)
                        if cpu0 is not None and cpu1 is not None and ops > 0:
                            row["cpu_us_per_op"] = round((cpu1 - cpu0) * 1e6 / ops, 3)
                    rows.append(row)
                    print(f"{name} rep {rep} {label}: {row['rate']} {err or ''}", flush=True)
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(timeout=35)
            except subprocess.TimeoutExpired:
                p.kill()
        tmp.cleanup()
    finished = time.strftime("%Y-%m-%d %H:%M:%S")
    with open(a.out / "raw.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0].keys()))
        w.writeheader()
        w.writerows(rows)
    base = vs[0][0]
    lines = ["# Balancing policies on a 4-upstream pool", "",
             f"Baseline `{base}` = `{a.before}` {a.before_note}; the others = `{a.after}` {a.after_note}.", "",
             "| workload | variant | median rate /s | ÷ before (medians) | ÷ before per repetition (min–max) | p99 µs (median) | CPU µs/op | CPU ÷ before |",
             "|---|---|---|---|---|---|---|---|"]

    def med(xs):
        xs = [float(x) for x in xs if x != ""]
        return statistics.median(xs) if xs else float("nan")

    for name, _ in WORKLOADS:
        by = {lab: [r for r in rows if r["workload"] == name and r["variant"] == lab] for lab, _, _ in vs}
        b_rate = med(r["rate"] for r in by[base])
        b_cpu = med(r["cpu_us_per_op"] for r in by[base])
        for lab, _, _ in vs:
            rate = med(r["rate"] for r in by[lab])
            cpu = med(r["cpu_us_per_op"] for r in by[lab])
            paired = []
            for rep in range(a.reps):
                x = [float(r["rate"]) for r in by[lab] if r["rep"] == rep and r["rate"] != ""]
                y = [float(r["rate"]) for r in by[base] if r["rep"] == rep and r["rate"] != ""]
                if x and y and y[0] > 0:
                    paired.append(x[0] / y[0])
            span = f"{min(paired):.3f}–{max(paired):.3f}" if paired else "-"
            lines.append(f"| {name} | {lab} | {rate:.4g} | {rate / b_rate:.3f} | {span} | "
                         f"{med(r['p99_us'] for r in by[lab]):.0f} | {cpu:.3g} | {cpu / b_cpu:.3f} |")
    lines += ["", "CPU µs/op: the forwarder's utime+stime (/proc/PID/stat) over warm-up and run, divided by "
              "the measured rate × (warm-up + duration). Every client is 127.0.0.1, so hash_source sends "
              "all of them to one upstream: its row measures the cost of the pick, not a spread."]
    (a.out / "summary.md").write_text("\n".join(lines) + "\n")
    uname = platform.uname()
    setup = [
        "# Setup", "",
        f"- command: `{' '.join(sys.argv)}`",
        f"- started {started}, finished {finished}; load average before {load_before}, after {os.getloadavg()}",
        f"- machine: {os.cpu_count()} CPUs, kernel {uname.release}",
        "- pinning: every forwarder `--shards 1 --cpus 0` (CPU 0); the four upstreams (one `ringfwd echo "
        "--tcp-rr` process, the new build) and the generator (`ringfwd bench --shards 1 --cpus 1`, new build) on CPU 1",
        f"- each run `--warmup {a.warmup}s --duration {a.duration}s`; {a.reps} repetitions, the variants' order "
        "rotating by one each repetition",
        "- workloads: " + "; ".join(f"{n}: `bench {' '.join(w)}`" for n, w in WORKLOADS),
        "", "## Configurations", "",
    ]
    for label, text in configs.items():
        setup += [f"`{label}`:", "", "```toml", text.rstrip(), "```", ""]
    (a.out / "setup.md").write_text("\n".join(setup) + "\n")
    print((a.out / "summary.md").read_text())


if __name__ == "__main__":
    main()
