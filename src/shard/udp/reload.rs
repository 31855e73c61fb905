//! A reload in the shard's UDP service, swapped in at a loop boundary.
//!
//! A listener is kept when the reload names its socket (`Keep`): its socket,
//! receive, session map and counters stay; its balancer, source limiter and
//! loop guard are rebuilt for the new route, which only new sessions use
//! (an upstream that stays keeps its passive health). An
//! open session keeps what it took at its start (upstream, idle timeout,
//! `max_responses`, PROXY header, socket buffer): nothing it uses after its
//! start is looked up in the route table, so the table is replaced whole.
//! Its balancer is identified by an epoch, so a session of an older one
//! releases no member of the new one. A removed listener is drained as on
//! SIGTERM: no new client, each session ends once it owes no reply or has
//! been quiet, then the receive is cancelled and the socket closed. Its slot
//! is reused by a later added listener once closed; its counters then move
//! to `retired`, so totals never go backwards and memory stays bounded.

use super::{ListenRecv, UdpListener, UdpListenerSpec, UdpRouteSpec, UdpService};
use crate::shard::context::Ctx;
use crate::stats::{ListenerStats, ShardStats};
use crate::time::Millis;

/// One UDP listener of the new configuration, as one shard gets it.
#[derive(Clone, Debug)]
pub enum UdpReloadListener {
    /// Kept: `spec.fd` is the socket this shard already receives on.
    Keep(UdpListenerSpec),
    /// Added: `spec.fd` was bound for this shard, which now owns it.
    Add(UdpListenerSpec),
}

impl UdpReloadListener {
    fn spec(&self) -> &UdpListenerSpec {
        match self {
            UdpReloadListener::Keep(s) | UdpReloadListener::Add(s) => s,
        }
    }
}

/// A shard's UDP part of a new configuration: its listeners and the routes
/// their specs name (by index into `routes`).
#[derive(Clone, Debug, Default)]
pub struct UdpReload {
    pub listeners: Vec<UdpReloadListener>,
    pub routes: Vec<UdpRouteSpec>,
}

/// Whether a listener of the service still belongs to the configuration.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Role {
    Serving,
    /// Removed by a reload: drained, then closed; its slot is then free.
    Removed,
}

impl UdpService {
    /// Swaps in `new` (see the module comment).
    pub fn reload(&mut self, ctx: &mut Ctx, new: &UdpReload, now: Millis) {
        let own: Vec<_> = new.listeners.iter().map(|l| l.spec().listen).collect();
        self.udp_routes.clone_from(&new.routes);
        let kept: Vec<_> = new
            .listeners
            .iter()
            .filter_map(|l| match l {
                UdpReloadListener::Keep(s) => Some(s.fd),
                UdpReloadListener::Add(_) => None,
            })
            .collect();
        for l in &mut self.udp_listeners {
            if l.role == Role::Serving && !kept.contains(&l.spec.fd) {
                l.role = Role::Removed;
            }
        }
        let seed = self.seed(ctx);
        for item in &new.listeners {
            match item {
                UdpReloadListener::Keep(spec) => self.keep(spec, &own, seed),
                UdpReloadListener::Add(spec) => self.add(ctx, spec, &own, seed),
            }
        }
        self.drain_removed(ctx, now);
    }

    /// A kept listener takes its new spec and route; its socket, receive,
    /// sessions and counters stay.
    fn keep(&mut self, spec: &UdpListenerSpec, own: &[std::net::SocketAddr], seed: u64) {
        let routes = &self.udp_routes;
        let Some((i, l)) = self
            .udp_listeners
            .iter_mut()
            .enumerate()
            .find(|(_, l)| l.role == Role::Serving && l.spec.fd == spec.fd)
        else {
            return;
        };
        let mut fresh = UdpListener::new(spec.clone(), routes, own);
        // An upstream that stays keeps its passive health (one this shard
        // ejected gets no new session again at once), as in the TCP service.
        for (i, old) in l.balancer.members().iter().enumerate() {
            let new = fresh
                .balancer
                .members()
                .iter()
                .position(|t| t.addr == old.addr);
            if let (Some(j), Some(state)) = (new, l.balancer.passive_state(i)) {
                fresh.balancer.carry_passive(j, state);
            }
        }
        l.spec = fresh.spec;
        l.balancer = fresh.balancer;
        l.balancer
            .seed(seed ^ (i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15));
        l.limiter = fresh.limiter;
        l.guard = fresh.guard;
        l.epoch = l.epoch.wrapping_add(1);
    }

    /// An added listener takes a closed removed one's slot (its counters
    /// retired) or a new one, and starts receiving.
    fn add(
        &mut self,
        ctx: &mut Ctx,
        spec: &UdpListenerSpec,
        own: &[std::net::SocketAddr],
        seed: u64,
    ) {
        let fresh = UdpListener::new(spec.clone(), &self.udp_routes, own);
        let free = self.udp_listeners.iter().position(UdpListener::is_free);
        let index = match free.and_then(|i| self.udp_listeners.get_mut(i).map(|l| (i, l))) {
            Some((i, l)) => {
                let old = std::mem::replace(l, fresh);
                self.retired.merge(&ShardStats {
                    listeners: vec![ListenerStats {
                        name: old.spec.name,
                        counters: old.counters,
                        ..Default::default()
                    }],
                    ..ShardStats::default()
                });
                i
            }
            None => {
                self.udp_listeners.push(fresh);
                self.udp_listeners.len() - 1
            }
        };
        if let Some(l) = self.udp_listeners.get_mut(index) {
            l.balancer
                .seed(seed ^ (index as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15));
        }
        self.arm_udp_listener(ctx, index as u32);
    }

    /// The sessions of removed listeners drain; idle removed listeners close.
    fn drain_removed(&mut self, ctx: &mut Ctx, now: Millis) {
        for slot in self.sessions.ids() {
            let removed = self.sessions.get(slot).is_some_and(|c| {
                self.udp_listeners
                    .get(c.listener as usize)
                    .is_some_and(|l| l.role == Role::Removed)
            });
            if !removed {
                continue;
            }
            if let Some(c) = self.sessions.get_mut(slot) {
                c.session.handle_drain(now, &mut self.session_ops);
            }
            self.after_session(ctx, slot, now);
        }
        self.close_idle_udp_listeners(ctx);
    }

    /// The counters of listeners a reload removed and whose slot was reused.
    pub fn retired(&self) -> &ShardStats {
        &self.retired
    }
}

impl UdpListener {
    /// Removed, closed and with nothing left that names its slot.
    fn is_free(&self) -> bool {
        self.role == Role::Removed
            && self.recv == ListenRecv::Closed
            && self.active == 0
            && self.echo_inflight == 0
    }
}
