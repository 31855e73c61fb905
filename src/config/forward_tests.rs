//! Tests for the keys of listeners whose clients name their destination:
//! `[[socks5]]`, `[[http_connect]]`, `transparent` `[[tcp]]` (with the
//! destination policy keys), `mptcp` / `upstream_mptcp`, `users_file`, the
//! open-proxy refusal, and `check`'s output of them read back.

use std::net::{IpAddr, SocketAddr};
use std::ops::RangeInclusive;
use std::path::PathBuf;
use std::time::Duration;

use super::forward::{
    DestinationPolicy, Mptcp, ProxyPlan, Refusal, TcpKind, TransparentMode, TransparentPlan,
};
use super::*;
use crate::front::Credentials;

const FILE: &str = "ringfwd.toml";

fn resolve_with(text: &str, overrides: &Overrides) -> Result<Plan, ConfigError> {
    let host = HostFacts {
        available_cpus: vec![0, 1],
    };
    Plan::resolve(Some((FILE, text)), overrides, &host)
}

fn resolve_file(text: &str) -> Result<Plan, ConfigError> {
    resolve_with(text, &Overrides::default())
}

fn addr(text: &str) -> SocketAddr {
    text.parse().unwrap()
}

fn cidrs(texts: &[&str]) -> Vec<Cidr> {
    texts.iter().map(|t| Cidr::parse(t).unwrap()).collect()
}

const DEFAULT_DENY: [&str; 4] = ["127.0.0.0/8", "169.254.0.0/16", "::1/128", "fe80::/10"];

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

fn socks(keys: &str) -> String {
    format!("[[socks5]]\nlisten = \"127.0.0.1:1080\"\n{keys}\n")
}

fn connect(keys: &str) -> String {
    format!("[[http_connect]]\nlisten = \"127.0.0.1:3128\"\n{keys}\n")
}

fn transparent(keys: &str) -> String {
    format!("[[tcp]]\nlisten = \"127.0.0.1:15001\"\ntransparent = \"redirect\"\n{keys}\n")
}

fn proxy(plan: &TcpListenerPlan) -> &ProxyPlan {
    match &plan.kind {
        TcpKind::Socks5(p) | TcpKind::HttpConnect(p) => p,
        other => panic!("not a proxy: {other:?}"),
    }
}

fn policy(plan: &Plan) -> &DestinationPolicy {
    plan.tcp[0].kind.policy().expect("a policy")
}

/// A file under the temp dir, unique to this process and `name`.
fn temp_file(name: &str, text: &str) -> PathBuf {
    let path = std::env::temp_dir().join(format!(
        "ringfwd-forward-tests-{}-{name}",
        std::process::id()
    ));
    std::fs::write(&path, text).expect("write a temp file");
    path
}

fn creds(user: &str, password: &str) -> Credentials {
    Credentials {
        user: user.as_bytes().to_vec(),
        password: password.as_bytes().to_vec(),
    }
}

#[test]
fn a_socks5_section_is_a_tcp_listener_with_the_defaults() {
    let plan = resolve_file(&socks("")).unwrap();
    let tcp = &plan.tcp[0];
    assert_eq!(tcp.name, "127.0.0.1:1080", "named after its listen address");
    assert_eq!(tcp.listen, addr("127.0.0.1:1080"));
    assert!(tcp.upstreams.is_empty() && tcp.weights.is_empty());
    assert_eq!(tcp.connect_timeout, Duration::from_secs(5));
    assert_eq!(tcp.idle_timeout, Duration::from_secs(600));
    assert_eq!(tcp.half_close_timeout, Duration::from_secs(60));
    assert_eq!(tcp.max_connections, 10_000);
    assert_eq!(tcp.max_connections_given, LimitSource::Default);
    assert_eq!(tcp.limits, TcpLimits::default());
    assert_eq!(tcp.bandwidth_limit, None);
    assert_eq!((tcp.mptcp, tcp.upstream_mptcp), (Mptcp::Off, false));
    assert_eq!(
        tcp.kind,
        TcpKind::Socks5(ProxyPlan {
            users: forward::Users::default(),
            policy: DestinationPolicy {
                allow: Vec::new(),
                deny: cidrs(&DEFAULT_DENY),
                ports: Vec::new(),
            },
            udp_idle: None,
            header_timeout: Duration::from_secs(10),
        })
    );
}

#[test]
fn an_http_connect_section_defaults_to_port_443() {
    let plan = resolve_file(&connect("")).unwrap();
    let p = proxy(&plan.tcp[0]);
    assert!(matches!(plan.tcp[0].kind, TcpKind::HttpConnect(_)));
    assert_eq!(p.policy.ports, [443..=443]);
    assert_eq!(p.policy.deny, cidrs(&DEFAULT_DENY));
    assert_eq!(p.udp_idle, None);
    assert_eq!(p.header_timeout, Duration::from_secs(10));
    assert!(p.policy.port_allowed(443) && !p.policy.port_allowed(80));
}

