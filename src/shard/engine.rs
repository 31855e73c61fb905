//! The shard's decisions without its I/O: decode each completion's token, find
//! its owner (dropping stale ones), drive the connection state machines, keep
//! listeners, timers, buffer accounting and counters, and produce `Op`s for the
//! event loop to put on the ring. The simulator in `tests/` drives it without a
//! kernel.

use std::collections::VecDeque;
use std::os::fd::RawFd;

use tracing::{debug, info, warn};

use super::slab::Slab;
use super::token::{OpKind, SlotId, Token};
use super::udp::{UdpConn, UdpListener, UdpListenerSpec, UdpRouteSpec, UdpWaiter};
use crate::stats::{CloseReason, ShardStats};
use crate::tcp::echo::Echo;
use crate::tcp::relay::{Relay, RelayConfig};
use crate::tcp::serve::{ServeMode, Server};
use crate::tcp::splice::{PipeId, SpliceConfig, SpliceEnd};
use crate::tcp::{ConnOp, RecvEvent, Side};
use crate::time::Millis;
use crate::time::wheel::TimerWheel;

/// `IORING_CQE_F_MORE`: the multishot operation stays armed.
pub const CQE_F_MORE: u32 = 1 << 1;
/// `IORING_CQE_F_BUFFER`: the upper 16 bits carry a provided buffer id.
pub const CQE_F_BUFFER: u32 = 1 << 0;

/// How long a listener waits before re-arming accept after an error (EMFILE...).
/// Short enough that service resumes promptly once descriptors free up, long
/// enough not to spin on a persistent error.
const ACCEPT_BACKOFF_MS: Millis = 100;
/// A multishot accept takes every client waiting in the listen queue in one
/// go (the kernel loops while the queue is not empty), and that queue holds
/// up to `net.core.somaxconn` clients (4096 by default since Linux 5.4). So a
/// listener uses it only while the descriptor budget has room for that many
/// connections; below, it accepts one client at a time, so a burst cannot be
/// accepted past the budget and then fail for want of an upstream socket.
const MULTISHOT_ACCEPT_ROOM: u32 = 4096;
/// Log lines about individual connections allowed per shard per second; the
/// rest are counted and summarised, so a flood cannot drown the log.
const LOG_LINES_PER_SECOND: u32 = 20;

/// One instruction for the event loop. `token`s are encoded `user_data`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    AcceptMulti {
        token: u64,
        fd: RawFd,
    },
    /// One accept (a listener near its descriptor budget).
    Accept {
        token: u64,
        fd: RawFd,
    },
    /// Cancel the accept named by `target` (drain).
    CancelAccept {
        token: u64,
        target: u64,
    },
    CloseListener {
        token: u64,
        fd: RawFd,
    },
    /// Close an accepted socket that is turned away.
    Reject {
        token: u64,
        fd: RawFd,
    },
    /// Create a TCP socket of the family of `route`'s upstream `upstream`.
    Socket {
        token: u64,
        route: u16,
        upstream: u16,
    },
    /// Connect with `route`'s connect_timeout linked (two completions).
    Connect {
        token: u64,
        timeout_token: u64,
        fd: RawFd,
        route: u16,
        upstream: u16,
    },
    RecvMulti {
        token: u64,
        fd: RawFd,
    },
    Send {
        token: u64,
        fd: RawFd,
        bid: u16,
        offset: u32,
        len: u32,
    },
    /// Send `len` bytes of the shard's periodic region from `offset`.
    SendRegion {
        token: u64,
        fd: RawFd,
        offset: u32,
        len: u32,
    },
    Shutdown {
        token: u64,
        fd: RawFd,
    },
    /// Cancel the operation whose user_data is `target`.
    CancelOne {
        token: u64,
        target: u64,
    },
    /// Cancel every operation on `fd`.
    CancelFd {
        token: u64,
        fd: RawFd,
    },
    Close {
        token: u64,
        fd: RawFd,
        linger0: bool,
    },
    /// Return a provided buffer to the ring (no completion).
    Release {
        bid: u16,
    },
    /// Multishot recvmsg into the datagram buffer ring.
    UdpRecvMulti {
        token: u64,
        fd: RawFd,
        template: RecvTemplate,
    },
    /// Create a UDP socket of the family of `route`'s upstream `upstream`.
    UdpSocket {
        token: u64,
        route: u16,
        upstream: u16,
    },
    /// connect(2) a UDP socket to `route`'s upstream `upstream`.
    UdpConnect {
        token: u64,
        fd: RawFd,
        route: u16,
        upstream: u16,
    },
    /// Send part of datagram buffer `bid` on a connected socket.
    SendDatagram {
        token: u64,
        fd: RawFd,
        bid: u16,
        offset: u32,
        len: u32,
    },
    /// Send part of datagram buffer `bid` to `dest`, from `local` when set
    /// (the address the client sent to, for wildcard listeners).
    SendDatagramTo {
        token: u64,
        fd: RawFd,
        bid: u16,
        offset: u32,
        len: u32,
        dest: std::net::SocketAddr,
        local: Option<std::net::IpAddr>,
    },
    /// Return a datagram buffer to its ring (no completion).
    ReleaseDatagram {
        bid: u16,
    },
    /// IORING_OP_SPLICE of up to `len` bytes from `fd_in` to `fd_out` (a
    /// socket and a pipe end, one way or the other).
    Splice {
        token: u64,
        fd_in: RawFd,
        fd_out: RawFd,
        len: u32,
    },
    /// Pipe `pipe` came back with data in it (no splice names it): close
    /// `fds` and make a replacement, reported with `Engine::restore_pipe`.
    /// No completion.
    ReplacePipe {
        pipe: u16,
        fds: PipeFds,
    },
}

/// The two ends of one of the shard's pipes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PipeFds {
    pub read: RawFd,
    pub write: RawFd,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum PipeSlot {
    Free(PipeFds),
    Lent(PipeFds),
    /// Discarded; the event loop is making a replacement.
    Replacing,
    /// Discarded and could not be replaced: the budget is one smaller.
    Gone,
}

