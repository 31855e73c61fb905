//! Accounting of one provided-buffer ring: how many of its buffers the
//! shard holds (handed over by receive completions, not yet released), so
//! starved receives are woken only while the ring has buffers.

/// Buffers of one ring held by the shard.
#[derive(Debug)]
pub(crate) struct Held {
    total: u32,
    held: u32,
}

impl Held {
    pub(crate) fn new(total: u32) -> Held {
        Held { total, held: 0 }
    }

    /// A completion handed a buffer over.
    pub(crate) fn take(&mut self) {
        self.held += 1;
    }

    /// A buffer goes back to the ring.
    pub(crate) fn give(&mut self) {
        debug_assert!(
            self.held > 0,
            "buffer released that the shard does not hold"
        );
        self.held = self.held.saturating_sub(1);
    }

    pub(crate) fn held(&self) -> u32 {
        self.held
    }

    pub(crate) fn total(&self) -> u32 {
        self.total
    }

    /// Buffers in the ring now.
    pub(crate) fn free(&self) -> u32 {
        self.total.saturating_sub(self.held)
    }
}