#[test]
fn the_default_deny_list_blocks_loopback_and_link_local_and_writing_it_replaces_it() {
    for text in [socks(""), connect(""), transparent("")] {
        let plan = resolve_file(&text).unwrap();
        let p = policy(&plan);
        for denied in [
            "127.0.0.1:443",
            "127.9.9.9:443",
            "169.254.169.254:443",
            "[::1]:443",
            "[fe80::1]:443",
            "[::ffff:127.0.0.1]:443",
        ] {
            assert_eq!(p.check(addr(denied)), Err(Refusal::Address), "{denied}");
        }
        assert_eq!(p.check(addr("192.0.2.7:443")), Ok(()));
    }
    let plan = resolve_file(&socks("destinations_deny = [\"10.0.0.0/8\"]")).unwrap();
    assert_eq!(policy(&plan).deny, cidrs(&["10.0.0.0/8"]));
    assert_eq!(policy(&plan).check(addr("127.0.0.1:80")), Ok(()));
    let plan = resolve_file(&socks("destinations_deny = []")).unwrap();
    assert!(policy(&plan).deny.is_empty(), "[] denies nothing");
}

#[test]
fn the_default_ports_are_per_kind() {
    let ports = |text: &str| policy(&resolve_file(text).unwrap()).ports.clone();
    let every: Vec<RangeInclusive<u16>> = Vec::new();
    assert_eq!(ports(&socks("")), every);
    assert_eq!(ports(&transparent("")), every);
    assert_eq!(ports(&connect("")), [443..=443]);
    let listed = "ports = [80, 443, \"1024-65535\", \"8080-8080\"]";
    let want = [80..=80, 443..=443, 1024..=65535, 8080..=8080];
    assert_eq!(ports(&socks(listed)), want);
    assert_eq!(ports(&connect(listed)), want, "written, it replaces [443]");
    assert_eq!(ports(&transparent(listed)), want);
}

const EVERY_SOCKS5_KEY: &str = r#"
[runtime]
shards = 2

[[socks5]]
name = "socks"
listen = "0.0.0.0:1080"
users = [{ name = "alice", password = "secret" }, { name = "bob", password = "p:w" }]
allow = ["10.0.0.0/8"]
deny = ["10.9.0.0/16"]
new_connections_per_second = 100
new_connections_per_second_per_source = 5
destinations_allow = ["0.0.0.0/0", "::/0"]
destinations_deny = ["127.0.0.0/8"]
ports = [80, "1024-65535"]
header_timeout = "3s"
connect_timeout = "2s"
idle_timeout = "1m"
half_close_timeout = "20s"
max_connections = 50
bandwidth_limit = "1MiB/s"
mptcp = "required"
upstream_mptcp = true
open = true
"#;

#[test]
fn every_socks5_key_resolves() {
    let plan = resolve_file(EVERY_SOCKS5_KEY).unwrap();
    let tcp = &plan.tcp[0];
    assert_eq!(tcp.name, "socks");
    assert_eq!(tcp.listen, addr("0.0.0.0:1080"));
    assert_eq!(tcp.limits.access.allow, cidrs(&["10.0.0.0/8"]));
    assert_eq!(tcp.limits.access.deny, cidrs(&["10.9.0.0/16"]));
    assert_eq!(tcp.limits.new_connections_per_second, Some(100));
    assert_eq!(tcp.limits.new_connections_per_second_per_source, Some(5));
    assert_eq!(tcp.connect_timeout, Duration::from_secs(2));
    assert_eq!(tcp.idle_timeout, Duration::from_secs(60));
    assert_eq!(tcp.half_close_timeout, Duration::from_secs(20));
    assert_eq!(
        (tcp.max_connections, tcp.max_connections_given),
        (50, LimitSource::Explicit)
    );
    assert_eq!(tcp.bandwidth_limit, Some(1 << 20));
    assert_eq!((tcp.mptcp, tcp.upstream_mptcp), (Mptcp::Required, true));
    let p = proxy(tcp);
    assert_eq!(p.users.len(), 2);
    assert_eq!(p.users.check(&creds("bob", "p:w")), Some(b"bob".as_slice()));
    assert_eq!(p.users.check(&creds("alice", "p:w")), None);
    assert_eq!(p.users.file(), None);
    assert_eq!(
        p.policy,
        DestinationPolicy {
            allow: cidrs(&["0.0.0.0/0", "::/0"]),
            deny: cidrs(&["127.0.0.0/8"]),
            ports: vec![80..=80, 1024..=65535],
        }
    );
    assert_eq!(p.udp_idle, None);
    assert_eq!(p.header_timeout, Duration::from_secs(3));
    let udp = resolve_file(&socks("udp = true")).unwrap();
    let TcpKind::Socks5(p) = &udp.tcp[0].kind else {
        panic!("not socks5: {:?}", udp.tcp[0].kind);
    };
    assert_eq!(p.udp_idle, Some(Duration::from_secs(60)), "the default");
    assert!(
        udp.has_udp(),
        "UDP ASSOCIATE needs the shards' datagram buffers"
    );
    let idle = resolve_file(&socks("udp = true\nudp_idle_timeout = \"5s\"")).unwrap();
    let TcpKind::Socks5(p) = &idle.tcp[0].kind else {
        panic!("not socks5");
    };
    assert_eq!(p.udp_idle, Some(Duration::from_secs(5)));
    assert!(!resolve_file(&socks("udp = false")).unwrap().has_udp());
}

