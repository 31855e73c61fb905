//! Deterministic simulation of the shard engine against a fake kernel: random
//! short sends and receives, EOF in either order, resets, ENOBUFS, connect
//! refusals and timeouts, idle timeouts, peers that stop reading, multishot
//! receives that end on their own, and stale completions for reused slots.
//! Every byte each peer receives is checked against what the other sent, and
//! the engine's use of descriptors and buffers is checked at every step.
//!
//! With splice on, the fake kernel also has pipes: a splice in takes a random
//! part of what the peer has written (up to its length and the pipe's room)
//! and blocks while there is nothing, a splice out moves a random part or all
//! of what it asks for and blocks while the peer does not read; cancels
//! interrupt them (a cancel by descriptor only matches a splice's output),
//! sometimes after they moved data. Checked on top: one splice per pipe at a
//! time, a splice in only into an empty pipe, no pipe closed while named, and
//! every pipe back in the pool (or discarded with data in it) at the end.
//!
//! Reproduce a failure with `SIM_SEED=<seed> cargo test --test simulator`;
//! `SIM_SEEDS=<n>` runs more seeds.

use std::collections::{HashMap, VecDeque};

use ringfwd::shard::engine::{
    CQE_F_BUFFER, CQE_F_MORE, Engine, EngineConfig, FdBudget, ListenerKind, ListenerSpec, Op,
    PipeFds, RouteSpec,
};
use ringfwd::shard::slab::ConnId;
use ringfwd::shard::token::{OpKind, Token};
use ringfwd::stats::{CloseReason, Counter};
use ringfwd::tcp::splice::{SpliceConfig, SpliceMode};
use ringfwd::verify::{Pattern, Rng};

/// An address literal of the simulation (never fails on the constants used).
fn addr(s: &str) -> std::net::SocketAddr {
    s.parse().unwrap_or_else(|e| panic!("bad address {s}: {e}"))
}

const LISTEN_FD: i32 = 3;

/// How one upstream connection attempt ends.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Attempt {
    Ok,
    Refused,
    Timeout,
}

/// What a peer does.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Behaviour {
    /// Writes its stream, then FIN; reads everything.
    Normal,
    /// Resets after writing part of its stream.
    Resets,
    /// Writes part of its stream and then goes silent (never FIN).
    GoesIdle,
}

#[derive(Debug)]
struct Peer {
    behaviour: Behaviour,
    /// Total bytes this peer will write.
    total: u64,
    written: u64,
    fin_written: bool,
    reset: bool,
    /// Source stream of what this peer writes; advanced as the forwarder receives.
    source: Pattern,
    /// Bytes the forwarder has received from this peer.
    taken: u64,
    eof_delivered: bool,
    /// What this peer receives (the other peer's stream).
    expect: Pattern,
    received: u64,
    got_fin: bool,
    got_reset: bool,
    reading: bool,
}

impl Peer {
    fn new(seed: u64, other_seed: u64, total: u64, behaviour: Behaviour) -> Peer {
        Peer {
            behaviour,
            total,
            written: 0,
            fin_written: false,
            reset: false,
            source: Pattern::new(seed),
            taken: 0,
            eof_delivered: false,
            expect: Pattern::new(other_seed),
            received: 0,
            got_fin: false,
            got_reset: false,
            reading: true,
        }
    }
}

/// One client connection of the simulation and its upstream attempts.
#[derive(Debug)]
struct SimConn {
    client_fd: i32,
    upstream_fd: Option<i32>,
    attempts: Vec<Attempt>,
    attempt: usize,
    /// Upstreams tried, in order (each at most once per client).
    tried: Vec<std::net::SocketAddr>,
    client: Peer,
    upstream: Peer,
    connected: bool,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Role {
    Client,
    Upstream,
}

#[derive(Debug)]
struct FakeSock {
    conn: usize,
    role: Role,
    open: bool,
    /// Every user_data in flight that names this descriptor.
    ops: Vec<u64>,
    recv: Option<u64>,
    /// The armed receive is a single one of at most this many bytes
    /// (`bandwidth_limit`), not a multishot one.
    recv_max: Option<u32>,
    send: Option<u64>,
}

#[derive(Debug, Clone, Copy)]
struct Pending {
    user_data: u64,
    /// Descriptor the operation uses (released from `ops` on completion).
    fd: Option<i32>,
    action: Action,
}

#[derive(Debug, Clone, Copy)]
enum Action {
    Fixed(i32),
    SocketCreate {
        conn: usize,
    },
    Connect {
        conn: usize,
        outcome: Attempt,
    },
    ConnectTimeout {
        outcome: Attempt,
    },
    Send {
        bid: u16,
        offset: u32,
        len: u32,
    },
    Shutdown,
    Close {
        linger0: bool,
    },
    /// A multishot receive's data completion posted before its cancel took
    /// effect; the final ECANCELED follows.
    RecvLate {
        bid: u16,
        len: u32,
    },
    /// Socket `Pending::fd` → fake pipe `pipe`.
    SpliceIn {
        pipe: usize,
        len: u32,
        cancelled: bool,
    },
    /// Fake pipe `pipe` → socket `Pending::fd`.
    SpliceOut {
        pipe: usize,
        len: u32,
        cancelled: bool,
    },
}

/// A kernel pipe of the fake kernel.
#[derive(Debug)]
struct FakePipe {
    read: i32,
    write: i32,
    data: VecDeque<u8>,
    cap: usize,
    open: bool,
    /// The splice naming this pipe, if one is in flight.
    busy: Option<u64>,
}

struct Sim {
    seed: u64,
    rng: Rng,
    engine: Engine,
    now: u64,
    idle_ms: u64,
    buf_size: u32,
    ring: VecDeque<u16>,
    buf_data: Vec<Vec<u8>>,
    held: Vec<bool>,
    socks: HashMap<i32, FakeSock>,
    next_fd: i32,
    pending: Vec<Pending>,
    accept: Option<u64>,
    /// Whether the armed accept is multishot.
    accept_multi: bool,
    conns: Vec<SimConn>,
    slot_conn: HashMap<(u32, u32), usize>,
    waiting_clients: VecDeque<usize>,
    /// Completions already delivered, kept for stale re-delivery.
    history: Vec<(u64, Token)>,
    stale_injected: u64,
    /// The client whose accept completion is being delivered (maps its slot).
    accepting: Option<usize>,
    rejected: Vec<bool>,
    clean: bool,
    ops: Vec<Op>,
    splice: SpliceMode,
    fake_pipes: Vec<FakePipe>,
    /// Pipe descriptor -> index in `fake_pipes`.
    pipe_fds: HashMap<i32, usize>,
    /// Replacements the fake kernel refused (the engine's budget shrank).
    pipes_gone: usize,
    /// Pipes discarded (each must have held data).
    pipes_discarded: usize,
    /// Descriptors the engine may hold for connections (None: no limit).
    fd_budget: Option<u32>,
    /// `bandwidth_limit` of the route, bytes per second per direction.
    bandwidth: Option<u64>,
    /// Single receives the engine issued (a limited relay's).
    single_recvs: u64,
}

/// One seed in four runs with a descriptor budget of one to three relays
/// (taken from the seed, not the random stream, so other seeds replay as before).
fn fd_budget(seed: u64) -> Option<u32> {
    (seed % 4 == 1).then(|| 2 * (1 + (seed / 4 % 3) as u32))
}

fn trace() -> bool {
    std::env::var_os("SIM_TRACE").is_some()
}

macro_rules! check {
    ($sim:expr, $cond:expr, $($arg:tt)+) => {
        if !$cond {
            panic!("seed {}: {}", $sim.seed, format!($($arg)+));
        }
    };
}

impl Sim {
    fn new(seed: u64) -> Sim {
        Sim::with_splice(seed, SpliceMode::Off)
    }

    fn with_splice(seed: u64, splice: SpliceMode) -> Sim {
        Sim::build(seed, splice, None)
    }

    /// `bandwidth` bytes per second per connection direction (taken by the
    /// caller, not from the random stream, so the schedule is the seed's).
    fn build(seed: u64, splice: SpliceMode, bandwidth: Option<u64>) -> Sim {
        let mut rng = Rng::new(seed);
        // One seed in three is "clean": no resets, no silent peers, no
        // stalled readers, an upstream that eventually answers. Every byte and
        // both FINs must then arrive.
        let clean = seed % 3 == 0;
        let buffers = 4 + rng.below(12) as u32;
        let buf_size = 16 + rng.below(100) as u32;
        let cap = 1 + rng.below(4) as u32;
        // A clean run must not time out: the scheduler, not the peers, decides
        // how long a peer waits between actions.
        let idle_ms = if clean {
            1 << 40
        } else {
            1_000 + rng.below(4_000)
        };
        let clients = 1 + rng.below(6) as usize;
        let limit = if clean { 64 } else { 1 + rng.below(6) as u32 };
        // Splice runs: a small pipe budget (often spent), small pipes (many
        // short splices), longer streams (enough full buffers to switch).
        let (pipes, pipe_size, max_stream) = if splice == SpliceMode::Off {
            (0, 0, 600)
        } else {
            (
                rng.below(5) as usize,
                1 + rng.below(300) as u32,
                1 + rng.below(6000),
            )
        };
        let mut next_fd = 10;
        let mut fake_pipes = Vec::new();
        let mut pipe_fds = HashMap::new();
        for i in 0..pipes {
            let (read, write) = (next_fd, next_fd + 1);
            next_fd += 2;
            pipe_fds.insert(read, i);
            pipe_fds.insert(write, i);
            fake_pipes.push(FakePipe {
                read,
                write,
                data: VecDeque::new(),
                cap: pipe_size as usize,
                open: true,
                busy: None,
            });
        }
        let engine = Engine::new(
            EngineConfig {
                shard: 0,
                buffers,
                cap,
                listeners: vec![ListenerSpec {
                    name: "sim".into(),
                    fd: LISTEN_FD,
                    kind: ListenerKind::Forward { route: 0 },
                    limit,
                    front: Default::default(),
                }],
                routes: vec![RouteSpec {
                    upstreams: vec![addr("10.0.0.1:1"), addr("10.0.0.2:2")],
                    weights: Vec::new(),
                    balance: ringfwd::config::Balance::RoundRobin,
                    passive: crate::OFF_PASSIVE,
                    connect_timeout_ms: 1_000,
                    idle_ms,
                    half_close_ms: idle_ms / 2,
                    bandwidth,
                    upstream_proto: Default::default(),
                }],
                splice: SpliceConfig {
                    mode: splice,
                    pipe_size,
                    buffer_size: buf_size,
                },
                pipes: fake_pipes
                    .iter()
                    .map(|p| PipeFds {
                        read: p.read,
                        write: p.write,
                    })
                    .collect(),
                fd_budget: fd_budget(seed).map_or(FdBudget::Unlimited, FdBudget::Max),
                ..EngineConfig::default()
            },
            0,
        );
        let mut conns = Vec::new();
        for i in 0..clients {
            let behaviour = |rng: &mut Rng| match (clean, rng.below(10)) {
                (false, 0) => Behaviour::Resets,
                (false, 1) => Behaviour::GoesIdle,
                _ => Behaviour::Normal,
            };
            let attempts = match (clean, rng.below(6)) {
                (_, 0) => vec![Attempt::Refused, Attempt::Ok],
                (_, 1) => vec![Attempt::Timeout, Attempt::Ok],
                (false, 2) => vec![Attempt::Refused, Attempt::Timeout],
                _ => vec![Attempt::Ok],
            };
            let (cs, us) = (rng.next_u64(), rng.next_u64());
            let cb = behaviour(&mut rng);
            let ub = behaviour(&mut rng);
            let ct = rng.below(max_stream);
            let ut = rng.below(max_stream);
            conns.push(SimConn {
                client_fd: -1,
                upstream_fd: None,
                attempts,
                attempt: 0,
                tried: Vec::new(),
                client: Peer::new(cs, us, ct, cb),
                upstream: Peer::new(us, cs, ut, ub),
                connected: false,
            });
            let _ = i;
        }
        let waiting = (0..clients).collect();
        let fd_budget = fd_budget(seed);
        Sim {
            seed,
            rng,
            engine,
            now: 0,
            idle_ms,
            buf_size,
            ring: (0..buffers as u16).collect(),
            buf_data: vec![Vec::new(); buffers as usize],
            held: vec![false; buffers as usize],
            socks: HashMap::new(),
            next_fd,
            pending: Vec::new(),
            accept: None,
            accept_multi: false,
            conns,
            slot_conn: HashMap::new(),
            waiting_clients: waiting,
            history: Vec::new(),
            stale_injected: 0,
            accepting: None,
            rejected: vec![false; clients],
            clean,
            ops: Vec::new(),
            splice,
            fake_pipes,
            pipe_fds,
            pipes_gone: 0,
            pipes_discarded: 0,
            fd_budget,
            bandwidth,
            single_recvs: 0,
        }
    }

