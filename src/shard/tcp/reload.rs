//! A reload in the shard's TCP service: the new configuration's routes and
//! listeners swapped in at a loop boundary, without touching a connection.
//!
//! Connections keep what they started with: a connection names its listener
//! and its route by slot, and its upstream by id, so a reload never rewrites
//! a slot still in use. New routes (and their upstreams) take free slots;
//! the routes they replace are `Retired` (no new connection takes them) and
//! freed once no open connection and no remaining listener names them.
//! Removed listeners stop accepting (their accept cancelled, their socket
//! closed) and are freed once their last connection ended. A freed slot's
//! counters move to `retired`, so totals never go backwards; memory is
//! bounded by what the configuration and the open connections hold, however
//! many reloads there were.

use tracing::warn;

use super::accept::AcceptState;
use super::gate::Gate;
use super::{
    Life, ListenerKind, ListenerSpec, Role, Route, RouteSpec, TcpService, Upstream, balance_seed,
    route_owners,
};
use crate::shard::context::{Ctx, Mode, TimerKey};
use crate::stats::{CloseReason, Counter, Counters, Histogram, ListenerStats, UpstreamStats};
use crate::tcp::cx::Cx;
use crate::time::Millis;
use crate::upstream::{Balancer, Member, PassiveState, Target, UpstreamId};

/// The route of an upstream slot that is free.
const FREED: u16 = u16::MAX;

/// One listener of the new configuration, as one shard gets it.
#[derive(Clone, Debug)]
pub enum ReloadListener {
    /// Kept: `spec.fd` is the socket this shard already accepts on.
    Keep(ListenerSpec),
    /// Added: `spec.fd` was bound for this shard, which now owns it.
    Add(ListenerSpec),
}

/// A shard's part of a new configuration: its TCP listeners in order, and
/// the routes their specs name (by index into `routes`).
#[derive(Clone, Debug, Default)]
pub struct ShardReload {
    pub listeners: Vec<ReloadListener>,
    pub routes: Vec<RouteSpec>,
    /// How long the connections of a removed listener may go on.
    pub drain_ms: Millis,
    /// The UDP listeners and routes (the UDP service's part).
    pub udp: crate::shard::udp::UdpReload,
}

impl ReloadListener {
    fn spec(&self) -> &ListenerSpec {
        match self {
            ReloadListener::Keep(s) | ReloadListener::Add(s) => s,
        }
    }
}

/// `spec` with its route indices moved from the reload's table to the
/// shard's slots.
fn remap(spec: &ListenerSpec, slots: &[u16]) -> ListenerSpec {
    let slot = |r: u16| slots.get(usize::from(r)).copied().unwrap_or(FREED);
    let mut spec = spec.clone();
    if let ListenerKind::Forward { route } = spec.kind {
        spec.kind = ListenerKind::Forward { route: slot(route) };
    }
    if let Some(sni) = spec.front.sni.as_mut() {
        sni.routes.iter_mut().for_each(|r| *r = slot(*r));
    }
    spec
}

/// Every route a listener names: its own, and its SNI routes.
fn routes_of(spec: &ListenerSpec) -> impl Iterator<Item = u16> + '_ {
    let own = match spec.kind {
        ListenerKind::Forward { route } => Some(route),
        _ => None,
    };
    own.into_iter()
        .chain(spec.front.sni.iter().flat_map(|s| s.routes.iter().copied()))
}

impl TcpService {
    /// Swaps in a new configuration (see the module comment).
    pub(crate) fn reload(&mut self, ctx: &mut Ctx, new: &ShardReload, now: Millis) {
        let specs: Vec<ListenerSpec> = new.listeners.iter().map(|l| l.spec().clone()).collect();
        let owners: Vec<String> = route_owners(&specs)
            .into_iter()
            .map(|o| {
                o.and_then(|i| specs.get(i as usize))
                    .map_or_else(String::new, |s| s.name.clone())
            })
            .collect();
        let slots = self.install_routes(ctx, &new.routes, &owners);
        let mut serving = Vec::with_capacity(new.listeners.len());
        for l in &new.listeners {
            match l {
                ReloadListener::Keep(spec) => {
                    let found = self
                        .listeners
                        .iter()
                        .position(|x| x.role == Role::Serving && x.spec.fd == spec.fd);
                    match found.and_then(|i| self.listeners.get_mut(i).map(|x| (i, x))) {
                        Some((i, x)) => {
                            x.gate =
                                Gate::new(&spec.front.gate, spec.front.read.proxy_ms.is_some());
                            x.spec = remap(spec, &slots);
                            serving.push(i);
                        }
                        None => warn!(
                            shard = ctx.shard,
                            listener = %spec.name,
                            "reload: a kept listener's socket is not this shard's; it is left out (restart to restore it)"
                        ),
                    }
                }
                ReloadListener::Add(spec) => {
                    let i = self.add_listener(remap(spec, &slots));
                    serving.push(i);
                    if ctx.mode == Mode::Running {
                        self.arm_accept(ctx, i as u32);
                    } else {
                        // Draining already: the new socket is closed unused.
                        self.close_listener(ctx, i as u32);
                    }
                }
            }
        }
        for i in 0..self.listeners.len() {
            let retire = !serving.contains(&i)
                && self
                    .listeners
                    .get(i)
                    .is_some_and(|l| l.role == Role::Serving);
            if retire {
                let until = now.saturating_add(new.drain_ms);
                if let Some(l) = self.listeners.get_mut(i) {
                    l.role = Role::Retired { until };
                }
                ctx.timers.insert(until, TimerKey::Listener(i as u32));
                self.stop_accepting(ctx, i as u32);
            }
        }
        self.collect_retired();
    }

