//! The result of a bench run, and how it is shown: the end-of-run table and
//! the `--json` document with every figure and the exact settings.

use serde_json::{Value, json};

use super::capacity;
use super::plan::{BenchPlan, Workload};
use super::record::Record;

/// A finished run: the plan and every shard's record merged.
#[derive(Clone, Debug)]
pub struct Summary {
    pub plan: BenchPlan,
    pub record: Record,
    /// Whether every shard got all its operations back from the kernel.
    pub clean: bool,
    /// The command line, for the JSON document.
    pub command: String,
    /// Wall-clock start of the measured window (for `--histogram-log`).
    pub measured_from: std::time::SystemTime,
}

/// Latency figures in microseconds.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Latency {
    pub count: u64,
    pub min: f64,
    pub mean: f64,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p99_9: f64,
    pub p99_99: f64,
    pub max: f64,
}

fn us(ns: u64) -> f64 {
    ns as f64 / 1000.0
}

impl Summary {
    pub fn seconds(&self) -> f64 {
        self.plan.duration.as_secs_f64()
    }

    /// Completed operations: for udp-stream the datagrams sent in the
    /// window that were answered (so delivered never exceeds offered).
    pub fn ops(&self) -> u64 {
        match self.plan.workload {
            Workload::UdpStream { .. } => self.record.udp.received,
            _ => self.record.ops,
        }
    }

    /// Completed operations per second.
    pub fn rate(&self) -> f64 {
        self.ops() as f64 / self.seconds()
    }

    /// What was offered: datagrams sent per second (udp-stream), the --rate
    /// target (open loop), else the achieved rate.
    pub fn offered_rate(&self) -> f64 {
        match (&self.plan.workload, self.plan.rate) {
            (Workload::UdpStream { .. }, _) => self.record.udp.sent as f64 / self.seconds(),
            (_, Some(r)) => r,
            _ => self.rate(),
        }
    }

    /// Bits per second (up, down).
    pub fn bits(&self) -> (f64, f64) {
        let s = self.seconds();
        (
            self.record.bytes_sent as f64 * 8.0 / s,
            self.record.bytes_received as f64 * 8.0 / s,
        )
    }

    pub fn latency(&self) -> Option<Latency> {
        let h = &self.record.latency;
        if matches!(self.plan.workload, Workload::TcpStream { .. }) || h.is_empty() {
            return None;
        }
        Some(Latency {
            count: h.len(),
            min: us(h.min()),
            mean: h.mean() / 1000.0,
            p50: us(h.value_at_quantile(0.50)),
            p90: us(h.value_at_quantile(0.90)),
            p99: us(h.value_at_quantile(0.99)),
            p99_9: us(h.value_at_quantile(0.999)),
            p99_99: us(h.value_at_quantile(0.9999)),
            max: us(h.max()),
        })
    }

    pub fn lost(&self) -> u64 {
        self.record
            .udp
            .sent
            .saturating_sub(self.record.udp.received)
    }

    /// Why the run is not ok, if it is not: a verification failure (the
    /// target corrupted data), or nothing completed at all.
    pub fn failure(&self) -> Option<String> {
        let r = &self.record;
        if r.errors.verify > 0 {
            return Some(format!(
                "{} responses failed verification: {}",
                r.errors.verify,
                r.first_error.as_deref().unwrap_or("?")
            ));
        }
        let moved = match self.plan.workload {
            Workload::TcpStream { .. } => r.bytes_sent + r.bytes_received,
            _ => r.ops,
        };
        if moved == 0 {
            return Some(format!(
                "nothing completed in the measured window{}",
                r.first_error
                    .as_deref()
                    .map(|e| format!(" (first error: {e})"))
                    .unwrap_or_default()
            ));
        }
        None
    }

    pub fn ok(&self) -> bool {
        self.failure().is_none()
    }

