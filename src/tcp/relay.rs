//! The forwarding connection: connect to an upstream (round-robin start, next
//! upstream on refusal or timeout), then relay both directions through two
//! pipes, forward half-closes and resets, and enforce idle and half-close
//! timeouts. Inputs are completions and the time; outputs are `ConnOp`s.

use super::lifecycle::{Lifecycle, SockState};
use super::pipe::{Fin, Pipe, RecvState, Sent};
use super::{ConnOp, RecvEvent, Side, errno};
use crate::stats::{CloseReason, ShardStats};
use crate::time::Millis;

/// Per-listener settings a relay needs, in the units the state machine uses.
#[derive(Clone, Copy, Debug)]
pub struct RelayConfig {
    /// Number of upstreams of the listener (>= 1).
    pub upstreams: u16,
    /// Where this connection's round-robin turn starts.
    pub first_upstream: u16,
    pub idle_ms: Millis,
    pub half_close_ms: Millis,
    /// High watermark: buffers queued per direction before receiving pauses.
    pub cap: u32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    Connecting,
    Relaying,
    Closing,
}

/// How the sockets are closed when the connection ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Ending {
    /// FIN on both sides (normal end, timeouts, failed connects, shutdown).
    Graceful,
    /// `side` reset or failed: the other side gets a reset (SO_LINGER 0).
    Reset { side: Side },
}

#[derive(Debug)]
pub struct Relay {
    phase: Phase,
    life: Lifecycle,
    /// pipes[Client] carries client→upstream, pipes[Upstream] upstream→client.
    pipes: [Pipe; 2],
    cfg: RelayConfig,
    /// Upstream attempts made so far (the current one included).
    attempts: u16,
    last_activity: Millis,
    first_eof: Option<Side>,
    reason: Option<CloseReason>,
    /// Last errno worth logging with the close.
    last_errno: Option<i32>,
}

impl Relay {
    /// A relay for a just-accepted client; call `start` next.
    pub fn new(cfg: RelayConfig, now: Millis) -> Relay {
        Relay {
            phase: Phase::Connecting,
            life: Lifecycle::new(SockState::Open, SockState::Absent),
            pipes: [
                Pipe::new(Side::Client, Side::Upstream, cfg.cap),
                Pipe::new(Side::Upstream, Side::Client, cfg.cap),
            ],
            cfg,
            attempts: 0,
            last_activity: now,
            first_eof: None,
            reason: None,
            last_errno: None,
        }
    }

    /// Begins the first upstream attempt.
    pub fn start(&mut self, out: &mut Vec<ConnOp>) {
        self.next_attempt(None, out);
    }

    /// The upstream index the current attempt uses.
    pub fn current_upstream(&self) -> u16 {
        let n = self.cfg.upstreams.max(1);
        let turn = self.attempts.saturating_sub(1) % n;
        (self.cfg.first_upstream % n + turn) % n
    }

    pub fn reason(&self) -> Option<CloseReason> {
        self.reason
    }

    pub fn last_errno(&self) -> Option<i32> {
        self.last_errno
    }

    pub fn attempts(&self) -> u16 {
        self.attempts
    }

    pub fn is_finished(&self) -> bool {
        self.phase == Phase::Closing && self.life.finished()
    }

    pub fn inflight(&self) -> u32 {
        self.life.inflight()
    }

    /// Bytes delivered (client→upstream, upstream→client).
    pub fn bytes(&self) -> (u64, u64) {
        (self.pipes[0].bytes, self.pipes[1].bytes)
    }

    /// When `handle_timeout` must next be called (idle or half-close inactivity).
    pub fn deadline(&self) -> Option<Millis> {
        match self.phase {
            Phase::Relaying => {
                let limit = if self.first_eof.is_some() {
                    self.cfg.half_close_ms
                } else {
                    self.cfg.idle_ms
                };
                Some(self.last_activity.saturating_add(limit))
            }
            Phase::Connecting | Phase::Closing => None,
        }
    }

    /// Records and emits `op`s pushed by the closure.
    fn emit(&mut self, out: &mut Vec<ConnOp>, f: impl FnOnce(&mut Self, &mut Vec<ConnOp>)) {
        let start = out.len();
        f(self, out);
        if let Some(tail) = out.get(start..) {
            self.life.account(tail);
        }
    }

    /// The upstream socket exists (Ok) or could not be created (Err(errno)).
    pub fn handle_socket(
        &mut self,
        res: Result<(), i32>,
        out: &mut Vec<ConnOp>,
        stats: &mut ShardStats,
    ) {
        self.life.done();
        match res {
            Ok(()) => {
                self.life.set_state(Side::Upstream, SockState::Open);
                if self.phase == Phase::Closing {
                    self.life.doom(Side::Upstream, false, out);
                    return;
                }
                stats.connect_attempts += 1;
                let upstream = self.current_upstream();
                self.emit(out, |_, out| out.push(ConnOp::Connect { upstream }));
            }
            Err(e) => {
                stats.connect_errors += 1;
                self.last_errno = Some(e);
                if self.phase != Phase::Closing {
                    self.begin_close(CloseReason::ConnectError, Ending::Graceful, out);
                } else {
                    self.life.close_when_idle(out);
                }
            }
        }
    }

