//! One UDP session: a client address on one listener, forwarded through its
//! own socket connected to one upstream (so the upstream's replies on that
//! socket belong to exactly this client). Datagrams that arrive while the
//! socket is being opened wait (bounded); the session ends on idle timeout
//! (refreshed by traffic either way), ICMP port unreachable, max_responses, or
//! an error, and is freed only once every completion naming it is back.
//!
//! A drain (SIGTERM) ends at once every session that owes its client no
//! reply, and lets the others run until they have been quiet for
//! [`DRAIN_GRACE_MS`]: an idle session must not hold a stop for
//! `drain_timeout`, but an answer on its way should still reach its client.

use std::collections::VecDeque;

use super::{DatagramEvent, DropReason, Payload, SessionEnd, SessionOp};
use crate::stats::{Counter, Counters};
use crate::time::Millis;

/// While draining, a session still owed a reply ends once no datagram has
/// moved either way for this long (counted from the later of its last
/// datagram and the start of the drain). One second is well above the time a
/// request/response upstream takes to answer — a DNS resolver answers from
/// cache in under a millisecond and a full recursion in tens to hundreds —
/// so an answer on its way is delivered, while a stop is held no more than
/// a second past the last datagram rather than for `drain_timeout` (30 s) or
/// `idle_timeout` (60 s). A client still talking keeps its session until
/// `drain_timeout`, as a TCP connection does.
pub const DRAIN_GRACE_MS: Millis = 1000;

#[derive(Clone, Copy, Debug)]
pub struct SessionConfig {
    pub idle_ms: Millis,
    /// Replies expected per client datagram; the session ends once every
    /// forwarded datagram has had them (NGINX's `proxy_responses`).
    pub max_responses: Option<u32>,
    /// Datagrams one session may have waiting or in flight, per direction.
    pub cap: u32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    Opening,
    Ready,
    Closing,
}

/// Who sent the session's last datagram: without `max_responses` the only
/// sign of whether the client still waits for an answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum LastWord {
    Client,
    Upstream,
}

/// Whether the session's upstream has answered yet (conntrack's "assured"):
/// a session that has only ever seen client datagrams may be a spoofed source
/// and can be evicted to admit a new client when the table is full.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Standing {
    Embryonic,
    Assured,
}

/// Serving normally, or draining since a time (see [`DRAIN_GRACE_MS`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Life {
    Serving,
    Draining { since: Millis },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Recv {
    Stopped,
    Armed,
    Starved,
    Ended,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Sock {
    /// The socket operation is in flight (or failed).
    Absent,
    Open,
    /// Closing; waiting for the operations that use the socket to come back.
    Doomed,
    CloseInFlight,
    Closed,
}

#[derive(Debug)]
pub struct Session {
    cfg: SessionConfig,
    phase: Phase,
    sock: Sock,
    recv: Recv,
    /// Operations in flight that use the upstream socket.
    fd_ops: u32,
    cancel_sent: bool,
    /// Every operation whose final completion has not arrived.
    inflight: u32,
    pending: VecDeque<Payload>,
    up_sends: u32,
    reply_sends: u32,
    /// Client datagrams taken for forwarding (waiting, in flight or sent),
    /// less those whose send failed: each is owed `max_responses` replies.
    requests: u32,
    responses: u32,
    last_activity: Millis,
    last_word: LastWord,
    standing: Standing,
    life: Life,
    end: Option<SessionEnd>,
    last_errno: Option<i32>,
    started: Millis,
    /// What this session forwarded, for its access log line.
    moved: Moved,
}

/// Datagrams and payload bytes a session forwarded each way.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Moved {
    pub datagrams_c2u: u64,
    pub bytes_c2u: u64,
    pub datagrams_u2c: u64,
    pub bytes_u2c: u64,
}

impl Session {
    pub fn new(cfg: SessionConfig, now: Millis) -> Session {
        Session {
            cfg,
            phase: Phase::Opening,
            sock: Sock::Absent,
            recv: Recv::Stopped,
            fd_ops: 0,
            cancel_sent: false,
            inflight: 0,
            pending: VecDeque::new(),
            up_sends: 0,
            reply_sends: 0,
            requests: 0,
            responses: 0,
            last_activity: now,
            last_word: LastWord::Client,
            standing: Standing::Embryonic,
            life: Life::Serving,
            end: None,
            last_errno: None,
            started: now,
            moved: Moved::default(),
        }
    }

