//! SOCKS5 UDP ASSOCIATE through the real binary: PySocks asking dnsmasq
//! through an association, and hand-written clients checking the reply's
//! BND, whose datagrams go out (the client's only, whole, to allowed
//! destinations, names resolved), which come back (with a header naming
//! their source), and the association's end with its control connection
//! or its idle timeout.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream, UdpSocket};
use std::process::{Command, Stdio};
use std::thread;
use std::time::Duration;

use crate::bench_payload::dns_query;
use crate::dns::{answer_for, have, start_dnsmasq};
use crate::dnsd::Dnsd;
use crate::harness::{Proc, temp_path, wait_until, write_config};

const WAIT: Duration = Duration::from_secs(10);

/// A ringfwd with one `[[socks5]]` listener serving UDP ASSOCIATE.
fn proxy(listen: &str, keys: &str, runtime: &str) -> Proc {
    let cfg = write_config(&format!(
        "[runtime]\nstats_interval = \"100ms\"\nshards = 1\n{runtime}\n\n[[socks5]]\nname = \"p\"\nlisten = \"{listen}\"\nudp = true\n{keys}\n"
    ));
    Proc::start(&["run", "--config", cfg.to_str().expect("path")], 1)
}

/// A UDP echo server on 127.0.0.1 that answers `echo:` + each datagram, for
/// as long as the test runs (it stops after 30 s without a datagram).
fn udp_echo() -> SocketAddr {
    let s = UdpSocket::bind("127.0.0.1:0").expect("bind the echo server");
    s.set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    let addr = s.local_addr().expect("addr");
    thread::spawn(move || {
        let mut buf = [0u8; 2048];
        while let Ok((n, from)) = s.recv_from(&mut buf) {
            let mut out = b"echo:".to_vec();
            out.extend_from_slice(&buf[..n]);
            let _ = s.send_to(&out, from);
        }
    });
    addr
}

/// Opens a control connection to `proxy` (via `via`, the address dialled)
/// and asks for an association; returns the connection and the reply's BND.
fn associate(via: SocketAddr) -> (TcpStream, SocketAddr) {
    associate_as(via, None)
}

/// `associate`, authenticating as `user` (name, password) when given.
fn associate_as(via: SocketAddr, user: Option<(&str, &str)>) -> (TcpStream, SocketAddr) {
    let mut s = TcpStream::connect(via).expect("connect to the proxy");
    s.set_read_timeout(Some(WAIT)).expect("timeout");
    let method = if user.is_some() { 2 } else { 0 };
    s.write_all(&[5, 1, method]).expect("greeting");
    let mut chosen = [0u8; 2];
    s.read_exact(&mut chosen).expect("method reply");
    assert_eq!(chosen, [5, method]);
    if let Some((name, password)) = user {
        let mut auth = vec![1, name.len() as u8];
        auth.extend_from_slice(name.as_bytes());
        auth.push(password.len() as u8);
        auth.extend_from_slice(password.as_bytes());
        s.write_all(&auth).expect("authentication");
        let mut status = [0u8; 2];
        s.read_exact(&mut status).expect("authentication reply");
        assert_eq!(status, [1, 0], "authenticated");
    }
    s.write_all(&[5, 3, 0, 1, 0, 0, 0, 0, 0, 0])
        .expect("UDP ASSOCIATE");
    let mut reply = [0u8; 10];
    s.read_exact(&mut reply).expect("the reply");
    assert_eq!(
        reply[..4],
        [5, 0, 0, 1],
        "succeeded, an IPv4 BND: {reply:?}"
    );
    let ip = IpAddr::from([reply[4], reply[5], reply[6], reply[7]]);
    let port = u16::from_be_bytes([reply[8], reply[9]]);
    assert_ne!(port, 0);
    (s, SocketAddr::new(ip, port))
}