#[test]
fn mptcp_takes_true_false_or_required_on_every_tcp_kind() {
    let forward = "[[tcp]]\nlisten = \"127.0.0.1:8080\"\nupstreams = [\"127.0.0.1:9000\"]\n";
    for section in [forward.to_owned(), socks(""), connect(""), transparent("")] {
        for (value, want) in [
            ("true", Mptcp::Preferred),
            ("false", Mptcp::Off),
            ("\"required\"", Mptcp::Required),
        ] {
            let text = format!("{section}mptcp = {value}\nupstream_mptcp = true\n");
            let plan = resolve_file(&text).unwrap();
            assert_eq!(plan.tcp[0].mptcp, want, "{text}");
            assert!(plan.tcp[0].upstream_mptcp);
        }
        let plan = resolve_file(&section).unwrap();
        assert_eq!(
            (plan.tcp[0].mptcp, plan.tcp[0].upstream_mptcp),
            (Mptcp::Off, false)
        );
    }
    let flag = Overrides {
        tcp: vec!["127.0.0.1:1=127.0.0.1:2".into()],
        ..Overrides::default()
    };
    let plan = resolve_with("", &flag).unwrap();
    assert_eq!(plan.tcp[0].kind, TcpKind::Forward);
    assert_eq!(plan.tcp[0].mptcp, Mptcp::Off);
}

