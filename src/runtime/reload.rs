//! Reload on SIGHUP: re-read the configuration as `ringfwd check` does,
//! diff it against the running one and hand each shard its part as one
//! `Command::Reload`. Only this (control) thread reads files and builds
//! plans; the shards swap at a loop boundary.
//!
//! A listener (TCP or UDP) is the same listener across a reload when its
//! kind and its configured address are (its name may change): it keeps its
//! sockets, so nothing waiting in its accept queues or receive buffers is
//! lost. Listeners added are bound here on every shard first (a bind error
//! refuses the whole reload); removed TCP listeners stop accepting and their
//! connections get `drain_timeout`; removed UDP listeners drain as on
//! SIGTERM. What cannot change in a running process (the shards' rings,
//! buffers and pipes, the log and admin sockets) is named in the log as
//! needing a restart or an upgrade, and keeps its running value while the
//! rest applies.

use std::net::SocketAddr;
use std::os::fd::{AsRawFd as _, IntoRawFd as _, OwnedFd, RawFd};
use std::sync::Arc;

use tracing::{error, info, warn};

use super::stream::{Fallbacks, listen_socket, upstream_proto};
use super::{Bound, Runtime, forward_routes, reject_local_loops};
use crate::config::{Plan, Proto};
use crate::health::Monitor;
use crate::shard::engine::{ListenerSpec, ReloadListener, ShardReload};
use crate::shard::event_loop::Command;
use crate::shard::udp::{UdpListenerSpec, UdpReload, UdpReloadListener};
use crate::stats::{Counter, ShardStats};
use crate::sys::socket::{self, ListenKind};
use crate::time::millis;

/// What makes two listeners of two configurations the same one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Key {
    /// `tcp`/`udp` for a forwarding listener, `udp-echo` or the TCP echo
    /// mode's kind otherwise.
    kind: &'static str,
    /// As configured (port 0 included), not as bound.
    listen: SocketAddr,
}

/// A listener the shards accept or receive on: each shard's socket.
#[derive(Debug)]
struct Held {
    key: Key,
    name: String,
    addr: SocketAddr,
    /// By shard; each shard owns its descriptor, this only names it.
    fds: Vec<RawFd>,
}

/// The control thread's reload state: the configuration in force, the
/// listeners' sockets, the reload counters and the counters of health
/// checks of upstreams a reload removed.
#[derive(Debug)]
pub(super) struct State {
    plan: Plan,
    held: Vec<Held>,
    /// The UDP listeners, in `udp_keys` order.
    udp_held: Vec<Held>,
    /// Whether the shards have datagram buffers: the process started with
    /// a UDP listener (they are allocated only then).
    udp_ring: bool,
    reloads: u64,
    failed: u64,
    retired: ShardStats,
    /// `mptcp_fallback`: listeners and upstream sockets made with TCP
    /// because the kernel made no MPTCP socket (at start and reloads).
    mptcp_fallback: u64,
}

/// Every TCP listener of `plan` in the shards' order (forwarding, then echo).
fn tcp_keys(plan: &Plan) -> Vec<(Key, String)> {
    let forward = plan.tcp.iter().map(|t| {
        let key = Key {
            kind: "tcp",
            listen: t.listen,
        };
        (key, t.name.clone())
    });
    let echo = plan.echo.iter().filter(|e| e.proto == Proto::Tcp).map(|e| {
        let key = Key {
            kind: e.mode.kind(),
            listen: e.listen,
        };
        (key, e.name.clone())
    });
    forward.chain(echo).collect()
}

/// Every UDP listener of `plan` in the shards' order (forwarding, then echo).
fn udp_keys(plan: &Plan) -> Vec<(Key, String)> {
    let forward = plan.udp.iter().map(|u| {
        let key = Key {
            kind: "udp",
            listen: u.listen,
        };
        (key, u.name.clone())
    });
    let echo = udp_echo(plan).into_iter().map(|e| {
        let key = Key {
            kind: "udp-echo",
            listen: e.listen,
        };
        (key, e.name.clone())
    });
    forward.chain(echo).collect()
}

