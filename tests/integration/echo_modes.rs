//! `ringfwd echo`'s server modes for the load generator, run as the real
//! binary with 2 shards: a sink that consumes everything and answers FIN with
//! FIN, a source whose stream every client verifies byte for byte, and a
//! request/response server that answers exactly `--response-size` bytes of the
//! periodic stream per `--request-size` bytes received, pipelined or split.

use std::collections::HashMap;
use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::time::Duration;

use ringfwd::verify::{PeriodicCheck, Rng, periodic_region};

use crate::harness::{Proc, run_to_end};

/// Bound on every read a test makes: a stalled server fails the test, it
/// does not hang it.
const READ_TIMEOUT: Duration = Duration::from_secs(20);

fn connect(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(READ_TIMEOUT)).expect("timeout");
    s.set_nodelay(true).expect("nodelay");
    s
}

/// SIGTERM, wait for a clean exit, and return the final counters.
fn finish(mut p: Proc) -> HashMap<String, u64> {
    p.signal(libc::SIGTERM);
    let status = p
        .wait_exit(Duration::from_secs(20))
        .unwrap_or_else(|| panic!("did not exit after SIGTERM; log:\n{}", p.log()));
    assert!(status.success(), "exit {status:?}; log:\n{}", p.log());
    let stats = p.stats();
    assert!(!stats.is_empty(), "no final stats; log:\n{}", p.log());
    stats
}

/// Reads until EOF, checking every byte against the periodic stream; returns
/// how many arrived.
fn read_to_eof_checked(s: &mut TcpStream, check: &mut PeriodicCheck, region: &[u8]) -> u64 {
    let mut buf = vec![0u8; 256 << 10];
    let mut n_total = 0;
    loop {
        match s.read(&mut buf) {
            Ok(0) => return n_total,
            Ok(n) => {
                if let Err(at) = check.check(region, &buf[..n]) {
                    panic!("stream byte {at} differs from the periodic pattern");
                }
                n_total += n as u64;
            }
            Err(e) => panic!("read after {} bytes: {e}", check.position),
        }
    }
}

#[test]
fn listening_lines_name_each_mode() {
    let p = Proc::start(
        &[
            "echo",
            "--tcp",
            "127.0.0.1:0",
            "--tcp-sink",
            "127.0.0.1:0",
            "--tcp-source",
            "127.0.0.1:0",
            "--tcp-rr",
            "127.0.0.1:0",
            "--shards",
            "2",
        ],
        4,
    );
    let kinds: Vec<&str> = p.listening.iter().map(|(k, _, _)| k.as_str()).collect();
    assert_eq!(kinds, ["echo", "echo-sink", "echo-source", "echo-rr"]);
    for (kind, name, addr) in &p.listening {
        assert_eq!(name, "127.0.0.1:0", "{kind}");
        assert_ne!(addr.port(), 0, "{kind}: the bound port is printed");
    }
    finish(p);
}

#[test]
fn sink_consumes_everything_and_answers_fin_with_fin() {
    let p = Proc::start(&["echo", "--tcp-sink", "127.0.0.1:0", "--shards", "2"], 1);
    assert_eq!(p.listening[0].0, "echo-sink");
    let addr = p.first_addr();
    const CLIENTS: u64 = 6;
    const MIB: u64 = 6;
    let clients: Vec<_> = (0..CLIENTS)
        .map(|i| {
            std::thread::spawn(move || {
                let mut s = connect(addr);
                let mut rng = Rng::new(0x51_0000 + i);
                let buf = vec![0xa5u8; 200 << 10];
                let mut left = MIB << 20;
                while left > 0 {
                    let n = (1 + rng.below(buf.len() as u64)).min(left) as usize;
                    s.write_all(&buf[..n]).expect("write to the sink");
                    left -= n as u64;
                }
                s.shutdown(Shutdown::Write).expect("FIN");
                // The sink answers the FIN with its own, and sends nothing.
                let mut back = Vec::new();
                s.read_to_end(&mut back).expect("EOF from the sink");
                assert!(back.is_empty(), "the sink sent {} bytes", back.len());
            })
        })
        .collect();
    for c in clients {
        c.join().expect("sink client");
    }
    let stats = finish(p);
    assert_eq!(stats["bytes_c2u"], CLIENTS * (MIB << 20), "{stats:?}");
    assert_eq!(stats["bytes_u2c"], 0);
    assert_eq!(stats["accepted"], CLIENTS);
    assert_eq!(stats["close_client_eof"], CLIENTS, "{stats:?}");
    assert_eq!(stats["active"], 0);
}

