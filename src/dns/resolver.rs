//! The resolver state machine: lookups in, query datagrams out, replies
//! and time in, answers out. No I/O, no clock (see the module doc of `dns`).

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};

use super::cache::{Cache, negative_ttl, positive_ttl};
use super::message::{
    QType, Rcode, Record, Reply, decode_reply, encode_query, normalise, valid_name,
};
use super::{Answer, Hosts, Prefer, ResolveError};
use crate::time::Millis;

/// Aliases followed in one answer before it is called unusable (a loop,
/// or a chain no sane zone has).
const MAX_CNAME_HOPS: usize = 8;
/// Fresh ids tried before accepting one that is already in flight to the
/// same nameserver (the reply then still needs the right question).
const ID_DRAWS: usize = 8;

/// What a shard's resolver is configured with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResolverConfig {
    /// Asked in order: a try that times out goes to the next one.
    pub nameservers: Vec<SocketAddr>,
    /// How long one try waits for its reply.
    pub timeout: Millis,
    /// Rounds over every nameserver before a query times out.
    pub attempts: u32,
    pub prefer: Prefer,
    pub hosts: Hosts,
    /// Lookups pending at once; past it a lookup is `Overloaded`.
    pub max_pending: usize,
    /// Names the cache holds.
    pub max_cache: usize,
}

impl Default for ResolverConfig {
    fn default() -> Self {
        ResolverConfig {
            nameservers: Vec::new(),
            timeout: 2000,
            attempts: 2,
            prefer: Prefer::Ipv4,
            hosts: Hosts::default(),
            max_pending: 1024,
            max_cache: 4096,
        }
    }
}

/// The result of asking for a name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Lookup {
    Ready(Answer),
    /// The answer comes later, through `on_reply` or `on_time`.
    Pending,
}

/// Events since the last `take_counts`, for the shard's counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    /// Query datagrams handed out by `next_send`.
    pub queries: u64,
    /// Tries that got no reply in time.
    pub timeouts: u64,
    /// Replies that said NXDOMAIN / no address, or SERVFAIL, REFUSED or
    /// another failure (including a truncated reply without addresses).
    pub failures: u64,
    /// Lookups answered from the cache.
    pub cache_hits: u64,
    /// Datagrams that matched no pending query (wrong id, wrong question,
    /// not a reply, not DNS).
    pub ignored: u64,
}

/// How one query (one name, one type) ended.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Outcome {
    Addrs(Vec<IpAddr>, u32),
    NotFound(u32),
    Failure,
    Timeout,
}

#[derive(Clone, Copy, Debug)]
struct Try {
    ns: usize,
    id: u16,
    deadline: Millis,
}

#[derive(Debug)]
struct Query {
    qtype: QType,
    /// Tries sent so far.
    tries: u32,
    current: Option<Try>,
    /// (nameserver, id) of every try: a late reply to an earlier try still
    /// answers the query.
    ids: Vec<(usize, u16)>,
    outcome: Option<Outcome>,
}

#[derive(Debug)]
struct Pending {
    name: String,
    waiters: Vec<u64>,
    /// One per family asked, preferred first.
    queries: Vec<Query>,
}

/// A shard's DNS client (see the module doc).
pub struct Resolver {
    cfg: ResolverConfig,
    rng: u64,
    cache: Cache,
    lookups: HashMap<u64, Pending>,
    by_name: HashMap<String, u64>,
    next_lookup: u64,
    /// (nameserver, id) -> (lookup, query index).
    inflight: HashMap<(usize, u16), (u64, usize)>,
    /// (deadline, lookup, query index) of every try waiting for a reply.
    deadlines: BTreeSet<(Millis, u64, usize)>,
    /// Tries to send: (lookup, query index).
    sends: VecDeque<(u64, usize)>,
    counts: Counts,
}

impl Resolver {
    pub fn new(cfg: ResolverConfig, seed: u64) -> Resolver {
        Resolver {
            cache: Cache::new(cfg.max_cache),
            cfg,
            // xorshift must not start at 0; mix the seed so shards 0, 1, 2...
            // do not draw related ids.
            rng: seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1,
            lookups: HashMap::new(),
            by_name: HashMap::new(),
            next_lookup: 0,
            inflight: HashMap::new(),
            deadlines: BTreeSet::new(),
            sends: VecDeque::new(),
            counts: Counts::default(),
        }
    }

    pub fn config(&self) -> &ResolverConfig {
        &self.cfg
    }

    /// Lookups waiting for nameservers.
    pub fn pending(&self) -> usize {
        self.lookups.len()
    }

