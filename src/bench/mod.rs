//! `ringfwd bench`: the load generator. The control thread validates the
//! plan, spreads connections or flows over pinned generator shards (each its
//! own io_uring, buffers and sockets, sharing nothing), starts them on one
//! common clock, shows live progress, merges their HDR histograms and
//! counters, and prints the table and `--json`.

pub(crate) mod capacity;
pub(crate) mod chart;
pub mod hdr_out;
pub(crate) mod payload;
pub(crate) mod plan;
pub(crate) mod record;
pub(crate) mod report;
pub mod shard;

use std::io::{IsTerminal, Write};
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime};

use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressStyle};

use crate::cli::BenchArgs;
use crate::runtime::exit;
use crate::sys::{host, output};
use plan::BenchPlan;
use record::{Record, new_histogram};
use report::{CapacityReport, Summary, dur, si};
use shard::{Report, ShardSetup};

/// How long shards may take to set up (rings, buffers, sockets).
const READY_TIMEOUT: Duration = Duration::from_secs(10);

/// `ringfwd bench ...`: returns the process exit code.
pub fn run(args: &BenchArgs) -> u8 {
    let plan = match BenchPlan::resolve(args, &host::available_cpus()) {
        Ok(p) => p,
        Err(e) => {
            output::message(&format!("ringfwd bench: {e}"));
            return exit::CONFIG;
        }
    };
    if let Err(e) = host::check_io_uring() {
        output::message(&format!("ringfwd bench: {e}"));
        return exit::HOST;
    }
    let command = std::env::args().collect::<Vec<_>>().join(" ");
    let progress = plan.progress && std::io::stderr().is_terminal();
    match plan::capacity_settings(args) {
        Ok(None) => {}
        Ok(Some(settings)) => return run_capacity(&plan, &settings, progress, command),
        Err(e) => {
            output::message(&format!("ringfwd bench: {e}"));
            return exit::CONFIG;
        }
    }
    let summary = match execute(&plan, progress, command) {
        Ok(s) => s,
        Err(e) => {
            output::message(&format!("ringfwd bench: {e}"));
            return exit::FAILURE;
        }
    };
    if plan.json.as_deref() != Some("-") {
        // A closed or full stdout loses the table, never panics.
        let _ = write!(std::io::stdout(), "{}", summary.table());
    }
    if let Some(path) = &plan.json
        && let Err(e) = write_json(path, &summary.to_json())
    {
        output::message(&format!("ringfwd bench: {e}"));
        return exit::FAILURE;
    }
    if let Err(e) = write_histograms(&plan, &summary) {
        output::message(&format!("ringfwd bench: {e}"));
        return exit::FAILURE;
    }
    if let Some(f) = summary.failure() {
        output::message(&format!("ringfwd bench: run FAILED: {f}"));
        return exit::FAILURE;
    }
    exit::OK
}

/// `--percentiles` and `--histogram-log`: the merged latency histogram in
/// HdrHistogram's formats (written for a failed run too: its latencies are
/// what there is to look at).
fn write_histograms(plan: &BenchPlan, summary: &Summary) -> Result<(), String> {
    let h = &summary.record.latency;
    if let Some(path) = &plan.percentiles {
        std::fs::write(path, hdr_out::percentile_text(h))
            .map_err(|e| format!("cannot write --percentiles {path}: {e}"))?;
    }
    if let Some(path) = &plan.histogram_log {
        let log = hdr_out::interval_log(h, summary.measured_from, plan.duration, &plan.describe())?;
        std::fs::write(path, log)
            .map_err(|e| format!("cannot write --histogram-log {path}: {e}"))?;
    }
    Ok(())
}

/// `--capacity`: one open-loop run per step, at the rate the search asks
/// for, each with its own warmup; rows print as steps finish.
fn run_capacity(
    plan: &BenchPlan,
    settings: &capacity::Settings,
    progress: bool,
    command: String,
) -> u8 {
    // With `--json -` stdout carries the document, so the table goes to stderr.
    let mut human: Box<dyn Write> = if plan.json.as_deref() == Some("-") {
        Box::new(std::io::stderr())
    } else {
        Box::new(std::io::stdout())
    };
    // A closed or full stdout loses the table, never panics.
    let _ = write!(human, "{}", CapacityReport::header(plan, settings));
    let _ = human.flush();
    let mut search = capacity::Search::new(settings);
    let outcome = loop {
        let rate = match search.next() {
            capacity::Next::Run(rate) => rate,
            capacity::Next::Done(outcome) => break outcome,
        };
        let step_plan = BenchPlan {
            rate: Some(rate),
            duration: settings.step_duration,
            json: None,
            ..plan.clone()
        };
        let summary = match execute(&step_plan, progress, command.clone()) {
            Ok(s) => s,
            Err(e) => {
                output::message(&format!("ringfwd bench: step at {rate:.0}/s: {e}"));
                return exit::FAILURE;
            }
        };
        // Corrupted data, or a target that answers nothing even at the
        // first rate, is a failed run, not a capacity of zero.
        let first = search.steps().is_empty();
        if let Some(f) = summary.failure()
            && (summary.record.errors.verify > 0 || first)
        {
            output::message(&format!(
                "ringfwd bench: run FAILED at the step at {rate:.0}/s: {f}"
            ));
            return exit::FAILURE;
        }
        search.record(capacity::Step::judge(
            report::measured(&summary, settings),
            settings,
        ));
        // The search marks a retry when it records the step, so the row follows.
        if let Some(step) = search.steps().last() {
            let _ = writeln!(human, "{}", CapacityReport::row(search.steps().len(), step));
            let _ = human.flush();
        }
    };
    let report = CapacityReport {
        plan: plan.clone(),
        settings: settings.clone(),
        steps: search.steps().to_vec(),
        outcome,
        command,
    };
    let _ = writeln!(human, "\n{}", report.result_line());
    let _ = human.flush();
    write_capacity_files(&report)
}

