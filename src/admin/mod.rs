//! The admin endpoint (`[admin] listen`): `/metrics`, `/ready`, `/live` and
//! `/status` over plain HTTP, served by one thread of its own with std::net,
//! one request at a time, each bounded (8 KiB and 5 s to read the request, 5 s
//! to write the answer). Never a shard: a scrape reaches the shards only
//! through the control loop, which asks them for a snapshot as its stats line
//! does. It has no TLS and no authentication: loopback or a management
//! network only (README).

pub mod http;
pub mod metrics;
pub mod status;

use std::io;
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, Sender, SyncSender};
use std::time::{Duration, Instant};

use tracing::{debug, warn};

use self::http::{Received, Request, Response};
use crate::config::AdminPlan;
use crate::stats::{Counter, ShardStats};
use crate::sys::host::HostError;

/// How long a scrape waits for the control loop's snapshot (it wakes every
/// 50 ms and gives shards 500 ms to answer; a signal's own snapshot may come first).
const SNAPSHOT_WAIT: Duration = Duration::from_secs(3);
/// How long `/live` waits for the control loop to answer.
const LIVE_WAIT: Duration = Duration::from_secs(2);
/// Writing an answer to a client that does not read gives up after this.
const WRITE_TIMEOUT: Duration = Duration::from_secs(5);
/// After a failed accept (out of descriptors), wait this long before the next.
const ACCEPT_PAUSE: Duration = Duration::from_millis(100);

/// Whether the forwarder takes new connections: false until every shard is
/// ready and from the moment a drain starts (so a load balancer in front
/// stops sending before the listeners close).
#[derive(Clone, Debug, Default)]
pub struct Readiness(Arc<AtomicBool>);

impl Readiness {
    pub fn set_serving(&self) {
        self.0.store(true, Ordering::Release);
    }

    pub fn set_draining(&self) {
        self.0.store(false, Ordering::Release);
    }

    pub fn is_ready(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }
}

/// A listener as `/status` shows it.
#[derive(Clone, Debug)]
pub struct ListenerInfo {
    pub name: String,
    /// `tcp`, `udp`, `echo`, ... as in the `listening` line.
    pub kind: &'static str,
    pub addr: SocketAddr,
    /// The balancing policy, where the listener forwards.
    pub balance: Option<&'static str>,
    pub upstreams: Vec<SocketAddr>,
}

/// What does not change while the process runs.
#[derive(Clone, Debug)]
pub struct Static {
    pub version: &'static str,
    pub started: Instant,
    /// The CPU of each shard, by shard index.
    pub cpus: Vec<usize>,
    pub listeners: Vec<ListenerInfo>,
}

/// One upstream of one listener and whether it is in rotation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UpstreamState {
    pub listener: String,
    pub upstream: String,
    pub up: bool,
}

/// Whether each upstream is in rotation, for `ringfwd_upstream_up` and
/// `/status`: up while at least one shard has it in rotation (its
/// `in_rotation` gauge summed over shards is above 0). A shard takes an
/// upstream out when the health checker says it is down or when its own
/// passive health ejected it, so this is down once every shard agrees.
/// Upstreams with no per-upstream row (UDP's) are shown up.
pub fn upstream_states(snapshot: &ShardStats, listeners: &[ListenerInfo]) -> Vec<UpstreamState> {
    let mut out: Vec<UpstreamState> = Vec::new();
    let configured = listeners
        .iter()
        .flat_map(|l| l.upstreams.iter().map(|u| (l.name.clone(), u.to_string())));
    let counted = snapshot
        .upstreams
        .iter()
        .filter(|u| !u.listener.is_empty())
        .map(|u| (u.listener.clone(), u.upstream.clone()));
    let up = |listener: &str, upstream: &str| {
        snapshot
            .upstreams
            .iter()
            .find(|u| u.listener == listener && u.upstream == upstream)
            .is_none_or(|u| u.counters.get(Counter::InRotation) > 0)
    };
    for (listener, upstream) in configured.chain(counted) {
        if !out
            .iter()
            .any(|o| o.listener == listener && o.upstream == upstream)
        {
            let up = up(&listener, &upstream);
            out.push(UpstreamState {
                listener,
                upstream,
                up,
            });
        }
    }
    out
}

/// What the admin thread asks the control loop; each carries where to answer.
pub enum Ask {
    /// Fresh counters of every shard, summed, and the listeners in force
    /// (a reload changes them).
    Snapshot(SyncSender<(ShardStats, Vec<ListenerInfo>)>),
    /// Are you there (`/live`)?
    Ping(SyncSender<()>),
}

/// The control loop's end: polled once per turn.
pub struct Asks(Receiver<Ask>);

