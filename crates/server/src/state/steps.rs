//! Job steps of a multi-node batch allocation: the batch script's `srun` posts a step, the
//! other nodes' shares of the allocation (`srun --step-host`) take their ranks of it, and srun
//! reads back what they printed and how they ended. Held in memory only, like Slurm's step
//! records of a running job; a restart of the server ends the steps that were running (their
//! srun says so).
//!
//! Every call carries the job's step key, which only that job's tasks are given: it reaches that
//! job's steps and nothing else.

use super::Shared;
use crate::error::{Error, Result};
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Mutex;
use std::time::{Duration, Instant};
use tidepool_api::{RankExit, StepLaunch, StepLine, StepPosted, StepProgress, StepReport, StepsForNode, MAX_STEP_BYTES};
use tidepool_core::{JobId, TaskState};

/// The most lines of one step kept for srun to read; older unread ones are dropped, counted.
const MAX_KEPT_LINES: usize = 200_000;
/// How long a node's poll for steps waits for one.
const NODE_POLL_WAIT: Duration = Duration::from_secs(20);
/// The longest srun's read of a step's progress waits for news.
const PROGRESS_WAIT_MS: u64 = 5000;
/// How often a waiting read looks again (the batch script may end meanwhile).
const LOOK_AGAIN: Duration = Duration::from_millis(200);

/// The steps of every running allocation, and a bell rung on any change.
#[derive(Default)]
pub struct StepBoard {
    jobs: Mutex<HashMap<u64, JobSteps>>,
    changed: tokio::sync::Notify,
}

#[derive(Default)]
struct JobSteps {
    steps: BTreeMap<u32, StepRun>,
}

struct StepRun {
    launch: StepLaunch,
    /// Lines not yet dropped; the first is number `first_line`.
    lines: std::collections::VecDeque<StepLine>,
    first_line: u64,
    exits: Vec<RankExit>,
    done_nodes: BTreeSet<u32>,
}

/// HMAC-SHA256 (RFC 2104) of `message` under `key`.
fn hmac_sha256(key: &[u8], message: &[u8]) -> [u8; 32] {
    let mut block = [0u8; 64];
    if key.len() > 64 {
        block[..32].copy_from_slice(&Sha256::digest(key));
    } else {
        block[..key.len()].copy_from_slice(key);
    }
    let pad = |byte: u8| block.iter().map(|b| b ^ byte).collect::<Vec<u8>>();
    let inner = Sha256::new().chain_update(pad(0x36)).chain_update(message).finalize();
    Sha256::new().chain_update(pad(0x5c)).chain_update(inner).finalize().into()
}

impl super::Inner {
    /// The key that a job's tasks present for its steps.
    pub(super) fn step_key_of(&self, job_id: u64) -> String {
        let mac = hmac_sha256(self.step_secret.as_bytes(), format!("steps of job {job_id}").as_bytes());
        let hex: String = mac.iter().map(|b| format!("{b:02x}")).collect();
        format!("tpk_{hex}")
    }
}

impl Shared {
    /// Whether `presented` opens `job_id`'s steps: its step key, or the admin token.
    pub fn opens_steps(&self, job_id: u64, presented: &str) -> bool {
        let key = self.lock().step_key_of(job_id);
        tidepool_api::same_secret(presented, &key) || tidepool_api::same_secret(presented, &self.admin_token)
    }

    /// The number of nodes of a running multi-node batch allocation, and whether its batch
    /// script still runs; `None` for any other job.
    fn allocation(&self, job_id: u64) -> Option<(u32, bool)> {
        let inner = self.lock();
        let req = inner.requests.get(&JobId(job_id))?;
        if !crate::spec::is_batch_allocation(req) {
            return None;
        }
        let job = inner.cluster.job(JobId(job_id))?;
        let nodes = job.spec().gang?.n_nodes;
        Some((nodes, job.task_state(0) == Some(TaskState::Running)))
    }

    /// Posts a step of a running allocation.
    pub fn on_step_post(&self, job_id: u64, launch: StepLaunch) -> Result<StepPosted> {
        let (nodes, running) = self.allocation(job_id).ok_or_else(|| Error::NotFound(format!("job {job_id} is not a running multi-node allocation")))?;
        if !running {
            return Err(Error::NotFound(format!("job {job_id}'s batch script has ended")));
        }
        if launch.command.is_empty() || launch.command[0].is_empty() {
            return Err(Error::field("command", "is empty"));
        }
        let size: usize = launch.command.iter().map(String::len).sum::<usize>() + launch.env.iter().map(|(k, v)| k.len() + v.len()).sum::<usize>();
        if size > MAX_STEP_BYTES {
            return Err(Error::field("env", format!("the command and environment hold {size} bytes; at most {MAX_STEP_BYTES}")));
        }
        let mut seen = BTreeSet::new();
        let listed: u64 = launch.ranks.iter().map(|r| u64::from(r.count)).sum();
        if listed > u64::from(launch.ntasks) || launch.ranks.iter().any(|r| u64::from(r.first) + u64::from(r.count) > u64::from(launch.ntasks)) {
            return Err(Error::field("ntasks", format!("{} ranks cannot hold the ranks listed", launch.ntasks)));
        }
        for r in &launch.ranks {
            if r.node >= nodes || !seen.insert(r.node) || r.count == 0 || r.count > 100_000 {
                return Err(Error::field("ranks", format!("node {} with {} ranks: each node of the {nodes} once, with 1 to 100,000 ranks", r.node, r.count)));
            }
        }
        let mut jobs = self.steps.jobs.lock().unwrap_or_else(|p| p.into_inner());
        let steps = &mut jobs.entry(job_id).or_default().steps;
        if steps.contains_key(&launch.step_id) {
            return Err(Error::field("step_id", format!("step {} was already posted", launch.step_id)));
        }
        let step_id = launch.step_id;
        steps.insert(step_id, StepRun { launch, lines: Default::default(), first_line: 0, exits: Vec::new(), done_nodes: BTreeSet::new() });
        drop(jobs);
        self.steps.changed.notify_waiters();
        self.forget_ended_allocations();
        Ok(StepPosted { step_id })
    }

