//! The in-memory truth about jobs, tasks and nodes, and the scheduling pass over it.
//!
//! Tasks of an array are kept by position (0-based, in index order): a byte of state each, a
//! cursor over those never started, and maps only for tasks that run or ran more than once.
//!
//! **Invariant**: a node's `allocated` is the sum of what its running tasks asked for, and never
//! exceeds its capacity ([`Cluster::sanity_check`] checks it).

use crate::job::{JobId, JobSpec, SpecError};
use crate::resources::{format_bytes, format_cores, Resources};
use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::fmt;

/// A node's number in this cluster (stable while the process lives).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct NodeId(pub u32);

/// Where a task is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum TaskState {
    /// Waiting to be placed.
    Pending = 0,
    /// Handed to a node.
    Running = 1,
    /// Exited 0.
    Succeeded = 2,
    /// Exited non-zero or was killed by a signal.
    Failed = 3,
    /// Cancelled by a user before or while running.
    Cancelled = 4,
    /// Killed at its time limit.
    Timeout = 5,
}

impl TaskState {
    /// The name on the wire.
    pub fn name(self) -> &'static str {
        match self {
            TaskState::Pending => "pending",
            TaskState::Running => "running",
            TaskState::Succeeded => "succeeded",
            TaskState::Failed => "failed",
            TaskState::Cancelled => "cancelled",
            TaskState::Timeout => "timeout",
        }
    }

    /// True once the task will not change again.
    pub fn is_final(self) -> bool {
        !matches!(self, TaskState::Pending | TaskState::Running)
    }
}

/// How an attempt ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TaskOutcome {
    /// Exit code 0.
    Succeeded,
    /// Non-zero exit or a signal.
    Failed,
    /// Ended on a user's request.
    Cancelled,
    /// Ended at its time limit.
    Timeout,
}

impl TaskOutcome {
    fn state(self) -> TaskState {
        match self {
            TaskOutcome::Succeeded => TaskState::Succeeded,
            TaskOutcome::Failed => TaskState::Failed,
            TaskOutcome::Cancelled => TaskState::Cancelled,
            TaskOutcome::Timeout => TaskState::Timeout,
        }
    }
}

/// How many tasks of a job are in each state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TaskCounts {
    /// Waiting.
    pub pending: u32,
    /// On a node.
    pub running: u32,
    /// Exited 0.
    pub succeeded: u32,
    /// Exited otherwise.
    pub failed: u32,
    /// Cancelled.
    pub cancelled: u32,
    /// Hit the time limit.
    pub timeout: u32,
}

impl TaskCounts {
    fn slot(&mut self, state: TaskState) -> &mut u32 {
        match state {
            TaskState::Pending => &mut self.pending,
            TaskState::Running => &mut self.running,
            TaskState::Succeeded => &mut self.succeeded,
            TaskState::Failed => &mut self.failed,
            TaskState::Cancelled => &mut self.cancelled,
            TaskState::Timeout => &mut self.timeout,
        }
    }

    /// Tasks that will not change again.
    pub fn n_final(&self) -> u32 {
        self.succeeded + self.failed + self.cancelled + self.timeout
    }

    /// Every task.
    pub fn total(&self) -> u32 {
        self.pending + self.running + self.n_final()
    }
}

/// The core's decision: run this attempt of this task on this node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Placement {
    /// The job.
    pub job_id: JobId,
    /// The task's position in the array.
    pub pos: u32,
    /// The task's array index.
    pub index: u32,
    /// Attempt number, from 1.
    pub attempt: u32,
    /// Where.
    pub node_id: NodeId,
}

/// The core's decision: stop this running attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KillOrder {
    /// The job.
    pub job_id: JobId,
    /// The task's array index.
    pub index: u32,
    /// The attempt to stop.
    pub attempt: u32,
    /// Where it runs.
    pub node_id: NodeId,
}

/// A running attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RunningTask {
    /// Where.
    pub node_id: NodeId,
    /// Attempt number, from 1.
    pub attempt: u32,
    /// When it was placed.
    pub started_ms: u64,
}

