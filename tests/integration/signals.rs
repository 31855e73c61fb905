//! Signals an operator of NGINX or HAProxy sends out of habit: SIGUSR1 is
//! logged and ignored without an access log (SIGHUP reloads: see reload.rs;
//! SIGUSR2 upgrades: see upgrade.rs),
//! SIGPIPE never ends the process, and SIGQUIT drains as SIGTERM does. And a
//! broken stderr (its reader gone, or a full disk) costs log lines, never
//! the forwarder.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::harness::{
    BIN, Proc, closed_pipe, dead_port, echo_upstream, forwarder, reset, round_trip, wait_until,
    write_config,
};

fn echo_once(c: &mut TcpStream, msg: &[u8]) {
    c.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    c.write_all(msg).expect("write");
    let mut back = vec![0u8; msg.len()];
    c.read_exact(&mut back).expect("read");
    assert_eq!(back, msg);
}

#[test]
fn sigusr1_and_sigpipe_are_ignored_and_serving_goes_on() {
    let echo = echo_upstream(1);
    let mut fwd = forwarder(&[echo.first_addr()], "", "shards = 1");
    let addr = fwd.first_addr();
    let mut open = TcpStream::connect(addr).expect("connect");
    echo_once(&mut open, b"before");
    // SIGHUP reloads (reload.rs), SIGUSR2 upgrades (upgrade.rs).
    fwd.signal(libc::SIGUSR1);
    assert!(
        wait_until(Duration::from_secs(5), || fwd
            .log()
            .contains("SIGUSR1 ignored")),
        "no \"SIGUSR1 ignored\" in the log:\n{}",
        fwd.log()
    );
    fwd.signal(libc::SIGPIPE);
    // Each signal was handled (or discarded) by now: the process serves the
    // open connection and new ones.
    echo_once(&mut open, b"after the signals");
    assert_eq!(
        round_trip(addr, b"a new one").expect("round trip"),
        b"a new one"
    );
    assert!(fwd.wait_exit(Duration::ZERO).is_none(), "{}", fwd.log());
    assert!(!fwd.log().contains("draining"), "{}", fwd.log());
    drop(open);
    fwd.signal(libc::SIGTERM);
    let status = fwd.wait_exit(Duration::from_secs(10)).expect("exit");
    assert_eq!(status.code(), Some(0), "{}", fwd.log());
    // The log sink's own counter is in the final stats (nothing lost here).
    assert_eq!(
        fwd.stats().get("log_write_errors"),
        Some(&0),
        "{}",
        fwd.log()
    );
}

#[test]
fn sigquit_drains_like_sigterm_and_exits_zero_with_final_stats() {
    let echo = echo_upstream(1);
    let mut fwd = forwarder(&[echo.first_addr()], "", "shards = 1");
    let addr = fwd.first_addr();
    let mut open = TcpStream::connect(addr).expect("connect");
    echo_once(&mut open, b"before");
    fwd.signal(libc::SIGQUIT);
    assert!(
        wait_until(Duration::from_secs(5), || fwd
            .log()
            .contains("SIGQUIT: draining")),
        "{}",
        fwd.log()
    );
    assert!(
        wait_until(Duration::from_secs(5), || TcpStream::connect(addr).is_err()),
        "still accepting after SIGQUIT"
    );
    echo_once(&mut open, b"during the drain");
    drop(open);
    let status = fwd.wait_exit(Duration::from_secs(10)).expect("exits");
    assert_eq!(status.code(), Some(0), "{}", fwd.log());
    assert!(fwd.log().contains("final stats"), "{}", fwd.log());
    assert!(fwd.stat("accepted") >= 1);
}

/// A forwarder whose stderr is `stderr` (not readable by the test): its
/// listeners, learnt from stdout.
fn start_blind(args: &[&str], stderr: Stdio, listeners: usize) -> (Child, Vec<SocketAddr>) {
    let mut child = Command::new(BIN)
        .args(args)
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(stderr)
        .spawn()
        .expect("spawn");
    let out = BufReader::new(child.stdout.take().expect("stdout"));
    let mut addrs = Vec::new();
    for line in out.lines().map_while(Result::ok) {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.first() == Some(&"listening") && f.len() >= 4 {
            addrs.push(f[3].parse().expect("address"));
        }
        if addrs.len() == listeners {
            break;
        }
    }
    if addrs.len() < listeners {
        let _ = child.kill();
        let status = child.wait();
        panic!("ringfwd {args:?} died before listening: {status:?}");
    }
    (child, addrs)
}

fn dev_full() -> Stdio {
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/full")
        .expect("/dev/full");
    Stdio::from(f)
}

#[test]
fn a_broken_stderr_costs_log_lines_never_the_forwarder() {
    let echo = echo_upstream(1);
    let (_dead_guard, dead) = dead_port();
    let cfg = write_config(&format!(
        "[runtime]\nshards = 1\n\
         [[tcp]]\nname = \"good\"\nlisten = \"127.0.0.1:0\"\nupstreams = [\"{}\"]\n\
         [[tcp]]\nname = \"refused\"\nlisten = \"127.0.0.1:0\"\nupstreams = [\"{dead}\"]\n",
        echo.first_addr()
    ));
    for (what, stderr) in [("closed pipe", closed_pipe()), ("/dev/full", dev_full())] {
        let args = ["run", "--config", cfg.to_str().expect("path")];
        let (mut child, addrs) = start_blind(&args, stderr, 2);
        // Things that log: a client reset, and an upstream that refuses.
        let mut c = TcpStream::connect(addrs[0]).expect("connect");
        echo_once(&mut c, b"x");
        reset(c);
        for _ in 0..20 {
            let _ = round_trip(addrs[1], b"refused");
        }
        assert_eq!(
            round_trip(addrs[0], b"still forwarding").expect("round trip"),
            b"still forwarding",
            "{what}"
        );
        assert!(child.try_wait().expect("wait").is_none(), "{what}: died");
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        let mut code = None;
        assert!(
            wait_until(Duration::from_secs(10), || {
                code = child.try_wait().ok().flatten().map(|s| s.code());
                code.is_some()
            }),
            "{what}: no exit after SIGTERM"
        );
        assert_eq!(code, Some(Some(0)), "{what}");
    }
}

#[test]
fn the_echo_upstream_reloads_its_command_line_on_sighup_and_keeps_serving() {
    let mut echo: Proc = echo_upstream(1);
    echo.signal(libc::SIGHUP);
    assert!(
        wait_until(Duration::from_secs(5), || echo
            .log()
            .contains("SIGHUP: configuration reloaded: 1 listener(s) kept")),
        "{}",
        echo.log()
    );
    assert_eq!(round_trip(echo.first_addr(), b"hi").expect("echo"), b"hi");
    echo.signal(libc::SIGTERM);
    let status = echo.wait_exit(Duration::from_secs(10)).expect("exit");
    assert_eq!(status.code(), Some(0));
}