    /// When the session began.
    pub fn started(&self) -> Millis {
        self.started
    }

    /// What it forwarded so far.
    pub fn moved(&self) -> Moved {
        self.moved
    }

    pub fn standing(&self) -> Standing {
        self.standing
    }

    /// Not yet answered by its upstream and not ending: a candidate for
    /// eviction when a new client needs its place.
    pub fn is_embryonic(&self) -> bool {
        self.standing == Standing::Embryonic && self.phase != Phase::Closing
    }

    /// Whether the client still waits for an answer: with `max_responses`,
    /// a forwarded datagram lacks its replies; without it, the client sent
    /// the last datagram.
    pub fn owes_reply(&self) -> bool {
        match self.cfg.max_responses {
            Some(m) => u64::from(self.responses) < u64::from(m) * u64::from(self.requests),
            None => self.last_word == LastWord::Client,
        }
    }

    pub fn end(&self) -> Option<SessionEnd> {
        self.end
    }

    pub fn last_errno(&self) -> Option<i32> {
        self.last_errno
    }

    pub fn is_closing(&self) -> bool {
        self.phase == Phase::Closing
    }

    pub fn is_finished(&self) -> bool {
        self.phase == Phase::Closing
            && self.inflight == 0
            && matches!(self.sock, Sock::Absent | Sock::Closed)
    }

    pub fn inflight(&self) -> u32 {
        self.inflight
    }

    /// When `handle_timeout` must next be called.
    pub fn deadline(&self) -> Option<Millis> {
        match self.phase {
            Phase::Opening | Phase::Ready => {
                let idle = self.last_activity.saturating_add(self.cfg.idle_ms);
                Some(self.drain_deadline().map_or(idle, |d| d.min(idle)))
            }
            Phase::Closing => None,
        }
    }

    /// While draining: when the session has been quiet for the grace.
    fn drain_deadline(&self) -> Option<Millis> {
        match self.life {
            Life::Serving => None,
            Life::Draining { since } => {
                Some(self.last_activity.max(since).saturating_add(DRAIN_GRACE_MS))
            }
        }
    }

    /// The shard started draining at `now`: a session that owes no reply ends
    /// at once; the others get until they are quiet for [`DRAIN_GRACE_MS`].
    pub fn handle_drain(&mut self, now: Millis, out: &mut Vec<SessionOp>) {
        if self.phase == Phase::Closing || self.life != Life::Serving {
            return;
        }
        self.life = Life::Draining { since: now };
        if !self.owes_reply() {
            self.begin_close(SessionEnd::Drained, out);
        }
    }

    pub fn start(&mut self, out: &mut Vec<SessionOp>) {
        self.inflight += 1;
        out.push(SessionOp::OpenSocket);
    }

    fn send_up(&mut self, p: Payload, out: &mut Vec<SessionOp>) {
        self.inflight += 1;
        self.fd_ops += 1;
        self.up_sends += 1;
        out.push(SessionOp::SendUp(p));
    }

    fn arm(&mut self, out: &mut Vec<SessionOp>) {
        if self.recv == Recv::Stopped && self.phase == Phase::Ready {
            self.recv = Recv::Armed;
            self.inflight += 1;
            self.fd_ops += 1;
            out.push(SessionOp::ArmRecv);
        }
    }

    /// A datagram from the client (the engine routes only to sessions not closing).
    pub fn handle_client_datagram(
        &mut self,
        p: Payload,
        now: Millis,
        out: &mut Vec<SessionOp>,
        stats: &mut Counters,
    ) {
        let cap = self.cfg.cap as usize;
        match self.phase {
            Phase::Opening if self.pending.len() < cap => {
                self.last_activity = now;
                self.last_word = LastWord::Client;
                self.requests += 1;
                self.pending.push_back(p);
            }
            Phase::Ready if (self.up_sends as usize) < cap => {
                self.last_activity = now;
                self.last_word = LastWord::Client;
                self.requests += 1;
                self.send_up(p, out);
            }
            Phase::Opening | Phase::Ready | Phase::Closing => {
                stats.udp_drop(DropReason::Backlog);
                out.push(SessionOp::Release(p.bid));
            }
        }
    }