/// The shard's bounded pipe budget (HAProxy's `maxpipes`): pipes are lent
/// to spliced directions and come back when they stop splicing.
#[derive(Debug, Default)]
struct PipePool {
    slots: Vec<PipeSlot>,
    free: Vec<u16>,
}

impl PipePool {
    fn new(pipes: &[PipeFds]) -> PipePool {
        let n = pipes.len().min(usize::from(u16::MAX));
        PipePool {
            slots: pipes.iter().take(n).map(|&f| PipeSlot::Free(f)).collect(),
            // Lend low ids first (pop from the end).
            free: (0..n as u16).rev().collect(),
        }
    }

    fn take(&mut self) -> Option<PipeId> {
        let id = self.free.pop()?;
        let slot = self.slots.get_mut(usize::from(id))?;
        match *slot {
            PipeSlot::Free(f) => {
                *slot = PipeSlot::Lent(f);
                Some(PipeId(id))
            }
            _ => None,
        }
    }

    /// The ends of a lent pipe.
    fn lent(&self, id: PipeId) -> Option<PipeFds> {
        match self.slots.get(usize::from(id.0))? {
            PipeSlot::Lent(f) => Some(*f),
            _ => None,
        }
    }

    /// Takes a lent pipe back: `Some(fds)` when it must be replaced.
    fn give_back(&mut self, id: PipeId, clean: bool) -> Option<PipeFds> {
        let slot = self.slots.get_mut(usize::from(id.0))?;
        let PipeSlot::Lent(f) = *slot else {
            return None;
        };
        if clean {
            *slot = PipeSlot::Free(f);
            self.free.push(id.0);
            None
        } else {
            *slot = PipeSlot::Replacing;
            Some(f)
        }
    }

    fn restore(&mut self, id: u16, fds: Option<PipeFds>) {
        if let Some(slot) = self.slots.get_mut(usize::from(id))
            && *slot == PipeSlot::Replacing
        {
            match fds {
                Some(f) => {
                    *slot = PipeSlot::Free(f);
                    self.free.push(id);
                }
                None => *slot = PipeSlot::Gone,
            }
        }
    }

    fn count(&self, pred: impl Fn(&PipeSlot) -> bool) -> usize {
        self.slots.iter().filter(|s| pred(s)).count()
    }
}

/// Which recvmsg layout (name and control space) a receive uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RecvTemplate {
    /// UDP listener `n`: the source address, and the destination address when
    /// the listener is bound to a wildcard address.
    Listener(u32),
    /// A session's connected socket: payload only.
    Upstream,
}

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
    pub fd: RawFd,
    pub kind: ListenerKind,
    /// This shard's share of max_connections.
    pub limit: u32,
}

/// A forwarding target set, in state-machine units.
#[derive(Clone, Debug)]
pub struct RouteSpec {
    /// Upstream addresses as text, for log lines.
    pub upstreams: Vec<String>,
    pub idle_ms: Millis,
    pub half_close_ms: Millis,
}

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
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum AcceptState {
    Armed(Accepting),
    /// Waiting to re-arm after an error or EMFILE/ENFILE (a timer).
    Backoff,
    /// Its accept is being cancelled to stop accepting for a while.
    Pausing(Pause),
    /// Not accepting until the descriptor budget has room again.
    Paused,
    /// Its accept is being cancelled for a drain.
    Cancelling,
    Closing,
    Closed,
}

/// How a listener's accept takes clients.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Accepting {
    /// Multishot: while the budget has room for `MULTISHOT_ACCEPT_ROOM`.
    Many,
    One,
}

/// Why a listener's accept is being cancelled while running.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Pause {
    /// The budget's room fell below what a multishot accept may take at
    /// once: re-arm as a single accept, or pause until a connection ends.
    Room,
    /// accept or socket() said EMFILE/ENFILE: resume after a back-off.
    OutOfFds,
}

/// How a listener's accept ended (its completion without IORING_CQE_F_MORE).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum AcceptEnd {
    /// Cancelled by us, or the multishot ran out on its own.
    Normal,
    Failed,
    OutOfFds,
}

fn is_out_of_fds(errno: i32) -> bool {
    matches!(errno, libc::EMFILE | libc::ENFILE)
}

/// Descriptors a shard may hold for its connections and sessions: its share
/// of RLIMIT_NOFILE after the listeners, pipes and a reserve (see
/// `runtime::check_host`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum FdBudget {
    /// No limit known (tests, or getrlimit failed).
    #[default]
    Unlimited,
    Max(u32),
}

/// The descriptors a shard's connections and sessions hold, against its budget.
#[derive(Debug, Default)]
pub(super) struct Descriptors {
    budget: FdBudget,
    /// Held by connections, from accept until the connection is freed: two
    /// per relay (client and upstream, reserved together so an accepted
    /// client never lacks its upstream socket), one per built-in server.
    conns: u32,
}

impl Descriptors {
    /// Whether `n` more fit beside what connections and `sessions` (one
    /// socket each) hold.
    pub(super) fn room(&self, n: u32, sessions: usize) -> bool {
        match self.budget {
            FdBudget::Unlimited => true,
            FdBudget::Max(max) => {
                let held = u64::from(self.conns) + sessions as u64;
                held + u64::from(n) <= u64::from(max)
            }
        }
    }
}

struct Listener {
    spec: ListenerSpec,
    accept: AcceptState,
    active: u32,
    /// Round-robin cursor over the route's upstreams.
    rr: u16,
}

enum Logic {
    Relay(Relay),
    Echo(Echo),
    /// Sink, source or request/response.
    Serve(Server),
}

struct Conn {
    logic: Logic,
    fds: [Option<RawFd>; 2],
    listener: u32,
    /// Deadline of the earliest timer-wheel entry for this connection.
    timer_at: Option<Millis>,
}

