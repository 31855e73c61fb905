//! One direction of a stream: receive from `src` into provided buffers, queue
//! them, send them to `dst` one send at a time (continuing short sends from the
//! offset), and forward the FIN once everything before it has been sent.

use std::collections::VecDeque;

use super::rate::Quota;
use super::{ConnOp, Emit, Side};

/// The receive side of the pipe (the multishot receive on `src`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RecvState {
    /// Not in the kernel; armed again when the queue is short enough.
    Stopped,
    Armed,
    /// Paused at the high watermark; waiting for the cancel to land.
    Cancelling,
    /// Ended with ENOBUFS; the shard wakes it when buffers return.
    Starved,
    /// EOF or error: no more data from `src`.
    Ended,
    /// The direction is moving to a splice: the receive is being cancelled,
    /// and is not to be armed again.
    Leaving,
    /// The receive is out of the kernel and stays out (the direction splices next).
    Parked,
}

/// The FIN this pipe forwards to `dst`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fin {
    Open,
    InFlight,
    Done,
}

#[derive(Clone, Copy, Debug)]
struct Chunk {
    bid: u16,
    len: u32,
}

/// What a send completion meant for the pipe.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sent {
    /// Progress; `short` when the kernel took less than was offered.
    Progress { short: bool },
    /// The kernel claimed more bytes than were offered (a bug): end the connection.
    Invalid,
}

#[derive(Debug)]
pub struct Pipe {
    src: Side,
    dst: Side,
    recv: RecvState,
    queue: VecDeque<Chunk>,
    /// Bytes of the head chunk already sent.
    head_sent: u32,
    /// Bytes offered by the send in flight, if any.
    sending: Option<u32>,
    fin: Fin,
    /// Teardown: no more sends; buffers go back as soon as the kernel lets go.
    discarding: bool,
    /// High watermark in buffers; receiving resumes at half of it.
    cap: u32,
    /// What the next receive may take (`bandwidth_limit`): unlimited, a
    /// single receive of at most so many bytes, or none while paused.
    quota: Quota,
    /// Bytes delivered to `dst`.
    pub bytes: u64,
}

impl Pipe {
    pub fn new(src: Side, dst: Side, cap: u32) -> Pipe {
        Pipe::resumed(src, dst, cap, 0)
    }

    /// A pipe for a direction that already delivered `bytes` (coming back
    /// from a splice): nothing queued, the receive not armed yet.
    pub fn resumed(src: Side, dst: Side, cap: u32, bytes: u64) -> Pipe {
        Pipe {
            src,
            dst,
            recv: RecvState::Stopped,
            queue: VecDeque::new(),
            head_sent: 0,
            sending: None,
            fin: Fin::Open,
            discarding: false,
            cap: cap.max(1),
            quota: Quota::Unlimited,
            bytes,
        }
    }

    /// Sets what the next receive may take; the relay keeps it current with
    /// the direction's bucket (a stale `UpTo` is only ever too small).
    pub fn set_quota(&mut self, quota: Quota) {
        self.quota = quota;
    }

    pub fn recv_state(&self) -> RecvState {
        self.recv
    }

    pub fn fin(&self) -> Fin {
        self.fin
    }

    pub fn queued(&self) -> usize {
        self.queue.len()
    }

    pub fn src_ended(&self) -> bool {
        self.recv == RecvState::Ended
    }

    fn resume_mark(&self) -> usize {
        (self.cap / 2) as usize
    }

    /// Arms the receive if it is stopped, the queue is below the resume mark
    /// and the quota is not paused. A limited direction receives once at a
    /// time, sized by its quota: a multishot receive could not be sized, and
    /// what it took before a cancel landed would go over the rate.
    pub fn arm_if_allowed(&mut self, out: &mut impl Emit) {
        if self.recv == RecvState::Stopped
            && !self.discarding
            && self.queue.len() <= self.resume_mark()
        {
            let op = match self.quota {
                Quota::Unlimited => ConnOp::ArmRecv(self.src),
                Quota::UpTo(max) => ConnOp::RecvUpTo {
                    side: self.src,
                    max,
                },
                Quota::Paused => return,
            };
            self.recv = RecvState::Armed;
            out.push(op);
        }
    }

    /// Data arrived in buffer `bid`. Returns true when the receive was paused.
    pub fn on_data(&mut self, bid: u16, len: u32, more: bool, out: &mut impl Emit) -> bool {
        if self.discarding || len == 0 {
            out.push(ConnOp::Release(bid));
        } else {
            self.queue.push_back(Chunk { bid, len });
            self.send_next(out);
        }
        if !more {
            self.recv = match self.recv {
                RecvState::Ended => RecvState::Ended,
                RecvState::Leaving | RecvState::Parked => RecvState::Parked,
                _ => RecvState::Stopped,
            };
            self.arm_if_allowed(out);
            return false;
        }
        if self.recv == RecvState::Armed && self.queue.len() >= self.cap as usize {
            self.recv = RecvState::Cancelling;
            out.push(ConnOp::CancelRecv(self.src));
            return true;
        }
        false
    }