#[test]
fn bad_proxy_values_name_the_key_the_value_and_the_fix() {
    let long = "n".repeat(256);
    let cases: Vec<(String, &str, Vec<&str>)> =
        vec![
        (
            socks("name = \"a b\""),
            "socks5[0].name",
            vec!["\"a b\" contains ' '"],
        ),
        (
            "[[socks5]]\nname = \"s\"\n".to_owned(),
            "socks5[0].listen",
            vec!["missing", "listen = \"0.0.0.0:8080\""],
        ),
        (
            "[[socks5]]\nlisten = \"127.0.0.1:1080-1081\"\n".to_owned(),
            "socks5[0].listen",
            vec!["one port, not a range", "another [[socks5]] section"],
        ),
        (
            "[[http_connect]]\nlisten = \"localhost:3128\"\n".to_owned(),
            "http_connect[0].listen",
            vec!["\"localhost:3128\""],
        ),
        (
            socks("upstreams = [\"10.0.0.5:80\"]"),
            "socks5[0].upstreams",
            vec!["no upstreams", "each client names its destination"],
        ),
        (
            socks("users = []"),
            "socks5[0].users",
            vec!["is empty", "remove the key for no authentication"],
        ),
        (
            socks("users = [\"alice:secret\"]"),
            "socks5[0].users[0]",
            vec!["a table", "users = [{ name = \"alice\""],
        ),
        (
            socks("users = [{ name = \"alice\" }]"),
            "socks5[0].users[0].password",
            vec!["missing", "a name and a password"],
        ),
        (
            socks("users = [{ name = \"alice\", pasword = \"x\" }]"),
            "socks5[0].users[0].pasword",
            vec!["did you mean \"password\""],
        ),
        (
            socks("users = [{ name = \"al:ice\", password = \"x\" }]"),
            "socks5[0].users[0].name",
            vec!["\"al:ice\" contains ':'"],
        ),
        (
            socks("users = [{ name = \"\", password = \"x\" }]"),
            "socks5[0].users[0].name",
            vec!["is 0 bytes", "1 to 255"],
        ),
        (
            socks(&format!("users = [{{ name = \"{long}\", password = \"x\" }}]")),
            "socks5[0].users[0].name",
            vec!["is 256 bytes", "1 to 255"],
        ),
        (
            socks("users = [{ name = \"alice\", password = \"\" }]"),
            "socks5[0].users[0].password",
            vec!["the password is 0 bytes", "1 to 255"],
        ),
        (
            socks(&format!("users = [{{ name = \"alice\", password = \"{long}\" }}]")),
            "socks5[0].users[0].password",
            vec!["the password is 256 bytes"],
        ),
        (
            socks(
                "users = [{ name = \"alice\", password = \"a\" }, \
                 { name = \"alice\", password = \"b\" }]",
            ),
            "socks5[0].users[1].name",
            vec!["\"alice\" is listed twice"],
        ),
        (
            socks("users = [{ name = \"a\", password = \"b\" }]\nusers_file = \"/x\""),
            "socks5[0].users_file",
            vec!["is given with users", "in one place"],
        ),
        (
            socks("users_file = \"\""),
            "socks5[0].users_file",
            vec!["is empty", "name:password"],
        ),
        (
            socks("allow = []"),
            "socks5[0].allow",
            vec!["is empty", "refuse every client"],
        ),
        (
            socks("deny = [\"10.0.0.1/8\"]"),
            "socks5[0].deny[0]",
            vec!["10.0.0.1/8"],
        ),
        (
            socks("new_connections_per_second = 0"),
            "socks5[0].new_connections_per_second",
            vec!["0 is out of range"],
        ),
        (
            socks("destinations_allow = []"),
            "socks5[0].destinations_allow",
            vec!["is empty", "refuse every destination", "remove the key"],
        ),
        (
            socks("destinations_allow = [\"example.com\"]"),
            "socks5[0].destinations_allow[0]",
            vec!["\"example.com\"", "IPv4 or IPv6"],
        ),
        (
            socks("destinations_deny = [\"10.0.0.1/8\"]"),
            "socks5[0].destinations_deny[0]",
            vec!["\"10.0.0.1/8\"", "10.0.0.0/8"],
        ),
        (
            socks("destinations_deny = \"127.0.0.0/8\""),
            "socks5[0].destinations_deny",
            vec!["an array", "\"127.0.0.0/8\""],
        ),
        (
            socks("ports = []"),
            "socks5[0].ports",
            vec!["is empty", "\"1-65535\""],
        ),
        (
            socks("ports = [0]"),
            "socks5[0].ports[0]",
            vec!["0 is out of range", "1 to 65535"],
        ),
        (
            socks("ports = [65536]"),
            "socks5[0].ports[0]",
            vec!["65536 is out of range"],
        ),
        (
            socks("ports = [\"0-10\"]"),
            "socks5[0].ports[0]",
            vec!["\"0-10\" is not a port or a port range"],
        ),
        (
            socks("ports = [\"2000-1000\"]"),
            "socks5[0].ports[0]",
            vec!["\"2000-1000\" runs backwards", "\"1000-2000\""],
        ),
        (
            socks("ports = [\"http\"]"),
            "socks5[0].ports[0]",
            vec!["\"http\" is not a port"],
        ),
        (
            socks("ports = 443"),
            "socks5[0].ports",
            vec!["an array", "ports = [80, 443"],
        ),
        (
            socks("udp = \"yes\""),
            "socks5[0].udp",
            vec!["true or false", "\"yes\""],
        ),
        (
            socks("udp_idle_timeout = \"30s\""),
            "socks5[0].udp_idle_timeout",
            vec!["set udp = true", "or remove udp_idle_timeout"],
        ),
        (
            socks("udp = true\nudp_idle_timeout = \"0s\""),
            "socks5[0].udp_idle_timeout",
            vec!["udp_idle_timeout"],
        ),
        (
            connect("udp = true"),
            "http_connect[0].udp",
            vec!["unknown key \"udp\" in [[http_connect]]"],
        ),
        (
            socks("header_timeout = \"11m\""),
            "socks5[0].header_timeout",
            vec!["\"11m\" is out of range", "header_timeout = \"10s\""],
        ),
        (
            connect("header_timeout = 10"),
            "http_connect[0].header_timeout",
            vec!["bare number", "\"10s\""],
        ),
        (
            socks("connect_timeout = \"11m\""),
            "socks5[0].connect_timeout",
            vec!["\"11m\" is out of range"],
        ),
        (
            socks("idle_timeout = \"8d\""),
            "socks5[0].idle_timeout",
            vec!["\"8d\" is out of range"],
        ),
        (
            socks("half_close_timeout = \"soon\""),
            "socks5[0].half_close_timeout",
            vec!["\"soon\""],
        ),
        (
            connect("max_connections = 0"),
            "http_connect[0].max_connections",
            vec!["0 is out of range", "max_connections = 10000"],
        ),
        (
            "[runtime]\nshards = 2\n[[socks5]]\nlisten = \"127.0.0.1:1080\"\nmax_connections = 1"
                .to_owned(),
            "socks5[0].max_connections",
            vec!["less than the 2 shards"],
        ),
        (
            socks("bandwidth_limit = \"1B/s\""),
            "socks5[0].bandwidth_limit",
            vec!["\"1B/s\"", "out of range"],
        ),
        (
            socks("mptcp = \"maybe\""),
            "socks5[0].mptcp",
            vec!["\"maybe\" is not an MPTCP mode", "\"required\""],
        ),
        (
            connect("mptcp = 1"),
            "http_connect[0].mptcp",
            vec!["true or false", "mptcp = true (or false, or \"required\")"],
        ),
        (
            socks("upstream_mptcp = \"yes\""),
            "socks5[0].upstream_mptcp",
            vec!["true or false", "upstream_mptcp = true"],
        ),
        (
            socks("open = 1"),
            "socks5[0].open",
            vec!["true or false", "open = true"],
        ),
        (
            socks("user = []"),
            "socks5[0].user",
            vec!["did you mean \"users\""],
        ),
        (
            socks("send_proxy = \"v2\""),
            "socks5[0].send_proxy",
            vec!["unknown key"],
        ),
        (
            "socks5 = \"127.0.0.1:1080\"".to_owned(),
            "socks5",
            vec!["an array", "[[socks5]]"],
        ),
        (
            "sock5 = []".to_owned(),
            "sock5",
            vec!["did you mean \"socks5\""],
        ),
    ];
    for (text, key, needles) in cases {
        assert_rejected(&text, key, &needles);
    }
}

