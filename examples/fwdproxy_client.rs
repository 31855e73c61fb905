//! The load client of `benches/fwdproxy.py`: SOCKS5 CONNECT or HTTP CONNECT
//! transactions through a forward proxy, `--conns` of them in flight.
//!
//! A transaction: connect to the proxy, the SOCKS5 greeting (no
//! authentication) and a CONNECT to an IPv4 literal, or an HTTP CONNECT head,
//! read the reply, send 64 bytes through the tunnel, read 64 back, close.
//! `plain` skips the handshake (the client straight to the upstream, or
//! through a plain forward).
//!
//! Standard library only, one blocking thread per connection in flight, so
//! `benches/fwdproxy.py` compiles it with `rustc` alone in seconds. It is in
//! Rust because the Python client (`fwdproxy.py client`) costs about twice the
//! CPU per transaction and, sharing CPU 1 with the upstream, could not keep
//! ringfwd's single shard busy.
//!
//! Prints `measuring` when the warm-up ends, `done` when the measured window
//! ends (the bench samples the proxy's CPU at both lines), then one JSON line.
//!
//! ```sh
//! rustc --edition 2024 -C opt-level=3 -o /tmp/fwdproxy_client examples/fwdproxy_client.rs
//! /tmp/fwdproxy_client --proto socks5 --proxy 127.0.0.1:1080 --target 127.0.0.1:9000 --conns 50 --duration 5 --warmup 1
//! ```

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, SocketAddrV4, TcpStream};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

const PAYLOAD_LEN: usize = 64;
/// The longest CONNECT reply head read before the transaction is a failure.
const HEAD_LIMIT: usize = 8192;

#[derive(Clone, Copy, PartialEq)]
enum Proto {
    Socks5,
    Http,
    Plain,
}

struct Plan {
    proto: Proto,
    proxy: SocketAddr,
    /// The SOCKS5 CONNECT request or the HTTP CONNECT head.
    request: Vec<u8>,
    payload: [u8; PAYLOAD_LEN],
    timeout: Duration,
}

struct Args {
    plan: Plan,
    conns: usize,
    warmup: Duration,
    duration: Duration,
}

#[derive(Default)]
struct Shared {
    measuring: AtomicBool,
    stop: AtomicBool,
    tx: AtomicU64,
    errors: Mutex<HashMap<String, u64>>,
}

fn usage(why: &str) -> String {
    format!(
        "fwdproxy_client: {why}\nusage: fwdproxy_client --proto socks5|http|plain --proxy IP:PORT \
         --target IPv4:PORT [--conns 50] [--duration 5] [--warmup 1] [--tx-timeout 5]"
    )
}

fn seconds(flag: &str, v: &str) -> Result<Duration, String> {
    v.parse::<f64>()
        .ok()
        .filter(|s| s.is_finite() && *s >= 0.0)
        .map(Duration::from_secs_f64)
        .ok_or_else(|| usage(&format!("{flag} takes seconds, e.g. 5 or 0.5, not {v:?}")))
}

fn parse_args() -> Result<Args, String> {
    let mut kv = HashMap::new();
    let mut it = std::env::args().skip(1);
    while let Some(k) = it.next() {
        let v = it
            .next()
            .ok_or_else(|| usage(&format!("{k} needs a value")))?;
        kv.insert(k, v);
    }
    let get = |k: &str, default: Option<&str>| -> Result<String, String> {
        kv.get(k)
            .cloned()
            .or(default.map(str::to_owned))
            .ok_or_else(|| usage(&format!("{k} is required")))
    };
    let proto = match get("--proto", None)?.as_str() {
        "socks5" => Proto::Socks5,
        "http" => Proto::Http,
        "plain" => Proto::Plain,
        other => {
            return Err(usage(&format!(
                "--proto {other:?} is not socks5, http or plain"
            )));
        }
    };
    let proxy: SocketAddr = get("--proxy", None)?
        .parse()
        .map_err(|e| usage(&format!("--proxy: {e}")))?;
    let target: SocketAddrV4 = get("--target", None)?
        .parse()
        .map_err(|e| usage(&format!("--target (an IPv4 literal and a port): {e}")))?;
    let request = match proto {
        Proto::Socks5 => {
            let mut r = vec![5, 1, 0, 1];
            r.extend_from_slice(&target.ip().octets());
            r.extend_from_slice(&target.port().to_be_bytes());
            r
        }
        Proto::Http => format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n").into_bytes(),
        Proto::Plain => Vec::new(),
    };
    let conns = get("--conns", Some("50"))?
        .parse()
        .map_err(|e| usage(&format!("--conns: {e}")))?;
    let mut payload = [0u8; PAYLOAD_LEN];
    for (i, b) in payload.iter_mut().enumerate() {
        *b = (i as u8).wrapping_mul(7).wrapping_add(1);
    }
    Ok(Args {
        plan: Plan {
            proto,
            proxy,
            request,
            payload,
            timeout: seconds("--tx-timeout", &get("--tx-timeout", Some("5"))?)?,
        },
        conns,
        warmup: seconds("--warmup", &get("--warmup", Some("1"))?)?,
        duration: seconds("--duration", &get("--duration", Some("5"))?)?,
    })
}

/// A failed step, named for the error counts: what the client was doing and
/// what went wrong.
fn step_err(step: &str) -> impl Fn(io::Error) -> String + '_ {
    move |e| format!("{step}: {:?}", e.kind())
}

