//! The service's operations against a fake kernel: what it asks the ring
//! for, in what order, and what it does with each completion.

use super::*;
use crate::dns::message::build::reply;
use crate::dns::message::{QType, Record, decode_reply};
use crate::dns::{Hosts, Prefer};
use crate::shard::context::FdBudget;
use simple_dns::RCODE;

const NS: &str = "192.0.2.53:53";

fn cfg(nameservers: &[&str]) -> ResolverConfig {
    ResolverConfig {
        nameservers: nameservers.iter().map(|s| s.parse().unwrap()).collect(),
        timeout: 1000,
        attempts: 1,
        prefer: Prefer::Ipv4Only,
        ..ResolverConfig::default()
    }
}

fn conn(index: u32) -> Asker {
    Asker::Conn(conn_id(index))
}

fn conn_id(index: u32) -> ConnId {
    ConnId(SlotId {
        index,
        generation: 7,
    })
}

fn ops(ctx: &mut Ctx) -> Vec<Op> {
    let mut v = Vec::new();
    ctx.take_ops(&mut v);
    v
}

fn decode(token: u64) -> Token {
    Token::decode(token).expect("a token this program made")
}

/// Completes the socket and connect of a fresh nameserver socket as fd
/// `fd`; returns the ops that follow the connect.
fn open(svc: &mut ResolveService, ctx: &mut Ctx, fd: i32, now: Millis) -> Vec<Op> {
    let first = ops(ctx);
    let [Op::UdpSocket { token, family }] = first.as_slice() else {
        panic!("expected one socket op, got {first:?}");
    };
    assert_eq!(*family, Family::V4);
    svc.on_cqe(ctx, decode(*token), fd, None, now);
    let connect = ops(ctx);
    let [
        Op::UdpConnect {
            token, fd: f, addr, ..
        },
    ] = connect.as_slice()
    else {
        panic!("expected a connect, got {connect:?}");
    };
    assert_eq!((f.0, addr.to_string().as_str()), (fd, NS));
    svc.on_cqe(ctx, decode(*token), 0, None, now);
    ops(ctx)
}

/// The (token, query id) of each query sent in `ops`.
fn queries(ops: &[Op]) -> Vec<(u64, u16)> {
    ops.iter()
        .filter_map(|op| match op {
            Op::SendOwned { token, bytes, .. } => Some((*token, decode_reply(bytes)?.id)),
            _ => None,
        })
        .collect()
}

fn recv_token(ops: &[Op]) -> u64 {
    ops.iter()
        .find_map(|op| match op {
            Op::RecvOwned { token, len, .. } => {
                assert_eq!(*len, REPLY_BUFFER);
                Some(*token)
            }
            _ => None,
        })
        .expect("a receive is armed")
}

