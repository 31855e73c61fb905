//! One direction of a stream relayed without copying: splice from `src`'s
//! socket into a kernel pipe lent by the shard, then from the pipe to `dst`'s
//! socket (IORING_OP_SPLICE both times, with large lengths).
//!
//! One splice is in flight per direction at a time — in, then out until the
//! pipe is empty, then in again. The kernel holds the pipe's lock while a
//! splice into it waits for data, so a splice out of the same pipe started
//! meanwhile would wait for the *next* data to arrive: with request/response
//! traffic, forever. Taking turns also makes the FIN easy: a splice in that
//! returns 0 (EOF) always finds the pipe empty, so the FIN goes out at once.
//!
//! Which directions splice is decided here too ([`SpliceMode`]): the thresholds
//! below, measured as their docs say, keep request/response traffic on the
//! buffer path (a splice always runs on a kernel worker thread, a handoff that
//! costs latency) and move bulk transfers to pipes.

pub use super::SpliceEnd;
use super::pipe::Fin;
use super::rate::Quota;
use super::{ConnOp, Emit, Side};
use crate::time::Millis;

/// A pipe of the shard's pool, lent to one direction.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PipeId(pub u16);

/// Which directions splice (`runtime.splice`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SpliceMode {
    /// Every direction relays through buffers.
    Off,
    /// A direction switches to a pipe once its receives show a bulk transfer,
    /// and back when the transfer turns small or silent.
    Auto,
    /// Every direction splices from the start (while pipes last), and stays.
    Always,
}

/// What a relay needs to know to splice.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SpliceConfig {
    pub mode: SpliceMode,
    /// Bytes asked of one splice into the pipe (the pipe's capacity).
    pub pipe_size: u32,
    /// The provided-buffer size: a receive of this many bytes filled its buffer.
    pub buffer_size: u32,
}

impl SpliceConfig {
    pub const OFF: SpliceConfig = SpliceConfig {
        mode: SpliceMode::Off,
        pipe_size: 0,
        buffer_size: 0,
    };
}

impl Default for SpliceConfig {
    fn default() -> Self {
        SpliceConfig::OFF
    }
}

/// Auto: a direction asks for a pipe after this many consecutive receives
/// that each filled a whole provided buffer (128 KiB at the default 16 KiB).
/// Measured (tuning.md, "Bulk: splice"): a 64 B request/response never fills
/// a buffer, so it never asks; a bulk stream fills nearly every one, so it
/// switches within its first ~128 KiB, after which the switch (a cancel and
/// the queue's drain, ~3 operations) is paid back within a few hundred KiB.
pub const SWITCH_AFTER_FULL: u32 = 8;

/// Auto: a spliced direction goes back to buffers after this many consecutive
/// splices in that each moved less than one provided buffer: traffic a
/// single receive would have carried, now paying a worker handoff each.
pub const REVERT_AFTER_SMALL: u32 = 8;

/// Auto: a splice in that has waited this long for data is cancelled and the
/// pipe goes back to the pool (the direction returns to buffers), so silent
/// connections neither hold pipes from busy ones nor keep an io-wq worker
/// blocked. A bulk transfer that resumes switches again after
/// `SWITCH_AFTER_FULL` full receives — a few hundred microseconds, once a second
/// at most.
pub const RECLAIM_IDLE_MS: Millis = 1000;

/// The splice of this direction in the kernel, if any.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum InFlight {
    Idle,
    /// Into the pipe, issued at `since`.
    In {
        since: Millis,
    },
    /// Out of the pipe, `offered` bytes.
    Out {
        offered: u32,
    },
}

/// What the direction does once the splice in flight completes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Course {
    Relaying,
    /// Back to buffers as soon as the pipe is empty and idle.
    Reverting,
    /// Teardown: nothing more is issued; the pipe goes back once idle.
    Closing,
}

/// What a splice completion meant for the connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Spliced {
    /// Bytes moved into the pipe or out of it (0: nothing, e.g. an
    /// interrupted splice retried); `short` for a splice out that wrote less
    /// than it offered.
    Moved { bytes: u32, short: bool },
    /// The splice read returned 0 (end of stream, or a TCP urgent mark): the
    /// pipe went back empty; receive through buffers again, which tells EOF
    /// from the mark.
    Ended,
    /// The pipe went back to the pool; relay this direction through buffers again.
    Reverted,
    /// The socket of `side` failed with errno `errno`: end the connection.
    Failed { side: Side, errno: i32 },
    /// The kernel claimed to move more than was offered (a bug): end the connection.
    Invalid,
}

