//! Capacity search (`--capacity`): the highest offered rate at which the
//! target still meets its latency objectives. A pure state machine: it is
//! told what each step measured and answers with the next rate to offer, or
//! the result. The steps themselves are ordinary open-loop runs (`execute`).
//!
//! The search grows the rate geometrically from `--start-rate` until a step
//! breaks (or `--max-rate` holds), then bisects between the highest rate that
//! held and the lowest that broke until they are within [`RESOLUTION`].

use std::time::Duration;

/// Growth factor of the coarse phase. Doubling reaches any rate in
/// log2(max/start) steps and leaves a bracket the bisection closes in at
/// most [`MAX_BISECT_STEPS`].
pub(crate) const GROWTH: f64 = 2.0;

/// The search stops once the broken rate is within this fraction above the
/// held one. Run-to-run noise of one step on a quiet host is a few percent,
/// so a finer bracket would mostly measure noise while costing more steps.
pub(crate) const RESOLUTION: f64 = 0.05;

/// Bisection steps from a [`GROWTH`] bracket (100% wide) to [`RESOLUTION`]:
/// 100% → 50 → 25 → 12.5 → 6.25 → 3.1%. Bisection halves the bracket
/// whatever a step says, so noisy steps cannot make it longer.
pub(crate) const MAX_BISECT_STEPS: usize = 5;

/// Most growth steps: `--max-rate` may be at most `GROWTH^(MAX_GROWTH_STEPS-1)`
/// (about a million) times `--start-rate`.
pub(crate) const MAX_GROWTH_STEPS: usize = 21;

/// A step that breaks is run once more at the same rate, and only a second
/// break counts: on a shared host a burst of other work (or the hypervisor)
/// breaks a single step's tail at random, while overload breaks every run.
/// Noise can only break steps, never make an overloaded one hold, so the
/// retry removes false breaks without hiding real ones. At most this many
/// retries per search: enough to confirm every break of a clean search (the
/// one that ends the growth and one per bisection step).
pub(crate) const MAX_RETRIES: usize = MAX_BISECT_STEPS + 1;

/// Hard bound on the steps of one search, so its duration is bounded:
/// every growth step, the bisection and the retries.
pub(crate) const MAX_STEPS: usize = MAX_GROWTH_STEPS + MAX_BISECT_STEPS + MAX_RETRIES;

/// A step holds only if the achieved rate is within this fraction of the
/// offered one. Below: the target fell behind and an open loop's backlog
/// grows, even when a short step's percentiles do not show it yet. Above:
/// the step was draining a backlog the target built up in the warmup.
pub(crate) const RATE_TOLERANCE: f64 = 0.05;

/// One latency objective, e.g. `p99=1ms`.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Slo {
    /// As written, e.g. "p99" or "p99.9".
    pub name: String,
    /// 0 < quantile < 1, e.g. 0.99.
    pub quantile: f64,
    /// The limit in microseconds.
    pub limit_us: f64,
}

/// The `--capacity` settings, validated.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Settings {
    pub slos: Vec<Slo>,
    /// Largest error ratio (errors / (completed + errors)) a step may have.
    pub max_errors: f64,
    pub start_rate: f64,
    pub max_rate: f64,
    /// Measured time of each step (after its warmup).
    pub step_duration: Duration,
    /// Where the latency-against-rate chart goes, if anywhere.
    pub chart: Option<String>,
}

impl Settings {
    /// The most steps this search can take.
    pub(crate) fn worst_case_steps(&self) -> usize {
        let mut growth = 1;
        let mut rate = self.start_rate;
        while rate < self.max_rate && growth < MAX_GROWTH_STEPS {
            rate *= GROWTH;
            growth += 1;
        }
        (growth + MAX_BISECT_STEPS + MAX_RETRIES).min(MAX_STEPS)
    }
}

