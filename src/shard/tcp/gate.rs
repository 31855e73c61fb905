//! Who a listener lets in, decided on accept: its `allow`/`deny` lists
//! first of all (before the `max_connections` share), its new-connection
//! rates last (so a client refused otherwise takes no token). The per-listener rate
//! is this shard's share of `new_connections_per_second`; the per-source
//! rate is enforced by each shard in full, with the bounded table of
//! `udp::limiter` (when it is full of sources seen within the last second,
//! a new source is refused until one of them has been idle for a second).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;

use crate::config::Access;
use crate::stats::CloseReason;
use crate::time::Millis;
use crate::udp::limiter::SourceLimiter;

/// A listener's rates as one shard enforces them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RateSpec {
    /// This shard's share of `new_connections_per_second`.
    pub per_listener: Option<u32>,
    /// `new_connections_per_second_per_source`, in full.
    pub per_source: Option<u32>,
}

/// What a listener checks on accept.
#[derive(Clone, Debug, Default)]
pub struct GateSpec {
    /// `None`: every client is let in. With `accept_proxy`, the lists are
    /// checked against the client the PROXY header names (see `Relay::set_access`).
    pub access: Option<Arc<Access>>,
    pub rates: RateSpec,
}

impl GateSpec {
    /// Whether the gate needs each accepted socket's peer address.
    pub fn wants_peer(&self) -> bool {
        self.access.is_some() || self.rates.per_source.is_some()
    }
}

/// Why a client was turned away at accept.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Refusal {
    Denied,
    RateLimited,
}

impl Refusal {
    pub(super) fn reason(self) -> CloseReason {
        match self {
            Refusal::Denied => CloseReason::Denied,
            Refusal::RateLimited => CloseReason::RateLimited,
        }
    }

    pub(super) fn advice(self) -> &'static str {
        match self {
            Refusal::Denied => {
                "connection closed at accept: the client is not allowed by the listener's allow/deny lists (counted in close_denied)"
            }
            Refusal::RateLimited => {
                "connection closed at accept: over new_connections_per_second (this shard's share) or new_connections_per_second_per_source (counted in close_rate_limited); raise them if this is expected load"
            }
        }
    }
}

/// One listener's gate on one shard.
pub(super) struct Gate {
    access: Option<Arc<Access>>,
    /// One bucket, under a fixed key: the limiter's table is bounded at one entry.
    listener: Option<SourceLimiter>,
    per_source: Option<SourceLimiter>,
}

/// The key of the per-listener bucket (any fixed address would do).
const LISTENER_KEY: IpAddr = IpAddr::V4(Ipv4Addr::UNSPECIFIED);

impl Gate {
    /// `proxied`: the listener takes PROXY headers, so its lists apply to the
    /// client a header names, not to the proxy at accept.
    pub(super) fn new(spec: &GateSpec, proxied: bool) -> Gate {
        Gate {
            access: spec.access.clone().filter(|_| !proxied),
            listener: spec
                .rates
                .per_listener
                .map(|rate| SourceLimiter::with_capacity(rate, 1)),
            per_source: spec.rates.per_source.map(SourceLimiter::new),
        }
    }

    /// Whether the lists let a client from `peer` in (an unknown peer is
    /// refused when there are lists). Checked first of all on accept, so a
    /// denied client is counted as denied whatever else would refuse it.
    pub(super) fn permits(&self, peer: Option<SocketAddr>) -> bool {
        self.access
            .as_ref()
            .is_none_or(|access| peer.is_some_and(|p| access.permits(p.ip())))
    }

    /// Whether a client from `peer` is within the rates now, taking a token
    /// of each; asked last, so a client refused otherwise takes none.
    pub(super) fn within_rates(&mut self, peer: Option<SocketAddr>, now: Millis) -> bool {
        let ip = peer.map(|p| p.ip().to_canonical());
        // The source's bucket first: one busy source must not spend the
        // listener's tokens on connections it is refused anyway.
        if let (Some(limiter), Some(ip)) = (&mut self.per_source, ip)
            && !limiter.allow(ip, now)
        {
            return false;
        }
        self.listener
            .as_mut()
            .is_none_or(|limiter| limiter.allow(LISTENER_KEY, now))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Cidr;

    impl Gate {
        /// The order on accept: the lists, then the rates.
        fn check(&mut self, peer: Option<SocketAddr>, now: Millis) -> Result<(), Refusal> {
            if !self.permits(peer) {
                return Err(Refusal::Denied);
            }
            if !self.within_rates(peer, now) {
                return Err(Refusal::RateLimited);
            }
            Ok(())
        }
    }

    fn peer(text: &str) -> Option<SocketAddr> {
        Some(SocketAddr::new(text.parse().unwrap(), 40000))
    }

    fn spec(allow: &[&str], deny: &[&str], rates: RateSpec) -> GateSpec {
        let list = |items: &[&str]| items.iter().map(|c| Cidr::parse(c).unwrap()).collect();
        GateSpec {
            access: Some(Arc::new(Access {
                allow: list(allow),
                deny: list(deny),
            })),
            rates,
        }
    }

    #[test]
    fn lists_refuse_before_rates_and_an_unknown_peer_is_denied() {
        let rates = RateSpec {
            per_listener: Some(1),
            per_source: None,
        };
        let mut gate = Gate::new(&spec(&["127.0.0.0/8"], &["127.0.0.2"], rates), false);
        assert_eq!(gate.check(peer("127.0.0.2"), 0), Err(Refusal::Denied));
        assert_eq!(gate.check(peer("10.0.0.1"), 0), Err(Refusal::Denied));
        assert_eq!(gate.check(None, 0), Err(Refusal::Denied));
        assert_eq!(
            gate.check(peer("127.0.0.1"), 0),
            Ok(()),
            "denials took no token"
        );
        assert_eq!(gate.check(peer("127.0.0.3"), 0), Err(Refusal::RateLimited));
        assert_eq!(gate.check(peer("127.0.0.3"), 1000), Ok(()), "refilled");
    }

    #[test]
    fn a_proxied_listener_leaves_its_lists_to_the_header() {
        let mut gate = Gate::new(&spec(&["10.0.0.0/8"], &[], RateSpec::default()), true);
        assert_eq!(gate.check(peer("127.0.0.1"), 0), Ok(()));
    }

    #[test]
    fn each_source_has_its_own_budget_within_the_listeners() {
        let rates = RateSpec {
            per_listener: Some(3),
            per_source: Some(2),
        };
        let mut gate = Gate::new(
            &GateSpec {
                access: None,
                rates,
            },
            false,
        );
        assert_eq!(gate.check(peer("127.0.0.2"), 0), Ok(()));
        assert_eq!(gate.check(peer("127.0.0.2"), 0), Ok(()));
        assert_eq!(gate.check(peer("127.0.0.2"), 0), Err(Refusal::RateLimited));
        assert_eq!(
            gate.check(peer("127.0.0.3"), 0),
            Ok(()),
            "the listener's third token"
        );
        assert_eq!(gate.check(peer("127.0.0.4"), 0), Err(Refusal::RateLimited));
    }
}
