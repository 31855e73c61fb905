//! The UDP half of the shard engine: per-listener session maps, admission
//! (allow list, max_sessions share, per-source rate), session creation and
//! teardown, the echo listener, datagram-buffer accounting and the lowering of
//! `SessionOp`s to ring operations. Like the rest of the engine, no I/O.

use std::net::{IpAddr, SocketAddr};
use std::os::fd::RawFd;

use tracing::{debug, info, warn};

use super::engine::{
    CQE_F_MORE, Engine, Mode, Op, RecvTemplate, TimerKey, buffer_id, result, unit,
};
use super::token::{OpKind, SlotId, Token};
use crate::config::Cidr;
use crate::tcp::Side;
use crate::time::Millis;
use crate::udp::admission::{Admission, EmbryonicQueue, admission};
use crate::udp::drops::KernelDrops;
use crate::udp::limiter::SourceLimiter;
use crate::udp::loops::{Loop, LoopGuard};
use crate::udp::map::{SessionKey, SessionMap};
/// For the drain announcement: how long a UDP session owed a reply may stay quiet.
pub use crate::udp::session::DRAIN_GRACE_MS as UDP_DRAIN_GRACE_MS;
use crate::udp::session::{Session, SessionConfig};
use crate::udp::{DatagramEvent, DropReason, Payload, SessionEnd, SessionOp};

/// Datagrams a session may have waiting or in flight per direction: a quarter
/// of the shard's datagram buffers, between 16 and 256 (128 with the default
/// 512). Sends to a connected UDP socket complete at once, but their
/// completions are reaped only on the next loop turn, so this must hold the
/// burst one turn receives for one client: 16 dropped a fifth of the
/// datagrams of 8 flows offered at 50k/s with 32 in flight each (the
/// `udp_drop_backlog` counter), where the kernel path lost 0.1%. A quarter
/// keeps one client from holding the whole ring when its socket stalls; the
/// ring running dry is counted backpressure (`udp_enobufs`), not loss.
pub fn session_cap(datagram_buffers: u32) -> u32 {
    (datagram_buffers / 4).clamp(16, 256)
}
/// Echo replies in flight per echo listener per shard.
const ECHO_CAP: u32 = 1024;
/// Re-arm delay after a listener receive error other than ENOBUFS.
const LISTEN_BACKOFF_MS: Millis = 100;

mod drops;

/// Where a received datagram's payload is, as parsed from the recvmsg buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DatagramMeta {
    /// The sender (listener sockets only).
    pub src: Option<SocketAddr>,
    /// The address the datagram was sent to (wildcard listeners only).
    pub local: Option<IpAddr>,
    pub offset: u32,
    pub len: u32,
    /// Longer than max_datagram (or MSG_TRUNC: it did not fit the buffer).
    pub truncated: bool,
    /// The socket's kernel drop counter when this datagram was queued
    /// (SO_RXQ_OVFL; `None` while it is 0).
    pub drops: Option<u32>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UdpKind {
    Forward { route: u16 },
    Echo,
}

#[derive(Clone, Debug)]
pub struct UdpListenerSpec {
    pub name: String,
    pub fd: RawFd,
    pub kind: UdpKind,
    /// This shard's share of max_sessions.
    pub limit: u32,
    /// The address the listener is bound to (port resolved): no client
    /// datagram may claim it as its source (see `udp::loops`).
    pub listen: SocketAddr,
}

