//! The inference gateway's configuration file (TOML), as written by people.

use serde::Deserialize;

/// The whole file.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GatewayConfigFile {
    /// Address to listen on (default `127.0.0.1:7879`).
    #[serde(default)]
    pub listen: Option<String>,
    /// Slots kept free of lower tiers on each replica for realtime bursts (default 1).
    #[serde(default)]
    pub realtime_headroom: Option<u32>,
    /// Typical request duration in ms, used to size Retry-After (default 2000).
    #[serde(default)]
    pub typical_request_ms: Option<u64>,
    /// How long a batch, offline, filler or preemptible request waits for a free slot before it is
    /// answered 429, in ms (default 30000; 0 answers at once).
    #[serde(default)]
    pub queue_wait_ms: Option<u64>,
    /// Directory for uploaded files and batches (SQLite).
    #[serde(default)]
    pub data_dir: Option<String>,
    /// Event-loop threads of `tidepool gateway`, each serving its share of the connections
    /// (default: one per core).
    #[serde(default)]
    pub workers: Option<u32>,
    /// Whether each event-loop thread is kept on a CPU of its own, the n-th worker on the n-th
    /// CPU the process may use (default false: the kernel places them).
    #[serde(default)]
    pub pin_workers: Option<bool>,
    /// The key Prometheus sends (`Authorization: Bearer KEY`) to scrape `/metrics`, which names
    /// every tenant; without one, `/metrics` answers only on `metrics_listen`.
    #[serde(default)]
    pub metrics_key: Option<String>,
    /// A separate address serving only `/metrics` (loopback unless `metrics_key` is set, which
    /// it then also wants).
    #[serde(default)]
    pub metrics_listen: Option<String>,
    /// Lets a tenant with `open = true` be served on an address other than loopback.
    #[serde(default)]
    pub allow_open_tenant_on_network: bool,
    /// The largest inference request body, bytes (default 32 MiB); a larger one gets 413.
    #[serde(default)]
    pub max_request_bytes: Option<u64>,
    /// Seconds a client has to send a request's head (default 30).
    #[serde(default)]
    pub header_timeout_s: Option<u64>,
    /// Seconds a connection may wait between requests, or mid-body, before it is closed
    /// (default 120).
    #[serde(default)]
    pub idle_timeout_s: Option<u64>,
    /// Connections served at once; more are closed as they come (default 16384).
    #[serde(default)]
    pub max_connections: Option<u64>,
    /// Upstream replicas.
    #[serde(default)]
    pub replicas: Vec<ReplicaConfig>,
    /// Tenants and their keys.
    #[serde(default)]
    pub tenants: Vec<TenantConfig>,
}

/// One OpenAI-compatible upstream (vLLM, SGLang, llama.cpp, the replica emulator).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReplicaConfig {
    /// Base URL, e.g. `http://10.0.0.5:8000` (the gateway appends `/v1/...`).
    pub url: String,
    /// The model it serves.
    pub model: String,
    /// Most efficient number of concurrent requests; with `learn_best_concurrency`, where
    /// learning starts (default 4).
    #[serde(default)]
    pub best_concurrency: Option<u32>,
    /// Learn the best concurrency from the pace of the replica's streams.
    #[serde(default)]
    pub learn_best_concurrency: bool,
    /// Hard cap on concurrent requests (default: best concurrency x 1.5, following the learned
    /// value when learning).
    #[serde(default)]
    pub max_concurrency: Option<u32>,
    /// Key to send upstream, if it wants one.
    #[serde(default)]
    pub api_key: Option<String>,
    /// The most tokens a request may ask it to generate (`max_tokens` and its kin); a request
    /// asking more is answered 400 by the gateway (default: no limit checked here).
    #[serde(default)]
    pub max_tokens: Option<u64>,
}

/// A tenant: who pays, with what budget and which tiers.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TenantConfig {
    /// Name for accounting.
    pub name: String,
    /// API keys that map to it.
    #[serde(default)]
    pub keys: Vec<String>,
    /// Tokens per minute (prompt + completion).
    pub tpm: u64,
    /// Requests per minute.
    pub rpm: u64,
    /// The tier its requests get (default `realtime`).
    #[serde(default)]
    pub tier: Option<String>,
    /// Any key, or none, that is no other tenant's maps to this one, as a local vLLM expects
    /// (clients send `EMPTY`); only on loopback unless `allow_open_tenant_on_network`.
    #[serde(default)]
    pub open: bool,
}

