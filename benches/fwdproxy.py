#!/usr/bin/env python3
"""Forward proxies side by side: SOCKS5 CONNECT and HTTP CONNECT transactions.

A transaction is what a proxy client does for every short connection: a new
TCP connection to the proxy, the SOCKS5 greeting (no authentication) and a
CONNECT to an IPv4 literal, or an HTTP `CONNECT 127.0.0.1:PORT` head, the
proxy's reply, then a 64-byte request through the tunnel to a
request/response upstream (`ringfwd echo --tcp-rr`: 64 bytes answered with
64), the response, and close. The load client (this script's `client`
subcommand, one process, non-blocking sockets on epoll) keeps --conns such
transactions in flight.

Targets, each one process tree pinned to CPU 0 with one worker where the
program has the notion:
  socks5: ringfwd `[[socks5]]` (`[runtime] shards = 1`), microsocks (one
          process, a thread per connection), Dante `danted` (`-N 1`)
  http:   ringfwd `[[http_connect]]`, tinyproxy (a thread per connection,
          `MaxClients`), squid (`workers 1`, no cache)
  plain:  a ringfwd `[[tcp]]` forward, and `direct` (the client straight to
          the upstream: the ceiling of CPU 1)
The upstream (`ringfwd echo`, one shard) and the client run on CPU 1.
Python is enough for the client: CPU 1's ceiling is the kernel's work for
the client's and the upstream's sockets; a Rust client measured the same
(bench-results/2026-12-06-vm-fwdproxy-rust-client/).

For every group and repetition all of its targets are measured back to back,
the order rotating each repetition, so drift of the shared machine hits all
alike. Per run: transactions per second, errors, latency p50/p99, the
proxy's CPU seconds per 1000 transactions (utime+stime+cutime+cstime of
every process of its tree, /proc/PID/stat, over the client's measured
window) and the client's own CPU (the same, for its process). Writes setup.md, raw.csv and
summary.md under --out; ratios ringfwd/peer of the medians and per
repetition.

    benches/fwdproxy.py --ringfwd target/release/ringfwd \
        --out bench-results/<date>-<host>-fwdproxy [--reps 5] [--duration 5] [--warmup 1]
    benches/fwdproxy.py --only-peers --echo-bin target/release/ringfwd --out /tmp/fp  # no ringfwd targets
    benches/fwdproxy.py ... --rt 1   # a busy shared machine: every process of the bench SCHED_RR

Needs root (apt-get for the peers; Dante and squid switch users). Every
process started here is stopped by PID (its tree, recorded by start time)
when the run ends, fails or is interrupted; every client run is bounded by
its own --duration/--warmup and a timeout.
"""

import argparse
import csv
import errno
import json
import os
import platform
import select
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

UPSTREAM_PORT = 17301
PORTS = {
    "ringfwd-socks5": 17311, "microsocks": 17312, "dante": 17313,
    "ringfwd-http": 17321, "tinyproxy": 17322, "squid": 17323,
    "ringfwd-tcp": 17331, "direct": UPSTREAM_PORT,
}
GROUPS = {
    "socks5": ["ringfwd-socks5", "microsocks", "dante"],
    "http": ["ringfwd-http", "tinyproxy", "squid"],
    # Not proxies: the client's ceiling (straight to the upstream) and a
    # plain ringfwd `[[tcp]]` forward, for what the handshakes add.
    "plain": ["ringfwd-tcp", "direct"],
}
PROTO = {t: g for g, ts in GROUPS.items() for t in ts}
PACKAGES = {"microsocks": "microsocks", "dante": "dante-server", "tinyproxy": "tinyproxy", "squid": "squid"}
DANTE_EXTERNAL = "127.0.0.2"
DANTE_EXTERNAL_HEX = "0200007F:"
PAYLOAD = bytes((i * 7 + 1) & 0xFF for i in range(64))
CLK_TCK = os.sysconf("SC_CLK_TCK")
# A prefix for every process of the bench: ["nice", "-n", N] with --nice,
# ["chrt", "-r", N] with --rt.
NICE = []


# ---------------------------------------------------------------- the client

class Tx:
    __slots__ = ("sock", "phase", "buf", "t0")

    def __init__(self, sock, t0):
        self.sock, self.phase, self.buf, self.t0 = sock, "connecting", b"", t0


def socks5_reply_len(buf):
    """Length of a SOCKS5 reply once its address type is known, else None."""
    if len(buf) < 5:
        return None
    atyp = buf[3]
    if atyp == 1:
        return 10
    if atyp == 4:
        return 22
    if atyp == 3:
        return 7 + buf[4]
    return -1


