//! Every wait has a bound and every resource a limit: refused and black-holed
//! upstreams, idle and half-close timeouts, peers that never read, and
//! max_connections.

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use crate::harness::{
    Proc, blackhole, dead_port, echo_upstream, forwarder, round_trip, wait_until, write_config,
};

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
    // Passive health off: the dead upstream stays in rotation.
    let fwd = forwarder(&[dead, echo.first_addr()], "max_fails = 0", "shards = 1");
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
    let fwd = forwarder(&[echo.first_addr()], r#"idle_timeout = "1s""#, "shards = 1");
    let mut c = TcpStream::connect(fwd.first_addr()).expect("connect");
    c.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let start = Instant::now();
    let mut b = [0u8; 1];
    // Something moves every 100 ms for 3 s: three idle timeouts' worth. The
    // timeout is ten gaps long, so a test thread descheduled for a few
    // hundred ms on a loaded machine (CI saw it with 300ms) is not idle.
    while start.elapsed() < Duration::from_secs(3) {
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

/// `forwarder`, started with RLIMIT_NOFILE `nofile` (soft and hard).
fn forwarder_with_nofile(nofile: u64, upstreams: &[SocketAddr], listener: &str) -> Proc {
    let ups: Vec<String> = upstreams.iter().map(|a| format!("\"{a}\"")).collect();
    let cfg = write_config(&format!(
        "[runtime]\nshards = 1\nstats_interval = \"100ms\"\n[[tcp]]\nname = \"t\"\nlisten = \"127.0.0.1:0\"\nupstreams = [{}]\n{listener}\n",
        ups.join(", ")
    ));
    Proc::start_with_nofile(nofile, &["run", "--config", cfg.to_str().expect("path")], 1)
}

/// The TCP connection cap the forwarder announced at start.
fn announced_cap(fwd: &Proc) -> u64 {
    let log = fwd.log();
    log.lines()
        .find_map(|l| {
            let rest = l.split("at most ").nth(1)?;
            rest.split(" TCP connections").next()?.parse().ok()
        })
        .unwrap_or_else(|| panic!("no descriptor cap announced:\n{log}"))
}

/// The defaults ask for more descriptors than a 4096 limit holds: that is
/// the host capping them, not a mistake, so it is an info line with the cap.
#[test]
fn default_limits_under_a_low_descriptor_limit_say_the_cap_without_a_warning() {
    let (_guard, dead) = dead_port();
    let fwd = forwarder_with_nofile(4096, &[dead], "");
    let log = fwd.log();
    assert!(
        !log.lines().any(|l| l.contains(" WARN ")),
        "a warning at default limits:\n{log}"
    );
    assert!(
        log.lines()
            .any(|l| l.contains(" INFO ") && l.contains("descriptor limit 4096: at most ")),
        "no info line with the descriptor cap:\n{log}"
    );
    assert!(announced_cap(&fwd) > 1000);
}

/// A configured limit the descriptor limit cannot meet warns, naming it.
#[test]
fn a_configured_max_connections_over_the_descriptor_limit_warns_naming_the_key() {
    let (_guard, dead) = dead_port();
    let fwd = forwarder_with_nofile(4096, &[dead], "max_connections = 50000");
    let log = fwd.log();
    assert!(
        log.lines().any(|l| l.contains(" WARN ")
            && l.contains("tcp listener 't' max_connections = 50000")
            && l.contains("ulimit -n")),
        "no warning naming max_connections:\n{log}"
    );
}

/// Reads what each client has been echoed so far, without blocking; a reset
/// or an end of stream fails the test (a queued client must just wait).
fn poll_echoes(clients: &mut [TcpStream], got: &mut [Vec<u8>]) {
    let mut b = [0u8; 64];
    for (i, (c, g)) in clients.iter_mut().zip(got.iter_mut()).enumerate() {
        loop {
            match c.read(&mut b) {
                Ok(0) => panic!("client {i} was closed instead of served or queued"),
                Ok(n) => g.extend_from_slice(&b[..n]),
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) => panic!("client {i}: {e} (accepted and then reset?)"),
            }
        }
    }
}

/// Under a low descriptor limit the forwarder accepts only the clients it
/// has descriptors for (client and upstream) and leaves the rest in the
/// listen queue, instead of accepting them and resetting them when the
/// upstream socket cannot be made; they are served once descriptors return.
#[test]
fn out_of_descriptors_the_forwarder_stops_accepting_instead_of_resetting() {
    let echo = echo_upstream(1);
    let fwd = forwarder_with_nofile(256, &[echo.first_addr()], "");
    let cap = announced_cap(&fwd) as usize;
    assert!((10..200).contains(&cap), "cap {cap}");
    let extra = 20;
    let n = cap + extra;
    let msg = |i: usize| format!("client {i:04}\n").into_bytes();
    let mut clients: Vec<TcpStream> = (0..n)
        .map(|i| {
            let mut c = TcpStream::connect(fwd.first_addr()).expect("connect");
            c.write_all(&msg(i)).expect("write");
            c.set_nonblocking(true).expect("nonblocking");
            c
        })
        .collect();
    let mut got = vec![Vec::new(); n];
    let served = |got: &[Vec<u8>]| (0..n).filter(|&i| got[i] == msg(i)).count();
    assert!(
        wait_until(Duration::from_secs(10), || {
            poll_echoes(&mut clients, &mut got);
            served(&got) == cap
        }),
        "{} of {cap} clients served",
        served(&got)
    );
    fwd.wait_stat("accept_paused_fd", Duration::from_secs(5), |v| v >= 1);
    assert_eq!(fwd.stat("accepted"), cap as u64, "{:?}", fwd.stats());
    poll_echoes(&mut clients, &mut got);
    assert_eq!(served(&got), cap, "served past the descriptor budget");
    // Served clients leave; the queued ones are accepted and served.
    let done: Vec<usize> = (0..n).filter(|&i| got[i] == msg(i)).take(extra).collect();
    for &i in done.iter().rev() {
        drop(clients.remove(i));
        got.remove(i);
    }
    let left: Vec<usize> = (0..n).filter(|i| !done.contains(i)).collect();
    let served_left =
        |got: &[Vec<u8>]| left.iter().zip(got).filter(|&(&i, g)| *g == msg(i)).count();
    assert!(
        wait_until(Duration::from_secs(10), || {
            poll_echoes(&mut clients, &mut got);
            served_left(&got) == left.len()
        }),
        "{} of {} clients served after others left",
        served_left(&got),
        left.len()
    );
    let s = fwd.stats();
    assert_eq!(s["close_connect_error"], 0, "{s:?}");
    assert_eq!(s["accept_errors"], 0, "{s:?}");
    assert!(s["accept_paused_fd"] >= 1, "{s:?}");
}
