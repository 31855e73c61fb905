#!/usr/bin/env python3
"""One UDP ping-pong flow (sockperf pp) through two ringfwd binaries and NGINX
stream, interleaved, with the forwarder's syscalls, io_uring_enter calls,
context switches and CPU time per round trip.

    python3 benches/udp_pingpong.py --old /tmp/rf-old --new target/release/ringfwd \
        --rounds 3 --seconds 5 --policy fwd-cpu1 --policy all-cpu0 --out bench-results/DIR

Policies (the same for every target):
  fwd-cpu1  the forwarder on CPU 1 (ringfwd --cpus 1, NGINX worker_cpu_affinity 10);
            sockperf client and server unpinned
  all-cpu0  client, server and forwarder all on CPU 0 (no cross-CPU wakeups:
            what is left is each forwarder's own cost per message)
  split     client and server on CPU 0, the forwarder on CPU 1 (every hop
            is a wakeup across CPUs)
  default   ringfwd pinned where it pins by default (1 shard: CPU 0), NGINX's
            worker, client and server not pinned (the scheduler may move them)
The CPU each of client, server and forwarder runs on is sampled every 20 ms:
`colocated` is the share of samples with all three on one CPU.
Within a round the targets take turns in an order rotated by one each round.

Needs sockperf, nginx with the stream module, and (for syscall counts) perf
with the syscalls tracepoints; without perf the counts are left empty.
Bounded: each sockperf run is killed after --seconds + 30 s. Loopback only.
"""

import argparse
import csv
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

UPSTREAM_PORT = 15400
PORTS = {"ringfwd-old": 15401, "ringfwd-new": 15402, "nginx": 15403}
STREAM_MODULES = ["/usr/lib/nginx/modules/ngx_stream_module.so",
                  "/usr/lib64/nginx/modules/ngx_stream_module.so"]
EVENTS = ["raw_syscalls:sys_enter", "syscalls:sys_enter_io_uring_enter",
          "syscalls:sys_enter_epoll_wait"]
POLICIES = {
    # name: (forwarder cpu, client/server taskset prefix)
    "fwd-cpu1": (1, []),
    "all-cpu0": (0, ["taskset", "-c", "0"]),
    "split": (1, ["taskset", "-c", "0"]),
    # ringfwd with its default pinning (one shard: CPU 0), NGINX, client and
    # server free to move: the setup of the first measurement
    "default": (None, []),
}
FIELDS = ["policy", "round", "target", "load1", "colocated", "rt_per_s", "latency_us",
          "round_trips", "syscalls_per_rt", "enters_per_rt", "epoll_waits_per_rt",
          "vol_cs_per_rt", "invol_cs_per_rt", "cpu_us_per_rt"]


def load1() -> float:
    return float(Path("/proc/loadavg").read_text().split()[0])


def threads(pid: int) -> list[Path]:
    return list(Path(f"/proc/{pid}/task").iterdir())


def ctx_switches(pid: int) -> tuple[int, int]:
    vol = invol = 0
    for t in threads(pid):
        for line in (t / "status").read_text().splitlines():
            if line.startswith("voluntary_ctxt_switches"):
                vol += int(line.split()[1])
            elif line.startswith("nonvoluntary_ctxt_switches"):
                invol += int(line.split()[1])
    return vol, invol


def cpu_ticks(pid: int) -> int:
    total = 0
    for t in threads(pid):
        fields = (t / "stat").read_text().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total


def cpu_of(pid: int) -> int | None:
    """The CPU a thread last ran on (field 39 of its stat)."""
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[36])
    except (OSError, ValueError, IndexError):
        return None


def busiest_thread(pid: int) -> int:
    """The forwarder's working thread: ringfwd's shard, else the one with the most CPU time."""
    best, most = pid, -1
    for t in threads(pid):
        if (t / "comm").read_text().startswith("rfwd-shard"):
            return int(t.name)
        f = (t / "stat").read_text().rsplit(")", 1)[1].split()
        if int(f[11]) + int(f[12]) > most:
            best, most = int(t.name), int(f[11]) + int(f[12])
    return best


def descendant(pid: int, name: str) -> int | None:
    """The first process called `name` at or under `pid`."""
    todo = [pid]
    while todo:
        p = todo.pop()
        try:
            if Path(f"/proc/{p}/comm").read_text().strip() == name:
                return p
        except OSError:
            continue
        kids = subprocess.run(["pgrep", "-P", str(p)], capture_output=True, text=True).stdout.split()
        todo += [int(k) for k in kids]
    return None


def perf_works() -> bool:
    if not shutil.which("perf"):
        return False
    r = subprocess.run(["perf", "stat", "-e", EVENTS[0], "true"],
                       capture_output=True, text=True)
    return r.returncode == 0