fn socks5_handshake(s: &mut TcpStream, plan: &Plan) -> Result<(), String> {
    s.write_all(&[5, 1, 0]).map_err(step_err("send greeting"))?;
    let mut method = [0u8; 2];
    s.read_exact(&mut method).map_err(step_err("read method"))?;
    if method != [5, 0] {
        return Err(format!("method reply {method:02x?}"));
    }
    s.write_all(&plan.request)
        .map_err(step_err("send connect"))?;
    let mut head = [0u8; 5];
    s.read_exact(&mut head).map_err(step_err("read reply"))?;
    if head[1] != 0 {
        return Err(format!("socks5 reply code {}", head[1]));
    }
    // The 5 bytes read hold the first byte of the bound address (or the
    // name's length); the rest of the address and the port follow.
    let rest = match head[3] {
        1 => 3 + 2,
        4 => 15 + 2,
        3 => usize::from(head[4]) + 2,
        t => return Err(format!("socks5 reply address type {t}")),
    };
    let mut buf = [0u8; 257];
    s.read_exact(&mut buf[..rest])
        .map_err(step_err("read reply address"))
}

/// The bytes after the reply head (the start of the upstream's response,
/// if the proxy sent them together).
fn http_handshake(s: &mut TcpStream, plan: &Plan) -> Result<usize, String> {
    s.write_all(&plan.request)
        .map_err(step_err("send connect"))?;
    let mut buf = [0u8; HEAD_LIMIT];
    let mut have = 0;
    loop {
        let n = s.read(&mut buf[have..]).map_err(step_err("read reply"))?;
        if n == 0 {
            return Err("read reply: eof".into());
        }
        have += n;
        if let Some(end) = buf[..have].windows(4).position(|w| w == b"\r\n\r\n") {
            let status = buf[..end].split(|b| *b == b' ').nth(1);
            if status != Some(b"200".as_slice()) {
                let line = buf[..end].split(|b| *b == b'\r').next().unwrap_or_default();
                return Err(format!(
                    "http reply {}",
                    String::from_utf8_lossy(&line[..line.len().min(40)])
                ));
            }
            return Ok(have - (end + 4));
        }
        if have == buf.len() {
            return Err("http reply head too long".into());
        }
    }
}

fn transaction(plan: &Plan) -> Result<(), String> {
    let mut s =
        TcpStream::connect_timeout(&plan.proxy, plan.timeout).map_err(step_err("connect"))?;
    s.set_nodelay(true).map_err(step_err("nodelay"))?;
    s.set_read_timeout(Some(plan.timeout))
        .map_err(step_err("timeout"))?;
    s.set_write_timeout(Some(plan.timeout))
        .map_err(step_err("timeout"))?;
    let early = match plan.proto {
        Proto::Socks5 => socks5_handshake(&mut s, plan).map(|()| 0)?,
        Proto::Http => http_handshake(&mut s, plan)?,
        Proto::Plain => 0,
    };
    s.write_all(&plan.payload)
        .map_err(step_err("send request"))?;
    let mut resp = [0u8; PAYLOAD_LEN];
    let want = PAYLOAD_LEN.saturating_sub(early);
    s.read_exact(&mut resp[..want])
        .map_err(step_err("read response"))
}

fn worker(plan: &Plan, shared: &Shared) -> Vec<u32> {
    let mut latencies = Vec::new();
    while !shared.stop.load(Ordering::Relaxed) {
        let t0 = Instant::now();
        let result = transaction(plan);
        if !shared.measuring.load(Ordering::Relaxed) {
            continue;
        }
        match result {
            Ok(()) => {
                shared.tx.fetch_add(1, Ordering::Relaxed);
                latencies.push(u32::try_from(t0.elapsed().as_micros()).unwrap_or(u32::MAX));
            }
            Err(kind) => {
                let mut errors = shared.errors.lock().unwrap_or_else(|p| p.into_inner());
                *errors.entry(kind).or_default() += 1;
            }
        }
    }
    latencies
}

fn json_string(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => out.push_str(&format!("\\u{:04x}", u32::from(c))),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    let plan = Arc::new(args.plan);
    let shared = Arc::new(Shared::default());
    let mut threads = Vec::with_capacity(args.conns);
    for _ in 0..args.conns {
        let (plan, shared) = (Arc::clone(&plan), Arc::clone(&shared));
        threads.push(thread::spawn(move || worker(&plan, &shared)));
    }
    thread::sleep(args.warmup);
    shared.measuring.store(true, Ordering::Relaxed);
    let m0 = Instant::now();
    println!("measuring");
    thread::sleep(args.duration);
    shared.measuring.store(false, Ordering::Relaxed);
    let seconds = m0.elapsed().as_secs_f64();
    let tx = shared.tx.load(Ordering::Relaxed);
    println!("done");
    shared.stop.store(true, Ordering::Relaxed);
    let mut lat: Vec<u32> = threads
        .into_iter()
        .flat_map(|t| t.join().unwrap_or_default())
        .collect();
    lat.sort_unstable();
    let pct = |p: f64| -> String {
        let i = ((p * lat.len() as f64) as usize).min(lat.len().saturating_sub(1));
        lat.get(i).map_or("null".into(), |v| v.to_string())
    };
    let errors = shared.errors.lock().unwrap_or_else(|p| p.into_inner());
    let kinds: Vec<String> = errors
        .iter()
        .map(|(k, v)| format!("{}: {v}", json_string(k)))
        .collect();
    println!(
        "{{\"tx\": {tx}, \"errors\": {}, \"error_kinds\": {{{}}}, \"seconds\": {seconds}, \"rate\": {}, \
         \"p50_us\": {}, \"p99_us\": {}}}",
        errors.values().sum::<u64>(),
        kinds.join(", "),
        tx as f64 / seconds,
        pct(0.5),
        pct(0.99),
    );
    ExitCode::SUCCESS
}
