//! What each shard is built from, as the plan says it: the listener specs
//! (with the sockets bound or inherited for them), the route tables and the
//! `Bound` lines `run` prints. Shared by start-up and a SIGHUP reload, so a
//! listener is the same spec whichever built it.

use std::net::SocketAddr;
use std::os::fd::OwnedFd;

use super::stream::{Fallbacks, upstream_proto};
use super::{Bound, Groups, forward_routes, session_buffer};
use crate::config::forward::TcpKind;
use crate::config::{
    EchoMode, EchoPlan, Plan, Proto, TcpListenerPlan, UdpListenerPlan, UdpSendProxy,
};
use crate::shard::engine::{FrontSpec, ListenerKind, ListenerSpec, RouteSpec};
use crate::shard::udp::{TproxySpec, UdpKind, UdpListenerSpec, UdpRouteSpec};
use crate::sys::host::HostError;
use crate::time::millis;

/// The TCP service's listener kind of an echo listener.
pub(super) fn echo_kind(mode: EchoMode) -> ListenerKind {
    match mode {
        EchoMode::Echo => ListenerKind::Echo,
        EchoMode::Sink => ListenerKind::EchoSink,
        EchoMode::Source => ListenerKind::EchoSource,
        EchoMode::RequestResponse { request, response } => {
            ListenerKind::EchoRr { request, response }
        }
    }
}

/// Shard `shard`'s (of `n`) spec of forward listener `t` (fd not set yet):
/// its shares of `max_connections` and of the listener's connection rate.
pub(super) fn forward_spec(
    t: &TcpListenerPlan,
    route: u16,
    front: &FrontSpec,
    shard: usize,
    n: usize,
) -> ListenerSpec {
    let mut front = front.clone();
    front.gate.rates.per_listener = t.limits.rate_share(shard, n);
    ListenerSpec {
        name: t.name.clone(),
        fd: -1,
        kind: ListenerKind::Forward { route },
        limit: t.shard_share(shard, n),
        front,
    }
}

/// A TCP echo listener's spec (the same on every shard; fd not set yet).
pub(super) fn echo_spec(e: &EchoPlan) -> ListenerSpec {
    ListenerSpec {
        name: e.name.clone(),
        fd: -1,
        kind: echo_kind(e.mode),
        limit: u32::MAX,
        front: FrontSpec::default(),
    }
}

/// Every shard's listeners and routes, and the `Bound` lines.
pub(super) struct ShardInputs {
    /// Per shard: its TCP listeners with their sockets.
    pub tcp: Vec<Vec<(ListenerSpec, OwnedFd)>>,
    pub routes: Vec<RouteSpec>,
    /// Per shard: its UDP listeners with their sockets, and whether each
    /// listens on a wildcard address.
    pub udp: Vec<Vec<(UdpListenerSpec, OwnedFd, bool)>>,
    pub udp_routes: Vec<UdpRouteSpec>,
    pub bound: Vec<Bound>,
    /// Listeners and upstream sockets that fell back from MPTCP to TCP.
    pub mptcp_fallback: Fallbacks,
}

impl ShardInputs {
    /// The inputs for `plan`, on the sockets of `groups` (bound in
    /// `bind_groups`' order).
    pub(super) fn of(plan: &Plan, groups: Groups) -> Result<ShardInputs, HostError> {
        let n = plan.runtime.shards;
        let mut inputs = ShardInputs {
            tcp: (0..n).map(|_| Vec::new()).collect(),
            routes: Vec::new(),
            udp: (0..n).map(|_| Vec::new()).collect(),
            udp_routes: Vec::new(),
            bound: Vec::new(),
            mptcp_fallback: groups.mptcp_fallback,
        };
        let guard = super::loop_guard(plan);
        for (t, (fds, addr)) in plan.tcp.iter().zip(groups.tcp) {
            let upstream = upstream_proto(t, &mut inputs.mptcp_fallback);
            let access_log = plan.log.access.is_some();
            let (route, front) =
                forward_routes(t, &mut inputs.routes, access_log, &guard, upstream)?;
            for (shard, fd) in fds.into_iter().enumerate() {
                if let Some(l) = inputs.tcp.get_mut(shard) {
                    l.push((forward_spec(t, route, &front, shard, n), fd));
                }
            }
            inputs.bound("tcp", &t.name, addr, t.upstreams.clone());
        }
        for ((i, u), (fds, addr)) in plan.udp.iter().enumerate().zip(groups.udp) {
            let route = u16::try_from(i).map_err(|_| HostError::Bind {
                what: format!("udp listener '{}'", u.name),
                addr: u.listen,
                error: "more than 65535 listeners".into(),
            })?;
            inputs.udp_routes.push(udp_route(u));
            session_buffer(u);
            let kind = UdpKind::Forward { route };
            let wildcard = u.listen.ip().is_unspecified();
            for (shard, fd) in fds.into_iter().enumerate() {
                let spec = udp_spec(&u.name, kind, u.shard_share(shard, n), addr);
                inputs.udp_listener(shard, spec, fd, wildcard);
            }
            inputs.bound("udp", &u.name, addr, u.upstreams.clone());
        }
        let udp_echo = plan.echo.iter().filter(|e| e.proto == Proto::Udp);
        for (e, (fds, addr)) in udp_echo.zip(groups.udp_echo) {
            let wildcard = e.listen.ip().is_unspecified();
            for (shard, fd) in fds.into_iter().enumerate() {
                let spec = udp_spec(&e.name, UdpKind::Echo, u32::MAX, addr);
                inputs.udp_listener(shard, spec, fd, wildcard);
            }
            inputs.bound("udp-echo", &e.name, addr, Vec::new());
        }
        let tcp_echo = plan.echo.iter().filter(|e| e.proto == Proto::Tcp);
        for (e, (fds, addr)) in tcp_echo.zip(groups.tcp_echo) {
            for (shard, fd) in fds.into_iter().enumerate() {
                if let Some(l) = inputs.tcp.get_mut(shard) {
                    l.push((echo_spec(e), fd));
                }
            }
            inputs.bound(e.mode.kind(), &e.name, addr, Vec::new());
        }
        Ok(inputs)
    }

