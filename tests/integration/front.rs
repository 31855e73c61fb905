//! The front stage through the real binary: `accept_proxy` (a PROXY header
//! required from trusted sources, split over many reads), `send_proxy`
//! toward the upstream, SNI routes from a real ClientHello, and the access
//! log's lines for what happened.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::mpsc;
use std::thread;
use std::time::Duration;

use ringfwd::front::Parsed;
use ringfwd::front::proxy;

use crate::harness::{Proc, temp_path, wait_until, write_config};

/// An upstream that records, per connection, every byte it receives until
/// the client's FIN, then answers `reply` and closes.
struct Recorder {
    addr: SocketAddr,
    got: mpsc::Receiver<Vec<u8>>,
}

impl Recorder {
    fn start(reply: &'static [u8]) -> Recorder {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind recorder");
        let addr = l.local_addr().expect("addr");
        let (tx, got) = mpsc::channel();
        thread::spawn(move || {
            for s in l.incoming() {
                let Ok(mut s) = s else { return };
                let tx = tx.clone();
                thread::spawn(move || {
                    let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
                    let mut buf = Vec::new();
                    let _ = s.read_to_end(&mut buf);
                    let _ = s.write_all(reply);
                    let _ = tx.send(buf);
                });
            }
        });
        Recorder { addr, got }
    }

    fn next(&self) -> Vec<u8> {
        self.got
            .recv_timeout(Duration::from_secs(10))
            .expect("the upstream saw a connection end")
    }

    fn none_within(&self, d: Duration) -> bool {
        self.got.recv_timeout(d).is_err()
    }
}

fn forwarder(listener: &str, extra: &str) -> Proc {
    let cfg = write_config(&format!(
        "[runtime]\nshards = 1\nstats_interval = \"100ms\"\n{extra}\n[[tcp]]\nname = \"f\"\nlisten = \"127.0.0.1:0\"\n{listener}\n"
    ));
    Proc::start(&["run", "--config", cfg.to_str().expect("path")], 1)
}

/// Sends `parts` one write each (with a pause so each is its own read),
/// half-closes, and returns what came back. A write the forwarder refused
/// (it closed a client it turned away) ends the sending early.
fn converse(addr: SocketAddr, parts: &[&[u8]]) -> Vec<u8> {
    let mut s = TcpStream::connect(addr).expect("connect to the forwarder");
    s.set_nodelay(true).expect("nodelay");
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    for p in parts {
        if s.write_all(p).is_err() {
            break;
        }
        thread::sleep(Duration::from_millis(2));
    }
    let _ = s.shutdown(std::net::Shutdown::Write);
    let mut back = Vec::new();
    let _ = s.read_to_end(&mut back);
    back
}

const V1: &[u8] = b"PROXY TCP4 192.0.2.7 198.51.100.9 40001 443\r\n";

#[test]
fn a_proxy_header_sent_one_byte_at_a_time_is_stripped_and_its_client_sent_on_as_v2() {
    let up = Recorder::start(b"ok");
    let fwd = forwarder(
        &format!(
            "upstreams = [\"{}\"]\naccept_proxy = true\ntrusted_proxies = [\"127.0.0.0/8\"]\nsend_proxy = \"v2\"",
            up.addr
        ),
        "",
    );
    let mut parts: Vec<&[u8]> = V1.chunks(1).collect();
    parts.push(b"hello upstream");
    let back = converse(fwd.first_addr(), &parts);
    assert_eq!(back, b"ok");
    let got = up.next();
    let Parsed::Done { value, consumed } = proxy::parse(&got) else {
        panic!("the upstream did not get a v2 header first: {got:?}");
    };
    assert_eq!(value.version, proxy::Version::V2);
    let e = value.endpoints().expect("addresses");
    assert_eq!(
        e.src,
        "192.0.2.7:40001".parse().expect("addr"),
        "the header's client"
    );
    assert_eq!(e.dst, "198.51.100.9:443".parse().expect("addr"));
    assert_eq!(
        &got[consumed..],
        b"hello upstream",
        "the stream, without the header in"
    );
    fwd.wait_stat("close_client_eof", Duration::from_secs(5), |v| v == 1);
    assert_eq!(fwd.stat("bytes_c2u"), 14, "only the stream's bytes count");
}