def client(a):
    """Keep a.conns transactions in flight; print `measuring` after the
    warm-up and one JSON line at the end."""
    phost, pport = a.proxy.rsplit(":", 1)
    proxy = (phost, int(pport))
    thost, tport = a.target.rsplit(":", 1)
    tport = int(tport)
    greet = b"\x05\x01\x00"
    if a.proto == "socks5":
        req = b"\x05\x01\x00\x01" + socket.inet_aton(thost) + tport.to_bytes(2, "big")
    else:
        req = f"CONNECT {thost}:{tport} HTTP/1.1\r\nHost: {thost}:{tport}\r\n\r\n".encode()
    first, first_phase = {"socks5": (greet, "method"), "http": (req, "reply"), "plain": (PAYLOAD, "data")}[a.proto]
    ep = select.epoll()
    conns = {}
    st = {"tx": 0, "err": 0, "lat": [], "errors": {}, "measuring": False}
    EPOLLIN, EPOLLOUT = select.EPOLLIN, select.EPOLLOUT
    mono = time.monotonic

    def fail(fd, why):
        tx = conns.pop(fd)
        tx.sock.close()
        if st["measuring"]:
            st["err"] += 1
            st["errors"][why] = st["errors"].get(why, 0) + 1

    def open_one():
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setblocking(False)
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        rc = s.connect_ex(proxy)
        fd = s.fileno()
        tx = conns[fd] = Tx(s, mono())
        if rc not in (0, errno.EINPROGRESS):
            fail(fd, f"connect: {errno.errorcode.get(rc, rc)}")
            return
        # On loopback the handshake has usually completed inside connect():
        # send the first message at once and skip a poll round for EPOLLOUT.
        try:
            s.send(first)
        except BlockingIOError:
            ep.register(fd, EPOLLOUT)
            return
        except OSError as e:
            fail(fd, f"connect: {errno.errorcode.get(e.errno, e.errno)}")
            return
        tx.phase = first_phase
        ep.register(fd, EPOLLIN)

    def done(fd, tx, now):
        del conns[fd]
        tx.sock.close()
        if st["measuring"]:
            st["tx"] += 1
            st["lat"].append(now - tx.t0)

    def step(fd, ev, now):
        tx = conns.get(fd)
        if tx is None:
            return
        s = tx.sock
        if tx.phase == "connecting":
            e = s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if e:
                fail(fd, f"connect: {errno.errorcode.get(e, e)}")
                return
            ep.modify(fd, EPOLLIN)
            s.send(first)
            tx.phase = first_phase
            return
        try:
            data = s.recv(4096)
        except OSError as e:
            fail(fd, f"recv in {tx.phase}: {errno.errorcode.get(e.errno, e.errno)}")
            return
        if not data:
            fail(fd, f"eof in {tx.phase}")
            return
        buf = tx.buf + data
        if tx.phase == "method":
            if len(buf) < 2:
                tx.buf = buf
                return
            if buf[:2] != b"\x05\x00":
                fail(fd, f"method reply {buf[:2].hex()}")
                return
            tx.buf = b""
            s.send(req)
            tx.phase = "reply"
            return
        if tx.phase == "reply":
            if a.proto == "socks5":
                n = socks5_reply_len(buf)
                if n is None or len(buf) < n:
                    tx.buf = buf
                    return
                if n < 0 or buf[1] != 0:
                    fail(fd, f"socks5 reply {buf[:4].hex()}")
                    return
            else:
                end = buf.find(b"\r\n\r\n")
                if end < 0:
                    if len(buf) > 8192:
                        fail(fd, "http reply head too long")
                        return
                    tx.buf = buf
                    return
                first = buf[:end].split(b"\r\n", 1)[0]
                status = first.split(b" ")
                if len(status) < 2 or status[1] != b"200":
                    fail(fd, "http reply " + first[:40].decode("latin1"))
                    return
                n = end + 4
            buf = buf[n:]
            s.send(PAYLOAD)
            tx.phase = "data"
        if len(buf) >= len(PAYLOAD):
            done(fd, tx, now)
            open_one()
        else:
            tx.buf = buf

    start = mono()
    t_measure = start + a.warmup
    t_end = t_measure + a.duration
    next_sweep = start + 0.1
    for _ in range(a.conns):
        open_one()
    while True:
        now = mono()
        if not st["measuring"] and now >= t_measure:
            st["measuring"] = True
            m0 = now
            print("measuring", flush=True)
        if now >= t_end:
            break
        if now >= next_sweep:
            next_sweep = now + 0.1
            for fd in [fd for fd, tx in conns.items() if now - tx.t0 > a.tx_timeout]:
                fail(fd, "timeout")
                open_one()
        events = ep.poll(0.05)
        now = mono()
        for fd, ev in events:
            try:
                step(fd, ev, now)
            except OSError as e:
                if fd in conns:
                    fail(fd, f"send in {conns[fd].phase}: {errno.errorcode.get(e.errno, e.errno)}")
            # A failed transaction is replaced, so the load stays at a.conns.
            while len(conns) < a.conns:
                open_one()
    m1 = mono()
    print("done", flush=True)
    for tx in conns.values():
        tx.sock.close()
    lat = sorted(st["lat"])

    def pct(p):
        return round(lat[min(len(lat) - 1, int(p * len(lat)))] * 1e6) if lat else None

    print(json.dumps({"tx": st["tx"], "errors": st["err"], "error_kinds": st["errors"],
                      "seconds": m1 - m0, "rate": st["tx"] / (m1 - m0), "p50_us": pct(0.5),
                      "p99_us": pct(0.99)}), flush=True)


