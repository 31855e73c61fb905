#!/usr/bin/env python3
"""DNS-shaped UDP forwarding: one session per request, side by side.

With `max_responses = 1` (NGINX: `proxy_responses 1`) every query is its own
session: the forwarder opens, connects and closes one upstream socket per
request. This measures that churn, for ringfwd and NGINX, against direct and
against the same forwarders keeping sessions open (no response limit), with
`ringfwd bench udp-rr` (64 B requests, closed loop) and a `ringfwd echo --udp`
upstream. Repetitions are interleaved.

Layout (pinned, as benches/compare.py's): each forwarder on CPU 0 (ringfwd 1
shard, NGINX 1 worker), the generator and the upstream on CPU 1. Forwarder CPU
is read from a cpuacct cgroup per forwarder (every thread, io-wq included).

Writes DIR/raw.csv, DIR/summary.md, DIR/setup.md (machine, versions, every
command and config). Every process it starts is ended by its PID.

    benches/dns.py --bin target/release/ringfwd --out DIR [--reps 3] [--duration 3] [--warmup 1]
               [--flows 1,100] [--baseline-bin OLD]

--baseline-bin adds `ringfwd-per-request-baseline`: the same per-request
forwarder run by another build, interleaved with the rest (an A/B of a change).
"""

import argparse
import csv
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import compare  # noqa: E402  (peer installation and NGINX's stream module)
import splice  # noqa: E402  (process handling with cpuacct groups, per-CPU busy time)

LOOPBACK = "127.0.0.1"
UPSTREAM = 23600  # below the ephemeral range, clear of compare.py and splice.py
FWD_CPU, LOAD_CPU = 0, 1

# (name, kind, per-request sessions?, port)
TARGETS = [
    ("direct", "direct", False, UPSTREAM),
    ("ringfwd-per-request", "ringfwd", True, UPSTREAM + 10),
    ("ringfwd-kept", "ringfwd", False, UPSTREAM + 11),
    ("nginx-per-request", "nginx", True, UPSTREAM + 20),
    ("nginx-kept", "nginx", False, UPSTREAM + 21),
]
BASELINE = ("ringfwd-per-request-baseline", "ringfwd", True, UPSTREAM + 12)
COMMANDS: list[str] = []


def log(msg: str) -> None:
    print(time.strftime("%H:%M:%S"), msg, flush=True)


class Proc(splice.Proc):
    """A process we started (splice.py's, stopped the same way), optionally in
    its own cpuacct cgroup."""

    CG_PREFIX = "ringfwd-dns"

    def __init__(self, name: str, argv: list[str], logs: Path, cgroup: bool):
        super().__init__(name, argv, logs)
        if cgroup:
            self.into_cgroup()

    def adopt_children(self) -> None:
        """Moves processes forked before the cgroup was joined (NGINX's workers) in too."""
        if self.cg:
            for pid in compare.tree([self.p.pid]):
                (self.cg / "cgroup.procs").write_text(str(pid))


def udp_answers(port: int, proc: Proc, timeout: float = 10.0) -> None:
    """Waits until a datagram to `port` comes back (the forwarder and upstream are up)."""
    deadline = time.time() + timeout
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(0.2)
        while time.time() < deadline:
            if proc.p.poll() is not None:
                raise RuntimeError(f"{proc.name} exited with {proc.p.returncode}; see its log")
            s.sendto(b"ping", (LOOPBACK, port))
            try:
                if s.recv(64) == b"ping":
                    return
            except OSError:
                pass
    raise RuntimeError(f"no UDP answer on {port} after {timeout}s")


def ringfwd_cfg(per_request: bool, port: int) -> str:
    lines = ["# written by benches/dns.py", "[runtime]", "shards = 1", f"cpus = [{FWD_CPU}]",
             'stats_interval = "off"', "", "[[udp]]", 'name = "dns"', f'listen = "{LOOPBACK}:{port}"',
             f'upstreams = ["{LOOPBACK}:{UPSTREAM}"]', 'idle_timeout = "60s"']
    if per_request:
        lines.append("max_responses = 1")
    return "\n".join(lines) + "\n"


def nginx_cfg(module: str, logs: Path, servers: list[tuple[bool, int]]) -> str:
    lines = ["# written by benches/dns.py", f"load_module {module};", "daemon off;",
             "master_process on;", "worker_processes 1;",
             f"worker_cpu_affinity {format(1 << FWD_CPU, 'b')};",
             f"worker_rlimit_nofile {compare.nofile_limit()};", f"pid {logs}/nginx.pid;",
             f"error_log {logs}/nginx-error.log warn;", "", "events {",
             "    worker_connections 16384;", "}", "", "stream {"]
    for per_request, port in servers:
        lines += ["    server {", f"        listen {LOOPBACK}:{port} udp reuseport;",
                  f"        proxy_pass {LOOPBACK}:{UPSTREAM};", "        proxy_timeout 60s;",
                  "        proxy_responses 1;" if per_request
                  else "        # proxy_responses not limited: one session per client socket",
                  "    }"]
    return "\n".join(lines + ["}", ""])


