//! Tests for the keys of what a connection does before it is forwarded and
//! what is recorded after: `send_proxy`, `accept_proxy` (`trusted_proxies`,
//! `proxy_timeout`), `[[tcp.routes]]` (`sni_timeout`) and `[log]`.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use super::*;

const FILE: &str = "ringfwd.toml";

fn host() -> HostFacts {
    HostFacts {
        available_cpus: vec![0, 1],
    }
}

fn addr(text: &str) -> SocketAddr {
    text.parse().unwrap()
}

fn cidrs(texts: &[&str]) -> Vec<Cidr> {
    texts.iter().map(|t| Cidr::parse(t).unwrap()).collect()
}

fn resolve_file(text: &str) -> Result<Plan, ConfigError> {
    Plan::resolve(Some((FILE, text)), &Overrides::default(), &host())
}

/// The listener keys every case starts from.
const BASE: &str = "listen = \"127.0.0.1:8443\"\nupstreams = [\"127.0.0.1:9000\"]";

fn tcp(keys: &str) -> String {
    format!("[[tcp]]\n{BASE}\n{keys}\n")
}

/// A `[[tcp]]` listener with `keys`, then one route per entry of `routes`
/// (each the body of a `[[tcp.routes]]` section).
fn with_routes(keys: &str, routes: &[&str]) -> String {
    let mut text = tcp(keys);
    for route in routes {
        text.push_str(&format!("[[tcp.routes]]\n{route}\n"));
    }
    text
}

#[track_caller]
fn assert_rejected(text: &str, key: &str, needles: &[&str]) -> ConfigError {
    let err = resolve_file(text).expect_err("expected a rejection");
    assert_eq!(err.key, key, "wrong key in: {err}");
    assert_eq!(err.source_name, FILE);
    for needle in needles {
        assert!(err.message.contains(needle), "{needle:?} not in: {err}");
    }
    err
}

/// Every new key set, two routes, one of them with a wildcard in capitals.
const DOCUMENTED: &str = r#"
[log]
access = "/var/log/ringfwd/access.log"
format = "json"

[[tcp]]
name = "tls"
listen = "0.0.0.0:443"
upstreams = ["10.0.0.9:443"]
send_proxy = "v2"
accept_proxy = true
trusted_proxies = ["10.0.0.0/8", "2001:db8::/32"]
proxy_timeout = "3s"
sni_timeout = "2s"

[[tcp.routes]]
sni = ["api.example.com"]
upstreams = ["10.0.0.7:443", "10.0.0.8:443"]

[[tcp.routes]]
sni = ["*.Example.org", "example.org"]
upstreams = ["10.0.1.7:443"]

[[udp]]
name = "dns"
listen = "0.0.0.0:53"
upstreams = ["10.0.0.53:53"]
send_proxy = "v2"
"#;

#[test]
fn the_documented_example_resolves_to_the_exact_plan() {
    let plan = resolve_file(DOCUMENTED).unwrap();
    let tcp = &plan.tcp[0];
    assert_eq!(tcp.send_proxy, SendProxy::V2);
    assert_eq!(
        tcp.accept_proxy,
        Some(AcceptProxy {
            trusted: cidrs(&["10.0.0.0/8", "2001:db8::/32"]),
            timeout: Duration::from_secs(3),
        })
    );
    assert_eq!(
        tcp.sni,
        Some(SniPlan {
            timeout: Duration::from_secs(2),
            routes: vec![
                RoutePlan {
                    names: vec!["api.example.com".into()],
                    upstreams: vec![addr("10.0.0.7:443"), addr("10.0.0.8:443")],
                    health_check: None,
                    weights: vec![1; 2],
                    balance: Balance::RoundRobin,
                    passive: PassiveHealth::default(),
                },
                RoutePlan {
                    names: vec!["*.example.org".into(), "example.org".into()],
                    upstreams: vec![addr("10.0.1.7:443")],
                    health_check: None,
                    weights: vec![1; 1],
                    balance: Balance::RoundRobin,
                    passive: PassiveHealth::default(),
                },
            ],
        })
    );
    assert_eq!(tcp.upstreams, vec![addr("10.0.0.9:443")]);
    assert_eq!(plan.udp[0].send_proxy, UdpSendProxy::V2);
    assert_eq!(
        plan.log,
        LogPlan {
            access: Some(AccessLog {
                target: AccessTarget::File(PathBuf::from("/var/log/ringfwd/access.log")),
                format: AccessFormat::Json,
            })
        }
    );
}