# ---------------------------------------------------------------- processes

def proc_stat(pid):
    """(ppid, starttime, cpu ticks incl. reaped children) of a live process, or None."""
    try:
        f = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return int(f[1]), int(f[19]), int(f[11]) + int(f[12]) + int(f[13]) + int(f[14])
    except (OSError, IndexError, ValueError):
        return None


def tree(root):
    """{pid: (starttime, ticks)} of root and all its live descendants."""
    stats = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            s = proc_stat(int(d))
            if s:
                stats[int(d)] = s
    out, todo = {}, [root]
    while todo:
        p = todo.pop()
        if p in stats and p not in out:
            out[p] = (stats[p][1], stats[p][2])
            todo += [c for c, s in stats.items() if s[0] == p]
    return out


def tree_cpu(root):
    """CPU seconds of a process tree (live processes, plus what they reaped)."""
    return sum(t for _, t in tree(root).values()) / CLK_TCK


def cpu_busy():
    """Per-CPU (busy, total) jiffies from /proc/stat."""
    out = {}
    for line in Path("/proc/stat").read_text().splitlines():
        if line.startswith("cpu") and line[3].isdigit():
            f = line.split()
            v = [int(x) for x in f[1:9]]
            idle = v[3] + v[4]
            out[f[0]] = (sum(v) - idle, sum(v))
    return out


class Procs:
    """Every process started here, stopped by PID (and its recorded tree)."""

    def __init__(self, logdir):
        self.logdir, self.procs, self.seen = logdir, [], {}

    def start(self, name, argv, cpu, log=True):
        log = open(self.logdir / f"{name}.log", "w") if log else subprocess.DEVNULL
        p = subprocess.Popen([*NICE, "taskset", "-c", str(cpu), *argv], stdout=log, stderr=subprocess.STDOUT,
                             stdin=subprocess.DEVNULL)
        self.procs.append((name, p))
        return p

    def remember(self, p):
        self.seen.update(tree(p.pid))

    def stop_all(self):
        for _, p in self.procs:
            self.remember(p) if p.poll() is None else None
        for _, p in self.procs:
            if p.poll() is None:
                p.terminate()
        for _, p in self.procs:
            try:
                p.wait(timeout=15)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(timeout=5)
        # Children that outlived their parent (Dante, squid) are ours too:
        # same PID and the same start time as when recorded.
        for pid, (start, _) in self.seen.items():
            s = proc_stat(pid)
            if s and s[1] == start:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass


def port_free(port):
    s = socket.socket()
    try:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", port))
        return True
    except OSError:
        return False
    finally:
        s.close()


def wait_port(p, port, what, timeout=20):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if p.poll() is not None:
            return f"{what} exited with {p.returncode} before listening"
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return None
        except OSError:
            time.sleep(0.1)
    return f"{what} did not listen on {port} within {timeout}s"


# ---------------------------------------------------------------- the peers

def ringfwd_config(target, port):
    kind = "socks5" if target == "ringfwd-socks5" else "http_connect"
    lines = ["[runtime]", "shards = 1", "", f"[[{kind}]]", f'name = "{target}"', f'listen = "127.0.0.1:{port}"',
             "destinations_deny = []"]
    if kind == "http_connect":
        lines.append(f"ports = [{UPSTREAM_PORT}]")
    return "\n".join(lines) + "\n"


def dante_config(port, logdir):
    return f"""logoutput: {logdir}/dante-internal.log
internal: 127.0.0.1 port = {port}
external: {DANTE_EXTERNAL}
socksmethod: none
clientmethod: none
user.privileged: root
user.unprivileged: nobody
client pass {{
    from: 127.0.0.0/8 to: 0.0.0.0/0
}}
socks pass {{
    from: 127.0.0.0/8 to: 127.0.0.0/8
    command: connect
}}
"""


def tinyproxy_config(port, max_clients):
    return f"""Port {port}
Listen 127.0.0.1
Timeout 60
MaxClients {max_clients}
Allow 127.0.0.1
ConnectPort {UPSTREAM_PORT}
LogLevel Error
DisableViaHeader Yes
"""


def squid_config(port, rundir):
    return f"""http_port 127.0.0.1:{port}
workers 1
acl localhost_src src 127.0.0.1/32
acl upstream_port port {UPSTREAM_PORT}
acl CONNECT method CONNECT
http_access allow CONNECT localhost_src upstream_port
http_access deny all
cache deny all
cache_mem 8 MB
access_log none
cache_store_log none
cache_log {rundir}/cache.log
pid_filename {rundir}/squid.pid
coredump_dir {rundir}
shutdown_lifetime 1 seconds
"""