    fn new_sock(&mut self, conn: usize, role: Role) -> i32 {
        let fd = self.next_fd;
        self.next_fd += 1;
        self.socks.insert(
            fd,
            FakeSock {
                conn,
                role,
                open: true,
                ops: Vec::new(),
                recv: None,
                recv_max: None,
                send: None,
            },
        );
        fd
    }

    fn peer_mut(&mut self, conn: usize, role: Role) -> &mut Peer {
        let c = &mut self.conns[conn];
        match role {
            Role::Client => &mut c.client,
            Role::Upstream => &mut c.upstream,
        }
    }

    fn sock(&mut self, fd: i32, what: &str) -> &mut FakeSock {
        let seed = self.seed;
        match self.socks.get_mut(&fd) {
            Some(s) if s.open => s,
            Some(_) => panic!("seed {seed}: {what} on closed fd {fd}"),
            None => panic!("seed {seed}: {what} on unknown fd {fd}"),
        }
    }

    fn deliver(&mut self, user_data: u64, res: i32, flags: u32) {
        if trace() {
            eprintln!(
                "t={} cqe {:?} res={res} flags={flags:#x}",
                self.now,
                Token::decode(user_data)
            );
        }
        if let Some(t) = Token::decode(user_data) {
            self.history.push((user_data, t));
        }
        self.engine.handle_cqe(user_data, res, flags, self.now);
        self.run_ops();
    }

    fn run_ops(&mut self) {
        loop {
            self.engine.take_ops(&mut self.ops);
            if self.ops.is_empty() {
                return;
            }
            let ops = std::mem::take(&mut self.ops);
            for op in ops {
                self.execute(op);
            }
        }
    }

    fn conn_of(&mut self, token: u64) -> usize {
        let t = Token::decode(token).expect("engine issued an undecodable token");
        let key = (t.slot.index, t.slot.generation);
        if !self.slot_conn.contains_key(&key)
            && let Some(c) = self.accepting.take()
        {
            self.slot_conn.insert(key, c);
        }
        *self
            .slot_conn
            .get(&key)
            .unwrap_or_else(|| panic!("seed {}: op for unknown slot {key:?}", self.seed))
    }

    fn execute(&mut self, op: Op) {
        if trace() {
            eprintln!("t={}   op {op:?}", self.now);
        }
        match op {
            Op::AcceptMulti { token, fd } | Op::Accept { token, fd } => {
                let fd = fd.0;
                check!(self, fd == LISTEN_FD, "accept on fd {fd}");
                check!(self, self.accept.is_none(), "second accept armed");
                self.accept = Some(token);
                self.accept_multi = matches!(op, Op::AcceptMulti { .. });
            }
            Op::CancelAccept { token, target } => {
                let found = self.accept.take() == Some(target);
                if found {
                    self.pending.push(Pending {
                        user_data: target,
                        fd: None,
                        action: Action::Fixed(-libc::ECANCELED),
                    });
                }
                let res = if found { 0 } else { -libc::ENOENT };
                self.pending.push(Pending {
                    user_data: token,
                    fd: None,
                    action: Action::Fixed(res),
                });
            }
            Op::CloseListener { token, fd } => {
                let fd = fd.0;
                check!(self, fd == LISTEN_FD, "listener close of fd {fd}");
                self.pending.push(Pending {
                    user_data: token,
                    fd: None,
                    action: Action::Fixed(0),
                });
            }
            Op::Reject { token, fd } => {
                let fd = fd.0;
                let s = self.sock(fd, "reject");
                let (busy, conn) = (!s.ops.is_empty(), s.conn);
                s.open = false;
                check!(self, !busy, "reject of busy fd");
                self.rejected[conn] = true;
                self.pending.push(Pending {
                    user_data: token,
                    fd: None,
                    action: Action::Fixed(0),
                });
            }
            Op::Socket { token, .. } => {
                let conn = self.conn_of(token);
                self.pending.push(Pending {
                    user_data: token,
                    fd: None,
                    action: Action::SocketCreate { conn },
                });
            }
            Op::Connect {
                token,
                timeout_token,
                fd,
                addr: upstream,
                ..
            } => {
                let fd = fd.0;
                let conn = self.conn_of(token);
                let again = self.conns[conn].tried.contains(&upstream);
                check!(self, !again, "conn {conn} tried upstream {upstream} twice");
                self.conns[conn].tried.push(upstream);
                let c = &mut self.conns[conn];
                let outcome = c
                    .attempts
                    .get(c.attempt)
                    .copied()
                    .unwrap_or(Attempt::Refused);
                c.attempt += 1;
                check!(
                    self,
                    self.conns[conn].upstream_fd == Some(fd),
                    "connect on wrong fd"
                );
                self.sock(fd, "connect").ops.push(token);
                self.pending.push(Pending {
                    user_data: token,
                    fd: Some(fd),
                    action: Action::Connect { conn, outcome },
                });
                self.pending.push(Pending {
                    user_data: timeout_token,
                    fd: None,
                    action: Action::ConnectTimeout { outcome },
                });
            }
            Op::RecvMulti { token, fd } => self.arm_recv(token, fd.0, None),
            Op::RecvUpTo { token, fd, len } => {
                check!(self, len > 0, "a receive of 0 bytes on fd {}", fd.0);
                self.single_recvs += 1;
                self.arm_recv(token, fd.0, Some(len));
            }
            Op::Send {
                token,
                fd,
                bid,
                offset,
                len,
            } => {
                let fd = fd.0;
                let held = self.held.get(bid as usize).copied().unwrap_or(false);
                check!(
                    self,
                    held,
                    "send from buffer {bid} the engine does not hold"
                );
                let data_len = self.buf_data[bid as usize].len() as u32;
                check!(
                    self,
                    offset + len <= data_len && len > 0,
                    "send {offset}+{len} beyond data {data_len}"
                );
                let s = self.sock(fd, "send");
                let dup = s.send.is_some();
                s.send = Some(token);
                s.ops.push(token);
                check!(self, !dup, "two sends in flight on fd {fd}");
                self.pending.push(Pending {
                    user_data: token,
                    fd: Some(fd),
                    action: Action::Send { bid, offset, len },
                });
            }
            // The accept watch: clients not accepted yet wait in the queue.
            Op::ListenQueue { token, fd } => {
                check!(self, fd.0 == LISTEN_FD, "accept queue of fd {}", fd.0);
                let n = i32::try_from(self.waiting_clients.len()).unwrap_or(i32::MAX);
                self.pending.push(Pending {
                    user_data: token,
                    fd: None,
                    action: Action::Fixed(n),
                });
            }
            Op::Shutdown { token, fd } => {
                let fd = fd.0;
                self.sock(fd, "shutdown").ops.push(token);
                // shutdown(2) takes effect when issued (io-wq runs it at once):
                // the FIN is on the wire before any later cancel could stop it.
                self.fin_reaches_peer(fd);
                self.pending.push(Pending {
                    user_data: token,
                    fd: Some(fd),
                    action: Action::Shutdown,
                });
            }
            Op::CancelOne { token, target } => {
                let n = self.cancel_where(|p| p == target);
                let res = if n > 0 { 0 } else { -libc::ENOENT };
                self.pending.push(Pending {
                    user_data: token,
                    fd: None,
                    action: Action::Fixed(res),
                });
            }
            Op::CancelFd { token, fd } => {
                let fd = fd.0;
                // Cancel-by-descriptor matches the descriptor an SQE names
                // first: a splice's output. A splice in from this socket
                // names the pipe there, so it is not found.
                let targets: Vec<u64> = self
                    .sock(fd, "cancel")
                    .ops
                    .iter()
                    .copied()
                    .filter(|&u| Token::decode(u).map(|t| t.kind) != Some(OpKind::SpliceIn))
                    .collect();
                let n = self.cancel_where(|p| targets.contains(&p));
                let res = if n > 0 { n as i32 } else { -libc::ENOENT };
                self.pending.push(Pending {
                    user_data: token,
                    fd: None,
                    action: Action::Fixed(res),
                });
            }
            Op::Close { token, fd, linger0 } => {
                let fd = fd.0;
                let s = self.sock(fd, "close");
                let busy = s.ops.clone();
                s.open = false;
                check!(
                    self,
                    busy.is_empty(),
                    "close of fd {fd} while {} op(s) name it",
                    busy.len()
                );
                self.pending.push(Pending {
                    user_data: token,
                    fd: Some(fd),
                    action: Action::Close { linger0 },
                });
            }
            Op::Release { bid } => {
                let held = self.held.get(bid as usize).copied().unwrap_or(false);
                check!(
                    self,
                    held,
                    "release of buffer {bid} not held (double release?)"
                );
                self.held[bid as usize] = false;
                self.ring.push_back(bid);
            }
            Op::Splice {
                token,
                fd_in,
                fd_out,
                len,
            } => self.issue_splice(token, fd_in.0, fd_out.0, len),
            Op::ReplacePipe { pipe, fds } => {
                let Some(&i) = self.pipe_fds.get(&fds.read) else {
                    panic!(
                        "seed {}: replace of unknown pipe fd {}",
                        self.seed, fds.read
                    );
                };
                let p = &mut self.fake_pipes[i];
                let (busy, open, held) = (p.busy, p.open, p.data.len());
                check!(self, open, "replace of closed pipe {pipe}");
                check!(
                    self,
                    busy.is_none(),
                    "pipe {pipe} closed while a splice names it"
                );
                check!(self, held > 0, "pipe {pipe} discarded although empty");
                check!(
                    self,
                    self.pipe_fds.get(&fds.write) == Some(&i),
                    "pipe ends mixed up"
                );
                self.fake_pipes[i].open = false;
                self.pipes_discarded += 1;
                if self.rng.chance(1, 5) {
                    // The kernel would not make another (EMFILE): the budget shrinks.
                    self.pipes_gone += 1;
                    self.engine.restore_pipe(pipe, None);
                } else {
                    let (read, write) = (self.next_fd, self.next_fd + 1);
                    self.next_fd += 2;
                    let cap = self.fake_pipes[i].cap;
                    let j = self.fake_pipes.len();
                    self.fake_pipes.push(FakePipe {
                        read,
                        write,
                        data: VecDeque::new(),
                        cap,
                        open: true,
                        busy: None,
                    });
                    self.pipe_fds.insert(read, j);
                    self.pipe_fds.insert(write, j);
                    self.engine
                        .restore_pipe(pipe, Some(PipeFds { read, write }));
                }
            }
            // The simulated shard has no UDP listener, so a datagram op is an engine bug.
            other => check!(self, false, "datagram op without a UDP listener: {other:?}"),
        }
    }

    /// With `bandwidth_limit`: what the engine read from a peer so far is
    /// within the bucket's bound (its 100 ms burst plus the rate since the
    /// connection was accepted, at time 0 at the earliest). A client whose
    /// upstreams all failed is read and discarded, not relayed: no limit.
    fn check_rate(&mut self, conn: usize, role: Role) {
        let Some(rate) = self.bandwidth.filter(|_| self.conns[conn].connected) else {
            return;
        };
        let bound = (rate / 10).max(1) + rate * self.now / 1000;
        let taken = self.peer_mut(conn, role).taken;
        check!(
            self,
            taken <= bound,
            "{role:?} of conn {conn}: {taken} bytes read by {} ms, over the {bound} a limit of {rate} B/s allows",
            self.now
        );
    }

    /// A receive armed on `fd`: multishot, or a single one of at most `max` bytes.
    fn arm_recv(&mut self, token: u64, fd: i32, max: Option<u32>) {
        let s = self.sock(fd, "recv");
        let splicing = s
            .ops
            .iter()
            .any(|&u| Token::decode(u).map(|t| t.kind) == Some(OpKind::SpliceIn));
        check!(
            self,
            !splicing,
            "receive armed on fd {fd} while a splice reads it"
        );
        let s = self.sock(fd, "recv");
        let dup = s.recv.is_some();
        s.recv = Some(token);
        s.recv_max = max;
        s.ops.push(token);
        check!(self, !dup, "two receives armed on fd {fd}");
    }

