//! Reload on SIGHUP: the file is re-read and applied while clients keep
//! connecting. Listeners that stay keep their sockets (nothing refused or
//! reset), added ones serve, removed ones stop accepting while their open
//! connections finish; an invalid file changes nothing and is counted;
//! counters continue.

use std::collections::HashSet;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::harness::{Proc, echo_upstream, round_trip, wait_until, write_config};

/// A port below the ephemeral range that nothing listens on now (for a
/// listener a reload adds: its address must be known before the reload).
fn free_low_port() -> u16 {
    static CALLS: AtomicU64 = AtomicU64::new(0);
    let call = CALLS.fetch_add(1, Ordering::Relaxed) as u16;
    let start = (std::process::id() % 4_000) as u16 * 3 + call * 101;
    (0..2_000u16)
        .map(|i| start.wrapping_add(i * 7) % 12_000 + 20_000)
        .find(|&p| TcpListener::bind(("127.0.0.1", p)).is_ok())
        .expect("a free port in 20000-32000")
}

fn start(path: &Path, listeners: usize) -> Proc {
    Proc::start(
        &["run", "--config", path.to_str().expect("path")],
        listeners,
    )
}

/// Rewrites the config, sends SIGHUP and waits for the reload's verdict
/// (the `n`th "SIGHUP: " result line).
fn reload(fwd: &Proc, path: &Path, text: &str, n: usize) {
    std::fs::write(path, text).expect("write config");
    fwd.signal(libc::SIGHUP);
    let done = |log: &str| {
        log.matches("SIGHUP: configuration reloaded")
            .count()
            .saturating_add(log.matches("SIGHUP: reload failed").count())
    };
    assert!(
        wait_until(Duration::from_secs(10), || done(&fwd.log()) >= n),
        "reload {n} did not finish; log:\n{}",
        fwd.log()
    );
}

/// One connection: a payload of `len` bytes from `seed`, echoed back whole.
fn echo_checked(addr: SocketAddr, seed: u64, len: usize) -> Result<(), String> {
    let payload: Vec<u8> = (0..len as u64)
        .map(|i| (seed.wrapping_mul(31).wrapping_add(i * 7) % 251) as u8)
        .collect();
    let back = round_trip(addr, &payload).map_err(|e| format!("seed {seed}: {e}"))?;
    if back != payload {
        return Err(format!(
            "seed {seed}: {} bytes back of {len}, or different",
            back.len()
        ));
    }
    Ok(())
}

/// A connection held open across reloads: echoes `msg` now and later.
fn echo_on(s: &mut TcpStream, msg: &[u8]) {
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    s.write_all(msg).expect("write");
    let mut back = vec![0u8; msg.len()];
    s.read_exact(&mut back).expect("read");
    assert_eq!(back, msg);
}

fn config(listeners: &str) -> String {
    format!(
        "[runtime]\nshards = 2\nstats_interval = \"100ms\"\ndrain_timeout = \"30s\"\n{listeners}"
    )
}

fn tcp(name: &str, listen: &str, ups: &[SocketAddr], extra: &str) -> String {
    let ups: Vec<String> = ups.iter().map(|a| format!("\"{a}\"")).collect();
    format!(
        "[[tcp]]\nname = \"{name}\"\nlisten = \"{listen}\"\nupstreams = [{}]\n{extra}\n",
        ups.join(", ")
    )
}

