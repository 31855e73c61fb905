//! Configuration: TOML text plus command-line flags, resolved against the host into one validated [`Plan`].
//!
//! Everything the rest of the program needs is checked here, so later stages can trust the
//! values. Every rejection names where it came from and the key's full path, quotes the bad
//! value, says why, and says what to write instead.

mod addr;
mod admin;
mod balance;
pub mod bandwidth;
mod cidr;
mod error;
pub mod file;
pub mod forward;
mod health;
mod keys;
mod limits;
mod listeners;
mod log;
mod loops;
mod proxy;
mod raw;
mod render;
mod routes;
mod runtime;
mod section;
mod sni;
mod socks;
mod udp;
pub mod units;

#[cfg(test)]
mod echo_tests;
#[cfg(test)]
mod forward_tests;
#[cfg(test)]
mod front_tests;
#[cfg(test)]
mod loops_tests;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod udp_tests;

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

pub use admin::AdminPlan;
pub use balance::{Balance, PassiveHealth};
pub use cidr::Cidr;
pub use error::ConfigError;
pub use health::HealthCheck;
pub use limits::{Access, TcpLimits};
pub use loops::{LocalLoop, local_loop};
pub use udp::UdpTransparent;

/// Facts about the host the plan is resolved against (passed in so parsing is testable).
#[derive(Debug, Clone)]
pub struct HostFacts {
    /// CPU ids this process may run on, ascending.
    pub available_cpus: Vec<usize>,
}

/// The fully resolved configuration: every default filled in, every value checked.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    pub runtime: RuntimePlan,
    pub tcp: Vec<TcpListenerPlan>,
    pub udp: Vec<UdpListenerPlan>,
    pub echo: Vec<EchoPlan>,
    pub log: LogPlan,
    /// `[admin]`: the metrics and admin endpoint; `None` serves none.
    pub admin: Option<AdminPlan>,
}

/// `[log]`: where connection records go.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct LogPlan {
    /// `None`: no access log (the default).
    pub access: Option<AccessLog>,
}

/// `log.access` and `log.format`: one record per finished connection or session.
#[derive(Debug, Clone, PartialEq)]
pub struct AccessLog {
    pub target: AccessTarget,
    pub format: AccessFormat,
}

/// `log.access`: where the records are written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AccessTarget {
    Stdout,
    Stderr,
    /// As written: absolute, or relative to the working directory at start.
    /// Not checked against the filesystem here (the config stays pure).
    File(PathBuf),
}

/// `log.format`: how one access record is spelled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AccessFormat {
    /// `key=value` pairs on one line (the default).
    Text,
    /// One JSON object per line.
    Json,
}

impl AccessFormat {
    pub fn name(self) -> &'static str {
        match self {
            AccessFormat::Text => "text",
            AccessFormat::Json => "json",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct RuntimePlan {
    /// Number of shard threads.
    pub shards: usize,
    /// `len == shards`, distinct, each in `HostFacts::available_cpus`; shard `i` pins to `cpus[i]`.
    pub cpus: Vec<usize>,
    /// Bytes per provided receive buffer.
    pub buffer_size: u32,
    /// Provided buffers per shard.
    pub buffers_per_shard: u32,
    /// High watermark: max buffers queued per relay direction.
    pub buffers_per_direction: u32,
    /// io_uring SQ entries (a power of two); the CQ is 8x.
    pub ring_entries: u32,
    /// On SIGTERM, how long open connections may finish.
    pub drain_timeout: Duration,
    /// `None` turns the periodic stats log off.
    pub stats_interval: Option<Duration>,
    /// Largest UDP payload forwarded intact; larger ones are dropped and counted.
    pub max_datagram: u32,
    /// Datagram receive buffers per shard (only allocated when a UDP listener exists).
    pub udp_buffers_per_shard: u32,
    /// Spin on the completion queue this long before sleeping (`None`: never).
    pub busy_poll: Option<Duration>,
    /// Which TCP relay directions move their bytes with splice.
    pub splice: SpliceMode,
    /// Pipes per shard for spliced directions (each one direction at a time).
    pub max_pipes: u32,
    /// Capacity asked for each pipe (F_SETPIPE_SZ), bytes, a power of two.
    pub pipe_size: u32,
    /// Where the serving process writes its PID (`None`: nowhere).
    pub pid_file: Option<PathBuf>,
    /// How shards resolve destination names (`resolver*` keys).
    pub resolver: ResolverPlan,
}

/// `runtime.resolver`, `resolver_timeout`, `resolver_attempts`,
/// `resolver_prefer`: the shards' DNS client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolverPlan {
    /// `None`: the nameservers of /etc/resolv.conf, read by the runtime at
    /// start and on reload.
    pub nameservers: Option<Vec<std::net::SocketAddr>>,
    /// How long one query waits for its reply before the next nameserver.
    pub timeout: Duration,
    /// Rounds over every nameserver before a lookup times out.
    pub attempts: u32,
    pub prefer: crate::dns::Prefer,
}

impl Default for ResolverPlan {
    fn default() -> Self {
        ResolverPlan {
            nameservers: None,
            timeout: Duration::from_secs(2),
            attempts: 2,
            prefer: crate::dns::Prefer::Ipv4,
        }
    }
}

/// `runtime.splice`: which relay directions splice (socket → pipe → socket)
/// instead of copying through the shard's buffers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpliceMode {
    /// Never: every direction uses buffers.
    Off,
    /// A direction switches to a pipe once it looks like a bulk transfer.
    Auto,
    /// Every direction splices from its first byte (testing, pure bulk deployments).
    Always,
}

