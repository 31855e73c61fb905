//! A TCP connection as the shard keeps it: its state machine (a relay or one
//! of the built-in servers), its sockets, its in-flight accounting and its
//! listener. This is the one place that dispatches over the kinds: every
//! completion is accounted here (`Lifecycle::complete`) before the state
//! machine sees it, so no state machine counts its own completions.

use crate::shard::ops::{Fd, recv_event, result, unit};
use crate::shard::token::OpKind;
use crate::stats::CloseReason;
use crate::tcp::cx::Cx;
use crate::tcp::echo::Echo;
use crate::tcp::lifecycle::{Done, Lifecycle};
use crate::tcp::relay::{Ends, Relay};
use crate::tcp::serve::Server;
use crate::tcp::splice::{PipeId, SpliceEnd};
use crate::tcp::{FrontRead, Side};
use crate::time::Millis;
use crate::upstream::Target;
use std::net::SocketAddr;

/// What a connection runs. Not boxed: connections live in a slab whose
/// slots are sized by the largest kind anyway, and a box would cost an
/// allocation per accepted connection.
#[allow(clippy::large_enum_variant)]
pub(super) enum Logic {
    /// Forwarding to an upstream.
    Relay(Relay),
    /// The built-in echo server.
    Echo(Echo),
    /// The built-in sink, source or request/response server.
    Serve(Server),
}

/// What the access log says about a forwarded connection beyond its close.
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct Seen<'a> {
    /// The client a trusted PROXY header named.
    pub proxied: Option<SocketAddr>,
    pub sni: Option<&'a str>,
    /// The upstream reached (a connect succeeded).
    pub upstream: Option<SocketAddr>,
    pub connect_ms: Option<u64>,
    /// Where the client asked to go (forward proxies, transparent).
    pub destination: Option<&'a crate::front::Destination>,
    /// The user it authenticated as.
    pub user: Option<&'a str>,
}

/// What a closed connection leaves for its close log line and counters.
pub(super) struct Closed {
    pub reason: CloseReason,
    pub errno: Option<i32>,
    pub target: Option<Target>,
    /// Bytes delivered (client→upstream, upstream→client).
    pub bytes: (u64, u64),
}

pub(super) struct Conn {
    pub logic: Logic,
    /// The client's and the upstream's socket, while open.
    pub fds: [Option<Fd>; 2],
    pub life: Lifecycle,
    pub listener: u32,
    /// Its entries in the shard's timer wheel.
    pub timer: ConnTimer,
    pub accepted_at: Millis,
    /// The route its targets come from, chosen at its first target request
    /// (the listener's, or an SNI route's).
    pub route: Option<u16>,
    /// The upstream whose balancer counts this connection as active: set
    /// when a target is taken, given back when the connection asks for its
    /// next target (that attempt failed) or closes.
    pub active_on: Option<crate::upstream::UpstreamId>,
    /// The accepted socket's own endpoints, when the listener reads them.
    pub ends: Ends,
}

/// A connection's entries in the shard's timer wheel, which has no
/// cancellation: an entry that no longer matches is ignored when it fires.
///
/// `at` is the entry that will call the connection; `later` a later entry
/// still in the wheel that an earlier deadline superseded. The next deadline
/// at or after `later` reuses it instead of inserting another. Without it, a
/// `bandwidth_limit`ed direction, which pauses every few milliseconds, left
/// one superseded idle-timeout entry in the wheel per pause, each living for
/// the whole `idle_timeout` (hundreds of thousands per connection).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(super) struct ConnTimer {
    at: Option<Millis>,
    later: Option<Millis>,
}

impl ConnTimer {
    /// The connection's next deadline is `d`: the deadline of the entry to
    /// insert, or `None` when one in the wheel already fires at or before it
    /// (an early call finds nothing due and schedules again).
    pub(super) fn schedule(&mut self, d: Millis) -> Option<Millis> {
        match (self.at, self.later) {
            (Some(t), _) if t <= d => None,
            (Some(t), later) => {
                // Keep the farthest: a superseded near entry (a pause) is
                // stale for milliseconds, a far one (idle) for minutes.
                self.later = Some(later.map_or(t, |l| l.max(t)));
                self.at = Some(d);
                Some(d)
            }
            (None, Some(l)) if l <= d => {
                self.at = Some(l);
                self.later = None;
                None
            }
            (None, _) => {
                self.at = Some(d);
                Some(d)
            }
        }
    }

