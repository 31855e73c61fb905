//! Tests for `[[udp]]` sections, `--udp` flags, `echo --udp` and the UDP runtime keys.

use std::net::SocketAddr;
use std::time::Duration;

use super::*;

const FILE: &str = "ringfwd.toml";

fn host(cpus: usize) -> HostFacts {
    HostFacts {
        available_cpus: (0..cpus).collect(),
    }
}

fn addr(text: &str) -> SocketAddr {
    text.parse().unwrap()
}

fn resolve_file(text: &str) -> Result<Plan, ConfigError> {
    Plan::resolve(Some((FILE, text)), &Overrides::default(), &host(2))
}

#[track_caller]
fn assert_udp_rejected(udp_keys: &str, key: &str, needles: &[&str]) {
    let err = resolve_file(&format!("[[udp]]\n{udp_keys}\n")).expect_err("expected a rejection");
    assert_eq!(err.key, key, "wrong key in: {err}");
    assert_eq!(err.source_name, FILE);
    for needle in needles {
        assert!(err.message.contains(needle), "{needle:?} not in: {err}");
    }
}

const MINIMAL: &str = "listen = \"127.0.0.1:5353\"\nupstreams = [\"127.0.0.1:53\"]";

#[test]
fn the_documented_example_resolves_to_the_exact_plan() {
    let text = r#"
        [[udp]]
        name = "dns"
        listen = "0.0.0.0:53"
        upstreams = ["10.0.0.53:53", "10.0.0.54:53"]
        idle_timeout = "60s"
        max_responses = 1
        max_sessions = 100000
        new_sessions_per_second_per_source = 50
        allow = ["10.0.0.0/8"]
    "#;
    let plan = resolve_file(text).unwrap();
    assert_eq!(
        plan.udp,
        vec![UdpListenerPlan {
            name: "dns".into(),
            listen: addr("0.0.0.0:53"),
            upstreams: vec![addr("10.0.0.53:53"), addr("10.0.0.54:53")],
            weights: vec![1; 2],
            balance: Balance::RoundRobin,
            passive: PassiveHealth::default(),
            idle_timeout: Duration::from_secs(60),
            max_responses: Some(1),
            max_sessions: 100_000,
            max_sessions_given: LimitSource::Explicit,
            new_sessions_per_second_per_source: Some(50),
            allow: vec![Cidr::parse("10.0.0.0/8").unwrap()],
            deny: Vec::new(),
            rcvbuf: None,
            sndbuf: None,
            session_rcvbuf: None,
            send_proxy: UdpSendProxy::Off,
            transparent: None,
        }]
    );
    assert!(plan.tcp.is_empty());
    assert!(plan.has_udp());
}

#[test]
fn udp_defaults_fill_every_missing_value() {
    let plan = resolve_file(&format!("[[udp]]\n{MINIMAL}\n")).unwrap();
    let udp = &plan.udp[0];
    assert_eq!(udp.name, "127.0.0.1:5353");
    assert_eq!(udp.idle_timeout, Duration::from_secs(60));
    assert_eq!(udp.max_responses, None);
    assert_eq!(udp.max_sessions, 100_000);
    assert_eq!(udp.new_sessions_per_second_per_source, None);
    assert!(udp.allow.is_empty());
    assert_eq!(plan.runtime.max_datagram, 65507);
    assert_eq!(plan.runtime.udp_buffers_per_shard, 512);
}

