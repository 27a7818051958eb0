//! Writing to standard output without panicking on a closed pipe (`tidepool jobs | head`).

use std::io::Write;

/// Writes one line to standard output.
pub fn line(text: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{text}");
}

/// Milliseconds since the epoch as local-free ISO time (`2026-11-25T12:00:00`), UTC.
pub fn iso_time(ms: u64) -> String {
    let secs = ms / 1000;
    let days = secs / 86400;
    let (h, m, s) = (secs / 3600 % 24, secs / 60 % 60, secs % 60);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let mo = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(mo <= 2);
    format!("{y:04}-{mo:02}-{d:02}T{h:02}:{m:02}:{s:02}")
}

#[cfg(test)]
mod tests {
    #[test]
    fn iso_time_is_utc() {
        assert_eq!(super::iso_time(0), "1970-01-01T00:00:00");
        assert_eq!(super::iso_time(1_795_608_000_000), "2026-11-25T12:00:00");
    }
}
