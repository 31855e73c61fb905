//! The `ringfwd check` view of a [`Plan`]: every resolved value in TOML-like form, in human
//! units, with derived numbers (queue sizes, buffer memory, per-shard limits) as comments.
//!
//! A plan with only `[[tcp]]`, `[[socks5]]` and `[[http_connect]]` listeners prints as TOML
//! that resolves back to the same plan on the same host, so the output can be used as a
//! starting config (except for users given inline: their passwords are never printed).

use std::fmt::{self, Display, Formatter};

use super::bandwidth::format_rate;
use super::cidr::Cidr;
use super::forward::{DestinationPolicy, ProxyPlan, TcpKind, TransparentPlan};
use super::socks;
use super::units::{format_duration, format_size};
use super::{
    AcceptProxy, AccessTarget, AdminPlan, Balance, EchoMode, EchoPlan, LogPlan, PassiveHealth,
    Plan, Proto, RuntimePlan, SniPlan, SpliceMode, TcpLimits, TcpListenerPlan, UdpListenerPlan,
};

/// Pretty resolved plan for `ringfwd check`: every value with defaults filled in, in TOML-like
/// form, sizes and durations in human units, plus each tcp listener's per-shard
/// `max_connections` share.
impl Display for Plan {
    fn fmt(&self, f: &mut Formatter<'_>) -> fmt::Result {
        write_runtime(f, &self.runtime, self.has_udp())?;
        writeln!(f)?;
        write_log(f, &self.log)?;
        writeln!(f)?;
        write_admin(f, self.admin.as_ref())?;
        for tcp in &self.tcp {
            writeln!(f)?;
            write_tcp(f, tcp, self.runtime.shards)?;
        }
        for udp in &self.udp {
            writeln!(f)?;
            write_udp(f, udp, self.runtime.shards)?;
        }
        for echo in &self.echo {
            writeln!(f)?;
            write_echo(f, echo)?;
        }
        Ok(())
    }
}

fn write_runtime(f: &mut Formatter<'_>, runtime: &RuntimePlan, udp: bool) -> fmt::Result {
    let per_shard = u64::from(runtime.buffer_size) * u64::from(runtime.buffers_per_shard);
    let total = u64::try_from(runtime.shards).map_or(u64::MAX, |n| per_shard.saturating_mul(n));
    writeln!(f, "[runtime]")?;
    writeln!(f, "shards = {}", runtime.shards)?;
    writeln!(f, "cpus = {:?}", runtime.cpus)?;
    writeln!(
        f,
        "buffer_size = \"{}\"",
        format_size(runtime.buffer_size.into())
    )?;
    writeln!(f, "buffers_per_shard = {}", runtime.buffers_per_shard)?;
    writeln!(
        f,
        "buffers_per_direction = {}",
        runtime.buffers_per_direction
    )?;
    writeln!(
        f,
        "ring_entries = {}  # completion queue: {} entries",
        runtime.ring_entries,
        runtime.ring_entries.saturating_mul(8)
    )?;
    writeln!(
        f,
        "drain_timeout = \"{}\"",
        format_duration(runtime.drain_timeout)
    )?;
    let stats = runtime
        .stats_interval
        .map_or_else(|| "off".to_owned(), format_duration);
    writeln!(f, "stats_interval = \"{stats}\"")?;
    let spin = runtime
        .busy_poll
        .map_or_else(|| "off".to_owned(), format_duration);
    writeln!(f, "busy_poll = \"{spin}\"")?;
    writeln!(f, "splice = \"{}\"", runtime.splice.name())?;
    if runtime.splice == SpliceMode::Off {
        writeln!(
            f,
            "max_pipes = {}  # unused: splice is off",
            runtime.max_pipes
        )?;
    } else {
        let shards = u64::try_from(runtime.shards).unwrap_or(u64::MAX);
        writeln!(
            f,
            "max_pipes = {}  # per shard: {} descriptors; {} pipes in total",
            runtime.max_pipes,
            u64::from(runtime.max_pipes) * 2,
            u64::from(runtime.max_pipes).saturating_mul(shards)
        )?;
    }
    writeln!(
        f,
        "pipe_size = \"{}\"  # capped by fs.pipe-max-size without CAP_SYS_RESOURCE",
        format_size(runtime.pipe_size.into())
    )?;
    writeln!(f, "max_datagram = {}", runtime.max_datagram)?;
    if let Some(path) = &runtime.pid_file {
        writeln!(f, "pid_file = {:?}", path.display().to_string())?;
    }
    render_resolver(f, &runtime.resolver)?;
    writeln!(
        f,
        "udp_buffers_per_shard = {}  # allocated only with a UDP listener",
        runtime.udp_buffers_per_shard
    )?;
    writeln!(
        f,
        "# receive buffers: {} per shard, {} in total",
        format_size(per_shard),
        format_size(total)
    )?;
    if udp {
        let each = crate::ring::datagram::buffer_size(runtime.max_datagram);
        let per_shard = u64::from(each) * u64::from(runtime.udp_buffers_per_shard);
        let total = u64::try_from(runtime.shards).map_or(u64::MAX, |n| per_shard.saturating_mul(n));
        writeln!(
            f,
            "# datagram buffers: {} x {} = {} per shard, {} in total",
            runtime.udp_buffers_per_shard,
            format_size(each.into()),
            format_size(per_shard),
            format_size(total)
        )?;
    }
    Ok(())
}

