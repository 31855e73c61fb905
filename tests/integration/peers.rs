//! The front stage against peers nobody here wrote: HAProxy sending PROXY
//! v1 and v2 to an `accept_proxy` listener, NGINX stream reading the header
//! ringfwd's `send_proxy` writes, curl's `--haproxy-protocol`, and openssl
//! `s_client -servername` routed by SNI to two `s_server`s with different
//! certificates. Each test skips, saying why, when its tool is absent
//! (`.ci/run` installs them).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::thread;
use std::time::Duration;

use crate::harness::{Peer, Proc, nginx, temp_path, wait_until, write_config};

fn have(tool: &str) -> bool {
    let ok = Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        eprintln!("SKIPPED: `{tool}` is not installed (.ci/run installs it)");
    }
    ok
}

/// A port free now (bound and released), below the ephemeral range is not
/// needed here: peers bind it at once.
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

fn wait_listening(port: u16) -> bool {
    wait_until(Duration::from_secs(10), || {
        TcpStream::connect(("127.0.0.1", port)).is_ok()
    })
}

fn forwarder_with_log(listener: &str) -> (Proc, PathBuf) {
    let log = temp_path("peers-access.log");
    let cfg = write_config(&format!(
        "[runtime]\nshards = 1\nstats_interval = \"100ms\"\n[log]\naccess = \"{}\"\nformat = \"json\"\n[[tcp]]\nname = \"f\"\nlisten = \"127.0.0.1:0\"\n{listener}\n",
        log.display()
    ));
    let fwd = Proc::start(&["run", "--config", cfg.to_str().expect("path")], 1);
    (fwd, log)
}

fn access_lines(log: &Path, n: usize) -> Vec<serde_json::Value> {
    let read = || std::fs::read_to_string(log).unwrap_or_default();
    assert!(
        wait_until(Duration::from_secs(5), || read().lines().count() >= n),
        "{n} access log line(s) in {}",
        read()
    );
    read()
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect()
}

/// An upstream that answers each connection's first read with `reply`.
fn answering_upstream(reply: &'static [u8]) -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = l.local_addr().expect("addr");
    thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { return };
            thread::spawn(move || {
                let mut buf = [0u8; 4096];
                let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
                let _ = s.read(&mut buf);
                let _ = s.write_all(reply);
            });
        }
    });
    addr
}

#[test]
fn haproxy_send_proxy_v1_and_v2_reach_an_accept_proxy_listener_with_the_real_client() {
    if !have("haproxy") {
        return;
    }
    let up = answering_upstream(b"pong");
    let (fwd, log) = forwarder_with_log(&format!(
        "upstreams = [\"{up}\"]\naccept_proxy = true\ntrusted_proxies = [\"127.0.0.1/32\"]"
    ));
    let (v1, v2) = (free_port(), free_port());
    let cfg = temp_path("haproxy.cfg");
    std::fs::write(
        &cfg,
        format!(
            "global\n  maxconn 100\ndefaults\n  mode tcp\n  timeout connect 5s\n  timeout client 10s\n  timeout server 10s\n\
             listen v1\n  bind 127.0.0.1:{v1}\n  server f {0} send-proxy\n\
             listen v2\n  bind 127.0.0.1:{v2}\n  server f {0} send-proxy-v2\n",
            fwd.first_addr()
        ),
    )
    .expect("write haproxy.cfg");
    let _haproxy = Peer(
        Command::new("haproxy")
            .args(["-db", "-f", cfg.to_str().expect("path")])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start haproxy"),
    );
    assert!(wait_listening(v1) && wait_listening(v2), "haproxy listens");
    let mut clients = Vec::new();
    for port in [v1, v2] {
        let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect via haproxy");
        s.set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        clients.push(s.local_addr().expect("addr").to_string());
        s.write_all(b"ping").expect("write");
        let mut got = [0u8; 4];
        s.read_exact(&mut got).expect("the upstream's answer");
        assert_eq!(&got, b"pong");
    }
    // The readiness probes went through HAProxy too; the clients' lines are
    // the ones that moved their 4 bytes.
    let ours = || -> Vec<serde_json::Value> {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        text.lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|l| l["bytes_c2u"] == 4)
            .collect()
    };
    assert!(
        wait_until(Duration::from_secs(5), || ours().len() == 2),
        "two lines for the clients: {:?}",
        ours()
    );
    let lines = ours();
    let mut seen: Vec<String> = lines
        .iter()
        .map(|l| l["client"].as_str().unwrap_or_default().to_owned())
        .collect();
    seen.sort();
    clients.sort();
    assert_eq!(
        seen, clients,
        "the client each header named is the real one"
    );
    for l in &lines {
        assert!(
            l["peer"].is_string(),
            "the real peer (HAProxy) is named: {l}"
        );
        assert_ne!(l["peer"], l["client"], "the peer is HAProxy: {l}");
    }
    assert_eq!(fwd.stat("close_proxy_malformed"), 0);
}

fn stream_module() -> Option<String> {
    [
        "/usr/lib/nginx/modules/ngx_stream_module.so",
        "/usr/lib64/nginx/modules/ngx_stream_module.so",
    ]
    .into_iter()
    .find(|p| Path::new(p).exists())
    .map(str::to_owned)
}