#[test]
fn untrusted_malformed_and_silent_clients_are_closed_and_counted() {
    let up = Recorder::start(b"ok");
    let fwd = forwarder(
        &format!(
            "upstreams = [\"{}\"]\naccept_proxy = true\ntrusted_proxies = [\"10.0.0.0/8\"]\nproxy_timeout = \"200ms\"",
            up.addr
        ),
        "",
    );
    // 127.0.0.1 is not in 10.0.0.0/8.
    let back = converse(fwd.first_addr(), &[V1, b"x"]);
    assert!(back.is_empty());
    fwd.wait_stat("close_proxy_untrusted", Duration::from_secs(5), |v| v == 1);
    assert!(
        up.none_within(Duration::from_millis(200)),
        "nothing reached the upstream"
    );

    let up = Recorder::start(b"ok");
    let fwd = forwarder(
        &format!(
            "upstreams = [\"{}\"]\naccept_proxy = true\ntrusted_proxies = [\"127.0.0.1/32\"]\nproxy_timeout = \"200ms\"",
            up.addr
        ),
        "",
    );
    let _ = converse(fwd.first_addr(), &[b"GET / HTTP/1.0\r\n\r\n"]);
    fwd.wait_stat("close_proxy_malformed", Duration::from_secs(5), |v| v == 1);
    // A client that connects and says nothing.
    let idle = TcpStream::connect(fwd.first_addr()).expect("connect");
    fwd.wait_stat("close_proxy_timeout", Duration::from_secs(5), |v| v == 1);
    drop(idle);
    assert!(
        up.none_within(Duration::from_millis(200)),
        "nothing reached the upstream"
    );
}

