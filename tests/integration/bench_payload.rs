//! `ringfwd bench` with any protocol's bytes (`--payload`, `--expect`,
//! `--expect-size`): PING/+PONG against a real redis-server (directly and
//! through ringfwd), DNS queries against dnsmasq, servers that answer wrong
//! or split their answers; and the latency histogram written in
//! HdrHistogram's formats, read back. `.ci/run` installs redis-server,
//! dig and dnsmasq; without CI a missing tool skips its test, saying so.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::Value;

use crate::dns::{answer_for, free_low_port, have, start_dnsmasq};
use crate::harness::{Proc, forwarder, run_to_end, temp_path, wait_until};

const QUICK: [&str; 7] = [
    "--duration",
    "500ms",
    "--warmup",
    "100ms",
    "--quiet",
    "--shards",
    "1",
];

/// Runs `ringfwd bench args... --json FILE`; returns (exit code, JSON, stderr).
fn bench(args: &[&str]) -> (Option<i32>, Value, String) {
    let json = temp_path("payload.json");
    let path = json.to_str().expect("path").to_string();
    let mut all: Vec<&str> = vec!["bench"];
    all.extend_from_slice(args);
    all.extend_from_slice(&QUICK);
    all.extend_from_slice(&["--json", &path]);
    let (code, out, err) = run_to_end(&all);
    let text = std::fs::read_to_string(&json).unwrap_or_else(|e| {
        panic!("bench {args:?} wrote no JSON ({e}); stdout {out} stderr {err}")
    });
    (code, serde_json::from_str(&text).expect("valid JSON"), err)
}

fn f(v: &Value, path: &str) -> f64 {
    let mut cur = v;
    for k in path.split('.') {
        cur = &cur[k];
    }
    cur.as_f64()
        .unwrap_or_else(|| panic!("{path} is not a number in {v:#}"))
}

/// A run that completed verified requests of `response` bytes each.
fn assert_ok(v: &Value, response: f64, conns: f64) {
    assert_eq!(v["ok"], Value::Bool(true), "{v:#}");
    let ops = f(v, "ops");
    assert!(ops > 10.0, "{v:#}");
    assert_eq!(f(v, "errors.verify"), 0.0, "{v:#}");
    let rx = f(v, "bytes_received") / response;
    assert!(
        rx >= ops - conns && rx <= ops + conns,
        "{rx} responses' worth of bytes for {ops} ops: {v:#}"
    );
}

struct Redis {
    child: Child,
    addr: SocketAddr,
}

impl Drop for Redis {
    fn drop(&mut self) {
        // Our own child, by PID.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One command to redis, the whole reply (a simple line or one bulk string).
fn redis_cmd(addr: SocketAddr, cmd: &str) -> std::io::Result<String> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(2)))?;
    s.write_all(cmd.as_bytes())?;
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = s.read(&mut buf)?;
        if n == 0 {
            break;
        }
        got.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&got);
        let complete = match text.strip_prefix('$') {
            Some(rest) => rest
                .split_once("\r\n")
                .is_some_and(|(len, body)| len.parse::<usize>().is_ok_and(|l| body.len() >= l + 2)),
            None => text.ends_with("\r\n"),
        };
        if complete {
            break;
        }
    }
    Ok(String::from_utf8_lossy(&got).into_owned())
}