    /// A splice between a socket and a pipe: checked, then left pending.
    fn issue_splice(&mut self, token: u64, fd_in: i32, fd_out: i32, len: u32) {
        let kind = Token::decode(token).map(|t| t.kind);
        let (sock_fd, pipe_fd, inbound) = match kind {
            Some(OpKind::SpliceIn) => (fd_in, fd_out, true),
            Some(OpKind::SpliceOut) => (fd_out, fd_in, false),
            other => panic!("seed {}: splice with token kind {other:?}", self.seed),
        };
        let Some(&pipe) = self.pipe_fds.get(&pipe_fd) else {
            panic!("seed {}: splice on fd {pipe_fd}, not a pipe", self.seed);
        };
        let p = &self.fake_pipes[pipe];
        let end_ok = if inbound {
            p.write == pipe_fd
        } else {
            p.read == pipe_fd
        };
        let (open, busy, held) = (p.open, p.busy, p.data.len());
        check!(self, end_ok, "splice on the wrong end of pipe {pipe}");
        check!(self, open, "splice on closed pipe {pipe}");
        check!(
            self,
            busy.is_none(),
            "two splices on pipe {pipe} at once (the kernel's pipe lock would stall one)"
        );
        if inbound {
            check!(
                self,
                held == 0,
                "splice into pipe {pipe} holding {held} bytes"
            );
            let armed = self.sock(sock_fd, "splice").recv.is_some();
            check!(
                self,
                !armed,
                "splice in from fd {sock_fd} with a receive armed on it"
            );
        } else {
            check!(
                self,
                len > 0 && len as usize <= held,
                "splice out of {len} bytes from pipe {pipe} holding {held}"
            );
        }
        self.fake_pipes[pipe].busy = Some(token);
        self.sock(sock_fd, "splice").ops.push(token);
        let action = if inbound {
            Action::SpliceIn {
                pipe,
                len,
                cancelled: false,
            }
        } else {
            Action::SpliceOut {
                pipe,
                len,
                cancelled: false,
            }
        };
        self.pending.push(Pending {
            user_data: token,
            fd: Some(sock_fd),
            action,
        });
    }

    /// Data the peer on `fd` has written, received into a buffer now for a
    /// completion delivered later.
    fn late_data(&mut self, fd: i32) -> Option<(u16, u32)> {
        let (conn, role) = {
            let s = &self.socks[&fd];
            (s.conn, s.role)
        };
        let buf_size = u64::from(self.buf_size);
        let pick = self.rng.next_u64();
        let peer = self.peer_mut(conn, role);
        let avail = peer.written - peer.taken;
        if avail == 0 || peer.reset {
            return None;
        }
        let bid = self.ring.pop_front()?;
        let n = 1 + pick % avail.min(buf_size);
        let mut data = vec![0u8; n as usize];
        let peer = self.peer_mut(conn, role);
        peer.source.fill(&mut data);
        peer.taken += n;
        self.buf_data[bid as usize] = data;
        self.held[bid as usize] = true;
        Some((bid, n as u32))
    }

    /// Cancels in-flight operations matching `pred`; returns how many.
    fn cancel_where(&mut self, pred: impl Fn(u64) -> bool) -> usize {
        let mut n = 0;
        // Armed multishot receives. A data completion the kernel posted just
        // before the cancel took effect may still be waiting to be reaped:
        // sometimes one comes first, then the final ECANCELED.
        let mut fds: Vec<i32> = self.socks.keys().copied().collect();
        fds.sort_unstable();
        for fd in fds {
            let s = self.socks.get_mut(&fd).expect("fd");
            if let Some(r) = s.recv
                && pred(r)
            {
                s.recv = None;
                // A single receive has no data completion with MORE to come
                // before its end: it ends with data or with the cancel.
                let single = s.recv_max.take().is_some();
                n += 1;
                let late = if self.rng.chance(1, 3) && !single {
                    self.late_data(fd)
                } else {
                    None
                };
                let action = match late {
                    Some((bid, len)) => Action::RecvLate { bid, len },
                    None => Action::Fixed(-libc::ECANCELED),
                };
                self.pending.push(Pending {
                    user_data: r,
                    fd: Some(fd),
                    action,
                });
            }
        }
        // Pending one-shot operations that have not completed yet.
        for p in &mut self.pending {
            if pred(p.user_data) {
                match &mut p.action {
                    Action::Send { .. } | Action::Connect { .. } => {
                        p.action = Action::Fixed(-libc::ECANCELED);
                        n += 1;
                    }
                    // A splice on an io-wq worker is interrupted, but may
                    // already have moved data (see `complete`).
                    Action::SpliceIn { cancelled, .. } | Action::SpliceOut { cancelled, .. } => {
                        *cancelled = true;
                        n += 1;
                    }
                    _ => {}
                }
            }
        }
        n
    }

    fn release_fd_op(&mut self, fd: Option<i32>, user_data: u64) {
        if let Some(fd) = fd
            && let Some(s) = self.socks.get_mut(&fd)
        {
            if let Some(i) = s.ops.iter().position(|&u| u == user_data) {
                s.ops.swap_remove(i);
            }
            if s.send == Some(user_data) {
                s.send = None;
            }
            if s.recv == Some(user_data) {
                s.recv = None;
                s.recv_max = None;
            }
        }
    }