/// What one step measured (latencies in microseconds).
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Measured {
    pub offered: f64,
    pub achieved: f64,
    pub ops: u64,
    pub errors: u64,
    pub p50: f64,
    pub p99: f64,
    pub p99_9: f64,
    /// The latency at each objective's quantile, in `Settings::slos` order.
    pub at_slo: Vec<f64>,
}

impl Measured {
    pub(crate) fn error_ratio(&self) -> f64 {
        let all = self.ops + self.errors;
        if all == 0 {
            0.0
        } else {
            self.errors as f64 / all as f64
        }
    }
}

/// Why a step did not hold.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Miss {
    /// A percentile above its objective.
    Slo {
        name: String,
        measured_us: f64,
        limit_us: f64,
    },
    /// More errors than `--max-errors`.
    Errors { ratio: f64, limit: f64 },
    /// The achieved rate is not within [`RATE_TOLERANCE`] of the offered one.
    Rate { achieved: f64, offered: f64 },
}

impl Miss {
    pub(crate) fn text(&self) -> String {
        use super::report::dur;
        match self {
            // No latency sample at all: nothing completed in the step.
            Miss::Slo {
                name, measured_us, ..
            } if !measured_us.is_finite() => format!("{name} unmeasured: nothing completed"),
            Miss::Slo {
                name,
                measured_us,
                limit_us,
            } => format!("{name} {} > {}", dur(*measured_us), dur(*limit_us)),
            Miss::Errors { ratio, limit } => {
                format!("errors {:.3}% > {:.3}%", ratio * 100.0, limit * 100.0)
            }
            Miss::Rate { achieved, offered } => format!(
                "achieved {achieved:.0}/s not within {:.0}% of {offered:.0}/s",
                RATE_TOLERANCE * 100.0,
            ),
        }
    }
}

/// Whether a step is the first run at its rate or the retry of a break.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Attempt {
    First,
    /// The run after a break at the same rate: its verdict is the rate's.
    Retry,
}

/// One finished step: what it measured and why it broke (empty: it held).
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Step {
    pub measured: Measured,
    pub misses: Vec<Miss>,
    /// Set by `Search::record`.
    pub attempt: Attempt,
}

impl Step {
    /// Judges `measured` against the objectives, the error limit and the
    /// achieved-rate rule.
    pub(crate) fn judge(measured: Measured, settings: &Settings) -> Step {
        let mut misses = Vec::new();
        for (slo, &at) in settings.slos.iter().zip(&measured.at_slo) {
            if at > slo.limit_us {
                misses.push(Miss::Slo {
                    name: slo.name.clone(),
                    measured_us: at,
                    limit_us: slo.limit_us,
                });
            }
        }
        let ratio = measured.error_ratio();
        if ratio > settings.max_errors {
            misses.push(Miss::Errors {
                ratio,
                limit: settings.max_errors,
            });
        }
        if (measured.achieved - measured.offered).abs() > RATE_TOLERANCE * measured.offered {
            misses.push(Miss::Rate {
                achieved: measured.achieved,
                offered: measured.offered,
            });
        }
        Step {
            measured,
            misses,
            attempt: Attempt::First,
        }
    }

    pub(crate) fn held(&self) -> bool {
        self.misses.is_empty()
    }
}

/// How a search ended.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) enum Outcome {
    /// `rate` held; `broken_at` (when known) is the lowest rate that broke.
    Found { rate: f64, broken_at: Option<f64> },
    /// Even `--start-rate` broke: the capacity, if any, is below it.
    BelowStart { start: f64 },
    /// `--max-rate` held: the capacity is at least that.
    AtLeastMax { max: f64 },
}

impl Outcome {
    /// The highest rate that held, if one did.
    pub(crate) fn rate(&self) -> Option<f64> {
        match *self {
            Outcome::Found { rate, .. } => Some(rate),
            Outcome::BelowStart { .. } => None,
            Outcome::AtLeastMax { max } => Some(max),
        }
    }

    pub(crate) fn kind(&self) -> &'static str {
        match self {
            Outcome::Found { .. } => "found",
            Outcome::BelowStart { .. } => "below_start",
            Outcome::AtLeastMax { .. } => "at_least_max",
        }
    }
}

