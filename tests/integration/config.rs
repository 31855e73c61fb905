//! `ringfwd check` and bad input on the command line: every rejection names
//! the key and the bad value, with exit code 2; a good config prints the plan.

use crate::harness::{run_to_end, write_config};

fn check(config: &str) -> (Option<i32>, String, String) {
    let p = write_config(config);
    run_to_end(&["check", "--config", p.to_str().expect("path")])
}

#[test]
fn check_prints_the_resolved_plan_with_defaults() {
    let (code, out, err) = check(
        r#"
[runtime]
shards = 1
[[tcp]]
name = "web"
listen = "127.0.0.1:0"
upstreams = ["10.0.0.5:80", "[2001:db8::6]:80"]
"#,
    );
    assert_eq!(code, Some(0), "{err}");
    for want in [
        "web",
        "127.0.0.1:0",
        "10.0.0.5:80",
        "[2001:db8::6]:80",
        "connect_timeout",
        "5s",
        "10m",
        "1m",
        "10000",
    ] {
        assert!(out.contains(want), "plan lacks {want}:\n{out}");
    }
}

#[test]
fn check_prints_proxy_routes_and_access_log_keys() {
    let (code, out, err) = check(
        r#"
[runtime]
shards = 1
[log]
access = "stdout"
format = "json"
[[tcp]]
name = "tls"
listen = "127.0.0.1:0"
upstreams = ["10.0.0.5:443"]
send_proxy = "v1"
accept_proxy = true
trusted_proxies = ["127.0.0.1"]
[[tcp.routes]]
sni = ["API.example.com", "*.example.org"]
upstreams = ["10.0.0.6:443"]
[[udp]]
listen = "127.0.0.1:0"
upstreams = ["10.0.0.53:53"]
send_proxy = "v2"
"#,
    );
    assert_eq!(code, Some(0), "{err}");
    let tcp = "send_proxy = \"v1\"\naccept_proxy = true\ntrusted_proxies = [\"127.0.0.1/32\"]\n\
               proxy_timeout = \"5s\"\nsni_timeout = \"5s\"\n[[tcp.routes]]\n\
               sni = [\"api.example.com\", \"*.example.org\"]\nupstreams = [\"10.0.0.6:443\"]\n";
    for want in [
        tcp,
        "[log]\naccess = \"stdout\"\nformat = \"json\"\n",
        "send_proxy = \"v2\"\n",
    ] {
        assert!(out.contains(want), "plan lacks {want:?}:\n{out}");
    }
}

