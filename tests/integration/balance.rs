//! Balancing policies and passive health through the real binary: upstreams
//! that say who they are (one byte, their index, then close), clients that
//! count where they landed.

use std::io::Read;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use crate::harness::{Proc, wait_until, write_config};

/// A test upstream that answers every connection with its own index and
/// closes; dropping it (or `stop`) closes its port, so connects are refused.
struct Named {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Named {
    fn start(index: u8) -> Named {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind");
        l.set_nonblocking(true).expect("nonblocking");
        let addr = l.local_addr().expect("addr");
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            while !flag.load(Ordering::Relaxed) {
                match l.accept() {
                    Ok((mut s, _)) => {
                        let _ = std::io::Write::write_all(&mut s, &[index]);
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(1)),
                }
            }
        });
        Named {
            addr,
            stop,
            thread: Some(thread),
        }
    }

    /// Closes the listening socket: from now on connects are refused.
    fn stop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Named {
    fn drop(&mut self) {
        self.stop();
    }
}

fn named(n: u8) -> Vec<Named> {
    (0..n).map(Named::start).collect()
}

/// A forwarder with listener "t" on `entries` (each `"ADDR[ weight=N]"`).
fn forwarder(entries: &[String], keys: &str, shards: usize) -> Proc {
    let list: Vec<String> = entries.iter().map(|e| format!("\"{e}\"")).collect();
    let cfg = write_config(&format!(
        "[runtime]\nshards = {shards}\nstats_interval = \"100ms\"\n\
         [[tcp]]\nname = \"t\"\nlisten = \"127.0.0.1:0\"\nupstreams = [{}]\n{keys}\n",
        list.join(", ")
    ));
    Proc::start(&["run", "--config", cfg.to_str().expect("path")], 1)
}

fn entries(ups: &[Named], weights: &[u32]) -> Vec<String> {
    ups.iter()
        .zip(weights)
        .map(|(u, w)| format!("{} weight={w}", u.addr))
        .collect()
}

/// Which upstream one connection from `from` (any source when `None`)
/// reached, by the byte it answered; `None` when it was not served.
fn landed(fwd: SocketAddr, from: Option<[u8; 4]>) -> Option<u8> {
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).ok()?;
    if let Some(ip) = from {
        let src = SocketAddr::from((ip, 0));
        sock.bind(&src.into()).ok()?;
    }
    sock.connect(&fwd.into()).ok()?;
    let mut s = TcpStream::from(sock);
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    let mut b = Vec::new();
    s.read_to_end(&mut b).ok()?;
    match b.as_slice() {
        [who] => Some(*who),
        _ => None,
    }
}

/// `total` connections over 4 client threads; how many reached each of `n`
/// upstreams (every one must be served).
fn distribution(fwd: &Proc, n: usize, total: usize) -> Vec<usize> {
    let addr = fwd.first_addr();
    let threads: Vec<_> = (0..4)
        .map(|_| std::thread::spawn(move || (0..total / 4).map(|_| landed(addr, None)).collect()))
        .collect();
    let mut got = vec![0usize; n];
    for t in threads {
        let picks: Vec<Option<u8>> = t.join().expect("client thread");
        for p in picks {
            let who = p.unwrap_or_else(|| panic!("a client was not served; log:\n{}", fwd.log()));
            got[usize::from(who)] += 1;
        }
    }
    got
}

#[track_caller]
fn assert_within_5_percent(got: &[usize], weights: &[u32], what: &str) {
    let total: usize = got.iter().sum();
    let sum: u32 = weights.iter().sum();
    for (i, (&g, &w)) in got.iter().zip(weights).enumerate() {
        let want = total as f64 * f64::from(w) / f64::from(sum);
        let off = (g as f64 - want).abs() / want;
        assert!(
            off <= 0.05,
            "{what}: upstream {i} (weight {w}) got {g} of {total}, want {want:.0} ±5%: {got:?}"
        );
    }
}

