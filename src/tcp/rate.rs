//! `bandwidth_limit`: a token bucket per connection direction, and the quota
//! it gives the direction's next read. Pure: the time comes in, no clock.
//!
//! The bucket holds at most [`BURST_MS`] worth of bytes and starts full. A
//! direction reads only what its bucket holds — a receive or a splice in is
//! sized by the quota ([`Quota::UpTo`]) — and every byte read is taken from
//! it, so the bucket never goes into debt from a read, and over any window
//! of `t` ms a direction moves at most `burst + rate × t / 1000` bytes. When
//! less than one grant ([`MAX_GRANT`], or the whole burst when that is less)
//! is left, the direction pauses ([`Quota::Paused`]) until the refill time,
//! which the relay asks the shard's timer wheel for: no read is in the
//! kernel meanwhile, and nothing polls.

use crate::time::Millis;

/// The burst: this many milliseconds of the rate. Long enough that a pause
/// (at most one grant's worth) is many timer-wheel ticks (1 ms) so rounding
/// a refill time up to the next tick costs little; short enough that a
/// connection that was quiet cannot go much over the rate for long.
pub const BURST_MS: u64 = 100;

/// The largest read a pause waits for: one provided buffer at the default
/// `buffer_size` (a receive cannot take more than one buffer anyway). A
/// direction whose burst is smaller waits for the whole burst, so a pause is
/// at most `min(MAX_GRANT, burst)` at the rate: 100 ms below 160 KiB/s, less above.
pub const MAX_GRANT: u64 = 16 << 10;

/// Tokens are kept in thousandths of a byte, so a refill of `rate` bytes per
/// second over whole milliseconds is exact (no drift from rounding).
const SCALE: i128 = 1000;

/// When the next read of a direction may start, after a `take`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Delay {
    /// Now: the bucket holds at least one grant.
    None,
    /// At this time (the refill time, rounded up to the millisecond).
    Until(Millis),
}

/// What a direction's next read may take.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Quota {
    /// No `bandwidth_limit`: read as much as a buffer (or pipe) holds.
    #[default]
    Unlimited,
    /// At most this many bytes (never 0).
    UpTo(u32),
    /// Out of tokens: issue no read until the relay's timer resumes it.
    Paused,
}

/// A token bucket of `rate` bytes per second.
#[derive(Clone, Debug)]
pub struct Bucket {
    rate: u64,
    burst: u64,
    /// The bytes a paused direction waits for before reading again.
    grant: u64,
    /// In thousandths of a byte; below zero is debt (bytes taken that the
    /// bucket did not hold: only bytes read before the limit could size them).
    tokens: i128,
    /// When `tokens` was last refilled.
    at: Millis,
}

impl Bucket {
    /// A full bucket of `rate` bytes per second (a rate of 0 is taken as 1).
    pub fn new(rate: u64, now: Millis) -> Bucket {
        let rate = rate.max(1);
        let burst = (u128::from(rate) * u128::from(BURST_MS) / 1000).max(1);
        let burst = u64::try_from(burst).unwrap_or(u64::MAX);
        Bucket {
            rate,
            burst,
            grant: burst.min(MAX_GRANT),
            tokens: i128::from(burst) * SCALE,
            at: now,
        }
    }

    /// The most this bucket holds, in bytes.
    pub fn burst(&self) -> u64 {
        self.burst
    }

    /// Bytes the bucket holds at `now` (0 in debt).
    pub fn available(&mut self, now: Millis) -> u64 {
        self.refill(now);
        u64::try_from((self.tokens / SCALE).max(0)).unwrap_or(u64::MAX)
    }

    /// Takes `bytes` (read already, so it may put the bucket in debt) and
    /// says when the next read may start.
    pub fn take(&mut self, bytes: u64, now: Millis) -> Delay {
        self.refill(now);
        self.tokens = self
            .tokens
            .saturating_sub(i128::from(bytes).saturating_mul(SCALE));
        self.delay(now)
    }

