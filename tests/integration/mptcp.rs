//! MPTCP (issue 15 §5): a listener with `mptcp` accepts MPTCP clients as
//! MPTCP and plain TCP clients as TCP; `upstream_mptcp` connects to
//! upstreams with MPTCP; a kernel without MPTCP (`net.mptcp.enabled = 0`,
//! set in a test network namespace) gets TCP with a warning and
//! `mptcp_fallback`, or a refusal to start for `mptcp = "required"`.
//!
//! Whether a connection runs MPTCP is the kernel's answer to a zero-length
//! MPTCP_INFO read (`ringfwd::sys::mptcp::is_active`): it fails once either
//! end answered without MP_CAPABLE.

use std::io::{Read as _, Write as _};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd as _;
use std::sync::mpsc::{self, Receiver};
use std::time::Duration;

use ringfwd::config::forward::Mptcp;
use ringfwd::config::{HostFacts, Overrides, Plan};
use ringfwd::runtime::Runtime;
use ringfwd::stats::Counter;
use ringfwd::sys::mptcp::is_active;
use socket2::{Domain, Protocol, Socket, Type};

use crate::netns::{Topology, payload};

/// Whether this kernel makes MPTCP sockets; prints why a test skips when not.
fn mptcp_here() -> bool {
    let enabled = std::fs::read_to_string("/proc/sys/net/mptcp/enabled").unwrap_or_default();
    if enabled.trim() != "1" {
        eprintln!(
            "skipped: net.mptcp.enabled is not 1 here ({:?})",
            enabled.trim()
        );
        return false;
    }
    true
}

fn stream(proto: Protocol) -> Socket {
    Socket::new(Domain::IPV4, Type::STREAM, Some(proto)).expect("socket")
}

/// An echo upstream whose listener is MPTCP: for each connection it echoes
/// until EOF and reports whether the connection ran MPTCP.
fn mptcp_echo_upstream() -> (SocketAddr, Receiver<bool>) {
    let l = stream(Protocol::MPTCP);
    l.set_reuse_address(true).expect("reuseaddr");
    l.bind(&"127.0.0.1:0".parse::<SocketAddr>().expect("addr").into())
        .expect("bind");
    l.listen(16).expect("listen");
    let addr = l.local_addr().expect("addr").as_socket().expect("inet");
    let l = TcpListener::from(l);
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for c in l.incoming() {
            let Ok(mut c) = c else { return };
            if tx.send(is_active(c.as_raw_fd())).is_err() {
                return;
            }
            std::thread::spawn(move || {
                let mut buf = [0u8; 16 * 1024];
                while let Ok(n) = c.read(&mut buf) {
                    if n == 0 || c.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
                let _ = c.shutdown(Shutdown::Write);
            });
        }
    });
    (addr, rx)
}

/// A plan with one `[[tcp]]` listener forwarding to `upstream`, with
/// `mptcp` and `upstream_mptcp` set on the plan (as the config keys do).
fn plan(upstream: SocketAddr, mptcp: Mptcp, upstream_mptcp: bool) -> Plan {
    let toml = format!(
        "[runtime]\nshards = 1\n[[tcp]]\nname = \"m\"\nlisten = \"127.0.0.1:0\"\n\
         upstreams = [\"{upstream}\"]\nmax_connections = 64\n"
    );
    let host = HostFacts {
        available_cpus: vec![0],
    };
    let mut plan =
        Plan::resolve(Some(("mptcp.toml", &toml)), &Overrides::default(), &host).expect("plan");
    for t in &mut plan.tcp {
        t.mptcp = mptcp;
        t.upstream_mptcp = upstream_mptcp;
    }
    plan
}

/// Sends a patterned payload on `s`, half-closes, reads the echo to EOF
/// and checks it byte for byte.
fn echo_through(s: &mut TcpStream) {
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let sent = payload(256 * 1024);
    let mut writer = s.try_clone().expect("clone");
    let data = sent.clone();
    let w = std::thread::spawn(move || {
        writer.write_all(&data).expect("write");
        writer.shutdown(Shutdown::Write).expect("shutdown");
    });
    let mut back = Vec::new();
    s.read_to_end(&mut back).expect("read echo");
    w.join().expect("writer");
    assert!(
        back == sent,
        "echo differs: {} of {} bytes",
        back.len(),
        sent.len()
    );
}

fn connect(proto: Protocol, to: SocketAddr) -> TcpStream {
    let s = stream(proto);
    s.connect(&to.into()).expect("connect");
    TcpStream::from(s)
}

