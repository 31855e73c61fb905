//! The UDP service of a shard: per-listener session maps, admission (allow
//! list, max_sessions share, per-source rate, descriptor budget), session
//! creation and teardown, the echo listener, datagram-buffer accounting and
//! the lowering of `SessionOp`s to ring operations. No I/O.

use std::collections::VecDeque;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::RawFd;

use tracing::{debug, info, warn};

use super::buffers::Held;
use super::context::{Ctx, Mode, TimerKey};
use super::ops::{CQE_F_MORE, Family, Fd, Op, RecvTemplate, buffer_id, result, unit};
use super::slab::{SessionId, Slab};
use super::token::{OpKind, SlotId, Token};
use crate::accesslog::{AccessLogShard, AccessRecord, Proto as AccessProto};
use crate::config::Cidr;
use crate::config::{Balance, PassiveHealth};
use crate::front::proxy::{self as proxy_header, Proto as ProxyProto};
use crate::stats::{Counter, Counters};
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
use crate::upstream::{Attempts, Balancer, Change, Member, Outcome, Pool, Target};
use std::time::SystemTime;

mod assoc;
mod reload;
pub use assoc::AssocEvent;
use reload::Role;
pub use reload::{UdpReload, UdpReloadListener};

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
mod tproxy;
pub use tproxy::TproxySpec;

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
    /// Where the client sent it before a TPROXY rule steered it here
    /// (IP_RECVORIGDSTADDR; transparent listeners only).
    pub orig_dst: Option<SocketAddr>,
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
    pub upstreams: Vec<SocketAddr>,
    /// Parallel to `upstreams`.
    pub weights: Vec<u32>,
    pub balance: Balance,
    pub passive: PassiveHealth,
    /// SO_RCVBUF of each session's upstream socket (`None`: kernel default).
    pub session_rcvbuf: Option<u32>,
    /// `send_proxy = "v2"`: every datagram to the upstream carries a PROXY
    /// v2 header with its client and the local address it reached.
    pub send_proxy: bool,
    pub idle_ms: Millis,
    pub max_responses: Option<u32>,
    pub new_sessions_per_second_per_source: Option<u32>,
    pub allow: Vec<Cidr>,
    /// Clients dropped whatever `allow` says.
    pub deny: Vec<Cidr>,
    /// `transparent = "tproxy"`: no upstreams; each session goes where its
    /// client's first datagram was sent.
    pub transparent: Option<TproxySpec>,
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
    sessions: SessionMap<SessionId>,
    active: u32,
    /// Picks each new session's upstream.
    balancer: Balancer,
    /// Echo replies in flight (they use this listener's socket).
    echo_inflight: u32,
    limiter: Option<SourceLimiter>,
    /// Sessions not yet answered by their upstream, oldest first.
    embryonic: EmbryonicQueue<SessionId>,
    guard: LoopGuard,
    /// Datagrams the kernel dropped on this shard's socket, counted so far.
    drops: KernelDrops,
    counters: Counters,
    role: Role,
    /// Bumped when a reload replaces the balancer: a session started on an
    /// older one is not among the new one's members.
    epoch: u32,
    /// Reply sockets its transparent sessions hold on this shard.
    replies: u32,
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
        let upstreams = route.map(|r| r.upstreams.as_slice()).unwrap_or(&[]);
        let members: Vec<Member> = upstreams
            .iter()
            .enumerate()
            .map(|(i, &addr)| Member {
                target: Target {
                    upstream: None,
                    addr,
                },
                weight: route.and_then(|r| r.weights.get(i)).copied().unwrap_or(1),
            })
            .collect();
        let balancer = Balancer::new(
            &members,
            route.map_or(Balance::RoundRobin, |r| r.balance),
            route.map_or_else(PassiveHealth::default, |r| r.passive),
        );
        UdpListener {
            embryonic: EmbryonicQueue::default(),
            guard: LoopGuard::new(own, upstreams),
            spec,
            recv: ListenRecv::Closed,
            sessions: SessionMap::default(),
            active: 0,
            balancer,
            echo_inflight: 0,
            limiter,
            drops: KernelDrops::default(),
            counters: Counters::default(),
            role: Role::Serving,
            epoch: 0,
            replies: 0,
        }
    }

    pub(super) fn is_closed(&self) -> bool {
        self.recv == ListenRecv::Closed
    }
}

/// A session and what the shard keeps beside it.
pub struct UdpConn {
    session: Session,
    /// The upstream its listener's balancer chose for it, and its index
    /// among the balancer's members (whose active count it is in).
    target: Target,
    member: usize,
    /// The PROXY v2 header each of its datagrams carries (`send_proxy`).
    proxy_header: Option<([u8; 52], u8)>,
    listener: u32,
    client: SocketAddr,
    local: Option<IpAddr>,
    fd: Option<Fd>,
    timer_at: Option<Millis>,
    /// Counted in its listener's embryonic queue (the session's own standing
    /// changes first; `after_session` then takes it out of the count).
    in_embryonic: bool,
    /// Datagrams the kernel dropped on the upstream socket, counted so far.
    drops: KernelDrops,
    /// Its listener's balancer epoch when it started (see `UdpListener::epoch`).
    epoch: u32,
    /// SO_RCVBUF of its upstream socket, as its route said when it started.
    rcvbuf: Option<u32>,
    /// A transparent session's reply socket.
    tproxy: Option<tproxy::TproxyConn>,
}

