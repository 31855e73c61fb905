//! Tests for resolving whole configurations: files, flags, defaults, every rejection, and garbage input.

use std::net::SocketAddr;
use std::time::Duration;

use super::units::{parse_duration, parse_size};
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

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

fn resolve_file(text: &str) -> Result<Plan, ConfigError> {
    Plan::resolve(Some((FILE, text)), &Overrides::default(), &host(4))
}

fn flags(tcp: &[&str]) -> Overrides {
    Overrides {
        tcp: tcp.iter().map(|s| s.to_string()).collect(),
        ..Overrides::default()
    }
}

/// A valid [[tcp]] section, so runtime-only cases still have something to listen on.
const LISTENER: &str = "\n[[tcp]]\nlisten = \"127.0.0.1:8080\"\nupstreams = [\"127.0.0.1:9000\"]\n";

/// Asserts the rejection names `key` and that its message contains every `needles` entry.
#[track_caller]
fn assert_rejected(result: Result<Plan, ConfigError>, key: &str, needles: &[&str]) -> ConfigError {
    let err = result.expect_err("expected a rejection");
    assert_eq!(err.key, key, "wrong key in: {err}");
    for needle in needles {
        assert!(err.message.contains(needle), "{needle:?} not in: {err}");
    }
    err
}

#[track_caller]
fn assert_file_rejected(text: &str, key: &str, needles: &[&str]) -> ConfigError {
    let err = assert_rejected(resolve_file(text), key, needles);
    assert_eq!(err.source_name, FILE);
    err
}

#[track_caller]
fn assert_runtime_rejected(runtime: &str, key: &str, needles: &[&str]) {
    assert_file_rejected(&format!("[runtime]\n{runtime}\n{LISTENER}"), key, needles);
}

#[track_caller]
fn assert_tcp_rejected(tcp_keys: &str, key: &str, needles: &[&str]) {
    assert_file_rejected(&format!("[[tcp]]\n{tcp_keys}\n"), key, needles);
}

#[test]
fn full_file_resolves_to_the_exact_plan() {
    let text = r#"
        [runtime]
        shards = 2
        cpus = [1, 3]
        buffer_size = "32KiB"
        buffers_per_shard = 2048
        buffers_per_direction = 8
        ring_entries = 4096
        drain_timeout = "1m30s"
        stats_interval = "off"
        splice = "always"
        max_pipes = 8
        pid_file = "/run/ringfwd.pid"
        pipe_size = "256KiB"

        [[tcp]]
        name = "web"
        listen = "0.0.0.0:8080"
        upstreams = ["10.0.0.5:80", "[2001:db8::6]:80"]
        connect_timeout = "250ms"
        idle_timeout = "1h"
        half_close_timeout = "30s"
        max_connections = 5001
        bandwidth_limit = "100Mbit/s"

        [[tcp]]
        listen = "[::]:8443"
        upstreams = ["10.0.0.7:443"]
    "#;
    let want = Plan {
        runtime: RuntimePlan {
            shards: 2,
            cpus: vec![1, 3],
            buffer_size: 32 * 1024,
            buffers_per_shard: 2048,
            buffers_per_direction: 8,
            ring_entries: 4096,
            drain_timeout: secs(90),
            stats_interval: None,
            max_datagram: 65507,
            udp_buffers_per_shard: 512,
            busy_poll: None,
            splice: SpliceMode::Always,
            max_pipes: 8,
            pipe_size: 256 << 10,
            pid_file: Some("/run/ringfwd.pid".into()),
            resolver: ResolverPlan::default(),
        },
        tcp: vec![
            TcpListenerPlan {
                name: "web".into(),
                listen: addr("0.0.0.0:8080"),
                upstreams: vec![addr("10.0.0.5:80"), addr("[2001:db8::6]:80")],
                weights: vec![1; 2],
                balance: Balance::RoundRobin,
                passive: PassiveHealth::default(),
                connect_timeout: Duration::from_millis(250),
                idle_timeout: secs(3600),
                half_close_timeout: secs(30),
                max_connections: 5001,
                max_connections_given: LimitSource::Explicit,
                send_proxy: SendProxy::Off,
                accept_proxy: None,
                sni: None,
                limits: TcpLimits::default(),
                bandwidth_limit: Some(12_500_000),
                health_check: None,
                kind: super::forward::TcpKind::Forward,
                mptcp: super::forward::Mptcp::Off,
                upstream_mptcp: false,
            },
            TcpListenerPlan {
                name: "[::]:8443".into(),
                listen: addr("[::]:8443"),
                upstreams: vec![addr("10.0.0.7:443")],
                weights: vec![1; 1],
                balance: Balance::RoundRobin,
                passive: PassiveHealth::default(),
                connect_timeout: secs(5),
                idle_timeout: secs(600),
                half_close_timeout: secs(60),
                max_connections: 10_000,
                max_connections_given: LimitSource::Default,
                send_proxy: SendProxy::Off,
                accept_proxy: None,
                sni: None,
                limits: TcpLimits::default(),
                bandwidth_limit: None,
                health_check: None,
                kind: super::forward::TcpKind::Forward,
                mptcp: super::forward::Mptcp::Off,
                upstream_mptcp: false,
            },
        ],
        udp: vec![],
        echo: vec![],
        log: LogPlan { access: None },
        admin: None,
    };
    assert_eq!(resolve_file(text), Ok(want));
}

#[test]
fn defaults_fill_every_missing_value() {
    let plan = resolve_file(LISTENER).unwrap();
    let want = RuntimePlan {
        shards: 4,
        cpus: vec![0, 1, 2, 3],
        buffer_size: 16 * 1024,
        buffers_per_shard: 1024,
        buffers_per_direction: 16,
        ring_entries: 2048,
        drain_timeout: secs(30),
        stats_interval: Some(secs(10)),
        max_datagram: 65507,
        udp_buffers_per_shard: 512,
        busy_poll: None,
        splice: SpliceMode::Auto,
        max_pipes: 64,
        pipe_size: 1 << 20,
        pid_file: None,
        resolver: ResolverPlan::default(),
    };
    assert_eq!(plan.runtime, want);
    let tcp = &plan.tcp[0];
    assert_eq!(tcp.name, "127.0.0.1:8080");
    assert_eq!(tcp.connect_timeout, secs(5));
    assert_eq!(tcp.idle_timeout, secs(600));
    assert_eq!(tcp.half_close_timeout, secs(60));
    assert_eq!(tcp.max_connections, 10_000);
}