/// What `keys` hold: per listener, each shard's socket (`fds[shard][j]`)
/// and the address `bound` says it is bound to.
fn held_of(keys: Vec<(Key, String)>, fds: &[Vec<RawFd>], bound: &[Bound]) -> Vec<Held> {
    keys.into_iter()
        .enumerate()
        .map(|(j, (key, name))| Held {
            addr: bound
                .iter()
                .find(|b| b.kind == key.kind && b.name == name)
                .map_or(key.listen, |b| b.addr),
            fds: fds.iter().filter_map(|l| l.get(j).copied()).collect(),
            key,
            name,
        })
        .collect()
}

impl State {
    /// The state of a runtime started on `plan` with `listeners` (each
    /// shard's TCP listeners, in `tcp_keys` order) bound at `bound`.
    pub(super) fn new(
        plan: &Plan,
        listeners: &[Vec<(ListenerSpec, OwnedFd)>],
        udp: &[Vec<(UdpListenerSpec, OwnedFd, bool)>],
        bound: &[Bound],
    ) -> State {
        let tcp_fds: Vec<Vec<RawFd>> = listeners
            .iter()
            .map(|l| l.iter().map(|(_, fd)| fd.as_raw_fd()).collect())
            .collect();
        let udp_fds: Vec<Vec<RawFd>> = udp
            .iter()
            .map(|l| l.iter().map(|(_, fd, _)| fd.as_raw_fd()).collect())
            .collect();
        State {
            plan: plan.clone(),
            held: held_of(tcp_keys(plan), &tcp_fds, bound),
            udp_held: held_of(udp_keys(plan), &udp_fds, bound),
            udp_ring: plan.has_udp(),
            reloads: 0,
            failed: 0,
            retired: ShardStats::default(),
            mptcp_fallback: 0,
        }
    }

    /// Counts fallbacks from MPTCP to TCP found while resolving sockets.
    pub(super) fn count_mptcp_fallback(&mut self, n: Fallbacks) {
        self.mptcp_fallback += n.0;
    }

    /// The configuration in force.
    pub(super) fn plan(&self) -> &Plan {
        &self.plan
    }

    /// Adds `reloads`, `reload_failed` and the retired health counters.
    pub(super) fn add_to(&self, total: &mut ShardStats) {
        total.shard.add(Counter::Reloads, self.reloads);
        total.shard.add(Counter::ReloadFailed, self.failed);
        total.shard.add(Counter::MptcpFallback, self.mptcp_fallback);
        total.merge(&self.retired);
    }
}

/// What a process started without a UDP listener cannot add: its shards
/// have no datagram buffers.
const UDP_WITHOUT_RING: &str =
    "UDP listeners (the process started without one, so its shards have no datagram buffers)";

/// The keys whose change needs a restart or an upgrade (SIGUSR2);
/// `udp_ring`: whether the shards have datagram buffers.
fn restart_keys(old: &Plan, new: &Plan, udp_ring: bool) -> Vec<&'static str> {
    let (o, n) = (&old.runtime, &new.runtime);
    let checks = [
        ("runtime.shards", o.shards != n.shards),
        ("runtime.cpus", o.cpus != n.cpus),
        ("runtime.buffer_size", o.buffer_size != n.buffer_size),
        (
            "runtime.buffers_per_shard",
            o.buffers_per_shard != n.buffers_per_shard,
        ),
        (
            "runtime.buffers_per_direction",
            o.buffers_per_direction != n.buffers_per_direction,
        ),
        ("runtime.ring_entries", o.ring_entries != n.ring_entries),
        (
            "runtime.stats_interval",
            o.stats_interval != n.stats_interval,
        ),
        ("runtime.max_datagram", o.max_datagram != n.max_datagram),
        (
            "runtime.udp_buffers_per_shard",
            o.udp_buffers_per_shard != n.udp_buffers_per_shard,
        ),
        ("runtime.busy_poll", o.busy_poll != n.busy_poll),
        ("runtime.splice", o.splice != n.splice),
        ("runtime.max_pipes", o.max_pipes != n.max_pipes),
        ("runtime.pipe_size", o.pipe_size != n.pipe_size),
        (UDP_WITHOUT_RING, !udp_ring && new.has_udp()),
        ("[log]", old.log != new.log),
        ("[admin]", old.admin != new.admin),
        (KEPT_MPTCP, kept_socket_changed(old, new, |t| t.mptcp)),
        (KEPT_TPROXY, kept_socket_changed(old, new, is_tproxy)),
        (KEPT_UDP_TPROXY, kept_udp_transparent_changed(old, new)),
    ];
    checks
        .into_iter()
        .filter(|(_, changed)| *changed)
        .map(|(k, _)| k)
        .collect()
}

