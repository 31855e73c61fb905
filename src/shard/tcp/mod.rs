//! The TCP service of a shard: its listeners (accepting, see `accept`), its
//! connections (forwarding relays and the built-in servers, see `conn`),
//! their upstreams and balancers, the stream buffer ring's accounting and the
//! pipe pool. It turns completions into state-machine inputs and the state
//! machines' `ConnOp`s into `Op`s (`lower`). No I/O.

mod accept;
mod associate;
mod conn;
mod gate;
mod health;
mod lower;
mod reload;
mod resolve;
mod watch;

use std::collections::VecDeque;
use std::net::SocketAddr;

use tracing::{debug, info, warn};

use self::accept::AcceptState;
use self::conn::{Conn, Logic};
use self::gate::{Gate, Refusal};
pub use self::gate::{GateSpec, RateSpec};
pub use self::reload::{ReloadListener, ShardReload};
use super::buffers::Held;
use super::context::{Ctx, Mode};
use super::ops::{Fd, Op, PipeFds, StreamProto, buffer_id};
use super::pipes::{PipePool, PipeSlot};
use super::slab::{ConnId, Slab};
use super::token::{OpKind, Token};
use crate::accesslog::{AccessLogShard, AccessRecord, Proto as AccessProto};
use crate::config::Cidr;
use crate::config::forward::TransparentMode;
use crate::config::{Balance, PassiveHealth};
use crate::front::sni::SniRoutes;
use crate::stats::{
    CloseReason, Counter, Counters, Histogram, ListenerStats, ShardStats, UpstreamStats,
};
use crate::tcp::cx::Cx;
use crate::tcp::echo::Echo;
use crate::tcp::front::FrontConfig;
use crate::tcp::handshake::NamedSpec;
use crate::tcp::lifecycle::{Lifecycle, SockState};
use crate::tcp::relay::{Ends, ProxyOut, Relay, RelayConfig};
use crate::tcp::serve::{ServeMode, Server};
use crate::tcp::splice::SpliceConfig;
use crate::tcp::{ConnOp, FrontRead, Side};
use crate::time::Millis;
use crate::upstream::{Balancer, Member, Target, UpstreamId};
use std::time::SystemTime;

/// What a listener serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ListenerKind {
    /// Relay to the upstreams of route `route`.
    Forward {
        route: u16,
    },
    Echo,
    /// `ringfwd echo --tcp-sink`: receive and discard.
    EchoSink,
    /// `ringfwd echo --tcp-source`: send the periodic stream until the client's FIN.
    EchoSource,
    /// `ringfwd echo --tcp-rr`: `response` bytes of the periodic stream for
    /// every complete `request` bytes received.
    EchoRr {
        request: u32,
        response: u32,
    },
}

impl ListenerKind {
    /// The server mode of a sink, source or request/response listener.
    pub fn serve_mode(self) -> Option<ServeMode> {
        match self {
            ListenerKind::EchoSink => Some(ServeMode::Sink),
            ListenerKind::EchoSource => Some(ServeMode::Source),
            ListenerKind::EchoRr { request, response } => {
                Some(ServeMode::RequestResponse { request, response })
            }
            ListenerKind::Forward { .. } | ListenerKind::Echo => None,
        }
    }

    /// Descriptors one connection of this listener holds.
    pub fn descriptors(self) -> u32 {
        match self {
            ListenerKind::Forward { .. } => 2,
            ListenerKind::Echo
            | ListenerKind::EchoSink
            | ListenerKind::EchoSource
            | ListenerKind::EchoRr { .. } => 1,
        }
    }

    /// Whether connections of this listener send from the periodic region (so
    /// the shard must register it).
    pub fn sends_region(self) -> bool {
        self.serve_mode().is_some_and(ServeMode::sends)
    }
}

/// A listener this shard owns (its own SO_REUSEPORT socket).
#[derive(Clone, Debug)]
pub struct ListenerSpec {
    pub name: String,
    pub fd: std::os::fd::RawFd,
    pub kind: ListenerKind,
    /// This shard's share of max_connections.
    pub limit: u32,
    /// What its connections read before connecting, and send first.
    pub front: FrontSpec,
}