#[derive(Clone, Copy, Debug)]
pub(super) enum TimerKey {
    Conn { slot: SlotId, deadline: Millis },
    Listener(u32),
    Session { slot: SlotId, deadline: Millis },
    UdpListener(u32),
}

/// Where the shard is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Running,
    /// Not accepting; open connections may finish.
    Draining,
    /// Closing every connection.
    Stopping,
}

pub(super) struct LogBudget {
    window: Millis,
    used: u32,
    suppressed: u64,
}

impl LogBudget {
    pub(super) fn allow(&mut self, now: Millis, shard: usize) -> bool {
        if now.saturating_sub(self.window) >= 1000 {
            if self.suppressed > 0 {
                warn!(
                    shard,
                    suppressed = self.suppressed,
                    "connection log lines suppressed (more than {LOG_LINES_PER_SECOND}/s); see the counters"
                );
            }
            self.window = now;
            self.used = 0;
            self.suppressed = 0;
        }
        if self.used < LOG_LINES_PER_SECOND {
            self.used += 1;
            true
        } else {
            self.suppressed += 1;
            false
        }
    }
}

pub struct Engine {
    pub(super) shard: usize,
    conns: Slab<Conn>,
    listeners: Vec<Listener>,
    routes: Vec<RouteSpec>,
    pub(super) timers: TimerWheel<TimerKey>,
    fired: Vec<TimerKey>,
    starved: VecDeque<(SlotId, Side)>,
    pub(super) sessions: Slab<UdpConn>,
    pub(super) udp_listeners: Vec<UdpListener>,
    pub(super) udp_routes: Vec<UdpRouteSpec>,
    pub(super) udp_starved: VecDeque<UdpWaiter>,
    /// Datagram buffers handed to us and not yet released.
    pub(super) dgram_held: u32,
    pub(super) dgram_buffers: u32,
    pub(super) session_ops: Vec<crate::udp::SessionOp>,
    /// Buffers handed to us by receive completions and not yet released.
    held: u32,
    buffers: u32,
    cap: u32,
    /// Listener and reject operations in flight (connections count their own).
    pub(super) misc_inflight: u32,
    pub(super) mode: Mode,
    pub(super) stats: ShardStats,
    pub(super) ops: Vec<Op>,
    scratch: Vec<ConnOp>,
    pub(super) log: LogBudget,
    splice: SpliceConfig,
    pipes: PipePool,
    /// Pipe requests of the connection being lowered (answered at once).
    pipe_wants: Vec<Side>,
    /// Descriptors held against the shard's budget.
    pub(super) fds: Descriptors,
}

pub(super) fn result(res: i32) -> Result<u32, i32> {
    if res >= 0 { Ok(res as u32) } else { Err(-res) }
}

pub(super) fn unit(res: i32) -> Result<(), i32> {
    result(res).map(|_| ())
}

fn recv_event(res: i32, flags: u32) -> RecvEvent {
    if res > 0 {
        match buffer_id(flags) {
            Some(bid) => RecvEvent::Data {
                bid,
                len: res as u32,
            },
            // Data without a buffer cannot happen with buffer select; treat as broken.
            None => RecvEvent::Error(libc::EIO),
        }
    } else if res == 0 {
        RecvEvent::Eof
    } else {
        match -res {
            libc::ENOBUFS => RecvEvent::NoBuffers,
            libc::ECANCELED => RecvEvent::Cancelled,
            e => RecvEvent::Error(e),
        }
    }
}

pub(super) fn buffer_id(flags: u32) -> Option<u16> {
    (flags & CQE_F_BUFFER != 0).then_some((flags >> 16) as u16)
}

impl Engine {
    pub fn new(cfg: EngineConfig, now: Millis) -> Engine {
        let listeners = cfg
            .listeners
            .into_iter()
            .map(|spec| Listener {
                spec,
                accept: AcceptState::Closed,
                active: 0,
                rr: 0,
            })
            .collect();
        let own: Vec<_> = cfg.udp_listeners.iter().map(|s| s.listen).collect();
        let udp_listeners = cfg
            .udp_listeners
            .into_iter()
            .map(|spec| UdpListener::new(spec, &cfg.udp_routes, &own))
            .collect();
        let splice = if cfg.pipes.is_empty() {
            SpliceConfig::OFF
        } else {
            cfg.splice
        };
        Engine {
            shard: cfg.shard,
            conns: Slab::default(),
            listeners,
            routes: cfg.routes,
            timers: TimerWheel::new(now),
            fired: Vec::new(),
            starved: VecDeque::new(),
            sessions: Slab::default(),
            udp_listeners,
            udp_routes: cfg.udp_routes,
            udp_starved: VecDeque::new(),
            dgram_held: 0,
            dgram_buffers: cfg.datagram_buffers,
            session_ops: Vec::with_capacity(16),
            held: 0,
            buffers: cfg.buffers,
            cap: cfg.cap,
            misc_inflight: 0,
            mode: Mode::Running,
            stats: ShardStats::default(),
            ops: Vec::with_capacity(256),
            scratch: Vec::with_capacity(16),
            log: LogBudget {
                window: now,
                used: 0,
                suppressed: 0,
            },
            splice,
            pipes: PipePool::new(&cfg.pipes),
            pipe_wants: Vec::with_capacity(2),
            fds: Descriptors {
                budget: cfg.fd_budget,
                conns: 0,
            },
        }
    }

    /// Pipes in the pool, and how many of them are not lent (tests and diagnostics).
    pub fn pipes(&self) -> (usize, usize) {
        let free = self.pipes.count(|s| matches!(s, PipeSlot::Free(_)));
        (self.pipes.slots.len(), free)
    }

    /// The event loop replaced a discarded pipe (`None`: it could not).
    pub fn restore_pipe(&mut self, pipe: u16, fds: Option<PipeFds>) {
        if fds.is_none() {
            warn!(
                shard = self.shard,
                pipe, "a discarded pipe could not be replaced; the shard has one pipe fewer"
            );
        }
        self.pipes.restore(pipe, fds);
    }