#[test]
fn round_robin_spreads_3000_connections_evenly_and_by_weight() {
    let ups = named(3);
    for shards in [1, 2] {
        for weights in [[1, 1, 1], [1, 1, 2]] {
            let fwd = forwarder(&entries(&ups, &weights), "", shards);
            let got = distribution(&fwd, 3, 3000);
            assert_within_5_percent(&got, &weights, &format!("{shards} shards"));
            if shards == 1 {
                // One shard's smooth weighted round robin is exact per round.
                let sum: u32 = weights.iter().sum();
                let want: Vec<usize> = weights
                    .iter()
                    .map(|w| 3000 * *w as usize / sum as usize)
                    .collect();
                assert_eq!(got, want, "weights {weights:?}");
            }
        }
    }
}

#[test]
fn least_conn_and_random_two_serve_every_client_and_follow_weights_when_idle() {
    let ups = named(3);
    let weights = [1, 1, 2];
    for policy in ["least_conn", "random_two"] {
        let keys = format!("balance = \"{policy}\"");
        let fwd = forwarder(&entries(&ups, &weights), &keys, 1);
        let got = distribution(&fwd, 3, 1200);
        // Short connections: how many are open at a pick is noise, so only
        // the broad shape holds (least_conn's ties go round robin by
        // weight): the weight-2 upstream takes the most.
        assert_eq!(got.iter().sum::<usize>(), 1200, "{policy}");
        assert!(
            got[2] > got[0] && got[2] > got[1],
            "{policy}: weight 2 gets the most: {got:?}"
        );
    }
}

/// Distinct client addresses 127.1.x.y.
fn clients(n: usize) -> Vec<[u8; 4]> {
    (0..n)
        .map(|k| [127, 1, (k / 250) as u8, (k % 250 + 1) as u8])
        .collect()
}

fn where_each(fwd: &Proc, from: &[[u8; 4]]) -> Vec<u8> {
    from.iter()
        .map(|ip| {
            landed(fwd.first_addr(), Some(*ip))
                .unwrap_or_else(|| panic!("client {ip:?} not served; log:\n{}", fwd.log()))
        })
        .collect()
}

#[test]
fn hash_source_keeps_a_client_on_one_upstream_across_shards_and_instances() {
    let ups = named(4);
    let list = entries(&ups, &[1, 1, 1, 1]);
    let keys = "balance = \"hash_source\"";
    let a = forwarder(&list, keys, 2);
    let b = forwarder(&list, keys, 2);
    let from = clients(400);
    let first = where_each(&a, &from);
    // Each connection has a new source port, so the kernel spreads them
    // over both shards: each must still land where the first did.
    for round in 0..2 {
        assert_eq!(where_each(&a, &from), first, "instance a, round {round}");
    }
    assert_eq!(where_each(&b, &from), first, "another instance, same list");
    let mut per = [0usize; 4];
    for w in &first {
        per[usize::from(*w)] += 1;
    }
    assert!(
        per.iter().all(|&p| (60..140).contains(&p)),
        "400 clients over 4 upstreams: {per:?}"
    );
    // Upstream 3 leaves the list: its clients move, the others (almost) stay.
    let fewer = forwarder(&list[..3], keys, 2);
    let after = where_each(&fewer, &from);
    let moved_others = first
        .iter()
        .zip(&after)
        .filter(|(x, y)| **x != 3 && x != y)
        .count();
    let moved = first.iter().zip(&after).filter(|(x, y)| x != y).count();
    assert!(
        moved_others * 100 <= 3 * 400,
        "{moved_others} of the clients of other upstreams moved"
    );
    let share = moved as f64 / 400.0;
    assert!(
        (0.15..=0.35).contains(&share),
        "about 1/4 of the clients move, {moved} did"
    );
}

