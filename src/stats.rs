//! Counters: one table of definitions (`counters!` below plus the close,
//! session-end and drop reason families), kept per listener, per upstream and
//! per shard as plain integers owned by one shard thread, copied out as
//! snapshots for the control thread to sum and log (HAProxy's per-thread
//! activity counters; nothing here is shared while the shard runs).

use std::fmt::Write as _;

use crate::udp::{DropReason, SessionEnd};

/// Why a connection ended. Every close is counted under exactly one reason.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CloseReason {
    /// The client sent FIN first; both directions then finished.
    ClientEof,
    /// The upstream sent FIN first; both directions then finished.
    UpstreamEof,
    /// The client reset the connection; the reset was forwarded upstream.
    ClientReset,
    /// The upstream reset the connection; the reset was forwarded to the client.
    UpstreamReset,
    /// Every upstream refused the connection.
    ConnectRefused,
    /// The last upstream tried did not answer within connect_timeout.
    ConnectTimeout,
    /// Connecting failed for another reason (unreachable, out of sockets...).
    ConnectError,
    /// No byte moved in either direction for idle_timeout.
    IdleTimeout,
    /// One direction had ended and the other was silent for half_close_timeout.
    HalfCloseTimeout,
    /// The listener was at max_connections; closed right after accept.
    LimitReached,
    /// A socket error other than a reset (the peer got a reset).
    Error,
    /// Closed by shutdown after drain_timeout.
    Shutdown,
    /// `accept_proxy`: the client is not in `trusted_proxies` (closed at accept).
    ProxyUntrusted,
    /// `accept_proxy`: not a valid PROXY header (or the stream ended inside one).
    ProxyMalformed,
    /// `accept_proxy`: no complete PROXY header within `proxy_timeout`.
    ProxyTimeout,
    /// SNI routes: no complete ClientHello within `sni_timeout`.
    SniTimeout,
    /// SNI routes: no complete ClientHello within the first 16 KiB.
    SniTooLarge,
    /// `allow`/`deny` refused the client (at accept, or by the address a
    /// trusted PROXY header gave).
    Denied,
    /// Over `new_connections_per_second` (this shard's share) or
    /// `new_connections_per_second_per_source`: closed right after accept.
    RateLimited,
    /// A SOCKS5 or HTTP CONNECT handshake that is not the protocol's.
    HandshakeMalformed,
    /// No complete SOCKS5 or HTTP CONNECT handshake within `header_timeout`.
    HandshakeTimeout,
    /// No acceptable authentication method, or wrong credentials.
    AuthFailed,
    /// SOCKS5 BIND or UDP ASSOCIATE not allowed, or an HTTP method other than CONNECT.
    CommandUnsupported,
    /// The destination the client named (or dialled) is outside the
    /// listener's `ports`, `destinations_allow` or `destinations_deny`.
    DestinationDenied,
    /// The destination is one of ringfwd's own listen addresses.
    LoopRefused,
    /// The name the client asked for could not be resolved.
    ResolveFailed,
    /// `transparent`: the connection's original destination could not be read.
    NoDestination,
}

impl CloseReason {
    pub const ALL: [CloseReason; 27] = [
        CloseReason::ClientEof,
        CloseReason::UpstreamEof,
        CloseReason::ClientReset,
        CloseReason::UpstreamReset,
        CloseReason::ConnectRefused,
        CloseReason::ConnectTimeout,
        CloseReason::ConnectError,
        CloseReason::IdleTimeout,
        CloseReason::HalfCloseTimeout,
        CloseReason::LimitReached,
        CloseReason::Error,
        CloseReason::Shutdown,
        CloseReason::ProxyUntrusted,
        CloseReason::ProxyMalformed,
        CloseReason::ProxyTimeout,
        CloseReason::SniTimeout,
        CloseReason::SniTooLarge,
        CloseReason::Denied,
        CloseReason::RateLimited,
        CloseReason::HandshakeMalformed,
        CloseReason::HandshakeTimeout,
        CloseReason::AuthFailed,
        CloseReason::CommandUnsupported,
        CloseReason::DestinationDenied,
        CloseReason::LoopRefused,
        CloseReason::ResolveFailed,
        CloseReason::NoDestination,
    ];
    pub const COUNT: usize = Self::ALL.len();

