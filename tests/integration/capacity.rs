//! `ringfwd bench --capacity` against a target whose capacity the test
//! controls: a TCP echo that serves the requests of all its connections one
//! at a time, each taking a fixed service time, so it completes at most
//! 1/service requests per second however many are offered.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::harness::{run_to_end, temp_path};

/// Request (and echoed response) size of these tests.
const SIZE: usize = 64;

/// What the serial server did: requests served and nanoseconds spent
/// serving them (holding the lock), to know its real capacity.
#[derive(Default)]
struct Served {
    count: AtomicU64,
    busy_ns: AtomicU64,
}

impl Served {
    /// Requests per second the server can complete: 1 / mean service time.
    fn capacity(&self) -> f64 {
        let n = self.count.load(Ordering::Relaxed) as f64;
        n / (self.busy_ns.load(Ordering::Relaxed) as f64 / 1e9)
    }
}

/// An echo that serves one request at a time over all its connections
/// through one global lock, each request taking `service`.
fn serial_server(service: Duration) -> (SocketAddr, Arc<Served>) {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = l.local_addr().expect("addr");
    let served = Arc::new(Served::default());
    let lock = Arc::new(Mutex::new(()));
    let counts = served.clone();
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(s) = s else { continue };
            let (lock, counts) = (lock.clone(), counts.clone());
            std::thread::spawn(move || serve(s, &lock, &counts, service));
        }
    });
    (addr, served)
}

fn serve(mut s: TcpStream, lock: &Mutex<()>, served: &Served, service: Duration) {
    let _ = s.set_nodelay(true);
    let mut buf = [0u8; SIZE];
    loop {
        if s.read_exact(&mut buf).is_err() {
            return;
        }
        {
            let _one_at_a_time = lock.lock().unwrap_or_else(|p| p.into_inner());
            let start = Instant::now();
            // The service time models the server's work: sleep most of it
            // and spin the rest, as a sleep alone overshoots by the
            // scheduler's wake-up latency.
            std::thread::sleep(service.saturating_sub(Duration::from_micros(300)));
            while start.elapsed() < service {
                std::hint::spin_loop();
            }
            served.count.fetch_add(1, Ordering::Relaxed);
            served
                .busy_ns
                .fetch_add(start.elapsed().as_nanos() as u64, Ordering::Relaxed);
        }
        if s.write_all(&buf).is_err() {
            return;
        }
    }
}

/// Runs `ringfwd bench tcp-rr --capacity` against `target` with short
/// steps; returns (exit code, stdout, JSON, chart path).
fn capacity(target: SocketAddr, extra: &[&str]) -> (Option<i32>, String, Value, String) {
    let json = temp_path("capacity.json");
    let json = json.to_str().expect("path").to_string();
    let chart = temp_path("capacity.svg");
    let chart = chart.to_str().expect("path").to_string();
    let target = target.to_string();
    let mut args = vec![
        "bench",
        "tcp-rr",
        "--target",
        &target,
        "--connections",
        "10",
        "--shards",
        "1",
        "--capacity",
        "--step-duration",
        "1s",
        "--warmup",
        "500ms",
        "--quiet",
        "--json",
        &json,
        "--chart",
        &chart,
    ];
    args.extend_from_slice(extra);
    let (code, out, err) = run_to_end(&args);
    let text = std::fs::read_to_string(&json)
        .unwrap_or_else(|e| panic!("no JSON ({e}); stdout {out} stderr {err}"));
    let v: Value = serde_json::from_str(&text).expect("valid JSON");
    (code, out, v, chart)
}

fn steps(v: &Value) -> &Vec<Value> {
    v["capacity"]["steps"].as_array().expect("capacity.steps")
}

