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
}

/// The token counts of an OpenAI-style answer, read without building the rest of it.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct UsageOf {
    /// The answer's `usage`, when it has one.
    pub usage: Option<TokenUsage>,
}

/// `usage` of a completion: the prompt's tokens and the answer's.
#[derive(Debug, Clone, Copy, Default, Deserialize)]
pub struct TokenUsage {
    /// Tokens of the prompt.
    #[serde(default)]
    pub prompt_tokens: u64,
    /// Tokens generated.
    #[serde(default)]
    pub completion_tokens: u64,
}
