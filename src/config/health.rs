//! `health_check` on `[[tcp]]` and `[[tcp.routes]]`: active TCP connect
//! checks of the upstreams that section lists, as an inline table
//! `health_check = { interval = "2s", timeout = "1s", rise = 2, fall = 3 }`.
//!
//! Every field is optional (those are the defaults, HAProxy's `inter 2s
//! rise 2 fall 3` with a timeout that leaves each check time to finish
//! before the next). The key is absent by default: no active checks.

use std::ops::RangeInclusive;
use std::time::Duration;

use super::error::ConfigError;
use super::raw::{Field, Section};
use super::units::format_duration;

/// Active health checking of one section's upstreams.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HealthCheck {
    /// Time from the start of one check of an upstream to the start of the next.
    pub interval: Duration,
    /// A connect not established within it is a failed check (`<= interval`).
    pub timeout: Duration,
    /// Consecutive successful checks that bring a down upstream back up.
    pub rise: u32,
    /// Consecutive failed checks that take an up upstream down.
    pub fall: u32,
}

impl HealthCheck {
    pub const DEFAULT: HealthCheck = HealthCheck {
        interval: Duration::from_secs(2),
        timeout: Duration::from_secs(1),
        rise: 2,
        fall: 3,
    };
}

impl Default for HealthCheck {
    fn default() -> Self {
        HealthCheck::DEFAULT
    }
}

const KEYS: [&str; 4] = ["interval", "timeout", "rise", "fall"];
/// Below this a pool of upstreams sees a connection storm from every
/// ringfwd in front of it, for detection no load balancer needs.
const MIN_INTERVAL: Duration = Duration::from_millis(100);
/// A check a day apart detects nothing; an hour is already generous.
const MAX_INTERVAL: Duration = Duration::from_secs(3600);
const MIN_TIMEOUT: Duration = Duration::from_millis(1);
const COUNT: RangeInclusive<u32> = 1..=100;
pub(super) const EXAMPLE: &str =
    "health_check = { interval = \"2s\", timeout = \"1s\", rise = 2, fall = 3 }";

/// The section's `health_check`, or `None` when it has none.
pub(super) fn health_check(section: &Section<'_>) -> Result<Option<HealthCheck>, ConfigError> {
    let Some(field) = section.get("health_check") else {
        return Ok(None);
    };
    let table = field.table(EXAMPLE)?;
    table.deny_unknown(&KEYS, "in health_check")?;
    let d = HealthCheck::DEFAULT;
    let interval = match table.get("interval") {
        Some(f) => bounded_duration(&f, MIN_INTERVAL, MAX_INTERVAL, d.interval)?,
        None => d.interval,
    };
    let timeout = match table.get("timeout") {
        Some(f) => {
            let timeout = bounded_duration(&f, MIN_TIMEOUT, MAX_INTERVAL, d.timeout)?;
            if timeout > interval {
                return Err(f.error(format!(
                    "{} is longer than interval ({}); a check must end before the next one \
                     starts, so use at most {}, like timeout = \"{}\"",
                    f.shown(),
                    format_duration(interval),
                    format_duration(interval),
                    format_duration(interval / 2)
                )));
            }
            timeout
        }
        // The default timeout, capped so a short interval stays valid.
        None => d.timeout.min(interval),
    };
    let rise = table
        .get("rise")
        .map_or(Ok(d.rise), |f| count(&f, d.rise))?;
    let fall = table
        .get("fall")
        .map_or(Ok(d.fall), |f| count(&f, d.fall))?;
    Ok(Some(HealthCheck {
        interval,
        timeout,
        rise,
        fall,
    }))
}

fn bounded_duration(
    field: &Field<'_>,
    min: Duration,
    max: Duration,
    like: Duration,
) -> Result<Duration, ConfigError> {
    let key = last_key(field);
    let example = format!("{key} = \"{}\"", format_duration(like));
    let value = field.duration(&example)?;
    if (min..=max).contains(&value) {
        return Ok(value);
    }
    Err(field.error(format!(
        "{} is out of range; use {} to {}, like {example}",
        field.shown(),
        format_duration(min),
        format_duration(max)
    )))
}

/// `rise` / `fall`: consecutive checks, 1 to 100.
fn count(field: &Field<'_>, like: u32) -> Result<u32, ConfigError> {
    let example = format!("{} = {like}", last_key(field));
    let n = field.integer(&example)?;
    u32::try_from(n)
        .ok()
        .filter(|n| COUNT.contains(n))
        .ok_or_else(|| {
            field.error(format!(
                "{n} is out of range; use {} to {} consecutive checks, like {example}",
                COUNT.start(),
                COUNT.end()
            ))
        })
}

fn last_key<'f>(field: &'f Field<'_>) -> &'f str {
    field.origin.key.rsplit('.').next().unwrap_or_default()
}

