//! `ringfwd bench` against real targets: every mode briefly against
//! `ringfwd echo` (and through `ringfwd run`), the figures checked for sanity
//! and consistency; upstreams that corrupt data make the run fail; the open
//! loop holds its rate and measures from intended send times.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::time::Duration;

use serde_json::Value;

use crate::harness::{Proc, forwarder, run_to_end, temp_path};

const QUICK: [&str; 5] = ["--duration", "600ms", "--warmup", "200ms", "--quiet"];

/// Runs `ringfwd bench args... --json FILE`; returns (exit code, JSON, stderr).
fn bench(args: &[&str]) -> (Option<i32>, Value, String) {
    let json = temp_path("bench.json");
    let path = json.to_str().expect("path").to_string();
    let mut all: Vec<&str> = vec!["bench"];
    all.extend_from_slice(args);
    all.extend_from_slice(&QUICK);
    all.extend_from_slice(&["--json", &path]);
    let (code, out, err) = run_to_end(&all);
    let text = std::fs::read_to_string(&json).unwrap_or_else(|e| {
        panic!("bench {args:?} wrote no JSON ({e}); stdout {out} stderr {err}")
    });
    let v: Value = serde_json::from_str(&text).expect("valid JSON");
    (code, v, err)
}

fn f(v: &Value, path: &str) -> f64 {
    let mut cur = v;
    for k in path.split('.') {
        cur = &cur[k];
    }
    cur.as_f64()
        .unwrap_or_else(|| panic!("{path} is not a number in {v:#}"))
}

/// The checks every request/response style run must pass.
fn assert_sane_rr(v: &Value, conns: f64, size: f64) {
    assert_eq!(v["ok"], Value::Bool(true), "{v:#}");
    let ops = f(v, "ops");
    assert!(ops > 0.0, "{v:#}");
    let secs = f(v, "elapsed_s");
    assert!(
        (f(v, "rate") - ops / secs).abs() < 1e-6 * ops.max(1.0),
        "{v:#}"
    );
    let l = &v["latency_us"];
    let order = ["min", "p50", "p90", "p99", "p99_9", "p99_99", "max"];
    for w in order.windows(2) {
        assert!(
            f(l, w[0]) <= f(l, w[1]),
            "latency {} > {}: {l:#}",
            w[0],
            w[1]
        );
    }
    assert!(f(l, "min") > 0.0 && f(l, "mean") >= f(l, "min"), "{l:#}");
    assert_eq!(f(l, "count"), ops, "one latency sample per completed op");
    // Bytes moved in the window match the requests completed in it, give or
    // take the requests in flight at its edges.
    let rx = f(v, "bytes_received") / size;
    assert!(
        rx >= ops - conns && rx <= ops + conns,
        "received {rx} responses' worth for {ops} ops: {v:#}"
    );
    let bits = f(v, "bits_per_second.down");
    assert!(
        (bits - f(v, "bytes_received") * 8.0 / secs).abs() < 1.0,
        "{v:#}"
    );
    assert_eq!(f(v, "errors.verify") + f(v, "errors.other"), 0.0, "{v:#}");
}

fn echo() -> Proc {
    Proc::start(
        &[
            "echo",
            "--tcp",
            "127.0.0.1:0",
            "--udp",
            "127.0.0.1:0",
            "--shards",
            "1",
        ],
        2,
    )
}

fn tcp_of(p: &Proc) -> String {
    p.listening
        .iter()
        .find(|(k, _, _)| !k.starts_with("udp"))
        .map(|(_, _, a)| a.to_string())
        .expect("tcp listener")
}

fn udp_of(p: &Proc) -> String {
    p.listening
        .iter()
        .find(|(k, _, _)| k.starts_with("udp"))
        .map(|(_, _, a)| a.to_string())
        .expect("udp listener")
}

