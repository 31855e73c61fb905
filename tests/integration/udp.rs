//! UDP forwarding through the real binary: sessions per client, replies from
//! the listener's address, stable upstream ports, expiry, max_responses,
//! large and oversize datagrams, refused upstreams, limits under a flood, the
//! allow list, IPv6 and wildcard listeners.

use std::collections::{HashMap, HashSet};
use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::harness::{Proc, open_fds, wait_until, write_config};

const WAIT: Duration = Duration::from_secs(10);

/// A forwarder with one UDP listener "u" on `listen` to `upstreams`; `listener`
/// adds keys to [[udp]], `runtime` to [runtime] (stats every 100ms).
fn udp_forwarder(listen: &str, upstreams: &[SocketAddr], listener: &str, runtime: &str) -> Proc {
    let ups: Vec<String> = upstreams.iter().map(|a| format!("\"{a}\"")).collect();
    let cfg = write_config(&format!(
        "[runtime]\nstats_interval = \"100ms\"\n{runtime}\n[[udp]]\nname = \"u\"\nlisten = \"{listen}\"\nupstreams = [{}]\n{listener}\n",
        ups.join(", ")
    ));
    Proc::start(&["run", "--config", cfg.to_str().expect("path")], 1)
}

fn udp_echo(shards: usize) -> Proc {
    let shards = shards.to_string();
    Proc::start(&["echo", "--udp", "127.0.0.1:0", "--shards", &shards], 1)
}

fn client(bind: &str) -> UdpSocket {
    let s = UdpSocket::bind(bind).expect("bind client");
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    s
}

/// Sends `payload` to `to` and returns the reply and where it came from.
fn exchange(s: &UdpSocket, to: SocketAddr, payload: &[u8]) -> (Vec<u8>, SocketAddr) {
    s.send_to(payload, to).expect("send");
    let mut b = vec![0u8; 65536];
    let (n, from) = s
        .recv_from(&mut b)
        .unwrap_or_else(|e| panic!("no reply to a {}-byte datagram: {e}", payload.len()));
    b.truncate(n);
    (b, from)
}

/// A test upstream: records, for every datagram, which source port sent
/// which client id (the text before ':'), and answers by `reply`.
struct Upstream {
    addr: SocketAddr,
    seen: Arc<Mutex<HashMap<u16, HashSet<String>>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

enum Reply {
    /// Echo each datagram back once.
    Echo,
    /// Hold each source's datagrams until it has sent two, then echo both:
    /// two requests are surely in one session before either is answered.
    EchoPairs,
    /// After the first datagram from a source, send it `count` datagrams,
    /// one every `every`.
    Stream { count: usize, every: Duration },
}

impl Upstream {
    fn start(reply: Reply) -> Upstream {
        let sock = UdpSocket::bind("127.0.0.1:0").expect("bind upstream");
        sock.set_read_timeout(Some(Duration::from_millis(20)))
            .expect("timeout");
        let addr = sock.local_addr().expect("addr");
        let seen: Arc<Mutex<HashMap<u16, HashSet<String>>>> = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let (seen2, stop2) = (seen.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            let mut b = vec![0u8; 65536];
            // (peer, next send time, sent so far) for Reply::Stream.
            let mut streams: Vec<(SocketAddr, Instant, usize)> = Vec::new();
            let mut held: HashMap<SocketAddr, Vec<u8>> = HashMap::new();
            while !stop2.load(Ordering::Relaxed) {
                if let Ok((n, from)) = sock.recv_from(&mut b) {
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
                    match reply {
                        Reply::Echo => {
                            let _ = sock.send_to(data, from);
                        }
                        Reply::EchoPairs => match held.remove(&from) {
                            Some(first) => {
                                let _ = sock.send_to(&first, from);
                                let _ = sock.send_to(data, from);
                            }
                            None => {
                                held.insert(from, data.to_vec());
                            }
                        },
                        Reply::Stream { .. } => streams.push((from, Instant::now(), 0)),
                    }
                }
                if let Reply::Stream { count, every } = reply {
                    let now = Instant::now();
                    for (peer, next, sent) in streams.iter_mut() {
                        if *sent < count && now >= *next {
                            let _ = sock.send_to(format!("tick:{sent}").as_bytes(), *peer);
                            *sent += 1;
                            *next = now + every;
                        }
                    }
                }
            }
        });
        Upstream {
            addr,
            seen,
            stop,
            thread: Some(thread),
        }
    }

