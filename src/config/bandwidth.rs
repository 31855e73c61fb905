//! `bandwidth_limit` of a `[[tcp]]` listener: bytes per second, per
//! connection and per direction (`"10MiB/s"`, `"500KiB/s"`, `"100Mbit/s"`).
//!
//! Byte units are binary and case-insensitive, as sizes are (`KiB`, `K` and
//! `KB` all mean 1024); bit units are decimal, as link speeds are
//! (`Mbit/s` is 10^6 bits), and spelled out (`bit`), so `Mb` cannot be
//! taken for megabits or megabytes by mistake.

use super::error::ConfigError;
use super::raw::Section;
use super::units::{format_size, parse_size};

pub(super) const KEY: &str = "bandwidth_limit";
/// Below this a single receive (one buffer) is many seconds' worth and the
/// limit turns into long stalls rather than a rate.
pub const MIN_RATE: u64 = 1 << 10;
/// Far above any one connection's reach; keeps the bucket's numbers small.
pub const MAX_RATE: u64 = 1 << 40;
const HINT: &str = "write a rate like \"10MiB/s\", \"500KiB/s\" or \"100Mbit/s\"";

/// Parses a rate into bytes per second.
pub fn parse_rate(s: &str) -> Result<u64, String> {
    let text = s.trim();
    let Some(amount) = text.strip_suffix("/s") else {
        return Err(format!(
            "{s:?} is not a rate: it does not end in /s; {HINT}"
        ));
    };
    let amount = amount.trim_end();
    let lower = amount.to_ascii_lowercase();
    if let Some(number) = lower.strip_suffix("bit") {
        return bits(s, number);
    }
    parse_size(amount)
        .map_err(|why| format!("{s:?} is not a rate: {why}; {HINT}"))
        .and_then(|bytes| {
            if amount.ends_with(|c: char| c.is_ascii_digit()) {
                Err(format!(
                    "{s:?} is not a rate: it has no unit; {HINT} (bytes: B, KiB, MiB, GiB; bits: bit, Kbit, Mbit, Gbit)"
                ))
            } else {
                Ok(bytes)
            }
        })
}

/// `<number>[k|m|g]` of bits per second (decimal multiples), as bytes.
fn bits(input: &str, number: &str) -> Result<u64, String> {
    let number = number.trim_end();
    let (digits, scale) = match number.char_indices().last() {
        Some((i, 'k')) => (number.get(..i), 1_000),
        Some((i, 'm')) => (number.get(..i), 1_000_000),
        Some((i, 'g')) => (number.get(..i), 1_000_000_000),
        _ => (Some(number), 1),
    };
    digits
        .map(str::trim_end)
        .filter(|d| !d.is_empty() && d.bytes().all(|b| b.is_ascii_digit()))
        .and_then(|d| d.parse::<u64>().ok())
        .and_then(|n| n.checked_mul(scale))
        .map(|bits| bits / 8)
        .ok_or_else(|| format!("{input:?} is not a rate: the number of bits is not a whole number that fits; {HINT}"))
}

/// `16384` -> `16KiB/s`, `12500000` -> `100Mbit/s`: a binary byte unit
/// when one divides it, else a decimal bit unit, else bytes; exact, so it
/// parses back.
pub fn format_rate(bytes_per_sec: u64) -> String {
    let bytes = format_size(bytes_per_sec);
    if bytes_per_sec % 1024 == 0 {
        return format!("{bytes}/s");
    }
    let bits = u128::from(bytes_per_sec) * 8;
    let unit = [
        (1_000_000_000, "Gbit"),
        (1_000_000, "Mbit"),
        (1_000, "Kbit"),
    ]
    .into_iter()
    .find(|&(scale, _)| bits % scale == 0);
    match unit {
        Some((scale, name)) => format!("{}{name}/s", bits / scale),
        None => format!("{bytes}/s"),
    }
}

/// The section's `bandwidth_limit`, checked against [`MIN_RATE`] and [`MAX_RATE`].
pub(super) fn bandwidth_limit(section: &Section<'_>) -> Result<Option<u64>, ConfigError> {
    let Some(field) = section.get(KEY) else {
        return Ok(None);
    };
    let example = format!("{KEY} = \"10MiB/s\"");
    let text = field.string(&example)?;
    let rate = parse_rate(text).map_err(|why| field.error(why))?;
    if !(MIN_RATE..=MAX_RATE).contains(&rate) {
        return Err(field.error(format!(
            "{text:?} ({rate} bytes per second) is out of range; use {} to {}, like {example}, \
             or remove {KEY} for no limit",
            format_rate(MIN_RATE),
            format_rate(MAX_RATE)
        )));
    }
    Ok(Some(rate))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_parse_in_bytes_and_bits() {
        let cases = [
            ("10MiB/s", 10 << 20),
            ("10 MiB/s", 10 << 20),
            (" 500KiB/s ", 500 << 10),
            ("500k/s", 500 << 10),
            ("1GiB/s", 1 << 30),
            ("4096B/s", 4096),
            ("100Mbit/s", 12_500_000),
            ("100mbit/s", 12_500_000),
            ("8kbit/s", 1000),
            ("1Gbit/s", 125_000_000),
            ("8000bit/s", 1000),
        ];
        for (text, want) in cases {
            assert_eq!(parse_rate(text), Ok(want), "{text}");
        }
    }

    #[test]
    fn garbage_is_refused_with_the_input_quoted() {
        let cases = [
            ("10MiB", "does not end in /s"),
            ("10/s", "no unit"),
            ("1.5MiB/s", "fractions"),
            ("-1MiB/s", "negative"),
            ("MiB/s", "not a rate"),
            ("Mbit/s", "bits"),
            ("1.5Mbit/s", "bits"),
            ("10Xbit/s", "bits"),
            ("99999999999999999999Gbit/s", "bits"),
            ("10 furlongs/s", "not a rate"),
        ];
        for (text, why) in cases {
            let err = parse_rate(text).expect_err(text);
            assert!(err.contains(&format!("{text:?}")), "{err}");
            assert!(err.contains(why), "{text}: {err}");
        }
    }

    #[test]
    fn rates_format_back_to_themselves() {
        for rate in [MIN_RATE, 1536, 5 << 20, 12_500_000, 125, 1001, MAX_RATE] {
            assert_eq!(parse_rate(&format_rate(rate)), Ok(rate), "{rate}");
        }
        assert_eq!(format_rate(12_500_000), "100Mbit/s");
        assert_eq!(format_rate(5 << 20), "5MiB/s");
        assert_eq!(format_rate(1001), "1001B/s");
    }
}