/// A forward listener's front stage and what goes to its upstreams first.
#[derive(Clone, Debug, Default)]
pub struct FrontSpec {
    /// The prefixes read before connecting (PROXY header, ClientHello).
    pub read: FrontConfig,
    /// `accept_proxy`: the sources allowed to send a PROXY header; any other
    /// client is closed at accept.
    pub trusted: Vec<Cidr>,
    /// SNI routes: server name → route.
    pub sni: Option<SniSpec>,
    pub send_proxy: ProxyOut,
    /// Read each accepted socket's peer and local address (for
    /// `trusted_proxies`, `send_proxy`, the access log, `allow`/`deny` and
    /// the per-source rate).
    pub wants_ends: bool,
    /// `allow`/`deny` and the new-connection rates, checked on accept.
    pub gate: GateSpec,
    /// The client names its destination (SOCKS5, HTTP CONNECT) or dialled
    /// it (transparent): the kind, users and destination policy.
    pub named: Option<std::sync::Arc<NamedSpec>>,
    /// `transparent`: where the destination is read at accept.
    pub transparent: Option<TransparentMode>,
}

/// SNI routing of one listener: the matcher and, by its route index, the
/// shard route each name goes to.
#[derive(Clone, Debug)]
pub struct SniSpec {
    pub names: SniRoutes,
    pub routes: Vec<u16>,
}

/// A forwarding route: its upstreams and timeouts, in state-machine units.
#[derive(Clone, Debug)]
pub struct RouteSpec {
    pub upstreams: Vec<SocketAddr>,
    /// Parallel to `upstreams`.
    pub weights: Vec<u32>,
    pub balance: Balance,
    pub passive: PassiveHealth,
    pub connect_timeout_ms: Millis,
    pub idle_ms: Millis,
    pub half_close_ms: Millis,
    /// `bandwidth_limit`: bytes per second, per connection and direction.
    pub bandwidth: Option<u64>,
    /// `upstream_mptcp`: the protocol upstream sockets are made with
    /// (resolved at start: MPTCP only when the kernel makes it).
    pub upstream_proto: StreamProto,
}

/// What the TCP service is built from.
#[derive(Clone, Debug, Default)]
pub(crate) struct TcpConfig {
    pub buffers: u32,
    pub cap: u32,
    pub listeners: Vec<ListenerSpec>,
    pub routes: Vec<RouteSpec>,
    /// Which relay directions splice, and how.
    pub splice: SpliceConfig,
    /// The shard's pipes (its `max_pipes`); none: nothing splices.
    pub pipes: Vec<PipeFds>,
}

/// A listener slot's place in the configuration.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Role {
    Serving,
    /// Removed by a reload: not accepting; its connections are closed at
    /// `until` (drain_timeout after the reload) if they have not ended;
    /// freed after the last.
    Retired {
        until: Millis,
    },
    /// Unused: a later added listener may take it.
    Free,
}

/// A route slot's place in the configuration.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Life {
    /// New connections take it.
    Current,
    /// Replaced by a reload: only connections that picked it use it.
    Retired,
    Free,
}

struct Listener {
    spec: ListenerSpec,
    /// Whether it is in the configuration (see `reload`).
    role: Role,
    gate: Gate,
    accept: AcceptState,
    /// The accept watch (see `watch.rs`).
    watch: watch::Watch,
    active: u32,
    counters: Counters,
    /// Upstream connect time and connection duration (for /metrics).
    connect_time: Histogram,
    duration: Histogram,
}

/// An upstream of one route, with its counters. Its health (passive, and
/// the checker's verdict) is kept by its route's balancer, which skips it
/// while it is down.
struct Upstream {
    /// The name of the listener whose route it belongs to (for its stats
    /// line; a name, as listener slots are reused across reloads).
    listener: String,
    /// Its route, and its index among the route balancer's members.
    route: u16,
    member: usize,
    addr: SocketAddr,
    counters: Counters,
}

