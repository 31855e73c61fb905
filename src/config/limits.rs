//! What one client may do: the `allow` and `deny` address lists of a `[[tcp]]`
//! listener and the `deny` list of a `[[udp]]` one, and the new-connection
//! rate limits of a `[[tcp]]` listener (`new_connections_per_second` for the
//! whole listener, split over shards like `max_connections`, and
//! `new_connections_per_second_per_source`, which each shard enforces in
//! full, as UDP's `new_sessions_per_second_per_source` is). And port
//! ranges: a `listen = "IP:FIRST-LAST"` section stands for one listener per
//! port (see [`port_tables`]).

use std::net::IpAddr;
use std::ops::RangeInclusive;

use super::cidr::Cidr;
use super::error::ConfigError;
use super::keys::cidr_list;
use super::raw::{Field, Section};
use toml::{Table, Value};

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

/// Most ports one range may span: every port is a listening socket on
/// every shard (ports × shards descriptors, each with its accept queue).
pub(super) const MAX_RANGE_PORTS: u32 = 4096;

/// `FIRST-LAST` of a port range, both inclusive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct PortRange {
    first: u16,
    last: u16,
}

impl PortRange {
    fn width(self) -> u32 {
        u32::from(self.last) - u32::from(self.first) + 1
    }
}

/// `text` split into its host (as written, `[v6]` brackets kept) and its
/// port range, when its port part is `FIRST-LAST`; `Ok(None)` otherwise.
fn split_range(text: &str) -> Result<Option<(&str, PortRange)>, String> {
    let text = text.trim();
    let Some((host, ports)) = text.rsplit_once(':') else {
        return Ok(None);
    };
    let Some((first, last)) = ports.split_once('-') else {
        return Ok(None);
    };
    let port = |p: &str| p.trim().parse::<u16>().ok().filter(|&p| p != 0);
    let (Some(first), Some(last)) = (port(first), port(last)) else {
        return Err(format!(
            "{text:?} has port range {ports:?}; write two ports from 1 to 65535, like \"{host}:10000-10099\""
        ));
    };
    let range = PortRange { first, last };
    if first > last {
        return Err(format!(
            "{text:?} has a port range that runs backwards; write the lower port first, like \"{host}:{last}-{first}\""
        ));
    }
    if range.width() > MAX_RANGE_PORTS {
        return Err(format!(
            "{text:?} spans {} ports; at most {MAX_RANGE_PORTS} are allowed, because every port is a \
             listening socket on every shard (ports x shards descriptors); split it into several \
             listeners or use fewer ports",
            range.width()
        ));
    }
    Ok(Some((host, range)))
}

/// A `[[tcp]]` or `[[udp]]` section whose `listen` is a port range, as one
/// table per port: `listen` that port, each range upstream the port at the
/// same offset (single-port upstreams as written), and `name`, when given,
/// `NAME:PORT`, so every port is a listener of its own with its own counters
/// and limits. Empty when `listen` is one port (after checking that no
/// upstream is a range then).
pub(super) fn port_tables(section: &Section<'_>) -> Result<Vec<Table>, ConfigError> {
    let Some(listen) = section.get("listen") else {
        return Ok(Vec::new());
    };
    let Some(text) = listen.as_str() else {
        return Ok(Vec::new());
    };
    let listen_range = split_range(text).map_err(|why| listen.error(why))?;
    let upstreams = range_upstreams(section, text, listen_range)?;
    let Some((host, range)) = listen_range else {
        return Ok(Vec::new());
    };
    let name = match section.get("name") {
        Some(field) => range_name(&field, range)?,
        None => None,
    };
    Ok((range.first..=range.last)
        .map(|port| {
            let offset = port - range.first;
            let mut table = section.table().clone();
            table.insert("listen".into(), Value::String(format!("{host}:{port}")));
            if let Some(name) = &name {
                table.insert("name".into(), Value::String(format!("{name}:{port}")));
            }
            if let Some(ups) = &upstreams {
                let items = ups.iter().map(|u| Value::String(u.at(offset))).collect();
                table.insert("upstreams".into(), Value::Array(items));
            }
            table
        })
        .collect())
}