#[test]
fn udp_rejections_name_the_key_and_the_value() {
    let with = |extra: &str| format!("{MINIMAL}\n{extra}");
    assert_udp_rejected(
        "upstreams = [\"127.0.0.1:53\"]",
        "udp[0].listen",
        &["every [[udp]] section needs listen"],
    );
    assert_udp_rejected(
        "listen = \"127.0.0.1:5353\"",
        "udp[0].upstreams",
        &["every [[udp]] section needs upstreams"],
    );
    assert_udp_rejected(
        &with("idle_timeout = \"0s\""),
        "udp[0].idle_timeout",
        &["out of range", "1ms to 1d"],
    );
    assert_udp_rejected(
        &with("idle_timeout = 60"),
        "udp[0].idle_timeout",
        &["needs a unit"],
    );
    assert_udp_rejected(
        &with("max_responses = 0"),
        "udp[0].max_responses",
        &["0 is out of range", "max_responses = 1"],
    );
    assert_udp_rejected(
        &with("max_sessions = 1"),
        "udp[0].max_sessions",
        &["less than the 2 shards"],
    );
    assert_udp_rejected(
        &with("max_sessions = -5"),
        "udp[0].max_sessions",
        &["-5 is out of range"],
    );
    assert_udp_rejected(
        &with("new_sessions_per_second_per_source = 0"),
        "udp[0].new_sessions_per_second_per_source",
        &["out of range", "new_sessions_per_second_per_source = 50"],
    );
    assert_udp_rejected(
        &with("allow = []"),
        "udp[0].allow",
        &["would drop every client"],
    );
    assert_udp_rejected(
        &with("allow = [\"10.0.0.0/8\", \"10.0.0.1/8\"]"),
        "udp[0].allow[1]",
        &["bits set past the /8", "10.0.0.0/8"],
    );
    assert_udp_rejected(
        &with("allow = [\"ten/8\"]"),
        "udp[0].allow[0]",
        &["IPv4 or IPv6 address"],
    );
    assert_udp_rejected(&with("allow = \"10.0.0.0/8\""), "udp[0].allow", &["array"]);
    assert_udp_rejected(
        &with("rcvbuf = 100"),
        "udp[0].rcvbuf",
        &["out of range", "rcvbuf = \"4MiB\""],
    );
    assert_udp_rejected(
        &with("session_rcvbuf = \"1KiB\""),
        "udp[0].session_rcvbuf",
        &["out of range", "session_rcvbuf = \"4MiB\""],
    );
    assert_udp_rejected(
        &with("sndbuf = \"1GiB\""),
        "udp[0].sndbuf",
        &["out of range", "512MiB"],
    );
    assert_udp_rejected(
        &with("max_response = 1"),
        "udp[0].max_response",
        &["did you mean \"max_responses\"", "in [[udp]]"],
    );
    assert_udp_rejected(
        &with("connect_timeout = \"1s\""),
        "udp[0].connect_timeout",
        &["unknown key", "in [[udp]]"],
    );
}

#[test]
fn runtime_udp_keys_are_checked() {
    let listener = format!("[[udp]]\n{MINIMAL}\n");
    let plan = resolve_file(&format!(
        "[runtime]\nmax_datagram = \"4KiB\"\nudp_buffers_per_shard = 64\n{listener}"
    ))
    .unwrap();
    assert_eq!(plan.runtime.max_datagram, 4096);
    assert_eq!(plan.runtime.udp_buffers_per_shard, 64);
    for (runtime, key, needle) in [
        ("max_datagram = 100", "runtime.max_datagram", "512 to 65527"),
        (
            "max_datagram = 70000",
            "runtime.max_datagram",
            "out of range",
        ),
        (
            "udp_buffers_per_shard = 4",
            "runtime.udp_buffers_per_shard",
            "8 to 32768",
        ),
    ] {
        let err = resolve_file(&format!("[runtime]\n{runtime}\n{listener}")).unwrap_err();
        assert_eq!(err.key, key, "{err}");
        assert!(err.message.contains(needle), "{needle:?} not in {err}");
    }
}

#[test]
fn tcp_and_udp_may_share_an_address_and_name_but_two_udp_may_not() {
    let text = r#"
        [[tcp]]
        listen = "127.0.0.1:53"
        upstreams = ["127.0.0.1:5300"]
        [[udp]]
        listen = "127.0.0.1:53"
        upstreams = ["127.0.0.1:5300"]
    "#;
    let plan = resolve_file(text).unwrap();
    assert_eq!(plan.tcp[0].name, plan.udp[0].name);
    let twice = format!("[[udp]]\n{MINIMAL}\n[[udp]]\n{MINIMAL}\n");
    let err = resolve_file(&twice).unwrap_err();
    assert_eq!(err.key, "udp[1].listen");
    assert!(err.message.contains("udp[0].listen"), "{err}");
}

