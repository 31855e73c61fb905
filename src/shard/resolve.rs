//! The resolver service: the shard's DNS client on its own ring. It owns
//! one connected UDP socket per nameserver (made at the first lookup that
//! needs it), turns the pure `dns::Resolver`'s datagrams into owned-bytes
//! sends, receives replies into memory the ring owns (never the provided
//! buffers of the TCP and UDP services), and keeps one timer for the
//! resolver's per-try timeouts. Lookups come from, and answers go back to,
//! other services through the engine: this service imports none of them.

use std::collections::VecDeque;
use std::net::SocketAddr;

use tracing::{debug, warn};

use super::context::{Ctx, TimerKey};
use super::ops::{Family, Fd, Op};
use super::slab::{AssocId, ConnId};
use super::token::{GEN_MASK, MAX_AUX, MAX_INDEX, OpKind, SlotId, Token};
use crate::dns::{Answer, Lookup, ResolveError, Resolver, ResolverConfig};
use crate::stats::Counter;
use crate::tcp::Side;
use crate::time::Millis;

/// Bytes one receive takes: queries carry no EDNS record, so a server
/// sends at most 512 bytes over UDP; room to spare for one that ignores
/// that. A larger datagram arrives cut short, fails to parse and is
/// ignored (its query times out).
const REPLY_BUFFER: u32 = 4096;

/// Who asked for a lookup: a connection (a destination name), or a SOCKS5
/// UDP association (a datagram's destination name).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Asker {
    Conn(ConnId),
    Assoc(AssocId),
}

/// Marks an association's waiter (slot indices and generations take 20 bits each).
const ASSOC_BIT: u64 = 1 << 63;

/// The waiter a lookup is filed under.
pub(crate) fn waiter_of(asker: Asker) -> u64 {
    let (slot, tag) = match asker {
        Asker::Conn(id) => (id.0, 0),
        Asker::Assoc(id) => (id.0, ASSOC_BIT),
    };
    u64::from(slot.index) | (u64::from(slot.generation) << 32) | tag
}

/// Who a waiter names.
pub(crate) fn asker_of(waiter: u64) -> Asker {
    let slot = SlotId {
        index: (waiter as u32) & MAX_INDEX,
        generation: ((waiter >> 32) as u32) & GEN_MASK,
    };
    if waiter & ASSOC_BIT == 0 {
        Asker::Conn(ConnId(slot))
    } else {
        Asker::Assoc(AssocId(slot))
    }
}

/// Where one nameserver's socket is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// No socket: the next query makes one.
    Closed,
    /// socket(2) in flight.
    Opening,
    /// connect(2) in flight.
    Connecting(Fd),
    /// Sending queries, a receive armed.
    Ready(Fd),
}

struct Server {
    addr: SocketAddr,
    state: State,
    /// The generation of this nameserver's current socket: its tokens carry
    /// it, so completions of a socket that was closed (or belonged to a
    /// nameserver a reload removed) never act on its successor.
    generation: u32,
    /// Queries waiting for the socket to be connected.
    queue: VecDeque<Vec<u8>>,
}

/// The shard's DNS client (see the module doc).
pub(crate) struct ResolveService {
    resolver: Resolver,
    servers: Vec<Server>,
    /// The generation the next socket gets.
    next_generation: u32,
    send_seq: u16,
    done: Vec<(u64, Answer)>,
    /// The deadline the timer wheel holds for the resolver, if any.
    armed: Option<Millis>,
    no_nameservers_logged: bool,
    /// The shard is finishing: sockets closed, nothing more is sent.
    shut: bool,
}

impl ResolveService {
    pub(crate) fn new(cfg: ResolverConfig, seed: u64) -> ResolveService {
        ResolveService {
            servers: servers(&cfg.nameservers),
            resolver: Resolver::new(cfg, seed),
            next_generation: 0,
            send_seq: 0,
            done: Vec::new(),
            armed: None,
            no_nameservers_logged: false,
            shut: false,
        }
    }

    /// Looks `name` up for connection `id`: the answer now (hosts, cache,
    /// an address literal, or an error), or `None` when it comes later
    /// through `take_done`.
    pub(crate) fn lookup(
        &mut self,
        ctx: &mut Ctx,
        asker: Asker,
        name: &str,
        now: Millis,
    ) -> Option<Answer> {
        let answer = match self.resolver.lookup(name, waiter_of(asker), now) {
            Lookup::Ready(answer) => Some(answer),
            Lookup::Pending => None,
        };
        if answer == Some(Err(ResolveError::NoNameservers)) && !self.no_nameservers_logged {
            self.no_nameservers_logged = true;
            warn!(
                shard = ctx.shard,
                name,
                "a destination name needs resolving but no nameserver is configured: set [runtime] resolver = [\"IP:port\"] or add nameserver lines to /etc/resolv.conf (logged once)"
            );
        }
        self.pump(ctx, now);
        answer
    }

    /// Whether answers are waiting for `take_done`.
    pub(crate) fn has_done(&self) -> bool {
        !self.done.is_empty()
    }