/// `RSV RSV FRAG ATYP DST` for an IPv4 destination, then `payload`.
fn datagram(frag: u8, dst: SocketAddr, payload: &[u8]) -> Vec<u8> {
    let SocketAddr::V4(a) = dst else {
        panic!("IPv4 only")
    };
    let mut d = vec![0, 0, frag, 1];
    d.extend_from_slice(&a.ip().octets());
    d.extend_from_slice(&a.port().to_be_bytes());
    d.extend_from_slice(payload);
    d
}

/// The same for a domain destination.
fn named_datagram(name: &str, port: u16, payload: &[u8]) -> Vec<u8> {
    let mut d = vec![0, 0, 0, 3, name.len() as u8];
    d.extend_from_slice(name.as_bytes());
    d.extend_from_slice(&port.to_be_bytes());
    d.extend_from_slice(payload);
    d
}

fn client() -> UdpSocket {
    let u = UdpSocket::bind("127.0.0.1:0").expect("bind the client");
    u.set_read_timeout(Some(Duration::from_millis(1500)))
        .expect("timeout");
    u
}

/// The next datagram for the client, if one comes within its timeout.
fn recv(u: &UdpSocket) -> Option<(Vec<u8>, SocketAddr)> {
    let mut buf = [0u8; 2048];
    let (n, from) = u.recv_from(&mut buf).ok()?;
    Some((buf[..n].to_vec(), from))
}

#[test]
fn udp_associate_relays_the_clients_whole_datagrams_to_allowed_destinations_only() {
    let echo = udp_echo();
    let dnsd = Dnsd::start();
    dnsd.insert("echo.test", "127.0.0.1");
    dnsd.insert("denied.test", "127.0.0.2");
    let p = proxy(
        "127.0.0.1:0",
        "destinations_deny = [\"127.0.0.2/32\"]",
        &dnsd.resolver_line(),
    );
    let (control, bnd) = associate(p.first_addr());
    assert_eq!(
        bnd.ip(),
        p.first_addr().ip(),
        "BND is the address the client reached"
    );
    let u = client();

    u.send_to(&datagram(0, echo, b"one"), bnd).expect("send");
    let (reply, from) = recv(&u).expect("the echo comes back through the association");
    assert_eq!(from, bnd, "replies come from the association's socket");
    assert_eq!(
        reply,
        datagram(0, echo, b"echo:one"),
        "a header naming the source"
    );

    // By name: resolved by the shard's resolver, then relayed.
    u.send_to(&named_datagram("echo.test", echo.port(), b"two"), bnd)
        .expect("send");
    let (reply, _) = recv(&u).expect("the echo of a datagram sent by name");
    assert_eq!(reply, datagram(0, echo, b"echo:two"));

    // Fragments, bad headers, denied destinations (by address and by name)
    // and other sources are dropped and counted, none relayed.
    u.send_to(&datagram(1, echo, b"frag"), bnd).expect("send");
    u.send_to(&[0, 0, 0, 1, 127], bnd).expect("send");
    let denied: SocketAddr = SocketAddr::new([127, 0, 0, 2].into(), echo.port());
    u.send_to(&datagram(0, denied, b"no"), bnd).expect("send");
    u.send_to(&named_datagram("denied.test", echo.port(), b"no"), bnd)
        .expect("send");
    // To the association's own socket, or back to the client itself: loops.
    u.send_to(&datagram(0, bnd, b"self"), bnd).expect("send");
    let me = u.local_addr().expect("client address");
    u.send_to(&datagram(0, me, b"me"), bnd).expect("send");
    let other = client();
    other
        .send_to(&datagram(0, echo, b"stranger"), bnd)
        .expect("send");
    p.wait_stat("udp_drop_fragment", WAIT, |v| v == 1);
    p.wait_stat("udp_drop_malformed", WAIT, |v| v == 1);
    p.wait_stat("udp_drop_denied", WAIT, |v| v == 2);
    p.wait_stat("udp_drop_stranger", WAIT, |v| v == 1);
    p.wait_stat("udp_drop_loop", WAIT, |v| v == 2);
    assert_eq!(recv(&u), None, "nothing dropped was relayed");
    assert_eq!(recv(&other), None);
    assert_eq!(p.stat("udp_sessions_created"), 1);
    assert_eq!(p.stat("udp_sessions_active"), 1);
    assert_eq!(p.stat("udp_datagrams_c2u"), 2);
    assert_eq!(p.stat("udp_datagrams_u2c"), 2);
    assert_eq!(
        p.stat("udp_bytes_c2u"),
        6,
        "payloads only, headers not counted"
    );

    // The control connection's end ends the association: nothing more goes out.
    drop(control);
    p.wait_stat("udp_end_control_closed", WAIT, |v| v == 1);
    p.wait_stat("udp_sessions_active", WAIT, |v| v == 0);
    u.send_to(&datagram(0, echo, b"late"), bnd).expect("send");
    assert_eq!(recv(&u), None, "no association, no relay");
    assert_eq!(p.stat("udp_datagrams_c2u"), 2);
}