    /// Events since the last call.
    pub fn take_counts(&mut self) -> Counts {
        std::mem::take(&mut self.counts)
    }

    /// A reload's hosts file.
    pub fn set_hosts(&mut self, hosts: Hosts) {
        self.cfg.hosts = hosts;
    }

    /// A reload's configuration. Pending lookups carry on: a try in flight
    /// to a nameserver that is gone times out and the next goes to the new
    /// list. The cache is emptied when the nameservers change (they may
    /// answer differently).
    pub fn reconfigure(&mut self, cfg: ResolverConfig) {
        if cfg.nameservers != self.cfg.nameservers || cfg.max_cache != self.cfg.max_cache {
            self.cache = Cache::new(cfg.max_cache);
        }
        self.cfg = cfg;
    }

    /// Hosts first, then the cache, else queries (A and AAAA as the
    /// preference says) are queued for `next_send`, and `waiter` gets the
    /// answer from `on_reply` or `on_time`.
    pub fn lookup(&mut self, name: &str, waiter: u64, now: Millis) -> Lookup {
        if let Ok(ip) = name.parse::<IpAddr>() {
            return Lookup::Ready(Ok(vec![ip]));
        }
        let key = normalise(name);
        if !valid_name(&key) {
            return Lookup::Ready(Err(ResolveError::NotFound));
        }
        if let Some(addrs) = self.cfg.hosts.get(&key) {
            let addrs = self.cfg.prefer.order(addrs);
            if !addrs.is_empty() {
                return Lookup::Ready(Ok(addrs));
            }
        }
        if let Some(answer) = self.cache.get(&key, now) {
            self.counts.cache_hits += 1;
            return Lookup::Ready(answer);
        }
        if self.cfg.nameservers.is_empty() {
            return Lookup::Ready(Err(ResolveError::NoNameservers));
        }
        if let Some(p) = self.by_name.get(&key).and_then(|l| self.lookups.get_mut(l)) {
            p.waiters.push(waiter);
            return Lookup::Pending;
        }
        if self.lookups.len() >= self.cfg.max_pending {
            return Lookup::Ready(Err(ResolveError::Overloaded));
        }
        self.start(key, waiter, now);
        Lookup::Pending
    }

    fn start(&mut self, name: String, waiter: u64, now: Millis) {
        let lookup = self.next_lookup;
        self.next_lookup += 1;
        let queries: Vec<Query> = self
            .cfg
            .prefer
            .qtypes()
            .iter()
            .map(|&qtype| Query {
                qtype,
                tries: 0,
                current: None,
                ids: Vec::new(),
                outcome: None,
            })
            .collect();
        let n = queries.len();
        self.by_name.insert(name.clone(), lookup);
        self.lookups.insert(
            lookup,
            Pending {
                name,
                waiters: vec![waiter],
                queries,
            },
        );
        for q in 0..n {
            self.send_try(lookup, q, now);
        }
    }

    /// Queues the next try of query `q` of `lookup`: to the nameserver after
    /// the last one tried, with a fresh id.
    fn send_try(&mut self, lookup: u64, q: usize, now: Millis) {
        let n = self.cfg.nameservers.len().max(1);
        let Some(tries) = self.query(lookup, q).map(|q| q.tries) else {
            return;
        };
        let ns = tries as usize % n;
        let id = self.fresh_id(ns);
        let deadline = now.saturating_add(self.cfg.timeout);
        let Some(query) = self.query_mut(lookup, q) else {
            return;
        };
        query.tries += 1;
        query.current = Some(Try { ns, id, deadline });
        query.ids.push((ns, id));
        self.inflight.insert((ns, id), (lookup, q));
        self.deadlines.insert((deadline, lookup, q));
        self.sends.push_back((lookup, q));
    }

    fn fresh_id(&mut self, ns: usize) -> u16 {
        let mut id = 0;
        for _ in 0..ID_DRAWS {
            id = (self.next_random() >> 32) as u16;
            if !self.inflight.contains_key(&(ns, id)) {
                break;
            }
        }
        id
    }

    fn next_random(&mut self) -> u64 {
        // xorshift64: ids need to be unpredictable to an off-path sender
        // only as far as 16 bits go; the question must match as well.
        let mut x = self.rng;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.rng = x;
        x
    }

    fn query(&self, lookup: u64, q: usize) -> Option<&Query> {
        self.lookups.get(&lookup)?.queries.get(q)
    }

    fn query_mut(&mut self, lookup: u64, q: usize) -> Option<&mut Query> {
        self.lookups.get_mut(&lookup)?.queries.get_mut(q)
    }

