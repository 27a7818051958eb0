//! The gateway's configuration: TOML read into the raw file type, then checked.

use std::collections::HashSet;
use tidepool_api::gateway::GatewayConfigFile;
use tidepool_core::Tier;

/// One upstream replica, checked.
#[derive(Debug, Clone, PartialEq)]
pub struct Replica {
    /// Base URL without a trailing slash.
    pub url: String,
    /// Model it serves.
    pub model: String,
    /// Best concurrency.
    pub best_concurrency: u32,
    /// Hard cap.
    pub max_concurrency: u32,
    /// When the best concurrency is learned: never above this, and whether the hard cap is the
    /// configured one (else it follows the learned value).
    pub learn: Option<Learn>,
    /// Key sent upstream.
    pub api_key: Option<String>,
    /// The most output tokens a request may ask of it.
    pub max_tokens: Option<u64>,
}

/// How a replica's best concurrency is learned.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Learn {
    /// Never propose more than this.
    pub cap: u32,
    /// The hard cap was configured and stays put.
    pub fixed_max: bool,
}

/// Learning proposes at most this many concurrent requests when no hard cap is configured.
const LEARN_CAP: u32 = 512;

/// One tenant, checked.
#[derive(Debug, Clone, PartialEq)]
pub struct Tenant {
    /// Name.
    pub name: String,
    /// Keys.
    pub keys: Vec<String>,
    /// Tokens per minute.
    pub tpm: u64,
    /// Requests per minute.
    pub rpm: u64,
    /// Tier of its requests (a header may lower it).
    pub tier: Tier,
    /// Takes every request whose key is no other tenant's.
    pub open: bool,
}

/// The gateway's settings.
#[derive(Debug, Clone, PartialEq)]
pub struct GatewayConfig {
    /// Where to listen.
    pub listen: String,
    /// Slots per replica kept free of lower tiers.
    pub realtime_headroom: u32,
    /// Typical request duration, for Retry-After.
    pub typical_request_ms: u64,
    /// How long the lowest tiers wait for a slot before a 429, ms.
    pub queue_wait_ms: u64,
    /// Upstreams.
    pub replicas: Vec<Replica>,
    /// Tenants.
    pub tenants: Vec<Tenant>,
    /// Where files and batches are kept (needed for the Files and Batches APIs).
    pub data_dir: Option<std::path::PathBuf>,
    /// Event-loop threads of a gateway that runs in a process of its own.
    pub workers: usize,
    /// Each event-loop thread kept on a CPU of its own.
    pub pin_workers: bool,
    /// The bearer key `/metrics` wants.
    pub metrics_key: Option<String>,
    /// The address that serves only `/metrics`.
    pub metrics_listen: Option<String>,
    /// An open tenant may be served beyond loopback.
    pub allow_open_tenant_on_network: bool,
    /// The largest inference request body, bytes.
    pub max_request_bytes: usize,
    /// How long a request's head may take to arrive.
    pub header_timeout: std::time::Duration,
    /// How long a connection may stay silent between requests or mid-body.
    pub idle_timeout: std::time::Duration,
    /// Connections served at once.
    pub max_connections: usize,
}

/// What one client connection may take.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// The largest inference request body, bytes.
    pub max_request_bytes: usize,
    /// How long a request's head may take to arrive.
    pub header_timeout: std::time::Duration,
    /// How long a connection may stay silent between requests or mid-body.
    pub idle_timeout: std::time::Duration,
}

/// Keys shorter than this are refused: they are guessed.
const MIN_KEY_CHARS: usize = 8;

/// The most event-loop threads a gateway may be given.
const MAX_WORKERS: u32 = 1024;

