//! Human units for config values: parsing and printing byte sizes (`16KiB`) and durations (`1m30s`).
//!
//! Errors are complete phrases that quote the input and say what to write instead, so callers
//! can put them after a key unchanged.

use std::time::Duration;

const SIZE_HINT: &str =
    "write a whole number of bytes with an optional unit, like 4096, 16KiB or 1MiB";
const DURATION_HINT: &str = "write a number with a unit, like 500ms, 5s, 10m or 1h";

/// Binary multiples, largest first so formatting picks the biggest unit that divides exactly.
const SIZE_UNITS: [(&str, u64); 4] = [
    ("TiB", 1 << 40),
    ("GiB", 1 << 30),
    ("MiB", 1 << 20),
    ("KiB", 1 << 10),
];

const NANOS_PER_MS: u128 = 1_000_000;
const NANOS_PER_SEC: u128 = 1_000 * NANOS_PER_MS;

/// Duration units, largest first: compound durations must use them in this order.
const DURATION_UNITS: [(&str, u128); 7] = [
    ("d", 86_400 * NANOS_PER_SEC),
    ("h", 3_600 * NANOS_PER_SEC),
    ("m", 60 * NANOS_PER_SEC),
    ("s", NANOS_PER_SEC),
    ("ms", NANOS_PER_MS),
    ("us", 1_000),
    ("ns", 1),
];

/// Parses `4096`, `4096B`, `16K`, `16k`, `16KB`, `16KiB`, `1M`, `2GiB`, ...
///
/// K, KB and KiB all mean 1024, as in HAProxy and NGINX: nobody sizes buffers in powers of ten.
/// Units are case-insensitive. Fractions and negative numbers are rejected, and so is anything
/// that does not fit in a `u64`.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let text = s.trim();
    let (number, rest) = split_leading(text, |c| c.is_ascii_digit());
    let unit = rest.trim_start();
    if number.is_empty() {
        return Err(size_error(s, leading_problem(text), SIZE_HINT));
    }
    if unit.starts_with(['.', ',']) {
        return Err(size_error(
            s,
            Some("fractions are not supported"),
            "use a smaller unit instead, like 1536KiB for 1.5MiB",
        ));
    }
    let Some(scale) = size_scale(unit) else {
        return Err(size_error(s, None, SIZE_HINT));
    };
    number
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(scale))
        .ok_or_else(|| size_error(s, Some("too large"), SIZE_HINT))
}

fn size_scale(unit: &str) -> Option<u64> {
    let scale = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        "t" | "tb" | "tib" => 1 << 40,
        _ => return None,
    };
    Some(scale)
}

fn size_error(input: &str, why: Option<&str>, hint: &str) -> String {
    match why {
        Some(why) => format!("{input:?} is not a size: {why}; {hint}"),
        None => format!("{input:?} is not a size; {hint}"),
    }
}

/// Parses `500ms`, `5s`, `10m`, `1h`, `1d`, and compounds like `1m30s` or `1h 30m`.
///
/// A bare number is rejected ("missing unit") because `5` could mean seconds or milliseconds
/// and guessing wrong is a silent 1000x error. `us` and `ns` are accepted too so that
/// [`format_duration`] output always parses back.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let mut rest = s.trim();
    if rest.is_empty() {
        return Err(duration_error(s, Some("empty"), DURATION_HINT));
    }
    let mut total: u128 = 0;
    let mut smallest_so_far = None;
    while !rest.is_empty() {
        let (nanos, unit_index, after) = duration_part(s, rest)?;
        if smallest_so_far.is_some_and(|previous| unit_index <= previous) {
            return Err(duration_error(
                s,
                Some("units must go from largest to smallest, each at most once"),
                "write it like 1h30m or 1m30s",
            ));
        }
        smallest_so_far = Some(unit_index);
        total = total
            .checked_add(nanos)
            .ok_or_else(|| duration_error(s, Some("too large"), DURATION_HINT))?;
        rest = after.trim_start();
    }
    duration_from_nanos(total).ok_or_else(|| duration_error(s, Some("too large"), DURATION_HINT))
}

