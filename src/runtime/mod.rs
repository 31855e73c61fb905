//! The control thread: checks the host, binds every shard's listeners, spawns
//! and pins the shards, waits until each is ready, then handles signals
//! (drain, then stop), periodic stats and exit. It never touches a connection;
//! it talks to shards only through commands and reads their counters as snapshots.

use std::net::SocketAddr;
use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tracing::{error, info, warn};

use crate::accesslog::{AccessLog, AccessLogShard, Format, Sink};
use crate::config::forward::{TcpKind, Users};
use crate::config::units::format_duration;
use crate::config::{
    AccessFormat, AccessTarget, Balance, PassiveHealth, Plan, Proto, SendProxy, TcpListenerPlan,
    local_loop,
};
use crate::front::sni::SniRoutes;
use crate::health::Monitor;
use crate::shard::engine::{FdBudget, FrontSpec, GateSpec, RateSpec, RouteSpec, SniSpec};
use crate::shard::event_loop::{self, Command, Control, Report, ShardSetup, SpliceSetup};
use crate::shard::udp::UDP_DRAIN_GRACE_MS;
use crate::stats::{Counter, ShardStats};
use crate::sys::eventfd::EventFd;
use crate::sys::host::{self, HostError};
use crate::sys::mptcp::StreamProto;
use crate::sys::notify;
use crate::sys::output;
use crate::sys::signals::{ControlSignals, Intent, Signal};
use crate::sys::socket::{self, ListenKind};
use crate::tcp::front::FrontConfig;
use crate::tcp::handshake::{LoopGuard, NamedKind, NamedSpec};
use crate::tcp::relay::ProxyOut;
use crate::time::millis;

mod admin;
mod descriptors;
mod reload;
mod specs;
mod stream;
mod upgrade;

/// How long start-up waits for every shard to report ready.
const READY_TIMEOUT: Duration = Duration::from_secs(10);
/// After Stop, how long shards get to close everything before we exit anyway.
const STOP_GRACE: Duration = Duration::from_secs(5);

/// A listening address as bound (port 0 resolved).
#[derive(Clone, Debug)]
pub struct Bound {
    pub kind: &'static str,
    pub name: String,
    pub addr: SocketAddr,
    pub upstreams: Vec<SocketAddr>,
}

struct ShardHandle {
    commands: Sender<Command>,
    doorbell: Arc<EventFd>,
    thread: Option<JoinHandle<()>>,
    exited: Option<(ShardStats, bool)>,
    last: ShardStats,
}

pub struct Runtime {
    shards: Vec<ShardHandle>,
    reports: Receiver<Report>,
    bound: Vec<Bound>,
    seq: u64,
    /// The access log's writer thread (`[log] access`).
    access_log: Option<AccessLog>,
    /// What `/ready` answers: serving once every shard is ready, not from
    /// the moment a drain starts.
    ready: crate::admin::Readiness,
    /// The health checker and its results (any `health_check`).
    health: Option<Monitor>,
    /// The configuration in force and what a SIGHUP reload needs.
    reload: reload::State,
    /// Copies of the listening sockets for a SIGUSR2 upgrade.
    handover: upgrade::Handover,
}

/// How long the access log's writer may take to write what the shards
/// handed it when the forwarder exits.
const ACCESS_LOG_DRAIN: Duration = Duration::from_secs(2);

impl Drop for Runtime {
    fn drop(&mut self) {
        if let Some(log) = self.access_log.take() {
            // The shards have exited (or are being abandoned): their
            // handles are gone, so the writer writes what is queued and ends.
            let _ = log.shutdown(ACCESS_LOG_DRAIN);
        }
    }
}

/// Opens `[log] access` and starts its writer: one handle per shard.
fn start_access_log(
    plan: &Plan,
    shards: usize,
) -> Result<(Option<AccessLog>, Vec<Option<AccessLogShard>>), HostError> {
    let Some(cfg) = &plan.log.access else {
        return Ok((None, (0..shards).map(|_| None).collect()));
    };
    let sink = match &cfg.target {
        AccessTarget::Stdout => Sink::Stdout,
        AccessTarget::Stderr => Sink::Stderr,
        AccessTarget::File(path) => Sink::File(path.clone()),
    };
    let format = match cfg.format {
        AccessFormat::Text => Format::Text,
        AccessFormat::Json => Format::Json,
    };
    let (log, handles) =
        AccessLog::start(&sink, format, shards).map_err(|e| HostError::AccessLog {
            error: e.to_string(),
        })?;
    Ok((Some(log), handles.into_iter().map(Some).collect()))
}

