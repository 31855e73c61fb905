//! Active health checks (`health_check`): the one checker takes an upstream
//! whose connects time out down after `fall` checks and back after `rise`,
//! the shards stop sending clients to it, and a `send_proxy` listener's
//! checks open with a PROXY v2 LOCAL header.

use std::io::Read;
use std::net::{SocketAddr, TcpListener};
use std::time::Duration;

use crate::harness::{
    Proc, blackhole, dead_port, echo_upstream, forwarder, round_trip, wait_until, write_config,
};

const WAIT: Duration = Duration::from_secs(10);

#[test]
fn an_upstream_whose_connects_time_out_goes_down_after_fall_and_back_after_rise() {
    let (hole, _filler, addr) = blackhole();
    let fwd = forwarder(
        &[addr],
        "health_check = { interval = \"200ms\", timeout = \"100ms\", rise = 2, fall = 3 }",
        "shards = 2",
    );
    let down = fwd.wait_log(&format!("upstream {addr} is down"), WAIT);
    assert!(
        down.contains("tcp listener 't'")
            && down.contains("3 consecutive connect timeouts (100ms)"),
        "{down}"
    );
    assert!(
        down.contains("WARN"),
        "a down upstream is a warning: {down}"
    );
    // Room in the accept queue: SYNs are answered again (the checks'
    // connections wait there, never accepted, which is all a check needs).
    hole.listen(128).expect("raise the backlog");
    let up = fwd.wait_log(&format!("upstream {addr} is up"), WAIT);
    assert!(up.contains("2 consecutive successful checks"), "{up}");
    assert!(up.contains("INFO"), "{up}");
    fwd.wait_stat("upstream_up", WAIT, |v| v == 1);
    let totals = fwd.stats();
    assert_eq!(totals.get("upstream_down"), Some(&1), "{totals:?}");
    // At least the three timeouts that took it down (more may have failed
    // before the backlog was raised).
    let failures = totals.get("health_check_failures").copied().unwrap_or(0);
    assert!(failures >= 3, "{totals:?}");
    let line = fwd.detail_stats(&format!("listener=t upstream={addr}"));
    assert_eq!(line.get("upstream_down"), Some(&1), "{line:?}");
    assert!(
        line.get("health_checks").is_some_and(|&n| n >= 5),
        "{line:?}"
    );
}

#[test]
fn clients_are_not_sent_to_an_upstream_the_checker_took_down() {
    let echo = echo_upstream(1);
    let echo_addr = echo.first_addr();
    let (_guard, dead) = dead_port();
    // Listener "a" comes first so that "t"'s upstreams are not ids 0 and 1:
    // the checker and the shards must count ids the same way.
    let cfg = write_config(&format!(
        "[runtime]\nshards = 2\nstats_interval = \"100ms\"\n\
         [[tcp]]\nname = \"a\"\nlisten = \"127.0.0.1:0\"\nupstreams = [\"{echo_addr}\", \"{echo_addr}\"]\n\
         [[tcp]]\nname = \"t\"\nlisten = \"127.0.0.1:0\"\nupstreams = [\"{dead}\", \"{echo_addr}\"]\n\
         health_check = {{ interval = \"100ms\", timeout = \"100ms\", rise = 1, fall = 1 }}\n"
    ));
    let fwd = Proc::start(&["run", "--config", cfg.to_str().expect("path")], 2);
    let down = fwd.wait_log(&format!("upstream {dead} is down"), WAIT);
    assert!(
        down.contains("tcp listener 't'") && down.contains("connection refused"),
        "{down}"
    );
    let dead_line = format!("listener=t upstream={dead}");
    let attempts = |line: &str| {
        let stats = fwd.detail_stats(line);
        stats.get("connect_attempts").copied().unwrap_or(0)
    };
    let before = attempts(&dead_line);
    let t = fwd.addr("t");
    for i in 0..20u8 {
        let back = round_trip(t, &[i; 100]).expect("round trip");
        assert_eq!(back, vec![i; 100]);
    }
    // Wait for a stats batch that has all 20 at the echo upstream; the dead
    // upstream's line comes before it in the same batch.
    let echo_line = format!("listener=t upstream={echo_addr}");
    let counted = wait_until(WAIT, || attempts(&echo_line) >= 20);
    assert!(counted, "the echo upstream took 20; log:\n{}", fwd.log());
    assert_eq!(
        attempts(&dead_line),
        before,
        "no client was sent to the down upstream; log:\n{}",
        fwd.log()
    );
}

#[test]
fn a_send_proxy_listeners_checks_send_a_v2_local_header() {
    let upstream = TcpListener::bind("127.0.0.1:0").expect("bind");
    upstream.set_nonblocking(true).expect("nonblocking");
    let addr: SocketAddr = upstream.local_addr().expect("addr");
    let _fwd = forwarder(
        &[addr],
        "send_proxy = \"v2\"\nhealth_check = { interval = \"100ms\" }",
        "shards = 1",
    );
    let mut accepted = None;
    let checked = wait_until(WAIT, || {
        accepted = upstream.accept().ok();
        accepted.is_some()
    });
    assert!(checked, "no health check connected");
    let (mut conn, _) = accepted.expect("a check");
    conn.set_nonblocking(false).expect("blocking");
    conn.set_read_timeout(Some(WAIT)).expect("timeout");
    let mut got = Vec::new();
    conn.read_to_end(&mut got)
        .expect("the check sends, then closes");
    let mut local = ringfwd::front::proxy::V2_SIGNATURE.to_vec();
    local.extend_from_slice(&[0x20, 0x00, 0x00, 0x00]);
    assert_eq!(got, local, "the v2 LOCAL header, then FIN");
}

#[test]
fn when_every_upstream_is_down_clients_still_try_them() {
    let (_guard, dead) = dead_port();
    let fwd = forwarder(
        &[dead],
        "health_check = { interval = \"100ms\", fall = 1 }",
        "shards = 1",
    );
    fwd.wait_log(&format!("upstream {dead} is down"), WAIT);
    let t = fwd.first_addr();
    for _ in 0..3 {
        // The upstream refuses, so the client is closed; what matters is
        // that it was tried rather than refused a try.
        let _ = round_trip(t, b"x");
    }
    let line = format!("listener=t upstream={dead}");
    let tried = wait_until(WAIT, || {
        fwd.detail_stats(&line)
            .get("connect_attempts")
            .is_some_and(|&n| n >= 3)
    });
    assert!(
        tried,
        "an all-down pool is still tried; log:\n{}",
        fwd.log()
    );
}