    /// Arms accept on every listener.
    pub fn start(&mut self) {
        for i in 0..self.listeners.len() {
            self.arm_accept(i as u32);
        }
        for i in 0..self.udp_listeners.len() {
            self.arm_udp_listener(i as u32);
        }
    }

    pub fn mode(&self) -> Mode {
        self.mode
    }

    pub fn stats(&self) -> ShardStats {
        let mut s = self.stats.clone();
        s.active = self.conns.len() as u64;
        s.udp_sessions_active = self.sessions.len() as u64;
        s.pipes_in_use = self.pipes.count(|p| matches!(p, PipeSlot::Lent(_))) as u64;
        s
    }

    /// UDP sessions open (or closing) on this shard.
    pub fn sessions(&self) -> usize {
        self.sessions.len()
    }

    /// Datagram buffers held by sessions and in-flight sends.
    pub fn held_datagram_buffers(&self) -> u32 {
        self.dgram_held
    }

    pub fn connections(&self) -> usize {
        self.conns.len()
    }

    /// Whether `slot` still names a live connection (tests and diagnostics).
    pub fn is_live(&self, slot: SlotId) -> bool {
        self.conns.get(slot).is_some()
    }

    /// Buffers held by connections (not in the kernel's ring).
    pub fn held_buffers(&self) -> u32 {
        self.held
    }

    /// Operations produced since the last call, for the event loop to execute.
    pub fn take_ops(&mut self, into: &mut Vec<Op>) {
        into.append(&mut self.ops);
    }

    /// When the event loop must call `advance` next (None: no timer pending).
    pub fn next_deadline(&self) -> Option<Millis> {
        self.timers.next_deadline()
    }

    /// True once draining or stopping has finished: no listener, no connection,
    /// nothing in flight.
    pub fn is_done(&self) -> bool {
        self.mode != Mode::Running
            && self.conns.is_empty()
            && self.sessions.is_empty()
            && self.misc_inflight == 0
            && self
                .listeners
                .iter()
                .all(|l| l.accept == AcceptState::Closed)
            && self.udp_listeners.iter().all(UdpListener::is_closed)
    }

    fn listener_token(kind: OpKind, index: u32) -> u64 {
        Token::new(
            kind,
            Side::Client,
            SlotId {
                index,
                generation: 0,
            },
        )
        .encode()
    }

    fn arm_accept(&mut self, index: u32) {
        let sessions = self.sessions.len();
        let Some(l) = self.listeners.get_mut(index as usize) else {
            return;
        };
        let token = Self::listener_token(OpKind::Accept, index);
        let fd = l.spec.fd;
        let need = l.spec.kind.descriptors();
        let op = if self
            .fds
            .room(need.saturating_mul(MULTISHOT_ACCEPT_ROOM), sessions)
        {
            l.accept = AcceptState::Armed(Accepting::Many);
            Op::AcceptMulti { token, fd }
        } else {
            l.accept = AcceptState::Armed(Accepting::One);
            Op::Accept { token, fd }
        };
        self.misc_inflight += 1;
        self.ops.push(op);
    }

    fn close_listener(&mut self, index: u32) {
        let Some(l) = self.listeners.get_mut(index as usize) else {
            return;
        };
        l.accept = AcceptState::Closing;
        self.misc_inflight += 1;
        self.ops.push(Op::CloseListener {
            token: Self::listener_token(OpKind::CloseListener, index),
            fd: l.spec.fd,
        });
    }

    pub(super) fn reject(&mut self, fd: RawFd) {
        self.misc_inflight += 1;
        self.ops.push(Op::Reject {
            token: Self::listener_token(OpKind::Reject, 0),
            fd,
        });
    }

    /// Stop accepting: cancel every accept, then close the listening sockets.
    pub fn drain(&mut self) {
        if self.mode == Mode::Running {
            self.mode = Mode::Draining;
        }
        for i in 0..self.listeners.len() {
            let index = i as u32;
            match self.listeners[i].accept {
                AcceptState::Armed(_) => {
                    self.listeners[i].accept = AcceptState::Cancelling;
                    self.misc_inflight += 1;
                    self.ops.push(Op::CancelAccept {
                        token: Self::listener_token(OpKind::CancelAccept, index),
                        target: Self::listener_token(OpKind::Accept, index),
                    });
                }
                AcceptState::Backoff | AcceptState::Paused => self.close_listener(index),
                // A pause's cancel is in flight: its final completion closes the listener.
                AcceptState::Pausing(_)
                | AcceptState::Cancelling
                | AcceptState::Closing
                | AcceptState::Closed => {}
            }
        }
        self.close_idle_udp_listeners();
    }

    /// Close every connection now (drain_timeout passed, or a hard stop).
    pub fn stop(&mut self, now: Millis) {
        self.drain();
        self.mode = Mode::Stopping;
        for slot in self.conns.ids() {
            if let Some(conn) = self.conns.get_mut(slot) {
                match &mut conn.logic {
                    Logic::Relay(r) => r.abort(CloseReason::Shutdown, &mut self.scratch),
                    Logic::Echo(e) => e.abort(CloseReason::Shutdown, &mut self.scratch),
                    Logic::Serve(s) => s.abort(CloseReason::Shutdown, &mut self.scratch),
                }
            }
            self.after_conn(slot, now);
        }
        self.stop_sessions(now);
    }

