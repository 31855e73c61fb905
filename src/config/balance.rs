//! Balancing keys shared by `[[tcp]]`, `[[tcp.routes]]` and `[[udp]]`:
//! `balance` (the policy), a weight per upstream written after its address
//! (`"10.0.0.6:80 weight=3"`), and passive health (`max_fails` within
//! `fail_timeout` takes an upstream out of a shard's rotation, as NGINX's
//! upstream module does).

use std::net::SocketAddr;
use std::ops::RangeInclusive;
use std::time::Duration;

use super::addr::parse_upstream;
use super::error::ConfigError;
use super::keys::{MAX_UPSTREAMS, Timeout, timeout};
use super::raw::{Field, Section};

/// Weights are relative; 1000 leaves room for fine ratios while a Maglev
/// table of 65537 slots still gives each member a share near its weight.
pub(super) const WEIGHT: RangeInclusive<u32> = 1..=1000;
const MAX_FAILS: RangeInclusive<u32> = 0..=1000;
pub(super) const DEFAULT_MAX_FAILS: u32 = 1;
pub(super) const FAIL_TIMEOUT: Timeout = Timeout {
    key: "fail_timeout",
    default: Duration::from_secs(10),
    max: Duration::from_secs(3600),
};
const UPSTREAMS_EXAMPLE: &str = "upstreams = [\"10.0.0.5:80\", \"10.0.0.6:80 weight=3\"]";
const BALANCE_EXAMPLE: &str = "balance = \"least_conn\"";

/// `balance`: how a listener (or route) picks an upstream for a new
/// connection or session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Balance {
    /// Smooth weighted round robin (NGINX's).
    #[default]
    RoundRobin,
    /// The fewest active connections per weight, in the shard's view.
    LeastConn,
    /// A Maglev table over the client's IP address.
    HashSource,
    /// Power of two random choices on active connections per weight.
    RandomTwo,
}

impl Balance {
    pub const ALL: [Balance; 4] = [
        Balance::RoundRobin,
        Balance::LeastConn,
        Balance::HashSource,
        Balance::RandomTwo,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Balance::RoundRobin => "round_robin",
            Balance::LeastConn => "least_conn",
            Balance::HashSource => "hash_source",
            Balance::RandomTwo => "random_two",
        }
    }
}

/// `max_fails` and `fail_timeout`: passive health of each upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PassiveHealth {
    /// Connect failures within `fail_timeout` that take an upstream out of a
    /// shard's rotation; 0 turns passive health off.
    pub max_fails: u32,
    /// The window the failures are counted in, and how long the upstream
    /// stays out before one trial connection decides.
    pub fail_timeout: Duration,
}

impl Default for PassiveHealth {
    fn default() -> Self {
        PassiveHealth {
            max_fails: DEFAULT_MAX_FAILS,
            fail_timeout: FAIL_TIMEOUT.default,
        }
    }
}

/// An `upstreams` list: each address and its weight (1 unless written).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Pool {
    pub upstreams: Vec<SocketAddr>,
    pub weights: Vec<u32>,
}

/// `upstreams = ["ADDR", "ADDR weight=N", ...]`.
pub(super) fn pool(field: &Field<'_>) -> Result<Pool, ConfigError> {
    let items = field.array(UPSTREAMS_EXAMPLE)?;
    if items.is_empty() {
        return Err(field.error(format!(
            "{} is empty; list at least one upstream, like {UPSTREAMS_EXAMPLE}",
            field.shown()
        )));
    }
    if items.len() > MAX_UPSTREAMS {
        return Err(field.error(format!(
            "{} upstreams are listed; at most {MAX_UPSTREAMS} are allowed per listener",
            items.len()
        )));
    }
    let mut pool = Pool {
        upstreams: Vec::with_capacity(items.len()),
        weights: Vec::with_capacity(items.len()),
    };
    for item in &items {
        let text = item.string(UPSTREAMS_EXAMPLE)?;
        let (addr, weight) = entry(text).map_err(|why| item.error(why))?;
        pool.upstreams.push(addr);
        pool.weights.push(weight);
    }
    Ok(pool)
}

/// One entry: an address, then optionally `weight=N`.
fn entry(text: &str) -> Result<(SocketAddr, u32), String> {
    let mut words = text.split_whitespace();
    let addr = parse_upstream(words.next().unwrap_or_default())?;
    let Some(option) = words.next() else {
        return Ok((addr, 1));
    };
    if let Some(extra) = words.next() {
        return Err(format!(
            "{text:?} has {extra:?} after its weight; write one address and at most one \
             weight, like \"{addr} weight=3\""
        ));
    }
    let Some(value) = option.strip_prefix("weight=") else {
        return Err(format!(
            "{text:?}: {option:?} is not an upstream option; the only one is weight, like \
             \"{addr} weight=3\""
        ));
    };
    match value.parse::<u32>() {
        Ok(0) => Err(format!(
            "{text:?} has weight 0, which would never be picked; remove the entry instead \
             (weights are {} to {})",
            WEIGHT.start(),
            WEIGHT.end()
        )),
        Ok(w) if WEIGHT.contains(&w) => Ok((addr, w)),
        _ => Err(format!(
            "{text:?}: weight {value:?} is out of range; use a whole number from {} to {}, \
             like \"{addr} weight=3\"",
            WEIGHT.start(),
            WEIGHT.end()
        )),
    }
}