#[test]
fn udp_flags_and_udp_echo_add_listeners() {
    let overrides = Overrides {
        udp: vec!["127.0.0.1:5353=127.0.0.1:53,[::1]:53".into()],
        echo_udp: vec!["127.0.0.1:9000".into()],
        echo: vec!["127.0.0.1:9000".into()],
        ..Overrides::default()
    };
    let plan = Plan::resolve(None, &overrides, &host(1)).unwrap();
    assert_eq!(plan.udp.len(), 1);
    assert_eq!(plan.udp[0].listen, addr("127.0.0.1:5353"));
    assert_eq!(
        plan.udp[0].upstreams,
        vec![addr("127.0.0.1:53"), addr("[::1]:53")]
    );
    assert_eq!(plan.udp[0].max_sessions, 100_000);
    let protos: Vec<Proto> = plan.echo.iter().map(|e| e.proto).collect();
    assert_eq!(protos, vec![Proto::Tcp, Proto::Udp]);

    let bad = Overrides {
        udp: vec!["127.0.0.1:5353".into()],
        ..Overrides::default()
    };
    let err = Plan::resolve(None, &bad, &host(1)).unwrap_err();
    assert_eq!(err.key, "--udp[0]");
    assert!(err.message.contains("no \"=\""), "{err}");
    let dup = Overrides {
        echo_udp: vec!["127.0.0.1:9000".into(), " 127.0.0.1:9000".into()],
        ..Overrides::default()
    };
    let err = Plan::resolve(None, &dup, &host(1)).unwrap_err();
    assert_eq!(err.key, "echo --udp[1]");
}

#[test]
fn udp_display_round_trips_and_shows_shares_and_buffers() {
    let text = r#"
        [runtime]
        shards = 2
        max_datagram = 4000
        [[udp]]
        name = "dns"
        listen = "[::]:53"
        upstreams = ["10.0.0.53:53"]
        max_responses = 1
        max_sessions = 11
        new_sessions_per_second_per_source = 5
        allow = ["10.0.0.0/8", "2001:db8::/32"]
        rcvbuf = "8MiB"
        session_rcvbuf = "1MiB"
        [[udp]]
        listen = "127.0.0.1:5353"
        upstreams = ["10.0.0.53:53"]
    "#;
    let plan = resolve_file(text).unwrap();
    let shown = plan.to_string();
    for line in [
        "max_datagram = 4000",
        "# datagram buffers: 512 x 4160B = 2080KiB per shard, 4160KiB in total",
        "[[udp]]",
        "name = \"dns\"",
        "max_responses = 1",
        "max_sessions = 11  # per shard: 6 on shard 0, 5 on shard 1",
        "new_sessions_per_second_per_source = 5",
        "allow = [\"10.0.0.0/8\", \"2001:db8::/32\"]",
        "# max_responses: unset (sessions end by idle_timeout)",
        "rcvbuf = \"8MiB\"",
        "# sndbuf: unset (kernel default)",
        "session_rcvbuf = \"1MiB\"",
    ] {
        assert!(
            shown.lines().any(|l| l == line),
            "{line:?} not in:\n{shown}"
        );
    }
    assert_eq!(resolve_file(&shown), Ok(plan));
}

const TPROXY: &str = "listen = \"0.0.0.0:15353\"\ntransparent = \"tproxy\"";

fn cidrs(texts: &[&str]) -> Vec<Cidr> {
    texts.iter().map(|t| Cidr::parse(t).unwrap()).collect()
}