#[test]
fn twenty_reloads_under_load_lose_no_connection_and_removed_listeners_drain() {
    let (a, b) = (echo_upstream(1), echo_upstream(1));
    let (a, b) = (a.first_addr(), b.first_addr());
    let keep_port = free_low_port();
    let keep = format!("127.0.0.1:{keep_port}");
    let gone_port = free_low_port();
    let gone = format!("127.0.0.1:{gone_port}");
    let extra_port = free_low_port();
    let extra = format!("127.0.0.1:{extra_port}");
    assert!(keep_port != gone_port && gone_port != extra_port && keep_port != extra_port);
    let first = config(&(tcp("keep", &keep, &[a], "") + &tcp("gone", &gone, &[b], "")));
    let path = write_config(&first);
    let fwd = start(&path, 2);
    let keep_addr: SocketAddr = keep.parse().expect("addr");
    let gone_addr: SocketAddr = gone.parse().expect("addr");
    let extra_addr: SocketAddr = extra.parse().expect("addr");

    // Long-lived connections on both listeners, opened before any reload.
    let mut long: Vec<TcpStream> = (0..4)
        .map(|i| {
            let to = if i % 2 == 0 { keep_addr } else { gone_addr };
            let mut s = TcpStream::connect(to).expect("connect");
            echo_on(&mut s, b"before the reloads");
            s
        })
        .collect();

    // The load: two clients, each connection a verified echo, bounded in
    // count and time.
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let clients: Vec<_> = (0..2u64)
        .map(|c| {
            let (stop, done) = (stop.clone(), done.clone());
            std::thread::spawn(move || {
                let deadline = Instant::now() + Duration::from_secs(90);
                let mut errors = Vec::new();
                for i in 0..4_000u64 {
                    if stop.load(Ordering::Relaxed) || Instant::now() > deadline {
                        break;
                    }
                    let seed = c << 32 | i;
                    if let Err(e) = echo_checked(keep_addr, seed, 64 + (seed % 4_000) as usize) {
                        errors.push(e);
                    }
                    done.fetch_add(1, Ordering::Relaxed);
                }
                errors
            })
        })
        .collect();

    let mut balance = ["round_robin", "least_conn", "random_two"].iter().cycle();
    for n in 1..=20usize {
        // Some load between two reloads.
        let at = done.load(Ordering::Relaxed);
        assert!(
            wait_until(Duration::from_secs(20), || done.load(Ordering::Relaxed)
                >= at + 20),
            "the clients made no progress; log:\n{}",
            fwd.log()
        );
        let ups: &[SocketAddr] = match n % 3 {
            0 => &[a],
            1 => &[b],
            _ => &[a, b],
        };
        let keys = format!("balance = \"{}\"", balance.next().expect("cycle"));
        let mut text = tcp("keep", &keep, ups, &keys);
        if n % 2 == 0 {
            text += &tcp("extra", &extra, &[a], "");
        }
        reload(&fwd, &path, &config(&text), n);
        // Removed ("gone" at the first reload, "extra" at every odd one
        // after): new connections refused once the shards closed it (and
        // its port free again for the next reload to add it back).
        let removed = match n {
            1 => Some(gone_addr),
            n if n % 2 == 1 => Some(extra_addr),
            _ => None,
        };
        if let Some(removed) = removed {
            assert!(
                wait_until(Duration::from_secs(5), || TcpStream::connect(removed)
                    .is_err()),
                "the removed listener still accepts; log:\n{}",
                fwd.log()
            );
        }
        if n % 2 == 0 {
            assert!(
                wait_until(Duration::from_secs(5), || echo_checked(
                    extra_addr, n as u64, 100
                )
                .is_ok()),
                "the added listener does not serve after reload {n}; log:\n{}",
                fwd.log()
            );
        }
    }
    assert!(
        !fwd.log().contains("reload failed"),
        "a reload failed:\n{}",
        fwd.log()
    );
    stop.store(true, Ordering::Relaxed);
    let errors: Vec<String> = clients
        .into_iter()
        .flat_map(|c| c.join().expect("client"))
        .collect();
    let total = done.load(Ordering::Relaxed);
    eprintln!("{total} verified connections across 20 reloads");
    assert!(
        errors.is_empty(),
        "{} of {total} connections to the kept listener failed across 20 reloads: {:?}",
        errors.len(),
        errors.iter().take(5).collect::<Vec<_>>()
    );
    // The long-lived connections, the removed listener's included, finish intact.
    for s in &mut long {
        echo_on(s, b"after twenty reloads");
    }
    long.clear();
    fwd.wait_stat("reloads", Duration::from_secs(5), |v| v == 20);
    // Every connection the clients made is counted (once a stats line
    // after the last one is out).
    let counted = || {
        fwd.detail_stats("listener=keep")
            .get("accepted")
            .copied()
            .unwrap_or(0)
    };
    assert!(
        wait_until(Duration::from_secs(5), || counted() >= total),
        "listener keep counted {} connections, fewer than the clients made ({total})",
        counted()
    );
}

