//! The built-in test servers beside echo, for the load generator: a **sink**
//! that discards everything, a **source** that streams the periodic pattern
//! from accept on, and a **request/response** server that answers every
//! complete request of `request` bytes with the next `response` bytes of the
//! periodic stream.
//!
//! One state machine serves all three modes. A connection has one socket (the
//! client) with a multishot receive that discards what arrives (each buffer
//! goes straight back to the ring, so no connection ever holds a provided
//! buffer) and at most one send in flight, straight from the shard's periodic
//! region (`verify::periodic_region_for(MAX_SEND)`, registered once per
//! shard): stream byte `i` is `region[i % PERIOD]`, so the send of
//! `len <= MAX_SEND` bytes from stream position `p` is the contiguous slice at
//! `p % PERIOD`. A short send
//! continues from where the kernel stopped. The client's FIN is answered with
//! a FIN once what is owed has been sent (nothing for a sink, the send in
//! flight for a source, every complete request's response for
//! request/response), then the socket is closed; a reset or a send error
//! closes it at once.

use super::Emit;
use super::cx::Cx;
use super::pipe::{Fin, RecvState};
use super::{ConnOp, RecvEvent, Side, errno};
use crate::stats::{CloseReason, Counter};
use crate::verify::PERIOD;

/// The largest send window: 256 KiB, sent with `MSG_WAITALL` (the kernel
/// refills the socket buffer itself as it drains), so a source is not the
/// limit of a single-connection download; the shard's region is
/// `verify::periodic_region_for(MAX_SEND)`, so every window is one
/// contiguous slice of it.
pub const MAX_SEND: u32 = 256 * 1024;

const SIDE: Side = Side::Client;

/// What a server connection sends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ServeMode {
    /// Nothing: receive and discard.
    Sink,
    /// The periodic stream, continuously, until the client's FIN.
    Source,
    /// `response` stream bytes for every complete `request` bytes received
    /// (both >= 1); response `k` is stream bytes `[k * response, (k + 1) * response)`.
    RequestResponse { request: u32, response: u32 },
}

impl ServeMode {
    /// Whether this mode sends from the periodic region.
    pub fn sends(self) -> bool {
        !matches!(self, ServeMode::Sink)
    }
}

#[derive(Debug)]
pub struct Server {
    mode: ServeMode,
    recv: RecvState,
    /// Request/response: bytes of the request being received.
    partial: u64,
    /// Stream bytes the sender may send in all (`u64::MAX`: a source before FIN).
    owed: u64,
    /// Stream bytes the kernel took.
    sent: u64,
    /// Length of the send in flight.
    sending: Option<u32>,
    fin: Fin,
    closing: bool,
    reason: Option<CloseReason>,
    /// The errno that ended the connection, for the close log line.
    last_errno: Option<i32>,
    received: u64,
}

impl Server {
    pub fn new(mode: ServeMode) -> Server {
        let mode = match mode {
            ServeMode::RequestResponse { request, response } => ServeMode::RequestResponse {
                request: request.max(1),
                response: response.max(1),
            },
            other => other,
        };
        Server {
            mode,
            recv: RecvState::Stopped,
            partial: 0,
            owed: match mode {
                ServeMode::Source => u64::MAX,
                ServeMode::Sink | ServeMode::RequestResponse { .. } => 0,
            },
            sent: 0,
            sending: None,
            fin: Fin::Open,
            closing: false,
            reason: None,
            last_errno: None,
            received: 0,
        }
    }

    pub fn mode(&self) -> ServeMode {
        self.mode
    }

    /// Arms the receive and, for a source, the first send.
    pub fn start(&mut self, cx: &mut Cx<'_>) {
        self.arm_if_allowed(cx);
        self.send_next(cx);
    }

    pub fn reason(&self) -> Option<CloseReason> {
        self.reason
    }

    pub fn last_errno(&self) -> Option<i32> {
        self.last_errno
    }

    /// Closing: finished once nothing is in flight and the socket is gone.
    pub fn is_closing(&self) -> bool {
        self.closing
    }

    /// Bytes received from and sent to the client.
    pub fn bytes(&self) -> (u64, u64) {
        (self.received, self.sent)
    }

    /// Stream bytes owed in all (`u64::MAX` for a source before the client's FIN).
    pub fn owed(&self) -> u64 {
        self.owed
    }

    /// A server connection never keeps a provided buffer.
    pub fn holds_no_buffers(&self) -> bool {
        true
    }

    fn push(&mut self, op: ConnOp, cx: &mut Cx<'_>) {
        cx.push(op);
    }