    fn complete(&mut self, p: Pending) {
        let ud = p.user_data;
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
            Action::Connect { conn, outcome } => {
                self.release_fd_op(p.fd, ud);
                let res = match outcome {
                    Attempt::Ok => {
                        self.conns[conn].connected = true;
                        0
                    }
                    Attempt::Refused => -libc::ECONNREFUSED,
                    Attempt::Timeout => -libc::ECANCELED,
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
            Action::Send { bid, offset, len } => {
                let fd = p.fd.expect("send fd");
                let (conn, role) = {
                    let s = &self.socks[&fd];
                    (s.conn, s.role)
                };
                let n = if self.rng.chance(1, 3) {
                    1 + self.rng.below(u64::from(len)) as u32
                } else {
                    len
                };
                let seed = self.seed;
                let data =
                    self.buf_data[bid as usize][offset as usize..(offset + n) as usize].to_vec();
                let peer = self.peer_mut(conn, role);
                let res = if peer.reset {
                    -libc::ECONNRESET
                } else {
                    assert!(
                        !peer.got_fin,
                        "seed {seed}: data after FIN to {role:?} of conn {conn}"
                    );
                    if let Err(at) = peer.expect.check(&data) {
                        panic!(
                            "seed {seed}: {role:?} of conn {conn} got a wrong byte at offset {at}"
                        );
                    }
                    peer.received += u64::from(n);
                    n as i32
                };
                self.release_fd_op(p.fd, ud);
                self.deliver(ud, res, 0);
            }
            Action::Shutdown => {
                let fd = p.fd.expect("shutdown fd");
                let (conn, role) = {
                    let s = &self.socks[&fd];
                    (s.conn, s.role)
                };
                let res = if self.peer_mut(conn, role).reset {
                    -libc::ENOTCONN
                } else {
                    0
                };
                self.release_fd_op(p.fd, ud);
                self.deliver(ud, res, 0);
            }
            Action::Close { linger0 } => {
                let fd = p.fd.expect("close fd");
                let (conn, role) = {
                    let s = &self.socks[&fd];
                    (s.conn, s.role)
                };
                if linger0 {
                    self.peer_mut(conn, role).got_reset = true;
                }
                self.deliver(ud, 0, 0);
            }
            Action::RecvLate { bid, len } => {
                let flags = CQE_F_BUFFER | CQE_F_MORE | (u32::from(bid) << 16);
                self.deliver(ud, len as i32, flags);
                self.pending.push(Pending {
                    user_data: ud,
                    fd: p.fd,
                    action: Action::Fixed(-libc::ECANCELED),
                });
            }
            Action::SpliceIn {
                pipe,
                len,
                cancelled,
            } => {
                let fd = p.fd.expect("splice fd");
                let (conn, role) = {
                    let s = &self.socks[&fd];
                    (s.conn, s.role)
                };
                let room = {
                    let fp = &self.fake_pipes[pipe];
                    fp.cap - fp.data.len()
                };
                let moves = self.rng.chance(1, 2);
                let pick = self.rng.next_u64();
                let peer = self.peer_mut(conn, role);
                let avail = peer.written - peer.taken;
                let res = if peer.reset {
                    -libc::ECONNRESET
                } else if avail > 0 && room > 0 && (!cancelled || moves) {
                    // Whatever has arrived, up to the length and the pipe's room.
                    let most = avail.min(u64::from(len)).min(room as u64);
                    let n = 1 + pick % most;
                    let mut data = vec![0u8; n as usize];
                    peer.source.fill(&mut data);
                    peer.taken += n;
                    self.fake_pipes[pipe].data.extend(data);
                    self.check_rate(conn, role);
                    n as i32
                } else if avail == 0 && peer.fin_written && (!cancelled || moves) {
                    0
                } else if moves {
                    -libc::EINTR
                } else {
                    -libc::ECANCELED
                };
                self.fake_pipes[pipe].busy = None;
                self.release_fd_op(p.fd, ud);
                self.deliver(ud, res, 0);
            }
            Action::SpliceOut {
                pipe,
                len,
                cancelled,
            } => {
                let fd = p.fd.expect("splice fd");
                let (conn, role) = {
                    let s = &self.socks[&fd];
                    (s.conn, s.role)
                };
                let interrupted = cancelled && self.rng.chance(1, 2);
                let n = if cancelled || self.rng.chance(1, 3) {
                    1 + self.rng.below(u64::from(len)) as u32
                } else {
                    len
                };
                let seed = self.seed;
                let reset = self.peer_mut(conn, role).reset;
                let res = if reset {
                    if self.rng.chance(1, 2) {
                        -libc::EPIPE
                    } else {
                        -libc::ECONNRESET
                    }
                } else if interrupted {
                    -libc::EINTR
                } else {
                    let data: Vec<u8> = self.fake_pipes[pipe].data.drain(..n as usize).collect();
                    let peer = self.peer_mut(conn, role);
                    assert!(
                        !peer.got_fin,
                        "seed {seed}: spliced data after FIN to {role:?} of conn {conn}"
                    );
                    if let Err(at) = peer.expect.check(&data) {
                        panic!(
                            "seed {seed}: {role:?} of conn {conn} got a wrong spliced byte at offset {at}"
                        );
                    }
                    peer.received += u64::from(n);
                    n as i32
                };
                self.fake_pipes[pipe].busy = None;
                self.release_fd_op(p.fd, ud);
                self.deliver(ud, res, 0);
            }
        }
    }

    /// The FIN of a shutdown on `fd` arrives at its peer: only after all data.
    fn fin_reaches_peer(&mut self, fd: i32) {
        let (conn, role) = {
            let s = &self.socks[&fd];
            (s.conn, s.role)
        };
        let other_total = {
            let c = &self.conns[conn];
            match role {
                Role::Client => c.upstream.total,
                Role::Upstream => c.client.total,
            }
        };
        let seed = self.seed;
        // A client whose every upstream failed gets a FIN with nothing before it.
        let never_connected = !self.conns[conn].connected;
        let peer = self.peer_mut(conn, role);
        if never_connected && role == Role::Client {
            peer.got_fin = true;
        } else if !peer.reset {
            assert_eq!(
                peer.received, other_total,
                "seed {seed}: FIN forwarded to {role:?} of conn {conn} before all data"
            );
            peer.got_fin = true;
        }
    }

    /// A peer writes more of its stream, sends FIN, or resets.
    fn peer_acts(&mut self, fd: i32) {
        let (conn, role) = {
            let s = &self.socks[&fd];
            (s.conn, s.role)
        };
        let connected = self.conns[conn].connected;
        let peer = self.peer_mut(conn, role);
        if peer.reset || peer.fin_written {
            return;
        }
        let limit = match peer.behaviour {
            Behaviour::Normal => peer.total,
            Behaviour::Resets | Behaviour::GoesIdle => peer.total / 2,
        };
        if peer.written < limit {
            peer.written = limit.min(peer.written + 1 + (peer.total / 4));
        } else {
            match peer.behaviour {
                Behaviour::Normal => peer.fin_written = true,
                Behaviour::Resets => {
                    if connected || role == Role::Upstream {
                        peer.reset = true;
                    }
                }
                Behaviour::GoesIdle => {}
            }
        }
    }

    /// The forwarder's armed receive on `fd` gets what the peer has written.
    fn receive(&mut self, fd: i32) {
        let Some(token) = self.socks[&fd].recv else {
            return;
        };
        let (conn, role) = {
            let s = &self.socks[&fd];
            (s.conn, s.role)
        };
        let buf_size = u64::from(self.buf_size);
        // With splice on, most receives fill their buffer (a bulk peer), so
        // auto mode sees runs of full buffers and switches.
        let chunk = if self.splice != SpliceMode::Off && self.rng.chance(7, 8) {
            buf_size
        } else {
            1 + self.rng.below(buf_size)
        };
        let end_multishot = self.rng.chance(1, 8);
        // A single receive takes at most its length, and ends with its data.
        let (chunk, end_multishot) = match self.socks[&fd].recv_max {
            Some(max) => (chunk.min(u64::from(max)), true),
            None => (chunk, end_multishot),
        };
        let peer = self.peer_mut(conn, role);
        let avail = peer.written - peer.taken;
        if peer.reset {
            let s = self.socks.get_mut(&fd).expect("fd");
            s.recv = None;
            s.recv_max = None;
            self.release_fd_op(Some(fd), token);
            self.deliver(token, -libc::ECONNRESET, 0);
            return;
        }
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
        self.check_rate(conn, role);
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

    /// Re-delivers an old completion whose slot was freed (and maybe reused).
    fn inject_stale(&mut self) {
        let stale: Vec<u64> = self
            .history
            .iter()
            .filter(|(_, t)| {
                !matches!(
                    t.kind,
                    OpKind::Accept
                        | OpKind::CancelAccept
                        | OpKind::CloseListener
                        | OpKind::Reject
                        | OpKind::ListenQueue
                        // A stale socket completion carries a descriptor the
                        // engine must close; that path has its own test.
                        | OpKind::Socket
                ) && !self.engine.is_live(ConnId(t.slot))
            })
            .map(|(u, _)| *u)
            .collect();
        if stale.is_empty() {
            return;
        }
        let ud = stale[self.rng.below(stale.len() as u64) as usize];
        self.stale_injected += 1;
        let before = self.engine.stats().get(Counter::StaleCompletions);
        // A stale completion that carries a buffer: the engine must give it back.
        if let Some(bid) = self.ring.pop_front() {
            self.held[bid as usize] = true;
            self.buf_data[bid as usize] = vec![0; 1];
            self.deliver(ud, 1, CQE_F_BUFFER | (u32::from(bid) << 16));
            let held = self.held[bid as usize];
            check!(
                self,
                !held,
                "buffer {bid} of a stale completion was not given back"
            );
        } else {
            self.deliver(ud, 1, 0);
        }
        let after = self.engine.stats().get(Counter::StaleCompletions);
        check!(
            self,
            after == before + 1,
            "stale completion not recognised ({before} -> {after})"
        );
    }

    /// Sends to a peer that is not reading stay in the kernel.
    /// So do splices out to them, and splices in from a peer with nothing
    /// written and no FIN (or into a full pipe), until cancelled.
    fn blocked(&self, p: &Pending) -> bool {
        let Some(s) = p.fd.and_then(|fd| self.socks.get(&fd)) else {
            return false;
        };
        let c = &self.conns[s.conn];
        let peer = match s.role {
            Role::Client => &c.client,
            Role::Upstream => &c.upstream,
        };
        match p.action {
            Action::Send { .. }
            | Action::SpliceOut {
                cancelled: false, ..
            } => !peer.reading && !peer.reset,
            Action::SpliceIn {
                pipe,
                cancelled: false,
                ..
            } => {
                let fp = &self.fake_pipes[pipe];
                let nothing = peer.written == peer.taken && !peer.fin_written;
                !peer.reset && (nothing || fp.data.len() >= fp.cap)
            }
            _ => false,
        }
    }
}

fn main_loop(sim: &mut Sim) {
    sim.engine.start();
    sim.run_ops();
    let mut steps = 0u64;
    loop {
        steps += 1;
        check!(sim, steps < 200_000, "did not finish in 200k steps");
        let all_started = sim.waiting_clients.is_empty();
        if all_started && sim.engine.connections() == 0 && sim.pending.is_empty() {
            break;
        }
        let pick = sim.rng.below(100);
        match pick {
            0..=34 if !sim.pending.is_empty() => {
                let i = sim.rng.below(sim.pending.len() as u64) as usize;
                if !sim.blocked(&sim.pending[i]) {
                    let p = sim.pending.swap_remove(i);
                    sim.complete(p);
                }
            }
            35..=54 => {
                let mut fds: Vec<i32> = sim
                    .socks
                    .iter()
                    .filter(|(_, s)| s.open)
                    .map(|(f, _)| *f)
                    .collect();
                // Sorted: HashMap order differs between runs, and a seed must
                // replay exactly.
                fds.sort_unstable();
                if !fds.is_empty() {
                    let fd = fds[sim.rng.below(fds.len() as u64) as usize];
                    sim.peer_acts(fd);
                }
            }
            55..=84 => {
                let mut fds: Vec<i32> = sim
                    .socks
                    .iter()
                    .filter(|(_, s)| s.open && s.recv.is_some())
                    .map(|(f, _)| *f)
                    .collect();
                // Sorted: HashMap order differs between runs, and a seed must
                // replay exactly.
                fds.sort_unstable();
                if !fds.is_empty() {
                    let fd = fds[sim.rng.below(fds.len() as u64) as usize];
                    sim.receive(fd);
                }
            }
            85..=89 => {
                if let (Some(token), Some(&conn)) = (sim.accept, sim.waiting_clients.front()) {
                    sim.waiting_clients.pop_front();
                    let fd = sim.new_sock(conn, Role::Client);
                    sim.conns[conn].client_fd = fd;
                    let more = sim.rng.chance(7, 8) && sim.accept_multi;
                    if !more {
                        sim.accept = None;
                    }
                    sim.accepting = Some(conn);
                    sim.deliver(token, fd, if more { CQE_F_MORE } else { 0 });
                }
            }
            90..=93 => {
                // A peer stops or resumes reading.
                let n = sim.conns.len() as u64;
                let c = sim.rng.below(n) as usize;
                let role = if sim.rng.chance(1, 2) {
                    Role::Client
                } else {
                    Role::Upstream
                };
                if !sim.clean {
                    let p = sim.peer_mut(c, role);
                    p.reading = !p.reading;
                } else {
                    let _ = role;
                }
            }
            94 => sim.inject_stale(),
            _ => {
                let stuck = sim.pending.iter().all(|p| sim.blocked(p));
                let step = if stuck && !sim.clean && sim.rng.chance(1, 2) {
                    sim.idle_ms / 2
                } else {
                    1 + sim.rng.below(50)
                };
                sim.now += step;
                sim.engine.advance(sim.now);
                sim.run_ops();
            }
        }
        sim.engine.wake_starved(sim.now);
        sim.run_ops();
        // Accepting pauses before a connection could lack its descriptors
        // (the fake kernel stops a cancelled accept at once).
        if let Some(budget) = sim.fd_budget {
            let held = 2 * sim.engine.connections() as u32;
            check!(
                sim,
                held <= budget,
                "{held} descriptors held over a budget of {budget}"
            );
        }
    }
}

fn final_checks(sim: &mut Sim) {
    // Drain: the listener closes and the engine reports done.
    sim.engine.drain();
    sim.run_ops();
    let mut guard = 0;
    while !sim.pending.is_empty() {
        guard += 1;
        check!(sim, guard < 10_000, "drain did not settle");
        let p = sim.pending.swap_remove(0);
        sim.complete(p);
    }
    check!(
        sim,
        sim.engine.is_done(),
        "engine not done after drain with no connections"
    );
    check!(
        sim,
        sim.engine.held_buffers() == 0,
        "{} buffers still held",
        sim.engine.held_buffers()
    );
    let total = sim.held.len();
    check!(
        sim,
        sim.ring.len() == total,
        "{} of {total} buffers back in the ring",
        sim.ring.len()
    );
    // Every pipe is back in the pool (or was discarded with data and not
    // replaced), idle and empty: a pipe given back as clean with data in it
    // would still hold it here.
    let (pipes, free) = sim.engine.pipes();
    check!(
        sim,
        free + sim.pipes_gone == pipes,
        "{free} of {pipes} pipes back in the pool ({} gone)",
        sim.pipes_gone
    );
    for (i, p) in sim.fake_pipes.iter().enumerate().filter(|(_, p)| p.open) {
        check!(
            sim,
            p.busy.is_none() && p.data.is_empty(),
            "pipe {i} busy or holding {} bytes at the end",
            p.data.len()
        );
    }
    let discarded = sim.engine.stats().get(Counter::PipesDiscarded) as usize;
    check!(
        sim,
        discarded == sim.pipes_discarded,
        "{discarded} pipes counted as discarded, {} replaced",
        sim.pipes_discarded
    );
    for (fd, s) in &sim.socks {
        check!(
            sim,
            !s.open && s.ops.is_empty(),
            "fd {fd} still open or busy: {s:?}"
        );
    }
    let stats = sim.engine.stats();
    // Peers only ever reset, time out or end: an `error` close is the relay
    // catching its own broken invariant (e.g. data for a spliced direction).
    check!(
        sim,
        stats.closes_for(CloseReason::Error) == 0,
        "connections closed as errors: {}",
        stats.to_kv()
    );
    // The byte counters say what the peers got, whichever path carried it.
    let to_upstreams: u64 = sim.conns.iter().map(|c| c.upstream.received).sum();
    let to_clients: u64 = sim.conns.iter().map(|c| c.client.received).sum();
    check!(
        sim,
        (stats.get(Counter::BytesC2u), stats.get(Counter::BytesU2c)) == (to_upstreams, to_clients),
        "counted {}/{} bytes c2u/u2c, peers got {to_upstreams}/{to_clients}",
        stats.get(Counter::BytesC2u),
        stats.get(Counter::BytesU2c)
    );
    let closes: u64 = CloseReason::ALL.iter().map(|r| stats.closes_for(*r)).sum();
    let limit = stats.closes_for(CloseReason::LimitReached);
    check!(
        sim,
        closes - limit == stats.get(Counter::Accepted),
        "closes {closes} - limit {limit} != accepted {}",
        stats.get(Counter::Accepted)
    );
    if sim.clean {
        for (i, c) in sim.conns.iter().enumerate() {
            check!(
                sim,
                c.client.received == c.upstream.total && c.client.got_fin,
                "clean run: client {i} got {}/{} bytes, fin {}",
                c.client.received,
                c.upstream.total,
                c.client.got_fin
            );
            check!(
                sim,
                c.upstream.received == c.client.total && c.upstream.got_fin,
                "clean run: upstream {i} got {}/{} bytes, fin {}",
                c.upstream.received,
                c.client.total,
                c.upstream.got_fin
            );
            check!(
                sim,
                !c.client.got_reset && !c.upstream.got_reset,
                "clean run: reset on conn {i}"
            );
        }
        let normal =
            stats.closes_for(CloseReason::ClientEof) + stats.closes_for(CloseReason::UpstreamEof);
        check!(
            sim,
            normal == stats.get(Counter::Accepted),
            "clean run: {normal} normal closes of {} ({})",
            stats.get(Counter::Accepted),
            stats.to_kv()
        );
    }
    // A client whose every upstream failed got a FIN (not just a close,
    // which resets a client that sent data).
    for (i, c) in sim.conns.iter().enumerate() {
        if !c.connected && !sim.rejected[i] {
            check!(
                sim,
                c.client.got_fin,
                "conn {i}: no upstream, and no FIN to the client"
            );
        }
    }
    // A reset from one peer reaches the other as a reset (SO_LINGER 0 before
    // close), and nothing else does.
    let mut linger0 = [0u64; 2];
    for c in &sim.conns {
        linger0[0] += u64::from(c.client.got_reset);
        linger0[1] += u64::from(c.upstream.got_reset);
    }
    let client_resets = stats.closes_for(CloseReason::ClientReset);
    let upstream_resets = stats.closes_for(CloseReason::UpstreamReset);
    let errors = stats.closes_for(CloseReason::Error);
    check!(
        sim,
        linger0[1] >= client_resets,
        "{client_resets} client resets but {} upstream resets sent",
        linger0[1]
    );
    check!(
        sim,
        linger0[0] >= upstream_resets,
        "{upstream_resets} upstream resets but {} client resets sent",
        linger0[0]
    );
    check!(
        sim,
        linger0[0] + linger0[1] <= client_resets + upstream_resets + errors,
        "{linger0:?} resets sent for {client_resets}+{upstream_resets} resets and {errors} errors"
    );
}

fn run_seed(seed: u64) {
    let mut sim = Sim::new(seed);
    main_loop(&mut sim);
    final_checks(&mut sim);
}

/// The splice relay: always (every direction from the start, while the few
/// pipes last) on odd seeds, auto (switching on runs of full buffers, back
/// on small splices or a silent second) on even ones. The counters prove
/// each path ran: splices, switches, reverts, a spent budget, discards.
#[test]
fn splice_relay_survives_random_schedules() {
    let mut totals = ringfwd::stats::ShardStats::default();
    let mut stale = 0;
    let mut modes = [0u64; 2];
    let mut auto_switched = 0;
    for seed in seeds() {
        let mode = if seed % 2 == 1 {
            SpliceMode::Always
        } else {
            SpliceMode::Auto
        };
        modes[usize::from(mode == SpliceMode::Auto)] += 1;
        let mut sim = Sim::with_splice(seed, mode);
        main_loop(&mut sim);
        final_checks(&mut sim);
        stale += sim.stale_injected;
        let stats = sim.engine.stats();
        if mode == SpliceMode::Auto {
            auto_switched += stats.get(Counter::SpliceSwitched);
        }
        totals.merge(&stats);
    }
    if modes.iter().all(|&n| n > 50) {
        let kv = totals.to_kv();
        assert!(stale > 0, "no stale completion injected");
        for (what, n) in [
            ("splices in", totals.get(Counter::SplicesIn)),
            ("splices out", totals.get(Counter::SplicesOut)),
            ("switches to splice", totals.get(Counter::SpliceSwitched)),
            ("switches to splice in auto mode", auto_switched),
            ("reverts to buffers", totals.get(Counter::SpliceReverted)),
            ("spent pipe budgets", totals.get(Counter::PipesExhausted)),
            ("discarded pipes", totals.get(Counter::PipesDiscarded)),
        ] {
            assert!(
                n > 0,
                "no {what} in any seed: the test lost its teeth ({kv})"
            );
        }
    }
}

/// `bandwidth_limit` (1 to 32 KiB/s) on every connection, on buffers, spliced
/// always and auto: the engine reads no more than the buckets allow (checked
/// at every read), and every check of the unlimited runs holds — bytes in
/// order and intact, FINs, descriptors, buffers and pipes all given back —
/// with single receives, pauses the timer ends, and cancels of paused and
/// single receives when a direction switches or the connection ends.
#[test]
fn bandwidth_limited_relay_survives_random_schedules() {
    let modes = [SpliceMode::Off, SpliceMode::Always, SpliceMode::Auto];
    let mut single = 0;
    let seeds = if std::env::var_os("SIM_SEED").is_some() {
        seeds()
    } else {
        seeds_or(300)
    };
    for seed in seeds {
        let mode = modes[(seed / 3 % 3) as usize];
        let rate = 1024 << (seed % 6);
        let mut sim = Sim::build(seed, mode, Some(rate));
        main_loop(&mut sim);
        final_checks(&mut sim);
        single += sim.single_recvs;
    }
    assert!(single > 0, "no single receive: the limit was not applied");
}

#[test]
fn one_clean_splice_seed_moves_every_byte() {
    for (seed, mode) in [(3, SpliceMode::Always), (6, SpliceMode::Auto)] {
        let mut sim = Sim::with_splice(seed, mode);
        main_loop(&mut sim);
        final_checks(&mut sim);
    }
}

fn seeds() -> Vec<u64> {
    if let Some(s) = std::env::var("SIM_SEED").ok().and_then(|v| v.parse().ok()) {
        return vec![s];
    }
    seeds_or(1500)
}

/// Seeds 1..=n, `n` from `SIM_SEEDS` or `default`.
fn seeds_or(default: u64) -> Vec<u64> {
    let n = std::env::var("SIM_SEEDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default);
    (1..=n).collect()
}

#[test]
fn relay_engine_survives_random_schedules() {
    let mut stale = 0;
    let mut paused = 0;
    let seeds = seeds();
    for &seed in &seeds {
        let mut sim = Sim::new(seed);
        main_loop(&mut sim);
        final_checks(&mut sim);
        stale += sim.stale_injected;
        paused += sim.engine.stats().get(Counter::AcceptPausedFd);
    }
    assert!(
        stale > 0,
        "the schedule never injected a stale completion; the test lost its teeth"
    );
    if seeds.len() > 100 {
        assert!(paused > 0, "no seed ever paused accepting for descriptors");
    }
}

#[test]
fn one_clean_seed_moves_every_byte() {
    run_seed(3);
}

/// The shard engine serving `ringfwd echo`'s sink, source and request/response
/// listeners against a fake kernel: few buffers (ENOBUFS all the time, woken
/// by `wake_starved`), random receive sizes and short sends, multishot
/// receives that end on their own, FIN, resets before and after the client's
/// FIN, stale completions, and a stop (drain_timeout) in some runs. Every
/// byte a client gets is checked against the periodic stream at its stream
/// position, and descriptors and buffers are checked as in the relay
/// simulation.
mod serve_modes {
    use std::collections::{HashMap, VecDeque};

    use ringfwd::shard::engine::{
        CQE_F_BUFFER, CQE_F_MORE, Engine, EngineConfig, ListenerKind, ListenerSpec, Op,
    };
    use ringfwd::shard::slab::ConnId;
    use ringfwd::shard::token::{OpKind, Token};
    use ringfwd::stats::{CloseReason, Counter};
    use ringfwd::verify::{PERIOD, PeriodicCheck, Rng, periodic_region_for};

    /// Listening descriptors: sink, source, request/response.
    const LISTENERS: [i32; 3] = [3, 4, 5];

    #[derive(Clone, Copy, Debug, PartialEq)]
    enum Behaviour {
        Clean,
        /// Resets before its FIN.
        Resets,
        /// Resets after its FIN, while the server may still send.
        FinThenReset,
    }

    #[derive(Debug)]
    struct Client {
        listener: usize,
        behaviour: Behaviour,
        write_total: u64,
        written: u64,
        delivered: u64,
        fin_written: bool,
        eof_delivered: bool,
        reset: bool,
        /// Source: FIN once this much was read.
        read_target: u64,
        got: PeriodicCheck,
        got_fin: bool,
        fd: Option<i32>,
    }

    #[derive(Debug, Default)]
    struct Sock {
        client: usize,
        open: bool,
        recv: Option<u64>,
        send: bool,
        ops: Vec<u64>,
    }

    #[derive(Clone, Copy, Debug)]
    enum Action {
        Fixed(i32),
        Send { offset: u32, len: u32 },
        Shutdown,
    }

    #[derive(Clone, Copy, Debug)]
    struct Pending {
        user_data: u64,
        fd: Option<i32>,
        action: Action,
    }

    struct Sim {
        seed: u64,
        rng: Rng,
        engine: Engine,
        request: u64,
        response: u64,
        region: Box<[u8]>,
        ring: VecDeque<u16>,
        held: Vec<bool>,
        /// Buffers out of the ring on behalf of other connections (what
        /// makes this shard's receives run dry).
        others: Vec<u16>,
        buf_size: u64,
        socks: HashMap<i32, Sock>,
        next_fd: i32,
        accept: [Option<u64>; 3],
        pending: Vec<Pending>,
        clients: Vec<Client>,
        waiting: VecDeque<usize>,
        history: Vec<(u64, Token)>,
        stale: u64,
        ops: Vec<Op>,
        now: u64,
        stopped: bool,
    }

    macro_rules! check {
        ($sim:expr, $cond:expr, $($arg:tt)+) => {
            if !$cond {
                panic!("serve seed {}: {}", $sim.seed, format!($($arg)+));
            }
        };
    }

    impl Sim {
        fn new(seed: u64) -> Sim {
            let mut rng = Rng::new(seed);
            let buffers = 1 + rng.below(6) as u32;
            let request = 1 + rng.below(3000);
            let response = match rng.below(3) {
                0 => 1 + rng.below(10),
                1 => 1 + rng.below(5000),
                _ => 60_000 + rng.below(150_000),
            };
            let kinds = [
                ListenerKind::EchoSink,
                ListenerKind::EchoSource,
                ListenerKind::EchoRr {
                    request: request as u32,
                    response: response as u32,
                },
            ];
            let listeners = kinds
                .iter()
                .zip(LISTENERS)
                .map(|(&kind, fd)| ListenerSpec {
                    name: format!("{kind:?}"),
                    fd,
                    kind,
                    limit: u32::MAX,
                    front: Default::default(),
                })
                .collect();
            let engine = Engine::new(
                EngineConfig {
                    shard: 0,
                    buffers,
                    cap: 1 + rng.below(4) as u32,
                    listeners,
                    ..EngineConfig::default()
                },
                0,
            );
            let n = 1 + rng.below(8) as usize;
            let clients = (0..n)
                .map(|_| {
                    let listener = rng.below(3) as usize;
                    let behaviour = match rng.below(5) {
                        0 => Behaviour::Resets,
                        1 => Behaviour::FinThenReset,
                        _ => Behaviour::Clean,
                    };
                    let write_total = if listener == 2 {
                        rng.below(20) * request + rng.below(request)
                    } else {
                        rng.below(100_000)
                    };
                    Client {
                        listener,
                        behaviour,
                        write_total,
                        written: 0,
                        delivered: 0,
                        fin_written: false,
                        eof_delivered: false,
                        reset: false,
                        read_target: rng.below(300_000),
                        got: PeriodicCheck::default(),
                        got_fin: false,
                        fd: None,
                    }
                })
                .collect();
            Sim {
                seed,
                buf_size: 64 + rng.below(8000),
                rng,
                engine,
                request,
                response,
                region: periodic_region_for(ringfwd::tcp::serve::MAX_SEND as usize),
                ring: (0..buffers as u16).collect(),
                held: vec![false; buffers as usize],
                others: Vec::new(),
                socks: HashMap::new(),
                next_fd: 10,
                accept: [None; 3],
                pending: Vec::new(),
                clients,
                waiting: (0..n).collect(),
                history: Vec::new(),
                stale: 0,
                ops: Vec::new(),
                now: 0,
                stopped: false,
            }
        }

        fn deliver(&mut self, user_data: u64, res: i32, flags: u32) {
            if let Some(t) = Token::decode(user_data)
                && !matches!(
                    t.kind,
                    OpKind::Accept
                        | OpKind::CancelAccept
                        | OpKind::CloseListener
                        | OpKind::Reject
                        | OpKind::ListenQueue
                )
            {
                self.history.push((user_data, t));
            }
            self.engine.handle_cqe(user_data, res, flags, self.now);
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

        fn sock(&mut self, fd: i32, what: &str) -> &mut Sock {
            let seed = self.seed;
            match self.socks.get_mut(&fd) {
                Some(s) if s.open => s,
                _ => panic!("serve seed {seed}: {what} on fd {fd}, not open"),
            }
        }

        /// What the client's listener owes it so far: the stream bytes a
        /// server may have sent by the rules of its mode.
        fn allowed(&self, c: &Client) -> u64 {
            match c.listener {
                0 => 0,
                1 => u64::MAX,
                _ => (c.delivered / self.request) * self.response,
            }
        }

        fn execute(&mut self, op: Op) {
            match op {
                Op::AcceptMulti { token, fd } => {
                    let fd = fd.0;
                    let i = LISTENERS.iter().position(|&l| l == fd);
                    check!(self, i.is_some(), "accept on fd {fd}");
                    let i = i.unwrap_or(0);
                    check!(self, self.accept[i].is_none(), "second accept on {fd}");
                    self.accept[i] = Some(token);
                }
                Op::CancelAccept { token, target } => {
                    let slot = self.accept.iter().position(|a| *a == Some(target));
                    if let Some(i) = slot {
                        self.accept[i] = None;
                        self.pending.push(Pending {
                            user_data: target,
                            fd: None,
                            action: Action::Fixed(-libc::ECANCELED),
                        });
                    }
                    let res = if slot.is_some() { 0 } else { -libc::ENOENT };
                    self.pending.push(Pending {
                        user_data: token,
                        fd: None,
                        action: Action::Fixed(res),
                    });
                }
                Op::CloseListener { token, .. } => self.pending.push(Pending {
                    user_data: token,
                    fd: None,
                    action: Action::Fixed(0),
                }),
                Op::Reject { token, fd } => {
                    let fd = fd.0;
                    let s = self.sock(fd, "reject");
                    s.open = false;
                    self.pending.push(Pending {
                        user_data: token,
                        fd: None,
                        action: Action::Fixed(0),
                    });
                }
                Op::RecvMulti { token, fd } => {
                    let fd = fd.0;
                    let s = self.sock(fd, "recv");
                    let dup = s.recv.is_some();
                    s.recv = Some(token);
                    s.ops.push(token);
                    check!(self, !dup, "two receives on fd {fd}");
                }
                Op::SendRegion {
                    token,
                    fd,
                    offset,
                    len,
                } => {
                    let fd = fd.0;
                    let s = self.sock(fd, "send");
                    let (dup, client) = (s.send, s.client);
                    s.send = true;
                    s.ops.push(token);
                    check!(self, !dup, "two sends in flight on fd {fd}");
                    let c = &self.clients[client];
                    check!(
                        self,
                        u64::from(offset) == c.got.position % PERIOD as u64,
                        "send at offset {offset} for stream position {}",
                        c.got.position
                    );
                    check!(
                        self,
                        len > 0
                            && len <= ringfwd::tcp::serve::MAX_SEND
                            && (offset + len) as usize <= self.region.len(),
                        "send {offset}+{len} over MAX_SEND or outside the region"
                    );
                    let allowed = self.allowed(c);
                    check!(
                        self,
                        c.got.position + u64::from(len) <= allowed,
                        "send up to {} with {allowed} owed",
                        c.got.position + u64::from(len)
                    );
                    self.pending.push(Pending {
                        user_data: token,
                        fd: Some(fd),
                        action: Action::Send { offset, len },
                    });
                }
                Op::Shutdown { token, fd } => {
                    let fd = fd.0;
                    let s = self.sock(fd, "shutdown");
                    s.ops.push(token);
                    let client = s.client;
                    let c = &self.clients[client];
                    check!(self, c.eof_delivered, "FIN before the client's FIN");
                    if c.listener == 2 && !c.reset {
                        let owed = (c.delivered / self.request) * self.response;
                        check!(
                            self,
                            c.got.position == owed,
                            "FIN after {} of {owed} response bytes",
                            c.got.position
                        );
                    }
                    self.clients[client].got_fin = true;
                    self.pending.push(Pending {
                        user_data: token,
                        fd: Some(fd),
                        action: Action::Shutdown,
                    });
                }
                Op::CancelFd { token, fd } => {
                    let fd = fd.0;
                    let targets = self.sock(fd, "cancel").ops.clone();
                    let mut n = 0;
                    if let Some(s) = self.socks.get_mut(&fd)
                        && let Some(r) = s.recv.take()
                    {
                        n += 1;
                        self.pending.push(Pending {
                            user_data: r,
                            fd: Some(fd),
                            action: Action::Fixed(-libc::ECANCELED),
                        });
                    }
                    for p in &mut self.pending {
                        if targets.contains(&p.user_data)
                            && matches!(p.action, Action::Send { .. })
                            && self.rng.chance(1, 2)
                        {
                            p.action = Action::Fixed(-libc::ECANCELED);
                            n += 1;
                        }
                    }
                    self.pending.push(Pending {
                        user_data: token,
                        fd: None,
                        action: Action::Fixed(if n > 0 { n } else { -libc::ENOENT }),
                    });
                }
                Op::Close { token, fd, linger0 } => {
                    let fd = fd.0;
                    let s = self.sock(fd, "close");
                    let busy = s.ops.len();
                    s.open = false;
                    check!(
                        self,
                        busy == 0,
                        "close of fd {fd} while {busy} op(s) name it"
                    );
                    check!(self, !linger0, "a server connection closes with a FIN");
                    self.pending.push(Pending {
                        user_data: token,
                        fd: None,
                        action: Action::Fixed(0),
                    });
                }
                Op::Release { bid } => {
                    let held = self.held.get(bid as usize).copied().unwrap_or(false);
                    check!(self, held, "release of buffer {bid} not held");
                    self.held[bid as usize] = false;
                    self.ring.push_back(bid);
                }
                // The accept watch (these clients are not queued: none waits).
                Op::ListenQueue { token, .. } => self.pending.push(Pending {
                    user_data: token,
                    fd: None,
                    action: Action::Fixed(0),
                }),
                other => check!(self, false, "unexpected op {other:?}"),
            }
        }

        fn release_fd_op(&mut self, fd: Option<i32>, user_data: u64) {
            if let Some(s) = fd.and_then(|fd| self.socks.get_mut(&fd)) {
                if let Some(i) = s.ops.iter().position(|&u| u == user_data) {
                    s.ops.swap_remove(i);
                }
                if s.recv == Some(user_data) {
                    s.recv = None;
                }
            }
        }

        fn complete(&mut self, p: Pending) {
            let ud = p.user_data;
            match p.action {
                Action::Fixed(res) => {
                    self.release_fd_op(p.fd, ud);
                    self.deliver(ud, res, 0);
                }
                Action::Send { offset, len } => {
                    let fd = p.fd.unwrap_or(-1);
                    let client = self.socks.get(&fd).map(|s| s.client).unwrap_or(0);
                    if let Some(s) = self.socks.get_mut(&fd) {
                        s.send = false;
                    }
                    self.release_fd_op(p.fd, ud);
                    let res = if self.clients[client].reset {
                        -libc::EPIPE
                    } else {
                        let n = if self.rng.chance(1, 3) {
                            1 + self.rng.below(u64::from(len)) as u32
                        } else {
                            len
                        };
                        let bytes = &self.region[offset as usize..(offset + n) as usize];
                        let c = &mut self.clients[client];
                        check!(self, !c.got_fin, "data after the FIN");
                        if let Err(at) = c.got.check(&self.region, bytes) {
                            panic!(
                                "serve seed {}: client {client} byte {at} differs",
                                self.seed
                            );
                        }
                        n as i32
                    };
                    self.deliver(ud, res, 0);
                }
                Action::Shutdown => {
                    let client =
                        p.fd.and_then(|fd| self.socks.get(&fd))
                            .map(|s| s.client)
                            .unwrap_or(0);
                    self.release_fd_op(p.fd, ud);
                    let res = if self.clients[client].reset {
                        -libc::ENOTCONN
                    } else {
                        0
                    };
                    self.deliver(ud, res, 0);
                }
            }
        }

        fn receive(&mut self, fd: i32) {
            let Some(token) = self.socks.get(&fd).and_then(|s| s.recv) else {
                return;
            };
            let client = self.socks[&fd].client;
            let c = &self.clients[client];
            let avail = c.written - c.delivered;
            if c.reset {
                self.release_fd_op(Some(fd), token);
                return self.deliver(token, -libc::ECONNRESET, 0);
            }
            if avail == 0 {
                if c.fin_written && !c.eof_delivered {
                    self.clients[client].eof_delivered = true;
                    self.release_fd_op(Some(fd), token);
                    self.deliver(token, 0, 0);
                }
                return;
            }
            let Some(bid) = self.ring.pop_front() else {
                self.release_fd_op(Some(fd), token);
                return self.deliver(token, -libc::ENOBUFS, 0);
            };
            self.held[bid as usize] = true;
            let n = (1 + self.rng.below(self.buf_size)).min(avail);
            self.clients[client].delivered += n;
            let mut flags = CQE_F_BUFFER | (u32::from(bid) << 16);
            if self.rng.chance(1, 8) {
                self.release_fd_op(Some(fd), token);
            } else {
                flags |= CQE_F_MORE;
            }
            self.deliver(token, n as i32, flags);
        }

        fn client_acts(&mut self, i: usize) {
            let c = &mut self.clients[i];
            if c.fd.is_none() || c.reset {
                return;
            }
            if c.fin_written {
                if c.behaviour == Behaviour::FinThenReset && self.rng.chance(1, 3) {
                    c.reset = true;
                }
                return;
            }
            if c.written < c.write_total {
                let step = 1 + self.rng.below(c.write_total / 3 + 1);
                c.written = (c.written + step).min(c.write_total);
            } else if c.behaviour == Behaviour::Resets {
                c.reset = true;
            } else if c.listener != 1 || c.got.position >= c.read_target {
                c.fin_written = true;
            }
        }

        fn inject_stale(&mut self) {
            let stale: Vec<u64> = self
                .history
                .iter()
                .filter(|(_, t)| !self.engine.is_live(ConnId(t.slot)))
                .map(|(u, _)| *u)
                .collect();
            if stale.is_empty() {
                return;
            }
            let ud = stale[self.rng.below(stale.len() as u64) as usize];
            let before = self.engine.stats().get(Counter::StaleCompletions);
            self.stale += 1;
            match self.ring.pop_front() {
                Some(bid) => {
                    self.held[bid as usize] = true;
                    self.deliver(ud, 1, CQE_F_BUFFER | (u32::from(bid) << 16));
                    let held = self.held[bid as usize];
                    check!(self, !held, "buffer {bid} of a stale completion kept");
                }
                None => self.deliver(ud, 1, 0),
            }
            let after = self.engine.stats().get(Counter::StaleCompletions);
            check!(self, after == before + 1, "stale completion not recognised");
        }

        fn run(&mut self) {
            self.engine.start();
            self.run_ops();
            let stop_at = self.rng.chance(1, 6).then(|| 500 + self.rng.below(20_000));
            let mut steps = 0u64;
            loop {
                steps += 1;
                check!(self, steps < 2_000_000, "did not finish");
                if self.waiting.is_empty()
                    && self.engine.connections() == 0
                    && self.pending.is_empty()
                {
                    break;
                }
                if stop_at == Some(steps) {
                    self.stopped = true;
                    self.engine.stop(self.now);
                    self.run_ops();
                }
                match self.rng.below(100) {
                    0..=34 if !self.pending.is_empty() => {
                        let i = self.rng.below(self.pending.len() as u64) as usize;
                        let p = self.pending.swap_remove(i);
                        self.complete(p);
                    }
                    35..=54 => {
                        let i = self.rng.below(self.clients.len() as u64) as usize;
                        self.client_acts(i);
                    }
                    55..=89 => {
                        let fds: Vec<i32> = self
                            .socks
                            .iter()
                            .filter(|(_, s)| s.open && s.recv.is_some())
                            .map(|(f, _)| *f)
                            .collect();
                        if !fds.is_empty() {
                            let fd = fds[self.rng.below(fds.len() as u64) as usize];
                            self.receive(fd);
                        }
                    }
                    90..=95 => {
                        if let Some(&c) = self.waiting.front() {
                            let l = self.clients[c].listener;
                            if let Some(token) = self.accept[l] {
                                self.waiting.pop_front();
                                let fd = self.next_fd;
                                self.next_fd += 1;
                                self.socks.insert(
                                    fd,
                                    Sock {
                                        client: c,
                                        open: true,
                                        ..Sock::default()
                                    },
                                );
                                self.clients[c].fd = Some(fd);
                                self.deliver(token, fd, CQE_F_MORE);
                            } else if self.stopped {
                                // The listeners are gone: this client never connects.
                                self.waiting.pop_front();
                            }
                        }
                    }
                    96 => self.inject_stale(),
                    97 => {
                        if let Some(bid) = self.ring.pop_front() {
                            self.others.push(bid);
                        }
                    }
                    98 => {
                        if let Some(bid) = self.others.pop() {
                            self.ring.push_back(bid);
                        }
                    }
                    _ => {
                        self.now += 1 + self.rng.below(50);
                        self.engine.advance(self.now);
                        self.run_ops();
                    }
                }
                self.engine.wake_starved(self.now);
                self.run_ops();
            }
            self.final_checks();
        }

        fn final_checks(&mut self) {
            self.ring.extend(self.others.drain(..));
            self.engine.drain();
            self.run_ops();
            let mut guard = 0;
            while !self.pending.is_empty() {
                guard += 1;
                check!(self, guard < 10_000, "drain did not settle");
                let p = self.pending.swap_remove(0);
                self.complete(p);
            }
            check!(self, self.engine.is_done(), "engine not done after drain");
            check!(
                self,
                self.engine.held_buffers() == 0,
                "buffers held at the end"
            );
            check!(
                self,
                self.ring.len() == self.held.len(),
                "buffers missing from the ring"
            );
            for (fd, s) in &self.socks {
                check!(
                    self,
                    !s.open && s.ops.is_empty(),
                    "fd {fd} open or busy: {s:?}"
                );
            }
            let stats = self.engine.stats();
            let closes: u64 = CloseReason::ALL.iter().map(|r| stats.closes_for(*r)).sum();
            check!(
                self,
                closes == stats.get(Counter::Accepted),
                "{closes} closes for {} accepted",
                stats.get(Counter::Accepted)
            );
            check!(
                self,
                stats.closes_for(CloseReason::Error) == 0,
                "{}",
                stats.to_kv()
            );
            if self.stopped {
                return;
            }
            let mut eof = 0;
            let mut sent = 0;
            for (i, c) in self.clients.iter().enumerate() {
                sent += c.got.position;
                if c.behaviour != Behaviour::Clean {
                    continue;
                }
                eof += 1;
                check!(self, c.got_fin, "clean client {i} got no FIN");
                match c.listener {
                    0 => check!(self, c.got.position == 0, "the sink sent to client {i}"),
                    1 => check!(
                        self,
                        c.got.position >= c.read_target,
                        "source stopped early"
                    ),
                    _ => {
                        let want = (c.write_total / self.request) * self.response;
                        check!(
                            self,
                            c.got.position == want,
                            "client {i}: {} response bytes, want {want}",
                            c.got.position
                        );
                    }
                }
            }
            check!(
                self,
                stats.closes_for(CloseReason::ClientEof) >= eof,
                "{eof} clean clients: {}",
                stats.to_kv()
            );
            check!(
                self,
                stats.get(Counter::BytesU2c) == sent,
                "{}",
                stats.to_kv()
            );
            // Each server counts what it received from its own clients.
            for (l, counted) in stats.listeners.iter().enumerate() {
                let got: u64 = self
                    .clients
                    .iter()
                    .filter(|c| c.listener == l)
                    .map(|c| c.delivered)
                    .sum();
                let counted = counted.counters.get(Counter::BytesC2u);
                check!(
                    self,
                    counted == got,
                    "listener {l} counted {counted} bytes received, its clients sent {got}"
                );
            }
        }
    }

    #[test]
    fn sink_source_and_rr_survive_random_schedules() {
        let seeds: Vec<u64> = match std::env::var("SIM_SEED").ok().and_then(|v| v.parse().ok()) {
            Some(s) => vec![s],
            None => super::seeds_or(600),
        };
        let mut stale = 0;
        let mut enobufs = 0;
        let mut short = 0;
        for seed in seeds.iter().copied() {
            let mut sim = Sim::new(seed);
            sim.run();
            stale += sim.stale;
            enobufs += sim.engine.stats().get(Counter::Enobufs);
            short += sim.engine.stats().get(Counter::ShortSends);
        }
        if seeds.len() > 1 {
            assert!(stale > 0, "no stale completion injected");
            assert!(enobufs > 0, "no receive ran out of buffers");
            assert!(short > 0, "no short send");
        }
    }
}

/// Scripted runs of the shard engine, one completion at a time: what a
/// client gets when no upstream answers, and how accepting pauses when the
/// shard's descriptor budget is spent.
mod scripted {
    use ringfwd::shard::engine::{
        CQE_F_BUFFER, CQE_F_MORE, Engine, EngineConfig, Fd, FdBudget, ListenerKind, ListenerSpec,
        Op, RouteSpec,
    };
    use ringfwd::stats::{CloseReason, Counter};
    use ringfwd::tcp::relay::{LINGER_MAX_BYTES, LINGER_MS};

    const LISTEN_FD: i32 = 3;
    const CLIENT_FD: i32 = 100;
    const UPSTREAM_FD: i32 = 101;

    struct Script {
        engine: Engine,
        accept: u64,
        /// Whether the armed accept is multishot (its completions say MORE).
        multi: bool,
    }

    /// The accept armed by `ops`, and whether it is multishot.
    fn armed(ops: &[Op]) -> Option<(u64, bool)> {
        ops.iter().find_map(|op| match *op {
            Op::AcceptMulti {
                token,
                fd: Fd(LISTEN_FD),
            } => Some((token, true)),
            Op::Accept {
                token,
                fd: Fd(LISTEN_FD),
            } => Some((token, false)),
            _ => None,
        })
    }

    impl Script {
        fn new(cfg: EngineConfig) -> Script {
            let mut engine = Engine::new(cfg, 0);
            engine.start();
            let mut s = Script {
                engine,
                accept: 0,
                multi: false,
            };
            let ops = s.ops();
            (s.accept, s.multi) = match (armed(&ops), ops.len()) {
                (Some(a), 1) => a,
                _ => panic!("start: expected one accept, got {ops:?}"),
            };
            s
        }

        /// A client arrives on the armed accept.
        fn accept_client(&mut self, fd: i32, now: u64) -> Vec<Op> {
            let flags = if self.multi { CQE_F_MORE } else { 0 };
            let ops = self.cqe(self.accept, fd, flags, now);
            if let Some((_, multi)) = armed(&ops) {
                self.multi = multi;
            }
            ops
        }

        fn forwarder(buffers: u32) -> EngineConfig {
            EngineConfig {
                shard: 0,
                buffers,
                cap: 4,
                listeners: vec![ListenerSpec {
                    name: "dead".into(),
                    fd: LISTEN_FD,
                    kind: ListenerKind::Forward { route: 0 },
                    limit: 1000,
                    front: Default::default(),
                }],
                routes: vec![RouteSpec {
                    upstreams: vec!["127.0.0.1:1".parse().expect("addr")],
                    weights: Vec::new(),
                    balance: ringfwd::config::Balance::RoundRobin,
                    passive: crate::OFF_PASSIVE,
                    connect_timeout_ms: 1_000,
                    idle_ms: 60_000,
                    half_close_ms: 60_000,
                    bandwidth: None,
                    upstream_proto: Default::default(),
                }],
                ..EngineConfig::default()
            }
        }

        fn ops(&mut self) -> Vec<Op> {
            let mut ops = Vec::new();
            self.engine.take_ops(&mut ops);
            ops
        }

        fn cqe(&mut self, user_data: u64, res: i32, flags: u32, now: u64) -> Vec<Op> {
            self.engine.handle_cqe(user_data, res, flags, now);
            self.ops()
        }

        /// Accepts `fd` and refuses its only upstream: returns the client's
        /// shutdown and receive tokens and the operations that came with them.
        fn refused_client(&mut self, fd: i32) -> (u64, u64, Vec<Op>) {
            let ops = self.accept_client(fd, 0);
            let Some(socket) = ops.iter().find_map(|op| match op {
                Op::Socket { token, .. } => Some(*token),
                _ => None,
            }) else {
                panic!("accept: expected the upstream socket, got {ops:?}");
            };
            let ops = self.cqe(socket, UPSTREAM_FD, 0, 0);
            let [
                Op::Connect {
                    token,
                    timeout_token,
                    ..
                },
            ] = ops.as_slice()
            else {
                panic!("socket: expected a connect, got {ops:?}");
            };
            let (connect, timeout) = (*token, *timeout_token);
            let mut ops = self.cqe(connect, -libc::ECONNREFUSED, 0, 0);
            ops.extend(self.cqe(timeout, -libc::ECANCELED, 0, 0));
            assert!(
                !ops.iter()
                    .any(|op| matches!(op, Op::Close { fd: f, .. } if f.0 == fd)),
                "the client was closed at once (a reset when it had sent data): {ops:?}"
            );
            let shutdown = ops.iter().find_map(|op| match op {
                Op::Shutdown { token, fd: f } if f.0 == fd => Some(*token),
                _ => None,
            });
            let recv = ops.iter().find_map(|op| match op {
                Op::RecvMulti { token, fd: f } if f.0 == fd => Some(*token),
                _ => None,
            });
            let (Some(shutdown), Some(recv)) = (shutdown, recv) else {
                panic!("refused: expected a FIN to the client and a receive, got {ops:?}");
            };
            for op in &ops {
                if let Op::Close {
                    token,
                    fd: Fd(UPSTREAM_FD),
                    ..
                } = op
                {
                    assert!(self.cqe(*token, 0, 0, 0).is_empty());
                }
            }
            assert!(self.cqe(shutdown, 0, 0, 0).is_empty());
            (shutdown, recv, ops)
        }

        fn data(&mut self, recv: u64, bid: u16, len: i32, now: u64) -> Vec<Op> {
            let flags = CQE_F_BUFFER | CQE_F_MORE | (u32::from(bid) << 16);
            self.cqe(recv, len, flags, now)
        }

        /// Completes the client's close (and the cancel before it, if any)
        /// found in `ops`; checks it is a FIN close, not a reset.
        fn finish_close(&mut self, recv: u64, ops: Vec<Op>, now: u64) {
            let mut ops = ops;
            if let Some(cancel) = ops.iter().find_map(|op| match op {
                Op::CancelFd {
                    token,
                    fd: Fd(CLIENT_FD),
                } => Some(*token),
                _ => None,
            }) {
                ops = self.cqe(recv, -libc::ECANCELED, 0, now);
                ops.extend(self.cqe(cancel, 1, 0, now));
            }
            let close = ops.iter().find_map(|op| match op {
                Op::Close {
                    token,
                    fd: Fd(CLIENT_FD),
                    linger0,
                } => Some((*token, *linger0)),
                _ => None,
            });
            let Some((close, linger0)) = close else {
                panic!("expected the client's close, got {ops:?}");
            };
            assert!(!linger0, "the client was reset (SO_LINGER 0)");
            assert!(self.cqe(close, 0, 0, now).is_empty());
            assert_eq!(self.engine.connections(), 0, "the connection was not freed");
            assert_eq!(self.engine.held_buffers(), 0, "buffers still held");
            let stats = self.engine.stats();
            assert_eq!(
                stats.closes_for(CloseReason::ConnectRefused),
                1,
                "{}",
                stats.to_kv()
            );
        }
    }

    /// The client sent a request before its upstream refused: it gets a FIN,
    /// its bytes are read and dropped (each buffer released at once), and its
    /// own FIN closes the connection at once — a close, not a reset.
    #[test]
    fn dead_upstream_gives_the_client_a_fin_and_reads_until_its_fin() {
        let mut s = Script::new(Script::forwarder(8));
        let (_, recv, _) = s.refused_client(CLIENT_FD);
        for bid in [3, 5] {
            let ops = s.data(recv, bid, 500, 10);
            assert_eq!(ops, [Op::Release { bid }], "data while lingering");
            assert_eq!(s.engine.held_buffers(), 0);
        }
        let ops = s.cqe(recv, 0, 0, 20);
        s.finish_close(recv, ops, 20);
    }

    /// A client that never sends its FIN is closed after `LINGER_MS`.
    #[test]
    fn dead_upstream_lingering_ends_after_its_time() {
        let mut s = Script::new(Script::forwarder(8));
        let (_, recv, _) = s.refused_client(CLIENT_FD);
        assert_eq!(s.data(recv, 1, 100, 5), [Op::Release { bid: 1 }]);
        s.engine.advance(LINGER_MS - 1);
        assert!(s.ops().is_empty(), "lingering ended early");
        s.engine.advance(LINGER_MS);
        let ops = s.ops();
        s.finish_close(recv, ops, LINGER_MS);
    }

    /// A client that keeps sending is closed once `LINGER_MAX_BYTES` were dropped.
    #[test]
    fn dead_upstream_lingering_ends_at_its_byte_bound() {
        let mut s = Script::new(Script::forwarder(8));
        let (_, recv, _) = s.refused_client(CLIENT_FD);
        let chunk = 16 * 1024;
        let mut sent = 0;
        let mut ops = Vec::new();
        while sent < LINGER_MAX_BYTES {
            ops = s.data(recv, 2, chunk, 5);
            sent += chunk as u64;
            if sent < LINGER_MAX_BYTES {
                assert_eq!(ops, [Op::Release { bid: 2 }]);
            }
        }
        s.finish_close(recv, ops, 5);
    }

    /// A stop (drain_timeout passed) ends the lingering at once, still
    /// counted as the connect failure.
    #[test]
    fn stop_ends_lingering_at_once() {
        let mut s = Script::new(Script::forwarder(8));
        let (_, recv, _) = s.refused_client(CLIENT_FD);
        s.engine.stop(5);
        let ops = s.ops();
        s.finish_close(recv, ops, 5);
    }

    fn budgeted(budget: u32) -> EngineConfig {
        EngineConfig {
            fd_budget: FdBudget::Max(budget),
            ..Script::forwarder(8)
        }
    }

    fn has(ops: &[Op], pred: impl Fn(&Op) -> bool) -> bool {
        ops.iter().any(pred)
    }

    /// Far from its budget a listener takes clients with a multishot accept;
    /// once the room is below what one may take at once (the listen queue),
    /// it cancels it and takes them one at a time.
    #[test]
    fn near_the_descriptor_budget_clients_are_accepted_one_at_a_time() {
        let room = 4096 * 2;
        let mut s = Script::new(budgeted(room + 1));
        assert!(s.multi, "multishot accept with room for the listen queue");
        let ops = s.accept_client(CLIENT_FD, 0);
        let cancel = ops.iter().find_map(|op| match op {
            Op::CancelAccept { target, .. } => Some(*target),
            _ => None,
        });
        assert_eq!(
            cancel,
            Some(s.accept),
            "multishot kept near the budget: {ops:?}"
        );
        let ops = s.cqe(s.accept, -libc::ECANCELED, 0, 0);
        assert!(
            matches!(armed(&ops), Some((_, false))),
            "expected a single accept: {ops:?}"
        );
        let stats = s.engine.stats();
        assert_eq!(
            (
                stats.get(Counter::AcceptErrors),
                stats.get(Counter::AcceptPausedFd)
            ),
            (0, 0)
        );
    }

    /// With room for two relays' descriptors, the second admit leaves the
    /// accept unarmed (clients wait in the kernel's queue), counted once, and
    /// the first connection's end re-arms it.
    #[test]
    fn accepting_pauses_at_the_descriptor_budget_and_resumes_when_a_connection_ends() {
        let mut s = Script::new(budgeted(4));
        assert!(!s.multi, "a multishot accept with room for two connections");
        let (_, recv, _) = s.refused_client(CLIENT_FD);
        let ops = s.accept_client(200, 1);
        assert!(has(&ops, |op| matches!(op, Op::Socket { .. })), "{ops:?}");
        assert_eq!(armed(&ops), None, "accepting past the budget: {ops:?}");
        assert_eq!(s.engine.stats().get(Counter::AcceptPausedFd), 1);
        s.engine.advance(500);
        assert!(s.ops().is_empty(), "re-armed while the budget is full");
        let stats = s.engine.stats();
        assert_eq!(
            (
                stats.get(Counter::AcceptErrors),
                stats.get(Counter::AcceptPausedFd)
            ),
            (0, 1)
        );
        // The first client's FIN ends its lingering; its close frees room.
        let ops = s.cqe(recv, 0, 0, 600);
        let close = ops.iter().find_map(|op| match op {
            Op::Close {
                token,
                fd: Fd(CLIENT_FD),
                ..
            } => Some(*token),
            _ => None,
        });
        let ops = s.cqe(close.expect("client close"), 0, 0, 600);
        assert!(
            armed(&ops).is_some(),
            "accepting did not resume when descriptors came back: {ops:?}"
        );
    }

    /// EMFILE from accept is a pause with a back-off, not an accept error.
    #[test]
    fn emfile_from_accept_pauses_accepting_for_the_backoff() {
        let mut s = Script::new(budgeted(100));
        let ops = s.cqe(s.accept, -libc::EMFILE, 0, 0);
        assert!(ops.is_empty(), "{ops:?}");
        let stats = s.engine.stats();
        assert_eq!(
            (
                stats.get(Counter::AcceptErrors),
                stats.get(Counter::AcceptPausedFd)
            ),
            (0, 1)
        );
        s.engine.advance(99);
        assert!(s.ops().is_empty(), "re-armed before the back-off");
        s.engine.advance(100);
        let ops = s.ops();
        assert!(armed(&ops).is_some(), "{ops:?}");
    }

    /// EMFILE from the upstream socket() stops accepting too (new clients
    /// would fail the same way); the client it hit gets a FIN.
    #[test]
    fn emfile_from_the_upstream_socket_pauses_accepting() {
        let mut s = Script::new(budgeted(100));
        let ops = s.accept_client(CLIENT_FD, 0);
        let Some(token) = ops.iter().find_map(|op| match op {
            Op::Socket { token, .. } => Some(*token),
            _ => None,
        }) else {
            panic!("{ops:?}");
        };
        let ops = s.cqe(token, -libc::EMFILE, 0, 0);
        assert!(
            has(&ops, |op| matches!(op, Op::CancelAccept { .. })),
            "{ops:?}"
        );
        assert!(
            has(&ops, |op| matches!(
                op,
                Op::Shutdown {
                    fd: Fd(CLIENT_FD),
                    ..
                }
            )),
            "{ops:?}"
        );
        assert_eq!(s.engine.stats().get(Counter::AcceptPausedFd), 1);
        assert!(s.cqe(s.accept, -libc::ECANCELED, 0, 0).is_empty());
        s.engine.advance(100);
        let ops = s.ops();
        assert!(armed(&ops).is_some(), "{ops:?}");
    }

    /// The accept watch's read of the listener's queue, if `ops` has one.
    fn queue_read(ops: &[Op]) -> Option<u64> {
        ops.iter().find_map(|op| match *op {
            Op::ListenQueue {
                token,
                fd: Fd(LISTEN_FD),
            } => Some(token),
            _ => None,
        })
    }

    /// An armed accept that took no client for a second while clients wait
    /// in the listen queue lost its wakeup (as when an upgrade's old process
    /// cancels its accept on the shared socket): it is re-armed, which takes
    /// them, and counted. An empty queue, or a client taken, leaves it be.
    #[test]
    fn an_armed_accept_that_misses_waiting_clients_is_re_armed() {
        let mut s = Script::new(Script::forwarder(8));
        s.engine.advance(999);
        assert!(s.ops().is_empty(), "looked at before a second");
        s.engine.advance(1000);
        let ops = s.ops();
        let Some(read) = queue_read(&ops) else {
            panic!("no look at an idle listener: {ops:?}")
        };
        assert!(s.cqe(read, 0, 0, 1000).is_empty(), "an empty queue is fine");
        // A client taken in the next second: nothing to look at.
        s.accept_client(CLIENT_FD, 1500);
        s.engine.advance(2000);
        assert_eq!(queue_read(&s.ops()), None, "a listener that took a client");
        // Then a second with clients waiting and none taken.
        s.engine.advance(3000);
        let ops = s.ops();
        let Some(read) = queue_read(&ops) else {
            panic!("{ops:?}")
        };
        let ops = s.cqe(read, 3, 0, 3000);
        let cancel = ops.iter().find_map(|op| match op {
            Op::CancelAccept { target, .. } => Some(*target),
            _ => None,
        });
        assert_eq!(cancel, Some(s.accept), "{ops:?}");
        assert_eq!(s.engine.stats().get(Counter::AcceptRearmed), 1);
        let ops = s.cqe(s.accept, -libc::ECANCELED, 0, 3000);
        assert!(armed(&ops).is_some(), "re-armed at once: {ops:?}");
        assert_eq!(s.engine.stats().get(Counter::AcceptErrors), 0);
    }

    /// A drain stops the watch: no look at a listener that is closing.
    #[test]
    fn a_drain_stops_the_accept_watch() {
        let mut s = Script::new(Script::forwarder(8));
        s.engine.drain();
        let ops = s.ops();
        assert!(
            has(&ops, |op| matches!(op, Op::CancelAccept { .. })),
            "{ops:?}"
        );
        s.engine.advance(1000);
        assert_eq!(queue_read(&s.ops()), None);
    }

    /// A drain closes a listener paused for descriptors.
    #[test]
    fn drain_closes_a_paused_listener() {
        let mut s = Script::new(budgeted(2));
        let ops = s.accept_client(CLIENT_FD, 0);
        assert_eq!(armed(&ops), None, "{ops:?}");
        assert_eq!(s.engine.stats().get(Counter::AcceptPausedFd), 1);
        s.engine.drain();
        let ops = s.ops();
        assert!(
            has(&ops, |op| matches!(
                op,
                Op::CloseListener {
                    fd: Fd(LISTEN_FD),
                    ..
                }
            )),
            "{ops:?}"
        );
    }

    /// A new UDP session needs a descriptor for its upstream socket: with
    /// none left in the budget its first datagram is dropped and counted,
    /// not a session that fails at socket().
    #[test]
    fn a_new_udp_session_without_a_descriptor_is_dropped_and_counted() {
        use ringfwd::shard::udp::{DatagramMeta, UdpKind, UdpListenerSpec, UdpRouteSpec};
        use ringfwd::udp::DropReason;
        let mut engine = Engine::new(
            EngineConfig {
                shard: 0,
                datagram_buffers: 8,
                udp_listeners: vec![UdpListenerSpec {
                    name: "dns".into(),
                    fd: 7,
                    kind: UdpKind::Forward { route: 0 },
                    limit: 100,
                    listen: "127.0.0.1:5353".parse().expect("addr"),
                }],
                udp_routes: vec![UdpRouteSpec {
                    upstreams: vec!["127.0.0.1:53".parse().expect("addr")],
                    weights: Vec::new(),
                    balance: ringfwd::config::Balance::RoundRobin,
                    passive: crate::OFF_PASSIVE,
                    session_rcvbuf: None,
                    send_proxy: false,
                    idle_ms: 1000,
                    max_responses: None,
                    new_sessions_per_second_per_source: None,
                    allow: Vec::new(),
                    deny: Vec::new(),
                    transparent: None,
                }],
                fd_budget: FdBudget::Max(1),
                ..EngineConfig::default()
            },
            0,
        );
        engine.start();
        let mut ops = Vec::new();
        engine.take_ops(&mut ops);
        let Some(recv) = ops.iter().find_map(|op| match op {
            Op::UdpRecvMulti { token, .. } => Some(*token),
            _ => None,
        }) else {
            panic!("{ops:?}");
        };
        let datagram = |engine: &mut Engine, bid: u16, port: u16| {
            let meta = DatagramMeta {
                src: Some(format!("10.0.0.1:{port}").parse().expect("addr")),
                local: None,
                offset: 0,
                len: 10,
                truncated: false,
                drops: None,
                orig_dst: None,
            };
            let flags = CQE_F_BUFFER | CQE_F_MORE | (u32::from(bid) << 16);
            engine.handle_datagram_cqe(recv, 10, flags, Some(meta), 0);
            let mut ops = Vec::new();
            engine.take_ops(&mut ops);
            ops
        };
        let ops = datagram(&mut engine, 0, 1000);
        assert!(
            ops.iter().any(|op| matches!(op, Op::UdpSocket { .. })),
            "first session within the budget: {ops:?}"
        );
        let ops = datagram(&mut engine, 1, 1001);
        assert_eq!(ops, [Op::ReleaseDatagram { bid: 1 }]);
        let stats = engine.stats();
        assert_eq!(stats.udp_drops_for(DropReason::SessionLimit), 1);
        assert_eq!(stats.get(Counter::UdpSessionsCreated), 1);
    }

    /// A lingering receive that finds no buffer waits for buffers like any
    /// other (it is woken when they return), not a reset.
    #[test]
    fn lingering_receive_without_buffers_is_woken() {
        let mut s = Script::new(Script::forwarder(8));
        let (_, recv, _) = s.refused_client(CLIENT_FD);
        assert!(s.cqe(recv, -libc::ENOBUFS, 0, 5).is_empty());
        s.engine.wake_starved(6);
        let ops = s.ops();
        let Some(recv) = ops.iter().find_map(|op| match op {
            Op::RecvMulti {
                token,
                fd: Fd(CLIENT_FD),
            } => Some(*token),
            _ => None,
        }) else {
            panic!("starved lingering receive not re-armed: {ops:?}");
        };
        let ops = s.cqe(recv, 0, 0, 7);
        s.finish_close(recv, ops, 7);
    }
}

/// Passive health off: these models expect every attempt to go where
/// round robin sends it (ejection is tested in `upstream` and the
/// integration tests).
const OFF_PASSIVE: ringfwd::config::PassiveHealth = ringfwd::config::PassiveHealth {
    max_fails: 0,
    fail_timeout: std::time::Duration::from_secs(10),
};