    /// One completion from the ring.
    pub fn handle_cqe(&mut self, user_data: u64, res: i32, flags: u32, now: Millis) {
        let Some(token) = Token::decode(user_data) else {
            self.stale(OpKind::Close, res, flags);
            return;
        };
        match token.kind {
            OpKind::Accept => self.on_accept(token.slot.index, res, flags, now),
            OpKind::CancelAccept | OpKind::Reject => {
                self.misc_inflight = self.misc_inflight.saturating_sub(1)
            }
            OpKind::CloseListener => {
                self.misc_inflight = self.misc_inflight.saturating_sub(1);
                if let Some(l) = self.listeners.get_mut(token.slot.index as usize) {
                    l.accept = AcceptState::Closed;
                }
            }
            OpKind::Control => {}
            OpKind::UdpListenRecv
            | OpKind::UdpUpRecv
            | OpKind::UdpUpSend
            | OpKind::UdpReplySend
            | OpKind::UdpEchoSend
            | OpKind::UdpSocket
            | OpKind::UdpConnect
            | OpKind::UdpCancel
            | OpKind::UdpClose
            | OpKind::UdpListenCancel
            | OpKind::UdpListenClose => self.on_udp_cqe(token, res, flags, None, now),
            _ => self.on_conn_cqe(token, res, flags, now),
        }
    }

    /// A completion whose owner is gone. Whatever the kernel handed over with
    /// it (a buffer, a descriptor) is given back so nothing leaks.
    pub(super) fn stale(&mut self, kind: OpKind, res: i32, flags: u32) {
        self.stats.stale_completions += 1;
        if let Some(bid) = buffer_id(flags) {
            self.ops.push(Op::Release { bid });
        }
        if matches!(kind, OpKind::Socket | OpKind::Accept) && res >= 0 {
            self.reject(res);
        }
        debug!(
            shard = self.shard,
            ?kind,
            res,
            "dropped a completion for a freed slot"
        );
    }

    fn on_accept(&mut self, index: u32, res: i32, flags: u32, now: Millis) {
        let more = flags & CQE_F_MORE != 0;
        if !more {
            self.misc_inflight = self.misc_inflight.saturating_sub(1);
        }
        let Some(l) = self.listeners.get(index as usize) else {
            if res >= 0 {
                self.reject(res);
            }
            return;
        };
        let (at_limit, limit, name) = (l.active >= l.spec.limit, l.spec.limit, l.spec.name.clone());
        let pausing = matches!(l.accept, AcceptState::Pausing(_));
        let mut ended = AcceptEnd::Normal;
        if res >= 0 {
            let fd = res;
            if self.mode != Mode::Running {
                self.stats.count_close(CloseReason::Shutdown);
                self.reject(fd);
            } else if at_limit {
                self.stats.count_close(CloseReason::LimitReached);
                self.reject(fd);
                if self.log.allow(now, self.shard) {
                    info!(
                        shard = self.shard,
                        listener = %name,
                        limit,
                        "connection closed at accept: this shard's share of max_connections is in use; raise max_connections if this is expected load"
                    );
                }
            } else {
                self.admit(index, fd, now);
                if more {
                    self.narrow_accept(index);
                }
            }
        } else if is_out_of_fds(-res) && self.mode == Mode::Running {
            ended = AcceptEnd::OutOfFds;
            self.note_fd_pause(&name, -res, now);
        } else if -res != libc::ECANCELED || (self.mode == Mode::Running && !pausing) {
            ended = AcceptEnd::Failed;
            self.stats.accept_errors += 1;
            let err = std::io::Error::from_raw_os_error(-res);
            if self.log.allow(now, self.shard) {
                warn!(
                    shard = self.shard,
                    listener = %name,
                    error = %err,
                    "accept failed; retrying in {ACCEPT_BACKOFF_MS}ms"
                );
            }
        }
        if more {
            return;
        }
        match self.mode {
            Mode::Running => self.accept_ended(index, ended, now),
            Mode::Draining | Mode::Stopping => self.close_listener(index),
        }
    }

    /// A listener's accept is out of the kernel while running: re-arm it, or
    /// wait for the back-off timer, or for descriptors to come back.
    fn accept_ended(&mut self, index: u32, ended: AcceptEnd, now: Millis) {
        let Some(l) = self.listeners.get(index as usize) else {
            return;
        };
        let (state, need, name) = (l.accept, l.spec.kind.descriptors(), l.spec.name.clone());
        let backoff = matches!(ended, AcceptEnd::Failed | AcceptEnd::OutOfFds)
            || state == AcceptState::Pausing(Pause::OutOfFds);
        if backoff {
            self.set_accept(index, AcceptState::Backoff);
            self.timers
                .insert(now + ACCEPT_BACKOFF_MS, TimerKey::Listener(index));
        } else if self.fd_room(need) {
            self.arm_accept(index);
        } else {
            self.note_budget_pause(&name, now);
            self.set_accept(index, AcceptState::Paused);
        }
    }

    fn set_accept(&mut self, index: u32, state: AcceptState) {
        if let Some(l) = self.listeners.get_mut(index as usize) {
            l.accept = state;
        }
    }

    /// After an admit by a multishot accept: once the budget's room is below
    /// what it may take at once, cancel it; its final completion re-arms a
    /// single accept, or pauses accepting (clients wait in the kernel's
    /// listen queue, resumed by `resume_accepts`) when there is no room for
    /// one more, rather than accept clients without the descriptors to serve them.
    fn narrow_accept(&mut self, index: u32) {
        let Some(l) = self.listeners.get(index as usize) else {
            return;
        };
        let need = l.spec.kind.descriptors();
        if l.accept != AcceptState::Armed(Accepting::Many)
            || self.fd_room(need.saturating_mul(MULTISHOT_ACCEPT_ROOM))
        {
            return;
        }
        self.cancel_accept(index, Pause::Room);
    }

    fn cancel_accept(&mut self, index: u32, why: Pause) {
        self.set_accept(index, AcceptState::Pausing(why));
        self.misc_inflight += 1;
        self.ops.push(Op::CancelAccept {
            token: Self::listener_token(OpKind::CancelAccept, index),
            target: Self::listener_token(OpKind::Accept, index),
        });
    }

    fn note_budget_pause(&mut self, name: &str, now: Millis) {
        self.stats.accept_paused_fd += 1;
        if self.log.allow(now, self.shard) {
            info!(
                shard = self.shard,
                listener = %name,
                budget = ?self.fds.budget,
                "accepting paused: this shard's descriptor budget is in use (its share of `ulimit -n`); clients wait in the listen queue until connections close"
            );
        }
    }