#[test]
fn a_bad_password_is_never_quoted() {
    let long = format!("{}SECRETWORD", "p".repeat(250));
    let err = resolve_file(&socks(&format!(
        "users = [{{ name = \"alice\", password = \"{long}\" }}]"
    )))
    .unwrap_err();
    assert!(!err.to_string().contains("SECRETWORD"), "{err}");
    for (users, key, expected) in [
        (
            "\"alice:SECRETWORD\"",
            "socks5[0].users",
            "expected an array",
        ),
        (
            "[\"alice:SECRETWORD\"]",
            "socks5[0].users[0]",
            "expected a table",
        ),
        (
            "[{ name = \"alice\", password = [\"SECRETWORD\"] }]",
            "socks5[0].users[0].password",
            "expected a string",
        ),
    ] {
        let err = assert_rejected(&socks(&format!("users = {users}")), key, &[expected]);
        assert!(!err.to_string().contains("SECRETWORD"), "{err}");
    }
    let path = temp_file("no-colon", "alice:ok\nSECRETWORD\n");
    let err = resolve_file(&socks(&format!(
        "users_file = {:?}",
        path.display().to_string()
    )))
    .unwrap_err();
    assert!(!err.to_string().contains("SECRETWORD"), "{err}");
    let plan = resolve_file(&socks(
        "users = [{ name = \"alice\", password = \"SECRETWORD\" }]",
    ))
    .unwrap();
    assert!(!plan.to_string().contains("SECRETWORD"));
    assert!(!format!("{plan:?}").contains("SECRETWORD"));
}

#[test]
fn a_non_loopback_proxy_without_users_or_allow_is_refused_unless_open() {
    for (section, listen) in [
        ("socks5", "0.0.0.0:1080"),
        ("socks5", "[::]:1080"),
        ("http_connect", "192.0.2.1:3128"),
        ("http_connect", "[2001:db8::1]:3128"),
    ] {
        let base = format!("[[{section}]]\nname = \"egress\"\nlisten = \"{listen}\"\n");
        let err = assert_rejected(
            &base,
            &format!("{section}[0].listen"),
            &[
                "\"egress\"",
                &addr(listen).to_string(),
                "open proxy",
                "set users (or users_file)",
                "allow to list the clients",
                "open = true",
            ],
        );
        assert!(err.message.contains(&format!("[[{section}]]")), "{err}");
        let users = temp_file(&format!("escape-{section}"), "alice:secret\n");
        for escape in [
            "users = [{ name = \"alice\", password = \"secret\" }]".to_owned(),
            format!("users_file = {:?}", users.display().to_string()),
            "allow = [\"10.0.0.0/8\"]".to_owned(),
            "open = true".to_owned(),
        ] {
            let text = format!("{base}{escape}\n");
            assert!(resolve_file(&text).is_ok(), "{text}");
        }
        let closed = format!("{base}open = false\n");
        assert!(resolve_file(&closed).is_err(), "open = false is no escape");
    }
    for listen in ["127.0.0.1:1080", "127.1.2.3:1080", "[::1]:1080"] {
        let text = format!("[[socks5]]\nlisten = \"{listen}\"\n");
        assert!(
            resolve_file(&text).is_ok(),
            "loopback is not open: {listen}"
        );
    }
}

