#!/usr/bin/env python3
"""Where a forwarder's CPU goes: a perf profile and a syscall count per workload.

For each workload and target, starts the forwarder pinned as compare.py's `pinned`
layout (forwarder on CPU 0; generator and upstream on CPU 1), runs `ringfwd bench`
against it, and during the measured window records, for the forwarder's processes only:

- `perf record -e cpu-clock -F 4999 -g`: on-CPU samples, bucketed into user space, the
  TCP/IP (or UDP) stack, data copies, io_uring, epoll, the scheduler (sleeping and waking),
  system-call entry/exit, memory allocation, and other kernel work;
- `perf stat -e raw_syscalls:sys_enter,context-switches`: system calls and context
  switches, divided by the operations the bench completed in the same window.

This is the evidence for the issue-5 targets that are not met: it shows how much of the
forwarder's own CPU is the kernel's socket work, which no forwarder design removes.

Writes DIR/profile.md (tables), DIR/raw.csv, DIR/reports/<workload>-<target>.txt (perf
report, flat and by bucket) and DIR/logs/. Python 3 standard library, perf, as root.

    profile.py --out DIR [--duration 3] [--warmup 1] [--only tcp-rr-100,udp-stream-8-64]
"""

import argparse
import csv
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import compare as C  # noqa: E402

LOAD_CPU = 1

# (workload, bench mode, upstream service, bench args, targets)
WORKLOADS = [
    ("tcp-rr-100", "tcp-rr", "echo", ["--connections", "100", "--size", "64"],
     ["ringfwd", "haproxy", "nginx"]),
    ("tcp-rr-1000", "tcp-rr", "echo", ["--connections", "1000", "--size", "64"],
     ["ringfwd", "haproxy", "nginx"]),
    ("tcp-crr-50", "tcp-crr", "echo", ["--connections", "50", "--size", "64"],
     ["ringfwd", "haproxy", "nginx"]),
    ("tcp-stream-1-up", "tcp-stream", "sink",
     ["--connections", "1", "--direction", "up", "--size", "64KiB"],
     ["ringfwd", "haproxy-splice"]),
    ("udp-stream-8-64-50k", "udp-stream", "udp",
     ["--flows", "8", "--size", "64", "--rate", "50k/s"], ["ringfwd", "nginx"]),
    ("udp-rr-100", "udp-rr", "udp", ["--flows", "100", "--size", "64"], ["ringfwd", "nginx"]),
]