#[test]
fn source_streams_the_periodic_pattern_to_concurrent_clients() {
    let p = Proc::start(&["echo", "--tcp-source", "127.0.0.1:0", "--shards", "2"], 1);
    assert_eq!(p.listening[0].0, "echo-source");
    let addr = p.first_addr();
    const CLIENTS: u64 = 8;
    let clients: Vec<_> = (0..CLIENTS)
        .map(|i| {
            std::thread::spawn(move || -> u64 {
                let region = periodic_region();
                let mut s = connect(addr);
                let mut check = PeriodicCheck::default();
                let want = (2 + i % 4) << 20;
                let mut rng = Rng::new(0x50_0000 + i);
                let mut buf = vec![0u8; 128 << 10];
                while check.position < want {
                    // Odd read sizes, so reads never line up with the server's sends.
                    let n = 1 + rng.below(buf.len() as u64) as usize;
                    match s.read(&mut buf[..n]) {
                        Ok(0) => panic!("client {i}: EOF after {} bytes", check.position),
                        Ok(got) => {
                            if let Err(at) = check.check(&region, &buf[..got]) {
                                panic!("client {i}: stream byte {at} differs");
                            }
                        }
                        Err(e) => panic!("client {i}: read: {e}"),
                    }
                }
                if i % 2 == 0 {
                    // FIN: the source stops, answers with FIN; the tail is verified too.
                    s.shutdown(Shutdown::Write).expect("FIN");
                    read_to_eof_checked(&mut s, &mut check, &region);
                }
                // Odd clients just close with unread data: a reset.
                check.position
            })
        })
        .collect();
    let mut total = 0;
    for c in clients {
        total += c.join().expect("source client");
    }
    let stats = finish(p);
    assert_eq!(stats["accepted"], CLIENTS, "{stats:?}");
    assert!(stats["bytes_u2c"] >= total, "{stats:?}");
    assert!(
        stats["close_client_eof"] >= CLIENTS / 2,
        "every FIN is answered: {stats:?}"
    );
    assert_eq!(
        stats["close_client_eof"] + stats["close_client_reset"],
        CLIENTS,
        "{stats:?}"
    );
    assert_eq!(stats["close_shutdown"], 0, "{stats:?}");
    assert_eq!(stats["active"], 0);
}

/// Sends `bytes` request bytes split as `splits` says, and reads the exact
/// responses they complete (with `pending` request bytes carried over).
struct RrClient {
    s: TcpStream,
    check: PeriodicCheck,
    region: Box<[u8]>,
    request: u64,
    response: u64,
    /// Request bytes sent toward the next complete request.
    partial: u64,
}

impl RrClient {
    fn new(addr: SocketAddr, request: u64, response: u64) -> RrClient {
        RrClient {
            s: connect(addr),
            check: PeriodicCheck::default(),
            region: periodic_region(),
            request,
            response,
            partial: 0,
        }
    }

    /// Writes `pieces` (each a number of request bytes) one write each, then
    /// reads exactly the responses those bytes completed.
    fn send(&mut self, pieces: &[u64]) {
        let mut owed = 0;
        for &n in pieces {
            let bytes = vec![b'q'; n as usize];
            self.s.write_all(&bytes).expect("request");
            self.partial += n;
            owed += (self.partial / self.request) * self.response;
            self.partial %= self.request;
        }
        self.read_exact(owed);
    }