#[test]
fn tcp_rr_closed_and_pipelined_against_echo_report_sane_figures() {
    let e = echo();
    let t = tcp_of(&e);
    let (code, v, err) = bench(&[
        "tcp-rr",
        "--target",
        &t,
        "--connections",
        "20",
        "--size",
        "100",
        "--shards",
        "2",
    ]);
    assert_eq!(code, Some(0), "{err}");
    assert_sane_rr(&v, 20.0, 100.0);
    assert_eq!(v["settings"]["shards"], 2);
    assert_eq!(v["settings"]["connections"], 20);

    let (code, v, err) = bench(&[
        "tcp-rr",
        "--target",
        &t,
        "--connections",
        "4",
        "--pipeline",
        "8",
        "--size",
        "3000",
    ]);
    assert_eq!(code, Some(0), "{err}");
    assert_sane_rr(&v, 32.0, 3000.0);
}

#[test]
fn tcp_crr_opens_a_connection_per_transaction() {
    let e = echo();
    let up: SocketAddr = tcp_of(&e).parse().expect("addr");
    // Through a forwarder, whose counters (every 100 ms) show the connections.
    let fwd = forwarder(&[up], "", "shards = 1");
    let t = fwd.first_addr().to_string();
    let (code, v, err) = bench(&["tcp-crr", "--target", &t, "--connections", "8"]);
    assert_eq!(code, Some(0), "{err}");
    assert_sane_rr(&v, 8.0, 64.0);
    // Every transaction was its own connection: at least as many were
    // accepted as were measured (the warmup's come on top).
    let ops = f(&v, "ops") as u64;
    let accepted = fwd.wait_stat("accepted", Duration::from_secs(5), |a| a >= ops);
    assert!(
        accepted >= ops,
        "{accepted} accepted for {ops} transactions"
    );
}

#[test]
fn tcp_stream_both_ways_moves_verified_bytes() {
    let e = echo();
    let t = tcp_of(&e);
    let (code, v, err) = bench(&["tcp-stream", "--target", &t, "--connections", "3"]);
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(v["ok"], Value::Bool(true), "{v:#}");
    assert!(v["latency_us"].is_null());
    assert!(f(&v, "bits_per_second.up") > 1e6, "{v:#}");
    assert!(f(&v, "bits_per_second.down") > 1e6, "{v:#}");
    // Bytes come back only after they went out.
    assert!(f(&v, "bytes_received") <= f(&v, "bytes_sent") + 3.0 * 4.0 * 1048576.0);
    // Equal up to rounding: each rate is its own division of bytes by time.
    let (total, sum) = (
        f(&v, "bits_per_second.total"),
        f(&v, "bits_per_second.up") + f(&v, "bits_per_second.down"),
    );
    assert!(
        (total - sum).abs() <= 1e-9 * total,
        "total {total} vs up + down {sum}"
    );
}

#[test]
fn udp_rr_and_udp_stream_count_what_was_sent_and_answered() {
    let e = echo();
    let u = udp_of(&e);
    let (code, v, err) = bench(&["udp-rr", "--target", &u, "--flows", "30", "--shards", "2"]);
    assert_eq!(code, Some(0), "{err}");
    assert_sane_rr(&v, 30.0, 64.0);
    let sent = f(&v, "udp.sent");
    let received = f(&v, "udp.received");
    assert!(received <= sent && sent - received <= 30.0, "{v:#}");
    assert_eq!(f(&v, "udp.lost"), sent - received);

    let (code, v, err) = bench(&[
        "udp-stream",
        "--target",
        &u,
        "--flows",
        "4",
        "--size",
        "200",
        "--rate",
        "4000",
    ]);
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(v["ok"], Value::Bool(true), "{v:#}");
    let sent = f(&v, "udp.sent");
    // Open loop at 4000/s for 0.6 s: never more than the schedule allows.
    assert!(sent <= 4000.0 * 0.6 + 8.0, "{v:#}");
    assert!(sent >= 4000.0 * 0.6 * 0.5, "{v:#}");
    assert!(f(&v, "udp.received") <= sent, "{v:#}");
    assert!(f(&v, "offered_rate") >= f(&v, "rate"), "{v:#}");
}

