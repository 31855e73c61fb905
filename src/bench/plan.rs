//! `ringfwd bench`'s command line turned into one validated `BenchPlan`
//! before any socket opens: every bad value is named with its flag and range.

use std::net::SocketAddr;
use std::time::Duration;

use super::capacity::{self, Slo};
use super::payload::{self, Expect, Payload};
use crate::cli::{BenchArgs, BenchCommon, BenchMode, CapacityArgs, PayloadArgs};
use crate::config::units::{parse_duration, parse_size};

/// Largest request, response or datagram size accepted.
pub(crate) const MAX_MESSAGE: u64 = 16 << 20;
/// Bytes at the start of every bench datagram: magic, flow, sequence, send
/// time. They let a reply be matched to its request without per-datagram state.
pub(crate) const UDP_HEADER: u64 = 24;
/// Largest UDP payload (IPv4: 65535 - 20 - 8).
pub(crate) const MAX_UDP: u64 = 65_507;
/// Largest tcp-stream write: 4 MiB, iperf3-sized writes and beyond; the
/// shard sends it straight from a pattern region long enough for it
/// (`verify::periodic_region_for`).
pub(crate) const MAX_STREAM_WRITE: u64 = 4 << 20;
/// Most memory the UDP modes' send slots (one datagram each) may take.
pub(crate) const MAX_SEND_SLOTS: u64 = 1 << 30;
/// Most connections or flows one run may open.
pub(crate) const MAX_CONNS: u64 = 100_000;

/// Which way tcp-stream moves bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// Client to target (the target discards: `ringfwd echo --tcp-sink`).
    Up,
    /// Target to client (`ringfwd echo --tcp-source`).
    Down,
    /// Both at once (an echo target sends everything back).
    Both,
}

impl Direction {
    pub fn name(self) -> &'static str {
        match self {
            Direction::Up => "up",
            Direction::Down => "down",
            Direction::Both => "both",
        }
    }
}

/// What one run measures, with the settings that only that mode has.
#[derive(Clone, Debug, PartialEq)]
pub enum Workload {
    /// Requests and responses on long-lived connections.
    TcpRr {
        connections: u32,
        size: u32,
        response_size: u32,
        pipeline: u32,
    },
    /// Connect, one request, one response, close, repeat.
    TcpCrr {
        connections: u32,
        size: u32,
        response_size: u32,
    },
    /// Bulk transfer.
    TcpStream {
        connections: u32,
        size: u32,
        direction: Direction,
    },
    /// One datagram out, wait for its echo, repeat.
    UdpRr { flows: u32, size: u32 },
    /// Datagrams offered as fast as possible (or at `rate`), echoes counted.
    UdpStream { flows: u32, size: u32, window: u32 },
}

impl Workload {
    pub fn name(&self) -> &'static str {
        match self {
            Workload::TcpRr { .. } => "tcp-rr",
            Workload::TcpCrr { .. } => "tcp-crr",
            Workload::TcpStream { .. } => "tcp-stream",
            Workload::UdpRr { .. } => "udp-rr",
            Workload::UdpStream { .. } => "udp-stream",
        }
    }

    /// Connections (TCP) or flows (UDP).
    pub fn conns(&self) -> u32 {
        match *self {
            Workload::TcpRr { connections, .. }
            | Workload::TcpCrr { connections, .. }
            | Workload::TcpStream { connections, .. } => connections,
            Workload::UdpRr { flows, .. } | Workload::UdpStream { flows, .. } => flows,
        }
    }

    pub fn is_udp(&self) -> bool {
        matches!(self, Workload::UdpRr { .. } | Workload::UdpStream { .. })
    }

    /// Request size (the write size for tcp-stream).
    pub fn size(&self) -> u32 {
        match *self {
            Workload::TcpRr { size, .. }
            | Workload::TcpCrr { size, .. }
            | Workload::TcpStream { size, .. }
            | Workload::UdpRr { size, .. }
            | Workload::UdpStream { size, .. } => size,
        }
    }

    /// Response size for request/response modes (the request size elsewhere).
    pub fn response_size(&self) -> u32 {
        match *self {
            Workload::TcpRr { response_size, .. } | Workload::TcpCrr { response_size, .. } => {
                response_size
            }
            _ => self.size(),
        }
    }
}

