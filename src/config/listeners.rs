//! Resolving `[[tcp]]` sections, `--tcp` specs and echo addresses into listener plans, and
//! checking that listen addresses and names are unique per protocol across all of them
//! (`[[udp]]` keys are read in `udp.rs`).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::ops::RangeInclusive;

use super::addr::parse_listen;
use super::balance;
use super::bandwidth;
use super::error::{ConfigError, Origin};
use super::forward::{TcpKind, TransparentMode, TransparentPlan};
use super::keys::timeout;
use super::loops::{ListenAt, UpstreamsAt, UpstreamsKey, reject_loops};
use super::raw::{Field, Section};
use super::section::{
    CONNECT_TIMEOUT, Claim, DEFAULT_MAX_CONNECTIONS, HALF_CLOSE_TIMEOUT, IDLE_TIMEOUT,
    max_connections, required, section_claim, split_spec,
};
use super::socks::{self, ProxyKind};
use super::udp::{file_udp_listener, flag_udp_listener};
use super::units::{format_size, parse_size};
use super::{
    EchoMode, EchoPlan, Overrides, Proto, SendProxy, SniPlan, TcpListenerPlan, UdpListenerPlan,
    health, limits, proxy, routes,
};

const KEYS: [&str; 19] = [
    "name",
    "transparent",
    "balance",
    "max_fails",
    "fail_timeout",
    "listen",
    "upstreams",
    "connect_timeout",
    "idle_timeout",
    "half_close_timeout",
    "max_connections",
    "send_proxy",
    "accept_proxy",
    "trusted_proxies",
    "proxy_timeout",
    "sni_timeout",
    "routes",
    "bandwidth_limit",
    "health_check",
];

const TCP_SOURCE: &str = "--tcp";
const ECHO_SOURCE: &str = "echo --tcp";
const ECHO_UDP_SOURCE: &str = "echo --udp";
const ECHO_SINK_SOURCE: &str = "echo --tcp-sink";
const ECHO_STREAM_SOURCE: &str = "echo --tcp-source";
const ECHO_RR_SOURCE: &str = "echo --tcp-rr";
/// Request and response sizes of `echo --tcp-rr`: 1 byte to 16 MiB.
const MESSAGE_SIZE: RangeInclusive<u64> = 1..=16 << 20;
const DEFAULT_MESSAGE_SIZE: u32 = 64;

pub(super) struct Listeners {
    pub tcp: Vec<TcpListenerPlan>,
    pub udp: Vec<UdpListenerPlan>,
    pub echo: Vec<EchoPlan>,
}