    /// A listener in a free slot (or a new one); returns its index.
    fn add_listener(&mut self, spec: ListenerSpec) -> usize {
        let listener = super::Listener {
            gate: Gate::new(&spec.front.gate, spec.front.read.proxy_ms.is_some()),
            spec,
            role: Role::Serving,
            accept: AcceptState::Closed,
            watch: super::watch::Watch::default(),
            active: 0,
            counters: Counters::default(),
            connect_time: Histogram::default(),
            duration: Histogram::default(),
        };
        match self.listeners.iter().position(|l| l.role == Role::Free) {
            Some(i) => {
                if let Some(slot) = self.listeners.get_mut(i) {
                    *slot = listener;
                }
                i
            }
            None => {
                self.listeners.push(listener);
                self.listeners.len() - 1
            }
        }
    }

    /// Retires every current route and installs `specs` in free slots, with
    /// their upstreams; returns each spec's slot (`FREED` when the table is full).
    fn install_routes(&mut self, ctx: &Ctx, specs: &[RouteSpec], owners: &[String]) -> Vec<u16> {
        let carried = self.passive_states();
        for r in &mut self.routes {
            if r.life == Life::Current {
                r.life = Life::Retired;
            }
        }
        self.current.clear();
        let seed = balance_seed(ctx.shard);
        let mut slots = Vec::with_capacity(specs.len());
        for (i, spec) in specs.iter().enumerate() {
            let free = self.routes.iter().position(|r| r.life == Life::Free);
            let index = free.unwrap_or(self.routes.len());
            let Some(route) = u16::try_from(index).ok().filter(|r| *r != FREED) else {
                warn!(
                    shard = ctx.shard,
                    "reload: more than 65534 routes held by open connections; a route is left out until they end"
                );
                slots.push(FREED);
                continue;
            };
            let listener = owners.get(i).cloned().unwrap_or_default();
            let members: Vec<Member> = spec
                .upstreams
                .iter()
                .enumerate()
                .map(|(member, &addr)| {
                    let id = self.add_upstream(Upstream {
                        listener: listener.clone(),
                        route,
                        member,
                        addr,
                        counters: Counters::default(),
                    });
                    self.current.push(id);
                    Member {
                        target: Target {
                            upstream: Some(id),
                            addr,
                        },
                        weight: spec.weights.get(member).copied().unwrap_or(1),
                    }
                })
                .collect();
            let mut balancer = Balancer::new(&members, spec.balance, spec.passive);
            for (member, addr) in spec.upstreams.iter().enumerate() {
                let state = carried.iter().find(|(l, a, _)| *l == listener && a == addr);
                if let Some(&(_, _, state)) = state {
                    balancer.carry_passive(member, state);
                }
            }
            balancer.seed(seed ^ (index as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15));
            let fresh = Route {
                spec: spec.clone(),
                balancer,
                life: Life::Current,
            };
            match self.routes.get_mut(index) {
                Some(slot) => *slot = fresh,
                None => self.routes.push(fresh),
            }
            slots.push(route);
        }
        slots
    }

    /// The passive health of every upstream of the configuration, by
    /// listener name and address: an upstream that stays keeps it (a shard
    /// that ejected it does not send it new connections again at once).
    fn passive_states(&self) -> Vec<(String, std::net::SocketAddr, PassiveState)> {
        self.upstreams
            .iter()
            .filter_map(|u| {
                let r = self.routes.get(usize::from(u.route))?;
                if r.life != Life::Current {
                    return None;
                }
                let state = r.balancer.passive_state(u.member)?;
                Some((u.listener.clone(), u.addr, state))
            })
            .collect()
    }

    fn add_upstream(&mut self, u: Upstream) -> UpstreamId {
        match self.upstreams.iter().position(|x| x.route == FREED) {
            Some(i) => {
                if let Some(slot) = self.upstreams.get_mut(i) {
                    *slot = u;
                }
                UpstreamId(i as u32)
            }
            None => {
                self.upstreams.push(u);
                UpstreamId(self.upstreams.len() as u32 - 1)
            }
        }
    }

