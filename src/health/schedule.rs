//! When each upstream is checked: every `interval` from a first check
//! spread evenly over the first interval (the n-th of N upstreams at n/N of
//! it), so N upstreams are not all probed in the same millisecond and their
//! load on the checker and on shared hosts stays flat. A check in flight is
//! never started again; it ends by its outcome or at its `timeout`. Pure:
//! the clock is the time since the checker started.

use std::time::Duration;

/// One upstream's timing.
#[derive(Clone, Debug)]
struct Slot {
    interval: Duration,
    timeout: Duration,
    /// When the next check starts.
    due: Duration,
    /// `Some`: a check is in flight and fails at this time.
    deadline: Option<Duration>,
}

/// The timing of every checked upstream, by index.
#[derive(Clone, Debug, Default)]
pub(crate) struct Schedule {
    slots: Vec<Slot>,
}

impl Schedule {
    /// `checks`: each upstream's (interval, timeout), `timeout <= interval`.
    pub(crate) fn new(checks: &[(Duration, Duration)]) -> Schedule {
        let n = u32::try_from(checks.len()).unwrap_or(u32::MAX).max(1);
        let slots = checks
            .iter()
            .enumerate()
            .map(|(i, &(interval, timeout))| {
                let i = u32::try_from(i).unwrap_or(u32::MAX);
                Slot {
                    interval,
                    timeout: timeout.min(interval),
                    due: first_offset(interval, i, n),
                    deadline: None,
                }
            })
            .collect();
        Schedule { slots }
    }

    pub(crate) fn timeout(&self, i: usize) -> Duration {
        self.slots.get(i).map_or(Duration::ZERO, |s| s.timeout)
    }

    /// Checks to start at `now` (appended to `out`): each is in flight from
    /// now until `done` or its deadline.
    pub(crate) fn start_due(&mut self, now: Duration, out: &mut Vec<usize>) {
        for (i, s) in self.slots.iter_mut().enumerate() {
            if s.deadline.is_none() && s.due <= now {
                s.deadline = Some(now + s.timeout);
                let next = s.due + s.interval;
                // Fell a whole interval behind (a stalled thread): start
                // afresh from now rather than firing the missed checks.
                s.due = if next <= now { now + s.interval } else { next };
                out.push(i);
            }
        }
    }

    /// Checks in flight whose timeout passed at `now` (appended to `out`;
    /// each counts as done).
    pub(crate) fn expired(&mut self, now: Duration, out: &mut Vec<usize>) {
        for (i, s) in self.slots.iter_mut().enumerate() {
            if s.deadline.is_some_and(|d| d <= now) {
                s.deadline = None;
                out.push(i);
            }
        }
    }

    /// Check `i` ended before its deadline.
    pub(crate) fn done(&mut self, i: usize) {
        if let Some(s) = self.slots.get_mut(i) {
            s.deadline = None;
        }
    }

    /// When something is next to do: a check to start or one to time out.
    pub(crate) fn next_wake(&self) -> Option<Duration> {
        self.slots.iter().map(|s| s.deadline.unwrap_or(s.due)).min()
    }
}

/// The first check of upstream `i` of `n`: `i/n` of its interval.
fn first_offset(interval: Duration, i: u32, n: u32) -> Duration {
    (interval * i.min(n)) / n
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    fn started(s: &mut Schedule, now: Duration) -> Vec<usize> {
        let mut out = Vec::new();
        s.start_due(now, &mut out);
        out
    }

    #[test]
    fn first_checks_are_spread_over_the_interval() {
        let checks = vec![(1000 * MS, 500 * MS); 4];
        let mut s = Schedule::new(&checks);
        let firsts: Vec<(u32, Vec<usize>)> = [0, 250, 500, 750]
            .into_iter()
            .map(|t| (t, started(&mut s, t * MS)))
            .collect();
        assert_eq!(
            firsts,
            vec![(0, vec![0]), (250, vec![1]), (500, vec![2]), (750, vec![3])]
        );
    }

    #[test]
    fn a_check_repeats_every_interval_and_is_never_started_twice() {
        let mut s = Schedule::new(&[(100 * MS, 100 * MS)]);
        assert_eq!(started(&mut s, Duration::ZERO), vec![0]);
        // In flight until its deadline: not started again even when due.
        assert_eq!(s.next_wake(), Some(100 * MS));
        let mut out = Vec::new();
        s.expired(99 * MS, &mut out);
        assert!(out.is_empty());
        s.expired(100 * MS, &mut out);
        assert_eq!(out, vec![0], "timed out at the deadline");
        assert_eq!(started(&mut s, 100 * MS), vec![0]);
        s.done(0);
        assert_eq!(s.next_wake(), Some(200 * MS));
        assert!(started(&mut s, 199 * MS).is_empty());
        assert_eq!(started(&mut s, 200 * MS), vec![0]);
    }

    #[test]
    fn a_late_start_keeps_the_period_and_a_stall_skips_missed_checks() {
        let mut s = Schedule::new(&[(100 * MS, 10 * MS)]);
        assert_eq!(started(&mut s, 30 * MS), vec![0]);
        s.done(0);
        assert_eq!(
            s.next_wake(),
            Some(100 * MS),
            "the period, not now + interval"
        );
        assert_eq!(started(&mut s, 1000 * MS), vec![0]);
        s.done(0);
        assert_eq!(s.next_wake(), Some(1100 * MS), "one check, not nine");
    }
}