    fn read_exact(&mut self, mut n: u64) {
        let mut buf = vec![0u8; 256 << 10];
        while n > 0 {
            let want = n.min(buf.len() as u64) as usize;
            match self.s.read(&mut buf[..want]) {
                Ok(0) => panic!("EOF with {n} response bytes owed"),
                Ok(got) => {
                    if let Err(at) = self.check.check(&self.region, &buf[..got]) {
                        panic!("response stream byte {at} differs");
                    }
                    n -= got as u64;
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock || e.kind() == ErrorKind::TimedOut => {
                    panic!("timed out with {n} response bytes owed")
                }
                Err(e) => panic!("read: {e}"),
            }
        }
    }

    /// FIN, then EOF must follow with not one byte more than was owed.
    fn finish(mut self) -> u64 {
        self.s.shutdown(Shutdown::Write).expect("FIN");
        let extra = read_to_eof_checked(&mut self.s, &mut self.check, &self.region);
        assert_eq!(extra, 0, "{extra} bytes beyond the owed responses");
        self.check.position
    }
}

#[test]
fn request_response_answers_every_request_exactly() {
    const REQ: u64 = 100;
    const RESP: u64 = 3000;
    let p = Proc::start(
        &[
            "echo",
            "--tcp-rr",
            "127.0.0.1:0",
            "--request-size",
            "100",
            "--response-size",
            "3000",
            "--shards",
            "2",
        ],
        1,
    );
    assert_eq!(p.listening[0].0, "echo-rr");
    let addr = p.first_addr();

    // Ping-pong: one request, one response, the stream continuing across them.
    let mut c = RrClient::new(addr, REQ, RESP);
    for _ in 0..50 {
        c.send(&[REQ]);
    }
    assert_eq!(c.finish(), 50 * RESP);

    // Pipelined: ten requests in one write, then 3 and a half in one write
    // (the half is finished by the next write).
    let mut c = RrClient::new(addr, REQ, RESP);
    c.send(&[10 * REQ]);
    c.send(&[3 * REQ + REQ / 2]);
    c.send(&[REQ / 2]);
    assert_eq!(c.finish(), 14 * RESP);

    // One request split over several writes, a trailing partial request
    // that owes nothing, and FIN: exactly one response, then EOF.
    let mut c = RrClient::new(addr, REQ, RESP);
    c.send(&[1, 7, 50, 41, 1]);
    c.send(&[REQ - 1]);
    assert_eq!(c.finish(), RESP);

    // Concurrent clients with random splits over both shards.
    let clients: Vec<_> = (0..8u64)
        .map(|i| {
            std::thread::spawn(move || {
                let mut rng = Rng::new(0x77_0000 + i);
                let mut c = RrClient::new(addr, REQ, RESP);
                let mut sent = 0;
                for _ in 0..40 {
                    let pieces: Vec<u64> = (0..1 + rng.below(4))
                        .map(|_| 1 + rng.below(3 * REQ))
                        .collect();
                    sent += pieces.iter().sum::<u64>();
                    c.send(&pieces);
                }
                assert_eq!(c.finish(), (sent / REQ) * RESP, "client {i}");
            })
        })
        .collect();
    for c in clients {
        c.join().expect("rr client");
    }
    let stats = finish(p);
    assert_eq!(stats["accepted"], 11, "{stats:?}");
    assert_eq!(stats["close_client_eof"], 11, "{stats:?}");
    assert_eq!(stats["active"], 0);
}

#[test]
fn request_response_with_responses_larger_than_a_send_window() {
    // 1 MiB + 7 per 5000-byte request: every response takes many sends
    // and crosses the pattern's period at odd places.
    let resp: u64 = (1 << 20) + 7;
    let p = Proc::start(
        &[
            "echo",
            "--tcp-rr",
            "127.0.0.1:0",
            "--request-size",
            "5000",
            "--response-size",
            "1048583",
            "--shards",
            "2",
        ],
        1,
    );
    let mut c = RrClient::new(p.first_addr(), 5000, resp);
    c.send(&[3 * 5000]);
    c.send(&[2500, 2500]);
    assert_eq!(c.finish(), 4 * resp);
    let stats = finish(p);
    assert_eq!(stats["bytes_u2c"], 4 * resp, "{stats:?}");
    assert_eq!(stats["bytes_c2u"], 20_000, "{stats:?}");
}

#[test]
fn bad_request_sizes_are_rejected_naming_the_flag() {
    let cases: [(&[&str], &str); 5] = [
        (
            &["--request-size", "0"],
            "echo --request-size: \"0\" is out of range",
        ),
        (
            &["--request-size", "lots"],
            "echo --request-size: \"lots\" is not a size",
        ),
        (
            &["--response-size", "17MiB"],
            "echo --response-size: \"17MiB\" is out of range",
        ),
        (&["--response-size", "16777217"], "16MiB"),
        (&["--request-size", "1.5KiB"], "fractions"),
    ];
    for (flags, needle) in cases {
        let mut args = vec!["echo", "--tcp-rr", "127.0.0.1:0", "--shards", "1"];
        args.extend_from_slice(flags);
        let (code, out, err) = run_to_end(&args);
        assert_eq!(code, Some(2), "{args:?}: {err}");
        assert!(err.contains(needle), "{args:?}: {needle:?} not in {err}");
        assert!(!out.contains("listening"), "{args:?} started: {out}");
    }
    // A size without a --tcp-rr listener to apply to is a usage error.
    let (code, _, err) = run_to_end(&["echo", "--tcp-sink", "127.0.0.1:0", "--request-size", "64"]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("--tcp-rr"), "{err}");
}
