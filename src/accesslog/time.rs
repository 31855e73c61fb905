//! RFC 3339 timestamps (UTC, milliseconds) from `SystemTime`, written by hand
//! so the access log needs no date crate: one line costs a few integer
//! divisions and no allocation.

use std::time::{SystemTime, UNIX_EPOCH};

/// Appends `t` as `YYYY-MM-DDTHH:MM:SS.mmmZ`. A time before 1970 (a clock set
/// far back) is written as the epoch rather than failing the line.
pub(super) fn push_rfc3339_ms(t: SystemTime, out: &mut String) {
    let since = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs();
    let (year, month, day) = civil_from_days(secs / 86_400);
    let of_day = secs % 86_400;
    let (hour, minute, second) = (of_day / 3600, of_day / 60 % 60, of_day % 60);
    let ms = u64::from(since.subsec_millis());
    push_digits(out, year, 4);
    // The rest has a fixed width: made in one array, appended in one copy.
    let d = |v: u64| b'0' + (v % 10) as u8;
    let (month, day) = (u64::from(month), u64::from(day));
    #[rustfmt::skip]
    let rest = [
        b'-', d(month / 10), d(month), b'-', d(day / 10), d(day),
        b'T', d(hour / 10), d(hour), b':', d(minute / 10), d(minute), b':', d(second / 10), d(second),
        b'.', d(ms / 100), d(ms / 10), d(ms), b'Z',
    ];
    out.push_str(std::str::from_utf8(&rest).unwrap_or_default());
}

/// Days since 1970-01-01 to (year, month 1..=12, day 1..=31) in the proleptic
/// Gregorian calendar: Howard Hinnant's `civil_from_days`, restricted to
/// days >= 0 so it stays in unsigned arithmetic. Eras are 400-year cycles
/// (146097 days) counted from 0000-03-01, so the leap day ends a year.
pub(super) fn civil_from_days(days: u64) -> (u64, u8, u8) {
    // 719468 days from 0000-03-01 to 1970-01-01.
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z - era * 146_097; // [0, 146096]
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365; // [0, 399]
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100); // [0, 365], from March 1
    let mp = (5 * doy + 2) / 153; // [0, 11], March = 0
    let day = doy - (153 * mp + 2) / 5 + 1; // [1, 31]
    let month = if mp < 10 { mp + 3 } else { mp - 9 }; // [1, 12]
    let year = yoe + era * 400 + u64::from(month <= 2);
    // Both fit: day <= 31, month <= 12.
    (year, month as u8, day as u8)
}

/// Appends `v` in decimal, zero-padded to at least `width` digits (at most
/// 20): the digits are made on the stack and appended in one copy.
pub(super) fn push_digits(out: &mut String, v: u64, width: usize) {
    let mut buf = [b'0'; 20];
    let mut start = buf.len();
    let mut n = v;
    // A u64 has at most 20 digits, so the buffer never runs out.
    while let Some(i) = start.checked_sub(1) {
        if let Some(b) = buf.get_mut(i) {
            *b = b'0' + (n % 10) as u8;
        }
        start = i;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    let start = start.min(buf.len().saturating_sub(width));
    let digits = buf.get(start..).unwrap_or_default();
    out.push_str(std::str::from_utf8(digits).unwrap_or_default());
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn at(secs: u64, ms: u32) -> String {
        let mut s = String::new();
        let t = UNIX_EPOCH + Duration::from_secs(secs) + Duration::from_millis(u64::from(ms));
        push_rfc3339_ms(t, &mut s);
        s
    }

    #[test]
    fn known_timestamps() {
        // Values checked against `date -u -d @SECS +%Y-%m-%dT%H:%M:%S`.
        assert_eq!(at(0, 0), "1970-01-01T00:00:00.000Z");
        assert_eq!(at(951_782_400, 5), "2000-02-29T00:00:00.005Z"); // leap day of a /400 year
        assert_eq!(at(951_868_799, 999), "2000-02-29T23:59:59.999Z");
        assert_eq!(at(951_868_800, 0), "2000-03-01T00:00:00.000Z");
        assert_eq!(at(1_709_164_800, 0), "2024-02-29T00:00:00.000Z"); // leap day
        assert_eq!(at(1_709_251_199, 42), "2024-02-29T23:59:59.042Z");
        assert_eq!(at(1_677_628_800, 0), "2023-03-01T00:00:00.000Z"); // after 28 Feb, no leap
        assert_eq!(at(4_107_542_400, 0), "2100-03-01T00:00:00.000Z"); // 2100: not a leap year
        assert_eq!(at(4_107_542_399, 0), "2100-02-28T23:59:59.000Z");
        assert_eq!(at(1_796_560_496, 789), "2026-12-06T12:34:56.789Z");
        assert_eq!(at(1_735_689_599, 0), "2024-12-31T23:59:59.000Z"); // day 366 of a leap year
        assert_eq!(at(1_735_689_600, 0), "2025-01-01T00:00:00.000Z");
        assert_eq!(at(253_402_300_799, 999), "9999-12-31T23:59:59.999Z");
    }

    #[test]
    fn digits_padded_and_not() {
        let mut s = String::new();
        for (v, width) in [(0, 1), (7, 3), (42, 1), (1234, 2), (u64::MAX, 1), (5, 25)] {
            push_digits(&mut s, v, width);
            s.push(' ');
        }
        assert_eq!(
            s,
            format!("0 007 42 1234 {} {} ", u64::MAX, "0".repeat(19) + "5")
        );
    }

    #[test]
    fn before_the_epoch_is_the_epoch() {
        let mut s = String::new();
        push_rfc3339_ms(UNIX_EPOCH - Duration::from_secs(10), &mut s);
        assert_eq!(s, "1970-01-01T00:00:00.000Z");
    }

    #[test]
    fn every_day_of_four_centuries_round_trips() {
        // days_from_civil (the inverse, written independently) over 1970..2370
        // covers every kind of year boundary and leap rule.
        fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
            let y = if m <= 2 { y - 1 } else { y };
            let era = y.div_euclid(400);
            let yoe = y - era * 400;
            let mp = (m + 9) % 12;
            let doy = (153 * mp + 2) / 5 + d - 1;
            let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
            era * 146_097 + doe - 719_468
        }
        let mut prev = (1969, 12, 31);
        for days in 0..146_097u64 {
            let (y, m, d) = civil_from_days(days);
            let back = days_from_civil(y as i64, i64::from(m), i64::from(d));
            assert_eq!(back, days as i64, "{y}-{m}-{d}");
            assert!((y, m, d) > prev, "{y}-{m}-{d} after {prev:?}");
            prev = (y, m, d);
        }
    }
}
