//! The agent protocol. The agent dials out and never listens: it registers, long-polls for
//! work and posts results; the server answers.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Names one attempt of one task.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct AttemptRef {
    /// The job.
    pub job_id: u64,
    /// Array index.
    pub index: u32,
    /// Attempt number, from 1.
    pub attempt: u32,
}

/// `POST /api/v1/agent/register`: who the agent is and what it still holds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegisterRequest {
    /// The node's name (stable across restarts).
    pub name: String,
    /// Its pool.
    pub pool: String,
    /// Cores offered, in thousandths.
    pub cpu_millis: u64,
    /// Memory offered, bytes.
    pub mem_bytes: u64,
    /// GPUs offered.
    pub gpus: u32,
    /// Node features (`avx512`, `rdma`, `gpu=h100`).
    #[serde(default)]
    pub features: Vec<String>,
    /// Named countable resources offered (`fpga`, `npu`).
    #[serde(default)]
    pub resources: BTreeMap<String, u64>,
    /// A site used only for what the local nodes cannot take now (a Slurm cluster behind an
    /// agent with `--executor slurm`).
    #[serde(default)]
    pub overflow: bool,
    /// The identities it can run tasks as (none when absent).
    #[serde(default)]
    pub identities: Identities,
    /// Attempts still running under their launchers.
    pub running: Vec<AttemptRef>,
    /// Attempts that ended and were not yet acknowledged.
    pub finished: Vec<TaskResult>,
}

/// The server's answer to a registration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RegisterResponse {
    /// Quote it in every later request; a new registration makes older sessions stale.
    pub session: u64,
    /// Results the server has recorded: the agent may forget them.
    pub acked: Vec<AttemptRef>,
    /// Running attempts the server no longer wants: stop them.
    pub kill: Vec<AttemptRef>,
}

/// `POST /api/v1/agent/poll`: waits until there is work, or a while.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PollRequest {
    /// From the registration.
    pub session: u64,
}

/// Work for the agent.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PollResponse {
    /// Attempts to start.
    pub launch: Vec<Launch>,
    /// Attempts to stop (cancelled).
    pub kill: Vec<AttemptRef>,
    /// The session is no longer valid: register again.
    pub reregister: bool,
    /// Pieces of task logs a client asked for: answer each with `POST /api/v1/agent/log`.
    #[serde(default)]
    pub log_reads: Vec<LogRead>,
    /// Images to pull ahead: a job waiting for room may run here.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pull: Vec<String>,
    /// Private images to pull ahead with their project's login (the nodes that may run the
    /// job alone are sent it).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pull_with_login: Vec<PullWithLogin>,
    /// Signals to send to running attempts (`scancel --signal`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub signal: Vec<SignalOrder>,
}

/// An image to pull ahead with a login.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PullWithLogin {
    /// The image.
    pub image: String,
    /// The login of the project whose job waits for it.
    pub login: crate::RegistryCredentials,
}

/// A signal for a running attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignalOrder {
    /// The attempt.
    pub attempt: AttemptRef,
    /// The signal's number.
    pub signal: i32,
    /// Who in the attempt gets it.
    pub scope: SignalScope,
}

/// Who in a task a signal is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SignalScope {
    /// What a batch script started, not its shell (whose default would be to die of it); the
    /// whole of a command.
    Steps,
    /// The batch shell alone.
    Batch,
    /// Every process of the task.
    Full,
}

impl SignalScope {
    /// Reads `batch` or `full`; none is `Steps`.
    pub fn parse(text: Option<&str>) -> Result<SignalScope, String> {
        match text {
            None | Some("steps") => Ok(SignalScope::Steps),
            Some("batch") => Ok(SignalScope::Batch),
            Some("full") => Ok(SignalScope::Full),
            Some(other) => Err(format!("'{other}' is not batch, full or steps")),
        }
    }
}

/// A signal's number from its name (`USR1`, `SIGUSR1`) or number (1 to 64).
pub fn signal_number(name: &str) -> Option<i32> {
    const NAMES: [(&str, i32); 12] = [
        ("HUP", 1), ("INT", 2), ("QUIT", 3), ("KILL", 9), ("USR1", 10), ("USR2", 12), ("ALRM", 14), ("TERM", 15), ("CONT", 18), ("STOP", 19), ("TSTP", 20), ("URG", 23),
    ];
    match name.parse::<i32>() {
        Ok(n) => (1..=64).contains(&n).then_some(n),
        Err(_) => {
            let bare = name.trim_start_matches("SIG").to_ascii_uppercase();
            NAMES.iter().find(|(n, _)| *n == bare).map(|(_, s)| *s)
        }
    }
}