    /// Answers that came since the last call.
    pub(crate) fn take_done(&mut self, out: &mut Vec<(Asker, Answer)>) {
        out.extend(self.done.drain(..).map(|(w, a)| (asker_of(w), a)));
    }

    /// Sends what the resolver queued, re-arms its timer, and moves its
    /// counts into the shard's counters.
    fn pump(&mut self, ctx: &mut Ctx, now: Millis) {
        while let Some((ns, bytes)) = self.resolver.next_send() {
            self.send(ctx, ns, bytes);
        }
        if let Some(d) = self.resolver.deadline()
            && self.armed.is_none_or(|a| d < a)
        {
            ctx.timers.insert(d, TimerKey::Resolver { deadline: d });
            self.armed = Some(d);
        }
        let c = self.resolver.take_counts();
        ctx.counters.add(Counter::DnsQueries, c.queries);
        ctx.counters.add(Counter::DnsTimeouts, c.timeouts);
        ctx.counters.add(Counter::DnsFailures, c.failures);
        ctx.counters.add(Counter::DnsCacheHits, c.cache_hits);
        if c.ignored > 0 {
            debug!(
                shard = ctx.shard,
                ignored = c.ignored,
                now,
                "DNS datagrams that answered no pending query were ignored"
            );
        }
    }

    fn send(&mut self, ctx: &mut Ctx, ns: usize, bytes: Vec<u8>) {
        if self.shut {
            return;
        }
        let Some(server) = self.servers.get_mut(ns) else {
            return;
        };
        let generation = server.generation;
        match server.state {
            State::Ready(fd) => {
                self.send_seq = self.send_seq.wrapping_add(1) & MAX_AUX;
                let token = token(OpKind::DnsSend, ns, generation).with_aux(self.send_seq);
                ctx.push_own(Op::SendOwned {
                    token: token.encode(),
                    fd,
                    bytes: bytes.into_boxed_slice(),
                });
            }
            State::Closed => {
                server.queue.push_back(bytes);
                server.state = State::Opening;
                server.generation = self.next_generation;
                self.next_generation = (self.next_generation + 1) & GEN_MASK;
                ctx.push_own(Op::UdpSocket {
                    token: token(OpKind::DnsSocket, ns, server.generation).encode(),
                    family: Family::of(server.addr),
                });
            }
            State::Opening | State::Connecting(_) => server.queue.push_back(bytes),
        }
    }

    /// A completion of one of this service's operations (`bytes`: what an
    /// owned receive got).
    pub(crate) fn on_cqe(
        &mut self,
        ctx: &mut Ctx,
        token: Token,
        res: i32,
        bytes: Option<&[u8]>,
        now: Millis,
    ) {
        ctx.own_done();
        let ns = token.slot.index as usize;
        let current = !self.shut
            && self
                .servers
                .get(ns)
                .is_some_and(|s| s.generation == token.slot.generation);
        match token.kind {
            OpKind::DnsSocket => self.socket_done(ctx, ns, res, current, now),
            OpKind::DnsConnect if current => self.connect_done(ctx, ns, res, now),
            OpKind::DnsRecv if current => self.recv_done(ctx, ns, res, bytes, now),
            OpKind::DnsSend if res < 0 => {
                // The query times out and is retried; nothing else to do.
                debug!(
                    shard = ctx.shard,
                    nameserver = ns,
                    errno = -res,
                    "DNS query send failed"
                );
            }
            _ => {}
        }
        self.pump(ctx, now);
    }

    fn socket_done(&mut self, ctx: &mut Ctx, ns: usize, res: i32, current: bool, now: Millis) {
        let server = self
            .servers
            .get_mut(ns)
            .filter(|s| current && s.state == State::Opening);
        let Some(server) = server else {
            // Made for a nameserver a reload removed, or after shutdown.
            if res >= 0 {
                close(ctx, Fd(res), ns, GEN_MASK);
            }
            return;
        };
        let generation = server.generation;
        if res < 0 {
            server.state = State::Closed;
            server.queue.clear();
            if ctx.log_allowed(now) {
                warn!(shard = ctx.shard, nameserver = %server.addr, errno = -res, "creating the resolver's socket failed; its queries time out and go to the next nameserver");
            }
            return;
        }
        let fd = Fd(res);
        server.state = State::Connecting(fd);
        ctx.push_own(Op::UdpConnect {
            token: token(OpKind::DnsConnect, ns, generation).encode(),
            fd,
            addr: server.addr,
            rcvbuf: None,
        });
    }

    fn connect_done(&mut self, ctx: &mut Ctx, ns: usize, res: i32, now: Millis) {
        let Some(server) = self.servers.get_mut(ns) else {
            return;
        };
        let generation = server.generation;
        let State::Connecting(fd) = server.state else {
            return;
        };
        if res < 0 {
            server.state = State::Closed;
            server.queue.clear();
            close(ctx, fd, ns, generation);
            if ctx.log_allowed(now) {
                warn!(shard = ctx.shard, nameserver = %server.addr, errno = -res, "connecting the resolver's socket failed; its queries time out and go to the next nameserver");
            }
            return;
        }
        server.state = State::Ready(fd);
        let queued = std::mem::take(&mut server.queue);
        arm_recv(ctx, fd, ns, generation);
        for bytes in queued {
            self.send(ctx, ns, bytes);
        }
    }

