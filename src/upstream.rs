//! Upstreams as values: a stable `UpstreamId` per upstream of the shard's
//! table (its address, its name for logs, its counters live beside it in the
//! shard), a `Target` a connection connects to, and the balancer a listener
//! (or route) owns, which picks among its upstreams (`pick`) by its policy
//! (the pure functions of `balance`), hears how each attempt went (`report`)
//! and keeps each member's passive health and the checker's verdict. Each
//! shard has its own balancers: no state is shared. No I/O, no clock (the
//! caller passes `now`).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use crate::balance::{MAGLEV_SIZE, Maglev, SmoothWeighted, least_conn, random_two};
use crate::config::{Balance, PassiveHealth};
use crate::time::Millis;

/// An upstream's index in its shard's upstream table: stable for the life of
/// the shard (every shard builds the same table from the same plan).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct UpstreamId(pub u32);

/// Where a connection connects: an upstream of the table (or, later, a
/// destination a client named, which has no `UpstreamId`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Target {
    pub upstream: Option<UpstreamId>,
    pub addr: SocketAddr,
}

/// How one connection attempt to a target went.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Connected,
    Refused,
    Timeout,
    Error,
}

impl Outcome {
    /// A failed connect (what passive health counts).
    pub fn failed(self) -> bool {
        !matches!(self, Outcome::Connected)
    }
}

/// The most members a balancer holds (the config's `upstreams` bound): one
/// bit each in a connection's [`Attempts`].
pub const MAX_MEMBERS: usize = 256;
const WORDS: usize = MAX_MEMBERS / 64;

/// One connection's walk through its balancer: the members it has tried
/// (each at most once per client).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Attempts {
    tried: [u64; WORDS],
    count: u16,
    /// The member of the last attempt: round robin's retries walk on from it.
    last: Option<u16>,
}

impl Attempts {
    pub fn tried(&self) -> u16 {
        self.count
    }

    fn has(&self, i: usize) -> bool {
        self.tried
            .get(i / 64)
            .is_some_and(|w| w & (1u64 << (i % 64)) != 0)
    }

    fn mark(&mut self, i: usize) {
        if let Some(w) = self.tried.get_mut(i / 64) {
            *w |= 1u64 << (i % 64);
            self.count += 1;
            self.last = u16::try_from(i).ok();
        }
    }
}

/// An upstream of a balancer and its weight.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Member {
    pub target: Target,
    pub weight: u32,
}

/// A member's passive health in this shard (NGINX's `max_fails` /
/// `fail_timeout`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Health {
    /// In rotation; `fails` connect failures since `window_start`.
    Up { fails: u32, window_start: Millis },
    /// Out of rotation until `until`; then one trial connection decides.
    Down { until: Millis },
    /// A trial connection is out; its outcome decides. Should it never
    /// report (its client left), another trial may start at `until`.
    Trial { until: Millis },
}

/// A member's passive health, opaque: carried over a reload.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PassiveState(Health);

/// What the active health checker last said of a member.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Checked {
    Up,
    Down,
}

/// Whether a pick came from the members in rotation or, none being in
/// rotation, from all of them (never an empty pool, as Envoy's panic mode).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pool {
    Healthy,
    AllDown,
}

/// A balancer's answer: where to connect, and from which pool.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Picked {
    pub target: Target,
    pub pool: Pool,
}

/// A change of a member's passive health, for the shard's counters and log.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Change {
    /// `fails` connect failures within the window took it out of rotation.
    Ejected { fails: u32 },
    /// A connect succeeded (its trial, or a pick while all were down): back in.
    Restored,
    /// Its trial connection failed: out for another `fail_timeout`.
    TrialFailed,
}

impl Change {
    /// The log message and its reason, for a balancer with `fail_ms` on
    /// `shard`.
    pub fn describe(self, shard: usize, fail_ms: Millis) -> (&'static str, String) {
        let window = crate::config::units::format_duration(Duration::from_millis(fail_ms));
        match self {
            Change::Ejected { fails } => (
                "upstream down (counted in upstream_ejected)",
                format!(
                    "{fails} connect failure{} within {window}; out of rotation on shard \
                     {shard} for {window}; one trial connection after that",
                    if fails == 1 { "" } else { "s" }
                ),
            ),
            Change::Restored => (
                "upstream up (counted in upstream_restored)",
                format!("a connect succeeded; back in rotation on shard {shard}"),
            ),
            Change::TrialFailed => (
                "upstream still down",
                format!(
                    "its trial connection failed; out of rotation on shard {shard} for another \
                     {window}"
                ),
            ),
        }
    }
}

