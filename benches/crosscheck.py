#!/usr/bin/env python3
"""Cross-check of `ringfwd bench` against the tools people use instead.

Same machine, same pinning (client on CPU 0, server on CPU 1), loopback, the
pairs interleaved: for each repetition every pair runs the reference tool and
then ringfwd, so drift in the machine's load hits both alike.

  udp-rr      sockperf pp -> sockperf sr           vs  ringfwd bench udp-rr --flows 1 -> ringfwd echo --udp
  tcp-rr      sockperf pp --tcp -> sockperf sr --tcp  vs  ringfwd bench tcp-rr --connections 1 -> ringfwd echo --tcp
  stream-up   iperf3 -c -> iperf3 -s               vs  ringfwd bench tcp-stream --direction up -> ringfwd echo --tcp-sink
  stream-down iperf3 -c -R -> iperf3 -s            vs  ringfwd bench tcp-stream --direction down -> ringfwd echo --tcp-source
  stream-both iperf3 -c --bidir -> iperf3 -s       vs  ringfwd bench tcp-stream --direction both -> ringfwd echo --tcp

Request/response: 1 flow or connection, 64 B, closed loop; sockperf reports the
full round trip (`--full-rtt`), ringfwd bench its round-trip latency. Bulk: 1
connection (iperf3 --bidir: one each way). Writes setup.md, raw.csv and
summary.md (medians and ringfwd/tool ratios) under
bench-results/<date>-<host>-crosscheck/. Ports 15201-15210 on 127.0.0.1.

Usage: benches/crosscheck.py [--binary target/release/ringfwd] [--reps 3] [--duration 3] [--out DIR]
"""

import argparse
import csv
import datetime as dt
import json
import os
import platform
import re
import shlex
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
HOST = "127.0.0.1"
CLIENT_CPU, SERVER_CPU = "0", "1"
PORT = 15201
COMMANDS: list[str] = []
ANSI = re.compile(r"\x1b\[[0-9;]*m")  # sockperf colours its output


def ts(cpu: str) -> list[str]:
    return ["taskset", "-c", cpu]


def loadavg() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def port_free(port: int, proto: str) -> bool:
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM if proto == "tcp" else socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        s.bind((HOST, port))
        return True
    except OSError:
        return False
    finally:
        s.close()


