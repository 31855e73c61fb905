//! Bookkeeping every connection shares: which operations are still in the
//! kernel, per socket and in total, so a socket is closed only once nothing
//! names it and a connection is freed only once every completion is back.
//! A splice names two descriptors, a socket and a pipe: it counts on the
//! socket here, and the direction that owns the pipe keeps it until the
//! splice is back.

use super::SpliceEnd;
use super::{ConnOp, Side};

/// Life of one socket of a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SockState {
    /// No descriptor (upstream before its socket exists, or after a failed attempt).
    Absent,
    Open,
    /// Close requested; waiting for its operations to come back (they were cancelled).
    Doomed {
        linger0: bool,
    },
    CloseInFlight,
    Closed,
}

#[derive(Clone, Copy, Debug)]
struct Sock {
    state: SockState,
    /// Operations in the kernel that use this socket's descriptor.
    ops: u32,
    cancel_sent: bool,
    /// A splice reading this socket is in flight (cancelled by token: the
    /// socket is its input, which cancel-by-descriptor does not match).
    splice_in: bool,
    /// A splice writing this socket is in flight.
    splice_out: bool,
}

/// Which final completion arrived, for the accounting.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Done {
    /// An operation that did not hold a socket (socket(), a cancel, a
    /// discard, a connect's linked timeout).
    Plain,
    /// An operation on `side`'s socket.
    On(Side),
    /// A splice on `side`'s socket.
    Splice(Side, SpliceEnd),
    /// The close of `side`'s socket.
    Closed(Side),
}

/// In-flight accounting of one connection.
#[derive(Debug)]
pub struct Lifecycle {
    socks: [Sock; 2],
    /// Every operation whose final completion has not arrived yet.
    inflight: u32,
}

impl Lifecycle {
    pub fn new(client: SockState, upstream: SockState) -> Lifecycle {
        let sock = |state| Sock {
            state,
            ops: 0,
            cancel_sent: false,
            splice_in: false,
            splice_out: false,
        };
        Lifecycle {
            socks: [sock(client), sock(upstream)],
            inflight: 0,
        }
    }

    pub fn state(&self, side: Side) -> SockState {
        self.socks[side.index()].state
    }

    pub fn set_state(&mut self, side: Side, state: SockState) {
        self.socks[side.index()].state = state;
        if state == SockState::Open {
            self.socks[side.index()].cancel_sent = false;
        }
    }

    pub fn inflight(&self) -> u32 {
        self.inflight
    }

    pub fn sock_ops(&self, side: Side) -> u32 {
        self.socks[side.index()].ops
    }

    /// Records an operation as it is pushed (`Cx::push`).
    pub fn account(&mut self, op: ConnOp) {
        {
            match op {
                ConnOp::OpenUpstream { .. }
                | ConnOp::Discard
                | ConnOp::CancelRecv(_)
                | ConnOp::CancelSplice { .. } => self.inflight += 1,
                ConnOp::SpliceIn { side, .. } => {
                    self.inflight += 1;
                    let s = &mut self.socks[side.index()];
                    s.ops += 1;
                    s.splice_in = true;
                }
                ConnOp::SpliceOut { side, .. } => {
                    self.inflight += 1;
                    let s = &mut self.socks[side.index()];
                    s.ops += 1;
                    s.splice_out = true;
                }
                ConnOp::CancelAll(side) => {
                    self.inflight += 1;
                    self.socks[side.index()].cancel_sent = true;
                }
                ConnOp::Connect { .. } => {
                    // The connect and its linked timeout complete separately.
                    self.inflight += 2;
                    self.socks[Side::Upstream.index()].ops += 1;
                }
                ConnOp::SendReply { .. } => {
                    self.inflight += 1;
                    self.socks[Side::Client.index()].ops += 1;
                }
                ConnOp::FrontRecv => {
                    self.inflight += 1;
                    self.socks[Side::Client.index()].ops += 1;
                }
                ConnOp::SendPreface { .. } => {
                    self.inflight += 1;
                    self.socks[Side::Upstream.index()].ops += 1;
                }
                ConnOp::ArmRecv(side)
                | ConnOp::RecvUpTo { side, .. }
                | ConnOp::Shutdown(side)
                | ConnOp::Send { side, .. }
                | ConnOp::SendRegion { side, .. } => {
                    self.inflight += 1;
                    self.socks[side.index()].ops += 1;
                }
                ConnOp::Close { side, .. } => {
                    self.inflight += 1;
                    self.socks[side.index()].state = SockState::CloseInFlight;
                }
                ConnOp::NextTarget
                | ConnOp::Resolve
                | ConnOp::Associate
                | ConnOp::Report { .. }
                | ConnOp::Release(_)
                | ConnOp::Starved(_)
                | ConnOp::WantPipe(_)
                | ConnOp::ReturnPipe { .. } => {}
            }
        }
    }

