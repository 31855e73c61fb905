//! The merged latency histogram in the formats latency tools already read:
//! HdrHistogram's percentile distribution text (`--percentiles`, what wrk2
//! prints and HdrHistogram's plotter reads) and its interval log
//! (`--histogram-log`, V2 compressed, what HistogramLogProcessor reads).

use std::time::{Duration, SystemTime};

use hdrhistogram::Histogram;
use hdrhistogram::serialization::interval_log::{
    IntervalLogIterator, IntervalLogWriterBuilder, LogEntry,
};
use hdrhistogram::serialization::{Deserializer, V2DeflateSerializer};

/// Percentile rows per halving of the distance to 100%, as HdrHistogram's
/// `outputPercentileDistribution` does by default.
pub const TICKS_PER_HALF_DISTANCE: u32 = 5;
/// Latencies are recorded in ns; the percentile text shows microseconds
/// (3 decimals: every nanosecond shows).
const NS_PER_UNIT: f64 = 1_000.0;
/// Decimals of the Value column (HdrHistogram prints the histogram's
/// significant digits).
const DECIMALS: usize = 3;

/// The percentile distribution of `h` (values in ns), with values in
/// microseconds, laid out exactly as HdrHistogram's
/// `outputPercentileDistribution` lays it out (one leading `#` comment
/// naming the unit).
pub fn percentile_text(h: &Histogram<u64>) -> String {
    let d = DECIMALS;
    let mut out = String::from(
        "# ringfwd bench latency percentile distribution: Value in microseconds (us)\n",
    );
    out.push_str(&format!(
        "{:>12} {:>14} {:>10} {:>14}\n\n",
        "Value", "Percentile", "TotalCount", "1/(1-Percentile)"
    ));
    let mut total = 0u64;
    for v in h.iter_quantiles(TICKS_PER_HALF_DISTANCE) {
        total += v.count_since_last_iteration();
        let value = v.value_iterated_to() as f64 / NS_PER_UNIT;
        let q = v.quantile_iterated_to();
        if q < 1.0 {
            out.push_str(&format!(
                "{value:12.d$} {q:2.12} {total:10} {:14.2}\n",
                1.0 / (1.0 - q)
            ));
        } else {
            out.push_str(&format!("{value:12.d$} {q:2.12} {total:10}\n"));
        }
    }
    let (mean, stdev, max) = if h.is_empty() {
        (0.0, 0.0, 0.0)
    } else {
        (h.mean(), h.stdev(), h.max() as f64)
    };
    out.push_str(&format!(
        "#[Mean    = {:12.d$}, StdDeviation   = {:12.d$}]\n",
        mean / NS_PER_UNIT,
        stdev / NS_PER_UNIT
    ));
    out.push_str(&format!(
        "#[Max     = {:12.d$}, Total count    = {:12}]\n",
        max / NS_PER_UNIT,
        h.len()
    ));
    out.push_str(&format!(
        "#[Buckets = {:12}, SubBuckets     = {:12}]\n",
        h.buckets(),
        sub_buckets(h)
    ));
    out
}

/// HdrHistogram's sub-bucket count: the power of two that holds
/// 2 x 10^digits values at unit resolution (2048 for 3 digits).
fn sub_buckets(h: &Histogram<u64>) -> u64 {
    (2 * 10u64.pow(u32::from(h.sigfig()))).next_power_of_two()
}

/// `h` (values in ns) as an interval log with one interval: the measured
/// window, which started at `start` and lasted `duration`.
pub fn interval_log(
    h: &Histogram<u64>,
    start: SystemTime,
    duration: Duration,
    describe: &str,
) -> Result<Vec<u8>, String> {
    let mut buf = Vec::new();
    let mut serializer = V2DeflateSerializer::new();
    let mut writer = IntervalLogWriterBuilder::new()
        .add_comment(&format!("ringfwd bench {describe}"))
        .add_comment("Values in nanoseconds; Interval_Max in milliseconds")
        .add_comment("[Histogram log format version 1.3]")
        .with_start_time(start)
        .with_base_time(start)
        // HdrHistogram's HistogramLogWriter shows the interval max in ms for
        // ns histograms; the histogram itself keeps ns.
        .with_max_value_divisor(1e6)
        .begin_log_with(&mut buf, &mut serializer)
        .map_err(|e| format!("writing the histogram log failed: {e}"))?;
    writer
        .write_histogram(h, Duration::ZERO, duration, None)
        .map_err(|e| format!("encoding the histogram log failed: {e}"))?;
    Ok(buf)
}

/// Every interval of a log `interval_log` wrote: (duration, histogram).
/// For the tests and for anyone checking a log without HdrHistogram's tools.
pub fn read_interval_log(log: &[u8]) -> Result<Vec<(Duration, Histogram<u64>)>, String> {
    let mut out = Vec::new();
    for entry in IntervalLogIterator::new(log) {
        let entry = entry.map_err(|e| format!("not an interval log: {e:?}"))?;
        if let LogEntry::Interval(i) = entry {
            let bytes = base64_decode(i.encoded_histogram())?;
            let h = Deserializer::new()
                .deserialize(&mut std::io::Cursor::new(bytes))
                .map_err(|e| format!("an interval's histogram does not decode: {e:?}"))?;
            out.push((i.duration(), h));
        }
    }
    Ok(out)
}

