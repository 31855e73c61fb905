//! The answers a shard's resolver remembers: bounded in names, each until
//! its TTL runs out.

use std::collections::{BTreeSet, HashMap};

use super::Answer;
use crate::time::Millis;

/// Shortest time an answer is kept: a TTL of 0 would send a query per
/// connection to a name that changes often.
pub const MIN_TTL_S: u32 = 1;
/// Longest time an answer is kept, whatever its TTL: a moved name is seen
/// within the hour even if its owner set a day.
pub const MAX_TTL_S: u32 = 3600;
/// Longest time "no such name" is kept (shorter than positive answers:
/// a name about to be created should work soon).
pub const MAX_NEGATIVE_TTL_S: u32 = 30;

/// A positive TTL, clamped.
pub fn positive_ttl(ttl: u32) -> u32 {
    ttl.clamp(MIN_TTL_S, MAX_TTL_S)
}

/// A negative TTL (from the SOA, or the maximum without one), clamped.
pub fn negative_ttl(soa: Option<u32>) -> u32 {
    soa.unwrap_or(MAX_NEGATIVE_TTL_S)
        .clamp(MIN_TTL_S, MAX_NEGATIVE_TTL_S)
}

struct Entry {
    answer: Answer,
    expires: Millis,
}

/// Name (normalised) -> answer, at most `capacity` names; when full, the
/// entry that expires soonest makes room.
pub struct Cache {
    capacity: usize,
    entries: HashMap<String, Entry>,
    /// (expiry, name) of every entry: the soonest first.
    by_expiry: BTreeSet<(Millis, String)>,
}

impl Cache {
    pub fn new(capacity: usize) -> Cache {
        Cache {
            capacity,
            entries: HashMap::new(),
            by_expiry: BTreeSet::new(),
        }
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The answer for `name` while it is fresh at `now` (an expired one is
    /// dropped).
    pub fn get(&mut self, name: &str, now: Millis) -> Option<Answer> {
        let expires = self.entries.get(name)?.expires;
        if expires <= now {
            self.remove(name);
            return None;
        }
        self.entries.get(name).map(|e| e.answer.clone())
    }

    /// Keeps `answer` for `ttl_s` seconds from `now`.
    pub fn insert(&mut self, name: &str, answer: Answer, ttl_s: u32, now: Millis) {
        if self.capacity == 0 {
            return;
        }
        self.remove(name);
        while self.entries.len() >= self.capacity {
            let Some((_, soonest)) = self.by_expiry.pop_first() else {
                break;
            };
            self.entries.remove(&soonest);
        }
        let expires = now.saturating_add(u64::from(ttl_s) * 1000);
        self.by_expiry.insert((expires, name.to_owned()));
        self.entries
            .insert(name.to_owned(), Entry { answer, expires });
    }

    fn remove(&mut self, name: &str) {
        if let Some(e) = self.entries.remove(name) {
            self.by_expiry.remove(&(e.expires, name.to_owned()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::ResolveError;
    use super::*;

    fn ip(s: &str) -> Answer {
        Ok(vec![s.parse().unwrap()])
    }

    #[test]
    fn answers_expire_after_their_ttl() {
        let mut c = Cache::new(10);
        c.insert("a", ip("192.0.2.1"), 5, 1000);
        assert_eq!(c.get("a", 5999), Some(ip("192.0.2.1")));
        assert_eq!(c.get("a", 6000), None);
        assert!(c.is_empty(), "an expired entry is dropped when met");
    }

    #[test]
    fn a_full_cache_evicts_the_soonest_to_expire() {
        let mut c = Cache::new(2);
        c.insert("long", ip("192.0.2.1"), 100, 0);
        c.insert("short", Err(ResolveError::NotFound), 2, 0);
        c.insert("new", ip("192.0.2.3"), 50, 0);
        assert_eq!(c.len(), 2);
        assert_eq!(c.get("short", 1), None);
        assert!(c.get("long", 1).is_some());
        assert!(c.get("new", 1).is_some());
        // Re-inserting a name replaces it, it does not take a second slot.
        c.insert("new", ip("192.0.2.4"), 50, 0);
        assert_eq!(c.len(), 2);
        assert_eq!(c.get("new", 1), Some(ip("192.0.2.4")));
    }

    #[test]
    fn ttls_are_clamped() {
        assert_eq!(positive_ttl(0), 1);
        assert_eq!(positive_ttl(86_400), 3600);
        assert_eq!(positive_ttl(300), 300);
        assert_eq!(negative_ttl(None), 30);
        assert_eq!(negative_ttl(Some(3600)), 30);
        assert_eq!(negative_ttl(Some(5)), 5);
        assert_eq!(negative_ttl(Some(0)), 1);
    }
}
