//! Network namespaces the tests make for themselves: a client, a router
//! (where ringfwd runs) and a server, joined by veth pairs, with nftables
//! REDIRECT or TPROXY rules in the router — transparent proxying as it is
//! deployed, without touching the host's own interfaces, routes or rules.
//! Every namespace (and so every interface, route, rule and nftables table
//! in it) is deleted on drop, panics included; every helper process is
//! killed by the pid the test started.
//!
//! Topology (addresses fixed: each namespace has its own stack, so two
//! tests' topologies never meet):
//!
//! ```text
//!   client c0 10.231.0.2 ── r0 10.231.0.1  router  10.231.1.1 r1 ── s0 10.231.1.2 server
//! ```
//!
//! Needs root (CAP_NET_ADMIN, CAP_SYS_ADMIN for `ip netns`), iproute2,
//! nftables and python3 (the plain-socket peers); each test skips with a
//! printed reason when one is missing.

use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use crate::harness::{Proc, write_config};

pub(crate) const CLIENT_IP: &str = "10.231.0.2";
pub(crate) const ROUTER_CLIENT_SIDE: &str = "10.231.0.1";
pub(crate) const ROUTER_SERVER_SIDE: &str = "10.231.1.1";
pub(crate) const SERVER_IP: &str = "10.231.1.2";

/// The fwmark and routing table the TPROXY rules use (inside the router).
const TPROXY_MARK: &str = "1";
const TPROXY_TABLE: &str = "100";

/// Runs `ip args...` (on the host's `ip`, naming a namespace with `-n` or
/// `netns`): Ok with stdout, or Err with what failed.
fn ip(args: &[&str]) -> Result<String, String> {
    run(Command::new("ip").args(args))
}