    pub fn name(self) -> &'static str {
        match self {
            CloseReason::ClientEof => "client_eof",
            CloseReason::UpstreamEof => "upstream_eof",
            CloseReason::ClientReset => "client_reset",
            CloseReason::UpstreamReset => "upstream_reset",
            CloseReason::ConnectRefused => "connect_refused",
            CloseReason::ConnectTimeout => "connect_timeout",
            CloseReason::ConnectError => "connect_error",
            CloseReason::IdleTimeout => "idle_timeout",
            CloseReason::HalfCloseTimeout => "half_close_timeout",
            CloseReason::LimitReached => "limit",
            CloseReason::Error => "error",
            CloseReason::Shutdown => "shutdown",
            CloseReason::ProxyUntrusted => "proxy_untrusted",
            CloseReason::ProxyMalformed => "proxy_malformed",
            CloseReason::ProxyTimeout => "proxy_timeout",
            CloseReason::SniTimeout => "sni_timeout",
            CloseReason::SniTooLarge => "sni_too_large",
            CloseReason::Denied => "denied",
            CloseReason::RateLimited => "rate_limited",
            CloseReason::HandshakeMalformed => "handshake_malformed",
            CloseReason::HandshakeTimeout => "handshake_timeout",
            CloseReason::AuthFailed => "auth_failed",
            CloseReason::CommandUnsupported => "command_unsupported",
            CloseReason::DestinationDenied => "destination_denied",
            CloseReason::LoopRefused => "loop_refused",
            CloseReason::ResolveFailed => "resolve_failed",
            CloseReason::NoDestination => "no_destination",
        }
    }

    /// Normal ends are logged at debug; everything else at info (rate-limited).
    pub fn is_normal(self) -> bool {
        matches!(self, CloseReason::ClientEof | CloseReason::UpstreamEof)
    }
}