    /// accept or socket() said EMFILE/ENFILE: the process or the system is
    /// out of descriptors although the budget had room (something else holds
    /// them). Counted as a pause; accepting resumes after the back-off.
    fn note_fd_pause(&mut self, name: &str, errno: i32, now: Millis) {
        self.stats.accept_paused_fd += 1;
        if self.log.allow(now, self.shard) {
            let err = std::io::Error::from_raw_os_error(errno);
            warn!(
                shard = self.shard,
                listener = %name,
                error = %err,
                "out of descriptors; accepting paused for {ACCEPT_BACKOFF_MS}ms (raise `ulimit -n`, or `fs.file-max` for ENFILE)"
            );
        }
    }

    /// An upstream socket could not be made for lack of descriptors: stop
    /// every accepting listener for a back-off, so new clients wait in the
    /// listen queue instead of being accepted and failing the same way.
    fn pause_all_out_of_fds(&mut self, errno: i32, now: Millis) {
        let armed: Vec<u32> = (0..self.listeners.len() as u32)
            .filter(|&i| {
                self.listeners
                    .get(i as usize)
                    .is_some_and(|l| matches!(l.accept, AcceptState::Armed(_)))
            })
            .collect();
        let Some(&first) = armed.first() else {
            return;
        };
        let name = self
            .listeners
            .get(first as usize)
            .map(|l| l.spec.name.clone())
            .unwrap_or_default();
        self.note_fd_pause(&name, errno, now);
        for index in armed {
            self.cancel_accept(index, Pause::OutOfFds);
        }
    }

    /// Whether the shard's descriptor budget has room for `n` more (a TCP
    /// relay needs 2, a UDP session 1). Listeners, pipes and the control
    /// thread's descriptors are outside the budget.
    pub fn fd_room(&self, n: u32) -> bool {
        self.fds.room(n, self.sessions.len())
    }

    /// Re-arms the listeners paused for descriptors once there is room.
    fn resume_accepts(&mut self) {
        if self.mode != Mode::Running {
            return;
        }
        for i in 0..self.listeners.len() {
            let need = match self.listeners.get(i) {
                Some(l) if l.accept == AcceptState::Paused => l.spec.kind.descriptors(),
                _ => continue,
            };
            if self.fd_room(need) {
                self.arm_accept(i as u32);
            }
        }
    }

    fn admit(&mut self, index: u32, fd: RawFd, now: Millis) {
        let Some(l) = self.listeners.get_mut(index as usize) else {
            self.reject(fd);
            return;
        };
        let logic = match l.spec.kind {
            ListenerKind::Forward { route } => {
                let Some(r) = self.routes.get(route as usize) else {
                    self.reject(fd);
                    return;
                };
                let n = u16::try_from(r.upstreams.len()).unwrap_or(u16::MAX).max(1);
                let cfg = RelayConfig {
                    upstreams: n,
                    first_upstream: l.rr % n,
                    idle_ms: r.idle_ms,
                    half_close_ms: r.half_close_ms,
                    cap: self.cap,
                };
                l.rr = (l.rr + 1) % n;
                let mut relay = Relay::with_splice(cfg, self.splice, now);
                relay.start(&mut self.scratch);
                Logic::Relay(relay)
            }
            ListenerKind::Echo => {
                let mut echo = Echo::new(self.cap);
                echo.start(&mut self.scratch);
                Logic::Echo(echo)
            }
            kind @ (ListenerKind::EchoSink
            | ListenerKind::EchoSource
            | ListenerKind::EchoRr { .. }) => {
                let Some(mode) = kind.serve_mode() else {
                    self.reject(fd);
                    return;
                };
                let mut server = Server::new(mode);
                server.start(&mut self.scratch);
                Logic::Serve(server)
            }
        };
        let conn = Conn {
            logic,
            fds: [Some(fd), None],
            listener: index,
            timer_at: None,
        };
        let need = l.spec.kind.descriptors();
        match self.conns.insert(conn) {
            Some(slot) => {
                l.active += 1;
                self.fds.conns += need;
                self.stats.accepted += 1;
                self.after_conn(slot, now);
            }
            None => {
                // 16M connections on one shard: the index space is spent.
                self.scratch.clear();
                self.stats.count_close(CloseReason::LimitReached);
                self.reject(fd);
            }
        }
    }