def version(argv):
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=10)
        return (out.stdout + out.stderr).strip().splitlines()[0]
    except (OSError, IndexError, subprocess.TimeoutExpired):
        return "?"


def deb_version(pkg):
    out = subprocess.run(["dpkg-query", "-W", "-f", "${Version}", pkg], capture_output=True, text=True)
    return out.stdout.strip() or "not installed"


def ensure_packages(targets, note):
    missing = [PACKAGES[t] for t in targets if t in PACKAGES and deb_version(PACKAGES[t]) == "not installed"]
    if missing:
        note(f"apt-get install -y {' '.join(missing)}")
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        subprocess.run(["apt-get", "install", "-y", *missing], env=env, capture_output=True, timeout=600)


def start_target(procs, t, a, cfgdir, logdir, configs, commands):
    """Start target t on its port pinned to CPU 0; return (Popen, None) or (None, why)."""
    port = PORTS[t]
    if t == "direct":
        return None, None
    if t == "ringfwd-tcp":
        text = (f'[runtime]\nshards = 1\n\n[[tcp]]\nname = "plain"\nlisten = "127.0.0.1:{port}"\n'
                f'upstreams = ["127.0.0.1:{UPSTREAM_PORT}"]\n')
        path = cfgdir / f"{t}.toml"
        argv = [str(a.ringfwd or a.echo_bin), "run", "--config", str(path), "--cpus", "0", "--log-level", "warn"]
    elif t.startswith("ringfwd-"):
        text = ringfwd_config(t, port)
        path = cfgdir / f"{t}.toml"
        argv = [str(a.ringfwd), "run", "--config", str(path), "--cpus", "0", "--log-level", "warn"]
    elif t == "microsocks":
        text, path = None, None
        argv = ["microsocks", "-i", "127.0.0.1", "-p", str(port)]
    elif t == "dante":
        text = dante_config(port, logdir)
        path = cfgdir / "danted.conf"
        argv = ["danted", "-f", str(path), "-N", "1", "-p", str(logdir / "danted.pid")]
    elif t == "tinyproxy":
        text = tinyproxy_config(port, a.conns * 4)
        path = cfgdir / "tinyproxy.conf"
        argv = ["tinyproxy", "-d", "-c", str(path)]
    elif t == "squid":
        rundir = logdir / "squid-run"
        rundir.mkdir(exist_ok=True)
        shutil.chown(rundir, "proxy", "proxy")
        text = squid_config(port, rundir)
        path = cfgdir / "squid.conf"
        argv = ["squid", "-N", "-f", str(path)]
    else:
        raise ValueError(t)
    if text:
        path.write_text(text)
        configs[t] = (path.name, text)
    commands.append(f"{' '.join(NICE)} taskset -c 0 {' '.join(argv)}".strip())
    # microsocks writes a line per connection with no switch to stop it:
    # /dev/null is the cheapest place for it.
    p = procs.start(t, argv, 0, log=t != "microsocks")
    why = wait_port(p, port, t)
    return (None, why) if why else (p, None)


# ---------------------------------------------------------------- a run

def client_argv(t, duration, warmup, conns):
    return [sys.executable, str(Path(__file__).resolve()), "client", "--proto", PROTO[t],
            "--proxy", f"127.0.0.1:{PORTS[t]}", "--target", f"127.0.0.1:{UPSTREAM_PORT}",
            "--conns", str(conns), "--duration", str(duration), "--warmup", str(warmup)]


def run_client(a, t, duration, warmup, conns, root_pid=None):
    """One client run against target t: its JSON, plus the proxy's and the
    client's CPU and each CPU's busy share over the measured window (between
    the client's `measuring` and `done` lines)."""
    argv = [*NICE, "taskset", "-c", "1", *client_argv(t, duration, warmup, conns)]
    p = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    # The client bounds itself; this is for a client that hangs all the same.
    watchdog = threading.Timer(warmup + duration + 30, p.kill)
    watchdog.start()
    at = {}
    result = None
    try:
        for line in p.stdout:
            if line.startswith(("measuring", "done")):
                key = line.strip()
                at[key] = (tree_cpu(root_pid) if root_pid else None, tree_cpu(p.pid), cpu_busy())
            elif line.startswith("{"):
                result = json.loads(line)
        p.wait()
    finally:
        watchdog.cancel()
    if result is None or "measuring" not in at or "done" not in at:
        return None, f"client failed ({p.returncode}): {p.stderr.read().strip()[-300:]}"
    (pc0, cc0, busy0), (pc1, cc1, busy1) = at["measuring"], at["done"]
    if pc0 is not None:
        result["proxy_cpu_s"] = pc1 - pc0
    result["client_cpu_s"] = cc1 - cc0
    for c in ("cpu0", "cpu1"):
        if c in busy0:
            db, dt = busy1[c][0] - busy0[c][0], busy1[c][1] - busy0[c][1]
            result[f"{c}_busy_pct"] = round(100 * db / dt, 1) if dt else ""
    return result, None