#[test]
fn a_killed_upstream_is_ejected_after_max_fails_and_no_client_fails() {
    let mut ups = named(3);
    let list = entries(&ups, &[1, 1, 1]);
    let shards = 2;
    let fwd = forwarder(&list, "max_fails = 2\nfail_timeout = \"30s\"", shards);
    let warm = distribution(&fwd, 3, 60);
    assert!(warm.iter().all(|&n| n > 0), "all three serve: {warm:?}");
    let dead = ups[1].addr;
    ups[1].stop();
    let got = distribution(&fwd, 3, 600);
    assert_eq!(got[1], 0, "nobody reached the stopped upstream");
    assert_eq!(got.iter().sum::<usize>(), 600, "every client served");
    let line = format!("listener=t upstream={dead}");
    let ok = wait_until(Duration::from_secs(5), || {
        fwd.detail_stats(&line).contains_key("upstream_ejected")
    });
    assert!(ok, "no upstream_ejected; log:\n{}", fwd.log());
    let d = fwd.detail_stats(&line);
    let refused = d.get("connect_refused").copied().unwrap_or(0);
    let ejected = d.get("upstream_ejected").copied().unwrap_or(0);
    // Each shard takes it out after its own 2 failures: without ejection
    // a third of 600 connections would have tried it.
    assert!(
        (2..=2 * shards as u64).contains(&refused),
        "{refused} refused connects to the dead upstream: {d:?}"
    );
    assert!((1..=shards as u64).contains(&ejected), "{d:?}");
    assert_eq!(
        d.get("in_rotation").copied().unwrap_or(0),
        shards as u64 - ejected
    );
    let live = fwd.detail_stats(&format!("listener=t upstream={}", ups[0].addr));
    assert_eq!(live.get("in_rotation"), Some(&(shards as u64)), "{live:?}");
    let log = fwd.log();
    assert!(
        log.lines().any(|l| l.contains("upstream down")
            && l.contains(&dead.to_string())
            && l.contains("listener=\"t\"")
            && l.contains("2 connect failures within 30s; out of rotation on shard")),
        "no log line for the ejection:\n{log}"
    );
}

#[test]
fn with_every_upstream_down_each_is_still_tried_and_counted_as_all_down() {
    let mut ups = named(2);
    let list = entries(&ups, &[1, 1]);
    ups[0].stop();
    ups[1].stop();
    let fwd = forwarder(&list, "", 1);
    for _ in 0..3 {
        assert_eq!(landed(fwd.first_addr(), None), None);
    }
    // The first client ejects both (max_fails = 1); the next two find
    // none in rotation and try both anyway.
    fwd.wait_stat("close_connect_refused", Duration::from_secs(5), |v| v == 3);
    let t = fwd.detail_stats("listener=t");
    assert_eq!(t.get("all_down"), Some(&4), "{t:?}");
    assert_eq!(t.get("connect_attempts"), Some(&6), "{t:?}");
}

/// Which upstream a client that a trusted proxy (this test, from
/// 127.0.0.1) announces as `ip` in a PROXY v1 header reached.
fn landed_via_proxy(fwd: SocketAddr, ip: [u8; 4]) -> Option<u8> {
    let mut s = TcpStream::connect(fwd).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    let [a, b, c, d] = ip;
    let header = format!(
        "PROXY TCP4 {a}.{b}.{c}.{d} 127.0.0.1 40000 {}\r\n",
        fwd.port()
    );
    std::io::Write::write_all(&mut s, header.as_bytes()).ok()?;
    let mut got = Vec::new();
    s.read_to_end(&mut got).ok()?;
    match got.as_slice() {
        [who] => Some(*who),
        _ => None,
    }
}

#[test]
fn hash_source_hashes_the_client_a_trusted_proxy_header_names() {
    let ups = named(4);
    let list = entries(&ups, &[1, 1, 1, 1]);
    let direct = forwarder(&list, "balance = \"hash_source\"", 2);
    let proxied = forwarder(
        &list,
        "balance = \"hash_source\"\naccept_proxy = true\ntrusted_proxies = [\"127.0.0.1\"]",
        2,
    );
    let from = clients(100);
    let want = where_each(&direct, &from);
    let got: Vec<u8> = from
        .iter()
        .map(|ip| {
            landed_via_proxy(proxied.first_addr(), *ip)
                .unwrap_or_else(|| panic!("client {ip:?} not served; log:\n{}", proxied.log()))
        })
        .collect();
    assert_eq!(
        got, want,
        "the same upstream as the client itself would reach"
    );
}

