//! `ringfwd demo`: the one-command showcase. Starts an echo upstream and a
//! forwarder on loopback (ports chosen by the kernel, TCP and UDP), pushes
//! concurrent verified streams through (random sizes and write splits,
//! half-close), then runs short `ringfwd bench` loads — tcp-rr on 1 and 64
//! connections, tcp-stream, udp-rr — direct and through ringfwd, interleaved
//! over a few rounds, and prints them side by side: each side's median and
//! range, latency percentiles, the ratio of the medians with its range, and
//! which loads were too noisy for their ratio to mean much.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use crate::bench::plan::{BenchPlan, Direction, Workload};
use crate::bench::report::{Summary, dur, si};
use crate::cli::DemoArgs;
use crate::config::units::{format_duration, parse_duration};
use crate::config::{HostFacts, Overrides, Plan};
use crate::runtime::{Runtime, exit};
use crate::stats::CloseReason;
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

/// Interleaved runs of each load on each path: one run can be disturbed by
/// other load on the host, and a lone ratio cannot show that.
const ROUNDS: u32 = 3;
/// A side whose min–max over its runs exceeds this share of its median is
/// flagged noisy.
const NOISY_SPREAD: f64 = 0.20;

/// Median and range of one side's samples.
#[derive(Clone, Copy, Debug, PartialEq)]
struct Spread {
    median: f64,
    min: f64,
    max: f64,
}

impl Spread {
    fn of(samples: &[f64]) -> Option<Spread> {
        let mut v: Vec<f64> = samples.iter().copied().filter(|x| x.is_finite()).collect();
        v.sort_by(f64::total_cmp);
        let (&min, &max) = (v.first()?, v.last()?);
        let mid = v.len() / 2;
        let median = if v.len() % 2 == 1 {
            *v.get(mid)?
        } else {
            (*v.get(mid - 1)? + *v.get(mid)?) / 2.0
        };
        Some(Spread { median, min, max })
    }

    /// min–max as a share of the median (infinite for a zero median).
    fn relative(&self) -> f64 {
        if self.median > 0.0 {
            (self.max - self.min) / self.median
        } else if self.max > self.min {
            f64::INFINITY
        } else {
            0.0
        }
    }
}

/// Which side of a comparison moved between its runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Moved {
    Baseline,
    Forwarded,
    Both,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Noise {
    Steady,
    Noisy(Moved),
}

/// One load, direct against through the forwarder, over its rounds.
#[derive(Clone, Copy, Debug, PartialEq)]
struct Comparison {
    direct: Spread,
    forwarded: Spread,
    /// Median forwarded over median direct; none for a zero baseline.
    ratio: Option<f64>,
    /// Lowest and highest ratio of one round's pair (run back to back, so
    /// they shared the host's conditions).
    ratio_range: Option<(f64, f64)>,
    noise: Noise,
}

/// Summarises rounds of (direct, forwarded) headline figures; `None`
/// without a round.
fn compare(rounds: &[(f64, f64)], noisy_spread: f64) -> Option<Comparison> {
    let direct = Spread::of(&rounds.iter().map(|r| r.0).collect::<Vec<_>>())?;
    let forwarded = Spread::of(&rounds.iter().map(|r| r.1).collect::<Vec<_>>())?;
    let ratio = (direct.median > 0.0).then(|| forwarded.median / direct.median);
    let paired: Vec<f64> = rounds
        .iter()
        .filter(|(d, _)| *d > 0.0)
        .map(|(d, f)| f / d)
        .collect();
    let ratio_range = Spread::of(&paired).map(|s| (s.min, s.max));
    let noise = match (
        direct.relative() > noisy_spread,
        forwarded.relative() > noisy_spread,
    ) {
        (false, false) => Noise::Steady,
        (true, false) => Noise::Noisy(Moved::Baseline),
        (false, true) => Noise::Noisy(Moved::Forwarded),
        (true, true) => Noise::Noisy(Moved::Both),
    };
    Some(Comparison {
        direct,
        forwarded,
        ratio,
        ratio_range,
        noise,
    })
}

