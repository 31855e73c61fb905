//! What one client may do: the `allow` and `deny` address lists of a `[[tcp]]`
//! listener and the `deny` list of a `[[udp]]` one, and the new-connection
//! rate limits of a `[[tcp]]` listener (`new_connections_per_second` for the
//! whole listener, split over shards like `max_connections`, and
//! `new_connections_per_second_per_source`, which each shard enforces in
//! full, as UDP's `new_sessions_per_second_per_source` is).

use std::net::IpAddr;
use std::ops::RangeInclusive;

use super::cidr::Cidr;
use super::error::ConfigError;
use super::keys::cidr_list;
use super::raw::{Field, Section};

/// The `[[tcp]]` keys read here (added to the section's key list).
pub(super) const TCP_KEYS: [&str; 4] = [
    "allow",
    "deny",
    "new_connections_per_second",
    "new_connections_per_second_per_source",
];

const RATE: RangeInclusive<u32> = 1..=1_000_000;

/// Client address ranges let in (`allow`) and kept out (`deny`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Access {
    /// Empty lets every client in.
    pub allow: Vec<Cidr>,
    /// Wins over `allow`: an address in both is kept out.
    pub deny: Vec<Cidr>,
}

impl Access {
    /// Whether a client at `ip` may connect: not denied, and allowed (an
    /// empty `allow` allows all). IPv4-mapped IPv6 addresses match IPv4 ranges.
    pub fn permits(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        let listed = |ranges: &[Cidr]| ranges.iter().any(|c| c.contains(ip));
        !listed(&self.deny) && (self.allow.is_empty() || listed(&self.allow))
    }

    /// Whether every client is let in (no list given), so nothing need be checked.
    pub fn is_open(&self) -> bool {
        self.allow.is_empty() && self.deny.is_empty()
    }
}

/// The limits of a `[[tcp]]` listener on who may connect, and how fast.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TcpLimits {
    pub access: Access,
    /// New connections per second for the whole listener, split over shards
    /// like `max_connections` (so at least one per shard).
    pub new_connections_per_second: Option<u32>,
    /// New connections per second from one client address, enforced by each
    /// shard in full (burst = the rate).
    pub new_connections_per_second_per_source: Option<u32>,
}

impl TcpLimits {
    /// This shard's share of `new_connections_per_second`, split as
    /// `max_connections` is.
    pub fn rate_share(&self, shard: usize, shards: usize) -> Option<u32> {
        self.new_connections_per_second
            .map(|total| super::shard_share(total, shard, shards))
    }
}

/// The `allow`, `deny` and rate keys of a `[[tcp]]` section.
pub(super) fn tcp_limits(section: &Section<'_>, shards: usize) -> Result<TcpLimits, ConfigError> {
    let per_listener = section.get("new_connections_per_second");
    Ok(TcpLimits {
        access: Access {
            allow: section
                .get("allow")
                .map(|f| allow(&f))
                .transpose()?
                .unwrap_or_default(),
            deny: deny(section.get("deny"))?,
        },
        new_connections_per_second: per_listener
            .map(|f| rate(&f, 1000, Share::Split { shards }))
            .transpose()?,
        new_connections_per_second_per_source: section
            .get("new_connections_per_second_per_source")
            .map(|f| rate(&f, 20, Share::Whole))
            .transpose()?,
    })
}

/// How the shards enforce a rate.
#[derive(Clone, Copy)]
enum Share {
    /// Each shard a share, so the rate must give every shard at least one.
    Split { shards: usize },
    /// Each shard the whole rate.
    Whole,
}

/// A connections-per-second key within `RATE`; `like` is the example's value.
fn rate(field: &Field<'_>, like: u32, share: Share) -> Result<u32, ConfigError> {
    let key = field.origin.key.rsplit('.').next().unwrap_or_default();
    let example = format!("{key} = {like}");
    let n = field.integer(&example)?;
    let Some(rate) = u32::try_from(n).ok().filter(|n| RATE.contains(n)) else {
        return Err(field.error(format!(
            "{n} is out of range; use {} to {}, like {example}",
            RATE.start(),
            RATE.end()
        )));
    };
    match share {
        Share::Split { shards } if usize::try_from(rate).is_ok_and(|r| r < shards) => Err(field
            .error(format!(
                "{key} = {rate} is less than the {shards} shards; each shard enforces its own \
                 share, so allow at least {shards} or run fewer shards"
            ))),
        _ => Ok(rate),
    }
}