fn write_tcp(f: &mut Formatter<'_>, tcp: &TcpListenerPlan, shards: usize) -> fmt::Result {
    match &tcp.kind {
        TcpKind::Forward => write_forward(f, tcp, shards),
        TcpKind::Transparent(transparent) => write_transparent(f, tcp, transparent, shards),
        TcpKind::Socks5(proxy) | TcpKind::HttpConnect(proxy) => write_proxy(f, tcp, proxy, shards),
    }
}

fn write_forward(f: &mut Formatter<'_>, tcp: &TcpListenerPlan, shards: usize) -> fmt::Result {
    write_head(f, "tcp", tcp)?;
    write_pool(f, &tcp.upstreams, &tcp.weights, tcp.balance, tcp.passive)?;
    write_connections(f, tcp, shards)?;
    write_transfer(f, tcp)?;
    writeln!(f, "{}", super::health::render(tcp.health_check.as_ref()))?;
    writeln!(f, "send_proxy = \"{}\"", tcp.send_proxy.name())?;
    write_accept_proxy(f, tcp.accept_proxy.as_ref())?;
    write_sni(f, tcp.sni.as_ref())
}

fn write_transparent(
    f: &mut Formatter<'_>,
    tcp: &TcpListenerPlan,
    transparent: &TransparentPlan,
    shards: usize,
) -> fmt::Result {
    write_head(f, "tcp", tcp)?;
    writeln!(
        f,
        "transparent = \"{}\"  # each connection goes where its client dialled",
        transparent.mode.name()
    )?;
    write_connections(f, tcp, shards)?;
    writeln!(f, "send_proxy = \"{}\"", tcp.send_proxy.name())?;
    write_transfer(f, tcp)?;
    write_policy(f, &transparent.policy)
}

fn write_proxy(
    f: &mut Formatter<'_>,
    tcp: &TcpListenerPlan,
    proxy: &ProxyPlan,
    shards: usize,
) -> fmt::Result {
    write_head(f, tcp.kind.name(), tcp)?;
    writeln!(f, "{}", socks::describe_users(&proxy.users))?;
    let open = !tcp.listen.ip().is_loopback()
        && proxy.users.is_empty()
        && tcp.limits.access.allow.is_empty();
    if open {
        writeln!(
            f,
            "open = true  # no users and no client allow list on a non-loopback address"
        )?;
    }
    writeln!(
        f,
        "header_timeout = \"{}\"",
        format_duration(proxy.header_timeout)
    )?;
    if let TcpKind::Socks5(_) = tcp.kind {
        match proxy.udp_idle {
            Some(idle) => {
                writeln!(f, "udp = true")?;
                writeln!(f, "udp_idle_timeout = \"{}\"", format_duration(idle))?;
            }
            None => writeln!(f, "udp = false")?,
        }
    }
    write_connections(f, tcp, shards)?;
    write_transfer(f, tcp)?;
    write_policy(f, &proxy.policy)
}

