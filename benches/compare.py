#!/usr/bin/env python3
"""Side-by-side comparison of ringfwd with HAProxy, NGINX stream and socat.

One run on one machine: build ringfwd (release), install the peers if they are
missing, write their configs, start one `ringfwd echo` upstream and every
forwarder on its own loopback ports, then for each workload run
`ringfwd bench ... --json` against every target, interleaved over repetitions,
sampling each forwarder's CPU time and memory from /proc. Results go to
bench-results/<date>-<host>/ (setup.md, raw.csv, summary.md, chart.svg).

Python 3 standard library only. Run as root (package install, /proc of
processes running as other users, clear_refs).

    benches/compare.py            # the full comparison (< 25 minutes on 2 cores, capacity at SLO included)
    benches/compare.py --quick    # a smoke run (< 3 minutes)
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import fnmatch
import html
import json
import math
import os
import platform
import re
import resource
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
CLK_TCK = os.sysconf("SC_CLK_TCK")
LOOPBACK = "127.0.0.1"

# Targets, in the order they appear in every table. "direct" is no forwarder:
# the generator loads the upstream itself.
TARGETS = ["direct", "ringfwd", "ringfwd-busypoll", "haproxy", "haproxy-splice-auto", "haproxy-splice",
           "haproxy-busypoll", "nginx", "socat"]
# Every workload runs these (unless it names its own targets); the busy-polling variants run only
# where a workload asks for them.
DEFAULT_TARGETS = ["direct", "ringfwd", "haproxy", "haproxy-splice-auto", "haproxy-splice", "nginx", "socat"]
HAPROXY_VARIANTS = ["haproxy", "haproxy-splice-auto", "haproxy-splice"]
HAPROXY_ALL = HAPROXY_VARIANTS + ["haproxy-busypoll"]
UDP_CAPABLE = {"direct", "ringfwd", "ringfwd-busypoll", "nginx", "socat"}
# Started right before each of their runs and stopped right after: HAProxy's busy-polling spins
# its thread at 100% whether or not there is traffic, which would take CPU 0 from every other
# target's runs (ringfwd's busy_poll spins only after work, but is handled the same way).
ON_DEMAND = {"ringfwd-busypoll", "haproxy-busypoll"}
BUSY_POLL = "50us"
# Listen ports: layout base + target offset + service offset (the first seven as in earlier runs).
TARGET_OFFSET = {"direct": 0, "ringfwd": 100, "haproxy": 200, "haproxy-splice-auto": 300,
                 "haproxy-splice": 400, "nginx": 500, "socat": 600, "ringfwd-busypoll": 700,
                 "haproxy-busypoll": 800}
TCP_SERVICES = {"echo": 0, "sink": 1, "source": 2, "rr": 3, "iperf3": 4}
# The bulk rows run a second generator: iperf3 -c against an `iperf3 -s` upstream (the service
# "iperf3", beside `ringfwd echo`), so every bulk ratio is read against both generators.
IPERF3_DIRECTION = {"up": [], "down": ["-R"], "both": ["--bidir"]}
UDP_SERVICES = {"udp": 0}  # the UDP echo; UDP ports are a separate space, same numbers
COLORS = {
    "direct": "#7f7f7f",
    "ringfwd": "#d62728",
    "haproxy": "#1f77b4",
    "haproxy-splice-auto": "#6baed6",
    "haproxy-splice": "#08306b",
    "nginx": "#2ca02c",
    "socat": "#ff7f0e",
    "ringfwd-busypoll": "#ff9896",
    "haproxy-busypoll": "#9467bd",
}


# --------------------------------------------------------------------------
# What runs where

@dataclass
class Layout:
    name: str
    base: int  # first port of this layout (upstream); targets at base + TARGET_OFFSET
    fwd_cpus: list[int] | None  # None: not pinned
    fwd_threads: int
    gen_cpus: list[int] | None
    up_cpus: list[int] | None
    gen_shards: int
    up_shards: int
    note: str

    def port(self, target: str, service: str) -> int:
        off = TCP_SERVICES.get(service, UDP_SERVICES.get(service))
        return self.base + TARGET_OFFSET[target] + off


def make_layouts(ncpu: int) -> dict[str, Layout]:
    if ncpu >= 2:
        pinned = Layout(
            "pinned", 20000, [0], 1, [1], [1], 1, 1,
            "forwarder on CPU 0 (1 thread / worker / shard); generator (`ringfwd bench`, 1 shard) "
            "and upstream (`ringfwd echo`, 1 shard) on CPU 1; every process started under "
            "`taskset`, and the harness itself moves to CPU 1 while it waits and samples",
        )
    else:
        pinned = Layout("pinned", 20000, [0], 1, [0], [0], 1, 1,
                        "single CPU: everything on CPU 0")
    unpinned = Layout(
        "unpinned", 21000, None, 2, None, None, 2, 2,
        "nothing under `taskset`; the forwarder runs 2 threads / workers / shards, generator "
        "and upstream 2 shards each (ringfwd pins its shards by design, so ringfwd, the "
        "generator and the upstream have one shard on each CPU; HAProxy threads, NGINX "
        "workers and socat processes go where the scheduler puts them)",
    )
    return {"pinned": pinned, "unpinned": unpinned}


@dataclass
class Workload:
    name: str
    mode: str  # ringfwd bench mode
    service: str  # upstream service the load needs: echo, sink, source, rr, udp
    args: list[str]
    metric: str  # "rate" (ops/s) or "bps" (bits/s)
    layouts: tuple[str, ...] = ("pinned",)
    quick_layouts: tuple[str, ...] = ()
    what: str = ""
    note: str = ""  # how to read this workload's numbers, printed under its table
    targets: tuple[str, ...] | None = None  # None: DEFAULT_TARGETS
    gen_extra: tuple[str, ...] = ()  # more `ringfwd bench` flags (the generator's --busy-poll)
    gen: str = "ringfwd"  # the load generator: "ringfwd" (`ringfwd bench`) or "iperf3" (`iperf3 -c`)

    @property
    def udp(self) -> bool:
        return self.service == "udp"


UDP_STREAM_NOTE = (
    "The rate is datagrams delivered back to the generator per second; offered is what it sent. "
    "Pinned, the generator and the upstream share CPU 1, so much of the loss, direct included, "
    "is the upstream starved by the generator, not the forwarder.")

IPERF3_WHAT = "iperf3 as the generator: `iperf3 -c` (1 stream, its default 128 KiB writes) to `iperf3 -s`, "
IPERF3_NOTE = ("The same path and pinning as the ringfwd-generated row above it, with iperf3 at both ends "
               "(client where the generator runs, server where the upstream runs): read each forwarder's "
               "ratio against both generators. iperf3 counts what its receiver got after `-O` (omitted "
               "warmup) seconds.")

BUSYPOLL_TARGETS = ("direct", "ringfwd", "ringfwd-busypoll", "haproxy", "haproxy-busypoll")
# Request/response and connection workloads leave out HAProxy's forced splice: splice is a bulk
# mode, and it was the slowest HAProxy variant in every one of them in the 2026-12-01 run
# (0.64-0.90x the best variant); the time goes to the new workloads instead.
RR_TARGETS = tuple(t for t in DEFAULT_TARGETS if t != "haproxy-splice")
UDP_FIXED_NOTE = (
    "Open loop at a fixed offered rate (`--rate`), so every target gets the same offered load and "
    "delivered/s and CPU-µs per datagram compare directly. `gen+up CPU` is the CPU the generator and "
    "the upstream used together (both on CPU 1): near 100%, CPU 1 is saturated and datagrams are "
    "lost before any forwarder is involved, direct included.")

WORKLOADS = [
    Workload("tcp-rr-1", "tcp-rr", "echo", ["--connections", "1", "--size", "64"], "rate",
             quick_layouts=("pinned",), what="1 connection, 64 B request, 64 B echo, closed loop",
             targets=RR_TARGETS + ("ringfwd-busypoll", "haproxy-busypoll"),
             note="Pinned, direct keeps generator and upstream on CPU 1, while through a forwarder "
                  "every request crosses CPUs twice each way; with one request in flight each "
                  "crossing is a wakeup of a halted vCPU (~150 µs here), so the forwarders' ~0.1× "
                  "of direct is that wakeup cost, the same for all of them. Compare the forwarders "
                  "with each other (the vs HAProxy column), not with direct. ringfwd-busypoll is "
                  f"`ringfwd run --busy-poll {BUSY_POLL}`, haproxy-busypoll HAProxy (no splice) with "
                  "`busy-polling` in its global section; `CPU` is the forwarder's share of CPU 0."),
    Workload("tcp-rr-1-genbusy", "tcp-rr", "echo", ["--connections", "1", "--size", "64"], "rate",
             quick_layouts=("pinned",), targets=BUSYPOLL_TARGETS, gen_extra=("--busy-poll", BUSY_POLL),
             what=f"as tcp-rr-1, with the generator busy-polling too (`ringfwd bench --busy-poll {BUSY_POLL}`)",
             note="The generator spins on CPU 1 (which it shares with the upstream) for "
                  f"{BUSY_POLL} after each completion, so the replies find it awake; compare with "
                  "tcp-rr-1, where only the forwarder side may busy-poll."),
    Workload("tcp-rr-100", "tcp-rr", "echo", ["--connections", "100", "--size", "64"], "rate",
             layouts=("pinned", "unpinned"), quick_layouts=("pinned", "unpinned"),
             what="100 connections, 64 B request/response, one outstanding per connection",
             targets=RR_TARGETS),
    Workload("tcp-rr-1000", "tcp-rr", "echo", ["--connections", "1000", "--size", "64"], "rate",
             what="1000 connections, 64 B request/response",
             targets=RR_TARGETS),
    Workload("tcp-crr-50", "tcp-crr", "echo", ["--connections", "50", "--size", "64"], "rate",
             quick_layouts=("pinned",),
             what="50 in flight: connect, 64 B request, 64 B response, close, repeat",
             targets=RR_TARGETS),
    Workload("tcp-stream-1-up", "tcp-stream", "sink",
             ["--connections", "1", "--direction", "up", "--size", "256KiB"], "bps",
             layouts=("pinned", "unpinned"), quick_layouts=("pinned",),
             what="1 connection, 256 KiB writes to a sink"),
    Workload("tcp-stream-1-up-iperf3", "tcp-stream", "iperf3", IPERF3_DIRECTION["up"], "bps",
             layouts=("pinned",), gen="iperf3", what=IPERF3_WHAT + "up", note=IPERF3_NOTE),
    Workload("tcp-stream-1-down", "tcp-stream", "source",
             ["--connections", "1", "--direction", "down", "--size", "256KiB"], "bps",
             what="1 connection from a source (`ringfwd echo --tcp-source`), every byte verified"),
    Workload("tcp-stream-1-down-iperf3", "tcp-stream", "iperf3", IPERF3_DIRECTION["down"], "bps",
             layouts=("pinned",), gen="iperf3", what=IPERF3_WHAT + "down (`-R`)", note=IPERF3_NOTE),
    Workload("tcp-stream-8-up", "tcp-stream", "sink",
             ["--connections", "8", "--direction", "up", "--size", "256KiB"], "bps",
             what="8 connections, 256 KiB writes to a sink"),
    Workload("tcp-stream-1-both", "tcp-stream", "echo",
             ["--connections", "1", "--direction", "both", "--size", "256KiB"], "bps",
             what="1 connection to an echo: bytes flow both ways at once"),
    Workload("tcp-stream-1-both-iperf3", "tcp-stream", "iperf3", IPERF3_DIRECTION["both"], "bps",
             layouts=("pinned",), gen="iperf3", what=IPERF3_WHAT + "both (`--bidir`: one connection "
             "each way, where ringfwd's both is one connection to an echo)", note=IPERF3_NOTE),
    Workload("udp-rr-100", "udp-rr", "udp", ["--flows", "100", "--size", "64"], "rate",
             quick_layouts=("pinned",), what="100 flows, one 64 B datagram outstanding each"),
    Workload("udp-stream-8-1200", "udp-stream", "udp", ["--flows", "8", "--size", "1200"], "rate",
             quick_layouts=("pinned",),
             what="8 flows, 1200 B datagrams offered as fast as the generator can (32 in flight "
                  "per flow), echoes counted",
             note=UDP_STREAM_NOTE, targets=("direct", "ringfwd", "nginx")),
    Workload("udp-stream-8-64", "udp-stream", "udp", ["--flows", "8", "--size", "64"], "rate",
             what="8 flows, 64 B datagrams offered as fast as the generator can (32 in flight per "
                  "flow): the packet rate",
             note=UDP_STREAM_NOTE, targets=("direct", "ringfwd", "nginx")),
    Workload("udp-stream-8-64-50k", "udp-stream", "udp",
             ["--flows", "8", "--size", "64", "--rate", "50k/s"], "rate",
             what="8 flows, 64 B datagrams offered at 50k/s in total (open loop)",
             note=UDP_FIXED_NOTE, targets=("direct", "ringfwd", "nginx")),
    Workload("udp-stream-8-64-150k", "udp-stream", "udp",
             ["--flows", "8", "--size", "64", "--rate", "150k/s"], "rate", quick_layouts=("pinned",),
             what="8 flows, 64 B datagrams offered at 150k/s in total (open loop)",
             note=UDP_FIXED_NOTE, targets=("direct", "ringfwd", "nginx")),
]

def workload_targets(wl: Workload, selected: list[str]) -> list[str]:
    """The targets `wl` runs against, of those selected, in table order."""
    want = set(wl.targets if wl.targets is not None else DEFAULT_TARGETS)
    return [t for t in TARGETS if t in selected and t in want and (not wl.udp or t in UDP_CAPABLE)]


FULL = dict(reps=3, duration=3.0, warmup=1.0)
QUICK = dict(reps=1, duration=1.0, warmup=0.5)


# --------------------------------------------------------------------------
# Small helpers

LOG_FILE = None
T_START = time.monotonic()


def log(msg: str) -> None:
    el = time.monotonic() - T_START
    line = f"[{int(el // 60):02d}:{int(el % 60):02d}] {msg}"
    print(line, flush=True)
    if LOG_FILE is not None:
        LOG_FILE.write(line + "\n")
        LOG_FILE.flush()


def fmt_dur(seconds: float) -> str:
    ms = int(round(seconds * 1000))
    return f"{ms // 1000}s" if ms % 1000 == 0 else f"{ms}ms"


def sh(argv: list[str], **kw) -> subprocess.CompletedProcess:
    return subprocess.run(argv, capture_output=True, text=True, **kw)


def first_line(argv: list[str]) -> str:
    try:
        r = sh(argv, timeout=20)
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"({argv[0]}: {e})"
    text = (r.stdout or "") + (r.stderr or "")
    return text.strip().splitlines()[0] if text.strip() else f"({argv[0]}: no output)"


def taskset(cpus: list[int] | None) -> list[str]:
    return ["taskset", "-c", ",".join(map(str, cpus))] if cpus else []


def si(x: float | None, unit: str = "", digits: int = 3) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "–"
    for div, p in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(x) >= div:
            return f"{x / div:.{digits}g}{p}{unit}"
    return f"{x:.{digits}g}{unit}"


def num(x, digits: int = 3) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "–"
    if abs(x) >= 1000:
        return f"{x:,.0f}"
    return f"{x:.{digits}g}"


def ratio(x: float | None) -> str:
    return "–" if x is None else f"{x:.2f}×"


# --------------------------------------------------------------------------
# /proc sampling

def read_stat(pid: int) -> tuple[int, int, int] | None:
    """(ppid, cpu ticks incl. reaped children, starttime) or None if gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read().decode(errors="replace")
    except OSError:
        return None
    rest = data[data.rfind(")") + 2:].split()
    # rest[0] is field 3 (state): utime is field 14, stime 15, cutime 16, cstime 17, starttime 22
    ppid = int(rest[1])
    ticks = int(rest[11]) + int(rest[12]) + int(rest[13]) + int(rest[14])
    return ppid, ticks, int(rest[19])


def proc_table() -> dict[int, tuple[int, int, int]]:
    out = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            st = read_stat(int(name))
            if st is not None:
                out[int(name)] = st
    return out


def tree(roots: list[int], table: dict | None = None) -> dict[int, tuple[int, int, int]]:
    """The processes in the trees rooted at `roots` (each root included), with their stat."""
    table = proc_table() if table is None else table
    children: dict[int, list[int]] = {}
    for pid, (ppid, _, _) in table.items():
        children.setdefault(ppid, []).append(pid)
    out, todo = {}, [r for r in roots if r in table]
    while todo:
        p = todo.pop()
        if p in out:
            continue
        out[p] = table[p]
        todo.extend(children.get(p, []))
    return out


def cpu_seconds_ticks(roots: list[int], table: dict | None = None) -> float:
    """utime+stime+cutime+cstime from /proc/<pid>/stat over the trees (tick-sampled)."""
    return sum(t for _, t, _ in tree(roots, table).values()) / CLK_TCK


