//! The association's rules, datagram by datagram.

use super::*;

fn sa(s: &str) -> SocketAddr {
    s.parse().expect("socket address")
}

/// A client datagram for `dst` carrying `payload`.
fn to(dst: &str, payload: &[u8]) -> Vec<u8> {
    let dst = sa(dst);
    let mut d = vec![0, 0, 0];
    match dst {
        SocketAddr::V4(a) => {
            d.push(1);
            d.extend_from_slice(&a.ip().octets());
        }
        SocketAddr::V6(a) => {
            d.push(4);
            d.extend_from_slice(&a.ip().octets());
        }
    }
    d.extend_from_slice(&dst.port().to_be_bytes());
    d.extend_from_slice(payload);
    d
}

fn assoc() -> Association {
    Association::new("192.0.2.7".parse().expect("ip"), 60_000, 0)
}

#[test]
fn the_first_client_datagram_fixes_the_port_and_names_its_destination() {
    let mut a = assoc();
    assert_eq!(a.client(), None);
    let v = a.classify(sa("192.0.2.7:4000"), &to("198.51.100.1:53", b"q"), 5);
    assert_eq!(
        v,
        Inbound::FromClient {
            dst: Destination::Ip(sa("198.51.100.1:53")),
            header: 10
        }
    );
    assert_eq!(a.client(), Some(sa("192.0.2.7:4000")));
    assert_eq!(a.deadline(), 60_005);
    // The same client IP from another port is someone else.
    let other = a.classify(sa("192.0.2.7:4001"), &to("198.51.100.1:53", b"q"), 6);
    assert_eq!(other, Inbound::Drop(DropReason::Stranger));
}

#[test]
fn only_the_control_connections_client_may_send() {
    let mut a = assoc();
    let v = a.classify(sa("192.0.2.8:4000"), &to("198.51.100.1:53", b"q"), 0);
    assert_eq!(v, Inbound::Drop(DropReason::Stranger));
    assert_eq!(a.client(), None, "a stranger does not fix the port");
}

#[test]
fn fragments_and_malformed_headers_are_dropped_without_fixing_the_port() {
    let mut a = assoc();
    let mut frag = to("198.51.100.1:53", b"q");
    frag[2] = 1;
    let v = a.classify(sa("192.0.2.7:4000"), &frag, 0);
    assert_eq!(v, Inbound::Drop(DropReason::Fragment));
    let v = a.classify(sa("192.0.2.7:4000"), &[0, 0, 0, 1, 10], 0);
    assert_eq!(v, Inbound::Drop(DropReason::Malformed));
    assert_eq!(a.client(), None);
    assert_eq!(a.deadline(), 60_000, "drops do not keep it alive");
}

#[test]
fn replies_come_only_from_destinations_the_client_sent_to() {
    let mut a = assoc();
    let dst = sa("198.51.100.1:53");
    // Before the client sent anything, nobody may reach it.
    let early = a.classify(dst, b"reply", 0);
    assert_eq!(early, Inbound::Drop(DropReason::Stranger));
    a.classify(sa("192.0.2.7:4000"), &to("198.51.100.1:53", b"q"), 1);
    let unsent = a.classify(dst, b"reply", 2);
    assert_eq!(
        unsent,
        Inbound::Drop(DropReason::Stranger),
        "not sent to yet"
    );
    a.sent_to(dst);
    let reply = a.classify(dst, b"reply", 3);
    assert_eq!(
        reply,
        Inbound::ToClient {
            to: sa("192.0.2.7:4000")
        }
    );
    assert_eq!(a.deadline(), 60_003, "a reply keeps it alive too");
    let other = a.classify(sa("198.51.100.1:54"), b"reply", 4);
    assert_eq!(other, Inbound::Drop(DropReason::Stranger));
}

#[test]
fn a_destination_on_the_clients_own_address_is_told_apart_by_its_port() {
    let mut a = Association::new("127.0.0.1".parse().expect("ip"), 1000, 0);
    a.classify(sa("127.0.0.1:4000"), &to("127.0.0.1:5353", b"q"), 0);
    a.sent_to(sa("127.0.0.1:5353"));
    let reply = a.classify(sa("127.0.0.1:5353"), b"answer", 1);
    assert_eq!(
        reply,
        Inbound::ToClient {
            to: sa("127.0.0.1:4000")
        }
    );
}

#[test]
fn ipv4_mapped_sources_are_the_same_client() {
    let mut a = assoc();
    let v = a.classify(
        sa("[::ffff:192.0.2.7]:4000"),
        &to("198.51.100.1:53", b"q"),
        0,
    );
    assert!(matches!(v, Inbound::FromClient { .. }), "{v:?}");
    a.sent_to(sa("[::ffff:198.51.100.1]:53"));
    let reply = a.classify(sa("198.51.100.1:53"), b"r", 1);
    assert!(matches!(reply, Inbound::ToClient { .. }), "{reply:?}");
}

#[test]
fn the_client_and_the_own_socket_are_loops() {
    let mut a = assoc();
    a.classify(sa("192.0.2.7:4000"), &to("198.51.100.1:53", b"q"), 0);
    let own = Some(sa("192.0.2.1:40000"));
    assert!(a.loops(sa("192.0.2.7:4000"), own));
    assert!(a.loops(sa("192.0.2.1:40000"), own));
    assert!(!a.loops(sa("198.51.100.1:53"), own));
}

#[test]
fn the_oldest_destination_is_forgotten_beyond_the_bound() {
    let mut a = assoc();
    a.classify(sa("192.0.2.7:4000"), &to("198.51.100.1:53", b"q"), 0);
    for port in 0..=MAX_PEERS as u16 {
        a.sent_to(SocketAddr::new(
            "198.51.100.1".parse().expect("ip"),
            1000 + port,
        ));
    }
    let first = a.classify(sa("198.51.100.1:1000"), b"r", 1);
    assert_eq!(first, Inbound::Drop(DropReason::Stranger));
    let last = a.classify(sa("198.51.100.1:1064"), b"r", 1);
    assert!(matches!(last, Inbound::ToClient { .. }));
    // Sending again to a remembered one refreshes it instead of adding.
    a.sent_to(sa("198.51.100.1:1001"));
    a.sent_to(sa("198.51.100.1:2000"));
    let refreshed = a.classify(sa("198.51.100.1:1001"), b"r", 2);
    assert!(matches!(refreshed, Inbound::ToClient { .. }));
}