/// A route as the shard runs it: its settings and its balancer.
struct Route {
    spec: RouteSpec,
    balancer: Balancer,
    /// Whether new connections take it, or only open ones hold it.
    life: Life,
}

pub(crate) struct TcpService {
    listeners: Vec<Listener>,
    routes: Vec<Route>,
    upstreams: Vec<Upstream>,
    conns: Slab<Conn, ConnId>,
    starved: VecDeque<(ConnId, Side)>,
    /// The state machine's requests being lowered.
    scratch: Vec<ConnOp>,
    /// Names connections asked to resolve, for the engine to hand to the
    /// shard's resolver (`take_lookups`).
    lookups: Vec<(ConnId, String)>,
    /// SOCKS5 UDP associations its connections asked for and control.
    associations: associate::Associations,
    bufs: Held,
    cap: u32,
    splice: SpliceConfig,
    pipes: PipePool,
    /// The counters of listeners and upstreams a reload removed whose last
    /// connection ended (their slots reused): totals never go backwards.
    retired: ShardStats,
    /// The upstream slot of each upstream of the configuration, in the
    /// control thread's order (the health checker's ids).
    current: Vec<UpstreamId>,
}

/// One access log line for a closed connection.
fn log_access(
    access: &mut AccessLogShard,
    listener: &str,
    conn: &Conn,
    closed: &conn::Closed,
    now: Millis,
) {
    let seen = conn.logic.seen();
    let destination = seen.destination.map(|d| d.to_string());
    let unknown = SocketAddr::from(([0, 0, 0, 0], 0));
    let peer = conn.ends.peer.unwrap_or(unknown);
    access.log(&AccessRecord {
        time: SystemTime::now(),
        listener,
        proto: AccessProto::Tcp,
        client: seen.proxied.unwrap_or(peer),
        peer,
        local: conn.ends.local.unwrap_or(unknown),
        upstream: seen.upstream,
        sni: seen.sni,
        connect_ms: seen.connect_ms,
        duration_ms: now.saturating_sub(conn.accepted_at),
        bytes_c2u: closed.bytes.0,
        bytes_u2c: closed.bytes.1,
        reason: closed.reason.name(),
        destination: destination.as_deref(),
        user: seen.user,
    });
}

/// Closes a client the gate turned away, counted and logged (rate-limited).
fn refuse(ctx: &mut Ctx, l: &mut Listener, fd: Fd, ends: Ends, why: Refusal, now: Millis) {
    l.counters.close(why.reason());
    ctx.reject(fd);
    if ctx.log.allow(now, ctx.shard) {
        let peer = ends
            .peer
            .map_or_else(|| "unknown".to_owned(), |p| p.to_string());
        info!(shard = ctx.shard, listener = %l.spec.name, peer, "{}", why.advice());
    }
}

/// A shard's seed for its balancers' random draws (see `shard_seed`).
fn balance_seed(shard: usize) -> u64 {
    let nanos = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    crate::upstream::shard_seed(shard, nanos)
}

/// Whether a client may send a PROXY header: always when the listener does
/// not accept one (`trusted` empty), else only from a trusted source.
fn trusted(trusted: &[Cidr], peer: Option<SocketAddr>) -> bool {
    if trusted.is_empty() {
        return true;
    }
    peer.is_some_and(|p| {
        let ip = p.ip().to_canonical();
        trusted.iter().any(|c| c.contains(ip))
    })
}

/// The listener each route belongs to (its default route, or one of its
/// SNI routes), by route index.
fn route_owners(listeners: &[ListenerSpec]) -> Vec<Option<u32>> {
    let mut owner: Vec<Option<u32>> = Vec::new();
    let mut set = |route: u16, listener: usize| {
        let r = usize::from(route);
        if owner.len() <= r {
            owner.resize(r + 1, None);
        }
        if let Some(o) = owner.get_mut(r) {
            *o = u32::try_from(listener).ok();
        }
    };
    for (i, l) in listeners.iter().enumerate() {
        if let ListenerKind::Forward { route } = l.kind {
            set(route, i);
        }
        for &route in l.front.sni.iter().flat_map(|s| s.routes.iter()) {
            set(route, i);
        }
    }
    owner
}

