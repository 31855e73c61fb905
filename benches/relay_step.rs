//! One step of the TCP relay state machine, without the engine (no token
//! decoding, no slab lookup, no lowering to ring `Op`s): `Relay` and `Pipe`
//! from `src/tcp`, on a connection already in the relaying phase.
//!
//! * `relay/full`: one iteration is `Relay::handle_recv` (16 KiB of data in a
//!   provided buffer, multishot still armed) on the client side, then
//!   `handle_sent` on the upstream side taking all of it: 2 `ConnOp`s out
//!   (`Send`, `Release`).
//! * `relay/short`: the same, but the kernel takes half the bytes first: the
//!   send is continued from the offset, then completes: 3 `ConnOp`s (`Send`,
//!   `Send` from the offset, `Release`).
//! * `relay/queued4`: four receive completions arrive while the first send is
//!   in flight (a bulk flow), then four full send completions: 8 `ConnOp`s
//!   (4 `Send`, 4 `Release`).
//! * `pipe/full`: one direction alone: `Pipe::on_data` then `Pipe::on_sent`
//!   for the whole buffer: 2 `ConnOp`s.
//!
//! Throughput is in `ConnOp`s produced (counted from one checked run in the
//! setup). The output vector and the relay are reused, so the steady state is
//! allocation-free, as in the shard.

use std::hint::black_box;
use std::time::Duration;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use ringfwd::stats::ShardStats;
use ringfwd::tcp::pipe::Pipe;
use ringfwd::tcp::relay::{Relay, RelayConfig};
use ringfwd::tcp::{ConnOp, RecvEvent, Side};

const LEN: u32 = 16 * 1024;
const NOW: u64 = 1_000;

/// A relay whose upstream connected: both receives armed, nothing queued.
fn relaying() -> (Relay, ShardStats, Vec<ConnOp>) {
    let cfg = RelayConfig {
        upstreams: 2,
        first_upstream: 0,
        idle_ms: 600_000,
        half_close_ms: 60_000,
        cap: 16,
    };
    let mut stats = ShardStats::default();
    let mut out = Vec::with_capacity(32);
    let mut r = Relay::new(cfg, 0);
    r.start(&mut out);
    assert_eq!(out, [ConnOp::OpenUpstream { upstream: 0 }]);
    out.clear();
    r.handle_socket(Ok(()), 0, &mut out, &mut stats);
    assert_eq!(out, [ConnOp::Connect { upstream: 0 }]);
    out.clear();
    r.handle_connect(Ok(()), 0, &mut out, &mut stats);
    assert_eq!(
        out,
        [
            ConnOp::ArmRecv(Side::Client),
            ConnOp::ArmRecv(Side::Upstream)
        ]
    );
    out.clear();
    r.handle_connect_timeout(&mut out);
    assert!(out.is_empty());
    (r, stats, out)
}

fn data(bid: u16) -> RecvEvent {
    RecvEvent::Data { bid, len: LEN }
}

fn full(r: &mut Relay, s: &mut ShardStats, out: &mut Vec<ConnOp>, bid: u16) {
    r.handle_recv(Side::Client, data(bid), true, NOW, out, s);
    r.handle_sent(Side::Upstream, Ok(LEN), NOW, out, s);
}

fn short(r: &mut Relay, s: &mut ShardStats, out: &mut Vec<ConnOp>, bid: u16) {
    r.handle_recv(Side::Client, data(bid), true, NOW, out, s);
    r.handle_sent(Side::Upstream, Ok(LEN / 2), NOW, out, s);
    r.handle_sent(Side::Upstream, Ok(LEN - LEN / 2), NOW, out, s);
}

fn queued4(r: &mut Relay, s: &mut ShardStats, out: &mut Vec<ConnOp>, bid: u16) {
    for i in 0..4 {
        r.handle_recv(Side::Client, data(bid.wrapping_add(i)), true, NOW, out, s);
    }
    for _ in 0..4 {
        r.handle_sent(Side::Upstream, Ok(LEN), NOW, out, s);
    }
}

type Step = fn(&mut Relay, &mut ShardStats, &mut Vec<ConnOp>, u16);

fn relay(c: &mut Criterion) {
    let mut group = c.benchmark_group("relay_step/relay");
    group
        .sample_size(20)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(2));
    let cases: [(&str, Step, &[ConnOp]); 3] = [
        (
            "full",
            full,
            &[
                ConnOp::Send {
                    side: Side::Upstream,
                    bid: 0,
                    offset: 0,
                    len: LEN,
                },
                ConnOp::Release(0),
            ],
        ),
        (
            "short",
            short,
            &[
                ConnOp::Send {
                    side: Side::Upstream,
                    bid: 0,
                    offset: 0,
                    len: LEN,
                },
                ConnOp::Send {
                    side: Side::Upstream,
                    bid: 0,
                    offset: LEN / 2,
                    len: LEN - LEN / 2,
                },
                ConnOp::Release(0),
            ],
        ),
        ("queued4", queued4, &[]),
    ];
    for (name, step, want) in cases {
        let (mut r, mut stats, mut out) = relaying();
        step(&mut r, &mut stats, &mut out, 0);
        if !want.is_empty() {
            assert_eq!(out, want, "{name}: unexpected ops");
        }
        let sends = out
            .iter()
            .filter(|op| matches!(op, ConnOp::Send { .. }))
            .count();
        let releases = out
            .iter()
            .filter(|op| matches!(op, ConnOp::Release(_)))
            .count();
        assert!(sends > 0 && releases > 0 && sends + releases == out.len());
        if name == "queued4" {
            assert_eq!((sends, releases), (4, 4), "queued4: unexpected ops {out:?}");
        }
        assert!(r.holds_no_buffers(), "{name}: every buffer released");
        let per_iter = out.len() as u64;
        out.clear();
        group.throughput(Throughput::Elements(per_iter));
        let mut bid = 0u16;
        group.bench_function(name, |b| {
            b.iter(|| {
                bid = bid.wrapping_add(4) & 0x0fff;
                step(&mut r, &mut stats, &mut out, black_box(bid));
                let n = out.len();
                out.clear();
                black_box(n)
            });
        });
        assert!(r.holds_no_buffers() && !r.is_finished());
        assert!(stats.bytes_client_to_upstream > 0);
    }
    group.finish();
}

fn pipe(c: &mut Criterion) {
    let mut group = c.benchmark_group("relay_step/pipe");
    group
        .sample_size(20)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(2));
    let mut p = Pipe::new(Side::Client, Side::Upstream, 16);
    let mut out = Vec::with_capacity(16);
    p.arm_if_allowed(&mut out);
    assert_eq!(out, [ConnOp::ArmRecv(Side::Client)]);
    out.clear();
    let cycle = |p: &mut Pipe, out: &mut Vec<ConnOp>, bid: u16| {
        p.on_data(bid, LEN, true, out);
        p.on_sent(LEN, out);
    };
    cycle(&mut p, &mut out, 0);
    assert_eq!(
        out,
        [
            ConnOp::Send {
                side: Side::Upstream,
                bid: 0,
                offset: 0,
                len: LEN
            },
            ConnOp::Release(0)
        ]
    );
    out.clear();
    group.throughput(Throughput::Elements(2));
    let mut bid = 0u16;
    group.bench_function("full", |b| {
        b.iter(|| {
            bid = (bid + 1) & 0x0fff;
            cycle(&mut p, &mut out, black_box(bid));
            let n = out.len();
            out.clear();
            black_box(n)
        });
    });
    assert!(p.holds_no_buffers());
    group.finish();
}

criterion_group!(benches, relay, pipe);
criterion_main!(benches);
