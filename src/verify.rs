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

#[cfg(test)]
mod tests {
    use super::*;

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