#[test]
fn a_lookup_opens_a_socket_sends_a_query_and_answers_from_the_reply() {
    let mut ctx = Ctx::new(0, FdBudget::Unlimited, 0);
    let mut svc = ResolveService::new(cfg(&[NS]), 1);
    assert_eq!(svc.lookup(&mut ctx, conn(3), "app.example", 0), None);
    let after_connect = open(&mut svc, &mut ctx, 40, 0);
    assert!(
        matches!(after_connect[0], Op::RecvOwned { fd: Fd(40), .. }),
        "{after_connect:?}"
    );
    let sent = queries(&after_connect);
    assert_eq!(sent.len(), 1);
    assert!(
        ctx.timers.next_deadline().is_some_and(|d| d <= 1000),
        "the per-try timer is armed"
    );
    // The send completes; then the reply arrives.
    svc.on_cqe(&mut ctx, decode(sent[0].0), 29, None, 1);
    let bytes = reply(
        sent[0].1,
        "app.example",
        QType::A,
        RCODE::NoError,
        &[(
            "app.example",
            60,
            Record::Addr("192.0.2.80".parse().unwrap()),
        )],
        None,
    );
    let recv = recv_token(&after_connect);
    let n = i32::try_from(bytes.len()).unwrap();
    svc.on_cqe(&mut ctx, decode(recv), n, Some(&bytes), 2);
    let mut done = Vec::new();
    svc.take_done(&mut done);
    assert_eq!(
        done,
        vec![(conn(3), Ok(vec!["192.0.2.80".parse().unwrap()]))]
    );
    let rearmed = ops(&mut ctx);
    assert!(
        matches!(rearmed.as_slice(), [Op::RecvOwned { fd: Fd(40), .. }]),
        "{rearmed:?}"
    );
    assert_eq!(ctx.counters.get(Counter::DnsQueries), 1);
    // The next lookup of the name is a cache hit: no operation at all.
    let hit = svc.lookup(&mut ctx, conn(4), "APP.example.", 3);
    assert_eq!(hit, Some(Ok(vec!["192.0.2.80".parse().unwrap()])));
    assert!(ops(&mut ctx).is_empty());
    assert_eq!(ctx.counters.get(Counter::DnsCacheHits), 1);
    // Finishing: the receive is cancelled before the socket closes.
    svc.shutdown(&mut ctx);
    let closing = ops(&mut ctx);
    assert!(
        matches!(
            closing.as_slice(),
            [
                Op::CancelFd { fd: Fd(40), .. },
                Op::Close { fd: Fd(40), .. }
            ]
        ),
        "{closing:?}"
    );
    for op in &closing {
        if let Op::CancelFd { token, .. } | Op::Close { token, .. } = op {
            svc.on_cqe(&mut ctx, decode(*token), 0, None, 4);
        }
    }
    svc.on_cqe(
        &mut ctx,
        decode(rearmed_token(&rearmed)),
        -libc::ECANCELED,
        None,
        4,
    );
    assert_eq!(ctx.own_inflight(), 0, "every operation came back");
    assert!(ops(&mut ctx).is_empty(), "nothing re-armed after shutdown");
    // A lookup after shutdown opens no socket (nobody would close it).
    assert_eq!(svc.lookup(&mut ctx, conn(5), "new.example", 5), None);
    assert!(ops(&mut ctx).is_empty(), "no socket after shutdown");
}

fn rearmed_token(ops: &[Op]) -> u64 {
    recv_token(ops)
}

#[test]
fn queries_wait_for_the_connect_and_time_out_on_the_timer() {
    let mut ctx = Ctx::new(0, FdBudget::Unlimited, 0);
    let mut svc = ResolveService::new(cfg(&[NS]), 2);
    assert_eq!(svc.lookup(&mut ctx, conn(1), "a.example", 0), None);
    assert_eq!(svc.lookup(&mut ctx, conn(2), "b.example", 0), None);
    let after_connect = open(&mut svc, &mut ctx, 41, 0);
    assert_eq!(
        queries(&after_connect).len(),
        2,
        "both queued queries go out once connected"
    );
    let mut fired = Vec::new();
    ctx.timers.advance(1000, &mut fired);
    let [TimerKey::Resolver { deadline }] = fired.as_slice() else {
        panic!("expected the resolver's timer, got {fired:?}");
    };
    svc.timer(&mut ctx, *deadline, 1000);
    let mut done = Vec::new();
    svc.take_done(&mut done);
    done.sort_by_key(|d| match d.0 {
        Asker::Conn(id) => id.0.index,
        Asker::Assoc(id) => id.0.index,
    });
    assert_eq!(
        done,
        vec![
            (conn(1), Err(ResolveError::Timeout)),
            (conn(2), Err(ResolveError::Timeout))
        ]
    );
    assert_eq!(ctx.counters.get(Counter::DnsTimeouts), 2);
}

