//! The reply socket of a `transparent = "tproxy"` UDP session. The client
//! wrote to an address that is not this host's (a TPROXY rule steered the
//! datagram here), so its replies must come from that address and port: a
//! transparent socket bound there and connected to the client. Being the
//! kernel's best match for the client's later datagrams, it receives them
//! too, and they feed the same session as those read from the listener.
//!
//! Its life beside the session's: made when the session starts, closed
//! once the session is closing and nothing uses it any more (its armed
//! receive cancelled, its sends to the client completed). Like the session,
//! no syscalls: completions in, `SessionOp`s out.

use super::{DatagramEvent, SessionOp};

/// Consecutive receive errors after which the socket stops receiving (the
/// session keeps sending from it). A connected UDP socket reports an ICMP
/// error once and the next receive goes on; errors with no datagram in
/// between, over and over, would spin the shard.
const MAX_RECV_ERRORS: u32 = 8;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Sock {
    /// The open operation is in flight.
    Opening,
    Open,
    /// It could not be made; nothing to close.
    Failed,
    CloseInFlight,
    Closed,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Recv {
    Stopped,
    Armed,
    Starved,
}

#[derive(Debug)]
pub struct ReplySocket {
    sock: Sock,
    recv: Recv,
    /// Sends to the client on this socket whose completion is not back.
    sends: u32,
    cancel_inflight: bool,
    cancel_sent: bool,
    closing: bool,
    recv_errors: u32,
}

impl ReplySocket {
    /// A reply socket whose open is asked for in `out`.
    pub fn open(out: &mut Vec<SessionOp>) -> ReplySocket {
        out.push(SessionOp::OpenReply);
        ReplySocket {
            sock: Sock::Opening,
            recv: Recv::Stopped,
            sends: 0,
            cancel_inflight: false,
            cancel_sent: false,
            closing: false,
            recv_errors: 0,
        }
    }

    /// Whether a send to the client may use it.
    pub fn is_open(&self) -> bool {
        self.sock == Sock::Open
    }

    /// The open completed; `Err` (the errno) when the socket could not be
    /// made, and the session must end (its replies have nowhere to leave from).
    pub fn handle_open(
        &mut self,
        res: Result<(), i32>,
        out: &mut Vec<SessionOp>,
    ) -> Result<(), i32> {
        match res {
            Ok(()) => {
                self.sock = Sock::Open;
                self.arm(out);
                self.after(out);
                Ok(())
            }
            Err(e) => {
                self.sock = Sock::Failed;
                Err(e)
            }
        }
    }

    fn arm(&mut self, out: &mut Vec<SessionOp>) {
        if self.sock == Sock::Open && self.recv == Recv::Stopped && !self.closing {
            self.recv = Recv::Armed;
            out.push(SessionOp::ArmReplyRecv);
        }
    }

    /// A send to the client was lowered onto this socket (or failed in its
    /// place): its completion comes back through [`ReplySocket::handle_sent`].
    pub fn send_started(&mut self) {
        self.sends += 1;
    }

    pub fn handle_sent(&mut self, out: &mut Vec<SessionOp>) {
        self.sends = self.sends.saturating_sub(1);
        self.after(out);
    }

    /// A receive completion (`more`: IORING_CQE_F_MORE); its datagram, if
    /// any, is the caller's to hand to the session.
    pub fn handle_recv(&mut self, ev: DatagramEvent, more: bool, out: &mut Vec<SessionOp>) {
        match ev {
            DatagramEvent::Data(_) | DatagramEvent::Truncated { .. } => self.recv_errors = 0,
            DatagramEvent::Error(_) => self.recv_errors += 1,
            DatagramEvent::NoBuffers | DatagramEvent::Cancelled => {}
        }
        if more {
            return;
        }
        self.recv = Recv::Stopped;
        if self.closing {
            self.after(out);
            return;
        }
        match ev {
            DatagramEvent::NoBuffers => {
                self.recv = Recv::Starved;
                out.push(SessionOp::Starved);
            }
            DatagramEvent::Error(_) if self.recv_errors > MAX_RECV_ERRORS => {}
            _ => self.arm(out),
        }
    }

    /// Datagram buffers returned: a starved receive retries.
    pub fn handle_buffers(&mut self, out: &mut Vec<SessionOp>) {
        if self.recv == Recv::Starved {
            self.recv = Recv::Stopped;
            self.arm(out);
        }
    }

    /// The session is closing: cancel the receive, close once unused.
    pub fn begin_close(&mut self, out: &mut Vec<SessionOp>) {
        if self.closing {
            return;
        }
        self.closing = true;
        self.after(out);
    }

    pub fn handle_cancel(&mut self, out: &mut Vec<SessionOp>) {
        self.cancel_inflight = false;
        self.after(out);
    }

    pub fn handle_close(&mut self) {
        self.sock = Sock::Closed;
    }

    /// Closed (or never made) and no completion naming it outstanding.
    pub fn is_finished(&self) -> bool {
        self.closing
            && matches!(self.sock, Sock::Failed | Sock::Closed)
            && !self.cancel_inflight
            && self.sends == 0
    }

    fn after(&mut self, out: &mut Vec<SessionOp>) {
        if !self.closing || self.sock != Sock::Open {
            return;
        }
        if self.recv == Recv::Armed {
            if !self.cancel_sent {
                self.cancel_sent = true;
                self.cancel_inflight = true;
                out.push(SessionOp::CancelReplyRecv);
            }
        } else if self.sends == 0 {
            self.sock = Sock::CloseInFlight;
            out.push(SessionOp::CloseReply);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::udp::Payload;

    fn opened() -> ReplySocket {
        let mut out = Vec::new();
        let mut r = ReplySocket::open(&mut out);
        assert_eq!(out, [SessionOp::OpenReply]);
        out.clear();
        assert_eq!(r.handle_open(Ok(()), &mut out), Ok(()));
        assert_eq!(out, [SessionOp::ArmReplyRecv]);
        r
    }

    fn data() -> DatagramEvent {
        DatagramEvent::Data(Payload {
            bid: 1,
            offset: 0,
            len: 1,
        })
    }

    #[test]
    fn closes_only_after_its_receive_and_sends_are_back() {
        let mut r = opened();
        let mut out = Vec::new();
        r.send_started();
        r.begin_close(&mut out);
        assert_eq!(out, [SessionOp::CancelReplyRecv]);
        out.clear();
        r.handle_cancel(&mut out);
        r.handle_recv(DatagramEvent::Cancelled, false, &mut out);
        assert!(out.is_empty(), "a send is still in flight: {out:?}");
        r.handle_sent(&mut out);
        assert_eq!(out, [SessionOp::CloseReply]);
        assert!(!r.is_finished());
        r.handle_close();
        assert!(r.is_finished());
    }

    #[test]
    fn a_close_while_opening_waits_for_the_socket() {
        let mut out = Vec::new();
        let mut r = ReplySocket::open(&mut out);
        out.clear();
        r.begin_close(&mut out);
        assert!(out.is_empty());
        assert!(!r.is_finished(), "the open is in flight");
        assert_eq!(r.handle_open(Ok(()), &mut out), Ok(()));
        assert_eq!(out, [SessionOp::CloseReply], "never armed");
        r.handle_close();
        assert!(r.is_finished());
    }

    #[test]
    fn a_failed_open_ends_the_session_and_needs_no_close() {
        let mut out = Vec::new();
        let mut r = ReplySocket::open(&mut out);
        out.clear();
        assert_eq!(
            r.handle_open(Err(libc::EADDRINUSE), &mut out),
            Err(libc::EADDRINUSE)
        );
        assert!(!r.is_open());
        r.begin_close(&mut out);
        assert!(out.is_empty());
        assert!(r.is_finished());
    }

    #[test]
    fn the_receive_rearms_starves_and_gives_up_on_endless_errors() {
        let mut r = opened();
        let mut out = Vec::new();
        r.handle_recv(data(), true, &mut out);
        assert!(out.is_empty(), "still armed");
        r.handle_recv(data(), false, &mut out);
        assert_eq!(out, [SessionOp::ArmReplyRecv]);
        out.clear();
        r.handle_recv(DatagramEvent::NoBuffers, false, &mut out);
        assert_eq!(out, [SessionOp::Starved]);
        out.clear();
        r.handle_buffers(&mut out);
        assert_eq!(out, [SessionOp::ArmReplyRecv]);
        for _ in 0..MAX_RECV_ERRORS {
            out.clear();
            r.handle_recv(DatagramEvent::Error(libc::ECONNREFUSED), false, &mut out);
            assert_eq!(
                out,
                [SessionOp::ArmReplyRecv],
                "an ICMP error is reported once"
            );
        }
        out.clear();
        r.handle_recv(DatagramEvent::Error(libc::ECONNREFUSED), false, &mut out);
        assert!(out.is_empty(), "errors and nothing else: stop");
        r.begin_close(&mut out);
        assert_eq!(out, [SessionOp::CloseReply]);
    }
}