/// `mptcp` and `transparent = "tproxy"` are properties of a listener's
/// sockets (IPPROTO_MPTCP, IP_TRANSPARENT), which a listener kept by a
/// reload keeps; an upgrade hands the same sockets over.
const KEPT_MPTCP: &str = "mptcp of a [[tcp]] listener that stays (its sockets keep their protocol)";
const KEPT_TPROXY: &str = "transparent = \"tproxy\" of a [[tcp]] listener that stays (its sockets keep IP_TRANSPARENT as made)";

const KEPT_UDP_TPROXY: &str = "transparent = \"tproxy\" of a [[udp]] listener that stays (its sockets keep IP_TRANSPARENT and IP_RECVORIGDSTADDR as made)";

/// Whether a `[[udp]]` listener of `new` that keeps its sockets turns
/// `transparent` on or off.
fn kept_udp_transparent_changed(old: &Plan, new: &Plan) -> bool {
    new.udp.iter().any(|n| {
        old.udp
            .iter()
            .find(|o| o.listen == n.listen)
            .is_some_and(|o| o.transparent.is_some() != n.transparent.is_some())
    })
}

fn is_tproxy(t: &crate::config::TcpListenerPlan) -> bool {
    use crate::config::forward::{TcpKind, TransparentMode};
    matches!(&t.kind, TcpKind::Transparent(p) if p.mode == TransparentMode::Tproxy)
}

/// Whether a `[[tcp]]` listener of `new` that keeps its sockets (same
/// configured address as one of `old`) wants them made differently.
fn kept_socket_changed<T: PartialEq>(
    old: &Plan,
    new: &Plan,
    made: impl Fn(&crate::config::TcpListenerPlan) -> T,
) -> bool {
    new.tcp.iter().any(|n| {
        old.tcp
            .iter()
            .find(|o| o.listen == n.listen)
            .is_some_and(|o| made(o) != made(n))
    })
}

fn udp_echo(plan: &Plan) -> Vec<&crate::config::EchoPlan> {
    plan.echo.iter().filter(|e| e.proto == Proto::Udp).collect()
}

/// `new` with what cannot change live taken from `old` (see `restart_keys`).
fn effective_plan(old: &Plan, new: Plan, udp_ring: bool) -> Plan {
    let mut plan = new;
    let drain_timeout = plan.runtime.drain_timeout;
    plan.runtime = old.runtime.clone();
    plan.runtime.drain_timeout = drain_timeout;
    if !udp_ring {
        plan.udp = old.udp.clone();
        plan.echo.retain(|e| e.proto == Proto::Tcp);
        plan.echo.extend(udp_echo(old).into_iter().cloned());
    }
    plan.log = old.log.clone();
    plan.admin = old.admin.clone();
    // A kept listener's sockets keep their protocol: so does its plan, so
    // the next reload still sees the change as pending (KEPT_MPTCP).
    for t in &mut plan.tcp {
        if let Some(o) = old.tcp.iter().find(|o| o.listen == t.listen) {
            t.mptcp = o.mptcp;
        }
    }
    // Likewise a kept UDP listener stays transparent or not (KEPT_UDP_TPROXY).
    for u in &mut plan.udp {
        if let Some(o) = old.udp.iter().find(|o| o.listen == u.listen)
            && o.transparent.is_some() != u.transparent.is_some()
        {
            *u = o.clone();
        }
    }
    plan
}