#[test]
fn a_failed_socket_or_connect_drops_its_queries_and_the_next_try_opens_again() {
    let mut ctx = Ctx::new(0, FdBudget::Unlimited, 0);
    let two = ResolverConfig {
        attempts: 2,
        ..cfg(&[NS])
    };
    let mut svc = ResolveService::new(two, 3);
    assert_eq!(svc.lookup(&mut ctx, conn(1), "a.example", 0), None);
    let first = ops(&mut ctx);
    let [Op::UdpSocket { token, .. }] = first.as_slice() else {
        panic!("{first:?}");
    };
    svc.on_cqe(&mut ctx, decode(*token), -libc::EMFILE, None, 0);
    assert!(ops(&mut ctx).is_empty());
    let mut fired = Vec::new();
    ctx.timers.advance(1000, &mut fired);
    svc.timer(&mut ctx, 1000, 1000);
    // The retry makes a new socket; this time the connect fails.
    let again = ops(&mut ctx);
    let [Op::UdpSocket { token, .. }] = again.as_slice() else {
        panic!("{again:?}");
    };
    svc.on_cqe(&mut ctx, decode(*token), 42, None, 1000);
    let connect = ops(&mut ctx);
    let [Op::UdpConnect { token, .. }] = connect.as_slice() else {
        panic!("{connect:?}");
    };
    svc.on_cqe(&mut ctx, decode(*token), -libc::ENETUNREACH, None, 1000);
    let closed = ops(&mut ctx);
    assert!(
        matches!(closed.as_slice(), [Op::Close { fd: Fd(42), .. }]),
        "{closed:?}"
    );
    svc.on_cqe(&mut ctx, decode(close_token(&closed)), 0, None, 1000);
    assert_eq!(ctx.own_inflight(), 0);
    assert_eq!(svc.open_sockets(), 0);
}

fn close_token(ops: &[Op]) -> u64 {
    ops.iter()
        .find_map(|op| match op {
            Op::Close { token, .. } => Some(*token),
            _ => None,
        })
        .expect("a close")
}

#[test]
fn a_reload_with_other_nameservers_closes_the_old_sockets_and_ignores_their_completions() {
    let mut ctx = Ctx::new(0, FdBudget::Unlimited, 0);
    let mut svc = ResolveService::new(cfg(&[NS]), 4);
    assert_eq!(svc.lookup(&mut ctx, conn(1), "a.example", 0), None);
    let after_connect = open(&mut svc, &mut ctx, 43, 0);
    let old_recv = recv_token(&after_connect);
    let mut new = cfg(&["198.51.100.53:53"]);
    new.hosts = Hosts::parse("10.9.9.9 a.example");
    svc.reload(&mut ctx, &new, 10);
    let closing = ops(&mut ctx);
    assert!(
        matches!(
            closing.as_slice(),
            [
                Op::CancelFd { fd: Fd(43), .. },
                Op::Close { fd: Fd(43), .. }
            ]
        ),
        "{closing:?}"
    );
    // A reply arriving on the old socket's receive is not acted on.
    let sent = queries(&after_connect);
    let bytes = reply(
        sent[0].1,
        "a.example",
        QType::A,
        RCODE::NoError,
        &[("a.example", 60, Record::Addr("192.0.2.1".parse().unwrap()))],
        None,
    );
    svc.on_cqe(
        &mut ctx,
        decode(old_recv),
        i32::try_from(bytes.len()).unwrap(),
        Some(&bytes),
        11,
    );
    assert!(ops(&mut ctx).is_empty(), "the old receive is not re-armed");
    // The reloaded hosts file answers at once.
    assert_eq!(
        svc.lookup(&mut ctx, conn(2), "a.example", 12),
        Some(Ok(vec!["10.9.9.9".parse().unwrap()]))
    );
    assert_eq!(svc.open_sockets(), 0);
}

#[test]
fn no_nameserver_answers_at_once_without_an_operation() {
    let mut ctx = Ctx::new(0, FdBudget::Unlimited, 0);
    let mut svc = ResolveService::new(cfg(&[]), 5);
    assert_eq!(
        svc.lookup(&mut ctx, conn(1), "a.example", 0),
        Some(Err(ResolveError::NoNameservers))
    );
    assert_eq!(
        svc.lookup(&mut ctx, conn(2), "b.example", 0),
        Some(Err(ResolveError::NoNameservers))
    );
    assert!(ops(&mut ctx).is_empty());
    assert_eq!(ctx.timers.next_deadline(), None);
}

#[test]
fn waiters_and_askers_convert_both_ways() {
    for (index, generation) in [(0, 0), (MAX_INDEX, GEN_MASK), (12345, 678)] {
        let slot = SlotId { index, generation };
        for asker in [Asker::Conn(ConnId(slot)), Asker::Assoc(AssocId(slot))] {
            assert_eq!(asker_of(waiter_of(asker)), asker);
        }
    }
}