/// The per-upstream `active` gauge (and least_conn, which reads it) counts a
/// connection on the upstream it reached, from the pick to its close, and
/// not on one whose connect failed; least_conn fills by weight.
#[test]
fn least_conn_counts_connections_where_they_are_until_they_close() {
    let a = crate::harness::echo_upstream(1);
    let b = crate::harness::echo_upstream(1);
    let (_guard, dead) = crate::harness::dead_port();
    let list = vec![
        dead.to_string(),
        format!("{} weight=1", a.first_addr()),
        format!("{} weight=3", b.first_addr()),
    ];
    // Passive health off: the dead upstream stays in rotation, and every
    // connection that picks it moves on.
    let fwd = forwarder(&list, "balance = \"least_conn\"\nmax_fails = 0", 1);
    let mut open = Vec::new();
    for i in 0..8u8 {
        let mut s = TcpStream::connect(fwd.first_addr()).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        std::io::Write::write_all(&mut s, &[i]).expect("write");
        let mut back = [0u8; 1];
        s.read_exact(&mut back).expect("echo");
        open.push(s);
    }
    let active = |up: SocketAddr| {
        fwd.detail_stats(&format!("listener=t upstream={up}"))
            .get("active")
            .copied()
            .unwrap_or(0)
    };
    let held = wait_until(Duration::from_secs(5), || {
        active(a.first_addr()) == 2 && active(b.first_addr()) == 6
    });
    assert!(
        held && active(dead) == 0,
        "8 open connections: {} on a, {} on b, {} on the dead one; log:\n{}",
        active(a.first_addr()),
        active(b.first_addr()),
        active(dead),
        fwd.log()
    );
    drop(open);
    let gone = wait_until(Duration::from_secs(5), || {
        fwd.detail_stats("listener=t").get("close_client_eof") == Some(&8)
            && active(a.first_addr()) == 0
            && active(b.first_addr()) == 0
    });
    assert!(
        gone,
        "closed connections still counted; log:\n{}",
        fwd.log()
    );
}

/// A UDP port where nothing is bound (ICMP port unreachable), below the
/// ephemeral range so no socket of the suite takes it meanwhile.
fn dead_udp_addr() -> SocketAddr {
    let mut rng = ringfwd::verify::Rng::new(u64::from(std::process::id()) ^ 0xba1);
    loop {
        let port = 20_000 + rng.below(10_000) as u16;
        if std::net::UdpSocket::bind(("127.0.0.1", port)).is_ok() {
            return SocketAddr::from(([127, 0, 0, 1], port));
        }
    }
}

/// UDP sessions: an upstream that answers with ICMP port unreachable is
/// taken out after `max_fails` refused sessions, so new sessions go to the
/// live one.
#[test]
fn a_refusing_udp_upstream_is_ejected_for_new_sessions() {
    let live = Proc::start(&["echo", "--udp", "127.0.0.1:0", "--shards", "1"], 1);
    let dead = dead_udp_addr();
    let cfg = write_config(&format!(
        "[runtime]\nshards = 1\nstats_interval = \"100ms\"\n\
         [[udp]]\nname = \"u\"\nlisten = \"127.0.0.1:0\"\nupstreams = [\"{dead}\", \"{}\"]\n\
         max_fails = 1\nfail_timeout = \"30s\"\n",
        live.first_addr()
    ));
    let fwd = Proc::start(&["run", "--config", cfg.to_str().expect("path")], 1);
    let mut served = 0;
    for k in 0..10u8 {
        let s = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
        s.set_read_timeout(Some(Duration::from_millis(500)))
            .expect("timeout");
        s.send_to(&[k], fwd.first_addr()).expect("send");
        let mut b = [0u8; 8];
        if matches!(s.recv_from(&mut b), Ok((1, _)) if b[0] == k) {
            served += 1;
        }
    }
    // The first session went to the dead upstream (round robin starts
    // there); its refusal took it out, so every later one was served.
    assert_eq!(served, 9, "log:\n{}", fwd.log());
    fwd.wait_stat("upstream_ejected", Duration::from_secs(5), |v| v == 1);
    assert_eq!(fwd.stat("udp_end_refused"), 1);
}