/// Who waits for datagram buffers.
#[derive(Clone, Copy, Debug)]
pub enum UdpWaiter {
    Listener(u32),
    Session(SessionId),
    Assoc(super::slab::AssocId),
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

/// What the UDP service is built from.
#[derive(Clone, Debug, Default)]
pub struct UdpConfig {
    /// Buffers in the datagram ring (0 when there is no UDP listener).
    pub datagram_buffers: u32,
    pub listeners: Vec<UdpListenerSpec>,
    pub routes: Vec<UdpRouteSpec>,
}

pub struct UdpService {
    sessions: Slab<UdpConn, SessionId>,
    udp_listeners: Vec<UdpListener>,
    udp_routes: Vec<UdpRouteSpec>,
    udp_starved: VecDeque<UdpWaiter>,
    /// Datagram buffers handed to us and not yet released.
    dgram: Held,
    session_ops: Vec<SessionOp>,
    /// Counters of listeners a reload removed whose slot was reused.
    retired: crate::stats::ShardStats,
    /// SOCKS5 UDP associations (their control connections are the TCP service's).
    assocs: assoc::Assocs,
}

/// Whether a client may open a session: not in `deny` (which wins), and in
/// `allow` unless that is empty.
fn allowed(allow: &[Cidr], deny: &[Cidr], ip: IpAddr) -> bool {
    !deny.iter().any(|c| c.contains(ip))
        && (allow.is_empty() || allow.iter().any(|c| c.contains(ip)))
}

impl UdpService {
    pub fn new(cfg: UdpConfig) -> UdpService {
        let own: Vec<_> = cfg.listeners.iter().map(|s| s.listen).collect();
        let udp_listeners = cfg
            .listeners
            .into_iter()
            .map(|spec| UdpListener::new(spec, &cfg.routes, &own))
            .collect();
        UdpService {
            sessions: Slab::default(),
            udp_listeners,
            udp_routes: cfg.routes,
            udp_starved: VecDeque::new(),
            dgram: Held::new(cfg.datagram_buffers),
            session_ops: Vec::with_capacity(16),
            retired: crate::stats::ShardStats::default(),
            assocs: assoc::Assocs::default(),
        }
    }

    /// Arms every listener's receive (and seeds the balancers: each shard
    /// its own random sequence).
    pub fn start(&mut self, ctx: &mut Ctx) {
        let seed = self.seed(ctx);
        for (i, l) in self.udp_listeners.iter_mut().enumerate() {
            l.balancer
                .seed(seed ^ (i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15));
        }
        for i in 0..self.udp_listeners.len() {
            self.arm_udp_listener(ctx, i as u32);
        }
    }

    /// The balancers' seed: the time as well as the shard, as the TCP
    /// service seeds its own (services do not share code).
    fn seed(&self, ctx: &Ctx) -> u64 {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        crate::upstream::shard_seed(ctx.shard, nanos)
    }

    /// UDP sessions open (or closing) on this shard.
    pub fn sessions(&self) -> usize {
        self.sessions.len()
    }

    /// Datagram buffers held by sessions and in-flight sends.
    pub fn held_datagram_buffers(&self) -> u32 {
        self.dgram.held()
    }

    /// No session or association, and every listener closed.
    pub fn is_done(&self) -> bool {
        self.sessions.is_empty()
            && self.assocs.is_empty()
            && self.udp_listeners.iter().all(UdpListener::is_closed)
    }

    /// Counters of every listener (with its session gauge).
    pub fn snapshot(&self, out: &mut Vec<crate::stats::ListenerStats>) {
        for l in &self.udp_listeners {
            let mut counters = l.counters.clone();
            counters.set(Counter::UdpSessionsActive, u64::from(l.active));
            out.push(crate::stats::ListenerStats {
                name: l.spec.name.clone(),
                counters,
                ..Default::default()
            });
        }
        self.assoc_snapshot(out);
    }

    pub(super) fn arm_udp_listener(&mut self, ctx: &mut Ctx, index: u32) {
        let Some(l) = self.udp_listeners.get_mut(index as usize) else {
            return;
        };
        l.recv = ListenRecv::Armed;
        ctx.push_own(Op::UdpRecvMulti {
            token: listener_token(OpKind::UdpListenRecv, index).encode(),
            fd: Fd(l.spec.fd),
            template: RecvTemplate::Listener(index),
        });
    }

    fn release_datagram(&mut self, ctx: &mut Ctx, bid: u16) {
        self.dgram.give();
        ctx.push(Op::ReleaseDatagram { bid });
    }