/// Defines `Counter`: every counter that is not a member of a reason family,
/// with its name in the stats lines (stable: tests and log scrapers parse
/// them) and its meaning.
macro_rules! counters {
    ($( $(#[doc = $doc:literal])+ $variant:ident = $name:literal, )+) => {
        /// A counter of the table (the reason families are `Counters::close`,
        /// `udp_end` and `udp_drop`).
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        pub enum Counter {
            $( $(#[doc = $doc])+ $variant, )+
        }

        impl Counter {
            pub const ALL: &'static [Counter] = &[$(Counter::$variant),+];

            pub fn name(self) -> &'static str {
                match self {
                    $(Counter::$variant => $name,)+
                }
            }

            /// Its doc comment as one line (the HELP text of /metrics).
            pub fn help(self) -> &'static str {
                match self {
                    $(Counter::$variant => concat!($($doc),+),)+
                }
            }
        }
    };
}

counters! {
    /// Connections admitted (not counting those closed at the limit).
    Accepted = "accepted",
    /// Connections open now (a gauge; sums across shards).
    Active = "active",
    /// Bytes delivered client→upstream (TCP).
    BytesC2u = "bytes_c2u",
    /// Bytes delivered upstream→client (TCP).
    BytesU2c = "bytes_u2c",
    /// Upstream connection attempts.
    ConnectAttempts = "connect_attempts",
    /// Attempts the upstream refused (RST).
    ConnectRefused = "connect_refused",
    /// Attempts that got no answer within connect_timeout.
    ConnectTimeouts = "connect_timeouts",
    /// Attempts that failed otherwise (unreachable, no socket...).
    ConnectErrors = "connect_errors",
    /// Receives that found the shard's buffer ring empty (backpressure, no data lost).
    Enobufs = "enobufs",
    /// Receives paused because a direction held `buffers_per_direction` buffers.
    RecvPaused = "recv_paused",
    /// Reads a direction held back for its `bandwidth_limit` until its bucket
    /// refilled (one per pause).
    BandwidthPaused = "bandwidth_paused",
    /// Sends the kernel accepted only in part (continued from the offset).
    ShortSends = "short_sends",
    /// accept(2) failures other than running out of descriptors.
    AcceptErrors = "accept_errors",
    /// Completions for a slot that had been freed (dropped; a bug guard).
    StaleCompletions = "stale_completions",
    /// Event-loop turns that handled completions: completions / loop_turns
    /// is the batch one io_uring_enter brings back.
    LoopTurns = "loop_turns",
    /// Completions handled.
    Completions = "completions",
    /// UDP sessions created.
    UdpSessionsCreated = "udp_sessions_created",
    /// UDP sessions open now (a gauge).
    UdpSessionsActive = "udp_sessions_active",
    /// Datagrams forwarded client→upstream.
    UdpDatagramsC2u = "udp_datagrams_c2u",
    /// Datagrams forwarded upstream→client.
    UdpDatagramsU2c = "udp_datagrams_u2c",
    /// Payload bytes forwarded client→upstream.
    UdpBytesC2u = "udp_bytes_c2u",
    /// Payload bytes forwarded upstream→client.
    UdpBytesU2c = "udp_bytes_u2c",
    /// Datagram receives that found the datagram buffer ring empty.
    UdpEnobufs = "udp_enobufs",
    /// Embryonic UDP sessions (no upstream reply yet) evicted to admit a new
    /// client; each also ends as `udp_end_evicted`.
    UdpEvictEmbryonic = "udp_evict_embryonic",
    /// Splices into a pipe that moved data.
    SplicesIn = "splices_in",
    /// Splices out of a pipe that moved data.
    SplicesOut = "splices_out",
    /// Directions that moved from buffers to a pipe.
    SpliceSwitched = "splice_switched",
    /// Directions that moved back from a pipe to buffers.
    SpliceReverted = "splice_reverted",
    /// Pipe requests refused because the shard's `max_pipes` were all lent.
    PipesExhausted = "pipes_exhausted",
    /// Pipes given back with data in them (teardown mid-splice), closed and replaced.
    PipesDiscarded = "pipes_discarded",
    /// Pipes lent to directions now (a gauge).
    PipesInUse = "pipes_in_use",
    /// Times a listener stopped accepting because the shard's descriptor
    /// budget had no room (or accept/socket said EMFILE/ENFILE).
    AcceptPausedFd = "accept_paused_fd",
    /// Times a listener's armed accept was re-armed because clients waited
    /// in its accept queue for a second without being taken (a lost
    /// wakeup; see `shard/tcp/watch.rs`).
    AcceptRearmed = "accept_rearmed",
    /// Releases of a provided buffer that was not out of its ring (refused:
    /// a bug guard; a debug build asserts).
    BufferDoubleRelease = "buffer_double_release",
    /// Access log lines dropped: the writer's queue was full, or the write
    /// failed (forwarding never waits for the log).
    AccessLogDropped = "access_log_dropped",
    /// Active health checks of an upstream (`health_check`), counted by the
    /// control thread from the one checker's reports.
    HealthChecks = "health_checks",
    /// Health checks that failed (refused, timed out, or another error).
    HealthCheckFailures = "health_check_failures",
    /// Times an upstream was taken down by `fall` failed checks in a row.
    UpstreamDown = "upstream_down",
    /// Times a down upstream came back after `rise` passed checks in a row.
    UpstreamUp = "upstream_up",
    // Balancing and passive health (issue 13).
    /// Picks made while every upstream of the listener (or route) was out
    /// of rotation, so all of them were tried as if up.
    AllDown = "all_down",
    /// Upstreams a shard took out of rotation after `max_fails` connect
    /// failures within `fail_timeout`.
    UpstreamEjected = "upstream_ejected",
    /// Upstreams a shard put back in rotation after a connect succeeded
    /// (their trial connection, or a pick while all were down).
    UpstreamRestored = "upstream_restored",
    /// An upstream's gauge: 1 while this shard has it in rotation, so the
    /// sum over shards says on how many it is up.
    InRotation = "in_rotation",
    // Reload on SIGHUP (issue 14), counted by the control thread.
    /// Configuration reloads applied (SIGHUP with a valid file).
    Reloads = "reloads",
    /// Reloads refused: the file was invalid or a new listener could not be
    /// bound; the configuration before stayed in force.
    ReloadFailed = "reload_failed",
    // MPTCP (issue 15), counted by the control thread.
    /// Listeners with `mptcp = "preferred"`, and listeners' upstream sockets
    /// with `upstream_mptcp = true`, made with plain TCP because the kernel
    /// made no MPTCP socket (at start and at each reload).
    MptcpFallback = "mptcp_fallback",
    // Name resolution (issue 15).
    /// DNS query datagrams the shard's resolver sent (one per family per try).
    DnsQueries = "dns_queries",
    /// DNS queries that got no reply within `resolver_timeout`.
    DnsTimeouts = "dns_timeouts",
    /// DNS replies that said NXDOMAIN or no address, SERVFAIL, REFUSED, or
    /// were otherwise unusable.
    DnsFailures = "dns_failures",
    /// Lookups answered from the shard's DNS cache.
    DnsCacheHits = "dns_cache_hits",
}

const SCALARS: usize = Counter::ALL.len();
const CLOSE_AT: usize = SCALARS;
const END_AT: usize = CLOSE_AT + CloseReason::COUNT;
const DROP_AT: usize = END_AT + SessionEnd::ALL.len();
/// Every counter of the table, families included.
pub const TABLE_LEN: usize = DROP_AT + DropReason::ALL.len();

/// One set of counters of the table: a listener's, an upstream's or a
/// shard's own. Cache-line aligned so neighbouring shards' copies never share
/// a line.
#[derive(Clone, Debug, PartialEq, Eq)]
#[repr(align(64))]
pub struct Counters {
    v: [u64; TABLE_LEN],
}

impl Default for Counters {
    fn default() -> Self {
        Counters { v: [0; TABLE_LEN] }
    }
}

impl Counters {
    fn slot(&mut self, i: usize) -> Option<&mut u64> {
        self.v.get_mut(i)
    }

    pub fn add(&mut self, c: Counter, n: u64) {
        if let Some(v) = self.slot(c as usize) {
            *v += n;
        }
    }

    pub fn inc(&mut self, c: Counter) {
        self.add(c, 1);
    }

    pub fn set(&mut self, c: Counter, n: u64) {
        if let Some(v) = self.slot(c as usize) {
            *v = n;
        }
    }

    pub fn get(&self, c: Counter) -> u64 {
        self.v.get(c as usize).copied().unwrap_or(0)
    }

    pub fn close(&mut self, reason: CloseReason) {
        if let Some(v) = self.slot(CLOSE_AT + reason as usize) {
            *v += 1;
        }
    }

    pub fn closes_for(&self, reason: CloseReason) -> u64 {
        self.v.get(CLOSE_AT + reason as usize).copied().unwrap_or(0)
    }

    pub fn udp_end(&mut self, end: SessionEnd) {
        if let Some(v) = self.slot(END_AT + end as usize) {
            *v += 1;
        }
    }

    pub fn udp_ends_for(&self, end: SessionEnd) -> u64 {
        self.v.get(END_AT + end as usize).copied().unwrap_or(0)
    }

    pub fn udp_drop(&mut self, why: DropReason) {
        self.udp_drops(why, 1);
    }

    /// Counts `n` drops at once (the kernel's, learned as a counter's growth).
    pub fn udp_drops(&mut self, why: DropReason, n: u64) {
        if let Some(v) = self.slot(DROP_AT + why as usize) {
            *v += n;
        }
    }

    pub fn udp_drops_for(&self, why: DropReason) -> u64 {
        self.v.get(DROP_AT + why as usize).copied().unwrap_or(0)
    }

    /// Adds `other` into `self` (gauges add too: the sum is the total).
    pub fn merge(&mut self, other: &Counters) {
        for (a, b) in self.v.iter_mut().zip(other.v.iter()) {
            *a += b;
        }
    }

    /// Every counter with its stats-line name, in table order.
    pub fn iter(&self) -> impl Iterator<Item = (String, u64)> + '_ {
        let scalars = Counter::ALL
            .iter()
            .map(|c| (c.name().to_owned(), self.get(*c)));
        let closes = CloseReason::ALL
            .iter()
            .map(|r| (format!("close_{}", r.name()), self.closes_for(*r)));
        let ends = SessionEnd::ALL
            .iter()
            .map(|e| (format!("udp_end_{}", e.name()), self.udp_ends_for(*e)));
        let drops = DropReason::ALL
            .iter()
            .map(|d| (format!("udp_drop_{}", d.name()), self.udp_drops_for(*d)));
        scalars.chain(closes).chain(ends).chain(drops)
    }

    /// `key=value` pairs on one line; `all = false` leaves out zeros.
    pub fn to_kv_filtered(&self, all: bool) -> String {
        let mut s = String::with_capacity(1024);
        for (name, value) in self.iter() {
            if all || value != 0 {
                if !s.is_empty() {
                    s.push(' ');
                }
                let _ = write!(s, "{name}={value}");
            }
        }
        s
    }

    /// Every counter as `key=value` pairs on one line.
    pub fn to_kv(&self) -> String {
        self.to_kv_filtered(true)
    }
}

/// The counters of one listener.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ListenerStats {
    pub name: String,
    pub counters: Counters,
    /// Upstream connect time of its connections that connected.
    pub connect_time: Histogram,
    /// Accept to close of its TCP connections.
    pub duration: Histogram,
}