impl TcpService {
    pub(crate) fn new(cfg: TcpConfig) -> TcpService {
        let owner = route_owners(&cfg.listeners);
        let listeners: Vec<Listener> = cfg
            .listeners
            .into_iter()
            .map(|spec| Listener {
                gate: Gate::new(&spec.front.gate, spec.front.read.proxy_ms.is_some()),
                spec,
                role: Role::Serving,
                accept: AcceptState::Closed,
                watch: watch::Watch::default(),
                active: 0,
                counters: Counters::default(),
                connect_time: Histogram::default(),
                duration: Histogram::default(),
            })
            .collect();
        let mut upstreams = Vec::new();
        let mut routes = Vec::new();
        for (i, spec) in cfg.routes.into_iter().enumerate() {
            let listener = owner
                .get(i)
                .copied()
                .flatten()
                .and_then(|l| listeners.get(l as usize))
                .map_or_else(String::new, |l: &Listener| l.spec.name.clone());
            let route = u16::try_from(i).unwrap_or(u16::MAX);
            let members: Vec<Member> = spec
                .upstreams
                .iter()
                .enumerate()
                .map(|(member, &addr)| {
                    let id = UpstreamId(upstreams.len() as u32);
                    upstreams.push(Upstream {
                        listener: listener.clone(),
                        route,
                        member,
                        addr,
                        counters: Counters::default(),
                    });
                    Member {
                        target: Target {
                            upstream: Some(id),
                            addr,
                        },
                        weight: spec.weights.get(member).copied().unwrap_or(1),
                    }
                })
                .collect();
            let balancer = Balancer::new(&members, spec.balance, spec.passive);
            routes.push(Route {
                spec,
                balancer,
                life: Life::Current,
            });
        }
        let splice = if cfg.pipes.is_empty() {
            SpliceConfig::OFF
        } else {
            cfg.splice
        };
        TcpService {
            listeners,
            routes,
            conns: Slab::default(),
            starved: VecDeque::new(),
            scratch: Vec::with_capacity(16),
            lookups: Vec::new(),
            associations: associate::Associations::default(),
            bufs: Held::new(cfg.buffers),
            cap: cfg.cap,
            splice,
            pipes: PipePool::new(&cfg.pipes),
            current: (0..upstreams.len() as u32).map(UpstreamId).collect(),
            retired: ShardStats::default(),
            upstreams,
        }
    }

    pub(crate) fn connections(&self) -> usize {
        self.conns.len()
    }

    pub(crate) fn held_buffers(&self) -> u32 {
        self.bufs.held()
    }

    pub(crate) fn is_live(&self, id: ConnId) -> bool {
        self.conns.get(id).is_some()
    }

    /// Pipes in the pool, and how many of them are not lent.
    pub(crate) fn pipes(&self) -> (usize, usize) {
        let free = self.pipes.count(|s| matches!(s, PipeSlot::Free(_)));
        (self.pipes.len(), free)
    }

    pub(crate) fn restore_pipe(&mut self, ctx: &Ctx, pipe: u16, fds: Option<PipeFds>) {
        if fds.is_none() {
            warn!(
                shard = ctx.shard,
                pipe, "a discarded pipe could not be replaced; the shard has one pipe fewer"
            );
        }
        self.pipes.restore(pipe, fds);
    }

    /// Closed listeners, no connection: nothing left for a drain to wait for.
    pub(crate) fn is_done(&self) -> bool {
        self.conns.is_empty()
            && self
                .listeners
                .iter()
                .all(|l| l.accept == AcceptState::Closed)
    }

