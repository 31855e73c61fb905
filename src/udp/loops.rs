//! Forwarding-loop guard. A datagram whose (forged) source is a listener of
//! this forwarder makes the upstream's reply go to that listener, which
//! forwards it again — forever, at tens of thousands of datagrams a second
//! from a single datagram, and `idle_timeout` never fires. A forged source
//! equal to one of the listener's upstreams loops the same way when the
//! upstream answers unsolicited datagrams. Such datagrams are dropped
//! (`udp_drop_loop`) before any session exists.

use std::net::{IpAddr, SocketAddr};

/// Which address a looping datagram claimed to come from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Loop {
    /// A UDP listen address of this forwarder.
    Listener,
    /// An upstream of the listener that received it.
    Upstream,
}

impl Loop {
    pub(crate) fn describe(self) -> &'static str {
        match self {
            Loop::Listener => "one of this forwarder's UDP listen addresses",
            Loop::Upstream => "one of the listener's upstreams",
        }
    }
}

/// v4-mapped IPv6 (a dual-stack listener's view of an IPv4 peer) as IPv4.
fn canonical(a: SocketAddr) -> SocketAddr {
    SocketAddr::new(a.ip().to_canonical(), a.port())
}

/// The addresses one listener must never take a datagram from. Checked per
/// datagram: a few comparisons, no syscall.
#[derive(Clone, Debug, Default)]
pub(crate) struct LoopGuard {
    /// Every UDP listen address of the forwarder (as bound, port resolved).
    own: Vec<SocketAddr>,
    upstreams: Vec<SocketAddr>,
}

impl LoopGuard {
    pub(crate) fn new(own: &[SocketAddr], upstreams: &[SocketAddr]) -> LoopGuard {
        LoopGuard {
            own: own.iter().copied().map(canonical).collect(),
            upstreams: upstreams.iter().copied().map(canonical).collect(),
        }
    }

    /// Whether `ip` is an address of this host, as far as can be told
    /// without a syscall: loopback, the address the datagram was sent to
    /// (`local`, from IP_PKTINFO on a wildcard listener), or an address a
    /// listener is bound to. A forged source naming another local address
    /// of a wildcard listener is caught one hop later: the reply to it
    /// reaches the listener from the address it was sent from.
    fn is_local(&self, ip: IpAddr, local: Option<IpAddr>) -> bool {
        ip.is_loopback()
            || local.is_some_and(|l| l.to_canonical() == ip)
            || self.own.iter().any(|a| a.ip() == ip)
    }

    /// Whether a `transparent = "tproxy"` session to `dst` would send its
    /// datagrams into one of this forwarder's own UDP listeners: `dst` is a
    /// listen address, or a wildcard listener's port on loopback, the
    /// unspecified address or one of the host's addresses (`host`, read by
    /// the control thread). A datagram sent straight to a TPROXY listener's
    /// own address has that address as its original destination.
    pub(crate) fn is_own_destination(&self, dst: SocketAddr, host: &[IpAddr]) -> bool {
        let dst = canonical(dst);
        self.own.iter().any(|a| {
            a.port() == dst.port()
                && (a.ip() == dst.ip()
                    || (a.ip().is_unspecified()
                        && (dst.ip().is_loopback()
                            || dst.ip().is_unspecified()
                            || host.iter().any(|h| h.to_canonical() == dst.ip()))))
        })
    }

    /// `Some` when a datagram from `src`, sent to `local`, would loop.
    pub(crate) fn check(&self, src: SocketAddr, local: Option<IpAddr>) -> Option<Loop> {
        let src = canonical(src);
        if self.upstreams.contains(&src) {
            return Some(Loop::Upstream);
        }
        let listener = self.own.iter().any(|a| {
            a.port() == src.port()
                && (a.ip() == src.ip()
                    || (a.ip().is_unspecified() && self.is_local(src.ip(), local)))
        });
        listener.then_some(Loop::Listener)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(s: &str) -> SocketAddr {
        s.parse().expect("addr")
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("ip")
    }

    #[test]
    fn a_source_equal_to_a_listen_address_is_a_loop() {
        let g = LoopGuard::new(&[a("127.0.0.1:8640"), a("127.0.0.1:53")], &[]);
        assert_eq!(g.check(a("127.0.0.1:8640"), None), Some(Loop::Listener));
        assert_eq!(
            g.check(a("127.0.0.1:53"), None),
            Some(Loop::Listener),
            "another listener of the same forwarder loops through it"
        );
        assert_eq!(g.check(a("127.0.0.1:8641"), None), None);
        assert_eq!(g.check(a("127.0.0.2:8640"), None), None, "another address");
    }

    #[test]
    fn a_wildcard_listener_owns_its_port_on_every_local_address() {
        let g = LoopGuard::new(&[a("0.0.0.0:8640")], &[]);
        assert_eq!(g.check(a("127.0.0.5:8640"), None), Some(Loop::Listener));
        assert_eq!(
            g.check(a("192.0.2.7:8640"), Some(ip("192.0.2.7"))),
            Some(Loop::Listener),
            "sent from the very address it was sent to"
        );
        assert_eq!(
            g.check(a("192.0.2.9:8640"), Some(ip("192.0.2.7"))),
            None,
            "a remote client that happens to use the same port"
        );
        let v6 = LoopGuard::new(&[a("[::]:8640")], &[]);
        assert_eq!(v6.check(a("[::1]:8640"), None), Some(Loop::Listener));
        assert_eq!(
            v6.check(a("[::ffff:127.0.0.1]:8640"), None),
            Some(Loop::Listener),
            "a v4 client of a dual-stack listener"
        );
    }

    #[test]
    fn a_source_equal_to_an_upstream_is_a_loop() {
        let g = LoopGuard::new(&[a("127.0.0.1:8640")], &[a("127.0.0.1:53")]);
        assert_eq!(g.check(a("127.0.0.1:53"), None), Some(Loop::Upstream));
        assert_eq!(
            g.check(a("[::ffff:127.0.0.1]:53"), None),
            Some(Loop::Upstream)
        );
        assert_eq!(g.check(a("127.0.0.1:54"), None), None);
    }

    #[test]
    fn a_tproxy_destination_among_the_listen_addresses_is_refused() {
        let g = LoopGuard::new(&[a("0.0.0.0:15353"), a("10.231.2.1:5300")], &[]);
        let host = [ip("10.231.1.1"), ip("10.231.2.1")];
        for own in [
            "10.231.2.1:5300",
            "127.0.0.1:15353",
            "0.0.0.0:15353",
            "10.231.1.1:15353",
            "[::ffff:10.231.1.1]:15353",
        ] {
            assert!(g.is_own_destination(a(own), &host), "{own}");
        }
        for elsewhere in ["10.231.2.2:15353", "10.231.2.1:53", "10.231.3.1:5300"] {
            assert!(!g.is_own_destination(a(elsewhere), &host), "{elsewhere}");
        }
    }
}