    /// The connect finished: Ok, or Err(errno) (ECANCELED = connect_timeout fired).
    pub fn handle_connect(
        &mut self,
        res: Result<(), i32>,
        now: Millis,
        out: &mut Vec<ConnOp>,
        stats: &mut ShardStats,
    ) {
        self.life.done_on(Side::Upstream);
        if self.phase == Phase::Closing {
            self.life.close_when_idle(out);
            return;
        }
        let failure = match res {
            Ok(()) => {
                self.phase = Phase::Relaying;
                self.last_activity = now;
                self.emit(out, |r, out| {
                    for p in &mut r.pipes {
                        p.arm_if_allowed(out);
                    }
                });
                return;
            }
            Err(errno::ECANCELED) => {
                stats.connect_timeouts += 1;
                CloseReason::ConnectTimeout
            }
            Err(errno::ECONNREFUSED) => {
                stats.connect_refused += 1;
                CloseReason::ConnectRefused
            }
            Err(_) => {
                stats.connect_errors += 1;
                CloseReason::ConnectError
            }
        };
        if let Err(e) = res {
            self.last_errno = Some(e);
        }
        // The failed socket is closed on its own; the next attempt gets a fresh one.
        self.life.set_state(Side::Upstream, SockState::Absent);
        self.emit(out, |_, out| out.push(ConnOp::Discard));
        self.next_attempt(Some(failure), out);
    }

    /// The connect's linked timeout completed (fired, or cancelled by the connect).
    pub fn handle_connect_timeout(&mut self, out: &mut Vec<ConnOp>) {
        self.life.done();
        if self.phase == Phase::Closing {
            self.life.close_when_idle(out);
        }
    }

    fn next_attempt(&mut self, failure: Option<CloseReason>, out: &mut Vec<ConnOp>) {
        if self.attempts < self.cfg.upstreams {
            self.attempts += 1;
            let upstream = self.current_upstream();
            self.emit(out, |_, out| out.push(ConnOp::OpenUpstream { upstream }));
        } else {
            let reason = failure.unwrap_or(CloseReason::ConnectError);
            self.begin_close(reason, Ending::Graceful, out);
        }
    }

    /// A receive completion on `side`; `more` is IORING_CQE_F_MORE.
    pub fn handle_recv(
        &mut self,
        side: Side,
        ev: RecvEvent,
        more: bool,
        now: Millis,
        out: &mut Vec<ConnOp>,
        stats: &mut ShardStats,
    ) {
        if !more {
            self.life.done_on(side);
        }
        let closing = self.phase == Phase::Closing;
        match ev {
            RecvEvent::Data { bid, len } => {
                if !closing {
                    self.last_activity = now;
                }
                self.emit(out, |r, out| {
                    let p = &mut r.pipes[side.index()];
                    if p.on_data(bid, len, more && !closing, out) {
                        stats.recv_paused += 1;
                    }
                });
            }
            RecvEvent::Eof => {
                self.emit(out, |r, out| {
                    r.pipes[side.index()].on_recv_end(RecvState::Ended, out)
                });
                if !closing && self.first_eof.is_none() {
                    self.first_eof = Some(side);
                    self.last_activity = now;
                }
            }
            RecvEvent::NoBuffers => {
                stats.enobufs += 1;
                let state = if closing {
                    RecvState::Ended
                } else {
                    RecvState::Starved
                };
                self.emit(out, |r, out| r.pipes[side.index()].on_recv_end(state, out));
            }
            RecvEvent::Cancelled => {
                let state = if closing {
                    RecvState::Ended
                } else {
                    RecvState::Stopped
                };
                self.emit(out, |r, out| r.pipes[side.index()].on_recv_end(state, out));
            }
            RecvEvent::Error(e) => {
                // Close first: a broken stream must not be ended with a FIN
                // (which the pipe would forward for a plain end of input).
                if !closing {
                    self.last_errno = Some(e);
                    let reason = reset_reason(side, e);
                    self.begin_close(reason, Ending::Reset { side }, out);
                }
                self.emit(out, |r, out| {
                    r.pipes[side.index()].on_recv_end(RecvState::Ended, out)
                });
            }
        }
        self.after(out);
    }

