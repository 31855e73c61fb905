//! The control thread's side: which upstreams are checked under which id,
//! what is counted, and what reaches the shards.

use std::time::{Duration, SystemTime};

use super::*;
use crate::config::{HostFacts, Overrides};

fn plan(text: &str) -> Plan {
    let host = HostFacts {
        available_cpus: vec![0],
    };
    Plan::resolve(Some(("t.toml", text)), &Overrides::default(), &host).unwrap()
}

const TWO_LISTENERS: &str = r#"
[[tcp]]
name = "a"
listen = "127.0.0.1:1000"
upstreams = ["127.0.0.1:2000", "127.0.0.1:2001"]
[[tcp]]
name = "b"
listen = "127.0.0.1:1001"
upstreams = ["127.0.0.1:3000"]
send_proxy = "v2"
health_check = { interval = "1s" }
[[tcp.routes]]
sni = ["x.example"]
upstreams = ["127.0.0.1:3001", "127.0.0.1:3002"]
[[tcp.routes]]
sni = ["y.example"]
upstreams = ["127.0.0.1:3000"]
health_check = { fall = 1 }
"#;

#[test]
fn ids_count_every_upstream_in_route_order_and_only_checked_ones_are_targets() {
    let targets = targets(&plan(TWO_LISTENERS));
    let got: Vec<(u32, &str, String, u32)> = targets
        .iter()
        .map(|t| {
            (
                t.id.0,
                t.listener.as_str(),
                t.addr.to_string(),
                t.check.fall,
            )
        })
        .collect();
    // a: 0, 1 (unchecked); b: 2; b's first route: 3, 4 (unchecked); its
    // second route: 5, the same address as 2, checked on its own.
    assert_eq!(
        got,
        vec![
            (2, "b", "127.0.0.1:3000".to_owned(), 3),
            (5, "b", "127.0.0.1:3000".to_owned(), 1),
        ]
    );
    assert!(targets.iter().all(|t| t.hello == Hello::V2Local));
}

#[test]
fn the_v2_local_hello_is_the_16_byte_local_header() {
    let bytes = Hello::V2Local.bytes();
    assert_eq!(bytes.len(), 16);
    assert_eq!(&bytes[..12], &crate::front::proxy::V2_SIGNATURE);
    assert_eq!(bytes[12], 0x20, "version 2, command LOCAL");
    assert!(Hello::Nothing.bytes().is_empty());
    assert_eq!(Hello::V1Unknown.bytes(), b"PROXY UNKNOWN\r\n");
}

fn view() -> View {
    let targets = targets(&plan(TWO_LISTENERS));
    View::new(targets, SystemTime::UNIX_EPOCH)
}

fn down(reason: &str) -> Option<Change> {
    Some(Change {
        to: State::Down,
        reason: reason.to_owned(),
    })
}

#[test]
fn every_check_is_counted_and_a_change_goes_to_the_shards() {
    let mut v = view();
    let failed = Outcome::Failed(Failure::Refused);
    let quiet = Event {
        target: 1,
        outcome: failed.clone(),
        change: None,
    };
    assert_eq!(v.apply(&quiet, SystemTime::UNIX_EPOCH), None);
    let at = SystemTime::UNIX_EPOCH + Duration::from_secs(5);
    let ev = Event {
        target: 1,
        outcome: failed,
        change: down("connection refused"),
    };
    assert_eq!(v.apply(&ev, at), Some((UpstreamId(5), false)));
    let h = &v.health()[1];
    assert!(!h.up);
    assert_eq!((h.since, h.reason.as_str()), (at, "connection refused"));
    assert!(v.health()[0].up, "the other entry of the same address");

    let mut stats = ShardStats::default();
    v.add_to(&mut stats);
    assert_eq!(stats.get(Counter::HealthChecks), 2);
    assert_eq!(stats.get(Counter::HealthCheckFailures), 2);
    assert_eq!(stats.get(Counter::UpstreamDown), 1);
    assert_eq!(stats.get(Counter::UpstreamUp), 0);
    let line = stats
        .upstreams
        .iter()
        .find(|u| u.listener == "b" && u.upstream == "127.0.0.1:3000")
        .unwrap();
    assert_eq!(line.counters.get(Counter::HealthChecks), 2);
}