/// Why a job's next task is not running, in Slurm's reason code and in words.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingReason {
    /// Slurm's short code (`Resources`, `Priority`, `Dependency`, `JobArrayTaskLimit`...).
    pub code: &'static str,
    /// A sentence for a person.
    pub text: String,
}

/// A job and the state of its tasks.
#[derive(Debug, Clone)]
pub struct Job {
    id: JobId,
    spec: JobSpec,
    submitted_ms: u64,
    states: Vec<TaskState>,
    running: HashMap<u32, RunningTask>,
    last_attempt: HashMap<u32, u32>,
    next_fresh: u32,
    requeued: VecDeque<u32>,
    counts: TaskCounts,
    ended_ms: Option<u64>,
}

impl Job {
    /// The job's id.
    pub fn id(&self) -> JobId {
        self.id
    }
    /// What was asked for.
    pub fn spec(&self) -> &JobSpec {
        &self.spec
    }
    /// When it was accepted.
    pub fn submitted_ms(&self) -> u64 {
        self.submitted_ms
    }
    /// When its last task ended, once all have.
    pub fn ended_ms(&self) -> Option<u64> {
        self.ended_ms
    }
    /// Tasks per state.
    pub fn counts(&self) -> TaskCounts {
        self.counts
    }
    /// The state of the task at `pos`.
    pub fn task_state(&self, pos: u32) -> Option<TaskState> {
        self.states.get(pos as usize).copied()
    }
    /// The running attempt of the task at `pos`.
    pub fn running_task(&self, pos: u32) -> Option<&RunningTask> {
        self.running.get(&pos)
    }
    /// Every running attempt, by position.
    pub fn running_tasks(&self) -> impl Iterator<Item = (u32, &RunningTask)> {
        self.running.iter().map(|(pos, r)| (*pos, r))
    }
    /// True when every task has ended.
    pub fn is_finished(&self) -> bool {
        self.counts.n_final() == self.counts.total()
    }
    fn has_pending(&self) -> bool {
        self.counts.pending > 0
    }
    fn set_state(&mut self, pos: u32, state: TaskState) {
        let old = self.states[pos as usize];
        *self.counts.slot(old) -= 1;
        *self.counts.slot(state) += 1;
        self.states[pos as usize] = state;
    }
    fn next_pending(&mut self) -> Option<u32> {
        while let Some(pos) = self.requeued.pop_front() {
            if self.states[pos as usize] == TaskState::Pending {
                return Some(pos);
            }
        }
        while (self.next_fresh as usize) < self.states.len() {
            let pos = self.next_fresh;
            self.next_fresh += 1;
            if self.states[pos as usize] == TaskState::Pending {
                return Some(pos);
            }
        }
        None
    }
    fn throttled(&self) -> bool {
        self.spec
            .array
            .max_running
            .is_some_and(|max| self.counts.running >= max)
    }
}

/// A machine that runs tasks.
#[derive(Debug, Clone)]
pub struct Node {
    name: String,
    pool: String,
    capacity: Resources,
    allocated: Resources,
    online: bool,
    n_running: u32,
}

impl Node {
    /// The node's name.
    pub fn name(&self) -> &str {
        &self.name
    }
    /// The pool (Slurm's partition) it belongs to.
    pub fn pool(&self) -> &str {
        &self.pool
    }
    /// What it offers.
    pub fn capacity(&self) -> Resources {
        self.capacity
    }
    /// What its running tasks hold.
    pub fn allocated(&self) -> Resources {
        self.allocated
    }
    /// What is free.
    pub fn free(&self) -> Resources {
        self.capacity.minus(&self.allocated)
    }
    /// True while its agent is connected.
    pub fn is_online(&self) -> bool {
        self.online
    }
    /// How many tasks it runs.
    pub fn n_running(&self) -> u32 {
        self.n_running
    }
}

/// The whole truth the scheduler decides on.
#[derive(Debug, Clone, Default)]
pub struct Cluster {
    jobs: BTreeMap<JobId, Job>,
    queue: BTreeSet<(crate::tier::Tier, JobId)>,
    nodes: Vec<Node>,
    node_by_name: HashMap<String, NodeId>,
}

impl Cluster {
    /// An empty cluster.
    pub fn new() -> Cluster {
        Cluster::default()
    }