#[test]
fn bench_through_ringfwd_run_matches_the_forwarders_counters() {
    let e = echo();
    let up: SocketAddr = tcp_of(&e).parse().expect("addr");
    let fwd = forwarder(&[up], "", "shards = 2");
    let t = fwd.first_addr().to_string();
    let (code, v, err) = bench(&["tcp-rr", "--target", &t, "--connections", "10"]);
    assert_eq!(code, Some(0), "{err}");
    assert_sane_rr(&v, 10.0, 64.0);
    // The forwarder carried at least the measured bytes each way.
    let sent = f(&v, "bytes_sent") as u64;
    let c2u = fwd.wait_stat("bytes_c2u", Duration::from_secs(5), |b| b >= sent);
    assert!(c2u >= sent, "forwarder carried {c2u} of {sent} bytes");
    assert!(fwd.stat("accepted") >= 10);
}

/// A TCP echo that flips one bit of every connection's byte `at`.
fn corrupting_tcp_echo(at: usize) -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = l.local_addr().expect("addr");
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { return };
            std::thread::spawn(move || {
                let mut buf = [0u8; 8192];
                let mut seen = 0usize;
                loop {
                    let n = match s.read(&mut buf) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => n,
                    };
                    if (seen..seen + n).contains(&at) {
                        buf[at - seen] ^= 0x10;
                    }
                    seen += n;
                    if s.write_all(&buf[..n]).is_err() {
                        return;
                    }
                }
            });
        }
    });
    addr
}

#[test]
fn a_corrupting_tcp_upstream_fails_the_run() {
    let t = corrupting_tcp_echo(1000).to_string();
    let (code, v, err) = bench(&["tcp-rr", "--target", &t, "--connections", "2"]);
    assert_eq!(
        code,
        Some(1),
        "a corrupted response must fail the run: {v:#}"
    );
    assert_eq!(v["ok"], Value::Bool(false));
    assert!(f(&v, "errors.verify") >= 1.0, "{v:#}");
    assert!(err.contains("verification"), "{err}");

    let (code, v, _) = bench(&["tcp-stream", "--target", &t, "--connections", "1"]);
    assert_eq!(code, Some(1), "{v:#}");
    assert!(f(&v, "errors.verify") >= 1.0, "{v:#}");
}

#[test]
fn a_corrupting_udp_upstream_fails_the_run() {
    let s = UdpSocket::bind("127.0.0.1:0").expect("bind");
    let addr = s.local_addr().expect("addr");
    std::thread::spawn(move || {
        let mut buf = [0u8; 2048];
        let mut n_seen = 0u64;
        while let Ok((n, from)) = s.recv_from(&mut buf) {
            n_seen += 1;
            if n_seen % 50 == 0 && n > 30 {
                buf[30] ^= 1;
            }
            if s.send_to(&buf[..n], from).is_err() {
                return;
            }
        }
    });
    let (code, v, _) = bench(&["udp-rr", "--target", &addr.to_string(), "--flows", "4"]);
    assert_eq!(code, Some(1), "{v:#}");
    assert!(f(&v, "errors.verify") >= 1.0, "{v:#}");
}

#[test]
fn the_open_loop_measures_a_stall_from_intended_send_times() {
    // An echo that stops answering for 400 ms after its 100th request.
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = l.local_addr().expect("addr").to_string();
    std::thread::spawn(move || {
        let mut requests = 0u64;
        for s in l.incoming() {
            let Ok(mut s) = s else { return };
            let mut buf = [0u8; 64];
            loop {
                if s.read_exact(&mut buf).is_err() {
                    break;
                }
                requests += 1;
                if requests == 100 {
                    std::thread::sleep(Duration::from_millis(400));
                }
                if s.write_all(&buf).is_err() {
                    break;
                }
            }
        }
    });
    let json = temp_path("open.json");
    let (code, _, err) = run_to_end(&[
        "bench",
        "tcp-rr",
        "--target",
        &addr,
        "--connections",
        "1",
        "--rate",
        "1000",
        "--duration",
        "1s",
        "--warmup",
        "0s",
        "--quiet",
        "--json",
        json.to_str().expect("p"),
    ]);
    assert_eq!(code, Some(0), "{err}");
    let v: Value =
        serde_json::from_str(&std::fs::read_to_string(&json).expect("json")).expect("valid");
    // The requests due during the stall waited for it: measured from when
    // they should have been sent, a large share shows hundreds of ms (a
    // closed loop would show one slow request).
    assert!(f(&v, "latency_us.p90") > 100_000.0, "{v:#}");
    assert!(f(&v, "latency_us.max") >= 350_000.0, "{v:#}");
    // The schedule is 1000/s: never more than that was issued.
    assert!(f(&v, "ops") <= 1000.0 + 2.0, "{v:#}");
}