#[test]
fn bad_configs_are_rejected_naming_the_key() {
    let base = "[[tcp]]\nlisten = \"127.0.0.1:8080\"\nupstreams = [\"127.0.0.1:9000\"]\n";
    let cases: Vec<(String, &str)> = vec![
        (format!("{base}bogus = 1\n"), "bogus"),
        (format!("[runtime]\nshardz = 2\n{base}"), "shardz"),
        (
            format!("[runtime]\nbuffer_size = \"0KiB\"\n{base}"),
            "buffer_size",
        ),
        (
            format!("[runtime]\nbuffer_size = \"64GiB\"\n{base}"),
            "buffer_size",
        ),
        (
            format!("[runtime]\nbuffers_per_shard = 0\n{base}"),
            "buffers_per_shard",
        ),
        (
            format!("{base}connect_timeout = \"5 parsecs\"\n"),
            "connect_timeout",
        ),
        (format!("{base}idle_timeout = 10\n"), "idle_timeout"),
        (
            "[[tcp]]\nlisten = \"127.0.0.1:8080\"\nupstreams = []\n".into(),
            "upstreams",
        ),
        (
            "[[tcp]]\nlisten = \"localhost:8080\"\nupstreams = [\"127.0.0.1:1\"]\n".into(),
            "listen",
        ),
        (
            "[[tcp]]\nlisten = \"127.0.0.1:8080\"\nupstreams = [\"10.0.0.1\"]\n".into(),
            "upstreams[0]",
        ),
        (
            "[[tcp]]\nlisten = \"127.0.0.1:99999\"\nupstreams = [\"10.0.0.1:1\"]\n".into(),
            "listen",
        ),
        ("[[tcp]]\nupstreams = [\"10.0.0.1:1\"]\n".into(), "listen"),
        (format!("{base}max_connections = 0\n"), "max_connections"),
        ("this is not toml".into(), "line"),
        (
            format!("{base}[[tcp.routes]]\nsni = [\"a.example\"]\nupstreams = [\"10.0.0.1:1\"]\n[[tcp.routes]]\nsni = [\"A.example\"]\nupstreams = [\"10.0.0.2:1\"]\n"),
            "tcp[0].routes[1].sni[0]: \"A.example\" (as \"a.example\": names match without case) is already in tcp[0].routes[0].sni[0]",
        ),
        (
            format!("{base}accept_proxy = true\n"),
            "tcp[0].trusted_proxies: missing; tcp[0].accept_proxy = true needs trusted_proxies",
        ),
        (
            "[[udp]]\nlisten = \"127.0.0.1:5353\"\nupstreams = [\"127.0.0.1:53\"]\nsend_proxy = \"v1\"\n".into(),
            "udp[0].send_proxy: \"v1\" has no datagram form",
        ),
        (
            format!("[log]\nformat = \"json\"\n{base}"),
            "log.format: is set but log.access is not",
        ),
    ];
    for (text, key) in cases {
        let (code, _, err) = check(&text);
        assert_eq!(code, Some(2), "config accepted:\n{text}\nstderr: {err}");
        assert!(
            err.contains(key),
            "error for\n{text}\ndoes not name {key:?}: {err}"
        );
        assert!(!err.contains("panicked"), "{err}");
    }
}

#[test]
fn bad_flags_are_rejected_naming_the_flag() {
    for (args, key) in [
        (vec!["run", "--tcp", "127.0.0.1:8080"], "--tcp"),
        (vec!["run", "--tcp", "127.0.0.1:8080=nowhere"], "--tcp"),
        (
            vec![
                "run",
                "--tcp",
                "127.0.0.1:8080=127.0.0.1:1",
                "--shards",
                "0",
            ],
            "shards",
        ),
        (vec!["run"], "nothing to listen on"),
        (
            vec!["run", "--config", "/nonexistent/ringfwd.toml"],
            "/nonexistent/ringfwd.toml",
        ),
    ] {
        let (code, _, err) = run_to_end(&args);
        assert_eq!(code, Some(2), "{args:?}: {err}");
        assert!(err.contains(key), "{args:?}: {err}");
    }
}

/// Issue 15: a SOCKS5 or HTTP CONNECT listener that anyone could use is
/// refused by `check` (and so at start, which resolves the same plan), naming
/// the listener, its address and the three keys that fix it; each fix passes.
#[test]
fn check_refuses_an_open_forward_proxy_naming_the_keys_that_fix_it() {
    let open = "[runtime]\nshards = 1\n[[socks5]]\nname = \"egress\"\nlisten = \"0.0.0.0:0\"\n";
    let (code, _, err) = check(open);
    assert_eq!(code, Some(2), "{err}");
    for want in [
        "socks5[0].listen",
        "\"egress\" on 0.0.0.0:0 would be an open proxy",
        "set users (or users_file)",
        "allow to list the clients",
        "open = true",
    ] {
        assert!(err.contains(want), "{want:?} not in: {err}");
    }
    let users = write_config("alice:secret\n");
    for fix in [
        format!("users_file = {:?}\n", users.display().to_string()),
        "allow = [\"10.0.0.0/8\"]\n".to_owned(),
        "open = true\n".to_owned(),
    ] {
        let (code, out, err) = check(&format!("{open}{fix}"));
        assert_eq!(code, Some(0), "{fix}: {err}");
        assert!(out.contains("[[socks5]]\nname = \"egress\"\n"), "{out}");
        assert!(!out.contains("secret"), "{out}");
    }
}