/// redis-server on a free low port, answering PING; `None` (with the reason
/// printed) where redis-server is not installed outside CI.
fn start_redis() -> Option<Redis> {
    if !have("redis-server") {
        assert!(
            std::env::var_os("CI").is_none(),
            "redis-server is required in CI: apt-get install redis-server (.ci/run installs it)"
        );
        eprintln!("skipping: redis-server not installed (apt-get install redis-server)");
        return None;
    }
    for attempt in 0..5u64 {
        let port = free_low_port(u64::from(std::process::id()).rotate_left(7) ^ (attempt << 40));
        let child = Command::new("redis-server")
            .args(["--save", "", "--appendonly", "no", "--bind", "127.0.0.1"])
            .args(["--port", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start redis-server");
        let mut r = Redis {
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
        };
        let up = wait_until(Duration::from_secs(10), || {
            matches!(r.child.try_wait(), Ok(Some(_)))
                || redis_cmd(r.addr, "PING\r\n").is_ok_and(|a| a == "+PONG\r\n")
        });
        if up && matches!(r.child.try_wait(), Ok(None)) {
            return Some(r);
        }
    }
    panic!("redis-server did not start answering on any of 5 free ports");
}

fn commands_processed(addr: SocketAddr) -> u64 {
    let info = redis_cmd(addr, "INFO stats\r\n").expect("INFO");
    info.lines()
        .find_map(|l| l.strip_prefix("total_commands_processed:"))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("no total_commands_processed in {info}"))
}

const PING: [&str; 4] = ["--payload", r"PING\r\n", "--expect", r"+PONG\r\n"];

#[test]
fn redis_answers_ping_with_pong_via_tcp_rr_and_tcp_crr_directly_and_through_ringfwd() {
    let Some(redis) = start_redis() else { return };
    let fwd = forwarder(&[redis.addr], "", "");
    for target in [redis.addr, fwd.first_addr()] {
        let t = target.to_string();
        let before = commands_processed(redis.addr);
        let (code, v, err) =
            bench(&[&["tcp-rr", "--target", &t, "--connections", "4"], &PING[..]].concat());
        assert_eq!(code, Some(0), "{err}");
        assert_ok(&v, 7.0, 4.0);
        assert_eq!(f(&v, "bytes_sent") % 6.0, 0.0, "{v:#}");
        assert!(
            v["settings"]["payload"]
                .as_str()
                .is_some_and(|p| p.contains(r#""PING\r\n" expect "+PONG\r\n""#)),
            "{v:#}"
        );
        // Every request reached redis as a command it ran.
        let ran = commands_processed(redis.addr) - before;
        assert!(ran as f64 >= f(&v, "ops"), "redis ran {ran}: {v:#}");

        let (code, v, err) = bench(
            &[
                &["tcp-crr", "--target", &t, "--connections", "2"],
                &PING[..],
            ]
            .concat(),
        );
        assert_eq!(code, Some(0), "{err}");
        assert_ok(&v, 7.0, 2.0);
    }
    assert!(fwd.stat("accepted") >= 10, "{:?}", fwd.stats());
}

#[test]
fn expect_size_frames_responses_by_their_size() {
    let Some(redis) = start_redis() else { return };
    let t = redis.addr.to_string();
    let ping = ["--payload", r"PING\r\n"];
    let (code, v, err) = bench(
        &[
            &[
                "tcp-rr",
                "--target",
                &t,
                "--connections",
                "2",
                "--expect-size",
                "7",
            ],
            &ping[..],
        ]
        .concat(),
    );
    assert_eq!(code, Some(0), "{err}");
    assert_ok(&v, 7.0, 2.0);
    // A 7-byte answer to a request that expects 5: its last 2 bytes answer
    // nothing that was asked.
    let (code, v, err) = bench(
        &[
            &[
                "tcp-rr",
                "--target",
                &t,
                "--connections",
                "1",
                "--expect-size",
                "5",
            ],
            &ping[..],
        ]
        .concat(),
    );
    assert_eq!(code, Some(1), "{v:#}");
    assert!(f(&v, "errors.verify") >= 1.0, "{v:#}");
    assert!(
        err.contains("no request asked for (response larger than --expect-size?)"),
        "{err}"
    );
}

/// A TCP server answering every `request`-byte request with `answer`, one
/// byte per write when `split` (each its own segment with TCP_NODELAY).
fn answering_server(request: usize, answer: &'static [u8], split: bool) -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = l.local_addr().expect("addr");
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { return };
            let _ = s.set_nodelay(true);
            std::thread::spawn(move || {
                let mut req = vec![0u8; request];
                while s.read_exact(&mut req).is_ok() {
                    let sent = if split {
                        answer.chunks(1).try_for_each(|b| s.write_all(b))
                    } else {
                        s.write_all(answer)
                    };
                    if sent.is_err() {
                        return;
                    }
                }
            });
        }
    });
    addr
}