impl Asks {
    /// Answers every waiting ask; `snapshot` takes a fresh one from the
    /// shards, with the listeners in force.
    pub fn answer(&self, mut snapshot: impl FnMut() -> (ShardStats, Vec<ListenerInfo>)) {
        while let Ok(ask) = self.0.try_recv() {
            match ask {
                Ask::Snapshot(reply) => {
                    let _ = reply.send(snapshot());
                }
                Ask::Ping(reply) => {
                    let _ = reply.send(());
                }
            }
        }
    }
}

/// Binds `[admin] listen` (as `run` and `check` both do, so a taken port is
/// reported before anything starts).
pub fn bind(plan: &AdminPlan) -> Result<TcpListener, HostError> {
    TcpListener::bind(plan.listen).map_err(|e| bind_error(plan.listen, &e))
}

fn bind_error(addr: SocketAddr, e: &io::Error) -> HostError {
    let what = "admin endpoint ([admin] listen)".to_owned();
    match e.raw_os_error() {
        Some(libc::EADDRINUSE) => HostError::AddrInUse { what, addr },
        Some(libc::EACCES) => HostError::PortPermission { what, addr },
        Some(libc::EADDRNOTAVAIL) => HostError::AddrNotAvailable { what, addr },
        _ => HostError::Bind {
            what,
            addr,
            error: e.to_string(),
        },
    }
}

/// Everything a request may need.
struct Served {
    info: Static,
    ready: Readiness,
    asks: Sender<Ask>,
}

/// Starts the admin thread on `listener`; returns the control loop's end.
pub fn spawn(listener: TcpListener, info: Static, ready: Readiness) -> io::Result<Asks> {
    let (tx, rx) = mpsc::channel();
    let served = Served {
        info,
        ready,
        asks: tx,
    };
    std::thread::Builder::new()
        .name("rfwd-admin".into())
        .spawn(move || accept_loop(&listener, &served))?;
    Ok(Asks(rx))
}

/// One connection at a time, for as long as the process lives.
fn accept_loop(listener: &TcpListener, served: &Served) {
    loop {
        match listener.accept() {
            Ok((stream, _)) => handle(stream, served),
            Err(e) => {
                warn!("admin endpoint: accept failed ({e}); retrying");
                std::thread::sleep(ACCEPT_PAUSE);
            }
        }
    }
}

fn handle(mut stream: TcpStream, served: &Served) {
    let _ = stream.set_write_timeout(Some(WRITE_TIMEOUT));
    let (resp, head_only) = match http::read_request(&mut stream) {
        Received::Request(req) => (route(&req, served), req.method == "HEAD"),
        Received::TooLarge => (
            Response::text(431, format!("request over {} bytes\n", http::MAX_REQUEST)),
            false,
        ),
        Received::Bad(why) => (Response::text(400, format!("bad request: {why}\n")), false),
        Received::Slow => (
            Response::text(
                408,
                format!(
                    "no complete request within {}s\n",
                    http::REQUEST_TIMEOUT.as_secs()
                ),
            ),
            false,
        ),
        Received::Gone => return,
    };
    if let Err(e) = http::write_response(&mut stream, &resp, head_only) {
        debug!("admin endpoint: writing the answer failed: {e}");
    }
    let _ = stream.shutdown(Shutdown::Both);
}

fn route(req: &Request, served: &Served) -> Response {
    let known = ["/metrics", "/ready", "/live", "/status"];
    if !known.contains(&req.path.as_str()) {
        return Response::text(
            404,
            "not found: the admin endpoint serves /metrics, /ready, /live and /status\n",
        );
    }
    if req.method != "GET" && req.method != "HEAD" {
        return Response::text(405, "only GET (or HEAD)\n");
    }
    match req.path.as_str() {
        "/ready" if served.ready.is_ready() => Response::text(200, "ready\n"),
        "/ready" => Response::text(503, "draining: not taking new connections\n"),
        "/live" => live(served),
        "/status" => with_snapshot(served, |info, stats, ups| Response {
            status: 200,
            content_type: "application/json",
            body: status::render(info, stats, ups, served.ready.is_ready())
                .to_string()
                .into_bytes(),
        }),
        _ => with_snapshot(served, |_, stats, ups| Response {
            status: 200,
            content_type: metrics::CONTENT_TYPE,
            body: metrics::render(stats, ups, crate::sys::output::log_write_errors()).into_bytes(),
        }),
    }
}

fn live(served: &Served) -> Response {
    let (tx, rx) = mpsc::sync_channel(1);
    if served.asks.send(Ask::Ping(tx)).is_ok() && rx.recv_timeout(LIVE_WAIT).is_ok() {
        return Response::text(200, "live\n");
    }
    Response::text(
        503,
        format!(
            "the control thread did not answer within {}s\n",
            LIVE_WAIT.as_secs()
        ),
    )
}