#[derive(Clone, Debug)]
pub struct UdpRouteSpec {
    pub upstreams: Vec<String>,
    /// The same upstreams as addresses (the loop guard compares sources with them).
    pub upstream_addrs: Vec<SocketAddr>,
    pub idle_ms: Millis,
    pub max_responses: Option<u32>,
    pub new_sessions_per_second_per_source: Option<u32>,
    pub allow: Vec<Cidr>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ListenRecv {
    Armed,
    Starved,
    Backoff,
    Cancelling,
    /// Not receiving any more (shutdown); closes once no session needs it.
    Idle,
    CloseInFlight,
    Closed,
}

pub struct UdpListener {
    spec: UdpListenerSpec,
    recv: ListenRecv,
    sessions: SessionMap,
    active: u32,
    rr: u16,
    /// Echo replies in flight (they use this listener's socket).
    echo_inflight: u32,
    limiter: Option<SourceLimiter>,
    /// Sessions not yet answered by their upstream, oldest first.
    embryonic: EmbryonicQueue<SlotId>,
    guard: LoopGuard,
    /// Datagrams the kernel dropped on this shard's socket, counted so far.
    drops: KernelDrops,
}

impl UdpListener {
    /// `own`: every UDP listen address of the forwarder.
    pub(super) fn new(
        spec: UdpListenerSpec,
        routes: &[UdpRouteSpec],
        own: &[SocketAddr],
    ) -> UdpListener {
        let route = match spec.kind {
            UdpKind::Forward { route } => routes.get(route as usize),
            UdpKind::Echo => None,
        };
        let limiter = route
            .and_then(|r| r.new_sessions_per_second_per_source)
            .map(SourceLimiter::new);
        let upstreams = route.map(|r| r.upstream_addrs.as_slice()).unwrap_or(&[]);
        UdpListener {
            embryonic: EmbryonicQueue::default(),
            guard: LoopGuard::new(own, upstreams),
            spec,
            recv: ListenRecv::Closed,
            sessions: SessionMap::default(),
            active: 0,
            rr: 0,
            echo_inflight: 0,
            limiter,
            drops: KernelDrops::default(),
        }
    }

    pub(super) fn is_closed(&self) -> bool {
        self.recv == ListenRecv::Closed
    }
}

/// A session and what the engine keeps beside it.
pub struct UdpConn {
    session: Session,
    listener: u32,
    client: SocketAddr,
    local: Option<IpAddr>,
    fd: Option<RawFd>,
    timer_at: Option<Millis>,
    /// Counted in its listener's embryonic queue (the session's own standing
    /// changes first; `after_session` then takes it out of the count).
    in_embryonic: bool,
    /// Datagrams the kernel dropped on the upstream socket, counted so far.
    drops: KernelDrops,
}

/// Who waits for datagram buffers.
#[derive(Clone, Copy, Debug)]
pub enum UdpWaiter {
    Listener(u32),
    Session(SlotId),
}

fn listener_token(kind: OpKind, index: u32) -> Token {
    Token::new(
        kind,
        Side::Client,
        SlotId {
            index,
            generation: 0,
        },
    )
}

fn allowed(allow: &[Cidr], ip: IpAddr) -> bool {
    allow.is_empty() || allow.iter().any(|c| c.contains(ip))
}

impl Engine {
    pub(super) fn arm_udp_listener(&mut self, index: u32) {
        let Some(l) = self.udp_listeners.get_mut(index as usize) else {
            return;
        };
        l.recv = ListenRecv::Armed;
        self.misc_inflight += 1;
        self.ops.push(Op::UdpRecvMulti {
            token: listener_token(OpKind::UdpListenRecv, index).encode(),
            fd: l.spec.fd,
            template: RecvTemplate::Listener(index),
        });
    }

    fn release_datagram(&mut self, bid: u16) {
        self.dgram_held = self.dgram_held.saturating_sub(1);
        self.ops.push(Op::ReleaseDatagram { bid });
    }

    /// A completion of a UDP operation; `meta` is the parsed recvmsg layout
    /// for receives that carried a datagram.
    pub fn handle_datagram_cqe(
        &mut self,
        user_data: u64,
        res: i32,
        flags: u32,
        meta: Option<DatagramMeta>,
        now: Millis,
    ) {
        match Token::decode(user_data) {
            Some(token) => self.on_udp_cqe(token, res, flags, meta, now),
            None => self.stale(OpKind::Close, res, flags),
        }
    }