    /// Checks a spec against what this cluster can ever run; `known_pools` are the pools that
    /// exist even when none of their nodes is connected.
    pub fn validate(&self, spec: &JobSpec, known_pools: &[String]) -> Result<(), SpecError> {
        if spec.per_task.cpu_millis == 0 {
            return Err(SpecError::new("cpus", "must be at least 1"));
        }
        for dep in &spec.after_ok {
            if !self.jobs.contains_key(dep) {
                return Err(SpecError::new("after", format!("job {dep} does not exist")));
            }
        }
        if let Some(pool) = &spec.pool {
            let exists = known_pools.iter().any(|p| p == pool)
                || self.nodes.iter().any(|n| &n.pool == pool);
            if !exists {
                let mut pools: Vec<&str> = self.nodes.iter().map(|n| n.pool.as_str()).collect();
                pools.extend(known_pools.iter().map(String::as_str));
                pools.sort_unstable();
                pools.dedup();
                return Err(SpecError::new(
                    "pool",
                    format!("pool '{pool}' does not exist (known: {})", pools.join(", ")),
                ));
            }
        }
        Ok(())
    }

    /// Accepts a job (already validated and journaled).
    pub fn submit(&mut self, job_id: JobId, spec: JobSpec, now_ms: u64) {
        let n = spec.array.n_tasks();
        let job = Job {
            id: job_id,
            submitted_ms: now_ms,
            states: vec![TaskState::Pending; n as usize],
            running: HashMap::new(),
            last_attempt: HashMap::new(),
            next_fresh: 0,
            requeued: VecDeque::new(),
            counts: TaskCounts { pending: n, ..TaskCounts::default() },
            ended_ms: None,
            spec,
        };
        self.queue.insert((job.spec.tier, job_id));
        self.jobs.insert(job_id, job);
    }

    /// The job with this id.
    pub fn job(&self, job_id: JobId) -> Option<&Job> {
        self.jobs.get(&job_id)
    }

    /// Every job, oldest first.
    pub fn jobs(&self) -> impl DoubleEndedIterator<Item = &Job> {
        self.jobs.values()
    }

    /// The largest job id seen.
    pub fn max_job_id(&self) -> Option<JobId> {
        self.jobs.keys().next_back().copied()
    }

    /// Every node.
    pub fn nodes(&self) -> impl Iterator<Item = (NodeId, &Node)> {
        self.nodes.iter().enumerate().map(|(i, n)| (NodeId(i as u32), n))
    }

    /// The node with this id.
    pub fn node(&self, node_id: NodeId) -> Option<&Node> {
        self.nodes.get(node_id.0 as usize)
    }

    /// The node with this name.
    pub fn node_id(&self, name: &str) -> Option<NodeId> {
        self.node_by_name.get(name).copied()
    }

    /// Adds a node, or updates the capacity and pool of one known by name; it starts offline.
    pub fn add_node(&mut self, name: &str, pool: &str, capacity: Resources) -> NodeId {
        if let Some(id) = self.node_by_name.get(name) {
            let node = &mut self.nodes[id.0 as usize];
            node.capacity = capacity;
            node.pool = pool.to_string();
            return *id;
        }
        let id = NodeId(self.nodes.len() as u32);
        self.nodes.push(Node {
            name: name.to_string(),
            pool: pool.to_string(),
            capacity,
            allocated: Resources::default(),
            online: false,
            n_running: 0,
        });
        self.node_by_name.insert(name.to_string(), id);
        id
    }

    /// Marks a node as reachable or not; only reachable nodes get new work.
    pub fn set_node_online(&mut self, node_id: NodeId, online: bool) {
        if let Some(node) = self.nodes.get_mut(node_id.0 as usize) {
            node.online = online;
        }
    }

    /// Every attempt running on a node: (job, position, attempt).
    pub fn running_on(&self, node_id: NodeId) -> Vec<(JobId, u32, u32)> {
        let mut out = Vec::new();
        for job in self.jobs.values() {
            for (pos, run) in &job.running {
                if run.node_id == node_id {
                    out.push((job.id, *pos, run.attempt));
                }
            }
        }
        out.sort_unstable();
        out
    }