def wait_listening(port: int, proto: str, proc: subprocess.Popen, timeout: float = 10) -> None:
    """Until something listens on the port (a bind that fails), without connecting: iperf3 -s
    would count a bare connection as its test."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited ({proc.returncode}) before listening on {port}")
        if not port_free(port, proto):
            return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listening on {proto} {HOST}:{port} after {timeout:.0f}s")


class Server:
    def __init__(self, argv: list[str], port: int, proto: str):
        # a leftover listener would answer in the server's place
        if not port_free(port, proto):
            raise RuntimeError(f"{proto} {HOST}:{port} is in use (see `ss -ltnup`): not starting {argv[3]}")
        COMMANDS.append(shlex.join(argv))
        self.p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                  stderr=subprocess.DEVNULL)
        wait_listening(port, proto, self.p)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if self.p.poll() is None:
            self.p.send_signal(2)  # SIGINT: ringfwd drains, sockperf/iperf3 exit
            try:
                self.p.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.p.kill()
                self.p.wait()


def run(argv: list[str], timeout: float) -> subprocess.CompletedProcess:
    COMMANDS.append(shlex.join(argv))
    return subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=timeout)


# ---- the reference tools


def sockperf(tcp: bool, port: int, dur: float) -> dict:
    proto = ["--tcp"] if tcp else []
    with Server(ts(SERVER_CPU) + ["sockperf", "sr", "-i", HOST, "-p", str(port)] + proto, port,
                "tcp" if tcp else "udp"):
        r = run(ts(CLIENT_CPU) + ["sockperf", "pp", "-i", HOST, "-p", str(port), "-m", "64",
                                  "-t", str(round(dur)), "--full-rtt"] + proto, dur + 30)
    out = ANSI.sub("", r.stdout + r.stderr)
    valid = re.search(r"\[Valid Duration\] RunTime=([\d.]+) sec; SentMessages=(\d+); ReceivedMessages=(\d+)", out)
    p50 = re.search(r"percentile 50\.000 =\s*([\d.]+)", out)
    avg = re.search(r"avg-rtt=([\d.]+)", out)
    if r.returncode != 0 or not valid or not p50:
        return {"ok": False, "error": out.strip()[-300:]}
    secs, recv = float(valid.group(1)), int(valid.group(3))
    return {"ok": True, "rate": recv / secs, "p50_us": float(p50.group(1)),
            "avg_us": float(avg.group(1)) if avg else None}


def iperf3(direction: str, port: int, dur: float, warm: float) -> dict:
    extra = {"up": [], "down": ["-R"], "both": ["--bidir"]}[direction]
    with Server(ts(SERVER_CPU) + ["iperf3", "-s", "-B", HOST, "-p", str(port), "-1"], port, "tcp"):
        r = run(ts(CLIENT_CPU) + ["iperf3", "-c", HOST, "-p", str(port), "-t", str(round(dur)),
                                  "-O", str(round(warm)), "-J"] + extra, dur + warm + 30)
    try:
        end = json.loads(r.stdout)["end"]
    except (ValueError, KeyError):
        return {"ok": False, "error": (r.stdout + r.stderr).strip()[-300:]}
    fwd = end.get("sum_received", {}).get("bits_per_second", 0.0)
    back = end.get("sum_received_bidir_reverse", {}).get("bits_per_second", 0.0)
    up, down = (back, fwd) if direction == "down" else (fwd, back)
    return {"ok": fwd > 0, "gbps": (up + down) / 1e9, "up_gbps": up / 1e9, "down_gbps": down / 1e9}


# ---- ringfwd


def ringfwd(binary: Path, workload: str, port: int, dur: float, warm: float) -> dict:
    mode, flag, proto, args = {
        "udp-rr": ("udp-rr", "--udp", "udp", ["--flows", "1", "--size", "64"]),
        "tcp-rr": ("tcp-rr", "--tcp", "tcp", ["--connections", "1", "--size", "64"]),
        "stream-up": ("tcp-stream", "--tcp-sink", "tcp", ["--connections", "1", "--direction", "up"]),
        "stream-down": ("tcp-stream", "--tcp-source", "tcp", ["--connections", "1", "--direction", "down"]),
        "stream-both": ("tcp-stream", "--tcp", "tcp", ["--connections", "1", "--direction", "both"]),
    }[workload]
    server = ts(SERVER_CPU) + [str(binary), "echo", flag, f"{HOST}:{port}", "--shards", "1", "--cpus",
                               SERVER_CPU, "--log-level", "warn"]
    with tempfile.NamedTemporaryFile(suffix=".json") as j:
        with Server(server, port, proto):
            r = run(ts(CLIENT_CPU) + [str(binary), "bench", mode, "--target", f"{HOST}:{port}"] + args
                    + ["--shards", "1", "--cpus", CLIENT_CPU, "--duration", f"{round(dur * 1000)}ms", "--warmup", f"{round(warm * 1000)}ms",
                       "--quiet", "--json", j.name], dur + warm + 30)
        try:
            d = json.loads(Path(j.name).read_text())
        except ValueError:
            return {"ok": False, "error": (r.stdout + r.stderr).strip()[-300:]}
    row = {"ok": bool(d.get("ok")) and r.returncode == 0,
           "errors": " ".join(f"{k}={v}" for k, v in (d.get("errors") or {}).items() if v)}
    if mode == "tcp-stream":
        bps = d.get("bits_per_second") or {}
        row.update(gbps=bps.get("total", 0) / 1e9, up_gbps=bps.get("up", 0) / 1e9,
                   down_gbps=bps.get("down", 0) / 1e9)
    else:
        lat = d.get("latency_us") or {}
        row.update(rate=d.get("rate"), p50_us=lat.get("p50"), avg_us=lat.get("mean"))
    if not row["ok"]:
        row["error"] = str(d.get("failure") or d.get("first_error") or r.stderr.strip()[-300:])
    return row


PAIRS = [
    ("udp-rr", "sockperf pp → sockperf sr (UDP)", "udp-rr → ringfwd echo --udp", "rate"),
    ("tcp-rr", "sockperf pp --tcp → sockperf sr --tcp", "tcp-rr → ringfwd echo --tcp", "rate"),
    ("stream-up", "iperf3 -c → iperf3 -s", "tcp-stream up → ringfwd echo --tcp-sink", "gbps"),
    ("stream-down", "iperf3 -c -R → iperf3 -s", "tcp-stream down → ringfwd echo --tcp-source", "gbps"),
    ("stream-both", "iperf3 -c --bidir → iperf3 -s", "tcp-stream both → ringfwd echo --tcp", "gbps"),
]


def reference(workload: str, port: int, dur: float, warm: float) -> dict:
    if workload == "udp-rr":
        return sockperf(False, port, dur)
    if workload == "tcp-rr":
        return sockperf(True, port, dur)
    return iperf3(workload.removeprefix("stream-"), port, dur, warm)


# ---- reports

FIELDS = ["rep", "workload", "generator", "ok", "rate", "p50_us", "avg_us", "gbps", "up_gbps", "down_gbps",
          "load_before", "errors", "error"]


def med(rows: list[dict], key: str):
    vals = [r[key] for r in rows if r.get("ok") and r.get(key) is not None]
    return statistics.median(vals) if vals else None


def span(rows: list[dict], key: str, fmt: str) -> str:
    vals = [r[key] for r in rows if r.get("ok") and r.get(key) is not None]
    if not vals:
        return "–"
    return (fmt.format(min(vals)) + "–" + fmt.format(max(vals))) if len(vals) > 1 else fmt.format(vals[0])


def summary_md(rows: list[dict], meta: dict) -> str:
    L = [f"# ringfwd bench vs sockperf and iperf3 — {meta['date']} on {meta['host']}", "",
         f"{meta['reps']} interleaved repetitions of {meta['duration']} s (+ {meta['warmup']} s warmup for "
         "ringfwd and iperf3; sockperf has its own 400 ms), client on CPU 0, server on CPU 1, loopback. "
         f"Load average before: {meta['load_before']}, after: {meta['load_after']}; every row of raw.csv "
         "has the load before it. The machine is shared: compare ringfwd with the tool beside it (the "
         "ratio), not across days.", "",
         "## Request/response, 1 flow / connection, 64 B", "",
         "| workload | reference | msg/s (median, range) | p50 RTT µs | ringfwd bench | msg/s | p50 RTT µs | "
         "ratio (ringfwd / reference, msg/s) |", "|---|---|---:|---:|---|---:|---:|---:|"]
    for w, ref_name, rf_name, metric in PAIRS:
        ref = [r for r in rows if r["workload"] == w and r["generator"] != "ringfwd"]
        rf = [r for r in rows if r["workload"] == w and r["generator"] == "ringfwd"]
        a, b = med(ref, metric), med(rf, metric)
        ratio = f"{b / a:.2f}×" if a and b else "–"
        if metric == "rate":
            L.append(f"| {w} | {ref_name} | {span(ref, 'rate', '{:,.0f}')} | {span(ref, 'p50_us', '{:.0f}')} | "
                     f"{rf_name} | {span(rf, 'rate', '{:,.0f}')} | {span(rf, 'p50_us', '{:.0f}')} | {ratio} |")
    L += ["", "## Bulk, 1 connection (iperf3 --bidir: one each way)", "",
          "| workload | reference | Gbit/s (range) | up / down (median) | ringfwd bench | Gbit/s | "
          "up / down (median) | ratio (ringfwd / iperf3) |", "|---|---|---:|---:|---|---:|---:|---:|"]
    for w, ref_name, rf_name, metric in PAIRS:
        if metric != "gbps":
            continue
        ref = [r for r in rows if r["workload"] == w and r["generator"] != "ringfwd"]
        rf = [r for r in rows if r["workload"] == w and r["generator"] == "ringfwd"]
        a, b = med(ref, "gbps"), med(rf, "gbps")
        ratio = f"{b / a:.2f}×" if a and b else "–"

        def ud(rs):
            u, d = med(rs, "up_gbps"), med(rs, "down_gbps")
            return "–" if u is None else f"{u:.1f} / {d:.1f}"
        L.append(f"| {w} | {ref_name} | {span(ref, 'gbps', '{:.1f}')} | {ud(ref)} | {rf_name} | "
                 f"{span(rf, 'gbps', '{:.1f}')} | {ud(rf)} | {ratio} |")
    bad = [r for r in rows if not r.get("ok")]
    L += ["", f"Failed runs: {len(bad)}." + "".join(
        f"\n- rep {r['rep']} {r['workload']} {r['generator']}: {r.get('error') or r.get('errors')}" for r in bad)]
    L += ["", "The commands are in setup.md; every run's figures in raw.csv."]
    return "\n".join(L) + "\n"


def setup_md(meta: dict) -> str:
    cpu = next((l.split(":", 1)[1].strip() for l in Path("/proc/cpuinfo").read_text().splitlines()
                if l.startswith("model name")), "?")

    def version(argv):
        try:
            r = subprocess.run(argv, capture_output=True, text=True, timeout=10)
            return (r.stdout + r.stderr).strip().splitlines()[0]
        except (OSError, IndexError, subprocess.TimeoutExpired):
            return "?"
    L = [f"# Setup — crosscheck {meta['date']} on {meta['host']}", "",
         f"- command: `{meta['command']}`",
         f"- started {meta['started']}, finished {meta['finished']}",
         f"- CPU: {cpu}, {os.cpu_count()} cores (vCPUs); kernel {platform.release()}",
         f"- load average before: {meta['load_before']}; after: {meta['load_after']}",
         f"- ringfwd: `{version([meta['binary'], '--version'])}` ({meta['binary']})",
         f"- sockperf: `{ANSI.sub('', version(['sockperf', '--version']))}`",
         f"- iperf3: `{version(['iperf3', '--version'])}`",
         "- pinning: every client under `taskset -c 0` (ringfwd bench also `--shards 1 --cpus 0`), every "
         "server under `taskset -c 1` (ringfwd echo also `--shards 1 --cpus 1`)",
         f"- order: for each of {meta['reps']} repetitions, each pair in turn, the reference tool then ringfwd", "",
         "## Commands (in the order they ran)", "", "```"] + COMMANDS + ["```"]
    return "\n".join(L) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--binary", type=Path, default=REPO / "target/release/ringfwd")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--duration", type=float, default=3.0)
    ap.add_argument("--warmup", type=float, default=1.0)
    ap.add_argument("--only", help="comma-separated workloads: " + ",".join(p[0] for p in PAIRS))
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    missing = [t for t in ("sockperf", "iperf3", "taskset") if not shutil.which(t)]
    if missing:
        print(f"crosscheck.py: {' '.join(missing)} not installed: apt-get install -y {' '.join(missing)}",
              file=sys.stderr)
        return 2
    if not args.binary.exists():
        print(f"crosscheck.py: no ringfwd binary at {args.binary}: cargo build --release, or --binary PATH",
              file=sys.stderr)
        return 2
    if (os.cpu_count() or 1) < 2:
        print("crosscheck.py: needs 2 CPUs (client on 0, server on 1)", file=sys.stderr)
        return 2
    pairs = PAIRS
    if args.only:
        want = {w.strip() for w in args.only.split(",")}
        pairs = [p for p in PAIRS if p[0] in want]
    now = dt.datetime.now()
    host = socket.gethostname().split(".")[0]
    out = args.out or REPO / "bench-results" / f"{now:%Y-%m-%d}-{host}-crosscheck"
    out.mkdir(parents=True, exist_ok=True)
    meta = {"date": f"{now:%Y-%m-%d}", "host": host, "reps": args.reps, "duration": args.duration,
            "warmup": args.warmup, "load_before": loadavg(), "started": f"{now:%Y-%m-%d %H:%M:%S}",
            "binary": str(args.binary.resolve()), "command": shlex.join(["benches/crosscheck.py"] + sys.argv[1:])}
    rows = []
    for rep in range(1, args.reps + 1):
        for i, (w, ref_name, _, _) in enumerate(pairs):
            port = PORT + i
            for gen in ("reference", "ringfwd"):
                load = loadavg()
                try:
                    if gen == "ringfwd":
                        r = ringfwd(args.binary, w, port, args.duration, args.warmup)
                    else:
                        r = reference(w, port, args.duration, args.warmup)
                except (RuntimeError, subprocess.TimeoutExpired) as e:
                    r = {"ok": False, "error": str(e)}
                name = "ringfwd" if gen == "ringfwd" else ref_name.split()[0]
                r.update(rep=rep, workload=w, generator=name, load_before=load)
                rows.append(r)
                shown = r.get("rate") or r.get("gbps")
                print(f"rep {rep} {w:12} {name:9} {'ok' if r['ok'] else 'FAILED'} {shown} "
                      f"{r.get('error', '')}", flush=True)
    meta["load_after"] = loadavg()
    meta["finished"] = f"{dt.datetime.now():%H:%M:%S}"
    with open(out / "raw.csv", "w", newline="") as f:
        wr = csv.DictWriter(f, FIELDS, extrasaction="ignore")
        wr.writeheader()
        for r in rows:
            wr.writerow({k: (round(v, 3) if isinstance(v, float) else v) for k, v in r.items()})
    (out / "summary.md").write_text(summary_md(rows, meta))
    (out / "setup.md").write_text(setup_md(meta))
    print(f"results in {out}")
    return 0 if all(r.get("ok") for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