/// `balance`, default round_robin.
pub(super) fn balance(section: &Section<'_>) -> Result<Balance, ConfigError> {
    let Some(field) = section.get("balance") else {
        return Ok(Balance::default());
    };
    let written = field.string(BALANCE_EXAMPLE)?.trim().to_ascii_lowercase();
    Balance::ALL
        .into_iter()
        .find(|b| b.name() == written)
        .ok_or_else(|| {
            let names: Vec<String> = Balance::ALL
                .iter()
                .map(|b| format!("\"{}\"", b.name()))
                .collect();
            field.error(format!(
                "{} is not a balancing policy; use one of {}, like {BALANCE_EXAMPLE}",
                field.shown(),
                names.join(", ")
            ))
        })
}

/// `max_fails` (default 1, 0 = off) and `fail_timeout` (default 10s).
pub(super) fn passive(section: &Section<'_>) -> Result<PassiveHealth, ConfigError> {
    let max_fails = match section.get("max_fails") {
        None => DEFAULT_MAX_FAILS,
        Some(field) => {
            let example = "max_fails = 3 (0 turns passive health off)";
            let n = field.integer(example)?;
            u32::try_from(n)
                .ok()
                .filter(|n| MAX_FAILS.contains(n))
                .ok_or_else(|| {
                    field.error(format!(
                        "{n} is out of range; use {} to {}, like {example}",
                        MAX_FAILS.start(),
                        MAX_FAILS.end()
                    ))
                })?
        }
    };
    Ok(PassiveHealth {
        max_fails,
        fail_timeout: timeout(section, &FAIL_TIMEOUT)?,
    })
}

#[cfg(test)]
mod tests {
    use super::super::{HostFacts, Overrides, Plan};
    use super::*;

    const FILE: &str = "ringfwd.toml";

    fn resolve(text: &str) -> Result<Plan, ConfigError> {
        let host = HostFacts {
            available_cpus: vec![0, 1],
        };
        Plan::resolve(Some((FILE, text)), &Overrides::default(), &host)
    }

    fn tcp(keys: &str) -> String {
        format!("[[tcp]]\nlisten = \"127.0.0.1:8080\"\n{keys}\n")
    }

    fn up(s: &str) -> SocketAddr {
        s.parse().expect("addr")
    }

    #[track_caller]
    fn rejected(text: &str, key: &str, needles: &[&str]) {
        let err = resolve(text).expect_err("expected a rejection");
        assert_eq!(err.key, key, "wrong key in: {err}");
        for n in needles {
            assert!(err.message.contains(n), "{n:?} not in: {err}");
        }
    }

    #[test]
    fn defaults_are_round_robin_weight_1_and_one_failure_in_10s() {
        let plan = resolve(&tcp("upstreams = [\"10.0.0.5:80\", \"10.0.0.6:80\"]")).expect("ok");
        let l = &plan.tcp[0];
        assert_eq!(l.balance, Balance::RoundRobin);
        assert_eq!(l.weights, vec![1, 1]);
        assert_eq!(
            l.passive,
            PassiveHealth {
                max_fails: 1,
                fail_timeout: Duration::from_secs(10)
            }
        );
        let flags = Overrides {
            tcp: vec!["127.0.0.1:8081=10.0.0.5:80,10.0.0.6:80".into()],
            udp: vec!["127.0.0.1:8082=10.0.0.5:53".into()],
            ..Overrides::default()
        };
        let host = HostFacts {
            available_cpus: vec![0],
        };
        let plan = Plan::resolve(None, &flags, &host).expect("flags");
        assert_eq!(plan.tcp[0].weights, vec![1, 1]);
        assert_eq!(plan.tcp[0].balance, Balance::RoundRobin);
        assert_eq!(plan.tcp[0].passive, PassiveHealth::default());
        assert_eq!(plan.udp[0].weights, vec![1]);
        assert_eq!(plan.udp[0].passive, PassiveHealth::default());
    }

