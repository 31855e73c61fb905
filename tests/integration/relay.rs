//! Byte integrity through the forwarder: many concurrent streams of random
//! sizes and write splits with half-close, server-first half-close, resets in
//! both directions, IPv6.

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::mpsc;
use std::time::Duration;

use ringfwd::verify::{Pattern, Rng};

use crate::harness::{
    Proc, Splits, echo_upstream, reset, round_trip, verified_streams, write_config,
};

/// Sizes from 0 to several MiB: many small, some large.
fn stream_size(rng: &mut Rng) -> u64 {
    match rng.below(10) {
        0 => 0,
        1..=4 => rng.below(64 << 10),
        5..=8 => rng.below(1 << 20),
        _ => rng.below(6 << 20),
    }
}

fn many_streams(config: &str, streams: usize, seed: u64) -> (Proc, Proc, u64) {
    let echo = echo_upstream(2);
    let cfg = write_config(&config.replace("ECHO", &echo.first_addr().to_string()));
    let fwd = Proc::start(&["run", "--config", cfg.to_str().expect("path")], 1);
    let mut rng = Rng::new(seed);
    let jobs: Vec<(u64, u64)> = (0..streams)
        .map(|_| (rng.next_u64(), stream_size(&mut rng)))
        .collect();
    let total: u64 = jobs.iter().map(|j| j.1).sum();
    verified_streams(&fwd, jobs, Splits::MIXED, &format!("run seed {seed}"));
    (fwd, echo, total)
}

#[test]
fn two_hundred_concurrent_streams_arrive_intact_with_half_close() {
    let config = r#"
[runtime]
shards = 2
stats_interval = "100ms"
[[tcp]]
name = "t"
listen = "127.0.0.1:0"
upstreams = ["ECHO"]
"#;
    let (fwd, _echo, total) = many_streams(config, 220, 0x2002);
    fwd.wait_stat("close_client_eof", Duration::from_secs(10), |v| v == 220);
    let s = fwd.stats();
    assert_eq!(s["accepted"], 220);
    assert_eq!(s["bytes_c2u"], total, "every byte reached the upstream");
    assert_eq!(s["bytes_u2c"], total, "every byte came back");
    assert_eq!(s["stale_completions"], 0);
}

#[test]
fn a_tiny_buffer_pool_is_backpressure_not_loss() {
    // 64 buffers of 4 KiB for 200+ streams in both directions: receives run the
    // ring dry (ENOBUFS) and hit the per-direction watermark all the time.
    let config = r#"
[runtime]
shards = 2
buffer_size = "4KiB"
buffers_per_shard = 64
buffers_per_direction = 4
stats_interval = "100ms"
[[tcp]]
name = "t"
listen = "127.0.0.1:0"
upstreams = ["ECHO"]
"#;
    let (fwd, _echo, total) = many_streams(config, 200, 0x7171);
    fwd.wait_stat("close_client_eof", Duration::from_secs(10), |v| v == 200);
    let s = fwd.stats();
    assert_eq!(s["bytes_c2u"], total);
    assert_eq!(s["bytes_u2c"], total);
    assert!(
        s["enobufs"] > 0,
        "the pool never ran dry; the test lost its point: {s:?}"
    );
    assert!(
        s["recv_paused"] > 0,
        "the watermark never paused a receive: {s:?}"
    );
}

fn forwarder_to(upstream: SocketAddr, extra: &str) -> Proc {
    crate::harness::forwarder(&[upstream], extra, "shards = 2")
}

#[test]
fn upstream_that_sends_and_closes_first_still_gets_the_client_data() {
    let up = TcpListener::bind("127.0.0.1:0").expect("bind");
    let up_addr = up.local_addr().expect("addr");
    let fwd = forwarder_to(up_addr, "");
    let (tx, rx) = mpsc::channel();
    let server = std::thread::spawn(move || {
        let (mut s, _) = up.accept().expect("accept");
        let mut greeting = vec![0u8; 300_000];
        Pattern::new(11).fill(&mut greeting);
        s.write_all(&greeting).expect("upstream write");
        s.shutdown(Shutdown::Write).expect("upstream FIN first");
        let mut got = Vec::new();
        s.set_read_timeout(Some(Duration::from_secs(20)))
            .expect("timeout");
        s.read_to_end(&mut got).expect("upstream read");
        tx.send(got).expect("send");
    });
    let mut c = TcpStream::connect(fwd.first_addr()).expect("connect");
    c.set_read_timeout(Some(Duration::from_secs(20)))
        .expect("timeout");
    let mut greeting = Vec::new();
    c.read_to_end(&mut greeting).expect("client read to EOF");
    assert_eq!(
        greeting.len(),
        300_000,
        "the upstream's data arrived before its FIN"
    );
    assert_eq!(Pattern::new(11).check(&greeting), Ok(()));
    // The upstream has half-closed; the client's direction still flows.
    let mut body = vec![0u8; 1_000_000];
    Pattern::new(12).fill(&mut body);
    c.write_all(&body).expect("client write after upstream FIN");
    c.shutdown(Shutdown::Write).expect("client FIN");
    let got = rx
        .recv_timeout(Duration::from_secs(20))
        .expect("upstream result");
    assert_eq!(got.len(), body.len());
    assert!(got == body, "client data corrupted");
    server.join().expect("server");
    fwd.wait_stat("close_upstream_eof", Duration::from_secs(5), |v| v == 1);
}