    /// Arms accept on every listener (and seeds the balancers: each shard
    /// its own random sequence).
    pub(crate) fn start(&mut self, ctx: &mut Ctx) {
        let seed = balance_seed(ctx.shard);
        for (i, r) in self.routes.iter_mut().enumerate() {
            r.balancer
                .seed(seed ^ (i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15));
        }
        for i in 0..self.listeners.len() {
            self.arm_accept(ctx, i as u32);
        }
    }

    /// A completion of a TCP operation.
    pub(crate) fn handle(
        &mut self,
        ctx: &mut Ctx,
        token: Token,
        res: i32,
        flags: u32,
        now: Millis,
    ) {
        match token.kind {
            OpKind::Accept => {
                self.on_accept(ctx, token.slot.index, res, flags, Ends::default(), now)
            }
            OpKind::CancelAccept | OpKind::Reject => ctx.own_done(),
            OpKind::ListenQueue => self.on_listen_queue(ctx, token.slot.index, res, now),
            OpKind::CloseListener => {
                ctx.own_done();
                if let Some(l) = self.listeners.get_mut(token.slot.index as usize) {
                    l.accept = AcceptState::Closed;
                }
            }
            _ => self.on_conn_cqe(ctx, token, res, flags, now),
        }
    }

    /// Whether listener `index` wants the accepted socket's endpoints read
    /// (the event loop reads them before `handle_accept`).
    pub(crate) fn wants_ends(&self, index: u32) -> bool {
        self.listeners
            .get(index as usize)
            .is_some_and(|l| l.spec.front.wants_ends)
    }

    /// An accept completion with the accepted socket's endpoints.
    pub(crate) fn handle_accept(
        &mut self,
        ctx: &mut Ctx,
        token: Token,
        res: i32,
        flags: u32,
        ends: Ends,
        now: Millis,
    ) {
        self.on_accept(ctx, token.slot.index, res, flags, ends, now);
    }

    /// A front receive's completion; `bytes` is the event loop's view of
    /// what it received (copied by the relay, the buffer goes straight back).
    pub(crate) fn handle_front(
        &mut self,
        ctx: &mut Ctx,
        token: Token,
        res: i32,
        flags: u32,
        bytes: Option<&[u8]>,
        now: Millis,
    ) {
        let id = ConnId(token.slot);
        let Some(conn) = self.conns.get_mut(id) else {
            self.stale(ctx, token.kind, res, flags);
            return;
        };
        if let Some(bid) = buffer_id(flags) {
            self.bufs.take();
            self.scratch.push(ConnOp::Release(bid));
        }
        let ev = match (res, bytes) {
            (r, Some(b)) if r > 0 => FrontRead::Data(b),
            (r, None) if r > 0 => FrontRead::Error(libc::EIO),
            (0, _) => FrontRead::Eof,
            (r, _) if -r == libc::ENOBUFS => FrontRead::NoBuffers,
            (r, _) if -r == libc::ECANCELED => FrontRead::Cancelled,
            (r, _) => FrontRead::Error(-r),
        };
        let Some(l) = self.listeners.get_mut(conn.listener as usize) else {
            return;
        };
        // Accounted as every other completion is (see `conn::done_of`).
        if let Some(done) = conn::done_of(OpKind::FrontRecv, Side::Client, false) {
            conn.life.complete(done);
        }
        let mut cx = Cx::new(&mut self.scratch, &mut conn.life, &mut l.counters, now);
        conn.logic.handle_front(ev, &mut cx);
        self.after_conn(ctx, id, now);
    }

    /// A completion whose owner is gone. Whatever the kernel handed over with
    /// it (a buffer, a descriptor) is given back so nothing leaks.
    pub(crate) fn stale(&mut self, ctx: &mut Ctx, kind: OpKind, res: i32, flags: u32) {
        ctx.counters.inc(Counter::StaleCompletions);
        if let Some(bid) = buffer_id(flags) {
            ctx.push(Op::Release { bid });
        }
        if matches!(kind, OpKind::Socket | OpKind::Accept) && res >= 0 {
            ctx.reject(Fd(res));
        }
        debug!(
            shard = ctx.shard,
            ?kind,
            res,
            "dropped a completion for a freed slot"
        );
    }

