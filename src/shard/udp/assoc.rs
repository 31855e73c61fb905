//! SOCKS5 UDP associations on the shard: each one's socket (created, bound
//! to the address its client reached, read with a multishot recvmsg), the
//! lowering of `udp::assoc`'s verdicts to datagram sends, the names its
//! datagrams ask the resolver for, its idle timer and its end. The TCP
//! service owns the control connection; the engine carries asks, answers
//! and ends between the two.

use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::SystemTime;

use tracing::{debug, info};

use super::{DatagramMeta, UdpService, UdpWaiter, session_cap};
use crate::accesslog::{AccessLogShard, AccessRecord, Proto as AccessProto};
use crate::config::forward::Refusal;
use crate::front::Destination;
use crate::front::socks5::{self, MAX_UDP_IP_HEADER};
use crate::shard::context::{Ctx, TimerKey};
use crate::shard::ops::{CQE_F_MORE, Family, Fd, Op, RecvTemplate, buffer_id};
use crate::shard::slab::{AssocId, ConnId, Slab};
use crate::shard::token::{OpKind, Token};
use crate::stats::{CloseReason, Counter, Counters, ListenerStats};
use crate::tcp::Side;
use crate::tcp::handshake::{AssocAsk, NamedSpec};
use crate::time::Millis;
use crate::udp::assoc::{Association, Inbound};
use crate::udp::{DropReason, Payload, SessionEnd};

/// Datagrams for names one association may hold while the resolver answers
/// (one lookup at a time; the resolver's cache answers repeats at once).
pub(super) const MAX_WAITING: usize = 8;

/// What the UDP service tells the TCP service about a connection's association.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AssocEvent {
    /// Open: its socket's address (the reply's BND).
    Bound(SocketAddr),
    /// Could not be opened (errno).
    Failed(i32),
    /// Ended on its own; the control connection closes under this reason.
    Ended(CloseReason),
}

/// Where an association's socket is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Stage {
    /// socket(2) in flight.
    Opening,
    /// bind(2) in flight.
    Binding(Fd),
    Open(Fd),
    /// Ended: waiting for its operations, then its close.
    Ending(Option<Fd>),
    /// close(2) in flight.
    Closing,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Recv {
    Off,
    Armed,
    /// The datagram ring ran dry; re-armed by `wake_udp_starved`.
    Starved,
    Cancelling,
}

/// A client datagram waiting for its destination name to resolve.
#[derive(Debug)]
struct Waiting {
    payload: Payload,
    name: String,
    port: u16,
}

struct AssocConn {
    conn: ConnId,
    assoc: Association,
    spec: Arc<NamedSpec>,
    /// Its listener's entry in `Assocs::stats`.
    stats: usize,
    local: IpAddr,
    bound: Option<SocketAddr>,
    stage: Stage,
    recv: Recv,
    /// Operations in flight (socket, bind, receive, sends, cancel, close).
    inflight: u32,
    /// Sends in flight (bounded like a session's backlog).
    sends: u32,
    waiting: VecDeque<Waiting>,
    /// The name the resolver is looking up for it.
    lookup: Option<String>,
    timer_at: Option<Millis>,
    end: Option<SessionEnd>,
    opened_at: Millis,
    /// For its access log line: the user, the last destination the client
    /// asked for (as it asked: a name or an address) and the last address
    /// a datagram went to, and what it relayed.
    user: Option<String>,
    asked: Option<Destination>,
    last_sent: Option<SocketAddr>,
    moved: Moved,
}

/// Datagrams and payload bytes an association relayed each way.
#[derive(Clone, Copy, Debug, Default)]
struct Moved {
    datagrams_c2u: u64,
    datagrams_u2c: u64,
    bytes_c2u: u64,
    bytes_u2c: u64,
}

/// Counters of one SOCKS5 listener's associations (merged with the
/// listener's TCP counters by name).
struct AssocStats {
    name: String,
    counters: Counters,
    active: u32,
}

/// The shard's associations.
#[derive(Default)]
pub(crate) struct Assocs {
    slab: Slab<AssocConn, AssocId>,
    by_conn: HashMap<ConnId, AssocId>,
    stats: Vec<AssocStats>,
    events: Vec<(ConnId, AssocEvent)>,
    lookups: Vec<(AssocId, String)>,
}

