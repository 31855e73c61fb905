//! Deterministic simulation of the shard engine's UDP forwarding against a
//! fake kernel: one or two forward listeners, each with its own route of one
//! to three upstreams, and many clients sending random datagrams. The fake
//! kernel runs the listeners' multishot recvmsg into a small datagram ring
//! (so ENOBUFS is frequent), creates, connects and closes session sockets,
//! answers each forwarded datagram with replies (fewer or none sometimes),
//! refuses some (ICMP port unreachable: ECONNREFUSED on the session's
//! receive, or on a send), truncates some datagrams, forges some sources,
//! fails some socket/connect calls, and reports kernel drop counters. Time
//! moves in small steps and sometimes past the idle timeout. Each run ends
//! with a drain, a stop, or an idle wait and then a drain.
//!
//! Checked at every step: each datagram buffer handed to the engine is
//! released exactly once and never while a send names it; the engine's count
//! of held buffers matches; no operation names a closed or foreign
//! descriptor, and none is `Op::Fail`; a session connects only to its
//! listener's upstreams, in round-robin order; datagrams go up on the
//! client's own session socket in the client's order; each reply goes from
//! the listener's socket to the client that owns the session, in order.
//! At the end: every session is gone, every socket closed, every buffer back
//! in the ring, `is_done()`, and the counters (sessions, ends, datagrams,
//! bytes, drops by reason, ENOBUFS) match what the fake kernel saw.
//!
//! Reproduce with `SIM_SEED=<seed> cargo test --test sim_udp`; `SIM_SEEDS=<n>`
//! runs more seeds, `SIM_TRACE=1` prints every operation and completion.

use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};

use ringfwd::shard::engine::{
    CQE_F_BUFFER, CQE_F_MORE, Engine, EngineConfig, FdBudget, Mode, Op, RecvTemplate,
};
use ringfwd::shard::token::Token;
use ringfwd::shard::udp::{DatagramMeta, UdpKind, UdpListenerSpec, UdpRouteSpec};
use ringfwd::stats::Counter;
use ringfwd::udp::{DropReason, SessionEnd};
use ringfwd::verify::Rng;

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

/// What a datagram buffer the engine holds carries.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Content {
    /// Datagram `seq` of client `client`.
    Client { client: usize, seq: u64 },
    /// Reply `seq` (numbered per client) received on session `sess`'s socket.
    Reply { sess: usize, seq: u64 },
    /// A datagram the engine must drop (truncated or forged).
    Junk,
}

#[derive(Clone, Copy, Debug)]
struct Buf {
    content: Content,
    offset: u32,
    len: u32,
    /// The send naming this buffer, while one is in flight.
    in_send: Option<u64>,
}

#[derive(Debug)]
struct Client {
    addr: SocketAddr,
    listener: usize,
    /// Datagrams it will still send.
    left: u32,
    next_seq: u64,
    /// The last datagram seq sent up, and the last reply seq sent to it.
    last_up: Option<u64>,
    last_reply: Option<u64>,
    next_reply: u64,
}

#[derive(Debug)]
struct Listener {
    fd: i32,
    listen: SocketAddr,
    /// The local address clients write to when the listener is a wildcard.
    local: Option<IpAddr>,
    upstreams: Vec<SocketAddr>,
    recv: Option<u64>,
    open: bool,
    /// Datagrams in the socket's receive queue: (client or None if forged, truncated).
    queue: VecDeque<(Option<usize>, bool)>,
    /// Sends in flight on this socket.
    sends: u32,
    /// Sessions it has created, in order (for the round-robin check).
    created: u64,
    /// Since when its receive has been down after an error (not ENOBUFS).
    failed_since: Option<u64>,
    kdrops: u32,
}

/// A session as the fake kernel sees it.
#[derive(Debug)]
struct Sess {
    slot: (u32, u32),
    client: usize,
    listener: usize,
    /// Its creation index on its listener.
    nth: u64,
    fd: Option<i32>,
    open: bool,
    upstream: Option<SocketAddr>,
    recv: Option<u64>,
    /// Operations in flight naming its socket.
    ops: Vec<u64>,
    /// Replies waiting in its socket's receive queue (per-client seq, truncated).
    replies: VecDeque<(u64, bool)>,
    refused: bool,
    kdrops: u32,
}

#[derive(Debug, Clone, Copy)]
enum Action {
    Fixed(i32),
    SocketMade {
        sess: usize,
    },
    SendUp {
        sess: usize,
        bid: u16,
    },
    /// A reply the kernel posted on session `sess`'s receive just before its
    /// cancel took effect; the final ECANCELED follows.
    RecvLate {
        sess: usize,
    },
    Reply {
        listener: usize,
        bid: u16,
    },
    Close,
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
    Drain,
    Stop,
    IdleThenDrain,
}

/// What the fake kernel counted, to compare with the engine's counters.
#[derive(Debug, Default)]
struct Seen {
    up_ok: u64,
    up_bytes: u64,
    reply_ok: u64,
    reply_bytes: u64,
    truncated: u64,
    forged: u64,
    enobufs: u64,
    refusals: u64,
    errors_injected: u64,
}

