//! Per-shard counters: plain integers owned by one shard thread, copied out as
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
}

impl CloseReason {
    pub const ALL: [CloseReason; 12] = [
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
        }
    }

    /// Normal ends are logged at debug; everything else at info (rate-limited).
    pub fn is_normal(self) -> bool {
        matches!(self, CloseReason::ClientEof | CloseReason::UpstreamEof)
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// Counters of one shard. Cache-line aligned so that the snapshot copies of
/// neighbouring shards never share a line.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[repr(align(64))]
pub struct ShardStats {
    /// Connections admitted (not counting those closed at the limit).
    pub accepted: u64,
    /// Connections open now (a gauge; sums across shards).
    pub active: u64,
    pub bytes_client_to_upstream: u64,
    pub bytes_upstream_to_client: u64,
    pub closes: [u64; CloseReason::COUNT],
    /// Upstream connection attempts, and how the failed ones failed.
    pub connect_attempts: u64,
    pub connect_refused: u64,
    pub connect_timeouts: u64,
    pub connect_errors: u64,
    /// Receives that found the shard's buffer ring empty (backpressure, no data lost).
    pub enobufs: u64,
    /// Receives paused because a direction held `buffers_per_direction` buffers.
    pub recv_paused: u64,
    /// Sends the kernel accepted only in part (continued from the offset).
    pub short_sends: u64,
    pub accept_errors: u64,
    /// Completions for a slot that had been freed (dropped; a bug guard).
    pub stale_completions: u64,
    /// UDP sessions created, and open now (a gauge).
    pub udp_sessions_created: u64,
    pub udp_sessions_active: u64,
    /// UDP session ends by `SessionEnd`.
    pub udp_ends: [u64; SessionEnd::ALL.len()],
    pub udp_datagrams_c2u: u64,
    pub udp_datagrams_u2c: u64,
    pub udp_bytes_c2u: u64,
    pub udp_bytes_u2c: u64,
    /// UDP datagrams dropped, by `DropReason`.
    pub udp_drops: [u64; DropReason::ALL.len()],
    /// Datagram receives that found the datagram buffer ring empty.
    pub udp_enobufs: u64,
    /// Embryonic UDP sessions (no upstream reply yet) evicted to admit a new
    /// client; each also ends as `SessionEnd::Evicted`.
    pub udp_evict_embryonic: u64,
    /// Event-loop turns that handled completions, and the completions they
    /// handled: their ratio is the batch one io_uring_enter brings back.
    pub loop_turns: u64,
    pub completions: u64,
    /// Splices into a pipe that moved data, and out of one.
    pub splices_in: u64,
    pub splices_out: u64,
    /// Directions that moved from buffers to a pipe, and back.
    pub splice_switched: u64,
    pub splice_reverted: u64,
    /// Pipe requests refused because the shard's `max_pipes` were all lent
    /// (the direction stayed on buffers).
    pub pipes_exhausted: u64,
    /// Pipes given back with data in them (teardown mid-splice), closed and replaced.
    pub pipes_discarded: u64,
    /// Pipes lent to directions now (a gauge; sums across shards).
    pub pipes_in_use: u64,
    /// Times a listener stopped accepting because the shard's descriptor
    /// budget had no room for another connection (or accept/socket said
    /// EMFILE/ENFILE); clients wait in the listen queue meanwhile.
    pub accept_paused_fd: u64,
}

impl ShardStats {
    pub fn count_close(&mut self, reason: CloseReason) {
        if let Some(c) = self.closes.get_mut(reason.index()) {
            *c += 1;
        }
    }

    pub fn closes_for(&self, reason: CloseReason) -> u64 {
        self.closes.get(reason.index()).copied().unwrap_or(0)
    }

    pub fn count_udp_end(&mut self, end: SessionEnd) {
        if let Some(c) = self.udp_ends.get_mut(end as usize) {
            *c += 1;
        }
    }

    pub fn udp_ends_for(&self, end: SessionEnd) -> u64 {
        self.udp_ends.get(end as usize).copied().unwrap_or(0)
    }

    pub fn count_udp_drop(&mut self, why: DropReason) {
        if let Some(c) = self.udp_drops.get_mut(why as usize) {
            *c += 1;
        }
    }

    /// Counts `n` drops at once (the kernel's, learned as a counter's growth).
    pub fn count_udp_drops(&mut self, why: DropReason, n: u64) {
        if let Some(c) = self.udp_drops.get_mut(why as usize) {
            *c += n;
        }
    }

    pub fn udp_drops_for(&self, why: DropReason) -> u64 {
        self.udp_drops.get(why as usize).copied().unwrap_or(0)
    }

    /// Adds `other` into `self` (gauges add too: the sum is the process total).
    pub fn merge(&mut self, other: &ShardStats) {
        self.accepted += other.accepted;
        self.active += other.active;
        self.bytes_client_to_upstream += other.bytes_client_to_upstream;
        self.bytes_upstream_to_client += other.bytes_upstream_to_client;
        for (a, b) in self.closes.iter_mut().zip(other.closes.iter()) {
            *a += b;
        }
        self.connect_attempts += other.connect_attempts;
        self.connect_refused += other.connect_refused;
        self.connect_timeouts += other.connect_timeouts;
        self.connect_errors += other.connect_errors;
        self.enobufs += other.enobufs;
        self.recv_paused += other.recv_paused;
        self.short_sends += other.short_sends;
        self.accept_errors += other.accept_errors;
        self.stale_completions += other.stale_completions;
        self.loop_turns += other.loop_turns;
        self.completions += other.completions;
        self.udp_sessions_created += other.udp_sessions_created;
        self.udp_sessions_active += other.udp_sessions_active;
        for (a, b) in self.udp_ends.iter_mut().zip(other.udp_ends.iter()) {
            *a += b;
        }
        self.udp_datagrams_c2u += other.udp_datagrams_c2u;
        self.udp_datagrams_u2c += other.udp_datagrams_u2c;
        self.udp_bytes_c2u += other.udp_bytes_c2u;
        self.udp_bytes_u2c += other.udp_bytes_u2c;
        for (a, b) in self.udp_drops.iter_mut().zip(other.udp_drops.iter()) {
            *a += b;
        }
        self.udp_enobufs += other.udp_enobufs;
        self.udp_evict_embryonic += other.udp_evict_embryonic;
        self.splices_in += other.splices_in;
        self.splices_out += other.splices_out;
        self.splice_switched += other.splice_switched;
        self.splice_reverted += other.splice_reverted;
        self.pipes_exhausted += other.pipes_exhausted;
        self.pipes_discarded += other.pipes_discarded;
        self.pipes_in_use += other.pipes_in_use;
        self.accept_paused_fd += other.accept_paused_fd;
    }

    /// `key=value` pairs on one line, stable names (tests and log scrapers parse them).
    pub fn to_kv(&self) -> String {
        let mut s = String::with_capacity(512);
        let _ = write!(
            s,
            "accepted={} active={} bytes_c2u={} bytes_u2c={} connect_attempts={} connect_refused={} \
             connect_timeouts={} connect_errors={} enobufs={} recv_paused={} short_sends={} \
             accept_errors={} stale_completions={} loop_turns={} completions={}",
            self.accepted,
            self.active,
            self.bytes_client_to_upstream,
            self.bytes_upstream_to_client,
            self.connect_attempts,
            self.connect_refused,
            self.connect_timeouts,
            self.connect_errors,
            self.enobufs,
            self.recv_paused,
            self.short_sends,
            self.accept_errors,
            self.stale_completions,
            self.loop_turns,
            self.completions
        );
        for r in CloseReason::ALL {
            let _ = write!(s, " close_{}={}", r.name(), self.closes_for(r));
        }
        let _ = write!(
            s,
            " udp_sessions_created={} udp_sessions_active={} udp_datagrams_c2u={} \
             udp_datagrams_u2c={} udp_bytes_c2u={} udp_bytes_u2c={} udp_enobufs={}",
            self.udp_sessions_created,
            self.udp_sessions_active,
            self.udp_datagrams_c2u,
            self.udp_datagrams_u2c,
            self.udp_bytes_c2u,
            self.udp_bytes_u2c,
            self.udp_enobufs
        );
        for e in SessionEnd::ALL {
            let _ = write!(s, " udp_end_{}={}", e.name(), self.udp_ends_for(e));
        }
        for d in DropReason::ALL {
            let _ = write!(s, " udp_drop_{}={}", d.name(), self.udp_drops_for(d));
        }
        let _ = write!(s, " udp_evict_embryonic={}", self.udp_evict_embryonic);
        let _ = write!(
            s,
            " splices_in={} splices_out={} splice_switched={} splice_reverted={} \
             pipes_exhausted={} pipes_discarded={} pipes_in_use={}",
            self.splices_in,
            self.splices_out,
            self.splice_switched,
            self.splice_reverted,
            self.pipes_exhausted,
            self.pipes_discarded,
            self.pipes_in_use
        );
        let _ = write!(s, " accept_paused_fd={}", self.accept_paused_fd);
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merge_sums_every_field() {
        let mut a = ShardStats {
            accepted: 1,
            enobufs: 2,
            splices_out: 3,
            pipes_discarded: 1,
            ..Default::default()
        };
        a.count_close(CloseReason::IdleTimeout);
        let mut b = a.clone();
        b.count_close(CloseReason::Shutdown);
        a.merge(&b);
        assert_eq!(a.accepted, 2);
        assert_eq!(a.enobufs, 4);
        assert_eq!(a.splices_out, 6);
        assert_eq!(a.pipes_discarded, 2);
        assert_eq!(a.closes_for(CloseReason::IdleTimeout), 2);
        assert_eq!(a.closes_for(CloseReason::Shutdown), 1);
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
        for k in [
            "splices_in",
            "splices_out",
            "splice_switched",
            "splice_reverted",
            "pipes_exhausted",
            "pipes_discarded",
            "pipes_in_use",
            "udp_evict_embryonic",
            "accept_paused_fd",
        ] {
            assert!(s.contains(&format!(" {k}=0")), "{s}");
        }
    }
}