impl Assocs {
    pub(crate) fn is_empty(&self) -> bool {
        self.slab.is_empty()
    }

    fn stats_of(&mut self, name: &str) -> usize {
        match self.stats.iter().position(|s| s.name == name) {
            Some(i) => i,
            None => {
                self.stats.push(AssocStats {
                    name: name.to_owned(),
                    counters: Counters::default(),
                    active: 0,
                });
                self.stats.len() - 1
            }
        }
    }
}

fn assoc_token(kind: OpKind, id: AssocId) -> Token {
    Token::new(kind, Side::Client, id.0)
}

/// The control connection's close reason for an association's end.
fn close_reason(end: SessionEnd) -> CloseReason {
    match end {
        SessionEnd::Idle => CloseReason::IdleTimeout,
        SessionEnd::Shutdown | SessionEnd::Drained => CloseReason::Shutdown,
        _ => CloseReason::Error,
    }
}

impl UdpService {
    /// Opens the association connection `conn` asked for; the answer comes
    /// back through `take_assoc_events`.
    pub(crate) fn open_association(
        &mut self,
        ctx: &mut Ctx,
        conn: ConnId,
        ask: AssocAsk,
        now: Millis,
    ) {
        let refused = if self.dgram.total() == 0 {
            // A guard: `udp = true` gives the shards datagram buffers at
            // start, and a reload cannot add the first one.
            Some((
                libc::ENOBUFS,
                "this process has no datagram buffers (restart it to serve UDP ASSOCIATE)",
            ))
        } else if !ctx.fd_room(1) {
            Some((
                libc::EMFILE,
                "no descriptor left in this shard's budget (raise the open-file limit, see tuning.md)",
            ))
        } else {
            None
        };
        if let Some((errno, why)) = refused {
            if ctx.log.allow(now, ctx.shard) {
                info!(shard = ctx.shard, listener = %ask.listener, client = %ask.client, "UDP ASSOCIATE refused: {why}");
            }
            self.assocs.events.push((conn, AssocEvent::Failed(errno)));
            return;
        }
        let idle_ms = ask.spec.udp_idle_ms.unwrap_or(60_000);
        let stats = self.assocs.stats_of(&ask.listener);
        let a = AssocConn {
            conn,
            assoc: Association::new(ask.client, idle_ms, now),
            spec: ask.spec,
            stats,
            local: ask.local,
            bound: None,
            stage: Stage::Opening,
            recv: Recv::Off,
            inflight: 1,
            sends: 0,
            waiting: VecDeque::new(),
            lookup: None,
            timer_at: None,
            end: None,
            opened_at: now,
            user: ask.user,
            asked: None,
            last_sent: None,
            moved: Moved::default(),
        };
        let family = Family::of(SocketAddr::new(ask.local, 0));
        let Some(id) = self.assocs.slab.insert(a) else {
            self.assocs
                .events
                .push((conn, AssocEvent::Failed(libc::ENOMEM)));
            return;
        };
        self.assocs.by_conn.insert(conn, id);
        ctx.fds.sessions += 1;
        if let Some(s) = self.assocs.stats.get_mut(stats) {
            s.active += 1;
        }
        ctx.push(Op::UdpSocket {
            token: assoc_token(OpKind::AssocSocket, id).encode(),
            family,
        });
    }

    /// Connection `conn` was freed: its association ends (no telling back).
    pub(crate) fn end_association(&mut self, ctx: &mut Ctx, conn: ConnId, now: Millis) {
        if let Some(id) = self.assocs.by_conn.get(&conn).copied() {
            self.end_assoc(ctx, id, SessionEnd::ControlClosed, false, now);
        }
    }

    /// Answers for the TCP service since the last call.
    pub(crate) fn take_assoc_events(&mut self, out: &mut Vec<(ConnId, AssocEvent)>) {
        out.append(&mut self.assocs.events);
    }

    /// Names associations asked to resolve since the last call.
    pub(crate) fn take_assoc_lookups(&mut self, out: &mut Vec<(AssocId, String)>) {
        out.append(&mut self.assocs.lookups);
    }

    /// Whether the TCP service or the resolver has something to take.
    pub(crate) fn has_assoc_work(&self) -> bool {
        !self.assocs.events.is_empty() || !self.assocs.lookups.is_empty()
    }