def reaped_ticks(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            rest = f.read().decode(errors="replace").rsplit(")", 1)[1].split()
        return int(rest[13]) + int(rest[14])  # cutime, cstime (fields 16, 17)
    except (OSError, IndexError, ValueError):
        return 0


def tids(pid: int) -> list[str]:
    """The live threads of `pid` (none once it is gone)."""
    try:
        return os.listdir(f"/proc/{pid}/task")
    except OSError:
        return []


def runtime_ns(pid: int) -> int:
    """On-CPU time of every live thread of `pid` (sum_exec_runtime, from schedstat), in ns."""
    total = 0
    for tid in tids(pid):
        try:
            with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                total += int(f.read().split()[0])
        except (OSError, IndexError, ValueError):
            pass
    return total


def cpu_seconds(roots: list[int], table: dict | None = None) -> float:
    """CPU time of the trees: the exact on-CPU time of every live thread (schedstat), plus the
    children already reaped (cutime+cstime, which the kernel fills from their exact runtime).

    utime/stime of a live process are tick samples: a socat child that runs for a few
    microseconds per request between ticks shows 0 there while schedstat shows milliseconds."""
    pids = tree(roots, table)
    return sum(runtime_ns(p) for p in pids) / 1e9 + sum(reaped_ticks(p) for p in pids) / CLK_TCK


def kib_field(path: str, key: str) -> int:
    try:
        with open(path) as f:
            for line in f:
                if line.startswith(key):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def memory(roots: list[int]) -> tuple[int, int, int]:
    """(sum of VmHWM, sum of Pss, number of processes), KiB, over the trees."""
    pids = tree(roots)
    hwm = sum(kib_field(f"/proc/{p}/status", "VmHWM:") for p in pids)
    pss = sum(kib_field(f"/proc/{p}/smaps_rollup", "Pss:") for p in pids)
    return hwm, pss, len(pids)


def clear_refs(roots: list[int]) -> None:
    for p in tree(roots):
        try:
            with open(f"/proc/{p}/clear_refs", "w") as f:
                f.write("5")  # reset the peak RSS (VmHWM) to the current RSS
        except OSError:
            pass


def cpu_busy() -> dict[str, tuple[int, int]]:
    """Per CPU line of /proc/stat: (busy ticks, total ticks)."""
    out = {}
    with open("/proc/stat") as f:
        for line in f:
            if not line.startswith("cpu"):
                break
            parts = line.split()
            vals = [int(v) for v in parts[1:]]
            total = sum(vals[:8])
            idle = vals[3] + vals[4]
            out[parts[0]] = (total - idle, total)
    return out


def busy_fraction(a: dict, b: dict, cpu: str) -> float | None:
    if cpu not in a or cpu not in b:
        return None
    db, dt_ = b[cpu][0] - a[cpu][0], b[cpu][1] - a[cpu][1]
    return db / dt_ if dt_ > 0 else None


def busy_cpus(sample_s: float = 0.3) -> float:
    """CPUs busy over the next `sample_s` seconds, whole machine (/proc/stat)."""
    a = cpu_busy()
    time.sleep(sample_s)
    b = cpu_busy()
    f = busy_fraction(a, b, "cpu")
    return 0.0 if f is None else f * len([k for k in a if k != "cpu"])


class QuietGate:
    """Waits before a run until the machine is quiet (few busy CPUs while everything the
    harness started is idle), at most `per_run` seconds each time and `budget` in all."""

    def __init__(self, per_run: float, budget: float, threshold: float = 0.3):
        self.per_run, self.budget, self.threshold = per_run, budget, threshold
        self.waited = 0.0

    def wait(self) -> tuple[float, float]:
        """(seconds waited, busy CPUs seen last)."""
        t0 = time.monotonic()
        busy = busy_cpus()
        while busy > self.threshold:
            spent = time.monotonic() - t0
            if spent >= self.per_run or self.waited + spent >= self.budget:
                break
            time.sleep(0.5)
            busy = busy_cpus()
        w = time.monotonic() - t0
        self.waited += w
        return round(w, 2), round(busy, 3)


def loadavg() -> str:
    try:
        with open("/proc/loadavg") as f:
            return " ".join(f.read().split()[:3])
    except OSError:
        return "?"


# --------------------------------------------------------------------------
# Processes the harness starts (and only those are ever signalled)

class Managed:
    def __init__(self, name: str, argv: list[str], logdir: Path, kind: str):
        self.name, self.argv, self.kind = name, argv, kind
        self.log_path = logdir / f"{name}.log"
        self.proc: subprocess.Popen | None = None
        self.starttime: int | None = None

    def start(self) -> None:
        logf = open(self.log_path, "wb")
        # Own session: a Ctrl-C on the terminal reaches only the harness, which then
        # ends these processes itself, by PID.
        self.proc = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL, stdout=logf,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        logf.close()
        st = read_stat(self.proc.pid)
        self.starttime = st[2] if st else None
        COMMANDS.append(f"[{self.name}] " + shlex.join(self.argv))

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_tail(self, n: int = 15) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    def stop(self) -> None:
        if self.proc is None:
            return
        # Descendants (NGINX workers, socat's forked children) with their start times,
        # so a PID reused meanwhile by someone else is never signalled.
        desc = {p: st[2] for p, st in tree([self.proc.pid]).items() if p != self.proc.pid}
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=1 if self.kind == "ringfwd" else 3)
            except subprocess.TimeoutExpired:
                if self.kind == "ringfwd":
                    # a second signal ends a draining ringfwd at once (UDP sessions
                    # would otherwise keep the drain open until their idle timeout)
                    self.proc.send_signal(signal.SIGTERM)
                    try:
                        self.proc.wait(timeout=2)
                    except subprocess.TimeoutExpired:
                        pass
                if self.proc.poll() is None:
                    self.proc.kill()
                    self.proc.wait(timeout=5)
        deadline = time.monotonic() + 2
        for sig in (signal.SIGTERM, signal.SIGKILL):
            left = [p for p, start in desc.items() if (st := read_stat(p)) and st[2] == start]
            if not left:
                break
            for p in left:
                try:
                    os.kill(p, sig)
                except ProcessLookupError:
                    pass
            while time.monotonic() < deadline and any(
                    (st := read_stat(p)) and st[2] == desc[p] for p in left):
                time.sleep(0.05)
            deadline = time.monotonic() + 2


COMMANDS: list[str] = []


def port_free(port: int, kind: str) -> bool:
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM if kind == "tcp" else socket.SOCK_DGRAM)
    try:
        # like the servers do: TIME_WAIT leftovers of an earlier run do not count as in use
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((LOOPBACK, port))
        return True
    except OSError:
        return False
    finally:
        s.close()


def wait_tcp(port: int, proc: Managed, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not proc.alive():
            raise RuntimeError(f"{proc.name} exited (status {proc.proc.returncode}) before "
                               f"listening on {port}:\n{proc.log_tail()}")
        try:
            with socket.create_connection((LOOPBACK, port), timeout=1):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"{proc.name} does not accept on 127.0.0.1:{port} after {timeout}s:\n"
                       f"{proc.log_tail()}")


def udp_bound(port: int) -> bool:
    want = f"0100007F:{port:04X}"
    try:
        with open("/proc/net/udp") as f:
            return any(line.split()[1] == want for line in list(f)[1:])
    except OSError:
        return False


# --------------------------------------------------------------------------
# Peers: install, configs

def find_stream_module() -> str | None:
    cands = ["/usr/lib/nginx/modules/ngx_stream_module.so",
             "/usr/lib64/nginx/modules/ngx_stream_module.so"]
    for d in ["/etc/nginx/modules-enabled"]:
        if os.path.isdir(d):
            for name in sorted(os.listdir(d)):
                try:
                    text = Path(d, name).read_text()
                except OSError:
                    continue
                for line in text.splitlines():
                    line = line.strip()
                    if line.startswith("load_module") and "stream" in line:
                        p = line.split(None, 1)[1].rstrip(";").strip()
                        cands.append(p if p.startswith("/") else os.path.join("/usr/share/nginx", p))
    for c in cands:
        if os.path.exists(c):
            return os.path.realpath(c)
    return None


def ensure_peers(needed: set[str]) -> None:
    missing = []
    if needed & set(HAPROXY_VARIANTS) and not shutil.which("haproxy"):
        missing.append("haproxy")
    if "nginx" in needed and (not shutil.which("nginx") or find_stream_module() is None):
        missing += ["nginx", "libnginx-mod-stream"]
    if "socat" in needed and not shutil.which("socat"):
        missing.append("socat")
    if not missing:
        return
    log(f"installing missing peers ({' '.join(missing)}): apt-get update -qq; apt-get install -y "
        "haproxy nginx libnginx-mod-stream socat")
    # Keep the packages' own services from starting (they would listen on port 80 etc.)
    # with a policy-rc.d, only if none exists, removed right after.
    policy = Path("/usr/sbin/policy-rc.d")
    made_policy = False
    if not policy.exists():
        policy.write_text("#!/bin/sh\n# written by ringfwd benches/compare.py during apt-get install\nexit 101\n")
        policy.chmod(0o755)
        made_policy = True
    try:
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        for argv in (["apt-get", "update", "-qq"],
                     ["apt-get", "install", "-y", "haproxy", "nginx", "libnginx-mod-stream", "socat"]):
            COMMANDS.append(shlex.join(argv))
            r = subprocess.run(argv, env=env, capture_output=True, text=True)
            if r.returncode != 0:
                raise RuntimeError(f"{shlex.join(argv)} failed ({r.returncode}):\n{r.stdout[-2000:]}\n{r.stderr[-2000:]}")
    finally:
        if made_policy:
            policy.unlink()


def nofile_limit() -> int:
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def haproxy_maxconn() -> int:
    # 2 descriptors per connection, plus pipes for splice (maxpipes = maxconn / 4, 2 each)
    return max(1000, min(20000, (nofile_limit() - 500) // 3 // 1000 * 1000))


def haproxy_cfg(layout: Layout, variant: str) -> str:
    splice = {
        "haproxy": "    # no splice: data is copied through HAProxy's buffers",
        "haproxy-splice-auto": "    option splice-auto",
        "haproxy-splice": "    option splice-request\n    option splice-response",
        "haproxy-busypoll": "    # no splice: data is copied through HAProxy's buffers",
    }[variant]
    if not layout.fwd_cpus:
        cpu_map = "    # not pinned (no cpu-map)"
    elif layout.fwd_threads == 1:
        cpu_map = f"    cpu-map 1/1 {layout.fwd_cpus[0]}"
    else:
        cpu_map = f"    cpu-map auto:1/1-{layout.fwd_threads} {','.join(map(str, layout.fwd_cpus))}"
    lines = [
        f"# HAProxy, variant {variant}, layout {layout.name}; written by benches/compare.py",
        "global",
        f"    nbthread {layout.fwd_threads}",
        cpu_map,
        f"    maxconn {haproxy_maxconn()}  # 2 descriptors each (+ splice pipes); RLIMIT_NOFILE here is {nofile_limit()}",
        "    # no 'log' line: logging off",
    ] + (["    busy-polling  # never sleep in the poller: spin, at 100% of the thread's CPU"]
         if variant == "haproxy-busypoll" else []) + [
        "",
        "defaults",
        "    mode tcp",
        f"    maxconn {haproxy_maxconn()}",
        "    timeout connect 5s",
        "    timeout client 10m",
        "    timeout server 10m",
        splice,
        "",
    ]
    for svc in TCP_SERVICES:
        lines += [
            f"frontend fe_{svc}",
            f"    bind {LOOPBACK}:{layout.port(variant, svc)}",
            f"    default_backend be_{svc}",
            f"backend be_{svc}",
            f"    server up_{svc} {LOOPBACK}:{layout.port('direct', svc)}",
            "",
        ]
    return "\n".join(lines)


def nginx_cfg(layout: Layout, module: str, logdir: Path) -> str:
    if layout.fwd_cpus:
        masks = []
        for c in layout.fwd_cpus[: layout.fwd_threads]:
            masks.append(format(1 << c, "b").zfill(max(layout.fwd_cpus) + 1))
        affinity = f"worker_cpu_affinity {' '.join(masks)};"
    else:
        affinity = "# not pinned (no worker_cpu_affinity)"
    lines = [
        f"# NGINX stream, layout {layout.name}; written by benches/compare.py",
        f"load_module {module};",
        "daemon off;",
        "master_process on;",
        f"worker_processes {layout.fwd_threads};",
        affinity,
        f"worker_rlimit_nofile {nofile_limit()};",
        f"pid {logdir}/nginx-{layout.name}.pid;",
        f"error_log {logdir}/nginx-{layout.name}-error.log warn;",
        "",
        "events {",
        f"    worker_connections {min(16384, nofile_limit() // 2)};  # counts client and upstream sides",
        "}",
        "",
        "stream {",
        "    # access_log is off by default in stream",
        "    proxy_connect_timeout 5s;",
    ]
    for svc in TCP_SERVICES:
        lines += [
            "    server {",
            f"        listen {LOOPBACK}:{layout.port('nginx', svc)} reuseport backlog=4096;",
            f"        proxy_pass {LOOPBACK}:{layout.port('direct', svc)};",
            "        proxy_timeout 10m;",
            "    }",
        ]
    lines += [
        "    server {",
        f"        listen {LOOPBACK}:{layout.port('nginx', 'udp')} udp reuseport;",
        f"        proxy_pass {LOOPBACK}:{layout.port('direct', 'udp')};",
        "        # proxy_responses left at its default (not limited): a session lives",
        "        # until proxy_timeout passes without a datagram, longer than any run",
        "        proxy_timeout 60s;",
        "    }",
        "}",
        "",
    ]
    return "\n".join(lines)


# --------------------------------------------------------------------------
# Command lines of the processes under test (also used by benches/knobs.py)

ECHO_FLAG = {"echo": "--tcp", "sink": "--tcp-sink", "source": "--tcp-source", "rr": "--tcp-rr", "udp": "--udp"}


def probe_binary(binary: Path) -> tuple[set[str], set[str]]:
    """(the `ringfwd echo` service flags, the `ringfwd bench` modes) this build has."""
    eh = sh([str(binary), "echo", "--help"]).stdout
    echo_flags = {f for f in ("--tcp", "--tcp-sink", "--tcp-source", "--tcp-rr", "--udp")
                  if f"{f} " in eh or f"{f}=" in eh or f"{f}\n" in eh}
    bh = sh([str(binary), "bench", "--help"])
    modes = set()
    if bh.returncode == 0:
        for m in ("tcp-rr", "tcp-crr", "tcp-stream", "udp-rr", "udp-stream"):
            if m in bh.stdout:
                modes.add(m)
    return echo_flags, modes


def upstream_argv(binary: Path, echo_flags: set[str], ports: dict[str, int], shards: int,
                  cpus: list[int] | None, extra: list[str] | None = None) -> list[str]:
    """`ringfwd echo` serving each service of `ports` (echo, sink, source, rr, udp -> port) that
    this build has, under `taskset` and `--cpus` when `cpus` is given."""
    argv = taskset(cpus) + [str(binary), "echo"]
    for svc in ("echo", "sink", "source", "rr"):
        f = ECHO_FLAG[svc]
        if svc in ports and f in echo_flags:
            argv += [f, f"{LOOPBACK}:{ports[svc]}"]
    if "rr" in ports and "--tcp-rr" in echo_flags:
        argv += ["--request-size", "64", "--response-size", "64"]
    if "udp" in ports and "--udp" in echo_flags:
        argv += ["--udp", f"{LOOPBACK}:{ports['udp']}"]
    argv += ["--shards", str(shards)]
    if cpus:
        argv += ["--cpus", ",".join(map(str, cpus))]
    return argv + (extra or [])


def ringfwd_argv(binary: Path, tcp: list[tuple[int, int]], udp: list[tuple[int, int]], shards: int,
                 cpus: list[int] | None, extra: list[str] | None = None) -> list[str]:
    """`ringfwd run` forwarding each (listen port, upstream port) pair on 127.0.0.1; under
    `taskset` and `--cpus` when `cpus` is given; `extra`: more flags (--config, --busy-poll)."""
    argv = taskset(cpus) + [str(binary), "run"]
    for lp, up in tcp:
        argv += ["--tcp", f"{LOOPBACK}:{lp}={LOOPBACK}:{up}"]
    for lp, up in udp:
        argv += ["--udp", f"{LOOPBACK}:{lp}={LOOPBACK}:{up}"]
    argv += ["--shards", str(shards)] + (["--cpus", ",".join(map(str, cpus))] if cpus else [])
    return argv + (extra or [])


def bench_argv(binary: Path, mode: str, port: int, args: list[str], duration: float, warmup: float,
               json_path: Path, shards: int, cpus: list[int] | None,
               extra: list[str] | None = None) -> list[str]:
    """`ringfwd bench MODE --target 127.0.0.1:PORT ARGS --json ...`, quiet, on `shards` shards,
    under `taskset` and `--cpus` when `cpus` is given."""
    argv = taskset(cpus) + [str(binary), "bench", mode, "--target", f"{LOOPBACK}:{port}"]
    argv += args
    argv += ["--duration", fmt_dur(duration), "--warmup", fmt_dur(warmup),
             "--json", str(json_path), "--quiet", "--shards", str(shards)]
    if cpus:
        argv += ["--cpus", ",".join(map(str, cpus))]
    return argv + (extra or [])


def iperf3_argv(port: int, args: list[str], duration: float, warmup: float, json_path: Path,
                cpus: list[int] | None) -> list[str]:
    """`iperf3 -c 127.0.0.1 -p PORT -t DUR -O WARM -J ARGS` under `taskset`, through this script's
    `--iperf3-client JSON` wrapper, which writes its result as `ringfwd bench --json` would (iperf3
    takes whole seconds)."""
    t, o = max(1, round(duration)), round(warmup)
    return taskset(cpus) + [sys.executable, str(Path(__file__).resolve()), "--iperf3-client", str(json_path),
                            "--", "iperf3", "-c", LOOPBACK, "-p", str(port), "-t", str(t), "-O", str(o),
                            "-J"] + list(args)


def iperf3_client(json_path: str, argv: list[str]) -> int:
    """Runs `iperf3 -c ... -J` (argv) and writes its figures as a `ringfwd bench --json` file: the
    receivers' bytes and bits/s after the omitted seconds, up (client to server) and down."""
    r = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True)
    try:
        data = json.loads(r.stdout)
    except ValueError:
        data = {}
    end = data.get("end") or {}
    err = data.get("error") or (r.stderr.strip()[-300:] if r.returncode else "")
    reverse = "-R" in argv
    fwd = end.get("sum_received") or {}
    back = end.get("sum_received_bidir_reverse") or {}
    up, down = (back, fwd) if reverse else (fwd, back)
    bps_up, bps_down = up.get("bits_per_second", 0.0), down.get("bits_per_second", 0.0)
    out = {"ok": r.returncode == 0 and not err and bps_up + bps_down > 0,
           "mode": "tcp-stream", "generator": "iperf3", "command": shlex.join(argv),
           "rate": None, "latency_us": None, "elapsed_s": fwd.get("seconds"),
           "bits_per_second": {"total": bps_up + bps_down, "up": bps_up, "down": bps_down},
           "bytes_sent": up.get("bytes", 0), "bytes_received": down.get("bytes", 0),
           "errors": {}, "failure": err or None}
    Path(json_path).write_text(json.dumps(out, indent=1))
    return 0 if out["ok"] else 1


def wait_iperf3(port: int, proc: "Managed", timeout: float = 15) -> None:
    """Until `iperf3 -s` listens; without connecting, which would use up its one test."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not port_free(port, "tcp"):
            return
        if not proc.alive():
            raise RuntimeError(f"{proc.name} exited:\n{proc.log_tail()}")
        time.sleep(0.05)
    raise RuntimeError(f"{proc.name} not listening on {port} after {timeout:.0f}s")


# --------------------------------------------------------------------------
# One measured bench run

def measure_bench(argv: list[str], json_path: Path, roots: list[int], up_root: list[int],
                  warm: float, dur: float, metric: str, *, target: str = "",
                  rel_json: Path | None = None, on_popen=None, on_start=None) -> dict:
    """Run one `ringfwd bench ... --json json_path` (argv) to its end and measure it.

    While it runs, samples the CPU time of the process trees `roots` (the forwarder; empty for
    direct), of the bench itself and of `up_root` (the upstream), the whole CPUs' busy time and
    the forwarder's memory, three times inside the measured window [warmup, warmup + duration]
    from the bench's start. Returns one row: the bench's figures from its JSON, the forwarder's
    CPU rate, cost per op or per GB, peak RSS / PSS, generator and upstream CPU, ok/error.
    `metric` is "rate" (cost per op) or "bps" (cost per GB). `on_popen(p)` is called with the
    bench's Popen (and None when it has ended), `on_start(p)` right after it started."""
    load_before = loadavg()
    clear_refs(roots)
    cpu_all0 = cpu_seconds(roots)
    err_f = tempfile.TemporaryFile()
    out_f = tempfile.TemporaryFile()
    t0 = time.monotonic()
    p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out_f, stderr=err_f)
    if on_popen is not None:
        on_popen(p)
    if on_start is not None:
        on_start(p)
    # The measured window is [t0 + warmup, t0 + warmup + duration] from the bench's start;
    # sample a little inside it and use rates, so a late start of the bench's own window
    # (connection setup) does not matter.
    edge = min(0.1, dur / 10)
    marks = [t0 + warm + edge, t0 + warm + dur / 2, t0 + warm + dur - edge]
    samples = []  # (time, fwd cpu, gen cpu, up cpu, /proc/stat, hwm, pss, nproc)
    for mark in marks:
        delay = mark - time.monotonic()
        if delay > 0:
            try:
                p.wait(timeout=delay)
            except subprocess.TimeoutExpired:
                pass
        if p.poll() is not None:
            break
        table = proc_table()
        hwm, pss, nproc = memory(roots) if roots else (0, 0, 0)
        samples.append((time.monotonic(), cpu_seconds(roots, table), cpu_seconds([p.pid], table),
                        cpu_seconds(up_root, table), cpu_busy(), hwm, pss, nproc,
                        cpu_seconds_ticks(roots, table)))
    limit = warm + dur + 60
    timed_out = False
    try:
        p.wait(timeout=max(1.0, t0 + limit - time.monotonic()))
    except subprocess.TimeoutExpired:
        timed_out = True
        p.kill()
        p.wait()
    if on_popen is not None:
        on_popen(None)
    wall = time.monotonic() - t0
    cpu_all1 = cpu_seconds(roots)
    hwm_end, pss_end, _ = memory(roots) if roots else (0, 0, 0)
    err_f.seek(0)
    stderr = err_f.read().decode(errors="replace")
    out_f.seek(0)
    stdout = out_f.read().decode(errors="replace")
    err_f.close()
    out_f.close()

    row = {"load_before": load_before, "wall_s": round(wall, 2),
           "json": str(rel_json if rel_json is not None else json_path), "exit": p.returncode}
    data = None
    if json_path.exists():
        try:
            data = json.loads(json_path.read_text())
        except (OSError, ValueError) as e:
            row["error"] = f"bad --json output: {e}"
    errors = []
    if timed_out:
        errors.append(f"bench still running after {limit:.0f}s: killed")
    why = (data or {}).get("failure") or (data or {}).get("first_error")
    errs = {k: v for k, v in ((data or {}).get("errors") or {}).items() if v}
    if p.returncode != 0:
        if why:  # the bench said why in its JSON: that, not the same words again from stderr
            errors.append(f"bench exit {p.returncode}: {why}" + (f" (errors {errs})" if errs else ""))
        else:
            tail = " | ".join(l for l in stderr.strip().splitlines()[-4:] if l.strip()) or stdout.strip()[-300:]
            errors.append(f"bench exit {p.returncode}: {tail[:600]}")
    if data is None and "error" not in row:
        errors.append("no --json written")
    if data is not None and not data.get("ok", False) and p.returncode == 0:
        errors.append("bench exited 0 but reported ok=false" + (f": {why}" if why else "")
                      + (f" (errors {errs})" if errs else ""))
    if "error" in row:
        errors.insert(0, row["error"])
    row["error"] = "; ".join(errors)
    row["ok"] = not errors

    if data is not None:
        lat = data.get("latency_us") or {}
        bps = data.get("bits_per_second") or {}
        udp = data.get("udp") or {}
        errs = data.get("errors") or {}
        row.update({
            "rate": data.get("rate"), "offered_rate": data.get("offered_rate"),
            "bits_per_second": bps.get("total"), "bps_up": bps.get("up"), "bps_down": bps.get("down"),
            "p50": lat.get("p50"), "p90": lat.get("p90"), "p99": lat.get("p99"),
            "p99_9": lat.get("p99_9"), "max": lat.get("max"),
            "elapsed_s": data.get("elapsed_s"), "ops": data.get("ops"),
            "bytes_sent": data.get("bytes_sent"), "bytes_received": data.get("bytes_received"),
            "udp_lost": udp.get("lost"), "loss_ratio": udp.get("loss_ratio"),
            "errors": " ".join(f"{k}={v}" for k, v in errs.items() if v),
        })
    # forwarder cost over the measured window
    if roots and len(samples) >= 2:
        a, b = samples[0], samples[-1]
        span = b[0] - a[0]
        fwd_rate = (b[1] - a[1]) / span  # CPU-seconds per second
        row["fwd_cpu_util"] = round(fwd_rate, 4)
        # the same from utime+stime ticks alone, for comparison (undercounts short-lived runs)
        row["fwd_cpu_util_ticks"] = round((b[8] - a[8]) / span, 4)
        elapsed = (data or {}).get("elapsed_s") or dur
        row["cpu_s"] = round(fwd_rate * elapsed, 4)
        rate = row.get("rate") or 0
        if metric == "rate" and rate > 0:
            row["cpu_us_per_op"] = round(fwd_rate / rate * 1e6, 3)
        bits = row.get("bits_per_second") or 0
        if bits > 0:
            row["cpu_s_per_gb"] = round(fwd_rate / (bits / 8 / 1e9), 4)
        row["rss_peak_kib"] = max([s[5] for s in samples] + ([hwm_end] if target != "socat" else []))
        row["pss_kib"] = max(s[6] for s in samples)
        row["fwd_procs"] = max(s[7] for s in samples)
    elif roots:
        row["cpu_s_whole_run"] = round(cpu_all1 - cpu_all0, 3)
    if len(samples) >= 2:
        a, b = samples[0], samples[-1]
        span = b[0] - a[0]
        row["gen_cpu_util"] = round((b[2] - a[2]) / span, 4)
        row["up_cpu_util"] = round((b[3] - a[3]) / span, 4)
        for cpu in sorted(k for k in a[4] if k != "cpu"):
            f = busy_fraction(a[4], b[4], cpu)
            row[f"{cpu}_busy"] = None if f is None else round(f, 4)
        tot = busy_fraction(a[4], b[4], "cpu")
        if tot is not None:
            ncpu = len([k for k in a[4] if k != "cpu"])
            known = (b[1] - a[1] + b[2] - a[2] + b[3] - a[3]) / span
            row["other_cpu_util"] = round(tot * ncpu - known, 4)
    if roots:
        row["cpu_s_whole_run"] = round(cpu_all1 - cpu_all0, 3)
    return row