/// A validated bench run.
#[derive(Clone, Debug, PartialEq)]
pub struct BenchPlan {
    pub workload: Workload,
    pub target: SocketAddr,
    pub duration: Duration,
    pub warmup: Duration,
    /// Open loop: total requests (or datagrams) per second over all shards.
    pub rate: Option<f64>,
    /// How long a request, datagram or connect may take before it counts as
    /// a timeout.
    pub timeout: Duration,
    pub cpus: Vec<usize>,
    pub json: Option<String>,
    pub progress: bool,
    /// Spin on the completion queue this long before sleeping.
    pub busy_poll: Option<Duration>,
    /// `--payload`: the user's request bytes and expected response, instead
    /// of the verified pattern (tcp-rr, tcp-crr, udp-rr).
    pub payload: Option<Payload>,
    /// `--percentiles FILE`: the percentile distribution text.
    pub percentiles: Option<String>,
    /// `--histogram-log FILE`: the HdrHistogram interval log.
    pub histogram_log: Option<String>,
}

impl BenchPlan {
    pub fn shards(&self) -> usize {
        self.cpus.len()
    }
}

fn size_flag(flag: &str, v: &str, min: u64, max: u64) -> Result<u32, String> {
    let n = parse_size(v).map_err(|e| format!("--{flag} {v:?}: {e}"))?;
    if n < min || n > max {
        return Err(format!(
            "--{flag} {v:?} is out of range: use {min}..={max} bytes"
        ));
    }
    u32::try_from(n).map_err(|_| format!("--{flag} {v:?} is too large"))
}

/// --size and --response-size (default: the request size).
fn sizes(size: &str, response: Option<&str>) -> Result<(u32, u32), String> {
    let size = size_flag("size", size, 1, MAX_MESSAGE)?;
    let response_size = match response {
        Some(v) => size_flag("response-size", v, 1, MAX_MESSAGE)?,
        None => size,
    };
    Ok((size, response_size))
}

/// --payload with --expect or --expect-size, each at most `max` bytes.
fn payload_flags(
    a: &PayloadArgs,
    response_size: bool,
    max: u64,
) -> Result<Option<Payload>, String> {
    let Some(text) = &a.payload else {
        return Ok(None);
    };
    if response_size {
        return Err(
            "--response-size does not apply with --payload: give --expect or --expect-size".into(),
        );
    }
    let request = payload::load("payload", text, max)?;
    let response = match (&a.expect, &a.expect_size) {
        (Some(e), _) => Expect::Exact(payload::load("expect", e, max)?.into()),
        (None, Some(n)) => Expect::Size(size_flag("expect-size", n, 1, max)?),
        (None, None) => {
            return Err(
                "--payload needs --expect TEXT|@FILE (the exact response) or --expect-size N: \
                 the generator cannot know where a response of an arbitrary protocol ends"
                    .into(),
            );
        }
    };
    Ok(Some(Payload {
        request: request.into(),
        response,
    }))
}

fn count_flag(flag: &str, n: u64) -> Result<u32, String> {
    if n == 0 || n > MAX_CONNS {
        return Err(format!("--{flag} {n} is out of range: use 1..={MAX_CONNS}"));
    }
    Ok(n as u32)
}

fn parse_rate(v: &str) -> Result<f64, String> {
    rate_flag("rate", v)
}