    pub fn to_json(&self) -> Value {
        let p = &self.plan;
        let w = &p.workload;
        let (conns, flows) = if w.is_udp() {
            (0, w.conns())
        } else {
            (w.conns(), 0)
        };
        let (pipeline, direction, window) = match *w {
            Workload::TcpRr { pipeline, .. } => (pipeline, None, None),
            Workload::TcpStream { direction, .. } => (1, Some(direction.name()), None),
            Workload::UdpStream { window, .. } => (1, None, Some(window)),
            _ => (1, None, None),
        };
        let (up, down) = self.bits();
        let e = &self.record.errors;
        let u = &self.record.udp;
        json!({
            "version": 1,
            "mode": w.name(),
            "target": p.target.to_string(),
            "command": self.command,
            "settings": {
                "connections": conns,
                "flows": flows,
                "size": w.size(),
                "response_size": w.response_size(),
                "pipeline": pipeline,
                "direction": direction,
                "window": window,
                "duration_s": p.duration.as_secs_f64(),
                "warmup_s": p.warmup.as_secs_f64(),
                "timeout_s": p.timeout.as_secs_f64(),
                "rate": p.rate,
                "shards": p.shards(),
                "cpus": p.cpus,
                "busy_poll_us": p.busy_poll.map(|d| d.as_secs_f64() * 1e6),
                "payload": p.payload.as_ref().map(|x| p.payload_text(x)),
            },
            "elapsed_s": self.seconds(),
            "ops": self.ops(),
            "rate": self.rate(),
            "offered_rate": self.offered_rate(),
            "bytes_sent": self.record.bytes_sent,
            "bytes_received": self.record.bytes_received,
            "bits_per_second": {"up": up, "down": down, "total": up + down},
            "latency_us": self.latency().map(|l| json!({
                "count": l.count, "min": l.min, "mean": l.mean, "p50": l.p50, "p90": l.p90,
                "p99": l.p99, "p99_9": l.p99_9, "p99_99": l.p99_99, "max": l.max,
            })),
            "udp": w.is_udp().then(|| json!({
                "sent": u.sent,
                "received": u.received,
                "lost": self.lost(),
                "late": u.late,
                "loss_ratio": if u.sent == 0 { 0.0 } else { self.lost() as f64 / u.sent as f64 },
            })),
            "errors": {
                "refused": e.refused, "reset": e.reset, "timeout": e.timeout,
                "verify": e.verify, "other": e.other,
            },
            "first_error": self.record.first_error,
            "clean_exit": self.clean,
            "ok": self.ok(),
            "failure": self.failure(),
        })
    }

    /// The end-of-run table.
    pub fn table(&self) -> String {
        let mut out = format!("ringfwd bench {}\n\n", self.plan.describe());
        let what = match self.plan.workload {
            Workload::TcpRr { .. } => "requests",
            Workload::TcpCrr { .. } => "connections",
            Workload::TcpStream { .. } => "",
            Workload::UdpRr { .. } => "answers",
            Workload::UdpStream { .. } => "delivered",
        };
        if !what.is_empty() {
            out.push_str(&format!(
                "  {what:<12}  {} in {:.2} s = {}/s\n",
                group(self.ops()),
                self.seconds(),
                si(self.rate())
            ));
        }
        if matches!(self.plan.workload, Workload::UdpStream { .. }) || self.plan.rate.is_some() {
            out.push_str(&format!(
                "  {:<12}  {}/s\n",
                "offered",
                si(self.offered_rate())
            ));
        }
        let (up, down) = self.bits();
        out.push_str(&format!(
            "  {:<12}  up {}bit/s  down {}bit/s\n",
            "throughput",
            si(up),
            si(down)
        ));
        if let Some(l) = self.latency() {
            out.push_str(&format!(
                "  {:<12}  min {}  p50 {}  p90 {}  p99 {}  p99.9 {}  p99.99 {}  max {}  (mean {}, {} samples)\n",
                "latency",
                dur(l.min),
                dur(l.p50),
                dur(l.p90),
                dur(l.p99),
                dur(l.p99_9),
                dur(l.p99_99),
                dur(l.max),
                dur(l.mean),
                group(l.count)
            ));
        }
        if self.plan.workload.is_udp() {
            let u = &self.record.udp;
            let ratio = if u.sent == 0 {
                0.0
            } else {
                self.lost() as f64 * 100.0 / u.sent as f64
            };
            out.push_str(&format!(
                "  {:<12}  sent {}  answered {}  lost {} ({ratio:.3}%)  late {}\n",
                "datagrams",
                group(u.sent),
                group(u.received),
                group(self.lost()),
                group(u.late)
            ));
        }
        let e = &self.record.errors;
        if e.total() == 0 {
            out.push_str(&format!("  {:<12}  none\n", "errors"));
        } else {
            out.push_str(&format!(
                "  {:<12}  refused {}  reset {}  timeout {}  verify {}  other {}\n",
                "errors", e.refused, e.reset, e.timeout, e.verify, e.other
            ));
            if let Some(first) = &self.record.first_error {
                out.push_str(&format!("  {:<12}  {first}\n", "first error"));
            }
        }
        match self.failure() {
            None => out.push_str(&format!("  {:<12}  ok\n", "result")),
            Some(f) => out.push_str(&format!("  {:<12}  FAILED: {f}\n", "result")),
        }
        out
    }
}