#[test]
fn unset_keys_mean_no_header_no_routes_and_no_access_log() {
    let text = format!("{}[[udp]]\n{BASE}\n", tcp(""));
    let plan = resolve_file(&text).unwrap();
    let tcp = &plan.tcp[0];
    assert_eq!(
        (tcp.send_proxy, &tcp.accept_proxy, &tcp.sni),
        (SendProxy::Off, &None, &None)
    );
    assert_eq!(plan.udp[0].send_proxy, UdpSendProxy::Off);
    assert_eq!(plan.log, LogPlan { access: None });
    let flags = Overrides {
        tcp: vec!["127.0.0.1:1=127.0.0.1:2".into()],
        udp: vec!["127.0.0.1:1=127.0.0.1:2".into()],
        ..Overrides::default()
    };
    let plan = Plan::resolve(None, &flags, &host()).unwrap();
    let tcp = &plan.tcp[0];
    assert_eq!(
        (tcp.send_proxy, &tcp.accept_proxy, &tcp.sni),
        (SendProxy::Off, &None, &None)
    );
    assert_eq!(plan.udp[0].send_proxy, UdpSendProxy::Off);
    assert_eq!(plan.log.access, None);
}

#[test]
fn timeouts_default_to_five_seconds() {
    let text = with_routes(
        "accept_proxy = true\ntrusted_proxies = [\"10.0.0.1\"]",
        &["sni = [\"a.example\"]\nupstreams = [\"10.0.0.7:443\"]"],
    );
    let tcp = &resolve_file(&text).unwrap().tcp[0];
    let accept = tcp.accept_proxy.as_ref().unwrap();
    assert_eq!(accept.timeout, Duration::from_secs(5));
    assert_eq!(accept.trusted, cidrs(&["10.0.0.1/32"]));
    assert_eq!(tcp.sni.as_ref().unwrap().timeout, Duration::from_secs(5));
}

#[test]
fn send_proxy_spellings() {
    for (written, want) in [
        ("off", SendProxy::Off),
        ("v1", SendProxy::V1),
        ("v2", SendProxy::V2),
        ("V2", SendProxy::V2),
    ] {
        let plan = resolve_file(&tcp(&format!("send_proxy = \"{written}\""))).unwrap();
        assert_eq!(plan.tcp[0].send_proxy, want, "{written}");
    }
    for (written, want) in [("off", UdpSendProxy::Off), ("v2", UdpSendProxy::V2)] {
        let text = format!("[[udp]]\n{BASE}\nsend_proxy = \"{written}\"\n");
        assert_eq!(resolve_file(&text).unwrap().udp[0].send_proxy, want);
    }
}

#[test]
fn accept_proxy_false_is_the_default_written_out() {
    let plan = resolve_file(&tcp("accept_proxy = false")).unwrap();
    assert_eq!(plan.tcp[0].accept_proxy, None);
}

#[test]
fn proxy_key_rejections_name_the_key_and_what_to_write() {
    let cases: &[(&str, &str, &[&str])] = &[
        (
            "send_proxy = \"v3\"",
            "tcp[0].send_proxy",
            &["\"v3\"", "not a PROXY protocol version", "\"v1\"", "\"v2\""],
        ),
        (
            "send_proxy = 2",
            "tcp[0].send_proxy",
            &["the integer 2", "send_proxy = \"v2\""],
        ),
        (
            "accept_proxy = \"yes\"",
            "tcp[0].accept_proxy",
            &["true or false", "\"yes\"", "accept_proxy = true"],
        ),
        (
            "accept_proxy = true",
            "tcp[0].trusted_proxies",
            &[
                "missing",
                "tcp[0].accept_proxy = true",
                "trusted_proxies = [",
            ],
        ),
        (
            "accept_proxy = true\ntrusted_proxies = []",
            "tcp[0].trusted_proxies",
            &["[] is empty", "refuse every client", "accept_proxy = false"],
        ),
        (
            "accept_proxy = true\ntrusted_proxies = [\"10.0.0.0/8\", \"10.0.0.1/8\"]",
            "tcp[0].trusted_proxies[1]",
            &["\"10.0.0.1/8\"", "10.0.0.0/8"],
        ),
        (
            "accept_proxy = true\ntrusted_proxies = \"10.0.0.0/8\"",
            "tcp[0].trusted_proxies",
            &["an array"],
        ),
        (
            "trusted_proxies = [\"10.0.0.0/8\"]",
            "tcp[0].trusted_proxies",
            &[
                "tcp[0].accept_proxy is not set",
                "would do nothing",
                "accept_proxy = true",
            ],
        ),
        (
            "accept_proxy = false\ntrusted_proxies = [\"10.0.0.0/8\"]",
            "tcp[0].trusted_proxies",
            &["tcp[0].accept_proxy is false", "remove trusted_proxies"],
        ),
        (
            "proxy_timeout = \"1s\"",
            "tcp[0].proxy_timeout",
            &["accept_proxy", "would do nothing", "remove proxy_timeout"],
        ),
        (
            "accept_proxy = true\ntrusted_proxies = [\"10.0.0.1\"]\nproxy_timeout = \"11m\"",
            "tcp[0].proxy_timeout",
            &["\"11m\"", "1ms to 10m"],
        ),
        (
            "accept_proxy = true\ntrusted_proxies = [\"10.0.0.1\"]\nproxy_timeout = 5",
            "tcp[0].proxy_timeout",
            &["bare number", "\"5s\""],
        ),
    ];
    for (keys, key, needles) in cases {
        assert_rejected(&tcp(keys), key, needles);
    }
}

