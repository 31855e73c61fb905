//! A tiny DNS server for tests: answers A and AAAA queries from a map on a
//! loopback UDP port, can be told to drop queries or answer NXDOMAIN or
//! SERVFAIL, counts the queries it got, and stops when dropped. Tests of
//! domain destinations (SOCKS5, HTTP CONNECT) point `[runtime] resolver`
//! at it (`Dnsd::resolver_line`).

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use simple_dns::rdata::{A, AAAA, RData};
use simple_dns::{CLASS, Packet, PacketFlag, QCLASS, QTYPE, RCODE, ResourceRecord, TYPE};

/// How the server treats every query.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Mode {
    /// Answer from the map; a name not in it is NXDOMAIN.
    Answer,
    /// Read the query and send nothing.
    Drop,
    /// NXDOMAIN for every name.
    NxDomain,
    /// SERVFAIL for every query.
    ServFail,
}

struct Zone {
    names: HashMap<String, Vec<IpAddr>>,
    mode: Mode,
    ttl: u32,
}

pub(crate) struct Dnsd {
    pub(crate) addr: SocketAddr,
    zone: Arc<Mutex<Zone>>,
    queries: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

/// How often the server thread looks at `stop` while no query comes.
const POLL: Duration = Duration::from_millis(20);

impl Dnsd {
    /// Starts on 127.0.0.1, a port the kernel picks.
    pub(crate) fn start() -> Dnsd {
        let socket = UdpSocket::bind("127.0.0.1:0").expect("bind the test DNS server");
        socket.set_read_timeout(Some(POLL)).expect("read timeout");
        let addr = socket.local_addr().expect("local address");
        let zone = Arc::new(Mutex::new(Zone {
            names: HashMap::new(),
            mode: Mode::Answer,
            ttl: 60,
        }));
        let queries = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (zone, queries, stop) = (zone.clone(), queries.clone(), stop.clone());
            std::thread::spawn(move || serve(&socket, &zone, &queries, &stop))
        };
        Dnsd {
            addr,
            zone,
            queries,
            stop,
            thread: Some(thread),
        }
    }

    /// `name` (any case, trailing dot or not) resolves to `ip` too.
    pub(crate) fn insert(&self, name: &str, ip: &str) {
        let ip: IpAddr = ip.parse().expect("an IP address");
        let mut zone = self.zone.lock().expect("zone");
        zone.names.entry(key(name)).or_default().push(ip);
    }

    pub(crate) fn set_mode(&self, mode: Mode) {
        self.zone.lock().expect("zone").mode = mode;
    }

    /// The TTL of the records it sends (default 60 s).
    pub(crate) fn set_ttl(&self, ttl: u32) {
        self.zone.lock().expect("zone").ttl = ttl;
    }

    /// Queries received so far (dropped ones included).
    pub(crate) fn queries(&self) -> usize {
        self.queries.load(Ordering::SeqCst)
    }

    /// The `[runtime]` line that points ringfwd at this server.
    pub(crate) fn resolver_line(&self) -> String {
        format!("resolver = [\"{}\"]", self.addr)
    }
}

impl Drop for Dnsd {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn key(name: &str) -> String {
    name.trim_end_matches('.').to_ascii_lowercase()
}

fn serve(socket: &UdpSocket, zone: &Mutex<Zone>, queries: &AtomicUsize, stop: &AtomicBool) {
    let mut buf = [0u8; 1500];
    while !stop.load(Ordering::SeqCst) {
        let Ok((n, from)) = socket.recv_from(&mut buf) else {
            continue;
        };
        queries.fetch_add(1, Ordering::SeqCst);
        let Some(reply) = answer(&buf[..n], &zone.lock().expect("zone")) else {
            continue;
        };
        let _ = socket.send_to(&reply, from);
    }
}

/// The reply to `query` under `zone`'s rules (`None`: send nothing).
fn answer(query: &[u8], zone: &Zone) -> Option<Vec<u8>> {
    let q = Packet::parse(query).ok()?;
    let mut reply = Packet::new_reply(q.id());
    reply.set_flags(PacketFlag::RECURSION_AVAILABLE);
    let question = q.questions.first()?.clone();
    let name = key(&question.qname.to_string());
    let owner = question.qname.clone();
    reply.questions.push(question.clone());
    let addrs = zone.names.get(&name);
    *reply.rcode_mut() = match (zone.mode, addrs) {
        (Mode::Drop, _) => return None,
        (Mode::ServFail, _) => RCODE::ServerFailure,
        (Mode::NxDomain, _) | (Mode::Answer, None) => RCODE::NameError,
        (Mode::Answer, Some(_)) => RCODE::NoError,
    };
    if reply.rcode() == RCODE::NoError && question.qclass == QCLASS::CLASS(CLASS::IN) {
        for ip in addrs.into_iter().flatten() {
            let rdata = match (question.qtype, ip) {
                (QTYPE::TYPE(TYPE::A), IpAddr::V4(v4)) => RData::A(A::from(*v4)),
                (QTYPE::TYPE(TYPE::AAAA), IpAddr::V6(v6)) => RData::AAAA(AAAA::from(*v6)),
                _ => continue,
            };
            reply.answers.push(ResourceRecord::new(
                owner.clone(),
                CLASS::IN,
                zone.ttl,
                rdata,
            ));
        }
    }
    reply.build_bytes_vec().ok()
}

/// What `ask` got back.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Answered {
    pub(crate) rcode: RCODE,
    pub(crate) addrs: Vec<IpAddr>,
    pub(crate) ttls: Vec<u32>,
}

