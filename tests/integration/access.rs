//! Who may connect, through the real binary: `allow`/`deny` by the client's
//! source address (clients bound to 127.0.0.2 and friends), by the address a
//! trusted PROXY header gave, UDP's `deny`, and the new-connection rates.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::time::{Duration, Instant};

use socket2::{Domain, Socket, Type};

use crate::harness::{Proc, echo_upstream, forwarder, wait_until, write_config};

const WAIT: Duration = Duration::from_secs(10);

/// A TCP connection to `to` from source address `from` (any port).
fn connect_from(from: &str, to: SocketAddr) -> TcpStream {
    let s = Socket::new(Domain::IPV4, Type::STREAM, None).expect("socket");
    let src: SocketAddr = format!("{from}:0").parse().expect("source");
    s.bind(&src.into()).expect("bind the client's source");
    s.connect(&to.into()).expect("connect");
    let s: TcpStream = s.into();
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    s
}

/// Sends `payload` from `from` and reads until the forwarder closes: the echo
/// when the client was let in, nothing when it was closed at accept.
fn echo_from(from: &str, to: SocketAddr, payload: &[u8]) -> Vec<u8> {
    let mut s = connect_from(from, to);
    // A refused client may see its write reset; that is an answer too.
    if s.write_all(payload).is_err() {
        return Vec::new();
    }
    let _ = s.shutdown(std::net::Shutdown::Write);
    let mut back = Vec::new();
    let _ = s.read_to_end(&mut back);
    back
}

#[test]
fn tcp_clients_are_let_in_by_allow_and_kept_out_by_deny() {
    let up = echo_upstream(1);
    let fwd = forwarder(
        &[up.first_addr()],
        "allow = [\"127.0.0.0/8\"]\ndeny = [\"127.0.0.2\"]",
        "",
    );
    let to = fwd.first_addr();
    assert_eq!(echo_from("127.0.0.1", to, b"one"), b"one");
    assert_eq!(echo_from("127.0.0.3", to, b"three"), b"three");
    assert!(
        echo_from("127.0.0.2", to, b"two").is_empty(),
        "127.0.0.2 is allowed but denied: deny wins"
    );
    fwd.wait_stat("close_denied", WAIT, |v| v == 1);
    fwd.wait_stat("accepted", WAIT, |v| v == 2);

    let only = forwarder(&[up.first_addr()], "allow = [\"127.0.0.4\"]", "");
    assert!(echo_from("127.0.0.1", only.first_addr(), b"x").is_empty());
    assert_eq!(echo_from("127.0.0.4", only.first_addr(), b"four"), b"four");
    only.wait_stat("close_denied", WAIT, |v| v == 1);
    assert!(
        only.log()
            .contains("not allowed by the listener's allow/deny"),
        "the refusal is logged:\n{}",
        only.log()
    );
}

#[test]
fn a_denied_client_is_counted_as_denied_even_at_max_connections() {
    let up = echo_upstream(1);
    let fwd = forwarder(
        &[up.first_addr()],
        "max_connections = 1\ndeny = [\"127.0.0.2\"]",
        "shards = 1",
    );
    let to = fwd.first_addr();
    let mut held = connect_from("127.0.0.1", to);
    held.write_all(b"held").expect("write");
    let mut got = [0u8; 4];
    held.read_exact(&mut got)
        .expect("the held connection is relayed");
    assert!(echo_from("127.0.0.3", to, b"x").is_empty(), "at the limit");
    fwd.wait_stat("close_limit", WAIT, |v| v == 1);
    assert!(echo_from("127.0.0.2", to, b"x").is_empty());
    fwd.wait_stat("close_denied", WAIT, |v| v == 1);
    assert_eq!(fwd.stat("close_limit"), 1, "the lists are checked first");
}

const FROM_DENIED: &[u8] = b"PROXY TCP4 192.0.2.7 198.51.100.9 40001 443\r\n";
const FROM_ALLOWED: &[u8] = b"PROXY TCP4 198.51.100.1 198.51.100.9 40001 443\r\n";

#[test]
fn a_trusted_proxy_header_is_checked_by_the_client_it_names() {
    let up = echo_upstream(1);
    // The proxy (127.0.0.1) is in neither list: with accept_proxy the lists
    // apply to the client the header names, trusted_proxies to the proxy.
    let fwd = forwarder(
        &[up.first_addr()],
        "accept_proxy = true\ntrusted_proxies = [\"127.0.0.0/8\"]\n\
         allow = [\"192.0.2.0/24\", \"198.51.100.0/24\"]\ndeny = [\"192.0.2.0/24\"]",
        "",
    );
    let to = fwd.first_addr();
    let mut denied = FROM_DENIED.to_vec();
    denied.extend_from_slice(b"hello");
    assert!(echo_from("127.0.0.1", to, &denied).is_empty());
    fwd.wait_stat("close_denied", WAIT, |v| v == 1);
    assert_eq!(fwd.stat("connect_attempts"), 0, "no upstream was tried");

    let mut allowed = FROM_ALLOWED.to_vec();
    allowed.extend_from_slice(b"hello");
    assert_eq!(echo_from("127.0.0.1", to, &allowed), b"hello");
    fwd.wait_stat("close_client_eof", WAIT, |v| v == 1);
    assert_eq!(fwd.stat("close_denied"), 1);
}

