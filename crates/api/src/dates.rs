//! Times as they are written on the wire: UTC calendar dates of seconds since the epoch, as
//! ISO 8601 (the command line's tables) and as HTTP's IMF-fixdate (the `date` header).

/// A moment in UTC, taken apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UtcTime {
    /// The year (proleptic Gregorian).
    pub year: i64,
    /// 1 to 12.
    pub month: u32,
    /// 1 to 31.
    pub day: u32,
    /// 0 to 23.
    pub hour: u32,
    /// 0 to 59.
    pub minute: u32,
    /// 0 to 59.
    pub second: u32,
    /// 0 for Monday to 6 for Sunday.
    pub weekday: u32,
}

/// `secs` since 1970-01-01T00:00:00Z, taken apart.
pub fn utc(secs: u64) -> UtcTime {
    let days = secs / 86_400;
    let of_day = (secs % 86_400) as u32;
    // Days to a civil date, counted from 0000-03-01 in eras of 400 years (Howard Hinnant's
    // algorithm): the leap day falls at the end of each counted year.
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z.rem_euclid(146_097);
    let year_of_era = (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let shifted_month = (5 * day_of_year + 2) / 153;
    let day = (day_of_year - (153 * shifted_month + 2) / 5 + 1) as u32;
    let month = if shifted_month < 10 { shifted_month + 3 } else { shifted_month - 9 } as u32;
    UtcTime {
        year: year_of_era + era * 400 + i64::from(month <= 2),
        month,
        day,
        hour: of_day / 3600,
        minute: of_day / 60 % 60,
        second: of_day % 60,
        // 1970-01-01 was a Thursday.
        weekday: ((days + 3) % 7) as u32,
    }
}

/// Seconds since the epoch of a UTC civil date and time (the inverse of [`utc`]).
pub fn from_civil(year: i64, month: u32, day: u32, hour: u32, minute: u32, second: u32) -> Option<u64> {
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) || hour > 23 || minute > 59 || second > 59 {
        return None;
    }
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let year_of_era = y.rem_euclid(400);
    let shifted_month = i64::from(if month > 2 { month - 3 } else { month + 9 });
    let day_of_year = (153 * shifted_month + 2) / 5 + i64::from(day) - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    let days = era * 146_097 + day_of_era - 719_468;
    let secs = days * 86_400 + i64::from(hour * 3600 + minute * 60 + second);
    let back = utc(u64::try_from(secs).ok()?);
    (back.day == day && back.month == month).then_some(secs as u64)
}

/// Reads a time as Slurm's `-S`/`-E` take it: `YYYY-MM-DD[THH:MM[:SS]]` (UTC), `now`,
/// `today` or `midnight` (this day's start); seconds since the epoch.
pub fn parse_time(text: &str, now_secs: u64) -> Option<u64> {
    match text {
        "now" => return Some(now_secs),
        "today" | "midnight" => return Some(now_secs - now_secs % 86_400),
        _ => {}
    }
    let (date, time) = text.split_once('T').unwrap_or((text, "00:00:00"));
    let d: Vec<&str> = date.split('-').collect();
    let t: Vec<&str> = time.split(':').collect();
    if d.len() != 3 || !(2..=3).contains(&t.len()) {
        return None;
    }
    let number = |s: &str| s.parse::<u32>().ok();
    from_civil(d[0].parse().ok()?, number(d[1])?, number(d[2])?, number(t[0])?, number(t[1])?, t.get(2).map_or(Some(0), |s| number(s))?)
}

/// `secs` since the epoch as `2026-11-25T12:00:00` (UTC, no zone written).
pub fn iso_time(secs: u64) -> String {
    let t = utc(secs);
    format!("{:04}-{:02}-{:02}T{:02}:{:02}:{:02}", t.year, t.month, t.day, t.hour, t.minute, t.second)
}

/// `secs` since the epoch as HTTP writes a date: `Sun, 06 Nov 1994 08:49:37 GMT`.
pub fn http_date(secs: u64) -> String {
    const DAYS: [&str; 7] = ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"];
    const MONTHS: [&str; 12] = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"];
    let t = utc(secs);
    format!(
        "{}, {:02} {} {:04} {:02}:{:02}:{:02} GMT",
        DAYS[t.weekday as usize],
        t.day,
        MONTHS[(t.month - 1) as usize],
        t.year,
        t.hour,
        t.minute,
        t.second
    )
}

/// Milliseconds since the Unix epoch by the system clock (0 if it reads before the epoch).
pub fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_read_as_slurm_takes_them_and_round_trip() {
        let t = parse_time("2026-11-25T12:00:00", 0).unwrap();
        assert_eq!(iso_time(t), "2026-11-25T12:00:00");
        assert_eq!(parse_time("2026-11-25T12:00", 0), Some(t));
        assert_eq!(parse_time("2026-11-25", 0), Some(t - 12 * 3600));
        assert_eq!(parse_time("2024-02-29", 0).map(iso_time).as_deref(), Some("2024-02-29T00:00:00"));
        assert_eq!(parse_time("midnight", t + 5), Some(t - 12 * 3600));
        for bad in ["2026-02-30", "2026-13-01", "yesterday", "2026-11-25T25:00", "12:00"] {
            assert_eq!(parse_time(bad, t), None, "{bad}");
        }
    }

    #[test]
    fn iso_times_are_utc() {
        assert_eq!(iso_time(0), "1970-01-01T00:00:00");
        assert_eq!(iso_time(1_795_608_000), "2026-11-25T12:00:00");
    }

    #[test]
    fn http_dates_are_imf_fixdates() {
        assert_eq!(http_date(784_111_777), "Sun, 06 Nov 1994 08:49:37 GMT");
        assert_eq!(http_date(0), "Thu, 01 Jan 1970 00:00:00 GMT");
        assert_eq!(http_date(951_782_400), "Tue, 29 Feb 2000 00:00:00 GMT");
        assert_eq!(http_date(1_798_761_599), "Thu, 31 Dec 2026 23:59:59 GMT");
    }
}
