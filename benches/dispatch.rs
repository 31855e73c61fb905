//! Completion dispatch in the shard engine (`Engine::handle_cqe` + `take_ops`),
//! with no kernel: the engine is set up through its public API the way
//! `tests/simulator.rs` drives it (accept, socket, connect and linked-timeout
//! completions), one forwarding listener with N = 1k and 10k relaying
//! connections, then fed the completions a bulk relay sees.
//!
//! * `relay/N`: one iteration is both directions of the next connection in
//!   round-robin order: a multishot receive completion with data (buffer id
//!   in the flags, `IORING_CQE_F_MORE` set) on the client, the full send
//!   completion on the upstream that follows, and the same from upstream to
//!   client: 4 completions, 4 `Op`s (2 `Send`, 2 `Release`) taken with
//!   `take_ops` and counted. Released buffer ids go back to a free list, as
//!   the ring would hand them out again. Throughput = completions.
//! * `stale/recv_buffer`, `stale/send`: one completion whose slot generation
//!   no longer matches (the slot was freed and reused), dropped and counted;
//!   a receive carrying a buffer also yields one `Op::Release`. One iteration
//!   is one completion.
//!
//! The clock does not move (`now` is fixed), so no timer is inserted or fires:
//! this is dispatch and the relay state machine, not the timer wheel (see
//! `benches/timer_wheel.rs`). No tracing subscriber is installed, as with
//! `--log-level info` the engine's `debug!` lines are filtered out.

use std::hint::black_box;
use std::time::Duration;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use ringfwd::shard::engine::{
    CQE_F_BUFFER, CQE_F_MORE, Engine, EngineConfig, Fd, ListenerKind, ListenerSpec, Op, RouteSpec,
};
use ringfwd::shard::slab::ConnId;
use ringfwd::shard::token::{GEN_MASK, OpKind, SlotId, Token};
use ringfwd::stats::Counter;
use ringfwd::tcp::Side;

const SIZES: [usize; 2] = [1_000, 10_000];
const LISTEN_FD: i32 = 3;
/// The default `buffers_per_shard` and `buffers_per_direction`.
const BUFFERS: u32 = 4096;
const CAP: u32 = 16;
/// Bytes per receive completion: a full default (16 KiB) buffer.
const LEN: i32 = 16 * 1024;
const NOW: u64 = 1_000;

/// The user_data values the kernel would hand back for one relaying connection.
#[derive(Clone, Copy)]
struct ConnTokens {
    slot: SlotId,
    recv_client: u64,
    recv_upstream: u64,
    send_client: u64,
    send_upstream: u64,
}

impl ConnTokens {
    fn new(slot: SlotId) -> ConnTokens {
        let t = |kind, side| Token::new(kind, side, slot).encode();
        ConnTokens {
            slot,
            recv_client: t(OpKind::Recv, Side::Client),
            recv_upstream: t(OpKind::Recv, Side::Upstream),
            send_client: t(OpKind::Send, Side::Client),
            send_upstream: t(OpKind::Send, Side::Upstream),
        }
    }
}

struct Fixture {
    engine: Engine,
    conns: Vec<ConnTokens>,
    /// Buffer ids not held by the engine (the kernel's ring).
    free: Vec<u16>,
    ops: Vec<Op>,
    next: usize,
}

fn take(engine: &mut Engine) -> Vec<Op> {
    let mut ops = Vec::new();
    engine.take_ops(&mut ops);
    ops
}