fn udp_forwarder(upstream: SocketAddr, keys: &str) -> Proc {
    let cfg = write_config(&format!(
        "[runtime]\nstats_interval = \"100ms\"\n[[udp]]\nname = \"u\"\nlisten = \"127.0.0.1:0\"\nupstreams = [\"{upstream}\"]\n{keys}\n"
    ));
    Proc::start(&["run", "--config", cfg.to_str().expect("path")], 1)
}

#[test]
fn udp_clients_in_deny_are_dropped_and_counted() {
    let up = Proc::start(&["echo", "--udp", "127.0.0.1:0"], 1);
    let fwd = udp_forwarder(
        up.first_addr(),
        "allow = [\"127.0.0.0/8\"]\ndeny = [\"127.0.0.2\"]",
    );
    let to = fwd.first_addr();
    let denied = UdpSocket::bind("127.0.0.2:0").expect("bind");
    for _ in 0..3 {
        denied.send_to(b"let me in", to).expect("send");
    }
    fwd.wait_stat("udp_drop_denied", WAIT, |v| v == 3);
    assert_eq!(fwd.stat("udp_sessions_created"), 0);

    let allowed = UdpSocket::bind("127.0.0.3:0").expect("bind");
    allowed
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    allowed.send_to(b"hi", to).expect("send");
    let mut b = [0u8; 16];
    let (n, _) = allowed.recv_from(&mut b).expect("the echo");
    assert_eq!(&b[..n], b"hi");
    assert_eq!(fwd.stat("udp_drop_denied"), 3);
}

/// Opens `n` connections from `from` one after another, each closed once the
/// forwarder has taken it (admitted and relayed, or closed at accept).
fn connections_from(from: &str, to: SocketAddr, n: usize) {
    for _ in 0..n {
        let mut s = connect_from(from, to);
        let _ = s.shutdown(std::net::Shutdown::Write);
        let mut sink = Vec::new();
        let _ = s.read_to_end(&mut sink);
    }
}

/// The most a token bucket of `rate` per second (burst = rate) can have
/// given out over `elapsed`, plus one for the clock's millisecond rounding.
fn budget(rate: u64, elapsed: Duration) -> u64 {
    rate + rate * elapsed.as_millis() as u64 / 1000 + 1
}

#[test]
fn new_connections_over_the_listeners_rate_are_closed_and_counted() {
    let up = echo_upstream(1);
    let fwd = forwarder(
        &[up.first_addr()],
        "new_connections_per_second = 3",
        "shards = 1",
    );
    let n = 30;
    let start = Instant::now();
    connections_from("127.0.0.1", fwd.first_addr(), n);
    let elapsed = start.elapsed();
    let total = |f: &Proc| f.stat("accepted") + f.stat("close_rate_limited");
    assert!(wait_until(WAIT, || total(&fwd) == n as u64));
    let accepted = fwd.stat("accepted");
    assert!(accepted >= 3, "the burst ({accepted} accepted)");
    assert!(
        accepted <= budget(3, elapsed),
        "{accepted} accepted in {elapsed:?} at 3 per second"
    );
    assert!(
        fwd.log().contains("over new_connections_per_second"),
        "the refusal is logged"
    );
}

#[test]
fn each_source_has_its_own_rate() {
    let up = echo_upstream(1);
    let fwd = forwarder(
        &[up.first_addr()],
        "new_connections_per_second_per_source = 2",
        "shards = 1",
    );
    let to = fwd.first_addr();
    let n = 20;
    let start = Instant::now();
    connections_from("127.0.0.2", to, n);
    let elapsed = start.elapsed();
    let total = |f: &Proc| f.stat("accepted") + f.stat("close_rate_limited");
    assert!(wait_until(WAIT, || total(&fwd) == n as u64));
    let busy = fwd.stat("accepted");
    assert!(busy >= 2, "the burst ({busy} accepted)");
    assert!(
        busy <= budget(2, elapsed),
        "{busy} accepted from one source in {elapsed:?} at 2 per second"
    );
    // Another source has a full bucket of its own.
    connections_from("127.0.0.3", to, 2);
    fwd.wait_stat("accepted", WAIT, |v| v == busy + 2);
    assert_eq!(fwd.stat("close_rate_limited"), n as u64 - busy);
}

/// A run of `width` consecutive loopback ports below the ephemeral range,
/// bound (and kept: the caller holds them until it hands them on). The scan
/// starts at a place of its own per call, so tests scanning at once do not
/// race for the same run.
fn bound_ports(width: u16, not: &[u16]) -> (u16, Vec<std::net::TcpListener>) {
    static CALLS: std::sync::atomic::AtomicU16 = std::sync::atomic::AtomicU16::new(0);
    let call = CALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let start = 20_000 + (std::process::id() as u16 % 50 + call * 50) * 97 % 9_000;
    (0..200u16)
        .map(|i| 20_000 + (start - 20_000 + i * 97) % 9_900)
        .find_map(|base| {
            if (base..base + width).any(|p| not.contains(&p)) {
                return None;
            }
            let ls = (base..base + width)
                .map(|p| std::net::TcpListener::bind(("127.0.0.1", p)))
                .collect::<Result<Vec<_>, _>>()
                .ok()?;
            Some((base, ls))
        })
        .expect("a free run of ports")
}

