//! `GET /metrics`: the Prometheus text exposition format (version 0.0.4),
//! written here rather than through a client library because every value
//! already exists as a snapshot: nothing is registered, nothing is shared
//! with the shards.
//!
//! - Every counter of the stats line is a family `ringfwd_<name>_total`
//!   (gauges — `active`, `udp_sessions_active`, `pipes_in_use` — are
//!   `ringfwd_<name>`), with one sample per listener (`listener` label) and,
//!   when the shard counted it outside any listener, one without labels: the
//!   family's sum is the stats line's total.
//! - An upstream's counters are a view of its listener's (a connection is
//!   counted by both), so they are families of their own,
//!   `ringfwd_upstream_<name>_total{listener,upstream}`, and summing a family
//!   never counts a connection twice.
//! - `ringfwd_upstream_up{listener,upstream}`, and per listener the
//!   histograms `ringfwd_upstream_connect_seconds` and
//!   `ringfwd_connection_duration_seconds`.

use std::fmt::Write as _;

use super::UpstreamState;
use crate::stats::{Counter, Counters, HISTOGRAM_BOUNDS_US, Histogram, ListenerStats, ShardStats};

/// The Content-Type of the text format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Counters of the table that are gauges (set in snapshots, they go down).
const GAUGES: [Counter; 3] = [
    Counter::Active,
    Counter::UdpSessionsActive,
    Counter::PipesInUse,
];

/// Gauges the shard keeps outside any listener: their unlabelled sample is
/// written at zero too (a gauge that vanished at zero would read as stale,
/// not as zero).
const SHARD_GAUGES: [Counter; 1] = [Counter::PipesInUse];

fn is_gauge(name: &str) -> bool {
    GAUGES.iter().any(|g| g.name() == name)
}

/// HELP text of a table counter: its doc comment, or for the reason
/// families what the name says.
fn help_of(name: &str) -> String {
    if let Some(c) = Counter::ALL.iter().find(|c| c.name() == name) {
        return c.help().trim().to_owned();
    }
    let families = [
        ("close_", "Connections closed for the reason"),
        ("udp_end_", "UDP sessions ended for the reason"),
        ("udp_drop_", "Datagrams dropped for the reason"),
    ];
    for (prefix, what) in families {
        if let Some(reason) = name.strip_prefix(prefix) {
            return format!("{what} {reason} (README, counters).");
        }
    }
    format!("The stats line's {name} (README, counters).")
}

/// `\`, newline escaped, as HELP text needs.
fn escape_help(text: &str) -> String {
    text.replace('\\', "\\\\").replace('\n', "\\n")
}