/// An engine with `n` connections in the relaying phase, both receives armed.
fn fixture(n: usize) -> Fixture {
    let mut engine = Engine::new(
        EngineConfig {
            shard: 0,
            buffers: BUFFERS,
            cap: CAP,
            listeners: vec![ListenerSpec {
                name: "bench".into(),
                fd: LISTEN_FD,
                kind: ListenerKind::Forward { route: 0 },
                limit: n as u32,
                front: Default::default(),
            }],
            routes: vec![RouteSpec {
                upstreams: vec![
                    "10.0.0.1:80".parse().expect("addr"),
                    "10.0.0.2:80".parse().expect("addr"),
                ],
                weights: Vec::new(),
                balance: ringfwd::config::Balance::RoundRobin,
                passive: ringfwd::config::PassiveHealth::default(),
                connect_timeout_ms: 1_000,
                idle_ms: 600_000,
                half_close_ms: 60_000,
                bandwidth: None,
                upstream_proto: Default::default(),
            }],
            ..EngineConfig::default()
        },
        0,
    );
    engine.start();
    let accept = match take(&mut engine).as_slice() {
        [
            Op::AcceptMulti {
                token,
                fd: Fd(LISTEN_FD),
            },
        ] => *token,
        other => panic!("start: expected one accept, got {other:?}"),
    };
    let mut conns = Vec::with_capacity(n);
    let mut fd = 100;
    for _ in 0..n {
        engine.handle_cqe(accept, fd, CQE_F_MORE, 0);
        let socket = match take(&mut engine).as_slice() {
            [Op::Socket { token, .. }] => *token,
            other => panic!("accept: expected a socket op, got {other:?}"),
        };
        engine.handle_cqe(socket, fd + 1, 0, 0);
        let (connect, timeout) = match take(&mut engine).as_slice() {
            [
                Op::Connect {
                    token,
                    timeout_token,
                    ..
                },
            ] => (*token, *timeout_token),
            other => panic!("socket: expected a connect op, got {other:?}"),
        };
        engine.handle_cqe(connect, 0, 0, 0);
        let ops = take(&mut engine);
        assert_eq!(ops.len(), 2, "connect: expected two receives, got {ops:?}");
        assert!(ops.iter().all(|op| matches!(op, Op::RecvMulti { .. })));
        // The linked timeout, cancelled by the connect that finished in time.
        engine.handle_cqe(timeout, -libc::ECANCELED, 0, 0);
        assert!(take(&mut engine).is_empty());
        let slot = Token::decode(connect).expect("engine token").slot;
        conns.push(ConnTokens::new(slot));
        fd += 2;
    }
    assert_eq!(engine.connections(), n);
    let mut f = Fixture {
        engine,
        conns,
        free: (0..BUFFERS as u16).rev().collect(),
        ops: Vec::with_capacity(64),
        next: 0,
    };
    // One checked round trip per direction on the first connection: exactly
    // the ops a relay issues, and the buffer comes back.
    let c = f.conns[0];
    for (recv, send) in [
        (c.recv_client, c.send_upstream),
        (c.recv_upstream, c.send_client),
    ] {
        let bid = f.free.pop().expect("free buffer");
        f.engine.handle_cqe(recv, LEN, recv_flags(bid), NOW);
        match take(&mut f.engine).as_slice() {
            [
                Op::Send {
                    token,
                    bid: b,
                    offset: 0,
                    len,
                    ..
                },
            ] if *token == send && *b == bid && *len == LEN as u32 => {}
            other => panic!("recv: expected one send of buffer {bid}, got {other:?}"),
        }
        f.engine.handle_cqe(send, LEN, 0, NOW);
        match take(&mut f.engine).as_slice() {
            [Op::Release { bid: b }] if *b == bid => f.free.push(bid),
            other => panic!("send: expected the release of buffer {bid}, got {other:?}"),
        }
    }
    assert_eq!(f.engine.held_buffers(), 0);
    assert_eq!(step(&mut f), 4, "a round is 2 sends and 2 releases");
    f.next = 0;
    f
}

fn recv_flags(bid: u16) -> u32 {
    CQE_F_BUFFER | CQE_F_MORE | (u32::from(bid) << 16)
}

/// Both directions of the next connection; returns the number of Ops produced.
fn step(f: &mut Fixture) -> usize {
    let c = f.conns[f.next];
    f.next += 1;
    if f.next == f.conns.len() {
        f.next = 0;
    }
    for (recv, send) in [
        (c.recv_client, c.send_upstream),
        (c.recv_upstream, c.send_client),
    ] {
        let bid = f.free.pop().unwrap_or(0);
        f.engine.handle_cqe(recv, LEN, recv_flags(bid), NOW);
        f.engine.handle_cqe(send, LEN, 0, NOW);
    }
    f.engine.take_ops(&mut f.ops);
    let n = f.ops.len();
    for op in f.ops.drain(..) {
        if let Op::Release { bid } = op {
            f.free.push(bid);
        }
    }
    n
}

fn relay(c: &mut Criterion) {
    let mut group = c.benchmark_group("dispatch/relay");
    group
        .sample_size(20)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(2));
    for n in SIZES {
        group.throughput(Throughput::Elements(4));
        group.bench_function(BenchmarkId::from_parameter(n), |b| {
            let mut f = fixture(n);
            b.iter(|| black_box(step(&mut f)));
            assert_eq!(f.engine.stats().get(Counter::StaleCompletions), 0);
        });
    }
    group.finish();
}

fn stale(c: &mut Criterion) {
    let mut group = c.benchmark_group("dispatch/stale");
    group
        .sample_size(20)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(2));
    group.throughput(Throughput::Elements(1));
    let mut f = fixture(SIZES[0]);
    // The live connection in slot 0 has a newer generation than the token.
    let live = f.conns[0].slot;
    let old = SlotId {
        index: live.index,
        generation: live.generation.wrapping_add(1) & GEN_MASK,
    };
    let recv = Token::new(OpKind::Recv, Side::Client, old).encode();
    let send = Token::new(OpKind::Send, Side::Upstream, old).encode();
    group.bench_function("recv_buffer", |b| {
        b.iter(|| {
            f.engine
                .handle_cqe(black_box(recv), LEN, recv_flags(7), NOW);
            f.engine.take_ops(&mut f.ops);
            let n = f.ops.len();
            f.ops.clear();
            black_box(n)
        });
    });
    group.bench_function("send", |b| {
        b.iter(|| {
            f.engine.handle_cqe(black_box(send), LEN, 0, NOW);
            f.engine.take_ops(&mut f.ops);
            let n = f.ops.len();
            f.ops.clear();
            black_box(n)
        });
    });
    assert!(f.engine.stats().get(Counter::StaleCompletions) > 0);
    assert!(
        f.engine.is_live(ConnId(live)),
        "a stale completion left the live conn alone"
    );
    group.finish();
}

criterion_group!(benches, relay, stale);
criterion_main!(benches);