/// Where a listener of the new configuration comes from.
enum Source {
    /// `held[j]`.
    Kept(usize),
    /// Bound for this reload: one socket per shard.
    Added(Vec<OwnedFd>, SocketAddr),
}

/// Each shard's listener specs (fd not set yet) and the route table, as
/// `Runtime::start` builds them.
fn shard_specs(
    plan: &Plan,
    n: usize,
    fallbacks: &mut Fallbacks,
) -> Result<(Vec<Vec<ListenerSpec>>, Vec<crate::shard::engine::RouteSpec>), String> {
    let mut routes = Vec::new();
    let mut specs: Vec<Vec<ListenerSpec>> = (0..n).map(|_| Vec::new()).collect();
    let guard = super::loop_guard(plan);
    for t in &plan.tcp {
        let upstream = upstream_proto(t, fallbacks);
        let access_log = plan.log.access.is_some();
        let (route, front) = forward_routes(t, &mut routes, access_log, &guard, upstream)
            .map_err(|e| e.to_string())?;
        for (shard, list) in specs.iter_mut().enumerate() {
            list.push(super::specs::forward_spec(t, route, &front, shard, n));
        }
    }
    for e in plan.echo.iter().filter(|e| e.proto == Proto::Tcp) {
        for list in &mut specs {
            list.push(super::specs::echo_spec(e));
        }
    }
    Ok((specs, routes))
}

/// What a reload did, for its log line.
struct Applied {
    kept: usize,
    added: Vec<String>,
    removed: Vec<String>,
}

/// Name and address of each listener held.
fn names(held: &[Held]) -> Vec<(String, SocketAddr)> {
    held.iter().map(|h| (h.name.clone(), h.addr)).collect()
}

/// Each shard's TCP listeners of the reload, with their sockets.
fn tcp_parts(placed: &Placed, specs: &[Vec<ListenerSpec>]) -> Vec<Vec<ReloadListener>> {
    let mut parts: Vec<Vec<ReloadListener>> = specs.iter().map(|_| Vec::new()).collect();
    for (j, (h, &added)) in placed.held.iter().zip(&placed.added).enumerate() {
        for (shard, part) in parts.iter_mut().enumerate() {
            let Some(mut spec) = specs.get(shard).and_then(|s| s.get(j)).cloned() else {
                continue;
            };
            spec.fd = h.fds.get(shard).copied().unwrap_or(-1);
            part.push(if added {
                ReloadListener::Add(spec)
            } else {
                ReloadListener::Keep(spec)
            });
        }
    }
    parts
}

/// Each shard's UDP listeners of the reload, with their sockets and bound
/// addresses.
fn udp_parts(placed: &Placed, specs: &[Vec<UdpListenerSpec>]) -> Vec<Vec<UdpReloadListener>> {
    let mut parts: Vec<Vec<UdpReloadListener>> = specs.iter().map(|_| Vec::new()).collect();
    for (j, (h, &added)) in placed.held.iter().zip(&placed.added).enumerate() {
        for (shard, part) in parts.iter_mut().enumerate() {
            let Some(mut spec) = specs.get(shard).and_then(|s| s.get(j)).cloned() else {
                continue;
            };
            spec.fd = h.fds.get(shard).copied().unwrap_or(-1);
            spec.listen = h.addr;
            part.push(if added {
                UdpReloadListener::Add(spec)
            } else {
                UdpReloadListener::Keep(spec)
            });
        }
    }
    parts
}

