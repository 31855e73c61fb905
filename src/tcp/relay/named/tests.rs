//! A named relay driven by hand: the lookup, addresses tried in turn, the
//! reply before the upstream's bytes, refusals answered then closed, and
//! the waits that must end.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use super::*;
use crate::config::forward::{DestinationPolicy, Users};
use crate::front::Credentials;
use crate::stats::Counters;
use crate::tcp::FrontRead;
use crate::tcp::front::FrontConfig;
use crate::tcp::handshake::LoopGuard;
use crate::tcp::lifecycle::{Lifecycle, SockState};
use crate::tcp::relay::{ProxyOut, RelayConfig};

struct Run {
    relay: Relay,
    ops: Vec<ConnOp>,
    life: Lifecycle,
    counters: Counters,
}

fn spec(kind: NamedKind, deny: &[&str]) -> Arc<NamedSpec> {
    Arc::new(NamedSpec {
        kind,
        users: Users::new(Vec::<Credentials>::new()),
        policy: DestinationPolicy {
            allow: Vec::new(),
            deny: deny
                .iter()
                .map(|c| crate::config::Cidr::parse(c).expect("cidr"))
                .collect(),
            ports: Vec::new(),
        },
        guard: LoopGuard::new(["192.0.2.250:1080".parse::<SocketAddr>().expect("addr")]),
        udp_idle_ms: None,
    })
}

impl Run {
    fn new(kind: NamedKind, deny: &[&str]) -> Run {
        let cfg = RelayConfig {
            idle_ms: 10_000,
            half_close_ms: 5_000,
            cap: 4,
            front: FrontConfig {
                proxy_ms: None,
                sni_ms: None,
                named_ms: (kind != NamedKind::Transparent).then_some(5_000),
            },
            send_proxy: ProxyOut::Off,
            bandwidth: None,
        };
        let mut relay = Relay::new(cfg, 0);
        relay.set_named(spec(kind, deny));
        Run {
            relay,
            ops: Vec::new(),
            life: Lifecycle::new(SockState::Open, SockState::Absent),
            counters: Counters::default(),
        }
    }

