//! UDP session map and its expiry, at 10k and 1M live sessions: the per-datagram
//! costs the shard pays in `shard::udp`.
//!
//! * `lookup_hit/N`: a datagram from a known client (SipHash of the key + probe).
//! * `lookup_miss/N`: a datagram from an unknown client (the new-session path
//!   starts with this miss).
//! * `insert_remove/N`: one session created and one ended while N are live
//!   (map insert + remove; the slab slot id is the value).
//! * `expire/N`: N sessions with idle deadlines spread over 60 s, each refreshed
//!   lazily as the shard does (a new wheel entry only when its deadline moved
//!   past the old one); one iteration advances 10 ms, fires what is due and
//!   removes the expired sessions from the map (throughput = per expired session).
//!
//! All reuse their structures across iterations: the warmed-up steady state.

use std::hint::black_box;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use ringfwd::shard::token::SlotId;
use ringfwd::time::wheel::TimerWheel;
use ringfwd::udp::map::{SessionKey, SessionMap};

const SIZES: [u32; 2] = [10_000, 1_000_000];
const IDLE_MS: u64 = 60_000;
const STEP_MS: u64 = 10;

/// Distinct client addresses: v4 spread over ports and hosts, every 8th v6.
fn key(i: u32) -> SessionKey {
    let port = 1024 + (i % 60_000) as u16;
    let host = i / 60_000;
    let ip = if i % 8 == 0 {
        std::net::IpAddr::V6(Ipv6Addr::new(
            0x2001,
            0xdb8,
            0,
            0,
            0,
            0,
            (host >> 16) as u16,
            host as u16,
        ))
    } else {
        std::net::IpAddr::V4(Ipv4Addr::from(0x0a00_0000 | host))
    };
    SessionKey::from(SocketAddr::new(ip, port))
}

fn slot(i: u32) -> SlotId {
    SlotId {
        index: i,
        generation: 0,
    }
}

fn filled(n: u32) -> SessionMap<SlotId> {
    let mut m = SessionMap::default();
    for i in 0..n {
        m.insert(key(i), slot(i));
    }
    m
}

/// xorshift32: a deterministic, cheap walk over the live keys.
fn next(x: &mut u32) -> u32 {
    *x ^= *x << 13;
    *x ^= *x >> 17;
    *x ^= *x << 5;
    *x
}

fn lookups(c: &mut Criterion) {
    let mut group = c.benchmark_group("session_map");
    group
        .sample_size(20)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(2));
    for n in SIZES {
        let map = filled(n);
        // Keys precomputed so the bench measures the map, not key building.
        let hits: Vec<SessionKey> = {
            let mut x = 0x9E37_79B9;
            (0..4096).map(|_| key(next(&mut x) % n)).collect()
        };
        let misses: Vec<SessionKey> = (0..4096).map(|i| key(n + i)).collect();
        group.throughput(Throughput::Elements(hits.len() as u64));
        group.bench_function(BenchmarkId::new("lookup_hit", n), |b| {
            b.iter(|| {
                hits.iter()
                    .filter(|k| map.get(black_box(k)).is_some())
                    .count()
            })
        });
        group.bench_function(BenchmarkId::new("lookup_miss", n), |b| {
            b.iter(|| {
                misses
                    .iter()
                    .filter(|k| map.get(black_box(k)).is_some())
                    .count()
            })
        });
        let mut map = map;
        let fresh: Vec<SessionKey> = (0..4096).map(|i| key(n + i)).collect();
        group.bench_function(BenchmarkId::new("insert_remove", n), |b| {
            b.iter(|| {
                for (i, k) in fresh.iter().enumerate() {
                    map.insert(*k, slot(n + i as u32));
                }
                for (i, k) in fresh.iter().enumerate() {
                    map.remove(k, slot(n + i as u32));
                }
                map.len()
            })
        });
    }
    group.finish();
}

/// The shard's session state as far as expiry is concerned.
struct Live {
    key: SessionKey,
    last_seen: u64,
    /// Deadline of the wheel entry that is pending for this session.
    timer_at: u64,
}

struct ExpirySim {
    map: SessionMap<SlotId>,
    wheel: TimerWheel<u32>,
    live: Vec<Live>,
    fired: Vec<u32>,
    rng: u32,
}

impl ExpirySim {
    fn new(n: u32) -> ExpirySim {
        let mut wheel = TimerWheel::new(0);
        let mut rng = 0x1234_5678;
        let live = (0..n)
            .map(|i| {
                let last_seen = u64::from(next(&mut rng)) % IDLE_MS;
                wheel.insert(last_seen + IDLE_MS, i);
                Live {
                    key: key(i),
                    last_seen,
                    timer_at: last_seen + IDLE_MS,
                }
            })
            .collect();
        ExpirySim {
            map: filled(n),
            wheel,
            live,
            fired: Vec::new(),
            rng,
        }
    }

    /// One 10 ms tick; returns how many sessions expired.
    fn step(&mut self) -> u32 {
        let now = self.wheel.now() + STEP_MS;
        self.fired.clear();
        self.wheel.advance(now, &mut self.fired);
        let mut expired = 0;
        for &i in &self.fired {
            let Some(s) = self.live.get_mut(i as usize) else {
                continue;
            };
            if s.timer_at > now {
                continue; // superseded entry (lazy deletion)
            }
            let due = s.last_seen + IDLE_MS;
            if due > now {
                // Refreshed by traffic since: one new entry, lazily.
                s.timer_at = due;
                self.wheel.insert(due, i);
                continue;
            }
            self.map.remove(&s.key, slot(i));
            expired += 1;
            // A new client takes the slot at once, so N stays live; half of
            // them see traffic half-way to their deadline, so their first
            // fire re-arms instead of expiring.
            self.map.insert(s.key, slot(i));
            s.last_seen = now;
            s.timer_at = now + IDLE_MS;
            self.wheel.insert(s.timer_at, i);
            if next(&mut self.rng) & 1 == 0 {
                s.last_seen = now + IDLE_MS / 2;
            }
        }
        expired
    }
}

fn expire(c: &mut Criterion) {
    let mut group = c.benchmark_group("session_map/expire");
    group
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    for n in SIZES {
        group.throughput(Throughput::Elements(u64::from(n) * STEP_MS / IDLE_MS));
        let mut sim = ExpirySim::new(n);
        // Two full idle periods, so every session has expired or been
        // refreshed at least once before measuring.
        for _ in 0..2 * IDLE_MS / STEP_MS {
            sim.step();
        }
        group.bench_function(BenchmarkId::from_parameter(n), |b| {
            b.iter(|| black_box(sim.step()))
        });
        assert_eq!(sim.map.len() as u32, n);
    }
    group.finish();
}

criterion_group!(benches, lookups, expire);
criterion_main!(benches);
