//! `ringfwd check` runs the host checks `run` makes and agrees with it on
//! every exit code: listen addresses the host refuses (exit 3), forwarding
//! loops and IPv4-mapped listen addresses (exit 2), config files it will not
//! read (exit 2), and a stdout that is closed or full (never a panic).

use std::io::Read;
use std::net::TcpListener;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::harness::{BIN, closed_pipe, run_to_end, temp_path, write_config};

/// Runs ringfwd with `stdout`, killing it after `timeout` (a command that
/// blocks or keeps serving is a failure, not a hung test); returns the exit
/// code (`None` when it had to be killed) and stderr.
fn run_bounded(args: &[&str], stdout: Stdio, timeout: Duration) -> (Option<i32>, String) {
    let mut child = Command::new(BIN)
        .args(args)
        .stdin(Stdio::null())
        .stdout(stdout)
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let mut e = child.stderr.take().expect("stderr");
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = e.read_to_string(&mut s);
        s
    });
    let deadline = Instant::now() + timeout;
    let code = loop {
        if let Ok(Some(status)) = child.try_wait() {
            break status.code();
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    (code, reader.join().unwrap_or_default())
}

/// `check` and `run` with the same arguments; each must exit by itself (a
/// `run` that starts serving is a failure here, ended after 20s).
fn both(args: &[&str]) -> [(Option<i32>, String); 2] {
    ["check", "run"].map(|cmd| {
        let mut full = vec![cmd];
        full.extend_from_slice(args);
        run_bounded(&full, Stdio::null(), Duration::from_secs(20))
    })
}

#[test]
fn check_refuses_a_listen_address_in_use_as_run_does() {
    let taken = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = taken.local_addr().expect("addr");
    let spec = format!("{addr}=127.0.0.1:9");
    for (code, err) in both(&["--tcp", &spec, "--shards", "1"]) {
        assert_eq!(code, Some(3), "{err}");
        assert!(
            err.contains("already in use") && err.contains(&addr.to_string()),
            "{err}"
        );
    }
}

#[test]
fn check_refuses_an_address_not_on_this_host() {
    // Binding fails locally (EADDRNOTAVAIL); nothing is sent anywhere.
    let (code, _, err) = run_to_end(&["check", "--tcp", "10.9.9.9:18082=127.0.0.1:9"]);
    assert_eq!(code, Some(3), "{err}");
    assert!(
        err.contains("10.9.9.9 is not an address of this host"),
        "{err}"
    );
    let (code, _, err) = run_to_end(&["check", "--udp", "10.9.9.9:18082=127.0.0.1:9"]);
    assert_eq!(code, Some(3), "{err}");
    assert!(err.contains("udp listener"), "{err}");
}

#[test]
fn check_refuses_a_privileged_port_without_the_capability() {
    let unprivileged_from: u16 =
        std::fs::read_to_string("/proc/sys/net/ipv4/ip_unprivileged_port_start")
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(1024);
    if unprivileged_from == 0 {
        eprintln!("skipped: net.ipv4.ip_unprivileged_port_start = 0, every port is unprivileged");
        return;
    }
    let port = unprivileged_from - 1;
    // Only root can switch to user nobody with setpriv.
    let root = std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(2) == Some("0"));
    if !root {
        eprintln!("skipped: dropping to user nobody (setpriv) needs root");
        return;
    }
    let spec = format!("127.0.0.1:{port}=127.0.0.1:9000");
    for cmd in ["check", "run"] {
        let out = Command::new("setpriv")
            .args([
                "--reuid=65534",
                "--regid=65534",
                "--clear-groups",
                "--inh-caps=-all",
            ])
            .arg(BIN)
            .args([cmd, "--tcp", &spec, "--shards", "1"])
            .output()
            .expect("setpriv (util-linux) is needed for this test");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(3), "{cmd}: {err}");
        assert!(
            err.contains("needs privileges") && err.contains("CAP_NET_BIND_SERVICE"),
            "{cmd}: {err}"
        );
    }
}

#[test]
fn check_leaves_the_ports_free() {
    let free = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = free.local_addr().expect("addr");
    drop(free);
    let spec = format!("{addr}=127.0.0.1:9");
    let (code, out, err) = run_to_end(&["check", "--tcp", &spec, "--udp", &spec]);
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains(&addr.to_string()), "{out}");
    TcpListener::bind(addr).expect("check closed what it bound");
}