/// The listeners of the new configuration, matched and bound: what they
/// hold, and per listener its sockets by shard and whether it is new.
struct Placed {
    held: Vec<Held>,
    added: Vec<bool>,
    /// Copies of the sockets bound now, for a later SIGUSR2 upgrade.
    handed: Vec<(String, SocketAddr, Vec<OwnedFd>)>,
}

/// The socket kind a listener of `key` binds.
fn listen_kind(key: &Key) -> ListenKind {
    match key.kind {
        "tcp" => ListenKind::Tcp,
        "udp" => ListenKind::Udp,
        "udp-echo" => ListenKind::UdpEcho,
        _ => ListenKind::Echo,
    }
}

impl Runtime {
    /// Binds what is new, matches what stays (in `held`): the sources of
    /// `keys`, in order.
    fn sources(
        &self,
        held: &[Held],
        keys: &[(Key, String)],
        plan: &Plan,
        fallbacks: &mut Fallbacks,
    ) -> Result<Vec<Source>, String> {
        let n = self.shards.len();
        let mut taken = vec![false; held.len()];
        let mut sources = Vec::with_capacity(keys.len());
        for (key, name) in keys {
            let found = held
                .iter()
                .enumerate()
                .position(|(j, h)| h.key == *key && !taken.get(j).copied().unwrap_or(true));
            if let Some(j) = found {
                if let Some(t) = taken.get_mut(j) {
                    *t = true;
                }
                sources.push(Source::Kept(j));
                continue;
            }
            let kind = listen_kind(key);
            let bound = match kind {
                ListenKind::Udp | ListenKind::UdpEcho => {
                    socket::bind_udp_listeners(kind, name, key.listen, n).and_then(|(fds, a)| {
                        match plan.udp.iter().find(|u| u.name == *name) {
                            Some(u) if matches!(kind, ListenKind::Udp) => {
                                super::transparent_udp(u, &fds, a)?
                            }
                            _ => {}
                        }
                        Ok((fds, a))
                    })
                }
                ListenKind::Tcp => match plan.tcp.iter().find(|t| t.name == *name) {
                    Some(t) => listen_socket(t, fallbacks)
                        .and_then(|how| socket::bind_stream_listeners(name, key.listen, n, how)),
                    None => socket::bind_listeners(kind, name, key.listen, n),
                },
                ListenKind::Echo => socket::bind_listeners(kind, name, key.listen, n),
            };
            let (fds, addr) = bound.map_err(|e| e.to_string())?;
            sources.push(Source::Added(fds, addr));
        }
        Ok(sources)
    }

    /// Takes each listener of `keys` from its source: a kept one's sockets
    /// from `old` (what is left there was removed), an added one's sockets
    /// handed to the shards (copies kept for an upgrade).
    fn place(
        &self,
        keys: Vec<(Key, String)>,
        sources: Vec<Source>,
        old: &mut [Option<Held>],
        applied: &mut Applied,
    ) -> Placed {
        let mut placed = Placed {
            held: Vec::with_capacity(keys.len()),
            added: Vec::with_capacity(keys.len()),
            handed: Vec::new(),
        };
        for ((key, name), source) in keys.into_iter().zip(sources) {
            let (addr, fds) = match source {
                Source::Kept(i) => {
                    applied.kept += 1;
                    placed.added.push(false);
                    let h = old.get_mut(i).and_then(Option::take);
                    h.map_or((key.listen, Vec::new()), |h| (h.addr, h.fds))
                }
                Source::Added(owned, addr) => {
                    placed.added.push(true);
                    applied.added.push(format!("'{name}' on {addr}"));
                    match owned.iter().map(OwnedFd::try_clone).collect() {
                        Ok(copies) => placed.handed.push((name.clone(), addr, copies)),
                        Err(e) => warn!(
                            "SIGHUP: listener '{name}' on {addr}: no copy of its sockets kept for a SIGUSR2 upgrade ({e}); an upgrade binds it anew"
                        ),
                    }
                    let live = self.shards.iter().map(|s| s.exited.is_none());
                    // An exited shard's socket is closed here (dropped).
                    let fds = owned
                        .into_iter()
                        .zip(live)
                        .map(|(fd, live)| if live { fd.into_raw_fd() } else { -1 })
                        .collect();
                    (addr, fds)
                }
            };
            placed.held.push(Held {
                key,
                name,
                addr,
                fds,
            });
        }
        placed
    }

