//! A real client and server through the UDP forwarder: `dig` queries a local
//! `dnsmasq` via ringfwd (`max_responses = 1`, as DNS deployments use), many
//! queries from several concurrent dig processes, every answer checked.
//! `.ci/run` installs both tools; without CI they may be missing, and the test
//! says so and passes only then.

use std::net::{SocketAddr, UdpSocket};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::harness::{Proc, temp_path, wait_until, write_config};

const QUERIES_PER_DIG: usize = 100;
const DIGS: usize = 4;

pub(crate) fn have(tool: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

pub(crate) fn answer_for(i: usize) -> String {
    format!("10.77.{}.{}", i / 250, i % 250 + 1)
}

pub(crate) struct Dnsmasq {
    child: Child,
    pub(crate) addr: SocketAddr,
}

impl Drop for Dnsmasq {
    fn drop(&mut self) {
        // Our own child, by PID.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A port below the ephemeral range (32768-60999) that is free for both UDP
/// and TCP now (dnsmasq binds both). Ephemeral ports would race with every
/// socket the forwarder and other tests open.
pub(crate) fn free_low_port(seed: u64) -> u16 {
    let mut rng = ringfwd::verify::Rng::new(seed);
    loop {
        let port = 24_000 + rng.below(8_000) as u16;
        let udp = UdpSocket::bind(("127.0.0.1", port));
        let tcp = std::net::TcpListener::bind(("127.0.0.1", port));
        if udp.is_ok() && tcp.is_ok() {
            return port;
        }
    }
}

fn spawn_dnsmasq(hosts: &std::path::Path, port: u16) -> Child {
    Command::new("dnsmasq")
        .args([
            "--keep-in-foreground",
            "--conf-file=/dev/null",
            "--pid-file=",
            "--bind-interfaces",
            "--listen-address=127.0.0.1",
            "--no-resolv",
            "--no-hosts",
            "--local=/ringfwd.test/",
            &format!("--port={port}"),
            &format!("--addn-hosts={}", hosts.display()),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start dnsmasq")
}

/// dnsmasq on a free low port, answering: if something took the port
/// between the check and dnsmasq's bind, dnsmasq exits and another port is tried.
pub(crate) fn start_dnsmasq(hosts: &std::path::Path) -> Dnsmasq {
    for attempt in 0..5u64 {
        let port = free_low_port(u64::from(std::process::id()) ^ (attempt << 32));
        let mut dns = Dnsmasq {
            child: spawn_dnsmasq(hosts, port),
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
        };
        let answering = wait_until(Duration::from_secs(10), || {
            matches!(dns.child.try_wait(), Ok(Some(_)))
                || dig(dns.addr, &["+short", "h0.ringfwd.test"]).trim() == answer_for(0)
        });
        if answering && matches!(dns.child.try_wait(), Ok(None)) {
            return dns;
        }
    }
    panic!("dnsmasq did not start answering on any of 5 free ports");
}

/// Runs dig with `args` against `server`; returns stdout.
fn dig(server: SocketAddr, args: &[&str]) -> String {
    let out = Command::new("dig")
        .arg(format!("@{}", server.ip()))
        .args(["-p", &server.port().to_string(), "+time=2", "+tries=2"])
        .args(args)
        .output()
        .expect("run dig");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn dig_through_ringfwd_to_dnsmasq_gets_every_answer_right() {
    if !(have("dig") && have("dnsmasq")) {
        assert!(
            std::env::var_os("CI").is_none(),
            "dig and dnsmasq are required in CI: apt-get install bind9-dnsutils dnsmasq-base \
             (.ci/run installs them)"
        );
        eprintln!(
            "skipping: dig or dnsmasq not installed (apt-get install bind9-dnsutils dnsmasq-base)"
        );
        return;
    }
    let total = QUERIES_PER_DIG * DIGS;
    let hosts = temp_path("hosts");
    let lines: Vec<String> = (0..total)
        .map(|i| format!("{} h{i}.ringfwd.test", answer_for(i)))
        .collect();
    std::fs::write(&hosts, lines.join("\n") + "\n").expect("write hosts");
    let dns = start_dnsmasq(&hosts);

    // The listener is on a low port, not an ephemeral one: dig sets
    // SO_REUSEPORT on its query sockets, so as the same user it may be given
    // the forwarder's own (reuseport) port for its source and then talk to
    // itself — it reads its own query back ("query response not set").
    let listen = free_low_port(u64::from(std::process::id()).rotate_left(17));
    let cfg = write_config(&format!(
        "[runtime]\nshards = 2\nstats_interval = \"100ms\"\n[[udp]]\nname = \"dns\"\nlisten = \"127.0.0.1:{listen}\"\nupstreams = [\"{}\"]\nmax_responses = 1\n",
        dns.addr
    ));
    let fwd = Proc::start(&["run", "--config", cfg.to_str().expect("path")], 1);
    let via = fwd.first_addr();

    // Several dig processes at once, each asking its own names in a batch,
    // each from its own loopback address: with SO_REUSEPORT two digs can be
    // given the same ephemeral port, and two sockets with one 4-tuple cannot
    // both get their answers through any forwarder (nor without one).
    let digs: Vec<_> = (0..DIGS)
        .map(|d| {
            let batch = temp_path("batch");
            let names: Vec<String> = (0..QUERIES_PER_DIG)
                .map(|q| format!("h{}.ringfwd.test A", d * QUERIES_PER_DIG + q))
                .collect();
            std::fs::write(&batch, names.join("\n") + "\n").expect("write batch");
            let source = format!("127.0.0.{}", 10 + d);
            std::thread::spawn(move || {
                dig(
                    via,
                    &["-b", &source, "+short", "-f", batch.to_str().expect("path")],
                )
            })
        })
        .collect();
    for (d, t) in digs.into_iter().enumerate() {
        let out = t.join().expect("dig thread");
        let got: Vec<&str> = out.lines().map(str::trim).collect();
        let want: Vec<String> = (0..QUERIES_PER_DIG)
            .map(|q| answer_for(d * QUERIES_PER_DIG + q))
            .collect();
        assert!(
            got == want,
            "dig batch {d}: answers differ\nwant {want:?}\ndig printed:\n{out}\nforwarder counters: {:?}",
            fwd.stats()
        );
    }
    // A name dnsmasq does not know: its NXDOMAIN comes back through too.
    let missing = dig(via, &["missing.ringfwd.test"]);
    assert!(missing.contains("status: NXDOMAIN"), "{missing}");

    let answered = (total + 1) as u64;
    fwd.wait_stat("udp_end_responses", Duration::from_secs(10), |v| {
        v == answered
    });
    assert_eq!(fwd.stat("udp_sessions_created"), answered);
    assert_eq!(fwd.stat("udp_datagrams_u2c"), answered);
    assert_eq!(fwd.stat("udp_sessions_active"), 0);
}