#[test]
fn nginx_stream_reads_the_header_send_proxy_writes() {
    if !have("nginx") {
        return;
    }
    let Some(module) = stream_module() else {
        eprintln!("SKIPPED: NGINX's stream module is not installed (libnginx-mod-stream)");
        return;
    };
    let dir = temp_path("nginx");
    std::fs::create_dir_all(&dir).expect("mkdir");
    let port = free_port();
    let conf = dir.join("nginx.conf");
    std::fs::write(
        &conf,
        format!(
            "load_module {module};\ndaemon off;\nmaster_process off;\npid {d}/nginx.pid;\nerror_log {d}/error.log warn;\n\
             events {{ worker_connections 64; }}\n\
             stream {{ server {{ listen 127.0.0.1:{port} proxy_protocol; return \"$proxy_protocol_addr:$proxy_protocol_port\"; }} }}\n",
            d = dir.display()
        ),
    )
    .expect("write nginx.conf");
    let _nginx = nginx(&dir, &conf);
    assert!(wait_listening(port), "nginx listens");
    for version in ["v1", "v2"] {
        let cfg = write_config(&format!(
            "[runtime]\nshards = 1\n[[tcp]]\nname = \"f\"\nlisten = \"127.0.0.1:0\"\nupstreams = [\"127.0.0.1:{port}\"]\nsend_proxy = \"{version}\"\n"
        ));
        let fwd = Proc::start(&["run", "--config", cfg.to_str().expect("path")], 1);
        let mut s = TcpStream::connect(fwd.first_addr()).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        let me = s.local_addr().expect("addr").to_string();
        let mut said = String::new();
        let _ = s.read_to_string(&mut said);
        assert_eq!(
            said, me,
            "NGINX saw the client ringfwd's {version} header named"
        );
    }
}

#[test]
fn curl_haproxy_protocol_through_an_accept_proxy_listener() {
    if !have("curl") {
        return;
    }
    let up = answering_upstream(b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok");
    let (fwd, log) = forwarder_with_log(&format!(
        "upstreams = [\"{up}\"]\naccept_proxy = true\ntrusted_proxies = [\"127.0.0.1/32\"]"
    ));
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "10", "--haproxy-protocol"])
        .arg(format!("http://{}/", fwd.first_addr()))
        .output()
        .expect("run curl");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.stdout, b"ok");
    let lines = access_lines(&log, 1);
    // curl names its own connection in the header: the client is the peer,
    // so `peer` is not written.
    assert!(lines[0]["peer"].is_null(), "{}", lines[0]);
    assert!(lines[0]["client"].is_string(), "{}", lines[0]);
    assert_eq!(lines[0]["upstream"], up.to_string());
}

/// An `openssl s_server` with a self-signed certificate for `name`.
fn tls_server(dir: &Path, name: &str) -> (Peer, u16) {
    let key = dir.join(format!("{name}.key"));
    let crt = dir.join(format!("{name}.crt"));
    let made = Command::new("openssl")
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj",
        ])
        .arg(format!("/CN={name}"))
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&crt)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("openssl req");
    assert!(made.success(), "a certificate for {name}");
    let port = free_port();
    let child = Command::new("openssl")
        .args(["s_server", "-quiet", "-accept"])
        .arg(port.to_string())
        .arg("-cert")
        .arg(&crt)
        .arg("-key")
        .arg(&key)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start s_server");
    let peer = Peer(child);
    assert!(wait_listening(port), "s_server for {name} listens");
    (peer, port)
}

/// The subject CN of the certificate `s_client -servername name` got.
fn subject_via(fwd: SocketAddr, servername: Option<&str>) -> String {
    let mut cmd = Command::new("openssl");
    cmd.args(["s_client", "-connect"]).arg(fwd.to_string());
    match servername {
        Some(n) => cmd.args(["-servername", n]),
        None => cmd.arg("-noservername"),
    };
    let out = cmd
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .expect("run s_client");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    text.lines()
        .find_map(|l| l.strip_prefix("subject=").map(str::to_owned))
        .unwrap_or_else(|| format!("no certificate: {text}"))
}

#[test]
fn openssl_clients_reach_the_server_their_sni_names() {
    if !have("openssl") {
        return;
    }
    let dir = temp_path("tls");
    std::fs::create_dir_all(&dir).expect("mkdir");
    let (_a, port_a) = tls_server(&dir, "api.example.com");
    let (_d, port_d) = tls_server(&dir, "default.example.net");
    let cfg = write_config(&format!(
        "[runtime]\nshards = 1\n[[tcp]]\nname = \"tls\"\nlisten = \"127.0.0.1:0\"\nupstreams = [\"127.0.0.1:{port_d}\"]\n\
         [[tcp.routes]]\nsni = [\"api.example.com\", \"*.api.example.org\"]\nupstreams = [\"127.0.0.1:{port_a}\"]\n"
    ));
    let fwd = Proc::start(&["run", "--config", cfg.to_str().expect("path")], 1);
    let via = fwd.first_addr();
    assert!(subject_via(via, Some("api.example.com")).contains("api.example.com"));
    assert!(
        subject_via(via, Some("API.Example.COM")).contains("api.example.com"),
        "case-insensitive"
    );
    assert!(
        subject_via(via, Some("x.api.example.org")).contains("api.example.com"),
        "wildcard"
    );
    assert!(subject_via(via, Some("other.example.com")).contains("default.example.net"));
    assert!(
        subject_via(via, None).contains("default.example.net"),
        "no SNI"
    );
}
