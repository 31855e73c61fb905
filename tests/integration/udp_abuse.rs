//! UDP under abuse and at shutdown, through the real binary: a drain is not
//! held by idle sessions but still delivers a reply owed; forged sources that
//! would make the forwarder talk to itself are dropped; a flood of forged
//! sources cannot squat the session table.

use std::collections::{HashMap, HashSet};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::harness::{Proc, wait_until, write_config};

const WAIT: Duration = Duration::from_secs(10);

/// A forwarder on one shard with the given `[[udp]]` sections.
fn forwarder(runtime: &str, listeners: &[(&str, &str, SocketAddr, &str)]) -> Proc {
    let mut cfg = format!("[runtime]\nshards = 1\nstats_interval = \"100ms\"\n{runtime}\n");
    for (name, listen, up, extra) in listeners {
        cfg.push_str(&format!(
            "[[udp]]\nname = \"{name}\"\nlisten = \"{listen}\"\nupstreams = [\"{up}\"]\n{extra}\n"
        ));
    }
    let path = write_config(&cfg);
    Proc::start(
        &["run", "--config", path.to_str().expect("path")],
        listeners.len(),
    )
}

fn client() -> UdpSocket {
    let s = UdpSocket::bind("127.0.0.1:0").expect("bind client");
    s.set_read_timeout(Some(Duration::from_secs(3)))
        .expect("timeout");
    s
}

fn exchange(s: &UdpSocket, to: SocketAddr, payload: &[u8]) -> Result<Vec<u8>, String> {
    s.send_to(payload, to).map_err(|e| e.to_string())?;
    let mut b = [0u8; 2048];
    let (n, _) = s
        .recv_from(&mut b)
        .map_err(|e| format!("no reply to {:?}: {e}", String::from_utf8_lossy(payload)))?;
    Ok(b[..n].to_vec())
}

/// How the test upstream answers.
#[derive(Clone, Copy)]
enum Answer {
    /// Every datagram, at once (also unsolicited ones).
    All,
    /// Only datagrams starting with "legit": the flood never gets a reply.
    LegitOnly,
    /// Holds each datagram until the test says `release`.
    OnRelease,
}

/// A UDP upstream on 127.0.0.1 that records which of its peers' ports sent
/// which ids (the payload before ':').
struct Upstream {
    addr: SocketAddr,
    seen: Arc<Mutex<HashMap<u16, HashSet<String>>>>,
    received: Arc<Mutex<u64>>,
    release: Option<mpsc::Sender<()>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Upstream {
    fn start(answer: Answer) -> Upstream {
        let sock = UdpSocket::bind("127.0.0.1:0").expect("bind upstream");
        sock.set_read_timeout(Some(Duration::from_millis(10)))
            .expect("timeout");
        let addr = sock.local_addr().expect("addr");
        let seen: Arc<Mutex<HashMap<u16, HashSet<String>>>> = Arc::default();
        let received: Arc<Mutex<u64>> = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let (tx, rx) = mpsc::channel::<()>();
        let (seen2, received2, stop2) = (seen.clone(), received.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            let mut b = vec![0u8; 2048];
            let mut held: Vec<(Vec<u8>, SocketAddr)> = Vec::new();
            let mut released = false;
            while !stop2.load(Ordering::Relaxed) {
                released |= rx.try_recv().is_ok();
                if released {
                    for (data, to) in held.drain(..) {
                        let _ = sock.send_to(&data, to);
                    }
                }
                let Ok((n, from)) = sock.recv_from(&mut b) else {
                    continue;
                };
                let data = &b[..n];
                let id = String::from_utf8_lossy(data)
                    .split(':')
                    .next()
                    .unwrap_or_default()
                    .to_owned();
                seen2
                    .lock()
                    .expect("lock")
                    .entry(from.port())
                    .or_default()
                    .insert(id);
                *received2.lock().expect("lock") += 1;
                match answer {
                    Answer::All => {
                        let _ = sock.send_to(data, from);
                    }
                    Answer::LegitOnly if data.starts_with(b"legit") => {
                        let _ = sock.send_to(data, from);
                    }
                    Answer::LegitOnly => {}
                    Answer::OnRelease => held.push((data.to_vec(), from)),
                }
            }
        });
        Upstream {
            addr,
            seen,
            received,
            release: Some(tx),
            stop,
            thread: Some(thread),
        }
    }