def bench(binary: Path, port: int, flows: int, args, out: Path) -> dict:
    argv = ["taskset", "-c", str(LOAD_CPU), str(binary), "bench", "udp-rr", "--target",
            f"{LOOPBACK}:{port}", "--flows", str(flows), "--size", "64",
            "--duration", f"{round(args.duration * 1000)}ms", "--warmup", f"{round(args.warmup * 1000)}ms",
            "--shards", "1", "--cpus", str(LOAD_CPU), "--quiet", "--json", str(out)]
    COMMANDS.append("[bench] " + " ".join(argv))
    p = subprocess.run(argv, capture_output=True, text=True, timeout=args.duration + args.warmup + 30)
    data = json.loads(out.read_text()) if out.exists() else {}
    return {"exit": p.returncode, "data": data, "stderr": p.stderr[-400:]}


def measure(binary: Path, target, fwd: Proc | None, flows: int, rep: int, args, runs: Path) -> dict:
    name, _, _, port = target
    out = runs / f"udp-rr-{flows}-{name}-{rep}.json"
    c0, t0 = splice.cpu_times(), time.time()
    n0 = fwd.cg_ns() if fwd else None
    res = bench(binary, port, flows, args, out)
    n1 = fwd.cg_ns() if fwd else None
    c1, t1 = splice.cpu_times(), time.time()
    d = res["data"]
    wall = t1 - t0
    secs = float(d.get("elapsed_s") or args.duration)
    lat = d.get("latency_us") or {}
    row = {"workload": f"udp-rr-{flows}", "target": name, "rep": rep, "exit": res["exit"],
           "ok": bool(d.get("ok")) and res["exit"] == 0, "rate": round(d.get("rate") or 0, 1),
           "p50_us": lat.get("p50"), "p99_us": lat.get("p99"), "ops": d.get("ops"),
           "wall_s": round(wall, 3), "error": "" if res["exit"] == 0 else res["stderr"].replace("\n", " | ")}
    if n0 is not None and n1 is not None:
        # Over the whole bench (warmup too), scaled to the measured window.
        row["cpu_s"] = round((n1 - n0) / 1e9 * secs / max(wall, 1e-9), 4)
        if row["ops"]:
            row["cpu_us_per_op"] = round(row["cpu_s"] * 1e6 / row["ops"], 2)
    busy = {k: (c1[k][0] - c0[k][0]) / max(1, c1[k][1] - c0[k][1]) for k in c0}
    row["cpu0_busy"], row["cpu1_busy"] = round(busy.get("cpu0", 0), 3), round(busy.get("cpu1", 0), 3)
    return row


FIELDS = ["workload", "target", "rep", "ok", "exit", "rate", "p50_us", "p99_us", "ops", "cpu_s",
          "cpu_us_per_op", "cpu0_busy", "cpu1_busy", "wall_s", "error"]


def med(rows: list[dict], key: str):
    xs = [r[key] for r in rows if r.get(key) is not None]
    return statistics.median(xs) if xs else None


def spread(rows: list[dict], key: str) -> str:
    xs = [r[key] for r in rows if r.get(key) is not None]
    return f"{min(xs):,.0f}–{max(xs):,.0f}" if xs else "—"