#[test]
fn an_invalid_reload_keeps_the_running_configuration_and_counts_reload_failed() {
    let echo = echo_upstream(1);
    let up = echo.first_addr();
    let admin = "[admin]\nlisten = \"127.0.0.1:0\"\n";
    let path = write_config(&(config(admin) + &tcp("t", "127.0.0.1:0", &[up], "")));
    let fwd = start(&path, 2);
    let addr = fwd.addr("t");
    let bad = config(admin) + &tcp("t", "127.0.0.1:0", &[up], "balance = \"fastest\"");
    reload(&fwd, &path, &bad, 1);
    let line = fwd.wait_log("SIGHUP: reload failed", Duration::from_secs(5));
    assert!(line.contains("balance"), "the error names the key: {line}");
    assert_eq!(
        round_trip(addr, b"still serving").expect("round trip"),
        b"still serving"
    );
    fwd.wait_stat("reload_failed", Duration::from_secs(5), |v| v == 1);
    assert_eq!(fwd.stat("reloads"), 0);
    let metrics = http_get(fwd.addr("admin"), "/metrics");
    assert!(
        metrics
            .lines()
            .any(|l| l == "ringfwd_reload_failed_total 1"),
        "/metrics has no reload_failed:\n{metrics}"
    );
}

/// The body of `GET path` from the admin endpoint.
fn http_get(admin: SocketAddr, path: &str) -> String {
    let mut c = TcpStream::connect(admin).expect("connect to the admin endpoint");
    c.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let req = format!("GET {path} HTTP/1.1\r\nHost: ringfwd\r\n\r\n");
    c.write_all(req.as_bytes()).expect("write the request");
    let mut out = String::new();
    c.read_to_string(&mut out).expect("read the answer");
    out.split_once("\r\n\r\n")
        .map(|(_, body)| body.to_owned())
        .unwrap_or_default()
}

#[test]
fn a_removed_listeners_connections_are_closed_at_drain_timeout() {
    let echo = echo_upstream(1);
    let up = echo.first_addr();
    let short = |listeners: &str| config(listeners).replace("\"30s\"", "\"300ms\"");
    let path = write_config(&short(
        &(tcp("kept", "127.0.0.1:0", &[up], "") + &tcp("gone", "127.0.0.1:0", &[up], "")),
    ));
    let fwd = start(&path, 2);
    let mut open = TcpStream::connect(fwd.addr("gone")).expect("connect");
    echo_on(&mut open, b"before the reload");
    reload(
        &fwd,
        &path,
        &short(&tcp("kept", "127.0.0.1:0", &[up], "")),
        1,
    );
    // Open past the removed listener's drain_timeout: closed by ringfwd.
    open.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let mut buf = [0u8; 16];
    let read = open.read(&mut buf);
    let timed_out = read.as_ref().is_err_and(|e| {
        matches!(
            e.kind(),
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
        )
    });
    let ended = matches!(read, Ok(0) | Err(_)) && !timed_out;
    assert!(
        ended,
        "the connection outlived drain_timeout; log:\n{}",
        fwd.log()
    );
    fwd.wait_stat("close_shutdown", Duration::from_secs(5), |v| v == 1);
}

#[test]
fn counters_continue_across_a_reload_for_kept_and_removed_listeners() {
    let (a, b) = (echo_upstream(1), echo_upstream(1));
    let (a, b) = (a.first_addr(), b.first_addr());
    let path = write_config(&config(
        &(tcp("kept", "127.0.0.1:0", &[a], "") + &tcp("dropped", "127.0.0.1:0", &[a], "")),
    ));
    let fwd = start(&path, 2);
    let (kept, dropped) = (fwd.addr("kept"), fwd.addr("dropped"));
    for i in 0..5 {
        echo_checked(kept, i, 100).expect("echo");
    }
    for i in 0..3 {
        echo_checked(dropped, i, 100).expect("echo");
    }
    fwd.wait_stat("accepted", Duration::from_secs(5), |v| v == 8);
    // The kept listener moves to another upstream; the other is removed.
    reload(
        &fwd,
        &path,
        &config(&tcp("kept", "127.0.0.1:0", &[b], "")),
        1,
    );
    for i in 0..4 {
        echo_checked(kept, 100 + i, 100).expect("echo");
    }
    fwd.wait_stat("accepted", Duration::from_secs(5), |v| v == 12);
    let ok = wait_until(Duration::from_secs(5), || {
        let k = fwd.detail_stats("listener=kept");
        let d = fwd.detail_stats("listener=dropped");
        k.get("accepted") == Some(&9) && d.get("accepted") == Some(&3)
    });
    assert!(
        ok,
        "per-listener counters went back or stopped; log:\n{}",
        fwd.log()
    );
    let old_up = fwd.detail_stats(&format!("listener=kept upstream={a}"));
    let new_up = fwd.detail_stats(&format!("listener=kept upstream={b}"));
    assert_eq!(old_up.get("connect_attempts"), Some(&5), "{}", fwd.log());
    assert_eq!(new_up.get("connect_attempts"), Some(&4), "{}", fwd.log());
}