# --------------------------------------------------------------------------
# Memory of idle connections

IDLE_NAME = "tcp-idle"  # how --only selects it
IDLE_CONNS = 9900  # full run; see idle_note()
IDLE_CONNS_QUICK = 2000
IDLE_TARGETS = ["ringfwd", "haproxy", "nginx"]
IDLE_PORT = {"ringfwd": 23000, "haproxy": 23010, "nginx": 23020}


def idle_note(n: int) -> str:
    return (f"{n:,} connections, not 10,000: a proxied connection holds two descriptors in the "
            f"forwarder (client and upstream side), the hard RLIMIT_NOFILE here is {resource.getrlimit(resource.RLIMIT_NOFILE)[1]} "
            "and root cannot raise it (no CAP_SYS_RESOURCE), so 10,000 connections would need more "
            "descriptors than one process may have; "
            f"{n:,} × 2 plus listeners, rings and logs fits.")


def haproxy_idle_cfg(port: int, up_port: int, cpu: int, n: int) -> str:
    return "\n".join([
        "# HAProxy for the idle-connection memory test; written by benches/compare.py",
        "global",
        "    nbthread 1",
        f"    cpu-map 1/1 {cpu}",
        f"    maxconn {n + 50}  # 2 descriptors each, no splice (no pipes)",
        "",
        "defaults",
        "    mode tcp",
        f"    maxconn {n + 50}",
        "    timeout connect 5s",
        "    timeout client 10m",
        "    timeout server 10m",
        "",
        "frontend fe_idle",
        f"    bind {LOOPBACK}:{port}",
        "    default_backend be_idle",
        "backend be_idle",
        f"    server up_idle {LOOPBACK}:{up_port}",
        "",
    ])


def nginx_idle_cfg(port: int, up_port: int, cpu: int, n: int, module: str, logdir: Path) -> str:
    return "\n".join([
        "# NGINX stream for the idle-connection memory test; written by benches/compare.py",
        f"load_module {module};",
        "daemon off;",
        "master_process on;",
        "worker_processes 1;",
        f"worker_cpu_affinity {format(1 << cpu, 'b')};",
        f"worker_rlimit_nofile {nofile_limit()};",
        f"pid {logdir}/nginx-idle.pid;",
        f"error_log {logdir}/nginx-idle-error.log warn;",
        "",
        "events {",
        f"    worker_connections {2 * n + 64};  # counts the client and the upstream side of each",
        "}",
        "",
        "stream {",
        "    proxy_connect_timeout 5s;",
        "    server {",
        f"        listen {LOOPBACK}:{port} reuseport backlog=4096;",
        f"        proxy_pass {LOOPBACK}:{up_port};",
        "        proxy_timeout 10m;",
        "    }",
        "}",
        "",
    ])


def established(local_port: int) -> int:
    """TCP sockets in ESTABLISHED with this local port (the upstream's accepted sockets)."""
    r = sh(["ss", "-Htn", "state", "established", f"( sport = :{local_port} )"])
    return len([l for l in r.stdout.splitlines() if l.strip()])


def current_memory(roots: list[int]) -> tuple[int, int]:
    """(sum of VmRSS, sum of Pss), KiB, over the trees."""
    pids = tree(roots)
    return (sum(kib_field(f"/proc/{p}/status", "VmRSS:") for p in pids),
            sum(kib_field(f"/proc/{p}/smaps_rollup", "Pss:") for p in pids))


def open_idle(port: int, n: int, timeout: float = 60) -> tuple[list[socket.socket], int, float]:
    """Open n TCP connections to 127.0.0.1:port, at most 256 connecting at once (the listen
    backlog is not what is measured). Returns (sockets, failed, seconds)."""
    import select
    t0 = time.monotonic()
    socks: list[socket.socket] = []
    pending: dict[int, socket.socket] = {}
    failed = 0
    ep = select.epoll()
    deadline = t0 + timeout

    def drain(limit: int) -> None:
        nonlocal failed
        while len(pending) > limit and time.monotonic() < deadline:
            for fd, _ in ep.poll(0.5):
                sk = pending.pop(fd, None)
                if sk is None:
                    continue
                ep.unregister(fd)
                if sk.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) != 0:
                    failed += 1
                    sk.close()
                else:
                    socks.append(sk)
    try:
        for _ in range(n):
            sk = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sk.setblocking(False)
            try:
                sk.connect((LOOPBACK, port))
            except BlockingIOError:
                pass
            except OSError:
                failed += 1
                sk.close()
                continue
            pending[sk.fileno()] = sk
            ep.register(sk.fileno(), select.EPOLLOUT)
            if len(pending) >= 256:
                drain(64)
        drain(0)
    finally:
        for sk in pending.values():
            sk.close()
            failed += 1
        ep.close()
    return socks, failed, time.monotonic() - t0


def wait_established(port: int, want: int, timeout: float, at_most: bool = False) -> int:
    deadline = time.monotonic() + timeout
    while True:
        n = established(port)
        if (n <= want if at_most else n >= want) or time.monotonic() > deadline:
            return n
        time.sleep(0.25)


def slab_kib() -> int:
    return kib_field("/proc/meminfo", "Slab:")


# --------------------------------------------------------------------------
# The harness

@dataclass
class Run:
    workload: Workload
    layout: Layout
    target: str
    rep: int