    /// Records that an attempt was handed to a node. Used by the scheduling pass and by replay.
    pub fn apply_dispatch(
        &mut self,
        job_id: JobId,
        pos: u32,
        attempt: u32,
        node_id: NodeId,
        now_ms: u64,
    ) -> Result<(), String> {
        let job = self.jobs.get_mut(&job_id).ok_or(format!("no job {job_id}"))?;
        let node = self
            .nodes
            .get_mut(node_id.0 as usize)
            .ok_or(format!("no node {}", node_id.0))?;
        if job.task_state(pos) != Some(TaskState::Pending) {
            return Err(format!("task {job_id}@{pos} is not pending"));
        }
        node.allocated = node.allocated.plus(&job.spec.per_task);
        node.n_running += 1;
        job.set_state(pos, TaskState::Running);
        job.running.insert(pos, RunningTask { node_id, attempt, started_ms: now_ms });
        job.last_attempt.insert(pos, attempt);
        if !job.has_pending() {
            self.queue.remove(&(job.spec.tier, job_id));
        }
        Ok(())
    }

    /// Records how an attempt ended. Returns false, changing nothing, when that attempt is not
    /// the one running (a stale or repeated report): a completion is recorded once.
    pub fn finish(
        &mut self,
        job_id: JobId,
        pos: u32,
        attempt: u32,
        outcome: TaskOutcome,
        now_ms: u64,
    ) -> bool {
        if !self.release_attempt(job_id, pos, attempt) {
            return false;
        }
        let Some(job) = self.jobs.get_mut(&job_id) else { return false };
        job.set_state(pos, outcome.state());
        if job.is_finished() {
            job.ended_ms = Some(now_ms);
        }
        true
    }

    /// Takes a running attempt off its node; false when that attempt is not the one running.
    fn release_attempt(&mut self, job_id: JobId, pos: u32, attempt: u32) -> bool {
        let Some(job) = self.jobs.get_mut(&job_id) else { return false };
        if job.running.get(&pos).is_none_or(|run| run.attempt != attempt) {
            return false;
        }
        let Some(run) = job.running.remove(&pos) else { return false };
        if let Some(node) = self.nodes.get_mut(run.node_id.0 as usize) {
            node.allocated = node.allocated.minus(&job.spec.per_task);
            node.n_running -= 1;
        }
        true
    }

    /// Puts a running attempt back in the queue (its node lost it); the next try is a new
    /// attempt. Returns false when that attempt is not running.
    pub fn requeue(&mut self, job_id: JobId, pos: u32, attempt: u32) -> bool {
        if !self.release_attempt(job_id, pos, attempt) {
            return false;
        }
        let Some(job) = self.jobs.get_mut(&job_id) else { return false };
        job.set_state(pos, TaskState::Pending);
        job.requeued.push_back(pos);
        self.queue.insert((job.spec.tier, job_id));
        true
    }

    /// Cancels a whole job (`index` None) or one task. Pending tasks end at once; running
    /// ones get a kill order and end when their node reports. Returns the kill orders.
    pub fn cancel(
        &mut self,
        job_id: JobId,
        index: Option<u32>,
        now_ms: u64,
    ) -> Result<Vec<KillOrder>, SpecError> {
        let job = self
            .jobs
            .get_mut(&job_id)
            .ok_or_else(|| SpecError::new("job", format!("job {job_id} does not exist")))?;
        let positions: Vec<u32> = match index {
            Some(i) => vec![job.spec.array.position_of(i).ok_or_else(|| {
                SpecError::new("index", format!("job {job_id} has no task {i}"))
            })?],
            None => (0..job.states.len() as u32).collect(),
        };
        let mut kills = Vec::new();
        for pos in positions {
            match job.states[pos as usize] {
                TaskState::Pending => job.set_state(pos, TaskState::Cancelled),
                TaskState::Running => {
                    if let Some(run) = job.running.get(&pos) {
                        kills.push(KillOrder {
                            job_id,
                            index: job.spec.array.index_at(pos).unwrap_or(pos),
                            attempt: run.attempt,
                            node_id: run.node_id,
                        });
                    }
                }
                _ => {}
            }
        }
        if !job.has_pending() {
            self.queue.remove(&(job.spec.tier, job_id));
        }
        if job.is_finished() && job.ended_ms.is_none() {
            job.ended_ms = Some(now_ms);
        }
        Ok(kills)
    }