fn run(cmd: &mut Command) -> Result<String, String> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("{cmd:?}: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "{cmd:?}: {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Whether `program` runs here (`program --version`).
fn have(program: &str) -> bool {
    Command::new(program)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// One network namespace, deleted on drop.
pub(crate) struct Netns {
    pub name: String,
}

impl Netns {
    /// A namespace named for this process, a counter and `role` (unique
    /// among concurrent tests and test processes), with loopback up.
    fn create(role: &str) -> Result<Netns, String> {
        static N: AtomicU64 = AtomicU64::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let name = format!("rfwd{}-{n}{role}", std::process::id());
        ip(&["netns", "add", &name])?;
        let ns = Netns { name };
        ns.ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// `ip -n NAME args...`: iproute2 acting inside this namespace.
    pub(crate) fn ip(&self, args: &[&str]) -> Result<String, String> {
        let mut all = vec!["-n", self.name.as_str()];
        all.extend_from_slice(args);
        ip(&all)
    }

    /// `ip netns exec NAME program args...`, not started yet.
    pub(crate) fn command(&self, program: &str, args: &[&str]) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name, program]).args(args);
        cmd
    }

    /// Runs `program args...` inside; Ok with its stdout.
    pub(crate) fn exec(&self, program: &str, args: &[&str]) -> Result<String, String> {
        run(&mut self.command(program, args))
    }

    /// `sysctl -w key=value` inside (per-namespace keys only: net.*).
    pub(crate) fn sysctl(&self, key: &str, value: &str) -> Result<(), String> {
        self.exec("sysctl", &["-qw", &format!("{key}={value}")])
            .map(drop)
    }

    /// Loads an nftables ruleset (`nft -f -`) into this namespace only.
    pub(crate) fn nft(&self, ruleset: &str) -> Result<(), String> {
        let mut child = self
            .command("nft", &["-f", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("nft: {e}"))?;
        child
            .stdin
            .take()
            .ok_or("nft: no stdin")?
            .write_all(ruleset.as_bytes())
            .map_err(|e| format!("nft: {e}"))?;
        let out = child.wait_with_output().map_err(|e| format!("nft: {e}"))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(format!(
                "nft -f - in {}: {}\n{ruleset}",
                self.name,
                String::from_utf8_lossy(&out.stderr).trim()
            ))
        }
    }

    /// ringfwd with `config` inside this namespace, once it printed
    /// `listeners` listening lines.
    pub(crate) fn ringfwd(&self, config: &str, listeners: usize) -> Proc {
        let path = write_config(config);
        let path = path.to_str().expect("path");
        Proc::start_in_netns(&self.name, &["run", "--config", path], listeners)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Deleting the namespace deletes its interfaces (a veth pair goes
        // with either end), routes, rules and nftables tables.
        if let Err(e) = ip(&["netns", "delete", &self.name]) {
            eprintln!("netns {}: not deleted: {e}", self.name);
        }
    }
}

/// Why these tests cannot run here, if they cannot.
fn missing_prerequisite(nft: bool) -> Option<String> {
    // The effective uid, second of /proc/self/status's Uid line.
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let euid = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|v| v.split_whitespace().nth(1).map(str::to_owned));
    if euid.as_deref() != Some("0") {
        return Some("not root: network namespaces need CAP_SYS_ADMIN and CAP_NET_ADMIN".into());
    }
    if !have("python3") {
        return Some("python3 is not installed (the plain-socket peers)".into());
    }
    if nft
        && !Command::new("nft")
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
    {
        return Some("nft is not installed (apt-get install nftables)".into());
    }
    None
}

/// The three namespaces, wired and routed: the client reaches the server
/// only through the router, which forwards (net.ipv4.ip_forward = 1).
pub(crate) struct Topology {
    // Declared in drop order does not matter: each is deleted on its own.
    pub client: Netns,
    pub router: Netns,
    pub server: Netns,
}

impl Topology {
    /// The topology, or `None` (the reason printed) when it cannot be made
    /// here; `nft`: the test needs nftables too.
    pub(crate) fn new(nft: bool) -> Option<Topology> {
        if let Some(why) = missing_prerequisite(nft) {
            eprintln!("skipped: {why}");
            return None;
        }
        match Topology::build() {
            Ok(t) => Some(t),
            Err(e) => {
                eprintln!("skipped: the test network namespaces could not be made: {e}");
                None
            }
        }
    }

    fn build() -> Result<Topology, String> {
        let t = Topology {
            client: Netns::create("c")?,
            router: Netns::create("r")?,
            server: Netns::create("s")?,
        };
        // Each pair is made inside one namespace with its peer moved to the
        // other: no interface ever exists on the host.
        t.client.ip(&[
            "link",
            "add",
            "c0",
            "type",
            "veth",
            "peer",
            "name",
            "r0",
            "netns",
            &t.router.name,
        ])?;
        t.router.ip(&[
            "link",
            "add",
            "r1",
            "type",
            "veth",
            "peer",
            "name",
            "s0",
            "netns",
            &t.server.name,
        ])?;
        for (ns, dev, addr) in [
            (&t.client, "c0", "10.231.0.2/24"),
            (&t.router, "r0", "10.231.0.1/24"),
            (&t.router, "r1", "10.231.1.1/24"),
            (&t.server, "s0", "10.231.1.2/24"),
        ] {
            ns.ip(&["addr", "add", addr, "dev", dev])?;
            ns.ip(&["link", "set", dev, "up"])?;
        }
        t.client
            .ip(&["route", "add", "default", "via", ROUTER_CLIENT_SIDE])?;
        t.server
            .ip(&["route", "add", "default", "via", ROUTER_SERVER_SIDE])?;
        t.router.sysctl("net.ipv4.ip_forward", "1")?;
        // TPROXY'd packets arrive for addresses that are not the router's:
        // a strict reverse-path filter inherited from the host would drop them.
        t.router.sysctl("net.ipv4.conf.all.rp_filter", "0")?;
        t.router.sysctl("net.ipv4.conf.r0.rp_filter", "0")?;
        Ok(t)
    }

    /// nftables REDIRECT in the router: the client's TCP to any address's
    /// port `port` goes to the router's own port `to` (where ringfwd
    /// listens), its original destination kept in conntrack.
    pub(crate) fn redirect(&self, port: u16, to: u16) -> Result<(), String> {
        self.router.nft(&format!(
            "table ip ringfwd_test {{
  chain prerouting {{
    type nat hook prerouting priority dstnat; policy accept;
    iifname \"r0\" tcp dport {port} redirect to :{to}
  }}
}}
"
        ))
    }

    /// nftables TPROXY in the router, TCP and UDP: the client's packets to
    /// any address's port `port` are delivered, unchanged, to the router's
    /// transparent socket on port `to`; the mark routes them locally
    /// (`ip rule fwmark` → a table whose only route is `local 0.0.0.0/0`).
    pub(crate) fn tproxy(&self, port: u16, to: u16) -> Result<(), String> {
        self.router.nft(&format!(
            "table ip ringfwd_test {{
  chain prerouting {{
    type filter hook prerouting priority mangle; policy accept;
    iifname \"r0\" tcp dport {port} tproxy to :{to} meta mark set {TPROXY_MARK} accept
    iifname \"r0\" udp dport {port} tproxy to :{to} meta mark set {TPROXY_MARK} accept
  }}
}}
"
        ))?;
        self.route_marked_locally()
    }

    /// nftables TPROXY in the router for UDP only, to any of `ports`: the
    /// recipe tuning.md gives for `[[udp]] transparent = "tproxy"`.
    pub(crate) fn tproxy_udp(&self, ports: &[u16], to: u16) -> Result<(), String> {
        let ports: Vec<String> = ports.iter().map(u16::to_string).collect();
        self.router.nft(&format!(
            "table ip ringfwd_test {{
  chain prerouting {{
    type filter hook prerouting priority mangle; policy accept;
    iifname \"r0\" udp dport {{ {} }} tproxy to :{to} meta mark set {TPROXY_MARK} accept
  }}
}}
",
            ports.join(", ")
        ))?;
        self.route_marked_locally()
    }

    /// IPv6 beside IPv4, for the tests that want it: the same links get
    /// fd00:231:0::/64 (client side) and fd00:231:1::/64 (server side),
    /// without duplicate address detection (the addresses work at once),
    /// and the router forwards IPv6 too.
    pub(crate) fn with_ipv6(&self) -> Result<(), String> {
        for (ns, dev, addr) in [
            (&self.client, "c0", "fd00:231:0::2/64"),
            (&self.router, "r0", "fd00:231:0::1/64"),
            (&self.router, "r1", "fd00:231:1::1/64"),
            (&self.server, "s0", "fd00:231:1::2/64"),
        ] {
            ns.ip(&["-6", "addr", "add", addr, "dev", dev, "nodad"])?;
        }
        self.client
            .ip(&["-6", "route", "add", "default", "via", "fd00:231:0::1"])?;
        self.server
            .ip(&["-6", "route", "add", "default", "via", "fd00:231:1::1"])?;
        self.router.sysctl("net.ipv6.conf.all.forwarding", "1")
    }

    /// [`Topology::tproxy_udp`] for IPv6 (after [`Topology::with_ipv6`]).
    pub(crate) fn tproxy_udp6(&self, ports: &[u16], to: u16) -> Result<(), String> {
        let ports: Vec<String> = ports.iter().map(u16::to_string).collect();
        self.router.nft(&format!(
            "table ip6 ringfwd_test6 {{
  chain prerouting {{
    type filter hook prerouting priority mangle; policy accept;
    iifname \"r0\" udp dport {{ {} }} tproxy to :{to} meta mark set {TPROXY_MARK} accept
  }}
}}
",
            ports.join(", ")
        ))?;
        self.router.ip(&[
            "-6",
            "rule",
            "add",
            "fwmark",
            TPROXY_MARK,
            "lookup",
            TPROXY_TABLE,
        ])?;
        self.router.ip(&[
            "-6",
            "route",
            "add",
            "local",
            "::/0",
            "dev",
            "lo",
            "table",
            TPROXY_TABLE,
        ])?;
        Ok(())
    }

    /// Policy routing for TPROXY'd packets: the mark selects a table whose
    /// only route delivers everything locally.
    fn route_marked_locally(&self) -> Result<(), String> {
        self.router
            .ip(&["rule", "add", "fwmark", TPROXY_MARK, "lookup", TPROXY_TABLE])?;
        self.router.ip(&[
            "route",
            "add",
            "local",
            "0.0.0.0/0",
            "dev",
            "lo",
            "table",
            TPROXY_TABLE,
        ])?;
        Ok(())
    }
}