    /// The next query datagram to send, and the index of the nameserver
    /// (in `config().nameservers`) it goes to.
    pub fn next_send(&mut self) -> Option<(usize, Vec<u8>)> {
        while let Some((lookup, q)) = self.sends.pop_front() {
            let Some(p) = self.lookups.get(&lookup) else {
                continue;
            };
            let Some(query) = p.queries.get(q) else {
                continue;
            };
            let (Some(t), None) = (query.current, &query.outcome) else {
                continue;
            };
            // The name was checked by `valid_name`; an encoder refusal
            // leaves the try to time out like a lost datagram.
            if let Some(bytes) = encode_query(t.id, &p.name, query.qtype) {
                self.counts.queries += 1;
                return Some((t.ns, bytes));
            }
        }
        None
    }

    /// A datagram from nameserver `ns`. It answers a query only if its id,
    /// question name, type and class match a try sent to `ns`; anything
    /// else is counted as ignored. Finished lookups go to `done`.
    pub fn on_reply(
        &mut self,
        ns: usize,
        datagram: &[u8],
        now: Millis,
        done: &mut Vec<(u64, Answer)>,
    ) {
        let Some((reply, lookup, q)) = self.match_reply(ns, datagram) else {
            self.counts.ignored += 1;
            return;
        };
        self.inflight.remove(&(ns, reply.id));
        let Some(p) = self.lookups.get(&lookup) else {
            return;
        };
        let Some(query) = p.queries.get(q) else {
            return;
        };
        let current = query
            .current
            .is_some_and(|t| t.ns == ns && t.id == reply.id);
        let outcome = outcome(&reply, &p.name, query.qtype);
        if !matches!(outcome, Outcome::Addrs(..)) {
            self.counts.failures += 1;
        }
        if outcome == Outcome::Failure {
            // Another nameserver may do better: a failure of the try in
            // flight moves on at once; one of an earlier try changes nothing.
            if current && query.tries < self.max_tries() {
                self.retry_now(lookup, q, now);
                return;
            }
            if !current && query.current.is_some() {
                return;
            }
        }
        self.settle(lookup, q, outcome, now, done);
    }

    /// The reply, and the (lookup, query) it answers.
    fn match_reply(&self, ns: usize, datagram: &[u8]) -> Option<(Reply, u64, usize)> {
        let reply = decode_reply(datagram)?;
        let &(lookup, q) = self.inflight.get(&(ns, reply.id))?;
        let p = self.lookups.get(&lookup)?;
        let query = p.queries.get(q)?;
        let asked = Some((p.name.clone(), query.qtype));
        (reply.response && reply.question == asked).then_some((reply, lookup, q))
    }

    fn max_tries(&self) -> u32 {
        let n = u32::try_from(self.cfg.nameservers.len()).unwrap_or(u32::MAX);
        self.cfg.attempts.max(1).saturating_mul(n.max(1))
    }

    fn retry_now(&mut self, lookup: u64, q: usize, now: Millis) {
        if let Some(t) = self
            .query_mut(lookup, q)
            .and_then(|query| query.current.take())
        {
            self.deadlines.remove(&(t.deadline, lookup, q));
        }
        self.send_try(lookup, q, now);
    }

    /// Per-try timeouts: each try whose deadline passed goes to the next
    /// nameserver, or its query gives up after `attempts` rounds (or at
    /// once when the other family already has addresses: a broken AAAA
    /// path must not hold a working A answer back for every retry).
    pub fn on_time(&mut self, now: Millis, done: &mut Vec<(u64, Answer)>) {
        while let Some(&(deadline, lookup, q)) = self.deadlines.first() {
            if deadline > now {
                break;
            }
            self.deadlines.pop_first();
            self.counts.timeouts += 1;
            let max = self.max_tries();
            let Some(p) = self.lookups.get_mut(&lookup) else {
                continue;
            };
            let sibling_has_addrs = p
                .queries
                .iter()
                .any(|other| matches!(other.outcome, Some(Outcome::Addrs(..))));
            let Some(query) = p.queries.get_mut(q) else {
                continue;
            };
            query.current = None;
            if query.tries < max && !sibling_has_addrs {
                self.send_try(lookup, q, now);
            } else {
                self.settle(lookup, q, Outcome::Timeout, now, done);
            }
        }
    }

    /// When `on_time` must be called next.
    pub fn deadline(&self) -> Option<Millis> {
        self.deadlines.first().map(|d| d.0)
    }