/// Writes a `--json` document to `path` (`-`: stdout).
fn write_json(path: &str, doc: &serde_json::Value) -> Result<(), String> {
    let text = serde_json::to_string_pretty(doc)
        .map_err(|e| format!("encoding the JSON report failed: {e}"))?;
    let written = if path == "-" {
        writeln!(std::io::stdout(), "{text}")
    } else {
        std::fs::write(path, text + "\n")
    };
    written.map_err(|e| format!("cannot write --json {path}: {e}"))
}

/// The `--json` document and the chart of a capacity search.
fn write_capacity_files(report: &CapacityReport) -> u8 {
    if let Some(path) = &report.plan.json
        && let Err(e) = write_json(path, &report.to_json())
    {
        output::message(&format!("ringfwd bench: {e}"));
        return exit::FAILURE;
    }
    if let Some(path) = &report.settings.chart {
        let p = &report.plan;
        let title = format!(
            "ringfwd bench {} {}, {} {}: latency against offered rate",
            p.workload.name(),
            p.target,
            p.workload.conns(),
            if p.workload.is_udp() {
                "flows"
            } else {
                "connections"
            },
        );
        let svg = match chart::svg(&title, &report.settings, &report.steps, &report.outcome) {
            Ok(svg) => svg,
            Err(e) => {
                output::message(&format!("ringfwd bench: --chart {path}: {e}"));
                return exit::FAILURE;
            }
        };
        if let Err(e) = std::fs::write(path, svg) {
            output::message(&format!("ringfwd bench: cannot write --chart {path}: {e}"));
            return exit::FAILURE;
        }
    }
    exit::OK
}

/// Runs `plan` to the end and merges what every shard measured.
pub fn execute(plan: &BenchPlan, progress: bool, command: String) -> Result<Summary, String> {
    let shards = plan.shards();
    let Spawned { rx, gos, threads } = spawn_shards(plan)?;
    let abort = |gos: &[mpsc::Sender<Option<Instant>>]| {
        for g in gos {
            let _ = g.send(None);
        }
    };
    let mut ready = 0;
    let deadline = Instant::now() + READY_TIMEOUT;
    while ready < shards {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(Report::Ready { .. }) => ready += 1,
            Ok(Report::Failed { shard, error }) => {
                abort(&gos);
                join(threads);
                return Err(format!(
                    "generator shard {shard} (CPU {}): {error}",
                    plan.cpus[shard]
                ));
            }
            Ok(_) => {}
            Err(_) => {
                abort(&gos);
                return Err(format!(
                    "generator shards did not finish setting up within {READY_TIMEOUT:?}"
                ));
            }
        }
    }
    let start = Instant::now();
    let measured_from = SystemTime::now() + plan.warmup;
    for g in &gos {
        let _ = g.send(Some(start));
    }
    let bar = progress.then(|| {
        let b = ProgressBar::new_spinner();
        b.set_style(
            ProgressStyle::with_template("{spinner} {msg}")
                .unwrap_or_else(|_| ProgressStyle::default_spinner()),
        );
        b.enable_steady_tick(Duration::from_millis(200));
        b
    });
    let mut live = Live::new(shards, plan, start);
    let mut merged = Record::default();
    let mut clean = true;
    let mut done = 0;
    let mut failure = None;
    // The run ends by itself: the bound here only guards against a shard
    // that never reports (it would be a bug), so the command cannot hang.
    let hard_stop = plan.warmup + plan.duration + Duration::from_secs(30);
    while done < shards {
        let left = (start + hard_stop).saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(Report::Progress {
                shard,
                measuring,
                ops,
                errors,
                interval,
                ..
            }) => {
                if let Some(msg) = live.update(shard, measuring, ops, errors, &interval)
                    && let Some(b) = &bar
                {
                    b.set_message(msg);
                }
            }
            Ok(Report::Done {
                record, clean: c, ..
            }) => {
                merged.merge(&record);
                clean &= c;
                done += 1;
            }
            Ok(Report::Failed { shard, error }) => {
                failure = Some(format!("generator shard {shard}: {error}"));
                done += 1;
            }
            Ok(Report::Ready { .. }) => {}
            Err(_) => {
                failure = Some("a generator shard did not finish in time".into());
                break;
            }
        }
    }
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    if let Some(f) = failure {
        return Err(f);
    }
    join(threads);
    Ok(Summary {
        plan: plan.clone(),
        record: merged,
        clean,
        command,
        measured_from,
    })
}