#[test]
fn udp_send_proxy_v1_is_refused_naming_v2() {
    let udp = |value: &str| format!("[[udp]]\n{BASE}\nsend_proxy = {value}\n");
    assert_rejected(
        &udp("\"v1\""),
        "udp[0].send_proxy",
        &["\"v1\"", "no datagram form", "v2"],
    );
    assert_rejected(
        &udp("\"v9\""),
        "udp[0].send_proxy",
        &["\"v9\"", "for UDP", "\"off\"", "\"v2\""],
    );
    assert_rejected(&udp("true"), "udp[0].send_proxy", &["a string"]);
}

const ROUTE: &str = "sni = [\"api.example.com\"]\nupstreams = [\"10.0.0.7:443\"]";

#[test]
fn route_rejections_name_the_route_key() {
    let cases: &[(&str, &[&str], &str, &[&str])] = &[
        (
            "",
            &["upstreams = [\"10.0.0.7:443\"]"],
            "tcp[0].routes[0].sni",
            &["missing", "[[tcp.routes]]", "sni = [\"api.example.com\""],
        ),
        (
            "",
            &[ROUTE, "sni = [\"b.example\"]"],
            "tcp[0].routes[1].upstreams",
            &["missing", "upstreams = ["],
        ),
        (
            "",
            &["sni = []\nupstreams = [\"10.0.0.7:443\"]"],
            "tcp[0].routes[0].sni",
            &["[] is empty", "never be taken"],
        ),
        (
            "",
            &["sni = \"api.example.com\"\nupstreams = [\"10.0.0.7:443\"]"],
            "tcp[0].routes[0].sni",
            &["an array", "\"api.example.com\""],
        ),
        (
            "",
            &[
                ROUTE,
                "sni = [\"ok.example\", \"a.*.example\"]\nupstreams = [\"10.0.0.7:443\"]",
            ],
            "tcp[0].routes[1].sni[1]",
            &["\"a.*.example\"", "leading label", "*.example.org"],
        ),
        (
            "",
            &["sni = [\"10.0.0.1\"]\nupstreams = [\"10.0.0.7:443\"]"],
            "tcp[0].routes[0].sni[0]",
            &["IP address"],
        ),
        (
            "",
            &["sni = [7]\nupstreams = [\"10.0.0.7:443\"]"],
            "tcp[0].routes[0].sni[0]",
            &["a string", "7"],
        ),
        (
            "",
            &["sni = [\"a.example\"]\nupstreams = []"],
            "tcp[0].routes[0].upstreams",
            &["empty"],
        ),
        (
            "",
            &["sni = [\"a.example\"]\nupstreams = [\"localhost:443\"]"],
            "tcp[0].routes[0].upstreams[0]",
            &["\"localhost:443\"", "does not resolve names"],
        ),
        (
            "",
            &["sni = [\"a.example\"]\nupstreams = [\"0.0.0.0:443\"]"],
            "tcp[0].routes[0].upstreams[0]",
            &["unspecified"],
        ),
        (
            "",
            &[&format!("{ROUTE}\nsnii = 1")],
            "tcp[0].routes[0].snii",
            &["[[tcp.routes]]", "did you mean \"sni\""],
        ),
        (
            "",
            &[&format!("{ROUTE}\nconnect_timeout = \"1s\"")],
            "tcp[0].routes[0].connect_timeout",
            &["unknown key", "sni, upstreams"],
        ),
        (
            "sni_timeout = \"2s\"",
            &[],
            "tcp[0].sni_timeout",
            &[
                "no [[tcp.routes]]",
                "would do nothing",
                "remove sni_timeout",
            ],
        ),
        (
            "sni_timeout = \"0s\"",
            &[ROUTE],
            "tcp[0].sni_timeout",
            &["\"0s\"", "1ms to 10m"],
        ),
        (
            "routes = []",
            &[],
            "tcp[0].routes",
            &["[] is empty", "[[tcp.routes]]", "remove routes"],
        ),
        (
            "routes = [1]",
            &[],
            "tcp[0].routes[0]",
            &["a table", "[[tcp.routes]]"],
        ),
        (
            "routes = \"api\"",
            &[],
            "tcp[0].routes",
            &["an array", "[[tcp.routes]]"],
        ),
    ];
    for (keys, routes, key, needles) in cases {
        assert_rejected(&with_routes(keys, routes), key, needles);
    }
}

