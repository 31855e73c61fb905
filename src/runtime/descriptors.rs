//! The descriptor budget: RLIMIT_NOFILE is per process, so it is split over
//! the shards after what the process needs anyway (listeners, pipes, a
//! reserve). A shard stops accepting when its share has no room for another
//! connection, as HAProxy derives `maxconn` from the limit, rather than
//! accepting clients it cannot give an upstream socket. Only a limit the
//! operator configured and the budget cannot meet is worth a warning; the
//! defaults are generous and meant to be capped by the host.

use crate::config::{LimitSource, Plan, Proto};
use crate::shard::engine::FdBudget;
use crate::sys::host::NoFile;

/// Descriptors outside every shard's budget: stdio, the control thread's
/// (signals, the log, the threads' wakeups), and slack for the accepts a
/// multishot accept delivers between a shard's pause and the kernel taking it.
pub(super) const RESERVE: u64 = 64;
/// Per shard, outside its budget: its io_uring and its command eventfd, with slack.
pub(super) const PER_SHARD: u64 = 4;

/// One configured limit and the descriptors it asks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Limit {
    /// How the operator would name it, e.g. `tcp listener 'web' max_connections = 50000`.
    pub what: String,
    pub proto: Proto,
    pub descriptors: u64,
    pub source: LimitSource,
}

/// The plan's connection and session limits: two descriptors per TCP
/// connection (client and upstream), one per UDP session (its upstream socket).
pub(super) fn limits(plan: &Plan) -> Vec<Limit> {
    let tcp = plan.tcp.iter().map(|t| Limit {
        what: format!(
            "tcp listener '{}' max_connections = {}",
            t.name, t.max_connections
        ),
        proto: Proto::Tcp,
        descriptors: u64::from(t.max_connections) * 2,
        source: t.max_connections_given,
    });
    let shards = plan.runtime.shards as u64;
    let udp = plan.udp.iter().map(move |u| Limit {
        what: format!(
            "udp listener '{}' max_sessions = {}",
            u.name, u.max_sessions
        ),
        proto: Proto::Udp,
        descriptors: udp_descriptors(u, shards),
        source: u.max_sessions_given,
    });
    tcp.chain(udp).collect()
}

/// One per session (its upstream socket), and on a `transparent =
/// "tproxy"` listener one more per reply socket, of which each shard holds
/// at most `tproxy_reply_sockets`.
fn udp_descriptors(u: &crate::config::UdpListenerPlan, shards: u64) -> u64 {
    let sessions = u64::from(u.max_sessions);
    let replies = u.transparent.as_ref().map_or(0, |t| {
        sessions.min(u64::from(t.reply_sockets).saturating_mul(shards))
    });
    sessions + replies
}

/// What to tell the operator about the limit.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Note {
    /// A configured limit cannot be met.
    Warn(String),
    /// The effective cap.
    Info(String),
}

/// Each shard's budget and the note about it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Budget {
    pub per_shard: FdBudget,
    pub note: Note,
}

/// Descriptors the process needs for `limits` beside `fixed` (listening
/// sockets and pipes of every shard) on `shards` shards.
pub(super) fn needed(limits: &[Limit], fixed: u64, shards: usize) -> u64 {
    let conns: u64 = limits.iter().map(|l| l.descriptors).sum();
    conns + outside(fixed, shards)
}

fn outside(fixed: u64, shards: usize) -> u64 {
    fixed + RESERVE + PER_SHARD * shards as u64
}

/// Splits the limit in effect over `shards` and says what it allows.
pub(super) fn budget(limits: &[Limit], fixed: u64, shards: usize, nofile: NoFile) -> Budget {
    let shards = shards.max(1);
    let total = nofile.limit.saturating_sub(outside(fixed, shards));
    let per_shard = u32::try_from(total / shards as u64).unwrap_or(u32::MAX);
    let need = needed(limits, fixed, shards);
    let cap = caps(limits, total);
    let explicit: Vec<&Limit> = limits
        .iter()
        .filter(|l| l.source == LimitSource::Explicit)
        .collect();
    let explicit_need: u64 = explicit.iter().map(|l| l.descriptors).sum();
    let note = if explicit_need > total {
        let keys: Vec<&str> = explicit.iter().map(|l| l.what.as_str()).collect();
        let hard = if nofile.hard < need {
            format!(" (hard limit {})", nofile.hard)
        } else {
            String::new()
        };
        Note::Warn(format!(
            "descriptor limit (RLIMIT_NOFILE) is {}{hard}: after listeners and pipes it leaves \
             room for {cap} per process, but {} need {explicit_need} descriptors (two per TCP \
             connection, one per UDP session and one more per TPROXY reply socket); clients \
             past the cap wait in the listen queue (counted in accept_paused_fd). Raise it \
             with `ulimit -n {need}` or \
             LimitNOFILE={need} in the systemd unit, or lower the limits",
            nofile.limit,
            keys.join(", ")
        ))
    } else {
        let raised = nofile
            .raised_from
            .map(|from| format!(" (raised from {from})"))
            .unwrap_or_default();
        let allows = if nofile.limit >= need && !limits.is_empty() {
            format!("covers every max_connections and max_sessions ({need} needed)")
        } else {
            format!("at most {cap} per process (`ulimit -n` to raise)")
        };
        Note::Info(format!(
            "descriptor limit {}{raised}: {allows}",
            nofile.limit
        ))
    };
    Budget {
        per_shard: FdBudget::Max(per_shard),
        note,
    }
}