    pub fn on_udp_cqe(
        &mut self,
        ctx: &mut Ctx,
        token: Token,
        res: i32,
        flags: u32,
        meta: Option<DatagramMeta>,
        now: Millis,
    ) {
        match token.kind {
            OpKind::UdpListenRecv => {
                self.on_listener_recv(ctx, token.slot.index, res, flags, meta, now)
            }
            OpKind::UdpEchoSend => {
                ctx.own_done();
                self.release_datagram(ctx, token.aux);
                let c = self.counters(ctx, token.slot.index);
                match result(res) {
                    Ok(n) => {
                        c.inc(Counter::UdpDatagramsU2c);
                        c.add(Counter::UdpBytesU2c, u64::from(n));
                    }
                    Err(_) => c.udp_drop(DropReason::SendError),
                }
                if let Some(l) = self.udp_listeners.get_mut(token.slot.index as usize) {
                    l.echo_inflight = l.echo_inflight.saturating_sub(1);
                }
                self.close_idle_udp_listeners(ctx);
            }
            OpKind::UdpListenCancel => {
                ctx.own_done();
            }
            OpKind::UdpListenClose => {
                ctx.own_done();
                if let Some(l) = self.udp_listeners.get_mut(token.slot.index as usize) {
                    l.recv = ListenRecv::Closed;
                }
            }
            OpKind::AssocSocket
            | OpKind::AssocBind
            | OpKind::AssocRecv
            | OpKind::AssocSend
            | OpKind::AssocReply
            | OpKind::AssocCancel
            | OpKind::AssocClose => self.on_assoc_cqe(ctx, token, res, flags, meta, None, now),
            _ => self.on_session_cqe(ctx, token, res, flags, meta, now),
        }
    }

    /// A completion for a session or association that is gone: give back
    /// what it carries.
    fn udp_stale(&mut self, ctx: &mut Ctx, token: Token, res: i32, flags: u32) {
        ctx.counters.inc(Counter::StaleCompletions);
        if let Some(bid) = buffer_id(flags) {
            self.dgram.take();
            self.release_datagram(ctx, bid);
        }
        match token.kind {
            OpKind::UdpUpSend
            | OpKind::UdpReplySend
            | OpKind::TproxySend
            | OpKind::AssocSend
            | OpKind::AssocReply => self.release_datagram(ctx, token.aux),
            OpKind::UdpSocket | OpKind::TproxyOpen | OpKind::AssocSocket if res >= 0 => {
                ctx.reject(Fd(res))
            }
            _ => {}
        }
        debug!(shard = ctx.shard, kind = ?token.kind, res, "dropped a UDP completion for a freed session or association");
    }