    /// Frees the retired routes no connection or listener names any more,
    /// and the retired listeners that are closed with no connection left;
    /// their counters move to `retired`.
    pub(crate) fn collect_retired(&mut self) {
        let any_route = self.routes.iter().any(|r| r.life == Life::Retired);
        let any_listener = self
            .listeners
            .iter()
            .any(|l| matches!(l.role, Role::Retired { .. }));
        if !any_route && !any_listener {
            return;
        }
        let mut held = vec![false; self.routes.len()];
        let mut hold = |r: u16| {
            if let Some(h) = held.get_mut(usize::from(r)) {
                *h = true;
            }
        };
        for c in self.conns.values() {
            if let Some(r) = c.route {
                hold(r);
            }
        }
        for l in self.listeners.iter().filter(|l| l.role != Role::Free) {
            routes_of(&l.spec).for_each(&mut hold);
        }
        for (i, h) in held.iter().enumerate() {
            let retired = self.routes.get(i).is_some_and(|r| r.life == Life::Retired);
            if retired && !h {
                self.free_route(i);
            }
        }
        for l in &mut self.listeners {
            let idle = l.active == 0 && l.accept == AcceptState::Closed;
            if matches!(l.role, Role::Retired { .. }) && idle {
                self.retired.merge(&crate::stats::ShardStats {
                    listeners: vec![ListenerStats {
                        name: l.spec.name.clone(),
                        counters: std::mem::take(&mut l.counters),
                        connect_time: std::mem::take(&mut l.connect_time),
                        duration: std::mem::take(&mut l.duration),
                    }],
                    ..Default::default()
                });
                l.role = Role::Free;
            }
        }
    }

    fn free_route(&mut self, index: usize) {
        let Ok(route) = u16::try_from(index) else {
            return;
        };
        let mut gone = Vec::new();
        for u in self.upstreams.iter_mut().filter(|u| u.route == route) {
            let mut counters = std::mem::take(&mut u.counters);
            counters.set(Counter::Active, 0);
            counters.set(Counter::InRotation, 0);
            gone.push(UpstreamStats {
                listener: std::mem::take(&mut u.listener),
                upstream: u.addr.to_string(),
                counters,
            });
            u.route = FREED;
        }
        self.retired.merge(&crate::stats::ShardStats {
            upstreams: gone,
            ..Default::default()
        });
        if let Some(r) = self.routes.get_mut(index) {
            r.life = Life::Free;
            r.balancer = Balancer::new(&[], r.spec.balance, r.spec.passive);
            r.spec.upstreams = Vec::new();
            r.spec.weights = Vec::new();
        }
    }

    /// A removed listener's drain_timeout is over: close its connections
    /// still open (as a drain's deadline does). True if it was one.
    pub(super) fn retired_deadline(&mut self, ctx: &mut Ctx, index: u32, now: Millis) -> bool {
        let due = self
            .listeners
            .get(index as usize)
            .is_some_and(|l| matches!(l.role, Role::Retired { until } if now >= until));
        if !due {
            return false;
        }
        for id in self.conns.ids() {
            if let Some(conn) = self.conns.get_mut(id)
                && conn.listener == index
                && let Some(l) = self.listeners.get_mut(index as usize)
            {
                let mut cx = Cx::new(&mut self.scratch, &mut conn.life, &mut l.counters, now);
                conn.logic.abort(CloseReason::Shutdown, &mut cx);
                self.after_conn(ctx, id, now);
            }
        }
        true
    }

    /// Counters of the listeners and upstreams freed after a reload.
    pub(crate) fn retired(&self) -> &crate::stats::ShardStats {
        &self.retired
    }
}

#[cfg(test)]
mod tests {
    use super::super::{ListenerKind, ListenerSpec, RouteSpec, TcpConfig, TcpService};
    use super::{ReloadListener, ShardReload};
    use crate::config::{Balance, PassiveHealth};
    use crate::shard::context::{Ctx, FdBudget};
    use crate::stats::Counter;
    use crate::upstream::UpstreamId;

    fn route(ports: &[u16]) -> RouteSpec {
        RouteSpec {
            upstreams: ports
                .iter()
                .map(|p| std::net::SocketAddr::from(([10, 0, 0, 1], *p)))
                .collect(),
            weights: Vec::new(),
            balance: Balance::RoundRobin,
            passive: PassiveHealth::default(),
            connect_timeout_ms: 1_000,
            idle_ms: 1_000,
            half_close_ms: 1_000,
            bandwidth: None,
            upstream_proto: Default::default(),
        }
    }