#[test]
fn users_file_skips_comments_and_blank_lines() {
    let path = temp_file(
        "users",
        "# ringfwd users\n\nalice:secret\n   \n  # indented comment\nbob:with:colons\r\ncarol: spaced \n",
    );
    let shown = path.display().to_string();
    let plan = resolve_file(&socks(&format!("users_file = {shown:?}"))).unwrap();
    let users = &proxy(&plan.tcp[0]).users;
    assert_eq!(users.len(), 3);
    assert_eq!(users.file(), Some(path.as_path()));
    let names: Vec<&[u8]> = users.names().collect();
    assert_eq!(names, [b"alice".as_slice(), b"bob", b"carol"]);
    assert!(users.check(&creds("alice", "secret")).is_some());
    assert!(
        users.check(&creds("bob", "with:colons")).is_some(),
        "CRLF ends a line"
    );
    assert!(
        users.check(&creds("carol", " spaced ")).is_some(),
        "spaces are kept"
    );
    assert!(users.check(&creds("alice", "wrong")).is_none());
}

#[test]
fn users_file_errors_name_the_path_the_line_and_the_fix() {
    let key = "socks5[0].users_file";
    let with =
        |path: &std::path::Path| socks(&format!("users_file = {:?}", path.display().to_string()));
    let bad = temp_file("bad-line", "# users\nalice:secret\n\nno colon here\n");
    let err = assert_rejected(
        &with(&bad),
        key,
        &["line 4 has no ':'", "one name:password per line"],
    );
    assert!(err.message.contains(&bad.display().to_string()), "{err}");
    assert!(
        !err.message.contains("no colon here"),
        "the line may be a password: {err}"
    );
    let missing = std::env::temp_dir().join("ringfwd-forward-tests-does-not-exist");
    let err = assert_rejected(
        &with(&missing),
        key,
        &[
            "cannot read users file",
            "check the path",
            "read at start and on every reload",
        ],
    );
    assert!(
        err.message.contains(&missing.display().to_string()),
        "{err}"
    );
    assert_rejected(
        &with(std::path::Path::new("/")),
        key,
        &["\"/\" is a directory"],
    );
    let empty = temp_file("empty", "# nobody yet\n\n");
    assert_rejected(&with(&empty), key, &["lists no users", "remove users_file"]);
    let twice = temp_file("twice", "alice:a\nalice:b\n");
    assert_rejected(&with(&twice), key, &["line 2", "\"alice\" is listed twice"]);
    let long = temp_file("long-name", &format!("{}:pw\n", "n".repeat(256)));
    assert_rejected(&with(&long), key, &["line 1", "is 256 bytes"]);
    let no_password = temp_file("no-password", "alice:\n");
    assert_rejected(
        &with(&no_password),
        key,
        &["line 1", "the password is 0 bytes"],
    );
    let no_name = temp_file("no-name", ":secret\n");
    assert_rejected(
        &with(&no_name),
        key,
        &["line 1", "user name \"\" is 0 bytes"],
    );
    assert_rejected(
        &socks("users_file = 1"),
        key,
        &["a string", "users_file = \"/etc/ringfwd/users\""],
    );
}

#[test]
fn users_file_is_read_again_on_every_resolve() {
    let path = temp_file("reread", "alice:one\n");
    let text = socks(&format!("users_file = {:?}", path.display().to_string()));
    let first = resolve_file(&text).unwrap();
    std::fs::write(&path, "alice:two\nbob:three\n").unwrap();
    let second = resolve_file(&text).unwrap();
    assert_eq!(proxy(&first.tcp[0]).users.len(), 1);
    let users = &proxy(&second.tcp[0]).users;
    assert_eq!(users.len(), 2);
    assert!(users.check(&creds("alice", "two")).is_some());
    assert_ne!(first, second, "a reload sees the changed users");
}

#[test]
fn transparent_tcp_has_a_mode_and_a_policy_and_no_upstreams() {
    for (mode, want) in [
        ("redirect", TransparentMode::Redirect),
        ("tproxy", TransparentMode::Tproxy),
    ] {
        let text = format!(
            "[[tcp]]\nlisten = \"0.0.0.0:15001\"\ntransparent = \"{mode}\"\n\
             destinations_allow = [\"10.0.0.0/8\"]\nports = [443]\nsend_proxy = \"v1\"\n"
        );
        let plan = resolve_file(&text).unwrap();
        let tcp = &plan.tcp[0];
        assert!(tcp.upstreams.is_empty());
        assert_eq!(tcp.send_proxy, SendProxy::V1);
        assert_eq!(
            tcp.kind,
            TcpKind::Transparent(TransparentPlan {
                mode: want,
                policy: DestinationPolicy {
                    allow: cidrs(&["10.0.0.0/8"]),
                    deny: cidrs(&DEFAULT_DENY),
                    ports: vec![443..=443],
                },
            })
        );
    }
    let ranged = "[[tcp]]\nlisten = \"127.0.0.1:15001-15002\"\ntransparent = \"tproxy\"\n";
    assert_eq!(resolve_file(ranged).unwrap().tcp.len(), 2);
}