    pub fn handle_recv(&mut self, ev: RecvEvent, more: bool, cx: &mut Cx<'_>) {
        match ev {
            RecvEvent::Data { bid, len } => {
                // Discarded at once: the buffer goes straight back to the ring.
                self.push(ConnOp::Release(bid), cx);
                cx.add(Counter::BytesC2u, u64::from(len));
                self.received += u64::from(len);
                if !self.closing {
                    self.on_request_bytes(len);
                }
                if !more && self.recv == RecvState::Armed {
                    self.recv = RecvState::Stopped;
                    self.arm_if_allowed(cx);
                }
                self.send_next(cx);
            }
            RecvEvent::Eof => {
                self.recv = RecvState::Ended;
                if self.mode == ServeMode::Source {
                    // Stop after the send in flight (and what it left unsent).
                    self.owed = self.sent + u64::from(self.sending.unwrap_or(0));
                }
                self.send_next(cx);
            }
            RecvEvent::NoBuffers => {
                cx.count(Counter::Enobufs);
                if self.closing {
                    self.recv = RecvState::Ended;
                } else {
                    self.recv = RecvState::Starved;
                    self.push(ConnOp::Starved(SIDE), cx);
                }
            }
            RecvEvent::Cancelled => {
                if self.closing {
                    self.recv = RecvState::Ended;
                } else {
                    // Nothing cancels a server's receive but its teardown; re-arm.
                    self.recv = RecvState::Stopped;
                    self.arm_if_allowed(cx);
                }
            }
            RecvEvent::Error(e) => {
                self.recv = RecvState::Ended;
                self.note_errno(e);
                let reason = if e == errno::ECONNRESET {
                    CloseReason::ClientReset
                } else {
                    CloseReason::Error
                };
                self.begin_close(reason, cx);
            }
        }
        self.after(cx);
    }

    /// Request/response: `len` more request bytes; every completed request owes a response.
    fn on_request_bytes(&mut self, len: u32) {
        if let ServeMode::RequestResponse { request, response } = self.mode {
            self.partial += u64::from(len);
            let complete = self.partial / u64::from(request);
            self.partial %= u64::from(request);
            self.owed = self
                .owed
                .saturating_add(complete.saturating_mul(u64::from(response)));
        }
    }

    pub fn handle_sent(&mut self, res: Result<u32, i32>, cx: &mut Cx<'_>) {
        let offered = self.sending.take().unwrap_or(0);
        match res {
            Ok(n) if n > 0 && n <= offered => {
                cx.add(Counter::BytesU2c, u64::from(n));
                if n < offered {
                    cx.count(Counter::ShortSends);
                }
                self.sent += u64::from(n);
                self.send_next(cx);
            }
            // Cancelled by our own teardown.
            Err(errno::ECANCELED) if self.closing => {}
            Err(e @ (errno::EPIPE | errno::ECONNRESET)) => {
                self.note_errno(e);
                self.begin_close(CloseReason::ClientReset, cx)
            }
            Err(e) => {
                self.note_errno(e);
                self.begin_close(CloseReason::Error, cx)
            }
            // Nothing written for a non-empty send, or the kernel claiming
            // more than was offered (a bug): end it.
            Ok(_) => self.begin_close(CloseReason::Error, cx),
        }
        self.after(cx);
    }

    pub fn handle_shutdown(&mut self, res: Result<(), i32>, cx: &mut Cx<'_>) {
        self.fin = Fin::Done;
        let reason = match res {
            Ok(()) => CloseReason::ClientEof,
            Err(e) => {
                self.note_errno(e);
                // ENOTCONN: the client reset the connection after its FIN
                // (it closed while our last bytes were on the way).
                if matches!(e, errno::ENOTCONN | errno::ECONNRESET | errno::EPIPE) {
                    CloseReason::ClientReset
                } else {
                    CloseReason::Error
                }
            }
        };
        self.begin_close(reason, cx);
        self.after(cx);
    }

    pub fn handle_cancel(&mut self, cx: &mut Cx<'_>) {
        self.after(cx);
    }

    /// Buffers came back to the ring: a starved receive tries again.
    pub fn handle_buffers(&mut self, cx: &mut Cx<'_>) {
        if self.recv == RecvState::Starved && !self.closing {
            self.recv = RecvState::Stopped;
            self.arm_if_allowed(cx);
        }
    }

    pub fn abort(&mut self, reason: CloseReason, cx: &mut Cx<'_>) {
        self.begin_close(reason, cx);
        self.after(cx);
    }

    fn arm_if_allowed(&mut self, cx: &mut Cx<'_>) {
        if self.recv == RecvState::Stopped && !self.closing {
            self.recv = RecvState::Armed;
            self.push(ConnOp::ArmRecv(SIDE), cx);
        }
    }

    /// Issues the next send window, or the FIN once everything owed is sent
    /// and the client has finished.
    fn send_next(&mut self, cx: &mut Cx<'_>) {
        if self.closing || self.sending.is_some() || self.fin != Fin::Open {
            return;
        }
        let left = self.owed.saturating_sub(self.sent);
        if left == 0 {
            if self.recv == RecvState::Ended {
                self.fin = Fin::InFlight;
                self.push(ConnOp::Shutdown(SIDE), cx);
            }
            return;
        }
        let len = u32::try_from(left).unwrap_or(u32::MAX).min(MAX_SEND);
        // PERIOD fits in u32 and the remainder is below it.
        let offset = (self.sent % PERIOD as u64) as u32;
        self.sending = Some(len);
        self.push(
            ConnOp::SendRegion {
                side: SIDE,
                offset,
                len,
            },
            cx,
        );
    }

    /// Keeps the first errno of a connection that is not yet closing.
    fn note_errno(&mut self, e: i32) {
        if !self.closing && self.last_errno.is_none() {
            self.last_errno = Some(e);
        }
    }

    fn begin_close(&mut self, reason: CloseReason, cx: &mut Cx<'_>) {
        if self.closing {
            return;
        }
        self.closing = true;
        self.reason = Some(reason);
        cx.doom(SIDE, false);
    }

    fn after(&mut self, cx: &mut Cx<'_>) {
        if self.closing {
            cx.close_when_idle();
        }
    }
}

#[cfg(test)]
mod tests;