    /// Applies `new` (see the module comment); `Err` says why nothing changed.
    fn apply_reload(&mut self, new: Plan) -> Result<Applied, String> {
        let udp_ring = self.reload.udp_ring;
        let restart = restart_keys(&self.reload.plan, &new, udp_ring);
        let plan = effective_plan(&self.reload.plan, new, udp_ring);
        reject_local_loops(&plan).map_err(|e| e.to_string())?;
        let n = self.shards.len();
        let keys = tcp_keys(&plan);
        let ukeys = udp_keys(&plan);
        let mut fallbacks = Fallbacks::default();
        let (specs, routes) = shard_specs(&plan, n, &mut fallbacks)?;
        let (uspecs, uroutes) = super::specs::udp_specs(&plan, n);
        let sources = self.sources(&self.reload.held, &keys, &plan, &mut fallbacks)?;
        // A bind error here drops (closes) the TCP sockets bound above.
        let usources = self.sources(&self.reload.udp_held, &ukeys, &plan, &mut fallbacks)?;
        self.reload.count_mptcp_fallback(fallbacks);
        if !restart.is_empty() {
            warn!(
                "SIGHUP: {} changed in the file; a running process cannot change {}: they keep their running values until a restart or an upgrade (SIGUSR2); the rest of the file applies",
                restart.join(", "),
                if restart.len() == 1 { "it" } else { "them" }
            );
        }
        // From here on nothing fails: the shards get their parts.
        let mut applied = Applied {
            kept: 0,
            added: Vec::new(),
            removed: Vec::new(),
        };
        let mut old: Vec<Option<Held>> = std::mem::take(&mut self.reload.held)
            .into_iter()
            .map(Some)
            .collect();
        let tcp = self.place(keys, sources, &mut old, &mut applied);
        applied.removed = old.into_iter().flatten().map(|h| h.name).collect();
        let mut old: Vec<Option<Held>> = std::mem::take(&mut self.reload.udp_held)
            .into_iter()
            .map(Some)
            .collect();
        let udp = self.place(ukeys, usources, &mut old, &mut applied);
        applied
            .removed
            .extend(old.into_iter().flatten().map(|h| h.name));
        for u in plan.udp.iter().filter(|u| {
            udp.held
                .iter()
                .zip(&udp.added)
                .any(|(h, added)| *added && h.key.kind == "udp" && h.key.listen == u.listen)
        }) {
            super::session_buffer(u);
        }
        let parts = tcp_parts(&tcp, &specs);
        let uparts = udp_parts(&udp, &uspecs);
        self.reload.held = tcp.held;
        self.reload.udp_held = udp.held;
        self.handover
            .reloaded(Proto::Tcp, &names(&self.reload.held), tcp.handed);
        self.handover
            .reloaded(Proto::Udp, &names(&self.reload.udp_held), udp.handed);
        let drain_ms = millis(plan.runtime.drain_timeout);
        let resolver = Arc::new(super::specs::resolver_config(&plan));
        for ((s, part), upart) in self.shards.iter().zip(parts).zip(uparts) {
            let cmd = Command::Reload(Arc::new(ShardReload {
                listeners: part,
                routes: routes.clone(),
                drain_ms,
                udp: UdpReload {
                    listeners: upart,
                    routes: uroutes.clone(),
                },
            }));
            if s.exited.is_none() && s.commands.send(cmd).is_ok() {
                // The resolver's part follows in the same wakeup.
                let _ = s.commands.send(Command::Resolver(resolver.clone()));
                let _ = s.doorbell.notify();
            }
        }
        self.rebuild_health(&plan);
        self.rebound(&plan);
        self.reload.plan = plan;
        Ok(applied)
    }

