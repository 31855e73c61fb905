//! `ringfwd demo`: the one-command showcase. Starts an echo upstream and a
//! forwarder on loopback (ports chosen by the kernel, TCP and UDP), pushes
//! concurrent verified streams through (random sizes and write splits,
//! half-close), then runs short `ringfwd bench` loads — tcp-rr on 1 and 64
//! connections, tcp-stream, udp-rr — direct and through ringfwd, and prints
//! them side by side with latency percentiles.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use crate::bench::plan::{BenchPlan, Direction, Workload};
use crate::bench::report::{Summary, dur, si};
use crate::cli::DemoArgs;
use crate::config::units::{format_duration, parse_duration};
use crate::config::{HostFacts, Overrides, Plan};
use crate::runtime::{Runtime, exit};
use crate::sys::host::{self, human_bytes};
use crate::sys::output;
use crate::verify::{Pattern, Rng};

/// `println!` that never panics: a closed or full stdout (`ringfwd demo |
/// head`) loses the report's lines, and the demo still ends normally.
macro_rules! say {
    ($($arg:tt)*) => {{
        let _ = writeln!(std::io::stdout(), $($arg)*);
    }};
}

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

/// The address of `rt`'s first UDP (or TCP) listener.
fn bound(rt: &Runtime, udp: bool) -> Option<SocketAddr> {
    rt.bound()
        .iter()
        .find(|b| b.kind.starts_with("udp") == udp)
        .map(|b| b.addr)
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

/// One load of the side-by-side table.
struct Load {
    label: &'static str,
    workload: Workload,
    udp: bool,
}

fn loads() -> Vec<Load> {
    vec![
        Load {
            label: "tcp-rr 64 B, 1 conn",
            workload: Workload::TcpRr {
                connections: 1,
                size: 64,
                response_size: 64,
                pipeline: 1,
            },
            udp: false,
        },
        Load {
            label: "tcp-rr 64 B, 64 conns",
            workload: Workload::TcpRr {
                connections: 64,
                size: 64,
                response_size: 64,
                pipeline: 1,
            },
            udp: false,
        },
        Load {
            label: "tcp-stream, 1 conn",
            workload: Workload::TcpStream {
                connections: 1,
                size: 65536,
                direction: Direction::Both,
            },
            udp: false,
        },
        Load {
            label: "udp-rr 64 B, 32 flows",
            workload: Workload::UdpRr {
                flows: 32,
                size: 64,
            },
            udp: true,
        },
    ]
}

/// Rate (or bit rate) and latency columns of one row.
fn cells(s: &Summary) -> String {
    let rate = match s.plan.workload {
        Workload::TcpStream { .. } => {
            let (up, down) = s.bits();
            format!("{}bit/s", si(up + down))
        }
        _ => format!("{}/s", si(s.rate())),
    };
    let lat = s.latency().map_or_else(
        || format!("{:>9} {:>9} {:>9} {:>9}", "-", "-", "-", "-"),
        |l| {
            format!(
                "{:>9} {:>9} {:>9} {:>9}",
                dur(l.p50),
                dur(l.p90),
                dur(l.p99),
                dur(l.p99_9)
            )
        },
    );
    format!("{rate:>14} {lat}")
}

fn headline(s: &Summary) -> f64 {
    match s.plan.workload {
        Workload::TcpStream { .. } => {
            let (up, down) = s.bits();
            up + down
        }
        _ => s.rate(),
    }
}

pub fn run(args: &DemoArgs) -> u8 {
    match demo(args) {
        Ok(true) => exit::OK,
        Ok(false) => exit::FAILURE,
        Err(e) => {
            output::message(&format!("ringfwd demo: {e}"));
            exit::HOST
        }
    }
}

fn demo(args: &DemoArgs) -> Result<bool, String> {
    let echo = start(Overrides {
        echo: vec!["127.0.0.1:0".into()],
        echo_udp: vec!["127.0.0.1:0".into()],
        ..Default::default()
    })?;
    let echo_addr = bound(&echo, false).ok_or("echo upstream did not bind")?;
    let echo_udp = bound(&echo, true).ok_or("UDP echo upstream did not bind")?;
    let mut fwd = start(Overrides {
        tcp: vec![format!("127.0.0.1:0={echo_addr}")],
        udp: vec![format!("127.0.0.1:0={echo_udp}")],
        ..Default::default()
    })?;
    let fwd_addr = bound(&fwd, false).ok_or("forwarder did not bind")?;
    let fwd_udp = bound(&fwd, true).ok_or("UDP forwarder did not bind")?;
    let shards = host::available_cpus().len();
    say!("ringfwd demo: echo upstream and forwarder on loopback, {shards} shard(s) each");
    say!("  echo upstream  tcp {echo_addr}  udp {echo_udp}");
    say!("  forwarder      tcp {fwd_addr} -> {echo_addr}  udp {fwd_udp} -> {echo_udp}\n");

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
    say!(
        "streams:   {} concurrent connections, {} each way in {:.2}s ({:.2} Gbit/s echoed), half-closed by the client",
        args.streams,
        human_bytes(bytes),
        secs,
        bytes as f64 * 8.0 / secs.max(1e-9) / 1e9
    );
    if failures.is_empty() {
        say!("           every byte verified");
    } else {
        say!("           {} stream(s) FAILED:", failures.len());
        for f in failures.iter().take(5) {
            say!("             {f}");
        }
    }

    let mut ok = failures.is_empty();
    let duration = parse_duration(&args.duration)
        .map_err(|e| format!("--duration {:?}: {e}", args.duration))?;
    let warmup =
        parse_duration(&args.warmup).map_err(|e| format!("--warmup {:?}: {e}", args.warmup))?;
    // The generator gets one shard, on the last CPU (with the echo upstream);
    // the forwarder has a shard on every CPU.
    let gen_cpu = *host::available_cpus().last().unwrap_or(&0);
    say!(
        "\nloads: {} measured after {} warmup each, every response verified; generator on CPU {gen_cpu}",
        format_duration(duration),
        format_duration(warmup)
    );
    say!(
        "  {:<22} {:<8} {:>14} {:>9} {:>9} {:>9} {:>9} {:>8}",
        "load",
        "path",
        "rate",
        "p50",
        "p90",
        "p99",
        "p99.9",
        "vs direct"
    );
    for load in loads() {
        let mut direct_rate = None;
        for (path, target) in [
            ("direct", if load.udp { echo_udp } else { echo_addr }),
            ("ringfwd", if load.udp { fwd_udp } else { fwd_addr }),
        ] {
            let plan = BenchPlan {
                workload: load.workload.clone(),
                target,
                duration,
                warmup,
                rate: None,
                timeout: Duration::from_secs(2),
                cpus: vec![gen_cpu],
                json: None,
                progress: false,
                busy_poll: None,
            };
            let label = if path == "direct" { load.label } else { "" };
            match crate::bench::execute(&plan, false, "ringfwd demo".into()) {
                Ok(s) => {
                    let ratio = match direct_rate {
                        None => {
                            direct_rate = Some(headline(&s));
                            String::new()
                        }
                        Some(d) if d > 0.0 => format!("{:.2}x", headline(&s) / d),
                        Some(_) => "-".into(),
                    };
                    say!("  {label:<22} {path:<8} {} {ratio:>8}", cells(&s));
                    if let Some(f) = s.failure() {
                        ok = false;
                        say!("  {:<22} FAILED: {f}", "");
                    }
                }
                Err(e) => {
                    ok = false;
                    say!("  {label:<22} {path:<8} FAILED: {e}");
                }
            }
        }
    }

    // The load clients have closed; give the forwarder a moment to see their
    // FINs so the counters show every connection closed.
    let deadline = Instant::now() + Duration::from_secs(2);
    let mut stats = fwd.snapshot(Duration::from_secs(2));
    while stats.active > 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
        stats = fwd.snapshot(Duration::from_secs(2));
    }
    say!("\nforwarder counters: {}", stats.to_kv());
    let _ = fwd.shutdown();
    let _ = echo.shutdown();
    Ok(ok)
}