    pub fn handle_socket(&mut self, res: Result<(), i32>, out: &mut Vec<SessionOp>) {
        self.inflight = self.inflight.saturating_sub(1);
        match res {
            Ok(()) => {
                self.sock = Sock::Open;
                if self.phase == Phase::Closing {
                    self.doom(out);
                    return;
                }
                self.inflight += 1;
                self.fd_ops += 1;
                out.push(SessionOp::Connect);
            }
            Err(e) => {
                self.last_errno = Some(e);
                self.begin_close(SessionEnd::Error, out);
            }
        }
    }

    pub fn handle_connect(&mut self, res: Result<(), i32>, now: Millis, out: &mut Vec<SessionOp>) {
        self.inflight = self.inflight.saturating_sub(1);
        self.fd_ops = self.fd_ops.saturating_sub(1);
        if self.phase == Phase::Closing {
            self.after(out);
            return;
        }
        match res {
            Ok(()) => {
                self.phase = Phase::Ready;
                self.last_activity = now;
                self.arm(out);
                while let Some(p) = self.pending.pop_front() {
                    self.send_up(p, out);
                }
            }
            Err(e) => {
                self.last_errno = Some(e);
                self.begin_close(SessionEnd::Error, out);
            }
        }
    }

    /// A recvmsg completion on the upstream socket; `more` is IORING_CQE_F_MORE.
    pub fn handle_upstream_recv(
        &mut self,
        ev: DatagramEvent,
        more: bool,
        now: Millis,
        out: &mut Vec<SessionOp>,
        stats: &mut Counters,
    ) {
        if !more {
            self.inflight = self.inflight.saturating_sub(1);
            self.fd_ops = self.fd_ops.saturating_sub(1);
            self.recv = Recv::Stopped;
        }
        let closing = self.phase == Phase::Closing;
        if matches!(ev, DatagramEvent::Data(_) | DatagramEvent::Truncated { .. }) {
            // Only the upstream can reach a connected socket: it answered.
            self.standing = Standing::Assured;
        }
        match ev {
            DatagramEvent::Data(p) => {
                if closing {
                    stats.udp_drop(DropReason::Late);
                    out.push(SessionOp::Release(p.bid));
                } else if self.reply_sends < self.cfg.cap {
                    self.last_activity = now;
                    self.last_word = LastWord::Upstream;
                    self.inflight += 1;
                    self.reply_sends += 1;
                    out.push(SessionOp::SendClient(p));
                    self.responses += 1;
                    self.end_if_answered(out);
                } else {
                    stats.udp_drop(DropReason::Backlog);
                    out.push(SessionOp::Release(p.bid));
                }
            }
            DatagramEvent::Truncated { bid } => {
                stats.udp_drop(DropReason::Truncated);
                out.push(SessionOp::Release(bid));
            }
            DatagramEvent::NoBuffers => {
                stats.inc(Counter::UdpEnobufs);
                if !closing {
                    self.recv = Recv::Starved;
                    out.push(SessionOp::Starved);
                }
            }
            DatagramEvent::Cancelled => {}
            DatagramEvent::Error(e) => {
                self.last_errno = Some(e);
                let end = if e == libc::ECONNREFUSED {
                    SessionEnd::Refused
                } else {
                    SessionEnd::Error
                };
                self.begin_close(end, out);
            }
        }
        if self.phase == Phase::Closing {
            if !more {
                // Still Armed while the kernel holds it: `after` cancels it.
                self.recv = Recv::Ended;
            }
            self.after(out);
        } else if !more {
            self.arm(out);
        }
    }

    /// A send to the upstream completed (its buffer `bid` goes back either way).
    pub fn handle_sent_up(
        &mut self,
        bid: u16,
        res: Result<u32, i32>,
        out: &mut Vec<SessionOp>,
        stats: &mut Counters,
    ) {
        self.inflight = self.inflight.saturating_sub(1);
        self.fd_ops = self.fd_ops.saturating_sub(1);
        self.up_sends = self.up_sends.saturating_sub(1);
        out.push(SessionOp::Release(bid));
        match res {
            Ok(n) => {
                stats.inc(Counter::UdpDatagramsC2u);
                self.moved.datagrams_c2u += 1;
                self.moved.bytes_c2u += u64::from(n);
                stats.add(Counter::UdpBytesC2u, u64::from(n));
            }
            Err(libc::ECANCELED) if self.phase == Phase::Closing => {}
            Err(libc::ECONNREFUSED) => {
                self.last_errno = Some(libc::ECONNREFUSED);
                self.begin_close(SessionEnd::Refused, out);
            }
            Err(e) => {
                self.last_errno = Some(e);
                stats.udp_drop(DropReason::SendError);
                // No reply is owed for a datagram the upstream never got.
                self.requests = self.requests.saturating_sub(1);
                self.end_if_answered(out);
            }
        }
        self.after(out);
    }