/// 1234567 → "1,234,567".
pub(crate) fn group(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::with_capacity(s.len() + s.len() / 3);
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// 123456.7 → "123.5 k".
pub(crate) fn si(x: f64) -> String {
    let (v, p) = if x >= 1e9 {
        (x / 1e9, "G")
    } else if x >= 1e6 {
        (x / 1e6, "M")
    } else if x >= 1e3 {
        (x / 1e3, "k")
    } else {
        (x, "")
    };
    format!("{v:.1} {p}")
}

/// Microseconds, shown in the unit that reads best.
pub(crate) fn dur(us: f64) -> String {
    if us >= 1e6 {
        format!("{:.2}s", us / 1e6)
    } else if us >= 1e3 {
        format!("{:.2}ms", us / 1e3)
    } else {
        format!("{us:.1}µs")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_read_well() {
        assert_eq!(group(0), "0");
        assert_eq!(group(1234567), "1,234,567");
        assert_eq!(group(100), "100");
        assert_eq!(si(123_456.7), "123.5 k");
        assert_eq!(si(17.2e9), "17.2 G");
        assert_eq!(dur(41.25), "41.2µs");
        assert_eq!(dur(1500.0), "1.50ms");
    }
}

/// A capacity search, as it is shown (step rows as they finish, then the
/// result line) and written (`--json`).
#[derive(Clone, Debug)]
pub(crate) struct CapacityReport {
    pub plan: BenchPlan,
    pub settings: capacity::Settings,
    pub steps: Vec<capacity::Step>,
    pub outcome: capacity::Outcome,
    pub command: String,
}

/// What a step measured, from its run: the completed rate, errors (UDP
/// datagrams left unanswered count as errors) and the percentiles.
pub(crate) fn measured(summary: &Summary, settings: &capacity::Settings) -> capacity::Measured {
    let h = &summary.record.latency;
    let at = |q: f64| {
        if h.is_empty() {
            f64::INFINITY
        } else {
            us(h.value_at_quantile(q))
        }
    };
    let lost = if summary.plan.workload.is_udp() {
        summary.lost()
    } else {
        0
    };
    capacity::Measured {
        offered: summary.offered_rate(),
        achieved: summary.rate(),
        ops: summary.ops(),
        errors: summary.record.errors.total() + lost,
        p50: at(0.50),
        p99: at(0.99),
        p99_9: at(0.999),
        at_slo: settings.slos.iter().map(|s| at(s.quantile)).collect(),
    }
}

/// A limit as an operator writes it: "1ms", "200µs", "2s".
pub(crate) fn limit(us: f64) -> String {
    if us >= 1e6 && us % 1e6 == 0.0 {
        format!("{}s", us / 1e6)
    } else if us >= 1e3 && us % 1e3 == 0.0 {
        format!("{}ms", us / 1e3)
    } else if us % 1.0 == 0.0 {
        format!("{us}µs")
    } else {
        dur(us)
    }
}

/// A rate as a whole number per second.
fn per_s(rate: f64) -> String {
    format!("{:.0}/s", rate)
}

impl CapacityReport {
    /// What will run, printed before the first step: the objectives, the
    /// rates and the longest the search can take.
    pub(crate) fn header(plan: &BenchPlan, s: &capacity::Settings) -> String {
        let steps = s.worst_case_steps();
        let per_step = plan.warmup + s.step_duration;
        let worst = per_step * steps as u32;
        format!(
            "ringfwd bench {} {}, {} {}, capacity search\n  objectives    {}, errors ≤ {}%, achieved within {:.0}% of offered\n  rates         from {} doubling up to {}, then bisecting to {:.0}%; a break is retried once\n  duration      at most {steps} steps x ({:?} warmup + {:?}) = up to {:.0}s\n\n{}\n",
            plan.workload.name(),
            plan.target,
            plan.workload.conns(),
            if plan.workload.is_udp() {
                "flows"
            } else {
                "connections"
            },
            Self::objectives(s),
            s.max_errors * 100.0,
            capacity::RATE_TOLERANCE * 100.0,
            per_s(s.start_rate),
            per_s(s.max_rate),
            capacity::RESOLUTION * 100.0,
            plan.warmup,
            s.step_duration,
            worst.as_secs_f64(),
            Self::row_header(),
        )
    }

    fn objectives(s: &capacity::Settings) -> String {
        s.slos
            .iter()
            .map(|o| format!("{} ≤ {}", o.name, limit(o.limit_us)))
            .collect::<Vec<_>>()
            .join(", ")
    }

    fn row_header() -> String {
        format!(
            "  {:>4}  {:>11}  {:>11}  {:>9}  {:>9}  {:>9}  {:>8}  held",
            "step", "offered", "achieved", "p50", "p99", "p99.9", "errors"
        )
    }

    /// One step's row of the table (`index` from 1).
    pub(crate) fn row(index: usize, step: &capacity::Step) -> String {
        let m = &step.measured;
        let lat = |v: f64| if v.is_finite() { dur(v) } else { "-".into() };
        let retry = step.attempt == capacity::Attempt::Retry;
        let held = if step.held() {
            if retry { "yes, on retry" } else { "yes" }.to_string()
        } else {
            let why: Vec<String> = step.misses.iter().map(|m| m.text()).collect();
            format!(
                "{}: {}",
                if retry { "no again" } else { "no" },
                why.join("; ")
            )
        };
        format!(
            "  {index:>4}  {:>11}  {:>11}  {:>9}  {:>9}  {:>9}  {:>7.3}%  {held}",
            per_s(m.offered),
            per_s(m.achieved),
            lat(m.p50),
            lat(m.p99),
            lat(m.p99_9),
            m.error_ratio() * 100.0,
        )
    }

    /// "capacity: 48211/s at p99 ≤ 1ms", or why there is no such rate.
    pub(crate) fn result_line(&self) -> String {
        let at = Self::objectives(&self.settings);
        match self.outcome {
            capacity::Outcome::Found { rate, broken_at } => {
                let next = broken_at
                    .map(|b| format!(" ({} broke)", per_s(b)))
                    .unwrap_or_default();
                format!("capacity: {} at {at}{next}", per_s(rate))
            }
            capacity::Outcome::BelowStart { start } => format!(
                "capacity: none at {at}: the first step, {}, already broke; lower --start-rate",
                per_s(start)
            ),
            capacity::Outcome::AtLeastMax { max } => format!(
                "capacity: ≥ {} at {at}: --max-rate held; raise it to search further",
                per_s(max)
            ),
        }
    }

    pub(crate) fn to_json(&self) -> Value {
        let p = &self.plan;
        let w = &p.workload;
        let s = &self.settings;
        let num = |v: f64| if v.is_finite() { json!(v) } else { Value::Null };
        let steps: Vec<Value> = self
            .steps
            .iter()
            .enumerate()
            .map(|(i, st)| {
                let m = &st.measured;
                let at_slo: serde_json::Map<String, Value> = s
                    .slos
                    .iter()
                    .zip(&m.at_slo)
                    .map(|(o, &v)| (o.name.clone(), num(v)))
                    .collect();
                json!({
                    "step": i + 1,
                    "offered": m.offered,
                    "achieved": m.achieved,
                    "held": st.held(),
                    "attempt": match st.attempt {
                        capacity::Attempt::First => "first",
                        capacity::Attempt::Retry => "retry",
                    },
                    "misses": st.misses.iter().map(|x| x.text()).collect::<Vec<_>>(),
                    "ops": m.ops,
                    "errors": m.errors,
                    "error_ratio": m.error_ratio(),
                    "p50_us": num(m.p50),
                    "p99_us": num(m.p99),
                    "p99_9_us": num(m.p99_9),
                    "slo_us": at_slo,
                })
            })
            .collect();
        json!({
            "version": 1,
            "mode": w.name(),
            "target": p.target.to_string(),
            "command": self.command,
            "settings": {
                "connections": if w.is_udp() { 0 } else { w.conns() },
                "flows": if w.is_udp() { w.conns() } else { 0 },
                "size": w.size(),
                "response_size": w.response_size(),
                "warmup_s": p.warmup.as_secs_f64(),
                "step_duration_s": s.step_duration.as_secs_f64(),
                "timeout_s": p.timeout.as_secs_f64(),
                "start_rate": s.start_rate,
                "max_rate": s.max_rate,
                "max_errors": s.max_errors,
                "rate_tolerance": capacity::RATE_TOLERANCE,
                "resolution": capacity::RESOLUTION,
                "max_retries": capacity::MAX_RETRIES,
                "slo": s.slos.iter().map(|o| json!({
                    "percentile": o.name, "quantile": o.quantile, "limit_us": o.limit_us,
                })).collect::<Vec<_>>(),
                "shards": p.shards(),
                "cpus": p.cpus,
            },
            "capacity": {
                "rate": self.outcome.rate(),
                "outcome": self.outcome.kind(),
                "broken_at": match self.outcome {
                    capacity::Outcome::Found { broken_at, .. } => broken_at,
                    _ => None,
                },
                "objectives": Self::objectives(s),
                "result": self.result_line(),
                "steps": steps,
            },
            "ok": true,
        })
    }
}