    fn on_listener_recv(
        &mut self,
        ctx: &mut Ctx,
        index: u32,
        res: i32,
        flags: u32,
        meta: Option<DatagramMeta>,
        now: Millis,
    ) {
        let more = flags & CQE_F_MORE != 0;
        if !more {
            ctx.own_done();
        }
        let mut backoff = false;
        if let Some(reading) = meta.and_then(|m| m.drops) {
            self.note_listener_drops(index, reading);
        }
        match (res, buffer_id(flags)) {
            (r, Some(bid)) if r > 0 => {
                self.dgram.take();
                match meta {
                    Some(m) if !m.truncated => match m.src {
                        Some(src) => self.on_client_datagram(ctx, index, bid, src, m, now),
                        None => self.release_datagram(ctx, bid),
                    },
                    _ => {
                        self.counters(ctx, index).udp_drop(DropReason::Truncated);
                        self.release_datagram(ctx, bid);
                    }
                }
            }
            (r, bid) => {
                if let Some(bid) = bid {
                    self.dgram.take();
                    self.release_datagram(ctx, bid);
                }
                match -r {
                    libc::ENOBUFS => {
                        self.counters(ctx, index).inc(Counter::UdpEnobufs);
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
                        if ctx.log.allow(now, ctx.shard) {
                            warn!(shard = ctx.shard, error = %err, "UDP listener receive failed; retrying in {LISTEN_BACKOFF_MS}ms");
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
                ctx.timers
                    .insert(now + LISTEN_BACKOFF_MS, TimerKey::UdpListener(index));
            }
            ListenRecv::Armed => self.arm_udp_listener(ctx, index),
            ListenRecv::Cancelling => {
                l.recv = ListenRecv::Idle;
                self.close_idle_udp_listeners(ctx);
            }
            ListenRecv::Starved
            | ListenRecv::Backoff
            | ListenRecv::Idle
            | ListenRecv::CloseInFlight
            | ListenRecv::Closed => {}
        }
    }

    pub fn udp_listener_timer(&mut self, ctx: &mut Ctx, index: u32) {
        let backoff = self
            .udp_listeners
            .get(index as usize)
            .is_some_and(|l| l.recv == ListenRecv::Backoff);
        if backoff {
            self.arm_udp_listener(ctx, index);
        }
    }

    /// The counters of listener `index` (the shard's own if it has none).
    fn counters<'a>(&'a mut self, ctx: &'a mut Ctx, index: u32) -> &'a mut Counters {
        match self.udp_listeners.get_mut(index as usize) {
            Some(l) => &mut l.counters,
            None => &mut ctx.counters,
        }
    }

    fn drop_datagram(&mut self, ctx: &mut Ctx, index: u32, why: DropReason, bid: u16) {
        self.counters(ctx, index).udp_drop(why);
        self.release_datagram(ctx, bid);
    }

    fn on_client_datagram(
        &mut self,
        ctx: &mut Ctx,
        index: u32,
        bid: u16,
        src: SocketAddr,
        m: DatagramMeta,
        now: Millis,
    ) {
        let Some(l) = self.udp_listeners.get(index as usize) else {
            self.release_datagram(ctx, bid);
            return;
        };
        if let Some(kind) = l.guard.check(src, m.local) {
            self.drop_loop(ctx, index, bid, src, kind, now);
            return;
        }
        let payload = Payload {
            bid,
            offset: m.offset,
            len: m.len,
        };
        match l.spec.kind {
            UdpKind::Echo => self.echo_datagram(ctx, index, payload, src, m.local),
            UdpKind::Forward { route } => {
                // A transparent session is also keyed by where it goes.
                let transparent = self
                    .udp_routes
                    .get(route as usize)
                    .is_some_and(|r| r.transparent.is_some());
                let key = SessionKey {
                    client: src,
                    local: m.local,
                    orig_dst: m.orig_dst.filter(|_| transparent),
                };
                self.forward_datagram(ctx, index, route, payload, key, now);
            }
        }
    }

    /// A forged source that would make the forwarder talk to itself.
    fn drop_loop(
        &mut self,
        ctx: &mut Ctx,
        index: u32,
        bid: u16,
        src: SocketAddr,
        kind: Loop,
        now: Millis,
    ) {
        self.drop_datagram(ctx, index, DropReason::Loop, bid);
        if ctx.log.allow(now, ctx.shard) {
            let name = self
                .udp_listeners
                .get(index as usize)
                .map_or("?", |l| l.spec.name.as_str());
            warn!(shard = ctx.shard, listener = %name, source = %src, "dropped a UDP datagram whose source is {} (forged: forwarding it would loop); counted as udp_drop_loop", kind.describe());
        }
    }

    fn echo_datagram(
        &mut self,
        ctx: &mut Ctx,
        index: u32,
        p: Payload,
        src: SocketAddr,
        local: Option<IpAddr>,
    ) {
        let Some(l) = self.udp_listeners.get_mut(index as usize) else {
            self.release_datagram(ctx, p.bid);
            return;
        };
        if l.echo_inflight >= ECHO_CAP {
            self.drop_datagram(ctx, index, DropReason::Backlog, p.bid);
            return;
        }
        l.echo_inflight += 1;
        l.counters.inc(Counter::UdpDatagramsC2u);
        l.counters.add(Counter::UdpBytesC2u, u64::from(p.len));
        let token = listener_token(OpKind::UdpEchoSend, index).with_aux(p.bid);
        ctx.push_own(Op::SendDatagramTo {
            token: token.encode(),
            fd: Fd(l.spec.fd),
            bid: p.bid,
            offset: p.offset,
            len: p.len,
            dest: src,
            local,
        });
    }

    fn forward_datagram(
        &mut self,
        ctx: &mut Ctx,
        index: u32,
        route: u16,
        payload: Payload,
        key: SessionKey,
        now: Millis,
    ) {
        let Some(l) = self.udp_listeners.get(index as usize) else {
            self.release_datagram(ctx, payload.bid);
            return;
        };
        // A session admitted under the allow list in force at its start
        // keeps going after a reload changed it, as a TCP connection does.
        let existing = l.sessions.get(&key);
        let removed = l.role == Role::Removed;
        let Some(r) = self.udp_routes.get(route as usize) else {
            self.release_datagram(ctx, payload.bid);
            return;
        };
        if existing.is_none() && !allowed(&r.allow, &r.deny, key.client.ip()) {
            self.drop_datagram(ctx, index, DropReason::Denied, payload.bid);
            return;
        }
        if let Some(slot) = existing {
            if let Some(c) = self.sessions.get_mut(slot) {
                c.session.handle_client_datagram(
                    payload,
                    now,
                    &mut self.session_ops,
                    &mut ctx.counters,
                );
            }
            self.after_session(ctx, slot, now);
            return;
        }
        // A new client.
        if ctx.mode != Mode::Running || removed {
            self.drop_datagram(ctx, index, DropReason::Draining, payload.bid);
            return;
        }
        if let Err(why) = self.admit_transparent(ctx, index, route, &key, now) {
            self.drop_datagram(ctx, index, why, payload.bid);
            return;
        }
        match self.make_room(ctx, index, key.client, now) {
            Ok(()) => self.open_session(ctx, index, route, payload, key, now),
            Err(why) => self.drop_datagram(ctx, index, why, payload.bid),
        }
    }

    /// Admission of a new client (see `udp::admission`). The rate limit is
    /// asked only once the table would take the client, and a session is
    /// evicted only once the client has passed the rate limit too.
    fn make_room(
        &mut self,
        ctx: &mut Ctx,
        index: u32,
        client: SocketAddr,
        now: Millis,
    ) -> Result<(), DropReason> {
        if !ctx.fd_room(1) {
            return Err(DropReason::SessionLimit); // no descriptor for its socket
        }
        let Some(l) = self.udp_listeners.get_mut(index as usize) else {
            return Err(DropReason::SessionLimit);
        };
        let decision = admission(l.active, l.spec.limit, l.embryonic.count());
        if decision == Admission::Refuse {
            if ctx.log.allow(now, ctx.shard) {
                info!(shard = ctx.shard, listener = %l.spec.name, limit = l.spec.limit, client = %client, "new UDP session refused: this shard's share of max_sessions is held by sessions their upstream answered (raise max_sessions)");
            }
            return Err(DropReason::SessionLimit);
        }
        if let Some(lim) = &mut l.limiter
            && !lim.allow(client.ip(), now)
        {
            return Err(DropReason::RateLimit);
        }
        if decision == Admission::EvictEmbryonic && !self.evict_embryonic(ctx, index, now) {
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
    fn evict_embryonic(&mut self, ctx: &mut Ctx, index: u32, now: Millis) -> bool {
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
        self.counters(ctx, index).inc(Counter::UdpEvictEmbryonic);
        self.after_session(ctx, slot, now);
        true
    }

    fn open_session(
        &mut self,
        ctx: &mut Ctx,
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
            self.release_datagram(ctx, payload.bid);
            return;
        };
        let transparent = r.transparent.is_some().then_some(key.orig_dst).flatten();
        let target = match transparent {
            // Where its client sent it (admitted by `admit_transparent`).
            Some(addr) => Target {
                upstream: None,
                addr,
            },
            None => {
                let mut walk = Attempts::default();
                let Some(picked) = l.balancer.pick(Some(key.client), &mut walk, now) else {
                    self.release_datagram(ctx, payload.bid);
                    return;
                };
                if picked.pool == Pool::AllDown {
                    l.counters.inc(Counter::AllDown);
                }
                picked.target
            }
        };
        let member = l.balancer.index_of(target).unwrap_or(usize::MAX);
        let cfg = SessionConfig {
            idle_ms: r.idle_ms,
            max_responses: r.max_responses,
            cap: session_cap(self.dgram.total()),
        };
        let mut session = Session::new(cfg, now);
        session.start(&mut self.session_ops);
        session.handle_client_datagram(payload, now, &mut self.session_ops, &mut l.counters);
        let tproxy = transparent.map(|dst| tproxy::TproxyConn::open(dst, &mut self.session_ops));
        let proxy_header = r.send_proxy.then(|| {
            // A transparent client reached its original destination.
            let local = key.orig_dst.unwrap_or(SocketAddr::new(
                key.local.unwrap_or(l.spec.listen.ip()),
                l.spec.listen.port(),
            ));
            let mut h = [0u8; 52];
            let n = proxy_header::write_v2(ProxyProto::Udp, key.client, local, &mut h);
            (h, u8::try_from(n).unwrap_or(0))
        });
        let conn = UdpConn {
            session,
            target,
            member,
            proxy_header,
            listener: index,
            client: key.client,
            local: key.local,
            fd: None,
            timer_at: None,
            in_embryonic: true,
            drops: KernelDrops::default(),
            epoch: l.epoch,
            rcvbuf: r.session_rcvbuf,
            tproxy,
        };
        let fds = 1 + u32::from(transparent.is_some());
        match self.sessions.insert(conn) {
            Some(slot) => {
                l.sessions.insert(key, slot);
                l.active += 1;
                l.replies += fds - 1;
                ctx.fds.sessions += fds;
                let sessions = &self.sessions;
                l.embryonic
                    .push(slot, |s| sessions.get(*s).is_some_and(|c| c.in_embryonic));
                l.counters.inc(Counter::UdpSessionsCreated);
                self.after_session(ctx, slot, now);
            }
            None => {
                self.session_ops.clear();
                self.drop_datagram(ctx, index, DropReason::SessionLimit, payload.bid);
            }
        }
    }

    fn on_session_cqe(
        &mut self,
        ctx: &mut Ctx,
        token: Token,
        res: i32,
        flags: u32,
        meta: Option<DatagramMeta>,
        now: Millis,
    ) {
        let slot = SessionId(token.slot);
        let Some(c) = self.sessions.get_mut(slot) else {
            self.udp_stale(ctx, token, res, flags);
            return;
        };
        if token.kind.is_tproxy() {
            self.on_reply_cqe(ctx, token, res, flags, meta, now);
            return;
        }
        let out = &mut self.session_ops;
        let stats = match self.udp_listeners.get_mut(c.listener as usize) {
            Some(l) => &mut l.counters,
            None => &mut ctx.counters,
        };
        let s = &mut c.session;
        match token.kind {
            OpKind::UdpUpRecv => {
                if let Some(reading) = meta.and_then(|m| m.drops) {
                    let n = c.drops.observe(reading);
                    stats.udp_drops(DropReason::RcvbufU2c, u64::from(n));
                }
                let more = flags & CQE_F_MORE != 0;
                let ev = recv_event(res, flags, meta, &mut self.dgram, out);
                s.handle_upstream_recv(ev, more, now, out, stats);
            }
            OpKind::UdpUpSend => {
                // The PROXY header is not the client's payload.
                let header = c.proxy_header.map_or(0, |(_, n)| u32::from(n));
                let res = result(res).map(|n| n.saturating_sub(header));
                s.handle_sent_up(token.aux, res, out, stats)
            }
            OpKind::UdpReplySend => s.handle_sent_client(token.aux, result(res), out, stats),
            OpKind::UdpSocket => {
                if res >= 0 {
                    c.fd = Some(Fd(res));
                }
                s.handle_socket(unit(res), out);
            }
            OpKind::UdpConnect => s.handle_connect(unit(res), now, out),
            OpKind::UdpCancel => s.handle_cancel(out),
            OpKind::UdpClose => s.handle_close(),
            _ => {
                ctx.counters.inc(Counter::StaleCompletions);
                debug!(shard = ctx.shard, kind = ?token.kind, "unexpected UDP completion kind");
            }
        }
        self.after_session(ctx, slot, now);
    }

    /// Lowers the session's requests to ring operations, unmaps a closing
    /// session (so its client's next datagram starts a new one), frees a
    /// finished one, or reschedules its idle timer.
    fn after_session(&mut self, ctx: &mut Ctx, slot: SessionId, now: Millis) {
        let Some(c) = self.sessions.get_mut(slot) else {
            self.session_ops.clear();
            return;
        };
        let Some(l) = self.udp_listeners.get_mut(c.listener as usize) else {
            self.session_ops.clear();
            return;
        };
        let rcvbuf = c.rcvbuf;
        let listener_fd = Fd(l.spec.fd);
        if c.session.is_closing()
            && let Some(t) = c.tproxy.as_mut()
        {
            t.reply.begin_close(&mut self.session_ops);
        }
        for op in self.session_ops.drain(..) {
            let lowered = match op {
                SessionOp::Release(bid) => {
                    self.dgram.give();
                    Op::ReleaseDatagram { bid }
                }
                SessionOp::Starved => {
                    self.udp_starved.push_back(UdpWaiter::Session(slot));
                    continue;
                }
                other => match lower_session_op(other, c, slot, listener_fd, rcvbuf) {
                    Some(op) => op,
                    None => continue,
                },
            };
            ctx.push(lowered);
        }
        if c.in_embryonic && !c.session.is_embryonic() {
            c.in_embryonic = false;
            l.embryonic.leave();
        }
        if c.session.is_closing() {
            let key = SessionKey {
                client: c.client,
                local: c.local,
                orig_dst: c.tproxy.as_ref().map(|t| t.orig_dst),
            };
            l.sessions.remove(&key, slot);
        }
        let reply_open = c.tproxy.as_ref().is_some_and(|t| !t.reply.is_finished());
        if !c.session.is_finished() || reply_open {
            if let Some(d) = c.session.deadline()
                && c.timer_at.is_none_or(|t| d < t)
            {
                c.timer_at = Some(d);
                ctx.timers.insert(
                    d,
                    TimerKey::Session {
                        id: slot,
                        deadline: d,
                    },
                );
            }
            return;
        }
        l.active = l.active.saturating_sub(1);
        let Some(c) = self.sessions.remove(slot) else {
            return;
        };
        ctx.release_session_fd();
        if c.tproxy.is_some() {
            ctx.release_session_fd();
            l.replies = l.replies.saturating_sub(1);
        }
        let end = c.session.end().unwrap_or(SessionEnd::Error);
        l.counters.udp_end(end);
        session_health(ctx, l, &c, end, now);
        log_session_end(ctx, &c, end, &l.spec.name, now);
        if let Some(access) = ctx.access.as_mut() {
            log_access(access, &c, end, &l.spec, now);
        }
        self.close_idle_udp_listeners(ctx);
    }

    pub fn session_timer(&mut self, ctx: &mut Ctx, slot: SessionId, deadline: Millis, now: Millis) {
        let Some(c) = self.sessions.get_mut(slot) else {
            return;
        };
        if c.timer_at != Some(deadline) {
            return; // superseded by an earlier entry
        }
        c.timer_at = None;
        c.session.handle_timeout(now, &mut self.session_ops);
        self.after_session(ctx, slot, now);
    }

    /// Re-arms starved datagram receives while the datagram ring has buffers
    /// (listeners first). Each one has a datagram waiting, so it either takes
    /// a buffer — a completion that brings us back here — or starves again.
    pub fn wake_udp_starved(&mut self, ctx: &mut Ctx, now: Millis) {
        let mut free = self.dgram.free();
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
                        let serving = self
                            .udp_listeners
                            .get(index as usize)
                            .is_some_and(|l| l.role == Role::Serving);
                        if (ctx.mode == Mode::Running && serving)
                            || self
                                .udp_listeners
                                .get(index as usize)
                                .is_some_and(|l| l.active > 0)
                        {
                            self.arm_udp_listener(ctx, index);
                        } else if let Some(l) = self.udp_listeners.get_mut(index as usize) {
                            l.recv = ListenRecv::Idle;
                        }
                        free -= 1;
                    }
                }
                UdpWaiter::Session(slot) => {
                    if let Some(c) = self.sessions.get_mut(slot) {
                        c.session.handle_buffers(&mut self.session_ops);
                        if let Some(t) = c.tproxy.as_mut() {
                            t.reply.handle_buffers(&mut self.session_ops);
                        }
                        free -= 1;
                        self.after_session(ctx, slot, now);
                    }
                }
                UdpWaiter::Assoc(id) => {
                    if self.wake_assoc(ctx, id) {
                        free -= 1;
                    }
                }
            }
        }
        self.close_idle_udp_listeners(ctx);
    }