    pub(super) fn on_udp_cqe(
        &mut self,
        token: Token,
        res: i32,
        flags: u32,
        meta: Option<DatagramMeta>,
        now: Millis,
    ) {
        match token.kind {
            OpKind::UdpListenRecv => self.on_listener_recv(token.slot.index, res, flags, meta, now),
            OpKind::UdpEchoSend => {
                self.misc_inflight = self.misc_inflight.saturating_sub(1);
                self.release_datagram(token.aux);
                match result(res) {
                    Ok(n) => {
                        self.stats.udp_datagrams_u2c += 1;
                        self.stats.udp_bytes_u2c += u64::from(n);
                    }
                    Err(_) => self.stats.count_udp_drop(DropReason::SendError),
                }
                if let Some(l) = self.udp_listeners.get_mut(token.slot.index as usize) {
                    l.echo_inflight = l.echo_inflight.saturating_sub(1);
                }
                self.close_idle_udp_listeners();
            }
            OpKind::UdpListenCancel => {
                self.misc_inflight = self.misc_inflight.saturating_sub(1);
            }
            OpKind::UdpListenClose => {
                self.misc_inflight = self.misc_inflight.saturating_sub(1);
                if let Some(l) = self.udp_listeners.get_mut(token.slot.index as usize) {
                    l.recv = ListenRecv::Closed;
                }
            }
            _ => self.on_session_cqe(token, res, flags, meta, now),
        }
    }

    /// A completion for a session that is gone: give back what it carries.
    fn udp_stale(&mut self, token: Token, res: i32, flags: u32) {
        self.stats.stale_completions += 1;
        if let Some(bid) = buffer_id(flags) {
            self.dgram_held += 1;
            self.release_datagram(bid);
        }
        match token.kind {
            OpKind::UdpUpSend | OpKind::UdpReplySend => self.release_datagram(token.aux),
            OpKind::UdpSocket if res >= 0 => self.reject(res),
            _ => {}
        }
        debug!(shard = self.shard, kind = ?token.kind, res, "dropped a UDP completion for a freed session");
    }

    fn on_listener_recv(
        &mut self,
        index: u32,
        res: i32,
        flags: u32,
        meta: Option<DatagramMeta>,
        now: Millis,
    ) {
        let more = flags & CQE_F_MORE != 0;
        if !more {
            self.misc_inflight = self.misc_inflight.saturating_sub(1);
        }
        let mut backoff = false;
        if let Some(reading) = meta.and_then(|m| m.drops) {
            self.note_listener_drops(index, reading);
        }
        match (res, buffer_id(flags)) {
            (r, Some(bid)) if r > 0 => {
                self.dgram_held += 1;
                match meta {
                    Some(m) if !m.truncated => match m.src {
                        Some(src) => self.on_client_datagram(index, bid, src, m, now),
                        None => self.release_datagram(bid),
                    },
                    _ => {
                        self.stats.count_udp_drop(DropReason::Truncated);
                        self.release_datagram(bid);
                    }
                }
            }
            (r, bid) => {
                if let Some(bid) = bid {
                    self.dgram_held += 1;
                    self.release_datagram(bid);
                }
                match -r {
                    libc::ENOBUFS => {
                        self.stats.udp_enobufs += 1;
                        if let Some(l) = self.udp_listeners.get_mut(index as usize) {
                            l.recv = ListenRecv::Starved;
                        }
                        // Listeners first: every new datagram of the shard waits on them.
                        self.udp_starved.push_front(UdpWaiter::Listener(index));
                    }
                    libc::ECANCELED => {}
                    e if r < 0 => {
                        backoff = true;
                        let err = std::io::Error::from_raw_os_error(e);
                        if self.log.allow(now, self.shard) {
                            warn!(shard = self.shard, error = %err, "UDP listener receive failed; retrying in {LISTEN_BACKOFF_MS}ms");
                        }
                    }
                    _ => {}
                }
            }
        }
        if more {
            return;
        }
        let Some(l) = self.udp_listeners.get_mut(index as usize) else {
            return;
        };
        match l.recv {
            ListenRecv::Armed if backoff => {
                l.recv = ListenRecv::Backoff;
                self.timers
                    .insert(now + LISTEN_BACKOFF_MS, TimerKey::UdpListener(index));
            }
            ListenRecv::Armed => self.arm_udp_listener(index),
            ListenRecv::Cancelling => {
                l.recv = ListenRecv::Idle;
                self.close_idle_udp_listeners();
            }
            ListenRecv::Starved
            | ListenRecv::Backoff
            | ListenRecv::Idle
            | ListenRecv::CloseInFlight
            | ListenRecv::Closed => {}
        }
    }