    /// An entry fired: whether it is the one that calls the connection.
    pub(super) fn fired(&mut self, deadline: Millis) -> bool {
        if self.at == Some(deadline) {
            self.at = None;
            return true;
        }
        if self.later == Some(deadline) {
            self.later = None;
        }
        false
    }
}

/// How a completion of `kind` on `side` is accounted; `None` for a receive
/// that stays armed.
pub(super) fn done_of(kind: OpKind, side: Side, more: bool) -> Option<Done> {
    Some(match kind {
        OpKind::Recv if more => return None,
        OpKind::Recv | OpKind::Send | OpKind::Shutdown => Done::On(side),
        OpKind::FrontRecv => Done::On(Side::Client),
        OpKind::Connect => Done::On(Side::Upstream),
        OpKind::SpliceIn => Done::Splice(side, SpliceEnd::In),
        OpKind::SpliceOut => Done::Splice(side, SpliceEnd::Out),
        OpKind::Close => Done::Closed(side),
        _ => Done::Plain,
    })
}

impl Conn {
    pub(super) fn is_finished(&self) -> bool {
        let closing = match &self.logic {
            Logic::Relay(r) => r.is_closing(),
            Logic::Echo(e) => e.is_closing(),
            Logic::Serve(s) => s.is_closing(),
        };
        closing && self.life.finished()
    }

    pub(super) fn deadline(&self) -> Option<Millis> {
        match &self.logic {
            Logic::Relay(r) => r.deadline(),
            Logic::Echo(_) | Logic::Serve(_) => None,
        }
    }

    pub(super) fn closed(&self) -> Closed {
        let (reason, errno, target, bytes) = match &self.logic {
            Logic::Relay(r) => (r.reason(), r.last_errno(), r.target(), r.bytes()),
            Logic::Echo(e) => (e.reason(), None, None, (0, 0)),
            Logic::Serve(s) => (s.reason(), s.last_errno(), None, s.bytes()),
        };
        Closed {
            reason: reason.unwrap_or(CloseReason::Error),
            errno,
            target,
            bytes,
        }
    }
}

impl Logic {
    pub(super) fn start(&mut self, cx: &mut Cx<'_>) {
        match self {
            Logic::Relay(r) => r.start(cx),
            Logic::Echo(e) => e.start(cx),
            Logic::Serve(s) => s.start(cx),
        }
    }

    pub(super) fn handle(
        &mut self,
        kind: OpKind,
        side: Side,
        res: i32,
        flags: u32,
        cx: &mut Cx<'_>,
    ) -> Result<(), OpKind> {
        let more = flags & crate::shard::ops::CQE_F_MORE != 0;
        if let Some(done) = done_of(kind, side, more) {
            cx.life.complete(done);
        }
        let now = cx.now;
        if kind == OpKind::Recv {
            let ev = recv_event(res, flags);
            match self {
                Logic::Relay(r) => r.handle_recv(side, ev, more, now, cx),
                Logic::Echo(e) => e.handle_recv(ev, more, cx),
                Logic::Serve(s) => s.handle_recv(ev, more, cx),
            }
            return Ok(());
        }
        match (self, kind) {
            (_, OpKind::Close | OpKind::Discard) => {}
            (Logic::Relay(r), OpKind::Send) => r.handle_sent(side, result(res), now, cx),
            (Logic::Relay(r), OpKind::SpliceIn) => r.handle_splice_in(side, result(res), now, cx),
            (Logic::Relay(r), OpKind::SpliceOut) => r.handle_splice_out(side, result(res), now, cx),
            (Logic::Relay(r), OpKind::Socket) => r.handle_socket(unit(res), now, cx),
            (Logic::Relay(r), OpKind::Connect) => r.handle_connect(unit(res), now, cx),
            (Logic::Relay(r), OpKind::ConnectTimeout) => r.handle_connect_timeout(cx),
            (Logic::Relay(r), OpKind::Shutdown) => r.handle_shutdown(side, unit(res), cx),
            (Logic::Relay(r), OpKind::CancelRecv | OpKind::CancelAll | OpKind::CancelSplice) => {
                r.handle_cancel(cx)
            }
            (Logic::Echo(e), OpKind::Send) => e.handle_sent(result(res), cx),
            (Logic::Echo(e), OpKind::Shutdown) => e.handle_shutdown(unit(res), cx),
            (Logic::Echo(e), OpKind::CancelRecv | OpKind::CancelAll) => e.handle_cancel(cx),
            (Logic::Serve(s), OpKind::Send) => s.handle_sent(result(res), cx),
            (Logic::Serve(s), OpKind::Shutdown) => s.handle_shutdown(unit(res), cx),
            (Logic::Serve(s), OpKind::CancelRecv | OpKind::CancelAll) => s.handle_cancel(cx),
            (_, kind) => return Err(kind),
        }
        Ok(())
    }