#[test]
fn size_and_duration_spellings_are_accepted() {
    let text = format!(
        "[runtime]\nbuffer_size = 4096\ndrain_timeout = \"0s\"\nstats_interval = \"0s\"\n{LISTENER}"
    );
    let runtime = resolve_file(&text).unwrap().runtime;
    assert_eq!(runtime.buffer_size, 4096);
    assert_eq!(runtime.drain_timeout, Duration::ZERO);
    assert_eq!(runtime.stats_interval, None);
    let text = format!(
        "[runtime]\nbuffer_size = \"1M\"\nbuffers_per_shard = 2048\nstats_interval = \"100ms\"\n{LISTENER}"
    );
    let runtime = resolve_file(&text).unwrap().runtime;
    assert_eq!(runtime.buffer_size, 1 << 20);
    assert_eq!(runtime.stats_interval, Some(Duration::from_millis(100)));
}

#[test]
fn shards_default_to_the_cpus_given_and_cpus_to_the_first_available() {
    let text = format!("[runtime]\ncpus = [2, 0]\n{LISTENER}");
    let runtime = resolve_file(&text).unwrap().runtime;
    assert_eq!((runtime.shards, runtime.cpus), (2, vec![2, 0]));
    let text = format!("[runtime]\nshards = 3\n{LISTENER}");
    let odd_host = HostFacts {
        available_cpus: vec![1, 5, 6, 9],
    };
    let runtime = Plan::resolve(Some((FILE, &text)), &Overrides::default(), &odd_host)
        .unwrap()
        .runtime;
    assert_eq!((runtime.shards, runtime.cpus), (3, vec![1, 5, 6]));
}

#[test]
fn default_shards_are_capped_on_huge_hosts() {
    let plan = Plan::resolve(None, &flags(&["127.0.0.1:1=127.0.0.1:2"]), &host(2000)).unwrap();
    assert_eq!(plan.runtime.shards, 1024);
    assert_eq!(plan.runtime.cpus.len(), 1024);
}

#[test]
fn a_host_without_cpus_is_reported() {
    let err = Plan::resolve(None, &flags(&["127.0.0.1:1=127.0.0.1:2"]), &host(0)).unwrap_err();
    assert!(err.message.contains("no CPUs"), "{err}");
}

#[test]
fn ipv6_listen_and_upstreams() {
    let text = r#"
        [[tcp]]
        listen = "[::1]:8080"
        upstreams = ["[::1]:9000", "[2001:db8::6]:80", "10.0.0.1:80"]
    "#;
    let tcp = &resolve_file(text).unwrap().tcp[0];
    assert_eq!(tcp.listen, addr("[::1]:8080"));
    assert_eq!(tcp.name, "[::1]:8080");
    assert_eq!(
        tcp.upstreams,
        vec![
            addr("[::1]:9000"),
            addr("[2001:db8::6]:80"),
            addr("10.0.0.1:80")
        ]
    );
}

#[test]
fn too_many_shards_message_is_exact() {
    let text = format!("[runtime]\nshards = 4\n{LISTENER}");
    let err = Plan::resolve(Some((FILE, &text)), &Overrides::default(), &host(2)).unwrap_err();
    assert_eq!(err.key, "runtime.shards");
    assert_eq!(
        err.message,
        "runtime.shards = 4 but only 2 CPUs are available to this process (0-1); lower shards or \
         widen the CPU set (taskset / cgroup cpuset)"
    );
    assert_eq!(err.to_string(), format!("{FILE}: {}", err.message));
}

#[test]
fn runtime_rejections_name_the_key_and_the_value() {
    let cases: &[(&str, &str, &[&str])] = &[
        (
            "shards = 0",
            "runtime.shards",
            &["0 is out of range", "1 to 1024"],
        ),
        ("shards = -3", "runtime.shards", &["-3"]),
        ("shards = 2000", "runtime.shards", &["2000"]),
        (
            "shards = 5",
            "runtime.shards",
            &["= 5", "only 4 CPUs", "(0-3)"],
        ),
        (
            "shards = \"two\"",
            "runtime.shards",
            &["\"two\"", "integer", "shards = 2"],
        ),
        ("shards = 2.5", "runtime.shards", &["2.5", "integer"]),
        ("cpus = [0, 9]", "runtime.cpus[1]", &["CPU 9", "0-3"]),
        (
            "cpus = [1, 1]",
            "runtime.cpus[1]",
            &["CPU 1", "more than once"],
        ),
        ("cpus = [-1]", "runtime.cpus[0]", &["CPU -1"]),
        ("cpus = []", "runtime.cpus", &["[]", "empty"]),
        ("cpus = 3", "runtime.cpus", &["3", "array"]),
        (
            "cpus = [0, \"1\"]",
            "runtime.cpus[1]",
            &["\"1\"", "integer"],
        ),
        (
            "shards = 2\ncpus = [0, 1, 2]",
            "runtime.cpus",
            &["= 2", "3 CPUs", "[0, 1, 2]"],
        ),
        (
            "buffer_size = \"2MiB\"",
            "runtime.buffer_size",
            &["\"2MiB\"", "1KiB to 1MiB"],
        ),
        ("buffer_size = 512", "runtime.buffer_size", &["512"]),
        (
            "buffer_size = -1",
            "runtime.buffer_size",
            &["-1", "negative"],
        ),
        (
            "buffer_size = \"16QB\"",
            "runtime.buffer_size",
            &["\"16QB\"", "not a size"],
        ),
        (
            "buffer_size = \"1.5KiB\"",
            "runtime.buffer_size",
            &["\"1.5KiB\"", "fraction"],
        ),
        (
            "buffer_size = true",
            "runtime.buffer_size",
            &["true", "size"],
        ),
        (
            "buffers_per_shard = 4",
            "runtime.buffers_per_shard",
            &["4 is", "8 to 32768"],
        ),
        (
            "buffers_per_shard = 40000",
            "runtime.buffers_per_shard",
            &["40000"],
        ),
        (
            "buffers_per_direction = 0",
            "runtime.buffers_per_direction",
            &["0 is"],
        ),
        (
            "buffers_per_direction = 2000",
            "runtime.buffers_per_direction",
            &["2000"],
        ),
        (
            "buffers_per_shard = 16\nbuffers_per_direction = 9",
            "runtime.buffers_per_direction",
            &["= 9", "= 16", "at most 8"],
        ),
        (
            "buffers_per_shard = 16",
            "runtime.buffers_per_shard",
            &["= 16 (the default)", "at least 32"],
        ),
        (
            "buffer_size = \"1MiB\"\nbuffers_per_shard = 4096",
            "runtime.buffers_per_shard",
            &[
                "runtime.buffer_size (1MiB)",
                "runtime.buffers_per_shard (4096)",
                "4GiB",
                "2GiB",
            ],
        ),
        (
            "ring_entries = 100",
            "runtime.ring_entries",
            &["100", "power of two"],
        ),
        ("ring_entries = 32", "runtime.ring_entries", &["32"]),
        ("ring_entries = 16384", "runtime.ring_entries", &["16384"]),
        (
            "drain_timeout = \"2h\"",
            "runtime.drain_timeout",
            &["\"2h\"", "1h"],
        ),
        (
            "drain_timeout = 30",
            "runtime.drain_timeout",
            &["30", "unit", "\"30s\""],
        ),
        (
            "drain_timeout = \"5x\"",
            "runtime.drain_timeout",
            &["\"5x\"", "not a duration"],
        ),
        (
            "stats_interval = \"50ms\"",
            "runtime.stats_interval",
            &["\"50ms\"", "100ms"],
        ),
        (
            "stats_interval = false",
            "runtime.stats_interval",
            &["false", "off"],
        ),
        (
            "stats_interval = \"5\"",
            "runtime.stats_interval",
            &["\"5\"", "missing unit"],
        ),
        (
            "busy_poll = \"20ms\"",
            "runtime.busy_poll",
            &["\"20ms\"", "10ms maximum"],
        ),
        ("busy_poll = 50", "runtime.busy_poll", &["50", "unit"]),
        (
            "splice = \"yes\"",
            "runtime.splice",
            &["\"yes\"", "\"auto\"", "\"off\"", "\"always\""],
        ),
        (
            "splice = true",
            "runtime.splice",
            &["true", "splice = \"auto\""],
        ),
        (
            "max_pipes = 0",
            "runtime.max_pipes",
            &["0 is out of range", "1 to 4096"],
        ),
        (
            "max_pipes = 5000",
            "runtime.max_pipes",
            &["5000", "splice = \"off\""],
        ),
        (
            "pipe_size = \"1KiB\"",
            "runtime.pipe_size",
            &["\"1KiB\"", "out of range", "4KiB to 64MiB"],
        ),
        (
            "pipe_size = \"100KiB\"",
            "runtime.pipe_size",
            &["\"100KiB\"", "power of two", "64KiB or 128KiB"],
        ),
        ("pipe_size = \"1x\"", "runtime.pipe_size", &["\"1x\""]),
    ];
    for (runtime, key, needles) in cases {
        assert_runtime_rejected(runtime, key, needles);
    }
}