    /// A final completion of an operation that did not hold a socket.
    pub fn done(&mut self) {
        // Below zero means an operation reached the kernel uncounted, so a
        // socket could be closed while the kernel still names its number.
        debug_assert!(self.inflight > 0, "in-flight count would go below zero");
        self.inflight = self.inflight.saturating_sub(1);
    }

    /// Accounts the final completion of an operation (the shard calls this
    /// before the state machine sees the completion).
    pub fn complete(&mut self, done: Done) {
        match done {
            Done::Plain => self.done(),
            Done::On(side) => self.done_on(side),
            Done::Splice(side, end) => self.done_splice(side, end),
            Done::Closed(side) => self.closed(side),
        }
    }

    /// A final completion of an operation that held `side`'s socket.
    pub fn done_on(&mut self, side: Side) {
        self.done();
        let s = &mut self.socks[side.index()];
        debug_assert!(s.ops > 0, "socket operation count would go below zero");
        s.ops = s.ops.saturating_sub(1);
    }

    /// The final completion of a splice on `side`'s socket.
    pub fn done_splice(&mut self, side: Side, end: SpliceEnd) {
        self.done_on(side);
        let s = &mut self.socks[side.index()];
        match end {
            SpliceEnd::In => s.splice_in = false,
            SpliceEnd::Out => s.splice_out = false,
        }
    }

    pub fn closed(&mut self, side: Side) {
        self.done();
        self.socks[side.index()].state = SockState::Closed;
    }

    /// Marks an open socket for closing: cancel what is in flight on it, or
    /// close at once when nothing is. No-op for sockets not open.
    pub fn doom(&mut self, side: Side, linger0: bool, out: &mut Vec<ConnOp>) {
        if self.state(side) != SockState::Open {
            return;
        }
        self.socks[side.index()].state = SockState::Doomed { linger0 };
        self.close_when_idle(out);
    }

    /// Issues the close of every doomed socket that nothing uses any more, and
    /// the cancel of every doomed socket that something still uses.
    pub fn close_when_idle(&mut self, out: &mut Vec<ConnOp>) {
        for side in [Side::Client, Side::Upstream] {
            let s = self.socks[side.index()];
            if let SockState::Doomed { linger0 } = s.state {
                let op = if s.ops == 0 {
                    ConnOp::Close { side, linger0 }
                } else if !s.cancel_sent {
                    // Splices are cancelled by token: a blocked one holds an
                    // io-wq worker until the cancel interrupts it.
                    for (named, end) in
                        [(s.splice_in, SpliceEnd::In), (s.splice_out, SpliceEnd::Out)]
                    {
                        if named {
                            let cancel = ConnOp::CancelSplice { side, end };
                            self.account(cancel);
                            out.push(cancel);
                        }
                    }
                    ConnOp::CancelAll(side)
                } else {
                    continue;
                };
                self.account(op);
                out.push(op);
            }
        }
    }

    /// True once both sockets are gone and no completion is outstanding.
    pub fn finished(&self) -> bool {
        self.inflight == 0
            && self
                .socks
                .iter()
                .all(|s| matches!(s.state, SockState::Absent | SockState::Closed))
    }
}
