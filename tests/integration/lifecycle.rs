//! The process as an operator sees it: the shape of the runtime in /proc,
//! SIGTERM draining, drain_timeout, a second signal, start-up failures.

use std::io::{ErrorKind, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::{Duration, Instant};

use crate::harness::{Proc, echo_upstream, run_to_end, wait_until, write_config};

fn forwarder(upstream: std::net::SocketAddr, runtime: &str) -> Proc {
    crate::harness::forwarder(&[upstream], "", runtime)
}

fn echo_once(c: &mut TcpStream, msg: &[u8]) {
    c.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    c.write_all(msg).expect("write");
    let mut back = vec![0u8; msg.len()];
    c.read_exact(&mut back).expect("read");
    assert_eq!(back, msg);
}

/// Listening sockets on `port` in /proc/net/tcp{,6} (state 0A = LISTEN).
fn listeners_on(port: u16) -> usize {
    let want = format!("{port:04X}");
    ["/proc/net/tcp", "/proc/net/tcp6"]
        .iter()
        .filter_map(|p| std::fs::read_to_string(p).ok())
        .flat_map(|t| t.lines().skip(1).map(str::to_owned).collect::<Vec<_>>())
        .filter(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            f.len() > 3 && f[3] == "0A" && f[1].rsplit(':').next() == Some(want.as_str())
        })
        .count()
}

#[test]
fn the_runtime_shape_is_one_ring_and_one_listener_per_pinned_shard() {
    let echo = echo_upstream(1);
    let cfg = write_config(&format!(
        r#"
[runtime]
shards = 2
cpus = [0, 1]
[[tcp]]
name = "a"
listen = "127.0.0.1:0"
upstreams = ["{e}"]
[[tcp]]
name = "b"
listen = "127.0.0.1:0"
upstreams = ["{e}"]
"#,
        e = echo.first_addr()
    ));
    let fwd = Proc::start(&["run", "--config", cfg.to_str().expect("path")], 2);
    let pid = fwd.pid();
    let rings = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("fd dir")
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter(|t| t.to_string_lossy().contains("io_uring"))
        .count();
    assert_eq!(rings, 2, "one io_uring per shard");
    let mut pinned = Vec::new();
    for t in std::fs::read_dir(format!("/proc/{pid}/task"))
        .expect("tasks")
        .flatten()
    {
        let comm = std::fs::read_to_string(t.path().join("comm")).unwrap_or_default();
        if !comm.starts_with("rfwd-shard-") {
            continue;
        }
        let status = std::fs::read_to_string(t.path().join("status")).unwrap_or_default();
        let cpus = status
            .lines()
            .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
            .map(|v| v.trim().to_string())
            .unwrap_or_default();
        pinned.push(cpus);
    }
    pinned.sort();
    assert_eq!(
        pinned,
        vec!["0".to_string(), "1".to_string()],
        "each shard pinned to its own CPU"
    );
    for name in ["a", "b"] {
        let port = fwd.addr(name).port();
        assert_eq!(
            listeners_on(port),
            2,
            "listener {name}: one SO_REUSEPORT socket per shard"
        );
    }
}

#[test]
fn sigterm_stops_accepting_lets_open_connections_finish_and_exits_zero() {
    let echo = echo_upstream(1);
    let mut fwd = forwarder(echo.first_addr(), "shards = 2");
    let addr = fwd.first_addr();
    let mut open = TcpStream::connect(addr).expect("connect");
    echo_once(&mut open, b"before");
    fwd.signal(libc::SIGTERM);
    assert!(
        wait_until(Duration::from_secs(5), || TcpStream::connect(addr).is_err()),
        "still accepting after SIGTERM"
    );
    echo_once(&mut open, b"during the drain");
    assert!(
        fwd.wait_exit(Duration::from_millis(300)).is_none(),
        "exited with a connection open"
    );
    drop(open);
    let status = fwd
        .wait_exit(Duration::from_secs(10))
        .expect("exits once the connection is done");
    assert_eq!(status.code(), Some(0), "log:\n{}", fwd.log());
    assert!(fwd.log().contains("final stats"), "final stats are logged");
    // The probes above may have got in before the listeners closed; every
    // connection, probe or not, ended normally.
    let s = fwd.stats();
    assert!(s["accepted"] >= 1);
    assert_eq!(s["close_client_eof"], s["accepted"], "{s:?}");
}

#[test]
fn drain_timeout_closes_what_is_left_and_exits_zero() {
    let echo = echo_upstream(1);
    let mut fwd = forwarder(echo.first_addr(), "shards = 1\ndrain_timeout = \"500ms\"");
    let mut open = TcpStream::connect(fwd.first_addr()).expect("connect");
    echo_once(&mut open, b"x");
    let t = Instant::now();
    fwd.signal(libc::SIGTERM);
    open.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let mut b = [0u8; 8];
    let end = open.read(&mut b).map_err(|e| e.kind());
    assert!(
        matches!(end, Ok(0) | Err(ErrorKind::ConnectionReset)),
        "{end:?}"
    );
    assert!(
        t.elapsed() >= Duration::from_millis(400),
        "closed before drain_timeout"
    );
    let status = fwd.wait_exit(Duration::from_secs(10)).expect("exit");
    assert_eq!(status.code(), Some(0));
    assert_eq!(fwd.stat("close_shutdown"), 1);
}

#[test]
fn a_second_signal_exits_at_once() {
    let echo = echo_upstream(1);
    let mut fwd = forwarder(echo.first_addr(), "shards = 1\ndrain_timeout = \"1h\"");
    let mut open = TcpStream::connect(fwd.first_addr()).expect("connect");
    echo_once(&mut open, b"x");
    fwd.signal(libc::SIGINT);
    assert!(
        wait_until(Duration::from_secs(5), || fwd.log().contains("draining")),
        "first signal starts the drain"
    );
    fwd.signal(libc::SIGINT);
    let status = fwd
        .wait_exit(Duration::from_secs(5))
        .expect("second signal exits at once");
    assert_eq!(status.code(), Some(1));
}

