#!/usr/bin/env python3
"""Splice relay measurement: ringfwd with splice off / auto / always (and
pipe_size 64 KiB vs 1 MiB) against direct and the three HAProxy variants, for
TCP bulk streams (and request/response, to show auto leaves it alone), side
by side in one run, repetitions interleaved.

Layout (pinned, as benches/compare.py's): every forwarder on CPU 0 (ringfwd 1
shard, HAProxy nbthread 1 + cpu-map), the generator (`ringfwd bench`, 1 shard)
and the upstream (`ringfwd echo`, 1 shard) on CPU 1.

Forwarder CPU: each forwarder runs in its own cgroup-v1 cpuacct group, whose
usage counts every thread it ever had, including io-wq workers (`iou-wrk-*`)
that exit during a run (their time vanishes from /proc/<pid>/task/*/schedstat
sums, which is what benches/compare.py reads: that sum is recorded too, as
`cpu_s_schedstat`, to show the difference). CPU-s per GB counts the bytes the
generator sent (up) plus received (down), 10^9 bytes.

Writes DIR/raw.csv, DIR/summary.md, DIR/setup.md, DIR/commands.txt,
DIR/configs/, DIR/logs/. Every process it starts is ended by its PID.

    benches/splice.py --bin /path/to/ringfwd --out DIR [--reps 3] [--duration 3] [--warmup 1]
               [--only 'tcp-stream-*'] [--targets direct,ringfwd-auto,...]
"""

import argparse
import csv
import fnmatch
import glob
import json
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

LOOPBACK = "127.0.0.1"
BASE = 23000  # ports: BASE + 10 * target index + service (below the ephemeral range)
SERVICES = {"echo": 0, "sink": 1, "rr64k": 2, "rr256k": 3, "rr1m": 4}
# Request/response servers with large responses: one `ringfwd echo --tcp-rr`
# process each (the response size is per process).
RR_UPSTREAMS = {"rr64k": "64KiB", "rr256k": "256KiB", "rr1m": "1MiB"}
FWD_CPU, LOAD_CPU = 0, 1
CGROOT = Path("/sys/fs/cgroup/cpuacct")

# (name, kind, settings)
TARGETS = [
    ("direct", "direct", {}),
    ("ringfwd-off", "ringfwd", {"splice": "off"}),
    ("ringfwd-auto", "ringfwd", {"splice": "auto"}),
    ("ringfwd-always", "ringfwd", {"splice": "always"}),
    ("ringfwd-auto-64k", "ringfwd", {"splice": "auto", "pipe_size": "64KiB"}),
    ("haproxy", "haproxy", {"splice": ""}),
    ("haproxy-splice-auto", "haproxy", {"splice": "    option splice-auto"}),
    ("haproxy-splice", "haproxy", {"splice": "    option splice-request\n    option splice-response"}),
]
HAPROXY = ["haproxy", "haproxy-splice-auto", "haproxy-splice"]

# (name, bench mode, service, args, metric, targets or None for all)
RR_TARGETS = ["direct", "ringfwd-off", "ringfwd-auto"]
SIZE_TARGETS = ["direct", "ringfwd-off", "ringfwd-auto", "ringfwd-always"]
WORKLOADS = [
    ("tcp-stream-1-up", "tcp-stream", "sink",
     ["--connections", "1", "--direction", "up", "--size", "64KiB"], "bps", None),
    ("tcp-stream-8-up", "tcp-stream", "sink",
     ["--connections", "8", "--direction", "up", "--size", "64KiB"], "bps", None),
    ("tcp-stream-1-both", "tcp-stream", "echo",
     ["--connections", "1", "--direction", "both", "--size", "64KiB"], "bps", None),
    ("tcp-rr-1", "tcp-rr", "echo", ["--connections", "1", "--size", "64"], "rate", RR_TARGETS),
    ("tcp-rr-100", "tcp-rr", "echo", ["--connections", "100", "--size", "64"], "rate", RR_TARGETS),
    # Transfer size vs path: one connection, 64 B requests, large responses
    # (each response is one burst of the upstream→client direction).
    ("tcp-rr-1-64KiB", "tcp-rr", "rr64k",
     ["--connections", "1", "--size", "64", "--response-size", "64KiB"], "rate", SIZE_TARGETS),
    ("tcp-rr-1-256KiB", "tcp-rr", "rr256k",
     ["--connections", "1", "--size", "64", "--response-size", "256KiB"], "rate", SIZE_TARGETS),
    ("tcp-rr-1-1MiB", "tcp-rr", "rr1m",
     ["--connections", "1", "--size", "64", "--response-size", "1MiB"], "rate", SIZE_TARGETS),
]