/// One `<number><unit>` part at the start of `text`: its length in nanoseconds, the unit's
/// index in [`DURATION_UNITS`], and the text after it.
fn duration_part<'a>(input: &str, text: &'a str) -> Result<(u128, usize, &'a str), String> {
    let (number, rest) = split_leading(text, |c| c.is_ascii_digit());
    if number.is_empty() {
        return Err(duration_error(input, leading_problem(text), DURATION_HINT));
    }
    let rest = rest.trim_start();
    let (unit, after) = split_leading(rest, |c| c.is_ascii_alphabetic());
    if rest.starts_with(['.', ',']) {
        return Err(duration_error(
            input,
            Some("fractions are not supported"),
            "use a smaller unit instead, like 1500ms for 1.5s",
        ));
    }
    if unit.is_empty() {
        return Err(duration_error(
            input,
            Some("missing unit"),
            &format!(
                "write {number}s for seconds or {number}ms for milliseconds (units: d, h, m, s, ms, us, ns)"
            ),
        ));
    }
    let Some((index, scale)) = DURATION_UNITS
        .iter()
        .enumerate()
        .find_map(|(index, &(name, scale))| (name == unit).then_some((index, scale)))
    else {
        return Err(duration_error(input, None, DURATION_HINT));
    };
    let nanos = number
        .parse::<u128>()
        .ok()
        .and_then(|n| n.checked_mul(scale))
        .ok_or_else(|| duration_error(input, Some("too large"), DURATION_HINT))?;
    Ok((nanos, index, after))
}

fn duration_from_nanos(nanos: u128) -> Option<Duration> {
    let secs = u64::try_from(nanos / NANOS_PER_SEC).ok()?;
    let subsec = u32::try_from(nanos % NANOS_PER_SEC).ok()?;
    Some(Duration::new(secs, subsec))
}

fn duration_error(input: &str, why: Option<&str>, hint: &str) -> String {
    match why {
        Some(why) => format!("{input:?} is not a duration: {why}; {hint}"),
        None => format!("{input:?} is not a duration; {hint}"),
    }
}

/// Why a number could not be read at the start of `text`, when there is a more useful answer
/// than "not a size / duration".
fn leading_problem(text: &str) -> Option<&'static str> {
    if text.is_empty() {
        Some("empty")
    } else if text.starts_with('-') {
        Some("negative values are not allowed")
    } else {
        None
    }
}

/// Splits `text` after its longest prefix of characters matching `keep`.
fn split_leading(text: &str, keep: impl Fn(char) -> bool) -> (&str, &str) {
    let end = text.find(|c: char| !keep(c)).unwrap_or(text.len());
    text.split_at_checked(end).unwrap_or((text, ""))
}

/// `16384` -> `16KiB`, `1536` -> `1536B`: the largest binary unit that divides exactly, so the
/// output parses back to the same number.
pub fn format_size(bytes: u64) -> String {
    SIZE_UNITS
        .iter()
        .find(|&&(_, scale)| bytes != 0 && bytes % scale == 0)
        .map_or_else(
            || format!("{bytes}B"),
            |&(name, scale)| format!("{}{name}", bytes / scale),
        )
}