    /// With `max_responses`: ends the session once every forwarded client
    /// datagram has had its replies. Counting per request, as NGINX does
    /// (`responses >= proxy_responses * requests`), matters for clients that
    /// send several queries from one socket before the first answer — a stub
    /// resolver's A and AAAA — whose later answers would otherwise be dropped.
    fn end_if_answered(&mut self, out: &mut Vec<SessionOp>) {
        let Some(m) = self.cfg.max_responses else {
            return;
        };
        if self.responses > 0
            && u64::from(self.responses) >= u64::from(m) * u64::from(self.requests)
        {
            self.begin_close(SessionEnd::Responses, out);
        }
    }

    /// A reply to the client completed (its buffer `bid` goes back either way).
    pub fn handle_sent_client(
        &mut self,
        bid: u16,
        res: Result<u32, i32>,
        out: &mut Vec<SessionOp>,
        stats: &mut Counters,
    ) {
        self.inflight = self.inflight.saturating_sub(1);
        self.reply_sends = self.reply_sends.saturating_sub(1);
        out.push(SessionOp::Release(bid));
        match res {
            Ok(n) => {
                stats.inc(Counter::UdpDatagramsU2c);
                self.moved.datagrams_u2c += 1;
                self.moved.bytes_u2c += u64::from(n);
                stats.add(Counter::UdpBytesU2c, u64::from(n));
            }
            Err(e) => {
                self.last_errno = Some(e);
                stats.udp_drop(DropReason::SendError);
            }
        }
        self.after(out);
    }

    pub fn handle_cancel(&mut self, out: &mut Vec<SessionOp>) {
        self.inflight = self.inflight.saturating_sub(1);
        self.after(out);
    }

    pub fn handle_close(&mut self) {
        self.inflight = self.inflight.saturating_sub(1);
        self.sock = Sock::Closed;
    }

    /// Datagram buffers returned: a starved upstream receive retries.
    pub fn handle_buffers(&mut self, out: &mut Vec<SessionOp>) {
        if self.recv == Recv::Starved {
            self.recv = Recv::Stopped;
            self.arm(out);
        }
    }

    pub fn handle_timeout(&mut self, now: Millis, out: &mut Vec<SessionOp>) {
        if self.phase == Phase::Closing {
            return;
        }
        if self.last_activity.saturating_add(self.cfg.idle_ms) <= now {
            self.begin_close(SessionEnd::Idle, out);
        } else if self.drain_deadline().is_some_and(|d| d <= now) {
            self.begin_close(SessionEnd::Drained, out);
        }
    }

    pub fn abort(&mut self, end: SessionEnd, out: &mut Vec<SessionOp>) {
        self.begin_close(end, out);
    }

    fn begin_close(&mut self, end: SessionEnd, out: &mut Vec<SessionOp>) {
        if self.phase == Phase::Closing {
            return;
        }
        self.phase = Phase::Closing;
        self.end = Some(end);
        while let Some(p) = self.pending.pop_front() {
            out.push(SessionOp::Release(p.bid));
        }
        if self.sock == Sock::Open {
            self.doom(out);
        }
    }

    fn doom(&mut self, out: &mut Vec<SessionOp>) {
        self.sock = Sock::Doomed;
        self.after(out);
    }