/// A listener name that will carry `:PORT`, checked to leave room for it.
fn range_name(field: &Field<'_>, range: PortRange) -> Result<Option<String>, ConfigError> {
    let Some(name) = field.as_str() else {
        return Ok(None); // the listener's own reader reports the wrong type
    };
    let room = 64 - format!(":{}", range.last).len();
    if name.chars().count() > room {
        return Err(field.error(format!(
            "{:?} is too long for a port range listener: each port is named NAME:PORT, so use at \
             most {room} characters",
            name
        )));
    }
    Ok(Some(name.to_owned()))
}

/// An upstream of a range listener: one address, or a range kept at the
/// listener's offset.
enum RangeUpstream {
    One(String),
    /// `options`: what followed the address (` weight=3`), kept per port.
    Range {
        host: String,
        first: u16,
        options: String,
    },
}

impl RangeUpstream {
    fn at(&self, offset: u16) -> String {
        match self {
            RangeUpstream::One(text) => text.clone(),
            RangeUpstream::Range {
                host,
                first,
                options,
            } => format!("{host}:{}{options}", first + offset),
        }
    }
}

/// The section's upstreams, split into ranges and single ports, each range
/// checked against the listen range's width. `None` when they are not an
/// array of strings (the listener's own reader reports that).
fn range_upstreams(
    section: &Section<'_>,
    listen_text: &str,
    listen: Option<(&str, PortRange)>,
) -> Result<Option<Vec<RangeUpstream>>, ConfigError> {
    let Some(items) = section.get("upstreams").and_then(|f| f.array("").ok()) else {
        return Ok(None);
    };
    let mut out = Vec::with_capacity(items.len());
    for item in &items {
        let Some(text) = item.as_str() else {
            return Ok(None);
        };
        // The address is the first word; options (`weight=N`) follow it.
        let text = text.trim();
        let (addr, options) = text
            .find(char::is_whitespace)
            .map_or((text, ""), |at| text.split_at(at));
        let Some((host, range)) = split_range(addr).map_err(|why| item.error(why))? else {
            out.push(RangeUpstream::One(text.to_owned()));
            continue;
        };
        match listen {
            None => {
                return Err(item.error(format!(
                    "{:?} is a port range but listen {listen_text:?} is one port; a range \
                     upstream needs a listen range of the same width (like listen = \
                     \"0.0.0.0:10000-10099\" with \"10.0.0.5:20000-20099\"), or write one port",
                    text.trim()
                )));
            }
            Some((_, l)) if l.width() != range.width() => {
                return Err(item.error(format!(
                    "{:?} spans {} ports but listen {listen_text:?} spans {}; a range upstream \
                     must span as many ports as the listen range (each port forwards to the port \
                     at the same offset), or be a single port",
                    text.trim(),
                    range.width(),
                    l.width()
                )));
            }
            Some(_) => out.push(RangeUpstream::Range {
                host: host.to_owned(),
                first: range.first,
                options: options.to_owned(),
            }),
        }
    }
    Ok(Some(out))
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

    fn addrs(items: &[&str]) -> Vec<std::net::SocketAddr> {
        items.iter().map(|a| a.parse().unwrap()).collect()
    }

    #[test]
    fn a_range_upstream_keeps_its_weight_on_every_port() {
        let plan = resolve(
            "[[tcp]]\nlisten = \"127.0.0.1:10000-10001\"\n\
             upstreams = [\"127.0.0.5:20000-20001 weight=3\", \"127.0.0.6:80\"]\n",
        )
        .unwrap();
        let got: Vec<_> = plan
            .tcp
            .iter()
            .map(|t| (t.upstreams.clone(), t.weights.clone()))
            .collect();
        assert_eq!(
            got,
            [
                (addrs(&["127.0.0.5:20000", "127.0.0.6:80"]), vec![3, 1]),
                (addrs(&["127.0.0.5:20001", "127.0.0.6:80"]), vec![3, 1]),
            ]
        );
    }

    #[test]
    fn a_port_range_is_one_listener_per_port_keeping_the_offset() {
        let plan = resolve(
            "[[tcp]]\nname = \"r\"\nlisten = \"127.0.0.1:10000-10002\"\n\
             upstreams = [\"127.0.0.5:20000-20002\", \"127.0.0.6:80\"]\nmax_connections = 8\n\
             [[udp]]\nlisten = \"[::1]:5300-5301\"\nupstreams = [\"[::1]:53\"]\n",
        )
        .unwrap();
        let tcp: Vec<_> = plan
            .tcp
            .iter()
            .map(|t| {
                (
                    t.name.as_str(),
                    t.listen,
                    t.upstreams.clone(),
                    t.max_connections,
                )
            })
            .collect();
        assert_eq!(
            tcp,
            [
                (
                    "r:10000",
                    addrs(&["127.0.0.1:10000"])[0],
                    addrs(&["127.0.0.5:20000", "127.0.0.6:80"]),
                    8
                ),
                (
                    "r:10001",
                    addrs(&["127.0.0.1:10001"])[0],
                    addrs(&["127.0.0.5:20001", "127.0.0.6:80"]),
                    8
                ),
                (
                    "r:10002",
                    addrs(&["127.0.0.1:10002"])[0],
                    addrs(&["127.0.0.5:20002", "127.0.0.6:80"]),
                    8
                ),
            ]
        );
        let udp: Vec<_> = plan
            .udp
            .iter()
            .map(|u| (u.name.as_str(), u.listen))
            .collect();
        assert_eq!(
            udp,
            [
                ("[::1]:5300", addrs(&["[::1]:5300"])[0]),
                ("[::1]:5301", addrs(&["[::1]:5301"])[0]),
            ],
            "unnamed: each port named by its own address"
        );
        let one = resolve("[[tcp]]\nlisten = \"127.0.0.1:7-7\"\nupstreams = [\"127.0.0.5:9-9\"]")
            .unwrap();
        assert_eq!(one.tcp[0].upstreams, addrs(&["127.0.0.5:9"]));
        let widest = "[[tcp]]\nlisten = \"127.0.0.1:10000-14095\"\nupstreams = [\"127.0.0.5:80\"]";
        assert_eq!(resolve(widest).unwrap().tcp.len(), 4096);
    }

    #[test]
    fn bad_port_ranges_name_the_key_the_value_and_the_fix() {
        let tcp = |listen: &str, upstream: &str| {
            format!("[[tcp]]\nlisten = \"{listen}\"\nupstreams = [\"{upstream}\"]\n")
        };
        rejected(
            &tcp("0.0.0.0:10000-14096", "10.0.0.5:80"),
            "tcp[0].listen",
            &[
                "\"0.0.0.0:10000-14096\" spans 4097 ports",
                "at most 4096",
                "ports x shards",
            ],
        );
        rejected(
            &tcp("0.0.0.0:10000-10099", "10.0.0.5:20000-20049"),
            "tcp[0].upstreams[0]",
            &[
                "\"10.0.0.5:20000-20049\" spans 50 ports",
                "listen \"0.0.0.0:10000-10099\" spans 100",
                "or be a single port",
            ],
        );
        rejected(
            &tcp("0.0.0.0:10000", "10.0.0.5:20000-20049"),
            "tcp[0].upstreams[0]",
            &["is a port range but listen \"0.0.0.0:10000\" is one port"],
        );
        rejected(
            &tcp("0.0.0.0:10005-10000", "10.0.0.5:1"),
            "tcp[0].listen",
            &["runs backwards", "\"0.0.0.0:10000-10005\""],
        );
        rejected(
            &tcp("0.0.0.0:0-10", "10.0.0.5:1"),
            "tcp[0].listen",
            &["\"0-10\"", "two ports from 1 to 65535"],
        );
        rejected(
            &tcp("0.0.0.0:10-x", "10.0.0.5:1"),
            "tcp[0].listen",
            &["\"10-x\""],
        );
        rejected(
            &tcp("127.0.0.1:10000-10002", "127.0.0.1:10000-10002"),
            "tcp[0].upstreams[0]",
            &["127.0.0.1:10000", "forwarding loop"],
        );
        rejected(
            &format!(
                "{}{}",
                tcp("127.0.0.1:10000-10002", "10.0.0.5:1"),
                tcp("127.0.0.1:10002", "10.0.0.5:1")
            ),
            "tcp[1].listen",
            &["127.0.0.1:10002 is already used by tcp[0].listen"],
        );
        rejected(
            &format!(
                "[[udp]]\nname = \"{}\"\nlisten = \"127.0.0.1:1-2\"\nupstreams = [\"10.0.0.5:1\"]",
                "n".repeat(63)
            ),
            "udp[0].name",
            &[
                "too long for a port range listener",
                "at most 62 characters",
            ],
        );
    }
}