/// `90s` -> `1m30s`, `500ms` -> `500ms`, zero -> `0s`; exact, so the output parses back.
pub fn format_duration(d: Duration) -> String {
    let mut rest = d.as_nanos();
    if rest == 0 {
        return "0s".to_owned();
    }
    let mut out = String::new();
    for (name, scale) in DURATION_UNITS {
        let count = rest / scale;
        if count > 0 {
            out.push_str(&format!("{count}{name}"));
        }
        rest %= scale;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_in_every_spelling() {
        let cases = [
            ("4096", 4096),
            ("4096B", 4096),
            ("4096b", 4096),
            ("16K", 16384),
            ("16k", 16384),
            ("16KB", 16384),
            ("16kb", 16384),
            ("16KiB", 16384),
            ("16kib", 16384),
            ("16 KiB", 16384),
            (" 1MiB ", 1 << 20),
            ("1M", 1 << 20),
            ("2GiB", 2 << 30),
            ("3T", 3 << 40),
            ("0", 0),
        ];
        for (text, want) in cases {
            assert_eq!(parse_size(text), Ok(want), "{text}");
        }
    }

    #[test]
    fn sizes_reject_garbage_with_the_input_quoted() {
        let cases = [
            ("", "empty"),
            ("KiB", "not a size"),
            ("5x", "not a size"),
            ("-5K", "negative"),
            ("1.5MiB", "fractions"),
            ("16 Ki B", "not a size"),
            ("99999999999999999999GiB", "too large"),
            ("16777216TiB", "too large"),
            ("18446744073709551616", "too large"),
        ];
        for (text, why) in cases {
            let err = parse_size(text).expect_err(text);
            assert!(err.contains(&format!("{text:?}")), "{err}");
            assert!(err.contains(why), "{text}: {err}");
        }
    }

    #[test]
    fn durations_parse_single_and_compound() {
        let cases = [
            ("500ms", Duration::from_millis(500)),
            ("5s", Duration::from_secs(5)),
            ("10m", Duration::from_secs(600)),
            ("1h", Duration::from_secs(3600)),
            ("1d", Duration::from_secs(86_400)),
            ("1m30s", Duration::from_secs(90)),
            ("1h 30m", Duration::from_secs(5400)),
            (" 2s 5ms ", Duration::from_millis(2005)),
            ("5 s", Duration::from_secs(5)),
            ("0s", Duration::ZERO),
            ("90s", Duration::from_secs(90)),
            ("7us", Duration::from_micros(7)),
            ("1s1ns", Duration::new(1, 1)),
        ];
        for (text, want) in cases {
            assert_eq!(parse_duration(text), Ok(want), "{text}");
        }
    }

    #[test]
    fn durations_reject_garbage_with_the_input_quoted() {
        let cases = [
            ("", "empty"),
            ("5", "missing unit"),
            ("5x", "not a duration"),
            ("-5s", "negative"),
            ("1.5s", "fractions"),
            ("s", "not a duration"),
            ("5S", "not a duration"),
            ("1s1m", "largest to smallest"),
            ("1s1s", "largest to smallest"),
            ("1m 30", "missing unit"),
            ("99999999999999999999999999999999999999999d", "too large"),
            ("999999999999999999999d", "too large"),
        ];
        for (text, why) in cases {
            let err = parse_duration(text).expect_err(text);
            assert!(err.contains(&format!("{text:?}")), "{err}");
            assert!(err.contains(why), "{text}: {err}");
        }
    }

    #[test]
    fn the_documented_garbage_is_rejected() {
        for text in ["", "5", "5x", "-5s", "1.5s", "99999999999999999999GiB"] {
            assert!(parse_duration(text).is_err(), "duration {text:?}");
            if text != "5" {
                assert!(parse_size(text).is_err(), "size {text:?}");
            }
        }
        assert_eq!(parse_size("5"), Ok(5), "a bare size is bytes");
    }

    #[test]
    fn unknown_duration_unit_message_matches_the_documented_form() {
        assert_eq!(
            parse_duration("5x").unwrap_err(),
            r#""5x" is not a duration; write a number with a unit, like 500ms, 5s, 10m or 1h"#
        );
    }

    #[test]
    fn sizes_format_in_the_largest_exact_unit() {
        assert_eq!(format_size(16384), "16KiB");
        assert_eq!(format_size(1536), "1536B");
        assert_eq!(format_size(1 << 20), "1MiB");
        assert_eq!(format_size(3 << 30), "3GiB");
        assert_eq!(format_size(0), "0B");
        assert_eq!(format_size(u64::MAX), format!("{}B", u64::MAX));
    }

    #[test]
    fn durations_format_compound() {
        assert_eq!(format_duration(Duration::from_secs(90)), "1m30s");
        assert_eq!(format_duration(Duration::from_millis(500)), "500ms");
        assert_eq!(format_duration(Duration::ZERO), "0s");
        assert_eq!(format_duration(Duration::from_secs(86_400 * 7)), "7d");
        assert_eq!(format_duration(Duration::from_millis(3_601_001)), "1h1s1ms");
        assert_eq!(format_duration(Duration::new(0, 1_500)), "1us500ns");
    }

    #[test]
    fn sizes_round_trip() {
        let samples = [
            0,
            1,
            1023,
            1024,
            1536,
            16384,
            1 << 20,
            5 << 30,
            7 << 40,
            u64::MAX,
        ];
        for bytes in samples {
            assert_eq!(parse_size(&format_size(bytes)), Ok(bytes), "{bytes}");
        }
    }

    #[test]
    fn durations_round_trip() {
        let samples = [
            Duration::ZERO,
            Duration::from_millis(1),
            Duration::from_millis(1500),
            Duration::from_secs(90),
            Duration::from_secs(86_400 * 400 + 61),
            Duration::new(12, 345_678_901),
            Duration::MAX,
        ];
        for d in samples {
            assert_eq!(parse_duration(&format_duration(d)), Ok(d), "{d:?}");
        }
    }
}