    /// The attempt number the task at `pos` ran last, if it ran.
    pub fn last_attempt(&self, job_id: JobId, pos: u32) -> Option<u32> {
        self.jobs.get(&job_id)?.last_attempt.get(&pos).copied()
    }

    /// Whether a job's dependencies allow it to start: Ok(true) yes, Ok(false) not yet,
    /// Err(dep) never (that dependency did not succeed).
    fn dependencies_met(&self, job: &Job) -> Result<bool, JobId> {
        let mut met = true;
        for dep in &job.spec.after_ok {
            let Some(dep_job) = self.jobs.get(dep) else { return Err(*dep) };
            let c = dep_job.counts;
            if c.failed + c.cancelled + c.timeout > 0 {
                return Err(*dep);
            }
            if c.succeeded < c.total() {
                met = false;
            }
        }
        Ok(met)
    }

    /// One scheduling pass: places pending tasks, highest tier then oldest job first, each
    /// on the online node where it fits most tightly. Returns what it decided; the state
    /// already reflects it.
    pub fn schedule(&mut self, now_ms: u64) -> Vec<Placement> {
        let mut placements = Vec::new();
        let queued: Vec<(crate::tier::Tier, JobId)> = self.queue.iter().copied().collect();
        for (_, job_id) in queued {
            if !self.nodes.iter().any(|n| n.online && n.free().cpu_millis > 0) {
                break;
            }
            let Some(job) = self.jobs.get(&job_id) else { continue };
            if self.dependencies_met(job) != Ok(true) {
                continue;
            }
            loop {
                let Some(job) = self.jobs.get(&job_id) else { break };
                if job.throttled() || !job.has_pending() {
                    break;
                }
                let Some(node_id) = self.best_node(&job.spec) else { break };
                let Some(job) = self.jobs.get_mut(&job_id) else { break };
                let Some(pos) = job.next_pending() else { break };
                let attempt = job.last_attempt.get(&pos).map_or(1, |a| a + 1);
                let index = job.spec.array.index_at(pos).unwrap_or(pos);
                if self.apply_dispatch(job_id, pos, attempt, node_id, now_ms).is_ok() {
                    placements.push(Placement { job_id, pos, index, attempt, node_id });
                }
            }
        }
        placements
    }

    fn best_node(&self, spec: &JobSpec) -> Option<NodeId> {
        self.nodes
            .iter()
            .enumerate()
            .filter(|(_, n)| n.online && n.free().fits(&spec.per_task))
            .filter(|(_, n)| spec.pool.as_ref().is_none_or(|p| &n.pool == p))
            .min_by_key(|(i, n)| (n.free().cpu_millis - spec.per_task.cpu_millis, *i))
            .map(|(i, _)| NodeId(i as u32))
    }