/// Applies a UDP listener's rcvbuf/sndbuf to every shard's socket; warns when
/// the kernel granted less than asked (it reports twice the usable size).
fn socket_buffers(
    u: &crate::config::UdpListenerPlan,
    fds: &[OwnedFd],
    addr: SocketAddr,
) -> Result<(), HostError> {
    use std::os::fd::AsRawFd as _;
    let mut warned = false;
    for fd in fds {
        let granted = socket::set_buffers(fd.as_raw_fd(), u.rcvbuf, u.sndbuf).map_err(|e| {
            HostError::Bind {
                what: format!("udp listener '{}' (setting rcvbuf/sndbuf)", u.name),
                addr,
                error: e.to_string(),
            }
        })?;
        let checks = [
            ("rcvbuf", u.rcvbuf, granted.0, "net.core.rmem_max"),
            ("sndbuf", u.sndbuf, granted.1, "net.core.wmem_max"),
        ];
        for (key, asked, got, sysctl) in checks {
            if let (Some(asked), Some(got)) = (asked, got)
                && got < asked.saturating_mul(2)
                && !warned
            {
                warned = true;
                warn!(
                    "udp listener '{}': {key} of {asked} bytes asked, the kernel granted {} (capped by {sysctl}); raise it with `sysctl -w {sysctl}={asked}`",
                    u.name,
                    got / 2
                );
            }
        }
    }
    Ok(())
}

/// A `transparent = "tproxy"` UDP listener's sockets (bound here, or
/// handed over by the process this one upgrades): IP_TRANSPARENT and
/// IP_RECVORIGDSTADDR on each.
pub(super) fn transparent_udp(
    u: &crate::config::UdpListenerPlan,
    fds: &[OwnedFd],
    addr: SocketAddr,
) -> Result<(), HostError> {
    use std::os::fd::AsRawFd as _;
    if u.transparent.is_none() {
        return Ok(());
    }
    for fd in fds {
        crate::sys::transparent::prepare_udp_listener(fd.as_raw_fd(), addr).map_err(|e| {
            HostError::Bind {
                what: format!("udp listener '{}' (transparent = \"tproxy\")", u.name),
                addr,
                error: e.to_string(),
            }
        })?;
    }
    Ok(())
}

/// Warns, as `socket_buffers` does for listeners, when the kernel would give
/// session sockets less `session_rcvbuf` than asked. Probed once on a socket
/// of the first upstream's family: every session socket is capped the same.
fn session_buffer(u: &crate::config::UdpListenerPlan) {
    let (Some(asked), Some(up)) = (u.session_rcvbuf, u.upstreams.first()) else {
        return;
    };
    match socket::probe_rcvbuf(*up, asked) {
        Ok(got) if got < asked.saturating_mul(2) => warn!(
            "udp listener '{}': session_rcvbuf of {asked} bytes asked, the kernel granted {} (capped by net.core.rmem_max); raise it with `sysctl -w net.core.rmem_max={asked}`",
            u.name,
            got / 2
        ),
        Ok(_) => {}
        Err(e) => warn!(
            "udp listener '{}': probing session_rcvbuf of {asked} bytes failed ({e}); session sockets may keep the kernel default",
            u.name
        ),
    }
}

/// Datagram buffers each shard allocates: none unless a UDP listener exists.
fn datagram_buffers(plan: &Plan) -> u32 {
    if plan.has_udp() {
        plan.runtime.udp_buffers_per_shard
    } else {
        0
    }
}

/// The shards' splice relay: pipes only where a TCP relay can use them.
fn splice_setup(plan: &Plan) -> SpliceSetup {
    use crate::config::SpliceMode as Planned;
    use crate::tcp::splice::SpliceMode;
    let mode = match plan.runtime.splice {
        Planned::Off => return SpliceSetup::OFF,
        Planned::Auto => SpliceMode::Auto,
        Planned::Always => SpliceMode::Always,
    };
    if plan.tcp.is_empty() {
        return SpliceSetup::OFF;
    }
    SpliceSetup {
        mode,
        max_pipes: plan.runtime.max_pipes,
        pipe_size: plan.runtime.pipe_size,
    }
}

/// What the host checks found: warnings, notes at info level, and each
/// shard's descriptor budget.
#[derive(Debug)]
pub struct HostReport {
    pub warnings: Vec<String>,
    pub notes: Vec<String>,
    pub fd_budget: FdBudget,
}

/// Host checks that do not create sockets (shared by `run` and `check`).
pub fn check_host(plan: &Plan) -> Result<HostReport, HostError> {
    reject_local_loops(plan)?;
    host::check_io_uring()?;
    let mut report = HostReport {
        warnings: Vec::new(),
        notes: Vec::new(),
        fd_budget: FdBudget::Unlimited,
    };
    let rt = &plan.runtime;
    if let Some(n) = host::ensure_memlock(
        rt.shards,
        rt.ring_entries,
        rt.buffers_per_shard,
        datagram_buffers(plan),
    )? {
        report.warnings.push(n);
    }
    // Listening sockets of every shard, and each splice pipe's two ends
    // (made at shard start), are outside the connections' budget.
    let listeners = (plan.tcp.len() + plan.udp.len() + plan.echo.len()) as u64 * rt.shards as u64;
    let pipes = u64::from(splice_setup(plan).max_pipes) * 2 * rt.shards as u64;
    let limits = descriptors::limits(plan);
    let needed = descriptors::needed(&limits, listeners + pipes, rt.shards);
    if let Some(nofile) = host::ensure_nofile(needed) {
        let budget = descriptors::budget(&limits, listeners + pipes, rt.shards, nofile);
        report.fd_budget = budget.per_shard;
        match budget.note {
            descriptors::Note::Warn(w) => report.warnings.push(w),
            descriptors::Note::Info(n) => report.notes.push(n),
        }
    }
    Ok(report)
}