/// The token counts of an OpenAI-style answer, read without building the rest of it.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct UsageOf {
    /// The answer's `usage`, when it has one.
    pub usage: Option<TokenUsage>,
}

/// The `usage` of an OpenAI-style answer (a JSON object). Its top-level key is found by a
/// scan that only tracks strings and nesting, and only the value is parsed: a full parse that
/// skips the rest of the answer cost as much as the whole of the gateway's own work on it.
/// An answer the scan cannot read is parsed in full.
pub fn usage_of(answer: &[u8]) -> Option<TokenUsage> {
    match top_level_value(answer, b"usage") {
        Some(value) => Option::<TokenUsage>::deserialize(&mut serde_json::Deserializer::from_slice(value)).ok().flatten(),
        None => serde_json::from_slice::<UsageOf>(answer).ok().and_then(|u| u.usage),
    }
}

/// The bytes from where the value of `key` in the top-level object `json` starts, to the
/// end; None when the object has no such key written plainly.
fn top_level_value<'a>(json: &'a [u8], key: &[u8]) -> Option<&'a [u8]> {
    let mut depth = 0usize;
    let mut i = 0;
    while let Some(&byte) = json.get(i) {
        match byte {
            b'"' => {
                let start = i + 1;
                let mut end = start;
                loop {
                    end += json.get(end..)?.iter().position(|&b| b == b'"' || b == b'\\')?;
                    if json[end] == b'"' {
                        break;
                    }
                    end += 2;
                }
                i = end + 1;
                // A key is followed by a colon; a string value that reads the same is not.
                if depth == 1 && &json[start..end] == key {
                    let rest = &json[i..];
                    let after = rest.iter().position(|b| !b.is_ascii_whitespace())?;
                    if rest[after] == b':' {
                        return Some(&rest[after + 1..]);
                    }
                }
            }
            b'{' | b'[' => {
                depth += 1;
                i += 1;
            }
            b'}' | b']' => {
                depth = depth.saturating_sub(1);
                i += 1;
            }
            _ => i += 1,
        }
    }
    None
}

/// `usage` of a completion or a response: the prompt's tokens and the answer's.
#[derive(Debug, Clone, Copy, Default, Deserialize)]
pub struct TokenUsage {
    /// Tokens of the prompt (`input_tokens` in a Responses API answer).
    #[serde(default, alias = "input_tokens")]
    pub prompt_tokens: u64,
    /// Tokens generated (`output_tokens` in a Responses API answer).
    #[serde(default, alias = "output_tokens")]
    pub completion_tokens: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counts(answer: &str) -> Option<(u64, u64)> {
        usage_of(answer.as_bytes()).map(|u| (u.prompt_tokens, u.completion_tokens))
    }

    #[test]
    fn usage_is_read_from_the_top_level_only() {
        let answer = r#"{"id":"c","choices":[{"message":{"content":"the \"usage\": {\"prompt_tokens\": 9} and usage"},"usage":{"prompt_tokens":7}}],"object":"usage","usage" : {"prompt_tokens":3,"completion_tokens":4,"total_tokens":7}}"#;
        assert_eq!(counts(answer), Some((3, 4)));
        assert_eq!(counts(r#"{"usage":{"prompt_tokens":1,"completion_tokens":2},"choices":[]}"#), Some((1, 2)));
        assert_eq!(counts(r#"{"usage":null}"#), None);
        assert_eq!(counts(r#"{"choices":[{"usage":{"prompt_tokens":5}}]}"#), None);
        assert_eq!(counts(r#"{"choices":"\\"}"#), None);
    }

    #[test]
    fn an_answer_the_scan_cannot_read_is_parsed_in_full() {
        // An escaped key is not found by the scan; the full parse still reads it.
        assert_eq!(counts(r#"{"usag\u0065":{"prompt_tokens":2,"completion_tokens":5}}"#), Some((2, 5)));
        assert_eq!(counts("not json"), None);
        assert_eq!(counts(r#"{"content":"unterminated"#), None);
        assert_eq!(counts(r#"{"usage":"#), None);
    }
}
