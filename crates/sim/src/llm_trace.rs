//! LLM request traces, turned into the demand curve the fleet model runs on: JSON lines with
//! `timestamp` (ms), `input_length` and `output_length` (the traces Kimi published with the
//! Mooncake paper), or CSV with `TIMESTAMP`, `ContextTokens` and `GeneratedTokens` columns
//! (Azure's public LLM inference traces; TIMESTAMP as `YYYY-MM-DD HH:MM:SS[.fraction]`).
//!
//! A request is in flight from its timestamp for its prefill (`prefill_us_per_token` per
//! prompt token) and then one token time (`itl_ms`) per output token, as in the replica
//! emulator; the curve is the number in flight at each second.

/// The longest span of a trace read, seconds.
const MAX_SPAN_S: f64 = 31.0 * 86_400.0;
/// The most tokens one request may carry either way.
const MAX_TOKENS: u64 = 10_000_000;

/// One request of a trace.
#[derive(Debug, Clone, PartialEq)]
pub struct TraceRequest {
    /// Seconds from the trace's first request.
    pub at_s: f64,
    /// Prompt tokens.
    pub input_tokens: u64,
    /// Generated tokens.
    pub output_tokens: u64,
    /// The prompt's 512-token blocks by content (Mooncake's `hash_ids`): equal ids are equal
    /// prefixes, which a replica's prefix cache may hold. Empty when the trace has none.
    pub hash_ids: Vec<u64>,
}

/// Reads either format (told apart by the first line); errors name the line.
pub fn read(text: &str) -> Result<Vec<TraceRequest>, String> {
    let first = text.lines().find(|l| !l.trim().is_empty()).unwrap_or("");
    let mut requests = if first.trim_start().starts_with('{') { read_jsonl(text)? } else { read_csv(text)? };
    let start = requests.iter().map(|r| r.at_s).fold(f64::INFINITY, f64::min);
    for (i, r) in requests.iter_mut().enumerate() {
        r.at_s -= start;
        // The curve holds a point per second of the trace: a far timestamp would ask for years.
        if r.at_s > MAX_SPAN_S {
            return Err(format!("request {}: its timestamp is {:.0} days after the first request; a trace may span {} days", i + 1, r.at_s / 86_400.0, MAX_SPAN_S / 86_400.0));
        }
        if r.input_tokens > MAX_TOKENS || r.output_tokens > MAX_TOKENS {
            return Err(format!("request {}: more than {MAX_TOKENS} tokens", i + 1));
        }
    }
    requests.sort_by(|a, b| a.at_s.total_cmp(&b.at_s));
    Ok(requests)
}

fn read_jsonl(text: &str) -> Result<Vec<TraceRequest>, String> {
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
        let v: serde_json::Value = serde_json::from_str(line).map_err(|e| format!("line {}: {e}", n + 1))?;
        let field = |k: &str| {
            let value = v.get(k).and_then(serde_json::Value::as_f64).ok_or_else(|| format!("line {}: no number '{k}'", n + 1))?;
            if !value.is_finite() || value < 0.0 {
                return Err(format!("line {}: '{k}' is {value}, not a count or time", n + 1));
            }
            Ok(value)
        };
        let hash_ids = match v.get("hash_ids") {
            None | Some(serde_json::Value::Null) => Vec::new(),
            Some(serde_json::Value::Array(ids)) => ids
                .iter()
                .map(|id| id.as_u64().ok_or_else(|| format!("line {}: 'hash_ids' holds {id}, not a block id", n + 1)))
                .collect::<Result<_, _>>()?,
            Some(other) => return Err(format!("line {}: 'hash_ids' is {other}, not a list", n + 1)),
        };
        out.push(TraceRequest {
            at_s: field("timestamp")? / 1000.0,
            input_tokens: field("input_length")?.max(0.0) as u64,
            output_tokens: field("output_length")?.max(0.0) as u64,
            hash_ids,
        });
    }
    Ok(out)
}