def time_wait_from(addr_hex):
    """TIME_WAIT sockets whose local address is addr_hex (/proc/net/tcp form)."""
    n = 0
    with open("/proc/net/tcp") as f:
        next(f)
        for line in f:
            fields = line.split(None, 4)
            if fields[3] == "06" and fields[1].startswith(addr_hex):
                n += 1
    return n


def settle_dante(note, limit=2000, timeout=75):
    """Wait (bounded) until Dante's TIME_WAIT sockets are few again.

    Dante binds its outgoing socket (port 0) before connecting; a port taken
    that way is closed to every other socket's connect() until its TIME_WAIT
    ends (60 s). After a Dante run of ~25k connections the ephemeral range is
    nearly all such ports, and whatever runs next fails with EADDRNOTAVAIL or
    pays for long port searches, so every Dante run is followed by this."""
    t0 = time.monotonic()
    n = time_wait_from(DANTE_EXTERNAL_HEX)
    while n > limit and time.monotonic() - t0 < timeout:
        time.sleep(2)
        n = time_wait_from(DANTE_EXTERNAL_HEX)
    note(f"after dante: {n} TIME_WAIT sockets from {DANTE_EXTERNAL} ({time.monotonic() - t0:.0f} s waited)")


def wait_quiet(a, note):
    deadline = time.monotonic() + a.quiet_wait
    while True:
        l1 = os.getloadavg()[0]
        if l1 < a.quiet_load:
            note(f"quiet: 1-min load {l1:.2f} < {a.quiet_load}")
            return
        if time.monotonic() > deadline:
            note(f"not quiet after {a.quiet_wait}s (1-min load {l1:.2f}); running anyway")
            return
        time.sleep(10)


def other_cpu_users():
    """The top CPU users right now (`ps`), for the record."""
    out = subprocess.run(["ps", "-eo", "pcpu,psr,comm", "--sort=-pcpu"], capture_output=True, text=True)
    return [ln.strip() for ln in out.stdout.splitlines()[1:8]]