/// The inodes of the listening sockets of `pid` on `port` (from /proc).
fn listening_inodes(pid: u32, port: u16) -> HashSet<String> {
    crate::harness::socket_inodes(pid, "tcp", "0A", port)
}

#[test]
fn a_kept_listener_keeps_its_sockets_and_a_runtime_key_needs_a_restart() {
    let (a, b) = (echo_upstream(1), echo_upstream(1));
    let (a, b) = (a.first_addr(), b.first_addr());
    let path = write_config(&config(&tcp("t", "127.0.0.1:0", &[a], "")));
    let fwd = start(&path, 1);
    let addr = fwd.addr("t");
    let before = listening_inodes(fwd.pid(), addr.port());
    assert_eq!(before.len(), 2, "one socket per shard: {before:?}");
    let changed = config(&tcp("t", "127.0.0.1:0", &[b], ""))
        .replace("[runtime]\n", "[runtime]\nbuffer_size = 8192\n");
    reload(&fwd, &path, &changed, 1);
    let line = fwd.wait_log("SIGHUP: runtime.buffer_size", Duration::from_secs(5));
    assert!(
        line.contains("restart") && line.contains("SIGUSR2"),
        "says a restart or an upgrade applies it: {line}"
    );
    assert_eq!(
        listening_inodes(fwd.pid(), addr.port()),
        before,
        "the kept listener was bound anew"
    );
    // The rest applied: the new upstream serves the kept listener.
    echo_checked(addr, 7, 100).expect("echo");
    let ok = wait_until(Duration::from_secs(5), || {
        fwd.detail_stats(&format!("listener=t upstream={b}"))
            .get("connect_attempts")
            == Some(&1)
    });
    assert!(ok, "the new upstream was not used; log:\n{}", fwd.log());
}

#[test]
fn an_upstream_the_checker_took_down_stays_down_across_a_reload() {
    let echo = echo_upstream(1);
    let up = echo.first_addr();
    let (_guard, dead) = crate::harness::dead_port();
    let check = "health_check = { interval = \"100ms\", timeout = \"100ms\", rise = 2, fall = 2 }";
    let path = write_config(&config(&tcp("t", "127.0.0.1:0", &[up, dead], check)));
    let fwd = start(&path, 1);
    let addr = fwd.addr("t");
    fwd.wait_stat("upstream_down", Duration::from_secs(10), |v| v == 1);
    let checks = fwd.stat("health_checks");
    let changed = check.to_owned() + "\nbalance = \"least_conn\"";
    reload(
        &fwd,
        &path,
        &config(&tcp("t", "127.0.0.1:0", &[up, dead], &changed)),
        1,
    );
    // New connections go to the live upstream only: the shards' new
    // balancer starts with the checker's verdict, not with "up".
    for i in 0..10 {
        echo_checked(addr, i, 100).expect("echo");
    }
    // The new checker has run a few rounds: had it started the dead
    // upstream up, it would have taken it down again (a second count).
    fwd.wait_stat("health_checks", Duration::from_secs(10), |v| {
        v >= checks + 8
    });
    assert_eq!(fwd.stat("upstream_down"), 1, "{}", fwd.log());
    let line = fwd.detail_stats(&format!("listener=t upstream={dead}"));
    assert_eq!(line.get("connect_attempts"), None, "{line:?}");
    assert_eq!(line.get("in_rotation"), None, "{line:?}");
}

#[test]
fn a_reloaded_drain_timeout_is_the_one_a_stop_uses() {
    let echo = echo_upstream(1);
    let up = echo.first_addr();
    let path = write_config(&config(&tcp("t", "127.0.0.1:0", &[up], "")));
    let mut fwd = start(&path, 1);
    let shorter = config(&tcp("t", "127.0.0.1:0", &[up], "")).replace("\"30s\"", "\"250ms\"");
    reload(&fwd, &path, &shorter, 1);
    let mut open = TcpStream::connect(fwd.addr("t")).expect("connect");
    echo_on(&mut open, b"open at the stop");
    fwd.signal(libc::SIGTERM);
    let line = fwd.wait_log("SIGTERM: draining", Duration::from_secs(5));
    assert!(line.contains("get up to 250ms"), "{line}");
    let status = fwd.wait_exit(Duration::from_secs(10)).expect("exit");
    assert_eq!(status.code(), Some(0), "{}", fwd.log());
}