    fn received(&self) -> u64 {
        *self.received.lock().expect("lock")
    }

    fn release(&self) {
        if let Some(tx) = &self.release {
            let _ = tx.send(());
        }
    }

    /// The upstream-side ports that carried datagrams of client `id`.
    fn ports_of(&self, id: &str) -> Vec<u16> {
        let seen = self.seen.lock().expect("lock");
        let mut ports: Vec<u16> = seen
            .iter()
            .filter(|(_, ids)| ids.contains(id))
            .map(|(p, _)| *p)
            .collect();
        ports.sort_unstable();
        ports
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        self.release.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

// ---- item: a drain is not held by a session that owes nothing ----

#[test]
fn one_datagram_does_not_hold_a_drain_for_drain_timeout() {
    let up = Upstream::start(Answer::All);
    let mut fwd = forwarder(
        "drain_timeout = \"30s\"",
        &[("u", "127.0.0.1:0", up.addr, "idle_timeout = \"60s\"")],
    );
    let c = client();
    assert_eq!(
        exchange(&c, fwd.first_addr(), b"one:0").expect("reply"),
        b"one:0"
    );
    fwd.wait_stat("udp_datagrams_u2c", WAIT, |v| v == 1);
    let signalled = Instant::now();
    fwd.signal(libc::SIGTERM);
    let status = fwd.wait_exit(Duration::from_secs(5)).unwrap_or_else(|| {
        panic!(
            "still running 5s after SIGTERM with one answered session (drain_timeout 30s, idle_timeout 60s); log:\n{}",
            fwd.log()
        )
    });
    assert!(status.success(), "{status:?}; log:\n{}", fwd.log());
    assert!(signalled.elapsed() < Duration::from_secs(5));
    assert_eq!(fwd.stat("udp_end_drained"), 1, "log:\n{}", fwd.log());
    assert_eq!(fwd.stat("udp_end_shutdown"), 0, "not cut at drain_timeout");
}

#[test]
fn a_reply_owed_when_the_drain_starts_is_delivered_before_exit() {
    let up = Upstream::start(Answer::OnRelease);
    let mut fwd = forwarder(
        "drain_timeout = \"30s\"",
        &[("u", "127.0.0.1:0", up.addr, "idle_timeout = \"60s\"")],
    );
    let listen = fwd.first_addr();
    let c = client();
    c.send_to(b"owed:0", listen).expect("send");
    assert!(
        wait_until(WAIT, || up.received() == 1),
        "the upstream never got the request"
    );
    fwd.signal(libc::SIGTERM);
    // The shard handles its commands in order, so a stats line logged after
    // the drain announcement comes from a shard already draining.
    assert!(
        wait_until(WAIT, || {
            let log = fwd.log();
            log.find("draining — ")
                .is_some_and(|d| log.rfind(" stats accepted=").is_some_and(|s| s > d))
        }),
        "the forwarder never reported draining; log:\n{}",
        fwd.log()
    );
    up.release();
    let mut b = [0u8; 64];
    let (n, from) = c.recv_from(&mut b).unwrap_or_else(|e| {
        panic!(
            "the reply owed at the drain never came: {e}; log:\n{}",
            fwd.log()
        )
    });
    assert_eq!((&b[..n], from), (&b"owed:0"[..], listen));
    let status = fwd
        .wait_exit(Duration::from_secs(5))
        .unwrap_or_else(|| panic!("still running after the reply; log:\n{}", fwd.log()));
    assert!(status.success(), "{status:?}");
    assert_eq!(fwd.stat("udp_end_drained"), 1, "log:\n{}", fwd.log());
}

// ---- item: forged sources that would loop ----

/// A raw socket that sends IPv4 packets with headers we write; None (and a
/// printed reason) when the test may not open one (not root).
fn raw_socket() -> Option<socket2::Socket> {
    match socket2::Socket::new(
        socket2::Domain::IPV4,
        socket2::Type::RAW,
        Some(socket2::Protocol::from(libc::IPPROTO_RAW)),
    ) {
        Ok(s) => Some(s),
        Err(e) => {
            eprintln!("skipped: a raw socket (to forge a source address) needs root: {e}");
            None
        }
    }
}

/// Sends one UDP datagram from the forged `src` to `dst` (UDP checksum 0:
/// none, allowed over IPv4; the kernel fills in the IP checksum).
fn send_forged(raw: &socket2::Socket, src: SocketAddr, dst: SocketAddr, payload: &[u8]) {
    let (SocketAddr::V4(src), SocketAddr::V4(dst)) = (src, dst) else {
        panic!("IPv4 only: {src} -> {dst}");
    };
    let udp_len = 8 + payload.len();
    let total = 20 + udp_len;
    let mut p = Vec::with_capacity(total);
    p.extend_from_slice(&[0x45, 0]);
    p.extend_from_slice(&(total as u16).to_be_bytes());
    p.extend_from_slice(&[0, 0, 0x40, 0, 64, libc::IPPROTO_UDP as u8, 0, 0]);
    p.extend_from_slice(&src.ip().octets());
    p.extend_from_slice(&dst.ip().octets());
    p.extend_from_slice(&src.port().to_be_bytes());
    p.extend_from_slice(&dst.port().to_be_bytes());
    p.extend_from_slice(&(udp_len as u16).to_be_bytes());
    p.extend_from_slice(&[0, 0]);
    p.extend_from_slice(payload);
    let to = SocketAddr::V4(SocketAddrV4::new(*dst.ip(), 0));
    raw.send_to(&p, &to.into()).expect("send forged datagram");
}

/// After a forged datagram: it was dropped as a loop before any session
/// existed, and the forwarder still serves a real client.
fn assert_dropped_as_loop(fwd: &Proc, listen: SocketAddr, drops: u64) {
    fwd.wait_stat("udp_drop_loop", WAIT, |v| v >= drops);
    assert_eq!(fwd.stat("udp_drop_loop"), drops);
    assert_eq!(
        fwd.stat("udp_sessions_created"),
        0,
        "the forged datagram opened a session"
    );
    assert_eq!(fwd.stat("udp_datagrams_c2u"), 0, "it was forwarded");
    let c = client();
    assert_eq!(exchange(&c, listen, b"real:0").expect("reply"), b"real:0");
    // The real client's one datagram each way is all that moved: no loop
    // is spinning behind it.
    fwd.wait_stat("udp_datagrams_u2c", WAIT, |v| v >= 1);
    assert_eq!(fwd.stat("udp_datagrams_c2u"), 1, "log:\n{}", fwd.log());
    assert_eq!(fwd.stat("udp_datagrams_u2c"), 1);
    assert_eq!(fwd.stat("udp_drop_loop"), drops);
}

#[test]
fn a_datagram_forged_from_the_listeners_own_address_is_dropped_not_looped() {
    let Some(raw) = raw_socket() else {
        return;
    };
    let up = Upstream::start(Answer::All);
    let fwd = forwarder("", &[("u", "127.0.0.1:0", up.addr, "")]);
    let listen = fwd.first_addr();
    send_forged(&raw, listen, listen, b"loop:0");
    assert_dropped_as_loop(&fwd, listen, 1);
}

#[test]
fn a_wildcard_listener_owns_its_port_on_loopback_addresses() {
    let Some(raw) = raw_socket() else {
        return;
    };
    let up = Upstream::start(Answer::All);
    let fwd = forwarder("", &[("w", "0.0.0.0:0", up.addr, "")]);
    let port = fwd.first_addr().port();
    let listen = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    // From another loopback address than the one it is sent to: the reply to
    // it would still reach this listener.
    let forged = SocketAddr::from((Ipv4Addr::new(127, 0, 0, 9), port));
    send_forged(&raw, forged, listen, b"loop:0");
    assert_dropped_as_loop(&fwd, listen, 1);
}

#[test]
fn a_datagram_forged_from_the_upstreams_address_is_dropped_not_looped() {
    let Some(raw) = raw_socket() else {
        return;
    };
    // This upstream answers anything, so a forwarded datagram "from" it
    // would come back to the listener from the upstream, forever.
    let up = Upstream::start(Answer::All);
    let fwd = forwarder("", &[("u", "127.0.0.1:0", up.addr, "")]);
    let listen = fwd.first_addr();
    send_forged(&raw, up.addr, listen, b"loop:0");
    assert_dropped_as_loop(&fwd, listen, 1);
}

// ---- item: forged sources cannot squat the session table ----

/// Sends one datagram from each of `sources` ports in turn, about `pps` a
/// second, until `stop` or `max` datagrams.
fn spawn_flood(
    to: SocketAddr,
    sources: usize,
    pps: u64,
    max: u64,
    stop: Arc<AtomicBool>,
) -> JoinHandle<u64> {
    let socks: Vec<UdpSocket> = (0..sources)
        .map(|_| UdpSocket::bind("127.0.0.1:0").expect("bind flood source"))
        .collect();
    std::thread::spawn(move || {
        let gap = Duration::from_micros(1_000_000 / pps);
        let started = Instant::now();
        let mut sent = 0u64;
        'flood: loop {
            for s in &socks {
                if stop.load(Ordering::Relaxed) || sent >= max {
                    break 'flood;
                }
                let _ = s.send_to(b"flood:x", to);
                sent += 1;
                // Paced by the clock, not by sleeps adding up.
                let due = started + gap * sent as u32;
                if let Some(d) = due.checked_duration_since(Instant::now()) {
                    std::thread::sleep(d);
                }
            }
        }
        sent
    })
}

#[test]
fn a_flood_of_forged_sources_cannot_squat_the_session_table() {
    const LIMIT: u64 = 128;
    const ESTABLISHED: usize = 50;
    const NEWCOMERS: usize = 20;
    let up = Upstream::start(Answer::LegitOnly);
    let fwd = forwarder(
        "",
        &[(
            "u",
            "127.0.0.1:0",
            up.addr,
            &format!("max_sessions = {LIMIT}"),
        )],
    );
    let listen = fwd.first_addr();
    // Clients whose upstream answers: their sessions are assured.
    let established: Vec<UdpSocket> = (0..ESTABLISHED).map(|_| client()).collect();
    for (i, c) in established.iter().enumerate() {
        let msg = format!("legit{i}:0");
        assert_eq!(
            exchange(c, listen, msg.as_bytes()).expect("reply"),
            msg.as_bytes()
        );
    }
    // 300 forged sources, each sending one datagram every second: more
    // than the table holds, never answered. At 300/s a newcomer has ~190ms
    // (58 embryonic places once the table is full) to be answered before it
    // could be evicted in turn: ample even on a loaded machine.
    let stop = Arc::new(AtomicBool::new(false));
    let flood = spawn_flood(listen, 300, 300, 5_000, stop.clone());
    let accounted = |p: &Proc| p.stat("udp_sessions_created") + p.stat("udp_drop_session_limit");
    let before = accounted(&fwd);
    assert!(
        wait_until(WAIT, || accounted(&fwd) >= before + 300),
        "the forwarder saw {} of 300 flood sources; log:\n{}",
        accounted(&fwd) - before,
        fwd.log()
    );
    // New clients are admitted (each evicts the oldest unanswered session)
    // and answered, while the flood goes on.
    let mut failures = Vec::new();
    for i in 0..NEWCOMERS {
        if failures.len() >= 3 {
            break; // each costs a read timeout; three say enough
        }
        let c = client();
        let msg = format!("legit-new{i}:0");
        match exchange(&c, listen, msg.as_bytes()) {
            Ok(back) => assert_eq!(back, msg.as_bytes()),
            Err(e) => failures.push(e),
        }
    }
    // The established clients kept their sessions throughout.
    for (i, c) in established.iter().enumerate() {
        let msg = format!("legit{i}:1");
        if let Err(e) = exchange(c, listen, msg.as_bytes()) {
            failures.push(e);
        }
    }
    stop.store(true, Ordering::Relaxed);
    let sent = flood.join().expect("flood thread");
    assert!(
        failures.is_empty(),
        "{} legitimate datagrams unanswered during a flood of {sent}, first: {:?}; stats: udp_drop_session_limit={} udp_evict_embryonic={}",
        failures.len(),
        failures.first(),
        fwd.stat("udp_drop_session_limit"),
        fwd.stat("udp_evict_embryonic"),
    );
    for i in 0..ESTABLISHED {
        let ports = up.ports_of(&format!("legit{i}"));
        assert_eq!(
            ports.len(),
            1,
            "established client {i} reached the upstream over {ports:?}: its session was replaced"
        );
    }
    let evicted = fwd.wait_stat("udp_evict_embryonic", WAIT, |v| v > 0);
    fwd.wait_stat("udp_end_evicted", WAIT, |v| v > 0);
    let created = fwd.stat("udp_sessions_created");
    let live = created - fwd.stat("udp_end_evicted");
    assert!(
        live <= LIMIT,
        "{live} sessions left after {evicted} evictions; max_sessions is {LIMIT}"
    );
}