/// The generator shards of a run, started and waiting for the common start.
struct Spawned {
    rx: mpsc::Receiver<Report>,
    /// Each shard's start signal: the common epoch, or `None` to abort.
    gos: Vec<mpsc::Sender<Option<Instant>>>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

/// Spreads the connections or flows over one pinned shard per CPU of `plan`.
fn spawn_shards(plan: &BenchPlan) -> Result<Spawned, String> {
    let shards = plan.shards();
    let total = plan.workload.conns();
    let (tx, rx) = mpsc::channel();
    let mut gos = Vec::new();
    let mut threads = Vec::new();
    for (index, &cpu) in plan.cpus.iter().enumerate() {
        let conns: Vec<u32> = (0..total)
            .filter(|c| *c as usize % shards == index)
            .collect();
        let setup = ShardSetup {
            index,
            cpu,
            plan: plan.clone(),
            conns,
            total_conns: total,
        };
        let (go_tx, go_rx) = mpsc::channel();
        gos.push(go_tx);
        let reports = tx.clone();
        let t = std::thread::Builder::new()
            .name(format!("bench-{index}"))
            .spawn(move || shard::run(setup, reports, go_rx))
            .map_err(|e| format!("cannot start generator shard {index}: {e}"))?;
        threads.push(t);
    }
    drop(tx);
    Ok(Spawned { rx, gos, threads })
}

fn join(threads: Vec<std::thread::JoinHandle<()>>) {
    for t in threads {
        let _ = t.join();
    }
}

/// The live progress line: current rate and p99 over the last snapshots.
struct Live {
    ops: Vec<u64>,
    errors: Vec<u64>,
    window: Histogram<u64>,
    last_ops: u64,
    last_at: Instant,
    start: Instant,
    warmup: Duration,
    duration: Duration,
    reports: usize,
    shards: usize,
    measuring: bool,
}

impl Live {
    fn new(shards: usize, plan: &BenchPlan, start: Instant) -> Live {
        Live {
            ops: vec![0; shards],
            errors: vec![0; shards],
            window: new_histogram(),
            last_ops: 0,
            last_at: start,
            start,
            warmup: plan.warmup,
            duration: plan.duration,
            reports: 0,
            shards,
            measuring: false,
        }
    }

    /// Takes one shard's snapshot; returns a new line once every shard reported.
    fn update(
        &mut self,
        shard: usize,
        measuring: bool,
        ops: u64,
        errors: u64,
        interval: &Histogram<u64>,
    ) -> Option<String> {
        if let (Some(o), Some(e)) = (self.ops.get_mut(shard), self.errors.get_mut(shard)) {
            *o = ops;
            *e = errors;
        }
        let _ = self.window.add(interval);
        self.reports += 1;
        if self.reports < self.shards {
            return None;
        }
        self.reports = 0;
        let now = Instant::now();
        let total: u64 = self.ops.iter().sum();
        if measuring && !self.measuring {
            // Counters restarted at the end of the warmup.
            self.measuring = true;
            self.last_ops = 0;
            self.last_at = self.start + self.warmup;
        }
        let secs = now.duration_since(self.last_at).as_secs_f64().max(1e-3);
        let rate = total.saturating_sub(self.last_ops) as f64 / secs;
        self.last_ops = total;
        self.last_at = now;
        let p99 = if self.window.is_empty() {
            "-".to_string()
        } else {
            dur(self.window.value_at_quantile(0.99) as f64 / 1000.0)
        };
        self.window.reset();
        let t = now.duration_since(self.start);
        let errors: u64 = self.errors.iter().sum();
        Some(if measuring {
            format!(
                "measuring {:.1}/{:.1}s  {}/s  p99 {p99}  errors {errors}",
                t.saturating_sub(self.warmup).as_secs_f64(),
                self.duration.as_secs_f64(),
                si(rate),
            )
        } else {
            format!(
                "warming up {:.1}/{:.1}s",
                t.as_secs_f64(),
                self.warmup.as_secs_f64()
            )
        })
    }
}
