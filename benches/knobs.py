#!/usr/bin/env python3
"""Each tuning.md knob of ringfwd, measured: ringfwd (and direct as the baseline) in variants.

Knobs: shards and pinning layouts, buffer_size x buffers_per_shard (throughput, cost and peak
RSS), ring_entries, busy_poll (forwarder and generator side), batching (completions per loop
turn from the forwarder's final stats), tcp_rmem/tcp_wmem, somaxconn. Every ringfwd run gets a
fresh forwarder (so its peak RSS and its counters are its own); variants are interleaved over
the repetitions, pinned as in compare.py (forwarder CPU 0, generator + upstream CPU 1) unless
the variant is about pinning. Results go to bench-results/<date>-<host>/knobs/ (setup.md,
raw.csv, summary.md, runs/, logs/, configs/).

Python 3 standard library only; reuses benches/compare.py's process handling, pinning,
/proc sampling and bench runner. Run as root (sysctls, clear_refs).

    benches/knobs.py                   # every knob, 3 reps (~13 minutes on 2 cores)
    benches/knobs.py --quick           # 1 rep of short runs (~3 minutes)
    benches/knobs.py --only buffers,ring --reps 2
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import json
import os
import platform
import re
import resource
import shlex
import shutil
import signal
import socket
import statistics
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import compare as C  # noqa: E402  (the comparison's helpers: processes, /proc, bench runner)

REPO = C.REPO
LO = C.LOOPBACK
ALL_CPUS = set(range(os.cpu_count() or 1))

# --------------------------------------------------------------------------
# Workloads (the same bench arguments as compare.py where the names match)

@dataclass
class Wl:
    name: str
    mode: str
    service: str  # echo or sink
    args: list[str]
    metric: str  # rate or bps


WLS = {w.name: w for w in [
    Wl("tcp-rr-1", "tcp-rr", "echo", ["--connections", "1", "--size", "64"], "rate"),
    Wl("tcp-rr-100", "tcp-rr", "echo", ["--connections", "100", "--size", "64"], "rate"),
    Wl("tcp-rr-1000", "tcp-rr", "echo", ["--connections", "1000", "--size", "64"], "rate"),
    Wl("tcp-stream-1-up", "tcp-stream", "sink",
       ["--connections", "1", "--direction", "up", "--size", "64KiB"], "bps"),
    Wl("tcp-crr-200", "tcp-crr", "echo", ["--connections", "200", "--size", "64"], "rate"),
]}


# --------------------------------------------------------------------------
# Variants

@dataclass
class Variant:
    knob: str
    name: str
    target: str  # ringfwd or direct
    workloads: list[str]
    runtime: dict = field(default_factory=dict)  # [runtime] keys of the forwarder's config
    fwd_shards: int = 1
    fwd_cpus: list[int] | None = field(default_factory=lambda: [0])  # taskset + --cpus
    fwd_float: bool = False  # widen every forwarder thread's affinity to all CPUs after start
    fwd_extra: list[str] = field(default_factory=list)
    gen_shards: int = 1
    gen_cpus: list[int] | None = field(default_factory=lambda: [1])
    gen_float: bool = False
    gen_extra: list[str] = field(default_factory=list)
    upstream: str = "pinned"  # pinned (CPU 1), float (2 shards, any CPU), fresh (per run)
    sysctl: dict = field(default_factory=dict)  # applied before the run (restored at the end)
    group: str = ""  # runs of one group run back to back in a repetition (one sysctl setting)
    label: str = ""  # how the summary names it

    @property
    def key(self) -> str:
        return f"{self.knob}/{self.name}"


SYSCTL_KEYS = ["net.ipv4.tcp_rmem", "net.ipv4.tcp_wmem", "net.core.somaxconn"]


def read_sysctl(name: str) -> str:
    return Path("/proc/sys/" + name.replace(".", "/")).read_text().strip().replace("\t", " ")


def write_sysctl(name: str, value: str) -> None:
    Path("/proc/sys/" + name.replace(".", "/")).write_text(value + "\n")
    C.COMMANDS.append(f"sysctl -w {name}={shlex.quote(value)}")


def variants(found: dict[str, str]) -> list[Variant]:
    V: list[Variant] = []
    # 1. shards and pinning
    sp = ["tcp-rr-1", "tcp-rr-100", "tcp-stream-1-up"]
    V += [
        Variant("shards", "direct-pinned", "direct", sp,
                label="direct: generator + upstream on CPU 1 (1 shard each)"),
        Variant("shards", "1-shard-pinned", "ringfwd", sp,
                label="1 shard on CPU 0; generator + upstream on CPU 1"),
        Variant("shards", "direct-unpinned", "direct", sp, gen_shards=2, gen_cpus=None, gen_float=True,
                upstream="float", label="direct: generator + upstream 2 shards each, unpinned"),
        Variant("shards", "2-shards-unpinned", "ringfwd", sp, fwd_shards=2, fwd_cpus=None, fwd_float=True,
                gen_shards=2, gen_cpus=None, gen_float=True, upstream="float",
                label="2 shards unpinned; generator + upstream 2 shards each, unpinned"),
        Variant("shards", "2-shards-pinned", "ringfwd", sp, fwd_shards=2, fwd_cpus=[0, 1],
                gen_shards=2, gen_cpus=None, gen_float=True, upstream="float",
                label="2 shards pinned to CPUs 0,1; generator + upstream 2 shards each, unpinned"),
    ]
    # 2. buffer size x count
    bw = ["tcp-stream-1-up", "tcp-rr-1000"]
    # The grid with splice off, so bulk bytes go through the buffer pool (with the default
    # splice = "auto" a bulk direction moves to a kernel pipe after 8 full buffers); plus the two
    # pool sizes at stake with the default splice = "auto".
    V.append(Variant("buffers", "direct", "direct", bw, label="direct"))
    for size in (4, 16, 64):
        for count in (256, 1024, 4096):
            V.append(Variant("buffers", f"{size}KiB-x{count}", "ringfwd", bw,
                             runtime={"buffer_size": f"{size}KiB", "buffers_per_shard": count,
                                      "splice": "off"},
                             label=f"{size} KiB × {count}, splice off"))
    for count in (1024, 4096):
        V.append(Variant("buffers", f"16KiB-x{count}-splice-auto", "ringfwd", bw,
                         runtime={"buffer_size": "16KiB", "buffers_per_shard": count},
                         label=f"16 KiB × {count}, splice auto (the default)"))
    # 3. ring depth
    V.append(Variant("ring", "direct", "direct", ["tcp-rr-1000"], label="direct"))
    for n in (256, 2048, 8192):
        V.append(Variant("ring", f"ring-{n}", "ringfwd", ["tcp-rr-1000"], runtime={"ring_entries": n},
                         label=f"ring_entries = {n} (CQ {8 * n})"))
    # 4. busy polling: forwarder side x generator side
    for gen in ("off", "50us"):
        gx = [] if gen == "off" else ["--busy-poll", gen]
        V.append(Variant("busypoll", f"direct-gen-{gen}", "direct", ["tcp-rr-1"], gen_extra=gx,
                         label=f"direct, generator busy-poll {gen}"))
        for fwd in ("off", "20us", "50us", "200us"):
            fx = [] if fwd == "off" else ["--busy-poll", fwd]
            V.append(Variant("busypoll", f"fwd-{fwd}-gen-{gen}", "ringfwd", ["tcp-rr-1"], fwd_extra=fx,
                             gen_extra=gx, label=f"forwarder {fwd}, generator {gen}"))
    # 6. socket buffers
    stock = {"net.ipv4.tcp_rmem": "4096 131072 6291456", "net.ipv4.tcp_wmem": "4096 16384 4194304"}
    here = {k: found[k] for k in ("net.ipv4.tcp_rmem", "net.ipv4.tcp_wmem")}
    rmem_max = max(int(here["net.ipv4.tcp_rmem"].split()[2]), 16 << 20)
    large = {"net.ipv4.tcp_rmem": f"4096 131072 {rmem_max}", "net.ipv4.tcp_wmem": "4096 16384 16777216"}
    for name, setting in (("kernel-default", stock), ("this-vm", here), ("wmem-16MiB", large)):
        text = ", ".join(f"{k.split('.')[-1]} = {v}" for k, v in setting.items())
        for t in ("direct", "ringfwd"):
            V.append(Variant("sockbuf", f"{name}-{t}", t, ["tcp-stream-1-up"], sysctl=dict(setting),
                             group=name, label=f"{name} ({text})"))
    # 7. listen backlog
    for n in ("4096", "128"):
        for t in ("direct", "ringfwd"):
            V.append(Variant("backlog", f"somaxconn-{n}-{t}", t, ["tcp-crr-200"],
                             sysctl={"net.core.somaxconn": n}, upstream="fresh", group=f"somaxconn-{n}",
                             label=f"somaxconn = {n}"))
    return V


KNOBS = ["shards", "buffers", "ring", "busypoll", "sockbuf", "backlog"]
KNOB_TITLE = {
    "shards": "Shards and pinning", "buffers": "Buffer size and count", "ring": "Ring depth",
    "busypoll": "Busy polling", "sockbuf": "Socket buffers (tcp_rmem/tcp_wmem)",
    "backlog": "Listen backlog (somaxconn)",
}


# --------------------------------------------------------------------------
# Helpers

def widen(pid: int, cpus: set[int] = ALL_CPUS) -> int:
    """Let every thread of `pid` run on any of `cpus` (undoes ringfwd's own shard pinning)."""
    n = 0
    for tid in C.tids(pid):
        try:
            os.sched_setaffinity(int(tid), cpus)
            n += 1
        except OSError:
            pass
    return n


def widen_for(pid: int, seconds: float) -> threading.Thread:
    """Keep widening the threads of `pid` for a while (a bench creates its shards at start)."""
    def loop():
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            widen(pid)
            time.sleep(0.01)
    t = threading.Thread(target=loop, daemon=True)
    t.start()
    return t


def netstat_tcpext() -> dict[str, int]:
    out: dict[str, int] = {}
    try:
        lines = Path("/proc/net/netstat").read_text().splitlines()
    except OSError:
        return out
    for i in range(0, len(lines) - 1, 2):
        keys, vals = lines[i].split(), lines[i + 1].split()
        if keys and keys[0] == "TcpExt:":
            out.update({k: int(v) for k, v in zip(keys[1:], vals[1:])})
    return out


def final_stats(log_path: Path) -> dict[str, int]:
    try:
        text = log_path.read_text(errors="replace")
    except OSError:
        return {}
    lines = [l for l in text.splitlines() if "final stats " in l]
    if not lines:
        return {}
    kv = lines[-1].split("final stats ", 1)[1]
    return {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", kv)}


def rss_kib(pid: int) -> int:
    return C.kib_field(f"/proc/{pid}/status", "VmRSS:")


def toml_runtime(d: dict) -> str:
    lines = ["[runtime]"]
    for k, v in d.items():
        lines.append(f"{k} = {v!r}" if isinstance(v, int) else f'{k} = "{v}"')
    return "\n".join(lines).replace("'", '"') + "\n"


# --------------------------------------------------------------------------
# The harness

class Knobs:
    def __init__(self, args, out: Path, binary: Path, settings: dict, selected: list[Variant]):
        self.args, self.out, self.bin, self.settings = args, out, binary, settings
        self.variants = selected
        self.procs: list[C.Managed] = []
        self.upstreams: dict[str, C.Managed] = {}
        self.up_ports: dict[str, dict[str, int]] = {}
        self.rows: list[dict] = []
        self.bench_proc = None
        self.sysctl_saved: dict[str, str] = {}
        self.next_port = 0
        self.echo_flags, _ = C.probe_binary(binary)
        # before each run, wait (up to 20 s, 4 min in all) until other work on the machine is
        # below 0.3 CPUs: the machine is shared with builds and tests
        self.gate = C.QuietGate(args.quiet_wait, args.quiet_budget)
        for d in ("logs", "configs", "runs"):
            (out / d).mkdir(parents=True, exist_ok=True)

    # ---- processes

    def start(self, m: C.Managed) -> C.Managed:
        # a child inherits the harness's affinity: the harness waits on the generator's CPU
        # between runs, so widen it first (pinned children are under taskset anyway)
        os.sched_setaffinity(0, ALL_CPUS)
        m.start()
        self.procs.append(m)
        return m

    def stop(self, m: C.Managed) -> None:
        try:
            m.stop()
        finally:
            if m in self.procs:
                self.procs.remove(m)

    def stop_all(self) -> None:
        for m in reversed(list(self.procs)):
            try:
                self.stop(m)
            except Exception as e:
                C.log(f"warning: stopping {m.name}: {e}")
        self.upstreams = {}

    def port_pair(self) -> tuple[int, int]:
        """A fresh pair of listen ports for the next forwarder (a just-stopped one's port may
        still have connections in TIME_WAIT); 22100-22899."""
        for _ in range(400):
            p = 22100 + (self.next_port % 400) * 2
            self.next_port += 1
            if C.port_free(p, "tcp") and C.port_free(p + 1, "tcp"):
                return p, p + 1
        raise RuntimeError("no free port pair in 22100-22899")

    def upstream(self, kind: str, tag: str = "") -> tuple[C.Managed, dict[str, int]]:
        if kind in self.upstreams and self.upstreams[kind].alive():
            return self.upstreams[kind], self.up_ports[kind]
        base = {"pinned": 22000, "float": 22010, "fresh": 22020}[kind]
        if kind == "fresh":
            base += (self.next_port % 20) * 2  # a new port each time: the old one may be in TIME_WAIT
            self.next_port += 1
        ports = {"echo": base, "sink": base + 1}
        for svc, p in ports.items():
            if not C.port_free(p, "tcp"):
                raise RuntimeError(f"port 127.0.0.1:{p} is in use; not starting (see `ss -ltn`)")
        if kind in ("pinned", "fresh"):
            argv = C.upstream_argv(self.bin, self.echo_flags, ports, 1, [1])
        else:
            argv = C.upstream_argv(self.bin, self.echo_flags, ports, 2, None)
        m = self.start(C.Managed(f"upstream-{kind}{tag}", argv, self.out / "logs", "ringfwd"))
        C.wait_tcp(ports["echo"], m)
        if kind == "float":
            widen(m.pid)
        self.upstreams[kind], self.up_ports[kind] = m, ports
        return m, ports

    def apply_sysctl(self, setting: dict) -> None:
        for k, v in setting.items():
            if k not in self.sysctl_saved:
                self.sysctl_saved[k] = read_sysctl(k)
            if read_sysctl(k) != v:
                write_sysctl(k, v)

    def restore_sysctls(self) -> None:
        for k, v in self.sysctl_saved.items():
            try:
                if read_sysctl(k) != v:
                    write_sysctl(k, v)
                    C.log(f"restored {k} = {v}")
            except OSError as e:
                C.log(f"ERROR: could not restore {k} = {v}: {e}")

    # ---- one run

    def run(self, v: Variant, wl: Wl, rep: int) -> dict:
        s = self.settings
        row = {"knob": v.knob, "variant": v.name, "workload": wl.name, "target": v.target, "rep": rep,
               "mode": wl.mode, "sysctl": "; ".join(f"{k}={read_sysctl(k)}" for k in sorted(v.sysctl))}
        up, ports = self.upstream(v.upstream, tag=f"-{v.name}-r{rep}" if v.upstream == "fresh" else "")
        fwd = None
        try:
            port = ports[wl.service]
            if v.target == "ringfwd":
                lp = self.port_pair()
                extra = ["--log-level", "info"] + v.fwd_extra
                if v.runtime:
                    cfg = self.out / "configs" / f"{v.knob}-{v.name}.toml"
                    cfg.write_text(toml_runtime(v.runtime))
                    extra = ["--config", str(cfg)] + extra
                argv = C.ringfwd_argv(self.bin, [(lp[0], ports["echo"]), (lp[1], ports["sink"])], [],
                                      v.fwd_shards, v.fwd_cpus, extra)
                fwd = self.start(C.Managed(f"ringfwd-{v.knob}-{v.name}-{wl.name}-r{rep}", argv,
                                           self.out / "logs", "ringfwd"))
                C.wait_tcp(lp[0], fwd)
                if v.fwd_float:
                    widen(fwd.pid)
                time.sleep(0.1)
                row["rss_start_kib"] = rss_kib(fwd.pid)
                port = lp[0] if wl.service == "echo" else lp[1]
            rel = Path("runs") / v.knob / f"{v.name}-{wl.name}-r{rep}.json"
            jp = self.out / rel
            jp.parent.mkdir(parents=True, exist_ok=True)
            if jp.exists():
                jp.unlink()
            argv = C.bench_argv(self.bin, wl.mode, port, wl.args, s["duration"], s["warmup"], jp,
                                v.gen_shards, v.gen_cpus, v.gen_extra)
            C.COMMANDS.append(f"[bench {v.knob} {v.name} {wl.name} rep {rep}] " + shlex.join(argv))
            os.sched_setaffinity(0, set(v.gen_cpus) if v.gen_cpus else ALL_CPUS)
            on_start = (lambda p: widen_for(p.pid, 0.5)) if v.gen_float else None
            ns0 = netstat_tcpext()
            row.update(C.measure_bench(argv, jp, [fwd.pid] if fwd else [], [up.pid], s["warmup"],
                                       s["duration"], wl.metric, target=v.target, rel_json=rel,
                                       on_popen=lambda p: setattr(self, "bench_proc", p),
                                       on_start=on_start))
            ns1 = netstat_tcpext()
            for k, col in (("ListenOverflows", "listen_overflows"), ("ListenDrops", "listen_drops"),
                           ("TCPTimeouts", "tcp_timeouts")):
                if k in ns0 and k in ns1:
                    row[col] = ns1[k] - ns0[k]
            if fwd is not None:
                row["rss_end_kib"] = rss_kib(fwd.pid)
        finally:
            if fwd is not None:
                self.stop(fwd)
            if v.upstream == "fresh":
                self.stop(up)
                self.upstreams.pop("fresh", None)
        if fwd is not None:
            st = final_stats(fwd.log_path)
            for k in ("loop_turns", "completions", "enobufs", "recv_paused", "short_sends", "accepted",
                      "bytes_c2u", "bytes_u2c", "splices_in", "splices_out", "splice_switched"):
                if k in st:
                    row[k] = st[k]
            if st.get("loop_turns"):
                row["batch"] = round(st["completions"] / st["loop_turns"], 3)
            if not st:
                row["error"] = (row.get("error") or "") + " (no final stats line in the forwarder's log)"
        return row

    # ---- the schedule

    def plan(self) -> list[tuple[Variant, Wl, int]]:
        runs = []
        for knob in KNOBS:
            cells = [(v, WLS[w]) for v in self.variants if v.knob == knob for w in v.workloads]
            if not cells:
                continue
            groups: list[str] = []
            for v, _ in cells:
                if v.group not in groups:
                    groups.append(v.group)
            for rep in range(1, self.settings["reps"] + 1):
                k = (rep - 1) % len(groups)
                for g in groups[k:] + groups[:k]:
                    gc = [c for c in cells if c[0].group == g]
                    j = (rep - 1) % len(gc)
                    for v, wl in gc[j:] + gc[:j]:
                        runs.append((v, wl, rep))
        return runs

    def execute(self) -> None:
        runs = self.plan()
        per = self.settings["duration"] + self.settings["warmup"] + 1.0
        C.log(f"{len(runs)} runs of {C.fmt_dur(self.settings['warmup'])} warmup + "
              f"{C.fmt_dur(self.settings['duration'])}: about {len(runs) * per / 60:.1f} minutes")
        # a --rerun writes its rows aside; main() merges them into raw.csv once it completes
        with open(self.out / ("raw-rerun.csv" if self.args.rerun else "raw.csv"), "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=CSV_FIELDS, extrasaction="ignore")
            w.writeheader()
            current = None
            for i, (v, wl, rep) in enumerate(runs, 1):
                if v.knob != current:
                    # sysctls of the previous knob back to what they were before the next one
                    self.restore_sysctls()
                    current = v.knob
                    C.log(f"knob {v.knob}: {KNOB_TITLE[v.knob]}")
                if v.sysctl:
                    self.apply_sysctl(v.sysctl)
                time.sleep(0.2)
                os.sched_setaffinity(0, ALL_CPUS)
                waited, busy = self.gate.wait()
                try:
                    row = self.run(v, wl, rep)
                    row["quiet_wait_s"], row["busy_before"] = waited, busy
                except RuntimeError as e:
                    row = {"knob": v.knob, "variant": v.name, "workload": wl.name, "target": v.target,
                           "rep": rep, "mode": wl.mode, "ok": False, "error": str(e)[:800]}
                self.rows.append(row)
                w.writerow(row)
                f.flush()
                C.log(f"[{i:3d}/{len(runs)}] {v.knob:8s} {v.name:24s} {wl.name:15s} r{rep} {describe(row, wl)}")
        self.restore_sysctls()


CSV_FIELDS = [
    "knob", "variant", "workload", "target", "rep", "rate", "offered_rate", "bits_per_second",
    "p50", "p90", "p99", "p99_9", "max", "cpu_s", "cpu_us_per_op", "cpu_s_per_gb", "fwd_cpu_util",
    "rss_peak_kib", "pss_kib", "rss_start_kib", "rss_end_kib", "batch", "loop_turns", "completions",
    "enobufs", "recv_paused", "short_sends", "accepted", "bytes_c2u", "bytes_u2c", "splices_in",
    "splices_out", "splice_switched", "listen_overflows",
    "listen_drops", "tcp_timeouts", "sysctl", "ok", "error",
    "mode", "elapsed_s", "ops", "errors", "gen_cpu_util", "up_cpu_util", "cpu0_busy", "cpu1_busy",
    "other_cpu_util", "busy_before", "quiet_wait_s", "load_before", "wall_s", "exit", "json",
]


def describe(row: dict, wl: Wl) -> str:
    parts = []
    if wl.metric == "bps":
        parts.append(f"{(row.get('bits_per_second') or 0) / 1e9:.2f} Gbit/s")
    else:
        parts.append(C.si(row.get("rate"), "/s"))
        if row.get("p99") is not None:
            parts.append(f"p50 {C.num(row.get('p50'))}µs p99 {C.num(row.get('p99'))}µs")
    if row.get("fwd_cpu_util") is not None:
        parts.append(f"fwd {100 * row['fwd_cpu_util']:.0f}% CPU")
    if row.get("rss_peak_kib"):
        parts.append(f"RSS {row['rss_peak_kib'] / 1024:.1f} MiB")
    if row.get("batch"):
        parts.append(f"batch {row['batch']:.1f}")
    if row.get("enobufs"):
        parts.append(f"enobufs {row['enobufs']}")
    if row.get("listen_overflows"):
        parts.append(f"overflows {row['listen_overflows']}")
    if row.get("other_cpu_util") and row["other_cpu_util"] > 0.15:
        parts.append(f"[other load {row['other_cpu_util']:.2f} CPU]")
    parts.append("ok" if row.get("ok") else f"FAILED: {row.get('error')}")
    return "  ".join(parts)


# --------------------------------------------------------------------------
# Summary

def med(rows: list[dict], key: str):
    vals = [r.get(key) for r in rows if r.get("ok") and r.get(key) not in (None, "")]
    vals = [float(v) for v in vals]
    return statistics.median(vals) if vals else None


def spread(rows: list[dict], key: str, scale: float = 1.0, fmt=None) -> str:
    vals = [float(r[key]) / scale for r in rows if r.get("ok") and r.get(key) not in (None, "")]
    if not vals:
        return "–"
    f = fmt or C.num
    return f"{f(min(vals))}–{f(max(vals))}"


def cell_rows(rows, knob, variant, wl):
    return [r for r in rows if r["knob"] == knob and r["variant"] == variant and r["workload"] == wl]


def value(rows, wl: Wl):
    return med(rows, "bits_per_second" if wl.metric == "bps" else "rate")


def fmt_val(v, wl: Wl) -> str:
    if v is None:
        return "–"
    return f"{v / 1e9:.2f}" if wl.metric == "bps" else C.num(v)


def gb(x) -> str:
    return f"{x:.2f}"


def mib(k) -> str:
    return "–" if k is None else f"{k / 1024:.1f}"


def pct(x) -> str:
    return "–" if x is None else f"{100 * x:.0f}%"


def rat(a, b) -> str:
    return "–" if a is None or not b else f"{a / b:.2f}×"


def ok_count(rs) -> str:
    return f"{sum(1 for r in rs if r.get('ok'))}/{len(rs)}"


def summary_md(rows: list[dict], variants_: list[Variant], meta: dict) -> str:
    by = {v.key: v for v in variants_}
    L = [f"# Knobs, measured — {meta['date']} on {meta['host']}", "",
         f"{meta['mode_note']}. Median over {meta['reps']} interleaved repetition(s) of "
         f"`--warmup {meta['warmup']} --duration {meta['duration']}`; spread is min–max of the ok runs. "
         "Every ringfwd run has a fresh forwarder (peak RSS and counters are that run's). Pinned "
         "unless the variant says otherwise: forwarder on CPU 0 (1 shard), generator and upstream on "
         "CPU 1 (1 shard each). CPU is the forwarder's own on-CPU time over the measured window, as a "
         "share of one CPU, per op (CPU-µs/op) or per GB forwarded (CPU-s/GB, 10^9 bytes); peak RSS "
         "is the forwarder's VmHWM; `batch` = `completions / loop_turns` from its final stats line "
         "(the whole life of the forwarder: connection setup, warmup and run). How it was run: "
         "[setup.md](setup.md); every run: [raw.csv](raw.csv).", ""]
    if meta.get("other_load"):
        L += [meta["other_load"], ""]
    present = {r["knob"] for r in rows}

    if "shards" in present:
        L += ["## Shards and pinning", ""]
        for wn in ("tcp-rr-1", "tcp-rr-100", "tcp-stream-1-up"):
            wl = WLS[wn]
            unit = "Gbit/s" if wl.metric == "bps" else "ops/s"
            L += [f"### {wn}", "",
                  f"| variant | {unit} | spread | " + ("p50 µs | p99 µs | " if wl.metric == "rate" else "")
                  + ("CPU-s/GB" if wl.metric == "bps" else "CPU-µs/op") + " | fwd CPU | batch | vs direct (same layout) | vs 1 shard pinned | runs ok |",
                  "|---|---:|---:|" + ("---:|---:|" if wl.metric == "rate" else "") + "---:|---:|---:|---:|---:|---:|"]
            base1 = value(cell_rows(rows, "shards", "1-shard-pinned", wn), wl)
            for vn in ("direct-pinned", "1-shard-pinned", "direct-unpinned", "2-shards-unpinned", "2-shards-pinned"):
                rs = cell_rows(rows, "shards", vn, wn)
                if not rs:
                    continue
                v = by[f"shards/{vn}"]
                d = value(cell_rows(rows, "shards", "direct-pinned" if vn == "1-shard-pinned" else "direct-unpinned", wn), wl)
                val = value(rs, wl)
                cells = [v.label, fmt_val(val, wl),
                         spread(rs, "bits_per_second" if wl.metric == "bps" else "rate",
                                1e9 if wl.metric == "bps" else 1, gb if wl.metric == "bps" else None)]
                if wl.metric == "rate":
                    cells += [C.num(med(rs, "p50")), C.num(med(rs, "p99"))]
                isf = v.target == "ringfwd"
                cells += [C.num(med(rs, "cpu_s_per_gb" if wl.metric == "bps" else "cpu_us_per_op")) if isf else "–",
                          pct(med(rs, "fwd_cpu_util")) if isf else "–",
                          C.num(med(rs, "batch")) if isf else "–",
                          rat(val, d) if isf else "–", rat(val, base1) if isf else "–", ok_count(rs)]
                L.append("| " + " | ".join(cells) + " |")
            L.append("")
    if "buffers" in present:
        dstream = value(cell_rows(rows, "buffers", "direct", "tcp-stream-1-up"), WLS["tcp-stream-1-up"])
        drr = value(cell_rows(rows, "buffers", "direct", "tcp-rr-1000"), WLS["tcp-rr-1000"])
        L += ["## Buffer size and count", "",
              "Pool = `buffer_size × buffers_per_shard` (1 shard). Stream: tcp-stream-1-up; RR: tcp-rr-1000 "
              "(64 B requests). Peak RSS is the forwarder's, per variant (a fresh forwarder each run). "
              "`enobufs`: receives that found the pool empty (median per run). Direct (no forwarder) in "
              f"the same run: stream {fmt_val(dstream, WLS['tcp-stream-1-up'])} Gbit/s, RR "
              f"{fmt_val(drr, WLS['tcp-rr-1000'])} ops/s.", "",
              "| buffer_size × buffers_per_shard | pool MiB | stream Gbit/s | spread | CPU-s/GB | stream peak RSS MiB | "
              "RR ops/s | spread | RR p99 µs | CPU-µs/op | RR peak RSS MiB | enobufs stream / RR | runs ok |",
              "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
        grid = [(f"{size}KiB-x{count}", size, count, f"{size} KiB × {count}, splice off"
                 + (" (default pool)" if (size, count) == (16, 4096) else ""))
                for size in (4, 16, 64) for count in (256, 1024, 4096)]
        grid += [(f"16KiB-x{count}-splice-auto", 16, count,
                  f"16 KiB × {count}, splice auto" + (" (**the default**)" if count == 4096 else ""))
                 for count in (1024, 4096)]
        for vn, size, count, label in grid:
                s_ = cell_rows(rows, "buffers", vn, "tcp-stream-1-up")
                r_ = cell_rows(rows, "buffers", vn, "tcp-rr-1000")
                if not s_ and not r_:
                    continue
                L.append("| " + " | ".join([
                    label, f"{size * count / 1024:g}",
                    fmt_val(value(s_, WLS["tcp-stream-1-up"]), WLS["tcp-stream-1-up"]),
                    spread(s_, "bits_per_second", 1e9, gb), C.num(med(s_, "cpu_s_per_gb")),
                    mib(med(s_, "rss_peak_kib")),
                    fmt_val(value(r_, WLS["tcp-rr-1000"]), WLS["tcp-rr-1000"]), spread(r_, "rate"),
                    C.num(med(r_, "p99")), C.num(med(r_, "cpu_us_per_op")), mib(med(r_, "rss_peak_kib")),
                    f"{C.num(med(s_, 'enobufs'))} / {C.num(med(r_, 'enobufs'))}",
                    f"{ok_count(s_)}, {ok_count(r_)}"]) + " |")
        L.append("")
    if "ring" in present:
        wl = WLS["tcp-rr-1000"]
        d = value(cell_rows(rows, "ring", "direct", wl.name), wl)
        L += ["## Ring depth", "", f"tcp-rr-1000; direct in the same run: {fmt_val(d, wl)} ops/s.", "",
              "| ring_entries | ops/s | spread | p50 µs | p99 µs | CPU-µs/op | batch | peak RSS MiB | vs direct | runs ok |",
              "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for n in (256, 2048, 8192):
            rs = cell_rows(rows, "ring", f"ring-{n}", wl.name)
            if rs:
                val = value(rs, wl)
                L.append("| " + " | ".join([by[f"ring/ring-{n}"].label + (" (default)" if n == 2048 else ""),
                                            fmt_val(val, wl), spread(rs, "rate"), C.num(med(rs, "p50")),
                                            C.num(med(rs, "p99")), C.num(med(rs, "cpu_us_per_op")),
                                            C.num(med(rs, "batch")), mib(med(rs, "rss_peak_kib")),
                                            rat(val, d), ok_count(rs)]) + " |")
        L.append("")
    if "busypoll" in present:
        wl = WLS["tcp-rr-1"]
        L += ["## Busy polling", "",
              "tcp-rr-1 (1 connection, 64 B ping-pong). `fwd CPU` is the forwarder's share of one CPU "
              "(CPU 0), `gen CPU` the generator's (CPU 1, shared with the upstream), `CPU 0 busy` the "
              "whole CPU's busy fraction.", "",
              "| variant | ops/s | p50 µs | p99 µs | p99.9 µs | fwd CPU | CPU-µs/op | gen CPU | CPU 0 busy | CPU 1 busy | batch | vs direct (same generator) | runs ok |",
              "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for gen in ("off", "50us"):
            d = value(cell_rows(rows, "busypoll", f"direct-gen-{gen}", wl.name), wl)
            for vn in [f"direct-gen-{gen}"] + [f"fwd-{f}-gen-{gen}" for f in ("off", "20us", "50us", "200us")]:
                rs = cell_rows(rows, "busypoll", vn, wl.name)
                if not rs:
                    continue
                isf = not vn.startswith("direct")
                val = value(rs, wl)
                L.append("| " + " | ".join([
                    by[f"busypoll/{vn}"].label, fmt_val(val, wl), C.num(med(rs, "p50")), C.num(med(rs, "p99")),
                    C.num(med(rs, "p99_9")), pct(med(rs, "fwd_cpu_util")) if isf else "–",
                    C.num(med(rs, "cpu_us_per_op")) if isf else "–", pct(med(rs, "gen_cpu_util")),
                    pct(med(rs, "cpu0_busy")), pct(med(rs, "cpu1_busy")),
                    C.num(med(rs, "batch")) if isf else "–", rat(val, d) if isf else "1.00×", ok_count(rs)]) + " |")
        L.append("")
    # batching: from every default-config pinned ringfwd run
    bat = [("tcp-rr-1", "shards", "1-shard-pinned"), ("tcp-rr-100", "shards", "1-shard-pinned"),
           ("tcp-rr-1000", "ring", "ring-2048"), ("tcp-rr-1000", "buffers", "16KiB-x4096-splice-auto"),
           ("tcp-stream-1-up", "shards", "1-shard-pinned"), ("tcp-stream-1-up", "buffers", "16KiB-x4096"),
           ("tcp-rr-1", "busypoll", "fwd-50us-gen-off"), ("tcp-rr-1", "busypoll", "fwd-200us-gen-50us")]
    brs = [(w, k, vn, cell_rows(rows, k, vn, w)) for w, k, vn in bat]
    brs = [b for b in brs if b[3]]
    if brs:
        L += ["## Batching", "",
              "`completions / loop_turns` from the forwarder's `final stats` line: how many completions "
              "one turn of the event loop (one `io_uring_enter` that returned work) handled. Default "
              "config, 1 shard on CPU 0, unless the row says otherwise.", "",
              "| workload | from knob / variant | completions per loop turn | spread | completions per op | loop turns per op | ops/s | CPU per op |",
              "|---|---|---:|---:|---:|---:|---:|---:|"]
        for w, k, vn, rs in brs:
            wl = WLS[w]
            # ops over the forwarder's whole life, from its own byte counter: 64 B requests for
            # tcp-rr / tcp-crr, and for the stream one op = one 64 KiB write
            unit = 64 if wl.metric == "rate" else 65536
            per = [r for r in rs if r.get("ok") and r.get("loop_turns") and r.get("bytes_c2u")]
            cpo = med([{"ok": True, "x": float(r["completions"]) / (float(r["bytes_c2u"]) / unit)} for r in per], "x")
            lpo = med([{"ok": True, "x": float(r["loop_turns"]) / (float(r["bytes_c2u"]) / unit)} for r in per], "x")
            L.append("| " + " | ".join([
                w, f"{k} / {vn}", C.num(med(rs, "batch")), spread(rs, "batch"),
                "–" if cpo is None else f"{cpo:.2f}", "–" if lpo is None else f"{lpo:.3f}",
                fmt_val(value(rs, wl), wl) + (" Gbit/s" if wl.metric == "bps" else ""),
                C.num(med(rs, "cpu_s_per_gb" if wl.metric == "bps" else "cpu_us_per_op"))
                + (" CPU-s/GB" if wl.metric == "bps" else " µs")]) + " |")
        L += ["", "Per op: the forwarder's whole-life `completions` and `loop_turns` divided by the "
                  "requests it relayed over its life (`bytes_c2u / 64`); for the stream one op is one "
                  "64 KiB write (`bytes_c2u / 65536`).", ""]
    if "sockbuf" in present:
        wl = WLS["tcp-stream-1-up"]
        L += ["## Socket buffers (tcp_rmem / tcp_wmem)", "",
              "tcp-stream-1-up, direct and ringfwd side by side under each setting (set with sysctl for "
              "those runs only, restored after).", "",
              "| setting | direct Gbit/s | spread | ringfwd Gbit/s | spread | ringfwd vs direct | ringfwd CPU-s/GB | peak RSS MiB | runs ok |",
              "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for name in ("kernel-default", "this-vm", "wmem-16MiB"):
            d = cell_rows(rows, "sockbuf", f"{name}-direct", wl.name)
            f_ = cell_rows(rows, "sockbuf", f"{name}-ringfwd", wl.name)
            if not d and not f_:
                continue
            dv, fv = value(d, wl), value(f_, wl)
            L.append("| " + " | ".join([by[f"sockbuf/{name}-direct"].label, fmt_val(dv, wl),
                                        spread(d, "bits_per_second", 1e9, gb), fmt_val(fv, wl),
                                        spread(f_, "bits_per_second", 1e9, gb), rat(fv, dv),
                                        C.num(med(f_, "cpu_s_per_gb")), mib(med(f_, "rss_peak_kib")),
                                        f"{ok_count(d)}, {ok_count(f_)}"]) + " |")
        L.append("")
    if "backlog" in present:
        wl = WLS["tcp-crr-200"]
        L += ["## Listen backlog (somaxconn)", "",
              "tcp-crr with 200 connections in flight (connect, 64 B request, response, close, repeat). "
              "The upstream and the forwarder are started after the sysctl is set (the backlog is fixed "
              "at listen()). `ListenOverflows` / `ListenDrops`: TcpExt counters of /proc/net/netstat, "
              "difference over the run (whole bench, all listeners of the machine).", "",
              "| somaxconn | target | conn/s | spread | p50 µs | p99 µs | p99.9 µs | CPU-µs/conn | ListenOverflows | ListenDrops | errors | runs ok |",
              "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|"]
        for n in ("4096", "128"):
            for t in ("direct", "ringfwd"):
                rs = cell_rows(rows, "backlog", f"somaxconn-{n}-{t}", wl.name)
                if not rs:
                    continue
                errs = sorted({r.get("errors") for r in rs if r.get("errors")})
                L.append("| " + " | ".join([n, t, fmt_val(value(rs, wl), wl), spread(rs, "rate"),
                                            C.num(med(rs, "p50")), C.num(med(rs, "p99")),
                                            C.num(med(rs, "p99_9")),
                                            C.num(med(rs, "cpu_us_per_op")) if t == "ringfwd" else "–",
                                            C.num(med(rs, "listen_overflows")), C.num(med(rs, "listen_drops")),
                                            "; ".join(errs) or "none", ok_count(rs)]) + " |")
        L.append("")
    fails = [r for r in rows if not r.get("ok")]
    if fails:
        L += ["## Failed runs", ""]
        for r in fails:
            L.append(f"- {r['knob']} / {r['variant']} / {r['workload']} rep {r['rep']}: {r.get('error')}")
        L.append("")
    return "\n".join(L)


def setup_md(h: Knobs, meta: dict, facts: dict, versions: dict) -> str:
    L = [f"# Knobs — setup, {meta['date']} on {meta['host']}", "",
         f"- command: `{meta['cmdline']}` — {meta['mode_note']}",
         f"- started {meta['started']}, finished {meta['finished']}, wall time {meta['wall']}"
         + ("" if meta["complete"] else " — **interrupted, incomplete**"),
         f"- CPU: {facts['cpu']}, {facts['ncpu']} cores (vCPUs); memory {facts['mem']}; kernel {facts['kernel']}",
         f"- load average (1, 5, 15 min) before: {meta['load_before']}; after: {meta['load_after']}. "
         + meta.get("other_load", "") + " The machine is shared; every row of raw.csv has `load_before`, "
         "`cpu0_busy`, `cpu1_busy` and `other_cpu_util` (CPU used by processes other than forwarder, "
         "generator and upstream during the measured window).",
         "- idle state: an idle vCPU of this VM halts at once; a wakeup across CPUs costs ~150 µs of "
         "round trip.",
         f"- quiet gate: before each run the harness waited up to {h.args.quiet_wait:g} s (at most "
         f"{h.args.quiet_budget:g} s in all) until fewer than 0.3 CPUs were busy with other work; it "
         f"waited {h.gate.waited:.0f} s in all (`quiet_wait_s` and `busy_before` per row of raw.csv).",
         "", "## Versions", ""]
    for k, v in versions.items():
        L.append(f"- {k}: `{v}`")
    L += ["", "## Kernel settings before the run", ""]
    for k, v in facts["sysctl"].items():
        L.append(f"- `{k}` = `{v}`")
    L += ["", "The `sockbuf` and `backlog` knobs change `net.ipv4.tcp_rmem`, `net.ipv4.tcp_wmem` and "
          "`net.core.somaxconn` for their own runs only (`sysctl -w`, in the command list below) and "
          "restore the values above afterwards, also when interrupted (try/finally).", "",
          "## Settings", "",
          f"- repetitions: {meta['reps']}, interleaved: within each knob, rep 1 runs every variant × "
          "workload, then rep 2, ...; the order rotates by one each repetition (knobs with a sysctl "
          "run all variants of one setting back to back, the settings' order rotating)",
          f"- each run: `--warmup {meta['warmup']} --duration {meta['duration']}`",
          "- every ringfwd run starts a fresh `ringfwd run` (listeners to the upstream's echo and sink, "
          "`--log-level info`, a `--config` file with the variant's `[runtime]` keys when it has any, "
          "everything else at its default), waits until it accepts, runs the bench, stops it with "
          "SIGTERM and reads its `final stats` line",
          "- upstream: `ringfwd echo` (echo + sink), started once and kept: `pinned` on CPU 1 with 1 "
          "shard; `float` with 2 shards whose threads' affinity is widened to both CPUs after start; "
          "for the backlog knob a fresh one per run, started after the sysctl is set",
          "", "## Workloads", "", "| workload | bench arguments |", "|---|---|"]
    for w in WLS.values():
        L.append(f"| {w.name} | `{w.mode} {' '.join(w.args)}` |")
    L += ["", "## Variants and pinning", "",
          "Pinned means `taskset -c` plus ringfwd's own `--cpus` (ringfwd pins each shard thread to "
          "its CPU by design). ringfwd has no option to leave its shards unpinned: the *unpinned* "
          "variants start it (and the generator and upstream) without `taskset`/`--cpus` and then "
          "widen the affinity of every thread to CPUs 0-1 with `sched_setaffinity` (the generator's "
          "threads during its first 0.5 s), so the scheduler places and migrates them.", "",
          "| knob | variant | target | forwarder | generator | upstream | config / flags | sysctl |",
          "|---|---|---|---|---|---|---|---|"]
    for v in h.variants:
        fwd = "–" if v.target == "direct" else (
            f"{v.fwd_shards} shard(s), " + (f"CPUs {','.join(map(str, v.fwd_cpus))}" if v.fwd_cpus else
                                              ("unpinned" if v.fwd_float else "ringfwd's default pinning")))
        gen = f"{v.gen_shards} shard(s), " + (f"CPU {','.join(map(str, v.gen_cpus))}" if v.gen_cpus else "unpinned")
        up = {"pinned": "1 shard, CPU 1", "float": "2 shards, unpinned", "fresh": "1 shard, CPU 1, fresh per run"}[v.upstream]
        flags = ", ".join([f"{k} = {val}" for k, val in v.runtime.items()] + v.fwd_extra
                          + ([f"generator {' '.join(v.gen_extra)}"] if v.gen_extra else [])) or "defaults"
        L.append(f"| {v.knob} | {v.name} | {v.target} | {fwd} | {gen} | {up} | {flags} | "
                 + ("; ".join(f"{k} = {val}" for k, val in v.sysctl.items()) or "–") + " |")
    L += ["", "## Measurement", "",
          "As in compare.py (its `measure_bench`): rate, latency and bits/s from `ringfwd bench --json` "
          "(`runs/`); the forwarder's CPU from the exact on-CPU time of its threads "
          "(`/proc/<pid>/task/*/schedstat`) sampled 0.1 s after the warmup and 0.1 s before the end "
          "of the measured window, as a rate, per op or per GB (both directions); peak RSS is VmHWM "
          "after `clear_refs` at the start of the run (the forwarder is fresh, so this is its whole "
          "life), PSS from smaps_rollup; `rss_start_kib` is VmRSS right after it started accepting. "
          "`batch`, `loop_turns`, `completions`, `enobufs`, `recv_paused`, `short_sends` come from "
          "the forwarder's `final stats` log line at exit (its whole life). `listen_overflows`, "
          "`listen_drops`, `tcp_timeouts`: TcpExt of /proc/net/netstat, difference over the bench.",
          "", "## Commands", "",
          "Every process started, every sysctl written and every bench run, in order. "
          "`/tmp/ringfwd-compare-*/ringfwd` is a private copy of the binary.", "", "```"]
    L += C.COMMANDS
    L += ["```", ""]
    cfgs = sorted((h.out / "configs").glob("*.toml"))
    if cfgs:
        L += ["## Config files", ""]
        for c in cfgs:
            L += [f"### configs/{c.name}", "", "```toml", c.read_text().rstrip(), "```", ""]
    return "\n".join(L)


NUMERIC = {"rep", "rate", "offered_rate", "bits_per_second", "p50", "p90", "p99", "p99_9", "max", "cpu_s",
           "cpu_us_per_op", "cpu_s_per_gb", "fwd_cpu_util", "rss_peak_kib", "pss_kib", "rss_start_kib",
           "rss_end_kib", "batch", "loop_turns", "completions", "enobufs", "recv_paused", "short_sends",
           "accepted", "bytes_c2u", "bytes_u2c", "splices_in", "splices_out", "splice_switched",
           "listen_overflows", "listen_drops", "tcp_timeouts", "elapsed_s", "ops",
           "gen_cpu_util", "up_cpu_util", "cpu0_busy", "cpu1_busy", "other_cpu_util", "wall_s", "exit",
           "busy_before", "quiet_wait_s"}


def read_rows(path: Path) -> list[dict]:
    return C.read_rows(path, NUMERIC)


def other_load(rows: list[dict]) -> str:
    others = [float(r["other_cpu_util"]) for r in rows if r.get("other_cpu_util") not in (None, "")]
    if not others:
        return ""
    return (f"Other load during the measured windows (CPU used by processes other than forwarder, "
            f"generator and upstream, in CPUs of {os.cpu_count()}): median {statistics.median(others):.2f}, "
            f"max {max(others):.2f}; runs with more than 0.15: {sum(1 for o in others if o > 0.15)} of {len(others)}.")


# --------------------------------------------------------------------------
# main

def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog="knobs: " + ", ".join(KNOBS))
    ap.add_argument("--quick", action="store_true", help="1 repetition of 0.5 s warmup + 1 s")
    ap.add_argument("--only", help="knobs to run, comma-separated: " + ",".join(KNOBS))
    ap.add_argument("--reps", type=int)
    ap.add_argument("--duration", type=float)
    ap.add_argument("--warmup", type=float)
    ap.add_argument("--out", type=Path, help="default: bench-results/<YYYY-MM-DD>-<host>/knobs/")
    ap.add_argument("--no-build", action="store_true", help="use target/release/ringfwd as it is")
    ap.add_argument("--binary", type=Path, help="a prebuilt ringfwd to run instead of building the tree")
    ap.add_argument("--binary-note", help="where --binary comes from (recorded in setup.md)")
    ap.add_argument("--summarize-only", action="store_true", help="rebuild summary.md from raw.csv")
    ap.add_argument("--rerun", action="store_true",
                    help="with --only: re-measure those knobs in the existing --out directory, keeping "
                         "the other knobs' rows from the run that made it")
    ap.add_argument("--quiet-wait", type=float, default=20.0,
                    help="before each run, wait up to this many seconds for the machine to be quiet "
                         "(< 0.3 CPUs busy with other work; default 20)")
    ap.add_argument("--quiet-budget", type=float, default=240.0,
                    help="at most this many seconds of such waiting in all (default 240)")
    args = ap.parse_args()

    def on_term(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")
    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGHUP, on_term)

    now = dt.datetime.now()
    host = socket.gethostname().split(".")[0]
    out = (args.out or REPO / "bench-results" / f"{now:%Y-%m-%d}-{host}" / "knobs").resolve()
    settings = dict(reps=1, duration=1.0, warmup=0.5) if args.quick else dict(reps=3, duration=2.0, warmup=1.0)
    for k in ("reps", "duration", "warmup"):
        if getattr(args, k) is not None:
            settings[k] = getattr(args, k)
    found = {k: read_sysctl(k) for k in SYSCTL_KEYS}
    allv = variants(found)
    only = [k.strip() for k in (args.only or ",".join(KNOBS)).split(",") if k.strip()]
    bad = [k for k in only if k not in KNOBS]
    if bad:
        print(f"knobs.py: unknown knob(s) {bad}; known: {KNOBS}", file=sys.stderr)
        return 2
    selected = [v for v in allv if v.knob in only]
    meta = {"date": f"{now:%Y-%m-%d}", "host": host, "reps": settings["reps"],
            "duration": C.fmt_dur(settings["duration"]), "warmup": C.fmt_dur(settings["warmup"]),
            "mode_note": "Quick run (1 repetition, short runs)" if args.quick else "Full run"}
    if args.summarize_only:
        rows = read_rows(out / "raw.csv")
        if (out / "meta.json").exists():
            meta.update(json.loads((out / "meta.json").read_text()))
        meta["reps"] = int(max(r["rep"] for r in rows))
        meta["other_load"] = other_load(rows)
        (out / "summary.md").write_text(summary_md(rows, allv, meta))
        print(f"wrote {out / 'summary.md'}")
        return 0
    if os.geteuid() != 0:
        print("knobs.py: run as root (sysctls, clear_refs)", file=sys.stderr)
        return 2
    out.mkdir(parents=True, exist_ok=True)
    # --rerun: re-measure the --only knobs in an existing result directory, keeping the other
    # knobs' rows (and their setup) from the run that made it
    kept: list[dict] = []
    prev_setup = ""
    if args.rerun:
        if not (out / "raw.csv").exists():
            print(f"knobs.py: --rerun needs an earlier {out / 'raw.csv'}", file=sys.stderr)
            return 2
        kept = [r for r in read_rows(out / "raw.csv") if r["knob"] not in only]
        prev_setup = (out / "setup.md").read_text() if (out / "setup.md").exists() else ""
        # the re-run's JSON and logs replace the earlier ones file by file (same names); raw.csv,
        # summary.md and setup.md change only when the re-run completes
    else:
        if (out / "runs").exists():
            shutil.rmtree(out / "runs")
        if (out / "logs").exists():
            shutil.rmtree(out / "logs")
    C.LOG_FILE = open(out / ("log-rerun.txt" if args.rerun else "log.txt"), "w")
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    started = dt.datetime.now()
    load_before = C.loadavg()
    cmdline = "benches/knobs.py" + "".join(" " + shlex.quote(a) for a in sys.argv[1:])
    C.log(f"knobs.py: output in {out}; load average {load_before}; sysctls {found}")
    h = None
    complete = False
    binary_dir = None
    versions = {}
    facts = C.machine_facts()
    try:
        binary, _ = C.build(args.no_build, args.binary)
        binary_dir = binary.parent
        versions = {"ringfwd": C.first_line([str(binary), "--version"]) + (
            f" (prebuilt {args.binary}: {args.binary_note or 'origin not given'})" if args.binary else
            " (git " + (C.sh(["git", "-C", str(REPO), "describe", "--always", "--dirty"]).stdout.strip() or "?") + ")"),
            "python": platform.python_version()}
        h = Knobs(args, out, binary, settings, selected)
        h.execute()
        complete = True
    except KeyboardInterrupt:
        C.log("interrupted: ending every process this script started")
    except Exception as e:
        C.log(f"ERROR: {type(e).__name__}: {e}")
    finally:
        if h is not None:
            bp = h.bench_proc
            if bp is not None and bp.poll() is None:
                bp.kill()
                bp.wait()
            h.stop_all()
            h.restore_sysctls()
        else:
            for k, v in found.items():
                if read_sysctl(k) != v:
                    write_sysctl(k, v)
        if binary_dir is not None:
            shutil.rmtree(binary_dir, ignore_errors=True)
    if h is None:
        return 1
    finished = dt.datetime.now()
    wall = (finished - started).total_seconds()
    meta.update({"started": f"{started:%Y-%m-%d %H:%M:%S}", "finished": f"{finished:%H:%M:%S}",
                 "wall": f"{int(wall // 60)} min {int(wall % 60)} s", "load_before": load_before,
                 "load_after": C.loadavg(), "complete": complete, "cmdline": cmdline,
                 "other_load": other_load(h.rows)})
    if args.rerun and not complete:
        C.log("re-run incomplete: raw.csv, summary.md and setup.md left as they were; its rows are "
              "in raw-rerun.csv (its JSON files under runs/ replaced the earlier ones of the same name)")
        return 1
    if args.rerun:
        rows = kept + h.rows
        rows.sort(key=lambda r: KNOBS.index(r["knob"]))
        with open(out / "raw.csv", "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=CSV_FIELDS, extrasaction="ignore")
            w.writeheader()
            for r in rows:
                w.writerow({k: (int(v) if isinstance(v, float) and v.is_integer() else v) for k, v in r.items()})
        prev = json.loads((out / "meta.json").read_text()) if (out / "meta.json").exists() else {}
        meta["other_load"] = other_load(rows)
        meta["reps"] = int(max(float(r["rep"]) for r in rows))
        (out / "summary.md").write_text(summary_md(rows, allv, meta))
        setup_prev = prev_setup.split("\n## Re-run", 1)[0]
        (out / "setup.md").write_text(
            setup_prev.rstrip() + f"\n\n## Re-run of {', '.join(only)} ({meta['started']})\n\n"
            f"The rows of {', '.join(only)} in raw.csv come from this later invocation (the first "
            "one's were taken under heavy other load on the machine); everything else above is "
            "from the first. Its setup:\n\n"
            + setup_md(h, meta, facts, versions).split("\n", 1)[1].replace("\n## ", "\n### "))
        C.log(f"re-run done in {meta['wall']}: {len(h.rows)} runs merged into raw.csv")
        meta = {**prev, "rerun": {k: meta[k] for k in ("started", "wall", "cmdline", "load_before", "load_after")}}
        (out / "meta.json").write_text(json.dumps(meta, indent=1) + "\n")
        (out / "raw-rerun.csv").unlink()
        return 0
    else:
        (out / "summary.md").write_text(summary_md(h.rows, allv, meta))
        (out / "setup.md").write_text(setup_md(h, meta, facts, versions))
        (out / "meta.json").write_text(json.dumps(meta, indent=1) + "\n")
    failed = [r for r in h.rows if not r.get("ok")]
    C.log(f"done in {meta['wall']}: {len(h.rows)} runs, {len(failed)} failed; results in {out}")
    return 0 if complete else 1


if __name__ == "__main__":
    sys.exit(main())
