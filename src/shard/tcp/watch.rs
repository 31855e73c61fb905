//! The accept watch: a listener whose accept is armed but took no client
//! for a second, while clients wait in its accept queue, lost its wakeup;
//! it is re-armed, which takes them at once.
//!
//! io_uring arms an accept's poll with an exclusive wakeup, so one arriving
//! client wakes one waiter. During a binary upgrade the old and the new
//! process have accepts armed on the same sockets; a wakeup that reaches the
//! old process's accept while its drain cancels it is spent, and the client
//! waits in the queue, unseen by the new process, until another client's
//! arrival wakes it. Without more arrivals (every client waiting on its
//! answer) it would wait for ever; the watch bounds that to about two
//! seconds. An idle listener costs one `getsockopt` a second; a busy one
//! (an accept in the last second) nothing.

use tracing::info;

use super::TcpService;
use super::accept::{AcceptState, Pause};
use crate::shard::context::{Ctx, Mode, TimerKey, own_token};
use crate::shard::ops::{Fd, Op};
use crate::shard::token::OpKind;
use crate::stats::Counter;
use crate::time::Millis;

/// How often an armed listener is looked at.
pub(super) const WATCH_MS: Millis = 1_000;

/// Where a listener's watch is.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(super) enum Watch {
    /// Not watching (not accepting, or not running).
    #[default]
    Off,
    /// A tick is due; `accepted`: a client was accepted since the last.
    Ticking { accepted: bool },
    /// The accept queue's length is being read.
    Checking,
}

impl Watch {
    pub(super) fn accepted(&mut self) {
        if let Watch::Ticking { accepted } = self {
            *accepted = true;
        }
    }
}

impl TcpService {
    /// An accept was armed: watch it, unless already watched.
    pub(super) fn start_watch(&mut self, ctx: &mut Ctx, index: u32) {
        let Some(l) = self.listeners.get_mut(index as usize) else {
            return;
        };
        if l.watch != Watch::Off || ctx.mode != Mode::Running {
            return;
        }
        l.watch = Watch::Ticking { accepted: false };
        let at = ctx.timers.now().saturating_add(WATCH_MS);
        ctx.timers.insert(at, TimerKey::AcceptWatch(index));
    }

    /// Listener `index`'s watch timer fired.
    pub(crate) fn watch_tick(&mut self, ctx: &mut Ctx, index: u32, now: Millis) {
        let Some(l) = self.listeners.get_mut(index as usize) else {
            return;
        };
        let armed = matches!(l.accept, AcceptState::Armed(_)) && ctx.mode == Mode::Running;
        match l.watch {
            _ if !armed => l.watch = Watch::Off,
            Watch::Ticking { accepted: true } => {
                l.watch = Watch::Ticking { accepted: false };
                ctx.timers
                    .insert(now.saturating_add(WATCH_MS), TimerKey::AcceptWatch(index));
            }
            Watch::Ticking { accepted: false } => {
                l.watch = Watch::Checking;
                ctx.push_own(Op::ListenQueue {
                    token: own_token(OpKind::ListenQueue, index),
                    fd: Fd(l.spec.fd),
                });
            }
            Watch::Checking | Watch::Off => {}
        }
    }

    /// The accept queue's length (`res`), read for the watch.
    pub(crate) fn on_listen_queue(&mut self, ctx: &mut Ctx, index: u32, res: i32, now: Millis) {
        ctx.own_done();
        let Some(l) = self.listeners.get_mut(index as usize) else {
            return;
        };
        if l.watch != Watch::Checking {
            return;
        }
        let armed = matches!(l.accept, AcceptState::Armed(_)) && ctx.mode == Mode::Running;
        if !armed {
            l.watch = Watch::Off;
            return;
        }
        if res > 0 {
            // Clients wait and the armed accept took none for a second.
            l.counters.inc(Counter::AcceptRearmed);
            l.watch = Watch::Off; // the re-arm starts it again
            if ctx.log.allow(now, ctx.shard) {
                info!(shard = ctx.shard, listener = %l.spec.name, waiting = res, "re-arming accept: clients wait in the accept queue but the armed accept took none for a second (a lost wakeup, as after a binary upgrade); counted in accept_rearmed");
            }
            return self.cancel_accept(ctx, index, Pause::Rearm);
        }
        l.watch = Watch::Ticking { accepted: false };
        ctx.timers
            .insert(now.saturating_add(WATCH_MS), TimerKey::AcceptWatch(index));
    }
}
