//! Job steps across a multi-node allocation (`srun` in a batch script of `--nodes N`): the
//! batch script's `srun` posts a step, the other nodes of the allocation take their ranks of
//! it from the server and send back what the ranks print and how they end. Every connection
//! dials out to the server, so no node listens; each call carries the job's step key
//! (`TIDEPOOL_STEP_KEY`, given only to that job's tasks).

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The longest command line and environment a step may carry, in bytes together.
pub const MAX_STEP_BYTES: usize = 1 << 20;

/// `POST /api/v1/jobs/{id}/steps`: a step to run on nodes of the allocation.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StepLaunch {
    /// The step's number (`SLURM_STEP_ID`), chosen by the srun that starts it.
    pub step_id: u32,
    /// The program and its arguments.
    pub command: Vec<String>,
    /// Each rank's environment before the per-rank variables (what srun exported).
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Ranks of the whole step, the first node's included (`SLURM_NTASKS`).
    pub ntasks: u32,
    /// The ranks each other node of the allocation runs, by node number (`SLURM_NODEID`).
    pub ranks: Vec<NodeRanks>,
    /// The step's node names in node order (`SLURM_STEP_NODELIST`).
    #[serde(default)]
    pub nodelist: Vec<String>,
    /// Cores per rank (`SLURM_CPUS_PER_TASK`).
    #[serde(default = "one")]
    pub cpus_per_task: u32,
    /// Standard output pattern (`%t` rank, `%s` step, ...); unset: sent back to srun.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<String>,
    /// Standard error pattern; unset: sent back to srun.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Working directory of the ranks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chdir: Option<String>,
}

fn one() -> u32 {
    1
}

/// The ranks one node runs: `count` ranks from `first`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeRanks {
    /// The node's number in the allocation.
    pub node: u32,
    /// Its first rank (`SLURM_PROCID`).
    pub first: u32,
    /// How many ranks it runs.
    pub count: u32,
}

/// The answer to a step posted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepPosted {
    /// Its number.
    pub step_id: u32,
}

/// `GET /api/v1/jobs/{id}/steps?node=K&after=S`: steps with ranks on node K posted after step
/// S (waits up to 20 s for one), or `ended` once the batch script has ended.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepsForNode {
    /// Steps for the node, oldest first.
    pub steps: Vec<StepLaunch>,
    /// The batch script has ended: the node's share of the allocation is free to end.
    pub ended: bool,
}

/// A line a rank printed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StepLine {
    /// The rank.
    pub rank: u32,
    /// True for standard error.
    #[serde(default)]
    pub stderr: bool,
    /// The line, without its newline.
    pub text: String,
}

/// How a rank ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RankExit {
    /// The rank.
    pub rank: u32,
    /// Its exit code (128 + the signal when killed).
    pub code: i32,
    /// The signal that killed it, if one did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signal: Option<i32>,
}

/// `POST /api/v1/jobs/{id}/steps/{step}`: what a node's ranks printed and how they ended.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StepReport {
    /// The node reporting.
    pub node: u32,
    /// Lines printed since its last report.
    #[serde(default)]
    pub lines: Vec<StepLine>,
    /// Ranks that ended since its last report.
    #[serde(default)]
    pub exits: Vec<RankExit>,
    /// Every rank of the node has ended and all it printed was sent.
    #[serde(default)]
    pub done: bool,
}

/// `GET /api/v1/jobs/{id}/steps/{step}?after=N&wait_ms=W`: lines from the N-th on (waiting up to
/// W ms, at most 5000, for news), the exits so far and the nodes that are done.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepProgress {
    /// Lines from `after` on.
    pub lines: Vec<StepLine>,
    /// The `after` to ask with next.
    pub next: u64,
    /// Every rank exit reported so far.
    pub exits: Vec<RankExit>,
    /// Nodes whose ranks have all ended.
    pub done_nodes: Vec<u32>,
    /// Lines dropped because the step printed more than the server keeps for srun.
    #[serde(default)]
    pub dropped: u64,
}
