//! Resource vectors and the parsers of sizes (`4G`) and durations (`1-02:00:00`).

use std::fmt;

/// How many named countable resources (`fpga`, `npu`, ...) one cluster tracks.
pub const MAX_NAMED: usize = 4;

/// What a task asks for or a node offers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Hash)]
pub struct Resources {
    /// CPU in thousandths of a core.
    pub cpu_millis: u64,
    /// Memory in bytes.
    pub mem_bytes: u64,
    /// Whole GPUs.
    pub n_gpus: u32,
    /// Named countable resources, by the slot the cluster gave each name.
    pub named: [u64; MAX_NAMED],
}

impl Resources {
    /// Only CPU, in whole cores.
    pub fn cores(n: u64) -> Resources {
        Resources { cpu_millis: n * 1000, ..Resources::default() }
    }

    /// True when it asks for GPUs or a named resource, not only CPU and memory.
    pub fn has_devices(&self) -> bool {
        self.n_gpus > 0 || self.named.iter().any(|v| *v > 0)
    }

    /// True when `other` fits inside `self`.
    pub fn fits(&self, other: &Resources) -> bool {
        other.cpu_millis <= self.cpu_millis
            && other.mem_bytes <= self.mem_bytes
            && other.n_gpus <= self.n_gpus
            && self.named.iter().zip(other.named.iter()).all(|(have, want)| want <= have)
    }

    /// `self - other`, saturating at zero.
    pub fn minus(&self, other: &Resources) -> Resources {
        let mut named = self.named;
        for (n, o) in named.iter_mut().zip(other.named.iter()) {
            *n = n.saturating_sub(*o);
        }
        Resources {
            cpu_millis: self.cpu_millis.saturating_sub(other.cpu_millis),
            mem_bytes: self.mem_bytes.saturating_sub(other.mem_bytes),
            n_gpus: self.n_gpus.saturating_sub(other.n_gpus),
            named,
        }
    }

    /// `self + other`.
    pub fn plus(&self, other: &Resources) -> Resources {
        let mut named = self.named;
        for (n, o) in named.iter_mut().zip(other.named.iter()) {
            *n += *o;
        }
        Resources {
            cpu_millis: self.cpu_millis + other.cpu_millis,
            mem_bytes: self.mem_bytes + other.mem_bytes,
            n_gpus: self.n_gpus + other.n_gpus,
            named,
        }
    }

    /// `self` times `n`.
    pub fn times(&self, n: u64) -> Resources {
        let mut named = self.named;
        for v in named.iter_mut() {
            *v *= n;
        }
        Resources {
            cpu_millis: self.cpu_millis * n,
            mem_bytes: self.mem_bytes * n,
            n_gpus: self.n_gpus * n as u32,
            named,
        }
    }
}

/// As a sentence reads it: `16 cores and 4G memory and 1 GPUs`.
impl fmt::Display for Resources {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} cores", format_cores(self.cpu_millis))?;
        if self.mem_bytes > 0 {
            write!(f, " and {} memory", format_bytes(self.mem_bytes))?;
        }
        if self.n_gpus > 0 {
            write!(f, " and {} GPUs", self.n_gpus)?;
        }
        Ok(())
    }
}

/// Millicores as a user reads them: `2`, `0.5`.
pub fn format_cores(cpu_millis: u64) -> String {
    if cpu_millis.is_multiple_of(1000) {
        format!("{}", cpu_millis / 1000)
    } else {
        format!("{:.3}", cpu_millis as f64 / 1000.0)
            .trim_end_matches('0')
            .to_string()
    }
}

/// Bytes as Slurm prints them: `512M`, `4G`.
pub fn format_bytes(bytes: u64) -> String {
    const UNITS: [(&str, u64); 4] = [("T", 1 << 40), ("G", 1 << 30), ("M", 1 << 20), ("K", 1 << 10)];
    for (suffix, unit) in UNITS {
        if bytes >= unit {
            let value = bytes as f64 / unit as f64;
            return if bytes.is_multiple_of(unit) {
                format!("{}{}", bytes / unit, suffix)
            } else {
                format!("{value:.1}{suffix}")
            };
        }
    }
    format!("{bytes}")
}