/// A shard's seed for its balancers' random draws, from its index and the
/// time the caller read (`nanos`): shards, and restarts, draw differently.
pub fn shard_seed(shard: usize, nanos: u64) -> u64 {
    nanos ^ (shard as u64).wrapping_mul(0xbf58_476d_1ce4_e5b9)
}

/// xorshift64*: a cheap per-shard generator for `random_two`'s draws.
#[derive(Clone, Copy, Debug)]
struct XorShift(u64);

impl XorShift {
    fn new(seed: u64) -> XorShift {
        // Never zero: xorshift stays at zero forever.
        XorShift(seed | 1)
    }

    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

/// A policy with its own state.
#[derive(Clone, Debug)]
enum Policy {
    RoundRobin(SmoothWeighted),
    /// Ties (the same active connections per weight) go round robin, as
    /// NGINX's least_conn does: a quiet shard still spreads.
    LeastConn(SmoothWeighted),
    HashSource(Maglev),
    RandomTwo(XorShift),
}

/// A listener's (or route's) balancer: its members with their weights,
/// active connections, passive health and checker verdict, as this shard
/// sees them.
#[derive(Clone, Debug)]
pub struct Balancer {
    targets: Vec<Target>,
    weights: Vec<u32>,
    /// Connections (or sessions) of this shard on each member: +1 when
    /// picked, -1 when it fails or its connection ends ([`release`](Self::release)).
    active: Vec<u32>,
    health: Vec<Health>,
    checked: Vec<Checked>,
    policy: Policy,
    max_fails: u32,
    fail_ms: Millis,
}

/// Whether member `i` takes connections now: the checker says up and it is
/// in rotation, or its time out is over (it gets the one trial).
fn eligible(checked: &[Checked], health: &[Health], i: usize, now: Millis) -> bool {
    if checked.get(i) != Some(&Checked::Up) {
        return false;
    }
    match health.get(i) {
        Some(Health::Up { .. }) => true,
        Some(Health::Down { until } | Health::Trial { until }) => now >= *until,
        None => false,
    }
}

/// The policy's choice among the members `skip` lets through; `last` is
/// the connection's previous attempt, if any.
fn choose(
    policy: &mut Policy,
    weights: &[u32],
    active: &[u32],
    client: Option<SocketAddr>,
    last: Option<u16>,
    skip: impl Fn(usize) -> bool,
) -> Option<usize> {
    match policy {
        // A retry walks on in list order and leaves the rotation where it
        // was: one failing connection does not shift everyone's turn.
        Policy::RoundRobin(_) if let Some(last) = last => {
            let n = weights.len();
            (1..=n)
                .map(|k| (usize::from(last) + k) % n)
                .find(|&i| !skip(i))
        }
        Policy::RoundRobin(s) => s.pick(skip),
        Policy::LeastConn(ties) => {
            let best = least_conn(weights, active, &skip)?;
            let load = |i: usize| {
                let a = u64::from(active.get(i).copied().unwrap_or(0));
                let w = u64::from(weights.get(i).copied().unwrap_or(1));
                (a, w)
            };
            let (ba, bw) = load(best);
            // Members as loaded as the best one (a/w == ba/bw), in turn.
            ties.pick(|i| {
                let (a, w) = load(i);
                skip(i) || a * bw != ba * w
            })
        }
        Policy::RandomTwo(rng) => random_two(weights, active, skip, || rng.next()),
        Policy::HashSource(table) => {
            if (0..weights.len()).all(&skip) {
                return None;
            }
            let ip = client.map_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED), |c| c.ip());
            // The client's own slot, else on through the table: the clients
            // of a member that is out spread over the others, and nobody
            // else's move.
            let start = table.slot_of(ip)?;
            let slots = table.slots();
            (0..slots.len())
                .filter_map(|k| slots.get((start + k) % slots.len()))
                .map(|&m| m as usize)
                .find(|&m| !skip(m))
        }
    }
}

