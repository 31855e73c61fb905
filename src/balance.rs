//! Balancing policies as pure functions over a listener's upstreams (the
//! policies of issue 13, run by `upstream::Balancer`): smooth weighted round robin as NGINX's upstream module does it,
//! least connections by weight, power of two random choices, and a Maglev
//! table for source hashing that every shard and every ringfwd instance with
//! the same upstream list builds identically. No I/O, no clock, no shared
//! state: each shard balances on its own view.

use std::net::IpAddr;

/// The default Maglev table size: a prime well above any upstream count,
/// so each upstream's share is within a fraction of a percent of its weight.
pub const MAGLEV_SIZE: u32 = 65_537;

/// Smooth weighted round robin (NGINX `ngx_http_upstream_get_peer`): every
/// pick adds each member's weight to its running score, takes the highest,
/// and takes the total weight off the winner. Over `sum(weights)` picks each
/// member is chosen exactly `weight` times, spread out rather than in runs.
#[derive(Clone, Debug)]
pub struct SmoothWeighted {
    weights: Vec<u32>,
    current: Vec<i64>,
}

impl SmoothWeighted {
    /// Members with weight 0 are never picked.
    pub fn new(weights: Vec<u32>) -> SmoothWeighted {
        let current = vec![0; weights.len()];
        SmoothWeighted { weights, current }
    }

    /// The next member, skipping those `skip` rejects (tried already, down);
    /// `None` when every member with a weight is skipped.
    pub fn pick(&mut self, skip: impl Fn(usize) -> bool) -> Option<usize> {
        let mut total: i64 = 0;
        let mut best: Option<(usize, i64)> = None;
        for i in 0..self.weights.len() {
            let w = i64::from(self.weights.get(i).copied().unwrap_or(0));
            if w == 0 || skip(i) {
                continue;
            }
            let Some(cur) = self.current.get_mut(i) else {
                continue;
            };
            *cur += w;
            total += w;
            // Strictly greater: a tie keeps the earlier member, as NGINX does.
            if best.is_none_or(|(_, b)| *cur > b) {
                best = Some((i, *cur));
            }
        }
        let (b, _) = best?;
        if let Some(c) = self.current.get_mut(b) {
            *c -= total;
        }
        Some(b)
    }
}

/// Least connections by weight: the member with the fewest active
/// connections per unit of weight, in this shard's view (ties: the lower
/// index, so a quiet shard still spreads in list order).
pub fn least_conn(weights: &[u32], active: &[u32], skip: impl Fn(usize) -> bool) -> Option<usize> {
    let mut best: Option<(usize, u64, u64)> = None;
    for (i, (&w, &a)) in weights.iter().zip(active.iter()).enumerate() {
        if w == 0 || skip(i) {
            continue;
        }
        // a/w < b/v  <=>  a*v < b*w, without floats.
        let better = match best {
            None => true,
            Some((_, ba, bw)) => u64::from(a) * bw < ba * u64::from(w),
        };
        if better {
            best = Some((i, u64::from(a), u64::from(w)));
        }
    }
    best.map(|(i, _, _)| i)
}

/// Power of two random choices (HAProxy `random(2)`, Envoy's least request):
/// two members drawn at random by weight, the one with fewer active
/// connections per weight wins. `draw` gives uniform random numbers.
pub fn random_two(
    weights: &[u32],
    active: &[u32],
    skip: impl Fn(usize) -> bool,
    mut draw: impl FnMut() -> u64,
) -> Option<usize> {
    let total: u64 = weights
        .iter()
        .enumerate()
        .filter(|(i, _)| !skip(*i))
        .map(|(_, &w)| u64::from(w))
        .sum();
    if total == 0 {
        return None;
    }
    let mut one = || {
        let mut r = draw() % total;
        for (i, &w) in weights.iter().enumerate() {
            if skip(i) {
                continue;
            }
            if r < u64::from(w) {
                return Some(i);
            }
            r -= u64::from(w);
        }
        None
    };
    let (a, b) = (one()?, one()?);
    let load = |i: usize| {
        let w = u64::from(weights.get(i).copied().unwrap_or(1).max(1));
        let a = u64::from(active.get(i).copied().unwrap_or(0));
        (a, w)
    };
    let ((aa, aw), (ba, bw)) = (load(a), load(b));
    Some(if ba * aw < aa * bw { b } else { a })
}

/// FNV-1a, 64 bits: a fixed hash, the same in every process and build, so
/// tables built from the same list agree everywhere.
fn fnv1a(bytes: &[u8], seed: u64) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325u64 ^ seed;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    // A final mix so close names land far apart.
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^ (h >> 33)
}