#[test]
fn busy_poll_is_off_by_default_and_a_flag_overrides_the_file() {
    let on = format!("[runtime]\nbusy_poll = \"50us\"\n{LISTENER}");
    assert_eq!(
        resolve_file(&on).unwrap().runtime.busy_poll,
        Some(Duration::from_micros(50))
    );
    let off = format!("[runtime]\nbusy_poll = \"off\"\n{LISTENER}");
    assert_eq!(resolve_file(&off).unwrap().runtime.busy_poll, None);
    let flag = |v: &str| Overrides {
        busy_poll: Some(v.into()),
        ..Overrides::default()
    };
    let plan = Plan::resolve(Some((FILE, &on)), &flag("off"), &host(4)).unwrap();
    assert_eq!(plan.runtime.busy_poll, None);
    let plan = Plan::resolve(Some((FILE, LISTENER)), &flag("200us"), &host(4)).unwrap();
    assert_eq!(plan.runtime.busy_poll, Some(Duration::from_micros(200)));
    let err = Plan::resolve(Some((FILE, LISTENER)), &flag("1h"), &host(4)).unwrap_err();
    assert_eq!(err.key, "--busy-poll", "{err}");
    let err = Plan::resolve(Some((FILE, LISTENER)), &flag("fast"), &host(4)).unwrap_err();
    assert!(err.to_string().contains("--busy-poll"), "{err}");
}

#[test]
fn splice_keys_resolve_and_off_says_the_pipes_are_unused() {
    for (written, want) in [
        ("off", SpliceMode::Off),
        ("Auto", SpliceMode::Auto),
        ("always", SpliceMode::Always),
    ] {
        let text = format!("[runtime]\nsplice = \"{written}\"\n{LISTENER}");
        assert_eq!(resolve_file(&text).unwrap().runtime.splice, want);
    }
    let text =
        format!("[runtime]\nsplice = \"off\"\nmax_pipes = 2\npipe_size = \"64KiB\"\n{LISTENER}");
    let plan = resolve_file(&text).unwrap();
    assert_eq!(
        (plan.runtime.max_pipes, plan.runtime.pipe_size),
        (2, 64 << 10)
    );
    let shown = plan.to_string();
    assert!(
        shown.contains("max_pipes = 2  # unused: splice is off"),
        "{shown}"
    );
    assert_eq!(resolve_file(&shown), Ok(plan));
}

#[test]
fn buffer_memory_at_exactly_the_limit_is_allowed() {
    let text = format!("[runtime]\nbuffer_size = \"1MiB\"\nbuffers_per_shard = 2048\n{LISTENER}");
    assert_eq!(resolve_file(&text).unwrap().runtime.buffers_per_shard, 2048);
}