/// The plain-words note under the table for a noisy load.
fn noise_note(label: &str, c: &Comparison, unit: &str) -> Option<String> {
    let Noise::Noisy(moved) = c.noise else {
        return None;
    };
    let side = |name: &str, s: &Spread| {
        let share = if s.relative().is_finite() {
            format!("{:.0}% of its median", s.relative() * 100.0)
        } else {
            "its median is 0".into()
        };
        format!(
            "{name} ranged {}{unit} to {}{unit} ({share})",
            si(s.min),
            si(s.max)
        )
    };
    let what = match moved {
        Moved::Baseline => side("the baseline", &c.direct),
        Moved::Forwarded => side("the forwarded runs", &c.forwarded),
        Moved::Both => format!(
            "{}, and {}",
            side("the baseline", &c.direct),
            side("the forwarded runs", &c.forwarded)
        ),
    };
    Some(format!(
        "  {label}: {what}; other load on this host moved it, so read its ratio as rough."
    ))
}

/// The bench runs of one load on one path, and what failed.
#[derive(Default)]
struct Runs {
    ok: Vec<Summary>,
    failures: Vec<String>,
}

/// The unit of a load's headline figure.
fn unit_of(w: &Workload) -> &'static str {
    match w {
        Workload::TcpStream { .. } => "bit/s",
        _ => "/s",
    }
}

