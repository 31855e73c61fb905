//! Accepting on the TCP service's listeners: multishot while the descriptor
//! budget has room for a burst, one at a time near it, paused past it;
//! back-off after errors; the `max_connections` share; cancel and close on a
//! drain.

use tracing::{info, warn};

use super::TcpService;
use super::gate::Refusal;
use crate::shard::context::{Ctx, Mode, TimerKey, own_token};
use crate::shard::ops::{CQE_F_MORE, Fd, Op};
use crate::shard::token::OpKind;
use crate::stats::{CloseReason, Counter};
use crate::tcp::relay::Ends;
use crate::time::Millis;

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

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum AcceptState {
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
pub(super) enum Accepting {
    /// Multishot: while the budget has room for `MULTISHOT_ACCEPT_ROOM`.
    Many,
    One,
}

/// Why a listener's accept is being cancelled while running.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Pause {
    /// The budget's room fell below what a multishot accept may take at
    /// once: re-arm as a single accept, or pause until a connection ends.
    Room,
    /// accept or socket() said EMFILE/ENFILE: resume after a back-off.
    OutOfFds,
    /// The accept watch saw clients waiting that the armed accept did not
    /// take (a lost wakeup): re-arm at once.
    Rearm,
}

/// How a listener's accept ended (its completion without IORING_CQE_F_MORE).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum AcceptEnd {
    /// Cancelled by us, or the multishot ran out on its own.
    Normal,
    Failed,
    OutOfFds,
}

pub(super) fn is_out_of_fds(errno: i32) -> bool {
    matches!(errno, libc::EMFILE | libc::ENFILE)
}

impl TcpService {
    pub(super) fn arm_accept(&mut self, ctx: &mut Ctx, index: u32) {
        let Some(l) = self.listeners.get_mut(index as usize) else {
            return;
        };
        let token = own_token(OpKind::Accept, index);
        let fd = Fd(l.spec.fd);
        let need = l.spec.kind.descriptors();
        let op = if ctx.fd_room(need.saturating_mul(MULTISHOT_ACCEPT_ROOM)) {
            l.accept = AcceptState::Armed(Accepting::Many);
            Op::AcceptMulti { token, fd }
        } else {
            l.accept = AcceptState::Armed(Accepting::One);
            Op::Accept { token, fd }
        };
        ctx.push_own(op);
        self.start_watch(ctx, index);
    }

    pub(super) fn close_listener(&mut self, ctx: &mut Ctx, index: u32) {
        let Some(l) = self.listeners.get_mut(index as usize) else {
            return;
        };
        l.accept = AcceptState::Closing;
        ctx.push_own(Op::CloseListener {
            token: own_token(OpKind::CloseListener, index),
            fd: Fd(l.spec.fd),
        });
    }

    /// Stop accepting: cancel every accept, then close the listening sockets.
    pub(super) fn cancel_accepts(&mut self, ctx: &mut Ctx) {
        for i in 0..self.listeners.len() {
            self.stop_accepting(ctx, i as u32);
        }
    }

    /// Stop accepting on one listener (a drain, or a reload removed it):
    /// cancel its accept, then close its socket.
    pub(super) fn stop_accepting(&mut self, ctx: &mut Ctx, index: u32) {
        let Some(state) = self.listeners.get(index as usize).map(|l| l.accept) else {
            return;
        };
        match state {
            AcceptState::Armed(_) => {
                self.set_accept(index, AcceptState::Cancelling);
                ctx.push_own(Op::CancelAccept {
                    token: own_token(OpKind::CancelAccept, index),
                    target: own_token(OpKind::Accept, index),
                });
            }
            AcceptState::Backoff | AcceptState::Paused => self.close_listener(ctx, index),
            // A pause's cancel is in flight: its final completion closes the listener.
            AcceptState::Pausing(_)
            | AcceptState::Cancelling
            | AcceptState::Closing
            | AcceptState::Closed => {}
        }
    }

    pub(super) fn on_accept(
        &mut self,
        ctx: &mut Ctx,
        index: u32,
        res: i32,
        flags: u32,
        ends: Ends,
        now: Millis,
    ) {
        let more = flags & CQE_F_MORE != 0;
        if !more {
            ctx.own_done();
        }
        let Some(l) = self.listeners.get_mut(index as usize) else {
            if res >= 0 {
                ctx.reject(Fd(res));
            }
            return;
        };
        let (at_limit, limit, name) = (l.active >= l.spec.limit, l.spec.limit, l.spec.name.clone());
        // Cancelled by us: a pause, a drain, or a reload that removed it.
        let cancelled = matches!(l.accept, AcceptState::Pausing(_) | AcceptState::Cancelling);
        let serving = l.role == super::Role::Serving;
        let mut ended = AcceptEnd::Normal;
        if res >= 0 {
            l.watch.accepted();
            let fd = Fd(res);
            // Draining: the kernel completed this accept before our cancel,
            // so the client is connected; serve it like the open ones. (On
            // a SIGUSR2 upgrade the new process shares the socket and can no
            // longer take it: closing it would reset a client.)
            if ctx.mode == Mode::Stopping {
                l.counters.close(CloseReason::Shutdown);
                ctx.reject(fd);
            } else if !l.gate.permits(ends.peer) {
                super::refuse(ctx, l, fd, ends, Refusal::Denied, now);
            } else if at_limit {
                l.counters.close(CloseReason::LimitReached);
                ctx.reject(fd);
                if ctx.log.allow(now, ctx.shard) {
                    info!(
                        shard = ctx.shard,
                        listener = %name,
                        limit,
                        "connection closed at accept: this shard's share of max_connections is in use; raise max_connections if this is expected load"
                    );
                }
            } else {
                self.admit(ctx, index, fd, ends, now);
                if more {
                    self.narrow_accept(ctx, index);
                }
            }
        } else if is_out_of_fds(-res) && ctx.mode == Mode::Running {
            ended = AcceptEnd::OutOfFds;
            self.note_fd_pause(ctx, &name, -res, now);
        } else if -res != libc::ECANCELED || (ctx.mode == Mode::Running && !cancelled) {
            ended = AcceptEnd::Failed;
            l.counters.inc(Counter::AcceptErrors);
            let err = std::io::Error::from_raw_os_error(-res);
            if ctx.log.allow(now, ctx.shard) {
                warn!(
                    shard = ctx.shard,
                    listener = %name,
                    error = %err,
                    "accept failed; retrying in {ACCEPT_BACKOFF_MS}ms"
                );
            }
        }
        if more {
            return;
        }
        match ctx.mode {
            Mode::Running if serving => self.accept_ended(ctx, index, ended, now),
            Mode::Running | Mode::Draining | Mode::Stopping => self.close_listener(ctx, index),
        }
    }