#[test]
fn a_wildcard_listener_names_the_address_the_client_reached_never_0_0_0_0() {
    let echo = udp_echo();
    let p = proxy(
        "0.0.0.0:0",
        "allow = [\"127.0.0.0/8\"]\ndestinations_deny = []",
        "",
    );
    let via = SocketAddr::new([127, 0, 0, 3].into(), p.first_addr().port());
    let (_control, bnd) = associate(via);
    assert_eq!(
        bnd.ip(),
        via.ip(),
        "BND: the control connection's local address"
    );
    let u = client();
    u.send_to(&datagram(0, echo, b"x"), bnd).expect("send");
    let (reply, from) = recv(&u).expect("the echo");
    assert_eq!(from, bnd);
    assert_eq!(reply, datagram(0, echo, b"echo:x"));
}

#[test]
fn an_idle_association_closes_its_control_connection() {
    let echo = udp_echo();
    let log = temp_path("access.log");
    let p = proxy(
        "127.0.0.1:0",
        "destinations_deny = []\nudp_idle_timeout = \"300ms\"\nusers = [{ name = \"alice\", password = \"pw\" }]",
        &format!(
            "\n[log]\naccess = {:?}\nformat = \"json\"",
            log.display().to_string()
        ),
    );
    let (mut control, bnd) = associate_as(p.first_addr(), Some(("alice", "pw")));
    let u = client();
    u.send_to(&datagram(0, echo, b"x"), bnd).expect("send");
    assert!(recv(&u).is_some(), "relayed while active");
    let mut rest = Vec::new();
    control
        .read_to_end(&mut rest)
        .expect("a FIN once idle, not a reset");
    assert!(rest.is_empty(), "{rest:?}");
    p.wait_stat("udp_end_idle", WAIT, |v| v == 1);
    p.wait_stat("close_idle_timeout", WAIT, |v| v == 1);
    p.wait_stat("udp_sessions_active", WAIT, |v| v == 0);
    // One access log line for the association, one for its control connection.
    let mut lines = Vec::new();
    let both = wait_until(WAIT, || {
        lines = std::fs::read_to_string(&log)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).expect("a JSON line"))
            .collect();
        lines.len() == 2
    });
    assert!(both, "{lines:?}\n{}", p.log());
    let assoc = lines
        .iter()
        .find(|l| l["proto"] == "udp")
        .unwrap_or_else(|| panic!("no UDP line: {lines:?}"));
    assert_eq!(assoc["listener"], "p");
    assert_eq!(assoc["local"], bnd.to_string(), "the association's socket");
    assert_eq!(assoc["client"], u.local_addr().expect("addr").to_string());
    assert_eq!(assoc["destination"], echo.to_string());
    assert_eq!(assoc["upstream"], echo.to_string());
    assert_eq!(assoc["datagrams_c2u"], 1);
    assert_eq!(assoc["datagrams_u2c"], 1);
    assert_eq!(assoc["bytes_c2u"], 1, "the payload, not the header");
    assert_eq!(assoc["reason"], "idle");
    assert_eq!(assoc["user"], "alice", "the control connection's user");
    let control = lines
        .iter()
        .find(|l| l["proto"] == "tcp")
        .unwrap_or_else(|| panic!("no TCP line: {lines:?}"));
    assert_eq!(control["reason"], "idle_timeout");
    assert_eq!(control["user"], "alice");
}