    #[test]
    fn every_policy_and_weights_and_health_resolve_on_tcp_routes_and_udp() {
        for b in Balance::ALL {
            let text = format!(
                "{}\n[[udp]]\nlisten = \"127.0.0.1:5353\"\nupstreams = [\"10.0.0.53:53 weight=2\"]\nbalance = \"{}\"\nmax_fails = 0\n",
                tcp(&format!(
                    "upstreams = [\"10.0.0.5:80\", \"10.0.0.6:80  weight=3\"]\nbalance = \"{}\"\nmax_fails = 3\nfail_timeout = \"30s\"\n[[tcp.routes]]\nsni = [\"a.example\"]\nupstreams = [\"10.0.0.7:443 weight=1000\"]\nbalance = \"{}\"\nfail_timeout = \"1s\"",
                    b.name(),
                    b.name()
                )),
                b.name()
            );
            let plan = resolve(&text).expect("ok");
            let l = &plan.tcp[0];
            assert_eq!(l.balance, b);
            assert_eq!(l.upstreams, vec![up("10.0.0.5:80"), up("10.0.0.6:80")]);
            assert_eq!(l.weights, vec![1, 3]);
            assert_eq!(l.passive.max_fails, 3);
            assert_eq!(l.passive.fail_timeout, Duration::from_secs(30));
            let r = &l.sni.as_ref().expect("routes").routes[0];
            assert_eq!(r.balance, b);
            assert_eq!(r.weights, vec![1000]);
            assert_eq!(r.passive.max_fails, 1);
            assert_eq!(r.passive.fail_timeout, Duration::from_secs(1));
            let u = &plan.udp[0];
            assert_eq!(u.balance, b);
            assert_eq!(u.weights, vec![2]);
            assert_eq!(u.passive.max_fails, 0, "0 turns passive health off");
            let shown = plan.to_string();
            assert!(
                shown.contains("upstreams = [\"10.0.0.5:80\", \"10.0.0.6:80 weight=3\"]"),
                "{shown}"
            );
            assert_eq!(resolve(&shown), Ok(plan), "check's output reads back");
        }
    }

    #[test]
    fn bad_weights_name_the_entry_and_the_range() {
        let text = |entry: &str| tcp(&format!("upstreams = [\"10.0.0.5:80\", \"{entry}\"]"));
        rejected(
            &text("10.0.0.6:80 weight=0"),
            "tcp[0].upstreams[1]",
            &["weight 0", "remove the entry instead", "1 to 1000"],
        );
        rejected(
            &text("10.0.0.6:80 weight=1001"),
            "tcp[0].upstreams[1]",
            &["\"1001\" is out of range", "from 1 to 1000"],
        );
        rejected(
            &text("10.0.0.6:80 weight=-1"),
            "tcp[0].upstreams[1]",
            &["out of range", "1 to 1000"],
        );
        rejected(
            &text("10.0.0.6:80 weight=x"),
            "tcp[0].upstreams[1]",
            &["out of range"],
        );
        rejected(
            &text("10.0.0.6:80 wait=3"),
            "tcp[0].upstreams[1]",
            &["\"wait=3\" is not an upstream option", "weight=3"],
        );
        rejected(
            &text("10.0.0.6:80 weight=3 backup"),
            "tcp[0].upstreams[1]",
            &["\"backup\" after its weight"],
        );
        rejected(
            &text("10.0.0.6 weight=3"),
            "tcp[0].upstreams[1]",
            &["10.0.0.6"],
        );
    }

    #[test]
    fn bad_balance_and_health_values_name_the_key() {
        rejected(
            &tcp("upstreams = [\"10.0.0.5:80\"]\nbalance = \"leastconn\""),
            "tcp[0].balance",
            &[
                "\"leastconn\" is not a balancing policy",
                "\"round_robin\", \"least_conn\", \"hash_source\", \"random_two\"",
            ],
        );
        rejected(
            &tcp("upstreams = [\"10.0.0.5:80\"]\nbalance = 1"),
            "tcp[0].balance",
            &["expected a string"],
        );
        rejected(
            &tcp("upstreams = [\"10.0.0.5:80\"]\nmax_fails = -1"),
            "tcp[0].max_fails",
            &["-1 is out of range", "0 to 1000"],
        );
        rejected(
            &tcp("upstreams = [\"10.0.0.5:80\"]\nfail_timeout = \"0s\""),
            "tcp[0].fail_timeout",
            &["out of range", "1h"],
        );
        rejected(
            &tcp("upstreams = [\"10.0.0.5:80\"]\nfail_timeout = 10"),
            "tcp[0].fail_timeout",
            &["a duration needs a unit", "\"10s\""],
        );
        rejected(
            "[[udp]]\nlisten = \"127.0.0.1:5353\"\nupstreams = [\"10.0.0.53:53\"]\nbalance = \"maglev\"",
            "udp[0].balance",
            &["not a balancing policy"],
        );
        rejected(
            &tcp(
                "upstreams = [\"10.0.0.5:80\"]\n[[tcp.routes]]\nsni = [\"a.example\"]\nupstreams = [\"10.0.0.7:443\"]\nmax_fails = \"3\"",
            ),
            "tcp[0].routes[0].max_fails",
            &["expected an integer"],
        );
    }
}
