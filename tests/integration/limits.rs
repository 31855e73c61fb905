//! Every wait has a bound and every resource a limit: refused and black-holed
//! upstreams, idle and half-close timeouts, peers that never read, and
//! max_connections.

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use crate::harness::{blackhole, dead_port, echo_upstream, forwarder, round_trip, wait_until};

/// Reads until EOF or error; returns how the stream ended and after how long.
fn wait_closed(s: &mut TcpStream, timeout: Duration) -> (Result<usize, ErrorKind>, Duration) {
    s.set_read_timeout(Some(timeout)).expect("timeout");
    let t = Instant::now();
    let mut total = 0;
    let mut b = [0u8; 4096];
    loop {
        match s.read(&mut b) {
            Ok(0) => return (Ok(total), t.elapsed()),
            Ok(n) => total += n,
            Err(e) => return (Err(e.kind()), t.elapsed()),
        }
    }
}

#[test]
fn refused_upstream_closes_the_client_promptly() {
    let (_guard, dead) = dead_port();
    let fwd = forwarder(&[dead], "", "shards = 2");
    let mut c = TcpStream::connect(fwd.first_addr()).expect("connect");
    let (end, took) = wait_closed(&mut c, Duration::from_secs(5));
    assert_eq!(end, Ok(0), "the client gets a clean close");
    assert!(
        took < Duration::from_secs(3),
        "closed promptly, took {took:?}"
    );
    fwd.wait_stat("close_connect_refused", Duration::from_secs(5), |v| v == 1);
    assert_eq!(fwd.stat("connect_refused"), 1);
}

/// Every HTTP client sends its request before it reads: with no upstream it
/// must see the end of the stream (as from HAProxy or NGINX), not the
/// `ECONNRESET` that closing a socket with unread data sends.
#[test]
fn a_dead_upstream_gives_a_client_that_sent_data_a_fin_not_a_reset() {
    let (_guard, dead) = dead_port();
    let fwd = forwarder(&[dead], "", "shards = 1");
    let clients = 10;
    for i in 0..clients {
        let mut c = TcpStream::connect(fwd.first_addr()).expect("connect");
        c.write_all(b"GET / HTTP/1.1\r\nHost: example\r\n\r\n")
            .expect("request");
        let (end, _) = wait_closed(&mut c, Duration::from_secs(5));
        assert_eq!(end, Ok(0), "client {i}: an end of stream, not a reset");
    }
    fwd.wait_stat("close_connect_refused", Duration::from_secs(5), |v| {
        v == clients
    });
}

