//! The admin endpoint (`[admin] listen`) against the real binary: /metrics
//! values match the traffic sent and pass `promtool check metrics`, /ready
//! turns 503 at SIGTERM while the drain is still open, /live and /status
//! answer, anything else is 404, and a request too large or too slow is
//! closed. `ringfwd check` reports a taken admin port.

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::harness::{Proc, echo_upstream, run_to_end, wait_until, write_config};

/// A forwarder `t` to `upstream` with an admin endpoint on a free port;
/// returns it and the admin address.
fn forwarder_with_admin(upstream: SocketAddr, runtime: &str) -> (Proc, SocketAddr) {
    let cfg = write_config(&format!(
        "[runtime]\nshards = 2\nstats_interval = \"off\"\n{runtime}\n[admin]\nlisten = \"127.0.0.1:0\"\n\
         [[tcp]]\nname = \"t\"\nlisten = \"127.0.0.1:0\"\nupstreams = [\"{upstream}\"]\n"
    ));
    let fwd = Proc::start(&["run", "--config", cfg.to_str().expect("path")], 2);
    let admin = fwd.addr("admin");
    (fwd, admin)
}

/// Sends raw bytes and reads until the server closes (or 10 s pass).
/// Returns what came back, or `None` on a reset.
fn exchange(admin: SocketAddr, request: &[u8]) -> Option<Vec<u8>> {
    let mut c = TcpStream::connect(admin).expect("connect to the admin endpoint");
    c.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    c.write_all(request).expect("write the request");
    let mut out = Vec::new();
    match c.read_to_end(&mut out) {
        Ok(_) => Some(out),
        Err(e) if e.kind() == ErrorKind::ConnectionReset => None,
        Err(e) => panic!("reading the answer: {e}"),
    }
}

/// `method path` → (status, body).
fn request(admin: SocketAddr, method: &str, path: &str) -> (u16, String) {
    let req = format!("{method} {path} HTTP/1.1\r\nHost: ringfwd\r\n\r\n");
    let raw = exchange(admin, req.as_bytes()).expect("an answer, not a reset");
    let text = String::from_utf8(raw).expect("utf-8 answer");
    let (head, body) = text.split_once("\r\n\r\n").expect("a complete answer");
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("a status code");
    (status, body.to_owned())
}

fn get(admin: SocketAddr, path: &str) -> (u16, String) {
    request(admin, "GET", path)
}

/// The value of the sample `series` (name and labels exactly as written).
fn sample(metrics: &str, series: &str) -> Option<f64> {
    metrics.lines().find_map(|l| {
        let (name, value) = l.rsplit_once(' ')?;
        (name == series).then(|| value.parse().ok()).flatten()
    })
}

fn echo_round_trip(addr: SocketAddr, len: usize) {
    let mut c = TcpStream::connect(addr).expect("connect");
    c.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let msg = vec![b'x'; len];
    c.write_all(&msg).expect("write");
    let mut back = vec![0u8; len];
    c.read_exact(&mut back).expect("echoed");
}