/// A python3 peer running in a namespace: its stdout lines, and the process
/// killed (by its pid) on drop.
pub(crate) struct Peer {
    child: Child,
    lines: Receiver<String>,
    seen: Vec<String>,
}

impl Peer {
    /// Starts `script` with `args` in `ns` and waits for its `ready` line.
    pub(crate) fn start(ns: &Netns, script: &str, args: &[&str]) -> Peer {
        let mut all = vec!["-u", "-c", script];
        all.extend_from_slice(args);
        let mut child = ns
            .command("python3", &all)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn python3 in the namespace");
        let out = child.stdout.take().expect("stdout");
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut peer = Peer {
            child,
            lines,
            seen: Vec::new(),
        };
        peer.wait_line("ready", Duration::from_secs(10))
            .unwrap_or_else(|| panic!("peer in {} never ready: {:?}", ns.name, peer.seen));
        peer
    }

    /// Waits (bounded) for a line starting with `prefix`; returns it.
    pub(crate) fn wait_line(&mut self, prefix: &str, timeout: Duration) -> Option<String> {
        if let Some(l) = self.seen.iter().find(|l| l.starts_with(prefix)) {
            return Some(l.clone());
        }
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(l) => {
                    self.seen.push(l.clone());
                    if l.starts_with(prefix) {
                        return Some(l);
                    }
                }
                Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => return None,
            }
        }
    }
}