/// A wildcard listener that receives one of the plan's upstreams through
/// another address of this host (the config alone cannot tell).
fn reject_local_loops(plan: &Plan) -> Result<(), HostError> {
    let Some(found) = local_loop(plan, &host::local_addresses()) else {
        return Ok(());
    };
    Err(HostError::ForwardingLoop {
        upstream_of: format!("{} listener '{}'", found.proto, found.upstream_of),
        upstream: found.upstream,
        listener: format!("{} listener '{}'", found.proto, found.listener),
        listen: found.listen,
    })
}

/// One listener's SO_REUSEPORT group (a socket per shard) and its address.
type Group = (Vec<OwnedFd>, SocketAddr);

/// Every listener's group, bound in `run`'s order: forwarding TCP and UDP
/// listeners, then UDP and TCP echo listeners.
struct Groups {
    tcp: Vec<Group>,
    udp: Vec<Group>,
    udp_echo: Vec<Group>,
    tcp_echo: Vec<Group>,
    /// `mptcp` listeners bound with plain TCP (the kernel has no MPTCP).
    mptcp_fallback: stream::Fallbacks,
}

/// Binds every listener as `run` does, so `check` meets the same errors
/// (address in use, not on this host, a port below 1024 without the
/// capability) through the same code.
/// A listener's group: handed over by the process this one upgrades
/// (see `upgrade`), else bound.
fn bind_groups(plan: &Plan, inherited: &mut upgrade::Inherited) -> Result<Groups, HostError> {
    let n = plan.runtime.shards;
    let mut mptcp_fallback = stream::Fallbacks::default();
    let mut tcp = Vec::with_capacity(plan.tcp.len());
    for t in &plan.tcp {
        let how = stream::listen_socket(t, &mut mptcp_fallback)?;
        let (kind, name, listen) = (ListenKind::Tcp, &t.name, t.listen);
        tcp.push(upgrade::take_or_bind(
            inherited,
            kind,
            name,
            listen,
            n,
            Some(how),
            || socket::bind_stream_listeners(name, listen, n, how),
        )?);
    }
    let mut group = |kind, name: &str, listen, udp: bool| {
        upgrade::take_or_bind(inherited, kind, name, listen, n, None, || match udp {
            false => socket::bind_listeners(kind, name, listen, n),
            true => socket::bind_udp_listeners(kind, name, listen, n),
        })
    };
    let udp = plan
        .udp
        .iter()
        .map(|u| {
            let (fds, addr) = group(ListenKind::Udp, &u.name, u.listen, true)?;
            socket_buffers(u, &fds, addr)?;
            transparent_udp(u, &fds, addr)?;
            Ok((fds, addr))
        })
        .collect::<Result<_, HostError>>()?;
    let echo = |proto: Proto| plan.echo.iter().filter(move |e| e.proto == proto);
    let udp_echo = echo(Proto::Udp)
        .map(|e| group(ListenKind::UdpEcho, &e.name, e.listen, true))
        .collect::<Result<_, _>>()?;
    let tcp_echo = echo(Proto::Tcp)
        .map(|e| group(ListenKind::Echo, &e.name, e.listen, false))
        .collect::<Result<_, _>>()?;
    Ok(Groups {
        tcp,
        udp,
        udp_echo,
        tcp_echo,
        mptcp_fallback,
    })
}

/// `ringfwd check`: every host check `run` makes before it spawns shards —
/// [`check_host`], then binding every listener (closed again on return).
/// Returns what `run` would log.
pub fn check(plan: &Plan) -> Result<HostReport, HostError> {
    let report = check_host(plan)?;
    drop(bind_groups(plan, &mut upgrade::Inherited::none())?);
    drop(admin::bind(plan)?);
    Ok(report)
}

impl Runtime {
    /// Checks the host, binds, spawns and waits until every shard is ready.
    pub fn start(plan: &Plan) -> Result<Runtime, HostError> {
        Runtime::start_inheriting(plan, &mut upgrade::Inherited::none())
    }