def main():
    if len(sys.argv) > 1 and sys.argv[1] == "client":
        cp = argparse.ArgumentParser(prog="fwdproxy.py client")
        cp.add_argument("client")
        cp.add_argument("--proto", choices=["socks5", "http", "plain"], required=True)
        cp.add_argument("--proxy", required=True)
        cp.add_argument("--target", required=True)
        cp.add_argument("--conns", type=int, default=50)
        cp.add_argument("--duration", type=float, default=5)
        cp.add_argument("--warmup", type=float, default=1)
        cp.add_argument("--tx-timeout", type=float, default=5)
        client(cp.parse_args())
        return
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ringfwd", type=Path, help="the ringfwd binary under test (with [[socks5]] / [[http_connect]])")
    ap.add_argument("--ringfwd-note", default="", help="where the binary comes from (recorded in setup.md)")
    ap.add_argument("--echo-bin", type=Path, help="ringfwd binary for the upstream (default: --ringfwd)")
    ap.add_argument("--only-peers", action="store_true", help="leave the ringfwd targets out")
    ap.add_argument("--targets", help="comma-separated subset of: " + ",".join(PORTS))
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--duration", type=float, default=5.0)
    ap.add_argument("--warmup", type=float, default=1.0)
    ap.add_argument("--conns", type=int, default=50, help="transactions in flight")
    ap.add_argument("--quiet-load", type=float, default=1.5, help="1-min load average to wait for before measuring")
    ap.add_argument("--quiet-wait", type=float, default=300, help="wait at most this long (s) for it")
    ap.add_argument("--nice", type=int, default=0,
                    help="run every process of the bench (proxies, upstream, client) at this nice value, e.g. -10 "
                         "on a machine others keep busy, so the figures are less a measure of the scheduler's share")
    ap.add_argument("--rt", type=int, default=0,
                    help="run every process of the bench SCHED_RR at this priority (chrt -r N; the kernel's RT "
                         "throttling still leaves others 5%%): on a machine others keep busy, wake-ups of the "
                         "proxy and the client then wait for no one's time slice")
    a = ap.parse_args()
    if a.nice:
        NICE[:] = ["nice", "-n", str(a.nice)]
    if a.rt:
        NICE[:] = ["chrt", "-r", str(a.rt)]
    echo_bin = a.echo_bin or a.ringfwd
    if not echo_bin or (not a.only_peers and not a.ringfwd):
        ap.error("--ringfwd is required (or --only-peers with --echo-bin)")
    targets = [t for t in PORTS if not (a.only_peers and t in ("ringfwd-socks5", "ringfwd-http"))]
    if a.targets:
        targets = [t for t in targets if t in a.targets.split(",")]
    a.out.mkdir(parents=True, exist_ok=True)
    cfgdir, logdir = a.out / "configs", a.out / "logs"
    cfgdir.mkdir(exist_ok=True)
    logdir.mkdir(exist_ok=True)
    os.chmod(logdir, 0o777)  # Dante's and squid's unprivileged children write here
    notes, commands, configs, failed = [], [], {}, {}

    def note(msg):
        notes.append(f"{time.strftime('%H:%M:%S')} {msg}")
        print(msg, flush=True)

    ensure_packages(targets, note)
    busy = [p for p in [UPSTREAM_PORT, *(PORTS[t] for t in targets)] if not port_free(p)]
    if busy:
        sys.exit(f"fwdproxy.py: ports already in use: {busy}")
    started = time.strftime("%Y-%m-%d %H:%M:%S")
    procs = Procs(logdir)
    rows = []
    load_at_start = quiet_load = None
    interrupted = None
    try:
        echo_argv = [str(echo_bin), "echo", "--log-level", "warn", "--shards", "1", "--cpus", "1",
                     "--tcp-rr", f"127.0.0.1:{UPSTREAM_PORT}", "--request-size", "64", "--response-size", "64"]
        commands.append(f"{' '.join(NICE)} taskset -c 1 {' '.join(echo_argv)}".strip())
        echo = procs.start("upstream", echo_argv, 1)
        why = wait_port(echo, UPSTREAM_PORT, "upstream")
        if why:
            sys.exit(f"fwdproxy.py: {why}")
        live = {}
        for t in targets:
            p, why = start_target(procs, t, a, cfgdir, logdir, configs, commands)
            if why:
                failed[t] = why
                note(f"{t}: not started: {why}")
                continue
            if p:
                procs.remember(p)
            res, err = run_client(a, t, 0.5, 0.2, 2, p.pid if p else None)
            if err or not res or res["tx"] == 0 or res["errors"]:
                failed[t] = f"check failed: {err or res}"
                note(f"{t}: check failed: {err or res}")
                continue
            live[t] = p
            note(f"{t}: started (pid {p.pid if p else '-'}), check passed ({res['tx']} tx)")
        load_at_start = os.getloadavg()
        wait_quiet(a, note)
        quiet_load = (os.getloadavg(), other_cpu_users())
        for group, members in GROUPS.items():
            ts = [t for t in members if t in live]
            if not ts:
                continue
            for rep in range(a.reps):
                order = ts[rep % len(ts):] + ts[:rep % len(ts)]
                for pos, t in enumerate(order):
                    if live[t]:
                        procs.remember(live[t])
                    load = os.getloadavg()[0]
                    res, err = run_client(a, t, a.duration, a.warmup, a.conns, live[t].pid if live[t] else None)
                    row = {"group": group, "target": t, "rep": rep, "position": pos, "tx": "", "errors": "",
                           "rate": "", "p50_us": "", "p99_us": "", "proxy_cpu_s": "",
                           "proxy_cpu_s_per_1000tx": "", "proxy_cpu_pct": "", "client_cpu_s": "", "client_cpu_s_per_1000tx": "",
                           "cpu0_busy_pct": "", "cpu1_busy_pct": "", "load1": round(load, 2), "error": err or ""}
                    if res:
                        tx = res["tx"]
                        row.update(tx=tx, errors=res["errors"], rate=round(res["rate"], 1), p50_us=res["p50_us"],
                                   p99_us=res["p99_us"], client_cpu_s=round(res["client_cpu_s"], 3),
                                   cpu0_busy_pct=res.get("cpu0_busy_pct", ""),
                                   cpu1_busy_pct=res.get("cpu1_busy_pct", ""),
                                   error=json.dumps(res["error_kinds"]) if res["error_kinds"] else "")
                        if "proxy_cpu_s" in res:
                            row["proxy_cpu_s"] = round(res["proxy_cpu_s"], 3)
                            row["proxy_cpu_pct"] = round(100 * res["proxy_cpu_s"] / res["seconds"], 1)
                        if tx:
                            if "proxy_cpu_s" in res:
                                row["proxy_cpu_s_per_1000tx"] = round(res["proxy_cpu_s"] * 1000 / tx, 4)
                            row["client_cpu_s_per_1000tx"] = round(res["client_cpu_s"] * 1000 / tx, 4)
                    rows.append(row)
                    if t == "dante":
                        settle_dante(note)
                    print(f"{group} rep {rep} {t}: {row['rate']} tx/s, {row['errors']} errors, "
                          f"proxy {row['proxy_cpu_s_per_1000tx']} CPU-s/1000tx {row['error']}", flush=True)
    except KeyboardInterrupt:
        interrupted = "interrupted"
    finally:
        procs.stop_all()
    finished = time.strftime("%Y-%m-%d %H:%M:%S")
    write_results(a, targets, rows, failed, notes, commands, configs, started, finished,
                  load_at_start, quiet_load, interrupted)
    return 1 if interrupted else 0