impl GatewayConfig {
    /// Reads and checks a TOML file's text; errors name the field.
    pub fn from_toml(text: &str) -> Result<GatewayConfig, String> {
        let raw: GatewayConfigFile = toml::from_str(text).map_err(|e| e.to_string().trim().replace('\n', " "))?;
        let mut replicas = Vec::new();
        for (i, r) in raw.replicas.into_iter().enumerate() {
            if !(r.url.starts_with("http://") || r.url.starts_with("https://")) {
                return Err(format!("replicas[{i}].url: '{}' is not an http(s) URL", r.url));
            }
            let best = match (r.best_concurrency, r.learn_best_concurrency) {
                (Some(0), _) => return Err(format!("replicas[{i}].best_concurrency: must be at least 1")),
                (Some(b), _) => b,
                (None, true) => 4,
                (None, false) => return Err(format!("replicas[{i}].best_concurrency: required unless learn_best_concurrency = true")),
            };
            let max = r.max_concurrency.unwrap_or(best + best / 2);
            if max < best {
                return Err(format!("replicas[{i}].max_concurrency: below best_concurrency"));
            }
            let learn = r.learn_best_concurrency.then(|| Learn { cap: r.max_concurrency.unwrap_or(LEARN_CAP), fixed_max: r.max_concurrency.is_some() });
            replicas.push(Replica {
                url: r.url.trim_end_matches('/').trim_end_matches("/v1").to_string(),
                model: r.model,
                best_concurrency: best,
                max_concurrency: max,
                learn,
                api_key: r.api_key,
                max_tokens: match r.max_tokens {
                    Some(0) => return Err(format!("replicas[{i}].max_tokens: must be at least 1")),
                    m => m,
                },
            });
        }
        let mut seen = HashSet::new();
        let mut tenants = Vec::new();
        let mut n_open = 0;
        for (i, t) in raw.tenants.into_iter().enumerate() {
            if t.keys.is_empty() && !t.open {
                return Err(format!("tenants[{i}].keys: a tenant needs at least one key, or open = true"));
            }
            n_open += usize::from(t.open);
            if n_open > 1 {
                return Err(format!("tenants[{i}].open: only one tenant may be open"));
            }
            for k in &t.keys {
                if k.len() < MIN_KEY_CHARS {
                    return Err(format!("tenants[{i}].keys: keys must be at least {MIN_KEY_CHARS} characters (a local client's `EMPTY` key is served by a tenant with open = true)"));
                }
                if !seen.insert(k.clone()) {
                    return Err(format!("tenants[{i}].keys: a key is used twice"));
                }
            }
            if t.tpm == 0 || t.rpm == 0 {
                return Err(format!("tenants[{i}]: tpm and rpm must be at least 1"));
            }
            let tier = match &t.tier {
                Some(s) => s.parse::<Tier>().map_err(|e| format!("tenants[{i}].tier: {e}"))?,
                None => Tier::Realtime,
            };
            tenants.push(Tenant { name: t.name, keys: t.keys, tpm: t.tpm, rpm: t.rpm, tier, open: t.open });
        }
        if let Some(key) = &raw.metrics_key {
            if key.len() < MIN_KEY_CHARS {
                return Err(format!("metrics_key: must be at least {MIN_KEY_CHARS} characters"));
            }
            if seen.contains(key) {
                return Err("metrics_key: is also a tenant's key".into());
            }
        }
        let workers = match raw.workers {
            Some(n) if n == 0 || n > MAX_WORKERS => return Err(format!("workers: must be between 1 and {MAX_WORKERS}, not {n}")),
            Some(n) => n as usize,
            None => std::thread::available_parallelism().map_or(1, |n| n.get()),
        };
        let within = |value: Option<u64>, default: u64, max: u64, name: &str| match value {
            None => Ok(default),
            Some(v) if (1..=max).contains(&v) => Ok(v),
            Some(v) => Err(format!("{name}: must be between 1 and {max}, not {v}")),
        };
        let max_request_bytes = within(raw.max_request_bytes, 32 << 20, 1 << 30, "max_request_bytes")? as usize;
        let header_timeout = std::time::Duration::from_secs(within(raw.header_timeout_s, 30, 3600, "header_timeout_s")?);
        let idle_timeout = std::time::Duration::from_secs(within(raw.idle_timeout_s, 120, 86_400, "idle_timeout_s")?);
        let max_connections = within(raw.max_connections, 16_384, 10_000_000, "max_connections")? as usize;
        Ok(GatewayConfig {
            max_request_bytes,
            header_timeout,
            idle_timeout,
            max_connections,
            listen: raw.listen.unwrap_or_else(|| "127.0.0.1:7879".into()),
            realtime_headroom: raw.realtime_headroom.unwrap_or(1),
            typical_request_ms: raw.typical_request_ms.unwrap_or(2000).max(1),
            queue_wait_ms: raw.queue_wait_ms.unwrap_or(30_000),
            replicas,
            tenants,
            data_dir: raw.data_dir.map(std::path::PathBuf::from),
            workers,
            pin_workers: raw.pin_workers.unwrap_or(false),
            metrics_key: raw.metrics_key,
            metrics_listen: raw.metrics_listen,
            allow_open_tenant_on_network: raw.allow_open_tenant_on_network,
        })
    }