class Harness:
    def __init__(self, args, outdir: Path, binary: Path, targets: list[str],
                 workloads: list[tuple[Workload, str]], settings: dict):
        self.args, self.out, self.bin = args, outdir, binary
        self.targets, self.workloads, self.settings = targets, workloads, settings
        self.layouts = make_layouts(os.cpu_count() or 1)
        self.procs: list[Managed] = []
        self.fwd: dict[str, list[Managed]] = {}
        self.upstream: Managed | None = None
        self.rows: list[dict] = []
        self.configs: dict[str, str] = {}  # relative path -> text, for setup.md
        self.echo_flags = self.bench_modes = None
        self.missing: list[str] = []
        self.preflight: list[str] = []
        (outdir / "logs").mkdir(parents=True, exist_ok=True)
        (outdir / "configs").mkdir(parents=True, exist_ok=True)
        (outdir / "runs").mkdir(parents=True, exist_ok=True)
        self.csv_path = outdir / "raw.csv"
        self.idle_rows: list[dict] = []
        self.idle_conns = IDLE_CONNS_QUICK if getattr(args, "quick", False) else IDLE_CONNS
        self.idle_targets: list[str] = []  # set by main when the idle workload is selected

    # ---- capabilities of the binary under test

    def probe(self) -> None:
        self.echo_flags, self.bench_modes = probe_binary(self.bin)
        need = {"echo": "--tcp", "sink": "--tcp-sink", "source": "--tcp-source", "rr": "--tcp-rr",
                "udp": "--udp"}
        keep = []
        for wl, lay in self.workloads:
            if wl.gen == "iperf3":
                if shutil.which("iperf3"):
                    keep.append((wl, lay))
                else:
                    self.missing.append(f"{wl.name} ({lay}): iperf3 is not installed (apt-get install iperf3)")
            elif wl.mode not in self.bench_modes:
                self.missing.append(f"{wl.name} ({lay}): `ringfwd bench {wl.mode}` does not exist in this build")
            elif need[wl.service] not in self.echo_flags:
                self.missing.append(f"{wl.name} ({lay}): `ringfwd echo {need[wl.service]}` does not exist in this build")
            else:
                keep.append((wl, lay))
        for m in self.missing:
            log(f"SKIPPED {m}")
        self.workloads = keep

    # ---- starting everything of one layout

    def layout_targets(self, lay: Layout) -> list[str]:
        """Every target some workload of this layout runs against."""
        want = set()
        for wl, l in self.workloads:
            if l == lay.name:
                want.update(workload_targets(wl, self.targets))
        return [t for t in TARGETS if t in want]

    def start_layout(self, lay: Layout, only: list[str] | None = None) -> None:
        wanted = self.layout_targets(lay) if only is None else only
        logs = self.out / "logs"
        # every port this layout uses must be free before anything starts
        ports = []
        for t in wanted:
            for svc in TCP_SERVICES:
                ports.append((lay.port(t, svc), "tcp", t))
            if t in UDP_CAPABLE:
                ports.append((lay.port(t, "udp"), "udp", t))
        busy = [f"{k} 127.0.0.1:{p} ({t})" for p, k, t in ports if not port_free(p, k)]
        if busy:
            raise RuntimeError("ports in use, not starting: " + ", ".join(busy) +
                               " (see `ss -ltnup`; the harness never touches processes it did not start)")

        # the upstream
        argv = upstream_argv(self.bin, self.echo_flags,
                             {svc: lay.port("direct", svc) for svc in list(TCP_SERVICES) + ["udp"]},
                             lay.up_shards, lay.up_cpus)
        up = Managed(f"upstream-{lay.name}", argv, logs, "ringfwd")
        self._start(up)
        self.upstream = up
        wait_tcp(lay.port("direct", "echo"), up)
        self.iperf3_server = None
        if any(wl.gen == "iperf3" for wl, l in self.workloads if l == lay.name):
            # iperf3 -s serves one test at a time, which is how the runs come
            argv = taskset(lay.up_cpus) + ["iperf3", "-s", "-B", LOOPBACK, "-p", str(lay.port("direct", "iperf3"))]
            srv = Managed(f"iperf3-server-{lay.name}", argv, logs, "iperf3")
            self._start(srv)
            self.iperf3_server = srv
            wait_iperf3(lay.port("direct", "iperf3"), srv)

        self.fwd = {"direct": []}
        for t in wanted:
            if t != "direct" and t not in ON_DEMAND:
                self.start_target(t, lay)
        time.sleep(0.3)
        self.check_forwarding(lay, [t for t in wanted if t not in ON_DEMAND])
        # the on-demand targets once now, so a broken config stops the run before any measurement
        for t in wanted:
            if t in ON_DEMAND:
                self.start_target(t, lay)
                time.sleep(0.2)
                self.check_forwarding(lay, [t])
                self.stop_target(t)

    def start_target(self, t: str, lay: Layout) -> None:
        logs = self.out / "logs"
        ts = taskset(lay.fwd_cpus)
        if t in ("ringfwd", "ringfwd-busypoll"):
            argv = ringfwd_argv(self.bin, [(lay.port(t, svc), lay.port("direct", svc)) for svc in TCP_SERVICES],
                                [(lay.port(t, "udp"), lay.port("direct", "udp"))],
                                lay.fwd_threads, lay.fwd_cpus,
                                ["--busy-poll", BUSY_POLL] if t == "ringfwd-busypoll" else [])
            self._start_fwd(t, [Managed(f"{t}-{lay.name}", argv, logs, "ringfwd")], lay)
        elif t in HAPROXY_ALL:
            rel = f"configs/{t}-{lay.name}.cfg"
            text = haproxy_cfg(lay, t)
            (self.out / rel).write_text(text)
            self.configs[rel] = text
            r = sh(["haproxy", "-c", "-f", str(self.out / rel)])
            if r.returncode != 0:
                raise RuntimeError(f"haproxy -c -f {rel} failed:\n{r.stdout}{r.stderr}")
            argv = ts + ["haproxy", "-db", "-f", str(self.out / rel)]
            self._start_fwd(t, [Managed(f"{t}-{lay.name}", argv, logs, "haproxy")], lay)
        elif t == "nginx":
            module = find_stream_module()
            if module is None:
                raise RuntimeError("the NGINX stream module is not installed (libnginx-mod-stream)")
            rel = f"configs/nginx-{lay.name}.conf"
            text = nginx_cfg(lay, module, logs)
            (self.out / rel).write_text(text)
            self.configs[rel] = text
            prefix = str(self.out / "logs") + "/"
            base = ["nginx", "-p", prefix, "-e", str(logs / f"nginx-{lay.name}-error.log"),
                    "-c", str(self.out / rel)]
            r = sh(base + ["-t"])
            if r.returncode != 0:
                raise RuntimeError(f"nginx -t failed for {rel}:\n{r.stdout}{r.stderr}")
            self._start_fwd("nginx", [Managed(f"nginx-{lay.name}", ts + base, logs, "nginx")], lay)
        elif t == "socat":
            procs = []
            for svc in TCP_SERVICES:
                argv = ts + ["socat", f"TCP-LISTEN:{lay.port('socat', svc)},bind={LOOPBACK},fork,reuseaddr,backlog=4096",
                             f"TCP:{LOOPBACK}:{lay.port('direct', svc)}"]
                procs.append(Managed(f"socat-{svc}-{lay.name}", argv, logs, "socat"))
            # -T: a UDP child (one per client address) ends after 20 s without a datagram;
            # within a run every flow is busy, so it never fires there
            argv = ts + ["socat", "-T", "20", f"UDP-LISTEN:{lay.port('socat', 'udp')},bind={LOOPBACK},fork,reuseaddr",
                         f"UDP:{LOOPBACK}:{lay.port('direct', 'udp')}"]
            procs.append(Managed(f"socat-udp-{lay.name}", argv, logs, "socat"))
            self._start_fwd("socat", procs, lay)
        else:
            raise RuntimeError(f"unknown target {t}")

    def stop_target(self, t: str) -> None:
        for m in self.fwd.pop(t, []):
            try:
                m.stop()
            finally:
                if m in self.procs:
                    self.procs.remove(m)

    def _start(self, m: Managed) -> None:
        m.start()
        self.procs.append(m)

    def _start_fwd(self, target: str, procs: list[Managed], lay: Layout) -> None:
        for m in procs:
            self._start(m)
        self.fwd[target] = procs
        wait_tcp(lay.port(target, "echo"), procs[0])
        for m in procs:
            if not m.alive():
                raise RuntimeError(f"{m.name} exited:\n{m.log_tail()}")

    def check_forwarding(self, lay: Layout, targets: list[str]) -> None:
        """A verified byte exchange through every target before anything is measured."""
        for t in targets:
            msgs = []
            payload = f"compare.py preflight {t} {lay.name}\n".encode() * 50
            try:
                with socket.create_connection((LOOPBACK, lay.port(t, "echo")), timeout=3) as s:
                    s.sendall(payload)
                    got = b""
                    while len(got) < len(payload):
                        chunk = s.recv(65536)
                        if not chunk:
                            break
                        got += chunk
                    if got != payload:
                        raise RuntimeError(f"tcp echo through {t}: sent {len(payload)} B, got {len(got)} B back"
                                           + ("" if payload.startswith(got) else " (different bytes)"))
                msgs.append("tcp echo ok")
                if "--tcp-sink" in self.echo_flags:
                    with socket.create_connection((LOOPBACK, lay.port(t, "sink")), timeout=3) as s:
                        s.sendall(b"x" * (1 << 20))
                    msgs.append("sink ok")
                if "--tcp-source" in self.echo_flags:
                    with socket.create_connection((LOOPBACK, lay.port(t, "source")), timeout=3) as s:
                        got = 0
                        while got < (1 << 20):
                            chunk = s.recv(65536)
                            if not chunk:
                                raise RuntimeError(f"tcp source through {t}: EOF after {got} B")
                            got += len(chunk)
                    msgs.append("source ok")
                if "--tcp-rr" in self.echo_flags:
                    with socket.create_connection((LOOPBACK, lay.port(t, "rr")), timeout=3) as s:
                        s.sendall(b"q" * 64)
                        got = b""
                        while len(got) < 64:
                            chunk = s.recv(64 - len(got))
                            if not chunk:
                                raise RuntimeError(f"tcp rr through {t}: EOF after {len(got)} B of a 64 B response")
                            got += chunk
                    msgs.append("rr ok")
                if t in UDP_CAPABLE and "--udp" in self.echo_flags:
                    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
                        u.settimeout(1)
                        u.connect((LOOPBACK, lay.port(t, "udp")))
                        dgram = f"compare.py udp preflight {t}".encode()
                        for attempt in range(3):
                            u.send(dgram)
                            try:
                                if u.recv(2048) == dgram:
                                    break
                            except (socket.timeout, ConnectionRefusedError):
                                continue
                        else:
                            raise RuntimeError(f"udp echo through {t}: no answer in 3 tries")
                    msgs.append("udp echo ok")
            except OSError as e:
                raise RuntimeError(f"preflight through {t} ({lay.name}) failed: {e}") from e
            line = f"{lay.name}/{t}: " + ", ".join(msgs)
            self.preflight.append(line)
            log(f"preflight {line}")

    def stop_all(self) -> None:
        for m in reversed(self.procs):
            try:
                m.stop()
            except Exception as e:  # keep ending the others
                log(f"warning: stopping {m.name}: {e}")
        self.procs = []
        self.fwd = {}
        self.upstream = None

    # ---- one measured run

    def bench_argv(self, wl: Workload, lay: Layout, target: str, json_path: Path) -> list[str]:
        if wl.gen == "iperf3":
            return iperf3_argv(lay.port(target, wl.service), wl.args, self.settings["duration"],
                               self.settings["warmup"], json_path, lay.gen_cpus)
        return bench_argv(self.bin, wl.mode, lay.port(target, wl.service), wl.args,
                          self.settings["duration"], self.settings["warmup"], json_path,
                          lay.gen_shards, lay.gen_cpus, list(wl.gen_extra))

    def measure(self, run: Run) -> dict:
        wl, lay, target = run.workload, run.layout, run.target
        rel_json = Path("runs") / lay.name / wl.name / f"{target}-r{run.rep}.json"
        json_path = self.out / rel_json
        json_path.parent.mkdir(parents=True, exist_ok=True)
        if json_path.exists():
            json_path.unlink()
        argv = self.bench_argv(wl, lay, target, json_path)
        COMMANDS.append(f"[bench {wl.name} {lay.name} {target} rep {run.rep}] " + shlex.join(argv))
        roots = [m.pid for m in self.fwd.get(target, [])]
        up_root = [self.upstream.pid] if self.upstream else []
        if wl.gen == "iperf3" and getattr(self, "iperf3_server", None) is not None:
            up_root = [self.iperf3_server.pid]
        if self.upstream is None or not self.upstream.alive():
            raise RuntimeError(f"the upstream is no longer running:\n{self.upstream.log_tail() if self.upstream else ''}")
        dead = [m for m in self.fwd.get(target, []) if not m.alive()]
        if dead:
            # recorded as failed, never skipped silently; the other targets go on
            m = dead[0]
            tail = " | ".join(m.log_tail(4).splitlines())
            return {"workload": wl.name, "target": target, "rep": run.rep, "pinning": lay.name,
                    "mode": wl.mode, "ok": False, "json": "",
                    "error": f"{m.name} is no longer running (exit status {m.proc.returncode}): {tail}"[:800]}
        warm, dur = self.settings["warmup"], self.settings["duration"]
        row = {"workload": wl.name, "target": target, "rep": run.rep, "pinning": lay.name,
               "mode": wl.mode}
        row.update(measure_bench(argv, json_path, roots, up_root, warm, dur, wl.metric,
                                 target=target, rel_json=rel_json,
                                 on_popen=lambda p: setattr(self, "bench_proc", p)))
        return row

    # ---- memory of idle connections

    def idle_memory(self, lay: Layout) -> None:
        """For each forwarder: a dedicated instance (1 thread / worker / shard on the layout's
        forwarder CPU, sized for the connections), its RSS and PSS, then n idle connections
        through it (connected end to end, no byte sent), RSS and PSS again, then closed."""
        n = self.idle_conns
        up_port = lay.port("direct", "echo")
        cpu = (lay.fwd_cpus or [0])[0]
        logs = self.out / "logs"
        log(f"idle memory: {n:,} idle connections through each of {', '.join(self.idle_targets)}; "
            + idle_note(n))
        if lay.gen_cpus:
            os.sched_setaffinity(0, set(lay.gen_cpus))
        for t in self.idle_targets:
            row = {"target": t, "connections": n, "pinning": lay.name}
            port = IDLE_PORT[t]
            procs: list[Managed] = []
            socks: list[socket.socket] = []
            try:
                if not port_free(port, "tcp"):
                    raise RuntimeError(f"port 127.0.0.1:{port} is in use")
                if established(up_port):
                    raise RuntimeError(f"{established(up_port)} connections to the upstream are still open")
                ts = taskset([cpu])
                if t == "ringfwd":
                    argv = ringfwd_argv(self.bin, [(port, up_port)], [], 1, [cpu])
                    procs = [Managed("ringfwd-idle", argv, logs, "ringfwd")]
                elif t == "haproxy":
                    rel = "configs/haproxy-idle.cfg"
                    text = haproxy_idle_cfg(port, up_port, cpu, n)
                    (self.out / rel).write_text(text)
                    self.configs[rel] = text
                    r = sh(["haproxy", "-c", "-f", str(self.out / rel)])
                    if r.returncode != 0:
                        raise RuntimeError(f"haproxy -c -f {rel} failed:\n{r.stdout}{r.stderr}")
                    procs = [Managed("haproxy-idle", ts + ["haproxy", "-db", "-f", str(self.out / rel)], logs, "haproxy")]
                elif t == "nginx":
                    module = find_stream_module()
                    if module is None:
                        raise RuntimeError("the NGINX stream module is not installed")
                    rel = "configs/nginx-idle.conf"
                    text = nginx_idle_cfg(port, up_port, cpu, n, module, logs)
                    (self.out / rel).write_text(text)
                    self.configs[rel] = text
                    base = ["nginx", "-p", str(logs) + "/", "-e", str(logs / "nginx-idle-error.log"),
                            "-c", str(self.out / rel)]
                    r = sh(base + ["-t"])
                    if r.returncode != 0:
                        raise RuntimeError(f"nginx -t failed for {rel}:\n{r.stdout}{r.stderr}")
                    procs = [Managed("nginx-idle", ts + base, logs, "nginx")]
                for m in procs:
                    self._start(m)
                wait_tcp(port, procs[0])
                roots = [m.pid for m in procs]
                wait_established(up_port, 0, 5, at_most=True)  # wait_tcp's own connection is gone
                time.sleep(0.5)
                row["rss_before_kib"], row["pss_before_kib"] = current_memory(roots)
                slab0 = slab_kib()
                socks, failed, secs = open_idle(port, n)
                row["open_failed"], row["open_s"] = failed, round(secs, 2)
                row["upstream_established"] = wait_established(up_port, len(socks), 60)
                time.sleep(1.0)
                row["rss_after_kib"], row["pss_after_kib"] = current_memory(roots)
                row["slab_delta_kib"] = slab_kib() - slab0
                hwm, _, nproc = memory(roots)
                row["rss_peak_kib"], row["procs"] = hwm, nproc
                k = row["upstream_established"]
                if k:
                    row["rss_per_conn_b"] = round((row["rss_after_kib"] - row["rss_before_kib"]) * 1024 / k)
                    row["pss_per_conn_b"] = round((row["pss_after_kib"] - row["pss_before_kib"]) * 1024 / k)
                    row["slab_per_conn_b"] = round(row["slab_delta_kib"] * 1024 / k)
                for sk in socks:
                    sk.close()
                socks = []
                row["left_after_close"] = wait_established(up_port, 0, 30, at_most=True)
                time.sleep(0.5)
                row["rss_closed_kib"], row["pss_closed_kib"] = current_memory(roots)
                dead = [m for m in procs if not m.alive()]
                row["ok"] = not dead and k >= n and failed == 0
                row["error"] = "" if row["ok"] else (
                    f"{dead[0].name} exited: {dead[0].log_tail(3)}" if dead else
                    f"{k} of {n} reached the upstream, {failed} connects failed")
            except Exception as e:  # recorded, the others go on
                row["ok"], row["error"] = False, str(e)[:600]
            finally:
                for sk in socks:
                    sk.close()
                for m in procs:
                    try:
                        m.stop()
                    finally:
                        if m in self.procs:
                            self.procs.remove(m)
            self.idle_rows.append(row)
            per = (f"RSS +{row.get('rss_per_conn_b', 0):,} B/conn, PSS +{row.get('pss_per_conn_b', 0):,} B/conn, "
                   f"opened in {row.get('open_s', 0)} s") if row.get("rss_per_conn_b") is not None else ""
            log(f"idle memory {t:8s} {n:,} connections: {per} " + ("ok" if row["ok"] else f"FAILED: {row['error']}"))
            wait_established(up_port, 0, 10, at_most=True)
        with open(self.out / "idle.csv", "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=IDLE_FIELDS, extrasaction="ignore")
            w.writeheader()
            for r in self.idle_rows:
                w.writerow(r)

    # ---- the schedule

    def plan(self) -> list[Run]:
        runs = []
        for lname in ("pinned", "unpinned"):
            lay = self.layouts[lname]
            for wl, l in self.workloads:
                if l != lname:
                    continue
                targets = workload_targets(wl, self.targets)
                for rep in range(1, self.settings["reps"] + 1):
                    # rotate the order each repetition so no target always runs first
                    k = (rep - 1) % len(targets)
                    for t in targets[k:] + targets[:k]:
                        runs.append(Run(wl, lay, t, rep))
        return runs

    def execute(self) -> None:
        runs = self.plan()
        per = self.settings["duration"] + self.settings["warmup"] + 0.6
        log(f"{len(runs)} runs of {fmt_dur(self.settings['warmup'])} warmup + "
            f"{fmt_dur(self.settings['duration'])} measured: about {len(runs) * per / 60:.1f} minutes")
        current = None
        fields = CSV_FIELDS
        with open(self.csv_path, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
            w.writeheader()
            for i, run in enumerate(runs, 1):
                if current != run.layout.name:
                    if current == "pinned" and self.idle_targets and not self.idle_rows:
                        self.idle_memory(self.layouts["pinned"])
                    self.stop_all()
                    time.sleep(0.5)
                    current = run.layout.name
                    lay = run.layout
                    log(f"layout {lay.name}: {lay.note}")
                    # the harness waits and samples on the generator's CPUs
                    if lay.gen_cpus:
                        os.sched_setaffinity(0, set(lay.gen_cpus))
                    else:
                        os.sched_setaffinity(0, set(range(os.cpu_count() or 1)))
                    self.start_layout(lay)
                if run.target in ON_DEMAND:
                    self.start_target(run.target, run.layout)
                    time.sleep(0.3)
                self.settle(run)
                try:
                    row = self.measure(run)
                finally:
                    if run.target in ON_DEMAND:
                        self.stop_target(run.target)
                self.rows.append(row)
                w.writerow(row)
                f.flush()
                log(f"[{i:3d}/{len(runs)}] {run.workload.name:18s} {run.layout.name:8s} rep {run.rep} "
                    f"{run.target:20s} {describe_row(row, run.workload)}")
        if self.idle_targets and not self.idle_rows:
            if current != "pinned":
                self.stop_all()
                time.sleep(0.5)
                self.start_layout(self.layouts["pinned"])
            self.idle_memory(self.layouts["pinned"])
        self.stop_all()

    def settle(self, run: Run) -> None:
        """Before a run: the target's forked children of the last run are gone (socat)."""
        if run.target != "socat":
            time.sleep(0.2)
            return
        roots = [m.pid for m in self.fwd.get("socat", [])]
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            t = tree(roots)
            # TCP children end with their connections; UDP children linger up to -T 20 s
            udp_root = [m.pid for m in self.fwd["socat"] if m.name.startswith("socat-udp")]
            tcp_children = [p for p, st in t.items() if p not in roots and st[0] not in udp_root]
            if not tcp_children:
                break
            time.sleep(0.1)
        time.sleep(0.2)


CSV_FIELDS = [
    "workload", "target", "rep", "pinning", "rate", "offered_rate", "bits_per_second",
    "p50", "p90", "p99", "p99_9", "max", "cpu_s", "cpu_us_per_op", "cpu_s_per_gb",
    "rss_peak_kib", "pss_kib", "ok", "error",
    # more context
    "mode", "elapsed_s", "ops", "bps_up", "bps_down", "bytes_sent", "bytes_received",
    "udp_lost", "loss_ratio", "errors", "fwd_cpu_util", "fwd_cpu_util_ticks", "cpu_s_whole_run", "fwd_procs",
    "gen_cpu_util", "up_cpu_util", "cpu0_busy", "cpu1_busy", "other_cpu_util",
    "load_before", "wall_s", "exit", "json",
]


IDLE_FIELDS = ["target", "connections", "pinning", "rss_before_kib", "rss_after_kib", "pss_before_kib",
               "pss_after_kib", "rss_per_conn_b", "pss_per_conn_b", "rss_peak_kib", "procs",
               "rss_closed_kib", "pss_closed_kib", "slab_delta_kib", "slab_per_conn_b", "open_s",
               "open_failed", "upstream_established", "left_after_close", "ok", "error"]


def describe_row(row: dict, wl: Workload) -> str:
    parts = []
    if wl.metric == "bps":
        parts.append(f"{(row.get('bits_per_second') or 0) / 1e9:.2f} Gbit/s")
    else:
        parts.append(f"{si(row.get('rate'), '/s')}")
        if wl.mode == "udp-stream":
            parts.append(f"offered {si(row.get('offered_rate'), '/s')} loss {100 * (row.get('loss_ratio') or 0):.1f}%")
        if row.get("p99") is not None:
            parts.append(f"p50 {num(row.get('p50'))}µs p99 {num(row.get('p99'))}µs")
    if row.get("fwd_cpu_util") is not None:
        parts.append(f"fwd {100 * row['fwd_cpu_util']:.0f}% CPU")
    if row.get("rss_peak_kib"):
        parts.append(f"RSS {row['rss_peak_kib'] / 1024:.1f} MiB")
    if row.get("other_cpu_util") and row["other_cpu_util"] > 0.15:
        parts.append(f"[other load {row['other_cpu_util']:.2f} CPU]")
    parts.append("ok" if row["ok"] else f"FAILED: {row['error']}")
    return "  ".join(parts)


# --------------------------------------------------------------------------
# Summary, chart, README

def med(vals):
    vals = [v for v in vals if v is not None]
    return statistics.median(vals) if vals else None


def summarise(rows: list[dict], workloads: list[tuple[Workload, str]], targets: list[str]) -> list[dict]:
    """One entry per (workload, layout): per target medians, spreads, ratios."""
    out = []
    for wl, lay in workloads:
        wrows = [r for r in rows if r["workload"] == wl.name and r["pinning"] == lay]
        if not wrows:
            continue
        per = {}
        for t in targets:
            trs = [r for r in wrows if r["target"] == t]
            if not trs:
                continue
            ok = [r for r in trs if r["ok"]]
            key = "bits_per_second" if wl.metric == "bps" else "rate"
            vals = [r.get(key) for r in ok if r.get(key) is not None]
            per[t] = {
                "n": len(trs), "n_ok": len(ok),
                "value": med(vals), "min": min(vals) if vals else None, "max": max(vals) if vals else None,
                "offered": med([r.get("offered_rate") for r in ok]),
                "loss": med([r.get("loss_ratio") for r in ok]),
                "p50": med([r.get("p50") for r in ok]), "p99": med([r.get("p99") for r in ok]),
                "p99_9": med([r.get("p99_9") for r in ok]),
                "cost": med([r.get("cpu_s_per_gb" if wl.metric == "bps" else "cpu_us_per_op") for r in ok]),
                "util": med([r.get("fwd_cpu_util") for r in ok]),
                "genup": med([(r.get("gen_cpu_util") or 0) + (r.get("up_cpu_util") or 0) for r in ok
                              if r.get("gen_cpu_util") is not None]),
                "cost_offered": med([r["fwd_cpu_util"] / r["offered_rate"] * 1e6 for r in ok
                                     if r.get("fwd_cpu_util") is not None and r.get("offered_rate")]),
                "rss": med([r.get("rss_peak_kib") for r in ok]),
                "pss": med([r.get("pss_kib") for r in ok]),
                "errors": [r["error"] for r in trs if not r["ok"]],
            }
        direct = per.get("direct", {}).get("value")
        hap = [(per[v]["value"], v) for v in HAPROXY_VARIANTS if v in per and per[v]["value"]]
        best_hap = max(hap)[1] if hap else None
        for t, s in per.items():
            s["vs_direct"] = s["value"] / direct if s["value"] and direct else None
            hv = per[best_hap]["value"] if best_hap else None
            s["vs_haproxy"] = s["value"] / hv if s["value"] and hv else None
        out.append({"workload": wl, "layout": lay, "per": per, "best_haproxy": best_hap})
    return out


def fmt_value(wl: Workload, v) -> str:
    if v is None:
        return "–"
    return f"{v / 1e9:.2f} Gbit/s" if wl.metric == "bps" else si(v, "/s")


EXTRA_WRITEUPS = [
    ("targets.md", "Each target of issue 5 against this run, and what limits the ones not met "
                   "(perf profiles and syscall counts in profile/)"),
]


def summary_md(summ: list[dict], meta: dict) -> str:
    L = [f"# Comparison summary — {meta['date']} on {meta['host']}", ""]
    L.append(f"{meta['mode_note'][0].upper()}{meta['mode_note'][1:]}. Median over {meta['reps']} repetition(s), spread is min–max of the "
             "ok runs. Latency is the generator's round trip (µs). CPU cost is the forwarder's own CPU "
             "time (exact on-CPU time of all its threads and processes from /proc, see setup.md) during "
             "the measured window: CPU-µs per operation, or CPU-seconds per GB (10^9 bytes, both directions counted) "
             "for streams; `CPU` is the share of one core it used. Peak RSS is VmHWM summed over its "
             "processes (reset with clear_refs before each run), PSS from smaps_rollup during the run. "
             "Ratios compare medians with direct (no forwarder) and with the best HAProxy variant of "
             "that workload. Setup, pinning and configs: [setup.md](setup.md); every run: "
             "[raw.csv](raw.csv); chart: [chart.svg](chart.svg).")
    L.append("")
    if meta.get("other_load"):
        L.append(meta["other_load"])
        L.append("")
    for s in summ:
        wl, lay = s["workload"], s["layout"]
        L.append(f"## {wl.name} ({lay})")
        L.append("")
        gen = (f"iperf3 -c {' '.join(wl.args)}".strip() if wl.gen == "iperf3"
               else f"ringfwd bench {wl.mode} {' '.join(wl.args)}")
        L.append(f"`{gen}` — {wl.what}. Best HAProxy variant: "
                 f"{s['best_haproxy'] or '–'}.")
        L.append("")
        unit = "Gbit/s" if wl.metric == "bps" else "ops/s"
        cost = "CPU-s/GB" if wl.metric == "bps" else "CPU-µs/op"
        hdr = ["target", f"{unit} median", "spread"]
        if wl.mode == "udp-stream":
            hdr += ["offered/s", "loss"]
        if wl.metric == "rate":
            hdr += ["p50 µs", "p99 µs"]
        hdr += [cost]
        if wl.mode == "udp-stream":
            hdr += ["CPU-µs/offered", "gen+up CPU"]
        hdr += ["CPU", "peak RSS MiB", "PSS MiB", "vs direct", "vs HAProxy", "runs ok"]
        L.append("| " + " | ".join(hdr) + " |")
        L.append("|" + "|".join(["---"] + ["---:"] * (len(hdr) - 1)) + "|")
        for t, d in s["per"].items():
            if wl.metric == "bps":
                val = f"{d['value'] / 1e9:.2f}" if d["value"] else "–"
                spread = f"{d['min'] / 1e9:.2f}–{d['max'] / 1e9:.2f}" if d["min"] is not None else "–"
            else:
                val = num(d["value"]) if d["value"] else "–"
                spread = f"{num(d['min'])}–{num(d['max'])}" if d["min"] is not None else "–"
            cells = [t, val, spread]
            if wl.mode == "udp-stream":
                cells += [num(d["offered"]), "–" if d["loss"] is None else f"{100 * d['loss']:.1f}%"]
            if wl.metric == "rate":
                cells += [num(d["p50"]), num(d["p99"])]
            cells += [num(d["cost"]) if t != "direct" else "–"]
            if wl.mode == "udp-stream":
                cells += [num(d["cost_offered"]) if t != "direct" else "–",
                          f"{100 * d['genup']:.0f}%" if d["genup"] is not None else "–"]
            cells += [
                f"{100 * d['util']:.0f}%" if d["util"] is not None and t != "direct" else "–",
                f"{d['rss'] / 1024:.1f}" if d["rss"] and t != "direct" else "–",
                f"{d['pss'] / 1024:.1f}" if d["pss"] and t != "direct" else "–",
                ratio(d["vs_direct"]), ratio(d["vs_haproxy"]), f"{d['n_ok']}/{d['n']}",
            ]
            L.append("| " + " | ".join(cells) + " |")
        if wl.note:
            L.append("")
            L.append(wl.note)
        extra = workload_findings(s)
        if extra:
            L.append("")
            L.append(extra)
        socat = s["per"].get("socat")
        if wl.udp and socat and any("verif" in e for e in socat["errors"]):
            L.append("")
            L.append("socat fails this workload's verification: replies arrive at the wrong flow. "
                     "That fits how `UDP-LISTEN:...,fork` works: the listening socket receives datagrams from several clients before it is handed to "
                     "the child forked for the first of them, so another client's datagrams go out "
                     "through that child's upstream socket and their echoes come back to the wrong "
                     "client. The bench checks every reply against what that flow sent and fails the "
                     "run.")
        fails = [(t, d) for t, d in s["per"].items() if d["errors"]]
        if fails:
            L.append("")
            L.append("Failed runs (kept in raw.csv, left out of the medians):")
            for t, d in fails:
                L.append(f"- {t}: {len(d['errors'])} of {d['n']} failed; first: {d['errors'][0]}")
        L.append("")
    if meta.get("missing"):
        L.append("## Not measured")
        L.append("")
        for m in meta["missing"]:
            L.append(f"- {m}")
        L.append("")
    return "\n".join(L)


def workload_findings(s: dict) -> str:
    """Sentences computed from one workload's medians: saturation of the generator's CPU in
    udp-stream, and what busy polling bought in tcp-rr-1."""
    wl, per = s["workload"], s["per"]
    out = []
    d = per.get("direct")
    if wl.mode == "udp-stream" and d and d.get("loss") is not None:
        offered = d.get("offered")
        if d["loss"] > 0.01:
            out.append(f"**Saturated before the forwarder:** direct itself delivers only "
                       f"{100 * (1 - d['loss']):.0f}% of the {num(offered)}/s offered (generator + "
                       f"upstream use {100 * (d['genup'] or 0):.0f}% of a CPU on CPU 1), so at this "
                       "rate CPU 1 is the bottleneck and the forwarders' loss is mostly not theirs; "
                       "compare their CPU-µs per datagram, not their delivered rate.")
        else:
            out.append(f"Direct delivers {100 * (1 - d['loss']):.1f}% of the {num(offered)}/s offered: "
                       "the generator and upstream keep up, so loss through a forwarder is the "
                       "forwarder's.")
    if "ringfwd-busypoll" in per or "haproxy-busypoll" in per:
        parts = []
        dp50 = d.get("p50") if d else None
        for t in ("ringfwd", "ringfwd-busypoll", "haproxy", "haproxy-busypoll"):
            x = per.get(t)
            if x and x.get("p50") and dp50:
                parts.append(f"{t} p50 {num(x['p50'])} µs = {x['p50'] / dp50:.1f}× direct's, "
                             f"{si(x['value'], '/s')} at {100 * (x['util'] or 0):.0f}% of CPU 0")
        rb, hb = per.get("ringfwd-busypoll"), per.get("haproxy-busypoll")
        if rb and hb and rb.get("value") and hb.get("value"):
            parts.append(f"ringfwd-busypoll / haproxy-busypoll: rate {rb['value'] / hb['value']:.2f}×, "
                         f"p50 {rb['p50'] / hb['p50']:.2f}×")
        if parts:
            out.append("Busy polling (medians; direct p50 " + (f"{num(dp50)} µs" if dp50 else "–") + "): "
                       + "; ".join(parts) + ".")
    return "\n\n".join(out)


def idle_md(idle_rows: list[dict]) -> str:
    if not idle_rows:
        return ""
    n = max(int(r.get("connections") or 0) for r in idle_rows)
    L = ["", "## Idle connections: memory", "",
         f"{n:,} idle TCP connections opened through each forwarder (a dedicated instance, 1 thread / "
         "worker / shard pinned on CPU 0, sized for them; each connection established end to end, "
         "counted at the upstream; no byte sent), then closed. RSS and PSS summed over the "
         "forwarder's processes, before and 1 s after the last one reached the upstream; per "
         "connection = the difference / connections. Kernel memory (socket structures) is not in "
         "RSS: `slab/conn` is the machine-wide Slab growth per connection (all four sockets of a "
         "proxied connection: client, the forwarder's two, the upstream's), for scale. "
         + idle_note(n), "",
         "| target | connections | RSS before MiB | RSS after MiB | RSS per conn B | PSS before MiB | PSS after MiB | PSS per conn B | RSS after close MiB | slab/conn B | open s | ok |",
         "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    def mib(k):
        return "–" if k in (None, "") else f"{float(k) / 1024:.1f}"
    def b(x):
        return "–" if x in (None, "") else f"{float(x):,.0f}"
    for r in idle_rows:
        L.append("| " + " | ".join([
            r["target"], b(r.get("upstream_established")), mib(r.get("rss_before_kib")), mib(r.get("rss_after_kib")),
            b(r.get("rss_per_conn_b")), mib(r.get("pss_before_kib")), mib(r.get("pss_after_kib")),
            b(r.get("pss_per_conn_b")), mib(r.get("rss_closed_kib")), b(r.get("slab_per_conn_b")),
            "–" if r.get("open_s") in (None, "") else f"{float(r['open_s']):.1f}",
            "ok" if r.get("ok") in (True, "True") else f"FAILED: {r.get('error')}"]) + " |")
    L += ["", "socat is not measured here: it forks one process per connection, so "
          f"{n:,} connections would be {n:,} processes; its memory with 1000 active connections is in "
          "the tcp-rr-1000 table.", ""]
    return "\n".join(L)


def memory_headline_md(summ: list[dict], idle_rows: list[dict], targets: list[str]) -> str:
    """Peak RSS / PSS at tcp-rr-1000 and bytes per idle connection, per forwarder."""
    rr = next((s for s in summ if s["workload"].name == "tcp-rr-1000" and s["layout"] == "pinned"), None)
    cols = [t for t in ("ringfwd", "haproxy", "nginx", "socat")
            if t in targets and (rr and t in rr["per"] or any(r["target"] == t for r in idle_rows))]
    if not cols:
        return ""
    L = ["| memory | " + " | ".join(cols) + " |", "|---|" + "|".join("---:" for _ in cols) + "|"]
    if rr:
        L.append("| tcp-rr-1000: peak RSS / PSS MiB | " + " | ".join(
            f"{rr['per'][t]['rss'] / 1024:.1f} / {rr['per'][t]['pss'] / 1024:.1f}"
            if t in rr["per"] and rr["per"][t]["rss"] and rr["per"][t]["pss"] else "–" for t in cols) + " |")
    if idle_rows:
        byt = {r["target"]: r for r in idle_rows}
        n = max(int(r.get("connections") or 0) for r in idle_rows)
        def cell(t):
            r = byt.get(t)
            if not r or r.get("rss_per_conn_b") in (None, ""):
                return "–"
            return f"{float(r['rss_per_conn_b']):,.0f} / {float(r['pss_per_conn_b']):,.0f}"
        L.append(f"| {n:,} idle connections: RSS / PSS bytes per connection | " + " | ".join(cell(t) for t in cols) + " |")
    return "\n".join(L)


def headline_md(summ: list[dict], targets: list[str], run_rel: str) -> str:
    cols = [t for t in ["direct", "ringfwd", "haproxy*", "nginx", "socat"]
            if t == "haproxy*" and any(v in targets for v in HAPROXY_VARIANTS) or t in targets]
    L = ["| workload | " + " | ".join("best HAProxy" if c == "haproxy*" else c for c in cols) + " |",
         "|---|" + "|".join("---:" for _ in cols) + "|"]
    for s in summ:
        wl = s["workload"]
        if wl.gen_extra:
            continue  # the busy-polling generator's sub-workload has its own headline table
        cells = [f"{wl.name}" + ("" if s["layout"] == "pinned" else f" ({s['layout']})")]
        for c in cols:
            t = s["best_haproxy"] if c == "haproxy*" else c
            d = s["per"].get(t) if t else None
            if not d or not d["value"]:
                cells.append("–" if not d else "failed")
                continue
            txt = fmt_value(wl, d["value"]) if c == "direct" else ratio(d["vs_direct"])
            if wl.metric == "rate" and d.get("p99") is not None:
                txt += f", p99 {num(d['p99'])} µs"
            if c == "haproxy*":
                txt += f" ({t.replace('haproxy-', '') if t != 'haproxy' else 'no splice'})"
            cells.append(txt)
        L.append("| " + " | ".join(cells) + " |")
    return "\n".join(L)


def chart_svg(summ: list[dict], targets: list[str], title: str) -> str:
    """Small multiples: per workload, bars of rate / direct (left) and p99 latency (right)."""
    row_h, bar_h, gap = 15, 11, 4
    cell_w, label_w, panel_w = 600, 130, 200
    ncols = 2
    cells = []
    for s in summ:
        present = [t for t in targets if t in s["per"]]
        cells.append((s, present))
    heights = [40 + len(p) * row_h + 16 for _, p in cells]
    nrows = math.ceil(len(cells) / ncols)
    row_heights = [max(heights[r * ncols:(r + 1) * ncols] or [0]) for r in range(nrows)]
    top = 90
    W = ncols * cell_w + 20
    H = top + sum(row_heights) + 40
    esc = html.escape
    o = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" '
         'font-family="DejaVu Sans, Helvetica, Arial, sans-serif" font-size="11">',
         f'<rect width="{W}" height="{H}" fill="white"/>',
         f'<text x="10" y="22" font-size="16" font-weight="bold">{esc(title)}</text>',
         '<text x="10" y="38" fill="#444">left: throughput relative to direct (no forwarder: 1.0 = as fast as '
         'without a forwarder), median of the repetitions, whisker = min–max</text>',
         '<text x="10" y="52" fill="#444">right: p99 latency in µs (median); for streams, which have no '
         'latency: the forwarder\'s CPU-seconds per GB forwarded (lower is better)</text>']
    # legend
    x = 10
    for t in targets:
        o.append(f'<rect x="{x}" y="62" width="12" height="12" fill="{COLORS.get(t, "#999")}"/>')
        o.append(f'<text x="{x + 16}" y="72">{esc(t)}</text>')
        x += 16 + 7 * len(t) + 18
    y0 = top
    for r in range(nrows):
        for c in range(ncols):
            idx = r * ncols + c
            if idx >= len(cells):
                continue
            s, present = cells[idx]
            wl = s["workload"]
            cx, cy = 10 + c * cell_w, y0
            name = wl.name + ("" if s["layout"] == "pinned" else f" ({s['layout']})")
            direct = s["per"].get("direct", {}).get("value")
            dtxt = f"direct = {fmt_value(wl, direct)}" if direct else "no direct baseline"
            o.append(f'<text x="{cx}" y="{cy + 14}" font-size="13" font-weight="bold">{esc(name)}</text>')
            o.append(f'<text x="{cx + label_w + panel_w + 40}" y="{cy + 14}" fill="#444" text-anchor="end">'
                     f'{esc(dtxt)}</text>')
            px1 = cx + label_w
            px2 = cx + label_w + panel_w + 70
            rel = [s["per"][t]["max"] / direct for t in present if direct and s["per"][t]["max"]]
            rmax = max([1.0] + rel) * 1.05
            # right panel: p99 latency, or for streams (no latency) the forwarder's CPU-s per GB
            rkey, rlabel = ("p99", "p99 µs") if wl.metric == "rate" else ("cost", "forwarder CPU-s per GB")
            rvals = [s["per"][t][rkey] for t in present if s["per"][t][rkey]]
            lmax = max(rvals) * 1.05 if rvals else None
            by = cy + 24
            # axis marks
            o.append(f'<line x1="{px1}" y1="{by - 2}" x2="{px1}" y2="{by + len(present) * row_h}" stroke="#333"/>')
            one = px1 + panel_w / rmax
            o.append(f'<line x1="{one:.1f}" y1="{by - 2}" x2="{one:.1f}" y2="{by + len(present) * row_h}" '
                     'stroke="#999" stroke-dasharray="3,2"/>')
            o.append(f'<text x="{one:.1f}" y="{by + len(present) * row_h + 11}" fill="#666" '
                     'text-anchor="middle" font-size="9">1.0</text>')
            if lmax:
                o.append(f'<line x1="{px2}" y1="{by - 2}" x2="{px2}" y2="{by + len(present) * row_h}" stroke="#333"/>')
                o.append(f'<text x="{px2}" y="{by + len(present) * row_h + 11}" fill="#666" font-size="9">'
                         f'{esc(rlabel)}</text>')
            for i, t in enumerate(present):
                d = s["per"][t]
                yy = by + i * row_h
                col = COLORS.get(t, "#999")
                o.append(f'<text x="{px1 - 6}" y="{yy + bar_h - 1}" text-anchor="end">{esc(t)}</text>')
                if d["value"] and direct:
                    v = d["value"] / direct
                    wbar = panel_w * v / rmax
                    o.append(f'<rect x="{px1}" y="{yy}" width="{wbar:.1f}" height="{bar_h}" fill="{col}"/>')
                    if d["min"] is not None and d["max"] is not None and d["n_ok"] > 1:
                        x1 = px1 + panel_w * d["min"] / direct / rmax
                        x2 = px1 + panel_w * d["max"] / direct / rmax
                        ym = yy + bar_h / 2
                        o.append(f'<line x1="{x1:.1f}" y1="{ym}" x2="{x2:.1f}" y2="{ym}" stroke="black"/>')
                        o.append(f'<line x1="{x1:.1f}" y1="{ym - 3}" x2="{x1:.1f}" y2="{ym + 3}" stroke="black"/>')
                        o.append(f'<line x1="{x2:.1f}" y1="{ym - 3}" x2="{x2:.1f}" y2="{ym + 3}" stroke="black"/>')
                    o.append(f'<text x="{px1 + max(wbar, panel_w * (d["max"] or 0) / direct / rmax) + 4:.1f}" '
                             f'y="{yy + bar_h - 1}">{v:.2f}</text>')
                elif d["n_ok"] == 0:
                    o.append(f'<text x="{px1 + 4}" y="{yy + bar_h - 1}" fill="#b00">failed</text>')
                if lmax and d[rkey]:
                    wbar = (panel_w - 40) * d[rkey] / lmax
                    o.append(f'<rect x="{px2}" y="{yy}" width="{wbar:.1f}" height="{bar_h}" fill="{col}" '
                             'fill-opacity="0.75"/>')
                    o.append(f'<text x="{px2 + wbar + 4:.1f}" y="{yy + bar_h - 1}">{num(d[rkey])}</text>')
        y0 += row_heights[r]
    o.append("</svg>")
    return "\n".join(o)


def update_results_readme(path: Path, run_rel: str, headline: str, meta: dict) -> None:
    begin, end = "<!-- compare.py: latest run (begin) -->", "<!-- compare.py: latest run (end) -->"
    section = "\n".join([
        begin,
        "## Latest run: ringfwd vs HAProxy, NGINX stream, socat",
        "",
        f"[{run_rel}/]({run_rel}/) — {meta['date']} on {meta['host']} ({meta['cpu']}, {meta['ncpu']} "
        f"cores, kernel {meta['kernel']}), `benches/compare.py{meta['cmd_suffix']}`, "
        f"{meta['reps']} interleaved repetitions of {meta['duration']} each, pinning: forwarder on "
        "CPU 0, generator and upstream on CPU 1 (unless marked unpinned). Throughput relative to "
        "direct (no forwarder) and p99 latency, medians; details in "
        f"[summary.md]({run_rel}/summary.md), [setup.md]({run_rel}/setup.md), "
        f"[chart.svg]({run_rel}/chart.svg).",
        "",
    ] + ([meta["other_load"], ""] if meta.get("other_load") else []) + [
        headline,
        "",
        "How to read it: tcp-rr-1 pinned is bounded by cross-CPU wakeups (~150 µs each on this VM) "
        "for every forwarder alike, so compare forwarders with each other there (the busy-polling "
        f"table: ringfwd `--busy-poll {BUSY_POLL}` and HAProxy `busy-polling`, with and without a "
        "busy-polling generator, and the forwarder's share of CPU 0); udp-stream-8-64-50k/-150k "
        "offer the same fixed rate to every target, and where direct loses datagrams too the "
        "generator's CPU is saturated (see the summary); socat fails the UDP workloads' "
        "verification (replies reach the wrong flow in its fork mode); machine load, spreads, CPU "
        "cost per op and memory are in the summary; "
        "[tuning.md](../tuning.md#reading-the-benchmarks) explains every column.",
        "",
        end,
    ])
    text = path.read_text() if path.exists() else (
        "# Benchmark results\n\nOne directory per run: `<date>-<host>/`, each with the exact "
        "commands, the machine, raw rows and a summary.\n\n")
    if begin in text and end in text:
        pre, rest = text.split(begin, 1)
        post = rest.split(end, 1)[1]
        text = pre + section + post
    else:
        text = text.rstrip("\n") + "\n\n" + section + "\n"
    path.write_text(text)


# --------------------------------------------------------------------------
# Capacity at SLO: `ringfwd bench tcp-rr --capacity` through each forwarder

CAPACITY_NAME = "tcp-rr-capacity"  # how --only selects it
# direct (generator straight to the upstream) is the floor every forwarder is read against.
CAPACITY_TARGETS = ["direct", "ringfwd", "haproxy", "nginx"]
CAPACITY_SLOS = ["1ms", "5ms"]  # p99 objectives, one search each
CAPACITY_CONNS = 100
# Full: 4k/s doubling to at most 400k/s (at most 7 growth steps, 5 bisections, 6 retries) of
# 1 s warmup + 2 s measured: at most 63 s per search (about 40 s in practice: a dozen steps),
# so 5-8 minutes for the 8 (4 targets, 2 objectives); quick halves the steps.
# Start at 4k/s: at 1k/s over 100 connections each request finds both vCPUs halted, and the
# ~150 µs wakeup of a halted vCPU (tuning.md) dominates the tail of every target alike.
CAPACITY_FULL = dict(start="4000", max="400k", step=2.0, warmup=1.0)
CAPACITY_QUICK = dict(start="4000", max="400k", step=1.0, warmup=0.5)
CAPACITY_FIELDS = ["target", "slo", "step", "offered", "achieved", "p50_us", "p99_us", "p99_9_us",
                   "error_ratio", "held", "misses"]
CAPACITY_RESULT_FIELDS = ["target", "slo", "capacity", "outcome", "broken_at", "steps", "wall_s",
                          "quiet_wait_s", "busy_cpus_before", "load_before", "load_after", "ok",
                          "error", "json"]


def capacity_selected(only: str | None) -> bool:
    if not only:
        return True
    return any(fnmatch.fnmatch(CAPACITY_NAME, p.strip().partition("@")[0])
               for p in only.split(",") if p.strip())


def capacity_argv(binary: Path, lay: Layout, target: str, slo: str, cfg: dict,
                  json_path: Path, chart_path: Path) -> list[str]:
    argv = taskset(lay.gen_cpus) + [
        str(binary), "bench", "tcp-rr", "--target", f"{LOOPBACK}:{lay.port(target, 'echo')}",
        "--connections", str(CAPACITY_CONNS), "--size", "64", "--capacity", "--slo", f"p99={slo}",
        "--start-rate", cfg["start"], "--max-rate", cfg["max"],
        "--step-duration", fmt_dur(cfg["step"]), "--warmup", fmt_dur(cfg["warmup"]),
        "--json", str(json_path), "--chart", str(chart_path), "--quiet",
        "--shards", str(lay.gen_shards)]
    if lay.gen_cpus:
        argv += ["--cpus", ",".join(map(str, lay.gen_cpus))]
    return argv


def run_capacity(h: "Harness", quick: bool) -> tuple[list[dict], list[dict]]:
    """Each target's capacity at each p99 objective, pinned (forwarder on CPU 0, generator and
    upstream on CPU 1); the targets' order rotates between objectives. Returns (results, steps)."""
    cfg = CAPACITY_QUICK if quick else CAPACITY_FULL
    lay = h.layouts["pinned"]
    targets = [t for t in CAPACITY_TARGETS if t in h.targets]
    h.stop_all()
    time.sleep(0.5)
    if lay.gen_cpus:
        os.sched_setaffinity(0, set(lay.gen_cpus))
    h.start_layout(lay, only=targets)
    log(f"capacity at SLO: tcp-rr, {CAPACITY_CONNS} connections, p99 ≤ {' and ≤ '.join(CAPACITY_SLOS)}, "
        f"through {', '.join(targets)}; steps of {fmt_dur(cfg['warmup'])} warmup + "
        f"{fmt_dur(cfg['step'])}, from {cfg['start']}/s up to {cfg['max']}/s")
    results, steps = [], []
    # the other agents' load moves a tail objective more than anything else: before each search
    # wait (bounded) for a quiet machine, and record what it was
    gate = QuietGate(per_run=30, budget=150)
    outdir = h.out / "runs" / "capacity"
    outdir.mkdir(parents=True, exist_ok=True)
    for i, slo in enumerate(CAPACITY_SLOS):
        k = i % len(targets)
        for t in targets[k:] + targets[:k]:
            rel = Path("runs") / "capacity" / f"{t}-p99-{slo}.json"
            argv = capacity_argv(h.bin, lay, t, slo, cfg, h.out / rel, (h.out / rel).with_suffix(".svg"))
            COMMANDS.append(f"[capacity {t} p99 {slo}] " + shlex.join(argv))
            waited, busy = gate.wait()
            row = {"target": t, "slo": slo, "json": str(rel), "load_before": loadavg(),
                   "quiet_wait_s": waited, "busy_cpus_before": busy}
            dead = [m for m in h.fwd.get(t, []) if not m.alive()]
            t0 = time.monotonic()
            if dead:
                row.update(ok=False, error=f"{dead[0].name} is no longer running: {dead[0].log_tail(3)}")
            else:
                r = subprocess.run(argv, capture_output=True, text=True)
                (outdir / f"{t}-p99-{slo}.txt").write_text(r.stdout + r.stderr)
                try:
                    doc = json.loads((h.out / rel).read_text())
                    cap = doc["capacity"]
                    row.update(ok=r.returncode == 0, capacity=cap["rate"], outcome=cap["outcome"],
                               broken_at=cap["broken_at"], steps=len(cap["steps"]),
                               error="" if r.returncode == 0 else r.stderr[-400:])
                    for s in cap["steps"]:
                        steps.append({"target": t, "slo": slo, "step": s["step"], "offered": s["offered"],
                                      "achieved": s["achieved"], "p50_us": s["p50_us"],
                                      "p99_us": s["p99_us"], "p99_9_us": s["p99_9_us"],
                                      "error_ratio": s["error_ratio"], "held": s["held"],
                                      "misses": "; ".join(s["misses"])})
                except (OSError, ValueError, KeyError) as e:
                    row.update(ok=False, error=f"exit {r.returncode}: {e}: {r.stderr[-400:]}")
            row["wall_s"] = round(time.monotonic() - t0, 1)
            row["load_after"] = loadavg()
            results.append(row)
            log(f"capacity {t:8s} p99 ≤ {slo}: " + (
                f"{capacity_text(row)} in {row.get('steps')} steps, {row['wall_s']} s" if row["ok"]
                else f"FAILED: {row['error']}"))
    h.stop_all()
    for name, fields, rows in (("capacity.csv", CAPACITY_RESULT_FIELDS, results),
                               ("capacity-steps.csv", CAPACITY_FIELDS, steps)):
        with open(h.out / name, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
            w.writeheader()
            for r in rows:
                w.writerow(r)
    return results, steps


def capacity_text(row: dict | None) -> str:
    if not row or not row.get("ok"):
        return "failed"
    rate, outcome = row.get("capacity"), row.get("outcome")
    if outcome == "below_start":
        return "below the start rate"
    if rate is None:
        return "–"
    return ("≥ " if outcome == "at_least_max" else "") + si(float(rate), "/s")


def capacity_headline_md(results: list[dict]) -> str:
    by = {(r["target"], r["slo"]): r for r in results}
    targets = [t for t in CAPACITY_TARGETS if any(r["target"] == t for r in results)]
    L = [f"| capacity at SLO (tcp-rr, {CAPACITY_CONNS} connections, 64 B) | "
         + " | ".join(targets) + " |",
         "|---|" + "|".join("---:" for _ in targets) + "|"]
    for slo in CAPACITY_SLOS:
        base = by.get(("ringfwd", slo))
        cells = [f"p99 ≤ {slo}"]
        for t in targets:
            r = by.get((t, slo))
            txt = capacity_text(r)
            if (t not in ("ringfwd", "direct") and r and base and r.get("ok") and base.get("ok")
                    and r.get("capacity") and base.get("capacity")):
                txt += f" ({float(r['capacity']) / float(base['capacity']):.2f}× ringfwd)"
            cells.append(txt)
        L.append("| " + " | ".join(cells) + " |")
    return "\n".join(L)


def capacity_md(results: list[dict], steps: list[dict], meta: dict) -> str:
    cfg = CAPACITY_QUICK if meta.get("quick") else CAPACITY_FULL
    L = ["## Capacity at SLO", "",
         f"The highest offered rate (open loop, {CAPACITY_CONNS} connections, 64 B requests, "
         "latency from each request's intended send time) at which p99 stays within the objective, "
         "errors within 0.1% and the achieved rate within 5% of the offered one, found by "
         f"`ringfwd bench tcp-rr --capacity`: from {cfg['start']}/s doubling until a step breaks "
         f"(at most {cfg['max']}/s), then bisecting to 5%; steps of {fmt_dur(cfg['warmup'])} "
         f"warmup + {fmt_dur(cfg['step'])} measured. Pinned: forwarder on CPU 0, generator and "
         "upstream on CPU 1. Chart: [capacity.svg](capacity.svg); rows: "
         "[capacity.csv](capacity.csv), [capacity-steps.csv](capacity-steps.csv); each search's "
         "table, JSON and own chart: runs/capacity/.", "",
         capacity_headline_md(results), "",
         "| target | p99 objective | capacity | steps | wall | busy CPUs before (of "
         f"{os.cpu_count()}) | load average before → after |",
         "|---|---|---:|---:|---:|---:|---|"]
    for r in results:
        L.append(f"| {r['target']} | ≤ {r['slo']} | {capacity_text(r)} | {r.get('steps', '–')} | "
                 f"{r['wall_s']} s | {r.get('busy_cpus_before', '–')} | {r['load_before']} → "
                 f"{r['load_after']} |")
    L += ["", "Steps (offered → achieved, p99, held):", ""]
    for r in results:
        mine = [s for s in steps if s["target"] == r["target"] and s["slo"] == r["slo"]]
        if not mine:
            continue
        cells = [f"{si(s['offered'])}→{si(s['achieved'])} {num(s['p99_us'])} µs "
                 + ("✓" if s["held"] else "✗") for s in mine]
        L.append(f"- {r['target']}, p99 ≤ {r['slo']}: " + ", ".join(cells))
    return "\n".join(L) + "\n"


def capacity_svg(steps: list[dict], results: list[dict], title: str) -> str:
    """p99 against offered rate for each target, side by side on shared log axes, both objectives'
    steps together (one curve per target, one point per rate); dashed lines at the objectives, a
    tick at each capacity."""
    W, H, ml, mr, mt, mb = 1040, 520, 80, 250, 50, 60
    pts = [s for s in steps if s.get("p99_us") not in (None, "")]
    if not pts:
        return f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="80"><text x="10" y="40">no capacity steps</text></svg>'
    xs = [float(s["offered"]) for s in pts]
    ys = [float(s["p99_us"]) for s in pts] + [parse_us(s) for s in CAPACITY_SLOS]
    x0, x1 = math.log10(min(xs) / 1.3), math.log10(max(xs) * 1.3)
    y0, y1 = math.log10(max(min(ys) / 1.5, 1.0)), math.log10(max(ys) * 1.5)
    pw, ph = W - ml - mr, H - mt - mb

    def X(v: float) -> float:
        return ml + (math.log10(v) - x0) / (x1 - x0) * pw

    def Y(v: float) -> float:
        return mt + ph - (math.log10(max(v, 10 ** y0)) - y0) / (y1 - y0) * ph

    o = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" font-family="sans-serif" font-size="12">',
         f'<rect width="{W}" height="{H}" fill="white"/>',
         f'<text x="{W / 2}" y="22" text-anchor="middle" font-size="15">{html.escape(title)}</text>',
         f'<rect x="{ml}" y="{mt}" width="{pw}" height="{ph}" fill="none" stroke="#999"/>']
    for e in range(math.floor(x0), math.ceil(x1) + 1):
        for m in (1, 2, 5):
            v = m * 10 ** e
            if x0 <= math.log10(v) <= x1:
                o.append(f'<line x1="{X(v):.1f}" y1="{mt}" x2="{X(v):.1f}" y2="{mt + ph}" stroke="#eee"/>')
                o.append(f'<text x="{X(v):.1f}" y="{mt + ph + 16}" text-anchor="middle">{si(v, "/s")}</text>')
    for e in range(math.floor(y0), math.ceil(y1) + 1):
        v = 10 ** e
        if y0 <= e <= y1:
            o.append(f'<line x1="{ml}" y1="{Y(v):.1f}" x2="{ml + pw}" y2="{Y(v):.1f}" stroke="#eee"/>')
            label = f"{v / 1000:g} ms" if v >= 1000 else f"{v:g} µs"
            o.append(f'<text x="{ml - 6}" y="{Y(v) + 4:.1f}" text-anchor="end">{label}</text>')
    o.append(f'<text x="{ml + pw / 2}" y="{H - 14}" text-anchor="middle">offered rate (requests/s, log)</text>')
    o.append(f'<text x="18" y="{mt + ph / 2}" text-anchor="middle" transform="rotate(-90 18 {mt + ph / 2})">'
             'p99 latency (log)</text>')
    for slo in CAPACITY_SLOS:
        y = Y(parse_us(slo))
        o.append(f'<line x1="{ml}" y1="{y:.1f}" x2="{ml + pw}" y2="{y:.1f}" stroke="#555" stroke-dasharray="6 4"/>')
        o.append(f'<text x="{ml + pw - 4}" y="{y - 4:.1f}" text-anchor="end" fill="#555">SLO p99 ≤ {slo}</text>')
    ly = mt + 10
    for t in CAPACITY_TARGETS:
        # one point per rate: the last run there (a retry carries the verdict)
        last = {float(s["offered"]): s for s in pts if s["target"] == t}
        mine = [last[k] for k in sorted(last)]
        if not mine:
            continue
        c = COLORS.get(t, "#000")
        path = " ".join(f"{X(float(s['offered'])):.1f},{Y(float(s['p99_us'])):.1f}" for s in mine)
        o.append(f'<polyline points="{path}" fill="none" stroke="{c}" stroke-width="2"/>')
        for s in mine:
            x, y = X(float(s["offered"])), Y(float(s["p99_us"]))
            if str(s["held"]) in ("True", "true"):
                o.append(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="3.5" fill="{c}"/>')
            else:
                o.append(f'<path d="M{x - 4:.1f},{y - 4:.1f}L{x + 4:.1f},{y + 4:.1f}M{x - 4:.1f},{y + 4:.1f}'
                         f'L{x + 4:.1f},{y - 4:.1f}" stroke="{c}" stroke-width="2"/>')
        for r in results:
            if r["target"] == t and r.get("ok") and r.get("capacity"):
                x = X(float(r["capacity"]))
                y = Y(parse_us(r["slo"]))
                o.append(f'<line x1="{x:.1f}" y1="{y - 9:.1f}" x2="{x:.1f}" y2="{y + 9:.1f}" stroke="{c}" stroke-width="3"/>')
        o.append(f'<line x1="{ml + pw + 14}" y1="{ly}" x2="{ml + pw + 34}" y2="{ly}" stroke="{c}" stroke-width="2"/>')
        caps = ", ".join(f"{capacity_text(r)} @{r['slo']}" for r in results if r["target"] == t)
        o.append(f'<text x="{ml + pw + 40}" y="{ly + 4}">{html.escape(t)}</text>')
        o.append(f'<text x="{ml + pw + 14}" y="{ly + 20}" font-size="10">{html.escape(caps)}</text>')
        ly += 42
    o.append(f'<text x="{ml + pw + 14}" y="{ly + 4}" font-size="10">● held  ✗ broke  | capacity</text>')
    o.append("</svg>")
    return "\n".join(o) + "\n"


def parse_us(slo: str) -> float:
    m = re.fullmatch(r"(\d+)(us|µs|ms|s)", slo)
    if not m:
        raise ValueError(f"objective {slo!r}: use e.g. 500us, 1ms or 2s")
    return float(m.group(1)) * {"us": 1, "µs": 1, "ms": 1e3, "s": 1e6}[m.group(2)]


def update_capacity_readme(path: Path, run_rel: str, headline: str, meta: dict) -> None:
    """The headline of bench-results/README.md: capacity at SLO, above the latest full run."""
    begin, end = "<!-- compare.py: capacity at SLO (begin) -->", "<!-- compare.py: capacity at SLO (end) -->"
    section = "\n".join([
        begin,
        "## Headline: capacity at SLO",
        "",
        f"[{run_rel}/]({run_rel}/) — {meta['date']} on {meta['host']} ({meta['cpu']}, {meta['ncpu']} "
        f"cores, kernel {meta['kernel']}), `benches/compare.py{meta['cmd_suffix']}`. The highest "
        "offered rate at which each forwarder keeps p99 within the objective (open loop, latency "
        "from intended send times, errors ≤ 0.1%, achieved within 5% of offered), searched by "
        "`ringfwd bench tcp-rr --capacity`; pinned: forwarder on CPU 0, generator and upstream on "
        f"CPU 1. Steps and load: [summary.md]({run_rel}/summary.md); curves: "
        f"[capacity.svg]({run_rel}/capacity.svg)."
        + (f" Read first: [notes.md]({run_rel}/notes.md)." if (REPO / "bench-results" / run_rel / "notes.md").exists() else ""),
        "",
        headline,
        "",
        end,
    ])
    text = path.read_text() if path.exists() else "# Benchmark results\n\n"
    if begin in text and end in text:
        pre, rest = text.split(begin, 1)
        text = pre + section + rest.split(end, 1)[1]
    else:
        # right under the introduction, above the latest full run
        anchor = "<!-- compare.py: latest run (begin) -->"
        if anchor in text:
            pre, post = text.split(anchor, 1)
            text = pre + section + "\n\n" + anchor + post
        else:
            text = text.rstrip("\n") + "\n\n" + section + "\n"
    path.write_text(text)


def write_capacity_reports(outdir: Path, results: list[dict], steps: list[dict], meta: dict,
                           update_readme: bool) -> str:
    (outdir / "capacity.svg").write_text(capacity_svg(
        steps, results, f"tcp-rr, {CAPACITY_CONNS} connections: p99 against offered rate — "
                        f"{meta['date']} {meta['host']}"))
    text = capacity_md(results, steps, meta)
    summary = outdir / "summary.md"
    if summary.exists() and "## Capacity at SLO" not in summary.read_text():
        summary.write_text(summary.read_text().rstrip("\n") + "\n\n" + text)
    elif not summary.exists():
        summary.write_text(f"# Capacity at SLO — {meta['date']} {meta['host']}\n\n"
                           f"`benches/compare.py{meta['cmd_suffix']}`, {meta['started']} – "
                           f"{meta['finished']} ({meta['wall']}); {meta['cpu']}, {meta['ncpu']} "
                           f"cores, kernel {meta['kernel']}; load average before "
                           f"{meta['load_before']}, after {meta['load_after']}.\n\n" + text)
    headline = capacity_headline_md(results)
    if update_readme:
        try:
            run_rel = str(outdir.relative_to(REPO / "bench-results"))
        except ValueError:
            run_rel = str(outdir)
        update_capacity_readme(REPO / "bench-results" / "README.md", run_rel, headline, meta)
        log("updated the capacity headline of bench-results/README.md")
    return headline


# --------------------------------------------------------------------------
# setup.md

def machine_facts() -> dict:
    cpu = "?"
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    def sysctl(name):
        try:
            return Path("/proc/sys/" + name.replace(".", "/")).read_text().split("\n")[0].replace("\t", " ")
        except OSError:
            return "?"
    mem = kib_field("/proc/meminfo", "MemTotal:")
    return {
        "cpu": cpu, "ncpu": os.cpu_count(), "kernel": platform.release(),
        "mem": f"{mem / 1024 / 1024:.1f} GiB",
        "sysctl": {k: sysctl(k) for k in ("net.ipv4.tcp_tw_reuse", "net.core.somaxconn",
                                          "net.ipv4.ip_local_port_range", "net.core.rmem_max",
                                          "net.core.wmem_max", "net.ipv4.tcp_rmem", "net.ipv4.tcp_wmem",
                                          "kernel.io_uring_disabled")},
    }


def setup_md(h: Harness, meta: dict, facts: dict, versions: dict) -> str:
    L = [f"# Setup — {meta['date']} on {meta['host']}", ""]
    L += [
        f"- command: `{meta['cmdline']}` — {meta['mode_note']}",
        f"- started {meta['started']}, finished {meta['finished']}, wall time {meta['wall']}"
        + ("" if meta["complete"] else " — **interrupted, incomplete**"),
        f"- CPU: {facts['cpu']}, {facts['ncpu']} cores (vCPUs); memory {facts['mem']}; kernel {facts['kernel']}",
        f"- load average (1, 5, 15 min) before: {meta['load_before']}; after: {meta['load_after']}. "
        + (meta.get("other_load", "") + " ") +
        "The machine is shared with other engineers' builds and tests; each row of raw.csv has "
        "`load_before`, per-CPU busy fractions during the measured window (`cpu0_busy`, `cpu1_busy`) "
        "and `other_cpu_util` (CPU used by processes other than forwarder, generator and upstream).",
        "- idle state: on this VM an idle vCPU halts at once, so every wakeup across CPUs costs "
        "~150 µs of round trip. In the pinned layout each request crosses CPUs (generator on CPU 1 → "
        "forwarder on CPU 0 → upstream on CPU 1 and back), so the request/response rates are bounded "
        "by wakeup latency more than by forwarding work, for every forwarder alike; direct keeps "
        "generator and upstream on one CPU and pays no cross-CPU wakeup.",
        "",
        "## Versions",
        "",
    ]
    for k, v in versions.items():
        L.append(f"- {k}: `{v}`")
    L += ["", "## Kernel settings (read, not changed)", ""]
    for k, v in facts["sysctl"].items():
        L.append(f"- `{k}` = `{v}`")
    L += ["", "## Settings", "",
          f"- repetitions: {meta['reps']}, interleaved: for each workload, rep 1 runs every target, then "
          "rep 2 every target, ...; the target order rotates by one each repetition",
          f"- each run: `--warmup {fmt_dur(h.settings['warmup'])} --duration {fmt_dur(h.settings['duration'])}` "
          "(the bench's own bounds), then the next run; forwarders stay up for the whole layout",
          "- targets: " + ", ".join(h.targets) + " (HAProxy variants do not do UDP and are skipped for udp-*)",
          ]
    if meta.get("quick_note"):
        L.append(f"- {meta['quick_note']}")
    L += ["- to keep the full run within 20 minutes with the busy-polling, fixed-rate UDP and "
          "idle-memory workloads added, two things measured in the 2026-12-01 run are left out: "
          "HAProxy's forced splice (`haproxy-splice`) in the request/response and connection "
          "workloads (tcp-rr-*, tcp-crr-50; it stays in every tcp-stream workload, where splice "
          "matters; in the earlier run it was the slowest HAProxy variant in each of those), and "
          "socat in the udp-stream workloads (it fails their verification every time; it stays in "
          "udp-rr-100, which shows the failure)",
          f"- busy polling: `ringfwd-busypoll` is `ringfwd run --busy-poll {BUSY_POLL}`, "
          "`haproxy-busypoll` HAProxy without splice plus `busy-polling` in its global section; "
          "both are started right before each of their runs and stopped right after, because "
          "HAProxy's busy-polling keeps its thread at 100% of CPU 0 even without traffic, which "
          "would slow every other target's runs; `tcp-rr-1-genbusy` adds "
          f"`--busy-poll {BUSY_POLL}` to the generator",
          "- idle connections (`tcp-idle`): after the pinned workloads, for each of "
          + ", ".join(h.idle_targets or ["(not run)"]) + f": a dedicated instance pinned on CPU 0, "
          f"{h.idle_conns:,} idle connections opened through it by the harness (non-blocking "
          "connects, at most 256 pending, each counted ESTABLISHED at the upstream with `ss`), "
          "VmRSS and Pss (smaps_rollup) summed over its processes before and 1 s after, then the "
          "connections closed; configs under `configs/*-idle.*`. " + idle_note(h.idle_conns)]
    L += ["", "### Workloads", "", "| workload | layouts | bench arguments | targets | what |", "|---|---|---|---|---|"]
    for wl in WORKLOADS:
        lays = sorted({l for w, l in h.workloads if w is wl})
        if lays:
            gx = (" + generator `" + " ".join(wl.gen_extra) + "`") if wl.gen_extra else ""
            L.append(f"| {wl.name} | {', '.join(lays)} | `{wl.mode} {' '.join(wl.args)}`{gx} | "
                     f"{', '.join(workload_targets(wl, h.targets))} | {wl.what} |")
    if h.missing:
        L += ["", "Not run (missing in this build):", ""] + [f"- {m}" for m in h.missing]
    L += ["", "## Pinning", ""]
    for lay in {l for _, l in h.workloads}:
        lo = h.layouts[lay]
        L.append(f"- **{lo.name}**: {lo.note}.")
    L += ["", "## Ports (all on 127.0.0.1, below the ephemeral range 32768-60999)", "",
          "| target | layout | echo | sink | source | rr | iperf3 | udp echo |", "|---|---|---:|---:|---:|---:|---:|---:|"]
    for lay in sorted({l for _, l in h.workloads}):
        lo = h.layouts[lay]
        for t in h.targets:
            L.append(f"| {t} | {lay} | " + " | ".join(str(lo.port(t, s)) for s in TCP_SERVICES) + " | "
                     + (str(lo.port(t, "udp")) if t in UDP_CAPABLE else "–") + " |")
    L += ["", "\"direct\" is the upstream itself (`ringfwd echo`; on the iperf3 port, `iperf3 -s`, which the "
          "`-iperf3` workloads load with `iperf3 -c`).", "",
          "## Measurement", "",
          "- rate, latency (µs, HDR histogram in the generator), bits/s, UDP loss: from `ringfwd bench --json` "
          "(one file per run under `runs/`). A run whose bench exits non-zero, writes no JSON or reports "
          "`ok: false` is kept in raw.csv as failed with its error (stderr tail), and left out of medians.",
          "- forwarder CPU: the on-CPU time of every live thread of every process in the forwarder's "
          "tree (`/proc/<pid>/task/<tid>/schedstat`, the kernel's exact sum_exec_runtime) plus the "
          "CPU time of children already reaped (cutime+cstime of /proc/<pid>/stat, socat's forks), "
          "sampled 0.1 s after the warmup ends and 0.1 s before the measured window ends (relative "
          "to the bench's start), as a rate; `cpu_s` = that rate × the bench's measured time, "
          "`cpu_us_per_op` = rate / ops per second, `cpu_s_per_gb` = rate / (GB per second, both "
          "directions). Why not utime+stime of live processes alone: on this kernel (tick CPU "
          "accounting, HZ=250) they are tick samples, and a socat child that runs microseconds per "
          "request between ticks shows 0 — measured side by side on socat with 100 connections: "
          "0.15 CPU-s from ticks against 0.79 from schedstat, and 0.81 from cutime once the children "
          "were reaped; for ringfwd (one busy process) both give 1.88. The tick-based figure is kept "
          "in raw.csv as `fwd_cpu_util_ticks`. `cpu_s_whole_run` is the plain difference from "
          "before the bench starts to after it exits (warmup and connection setup included). "
          "`cpu0_busy`/`cpu1_busy` are the whole CPUs' busy fractions from /proc/stat.",
          "- memory: `echo 5 > /proc/<pid>/clear_refs` on every process of the forwarder before each "
          "run, then VmHWM (peak RSS) and Pss (smaps_rollup) summed over its processes, sampled three "
          "times in the measured window (start, middle, end) and after the run; the maximum is "
          "reported. RSS counts shared pages once per process (socat: one process per connection); "
          "PSS shares them out.",
          "- before measuring, a preflight exchanges verified bytes through every target "
          "(TCP echo, sink, source; UDP echo):", ""]
    L += [f"  - {p}" for p in h.preflight]
    L += ["", "## Commands", "",
          "Every process the harness started, and every bench run, in order (also in `commands.txt`). "
          "`/tmp/ringfwd-compare-*/ringfwd` is the harness's private copy of `target/release/ringfwd` "
          "(so a build in the same tree cannot replace the binary mid-run); paths under "
          f"`{REPO}` are this checkout.", "",
          "```"]
    shown = [c for c in COMMANDS if not c.startswith("[bench")]
    benches = [c for c in COMMANDS if c.startswith("[bench")]
    L += shown
    seen = set()
    for c in benches:
        key = c.split("]")[0].rsplit(" rep ", 1)[0]
        if key not in seen:
            seen.add(key)
            L.append(c.split("] ", 1)[0].rsplit(" rep ", 1)[0] + "] " + c.split("] ", 1)[1])
    L += ["```", "", "(bench commands shown once per workload and target; repetitions differ only in the "
          "`--json` file name.)", "", "## Config files", ""]
    for rel, text in h.configs.items():
        L += [f"### {rel}", "", "```", text.rstrip(), "```", ""]
    L += ["ringfwd takes no config file here: its command line above is its whole configuration "
          "(every other setting at its default, as printed by `ringfwd check`).", ""]
    return "\n".join(L)


# --------------------------------------------------------------------------
# main

def build(no_build: bool, binary: Path | None = None) -> tuple[Path, str]:
    """A private copy of the ringfwd binary to run: `binary` if given (built elsewhere, e.g.
    from a clean checkout of a commit), else target/release/ringfwd, built first unless
    `no_build`. Other builds in the same tree must not swap the binary mid-run."""
    note = ""
    if binary is None:
        binary = REPO / "target" / "release" / "ringfwd"
        if not no_build:
            log("cargo build --release")
            COMMANDS.append("cargo build --release")
            r = subprocess.run(["cargo", "build", "--release"], cwd=REPO, capture_output=True, text=True)
            if r.returncode != 0:
                raise RuntimeError("cargo build --release failed:\n" + r.stderr[-3000:])
    else:
        note = f"prebuilt binary {binary}"
    if not binary.exists():
        raise RuntimeError(f"{binary} does not exist (build it, or drop --no-build)")
    tmp = Path(tempfile.mkdtemp(prefix="ringfwd-compare-"))
    copy = tmp / "ringfwd"
    shutil.copy2(binary, copy)
    return copy, note


NUMERIC = {"rep", "rate", "offered_rate", "bits_per_second", "p50", "p90", "p99", "p99_9", "max",
           "cpu_s", "cpu_us_per_op", "cpu_s_per_gb", "rss_peak_kib", "pss_kib", "elapsed_s", "ops",
           "bps_up", "bps_down", "bytes_sent", "bytes_received", "udp_lost", "loss_ratio",
           "fwd_cpu_util", "fwd_cpu_util_ticks", "cpu_s_whole_run", "fwd_procs", "gen_cpu_util",
           "up_cpu_util", "cpu0_busy", "cpu1_busy", "other_cpu_util", "wall_s", "exit"}


def read_rows(path: Path, numeric: set[str] = NUMERIC) -> list[dict]:
    """raw.csv back as rows: `numeric` columns as floats (None when empty), `ok` as a bool."""
    rows = []
    with open(path, newline="") as f:
        for r in csv.DictReader(f):
            row = {}
            for k, v in r.items():
                if k in numeric:
                    row[k] = None if v in ("", None) else float(v)
                elif k == "ok":
                    row[k] = v == "True"
                else:
                    row[k] = v
            row["rep"] = int(row.get("rep") or 0)
            rows.append(row)
    return rows


def busypoll_headline_md(summ: list[dict]) -> str:
    """tcp-rr-1 with and without busy polling: p50, rate and the forwarder's CPU share."""
    subs = [s for s in summ if s["workload"].name in ("tcp-rr-1", "tcp-rr-1-genbusy") and s["layout"] == "pinned"
            and ("ringfwd-busypoll" in s["per"] or "haproxy-busypoll" in s["per"])]
    if not subs:
        return ""
    cols = [t for t in BUSYPOLL_TARGETS if any(t in s["per"] for s in subs)]
    L = ["| tcp-rr-1, busy polling | " + " | ".join(cols) + " |", "|---|" + "|".join("---:" for _ in cols) + "|"]
    for s in subs:
        name = "generator busy-polls too" if s["workload"].gen_extra else "generator does not busy-poll"
        cells = []
        for t in cols:
            d = s["per"].get(t)
            if not d or not d["value"]:
                cells.append("–" if not d else "failed")
                continue
            txt = f"p50 {num(d['p50'])} µs, {si(d['value'], '/s')}"
            if t != "direct" and d.get("util") is not None:
                txt += f", CPU {100 * d['util']:.0f}%"
            cells.append(txt)
        L.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(L)


def write_reports(outdir: Path, rows: list[dict], workloads: list[tuple[Workload, str]],
                  targets: list[str], meta: dict, update_readme: bool,
                  idle_rows: list[dict] | None = None) -> str:
    """summary.md, chart.svg and (if asked) the latest-run section of bench-results/README.md."""
    others = [r["other_cpu_util"] for r in rows if r.get("other_cpu_util") is not None]
    if others:
        meta["other_load"] = (
            f"Other load on the machine during the measured windows (CPU used by processes other "
            f"than forwarder, generator and upstream, in CPUs of {os.cpu_count()}): median "
            f"{statistics.median(others):.2f}, max {max(others):.2f}; runs with more than 0.15 are "
            f"{sum(1 for o in others if o > 0.15)} of {len(others)}.")
    summ = summarise(rows, workloads, targets)
    idle_rows = idle_rows or []
    text = summary_md(summ, meta)
    for name, what in EXTRA_WRITEUPS:
        # hand-written evaluations kept beside a run (they outlive --summarize-only)
        if (outdir / name).exists():
            text = text.replace("\n\n", f"\n\n{what}: [{name}]({name}).\n\n", 1)
    (outdir / "summary.md").write_text(text + idle_md(idle_rows))
    (outdir / "chart.svg").write_text(chart_svg(summ, targets, f"ringfwd vs HAProxy, NGINX stream, socat — "
                                                f"{meta['date']} {meta['host']}, {meta['mode_note'].split(' (')[0]}"))
    try:
        run_rel = str(outdir.relative_to(REPO / "bench-results"))
    except ValueError:
        run_rel = str(outdir)
    headline = headline_md(summ, targets, run_rel)
    for extra in (busypoll_headline_md(summ), memory_headline_md(summ, idle_rows, targets)):
        if extra:
            headline += "\n\n" + extra
    if update_readme:
        update_results_readme(REPO / "bench-results" / "README.md", run_rel, headline, meta)
        log("updated bench-results/README.md")
    return headline


def summarize_only(outdir: Path, readme: str) -> int:
    """Rebuild summary.md, chart.svg (and with --readme yes the README section) from raw.csv."""
    rows = read_rows(outdir / "raw.csv")
    if not rows:
        print(f"compare.py: no rows in {outdir / 'raw.csv'}", file=sys.stderr)
        return 1
    present = {(r["workload"], r["pinning"]) for r in rows}
    workloads = [(wl, lay) for wl in WORKLOADS for lay in ("pinned", "unpinned") if (wl.name, lay) in present]
    targets = [t for t in TARGETS if any(r["target"] == t for r in rows)]
    setup = (outdir / "setup.md").read_text() if (outdir / "setup.md").exists() else ""
    # the date and host as setup.md's title has them (the directory may carry a suffix: -2, -quick)
    m = (re.search(r"^# Setup — (\d{4}-\d{2}-\d{2}) on (\S+)", setup, re.M)
         or re.match(r"(\d{4}-\d{2}-\d{2})-(.+)", outdir.name))
    facts = machine_facts()
    cmd = re.search(r"- command: `benches/compare.py([^`]*)`", setup)
    quick = bool(cmd and "--quick" in cmd.group(1))
    meta = {
        "date": m.group(1) if m else "?", "host": m.group(2) if m else "?",
        "reps": max(r["rep"] for r in rows),
        "duration": fmt_dur(statistics.median([r["elapsed_s"] for r in rows if r.get("elapsed_s")] or [0])),
        "mode_note": ("quick run (smoke test: 1 repetition, short runs, fewer workloads)" if quick else "full run"),
        "missing": [], "cpu": facts["cpu"], "ncpu": facts["ncpu"], "kernel": facts["kernel"],
        "cmd_suffix": cmd.group(1) if cmd else "",
    }
    idle_rows = []
    if (outdir / "idle.csv").exists():
        with open(outdir / "idle.csv", newline="") as f:
            idle_rows = list(csv.DictReader(f))
    headline = write_reports(outdir, rows, workloads, targets, meta, readme == "yes", idle_rows)
    log("headline:\n" + headline)
    return 0


def default_outdir(name: str, keep: bool) -> Path:
    """bench-results/NAME, or, when `keep` and a run is already there (the day's earlier
    full run, committed evidence), the first free NAME-2, NAME-3, ..."""
    base = REPO / "bench-results"
    out, n = base / name, 1
    while keep and (out / "raw.csv").exists():
        n += 1
        out = base / f"{name}-{n}"
    return out


def main() -> int:
    global LOG_FILE
    if sys.argv[1:2] == ["--iperf3-client"] and sys.argv[3:4] == ["--"]:
        return iperf3_client(sys.argv[2], sys.argv[4:])
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog="workloads: " + ", ".join(w.name for w in WORKLOADS)
                                        + ", " + IDLE_NAME + " (idle-connection memory)"
                                        + "\ntargets: " + ", ".join(TARGETS))
    ap.add_argument("--quick", action="store_true", help="smoke run: 1 repetition of 0.5 s + 1 s, fewer workloads (< 3 min)")
    ap.add_argument("--out", type=Path, help="output directory (default: bench-results/<YYYY-MM-DD>-<short hostname>/, "
                         "or -2, -3, ... when a run is there already; with --quick "
                         "bench-results/<YYYY-MM-DD>-<short hostname>-quick/, overwritten)")
    ap.add_argument("--reps", type=int, help="repetitions (default 3, quick 1)")
    ap.add_argument("--duration", type=float, help="measured seconds per run (default 3, quick 1)")
    ap.add_argument("--warmup", type=float, help="warmup seconds per run (default 1, quick 0.5)")
    ap.add_argument("--only", help="workloads to run, comma-separated, shell patterns allowed "
                                   f"({CAPACITY_NAME}: capacity at SLO through ringfwd, HAProxy, NGINX), "
                                   "optionally @pinned/@unpinned: e.g. tcp-rr-*,tcp-stream-1-up@unpinned")
    ap.add_argument("--targets", help="targets, comma-separated (default: all): " + ",".join(TARGETS))
    ap.add_argument("--check", action="store_true",
                    help="start upstream and forwarders, verify each forwards, stop (no measurement)")
    ap.add_argument("--summarize-only", type=Path, metavar="DIR",
                    help="rebuild summary.md and chart.svg of an earlier run from its raw.csv "
                         "(and the README section with --readme yes); runs nothing")
    ap.add_argument("--no-build", action="store_true", help="use target/release/ringfwd as it is")
    ap.add_argument("--binary", type=Path, help="run this prebuilt ringfwd binary instead of building the "
                                                "tree (e.g. one built from a clean checkout of a commit)")
    ap.add_argument("--binary-note", help="where --binary comes from, recorded in setup.md "
                                          "(e.g. 'git archive of 54134fb, cargo build --release')")
    ap.add_argument("--readme", choices=["auto", "yes", "no"], default="auto",
                    help="update bench-results/README.md (auto: only for a complete, unfiltered full run)")
    args = ap.parse_args()

    def on_term(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")
    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGHUP, on_term)
    if args.summarize_only:
        return summarize_only(args.summarize_only.resolve(), args.readme)
    if os.geteuid() != 0:
        print("compare.py: run as root (package install, /proc of other users' processes, clear_refs)",
              file=sys.stderr)
        return 2
    settings = dict(QUICK if args.quick else FULL)
    for k in ("reps", "duration", "warmup"):
        if getattr(args, k) is not None:
            settings[k] = getattr(args, k)
    if settings["reps"] < 1 or settings["duration"] < 0.1 or settings["warmup"] < 0:
        print("compare.py: --reps >= 1, --duration >= 0.1, --warmup >= 0", file=sys.stderr)
        return 2
    targets = TARGETS
    if args.targets:
        targets = [t.strip() for t in args.targets.split(",") if t.strip()]
        bad = [t for t in targets if t not in TARGETS]
        if bad:
            print(f"compare.py: unknown target(s) {bad}; known: {TARGETS}", file=sys.stderr)
            return 2
        targets = [t for t in TARGETS if t in targets]
    selected = []
    for wl in WORKLOADS:
        for lay in (wl.quick_layouts if args.quick else wl.layouts):
            selected.append((wl, lay))
    if args.only:
        pats = [p.strip() for p in args.only.split(",") if p.strip()]
        def match(wl, lay):
            for p in pats:
                name, _, l = p.partition("@")
                if fnmatch.fnmatch(wl.name, name) and (not l or l == lay):
                    return True
            return False
        # --only may also pick a layout a quick run would not include
        pool = [(wl, lay) for wl in WORKLOADS for lay in wl.layouts]
        selected = [x for x in pool if match(*x)] if not args.quick else [x for x in selected if match(*x)]
        idle = any(fnmatch.fnmatch(IDLE_NAME, p.partition("@")[0]) for p in pats)
        if not selected and not idle and not capacity_selected(args.only):
            print(f"compare.py: --only {args.only!r} matches no workload; known: "
                  + ", ".join([w.name for w in WORKLOADS] + [IDLE_NAME, CAPACITY_NAME]), file=sys.stderr)
            return 2
    else:
        idle = True
    now = dt.datetime.now()
    host = socket.gethostname().split(".")[0]
    # a quick run gets its own directory, so it never overwrites the day's full run
    outdir = args.out or default_outdir(f"{now:%Y-%m-%d}-{host}" + ("-quick" if args.quick else ""),
                                        keep=not args.quick)
    outdir = outdir.resolve()
    outdir.mkdir(parents=True, exist_ok=True)
    if (outdir / "runs").exists():
        shutil.rmtree(outdir / "runs")  # results of an earlier run into the same directory
    LOG_FILE = open(outdir / "log.txt", "w")
    # file descriptors for 1000+ connections for the children we start (they inherit it)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, 262144), max(hard, 262144)))
    except (ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))

    started = dt.datetime.now()
    load_before = loadavg()
    cmdline = "benches/compare.py" + ("".join(" " + shlex.quote(a) for a in sys.argv[1:]))
    log(f"compare.py: output in {outdir}; load average {load_before}")
    h = None
    versions: dict = {}
    complete = False
    binary_dir = None
    try:
        needed = set(targets)
        ensure_peers(needed)
        binary, _ = build(args.no_build, args.binary)
        binary_dir = binary.parent
        versions = {
            "ringfwd": first_line([str(binary), "--version"]) + (
                f" (prebuilt {args.binary}: {args.binary_note or 'origin not given'})" if args.binary else
                " (git " + (sh(["git", "-C", str(REPO), "describe", "--always", "--dirty"]).stdout.strip() or "?") + ")"),
            "haproxy": first_line(["haproxy", "-v"]),
            "nginx": first_line(["nginx", "-v"]),
            "socat": next((l for l in sh(["socat", "-V"]).stdout.splitlines() if "socat version" in l),
                          first_line(["socat", "-V"])),
            "python": platform.python_version(),
        }
        dirty = sh(["git", "-C", str(REPO), "status", "--short", "--untracked-files=no"]).stdout.split("\n")
        dirty = [l[3:] for l in dirty if l.strip()]
        if dirty and not args.binary:
            versions["ringfwd"] += " — built from a working tree with uncommitted changes in " + ", ".join(dirty)
        log("versions: " + "; ".join(f"{k} {v}" for k, v in versions.items()))
        h = Harness(args, outdir, binary, targets, selected, settings)
        h.idle_targets = [t for t in IDLE_TARGETS if t in targets] if idle else []
        h.probe()
        if args.check:
            for lname in ("pinned", "unpinned"):
                h.stop_all()
                time.sleep(0.5)
                h.start_layout(h.layouts[lname])
            h.stop_all()
            log("check done: every target forwards")
            return 0
        # the quick smoke run leaves the capacity search out unless --only names it
        capacity = capacity_selected(args.only) and (not args.quick or bool(args.only))
        if not h.workloads and not h.idle_targets and not capacity:
            raise RuntimeError("nothing to run: " + "; ".join(h.missing))
        h.execute()
        if capacity:
            h.capacity = run_capacity(h, args.quick)
        complete = True
    except KeyboardInterrupt:
        log("interrupted: ending every process the harness started")
    except Exception as e:
        log(f"ERROR: {e}")
        if h is not None and getattr(h, "bench_proc", None) is not None:
            pass
    finally:
        if h is not None:
            bp = getattr(h, "bench_proc", None)
            if bp is not None and bp.poll() is None:
                bp.kill()
                bp.wait()
            h.stop_all()
        if binary_dir is not None:
            shutil.rmtree(binary_dir, ignore_errors=True)
    if h is None:
        return 1

    finished = dt.datetime.now()
    wall = finished - started
    meta = {
        "date": f"{now:%Y-%m-%d}", "host": host, "reps": settings["reps"],
        "duration": fmt_dur(settings["duration"]), "started": f"{started:%Y-%m-%d %H:%M:%S}",
        "finished": f"{finished:%H:%M:%S}", "wall": f"{int(wall.total_seconds() // 60)} min {int(wall.total_seconds() % 60)} s",
        "load_before": load_before, "load_after": loadavg(), "complete": complete,
        "cmdline": cmdline, "missing": h.missing,
        "mode_note": ("quick run (smoke test: 1 repetition, short runs, fewer workloads)" if args.quick
                      else "full run"),
        "quick_note": ("quick: 1 repetition of 0.5 s warmup + 1 s measured, workloads tcp-rr-1, "
                       "tcp-rr-1-genbusy, tcp-rr-100 (pinned and unpinned), tcp-crr-50, "
                       "tcp-stream-1-up, udp-rr-100, udp-stream-8-1200, udp-stream-8-64-150k, "
                       f"tcp-idle with {IDLE_CONNS_QUICK:,} connections; not run: tcp-rr-1000, "
                       "tcp-stream-8-up, tcp-stream-1-both, udp-stream-8-64, udp-stream-8-64-50k, "
                       "tcp-stream-1-up unpinned" if args.quick else ""),
    }
    facts = machine_facts()
    meta.update({"cpu": facts["cpu"], "ncpu": facts["ncpu"], "kernel": facts["kernel"],
                 "cmd_suffix": cmdline[len("benches/compare.py"):]})
    (outdir / "commands.txt").write_text("\n".join(COMMANDS) + "\n")
    filtered = bool(args.only or args.targets or args.reps or args.duration or args.warmup)
    update = args.readme == "yes" or (args.readme == "auto" and complete and not args.quick and not filtered)
    headline = ""
    if h.rows or h.idle_rows or not getattr(h, "capacity", None):
        headline = write_reports(outdir, h.rows, h.workloads, h.targets, meta, update, h.idle_rows)
    if getattr(h, "capacity", None):
        meta["quick"] = args.quick
        # a capacity-only run (--only tcp-rr-capacity) may update its own headline section
        only_capacity = bool(args.only) and not h.workloads and not h.idle_rows
        update_cap = args.readme == "yes" or (args.readme == "auto" and complete and not args.quick
                                              and (not filtered or only_capacity))
        headline = write_capacity_reports(outdir, *h.capacity, meta, update_cap) + "\n\n" + headline
    (outdir / "setup.md").write_text(setup_md(h, meta, facts, versions))
    log("headline:\n" + headline)
    failed = [r for r in h.rows if not r["ok"]]
    log(f"done in {meta['wall']}: {len(h.rows)} runs, {len(failed)} failed; results in {outdir}")
    # failed runs are results (kept in raw.csv and the summary); 1 only when the run did not finish
    return 0 if complete else 1


if __name__ == "__main__":
    sys.exit(main())