impl Peer {
    /// Waits (bounded) until `n` lines starting with `prefix` were seen;
    /// returns them all (more than `n` if more came in by then).
    pub(crate) fn wait_lines(&mut self, prefix: &str, n: usize, timeout: Duration) -> Vec<String> {
        let deadline = Instant::now() + timeout;
        let count = |seen: &[String]| seen.iter().filter(|l| l.starts_with(prefix)).count();
        while count(&self.seen) < n {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(l) => self.seen.push(l),
                Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => break,
            }
        }
        // What else already arrived: a duplicate must not go unseen.
        while let Ok(l) = self.lines.try_recv() {
            self.seen.push(l);
        }
        self.seen
            .iter()
            .filter(|l| l.starts_with(prefix))
            .cloned()
            .collect()
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        // `ip netns exec` execs python3: this pid is the peer's.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// TCP echo server: prints `ready`, then `peer IP:PORT` for each connection.
pub(crate) const ECHO_SERVER: &str = r#"
import socket, sys, threading
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", int(sys.argv[1])))
s.listen(64)
print("ready", flush=True)
def serve(c, a):
    print("peer %s:%d" % a, flush=True)
    while True:
        d = c.recv(65536)
        if not d:
            break
        c.sendall(d)
    c.close()
while True:
    c, a = s.accept()
    threading.Thread(target=serve, args=(c, a), daemon=True).start()
"#;

/// TCP listener that prints where each connection was going: `orig
/// IP:PORT` from SO_ORIGINAL_DST (REDIRECT), or `local IP:PORT` of a socket
/// with IP_TRANSPARENT (TPROXY, argv[2] = "tproxy").
const ORIGINAL_DST_LISTENER: &str = r#"
import socket, struct, sys
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
if sys.argv[2] == "tproxy":
    s.setsockopt(socket.SOL_IP, 19, 1)  # IP_TRANSPARENT
s.bind(("0.0.0.0", int(sys.argv[1])))
s.listen(8)
print("ready", flush=True)
c, a = s.accept()
if sys.argv[2] == "tproxy":
    print("local %s:%d" % c.getsockname(), flush=True)
else:
    raw = c.getsockopt(socket.SOL_IP, 80, 16)  # SO_ORIGINAL_DST
    port, ip = struct.unpack("!2xH4s8x", raw)
    print("orig %s:%d" % (socket.inet_ntoa(ip), port), flush=True)
c.close()
"#;

/// UDP socket with IP_TRANSPARENT and IP_RECVORIGDSTADDR: prints `orig
/// IP:PORT` of the first datagram.
const UDP_TPROXY_RECEIVER: &str = r#"
import socket, struct, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_IP, 19, 1)  # IP_TRANSPARENT
s.setsockopt(socket.SOL_IP, 20, 1)  # IP_RECVORIGDSTADDR
s.bind(("0.0.0.0", int(sys.argv[1])))
print("ready", flush=True)
data, anc, flags, src = s.recvmsg(2048, 256)
for level, kind, raw in anc:
    if level == socket.SOL_IP and kind == 20:
        port, ip = struct.unpack("!2xH4s8x", raw[:16])
        print("orig %s:%d" % (socket.inet_ntoa(ip), port), flush=True)
"#;

/// TCP client: connects to argv[1]:argv[2] (timeout argv[3] s), sends its
/// stdin, half-closes, and writes what comes back to stdout.
const CLIENT: &str = r#"
import socket, sys
c = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=float(sys.argv[3]))
c.sendall(sys.stdin.buffer.read())
c.shutdown(socket.SHUT_WR)
while True:
    d = c.recv(65536)
    if not d:
        break
    sys.stdout.buffer.write(d)
"#;

/// UDP client: sends one datagram to argv[1]:argv[2].
const UDP_CLIENT: &str = r#"
import socket, sys
socket.socket(socket.AF_INET, socket.SOCK_DGRAM).sendto(b"x", (sys.argv[1], int(sys.argv[2])))
"#;

/// Sends `payload` from `ns` to `ip:port` over TCP and returns what came
/// back before the peer's FIN; Err when the connection failed.
pub(crate) fn round_trip(
    ns: &Netns,
    ip: &str,
    port: u16,
    payload: &[u8],
) -> Result<Vec<u8>, String> {
    let port = port.to_string();
    let mut child = ns
        .command("python3", &["-c", CLIENT, ip, &port, "3"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("python3: {e}"))?;
    let mut stdin = child.stdin.take().ok_or("no stdin")?;
    let data = payload.to_vec();
    let writer = std::thread::spawn(move || stdin.write_all(&data));
    let mut out = Vec::new();
    child
        .stdout
        .take()
        .ok_or("no stdout")?
        .read_to_end(&mut out)
        .map_err(|e| e.to_string())?;
    let status = child.wait().map_err(|e| e.to_string())?;
    let _ = writer.join();
    if status.success() {
        Ok(out)
    } else {
        let mut err = String::new();
        if let Some(mut e) = child.stderr.take() {
            let _ = e.read_to_string(&mut err);
        }
        Err(format!(
            "client in {} to {ip}:{port}: {status}: {err}",
            ns.name
        ))
    }
}

/// A payload whose every byte depends on its position (a shifted or
/// dropped byte does not go unseen).
pub(crate) fn payload(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 7 % 251) as u8).collect()
}

/// Ports of the topology's tests: the destination port the client dials,
/// and ringfwd's (or the plain listener's) port in the router. Fixed: each
/// topology has its own stack.
const DIAL: u16 = 7000;
const INTERCEPT: u16 = 9000;

fn addr(ip: &str, port: u16) -> SocketAddr {
    format!("{ip}:{port}").parse().expect("addr")
}

#[test]
fn topology_client_reaches_server_only_through_the_router() {
    let Some(t) = Topology::new(false) else {
        return;
    };
    let mut server = Peer::start(&t.server, ECHO_SERVER, &[&DIAL.to_string()]);
    let sent = payload(64 * 1024);
    let back = round_trip(&t.client, SERVER_IP, DIAL, &sent).expect("round trip");
    assert!(
        back == sent,
        "echo differs: {} of {} bytes",
        back.len(),
        sent.len()
    );
    // Routed, not translated: the server sees the client's own address.
    let peer = server
        .wait_line("peer ", Duration::from_secs(5))
        .expect("peer line");
    assert!(peer.starts_with(&format!("peer {CLIENT_IP}:")), "{peer}");
    // The router is the only way: without forwarding nothing gets through.
    t.router.sysctl("net.ipv4.ip_forward", "0").expect("sysctl");
    assert!(round_trip(&t.client, SERVER_IP, DIAL, b"x").is_err());
}