# Kernel symbol buckets, first match wins; user-space samples are their own bucket.
BUCKETS = [
    # cpu-clock samples taken while interrupts are off land where they are turned back on:
    # on loopback that is the sender waking the receiving task (sock_def_readable ->
    # try_to_wake_up), including the IPI to the other, halted vCPU.
    ("wakeup", r"^_raw_spin_unlock_irq"),
    ("io_uring", r"^(__)?io_|^io_uring|^__do_sys_io_uring|^__x64_sys_io_uring|^tctx_task_work"),
    ("epoll", r"^(__)?ep_|epoll|^do_epoll"),
    ("copy", r"copy_user|^_copy_|^copy_page|memcpy|memmove|rep_movs|^csum_partial_copy|"
             r"skb_copy_datagram|^copy_to_iter|^copy_from_iter|^_copy_to_iter|^_copy_from_iter|"
             r"^__check_object_size|^__virt_addr_valid|^check_heap_object|^import_ubuf"),
    ("sched", r"schedule|^try_to_wake_up|ttwu|^enqueue_|^dequeue_|^pick_next|^finish_task_switch|"
              r"^update_curr|^__wake_up|^select_task_rq|^set_next_entity|^put_prev|^update_load|"
              r"^__switch_to|^switch_mm|^native_sched|^psi_|^prepare_task_switch|^check_preempt|"
              r"^reweight|^update_cfs|^resched|^wake_q|^autoremove_wake|^default_wake|^hrtimer|"
              r"^__hrtimer|^task_tick|^update_rq|^pollwake|^finish_wait|^prepare_to_wait"),
    ("syscall", r"^entry_SYSCALL|^syscall_|^do_syscall|^__x64_sys_|^__sys_|^exit_to_user|"
                r"^syscall_exit|^__fget|^fget|^fput|^__fdget|^__fput|^sock_from_file|"
                r"^restore_fpregs|^fpregs|^switch_fpu|^fdget|^fd_install"),
    ("alloc", r"^kmem_cache|^__kmalloc|^kmalloc|^kfree|^__alloc|^alloc_|^__free|^free_|"
              r"^page_|^__page|^get_page_from|^rmqueue|^__slab|^slab_|^___slab|^memcg|"
              r"^__memcg|^mod_memcg|^refill_obj|^obj_cgroup"),
    ("net", r"^(__)?tcp|^(__)?ip|^(__)?inet|^(__)?sk_|^(__)?skb|^kfree_skb|^consume_skb|"
            r"^loopback|^(__)?netif|^napi|^net_rx|^__dev|^dev_|^nf_|^(__)?sock|^release_sock|"
            r"^lock_sock|^(__)?udp|^raw_|^(__)?neigh|^eth_|^validate_xmit|^sch_|^__qdisc|"
            r"^qdisc|^pfifo|^process_backlog|^__napi|^do_softirq|^__do_softirq|^__local_bh|"
            r"^local_bh|^irq_exit|^security_|^apparmor|^bpf_|^(__)?splice|^pipe_|^(__)?sys_splice|"
            r"^do_splice|^iter_file_splice|^generic_splice|^direct_splice|^skb_splice|^__xfrm|"
            r"^dst_|^fib_|^rt_|^ipv4_|^ipv6_|^__ip6|^ip6|^icmp|^__inet6|^inet6|^udpv6|^nft_|"
            r"^__cgroup_bpf|^cgroup_bpf|^__mod_timer|^mod_timer|^sk_reset_timer|^lock_timer|"
            r"^__get_user_pages|^gup_|^tcp|^__tcp|^reqsk|^inet_csk|^secure_tcp|^siphash|"
            r"^__inet_hash|^inet_hash|^__inet_check|^inet_ehash|^__sys_connect|^__sys_accept|"
            r"^bbr_|^cubic|^read_tsc|^ktime_get|^handle_softirqs|^net_|^__netif|^rps_"),
]
BUCKET_RE = [(name, re.compile(rx)) for name, rx in BUCKETS]
ORDER = ["user", "net", "wakeup", "copy", "io_uring", "epoll", "sched", "syscall", "alloc",
         "other-kernel"]


def bucket(dso: str, sym: str) -> str:
    if dso != "[kernel.kallsyms]" and not dso.startswith("[kernel"):
        return "user"
    for name, rx in BUCKET_RE:
        if rx.search(sym):
            return name
    return "other-kernel"


def perf_buckets(data: Path, report: Path) -> tuple[dict[str, float], str]:
    """Self-time per bucket (percent of samples) from a perf.data file, and how many samples
    (perf's rounded figure); the top symbols go to `report`."""
    out = subprocess.run(["perf", "report", "-i", str(data), "--stdio", "--no-children",
                          "--sort", "dso,sym", "-g", "none", "--percent-limit", "0",
                          "--field-separator", "\t"],
                         capture_output=True, text=True).stdout
    shares = {b: 0.0 for b in ORDER}
    rows = []
    for line in out.splitlines():
        if not line or line.startswith("#"):
            continue
        parts = line.split("\t")
        if len(parts) < 3:
            continue
        try:
            pct = float(parts[0].strip().rstrip("%"))
        except ValueError:
            continue
        dso = parts[1].strip()
        sym = re.sub(r"^\[[k.]\]\s*", "", parts[2].strip())
        b = bucket(dso, sym)
        shares[b] += pct
        rows.append((pct, b, dso, sym))
    rows.sort(reverse=True)
    text = ["bucket shares (% of the forwarder's on-CPU samples):"]
    text += [f"  {b:13} {shares[b]:6.2f}%" for b in ORDER]
    text += ["", "top symbols (self):"]
    text += [f"  {pct:6.2f}%  {b:13} {dso:24} {sym}" for pct, b, dso, sym in rows[:60]]
    report.write_text("\n".join(text) + "\n")
    m = re.search(r"Samples:\s*(\S+)", out)
    return shares, m.group(1) if m else "?"


