//! What one generator shard measured: the latency histogram, operation and
//! byte counts, UDP loss and errors by kind. Shards record alone (nothing
//! shared) and the control thread merges their records at the end.

use hdrhistogram::Histogram;

/// Latencies are recorded in nanoseconds, 3 significant digits, up to this.
pub(crate) const MAX_LATENCY_NS: u64 = 600_000_000_000;

/// Errors by kind, as counted by the generator.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Errors {
    /// Connect refused (or ICMP port unreachable on a UDP flow).
    pub refused: u64,
    /// Reset or closed by the peer in the middle of a request or stream.
    pub reset: u64,
    /// A connect or a response that did not arrive within --timeout.
    pub timeout: u64,
    /// A response whose bytes or size were wrong.
    pub verify: u64,
    /// Anything else (the first one's text is kept in `Record::first_error`).
    pub other: u64,
}

impl Errors {
    pub fn total(&self) -> u64 {
        self.refused + self.reset + self.timeout + self.verify + self.other
    }

    pub fn add(&mut self, o: &Errors) {
        self.refused += o.refused;
        self.reset += o.reset;
        self.timeout += o.timeout;
        self.verify += o.verify;
        self.other += o.other;
    }
}

/// The kind an errno counts under.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorKind {
    Refused,
    Reset,
    Timeout,
    Verify,
    Other,
}

impl ErrorKind {
    pub fn of_errno(e: i32) -> ErrorKind {
        match e {
            libc::ECONNREFUSED => ErrorKind::Refused,
            libc::ECONNRESET | libc::EPIPE | libc::ECONNABORTED => ErrorKind::Reset,
            libc::ETIMEDOUT | libc::ECANCELED | libc::ETIME => ErrorKind::Timeout,
            _ => ErrorKind::Other,
        }
    }
}

/// UDP datagrams sent in the measured window and the replies to them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct UdpCounts {
    pub sent: u64,
    pub received: u64,
    /// Replies that came after their request had timed out (udp-rr).
    pub late: u64,
}

#[derive(Clone, Debug)]
pub struct Record {
    pub latency: Histogram<u64>,
    /// Completed requests, transactions or answered datagrams.
    pub ops: u64,
    pub bytes_sent: u64,
    pub bytes_received: u64,
    pub udp: UdpCounts,
    pub errors: Errors,
    pub first_error: Option<String>,
}

/// Made once per shard at setup (never on the data path).
pub(crate) fn new_histogram() -> Histogram<u64> {
    #[allow(clippy::expect_used)]
    Histogram::new_with_bounds(1, MAX_LATENCY_NS, 3)
        .expect("constant bounds 1..=600s with 3 digits are within hdrhistogram's range")
}

impl Default for Record {
    fn default() -> Record {
        Record {
            latency: new_histogram(),
            ops: 0,
            bytes_sent: 0,
            bytes_received: 0,
            udp: UdpCounts::default(),
            errors: Errors::default(),
            first_error: None,
        }
    }
}

impl Record {
    pub fn latency_ns(&mut self, ns: u64) {
        self.latency.saturating_record(ns.clamp(1, MAX_LATENCY_NS));
    }

    pub fn error(&mut self, kind: ErrorKind, what: impl FnOnce() -> String) {
        let e = &mut self.errors;
        match kind {
            ErrorKind::Refused => e.refused += 1,
            ErrorKind::Reset => e.reset += 1,
            ErrorKind::Timeout => e.timeout += 1,
            ErrorKind::Verify => e.verify += 1,
            ErrorKind::Other => e.other += 1,
        }
        // A verification failure is the error worth showing over any other.
        if self.first_error.is_none() || (kind == ErrorKind::Verify && e.verify == 1) {
            self.first_error = Some(what());
        }
    }

    pub fn merge(&mut self, o: &Record) {
        let _ = self.latency.add(&o.latency);
        self.ops += o.ops;
        self.bytes_sent += o.bytes_sent;
        self.bytes_received += o.bytes_received;
        self.udp.sent += o.udp.sent;
        self.udp.received += o.udp.received;
        self.udp.late += o.udp.late;
        let verify_first = self.errors.verify == 0 && o.errors.verify > 0;
        self.errors.add(&o.errors);
        if self.first_error.is_none() || verify_first {
            self.first_error.clone_from(&o.first_error);
        }
    }

    /// Forget the warmup's figures (keeping the histogram's memory), but not
    /// its verification failures: corrupted data fails the run whenever it
    /// was seen.
    pub fn reset(&mut self) {
        self.latency.reset();
        self.ops = 0;
        self.bytes_sent = 0;
        self.bytes_received = 0;
        self.udp = UdpCounts::default();
        let verify = self.errors.verify;
        self.errors = Errors {
            verify,
            ..Errors::default()
        };
        if verify == 0 {
            self.first_error = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merging_adds_counts_and_histograms_and_keeps_a_verify_error_first() {
        let mut a = Record {
            ops: 3,
            ..Default::default()
        };
        a.latency_ns(1_000);
        a.error(ErrorKind::Refused, || "refused".into());
        let mut b = Record {
            ops: 4,
            ..Default::default()
        };
        b.latency_ns(2_000_000);
        b.error(ErrorKind::Verify, || "byte 7 differs".into());
        a.merge(&b);
        assert_eq!(a.ops, 7);
        assert_eq!(a.latency.len(), 2);
        assert!(a.latency.max() >= 1_999_000);
        assert_eq!(a.errors.total(), 2);
        assert_eq!(a.first_error.as_deref(), Some("byte 7 differs"));
    }

    #[test]
    fn errnos_are_classified() {
        assert_eq!(ErrorKind::of_errno(libc::ECONNREFUSED), ErrorKind::Refused);
        assert_eq!(ErrorKind::of_errno(libc::EPIPE), ErrorKind::Reset);
        assert_eq!(ErrorKind::of_errno(libc::ECANCELED), ErrorKind::Timeout);
        assert_eq!(ErrorKind::of_errno(libc::EINVAL), ErrorKind::Other);
    }

    #[test]
    fn the_warmup_reset_keeps_verification_failures_only() {
        let mut r = Record {
            ops: 5,
            ..Default::default()
        };
        r.error(ErrorKind::Timeout, || "slow".into());
        r.reset();
        assert_eq!(
            (r.ops, r.errors.total(), r.first_error.clone()),
            (0, 0, None)
        );
        r.error(ErrorKind::Verify, || "byte 3 differs".into());
        r.error(ErrorKind::Reset, || "reset".into());
        r.reset();
        assert_eq!(r.errors.verify, 1);
        assert_eq!(r.errors.total(), 1);
        assert_eq!(r.first_error.as_deref(), Some("byte 3 differs"));
    }
}