/// File listeners first, then `--tcp` / `--udp` flags, then echo addresses, each in the
/// order given.
pub(super) fn resolve(
    tcp: Option<Field<'_>>,
    udp: Option<Field<'_>>,
    proxies: Vec<(ProxyKind, Field<'_>)>,
    overrides: &Overrides,
    shards: usize,
) -> Result<Listeners, ConfigError> {
    let mut registry = Registry::default();
    let mut places = Places::default();
    let mut plans = Vec::new();
    if let Some(field) = tcp {
        for entry in field.array("[[tcp]], one section per listener")? {
            let section = entry.table("[[tcp]] with listen = \"...\" and upstreams = [...]")?;
            let ports = limits::port_tables(&section)?;
            for section in per_port(section, &ports) {
                let (plan, claim) = file_listener(&section, shards)?;
                // A transparent listener forwards nowhere fixed: its
                // destination is checked against ringfwd's own listeners
                // when it is known (the loop guard).
                if plan.kind == TcpKind::Forward {
                    let key = UpstreamsKey::Array(section.origin("upstreams"));
                    places.add(&claim, key, &plan.upstreams);
                    places.add_routes(&section, plan.sni.as_ref());
                }
                registry.claim(claim)?;
                plans.push(plan);
            }
        }
    }
    for (i, spec) in overrides.tcp.iter().enumerate() {
        let (plan, claim) = flag_listener(i, spec)?;
        places.add(
            &claim,
            UpstreamsKey::Flag(claim.listen_at.clone()),
            &plan.upstreams,
        );
        registry.claim(claim)?;
        plans.push(plan);
    }
    for (kind, field) in proxies {
        let name = kind.section();
        for entry in field.array(&format!("[[{name}]], one section per listener"))? {
            let section = entry.table(&format!("[[{name}]] with listen = \"127.0.0.1:1080\""))?;
            let (plan, claim) = socks::proxy_listener(&section, kind, shards)?;
            registry.claim(claim)?;
            plans.push(plan);
        }
    }
    let mut udp_plans = Vec::new();
    if let Some(field) = udp {
        for entry in field.array("[[udp]], one section per listener")? {
            let section = entry.table("[[udp]] with listen = \"...\" and upstreams = [...]")?;
            let ports = limits::port_tables(&section)?;
            for section in per_port(section, &ports) {
                let (plan, claim) = file_udp_listener(&section, shards)?;
                let key = UpstreamsKey::Array(section.origin("upstreams"));
                places.add(&claim, key, &plan.upstreams);
                registry.claim(claim)?;
                udp_plans.push(plan);
            }
        }
    }
    for (i, spec) in overrides.udp.iter().enumerate() {
        let (plan, claim) = flag_udp_listener(i, spec)?;
        places.add(
            &claim,
            UpstreamsKey::Flag(claim.listen_at.clone()),
            &plan.upstreams,
        );
        registry.claim(claim)?;
        udp_plans.push(plan);
    }
    reject_loops(&places.listens, &places.upstreams)?;
    let echo = echo_plans(overrides, &mut registry)?;
    Ok(Listeners {
        tcp: plans,
        udp: udp_plans,
        echo,
    })
}

/// The built-in servers of `ringfwd echo`, in the order given, each address
/// claimed in `registry` like a listener's.
fn echo_plans(
    overrides: &Overrides,
    registry: &mut Registry,
) -> Result<Vec<EchoPlan>, ConfigError> {
    let mut echo = Vec::new();
    let rr = EchoMode::RequestResponse {
        request: message_size("--request-size", overrides.echo_request_size.as_deref())?,
        response: message_size("--response-size", overrides.echo_response_size.as_deref())?,
    };
    let echo_specs = [
        (Proto::Tcp, EchoMode::Echo, ECHO_SOURCE, &overrides.echo),
        (
            Proto::Udp,
            EchoMode::Echo,
            ECHO_UDP_SOURCE,
            &overrides.echo_udp,
        ),
        (
            Proto::Tcp,
            EchoMode::Sink,
            ECHO_SINK_SOURCE,
            &overrides.echo_sink,
        ),
        (
            Proto::Tcp,
            EchoMode::Source,
            ECHO_STREAM_SOURCE,
            &overrides.echo_source,
        ),
        (Proto::Tcp, rr, ECHO_RR_SOURCE, &overrides.echo_rr),
    ];
    for (proto, mode, source, addresses) in echo_specs {
        for (i, address) in addresses.iter().enumerate() {
            let origin = Origin::new(source, format!("{source}[{i}]"));
            let listen = parse_listen(address).map_err(|why| origin.error(why))?;
            let name = address.trim().to_owned();
            // A port-0 address names no listener until the kernel picks the
            // port (the `listening` line tells them apart by kind and bound
            // address), so `--tcp-sink 127.0.0.1:0 --tcp-rr 127.0.0.1:0` is fine.
            if listen.port() != 0 {
                registry.claim(Claim::unnamed(proto, listen, &name, origin))?;
            }
            echo.push(EchoPlan {
                name,
                listen,
                proto,
                mode,
            });
        }
    }
    Ok(echo)
}

/// The section itself, or, for a port range, the section read once per
/// port's table (see `limits::port_tables`).
fn per_port<'a>(section: Section<'a>, ports: &'a [toml::Table]) -> Vec<Section<'a>> {
    if ports.is_empty() {
        return vec![section];
    }
    ports.iter().map(|t| section.with_table(t)).collect()
}

/// `echo --request-size` / `--response-size`: a size in bytes (units allowed), 1 to 16 MiB.
fn message_size(flag: &str, raw: Option<&str>) -> Result<u32, ConfigError> {
    let Some(raw) = raw else {
        return Ok(DEFAULT_MESSAGE_SIZE);
    };
    let origin = Origin::new("", format!("echo {flag}"));
    let example = format!("like {flag} 64 or {flag} 4KiB");
    let size = parse_size(raw).map_err(|why| origin.error(why))?;
    if !MESSAGE_SIZE.contains(&size) {
        return Err(origin.error(format!(
            "{raw:?} is out of range; use {} to {} bytes ({}), {example}",
            MESSAGE_SIZE.start(),
            MESSAGE_SIZE.end(),
            format_size(*MESSAGE_SIZE.end())
        )));
    }
    u32::try_from(size).map_err(|_| origin.error(format!("{raw:?} is too large, {example}")))
}

fn file_listener(
    section: &Section<'_>,
    shards: usize,
) -> Result<(TcpListenerPlan, Claim), ConfigError> {
    let keys: Vec<&str> = (KEYS.iter())
        .chain(&limits::TCP_KEYS)
        .chain(&socks::POLICY_KEYS)
        .chain(&socks::MPTCP_KEYS)
        .copied()
        .collect();
    section.deny_unknown(&keys, "in [[tcp]]")?;
    let kind = tcp_kind(section)?;
    let claim = section_claim(section, Proto::Tcp)?;
    let pool = match kind {
        TcpKind::Forward => balance::pool(&required(
            section,
            Proto::Tcp,
            "upstreams",
            "upstreams = [\"10.0.0.5:80\"] (or transparent = \"redirect\" to forward each \
             connection to the address its client dialled)",
        )?)?,
        _ => balance::Pool {
            upstreams: Vec::new(),
            weights: Vec::new(),
        },
    };
    let max_connections = section.get("max_connections");
    let plan = TcpListenerPlan {
        name: claim.name.clone(),
        listen: claim.listen,
        upstreams: pool.upstreams,
        weights: pool.weights,
        balance: balance::balance(section)?,
        passive: balance::passive(section)?,
        connect_timeout: timeout(section, &CONNECT_TIMEOUT)?,
        idle_timeout: timeout(section, &IDLE_TIMEOUT)?,
        half_close_timeout: timeout(section, &HALF_CLOSE_TIMEOUT)?,
        max_connections_given: super::LimitSource::of(&max_connections),
        max_connections: self::max_connections(max_connections, shards)?,
        send_proxy: proxy::send_proxy(section.get("send_proxy"))?,
        accept_proxy: proxy::accept_proxy(section)?,
        sni: routes::sni(section)?,
        limits: limits::tcp_limits(section, shards)?,
        bandwidth_limit: bandwidth::bandwidth_limit(section)?,
        health_check: health::health_check(section)?,
        kind,
        mptcp: socks::mptcp(section)?,
        upstream_mptcp: socks::upstream_mptcp(section)?,
    };
    Ok((plan, claim))
}

/// Keys about a pool of upstreams, which a transparent listener has none of.
const NOT_TRANSPARENT: [&str; 7] = [
    "upstreams",
    "routes",
    "balance",
    "max_fails",
    "fail_timeout",
    "health_check",
    "accept_proxy",
];

/// `transparent = "redirect" | "tproxy"` and the keys it allows and forbids;
/// without it, `Forward`, and the destination policy keys are refused.
fn tcp_kind(section: &Section<'_>) -> Result<TcpKind, ConfigError> {
    let example = "transparent = \"redirect\" (or \"tproxy\")";
    let Some(field) = section.get("transparent") else {
        if let Some(key) = socks::POLICY_KEYS.iter().find_map(|k| section.get(k)) {
            return Err(key.error(
                "bounds where a transparent listener's clients may go, and this [[tcp]] \
                 listener is not transparent (its connections go to its upstreams); remove it, \
                 or set transparent = \"redirect\" or \"tproxy\"",
            ));
        }
        return Ok(TcpKind::Forward);
    };
    let mode = match field.string(example)?.trim() {
        "redirect" => TransparentMode::Redirect,
        "tproxy" => TransparentMode::Tproxy,
        _ => {
            return Err(field.error(format!(
                "{} is not a transparent mode; use \"redirect\" (iptables/nftables REDIRECT: \
                 the destination is SO_ORIGINAL_DST) or \"tproxy\" (TPROXY: the destination \
                 is the address the client dialled), like {example}",
                field.shown()
            )));
        }
    };
    super::section::refuse_upstream_keys(
        section,
        &NOT_TRANSPARENT,
        "each connection goes to the address its client dialled",
    )?;
    let policy = socks::destination_policy(section, Vec::new())?;
    Ok(TcpKind::Transparent(TransparentPlan { mode, policy }))
}

/// `--tcp LISTEN=UP1[,UP2...]`: a listener with default timeouts and limits, named after LISTEN.
fn flag_listener(index: usize, spec: &str) -> Result<(TcpListenerPlan, Claim), ConfigError> {
    let origin = Origin::new(TCP_SOURCE, format!("{TCP_SOURCE}[{index}]"));
    let (listen, upstreams, listen_text) = split_spec(spec, &origin)?;
    let claim = Claim::unnamed(Proto::Tcp, listen, &listen_text, origin);
    let plan = TcpListenerPlan {
        name: claim.name.clone(),
        listen,
        weights: vec![1; upstreams.len()],
        upstreams,
        balance: super::Balance::default(),
        passive: super::PassiveHealth::default(),
        connect_timeout: CONNECT_TIMEOUT.default,
        idle_timeout: IDLE_TIMEOUT.default,
        half_close_timeout: HALF_CLOSE_TIMEOUT.default,
        max_connections: DEFAULT_MAX_CONNECTIONS,
        max_connections_given: super::LimitSource::Default,
        send_proxy: SendProxy::Off,
        accept_proxy: None,
        sni: None,
        limits: super::TcpLimits::default(),
        bandwidth_limit: None,
        health_check: None,
        kind: super::forward::TcpKind::Forward,
        mptcp: super::forward::Mptcp::Off,
        upstream_mptcp: false,
    };
    Ok((plan, claim))
}

/// Where every forwarding listener's address and upstreams were given, for
/// the forwarding-loop check.
#[derive(Default)]
struct Places {
    listens: Vec<ListenAt>,
    upstreams: Vec<UpstreamsAt>,
}

impl Places {
    fn add(&mut self, claim: &Claim, key: UpstreamsKey, upstreams: &[SocketAddr]) {
        self.listens.push(ListenAt {
            proto: claim.proto,
            listen: claim.listen,
            at: claim.listen_at.clone(),
        });
        self.upstreams.push(UpstreamsAt {
            proto: claim.proto,
            upstreams: upstreams.to_vec(),
            at: key,
        });
    }

    /// Each route's upstreams, checked for loops like the listener's own.
    fn add_routes(&mut self, section: &Section<'_>, sni: Option<&SniPlan>) {
        let routes_at = section.origin("routes");
        for (i, route) in sni.iter().flat_map(|sni| sni.routes.iter()).enumerate() {
            let at = Origin::new(
                &routes_at.source,
                format!("{}[{i}].upstreams", routes_at.key),
            );
            self.upstreams.push(UpstreamsAt {
                proto: Proto::Tcp,
                upstreams: route.upstreams.clone(),
                at: UpstreamsKey::Array(at),
            });
        }
    }
}

/// Listen addresses and names taken so far, per protocol (a TCP and a UDP listener may share
/// a port and a name, as the kernel keeps them apart), with where they were taken.
#[derive(Default)]
struct Registry {
    listens: HashMap<(Proto, SocketAddr), Origin>,
    names: HashMap<(Proto, String), Origin>,
}

impl Registry {
    fn claim(&mut self, claim: Claim) -> Result<(), ConfigError> {
        // Port 0 asks the kernel for a fresh port, so two of them never collide.
        let taken = self.listens.get(&(claim.proto, claim.listen));
        if let Some(previous) = taken.filter(|_| claim.listen.port() != 0) {
            return Err(claim.listen_at.error(format!(
                "{} is already used by {}; each listener needs its own address",
                claim.listen,
                previous.describe_from(&claim.listen_at)
            )));
        }
        let name_key = (claim.proto, claim.name);
        if let Some(previous) = self.names.get(&name_key) {
            let previous = previous.describe_from(&claim.name_at);
            let name = &name_key.1;
            let message = if claim.name_given {
                format!("{name:?} is already used by {previous}; give each listener its own name")
            } else {
                format!(
                    "the default name {name:?} (taken from the listen address) is already used \
                     by {previous}; rename one of them"
                )
            };
            return Err(claim.name_at.error(message));
        }
        self.listens
            .insert((claim.proto, claim.listen), claim.listen_at);
        self.names.insert(name_key, claim.name_at);
        Ok(())
    }
}
