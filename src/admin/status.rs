//! `GET /status`: what is running, as JSON — the version, the uptime, the
//! shards and their CPUs, and each listener with its upstreams and their state.

use serde_json::{Value, json};

use super::{Static, UpstreamState};
use crate::stats::{Counter, ShardStats};

/// The document for one snapshot. `ready` is false once a drain started.
pub fn render(
    info: &Static,
    stats: &ShardStats,
    upstreams: &[UpstreamState],
    ready: bool,
) -> Value {
    let shards: Vec<Value> = info
        .cpus
        .iter()
        .enumerate()
        .map(|(shard, cpu)| json!({ "shard": shard, "cpu": cpu }))
        .collect();
    let listeners: Vec<Value> = info
        .listeners
        .iter()
        .map(|l| {
            let counters = stats.listeners.iter().find(|s| s.name == l.name);
            let gauge = |c: Counter| counters.map_or(0, |s| s.counters.get(c));
            let ups: Vec<Value> = upstreams
                .iter()
                .filter(|u| u.listener == l.name)
                .map(|u| {
                    json!({
                        "address": u.upstream,
                        "state": if u.up { "up" } else { "down" },
                    })
                })
                .collect();
            json!({
                "name": l.name,
                "kind": l.kind,
                "address": l.addr.to_string(),
                "balance": l.balance,
                "active_connections": gauge(Counter::Active),
                "active_udp_sessions": gauge(Counter::UdpSessionsActive),
                "upstreams": ups,
            })
        })
        .collect();
    json!({
        "version": info.version,
        "uptime_seconds": info.started.elapsed().as_secs(),
        "state": if ready { "serving" } else { "draining" },
        "shards": shards,
        "listeners": listeners,
    })
}

#[cfg(test)]
mod tests {
    use super::super::ListenerInfo;
    use super::*;

    #[test]
    fn names_every_listener_with_its_upstreams() {
        let info = Static {
            version: "1.2.3",
            started: std::time::Instant::now(),
            cpus: vec![3, 5],
            listeners: vec![ListenerInfo {
                name: "web".into(),
                kind: "tcp",
                addr: "127.0.0.1:80".parse().unwrap(),
                balance: Some("round_robin"),
                upstreams: vec!["10.0.0.1:80".parse().unwrap()],
            }],
        };
        let ups = [UpstreamState {
            listener: "web".into(),
            upstream: "10.0.0.1:80".into(),
            up: false,
        }];
        let v = render(&info, &ShardStats::default(), &ups, false);
        assert_eq!(v["version"], "1.2.3");
        assert_eq!(v["state"], "draining");
        assert_eq!(v["shards"][1], json!({"shard": 1, "cpu": 5}));
        let l = &v["listeners"][0];
        assert_eq!(l["name"], "web");
        assert_eq!(l["address"], "127.0.0.1:80");
        assert_eq!(l["balance"], "round_robin");
        assert_eq!(
            l["upstreams"],
            json!([{"address": "10.0.0.1:80", "state": "down"}])
        );
    }
}