    fn seen(&self) -> HashMap<u16, HashSet<String>> {
        self.seen.lock().expect("lock").clone()
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[test]
fn every_reply_reaches_its_client_from_the_listener_address_over_a_stable_upstream_port() {
    const THREADS: usize = 6;
    const CLIENTS_PER_THREAD: usize = 50;
    const ROUNDS: usize = 8;
    let up = Upstream::start(Reply::Echo);
    let fwd = udp_forwarder("127.0.0.1:0", &[up.addr], "", "shards = 2");
    let listen = fwd.first_addr();
    let threads: Vec<_> = (0..THREADS)
        .map(|t| {
            std::thread::spawn(move || {
                let socks: Vec<UdpSocket> = (0..CLIENTS_PER_THREAD)
                    .map(|_| client("127.0.0.1:0"))
                    .collect();
                for round in 0..ROUNDS {
                    // Ten clients of this thread have a datagram in flight at
                    // once: concurrent, yet well inside the socket buffers, so
                    // the kernel never has a reason to drop one.
                    for (w, window) in socks.chunks(10).enumerate() {
                        for (i, s) in window.iter().enumerate() {
                            let msg = format!("c{t}-{}:{round}", w * 10 + i);
                            s.send_to(msg.as_bytes(), listen).expect("send");
                        }
                        for (i, s) in window.iter().enumerate() {
                            let c = w * 10 + i;
                            let mut b = [0u8; 128];
                            let (n, from) = s.recv_from(&mut b).unwrap_or_else(|e| {
                                panic!("client c{t}-{c} got no reply in round {round}: {e}")
                            });
                            assert_eq!(from, listen, "the reply comes from the listener's address");
                            let want = format!("c{t}-{c}:{round}");
                            assert_eq!(
                                &b[..n],
                                want.as_bytes(),
                                "a reply reached the wrong client"
                            );
                        }
                    }
                }
            })
        })
        .collect();
    for t in threads {
        t.join().expect("client thread");
    }
    let clients = (THREADS * CLIENTS_PER_THREAD) as u64;
    fwd.wait_stat("udp_datagrams_u2c", WAIT, |v| v == clients * ROUNDS as u64);
    let stats = fwd.stats();
    let ended: Vec<String> = stats
        .iter()
        .filter(|(k, v)| (k.starts_with("udp_end_") || k.starts_with("udp_drop_")) && **v > 0)
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    let counter = |k: &str| stats.get(k).copied().unwrap_or(0);
    assert_eq!(counter("udp_sessions_created"), clients, "{ended:?}");
    assert_eq!(counter("udp_sessions_active"), clients, "{ended:?}");
    assert_eq!(
        counter("udp_datagrams_c2u"),
        clients * ROUNDS as u64,
        "{ended:?}"
    );
    let seen = up.seen();
    assert_eq!(seen.len() as u64, clients, "one upstream port per client");
    for (port, ids) in &seen {
        assert_eq!(ids.len(), 1, "upstream port {port} carried clients {ids:?}");
    }
}

#[test]
fn idle_sessions_expire_and_close_their_upstream_sockets() {
    let up = Upstream::start(Reply::Echo);
    let fwd = udp_forwarder(
        "127.0.0.1:0",
        &[up.addr],
        "idle_timeout = \"500ms\"",
        "shards = 2",
    );
    let base = open_fds(fwd.pid());
    let socks: Vec<UdpSocket> = (0..20).map(|_| client("127.0.0.1:0")).collect();
    for (i, s) in socks.iter().enumerate() {
        let msg = format!("c{i}:0");
        assert_eq!(
            exchange(s, fwd.first_addr(), msg.as_bytes()).0,
            msg.as_bytes()
        );
    }
    let with_sessions = open_fds(fwd.pid());
    assert!(
        with_sessions >= base + 20,
        "each session holds an upstream socket: {base} fds before, {with_sessions} with 20 sessions"
    );
    fwd.wait_stat("udp_end_idle", WAIT, |v| v == 20);
    assert!(
        wait_until(WAIT, || open_fds(fwd.pid()) <= base),
        "upstream sockets are closed after expiry: {} fds, {base} before",
        open_fds(fwd.pid())
    );
    fwd.wait_stat("udp_sessions_active", WAIT, |v| v == 0);
    // The client's next datagram opens a new session.
    let (back, _) = exchange(&socks[0], fwd.first_addr(), b"c0:1");
    assert_eq!(back, b"c0:1");
    fwd.wait_stat("udp_sessions_created", WAIT, |v| v == 21);
}

#[test]
fn upstream_to_client_traffic_alone_keeps_a_session_alive() {
    let up = Upstream::start(Reply::Stream {
        count: 15,
        every: Duration::from_millis(100),
    });
    let fwd = udp_forwarder(
        "127.0.0.1:0",
        &[up.addr],
        "idle_timeout = \"400ms\"",
        "shards = 2",
    );
    let s = client("127.0.0.1:0");
    s.send_to(b"c0:start", fwd.first_addr()).expect("send");
    let started = Instant::now();
    let mut got = Vec::new();
    let mut b = [0u8; 64];
    while got.len() < 15 {
        let (n, from) = s.recv_from(&mut b).expect("a tick from upstream");
        assert_eq!(from, fwd.first_addr());
        got.push(String::from_utf8_lossy(&b[..n]).into_owned());
    }
    let span = started.elapsed();
    assert!(
        span > Duration::from_millis(1000),
        "the ticks spanned {span:?}, more than twice the idle timeout"
    );
    let want: Vec<String> = (0..15).map(|i| format!("tick:{i}")).collect();
    assert_eq!(got, want, "every tick arrived in order over one session");
    assert_eq!(
        fwd.stat("udp_end_idle"),
        0,
        "no session expired while ticking"
    );
    assert_eq!(up.seen().len(), 1);
    // Silence in both directions now ends it.
    fwd.wait_stat("udp_end_idle", WAIT, |v| v == 1);
    assert_eq!(fwd.stat("udp_sessions_created"), 1);
}

#[test]
fn max_responses_one_frees_the_session_after_the_reply() {
    let up = Upstream::start(Reply::Echo);
    let fwd = udp_forwarder(
        "127.0.0.1:0",
        &[up.addr],
        "max_responses = 1\nidle_timeout = \"1h\"",
        "shards = 2",
    );
    let base = open_fds(fwd.pid());
    let s = client("127.0.0.1:0");
    for i in 0..5 {
        let msg = format!("q:{i}");
        assert_eq!(
            exchange(&s, fwd.first_addr(), msg.as_bytes()).0,
            msg.as_bytes()
        );
        fwd.wait_stat("udp_end_responses", WAIT, |v| v == i + 1);
        assert_eq!(fwd.stat("udp_sessions_active"), 0);
        // The freed session's upstream socket is closed, not kept for the
        // next query. (Its ephemeral port may come back for a later
        // session: the kernel is free to reuse a closed socket's port, so
        // distinct upstream ports are not something to assert.)
        assert!(
            wait_until(WAIT, || open_fds(fwd.pid()) <= base),
            "query {i}: the session's upstream socket is closed after its reply: {} fds, {base} before",
            open_fds(fwd.pid())
        );
    }
    assert_eq!(fwd.stat("udp_sessions_created"), 5, "one session per query");
}

/// As NGINX's `proxy_responses`: the count is per client datagram, so a
/// client that asks twice before the first answer (a stub resolver's A and
/// AAAA from one socket) gets both answers through one session.
#[test]
fn max_responses_counts_per_request_so_two_queries_in_flight_both_get_answers() {
    let up = Upstream::start(Reply::EchoPairs);
    let fwd = udp_forwarder(
        "127.0.0.1:0",
        &[up.addr],
        "max_responses = 1\nidle_timeout = \"1h\"",
        "shards = 2",
    );
    let s = client("127.0.0.1:0");
    for i in 0..3u64 {
        let (a, aaaa) = (format!("a:{i}"), format!("aaaa:{i}"));
        s.send_to(a.as_bytes(), fwd.first_addr()).expect("send");
        s.send_to(aaaa.as_bytes(), fwd.first_addr()).expect("send");
        let mut got = HashSet::new();
        let mut b = [0u8; 64];
        for _ in 0..2 {
            let (n, _) = s
                .recv_from(&mut b)
                .unwrap_or_else(|e| panic!("round {i}: only {got:?} came back: {e}"));
            got.insert(String::from_utf8_lossy(&b[..n]).into_owned());
        }
        assert_eq!(got, HashSet::from([a, aaaa]), "round {i}");
        fwd.wait_stat("udp_end_responses", WAIT, |v| v == i + 1);
        assert_eq!(
            fwd.stat("udp_sessions_created"),
            i + 1,
            "one session per pair"
        );
        assert_eq!(fwd.stat("udp_drop_backlog"), 0);
    }
}

#[test]
fn large_datagrams_arrive_intact_and_oversize_ones_are_counted_not_truncated() {
    let echo = udp_echo(1);
    let fwd = udp_forwarder("127.0.0.1:0", &[echo.first_addr()], "", "shards = 2");
    let s = client("127.0.0.1:0");
    for seed in 0..4u8 {
        let big: Vec<u8> = (0..60_000u32)
            .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
            .collect();
        let (back, _) = exchange(&s, fwd.first_addr(), &big);
        assert!(back == big, "a 60000-byte datagram came back changed");
    }
    // The largest IPv4 datagram still fits the default buffers.
    let max = vec![0xA5u8; 65_507];
    assert!(exchange(&s, fwd.first_addr(), &max).0 == max);

    let small = udp_forwarder(
        "127.0.0.1:0",
        &[echo.first_addr()],
        "",
        "shards = 2\nmax_datagram = 1024",
    );
    let c = client("127.0.0.1:0");
    c.send_to(&[1u8; 1500], small.first_addr()).expect("send");
    small.wait_stat("udp_drop_truncated", WAIT, |v| v == 1);
    let fits = vec![2u8; 1024];
    let (back, _) = exchange(&c, small.first_addr(), &fits);
    assert_eq!(
        back, fits,
        "a datagram that fits passes after the oversize one"
    );
    let mut b = [0u8; 2048];
    c.set_nonblocking(true).expect("nonblocking");
    assert!(
        c.recv_from(&mut b).is_err(),
        "nothing of the oversize datagram was delivered"
    );
    small.wait_stat("udp_bytes_c2u", WAIT, |v| v == 1024);
}

/// A UDP address where nothing is bound, so datagrams to it are answered
/// with ICMP port unreachable. Below the ephemeral range: a port freed there
/// could be taken by any socket the suite binds to port 0 (clients, session
/// sockets), which would then swallow the datagrams instead.
fn dead_udp_addr() -> SocketAddr {
    let mut rng = ringfwd::verify::Rng::new(u64::from(std::process::id()));
    loop {
        let port = 10_000 + rng.below(10_000) as u16;
        if UdpSocket::bind(("127.0.0.1", port)).is_ok() {
            return SocketAddr::from(([127, 0, 0, 1], port));
        }
    }
}

#[test]
fn a_refused_upstream_ends_the_session_and_is_counted() {
    let dead = dead_udp_addr();
    let fwd = udp_forwarder("127.0.0.1:0", &[dead], "", "shards = 2");
    let s = client("127.0.0.1:0");
    s.send_to(b"anyone?", fwd.first_addr()).expect("send");
    fwd.wait_stat("udp_end_refused", WAIT, |v| v == 1);
    fwd.wait_stat("udp_sessions_active", WAIT, |v| v == 0);
    // The next datagram tries again with a new session.
    s.send_to(b"anyone?", fwd.first_addr()).expect("send");
    fwd.wait_stat("udp_end_refused", WAIT, |v| v == 2);
    assert_eq!(fwd.stat("udp_sessions_created"), 2);
}

/// Sends one datagram from each of `n` fresh sockets, in bursts, waiting after
/// each burst until the forwarder has accounted for it (so no datagram is lost
/// in a full socket buffer); returns the sockets.
fn flood(fwd: &Proc, n: usize, accounted: impl Fn(&Proc) -> u64) -> Vec<UdpSocket> {
    let mut socks = Vec::new();
    let start = accounted(fwd);
    for burst in 0..n.div_ceil(50) {
        for _ in 0..50.min(n - burst * 50) {
            let s = client("127.0.0.1:0");
            s.send_to(b"flood:x", fwd.first_addr()).expect("send");
            socks.push(s);
        }
        let want = start + socks.len() as u64;
        assert!(
            wait_until(WAIT, || accounted(fwd) >= want),
            "the forwarder accounted for {} of {want} flood datagrams; log:\n{}",
            accounted(fwd),
            fwd.log()
        );
    }
    socks
}

#[test]
fn max_sessions_holds_under_a_flood_and_existing_sessions_keep_working() {
    let up = Upstream::start(Reply::Echo);
    let fwd = udp_forwarder("127.0.0.1:0", &[up.addr], "max_sessions = 20", "shards = 2");
    let old: Vec<UdpSocket> = (0..4).map(|_| client("127.0.0.1:0")).collect();
    for (i, s) in old.iter().enumerate() {
        let msg = format!("old{i}:0");
        assert_eq!(
            exchange(s, fwd.first_addr(), msg.as_bytes()).0,
            msg.as_bytes()
        );
    }
    let accounted = |p: &Proc| p.stat("udp_sessions_created") + p.stat("udp_drop_session_limit");
    let _flood = flood(&fwd, 400, accounted);
    // Flood sessions not yet answered are evicted for newer ones (see
    // udp_abuse.rs): count those that remain.
    let created = fwd.stat("udp_sessions_created");
    let live = created - fwd.stat("udp_end_evicted");
    assert!(live <= 20, "{live} sessions exist; max_sessions is 20");
    assert!(
        live >= 12,
        "both shards filled their share of 10 (the kernel spreads 400 ports): {live}"
    );
    assert_eq!(fwd.stat("udp_drop_session_limit"), 404 - created);
    for (i, s) in old.iter().enumerate() {
        let msg = format!("old{i}:1");
        let (back, from) = exchange(s, fwd.first_addr(), msg.as_bytes());
        assert_eq!((back.as_slice(), from), (msg.as_bytes(), fwd.first_addr()));
    }
}

#[test]
fn the_per_source_rate_limit_holds_under_a_flood_from_many_ports() {
    let up = Upstream::start(Reply::Echo);
    let fwd = udp_forwarder(
        "127.0.0.1:0",
        &[up.addr],
        "new_sessions_per_second_per_source = 10",
        "shards = 2",
    );
    let old = client("127.0.0.1:0");
    assert_eq!(exchange(&old, fwd.first_addr(), b"old:0").0, b"old:0");
    let started = Instant::now();
    let accounted = |p: &Proc| p.stat("udp_sessions_created") + p.stat("udp_drop_rate_limit");
    let _flood = flood(&fwd, 300, accounted);
    let secs = started.elapsed().as_secs_f64().ceil() as u64;
    let created = fwd.stat("udp_sessions_created");
    // Each shard keeps its own bucket per source: burst 10 plus 10 per second, each.
    let bound = 2 * (10 + 10 * secs);
    assert!(
        created <= bound,
        "{created} sessions from one source in {secs}s; the limit allows {bound}"
    );
    assert!(fwd.stat("udp_drop_rate_limit") >= 300 - bound);
    assert_eq!(exchange(&old, fwd.first_addr(), b"old:1").0, b"old:1");
}

#[test]
fn clients_outside_the_allow_list_are_dropped_and_counted() {
    let echo = udp_echo(1);
    let denied = udp_forwarder(
        "127.0.0.1:0",
        &[echo.first_addr()],
        "allow = [\"10.0.0.0/8\", \"2001:db8::/32\"]",
        "shards = 2",
    );
    let s = client("127.0.0.1:0");
    for _ in 0..3 {
        s.send_to(b"let me in", denied.first_addr()).expect("send");
    }
    denied.wait_stat("udp_drop_denied", WAIT, |v| v == 3);
    assert_eq!(denied.stat("udp_sessions_created"), 0);

    let allowed = udp_forwarder(
        "127.0.0.1:0",
        &[echo.first_addr()],
        "allow = [\"10.0.0.0/8\", \"127.0.0.1\"]",
        "shards = 2",
    );
    assert_eq!(exchange(&s, allowed.first_addr(), b"hi").0, b"hi");
    assert_eq!(allowed.stat("udp_drop_denied"), 0);
}

#[test]
fn ipv6_clients_are_forwarded_to_an_ipv4_upstream() {
    let echo = udp_echo(1);
    let fwd = udp_forwarder("[::1]:0", &[echo.first_addr()], "", "shards = 2");
    let s = client("[::1]:0");
    for i in 0..10 {
        let msg = format!("v6:{i}");
        let (back, from) = exchange(&s, fwd.first_addr(), msg.as_bytes());
        assert_eq!((back.as_slice(), from), (msg.as_bytes(), fwd.first_addr()));
    }
}

#[test]
fn a_wildcard_listener_replies_from_the_address_the_client_used() {
    let echo = udp_echo(1);
    let fwd = udp_forwarder("0.0.0.0:0", &[echo.first_addr()], "", "shards = 2");
    let port = fwd.first_addr().port();
    let s = client("127.0.0.1:0");
    // One client socket writing to three of the host's addresses, twice each.
    for last in [1u8, 2, 3, 1, 2, 3] {
        let to = SocketAddr::from(([127, 0, 0, last], port));
        let (back, from) = exchange(&s, to, b"which address?");
        assert_eq!(back, b"which address?");
        assert_eq!(
            from, to,
            "the reply comes from the address the client wrote to"
        );
    }
    fwd.wait_stat("udp_datagrams_u2c", WAIT, |v| v == 6);
    assert_eq!(
        fwd.stat("udp_sessions_created"),
        3,
        "one session per local address"
    );
}

#[test]
fn udp_echo_answers_each_sender() {
    let echo = udp_echo(2);
    let socks: Vec<UdpSocket> = (0..20).map(|_| client("127.0.0.1:0")).collect();
    for (i, s) in socks.iter().enumerate() {
        let msg = format!("e{i}");
        let (back, from) = exchange(s, echo.first_addr(), msg.as_bytes());
        assert_eq!((back.as_slice(), from), (msg.as_bytes(), echo.first_addr()));
    }
}

#[test]
fn sigterm_drains_udp_sessions_then_exits() {
    let up = Upstream::start(Reply::Echo);
    let mut fwd = udp_forwarder(
        "127.0.0.1:0",
        &[up.addr],
        "idle_timeout = \"300ms\"",
        "shards = 2",
    );
    let s = client("127.0.0.1:0");
    assert_eq!(exchange(&s, fwd.first_addr(), b"before").0, b"before");
    fwd.signal(libc::SIGTERM);
    let status = fwd.wait_exit(WAIT).expect("exits once its session ended");
    assert!(status.success(), "{status:?}; log:\n{}", fwd.log());
    let stats = fwd.stats();
    // Answered, it owed no reply: the drain ended it at once.
    assert_eq!(stats.get("udp_end_drained"), Some(&1), "{stats:?}");
    assert_eq!(stats.get("udp_sessions_active"), Some(&0));
}

#[test]
fn an_rcvbuf_above_rmem_max_is_reported_with_the_sysctl_to_raise() {
    let rmem_max: u64 = std::fs::read_to_string("/proc/sys/net/core/rmem_max")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(212_992);
    let ask = (rmem_max * 2).clamp(4096, 512 << 20);
    let echo = udp_echo(1);
    let fwd = udp_forwarder(
        "127.0.0.1:0",
        &[echo.first_addr()],
        &format!("rcvbuf = {ask}\nsndbuf = \"64KiB\""),
        "shards = 2",
    );
    let s = client("127.0.0.1:0");
    assert_eq!(
        exchange(&s, fwd.first_addr(), b"still works").0,
        b"still works"
    );
    if ask > rmem_max {
        let log = fwd.log();
        assert!(
            log.contains("rcvbuf of") && log.contains("sysctl -w net.core.rmem_max="),
            "no rmem_max warning in:\n{log}"
        );
        assert!(
            !log.contains("net.core.wmem_max"),
            "64KiB sndbuf fits: {log}"
        );
    }
}

#[test]
fn a_tiny_datagram_ring_is_backpressure_and_every_burst_is_answered() {
    let up = Upstream::start(Reply::Echo);
    let fwd = udp_forwarder(
        "127.0.0.1:0",
        &[up.addr],
        "",
        "shards = 1\nudp_buffers_per_shard = 8\nmax_datagram = 1024",
    );
    // Bursts of new clients: each new session holds its first datagram's
    // buffer while its socket opens, so 8 buffers run dry within a burst.
    let mut answered = 0u64;
    for burst in 0..10 {
        let socks: Vec<UdpSocket> = (0..40).map(|_| client("127.0.0.1:0")).collect();
        for (i, s) in socks.iter().enumerate() {
            s.send_to(format!("b{burst}-{i}:x").as_bytes(), fwd.first_addr())
                .expect("send");
        }
        for (i, s) in socks.iter().enumerate() {
            let mut b = [0u8; 64];
            let (n, _) = s
                .recv_from(&mut b)
                .unwrap_or_else(|e| panic!("burst {burst} client {i} got no reply: {e}"));
            assert_eq!(&b[..n], format!("b{burst}-{i}:x").as_bytes());
            answered += 1;
        }
        fwd.wait_stat("udp_datagrams_u2c", WAIT, |v| v == answered);
        if fwd.stat("udp_enobufs") > 0 {
            return;
        }
    }
    panic!(
        "10 bursts of 40 new sessions never ran 8 datagram buffers dry; log:\n{}",
        fwd.log()
    );
}

#[test]
fn a_burst_from_one_client_within_its_session_cap_is_forwarded_whole() {
    // 100 datagrams sent at once from one client: the first opens the
    // session and the rest arrive while it opens and while the first sends'
    // completions are still to be reaped. The default cap (a quarter of 512
    // datagram buffers) holds them all; no datagram may be dropped.
    let up = Upstream::start(Reply::Echo);
    let fwd = udp_forwarder("127.0.0.1:0", &[up.addr], "", "shards = 1");
    let s = client("127.0.0.1:0");
    const BURST: usize = 100;
    for i in 0..BURST {
        s.send_to(format!("burst:{i}").as_bytes(), fwd.first_addr())
            .expect("send");
    }
    let mut got = HashSet::new();
    let mut b = [0u8; 64];
    while got.len() < BURST {
        let (n, _) = s.recv_from(&mut b).unwrap_or_else(|e| {
            panic!(
                "{} of {BURST} answered, then {e}; counters: {:?}",
                got.len(),
                fwd.stats()
            )
        });
        got.insert(String::from_utf8_lossy(&b[..n]).into_owned());
    }
    let want: HashSet<String> = (0..BURST).map(|i| format!("burst:{i}")).collect();
    assert_eq!(got, want);
    fwd.wait_stat("udp_datagrams_u2c", WAIT, |v| v == BURST as u64);
    assert_eq!(fwd.stat("udp_drop_backlog"), 0);
    assert_eq!(fwd.stat("udp_sessions_created"), 1);
}

/// Runs `ringfwd run ARGS` in a network namespace of its own (so the test
/// may narrow the ephemeral port range without touching the host's) whose
/// range is `range`; returns the child and its stdout lines as they come.
fn run_in_netns(
    range: &str,
    args: &str,
) -> (std::process::Child, std::sync::mpsc::Receiver<String>) {
    use std::io::BufRead;
    use std::process::{Command, Stdio};
    let script = format!(
        "ip link set lo up && echo '{range}' > /proc/sys/net/ipv4/ip_local_port_range && exec {} run {args}",
        crate::harness::BIN
    );
    // `unshare` execs sh, which execs ringfwd: the child's PID is ringfwd's.
    let mut child = Command::new("unshare")
        .args(["--net", "sh", "-c", &script])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn unshare (util-linux)");
    let out = child.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(out).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    (child, rx)
}

/// The kernel counts two same-user SO_REUSEPORT UDP sockets as compatible,
/// so a reuseport socket bound to port 0 may be given a port one already
/// holds, and the two would share datagrams. A port-0 listener must get a
/// port nobody holds, or fail naming the listener.
#[test]
fn a_port_zero_udp_listener_never_shares_a_port_already_held() {
    let netns = std::process::Command::new("unshare")
        .args(["--net", "true"])
        .status()
        .is_ok_and(|s| s.success());
    if !netns {
        // Not a CI failure: an unprivileged runner cannot narrow the range
        // anywhere but in a namespace of its own.
        eprintln!(
            "skipping: cannot create a network namespace (needs root or CAP_SYS_ADMIN, and unshare from util-linux)"
        );
        return;
    }
    let listeners = "--udp 127.0.0.1:40000=127.0.0.1:9 --udp 127.0.0.1:0=127.0.0.1:9 --shards 2";
    // Two ports in the range, one held by the first listener's reuseport group.
    let (mut child, lines) = run_in_netns("40000 40001", listeners);
    let mut bound = Vec::new();
    let deadline = Instant::now() + WAIT;
    while bound.len() < 2 {
        let left = deadline.saturating_duration_since(Instant::now());
        match lines.recv_timeout(left) {
            Ok(l) if l.starts_with("listening udp") => bound.push(l),
            Ok(_) => {}
            Err(e) => {
                let _ = child.kill();
                panic!("listening lines did not come ({e}): {bound:?}");
            }
        }
    }
    // Our own child, by PID.
    let _ = child.kill();
    let _ = child.wait();
    assert!(
        bound[1].contains("127.0.0.1:40001"),
        "the port-0 listener took the held port: {bound:?}"
    );

    // One port, held: no free port is left, and startup says which listener.
    let (mut child, lines) = run_in_netns("40000 40000", listeners);
    let exited = wait_until(WAIT, || matches!(child.try_wait(), Ok(Some(_))));
    if !exited {
        let _ = child.kill();
        let _ = child.wait();
        panic!(
            "started, sharing the held port: {:?}",
            lines.try_iter().collect::<Vec<_>>()
        );
    }
    let out = child.wait_with_output().expect("wait");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains("udp listener '127.0.0.1:0'") && err.contains("no free port"),
        "the error names the listener and the exhausted range: {err}"
    );
}

/// What the kernel counts as dropped on the UDP sockets bound to `port`
/// (the `drops` column of /proc/net/udp and udp6, what `ss -m` shows as `d`).
fn kernel_udp_drops(port: u16) -> u64 {
    let want = format!(":{port:04X}");
    ["/proc/net/udp", "/proc/net/udp6"]
        .iter()
        .filter_map(|f| std::fs::read_to_string(f).ok())
        .flat_map(|t| t.lines().skip(1).map(str::to_owned).collect::<Vec<_>>())
        .filter(|l| {
            l.split_whitespace()
                .nth(1)
                .is_some_and(|a| a.ends_with(&want))
        })
        .filter_map(|l| l.split_whitespace().last()?.parse::<u64>().ok())
        .sum()
}

/// Stops `p` with SIGSTOP and waits until it is stopped, so the kernel
/// queues or drops what is sent to it meanwhile.
fn freeze(p: &Proc) {
    p.signal(libc::SIGSTOP);
    assert!(p.wait_stopped(WAIT), "ringfwd {} did not stop", p.pid());
}

#[test]
fn datagrams_the_kernel_drops_on_a_listener_are_counted_exactly() {
    let up = Upstream::start(Reply::Echo);
    // A 4KiB rcvbuf (8KiB charged) queues about ten small datagrams.
    let fwd = udp_forwarder("127.0.0.1:0", &[up.addr], "rcvbuf = \"4KiB\"", "shards = 1");
    let s = client("127.0.0.1:0");
    let port = fwd.first_addr().port();
    assert_eq!(kernel_udp_drops(port), 0);
    freeze(&fwd);
    const SENT: u64 = 300;
    for i in 0..SENT {
        s.send_to(format!("c2u:{i:0100}").as_bytes(), fwd.first_addr())
            .expect("send");
    }
    let dropped = kernel_udp_drops(port);
    fwd.signal(libc::SIGCONT);
    assert!(
        dropped > 0 && dropped < SENT,
        "{dropped} of {SENT} dropped: the queue must fill, not stay empty"
    );
    fwd.wait_stat("udp_datagrams_c2u", WAIT, |v| v == SENT - dropped);
    // Every datagram queued before the drops began carries a counter of 0:
    // only a read of the socket at the snapshot can see these.
    fwd.wait_stat("udp_drop_rcvbuf_c2u", WAIT, |v| v == dropped);
    assert_eq!(kernel_udp_drops(port), dropped, "no drop after the thaw");
    assert_eq!(fwd.stat("udp_drop_rcvbuf_u2c"), 0);
}

#[test]
fn datagrams_the_kernel_drops_on_a_session_socket_are_counted_with_session_rcvbuf() {
    let up = UdpSocket::bind("127.0.0.1:0").expect("bind upstream");
    up.set_read_timeout(Some(WAIT)).expect("timeout");
    let mut fwd = udp_forwarder(
        "127.0.0.1:0",
        &[up.local_addr().expect("addr")],
        "session_rcvbuf = \"4KiB\"",
        "shards = 1\ndrain_timeout = \"1s\"",
    );
    let c = client("127.0.0.1:0");
    c.set_read_timeout(Some(Duration::from_millis(200)))
        .expect("timeout");
    c.send_to(b"open", fwd.first_addr()).expect("send");
    let mut b = [0u8; 256];
    let (_, session) = up.recv_from(&mut b).expect("the session's first datagram");
    // A burst of replies while ringfwd is stopped, `rounds` times; returns
    // what the kernel dropped on the session socket each time.
    let burst = |round: u32| {
        freeze(&fwd);
        let before = kernel_udp_drops(session.port());
        for i in 0..200 {
            up.send_to(format!("u2c:{round}:{i:0100}").as_bytes(), session)
                .expect("send reply");
        }
        let dropped = kernel_udp_drops(session.port()) - before;
        fwd.signal(libc::SIGCONT);
        // The kernel default (208KiB here) would queue all 200: a drop says
        // session_rcvbuf reached the session's socket.
        assert!(
            dropped > 0 && dropped < 200,
            "round {round}: {dropped} dropped"
        );
        dropped
    };
    let first = burst(0);
    fwd.wait_stat("udp_datagrams_u2c", WAIT, |v| v == 200 - first);
    // The replies queued before the drops carry no counter; the next one
    // queued after them does (SO_RXQ_OVFL).
    up.send_to(b"after", session).expect("send");
    fwd.wait_stat("udp_drop_rcvbuf_u2c", WAIT, |v| v == first);
    let forwarded = 200 - first + 1;
    fwd.wait_stat("udp_datagrams_u2c", WAIT, |v| v == forwarded);
    // Drops after the last reply queued are read from the socket at its
    // close (here the drain's: the session owes no reply, so it ends at once).
    let second = burst(1);
    fwd.wait_stat("udp_datagrams_u2c", WAIT, |v| v == forwarded + 200 - second);
    fwd.signal(libc::SIGTERM);
    assert!(
        fwd.wait_exit(WAIT).is_some(),
        "no exit; log:\n{}",
        fwd.log()
    );
    assert_eq!(fwd.stat("udp_end_drained"), 1);
    assert_eq!(fwd.stat("udp_drop_rcvbuf_u2c"), first + second);
    assert_eq!(fwd.stat("udp_drop_rcvbuf_c2u"), 0);
}

/// A test upstream that answers each datagram `N:...` with a datagram of N
/// bytes, so a test chooses the size of each reply.
struct SizedUpstream {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl SizedUpstream {
    fn start(bind: &str) -> SizedUpstream {
        let sock = UdpSocket::bind(bind).expect("bind upstream");
        sock.set_read_timeout(Some(Duration::from_millis(20)))
            .expect("timeout");
        let addr = sock.local_addr().expect("addr");
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut b = vec![0u8; 65536];
            while !stop2.load(Ordering::Relaxed) {
                let Ok((n, from)) = sock.recv_from(&mut b) else {
                    continue;
                };
                let asked = String::from_utf8_lossy(&b[..n.min(16)])
                    .split(':')
                    .next()
                    .and_then(|v| v.parse::<usize>().ok());
                if let Some(len) = asked {
                    let _ = sock.send_to(&vec![b'r'; len], from);
                }
            }
        });
        SizedUpstream {
            addr,
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for SizedUpstream {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A request of `len` bytes asking for a reply of `reply` bytes.
fn sized_request(len: usize, reply: usize) -> Vec<u8> {
    let mut r = format!("{reply}:").into_bytes();
    r.resize(len, b'.');
    r
}

/// Through a forwarder on `listen` with `max` as max_datagram: a datagram of
/// exactly `max` bytes passes each way, and `over` (longer) ones are dropped
/// and counted as truncated, each way.
fn assert_exact_limit(
    listen: &str,
    upstream_bind: &str,
    runtime: &str,
    max: usize,
    over: &[usize],
) {
    let up = SizedUpstream::start(upstream_bind);
    let fwd = udp_forwarder(listen, &[up.addr], "", runtime);
    let c = client(&format!(
        "{}:0",
        if listen.starts_with('[') {
            "[::1]"
        } else {
            "127.0.0.1"
        }
    ));
    let to = fwd.first_addr();
    let (back, _) = exchange(&c, to, &sized_request(max, max));
    assert_eq!(
        back.len(),
        max,
        "a {max}-byte reply to a {max}-byte request"
    );
    let mut dropped = 0;
    for &len in over {
        // Client to upstream: the request never reaches it, so no reply.
        c.send_to(&sized_request(len, 16), to).expect("send");
        dropped += 1;
        fwd.wait_stat("udp_drop_truncated", WAIT, |v| v == dropped);
        // Upstream to client: the reply is dropped on the session socket.
        c.send_to(&sized_request(32, len), to).expect("send");
        dropped += 1;
        fwd.wait_stat("udp_drop_truncated", WAIT, |v| v == dropped);
        // Nothing of either came back: the next reply is the next request's.
        let (back, _) = exchange(&c, to, &sized_request(32, 7));
        assert_eq!(back.len(), 7, "after {len}-byte datagrams each way");
    }
    assert_eq!(fwd.stat("udp_end_error"), 0);
}

#[test]
fn max_datagram_512_is_exact_each_way() {
    // The buffer holds 592 payload bytes (rounding, unused control room).
    assert_exact_limit(
        "127.0.0.1:0",
        "127.0.0.1:0",
        "shards = 1\nmax_datagram = 512",
        512,
        &[513, 592, 600],
    );
}

#[test]
fn the_default_max_datagram_is_exact_over_ipv6() {
    // IPv6 carries up to 65527 payload bytes, past IPv4's 65507 and within
    // the default buffer's rounded room.
    assert_exact_limit("[::1]:0", "[::1]:0", "shards = 1", 65507, &[65508, 65527]);
}

#[test]
fn a_session_rcvbuf_above_rmem_max_is_reported_with_the_sysctl_to_raise() {
    let rmem_max: u64 = std::fs::read_to_string("/proc/sys/net/core/rmem_max")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(212_992);
    if rmem_max >= 512 << 20 {
        eprintln!("skipping: net.core.rmem_max is above the largest session_rcvbuf");
        return;
    }
    let ask = (rmem_max * 2).clamp(4096, 512 << 20);
    let up = Upstream::start(Reply::Echo);
    let fwd = udp_forwarder(
        "127.0.0.1:0",
        &[up.addr],
        &format!("session_rcvbuf = {ask}"),
        "shards = 1",
    );
    let s = client("127.0.0.1:0");
    assert_eq!(exchange(&s, fwd.first_addr(), b"works").0, b"works");
    let log = fwd.log();
    assert!(
        log.contains(&format!("session_rcvbuf of {ask} bytes asked"))
            && log.contains(&format!("sysctl -w net.core.rmem_max={ask}")),
        "no rmem_max warning for session_rcvbuf in:\n{log}"
    );
}

#[test]
fn after_drops_a_wildcard_listener_still_replies_from_the_address_the_client_used() {
    let up = Upstream::start(Reply::Echo);
    let fwd = udp_forwarder("0.0.0.0:0", &[up.addr], "rcvbuf = \"4KiB\"", "shards = 1");
    let to = SocketAddr::from(([127, 0, 0, 2], fwd.first_addr().port()));
    let s = client("127.0.0.1:0");
    freeze(&fwd);
    for i in 0..300 {
        s.send_to(format!("w:{i:0100}").as_bytes(), to)
            .expect("send");
    }
    let dropped = kernel_udp_drops(to.port());
    fwd.signal(libc::SIGCONT);
    assert!(dropped > 0, "the 4KiB queue must overflow");
    // Sent into a drained queue, so that it is not dropped too.
    fwd.wait_stat("udp_datagrams_u2c", WAIT, |v| v == 300 - dropped);
    // This datagram carries both the drop counter and the destination
    // (PKTINFO): the control room must hold the two.
    s.send_to(b"after", to).expect("send");
    let mut b = [0u8; 256];
    loop {
        let (n, from) = s
            .recv_from(&mut b)
            .unwrap_or_else(|e| panic!("{e}; counters {:?}", fwd.stats()));
        assert_eq!(
            from, to,
            "a reply from another address than the client used"
        );
        if &b[..n] == b"after" {
            break;
        }
    }
    fwd.wait_stat("udp_drop_rcvbuf_c2u", WAIT, |v| v == dropped);
    assert_eq!(fwd.stat("udp_sessions_created"), 1);
}

/// A single ping-pong flow: each forwarded datagram should cost the shard
/// one loop turn (one io_uring_enter that submits the send and sleeps until
/// the next datagram), not two (a first enter that returns at once with only
/// the send's completion, then a second that sleeps). Counted in turns, not
/// time: exactly one request is in flight, so nothing else can fill a turn.
#[test]
fn a_ping_pong_flow_costs_one_loop_turn_per_forwarded_datagram() {
    const EXCHANGES: u64 = 300;
    let echo = udp_echo(1);
    let fwd = udp_forwarder("127.0.0.1:0", &[echo.first_addr()], "", "shards = 1");
    let s = client("127.0.0.1:0");
    // The session is set up (socket, connect, receive armed) by the first.
    exchange(&s, fwd.first_addr(), b"warm");
    let before = fwd.wait_stat("udp_datagrams_u2c", WAIT, |v| v >= 1);
    let turns_before = fwd.stat("loop_turns");
    for i in 0..EXCHANGES {
        let msg = format!("p{i}");
        let (back, _) = exchange(&s, fwd.first_addr(), msg.as_bytes());
        assert_eq!(back, msg.as_bytes());
    }
    fwd.wait_stat("udp_datagrams_u2c", WAIT, |v| v >= before + EXCHANGES);
    let stats = fwd.stats();
    let turns = stats.get("loop_turns").copied().unwrap_or(0) - turns_before;
    let datagrams = 2 * EXCHANGES;
    // One turn per datagram, plus slack for the stats snapshots' own turns;
    // two per datagram (the cost this guards against) is far above it.
    assert!(
        turns < datagrams * 5 / 4,
        "{turns} loop turns for {datagrams} forwarded datagrams (want about one each); stats: {stats:?}"
    );
}