#[test]
fn a_name_in_two_routes_names_both() {
    let text = with_routes(
        "",
        &[
            "sni = [\"a.example\", \"api.example.com\"]\nupstreams = [\"10.0.0.7:443\"]",
            "sni = [\"b.example\", \"API.Example.com\"]\nupstreams = [\"10.0.0.8:443\"]",
        ],
    );
    assert_rejected(
        &text,
        "tcp[0].routes[1].sni[1]",
        &[
            "\"API.Example.com\"",
            "as \"api.example.com\"",
            "already in tcp[0].routes[0].sni[1]",
            "one route of a listener only",
        ],
    );
    let twice = with_routes(
        "",
        &["sni = [\"*.example.org\", \"*.example.org\"]\nupstreams = [\"10.0.0.7:443\"]"],
    );
    assert_rejected(
        &twice,
        "tcp[0].routes[0].sni[1]",
        &["already in tcp[0].routes[0].sni[0]", "lists it twice"],
    );
}

#[test]
fn the_same_name_may_route_on_two_listeners_and_exact_with_wildcard() {
    let route = "sni = [\"api.example.com\", \"*.example.com\"]\nupstreams = [\"10.0.0.7:443\"]";
    let mut text = with_routes("", &[route]);
    text.push_str(&format!(
        "[[tcp]]\nlisten = \"127.0.0.1:8444\"\nupstreams = [\"127.0.0.1:9000\"]\n[[tcp.routes]]\n{route}\n"
    ));
    let plan = resolve_file(&text).unwrap();
    assert_eq!(plan.tcp.len(), 2);
    assert!(plan.tcp.iter().all(|t| t.sni.is_some()));
}

#[test]
fn a_route_upstream_that_is_a_listen_address_is_a_loop() {
    let text = with_routes(
        "",
        &[
            ROUTE,
            "sni = [\"b.example\"]\nupstreams = [\"10.0.0.8:443\", \"127.0.0.1:8443\"]",
        ],
    );
    assert_rejected(
        &text,
        "tcp[0].routes[1].upstreams[1]",
        &["127.0.0.1:8443", "tcp[0].listen", "forwarding loop"],
    );
    // A route upstream reaching another listener's wildcard address loops too.
    let mut text = with_routes(
        "",
        &["sni = [\"b.example\"]\nupstreams = [\"127.0.0.1:7000\"]"],
    );
    text.push_str("[[tcp]]\nlisten = \"0.0.0.0:7000\"\nupstreams = [\"10.0.0.1:1\"]\n");
    assert_rejected(
        &text,
        "tcp[0].routes[0].upstreams[0]",
        &["reaches tcp[1].listen", "every local address"],
    );
}

#[test]
fn a_route_upstream_on_another_address_of_this_host_is_found() {
    let mut text = with_routes(
        "",
        &["sni = [\"b.example\"]\nupstreams = [\"192.0.2.2:7000\"]"],
    );
    text.push_str(
        "[[tcp]]\nname = \"wild\"\nlisten = \"0.0.0.0:7000\"\nupstreams = [\"10.0.0.1:1\"]\n",
    );
    let plan = resolve_file(&text).unwrap();
    let local: IpAddr = "192.0.2.2".parse().unwrap();
    let found = local_loop(&plan, &[local]).expect("the route's upstream loops");
    assert_eq!(found.upstream, addr("192.0.2.2:7000"));
    assert_eq!(
        (found.upstream_of.as_str(), found.listener.as_str()),
        ("127.0.0.1:8443", "wild")
    );
}