/// The key as `ringfwd check` shows it (reads back as the same value).
pub(super) fn render(check: Option<&HealthCheck>) -> String {
    match check {
        None => "# health_check: unset (no active checks)".to_owned(),
        Some(c) => format!(
            "health_check = {{ interval = \"{}\", timeout = \"{}\", rise = {}, fall = {} }}",
            format_duration(c.interval),
            format_duration(c.timeout),
            c.rise,
            c.fall
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{HostFacts, Overrides, Plan};

    const FILE: &str = "ringfwd.toml";

    fn resolve(text: &str) -> Result<Plan, ConfigError> {
        let host = HostFacts {
            available_cpus: vec![0],
        };
        Plan::resolve(Some((FILE, text)), &Overrides::default(), &host)
    }

    fn listener(keys: &str) -> String {
        format!("[[tcp]]\nlisten = \"127.0.0.1:8080\"\nupstreams = [\"127.0.0.1:9000\"]\n{keys}\n")
    }

    #[track_caller]
    fn rejected(keys: &str, key: &str, needles: &[&str]) {
        let err = resolve(&listener(keys)).expect_err("expected a rejection");
        assert_eq!(err.key, key, "wrong key in: {err}");
        for needle in needles {
            assert!(err.message.contains(needle), "{needle:?} not in: {err}");
        }
    }

    #[test]
    fn absent_means_no_checks_and_an_empty_table_means_the_defaults() {
        let plan = resolve(&listener("")).unwrap();
        assert_eq!(plan.tcp[0].health_check, None);
        let plan = resolve(&listener("health_check = {}")).unwrap();
        assert_eq!(plan.tcp[0].health_check, Some(HealthCheck::DEFAULT));
    }

    #[test]
    fn every_field_is_read() {
        let plan = resolve(&listener(
            "health_check = { interval = \"500ms\", timeout = \"200ms\", rise = 1, fall = 5 }",
        ))
        .unwrap();
        assert_eq!(
            plan.tcp[0].health_check,
            Some(HealthCheck {
                interval: Duration::from_millis(500),
                timeout: Duration::from_millis(200),
                rise: 1,
                fall: 5,
            })
        );
    }

    #[test]
    fn a_short_interval_caps_the_default_timeout() {
        let plan = resolve(&listener("health_check = { interval = \"300ms\" }")).unwrap();
        let check = plan.tcp[0].health_check.unwrap();
        assert_eq!(check.timeout, Duration::from_millis(300));
    }

    #[test]
    fn routes_have_their_own_key() {
        let text = format!(
            "{}[[tcp.routes]]\nsni = [\"a.example\"]\nupstreams = [\"127.0.0.1:9001\"]\n\
             health_check = {{ fall = 1 }}\n",
            listener("")
        );
        let plan = resolve(&text).unwrap();
        let route = &plan.tcp[0].sni.as_ref().unwrap().routes[0];
        assert_eq!(route.health_check.map(|c| c.fall), Some(1));
        assert_eq!(plan.tcp[0].health_check, None, "a route's key is its own");
    }

    #[test]
    fn bounds_are_named_with_the_key() {
        rejected(
            "health_check = { interval = \"50ms\" }",
            "tcp[0].health_check.interval",
            &["\"50ms\"", "100ms to 1h"],
        );
        rejected(
            "health_check = { interval = \"1s\", timeout = \"2s\" }",
            "tcp[0].health_check.timeout",
            &["longer than interval (1s)", "at most 1s"],
        );
        rejected(
            "health_check = { timeout = \"0s\" }",
            "tcp[0].health_check.timeout",
            &["out of range", "1ms"],
        );
        rejected(
            "health_check = { rise = 0 }",
            "tcp[0].health_check.rise",
            &["0 is out of range", "1 to 100", "rise = 2"],
        );
        rejected(
            "health_check = { fall = 101 }",
            "tcp[0].health_check.fall",
            &["101 is out of range", "1 to 100", "fall = 3"],
        );
        rejected(
            "health_check = { interval = 2 }",
            "tcp[0].health_check.interval",
            &["needs a unit"],
        );
    }

    #[test]
    fn unknown_fields_and_wrong_shapes_are_refused() {
        rejected(
            "health_check = { intreval = \"2s\" }",
            "tcp[0].health_check.intreval",
            &["did you mean \"interval\""],
        );
        rejected(
            "health_check = true",
            "tcp[0].health_check",
            &["expected a table", "interval = \"2s\""],
        );
    }

    #[test]
    fn the_rendered_plan_reads_back() {
        let text = listener(
            "health_check = { interval = \"1s500ms\", timeout = \"750ms\", rise = 4, fall = 2 }",
        );
        let plan = resolve(&text).unwrap();
        let shown = plan.to_string();
        assert!(
            shown.contains("health_check = { interval = \"1s500ms\""),
            "{shown}"
        );
        assert_eq!(resolve(&shown).unwrap().tcp, plan.tcp);
    }
}