/// `[[SECTION]]`, `name` and `listen`.
fn write_head(f: &mut Formatter<'_>, section: &str, tcp: &TcpListenerPlan) -> fmt::Result {
    writeln!(f, "[[{section}]]")?;
    writeln!(f, "name = {:?}", tcp.name)?;
    writeln!(f, "listen = \"{}\"", tcp.listen)
}

/// The timeouts and the limits on who connects and how many.
fn write_connections(f: &mut Formatter<'_>, tcp: &TcpListenerPlan, shards: usize) -> fmt::Result {
    writeln!(
        f,
        "connect_timeout = \"{}\"",
        format_duration(tcp.connect_timeout)
    )?;
    writeln!(
        f,
        "idle_timeout = \"{}\"",
        format_duration(tcp.idle_timeout)
    )?;
    writeln!(
        f,
        "half_close_timeout = \"{}\"",
        format_duration(tcp.half_close_timeout)
    )?;
    writeln!(
        f,
        "{}max_connections = {}  # per shard: {}",
        default_mark(tcp.max_connections_given),
        tcp.max_connections,
        share_summary(|shard| tcp.shard_share(shard, shards), shards)
    )?;
    write_tcp_limits(f, &tcp.limits, shards)
}

/// `bandwidth_limit`, `mptcp` and `upstream_mptcp`.
fn write_transfer(f: &mut Formatter<'_>, tcp: &TcpListenerPlan) -> fmt::Result {
    if let Some(rate) = tcp.bandwidth_limit {
        writeln!(f, "bandwidth_limit = \"{}\"", format_rate(rate))?;
    }
    writeln!(f, "mptcp = {}", socks::describe_mptcp(tcp.mptcp))?;
    writeln!(f, "upstream_mptcp = {}", tcp.upstream_mptcp)
}

fn write_policy(f: &mut Formatter<'_>, policy: &DestinationPolicy) -> fmt::Result {
    write_ranges(
        f,
        "destinations_allow",
        &policy.allow,
        "every destination not denied",
    )?;
    writeln!(f, "destinations_deny = {}", quoted_list(&policy.deny))?;
    if policy.ports.is_empty() {
        writeln!(f, "# ports: unset (every port)")
    } else {
        writeln!(f, "ports = {}", socks::describe_ports(&policy.ports))
    }
}

fn write_tcp_limits(f: &mut Formatter<'_>, limits: &TcpLimits, shards: usize) -> fmt::Result {
    write_ranges(f, "allow", &limits.access.allow, "every client")?;
    write_ranges(f, "deny", &limits.access.deny, "nobody kept out")?;
    match limits.new_connections_per_second {
        Some(n) => writeln!(
            f,
            "new_connections_per_second = {n}  # per shard: {}",
            share_summary(
                |shard| limits.rate_share(shard, shards).unwrap_or(0),
                shards
            )
        )?,
        None => writeln!(f, "# new_connections_per_second: unset (no rate limit)")?,
    }
    match limits.new_connections_per_second_per_source {
        Some(n) => writeln!(
            f,
            "new_connections_per_second_per_source = {n}  # enforced by each shard"
        ),
        None => writeln!(
            f,
            "# new_connections_per_second_per_source: unset (no rate limit)"
        ),
    }
}

fn write_ranges(f: &mut Formatter<'_>, key: &str, ranges: &[Cidr], unset: &str) -> fmt::Result {
    if ranges.is_empty() {
        writeln!(f, "# {key}: unset ({unset})")
    } else {
        writeln!(f, "{key} = {}", quoted_list(ranges))
    }
}

/// `upstreams` (a weight shown where it is not 1), `balance` and passive health.
fn write_pool(
    f: &mut Formatter<'_>,
    upstreams: &[std::net::SocketAddr],
    weights: &[u32],
    balance: Balance,
    passive: PassiveHealth,
) -> fmt::Result {
    let entries =
        upstreams
            .iter()
            .enumerate()
            .map(|(i, up)| match weights.get(i).copied().unwrap_or(1) {
                1 => up.to_string(),
                w => format!("{up} weight={w}"),
            });
    writeln!(f, "upstreams = {}", quoted_list(entries))?;
    writeln!(f, "balance = \"{}\"", balance.name())?;
    let off = if passive.max_fails == 0 {
        "  # passive health off"
    } else {
        ""
    };
    writeln!(f, "max_fails = {}{off}", passive.max_fails)?;
    writeln!(
        f,
        "fail_timeout = \"{}\"",
        format_duration(passive.fail_timeout)
    )
}