#[test]
fn access_log_targets_and_formats() {
    let log = |keys: &str| resolve_file(&format!("[log]\n{keys}\n{}", tcp(""))).map(|p| p.log);
    let access = |target, format| {
        Ok(LogPlan {
            access: Some(AccessLog { target, format }),
        })
    };
    assert_eq!(
        log("access = \"stdout\""),
        access(AccessTarget::Stdout, AccessFormat::Text)
    );
    assert_eq!(
        log("access = \"stderr\"\nformat = \"text\""),
        access(AccessTarget::Stderr, AccessFormat::Text)
    );
    assert_eq!(
        log("access = \"logs/access.log\"\nformat = \"JSON\""),
        access(
            AccessTarget::File(PathBuf::from("logs/access.log")),
            AccessFormat::Json
        )
    );
    assert_eq!(log(""), Ok(LogPlan { access: None }));
}

#[test]
fn log_rejections_name_the_key_and_what_to_write() {
    let cases: &[(&str, &str, &[&str])] = &[
        (
            "access = \"\"",
            "log.access",
            &["\"\" is empty", "\"stdout\"", "remove the key"],
        ),
        (
            "access = \" stdout\"",
            "log.access",
            &["white space", "\"stdout\""],
        ),
        ("access = \"/var/log/\"", "log.access", &["a directory"]),
        ("access = \"logs/..\"", "log.access", &["a directory"]),
        ("access = \"a\\u0000b\"", "log.access", &["NUL"]),
        ("access = true", "log.access", &["a string", "true"]),
        (
            "access = \"stdout\"\nformat = \"xml\"",
            "log.format",
            &["\"xml\"", "\"text\"", "\"json\""],
        ),
        (
            "format = \"json\"",
            "log.format",
            &["log.access is not", "access = \"stdout\"", "remove format"],
        ),
        (
            "acess = \"stdout\"",
            "log.acess",
            &["[log]", "did you mean \"access\""],
        ),
    ];
    for (keys, key, needles) in cases {
        assert_rejected(&format!("[log]\n{keys}\n{}", tcp("")), key, needles);
    }
    assert_rejected(
        &format!("log = \"stdout\"\n{}", tcp("")),
        "log",
        &["a table", "[log]"],
    );
}

#[test]
fn check_shows_every_new_key_and_round_trips() {
    let text = DOCUMENTED.replace("0.0.0.0:53", "127.0.0.1:53");
    let plan = resolve_file(&text).unwrap();
    let shown = plan.to_string();
    let want = "[[tcp]]\nname = \"tls\"\nlisten = \"0.0.0.0:443\"\n";
    assert!(shown.contains(want), "{shown}");
    let tail = "send_proxy = \"v2\"\naccept_proxy = true\n\
                trusted_proxies = [\"10.0.0.0/8\", \"2001:db8::/32\"]\nproxy_timeout = \"3s\"\n\
                sni_timeout = \"2s\"\n\
                [[tcp.routes]]\nsni = [\"api.example.com\"]\n\
                upstreams = [\"10.0.0.7:443\", \"10.0.0.8:443\"]\n\
                balance = \"round_robin\"\nmax_fails = 1\nfail_timeout = \"10s\"\n\
                [[tcp.routes]]\nsni = [\"*.example.org\", \"example.org\"]\n\
                upstreams = [\"10.0.1.7:443\"]\n\
                balance = \"round_robin\"\nmax_fails = 1\nfail_timeout = \"10s\"\n";
    assert!(shown.contains(tail), "{shown}");
    let log = "[log]\naccess = \"/var/log/ringfwd/access.log\"\nformat = \"json\"\n";
    assert!(shown.contains(log), "{shown}");
    assert!(
        shown.ends_with("# session_rcvbuf: unset (kernel default)\nsend_proxy = \"v2\"\n"),
        "{shown}"
    );
    assert_eq!(resolve_file(&shown), Ok(plan));
}

#[test]
fn check_shows_the_defaults_and_round_trips() {
    let plan = resolve_file(&tcp("")).unwrap();
    let shown = plan.to_string();
    for line in [
        "[log]",
        "# access: unset (no access log)",
        "send_proxy = \"off\"",
        "accept_proxy = false",
        "# routes: none (every connection goes to upstreams)",
    ] {
        assert!(
            shown.lines().any(|l| l == line),
            "{line:?} not in:\n{shown}"
        );
    }
    assert!(!shown.contains("trusted_proxies"), "{shown}");
    assert!(!shown.contains("sni_timeout"), "{shown}");
    assert_eq!(resolve_file(&shown), Ok(plan));
}