/// Interrupted splices: a signal (our cancel reaching a blocked worker, which
/// sees -ERESTARTSYS or -EINTR) or a cancel before it started (-ECANCELED).
/// Nothing moved. (-EAGAIN is not one: the sockets and pipes are blocking, so
/// it would mean something else is wrong, and retrying it would spin.)
fn interrupted(errno: i32) -> bool {
    const ERESTARTSYS: i32 = 512;
    matches!(errno, libc::EINTR | libc::ECANCELED | ERESTARTSYS)
}

/// A spliced direction.
#[derive(Debug)]
pub struct SpliceDir {
    src: Side,
    dst: Side,
    /// `None` once the pipe went back (after EOF or at teardown).
    pipe: Option<PipeId>,
    len: u32,
    /// Bytes in the pipe: spliced in and not yet out.
    in_pipe: u32,
    op: InFlight,
    course: Course,
    /// Auto mode: revert when small or silent. Always mode: stay.
    revert: bool,
    buffer_size: u32,
    /// Consecutive splices in smaller than one buffer.
    small: u32,
    fin: Fin,
    /// What the next splice in may take (`bandwidth_limit`); while paused
    /// no splice in is issued until [`resume`](Self::resume).
    quota: Quota,
    /// Bytes delivered to `dst` (carried over from the buffer path).
    pub bytes: u64,
}

impl SpliceDir {
    /// Starts splicing `src` → `dst` through `pipe`: issues the first splice
    /// in (unless `quota` is paused). The buffer path must have stopped
    /// receiving and sent everything.
    #[allow(clippy::too_many_arguments)]
    pub fn start(
        src: Side,
        dst: Side,
        pipe: PipeId,
        cfg: SpliceConfig,
        bytes: u64,
        quota: Quota,
        now: Millis,
        out: &mut impl Emit,
    ) -> SpliceDir {
        let mut d = SpliceDir {
            src,
            dst,
            pipe: Some(pipe),
            len: cfg.pipe_size.max(1),
            in_pipe: 0,
            op: InFlight::Idle,
            course: Course::Relaying,
            revert: cfg.mode == SpliceMode::Auto,
            buffer_size: cfg.buffer_size,
            small: 0,
            fin: Fin::Open,
            quota,
            bytes,
        };
        d.splice_in(now, out);
        d
    }

    /// Sets what the next splice in may take (see `Pipe::set_quota`).
    pub fn set_quota(&mut self, quota: Quota) {
        self.quota = quota;
    }

    /// A pause ended: issues the splice in it held back, if the direction
    /// is idle with an empty pipe (where a paused splice in waits).
    pub fn resume(&mut self, now: Millis, out: &mut impl Emit) {
        if self.op == InFlight::Idle && self.course == Course::Relaying && self.in_pipe == 0 {
            self.splice_in(now, out);
        }
    }

    /// Splices in at most the quota: each splice's length is capped by the
    /// tokens the direction's bucket holds, so a limited direction never
    /// reads more than its rate allows.
    fn splice_in(&mut self, now: Millis, out: &mut impl Emit) {
        let len = match self.quota {
            Quota::Unlimited => self.len,
            Quota::UpTo(max) => self.len.min(max),
            Quota::Paused => return,
        };
        if let Some(pipe) = self.pipe {
            self.op = InFlight::In { since: now };
            out.push(ConnOp::SpliceIn {
                side: self.src,
                pipe,
                len,
            });
        }
    }

    fn splice_out(&mut self, out: &mut impl Emit) {
        if let Some(pipe) = self.pipe {
            self.op = InFlight::Out {
                offered: self.in_pipe,
            };
            out.push(ConnOp::SpliceOut {
                side: self.dst,
                pipe,
                len: self.in_pipe,
            });
        }
    }