#[test]
fn topology_redirect_keeps_the_original_destination() {
    let Some(t) = Topology::new(true) else {
        return;
    };
    t.redirect(DIAL, INTERCEPT).expect("redirect rules");
    let args = [INTERCEPT.to_string(), "redirect".to_owned()];
    let mut l = Peer::start(&t.router, ORIGINAL_DST_LISTENER, &[&args[0], &args[1]]);
    let _ = round_trip(&t.client, SERVER_IP, DIAL, b"x");
    let line = l
        .wait_line("orig ", Duration::from_secs(5))
        .expect("orig line");
    assert_eq!(line, format!("orig {}", addr(SERVER_IP, DIAL)));
}

#[test]
fn topology_tproxy_steers_tcp_and_udp_to_a_transparent_socket() {
    let Some(t) = Topology::new(true) else {
        return;
    };
    t.tproxy(DIAL, INTERCEPT).expect("tproxy rules");
    let port = INTERCEPT.to_string();
    let mut l = Peer::start(&t.router, ORIGINAL_DST_LISTENER, &[&port, "tproxy"]);
    let _ = round_trip(&t.client, SERVER_IP, DIAL, b"x");
    let line = l
        .wait_line("local ", Duration::from_secs(5))
        .expect("local line");
    assert_eq!(line, format!("local {}", addr(SERVER_IP, DIAL)));

    let mut u = Peer::start(&t.router, UDP_TPROXY_RECEIVER, &[&port]);
    let dial = DIAL.to_string();
    // A datagram can be lost before the receiver's socket exists on a busy
    // host only if sent before `ready`; it is sent after. Retried anyway
    // within the deadline, as UDP promises nothing.
    let mut line = None;
    for _ in 0..10 {
        t.client
            .exec("python3", &["-c", UDP_CLIENT, SERVER_IP, &dial])
            .expect("udp client");
        line = u.wait_line("orig ", Duration::from_millis(500));
        if line.is_some() {
            break;
        }
    }
    assert_eq!(
        line.expect("orig line"),
        format!("orig {}", addr(SERVER_IP, DIAL))
    );
}

/// ringfwd's config for a transparent listener on the router's INTERCEPT
/// port: `mode` is "redirect" or "tproxy"; the policy allows 10.231.0.0/16
/// (the default deny list is loopback and link-local only, but say it).
fn transparent_config(mode: &str) -> String {
    format!(
        "[runtime]\nshards = 1\nstats_interval = \"100ms\"\n\
         [[tcp]]\nname = \"t\"\nlisten = \"0.0.0.0:{INTERCEPT}\"\n\
         transparent = \"{mode}\"\ndestinations_deny = []\n"
    )
}

/// Through ringfwd: bytes reach the server's port and come back, and the
/// server sees the connection come from the router (ringfwd's own socket).
fn check_through_ringfwd(t: &Topology, fwd: &Proc) {
    let mut server = Peer::start(&t.server, ECHO_SERVER, &[&DIAL.to_string()]);
    let sent = payload(64 * 1024);
    let back = round_trip(&t.client, SERVER_IP, DIAL, &sent)
        .unwrap_or_else(|e| panic!("{e}\nringfwd log:\n{}", fwd.log()));
    assert!(
        back == sent,
        "echo differs: {} of {} bytes",
        back.len(),
        sent.len()
    );
    let peer = server
        .wait_line("peer ", Duration::from_secs(5))
        .expect("peer line");
    assert!(
        peer.starts_with(&format!("peer {ROUTER_SERVER_SIDE}:")),
        "{peer}; ringfwd log:\n{}",
        fwd.log()
    );
    fwd.wait_stat("accepted", Duration::from_secs(5), |v| v >= 1);
}

#[test]
fn transparent_redirect_tcp_reaches_the_original_destination() {
    let Some(t) = Topology::new(true) else {
        return;
    };
    t.redirect(DIAL, INTERCEPT).expect("redirect rules");
    let fwd = t.router.ringfwd(&transparent_config("redirect"), 1);
    check_through_ringfwd(&t, &fwd);
}

#[test]
fn transparent_tproxy_tcp_reaches_the_original_destination() {
    let Some(t) = Topology::new(true) else {
        return;
    };
    t.tproxy(DIAL, INTERCEPT).expect("tproxy rules");
    let fwd = t.router.ringfwd(&transparent_config("tproxy"), 1);
    check_through_ringfwd(&t, &fwd);
}