    /// As `start`, on the sockets a process being upgraded handed over.
    fn start_inheriting(
        plan: &Plan,
        inherited: &mut upgrade::Inherited,
    ) -> Result<Runtime, HostError> {
        let host = check_host(plan)?;
        for warning in &host.warnings {
            warn!("{warning}");
        }
        for note in &host.notes {
            info!("{note}");
        }
        let rt = &plan.runtime;
        let n = rt.shards;
        let groups = bind_groups(plan, inherited)?;
        let handover = upgrade::Handover::of(plan, &groups)?;
        let inputs = specs::ShardInputs::of(plan, groups)?;
        let (access_log, mut access_handles) = start_access_log(plan, n)?;
        let health = Monitor::start(plan)?;
        let (report_tx, reports) = mpsc::channel();
        let mut shards = Vec::with_capacity(n);
        let mut reload = reload::State::new(plan, &inputs.tcp, &inputs.udp, &inputs.bound);
        reload.count_mptcp_fallback(inputs.mptcp_fallback);
        let (routes, udp_routes, bound) = (inputs.routes, inputs.udp_routes, inputs.bound);
        let resolver = specs::resolver_config(plan);
        let shard_inputs = inputs.tcp.into_iter().zip(inputs.udp);
        for (index, (shard_listeners, shard_udp)) in shard_inputs.enumerate() {
            let cpu = rt.cpus.get(index).copied().unwrap_or(index);
            let doorbell = Arc::new(EventFd::new().map_err(|e| HostError::Shard {
                shard: index,
                error: format!("eventfd: {e}"),
            })?);
            let (cmd_tx, cmd_rx) = mpsc::channel();
            let setup = ShardSetup {
                index,
                cpu,
                ring_entries: rt.ring_entries,
                buffer_size: rt.buffer_size,
                buffers: rt.buffers_per_shard,
                cap: rt.buffers_per_direction,
                listeners: shard_listeners,
                routes: routes.clone(),
                datagram_buffers: datagram_buffers(plan),
                max_datagram: rt.max_datagram,
                busy_poll: rt.busy_poll,
                splice: splice_setup(plan),
                udp_listeners: shard_udp,
                udp_routes: udp_routes.clone(),
                fd_budget: host.fd_budget,
                access_log: access_handles.get_mut(index).and_then(Option::take),
                resolver: resolver.clone(),
            };
            let control = Control {
                commands: cmd_rx,
                doorbell: doorbell.clone(),
                reports: report_tx.clone(),
            };
            let thread = std::thread::Builder::new()
                .name(format!("rfwd-shard-{index}"))
                .spawn(move || event_loop::run(setup, control))
                .map_err(|e| HostError::Shard {
                    shard: index,
                    error: format!("spawning its thread: {e}"),
                })?;
            shards.push(ShardHandle {
                commands: cmd_tx,
                doorbell,
                thread: Some(thread),
                exited: None,
                last: ShardStats::default(),
            });
        }
        let mut runtime = Runtime {
            shards,
            reports,
            bound,
            seq: 0,
            access_log,
            ready: crate::admin::Readiness::default(),
            health,
            reload,
            handover,
        };
        runtime.wait_ready()?;
        runtime.ready.set_serving();
        Ok(runtime)
    }

    fn wait_ready(&mut self) -> Result<(), HostError> {
        let deadline = Instant::now() + READY_TIMEOUT;
        let mut ready = 0;
        while ready < self.shards.len() {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.reports.recv_timeout(left) {
                Ok(Report::Ready { shard, setup }) => {
                    info!(shard, "shard ready: {setup}");
                    ready += 1;
                }
                Ok(Report::Failed { shard, error }) => {
                    self.abort_start();
                    return Err(HostError::Shard { shard, error });
                }
                Ok(other) => self.record(other),
                Err(_) => {
                    self.abort_start();
                    return Err(HostError::Shard {
                        shard: ready,
                        error: format!("not ready within {}s", READY_TIMEOUT.as_secs()),
                    });
                }
            }
        }
        Ok(())
    }

    fn abort_start(&mut self) {
        self.send_all(Command::Stop);
        for s in &mut self.shards {
            if let Some(t) = s.thread.take() {
                let _ = t.join();
            }
        }
    }

    pub fn bound(&self) -> &[Bound] {
        &self.bound
    }

    fn send_all(&self, cmd: Command) {
        for s in self.shards.iter().filter(|s| s.exited.is_none()) {
            if s.commands.send(cmd.clone()).is_ok() {
                let _ = s.doorbell.notify();
            }
        }
    }

    /// Stop accepting; open connections continue. Shards exit when they have none.
    pub fn drain(&mut self) {
        // Before any shard stops accepting: a load balancer polling /ready
        // must see the drain while the listeners still take connections.
        self.ready.set_draining();
        self.stop_accepting();
    }

    /// The drain without `/ready` turning 503: after an upgrade the new
    /// process serves, so the host stays ready.
    fn stop_accepting(&mut self) {
        // Our copies would keep the listeners open (their queues unserved)
        // after the shards close theirs.
        self.handover.clear();
        self.send_all(Command::Drain);
    }

