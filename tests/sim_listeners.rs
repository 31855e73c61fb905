//! Deterministic simulation of the shard engine with several TCP listeners:
//! two or three forward listeners, each with its own route of one to three
//! upstreams, and an echo listener, against a fake kernel. Peers are clean
//! (each writes its stream in random chunks, then FIN, and always reads) so
//! every byte can be required; the kernel refuses or times out some connects,
//! runs the buffer ring dry, ends multishot receives and accepts on their
//! own, and fails accepts (EMFILE, ENFILE, ECONNABORTED, EPERM, ENOMEM).
//! Some runs drain or stop in the middle of the streams.
//!
//! Checked at every step: no operation names a closed descriptor, a
//! descriptor is closed only when no operation names it, no `Op::Fail`;
//! every send is from a held buffer and sends in order; a connection of a
//! listener connects only to its own route's upstreams, each upstream at
//! most once, in the route's round-robin order; a listener whose accept
//! failed is re-armed within its back-off. At the end: every socket closed
//! and every buffer back; every stream delivered in full with its FIN (echo:
//! the client's own bytes back), except what a stop cut; `is_done()`; and
//! per listener (accepted, closes, bytes, accept errors) and per upstream
//! (connect attempts, refusals, closes, bytes) counters match what the fake
//! kernel saw.
//!
//! Reproduce with `SIM_SEED=<seed> cargo test --test sim_listeners`;
//! `SIM_SEEDS=<n>` runs more seeds, `SIM_TRACE=1` prints every operation.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;

use ringfwd::shard::engine::{
    CQE_F_BUFFER, CQE_F_MORE, Engine, EngineConfig, FdBudget, ListenerKind, ListenerSpec, Mode, Op,
    RouteSpec,
};
use ringfwd::shard::token::Token;
use ringfwd::stats::{CloseReason, Counter, ShardStats};
use ringfwd::verify::{Pattern, Rng};

macro_rules! check {
    ($sim:expr, $cond:expr, $($arg:tt)+) => {
        if !$cond {
            panic!("seed {}: {}", $sim.seed, format!($($arg)+));
        }
    };
}

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap_or_else(|e| panic!("bad address {s}: {e}"))
}

fn trace() -> bool {
    std::env::var_os("SIM_TRACE").is_some()
}