#[test]
fn upstream_reset_reaches_the_client_as_a_reset() {
    let up = TcpListener::bind("127.0.0.1:0").expect("bind");
    let fwd = forwarder_to(up.local_addr().expect("addr"), "");
    let server = std::thread::spawn(move || {
        let (s, _) = up.accept().expect("accept");
        let mut s = s;
        let mut b = [0u8; 5];
        s.read_exact(&mut b).expect("read hello");
        reset(s);
    });
    let mut c = TcpStream::connect(fwd.first_addr()).expect("connect");
    c.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    c.write_all(b"hello").expect("write");
    server.join().expect("server");
    let mut b = [0u8; 16];
    let e = c
        .read(&mut b)
        .expect_err("a reset, not data or a clean EOF");
    assert_eq!(e.kind(), ErrorKind::ConnectionReset, "{e}");
    fwd.wait_stat("close_upstream_reset", Duration::from_secs(5), |v| v == 1);
}

#[test]
fn client_reset_reaches_the_upstream_as_a_reset() {
    let up = TcpListener::bind("127.0.0.1:0").expect("bind");
    let fwd = forwarder_to(up.local_addr().expect("addr"), "");
    let (tx, rx) = mpsc::channel();
    let server = std::thread::spawn(move || {
        let (mut s, _) = up.accept().expect("accept");
        s.set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        let mut b = [0u8; 5];
        s.read_exact(&mut b).expect("read hello");
        s.write_all(b"ok").expect("write");
        let mut rest = [0u8; 16];
        tx.send(s.read(&mut rest).map_err(|e| e.kind()))
            .expect("send");
    });
    let mut c = TcpStream::connect(fwd.first_addr()).expect("connect");
    c.write_all(b"hello").expect("write");
    let mut ok = [0u8; 2];
    c.read_exact(&mut ok).expect("relay established");
    reset(c);
    let seen = rx
        .recv_timeout(Duration::from_secs(10))
        .expect("upstream saw something");
    assert_eq!(
        seen,
        Err(ErrorKind::ConnectionReset),
        "upstream must see a reset"
    );
    server.join().expect("server");
    fwd.wait_stat("close_client_reset", Duration::from_secs(5), |v| v == 1);
}

#[test]
fn ipv6_listeners_and_upstreams_work() {
    let echo = Proc::start(&["echo", "--tcp", "[::1]:0", "--shards", "1"], 1);
    let e6 = echo.first_addr();
    assert!(e6.is_ipv6());
    let echo4 = echo_upstream(1);
    let cfg = write_config(&format!(
        r#"
[runtime]
shards = 2
[[tcp]]
name = "v6"
listen = "[::1]:0"
upstreams = ["{e6}"]
[[tcp]]
name = "v4to6"
listen = "127.0.0.1:0"
upstreams = ["{e6}"]
[[tcp]]
name = "v6to4"
listen = "[::1]:0"
upstreams = ["{}"]
"#,
        echo4.first_addr()
    ));
    let fwd = Proc::start(&["run", "--config", cfg.to_str().expect("path")], 3);
    for name in ["v6", "v4to6", "v6to4"] {
        let payload: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        let back = round_trip(fwd.addr(name), &payload).expect(name);
        assert!(back == payload, "{name}: echo differs");
    }
}

#[test]
fn busy_polling_shards_relay_every_byte() {
    // busy_poll changes only how a shard waits: every byte must still arrive,
    // and the shards must say they spin.
    let config = r#"
[runtime]
shards = 2
busy_poll = "50us"
stats_interval = "100ms"
[[tcp]]
name = "t"
listen = "127.0.0.1:0"
upstreams = ["ECHO"]
"#;
    let (fwd, _echo, total) = many_streams(config, 40, 0xb0b0);
    fwd.wait_stat("close_client_eof", Duration::from_secs(10), |v| v == 40);
    let s = fwd.stats();
    assert_eq!(s["bytes_c2u"], total);
    assert_eq!(s["bytes_u2c"], total);
    let log = fwd.log();
    assert_eq!(
        log.matches("busy-poll 50us").count(),
        2,
        "each shard reports its busy-poll: {log}"
    );
}
