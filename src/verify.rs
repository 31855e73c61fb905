//! Deterministic byte streams for verified load: a sender generates a stream
//! from a seed, the receiver regenerates it and compares, so every byte is
//! checked without storing the stream (used by `demo`, the tests and later the
//! benchmark's response checks).

/// SplitMix64: tiny, fast, and stable forever (seeds printed by a failing test
/// reproduce the same run).
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (n > 0; returns 0 for n == 0).
    pub fn below(&mut self, n: u64) -> u64 {
        if n == 0 { 0 } else { self.next_u64() % n }
    }

    /// True with probability `num/den`.
    pub fn chance(&mut self, num: u64, den: u64) -> bool {
        self.below(den) < num
    }
}

/// An endless pseudo-random byte stream; two `Pattern`s with the same seed
/// produce the same bytes however the reads are split.
#[derive(Clone, Debug)]
pub struct Pattern {
    rng: Rng,
    word: [u8; 8],
    used: usize,
    /// Bytes produced so far.
    pub position: u64,
}

impl Pattern {
    pub fn new(seed: u64) -> Pattern {
        Pattern {
            rng: Rng::new(seed),
            word: [0; 8],
            used: 8,
            position: 0,
        }
    }

    /// Fills `buf` with the next bytes of the stream.
    pub fn fill(&mut self, buf: &mut [u8]) {
        for b in buf.iter_mut() {
            if self.used == 8 {
                self.word = self.rng.next_u64().to_le_bytes();
                self.used = 0;
            }
            *b = self.word[self.used];
            self.used += 1;
        }
        self.position += buf.len() as u64;
    }

    /// Checks that `got` is the next part of the stream; on mismatch returns
    /// the stream offset of the first wrong byte.
    pub fn check(&mut self, got: &[u8]) -> Result<(), u64> {
        let start = self.position;
        let mut expect = [0u8; 4096];
        for (i, chunk) in got.chunks(expect.len()).enumerate() {
            let e = &mut expect[..chunk.len()];
            self.fill(e);
            if let Some(at) = chunk.iter().zip(e.iter()).position(|(a, b)| a != b) {
                return Err(start + (i * 4096 + at) as u64);
            }
        }
        Ok(())
    }
}

/// Bytes in one period of the periodic pattern: a prime (2^16 + 1), so a period never
/// lines up with buffer, segment or request sizes.
pub const PERIOD: usize = 65_537;
/// Seed of the periodic pattern (fixed: sender and checker must agree).
const PERIODIC_SEED: u64 = 0x7269_6e67_6677_6400;

/// The periodic stream `ringfwd echo`'s source and request/response modes
/// send: byte `i` of every such stream is `periodic_region()[i % PERIOD]`.
/// The region holds two periods, so the `len <= PERIOD` bytes from stream
/// position `p` are the contiguous slice at `p % PERIOD`: a sender sends
/// straight from it, with no copy.
pub fn periodic_region() -> Box<[u8]> {
    periodic_region_for(PERIOD)
}

/// Whole periods of the pattern enough for any window of `max_len` bytes to
/// start anywhere in the first period and stay contiguous: a sender of
/// writes larger than one period (the generator's `--size` up to 4 MiB)
/// sends straight from it as from `periodic_region`.
pub fn periodic_region_periods(max_len: usize) -> usize {
    1 + max_len.div_ceil(PERIOD).max(1)
}

/// The periodic region (see `periodic_region`) long enough for windows of up
/// to `max_len` bytes: `periodic_region_periods(max_len)` periods.
pub fn periodic_region_for(max_len: usize) -> Box<[u8]> {
    let mut one = vec![0u8; PERIOD];
    Pattern::new(PERIODIC_SEED).fill(&mut one);
    let periods = periodic_region_periods(max_len);
    let mut all = Vec::with_capacity(periods * PERIOD);
    for _ in 0..periods {
        all.extend_from_slice(&one);
    }
    all.into_boxed_slice()
}

/// Checks a received periodic stream, however it is split.
#[derive(Clone, Debug, Default)]
pub struct PeriodicCheck {
    /// Stream bytes checked so far.
    pub position: u64,
}

impl PeriodicCheck {
    /// Checks that `got` continues the stream (`region` from
    /// `periodic_region`); on mismatch returns the stream offset of the first
    /// wrong byte.
    pub fn check(&mut self, region: &[u8], got: &[u8]) -> Result<(), u64> {
        for chunk in got.chunks(PERIOD) {
            let at = (self.position % PERIOD as u64) as usize;
            let expect = region.get(at..at + chunk.len()).unwrap_or(&[]);
            if expect != chunk {
                let bad = chunk
                    .iter()
                    .zip(expect.iter())
                    .position(|(a, b)| a != b)
                    .unwrap_or(expect.len().min(chunk.len()));
                return Err(self.position + bad as u64);
            }
            self.position += chunk.len() as u64;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn periodic_stream_checks_across_splits_and_catches_a_flip() {
        let region = periodic_region();
        assert_eq!(region.len(), 2 * PERIOD);
        assert_eq!(region[..PERIOD], region[PERIOD..]);
        // Three periods and a bit, sent as windows of the region.
        let total = 3 * PERIOD + 1234;
        let mut stream = Vec::with_capacity(total);
        let mut pos = 0;
        while pos < total {
            let at = pos % PERIOD;
            let len = (total - pos).min(PERIOD).min(40_000);
            stream.extend_from_slice(&region[at..at + len]);
            pos += len;
        }
        let mut c = PeriodicCheck::default();
        for piece in stream.chunks(7_777) {
            assert_eq!(c.check(&region, piece), Ok(()));
        }
        assert_eq!(c.position, total as u64);
        stream[100_000] ^= 0x40;
        let mut c = PeriodicCheck::default();
        assert_eq!(c.check(&region, &stream), Err(100_000));
    }

    #[test]
    fn a_long_region_holds_every_window_of_its_length_contiguously() {
        let short = periodic_region();
        for max in [1, PERIOD - 1, PERIOD, PERIOD + 1, 4 << 20] {
            let region = periodic_region_for(max);
            assert_eq!(region.len() % PERIOD, 0);
            // The last window of the first period still fits.
            assert!(region.len() >= (PERIOD - 1) + max, "max {max}");
            for (i, period) in region.chunks(PERIOD).enumerate() {
                assert_eq!(
                    period,
                    &short[..PERIOD],
                    "period {i} of the region for {max}"
                );
            }
        }
        // A 4 MiB window from the end of the first period checks as the stream.
        let region = periodic_region_for(4 << 20);
        let mut c = PeriodicCheck {
            position: (PERIOD - 1) as u64,
        };
        let window = &region[PERIOD - 1..PERIOD - 1 + (4 << 20)];
        assert_eq!(c.check(&short, window), Ok(()));
    }

    #[test]
    fn same_seed_same_bytes_across_splits() {
        let mut a = Pattern::new(7);
        let mut whole = vec![0u8; 10_000];
        a.fill(&mut whole);
        let mut b = Pattern::new(7);
        let mut off = 0;
        for step in [1usize, 7, 8, 9, 4096, 5000] {
            let end = (off + step).min(whole.len());
            assert_eq!(b.check(&whole[off..end]), Ok(()));
            off = end;
        }
        assert_eq!(b.check(&whole[off..]), Ok(()));
    }

    #[test]
    fn reports_offset_of_corruption() {
        let mut a = Pattern::new(1);
        let mut buf = vec![0u8; 100];
        a.fill(&mut buf);
        buf[42] ^= 1;
        assert_eq!(Pattern::new(1).check(&buf), Err(42));
    }
}