fn allow(field: &Field<'_>) -> Result<Vec<Cidr>, ConfigError> {
    cidr_list(
        field,
        "allow = [\"10.0.0.0/8\", \"2001:db8::/32\"]",
        "which would refuse every client; list the client ranges to let in",
        "or remove the key to allow all",
    )
}

/// `deny` of a `[[tcp]]` or `[[udp]]` section (unset: nobody is kept out).
pub(super) fn deny(field: Option<Field<'_>>) -> Result<Vec<Cidr>, ConfigError> {
    field
        .map(|f| {
            cidr_list(
                &f,
                "deny = [\"192.0.2.0/24\", \"2001:db8:bad::/48\"]",
                "which keeps nobody out; list the client ranges to refuse",
                "or remove the key",
            )
        })
        .transpose()
        .map(Option::unwrap_or_default)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    fn cidrs(items: &[&str]) -> Vec<Cidr> {
        items.iter().map(|c| Cidr::parse(c).unwrap()).collect()
    }

    #[test]
    fn deny_wins_over_allow_and_an_empty_allow_is_everyone() {
        let open = Access::default();
        assert!(open.is_open());
        assert!(open.permits(ip("203.0.113.9")));
        let access = Access {
            allow: cidrs(&["10.0.0.0/8"]),
            deny: cidrs(&["10.9.0.0/16"]),
        };
        assert!(!access.is_open());
        assert!(access.permits(ip("10.1.2.3")));
        assert!(!access.permits(ip("10.9.2.3")), "denied though allowed");
        assert!(!access.permits(ip("11.0.0.1")), "not allowed");
        assert!(
            !access.permits(ip("::ffff:10.9.0.1")),
            "a mapped IPv4 address is IPv4"
        );
        let deny_only = Access {
            allow: Vec::new(),
            deny: cidrs(&["127.0.0.2"]),
        };
        assert!(deny_only.permits(ip("127.0.0.1")));
        assert!(!deny_only.permits(ip("127.0.0.2")));
    }

    #[test]
    fn the_listener_rate_is_split_like_max_connections() {
        let limits = TcpLimits {
            new_connections_per_second: Some(5),
            ..TcpLimits::default()
        };
        assert_eq!(limits.rate_share(0, 2), Some(3));
        assert_eq!(limits.rate_share(1, 2), Some(2));
        assert_eq!(TcpLimits::default().rate_share(0, 2), None);
    }

    use crate::config::{HostFacts, Overrides, Plan};

    const TCP: &str = "[[tcp]]\nlisten = \"127.0.0.1:8080\"\nupstreams = [\"127.0.0.1:9000\"]\n";
    const UDP: &str = "[[udp]]\nlisten = \"127.0.0.1:5353\"\nupstreams = [\"127.0.0.1:53\"]\n";

    fn resolve(text: &str) -> Result<Plan, crate::config::ConfigError> {
        let host = HostFacts {
            available_cpus: vec![0, 1],
        };
        Plan::resolve(Some(("ringfwd.toml", text)), &Overrides::default(), &host)
    }

    #[track_caller]
    fn rejected(text: &str, key: &str, needles: &[&str]) {
        let err = resolve(text).expect_err("expected a rejection");
        assert_eq!(err.key, key, "wrong key in: {err}");
        for needle in needles {
            assert!(err.message.contains(needle), "{needle:?} not in: {err}");
        }
    }

    #[test]
    fn every_tcp_key_resolves_and_shows_in_check() {
        let plan = resolve(&format!(
            "[runtime]\nshards = 2\n{TCP}allow = [\"10.0.0.0/8\", \"::1\"]\ndeny = [\"10.9.0.0/16\"]\n\
             new_connections_per_second = 5\nnew_connections_per_second_per_source = 2\n"
        ))
        .unwrap();
        let limits = &plan.tcp[0].limits;
        assert_eq!(limits.access.allow, cidrs(&["10.0.0.0/8", "::1"]));
        assert_eq!(limits.access.deny, cidrs(&["10.9.0.0/16"]));
        assert_eq!(limits.new_connections_per_second, Some(5));
        assert_eq!(limits.new_connections_per_second_per_source, Some(2));
        let shown = plan.to_string();
        for line in [
            "allow = [\"10.0.0.0/8\", \"::1/128\"]",
            "deny = [\"10.9.0.0/16\"]",
            "new_connections_per_second = 5  # per shard: 3 on shard 0, 2 on shard 1",
            "new_connections_per_second_per_source = 2  # enforced by each shard",
        ] {
            assert!(shown.contains(line), "{line:?} not in:\n{shown}");
        }
        let unset = resolve(TCP).unwrap();
        assert_eq!(unset.tcp[0].limits, TcpLimits::default());
        let shown = unset.to_string();
        assert!(shown.contains("# allow: unset (every client)"), "{shown}");
        assert!(
            shown.contains("# new_connections_per_second: unset"),
            "{shown}"
        );
    }

    #[test]
    fn udp_deny_resolves_and_shows_in_check() {
        let plan = resolve(&format!("{UDP}deny = [\"192.0.2.0/24\"]\n")).unwrap();
        assert_eq!(plan.udp[0].deny, cidrs(&["192.0.2.0/24"]));
        assert!(plan.to_string().contains("deny = [\"192.0.2.0/24\"]"));
        assert!(resolve(UDP).unwrap().udp[0].deny.is_empty());
    }

    #[test]
    fn bad_values_name_the_key_the_value_and_the_fix() {
        rejected(
            &format!("{TCP}allow = []"),
            "tcp[0].allow",
            &[
                "is empty",
                "refuse every client",
                "remove the key to allow all",
            ],
        );
        rejected(
            &format!("{TCP}deny = []"),
            "tcp[0].deny",
            &["is empty", "keeps nobody out", "remove the key"],
        );
        rejected(
            &format!("{UDP}deny = []"),
            "udp[0].deny",
            &["is empty", "remove the key"],
        );
        rejected(
            &format!("{TCP}deny = [\"10.0.0.1/8\"]"),
            "tcp[0].deny[0]",
            &["10.0.0.1/8", "10.0.0.0/8"],
        );
        rejected(
            &format!("{TCP}allow = [\"nonsense\"]"),
            "tcp[0].allow[0]",
            &["\"nonsense\"", "IPv4 or IPv6 address"],
        );
        rejected(
            &format!("{UDP}deny = \"10.0.0.0/8\""),
            "udp[0].deny",
            &["deny = [\"192.0.2.0/24\""],
        );
        rejected(
            &format!("{TCP}new_connections_per_second = 0"),
            "tcp[0].new_connections_per_second",
            &[
                "0 is out of range",
                "1 to 1000000",
                "new_connections_per_second = 1000",
            ],
        );
        rejected(
            &format!("[runtime]\nshards = 2\n{TCP}new_connections_per_second = 1"),
            "tcp[0].new_connections_per_second",
            &[
                "less than the 2 shards",
                "each shard enforces its own share",
            ],
        );
        rejected(
            &format!("{TCP}new_connections_per_second_per_source = 1000001"),
            "tcp[0].new_connections_per_second_per_source",
            &[
                "1000001 is out of range",
                "new_connections_per_second_per_source = 20",
            ],
        );
        rejected(
            &format!("{TCP}new_connections_per_second_per_source = \"5\""),
            "tcp[0].new_connections_per_second_per_source",
            &["new_connections_per_second_per_source = 20"],
        );
        rejected(
            &format!("{TCP}new_connection_per_second = 5"),
            "tcp[0].new_connection_per_second",
            &["did you mean \"new_connections_per_second\""],
        );
    }
}