impl SpliceMode {
    pub fn name(self) -> &'static str {
        match self {
            SpliceMode::Off => "off",
            SpliceMode::Auto => "auto",
            SpliceMode::Always => "always",
        }
    }
}

/// Whether a limit was written in the configuration or is the default: a
/// default the descriptor limit cannot meet is a note, a configured one a warning.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LimitSource {
    Explicit,
    Default,
}

impl LimitSource {
    pub(crate) fn of<T>(field: &Option<T>) -> LimitSource {
        if field.is_some() {
            LimitSource::Explicit
        } else {
            LimitSource::Default
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct TcpListenerPlan {
    pub name: String,
    pub listen: SocketAddr,
    pub upstreams: Vec<SocketAddr>,
    /// Each upstream's weight, parallel to `upstreams` (1 unless written).
    pub weights: Vec<u32>,
    /// How an upstream is picked for a new connection.
    pub balance: Balance,
    /// `max_fails` / `fail_timeout`.
    pub passive: PassiveHealth,
    pub connect_timeout: Duration,
    pub idle_timeout: Duration,
    pub half_close_timeout: Duration,
    /// For the whole listener; split over shards (see [`TcpListenerPlan::shard_share`]).
    pub max_connections: u32,
    pub max_connections_given: LimitSource,
    /// PROXY header written to the upstream before the first byte of the stream.
    pub send_proxy: SendProxy,
    /// `Some`: every client must open with a PROXY header (`accept_proxy = true`).
    pub accept_proxy: Option<AcceptProxy>,
    /// `Some`: the listener has `[[tcp.routes]]`; `upstreams` stays the
    /// default for a connection no route takes (not TLS, no SNI, no match).
    pub sni: Option<SniPlan>,
    /// `allow`, `deny` and the new-connection rates.
    pub limits: TcpLimits,
    /// `bandwidth_limit`: bytes per second, per connection and per direction.
    pub bandwidth_limit: Option<u64>,
    /// `health_check`: active checks of `upstreams` (not of the routes',
    /// which have their own key); `None`: no active checks.
    pub health_check: Option<HealthCheck>,
    /// How a connection's destination is found: `upstreams`, or a SOCKS5 /
    /// HTTP CONNECT request, or the address the client dialled.
    pub kind: forward::TcpKind,
    /// `mptcp`: listen with IPPROTO_MPTCP.
    pub mptcp: forward::Mptcp,
    /// `upstream_mptcp`: connect with IPPROTO_MPTCP (TCP when the kernel lacks it).
    pub upstream_mptcp: bool,
}

/// `send_proxy` of a `[[tcp]]` listener: which PROXY protocol header, if
/// any, precedes the stream to the upstream. It carries the client's address
/// and the local address it reached, or those a trusted incoming header gave.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SendProxy {
    Off,
    /// The text line (`PROXY TCP4 ...\r\n`).
    V1,
    /// The binary header.
    V2,
}

impl SendProxy {
    pub fn name(self) -> &'static str {
        match self {
            SendProxy::Off => "off",
            SendProxy::V1 => "v1",
            SendProxy::V2 => "v2",
        }
    }
}

/// `send_proxy` of a `[[udp]]` listener. There is no v1 here: the v1 text
/// line has no datagram form.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UdpSendProxy {
    Off,
    /// Every datagram to the upstream starts with its own v2 header.
    V2,
}

impl UdpSendProxy {
    pub fn name(self) -> &'static str {
        match self {
            UdpSendProxy::Off => "off",
            UdpSendProxy::V2 => "v2",
        }
    }
}

/// `accept_proxy = true`: a client must send a complete v1 or v2 PROXY
/// header before anything is forwarded.
#[derive(Debug, Clone, PartialEq)]
pub struct AcceptProxy {
    /// `trusted_proxies`: peers allowed to send one (never empty); any other
    /// peer is closed and counted.
    pub trusted: Vec<Cidr>,
    /// `proxy_timeout`: no complete header within it closes the connection.
    pub timeout: Duration,
}

