//! The rise/fall rule of one upstream (NGINX's and HAProxy's): `fall`
//! consecutive failed checks take an up upstream down, `rise` consecutive
//! successful ones bring a down upstream back; a check that agrees with the
//! current state resets the other count. Pure: checks in, changes out.

use std::fmt;
use std::time::Duration;

use crate::config::units::format_duration;

/// How one check ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// Connected (and, for a `send_proxy` listener, sent the LOCAL header).
    Passed,
    Failed(Failure),
}

/// Why a check failed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Failure {
    /// The upstream answered the SYN with a reset.
    Refused,
    /// No answer within the check's timeout.
    Timeout(Duration),
    /// Anything else (unreachable, out of sockets, the header not sent).
    Error(String),
}

impl Failure {
    /// The failure in a reason: one of them, or `n` of the same kind.
    fn describe(&self, n: u32) -> String {
        match (self, n) {
            (Failure::Refused, 1) => "connection refused".to_owned(),
            (Failure::Refused, n) => format!("{n} consecutive connections refused"),
            (Failure::Timeout(t), 1) => format!("connect timeout ({})", format_duration(*t)),
            (Failure::Timeout(t), n) => {
                format!("{n} consecutive connect timeouts ({})", format_duration(*t))
            }
            (Failure::Error(e), 1) => format!("check failed: {e}"),
            (Failure::Error(e), n) => format!("{n} consecutive failed checks (last: {e})"),
        }
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.describe(1))
    }
}

/// An upstream's state as the checks see it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum State {
    Up,
    Down,
}

/// A change of state and why, in words for the log line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Change {
    pub to: State,
    pub reason: String,
}

/// Checks in a row that disagree with the current state.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Streak {
    None,
    /// While down: successes so far.
    Passes(u32),
    /// While up: failures so far; `same` while they were all like `last`.
    Failures {
        n: u32,
        last: Failure,
        same: bool,
    },
}

/// One upstream's rise/fall counting.
#[derive(Clone, Debug)]
pub(crate) struct Tracker {
    rise: u32,
    fall: u32,
    state: State,
    streak: Streak,
}

impl Tracker {
    /// Starts up: a pool is usable from the first second, before any check.
    pub(crate) fn new(rise: u32, fall: u32) -> Tracker {
        Tracker {
            rise: rise.max(1),
            fall: fall.max(1),
            state: State::Up,
            streak: Streak::None,
        }
    }

    /// Starts in `state`: a reload carries an upstream's verdict over.
    pub(crate) fn starting(rise: u32, fall: u32, state: State) -> Tracker {
        Tracker {
            state,
            ..Tracker::new(rise, fall)
        }
    }

    #[cfg(test)]
    pub(crate) fn state(&self) -> State {
        self.state
    }

    /// Counts one check; returns the change it completes, if any.
    pub(crate) fn observe(&mut self, outcome: &Outcome) -> Option<Change> {
        match (self.state, outcome) {
            (State::Up, Outcome::Passed) | (State::Down, Outcome::Failed(_)) => {
                self.streak = Streak::None;
                None
            }
            (State::Down, Outcome::Passed) => {
                let n = match self.streak {
                    Streak::Passes(n) => n + 1,
                    _ => 1,
                };
                if n < self.rise {
                    self.streak = Streak::Passes(n);
                    return None;
                }
                Some(self.change(State::Up, passes(n)))
            }
            (State::Up, Outcome::Failed(failure)) => {
                let (n, same) = match &self.streak {
                    Streak::Failures { n, last, same } => (n + 1, *same && last == failure),
                    _ => (1, true),
                };
                if n < self.fall {
                    self.streak = Streak::Failures {
                        n,
                        last: failure.clone(),
                        same,
                    };
                    return None;
                }
                let reason = match (same, n) {
                    (true, _) | (_, 1) => failure.describe(n),
                    (false, n) => format!("{n} consecutive failed checks (last: {failure})"),
                };
                Some(self.change(State::Down, reason))
            }
        }
    }

    fn change(&mut self, to: State, reason: String) -> Change {
        self.state = to;
        self.streak = Streak::None;
        Change { to, reason }
    }
}

fn passes(n: u32) -> String {
    match n {
        1 => "a successful check".to_owned(),
        n => format!("{n} consecutive successful checks"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const REFUSED: Outcome = Outcome::Failed(Failure::Refused);
    const TIMEOUT: Outcome = Outcome::Failed(Failure::Timeout(Duration::from_secs(1)));

    fn run(t: &mut Tracker, outcomes: &[Outcome]) -> Vec<Option<State>> {
        outcomes
            .iter()
            .map(|o| t.observe(o).map(|c| c.to))
            .collect()
    }

    #[test]
    fn fall_consecutive_failures_take_it_down_and_rise_successes_bring_it_back() {
        let mut t = Tracker::new(2, 3);
        assert_eq!(t.state(), State::Up, "every upstream starts up");
        let got = run(
            &mut t,
            &[TIMEOUT, TIMEOUT, TIMEOUT, Outcome::Passed, Outcome::Passed],
        );
        assert_eq!(
            got,
            vec![None, None, Some(State::Down), None, Some(State::Up)]
        );
        assert_eq!(t.state(), State::Up);
    }

    #[test]
    fn a_check_that_agrees_with_the_state_restarts_the_count() {
        let mut t = Tracker::new(2, 3);
        let flapping = [TIMEOUT, TIMEOUT, Outcome::Passed, TIMEOUT, TIMEOUT];
        assert!(run(&mut t, &flapping).iter().all(Option::is_none));
        assert_eq!(t.observe(&TIMEOUT).map(|c| c.to), Some(State::Down));
        let back = [Outcome::Passed, REFUSED, Outcome::Passed];
        assert!(run(&mut t, &back).iter().all(Option::is_none));
        assert_eq!(t.observe(&Outcome::Passed).map(|c| c.to), Some(State::Up));
    }

    #[test]
    fn reasons_name_the_failure_and_the_count() {
        let mut t = Tracker::new(2, 3);
        let down = [TIMEOUT, TIMEOUT, TIMEOUT].map(|o| t.observe(&o));
        assert_eq!(
            down[2].as_ref().map(|c| c.reason.as_str()),
            Some("3 consecutive connect timeouts (1s)")
        );
        t.observe(&Outcome::Passed);
        let up = t.observe(&Outcome::Passed).map(|c| c.reason);
        assert_eq!(up.as_deref(), Some("2 consecutive successful checks"));

        let mut once = Tracker::new(1, 1);
        let down = once.observe(&REFUSED).map(|c| c.reason);
        assert_eq!(down.as_deref(), Some("connection refused"));
        let up = once.observe(&Outcome::Passed).map(|c| c.reason);
        assert_eq!(up.as_deref(), Some("a successful check"));

        let mut mixed = Tracker::new(1, 2);
        mixed.observe(&TIMEOUT);
        let down = mixed.observe(&REFUSED).map(|c| c.reason);
        assert_eq!(
            down.as_deref(),
            Some("2 consecutive failed checks (last: connection refused)")
        );
    }
}