/// A piece of a task's log the server wants from the node that ran it. The agent reads it only
/// from the file it recorded the task writing, never from a path the server names.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogRead {
    /// Quote it in the answer.
    pub request: u64,
    /// The job.
    pub job_id: u64,
    /// The task's array index.
    pub index: u32,
    /// `stdout` or `stderr`.
    pub stream: String,
    /// First byte wanted.
    pub offset: u64,
    /// Most bytes wanted.
    pub limit: u64,
    /// Start instead at the beginning of the last this many lines.
    pub tail_lines: Option<u64>,
}

/// `POST /api/v1/agent/log?session=S&request=R&start=O&size=N` with the bytes as the body, or
/// `...&error=TEXT` when the piece cannot be read: the answer to a [`LogRead`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogAnswerQuery {
    /// From the registration.
    pub session: u64,
    /// From the [`LogRead`].
    pub request: u64,
    /// Where the bytes start in the file.
    #[serde(default)]
    pub start: u64,
    /// The file's size when read.
    #[serde(default)]
    pub size: u64,
    /// Why nothing could be read.
    #[serde(default)]
    pub error: Option<String>,
}

/// Everything an agent needs to start one attempt.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Launch {
    /// Which attempt.
    pub attempt: AttemptRef,
    /// The program and its arguments; empty when `script` is set.
    pub command: Vec<String>,
    /// A batch script to write to a file and run.
    pub script: Option<String>,
    /// Environment, complete (the agent adds nothing but what it must).
    pub env: BTreeMap<String, String>,
    /// Working directory.
    pub workdir: String,
    /// Where standard output goes (absolute).
    pub stdout_path: String,
    /// Where standard error goes (absolute; may equal `stdout_path`).
    pub stderr_path: String,
    /// Wall-clock limit.
    pub time_limit_s: Option<u64>,
    /// Cores, thousandths (for cgroup weights and `SLURM_CPUS_PER_TASK`).
    pub cpu_millis: u64,
    /// Memory limit in bytes (0: none).
    pub mem_bytes: u64,
    /// Delete the output files when the task wrote nothing to them.
    pub discard_empty_output: bool,
    /// Add to output files that exist rather than truncate them (`--open-mode=append`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub append_output: bool,
    /// A signal sent ahead of the time limit (Slurm's `--signal`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub warn_signal: Option<WarnSignal>,
    /// The identity the task runs as, and opens its files as; none: the agent's own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_as: Option<RunAs>,
    /// The node's GPUs it is given, by index.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub gpus: Vec<u32>,
    /// Run it in this container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container: Option<ContainerLaunch>,
}

/// How a task runs in an image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ContainerLaunch {
    /// The image reference.
    pub image: String,
    /// Bind mounts, `SRC:DST[:ro]`.
    #[serde(default)]
    pub mounts: Vec<String>,
    /// The working directory inside (default: the task's, bound at the same path).
    #[serde(default)]
    pub workdir: Option<String>,
    /// Size of its /dev/shm, bytes.
    pub shm_bytes: u64,
    /// A network of its own with loopback alone, not the host's.
    #[serde(default)]
    pub isolated_network: bool,
    /// Variables whose task value wins over the image's.
    #[serde(default)]
    pub task_env_wins: Vec<String>,
    /// Filled in by the agent: the unpacked image's root filesystem.
    #[serde(default)]
    pub rootfs: String,
    /// Filled in by the agent: the image's own environment.
    #[serde(default)]
    pub image_env: Vec<String>,
    /// Filled in by the agent: the image's manifest digest.
    #[serde(default)]
    pub digest: String,
    /// The project's login to the image's registry, if it has one: used by the agent to pull,
    /// never written into the attempt's directory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub registry_auth: Option<crate::RegistryCredentials>,
}

/// A signal a task is sent ahead of its time limit, so it can save its work.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WarnSignal {
    /// The signal's number.
    pub signal: i32,
    /// How long before the limit.
    pub before_s: u64,
    /// To the batch shell alone (`B:`), rather than to what it started.
    pub batch_only: bool,
}

/// Reads Slurm's `--signal=[{R|B}:]SIG[@SECONDS]`: a signal name (`USR1`, `SIGUSR1`) or number,
/// 60 s before the limit unless said; `R:` (reservations) has no meaning here and is accepted.
pub fn parse_warn_signal(text: &str) -> Result<WarnSignal, String> {
    let bad = || format!("'{text}' is not [B:]SIG[@SECONDS] (e.g. B:USR1@120)");
    let (flags, rest) = match text.split_once(':') {
        Some((flags, rest)) if flags.chars().all(|c| c == 'B' || c == 'R') && !flags.is_empty() => (flags, rest),
        Some(_) => return Err(bad()),
        None => ("", text),
    };
    let (name, before) = rest.split_once('@').unwrap_or((rest, "60"));
    let before_s: u64 = before.parse().ok().filter(|s| *s <= 65_535).ok_or_else(bad)?;
    let signal = signal_number(name).ok_or_else(bad)?;
    Ok(WarnSignal { signal, before_s, batch_only: flags.contains('B') })
}