def nginx_conf(d: Path, cpu: int) -> Path:
    module = next((m for m in STREAM_MODULES if os.path.exists(m)), None)
    if module is None:
        sys.exit("the NGINX stream module is not installed (apt-get install libnginx-mod-stream)")
    affinity = "" if cpu is None else f"worker_cpu_affinity {format(1 << cpu, 'b')};"
    conf = d / f"nginx-cpu{cpu}.conf"
    conf.write_text(f"""# written by benches/udp_pingpong.py
load_module {module};
daemon off;
master_process on;
worker_processes 1;
{affinity}
pid {d}/nginx.pid;
error_log {d}/nginx-error.log warn;
events {{ worker_connections 1024; }}
stream {{
    server {{
        listen 127.0.0.1:{PORTS['nginx']} udp reuseport;
        proxy_pass 127.0.0.1:{UPSTREAM_PORT};
        proxy_timeout 60s;
    }}
}}
""")
    return conf


def wait_child(pid: int, timeout: float = 5.0) -> int:
    deadline = time.time() + timeout
    while time.time() < deadline:
        out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout.split()
        if out:
            return int(out[0])
        time.sleep(0.05)
    sys.exit(f"nginx (pid {pid}) started no worker within {timeout}s; see its error log")


def start(args: list[str], log: Path, wait_line: str | None = None) -> subprocess.Popen:
    f = open(log, "w")
    p = subprocess.Popen(args, stdout=f, stderr=subprocess.STDOUT)
    deadline = time.time() + 5
    while wait_line and time.time() < deadline:
        if wait_line in log.read_text():
            break
        if p.poll() is not None:
            sys.exit(f"{args[0]} exited at start:\n{log.read_text()}")
        time.sleep(0.05)
    time.sleep(0.3)
    return p


def one_run(target: str, pid: int, server: int, seconds: int, client: list[str], perf: bool,
            d: Path) -> dict:
    port = PORTS[target]
    cmd = client + ["sockperf", "pp", "-i", "127.0.0.1", "-p", str(port), "-t", str(seconds)]
    csvf = d / "perf.csv"
    if perf:
        cmd = ["perf", "stat", "-x,", "-o", str(csvf), "-e", ",".join(EVENTS),
               "-p", str(pid), "--"] + cmd
    v0, n0 = ctx_switches(pid)
    c0 = cpu_ticks(pid)
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    fwd = busiest_thread(pid)
    together = samples = 0
    deadline = time.time() + seconds + 30
    while p.poll() is None and time.time() < deadline:
        cl = descendant(p.pid, "sockperf")
        cpus = {cpu_of(fwd), cpu_of(cl) if cl else None, cpu_of(server)}
        if None not in cpus:
            samples += 1
            together += len(cpus) == 1
        time.sleep(0.02)
    if p.poll() is None:
        p.kill()
    out = p.communicate()[0]
    v1, n1 = ctx_switches(pid)
    c1 = cpu_ticks(pid)
    total = re.search(r"\[Total Run\].*?ReceivedMessages=(\d+)", out)
    valid = re.search(r"\[Valid Duration\] RunTime=([\d.]+) sec.*?ReceivedMessages=(\d+)", out)
    lat = re.search(r"Latency is ([\d.]+) usec", out)
    if not (total and valid and lat):
        raise RuntimeError(f"sockperf through {target} gave no result:\n{out[-2000:]}")
    n = int(total.group(1))
    counts = {}
    if perf:
        for line in csvf.read_text().splitlines():
            parts = line.split(",")
            if len(parts) > 2 and parts[0].strip().isdigit():
                counts[parts[2]] = int(parts[0])
    per = lambda k: f"{counts[k] / n:.2f}" if k in counts else ""
    hz = os.sysconf("SC_CLK_TCK")
    return {
        "colocated": f"{together / samples:.2f}" if samples else "",
        "rt_per_s": f"{int(valid.group(2)) / float(valid.group(1)):.0f}",
        "latency_us": lat.group(1),
        "round_trips": n,
        "syscalls_per_rt": per(EVENTS[0]),
        "enters_per_rt": per(EVENTS[1]),
        "epoll_waits_per_rt": per(EVENTS[2]),
        "vol_cs_per_rt": f"{(v1 - v0) / n:.2f}",
        "invol_cs_per_rt": f"{(n1 - n0) / n:.2f}",
        "cpu_us_per_rt": f"{(c1 - c0) / hz * 1e6 / n:.1f}",
    }