fn with_snapshot(
    served: &Served,
    answer: impl FnOnce(&Static, &ShardStats, &[UpstreamState]) -> Response,
) -> Response {
    let (tx, rx) = mpsc::sync_channel(1);
    let stats = match served.asks.send(Ask::Snapshot(tx)) {
        Ok(()) => rx.recv_timeout(SNAPSHOT_WAIT).ok(),
        Err(_) => None,
    };
    let Some((stats, listeners)) = stats else {
        return Response::text(
            503,
            format!(
                "the control thread did not give a snapshot within {}s\n",
                SNAPSHOT_WAIT.as_secs()
            ),
        );
    };
    let info = Static {
        listeners,
        ..served.info.clone()
    };
    let ups = upstream_states(&stats, &info.listeners);
    answer(&info, &stats, &ups)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::UpstreamStats;

    fn served(asks: Sender<Ask>) -> Served {
        Served {
            info: Static {
                version: "0",
                started: Instant::now(),
                cpus: vec![0],
                listeners: vec![ListenerInfo {
                    name: "web".into(),
                    kind: "tcp",
                    addr: "127.0.0.1:80".parse().unwrap(),
                    balance: Some("round_robin"),
                    upstreams: vec!["10.0.0.1:80".parse().unwrap()],
                }],
            },
            ready: Readiness::default(),
            asks,
        }
    }

    fn get(path: &str) -> Request {
        Request {
            method: "GET".into(),
            path: path.into(),
        }
    }

    #[test]
    fn live_is_503_within_a_bounded_wait_when_the_control_loop_is_gone_or_stuck() {
        let (tx, rx) = mpsc::channel();
        drop(rx);
        let gone = served(tx);
        assert_eq!(route(&get("/live"), &gone).status, 503, "gone: at once");
        assert_eq!(route(&get("/metrics"), &gone).status, 503);
        let (tx, rx) = mpsc::channel();
        let stuck = served(tx);
        let t = Instant::now();
        assert_eq!(route(&get("/live"), &stuck).status, 503, "never answers");
        assert!(t.elapsed() >= LIVE_WAIT, "waited the whole bound first");
        drop(rx);
    }

    #[test]
    fn live_and_metrics_are_answered_by_the_control_loop() {
        let (tx, rx) = mpsc::channel();
        let answering = served(tx);
        let asks = Asks(rx);
        let done = Arc::new(AtomicBool::new(false));
        let stop = done.clone();
        // A stand-in for the serve loop's turns.
        let control = std::thread::spawn(move || {
            while !stop.load(Ordering::Acquire) {
                asks.answer(|| (ShardStats::default(), Vec::new()));
                std::thread::sleep(Duration::from_millis(1));
            }
        });
        assert_eq!(route(&get("/live"), &answering).status, 200);
        let m = route(&get("/metrics"), &answering);
        assert_eq!(m.status, 200);
        assert_eq!(m.content_type, metrics::CONTENT_TYPE);
        done.store(true, Ordering::Release);
        control.join().unwrap();
    }

    #[test]
    fn ready_follows_the_flag() {
        let (tx, _rx) = mpsc::channel();
        let s = served(tx);
        assert_eq!(route(&get("/ready"), &s).status, 503, "not before start");
        s.ready.set_serving();
        assert_eq!(route(&get("/ready"), &s).status, 200);
        s.ready.set_draining();
        assert_eq!(route(&get("/ready"), &s).status, 503);
    }

    #[test]
    fn every_configured_and_counted_upstream_is_listed_once_and_up_while_a_shard_has_it() {
        let info = served(mpsc::channel().0).info;
        let mut snap = ShardStats::default();
        // (listener, upstream, shards that have it in rotation)
        let rows = [
            ("web", "10.0.0.1:80", 2),
            ("web", "10.0.0.9:443", 0),
            ("", "x", 1),
        ];
        for (listener, upstream, shards) in rows {
            let mut counters = crate::stats::Counters::default();
            counters.set(Counter::InRotation, shards);
            snap.upstreams.push(UpstreamStats {
                listener: listener.into(),
                upstream: upstream.into(),
                counters,
            });
        }
        let states = upstream_states(&snap, &info.listeners);
        let got: Vec<(&str, &str, bool)> = states
            .iter()
            .map(|s| (s.listener.as_str(), s.upstream.as_str(), s.up))
            .collect();
        assert_eq!(
            got,
            [("web", "10.0.0.1:80", true), ("web", "10.0.0.9:443", false)]
        );
    }
}