fn quoted_list(items: impl IntoIterator<Item = impl Display>) -> String {
    let quoted: Vec<String> = items.into_iter().map(|i| format!("\"{i}\"")).collect();
    format!("[{}]", quoted.join(", "))
}

fn write_accept_proxy(f: &mut Formatter<'_>, accept: Option<&AcceptProxy>) -> fmt::Result {
    let Some(accept) = accept else {
        return writeln!(f, "accept_proxy = false");
    };
    writeln!(f, "accept_proxy = true")?;
    writeln!(f, "trusted_proxies = {}", quoted_list(&accept.trusted))?;
    writeln!(f, "proxy_timeout = \"{}\"", format_duration(accept.timeout))
}

/// Last in the listener: each `[[tcp.routes]]` header ends the listener's own keys.
fn write_sni(f: &mut Formatter<'_>, sni: Option<&SniPlan>) -> fmt::Result {
    let Some(sni) = sni else {
        return writeln!(f, "# routes: none (every connection goes to upstreams)");
    };
    writeln!(f, "sni_timeout = \"{}\"", format_duration(sni.timeout))?;
    for route in &sni.routes {
        writeln!(f, "[[tcp.routes]]")?;
        writeln!(f, "sni = {}", quoted_list(&route.names))?;
        if route.health_check.is_some() {
            writeln!(f, "{}", super::health::render(route.health_check.as_ref()))?;
        }
        write_pool(
            f,
            &route.upstreams,
            &route.weights,
            route.balance,
            route.passive,
        )?;
    }
    Ok(())
}

fn write_admin(f: &mut Formatter<'_>, admin: Option<&AdminPlan>) -> fmt::Result {
    let Some(admin) = admin else {
        return writeln!(f, "# [admin]: unset (no admin endpoint)");
    };
    writeln!(f, "[admin]")?;
    writeln!(f, "listen = \"{}\"", admin.listen)
}

fn write_log(f: &mut Formatter<'_>, log: &LogPlan) -> fmt::Result {
    writeln!(f, "[log]")?;
    let Some(access) = &log.access else {
        return writeln!(f, "# access: unset (no access log)");
    };
    match &access.target {
        AccessTarget::Stdout => writeln!(f, "access = \"stdout\"")?,
        AccessTarget::Stderr => writeln!(f, "access = \"stderr\"")?,
        AccessTarget::File(path) => {
            // TOML's own quoting: Rust's `{:?}` escapes control characters
            // in a form TOML does not read back.
            let text = toml::Value::String(path.display().to_string());
            writeln!(f, "access = {text}")?;
        }
    }
    writeln!(f, "format = \"{}\"", access.format.name())
}

/// A defaulted limit is shown commented out, so the shown plan reads back
/// as the same plan (a configured limit warns when the descriptor limit
/// cannot meet it; a default is only capped).
fn default_mark(given: super::LimitSource) -> &'static str {
    match given {
        super::LimitSource::Explicit => "",
        super::LimitSource::Default => "# (default) ",
    }
}