    /// Why the job's next pending task is not running; None when nothing of it is pending.
    pub fn why_pending(&self, job_id: JobId) -> Option<PendingReason> {
        let job = self.jobs.get(&job_id)?;
        if !job.has_pending() {
            return None;
        }
        match self.dependencies_met(job) {
            Err(dep) => {
                return Some(PendingReason {
                    code: "DependencyNeverSatisfied",
                    text: format!("job {dep} did not succeed, so this job can never start"),
                })
            }
            Ok(false) => {
                let waiting: Vec<String> = job
                    .spec
                    .after_ok
                    .iter()
                    .filter(|d| self.jobs.get(d).is_some_and(|j| !j.is_finished()))
                    .map(|d| d.to_string())
                    .collect();
                return Some(PendingReason {
                    code: "Dependency",
                    text: format!("waiting for job {} to succeed", waiting.join(", ")),
                });
            }
            Ok(true) => {}
        }
        if let Some(max) = job.spec.array.max_running.filter(|_| job.throttled()) {
            return Some(PendingReason {
                code: "JobArrayTaskLimit",
                text: format!("array limit reached: {max} of {max} tasks running (%{max})"),
            });
        }
        let need = job.spec.per_task;
        let eligible: Vec<&Node> = self
            .nodes
            .iter()
            .filter(|n| job.spec.pool.as_ref().is_none_or(|p| &n.pool == p))
            .collect();
        if eligible.is_empty() {
            let text = match &job.spec.pool {
                Some(pool) => format!("no node of pool '{pool}' has joined"),
                None => "no node has joined".to_string(),
            };
            return Some(PendingReason { code: "Nodes_required", text });
        }
        let online: Vec<&&Node> = eligible.iter().filter(|n| n.online).collect();
        if online.is_empty() {
            return Some(PendingReason {
                code: "NodeDown",
                text: "every node that could run it is disconnected".to_string(),
            });
        }
        if !online.iter().any(|n| n.capacity.fits(&need)) {
            let largest = online.iter().map(|n| n.capacity).max_by_key(|c| c.cpu_millis);
            return Some(PendingReason {
                code: "Resources",
                text: format!(
                    "needs {} on one node; the largest node has {}",
                    describe(&need),
                    largest.map(|c| describe(&c)).unwrap_or_default()
                ),
            });
        }
        let ahead: u64 = self
            .queue
            .iter()
            .take_while(|(_, id)| *id != job_id)
            .filter_map(|(_, id)| self.jobs.get(id))
            .filter(|j| self.dependencies_met(j) == Ok(true))
            .map(|j| u64::from(j.counts.pending))
            .sum();
        if ahead > 0 {
            return Some(PendingReason {
                code: "Priority",
                text: format!("behind {ahead} tasks of higher priority or older jobs"),
            });
        }
        let best_free = online.iter().map(|n| n.free()).max_by_key(|f| f.cpu_millis);
        let n_with_best = online
            .iter()
            .filter(|n| Some(n.free()) == best_free)
            .count();
        Some(PendingReason {
            code: "Resources",
            text: format!(
                "needs {} on one node; the largest free block is {} on {} of {} nodes",
                describe(&need),
                best_free.map(|f| describe(&f)).unwrap_or_default(),
                n_with_best,
                online.len()
            ),
        })
    }

    /// Checks the cross-index invariants; tests run it after every step.
    pub fn sanity_check(&self) -> Result<(), String> {
        let mut allocated = vec![Resources::default(); self.nodes.len()];
        let mut n_running = vec![0u32; self.nodes.len()];
        for job in self.jobs.values() {
            let mut counts = TaskCounts::default();
            for state in &job.states {
                *counts.slot(*state) += 1;
            }
            if counts != job.counts {
                return Err(format!("job {}: counts {:?} != {:?}", job.id, job.counts, counts));
            }
            if job.running.len() as u32 != counts.running {
                return Err(format!("job {}: running map out of step", job.id));
            }
            for (pos, run) in &job.running {
                if job.states[*pos as usize] != TaskState::Running {
                    return Err(format!("job {} task {pos}: in running map, not running", job.id));
                }
                let i = run.node_id.0 as usize;
                allocated[i] = allocated[i].plus(&job.spec.per_task);
                n_running[i] += 1;
            }
            let queued = self.queue.contains(&(job.spec.tier, job.id));
            if job.has_pending() && !queued {
                return Err(format!("job {} has pending tasks but is not queued", job.id));
            }
        }
        for (i, node) in self.nodes.iter().enumerate() {
            if node.allocated != allocated[i] || node.n_running != n_running[i] {
                return Err(format!("node {}: allocation out of step", node.name));
            }
            if !node.capacity.fits(&node.allocated) {
                return Err(format!("node {}: over-committed", node.name));
            }
        }
        Ok(())
    }
}

fn describe(r: &Resources) -> String {
    let mut text = format!("{} cores", format_cores(r.cpu_millis));
    if r.mem_bytes > 0 {
        text.push_str(&format!(" and {} memory", format_bytes(r.mem_bytes)));
    }
    if r.n_gpus > 0 {
        text.push_str(&format!(" and {} GPUs", r.n_gpus));
    }
    text
}

impl fmt::Display for TaskState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests;