/// PySocks' UDP support: a DNS query through the association, then the
/// control connection closed and the same UDP socket tried again.
const PYSOCKS: &str = r#"
import socket, sys, socks
proxy_port, dns_port, query = int(sys.argv[1]), int(sys.argv[2]), bytes.fromhex(sys.argv[3])
s = socks.socksocket(socket.AF_INET, socket.SOCK_DGRAM)
s.set_proxy(socks.SOCKS5, "127.0.0.1", proxy_port)
s.settimeout(3)
s.sendto(query, ("127.0.0.1", dns_port))
data, src = s.recvfrom(2048)
print("answer", data.hex(), src[1], flush=True)
s._proxyconn.close()
print("closed", flush=True)
sys.stdin.readline()
try:
    s.sendto(query, ("127.0.0.1", dns_port))
    data, _ = s.recvfrom(2048)
    print("after-close answered", flush=True)
except OSError as e:
    print("after-close silent", type(e).__name__, flush=True)
"#;

fn have_pysocks() -> bool {
    Command::new("python3")
        .args(["-c", "import socks"])
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

#[test]
fn pysocks_asks_dnsmasq_through_an_association_that_ends_with_its_control_connection() {
    if !have("dnsmasq") || !have_pysocks() {
        assert!(
            std::env::var_os("CI").is_none(),
            "dnsmasq and PySocks are required in CI (.ci/run installs them)"
        );
        eprintln!(
            "skipping: needs dnsmasq (apt-get install dnsmasq-base) and PySocks (pip install PySocks)"
        );
        return;
    }
    let hosts = temp_path("hosts");
    std::fs::write(&hosts, format!("{} h0.ringfwd.test\n", answer_for(0))).expect("hosts");
    let dns = start_dnsmasq(&hosts);
    let p = proxy("127.0.0.1:0", "destinations_deny = []", "");
    let query = dns_query("h0.ringfwd.test");
    let hex: String = query.iter().map(|b| format!("{b:02x}")).collect();
    let mut py = Command::new("python3")
        .args([
            "-c",
            PYSOCKS,
            &p.first_addr().port().to_string(),
            &dns.addr.port().to_string(),
            &hex,
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("run python3");
    let mut lines = BufReader::new(py.stdout.take().expect("stdout")).lines();
    let mut next = || lines.next().and_then(Result::ok).unwrap_or_default();
    let answer = next();
    let fields: Vec<&str> = answer.split_whitespace().collect();
    assert_eq!(fields.first(), Some(&"answer"), "{answer}\n{}", p.log());
    assert!(fields[1].starts_with("5246"), "the query's ID: {answer}");
    assert!(
        fields[1].ends_with("0a4d0001"),
        "the A record 10.77.0.1: {answer}"
    );
    assert_eq!(
        fields[2],
        dns.addr.port().to_string(),
        "the header names dnsmasq"
    );
    assert_eq!(next(), "closed");
    p.wait_stat("udp_end_control_closed", WAIT, |v| v == 1);
    let mut stdin = py.stdin.take().expect("stdin");
    stdin.write_all(b"go\n").expect("tell python to go on");
    let after = next();
    assert!(after.starts_with("after-close silent"), "{after}");
    assert_eq!(
        p.stat("udp_datagrams_c2u"),
        1,
        "only the first query went out"
    );
    let _ = py.wait();
}