    fn recv_done(&mut self, ctx: &mut Ctx, ns: usize, res: i32, bytes: Option<&[u8]>, now: Millis) {
        let Some((State::Ready(fd), generation)) =
            self.servers.get(ns).map(|s| (s.state, s.generation))
        else {
            return;
        };
        match res {
            n if n > 0 => {
                if let Some(bytes) = bytes {
                    self.resolver.on_reply(ns, bytes, now, &mut self.done);
                }
                arm_recv(ctx, fd, ns, generation);
            }
            // An empty datagram, or the ICMP error of a nameserver that is
            // not listening (its query times out): keep receiving.
            0 => arm_recv(ctx, fd, ns, generation),
            e if matches!(
                -e,
                libc::ECONNREFUSED | libc::EHOSTUNREACH | libc::ENETUNREACH | libc::EINTR
            ) =>
            {
                arm_recv(ctx, fd, ns, generation)
            }
            e if -e == libc::ECANCELED => {}
            e => {
                // Something is wrong with this socket: a new one next time.
                debug!(
                    shard = ctx.shard,
                    nameserver = ns,
                    errno = -e,
                    "resolver receive failed; closing the socket"
                );
                self.close_server(ctx, ns);
            }
        }
    }

    /// Per-try timeouts (a `TimerKey::Resolver` fired).
    pub(crate) fn timer(&mut self, ctx: &mut Ctx, deadline: Millis, now: Millis) {
        if self.armed == Some(deadline) {
            self.armed = None;
        }
        self.resolver.on_time(now, &mut self.done);
        self.pump(ctx, now);
    }

    /// A reload's resolver settings: the hosts file and preferences apply
    /// to the next lookup; changed nameservers get new sockets (made at
    /// their first query), and tries in flight to the old ones time out
    /// and go to the new ones.
    pub(crate) fn reload(&mut self, ctx: &mut Ctx, cfg: &ResolverConfig, now: Millis) {
        if cfg.nameservers != self.resolver.config().nameservers {
            for ns in 0..self.servers.len() {
                self.close_server(ctx, ns);
            }
            self.servers = servers(&cfg.nameservers);
            self.no_nameservers_logged = false;
        }
        self.resolver.reconfigure(cfg.clone());
        self.pump(ctx, now);
    }

    /// The shard is finishing: every socket is closed and nothing more is
    /// sent (pending lookups have nobody left to answer).
    pub(crate) fn shutdown(&mut self, ctx: &mut Ctx) {
        if self.shut {
            return;
        }
        for ns in 0..self.servers.len() {
            self.close_server(ctx, ns);
        }
        self.shut = true;
    }

    fn close_server(&mut self, ctx: &mut Ctx, ns: usize) {
        let Some(server) = self.servers.get_mut(ns) else {
            return;
        };
        let generation = server.generation;
        server.queue.clear();
        match std::mem::replace(&mut server.state, State::Closed) {
            State::Ready(fd) | State::Connecting(fd) => {
                // The receive holds the socket in the ring: cancel it first.
                ctx.push_own(Op::CancelFd {
                    token: token(OpKind::DnsCancel, ns, generation).encode(),
                    fd,
                });
                close(ctx, fd, ns, generation);
            }
            // A socket still being made is closed when it comes back (its
            // completion no longer matches: another generation, or shut).
            State::Opening | State::Closed => {}
        }
    }

    /// Sockets open now (tests and diagnostics).
    pub(crate) fn open_sockets(&self) -> usize {
        self.servers
            .iter()
            .filter(|s| matches!(s.state, State::Ready(_) | State::Connecting(_)))
            .count()
    }
}

fn servers(addrs: &[SocketAddr]) -> Vec<Server> {
    addrs
        .iter()
        .map(|&addr| Server {
            addr,
            state: State::Closed,
            // Never current: the first socket takes a generation of its own.
            generation: GEN_MASK,
            queue: VecDeque::new(),
        })
        .collect()
}

fn token(kind: OpKind, ns: usize, generation: u32) -> Token {
    let index = u32::try_from(ns).unwrap_or(MAX_INDEX);
    Token::new(kind, Side::Client, SlotId { index, generation })
}

fn arm_recv(ctx: &mut Ctx, fd: Fd, ns: usize, generation: u32) {
    ctx.push_own(Op::RecvOwned {
        token: token(OpKind::DnsRecv, ns, generation).encode(),
        fd,
        len: REPLY_BUFFER,
    });
}

fn close(ctx: &mut Ctx, fd: Fd, ns: usize, generation: u32) {
    ctx.push_own(Op::Close {
        token: token(OpKind::DnsClose, ns, generation).encode(),
        fd,
        linger0: false,
    });
}

#[cfg(test)]
#[path = "resolve_tests.rs"]
mod tests;
