//! Unix milliseconds to and from RFC 3339 (UTC), and short human durations.
//!
//! Dates use the proleptic Gregorian calendar, computed with the days-from-civil conversion
//! (eras of 400 years, years starting in March so that the leap day comes last).

const DAY_MS: i64 = 86_400_000;

/// Days since 1970-01-01 of the civil date `y-m-d`.
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400; // 0..=399
    let mp = (m + 9) % 12; // March = 0
    let doy = (153 * mp + 2) / 5 + d - 1; // 0..=365
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy; // 0..=146096
    era * 146_097 + doe - 719_468
}

/// The civil date (year, month, day) of `days` since 1970-01-01.
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097; // 0..=146096
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365; // 0..=399
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100); // 0..=365
    let mp = (5 * doy + 2) / 153; // 0..=11, March = 0
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + if m <= 2 { 1 } else { 0 };
    (y, m, d)
}

/// `unix_ms` as `YYYY-MM-DDTHH:MM:SS.mmmZ`.
pub fn rfc3339(unix_ms: u64) -> String {
    let ms = i64::try_from(unix_ms).unwrap_or(i64::MAX);
    let days = ms.div_euclid(DAY_MS);
    let in_day = ms.rem_euclid(DAY_MS);
    let (y, m, d) = civil_from_days(days);
    let (h, mi, s, milli) = (
        in_day / 3_600_000,
        in_day / 60_000 % 60,
        in_day / 1000 % 60,
        in_day % 1000,
    );
    format!("{y:04}-{m:02}-{d:02}T{h:02}:{mi:02}:{s:02}.{milli:03}Z")
}

/// Parses `--time-at`: unix milliseconds (digits only) or an RFC 3339 time such as
/// `2024-05-01T12:00:00Z`, `2024-05-01T12:00:00.250+02:00`.
pub fn parse_time(s: &str) -> Result<u64, String> {
    if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) {
        return s
            .parse::<u64>()
            .map_err(|_| format!("{s} is too large for unix milliseconds"));
    }
    let bad = || {
        format!(
            "cannot read {s:?} as a time: use unix milliseconds or RFC 3339, like 2024-05-01T12:00:00Z"
        )
    };
    let b = s.as_bytes();
    let num = |from: usize, len: usize| -> Result<i64, String> {
        let part = s.get(from..from + len).ok_or_else(bad)?;
        if !part.bytes().all(|c| c.is_ascii_digit()) {
            return Err(bad());
        }
        part.parse::<i64>().map_err(|_| bad())
    };
    if b.len() < 20
        || b[4] != b'-'
        || b[7] != b'-'
        || !matches!(b[10], b'T' | b't' | b' ')
        || b[13] != b':'
        || b[16] != b':'
    {
        return Err(bad());
    }
    let (y, mo, d, h, mi, sec) = (
        num(0, 4)?,
        num(5, 2)?,
        num(8, 2)?,
        num(11, 2)?,
        num(14, 2)?,
        num(17, 2)?,
    );
    let leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
    let month_days = [
        31,
        if leap { 29 } else { 28 },
        31,
        30,
        31,
        30,
        31,
        31,
        30,
        31,
        30,
        31,
    ];
    if !(1..=12).contains(&mo)
        || d < 1
        || d > month_days[(mo - 1) as usize]
        || h > 23
        || mi > 59
        || sec > 60
    {
        return Err(bad());
    }
    let mut at = 19;
    let mut milli = 0i64;
    if b[at] == b'.' {
        let start = at + 1;
        let mut end = start;
        while end < b.len() && b[end].is_ascii_digit() {
            end += 1;
        }
        if end == start {
            return Err(bad());
        }
        // Milliseconds: the first three digits, the rest dropped.
        let digits = &s[start..end.min(start + 3)];
        milli = digits.parse::<i64>().map_err(|_| bad())? * 10i64.pow(3 - digits.len() as u32);
        at = end;
    }
    let offset_min = match &s[at..] {
        "Z" | "z" => 0,
        rest if rest.len() == 6
            && matches!(rest.as_bytes()[0], b'+' | b'-')
            && rest.as_bytes()[3] == b':' =>
        {
            let oh = num(at + 1, 2)?;
            let om = num(at + 4, 2)?;
            if oh > 23 || om > 59 {
                return Err(bad());
            }
            let sign = if rest.as_bytes()[0] == b'-' { -1 } else { 1 };
            sign * (oh * 60 + om)
        }
        _ => return Err(bad()),
    };
    let days = days_from_civil(y, mo, d);
    let ms = days * DAY_MS + h * 3_600_000 + mi * 60_000 + sec.min(59) * 1000 + milli
        - offset_min * 60_000;
    u64::try_from(ms).map_err(|_| format!("{s} is before 1970"))
}

