//! Binary upgrade on SIGUSR2: the running forwarder starts the binary at its
//! own path on its listening sockets, and drains only once the new process
//! serves. Clients connecting all along see no refused or reset connection;
//! a connection open across an upgrade finishes on the old process; the pid
//! file follows the newest process. A new binary that fails leaves the old
//! one serving, with the reason in its log.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use ringfwd::verify::Pattern;

use crate::harness::{BIN, Proc, echo_upstream, round_trip, temp_path, wait_until, write_config};

/// Processes the upgrades started (found through the pid file): killed by
/// PID when the test ends, whatever happened.
#[derive(Default)]
struct Descendants(Vec<u32>);

impl Drop for Descendants {
    fn drop(&mut self) {
        for pid in &self.0 {
            if alive(*pid) {
                signal(*pid, "KILL");
            }
        }
    }
}

fn signal(pid: u32, sig: &str) {
    let _ = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .status();
}

/// Whether `pid` runs (a zombie, waiting for a parent that is not us to
/// reap it, does not).
fn alive(pid: u32) -> bool {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let state = stat
        .rsplit(')')
        .next()
        .and_then(|r| r.split_whitespace().next());
    matches!(state, Some(s) if s != "Z" && s != "X")
}

fn pid_in(path: &Path) -> Option<u32> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// Clients that open connection after connection (about two thousand a
/// second in all), each echoing a payload of its own through the forwarder.
struct Load {
    stop: Arc<AtomicBool>,
    done: Arc<AtomicU64>,
    failures: Arc<Mutex<Vec<String>>>,
    threads: Vec<JoinHandle<()>>,
}

/// Client threads, each about 500 connections a second.
const CLIENTS: u64 = 4;