/// SNI routing of a `[[tcp]]` listener.
#[derive(Debug, Clone, PartialEq)]
pub struct SniPlan {
    /// `sni_timeout`: no complete ClientHello within it closes the connection.
    pub timeout: Duration,
    /// `[[tcp.routes]]` in file order (never empty). A name is in at most one route.
    pub routes: Vec<RoutePlan>,
}

/// One `[[tcp.routes]]` section.
#[derive(Debug, Clone, PartialEq)]
pub struct RoutePlan {
    /// `sni`: lowercase host names, or `*.` plus a name for a wildcard that
    /// covers exactly one label; never empty. An exact name beats a wildcard.
    pub names: Vec<String>,
    /// Same rules as a listener's `upstreams`.
    pub upstreams: Vec<SocketAddr>,
    /// `health_check` of this route's upstreams; `None`: no active checks.
    pub health_check: Option<HealthCheck>,
    /// Each upstream's weight, parallel to `upstreams` (1 unless written).
    pub weights: Vec<u32>,
    /// How an upstream is picked for a new connection of the route.
    pub balance: Balance,
    /// `max_fails` / `fail_timeout`.
    pub passive: PassiveHealth,
}

#[derive(Debug, Clone, PartialEq)]
pub struct UdpListenerPlan {
    pub name: String,
    pub listen: SocketAddr,
    pub upstreams: Vec<SocketAddr>,
    /// Each upstream's weight, parallel to `upstreams` (1 unless written).
    pub weights: Vec<u32>,
    /// How an upstream is picked for a new session.
    pub balance: Balance,
    /// `max_fails` / `fail_timeout`.
    pub passive: PassiveHealth,
    /// A session ends after this long with no datagram in either direction.
    pub idle_timeout: Duration,
    /// Upstream replies owed per client datagram: a session ends once every
    /// datagram it forwarded has had them (`max_responses = 1` for DNS).
    pub max_responses: Option<u32>,
    /// For the whole listener; split over shards like `max_connections`.
    pub max_sessions: u32,
    pub max_sessions_given: LimitSource,
    pub new_sessions_per_second_per_source: Option<u32>,
    /// Client ranges let in; empty lets everyone in.
    pub allow: Vec<Cidr>,
    /// Client ranges kept out; wins over `allow`.
    pub deny: Vec<Cidr>,
    /// SO_RCVBUF / SO_SNDBUF of each shard's listener socket; `None` keeps the
    /// kernel default (net.core.rmem_default / wmem_default).
    pub rcvbuf: Option<u32>,
    pub sndbuf: Option<u32>,
    /// SO_RCVBUF of each session's upstream socket, where the upstream's
    /// replies wait; `None` keeps the kernel default.
    pub session_rcvbuf: Option<u32>,
    /// PROXY v2 header on every datagram to the upstream.
    pub send_proxy: UdpSendProxy,
    /// `transparent = "tproxy"`: no upstreams; each datagram goes where its
    /// client sent it.
    pub transparent: Option<UdpTransparent>,
}

/// The transport a listener serves; TCP and UDP listeners may share an address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Proto {
    Tcp,
    Udp,
}

impl fmt::Display for Proto {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
        })
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct EchoPlan {
    pub name: String,
    pub listen: SocketAddr,
    pub proto: Proto,
    /// What a TCP listener serves (always `Echo` for UDP).
    pub mode: EchoMode,
}

/// What a `ringfwd echo` TCP listener does with a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EchoMode {
    /// `--tcp`: every byte back, FIN answered with FIN.
    Echo,
    /// `--tcp-sink`: receive and discard; FIN answered with FIN.
    Sink,
    /// `--tcp-source`: the periodic stream from accept until the client's FIN.
    Source,
    /// `--tcp-rr`: `response` bytes of the periodic stream per complete `request` bytes.
    RequestResponse { request: u32, response: u32 },
}

impl EchoMode {
    /// The listener kind in the `listening <kind> ...` line.
    pub fn kind(self) -> &'static str {
        match self {
            EchoMode::Echo => "echo",
            EchoMode::Sink => "echo-sink",
            EchoMode::Source => "echo-source",
            EchoMode::RequestResponse { .. } => "echo-rr",
        }
    }
}