fn fixture(name: &str) -> Vec<u8> {
    let path = format!("{}/tests/fixtures/tls/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

#[test]
fn sni_routes_pick_the_upstream_and_forward_the_hello_untouched() {
    let default = Recorder::start(b"default");
    let example = Recorder::start(b"example");
    let fwd = forwarder(
        &format!(
            "upstreams = [\"{}\"]\nsni_timeout = \"300ms\"\n[[tcp.routes]]\nsni = [\"*.example.com\"]\nupstreams = [\"{}\"]",
            default.addr, example.addr
        ),
        "",
    );
    let hello = fixture("openssl_tls13_sni.bin"); // x.example.com
    // Split the hello over three writes: the route waits for all of it.
    let (a, rest) = hello.split_at(5);
    let (b, c) = rest.split_at(rest.len() / 2);
    assert_eq!(converse(fwd.first_addr(), &[a, b, c]), b"example");
    assert_eq!(example.next(), hello, "every byte of the hello, untouched");

    let nosni = fixture("openssl_nosni.bin");
    assert_eq!(converse(fwd.first_addr(), &[&nosni]), b"default");
    assert_eq!(default.next(), nosni);
    assert_eq!(
        converse(fwd.first_addr(), &[b"SSH-2.0-x\r\n"]),
        b"default",
        "not TLS"
    );
    assert_eq!(default.next(), b"SSH-2.0-x\r\n");

    let idle = TcpStream::connect(fwd.first_addr()).expect("connect");
    fwd.wait_stat("close_sni_timeout", Duration::from_secs(5), |v| v == 1);
    drop(idle);
}

#[test]
fn the_access_log_has_a_json_line_per_connection_and_reopens_on_sigusr1() {
    let up = Recorder::start(b"ok");
    let log = temp_path("access.log");
    let fwd = forwarder(
        &format!(
            "upstreams = [\"{}\"]\naccept_proxy = true\ntrusted_proxies = [\"127.0.0.1/32\"]",
            up.addr
        ),
        &format!("[log]\naccess = \"{}\"\nformat = \"json\"", log.display()),
    );
    assert_eq!(converse(fwd.first_addr(), &[V1, b"abc"]), b"ok");
    let _ = up.next();
    let read = |p: &std::path::Path| std::fs::read_to_string(p).unwrap_or_default();
    assert!(
        wait_until(Duration::from_secs(5), || read(&log).lines().count() == 1),
        "one line; log:\n{}",
        fwd.log()
    );
    let line: serde_json::Value = serde_json::from_str(read(&log).trim()).expect("JSON line");
    assert_eq!(line["listener"], "f");
    assert_eq!(line["proto"], "tcp");
    assert_eq!(
        line["client"], "192.0.2.7:40001",
        "the PROXY header's client"
    );
    assert!(
        line["peer"]
            .as_str()
            .is_some_and(|p| p.starts_with("127.0.0.1:")),
        "{line}"
    );
    assert_eq!(line["upstream"], up.addr.to_string());
    assert_eq!(line["bytes_c2u"], 3);
    assert_eq!(line["bytes_u2c"], 2);
    assert_eq!(line["reason"], "client_eof");
    assert!(
        line["connect_ms"].is_u64() && line["duration_ms"].is_u64(),
        "{line}"
    );

    // logrotate: move the file away, SIGUSR1, and new lines go to a new file.
    let rotated = temp_path("access.log.1");
    std::fs::rename(&log, &rotated).expect("rotate");
    fwd.signal(libc::SIGUSR1);
    assert!(
        wait_until(Duration::from_secs(5), || fwd
            .log()
            .contains("reopening the access log")),
        "{}",
        fwd.log()
    );
    assert_eq!(converse(fwd.first_addr(), &[V1, b"d"]), b"ok");
    let _ = up.next();
    assert!(
        wait_until(Duration::from_secs(5), || read(&log).lines().count() == 1),
        "a new file at the path; log:\n{}",
        fwd.log()
    );
    assert_eq!(
        read(&rotated).lines().count(),
        1,
        "the old file keeps its line"
    );
}

/// `[[udp]] send_proxy = "v2"`: every datagram reaches the upstream behind
/// its own v2 header naming the client; replies come back unchanged.
#[test]
fn every_udp_datagram_carries_its_own_v2_header_and_replies_are_relayed_as_they_are() {
    use std::net::UdpSocket;
    let up = UdpSocket::bind("127.0.0.1:0").expect("bind upstream");
    up.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let up_addr = up.local_addr().expect("addr");
    let cfg = write_config(&format!(
        "[runtime]\nshards = 1\nstats_interval = \"100ms\"\n[[udp]]\nname = \"u\"\nlisten = \"127.0.0.1:0\"\nupstreams = [\"{up_addr}\"]\nsend_proxy = \"v2\"\n"
    ));
    let fwd = Proc::start(&["run", "--config", cfg.to_str().expect("path")], 1);
    let client = UdpSocket::bind("127.0.0.1:0").expect("bind client");
    client
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let me = client.local_addr().expect("addr");
    for payload in [&b"first"[..], b"second datagram"] {
        client.send_to(payload, fwd.first_addr()).expect("send");
        let mut buf = [0u8; 2048];
        let (n, from) = up
            .recv_from(&mut buf)
            .expect("the upstream gets the datagram");
        let got = &buf[..n];
        let Parsed::Done { value, consumed } = proxy::parse(got) else {
            panic!("no v2 header in front of the datagram: {got:?}");
        };
        let Some(e) = value.endpoints() else {
            panic!("the header names no client: {value:?}");
        };
        assert_eq!(e.src, me, "the client");
        assert_eq!(e.dst, fwd.first_addr(), "the address it reached");
        assert!(
            matches!(
                value.command,
                proxy::Command::Proxy {
                    transport: proxy::Transport::Datagram,
                    ..
                }
            ),
            "{value:?}"
        );
        assert_eq!(&got[consumed..], payload, "the payload follows the header");
        up.send_to(b"reply", from).expect("reply");
        let (n, _) = client.recv_from(&mut buf).expect("the reply");
        assert_eq!(&buf[..n], b"reply", "replies are relayed unchanged");
    }
    fwd.wait_stat("udp_bytes_c2u", Duration::from_secs(5), |v| v == 20);
}