fn rate_flag(flag: &str, v: &str) -> Result<f64, String> {
    let t = v.trim();
    let num = t.strip_suffix("/s").unwrap_or(t).trim();
    let (digits, mult) = match num.chars().last() {
        Some('k' | 'K') => (&num[..num.len() - 1], 1e3),
        Some('m' | 'M') => (&num[..num.len() - 1], 1e6),
        _ => (num, 1.0),
    };
    let r: f64 = digits
        .trim()
        .parse()
        .map_err(|_| format!("--{flag} {v:?} is not a rate: use e.g. 5000, 5000/s or 20k/s"))?;
    let r = r * mult;
    if !(r.is_finite() && r > 0.0 && r <= 1e8) {
        return Err(format!(
            "--{flag} {v:?} is out of range: use more than 0 and at most 100M/s"
        ));
    }
    Ok(r)
}

fn common(workload: Workload, c: &BenchCommon, available: &[usize]) -> Result<BenchPlan, String> {
    let conns = workload.conns();
    let target: SocketAddr = c.target.parse().map_err(|_| {
        format!(
            "--target {:?} is not an address: use IP:PORT, e.g. 127.0.0.1:8080 or [::1]:8080",
            c.target
        )
    })?;
    if target.port() == 0 {
        return Err(format!("--target {target}: port 0 cannot be connected to"));
    }
    let dur = |flag: &str, v: &str| parse_duration(v).map_err(|e| format!("--{flag} {v:?}: {e}"));
    let duration = dur("duration", &c.duration)?;
    if duration < Duration::from_millis(100) || duration > Duration::from_secs(24 * 3600) {
        return Err(format!(
            "--duration {:?} is out of range: use 100ms..=24h",
            c.duration
        ));
    }
    let warmup = dur("warmup", &c.warmup)?;
    if warmup > Duration::from_secs(3600) {
        return Err(format!(
            "--warmup {:?} is out of range: use 0..=1h",
            c.warmup
        ));
    }
    let timeout = dur("timeout", &c.timeout)?;
    if timeout < Duration::from_millis(1) || timeout > Duration::from_secs(600) {
        return Err(format!(
            "--timeout {:?} is out of range: use 1ms..=10m",
            c.timeout
        ));
    }
    let rate = c.rate.as_deref().map(parse_rate).transpose()?;
    // --busy-poll (from the shard flags): the generator's own wakeups then
    // stay out of the latency it measures, at the cost of CPU.
    let busy_poll = match c.shards.busy_poll.as_deref().map(str::trim) {
        None | Some("off") => None,
        Some(v) => {
            let d = dur("busy-poll", v)?;
            if d > Duration::from_millis(10) {
                return Err(format!(
                    "--busy-poll {v:?} is longer than the 10ms maximum: use 1us..=10ms, or off"
                ));
            }
            (!d.is_zero()).then_some(d)
        }
    };
    let cpus = match (&c.shards.cpus, c.shards.shards) {
        (Some(list), shards) => {
            if list.is_empty() {
                return Err("--cpus is empty: list CPUs, e.g. --cpus 1".into());
            }
            if let Some(bad) = list.iter().find(|c| !available.contains(c)) {
                return Err(format!(
                    "--cpus: CPU {bad} is not available to this process (available: {available:?}); check `taskset -p $$`"
                ));
            }
            let mut seen = list.clone();
            seen.sort_unstable();
            seen.dedup();
            if seen.len() != list.len() {
                return Err(format!("--cpus {list:?} lists a CPU twice"));
            }
            if let Some(n) = shards
                && n != list.len()
            {
                return Err(format!(
                    "--shards {n} does not match --cpus {list:?} ({} CPUs): give one CPU per shard",
                    list.len()
                ));
            }
            list.clone()
        }
        (None, Some(n)) => {
            if n == 0 || n > available.len() {
                return Err(format!(
                    "--shards {n} is out of range: this process may use {} CPUs ({available:?})",
                    available.len()
                ));
            }
            available[..n].to_vec()
        }
        (None, None) => {
            if available.is_empty() {
                return Err("no CPU is available to this process".into());
            }
            available.to_vec()
        }
    };
    // More shards than connections would leave shards idle.
    let cpus = cpus.into_iter().take(conns.max(1) as usize).collect();
    if rate.is_some() && matches!(workload, Workload::TcpStream { .. }) {
        return Err(
            "--rate does not apply to tcp-stream (it measures the rate a stream reaches)".into(),
        );
    }
    Ok(BenchPlan {
        workload,
        target,
        duration,
        warmup,
        rate,
        timeout,
        cpus,
        json: c.json.clone(),
        progress: !c.quiet,
        busy_poll,
        payload: None,
        percentiles: c.percentiles.clone(),
        histogram_log: c.histogram_log.clone(),
    })
}