    /// Draining: each session ends once it owes its client no reply, or has
    /// been quiet for the drain grace (`udp::session::DRAIN_GRACE_MS`).
    pub fn drain_udp_sessions(&mut self, ctx: &mut Ctx, now: Millis) {
        for slot in self.sessions.ids() {
            if let Some(c) = self.sessions.get_mut(slot) {
                c.session.handle_drain(now, &mut self.session_ops);
            }
            self.after_session(ctx, slot, now);
        }
        self.close_idle_udp_listeners(ctx);
    }

    /// Shutdown: end every session now.
    pub fn stop_sessions(&mut self, ctx: &mut Ctx, now: Millis) {
        for slot in self.sessions.ids() {
            if let Some(c) = self.sessions.get_mut(slot) {
                c.session.abort(SessionEnd::Shutdown, &mut self.session_ops);
            }
            self.after_session(ctx, slot, now);
        }
        self.stop_associations(ctx, now);
        self.close_idle_udp_listeners(ctx);
    }

    /// While draining or stopping, or once a reload removed it: a UDP
    /// listener with no session left (echo: no reply in flight) stops
    /// receiving and closes. Forwarding listeners stay open while sessions
    /// remain, since replies leave through them.
    pub fn close_idle_udp_listeners(&mut self, ctx: &mut Ctx) {
        let running = ctx.mode == Mode::Running;
        if running && self.udp_listeners.iter().all(|l| l.role == Role::Serving) {
            return;
        }
        for i in 0..self.udp_listeners.len() {
            let index = i as u32;
            let Some(l) = self.udp_listeners.get_mut(i) else {
                continue;
            };
            if (running && l.role == Role::Serving) || l.active > 0 || l.echo_inflight > 0 {
                continue;
            }
            match l.recv {
                ListenRecv::Armed => {
                    l.recv = ListenRecv::Cancelling;
                    ctx.push_own(Op::CancelOne {
                        token: listener_token(OpKind::UdpListenCancel, index).encode(),
                        target: listener_token(OpKind::UdpListenRecv, index).encode(),
                    });
                }
                ListenRecv::Starved | ListenRecv::Backoff | ListenRecv::Idle => {
                    l.recv = ListenRecv::CloseInFlight;
                    ctx.push_own(Op::Close {
                        token: listener_token(OpKind::UdpListenClose, index).encode(),
                        fd: Fd(l.spec.fd),
                        linger0: false,
                    });
                }
                ListenRecv::Cancelling | ListenRecv::CloseInFlight | ListenRecv::Closed => {}
            }
        }
    }
}

/// A multishot recvmsg completion as a datagram event; the buffer it
/// carries is counted as taken from the datagram ring.
fn recv_event(
    res: i32,
    flags: u32,
    meta: Option<DatagramMeta>,
    dgram: &mut Held,
    out: &mut Vec<SessionOp>,
) -> DatagramEvent {
    match (res, buffer_id(flags)) {
        (r, Some(bid)) if r > 0 => {
            dgram.take();
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
                dgram.take();
                out.push(SessionOp::Release(bid));
            }
            match -r {
                libc::ENOBUFS => DatagramEvent::NoBuffers,
                libc::ECANCELED => DatagramEvent::Cancelled,
                e if r < 0 => DatagramEvent::Error(e),
                _ => DatagramEvent::Error(libc::EIO),
            }
        }
    }
}