fn millis(d: Duration) -> Millis {
    Millis::try_from(d.as_millis()).unwrap_or(Millis::MAX)
}

impl Balancer {
    /// Members beyond [`MAX_MEMBERS`] are dropped (the config refuses them).
    pub fn new(members: &[Member], balance: Balance, passive: PassiveHealth) -> Balancer {
        let members = members.get(..members.len().min(MAX_MEMBERS)).unwrap_or(&[]);
        let weights: Vec<u32> = members.iter().map(|m| m.weight).collect();
        let policy = match balance {
            Balance::RoundRobin => Policy::RoundRobin(SmoothWeighted::new(weights.clone())),
            Balance::LeastConn => Policy::LeastConn(SmoothWeighted::new(weights.clone())),
            Balance::RandomTwo => Policy::RandomTwo(XorShift::new(0x9e37_79b9_7f4a_7c15)),
            Balance::HashSource => {
                // Named by address as written, so every shard and every
                // instance with the same list builds the same table.
                let names: Vec<String> =
                    members.iter().map(|m| m.target.addr.to_string()).collect();
                let named: Vec<(&str, u32)> = names
                    .iter()
                    .map(String::as_str)
                    .zip(weights.iter().copied())
                    .collect();
                Policy::HashSource(Maglev::new(&named, MAGLEV_SIZE))
            }
        };
        let n = members.len();
        Balancer {
            targets: members.iter().map(|m| m.target).collect(),
            weights,
            active: vec![0; n],
            health: vec![
                Health::Up {
                    fails: 0,
                    window_start: 0
                };
                n
            ],
            checked: vec![Checked::Up; n],
            policy,
            max_fails: passive.max_fails,
            fail_ms: millis(passive.fail_timeout).max(1),
        }
    }

    /// Seeds `random_two`'s generator (each shard its own sequence).
    pub fn seed(&mut self, seed: u64) {
        if let Policy::RandomTwo(rng) = &mut self.policy {
            *rng = XorShift::new(seed);
        }
    }

    pub fn len(&self) -> usize {
        self.targets.len()
    }

    pub fn is_empty(&self) -> bool {
        self.targets.is_empty()
    }

    pub fn members(&self) -> &[Target] {
        &self.targets
    }

    /// The member index of `target` (by id when it has one, else by address).
    pub fn index_of(&self, target: Target) -> Option<usize> {
        match target.upstream {
            Some(id) => {
                // A route's members have consecutive ids: try that first.
                let base = self.targets.first().and_then(|t| t.upstream)?;
                let guess = id.0.checked_sub(base.0).map(|d| d as usize);
                guess
                    .filter(|&i| self.targets.get(i).is_some_and(|t| t.upstream == Some(id)))
                    .or_else(|| self.targets.iter().position(|t| t.upstream == Some(id)))
            }
            None => self.targets.iter().position(|t| t.addr == target.addr),
        }
    }

    /// Whether member `i` takes connections now (see [`eligible`]).
    fn eligible(&self, i: usize, now: Millis) -> bool {
        eligible(&self.checked, &self.health, i, now)
    }

    /// Member `i`'s passive health, for a reload to carry over to the
    /// same upstream in the new configuration's balancer.
    pub fn passive_state(&self, i: usize) -> Option<PassiveState> {
        self.health.get(i).copied().map(PassiveState)
    }

    /// Gives member `i` the passive health it had before a reload (nothing
    /// when this balancer has passive health off).
    pub fn carry_passive(&mut self, i: usize, state: PassiveState) {
        if self.max_fails == 0 {
            return;
        }
        if let Some(h) = self.health.get_mut(i) {
            *h = state.0;
        }
    }

    /// Whether member `i` is in this shard's rotation (for the gauge).
    pub fn in_rotation(&self, i: usize) -> bool {
        self.checked.get(i) == Some(&Checked::Up)
            && matches!(self.health.get(i), Some(Health::Up { .. }))
    }

    /// Connections this shard has on member `i`.
    pub fn active(&self, i: usize) -> u32 {
        self.active.get(i).copied().unwrap_or(0)
    }