/// Dropping the topology deletes its namespaces (and so everything in them).
#[test]
fn topology_is_removed_on_drop_even_on_panic() {
    let Some(t) = Topology::new(false) else {
        return;
    };
    let names = [
        t.client.name.clone(),
        t.router.name.clone(),
        t.server.name.clone(),
    ];
    let unwound = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || {
        let _held = t;
        panic!("a failing test");
    }));
    assert!(unwound.is_err());
    let list = ip(&["netns", "list"]).expect("ip netns list");
    for n in names {
        assert!(
            !list.split_whitespace().any(|w| w == n),
            "{n} left behind:\n{list}"
        );
    }
}

/// UDP echo on each port of argv[2:] (argv[1]: "4" or "6", the family):
/// answers `re:` + the datagram, and prints `got LOCALPORT PEERIP:PEERPORT
/// DATA` for each.
const UDP_ECHO_SERVER: &str = r#"
import select, socket, sys
v6 = sys.argv[1] == "6"
socks = []
for p in sys.argv[2:]:
    s = socket.socket(socket.AF_INET6 if v6 else socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("::" if v6 else "0.0.0.0", int(p)))
    socks.append(s)
print("ready", flush=True)
while True:
    for s in select.select(socks, [], [])[0]:
        d, a = s.recvfrom(2048)
        print("got %d %s %s" % (s.getsockname()[1], ("[%s]:%d" if v6 else "%s:%d") % a[:2], d.decode()), flush=True)
        s.sendto(b"re:" + d, a)
"#;

/// UDP client on one socket (so one client address for every destination):
/// for each `IP:PORT` of argv[3:], two rounds of argv[1] datagrams sent
/// back to back, the replies collected for up to argv[2] seconds; prints
/// `reply SRCIP:SRCPORT DATA` for each reply, then `done`.
const UDP_ROUNDS_CLIENT: &str = r#"
import socket, sys, time
n, wait = int(sys.argv[1]), float(sys.argv[2])
v6 = sys.argv[3].startswith("[")
c = socket.socket(socket.AF_INET6 if v6 else socket.AF_INET, socket.SOCK_DGRAM)
c.bind(("::" if v6 else "0.0.0.0", 0))
for dest in sys.argv[3:]:
    ip, port = dest.rsplit(":", 1)
    ip = ip.strip("[]")
    for r in range(2):
        for i in range(n):
            c.sendto(("%s-%d" % (port, r * n + i)).encode(), (ip, int(port)))
        got, deadline = 0, time.time() + wait
        while got < n and time.time() < deadline:
            c.settimeout(max(0.01, deadline - time.time()))
            try:
                d, a = c.recvfrom(2048)
            except socket.timeout:
                break
            got += 1
            print("reply %s %s" % (("[%s]:%d" if v6 else "%s:%d") % a[:2], d.decode()), flush=True)
print("done", flush=True)
"#;

/// Runs [`UDP_ROUNDS_CLIENT`] in the client namespace: the replies, as
/// (source, data).
fn udp_rounds(t: &Topology, n: usize, wait: &str, dests: &[SocketAddr]) -> Vec<(String, String)> {
    let n = n.to_string();
    let dests: Vec<String> = dests.iter().map(SocketAddr::to_string).collect();
    let mut args = vec!["-c", UDP_ROUNDS_CLIENT, &n, wait];
    args.extend(dests.iter().map(String::as_str));
    let out = t.client.exec("python3", &args).expect("udp client");
    assert!(out.ends_with("done\n"), "{out}");
    out.lines()
        .filter_map(|l| l.strip_prefix("reply "))
        .filter_map(|l| l.split_once(' '))
        .map(|(a, d)| (a.to_owned(), d.to_owned()))
        .collect()
}

/// A `[[udp]] transparent = "tproxy"` listener on the router's INTERCEPT
/// port, allowing destination ports 7000 and 7001 only.
fn udp_tproxy_config(reply_sockets: u32, any: &str) -> String {
    let listen = SocketAddr::new(any.parse().expect("ip"), INTERCEPT);
    format!(
        "[runtime]\nshards = 1\nstats_interval = \"100ms\"\n\
         [log]\naccess = \"stderr\"\nformat = \"json\"\n\
         [[udp]]\nname = \"u\"\nlisten = \"{listen}\"\n\
         transparent = \"tproxy\"\nports = [{DIAL}, {}]\ntproxy_reply_sockets = {reply_sockets}\n",
        DIAL + 1
    )
}

const ROUNDS: usize = 5;

/// Every datagram of both rounds to `dest` came back once, from `dest`.
fn assert_answered_from(replies: &[(String, String)], dest: SocketAddr, log: &str) {
    let mut from: Vec<&str> = replies
        .iter()
        .filter(|(_, d)| d.starts_with(&format!("re:{}-", dest.port())))
        .map(|(a, d)| {
            assert_eq!(
                a,
                &dest.to_string(),
                "a reply not from the original destination; ringfwd log:\n{log}"
            );
            d.as_str()
        })
        .collect();
    from.sort_unstable();
    let mut want: Vec<String> = (0..2 * ROUNDS)
        .map(|i| format!("re:{}-{i}", dest.port()))
        .collect();
    want.sort_unstable();
    assert_eq!(
        from, want,
        "lost or duplicated replies from {dest}; ringfwd log:\n{log}"
    );
}