    pub(super) fn udp_listener_timer(&mut self, index: u32) {
        let backoff = self
            .udp_listeners
            .get(index as usize)
            .is_some_and(|l| l.recv == ListenRecv::Backoff);
        if backoff {
            self.arm_udp_listener(index);
        }
    }

    fn drop_datagram(&mut self, why: DropReason, bid: u16) {
        self.stats.count_udp_drop(why);
        self.release_datagram(bid);
    }

    fn on_client_datagram(
        &mut self,
        index: u32,
        bid: u16,
        src: SocketAddr,
        m: DatagramMeta,
        now: Millis,
    ) {
        let Some(l) = self.udp_listeners.get(index as usize) else {
            self.release_datagram(bid);
            return;
        };
        if let Some(kind) = l.guard.check(src, m.local) {
            self.drop_loop(index, bid, src, kind, now);
            return;
        }
        let payload = Payload {
            bid,
            offset: m.offset,
            len: m.len,
        };
        match l.spec.kind {
            UdpKind::Echo => self.echo_datagram(index, payload, src, m.local),
            UdpKind::Forward { route } => {
                let key = SessionKey {
                    client: src,
                    local: m.local,
                };
                self.forward_datagram(index, route, payload, key, now);
            }
        }
    }

    /// A forged source that would make the forwarder talk to itself.
    fn drop_loop(&mut self, index: u32, bid: u16, src: SocketAddr, kind: Loop, now: Millis) {
        self.drop_datagram(DropReason::Loop, bid);
        if self.log.allow(now, self.shard) {
            let name = self
                .udp_listeners
                .get(index as usize)
                .map_or("?", |l| l.spec.name.as_str());
            warn!(shard = self.shard, listener = %name, source = %src, "dropped a UDP datagram whose source is {} (forged: forwarding it would loop); counted as udp_drop_loop", kind.describe());
        }
    }

    fn echo_datagram(&mut self, index: u32, p: Payload, src: SocketAddr, local: Option<IpAddr>) {
        let Some(l) = self.udp_listeners.get_mut(index as usize) else {
            self.release_datagram(p.bid);
            return;
        };
        if l.echo_inflight >= ECHO_CAP {
            self.drop_datagram(DropReason::Backlog, p.bid);
            return;
        }
        l.echo_inflight += 1;
        self.misc_inflight += 1;
        self.stats.udp_datagrams_c2u += 1;
        self.stats.udp_bytes_c2u += u64::from(p.len);
        let token = listener_token(OpKind::UdpEchoSend, index).with_aux(p.bid);
        self.ops.push(Op::SendDatagramTo {
            token: token.encode(),
            fd: l.spec.fd,
            bid: p.bid,
            offset: p.offset,
            len: p.len,
            dest: src,
            local,
        });
    }

    fn forward_datagram(
        &mut self,
        index: u32,
        route: u16,
        payload: Payload,
        key: SessionKey,
        now: Millis,
    ) {
        let Some(r) = self.udp_routes.get(route as usize) else {
            self.release_datagram(payload.bid);
            return;
        };
        if !allowed(&r.allow, key.client.ip()) {
            self.drop_datagram(DropReason::Denied, payload.bid);
            return;
        }
        let existing = self
            .udp_listeners
            .get(index as usize)
            .and_then(|l| l.sessions.get(&key));
        if let Some(slot) = existing {
            if let Some(c) = self.sessions.get_mut(slot) {
                c.session.handle_client_datagram(
                    payload,
                    now,
                    &mut self.session_ops,
                    &mut self.stats,
                );
            }
            self.after_session(slot, now);
            return;
        }
        // A new client.
        if self.mode != Mode::Running {
            self.drop_datagram(DropReason::Draining, payload.bid);
            return;
        }
        match self.make_room(index, key.client, now) {
            Ok(()) => self.open_session(index, route, payload, key, now),
            Err(why) => self.drop_datagram(why, payload.bid),
        }
    }