impl BenchPlan {
    /// Validates `args`; `available` are the CPUs this process may run on.
    pub fn resolve(args: &BenchArgs, available: &[usize]) -> Result<BenchPlan, String> {
        let mut payload = None;
        let (workload, c) = match &args.mode {
            BenchMode::TcpRr(a) => {
                payload = payload_flags(&a.payload, a.response_size.is_some(), MAX_MESSAGE)?;
                let (size, response_size) = match &payload {
                    Some(p) => (p.request.len() as u32, p.response.len()),
                    None => sizes(&a.size, a.response_size.as_deref())?,
                };
                if a.pipeline == 0 || a.pipeline > 1024 {
                    return Err(format!(
                        "--pipeline {} is out of range: use 1..=1024",
                        a.pipeline
                    ));
                }
                (
                    Workload::TcpRr {
                        connections: count_flag("connections", a.connections)?,
                        size,
                        response_size,
                        pipeline: a.pipeline,
                    },
                    &a.common,
                )
            }
            BenchMode::TcpCrr(a) => {
                payload = payload_flags(&a.payload, a.response_size.is_some(), MAX_MESSAGE)?;
                let (size, response_size) = match &payload {
                    Some(p) => (p.request.len() as u32, p.response.len()),
                    None => sizes(&a.size, a.response_size.as_deref())?,
                };
                (
                    Workload::TcpCrr {
                        connections: count_flag("connections", a.connections)?,
                        size,
                        response_size,
                    },
                    &a.common,
                )
            }
            BenchMode::TcpStream(a) => {
                let direction = match a.direction.as_str() {
                    "up" => Direction::Up,
                    "down" => Direction::Down,
                    "both" => Direction::Both,
                    other => {
                        return Err(format!(
                            "--direction {other:?} is not a direction: use up, down or both"
                        ));
                    }
                };
                (
                    Workload::TcpStream {
                        connections: count_flag("connections", a.connections)?,
                        size: size_flag("size", &a.size, 1, MAX_STREAM_WRITE)?,
                        direction,
                    },
                    &a.common,
                )
            }
            BenchMode::UdpRr(a) => {
                payload = payload_flags(&a.payload, false, MAX_UDP)?;
                let size = match &payload {
                    Some(p) => p.request.len() as u32,
                    None => size_flag("size", &a.size, UDP_HEADER, MAX_UDP)?,
                };
                (
                    Workload::UdpRr {
                        flows: count_flag("flows", a.flows)?,
                        size,
                    },
                    &a.common,
                )
            }
            BenchMode::UdpStream(a) => {
                if a.window == 0 || a.window > 1024 {
                    return Err(format!(
                        "--window {} is out of range: use 1..=1024",
                        a.window
                    ));
                }
                (
                    Workload::UdpStream {
                        flows: count_flag("flows", a.flows)?,
                        size: size_flag("size", &a.size, UDP_HEADER, MAX_UDP)?,
                        window: a.window,
                    },
                    &a.common,
                )
            }
        };
        if let Workload::UdpRr { flows, size } | Workload::UdpStream { flows, size, .. } = workload
        {
            let window = match workload {
                Workload::UdpStream { window, .. } => u64::from(window),
                _ => 1,
            };
            let bytes = u64::from(flows) * window * u64::from(size);
            if bytes > MAX_SEND_SLOTS {
                return Err(format!(
                    "--flows {flows} x --window {window} x --size {size} needs {bytes} bytes of send slots, more than {MAX_SEND_SLOTS}: lower one of them"
                ));
            }
        }
        let mut plan = common(workload, c, available)?;
        plan.payload = payload;
        if plan.percentiles.is_some() || plan.histogram_log.is_some() {
            let flag = if plan.percentiles.is_some() {
                "--percentiles"
            } else {
                "--histogram-log"
            };
            if let Workload::TcpStream { .. } = plan.workload {
                return Err(format!(
                    "{flag} does not apply to tcp-stream: it measures no latency"
                ));
            }
        }
        Ok(plan)
    }