/// A client talks to two destinations through a UDP TPROXY ringfwd, in
/// both directions and several datagrams each way per session; the server
/// sees the router's address (ringfwd's upstream socket, as for TCP) and
/// every datagram exactly once; the client's replies come from the
/// addresses it wrote to. A port outside `ports` is dropped and counted, and
/// so is a datagram sent straight to ringfwd's own listen address (a loop).
#[test]
fn transparent_tproxy_udp_answers_from_the_original_destinations() {
    let Some(t) = Topology::new(true) else {
        return;
    };
    let denied = DIAL + 2;
    t.tproxy_udp(&[DIAL, DIAL + 1, denied], INTERCEPT)
        .expect("tproxy rules");
    check_udp_tproxy(&t, &V4);
}

/// The same over IPv6: IPV6_TRANSPARENT, IPV6_RECVORIGDSTADDR and a
/// reply socket bound to an IPv6 original destination.
#[test]
fn transparent_tproxy_udp_over_ipv6_answers_from_the_original_destinations() {
    let Some(t) = Topology::new(true) else {
        return;
    };
    t.with_ipv6().expect("ipv6 addresses");
    t.tproxy_udp6(&[DIAL, DIAL + 1, DIAL + 2], INTERCEPT)
        .expect("tproxy rules");
    check_udp_tproxy(&t, &V6);
}

/// The addresses of one family in the topology.
struct Family {
    /// The server's python argument ("4" or "6").
    name: &'static str,
    server: &'static str,
    router_server_side: &'static str,
    router_client_side: &'static str,
    /// ringfwd's wildcard listen address.
    any: &'static str,
}

const V4: Family = Family {
    name: "4",
    server: SERVER_IP,
    router_server_side: ROUTER_SERVER_SIDE,
    router_client_side: ROUTER_CLIENT_SIDE,
    any: "0.0.0.0",
};

const V6: Family = Family {
    name: "6",
    server: "fd00:231:1::2",
    router_server_side: "fd00:231:1::1",
    router_client_side: "fd00:231:0::1",
    any: "::",
};

fn check_udp_tproxy(t: &Topology, f: &Family) {
    let denied = DIAL + 2;
    let ports = [DIAL, DIAL + 1, denied].map(|p| p.to_string());
    let mut server = Peer::start(
        &t.server,
        UDP_ECHO_SERVER,
        &[f.name, &ports[0], &ports[1], &ports[2]],
    );
    let fwd = t.router.ringfwd(&udp_tproxy_config(16, f.any), 1);
    let at = |ip: &str, port| SocketAddr::new(ip.parse().expect("ip"), port);
    let (a, b) = (at(f.server, DIAL), at(f.server, DIAL + 1));
    let replies = udp_rounds(t, ROUNDS, "3", &[a, b]);
    assert_answered_from(&replies, a, &fwd.log());
    assert_answered_from(&replies, b, &fwd.log());
    assert_eq!(replies.len(), 4 * ROUNDS, "{replies:?}");
    // One client address, two destinations: two sessions.
    fwd.wait_stat("udp_sessions_created", Duration::from_secs(5), |v| v == 2);
    // The server got each datagram once, from the router.
    let got = server.wait_lines("got ", 4 * ROUNDS, Duration::from_secs(5));
    assert_eq!(got.len(), 4 * ROUNDS, "{got:?}");
    let router = at(f.router_server_side, 0).ip();
    for l in &got {
        let peer: Option<SocketAddr> = l.split(' ').nth(2).and_then(|p| p.parse().ok());
        assert_eq!(peer.map(|p| p.ip()), Some(router), "{l}");
    }

    let none = udp_rounds(t, 1, "0.5", &[at(f.server, denied)]);
    assert!(none.is_empty(), "{none:?}");
    fwd.wait_stat("udp_drop_denied", Duration::from_secs(5), |v| v >= 2);
    // Straight to ringfwd's own port on a router address: not TPROXY'd,
    // its original destination is the listener itself.
    let own = udp_rounds(t, 1, "0.5", &[at(f.router_client_side, INTERCEPT)]);
    assert!(own.is_empty(), "{own:?}");
    fwd.wait_stat("udp_drop_loop", Duration::from_secs(5), |v| v >= 2);
    assert_eq!(fwd.stat("udp_sessions_created"), 2);
    assert!(
        !server
            .seen
            .iter()
            .any(|l| l.starts_with(&format!("got {denied} "))),
        "{:?}",
        server.seen
    );
}