#[test]
fn bad_bench_flags_are_named() {
    for (args, needle) in [
        (vec!["tcp-rr", "--target", "nowhere"], "--target"),
        (
            vec!["tcp-rr", "--target", "127.0.0.1:1", "--size", "0"],
            "--size",
        ),
        (
            vec!["tcp-rr", "--target", "127.0.0.1:1", "--pipeline", "0"],
            "--pipeline",
        ),
        (
            vec!["udp-rr", "--target", "127.0.0.1:1", "--size", "8"],
            "--size",
        ),
        (
            vec!["tcp-stream", "--target", "127.0.0.1:1", "--size", "5MiB"],
            "--size",
        ),
        (
            vec!["tcp-rr", "--target", "127.0.0.1:1", "--rate", "fast"],
            "--rate",
        ),
        (
            vec![
                "tcp-stream",
                "--target",
                "127.0.0.1:1",
                "--direction",
                "sideways",
            ],
            "--direction",
        ),
        (
            vec!["tcp-rr", "--target", "127.0.0.1:1", "--duration", "1y"],
            "--duration",
        ),
        (
            vec!["tcp-rr", "--target", "127.0.0.1:1", "--cpus", "999"],
            "--cpus",
        ),
    ] {
        let mut all = vec!["bench"];
        all.extend(args.iter());
        let (code, _, err) = run_to_end(&all);
        assert_eq!(code, Some(2), "{args:?}: {err}");
        assert!(err.contains(needle), "{args:?}: {err}");
    }
}

#[test]
fn a_refused_target_is_counted_and_fails_the_run() {
    let (_guard, dead) = crate::harness::dead_port();
    let (code, v, _) = bench(&[
        "tcp-rr",
        "--target",
        &dead.to_string(),
        "--connections",
        "2",
    ]);
    assert_eq!(code, Some(1), "{v:#}");
    assert!(f(&v, "errors.refused") >= 2.0, "{v:#}");
    assert_eq!(f(&v, "ops"), 0.0);
}

#[test]
fn a_udp_datagram_lost_in_the_warmup_counts_when_its_timeout_expires_in_the_window() {
    // An echo that drops each client's first datagram: every flow's first
    // request (sent in the warmup) is lost and times out inside the window.
    let s = UdpSocket::bind("127.0.0.1:0").expect("bind");
    let addr = s.local_addr().expect("addr");
    std::thread::spawn(move || {
        let mut seen = std::collections::HashSet::new();
        let mut buf = [0u8; 2048];
        while let Ok((n, from)) = s.recv_from(&mut buf) {
            if !seen.insert(from) && s.send_to(&buf[..n], from).is_err() {
                return;
            }
        }
    });
    let (code, v, err) = bench(&[
        "udp-rr",
        "--target",
        &addr.to_string(),
        "--flows",
        "5",
        "--timeout",
        "300ms",
    ]);
    assert_eq!(code, Some(0), "{err}");
    assert!(
        f(&v, "udp.lost") >= 5.0,
        "5 flows lost their first datagram: {v:#}"
    );
    assert!(
        f(&v, "ops") > 0.0,
        "the flows went on after the timeout: {v:#}"
    );
}

