//! `ringfwd demo`: the one-command showcase. Starts an echo upstream and a
//! forwarder on loopback (ports chosen by the kernel), pushes concurrent
//! verified streams through (random sizes and write splits, half-close), then
//! measures ping-pong latency direct and through ringfwd, and prints it all.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

use crate::cli::DemoArgs;
use crate::config::{HostFacts, Overrides, Plan};
use crate::runtime::{Runtime, exit};
use crate::sys::host::{self, human_bytes};
use crate::verify::{Pattern, Rng};

fn plan(overrides: Overrides) -> Result<Plan, String> {
    let host = HostFacts {
        available_cpus: host::available_cpus(),
    };
    Plan::resolve(None, &overrides, &host).map_err(|e| e.to_string())
}

fn start(overrides: Overrides) -> Result<Runtime, String> {
    let mut p = plan(overrides)?;
    // The demo opens a few dozen connections; a small limit keeps the
    // descriptor check quiet on hosts with a low `ulimit -n`.
    for t in &mut p.tcp {
        t.max_connections = 1024;
    }
    Runtime::start(&p).map_err(|e| e.to_string())
}

/// Result of one verified stream.
struct StreamResult {
    bytes: u64,
    error: Option<String>,
}

/// Sends `size` pattern bytes in random splits, half-closes, and checks the
/// echo byte for byte up to EOF.
fn verified_stream(addr: SocketAddr, seed: u64, size: u64) -> StreamResult {
    let fail = |e: String| StreamResult {
        bytes: 0,
        error: Some(e),
    };
    let stream = match TcpStream::connect(addr) {
        Ok(s) => s,
        Err(e) => return fail(format!("connect {addr}: {e}")),
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(30)));
    let mut writer = match stream.try_clone() {
        Ok(w) => w,
        Err(e) => return fail(format!("clone: {e}")),
    };
    let sender = std::thread::spawn(move || -> Result<(), String> {
        let mut rng = Rng::new(seed ^ 0x5eed);
        let mut pattern = Pattern::new(seed);
        let mut buf = vec![0u8; 64 << 10];
        let mut left = size;
        while left > 0 {
            let n = (1 + rng.below(buf.len() as u64)).min(left) as usize;
            pattern.fill(&mut buf[..n]);
            writer
                .write_all(&buf[..n])
                .map_err(|e| format!("write: {e}"))?;
            left -= n as u64;
        }
        writer
            .shutdown(Shutdown::Write)
            .map_err(|e| format!("shutdown: {e}"))
    });
    let mut reader = stream;
    let mut expect = Pattern::new(seed);
    let mut buf = vec![0u8; 64 << 10];
    let mut got = 0u64;
    let mut error = None;
    loop {
        match reader.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                if let Err(at) = expect.check(&buf[..n]) {
                    error = Some(format!("byte {at} of the echo differs from what was sent"));
                    break;
                }
                got += n as u64;
            }
            Err(e) => {
                error = Some(format!("read after {got} bytes: {e}"));
                break;
            }
        }
    }
    match sender.join() {
        Ok(Ok(())) => {}
        Ok(Err(e)) => error = error.or(Some(e)),
        Err(_) => error = error.or(Some("sender thread panicked".into())),
    }
    if error.is_none() && got != size {
        error = Some(format!("echo ended after {got} of {size} bytes"));
    }
    StreamResult { bytes: got, error }
}

/// `n` ping-pongs of 64 bytes on one connection; latencies in µs.
fn ping_pong(addr: SocketAddr, n: usize) -> Result<Histogram<u64>, String> {
    let mut s = TcpStream::connect(addr).map_err(|e| format!("connect {addr}: {e}"))?;
    s.set_nodelay(true).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(|e| e.to_string())?;
    let mut h = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).map_err(|e| e.to_string())?;
    let mut msg = [0u8; 64];
    let mut back = [0u8; 64];
    for i in 0..n {
        msg[..8].copy_from_slice(&(i as u64).to_le_bytes());
        let t = Instant::now();
        s.write_all(&msg).map_err(|e| format!("write: {e}"))?;
        s.read_exact(&mut back).map_err(|e| format!("read: {e}"))?;
        let us = t.elapsed().as_micros() as u64;
        if back != msg {
            return Err(format!("round trip {i}: reply differs from request"));
        }
        let _ = h.record(us.max(1));
    }
    Ok(h)
}