    fn listener(fd: i32, route: u16) -> ListenerSpec {
        ListenerSpec {
            name: format!("l{fd}"),
            fd,
            kind: ListenerKind::Forward { route },
            limit: 100,
            front: Default::default(),
        }
    }

    fn service() -> (TcpService, Ctx) {
        let s = TcpService::new(TcpConfig {
            listeners: vec![listener(100, 0)],
            routes: vec![route(&[1, 2])],
            ..TcpConfig::default()
        });
        (s, Ctx::new(0, FdBudget::Unlimited, 0))
    }

    fn in_rotation(s: &TcpService) -> Vec<(String, u64)> {
        let (mut listeners, mut ups) = (Vec::new(), Vec::new());
        s.snapshot(&mut listeners, &mut ups);
        ups.iter()
            .map(|u| (u.upstream.clone(), u.counters.get(Counter::InRotation)))
            .collect()
    }

    #[test]
    fn many_reloads_without_connections_keep_the_tables_bounded() {
        let (mut s, mut ctx) = service();
        for n in 0..200u16 {
            let routes = if n % 2 == 0 {
                vec![route(&[1, 2]), route(&[3])]
            } else {
                vec![route(&[4])]
            };
            let reload = ShardReload {
                listeners: vec![ReloadListener::Keep(listener(100, 0))],
                routes,
                drain_ms: 1_000,
                udp: Default::default(),
            };
            s.reload(&mut ctx, &reload, u64::from(n));
        }
        // At most two configurations at once (the largest pair: the
        // first one's 1 route and 2 upstreams, and 2 routes with 3).
        assert!(s.routes.len() <= 3, "{} route slots", s.routes.len());
        assert!(
            s.upstreams.len() <= 5,
            "{} upstream slots",
            s.upstreams.len()
        );
        assert_eq!(s.listeners.len(), 1, "the kept listener kept its slot");
    }

    #[test]
    fn the_checkers_ids_name_the_new_configurations_upstreams() {
        let (mut s, mut ctx) = service();
        let reload = ShardReload {
            listeners: vec![ReloadListener::Keep(listener(100, 0))],
            routes: vec![route(&[7, 8])],
            drain_ms: 1_000,
            udp: Default::default(),
        };
        s.reload(&mut ctx, &reload, 0);
        s.set_checked(UpstreamId(1), false);
        let mut got = in_rotation(&s);
        got.sort();
        assert_eq!(
            got,
            vec![("10.0.0.1:7".to_owned(), 1), ("10.0.0.1:8".to_owned(), 0)],
            "id 1 is the second upstream of the new table; the old routes are freed"
        );
    }

    #[test]
    fn an_upstream_a_shard_ejected_stays_ejected_across_a_reload() {
        let passive = PassiveHealth {
            max_fails: 1,
            fail_timeout: std::time::Duration::from_secs(10),
        };
        let with_passive = |ports: &[u16]| RouteSpec {
            passive,
            ..route(ports)
        };
        let mut s = TcpService::new(TcpConfig {
            listeners: vec![listener(100, 0)],
            routes: vec![with_passive(&[1, 2])],
            ..TcpConfig::default()
        });
        let mut ctx = Ctx::new(0, FdBudget::Unlimited, 0);
        let target = crate::upstream::Target {
            upstream: Some(UpstreamId(0)),
            addr: std::net::SocketAddr::from(([10, 0, 0, 1], 1)),
        };
        if let Some(r) = s.routes.first_mut() {
            r.balancer
                .report(target, crate::upstream::Outcome::Refused, 5);
        }
        let reload = ShardReload {
            listeners: vec![ReloadListener::Keep(listener(100, 0))],
            routes: vec![with_passive(&[1, 2, 3])],
            drain_ms: 1_000,
            udp: Default::default(),
        };
        s.reload(&mut ctx, &reload, 10);
        let mut got = in_rotation(&s);
        got.sort();
        assert_eq!(
            got,
            vec![
                ("10.0.0.1:1".to_owned(), 0),
                ("10.0.0.1:2".to_owned(), 1),
                ("10.0.0.1:3".to_owned(), 1)
            ]
        );
    }

    #[test]
    fn a_freed_upstreams_counters_are_kept_in_retired() {
        let (mut s, mut ctx) = service();
        if let Some(u) = s.upstreams.first_mut() {
            u.counters.add(Counter::ConnectAttempts, 5);
        }
        let reload = ShardReload {
            listeners: vec![ReloadListener::Keep(listener(100, 0))],
            routes: vec![route(&[9])],
            drain_ms: 1_000,
            udp: Default::default(),
        };
        s.reload(&mut ctx, &reload, 0);
        let gone = s
            .retired()
            .upstreams
            .iter()
            .find(|u| u.upstream == "10.0.0.1:1")
            .map(|u| u.counters.get(Counter::ConnectAttempts));
        assert_eq!(gone, Some(5));
    }
}