    /// Admission of a new client (see `udp::admission`). The rate limit is
    /// asked only once the table would take the client, and a session is
    /// evicted only once the client has passed the rate limit too.
    fn make_room(&mut self, index: u32, client: SocketAddr, now: Millis) -> Result<(), DropReason> {
        if !self.fds.room(1, self.sessions.len()) {
            return Err(DropReason::SessionLimit); // no descriptor for its socket
        }
        let Some(l) = self.udp_listeners.get_mut(index as usize) else {
            return Err(DropReason::SessionLimit);
        };
        let decision = admission(l.active, l.spec.limit, l.embryonic.count());
        if decision == Admission::Refuse {
            if self.log.allow(now, self.shard) {
                info!(shard = self.shard, listener = %l.spec.name, limit = l.spec.limit, client = %client, "new UDP session refused: this shard's share of max_sessions is held by sessions their upstream answered (raise max_sessions)");
            }
            return Err(DropReason::SessionLimit);
        }
        if let Some(lim) = &mut l.limiter
            && !lim.allow(client.ip(), now)
        {
            return Err(DropReason::RateLimit);
        }
        if decision == Admission::EvictEmbryonic && !self.evict_embryonic(index, now) {
            // The count and the queue disagree (a bug guard): admit only below the limit.
            let room = self
                .udp_listeners
                .get(index as usize)
                .is_some_and(|l| l.active < l.spec.limit);
            if !room {
                return Err(DropReason::SessionLimit);
            }
        }
        Ok(())
    }

    /// Ends the listener's oldest embryonic session to make room; false when
    /// it has none.
    fn evict_embryonic(&mut self, index: u32, now: Millis) -> bool {
        let Some(l) = self.udp_listeners.get_mut(index as usize) else {
            return false;
        };
        let sessions = &self.sessions;
        let oldest = l
            .embryonic
            .pop_oldest(|slot| sessions.get(*slot).is_some_and(|c| c.in_embryonic));
        let Some(slot) = oldest else {
            return false;
        };
        if let Some(c) = self.sessions.get_mut(slot) {
            c.session.abort(SessionEnd::Evicted, &mut self.session_ops);
        }
        self.stats.udp_evict_embryonic += 1;
        self.after_session(slot, now);
        true
    }

    fn open_session(
        &mut self,
        index: u32,
        route: u16,
        payload: Payload,
        key: SessionKey,
        now: Millis,
    ) {
        let (Some(l), Some(r)) = (
            self.udp_listeners.get_mut(index as usize),
            self.udp_routes.get(route as usize),
        ) else {
            self.release_datagram(payload.bid);
            return;
        };
        let n = u16::try_from(r.upstreams.len()).unwrap_or(u16::MAX).max(1);
        let cfg = SessionConfig {
            upstream: l.rr % n,
            idle_ms: r.idle_ms,
            max_responses: r.max_responses,
            cap: session_cap(self.dgram_buffers),
        };
        l.rr = (l.rr + 1) % n;
        let mut session = Session::new(cfg, now);
        session.start(&mut self.session_ops);
        session.handle_client_datagram(payload, now, &mut self.session_ops, &mut self.stats);
        let conn = UdpConn {
            session,
            listener: index,
            client: key.client,
            local: key.local,
            fd: None,
            timer_at: None,
            in_embryonic: true,
            drops: KernelDrops::default(),
        };
        match self.sessions.insert(conn) {
            Some(slot) => {
                l.sessions.insert(key, slot);
                l.active += 1;
                let sessions = &self.sessions;
                l.embryonic
                    .push(slot, |s| sessions.get(*s).is_some_and(|c| c.in_embryonic));
                self.stats.udp_sessions_created += 1;
                self.after_session(slot, now);
            }
            None => {
                self.session_ops.clear();
                self.drop_datagram(DropReason::SessionLimit, payload.bid);
            }
        }
    }