/// `\`, `"`, newline escaped, as a label value needs.
pub fn escape_label(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {}", escape_help(help));
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

/// `{k="v",...}` or nothing for no labels.
fn labels(pairs: &[(&str, &str)]) -> String {
    if pairs.is_empty() {
        return String::new();
    }
    let inner: Vec<String> = pairs
        .iter()
        .map(|(k, v)| format!("{k}=\"{}\"", escape_label(v)))
        .collect();
    format!("{{{}}}", inner.join(","))
}

fn family_name(prefix: &str, name: &str) -> (String, &'static str) {
    if is_gauge(name) {
        (format!("ringfwd_{prefix}{name}"), "gauge")
    } else {
        (format!("ringfwd_{prefix}{name}_total"), "counter")
    }
}

/// The whole exposition for one snapshot, the upstreams' states and the
/// process-wide `log_write_errors` (the stats line's last counter).
pub fn render(stats: &ShardStats, upstreams: &[UpstreamState], log_write_errors: u64) -> String {
    let mut out = String::with_capacity(64 * 1024);
    // Each row's values once, in table order (iter() allocates its names).
    let shard: Vec<u64> = stats.shard.iter().map(|(_, v)| v).collect();
    let rows: Vec<Vec<u64>> = stats
        .listeners
        .iter()
        .map(|l| l.counters.iter().map(|(_, v)| v).collect())
        .collect();
    let ups: Vec<Vec<u64>> = stats
        .upstreams
        .iter()
        .map(|u| u.counters.iter().map(|(_, v)| v).collect())
        .collect();
    for (i, (name, _)) in Counters::default().iter().enumerate() {
        let (family, kind) = family_name("", &name);
        header(&mut out, &family, kind, &help_of(&name));
        let own = shard.get(i).copied().unwrap_or(0);
        if own != 0 || SHARD_GAUGES.iter().any(|g| g.name() == name) {
            let _ = writeln!(out, "{family} {own}");
        }
        for (l, row) in stats.listeners.iter().zip(&rows) {
            let v = row.get(i).copied().unwrap_or(0);
            let _ = writeln!(out, "{family}{} {v}", labels(&[("listener", &l.name)]));
        }
    }
    let family = "ringfwd_log_write_errors_total";
    let help = "Log writes to stderr that failed and were dropped (process-wide).";
    header(&mut out, family, "counter", help);
    let _ = writeln!(out, "{family} {log_write_errors}");
    upstream_counters(&mut out, stats, &ups);
    upstream_up(&mut out, upstreams);
    histograms(&mut out, stats);
    out
}

/// The upstream families: only counters some upstream counted (an
/// upstream row never counts most of the table, UDP's for one).
fn upstream_counters(out: &mut String, stats: &ShardStats, ups: &[Vec<u64>]) {
    let named = stats
        .upstreams
        .iter()
        .zip(ups)
        .filter(|(u, _)| !u.listener.is_empty());
    for (i, (name, _)) in Counters::default().iter().enumerate() {
        if !ups.iter().any(|row| row.get(i).is_some_and(|v| *v != 0)) {
            continue;
        }
        let (family, kind) = family_name("upstream_", &name);
        let help = format!("Per upstream: {}", help_of(&name));
        header(out, &family, kind, &help);
        for (u, row) in named.clone() {
            let v = row.get(i).copied().unwrap_or(0);
            let l = labels(&[("listener", &u.listener), ("upstream", &u.upstream)]);
            let _ = writeln!(out, "{family}{l} {v}");
        }
    }
}

fn upstream_up(out: &mut String, upstreams: &[UpstreamState]) {
    header(
        out,
        "ringfwd_upstream_up",
        "gauge",
        "1 while the upstream is in rotation, 0 while it is taken out.",
    );
    for u in upstreams {
        let l = labels(&[("listener", &u.listener), ("upstream", &u.upstream)]);
        let _ = writeln!(out, "ringfwd_upstream_up{l} {}", u8::from(u.up));
    }
}

/// Which histogram of a listener a family shows.
type Pick = fn(&ListenerStats) -> &Histogram;

fn histograms(out: &mut String, stats: &ShardStats) {
    let families: [(&str, &str, Pick); 2] = [
        (
            "ringfwd_upstream_connect_seconds",
            "Time from a connection's first upstream connect to the one that succeeded.",
            |l| &l.connect_time,
        ),
        (
            "ringfwd_connection_duration_seconds",
            "Time from accept to close of a TCP connection.",
            |l| &l.duration,
        ),
    ];
    for (family, help, pick) in families {
        header(out, family, "histogram", help);
        for l in &stats.listeners {
            histogram(out, family, &l.name, pick(l));
        }
    }
}

fn histogram(out: &mut String, family: &str, listener: &str, h: &Histogram) {
    let listener = escape_label(listener);
    let cumulative = h.cumulative();
    let bounds = HISTOGRAM_BOUNDS_US
        .iter()
        .map(|us| seconds(*us, 1_000_000))
        .chain(std::iter::once("+Inf".to_owned()));
    for (le, n) in bounds.zip(cumulative) {
        let _ = writeln!(
            out,
            "{family}_bucket{{listener=\"{listener}\",le=\"{le}\"}} {n}"
        );
    }
    let sum = seconds(h.sum_ms(), 1000);
    let _ = writeln!(out, "{family}_sum{{listener=\"{listener}\"}} {sum}");
    let _ = writeln!(
        out,
        "{family}_count{{listener=\"{listener}\"}} {}",
        h.count()
    );
}

/// `value / per_second` in seconds, exactly (no float rounding in `le`).
fn seconds(value: u64, per_second: u64) -> String {
    let whole = value / per_second;
    let frac = value % per_second;
    if frac == 0 {
        return whole.to_string();
    }
    let width = per_second.ilog10() as usize;
    let digits = format!("{frac:0width$}");
    format!("{whole}.{}", digits.trim_end_matches('0'))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::{CloseReason, UpstreamStats};

    fn sample() -> ShardStats {
        let mut s = ShardStats::default();
        s.shard.add(Counter::LoopTurns, 9);
        let mut web = ListenerStats {
            name: "we\"b\\\n".into(),
            ..Default::default()
        };
        web.counters.add(Counter::Accepted, 3);
        web.counters.set(Counter::Active, 1);
        web.counters.close(CloseReason::ClientEof);
        web.duration.observe_ms(2);
        web.duration.observe_ms(1500);
        web.connect_time.observe_ms(0);
        s.listeners.push(web);
        let mut up = UpstreamStats {
            listener: "we\"b\\\n".into(),
            upstream: "127.0.0.1:9".into(),
            ..Default::default()
        };
        up.counters.add(Counter::ConnectAttempts, 3);
        s.upstreams.push(up);
        s
    }

    fn lines(text: &str) -> Vec<&str> {
        text.lines().collect()
    }

    #[test]
    fn counters_gauges_and_label_escapes() {
        let ups = [UpstreamState {
            listener: "we\"b\\\n".into(),
            upstream: "127.0.0.1:9".into(),
            up: true,
        }];
        let text = render(&sample(), &ups, 4);
        let l = lines(&text);
        let has = |want: &str| assert!(l.contains(&want), "{want:?} not in:\n{text}");
        has("# TYPE ringfwd_accepted_total counter");
        has(
            "# HELP ringfwd_accepted_total Connections admitted (not counting those closed at the limit).",
        );
        has(r#"ringfwd_accepted_total{listener="we\"b\\\n"} 3"#);
        has("# TYPE ringfwd_active gauge");
        has(r#"ringfwd_active{listener="we\"b\\\n"} 1"#);
        has(r#"ringfwd_close_client_eof_total{listener="we\"b\\\n"} 1"#);
        has("ringfwd_loop_turns_total 9");
        has("ringfwd_pipes_in_use 0");
        has("ringfwd_log_write_errors_total 4");
        has(
            r#"ringfwd_upstream_connect_attempts_total{listener="we\"b\\\n",upstream="127.0.0.1:9"} 3"#,
        );
        has(r#"ringfwd_upstream_up{listener="we\"b\\\n",upstream="127.0.0.1:9"} 1"#);
        assert!(
            !text.contains("ringfwd_accepted_total 0"),
            "a shard row at zero is left out:\n{text}"
        );
        assert!(
            !text.contains("ringfwd_upstream_udp_"),
            "families no upstream counted are left out"
        );
    }

    #[test]
    fn histograms_are_cumulative_with_sum_and_count() {
        let text = render(&sample(), &[], 0);
        let l = lines(&text);
        let has = |want: &str| assert!(l.contains(&want), "{want:?} not in:\n{text}");
        let d = "ringfwd_connection_duration_seconds";
        let who = r#"listener="we\"b\\\n""#;
        has(&format!("# TYPE {d} histogram"));
        has(&format!("{d}_bucket{{{who},le=\"0.0005\"}} 0"));
        has(&format!("{d}_bucket{{{who},le=\"0.0025\"}} 1"));
        has(&format!("{d}_bucket{{{who},le=\"1\"}} 1"));
        has(&format!("{d}_bucket{{{who},le=\"2.5\"}} 2"));
        has(&format!("{d}_bucket{{{who},le=\"+Inf\"}} 2"));
        has(&format!("{d}_sum{{{who}}} 1.502"));
        has(&format!("{d}_count{{{who}}} 2"));
        let c = "ringfwd_upstream_connect_seconds";
        has(&format!("{c}_bucket{{{who},le=\"0.0005\"}} 1"));
        has(&format!("{c}_sum{{{who}}} 0"));
    }

    #[test]
    fn every_family_has_help_and_type_before_its_samples() {
        let text = render(&sample(), &[], 0);
        let mut typed: Vec<String> = Vec::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let name = rest.split(' ').next().unwrap().to_owned();
                assert!(!typed.contains(&name), "{name} typed twice");
                typed.push(name);
            } else if !line.starts_with('#') {
                let name = line.split(['{', ' ']).next().unwrap();
                let base = ["_bucket", "_sum", "_count"]
                    .iter()
                    .find_map(|s| name.strip_suffix(s))
                    .filter(|b| typed.last().is_some_and(|t| t == b))
                    .unwrap_or(name);
                assert_eq!(typed.last().map(String::as_str), Some(base), "{line}");
            }
        }
    }

    #[test]
    fn seconds_are_exact() {
        assert_eq!(seconds(500, 1_000_000), "0.0005");
        assert_eq!(seconds(2_500_000, 1_000_000), "2.5");
        assert_eq!(seconds(60_000_000, 1_000_000), "60");
        assert_eq!(seconds(1502, 1000), "1.502");
        assert_eq!(seconds(0, 1000), "0");
    }
}
