//! The shard's decisions without its I/O: the shard context and its services
//! (TCP, UDP). It decodes each completion's token and routes it to the
//! service that issued it, routes fired timers the same way, and runs the
//! shard's life (start, drain, stop). It decides nothing itself. The
//! simulator in `tests/` drives it without a kernel.

use std::os::fd::RawFd;

use super::context::{Ctx, TimerKey};
use super::resolve::{Asker, ResolveService};
use super::slab::{AssocId, ConnId};
use super::tcp::{TcpConfig, TcpService};
use super::token::{OpKind, Token};
use super::udp::{AssocEvent, DatagramMeta, UdpConfig, UdpListenerSpec, UdpRouteSpec, UdpService};
use crate::accesslog::AccessLogShard;
use crate::dns::{Answer, ResolverConfig};
use crate::stats::{Counter, ShardStats};
use crate::tcp::handshake::AssocAsk;
use crate::tcp::relay::Ends;
use crate::tcp::splice::SpliceConfig;
use crate::time::Millis;
use crate::upstream::UpstreamId;

pub use super::context::{FdBudget, Mode};
pub use super::ops::{CQE_F_BUFFER, CQE_F_MORE, Family, Fd, Op, PipeFds, RecvTemplate};
pub use super::tcp::{
    FrontSpec, GateSpec, ListenerKind, ListenerSpec, RateSpec, ReloadListener, RouteSpec,
    ShardReload, SniSpec,
};

#[derive(Clone, Debug, Default)]
pub struct EngineConfig {
    pub shard: usize,
    pub buffers: u32,
    pub cap: u32,
    pub listeners: Vec<ListenerSpec>,
    pub routes: Vec<RouteSpec>,
    /// Buffers in the datagram ring (0 when there is no UDP listener).
    pub datagram_buffers: u32,
    pub udp_listeners: Vec<UdpListenerSpec>,
    pub udp_routes: Vec<UdpRouteSpec>,
    /// Which relay directions splice, and how.
    pub splice: SpliceConfig,
    /// The shard's pipes (its `max_pipes`); none: nothing splices.
    pub pipes: Vec<PipeFds>,
    /// Descriptors its connections and sessions may hold.
    pub fd_budget: FdBudget,
    /// How destination names are resolved (nameservers, hosts, preference).
    pub resolver: ResolverConfig,
    /// Seeds the resolver's query ids (random per process and shard).
    pub resolver_seed: u64,
}

/// Rounds of lookups, associations and answers passed between the TCP, UDP
/// and resolver services in one go: an answer may make a connection ask for
/// more (another name, an association's end), but never without end; what
/// is left waits for the next completion or timer.
const EXCHANGE_ROUNDS: usize = 4;

pub struct Engine {
    ctx: Ctx,
    tcp: TcpService,
    udp: UdpService,
    resolve: ResolveService,
    /// Lookups the TCP service asked for, and the answers going back to it.
    lookups: Vec<(ConnId, String)>,
    /// Lookups SOCKS5 UDP associations asked for.
    assoc_lookups: Vec<(AssocId, String)>,
    answers: Vec<(Asker, Answer)>,
    /// SOCKS5 UDP associations connections asked for, the connections freed
    /// (their associations end), and the UDP service's answers.
    assoc_asks: Vec<(ConnId, AssocAsk)>,
    assoc_ends: Vec<ConnId>,
    assoc_events: Vec<(ConnId, AssocEvent)>,
    fired: Vec<TimerKey>,
}

impl Engine {
    pub fn new(cfg: EngineConfig, now: Millis) -> Engine {
        Engine {
            ctx: Ctx::new(cfg.shard, cfg.fd_budget, now),
            tcp: TcpService::new(TcpConfig {
                buffers: cfg.buffers,
                cap: cfg.cap,
                listeners: cfg.listeners,
                routes: cfg.routes,
                splice: cfg.splice,
                pipes: cfg.pipes,
            }),
            udp: UdpService::new(UdpConfig {
                datagram_buffers: cfg.datagram_buffers,
                listeners: cfg.udp_listeners,
                routes: cfg.udp_routes,
            }),
            resolve: ResolveService::new(cfg.resolver, cfg.resolver_seed),
            lookups: Vec::new(),
            assoc_lookups: Vec::new(),
            answers: Vec::new(),
            assoc_asks: Vec::new(),
            assoc_ends: Vec::new(),
            assoc_events: Vec::new(),
            fired: Vec::new(),
        }
    }