    /// The next target for a connection from `client` (`None`: it has
    /// tried every member it may). Members in rotation first; when none of
    /// them is, every member as if up ([`Pool::AllDown`]).
    pub fn pick(
        &mut self,
        client: Option<SocketAddr>,
        a: &mut Attempts,
        now: Millis,
    ) -> Option<Picked> {
        if usize::from(a.tried()) >= self.targets.len() {
            return None;
        }
        let any = (0..self.targets.len()).any(|i| self.eligible(i, now));
        let (checked, health) = (&self.checked, &self.health);
        let (weights, active) = (&self.weights, &self.active);
        let walk = *a;
        let (i, pool) = if any {
            let skip = |i| walk.has(i) || !eligible(checked, health, i, now);
            let i = choose(&mut self.policy, weights, active, client, walk.last, skip)?;
            (i, Pool::Healthy)
        } else {
            let skip = |i| walk.has(i);
            let i = choose(&mut self.policy, weights, active, client, walk.last, skip)?;
            (i, Pool::AllDown)
        };
        a.mark(i);
        if let Some(c) = self.active.get_mut(i) {
            *c += 1;
        }
        if pool == Pool::Healthy
            && let Some(h) = self.health.get_mut(i)
            && matches!(h, Health::Down { .. } | Health::Trial { .. })
        {
            *h = Health::Trial {
                until: now.saturating_add(self.fail_ms),
            };
        }
        let target = *self.targets.get(i)?;
        Some(Picked { target, pool })
    }

    /// A connection on member `i` ended, or moved on after a failed attempt.
    pub fn release(&mut self, i: usize) {
        if let Some(c) = self.active.get_mut(i) {
            debug_assert!(*c > 0, "member {i}: more releases than picks");
            *c = c.saturating_sub(1);
        }
    }

    /// How an attempt on `target` went; a change of its passive health.
    pub fn report(&mut self, target: Target, outcome: Outcome, now: Millis) -> Option<Change> {
        let i = self.index_of(target)?;
        if self.max_fails == 0 {
            return None;
        }
        let (max_fails, fail_ms) = (self.max_fails, self.fail_ms);
        let h = self.health.get_mut(i)?;
        let (next, change) = match (*h, outcome.failed()) {
            (Health::Up { .. }, false) => (
                Health::Up {
                    fails: 0,
                    window_start: now,
                },
                None,
            ),
            (
                Health::Up {
                    fails,
                    window_start,
                },
                true,
            ) => {
                let (fails, window_start) =
                    if fails == 0 || now.saturating_sub(window_start) >= fail_ms {
                        (1, now)
                    } else {
                        (fails.saturating_add(1), window_start)
                    };
                if fails >= max_fails {
                    let until = now.saturating_add(fail_ms);
                    (Health::Down { until }, Some(Change::Ejected { fails }))
                } else {
                    (
                        Health::Up {
                            fails,
                            window_start,
                        },
                        None,
                    )
                }
            }
            (Health::Down { .. } | Health::Trial { .. }, false) => (
                Health::Up {
                    fails: 0,
                    window_start: now,
                },
                Some(Change::Restored),
            ),
            (Health::Trial { .. }, true) => (
                Health::Down {
                    until: now.saturating_add(fail_ms),
                },
                Some(Change::TrialFailed),
            ),
            // Already out (an attempt begun before, or while all were down).
            (down @ Health::Down { .. }, true) => (down, None),
        };
        *h = next;
        change
    }

    /// The active checker's verdict on member `i`; whether it changed.
    pub fn set_checked(&mut self, i: usize, up: bool) -> bool {
        let verdict = if up { Checked::Up } else { Checked::Down };
        match self.checked.get_mut(i) {
            Some(c) if *c != verdict => {
                *c = verdict;
                true
            }
            _ => false,
        }
    }