#[test]
fn an_access_log_path_with_odd_characters_round_trips() {
    let text = format!(
        "[log]\naccess = \"logs/a \\\"b\\\"\\\\c\\u0007.log\"\n{}",
        tcp("")
    );
    let plan = resolve_file(&text).unwrap();
    assert_eq!(
        plan.log.access.as_ref().map(|a| &a.target),
        Some(&AccessTarget::File(PathBuf::from(
            "logs/a \"b\"\\c\u{7}.log"
        )))
    );
    assert_eq!(resolve_file(&plan.to_string()), Ok(plan));
}

#[test]
fn lists_past_their_bounds_are_refused_naming_the_bound() {
    let ranges: Vec<String> = (0..1025)
        .map(|i| format!("\"10.{}.{}.0/24\"", i / 256, i % 256))
        .collect();
    let text = tcp(&format!(
        "accept_proxy = true\ntrusted_proxies = [{}]",
        ranges.join(", ")
    ));
    assert_rejected(
        &text,
        "tcp[0].trusted_proxies",
        &["1025 ranges", "at most 1024"],
    );
    let names: Vec<String> = (0..1025).map(|i| format!("\"h{i}.example\"")).collect();
    let text = with_routes(
        "",
        &[&format!(
            "sni = [{}]\nupstreams = [\"10.0.0.7:443\"]",
            names.join(", ")
        )],
    );
    assert_rejected(
        &text,
        "tcp[0].routes[0].sni",
        &["1025 names", "at most 1024"],
    );
    let routes: Vec<String> = (0..1025)
        .map(|i| format!("sni = [\"h{i}.example\"]\nupstreams = [\"10.0.0.7:443\"]"))
        .collect();
    let routes: Vec<&str> = routes.iter().map(String::as_str).collect();
    assert_rejected(
        &with_routes("", &routes),
        "tcp[0].routes",
        &["1025 routes", "at most 1024"],
    );
    let fits: Vec<&str> = routes.iter().copied().take(1024).collect();
    assert_eq!(
        resolve_file(&with_routes("", &fits)).unwrap().tcp[0]
            .sni
            .as_ref()
            .unwrap()
            .routes
            .len(),
        1024
    );
}

/// The TOML block that opens the README's configuration section.
fn readme_example() -> &'static str {
    let readme = include_str!("../../README.md");
    let start = "## Configuration\n\n```toml\n";
    let from = readme
        .find(start)
        .expect("README has a configuration example")
        + start.len();
    let len = readme[from..].find("```").expect("the example ends");
    &readme[from..from + len]
}

#[test]
fn the_readme_example_resolves_with_the_documented_values() {
    let plan = resolve_file(readme_example()).unwrap();
    let tls = plan.tcp.iter().find(|t| t.name == "tls").unwrap();
    assert_eq!(tls.send_proxy, SendProxy::V2);
    assert_eq!(
        tls.accept_proxy,
        Some(AcceptProxy {
            trusted: cidrs(&["10.0.0.0/8"]),
            timeout: Duration::from_secs(5),
        })
    );
    let sni = tls.sni.as_ref().unwrap();
    let names: Vec<&[String]> = sni.routes.iter().map(|r| r.names.as_slice()).collect();
    assert_eq!(
        names,
        [
            &["api.example.com".to_owned(), "*.example.org".to_owned()][..],
            &["example.org".to_owned()][..]
        ]
    );
    assert_eq!(plan.tcp[0].send_proxy, SendProxy::Off);
    assert_eq!(plan.udp[0].send_proxy, UdpSendProxy::V2);
    assert_eq!(plan.log.access.map(|a| a.format), Some(AccessFormat::Json));
}

#[test]
fn a_route_clash_reads_as_the_readme_shows() {
    let text = with_routes(
        "",
        &[
            "sni = [\"api.example.com\"]\nupstreams = [\"10.0.0.7:443\"]",
            "sni = [\"API.example.com\"]\nupstreams = [\"10.0.0.8:443\"]",
        ],
    );
    let err = Plan::resolve(Some(("bad.toml", &text)), &Overrides::default(), &host());
    let shown = format!("ringfwd: {}", err.unwrap_err());
    let readme = include_str!("../../README.md");
    assert!(
        readme.contains(&format!("\n{shown}\n")),
        "README lacks:\n{shown}"
    );
}