    /// Pipes in the pool, and how many of them are not lent (tests and diagnostics).
    pub fn pipes(&self) -> (usize, usize) {
        self.tcp.pipes()
    }

    /// The event loop replaced a discarded pipe (`None`: it could not).
    pub fn restore_pipe(&mut self, pipe: u16, fds: Option<PipeFds>) {
        self.tcp.restore_pipe(&self.ctx, pipe, fds);
    }

    /// Arms accept and receive on every listener.
    pub fn start(&mut self) {
        self.tcp.start(&mut self.ctx);
        self.udp.start(&mut self.ctx);
    }

    pub fn mode(&self) -> Mode {
        self.ctx.mode
    }

    /// The shard's counters: its own, each listener's and each upstream's.
    /// The health checker's verdict on `id` (see `Command::UpstreamHealth`).
    pub fn set_checked(&mut self, id: UpstreamId, up: bool) {
        self.tcp.set_checked(id, up);
    }

    pub fn stats(&self) -> ShardStats {
        let mut s = ShardStats {
            shard: self.ctx.counters.clone(),
            ..ShardStats::default()
        };
        s.shard.set(Counter::PipesInUse, self.tcp.pipes_in_use());
        if let Some(a) = &self.ctx.access {
            s.shard.set(Counter::AccessLogDropped, a.dropped());
        }
        self.tcp.snapshot(&mut s.listeners, &mut s.upstreams);
        self.udp.snapshot(&mut s.listeners);
        s.merge(self.tcp.retired());
        s.merge(self.udp.retired());
        // A SOCKS5 listener's associations are counted by the UDP service
        // under the listener's name: one entry per name.
        let mut merged = ShardStats::default();
        merged.merge(&s);
        merged
    }

    /// Swaps in a reloaded configuration (a `Command::Reload`): new
    /// connections get it, open ones keep what they started with.
    pub fn reload(&mut self, new: &ShardReload, now: Millis) {
        self.tcp.reload(&mut self.ctx, new, now);
        self.udp.reload(&mut self.ctx, &new.udp, now);
        self.after_udp();
        self.after_tcp(now);
    }

    /// A reload's resolver settings (`Command::Resolver`).
    pub fn reload_resolver(&mut self, cfg: &ResolverConfig, now: Millis) {
        self.resolve.reload(&mut self.ctx, cfg, now);
        self.after_tcp(now);
    }

    /// Frees what a reload retired once nothing uses it any more.
    pub fn tidy(&mut self) {
        self.tcp.collect_retired();
    }

    /// UDP sessions open (or closing) on this shard.
    pub fn sessions(&self) -> usize {
        self.udp.sessions()
    }

    /// Datagram buffers held by sessions and in-flight sends.
    pub fn held_datagram_buffers(&self) -> u32 {
        self.udp.held_datagram_buffers()
    }

    pub fn connections(&self) -> usize {
        self.tcp.connections()
    }

    /// Whether `id` still names a live connection (tests and diagnostics).
    pub fn is_live(&self, id: ConnId) -> bool {
        self.tcp.is_live(id)
    }

    /// Buffers held by connections (not in the kernel's ring).
    pub fn held_buffers(&self) -> u32 {
        self.tcp.held_buffers()
    }

    /// Operations produced since the last call, for the event loop to
    /// execute. Once draining or stopping has left no connection or session,
    /// the resolver closes its sockets first (they would keep the shard's
    /// own operations in flight for ever).
    pub fn take_ops(&mut self, into: &mut Vec<Op>) {
        if self.ctx.mode != Mode::Running && self.tcp.is_done() && self.udp.is_done() {
            self.resolve.shutdown(&mut self.ctx);
        }
        self.ctx.take_ops(into);
    }

    /// Resolver sockets open (tests and diagnostics).
    pub fn resolver_sockets(&self) -> usize {
        self.resolve.open_sockets()
    }

    /// When the event loop must call `advance` next (None: no timer pending).
    pub fn next_deadline(&self) -> Option<Millis> {
        self.ctx.timers.next_deadline()
    }