    /// Close every connection now; shards exit once the kernel returned everything.
    pub fn stop(&self) {
        self.send_all(Command::Stop);
    }

    fn record(&mut self, report: Report) {
        match report {
            Report::Snapshot { shard, stats, .. } => {
                if let Some(s) = self.shards.get_mut(shard) {
                    s.last = stats;
                }
            }
            Report::Exited {
                shard,
                stats,
                clean,
            } => {
                if let Some(s) = self.shards.get_mut(shard) {
                    s.last = stats.clone();
                    s.exited = Some((stats, clean));
                    if let Some(t) = s.thread.take() {
                        let _ = t.join();
                    }
                }
            }
            Report::Ready { .. } | Report::Failed { .. } => {}
        }
    }

    /// Processes reports for up to `timeout` (and health changes: each goes
    /// to every shard).
    pub fn poll(&mut self, timeout: Duration) {
        let changes = self.health.as_mut().map(Monitor::poll).unwrap_or_default();
        for (upstream, up) in changes {
            self.send_all(Command::UpstreamHealth { upstream, up });
        }
        match self.reports.recv_timeout(timeout) {
            Ok(r) => {
                self.record(r);
                while let Ok(r) = self.reports.try_recv() {
                    self.record(r);
                }
            }
            Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => {}
        }
    }

    pub fn all_exited(&self) -> bool {
        self.shards.iter().all(|s| s.exited.is_some())
    }

    /// A shard thread that ended without reporting (a panic).
    pub fn crashed_shard(&mut self) -> Option<usize> {
        // A shard reports Exited before its thread ends: a report still
        // queued is not a crash (a drain with nothing open ends at once).
        while let Ok(r) = self.reports.try_recv() {
            self.record(r);
        }
        self.shards
            .iter()
            .position(|s| s.exited.is_none() && s.thread.as_ref().is_some_and(|t| t.is_finished()))
    }

    /// Fresh counters from every shard, summed (exited shards contribute their final counters).
    pub fn snapshot(&mut self, timeout: Duration) -> ShardStats {
        self.seq += 1;
        let seq = self.seq;
        self.send_all(Command::Snapshot(seq));
        let mut pending: Vec<bool> = self.shards.iter().map(|s| s.exited.is_none()).collect();
        let deadline = Instant::now() + timeout;
        while pending.iter().any(|p| *p) {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.reports.recv_timeout(left) {
                Ok(Report::Snapshot {
                    shard,
                    seq: s,
                    stats,
                }) => {
                    if let Some(h) = self.shards.get_mut(shard) {
                        h.last = stats;
                    }
                    if s == seq
                        && let Some(p) = pending.get_mut(shard)
                    {
                        *p = false;
                    }
                }
                Ok(other) => {
                    if let Report::Exited { shard, .. } = &other
                        && let Some(p) = pending.get_mut(*shard)
                    {
                        *p = false;
                    }
                    self.record(other);
                }
                Err(_) => break,
            }
        }
        self.totals()
    }

    /// The latest counters of every shard, summed. A shard that exited keeps
    /// its last counters here, so no total (and no /metrics counter) ever
    /// goes backwards; a reload that replaces shards must keep this (carry
    /// the old shards' last counters into the sum).
    pub fn totals(&self) -> ShardStats {
        let mut total = ShardStats::default();
        for s in &self.shards {
            total.merge(&s.last);
        }
        if let Some(h) = &self.health {
            h.view().add_to(&mut total);
        }
        self.reload.add_to(&mut total);
        total
    }

    /// True if every shard exited having got every operation back from the kernel.
    pub fn clean(&self) -> bool {
        self.shards
            .iter()
            .all(|s| matches!(s.exited, Some((_, true))))
    }

    /// Stops every shard and waits (bounded) for them; returns the final totals.
    pub fn shutdown(mut self) -> ShardStats {
        self.stop();
        let deadline = Instant::now() + STOP_GRACE;
        while !self.all_exited() && Instant::now() < deadline {
            self.poll(Duration::from_millis(50));
        }
        self.totals()
    }
}