/// The whole path: an MPTCP client through an `mptcp` listener, relayed
/// on an upstream socket the ring made with IPPROTO_MPTCP, to an MPTCP
/// upstream — both hops run MPTCP; a plain TCP client still gets through.
#[test]
fn mptcp_listener_and_upstream_mptcp_carry_mptcp_both_ways() {
    if !mptcp_here() {
        return;
    }
    let (upstream, upstream_mptcp) = mptcp_echo_upstream();
    let rt = Runtime::start(&plan(upstream, Mptcp::Preferred, true)).expect("start");
    let listen = rt.bound().first().expect("bound").addr;

    let mut c = connect(Protocol::MPTCP, listen);
    echo_through(&mut c);
    assert!(is_active(c.as_raw_fd()), "client hop fell back to TCP");
    let up = upstream_mptcp.recv_timeout(Duration::from_secs(5));
    assert_eq!(up, Ok(true), "upstream hop is not MPTCP");

    // A client without MPTCP: the listener falls back for it alone.
    let mut plain = connect(Protocol::TCP, listen);
    echo_through(&mut plain);
    assert!(!is_active(plain.as_raw_fd()));
    let totals = rt.shutdown();
    assert_eq!(totals.get(Counter::MptcpFallback), 0);
}

/// Without the keys both hops are plain TCP: what the test above tells
/// apart is the listener's and the upstream socket's protocol.
#[test]
fn without_mptcp_keys_both_hops_are_tcp() {
    if !mptcp_here() {
        return;
    }
    let (upstream, upstream_mptcp) = mptcp_echo_upstream();
    let rt = Runtime::start(&plan(upstream, Mptcp::Off, false)).expect("start");
    let listen = rt.bound().first().expect("bound").addr;
    let mut c = connect(Protocol::MPTCP, listen);
    echo_through(&mut c);
    assert!(!is_active(c.as_raw_fd()));
    let up = upstream_mptcp.recv_timeout(Duration::from_secs(5));
    assert_eq!(up, Ok(false));
    rt.shutdown();
}

/// The same through the binary, with the config keys.
#[test]
fn mptcp_keys_in_the_config_file_make_mptcp_sockets() {
    if !mptcp_here() {
        return;
    }
    let (upstream, upstream_mptcp) = mptcp_echo_upstream();
    let config = crate::harness::write_config(&format!(
        "[[tcp]]\nname = \"m\"\nlisten = \"127.0.0.1:0\"\nupstreams = [\"{upstream}\"]\n\
         mptcp = true\nupstream_mptcp = true\n"
    ));
    let fwd = crate::harness::Proc::start(&["run", "--config", config.to_str().expect("path")], 1);
    let mut c = connect(Protocol::MPTCP, fwd.first_addr());
    echo_through(&mut c);
    assert!(is_active(c.as_raw_fd()), "client hop fell back to TCP");
    let up = upstream_mptcp.recv_timeout(Duration::from_secs(5));
    assert_eq!(up, Ok(true), "upstream hop is not MPTCP");
}

/// A kernel with MPTCP off (net.mptcp.enabled = 0 in the router's own
/// namespace): `mptcp = true` and `upstream_mptcp` fall back to TCP, each
/// with a warning naming the listener and the sysctl, counted.
#[test]
fn preferred_falls_back_to_tcp_with_one_warning_and_a_counter() {
    let Some(t) = Topology::new(false) else {
        return;
    };
    t.router.sysctl("net.mptcp.enabled", "0").expect("sysctl");
    let fwd = t.router.ringfwd(
        "[runtime]\nstats_interval = \"100ms\"\n[[tcp]]\nname = \"m\"\nlisten = \"127.0.0.1:0\"\n\
         upstreams = [\"10.231.1.2:7000\"]\nmptcp = true\nupstream_mptcp = true\n",
        1,
    );
    fwd.wait_stat("mptcp_fallback", Duration::from_secs(5), |v| v == 2);
    let log = fwd.log();
    let listener = log
        .lines()
        .filter(|l| l.contains("'m'") && l.contains("net.mptcp.enabled"))
        .count();
    assert_eq!(
        listener, 2,
        "one warning for the listener, one for its upstreams:\n{log}"
    );
}

/// `mptcp = "required"` on such a kernel refuses to start, naming the
/// listener, the key and the sysctl.
#[test]
fn required_refuses_to_start_without_mptcp() {
    let Some(t) = Topology::new(false) else {
        return;
    };
    t.router.sysctl("net.mptcp.enabled", "0").expect("sysctl");
    let config = crate::harness::write_config(
        "[[tcp]]\nname = \"m\"\nlisten = \"127.0.0.1:0\"\nupstreams = [\"10.231.1.2:7000\"]\n\
         mptcp = \"required\"\n",
    );
    let out = t
        .router
        .command(
            crate::harness::BIN,
            &["run", "--config", config.to_str().expect("path")],
        )
        .output()
        .expect("run ringfwd");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    for part in ["'m'", "mptcp = \"required\"", "net.mptcp.enabled"] {
        assert!(err.contains(part), "{part} missing from:\n{err}");
    }
}