    /// True once draining or stopping has finished: no listener, no connection,
    /// nothing in flight.
    pub fn is_done(&self) -> bool {
        self.ctx.mode != Mode::Running
            && self.ctx.own_inflight() == 0
            && self.tcp.is_done()
            && self.udp.is_done()
    }

    /// Whether the shard's descriptor budget has room for `n` more.
    pub fn fd_room(&self, n: u32) -> bool {
        self.ctx.fd_room(n)
    }

    /// Stop accepting: cancel every accept, then close the listening sockets.
    pub fn drain(&mut self) {
        if self.ctx.mode == Mode::Running {
            self.ctx.mode = Mode::Draining;
        }
        self.tcp.drain(&mut self.ctx);
        self.udp.close_idle_udp_listeners(&mut self.ctx);
    }

    /// Draining: each UDP session ends once it owes its client no reply, or
    /// has been quiet for the drain grace.
    pub fn drain_udp_sessions(&mut self, now: Millis) {
        self.udp.drain_udp_sessions(&mut self.ctx, now);
        self.after_udp();
    }

    /// Close every connection now (drain_timeout passed, or a hard stop).
    pub fn stop(&mut self, now: Millis) {
        self.drain();
        self.ctx.mode = Mode::Stopping;
        self.tcp.stop(&mut self.ctx, now);
        self.udp.stop_sessions(&mut self.ctx, now);
    }

    /// One completion from the ring.
    pub fn handle_cqe(&mut self, user_data: u64, res: i32, flags: u32, now: Millis) {
        self.route(user_data, res, flags, None, now);
    }

    /// Whether TCP listener `index` wants each accepted socket's endpoints
    /// read (then the event loop calls `handle_accept_cqe`).
    pub fn wants_ends(&self, index: u32) -> bool {
        self.tcp.wants_ends(index)
    }

    /// Whether TCP listener `index` wants each accepted socket's original
    /// destination read (`transparent = "redirect"`: `SO_ORIGINAL_DST`).
    pub fn wants_original_dst(&self, index: u32) -> bool {
        self.tcp.wants_original_dst(index)
    }

    /// For a successful connect's completion: the upstream socket, when its
    /// relay needs the socket's local address (a SOCKS5 reply names it).
    /// The event loop reads it and calls `set_bound` before `handle_cqe`.
    pub fn wants_bound(&self, user_data: u64) -> Option<RawFd> {
        self.tcp.wants_bound(Token::decode(user_data)?)
    }

    pub fn set_bound(&mut self, user_data: u64, local: Option<std::net::SocketAddr>) {
        if let Some(token) = Token::decode(user_data) {
            self.tcp.set_bound(token, local);
        }
    }

    /// An accept completion with the accepted socket's endpoints.
    pub fn handle_accept_cqe(
        &mut self,
        user_data: u64,
        res: i32,
        flags: u32,
        ends: Ends,
        now: Millis,
    ) {
        match Token::decode(user_data) {
            Some(token) => self
                .tcp
                .handle_accept(&mut self.ctx, token, res, flags, ends, now),
            None => self.tcp.stale(&mut self.ctx, OpKind::Accept, res, flags),
        }
        self.after_tcp(now);
    }

    /// A front receive's completion with the bytes it received.
    pub fn handle_front_cqe(
        &mut self,
        user_data: u64,
        res: i32,
        flags: u32,
        bytes: Option<&[u8]>,
        now: Millis,
    ) {
        match Token::decode(user_data) {
            Some(token) => self
                .tcp
                .handle_front(&mut self.ctx, token, res, flags, bytes, now),
            None => self.tcp.stale(&mut self.ctx, OpKind::FrontRecv, res, flags),
        }
        self.after_tcp(now);
    }

    /// A completion of the resolver's (`bytes`: what an owned receive got).
    pub fn handle_dns_cqe(&mut self, user_data: u64, res: i32, bytes: Option<&[u8]>, now: Millis) {
        match Token::decode(user_data) {
            Some(token) if token.kind.is_dns() => {
                self.resolve.on_cqe(&mut self.ctx, token, res, bytes, now);
                self.after_tcp(now);
            }
            _ => self.route(user_data, res, 0, None, now),
        }
    }