impl ListenerStats {
    /// Adds another shard's copy of the same listener.
    pub fn merge(&mut self, other: &ListenerStats) {
        self.counters.merge(&other.counters);
        self.connect_time.merge(&other.connect_time);
        self.duration.merge(&other.duration);
    }
}

/// Upper bounds of the histogram buckets in microseconds (0.5 ms to 60 s,
/// Prometheus' default spread stretched to the minute a connection may
/// last); one more bucket past the last is +Inf.
pub const HISTOGRAM_BOUNDS_US: [u64; 16] = [
    500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000, 1_000_000,
    2_500_000, 5_000_000, 10_000_000, 30_000_000, 60_000_000,
];
const BUCKETS: usize = HISTOGRAM_BOUNDS_US.len() + 1;

/// A fixed-bucket histogram of millisecond times, kept per shard and merged
/// by adding (the buckets are the same everywhere), so recording is one
/// increment and a scrape costs nothing on the data path.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Histogram {
    /// Observations per bucket (not cumulative); the last is +Inf.
    counts: [u64; BUCKETS],
    sum_ms: u64,
}

impl Histogram {
    pub fn observe_ms(&mut self, ms: u64) {
        let us = ms.saturating_mul(1000);
        let at = HISTOGRAM_BOUNDS_US
            .iter()
            .position(|b| us <= *b)
            .unwrap_or(BUCKETS - 1);
        if let Some(c) = self.counts.get_mut(at) {
            *c += 1;
        }
        self.sum_ms = self.sum_ms.saturating_add(ms);
    }