fn write_udp(f: &mut Formatter<'_>, udp: &UdpListenerPlan, shards: usize) -> fmt::Result {
    writeln!(f, "[[udp]]")?;
    writeln!(f, "name = {:?}", udp.name)?;
    writeln!(f, "listen = \"{}\"", udp.listen)?;
    match &udp.transparent {
        Some(t) => write_udp_transparent(f, t)?,
        None => write_pool(f, &udp.upstreams, &udp.weights, udp.balance, udp.passive)?,
    }
    writeln!(
        f,
        "idle_timeout = \"{}\"",
        format_duration(udp.idle_timeout)
    )?;
    match udp.max_responses {
        Some(n) => writeln!(f, "max_responses = {n}")?,
        None => writeln!(f, "# max_responses: unset (sessions end by idle_timeout)")?,
    }
    writeln!(
        f,
        "{}max_sessions = {}  # per shard: {}",
        default_mark(udp.max_sessions_given),
        udp.max_sessions,
        share_summary(|shard| udp.shard_share(shard, shards), shards)
    )?;
    match udp.new_sessions_per_second_per_source {
        Some(n) => writeln!(f, "new_sessions_per_second_per_source = {n}")?,
        None => writeln!(
            f,
            "# new_sessions_per_second_per_source: unset (no rate limit)"
        )?,
    }
    if udp.allow.is_empty() {
        writeln!(f, "# allow: unset (every client)")?;
    } else {
        let ranges: Vec<String> = udp.allow.iter().map(|c| format!("\"{c}\"")).collect();
        writeln!(f, "allow = [{}]", ranges.join(", "))?;
    }
    write_ranges(f, "deny", &udp.deny, "nobody kept out")?;
    for (key, value) in [
        ("rcvbuf", udp.rcvbuf),
        ("sndbuf", udp.sndbuf),
        ("session_rcvbuf", udp.session_rcvbuf),
    ] {
        match value {
            Some(bytes) => writeln!(f, "{key} = \"{}\"", format_size(bytes.into()))?,
            None => writeln!(f, "# {key}: unset (kernel default)")?,
        }
    }
    writeln!(f, "send_proxy = \"{}\"", udp.send_proxy.name())
}

fn write_udp_transparent(f: &mut Formatter<'_>, t: &super::UdpTransparent) -> fmt::Result {
    writeln!(
        f,
        "transparent = \"tproxy\"  # each datagram goes where its client sent it"
    )?;
    write_policy(f, &t.policy)?;
    writeln!(
        f,
        "tproxy_reply_sockets = {}  # per shard; each one a descriptor",
        t.reply_sockets
    )
}

fn write_echo(f: &mut Formatter<'_>, echo: &EchoPlan) -> fmt::Result {
    writeln!(f, "[[echo]]")?;
    writeln!(f, "name = {:?}", echo.name)?;
    writeln!(f, "listen = \"{}\"", echo.listen)?;
    if echo.proto == Proto::Udp {
        writeln!(f, "proto = \"udp\"")?;
    }
    match echo.mode {
        EchoMode::Echo => {}
        EchoMode::Sink => writeln!(f, "mode = \"sink\"")?,
        EchoMode::Source => writeln!(f, "mode = \"source\"")?,
        EchoMode::RequestResponse { request, response } => {
            writeln!(f, "mode = \"rr\"")?;
            writeln!(f, "request_size = {request}")?;
            writeln!(f, "response_size = {response}")?;
        }
    }
    Ok(())
}

/// Shares take at most two values (the first shards get one more), so two ranges describe all.
fn share_summary(share: impl Fn(usize) -> u32, shards: usize) -> String {
    let Some(last) = shards.checked_sub(1) else {
        return "none (no shards)".to_owned();
    };
    let high = share(0);
    let low = share(last);
    if high == low {
        return match shards {
            1 => format!("{low} on the only shard"),
            _ => format!("{low} on each of {shards} shards"),
        };
    }
    let with_high = (0..shards)
        .take_while(|&shard| share(shard) == high)
        .count();
    format!(
        "{high} on {}, {low} on {}",
        shard_range(0, with_high.saturating_sub(1)),
        shard_range(with_high, last)
    )
}

fn shard_range(first: usize, last: usize) -> String {
    if first == last {
        format!("shard {first}")
    } else {
        format!("shards {first}-{last}")
    }
}

/// The `resolver*` keys; nameservers from /etc/resolv.conf are read when
/// the process starts, so `check` says where they come from.
fn render_resolver(f: &mut Formatter<'_>, r: &super::ResolverPlan) -> fmt::Result {
    match &r.nameservers {
        Some(list) => {
            let quoted: Vec<String> = list.iter().map(|a| format!("\"{a}\"")).collect();
            writeln!(f, "resolver = [{}]", quoted.join(", "))?;
        }
        None => writeln!(f, "# resolver: the nameservers of /etc/resolv.conf")?,
    }
    writeln!(
        f,
        "resolver_timeout = \"{}\"  # per try",
        format_duration(r.timeout)
    )?;
    writeln!(
        f,
        "resolver_attempts = {}  # rounds over every nameserver",
        r.attempts
    )?;
    writeln!(f, "resolver_prefer = \"{}\"", r.prefer.as_str())
}
