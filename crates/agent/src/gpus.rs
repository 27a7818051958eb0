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