/// Parses a memory size the way Slurm reads `--mem`: a bare number is megabytes; suffixes
/// K, M, G, T (binary, case-insensitive, an optional trailing `B` or `iB`).
pub fn parse_mem_size(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let digits_end = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, suffix) = text.split_at(digits_end);
    let value: f64 = number
        .parse()
        .map_err(|_| format!("'{text}' is not a size (examples: 500M, 4G, 1.5T)"))?;
    let unit: u64 = match suffix.to_ascii_uppercase().trim_end_matches("IB").trim_end_matches('B') {
        "" | "M" => 1 << 20,
        "K" => 1 << 10,
        "G" => 1 << 30,
        "T" => 1 << 40,
        _ => {
            return Err(format!(
                "'{text}' has an unknown unit '{suffix}' (use K, M, G or T)"
            ))
        }
    };
    if suffix.is_empty() && text.is_empty() {
        return Err("empty size".to_string());
    }
    Ok((value * unit as f64).round() as u64)
}

/// Parses a time limit the way Slurm reads `--time`: `MIN`, `MIN:SEC`, `HH:MM:SS`, `D-HH`,
/// `D-HH:MM`, `D-HH:MM:SS`; `0`, `infinite` and `unlimited` mean none. Returns seconds.
pub fn parse_time_limit(text: &str) -> Result<Option<u64>, String> {
    let text = text.trim();
    let bad = || {
        format!("'{text}' is not a time limit (examples: 30, 2:00:00, 1-12:00:00)")
    };
    if text.eq_ignore_ascii_case("infinite") || text.eq_ignore_ascii_case("unlimited") {
        return Ok(None);
    }
    let number = |s: &str| -> Result<u64, String> {
        // Nine digits at most, so that no sum below can overflow.
        if s.is_empty() || s.len() > 9 || !s.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad());
        }
        s.parse::<u64>().map_err(|_| bad())
    };
    let (days, rest) = match text.split_once('-') {
        Some((d, rest)) => (Some(number(d)?), rest),
        None => (None, text),
    };
    let parts: Vec<&str> = rest.split(':').collect();
    let seconds = match (days, parts.as_slice()) {
        (None, [m]) => number(m)? * 60,
        (None, [m, s]) => number(m)? * 60 + number(s)?,
        (None, [h, m, s]) => number(h)? * 3600 + number(m)? * 60 + number(s)?,
        (Some(d), [h]) => d * 86400 + number(h)? * 3600,
        (Some(d), [h, m]) => d * 86400 + number(h)? * 3600 + number(m)? * 60,
        (Some(d), [h, m, s]) => d * 86400 + number(h)? * 3600 + number(m)? * 60 + number(s)?,
        _ => return Err(bad()),
    };
    Ok(if seconds == 0 { None } else { Some(seconds) })
}

/// Formats seconds as Slurm prints elapsed times: `MM:SS`, `HH:MM:SS`, `D-HH:MM:SS`.
pub fn format_elapsed(seconds: u64) -> String {
    let (d, h, m, s) = (seconds / 86400, seconds / 3600 % 24, seconds / 60 % 60, seconds % 60);
    if d > 0 {
        format!("{d}-{h:02}:{m:02}:{s:02}")
    } else {
        format!("{h:02}:{m:02}:{s:02}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_read_like_slurm() {
        assert_eq!(parse_mem_size("100"), Ok(100 << 20));
        assert_eq!(parse_mem_size("4G"), Ok(4 << 30));
        assert_eq!(parse_mem_size("4gb"), Ok(4 << 30));
        assert_eq!(parse_mem_size("512K"), Ok(512 << 10));
        assert_eq!(parse_mem_size("1.5G"), Ok(3 << 29));
        assert!(parse_mem_size("4X").is_err());
        assert!(parse_mem_size("").is_err());
        assert!(parse_mem_size("G").is_err());
    }

    #[test]
    fn time_limits_read_like_slurm() {
        assert_eq!(parse_time_limit("30"), Ok(Some(1800)));
        assert_eq!(parse_time_limit("1:30"), Ok(Some(90)));
        assert_eq!(parse_time_limit("2:00:00"), Ok(Some(7200)));
        assert_eq!(parse_time_limit("1-0"), Ok(Some(86400)));
        assert_eq!(parse_time_limit("1-01:01"), Ok(Some(86400 + 3660)));
        assert_eq!(parse_time_limit("1-00:00:05"), Ok(Some(86405)));
        assert_eq!(parse_time_limit("UNLIMITED"), Ok(None));
        assert!(parse_time_limit("1:2:3:4").is_err());
        assert!(parse_time_limit("abc").is_err());
        assert!(parse_time_limit("-5").is_err());
    }

    #[test]
    fn formats_read_back() {
        assert_eq!(format_bytes(4 << 30), "4G");
        assert_eq!(format_cores(1500), "1.5");
        assert_eq!(format_elapsed(3725), "01:02:05");
        assert_eq!(format_elapsed(90061), "1-01:01:01");
    }
}