    /// A receive completion on a SOCKS5 UDP association's socket, with the
    /// datagram's bytes (its header is read to decide where it goes).
    pub fn handle_assoc_cqe(
        &mut self,
        user_data: u64,
        res: i32,
        flags: u32,
        meta: Option<DatagramMeta>,
        bytes: Option<&[u8]>,
        now: Millis,
    ) {
        match Token::decode(user_data) {
            Some(token) => {
                self.udp
                    .on_assoc_cqe(&mut self.ctx, token, res, flags, meta, bytes, now);
                self.after_udp();
                self.after_tcp(now);
            }
            None => self.route(user_data, res, flags, meta, now),
        }
    }

    /// A completion of a UDP receive; `meta` is its parsed recvmsg layout.
    pub fn handle_datagram_cqe(
        &mut self,
        user_data: u64,
        res: i32,
        flags: u32,
        meta: Option<DatagramMeta>,
        now: Millis,
    ) {
        self.route(user_data, res, flags, meta, now);
    }

    fn route(
        &mut self,
        user_data: u64,
        res: i32,
        flags: u32,
        meta: Option<DatagramMeta>,
        now: Millis,
    ) {
        let Some(token) = Token::decode(user_data) else {
            self.tcp.stale(&mut self.ctx, OpKind::Close, res, flags);
            return;
        };
        match token.kind {
            OpKind::Control => {}
            kind if kind.is_dns() => {
                self.resolve.on_cqe(&mut self.ctx, token, res, None, now);
                self.after_tcp(now);
            }
            kind if kind.is_udp() => {
                self.udp
                    .on_udp_cqe(&mut self.ctx, token, res, flags, meta, now);
                self.after_udp();
                if self.udp.has_assoc_work() {
                    self.after_tcp(now);
                }
            }
            _ => {
                self.tcp.handle(&mut self.ctx, token, res, flags, now);
                self.after_tcp(now);
            }
        }
    }

    /// Carries what the services ask of each other: names to the resolver
    /// and its answers back (at once for hosts, cache hits and errors; later
    /// ones from its replies and timeouts), associations to the UDP service
    /// and its answers back, and freed connections' associations to their end.
    fn after_tcp(&mut self, now: Millis) {
        for _ in 0..EXCHANGE_ROUNDS {
            self.tcp.take_lookups(&mut self.lookups);
            self.udp.take_assoc_lookups(&mut self.assoc_lookups);
            let idle = self.lookups.is_empty()
                && self.assoc_lookups.is_empty()
                && !self.resolve.has_done()
                && !self.tcp.has_association_work()
                && !self.udp.has_assoc_work();
            if idle {
                return;
            }
            let conns = self.lookups.drain(..).map(|(id, n)| (Asker::Conn(id), n));
            let assocs = self
                .assoc_lookups
                .drain(..)
                .map(|(id, n)| (Asker::Assoc(id), n));
            for (asker, name) in conns.chain(assocs) {
                if let Some(answer) = self.resolve.lookup(&mut self.ctx, asker, &name, now) {
                    self.answers.push((asker, answer));
                }
            }
            self.resolve.take_done(&mut self.answers);
            for (asker, answer) in self.answers.drain(..) {
                match asker {
                    Asker::Conn(id) => self.tcp.resolved(&mut self.ctx, id, answer, now),
                    Asker::Assoc(id) => self.udp.assoc_resolved(&mut self.ctx, id, answer, now),
                }
            }
            self.exchange_associations(now);
        }
    }

    /// Associations asked for and ended by the TCP service, and the UDP
    /// service's answers.
    fn exchange_associations(&mut self, now: Millis) {
        let (asks, ends) = (&mut self.assoc_asks, &mut self.assoc_ends);
        self.tcp.take_associations(&mut self.ctx, asks, ends, now);
        for (conn, ask) in self.assoc_asks.drain(..) {
            self.udp.open_association(&mut self.ctx, conn, ask, now);
        }
        for conn in self.assoc_ends.drain(..) {
            self.udp.end_association(&mut self.ctx, conn, now);
        }
        self.udp.take_assoc_events(&mut self.assoc_events);
        for (conn, event) in self.assoc_events.drain(..) {
            match event {
                AssocEvent::Bound(addr) => self.tcp.associated(&mut self.ctx, conn, Ok(addr), now),
                AssocEvent::Failed(errno) => {
                    self.tcp.associated(&mut self.ctx, conn, Err(errno), now)
                }
                AssocEvent::Ended(reason) => {
                    self.tcp.association_ended(&mut self.ctx, conn, reason, now)
                }
            }
        }
    }

