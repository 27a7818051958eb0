//! Jobs, tasks and nodes as the REST API shows them.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// `POST /api/v1/jobs`: a job to run. Sizes and durations are the strings users type
/// (`4G`, `1:00:00`), read the way Slurm reads them.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SubmitRequest {
    /// A name for people; defaults to the command's first word.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The program and its arguments (empty when `script` is given).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub command: Vec<String>,
    /// A batch script to run instead of `command`; must start with `#!`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub script: Option<String>,
    /// Array indices, e.g. `0-999`, `1-20%4`, `0-99:2`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub array: Option<String>,
    /// Cores per task (default 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpus: Option<u32>,
    /// Memory per task, e.g. `500M`, `4G` (a bare number is megabytes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mem: Option<String>,
    /// GPUs per task.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gpus: Option<u32>,
    /// The project that pays (default `default`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub project: Option<String>,
    /// Priority class (default `batch`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tier: Option<String>,
    /// Wall-clock limit per task, e.g. `30`, `2:00:00`, `1-00:00:00`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time_limit: Option<String>,
    /// Jobs that must all succeed first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub after: Vec<u64>,
    /// Standard output path pattern (`%A %a %j %x %%`), relative to `workdir`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<String>,
    /// Standard error path pattern; defaults to the output's file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Absolute working directory of every task.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workdir: Option<String>,
    /// Environment of every task.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    /// Only nodes of this pool (Slurm's partition).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pool: Option<String>,
    /// Node features every node must have (`avx512`, `rdma`, `gpu=h100`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub constraint: Vec<String>,
    /// Named countable resources per task (`{"fpga": 1}`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub resources: BTreeMap<String, u64>,
    /// A multi-node job: this many distinct nodes, started all at once or not at all.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nodes: Option<u32>,
    /// With `nodes`: tasks (ranks) on each node (default 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tasks_per_node: Option<u32>,
    /// Without `nodes`: the tasks (ranks) of each allocation on its one node, which `cpus`
    /// counts together (Slurm's `--ntasks`): they see SLURM_NTASKS and SLURM_CPUS_PER_TASK.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ntasks: Option<u32>,
    /// Environment values that are secret: given to the tasks, kept out of the journal, every
    /// answer and every log.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub secret_env: BTreeMap<String, String>,
    /// An OCI image to run the tasks in (`HOST[:PORT]/NAME[:TAG][@sha256:DIGEST]`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// Host directories bound into the container, `SRC:DST[:ro]` (pyxis's --container-mounts).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub container_mounts: Vec<String>,
    /// The working directory inside the container (default: the job's, bound at the same path).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container_workdir: Option<String>,
    /// Size of the container's /dev/shm, e.g. 8G (default: half the task's memory, or 1G).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shm_size: Option<String>,
    /// `none` gives the container a network of its own with loopback alone (default: the host's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<String>,
    /// Variables whose submitted value wins over the image's (pyxis's --container-env), e.g. PATH.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub container_env: Vec<String>,
    /// `append` to add to output files that exist, `truncate` (the default) to start them anew.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub open_mode: Option<String>,
    /// Slurm's `--signal=[B:]SIG[@SECONDS]`: SIG (default time 60 s) before the time limit, to
    /// the batch shell alone with `B:`, else to what the script started (all of a command).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signal: Option<String>,
    /// Slurm's `--dependency`: `afterok:12:13,afterany:14+10`, `after:12?afternotok:13`,
    /// `singleton` (not with `after`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dependency: Option<String>,
    /// Cancel the job when a dependency can no longer be met (default: it waits, with reason
    /// DependencyNeverSatisfied, as Slurm does).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub kill_on_invalid_dep: bool,
    /// `false` (Slurm's `--no-requeue`): a task whose node is lost, or that is stopped for other
    /// work, fails instead of running again (default: it runs again as a new attempt).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requeue: Option<bool>,
}

/// The answer to `POST /api/v1/jobs/test` (Slurm's `sbatch --test-only`): where and when the job
/// would start if submitted now. Nothing is submitted.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrialAnswer {
    /// The id it would get.
    pub job_id: u64,
    /// Expected start, ms since the epoch: now when a pass would start it, else when room is
    /// expected to free up (from running tasks' time limits); unset when that is unknown.
    pub start_ms: Option<u64>,
    /// The nodes it would start on now (empty when it would wait).
    pub nodes: Vec<String>,
    /// Cores it would hold in all.
    pub cpus: u64,
    /// The partition (pool) it would run in, when known.
    pub pool: Option<String>,
    /// Why it would wait: Slurm's short code.
    pub pending_code: Option<String>,
    /// Why it would wait, for a person.
    pub pending_reason: Option<String>,
}

/// The answer to a submission, sent only once it is journaled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubmitResponse {
    /// The new job's id.
    pub job_id: u64,
}

/// `POST /api/v1/jobs/{id}/cancel`: the whole job, or one task when `index` is set. With a
/// `signal` (Slurm's `scancel --signal`), the running tasks are sent it and nothing ends.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CancelRequest {
    /// One task's array index.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub index: Option<u32>,
    /// A signal name (`USR1`, `SIGUSR1`) or number to send instead of cancelling.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signal: Option<String>,
    /// With `signal`: `batch` the batch shell alone, `full` everything of the task; otherwise
    /// what a batch script started (the whole of a command), as Slurm's scancel.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<String>,
}

/// The answer to a cancel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct CancelResponse {
    /// Pending tasks that ended at once.
    pub n_cancelled: u32,
    /// Running tasks told to stop.
    pub n_signalled: u32,
    /// The job (or the task named) had ended before: nothing was done.
    #[serde(default)]
    pub already_ended: bool,
}