    /// Refuses what would be open beyond this machine once bound to `listening` (the gateway)
    /// and `metrics` (the metrics address, if any): an open tenant off loopback unless allowed,
    /// keyless metrics off loopback.
    pub fn check_exposure(&self, listening: std::net::SocketAddr, metrics: Option<std::net::SocketAddr>) -> Result<(), String> {
        if let Some(t) = self.tenants.iter().find(|t| t.open) {
            if !listening.ip().is_loopback() && !self.allow_open_tenant_on_network {
                return Err(format!(
                    "tenants: '{}' is open (any key is accepted) and the gateway listens on {listening}, beyond loopback; listen on 127.0.0.1 or set allow_open_tenant_on_network = true",
                    t.name
                ));
            }
        }
        if let Some(m) = metrics {
            if !m.ip().is_loopback() && self.metrics_key.is_none() {
                return Err(format!("metrics_listen: {m} is beyond loopback; set metrics_key so that scrapes need it"));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_a_file_and_names_bad_fields() {
        let ok = GatewayConfig::from_toml(
            "[[replicas]]\nurl = \"http://127.0.0.1:8000/v1\"\nmodel = \"m\"\nbest_concurrency = 22\n\n[[tenants]]\nname = \"a\"\nkeys = [\"sk-aaaaaaaa\"]\ntpm = 1000\nrpm = 10\ntier = \"interruptible\"\n",
        )
        .unwrap();
        assert_eq!(ok.replicas[0].url, "http://127.0.0.1:8000");
        assert_eq!(ok.replicas[0].max_concurrency, 33);
        assert_eq!(ok.tenants[0].tier, Tier::Interruptible);
        let err = GatewayConfig::from_toml("[[replicas]]\nurl = \"x\"\nmodel = \"m\"\nbest_concurrency = 1\n").unwrap_err();
        assert!(err.contains("replicas[0].url"), "{err}");
        let err = GatewayConfig::from_toml("[[replicas]]\nurl = \"http://h\"\nmodel = \"m\"\n").unwrap_err();
        assert!(err.contains("replicas[0].best_concurrency"), "{err}");
        let learned = GatewayConfig::from_toml("[[replicas]]\nurl = \"http://h\"\nmodel = \"m\"\nlearn_best_concurrency = true\n").unwrap();
        assert_eq!(learned.replicas[0].best_concurrency, 4);
        assert_eq!(learned.replicas[0].learn, Some(Learn { cap: LEARN_CAP, fixed_max: false }));
        assert_eq!(GatewayConfig::from_toml("workers = 3\n").unwrap().workers, 3);
        assert!(GatewayConfig::from_toml("").unwrap().workers >= 1);
        assert!(GatewayConfig::from_toml("pin_workers = true\n").unwrap().pin_workers);
        assert!(!GatewayConfig::from_toml("").unwrap().pin_workers);
        let err = GatewayConfig::from_toml("pin_workers = 1\n").unwrap_err();
        assert!(err.contains("pin_workers"), "{err}");
        let err = GatewayConfig::from_toml("workers = 0\n").unwrap_err();
        assert!(err.contains("workers"), "{err}");
        let err = GatewayConfig::from_toml("listen = 1\nbogus = 2\n").unwrap_err();
        assert!(err.contains("bogus") || err.contains("listen"), "{err}");
    }
}