#[test]
fn metrics_count_the_connections_and_bytes_sent() {
    let echo = echo_upstream(1);
    let (fwd, admin) = forwarder_with_admin(echo.first_addr(), "");
    let sizes = [1usize, 100, 1000, 10_000, 65_536];
    for len in sizes {
        echo_round_trip(fwd.addr("t"), len);
    }
    let n = sizes.len() as f64;
    let total = sizes.iter().sum::<usize>() as f64;
    let count = "ringfwd_connection_duration_seconds_count{listener=\"t\"}";
    let mut body = String::new();
    let closed = wait_until(Duration::from_secs(10), || {
        body = get(admin, "/metrics").1;
        sample(&body, count) == Some(n)
    });
    assert!(closed, "{count} never reached {n}:\n{body}");
    let expect = [
        ("ringfwd_accepted_total{listener=\"t\"}", n),
        ("ringfwd_bytes_c2u_total{listener=\"t\"}", total),
        ("ringfwd_bytes_u2c_total{listener=\"t\"}", total),
        ("ringfwd_close_client_eof_total{listener=\"t\"}", n),
        ("ringfwd_active{listener=\"t\"}", 0.0),
        (
            "ringfwd_connection_duration_seconds_bucket{listener=\"t\",le=\"+Inf\"}",
            n,
        ),
        ("ringfwd_upstream_connect_seconds_count{listener=\"t\"}", n),
        (
            &format!(
                "ringfwd_upstream_connect_attempts_total{{listener=\"t\",upstream=\"{}\"}}",
                echo.first_addr()
            ),
            n,
        ),
        (
            &format!(
                "ringfwd_upstream_bytes_c2u_total{{listener=\"t\",upstream=\"{}\"}}",
                echo.first_addr()
            ),
            total,
        ),
        (
            &format!(
                "ringfwd_upstream_up{{listener=\"t\",upstream=\"{}\"}}",
                echo.first_addr()
            ),
            1.0,
        ),
    ];
    for (series, want) in expect {
        assert_eq!(sample(&body, series), Some(want), "{series}:\n{body}");
    }
}

#[test]
fn promtool_accepts_the_exposition() {
    let ok = Command::new("promtool")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        eprintln!(
            "skipping: promtool is not installed (Debian: apt-get install prometheus; .ci/run does)"
        );
        return;
    }
    let echo = echo_upstream(1);
    let (fwd, admin) = forwarder_with_admin(echo.first_addr(), "");
    echo_round_trip(fwd.addr("t"), 10);
    let count = "ringfwd_connection_duration_seconds_count{listener=\"t\"}";
    let mut body = String::new();
    assert!(
        wait_until(Duration::from_secs(10), || {
            body = get(admin, "/metrics").1;
            sample(&body, count) == Some(1.0)
        }),
        "the connection never closed:\n{body}"
    );
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn promtool");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(body.as_bytes())
        .expect("feed promtool");
    let out = child.wait_with_output().expect("promtool");
    assert!(
        out.status.success(),
        "promtool check metrics: {}{}\n{body}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn ready_turns_503_at_sigterm_while_the_drain_keeps_serving() {
    let echo = echo_upstream(1);
    let (mut fwd, admin) = forwarder_with_admin(echo.first_addr(), "drain_timeout = \"1h\"");
    assert_eq!(get(admin, "/ready"), (200, "ready\n".into()));
    assert_eq!(get(admin, "/live").0, 200);
    // A connection that stays open keeps the drain (and the process) going.
    let mut open = TcpStream::connect(fwd.addr("t")).expect("connect");
    open.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    open.write_all(b"hi").expect("write");
    let mut back = [0u8; 2];
    open.read_exact(&mut back).expect("echo");
    fwd.signal(libc::SIGTERM);
    assert!(
        wait_until(Duration::from_secs(5), || get(admin, "/ready").0 == 503),
        "/ready still 200 after SIGTERM; log:\n{}",
        fwd.log()
    );
    assert!(
        fwd.wait_exit(Duration::from_millis(0)).is_none(),
        "still draining"
    );
    assert_eq!(get(admin, "/live").0, 200, "the control loop still runs");
    assert_eq!(
        get(admin, "/metrics").0,
        200,
        "scrapes go on during a drain"
    );
    open.write_all(b"yo").expect("write during the drain");
    open.read_exact(&mut back).expect("echo during the drain");
    drop(open);
    let status = fwd.wait_exit(Duration::from_secs(10)).expect("exits");
    assert_eq!(status.code(), Some(0), "log:\n{}", fwd.log());
}