/// Tasks per state.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskCountsView {
    /// Waiting.
    pub pending: u32,
    /// On a node.
    pub running: u32,
    /// Exited 0.
    pub succeeded: u32,
    /// Exited non-zero or killed.
    pub failed: u32,
    /// Cancelled.
    pub cancelled: u32,
    /// Hit the time limit.
    pub timeout: u32,
}

/// One job, as `GET /api/v1/jobs` and `GET /api/v1/jobs/{id}` show it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobView {
    /// The id.
    pub id: u64,
    /// The name.
    pub name: String,
    /// Who pays.
    pub project: String,
    /// Priority class.
    pub tier: String,
    /// Pool it is limited to.
    pub pool: Option<String>,
    /// `pending`, `running`, `succeeded`, `failed`, `cancelled` or `timeout`.
    pub state: String,
    /// The array spec, when the job is an array.
    pub array: Option<String>,
    /// How many tasks.
    pub n_tasks: u32,
    /// Tasks per state.
    pub counts: TaskCountsView,
    /// Cores per task.
    pub cpus: f64,
    /// Memory per task in bytes (0: not limited).
    pub mem_bytes: u64,
    /// GPUs per task.
    pub gpus: u32,
    /// Time limit per task.
    pub time_limit_s: Option<u64>,
    /// When it was accepted (ms since the epoch).
    pub submitted_ms: u64,
    /// When its last task ended.
    pub ended_ms: Option<u64>,
    /// Why its next task waits: Slurm's reason code.
    pub pending_code: Option<String>,
    /// Why its next task waits, in words.
    pub pending_reason: Option<String>,
    /// Indices still pending, as ranges (`5-99`).
    pub pending_indices: String,
    /// The command, or the script's path name.
    pub command: Vec<String>,
    /// Working directory.
    pub workdir: String,
    /// The image its tasks run in (or its variants), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// Running tasks, and with `?tasks=true` every task.
    pub tasks: Vec<TaskView>,
}

/// One task.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskView {
    /// Array index.
    pub index: u32,
    /// `pending`, `running`, `succeeded`, `failed`, `cancelled` or `timeout`.
    pub state: String,
    /// Attempt number (0 before the first).
    pub attempt: u32,
    /// Node of the last attempt.
    pub node: Option<String>,
    /// When the last attempt started.
    pub started_ms: Option<u64>,
    /// When it ended.
    pub ended_ms: Option<u64>,
    /// Exit code, when it exited.
    pub exit_code: Option<i32>,
    /// Signal, when one killed it.
    pub signal: Option<i32>,
    /// CPU time used (user + system), ms.
    pub cpu_ms: Option<u64>,
    /// Peak memory, bytes.
    pub peak_mem_bytes: Option<u64>,
    /// Why it could not start, when it could not (a path its identity may not use, a program
    /// it may not run).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// The image its last attempt ran in (the variant its node chose).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// Its own job id (Slurm's JobIDRaw): an array task's, else the job's; 0 where unknown.
    #[serde(default)]
    pub job_id: u64,
}

/// One node, as `GET /api/v1/nodes` shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeView {
    /// The name.
    pub name: String,
    /// The pool (Slurm's partition).
    pub pool: String,
    /// `idle`, `mixed`, `allocated` or `down`.
    pub state: String,
    /// Cores offered.
    pub cpus: f64,
    /// Cores held by running tasks.
    pub cpus_allocated: f64,
    /// Memory offered, bytes.
    pub mem_bytes: u64,
    /// Memory held by running tasks, bytes.
    pub mem_allocated_bytes: u64,
    /// GPUs offered.
    pub gpus: u32,
    /// Tasks running.
    pub n_running: u32,
    /// Short tasks sent ahead of free cores, waiting there for a running one to end.
    #[serde(default)]
    pub n_queued: u32,
    /// The identities its agent runs tasks as (nothing while it is not connected).
    #[serde(default)]
    pub identities: crate::Identities,
    /// GPUs that failed its health check: no task is given them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub gpus_failed: Vec<crate::GpuFailure>,
    /// The images it holds unpacked.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub images: Vec<crate::ImageView>,
}

/// One project as `GET /api/v1/projects` lists it: what it was created with, its gid filled in.
pub type ProjectView = ProjectRequest;

/// `POST /api/v1/projects`: a project with optional quota (cores), borrowing limit and share.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProjectRequest {
    /// Name: letters, digits, `-`, `_`, `.`.
    pub name: String,
    /// Guaranteed cores.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quota: Option<u64>,
    /// Cores it may borrow beyond its quota.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub borrow: Option<u64>,
    /// Fair-share weight (default 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub share: Option<u32>,
    /// The Unix user id its tasks run as on every node (never 0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid: Option<u32>,
    /// The group id its tasks run as (default: the uid; never 0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gid: Option<u32>,
    /// Supplementary groups of its tasks, for shared storage (never 0).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub groups: Vec<u32>,
}

/// `POST /api/v1/tokens`: a token for one project, or a join token for agents.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenRequest {
    /// The project it acts for (a project token).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub project: Option<String>,
    /// A join token for agents instead.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub join: bool,
}

/// One token as listed by `GET /api/v1/tokens` (never the token itself).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenView {
    /// Id for revoking.
    pub id: String,
    /// `project` or `join`.
    pub kind: String,
    /// The project of a project token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub project: Option<String>,
    /// Refused from now on.
    pub revoked: bool,
}

/// A new token: shown once, stored only as a hash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenCreated {
    /// Id for listing and revoking.
    pub id: String,
    /// The token itself.
    pub token: String,
    /// Its project (none for a join token).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub project: Option<String>,
}
