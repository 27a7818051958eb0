//! Writing to standard output without panicking on a closed pipe (`tidepool jobs | head`).

use std::io::Write;

/// Writes one line to standard output.
pub fn line(text: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{text}");
}

/// Milliseconds since the epoch as local-free ISO time (`2026-11-25T12:00:00`), UTC.
pub fn iso_time(ms: u64) -> String {
    tidepool_api::dates::iso_time(ms / 1000)
}

#[cfg(test)]
mod tests {
    #[test]
    fn iso_time_is_utc() {
        assert_eq!(super::iso_time(0), "1970-01-01T00:00:00");
        assert_eq!(super::iso_time(1_795_608_000_000), "2026-11-25T12:00:00");
    }
}