#[test]
fn tcp_rejections_name_the_key_and_the_value() {
    let ok_up = "upstreams = [\"127.0.0.1:9000\"]";
    let ok_listen = "listen = \"127.0.0.1:8080\"";
    let both = format!("{ok_listen}\n{ok_up}");
    let cases: Vec<(String, &str, Vec<&str>)> = vec![
        (
            ok_up.into(),
            "tcp[0].listen",
            vec!["missing", "listen = \"0.0.0.0:8080\""],
        ),
        (ok_listen.into(), "tcp[0].upstreams", vec!["missing"]),
        (
            format!("{ok_listen}\nupstreams = []"),
            "tcp[0].upstreams",
            vec!["[]", "empty"],
        ),
        (
            format!("{ok_listen}\nupstreams = \"127.0.0.1:1\""),
            "tcp[0].upstreams",
            vec!["\"127.0.0.1:1\"", "array"],
        ),
        (
            format!("listen = \"127.0.0.1\"\n{ok_up}"),
            "tcp[0].listen",
            vec!["\"127.0.0.1\"", "no port"],
        ),
        (
            format!("listen = \"::1:80\"\n{ok_up}"),
            "tcp[0].listen",
            vec!["\"::1:80\"", "without brackets"],
        ),
        (
            format!("listen = \"127.0.0.1:70000\"\n{ok_up}"),
            "tcp[0].listen",
            vec!["70000", "65535"],
        ),
        (
            format!("listen = \"localhost:80\"\n{ok_up}"),
            "tcp[0].listen",
            vec!["\"localhost:80\"", "does not resolve names", "127.0.0.1:80"],
        ),
        (
            format!("listen = 8080\n{ok_up}"),
            "tcp[0].listen",
            vec!["8080", "string"],
        ),
        (
            format!("{ok_listen}\nupstreams = [\"0.0.0.0:80\"]"),
            "tcp[0].upstreams[0]",
            vec!["\"0.0.0.0:80\"", "unspecified"],
        ),
        (
            format!("{ok_listen}\nupstreams = [\"10.0.0.1:1\", \"[::]:80\"]"),
            "tcp[0].upstreams[1]",
            vec!["\"[::]:80\""],
        ),
        (
            format!("{ok_listen}\nupstreams = [\"10.0.0.1:0\"]"),
            "tcp[0].upstreams[0]",
            vec!["\"10.0.0.1:0\"", "port 0"],
        ),
        (
            format!("{ok_listen}\nupstreams = [\"db.internal:5432\"]"),
            "tcp[0].upstreams[0]",
            vec!["\"db.internal:5432\"", "does not resolve names"],
        ),
        (
            format!("{ok_listen}\nupstreams = [1]"),
            "tcp[0].upstreams[0]",
            vec!["1", "string"],
        ),
        (
            format!("{both}\nname = \"\""),
            "tcp[0].name",
            vec!["\"\"", "1 to 64"],
        ),
        (
            format!("{both}\nname = \"my web\""),
            "tcp[0].name",
            vec!["\"my web\"", "' '"],
        ),
        (
            format!("{both}\nname = \"{}\"", "a".repeat(65)),
            "tcp[0].name",
            vec!["65 characters"],
        ),
        (
            format!("{both}\nconnect_timeout = \"0s\""),
            "tcp[0].connect_timeout",
            vec!["\"0s\"", "1ms to 10m"],
        ),
        (
            format!("{both}\nconnect_timeout = \"11m\""),
            "tcp[0].connect_timeout",
            vec!["\"11m\""],
        ),
        (
            format!("{both}\nconnect_timeout = 5"),
            "tcp[0].connect_timeout",
            vec!["5 is a bare number", "\"5s\""],
        ),
        (
            format!("{both}\nidle_timeout = \"8d\""),
            "tcp[0].idle_timeout",
            vec!["\"8d\"", "7d"],
        ),
        (
            format!("{both}\nhalf_close_timeout = \"-1s\""),
            "tcp[0].half_close_timeout",
            vec!["\"-1s\"", "negative"],
        ),
        (
            format!("{both}\nmax_connections = 0"),
            "tcp[0].max_connections",
            vec!["0 is out of range"],
        ),
        (
            format!("{both}\nmax_connections = 20000000"),
            "tcp[0].max_connections",
            vec!["20000000"],
        ),
        (
            format!("{both}\nmax_connections = 3"),
            "tcp[0].max_connections",
            vec!["= 3", "4 shards"],
        ),
    ];
    for (tcp, key, needles) in &cases {
        assert_tcp_rejected(tcp, key, needles);
    }
}

#[test]
fn too_many_upstreams_are_rejected() {
    let upstreams: Vec<String> = (1..=257)
        .map(|port| format!("\"10.0.0.1:{port}\""))
        .collect();
    let text = format!(
        "[[tcp]]\nlisten = \"127.0.0.1:1\"\nupstreams = [{}]",
        upstreams.join(",")
    );
    assert_file_rejected(&text, "tcp[0].upstreams", &["257", "256"]);
}

#[test]
fn errors_in_later_sections_carry_their_index() {
    let text = r#"
        [[tcp]]
        listen = "127.0.0.1:1"
        upstreams = ["127.0.0.1:2"]
        [[tcp]]
        listen = "127.0.0.1:3"
        upstreams = ["localhost:80"]
    "#;
    assert_file_rejected(text, "tcp[1].upstreams[0]", &["\"localhost:80\""]);
}

#[test]
fn connect_timeout_display_matches_the_documented_form() {
    let text = "[[tcp]]\nlisten = \"127.0.0.1:1\"\nupstreams = [\"127.0.0.1:2\"]\nconnect_timeout = \"5x\"";
    assert_eq!(
        resolve_file(text).unwrap_err().to_string(),
        r#"ringfwd.toml: tcp[0].connect_timeout: "5x" is not a duration; write a number with a unit, like 500ms, 5s, 10m or 1h"#
    );
}

#[test]
fn duplicate_names_and_listen_addresses_are_rejected() {
    let two = |first: &str, second: &str| {
        format!(
            "[[tcp]]\n{first}\nupstreams = [\"127.0.0.1:9\"]\n[[tcp]]\n{second}\nupstreams = [\"127.0.0.1:9\"]\n"
        )
    };
    let text = two("listen = \"127.0.0.1:1\"", "listen = \"127.0.0.1:1\"");
    assert_file_rejected(&text, "tcp[1].listen", &["127.0.0.1:1", "tcp[0].listen"]);
    let text = two(
        "listen = \"127.0.0.1:1\"\nname = \"a\"",
        "listen = \"127.0.0.1:2\"\nname = \"a\"",
    );
    assert_file_rejected(&text, "tcp[1].name", &["\"a\"", "tcp[0].name"]);
    let text = two(
        "listen = \"127.0.0.1:1\"\nname = \"127.0.0.1:2\"",
        "listen = \"127.0.0.1:2\"",
    );
    assert_file_rejected(&text, "tcp[1].listen", &["default name \"127.0.0.1:2\""]);
}

#[test]
fn port_zero_listeners_may_repeat() {
    let text = r#"
        [[tcp]]
        name = "a"
        listen = "127.0.0.1:0"
        upstreams = ["127.0.0.1:9"]
        [[tcp]]
        name = "b"
        listen = "127.0.0.1:0"
        upstreams = ["127.0.0.1:9"]
    "#;
    assert_eq!(resolve_file(text).unwrap().tcp.len(), 2);
}