    /// `--payload` and its expectation, escaped and cut short, for the report.
    pub fn payload_text(&self, p: &Payload) -> String {
        let expect = match &p.response {
            Expect::Exact(b) => format!("expect {}", payload::show(b, 32)),
            Expect::Size(n) => format!("expect-size {n}"),
        };
        format!("{} {expect}", payload::show(&p.request, 32))
    }

    /// The settings as given, for the report and `--json`.
    pub fn describe(&self) -> String {
        let w = &self.workload;
        let mut s = format!("{} {} ", w.name(), self.target);
        match *w {
            Workload::TcpRr {
                connections,
                size,
                response_size,
                pipeline,
            } => s.push_str(&format!(
                "connections {connections} size {size} response {response_size} pipeline {pipeline}"
            )),
            Workload::TcpCrr {
                connections,
                size,
                response_size,
            } => s.push_str(&format!(
                "connections {connections} size {size} response {response_size}"
            )),
            Workload::TcpStream {
                connections,
                size,
                direction,
            } => s.push_str(&format!(
                "connections {connections} write {size} direction {}",
                direction.name()
            )),
            Workload::UdpRr { flows, size } => s.push_str(&format!("flows {flows} size {size}")),
            Workload::UdpStream {
                flows,
                size,
                window,
            } => s.push_str(&format!("flows {flows} size {size} window {window}")),
        }
        if let Some(p) = &self.payload {
            s.push_str(&format!(" payload {}", self.payload_text(p)));
        }
        match self.rate {
            Some(r) => s.push_str(&format!(" rate {r}/s (open loop)")),
            None => s.push_str(" closed loop"),
        }
        s.push_str(&format!(
            ", {:?} after {:?} warmup, shards {} on CPUs {:?}",
            self.duration,
            self.warmup,
            self.shards(),
            self.cpus
        ));
        if let Some(spin) = self.busy_poll {
            s.push_str(&format!(", busy-poll {spin:?}"));
        }
        s
    }
}

/// `--slo p99=1ms`: the percentile (0 < p < 100) and its limit (1µs..=10m).
fn parse_slo(v: &str) -> Result<Slo, String> {
    let hint = "use PERCENTILE=LIMIT, e.g. p99=1ms, p50=200us or p99.9=5ms";
    let (name, limit) = v
        .split_once('=')
        .ok_or_else(|| format!("--slo {v:?} is not an objective: {hint}"))?;
    let name = name.trim();
    let pct: f64 = name
        .strip_prefix('p')
        .and_then(|p| p.parse().ok())
        .ok_or_else(|| format!("--slo {v:?}: {name:?} is not a percentile: {hint}"))?;
    if !(pct > 0.0 && pct < 100.0) {
        return Err(format!(
            "--slo {v:?}: percentile {name} is out of range: use more than p0 and less than p100"
        ));
    }
    let limit = parse_duration(limit).map_err(|e| format!("--slo {v:?}: {e}"))?;
    if limit < Duration::from_micros(1) || limit > Duration::from_secs(600) {
        return Err(format!(
            "--slo {v:?}: the limit is out of range: use 1us..=10m"
        ));
    }
    Ok(Slo {
        name: name.to_string(),
        quantile: pct / 100.0,
        limit_us: limit.as_secs_f64() * 1e6,
    })
}