    /// `fail_timeout` in milliseconds (for log lines).
    pub fn fail_ms(&self) -> Millis {
        self.fail_ms
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn members(weights: &[u32]) -> Vec<Member> {
        weights
            .iter()
            .enumerate()
            .map(|(i, &weight)| Member {
                target: Target {
                    upstream: Some(UpstreamId(10 + i as u32)),
                    addr: SocketAddr::from(([10, 0, 0, i as u8 + 1], 80)),
                },
                weight,
            })
            .collect()
    }

    const OFF: PassiveHealth = PassiveHealth {
        max_fails: 0,
        fail_timeout: Duration::from_secs(10),
    };

    fn balancer(weights: &[u32], balance: Balance, passive: PassiveHealth) -> Balancer {
        Balancer::new(&members(weights), balance, passive)
    }

    /// The member index of a pick (the test members have ids from 10).
    fn ix(p: Option<Picked>) -> Option<usize> {
        p.and_then(|p| p.target.upstream).map(|u| u.0 as usize - 10)
    }

    /// `n` connections that each connect at once and stay; the picks per member.
    fn spread(
        b: &mut Balancer,
        n: usize,
        client: impl Fn(usize) -> Option<SocketAddr>,
    ) -> Vec<u32> {
        let mut got = vec![0u32; b.len()];
        for k in 0..n {
            let p = b.pick(client(k), &mut Attempts::default(), 0);
            if let Some(i) = ix(p) {
                got[i] += 1;
            }
        }
        got
    }

    fn client(k: usize) -> Option<SocketAddr> {
        Some(SocketAddr::from((
            [127, (k >> 16) as u8, (k >> 8) as u8, k as u8],
            40000,
        )))
    }

    #[test]
    fn round_robin_follows_weights_exactly_per_round() {
        let mut b = balancer(&[1, 1, 2], Balance::RoundRobin, OFF);
        assert_eq!(spread(&mut b, 400, |_| None), vec![100, 100, 200]);
    }

    #[test]
    fn least_conn_fills_the_member_with_fewest_per_weight() {
        let mut b = balancer(&[1, 3], Balance::LeastConn, OFF);
        // Nobody leaves: active counts grow 1:3.
        assert_eq!(spread(&mut b, 400, |_| None), vec![100, 300]);
        assert_eq!((b.active(0), b.active(1)), (100, 300));
        // Member 1 sheds 200: the next 200 go there.
        for _ in 0..200 {
            b.release(1);
        }
        assert_eq!(spread(&mut b, 200, |_| None), vec![0, 200]);
    }

    #[test]
    fn least_conn_ties_go_round_robin_by_weight() {
        let mut b = balancer(&[1, 1, 2], Balance::LeastConn, OFF);
        let mut got = [0u32; 3];
        // Every connection closes before the next: all tie at 0.
        for _ in 0..100 {
            if let Some(i) = ix(b.pick(None, &mut Attempts::default(), 0)) {
                got[i] += 1;
                b.release(i);
            }
        }
        assert_eq!(got, [25, 25, 50]);
    }

    #[test]
    fn random_two_balances_active_connections_by_weight() {
        let mut b = balancer(&[1, 1, 2], Balance::RandomTwo, OFF);
        b.seed(42);
        let got = spread(&mut b, 4000, |_| None);
        // Two choices keep the loads (per weight) within a few of each other.
        let per_weight = [got[0], got[1], got[2] / 2];
        let (lo, hi) = (per_weight.iter().min(), per_weight.iter().max());
        assert!(hi.zip(lo).is_some_and(|(h, l)| h - l <= 8), "{got:?}");
    }

    #[test]
    fn hash_source_keeps_a_client_on_one_member_and_follows_weights() {
        let mut a = balancer(&[1, 1, 2], Balance::HashSource, OFF);
        let mut b = balancer(&[1, 1, 2], Balance::HashSource, OFF);
        for k in 0..500 {
            let first = ix(a.pick(client(k), &mut Attempts::default(), 0));
            let again = ix(a.pick(client(k), &mut Attempts::default(), 0));
            let elsewhere = ix(b.pick(client(k), &mut Attempts::default(), 0));
            assert_eq!(first, again, "client {k}");
            assert_eq!(first, elsewhere, "client {k}: another balancer, same list");
        }
        let got = spread(&mut a, 20_000, client);
        let share = f64::from(got[2]) / 20_000.0;
        assert!((0.47..0.53).contains(&share), "weight 2 of 4: {got:?}");
    }

    #[test]
    fn every_policy_walks_each_member_once_then_gives_up() {
        for policy in Balance::ALL {
            let mut b = balancer(&[1, 2, 1, 3], policy, OFF);
            let mut walk = Attempts::default();
            let mut seen: Vec<usize> = (0..4)
                .filter_map(|_| ix(b.pick(client(7), &mut walk, 0)))
                .collect();
            assert_eq!(b.pick(client(7), &mut walk, 0), None, "{policy:?}");
            seen.sort_unstable();
            assert_eq!(seen, vec![0, 1, 2, 3], "{policy:?}");
            assert_eq!(walk.tried(), 4);
        }
    }

    #[test]
    fn a_round_robin_retry_walks_on_in_list_order_and_keeps_the_rotation() {
        let mut b = balancer(&[1, 1, 1], Balance::RoundRobin, OFF);
        let _ = b.pick(None, &mut Attempts::default(), 0);
        let mut a = Attempts::default();
        let walk: Vec<_> = (0..4).map(|_| ix(b.pick(None, &mut a, 0))).collect();
        assert_eq!(walk, vec![Some(1), Some(2), Some(0), None]);
        assert_eq!(ix(b.pick(None, &mut Attempts::default(), 0)), Some(2));
    }

    #[test]
    fn an_empty_pool_picks_nothing() {
        for policy in Balance::ALL {
            let mut b = Balancer::new(&[], policy, PassiveHealth::default());
            assert_eq!(b.pick(client(1), &mut Attempts::default(), 0), None);
        }
    }

    fn passive(max_fails: u32) -> PassiveHealth {
        PassiveHealth {
            max_fails,
            fail_timeout: Duration::from_secs(10),
        }
    }

    #[test]
    fn max_fails_within_fail_timeout_eject_then_one_trial_decides() {
        let mut b = balancer(&[1, 1], Balance::RoundRobin, passive(3));
        let t0 = b.members()[0];
        // Two failures, then the window passes: the count starts again.
        assert_eq!(b.report(t0, Outcome::Refused, 0), None);
        assert_eq!(b.report(t0, Outcome::Timeout, 5_000), None);
        assert_eq!(b.report(t0, Outcome::Refused, 10_000), None, "a new window");
        assert_eq!(b.report(t0, Outcome::Error, 11_000), None);
        assert!(b.in_rotation(0));
        assert_eq!(
            b.report(t0, Outcome::Refused, 12_000),
            Some(Change::Ejected { fails: 3 })
        );
        assert!(!b.in_rotation(0));
        // Out for fail_timeout: every pick goes to member 1.
        assert_eq!(spread_at(&mut b, 6, 21_999), vec![0, 6]);
        // Then one trial connection, and no other while it is out.
        assert_eq!(spread_at(&mut b, 6, 22_000), vec![1, 5]);
        // It fails: out for another fail_timeout.
        assert_eq!(
            b.report(t0, Outcome::Timeout, 23_000),
            Some(Change::TrialFailed)
        );
        assert_eq!(spread_at(&mut b, 4, 32_999), vec![0, 4]);
        assert_eq!(spread_at(&mut b, 4, 33_000), vec![1, 3], "the next trial");
        assert_eq!(
            b.report(t0, Outcome::Connected, 33_001),
            Some(Change::Restored)
        );
        assert!(b.in_rotation(0));
        assert_eq!(spread_at(&mut b, 4, 33_002), vec![2, 2]);
    }

    fn spread_at(b: &mut Balancer, n: usize, now: Millis) -> Vec<u32> {
        let mut got = vec![0u32; b.len()];
        for _ in 0..n {
            if let Some(i) = ix(b.pick(None, &mut Attempts::default(), now)) {
                got[i] += 1;
            }
        }
        got
    }

    #[test]
    fn a_lost_trial_gives_way_to_another_after_fail_timeout() {
        let mut b = balancer(&[1, 1], Balance::RoundRobin, passive(1));
        let t0 = b.members()[0];
        assert_eq!(
            b.report(t0, Outcome::Refused, 0),
            Some(Change::Ejected { fails: 1 })
        );
        assert_eq!(
            spread_at(&mut b, 4, 10_000),
            vec![1, 3],
            "trial, never reported"
        );
        assert_eq!(spread_at(&mut b, 4, 19_999), vec![0, 4]);
        assert_eq!(spread_at(&mut b, 4, 20_000), vec![1, 3], "another trial");
    }

    #[test]
    fn a_success_clears_the_failures_and_max_fails_0_never_ejects() {
        let mut b = balancer(&[1, 1], Balance::RoundRobin, passive(2));
        let t0 = b.members()[0];
        assert_eq!(b.report(t0, Outcome::Refused, 0), None);
        assert_eq!(b.report(t0, Outcome::Connected, 1), None);
        assert_eq!(b.report(t0, Outcome::Refused, 2), None, "one failure again");
        let mut off = balancer(&[1, 1], Balance::RoundRobin, OFF);
        for now in 0..100 {
            assert_eq!(off.report(t0, Outcome::Refused, now), None);
        }
        assert!(off.in_rotation(0));
    }

    #[test]
    fn all_down_picks_among_every_member_as_if_up() {
        for policy in Balance::ALL {
            let mut b = balancer(&[1, 1, 1], policy, passive(1));
            let targets = b.members().to_vec();
            for t in &targets[..2] {
                b.report(*t, Outcome::Refused, 0);
            }
            // The checker takes the last one down.
            assert!(b.set_checked(2, false));
            assert!(!b.set_checked(2, false), "no change");
            let mut walk = Attempts::default();
            let picks: Vec<Picked> = (0..3)
                .filter_map(|_| b.pick(client(3), &mut walk, 1))
                .collect();
            assert_eq!(picks.len(), 3, "{policy:?}: each member once");
            assert!(picks.iter().all(|p| p.pool == Pool::AllDown), "{policy:?}");
            assert_eq!(b.pick(client(3), &mut walk, 1), None);
            // A success while all are down puts that one back.
            assert_eq!(
                b.report(targets[0], Outcome::Connected, 2),
                Some(Change::Restored)
            );
            let p = b.pick(client(3), &mut Attempts::default(), 3);
            assert_eq!(
                p.map(|p| (p.target, p.pool)),
                Some((targets[0], Pool::Healthy))
            );
        }
    }

    #[test]
    fn a_checked_down_member_is_skipped_until_the_checker_says_up() {
        let mut b = balancer(&[1, 1], Balance::RoundRobin, passive(1));
        assert!(b.set_checked(0, false));
        assert!(!b.in_rotation(0));
        assert_eq!(spread_at(&mut b, 4, 0), vec![0, 4]);
        assert!(b.set_checked(0, true));
        assert_eq!(spread_at(&mut b, 4, 0), vec![2, 2]);
    }

    #[test]
    fn hash_source_moves_only_an_ejected_members_clients() {
        let mut b = balancer(&[1, 1, 1, 1], Balance::HashSource, passive(1));
        let before: Vec<Option<usize>> = (0..2000)
            .map(|k| ix(b.pick(client(k), &mut Attempts::default(), 0)))
            .collect();
        let t1 = b.members()[1];
        b.report(t1, Outcome::Refused, 0);
        let after: Vec<Option<usize>> = (0..2000)
            .map(|k| ix(b.pick(client(k), &mut Attempts::default(), 1)))
            .collect();
        for (k, (x, y)) in before.iter().zip(&after).enumerate() {
            if *x == Some(1) {
                assert_ne!(*y, Some(1), "client {k}");
            } else {
                assert_eq!(x, y, "client {k} was not on the ejected member");
            }
        }
    }

    #[test]
    fn picks_and_releases_keep_the_active_count() {
        let mut b = balancer(&[1, 1], Balance::LeastConn, OFF);
        let mut walk = Attempts::default();
        let first = ix(b.pick(None, &mut walk, 0));
        assert_eq!(first, Some(0));
        assert_eq!(b.active(0), 1);
        b.release(0);
        let second = ix(b.pick(None, &mut walk, 0));
        assert_eq!(second, Some(1), "the walk goes on to the other member");
        assert_eq!((b.active(0), b.active(1)), (0, 1));
    }

    #[test]
    fn ids_and_addresses_find_their_member() {
        let b = balancer(&[1, 1, 1], Balance::RoundRobin, OFF);
        for (i, t) in b.members().iter().enumerate() {
            assert_eq!(b.index_of(*t), Some(i));
            let by_addr = Target {
                upstream: None,
                addr: t.addr,
            };
            assert_eq!(b.index_of(by_addr), Some(i));
        }
        let stranger = Target {
            upstream: Some(UpstreamId(99)),
            addr: SocketAddr::from(([10, 9, 9, 9], 80)),
        };
        assert_eq!(b.index_of(stranger), None);
    }
}