def med(xs):
    xs = [float(x) for x in xs if x not in ("", None)]
    return statistics.median(xs) if xs else float("nan")


def write_results(a, targets, rows, failed, notes, commands, configs, started, finished,
                  load_at_start, quiet_load, interrupted):
    if rows:
        with open(a.out / "raw.csv", "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(rows[0].keys()))
            w.writeheader()
            w.writerows(rows)
    lines = ["# Forward proxies: SOCKS5 CONNECT and HTTP CONNECT transactions", "",
             f"ringfwd = `{a.ringfwd}` {a.ringfwd_note}" if a.ringfwd else "ringfwd targets left out (`--only-peers`)",
             "", f"{a.reps} repetitions × ({a.warmup:g} s warm-up + {a.duration:g} s), {a.conns} transactions in "
             "flight; proxy on CPU 0, client and upstream on CPU 1. A transaction: connect, handshake, 64 B "
             "request and 64 B response through the tunnel, close.", "",
             "| group | target | median tx/s | min–max tx/s | errors (all reps) | p50 / p99 µs | proxy CPU-s per 1000 tx | "
             "proxy CPU % | client CPU-s per 1000 tx | CPU 0 busy % | CPU 1 busy % |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for group, members in GROUPS.items():
        for t in members:
            if t not in targets:
                continue
            rs = [r for r in rows if r["target"] == t and r["rate"] != ""]
            if not rs:
                lines.append(f"| {group} | {t} | failed: {failed.get(t, 'no runs')} | | | | | | | | |")
                continue
            rates = [float(r["rate"]) for r in rs]
            errs = sum(int(r["errors"] or 0) for r in rs)
            lines.append(f"| {group} | {t} | {med(rates):.0f} | {min(rates):.0f}–{max(rates):.0f} | {errs} | "
                         f"{med(r['p50_us'] for r in rs):.0f} / {med(r['p99_us'] for r in rs):.0f} | "
                         f"{med(r['proxy_cpu_s_per_1000tx'] for r in rs):.4f} | "
                         f"{med(r['proxy_cpu_pct'] for r in rs):.0f} | "
                         f"{med(r['client_cpu_s_per_1000tx'] for r in rs):.4f} | "
                         f"{med(r['cpu0_busy_pct'] for r in rs):.0f} | {med(r['cpu1_busy_pct'] for r in rs):.0f} |")
    ratio_lines = ["", "## ringfwd ÷ peer", "",
                   "| group | peer | tx/s ratio (medians) | tx/s ratio per repetition (min–max) | "
                   "proxy CPU per tx ratio (medians) | CPU ratio per repetition (min–max) |",
                   "|---|---|---|---|---|---|"]
    have_ratio = False
    for group, members in GROUPS.items():
        if group == "plain":
            continue
        base = members[0]
        b = [r for r in rows if r["target"] == base and r["rate"] != ""]
        if not b:
            continue
        for t in members[1:]:
            p = [r for r in rows if r["target"] == t and r["rate"] != ""]
            if not p:
                continue
            have_ratio = True
            rr, cr = [], []
            for rep in range(a.reps):
                x = [r for r in b if r["rep"] == rep]
                y = [r for r in p if r["rep"] == rep]
                if x and y and float(y[0]["rate"]) > 0:
                    rr.append(float(x[0]["rate"]) / float(y[0]["rate"]))
                    if x[0]["proxy_cpu_s_per_1000tx"] != "" and y[0]["proxy_cpu_s_per_1000tx"] not in ("", 0, 0.0):
                        cr.append(float(x[0]["proxy_cpu_s_per_1000tx"]) / float(y[0]["proxy_cpu_s_per_1000tx"]))
            rate_ratio = med(r["rate"] for r in b) / med(r["rate"] for r in p)
            cpu_ratio = med(r["proxy_cpu_s_per_1000tx"] for r in b) / med(r["proxy_cpu_s_per_1000tx"] for r in p)
            ratio_lines.append(
                f"| {group} | {t} | {rate_ratio:.2f} | "
                f"{(f'{min(rr):.2f}–{max(rr):.2f}' if rr else '-')} | {cpu_ratio:.2f} | "
                f"{(f'{min(cr):.2f}–{max(cr):.2f}' if cr else '-')} |")
    if have_ratio:
        lines += ratio_lines
    lines += ["", "Proxy CPU: utime+stime+cutime+cstime summed over the proxy's process tree "
              "(/proc/PID/stat, 100 Hz ticks) over the client's measured window, per 1000 completed transactions; "
              "proxy CPU %: the same over the window's wall time (near 100%, or 95% under `--rt` where the kernel's "
              "RT throttling stops there, = the "
              "proxy, alone on CPU 0, was the bottleneck; well below while CPU 1 is ~100% busy = the client + "
              "upstream on CPU 1 were, and that target's tx/s is a lower bound). CPU 0/1 busy: /proc/stat over "
              "the same window, other agents' load included. `plain` is not a proxy: `direct` is the client "
              "straight to the upstream (connect, 64 B, 64 B, close: the ceiling of CPU 1, which carries the client "
              "and the upstream), `ringfwd-tcp` the same through a plain ringfwd `[[tcp]]` forward. Errors: transactions that failed "
              "(refused, reset, bad reply, over 5 s) in the measured window; each is replaced by a new one."]
    if interrupted:
        lines += ["", f"**Run {interrupted}; the rows above are what was measured.**"]
    (a.out / "summary.md").write_text("\n".join(lines) + "\n")

    uname = platform.uname()
    cpu_model = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                      if ln.startswith("model name")), "?")
    vers = {
        "ringfwd": version([str(a.ringfwd), "--version"]) if a.ringfwd else "-",
        "microsocks": f"Debian package {deb_version('microsocks')}",
        "dante": f"{version(['danted', '-v'])} (Debian {deb_version('dante-server')})",
        "tinyproxy": f"{version(['tinyproxy', '-v'])} (Debian {deb_version('tinyproxy')})",
        "squid": f"{version(['squid', '-v'])} (Debian {deb_version('squid')})",
        "python": sys.version.split()[0],
    }
    setup = [
        "# Setup", "",
        f"- command: `{' '.join(sys.argv)}`",
        f"- started {started}, finished {finished}",
        f"- machine: {cpu_model}, {os.cpu_count()} CPUs, kernel {uname.release}, host {uname.node}",
        f"- load average when every target was up: {load_at_start}; when measuring began: "
        f"{quiet_load[0] if quiet_load else '-'}; after: {os.getloadavg()}",
        "- top CPU users when measuring began (`ps -eo pcpu,psr,comm`): "
        + ("; ".join(f"`{x}`" for x in quiet_load[1]) if quiet_load else "-"),
        "- versions: " + "; ".join(f"{k}: {v}" for k, v in vers.items() if k in ("python", "ringfwd") or
                                   any(t.startswith(k) for t in targets)),
        f"- priority: every process of the bench at nice {a.nice} (`--nice`)"
        + (f", SCHED_RR priority {a.rt} (`--rt`, `chrt -r {a.rt}`)" if a.rt else ", SCHED_OTHER"),
        "- pinning: every proxy `taskset -c 0` (its threads and children inherit it); the upstream "
        f"(`ringfwd echo --tcp-rr`, one shard) and the client `taskset -c 1`",
        "- workers: ringfwd `[runtime] shards = 1`; microsocks is one process with a thread per connection "
        "(no knob; it writes a line per connection to stderr with no switch to stop it, sent to /dev/null); Dante `-N 1` (one of each child process kind to start with; it forks more as needed); "
        f"tinyproxy 1.11 is one process with a thread per connection, `MaxClients {a.conns * 4}` "
        "(StartServers/MaxSpareServers are gone in 1.11); squid `workers 1`, no cache, access log off",
        f"- Dante binds its outgoing socket to `external` port 0 before connecting, so it gets its own source "
        f"address, `external: {DANTE_EXTERNAL}` (bind() does not take ports others hold in TIME_WAIT the way "
        "connect() may on loopback, net.ipv4.tcp_tw_reuse=2); and a port taken by bind() is closed to every "
        "other socket's connect() until its TIME_WAIT ends (60 s), so after each Dante run the bench waits "
        f"(at most 75 s) until fewer than 2000 TIME_WAIT sockets from {DANTE_EXTERNAL} are left (see Progress); "
        "without that wait the run after Dante's failed with EADDRNOTAVAIL",
        "- client: `benches/fwdproxy.py client`, one Python process, non-blocking sockets on epoll, "
        f"{a.conns} transactions in flight, TCP_NODELAY, a failed or >5 s transaction counted and replaced; "
        "SOCKS5: greeting `05 01 00`, wait for `05 00`, CONNECT IPv4 literal, wait for the reply; HTTP: "
        "`CONNECT 127.0.0.1:PORT HTTP/1.1` + Host, wait for a 200 head; then 64 B request, 64 B response, close",
        f"- each run `{a.warmup:g} s` warm-up + `{a.duration:g} s`; {a.reps} repetitions; per group all "
        "targets back to back, the order rotating by one each repetition",
        f"- ports: upstream {UPSTREAM_PORT}; " + ", ".join(f"{t} {PORTS[t]}" for t in targets),
    ]
    if failed:
        setup += ["", "## Targets left out", ""] + [f"- {t}: {why}" for t, why in failed.items()]
    setup += ["", "## Commands", "", "```"] + commands + ["```", "", "## Progress", ""] + [f"- {n}" for n in notes]
    setup += ["", "## Configurations", ""]
    for t, (name, text) in configs.items():
        setup += [f"`{name}` ({t}):", "", "```", text.rstrip(), "```", ""]
    (a.out / "setup.md").write_text("\n".join(setup) + "\n")
    print((a.out / "summary.md").read_text())


if __name__ == "__main__":
    sys.exit(main())