    /// A new health checker for `plan`, carrying the verdicts of the
    /// upstreams that stay; the shards hear which of those start down.
    fn rebuild_health(&mut self, plan: &Plan) {
        match Monitor::rebuild(plan, self.health.take(), &mut self.reload.retired) {
            Ok((monitor, down)) => {
                self.health = monitor;
                for upstream in down {
                    self.send_all(Command::UpstreamHealth {
                        upstream,
                        up: false,
                    });
                }
            }
            Err(e) => error!("SIGHUP: {e}; upstreams are not health checked until a restart"),
        }
    }

    /// `bound` after a reload: the listeners now held, in start-up order
    /// (TCP forwarding, UDP, echo).
    fn rebound(&mut self, plan: &Plan) {
        let line = |h: &Held| Bound {
            kind: h.key.kind,
            name: h.name.clone(),
            addr: h.addr,
            upstreams: match h.key.kind {
                "tcp" => plan
                    .tcp
                    .iter()
                    .find(|t| t.name == h.name)
                    .map(|t| t.upstreams.clone()),
                "udp" => plan
                    .udp
                    .iter()
                    .find(|u| u.name == h.name)
                    .map(|u| u.upstreams.clone()),
                _ => None,
            }
            .unwrap_or_default(),
        };
        let tcp = self.reload.held.iter().map(line);
        let (forward, echo): (Vec<Bound>, Vec<Bound>) = tcp.partition(|b| b.kind == "tcp");
        let udp: Vec<Bound> = self.reload.udp_held.iter().map(line).collect();
        let (udp_forward, udp_echo): (Vec<Bound>, Vec<Bound>) =
            udp.into_iter().partition(|b| b.kind == "udp");
        self.bound = forward
            .into_iter()
            .chain(udp_forward)
            .chain(udp_echo)
            .chain(echo)
            .collect();
    }
}