    /// A send on `side` completed: Ok(bytes) or Err(errno).
    pub fn handle_sent(
        &mut self,
        side: Side,
        res: Result<u32, i32>,
        now: Millis,
        out: &mut Vec<ConnOp>,
        stats: &mut ShardStats,
    ) {
        self.life.done_on(side);
        let src = side.other();
        match res {
            Ok(n) if n > 0 => {
                if self.phase != Phase::Closing {
                    self.last_activity = now;
                }
                let mut outcome = Sent::Invalid;
                self.emit(out, |r, out| outcome = r.pipes[src.index()].on_sent(n, out));
                match side {
                    Side::Upstream => stats.bytes_client_to_upstream += u64::from(n),
                    Side::Client => stats.bytes_upstream_to_client += u64::from(n),
                }
                match outcome {
                    Sent::Progress { short } => {
                        if short {
                            stats.short_sends += 1;
                        }
                    }
                    Sent::Invalid => {
                        self.begin_close(CloseReason::Error, Ending::Reset { side }, out)
                    }
                }
            }
            Ok(_) | Err(_) => {
                self.emit(out, |r, out| r.pipes[src.index()].on_send_failed(out));
                if self.phase != Phase::Closing {
                    let e = res.err().unwrap_or(libc::EIO);
                    self.last_errno = Some(e);
                    self.begin_close(reset_reason(side, e), Ending::Reset { side }, out);
                }
            }
        }
        self.after(out);
    }

    /// The FIN forwarded to `side` (shutdown SHUT_WR) completed.
    pub fn handle_shutdown(&mut self, side: Side, res: Result<(), i32>, out: &mut Vec<ConnOp>) {
        self.life.done_on(side);
        let src = side.other();
        self.pipes[src.index()].on_fin_sent();
        if self.phase != Phase::Closing {
            match res {
                Ok(()) => {
                    if self.pipes.iter().all(|p| p.fin() == Fin::Done) {
                        let reason = match self.first_eof {
                            Some(Side::Upstream) => CloseReason::UpstreamEof,
                            _ => CloseReason::ClientEof,
                        };
                        self.begin_close(reason, Ending::Graceful, out);
                    }
                }
                Err(e) => {
                    self.last_errno = Some(e);
                    self.begin_close(reset_reason(side, e), Ending::Reset { side }, out);
                }
            }
        }
        self.after(out);
    }

    /// A cancel this relay issued completed (its result does not matter: the
    /// cancelled operation reports its own end).
    pub fn handle_cancel(&mut self, out: &mut Vec<ConnOp>) {
        self.life.done();
        self.after(out);
    }

    /// The close of `side`'s socket completed.
    pub fn handle_close(&mut self, side: Side) {
        self.life.closed(side);
    }

    /// The close of a failed attempt's socket completed.
    pub fn handle_discard(&mut self) {
        self.life.done();
    }

    /// Buffers returned to the shard's ring: a starved receive on `side` retries.
    pub fn handle_buffers(&mut self, side: Side, out: &mut Vec<ConnOp>) {
        if self.phase == Phase::Relaying {
            self.emit(out, |r, out| r.pipes[side.index()].on_buffers(out));
        }
    }

    /// Time passed; ends the connection if its idle or half-close deadline is due.
    pub fn handle_timeout(&mut self, now: Millis, out: &mut Vec<ConnOp>) {
        if let Some(d) = self.deadline()
            && d <= now
        {
            let reason = if self.first_eof.is_some() {
                CloseReason::HalfCloseTimeout
            } else {
                CloseReason::IdleTimeout
            };
            self.begin_close(reason, Ending::Graceful, out);
        }
    }

    /// Ends the connection now (shutdown after drain_timeout).
    pub fn abort(&mut self, reason: CloseReason, out: &mut Vec<ConnOp>) {
        self.begin_close(reason, Ending::Graceful, out);
    }

    fn begin_close(&mut self, reason: CloseReason, ending: Ending, out: &mut Vec<ConnOp>) {
        if self.phase == Phase::Closing {
            return;
        }
        self.phase = Phase::Closing;
        self.reason = Some(reason);
        self.emit(out, |r, out| {
            for p in &mut r.pipes {
                p.release_unsent(out);
            }
        });
        for side in [Side::Client, Side::Upstream] {
            let linger0 = matches!(ending, Ending::Reset { side: s } if s != side);
            self.life.doom(side, linger0, out);
        }
    }

    /// After any completion: while closing, close sockets nothing uses any more.
    fn after(&mut self, out: &mut Vec<ConnOp>) {
        if self.phase == Phase::Closing {
            self.life.close_when_idle(out);
        }
    }

    /// True when no provided buffer is held by this connection.
    pub fn holds_no_buffers(&self) -> bool {
        self.pipes.iter().all(|p| p.holds_no_buffers())
    }
}

/// A reset from the peer is `*Reset`; anything else broken is `Error`.
/// ENOTCONN counts as a reset: it is what shutdown(2) returns once the peer's
/// reset has already torn the connection down (a client that closed with a
/// response still in flight).
fn reset_reason(side: Side, e: i32) -> CloseReason {
    match (side, e) {
        (Side::Client, errno::ECONNRESET | errno::EPIPE | errno::ENOTCONN) => {
            CloseReason::ClientReset
        }
        (Side::Upstream, errno::ECONNRESET | errno::EPIPE | errno::ENOTCONN) => {
            CloseReason::UpstreamReset
        }
        _ => CloseReason::Error,
    }
}