/// A forward listener's routes — its own, then one per `[[tcp.routes]]`
/// entry — appended to the shard's route table, and its front stage: the
/// prefixes its connections read and what goes to its upstreams first.
fn forward_routes(
    t: &TcpListenerPlan,
    routes: &mut Vec<RouteSpec>,
    access_log: bool,
    guard: &LoopGuard,
    upstream_proto: StreamProto,
) -> Result<(u16, FrontSpec), HostError> {
    let too_many = || HostError::Bind {
        what: format!("tcp listener '{}'", t.name),
        addr: t.listen,
        error: "more than 65535 routes over all listeners; use fewer listeners or SNI routes"
            .into(),
    };
    let mut push = |upstreams: &[SocketAddr],
                    weights: &[u32],
                    balance: Balance,
                    passive: PassiveHealth|
     -> Result<u16, HostError> {
        let id = u16::try_from(routes.len()).map_err(|_| too_many())?;
        routes.push(RouteSpec {
            upstreams: upstreams.to_vec(),
            weights: weights.to_vec(),
            balance,
            passive,
            connect_timeout_ms: millis(t.connect_timeout),
            idle_ms: millis(t.idle_timeout),
            half_close_ms: millis(t.half_close_timeout),
            bandwidth: t.bandwidth_limit,
            upstream_proto,
        });
        Ok(id)
    };
    let own = push(&t.upstreams, &t.weights, t.balance, t.passive)?;
    let sni = match &t.sni {
        None => None,
        Some(plan) => {
            let mut ids = Vec::with_capacity(plan.routes.len());
            for r in &plan.routes {
                ids.push(push(&r.upstreams, &r.weights, r.balance, r.passive)?);
            }
            let names: Vec<Vec<String>> = plan.routes.iter().map(|r| r.names.clone()).collect();
            let names = SniRoutes::new(&names).map_err(|error| HostError::Bind {
                what: format!("tcp listener '{}' SNI routes", t.name),
                addr: t.listen,
                error,
            })?;
            Some(SniSpec { names, routes: ids })
        }
    };
    let send_proxy = match t.send_proxy {
        SendProxy::Off => ProxyOut::Off,
        SendProxy::V1 => ProxyOut::V1,
        SendProxy::V2 => ProxyOut::V2,
    };
    // The per-listener rate is set per shard (its share) by the caller.
    let gate = GateSpec {
        access: (!t.limits.access.is_open()).then(|| Arc::new(t.limits.access.clone())),
        rates: RateSpec {
            per_listener: None,
            per_source: t.limits.new_connections_per_second_per_source,
        },
    };
    let front = FrontSpec {
        read: FrontConfig {
            proxy_ms: t.accept_proxy.as_ref().map(|a| millis(a.timeout)),
            sni_ms: t.sni.as_ref().map(|s| millis(s.timeout)),
            named_ms: match &t.kind {
                TcpKind::Socks5(p) | TcpKind::HttpConnect(p) => Some(millis(p.header_timeout)),
                TcpKind::Forward | TcpKind::Transparent(_) => None,
            },
        },
        named: named_spec(t, guard),
        transparent: match &t.kind {
            TcpKind::Transparent(p) => Some(p.mode),
            _ => None,
        },
        trusted: t
            .accept_proxy
            .as_ref()
            .map(|a| a.trusted.clone())
            .unwrap_or_default(),
        sni,
        send_proxy,
        // hash_source balances on the client's address.
        wants_ends: access_log
            || send_proxy != ProxyOut::Off
            || t.accept_proxy.is_some()
            || gate.wants_peer()
            || uses_hash_source(t)
            || t.kind != TcpKind::Forward,
        gate,
    };
    Ok((own, front))
}

/// What a listener whose clients name (or dialled) their destination checks
/// it against; `None` for a listener with upstreams.
fn named_spec(t: &TcpListenerPlan, guard: &LoopGuard) -> Option<Arc<NamedSpec>> {
    let (kind, users, policy) = match &t.kind {
        TcpKind::Forward => return None,
        TcpKind::Socks5(p) => (NamedKind::Socks5, p.users.clone(), p.policy.clone()),
        TcpKind::HttpConnect(p) => (NamedKind::HttpConnect, p.users.clone(), p.policy.clone()),
        TcpKind::Transparent(p) => (NamedKind::Transparent, Users::default(), p.policy.clone()),
    };
    Some(Arc::new(NamedSpec {
        kind,
        users,
        policy,
        guard: guard.clone(),
        udp_idle_ms: match &t.kind {
            TcpKind::Socks5(p) => p.udp_idle.map(|d| {
                crate::time::Millis::try_from(d.as_millis()).unwrap_or(crate::time::Millis::MAX)
            }),
            _ => None,
        },
    }))
}

/// ringfwd's own TCP listen addresses, which no client may name as its
/// destination.
pub(crate) fn loop_guard(plan: &Plan) -> LoopGuard {
    let echo = plan
        .echo
        .iter()
        .filter(|e| e.proto == Proto::Tcp)
        .map(|e| e.listen);
    let guard = LoopGuard::new(plan.tcp.iter().map(|t| t.listen).chain(echo));
    // Only a forward proxy or transparent listener checks it: read the
    // interfaces only then.
    if plan.tcp.iter().any(|t| t.kind != TcpKind::Forward) && !guard.wildcard_ports.is_empty() {
        return guard.with_local(&host::local_addresses());
    }
    guard
}

fn uses_hash_source(t: &TcpListenerPlan) -> bool {
    let routes = t
        .sni
        .iter()
        .flat_map(|s| s.routes.iter().map(|r| r.balance));
    std::iter::once(t.balance)
        .chain(routes)
        .any(|b| b == Balance::HashSource)
}