#[cfg(test)]
mod warn_signal_tests {
    use super::*;

    #[test]
    fn slurm_signal_options_read_as_sbatch_reads_them() {
        assert_eq!(parse_warn_signal("B:USR1@120"), Ok(WarnSignal { signal: 10, before_s: 120, batch_only: true }));
        assert_eq!(parse_warn_signal("SIGTERM"), Ok(WarnSignal { signal: 15, before_s: 60, batch_only: false }));
        assert_eq!(parse_warn_signal("R:12@5"), Ok(WarnSignal { signal: 12, before_s: 5, batch_only: false }));
        for bad in ["", "X:USR1", "USR9", "USR1@soon", "0", "B:"] {
            assert!(parse_warn_signal(bad).is_err(), "{bad}");
        }
    }
}

/// The identities an agent can run tasks as.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Identities {
    /// It runs a project's tasks as the project's uid (its agent is root).
    pub project_uids: bool,
    /// The uid the operator's work (jobs of no project in the catalog) runs as here; none: it
    /// runs no such work. 0 only when its operator asked for it.
    pub operator_uid: Option<u32>,
}

/// A Unix identity a task runs as.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunAs {
    /// User id.
    pub uid: u32,
    /// Primary group id.
    pub gid: u32,
    /// Supplementary groups.
    #[serde(default)]
    pub groups: Vec<u32>,
}

/// How an attempt ended, as an agent reports it: the core's four outcomes, and `stopped` (its
/// node stopped or its launcher died: it runs again as a new attempt).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AttemptOutcome {
    /// Exit code 0.
    Succeeded,
    /// Non-zero exit, a signal, or it could not start.
    Failed,
    /// Ended on a user's request.
    Cancelled,
    /// Ended at its time limit.
    Timeout,
    /// Ended with its node or launcher, not by anything it did.
    Stopped,
}

impl AttemptOutcome {
    /// What the core records when the attempt is not run again: a stopped one that its owner
    /// had cancelled is cancelled.
    pub fn recorded(self) -> tidepool_core::TaskOutcome {
        use tidepool_core::TaskOutcome;
        match self {
            AttemptOutcome::Succeeded => TaskOutcome::Succeeded,
            AttemptOutcome::Failed => TaskOutcome::Failed,
            AttemptOutcome::Cancelled | AttemptOutcome::Stopped => TaskOutcome::Cancelled,
            AttemptOutcome::Timeout => TaskOutcome::Timeout,
        }
    }
}

/// How an attempt ended, as the agent saw it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskResult {
    /// Which attempt.
    pub attempt: AttemptRef,
    /// How it ended.
    pub outcome: AttemptOutcome,
    /// Exit code, when it exited.
    pub exit_code: Option<i32>,
    /// Signal, when one killed it.
    pub signal: Option<i32>,
    /// When the process started (ms since the epoch).
    pub started_ms: u64,
    /// When it ended.
    pub ended_ms: u64,
    /// CPU time (user + system) of the whole process tree, ms.
    pub cpu_ms: u64,
    /// Peak memory of the process tree, bytes.
    pub peak_mem_bytes: u64,
    /// What went wrong starting it, if anything.
    pub message: Option<String>,
}

/// `POST /api/v1/agent/report`: results as they happen.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReportRequest {
    /// From the registration.
    pub session: u64,
    /// Ended attempts.
    pub results: Vec<TaskResult>,
}

/// `POST /api/v1/agent/images`: the images a node holds unpacked, after each pull.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImagesReport {
    /// From the registration.
    pub session: u64,
    /// Every image in its cache.
    pub images: Vec<ImageView>,
}

/// An image a node holds unpacked.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImageView {
    /// The manifest's digest.
    pub digest: String,
    /// The reference it was first pulled by.
    pub reference: String,
    /// Bytes on the node's disk.
    pub bytes: u64,
}

/// `POST /api/v1/agent/gpus`: the GPUs that failed this node's health check (none: all pass).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GpuHealthReport {
    /// From the registration.
    pub session: u64,
    /// Each failing GPU and why.
    pub failed: Vec<GpuFailure>,
}

/// `POST /api/v1/nodes/{name}/resume`: a drained node, or one failed GPU of it, back to work.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResumeRequest {
    /// The GPU to give work again (until its health check fails it anew); none: the node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gpu: Option<u32>,
}

/// A GPU that failed its health check.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GpuFailure {
    /// Its index on the node.
    pub index: u32,
    /// What the check said.
    pub reason: String,
}

/// Results the server has journaled.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReportResponse {
    /// The agent may forget these.
    pub acked: Vec<AttemptRef>,
    /// The session is no longer valid: register again.
    pub reregister: bool,
}