fn read_csv(text: &str) -> Result<Vec<TraceRequest>, String> {
    let mut lines = text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty());
    let (_, header) = lines.next().ok_or("the trace is empty")?;
    let columns: Vec<&str> = header.split(',').map(str::trim).collect();
    let col = |name: &str| columns.iter().position(|c| c.eq_ignore_ascii_case(name)).ok_or_else(|| format!("line 1: no column {name}"));
    let (ts, ctx, gen) = (col("TIMESTAMP")?, col("ContextTokens")?, col("GeneratedTokens")?);
    let mut out = Vec::new();
    for (n, line) in lines {
        let cells: Vec<&str> = line.split(',').map(str::trim).collect();
        let cell = |i: usize| cells.get(i).copied().ok_or_else(|| format!("line {}: too few columns", n + 1));
        let number = |i: usize| cell(i).and_then(|c| c.parse::<u64>().map_err(|_| format!("line {}: '{c}' is not a count", n + 1)));
        out.push(TraceRequest {
            at_s: seconds_of(cell(ts)?).ok_or_else(|| format!("line {}: '{}' is not YYYY-MM-DD HH:MM:SS", n + 1, cells[ts]))?,
            input_tokens: number(ctx)?,
            output_tokens: number(gen)?,
            hash_ids: Vec::new(),
        });
    }
    Ok(out)
}

/// Seconds since 1970 of `YYYY-MM-DD HH:MM:SS[.fraction]` (UTC).
fn seconds_of(text: &str) -> Option<f64> {
    let (date, time) = text.split_once([' ', 'T'])?;
    let mut d = date.split('-').map(|p| p.parse::<i64>().ok());
    let (y, m, day) = (d.next()??, d.next()??, d.next()??);
    let mut t = time.trim_end_matches('Z').split(':');
    let (hh, mm) = (t.next()?.parse::<f64>().ok()?, t.next()?.parse::<f64>().ok()?);
    let ss = t.next()?.parse::<f64>().ok()?;
    // Days from the civil date (proleptic Gregorian).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (m + if m > 2 { -3 } else { 9 }) + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(days as f64 * 86_400.0 + hh * 3600.0 + mm * 60.0 + ss)
}

/// Requests in flight at each second of the trace.
pub fn demand_curve(requests: &[TraceRequest], prefill_us_per_token: f64, itl_ms: f64) -> Vec<f64> {
    let end = requests
        .iter()
        .map(|r| r.at_s + r.input_tokens as f64 * prefill_us_per_token / 1e6 + r.output_tokens as f64 * itl_ms / 1000.0)
        .fold(0.0_f64, f64::max);
    let mut delta = vec![0.0; end.ceil() as usize + 2];
    for r in requests {
        let span = r.input_tokens as f64 * prefill_us_per_token / 1e6 + r.output_tokens as f64 * itl_ms / 1000.0;
        let (from, to) = (r.at_s, r.at_s + span);
        // Each second gets the share of it the request was in flight.
        let mut s = from.floor();
        while s < to {
            let overlap = (to.min(s + 1.0) - from.max(s)).max(0.0);
            delta[s as usize] += overlap;
            s += 1.0;
        }
    }
    delta.truncate(end.ceil().max(1.0) as usize);
    delta
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_formats_read_and_make_a_curve() {
        let jsonl = "{\"timestamp\": 0, \"input_length\": 1000, \"output_length\": 100, \"hash_ids\": [1]}\n{\"timestamp\": 1500, \"input_length\": 10, \"output_length\": 50}\n";
        let a = read(jsonl).unwrap();
        assert_eq!(a.len(), 2);
        assert_eq!(a[1].at_s, 1.5);
        let csv = "TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:15:46.6805900,1000,100\n2023-11-16 18:15:48.1805900,10,50\n";
        let b = read(csv).unwrap();
        assert_eq!(b.len(), 2);
        assert!((b[1].at_s - 1.5).abs() < 1e-6, "{}", b[1].at_s);
        // 100 tokens at 20 ms after 0.1 s of prefill: in flight 2.1 s; the second 1.0 s.
        let curve = demand_curve(&a, 100.0, 20.0);
        assert_eq!(curve.len(), 3);
        assert!((curve.iter().sum::<f64>() - (2.1 + 1.001)).abs() < 1e-6, "{curve:?}");
        assert!(read("TIMESTAMP,ContextTokens\nx,1\n").unwrap_err().contains("GeneratedTokens"));
        assert!(read("{\"timestamp\": 1}\n").unwrap_err().starts_with("line 1"));
        assert_eq!(seconds_of("1970-01-02 00:00:01"), Some(86_401.0));
        // A far timestamp is refused before any curve is made of it.
        let far = "{\"timestamp\": 0, \"input_length\": 1, \"output_length\": 1}\n{\"timestamp\": 1e15, \"input_length\": 1, \"output_length\": 1}\n";
        assert!(read(far).unwrap_err().starts_with("request 2:"));
        assert!(read("{\"timestamp\": 0, \"input_length\": -5, \"output_length\": 1}\n").unwrap_err().starts_with("line 1"));
    }
}