/// Standard base64 with padding (the log's encoding).
fn base64_decode(s: &str) -> Result<Vec<u8>, String> {
    let val = |c: u8| -> Result<u32, String> {
        Ok(match c {
            b'A'..=b'Z' => u32::from(c - b'A'),
            b'a'..=b'z' => u32::from(c - b'a') + 26,
            b'0'..=b'9' => u32::from(c - b'0') + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return Err(format!("{:?} is not base64", c as char)),
        })
    };
    let mut out = Vec::with_capacity(s.len() / 4 * 3);
    for chunk in s.trim_end_matches('=').as_bytes().chunks(4) {
        let mut acc = 0u32;
        for (i, &c) in chunk.iter().enumerate() {
            acc |= val(c)? << (18 - 6 * i as u32);
        }
        let bytes = acc.to_be_bytes();
        out.extend_from_slice(bytes.get(1..chunk.len()).unwrap_or(&[]));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::record::new_histogram;

    fn sample() -> Histogram<u64> {
        let mut h = new_histogram();
        let mut rng = crate::verify::Rng::new(11);
        for _ in 0..20_000 {
            // 10us..~20ms, skewed: a long tail like real latency.
            let base = 10_000 + rng.below(40_000);
            let tail = if rng.chance(1, 100) {
                rng.below(20_000_000)
            } else {
                0
            };
            h.record(base + tail).unwrap();
        }
        h
    }

    /// Rows of (value in ns, quantile, total count).
    fn rows(text: &str) -> Vec<(u64, f64, u64)> {
        text.lines()
            .filter(|l| !l.starts_with('#') && !l.trim().is_empty() && !l.contains("Value"))
            .map(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                assert!(f.len() == 4 || f.len() == 3, "row {l:?}");
                let us: f64 = f[0].parse().unwrap();
                (
                    (us * 1000.0).round() as u64,
                    f[1].parse().unwrap(),
                    f[2].parse().unwrap(),
                )
            })
            .collect()
    }

    #[test]
    fn the_percentile_text_reads_back_as_the_histogram() {
        let h = sample();
        let text = percentile_text(&h);
        assert!(
            text.contains("       Value     Percentile TotalCount 1/(1-Percentile)\n\n"),
            "{text}"
        );
        let rows = rows(&text);
        assert!(rows.len() > 50, "{} rows", rows.len());
        for &(value, q, _) in &rows {
            // The value a row shows is the one the histogram reports at its
            // percentile, give or take the one sample that the iterator's
            // and value_at_quantile's float rounding may disagree on.
            let (lo, hi) = (
                h.value_at_quantile(q),
                h.value_at_quantile((q + 1.0 / h.len() as f64).min(1.0)),
            );
            assert!(
                lo <= value && value <= hi,
                "row at {q}: {value} ns, histogram says {lo}..={hi} ns"
            );
        }
        let &(last_value, last_q, last_total) = rows.last().unwrap();
        assert_eq!(last_q, 1.0);
        assert_eq!(last_total, h.len());
        assert!(h.equivalent(last_value, h.max()));
        // Counts grow, percentiles grow; the first row is the minimum.
        assert!(
            rows.windows(2)
                .all(|w| w[0].1 <= w[1].1 && w[0].2 <= w[1].2)
        );
        assert!(h.equivalent(rows[0].0, h.min()));
        assert!(text.contains(&format!("Total count    = {:12}]", h.len())));
        assert!(text.contains(&format!(
            "#[Buckets = {:12}, SubBuckets     =         2048]",
            h.buckets()
        )));
        assert!(text.contains(&format!("#[Mean    = {:12.3}", h.mean() / 1000.0)));
    }

    #[test]
    fn the_interval_log_reads_back_with_every_count() {
        let h = sample();
        let start = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let log = interval_log(&h, start, Duration::from_secs(3), "tcp-rr").unwrap();
        let mut intervals = Vec::new();
        let mut start_time = None;
        for e in IntervalLogIterator::new(&log) {
            match e.unwrap() {
                LogEntry::StartTime(t) => start_time = Some(t),
                LogEntry::Interval(i) => intervals.push(i),
                LogEntry::BaseTime(_) => {}
            }
        }
        assert_eq!(start_time, Some(Duration::from_secs(1_800_000_000)));
        assert_eq!(intervals.len(), 1);
        let i = &intervals[0];
        assert_eq!(i.duration(), Duration::from_secs(3));
        let back = &read_interval_log(&log).unwrap()[0].1;
        assert_eq!(back.len(), h.len());
        assert_eq!(back.max(), h.max());
        assert_eq!(back.value_at_quantile(0.99), h.value_at_quantile(0.99));
    }
}
