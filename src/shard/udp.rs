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
use crate::udp::limiter::SourceLimiter;
use crate::udp::map::{SessionKey, SessionMap};
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

/// Where a received datagram's payload is, as parsed from the recvmsg buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DatagramMeta {
    /// The sender (listener sockets only).
    pub src: Option<SocketAddr>,
    /// The address the datagram was sent to (wildcard listeners only).
    pub local: Option<IpAddr>,
    pub offset: u32,
    pub len: u32,
    /// MSG_TRUNC: the datagram did not fit the buffer.
    pub truncated: bool,
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
}

#[derive(Clone, Debug)]
pub struct UdpRouteSpec {
    pub upstreams: Vec<String>,
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
}

impl UdpListener {
    pub(super) fn new(spec: UdpListenerSpec, routes: &[UdpRouteSpec]) -> UdpListener {
        let limiter = match spec.kind {
            UdpKind::Forward { route } => routes
                .get(route as usize)
                .and_then(|r| r.new_sessions_per_second_per_source)
                .map(SourceLimiter::new),
            UdpKind::Echo => None,
        };
        UdpListener {
            spec,
            recv: ListenRecv::Closed,
            sessions: SessionMap::default(),
            active: 0,
            rr: 0,
            echo_inflight: 0,
            limiter,
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
        let Some(l) = self.udp_listeners.get_mut(index as usize) else {
            self.release_datagram(bid);
            return;
        };
        let payload = Payload {
            bid,
            offset: m.offset,
            len: m.len,
        };
        let route = match l.spec.kind {
            UdpKind::Echo => {
                if l.echo_inflight >= ECHO_CAP {
                    self.drop_datagram(DropReason::Backlog, bid);
                    return;
                }
                l.echo_inflight += 1;
                self.misc_inflight += 1;
                self.stats.udp_datagrams_c2u += 1;
                self.stats.udp_bytes_c2u += u64::from(m.len);
                let token = listener_token(OpKind::UdpEchoSend, index).with_aux(bid);
                self.ops.push(Op::SendDatagramTo {
                    token: token.encode(),
                    fd: l.spec.fd,
                    bid,
                    offset: m.offset,
                    len: m.len,
                    dest: src,
                    local: m.local,
                });
                return;
            }
            UdpKind::Forward { route } => route,
        };
        let Some(r) = self.udp_routes.get(route as usize) else {
            self.release_datagram(bid);
            return;
        };
        if !allowed(&r.allow, src.ip()) {
            self.drop_datagram(DropReason::Denied, bid);
            return;
        }
        let key = SessionKey {
            client: src,
            local: m.local,
        };
        if let Some(slot) = l.sessions.get(&key) {
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
            self.drop_datagram(DropReason::Draining, bid);
            return;
        }
        if !self.fds.room(1, self.sessions.len()) {
            return self.drop_datagram(DropReason::SessionLimit, bid); // no descriptor for its socket
        }
        if l.active >= l.spec.limit {
            let (name, limit) = (l.spec.name.clone(), l.spec.limit);
            self.drop_datagram(DropReason::SessionLimit, bid);
            if self.log.allow(now, self.shard) {
                info!(shard = self.shard, listener = %name, limit, client = %src, "new UDP session refused: this shard's share of max_sessions is in use");
            }
            return;
        }
        if let Some(lim) = &mut l.limiter
            && !lim.allow(src.ip(), now)
        {
            self.drop_datagram(DropReason::RateLimit, bid);
            return;
        }
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
            client: src,
            local: m.local,
            fd: None,
            timer_at: None,
        };
        match self.sessions.insert(conn) {
            Some(slot) => {
                l.sessions.insert(key, slot);
                l.active += 1;
                self.stats.udp_sessions_created += 1;
                self.after_session(slot, now);
            }
            None => {
                self.session_ops.clear();
                self.drop_datagram(DropReason::SessionLimit, bid);
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
        let end = c.session.end().unwrap_or(SessionEnd::Error);
        self.stats.count_udp_end(end);
        let upstream = self
            .udp_routes
            .get(route as usize)
            .and_then(|r| r.upstreams.get(c.session.upstream() as usize))
            .map(String::as_str)
            .unwrap_or("?");
        match end {
            SessionEnd::Idle | SessionEnd::Responses | SessionEnd::Shutdown => {
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
        self.close_idle_udp_listeners();
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
