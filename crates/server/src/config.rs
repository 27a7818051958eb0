//! What the server is told at start.

use std::path::PathBuf;

/// Server settings; every field has a default that suits the embedded setup.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where the journal, tokens and default logs live.
    pub data_dir: PathBuf,
    /// The URL agents and tasks use to reach this server.
    pub public_url: String,
    /// The largest array index accepted, plus one (Slurm's `MaxArraySize`).
    pub max_array_size: u32,
    /// Pools that exist even before any of their nodes joins.
    pub known_pools: Vec<String>,
    /// How long an agent's poll is held open when there is nothing to do.
    pub poll_hold_ms: u64,
    /// How long an agent may stay silent before its node is lost and its tasks run elsewhere.
    pub agent_lease_ms: u64,
    /// A snapshot is taken once this many events were journaled since the last.
    pub snapshot_every: u64,
    /// Projects with quotas, borrowing limits and fair-share weights; others are unlimited.
    pub projects: Vec<(String, tidepool_core::ProjectLimits)>,
    /// The API is served over TLS with this (see [`crate::tls::server_config`]) when set.
    pub tls: Option<std::sync::Arc<tokio_rustls::rustls::ServerConfig>>,
    /// Timeouts, the connection cap and the body cap of the API's connections.
    pub limits: crate::http::Limits,
    /// Where time is read: the system's clock, or a virtual one in tests.
    pub clock: crate::clock::Clock,
    /// How long a finished job stays in memory before the journal alone answers for it
    /// (Slurm's `MinJobAge`).
    pub keep_finished_ms: u64,
}

impl Config {
    /// The defaults, with the given data directory and URL.
    pub fn new(data_dir: PathBuf, public_url: String) -> Config {
        Config {
            data_dir,
            public_url,
            max_array_size: 1_000_001,
            known_pools: Vec::new(),
            poll_hold_ms: 20_000,
            agent_lease_ms: 60_000,
            projects: Vec::new(),
            snapshot_every: 200_000,
            tls: None,
            limits: crate::http::Limits::default(),
            clock: crate::clock::Clock::System,
            keep_finished_ms: 300_000,
        }
    }
}