    /// What the next read may take at `now`: everything the bucket holds,
    /// once that is at least one grant; else nothing until the refill time.
    pub fn quota(&mut self, now: Millis) -> (Quota, Delay) {
        self.refill(now);
        match self.delay(now) {
            Delay::None => {
                let n = u32::try_from(self.available(now)).unwrap_or(u32::MAX);
                (Quota::UpTo(n.max(1)), Delay::None)
            }
            until => (Quota::Paused, until),
        }
    }

    fn refill(&mut self, now: Millis) {
        // Time never runs backwards here; if it did, nothing is added.
        let Some(elapsed) = now.checked_sub(self.at) else {
            return;
        };
        let full = i128::from(self.burst) * SCALE;
        let added = i128::from(self.rate).saturating_mul(i128::from(elapsed));
        self.tokens = self.tokens.saturating_add(added).min(full);
        self.at = now;
    }

    /// When the bucket holds one grant again (rounded up to the millisecond,
    /// so at that time it holds at least that).
    fn delay(&self, now: Millis) -> Delay {
        let missing = i128::from(self.grant) * SCALE - self.tokens;
        if missing <= 0 {
            return Delay::None;
        }
        let rate = i128::from(self.rate);
        let ms = (missing + rate - 1) / rate;
        let ms = u64::try_from(ms).unwrap_or(u64::MAX);
        Delay::Until(now.saturating_add(ms.max(1)))
    }
}

/// One direction's limit: its bucket and, while paused, when it resumes.
#[derive(Clone, Debug)]
pub struct Limit {
    bucket: Bucket,
    paused: Option<Millis>,
}

impl Limit {
    pub fn new(rate: u64, now: Millis) -> Limit {
        Limit {
            bucket: Bucket::new(rate, now),
            paused: None,
        }
    }

    /// Takes `bytes` just read; the direction's quota follows.
    pub fn charge(&mut self, bytes: u64, now: Millis) -> Quota {
        self.bucket.take(bytes, now);
        self.quota(now)
    }

    /// The direction's quota now; pauses it (see [`paused`](Self::paused))
    /// when the bucket holds less than one grant.
    pub fn quota(&mut self, now: Millis) -> Quota {
        let (quota, delay) = self.bucket.quota(now);
        self.paused = match delay {
            Delay::None => None,
            Delay::Until(t) => Some(t),
        };
        quota
    }

    /// When a paused direction may read again (for the relay's deadline).
    pub fn paused(&self) -> Option<Millis> {
        self.paused
    }