/// A free run of `width` ports (released again, for the forwarder to bind).
fn free_ports(width: u16, not: &[u16]) -> u16 {
    bound_ports(width, not).0
}

/// Upstreams on `width` bound ports, each answering every connection with
/// its own port number, then closing.
fn port_tellers(width: u16) -> (u16, Vec<std::thread::JoinHandle<()>>) {
    let (base, listeners) = bound_ports(width, &[]);
    let tellers = listeners
        .into_iter()
        .zip(base..)
        .map(|(l, port)| {
            std::thread::spawn(move || {
                // One connection each: the test makes exactly one per port.
                if let Ok((mut s, _)) = l.accept() {
                    let _ = s.write_all(format!("port {port}").as_bytes());
                }
            })
        })
        .collect();
    (base, tellers)
}

#[test]
fn a_port_range_forwards_each_port_to_the_upstream_port_at_its_offset() {
    let width = 3;
    let (up, tellers) = port_tellers(width);
    let listen = free_ports(width, &[up, up + 1, up + 2]);
    let cfg = write_config(&format!(
        "[runtime]\nstats_interval = \"100ms\"\n[[tcp]]\nname = \"r\"\n\
         listen = \"127.0.0.1:{listen}-{}\"\nupstreams = [\"127.0.0.1:{up}-{}\"]\n",
        listen + width - 1,
        up + width - 1
    ));
    let fwd = Proc::start(&["run", "--config", cfg.to_str().expect("path")], 3);
    for offset in 0..width {
        let name = format!("r:{}", listen + offset);
        assert_eq!(fwd.addr(&name).port(), listen + offset, "{name}");
        let mut s = TcpStream::connect(("127.0.0.1", listen + offset)).expect("connect");
        s.set_read_timeout(Some(WAIT)).expect("timeout");
        let mut back = String::new();
        s.read_to_string(&mut back).expect("read");
        assert_eq!(back, format!("port {}", up + offset));
    }
    for t in tellers {
        t.join().expect("upstream");
    }
    fwd.wait_stat("accepted", WAIT, |v| v == 3);
    assert_eq!(
        fwd.detail_stats(&format!("listener=r:{}", listen + 1))
            .get("accepted"),
        Some(&1),
        "each port is a listener with its own counters"
    );
}

#[test]
fn check_rejects_a_range_over_4096_ports_and_a_width_mismatch() {
    let too_wide = write_config(
        "[[tcp]]\nlisten = \"127.0.0.1:10000-14096\"\nupstreams = [\"127.0.0.5:80\"]\n",
    );
    let (code, _, err) =
        crate::harness::run_to_end(&["check", "--config", too_wide.to_str().expect("path")]);
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("tcp[0].listen") && err.contains("spans 4097 ports; at most 4096"),
        "{err}"
    );
    let mismatch = write_config(
        "[[udp]]\nlisten = \"127.0.0.1:10000-10099\"\nupstreams = [\"127.0.0.5:20000-20049\"]\n",
    );
    let (code, _, err) =
        crate::harness::run_to_end(&["check", "--config", mismatch.to_str().expect("path")]);
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("udp[0].upstreams[0]")
            && err.contains("\"127.0.0.5:20000-20049\" spans 50 ports")
            && err.contains("listen \"127.0.0.1:10000-10099\" spans 100"),
        "{err}"
    );
}

/// A free run of `width` consecutive loopback UDP ports (released again).
fn free_udp_ports(width: u16) -> u16 {
    (20_000..30_000u16)
        .step_by(89)
        .find(|&base| {
            (base..base + width)
                .map(|p| UdpSocket::bind(("127.0.0.1", p)))
                .collect::<Result<Vec<_>, _>>()
                .is_ok()
        })
        .expect("a free run of ports")
}

#[test]
fn a_udp_port_range_answers_on_every_port() {
    let up = Proc::start(&["echo", "--udp", "127.0.0.1:0"], 1);
    let listen = free_udp_ports(2);
    let cfg = write_config(&format!(
        "[[udp]]\nname = \"u\"\nlisten = \"127.0.0.1:{listen}-{}\"\nupstreams = [\"{}\"]\n",
        listen + 1,
        up.first_addr()
    ));
    let fwd = Proc::start(&["run", "--config", cfg.to_str().expect("path")], 2);
    let client = UdpSocket::bind("127.0.0.1:0").expect("bind");
    client
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    for port in [listen, listen + 1] {
        assert_eq!(fwd.addr(&format!("u:{port}")).port(), port);
        client.send_to(b"hi", ("127.0.0.1", port)).expect("send");
        let mut b = [0u8; 16];
        let (n, from) = client.recv_from(&mut b).expect("the echo");
        assert_eq!((&b[..n], from.port()), (&b"hi"[..], port));
    }
}