    fn on_session_cqe(
        &mut self,
        token: Token,
        res: i32,
        flags: u32,
        meta: Option<DatagramMeta>,
        now: Millis,
    ) {
        let slot = token.slot;
        let Some(c) = self.sessions.get_mut(slot) else {
            self.udp_stale(token, res, flags);
            return;
        };
        let out = &mut self.session_ops;
        let stats = &mut self.stats;
        let s = &mut c.session;
        match token.kind {
            OpKind::UdpUpRecv => {
                if let Some(reading) = meta.and_then(|m| m.drops) {
                    let n = c.drops.observe(reading);
                    stats.count_udp_drops(DropReason::RcvbufU2c, u64::from(n));
                }
                let more = flags & CQE_F_MORE != 0;
                let ev = match (res, buffer_id(flags)) {
                    (r, Some(bid)) if r > 0 => {
                        self.dgram_held += 1;
                        match meta {
                            Some(m) if !m.truncated => DatagramEvent::Data(Payload {
                                bid,
                                offset: m.offset,
                                len: m.len,
                            }),
                            _ => DatagramEvent::Truncated { bid },
                        }
                    }
                    (r, bid) => {
                        if let Some(bid) = bid {
                            // A buffer without a datagram: straight back.
                            self.dgram_held += 1;
                            out.push(SessionOp::Release(bid));
                        }
                        match -r {
                            libc::ENOBUFS => DatagramEvent::NoBuffers,
                            libc::ECANCELED => DatagramEvent::Cancelled,
                            e if r < 0 => DatagramEvent::Error(e),
                            _ => DatagramEvent::Error(libc::EIO),
                        }
                    }
                };
                s.handle_upstream_recv(ev, more, now, out, stats);
            }
            OpKind::UdpUpSend => s.handle_sent_up(token.aux, result(res), out, stats),
            OpKind::UdpReplySend => s.handle_sent_client(token.aux, result(res), out, stats),
            OpKind::UdpSocket => {
                if res >= 0 {
                    c.fd = Some(res);
                }
                s.handle_socket(unit(res), out);
            }
            OpKind::UdpConnect => s.handle_connect(unit(res), now, out),
            OpKind::UdpCancel => s.handle_cancel(out),
            OpKind::UdpClose => s.handle_close(),
            _ => {
                self.stats.stale_completions += 1;
                debug!(shard = self.shard, kind = ?token.kind, "unexpected UDP completion kind");
            }
        }
        self.after_session(slot, now);
    }