fn row(name: &str, h: &Histogram<u64>) -> String {
    format!(
        "  {name:<10} {:>8} {:>8} {:>8} {:>8}   {:>9.0}/s",
        format!("{}µs", h.value_at_quantile(0.5)),
        format!("{}µs", h.value_at_quantile(0.9)),
        format!("{}µs", h.value_at_quantile(0.99)),
        format!("{}µs", h.max()),
        if h.mean() > 0.0 { 1e6 / h.mean() } else { 0.0 }
    )
}

pub fn run(args: &DemoArgs) -> u8 {
    match demo(args) {
        Ok(true) => exit::OK,
        Ok(false) => exit::FAILURE,
        Err(e) => {
            eprintln!("ringfwd demo: {e}");
            exit::HOST
        }
    }
}

fn demo(args: &DemoArgs) -> Result<bool, String> {
    let echo = start(Overrides {
        echo: vec!["127.0.0.1:0".into()],
        ..Default::default()
    })?;
    let echo_addr = echo
        .bound()
        .first()
        .map(|b| b.addr)
        .ok_or("echo upstream did not bind")?;
    let mut fwd = start(Overrides {
        tcp: vec![format!("127.0.0.1:0={echo_addr}")],
        ..Default::default()
    })?;
    let fwd_addr = fwd
        .bound()
        .first()
        .map(|b| b.addr)
        .ok_or("forwarder did not bind")?;
    let shards = host::available_cpus().len();
    println!("ringfwd demo: echo upstream and forwarder on loopback, {shards} shard(s) each");
    println!("  echo upstream  {echo_addr}");
    println!("  forwarder      {fwd_addr} -> {echo_addr}\n");

    let mut rng = Rng::new(0xdead_beef);
    let t = Instant::now();
    let handles: Vec<_> = (0..args.streams)
        .map(|i| {
            let size = rng.below(args.max_stream as u64 + 1);
            let seed = rng.next_u64() ^ i as u64;
            std::thread::spawn(move || verified_stream(fwd_addr, seed, size))
        })
        .collect();
    let results: Vec<StreamResult> = handles
        .into_iter()
        .map(|h| {
            h.join().unwrap_or(StreamResult {
                bytes: 0,
                error: Some("stream thread panicked".into()),
            })
        })
        .collect();
    let secs = t.elapsed().as_secs_f64();
    let bytes: u64 = results.iter().map(|r| r.bytes).sum();
    let failures: Vec<&String> = results.iter().filter_map(|r| r.error.as_ref()).collect();
    println!(
        "streams:   {} concurrent connections, {} each way in {:.2}s ({:.2} Gbit/s echoed), half-closed by the client",
        args.streams,
        human_bytes(bytes),
        secs,
        bytes as f64 * 8.0 / secs.max(1e-9) / 1e9
    );
    if failures.is_empty() {
        println!("           every byte verified");
    } else {
        println!("           {} stream(s) FAILED:", failures.len());
        for f in failures.iter().take(5) {
            println!("             {f}");
        }
    }

    println!(
        "\nping-pong: 64 B request/response, 1 connection, {} round trips",
        args.round_trips
    );
    println!(
        "  {:<10} {:>8} {:>8} {:>8} {:>8}   {:>11}",
        "path", "p50", "p90", "p99", "max", "rate"
    );
    let direct = ping_pong(echo_addr, args.round_trips)?;
    println!("{}", row("direct", &direct));
    let through = ping_pong(fwd_addr, args.round_trips)?;
    println!("{}", row("ringfwd", &through));

    // The ping-pong client has closed; give the forwarder a moment to see its
    // FIN so the counters show every connection closed.
    let deadline = Instant::now() + Duration::from_secs(2);
    let mut stats = fwd.snapshot(Duration::from_secs(2));
    while stats.active > 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
        stats = fwd.snapshot(Duration::from_secs(2));
    }
    println!("\nforwarder counters: {}", stats.to_kv());
    let _ = fwd.shutdown();
    let _ = echo.shutdown();
    Ok(failures.is_empty())
}