#[test]
fn the_capacity_search_finds_a_serial_servers_capacity_within_15_percent() {
    // 2ms per request, one at a time: about 500 requests/s.
    let (target, served) = serial_server(Duration::from_millis(2));
    // The objective is generous next to the 2ms service time, so that only
    // the backlog of an overloaded server breaks it (at 5% overload the
    // backlog adds 50ms per second), not the host's scheduling noise.
    let (code, out, v, chart) = capacity(
        target,
        &[
            "--slo",
            "p99=40ms",
            "--start-rate",
            "100",
            "--max-rate",
            "4000",
        ],
    );
    assert_eq!(code, Some(0), "{out}");
    let truth = served.capacity();
    let found = v["capacity"]["rate"].as_f64().expect("capacity.rate");
    eprintln!("serial server: true capacity {truth:.0}/s, found {found:.0}/s\n{out}");
    assert!(
        (found - truth).abs() <= 0.15 * truth,
        "found {found:.0}/s, the server's capacity is {truth:.0}/s:\n{out}"
    );
    assert_eq!(v["capacity"]["outcome"], "found", "{v:#}");
    assert!(
        out.contains(&format!("capacity: {found:.0}/s at p99 ≤ 40ms")),
        "{out}"
    );
    let steps = steps(&v);
    // Growth from 100/s: 100, 200, 400 held, 800 broke (and again on its
    // retry), then bisection. A retry repeats its rate (a loaded host can
    // break a step that then holds on its retry), so count each rate once.
    let mut offered: Vec<f64> = steps
        .iter()
        .map(|s| s["offered"].as_f64().unwrap_or(0.0))
        .collect();
    offered.dedup();
    assert_eq!(&offered[..4], &[100.0, 200.0, 400.0, 800.0], "{out}");
    for s in steps {
        for key in ["offered", "achieved", "p50_us", "p99_us", "p99_9_us"] {
            assert!(s[key].as_f64().is_some(), "{key} in {s:#}");
        }
        let held = s["held"].as_bool().expect("held");
        // A held step is one the server kept up with.
        if held {
            assert!(s["offered"].as_f64() <= Some(found), "{s:#}");
        }
    }
    let first_800 = steps
        .iter()
        .position(|s| s["offered"].as_f64() == Some(800.0))
        .expect("a step at 800/s");
    assert_eq!(
        steps[first_800]["held"], false,
        "800/s is past the capacity: {out}"
    );
    let retry = &steps[first_800 + 1];
    assert_eq!(
        (retry["offered"].as_f64(), &retry["attempt"], &retry["held"]),
        (Some(800.0), &Value::from("retry"), &Value::Bool(false)),
        "{out}"
    );
    assert!(
        out.contains("no again: p99"),
        "the retry's row says so: {out}"
    );
    let best_held = steps
        .iter()
        .filter(|s| s["held"] == true)
        .filter_map(|s| s["offered"].as_f64())
        .fold(0.0, f64::max);
    assert_eq!(
        best_held, found,
        "capacity.rate is the highest rate that held"
    );
    let svg = std::fs::read_to_string(&chart).expect("the chart was written");
    assert!(
        svg.starts_with("<svg") && svg.contains("offered rate"),
        "{svg}"
    );
}

#[test]
fn a_held_max_rate_and_a_broken_start_rate_are_said_so() {
    let (target, _) = serial_server(Duration::from_millis(2));
    let (code, out, v, _) = capacity(
        target,
        &[
            "--slo",
            "p99=40ms",
            "--start-rate",
            "100",
            "--max-rate",
            "200",
        ],
    );
    assert_eq!(code, Some(0), "{out}");
    assert_eq!(v["capacity"]["outcome"], "at_least_max", "{v:#}");
    assert_eq!(v["capacity"]["rate"].as_f64(), Some(200.0), "{v:#}");
    assert_eq!(steps(&v).len(), 2, "{out}");
    assert!(out.contains("capacity: ≥ 200/s at p99 ≤ 40ms"), "{out}");

    let (code, out, v, _) = capacity(
        target,
        &[
            "--slo",
            "p99=40ms",
            "--start-rate",
            "2000",
            "--max-rate",
            "8000",
        ],
    );
    assert_eq!(code, Some(0), "{out}");
    assert_eq!(v["capacity"]["outcome"], "below_start", "{v:#}");
    assert_eq!(v["capacity"]["rate"], Value::Null, "{v:#}");
    // The first run's break, and its retry's.
    assert_eq!(steps(&v).len(), 2, "{out}");
    assert_eq!(steps(&v)[1]["attempt"], "retry", "{out}");
    assert!(out.contains("capacity: none at p99 ≤ 40ms"), "{out}");
}

#[test]
fn bad_capacity_flags_are_named() {
    let t = ["tcp-rr", "--target", "127.0.0.1:1", "--capacity"];
    for (extra, needle) in [
        (vec![], "--slo"),
        (vec!["--slo", "p100=1ms"], "p100"),
        (vec!["--slo", "p99"], "--slo"),
        (vec!["--slo", "p99=0ms"], "--slo"),
        (
            vec!["--slo", "p99=1ms", "--slo", "p99=2ms"],
            "p99 is given twice",
        ),
        (
            vec!["--slo", "p99=1ms", "--max-errors", "150%"],
            "--max-errors",
        ),
        (
            vec![
                "--slo",
                "p99=1ms",
                "--start-rate",
                "100",
                "--max-rate",
                "10",
            ],
            "--max-rate",
        ),
        (
            vec!["--slo", "p99=1ms", "--step-duration", "10ms"],
            "--step-duration",
        ),
        (vec!["--slo", "p99=1ms", "--rate", "100"], "--rate"),
        (vec!["--slo", "p99=1ms", "--duration", "1s"], "--duration"),
    ] {
        let mut all = vec!["bench"];
        all.extend(t.iter());
        all.extend(extra.iter());
        let (code, _, err) = run_to_end(&all);
        assert_eq!(code, Some(2), "{extra:?}: {err}");
        assert!(err.contains(needle), "{extra:?}: {err}");
    }
    // --capacity is for request/response loads only.
    let (code, _, err) = run_to_end(&[
        "bench",
        "tcp-stream",
        "--target",
        "127.0.0.1:1",
        "--capacity",
    ]);
    assert_eq!(code, Some(2), "{err}");
    // --slo without --capacity.
    let (code, _, err) = run_to_end(&[
        "bench",
        "udp-rr",
        "--target",
        "127.0.0.1:1",
        "--slo",
        "p99=1ms",
    ]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("--capacity"), "{err}");
}