/// Lowers one operation of session `slot` (not `Release`/`Starved`, which
/// the caller accounts) to a ring operation on its socket, or its failure
/// (EBADF) when the socket is absent, so the session's accounting stays exact.
fn lower_session_op(
    op: SessionOp,
    c: &mut UdpConn,
    slot: SessionId,
    listener_fd: Fd,
    rcvbuf: Option<u32>,
) -> Option<Op> {
    if c.tproxy.is_some()
        && matches!(
            op,
            SessionOp::SendClient(_)
                | SessionOp::OpenReply
                | SessionOp::ArmReplyRecv
                | SessionOp::CancelReplyRecv
                | SessionOp::CloseReply
        )
    {
        return tproxy::lower(op, c, slot);
    }
    let tok = |kind| Token::new(kind, Side::Upstream, slot.0);
    // An operation on the session's socket, or its failure when the
    // socket is absent (EBADF: the session's accounting stays exact).
    let on_fd = |token: Token, fd: Option<Fd>, f: &dyn Fn(u64, Fd) -> Op| match fd {
        Some(fd) => f(token.encode(), fd),
        None => Op::Fail {
            token: token.encode(),
            errno: libc::EBADF,
        },
    };
    Some(match op {
        SessionOp::OpenSocket => Op::UdpSocket {
            token: tok(OpKind::UdpSocket).encode(),
            family: Family::of(c.target.addr),
        },
        SessionOp::Connect => {
            let addr = c.target.addr;
            on_fd(tok(OpKind::UdpConnect), c.fd, &|token, fd| Op::UdpConnect {
                token,
                fd,
                addr,
                rcvbuf,
            })
        }
        SessionOp::ArmRecv => on_fd(tok(OpKind::UdpUpRecv), c.fd, &|token, fd| {
            Op::UdpRecvMulti {
                token,
                fd,
                template: RecvTemplate::Upstream,
            }
        }),
        SessionOp::SendUp(p) => on_fd(
            tok(OpKind::UdpUpSend).with_aux(p.bid),
            c.fd,
            &|token, fd| match c.proxy_header {
                Some((header, header_len)) => Op::SendDatagramProxied {
                    token,
                    fd,
                    bid: p.bid,
                    offset: p.offset,
                    len: p.len,
                    header,
                    header_len,
                },
                None => Op::SendDatagram {
                    token,
                    fd,
                    bid: p.bid,
                    offset: p.offset,
                    len: p.len,
                },
            },
        ),
        SessionOp::SendClient(p) => Op::SendDatagramTo {
            token: tok(OpKind::UdpReplySend).with_aux(p.bid).encode(),
            fd: listener_fd,
            bid: p.bid,
            offset: p.offset,
            len: p.len,
            dest: c.client,
            local: c.local,
        },
        // Accounted by the caller; the reply socket's are lowered above.
        SessionOp::Release(_)
        | SessionOp::Starved
        | SessionOp::OpenReply
        | SessionOp::ArmReplyRecv
        | SessionOp::CancelReplyRecv
        | SessionOp::CloseReply => return None,
        SessionOp::CancelRecv => Op::CancelOne {
            token: tok(OpKind::UdpCancel).encode(),
            target: tok(OpKind::UdpUpRecv).encode(),
        },
        SessionOp::Close => close_or_fail(tok(OpKind::UdpClose).encode(), c.fd.take()),
    })
}