#[test]
fn a_forwarding_loop_is_refused_by_check_and_run_naming_both_keys() {
    let cfg = write_config(
        "[[tcp]]\nname = \"a\"\nlisten = \"0.0.0.0:18571\"\nupstreams = [\"127.0.0.1:9\"]\n\
         [[tcp]]\nname = \"b\"\nlisten = \"127.0.0.1:18572\"\nupstreams = [\"10.0.0.1:80\", \"127.0.0.1:18571\"]\n",
    );
    for (code, err) in both(&["--config", cfg.to_str().expect("path")]) {
        assert_eq!(code, Some(2), "{err}");
        assert!(
            err.contains("tcp[1].upstreams[1] = 127.0.0.1:18571")
                && err.contains("tcp[0].listen (0.0.0.0:18571)")
                && err.contains("forwarding loop"),
            "{err}"
        );
    }
    for (code, err) in both(&["--udp", "127.0.0.1:18573=127.0.0.1:18573"]) {
        assert_eq!(code, Some(2), "{err}");
        assert!(
            err.contains("--udp[0] upstream 127.0.0.1:18573")
                && err.contains("listen address of --udp[0]"),
            "{err}"
        );
    }
}

/// A global IPv4 address of this host other than loopback, from `ip`.
fn host_ipv4() -> Option<String> {
    let out = Command::new("ip")
        .args(["-4", "-o", "addr", "show", "scope", "global"])
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let cidr = text
        .split_whitespace()
        .skip_while(|w| *w != "inet")
        .nth(1)?;
    Some(cidr.split('/').next()?.to_string())
}

#[test]
fn a_wildcard_listener_reached_through_a_host_address_is_a_host_error() {
    let Some(ip) = host_ipv4() else {
        eprintln!("skipped: this host has no global IPv4 address (`ip -4 addr`)");
        return;
    };
    let spec = format!("0.0.0.0:18574={ip}:18574");
    for (code, err) in both(&["--tcp", &spec, "--shards", "1"]) {
        assert_eq!(code, Some(3), "{err}");
        assert!(
            err.contains(&format!("upstream {ip}:18574 is an address of this host"))
                && err.contains("forwarding loop"),
            "{err}"
        );
    }
}

#[test]
fn an_ipv4_mapped_listen_address_is_refused_by_both_naming_the_ipv4_form() {
    for (code, err) in both(&["--tcp", "[::ffff:127.0.0.1]:18575=127.0.0.1:9"]) {
        assert_eq!(code, Some(2), "{err}");
        assert!(
            err.contains("--tcp[0]") && err.contains("like 127.0.0.1:18575"),
            "{err}"
        );
    }
}

#[test]
fn config_files_that_are_not_regular_or_too_large_are_refused() {
    let (code, err) = run_bounded(
        &["check", "--config", "/dev/zero"],
        Stdio::null(),
        Duration::from_secs(10),
    );
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("/dev/zero") && err.contains("not a regular file") && err.contains("16MiB"),
        "{err}"
    );
    let fifo = temp_path("config.fifo");
    let made = Command::new("mkfifo").arg(&fifo).status().expect("mkfifo");
    assert!(made.success());
    let (code, err) = run_bounded(
        &["check", "--config", fifo.to_str().expect("path")],
        Stdio::null(),
        Duration::from_secs(10),
    );
    let _ = std::fs::remove_file(&fifo);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("a FIFO"), "{err}");
    let big = temp_path("big.toml");
    std::fs::write(&big, vec![b'#'; (16 << 20) + 1]).expect("write");
    let (code, err) = run_bounded(
        &["check", "--config", big.to_str().expect("path")],
        Stdio::null(),
        Duration::from_secs(10),
    );
    let _ = std::fs::remove_file(&big);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("larger than 16MiB"), "{err}");
}

#[test]
fn a_closed_or_full_stdout_ends_check_without_a_panic() {
    let args = ["check", "--tcp", "127.0.0.1:0=127.0.0.1:9", "--shards", "1"];
    // The reader went away (`check | head -c 0`): quietly, with check's own result.
    let (code, err) = run_bounded(&args, closed_pipe(), Duration::from_secs(20));
    assert_eq!(code, Some(0), "{err}");
    assert!(
        !err.contains("panicked") && !err.contains("stdout"),
        "{err}"
    );
    let full = std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/full")
        .expect("/dev/full");
    let (code, err) = run_bounded(&args, Stdio::from(full), Duration::from_secs(20));
    assert_eq!(code, Some(1), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    assert!(err.contains("cannot write the plan to stdout"), "{err}");
}