fn latency_cells(s: Option<&Summary>) -> String {
    match s.and_then(Summary::latency) {
        Some(l) => format!(
            "{:>9} {:>9} {:>9} {:>9}",
            dur(l.p50),
            dur(l.p90),
            dur(l.p99),
            dur(l.p99_9)
        ),
        None => format!("{:>9} {:>9} {:>9} {:>9}", "-", "-", "-", "-"),
    }
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

/// The run whose figure is nearest the median: its latencies are shown.
fn median_run(runs: &[Summary], median: f64) -> Option<&Summary> {
    runs.iter().min_by(|a, b| {
        (headline(a) - median)
            .abs()
            .total_cmp(&(headline(b) - median).abs())
    })
}

/// Runs `plan` ROUNDS times against each of `targets`, interleaved and
/// alternating which goes first, so a disturbance of the host hits both
/// sides alike.
fn measure(plan: &BenchPlan, targets: [SocketAddr; 2]) -> [Runs; 2] {
    let mut runs: [Runs; 2] = Default::default();
    for round in 0..ROUNDS {
        let order = if round % 2 == 0 { [0, 1] } else { [1, 0] };
        for side in order {
            let (Some(&target), Some(out)) = (targets.get(side), runs.get_mut(side)) else {
                continue;
            };
            let plan = BenchPlan {
                target,
                ..plan.clone()
            };
            match crate::bench::execute(&plan, false, "ringfwd demo".into()) {
                Ok(s) => {
                    if let Some(f) = s.failure() {
                        out.failures.push(f);
                    }
                    out.ok.push(s);
                }
                Err(e) => out.failures.push(e),
            }
        }
    }
    runs
}

/// Prints one load's two rows (and its failures); returns its noise note
/// and whether every run passed.
fn show_load(load: &Load, runs: &[Runs; 2]) -> (Option<String>, bool) {
    let unit = unit_of(&load.workload);
    let [direct, forwarded] = runs;
    let rounds: Vec<(f64, f64)> = direct
        .ok
        .iter()
        .zip(&forwarded.ok)
        .map(|(d, f)| (headline(d), headline(f)))
        .collect();
    let cmp = compare(&rounds, NOISY_SPREAD);
    let mut passed = true;
    for (path, side) in [("direct", direct), ("ringfwd", forwarded)] {
        let label = if path == "direct" { load.label } else { "" };
        let spread = cmp.map(|c| {
            if path == "direct" {
                c.direct
            } else {
                c.forwarded
            }
        });
        let moved = match cmp.map(|c| c.noise) {
            Some(Noise::Noisy(Moved::Both)) => true,
            Some(Noise::Noisy(Moved::Baseline)) => path == "direct",
            Some(Noise::Noisy(Moved::Forwarded)) => path == "ringfwd",
            _ => false,
        };
        let (rate, range) = spread.map_or(("-".into(), "-".into()), |s| {
            (
                format!("{}{unit}", si(s.median)),
                format!(
                    "{}–{}",
                    si(s.min).replace(' ', ""),
                    si(s.max).replace(' ', "")
                ),
            )
        });
        let shown = spread.and_then(|s| median_run(&side.ok, s.median));
        let flag = if moved { "noisy" } else { "" };
        let ratio = match (path, cmp) {
            ("ringfwd", Some(c)) => {
                let r = c.ratio.map_or("-".into(), |r| format!("{r:.2}x"));
                let span = c
                    .ratio_range
                    .map_or("-".into(), |(lo, hi)| format!("{lo:.2}–{hi:.2}"));
                format!("{span:>11} {r:>7}")
            }
            _ => String::new(),
        };
        let row = format!(
            "  {label:<22} {path:<8} {rate:>14} {range:>17} {flag:<5} {} {ratio}",
            latency_cells(shown)
        );
        say!("{}", row.trim_end());
        for f in side.failures.iter().take(3) {
            passed = false;
            say!("  {:<22} FAILED: {f}", "");
        }
    }
    let note = cmp.and_then(|c| noise_note(load.label, &c, unit));
    (note, passed)
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

    let streams_ok = verified_streams(args, fwd_addr);
    let loads_ok = run_loads(
        args,
        Targets {
            tcp: [echo_addr, fwd_addr],
            udp: [echo_udp, fwd_udp],
        },
    )?;
    show_counters(&mut fwd);
    let _ = fwd.shutdown();
    let _ = echo.shutdown();
    Ok(streams_ok && loads_ok)
}

/// Pushes `--streams` concurrent verified streams through the forwarder;
/// true when every byte came back.
fn verified_streams(args: &DemoArgs, fwd_addr: SocketAddr) -> bool {
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
    failures.is_empty()
}

/// [direct, through the forwarder] addresses.
struct Targets {
    tcp: [SocketAddr; 2],
    udp: [SocketAddr; 2],
}

/// Runs every load on both paths and prints the table and its noise notes;
/// true when every run passed.
fn run_loads(args: &DemoArgs, targets: Targets) -> Result<bool, String> {
    let duration = parse_duration(&args.duration)
        .map_err(|e| format!("--duration {:?}: {e}", args.duration))?;
    let warmup =
        parse_duration(&args.warmup).map_err(|e| format!("--warmup {:?}: {e}", args.warmup))?;
    // The time of one load on one path is shared by its rounds, so the demo
    // takes about as long as with one run each.
    // Whole milliseconds: they print plainly and no run is shorter for it.
    let share = |d: Duration| Duration::from_millis((d / ROUNDS).as_millis() as u64);
    let (run_for, warm_for) = (share(duration).max(Duration::from_millis(1)), share(warmup));
    // The generator gets one shard, on the last CPU (with the echo upstream);
    // the forwarder has a shard on every CPU.
    let gen_cpu = *host::available_cpus().last().unwrap_or(&0);
    say!(
        "\nloads: {ROUNDS} interleaved runs per path (straight to the echo upstream, and through the forwarder), each {} measured after {} warmup; every response verified; generator on CPU {gen_cpu}",
        format_duration(run_for),
        format_duration(warm_for)
    );
    say!(
        "  {:<22} {:<8} {:>14} {:>17} {:<5} {:>9} {:>9} {:>9} {:>9} {:>11} {:>7}",
        "load",
        "path",
        "median",
        "min–max",
        "",
        "p50",
        "p90",
        "p99",
        "p99.9",
        "ratio range",
        "vs direct"
    );
    let mut ok = true;
    let mut notes = Vec::new();
    for load in loads() {
        let paths = if load.udp { targets.udp } else { targets.tcp };
        let [direct, _] = paths;
        let plan = BenchPlan {
            workload: load.workload.clone(),
            target: direct,
            duration: run_for,
            warmup: warm_for,
            rate: None,
            timeout: Duration::from_secs(2),
            cpus: vec![gen_cpu],
            json: None,
            progress: false,
            busy_poll: None,
            payload: None,
            percentiles: None,
            histogram_log: None,
        };
        let runs = measure(&plan, paths);
        let (note, passed) = show_load(&load, &runs);
        ok &= passed;
        notes.extend(note);
    }
    if notes.is_empty() {
        say!(
            "\nsteady: on every load each side's min–max over its {ROUNDS} runs is within {:.0}% of its median.",
            NOISY_SPREAD * 100.0
        );
    } else {
        say!(
            "\nnoisy: a side's min–max over its {ROUNDS} runs is more than {:.0}% of its median; the ratio of such a load is not a clean measurement of the forwarder:",
            NOISY_SPREAD * 100.0
        );
        for n in notes {
            say!("{n}");
        }
    }
    Ok(ok)
}

/// Prints the forwarder's counters once the load clients' connections are
/// closed; every client of the demo ends with a FIN, so a reset is named.
fn show_counters(fwd: &mut Runtime) {
    let deadline = Instant::now() + Duration::from_secs(2);
    let mut stats = fwd.snapshot(Duration::from_secs(2));
    while stats.get(crate::stats::Counter::Active) > 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
        stats = fwd.snapshot(Duration::from_secs(2));
    }
    say!("\nforwarder counters: {}", stats.to_kv());
    let resets = stats.closes_for(CloseReason::ClientReset);
    if resets > 0 {
        say!(
            "note: {resets} connection(s) were ended by a client reset; the demo's clients end with a FIN, so a stream was cut off at the end of its run"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spread_is_the_median_and_range_of_the_samples() {
        let s = Spread::of(&[12.0, 10.0, 11.0]).expect("samples");
        assert_eq!(
            s,
            Spread {
                median: 11.0,
                min: 10.0,
                max: 12.0
            }
        );
        assert!((s.relative() - 2.0 / 11.0).abs() < 1e-12);
        let even = Spread::of(&[4.0, 1.0, 3.0, 2.0]).expect("samples");
        assert_eq!(even.median, 2.5);
        assert_eq!(Spread::of(&[]), None);
        assert_eq!(Spread::of(&[0.0, 0.0]).map(|s| s.relative()), Some(0.0));
        assert_eq!(
            Spread::of(&[0.0, 0.0, 5.0]).map(|s| s.relative()),
            Some(f64::INFINITY)
        );
    }

    #[test]
    fn steady_rounds_give_the_ratio_of_medians_and_the_paired_range() {
        let c = compare(&[(100.0, 90.0), (104.0, 91.0), (98.0, 95.0)], 0.2).expect("rounds");
        assert_eq!(c.noise, Noise::Steady);
        assert_eq!(c.direct.median, 100.0);
        assert_eq!(c.forwarded.median, 91.0);
        assert!((c.ratio.expect("ratio") - 0.91).abs() < 1e-12);
        let (lo, hi) = c.ratio_range.expect("range");
        assert!((lo - 91.0 / 104.0).abs() < 1e-12, "{lo}");
        assert!((hi - 95.0 / 98.0).abs() < 1e-12, "{hi}");
        assert_eq!(noise_note("x", &c, "/s"), None);
    }

    #[test]
    fn a_disturbed_baseline_is_flagged_and_named_in_plain_words() {
        // The reported case: the direct run was disturbed in one round and the
        // lone ratio read 5.48x.
        let c = compare(
            &[
                (10_000.0, 54_800.0),
                (60_000.0, 55_000.0),
                (59_000.0, 54_000.0),
            ],
            0.2,
        )
        .expect("rounds");
        assert_eq!(c.noise, Noise::Noisy(Moved::Baseline));
        // The median is robust to the one disturbed round.
        assert!((c.ratio.expect("ratio") - 54_800.0 / 59_000.0).abs() < 1e-12);
        let note = noise_note("tcp-rr 64 B, 1 conn", &c, "/s").expect("a note");
        assert!(
            note.contains("the baseline ranged 10.0 k/s to 60.0 k/s"),
            "{note}"
        );
        assert!(note.contains("85% of its median"), "{note}");
        assert!(note.contains("other load on this host"), "{note}");
        let zero = compare(&[(0.0, 5.0), (0.0, 5.0), (9.0, 5.0)], 0.2).expect("rounds");
        let note = noise_note("z", &zero, "/s").expect("a note");
        assert!(note.contains("(its median is 0)"), "{note}");
    }

    #[test]
    fn the_threshold_decides_which_side_is_noisy() {
        // Direct spread 20/100 = exactly the threshold: not over it.
        let rounds = [(90.0, 50.0), (100.0, 80.0), (110.0, 100.0)];
        assert_eq!(
            compare(&rounds, 0.2).map(|c| c.noise),
            Some(Noise::Noisy(Moved::Forwarded))
        );
        assert_eq!(
            compare(&rounds, 0.1).map(|c| c.noise),
            Some(Noise::Noisy(Moved::Both))
        );
        assert_eq!(compare(&rounds, 1.0).map(|c| c.noise), Some(Noise::Steady));
        assert_eq!(compare(&[], 0.2), None);
    }

    #[test]
    fn a_zero_baseline_gives_no_ratio() {
        let c = compare(&[(0.0, 5.0), (0.0, 5.0)], 0.2).expect("rounds");
        assert_eq!(c.ratio, None);
        assert_eq!(c.ratio_range, None);
    }
}