/// One access log line for an ended session.
/// Closes a session's socket; one that was never made completes at once
/// with EBADF, so the session's accounting stays exact.
pub(super) fn close_or_fail(token: u64, fd: Option<Fd>) -> Op {
    match fd {
        Some(fd) => Op::Close {
            token,
            fd,
            linger0: false,
        },
        None => Op::Fail {
            token,
            errno: libc::EBADF,
        },
    }
}

fn log_access(
    access: &mut AccessLogShard,
    c: &UdpConn,
    end: SessionEnd,
    listener: &UdpListenerSpec,
    now: Millis,
) {
    let moved = c.session.moved();
    // A transparent client's destination is the one it wrote to.
    let destination = c.tproxy.as_ref().map(|t| t.orig_dst.to_string());
    let local = match &c.tproxy {
        Some(t) => t.orig_dst,
        None => SocketAddr::new(
            c.local.unwrap_or(listener.listen.ip()),
            listener.listen.port(),
        ),
    };
    access.log(&AccessRecord {
        time: SystemTime::now(),
        listener: &listener.name,
        proto: AccessProto::Udp {
            datagrams_c2u: moved.datagrams_c2u,
            datagrams_u2c: moved.datagrams_u2c,
        },
        client: c.client,
        peer: c.client,
        local,
        // A datagram sent is as far as UDP "reaches" an upstream.
        upstream: (moved.datagrams_c2u > 0).then_some(c.target.addr),
        sni: None,
        connect_ms: None,
        duration_ms: now.saturating_sub(c.session.started()),
        bytes_c2u: moved.bytes_c2u,
        bytes_u2c: moved.bytes_u2c,
        reason: end.name(),
        destination: destination.as_deref(),
        user: None,
    });
}