    fn on_conn_cqe(&mut self, token: Token, res: i32, flags: u32, now: Millis) {
        if token.kind == OpKind::Socket && res < 0 && is_out_of_fds(-res) {
            self.pause_all_out_of_fds(-res, now);
        }
        let slot = token.slot;
        let Some(conn) = self.conns.get_mut(slot) else {
            self.stale(token.kind, res, flags);
            return;
        };
        let out = &mut self.scratch;
        let stats = &mut self.stats;
        let side = token.side;
        if token.kind == OpKind::Recv {
            let more = flags & CQE_F_MORE != 0;
            let ev = recv_event(res, flags);
            if let RecvEvent::Data { .. } = ev {
                self.held += 1;
            } else if let Some(bid) = buffer_id(flags) {
                // A buffer on a completion without data: straight back.
                self.held += 1;
                out.push(ConnOp::Release(bid));
            }
            match &mut conn.logic {
                Logic::Relay(r) => r.handle_recv(side, ev, more, now, out, stats),
                Logic::Echo(e) => e.handle_recv(ev, more, out, stats),
                Logic::Serve(s) => s.handle_recv(ev, more, out, stats),
            }
            self.after_conn(slot, now);
            return;
        }
        if token.kind == OpKind::Socket && res >= 0 {
            conn.fds[Side::Upstream.index()] = Some(res);
        }
        match &mut conn.logic {
            Logic::Relay(r) => match token.kind {
                OpKind::Send => r.handle_sent(side, result(res), now, out, stats),
                OpKind::SpliceIn => r.handle_splice_in(side, result(res), now, out, stats),
                OpKind::SpliceOut => r.handle_splice_out(side, result(res), now, out, stats),
                OpKind::CancelSplice => r.handle_cancel(out),
                OpKind::Socket => r.handle_socket(unit(res), now, out, stats),
                OpKind::Connect => r.handle_connect(unit(res), now, out, stats),
                OpKind::ConnectTimeout => r.handle_connect_timeout(out),
                OpKind::Shutdown => r.handle_shutdown(side, unit(res), out),
                OpKind::CancelRecv | OpKind::CancelAll => r.handle_cancel(out),
                OpKind::Close => r.handle_close(side),
                OpKind::Discard => r.handle_discard(),
                _ => return self.unexpected(token.kind, res),
            },
            Logic::Echo(e) => match token.kind {
                OpKind::Send => e.handle_sent(result(res), out, stats),
                OpKind::Shutdown => e.handle_shutdown(unit(res), out),
                OpKind::CancelRecv | OpKind::CancelAll => e.handle_cancel(out),
                OpKind::Close => e.handle_close(),
                _ => return self.unexpected(token.kind, res),
            },
            Logic::Serve(s) => match token.kind {
                OpKind::Send => s.handle_sent(result(res), out, stats),
                OpKind::Shutdown => s.handle_shutdown(unit(res), out),
                OpKind::CancelRecv | OpKind::CancelAll => s.handle_cancel(out),
                OpKind::Close => s.handle_close(),
                _ => return self.unexpected(token.kind, res),
            },
        }
        self.after_conn(slot, now);
    }

    fn unexpected(&mut self, kind: OpKind, res: i32) {
        // Cannot happen: an echo or server connection never issues connect/socket/discard.
        self.stats.stale_completions += 1;
        debug!(shard = self.shard, ?kind, res, "unexpected completion kind");
    }

    /// Turns the state machine's requests into ring operations, then frees the
    /// connection if it has finished or (re)schedules its timer.
    fn after_conn(&mut self, slot: SlotId, now: Millis) {
        let Some(conn) = self.conns.get_mut(slot) else {
            self.scratch.clear();
            return;
        };
        let route = match self
            .listeners
            .get(conn.listener as usize)
            .map(|l| l.spec.kind)
        {
            Some(ListenerKind::Forward { route }) => route,
            _ => 0,
        };
        let tok = |kind, side| Token::new(kind, side, slot).encode();
        // Pipe requests are answered at once, and the answer's operations
        // lowered in turn.
        loop {
            for op in self.scratch.drain(..) {
                let fds = &mut conn.fds;
                let fd = |side: Side| fds[side.index()].unwrap_or(-1);
                let lowered = match op {
                    ConnOp::OpenUpstream { upstream } => Op::Socket {
                        token: tok(OpKind::Socket, Side::Upstream),
                        route,
                        upstream,
                    },
                    ConnOp::Connect { upstream } => Op::Connect {
                        token: tok(OpKind::Connect, Side::Upstream),
                        timeout_token: tok(OpKind::ConnectTimeout, Side::Upstream),
                        fd: fd(Side::Upstream),
                        route,
                        upstream,
                    },
                    ConnOp::ArmRecv(side) => Op::RecvMulti {
                        token: tok(OpKind::Recv, side),
                        fd: fd(side),
                    },
                    ConnOp::CancelRecv(side) => Op::CancelOne {
                        token: tok(OpKind::CancelRecv, side),
                        target: tok(OpKind::Recv, side),
                    },
                    ConnOp::Send {
                        side,
                        bid,
                        offset,
                        len,
                    } => Op::Send {
                        token: tok(OpKind::Send, side),
                        fd: fd(side),
                        bid,
                        offset,
                        len,
                    },
                    ConnOp::SendRegion { side, offset, len } => Op::SendRegion {
                        token: tok(OpKind::Send, side),
                        fd: fd(side),
                        offset,
                        len,
                    },
                    ConnOp::Shutdown(side) => Op::Shutdown {
                        token: tok(OpKind::Shutdown, side),
                        fd: fd(side),
                    },
                    ConnOp::CancelAll(side) => Op::CancelFd {
                        token: tok(OpKind::CancelAll, side),
                        fd: fd(side),
                    },
                    ConnOp::Close { side, linger0 } => Op::Close {
                        token: tok(OpKind::Close, side),
                        fd: fds[side.index()].take().unwrap_or(-1),
                        linger0,
                    },
                    ConnOp::Discard => Op::Close {
                        token: tok(OpKind::Discard, Side::Upstream),
                        fd: fds[Side::Upstream.index()].take().unwrap_or(-1),
                        linger0: false,
                    },
                    ConnOp::Release(bid) => {
                        self.held = self.held.saturating_sub(1);
                        Op::Release { bid }
                    }
                    ConnOp::Starved(side) => {
                        self.starved.push_back((slot, side));
                        continue;
                    }
                    ConnOp::SpliceIn { side, pipe, len } => Op::Splice {
                        token: tok(OpKind::SpliceIn, side),
                        fd_in: fd(side),
                        fd_out: self.pipes.lent(pipe).map_or(-1, |p| p.write),
                        len,
                    },
                    ConnOp::SpliceOut { side, pipe, len } => Op::Splice {
                        token: tok(OpKind::SpliceOut, side),
                        fd_in: self.pipes.lent(pipe).map_or(-1, |p| p.read),
                        fd_out: fd(side),
                        len,
                    },
                    ConnOp::CancelSplice { side, end } => {
                        let target = match end {
                            SpliceEnd::In => OpKind::SpliceIn,
                            SpliceEnd::Out => OpKind::SpliceOut,
                        };
                        Op::CancelOne {
                            token: tok(OpKind::CancelSplice, side),
                            target: tok(target, side),
                        }
                    }
                    ConnOp::WantPipe(side) => {
                        self.pipe_wants.push(side);
                        continue;
                    }
                    ConnOp::ReturnPipe { pipe, clean } => match self.pipes.give_back(pipe, clean) {
                        Some(fds) => {
                            self.stats.pipes_discarded += 1;
                            Op::ReplacePipe { pipe: pipe.0, fds }
                        }
                        None => continue,
                    },
                };
                self.ops.push(lowered);
            }
            if self.pipe_wants.is_empty() {
                break;
            }
            let wants = std::mem::take(&mut self.pipe_wants);
            for &side in &wants {
                let grant = self.pipes.take();
                match &mut conn.logic {
                    Logic::Relay(r) => {
                        r.handle_pipe(side, grant, now, &mut self.scratch, &mut self.stats)
                    }
                    Logic::Echo(_) | Logic::Serve(_) => {
                        if let Some(p) = grant {
                            let _ = self.pipes.give_back(p, true);
                        }
                    }
                }
            }
            self.pipe_wants = wants;
            self.pipe_wants.clear();
        }

        let (finished, deadline) = match &conn.logic {
            Logic::Relay(r) => (r.is_finished(), r.deadline()),
            Logic::Echo(e) => (e.is_finished(), None),
            Logic::Serve(s) => (s.is_finished(), None),
        };
        if !finished {
            if let Some(d) = deadline
                && conn.timer_at.is_none_or(|t| d < t)
            {
                conn.timer_at = Some(d);
                self.timers.insert(d, TimerKey::Conn { slot, deadline: d });
            }
            return;
        }
        let Some(conn) = self.conns.remove(slot) else {
            return;
        };
        if let Some(l) = self.listeners.get_mut(conn.listener as usize) {
            l.active = l.active.saturating_sub(1);
            self.fds.conns = self.fds.conns.saturating_sub(l.spec.kind.descriptors());
        }
        self.log_close(&conn, now);
        self.resume_accepts();
    }

