//! The built-in echo upstream: every byte received is sent back on the same
//! socket, in order; the client's FIN is answered with a FIN once everything
//! before it was echoed, and a reset ends the connection.

use super::lifecycle::{Lifecycle, SockState};
use super::pipe::{Fin, Pipe, RecvState, Sent};
use super::{ConnOp, RecvEvent, Side};
use crate::stats::{CloseReason, ShardStats};

#[derive(Debug)]
pub struct Echo {
    life: Lifecycle,
    pipe: Pipe,
    closing: bool,
    reason: Option<CloseReason>,
}

const SIDE: Side = Side::Client;

impl Echo {
    pub fn new(cap: u32) -> Echo {
        Echo {
            life: Lifecycle::new(SockState::Open, SockState::Absent),
            pipe: Pipe::new(SIDE, SIDE, cap),
            closing: false,
            reason: None,
        }
    }

    fn emit(&mut self, out: &mut Vec<ConnOp>, f: impl FnOnce(&mut Pipe, &mut Vec<ConnOp>)) {
        let start = out.len();
        f(&mut self.pipe, out);
        if let Some(tail) = out.get(start..) {
            self.life.account(tail);
        }
    }

    pub fn start(&mut self, out: &mut Vec<ConnOp>) {
        self.emit(out, |p, out| p.arm_if_allowed(out));
    }

    pub fn reason(&self) -> Option<CloseReason> {
        self.reason
    }

    pub fn is_finished(&self) -> bool {
        self.closing && self.life.finished()
    }

    pub fn inflight(&self) -> u32 {
        self.life.inflight()
    }

    pub fn handle_recv(
        &mut self,
        ev: RecvEvent,
        more: bool,
        out: &mut Vec<ConnOp>,
        stats: &mut ShardStats,
    ) {
        if !more {
            self.life.done_on(SIDE);
        }
        let closing = self.closing;
        match ev {
            RecvEvent::Data { bid, len } => {
                stats.bytes_client_to_upstream += u64::from(len);
                self.emit(out, |p, out| {
                    if p.on_data(bid, len, more && !closing, out) {
                        stats.recv_paused += 1;
                    }
                });
            }
            RecvEvent::Eof => self.emit(out, |p, out| p.on_recv_end(RecvState::Ended, out)),
            RecvEvent::NoBuffers => {
                stats.enobufs += 1;
                let state = if closing {
                    RecvState::Ended
                } else {
                    RecvState::Starved
                };
                self.emit(out, |p, out| p.on_recv_end(state, out));
            }
            RecvEvent::Cancelled => {
                let state = if closing {
                    RecvState::Ended
                } else {
                    RecvState::Stopped
                };
                self.emit(out, |p, out| p.on_recv_end(state, out));
            }
            RecvEvent::Error(e) => {
                let reason = if e == libc::ECONNRESET {
                    CloseReason::ClientReset
                } else {
                    CloseReason::Error
                };
                // Close first so the broken stream is not answered with a FIN.
                self.begin_close(reason, out);
                self.emit(out, |p, out| p.on_recv_end(RecvState::Ended, out));
            }
        }
        self.after(out);
    }

    pub fn handle_sent(
        &mut self,
        res: Result<u32, i32>,
        out: &mut Vec<ConnOp>,
        stats: &mut ShardStats,
    ) {
        self.life.done_on(SIDE);
        match res {
            Ok(n) if n > 0 => {
                stats.bytes_upstream_to_client += u64::from(n);
                let mut outcome = Sent::Invalid;
                self.emit(out, |p, out| outcome = p.on_sent(n, out));
                match outcome {
                    Sent::Progress { short: true } => stats.short_sends += 1,
                    Sent::Progress { short: false } => {}
                    Sent::Invalid => self.begin_close(CloseReason::Error, out),
                }
            }
            Ok(_) | Err(_) => {
                self.emit(out, |p, out| p.on_send_failed(out));
                self.begin_close(CloseReason::ClientReset, out);
            }
        }
        self.after(out);
    }

    pub fn handle_shutdown(&mut self, res: Result<(), i32>, out: &mut Vec<ConnOp>) {
        self.life.done_on(SIDE);
        self.pipe.on_fin_sent();
        let reason = match res {
            Ok(()) if self.pipe.fin() == Fin::Done => CloseReason::ClientEof,
            _ => CloseReason::Error,
        };
        self.begin_close(reason, out);
        self.after(out);
    }

    pub fn handle_cancel(&mut self, out: &mut Vec<ConnOp>) {
        self.life.done();
        self.after(out);
    }

    pub fn handle_close(&mut self) {
        self.life.closed(SIDE);
    }

    pub fn handle_buffers(&mut self, out: &mut Vec<ConnOp>) {
        if !self.closing {
            self.emit(out, |p, out| p.on_buffers(out));
        }
    }

    pub fn abort(&mut self, reason: CloseReason, out: &mut Vec<ConnOp>) {
        self.begin_close(reason, out);
    }

    fn begin_close(&mut self, reason: CloseReason, out: &mut Vec<ConnOp>) {
        if self.closing {
            return;
        }
        self.closing = true;
        self.reason = Some(reason);
        self.emit(out, |p, out| p.release_unsent(out));
        self.life.doom(SIDE, false, out);
    }

    fn after(&mut self, out: &mut Vec<ConnOp>) {
        if self.closing {
            self.life.close_when_idle(out);
        }
    }

    pub fn holds_no_buffers(&self) -> bool {
        self.pipe.holds_no_buffers()
    }
}