    /// Gives the pipe back (it must be idle): to the pool if empty, else to be
    /// discarded.
    fn release(&mut self, out: &mut impl Emit) {
        if let Some(pipe) = self.pipe.take() {
            out.push(ConnOp::ReturnPipe {
                pipe,
                clean: self.in_pipe == 0,
            });
            self.in_pipe = 0;
        }
    }

    /// The splice into the pipe completed.
    pub fn on_in(&mut self, res: Result<u32, i32>, now: Millis, out: &mut impl Emit) -> Spliced {
        self.op = InFlight::Idle;
        if self.course == Course::Closing {
            if let Ok(n) = res {
                self.in_pipe = self.in_pipe.saturating_add(n);
            }
            self.release(out);
            return Spliced::Moved {
                bytes: 0,
                short: false,
            };
        }
        match res {
            // A splice read returns 0 at end of stream, and also at a TCP
            // urgent mark (tcp_read_sock stops there): taking it for EOF
            // half-closed the direction and lost every byte after an urgent
            // one. Only a receive tells the two apart, so the direction goes
            // back to buffers (the pipe is empty here): recv reads past the
            // mark, or returns 0 at a real EOF, which the buffered path forwards.
            Ok(0) => {
                self.release(out);
                Spliced::Ended
            }
            Ok(n) => {
                self.in_pipe = self.in_pipe.saturating_add(n);
                if n < self.buffer_size {
                    self.small += 1;
                } else {
                    self.small = 0;
                }
                if self.revert && self.small >= REVERT_AFTER_SMALL {
                    self.course = Course::Reverting;
                }
                self.splice_out(out);
                Spliced::Moved {
                    bytes: n,
                    short: false,
                }
            }
            Err(e) if interrupted(e) => {
                if self.course == Course::Reverting {
                    self.release(out);
                    return Spliced::Reverted;
                }
                self.splice_in(now, out);
                Spliced::Moved {
                    bytes: 0,
                    short: false,
                }
            }
            Err(errno) => Spliced::Failed {
                side: self.src,
                errno,
            },
        }
    }

    /// The splice out of the pipe completed.
    pub fn on_out(&mut self, res: Result<u32, i32>, now: Millis, out: &mut impl Emit) -> Spliced {
        let offered = match self.op {
            InFlight::Out { offered } => offered,
            InFlight::Idle | InFlight::In { .. } => 0,
        };
        self.op = InFlight::Idle;
        let moved = match res {
            Ok(n) if n > offered || (n == 0 && offered > 0) => {
                if self.course != Course::Closing {
                    return Spliced::Invalid;
                }
                0
            }
            Ok(n) => n,
            Err(e) if interrupted(e) || self.course == Course::Closing => 0,
            Err(errno) => {
                return Spliced::Failed {
                    side: self.dst,
                    errno,
                };
            }
        };
        self.in_pipe -= moved.min(self.in_pipe);
        self.bytes += u64::from(moved);
        let short = moved < offered;
        if self.course == Course::Closing {
            self.release(out);
        } else if self.in_pipe > 0 {
            self.splice_out(out);
        } else if self.course == Course::Reverting {
            self.release(out);
            return Spliced::Reverted;
        } else {
            self.splice_in(now, out);
        }
        Spliced::Moved {
            bytes: moved,
            short,
        }
    }

    /// Teardown: issue nothing more; the pipe goes back now if no splice
    /// names it, else when the (cancelled) splice completes.
    pub fn close(&mut self, out: &mut impl Emit) {
        self.course = Course::Closing;
        if self.op == InFlight::Idle {
            self.release(out);
        }
    }

    /// When `on_timer` must run: the reclaim deadline of a waiting splice in.
    pub fn deadline(&self) -> Option<Millis> {
        match (self.op, self.course) {
            (InFlight::In { since }, Course::Relaying) if self.revert => {
                Some(since.saturating_add(RECLAIM_IDLE_MS))
            }
            _ => None,
        }
    }

    /// Reclaims the pipe of a splice in that waited `RECLAIM_IDLE_MS` for data:
    /// cancels it by its token (the lifecycle's cancel-by-descriptor would not
    /// find it: a splice's descriptor is its output, here the pipe).
    pub fn on_timer(&mut self, now: Millis, out: &mut impl Emit) {
        if self.deadline().is_some_and(|d| d <= now) {
            self.course = Course::Reverting;
            out.push(ConnOp::CancelSplice {
                side: self.src,
                end: SpliceEnd::In,
            });
        }
    }