    /// The counters of every SOCKS5 listener that had associations.
    pub(super) fn assoc_snapshot(&self, out: &mut Vec<ListenerStats>) {
        for s in &self.assocs.stats {
            let mut counters = s.counters.clone();
            counters.set(Counter::UdpSessionsActive, u64::from(s.active));
            out.push(ListenerStats {
                name: s.name.clone(),
                counters,
                ..Default::default()
            });
        }
    }

    /// Ends every association (shutdown).
    pub(super) fn stop_associations(&mut self, ctx: &mut Ctx, now: Millis) {
        let ids: Vec<AssocId> = self.assocs.by_conn.values().copied().collect();
        for id in ids {
            self.end_assoc(ctx, id, SessionEnd::Shutdown, true, now);
        }
    }

    fn assoc_counters(&mut self, id: AssocId) -> Option<&mut Counters> {
        let i = self.assocs.slab.get(id)?.stats;
        self.assocs.stats.get_mut(i).map(|s| &mut s.counters)
    }

    fn assoc_drop(&mut self, ctx: &mut Ctx, id: AssocId, why: DropReason, bid: u16) {
        if let Some(c) = self.assoc_counters(id) {
            c.udp_drop(why);
        }
        self.release_datagram(ctx, bid);
    }

    /// A completion of one of an association's operations (`bytes`: a
    /// receive's datagram, header included).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn on_assoc_cqe(
        &mut self,
        ctx: &mut Ctx,
        token: Token,
        res: i32,
        flags: u32,
        meta: Option<DatagramMeta>,
        bytes: Option<&[u8]>,
        now: Millis,
    ) {
        let id = AssocId(token.slot);
        let Some(a) = self.assocs.slab.get_mut(id) else {
            self.udp_stale(ctx, token, res, flags);
            return;
        };
        match token.kind {
            OpKind::AssocSocket => {
                a.inflight = a.inflight.saturating_sub(1);
                match (res >= 0, a.stage) {
                    (true, Stage::Opening) => {
                        let fd = Fd(res);
                        a.stage = Stage::Binding(fd);
                        a.inflight += 1;
                        ctx.push(Op::UdpBind {
                            token: assoc_token(OpKind::AssocBind, id).encode(),
                            fd,
                            addr: SocketAddr::new(a.local, 0),
                        });
                        return;
                    }
                    (true, _) => a.stage = Stage::Ending(Some(Fd(res))),
                    (false, _) => self.failed(ctx, id, -res, now),
                }
            }
            OpKind::AssocBind => {
                a.inflight = a.inflight.saturating_sub(1);
                match (res > 0, a.stage) {
                    (true, Stage::Binding(fd)) => {
                        let port = u16::try_from(res).unwrap_or(0);
                        let bound = SocketAddr::new(a.local, port);
                        a.bound = Some(bound);
                        a.stage = Stage::Open(fd);
                        let (conn, stats) = (a.conn, a.stats);
                        self.assocs.events.push((conn, AssocEvent::Bound(bound)));
                        if let Some(s) = self.assocs.stats.get_mut(stats) {
                            s.counters.inc(Counter::UdpSessionsCreated);
                        }
                        self.arm_assoc(ctx, id);
                    }
                    (true, _) => {}
                    (false, _) => self.failed(ctx, id, -res, now),
                }
            }
            OpKind::AssocRecv => self.assoc_recv(ctx, id, res, flags, meta, bytes, now),
            OpKind::AssocSend | OpKind::AssocReply => {
                a.inflight = a.inflight.saturating_sub(1);
                a.sends = a.sends.saturating_sub(1);
                self.release_datagram(ctx, token.aux);
                if res < 0
                    && let Some(c) = self.assoc_counters(id)
                {
                    c.udp_drop(DropReason::SendError);
                }
            }
            OpKind::AssocCancel => a.inflight = a.inflight.saturating_sub(1),
            OpKind::AssocClose => {
                a.inflight = a.inflight.saturating_sub(1);
                self.free_assoc(ctx, id, now);
                return;
            }
            _ => {}
        }
        self.after_assoc(ctx, id, now);
    }

    /// The association could not be opened: the client gets a failure reply.
    fn failed(&mut self, ctx: &mut Ctx, id: AssocId, errno: i32, now: Millis) {
        let Some(a) = self.assocs.slab.get_mut(id) else {
            return;
        };
        if a.end.is_none() && a.bound.is_none() {
            self.assocs.events.push((a.conn, AssocEvent::Failed(errno)));
            if ctx.log.allow(now, ctx.shard) {
                let error = std::io::Error::from_raw_os_error(errno);
                info!(shard = ctx.shard, local = %a.local, error = %error, "UDP ASSOCIATE failed: no socket could be bound to the address the client reached");
            }
            self.end_assoc(ctx, id, SessionEnd::Error, false, now);
        } else {
            self.end_assoc(ctx, id, SessionEnd::Error, true, now);
        }
    }

    fn arm_assoc(&mut self, ctx: &mut Ctx, id: AssocId) {
        let Some(a) = self.assocs.slab.get_mut(id) else {
            return;
        };
        let Stage::Open(fd) = a.stage else {
            return;
        };
        a.recv = Recv::Armed;
        a.inflight += 1;
        ctx.push(Op::UdpRecvMulti {
            token: assoc_token(OpKind::AssocRecv, id).encode(),
            fd,
            template: RecvTemplate::Association,
        });
    }

    /// Re-arms a starved association's receive (`wake_udp_starved`).
    pub(super) fn wake_assoc(&mut self, ctx: &mut Ctx, id: AssocId) -> bool {
        let starved = self
            .assocs
            .slab
            .get(id)
            .is_some_and(|a| a.recv == Recv::Starved && matches!(a.stage, Stage::Open(_)));
        if starved {
            self.arm_assoc(ctx, id);
        }
        starved
    }

    #[allow(clippy::too_many_arguments)]
    fn assoc_recv(
        &mut self,
        ctx: &mut Ctx,
        id: AssocId,
        res: i32,
        flags: u32,
        meta: Option<DatagramMeta>,
        bytes: Option<&[u8]>,
        now: Millis,
    ) {
        let more = flags & CQE_F_MORE != 0;
        let mut broken = None;
        match (res, buffer_id(flags)) {
            (r, Some(bid)) if r > 0 => {
                self.dgram.take();
                match (meta, bytes) {
                    (Some(m), Some(b)) if !m.truncated => match m.src {
                        Some(src) => self.assoc_datagram(ctx, id, src, m, b, bid, now),
                        None => self.release_datagram(ctx, bid),
                    },
                    _ => self.assoc_drop(ctx, id, DropReason::Truncated, bid),
                }
            }
            (r, bid) => {
                if let Some(bid) = bid {
                    self.dgram.take();
                    self.release_datagram(ctx, bid);
                }
                match -r {
                    libc::ENOBUFS => {
                        if let Some(a) = self.assocs.slab.get_mut(id) {
                            a.recv = Recv::Starved;
                            self.udp_starved.push_back(UdpWaiter::Assoc(id));
                        }
                        if let Some(c) = self.assoc_counters(id) {
                            c.inc(Counter::UdpEnobufs);
                        }
                    }
                    libc::ECANCELED => {}
                    e if r < 0 => broken = Some(e),
                    _ => {}
                }
            }
        }
        if more {
            return;
        }
        let Some(a) = self.assocs.slab.get_mut(id) else {
            return;
        };
        a.inflight = a.inflight.saturating_sub(1);
        match a.recv {
            Recv::Armed if broken.is_none() && a.end.is_none() => self.arm_assoc(ctx, id),
            Recv::Armed | Recv::Cancelling => a.recv = Recv::Off,
            Recv::Starved | Recv::Off => {}
        }
        if let Some(e) = broken {
            if ctx.log.allow(now, ctx.shard) {
                let error = std::io::Error::from_raw_os_error(e);
                info!(shard = ctx.shard, error = %error, "a UDP association's receive failed; the association and its control connection end");
            }
            self.end_assoc(ctx, id, SessionEnd::Error, true, now);
        }
    }

    /// One datagram on the association's socket, `bytes` being all of it.
    #[allow(clippy::too_many_arguments)]
    fn assoc_datagram(
        &mut self,
        ctx: &mut Ctx,
        id: AssocId,
        src: SocketAddr,
        m: DatagramMeta,
        bytes: &[u8],
        bid: u16,
        now: Millis,
    ) {
        let Some(a) = self.assocs.slab.get_mut(id) else {
            self.release_datagram(ctx, bid);
            return;
        };
        if a.end.is_some() {
            return self.assoc_drop(ctx, id, DropReason::Late, bid);
        }
        match a.assoc.classify(src, bytes, now) {
            Inbound::Drop(why) => self.assoc_drop(ctx, id, why, bid),
            Inbound::FromClient { dst, header } => {
                if a.asked.as_ref() != Some(&dst) {
                    a.asked = Some(dst.clone());
                }
                let payload = Payload {
                    bid,
                    offset: m.offset.saturating_add(header),
                    len: m.len.saturating_sub(header),
                };
                match dst {
                    Destination::Ip(addr) => self.send_to_destination(ctx, id, addr, payload),
                    Destination::Name(name, port) => {
                        self.wait_for_name(ctx, id, name, port, payload)
                    }
                }
            }
            Inbound::ToClient { to } => {
                let payload = Payload {
                    bid,
                    offset: m.offset,
                    len: m.len,
                };
                self.send_to_client(ctx, id, src, to, payload);
            }
        }
    }

    /// Why the client may not send to `dst`, if it may not: the listener's
    /// ports and destination policy, ringfwd's own listeners, and the
    /// association itself.
    fn refusal(&self, a: &AssocConn, dst: SocketAddr) -> Option<DropReason> {
        if !a.spec.policy.port_allowed(dst.port()) {
            return Some(DropReason::Denied);
        }
        match a.spec.check(dst) {
            Err(Refusal::Loop) => return Some(DropReason::Loop),
            Err(_) => return Some(DropReason::Denied),
            Ok(()) => {}
        }
        if a.assoc.loops(dst, a.bound) || self.is_own_udp(dst) {
            return Some(DropReason::Loop);
        }
        None
    }

    /// One of ringfwd's UDP listen addresses (a wildcard one on loopback).
    fn is_own_udp(&self, dst: SocketAddr) -> bool {
        let ip = dst.ip().to_canonical();
        self.udp_listeners.iter().any(|l| {
            let own = l.spec.listen;
            own.port() == dst.port()
                && (own.ip().to_canonical() == ip
                    || (own.ip().is_unspecified() && (ip.is_loopback() || ip.is_unspecified())))
        })
    }

    fn send_to_destination(&mut self, ctx: &mut Ctx, id: AssocId, dst: SocketAddr, p: Payload) {
        let Some(a) = self.assocs.slab.get(id) else {
            self.release_datagram(ctx, p.bid);
            return;
        };
        if let Some(why) = self.refusal(a, dst) {
            return self.assoc_drop(ctx, id, why, p.bid);
        }
        let cap = session_cap(self.dgram.total());
        let Some(a) = self.assocs.slab.get_mut(id) else {
            return;
        };
        let Stage::Open(fd) = a.stage else {
            return self.assoc_drop(ctx, id, DropReason::Late, p.bid);
        };
        if a.sends >= cap {
            return self.assoc_drop(ctx, id, DropReason::Backlog, p.bid);
        }
        a.assoc.sent_to(dst);
        a.sends += 1;
        a.inflight += 1;
        a.last_sent = Some(dst);
        a.moved.datagrams_c2u += 1;
        a.moved.bytes_c2u += u64::from(p.len);
        ctx.push(Op::SendDatagramTo {
            token: assoc_token(OpKind::AssocSend, id).with_aux(p.bid).encode(),
            fd,
            bid: p.bid,
            offset: p.offset,
            len: p.len,
            dest: dst,
            local: None,
        });
        if let Some(c) = self.assoc_counters(id) {
            c.inc(Counter::UdpDatagramsC2u);
            c.add(Counter::UdpBytesC2u, u64::from(p.len));
        }
    }

    fn send_to_client(
        &mut self,
        ctx: &mut Ctx,
        id: AssocId,
        src: SocketAddr,
        to: SocketAddr,
        p: Payload,
    ) {
        let cap = session_cap(self.dgram.total());
        let Some(a) = self.assocs.slab.get_mut(id) else {
            self.release_datagram(ctx, p.bid);
            return;
        };
        let Stage::Open(fd) = a.stage else {
            return self.assoc_drop(ctx, id, DropReason::Late, p.bid);
        };
        if a.sends >= cap {
            return self.assoc_drop(ctx, id, DropReason::Backlog, p.bid);
        }
        a.sends += 1;
        a.inflight += 1;
        a.moved.datagrams_u2c += 1;
        a.moved.bytes_u2c += u64::from(p.len);
        let mut header = [0u8; MAX_UDP_IP_HEADER];
        let n = socks5::write_udp_header(src, &mut header);
        ctx.push(Op::SendDatagramToWithHeader {
            token: assoc_token(OpKind::AssocReply, id).with_aux(p.bid).encode(),
            fd,
            bid: p.bid,
            offset: p.offset,
            len: p.len,
            dest: to,
            header,
            header_len: u8::try_from(n).unwrap_or(0),
        });
        if let Some(c) = self.assoc_counters(id) {
            c.inc(Counter::UdpDatagramsU2c);
            c.add(Counter::UdpBytesU2c, u64::from(p.len));
        }
    }

    /// A datagram for a name: held until the resolver answers (one lookup
    /// at a time per association).
    fn wait_for_name(&mut self, ctx: &mut Ctx, id: AssocId, name: String, port: u16, p: Payload) {
        let Some(a) = self.assocs.slab.get_mut(id) else {
            self.release_datagram(ctx, p.bid);
            return;
        };
        if !a.spec.policy.port_allowed(port) {
            return self.assoc_drop(ctx, id, DropReason::Denied, p.bid);
        }
        if a.waiting.len() >= MAX_WAITING {
            return self.assoc_drop(ctx, id, DropReason::Unresolved, p.bid);
        }
        if a.lookup.is_none() {
            a.lookup = Some(name.clone());
            self.assocs.lookups.push((id, name.clone()));
        }
        a.waiting.push_back(Waiting {
            payload: p,
            name,
            port,
        });
    }

    /// The resolver's answer to association `id`'s lookup: its datagrams
    /// for that name go to the first address the policy allows.
    pub(crate) fn assoc_resolved(
        &mut self,
        ctx: &mut Ctx,
        id: AssocId,
        answer: Result<Vec<IpAddr>, crate::dns::ResolveError>,
        now: Millis,
    ) {
        let Some(a) = self.assocs.slab.get_mut(id) else {
            return;
        };
        let Some(name) = a.lookup.take() else {
            return;
        };
        let (ready, rest): (Vec<Waiting>, Vec<Waiting>) =
            a.waiting.drain(..).partition(|w| w.name == name);
        a.waiting = rest.into();
        if let Some(next) = a.waiting.front().map(|w| w.name.clone()) {
            a.lookup = Some(next.clone());
            self.assocs.lookups.push((id, next));
        }
        for w in ready {
            let Some(a) = self.assocs.slab.get(id) else {
                self.release_datagram(ctx, w.payload.bid);
                continue;
            };
            let ips = answer.as_deref().unwrap_or_default();
            let mut first_refusal = None;
            let allowed = ips
                .iter()
                .map(|ip| SocketAddr::new(*ip, w.port))
                .find(|addr| match self.refusal(a, *addr) {
                    None => true,
                    Some(why) => {
                        first_refusal.get_or_insert(why);
                        false
                    }
                });
            match (allowed, first_refusal) {
                (Some(addr), _) => self.send_to_destination(ctx, id, addr, w.payload),
                (None, Some(why)) => self.assoc_drop(ctx, id, why, w.payload.bid),
                (None, None) => self.assoc_drop(ctx, id, DropReason::Unresolved, w.payload.bid),
            }
        }
        self.after_assoc(ctx, id, now);
    }

    /// Ends association `id` under `end`; `tell`: the control connection is
    /// told to close (it did not end it itself).
    fn end_assoc(&mut self, ctx: &mut Ctx, id: AssocId, end: SessionEnd, tell: bool, now: Millis) {
        let Some(a) = self.assocs.slab.get_mut(id) else {
            return;
        };
        if a.end.is_some() {
            return;
        }
        a.end = Some(end);
        a.lookup = None;
        let waiting: Vec<u16> = a.waiting.drain(..).map(|w| w.payload.bid).collect();
        let conn = a.conn;
        a.stage = match a.stage {
            Stage::Opening => Stage::Ending(None),
            Stage::Binding(fd) | Stage::Open(fd) => Stage::Ending(Some(fd)),
            other => other,
        };
        if a.recv == Recv::Armed {
            a.recv = Recv::Cancelling;
            a.inflight += 1;
            ctx.push(Op::CancelOne {
                token: assoc_token(OpKind::AssocCancel, id).encode(),
                target: assoc_token(OpKind::AssocRecv, id).encode(),
            });
        } else if a.recv == Recv::Starved {
            a.recv = Recv::Off;
        }
        self.assocs.by_conn.remove(&conn);
        if tell {
            self.assocs
                .events
                .push((conn, AssocEvent::Ended(close_reason(end))));
        }
        for bid in waiting {
            self.assoc_drop(ctx, id, DropReason::Late, bid);
        }
        self.after_assoc(ctx, id, now);
    }

    /// Closes an ended association's socket once nothing is in flight, and
    /// keeps a live one's idle timer.
    fn after_assoc(&mut self, ctx: &mut Ctx, id: AssocId, now: Millis) {
        let Some(a) = self.assocs.slab.get_mut(id) else {
            return;
        };
        match a.stage {
            Stage::Ending(fd) if a.inflight == 0 => match fd {
                Some(fd) => {
                    a.stage = Stage::Closing;
                    a.inflight += 1;
                    ctx.push(Op::Close {
                        token: assoc_token(OpKind::AssocClose, id).encode(),
                        fd,
                        linger0: false,
                    });
                }
                None => self.free_assoc(ctx, id, now),
            },
            Stage::Open(_) => {
                let d = a.assoc.deadline();
                if a.timer_at.is_none_or(|t| d < t) {
                    a.timer_at = Some(d);
                    ctx.timers.insert(d, TimerKey::Assoc { id, deadline: d });
                }
            }
            _ => {}
        }
    }

    fn free_assoc(&mut self, ctx: &mut Ctx, id: AssocId, now: Millis) {
        let Some(a) = self.assocs.slab.remove(id) else {
            return;
        };
        self.assocs.by_conn.remove(&a.conn);
        ctx.release_session_fd();
        let end = a.end.unwrap_or(SessionEnd::Error);
        if let Some(s) = self.assocs.stats.get_mut(a.stats) {
            s.active = s.active.saturating_sub(1);
            if let Some(bound) = a.bound {
                s.counters.udp_end(end);
                if let Some(access) = ctx.access.as_mut() {
                    log_access(access, &a, &s.name, bound, end, now);
                }
            }
            debug!(shard = ctx.shard, listener = %s.name, client = ?a.assoc.client(), end = end.name(), lasted_ms = now.saturating_sub(a.opened_at), "UDP association ended");
        }
    }

    /// Association `id`'s idle timer fired.
    pub(crate) fn assoc_timer(
        &mut self,
        ctx: &mut Ctx,
        id: AssocId,
        deadline: Millis,
        now: Millis,
    ) {
        let Some(a) = self.assocs.slab.get_mut(id) else {
            return;
        };
        if a.timer_at != Some(deadline) {
            return; // superseded by an earlier entry
        }
        a.timer_at = None;
        if a.end.is_none() && a.assoc.deadline() <= now {
            return self.end_assoc(ctx, id, SessionEnd::Idle, true, now);
        }
        self.after_assoc(ctx, id, now);
    }
}

/// An ended association's access log line: a UDP line of its listener, the
/// client as its datagrams came (its IP with port 0 if none came), the
/// association's socket as the local address, the last destination asked
/// for and the last address reached.
fn log_access(
    access: &mut AccessLogShard,
    a: &AssocConn,
    listener: &str,
    bound: SocketAddr,
    end: SessionEnd,
    now: Millis,
) {
    let client = a
        .assoc
        .client()
        .unwrap_or_else(|| SocketAddr::new(a.assoc.client_ip(), 0));
    let destination = a.asked.as_ref().map(ToString::to_string);
    access.log(&AccessRecord {
        time: SystemTime::now(),
        listener,
        proto: AccessProto::Udp {
            datagrams_c2u: a.moved.datagrams_c2u,
            datagrams_u2c: a.moved.datagrams_u2c,
        },
        client,
        peer: client,
        local: bound,
        upstream: a.last_sent,
        sni: None,
        connect_ms: None,
        duration_ms: now.saturating_sub(a.opened_at),
        bytes_c2u: a.moved.bytes_c2u,
        bytes_u2c: a.moved.bytes_u2c,
        reason: end.name(),
        destination: destination.as_deref(),
        user: a.user.as_deref(),
    });
}