/// "N TCP connections / M UDP sessions" that `total` descriptors hold:
/// each figure if all of them went to that kind (they share the budget).
fn caps(limits: &[Limit], total: u64) -> String {
    let tcp = limits.iter().any(|l| l.proto == Proto::Tcp);
    let udp = limits.iter().any(|l| l.proto == Proto::Udp);
    let conns = format!("{} TCP connections", total / 2);
    let sessions = format!("{total} UDP sessions");
    match (tcp, udp) {
        (true, true) => format!("{conns} / {sessions}"),
        (true, false) => conns,
        (false, true) => sessions,
        (false, false) => format!("{total} connections"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tcp(max: u64, source: LimitSource) -> Limit {
        Limit {
            what: format!("tcp listener 't' max_connections = {max}"),
            proto: Proto::Tcp,
            descriptors: max * 2,
            source,
        }
    }

    fn nofile(limit: u64) -> NoFile {
        NoFile {
            limit,
            hard: limit,
            raised_from: None,
        }
    }

    #[test]
    fn a_transparent_udp_session_counts_its_reply_socket_up_to_the_bound() {
        let plan = |keys: &str| {
            let text = format!(
                "[runtime]\nshards = 2\n[[udp]]\nlisten = \"0.0.0.0:15353\"\n\
                 transparent = \"tproxy\"\n{keys}\n"
            );
            let host = crate::config::HostFacts {
                available_cpus: vec![0, 1],
            };
            Plan::resolve(Some(("t.toml", &text)), &Default::default(), &host).expect("plan")
        };
        let udp = |p: &Plan| limits(p).iter().map(|l| l.descriptors).sum::<u64>();
        assert_eq!(
            udp(&plan("max_sessions = 1000\ntproxy_reply_sockets = 100")),
            1000 + 2 * 100
        );
        assert_eq!(
            udp(&plan("max_sessions = 10\ntproxy_reply_sockets = 100")),
            10 + 10,
            "no more reply sockets than sessions"
        );
    }

    #[test]
    fn defaults_over_the_limit_are_an_info_line_with_the_cap() {
        let limits = [tcp(10_000, LimitSource::Default)];
        let b = budget(&limits, 2, 1, nofile(4096));
        let cap = (4096 - 2 - RESERVE - PER_SHARD) / 2;
        match b.note {
            Note::Info(text) => assert!(
                text.contains("descriptor limit 4096") && text.contains(&format!("{cap} TCP")),
                "{text}"
            ),
            Note::Warn(text) => panic!("a default limit warned: {text}"),
        }
    }

    #[test]
    fn a_configured_limit_over_the_limit_warns_naming_its_key() {
        let limits = [
            tcp(50_000, LimitSource::Explicit),
            tcp(10_000, LimitSource::Default),
        ];
        let b = budget(&limits, 4, 2, nofile(4096));
        match b.note {
            Note::Warn(text) => assert!(
                text.contains("max_connections = 50000") && text.contains("ulimit -n"),
                "{text}"
            ),
            Note::Info(text) => panic!("no warning: {text}"),
        }
    }

    #[test]
    fn a_configured_limit_within_the_limit_is_an_info_line() {
        let limits = [tcp(100, LimitSource::Explicit)];
        match budget(&limits, 2, 1, nofile(4096)).note {
            Note::Info(text) => assert!(text.contains("covers every max_connections"), "{text}"),
            Note::Warn(text) => panic!("{text}"),
        }
    }

    #[test]
    fn the_budget_is_split_over_shards_after_what_is_outside_it() {
        let limits = [tcp(10, LimitSource::Default)];
        let b = budget(&limits, 8, 2, nofile(1000));
        let outside = 8 + RESERVE + 2 * PER_SHARD;
        assert_eq!(b.per_shard, FdBudget::Max(((1000 - outside) / 2) as u32));
        // A limit below what is outside leaves nothing, not an underflow.
        let b = budget(&limits, 8, 2, nofile(10));
        assert_eq!(b.per_shard, FdBudget::Max(0));
    }
}