/// A Maglev lookup table (Eisenbud et al., NSDI 2016): `size` slots (a
/// prime), each naming a member. Every member fills slots in the order of
/// its own permutation (offset and skip from hashes of its name), taking
/// `weight` turns per round, so shares follow weights and taking a member
/// out moves (almost) only its own slots.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Maglev {
    table: Vec<u32>,
}

impl Maglev {
    /// `members`: each member's stable name (its address as written) and
    /// weight. `size` must be a prime larger than the members' count.
    pub fn new(members: &[(&str, u32)], size: u32) -> Maglev {
        let m = u64::from(size.max(2));
        let live: Vec<(usize, u64, u64, u32)> = members
            .iter()
            .enumerate()
            .filter(|(_, (_, w))| *w > 0)
            .map(|(i, (name, w))| {
                let offset = fnv1a(name.as_bytes(), 0) % m;
                let skip = fnv1a(name.as_bytes(), 0x9e37_79b9_7f4a_7c15) % (m - 1) + 1;
                (i, offset, skip, *w)
            })
            .collect();
        let mut table = vec![u32::MAX; m as usize];
        if live.is_empty() {
            return Maglev { table: Vec::new() };
        }
        let mut next = vec![0u64; live.len()];
        let mut filled = 0u64;
        'fill: loop {
            for (k, &(i, offset, skip, w)) in live.iter().enumerate() {
                for _ in 0..w {
                    let Some(n) = next.get_mut(k) else { continue };
                    // The member's next preferred slot that is still free.
                    loop {
                        let slot = ((offset + *n * skip) % m) as usize;
                        *n += 1;
                        if let Some(s) = table.get_mut(slot)
                            && *s == u32::MAX
                        {
                            *s = i as u32;
                            filled += 1;
                            break;
                        }
                    }
                    if filled == m {
                        break 'fill;
                    }
                }
            }
        }
        Maglev { table }
    }

    /// The member a client address maps to (`None` for an empty table).
    pub fn lookup(&self, client: IpAddr) -> Option<usize> {
        let slot = self.slot_of(client)?;
        self.table.get(slot).map(|&i| i as usize)
    }

    /// The slot a client address hashes to (`None` for an empty table).
    pub fn slot_of(&self, client: IpAddr) -> Option<usize> {
        if self.table.is_empty() {
            return None;
        }
        let key = match client.to_canonical() {
            IpAddr::V4(v4) => fnv1a(&v4.octets(), 1),
            IpAddr::V6(v6) => fnv1a(&v6.octets(), 1),
        };
        Some((key % self.table.len() as u64) as usize)
    }

    /// How many slots each of `n` members holds.
    pub fn shares(&self, n: usize) -> Vec<u64> {
        let mut out = vec![0u64; n];
        for &i in &self.table {
            if let Some(c) = out.get_mut(i as usize) {
                *c += 1;
            }
        }
        out
    }

    /// The slot table (for comparing two tables).
    pub fn slots(&self) -> &[u32] {
        &self.table
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::verify::Rng;

    #[test]
    fn smooth_weighted_spreads_5_1_1_as_nginx_does() {
        let mut s = SmoothWeighted::new(vec![5, 1, 1]);
        let seq: Vec<usize> = (0..7).filter_map(|_| s.pick(|_| false)).collect();
        assert_eq!(seq, vec![0, 0, 1, 0, 2, 0, 0], "NGINX's a a b a c a a");
    }

    #[test]
    fn smooth_weighted_picks_each_member_its_weight_per_round() {
        let mut rng = Rng::new(7);
        for _ in 0..200 {
            let n = 1 + rng.below(8) as usize;
            let weights: Vec<u32> = (0..n).map(|_| rng.below(10) as u32).collect();
            let total: u32 = weights.iter().sum();
            let mut s = SmoothWeighted::new(weights.clone());
            let mut got = vec![0u32; n];
            for _ in 0..total * 3 {
                if let Some(i) = s.pick(|_| false) {
                    got[i] += 1;
                }
            }
            let want: Vec<u32> = weights.iter().map(|w| w * 3).collect();
            assert_eq!(got, want, "weights {weights:?}");
        }
    }

    #[test]
    fn smooth_weighted_skips_members_and_says_when_none_is_left() {
        let mut s = SmoothWeighted::new(vec![1, 1, 1]);
        for _ in 0..10 {
            assert_eq!(s.pick(|i| i != 2), Some(2));
        }
        assert_eq!(s.pick(|_| true), None);
        assert_eq!(SmoothWeighted::new(vec![0, 0]).pick(|_| false), None);
    }

    #[test]
    fn least_conn_weighs_active_connections_by_weight() {
        assert_eq!(least_conn(&[1, 1, 1], &[3, 1, 2], |_| false), Some(1));
        // 4/2 = 2 per weight beats 3/1.
        assert_eq!(least_conn(&[1, 2], &[3, 4], |_| false), Some(1));
        assert_eq!(
            least_conn(&[1, 1], &[0, 0], |_| false),
            Some(0),
            "ties: list order"
        );
        assert_eq!(least_conn(&[1, 1], &[0, 5], |i| i == 0), Some(1));
        assert_eq!(
            least_conn(&[0, 1], &[0, 5], |_| false),
            Some(1),
            "weight 0 never"
        );
    }

    #[test]
    fn random_two_prefers_the_less_loaded_and_follows_weights_when_idle() {
        let mut rng = Rng::new(11);
        let mut wins = [0u32; 2];
        for _ in 0..10_000 {
            if let Some(i) = random_two(&[1, 1], &[10, 0], |_| false, || rng.next_u64()) {
                wins[i] += 1;
            }
        }
        // Member 0 wins only when both draws are 0: a quarter of the time.
        assert!((2_200..2_800).contains(&wins[0]), "{wins:?}");
        let mut idle = [0u32; 2];
        for _ in 0..30_000 {
            if let Some(i) = random_two(&[3, 1], &[0, 0], |_| false, || rng.next_u64()) {
                idle[i] += 1;
            }
        }
        let share = f64::from(idle[0]) / 30_000.0;
        assert!(
            (0.72..0.78).contains(&share),
            "weights 3:1 give 3/4: {idle:?}"
        );
        assert_eq!(random_two(&[1, 1], &[0, 0], |_| true, || 0), None);
    }

    fn names(n: usize) -> Vec<String> {
        (0..n)
            .map(|i| format!("10.0.{}.{}:443", i / 200, i % 200 + 1))
            .collect()
    }

    #[test]
    fn maglev_shares_follow_weights_within_a_percent() {
        let mut rng = Rng::new(3);
        for _ in 0..20 {
            let n = 2 + rng.below(20) as usize;
            let names = names(n);
            let weights: Vec<u32> = (0..n).map(|_| 1 + rng.below(4) as u32).collect();
            let members: Vec<(&str, u32)> = names
                .iter()
                .map(String::as_str)
                .zip(weights.iter().copied())
                .collect();
            let t = Maglev::new(&members, MAGLEV_SIZE);
            let total: u32 = weights.iter().sum();
            for (i, share) in t.shares(n).into_iter().enumerate() {
                let want = f64::from(MAGLEV_SIZE) * f64::from(weights[i]) / f64::from(total);
                let off = (share as f64 - want).abs() / want;
                assert!(
                    off < 0.01,
                    "member {i} of {n}: {share} slots, want {want:.0}"
                );
            }
        }
    }

    #[test]
    fn maglev_is_the_same_everywhere_and_removing_a_member_moves_little_else() {
        let names = names(10);
        let all: Vec<(&str, u32)> = names.iter().map(|n| (n.as_str(), 1)).collect();
        let a = Maglev::new(&all, MAGLEV_SIZE);
        assert_eq!(a, Maglev::new(&all, MAGLEV_SIZE), "deterministic");
        // Take member 3 out (weight 0 keeps the other indexes).
        let mut less = all.clone();
        less[3].1 = 0;
        let b = Maglev::new(&less, MAGLEV_SIZE);
        let moved_others = a
            .slots()
            .iter()
            .zip(b.slots())
            .filter(|(x, y)| **x != 3 && x != y)
            .count();
        let frac = moved_others as f64 / f64::from(MAGLEV_SIZE);
        assert!(frac < 0.03, "{frac:.4} of the slots of other members moved");
        assert!(
            b.slots().iter().all(|&i| i != 3),
            "the removed member holds nothing"
        );
    }

    #[test]
    fn maglev_maps_a_client_by_its_ip_and_an_empty_table_to_nothing() {
        let names = names(4);
        let all: Vec<(&str, u32)> = names.iter().map(|n| (n.as_str(), 1)).collect();
        let t = Maglev::new(&all, MAGLEV_SIZE);
        let a: IpAddr = "192.0.2.7".parse().expect("ip");
        let mapped: IpAddr = "::ffff:192.0.2.7".parse().expect("ip");
        assert_eq!(
            t.lookup(a),
            t.lookup(mapped),
            "IPv4-mapped is the same client"
        );
        assert!(t.lookup(a).is_some_and(|i| i < 4));
        assert_eq!(Maglev::new(&[], MAGLEV_SIZE).lookup(a), None);
    }
}
