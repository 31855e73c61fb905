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
use std::net::SocketAddr;

use ringfwd::stats::{Counter, Counters};
use ringfwd::tcp::cx::Cx;
use ringfwd::tcp::lifecycle::{Done, Lifecycle, SockState};
use ringfwd::tcp::pipe::Pipe;
use ringfwd::tcp::relay::{Relay, RelayConfig};
use ringfwd::tcp::{ConnOp, RecvEvent, Side};
use ringfwd::upstream::{Outcome, Target, UpstreamId};

const LEN: u32 = 16 * 1024;
const NOW: u64 = 1_000;

/// What the shard keeps beside a relay: its queue, accounting and counters.
struct St {
    out: Vec<ConnOp>,
    life: Lifecycle,
    counters: Counters,
}

impl St {
    fn cx(&mut self) -> Cx<'_> {
        Cx::new(&mut self.out, &mut self.life, &mut self.counters, NOW)
    }
}

/// A relay whose upstream connected: both receives armed, nothing queued.
fn relaying() -> (Relay, St) {
    let cfg = RelayConfig {
        idle_ms: 600_000,
        half_close_ms: 60_000,
        cap: 16,
        front: Default::default(),
        send_proxy: Default::default(),
        bandwidth: None,
    };
    let mut st = St {
        out: Vec::with_capacity(32),
        life: Lifecycle::new(SockState::Open, SockState::Absent),
        counters: Counters::default(),
    };
    let target = Target {
        upstream: Some(UpstreamId(0)),
        addr: SocketAddr::from(([127, 0, 0, 1], 9)),
    };
    let mut r = Relay::new(cfg, 0);
    r.start(&mut st.cx());
    assert_eq!(st.out, [ConnOp::NextTarget]);
    st.out.clear();
    r.handle_target(Some(target), &mut st.cx());
    assert_eq!(st.out, [ConnOp::OpenUpstream { target }]);
    st.out.clear();
    st.life.complete(Done::Plain);
    st.life.set_state(Side::Upstream, SockState::Open);
    r.handle_socket(Ok(()), 0, &mut st.cx());
    assert_eq!(st.out, [ConnOp::Connect { target }]);
    st.out.clear();
    st.life.complete(Done::On(Side::Upstream));
    r.handle_connect(Ok(()), 0, &mut st.cx());
    assert_eq!(
        st.out,
        [
            ConnOp::Report {
                target,
                outcome: Outcome::Connected
            },
            ConnOp::ArmRecv(Side::Client),
            ConnOp::ArmRecv(Side::Upstream)
        ]
    );
    st.out.clear();
    st.life.complete(Done::Plain);
    r.handle_connect_timeout(&mut st.cx());
    assert!(st.out.is_empty());
    (r, st)
}

fn data(bid: u16) -> RecvEvent {
    RecvEvent::Data { bid, len: LEN }
}

/// A send to the upstream completed (accounted as the shard does).
fn sent(r: &mut Relay, s: &mut St, n: u32) {
    s.life.complete(Done::On(Side::Upstream));
    r.handle_sent(Side::Upstream, Ok(n), NOW, &mut s.cx());
}

fn full(r: &mut Relay, s: &mut St, bid: u16) {
    r.handle_recv(Side::Client, data(bid), true, NOW, &mut s.cx());
    sent(r, s, LEN);
}

fn short(r: &mut Relay, s: &mut St, bid: u16) {
    r.handle_recv(Side::Client, data(bid), true, NOW, &mut s.cx());
    sent(r, s, LEN / 2);
    sent(r, s, LEN - LEN / 2);
}

fn queued4(r: &mut Relay, s: &mut St, bid: u16) {
    for i in 0..4 {
        r.handle_recv(
            Side::Client,
            data(bid.wrapping_add(i)),
            true,
            NOW,
            &mut s.cx(),
        );
    }
    for _ in 0..4 {
        sent(r, s, LEN);
    }
}

type Step = fn(&mut Relay, &mut St, u16);

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
        let (mut r, mut st) = relaying();
        step(&mut r, &mut st, 0);
        let out = std::mem::take(&mut st.out);
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
        group.throughput(Throughput::Elements(per_iter));
        let mut bid = 0u16;
        group.bench_function(name, |b| {
            b.iter(|| {
                bid = bid.wrapping_add(4) & 0x0fff;
                step(&mut r, &mut st, black_box(bid));
                let n = st.out.len();
                st.out.clear();
                black_box(n)
            });
        });
        assert!(r.holds_no_buffers() && !r.is_closing());
        assert!(st.counters.get(Counter::BytesC2u) > 0);
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