    pub fn merge(&mut self, other: &Histogram) {
        for (a, b) in self.counts.iter_mut().zip(other.counts.iter()) {
            *a += b;
        }
        self.sum_ms = self.sum_ms.saturating_add(other.sum_ms);
    }

    /// Cumulative counts per bucket, `HISTOGRAM_BOUNDS_US` then +Inf.
    pub fn cumulative(&self) -> [u64; BUCKETS] {
        let mut out = self.counts;
        let mut run = 0;
        for c in &mut out {
            run += *c;
            *c = run;
        }
        out
    }

    pub fn count(&self) -> u64 {
        self.counts.iter().sum()
    }

    pub fn sum_ms(&self) -> u64 {
        self.sum_ms
    }
}

/// The counters of one upstream of one listener.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct UpstreamStats {
    pub listener: String,
    pub upstream: String,
    pub counters: Counters,
}

/// A snapshot of one shard's counters (or their sum over shards): the
/// shard's own, each listener's and each upstream's. The totals are the
/// shard's own plus every listener's (an upstream's counters are a view of
/// its listener's, not added again).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ShardStats {
    pub shard: Counters,
    pub listeners: Vec<ListenerStats>,
    pub upstreams: Vec<UpstreamStats>,
}

impl ShardStats {
    /// Everything summed: the shard's own counters plus every listener's.
    pub fn totals(&self) -> Counters {
        let mut t = self.shard.clone();
        for l in &self.listeners {
            t.merge(&l.counters);
        }
        t
    }

    pub fn get(&self, c: Counter) -> u64 {
        self.shard.get(c)
            + self
                .listeners
                .iter()
                .map(|l| l.counters.get(c))
                .sum::<u64>()
    }

    pub fn closes_for(&self, reason: CloseReason) -> u64 {
        self.totals().closes_for(reason)
    }

    pub fn udp_ends_for(&self, end: SessionEnd) -> u64 {
        self.totals().udp_ends_for(end)
    }

    pub fn udp_drops_for(&self, why: DropReason) -> u64 {
        self.totals().udp_drops_for(why)
    }

    /// Adds another shard's snapshot: listeners and upstreams are matched by
    /// name (every shard runs the same plan, so they line up).
    pub fn merge(&mut self, other: &ShardStats) {
        self.shard.merge(&other.shard);
        for l in &other.listeners {
            match self.listeners.iter_mut().find(|m| m.name == l.name) {
                Some(m) => m.merge(l),
                None => self.listeners.push(l.clone()),
            }
        }
        for u in &other.upstreams {
            match self
                .upstreams
                .iter_mut()
                .find(|m| m.listener == u.listener && m.upstream == u.upstream)
            {
                Some(m) => m.counters.merge(&u.counters),
                None => self.upstreams.push(u.clone()),
            }
        }
    }

    /// The totals as `key=value` pairs on one line.
    pub fn to_kv(&self) -> String {
        self.totals().to_kv()
    }

