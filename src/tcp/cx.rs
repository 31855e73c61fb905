//! What a connection's state machine is handed with every input: the queue
//! its operations go to, its in-flight accounting (done on every push, so an
//! operation cannot reach the kernel uncounted), its listener's counters and
//! the time.

use super::lifecycle::Lifecycle;
use super::{ConnOp, Emit};
use crate::stats::{Counter, Counters};
use crate::time::Millis;

/// The context of one call into a connection's state machine.
pub struct Cx<'a> {
    ops: &'a mut Vec<ConnOp>,
    pub life: &'a mut Lifecycle,
    pub counters: &'a mut Counters,
    pub now: Millis,
}

impl<'a> Cx<'a> {
    pub fn new(
        ops: &'a mut Vec<ConnOp>,
        life: &'a mut Lifecycle,
        counters: &'a mut Counters,
        now: Millis,
    ) -> Cx<'a> {
        Cx {
            ops,
            life,
            counters,
            now,
        }
    }

    pub fn count(&mut self, c: Counter) {
        self.counters.inc(c);
    }

    pub fn add(&mut self, c: Counter, n: u64) {
        self.counters.add(c, n);
    }

    /// Marks an open socket for closing (see `Lifecycle::doom`).
    pub fn doom(&mut self, side: super::Side, linger0: bool) {
        self.life.doom(side, linger0, self.ops);
    }

    /// Closes or cancels doomed sockets nothing uses any more.
    pub fn close_when_idle(&mut self) {
        self.life.close_when_idle(self.ops);
    }
}

impl Emit for Cx<'_> {
    fn push(&mut self, op: ConnOp) {
        self.life.account(op);
        self.ops.push(op);
    }
}