#[test]
fn status_is_json_naming_every_listener_and_its_upstreams() {
    let echo = echo_upstream(1);
    let (fwd, admin) = forwarder_with_admin(echo.first_addr(), "");
    let (code, body) = get(admin, "/status");
    assert_eq!(code, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).expect("JSON");
    assert_eq!(v["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(v["state"], "serving");
    assert_eq!(v["shards"].as_array().map(Vec::len), Some(2), "{v}");
    let l = &v["listeners"][0];
    assert_eq!(l["name"], "t", "{v}");
    assert_eq!(l["kind"], "tcp", "{v}");
    assert_eq!(l["address"], fwd.addr("t").to_string(), "{v}");
    assert_eq!(l["balance"], "round_robin", "{v}");
    assert_eq!(
        l["upstreams"],
        serde_json::json!([{"address": echo.first_addr().to_string(), "state": "up"}]),
        "{v}"
    );
}

/// A SIGHUP reload that adds a listener and changes the balance: `/status`
/// and `ringfwd_upstream_up` show the configuration in force, not the
/// start's.
#[test]
fn status_and_upstream_up_follow_a_reload() {
    let (a, b) = (echo_upstream(1), echo_upstream(1));
    let (a, b) = (a.first_addr(), b.first_addr());
    let text = |extra: &str| {
        format!(
            "[runtime]\nshards = 2\nstats_interval = \"off\"\n[admin]\nlisten = \"127.0.0.1:0\"\n\
             [[tcp]]\nname = \"t\"\nlisten = \"127.0.0.1:0\"\nupstreams = [\"{a}\"]\n{extra}"
        )
    };
    let cfg = write_config(&text(""));
    let fwd = Proc::start(&["run", "--config", cfg.to_str().expect("path")], 2);
    let admin = fwd.addr("admin");
    std::fs::write(
        &cfg,
        text(&format!(
            "balance = \"least_conn\"\n[[tcp]]\nname = \"two\"\nlisten = \"127.0.0.1:0\"\nupstreams = [\"{b}\"]\n"
        )),
    )
    .expect("write config");
    fwd.signal(libc::SIGHUP);
    fwd.wait_log("SIGHUP: configuration reloaded", Duration::from_secs(10));
    let (code, body) = get(admin, "/status");
    assert_eq!(code, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).expect("JSON");
    let names: Vec<&str> = v["listeners"]
        .as_array()
        .expect("listeners")
        .iter()
        .filter_map(|l| l["name"].as_str())
        .collect();
    assert_eq!(names, ["t", "two"], "{v}");
    assert_eq!(v["listeners"][0]["balance"], "least_conn", "{v}");
    let (_, metrics) = get(admin, "/metrics");
    let series = format!("ringfwd_upstream_up{{listener=\"two\",upstream=\"{b}\"}}");
    assert_eq!(sample(&metrics, &series), Some(1.0), "{metrics}");
}

#[test]
fn other_paths_are_404_and_other_methods_405() {
    let echo = echo_upstream(1);
    let (_fwd, admin) = forwarder_with_admin(echo.first_addr(), "");
    for path in ["/", "/metricsx", "/status/", "/admin"] {
        assert_eq!(get(admin, path).0, 404, "{path}");
    }
    assert_eq!(request(admin, "POST", "/ready").0, 405);
    assert_eq!(request(admin, "DELETE", "/nothing").0, 404);
    assert_eq!(get(admin, "/metrics?name=x").0, 200, "a query is ignored");
}

#[test]
fn a_request_over_8kib_is_closed_and_the_endpoint_goes_on() {
    let echo = echo_upstream(1);
    let (_fwd, admin) = forwarder_with_admin(echo.first_addr(), "");
    let mut big = b"GET /metrics HTTP/1.1\r\nX-Pad: ".to_vec();
    big.resize(9 * 1024, b'a');
    let t = Instant::now();
    // Closed at once, not at the 5 s read limit: 431, or a reset when the
    // close found unread bytes.
    match exchange(admin, &big) {
        None => {}
        Some(raw) => {
            let text = String::from_utf8_lossy(&raw);
            assert!(text.starts_with("HTTP/1.1 431 "), "{text}");
        }
    }
    assert!(
        t.elapsed() < Duration::from_secs(4),
        "closed only after {:?}",
        t.elapsed()
    );
    assert_eq!(get(admin, "/live").0, 200);
}

#[test]
fn a_request_slower_than_5s_is_closed() {
    let echo = echo_upstream(1);
    let (_fwd, admin) = forwarder_with_admin(echo.first_addr(), "");
    let mut c = TcpStream::connect(admin).expect("connect");
    let t = Instant::now();
    c.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")
        .expect("write half a request");
    c.set_read_timeout(Some(Duration::from_secs(15)))
        .expect("timeout");
    let mut out = Vec::new();
    let end = c.read_to_end(&mut out).map_err(|e| e.kind());
    let waited = t.elapsed();
    assert!(
        matches!(end, Ok(_) | Err(ErrorKind::ConnectionReset)),
        "not closed within 15 s: {end:?}"
    );
    assert!(
        String::from_utf8_lossy(&out).starts_with("HTTP/1.1 408 "),
        "{}",
        String::from_utf8_lossy(&out)
    );
    assert!(
        waited >= Duration::from_millis(4900),
        "closed after {waited:?}, before the 5 s limit"
    );
    assert_eq!(get(admin, "/live").0, 200);
}

#[test]
fn check_reports_a_taken_admin_port_with_exit_3() {
    let taken = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = taken.local_addr().expect("addr");
    let cfg = write_config(&format!(
        "[admin]\nlisten = \"{addr}\"\n[[tcp]]\nlisten = \"127.0.0.1:0\"\nupstreams = [\"127.0.0.1:9\"]\n"
    ));
    let path = cfg.to_str().expect("path");
    let (code, _, err) = run_to_end(&["check", "--config", path]);
    assert_eq!(code, Some(3), "{err}");
    assert!(
        err.contains("admin") && err.contains(&addr.to_string()) && err.contains("in use"),
        "{err}"
    );
    let (code, _, err) = run_to_end(&["run", "--config", path]);
    assert_eq!(code, Some(3), "run refuses it too: {err}");
    drop(taken);
    let (code, out, err) = run_to_end(&["check", "--config", path]);
    assert_eq!(code, Some(0), "{err}");
    assert!(
        out.contains(&format!("[admin]\nlisten = \"{addr}\"")),
        "{out}"
    );
}

/// Shard threads of process `pid` still running.
fn shard_threads(pid: u32) -> usize {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0;
    };
    tasks
        .flatten()
        .filter(|t| {
            std::fs::read_to_string(t.path().join("comm"))
                .is_ok_and(|c| c.starts_with("rfwd-shard-"))
        })
        .count()
}

#[test]
fn counters_of_a_shard_that_exited_stay_in_metrics() {
    let echo = echo_upstream(1);
    let (mut fwd, admin) = forwarder_with_admin(echo.first_addr(), "drain_timeout = \"1h\"");
    let n = 20;
    for _ in 0..n {
        echo_round_trip(fwd.addr("t"), 10);
    }
    let accepted = "ringfwd_accepted_total{listener=\"t\"}";
    let closes = "ringfwd_close_client_eof_total{listener=\"t\"}";
    let mut body = String::new();
    assert!(
        wait_until(Duration::from_secs(10), || {
            body = get(admin, "/metrics").1;
            sample(&body, closes) == Some(f64::from(n))
        }),
        "{body}"
    );
    // One connection keeps its shard (and the process) in the drain; the
    // other shard has none and exits.
    let mut open = TcpStream::connect(fwd.addr("t")).expect("connect");
    open.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    open.write_all(b"hi").expect("write");
    let mut back = [0u8; 2];
    open.read_exact(&mut back).expect("echo");
    fwd.signal(libc::SIGTERM);
    assert!(
        wait_until(Duration::from_secs(10), || shard_threads(fwd.pid()) == 1),
        "one shard should have exited; log:\n{}",
        fwd.log()
    );
    let (_, body) = get(admin, "/metrics");
    assert_eq!(sample(&body, accepted), Some(f64::from(n + 1)), "{body}");
    assert_eq!(sample(&body, closes), Some(f64::from(n)), "{body}");
    drop(open);
    assert!(fwd.wait_exit(Duration::from_secs(10)).is_some(), "exits");
}