    fn bound(&mut self, kind: &'static str, name: &str, addr: SocketAddr, ups: Vec<SocketAddr>) {
        self.bound.push(Bound {
            kind,
            name: name.to_owned(),
            addr,
            upstreams: ups,
        });
    }

    fn udp_listener(&mut self, shard: usize, spec: UdpListenerSpec, fd: OwnedFd, wildcard: bool) {
        if let Some(l) = self.udp.get_mut(shard) {
            l.push((spec, fd, wildcard));
        }
    }
}

/// A `[[udp]]` listener's route.
pub(super) fn udp_route(u: &UdpListenerPlan) -> UdpRouteSpec {
    UdpRouteSpec {
        upstreams: u.upstreams.clone(),
        weights: u.weights.clone(),
        balance: u.balance,
        passive: u.passive,
        session_rcvbuf: u.session_rcvbuf,
        send_proxy: u.send_proxy == UdpSendProxy::V2,
        idle_ms: millis(u.idle_timeout),
        max_responses: u.max_responses,
        new_sessions_per_second_per_source: u.new_sessions_per_second_per_source,
        allow: u.allow.clone(),
        deny: u.deny.clone(),
        transparent: u.transparent.as_ref().map(|t| TproxySpec {
            policy: t.policy.clone(),
            reply_sockets: t.reply_sockets,
            // For the loop guard of a wildcard listener; read only here,
            // at start and reload.
            host: crate::sys::host::local_addresses(),
        }),
    }
}

/// Each shard's UDP listener specs (forwarding, then echo; fd not set, and
/// `listen` the configured address until bound) and their routes, as
/// `ShardInputs::of` builds them: what a reload hands the shards.
pub(super) fn udp_specs(plan: &Plan, n: usize) -> (Vec<Vec<UdpListenerSpec>>, Vec<UdpRouteSpec>) {
    let mut specs: Vec<Vec<UdpListenerSpec>> = (0..n).map(|_| Vec::new()).collect();
    let mut routes = Vec::new();
    for (i, u) in plan.udp.iter().enumerate() {
        // Validation caps the listeners far below 65536.
        let route = u16::try_from(i).unwrap_or(u16::MAX);
        routes.push(udp_route(u));
        for (shard, list) in specs.iter_mut().enumerate() {
            let kind = UdpKind::Forward { route };
            list.push(udp_spec(&u.name, kind, u.shard_share(shard, n), u.listen));
        }
    }
    for e in plan.echo.iter().filter(|e| e.proto == Proto::Udp) {
        for list in &mut specs {
            list.push(udp_spec(&e.name, UdpKind::Echo, u32::MAX, e.listen));
        }
    }
    (specs, routes)
}

/// A UDP listener's spec on one shard (fd not set yet).
fn udp_spec(name: &str, kind: UdpKind, limit: u32, listen: SocketAddr) -> UdpListenerSpec {
    UdpListenerSpec {
        name: name.to_owned(),
        fd: -1,
        kind,
        limit,
        listen,
    }
}

/// Where the nameservers come from when `[runtime] resolver` is not set.
const RESOLV_CONF: &str = "/etc/resolv.conf";
/// Static names, looked up before any query.
const HOSTS: &str = "/etc/hosts";

/// The shards' resolver settings: the plan's keys, with /etc/hosts and
/// (unless `resolver` names them) /etc/resolv.conf's nameservers read now —
/// at start and on each reload, never by a shard. A file that cannot be
/// read counts as empty; that is a warning only when a listener lets
/// clients name destinations (a plain forwarder never resolves a name).
pub(super) fn resolver_config(plan: &Plan) -> crate::dns::ResolverConfig {
    let r = &plan.runtime.resolver;
    let names = needs_names(plan);
    let nameservers = match &r.nameservers {
        Some(list) => list.clone(),
        None => crate::dns::parse_resolv_conf(&read_file(
            RESOLV_CONF,
            names,
            "no nameserver: destination names cannot be resolved; set [runtime] resolver",
        )),
    };
    let hosts = crate::dns::Hosts::parse(&read_file(
        HOSTS,
        names,
        "names are resolved by the nameservers only",
    ));
    tracing::debug!(?nameservers, hosts = hosts.len(), "resolver settings");
    crate::dns::ResolverConfig {
        nameservers,
        timeout: millis(r.timeout),
        attempts: r.attempts,
        prefer: r.prefer,
        hosts,
        ..crate::dns::ResolverConfig::default()
    }
}

/// Whether a listener lets its clients name a destination.
fn needs_names(plan: &Plan) -> bool {
    plan.tcp
        .iter()
        .any(|t| matches!(t.kind, TcpKind::Socks5(_) | TcpKind::HttpConnect(_)))
}

fn read_file(path: &str, warn: bool, consequence: &str) -> String {
    match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if warn => {
            tracing::warn!("reading {path} failed: {e}; {consequence}");
            String::new()
        }
        Err(e) => {
            tracing::debug!("reading {path} failed: {e}; no listener resolves names");
            String::new()
        }
    }
}