/// A duration in milliseconds, shortly: `250ms`, `59s`, `1h2m3s`, `3d4h`.
pub fn human(ms: u64) -> String {
    if ms < 1000 {
        return format!("{ms}ms");
    }
    let s = ms / 1000;
    let (d, h, m, sec) = (s / 86_400, s / 3600 % 24, s / 60 % 60, s % 60);
    let mut out = String::new();
    let parts = [(d, "d"), (h, "h"), (m, "m"), (sec, "s")];
    let first = parts.iter().position(|&(v, _)| v > 0).unwrap_or(3);
    // The two most significant units (three below a day), skipping zeros.
    let take = if d > 0 { 2 } else { 3 };
    for &(v, unit) in parts.iter().skip(first).take(take) {
        if v > 0 {
            out.push_str(&format!("{v}{unit}"));
        }
    }
    out
}

/// "in 5m" or "expired 5m ago" for an expiry at `expires_at`, seen at `now`.
pub fn remaining(expires_at: u64, now: u64) -> String {
    if expires_at > now {
        format!("in {}", human(expires_at - now))
    } else {
        format!("expired {} ago", human(now - expires_at))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_dates() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339(951_782_400_000), "2000-02-29T00:00:00.000Z");
        assert_eq!(rfc3339(1_700_000_000_123), "2023-11-14T22:13:20.123Z");
        assert_eq!(rfc3339(4_102_444_799_999), "2099-12-31T23:59:59.999Z");
        assert_eq!(
            parse_time("2023-11-14T22:13:20.123Z").unwrap(),
            1_700_000_000_123
        );
        assert_eq!(
            parse_time("2023-11-14T23:13:20+01:00").unwrap(),
            1_700_000_000_000
        );
        assert_eq!(
            parse_time("2023-11-14T22:13:20.5Z").unwrap(),
            1_700_000_000_500
        );
        assert_eq!(parse_time("1700000000000").unwrap(), 1_700_000_000_000);
        for bad in [
            "",
            "2023-13-01T00:00:00Z",
            "2023-02-29T00:00:00Z",
            "2023-11-14T22:13:20",
            "yesterday",
            "1969-12-31T23:59:59Z",
        ] {
            assert!(parse_time(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn every_day_roundtrips() {
        for days in (-800_000..800_000).step_by(37) {
            let (y, m, d) = civil_from_days(days);
            assert_eq!(days_from_civil(y, m, d), days);
        }
        for ms in (0..5_000_000_000_000u64).step_by(123_456_789_011) {
            assert_eq!(parse_time(&rfc3339(ms)).unwrap(), ms);
        }
    }

    #[test]
    fn durations() {
        assert_eq!(human(250), "250ms");
        assert_eq!(human(59_000), "59s");
        assert_eq!(human(3_723_000), "1h2m3s");
        assert_eq!(human(3_600_000), "1h");
        assert_eq!(human(2 * 86_400_000 + 3_600_000 + 5000), "2d1h");
        assert_eq!(remaining(10_000, 4_000), "in 6s");
        assert_eq!(remaining(4_000, 10_000), "expired 6s ago");
    }
}