COMMANDS: list[str] = []


def log(msg: str) -> None:
    print(time.strftime("%H:%M:%S"), msg, flush=True)


def port(target: str, service: str) -> int:
    index = [t[0] for t in TARGETS].index(target)
    return BASE + 10 * index + SERVICES[service]


def port_free(p: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind((LOOPBACK, p))
            return True
        except OSError:
            return False


def wait_port(p: int, proc: subprocess.Popen, timeout: float = 10.0) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"process {proc.args} exited with {proc.returncode}")
        try:
            with socket.create_connection((LOOPBACK, p), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {p} after {timeout}s")


class Proc:
    CG_PREFIX = "ringfwd-splice"  # cpuacct group name prefix (benches/dns.py uses its own)

    def __init__(self, name: str, argv: list[str], logs: Path):
        self.name, self.argv = name, argv
        self.logf = open(logs / f"{name}.log", "w")
        COMMANDS.append(" ".join(argv))
        self.p = subprocess.Popen(argv, stdout=self.logf, stderr=subprocess.STDOUT)
        self.cg: Path | None = None

    def into_cgroup(self) -> None:
        cg = CGROOT / f"{self.CG_PREFIX}-{self.name}-{os.getpid()}"
        try:
            cg.mkdir(exist_ok=True)
            (cg / "cgroup.procs").write_text(str(self.p.pid))
            self.cg = cg
        except OSError as e:
            log(f"no cpuacct cgroup for {self.name} ({e}); CPU from /proc ticks only")

    def cg_ns(self) -> int | None:
        return int((self.cg / "cpuacct.usage").read_text()) if self.cg else None

    def stop(self) -> None:
        if self.p.poll() is None:
            self.p.send_signal(signal.SIGTERM)
            try:
                self.p.wait(timeout=3)
            except subprocess.TimeoutExpired:
                self.p.send_signal(signal.SIGTERM)  # ringfwd: a second signal exits at once
                try:
                    self.p.wait(timeout=2)
                except subprocess.TimeoutExpired:
                    self.p.kill()
                    self.p.wait()
        self.logf.close()
        if self.cg:
            try:
                self.cg.rmdir()
            except OSError:
                pass


def ticks_s(pid: int) -> float:
    f = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")


def schedstat_s(pid: int) -> float:
    t = 0
    for f in glob.glob(f"/proc/{pid}/task/*/schedstat"):
        try:
            t += int(open(f).read().split()[0])
        except OSError:
            pass
    return t / 1e9


def cpu_times() -> dict[str, tuple[int, int]]:
    out = {}
    for line in open("/proc/stat"):
        if re.match(r"cpu\d+ ", line):
            v = list(map(int, line.split()[1:]))
            out[line.split()[0]] = (sum(v) - v[3] - v[4], sum(v))
    return out


def haproxy_cfg(name: str, splice: str) -> str:
    lines = [f"# HAProxy {name}; written by benches/splice.py", "global", "    nbthread 1",
             f"    cpu-map 1/1 {FWD_CPU}", "    maxconn 4000", "", "defaults", "    mode tcp",
             "    maxconn 4000", "    timeout connect 5s", "    timeout client 10m",
             "    timeout server 10m", splice or "    # no splice", ""]
    for svc in SERVICES:
        lines += [f"frontend fe_{svc}", f"    bind {LOOPBACK}:{port(name, svc)}",
                  f"    default_backend be_{svc}", f"backend be_{svc}",
                  f"    server up {LOOPBACK}:{port('direct', svc)}", ""]
    return "\n".join(lines)


def ringfwd_cfg(name: str, settings: dict) -> str:
    lines = [f"# ringfwd {name}; written by benches/splice.py", "[runtime]", "shards = 1",
             f"cpus = [{FWD_CPU}]", 'stats_interval = "off"']
    lines += [f'{k} = "{v}"' for k, v in settings.items()]
    for svc in SERVICES:
        lines += ["", "[[tcp]]", f'name = "{svc}"', f'listen = "{LOOPBACK}:{port(name, svc)}"',
                  f'upstreams = ["{LOOPBACK}:{port("direct", svc)}"]']
    return "\n".join(lines) + "\n"


def busy_cpus(secs: float = 0.5) -> float:
    """CPUs busy machine-wide over `secs` (our forwarders and upstreams idle meanwhile)."""
    a = cpu_times()
    time.sleep(secs)
    b = cpu_times()
    return sum((b[k][0] - a[k][0]) / max(1, b[k][1] - a[k][1]) for k in a)


def wait_quiet(limit: float, max_wait: float) -> float:
    """Waits until the machine is idle but for us (other engineers' benchmarks and
    builds share it); returns the seconds waited (max_wait: gave up, measured anyway)."""
    t = time.time()
    while busy_cpus() > limit and time.time() - t < max_wait:
        time.sleep(2)
    return round(time.time() - t, 1)


def machine() -> dict:
    cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
    hap = subprocess.run(["haproxy", "-v"], capture_output=True, text=True).stdout.splitlines()[:1]
    return {"cpu": cpu, "cpus": os.cpu_count(), "kernel": platform.release(),
            "haproxy": hap[0] if hap else "?",
            "pipe_max_size": Path("/proc/sys/fs/pipe-max-size").read_text().strip(),
            "loadavg": Path("/proc/loadavg").read_text().strip()}


def run_bench(binary: Path, wl, target: str, args, runs: Path, rep: int) -> dict:
    name, mode, service, wargs, metric, _ = wl
    out = runs / f"{name}-{target}-{rep}.json"
    argv = ["taskset", "-c", str(LOAD_CPU), str(binary), "bench", mode, "--target",
            f"{LOOPBACK}:{port(target, service)}", *wargs, "--duration", f"{round(args.duration * 1000)}ms",
            "--warmup", f"{round(args.warmup * 1000)}ms", "--shards", "1", "--cpus", str(LOAD_CPU), "--quiet",
            "--json", str(out)]
    COMMANDS.append("[bench] " + " ".join(argv))
    p = subprocess.run(argv, capture_output=True, text=True,
                       timeout=args.duration + args.warmup + 30)
    data = json.loads(out.read_text()) if out.exists() else {}
    return {"exit": p.returncode, "data": data, "stderr": p.stderr[-400:]}


def measure(args, binary: Path, fwd: dict, upstreams: list[Proc], wl, target: str, rep: int, runs: Path) -> dict:
    name, mode, service, wargs, metric, _ = wl
    procs = fwd.get(target, [])
    c0, t0 = cpu_times(), time.time()
    before = [(p.cg_ns(), ticks_s(p.p.pid), schedstat_s(p.p.pid)) for p in procs]
    up0 = sum(ticks_s(u.p.pid) for u in upstreams)
    kids0 = os.times()
    res = run_bench(binary, wl, target, args, runs, rep)
    kids1 = os.times()
    after = [(p.cg_ns(), ticks_s(p.p.pid), schedstat_s(p.p.pid)) for p in procs]
    c1, t1 = cpu_times(), time.time()
    d = res["data"]
    wall = t1 - t0
    row = {"workload": name, "target": target, "rep": rep, "exit": res["exit"],
           "ok": bool(d.get("ok")) and res["exit"] == 0, "wall_s": round(wall, 3),
           "error": "" if res["exit"] == 0 else res["stderr"].replace("\n", " | ")}
    secs = float(d.get("elapsed_s") or args.duration)
    if metric == "bps":
        total = (d.get("bytes_sent") or 0) + (d.get("bytes_received") or 0)
        row["gbit_s"] = round(total * 8 / secs / 1e9, 3)
        row["bytes"] = total
    else:
        row["rate"] = round(d.get("rate") or 0, 1)
        lat = d.get("latency_us") or {}
        row["p50_us"], row["p99_us"] = lat.get("p50"), lat.get("p99")
        row["ops"] = d.get("ops")
        total = (d.get("bytes_sent") or 0) + (d.get("bytes_received") or 0)
        row["bytes"] = total
        row["gbit_s"] = round(total * 8 / secs / 1e9, 3)
    # Forwarder CPU over the whole bench (warmup included), scaled to the
    # measured window by wall-time share: the load is steady across both.
    share = secs / max(wall, 1e-9)
    if procs:
        cg = sum((a[0] - b[0]) for a, b in zip(after, before)) / 1e9 if all(b[0] is not None for b in before) else None
        tk = sum(a[1] - b[1] for a, b in zip(after, before))
        ss = sum(a[2] - b[2] for a, b in zip(after, before))
        row["cpu_s"] = round((cg if cg is not None else tk) * share, 4)
        row["cpu_s_ticks"] = round(tk * share, 4)
        row["cpu_s_schedstat"] = round(ss * share, 4)
        row["fwd_cpu_util"] = round((cg if cg is not None else tk) / wall, 3)
        if metric == "bps" and row.get("bytes"):
            row["cpu_s_per_gb"] = round(row["cpu_s"] / (row["bytes"] / 1e9), 4)
            row["cpu_s_per_gb_schedstat"] = round(row["cpu_s_schedstat"] / (row["bytes"] / 1e9), 4)
        elif row.get("ops"):
            row["cpu_us_per_op"] = round(row["cpu_s"] * 1e6 / row["ops"], 2)
    busy = {k: (c1[k][0] - c0[k][0]) / max(1, c1[k][1] - c0[k][1]) for k in c0}
    row["cpu0_busy"], row["cpu1_busy"] = round(busy.get("cpu0", 0), 3), round(busy.get("cpu1", 0), 3)
    gen = (kids1.children_user + kids1.children_system) - (kids0.children_user + kids0.children_system)
    up = sum(ticks_s(u.p.pid) for u in upstreams) - up0
    fwd_all = sum(a[1] - b[1] for a, b in zip(after, before)) if procs else 0
    total_busy = sum(busy.values()) * wall
    row["other_cpus"] = round(max(0.0, total_busy - gen - up - fwd_all) / wall, 3)
    return row


FIELDS = ["workload", "target", "rep", "ok", "exit", "gbit_s", "bytes", "rate", "p50_us", "p99_us", "ops",
          "cpu_s", "cpu_s_ticks", "cpu_s_schedstat", "cpu_s_per_gb", "cpu_s_per_gb_schedstat",
          "cpu_us_per_op", "fwd_cpu_util", "cpu0_busy", "cpu1_busy", "other_cpus", "disturbed", "attempt",
          "waited_s", "wall_s", "error"]


def metric_of(wl) -> str:
    return wl[4]


def med(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def summarise(rows: list[dict], meta: dict, args) -> str:
    L = [f"# Splice relay — {meta['date']} on {meta['host']}", "",
         f"Pinned: forwarders on CPU {FWD_CPU}, generator and upstream on CPU {LOAD_CPU}. "
         f"{args.reps} interleaved repetitions of {args.warmup:g} s warmup + {args.duration:g} s; "
         "medians, spread min–max. CPU-s/GB is the forwarder's own CPU (cpuacct cgroup: every "
         "thread incl. io-wq workers) per 10^9 bytes moved; `schedstat` is the same from live "
         "threads' schedstat (what compare.py reads), which loses exited io-wq workers. "
         "Ratios: vs direct and vs the best HAProxy variant of the workload (by throughput). "
         f"Setup and commands: [setup.md](setup.md); every run: [raw.csv](raw.csv).", ""]
    kept = [r for r in rows if not r.get("disturbed")]
    others = [r["other_cpus"] for r in kept if r.get("other_cpus") is not None]
    if others:
        L += [f"Other load during the kept runs (CPUs busy outside forwarder, generator and "
              f"upstream, kernel threads such as ksoftirqd included): median "
              f"{statistics.median(others):.2f}, max {max(others):.2f} of 2. "
              f"{len(rows) - len(kept)} of {len(rows)} runs had more than {args.disturbed:g} "
              "(other engineers' builds and benchmarks share this machine): kept in raw.csv as "
              "`disturbed`, left out here, and redone.", ""]
    for wl in WORKLOADS:
        name, metric = wl[0], wl[4]
        wrows = [r for r in rows if r["workload"] == name]
        if not wrows:
            continue
        key = "gbit_s" if metric == "bps" else "rate"
        per = {}
        for t, *_ in TARGETS:
            ok = [r for r in wrows if r["target"] == t and r["ok"] and not r.get("disturbed")]
            if ok:
                per[t] = ok
        meds = {t: med([r.get(key) for r in v]) for t, v in per.items()}
        best_h = max((t for t in HAPROXY if t in meds), key=lambda t: meds[t], default=None)
        L += [f"## {name}", "", f"`ringfwd bench {wl[1]} {' '.join(wl[3])}`. Best HAProxy variant: "
              f"{best_h or '–'}.", ""]
        if metric == "bps":
            L += ["| target | Gbit/s | spread | CPU-s/GB | (schedstat) | fwd CPU | CPU0 | CPU1 | vs direct | vs HAProxy | cost vs HAProxy | runs |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
        else:
            L += ["| target | ops/s | spread | Gbit/s | p50 µs | p99 µs | CPU-µs/op | fwd CPU | vs direct | runs |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for t, v in per.items():
            vals = [r.get(key) for r in v]
            m = meds[t]
            spread = f"{min(vals):,.2f}–{max(vals):,.2f}" if metric == "bps" else f"{min(vals):,.0f}–{max(vals):,.0f}"
            vs_d = f"{m / meds['direct']:.2f}×" if "direct" in meds and meds["direct"] else "–"
            n = f"{len(v)}/{len([r for r in wrows if r['target'] == t and not r.get('disturbed')])}"
            util = med([r.get("fwd_cpu_util") for r in v])
            util_s = f"{100 * util:.0f}%" if util is not None else "–"
            if metric == "bps":
                cost = med([r.get("cpu_s_per_gb") for r in v])
                cost_ss = med([r.get("cpu_s_per_gb_schedstat") for r in v])
                hb = meds.get(best_h) if best_h else None
                hcost = med([r.get("cpu_s_per_gb") for r in per[best_h]]) if best_h else None
                vs_h = f"{m / hb:.2f}×" if hb else "–"
                c_h = f"{cost / hcost:.2f}×" if cost is not None and hcost else "–"
                L.append(f"| {t} | {m:.2f} | {spread} | {cost if cost is not None else '–'} | "
                         f"{cost_ss if cost_ss is not None else '–'} | {util_s} | "
                         f"{100 * med([r['cpu0_busy'] for r in v]):.0f}% | {100 * med([r['cpu1_busy'] for r in v]):.0f}% | "
                         f"{vs_d} | {vs_h} | {c_h} | {n} |")
            else:
                L.append(f"| {t} | {m:,.0f} | {spread} | {med([r.get('gbit_s') for r in v])} | {med([r.get('p50_us') for r in v])} | "
                         f"{med([r.get('p99_us') for r in v])} | {med([r.get('cpu_us_per_op') for r in v]) or '–'} | "
                         f"{util_s} | {vs_d} | {n} |")
        fails = [r for r in wrows if not r["ok"]]
        if fails:
            L += ["", "Failed runs: " + "; ".join(f"{r['target']} rep {r['rep']}: {r['error'][:200]}" for r in fails)]
        L.append("")
    return "\n".join(L)


def interrupted(signum, frame):
    """SIGTERM ends the run like Ctrl-C: every process started is stopped by its PID."""
    raise KeyboardInterrupt


def main() -> int:
    signal.signal(signal.SIGTERM, interrupted)
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bin", type=Path, required=True, help="the ringfwd binary under test")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--duration", type=float, default=3.0)
    ap.add_argument("--warmup", type=float, default=1.0)
    ap.add_argument("--only", default="*", help="workload patterns, comma-separated")
    ap.add_argument("--targets", default="", help="targets, comma-separated (default: all)")
    ap.add_argument("--quiet-limit", type=float, default=0.15,
                    help="before each run, wait until fewer CPUs than this are busy (default 0.15)")
    ap.add_argument("--quiet-wait", type=float, default=300,
                    help="longest wait for a quiet machine before a run, seconds (default 300)")
    ap.add_argument("--disturbed", type=float, default=0.35,
                    help="a run with more other load than this (CPUs) is disturbed: redone (default 0.35)")
    ap.add_argument("--attempts", type=int, default=4, help="tries per run while disturbed (default 4)")
    args = ap.parse_args()
    out = args.out
    for d in ("configs", "logs", "runs"):
        (out / d).mkdir(parents=True, exist_ok=True)
    pats = [p.strip() for p in args.only.split(",")]
    wls = [w for w in WORKLOADS if any(fnmatch.fnmatch(w[0], p) for p in pats)]
    wanted = [t.strip() for t in args.targets.split(",") if t.strip()] or [t[0] for t in TARGETS]
    binary = Path("/tmp") / f"ringfwd-splice-measure-{os.getpid()}"
    shutil.copy2(args.bin, binary)
    meta = {"date": time.strftime("%Y-%m-%d"), "host": platform.node().split(".")[0] or "vm",
            **machine(), "binary": str(args.bin),
            "version": subprocess.run([str(binary), "--version"], capture_output=True, text=True).stdout.strip()}
    busy = [p for t in wanted for s in SERVICES if not port_free(p := port(t, s))]
    if busy:
        print(f"ports in use: {busy}", file=sys.stderr)
        return 1
    procs: list[Proc] = []
    configs: dict[str, str] = {}
    fwd: dict[str, list[Proc]] = {}
    rows: list[dict] = []
    try:
        up = Proc("upstream", ["taskset", "-c", str(LOAD_CPU), str(binary), "echo",
                               "--tcp", f"{LOOPBACK}:{port('direct', 'echo')}",
                               "--tcp-sink", f"{LOOPBACK}:{port('direct', 'sink')}",
                               "--shards", "1", "--cpus", str(LOAD_CPU)], out / "logs")
        procs.append(up)
        wait_port(port("direct", "sink"), up.p)
        ups = [up]
        for svc, size in RR_UPSTREAMS.items():
            u = Proc(f"upstream-{svc}", ["taskset", "-c", str(LOAD_CPU), str(binary), "echo",
                                         "--tcp-rr", f"{LOOPBACK}:{port('direct', svc)}",
                                         "--request-size", "64", "--response-size", size,
                                         "--shards", "1", "--cpus", str(LOAD_CPU)], out / "logs")
            procs.append(u)
            wait_port(port("direct", svc), u.p)
            ups.append(u)
        for name, kind, settings in TARGETS:
            if name not in wanted or kind == "direct":
                continue
            if kind == "ringfwd":
                text = ringfwd_cfg(name, settings)
                rel = f"configs/{name}.toml"
                argv = ["taskset", "-c", str(FWD_CPU), str(binary), "run", "--config", str(out / rel)]
            else:
                text = haproxy_cfg(name, settings["splice"])
                rel = f"configs/{name}.cfg"
                argv = ["taskset", "-c", str(FWD_CPU), "haproxy", "-db", "-f", str(out / rel)]
            (out / rel).write_text(text)
            configs[rel] = text
            p = Proc(name, argv, out / "logs")
            procs.append(p)
            wait_port(port(name, "sink"), p.p)
            p.into_cgroup()
            fwd[name] = [p]
        with open(out / "raw.csv", "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=FIELDS, extrasaction="ignore")
            w.writeheader()
            for rep in range(1, args.reps + 1):
                for wl in wls:
                    ts = [t for t in wanted if wl[5] is None or t in wl[5]]
                    k = (rep - 1) % len(ts)
                    for t in ts[k:] + ts[:k]:
                        # A run during which something else took CPU is kept
                        # (marked disturbed, left out of the medians) and redone.
                        for attempt in range(1, args.attempts + 1):
                            waited = wait_quiet(args.quiet_limit, args.quiet_wait)
                            row = measure(args, binary, fwd, ups, wl, t, rep, out / "runs")
                            row["waited_s"] = waited
                            row["attempt"] = attempt
                            row["disturbed"] = row["other_cpus"] > args.disturbed
                            rows.append(row)
                            w.writerow(row)
                            f.flush()
                            shown = row.get("gbit_s") if metric_of(wl) == "bps" else row.get("rate")
                            log(f"rep {rep} {wl[0]} {t}: {shown} cost {row.get('cpu_s_per_gb', row.get('cpu_us_per_op'))} "
                                f"(schedstat {row.get('cpu_s_per_gb_schedstat')}) other {row['other_cpus']} "
                                f"ok {row['ok']}{' DISTURBED' if row['disturbed'] else ''}")
                            if not row["disturbed"]:
                                break
    finally:
        for p in reversed(procs):
            p.stop()
        binary.unlink(missing_ok=True)
    meta["loadavg_end"] = Path("/proc/loadavg").read_text().strip()
    (out / "summary.md").write_text(summarise(rows, meta, args))
    (out / "commands.txt").write_text("\n".join(COMMANDS) + "\n")
    setup = [f"# Setup — splice relay measurement, {meta['date']}", "",
             f"- machine: {meta['cpu']}, {meta['cpus']} vCPUs, Linux {meta['kernel']}",
             f"- ringfwd: {meta['version']} ({meta['binary']})", f"- {meta['haproxy']}",
             f"- fs.pipe-max-size: {meta['pipe_max_size']} (the process has no CAP_SYS_RESOURCE here, so "
             "pipe_size is capped at it)",
             f"- load average at start: {meta['loadavg']}; at end: {meta['loadavg_end']}",
             f"- pinning: forwarders on CPU {FWD_CPU} (`taskset`, ringfwd `cpus = [{FWD_CPU}]`, HAProxy "
             f"`cpu-map`); generator and upstream on CPU {LOAD_CPU}",
             f"- runs: {args.reps} repetitions, {args.warmup:g} s warmup + {args.duration:g} s measured; "
             "targets rotated each repetition",
             f"- the machine is shared: before each run the script waited (up to {args.quiet_wait:g} s) "
             f"until fewer than {args.quiet_limit:g} CPUs were busy; `waited_s` and `other_cpus` "
             "(CPU used outside forwarder, generator and upstream during the run, kernel threads "
             "such as ksoftirqd included) are in raw.csv", "",
             "Forwarder CPU is read over the whole bench process (warmup included) and scaled by "
             "measured/wall time; the load is steady, so this is the measured window's cost.", "",
             "## Commands", "", "```", *COMMANDS, "```", "", "## Configs", ""]
    for rel, text in configs.items():
        setup += [f"### {rel}", "", "```", text.rstrip(), "```", ""]
    (out / "setup.md").write_text("\n".join(setup))
    log(f"wrote {out}/summary.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