#[test]
fn transparent_refuses_the_keys_of_an_upstream_pool() {
    let key = |k: &str| format!("tcp[0].{k}");
    assert_rejected(
        &transparent("upstreams = [\"10.0.0.5:80\"]"),
        &key("upstreams"),
        &[
            "no upstreams",
            "the address its client dialled",
            "remove upstreams",
        ],
    );
    for (keys, name) in [
        ("balance = \"least_conn\"", "balance"),
        ("max_fails = 2", "max_fails"),
        ("fail_timeout = \"5s\"", "fail_timeout"),
        ("health_check = { interval = \"2s\" }", "health_check"),
        (
            "accept_proxy = true\ntrusted_proxies = [\"10.0.0.0/8\"]",
            "accept_proxy",
        ),
    ] {
        assert_rejected(
            &transparent(keys),
            &key(name),
            &[
                &format!("{name} does not apply to a transparent listener"),
                &format!("remove {name}"),
            ],
        );
    }
    assert_rejected(
        &transparent("[[tcp.routes]]\nsni = [\"a.example\"]\nupstreams = [\"10.0.0.5:443\"]"),
        &key("routes"),
        &["routes does not apply to a transparent listener"],
    );
    assert_rejected(
        &transparent("").replace("\"redirect\"", "\"tproxi\""),
        &key("transparent"),
        &[
            "\"tproxi\" is not a transparent mode",
            "\"redirect\"",
            "\"tproxy\"",
        ],
    );
    assert_rejected(
        &transparent("").replace("\"redirect\"", "true"),
        &key("transparent"),
        &["a string", "transparent = \"redirect\""],
    );
}

#[test]
fn policy_keys_without_transparent_name_it() {
    let forward = "[[tcp]]\nlisten = \"127.0.0.1:8080\"\nupstreams = [\"127.0.0.1:9000\"]\n";
    for k in [
        "destinations_allow = [\"10.0.0.0/8\"]",
        "destinations_deny = []",
        "ports = [443]",
    ] {
        let name = k.split(' ').next().unwrap();
        assert_rejected(
            &format!("{forward}{k}\n"),
            &format!("tcp[0].{name}"),
            &[
                "not transparent",
                "set transparent = \"redirect\" or \"tproxy\"",
            ],
        );
    }
    assert_rejected(
        "[[tcp]]\nlisten = \"127.0.0.1:8080\"\n",
        "tcp[0].upstreams",
        &["missing", "or transparent = \"redirect\""],
    );
}

#[test]
fn one_tcp_namespace_for_addresses_and_names() {
    let forward =
        "[[tcp]]\nname = \"a\"\nlisten = \"127.0.0.1:1080\"\nupstreams = [\"127.0.0.1:9000\"]\n";
    assert_rejected(
        &format!("{forward}{}", socks("")),
        "socks5[0].listen",
        &["127.0.0.1:1080 is already used by tcp[0].listen"],
    );
    assert_rejected(
        &format!("{}{}", socks(""), connect("").replace("3128", "1080")),
        "http_connect[0].listen",
        &["127.0.0.1:1080 is already used by socks5[0].listen"],
    );
    assert_rejected(
        &format!("{forward}{}", connect("name = \"a\"")),
        "http_connect[0].name",
        &["\"a\" is already used by tcp[0].name"],
    );
    assert_rejected(
        &format!("{}{}", socks("name = \"p\""), connect("name = \"p\"")),
        "http_connect[0].name",
        &["\"p\" is already used by socks5[0].name"],
    );
    let echo = Overrides {
        echo: vec!["127.0.0.1:1080".into()],
        ..Overrides::default()
    };
    let err = resolve_with(&socks(""), &echo).unwrap_err();
    assert_eq!(err.key, "echo --tcp[0]", "{err}");
    assert!(
        err.message.contains("already used by socks5[0].listen"),
        "{err}"
    );
    let udp = "[[udp]]\nlisten = \"127.0.0.1:1080\"\nupstreams = [\"127.0.0.1:53\"]\n";
    assert!(
        resolve_file(&format!("{}{udp}", socks(""))).is_ok(),
        "UDP is its own namespace"
    );
    let zero = "[[socks5]]\nlisten = \"127.0.0.1:0\"\n[[http_connect]]\nlisten = \"127.0.0.1:0\"\nname = \"c\"\n";
    assert!(resolve_file(zero).is_ok(), "port 0 never collides");
}