    fn on_conn_cqe(&mut self, ctx: &mut Ctx, token: Token, res: i32, flags: u32, now: Millis) {
        if token.kind == OpKind::Socket && res < 0 && accept::is_out_of_fds(-res) {
            self.pause_all_out_of_fds(ctx, -res, now);
        }
        let id = ConnId(token.slot);
        let Some(conn) = self.conns.get_mut(id) else {
            self.stale(ctx, token.kind, res, flags);
            return;
        };
        if token.kind == OpKind::Recv && buffer_id(flags).is_some() {
            self.bufs.take();
            if res <= 0 {
                // A buffer on a completion without data: straight back.
                if let Some(bid) = buffer_id(flags) {
                    self.scratch.push(ConnOp::Release(bid));
                }
            }
        }
        if token.kind == OpKind::Socket && res >= 0 {
            conn.fds[Side::Upstream.index()] = Some(Fd(res));
            conn.life.set_state(Side::Upstream, SockState::Open);
        }
        let Some(l) = self.listeners.get_mut(conn.listener as usize) else {
            return;
        };
        let mut cx = Cx::new(&mut self.scratch, &mut conn.life, &mut l.counters, now);
        if let Err(kind) = conn
            .logic
            .handle(token.kind, token.side, res, flags, &mut cx)
        {
            // Cannot happen: a server connection never issues connect/socket/discard.
            ctx.counters.inc(Counter::StaleCompletions);
            debug!(shard = ctx.shard, ?kind, res, "unexpected completion kind");
        }
        self.after_conn(ctx, id, now);
    }

    fn admit(&mut self, ctx: &mut Ctx, index: u32, fd: Fd, ends: Ends, now: Millis) {
        let Some(l) = self.listeners.get_mut(index as usize) else {
            ctx.reject(fd);
            return;
        };
        if !trusted(&l.spec.front.trusted, ends.peer) {
            l.counters.close(CloseReason::ProxyUntrusted);
            ctx.reject(fd);
            if ctx.log.allow(now, ctx.shard) {
                let peer = ends
                    .peer
                    .map_or_else(|| "unknown".to_owned(), |p| p.to_string());
                info!(
                    shard = ctx.shard,
                    listener = %l.spec.name,
                    peer,
                    "connection closed at accept: accept_proxy is on and the client is not in trusted_proxies (counted in close_proxy_untrusted); add its address to trusted_proxies if it is a proxy of yours"
                );
            }
            return;
        }
        if !l.gate.within_rates(ends.peer, now) {
            refuse(ctx, l, fd, ends, Refusal::RateLimited, now);
            return;
        }
        let logic = match l.spec.kind {
            ListenerKind::Forward { route } => {
                let Some(r) = self.routes.get(route as usize) else {
                    ctx.reject(fd);
                    return;
                };
                let cfg = RelayConfig {
                    idle_ms: r.spec.idle_ms,
                    half_close_ms: r.spec.half_close_ms,
                    cap: self.cap,
                    front: l.spec.front.read,
                    send_proxy: l.spec.front.send_proxy,
                    bandwidth: r.spec.bandwidth,
                };
                let mut relay = Relay::with_splice(cfg, self.splice, now);
                relay.set_ends(ends);
                if let Some(access) = l.spec.front.gate.access.as_ref()
                    && l.spec.front.read.proxy_ms.is_some()
                {
                    relay.set_access(access.clone());
                }
                if let Some(named) = &l.spec.front.named {
                    relay.set_named(named.clone());
                    // The address the client dialled: the one NAT rewrote
                    // (REDIRECT), or the one TPROXY accepted it on.
                    let dialled = match l.spec.front.transparent {
                        Some(TransparentMode::Redirect) => ends.original,
                        Some(TransparentMode::Tproxy) => ends.local,
                        None => None,
                    };
                    if let Some(dst) = dialled {
                        relay.set_destination(dst);
                    }
                }
                Logic::Relay(relay)
            }
            ListenerKind::Echo => Logic::Echo(Echo::new(self.cap)),
            kind @ (ListenerKind::EchoSink
            | ListenerKind::EchoSource
            | ListenerKind::EchoRr { .. }) => {
                let Some(mode) = kind.serve_mode() else {
                    ctx.reject(fd);
                    return;
                };
                Logic::Serve(Server::new(mode))
            }
        };
        let conn = Conn {
            logic,
            fds: [Some(fd), None],
            life: Lifecycle::new(SockState::Open, SockState::Absent),
            listener: index,
            timer: Default::default(),
            accepted_at: now,
            route: None,
            active_on: None,
            ends,
        };
        let need = l.spec.kind.descriptors();
        match self.conns.insert(conn) {
            Some(id) => {
                l.active += 1;
                ctx.fds.conns += need;
                l.counters.inc(Counter::Accepted);
                if let Some(c) = self.conns.get_mut(id) {
                    let mut cx = Cx::new(&mut self.scratch, &mut c.life, &mut l.counters, now);
                    c.logic.start(&mut cx);
                }
                self.after_conn(ctx, id, now);
            }
            None => {
                // 16M connections on one shard: the index space is spent.
                l.counters.close(CloseReason::LimitReached);
                ctx.reject(fd);
            }
        }
    }