    fn step(&mut self, now: Millis, f: impl FnOnce(&mut Relay, &mut Cx<'_>)) -> Vec<ConnOp> {
        let mut cx = Cx::new(&mut self.ops, &mut self.life, &mut self.counters, now);
        f(&mut self.relay, &mut cx);
        std::mem::take(&mut self.ops)
    }

    /// The client's SOCKS5 greeting and request, in one read.
    fn socks_request(&mut self, request: &[u8]) -> Vec<ConnOp> {
        let mut bytes = vec![5, 1, 0];
        bytes.extend_from_slice(request);
        self.step(0, |r, cx| r.start(cx));
        self.step(0, |r, cx| r.handle_front(FrontRead::Data(&bytes), cx))
    }

    fn reply(&self) -> Vec<u8> {
        self.relay.reply_from(0).to_vec()
    }
}

fn name_request(name: &str, port: u16) -> Vec<u8> {
    let mut r = vec![5, 1, 0, 3, name.len() as u8];
    r.extend_from_slice(name.as_bytes());
    r.extend_from_slice(&port.to_be_bytes());
    r
}

fn opens(ops: &[ConnOp]) -> Vec<SocketAddr> {
    ops.iter()
        .filter_map(|op| match op {
            ConnOp::OpenUpstream { target } => Some(target.addr),
            _ => None,
        })
        .collect()
}

#[test]
fn a_name_is_resolved_and_its_addresses_tried_in_turn_then_the_reply_leads() {
    let mut run = Run::new(NamedKind::Socks5, &["127.0.0.0/8"]);
    let ops = run.socks_request(&name_request("app.example", 8080));
    assert!(ops.contains(&ConnOp::Resolve));
    assert!(
        ops.contains(&ConnOp::SendReply { offset: 0 }),
        "the method reply"
    );
    assert_eq!(run.relay.resolve_name(), Some("app.example"));
    run.step(0, |r, cx| r.handle_sent(Side::Client, Ok(2), 0, cx));

    // A denied address among them is skipped; the others are tried in order.
    let ips: Vec<IpAddr> = ["127.0.0.1", "192.0.2.1", "192.0.2.2"]
        .iter()
        .map(|s| s.parse().expect("ip"))
        .collect();
    let ops = run.step(0, |r, cx| r.handle_resolved(Ok(ips), cx));
    assert_eq!(opens(&ops), ["192.0.2.1:8080".parse().expect("addr")]);
    run.step(0, |r, cx| r.handle_socket(Ok(()), 0, cx));
    let ops = run.step(0, |r, cx| r.handle_connect(Err(libc::ECONNREFUSED), 0, cx));
    assert_eq!(opens(&ops), ["192.0.2.2:8080".parse().expect("addr")]);
    run.step(0, |r, cx| r.handle_socket(Ok(()), 0, cx));
    let bound: SocketAddr = "198.51.100.9:40000".parse().expect("addr");
    run.relay.set_bound(Some(bound));
    let ops = run.step(0, |r, cx| r.handle_connect(Ok(()), 0, cx));
    assert!(ops.contains(&ConnOp::SendReply { offset: 0 }));
    assert!(
        ops.contains(&ConnOp::ArmRecv(Side::Client)),
        "the client's bytes flow"
    );
    assert!(
        !ops.contains(&ConnOp::ArmRecv(Side::Upstream)),
        "nothing of the upstream's before the reply"
    );
    assert_eq!(run.reply(), [5, 0, 0, 1, 198, 51, 100, 9, 0x9c, 0x40]);
    let ops = run.step(0, |r, cx| r.handle_sent(Side::Client, Ok(10), 0, cx));
    assert!(ops.contains(&ConnOp::ArmRecv(Side::Upstream)));
}

#[test]
fn a_short_reply_send_continues_from_its_offset() {
    let mut run = Run::new(NamedKind::Socks5, &[]);
    run.socks_request(&[5, 1, 0, 1, 192, 0, 2, 1, 0, 80]);
    run.step(0, |r, cx| r.handle_sent(Side::Client, Ok(2), 0, cx));
    run.step(0, |r, cx| r.handle_socket(Ok(()), 0, cx));
    run.step(0, |r, cx| r.handle_connect(Ok(()), 0, cx));
    let ops = run.step(0, |r, cx| r.handle_sent(Side::Client, Ok(4), 0, cx));
    assert_eq!(ops, [ConnOp::SendReply { offset: 4 }]);
    let ops = run.step(0, |r, cx| r.handle_sent(Side::Client, Ok(6), 0, cx));
    assert!(ops.contains(&ConnOp::ArmRecv(Side::Upstream)));
}

#[test]
fn only_denied_addresses_are_refused_with_a_reply_then_a_fin() {
    let mut run = Run::new(NamedKind::Socks5, &["127.0.0.0/8"]);
    run.socks_request(&name_request("rebind.example", 80));
    run.step(0, |r, cx| r.handle_sent(Side::Client, Ok(2), 0, cx));
    let ips = vec!["127.0.0.1".parse().expect("ip")];
    let ops = run.step(0, |r, cx| r.handle_resolved(Ok(ips), cx));
    assert!(opens(&ops).is_empty(), "never connected");
    assert_eq!(ops, [ConnOp::SendReply { offset: 0 }]);
    assert_eq!(run.reply()[1], 2, "not allowed");
    let ops = run.step(0, |r, cx| r.handle_sent(Side::Client, Ok(10), 0, cx));
    assert!(
        ops.contains(&ConnOp::Shutdown(Side::Client)),
        "a FIN after the reply"
    );
    assert_eq!(run.relay.reason(), Some(CloseReason::DestinationDenied));
}

#[test]
fn a_port_outside_ports_is_refused_before_any_lookup() {
    let mut run = Run::new(NamedKind::Socks5, &[]);
    let mut s = (*spec(NamedKind::Socks5, &[])).clone();
    s.policy.ports = vec![443..=443];
    run.relay.set_named(Arc::new(s));
    let ops = run.socks_request(&name_request("app.example", 80));
    assert!(!ops.contains(&ConnOp::Resolve));
    assert_eq!(run.relay.reason(), Some(CloseReason::DestinationDenied));
}

#[test]
fn a_lost_answer_and_an_unread_reply_still_end() {
    let mut run = Run::new(NamedKind::HttpConnect, &[]);
    run.step(0, |r, cx| r.start(cx));
    let head = b"CONNECT app.example:443 HTTP/1.1\r\n\r\n";
    run.step(0, |r, cx| r.handle_front(FrontRead::Data(head), cx));
    let due = run.relay.deadline().expect("a deadline while resolving");
    assert_eq!(due, RESOLVING_MS);
    let ops = run.step(due, |r, cx| r.handle_timeout(due, cx));
    assert_eq!(ops, [ConnOp::SendReply { offset: 0 }]);
    assert!(run.reply().starts_with(b"HTTP/1.1 504 "));
    // The client never takes the reply: closed at the refusing deadline.
    let until = run.relay.deadline().expect("a deadline while refusing");
    assert_eq!(until, due + REFUSING_MS);
    let ops = run.step(until, |r, cx| r.handle_timeout(until, cx));
    assert!(
        ops.iter()
            .any(|op| matches!(op, ConnOp::CancelAll(Side::Client))),
        "{ops:?}"
    );
    assert!(run.relay.is_closing());
    assert_eq!(run.relay.reason(), Some(CloseReason::ResolveFailed));
}

#[test]
fn transparent_goes_straight_to_its_destination_or_closes() {
    let mut run = Run::new(NamedKind::Transparent, &[]);
    run.relay
        .set_destination("192.0.2.7:443".parse().expect("addr"));
    let ops = run.step(0, |r, cx| r.start(cx));
    assert_eq!(opens(&ops), ["192.0.2.7:443".parse().expect("addr")]);

    let mut run = Run::new(NamedKind::Transparent, &[]);
    run.relay
        .set_destination("192.0.2.250:1080".parse().expect("addr"));
    run.step(0, |r, cx| r.start(cx));
    assert_eq!(run.relay.reason(), Some(CloseReason::LoopRefused));
    assert!(run.relay.is_closing(), "no reply to send: closed at once");

    let mut run = Run::new(NamedKind::Transparent, &[]);
    run.step(0, |r, cx| r.start(cx));
    assert_eq!(run.relay.reason(), Some(CloseReason::NoDestination));
}
