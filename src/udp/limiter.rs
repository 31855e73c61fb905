//! Per-source new-session rate limit: a token bucket per source IP (burst =
//! the per-second rate). The table is bounded — a flood from many spoofed
//! sources must not grow memory — so when it is full, buckets that have
//! refilled completely (idle for a second or more) are dropped; if none has,
//! new sources are refused until some do.

use std::collections::HashMap;
use std::net::IpAddr;

use crate::time::Millis;

/// Most sources tracked at once per listener per shard (~48 bytes each).
pub(crate) const MAX_SOURCES: usize = 65_536;

#[derive(Clone, Copy, Debug)]
struct Bucket {
    /// Tokens in thousandths, so refill needs no floating point.
    milli: u64,
    last: Millis,
}

#[derive(Debug)]
pub(crate) struct SourceLimiter {
    per_second: u64,
    buckets: HashMap<IpAddr, Bucket>,
    max_sources: usize,
}

impl SourceLimiter {
    pub(crate) fn new(per_second: u32) -> SourceLimiter {
        Self::with_capacity(per_second, MAX_SOURCES)
    }

    pub(crate) fn with_capacity(per_second: u32, max_sources: usize) -> SourceLimiter {
        SourceLimiter {
            per_second: u64::from(per_second.max(1)),
            buckets: HashMap::new(),
            max_sources: max_sources.max(1),
        }
    }

    fn full(&self) -> u64 {
        self.per_second * 1000
    }

    fn refill(&self, b: &mut Bucket, now: Millis) {
        let elapsed = now.saturating_sub(b.last);
        b.milli = (b.milli + elapsed.saturating_mul(self.per_second)).min(self.full());
        b.last = now;
    }

    /// Takes one new-session token for `ip`; false when the source is over its rate.
    pub(crate) fn allow(&mut self, ip: IpAddr, now: Millis) -> bool {
        if !self.buckets.contains_key(&ip) && self.buckets.len() >= self.max_sources {
            self.evict_idle(now);
            if self.buckets.len() >= self.max_sources {
                return false;
            }
        }
        let full = self.full();
        let mut b = self.buckets.get(&ip).copied().unwrap_or(Bucket {
            milli: full,
            last: now,
        });
        self.refill(&mut b, now);
        let ok = b.milli >= 1000;
        if ok {
            b.milli -= 1000;
        }
        self.buckets.insert(ip, b);
        ok
    }

    fn evict_idle(&mut self, now: Millis) {
        let (per_second, full) = (self.per_second, self.full());
        self.buckets.retain(|_, b| {
            let refilled = b.milli + now.saturating_sub(b.last).saturating_mul(per_second);
            refilled < full
        });
    }

    #[cfg(test)]
    pub(crate) fn sources(&self) -> usize {
        self.buckets.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("ip")
    }

    #[test]
    fn burst_then_refill_at_the_rate() {
        let mut l = SourceLimiter::new(5);
        let a = ip("10.0.0.1");
        for i in 0..5 {
            assert!(l.allow(a, 0), "burst token {i}");
        }
        assert!(!l.allow(a, 0), "sixth in the same instant");
        assert!(!l.allow(a, 199), "not yet a whole token after 199ms");
        assert!(l.allow(a, 200), "one token per 200ms at 5/s");
        assert!(!l.allow(a, 200));
        assert!(
            l.allow(ip("10.0.0.2"), 200),
            "other sources have their own bucket"
        );
    }

    #[test]
    fn the_table_is_bounded_and_idle_sources_make_room() {
        let mut l = SourceLimiter::with_capacity(1, 3);
        for i in 1..=3 {
            assert!(l.allow(ip(&format!("10.0.0.{i}")), 0));
        }
        assert!(
            !l.allow(ip("10.0.0.9"), 10),
            "full of recent sources: refused"
        );
        assert_eq!(l.sources(), 3);
        assert!(
            l.allow(ip("10.0.0.9"), 1_000),
            "after a second the old buckets are full again and evicted"
        );
        assert!(l.sources() <= 3);
    }
}