    /// A front receive completed (the bytes are the shard's copy).
    pub(super) fn handle_front(&mut self, ev: FrontRead<'_>, cx: &mut Cx<'_>) {
        if let Logic::Relay(r) = self {
            r.handle_front(ev, cx);
        }
    }

    /// The relay's reply to its client from `offset`, copied for an owned send.
    pub(super) fn reply_from(&self, offset: u32) -> Option<Box<[u8]>> {
        match self {
            Logic::Relay(r) => Some(r.reply_from(offset).into()),
            Logic::Echo(_) | Logic::Serve(_) => None,
        }
    }

    /// Whether the relay wants its upstream socket's local address.
    pub(super) fn wants_bound(&self) -> bool {
        matches!(self, Logic::Relay(r) if r.wants_bound())
    }

    pub(super) fn set_bound(&mut self, local: Option<SocketAddr>) {
        if let Logic::Relay(r) = self {
            r.set_bound(local);
        }
    }

    /// What a relay's `ConnOp::Associate` asks for (see `Relay::association_ask`).
    pub(super) fn association_ask(&self) -> Option<crate::tcp::handshake::AssocAsk> {
        match self {
            Logic::Relay(r) => r.association_ask(),
            Logic::Echo(_) | Logic::Serve(_) => None,
        }
    }

    pub(super) fn handle_associated(&mut self, res: Result<SocketAddr, i32>, cx: &mut Cx<'_>) {
        if let Logic::Relay(r) = self {
            r.handle_associated(res, cx);
        }
    }

    pub(super) fn association_ended(&mut self, reason: crate::stats::CloseReason, cx: &mut Cx<'_>) {
        if let Logic::Relay(r) = self {
            r.association_ended(reason, cx);
        }
    }

    /// The name a relay asked the shard to resolve.
    pub(super) fn resolve_name(&self) -> Option<&str> {
        match self {
            Logic::Relay(r) => r.resolve_name(),
            Logic::Echo(_) | Logic::Serve(_) => None,
        }
    }

    /// The resolver's answer to `resolve_name`.
    pub(super) fn handle_resolved(
        &mut self,
        answer: Result<Vec<std::net::IpAddr>, crate::tcp::handshake::ResolveFail>,
        cx: &mut Cx<'_>,
    ) {
        if let Logic::Relay(r) = self {
            r.handle_resolved(answer, cx);
        }
    }

    /// The relay's preface from `offset`, copied for an owned send.
    pub(super) fn preface_from(&self, offset: u32) -> Option<Box<[u8]>> {
        match self {
            Logic::Relay(r) => Some(r.preface_from(offset).into()),
            Logic::Echo(_) | Logic::Serve(_) => None,
        }
    }

    /// The SNI the client asked for (a relay whose front read a ClientHello).
    pub(super) fn sni(&self) -> Option<&str> {
        match self {
            Logic::Relay(r) => r.sni(),
            Logic::Echo(_) | Logic::Serve(_) => None,
        }
    }

    /// Buffers came back to the ring: a starved receive on `side` retries.
    pub(super) fn handle_buffers(&mut self, side: Side, cx: &mut Cx<'_>) {
        match self {
            Logic::Relay(r) => r.handle_buffers(side, cx),
            Logic::Echo(e) => e.handle_buffers(cx),
            Logic::Serve(s) => s.handle_buffers(cx),
        }
    }

    pub(super) fn handle_timeout(&mut self, cx: &mut Cx<'_>) {
        if let Logic::Relay(r) = self {
            r.handle_timeout(cx.now, cx);
        }
    }

