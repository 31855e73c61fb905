//! Who gets a place in a listener's session table when a new client arrives,
//! resisting squatting the way Linux conntrack does with unassured entries.
//! A session is *embryonic* until its upstream first answers (anyone can
//! forge a source address and send one datagram; only a real client gets
//! replies, and keeps talking). Embryonic sessions are capped at a share of
//! the table, and when the table is full, or the share is used, the oldest
//! embryonic session is evicted to admit the newcomer. Sessions that have
//! seen a reply are never evicted for a newcomer; with none embryonic left a
//! full table refuses new clients as before.

use std::collections::VecDeque;

/// Embryonic sessions may hold at most this share (1/N) of a listener's
/// per-shard `max_sessions`. A flood of forged sources can then never hold
/// more than half the table: the other half stays for clients whose upstream
/// answered. And a real newcomer, admitted at the back of the embryonic queue,
/// survives `share / flood rate` before it could be evicted — at the issue's
/// 10,000 sessions and 3,000 forged datagrams/s, 1.7 s, ample for a first
/// reply. A smaller share would shorten that time, a larger one leave less
/// room for assured sessions.
pub(crate) const EMBRYONIC_SHARE_DIVISOR: u32 = 2;

/// The most embryonic sessions a listener's shard may hold, for its `limit`.
pub(crate) fn embryonic_cap(limit: u32) -> u32 {
    (limit / EMBRYONIC_SHARE_DIVISOR).max(1)
}

/// What to do with a new client.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Admission {
    Admit,
    /// Evict the oldest embryonic session, then admit.
    EvictEmbryonic,
    /// The table is full of sessions that have seen replies (`session_limit`).
    Refuse,
}

/// The rule for a newcomer, given the sessions `active` (of `limit`) and how
/// many of them are `embryonic`.
pub(crate) fn admission(active: u32, limit: u32, embryonic: u32) -> Admission {
    let full = active >= limit;
    if embryonic > 0 && (full || embryonic >= embryonic_cap(limit)) {
        Admission::EvictEmbryonic
    } else if full {
        Admission::Refuse
    } else {
        Admission::Admit
    }
}

/// Entries beyond twice the embryonic count (plus this) trigger a compaction
/// of the queue, so entries of sessions that became assured or ended while
/// others stay ahead of them cannot pile up: O(1) amortised per push.
const COMPACT_SLACK: usize = 64;

/// The embryonic sessions of one listener, oldest first. An entry is not
/// removed when its session stops being embryonic (assured or ending): the
/// caller says which entries are still live (a slot and generation check),
/// and dead ones are skipped when popping and dropped when compacting.
#[derive(Debug)]
pub(crate) struct EmbryonicQueue<K> {
    order: VecDeque<K>,
    count: u32,
}

impl<K> Default for EmbryonicQueue<K> {
    fn default() -> Self {
        EmbryonicQueue {
            order: VecDeque::new(),
            count: 0,
        }
    }
}

impl<K: Copy> EmbryonicQueue<K> {
    /// Embryonic sessions now.
    pub(crate) fn count(&self) -> u32 {
        self.count
    }

    /// A new (embryonic) session.
    pub(crate) fn push(&mut self, key: K, live: impl FnMut(&K) -> bool) {
        self.count += 1;
        self.order.push_back(key);
        if self.order.len() > 2 * self.count as usize + COMPACT_SLACK {
            self.order.retain(live);
        }
    }

    /// A session left the embryonic set (it was answered, or it is ending).
    pub(crate) fn leave(&mut self) {
        self.count = self.count.saturating_sub(1);
    }

    /// The oldest live entry, taken off the queue. The count is unchanged:
    /// the caller ends that session, which then `leave`s.
    pub(crate) fn pop_oldest(&mut self, mut live: impl FnMut(&K) -> bool) -> Option<K> {
        while let Some(k) = self.order.pop_front() {
            if live(&k) {
                return Some(k);
            }
        }
        None
    }

    /// Entries held, live or not (tests: the queue stays bounded).
    #[cfg(test)]
    pub(crate) fn entries(&self) -> usize {
        self.order.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn below_the_share_and_the_limit_a_newcomer_is_simply_admitted() {
        assert_eq!(admission(0, 10, 0), Admission::Admit);
        assert_eq!(admission(9, 10, 4), Admission::Admit);
    }

    #[test]
    fn a_full_table_evicts_an_embryonic_session_for_a_newcomer() {
        assert_eq!(admission(10, 10, 1), Admission::EvictEmbryonic);
        assert_eq!(admission(12, 10, 5), Admission::EvictEmbryonic);
    }

    #[test]
    fn a_full_table_of_answered_sessions_refuses() {
        assert_eq!(admission(10, 10, 0), Admission::Refuse);
    }

    #[test]
    fn embryonic_sessions_never_hold_more_than_their_share() {
        assert_eq!(embryonic_cap(10_000), 5_000);
        assert_eq!(admission(5_000, 10_000, 5_000), Admission::EvictEmbryonic);
        assert_eq!(admission(6_000, 10_000, 4_999), Admission::Admit);
        assert_eq!(embryonic_cap(1), 1, "a one-session share still admits one");
        assert_eq!(admission(0, 0, 0), Admission::Refuse);
    }

    #[test]
    fn the_oldest_live_embryonic_session_is_evicted_first() {
        let mut q = EmbryonicQueue::default();
        let mut live: HashSet<u32> = HashSet::new();
        for k in 1..=3 {
            live.insert(k);
            q.push(k, |k| live.contains(k));
        }
        // 1 was answered: no longer embryonic, so it is skipped.
        live.remove(&1);
        q.leave();
        assert_eq!(q.count(), 2);
        assert_eq!(q.pop_oldest(|k| live.contains(k)), Some(2));
        live.remove(&2);
        q.leave();
        assert_eq!(q.pop_oldest(|k| live.contains(k)), Some(3));
        live.remove(&3);
        q.leave();
        assert_eq!(q.pop_oldest(|k| live.contains(k)), None);
        assert_eq!(q.count(), 0);
    }

    #[test]
    fn entries_of_answered_sessions_do_not_pile_up_behind_an_old_one() {
        // One long-lived embryonic session at the front; a million sessions
        // behind it that are each answered at once.
        let mut q = EmbryonicQueue::default();
        let mut live: HashSet<u32> = HashSet::new();
        live.insert(0);
        q.push(0, |k| live.contains(k));
        for k in 1..1_000_000 {
            live.insert(k);
            q.push(k, |k| live.contains(k));
            live.remove(&k);
            q.leave();
        }
        assert_eq!(q.count(), 1);
        assert!(q.entries() <= 2 + COMPACT_SLACK + 1, "{}", q.entries());
        assert_eq!(q.pop_oldest(|k| live.contains(k)), Some(0));
    }
}