    /// The steps node `node` of the allocation has ranks in, posted after step `after` (or any
    /// when `after` is absent); waits for one, or for the batch script's end.
    pub async fn on_steps_for_node(&self, job_id: u64, node: u32, after: Option<u32>) -> Result<StepsForNode> {
        let deadline = Instant::now() + NODE_POLL_WAIT;
        loop {
            let bell = self.steps.changed.notified();
            let (_, running) = self.allocation(job_id).ok_or_else(|| Error::NotFound(format!("job {job_id} is not a running multi-node allocation")))?;
            if !running {
                return Ok(StepsForNode { steps: Vec::new(), ended: true });
            }
            let steps: Vec<StepLaunch> = {
                let jobs = self.steps.jobs.lock().unwrap_or_else(|p| p.into_inner());
                jobs.get(&job_id).map_or_else(Vec::new, |j| {
                    j.steps
                        .values()
                        .filter(|s| after.is_none_or(|a| s.launch.step_id > a) && s.launch.ranks.iter().any(|r| r.node == node))
                        .map(|s| s.launch.clone())
                        .collect()
                })
            };
            if !steps.is_empty() || Instant::now() >= deadline {
                return Ok(StepsForNode { steps, ended: false });
            }
            let _ = tokio::time::timeout(LOOK_AGAIN, bell).await;
        }
    }

    /// Takes what a node's ranks printed and how they ended.
    pub fn on_step_report(&self, job_id: u64, step_id: u32, report: StepReport) -> Result<()> {
        let mut jobs = self.steps.jobs.lock().unwrap_or_else(|p| p.into_inner());
        let step = jobs
            .get_mut(&job_id)
            .and_then(|j| j.steps.get_mut(&step_id))
            .ok_or_else(|| Error::NotFound(format!("step {job_id}.{step_id} does not exist")))?;
        let Some(share) = step.launch.ranks.iter().find(|r| r.node == report.node).copied() else {
            return Err(Error::field("node", format!("node {} runs no rank of step {step_id}", report.node)));
        };
        let ranks = share.first..share.first + share.count;
        if let Some(bad) = report.lines.iter().map(|l| l.rank).chain(report.exits.iter().map(|e| e.rank)).find(|r| !ranks.contains(r)) {
            return Err(Error::field("rank", format!("rank {bad} is not one of node {}'s", report.node)));
        }
        step.lines.extend(report.lines);
        while step.lines.len() > MAX_KEPT_LINES {
            step.lines.pop_front();
            step.first_line += 1;
        }
        step.exits.extend(report.exits);
        if report.done {
            step.done_nodes.insert(report.node);
        }
        drop(jobs);
        self.steps.changed.notify_waiters();
        Ok(())
    }

    /// What a step's remote ranks printed from line `after` on, and how far it got; waits
    /// briefly for news.
    pub async fn on_step_progress(&self, job_id: u64, step_id: u32, after: u64, wait_ms: u64) -> Result<StepProgress> {
        let deadline = Instant::now() + Duration::from_millis(wait_ms.min(PROGRESS_WAIT_MS));
        loop {
            let bell = self.steps.changed.notified();
            let (progress, all_done) = {
                let mut jobs = self.steps.jobs.lock().unwrap_or_else(|p| p.into_inner());
                let step = jobs
                    .get_mut(&job_id)
                    .and_then(|j| j.steps.get_mut(&step_id))
                    .ok_or_else(|| Error::NotFound(format!("step {job_id}.{step_id} does not exist")))?;
                // What srun has read is no longer kept.
                while step.first_line < after && step.lines.pop_front().is_some() {
                    step.first_line += 1;
                }
                let skip = after.saturating_sub(step.first_line) as usize;
                let lines: Vec<StepLine> = step.lines.iter().skip(skip).cloned().collect();
                let next = step.first_line + step.lines.len() as u64;
                let all_done = step.launch.ranks.iter().all(|r| step.done_nodes.contains(&r.node));
                let progress = StepProgress {
                    lines,
                    next,
                    exits: step.exits.clone(),
                    done_nodes: step.done_nodes.iter().copied().collect(),
                    dropped: step.first_line.saturating_sub(after),
                };
                (progress, all_done)
            };
            let ended = !self.allocation(job_id).is_some_and(|(_, running)| running);
            if !progress.lines.is_empty() || all_done || ended || Instant::now() >= deadline {
                return Ok(progress);
            }
            let _ = tokio::time::timeout(LOOK_AGAIN, bell).await;
        }
    }

    /// Drops the steps of allocations whose batch script has ended.
    fn forget_ended_allocations(&self) {
        let jobs: Vec<u64> = self.steps.jobs.lock().unwrap_or_else(|p| p.into_inner()).keys().copied().collect();
        let ended: Vec<u64> = jobs.into_iter().filter(|j| !self.allocation(*j).is_some_and(|(_, running)| running)).collect();
        if !ended.is_empty() {
            let mut jobs = self.steps.jobs.lock().unwrap_or_else(|p| p.into_inner());
            for j in ended {
                jobs.remove(&j);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::hmac_sha256;

    #[test]
    fn hmac_matches_rfc_4231() {
        // RFC 4231, test case 2.
        let mac = hmac_sha256(b"Jefe", b"what do ya want for nothing?");
        let hex: String = mac.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(hex, "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843");
    }
}