    /// One line per listener (`listener=NAME` then its non-zero counters)
    /// and per upstream that has counted anything.
    pub fn detail_lines(&self) -> Vec<String> {
        let mut lines = Vec::new();
        for l in &self.listeners {
            lines.push(format!(
                "listener={} {}",
                l.name,
                l.counters.to_kv_filtered(false)
            ));
        }
        for u in &self.upstreams {
            let kv = u.counters.to_kv_filtered(false);
            if !kv.is_empty() {
                lines.push(format!(
                    "listener={} upstream={} {kv}",
                    u.listener, u.upstream
                ));
            }
        }
        lines
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merge_sums_every_counter_and_matches_listeners_by_name() {
        let mut a = ShardStats::default();
        a.shard.inc(Counter::LoopTurns);
        let mut l = ListenerStats {
            name: "web".into(),
            ..Default::default()
        };
        l.counters.add(Counter::Accepted, 2);
        l.counters.close(CloseReason::IdleTimeout);
        a.listeners.push(l);
        let b = a.clone();
        a.merge(&b);
        assert_eq!(a.listeners.len(), 1, "same name: one listener");
        assert_eq!(a.get(Counter::Accepted), 4);
        assert_eq!(a.get(Counter::LoopTurns), 2);
        assert_eq!(a.closes_for(CloseReason::IdleTimeout), 2);
        let t = a.totals();
        assert_eq!(t.get(Counter::Accepted), 4);
        assert_eq!(t.get(Counter::LoopTurns), 2);
    }

    #[test]
    fn histograms_bucket_by_upper_bound_and_merge_by_adding() {
        let mut h = Histogram::default();
        for ms in [0, 1, 2, 60_000, 60_001] {
            h.observe_ms(ms);
        }
        let c = h.cumulative();
        assert_eq!(c[0], 1, "0 ms is within 0.5 ms");
        assert_eq!(c[1], 2, "1 ms is within 1 ms (le is inclusive)");
        assert_eq!(c[2], 3, "2 ms is within 2.5 ms");
        assert_eq!(c[15], 4, "60 s is within the last bound");
        assert_eq!(c[16], 5, "+Inf holds everything");
        assert_eq!(h.sum_ms(), 120_004);
        let mut s = ShardStats::default();
        let l = ListenerStats {
            name: "web".into(),
            duration: h,
            ..Default::default()
        };
        s.listeners.push(l.clone());
        s.merge(&ShardStats {
            listeners: vec![l],
            ..Default::default()
        });
        let merged = &s.listeners[0].duration;
        assert_eq!(merged.count(), 10);
        assert_eq!(merged.cumulative()[0], 2);
        assert_eq!(merged.sum_ms(), 240_008);
    }

    #[test]
    fn every_slot_of_the_table_has_its_own_name() {
        let mut c = Counters::default();
        for i in 0..TABLE_LEN {
            c.v[i] = i as u64 + 1;
        }
        let pairs: Vec<(String, u64)> = c.iter().collect();
        assert_eq!(pairs.len(), TABLE_LEN, "every slot is listed once");
        let mut names: Vec<&String> = pairs.iter().map(|(n, _)| n).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), TABLE_LEN, "names are unique");
        let mut values: Vec<u64> = pairs.iter().map(|(_, v)| *v).collect();
        values.sort_unstable();
        assert_eq!(values, (1..=TABLE_LEN as u64).collect::<Vec<_>>());
    }

    #[test]
    fn kv_names_every_reason() {
        let s = ShardStats::default().to_kv();
        for r in CloseReason::ALL {
            assert!(s.contains(&format!("close_{}=0", r.name())), "{s}");
        }
        for e in SessionEnd::ALL {
            assert!(s.contains(&format!("udp_end_{}=0", e.name())), "{s}");
        }
        for d in DropReason::ALL {
            assert!(s.contains(&format!("udp_drop_{}=0", d.name())), "{s}");
        }
        for c in Counter::ALL {
            assert!(s.contains(&format!("{}=0", c.name())), "{s}");
        }
    }

    #[test]
    fn detail_lines_name_the_listener_and_skip_zeros() {
        let mut a = ShardStats::default();
        let mut l = ListenerStats {
            name: "dns".into(),
            ..Default::default()
        };
        l.counters.add(Counter::UdpDatagramsC2u, 7);
        a.listeners.push(l);
        a.upstreams.push(UpstreamStats {
            listener: "dns".into(),
            upstream: "10.0.0.1:53".into(),
            counters: Counters::default(),
        });
        let lines = a.detail_lines();
        assert_eq!(lines, vec!["listener=dns udp_datagrams_c2u=7".to_string()]);
    }
}