#[test]
fn an_address_in_use_fails_startup_with_the_address() {
    let taken = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = taken.local_addr().expect("addr");
    let spec = format!("{addr}=127.0.0.1:9");
    let (code, _, err) = run_to_end(&["run", "--tcp", &spec, "--shards", "1"]);
    assert_eq!(code, Some(3), "{err}");
    assert!(
        err.contains("already in use") && err.contains(&addr.to_string()),
        "{err}"
    );
}

#[test]
fn an_unavailable_cpu_is_named() {
    let (code, _, err) = run_to_end(&[
        "run",
        "--tcp",
        "127.0.0.1:0=127.0.0.1:9",
        "--cpus",
        "0,4093",
    ]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("4093") && err.contains("available"), "{err}");
}

#[test]
fn the_demo_runs_and_verifies_its_load() {
    let (code, out, err) = run_to_end(&[
        "demo",
        "--streams",
        "8",
        "--max-stream",
        "200000",
        "--duration",
        "300ms",
        "--warmup",
        "100ms",
    ]);
    assert_eq!(code, Some(0), "stdout:\n{out}\nstderr:\n{err}");
    assert!(out.contains("every byte verified"), "{out}");
    assert!(!out.contains("FAILED"), "{out}");
    // Each load ran direct and through the forwarder, with a ratio.
    for load in [
        "tcp-rr 64 B, 1 conn",
        "tcp-rr 64 B, 64 conns",
        "tcp-stream",
        "udp-rr",
    ] {
        assert!(out.contains(load), "{load} missing:\n{out}");
    }
    assert_eq!(out.matches(" direct ").count(), 4, "{out}");
    assert_eq!(out.matches(" ringfwd ").count(), 4, "{out}");
    assert_eq!(out.matches("x\n").count(), 4, "a ratio per load:\n{out}");
}

#[test]
fn a_memlock_limit_too_low_for_the_rings_is_named_with_numbers() {
    // As an unprivileged user (root has CAP_IPC_LOCK and is never limited).
    // `check` makes the same host check as `run`, with the same exit code.
    for cmd in ["run", "check"] {
        let out = std::process::Command::new("prlimit")
            .args([
                "--memlock=65536:65536",
                "setpriv",
                "--reuid=65534",
                "--regid=65534",
            ])
            .args(["--clear-groups", "--inh-caps=-all", crate::harness::BIN])
            .args([cmd, "--tcp", "127.0.0.1:0=127.0.0.1:9", "--shards", "1"])
            .output()
            .expect("prlimit and setpriv (util-linux) are needed for this test");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(3), "{cmd}: {err}");
        assert!(
            err.contains("RLIMIT_MEMLOCK is 64 KiB"),
            "{cmd} names the limit: {err}"
        );
        assert!(
            err.contains("need about") && err.contains("LimitMEMLOCK"),
            "{cmd} names the need and the fix: {err}"
        );
    }
}

/// The stats log has a line per listener and per upstream beside the totals:
/// two listeners, traffic through one, and each line counts only its own.
#[test]
fn stats_lines_count_per_listener_and_per_upstream() {
    let up = crate::harness::echo_upstream(1);
    let up_addr = up.first_addr();
    let (_dead, dead_addr) = crate::harness::dead_port();
    let cfg = crate::harness::write_config(&format!(
        "[runtime]\nshards = 1\nstats_interval = \"100ms\"\n\
         [[tcp]]\nname = \"busy\"\nlisten = \"127.0.0.1:0\"\nupstreams = [\"{dead_addr}\", \"{up_addr}\"]\n\
         max_fails = 0\n\
         [[tcp]]\nname = \"quiet\"\nlisten = \"127.0.0.1:0\"\nupstreams = [\"{up_addr}\"]\n"
    ));
    let fwd = crate::harness::Proc::start(&["run", "--config", cfg.to_str().expect("path")], 2);
    let busy = fwd.addr("busy");
    for _ in 0..4 {
        let got = crate::harness::round_trip(busy, b"ping").expect("round trip through busy");
        assert_eq!(got, b"ping");
    }
    fwd.wait_stat("accepted", Duration::from_secs(5), |v| v == 4);
    let ok = crate::harness::wait_until(Duration::from_secs(5), || {
        fwd.detail_stats("listener=busy").get("close_client_eof") == Some(&4)
    });
    assert!(ok, "listener line for busy; log:\n{}", fwd.log());
    let busy_line = fwd.detail_stats("listener=busy");
    assert_eq!(busy_line.get("accepted"), Some(&4), "{busy_line:?}");
    let quiet = fwd.detail_stats("listener=quiet");
    assert_eq!(
        quiet.get("accepted"),
        None,
        "nothing went through quiet: {quiet:?}"
    );
    // Round robin with retry (passive health off): every connection reached
    // the live upstream, two of them after the dead one refused.
    let live = fwd.detail_stats(&format!("listener=busy upstream={up_addr}"));
    assert_eq!(live.get("connect_attempts"), Some(&4), "{live:?}");
    assert_eq!(live.get("close_client_eof"), Some(&4), "{live:?}");
    assert_eq!(live.get("bytes_c2u"), Some(&16), "{live:?}");
    let dead = fwd.detail_stats(&format!("listener=busy upstream={dead_addr}"));
    assert_eq!(dead.get("connect_attempts"), Some(&2), "{dead:?}");
    assert_eq!(dead.get("connect_refused"), Some(&2), "{dead:?}");
}