/// What the search wants next.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) enum Next {
    /// Run a step at this offered rate.
    Run(f64),
    Done(Outcome),
}

/// The search state: every step so far and the bracket they define.
#[derive(Clone, Debug)]
pub(crate) struct Search {
    start: f64,
    max: f64,
    steps: Vec<Step>,
    /// Highest rate that held.
    held: Option<f64>,
    /// Lowest rate that broke (always above `held`), confirmed by a retry
    /// unless the retries were used up.
    broken: Option<f64>,
    retries: usize,
}

impl Search {
    pub(crate) fn new(settings: &Settings) -> Search {
        Search {
            start: settings.start_rate,
            max: settings.max_rate.max(settings.start_rate),
            steps: Vec::new(),
            held: None,
            broken: None,
            retries: 0,
        }
    }

    pub(crate) fn steps(&self) -> &[Step] {
        &self.steps
    }

    /// The next rate to offer, or the result.
    pub(crate) fn next(&self) -> Next {
        if self.steps.is_empty() {
            return Next::Run(self.start);
        }
        let capped = self.steps.len() >= MAX_STEPS;
        if let Some(rate) = self.to_retry()
            && !capped
        {
            return Next::Run(rate);
        }
        match (self.held, self.broken) {
            (None, None) => Next::Run(self.start),
            (None, Some(_)) => Next::Done(Outcome::BelowStart { start: self.start }),
            (Some(h), None) if h >= self.max => Next::Done(Outcome::AtLeastMax { max: self.max }),
            (Some(h), None) if capped => Next::Done(Outcome::Found {
                rate: h,
                broken_at: None,
            }),
            (Some(h), None) => Next::Run((h * GROWTH).min(self.max)),
            (Some(h), Some(b)) if capped || b - h <= RESOLUTION * h => Next::Done(Outcome::Found {
                rate: h,
                broken_at: Some(b),
            }),
            (Some(h), Some(b)) => Next::Run((h + b) / 2.0),
        }
    }

    /// The rate of the last step if it broke on its first run and a retry
    /// is left.
    fn to_retry(&self) -> Option<f64> {
        let last = self.steps.last()?;
        (!last.held() && last.attempt == Attempt::First && self.retries < MAX_RETRIES)
            .then_some(last.measured.offered)
    }