/// Asks `server` for (`name`, `qtype`) like a stub resolver: the reply, or
/// `None` when nothing came within `wait`.
pub(crate) fn ask(server: SocketAddr, name: &str, qtype: TYPE, wait: Duration) -> Option<Answered> {
    let client = UdpSocket::bind("127.0.0.1:0").expect("bind a client socket");
    client.set_read_timeout(Some(wait)).expect("read timeout");
    let mut q = Packet::new_query(0x5eed);
    q.set_flags(PacketFlag::RECURSION_DESIRED);
    q.questions.push(simple_dns::Question::new(
        simple_dns::Name::new_unchecked(name),
        QTYPE::TYPE(qtype),
        QCLASS::CLASS(CLASS::IN),
        false,
    ));
    client
        .send_to(&q.build_bytes_vec().expect("encode"), server)
        .expect("send the query");
    let mut buf = [0u8; 1500];
    let n = client.recv(&mut buf).ok()?;
    let reply = Packet::parse(&buf[..n]).expect("the server's reply parses");
    assert_eq!(reply.id(), 0x5eed);
    let addrs = reply
        .answers
        .iter()
        .filter_map(|rr| match &rr.rdata {
            RData::A(a) => Some(IpAddr::from(std::net::Ipv4Addr::from(a.address))),
            RData::AAAA(a) => Some(IpAddr::from(std::net::Ipv6Addr::from(a.address))),
            _ => None,
        })
        .collect();
    Some(Answered {
        rcode: reply.rcode(),
        addrs,
        ttls: reply.answers.iter().map(|rr| rr.ttl).collect(),
    })
}

#[test]
fn dnsd_answers_from_its_map_and_obeys_its_mode() {
    let d = Dnsd::start();
    d.insert("App.Test.", "192.0.2.10");
    d.insert("app.test", "2001:db8::10");
    let wait = Duration::from_secs(5);
    let q = |name: &str, qtype: TYPE, wait: Duration| {
        ask(d.addr, name, qtype, wait).map(|a| (a.rcode, a.addrs))
    };
    let v4: IpAddr = "192.0.2.10".parse().unwrap();
    let v6: IpAddr = "2001:db8::10".parse().unwrap();
    assert_eq!(
        q("app.test", TYPE::A, wait),
        Some((RCODE::NoError, vec![v4]))
    );
    assert_eq!(
        q("APP.test", TYPE::AAAA, wait),
        Some((RCODE::NoError, vec![v6]))
    );
    assert_eq!(
        q("other.test", TYPE::A, wait),
        Some((RCODE::NameError, vec![]))
    );
    d.set_mode(Mode::ServFail);
    assert_eq!(
        q("app.test", TYPE::A, wait),
        Some((RCODE::ServerFailure, vec![]))
    );
    d.set_mode(Mode::NxDomain);
    assert_eq!(
        q("app.test", TYPE::A, wait),
        Some((RCODE::NameError, vec![]))
    );
    d.set_mode(Mode::Drop);
    // Nothing comes back: the bounded wait is the assertion.
    assert_eq!(q("app.test", TYPE::A, Duration::from_millis(300)), None);
    d.set_mode(Mode::Answer);
    d.set_ttl(7);
    let full = ask(d.addr, "app.test", TYPE::A, wait).expect("a reply");
    assert_eq!(full.ttls, [7]);
    assert_eq!(d.queries(), 7);
    assert_eq!(d.resolver_line(), format!("resolver = [\"{}\"]", d.addr));
    let addr = d.addr;
    drop(d);
    // Stopped: its port no longer answers.
    assert_eq!(
        ask(addr, "app.test", TYPE::A, Duration::from_millis(300)),
        None
    );
}