    /// Lowers the session's requests to ring operations, unmaps a closing
    /// session (so its client's next datagram starts a new one), frees a
    /// finished one, or reschedules its idle timer.
    fn after_session(&mut self, slot: SlotId, now: Millis) {
        let Some(c) = self.sessions.get_mut(slot) else {
            self.session_ops.clear();
            return;
        };
        let Some(l) = self.udp_listeners.get_mut(c.listener as usize) else {
            self.session_ops.clear();
            return;
        };
        let route = match l.spec.kind {
            UdpKind::Forward { route } => route,
            UdpKind::Echo => 0,
        };
        let tok = |kind| Token::new(kind, Side::Upstream, slot);
        for op in self.session_ops.drain(..) {
            let fd = c.fd.unwrap_or(-1);
            let lowered = match op {
                SessionOp::OpenSocket { upstream } => Op::UdpSocket {
                    token: tok(OpKind::UdpSocket).encode(),
                    route,
                    upstream,
                },
                SessionOp::Connect { upstream } => Op::UdpConnect {
                    token: tok(OpKind::UdpConnect).encode(),
                    fd,
                    route,
                    upstream,
                },
                SessionOp::ArmRecv => Op::UdpRecvMulti {
                    token: tok(OpKind::UdpUpRecv).encode(),
                    fd,
                    template: RecvTemplate::Upstream,
                },
                SessionOp::SendUp(p) => Op::SendDatagram {
                    token: tok(OpKind::UdpUpSend).with_aux(p.bid).encode(),
                    fd,
                    bid: p.bid,
                    offset: p.offset,
                    len: p.len,
                },
                SessionOp::SendClient(p) => Op::SendDatagramTo {
                    token: tok(OpKind::UdpReplySend).with_aux(p.bid).encode(),
                    fd: l.spec.fd,
                    bid: p.bid,
                    offset: p.offset,
                    len: p.len,
                    dest: c.client,
                    local: c.local,
                },
                SessionOp::Release(bid) => {
                    self.dgram_held = self.dgram_held.saturating_sub(1);
                    Op::ReleaseDatagram { bid }
                }
                SessionOp::Starved => {
                    self.udp_starved.push_back(UdpWaiter::Session(slot));
                    continue;
                }
                SessionOp::CancelRecv => Op::CancelOne {
                    token: tok(OpKind::UdpCancel).encode(),
                    target: tok(OpKind::UdpUpRecv).encode(),
                },
                SessionOp::Close => Op::Close {
                    token: tok(OpKind::UdpClose).encode(),
                    fd: c.fd.take().unwrap_or(-1),
                    linger0: false,
                },
            };
            self.ops.push(lowered);
        }
        if c.in_embryonic && !c.session.is_embryonic() {
            c.in_embryonic = false;
            l.embryonic.leave();
        }
        if c.session.is_closing() {
            let key = SessionKey {
                client: c.client,
                local: c.local,
            };
            l.sessions.remove(&key, slot);
        }
        if !c.session.is_finished() {
            if let Some(d) = c.session.deadline()
                && c.timer_at.is_none_or(|t| d < t)
            {
                c.timer_at = Some(d);
                self.timers
                    .insert(d, TimerKey::Session { slot, deadline: d });
            }
            return;
        }
        l.active = l.active.saturating_sub(1);
        let name = l.spec.name.clone();
        let Some(c) = self.sessions.remove(slot) else {
            return;
        };
        self.count_session_end(&c, &name, route, now);
        self.close_idle_udp_listeners();
    }

    /// Counts a freed session under its end and logs it (errors rate-limited).
    fn count_session_end(&mut self, c: &UdpConn, name: &str, route: u16, now: Millis) {
        let end = c.session.end().unwrap_or(SessionEnd::Error);
        self.stats.count_udp_end(end);
        let upstream = self
            .udp_routes
            .get(route as usize)
            .and_then(|r| r.upstreams.get(c.session.upstream() as usize))
            .map(String::as_str)
            .unwrap_or("?");
        match end {
            SessionEnd::Idle
            | SessionEnd::Responses
            | SessionEnd::Shutdown
            | SessionEnd::Drained
            | SessionEnd::Evicted => {
                debug!(shard = self.shard, listener = %name, client = %c.client, upstream, end = end.name(), "UDP session ended");
            }
            SessionEnd::Refused | SessionEnd::Error => {
                if self.log.allow(now, self.shard) {
                    let error = c
                        .session
                        .last_errno()
                        .map(|e| std::io::Error::from_raw_os_error(e).to_string());
                    info!(shard = self.shard, listener = %name, client = %c.client, upstream, end = end.name(), error = error.as_deref().unwrap_or("-"), "UDP session ended");
                }
            }
        }
    }

    pub(super) fn session_timer(&mut self, slot: SlotId, deadline: Millis, now: Millis) {
        let Some(c) = self.sessions.get_mut(slot) else {
            return;
        };
        if c.timer_at != Some(deadline) {
            return; // superseded by an earlier entry
        }
        c.timer_at = None;
        c.session.handle_timeout(now, &mut self.session_ops);
        self.after_session(slot, now);
    }