    /// Takes the result of the step `next` asked for.
    pub(crate) fn record(&mut self, mut step: Step) {
        let rate = step.measured.offered;
        if self.to_retry() == Some(rate) {
            step.attempt = Attempt::Retry;
            self.retries += 1;
        }
        let counts = step.attempt == Attempt::Retry || self.retries >= MAX_RETRIES;
        if step.held() {
            // Only rates below the lowest broken one are ever offered, so a
            // held step always raises the floor of the bracket.
            if self.held.is_none_or(|h| rate > h) {
                self.held = Some(rate);
            }
        } else if counts && self.broken.is_none_or(|b| rate < b) {
            self.broken = Some(rate);
        }
        self.steps.push(step);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(start: f64, max: f64) -> Settings {
        Settings {
            slos: vec![Slo {
                name: "p99".into(),
                quantile: 0.99,
                limit_us: 1000.0,
            }],
            max_errors: 0.001,
            start_rate: start,
            max_rate: max,
            step_duration: Duration::from_secs(1),
            chart: None,
        }
    }

    /// A simulated target: p99 latency (µs) and achieved rate at an offered rate.
    fn measure(offered: f64, target: &dyn Fn(f64) -> (f64, f64)) -> Measured {
        let (p99, achieved) = target(offered);
        Measured {
            offered,
            achieved,
            ops: achieved as u64,
            errors: 0,
            p50: p99 / 4.0,
            p99,
            p99_9: p99 * 2.0,
            at_slo: vec![p99],
        }
    }

    /// Runs a whole search against `target`; returns the outcome and steps.
    fn search(s: &Settings, target: &dyn Fn(f64) -> (f64, f64)) -> (Outcome, Vec<Step>) {
        let mut search = Search::new(s);
        loop {
            match search.next() {
                Next::Run(rate) => {
                    assert!(
                        search.steps().len() < MAX_STEPS,
                        "asked for a step past the limit"
                    );
                    assert!(rate >= s.start_rate && rate <= s.max_rate, "rate {rate}");
                    search.record(Step::judge(measure(rate, target), s));
                }
                Next::Done(o) => return (o, search.steps().to_vec()),
            }
        }
    }

    /// A queue with a hard capacity: 200µs below it, unbounded above.
    fn knee(capacity: f64) -> impl Fn(f64) -> (f64, f64) {
        move |r| {
            if r <= capacity {
                (200.0 + 600.0 * r / capacity, r)
            } else {
                (50_000.0, capacity)
            }
        }
    }

    #[test]
    fn finds_a_knee_within_the_resolution_for_many_capacities() {
        let s = settings(1000.0, 2_000_000.0);
        for cap in [1000.0, 1500.0, 3333.0, 77_777.0, 123_456.0, 1_999_999.0] {
            let (o, steps) = search(&s, &knee(cap));
            let Outcome::Found {
                rate,
                broken_at: Some(b),
            } = o
            else {
                panic!("capacity {cap}: {o:?}")
            };
            assert!(
                rate <= cap && rate >= cap * (1.0 - RESOLUTION),
                "{cap}: {o:?}"
            );
            assert!(b > cap && b - rate <= RESOLUTION * rate, "{cap}: {o:?}");
            assert!(
                steps.len() <= s.worst_case_steps(),
                "{cap}: {}",
                steps.len()
            );
            // The reported rate is the highest that held.
            let best = steps
                .iter()
                .filter(|s| s.held())
                .map(|s| s.measured.offered)
                .fold(0.0, f64::max);
            assert_eq!(best, rate);
        }
    }

    #[test]
    fn growth_doubles_then_bisects_between_last_held_and_first_broken() {
        let s = settings(1000.0, 2_000_000.0);
        let (_, steps) = search(&s, &knee(5000.0));
        let rates: Vec<f64> = steps.iter().map(|s| s.measured.offered).collect();
        // Each break is confirmed by a retry at the same rate.
        assert_eq!(
            &rates[..8],
            &[
                1000.0, 2000.0, 4000.0, 8000.0, 8000.0, 6000.0, 6000.0, 5000.0
            ]
        );
        assert_eq!(steps[4].attempt, Attempt::Retry);
    }

    #[test]
    fn a_broken_start_rate_reports_no_capacity() {
        let s = settings(1000.0, 2_000_000.0);
        let (o, steps) = search(&s, &knee(500.0));
        assert_eq!(o, Outcome::BelowStart { start: 1000.0 });
        assert_eq!(o.rate(), None);
        assert_eq!(steps.len(), 2, "the start rate broke twice");
    }

    #[test]
    fn a_held_max_rate_reports_at_least_max() {
        let s = settings(1000.0, 10_000.0);
        let (o, steps) = search(&s, &knee(1e9));
        assert_eq!(o, Outcome::AtLeastMax { max: 10_000.0 });
        assert_eq!(o.rate(), Some(10_000.0));
        let rates: Vec<f64> = steps.iter().map(|s| s.measured.offered).collect();
        assert_eq!(rates, [1000.0, 2000.0, 4000.0, 8000.0, 10_000.0]);
        // start == max: one step either way.
        let s = settings(1000.0, 1000.0);
        assert_eq!(
            search(&s, &knee(1e9)).0,
            Outcome::AtLeastMax { max: 1000.0 }
        );
        assert_eq!(
            search(&s, &knee(10.0)).0,
            Outcome::BelowStart { start: 1000.0 }
        );
    }

    #[test]
    fn a_clipped_last_growth_step_bisects_below_max() {
        let s = settings(1000.0, 10_000.0);
        let (o, _) = search(&s, &knee(9000.0));
        let rate = o.rate().unwrap_or(0.0);
        assert!((9000.0 * 0.95..=9000.0).contains(&rate), "{o:?}");
    }

    #[test]
    fn errors_and_a_short_achieved_rate_break_a_step_on_their_own() {
        let s = settings(1000.0, 2_000_000.0);
        let ok = measure(1000.0, &knee(1e9));
        assert!(Step::judge(ok.clone(), &s).held());
        let errors = Measured {
            errors: 2,
            ops: 998,
            ..ok.clone()
        };
        assert_eq!(
            Step::judge(errors, &s).misses,
            [Miss::Errors {
                ratio: 0.002,
                limit: 0.001
            }]
        );
        let short = Measured {
            achieved: 949.0,
            ..ok.clone()
        };
        assert!(matches!(
            Step::judge(short, &s).misses[..],
            [Miss::Rate { .. }]
        ));
        let draining = Measured {
            achieved: 1051.0,
            ..ok.clone()
        };
        assert_eq!(
            Step::judge(draining, &s).misses[0].text(),
            "achieved 1051/s not within 5% of 1000/s"
        );
        for edge in [950.0, 1050.0] {
            let at_edge = Measured {
                achieved: edge,
                ..ok.clone()
            };
            assert!(Step::judge(at_edge, &s).held(), "{edge}");
        }
    }

    #[test]
    fn every_objective_must_hold() {
        let mut s = settings(1000.0, 2_000_000.0);
        s.slos.push(Slo {
            name: "p50".into(),
            quantile: 0.5,
            limit_us: 100.0,
        });
        let m = Measured {
            at_slo: vec![900.0, 150.0],
            ..measure(1000.0, &knee(1e9))
        };
        let step = Step::judge(m, &s);
        assert_eq!(
            step.misses,
            [Miss::Slo {
                name: "p50".into(),
                measured_us: 150.0,
                limit_us: 100.0
            }]
        );
        assert_eq!(step.misses[0].text(), "p50 150.0µs > 100.0µs");
        let none = Measured {
            at_slo: vec![f64::INFINITY, f64::INFINITY],
            ..measure(1000.0, &knee(1e9))
        };
        let step = Step::judge(none, &s);
        assert_eq!(step.misses.len(), 2, "an unmeasured percentile breaks");
        assert_eq!(step.misses[0].text(), "p99 unmeasured: nothing completed");
    }

    #[test]
    fn a_capacity_that_only_fails_by_achieved_rate_is_found() {
        // Latency stays low (a target that drops what it cannot serve), but
        // the achieved rate saturates at 40k/s.
        let s = settings(1000.0, 2_000_000.0);
        let (o, _) = search(&s, &|r: f64| (100.0, r.min(40_000.0)));
        let rate = o.rate().unwrap_or(0.0);
        assert!(
            (40_000.0 * 0.95..=40_000.0 / (1.0 - RATE_TOLERANCE)).contains(&rate),
            "{o:?}"
        );
    }

    #[test]
    fn noisy_non_monotonic_steps_still_end_in_the_bracket_within_the_step_limit() {
        let s = settings(1000.0, 2_000_000.0);
        // Deterministic noise: some rates below the knee break, some above
        // it would hold; the search must still end, report a rate that held
        // and never offer a rate at or above one that broke.
        for seed in 0..200u64 {
            let noisy = move |r: f64| {
                let h = (r as u64)
                    .wrapping_mul(0x9E37_79B9_7F4A_7C15)
                    .wrapping_add(seed.wrapping_mul(0xBF58_476D_1CE4_E5B9));
                let flip = (h >> 60) == 0;
                let below = r <= 30_000.0;
                if below != flip {
                    (300.0, r)
                } else {
                    (9_000.0, r)
                }
            };
            let (o, steps) = search(&s, &noisy);
            assert!(steps.len() <= s.worst_case_steps(), "seed {seed}");
            let mut lowest_broken = f64::INFINITY;
            for (i, st) in steps.iter().enumerate() {
                let rate = st.measured.offered;
                match st.attempt {
                    Attempt::Retry => {
                        assert_eq!(
                            Some(rate),
                            i.checked_sub(1).map(|p| steps[p].measured.offered)
                        )
                    }
                    Attempt::First => assert!(
                        rate < lowest_broken,
                        "seed {seed}: offered {rate} after {lowest_broken} broke"
                    ),
                }
                // A break counts once retried, or when no retry follows.
                let retried = steps
                    .get(i + 1)
                    .is_some_and(|n| n.attempt == Attempt::Retry);
                if !st.held() && !retried {
                    lowest_broken = lowest_broken.min(rate);
                }
            }
            match o {
                Outcome::Found { rate, broken_at } => {
                    assert!(steps.iter().any(|s| s.held() && s.measured.offered == rate));
                    assert_eq!(broken_at, Some(lowest_broken), "seed {seed}");
                }
                Outcome::BelowStart { .. } => assert!(!steps[0].held()),
                Outcome::AtLeastMax { .. } => panic!("seed {seed}: {o:?}"),
            }
        }
    }

    #[test]
    fn the_worst_case_step_count_covers_growth_and_bisection() {
        assert_eq!(
            settings(1000.0, 1000.0).worst_case_steps(),
            1 + MAX_BISECT_STEPS + MAX_RETRIES
        );
        // 1k, 2k, ..., 1024k, 2M (clipped): 12 growth steps.
        assert_eq!(
            settings(1000.0, 2_000_000.0).worst_case_steps(),
            12 + MAX_BISECT_STEPS + MAX_RETRIES
        );
        assert_eq!(settings(1.0, 1e8).worst_case_steps(), MAX_STEPS);
        // The largest allowed ratio needs exactly every growth step.
        let (o, steps) = search(&settings(1.0, 1_048_576.0), &knee(1e9));
        assert_eq!(o, Outcome::AtLeastMax { max: 1_048_576.0 });
        assert_eq!(steps.len(), MAX_GROWTH_STEPS);
    }

    #[test]
    fn a_single_noisy_break_is_retried_and_does_not_end_the_growth() {
        let s = settings(1000.0, 2_000_000.0);
        let runs_at_4k = std::cell::Cell::new(0);
        let target = |r: f64| {
            if r == 4000.0 {
                runs_at_4k.set(runs_at_4k.get() + 1);
                if runs_at_4k.get() == 1 {
                    return (9_000.0, r);
                }
            }
            knee(50_000.0)(r)
        };
        let (o, steps) = search(&s, &target);
        assert_eq!(runs_at_4k.get(), 2);
        assert_eq!(steps[3].attempt, Attempt::Retry);
        assert!(steps[3].held());
        let rate = o.rate().unwrap_or(0.0);
        assert!((50_000.0 * 0.95..=50_000.0).contains(&rate), "{o:?}");
    }

    #[test]
    fn retries_are_bounded_and_then_a_break_counts_at_once() {
        let s = settings(1000.0, 2_000_000.0);
        // Every first run breaks, every retry holds (there is no knee).
        let runs = std::cell::Cell::new(0u32);
        let target = |r: f64| {
            runs.set(runs.get() + 1);
            if runs.get() % 2 == 1 {
                (9_000.0, r)
            } else {
                knee(1e9)(r)
            }
        };
        let (o, steps) = search(&s, &target);
        let retries = steps.iter().filter(|s| s.attempt == Attempt::Retry).count();
        assert_eq!(retries, MAX_RETRIES);
        assert!(steps.len() <= s.worst_case_steps());
        // 1000 .. 32000 held on their retries; the first run at 64000 broke
        // with no retry left, so it counts.
        assert!(
            matches!(o, Outcome::Found { rate, broken_at: Some(b) } if rate >= 32_000.0 && b <= 64_000.0),
            "{o:?}"
        );
    }
}