    /// The receive ended without data (a final completion), now `state`
    /// (a receive being stopped for a splice parks instead, unless it ended).
    pub fn on_recv_end(&mut self, state: RecvState, out: &mut impl Emit) {
        let leaving = matches!(self.recv, RecvState::Leaving | RecvState::Parked);
        self.recv = if leaving && state != RecvState::Ended {
            RecvState::Parked
        } else {
            state
        };
        match self.recv {
            RecvState::Stopped => self.arm_if_allowed(out),
            RecvState::Starved => out.push(ConnOp::Starved(self.src)),
            RecvState::Ended => self.forward_fin_if_drained(out),
            RecvState::Armed | RecvState::Cancelling | RecvState::Leaving | RecvState::Parked => {}
        }
    }

    /// Stops receiving for good (the direction moves to a splice): cancels an
    /// armed receive, or parks one that is out of the kernel.
    pub fn stop_receiving(&mut self, out: &mut impl Emit) {
        match self.recv {
            RecvState::Armed => {
                self.recv = RecvState::Leaving;
                out.push(ConnOp::CancelRecv(self.src));
            }
            RecvState::Cancelling => self.recv = RecvState::Leaving,
            RecvState::Stopped | RecvState::Starved => self.recv = RecvState::Parked,
            RecvState::Ended | RecvState::Leaving | RecvState::Parked => {}
        }
    }

    /// True once the receive is parked and every byte it received was sent:
    /// the direction can splice without reordering anything.
    pub fn ready_to_splice(&self) -> bool {
        self.recv == RecvState::Parked
            && self.queue.is_empty()
            && self.sending.is_none()
            && !self.discarding
            && self.fin == Fin::Open
    }

    /// Teardown began or a send failed: nothing more will be sent.
    pub fn discarding(&self) -> bool {
        self.discarding
    }

    /// Buffers came back to the ring: a starved receive may try again.
    pub fn on_buffers(&mut self, out: &mut impl Emit) {
        if self.recv == RecvState::Starved {
            self.recv = RecvState::Stopped;
            self.arm_if_allowed(out);
        }
    }

    /// The send in flight completed with `n` bytes written.
    pub fn on_sent(&mut self, n: u32, out: &mut impl Emit) -> Sent {
        let offered = self.sending.take().unwrap_or(0);
        if n > offered {
            return Sent::Invalid;
        }
        self.bytes += u64::from(n);
        self.head_sent += n;
        if let Some(head) = self.queue.front().copied()
            && self.head_sent >= head.len
        {
            self.queue.pop_front();
            self.head_sent = 0;
            out.push(ConnOp::Release(head.bid));
            if self.recv == RecvState::Starved {
                // This buffer went back to the ring: retry the starved receive
                // now rather than waiting for the shard-wide wake-up.
                self.on_buffers(out);
            }
        }
        if self.discarding {
            self.release_unsent(out);
            return Sent::Progress { short: n < offered };
        }
        self.send_next(out);
        self.arm_if_allowed(out);
        Sent::Progress { short: n < offered }
    }

    /// The send in flight failed or was cancelled; nothing more will be sent.
    pub fn on_send_failed(&mut self, out: &mut impl Emit) {
        self.sending = None;
        self.discarding = true;
        self.release_unsent(out);
    }

    pub fn on_fin_sent(&mut self) {
        self.fin = Fin::Done;
    }

    /// Teardown: release every buffer the kernel is not reading from.
    pub fn release_unsent(&mut self, out: &mut impl Emit) {
        self.discarding = true;
        let keep = usize::from(self.sending.is_some());
        while self.queue.len() > keep {
            if let Some(c) = self.queue.pop_back() {
                out.push(ConnOp::Release(c.bid));
            }
        }
        if self.sending.is_none() {
            self.head_sent = 0;
        }
    }

    fn send_next(&mut self, out: &mut impl Emit) {
        if self.sending.is_some() || self.discarding {
            return;
        }
        match self.queue.front() {
            Some(head) => {
                let len = head.len - self.head_sent;
                self.sending = Some(len);
                out.push(ConnOp::Send {
                    side: self.dst,
                    bid: head.bid,
                    offset: self.head_sent,
                    len,
                });
            }
            None => self.forward_fin_if_drained(out),
        }
    }

    fn forward_fin_if_drained(&mut self, out: &mut impl Emit) {
        if self.recv == RecvState::Ended
            && self.fin == Fin::Open
            && self.queue.is_empty()
            && self.sending.is_none()
            && !self.discarding
        {
            self.fin = Fin::InFlight;
            out.push(ConnOp::Shutdown(self.dst));
        }
    }

    /// True when no buffer of this pipe is held (for the end-of-life check).
    pub fn holds_no_buffers(&self) -> bool {
        self.queue.is_empty()
    }
}