    /// A listener's accept is out of the kernel while running: re-arm it, or
    /// wait for the back-off timer, or for descriptors to come back.
    fn accept_ended(&mut self, ctx: &mut Ctx, index: u32, ended: AcceptEnd, now: Millis) {
        let Some(l) = self.listeners.get(index as usize) else {
            return;
        };
        let (state, need, name) = (l.accept, l.spec.kind.descriptors(), l.spec.name.clone());
        let backoff = matches!(ended, AcceptEnd::Failed | AcceptEnd::OutOfFds)
            || state == AcceptState::Pausing(Pause::OutOfFds);
        if backoff {
            self.set_accept(index, AcceptState::Backoff);
            ctx.timers
                .insert(now + ACCEPT_BACKOFF_MS, TimerKey::Listener(index));
        } else if ctx.fd_room(need) {
            self.arm_accept(ctx, index);
        } else {
            self.note_budget_pause(ctx, index, &name, now);
            self.set_accept(index, AcceptState::Paused);
        }
    }

    /// A listener's back-off timer fired.
    pub(crate) fn backoff_over(&mut self, ctx: &mut Ctx, index: u32, now: Millis) {
        if self.retired_deadline(ctx, index, now) {
            return;
        }
        let backoff = self
            .listeners
            .get(index as usize)
            .is_some_and(|l| l.accept == AcceptState::Backoff);
        if backoff && ctx.mode == Mode::Running {
            // Back to accepting, or to waiting for the budget.
            self.set_accept(index, AcceptState::Paused);
            self.resume_accepts(ctx);
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
    fn narrow_accept(&mut self, ctx: &mut Ctx, index: u32) {
        let Some(l) = self.listeners.get(index as usize) else {
            return;
        };
        let need = l.spec.kind.descriptors();
        if l.accept != AcceptState::Armed(Accepting::Many)
            || ctx.fd_room(need.saturating_mul(MULTISHOT_ACCEPT_ROOM))
        {
            return;
        }
        self.cancel_accept(ctx, index, Pause::Room);
    }

    pub(super) fn cancel_accept(&mut self, ctx: &mut Ctx, index: u32, why: Pause) {
        self.set_accept(index, AcceptState::Pausing(why));
        ctx.push_own(Op::CancelAccept {
            token: own_token(OpKind::CancelAccept, index),
            target: own_token(OpKind::Accept, index),
        });
    }

    fn note_budget_pause(&mut self, ctx: &mut Ctx, index: u32, name: &str, now: Millis) {
        if let Some(l) = self.listeners.get_mut(index as usize) {
            l.counters.inc(Counter::AcceptPausedFd);
        }
        if ctx.log.allow(now, ctx.shard) {
            info!(
                shard = ctx.shard,
                listener = %name,
                budget = ?ctx.fds.budget,
                "accepting paused: this shard's descriptor budget is in use (its share of `ulimit -n`); clients wait in the listen queue until connections close"
            );
        }
    }

    /// accept or socket() said EMFILE/ENFILE: the process or the system is
    /// out of descriptors although the budget had room (something else holds
    /// them). Counted as a pause; accepting resumes after the back-off.
    fn note_fd_pause(&mut self, ctx: &mut Ctx, name: &str, errno: i32, now: Millis) {
        ctx.counters.inc(Counter::AcceptPausedFd);
        if ctx.log.allow(now, ctx.shard) {
            let err = std::io::Error::from_raw_os_error(errno);
            warn!(
                shard = ctx.shard,
                listener = %name,
                error = %err,
                "out of descriptors; accepting paused for {ACCEPT_BACKOFF_MS}ms (raise `ulimit -n`, or `fs.file-max` for ENFILE)"
            );
        }
    }

    /// An upstream socket could not be made for lack of descriptors: stop
    /// every accepting listener for a back-off, so new clients wait in the
    /// listen queue instead of being accepted and failing the same way.
    pub(super) fn pause_all_out_of_fds(&mut self, ctx: &mut Ctx, errno: i32, now: Millis) {
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
        self.note_fd_pause(ctx, &name, errno, now);
        for index in armed {
            self.cancel_accept(ctx, index, Pause::OutOfFds);
        }
    }

    /// Re-arms the listeners paused for descriptors once there is room.
    pub(crate) fn resume_accepts(&mut self, ctx: &mut Ctx) {
        if ctx.mode != Mode::Running {
            return;
        }
        for i in 0..self.listeners.len() {
            let need = match self.listeners.get(i) {
                Some(l) if l.accept == AcceptState::Paused => l.spec.kind.descriptors(),
                _ => continue,
            };
            if ctx.fd_room(need) {
                self.arm_accept(ctx, i as u32);
            }
        }
    }
}