impl Load {
    fn start(addr: SocketAddr) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let done = Arc::new(AtomicU64::new(0));
        let failures = Arc::new(Mutex::new(Vec::new()));
        let client = |first: u64| {
            let (s, d, f) = (stop.clone(), done.clone(), failures.clone());
            std::thread::spawn(move || {
                let mut seed = first;
                while !s.load(Ordering::Relaxed) {
                    seed += CLIENTS;
                    let mut payload = vec![0u8; 1 + (seed * 7919 % 8192) as usize];
                    Pattern::new(seed).fill(&mut payload);
                    match round_trip(addr, &payload) {
                        Ok(back) if back == payload => {
                            d.fetch_add(1, Ordering::Relaxed);
                        }
                        Ok(back) => f.lock().expect("lock").push(format!(
                            "connection {seed}: {} bytes back of {}, or different",
                            back.len(),
                            payload.len()
                        )),
                        Err(e) => f
                            .lock()
                            .expect("lock")
                            .push(format!("connection {seed}: {e}")),
                    }
                    std::thread::sleep(Duration::from_millis(1));
                }
            })
        };
        let threads = (0..CLIENTS).map(client).collect();
        Load {
            stop,
            done,
            failures,
            threads,
        }
    }

    fn done(&self) -> u64 {
        self.done.load(Ordering::Relaxed)
    }

    /// Stops the client; returns its completed connections and failures.
    fn finish(mut self) -> (u64, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
        (self.done(), self.failures.lock().expect("lock").clone())
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn echo_once(c: &mut TcpStream, msg: &[u8]) {
    c.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    c.write_all(msg).expect("write");
    let mut back = vec![0u8; msg.len()];
    c.read_exact(&mut back).expect("read");
    assert_eq!(back, msg);
}

fn config_text(echo: SocketAddr, pid_file: &Path, shards: usize) -> String {
    format!(
        "[runtime]\nshards = {shards}\nstats_interval = \"1s\"\ndrain_timeout = \"20s\"\n\
         pid_file = \"{}\"\n\
         [admin]\nlisten = \"127.0.0.1:0\"\n\
         [[tcp]]\nname = \"t\"\nlisten = \"127.0.0.1:0\"\nupstreams = [\"{echo}\"]\n",
        pid_file.display()
    )
}

/// The status line of `GET path` on the admin endpoint.
fn admin_status(admin: SocketAddr, path: &str) -> String {
    let mut s = TcpStream::connect(admin).expect("connect to the admin endpoint");
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    s.write_all(format!("GET {path} HTTP/1.0\r\n\r\n").as_bytes())
        .expect("request");
    let mut reply = String::new();
    let _ = s.read_to_string(&mut reply);
    reply.lines().next().unwrap_or_default().to_owned()
}

fn config(echo: SocketAddr, pid_file: &Path) -> PathBuf {
    write_config(&config_text(echo, pid_file, 2))
}

/// Sends SIGUSR2 to `old` and waits until the pid file names another
/// process, which it returns.
fn upgrade(old: u32, pid_file: &Path, fwd: &Proc) -> u32 {
    signal(old, "USR2");
    let mut new = None;
    let ready = wait_until(Duration::from_secs(20), || {
        new = pid_in(pid_file).filter(|p| *p != old);
        new.is_some()
    });
    assert!(
        ready,
        "no new process after SIGUSR2 to {old}:\n{}",
        fwd.log()
    );
    new.expect("new pid")
}

/// Lines ending the normal way (exit status 0) in a log several processes share.
fn clean_exits(log: &str) -> usize {
    log.lines().filter(|l| l.ends_with(" stopped")).count()
}

#[test]
fn three_upgrades_under_load_lose_no_connection() {
    let echo = echo_upstream(1);
    let pid_file = temp_path("ringfwd.pid");
    let cfg = config(echo.first_addr(), &pid_file);
    let mut fwd = Proc::start(&["run", "--config", cfg.to_str().expect("path")], 2);
    let mut descendants = Descendants::default();
    let addr = fwd.first_addr();
    let admin = fwd.addr("admin");
    assert!(
        wait_until(Duration::from_secs(5), || pid_in(&pid_file)
            == Some(fwd.pid())),
        "the pid file does not name the forwarder: {:?}\n{}",
        pid_in(&pid_file),
        fwd.log()
    );
    let load = Load::start(addr);
    let mut current = fwd.pid();
    for generation in 1..=3usize {
        // Upgrade while connections are being opened and served.
        let before = load.done();
        assert!(
            wait_until(Duration::from_secs(10), || load.done() > before + 300),
            "the client made no progress before upgrade {generation}:\n{}",
            fwd.log()
        );
        let before = load.done();
        // Opened before the upgrade: it stays on the old process, which drains.
        let mut long = TcpStream::connect(addr).expect("connect");
        echo_once(
            &mut long,
            format!("generation {generation}: before").as_bytes(),
        );
        let new = upgrade(current, &pid_file, &fwd);
        descendants.0.push(new);
        fwd.wait_log(
            &format!("upgrade: the new process (pid {new}) serves; this one stops accepting"),
            Duration::from_secs(10),
        );
        echo_once(
            &mut long,
            format!("generation {generation}: after").as_bytes(),
        );
        long.shutdown(Shutdown::Write).expect("shutdown");
        let mut rest = Vec::new();
        long.read_to_end(&mut rest).expect("read to the end");
        assert!(rest.is_empty());
        drop(long);
        // With its last connection closed, the old process ends its drain.
        if current == fwd.pid() {
            let mut status = None;
            wait_until(Duration::from_secs(15), || {
                status = fwd.exited();
                status.is_some()
            });
            assert_eq!(status.and_then(|s| s.code()), Some(0), "{}", fwd.log());
        } else {
            let old = current;
            assert!(
                wait_until(Duration::from_secs(15), || !alive(old)),
                "old process {old} still runs after its drain:\n{}",
                fwd.log()
            );
        }
        assert!(
            wait_until(Duration::from_secs(5), || clean_exits(&fwd.log())
                == generation),
            "process {current} did not stop cleanly:\n{}",
            fwd.log()
        );
        assert!(
            wait_until(Duration::from_secs(10), || load.done() > before + 600),
            "the client made no progress after upgrade {generation}:\n{}",
            fwd.log()
        );
        // The admin endpoint was handed over too, and the host stays ready.
        assert!(
            admin_status(admin, "/ready").contains(" 200"),
            "{}",
            fwd.log()
        );
        current = new;
    }
    let (done, failures) = load.finish();
    eprintln!("{done} connections completed across 3 upgrades");
    assert!(
        failures.is_empty(),
        "{} of {} connections failed across the upgrades, first: {:?}\n{}",
        failures.len(),
        done + failures.len() as u64,
        failures.first(),
        fwd.log()
    );
    assert_eq!(pid_in(&pid_file), Some(current), "{}", fwd.log());
    assert!(alive(current));
    assert_eq!(round_trip(addr, b"newest").expect("round trip"), b"newest");
    signal(current, "TERM");
    assert!(
        wait_until(Duration::from_secs(15), || !alive(current)),
        "{}",
        fwd.log()
    );
    // The newest process named itself in the pid file, so it removed it.
    assert!(!pid_file.exists(), "{}", fwd.log());
}

#[test]
fn a_failed_upgrade_leaves_the_old_process_serving_and_says_why() {
    let echo = echo_upstream(1);
    let pid_file = temp_path("ringfwd.pid");
    let cfg = config(echo.first_addr(), &pid_file);
    // A copy of the binary: its path is then replaced by one that fails.
    let program = temp_path("ringfwd");
    std::fs::copy(BIN, &program).expect("copy the binary");
    let mut fwd = Proc::start_program(
        &program,
        &["run", "--config", cfg.to_str().expect("path")],
        1,
    );
    let addr = fwd.first_addr();
    let failing = temp_path("failing.sh");
    std::fs::write(
        &failing,
        "#!/bin/sh\necho 'test binary: failing on purpose' >&2\nsleep 1\nexit 1\n",
    )
    .expect("script");
    {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(&failing, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    }
    std::fs::rename(&failing, &program).expect("replace the binary");
    let mut open = TcpStream::connect(addr).expect("connect");
    echo_once(&mut open, b"before");
    fwd.signal(libc::SIGUSR2);
    fwd.wait_log("SIGUSR2: upgrading: started", Duration::from_secs(5));
    // The new one is still starting: a second SIGUSR2 waits for it.
    fwd.signal(libc::SIGUSR2);
    fwd.wait_log(
        "SIGUSR2 ignored: an upgrade is in progress",
        Duration::from_secs(5),
    );
    let failed = fwd.wait_log("SIGUSR2: upgrade failed", Duration::from_secs(20));
    assert!(failed.contains("exit status: 1"), "{failed}");
    assert!(fwd.log().contains("test binary: failing on purpose"));
    // Still serving: the open connection and new ones; still its pid file.
    echo_once(&mut open, b"after");
    assert_eq!(round_trip(addr, b"new").expect("round trip"), b"new");
    assert_eq!(pid_in(&pid_file), Some(fwd.pid()));
    let log = fwd.log();
    assert!(
        !log.contains("stops accepting") && !log.contains(": draining"),
        "{log}"
    );
    drop(open);
    fwd.signal(libc::SIGTERM);
    let status = fwd.wait_exit(Duration::from_secs(15)).expect("exit");
    assert_eq!(status.code(), Some(0), "{}", fwd.log());
    assert!(!pid_file.exists());
    let _ = std::fs::remove_file(&program);
}

/// The new configuration may have another shard count: one shard fewer
/// closes the handed-over socket no shard uses, one more binds a socket
/// into the same SO_REUSEPORT group; either way every connection is served.
#[test]
fn an_upgrade_may_change_the_shard_count() {
    let echo = echo_upstream(1);
    let pid_file = temp_path("ringfwd.pid");
    let cfg = config(echo.first_addr(), &pid_file);
    let mut fwd = Proc::start(&["run", "--config", cfg.to_str().expect("path")], 2);
    let mut descendants = Descendants::default();
    let addr = fwd.first_addr();
    let mut current = fwd.pid();
    let steps = [
        (
            1,
            "1 handed-over socket(s) beyond this process's 1 shard(s) closed",
        ),
        (
            2,
            "took 1 handed-over socket(s), bound 1 more into its SO_REUSEPORT group",
        ),
    ];
    for (shards, line) in steps {
        std::fs::write(&cfg, config_text(echo.first_addr(), &pid_file, shards)).expect("config");
        let new = upgrade(current, &pid_file, &fwd);
        descendants.0.push(new);
        fwd.wait_log(line, Duration::from_secs(10));
        assert!(
            wait_until(Duration::from_secs(15), || !alive(current)),
            "old process {current} still runs:\n{}",
            fwd.log()
        );
        // Connections from many source ports: the kernel's hash spreads
        // them over every socket of the group, and each is served.
        for i in 0..50u32 {
            let msg = format!("{shards} shard(s): {i}");
            assert_eq!(
                round_trip(addr, msg.as_bytes()).expect("round trip"),
                msg.as_bytes()
            );
        }
        current = new;
    }
    assert_eq!(
        fwd.exited().and_then(|s| s.code()),
        Some(0),
        "{}",
        fwd.log()
    );
    signal(current, "TERM");
    assert!(wait_until(Duration::from_secs(15), || !alive(current)));
}

/// `ringfwd echo` upgrades too, and a UDP socket is handed over like a TCP
/// one: after the old process exited, the new one answers on the same ports.
#[test]
fn udp_and_echo_listeners_are_handed_over() {
    let mut old = Proc::start(
        &[
            "echo",
            "--tcp",
            "127.0.0.1:0",
            "--udp",
            "127.0.0.1:0",
            "--shards",
            "1",
        ],
        2,
    );
    let mut descendants = Descendants::default();
    let of = |kind: &str| {
        old.listening
            .iter()
            .find(|(k, _, _)| k == kind)
            .map(|l| l.2)
            .expect("listener")
    };
    let (tcp, udp) = (of("echo"), of("udp-echo"));
    old.signal(libc::SIGUSR2);
    let line = old.wait_log("upgrade: the new process (pid ", Duration::from_secs(20));
    let new: u32 = line
        .split("(pid ")
        .nth(1)
        .and_then(|r| r.split(')').next())
        .and_then(|p| p.parse().ok())
        .expect("pid in the log line");
    descendants.0.push(new);
    assert!(
        old.log().contains("udp listener '127.0.0.1:0' on")
            && old.log().contains("took 1 handed-over socket(s)"),
        "{}",
        old.log()
    );
    let mut status = None;
    wait_until(Duration::from_secs(15), || {
        status = old.exited();
        status.is_some()
    });
    assert_eq!(status.and_then(|s| s.code()), Some(0), "{}", old.log());
    assert!(alive(new));
    let client = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
    client
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    client.send_to(b"datagram", udp).expect("send");
    let mut buf = [0u8; 64];
    let (n, from) = client.recv_from(&mut buf).expect("the new process echoes");
    assert_eq!((&buf[..n], from), (&b"datagram"[..], udp));
    assert_eq!(round_trip(tcp, b"stream").expect("round trip"), b"stream");
    signal(new, "TERM");
    assert!(wait_until(Duration::from_secs(15), || !alive(new)));
}

/// A port below the ephemeral range that nothing listens on now (the
/// clients' own ports come from the ephemeral range, so they cannot take it).
fn free_low_port() -> u16 {
    let start = (std::process::id() % 3_000) as u16 * 3;
    (0..2_000u16)
        .map(|i| start.wrapping_add(i * 13) % 9_000 + 21_000)
        .find(|&p| std::net::TcpListener::bind(("127.0.0.1", p)).is_ok())
        .expect("a free port in 21000-30000")
}

/// Rewrites the config and sends SIGHUP to `pid`; waits until the shared
/// log has `n` reload results in all.
fn reload_to(pid: u32, path: &Path, text: &str, n: usize, fwd: &Proc) {
    std::fs::write(path, text).expect("write config");
    signal(pid, "HUP");
    let done = |log: &str| log.matches("SIGHUP: configuration reloaded").count();
    assert!(
        wait_until(Duration::from_secs(10), || done(&fwd.log()) >= n),
        "reload {n} (pid {pid}) did not finish; log:\n{}",
        fwd.log()
    );
}

/// The check in one run: connections opened all along through 20
/// SIGHUP reloads (upstreams, balance and a second listener changing) and 3
/// SIGUSR2 upgrades between them, each process reloaded before it is
/// upgraded: not one connection lost, and a listener a reload added is
/// handed over and served by every later process.
#[test]
fn twenty_reloads_and_three_upgrades_interleaved_under_load_lose_no_connection() {
    let (a, b) = (echo_upstream(1), echo_upstream(1));
    let (a, b) = (a.first_addr(), b.first_addr());
    let pid_file = temp_path("ringfwd.pid");
    let keep = SocketAddr::from(([127, 0, 0, 1], free_low_port()));
    let extra = loop {
        let p = free_low_port();
        if p != keep.port() {
            break SocketAddr::from(([127, 0, 0, 1], p));
        }
    };
    let text = |n: usize| {
        let ups = match n % 3 {
            0 => format!("\"{a}\""),
            1 => format!("\"{b}\""),
            _ => format!("\"{a}\", \"{b} weight=2\""),
        };
        let balance = ["round_robin", "least_conn", "random_two"][n % 3];
        let mut t = format!(
            "[runtime]\nshards = 2\nstats_interval = \"1s\"\ndrain_timeout = \"20s\"\n\
             pid_file = \"{}\"\n\
             [[tcp]]\nname = \"keep\"\nlisten = \"{keep}\"\nupstreams = [{ups}]\nbalance = \"{balance}\"\n",
            pid_file.display()
        );
        // The second listener is there from reload 2 on, except at every
        // fifth reload, which removes it again (and the next adds it back).
        if n >= 2 && n % 5 != 0 {
            t += &format!(
                "[[tcp]]\nname = \"extra\"\nlisten = \"{extra}\"\nupstreams = [\"{a}\"]\n"
            );
        }
        t
    };
    let cfg = write_config(&text(0));
    let fwd = Proc::start(&["run", "--config", cfg.to_str().expect("path")], 1);
    let mut descendants = Descendants::default();
    assert!(
        wait_until(Duration::from_secs(5), || pid_in(&pid_file)
            == Some(fwd.pid())),
        "the pid file does not name the forwarder:\n{}",
        fwd.log()
    );
    let load = Load::start(keep);
    let mut current = fwd.pid();
    let mut reloads = 0usize;
    for generation in 0..=3usize {
        for _ in 0..5 {
            let before = load.done();
            assert!(
                wait_until(Duration::from_secs(10), || load.done() > before + 50),
                "no progress before reload {}:\n{}",
                reloads + 1,
                fwd.log()
            );
            reloads += 1;
            reload_to(current, &cfg, &text(reloads), reloads, &fwd);
            if reloads >= 2 && reloads % 5 != 0 {
                assert!(
                    wait_until(Duration::from_secs(5), || round_trip(extra, b"extra")
                        .is_ok_and(|r| r == b"extra")),
                    "the added listener does not serve after reload {reloads}:\n{}",
                    fwd.log()
                );
            }
        }
        if generation == 3 {
            break;
        }
        let new = upgrade(current, &pid_file, &fwd);
        descendants.0.push(new);
        fwd.wait_log(
            &format!("upgrade: the new process (pid {new}) serves; this one stops accepting"),
            Duration::from_secs(10),
        );
        let old = current;
        assert!(
            wait_until(Duration::from_secs(15), || !alive(old)),
            "old process {old} still runs after its drain:\n{}",
            fwd.log()
        );
        current = new;
        // The second listener (present in the file now) is served by the
        // new process after the old one is gone.
        if reloads % 5 != 0 {
            assert_eq!(
                round_trip(extra, b"after the upgrade").expect("round trip"),
                b"after the upgrade",
                "{}",
                fwd.log()
            );
        }
    }
    assert_eq!(reloads, 20);
    let (done, failures) = load.finish();
    eprintln!("{done} connections completed across 20 reloads and 3 upgrades");
    assert!(
        failures.is_empty(),
        "{} of {} connections failed, first: {:?}\n{}",
        failures.len(),
        done + failures.len() as u64,
        failures.first(),
        fwd.log()
    );
    assert!(!fwd.log().contains("reload failed"), "{}", fwd.log());
    assert_eq!(pid_in(&pid_file), Some(current), "{}", fwd.log());
    signal(current, "TERM");
    assert!(
        wait_until(Duration::from_secs(15), || !alive(current)),
        "{}",
        fwd.log()
    );
}

/// A UDP listener a reload added is handed over on a later SIGUSR2 (the new
/// process takes its sockets rather than binding anew).
#[test]
fn a_udp_listener_a_reload_added_is_handed_over() {
    let up = Proc::start(&["echo", "--udp", "127.0.0.1:0", "--shards", "1"], 1);
    let up = up.first_addr();
    let pid_file = temp_path("ringfwd.pid");
    let (first, added) = loop {
        let (p, q) = (free_low_port(), free_low_port().wrapping_add(1));
        let free = |p: u16| std::net::UdpSocket::bind(("127.0.0.1", p)).is_ok();
        if p != q && free(p) && free(q) {
            break (p, q);
        }
    };
    let text = |name: &str, port: u16| {
        format!(
            "[runtime]\nshards = 2\nstats_interval = \"1s\"\ndrain_timeout = \"5s\"\n\
             pid_file = \"{}\"\n\
             [[udp]]\nname = \"{name}\"\nlisten = \"127.0.0.1:{port}\"\nupstreams = [\"{up}\"]\n",
            pid_file.display()
        )
    };
    let cfg = write_config(&text("first", first));
    let fwd = Proc::start(&["run", "--config", cfg.to_str().expect("path")], 1);
    let mut descendants = Descendants::default();
    assert!(
        wait_until(Duration::from_secs(5), || pid_in(&pid_file)
            == Some(fwd.pid())),
        "{}",
        fwd.log()
    );
    reload_to(fwd.pid(), &cfg, &text("added", added), 1, &fwd);
    let new = upgrade(fwd.pid(), &pid_file, &fwd);
    descendants.0.push(new);
    fwd.wait_log(
        &format!("udp listener 'added' on 127.0.0.1:{added}: took 2 handed-over socket(s)"),
        Duration::from_secs(10),
    );
    assert!(
        !fwd.log()
            .contains("no listener of this configuration uses it"),
        "the removed listener was handed over:\n{}",
        fwd.log()
    );
    let old = fwd.pid();
    assert!(
        wait_until(Duration::from_secs(15), || !alive(old)),
        "{}",
        fwd.log()
    );
    let client = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
    client
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    client
        .send_to(b"datagram", ("127.0.0.1", added))
        .expect("send");
    let mut buf = [0u8; 64];
    let (n, _) = client
        .recv_from(&mut buf)
        .expect("the new process forwards");
    assert_eq!(&buf[..n], b"datagram");
    signal(new, "TERM");
    assert!(wait_until(Duration::from_secs(15), || !alive(new)));
}