struct Sim {
    seed: u64,
    rng: Rng,
    engine: Engine,
    now: u64,
    idle_ms: u64,
    max_responses: Option<u32>,
    ring: VecDeque<u16>,
    bufs: Vec<Option<Buf>>,
    listeners: Vec<Listener>,
    clients: Vec<Client>,
    sessions: Vec<Sess>,
    by_slot: HashMap<(u32, u32), usize>,
    by_fd: HashMap<i32, usize>,
    next_fd: i32,
    pending: Vec<Pending>,
    /// The client whose datagram the engine is handling (a new session is theirs).
    delivering: Option<usize>,
    ops: Vec<Op>,
    seen: Seen,
    ending: Ending,
    /// Descriptors sessions may hold (None: no limit).
    budget: Option<u32>,
}

impl Sim {
    fn new(seed: u64) -> Sim {
        let mut rng = Rng::new(seed);
        let ring_size = 4 + rng.below(28) as u32;
        let idle_ms = 200 + rng.below(3_000);
        let max_responses = match rng.below(3) {
            0 => Some(1 + rng.below(2) as u32),
            _ => None,
        };
        let n_listeners = 1 + rng.below(2) as usize;
        let mut listeners = Vec::new();
        let mut specs = Vec::new();
        let mut routes = Vec::new();
        for i in 0..n_listeners {
            let ups: Vec<SocketAddr> = (0..1 + rng.below(3))
                .map(|u| addr(&format!("10.0.{i}.{}:53", u + 1)))
                .collect();
            let wildcard = rng.chance(1, 2);
            let listen = if wildcard {
                addr(&format!("0.0.0.0:{}", 5300 + i))
            } else {
                addr(&format!("127.0.0.1:{}", 5300 + i))
            };
            let limit = if rng.chance(1, 3) {
                1 + rng.below(4) as u32
            } else {
                64
            };
            specs.push(UdpListenerSpec {
                name: format!("udp{i}"),
                fd: 3 + i as i32,
                kind: UdpKind::Forward { route: i as u16 },
                limit,
                listen,
            });
            routes.push(UdpRouteSpec {
                upstreams: ups.clone(),
                weights: Vec::new(),
                balance: ringfwd::config::Balance::RoundRobin,
                passive: crate::OFF_PASSIVE,
                session_rcvbuf: None,
                send_proxy: false,
                idle_ms,
                max_responses,
                new_sessions_per_second_per_source: None,
                allow: Vec::new(),
                deny: Vec::new(),
                transparent: None,
            });
            listeners.push(Listener {
                fd: 3 + i as i32,
                listen,
                local: wildcard.then(|| IpAddr::from([127, 0, 0, 10 + i as u8])),
                upstreams: ups,
                recv: None,
                open: true,
                queue: VecDeque::new(),
                sends: 0,
                created: 0,
                failed_since: None,
                kdrops: 0,
            });
        }
        let n_clients = 2 + rng.below(10) as usize;
        let clients = (0..n_clients)
            .map(|c| Client {
                addr: addr(&format!("10.1.{}.{}:{}", c / 200, c % 200 + 1, 40000 + c)),
                listener: rng.below(n_listeners as u64) as usize,
                left: 1 + rng.below(60) as u32,
                next_seq: 0,
                last_up: None,
                last_reply: None,
                next_reply: 0,
            })
            .collect();
        let ending = match seed % 3 {
            0 => Ending::Drain,
            1 => Ending::Stop,
            _ => Ending::IdleThenDrain,
        };
        // One seed in four has a descriptor budget of one to four sessions.
        let budget = rng.chance(1, 4).then(|| 1 + rng.below(4) as u32);
        let engine = Engine::new(
            EngineConfig {
                shard: 0,
                datagram_buffers: ring_size,
                udp_listeners: specs,
                udp_routes: routes,
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
            idle_ms,
            max_responses,
            ring: (0..ring_size as u16).collect(),
            bufs: vec![None; ring_size as usize],
            listeners,
            clients,
            sessions: Vec::new(),
            by_slot: HashMap::new(),
            by_fd: HashMap::new(),
            next_fd: 100,
            pending: Vec::new(),
            delivering: None,
            ops: Vec::new(),
            seen: Seen::default(),
            ending,
            budget,
        }
    }

    fn deliver(&mut self, ud: u64, res: i32, flags: u32, meta: Option<DatagramMeta>) {
        if trace() {
            eprintln!(
                "t={} cqe {:?} res={res} flags={flags:#x} {meta:?}",
                self.now,
                Token::decode(ud)
            );
        }
        self.engine
            .handle_datagram_cqe(ud, res, flags, meta, self.now);
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

    /// The session an operation's token names (a new slot is a new session
    /// of the client whose datagram is being handled).
    fn session_of(&mut self, token: u64, creating: bool) -> usize {
        let Some(t) = Token::decode(token) else {
            panic!("seed {}: undecodable token {token:#x}", self.seed);
        };
        let key = (t.slot.index, t.slot.generation);
        if let Some(&s) = self.by_slot.get(&key) {
            check!(self, !creating, "socket opened twice for session {key:?}");
            return s;
        }
        check!(
            self,
            creating,
            "operation {:?} for unknown session {key:?}",
            t.kind
        );
        let Some(client) = self.delivering else {
            panic!(
                "seed {}: a session {key:?} opened with no datagram",
                self.seed
            );
        };
        let listener = self.clients[client].listener;
        let nth = self.listeners[listener].created;
        self.listeners[listener].created += 1;
        self.sessions.push(Sess {
            slot: key,
            client,
            listener,
            nth,
            fd: None,
            open: false,
            upstream: None,
            recv: None,
            ops: Vec::new(),
            replies: VecDeque::new(),
            refused: false,
            kdrops: 0,
        });
        self.by_slot.insert(key, self.sessions.len() - 1);
        self.sessions.len() - 1
    }

    /// The session whose open socket is `fd`, named by `token`'s slot.
    fn session_fd(&mut self, token: u64, fd: i32, what: &str) -> usize {
        let s = self.session_of(token, false);
        let sess = &self.sessions[s];
        check!(
            self,
            sess.fd == Some(fd) && sess.open,
            "{what} of session {s} on fd {fd} (its socket: {:?}, open {})",
            sess.fd,
            sess.open
        );
        s
    }

    fn execute(&mut self, op: Op) {
        if trace() {
            eprintln!("t={}   op {op:?}", self.now);
        }
        match op {
            Op::UdpRecvMulti {
                token,
                fd,
                template,
            } => self.arm_recv(token, fd.0, template),
            Op::UdpSocket { token, .. } => {
                let sess = self.session_of(token, true);
                let action = if self.rng.chance(1, 60) {
                    self.seen.errors_injected += 1;
                    Action::Fixed(-libc::EMFILE)
                } else {
                    Action::SocketMade { sess }
                };
                self.pending.push(Pending {
                    ud: token,
                    fd: None,
                    action,
                });
            }
            Op::UdpConnect {
                token, fd, addr, ..
            } => {
                let s = self.session_fd(token, fd.0, "connect");
                let l = &self.listeners[self.sessions[s].listener];
                let n = l.upstreams.len() as u64;
                let want = l.upstreams[(self.sessions[s].nth % n) as usize];
                check!(
                    self,
                    addr == want,
                    "session {s} (#{} of its listener) connects to {addr}, round robin says {want}",
                    self.sessions[s].nth
                );
                self.sessions[s].upstream = Some(addr);
                self.sessions[s].ops.push(token);
                let res = if self.rng.chance(1, 60) {
                    self.seen.errors_injected += 1;
                    -libc::ENETUNREACH
                } else {
                    0
                };
                self.pending.push(Pending {
                    ud: token,
                    fd: Some(fd.0),
                    action: Action::Fixed(res),
                });
            }
            Op::SendDatagram {
                token,
                fd,
                bid,
                offset,
                len,
            } => self.send_up(token, fd.0, bid, offset, len),
            Op::SendDatagramTo {
                token,
                fd,
                bid,
                offset,
                len,
                dest,
                local,
            } => self.send_reply(token, fd.0, bid, (offset, len), dest, local),
            Op::CancelOne { token, target } => {
                let found = self.cancel(target);
                self.pending.push(Pending {
                    ud: token,
                    fd: None,
                    action: Action::Fixed(if found { 0 } else { -libc::ENOENT }),
                });
            }
            Op::Close { token, fd, .. } => self.close(token, fd.0),
            Op::ReleaseDatagram { bid } => {
                let b = self.bufs.get(bid as usize).copied().flatten();
                match b {
                    None => check!(self, false, "release of datagram buffer {bid} not held"),
                    Some(b) => check!(
                        self,
                        b.in_send.is_none(),
                        "datagram buffer {bid} released while a send names it"
                    ),
                }
                self.bufs[bid as usize] = None;
                self.ring.push_back(bid);
            }
            other => check!(self, false, "unexpected operation {other:?}"),
        }
    }

    fn arm_recv(&mut self, token: u64, fd: i32, template: RecvTemplate) {
        match template {
            RecvTemplate::Listener(i) => {
                let Some(l) = self.listeners.get(i as usize) else {
                    panic!("seed {}: receive for listener {i}", self.seed);
                };
                check!(
                    self,
                    l.fd == fd && l.open,
                    "listener {i} receive on fd {fd}"
                );
                check!(self, l.recv.is_none(), "two receives on listener {i}");
                self.listeners[i as usize].recv = Some(token);
                self.listeners[i as usize].failed_since = None;
            }
            RecvTemplate::Upstream => {
                let s = self.session_fd(token, fd, "receive");
                check!(
                    self,
                    self.sessions[s].recv.is_none(),
                    "two receives on session {s}"
                );
                self.sessions[s].recv = Some(token);
                self.sessions[s].ops.push(token);
            }
            // The simulated configuration has no SOCKS5 listener.
            RecvTemplate::Association => check!(self, false, "an association's receive"),
        }
    }

    /// A held buffer the engine sends from: checked, then marked in flight.
    fn take_for_send(&mut self, token: u64, bid: u16, offset: u32, len: u32) -> Content {
        let Some(b) = self.bufs.get(bid as usize).copied().flatten() else {
            panic!(
                "seed {}: send from datagram buffer {bid} not held",
                self.seed
            );
        };
        check!(self, b.in_send.is_none(), "two sends from buffer {bid}");
        check!(
            self,
            (b.offset, b.len) == (offset, len),
            "send of {offset}+{len} from buffer {bid} holding {}+{}",
            b.offset,
            b.len
        );
        if let Some(b) = self.bufs[bid as usize].as_mut() {
            b.in_send = Some(token);
        }
        b.content
    }

    fn send_up(&mut self, token: u64, fd: i32, bid: u16, offset: u32, len: u32) {
        let s = self.session_fd(token, fd, "send");
        check!(
            self,
            Token::decode(token).map(|t| t.aux) == Some(bid),
            "send token does not carry buffer {bid}"
        );
        let content = self.take_for_send(token, bid, offset, len);
        let client = self.sessions[s].client;
        let Content::Client { client: from, seq } = content else {
            panic!("seed {}: session {s} sends {content:?} upstream", self.seed);
        };
        check!(
            self,
            from == client,
            "client {from}'s datagram sent on client {client}'s session"
        );
        let last = self.clients[client].last_up;
        check!(
            self,
            last.is_none_or(|l| seq > l),
            "client {client}'s datagram {seq} sent up after {last:?}"
        );
        self.clients[client].last_up = Some(seq);
        self.sessions[s].ops.push(token);
        self.pending.push(Pending {
            ud: token,
            fd: Some(fd),
            action: Action::SendUp { sess: s, bid },
        });
    }

    fn send_reply(
        &mut self,
        token: u64,
        fd: i32,
        bid: u16,
        (offset, len): (u32, u32),
        dest: SocketAddr,
        local: Option<IpAddr>,
    ) {
        let s = self.session_of(token, false);
        let (client, listener) = (self.sessions[s].client, self.sessions[s].listener);
        let l = &self.listeners[listener];
        check!(
            self,
            fd == l.fd && l.open,
            "reply of session {s} on fd {fd}, not its listener's {}",
            l.fd
        );
        check!(
            self,
            dest == self.clients[client].addr && local == l.local,
            "reply of session {s} to {dest} from {local:?}; its client is {} via {:?}",
            self.clients[client].addr,
            l.local
        );
        let content = self.take_for_send(token, bid, offset, len);
        let Content::Reply { sess, seq } = content else {
            panic!("seed {}: session {s} replies with {content:?}", self.seed);
        };
        check!(
            self,
            sess == s,
            "session {sess}'s reply sent by session {s}"
        );
        let last = self.clients[client].last_reply;
        check!(
            self,
            last.is_none_or(|l| seq > l),
            "client {client} gets reply {seq} after {last:?}"
        );
        self.clients[client].last_reply = Some(seq);
        self.listeners[listener].sends += 1;
        self.pending.push(Pending {
            ud: token,
            fd: None,
            action: Action::Reply { listener, bid },
        });
    }

    /// Cancels the armed receive `target` (listener or session).
    fn cancel(&mut self, target: u64) -> bool {
        if let Some(l) = self.listeners.iter_mut().find(|l| l.recv == Some(target)) {
            l.recv = None;
            self.pending.push(Pending {
                ud: target,
                fd: None,
                action: Action::Fixed(-libc::ECANCELED),
            });
            return true;
        }
        if let Some(i) = self.sessions.iter().position(|s| s.recv == Some(target)) {
            self.sessions[i].recv = None;
            let late = !self.sessions[i].replies.is_empty() && self.rng.chance(1, 2);
            self.pending.push(Pending {
                ud: target,
                fd: self.sessions[i].fd,
                action: if late {
                    Action::RecvLate { sess: i }
                } else {
                    Action::Fixed(-libc::ECANCELED)
                },
            });
            return true;
        }
        false
    }

    fn close(&mut self, token: u64, fd: i32) {
        if let Some(i) = self.listeners.iter().position(|l| l.fd == fd) {
            let l = &self.listeners[i];
            check!(self, l.open, "listener {i} closed twice");
            check!(
                self,
                l.recv.is_none() && l.sends == 0,
                "listener {i} closed while named (receive {:?}, {} sends)",
                l.recv,
                l.sends
            );
            self.listeners[i].open = false;
        } else {
            let s = self.session_fd(token, fd, "close");
            let sess = &self.sessions[s];
            check!(
                self,
                sess.ops.is_empty() && sess.recv.is_none(),
                "session {s}'s fd {fd} closed while {} op(s) name it",
                sess.ops.len()
            );
            self.sessions[s].open = false;
            // The event loop reads the socket's drop counter before closing.
            if Engine::wants_drops_before_close(token) {
                let reading = self.sessions[s].kdrops;
                self.engine.udp_socket_drops(token, reading);
            }
        }
        self.pending.push(Pending {
            ud: token,
            fd: None,
            action: Action::Close,
        });
    }

    fn release_op(&mut self, fd: Option<i32>, ud: u64) {
        if let Some(&s) = fd.and_then(|fd| self.by_fd.get(&fd)) {
            let sess = &mut self.sessions[s];
            if let Some(i) = sess.ops.iter().position(|&u| u == ud) {
                sess.ops.swap_remove(i);
            }
        }
    }

    fn complete(&mut self, p: Pending) {
        match p.action {
            Action::Fixed(res) => {
                self.release_op(p.fd, p.ud);
                self.deliver(p.ud, res, 0, None);
            }
            Action::Close => self.deliver(p.ud, 0, 0, None),
            Action::RecvLate { sess } => {
                if let Some((bid, meta, res)) = self.next_reply(sess) {
                    let flags = CQE_F_BUFFER | CQE_F_MORE | (u32::from(bid) << 16);
                    self.deliver(p.ud, res, flags, Some(meta));
                }
                self.pending.push(Pending {
                    action: Action::Fixed(-libc::ECANCELED),
                    ..p
                });
            }
            Action::SocketMade { sess } => {
                let fd = self.next_fd;
                self.next_fd += 1;
                self.sessions[sess].fd = Some(fd);
                self.sessions[sess].open = true;
                self.by_fd.insert(fd, sess);
                self.deliver(p.ud, fd, 0, None);
            }
            Action::SendUp { sess, bid } => {
                self.release_op(p.fd, p.ud);
                let len = self.unsend(bid);
                let res = if self.rng.chance(1, 80) {
                    self.seen.refusals += 1;
                    -libc::ECONNREFUSED
                } else {
                    self.seen.up_ok += 1;
                    self.seen.up_bytes += u64::from(len);
                    self.upstream_answers(sess);
                    len as i32
                };
                self.deliver(p.ud, res, 0, None);
            }
            Action::Reply { listener, bid } => {
                self.listeners[listener].sends -= 1;
                let len = self.unsend(bid);
                let res = if self.rng.chance(1, 50) {
                    -libc::EAGAIN
                } else {
                    self.seen.reply_ok += 1;
                    self.seen.reply_bytes += u64::from(len);
                    len as i32
                };
                self.deliver(p.ud, res, 0, None);
            }
        }
    }

    /// A send completed: its buffer is the engine's again. Returns its length.
    fn unsend(&mut self, bid: u16) -> u32 {
        match self.bufs[bid as usize].as_mut() {
            Some(b) => {
                b.in_send = None;
                b.len
            }
            None => panic!("seed {}: buffer {bid} released during its send", self.seed),
        }
    }

    /// The upstream got a datagram: replies (the kernel may drop some on a
    /// full socket), or an ICMP port unreachable.
    fn upstream_answers(&mut self, s: usize) {
        if self.rng.chance(1, 40) {
            self.sessions[s].refused = true;
            return;
        }
        let n = match (self.max_responses, self.rng.below(10)) {
            // Sometimes fewer replies than owed, sometimes one too many (late).
            (Some(m), 0) => self.rng.below(u64::from(m)) as u32,
            (Some(m), 1) => m + 1,
            (Some(m), _) => m,
            (None, _) => self.rng.below(3) as u32,
        };
        let client = self.sessions[s].client;
        for _ in 0..n {
            let seq = self.clients[client].next_reply;
            self.clients[client].next_reply += 1;
            if self.rng.chance(1, 30) {
                self.sessions[s].kdrops += 1;
                continue;
            }
            let truncated = self.rng.chance(1, 40);
            self.sessions[s].replies.push_back((seq, truncated));
        }
    }

    /// Fills a buffer from the ring, or None (ENOBUFS).
    fn fill(&mut self, content: Content, truncated: bool) -> Option<(u16, DatagramMeta)> {
        let bid = self.ring.pop_front()?;
        let offset = 16 + self.rng.below(32) as u32;
        let len = 1 + self.rng.below(512) as u32;
        self.bufs[bid as usize] = Some(Buf {
            content: if truncated { Content::Junk } else { content },
            offset,
            len,
            in_send: None,
        });
        Some((
            bid,
            DatagramMeta {
                src: None,
                local: None,
                offset,
                len,
                truncated,
                drops: None,
                orig_dst: None,
            },
        ))
    }

    /// A client (or a forger) writes a datagram to its listener.
    fn client_sends(&mut self, c: usize) {
        let li = self.clients[c].listener;
        if !self.listeners[li].open || self.clients[c].left == 0 {
            return;
        }
        self.clients[c].left -= 1;
        if self.rng.chance(1, 40) {
            // The socket's receive queue was full: the kernel dropped it.
            self.listeners[li].kdrops += 1;
            return;
        }
        let truncated = self.rng.chance(1, 40);
        let forged = self.rng.chance(1, 60);
        let who = (!forged).then_some(c);
        self.listeners[li].queue.push_back((who, truncated));
    }

    /// The listener's armed receive takes the next queued datagram.
    fn listener_receives(&mut self, li: usize) {
        let Some(token) = self.listeners[li].recv else {
            return;
        };
        if self.rng.chance(1, 50) {
            // A receive error (not ENOBUFS) ends the multishot receive.
            self.listeners[li].recv = None;
            self.listeners[li].failed_since = Some(self.now);
            self.deliver(token, -libc::ENOMEM, 0, None);
            return;
        }
        let Some(&(who, truncated)) = self.listeners[li].queue.front() else {
            return;
        };
        let content = match who {
            Some(c) => {
                let seq = self.clients[c].next_seq;
                Content::Client { client: c, seq }
            }
            None => Content::Junk,
        };
        let Some((bid, mut meta)) = self.fill(content, truncated) else {
            self.seen.enobufs += 1;
            self.listeners[li].recv = None;
            self.deliver(token, -libc::ENOBUFS, 0, None);
            return;
        };
        self.listeners[li].queue.pop_front();
        let l = &self.listeners[li];
        meta.src = Some(match who {
            Some(c) => self.clients[c].addr,
            // A forged source: one of the listener's own upstreams.
            None => l.upstreams[0],
        });
        meta.local = l.local;
        meta.drops = (l.kdrops > 0).then_some(l.kdrops);
        match who {
            Some(c) => self.clients[c].next_seq += 1,
            None if !truncated => self.seen.forged += 1,
            None => {}
        }
        if truncated {
            self.seen.truncated += 1;
        }
        let mut flags = CQE_F_BUFFER | (u32::from(bid) << 16);
        if self.rng.chance(9, 10) {
            flags |= CQE_F_MORE;
        } else {
            self.listeners[li].recv = None;
        }
        self.delivering = who;
        let res = (meta.offset + meta.len) as i32;
        self.deliver(token, res, flags, Some(meta));
        self.delivering = None;
    }

    /// A session's armed receive: a refusal, or its next reply.
    fn session_receives(&mut self, s: usize) {
        let Some(token) = self.sessions[s].recv else {
            return;
        };
        let fd = self.sessions[s].fd;
        if self.sessions[s].refused {
            self.sessions[s].refused = false;
            self.seen.refusals += 1;
            self.sessions[s].recv = None;
            self.release_op(fd, token);
            self.deliver(token, -libc::ECONNREFUSED, 0, None);
            return;
        }
        if self.sessions[s].replies.is_empty() {
            return;
        }
        let Some((bid, meta, res)) = self.next_reply(s) else {
            self.seen.enobufs += 1;
            self.sessions[s].recv = None;
            self.release_op(fd, token);
            self.deliver(token, -libc::ENOBUFS, 0, None);
            return;
        };
        let mut flags = CQE_F_BUFFER | (u32::from(bid) << 16);
        if self.rng.chance(9, 10) {
            flags |= CQE_F_MORE;
        } else {
            self.sessions[s].recv = None;
            self.release_op(fd, token);
        }
        self.deliver(token, res, flags, Some(meta));
    }

    /// Session `s`'s next queued reply in a buffer from the ring (None: no
    /// reply, or no buffer), with its meta and the completion's result.
    fn next_reply(&mut self, s: usize) -> Option<(u16, DatagramMeta, i32)> {
        let &(seq, truncated) = self.sessions[s].replies.front()?;
        let (bid, mut meta) = self.fill(Content::Reply { sess: s, seq }, truncated)?;
        self.sessions[s].replies.pop_front();
        if truncated {
            self.seen.truncated += 1;
        }
        let k = self.sessions[s].kdrops;
        meta.drops = (k > 0).then_some(k);
        Some((bid, meta, (meta.offset + meta.len) as i32))
    }

    /// One random step of the fake world; `clients_talk` lets clients send.
    fn step(&mut self, clients_talk: bool) {
        match self.rng.below(100) {
            0..=29 if !self.pending.is_empty() => {
                let i = self.rng.below(self.pending.len() as u64) as usize;
                let p = self.pending.swap_remove(i);
                self.complete(p);
            }
            30..=44 if clients_talk => {
                // A burst: enough, at times, to fill an opening session's queue.
                let c = self.rng.below(self.clients.len() as u64) as usize;
                for _ in 0..1 + self.rng.below(6) {
                    self.client_sends(c);
                }
            }
            45..=64 => {
                let li = self.rng.below(self.listeners.len() as u64) as usize;
                self.listener_receives(li);
            }
            65..=84 if !self.sessions.is_empty() => {
                let s = self.rng.below(self.sessions.len() as u64) as usize;
                self.session_receives(s);
            }
            85 => {
                // The idle timeout passes for whatever is quiet.
                self.now += self.idle_ms / 2 + self.rng.below(self.idle_ms);
                self.engine.advance(self.now);
                self.run_ops();
            }
            _ => {
                self.now += 1 + self.rng.below(50);
                self.engine.advance(self.now);
                self.run_ops();
            }
        }
        self.engine.wake_starved(self.now);
        self.run_ops();
        self.check_buffers();
        self.check_listeners_armed();
        if let Some(budget) = self.budget {
            let open = self.sessions.iter().filter(|s| s.open).count() as u32;
            check!(
                self,
                open <= budget,
                "{open} session sockets over a budget of {budget}"
            );
        }
    }

    /// A listener receive that failed is re-armed after its back-off (100
    /// ms; time moves by at most 50 ms in a small step), unless it closed.
    fn check_listeners_armed(&self) {
        for (i, l) in self.listeners.iter().enumerate() {
            if let Some(since) = l.failed_since.filter(|_| l.open) {
                check!(
                    self,
                    self.now - since <= 150 || self.engine.mode() != Mode::Running,
                    "listener {i} not receiving since its error at t={since} (now {})",
                    self.now
                );
            }
        }
    }

    fn check_buffers(&self) {
        let held = self.bufs.iter().filter(|b| b.is_some()).count() as u32;
        check!(
            self,
            self.engine.held_datagram_buffers() == held,
            "engine counts {} datagram buffers held, the ring lent {held}",
            self.engine.held_datagram_buffers()
        );
    }

    fn quiet(&self) -> bool {
        self.clients.iter().all(|c| c.left == 0)
            && self.pending.is_empty()
            && self.listeners.iter().all(|l| l.queue.is_empty())
    }
}

fn run(sim: &mut Sim) {
    sim.engine.start();
    sim.run_ops();
    // A drain or a stop may come while clients are still talking.
    let running = match sim.ending {
        Ending::IdleThenDrain => 20_000,
        _ => 200 + sim.rng.below(3_000),
    };
    let mut steps = 0u64;
    while !sim.quiet() && steps < running {
        steps += 1;
        sim.step(true);
    }
    match sim.ending {
        Ending::Drain => {
            sim.engine.drain();
            sim.engine.drain_udp_sessions(sim.now);
            sim.run_ops();
        }
        Ending::Stop => {
            sim.engine.stop(sim.now);
            sim.run_ops();
        }
        Ending::IdleThenDrain => {
            // Every session times out on its own before the drain.
            while sim.engine.sessions() > 0 && steps < 40_000 {
                steps += 1;
                sim.step(false);
            }
            check!(
                sim,
                sim.engine.sessions() == 0,
                "sessions outlived their idle timeout"
            );
            sim.engine.drain();
            sim.engine.drain_udp_sessions(sim.now);
            sim.run_ops();
        }
    }
    // Clients that still have datagrams keep sending while the shard drains.
    while !sim.engine.is_done() {
        steps += 1;
        check!(sim, steps < 100_000, "not done in 100k steps");
        sim.step(sim.ending == Ending::Drain);
    }
}

fn final_checks(sim: &mut Sim) {
    // The runtime reads each listener's drop counter at a snapshot.
    for (i, l) in sim.listeners.iter().enumerate() {
        sim.engine.note_listener_drops(i as u32, l.kdrops);
    }
    check!(
        sim,
        sim.engine.sessions() == 0,
        "{} sessions left",
        sim.engine.sessions()
    );
    check!(
        sim,
        sim.pending.is_empty(),
        "done with {} completions owed",
        sim.pending.len()
    );
    check!(
        sim,
        sim.ring.len() == sim.bufs.len(),
        "{} of {} datagram buffers back in the ring",
        sim.ring.len(),
        sim.bufs.len()
    );
    for (i, l) in sim.listeners.iter().enumerate() {
        check!(sim, !l.open, "listener {i} ({}) still open", l.listen);
    }
    for (i, s) in sim.sessions.iter().enumerate() {
        check!(
            sim,
            !s.open && s.ops.is_empty() && s.recv.is_none(),
            "session {i} {:?} still open or named",
            s.slot
        );
    }
    let stats = sim.engine.stats();
    let kv = stats.to_kv();
    let created = sim.sessions.len() as u64;
    check!(
        sim,
        stats.get(Counter::UdpSessionsCreated) == created,
        "{} sessions counted, the kernel saw {created} ({kv})",
        stats.get(Counter::UdpSessionsCreated)
    );
    for (i, l) in sim.listeners.iter().enumerate() {
        let counted = stats.listeners[i].counters.get(Counter::UdpSessionsCreated);
        check!(
            sim,
            counted == l.created,
            "listener {i}: {counted} sessions, saw {}",
            l.created
        );
        let active = stats.listeners[i].counters.get(Counter::UdpSessionsActive);
        check!(
            sim,
            active == 0,
            "listener {i}: {active} sessions active at the end"
        );
    }
    let ends: u64 = SessionEnd::ALL.iter().map(|e| stats.udp_ends_for(*e)).sum();
    check!(
        sim,
        ends == created,
        "{ends} session ends for {created} sessions ({kv})"
    );
    let end = |e| stats.udp_ends_for(e);
    let drop = |d| stats.udp_drops_for(d);
    check!(
        sim,
        end(SessionEnd::Evicted) == stats.get(Counter::UdpEvictEmbryonic),
        "evictions and evicted ends differ ({kv})"
    );
    check!(
        sim,
        end(SessionEnd::Shutdown) == 0 || sim.ending == Ending::Stop,
        "shutdown ends without a stop ({kv})"
    );
    check!(
        sim,
        end(SessionEnd::Drained) == 0 || sim.ending == Ending::Drain,
        "drained ends without sessions at the drain ({kv})"
    );
    check!(
        sim,
        end(SessionEnd::Responses) == 0 || sim.max_responses.is_some(),
        "max_responses ends without max_responses ({kv})"
    );
    check!(
        sim,
        end(SessionEnd::Refused) <= sim.seen.refusals,
        "{} refused ends for {} refusals ({kv})",
        end(SessionEnd::Refused),
        sim.seen.refusals
    );
    check!(
        sim,
        end(SessionEnd::Error) <= sim.seen.errors_injected,
        "{} error ends for {} injected errors ({kv})",
        end(SessionEnd::Error),
        sim.seen.errors_injected
    );
    let pairs = [
        (
            "datagrams up",
            stats.get(Counter::UdpDatagramsC2u),
            sim.seen.up_ok,
        ),
        (
            "bytes up",
            stats.get(Counter::UdpBytesC2u),
            sim.seen.up_bytes,
        ),
        (
            "replies",
            stats.get(Counter::UdpDatagramsU2c),
            sim.seen.reply_ok,
        ),
        (
            "reply bytes",
            stats.get(Counter::UdpBytesU2c),
            sim.seen.reply_bytes,
        ),
        (
            "truncated drops",
            drop(DropReason::Truncated),
            sim.seen.truncated,
        ),
        ("loop drops", drop(DropReason::Loop), sim.seen.forged),
        ("ENOBUFS", stats.get(Counter::UdpEnobufs), sim.seen.enobufs),
        (
            "listener kernel drops",
            drop(DropReason::RcvbufC2u),
            sim.listeners.iter().map(|l| u64::from(l.kdrops)).sum(),
        ),
        (
            "session kernel drops",
            drop(DropReason::RcvbufU2c),
            sim.sessions.iter().map(|s| u64::from(s.kdrops)).sum(),
        ),
    ];
    for (what, counted, saw) in pairs {
        check!(
            sim,
            counted == saw,
            "{what}: counted {counted}, the kernel saw {saw} ({kv})"
        );
    }
    check!(
        sim,
        drop(DropReason::Draining) == 0 || sim.ending != Ending::IdleThenDrain,
        "draining drops with no datagram after the drain ({kv})"
    );
}

fn run_seed(seed: u64) -> Sim {
    let mut sim = Sim::new(seed);
    run(&mut sim);
    final_checks(&mut sim);
    sim
}

#[test]
fn udp_sessions_survive_random_schedules() {
    let seeds = seeds(2000);
    let mut totals = ringfwd::stats::ShardStats::default();
    for &seed in &seeds {
        let sim = run_seed(seed);
        totals.merge(&sim.engine.stats());
    }
    if seeds.len() >= 100 {
        let kv = totals.to_kv();
        // Each path the simulation means to exercise ran in some seed.
        // SOCKS5 UDP associations (their `control_closed` end) are not
        // simulated: they need a SOCKS5 control connection.
        let ends = SessionEnd::ALL
            .iter()
            .filter(|e| **e != SessionEnd::ControlClosed)
            .map(|e| (e.name(), totals.udp_ends_for(*e)));
        for (what, n) in ends.chain([
            ("udp_enobufs", totals.get(Counter::UdpEnobufs)),
            ("backlog drops", totals.udp_drops_for(DropReason::Backlog)),
            ("draining drops", totals.udp_drops_for(DropReason::Draining)),
            (
                "session limit drops",
                totals.udp_drops_for(DropReason::SessionLimit),
            ),
            ("late drops", totals.udp_drops_for(DropReason::Late)),
            ("send errors", totals.udp_drops_for(DropReason::SendError)),
        ]) {
            assert!(
                n > 0,
                "no {what} in any seed: the test lost its teeth ({kv})"
            );
        }
    }
}

/// UDP sessions and TCP connections share the shard's descriptor budget: a
/// TCP listener paused because a session held the last descriptors resumes
/// as soon as the session ends, not at the next timer.
#[test]
fn a_session_ending_resumes_a_tcp_listener_paused_for_descriptors() {
    use ringfwd::shard::engine::{ListenerKind, ListenerSpec, RouteSpec};
    let mut engine = Engine::new(
        EngineConfig {
            shard: 0,
            buffers: 4,
            cap: 2,
            listeners: vec![ListenerSpec {
                name: "tcp".into(),
                fd: 3,
                kind: ListenerKind::Forward { route: 0 },
                limit: 100,
                front: Default::default(),
            }],
            routes: vec![RouteSpec {
                upstreams: vec![addr("10.0.0.1:80")],
                weights: Vec::new(),
                balance: ringfwd::config::Balance::RoundRobin,
                passive: crate::OFF_PASSIVE,
                connect_timeout_ms: 1000,
                idle_ms: 60_000,
                half_close_ms: 30_000,
                bandwidth: None,
                upstream_proto: Default::default(),
            }],
            datagram_buffers: 8,
            udp_listeners: vec![UdpListenerSpec {
                name: "udp".into(),
                fd: 7,
                kind: UdpKind::Forward { route: 0 },
                limit: 100,
                listen: addr("127.0.0.1:5353"),
            }],
            udp_routes: vec![UdpRouteSpec {
                upstreams: vec![addr("10.0.0.2:53")],
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
            // One relay (2) and one session (1) fit; a second relay does not.
            fd_budget: FdBudget::Max(4),
            ..EngineConfig::default()
        },
        0,
    );
    let mut ops = Vec::new();
    let mut take = |engine: &mut Engine| {
        ops.clear();
        engine.take_ops(&mut ops);
        ops.clone()
    };
    engine.start();
    let started = take(&mut engine);
    let (Some(accept), Some(recv)) = (
        started.iter().find_map(|op| match op {
            Op::Accept { token, .. } => Some(*token),
            _ => None,
        }),
        started.iter().find_map(|op| match op {
            Op::UdpRecvMulti { token, .. } => Some(*token),
            _ => None,
        }),
    ) else {
        panic!("no single accept and datagram receive at start: {started:?}");
    };
    // A datagram opens a session (one descriptor)...
    let meta = DatagramMeta {
        src: Some(addr("10.1.0.1:4000")),
        local: None,
        offset: 0,
        len: 10,
        truncated: false,
        drops: None,
        orig_dst: None,
    };
    let flags = CQE_F_BUFFER | CQE_F_MORE;
    engine.handle_datagram_cqe(recv, 10, flags, Some(meta), 1);
    let opened = take(&mut engine);
    let Some(socket) = opened.iter().find_map(|op| match op {
        Op::UdpSocket { token, .. } => Some(*token),
        _ => None,
    }) else {
        panic!("no session socket: {opened:?}");
    };
    // ...and a relay takes two: no room for another, so accepting pauses.
    engine.handle_cqe(accept, 100, 0, 2);
    let admitted = take(&mut engine);
    assert!(
        !admitted
            .iter()
            .any(|op| matches!(op, Op::Accept { .. } | Op::AcceptMulti { .. })),
        "accept re-armed with no room for a relay: {admitted:?}"
    );
    assert_eq!(engine.stats().get(Counter::AcceptPausedFd), 1);
    // The session fails (its socket could not be made) and gives its
    // descriptor back: the listener accepts again at once.
    engine.handle_datagram_cqe(socket, -libc::EMFILE, 0, None, 3);
    let ended = take(&mut engine);
    assert_eq!(engine.sessions(), 0);
    assert!(
        ended
            .iter()
            .any(|op| matches!(op, Op::Accept { fd, .. } if fd.raw() == 3)),
        "the paused listener was not resumed when the session ended: {ended:?}"
    );
}

/// Passive health off: these models expect every attempt to go where
/// round robin sends it (ejection is tested in `upstream` and the
/// integration tests).
const OFF_PASSIVE: ringfwd::config::PassiveHealth = ringfwd::config::PassiveHealth {
    max_fails: 0,
    fail_timeout: std::time::Duration::from_secs(10),
};
