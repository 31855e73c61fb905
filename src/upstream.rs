//! Upstreams as values: a stable `UpstreamId` per upstream of the shard's
//! table (its address, its name for logs, its counters live beside it in the
//! shard), a `Target` a connection connects to, and the balancer a listener
//! owns, which picks among its upstreams (`pick`) and hears how each attempt
//! went (`report`). Round robin today; more policies build on this seam. No
//! I/O here.

use std::net::SocketAddr;

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

/// One connection's walk through its balancer: which member it started at
/// and how many it has tried (each upstream at most once per client).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Attempts {
    first: Option<u32>,
    tried: u16,
}

impl Attempts {
    pub fn tried(&self) -> u16 {
        self.tried
    }
}

/// Smooth round robin over a listener's upstreams: each connection starts
/// at the next member and, when an attempt fails, goes on to the following
/// one until every member was tried once.
#[derive(Clone, Debug)]
pub struct RoundRobin {
    members: Vec<Target>,
    cursor: u32,
}

impl RoundRobin {
    pub fn new(members: Vec<Target>) -> RoundRobin {
        RoundRobin { members, cursor: 0 }
    }

    pub fn len(&self) -> usize {
        self.members.len()
    }

    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    pub fn members(&self) -> &[Target] {
        &self.members
    }

    /// The next target for a connection (`None`: every member was tried).
    pub fn pick(&mut self, _client: Option<SocketAddr>, a: &mut Attempts) -> Option<Target> {
        let n = u32::try_from(self.members.len()).ok().filter(|n| *n > 0)?;
        if u32::from(a.tried) >= n {
            return None;
        }
        let first = *a.first.get_or_insert_with(|| {
            let f = self.cursor % n;
            self.cursor = (f + 1) % n;
            f
        });
        let at = (first + u32::from(a.tried)) % n;
        a.tried += 1;
        self.members.get(at as usize).copied()
    }

    /// How an attempt went. Round robin does not weigh outcomes; health
    /// (the next issue) will.
    pub fn report(&mut self, _target: Target, _outcome: Outcome) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(n: u32) -> RoundRobin {
        RoundRobin::new(
            (0..n)
                .map(|i| Target {
                    upstream: Some(UpstreamId(i)),
                    addr: SocketAddr::from(([10, 0, 0, i as u8], 80)),
                })
                .collect(),
        )
    }

    fn ids(t: Option<Target>) -> Option<u32> {
        t.and_then(|t| t.upstream).map(|u| u.0)
    }

    #[test]
    fn connections_start_at_successive_members() {
        let mut rr = pool(3);
        let firsts: Vec<_> = (0..6)
            .map(|_| ids(rr.pick(None, &mut Attempts::default())))
            .collect();
        assert_eq!(
            firsts,
            vec![Some(0), Some(1), Some(2), Some(0), Some(1), Some(2)]
        );
    }

    #[test]
    fn a_failing_connection_tries_every_member_once_from_its_start() {
        let mut rr = pool(3);
        let _ = rr.pick(None, &mut Attempts::default());
        let mut a = Attempts::default();
        let walk: Vec<_> = (0..4).map(|_| ids(rr.pick(None, &mut a))).collect();
        assert_eq!(walk, vec![Some(1), Some(2), Some(0), None]);
        // Retries do not move the cursor: the next connection starts at 2.
        assert_eq!(ids(rr.pick(None, &mut Attempts::default())), Some(2));
    }

    #[test]
    fn an_empty_pool_picks_nothing() {
        let mut rr = RoundRobin::new(Vec::new());
        assert_eq!(rr.pick(None, &mut Attempts::default()), None);
    }
}
