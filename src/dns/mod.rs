//! Name resolution without blocking a shard: the DNS client each shard runs
//! on its own ring. This module is pure — it encodes and decodes messages,
//! parses `/etc/resolv.conf` and `/etc/hosts`, caches answers and decides
//! what to send next and when to give up, with times passed in and
//! datagrams passed in and out. `shard::resolve` turns it into ring
//! operations; the runtime reads the files and hands shards the parsed
//! values.
//!
//! Queries go over UDP only. A truncated reply (TC) is used for the
//! addresses it carries, and is a server failure when it carries none:
//! there is no fallback to TCP, which address lookups essentially never
//! need.

pub mod cache;
pub mod hosts;
pub mod message;
pub mod resolv_conf;
mod resolver;

use std::fmt;
use std::net::IpAddr;

pub use hosts::Hosts;
pub use resolv_conf::parse_resolv_conf;
pub use resolver::{Counts, Lookup, Resolver, ResolverConfig};

/// Why a name has no address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ResolveError {
    /// NXDOMAIN, or the name has no address of the families asked for.
    NotFound,
    /// No nameserver answered, on any attempt.
    Timeout,
    /// SERVFAIL, REFUSED or unusable replies from every nameserver asked.
    ServerFailure,
    /// Too many lookups already pending on this shard.
    Overloaded,
    /// No nameserver is configured (`[runtime] resolver`, /etc/resolv.conf).
    NoNameservers,
}

impl fmt::Display for ResolveError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ResolveError::NotFound => "name not found",
            ResolveError::Timeout => "no nameserver answered in time",
            ResolveError::ServerFailure => "nameservers failed to answer",
            ResolveError::Overloaded => "too many lookups pending on this shard",
            ResolveError::NoNameservers => "no nameserver configured",
        })
    }
}

/// Addresses in preference order (at least one), or why there are none.
pub type Answer = Result<Vec<IpAddr>, ResolveError>;

/// Which address families a lookup asks for, and which comes first
/// (`[runtime] resolver_prefer`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Prefer {
    /// A and AAAA, IPv4 addresses first.
    #[default]
    Ipv4,
    /// A and AAAA, IPv6 addresses first.
    Ipv6,
    /// A only.
    Ipv4Only,
    /// AAAA only.
    Ipv6Only,
}

impl Prefer {
    pub const NAMES: [&'static str; 4] = ["ipv4", "ipv6", "ipv4_only", "ipv6_only"];

    pub fn parse(s: &str) -> Option<Prefer> {
        Some(match s {
            "ipv4" => Prefer::Ipv4,
            "ipv6" => Prefer::Ipv6,
            "ipv4_only" => Prefer::Ipv4Only,
            "ipv6_only" => Prefer::Ipv6Only,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Prefer::Ipv4 => "ipv4",
            Prefer::Ipv6 => "ipv6",
            Prefer::Ipv4Only => "ipv4_only",
            Prefer::Ipv6Only => "ipv6_only",
        }
    }

    /// The queries a lookup sends, preferred family first.
    pub(crate) fn qtypes(self) -> &'static [message::QType] {
        use message::QType::{A, Aaaa};
        match self {
            Prefer::Ipv4 => &[A, Aaaa],
            Prefer::Ipv6 => &[Aaaa, A],
            Prefer::Ipv4Only => &[A],
            Prefer::Ipv6Only => &[Aaaa],
        }
    }

    /// `addrs` of the families asked for, preferred family first (stable).
    pub(crate) fn order(self, addrs: &[IpAddr]) -> Vec<IpAddr> {
        let mut out = Vec::with_capacity(addrs.len());
        for q in self.qtypes() {
            out.extend(addrs.iter().filter(|a| match q {
                message::QType::A => a.is_ipv4(),
                message::QType::Aaaa => a.is_ipv6(),
            }));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn preference_orders_and_filters_families() {
        let addrs: Vec<IpAddr> = ["::1", "10.0.0.1", "::2", "10.0.0.2"]
            .iter()
            .map(|s| s.parse().unwrap())
            .collect();
        let s = |p: Prefer| {
            p.order(&addrs)
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(" ")
        };
        assert_eq!(s(Prefer::Ipv4), "10.0.0.1 10.0.0.2 ::1 ::2");
        assert_eq!(s(Prefer::Ipv6), "::1 ::2 10.0.0.1 10.0.0.2");
        assert_eq!(s(Prefer::Ipv4Only), "10.0.0.1 10.0.0.2");
        assert_eq!(s(Prefer::Ipv6Only), "::1 ::2");
        for name in Prefer::NAMES {
            assert_eq!(Prefer::parse(name).map(Prefer::as_str), Some(name));
        }
        assert_eq!(Prefer::parse("both"), None);
    }
}