#[test]
fn tproxy_udp_has_a_policy_a_reply_bound_and_no_upstreams() {
    let plan = resolve_file(&format!("[[udp]]\n{TPROXY}\n")).unwrap();
    let udp = &plan.udp[0];
    assert!(udp.upstreams.is_empty());
    assert_eq!(
        udp.transparent,
        Some(UdpTransparent {
            policy: forward::DestinationPolicy {
                allow: Vec::new(),
                // The same default as a transparent [[tcp]]: no loopback,
                // no link-local (cloud metadata).
                deny: cidrs(&["127.0.0.0/8", "169.254.0.0/16", "::1/128", "fe80::/10"]),
                ports: Vec::new(),
            },
            reply_sockets: udp::DEFAULT_REPLY_SOCKETS,
        })
    );
    let keyed = format!(
        "[[udp]]\n{TPROXY}\ndestinations_allow = [\"10.0.0.0/8\"]\n\
         destinations_deny = []\nports = [53, \"5000-5001\"]\ntproxy_reply_sockets = 7\n\
         max_responses = 1\nsend_proxy = \"v2\"\n"
    );
    let udp = resolve_file(&keyed).unwrap().udp.remove(0);
    assert_eq!(
        udp.transparent,
        Some(UdpTransparent {
            policy: forward::DestinationPolicy {
                allow: cidrs(&["10.0.0.0/8"]),
                deny: Vec::new(),
                ports: vec![53..=53, 5000..=5001],
            },
            reply_sockets: 7,
        })
    );
    assert_eq!(udp.max_responses, Some(1));
}

#[test]
fn tproxy_udp_refuses_redirect_and_the_keys_of_an_upstream_pool() {
    let at = |k: &str| format!("udp[0].{k}");
    assert_udp_rejected(
        "listen = \"0.0.0.0:15353\"\ntransparent = \"redirect\"",
        &at("transparent"),
        &["cannot work for UDP", "not per datagram", "\"tproxy\""],
    );
    assert_udp_rejected(
        "listen = \"0.0.0.0:15353\"\ntransparent = \"tproxi\"",
        &at("transparent"),
        &["\"tproxi\" is not a transparent mode", "\"tproxy\""],
    );
    assert_udp_rejected(
        &format!("{TPROXY}\nupstreams = [\"10.0.0.53:53\"]"),
        &at("upstreams"),
        &["no upstreams", "remove upstreams"],
    );
    for key in [
        "balance = \"random\"",
        "max_fails = 2",
        "fail_timeout = \"5s\"",
    ] {
        let name = key.split(' ').next().unwrap();
        assert_udp_rejected(
            &format!("{TPROXY}\n{key}"),
            &at(name),
            &[&format!("{name} does not apply to a transparent listener")],
        );
    }
    assert_udp_rejected(
        &format!("{TPROXY}\ntproxy_reply_sockets = 0"),
        &at("tproxy_reply_sockets"),
        &["0 is out of range", "1 to 1000000"],
    );
}

#[test]
fn transparent_keys_without_transparent_name_it() {
    for key in [
        "destinations_allow = [\"10.0.0.0/8\"]",
        "destinations_deny = []",
        "ports = [53]",
        "tproxy_reply_sockets = 5",
    ] {
        let name = key.split(' ').next().unwrap();
        assert_udp_rejected(
            &format!("{MINIMAL}\n{key}"),
            &format!("udp[0].{name}"),
            &["not transparent", "set transparent = \"tproxy\""],
        );
    }
    assert_udp_rejected(
        "listen = \"0.0.0.0:15353\"",
        "udp[0].upstreams",
        &["missing", "or transparent = \"tproxy\""],
    );
}

#[test]
fn check_prints_every_tproxy_key_and_reads_it_back() {
    let text = format!(
        "[[udp]]\nname = \"tp\"\n{TPROXY}\nports = [53]\ndestinations_allow = [\"10.0.0.0/8\"]\n\
         tproxy_reply_sockets = 9\n"
    );
    let plan = resolve_file(&text).unwrap();
    let shown = plan.to_string();
    for line in [
        "transparent = \"tproxy\"  # each datagram goes where its client sent it",
        "destinations_allow = [\"10.0.0.0/8\"]",
        "destinations_deny = [\"127.0.0.0/8\", \"169.254.0.0/16\", \"::1/128\", \"fe80::/10\"]",
        "ports = [53]",
        "tproxy_reply_sockets = 9  # per shard; each one a descriptor",
    ] {
        assert!(
            shown.lines().any(|l| l == line),
            "{line:?} not in:\n{shown}"
        );
    }
    assert!(!shown.contains("upstreams"), "{shown}");
    assert_eq!(resolve_file(&shown), Ok(plan));
}
