//! The kernel's drop counter of one UDP socket, followed from readings: the
//! SO_RXQ_OVFL control message of each datagram received (the counter when
//! that datagram was queued) and direct reads of the socket (SO_MEMINFO).
//! Readings come late and out of order — a datagram queued before a direct
//! read is received after it — so only growth is counted, each drop once.

/// What has been counted of one socket's drop counter (sk_drops, a u32 that
/// wraps).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct KernelDrops {
    seen: u32,
}

impl KernelDrops {
    /// Takes a reading of the counter and returns the drops it adds. A
    /// reading behind the last one (less than half the u32 range away, in
    /// wrapping order) is stale and adds nothing.
    pub(crate) fn observe(&mut self, reading: u32) -> u32 {
        let grown = reading.wrapping_sub(self.seen);
        if grown == 0 || grown > u32::MAX / 2 {
            return 0;
        }
        self.seen = reading;
        grown
    }
}

#[cfg(test)]
mod tests {
    use super::KernelDrops;

    #[test]
    fn counts_growth_once_and_ignores_stale_readings() {
        let mut d = KernelDrops::default();
        assert_eq!(d.observe(0), 0, "a fresh socket has dropped nothing");
        assert_eq!(d.observe(5), 5);
        assert_eq!(d.observe(5), 0, "the same reading twice counts once");
        assert_eq!(d.observe(12), 7);
        assert_eq!(
            d.observe(9),
            0,
            "a datagram queued before the read of 12 carries 9"
        );
        assert_eq!(d.observe(12), 0);
        assert_eq!(d.observe(13), 1);
    }

    #[test]
    fn the_counter_wraps() {
        let mut d = KernelDrops::default();
        assert_eq!(d.observe(0x7000_0000), 0x7000_0000);
        assert_eq!(d.observe(0xE000_0000), 0x7000_0000);
        assert_eq!(d.observe(u32::MAX - 1), 0x1FFF_FFFE);
        assert_eq!(d.observe(3), 5, "u32::MAX - 1 -> 3 is 5 more drops");
        assert_eq!(d.observe(u32::MAX), 0, "behind 3 in wrapping order");
    }
}
