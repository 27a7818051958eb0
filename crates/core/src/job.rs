//! What a user submits, as the scheduler sees it.

use crate::array::ArraySpec;
use crate::resources::Resources;
use crate::tier::Tier;
use std::fmt;

/// A job's number, as users type it (`tidepool cancel 12`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct JobId(pub u64);

impl fmt::Display for JobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// What a dependency waits for of another job, as Slurm names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AfterKind {
    /// `after`: it started (or was cancelled before it could).
    Start,
    /// `afterok`: it ended and every task succeeded.
    Ok,
    /// `afterany`: it ended, however.
    Any,
    /// `afternotok`: it ended and some task did not succeed.
    NotOk,
    /// `aftercorr`: task i after its task i succeeded (held here until the whole job has).
    Corr,
}

/// One dependency: a kind, a job, and a delay after the condition is met (`+minutes`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct After {
    /// What is waited for.
    pub kind: AfterKind,
    /// Of which job.
    pub job: JobId,
    /// How long after it happens, ms.
    pub delay_ms: u64,
}

/// A job's dependencies: all of them (`,`) or any one (`?`), and Slurm's `singleton`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Dependencies {
    /// The jobs waited for.
    pub on: Vec<After>,
    /// Any one suffices (`?`) rather than all (`,`).
    pub any_of: bool,
    /// It waits until no earlier job of the same name and project is active.
    pub singleton: bool,
}

impl Dependencies {
    /// `afterok` on each of `jobs`.
    pub fn after_ok(jobs: impl IntoIterator<Item = JobId>) -> Dependencies {
        Dependencies { on: jobs.into_iter().map(|job| After { kind: AfterKind::Ok, job, delay_ms: 0 }).collect(), ..Dependencies::default() }
    }
    /// True when there is nothing to wait for.
    pub fn is_empty(&self) -> bool {
        self.on.is_empty() && !self.singleton
    }
}

/// The parts of a job that scheduling decisions depend on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobSpec {
    /// A name for people (`-J`).
    pub name: String,
    /// Who pays.
    pub project: String,
    /// Priority class.
    pub tier: Tier,
    /// What each task needs on one node.
    pub per_task: Resources,
    /// The task indices and throttle.
    pub array: ArraySpec,
    /// Wall-clock limit of each task, in seconds.
    pub time_limit_s: Option<u64>,
    /// What must happen to other jobs before this one starts (Slurm's `--dependency`).
    pub dependencies: Dependencies,
    /// Only nodes of this pool may run it (Slurm's partition).
    pub pool: Option<String>,
    /// Node features every node of the job must have (`avx512`, `rdma`, `gpu=h100`).
    pub requires: Vec<String>,
    /// Named countable resources per task (`fpga`, `npu`).
    pub named: Vec<(String, u64)>,
    /// Set for a multi-node job placed whole or not at all.
    pub gang: Option<GangSpec>,
    /// What a node may already hold that starts its tasks sooner (an image): such nodes are
    /// preferred among those that fit.
    pub warm_key: Option<String>,
}

impl JobSpec {
    /// A batch-tier array of `per_task` tasks with nothing else asked for.
    pub fn new(name: &str, project: &str, per_task: Resources, array: ArraySpec) -> JobSpec {
        JobSpec {
            name: name.to_string(),
            project: project.to_string(),
            tier: Tier::Batch,
            per_task,
            array,
            time_limit_s: None,
            dependencies: Dependencies::default(),
            pool: None,
            requires: Vec::new(),
            named: Vec::new(),
            gang: None,
            warm_key: None,
        }
    }

    /// How many job ids the job holds: an array's tasks have one each, its own plus their
    /// position (as Slurm gives each array task a job id of its own, `%j`, beside the array's,
    /// `%A`); a multi-node job's tasks share its one.
    pub fn ids_held(&self) -> u64 {
        if self.gang.is_some() {
            1
        } else {
            u64::from(self.array.n_tasks().max(1))
        }
    }

    /// Whether a node of `pool` may run it: any pool when none is named, else one of the
    /// comma-separated list (Slurm's `-p a,b,c`: whichever can start it first).
    pub fn allows_pool(&self, pool: &str) -> bool {
        self.pool.as_deref().is_none_or(|list| list.split(',').any(|p| p == pool))
    }

    /// The job id of the task at `pos` of a job whose own id is `job_id`.
    pub fn task_job_id(&self, job_id: u64, pos: u32) -> u64 {
        if self.gang.is_some() {
            job_id
        } else {
            job_id + u64::from(pos)
        }
    }
}

/// A multi-node (MPI-style) job: `n_nodes` distinct nodes, `tasks_per_node` tasks on each.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GangSpec {
    /// How many distinct nodes.
    pub n_nodes: u32,
    /// Tasks on each node.
    pub tasks_per_node: u32,
}

/// A submission refused, with the field to blame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpecError {
    /// The field of the request that is wrong.
    pub field: &'static str,
    /// What is wrong with it, for a person.
    pub message: String,
}

impl SpecError {
    /// A new error about `field`.
    pub fn new(field: &'static str, message: impl Into<String>) -> SpecError {
        SpecError { field, message: message.into() }
    }
}

impl fmt::Display for SpecError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

impl std::error::Error for SpecError {}
