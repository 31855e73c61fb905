//! The shard's side of upstream health: counting and logging the changes a
//! route's balancer reports (passive ejection, restoration, a failed
//! trial), and giving back a connection's hold on its upstream's active
//! count. The policy and the states are `upstream::Balancer`'s.

use tracing::info;

use super::{Route, Upstream};
use crate::shard::context::Ctx;
use crate::stats::Counter;
use crate::time::Millis;
use crate::upstream::{Change, Target, UpstreamId};

/// `held`'s connection no longer counts as active on it (its attempt
/// failed, or it closed).
pub(super) fn release_active(
    upstreams: &[Upstream],
    routes: &mut [Route],
    held: Option<UpstreamId>,
) {
    let Some(u) = held.and_then(|id| upstreams.get(id.0 as usize)) else {
        return;
    };
    if let Some(r) = routes.get_mut(usize::from(u.route)) {
        r.balancer.release(u.member);
    }
}

/// A change of `target`'s passive health on this shard: counted on the
/// upstream, and one (rate-limited) log line naming why.
pub(super) fn changed(
    ctx: &mut Ctx,
    upstreams: &mut [Upstream],
    target: Target,
    change: Change,
    fail_ms: Millis,
    now: Millis,
) {
    let Some(u) = target
        .upstream
        .and_then(|id| upstreams.get_mut(id.0 as usize))
    else {
        return;
    };
    match change {
        Change::Ejected { .. } => u.counters.inc(Counter::UpstreamEjected),
        Change::Restored => u.counters.inc(Counter::UpstreamRestored),
        Change::TrialFailed => {}
    }
    if !ctx.log.allow(now, ctx.shard) {
        return;
    }
    let listener = if u.listener.is_empty() {
        "-"
    } else {
        u.listener.as_str()
    };
    let (message, reason) = change.describe(ctx.shard, fail_ms);
    info!(
        shard = ctx.shard,
        listener,
        upstream = %u.addr,
        reason,
        "{message}"
    );
}

#[cfg(test)]
mod tests {
    use super::super::{RouteSpec, TcpConfig, TcpService};
    use crate::config::{Balance, PassiveHealth};
    use crate::stats::Counter;
    use crate::upstream::UpstreamId;

    fn service() -> TcpService {
        let route = |ports: &[u16]| RouteSpec {
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
        };
        TcpService::new(TcpConfig {
            routes: vec![route(&[1, 2]), route(&[3])],
            ..TcpConfig::default()
        })
    }

    fn in_rotation(s: &TcpService) -> Vec<u64> {
        let (mut listeners, mut ups) = (Vec::new(), Vec::new());
        s.snapshot(&mut listeners, &mut ups);
        ups.iter()
            .map(|u| u.counters.get(Counter::InRotation))
            .collect()
    }

    #[test]
    fn the_checkers_verdict_reaches_the_upstreams_route_and_its_gauge() {
        let mut s = service();
        assert_eq!(in_rotation(&s), vec![1, 1, 1], "every upstream starts up");
        s.set_checked(UpstreamId(2), false);
        assert_eq!(in_rotation(&s), vec![1, 1, 0]);
        s.set_checked(UpstreamId(1), false);
        s.set_checked(UpstreamId(2), true);
        assert_eq!(in_rotation(&s), vec![1, 0, 1]);
        s.set_checked(UpstreamId(9), false);
        assert_eq!(
            in_rotation(&s),
            vec![1, 0, 1],
            "an unknown id changes nothing"
        );
    }
}