    /// UDP sessions ending free descriptors that paused TCP listeners wait for.
    fn after_udp(&mut self) {
        if self.ctx.take_fds_freed() {
            self.tcp.resume_accepts(&mut self.ctx);
        }
    }

    /// Moves time to `now`: connection and session timeouts, back-offs.
    pub fn advance(&mut self, now: Millis) {
        self.ctx.timers.advance(now, &mut self.fired);
        let mut fired = std::mem::take(&mut self.fired);
        for key in fired.drain(..) {
            match key {
                TimerKey::Conn { id, deadline } => self.tcp.timer(&mut self.ctx, id, deadline, now),
                TimerKey::Listener(index) => self.tcp.backoff_over(&mut self.ctx, index, now),
                TimerKey::AcceptWatch(index) => self.tcp.watch_tick(&mut self.ctx, index, now),
                TimerKey::Session { id, deadline } => {
                    self.udp.session_timer(&mut self.ctx, id, deadline, now)
                }
                TimerKey::UdpListener(index) => self.udp.udp_listener_timer(&mut self.ctx, index),
                TimerKey::Resolver { deadline } => self.resolve.timer(&mut self.ctx, deadline, now),
                TimerKey::Assoc { id, deadline } => {
                    self.udp.assoc_timer(&mut self.ctx, id, deadline, now)
                }
            }
        }
        self.fired = fired;
        self.after_udp();
        self.after_tcp(now);
    }

    /// Re-arms starved receives while the rings have buffers.
    pub fn wake_starved(&mut self, now: Millis) {
        self.tcp.wake_starved(&mut self.ctx, now);
        self.udp.wake_udp_starved(&mut self.ctx, now);
        self.after_udp();
        self.after_tcp(now);
    }

    /// Gives the shard its handle on the access log.
    pub fn set_access_log(&mut self, handle: Option<AccessLogShard>) {
        self.ctx.access = handle;
    }

    /// Hands this turn's access log lines to the writer (never blocks).
    pub fn flush_access_log(&mut self) {
        if let Some(a) = &mut self.ctx.access {
            a.flush();
        }
    }

    /// The event loop handled `completions` in one turn.
    pub fn count_turn(&mut self, completions: usize) {
        self.ctx.counters.inc(Counter::LoopTurns);
        self.ctx
            .counters
            .add(Counter::Completions, completions as u64);
    }

    /// The ring refused to take back a buffer that was not out of it.
    pub fn count_double_release(&mut self) {
        self.ctx.counters.inc(Counter::BufferDoubleRelease);
    }

    /// The UDP listener sockets still open (for drop-counter reads).
    pub fn udp_listener_sockets(&self) -> Vec<(u32, RawFd)> {
        self.udp.udp_listener_sockets()
    }

    /// Each UDP listener slot's bound address.
    pub fn udp_listener_addrs(&self) -> Vec<std::net::SocketAddr> {
        self.udp.udp_listener_addrs()
    }

    /// Each UDP listener slot: whether it is `transparent = "tproxy"`.
    pub fn udp_listener_transparent(&self) -> Vec<bool> {
        self.udp.udp_listener_transparent()
    }

    /// A reading of UDP listener `index`'s kernel drop counter.
    pub fn note_listener_drops(&mut self, index: u32, reading: u32) {
        self.udp.note_listener_drops(index, reading);
    }

    /// Whether the close `user_data` names is of a UDP socket whose drop
    /// counter the event loop should read first (with `udp_socket_drops`).
    pub fn wants_drops_before_close(user_data: u64) -> bool {
        UdpService::wants_drops_before_close(user_data)
    }

    /// The drop counter of the socket the close `user_data` is for.
    pub fn udp_socket_drops(&mut self, user_data: u64, reading: u32) {
        self.udp.udp_socket_drops(&mut self.ctx, user_data, reading);
    }
}
