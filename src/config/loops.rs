//! Forwarding loops: an upstream that is one of ringfwd's own listeners. One
//! connection to such a listener is forwarded to itself, and again, until
//! descriptors run out (one TCP connection cascaded into 985 held until
//! idle_timeout; one UDP datagram made 19,993 sessions). What the config alone
//! shows is rejected here; a wildcard listener reached through another
//! address of the host is a host fact, checked at start ([`local_loop`]).

use std::net::{IpAddr, SocketAddr};

use super::error::{ConfigError, Origin};
use super::forward::TcpKind;
use super::{Plan, Proto};

/// Whether a listener bound to `listen` receives what is sent to `upstream`,
/// judged from the addresses alone: the same address, or the same port on a
/// wildcard listener of the family when the upstream is loopback. Listeners
/// are IPV6_V6ONLY, so [::] never receives IPv4; an IPv4-mapped upstream is
/// compared as the IPv4 address it is sent to.
pub(super) fn reaches(listen: SocketAddr, upstream: SocketAddr) -> bool {
    let upstream = canonical(upstream);
    if listen.port() == 0 || listen.port() != upstream.port() {
        return false;
    }
    listen.ip() == upstream.ip()
        || (listen.ip().is_unspecified()
            && listen.is_ipv4() == upstream.is_ipv4()
            && (upstream.ip().is_loopback() || upstream.ip().is_unspecified()))
}

fn canonical(addr: SocketAddr) -> SocketAddr {
    SocketAddr::new(addr.ip().to_canonical(), addr.port())
}

/// Where a listener's listen address was given.
pub(super) struct ListenAt {
    pub proto: Proto,
    pub listen: SocketAddr,
    pub at: Origin,
}

/// Where a listener's upstreams were given: the `upstreams` key of a section,
/// or a `--tcp` / `--udp` flag.
pub(super) struct UpstreamsAt {
    pub proto: Proto,
    pub upstreams: Vec<SocketAddr>,
    pub at: UpstreamsKey,
}

pub(super) enum UpstreamsKey {
    /// `tcp[0].upstreams`: each upstream is `tcp[0].upstreams[i]`.
    Array(Origin),
    /// `--tcp[0]`: the upstreams are the part after `=`.
    Flag(Origin),
}

impl UpstreamsKey {
    /// The upstream's key and how a message starts naming it.
    fn name(&self, index: usize, upstream: SocketAddr) -> (Origin, String) {
        match self {
            UpstreamsKey::Array(o) => {
                let key = format!("{}[{index}]", o.key);
                let shown = format!("{key} = {upstream}");
                (Origin::new(&o.source, key), shown)
            }
            UpstreamsKey::Flag(o) => (o.clone(), format!("{} upstream {upstream}", o.key)),
        }
    }
}

/// How a message names a listen address given at `listen`.
fn listen_name(l: &ListenAt, from: &Origin) -> String {
    let described = l.at.describe_from(from);
    if l.at.key.ends_with(".listen") {
        format!("{described} ({})", l.listen)
    } else {
        format!("the listen address of {described} ({})", l.listen)
    }
}

fn what_loops(proto: Proto) -> &'static str {
    match proto {
        Proto::Tcp => "every connection to it would be forwarded back to ringfwd, again and again",
        Proto::Udp => "every datagram to it would be forwarded back to ringfwd, again and again",
    }
}

/// Rejects the first upstream that one of the same protocol's listeners
/// receives, naming the upstream's key and the listener's.
pub(super) fn reject_loops(
    listens: &[ListenAt],
    upstreams: &[UpstreamsAt],
) -> Result<(), ConfigError> {
    for group in upstreams {
        for (index, &upstream) in group.upstreams.iter().enumerate() {
            let hit = listens
                .iter()
                .filter(|l| l.proto == group.proto)
                .find(|l| reaches(l.listen, upstream));
            let Some(listener) = hit else { continue };
            let (origin, named) = group.at.name(index, upstream);
            let (verb, wildcard) = if canonical(upstream) == listener.listen {
                ("is", "")
            } else {
                ("reaches", ", which listens on every local address")
            };
            return Err(origin.error(format!(
                "{named} {verb} {}{wildcard}: a forwarding loop ({} until descriptors run out); \
                 point the upstream at the service ringfwd forwards to, on another port or host",
                listen_name(listener, &origin),
                what_loops(group.proto)
            )));
        }
    }
    Ok(())
}

/// An upstream that is another address of this host on the port of a
/// wildcard listener of the same protocol and family: found by
/// [`local_loop`], reported by the host checks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalLoop {
    pub proto: Proto,
    /// The listener whose upstream it is.
    pub upstream_of: String,
    pub upstream: SocketAddr,
    /// The wildcard listener that receives it.
    pub listener: String,
    pub listen: SocketAddr,
}

/// The first upstream in `plan` that a wildcard listener of the plan receives
/// because its address is one of this host's (`local`, from getifaddrs).
pub fn local_loop(plan: &Plan, local: &[IpAddr]) -> Option<LocalLoop> {
    // A proxy or transparent listener has no fixed destination to loop to:
    // the runtime loop guard checks each destination it is asked for.
    let listeners: Vec<(Proto, &String, SocketAddr)> = (plan.tcp.iter())
        .filter(|t| t.kind == TcpKind::Forward)
        .map(|t| (Proto::Tcp, &t.name, t.listen))
        .chain(plan.udp.iter().map(|u| (Proto::Udp, &u.name, u.listen)))
        .collect();
    for (proto, owner, upstream) in every_upstream(plan) {
        let up = canonical(upstream);
        if !local.iter().any(|ip| ip.to_canonical() == up.ip()) {
            continue;
        }
        let wildcard = listeners.iter().find(|&&(p, _, listen)| {
            p == proto
                && listen.ip().is_unspecified()
                && listen.port() != 0
                && listen.port() == up.port()
                && listen.is_ipv4() == up.is_ipv4()
        });
        if let Some(&(_, name, listen)) = wildcard {
            return Some(LocalLoop {
                proto,
                upstream_of: owner.clone(),
                upstream,
                listener: name.clone(),
                listen,
            });
        }
    }
    None
}

/// Every upstream of the plan with its listener: a TCP listener's own, then
/// its SNI routes', then each UDP listener's.
fn every_upstream(plan: &Plan) -> impl Iterator<Item = (Proto, &String, SocketAddr)> {
    let tcp = plan.tcp.iter().flat_map(|t| {
        let routes = t.sni.iter().flat_map(|sni| sni.routes.iter());
        (t.upstreams.iter())
            .chain(routes.flat_map(|route| route.upstreams.iter()))
            .map(move |&up| (Proto::Tcp, &t.name, up))
    });
    let udp = (plan.udp.iter())
        .flat_map(|u| u.upstreams.iter().map(move |&up| (Proto::Udp, &u.name, up)));
    tcp.chain(udp)
}