#[test]
fn a_forwarder_to_a_proxy_or_transparent_listener_is_not_a_loop() {
    let text = format!(
        "{}{}[[tcp]]\nlisten = \"127.0.0.1:8080\"\nupstreams = [\"127.0.0.1:1080\", \"127.0.0.1:15001\"]\n",
        socks(""),
        transparent("")
    );
    let plan = resolve_file(&text).unwrap();
    let wildcard = "[[socks5]]\nlisten = \"0.0.0.0:1080\"\nopen = true\n\
                    [[tcp]]\nlisten = \"127.0.0.1:8080\"\nupstreams = [\"192.0.2.2:1080\"]\n";
    let wildcard = resolve_file(wildcard).unwrap();
    let local: [IpAddr; 1] = ["192.0.2.2".parse().unwrap()];
    assert_eq!(local_loop(&wildcard, &local), None);
    assert_eq!(local_loop(&plan, &local), None);
    let forward_loop = "[[tcp]]\nlisten = \"0.0.0.0:1080\"\nupstreams = [\"192.0.2.2:1080\"]\n";
    assert!(
        local_loop(&resolve_file(forward_loop).unwrap(), &local).is_some(),
        "a forwarding listener still loops"
    );
}

#[test]
fn check_prints_every_new_key_and_reads_it_back() {
    let users = temp_file("round-trip", "alice:secret\nbob:pw\n");
    let text = format!(
        "{}\n[[http_connect]]\nname = \"egress\"\nlisten = \"[::]:3128\"\n\
         users_file = {:?}\nports = [443, \"8443-8444\"]\ndestinations_deny = []\n\
         [[tcp]]\nname = \"tp\"\nlisten = \"127.0.0.1:15001\"\ntransparent = \"tproxy\"\n\
         ports = [80]\nmptcp = true\n\
         [[tcp]]\nname = \"fw\"\nlisten = \"127.0.0.1:8080\"\nupstreams = [\"127.0.0.1:9000\"]\n\
         upstream_mptcp = true\n\
         [[socks5]]\nname = \"local\"\nlisten = \"127.0.0.1:1081\"\n\
         [[socks5]]\nname = \"wide\"\nlisten = \"0.0.0.0:1082\"\nopen = true\n",
        EVERY_SOCKS5_KEY.replace("users = [", "# users = ["),
        users.display().to_string()
    );
    let plan = resolve_file(&text).unwrap();
    let shown = plan.to_string();
    for line in [
        "[[socks5]]",
        "name = \"socks\"",
        "listen = \"0.0.0.0:1080\"",
        "open = true  # no users and no client allow list on a non-loopback address",
        "# users: none (no authentication)",
        "header_timeout = \"3s\"",
        "connect_timeout = \"2s\"",
        "max_connections = 50  # per shard: 25 on each of 2 shards",
        "allow = [\"10.0.0.0/8\"]",
        "new_connections_per_second_per_source = 5  # enforced by each shard",
        "bandwidth_limit = \"1MiB/s\"",
        "mptcp = \"required\"",
        "upstream_mptcp = true",
        "destinations_allow = [\"0.0.0.0/0\", \"::/0\"]",
        "destinations_deny = [\"127.0.0.0/8\"]",
        "ports = [80, \"1024-65535\"]",
        "[[http_connect]]",
        &format!("users_file = {:?}  # 2 users", users.display().to_string()),
        "ports = [443, \"8443-8444\"]",
        "destinations_deny = []",
        "transparent = \"tproxy\"  # each connection goes where its client dialled",
        "mptcp = true",
        "mptcp = false",
        "name = \"local\"",
        "udp = false",
        "# destinations_allow: unset (every destination not denied)",
        "destinations_deny = [\"127.0.0.0/8\", \"169.254.0.0/16\", \"::1/128\", \"fe80::/10\"]",
        "# ports: unset (every port)",
    ] {
        assert!(
            shown.lines().any(|l| l == line),
            "{line:?} not in:\n{shown}"
        );
    }
    assert!(!shown.contains("secret"), "{shown}");
    assert_eq!(resolve_file(&shown), Ok(plan));
}

#[test]
fn check_shows_inline_users_as_a_count_without_passwords() {
    let plan = resolve_file(&socks(
        "users = [{ name = \"alice\", password = \"hunter2\" }, { name = \"bob\", password = \"x2\" }]",
    ))
    .unwrap();
    let shown = plan.to_string();
    assert!(
        shown.lines().any(|l| l.starts_with("# users = <2 users>")),
        "{shown}"
    );
    assert!(!shown.contains("hunter2"), "{shown}");
}
