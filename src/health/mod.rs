//! Active health checks: one checker thread for every shard (Envoy's
//! main-thread checker, not a checker per shard, so an upstream sees one
//! check per interval however many shards run), TCP connect checks with
//! NGINX/HAProxy rise/fall, and the control thread's view of the result.
//!
//! The checker sends every check's outcome to the control thread
//! ([`Monitor::poll`]), which counts it, keeps each upstream's state and
//! reason for the stats log and the admin endpoint, logs every change, and
//! returns the changes for the shards (as `Command::UpstreamHealth`).
//!
//! An upstream is checked per section entry: the same address in two
//! routes (or listeners) is two checked upstreams, each with its section's
//! `health_check`, as each is its own `UpstreamId` in the shards' tables.

mod checker;
mod schedule;
mod state;

use std::net::SocketAddr;
use std::sync::mpsc::{self, Receiver};
use std::time::SystemTime;

use tracing::{info, warn};

use crate::config::{HealthCheck, Plan, SendProxy};
use crate::front::proxy::{V2_LOCAL_LEN, write_v2_local};
use crate::stats::{Counter, Counters, ListenerStats, ShardStats, UpstreamStats};
use crate::sys::host::HostError;
use crate::upstream::UpstreamId;

use self::checker::{Checker, Probe};
#[cfg(test)]
use self::state::Failure;
pub(crate) use self::state::{Change, Outcome, State};

/// One checked upstream: which shard upstream it is, and how to check it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct CheckTarget {
    pub id: UpstreamId,
    pub listener: String,
    pub addr: SocketAddr,
    pub check: HealthCheck,
    pub hello: Hello,
}

/// What a check sends once connected, before it closes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Hello {
    /// Nothing: connect, close.
    Nothing,
    /// `send_proxy = "v1"`: `PROXY UNKNOWN\r\n`, v1's "the proxy's own
    /// connection" (an upstream that requires a header would refuse none).
    V1Unknown,
    /// `send_proxy = "v2"`: the v2 LOCAL header.
    V2Local,
}

impl Hello {
    fn of(send_proxy: SendProxy) -> Hello {
        match send_proxy {
            SendProxy::Off => Hello::Nothing,
            SendProxy::V1 => Hello::V1Unknown,
            SendProxy::V2 => Hello::V2Local,
        }
    }

    /// The bytes to send (empty for `Nothing`).
    pub(crate) fn bytes(self) -> Vec<u8> {
        match self {
            Hello::Nothing => Vec::new(),
            Hello::V1Unknown => b"PROXY UNKNOWN\r\n".to_vec(),
            Hello::V2Local => {
                let mut out = [0u8; V2_LOCAL_LEN];
                let n = write_v2_local(&mut out);
                out.get(..n).unwrap_or_default().to_vec()
            }
        }
    }
}

/// Every upstream with a `health_check`, with the `UpstreamId` the shards
/// give it: their table is built from the plan in route order (each
/// `[[tcp]]`'s own upstreams, then each of its `[[tcp.routes]]`'s, in list
/// order), so counting the same way here gives the same ids.
pub(crate) fn targets(plan: &Plan) -> Vec<CheckTarget> {
    let mut out = Vec::new();
    let mut next = 0u32;
    for t in &plan.tcp {
        let routes = t.sni.iter().flat_map(|s| s.routes.iter());
        let sections = std::iter::once((&t.upstreams, t.health_check))
            .chain(routes.map(|r| (&r.upstreams, r.health_check)));
        for (upstreams, check) in sections {
            for &addr in upstreams {
                let id = UpstreamId(next);
                next = next.saturating_add(1);
                if let Some(check) = check {
                    out.push(CheckTarget {
                        id,
                        listener: t.name.clone(),
                        addr,
                        check,
                        hello: Hello::of(t.send_proxy),
                    });
                }
            }
        }
    }
    out
}

/// The control thread's view of one checked upstream (for `/status` and
/// `ringfwd_upstream_up`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct UpstreamHealth {
    pub id: UpstreamId,
    pub listener: String,
    pub upstream: SocketAddr,
    pub up: bool,
    /// The last change (the checker's start while it never changed).
    pub since: SystemTime,
    pub reason: String,
}

/// One check's outcome as the checker reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Event {
    /// Index into the targets.
    pub target: usize,
    pub outcome: Outcome,
    /// The state change this check completed.
    pub change: Option<Change>,
}

/// What the control thread knows: each target's state and counters.
#[derive(Debug)]
pub(crate) struct View {
    targets: Vec<CheckTarget>,
    health: Vec<UpstreamHealth>,
    counters: Vec<Counters>,
}

impl View {
    pub(crate) fn new(targets: Vec<CheckTarget>, now: SystemTime) -> View {
        let health = targets
            .iter()
            .map(|t| UpstreamHealth {
                id: t.id,
                listener: t.listener.clone(),
                upstream: t.addr,
                up: true,
                since: now,
                reason: "up at start, before any check".to_owned(),
            })
            .collect();
        let counters = vec![Counters::default(); targets.len()];
        View {
            targets,
            health,
            counters,
        }
    }