/// Logs a freed session's end (errors rate-limited).
/// A session's end as its upstream's health sees it: an ICMP refusal or a
/// socket error is a failed attempt, a reply a success; and the session no
/// longer counts as active on its upstream.
fn session_health(ctx: &mut Ctx, l: &mut UdpListener, c: &UdpConn, end: SessionEnd, now: Millis) {
    if c.epoch == l.epoch {
        l.balancer.release(c.member);
    }
    let outcome = match end {
        SessionEnd::Refused => Outcome::Refused,
        SessionEnd::Error => Outcome::Error,
        _ if !c.session.is_embryonic() => Outcome::Connected,
        _ => return,
    };
    let Some(change) = l.balancer.report(c.target, outcome, now) else {
        return;
    };
    match change {
        Change::Ejected { .. } => l.counters.inc(Counter::UpstreamEjected),
        Change::Restored => l.counters.inc(Counter::UpstreamRestored),
        Change::TrialFailed => {}
    }
    if ctx.log.allow(now, ctx.shard) {
        let (message, reason) = change.describe(ctx.shard, l.balancer.fail_ms());
        info!(shard = ctx.shard, listener = %l.spec.name, upstream = %c.target.addr, reason, "{message}");
    }
}

fn log_session_end(ctx: &mut Ctx, c: &UdpConn, end: SessionEnd, name: &str, now: Millis) {
    let upstream = c.target.addr;
    match end {
        SessionEnd::Idle
        | SessionEnd::Responses
        | SessionEnd::Shutdown
        | SessionEnd::Drained
        | SessionEnd::Evicted
        | SessionEnd::ControlClosed => {
            debug!(shard = ctx.shard, listener = %name, client = %c.client, upstream = %upstream, end = end.name(), "UDP session ended");
        }
        SessionEnd::Refused | SessionEnd::Error => {
            if ctx.log.allow(now, ctx.shard) {
                let error = c
                    .session
                    .last_errno()
                    .map(|e| std::io::Error::from_raw_os_error(e).to_string());
                info!(shard = ctx.shard, listener = %name, client = %c.client, upstream = %upstream, end = end.name(), error = error.as_deref().unwrap_or("-"), "UDP session ended");
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