/// With `tproxy_reply_sockets = 1`, the session holding the one reply
/// socket works and a second destination is refused and counted.
#[test]
fn transparent_tproxy_udp_reply_sockets_are_bounded_per_shard() {
    let Some(t) = Topology::new(true) else {
        return;
    };
    t.tproxy_udp(&[DIAL, DIAL + 1], INTERCEPT)
        .expect("tproxy rules");
    let ports = [DIAL, DIAL + 1].map(|p| p.to_string());
    let _server = Peer::start(&t.server, UDP_ECHO_SERVER, &["4", &ports[0], &ports[1]]);
    let fwd = t.router.ringfwd(&udp_tproxy_config(1, V4.any), 1);
    let (a, b) = (addr(SERVER_IP, DIAL), addr(SERVER_IP, DIAL + 1));
    let replies = udp_rounds(&t, ROUNDS, "3", &[a]);
    assert_answered_from(&replies, a, &fwd.log());
    let refused = udp_rounds(&t, 1, "0.5", &[b]);
    assert!(refused.is_empty(), "{refused:?}");
    fwd.wait_stat("udp_drop_reply_sockets", Duration::from_secs(5), |v| v >= 2);
    assert_eq!(fwd.stat("udp_sessions_created"), 1);
    // A drain ends the session (it owes no reply): its access log line has
    // the original destination as where it went and where it was going.
    fwd.signal(libc::SIGTERM);
    let line = fwd.wait_log("\"reason\":\"drained\"", Duration::from_secs(5));
    let at = |key: &str| format!("\"{key}\":\"{a}\"");
    for key in ["local", "upstream", "destination"] {
        assert!(line.contains(&at(key)), "{key} not {a} in: {line}");
    }
}

/// A transparent UDP listener a reload adds gets its socket options
/// (IP_TRANSPARENT, IP_RECVORIGDSTADDR) and a receive layout with room for
/// the original destination, as one bound at start does. Over IPv6: an
/// IPv4 original destination cut to a plain listener's room still parses
/// (the kernel cuts the `sockaddr_in` after its address), an IPv6 one does
/// not.
#[test]
fn a_transparent_udp_listener_added_by_a_reload_answers_from_the_original_destination() {
    let Some(t) = Topology::new(true) else {
        return;
    };
    t.with_ipv6().expect("ipv6 addresses");
    t.tproxy_udp6(&[DIAL], INTERCEPT).expect("tproxy rules");
    let mut server = Peer::start(&t.server, UDP_ECHO_SERVER, &["6", &DIAL.to_string()]);
    // A UDP listener from the start, so the shards have datagram buffers.
    let plain = format!(
        "[[udp]]\nname = \"plain\"\nlisten = \"127.0.0.1:9100\"\nupstreams = [\"{SERVER_IP}:{DIAL}\"]\n"
    );
    let start = format!("[runtime]\nshards = 1\nstats_interval = \"100ms\"\n{plain}");
    let path = write_config(&start);
    let path_text = path.to_str().expect("path");
    let fwd = Proc::start_in_netns(&t.router.name, &["run", "--config", path_text], 1);
    let added = udp_tproxy_config(16, V6.any).replace("[[udp]]", &format!("{plain}[[udp]]"));
    std::fs::write(&path, added).expect("write config");
    fwd.signal(libc::SIGHUP);
    fwd.wait_log("SIGHUP: configuration reloaded", Duration::from_secs(10));
    let a = SocketAddr::new(V6.server.parse().expect("ip"), DIAL);
    let replies = udp_rounds(&t, ROUNDS, "3", &[a]);
    assert_answered_from(&replies, a, &fwd.log());
    // Through ringfwd, not routed past it: the server saw the router.
    let got = server.wait_lines("got ", 2 * ROUNDS, Duration::from_secs(5));
    assert_eq!(got.len(), 2 * ROUNDS, "{got:?}");
    let from_router = format!("got {DIAL} [{}]:", V6.router_server_side);
    assert!(got.iter().all(|l| l.starts_with(&from_router)), "{got:?}");
    fwd.wait_stat("udp_sessions_created", Duration::from_secs(5), |v| v == 1);
}

/// Without CAP_NET_ADMIN a transparent UDP listener cannot be made: `check`
/// and `run` refuse (exit 3), naming the listener and the capability.
#[test]
fn a_transparent_udp_listener_without_cap_net_admin_is_refused_naming_it() {
    let root = std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(2) == Some("0"));
    if !root {
        eprintln!("skipped: dropping to user nobody (setpriv) needs root");
        return;
    }
    let path = write_config(
        "[runtime]\nshards = 1\n[[udp]]\nname = \"tp\"\nlisten = \"127.0.0.1:0\"\n\
         transparent = \"tproxy\"\n",
    );
    for cmd in ["check", "run"] {
        let out = Command::new("setpriv")
            .args([
                "--reuid=65534",
                "--regid=65534",
                "--clear-groups",
                "--inh-caps=-all",
            ])
            .arg(crate::harness::BIN)
            .args([cmd, "--config", path.to_str().expect("path")])
            .stdin(Stdio::null())
            .output()
            .expect("setpriv (util-linux) is needed for this test");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(3), "{cmd}: {err}");
        assert!(
            err.contains("udp listener 'tp'") && err.contains("CAP_NET_ADMIN"),
            "{cmd}: {err}"
        );
    }
}