#[test]
fn unknown_keys_are_named_with_the_valid_ones() {
    let err = assert_file_rejected(
        &format!("[runtime]\nshardz = 2\n{LISTENER}"),
        "runtime.shardz",
        &[
            "\"shardz\"",
            "[runtime]",
            "did you mean \"shards\"",
            "buffers_per_direction",
        ],
    );
    assert!(
        err.to_string()
            .starts_with("ringfwd.toml: runtime.shardz: unknown key")
    );
    assert_tcp_rejected(
        "lsten = \"127.0.0.1:1\"\nupstreams = [\"127.0.0.1:2\"]",
        "tcp[0].lsten",
        &[
            "\"lsten\"",
            "[[tcp]]",
            "did you mean \"listen\"",
            "half_close_timeout",
        ],
    );
    assert_file_rejected(
        &format!("workers = 3\n{LISTENER}"),
        "workers",
        &["\"workers\"", "top level", "runtime, tcp"],
    );
    assert_file_rejected(
        &format!("[runtime]\n\"odd key\" = 1\n{LISTENER}"),
        "runtime.\"odd key\"",
        &["\"odd key\""],
    );
}

#[test]
fn wrong_section_shapes_are_explained() {
    assert_file_rejected(
        "[tcp]\nlisten = \"127.0.0.1:1\"\nupstreams = [\"127.0.0.1:2\"]",
        "tcp",
        &["array", "table", "[[tcp]]"],
    );
    assert_file_rejected("runtime = 3", "runtime", &["3", "table"]);
    assert_file_rejected("tcp = [1]", "tcp[0]", &["1", "table"]);
}

#[test]
fn syntax_errors_give_line_and_column() {
    let err = assert_file_rejected(
        "[runtime]\nshards = = 2\n",
        "",
        &["line 2", "column", "shards = = 2"],
    );
    assert!(
        err.to_string()
            .starts_with("ringfwd.toml: invalid TOML at line 2"),
        "{err}"
    );
    assert_file_rejected("[runtime]\nshards = 1\nshards = 2\n", "", &["line 3"]);
    assert_file_rejected("[[tcp]\n", "", &["line 1"]);
}

#[test]
fn nothing_to_listen_on_is_rejected() {
    let message = "nothing to listen on: add a [[tcp]] or [[udp]] section to the config, or pass --tcp LISTEN=UPSTREAM or --udp LISTEN=UPSTREAM";
    let err = resolve_file("[runtime]\nshards = 1\n").unwrap_err();
    assert_eq!((err.key.as_str(), err.message.as_str()), ("", message));
    assert_eq!(err.to_string(), format!("{FILE}: {message}"));
    let err = Plan::resolve(None, &Overrides::default(), &host(1)).unwrap_err();
    assert_eq!(err.message, message);
    assert_eq!(resolve_file("").unwrap_err().message, message);
}

#[test]
fn flags_override_runtime_values() {
    let text = format!("[runtime]\nshards = 4\ncpus = [0, 1, 2, 3]\n{LISTENER}");
    let overrides = Overrides {
        shards: Some(2),
        cpus: Some(vec![3, 1]),
        ..Overrides::default()
    };
    let runtime = Plan::resolve(Some((FILE, &text)), &overrides, &host(4))
        .unwrap()
        .runtime;
    assert_eq!((runtime.shards, runtime.cpus), (2, vec![3, 1]));
    let overrides = Overrides {
        shards: Some(3),
        ..Overrides::default()
    };
    let text = format!("[runtime]\nshards = 1\n{LISTENER}");
    let runtime = Plan::resolve(Some((FILE, &text)), &overrides, &host(4))
        .unwrap()
        .runtime;
    assert_eq!((runtime.shards, runtime.cpus), (3, vec![0, 1, 2]));
}

#[test]
fn flag_rejections_come_from_the_command_line() {
    let run = |shards: Option<usize>, cpus: Option<Vec<usize>>| {
        let overrides = Overrides {
            shards,
            cpus,
            ..flags(&["127.0.0.1:1=127.0.0.1:2"])
        };
        Plan::resolve(None, &overrides, &host(2))
    };
    let cases: Vec<(Result<Plan, ConfigError>, &str, Vec<&str>)> = vec![
        (run(Some(0), None), "--shards", vec!["0 is out of range"]),
        (
            run(Some(4), None),
            "--shards",
            vec!["--shards = 4 but only 2 CPUs are available to this process (0-1)"],
        ),
        (run(None, Some(vec![5])), "--cpus", vec!["CPU 5", "0-1"]),
        (
            run(None, Some(vec![1, 1])),
            "--cpus",
            vec!["CPU 1", "more than once"],
        ),
        (run(None, Some(vec![])), "--cpus", vec!["[]", "empty"]),
        (
            run(Some(1), Some(vec![0, 1])),
            "--cpus",
            vec!["--shards = 1", "2 CPUs", "[0, 1]"],
        ),
    ];
    for (result, key, needles) in cases {
        let err = assert_rejected(result, key, &needles);
        assert_eq!(err.source_name, "command line");
        assert!(err.to_string().starts_with("command line: --"), "{err}");
    }
}

#[test]
fn a_flag_contradicting_the_file_is_blamed() {
    let text = format!("[runtime]\ncpus = [0, 1, 2]\n{LISTENER}");
    let overrides = Overrides {
        shards: Some(2),
        ..Overrides::default()
    };
    let err = assert_rejected(
        Plan::resolve(Some((FILE, &text)), &overrides, &host(4)),
        "--shards",
        &["--shards = 2", "runtime.cpus in ringfwd.toml", "[0, 1, 2]"],
    );
    assert_eq!(err.source_name, "command line");
}

