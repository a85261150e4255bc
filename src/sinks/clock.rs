//! Timestamps as the sinks write them: RFC 3339 in UTC with a `Z`, and UTC calendar days.
//!
//! Pure functions over `SystemTime`; no clock reads, so tests pin exact strings.

use std::fmt::Write as _;
use std::time::{SystemTime, UNIX_EPOCH};

use time::{Date, Month, OffsetDateTime};

fn utc(t: SystemTime) -> OffsetDateTime {
    let nanos = match t.duration_since(UNIX_EPOCH) {
        Ok(d) => d.as_nanos() as i128,
        Err(e) => -(e.duration().as_nanos() as i128),
    };
    OffsetDateTime::from_unix_timestamp_nanos(nanos).unwrap_or(OffsetDateTime::UNIX_EPOCH)
}

/// `2025-01-31T09:05:03.123Z`: millisecond precision, always `Z` (Langfuse drops a
/// completion start time without a zone).
pub fn rfc3339_millis(t: SystemTime) -> String {
    let mut out = String::with_capacity(24);
    push_rfc3339_millis(&mut out, t);
    out
}

/// `2025-01-31T09:05:03.123456Z`: microsecond precision, for a time compared with the
/// span's own start and end, which OTLP carries in nanoseconds (cut to milliseconds, a first
/// token 0.4 ms after the start read as before it).
pub fn rfc3339_micros(t: SystemTime) -> String {
    let mut out = String::with_capacity(27);
    push_rfc3339(&mut out, t, 6);
    out
}

/// Appends [`rfc3339_millis`] to `out` (no allocation of its own).
pub fn push_rfc3339_millis(out: &mut String, t: SystemTime) {
    push_rfc3339(out, t, 3);
}

/// RFC 3339 in UTC with `fraction` digits of the second (3 or 6).
fn push_rfc3339(out: &mut String, t: SystemTime, fraction: u32) {
    let d = utc(t);
    push_date(out, &d);
    out.push('T');
    push_digits(out, u32::from(d.hour()), 2);
    out.push(':');
    push_digits(out, u32::from(d.minute()), 2);
    out.push(':');
    push_digits(out, u32::from(d.second()), 2);
    out.push('.');
    let fraction = fraction.min(9);
    push_digits(out, d.nanosecond() / 10u32.pow(9 - fraction), fraction);
    out.push('Z');
}

/// The UTC calendar day of `t`, as a date.
pub fn utc_date(t: SystemTime) -> Date {
    utc(t).date()
}

/// The UTC calendar day, `YYYY-MM-DD`: the ledger's `day` and `--since` use it.
pub fn utc_day(t: SystemTime) -> String {
    let mut out = String::with_capacity(10);
    push_date(&mut out, &utc(t));
    out
}

fn push_date(out: &mut String, d: &OffsetDateTime) {
    let year = d.year();
    if (0..=9999).contains(&year) {
        push_digits(out, year as u32, 4);
    } else {
        let _ = write!(out, "{year:04}");
    }
    out.push('-');
    push_digits(out, u32::from(u8::from(d.month())), 2);
    out.push('-');
    push_digits(out, u32::from(d.day()), 2);
}

/// `n` as exactly `width` decimal digits (zero-padded); timestamps are on every record, and
/// this is several times cheaper than `write!`.
fn push_digits(out: &mut String, n: u32, width: u32) {
    let mut div = 10u32.pow(width - 1);
    while div > 0 {
        out.push(char::from(b'0' + ((n / div) % 10) as u8));
        div /= 10;
    }
}

/// Parses a strict `YYYY-MM-DD` that names a real date (no 2025-02-30).
pub fn parse_day(text: &str) -> Option<Date> {
    let bytes = text.as_bytes();
    if bytes.len() != 10 || bytes[4] != b'-' || bytes[7] != b'-' {
        return None;
    }
    let digits = |range: std::ops::Range<usize>| -> Option<u32> {
        let part = text.get(range)?;
        if !part.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        part.parse().ok()
    };
    let year = digits(0..4)? as i32;
    let month = Month::try_from(digits(5..7)? as u8).ok()?;
    let day = digits(8..10)? as u8;
    Date::from_calendar_date(year, month, day).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn formats_utc_with_millis() {
        let t = UNIX_EPOCH + Duration::from_millis(1_738_314_303_123);
        assert_eq!(rfc3339_millis(t), "2025-01-31T09:05:03.123Z");
        assert_eq!(utc_day(t), "2025-01-31");
        assert_eq!(rfc3339_millis(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        let t = UNIX_EPOCH + Duration::from_nanos(1_738_314_303_123_456_789);
        assert_eq!(rfc3339_micros(t), "2025-01-31T09:05:03.123456Z");
        assert_eq!(rfc3339_millis(t), "2025-01-31T09:05:03.123Z");
    }

    #[test]
    fn days_must_be_real() {
        assert!(parse_day("2025-01-31").is_some());
        assert!(parse_day("2024-02-29").is_some());
        for bad in [
            "2025-02-30",
            "2025-13-01",
            "2025-1-01",
            "25-01-01xx",
            "2025/01/01",
            "+025-01-01",
            "",
        ] {
            assert!(parse_day(bad).is_none(), "{bad}");
        }
    }
}