def run_policy(policy: str, a, rows: list, w, perf: bool, d: Path) -> None:
    cpu, client = POLICIES[policy]
    procs = []
    try:
        sr = start(client + ["sockperf", "sr", "-i", "127.0.0.1", "-p", str(UPSTREAM_PORT)],
                   d / f"sr-{policy}.log")
        procs.append(sr)
        server = descendant(sr.pid, "sockperf") or sr.pid
        pids = {}
        for t, binary in (("ringfwd-old", a.old), ("ringfwd-new", a.new)):
            pin = [] if cpu is None else ["--cpus", str(cpu)]
            p = start([binary, "run", "--udp", f"127.0.0.1:{PORTS[t]}=127.0.0.1:{UPSTREAM_PORT}",
                       "--shards", "1", "--log-level", "info"] + pin,
                      d / f"{t}-{policy}.log", wait_line="listening udp")
            procs.append(p)
            pids[t] = p.pid
        conf = nginx_conf(d, cpu)
        p = start(["nginx", "-p", str(d) + "/", "-c", str(conf)], d / f"nginx-{policy}.log")
        procs.append(p)
        pids["nginx"] = wait_child(p.pid)
        order = ["ringfwd-old", "ringfwd-new", "nginx"]
        for rnd in range(1, a.rounds + 1):
            shift = (rnd - 1) % len(order)
            for t in order[shift:] + order[:shift]:
                row = {"policy": policy, "round": rnd, "target": t, "load1": f"{load1():.2f}"}
                row.update(one_run(t, pids[t], server, a.seconds, client, perf, d))
                rows.append(row)
                w.writerow(row)
                print(" ".join(f"{k}={row[k]}" for k in FIELDS), flush=True)
    finally:
        for p in reversed(procs):
            p.send_signal(signal.SIGINT if p.args[0] == "sockperf" else signal.SIGTERM)
        for p in procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
        time.sleep(0.5)


def median(xs: list[float]) -> float:
    s = sorted(xs)
    return s[len(s) // 2] if len(s) % 2 else (s[len(s) // 2 - 1] + s[len(s) // 2]) / 2


def summary(rows: list, policies: list[str]) -> str:
    out = ["| policy | target | co-located | msg/s (median, range) | latency µs (median) | syscalls / rt | io_uring_enter / rt | vol cs / rt | invol cs / rt | CPU µs / rt | msg/s vs NGINX | CPU / rt vs NGINX |",
           "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for pol in policies:
        med = {}
        for t in ("ringfwd-old", "ringfwd-new", "nginx"):
            rs = [r for r in rows if r["policy"] == pol and r["target"] == t]
            if not rs:
                continue
            col = lambda k: [float(r[k]) for r in rs if r[k] != ""]
            m = {k: (median(col(k)) if col(k) else None) for k in FIELDS[4:] if k != "round_trips"}
            rates = col("rt_per_s")
            med[t] = (m, min(rates), max(rates))
        ng = med.get("nginx", ({}, 0, 0))[0]
        for t, (m, lo, hi) in med.items():
            f = lambda k, p=2: "" if m.get(k) is None else f"{m[k]:.{p}f}"
            ratio = lambda k: "" if not ng.get(k) or m.get(k) is None else f"{m[k] / ng[k]:.2f}×"
            out.append(f"| {pol} | {t} | {f('colocated')} | {m['rt_per_s']:,.0f} ({lo:,.0f}–{hi:,.0f}) | {f('latency_us', 1)} | "
                       f"{f('syscalls_per_rt')} | {f('enters_per_rt')} | {f('vol_cs_per_rt')} | "
                       f"{f('invol_cs_per_rt')} | {f('cpu_us_per_rt', 1)} | {ratio('rt_per_s')} | {ratio('cpu_us_per_rt')} |")
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--old", required=True, help="the ringfwd binary before the change")
    ap.add_argument("--new", required=True, help="the ringfwd binary after the change")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=int, default=5)
    ap.add_argument("--policy", action="append", choices=sorted(POLICIES))
    ap.add_argument("--out", required=True, type=Path)
    a = ap.parse_args()
    if not (1 <= a.rounds <= 10 and 1 <= a.seconds <= 30):
        sys.exit("--rounds must be 1..10 and --seconds 1..30 (the run is bounded)")
    for tool in ("sockperf", "nginx"):
        if not shutil.which(tool):
            sys.exit(f"{tool} is not installed (apt-get install -y sockperf nginx libnginx-mod-stream)")
    policies = a.policy or ["fwd-cpu1"]
    a.out.mkdir(parents=True, exist_ok=True)
    work = Path(f"/tmp/udp_pingpong.{os.getpid()}")
    work.mkdir()
    perf = perf_works()
    if not perf:
        print("perf with syscall tracepoints is not available: syscall counts left empty", file=sys.stderr)
    rows: list = []
    with open(a.out / "raw.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=FIELDS)
        w.writeheader()
        for pol in policies:
            run_policy(pol, a, rows, w, perf, work)
    (a.out / "summary-table.md").write_text(summary(rows, policies) + "\n")
    print(summary(rows, policies))
    for log in sorted(work.glob("ringfwd-*.log")):
        stats = [l for l in log.read_text().splitlines() if "final stats" in l]
        if stats:
            turns = re.search(r"loop_turns=(\d+) completions=(\d+)", stats[-1])
            dg = re.search(r"udp_datagrams_c2u=(\d+) udp_datagrams_u2c=(\d+)", stats[-1])
            if turns and dg:
                n = int(dg.group(1)) + int(dg.group(2))
                print(f"{log.name}: loop_turns {turns.group(1)}, completions {turns.group(2)}, "
                      f"datagrams forwarded {n}: {int(turns.group(1)) / max(n, 1):.2f} turns per datagram")


if __name__ == "__main__":
    main()