#[test]
fn tcp_flags_add_listeners_with_defaults() {
    let overrides = flags(&[
        "127.0.0.1:8080=127.0.0.1:9000,127.0.0.1:9001",
        "[::1]:8080=[::1]:9000",
        " 127.0.0.1:8081 = 127.0.0.1:9000 , 10.0.0.1:1 ",
    ]);
    let plan = Plan::resolve(
        Some((FILE, LISTENER.replace("8080", "7070").as_str())),
        &overrides,
        &host(2),
    )
    .unwrap();
    let names: Vec<&str> = plan.tcp.iter().map(|t| t.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "127.0.0.1:7070",
            "127.0.0.1:8080",
            "[::1]:8080",
            "127.0.0.1:8081"
        ]
    );
    assert_eq!(
        plan.tcp[1],
        TcpListenerPlan {
            name: "127.0.0.1:8080".into(),
            listen: addr("127.0.0.1:8080"),
            upstreams: vec![addr("127.0.0.1:9000"), addr("127.0.0.1:9001")],
            weights: vec![1; 2],
            balance: Balance::RoundRobin,
            passive: PassiveHealth::default(),
            connect_timeout: secs(5),
            idle_timeout: secs(600),
            half_close_timeout: secs(60),
            max_connections: 10_000,
            max_connections_given: LimitSource::Default,
            send_proxy: SendProxy::Off,
            accept_proxy: None,
            sni: None,
            limits: TcpLimits::default(),
            bandwidth_limit: None,
            health_check: None,
            kind: super::forward::TcpKind::Forward,
            mptcp: super::forward::Mptcp::Off,
            upstream_mptcp: false,
        }
    );
    assert_eq!(plan.tcp[2].upstreams, vec![addr("[::1]:9000")]);
    assert_eq!(
        plan.tcp[3].upstreams,
        vec![addr("127.0.0.1:9000"), addr("10.0.0.1:1")]
    );
}

#[test]
fn bad_tcp_flags_quote_the_spec_and_the_expected_form() {
    let cases = [
        ("127.0.0.1:8080", "no \"=\""),
        ("=127.0.0.1:9000", "listen address \"\" is empty"),
        ("localhost:8080=127.0.0.1:9000", "does not resolve names"),
        ("127.0.0.1:8080=", "upstream 1: \"\" is empty"),
        ("127.0.0.1:8080=127.0.0.1:9000,", "upstream 2"),
        ("127.0.0.1:8080=127.0.0.1:9000,::1:80", "without brackets"),
        ("127.0.0.1:8080=127.0.0.1:0", "port 0"),
        ("127.0.0.1:8080=127.0.0.1:9000=1", "upstream 1"),
    ];
    for (spec, why) in cases {
        let overrides = flags(&["127.0.0.1:1=127.0.0.1:2", spec]);
        let err = assert_rejected(
            Plan::resolve(None, &overrides, &host(1)),
            "--tcp[1]",
            &[&format!("{spec:?}"), why, "LISTEN=UPSTREAM[,UPSTREAM...]"],
        );
        assert_eq!(err.source_name, "--tcp");
        assert!(err.to_string().starts_with("--tcp[1]: \""), "{err}");
    }
}

#[test]
fn duplicate_listen_across_file_and_flags_is_rejected() {
    let overrides = flags(&["127.0.0.1:8080=127.0.0.1:9"]);
    let err = assert_rejected(
        Plan::resolve(Some((FILE, LISTENER)), &overrides, &host(1)),
        "--tcp[0]",
        &["127.0.0.1:8080", "tcp[0].listen in ringfwd.toml"],
    );
    assert_eq!(err.source_name, "--tcp");
}

#[test]
fn echo_addresses_add_echo_plans() {
    let overrides = Overrides {
        echo: vec!["127.0.0.1:9000".into(), "[::1]:9000".into()],
        ..Overrides::default()
    };
    let plan = Plan::resolve(None, &overrides, &host(1)).unwrap();
    assert!(plan.tcp.is_empty());
    assert_eq!(
        plan.echo,
        vec![
            EchoPlan {
                name: "127.0.0.1:9000".into(),
                listen: addr("127.0.0.1:9000"),
                proto: Proto::Tcp,
                mode: EchoMode::Echo,
            },
            EchoPlan {
                name: "[::1]:9000".into(),
                listen: addr("[::1]:9000"),
                proto: Proto::Tcp,
                mode: EchoMode::Echo,
            },
        ]
    );
    let bad = Overrides {
        echo: vec!["127.0.0.1:9000".into(), "localhost:9000".into()],
        ..Overrides::default()
    };
    assert_rejected(
        Plan::resolve(None, &bad, &host(1)),
        "echo --tcp[1]",
        &["\"localhost:9000\""],
    );
    let twice = Overrides {
        echo: vec!["127.0.0.1:9000".into(), "127.0.0.1:9000".into()],
        ..Overrides::default()
    };
    assert_rejected(
        Plan::resolve(None, &twice, &host(1)),
        "echo --tcp[1]",
        &["echo --tcp[0]"],
    );
}

#[test]
fn shard_shares_add_up() {
    let listener = |max_connections| TcpListenerPlan {
        name: "t".into(),
        listen: addr("127.0.0.1:1"),
        upstreams: vec![addr("127.0.0.1:2")],
        weights: vec![1; 1],
        balance: Balance::RoundRobin,
        passive: PassiveHealth::default(),
        connect_timeout: secs(1),
        idle_timeout: secs(1),
        half_close_timeout: secs(1),
        max_connections,
        max_connections_given: LimitSource::Explicit,
        send_proxy: SendProxy::Off,
        accept_proxy: None,
        sni: None,
        limits: TcpLimits::default(),
        bandwidth_limit: None,
        health_check: None,
        kind: super::forward::TcpKind::Forward,
        mptcp: super::forward::Mptcp::Off,
        upstream_mptcp: false,
    };
    let cases = [
        (1, 1),
        (7, 7),
        (10, 3),
        (10_000, 3),
        (10_000, 7),
        (10_000_000, 1024),
        (1023, 1024),
        (u32::MAX, 3),
    ];
    for (max, shards) in cases {
        let tcp = listener(max);
        let shares: Vec<u32> = (0..shards).map(|s| tcp.shard_share(s, shards)).collect();
        let total: u64 = shares.iter().map(|&s| u64::from(s)).sum();
        assert_eq!(total, u64::from(max), "{max} over {shards}");
        let (low, high) = (shares.iter().min().unwrap(), shares.iter().max().unwrap());
        assert!(high - low <= 1, "{max} over {shards}: {shares:?}");
        assert!(
            shares.windows(2).all(|w| w[0] >= w[1]),
            "first shards get the extra"
        );
    }
    let tcp = listener(10);
    assert_eq!((tcp.shard_share(0, 3), tcp.shard_share(1, 3)), (4, 3));
    assert_eq!((tcp.shard_share(3, 3), tcp.shard_share(0, 0)), (0, 0));
}

