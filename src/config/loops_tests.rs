//! Tests for the forwarding-loop rules: which upstreams a listener receives,
//! and that a loop is rejected naming the upstream's key and the listener's.

use std::net::{IpAddr, SocketAddr};

use super::loops::reaches;
use super::*;

const FILE: &str = "ringfwd.toml";

fn addr(text: &str) -> SocketAddr {
    text.parse().expect("address")
}

fn resolve(file: Option<&str>, tcp: &[&str], udp: &[&str]) -> Result<Plan, ConfigError> {
    let overrides = Overrides {
        tcp: tcp.iter().map(|s| s.to_string()).collect(),
        udp: udp.iter().map(|s| s.to_string()).collect(),
        ..Overrides::default()
    };
    let host = HostFacts {
        available_cpus: vec![0, 1],
    };
    Plan::resolve(file.map(|t| (FILE, t)), &overrides, &host)
}

#[test]
fn a_listener_receives_its_own_address_and_loopback_on_its_wildcard_port() {
    let cases = [
        ("127.0.0.1:8080", "127.0.0.1:8080", true),
        ("127.0.0.1:8080", "[::ffff:127.0.0.1]:8080", true),
        ("0.0.0.0:8080", "127.0.0.1:8080", true),
        ("0.0.0.0:8080", "127.0.0.2:8080", true),
        ("0.0.0.0:8080", "[::ffff:127.0.0.1]:8080", true),
        ("[::]:8080", "[::1]:8080", true),
        ("[2001:db8::1]:53", "[2001:db8::1]:53", true),
        // Another port, another address, or the other family (IPV6_V6ONLY).
        ("0.0.0.0:8080", "127.0.0.1:8081", false),
        ("127.0.0.1:8080", "127.0.0.2:8080", false),
        ("[::]:8080", "127.0.0.1:8080", false),
        ("0.0.0.0:8080", "[::1]:8080", false),
        // A host fact, for the start-up check: not decidable from the config.
        ("0.0.0.0:8080", "10.0.0.5:8080", false),
        // Port 0 is a fresh port, never an upstream's.
        ("127.0.0.1:0", "127.0.0.1:8080", false),
    ];
    for (listen, upstream, want) in cases {
        assert_eq!(
            reaches(addr(listen), addr(upstream)),
            want,
            "{listen} <- {upstream}"
        );
    }
}

#[test]
fn an_upstream_that_is_the_listeners_own_address_names_both_keys() {
    let text =
        "[[tcp]]\nlisten = \"0.0.0.0:8080\"\nupstreams = [\"10.0.0.1:80\", \"127.0.0.1:8080\"]\n";
    let err = resolve(Some(text), &[], &[]).expect_err("a loop");
    assert_eq!(err.key, "tcp[0].upstreams[1]", "{err}");
    let shown = err.to_string();
    assert!(
        shown.starts_with(
            "ringfwd.toml: tcp[0].upstreams[1] = 127.0.0.1:8080 reaches tcp[0].listen (0.0.0.0:8080), which listens on every local address: a forwarding loop"
        ),
        "{shown}"
    );
}

#[test]
fn an_upstream_that_is_another_listener_is_a_loop_too() {
    let text = "[[tcp]]\nlisten = \"127.0.0.1:8080\"\nupstreams = [\"10.0.0.1:80\"]\n\
                [[tcp]]\nlisten = \"127.0.0.1:8081\"\nupstreams = [\"127.0.0.1:8080\"]\n";
    let err = resolve(Some(text), &[], &[]).expect_err("a loop");
    assert_eq!(err.key, "tcp[1].upstreams[0]");
    assert!(
        err.message
            .contains("= 127.0.0.1:8080 is tcp[0].listen (127.0.0.1:8080)"),
        "{err}"
    );
}

#[test]
fn udp_loops_are_rejected_and_protocols_do_not_mix() {
    let text = "[[udp]]\nlisten = \"127.0.0.1:5353\"\nupstreams = [\"127.0.0.1:5353\"]\n";
    let err = resolve(Some(text), &[], &[]).expect_err("a loop");
    assert_eq!(err.key, "udp[0].upstreams[0]");
    assert!(err.message.contains("every datagram"), "{err}");
    // A TCP listener forwarding to the UDP listener's port is no loop.
    let text = "[[udp]]\nlisten = \"127.0.0.1:5353\"\nupstreams = [\"10.0.0.53:53\"]\n\
                [[tcp]]\nlisten = \"127.0.0.1:5354\"\nupstreams = [\"127.0.0.1:5353\"]\n";
    assert!(resolve(Some(text), &[], &[]).is_ok());
}

#[test]
fn flag_loops_name_the_flags() {
    let err = resolve(None, &["127.0.0.1:8571=127.0.0.1:8571"], &[]).expect_err("a loop");
    assert_eq!(err.key, "--tcp[0]", "{err}");
    assert!(err.to_string().starts_with("--tcp[0] upstream"), "{err}");
    assert!(
        err.message.contains(
            "--tcp[0] upstream 127.0.0.1:8571 is the listen address of --tcp[0] (127.0.0.1:8571)"
        ),
        "{err}"
    );
    let err = resolve(None, &[], &["0.0.0.0:5353=127.0.0.1:5353"]).expect_err("a loop");
    assert!(err.message.contains("--udp[0] upstream"), "{err}");
    // A file upstream pointing at a flag's listener says where that flag is.
    let text = "[[tcp]]\nlisten = \"127.0.0.1:8080\"\nupstreams = [\"127.0.0.1:8090\"]\n";
    let err = resolve(Some(text), &["127.0.0.1:8090=10.0.0.1:80"], &[]).expect_err("a loop");
    assert_eq!(err.key, "tcp[0].upstreams[0]");
    assert!(
        err.message
            .contains("is the listen address of --tcp[0] (127.0.0.1:8090)"),
        "{err}"
    );
}

#[test]
fn a_wildcard_listener_reached_through_a_local_address_is_found() {
    let plan = resolve(
        None,
        &[
            "0.0.0.0:8080=192.0.2.2:8080",
            "[::]:8081=[2001:db8::2]:8081",
        ],
        &[],
    )
    .expect("no loop the config alone shows");
    let local: Vec<IpAddr> = vec![
        "127.0.0.1".parse().expect("ip"),
        "192.0.2.2".parse().expect("ip"),
        "2001:db8::2".parse().expect("ip"),
    ];
    let found = local_loop(&plan, &local).expect("found");
    assert_eq!(found.upstream, addr("192.0.2.2:8080"));
    assert_eq!(found.listen, addr("0.0.0.0:8080"));
    assert_eq!(found.listener, "0.0.0.0:8080");
    assert_eq!(local_loop(&plan, &local[..1]), None, "not a local address");
    let v6_only = local_loop(&plan, &local[2..]).expect("the IPv6 one");
    assert_eq!(v6_only.listen, addr("[::]:8081"));
    // The other family's wildcard does not receive it (IPV6_V6ONLY).
    let plan = resolve(None, &["[::]:8080=192.0.2.2:8080"], &[]).expect("plan");
    assert_eq!(local_loop(&plan, &local), None);
}