def summarise(rows: list[dict], meta: dict, args) -> str:
    L = [f"# DNS-shaped UDP: a session per request — {meta['date']} on {meta['host']}", "",
         f"`ringfwd bench udp-rr`, 64 B, closed loop; upstream `ringfwd echo --udp`. Pinned: forwarder "
         f"on CPU {FWD_CPU}, generator and upstream on CPU {LOAD_CPU}. {args.reps} interleaved "
         f"repetitions of {args.warmup:g} s warmup + {args.duration:g} s; medians (rate spread min–max). "
         "*per-request*: `max_responses = 1` / `proxy_responses 1`, so every request opens, connects "
         "and closes an upstream socket; *kept*: no response limit, one session per flow for the run. "
         "CPU µs/req is the forwarder's own CPU (cpuacct cgroup) per request. Setup and commands: "
         "[setup.md](setup.md); every run: [raw.csv](raw.csv).", ""]
    for flows in args.flows:
        wl = f"udp-rr-{flows}"
        L += [f"## {wl}", "", "| target | req/s | spread | p50 µs | p99 µs | CPU µs/req | vs NGINX same mode (rate / CPU) | runs ok |",
              "|---|---|---|---|---|---|---|---|"]
        by = {t[0]: [r for r in rows if r["workload"] == wl and r["target"] == t[0] and r["ok"]] for t in TARGETS}
        for name, kind, per_request, _ in TARGETS:
            rs = by[name]
            rate, cpu = med(rs, "rate"), med(rs, "cpu_us_per_op")
            vs = "—"
            if kind == "ringfwd":
                peer = by["nginx-per-request" if per_request else "nginx-kept"]
                pr, pc = med(peer, "rate"), med(peer, "cpu_us_per_op")
                if rate and pr:
                    vs = f"{rate / pr:.2f}× / " + (f"{cpu / pc:.2f}×" if cpu and pc else "—")
            total = len([r for r in rows if r["workload"] == wl and r["target"] == name])
            L.append(f"| {name} | {rate or 0:,.0f} | {spread(rs, 'rate')} | {med(rs, 'p50_us') or '—'} | "
                     f"{med(rs, 'p99_us') or '—'} | {cpu if cpu is not None else '—'} | {vs} | {len(rs)}/{total} |")
        L.append("")
    return "\n".join(L)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bin", type=Path, default=Path("target/release/ringfwd"))
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--duration", type=float, default=3.0)
    ap.add_argument("--warmup", type=float, default=1.0)
    ap.add_argument("--flows", type=lambda s: [int(x) for x in s.split(",")], default=[1, 100])
    ap.add_argument("--baseline-bin", type=Path, help="another ringfwd build to A/B the per-request target with")
    args = ap.parse_args()
    if args.baseline_bin:
        TARGETS.insert(2, BASELINE)
    binary = args.bin.resolve()
    if not binary.exists():
        print(f"{binary} not found: build it with `cargo build --release` or pass --bin", file=sys.stderr)
        return 2
    compare.COMMANDS = COMMANDS
    splice.COMMANDS = COMMANDS
    compare.ensure_peers({"nginx"})
    module = compare.find_stream_module()
    if module is None:
        print("NGINX's stream module not found: apt-get install libnginx-mod-stream", file=sys.stderr)
        return 2
    out = args.out
    logs, runs, configs = out / "logs", out / "runs", out / "configs"
    for d in (logs, runs, configs):
        d.mkdir(parents=True, exist_ok=True)
    procs: list[Proc] = []
    fwd: dict[str, Proc] = {}
    t_start = time.time()
    load_start = Path("/proc/loadavg").read_text().strip()
    try:
        up = Proc("upstream", ["taskset", "-c", str(LOAD_CPU), str(binary), "echo", "--udp",
                               f"{LOOPBACK}:{UPSTREAM}", "--shards", "1", "--cpus", str(LOAD_CPU)], logs, False)
        procs.append(up)
        udp_answers(UPSTREAM, up)
        for name, kind, per_request, port in TARGETS:
            if kind != "ringfwd":
                continue
            cfg = configs / f"{name}.toml"
            cfg.write_text(ringfwd_cfg(per_request, port))
            exe = args.baseline_bin.resolve() if name == BASELINE[0] else binary
            p = Proc(name, [str(exe), "run", "--config", str(cfg)], logs, True)
            procs.append(p)
            fwd[name] = p
            udp_answers(port, p)
        ncfg = configs / "nginx.conf"
        ncfg.write_text(nginx_cfg(module, logs.resolve(), [(t[2], t[3]) for t in TARGETS if t[1] == "nginx"]))
        nginx = Proc("nginx", ["nginx", "-c", str(ncfg.resolve()), "-p", str(logs.resolve())], logs, True)
        procs.append(nginx)
        for name, kind, _, port in TARGETS:
            if kind == "nginx":
                udp_answers(port, nginx)
                nginx.adopt_children()
                fwd[name] = nginx  # one NGINX serves both; the other server idles meanwhile
        rows = []
        for flows in args.flows:
            for rep in range(args.reps):
                for t in TARGETS:
                    log(f"udp-rr-{flows} {t[0]} rep {rep + 1}/{args.reps}")
                    rows.append(measure(binary, t, fwd.get(t[0]), flows, rep, args, runs))
                    r = rows[-1]
                    log(f"  {r['rate']:,.0f} req/s, {r.get('cpu_us_per_op', '—')} CPU µs/req, ok={r['ok']}")
    finally:
        for p in reversed(procs):
            p.stop()
    with open(out / "raw.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=FIELDS, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
    meta = {"cpu": cpu, "cpus": os.cpu_count(), "kernel": platform.release(),
            "loadavg at start": load_start, "loadavg at end": Path("/proc/loadavg").read_text().strip()}
    meta.update(date=time.strftime("%Y-%m-%d"), host=platform.node(),
                nginx=subprocess.run(["nginx", "-v"], capture_output=True, text=True).stderr.strip(),
                ringfwd=subprocess.run([str(binary), "--version"], capture_output=True, text=True).stdout.strip(),
                took_s=round(time.time() - t_start))
    if args.baseline_bin:
        meta["baseline build"] = f"{args.baseline_bin} (run by {BASELINE[0]})"
    (out / "summary.md").write_text(summarise(rows, meta, args))
    setup = [f"# Setup — benches/dns.py, {meta['date']}", ""]
    setup += [f"- {k}: {v}" for k, v in meta.items()]
    setup += ["", "## Commands", "", "```", *COMMANDS, "```", ""]
    for c in sorted(configs.iterdir()):
        setup += [f"## {c.name}", "", "```", c.read_text().rstrip(), "```", ""]
    (out / "setup.md").write_text("\n".join(setup))
    log(f"wrote {out}/summary.md in {round(time.time() - t_start)} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