#[test]
fn display_shows_every_value_and_round_trips() {
    let text = r#"
        [runtime]
        shards = 3
        stats_interval = "off"
        drain_timeout = "90s"
        [[tcp]]
        name = "web"
        listen = "0.0.0.0:8080"
        upstreams = ["10.0.0.5:80", "[2001:db8::6]:80"]
        max_connections = 10
        bandwidth_limit = "5MiB/s"
    "#;
    let plan = resolve_file(text).unwrap();
    let shown = plan.to_string();
    for line in [
        "[runtime]",
        "shards = 3",
        "cpus = [0, 1, 2]",
        "buffer_size = \"16KiB\"",
        "buffers_per_shard = 1024",
        "buffers_per_direction = 16",
        "ring_entries = 2048  # completion queue: 16384 entries",
        "drain_timeout = \"1m30s\"",
        "stats_interval = \"off\"",
        "splice = \"auto\"",
        "max_pipes = 64  # per shard: 128 descriptors; 192 pipes in total",
        "pipe_size = \"1MiB\"  # capped by fs.pipe-max-size without CAP_SYS_RESOURCE",
        "# receive buffers: 16MiB per shard, 48MiB in total",
        "[[tcp]]",
        "name = \"web\"",
        "listen = \"0.0.0.0:8080\"",
        "upstreams = [\"10.0.0.5:80\", \"[2001:db8::6]:80\"]",
        "connect_timeout = \"5s\"",
        "idle_timeout = \"10m\"",
        "half_close_timeout = \"1m\"",
        "max_connections = 10  # per shard: 4 on shard 0, 3 on shards 1-2",
        "bandwidth_limit = \"5MiB/s\"",
    ] {
        assert!(
            shown.lines().any(|l| l == line),
            "{line:?} not in:\n{shown}"
        );
    }
    assert_eq!(resolve_file(&shown), Ok(plan));
}

#[test]
fn display_shows_echo_listeners_and_even_shares() {
    let overrides = Overrides {
        echo: vec!["127.0.0.1:9000".into()],
        tcp: vec!["127.0.0.1:1=127.0.0.1:2".into()],
        ..Overrides::default()
    };
    let shown = Plan::resolve(None, &overrides, &host(4))
        .unwrap()
        .to_string();
    assert!(
        shown.contains("[[echo]]\nname = \"127.0.0.1:9000\"\nlisten = \"127.0.0.1:9000\"\n"),
        "{shown}"
    );
    assert!(
        shown.contains("# per shard: 2500 on each of 4 shards"),
        "{shown}"
    );
}

#[test]
fn config_error_display_avoids_repeating_itself() {
    let error = |source: &str, key: &str, message: &str| {
        ConfigError {
            source_name: source.into(),
            key: key.into(),
            message: message.into(),
        }
        .to_string()
    };
    assert_eq!(
        error("a.toml", "runtime.shards", "bad"),
        "a.toml: runtime.shards: bad"
    );
    assert_eq!(error("a.toml", "", "bad"), "a.toml: bad");
    assert_eq!(error("--tcp", "--tcp[3]", "bad"), "--tcp[3]: bad");
    assert_eq!(
        error("a.toml", "tcp[1]", "tcp[10] is x"),
        "a.toml: tcp[1]: tcp[10] is x"
    );
    assert_eq!(
        error("a.toml", "runtime.shards", "runtime.shards = 9 x"),
        "a.toml: runtime.shards = 9 x"
    );
}

/// xorshift64*: deterministic, dependency-free randomness for the no-panic tests.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[self.below(items.len())]
    }

    /// A string built from pieces that matter to the parsers, plus arbitrary characters.
    fn garbage(&mut self) -> String {
        const PIECES: &[&str] = &[
            "0",
            "1",
            "5",
            "9",
            "16",
            "65535",
            "65536",
            "99999999999999999999",
            "-",
            "+",
            ".",
            ",",
            " ",
            "\t",
            "\n",
            "k",
            "KiB",
            "M",
            "GiB",
            "TB",
            "B",
            "ms",
            "s",
            "m",
            "h",
            "d",
            "us",
            "ns",
            "x",
            "[",
            "]",
            ":",
            "::",
            "=",
            "\"",
            "'",
            "#",
            "{",
            "}",
            "127.0.0.1",
            "::1",
            "[runtime]",
            "[[tcp]]",
            "shards",
            "cpus",
            "listen",
            "upstreams",
            "off",
            "é",
            "\u{0}",
            "\u{1F600}",
            "\\",
            "=[",
            "]]",
        ];
        let len = self.below(12);
        let mut out = String::new();
        for _ in 0..len {
            if self.below(5) == 0 {
                out.push(char::from_u32(self.next() as u32 % 0x11_0000).unwrap_or('?'));
            } else {
                out.push_str(self.pick(PIECES));
            }
        }
        out
    }
}

#[test]
fn garbage_never_panics() {
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    for _ in 0..600 {
        let text = rng.garbage();
        let _ = parse_size(&text);
        let _ = parse_duration(&text);
        let _ = Plan::resolve(Some((FILE, &text)), &Overrides::default(), &host(2));
        let overrides = Overrides {
            tcp: vec![text.clone()],
            echo: vec![text.clone()],
            ..Overrides::default()
        };
        if let Err(err) = Plan::resolve(None, &overrides, &host(2)) {
            assert!(!err.to_string().is_empty());
        }
    }
}

#[test]
fn mutated_configs_never_panic() {
    let base = r#"
[runtime]
shards = 2
cpus = [0, 1]
buffer_size = "16KiB"
buffers_per_shard = 4096
buffers_per_direction = 16
ring_entries = 2048
drain_timeout = "30s"
stats_interval = "10s"

[[tcp]]
name = "web"
listen = "0.0.0.0:8080"
upstreams = ["10.0.0.5:80", "[2001:db8::6]:80"]
connect_timeout = "5s"
idle_timeout = "10m"
half_close_timeout = "1m"
max_connections = 10000
"#;
    assert!(resolve_file(base).is_ok());
    let mut rng = Rng(42);
    for _ in 0..600 {
        let mut chars: Vec<char> = base.chars().collect();
        for _ in 0..=rng.below(4) {
            let at = rng.below(chars.len());
            let piece: Vec<char> = rng.garbage().chars().collect();
            let cut = rng.below(4).min(chars.len() - at);
            chars.splice(at..at + cut, piece);
        }
        let text: String = chars.into_iter().collect();
        if let Err(err) = resolve_file(&text) {
            assert!(!err.to_string().is_empty());
        }
    }
}