    pub fn fin(&self) -> Fin {
        self.fin
    }

    pub fn on_fin_sent(&mut self) {
        self.fin = Fin::Done;
    }

    /// True while a pipe is lent to this direction.
    pub fn holds_pipe(&self) -> bool {
        self.pipe.is_some()
    }

    /// Bytes in the pipe now.
    pub fn in_pipe(&self) -> u32 {
        self.in_pipe
    }

    /// Whether a splice of this direction is in the kernel.
    pub fn busy(&self) -> bool {
        self.op != InFlight::Idle
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const P: PipeId = PipeId(3);

    fn cfg(mode: SpliceMode) -> SpliceConfig {
        SpliceConfig {
            mode,
            pipe_size: 1 << 20,
            buffer_size: 16 << 10,
        }
    }

    fn started(mode: SpliceMode) -> (SpliceDir, Vec<ConnOp>) {
        let mut out = Vec::new();
        let d = SpliceDir::start(
            Side::Client,
            Side::Upstream,
            P,
            cfg(mode),
            7,
            Quota::Unlimited,
            0,
            &mut out,
        );
        assert_eq!(
            out,
            [ConnOp::SpliceIn {
                side: Side::Client,
                pipe: P,
                len: 1 << 20
            }]
        );
        out.clear();
        (d, out)
    }

    #[test]
    fn takes_turns_in_and_out_and_continues_short_splices_out() {
        let (mut d, mut out) = started(SpliceMode::Auto);
        assert_eq!(
            d.on_in(Ok(100_000), 1, &mut out),
            Spliced::Moved {
                bytes: 100_000,
                short: false
            }
        );
        assert_eq!(
            out,
            [ConnOp::SpliceOut {
                side: Side::Upstream,
                pipe: P,
                len: 100_000
            }]
        );
        out.clear();
        let r = d.on_out(Ok(60_000), 2, &mut out);
        assert_eq!(
            r,
            Spliced::Moved {
                bytes: 60_000,
                short: true
            }
        );
        assert_eq!(
            out,
            [ConnOp::SpliceOut {
                side: Side::Upstream,
                pipe: P,
                len: 40_000
            }]
        );
        out.clear();
        d.on_out(Ok(40_000), 3, &mut out);
        assert!(matches!(out[..], [ConnOp::SpliceIn { .. }]));
        assert_eq!(d.bytes, 7 + 100_000);
    }

    #[test]
    fn a_zero_read_returns_the_pipe_clean_and_leaves_the_fin_to_the_buffered_receive() {
        // EOF and a TCP urgent mark both read 0 through splice; the buffered
        // receive that follows tells them apart, so no FIN is sent here.
        let (mut d, mut out) = started(SpliceMode::Always);
        assert_eq!(d.on_in(Ok(0), 1, &mut out), Spliced::Ended);
        assert_eq!(
            out,
            [ConnOp::ReturnPipe {
                pipe: P,
                clean: true
            }]
        );
        assert_eq!(d.fin(), Fin::Open);
        assert!(!d.holds_pipe());
    }

    #[test]
    fn small_splices_revert_to_buffers_in_auto_mode_only() {
        for (mode, reverts) in [(SpliceMode::Auto, true), (SpliceMode::Always, false)] {
            let (mut d, mut out) = started(mode);
            let mut reverted = false;
            for t in 0..REVERT_AFTER_SMALL as u64 + 2 {
                d.on_in(Ok(64), t, &mut out);
                reverted |= d.on_out(Ok(64), t, &mut out) == Spliced::Reverted;
                if reverted {
                    break;
                }
            }
            assert_eq!(reverted, reverts, "{mode:?}");
            assert_eq!(d.holds_pipe(), !reverts);
        }
    }

    #[test]
    fn a_silent_splice_in_is_reclaimed_after_the_idle_bound() {
        let (mut d, mut out) = started(SpliceMode::Auto);
        assert_eq!(d.deadline(), Some(RECLAIM_IDLE_MS));
        d.on_timer(RECLAIM_IDLE_MS - 1, &mut out);
        assert!(out.is_empty());
        d.on_timer(RECLAIM_IDLE_MS, &mut out);
        assert_eq!(
            out,
            [ConnOp::CancelSplice {
                side: Side::Client,
                end: SpliceEnd::In
            }]
        );
        assert_eq!(d.deadline(), None);
        out.clear();
        // The cancel lands late: data came first, is spliced out, then the pipe goes.
        d.on_in(Ok(10), 1001, &mut out);
        out.clear();
        assert_eq!(d.on_out(Ok(10), 1002, &mut out), Spliced::Reverted);
        assert_eq!(
            out,
            [ConnOp::ReturnPipe {
                pipe: P,
                clean: true
            }]
        );
        // Always mode never reclaims.
        let (d, _) = started(SpliceMode::Always);
        assert_eq!(d.deadline(), None);
    }

    #[test]
    fn teardown_returns_the_pipe_once_idle_and_discards_it_with_data() {
        let (mut d, mut out) = started(SpliceMode::Auto);
        d.on_in(Ok(500), 1, &mut out);
        out.clear();
        d.close(&mut out);
        assert!(out.is_empty(), "a splice out still names the pipe");
        d.on_out(Err(libc::EINTR), 2, &mut out);
        assert_eq!(
            out,
            [ConnOp::ReturnPipe {
                pipe: P,
                clean: false
            }]
        );
    }

    #[test]
    fn errors_name_the_failing_side_and_overclaims_are_invalid() {
        let (mut d, mut out) = started(SpliceMode::Auto);
        assert_eq!(
            d.on_in(Err(libc::ECONNRESET), 1, &mut out),
            Spliced::Failed {
                side: Side::Client,
                errno: libc::ECONNRESET
            }
        );
        let (mut d, mut out) = started(SpliceMode::Auto);
        d.on_in(Ok(10), 1, &mut out);
        assert_eq!(
            d.on_out(Err(libc::EPIPE), 1, &mut out),
            Spliced::Failed {
                side: Side::Upstream,
                errno: libc::EPIPE
            }
        );
        let (mut d, mut out) = started(SpliceMode::Auto);
        d.on_in(Ok(10), 1, &mut out);
        assert_eq!(d.on_out(Ok(11), 1, &mut out), Spliced::Invalid);
        // An interrupted splice in (not ours to stop) is retried.
        let (mut d, mut out) = started(SpliceMode::Auto);
        d.on_in(Err(libc::EINTR), 1, &mut out);
        assert!(matches!(out[..], [ConnOp::SpliceIn { .. }]));
    }

    #[test]
    fn a_limited_splice_in_takes_at_most_the_quota_and_waits_while_paused() {
        let mut out = Vec::new();
        let mut d = SpliceDir::start(
            Side::Client,
            Side::Upstream,
            P,
            cfg(SpliceMode::Always),
            0,
            Quota::UpTo(4096),
            0,
            &mut out,
        );
        assert_eq!(
            out,
            [ConnOp::SpliceIn {
                side: Side::Client,
                pipe: P,
                len: 4096
            }]
        );
        out.clear();
        d.on_in(Ok(4096), 1, &mut out);
        d.set_quota(Quota::Paused);
        out.clear();
        d.on_out(Ok(4096), 2, &mut out);
        assert!(out.is_empty(), "paused: no splice in, got {out:?}");
        assert!(!d.busy());
        // Still paused: resuming issues nothing.
        d.resume(3, &mut out);
        assert!(out.is_empty());
        d.set_quota(Quota::UpTo(1 << 30));
        d.resume(4, &mut out);
        assert_eq!(
            out,
            [ConnOp::SpliceIn {
                side: Side::Client,
                pipe: P,
                len: 1 << 20
            }],
            "capped by the pipe, not only the quota"
        );
        // A paused direction closes with its pipe at once (nothing names it).
        let mut out = Vec::new();
        let mut p = SpliceDir::start(
            Side::Upstream,
            Side::Client,
            P,
            cfg(SpliceMode::Always),
            0,
            Quota::Paused,
            0,
            &mut out,
        );
        assert!(out.is_empty());
        p.close(&mut out);
        assert_eq!(
            out,
            [ConnOp::ReturnPipe {
                pipe: P,
                clean: true
            }]
        );
    }
}