    /// Query `q` of `lookup` ended with `outcome`; the lookup finishes once
    /// every query has.
    fn settle(
        &mut self,
        lookup: u64,
        q: usize,
        outcome: Outcome,
        now: Millis,
        done: &mut Vec<(u64, Answer)>,
    ) {
        let Some(query) = self.query_mut(lookup, q) else {
            return;
        };
        query.outcome = Some(outcome);
        let current = query.current.take();
        if let Some(t) = current {
            self.deadlines.remove(&(t.deadline, lookup, q));
        }
        let finished = self
            .lookups
            .get(&lookup)
            .is_some_and(|p| p.queries.iter().all(|q| q.outcome.is_some()));
        if finished {
            self.finish(lookup, now, done);
        }
    }

    fn finish(&mut self, lookup: u64, now: Millis, done: &mut Vec<(u64, Answer)>) {
        let Some(p) = self.lookups.remove(&lookup) else {
            return;
        };
        self.by_name.remove(&p.name);
        for (q, query) in p.queries.iter().enumerate() {
            for key in &query.ids {
                self.inflight.remove(key);
            }
            if let Some(t) = query.current {
                self.deadlines.remove(&(t.deadline, lookup, q));
            }
        }
        let (answer, ttl) = combine(&p.queries);
        if let Some(ttl) = ttl {
            self.cache.insert(&p.name, answer.clone(), ttl, now);
        }
        for w in p.waiters {
            done.push((w, answer.clone()));
        }
    }
}

/// What a matched reply says about its query.
fn outcome(reply: &Reply, name: &str, qtype: QType) -> Outcome {
    match reply.rcode {
        Rcode::NameError => Outcome::NotFound(negative_ttl(reply.negative_ttl)),
        Rcode::Failure => Outcome::Failure,
        Rcode::NoError => match addresses(reply, name, qtype) {
            Some((addrs, ttl)) if !addrs.is_empty() => Outcome::Addrs(addrs, ttl),
            // TC without addresses: the rest did not fit, and there is no
            // TCP fallback.
            _ if reply.truncated => Outcome::Failure,
            Some(_) => Outcome::NotFound(negative_ttl(reply.negative_ttl)),
            None => Outcome::Failure,
        },
    }
}

/// The addresses of `qtype` for `name`, following CNAMEs in the answer
/// section, with the smallest TTL along the chain; `None` for a chain
/// longer than `MAX_CNAME_HOPS` (or a loop).
fn addresses(reply: &Reply, name: &str, qtype: QType) -> Option<(Vec<IpAddr>, u32)> {
    let mut owner = name.to_owned();
    let mut ttl = u32::MAX;
    for _ in 0..=MAX_CNAME_HOPS {
        let mut addrs = Vec::new();
        let mut alias = None;
        for (rr_owner, rr_ttl, record) in &reply.answers {
            if *rr_owner != owner {
                continue;
            }
            match record {
                Record::Addr(ip) if ip.is_ipv4() == (qtype == QType::A) => {
                    addrs.push(*ip);
                    ttl = ttl.min(*rr_ttl);
                }
                Record::Addr(_) => {}
                Record::Cname(target) => alias = Some((target.clone(), *rr_ttl)),
            }
        }
        match alias {
            Some((target, t)) if addrs.is_empty() => {
                ttl = ttl.min(t);
                owner = target;
            }
            _ => return Some((addrs, positive_ttl(ttl))),
        }
    }
    None
}

/// The lookup's answer from its queries (preferred family first), and how
/// long to cache it (`None`: not cached — timeouts and failures are retried
/// by the next lookup).
fn combine(queries: &[Query]) -> (Answer, Option<u32>) {
    let mut addrs = Vec::new();
    let mut ttl = u32::MAX;
    let mut negative = u32::MAX;
    let mut error = ResolveError::NotFound;
    for q in queries {
        match &q.outcome {
            Some(Outcome::Addrs(a, t)) => {
                addrs.extend_from_slice(a);
                ttl = ttl.min(*t);
            }
            Some(Outcome::NotFound(t)) => negative = negative.min(*t),
            Some(Outcome::Failure) if error == ResolveError::NotFound => {
                error = ResolveError::ServerFailure;
            }
            Some(Outcome::Failure) => {}
            Some(Outcome::Timeout) | None => error = ResolveError::Timeout,
        }
    }
    if !addrs.is_empty() {
        return (Ok(addrs), Some(ttl));
    }
    let cached = (error == ResolveError::NotFound).then_some(negative);
    (Err(error), cached)
}

#[cfg(test)]
#[path = "resolver_tests.rs"]
mod tests;