#[test]
fn hostile_shapes_do_not_panic() {
    let deep = format!("x = {}1{}", "[".repeat(5000), "]".repeat(5000));
    let _ = resolve_file(&deep);
    let wide = format!("[runtime]\ncpus = [{}]", vec!["0"; 5000].join(","));
    assert!(resolve_file(&wide).is_err());
    let long_name = format!(
        "[[tcp]]\nname = \"{}\"\nlisten = \"127.0.0.1:1\"\nupstreams = [\"127.0.0.1:2\"]",
        "n".repeat(100_000)
    );
    let err = resolve_file(&long_name).unwrap_err();
    assert!(err.message.len() < 400, "{}", err.message.len());
    let overrides = Overrides {
        shards: Some(usize::MAX),
        cpus: Some(vec![usize::MAX]),
        ..Overrides::default()
    };
    assert!(Plan::resolve(None, &overrides, &host(2)).is_err());
}

#[test]
fn deeply_nested_input_is_an_error_not_a_crash() {
    // The TOML parser has its own recursion limit; this pins that it holds
    // (a stack overflow would abort the whole test binary, not fail a test).
    let depth = 100_000;
    let inputs = [
        format!("a = {}{}", "[".repeat(depth), "]".repeat(depth)),
        format!("a = {}1{}", "{a = ".repeat(depth), "}".repeat(depth)),
        format!("{}b = 1", "a.".repeat(depth)),
    ];
    for text in inputs {
        let err = resolve_file(&text).expect_err("refused");
        assert!(err.message.contains("invalid TOML"), "{err}");
    }
}

#[test]
fn an_ipv4_mapped_listen_address_names_the_key_and_the_ipv4_form() {
    assert_file_rejected(
        "[[tcp]]\nlisten = \"[::ffff:127.0.0.1]:8080\"\nupstreams = [\"10.0.0.1:80\"]\n",
        "tcp[0].listen",
        &["IPv4-mapped", "like 127.0.0.1:8080"],
    );
    assert_file_rejected(
        "[[udp]]\nlisten = \"[::ffff:0.0.0.0]:53\"\nupstreams = [\"10.0.0.53:53\"]\n",
        "udp[0].listen",
        &["like 0.0.0.0:53"],
    );
}

#[test]
fn bandwidth_limit_is_refused_out_of_range_or_malformed_naming_the_key() {
    let base = "listen = \"127.0.0.1:1\"\nupstreams = [\"127.0.0.1:2\"]";
    let cases: [(&str, &[&str]); 4] = [
        (
            "\"512B/s\"",
            &[
                "\"512B/s\"",
                "out of range",
                "1KiB/s",
                "remove bandwidth_limit",
            ],
        ),
        ("\"2TiB/s\"", &["\"2TiB/s\"", "out of range", "1TiB/s"]),
        ("\"10MiB\"", &["\"10MiB\"", "does not end in /s", "10MiB/s"]),
        (
            "10",
            &["expected a string", "bandwidth_limit = \"10MiB/s\""],
        ),
    ];
    for (value, needles) in cases {
        assert_tcp_rejected(
            &format!("{base}\nbandwidth_limit = {value}"),
            "tcp[0].bandwidth_limit",
            needles,
        );
    }
    let text = format!("[[tcp]]\n{base}\nbandwidth_limit = \"1KiB/s\"\n");
    assert_eq!(
        resolve_file(&text).unwrap().tcp[0].bandwidth_limit,
        Some(1024)
    );
    // Not a key of a route: the listener's limit applies to every route.
    assert_tcp_rejected(
        &format!(
            "{base}\n[[tcp.routes]]\nsni = [\"a.example\"]\nupstreams = [\"127.0.0.1:3\"]\nbandwidth_limit = \"1MiB/s\""
        ),
        "tcp[0].routes[0].bandwidth_limit",
        &["bandwidth_limit"],
    );
}

#[test]
fn pid_file_must_name_a_file_and_check_shows_it() {
    for bad in ["\"\"", "\"/run/\"", "\"/run/..\"", "7"] {
        assert_runtime_rejected(
            &format!("pid_file = {bad}"),
            "runtime.pid_file",
            &["pid_file"],
        );
    }
    let plan = resolve_file(&format!("[runtime]\npid_file = \"/run/r.pid\"\n{LISTENER}")).unwrap();
    assert!(
        plan.to_string().contains("pid_file = \"/run/r.pid\""),
        "{plan}"
    );
}

#[test]
fn resolver_keys_are_read_and_bad_values_name_their_key() {
    let text = format!(
        "[runtime]\nresolver = [\"192.0.2.53:53\", \"[2001:db8::53]:5353\"]\n\
         resolver_timeout = \"500ms\"\nresolver_attempts = 3\nresolver_prefer = \"ipv6_only\"\n{LISTENER}"
    );
    let r = resolve_file(&text).unwrap().runtime.resolver;
    assert_eq!(
        r,
        ResolverPlan {
            nameservers: Some(vec![addr("192.0.2.53:53"), addr("[2001:db8::53]:5353")]),
            timeout: Duration::from_millis(500),
            attempts: 3,
            prefer: crate::dns::Prefer::Ipv6Only,
        }
    );
    let rendered = resolve_file(&text).unwrap().to_string();
    assert!(
        rendered.contains("resolver = [\"192.0.2.53:53\", \"[2001:db8::53]:5353\"]"),
        "{rendered}"
    );
    assert!(
        rendered.contains("resolver_prefer = \"ipv6_only\""),
        "{rendered}"
    );
    assert!(
        rendered.contains("resolver_timeout = \"500ms\""),
        "{rendered}"
    );
    assert_runtime_rejected(
        "resolver = [\"192.0.2.53\"]",
        "runtime.resolver[0]",
        &["IP:port"],
    );
    assert_runtime_rejected(
        "resolver = \"192.0.2.53:53\"",
        "runtime.resolver",
        &["array"],
    );
    assert_runtime_rejected(
        "resolver = [\"0.0.0.0:53\"]",
        "runtime.resolver[0]",
        &["unspecified"],
    );
    assert_runtime_rejected(
        "resolver_timeout = \"0s\"",
        "runtime.resolver_timeout",
        &["10ms to 60s"],
    );
    assert_runtime_rejected(
        "resolver_attempts = 0",
        "runtime.resolver_attempts",
        &["1 to 10"],
    );
    assert_runtime_rejected(
        "resolver_prefer = \"both\"",
        "runtime.resolver_prefer",
        &["\"ipv4_only\""],
    );
}