    /// A finished connection: free it, count and log its close.
    fn finish(&mut self, ctx: &mut Ctx, id: ConnId, now: Millis) {
        let Some(conn) = self.conns.remove(id) else {
            return;
        };
        self.associations.conn_freed(id);
        let closed = conn.closed();
        let Some(l) = self.listeners.get_mut(conn.listener as usize) else {
            return;
        };
        l.active = l.active.saturating_sub(1);
        ctx.release_conn_fds(l.spec.kind.descriptors());
        health::release_active(&self.upstreams, &mut self.routes, conn.active_on);
        l.counters.close(closed.reason);
        l.duration.observe_ms(now.saturating_sub(conn.accepted_at));
        if let Some(ms) = conn.logic.seen().connect_ms {
            l.connect_time.observe_ms(ms);
        }
        if let Some(u) = closed
            .target
            .and_then(|t| t.upstream)
            .and_then(|u| self.upstreams.get_mut(u.0 as usize))
        {
            u.counters.close(closed.reason);
            u.counters.add(Counter::BytesC2u, closed.bytes.0);
            u.counters.add(Counter::BytesU2c, closed.bytes.1);
        }
        if let Some(access) = ctx.access.as_mut() {
            log_access(access, &l.spec.name, &conn, &closed, now);
        }
        let upstream = closed
            .target
            .map_or_else(|| "-".to_owned(), |t| t.addr.to_string());
        let listener = l.spec.name.as_str();
        let reason = closed.reason;
        let duration_ms = now.saturating_sub(conn.accepted_at);
        let error = closed
            .errno
            .map(|e| std::io::Error::from_raw_os_error(e).to_string());
        if reason.is_normal() || reason == CloseReason::Shutdown {
            debug!(
                shard = ctx.shard,
                listener,
                upstream,
                reason = reason.name(),
                c2u = closed.bytes.0,
                u2c = closed.bytes.1,
                duration_ms,
                "connection closed"
            );
        } else if ctx.log.allow(now, ctx.shard) {
            info!(
                shard = ctx.shard,
                listener,
                upstream,
                reason = reason.name(),
                error = error.as_deref().unwrap_or("-"),
                c2u = closed.bytes.0,
                u2c = closed.bytes.1,
                duration_ms,
                "connection closed"
            );
        }
        self.resume_accepts(ctx);
    }

    /// A connection's timer fired (if it is still the one it set).
    pub(crate) fn timer(&mut self, ctx: &mut Ctx, id: ConnId, deadline: Millis, now: Millis) {
        let Some(conn) = self.conns.get_mut(id) else {
            return;
        };
        if !conn.timer.fired(deadline) {
            return; // superseded by an earlier entry
        }
        if let Some(l) = self.listeners.get_mut(conn.listener as usize) {
            let mut cx = Cx::new(&mut self.scratch, &mut conn.life, &mut l.counters, now);
            conn.logic.handle_timeout(&mut cx);
        }
        self.after_conn(ctx, id, now);
    }