    /// Whether a pause is over at `now`.
    pub fn due(&self, now: Millis) -> bool {
        self.paused.is_some_and(|t| t <= now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    /// Reads as a sender that always has data would, from `start` for
    /// `ms`, taking at most `chunk` per read: the bytes moved.
    fn drive(limit: &mut Limit, start: Millis, ms: Millis, chunk: u32) -> u64 {
        let mut now = start;
        let mut moved = 0;
        let mut quota = limit.quota(now);
        while now < start + ms {
            match quota {
                Quota::UpTo(n) => {
                    let n = n.min(chunk);
                    moved += u64::from(n);
                    quota = limit.charge(u64::from(n), now);
                }
                Quota::Paused => {
                    let until = limit.paused().expect("a pause has an end");
                    assert!(until > now, "a pause ends in the future");
                    now = until;
                    quota = limit.quota(now);
                }
                Quota::Unlimited => unreachable!("a limit never says unlimited"),
            }
        }
        moved
    }

    #[test]
    fn the_rate_holds_over_two_seconds_and_more() {
        // (rate, the largest read: a provided buffer or a pipe)
        let cases = [
            (1 << 10, 16 << 10),
            (100 << 10, 16 << 10),
            (5 * MIB, 16 << 10),
            (5 * MIB, 1 << 20),
            (1 << 30, 1 << 20),
        ];
        for (rate, chunk) in cases {
            for secs in [2, 10] {
                let mut limit = Limit::new(rate, 0);
                let burst = limit.bucket.burst();
                let moved = drive(&mut limit, 0, secs * 1000, chunk);
                // Never over the bound; under it by about one grant or one
                // millisecond's worth (the tokens that came in after the last
                // read; a pause ends on a whole millisecond).
                let bound = rate * secs + burst;
                assert!(moved <= bound, "{rate} B/s over {secs}s: {moved} > {bound}");
                let short = bound - moved;
                let slack = 2 * MAX_GRANT.min(burst) + rate / 1000;
                assert!(short <= slack, "{rate} B/s: {short} short");
                let err = short as f64 / (rate * secs) as f64;
                assert!(err < 0.1, "{rate} B/s over {secs}s: {err}");
            }
        }
    }

    #[test]
    fn the_burst_is_a_tenth_of_a_second_and_a_pause_one_grant() {
        let mut b = Bucket::new(5 * MIB, 0);
        assert_eq!(b.burst(), 5 * MIB / 10);
        assert_eq!(
            b.take(b.burst(), 0),
            Delay::Until(4),
            "16 KiB at 5 MiB/s: 3.1 ms, up"
        );
        assert_eq!(b.quota(3).0, Quota::Paused);
        assert_eq!(b.quota(4).0, Quota::UpTo(20971));
        // A slow rate waits for its whole (smaller) burst.
        let mut slow = Bucket::new(1000, 0);
        assert_eq!(slow.burst(), 100);
        assert_eq!(slow.take(100, 0), Delay::Until(100));
        assert_eq!(slow.quota(100).0, Quota::UpTo(100));
    }

    #[test]
    fn a_long_pause_refills_only_to_the_burst() {
        let mut b = Bucket::new(MIB, 0);
        b.take(b.burst(), 0);
        assert_eq!(b.available(10_000_000), b.burst());
        assert_eq!(b.available(u64::MAX), b.burst());
        assert_eq!(b.quota(u64::MAX).0, Quota::UpTo(b.burst() as u32));
    }

    #[test]
    fn debt_is_paid_back_before_reading_again() {
        let mut b = Bucket::new(10_000, 0); // 1000 B burst, 1000 B grant
        assert_eq!(
            b.take(3000, 0),
            Delay::Until(300),
            "2000 B debt + one grant"
        );
        assert_eq!(b.quota(299).0, Quota::Paused);
        assert_eq!(b.quota(300).0, Quota::UpTo(1000));
    }

    #[test]
    fn extremes_neither_overflow_nor_panic() {
        let mut b = Bucket::new(u64::MAX, 0);
        assert!(matches!(b.take(u64::MAX, 0), Delay::Until(t) if t > 0 && t < 1000));
        b.take(u64::MAX, u64::MAX);
        assert!(b.available(u64::MAX) < u64::MAX);
        let mut z = Bucket::new(0, 5);
        assert_eq!(z.burst(), 1, "a rate of 0 is 1 B/s");
        let d = z.take(u64::MAX, 5);
        assert_eq!(d, Delay::Until(u64::MAX), "a debt beyond time saturates");
        // Time going backwards adds nothing and does not panic.
        let mut back = Bucket::new(1000, 1000);
        back.take(100, 1000);
        assert_eq!(back.available(0), 0);
        assert_eq!(back.available(1100), 100);
    }

    #[test]
    fn a_limit_pauses_and_says_when_it_resumes() {
        let mut l = Limit::new(1 << 20, 0);
        assert!(matches!(l.quota(0), Quota::UpTo(_)));
        assert_eq!(l.paused(), None);
        assert_eq!(l.charge(l.bucket.burst(), 0), Quota::Paused);
        let until = l.paused().expect("paused");
        assert!(!l.due(until - 1) && l.due(until));
        assert!(matches!(l.quota(until), Quota::UpTo(n) if u64::from(n) >= MAX_GRANT));
        assert_eq!(l.paused(), None);
    }
}