/// Process exit codes.
pub mod exit {
    pub const OK: u8 = 0;
    /// The forwarder failed after starting, or was forced to exit.
    pub const FAILURE: u8 = 1;
    /// Invalid configuration or command line.
    pub const CONFIG: u8 = 2;
    /// The host is not ready (io_uring, limits, CPUs, an address in use).
    pub const HOST: u8 = 3;
}

/// Counters for a `stats` / `final stats` log line: the shards' totals and
/// the log sink's own `log_write_errors`.
fn stats_kv(totals: &ShardStats) -> String {
    format!(
        "{} log_write_errors={}",
        totals.to_kv(),
        output::log_write_errors()
    )
}

/// Logs the totals line, then one line per listener and per upstream that
/// counted anything (`what` is `stats` or `final stats`).
fn log_stats(what: &str, totals: &ShardStats) {
    info!("{what} {}", stats_kv(totals));
    for line in totals.detail_lines() {
        info!("{what} {line}");
    }
}

/// What a signal did to the serve loop.
enum Signalled {
    /// Ignored (logged); serving goes on.
    Ignored,
    /// The first stop signal: draining until the deadline.
    Draining(Instant),
    /// A second stop signal: exit now.
    ExitNow,
}

fn on_signal(
    rt: &mut Runtime,
    sig: Signal,
    draining: bool,
    reread: &dyn Fn() -> Result<Plan, String>,
    upgrader: &mut upgrade::Upgrader,
) -> Signalled {
    let name = sig.name();
    if sig.intent() == Intent::Upgrade {
        upgrader.on_usr2(&rt.handover, draining);
        return Signalled::Ignored;
    }
    if sig.intent() == Intent::Reload {
        if draining {
            warn!("{name} ignored: draining, so a new configuration would not apply");
        } else {
            // systemd (Type=notify / notify-reload) hears the reload's start and end.
            notify::reloading();
            reload::on_sighup(rt, reread);
            notify::ready();
        }
        return Signalled::Ignored;
    }
    // The file in force: a reload may have changed it.
    let drain_timeout = rt.reload.plan().runtime.drain_timeout;
    if sig == Signal::Usr1
        && let Some(log) = &rt.access_log
    {
        // logrotate: the old file was renamed; lines go to a new one at the path.
        info!("{name}: reopening the access log");
        log.reopen();
        return Signalled::Ignored;
    }
    if let Intent::Ignore { why } = sig.intent() {
        warn!("{name} ignored: {why}");
        return Signalled::Ignored;
    }
    if draining {
        warn!("second {name}: exiting at once without waiting for connections");
        return Signalled::ExitNow;
    }
    let open = rt.snapshot(Duration::from_millis(500));
    let (active, sessions) = (
        open.get(Counter::Active),
        open.get(Counter::UdpSessionsActive),
    );
    info!(
        "{name}: draining — no new connections or UDP sessions; {active} open connection(s) get up to {} to finish, and {sessions} UDP session(s) end once they owe no reply or have been quiet for {}ms, within the same bound (send {name} again to exit at once)",
        format_duration(drain_timeout),
        UDP_DRAIN_GRACE_MS
    );
    notify::stopping();
    notify::status(&format!(
        "draining {active} connection(s) for up to {}",
        format_duration(drain_timeout)
    ));
    rt.drain();
    Signalled::Draining(Instant::now() + drain_timeout)
}

/// Starts the shards (on the sockets a process being upgraded handed over,
/// if any), announces the listeners, writes the pid file and reports ready
/// to that process. `Err` is the exit code.
fn start_serving(
    plan: &Plan,
) -> Result<(Runtime, Option<std::net::TcpListener>, upgrade::PidFile), u8> {
    let mut inherited = upgrade::Inherited::from_env();
    let started = inherited
        .admin_socket(plan)
        .and_then(|socket| Ok((Runtime::start_inheriting(plan, &mut inherited)?, socket)));
    let (mut rt, admin_socket) = started.map_err(|e| {
        error!("{e}");
        output::message(&format!("ringfwd: {e}"));
        exit::HOST
    })?;
    announce(&rt, plan.runtime.shards);
    let pid_file = match inherited.serving(plan.runtime.pid_file.as_deref()) {
        Ok(pid_file) => pid_file,
        Err(e) => {
            error!("{e}");
            log_stats("final stats", &rt.shutdown());
            return Err(exit::HOST);
        }
    };
    if let Some(socket) = &admin_socket {
        rt.handover.keep_admin(socket);
    }
    Ok((rt, admin_socket, pid_file))
}