    /// Re-arms starved receives while the ring has buffers. Each woken receive
    /// has data waiting (that is why it starved), so it either consumes buffers
    /// — producing a completion that brings us back here — or starves again.
    pub(crate) fn wake_starved(&mut self, ctx: &mut Ctx, now: Millis) {
        let mut free = self.bufs.free();
        while free > 0 {
            let Some((id, side)) = self.starved.pop_front() else {
                break;
            };
            let Some(conn) = self.conns.get_mut(id) else {
                continue;
            };
            if let Some(l) = self.listeners.get_mut(conn.listener as usize) {
                let mut cx = Cx::new(&mut self.scratch, &mut conn.life, &mut l.counters, now);
                conn.logic.handle_buffers(side, &mut cx);
            }
            free -= 1;
            self.after_conn(ctx, id, now);
        }
    }

    /// Close every connection now (drain_timeout passed, or a hard stop).
    pub(crate) fn stop(&mut self, ctx: &mut Ctx, now: Millis) {
        for id in self.conns.ids() {
            if let Some(conn) = self.conns.get_mut(id)
                && let Some(l) = self.listeners.get_mut(conn.listener as usize)
            {
                let mut cx = Cx::new(&mut self.scratch, &mut conn.life, &mut l.counters, now);
                conn.logic.abort(CloseReason::Shutdown, &mut cx);
            }
            self.after_conn(ctx, id, now);
        }
    }

    /// The health checker's verdict on upstream `id`: while down, its
    /// balancer skips it as it skips a passively ejected one. The checker
    /// logs the change.
    pub(crate) fn set_checked(&mut self, id: UpstreamId, up: bool) {
        let slot = self.current.get(id.0 as usize);
        let Some(u) = slot.and_then(|s| self.upstreams.get(s.0 as usize)) else {
            return;
        };
        if let Some(r) = self.routes.get_mut(usize::from(u.route)) {
            r.balancer.set_checked(u.member, up);
        }
    }

    /// Counters of every listener (with its gauges) and every upstream.
    pub(crate) fn snapshot(
        &self,
        listeners: &mut Vec<ListenerStats>,
        ups: &mut Vec<UpstreamStats>,
    ) {
        for l in self.listeners.iter().filter(|l| l.role != Role::Free) {
            let mut counters = l.counters.clone();
            counters.set(Counter::Active, u64::from(l.active));
            listeners.push(ListenerStats {
                name: l.spec.name.clone(),
                counters,
                connect_time: l.connect_time,
                duration: l.duration,
            });
        }
        let routes = &self.routes;
        let held = |u: &&Upstream| {
            routes
                .get(usize::from(u.route))
                .is_some_and(|r| r.life != Life::Free)
        };
        for u in self.upstreams.iter().filter(held) {
            let listener = u.listener.clone();
            let mut counters = u.counters.clone();
            if let Some(r) = self.routes.get(usize::from(u.route)) {
                let b = &r.balancer;
                // Only the configuration's routes say whether it is in
                // rotation: a retired route's copy would count it twice.
                let in_rotation = r.life == Life::Current && b.in_rotation(u.member);
                counters.set(Counter::InRotation, u64::from(in_rotation));
                counters.set(Counter::Active, u64::from(b.active(u.member)));
            }
            ups.push(UpstreamStats {
                listener,
                upstream: u.addr.to_string(),
                counters,
            });
        }
    }

    /// Pipes lent now (a gauge).
    pub(crate) fn pipes_in_use(&self) -> u64 {
        self.pipes.count(|p| matches!(p, PipeSlot::Lent(_))) as u64
    }

    /// The mode changed to draining: stop accepting.
    pub(crate) fn drain(&mut self, ctx: &mut Ctx) {
        debug_assert!(ctx.mode != Mode::Running);
        self.cancel_accepts(ctx);
    }
}