/// SIGHUP: re-read and apply the configuration; a failure leaves the
/// running one in force and is counted in `reload_failed`.
pub(super) fn on_sighup(rt: &mut Runtime, reread: &dyn Fn() -> Result<Plan, String>) {
    info!("SIGHUP: reloading the configuration");
    match reread().and_then(|plan| rt.apply_reload(plan)) {
        Ok(a) => {
            rt.reload.reloads += 1;
            let list = |v: &[String]| {
                if v.is_empty() {
                    "none".to_owned()
                } else {
                    v.join(", ")
                }
            };
            info!(
                "SIGHUP: configuration reloaded: {} listener(s) kept (their sockets and queues too), added: {}; removed: {} (their open TCP connections get drain_timeout = {}; their UDP sessions end once they owe no reply or are quiet); open connections and sessions keep the settings they started with",
                a.kept,
                list(&a.added),
                list(&a.removed),
                crate::config::units::format_duration(rt.reload.plan.runtime.drain_timeout)
            );
        }
        Err(e) => {
            rt.reload.failed += 1;
            error!(
                "SIGHUP: reload failed, the running configuration stays in force (counted in reload_failed): {e}"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{HostFacts, Overrides};

    fn plan(text: &str) -> Plan {
        let host = HostFacts {
            available_cpus: vec![0, 1],
        };
        Plan::resolve(Some(("ringfwd.toml", text)), &Overrides::default(), &host)
            .expect("a valid file")
    }

    const TCP: &str =
        "[[tcp]]\nname = \"t\"\nlisten = \"127.0.0.1:1\"\nupstreams = [\"127.0.0.1:2\"]\n";
    const UDP: &str =
        "[[udp]]\nname = \"u\"\nlisten = \"127.0.0.1:3\"\nupstreams = [\"127.0.0.1:4\"]\n";

    #[test]
    fn udp_listeners_reload_live_unless_the_process_has_no_datagram_buffers() {
        let with_udp = plan(&format!("{TCP}{UDP}"));
        let other_udp = plan(&format!("{TCP}{}", UDP.replace(":4", ":5")));
        let tcp_only = plan(TCP);
        // Started with a UDP listener: changing, removing or adding one is live.
        assert!(restart_keys(&with_udp, &other_udp, true).is_empty());
        assert!(restart_keys(&with_udp, &tcp_only, true).is_empty());
        assert!(restart_keys(&tcp_only, &with_udp, true).is_empty());
        assert_eq!(
            effective_plan(&with_udp, other_udp.clone(), true).udp,
            other_udp.udp
        );
        assert!(
            effective_plan(&with_udp, tcp_only.clone(), true)
                .udp
                .is_empty()
        );
        // Started without one: no datagram buffers, so adding one waits.
        assert_eq!(
            restart_keys(&tcp_only, &with_udp, false),
            vec![UDP_WITHOUT_RING]
        );
        assert!(effective_plan(&tcp_only, with_udp, false).udp.is_empty());
    }

    #[test]
    fn socket_properties_of_a_kept_listener_need_a_restart() {
        use crate::config::forward::TransparentPlan;
        use crate::config::forward::{DestinationPolicy, Mptcp, TcpKind, TransparentMode};
        let old = plan(TCP);
        let mut mptcp = plan(TCP);
        mptcp.tcp[0].mptcp = Mptcp::Preferred;
        assert_eq!(restart_keys(&old, &mptcp, true), vec![KEPT_MPTCP]);
        let running = effective_plan(&old, mptcp.clone(), true);
        assert_eq!(running.tcp[0].mptcp, Mptcp::Off);
        let mut tproxy = plan(TCP);
        tproxy.tcp[0].kind = TcpKind::Transparent(TransparentPlan {
            mode: TransparentMode::Tproxy,
            policy: DestinationPolicy {
                allow: Vec::new(),
                deny: Vec::new(),
                ports: Vec::new(),
            },
        });
        assert_eq!(restart_keys(&old, &tproxy, true), vec![KEPT_TPROXY]);
        // A listener on another address is bound anew, as asked.
        let mut moved = mptcp.clone();
        moved.tcp[0].listen = "127.0.0.1:9".parse().unwrap();
        assert!(restart_keys(&old, &moved, true).is_empty());
        // upstream_mptcp is the route's, which a reload replaces.
        let mut upstream = plan(TCP);
        upstream.tcp[0].upstream_mptcp = true;
        assert!(restart_keys(&old, &upstream, true).is_empty());
    }

    #[test]
    fn a_kept_udp_listener_turning_transparent_needs_a_restart_and_stays_as_it_was() {
        let forward = plan(UDP);
        let tproxy =
            plan("[[udp]]\nname = \"u\"\nlisten = \"127.0.0.1:3\"\ntransparent = \"tproxy\"\n");
        assert_eq!(restart_keys(&forward, &tproxy, true), vec![KEPT_UDP_TPROXY]);
        assert_eq!(restart_keys(&tproxy, &forward, true), vec![KEPT_UDP_TPROXY]);
        // Its sockets lack (or have) IP_RECVORIGDSTADDR: it keeps forwarding as before.
        assert_eq!(
            effective_plan(&forward, tproxy.clone(), true).udp,
            forward.udp
        );
        assert_eq!(
            effective_plan(&tproxy, forward.clone(), true).udp,
            tproxy.udp
        );
        // A transparent listener's policy changes live.
        let narrower = plan(
            "[[udp]]\nname = \"u\"\nlisten = \"127.0.0.1:3\"\ntransparent = \"tproxy\"\nports = [53]\n",
        );
        assert!(restart_keys(&tproxy, &narrower, true).is_empty());
        assert_eq!(
            effective_plan(&tproxy, narrower.clone(), true).udp,
            narrower.udp
        );
    }
}