#[test]
fn tcp_stream_up_to_a_sink_and_down_from_a_source_and_rr_with_a_response_size() {
    let e = Proc::start(
        &[
            "echo",
            "--tcp-sink",
            "127.0.0.1:0",
            "--tcp-source",
            "127.0.0.1:0",
            "--tcp-rr",
            "127.0.0.1:0",
            "--request-size",
            "100",
            "--response-size",
            "3000",
            "--shards",
            "1",
        ],
        3,
    );
    let of = |kind: &str| {
        e.listening
            .iter()
            .find(|(k, _, _)| k == kind)
            .map(|(_, _, a)| a.to_string())
            .unwrap_or_else(|| panic!("no {kind} listener in {:?}", e.listening))
    };
    let (code, v, err) = bench(&[
        "tcp-stream",
        "--target",
        &of("echo-sink"),
        "--direction",
        "up",
        "--connections",
        "2",
    ]);
    assert_eq!(code, Some(0), "{err}");
    assert!(f(&v, "bits_per_second.up") > 1e6, "{v:#}");
    assert_eq!(f(&v, "bytes_received"), 0.0, "a sink sends nothing: {v:#}");

    let (code, v, err) = bench(&[
        "tcp-stream",
        "--target",
        &of("echo-source"),
        "--direction",
        "down",
        "--connections",
        "2",
    ]);
    assert_eq!(code, Some(0), "{err}");
    assert!(f(&v, "bits_per_second.down") > 1e6, "{v:#}");
    assert_eq!(f(&v, "bytes_sent"), 0.0, "a download sends nothing: {v:#}");

    let (code, v, err) = bench(&[
        "tcp-rr",
        "--target",
        &of("echo-rr"),
        "--connections",
        "4",
        "--size",
        "100",
        "--response-size",
        "3000",
    ]);
    assert_eq!(code, Some(0), "{err}");
    assert_sane_rr(&v, 4.0, 3000.0);

    // The wrong direction for the target is caught, not measured.
    let (code, v, _) = bench(&[
        "tcp-stream",
        "--target",
        &of("echo-source"),
        "--direction",
        "up",
    ]);
    assert_eq!(code, Some(1), "an upload to a source must fail: {v:#}");
    assert!(f(&v, "errors.verify") >= 1.0, "{v:#}");
}

/// Streams end like the request/response modes: a FIN from the generator,
/// the rest read up to the target's FIN, and a close with nothing unread. So
/// the forwarder under test counts every connection as ended by the client's
/// FIN and none by a reset, in every direction.
#[test]
fn tcp_stream_ends_its_connections_with_a_fin_not_a_reset() {
    let e = Proc::start(
        &[
            "echo",
            "--tcp",
            "127.0.0.1:0",
            "--tcp-sink",
            "127.0.0.1:0",
            "--tcp-source",
            "127.0.0.1:0",
            "--shards",
            "1",
        ],
        3,
    );
    let of = |kind: &str| -> SocketAddr {
        e.listening
            .iter()
            .find(|(k, _, _)| k == kind)
            .map(|(_, _, a)| *a)
            .unwrap_or_else(|| panic!("no {kind} listener in {:?}", e.listening))
    };
    for (direction, kind) in [
        ("up", "echo-sink"),
        ("down", "echo-source"),
        ("both", "echo"),
    ] {
        let fwd = forwarder(&[of(kind)], "", "shards = 1");
        let t = fwd.first_addr().to_string();
        let (code, v, err) = bench(&[
            "tcp-stream",
            "--target",
            &t,
            "--direction",
            direction,
            "--connections",
            "3",
        ]);
        assert_eq!(code, Some(0), "{direction}: {err}");
        assert_eq!(v["ok"], Value::Bool(true), "{direction}: {v:#}");
        let eof = fwd.wait_stat("close_client_eof", Duration::from_secs(5), |n| n >= 3);
        assert_eq!(eof, 3, "{direction}: one client FIN per connection");
        assert_eq!(
            fwd.stat("close_client_reset"),
            0,
            "{direction}: the generator reset a connection; log:\n{}",
            fwd.log()
        );
    }
}