#[test]
fn a_response_split_into_single_bytes_is_reassembled_and_verified() {
    let t = answering_server(6, b"+PONG\r\n", true).to_string();
    for mode in ["tcp-rr", "tcp-crr"] {
        let (code, v, err) =
            bench(&[&[mode, "--target", &t, "--connections", "2"], &PING[..]].concat());
        assert_eq!(code, Some(0), "{mode}: {err}");
        assert_ok(&v, 7.0, 2.0);
    }
}

#[test]
fn a_server_that_answers_wrong_fails_the_run_showing_expected_and_got() {
    let t = answering_server(6, b"+PANG\r\n", false).to_string();
    for mode in ["tcp-rr", "tcp-crr"] {
        let (code, v, err) =
            bench(&[&[mode, "--target", &t, "--connections", "2"], &PING[..]].concat());
        assert_eq!(code, Some(1), "{mode}: {v:#}");
        assert_eq!(v["ok"], Value::Bool(false));
        assert!(f(&v, "errors.verify") >= 1.0, "{v:#}");
        let first = v["first_error"].as_str().unwrap_or_default();
        assert!(
            first.contains(r#"at its byte 2: expected "+PONG\r\n", got "+PANG\r\n""#),
            "{first}"
        );
        assert!(err.contains("verification"), "{err}");
    }
}

/// A DNS query for `name` (type A, class IN) with a fixed ID and no EDNS:
/// dnsmasq answers it with the same bytes every time.
pub(crate) fn dns_query(name: &str) -> Vec<u8> {
    let mut q = vec![0x52, 0x46, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
    for label in name.split('.') {
        q.push(label.len() as u8);
        q.extend_from_slice(label.as_bytes());
    }
    q.extend_from_slice(&[0, 0, 1, 0, 1]);
    q
}

#[test]
fn udp_rr_sends_a_dns_query_file_to_dnsmasq_and_checks_the_answers() {
    if !have("dnsmasq") {
        assert!(
            std::env::var_os("CI").is_none(),
            "dnsmasq is required in CI (.ci/run installs it)"
        );
        eprintln!("skipping: dnsmasq not installed (apt-get install dnsmasq-base)");
        return;
    }
    let hosts = temp_path("hosts");
    std::fs::write(&hosts, format!("{} h0.ringfwd.test\n", answer_for(0))).expect("hosts");
    let dns = start_dnsmasq(&hosts);
    let query = dns_query("h0.ringfwd.test");
    // The answer, once, to expect it exactly.
    let s = UdpSocket::bind("127.0.0.1:0").expect("bind");
    s.set_read_timeout(Some(Duration::from_secs(2)))
        .expect("timeout");
    s.send_to(&query, dns.addr).expect("send");
    let mut buf = [0u8; 512];
    let (n, _) = s.recv_from(&mut buf).expect("dnsmasq answers");
    let reply = buf[..n].to_vec();
    assert_eq!(reply[..2], query[..2], "the reply carries the query's ID");
    assert!(
        reply.ends_with(&[10, 77, 0, 1]),
        "the A record 10.77.0.1: {reply:?}"
    );
    let qf = temp_path("query.bin");
    std::fs::write(&qf, &query).expect("query file");
    let rf = temp_path("reply.bin");
    std::fs::write(&rf, &reply).expect("reply file");
    let (q, r) = (format!("@{}", qf.display()), format!("@{}", rf.display()));
    let t = dns.addr.to_string();
    let udp = ["udp-rr", "--target", &t, "--flows", "4", "--payload", &q];

    let (code, v, err) = bench(&[&udp[..], &["--expect", &r]].concat());
    assert_eq!(code, Some(0), "{err}");
    assert_ok(&v, reply.len() as f64, 4.0);
    assert_eq!(f(&v, "bytes_sent") % query.len() as f64, 0.0, "{v:#}");
    assert_eq!(f(&v, "udp.lost"), 0.0, "{v:#}");

    let size = reply.len().to_string();
    let (code, v, err) = bench(&[&udp[..], &["--expect-size", &size]].concat());
    assert_eq!(code, Some(0), "{err}");
    assert_ok(&v, reply.len() as f64, 4.0);

    // Another answer than the one expected: every reply is a verification error.
    let mut wrong = reply.clone();
    let last = wrong.len() - 1;
    wrong[last] ^= 1;
    std::fs::write(&rf, &wrong).expect("reply file");
    let (code, v, _) = bench(&[&udp[..], &["--expect", &r]].concat());
    assert_eq!(code, Some(1), "{v:#}");
    assert!(f(&v, "errors.verify") >= 1.0, "{v:#}");
    let first = v["first_error"].as_str().unwrap_or_default();
    // 10.77.0.1 as dnsmasq sent it; 10.77.0.0 as expected.
    assert!(
        first.contains(r#"\nM\x00\x00", got "RF"#) && first.contains(r#"\nM\x00\x01""#),
        "{first}"
    );
}

#[test]
fn a_udp_reply_with_no_request_outstanding_counts_as_late_not_as_an_answer() {
    // Answers "pong" at once, except its first request: 300 ms later, long
    // after the generator's 50 ms --timeout gave up on it and before the
    // flow's next request (2/s: every 500 ms).
    let s = UdpSocket::bind("127.0.0.1:0").expect("bind");
    let addr = s.local_addr().expect("addr").to_string();
    std::thread::spawn(move || {
        let mut buf = [0u8; 64];
        let mut first = true;
        while let Ok((_, from)) = s.recv_from(&mut buf) {
            if first {
                first = false;
                let late = s.try_clone().expect("clone");
                std::thread::spawn(move || {
                    std::thread::sleep(Duration::from_millis(300));
                    let _ = late.send_to(b"pong", from);
                });
                continue;
            }
            if s.send_to(b"pong", from).is_err() {
                return;
            }
        }
    });
    let json = temp_path("late.json");
    let (code, _, err) = run_to_end(&[
        "bench",
        "udp-rr",
        "--target",
        &addr,
        "--flows",
        "1",
        "--payload",
        "ping",
        "--expect",
        "pong",
        "--rate",
        "2",
        "--timeout",
        "50ms",
        "--duration",
        "1200ms",
        "--warmup",
        "0s",
        "--quiet",
        "--json",
        json.to_str().expect("path"),
    ]);
    assert_eq!(code, Some(0), "{err}");
    let v: Value =
        serde_json::from_str(&std::fs::read_to_string(&json).expect("json")).expect("valid");
    assert_eq!(f(&v, "udp.late"), 1.0, "{v:#}");
    assert_eq!(f(&v, "udp.lost"), 1.0, "{v:#}");
    assert_eq!(f(&v, "ops"), 2.0, "{v:#}");
    // Had the late reply answered a request, one latency would be ~0.
    assert_eq!(f(&v, "errors.verify"), 0.0, "{v:#}");
}

/// Rows of a percentile distribution file: (value in µs, percentile, count).
fn percentile_rows(text: &str) -> Vec<(f64, f64, u64)> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .skip(1)
        .map(|l| {
            let c: Vec<&str> = l.split_whitespace().collect();
            assert!(c.len() == 4 || c.len() == 3, "row {l:?}");
            (
                c[0].parse().expect("value"),
                c[1].parse().expect("percentile"),
                c[2].parse().expect("count"),
            )
        })
        .collect()
}

#[test]
fn the_percentile_file_and_the_histogram_log_hold_the_runs_latencies() {
    let echo = Proc::start(&["echo", "--tcp", "127.0.0.1:0", "--shards", "1"], 1);
    let t = echo.first_addr().to_string();
    let pf = temp_path("percentiles.txt");
    let lf = temp_path("histogram.hlog");
    let (code, v, err) = bench(&[
        "tcp-rr",
        "--target",
        &t,
        "--connections",
        "4",
        "--percentiles",
        pf.to_str().expect("path"),
        "--histogram-log",
        lf.to_str().expect("path"),
    ]);
    assert_eq!(code, Some(0), "{err}");
    let ops = f(&v, "ops") as u64;
    let text = std::fs::read_to_string(&pf).expect("percentile file");
    assert!(
        text.contains("       Value     Percentile TotalCount 1/(1-Percentile)\n"),
        "{text}"
    );
    assert!(text.contains("microseconds"), "{text}");
    let rows = percentile_rows(&text);
    let &(max, last_p, last_count) = rows.last().expect("rows");
    assert_eq!((last_p, last_count), (1.0, ops), "{text}");
    assert_eq!(max, f(&v, "latency_us.max"), "{text}");
    let &(min, ..) = rows.first().expect("rows");
    // The first row shows the top of the minimum's bucket (HdrHistogram's
    // highest equivalent value), the JSON its bottom: 3 digits apart at most.
    let low = f(&v, "latency_us.min");
    assert!(
        min >= low && min <= low * 1.002,
        "min {min} vs {low}: {text}"
    );
    let p50 = rows.iter().find(|r| r.1 == 0.5).expect("a 50% row").0;
    let want = f(&v, "latency_us.p50");
    assert!(
        (p50 - want).abs() <= want * 0.002,
        "p50 {p50} vs {want}: {text}"
    );
    assert!(
        text.contains(&format!("Total count    = {ops:12}]")),
        "{text}"
    );

    let log = std::fs::read(&lf).expect("histogram log");
    let intervals = ringfwd::bench::hdr_out::read_interval_log(&log).expect("log reads back");
    assert_eq!(intervals.len(), 1, "{}", String::from_utf8_lossy(&log));
    let (duration, h) = &intervals[0];
    assert_eq!(*duration, Duration::from_millis(500));
    assert_eq!(h.len(), ops);
    assert_eq!(h.max() as f64 / 1000.0, f(&v, "latency_us.max"));
}

#[test]
fn bad_payload_and_histogram_flags_are_named() {
    for (args, needle) in [
        (vec!["tcp-rr", "--payload", "PING"], "--expect"),
        (
            vec!["tcp-rr", "--payload", r"PI\qNG", "--expect", "x"],
            r"unknown escape \q at byte 2",
        ),
        (
            vec!["tcp-rr", "--payload", r"\x4", "--expect", "x"],
            "--payload",
        ),
        (vec!["tcp-crr", "--payload", "", "--expect", "x"], "empty"),
        (
            vec![
                "udp-rr",
                "--payload",
                "@/nonexistent/q.bin",
                "--expect",
                "x",
            ],
            "/nonexistent/q.bin",
        ),
        (
            vec!["tcp-rr", "--payload", "a", "--expect-size", "0"],
            "--expect-size",
        ),
        (
            vec![
                "tcp-rr",
                "--payload",
                "a",
                "--expect",
                "b",
                "--response-size",
                "9",
            ],
            "--response-size",
        ),
        (vec!["tcp-rr", "--expect", "b"], "--payload"),
        (
            vec!["tcp-rr", "--payload", "a", "--size", "9", "--expect", "b"],
            "--size",
        ),
        (
            vec!["tcp-stream", "--percentiles", "/tmp/x"],
            "--percentiles",
        ),
        (
            vec!["tcp-stream", "--histogram-log", "/tmp/x"],
            "--histogram-log",
        ),
    ] {
        let mut all = vec!["bench", "--target", "127.0.0.1:1"];
        all.splice(1..1, args.iter().take(1).copied());
        all.extend(args.iter().skip(1));
        let (code, _, err) = run_to_end(&all);
        assert_eq!(code, Some(2), "{args:?}: {err}");
        assert!(err.contains(needle), "{args:?}: {err}");
    }
}