    pub(super) fn handle_pipe(
        &mut self,
        side: Side,
        grant: Option<PipeId>,
        cx: &mut Cx<'_>,
    ) -> Option<PipeId> {
        match self {
            Logic::Relay(r) => {
                r.handle_pipe(side, grant, cx.now, cx);
                None
            }
            Logic::Echo(_) | Logic::Serve(_) => grant,
        }
    }

    pub(super) fn handle_target(&mut self, target: Option<Target>, cx: &mut Cx<'_>) {
        if let Logic::Relay(r) = self {
            r.handle_target(target, cx);
        }
    }

    pub(super) fn abort(&mut self, reason: CloseReason, cx: &mut Cx<'_>) {
        match self {
            Logic::Relay(r) => r.abort(reason, cx),
            Logic::Echo(e) => e.abort(reason, cx),
            Logic::Serve(s) => s.abort(reason, cx),
        }
    }

    /// What the access log says beyond the close (empty for the built-in servers).
    pub(super) fn seen(&self) -> Seen<'_> {
        match self {
            Logic::Relay(r) => Seen {
                proxied: r.learnt().proxied.map(|(src, _)| src),
                sni: r.sni(),
                upstream: r.connected().then(|| r.target().map(|t| t.addr)).flatten(),
                connect_ms: r.connect_ms(),
                destination: r.destination(),
                user: r.learnt().user.as_deref(),
            },
            Logic::Echo(_) | Logic::Serve(_) => Seen::default(),
        }
    }

    /// The relay's walk through its balancer, if it forwards.
    pub(super) fn attempts(&mut self) -> Option<&mut crate::upstream::Attempts> {
        match self {
            Logic::Relay(r) => Some(r.attempts_mut()),
            Logic::Echo(_) | Logic::Serve(_) => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::ConnTimer;

    /// A wheel of (deadline) entries, fired in order up to `now`.
    struct Wheel {
        entries: Vec<u64>,
        inserted: usize,
    }

    impl Wheel {
        fn insert(&mut self, d: Option<u64>) {
            if let Some(d) = d {
                self.entries.push(d);
                self.inserted += 1;
            }
        }

        /// Fires what is due; true if the connection was called.
        fn advance(&mut self, now: u64, t: &mut ConnTimer) -> bool {
            self.entries.sort_unstable();
            let due = self.entries.partition_point(|&d| d <= now);
            let mut called = false;
            for d in self.entries.drain(..due).collect::<Vec<_>>() {
                called |= t.fired(d);
            }
            called
        }
    }

    #[test]
    fn pauses_reuse_the_idle_entry_instead_of_piling_up() {
        const IDLE: u64 = 600_000;
        let mut t = ConnTimer::default();
        let mut w = Wheel {
            entries: Vec::new(),
            inserted: 0,
        };
        w.insert(t.schedule(IDLE));
        // A limited direction: a 3 ms pause, then data, for a minute.
        let mut now = 0;
        for _ in 0..20_000 {
            let pause = now + 3;
            w.insert(t.schedule(pause));
            now = pause;
            assert!(
                w.advance(now, &mut t),
                "the pause's entry calls the connection"
            );
            // The idle deadline moved on with the data.
            w.insert(t.schedule(now + IDLE));
        }
        assert!(
            w.entries.len() <= 2,
            "{} entries left in the wheel",
            w.entries.len()
        );
        assert_eq!(w.inserted, 20_001, "one per pause, and the idle one once");
        // The idle entry still calls the connection at its time.
        assert!(w.advance(IDLE, &mut t));
    }

    #[test]
    fn the_earliest_deadline_always_has_an_entry() {
        let mut t = ConnTimer::default();
        assert_eq!(t.schedule(100), Some(100));
        assert_eq!(t.schedule(150), None, "covered by the entry at 100");
        assert_eq!(t.schedule(40), Some(40));
        assert!(t.fired(40));
        // 100 is still in the wheel and is at or before the next deadline.
        assert_eq!(t.schedule(120), None);
        assert!(!t.fired(40), "an entry fires once");
        assert!(t.fired(100));
        // Nothing left in the wheel for a deadline before it: insert.
        assert_eq!(t.schedule(90), Some(90));
        assert!(!t.fired(95), "an unknown entry is ignored");
    }
}