/// The new process of an upgrade serves: stop accepting and drain. Returns
/// the drain's deadline.
fn upgraded(rt: &mut Runtime, pid: u32) -> Instant {
    // The file in force: a reload may have changed it.
    let drain_timeout = rt.reload.plan().runtime.drain_timeout;
    info!(
        "upgrade: the new process (pid {pid}) serves; this one stops accepting and drains its open connections (up to {})",
        format_duration(drain_timeout)
    );
    rt.stop_accepting();
    Instant::now() + drain_timeout
}

/// `ringfwd run` / `ringfwd echo`: serve until signalled; returns the exit
/// code. `reread` builds the plan from the same sources again (SIGHUP).
pub fn serve(plan: &Plan, reread: &dyn Fn() -> Result<Plan, String>) -> u8 {
    // Block before any thread exists so every shard inherits the mask.
    let signals = match ControlSignals::block() {
        Ok(s) => s,
        Err(e) => {
            error!(
                "cannot block the control signals (SIGINT, SIGTERM, SIGQUIT, SIGHUP, SIGUSR1, SIGUSR2): {e}"
            );
            return exit::FAILURE;
        }
    };
    // Before anything else: SIGUSR2 starts the file at this path.
    let mut upgrader = upgrade::Upgrader::new();
    let (mut rt, admin_socket, pid_file) = match start_serving(plan) {
        Ok(started) => started,
        Err(code) => return code,
    };
    let admin = admin::start(plan, &rt, admin_socket);
    notify::ready();
    notify::status(&format!(
        "serving {} listener(s) on {} shard(s)",
        rt.bound().len(),
        plan.runtime.shards
    ));
    let stats_every = plan.runtime.stats_interval;
    let mut next_stats = stats_every.map(|d| Instant::now() + d);
    let mut drain_deadline: Option<Instant> = None;
    let mut stop_deadline: Option<Instant> = None;
    loop {
        if let Some(sig) = signals.wait(Duration::from_millis(50)) {
            match on_signal(
                &mut rt,
                sig,
                drain_deadline.is_some(),
                reread,
                &mut upgrader,
            ) {
                Signalled::Ignored => {}
                Signalled::Draining(deadline) => drain_deadline = Some(deadline),
                Signalled::ExitNow => {
                    log_stats("final stats", &rt.totals());
                    return exit::FAILURE;
                }
            }
        }
        rt.poll(Duration::from_millis(0));
        if let Some(upgrade::Outcome::Ready(pid)) = upgrader.poll(&pid_file) {
            drain_deadline = Some(upgraded(&mut rt, pid));
        }
        if let Some(asks) = &admin {
            asks.answer(|| admin::scrape(&mut rt));
        }
        if rt.all_exited() {
            break;
        }
        if let Some(shard) = rt.crashed_shard() {
            error!(shard, "shard thread died; stopping");
            let totals = rt.shutdown();
            log_stats("final stats", &totals);
            return exit::FAILURE;
        }
        if drain_deadline.is_none() && rt.shards.iter().any(|s| s.exited.is_some()) {
            error!("a shard stopped on its own (see the error above); stopping");
            let totals = rt.shutdown();
            log_stats("final stats", &totals);
            return exit::FAILURE;
        }
        let now = Instant::now();
        if let Some(d) = drain_deadline
            && now >= d
            && stop_deadline.is_none()
        {
            let open = rt.snapshot(Duration::from_millis(500));
            let (active, sessions) = (
                open.get(Counter::Active),
                open.get(Counter::UdpSessionsActive),
            );
            info!(
                "drain_timeout reached; closing {active} remaining connection(s) and {sessions} UDP session(s)"
            );
            rt.stop();
            stop_deadline = Some(now + STOP_GRACE);
        }
        if let Some(d) = stop_deadline
            && now >= d
        {
            warn!(
                "shards did not stop within {}s; exiting anyway",
                STOP_GRACE.as_secs()
            );
            log_stats("final stats", &rt.totals());
            return exit::FAILURE;
        }
        if let (Some(at), Some(every)) = (next_stats, stats_every)
            && now >= at
        {
            let totals = rt.snapshot(Duration::from_millis(500));
            log_stats("stats", &totals);
            next_stats = Some(now + every);
        }
    }
    let clean = rt.clean();
    log_stats("final stats", &rt.totals());
    if !clean {
        warn!("a shard exited before the kernel returned all its operations");
    }
    info!("stopped");
    exit::OK
}

/// One stdout line per listener (stable format: scripts and tests read the
/// bound port from it when the config asked for port 0).
fn announce(rt: &Runtime, shards: usize) {
    use std::io::Write as _;
    let mut out = std::io::stdout().lock();
    for b in rt.bound() {
        let ups: Vec<String> = b.upstreams.iter().map(|a| a.to_string()).collect();
        let arrow = if ups.is_empty() {
            String::new()
        } else {
            format!(" -> {}", ups.join(","))
        };
        let _ = writeln!(
            out,
            "listening {} {} {}{} ({} shards)",
            b.kind, b.name, b.addr, arrow, shards
        );
    }
    let _ = out.flush();
}