    /// Re-arms starved datagram receives while the datagram ring has buffers
    /// (listeners first). Each one has a datagram waiting, so it either takes
    /// a buffer — a completion that brings us back here — or starves again.
    pub(super) fn wake_udp_starved(&mut self, now: Millis) {
        let mut free = self.dgram_buffers.saturating_sub(self.dgram_held);
        while free > 0 {
            let Some(w) = self.udp_starved.pop_front() else {
                break;
            };
            match w {
                UdpWaiter::Listener(index) => {
                    let starved = self
                        .udp_listeners
                        .get(index as usize)
                        .is_some_and(|l| l.recv == ListenRecv::Starved);
                    if starved {
                        if self.mode == Mode::Running
                            || self
                                .udp_listeners
                                .get(index as usize)
                                .is_some_and(|l| l.active > 0)
                        {
                            self.arm_udp_listener(index);
                        } else if let Some(l) = self.udp_listeners.get_mut(index as usize) {
                            l.recv = ListenRecv::Idle;
                        }
                        free -= 1;
                    }
                }
                UdpWaiter::Session(slot) => {
                    if let Some(c) = self.sessions.get_mut(slot) {
                        c.session.handle_buffers(&mut self.session_ops);
                        free -= 1;
                        self.after_session(slot, now);
                    }
                }
            }
        }
        self.close_idle_udp_listeners();
    }

    /// Draining: each session ends once it owes its client no reply, or has
    /// been quiet for the drain grace (`udp::session::DRAIN_GRACE_MS`).
    pub fn drain_udp_sessions(&mut self, now: Millis) {
        for slot in self.sessions.ids() {
            if let Some(c) = self.sessions.get_mut(slot) {
                c.session.handle_drain(now, &mut self.session_ops);
            }
            self.after_session(slot, now);
        }
        self.close_idle_udp_listeners();
    }

    /// Shutdown: end every session now.
    pub(super) fn stop_sessions(&mut self, now: Millis) {
        for slot in self.sessions.ids() {
            if let Some(c) = self.sessions.get_mut(slot) {
                c.session.abort(SessionEnd::Shutdown, &mut self.session_ops);
            }
            self.after_session(slot, now);
        }
        self.close_idle_udp_listeners();
    }

    /// While draining or stopping: a UDP listener with no session left (echo:
    /// no reply in flight) stops receiving and closes. Forwarding listeners
    /// stay open while sessions remain, since replies leave through them.
    pub(super) fn close_idle_udp_listeners(&mut self) {
        if self.mode == Mode::Running {
            return;
        }
        for i in 0..self.udp_listeners.len() {
            let index = i as u32;
            let Some(l) = self.udp_listeners.get_mut(i) else {
                continue;
            };
            if l.active > 0 || l.echo_inflight > 0 {
                continue;
            }
            match l.recv {
                ListenRecv::Armed => {
                    l.recv = ListenRecv::Cancelling;
                    self.misc_inflight += 1;
                    self.ops.push(Op::CancelOne {
                        token: listener_token(OpKind::UdpListenCancel, index).encode(),
                        target: listener_token(OpKind::UdpListenRecv, index).encode(),
                    });
                }
                ListenRecv::Starved | ListenRecv::Backoff | ListenRecv::Idle => {
                    l.recv = ListenRecv::CloseInFlight;
                    self.misc_inflight += 1;
                    self.ops.push(Op::Close {
                        token: listener_token(OpKind::UdpListenClose, index).encode(),
                        fd: l.spec.fd,
                        linger0: false,
                    });
                }
                ListenRecv::Cancelling | ListenRecv::CloseInFlight | ListenRecv::Closed => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::session_cap;

    #[test]
    fn a_session_may_hold_a_quarter_of_the_ring_within_bounds() {
        assert_eq!(session_cap(512), 128, "the default ring");
        assert_eq!(session_cap(8), 16, "a tiny ring still rides out a burst");
        assert_eq!(
            session_cap(32768),
            256,
            "a huge ring does not make one client unbounded"
        );
    }
}