fn seeds(default: u64) -> Vec<u64> {
    if let Some(s) = std::env::var("SIM_SEED").ok().and_then(|v| v.parse().ok()) {
        return vec![s];
    }
    let n = std::env::var("SIM_SEEDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default);
    (1..=n).collect()
}

/// The engine's accept back-off, plus the longest time step of the schedule.
const REARM_WITHIN_MS: u64 = 100 + 50;

#[derive(Debug)]
struct Peer {
    total: u64,
    written: u64,
    fin_written: bool,
    source: Pattern,
    taken: u64,
    eof_delivered: bool,
    expect: Pattern,
    received: u64,
    got_fin: bool,
    got_reset: bool,
}

impl Peer {
    fn new(seed: u64, expect_seed: u64, total: u64) -> Peer {
        Peer {
            total,
            written: 0,
            fin_written: false,
            source: Pattern::new(seed),
            taken: 0,
            eof_delivered: false,
            expect: Pattern::new(expect_seed),
            received: 0,
            got_fin: false,
            got_reset: false,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Attempt {
    Ok,
    Refused,
    Timeout,
    /// socket(2) failed (EMFILE): no connect at all.
    NoSocket,
}

#[derive(Debug)]
struct Conn {
    listener: usize,
    /// Its place among its listener's accepted connections (round robin).
    nth: u64,
    accepted: bool,
    client: Peer,
    upstream: Peer,
    tried: Vec<SocketAddr>,
    /// Attempts whose outcome came back (not cancelled by a stop).
    outcomes: Vec<(SocketAddr, Attempt)>,
    connected: Option<SocketAddr>,
    upstream_fd: Option<i32>,
    /// Upstream sockets asked for: one per target the balancer picked.
    sockets: u64,
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Role {
    Client,
    Upstream,
}

#[derive(Debug)]
struct Sock {
    conn: usize,
    role: Role,
    open: bool,
    ops: Vec<u64>,
    recv: Option<u64>,
    send: Option<u64>,
}

#[derive(Debug)]
struct Listener {
    fd: i32,
    /// The route's upstreams (empty: the echo listener).
    upstreams: Vec<SocketAddr>,
    waiting: VecDeque<usize>,
    /// The armed accept: its token and whether it is multishot.
    accept: Option<(u64, bool)>,
    open: bool,
    /// Since when it has had no accept armed while running.
    unarmed_since: Option<u64>,
    accepted: u64,
    errors: u64,
}

impl Listener {
    /// Descriptors one of its connections holds: a relay two, echo one.
    fn need(&self) -> u32 {
        if self.upstreams.is_empty() { 1 } else { 2 }
    }
}

#[derive(Debug, Clone, Copy)]
enum Action {
    Fixed(i32),
    SocketCreate { conn: usize },
    SocketFails { conn: usize },
    Connect { conn: usize, outcome: Attempt },
    ConnectTimeout { outcome: Attempt },
    Send { bid: u16, offset: u32, len: u32 },
    Shutdown,
    Close { linger0: bool },
}

#[derive(Debug, Clone, Copy)]
struct Pending {
    ud: u64,
    fd: Option<i32>,
    action: Action,
}

/// How a run ends.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Ending {
    /// Every client served, then a drain of an idle shard.
    Served,
    /// A drain in the middle of the streams: they finish.
    DrainMidStream,
    /// A stop in the middle of the streams: they are cut.
    StopMidStream,
}

#[derive(Debug, Default)]
struct UpstreamSeen {
    attempts: u64,
    refused: u64,
    errors: u64,
    closes: u64,
    c2u: u64,
    u2c: u64,
}

struct Sim {
    seed: u64,
    rng: Rng,
    engine: Engine,
    now: u64,
    buf_size: u32,
    ring: VecDeque<u16>,
    buf_data: Vec<Vec<u8>>,
    held: Vec<bool>,
    listeners: Vec<Listener>,
    conns: Vec<Conn>,
    socks: HashMap<i32, Sock>,
    next_fd: i32,
    pending: Vec<Pending>,
    slot_conn: HashMap<(u32, u32), usize>,
    accepting: Option<usize>,
    ops: Vec<Op>,
    ending: Ending,
    /// Accept errors injected: out of descriptors (EMFILE/ENFILE), other.
    out_of_fds: u64,
    /// Descriptors connections may hold (None: no limit).
    budget: Option<u32>,
    /// At the stop: connections live, those that cannot have ended on their
    /// own (a stream or FIN still owed), and the closes counted so far.
    live_at_stop: Option<usize>,
    cut_at_stop: u64,
    closes_at_stop: u64,
    stopped: bool,
    /// A drain came while connections were mid-stream.
    drained_mid: bool,
}

impl Sim {
    fn new(seed: u64) -> Sim {
        let mut rng = Rng::new(seed);
        let buffers = 4 + rng.below(16) as u32;
        let buf_size = 16 + rng.below(100) as u32;
        let forwards = 2 + rng.below(2) as usize;
        let mut specs = Vec::new();
        let mut routes = Vec::new();
        let mut listeners = Vec::new();
        for i in 0..=forwards {
            let fd = 3 + i as i32;
            let echo = i == forwards;
            let upstreams: Vec<SocketAddr> = if echo {
                Vec::new()
            } else {
                (0..1 + rng.below(3))
                    .map(|u| addr(&format!("10.0.{i}.{}:{}", u + 1, 8000 + u)))
                    .collect()
            };
            let kind = if echo {
                ListenerKind::Echo
            } else {
                routes.push(RouteSpec {
                    upstreams: upstreams.clone(),
                    weights: Vec::new(),
                    balance: ringfwd::config::Balance::RoundRobin,
                    passive: crate::OFF_PASSIVE,
                    connect_timeout_ms: 1_000,
                    idle_ms: 1 << 40,
                    half_close_ms: 1 << 39,
                    bandwidth: None,
                    upstream_proto: Default::default(),
                });
                ListenerKind::Forward { route: i as u16 }
            };
            specs.push(ListenerSpec {
                name: format!("l{i}"),
                fd,
                kind,
                limit: 1024,
                front: Default::default(),
            });
            listeners.push(Listener {
                fd,
                upstreams,
                waiting: VecDeque::new(),
                accept: None,
                open: true,
                unarmed_since: None,
                accepted: 0,
                errors: 0,
            });
        }
        let mut conns = Vec::new();
        for c in 0..4 + rng.below(12) as usize {
            let listener = rng.below(listeners.len() as u64) as usize;
            let (cs, us) = (rng.next_u64(), rng.next_u64());
            let (ct, ut) = (rng.below(600), rng.below(600));
            let echo = listeners[listener].upstreams.is_empty();
            // Echo: the client gets its own stream back.
            let client = Peer::new(cs, if echo { cs } else { us }, ct);
            conns.push(Conn {
                listener,
                nth: 0,
                accepted: false,
                client,
                upstream: Peer::new(us, cs, if echo { 0 } else { ut }),
                tried: Vec::new(),
                outcomes: Vec::new(),
                connected: None,
                upstream_fd: None,
                sockets: 0,
            });
            listeners[listener].waiting.push_back(c);
        }
        let ending = match seed % 3 {
            0 => Ending::Served,
            1 => Ending::DrainMidStream,
            _ => Ending::StopMidStream,
        };
        // One seed in three has a descriptor budget of one to four relays.
        let budget = rng.chance(1, 3).then(|| 2 + 2 * rng.below(4) as u32);
        let engine = Engine::new(
            EngineConfig {
                shard: 0,
                buffers,
                cap: 1 + rng.below(4) as u32,
                listeners: specs,
                routes,
                fd_budget: budget.map_or(FdBudget::Unlimited, FdBudget::Max),
                ..EngineConfig::default()
            },
            0,
        );
        Sim {
            seed,
            rng,
            engine,
            now: 0,
            buf_size,
            ring: (0..buffers as u16).collect(),
            buf_data: vec![Vec::new(); buffers as usize],
            held: vec![false; buffers as usize],
            listeners,
            conns,
            socks: HashMap::new(),
            next_fd: 100,
            pending: Vec::new(),
            slot_conn: HashMap::new(),
            accepting: None,
            ops: Vec::new(),
            ending,
            out_of_fds: 0,
            budget,
            live_at_stop: None,
            cut_at_stop: 0,
            closes_at_stop: 0,
            stopped: false,
            drained_mid: false,
        }
    }

    fn new_sock(&mut self, conn: usize, role: Role) -> i32 {
        let fd = self.next_fd;
        self.next_fd += 1;
        self.socks.insert(
            fd,
            Sock {
                conn,
                role,
                open: true,
                ops: Vec::new(),
                recv: None,
                send: None,
            },
        );
        fd
    }

    fn sock(&mut self, fd: i32, what: &str) -> &mut Sock {
        let seed = self.seed;
        match self.socks.get_mut(&fd) {
            Some(s) if s.open => s,
            Some(_) => panic!("seed {seed}: {what} on closed fd {fd}"),
            None => panic!("seed {seed}: {what} on unknown fd {fd}"),
        }
    }

    fn peer_mut(&mut self, conn: usize, role: Role) -> &mut Peer {
        let c = &mut self.conns[conn];
        match role {
            Role::Client => &mut c.client,
            Role::Upstream => &mut c.upstream,
        }
    }

    fn deliver(&mut self, ud: u64, res: i32, flags: u32) {
        if trace() {
            eprintln!(
                "t={} cqe {:?} res={res} flags={flags:#x}",
                self.now,
                Token::decode(ud)
            );
        }
        self.engine.handle_cqe(ud, res, flags, self.now);
        self.run_ops();
    }

    fn run_ops(&mut self) {
        loop {
            self.engine.take_ops(&mut self.ops);
            if self.ops.is_empty() {
                return;
            }
            for op in std::mem::take(&mut self.ops) {
                self.execute(op);
            }
        }
    }

    fn conn_of(&mut self, token: u64) -> usize {
        let Some(t) = Token::decode(token) else {
            panic!("seed {}: undecodable token {token:#x}", self.seed);
        };
        let key = (t.slot.index, t.slot.generation);
        if !self.slot_conn.contains_key(&key)
            && let Some(c) = self.accepting.take()
        {
            self.slot_conn.insert(key, c);
        }
        match self.slot_conn.get(&key) {
            Some(&c) => c,
            None => panic!("seed {}: op for unknown slot {key:?}", self.seed),
        }
    }

    fn listener_of_fd(&self, fd: i32) -> usize {
        match self.listeners.iter().position(|l| l.fd == fd) {
            Some(i) => i,
            None => panic!("seed {}: listener op on fd {fd}", self.seed),
        }
    }

    fn execute(&mut self, op: Op) {
        if trace() {
            eprintln!("t={}   op {op:?}", self.now);
        }
        match op {
            Op::AcceptMulti { token, fd } | Op::Accept { token, fd } => {
                let i = self.listener_of_fd(fd.0);
                let mode = self.engine.mode();
                check!(
                    self,
                    mode == Mode::Running,
                    "accept armed on listener {i} while {mode:?}"
                );
                let l = &self.listeners[i];
                check!(self, l.open, "accept on closed listener {i}");
                check!(self, l.accept.is_none(), "second accept on listener {i}");
                let multi = matches!(op, Op::AcceptMulti { .. });
                self.listeners[i].accept = Some((token, multi));
                self.listeners[i].unarmed_since = None;
            }
            Op::CancelAccept { token, target } => {
                let found = self
                    .listeners
                    .iter_mut()
                    .find(|l| l.accept.is_some_and(|(t, _)| t == target));
                let res = match found {
                    Some(l) => {
                        l.accept = None;
                        self.pending.push(Pending {
                            ud: target,
                            fd: None,
                            action: Action::Fixed(-libc::ECANCELED),
                        });
                        0
                    }
                    None => -libc::ENOENT,
                };
                self.pending.push(Pending {
                    ud: token,
                    fd: None,
                    action: Action::Fixed(res),
                });
            }
            Op::CloseListener { token, fd } => {
                let i = self.listener_of_fd(fd.0);
                let l = &self.listeners[i];
                check!(self, l.open, "listener {i} closed twice");
                check!(
                    self,
                    l.accept.is_none(),
                    "listener {i} closed with its accept armed"
                );
                self.listeners[i].open = false;
                self.pending.push(Pending {
                    ud: token,
                    fd: None,
                    action: Action::Fixed(0),
                });
            }
            Op::Reject { token, fd } => {
                let s = self.sock(fd.0, "reject");
                let busy = !s.ops.is_empty();
                s.open = false;
                check!(self, !busy, "reject of busy fd {}", fd.0);
                self.pending.push(Pending {
                    ud: token,
                    fd: None,
                    action: Action::Fixed(0),
                });
            }
            Op::Socket { token, .. } => {
                let conn = self.conn_of(token);
                self.conns[conn].sockets += 1;
                let action = if self.rng.chance(1, 30) {
                    Action::SocketFails { conn }
                } else {
                    Action::SocketCreate { conn }
                };
                self.pending.push(Pending {
                    ud: token,
                    fd: None,
                    action,
                });
            }
            Op::Connect {
                token,
                timeout_token,
                fd,
                addr,
                ..
            } => self.connect(token, timeout_token, fd.0, addr),
            Op::RecvMulti { token, fd } => {
                let s = self.sock(fd.0, "recv");
                let dup = s.recv.replace(token).is_some();
                s.ops.push(token);
                check!(self, !dup, "two receives armed on fd {}", fd.0);
            }
            Op::Send {
                token,
                fd,
                bid,
                offset,
                len,
            } => {
                let held = self.held.get(bid as usize).copied().unwrap_or(false);
                check!(self, held, "send from buffer {bid} not held");
                let data_len = self.buf_data[bid as usize].len() as u32;
                check!(
                    self,
                    len > 0 && offset + len <= data_len,
                    "send {offset}+{len} beyond data {data_len}"
                );
                let s = self.sock(fd.0, "send");
                let dup = s.send.replace(token).is_some();
                s.ops.push(token);
                check!(self, !dup, "two sends in flight on fd {}", fd.0);
                self.pending.push(Pending {
                    ud: token,
                    fd: Some(fd.0),
                    action: Action::Send { bid, offset, len },
                });
            }
            Op::Shutdown { token, fd } => {
                self.sock(fd.0, "shutdown").ops.push(token);
                self.fin_reaches_peer(fd.0);
                self.pending.push(Pending {
                    ud: token,
                    fd: Some(fd.0),
                    action: Action::Shutdown,
                });
            }
            Op::CancelOne { token, target } => {
                let n = self.cancel_where(|u| u == target);
                self.pending.push(Pending {
                    ud: token,
                    fd: None,
                    action: Action::Fixed(if n > 0 { 0 } else { -libc::ENOENT }),
                });
            }
            Op::CancelFd { token, fd } => {
                let targets = self.sock(fd.0, "cancel").ops.clone();
                let n = self.cancel_where(|u| targets.contains(&u));
                self.pending.push(Pending {
                    ud: token,
                    fd: None,
                    action: Action::Fixed(if n > 0 { n as i32 } else { -libc::ENOENT }),
                });
            }
            Op::Close { token, fd, linger0 } => {
                let s = self.sock(fd.0, "close");
                let busy = s.ops.len();
                s.open = false;
                check!(
                    self,
                    busy == 0,
                    "close of fd {} while {busy} op(s) name it",
                    fd.0
                );
                self.pending.push(Pending {
                    ud: token,
                    fd: Some(fd.0),
                    action: Action::Close { linger0 },
                });
            }
            Op::Release { bid } => {
                let held = self.held.get(bid as usize).copied().unwrap_or(false);
                check!(self, held, "release of buffer {bid} not held");
                self.held[bid as usize] = false;
                self.ring.push_back(bid);
            }
            // The accept watch: the clients waiting in the listener's queue.
            Op::ListenQueue { token, fd } => {
                let i = self.listener_of_fd(fd.0);
                let n = i32::try_from(self.listeners[i].waiting.len()).unwrap_or(i32::MAX);
                self.pending.push(Pending {
                    ud: token,
                    fd: None,
                    action: Action::Fixed(n),
                });
            }
            other => check!(self, false, "unexpected operation {other:?}"),
        }
    }

    fn connect(&mut self, token: u64, timeout_token: u64, fd: i32, to: SocketAddr) {
        let conn = self.conn_of(token);
        let c = &self.conns[conn];
        let ups = &self.listeners[c.listener].upstreams;
        check!(
            self,
            ups.contains(&to),
            "conn {conn} of listener {} connects to {to}, not one of its route's {ups:?}",
            c.listener
        );
        // Round robin: the route's nth connection starts at upstream nth % n
        // and goes on in order, each upstream at most once.
        let n = ups.len() as u64;
        let want = ups[((c.nth + c.tried.len() as u64) % n) as usize];
        check!(
            self,
            to == want && c.tried.len() < ups.len(),
            "conn {conn} (#{} of listener {}) attempt {} goes to {to}; round robin says {want}",
            c.nth,
            c.listener,
            c.tried.len()
        );
        check!(
            self,
            c.upstream_fd == Some(fd),
            "connect on fd {fd}, not the conn's upstream socket"
        );
        self.conns[conn].tried.push(to);
        let outcome = match self.rng.below(12) {
            0 | 1 => Attempt::Refused,
            2 => Attempt::Timeout,
            _ => Attempt::Ok,
        };
        self.sock(fd, "connect").ops.push(token);
        self.pending.push(Pending {
            ud: token,
            fd: Some(fd),
            action: Action::Connect { conn, outcome },
        });
        self.pending.push(Pending {
            ud: timeout_token,
            fd: None,
            action: Action::ConnectTimeout { outcome },
        });
    }

    fn cancel_where(&mut self, pred: impl Fn(u64) -> bool) -> usize {
        let mut n = 0;
        let mut fds: Vec<i32> = self.socks.keys().copied().collect();
        fds.sort_unstable();
        for fd in fds {
            let Some(s) = self.socks.get_mut(&fd) else {
                continue;
            };
            if let Some(r) = s.recv
                && pred(r)
            {
                s.recv = None;
                n += 1;
                self.pending.push(Pending {
                    ud: r,
                    fd: Some(fd),
                    action: Action::Fixed(-libc::ECANCELED),
                });
            }
        }
        for p in &mut self.pending {
            if pred(p.ud) && matches!(p.action, Action::Send { .. } | Action::Connect { .. }) {
                p.action = Action::Fixed(-libc::ECANCELED);
                n += 1;
            }
        }
        n
    }

    fn release_fd_op(&mut self, fd: Option<i32>, ud: u64) {
        if let Some(s) = fd.and_then(|fd| self.socks.get_mut(&fd)) {
            if let Some(i) = s.ops.iter().position(|&u| u == ud) {
                s.ops.swap_remove(i);
            }
            if s.send == Some(ud) {
                s.send = None;
            }
            if s.recv == Some(ud) {
                s.recv = None;
            }
        }
    }

    fn complete(&mut self, p: Pending) {
        let ud = p.ud;
        match p.action {
            Action::Fixed(res) => {
                self.release_fd_op(p.fd, ud);
                self.deliver(ud, res, 0);
            }
            Action::SocketCreate { conn } => {
                let fd = self.new_sock(conn, Role::Upstream);
                self.conns[conn].upstream_fd = Some(fd);
                self.deliver(ud, fd, 0);
            }
            Action::SocketFails { conn } => {
                // The process is out of descriptors: every armed accept pauses.
                if self.listeners.iter().any(|l| l.accept.is_some()) {
                    self.out_of_fds += 1;
                }
                let c = &self.conns[conn];
                let ups = &self.listeners[c.listener].upstreams;
                let picked = ups[((c.nth + c.sockets - 1) % ups.len() as u64) as usize];
                self.conns[conn].outcomes.push((picked, Attempt::NoSocket));
                self.deliver(ud, -libc::EMFILE, 0);
            }
            Action::Connect { conn, outcome } => {
                self.release_fd_op(p.fd, ud);
                if let Some(&to) = self.conns[conn].tried.last() {
                    self.conns[conn].outcomes.push((to, outcome));
                }
                let res = match outcome {
                    Attempt::Ok => {
                        self.conns[conn].connected = self.conns[conn].tried.last().copied();
                        0
                    }
                    Attempt::Refused => -libc::ECONNREFUSED,
                    // (A connect never follows a failed socket.)
                    Attempt::Timeout | Attempt::NoSocket => -libc::ECANCELED,
                };
                self.deliver(ud, res, 0);
            }
            Action::ConnectTimeout { outcome } => {
                let res = if outcome == Attempt::Timeout {
                    -libc::ETIME
                } else {
                    -libc::ECANCELED
                };
                self.deliver(ud, res, 0);
            }
            Action::Send { bid, offset, len } => self.complete_send(p, bid, offset, len),
            Action::Shutdown => {
                self.release_fd_op(p.fd, ud);
                self.deliver(ud, 0, 0);
            }
            Action::Close { linger0 } => {
                if let Some(s) = p.fd.and_then(|fd| self.socks.get(&fd))
                    && linger0
                {
                    let (conn, role) = (s.conn, s.role);
                    self.peer_mut(conn, role).got_reset = true;
                }
                self.deliver(ud, 0, 0);
            }
        }
    }

    /// A send moves all or part of what it names to the peer, which checks it.
    fn complete_send(&mut self, p: Pending, bid: u16, offset: u32, len: u32) {
        let Some(fd) = p.fd else {
            return;
        };
        let (conn, role) = (self.socks[&fd].conn, self.socks[&fd].role);
        let n = if self.rng.chance(1, 3) {
            1 + self.rng.below(u64::from(len)) as u32
        } else {
            len
        };
        let data = self.buf_data[bid as usize][offset as usize..(offset + n) as usize].to_vec();
        let seed = self.seed;
        let peer = self.peer_mut(conn, role);
        assert!(
            !peer.got_fin,
            "seed {seed}: data after FIN to {role:?} of conn {conn}"
        );
        if let Err(at) = peer.expect.check(&data) {
            panic!("seed {seed}: {role:?} of conn {conn} got a wrong byte at {at}");
        }
        peer.received += u64::from(n);
        self.release_fd_op(p.fd, p.ud);
        self.deliver(p.ud, n as i32, 0);
    }

    /// The FIN of a shutdown on `fd` reaches its peer: only after all data.
    fn fin_reaches_peer(&mut self, fd: i32) {
        let (conn, role) = (self.socks[&fd].conn, self.socks[&fd].role);
        let c = &self.conns[conn];
        let echo = self.listeners[c.listener].upstreams.is_empty();
        let owed = match (role, echo) {
            (Role::Client, true) => c.client.total,
            (Role::Client, false) => c.upstream.total,
            (Role::Upstream, _) => c.client.total,
        };
        // A client whose every upstream failed gets a FIN with nothing before it.
        let lingering = !echo && role == Role::Client && c.connected.is_none();
        let seed = self.seed;
        let peer = self.peer_mut(conn, role);
        assert!(
            lingering || peer.received == owed,
            "seed {seed}: FIN to {role:?} of conn {conn} after {} of {owed} bytes",
            peer.received
        );
        peer.got_fin = true;
    }

    /// A peer writes more of its stream, or its FIN.
    fn peer_acts(&mut self, fd: i32) {
        let (conn, role) = (self.socks[&fd].conn, self.socks[&fd].role);
        let chunk = 1 + self.rng.below(200);
        let p = self.peer_mut(conn, role);
        if p.written < p.total {
            p.written = p.total.min(p.written + chunk);
        } else {
            p.fin_written = true;
        }
    }

    /// The armed receive on `fd` takes what the peer wrote (or its FIN).
    fn receive(&mut self, fd: i32) {
        let Some(token) = self.socks[&fd].recv else {
            return;
        };
        let (conn, role) = (self.socks[&fd].conn, self.socks[&fd].role);
        let chunk = 1 + self.rng.below(u64::from(self.buf_size));
        let end_multishot = self.rng.chance(1, 8);
        let peer = self.peer_mut(conn, role);
        let avail = peer.written - peer.taken;
        if avail == 0 {
            if peer.fin_written && !peer.eof_delivered {
                peer.eof_delivered = true;
                self.release_fd_op(Some(fd), token);
                self.deliver(token, 0, 0);
            }
            return;
        }
        let Some(bid) = self.ring.pop_front() else {
            self.release_fd_op(Some(fd), token);
            self.deliver(token, -libc::ENOBUFS, 0);
            return;
        };
        let n = chunk.min(avail) as usize;
        let mut data = vec![0u8; n];
        let peer = self.peer_mut(conn, role);
        peer.source.fill(&mut data);
        peer.taken += n as u64;
        self.buf_data[bid as usize] = data;
        self.held[bid as usize] = true;
        let mut flags = CQE_F_BUFFER | (u32::from(bid) << 16);
        if end_multishot {
            self.release_fd_op(Some(fd), token);
        } else {
            flags |= CQE_F_MORE;
        }
        self.deliver(token, n as i32, flags);
    }

    /// Listener `i`'s armed accept completes: a client, or an error.
    fn accept(&mut self, i: usize) {
        let Some((token, multi)) = self.listeners[i].accept else {
            return;
        };
        if self.rng.chance(1, 6) {
            let errno = match self.rng.below(5) {
                0 => libc::EMFILE,
                1 => libc::ENFILE,
                2 => libc::ECONNABORTED,
                3 => libc::EPERM,
                _ => libc::ENOMEM,
            };
            if matches!(errno, libc::EMFILE | libc::ENFILE) {
                self.out_of_fds += 1;
            } else {
                self.listeners[i].errors += 1;
            }
            self.listeners[i].accept = None;
            self.listeners[i].unarmed_since = Some(self.now);
            self.deliver(token, -errno, 0);
            return;
        }
        let Some(conn) = self.listeners[i].waiting.pop_front() else {
            return;
        };
        let fd = self.new_sock(conn, Role::Client);
        let l = &mut self.listeners[i];
        self.conns[conn].nth = l.accepted;
        self.conns[conn].accepted = true;
        l.accepted += 1;
        let more = multi && self.rng.chance(7, 8);
        if !more {
            l.accept = None;
            l.unarmed_since = Some(self.now);
        }
        self.accepting = Some(conn);
        self.deliver(token, fd, if more { CQE_F_MORE } else { 0 });
        self.accepting = None;
    }

    fn open_fds(&self, armed: bool) -> Vec<i32> {
        let mut fds: Vec<i32> = self
            .socks
            .iter()
            .filter(|(_, s)| s.open && (!armed || s.recv.is_some()))
            .map(|(f, _)| *f)
            .collect();
        // Sorted: HashMap order differs between runs, and a seed must replay.
        fds.sort_unstable();
        fds
    }

    fn step(&mut self) {
        match self.rng.below(100) {
            0..=29 if !self.pending.is_empty() => {
                let i = self.rng.below(self.pending.len() as u64) as usize;
                let p = self.pending.swap_remove(i);
                self.complete(p);
            }
            30..=49 => {
                let fds = self.open_fds(false);
                if !fds.is_empty() {
                    let fd = fds[self.rng.below(fds.len() as u64) as usize];
                    self.peer_acts(fd);
                }
            }
            50..=79 => {
                let fds = self.open_fds(true);
                if !fds.is_empty() {
                    let fd = fds[self.rng.below(fds.len() as u64) as usize];
                    self.receive(fd);
                }
            }
            80..=89 => {
                let i = self.rng.below(self.listeners.len() as u64) as usize;
                self.accept(i);
            }
            _ => {
                self.now += 1 + self.rng.below(50);
                self.engine.advance(self.now);
                self.run_ops();
            }
        }
        self.engine.wake_starved(self.now);
        self.run_ops();
        if self.engine.mode() == Mode::Running {
            self.check_listeners_armed();
        }
        if let Some(budget) = self.budget {
            // Near the budget every listener arms a single accept (and at
            // start each arms one whatever the room), so each other listener
            // may bring in one connection over it: the slack the runtime's
            // descriptor RESERVE has to cover. No more than that.
            let slack: u32 = self.listeners.iter().map(|l| l.need()).sum::<u32>()
                - self.listeners.iter().map(|l| l.need()).min().unwrap_or(0);
            let open = self.socks.values().filter(|s| s.open).count() as u32;
            check!(
                self,
                open <= budget + slack,
                "{open} sockets open over a budget of {budget} and {slack} of slack"
            );
        }
    }

    /// A listener whose accept ended is re-armed within its back-off.
    /// A listener without an accept because the descriptor budget has no
    /// room for one more connection is waiting, not lost.
    fn check_listeners_armed(&mut self) {
        for l in &mut self.listeners {
            if l.unarmed_since.is_some() && !self.engine.fd_room(l.need()) {
                l.unarmed_since = Some(self.now);
            }
        }
        for (i, l) in self.listeners.iter().enumerate() {
            if let Some(since) = l.unarmed_since {
                check!(
                    self,
                    self.now - since <= REARM_WITHIN_MS,
                    "listener {i} without an accept since t={since} (now {})",
                    self.now
                );
            }
        }
    }

    fn all_served(&self) -> bool {
        self.listeners.iter().all(|l| l.waiting.is_empty())
            && self.engine.connections() == 0
            && self.pending.is_empty()
    }

    /// Accepted connections that cannot have ended on their own: relaying
    /// (or echoing) and a stream or a FIN not yet delivered.
    fn unfinished(&self) -> u64 {
        self.conns
            .iter()
            .filter(|c| {
                let echo = self.listeners[c.listener].upstreams.is_empty();
                let relaying = echo || c.connected.is_some();
                let finished = c.client.got_fin && (echo || c.upstream.got_fin);
                c.accepted && relaying && !finished
            })
            .count() as u64
    }

    /// Some accepted connection is in the middle of its streams.
    fn mid_stream(&self) -> bool {
        self.conns.iter().any(|c| {
            c.accepted && c.client.written > 0 && !(c.client.got_fin && c.upstream.got_fin)
        })
    }
}

fn run(sim: &mut Sim) {
    sim.engine.start();
    sim.run_ops();
    let mut steps = 0u64;
    let mut ended = false;
    loop {
        steps += 1;
        check!(
            sim,
            steps < 300_000,
            "not done in 300k steps: {} connections, {} completions owed, listeners open {:?}",
            sim.engine.connections(),
            sim.pending.len(),
            sim.listeners.iter().map(|l| l.open).collect::<Vec<_>>()
        );
        if !ended && sim.ending != Ending::Served && sim.mid_stream() && sim.rng.chance(1, 200) {
            ended = true;
            if sim.ending == Ending::DrainMidStream {
                sim.drained_mid = true;
                sim.engine.drain();
            } else {
                sim.live_at_stop = Some(sim.engine.connections());
                sim.cut_at_stop = sim.unfinished();
                sim.closes_at_stop = total_closes(&sim.engine.stats());
                sim.stopped = true;
                sim.engine.stop(sim.now);
            }
            sim.run_ops();
        }
        if !ended && sim.all_served() {
            ended = true;
            sim.engine.drain();
            sim.run_ops();
        }
        if ended && sim.engine.is_done() && sim.pending.is_empty() {
            return;
        }
        sim.step();
    }
}

fn final_checks(sim: &mut Sim) {
    check!(sim, sim.engine.is_done(), "engine not done");
    check!(
        sim,
        sim.engine.held_buffers() == 0,
        "{} buffers held",
        sim.engine.held_buffers()
    );
    check!(
        sim,
        sim.ring.len() == sim.held.len(),
        "{} of {} buffers back in the ring",
        sim.ring.len(),
        sim.held.len()
    );
    for (i, l) in sim.listeners.iter().enumerate() {
        check!(
            sim,
            !l.open && l.accept.is_none(),
            "listener {i} open or armed at the end"
        );
    }
    for (fd, s) in &sim.socks {
        check!(
            sim,
            !s.open && s.ops.is_empty(),
            "fd {fd} open or named at the end: {s:?}"
        );
    }
    // Every stream of a connection not cut by a stop arrived whole, with its FIN.
    for (i, c) in sim.conns.iter().enumerate() {
        let echo = sim.listeners[c.listener].upstreams.is_empty();
        if !c.accepted || sim.stopped {
            continue;
        }
        if echo {
            check!(
                sim,
                c.client.received == c.client.total && c.client.got_fin,
                "echo conn {i}: client got {} of its {} bytes back, fin {}",
                c.client.received,
                c.client.total,
                c.client.got_fin
            );
        } else if c.connected.is_some() {
            check!(
                sim,
                c.client.received == c.upstream.total
                    && c.client.got_fin
                    && c.upstream.received == c.client.total
                    && c.upstream.got_fin,
                "conn {i}: client got {}/{} fin {}, upstream got {}/{} fin {}",
                c.client.received,
                c.upstream.total,
                c.client.got_fin,
                c.upstream.received,
                c.client.total,
                c.upstream.got_fin
            );
        }
    }
    let stats = sim.engine.stats();
    check_listener_counters(sim, &stats);
    check_upstream_counters(sim, &stats);
    // A stop closes every live connection once; those cut mid-stream as
    // `shutdown` (the others had already finished and keep their reason).
    let shutdown = stats.closes_for(CloseReason::Shutdown);
    match sim.live_at_stop {
        Some(live) => {
            let after = total_closes(&stats) - sim.closes_at_stop;
            check!(
                sim,
                after == live as u64 && (sim.cut_at_stop..=live as u64).contains(&shutdown),
                "{live} connections at the stop ({} cut mid-stream): {after} closes after it, \
                 {shutdown} as shutdown",
                sim.cut_at_stop
            );
        }
        None => check!(sim, shutdown == 0, "shutdown closes without a stop"),
    }
    check!(
        sim,
        stats.closes_for(CloseReason::Error) == 0,
        "error closes: {}",
        stats.to_kv()
    );
}

fn total_closes(stats: &ShardStats) -> u64 {
    CloseReason::ALL.iter().map(|r| stats.closes_for(*r)).sum()
}

fn check_listener_counters(sim: &Sim, stats: &ShardStats) {
    let paused = stats.shard.get(Counter::AcceptPausedFd);
    check!(
        sim,
        paused == sim.out_of_fds,
        "accept_paused_fd {paused}, {} EMFILE/ENFILE",
        sim.out_of_fds
    );
    for (i, l) in sim.listeners.iter().enumerate() {
        let c = &stats.listeners[i].counters;
        let closes: u64 = CloseReason::ALL.iter().map(|r| c.closes_for(*r)).sum();
        let (c2u, u2c) = sim
            .conns
            .iter()
            .filter(|c| c.listener == i)
            .fold((0, 0), |(a, b), c| {
                if l.upstreams.is_empty() {
                    (a + c.client.taken, b + c.client.received)
                } else {
                    (a + c.upstream.received, b + c.client.received)
                }
            });
        // A listener's attempts are its upstreams' attempts, counted alike.
        let name = &stats.listeners[i].name;
        let upstream_attempts: u64 = stats
            .upstreams
            .iter()
            .filter(|u| &u.listener == name)
            .map(|u| u.counters.get(Counter::ConnectAttempts))
            .sum();
        let want = [
            ("accepted", c.get(Counter::Accepted), l.accepted),
            ("closes", closes, l.accepted),
            (
                "connect_attempts (= its upstreams')",
                c.get(Counter::ConnectAttempts),
                upstream_attempts,
            ),
            ("accept_errors", c.get(Counter::AcceptErrors), l.errors),
            ("bytes_c2u", c.get(Counter::BytesC2u), c2u),
            ("bytes_u2c", c.get(Counter::BytesU2c), u2c),
            ("active", c.get(Counter::Active), 0),
        ];
        for (what, counted, saw) in want {
            check!(
                sim,
                counted == saw,
                "listener {i}: {what} counted {counted}, the kernel saw {saw} ({})",
                c.to_kv()
            );
        }
    }
}

fn check_upstream_counters(sim: &Sim, stats: &ShardStats) {
    let mut seen: HashMap<SocketAddr, UpstreamSeen> = HashMap::new();
    for c in &sim.conns {
        for &(u, outcome) in &c.outcomes {
            let e = seen.entry(u).or_default();
            e.refused += u64::from(matches!(outcome, Attempt::Refused | Attempt::Timeout));
            e.errors += u64::from(outcome == Attempt::NoSocket);
        }
        // Each upstream picked is an attempt, whatever ended it (a stop may
        // come before its socket connects): the n-th connection's k-th pick
        // is upstream n + k of the route, round robin.
        let ups = &sim.listeners[c.listener].upstreams;
        for k in 0..c.sockets {
            if let Some(&u) = ups.get(((c.nth + k) % ups.len().max(1) as u64) as usize) {
                seen.entry(u).or_default().attempts += 1;
            }
        }
        if c.sockets == 0 || ups.is_empty() {
            continue;
        }
        let last = ups[((c.nth + c.sockets - 1) % ups.len() as u64) as usize];
        let e = seen.entry(last).or_default();
        e.closes += 1;
        if c.connected.is_some() {
            e.c2u += c.upstream.received;
            e.u2c += c.client.received;
        }
    }
    for l in &sim.listeners {
        for u in &l.upstreams {
            let name = u.to_string();
            let Some(s) = stats.upstreams.iter().find(|s| s.upstream == name) else {
                panic!("seed {}: no counters for upstream {name}", sim.seed);
            };
            let c = &s.counters;
            let e = seen.remove(u).unwrap_or_default();
            let closes: u64 = CloseReason::ALL.iter().map(|r| c.closes_for(*r)).sum();
            let failed = c.get(Counter::ConnectRefused) + c.get(Counter::ConnectTimeouts);
            let want = [
                (
                    "connect_attempts",
                    c.get(Counter::ConnectAttempts),
                    e.attempts,
                ),
                ("refused+timeouts", failed, e.refused),
                ("connect_errors", c.get(Counter::ConnectErrors), e.errors),
                ("closes", closes, e.closes),
                ("bytes_c2u", c.get(Counter::BytesC2u), e.c2u),
                ("bytes_u2c", c.get(Counter::BytesU2c), e.u2c),
            ];
            for (what, counted, saw) in want {
                check!(
                    sim,
                    counted == saw,
                    "upstream {name}: {what} counted {counted}, the kernel saw {saw} ({})",
                    c.to_kv()
                );
            }
        }
    }
}

#[test]
fn several_listeners_accept_errors_and_mid_stream_drains_survive_random_schedules() {
    let seeds = seeds(1500);
    let mut totals = ShardStats::default();
    let mut mid = [0u64; 2];
    for &seed in &seeds {
        let mut sim = Sim::new(seed);
        run(&mut sim);
        final_checks(&mut sim);
        mid[0] += u64::from(sim.drained_mid);
        mid[1] += u64::from(sim.stopped);
        totals.merge(&sim.engine.stats());
    }
    if seeds.len() >= 100 {
        let kv = totals.to_kv();
        for (what, n) in [
            ("accept errors", totals.get(Counter::AcceptErrors)),
            ("accept pauses", totals.get(Counter::AcceptPausedFd)),
            ("socket errors", totals.get(Counter::ConnectErrors)),
            ("refusals", totals.get(Counter::ConnectRefused)),
            ("connect timeouts", totals.get(Counter::ConnectTimeouts)),
            ("shutdown closes", totals.closes_for(CloseReason::Shutdown)),
            ("ENOBUFS", totals.get(Counter::Enobufs)),
            ("drains mid-stream", mid[0]),
            ("stops mid-stream", mid[1]),
        ] {
            assert!(
                n > 0,
                "no {what} in any seed: the test lost its teeth ({kv})"
            );
        }
    }
}

/// Passive health off: these models expect every attempt to go where
/// round robin sends it (ejection is tested in `upstream` and the
/// integration tests).
const OFF_PASSIVE: ringfwd::config::PassiveHealth = ringfwd::config::PassiveHealth {
    max_fails: 0,
    fail_timeout: std::time::Duration::from_secs(10),
};
