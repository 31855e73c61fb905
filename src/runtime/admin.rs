//! The serve loop's side of the admin endpoint: binding it before the shards
//! start (a taken port fails start-up as a listener's does), starting its
//! thread with what `/status` shows, and the snapshot a scrape is answered with.

use std::net::TcpListener;
use std::time::{Duration, Instant};

use super::Runtime;
use crate::admin::{self, Asks, ListenerInfo, Static};
use crate::config::Plan;
use crate::sys::host::HostError;

/// How long a scrape's snapshot waits for the shards (as the stats line's).
pub(super) const SCRAPE_SNAPSHOT: Duration = Duration::from_millis(500);

/// `[admin] listen` bound, or `None` when there is no `[admin]`.
pub(super) fn bind(plan: &Plan) -> Result<Option<TcpListener>, HostError> {
    plan.admin.as_ref().map(admin::bind).transpose()
}

/// Starts the admin thread and prints its `listening admin admin ADDR`
/// line (after the listeners': scripts and tests read the port from it).
/// A thread that cannot start is logged, and forwarding goes on without it.
pub(super) fn start(plan: &Plan, rt: &Runtime, socket: Option<TcpListener>) -> Option<Asks> {
    let socket = socket?;
    let addr = socket.local_addr().ok()?;
    let info = Static {
        version: env!("CARGO_PKG_VERSION"),
        started: Instant::now(),
        cpus: (0..plan.runtime.shards)
            .map(|i| plan.runtime.cpus.get(i).copied().unwrap_or(i))
            .collect(),
        listeners: listeners(rt),
    };
    match admin::spawn(socket, info, rt.ready.clone()) {
        Ok(asks) => {
            let _ = crate::sys::output::print(&format!("listening admin admin {addr}\n"));
            tracing::info!("admin endpoint on http://{addr} (/metrics, /ready, /live, /status)");
            Some(asks)
        }
        Err(e) => {
            tracing::error!(
                "admin endpoint on {addr}: cannot start its thread ({e}); serving without it"
            );
            None
        }
    }
}

/// What a scrape answers with: fresh counters, and the listeners in force
/// (a SIGHUP reload may have changed them since start).
pub(super) fn scrape(rt: &mut Runtime) -> (crate::stats::ShardStats, Vec<ListenerInfo>) {
    (rt.snapshot(SCRAPE_SNAPSHOT), listeners(rt))
}

/// The listeners `/status` and `ringfwd_upstream_up` show: those bound now,
/// with the balance of the configuration in force.
fn listeners(rt: &Runtime) -> Vec<ListenerInfo> {
    let plan = rt.reload.plan();
    rt.bound()
        .iter()
        .map(|b| ListenerInfo {
            name: b.name.clone(),
            kind: b.kind,
            addr: b.addr,
            balance: balance_of(plan, b.kind, &b.name),
            upstreams: b.upstreams.clone(),
        })
        .collect()
}

/// The balancing policy of forward listener `name` (`None` for the
/// built-in servers, which have no upstreams).
fn balance_of(plan: &Plan, kind: &str, name: &str) -> Option<&'static str> {
    let balance = match kind {
        "tcp" => plan.tcp.iter().find(|t| t.name == name).map(|t| t.balance),
        "udp" => plan.udp.iter().find(|u| u.name == name).map(|u| u.balance),
        _ => None,
    };
    balance.map(crate::config::Balance::name)
}