    /// While closing: cancel the armed receive, close the socket once
    /// nothing uses it (sends and connect complete by themselves).
    fn after(&mut self, out: &mut Vec<SessionOp>) {
        if self.sock != Sock::Doomed {
            return;
        }
        if self.fd_ops == 0 {
            self.sock = Sock::CloseInFlight;
            self.inflight += 1;
            out.push(SessionOp::Close);
        } else if self.recv == Recv::Armed && !self.cancel_sent {
            self.cancel_sent = true;
            self.inflight += 1;
            out.push(SessionOp::CancelRecv);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(max_responses: Option<u32>) -> SessionConfig {
        SessionConfig {
            idle_ms: 1000,
            max_responses,
            cap: 2,
        }
    }

    fn p(bid: u16) -> Payload {
        Payload {
            bid,
            offset: 44,
            len: 10,
        }
    }

    /// Opens a session up to Ready, returning it and the ops it asked for.
    fn ready(max_responses: Option<u32>) -> (Session, Counters) {
        let mut s = Session::new(cfg(max_responses), 0);
        let mut out = Vec::new();
        let mut st = Counters::default();
        s.start(&mut out);
        s.handle_client_datagram(p(1), 0, &mut out, &mut st);
        s.handle_socket(Ok(()), &mut out);
        s.handle_connect(Ok(()), 0, &mut out);
        assert_eq!(
            out,
            vec![
                SessionOp::OpenSocket,
                SessionOp::Connect,
                SessionOp::ArmRecv,
                SessionOp::SendUp(p(1)),
            ]
        );
        (s, st)
    }

    #[test]
    fn datagrams_wait_for_the_socket_and_the_wait_is_bounded() {
        let mut s = Session::new(cfg(None), 0);
        let mut out = Vec::new();
        let mut st = Counters::default();
        s.start(&mut out);
        for bid in 1..=3 {
            s.handle_client_datagram(p(bid), 0, &mut out, &mut st);
        }
        assert_eq!(st.udp_drops_for(DropReason::Backlog), 1, "cap is 2");
        assert_eq!(out.last(), Some(&SessionOp::Release(3)));
    }

    #[test]
    fn max_responses_ends_the_session_after_the_reply_is_sent() {
        let (mut s, mut st) = ready(Some(1));
        let mut out = Vec::new();
        s.handle_sent_up(1, Ok(10), &mut out, &mut st);
        s.handle_upstream_recv(DatagramEvent::Data(p(2)), true, 5, &mut out, &mut st);
        assert_eq!(s.end(), Some(SessionEnd::Responses));
        assert!(out.contains(&SessionOp::SendClient(p(2))));
        assert!(
            out.contains(&SessionOp::CancelRecv),
            "the armed receive is cancelled first"
        );
        assert!(!s.is_finished());
        out.clear();
        // A reply nobody asked for, before the cancel lands: dropped, counted.
        s.handle_upstream_recv(DatagramEvent::Data(p(7)), true, 5, &mut out, &mut st);
        assert_eq!(out, vec![SessionOp::Release(7)]);
        assert_eq!(st.udp_drops_for(DropReason::Late), 1);
        out.clear();
        s.handle_upstream_recv(DatagramEvent::Cancelled, false, 6, &mut out, &mut st);
        s.handle_cancel(&mut out);
        assert_eq!(out, vec![SessionOp::Close]);
        s.handle_close();
        assert!(!s.is_finished(), "the reply is still in flight");
        s.handle_sent_client(2, Ok(10), &mut out, &mut st);
        assert!(s.is_finished());
        assert_eq!(st.get(Counter::UdpDatagramsU2c), 1);
    }

    #[test]
    fn max_responses_counts_per_request_so_a_second_query_gets_its_answer() {
        // A stub resolver asks A and AAAA from one socket before either answer.
        let (mut s, mut st) = ready(Some(1));
        let mut out = Vec::new();
        s.handle_client_datagram(p(2), 1, &mut out, &mut st);
        s.handle_sent_up(1, Ok(10), &mut out, &mut st);
        s.handle_sent_up(2, Ok(10), &mut out, &mut st);
        out.clear();
        s.handle_upstream_recv(DatagramEvent::Data(p(3)), true, 2, &mut out, &mut st);
        assert_eq!(out, vec![SessionOp::SendClient(p(3))]);
        assert_eq!(s.end(), None, "one of two answers is back");
        s.handle_upstream_recv(DatagramEvent::Data(p(4)), true, 3, &mut out, &mut st);
        assert!(out.contains(&SessionOp::SendClient(p(4))));
        assert_eq!(s.end(), Some(SessionEnd::Responses));
    }

    #[test]
    fn a_failed_send_owes_no_reply() {
        let (mut s, mut st) = ready(Some(1));
        let mut out = Vec::new();
        s.handle_client_datagram(p(2), 1, &mut out, &mut st);
        s.handle_sent_up(1, Ok(10), &mut out, &mut st);
        s.handle_upstream_recv(DatagramEvent::Data(p(3)), true, 2, &mut out, &mut st);
        assert_eq!(s.end(), None);
        s.handle_sent_up(2, Err(libc::EMSGSIZE), &mut out, &mut st);
        assert_eq!(
            s.end(),
            Some(SessionEnd::Responses),
            "the one answer owed is back"
        );
        assert_eq!(st.udp_drops_for(DropReason::SendError), 1);
    }

    #[test]
    fn icmp_refused_ends_the_session() {
        let (mut s, mut st) = ready(None);
        let mut out = Vec::new();
        s.handle_upstream_recv(
            DatagramEvent::Error(libc::ECONNREFUSED),
            false,
            1,
            &mut out,
            &mut st,
        );
        assert_eq!(s.end(), Some(SessionEnd::Refused));
        assert_eq!(
            out,
            vec![],
            "the receive has ended and a send needs no cancel: wait for it"
        );
        s.handle_sent_up(1, Ok(10), &mut out, &mut st);
        assert_eq!(out, vec![SessionOp::Release(1), SessionOp::Close]);
    }

    #[test]
    fn a_session_ending_on_a_reply_cancels_its_armed_receive_by_itself() {
        // The reply that satisfies max_responses comes with the multishot
        // receive still armed (IORING_CQE_F_MORE): it must be cancelled, or
        // the socket would never close.
        let (mut s, mut st) = ready(Some(1));
        let mut out = Vec::new();
        s.handle_sent_up(1, Ok(10), &mut out, &mut st);
        out.clear();
        s.handle_upstream_recv(DatagramEvent::Data(p(2)), true, 5, &mut out, &mut st);
        assert_eq!(
            out,
            vec![SessionOp::SendClient(p(2)), SessionOp::CancelRecv]
        );
        out.clear();
        s.handle_upstream_recv(DatagramEvent::Cancelled, false, 6, &mut out, &mut st);
        assert_eq!(
            out,
            vec![SessionOp::Close],
            "closed once the receive is back"
        );
        out.clear();
        s.handle_cancel(&mut out);
        s.handle_close();
        s.handle_sent_client(2, Ok(10), &mut out, &mut st);
        assert!(s.is_finished());
    }

    #[test]
    fn traffic_either_way_refreshes_the_idle_deadline() {
        let (mut s, mut st) = ready(None);
        let mut out = Vec::new();
        assert_eq!(s.deadline(), Some(1000));
        s.handle_upstream_recv(DatagramEvent::Data(p(5)), true, 700, &mut out, &mut st);
        assert_eq!(s.deadline(), Some(1700), "a reply refreshes it");
        s.handle_timeout(1699, &mut out);
        assert_eq!(s.end(), None);
        s.handle_timeout(1700, &mut out);
        assert_eq!(s.end(), Some(SessionEnd::Idle));
    }

    /// A session Ready with a long idle timeout, so only the drain rule ends it.
    fn ready_long(max_responses: Option<u32>) -> (Session, Counters) {
        let (mut s, st) = ready(max_responses);
        s.cfg.idle_ms = 60_000;
        (s, st)
    }

    #[test]
    fn a_drain_ends_at_once_a_session_that_owes_no_reply() {
        let (mut s, mut st) = ready_long(None);
        let mut out = Vec::new();
        s.handle_sent_up(1, Ok(10), &mut out, &mut st);
        s.handle_upstream_recv(DatagramEvent::Data(p(2)), true, 5, &mut out, &mut st);
        assert!(!s.owes_reply(), "the upstream spoke last");
        out.clear();
        s.handle_drain(10, &mut out);
        assert_eq!(s.end(), Some(SessionEnd::Drained));
        assert!(s.is_closing());
    }

    #[test]
    fn a_drain_waits_for_an_owed_reply_then_ends_once_quiet_for_the_grace() {
        let (mut s, mut st) = ready_long(None);
        let mut out = Vec::new();
        s.handle_sent_up(1, Ok(10), &mut out, &mut st);
        assert!(s.owes_reply(), "the client spoke last");
        s.handle_drain(100, &mut out);
        assert_eq!(s.end(), None, "its answer may be on the way");
        assert_eq!(
            s.deadline(),
            Some(100 + DRAIN_GRACE_MS),
            "quiet since the drain began, not the idle timeout"
        );
        s.handle_upstream_recv(DatagramEvent::Data(p(2)), true, 500, &mut out, &mut st);
        assert!(out.contains(&SessionOp::SendClient(p(2))), "delivered");
        assert_eq!(s.deadline(), Some(500 + DRAIN_GRACE_MS));
        s.handle_timeout(500 + DRAIN_GRACE_MS - 1, &mut out);
        assert_eq!(s.end(), None);
        s.handle_timeout(500 + DRAIN_GRACE_MS, &mut out);
        assert_eq!(s.end(), Some(SessionEnd::Drained));
    }

    #[test]
    fn a_drain_never_outlasts_the_grace_for_a_session_long_silent() {
        // The client asked long ago and the upstream never answered.
        let (mut s, mut st) = ready_long(None);
        let mut out = Vec::new();
        s.handle_sent_up(1, Ok(10), &mut out, &mut st);
        s.handle_drain(30_000, &mut out);
        assert_eq!(s.deadline(), Some(30_000 + DRAIN_GRACE_MS));
        s.handle_timeout(30_000 + DRAIN_GRACE_MS, &mut out);
        assert_eq!(s.end(), Some(SessionEnd::Drained));
    }

    #[test]
    fn with_max_responses_a_drain_waits_for_exactly_the_replies_owed() {
        let (mut s, mut st) = ready_long(Some(1));
        let mut out = Vec::new();
        s.handle_sent_up(1, Ok(10), &mut out, &mut st);
        s.handle_drain(10, &mut out);
        assert_eq!(s.end(), None, "one reply owed");
        s.handle_upstream_recv(DatagramEvent::Data(p(2)), true, 20, &mut out, &mut st);
        assert_eq!(s.end(), Some(SessionEnd::Responses));

        // A datagram whose send failed is owed nothing.
        let (mut s, mut st) = ready_long(Some(1));
        s.handle_sent_up(1, Err(libc::EMSGSIZE), &mut out, &mut st);
        assert!(!s.owes_reply());
        s.handle_drain(10, &mut out);
        assert_eq!(s.end(), Some(SessionEnd::Drained));
    }

    #[test]
    fn a_session_is_embryonic_until_its_upstream_answers() {
        let (mut s, mut st) = ready(None);
        let mut out = Vec::new();
        assert!(s.is_embryonic());
        s.handle_client_datagram(p(3), 1, &mut out, &mut st);
        assert!(s.is_embryonic(), "client datagrams prove nothing");
        s.handle_upstream_recv(DatagramEvent::Data(p(4)), true, 2, &mut out, &mut st);
        assert_eq!(s.standing(), Standing::Assured);
        assert!(!s.is_embryonic());

        let (mut s, _) = ready(None);
        s.abort(SessionEnd::Evicted, &mut out);
        assert!(!s.is_embryonic(), "an ending session is no candidate");
        assert_eq!(s.end(), Some(SessionEnd::Evicted));
    }

    #[test]
    fn truncated_datagrams_are_dropped_not_forwarded() {
        let (mut s, mut st) = ready(None);
        let mut out = Vec::new();
        s.handle_upstream_recv(
            DatagramEvent::Truncated { bid: 9 },
            true,
            1,
            &mut out,
            &mut st,
        );
        assert_eq!(out, vec![SessionOp::Release(9)]);
        assert_eq!(st.udp_drops_for(DropReason::Truncated), 1);
    }

    #[test]
    fn a_starved_receive_rearms_when_buffers_return() {
        let (mut s, mut st) = ready(None);
        let mut out = Vec::new();
        s.handle_upstream_recv(DatagramEvent::NoBuffers, false, 1, &mut out, &mut st);
        assert_eq!(out, vec![SessionOp::Starved]);
        out.clear();
        s.handle_buffers(&mut out);
        assert_eq!(out, vec![SessionOp::ArmRecv]);
        assert_eq!(st.get(Counter::UdpEnobufs), 1);
    }
}
