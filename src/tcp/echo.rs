//! The built-in echo upstream: every byte received is sent back on the same
//! socket, in order; the client's FIN is answered with a FIN once everything
//! before it was echoed, and a reset ends the connection.

use super::cx::Cx;
use super::pipe::{Fin, Pipe, RecvState, Sent};
use super::{RecvEvent, Side};
use crate::stats::{CloseReason, Counter};

#[derive(Debug)]
pub(crate) struct Echo {
    pipe: Pipe,
    closing: bool,
    reason: Option<CloseReason>,
}

const SIDE: Side = Side::Client;

impl Echo {
    pub(crate) fn new(cap: u32) -> Echo {
        Echo {
            pipe: Pipe::new(SIDE, SIDE, cap),
            closing: false,
            reason: None,
        }
    }

    pub(crate) fn start(&mut self, cx: &mut Cx<'_>) {
        self.pipe.arm_if_allowed(cx);
    }

    pub(crate) fn reason(&self) -> Option<CloseReason> {
        self.reason
    }

    /// Closing: finished once nothing is in flight and the socket is gone.
    pub(crate) fn is_closing(&self) -> bool {
        self.closing
    }

    pub(crate) fn handle_recv(&mut self, ev: RecvEvent, more: bool, cx: &mut Cx<'_>) {
        let closing = self.closing;
        match ev {
            RecvEvent::Data { bid, len } => {
                cx.add(Counter::BytesC2u, u64::from(len));
                if self.pipe.on_data(bid, len, more && !closing, cx) {
                    cx.count(Counter::RecvPaused);
                }
            }
            RecvEvent::Eof => self.pipe.on_recv_end(RecvState::Ended, cx),
            RecvEvent::NoBuffers => {
                cx.count(Counter::Enobufs);
                let state = if closing {
                    RecvState::Ended
                } else {
                    RecvState::Starved
                };
                self.pipe.on_recv_end(state, cx);
            }
            RecvEvent::Cancelled => {
                let state = if closing {
                    RecvState::Ended
                } else {
                    RecvState::Stopped
                };
                self.pipe.on_recv_end(state, cx);
            }
            RecvEvent::Error(e) => {
                let reason = if e == libc::ECONNRESET {
                    CloseReason::ClientReset
                } else {
                    CloseReason::Error
                };
                // Close first so the broken stream is not answered with a FIN.
                self.begin_close(reason, cx);
                self.pipe.on_recv_end(RecvState::Ended, cx);
            }
        }
        self.after(cx);
    }

    pub(crate) fn handle_sent(&mut self, res: Result<u32, i32>, cx: &mut Cx<'_>) {
        match res {
            Ok(n) if n > 0 => {
                cx.add(Counter::BytesU2c, u64::from(n));
                let outcome = self.pipe.on_sent(n, cx);
                match outcome {
                    Sent::Progress { short: true } => cx.count(Counter::ShortSends),
                    Sent::Progress { short: false } => {}
                    Sent::Invalid => self.begin_close(CloseReason::Error, cx),
                }
            }
            Ok(_) | Err(_) => {
                self.pipe.on_send_failed(cx);
                self.begin_close(CloseReason::ClientReset, cx);
            }
        }
        self.after(cx);
    }

    pub(crate) fn handle_shutdown(&mut self, res: Result<(), i32>, cx: &mut Cx<'_>) {
        self.pipe.on_fin_sent();
        let reason = match res {
            Ok(()) if self.pipe.fin() == Fin::Done => CloseReason::ClientEof,
            _ => CloseReason::Error,
        };
        self.begin_close(reason, cx);
        self.after(cx);
    }

    pub(crate) fn handle_cancel(&mut self, cx: &mut Cx<'_>) {
        self.after(cx);
    }

    pub(crate) fn handle_buffers(&mut self, cx: &mut Cx<'_>) {
        if !self.closing {
            self.pipe.on_buffers(cx);
        }
    }

    pub(crate) fn abort(&mut self, reason: CloseReason, cx: &mut Cx<'_>) {
        self.begin_close(reason, cx);
    }

    fn begin_close(&mut self, reason: CloseReason, cx: &mut Cx<'_>) {
        if self.closing {
            return;
        }
        self.closing = true;
        self.reason = Some(reason);
        self.pipe.release_unsent(cx);
        cx.doom(SIDE, false);
    }

    fn after(&mut self, cx: &mut Cx<'_>) {
        if self.closing {
            cx.close_when_idle();
        }
    }
}