/// Values given on the command line; they override the file's `[runtime]` keys and add listeners.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    pub shards: Option<usize>,
    pub cpus: Option<Vec<usize>>,
    /// Raw `--busy-poll` (a duration or "off").
    pub busy_poll: Option<String>,
    /// Raw `--tcp` specs: `LISTEN=UP1[,UP2...]`, e.g. `127.0.0.1:8080=127.0.0.1:9000,127.0.0.1:9001`.
    pub tcp: Vec<String>,
    /// Raw `--udp` specs, same form as `--tcp`.
    pub udp: Vec<String>,
    /// Raw `ringfwd echo --tcp` addresses, e.g. `127.0.0.1:9000`.
    pub echo: Vec<String>,
    /// Raw `ringfwd echo --udp` addresses.
    pub echo_udp: Vec<String>,
    /// Raw `ringfwd echo --tcp-sink` addresses.
    pub echo_sink: Vec<String>,
    /// Raw `ringfwd echo --tcp-source` addresses.
    pub echo_source: Vec<String>,
    /// Raw `ringfwd echo --tcp-rr` addresses.
    pub echo_rr: Vec<String>,
    /// Raw `ringfwd echo --request-size` / `--response-size` (for every
    /// `--tcp-rr` listener; default 64 bytes each).
    pub echo_request_size: Option<String>,
    pub echo_response_size: Option<String>,
}

impl Plan {
    /// `file`: `Some((display name, TOML text))` when `--config` was given.
    pub fn resolve(
        file: Option<(&str, &str)>,
        overrides: &Overrides,
        host: &HostFacts,
    ) -> Result<Plan, ConfigError> {
        let document = file
            .map(|(name, text)| raw::Document::parse(name, text))
            .transpose()?;
        let root = document.as_ref().map(raw::Document::root);
        if let Some(root) = &root {
            root.deny_unknown(
                &[
                    "runtime",
                    "tcp",
                    "udp",
                    "socks5",
                    "http_connect",
                    "log",
                    "admin",
                ],
                "at the top level",
            )?;
        }
        let runtime_section = root
            .as_ref()
            .and_then(|root| root.get("runtime"))
            .map(|field| field.table("[runtime] with keys like shards = 2"))
            .transpose()?;
        let runtime = runtime::resolve(runtime_section.as_ref(), overrides, host)?;
        let tcp_field = root.as_ref().and_then(|root| root.get("tcp"));
        let udp_field = root.as_ref().and_then(|root| root.get("udp"));
        let proxies = [socks::ProxyKind::Socks5, socks::ProxyKind::HttpConnect]
            .into_iter()
            .filter_map(|kind| {
                let field = root.as_ref()?.get(kind.section())?;
                Some((kind, field))
            })
            .collect();
        let listeners =
            listeners::resolve(tcp_field, udp_field, proxies, overrides, runtime.shards)?;
        let log = log::resolve(root.as_ref().and_then(|root| root.get("log")))?;
        let admin = admin::resolve(root.as_ref().and_then(|root| root.get("admin")))?;
        if listeners.tcp.is_empty() && listeners.udp.is_empty() && listeners.echo.is_empty() {
            return Err(nothing_to_listen_on(file.map(|(name, _)| name)));
        }
        Ok(Plan {
            runtime,
            tcp: listeners.tcp,
            udp: listeners.udp,
            echo: listeners.echo,
            log,
            admin,
        })
    }

    /// Whether any listener (forwarding or echo) is UDP, or a SOCKS5
    /// listener serves UDP ASSOCIATE, so shards need datagram buffers.
    pub fn has_udp(&self) -> bool {
        let associates = self
            .tcp
            .iter()
            .any(|t| matches!(&t.kind, forward::TcpKind::Socks5(p) if p.udp_idle.is_some()));
        !self.udp.is_empty() || self.echo.iter().any(|e| e.proto == Proto::Udp) || associates
    }
}

fn nothing_to_listen_on(file_name: Option<&str>) -> ConfigError {
    ConfigError {
        source_name: file_name.unwrap_or("command line").to_owned(),
        key: String::new(),
        message: "nothing to listen on: add a [[tcp]] or [[udp]] section to the config, or pass \
                  --tcp LISTEN=UPSTREAM or --udp LISTEN=UPSTREAM"
            .to_owned(),
    }
}

impl TcpListenerPlan {
    /// This shard's share of `max_connections`: `max / shards`, and the first `max % shards`
    /// shards get one more, so the shares always add up to `max_connections`.
    ///
    /// Returns 0 for `shards == 0` or `shard >= shards` (there is no such shard).
    pub fn shard_share(&self, shard: usize, shards: usize) -> u32 {
        shard_share(self.max_connections, shard, shards)
    }
}

impl UdpListenerPlan {
    /// This shard's share of `max_sessions`, split as [`TcpListenerPlan::shard_share`] splits.
    pub fn shard_share(&self, shard: usize, shards: usize) -> u32 {
        shard_share(self.max_sessions, shard, shards)
    }
}

pub(crate) fn shard_share(total: u32, shard: usize, shards: usize) -> u32 {
    let (Ok(shard), Ok(shards)) = (u64::try_from(shard), u64::try_from(shards)) else {
        return 0;
    };
    if shard >= shards {
        return 0;
    }
    let max = u64::from(total);
    let extra = u64::from(shard < max % shards);
    u32::try_from(max / shards + extra).unwrap_or(u32::MAX)
}