def perf_stat_counts(path: Path) -> dict[str, int]:
    counts = {}
    for line in path.read_text(errors="replace").splitlines():
        parts = line.split(",")
        if len(parts) >= 3 and parts[0].strip().replace(".", "").isdigit():
            counts[parts[2].strip()] = int(float(parts[0]))
    return counts


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--binary", type=Path, default=C.REPO / "target/release/ringfwd")
    ap.add_argument("--duration", type=float, default=3.0)
    ap.add_argument("--warmup", type=float, default=1.0)
    ap.add_argument("--only", default="", help="comma-separated workload names")
    ap.add_argument("--keep-data", action="store_true",
                    help="keep perf.data files (~1 MB each); by default only the reports stay")
    args = ap.parse_args()
    only = {w for w in args.only.split(",") if w}
    wls = [w for w in WORKLOADS if not only or w[0] in only]
    out = args.out.resolve()  # NGINX resolves relative paths from its prefix
    for d in ("logs", "reports", "perf", "runs"):
        (out / d).mkdir(parents=True, exist_ok=True)
    C.ensure_peers({"haproxy", "nginx"})
    module = C.find_stream_module()
    layout = C.make_layouts(2)["pinned"]
    echo_flags, _ = C.probe_binary(args.binary)
    ports = {svc: layout.port("direct", svc) for svc in ("echo", "sink", "udp")}
    up = C.Managed("upstream", C.upstream_argv(args.binary, echo_flags, ports, 1, layout.up_cpus),
                   out / "logs", "ringfwd")
    started = [up]
    rows = []
    try:
        up.start()
        C.wait_tcp(ports["echo"], up)
        for name, mode, svc, bargs, targets in wls:
            for target in targets:
                fwd = start_target(target, args, out, layout, module)
                started.append(fwd)
                C.wait_tcp(layout.port(target, "echo"), fwd)
                rows.append(profile_one(name, mode, target, fwd, layout.port(target, svc),
                                        bargs, args, out))
                fwd.stop()
                started.remove(fwd)
    finally:
        for p in started:
            p.stop()
    fields = ["workload", "target", "ops", "rate", "bits_per_second", "samples"] + \
        [f"pct_{b}" for b in ORDER] + ["syscalls", "context_switches", "syscalls_per_op",
                                       "cswitch_per_op", "fwd_cpu_s", "cpu_window_s", "cpu_us_per_op"]
    with open(out / "raw.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    (out / "profile.md").write_text(summarise(rows, args))
    print(f"wrote {out / 'profile.md'}")
    return 0


def start_target(target: str, args, out: Path, layout, module: str) -> C.Managed:
    """The forwarder as compare.py starts it in its `pinned` layout (same configs, same ports)."""
    if target == "ringfwd":
        tcp = [(layout.port("ringfwd", s), layout.port("direct", s)) for s in ("echo", "sink")]
        udp = [(layout.port("ringfwd", "udp"), layout.port("direct", "udp"))]
        argv = C.ringfwd_argv(args.binary, tcp, udp, 1, layout.fwd_cpus)
        m = C.Managed(target, argv, out / "logs", "ringfwd")
    elif target.startswith("haproxy"):
        path = out / "logs" / f"{target}.cfg"
        path.write_text(C.haproxy_cfg(layout, target))
        m = C.Managed(target, C.taskset(layout.fwd_cpus) + ["haproxy", "-db", "-f", str(path)],
                      out / "logs", "haproxy")
    else:
        path = out / "logs" / "nginx.conf"
        path.write_text(C.nginx_cfg(layout, module, out / "logs"))
        m = C.Managed(target, C.taskset(layout.fwd_cpus) + ["nginx", "-c", str(path)],
                      out / "logs", "nginx")
    m.start()
    return m


class CpuAcct:
    """The forwarder's CPU time from its own cpuacct cgroup (v1), which keeps the time of
    threads that have exited, such as io-wq workers; falls back to /proc (live threads and
    reaped children) where no such hierarchy is mounted."""

    ROOT = Path("/sys/fs/cgroup/cpuacct")

    def __init__(self, name: str, pids: list[str]):
        self.pids, self.cg = pids, None
        cg = self.ROOT / f"ringfwd-profile-{name}-{os.getpid()}"
        try:
            cg.mkdir(exist_ok=True)
            for pid in pids:
                (cg / "cgroup.procs").write_text(pid)
            self.cg = cg
        except OSError as e:
            C.log(f"no cpuacct cgroup for {name} ({e}): CPU from /proc, exited threads not counted")

    def seconds(self) -> float:
        if self.cg is not None:
            return int((self.cg / "cpuacct.usage").read_text()) / 1e9
        return C.cpu_seconds([int(p) for p in self.pids])

    def release(self) -> None:
        """Back to the root group, then remove ours (a group with tasks cannot be removed)."""
        if self.cg is None:
            return
        for pid in (self.cg / "cgroup.procs").read_text().split():
            try:
                (self.ROOT / "cgroup.procs").write_text(pid)
            except OSError:
                pass
        try:
            self.cg.rmdir()
        except OSError:
            pass


def profile_one(name, mode, target, fwd, lp, bargs, args, out) -> dict:
    pids = [str(p) for p in C.tree([fwd.pid])]
    tag = f"{name}-{target}"
    jpath = out / "runs" / f"{tag}.json"
    argv = C.bench_argv(args.binary, mode, lp, bargs, args.duration, args.warmup, jpath, 1,
                        [LOAD_CPU])
    C.COMMANDS.append(" ".join(argv))
    data = out / "perf" / f"{tag}.data"
    stat = out / "perf" / f"{tag}.stat"
    bench = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    t_start = time.monotonic()
    time.sleep(args.warmup + 0.1)
    window = args.duration - 0.2
    # First half: count system calls and context switches (and the forwarder's CPU, with
    # no sampler running); second half: sample. perf record's own wrap-up after its window
    # takes a while, so it goes last.
    tids = [t for p in pids for t in C.tids(int(p))]
    tw0 = time.monotonic()
    acct = CpuAcct(tag, pids)
    cpu0 = acct.seconds()
    st = subprocess.Popen(C.taskset([LOAD_CPU]) + [
        "perf", "stat", "-x", ",", "-o", str(stat), "-e", "raw_syscalls:sys_enter,context-switches",
        "-t", ",".join(tids), "--", "sleep", f"{window / 2:.2f}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    st.wait()
    end = time.monotonic()
    cpu1 = acct.seconds()
    acct.release()
    mid = tw0
    sample_s = max(0.3, window / 2 - 0.3)
    rec = subprocess.Popen(C.taskset([LOAD_CPU]) + [
        "perf", "record", "-q", "-e", "cpu-clock", "-F", "4999", "-g", "-o", str(data),
        "-p", ",".join(pids), "--", "sleep", f"{sample_s:.2f}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    late = time.monotonic() + sample_s > t_start + args.warmup + args.duration
    rec.wait()
    _, err = bench.communicate(timeout=args.duration + args.warmup + 30)
    res = json.loads(jpath.read_text()) if jpath.exists() else {}
    rate = res.get("rate") or 0.0
    bps = (res.get("bits_per_second") or {}).get("total") or 0.0
    shares, samples = perf_buckets(data, out / "reports" / f"{tag}.txt")
    if not args.keep_data:
        data.unlink(missing_ok=True)
    counts = perf_stat_counts(stat)
    sys_n = counts.get("raw_syscalls:sys_enter", 0)
    cs_n = counts.get("context-switches", 0)
    ops_stat = rate * (end - mid) if rate else 0.0
    if late:
        C.log(f"{tag}: the sampling window outlasted the bench: raise --duration")
    row = {"workload": name, "target": target, "ops": res.get("ops"), "rate": round(rate, 1),
           "bits_per_second": round(bps), "samples": samples,
           "syscalls": sys_n, "context_switches": cs_n,
           "syscalls_per_op": round(sys_n / ops_stat, 3) if ops_stat else "",
           "cswitch_per_op": round(cs_n / ops_stat, 3) if ops_stat else "",
           "fwd_cpu_s": round(cpu1 - cpu0, 4), "cpu_window_s": round(end - tw0, 3),
           "cpu_us_per_op": round((cpu1 - cpu0) / (rate * (end - tw0)) * 1e6, 2)
           if rate else ""}
    for b in ORDER:
        row[f"pct_{b}"] = round(shares[b], 2)
    C.log(f"{tag}: rate {rate:,.0f}/s, {row['syscalls_per_op']} syscalls/op, user "
          f"{shares['user']:.1f}% net {shares['net']:.1f}% io_uring {shares['io_uring']:.1f}% "
          f"epoll {shares['epoll']:.1f}% sched {shares['sched']:.1f}%"
          + (f" [bench: {err.decode(errors='replace').strip()[:200]}]" if bench.returncode else ""))
    return row


def summarise(rows: list[dict], args) -> str:
    lines = [
        "# Where the forwarder's CPU goes",
        "",
        "`benches/profile.py`: forwarder pinned to CPU 0 (1 shard / thread / worker), generator "
        "and upstream (`ringfwd bench`, `ringfwd echo`, 1 shard each) on CPU 1. During the "
        f"measured window ({args.warmup:g} s warmup, {args.duration:g} s) `perf stat -e "
        "raw_syscalls:sys_enter,context-switches` on every thread of the forwarder for the first "
        "half (divided by the operations the bench completed in that half; CPU-µs/op is from "
        "the same half, the forwarder's on-CPU time from its own cpuacct cgroup, which keeps exited "
        "io-wq workers' time), `perf record -e cpu-clock -F "
        "4999 -g` on its processes for the second half. perf stat's syscall tracepoint adds a "
        "little to every system call, so the CPU-µs/op here is a bit higher than compare.py's, "
        "the more so the more syscalls a target makes. Buckets are the self time of kernel "
        "symbols grouped by name (benches/profile.py `BUCKETS`): `net` is the TCP/IP and UDP "
        "stack including loopback's softirq work done in the forwarder's context and splice, "
        "`wakeup` the time with interrupts off while waking a task (on loopback: the peer's "
        "reader on the other CPU, IPI to a halted vCPU included), `copy` user↔kernel copies "
        "(hardened-usercopy checks included), `sched` going to sleep and switching, "
        "`syscall` entry/exit "
        "and descriptor lookup. Full symbol lists: reports/.",
        "",
        "| workload | target | rate | CPU-µs/op | " + " | ".join(b.replace("-", " ") for b in ORDER)
        + " | syscalls/op | ctx switches/op |",
        "|---|---|---:|---:|" + "---:|" * len(ORDER) + "---:|---:|",
    ]
    for r in rows:
        rate = (f"{r['bits_per_second'] / 1e9:.2f} Gbit/s" if r["bits_per_second"]
                and r["workload"].startswith("tcp-stream") else f"{r['rate']:,.0f}/s")
        cost = r["cpu_us_per_op"]
        if r["workload"].startswith("tcp-stream") and r["bits_per_second"]:
            cost = f"{r['fwd_cpu_s'] / (r['bits_per_second'] / 8e9 * r['cpu_window_s']):.3f} s/GB"
        lines.append(f"| {r['workload']} | {r['target']} | {rate} | {cost} | " + " | ".join(
            f"{r[f'pct_{b}']:.1f}%" for b in ORDER) + f" | {r['syscalls_per_op']} | "
            f"{r['cswitch_per_op']} |")
    lines += ["", "Commands:", "", "```"] + C.COMMANDS + ["```", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
