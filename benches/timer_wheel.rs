//! Timer wheel throughput at 10k and 1M live timers.
//!
//! * `insert_drain/N`: insert N timers with deadlines spread over 60 s, then
//!   advance in 10 ms steps until all have fired (throughput = per timer).
//! * `steady_step/N`: N live timers, each re-armed 60 s ahead when it fires;
//!   one iteration is one 10 ms `advance` plus the re-arms (throughput = per
//!   fired timer, about N/6000 per step).
//!
//! Both reuse one wheel across iterations, so they measure the warmed-up,
//! allocation-free steady state.

use std::hint::black_box;
use std::time::Duration;

use criterion::{
    BenchmarkId, Criterion, SamplingMode, Throughput, criterion_group, criterion_main,
};
use ringfwd::time::wheel::TimerWheel;

const SIZES: [u64; 2] = [10_000, 1_000_000];
const SPREAD_MS: u64 = 60_000;
const STEP_MS: u64 = 10;

/// xorshift64*: deterministic deadlines without extra crates.
fn offsets(n: u64, seed: u64) -> Vec<u64> {
    let mut x = seed | 1;
    (0..n)
        .map(|_| {
            x ^= x >> 12;
            x ^= x << 25;
            x ^= x >> 27;
            1 + x.wrapping_mul(0x2545_F491_4F6C_DD1D) % SPREAD_MS
        })
        .collect()
}

fn insert_drain(c: &mut Criterion) {
    let mut group = c.benchmark_group("timer_wheel/insert_drain");
    group
        .sample_size(10)
        .sampling_mode(SamplingMode::Flat)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    for n in SIZES {
        let offs = offsets(n, 0x5EED ^ n);
        group.throughput(Throughput::Elements(n));
        group.bench_with_input(BenchmarkId::from_parameter(n), &offs, |b, offs| {
            let mut wheel = TimerWheel::new(0);
            let mut fired = Vec::with_capacity(n as usize);
            b.iter(|| {
                let base = wheel.now();
                for (id, &off) in offs.iter().enumerate() {
                    wheel.insert(base + off, id as u64);
                }
                let mut total = 0usize;
                while !wheel.is_empty() {
                    fired.clear();
                    wheel.advance(wheel.now() + STEP_MS, &mut fired);
                    total += fired.len();
                }
                black_box(total)
            });
        });
    }
    group.finish();
}

fn steady_step(c: &mut Criterion) {
    let mut group = c.benchmark_group("timer_wheel/steady_step");
    group
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    for n in SIZES {
        group.throughput(Throughput::Elements(n * STEP_MS / SPREAD_MS));
        group.bench_function(BenchmarkId::from_parameter(n), |b| {
            let mut wheel = TimerWheel::new(0);
            for (id, off) in offsets(n, 0xBEEF ^ n).into_iter().enumerate() {
                wheel.insert(off, id as u64);
            }
            let mut fired = Vec::new();
            let step = |wheel: &mut TimerWheel<u64>, fired: &mut Vec<u64>| {
                let now = wheel.now() + STEP_MS;
                fired.clear();
                wheel.advance(now, fired);
                for &id in fired.iter() {
                    wheel.insert(now + SPREAD_MS, id);
                }
            };
            // Two full periods so every timer has been re-armed at least once.
            for _ in 0..2 * SPREAD_MS / STEP_MS {
                step(&mut wheel, &mut fired);
            }
            assert_eq!(wheel.len() as u64, n);
            b.iter(|| {
                step(&mut wheel, &mut fired);
                black_box(fired.len())
            });
        });
    }
    group.finish();
}

criterion_group!(benches, insert_drain, steady_step);
criterion_main!(benches);
