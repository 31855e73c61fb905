//! A UDP ASSOCIATE control connection driven by hand: the ask, the reply
//! naming the association's socket, the watch for the client's close, and
//! the association's own end closing it.

use std::net::SocketAddr;
use std::sync::Arc;

use super::*;
use crate::config::forward::{DestinationPolicy, Users};
use crate::stats::Counters;
use crate::tcp::front::FrontConfig;
use crate::tcp::handshake::{LoopGuard, NamedSpec};
use crate::tcp::lifecycle::{Lifecycle, SockState};
use crate::tcp::relay::{Ends, ProxyOut, RelayConfig};

struct Run {
    relay: Relay,
    ops: Vec<ConnOp>,
    life: Lifecycle,
    counters: Counters,
}

const ASSOCIATE: &[u8] = &[5, 1, 0, 5, 3, 0, 1, 0, 0, 0, 0, 0, 0];

impl Run {
    /// A control connection from 192.0.2.7 to 198.51.100.1:1080 that sent
    /// its greeting and UDP ASSOCIATE in one read.
    fn associating() -> (Run, Vec<ConnOp>) {
        let cfg = RelayConfig {
            idle_ms: 1_000,
            half_close_ms: 1_000,
            cap: 4,
            front: FrontConfig {
                proxy_ms: None,
                sni_ms: None,
                named_ms: Some(5_000),
            },
            send_proxy: ProxyOut::Off,
            bandwidth: None,
        };
        let mut relay = Relay::new(cfg, 0);
        relay.set_named(Arc::new(NamedSpec {
            kind: NamedKind::Socks5,
            users: Users::default(),
            policy: DestinationPolicy {
                allow: Vec::new(),
                deny: Vec::new(),
                ports: Vec::new(),
            },
            guard: LoopGuard::default(),
            udp_idle_ms: Some(60_000),
        }));
        relay.set_ends(Ends {
            peer: Some("192.0.2.7:5000".parse().expect("addr")),
            local: Some("198.51.100.1:1080".parse().expect("addr")),
            original: None,
        });
        let mut run = Run {
            relay,
            ops: Vec::new(),
            life: Lifecycle::new(SockState::Open, SockState::Absent),
            counters: Counters::default(),
        };
        run.step(0, |r, cx| r.start(cx));
        let ops = run.step(0, |r, cx| r.handle_front(FrontRead::Data(ASSOCIATE), cx));
        (run, ops)
    }

    fn step(&mut self, now: Millis, f: impl FnOnce(&mut Relay, &mut Cx<'_>)) -> Vec<ConnOp> {
        let mut cx = Cx::new(&mut self.ops, &mut self.life, &mut self.counters, now);
        f(&mut self.relay, &mut cx);
        std::mem::take(&mut self.ops)
    }

    fn closes(ops: &[ConnOp]) -> bool {
        ops.iter().any(|op| {
            matches!(
                op,
                ConnOp::Close {
                    side: Side::Client,
                    ..
                } | ConnOp::CancelAll(Side::Client)
            )
        })
    }
}

#[test]
fn the_ask_names_the_peer_and_the_address_it_reached() {
    let (run, ops) = Run::associating();
    assert!(ops.contains(&ConnOp::Associate), "{ops:?}");
    assert!(run.relay.is_association());
    let ask = run.relay.association_ask().expect("an ask");
    assert_eq!(ask.client, "192.0.2.7".parse::<std::net::IpAddr>().unwrap());
    assert_eq!(
        ask.local,
        "198.51.100.1".parse::<std::net::IpAddr>().unwrap()
    );
    assert_eq!(ask.spec.udp_idle_ms, Some(60_000));
    assert_eq!(ask.user, None, "no users on this listener");
    assert!(
        !ops.iter()
            .any(|op| matches!(op, ConnOp::OpenUpstream { .. } | ConnOp::NextTarget)),
        "no upstream connection for an association: {ops:?}"
    );
}

#[test]
fn the_reply_names_the_associations_socket_and_the_connection_is_then_only_watched() {
    let (mut run, _) = Run::associating();
    run.step(0, |r, cx| r.handle_sent(Side::Client, Ok(2), 0, cx));
    let bound: SocketAddr = "198.51.100.1:40000".parse().expect("addr");
    let ops = run.step(1, |r, cx| r.handle_associated(Ok(bound), cx));
    assert!(ops.contains(&ConnOp::SendReply { offset: 0 }), "{ops:?}");
    assert!(
        ops.contains(&ConnOp::FrontRecv),
        "its close is watched: {ops:?}"
    );
    assert_eq!(
        run.relay.reply_from(0),
        [5, 0, 0, 1, 198, 51, 100, 1, 0x9c, 0x40]
    );
    assert_eq!(
        run.relay.deadline(),
        None,
        "the association's idle timeout rules, not the TCP one"
    );
    // Bytes the client sends are discarded and the watch goes on.
    let ops = run.step(2, |r, cx| r.handle_front(FrontRead::Data(b"junk"), cx));
    assert_eq!(ops, [ConnOp::FrontRecv]);
    // The client's close ends it (and, through the shard, the association).
    let ops = run.step(3, |r, cx| r.handle_front(FrontRead::Eof, cx));
    assert!(Run::closes(&ops), "{ops:?}");
    assert_eq!(run.relay.reason(), Some(CloseReason::ClientEof));
}

#[test]
fn an_association_that_cannot_open_is_answered_with_a_failure_then_closed() {
    let (mut run, _) = Run::associating();
    run.step(0, |r, cx| r.handle_sent(Side::Client, Ok(2), 0, cx));
    let ops = run.step(1, |r, cx| r.handle_associated(Err(libc::EMFILE), cx));
    assert!(ops.contains(&ConnOp::SendReply { offset: 0 }), "{ops:?}");
    assert_eq!(run.relay.reply_from(0)[..2], [5, 1], "general failure");
    let ops = run.step(2, |r, cx| r.handle_sent(Side::Client, Ok(10), 2, cx));
    assert!(
        ops.contains(&ConnOp::Shutdown(Side::Client)),
        "a FIN after the reply: {ops:?}"
    );
}

#[test]
fn the_associations_own_end_closes_the_control_connection() {
    let (mut run, _) = Run::associating();
    let bound: SocketAddr = "198.51.100.1:40000".parse().expect("addr");
    run.step(1, |r, cx| r.handle_associated(Ok(bound), cx));
    let ops = run.step(5, |r, cx| r.association_ended(CloseReason::IdleTimeout, cx));
    assert!(Run::closes(&ops), "{ops:?}");
    assert_eq!(run.relay.reason(), Some(CloseReason::IdleTimeout));
}

#[test]
fn a_lost_answer_does_not_hold_the_connection() {
    let (mut run, _) = Run::associating();
    let until = run.relay.deadline().expect("a bound on the wait");
    assert_eq!(until, ASSOCIATING_MS);
    run.step(0, |r, cx| r.handle_sent(Side::Client, Ok(2), 0, cx));
    let ops = run.step(until, |r, cx| r.handle_timeout(until, cx));
    assert!(ops.contains(&ConnOp::SendReply { offset: 0 }), "{ops:?}");
    assert_eq!(
        run.relay.reply_from(0)[..2],
        [5, 4],
        "host unreachable (timed out)"
    );
}
