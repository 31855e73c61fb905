//! The shard context every service works on: the operation queue (with the
//! count of the shard's own operations in flight), the timer wheel, the log
//! budget, the descriptor budget, where the shard is in its life, and the
//! shard's own counters. Services (TCP, UDP) own their listeners,
//! connections, sessions and buffer accounting; they meet only here.

use tracing::warn;

use super::ops::{Fd, Op};
use super::slab::{AssocId, ConnId, SessionId};
use super::token::{OpKind, SlotId, Token};
use crate::accesslog::AccessLogShard;
use crate::stats::Counters;
use crate::tcp::Side;
use crate::time::Millis;
use crate::time::wheel::TimerWheel;

/// Log lines about individual connections allowed per shard per second; the
/// rest are counted and summarised, so a flood cannot drown the log.
const LOG_LINES_PER_SECOND: u32 = 20;

/// Where the shard is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Running,
    /// Not accepting; open connections may finish.
    Draining,
    /// Closing every connection.
    Stopping,
}

/// What a timer-wheel entry wakes.
#[derive(Clone, Copy, Debug)]
pub enum TimerKey {
    Conn {
        id: ConnId,
        deadline: Millis,
    },
    /// A TCP listener's accept back-off.
    Listener(u32),
    Session {
        id: SessionId,
        deadline: Millis,
    },
    /// A UDP listener's receive back-off.
    UdpListener(u32),
    /// The resolver's next per-try timeout.
    Resolver {
        deadline: Millis,
    },
    /// A TCP listener's accept watch (see `tcp/watch.rs`).
    AcceptWatch(u32),
    /// A SOCKS5 UDP association's idle deadline.
    Assoc {
        id: AssocId,
        deadline: Millis,
    },
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
pub struct Descriptors {
    pub budget: FdBudget,
    /// Held by connections, from accept until the connection is freed: two
    /// per relay (client and upstream, reserved together so an accepted
    /// client never lacks its upstream socket), one per built-in server.
    pub conns: u32,
    /// One per UDP session.
    pub sessions: u32,
}

impl Descriptors {
    /// Whether `n` more fit beside what connections and sessions hold.
    pub fn room(&self, n: u32) -> bool {
        match self.budget {
            FdBudget::Unlimited => true,
            FdBudget::Max(max) => {
                let held = u64::from(self.conns) + u64::from(self.sessions);
                held + u64::from(n) <= u64::from(max)
            }
        }
    }
}

/// Rate limit of per-connection log lines.
pub struct LogBudget {
    window: Millis,
    used: u32,
    suppressed: u64,
}

impl LogBudget {
    pub fn new(now: Millis) -> LogBudget {
        LogBudget {
            window: now,
            used: 0,
            suppressed: 0,
        }
    }

    pub fn allow(&mut self, now: Millis, shard: usize) -> bool {
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

/// The shard context (see the module doc).
pub struct Ctx {
    pub shard: usize,
    ops: Vec<Op>,
    /// The shard's own operations in flight (listener accepts, cancels and
    /// closes, rejects, UDP listener receives): connections and sessions
    /// count their own.
    own_inflight: u32,
    pub timers: TimerWheel<TimerKey>,
    pub mode: Mode,
    pub log: LogBudget,
    pub fds: Descriptors,
    /// Counters of the shard itself (not of one listener).
    pub counters: Counters,
    /// Set when a connection or session gave back descriptors, so paused
    /// listeners look again.
    fds_freed: bool,
    /// This shard's handle on the access log (`[log] access`).
    pub access: Option<AccessLogShard>,
}

impl Ctx {
    pub fn new(shard: usize, budget: FdBudget, now: Millis) -> Ctx {
        Ctx {
            shard,
            ops: Vec::with_capacity(256),
            own_inflight: 0,
            timers: TimerWheel::new(now),
            mode: Mode::Running,
            log: LogBudget::new(now),
            fds: Descriptors {
                budget,
                conns: 0,
                sessions: 0,
            },
            counters: Counters::default(),
            fds_freed: false,
            access: None,
        }
    }

    /// Queues an operation of a connection or session (which accounts it).
    pub fn push(&mut self, op: Op) {
        self.ops.push(op);
    }

    /// Queues one of the shard's own operations, counted until its final
    /// completion comes back (`own_done`).
    pub fn push_own(&mut self, op: Op) {
        self.own_inflight += 1;
        self.ops.push(op);
    }

    /// The final completion of one of the shard's own operations.
    pub fn own_done(&mut self) {
        debug_assert!(
            self.own_inflight > 0,
            "the shard's own in-flight count would go below zero"
        );
        self.own_inflight = self.own_inflight.saturating_sub(1);
    }

    pub fn own_inflight(&self) -> u32 {
        self.own_inflight
    }

    /// Operations produced since the last call, for the event loop.
    pub fn take_ops(&mut self, into: &mut Vec<Op>) {
        into.append(&mut self.ops);
    }

    /// Closes an accepted or created socket that has no owner.
    pub fn reject(&mut self, fd: Fd) {
        self.push_own(Op::Reject {
            token: own_token(OpKind::Reject, 0),
            fd,
        });
    }

    pub fn log_allowed(&mut self, now: Millis) -> bool {
        self.log.allow(now, self.shard)
    }

    /// Whether the descriptor budget has room for `n` more.
    pub fn fd_room(&self, n: u32) -> bool {
        self.fds.room(n)
    }

    pub fn release_conn_fds(&mut self, n: u32) {
        self.fds.conns = self.fds.conns.saturating_sub(n);
        self.fds_freed = true;
    }

    pub fn release_session_fd(&mut self) {
        self.fds.sessions = self.fds.sessions.saturating_sub(1);
        self.fds_freed = true;
    }

    /// Whether descriptors were given back since the last call.
    pub fn take_fds_freed(&mut self) -> bool {
        std::mem::take(&mut self.fds_freed)
    }
}

/// The token of one of the shard's own operations on listener `index`.
pub(crate) fn own_token(kind: OpKind, index: u32) -> u64 {
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
