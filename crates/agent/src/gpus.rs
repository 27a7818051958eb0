//! GPU health: the node's health command, run for each of its GPUs at an interval, and the
//! failing ones reported to the server, which gives them no task until they pass again.

use crate::daemon::Agent;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tidepool_api::{GpuFailure, GpuHealthReport};

/// How this node checks its GPUs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GpuHealth {
    /// A shell command run once per GPU with `TIDEPOOL_GPU` set to its index: exit 0 when the
    /// GPU is healthy, else the first line it prints says why.
    pub command: String,
    /// Time between checks.
    pub every: Duration,
}

/// The GPUs `nvidia-smi` reports on this machine: how many, and a `gpu=MODEL` feature for
/// each model (`gpu=h100`); none where it does not answer.
pub fn discover() -> (u32, Vec<String>) {
    let listed = std::process::Command::new("nvidia-smi")
        .args(["--query-gpu=index,name", "--format=csv,noheader"])
        .stderr(std::process::Stdio::null())
        .output();
    match listed {
        Ok(out) if out.status.success() => models(&String::from_utf8_lossy(&out.stdout)),
        _ => (0, Vec::new()),
    }
}

/// Counts the GPUs of `nvidia-smi --query-gpu=index,name --format=csv,noheader` output and
/// names their models as features: "NVIDIA H100 80GB HBM3" is `gpu=h100`.
pub fn models(listing: &str) -> (u32, Vec<String>) {
    let mut n = 0;
    let mut features: Vec<String> = Vec::new();
    for line in listing.lines().filter(|l| !l.trim().is_empty()) {
        n += 1;
        let name = line.split_once(',').map_or("", |(_, name)| name.trim()).to_ascii_lowercase();
        let model = name
            .split_whitespace()
            .find(|word| !matches!(*word, "nvidia" | "tesla" | "geforce" | "quadro") && word.chars().any(|c| c.is_ascii_digit()))
            .and_then(|word| word.split('-').next())
            .unwrap_or("unknown");
        let feature = format!("gpu={model}");
        if !features.contains(&feature) {
            features.push(feature);
        }
    }
    (n, features)
}

/// Longest a check of one GPU may take before it counts as failed.
const CHECK_TIMEOUT: Duration = Duration::from_secs(10);

/// Checks each of `n_gpus` GPUs; the failing ones.
pub async fn check(command: &str, n_gpus: u32) -> Vec<GpuFailure> {
    let mut failed = Vec::new();
    for index in 0..n_gpus {
        let run = tokio::process::Command::new("sh")
            .args(["-c", command])
            .env("TIDEPOOL_GPU", index.to_string())
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true)
            .output();
        let reason = match tokio::time::timeout(CHECK_TIMEOUT, run).await {
            Err(_) => Some(format!("the health check took over {} s", CHECK_TIMEOUT.as_secs())),
            Ok(Err(e)) => Some(format!("the health check could not run: {e}")),
            Ok(Ok(out)) if out.status.success() => None,
            Ok(Ok(out)) => {
                let said = [&out.stdout, &out.stderr]
                    .iter()
                    .flat_map(|bytes| String::from_utf8_lossy(bytes).lines().map(str::trim).filter(|l| !l.is_empty()).map(str::to_string).collect::<Vec<_>>())
                    .next();
                Some(said.unwrap_or_else(|| format!("the health check exited with {}", out.status)))
            }
        };
        if let Some(reason) = reason {
            failed.push(GpuFailure { index, reason });
        }
    }
    failed
}

/// Checks the GPUs every `health.every` for as long as the agent runs, and tells the server
/// whenever any fails (so a GPU resumed by hand that still fails is failed again) and once
/// when they pass again.
pub(crate) async fn health_loop(agent: Arc<Agent>, n_gpus: u32, health: GpuHealth) {
    let mut told: Option<Vec<GpuFailure>> = None;
    loop {
        let failed = check(&health.command, n_gpus).await;
        let session = agent.session.load(Ordering::SeqCst);
        if session != 0 && (!failed.is_empty() || told.as_ref() != Some(&failed)) {
            let report = GpuHealthReport { session, failed: failed.clone() };
            match agent.post::<_, serde_json::Value>("gpus", &report).await {
                Ok(_) => told = Some(failed),
                Err(e) => tracing::warn!(error = %e, "GPU health not reported; trying at the next check"),
            }
        }
        tokio::time::sleep(health.every).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn models_are_read_from_nvidia_smi() {
        let listing = "0, NVIDIA H100 80GB HBM3\n1, NVIDIA H100 80GB HBM3\n2, Tesla V100-SXM2-32GB\n3, NVIDIA A100-SXM4-80GB\n";
        assert_eq!(models(listing), (4, vec!["gpu=h100".to_string(), "gpu=v100".into(), "gpu=a100".into()]));
        assert_eq!(models(""), (0, vec![]));
    }
}