    fn log_close(&mut self, conn: &Conn, now: Millis) {
        let (reason, errno, upstream, bytes) = match &conn.logic {
            Logic::Relay(r) => (
                r.reason(),
                r.last_errno(),
                Some(r.current_upstream()),
                r.bytes(),
            ),
            Logic::Echo(e) => (e.reason(), None, None, (0, 0)),
            Logic::Serve(s) => (s.reason(), s.last_errno(), None, s.bytes()),
        };
        let reason = reason.unwrap_or(CloseReason::Error);
        self.stats.count_close(reason);
        let listener = self
            .listeners
            .get(conn.listener as usize)
            .map(|l| l.spec.name.as_str())
            .unwrap_or("?");
        let upstream_addr = match (
            self.listeners
                .get(conn.listener as usize)
                .map(|l| l.spec.kind),
            upstream,
        ) {
            (Some(ListenerKind::Forward { route }), Some(u)) => self
                .routes
                .get(route as usize)
                .and_then(|r| r.upstreams.get(u as usize))
                .map(String::as_str)
                .unwrap_or("?"),
            _ => "-",
        };
        let error = errno.map(|e| std::io::Error::from_raw_os_error(e).to_string());
        if reason.is_normal() || reason == CloseReason::Shutdown {
            debug!(
                shard = self.shard,
                listener,
                upstream = upstream_addr,
                reason = reason.name(),
                c2u = bytes.0,
                u2c = bytes.1,
                "connection closed"
            );
        } else if self.log.allow(now, self.shard) {
            info!(
                shard = self.shard,
                listener,
                upstream = upstream_addr,
                reason = reason.name(),
                error = error.as_deref().unwrap_or("-"),
                c2u = bytes.0,
                u2c = bytes.1,
                "connection closed"
            );
        }
    }

    /// Moves time to `now`: connection timeouts and accept back-offs.
    pub fn advance(&mut self, now: Millis) {
        self.timers.advance(now, &mut self.fired);
        let mut fired = std::mem::take(&mut self.fired);
        for key in fired.drain(..) {
            match key {
                TimerKey::Conn { slot, deadline } => {
                    let Some(conn) = self.conns.get_mut(slot) else {
                        continue;
                    };
                    if conn.timer_at != Some(deadline) {
                        continue; // superseded by an earlier entry
                    }
                    conn.timer_at = None;
                    if let Logic::Relay(r) = &mut conn.logic {
                        r.handle_timeout(now, &mut self.scratch);
                    }
                    self.after_conn(slot, now);
                }
                TimerKey::Session { slot, deadline } => self.session_timer(slot, deadline, now),
                TimerKey::UdpListener(index) => self.udp_listener_timer(index),
                TimerKey::Listener(index) => {
                    let backoff = self
                        .listeners
                        .get(index as usize)
                        .is_some_and(|l| l.accept == AcceptState::Backoff);
                    if backoff && self.mode == Mode::Running {
                        // Back to accepting, or to waiting for the budget.
                        self.set_accept(index, AcceptState::Paused);
                    }
                }
            }
        }
        self.fired = fired;
        // UDP sessions ending free descriptors too.
        self.resume_accepts();
    }

    /// Re-arms starved receives while the ring has buffers. Each woken receive
    /// has data waiting (that is why it starved), so it either consumes buffers
    /// — producing a completion that brings us back here — or starves again.
    pub fn wake_starved(&mut self, now: Millis) {
        let mut free = self.buffers.saturating_sub(self.held);
        while free > 0 {
            let Some((slot, side)) = self.starved.pop_front() else {
                break;
            };
            let Some(conn) = self.conns.get_mut(slot) else {
                continue;
            };
            match &mut conn.logic {
                Logic::Relay(r) => r.handle_buffers(side, &mut self.scratch),
                Logic::Echo(e) => e.handle_buffers(&mut self.scratch),
                Logic::Serve(s) => s.handle_buffers(&mut self.scratch),
            }
            free -= 1;
            self.after_conn(slot, now);
        }
        self.wake_udp_starved(now);
    }
}