    /// Counts one check and records (and logs) its change; returns the
    /// change for the shards.
    pub(crate) fn apply(&mut self, ev: &Event, now: SystemTime) -> Option<(UpstreamId, bool)> {
        let (Some(target), Some(health), Some(counters)) = (
            self.targets.get(ev.target),
            self.health.get_mut(ev.target),
            self.counters.get_mut(ev.target),
        ) else {
            return None;
        };
        counters.inc(Counter::HealthChecks);
        if matches!(ev.outcome, Outcome::Failed(_)) {
            counters.inc(Counter::HealthCheckFailures);
        }
        let change = ev.change.as_ref()?;
        let up = change.to == State::Up;
        let (listener, addr, reason) = (&target.listener, target.addr, &change.reason);
        if up {
            counters.inc(Counter::UpstreamUp);
            info!("tcp listener '{listener}': upstream {addr} is up: {reason}");
        } else {
            counters.inc(Counter::UpstreamDown);
            warn!("tcp listener '{listener}': upstream {addr} is down: {reason}");
        }
        health.up = up;
        health.since = now;
        health.reason.clone_from(reason);
        Some((target.id, up))
    }

    #[cfg(test)]
    pub(crate) fn health(&self) -> &[UpstreamHealth] {
        &self.health
    }

    /// Adds the check counters to `stats`: each to its listener (so the
    /// totals have them) and to its upstream's line.
    pub(crate) fn add_to(&self, stats: &mut ShardStats) {
        for (t, c) in self.targets.iter().zip(&self.counters) {
            match stats.listeners.iter_mut().find(|l| l.name == t.listener) {
                Some(l) => l.counters.merge(c),
                None => stats.listeners.push(ListenerStats {
                    name: t.listener.clone(),
                    counters: c.clone(),
                    ..ListenerStats::default()
                }),
            }
            let name = t.addr.to_string();
            let line = stats
                .upstreams
                .iter_mut()
                .find(|u| u.listener == t.listener && u.upstream == name);
            match line {
                Some(u) => u.counters.merge(c),
                None => stats.upstreams.push(UpstreamStats {
                    listener: t.listener.clone(),
                    upstream: name,
                    counters: c.clone(),
                }),
            }
        }
    }
}

/// The checker thread and the control thread's side of it.
pub(crate) struct Monitor {
    view: View,
    events: Receiver<Event>,
    /// Stopped (and joined) when the monitor is dropped.
    _checker: Checker,
}

impl Monitor {
    /// Starts the checker when any upstream has a `health_check`.
    pub(crate) fn start(plan: &Plan) -> Result<Option<Monitor>, HostError> {
        let targets = targets(plan);
        if targets.is_empty() {
            return Ok(None);
        }
        let view = View::new(targets, SystemTime::now());
        Monitor::spawn(view)
    }

    /// After a reload: a checker for `plan`'s targets. A target that stays
    /// (same listener, same address) keeps its verdict and its counters;
    /// the counters of those that went are added to `retired`, so no total
    /// goes backwards. Returns the monitor and the targets that start down
    /// (the shards' new balancers start every upstream up).
    pub(crate) fn rebuild(
        plan: &Plan,
        old: Option<Monitor>,
        retired: &mut ShardStats,
    ) -> Result<(Option<Monitor>, Vec<UpstreamId>), HostError> {
        let mut view = View::new(targets(plan), SystemTime::now());
        if let Some(old) = old {
            // The old checker stops here (dropped), before the new one starts.
            let old = old.view;
            let mut taken = vec![false; old.targets.len()];
            for (i, t) in view.targets.iter().enumerate() {
                let found = old.targets.iter().enumerate().position(|(j, o)| {
                    !taken.get(j).copied().unwrap_or(true)
                        && o.listener == t.listener
                        && o.addr == t.addr
                });
                let Some(j) = found else { continue };
                if let Some(tk) = taken.get_mut(j) {
                    *tk = true;
                }
                if let (Some(h), Some(oh)) = (view.health.get_mut(i), old.health.get(j)) {
                    h.up = oh.up;
                    h.since = oh.since;
                    h.reason.clone_from(&oh.reason);
                }
                if let (Some(c), Some(oc)) = (view.counters.get_mut(i), old.counters.get(j)) {
                    c.clone_from(oc);
                }
            }
            let gone = View {
                targets: keep_untaken(old.targets, &taken),
                health: keep_untaken(old.health, &taken),
                counters: keep_untaken(old.counters, &taken),
            };
            gone.add_to(retired);
        }
        let down = view.health.iter().filter(|h| !h.up).map(|h| h.id).collect();
        if view.targets.is_empty() {
            return Ok((None, Vec::new()));
        }
        Ok((Monitor::spawn(view)?, down))
    }

    fn spawn(view: View) -> Result<Option<Monitor>, HostError> {
        let probes = view
            .targets
            .iter()
            .zip(&view.health)
            .map(|(t, h)| Probe {
                addr: t.addr,
                check: t.check,
                hello: t.hello.bytes(),
                start: if h.up { State::Up } else { State::Down },
            })
            .collect();
        let (tx, events) = mpsc::channel();
        let checker = Checker::spawn(probes, tx).map_err(|e| HostError::HealthChecker {
            error: e.to_string(),
        })?;
        info!(
            "health checker: {} upstream(s) checked by one thread for every shard",
            view.targets.len()
        );
        Ok(Some(Monitor {
            view,
            events,
            _checker: checker,
        }))
    }

    /// Takes the checker's reports; returns the changes for the shards.
    pub(crate) fn poll(&mut self) -> Vec<(UpstreamId, bool)> {
        let now = SystemTime::now();
        let mut changes = Vec::new();
        while let Ok(ev) = self.events.try_recv() {
            changes.extend(self.view.apply(&ev, now));
        }
        changes
    }

    pub(crate) fn view(&self) -> &View {
        &self.view
    }
}

/// The entries of `items` whose `taken` flag is false.
fn keep_untaken<T>(items: Vec<T>, taken: &[bool]) -> Vec<T> {
    items
        .into_iter()
        .zip(taken)
        .filter(|(_, t)| !**t)
        .map(|(i, _)| i)
        .collect()
}

#[cfg(test)]
mod tests;