/// The same when the request surely arrived first: the upstream times out.
#[test]
fn a_timed_out_upstream_gives_a_client_that_sent_data_a_fin_not_a_reset() {
    let (_l, _filler, hole) = blackhole();
    let fwd = forwarder(&[hole], r#"connect_timeout = "300ms""#, "shards = 1");
    let mut c = TcpStream::connect(fwd.first_addr()).expect("connect");
    c.write_all(&[7u8; 20_000]).expect("request");
    let (end, took) = wait_closed(&mut c, Duration::from_secs(10));
    assert_eq!(end, Ok(0), "an end of stream, not a reset");
    assert!(took >= Duration::from_millis(250), "closed after {took:?}");
    // Its own FIN ends the lingering at once.
    drop(c);
    fwd.wait_stat("close_connect_timeout", Duration::from_secs(5), |v| v == 1);
    assert_eq!(fwd.stat("active"), 0);
}

#[test]
fn a_refused_upstream_is_skipped_for_the_next_one() {
    let (_guard, dead) = dead_port();
    let echo = echo_upstream(1);
    let fwd = forwarder(&[dead, echo.first_addr()], "", "shards = 1");
    // Round-robin starts each connection at the next upstream, so half of
    // these hit the dead one first and must fail over.
    for i in 0..6u8 {
        let payload = vec![i; 10_000];
        let back = round_trip(fwd.first_addr(), &payload).expect("round trip");
        assert!(back == payload, "connection {i}: echo differs");
    }
    fwd.wait_stat("close_client_eof", Duration::from_secs(5), |v| v == 6);
    assert_eq!(
        fwd.stat("connect_refused"),
        3,
        "every other connection tried the dead upstream first"
    );
}

#[test]
fn an_upstream_that_never_answers_times_out_and_the_next_is_tried() {
    let (_l, _filler, hole) = blackhole();
    let echo = echo_upstream(1);
    let fwd = forwarder(
        &[hole, echo.first_addr()],
        r#"connect_timeout = "300ms""#,
        "shards = 1",
    );
    // First connection starts at the black hole: it must wait out
    // connect_timeout and then reach the echo upstream.
    let t = Instant::now();
    let back = round_trip(fwd.first_addr(), b"through the second upstream").expect("round trip");
    let took = t.elapsed();
    assert_eq!(back, b"through the second upstream");
    assert!(
        took >= Duration::from_millis(300),
        "failed over after {took:?}, before connect_timeout"
    );
    fwd.wait_stat("connect_timeouts", Duration::from_secs(5), |v| v == 1);
}

#[test]
fn connect_timeout_with_only_a_dead_upstream_closes_the_client() {
    let (_l, _filler, hole) = blackhole();
    let fwd = forwarder(&[hole], r#"connect_timeout = "300ms""#, "shards = 1");
    let mut c = TcpStream::connect(fwd.first_addr()).expect("connect");
    let (end, took) = wait_closed(&mut c, Duration::from_secs(10));
    assert_eq!(end, Ok(0));
    assert!(took >= Duration::from_millis(250), "closed after {took:?}");
    fwd.wait_stat("close_connect_timeout", Duration::from_secs(5), |v| v == 1);
}

#[test]
fn idle_connections_are_closed_after_idle_timeout() {
    let echo = echo_upstream(1);
    let fwd = forwarder(
        &[echo.first_addr()],
        r#"idle_timeout = "500ms""#,
        "shards = 2",
    );
    let mut c = TcpStream::connect(fwd.first_addr()).expect("connect");
    c.write_all(b"ping").expect("write");
    let mut b = [0u8; 4];
    c.read_exact(&mut b).expect("echo");
    let (end, took) = wait_closed(&mut c, Duration::from_secs(10));
    assert_eq!(end, Ok(0));
    assert!(
        took >= Duration::from_millis(400),
        "closed after {took:?}, before the idle timeout"
    );
    fwd.wait_stat("close_idle_timeout", Duration::from_secs(5), |v| v == 1);
}

#[test]
fn traffic_keeps_a_connection_past_idle_timeout() {
    let echo = echo_upstream(1);
    let fwd = forwarder(
        &[echo.first_addr()],
        r#"idle_timeout = "300ms""#,
        "shards = 1",
    );
    let mut c = TcpStream::connect(fwd.first_addr()).expect("connect");
    c.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let start = Instant::now();
    let mut b = [0u8; 1];
    // Something moves every 100 ms for 1.2 s: four idle timeouts' worth.
    while start.elapsed() < Duration::from_millis(1200) {
        c.write_all(b"x").expect("write while active");
        c.read_exact(&mut b).expect("echo while active");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(fwd.stat("close_idle_timeout"), 0);
}

#[test]
fn a_half_closed_connection_with_a_silent_peer_ends_after_half_close_timeout() {
    let up = TcpListener::bind("127.0.0.1:0").expect("bind");
    let fwd = forwarder(
        &[up.local_addr().expect("addr")],
        "idle_timeout = \"1h\"\nhalf_close_timeout = \"400ms\"",
        "shards = 1",
    );
    let mut c = TcpStream::connect(fwd.first_addr()).expect("connect");
    let (held, _) = up.accept().expect("accept"); // never writes, never closes
    c.shutdown(Shutdown::Write).expect("client FIN");
    let (end, took) = wait_closed(&mut c, Duration::from_secs(10));
    assert_eq!(end, Ok(0));
    assert!(took >= Duration::from_millis(300), "closed after {took:?}");
    fwd.wait_stat("close_half_close_timeout", Duration::from_secs(5), |v| {
        v == 1
    });
    drop(held);
}

/// Pushes into `s` until writes stall for `quiet` (or `cap` bytes); returns bytes written.
fn push_until_stalled(s: &mut TcpStream, quiet: Duration, cap: u64) -> u64 {
    s.set_nonblocking(true).expect("nonblocking");
    let buf = vec![0x5a; 256 << 10];
    let mut written = 0u64;
    let mut last_progress = Instant::now();
    while written < cap && last_progress.elapsed() < quiet {
        match s.write(&buf) {
            Ok(n) => {
                written += n as u64;
                last_progress = Instant::now();
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(e) => panic!("write failed after {written} bytes: {e}"),
        }
    }
    written
}

#[test]
fn peers_that_never_read_keep_forwarder_memory_bounded() {
    const RUNTIME: &str = "shards = 2\nbuffer_size = \"16KiB\"\nbuffers_per_shard = 256";
    const CAP: u64 = 1 << 30;
    // Client → upstream that never reads.
    let up = TcpListener::bind("127.0.0.1:0").expect("bind");
    let fwd = forwarder(&[up.local_addr().expect("addr")], "", RUNTIME);
    let before = fwd.rss_kib();
    let mut c = TcpStream::connect(fwd.first_addr()).expect("connect");
    let (mut u, _) = up.accept().expect("accept");
    let pushed = push_until_stalled(&mut c, Duration::from_millis(700), CAP);
    let after = fwd.rss_kib();
    assert!(
        pushed < CAP,
        "1 GiB went into a peer that never reads: nothing pushes back"
    );
    // 2 shards x 256 x 16 KiB = 8 MiB of buffers at most, plus slack.
    assert!(
        after.saturating_sub(before) < 24 * 1024,
        "forwarder RSS grew from {before} KiB to {after} KiB while {pushed} bytes were pushed"
    );
    // The other way: an upstream that writes forever to a client that never reads.
    let mut c2 = TcpStream::connect(fwd.first_addr()).expect("connect");
    let (mut u2, _) = up.accept().expect("accept");
    let pushed2 = push_until_stalled(&mut u2, Duration::from_millis(700), CAP);
    let after2 = fwd.rss_kib();
    assert!(pushed2 < CAP, "1 GiB went into a client that never reads");
    assert!(
        after2.saturating_sub(before) < 24 * 1024,
        "forwarder RSS grew from {before} KiB to {after2} KiB"
    );
    // Nothing was lost on the way: the stalled bytes are still deliverable.
    u.set_nonblocking(false).expect("blocking");
    u.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let mut first = [0u8; 1024];
    u.read_exact(&mut first)
        .expect("the upstream can still read what was pushed");
    assert!(first.iter().all(|&b| b == 0x5a));
    c2.set_nonblocking(false).expect("blocking");
    c2.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    c2.read_exact(&mut first)
        .expect("the client can still read what was pushed");
}

#[test]
fn connections_beyond_max_connections_are_closed_and_counted() {
    let echo = echo_upstream(1);
    let fwd = forwarder(&[echo.first_addr()], "max_connections = 2", "shards = 1");
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut c = TcpStream::connect(fwd.first_addr()).expect("connect");
        c.set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        c.write_all(b"hi").expect("write");
        let mut b = [0u8; 2];
        c.read_exact(&mut b).expect("admitted connection works");
        held.push(c);
    }
    let mut third =
        TcpStream::connect(fwd.first_addr()).expect("connect is accepted by the kernel");
    let (end, _) = wait_closed(&mut third, Duration::from_secs(5));
    assert!(
        matches!(end, Ok(0) | Err(ErrorKind::ConnectionReset)),
        "{end:?}"
    );
    fwd.wait_stat("close_limit", Duration::from_secs(5), |v| v == 1);
    // Room again once one closes.
    drop(held.pop());
    assert!(
        wait_until(Duration::from_secs(5), || fwd.stat("active") == 1),
        "the closed connection was not released"
    );
    let back = round_trip(fwd.first_addr(), b"again").expect("round trip");
    assert_eq!(back, b"again");
}