/// The demo runs each load direct and through its forwarder in interleaved
/// rounds and shows each side's median and range, the ratio of the medians
/// and the range of the paired ratios, and says in words whether any side
/// was noisy. Its clients all end with a FIN: its forwarder counts no reset.
#[test]
fn the_demo_shows_the_spread_of_interleaved_runs_and_its_clients_never_reset() {
    let (code, out, err) = run_to_end(&[
        "demo",
        "--streams",
        "8",
        "--max-stream",
        "200000",
        "--duration",
        "600ms",
        "--warmup",
        "150ms",
    ]);
    assert_eq!(code, Some(0), "stdout:\n{out}\nstderr:\n{err}");
    assert!(
        out.contains("3 interleaved runs per path") && out.contains("each 200ms measured"),
        "the runs share --duration:\n{out}"
    );
    assert!(
        out.contains("min–max") && out.contains("ratio range"),
        "{out}"
    );
    // Every ringfwd row: median, min–max, latencies, paired range, ratio.
    let rows: Vec<&str> = out.lines().filter(|l| l.contains(" ringfwd ")).collect();
    assert_eq!(rows.len(), 4, "{out}");
    for row in rows {
        let cols: Vec<&str> = row.split_whitespace().collect();
        let ratio = cols.last().expect("a ratio");
        assert!(ratio.ends_with('x'), "{row}");
        let range = cols.get(cols.len() - 2).expect("a range");
        let (lo, hi) = range.split_once('–').expect("lo–hi");
        let (lo, hi, r): (f64, f64, f64) = (
            lo.parse().expect("lo"),
            hi.parse().expect("hi"),
            ratio.trim_end_matches('x').parse().expect("ratio"),
        );
        assert!(lo <= hi && lo > 0.0, "{row}");
        // The ratio of medians need not lie in the paired range, but it is
        // of the same order.
        assert!(r > lo / 4.0 && r < hi * 4.0, "{row}");
    }
    assert!(
        out.contains("\nsteady: on every load") || out.contains("\nnoisy: a side's min–max"),
        "the noise verdict in words:\n{out}"
    );
    let counters = out
        .lines()
        .find_map(|l| l.strip_prefix("forwarder counters: "))
        .expect("the forwarder's counters");
    let kv = crate::harness::parse_kv(counters);
    assert_eq!(kv.get("close_client_reset"), Some(&0), "{counters}");
    assert_eq!(
        kv.get("close_client_eof"),
        kv.get("accepted"),
        "every connection ended by the client's FIN: {counters}"
    );
}

/// Writes of 4 MiB, far longer than the pattern's period, go out as the
/// periodic stream: echoed back they verify byte for byte (both), a source
/// still verifies under them (down), and one flipped byte megabytes into the
/// stream fails the run.
#[test]
fn tcp_stream_with_4mib_writes_verifies_every_byte_down_and_both() {
    let e = echo();
    let t = tcp_of(&e);
    let (code, v, err) = bench(&[
        "tcp-stream",
        "--target",
        &t,
        "--size",
        "4MiB",
        "--connections",
        "2",
    ]);
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(v["ok"], Value::Bool(true), "{v:#}");
    assert_eq!(f(&v, "errors.verify"), 0.0, "{v:#}");
    // More than one whole write came back verified on each connection.
    assert!(f(&v, "bytes_received") > 2.0 * 4.0 * 1048576.0, "{v:#}");

    let s = Proc::start(&["echo", "--tcp-source", "127.0.0.1:0", "--shards", "1"], 1);
    let (code, v, err) = bench(&[
        "tcp-stream",
        "--target",
        &tcp_of(&s),
        "--direction",
        "down",
        "--size",
        "4MiB",
    ]);
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(f(&v, "errors.verify"), 0.0, "{v:#}");
    assert!(f(&v, "bytes_received") > 4.0 * 1048576.0, "{v:#}");

    let bad = corrupting_tcp_echo(3_000_000).to_string();
    let (code, v, _) = bench(&["tcp-stream", "--target", &bad, "--size", "4MiB"]);
    assert_eq!(code, Some(1), "a byte flipped 3 MB in must fail: {v:#}");
    assert!(f(&v, "errors.verify") >= 1.0, "{v:#}");
}