/// `--max-errors 0.1%` (or a fraction, 0.001): a ratio in 0..=1.
fn parse_ratio(flag: &str, v: &str) -> Result<f64, String> {
    let t = v.trim();
    let (num, scale) = match t.strip_suffix('%') {
        Some(n) => (n.trim(), 100.0),
        None => (t, 1.0),
    };
    let r = num
        .parse::<f64>()
        .ok()
        .filter(|r| r.is_finite())
        .ok_or_else(|| format!("--{flag} {v:?} is not a ratio: use e.g. 0.1% or 0.001"))?
        / scale;
    if !(0.0..=1.0).contains(&r) {
        return Err(format!(
            "--{flag} {v:?} is out of range: use 0..=100% (or 0..=1)"
        ));
    }
    Ok(r)
}

/// The `--capacity` settings of `args`, validated; `None` without `--capacity`.
pub(crate) fn capacity_settings(args: &BenchArgs) -> Result<Option<capacity::Settings>, String> {
    let (c, common): (&CapacityArgs, &BenchCommon) = match &args.mode {
        BenchMode::TcpRr(a) => (&a.capacity, &a.common),
        BenchMode::TcpCrr(a) => (&a.capacity, &a.common),
        BenchMode::UdpRr(a) => (&a.capacity, &a.common),
        BenchMode::TcpStream(_) | BenchMode::UdpStream(_) => return Ok(None),
    };
    if !c.capacity {
        return Ok(None);
    }
    if c.slo.is_empty() {
        return Err("--capacity needs at least one --slo, e.g. --slo p99=1ms".into());
    }
    let slos = c
        .slo
        .iter()
        .map(|v| parse_slo(v))
        .collect::<Result<Vec<_>, _>>()?;
    for (i, s) in slos.iter().enumerate() {
        if slos[..i].iter().any(|o| o.quantile == s.quantile) {
            return Err(format!(
                "--slo {} is given twice: give each percentile one limit",
                s.name
            ));
        }
    }
    let max_errors = parse_ratio("max-errors", c.max_errors.as_deref().unwrap_or("0.1%"))?;
    let start_rate = rate_flag("start-rate", c.start_rate.as_deref().unwrap_or("1000"))?;
    let max_rate = rate_flag("max-rate", c.max_rate.as_deref().unwrap_or("2M"))?;
    if max_rate < start_rate {
        return Err(format!(
            "--max-rate {max_rate}/s is below --start-rate {start_rate}/s: raise --max-rate or lower --start-rate"
        ));
    }
    let most = capacity::GROWTH.powi(capacity::MAX_GROWTH_STEPS as i32 - 1);
    if max_rate > start_rate * most {
        return Err(format!(
            "--max-rate {max_rate}/s is more than {most} x --start-rate {start_rate}/s: the search would need more than {} doubling steps; raise --start-rate",
            capacity::MAX_GROWTH_STEPS
        ));
    }
    let v = c.step_duration.as_deref().unwrap_or("3s");
    let step_duration = parse_duration(v).map_err(|e| format!("--step-duration {v:?}: {e}"))?;
    if step_duration < Duration::from_millis(100) || step_duration > Duration::from_secs(3600) {
        return Err(format!(
            "--step-duration {v:?} is out of range: use 100ms..=1h"
        ));
    }
    let chart = c.chart.clone().or_else(|| {
        common.json.as_deref().filter(|j| *j != "-").map(|j| {
            match std::path::Path::new(j).with_extension("svg") {
                // Never overwrite the JSON document itself.
                svg if svg.as_os_str() == j => format!("{j}.chart.svg"),
                svg => svg.display().to_string(),
            }
        })
    });
    Ok(Some(capacity::Settings {
        slos,
        max_errors,
        start_rate,
        max_rate,
        step_duration,
        chart,
    }))
}
