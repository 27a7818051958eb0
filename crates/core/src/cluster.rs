//! The in-memory truth about jobs, tasks, nodes and projects, and the events that change it.
//! The scheduling pass is in [`schedule`], the reasons a job waits in [`pending`], scale
//! advice in [`scale`]: all of them methods of [`Cluster`], whose fields only this module and
//! its children touch, so every change goes through a method that keeps the invariants.
//!
//! Tasks of an array are kept by position (0-based, in index order): a byte of state each, a
//! cursor over those never started, and maps only for tasks that run or ran more than once.
//!
//! **Invariant**: a node's `allocated` is the sum of what its running tasks asked for, and never
//! exceeds its capacity; a project's `allocated` is the sum of its running tasks' CPU
//! ([`Cluster::sanity_check`] checks both).

use crate::job::{JobId, JobSpec, SpecError};
use crate::project::{Identity, IdentityOffer, Project};
use crate::resources::{Resources, MAX_NAMED};
use crate::tier::Tier;
use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};

/// A node's number in this cluster (stable while the process lives).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct NodeId(pub u32);

/// A running attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RunningTask {
    /// Where.
    pub node_id: NodeId,
    /// Attempt number, from 1.
    pub attempt: u32,
    /// When it was placed.
    pub started_ms: u64,
    /// When it last saved a checkpoint (its start if never): work since then is lost if it is
    /// preempted.
    pub checkpoint_ms: u64,
    /// Told to stop for a higher-priority task.
    pub preempting: bool,
    /// Sent to its node ahead of free resources: it waits there, holding none, until a task
    /// of the node ends (see `Policy::prefetch_ms`).
    pub queued: bool,
    /// The node's GPUs it holds, by index (bit i: GPU i).
    pub gpus: u64,
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
    /// When its first task started.
    started_ms: Option<u64>,
    /// What one task needs, with named resources in this cluster's slots.
    demand: Resources,
    /// Features every node must have, as this cluster's bits.
    feature_mask: u64,
    project_idx: usize,
    /// Attempts that ended on their own (not requeued or cancelled) and their summed run time
    /// as their nodes measured it: how long this job's tasks take, for the prefetch window.
    n_timed: u64,
    timed_ms: u64,
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
    pub(crate) fn has_pending(&self) -> bool {
        self.counts.pending > 0
    }
    fn set_state(&mut self, pos: u32, state: TaskState) {
        let old = self.states[pos as usize];
        *self.counts.slot(old) -= 1;
        *self.counts.slot(state) += 1;
        self.states[pos as usize] = state;
    }
    pub(crate) fn next_pending(&mut self) -> Option<u32> {
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
    /// The mean run time of its ended tasks, once enough have ended to say.
    pub(crate) fn mean_run_ms(&self) -> Option<u64> {
        (self.n_timed >= MIN_TIMED_TASKS).then(|| self.timed_ms / self.n_timed)
    }
    pub(crate) fn throttled(&self) -> bool {
        self.spec.array.max_running.is_some_and(|max| self.counts.running >= max)
    }
}

/// Tasks of a job that must have ended before its mean run time is trusted.
const MIN_TIMED_TASKS: u64 = 8;

/// A machine that runs tasks.
#[derive(Debug, Clone)]
pub struct Node {
    name: String,
    pool: String,
    capacity: Resources,
    allocated: Resources,
    online: bool,
    features: u64,
    running: BTreeSet<(JobId, u32)>,
    /// Tasks sent ahead of free resources, in the order the node starts them.
    queued: VecDeque<(JobId, u32)>,
    /// The cores those queued tasks will take.
    queued_cpu_millis: u64,
    /// Held for a job that preempted work here, until it places a task on it.
    held_for: Option<JobId>,
    /// Finishes what it runs and takes nothing new.
    draining: bool,
    /// Gets work only when no other node can take it now (a remote site such as Slurm).
    overflow: bool,
    /// The identities it can give tasks.
    identities: IdentityOffer,
    /// GPUs held by running tasks, by index (bit i: GPU i).
    gpus_busy: u64,
    /// GPUs its health check failed: no task is given them.
    gpus_failed: u64,
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
    /// Its features, as a mask (`Cluster::feature_names` names them).
    pub fn feature_mask(&self) -> u64 {
        self.features
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
        let mut free = self.capacity.minus(&self.allocated);
        // A failed GPU is not free, whether or not a task still holds it.
        free.n_gpus = self.capacity.n_gpus.saturating_sub((self.gpus_busy | self.gpus_failed).count_ones());
        free
    }
    /// GPUs its health check failed, by index (bit i: GPU i).
    pub fn gpus_failed(&self) -> u64 {
        self.gpus_failed
    }
    /// True while its agent is connected.
    pub fn is_online(&self) -> bool {
        self.online
    }
    /// How many tasks it runs.
    pub fn n_running(&self) -> u32 {
        self.running.len() as u32
    }
    /// How many tasks wait on it for a running one to end.
    pub fn n_queued(&self) -> u32 {
        self.queued.len() as u32
    }
    /// True while it is being drained by hand.
    pub fn is_draining(&self) -> bool {
        self.draining
    }
    /// The identities it can give tasks.
    pub fn identities(&self) -> IdentityOffer {
        self.identities
    }
}


/// Tunables of the policy; every field has a sensible default.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    /// Fair-share usage halves over this many milliseconds.
    pub fair_share_half_life_ms: u64,
    /// How many blocked gangs get reservations per pass.
    pub max_reservations: usize,
    /// Place each task on the first node (in the order they joined) where it fits, instead of
    /// the tightest: the baseline that simulations compare against.
    pub first_fit: bool,
    /// How much work, in milliseconds per core, a node may be sent beyond its free cores, for
    /// jobs whose tasks are known to be short: the node starts the next one the moment one
    /// ends instead of a round trip to the server later (0: never).
    pub prefetch_ms: u64,
}

impl Default for Policy {
    fn default() -> Policy {
        Policy { fair_share_half_life_ms: 24 * 3600 * 1000, max_reservations: 4, first_fit: false, prefetch_ms: 50 }
    }
}

/// The whole truth the scheduler decides on.
#[derive(Debug, Clone, Default)]
pub struct Cluster {
    jobs: BTreeMap<JobId, Job>,
    /// Jobs not yet finished (and some that finished since the last pass): what a pass looks
    /// at, so its cost follows queued and running work, never history.
    live: BTreeSet<JobId>,
    /// Jobs that left `live`, in the order passes saw them finish: what may be forgotten.
    ended: VecDeque<JobId>,
    /// Jobs with pending tasks.
    queue: BTreeSet<(Tier, JobId)>,
    nodes: Vec<Node>,
    node_by_name: HashMap<String, NodeId>,
    /// Online nodes with free CPU, by (free CPU, id): best fit is a range query.
    free_index: BTreeSet<(u64, NodeId)>,
    projects: Vec<Project>,
    project_by_name: HashMap<String, usize>,
    /// The identity a project gets when first seen (see `set_new_project_identity`).
    new_project_identity: Identity,
    feature_bits: Vec<String>,
    named_slots: Vec<String>,
    policy: Policy,
    /// The nodes that hold each warm key (an image), preferred for jobs that name it.
    warm: HashMap<String, BTreeSet<NodeId>>,
    /// The time of the latest pass: what `+time` dependencies are measured against.
    now_ms: u64,
    /// Reservations made by the last pass: node, job, expected start.
    reservations: BTreeMap<NodeId, (JobId, u64)>,
}

impl Cluster {
    /// An empty cluster with the default policy.
    pub fn new() -> Cluster {
        Cluster::default()
    }

    /// An empty cluster with this policy.
    pub fn with_policy(policy: Policy) -> Cluster {
        Cluster { policy, ..Cluster::default() }
    }

    /// The bit of a feature, adding it if new (at most 64 features).
    pub(crate) fn feature_bit(&mut self, feature: &str) -> Option<u64> {
        if let Some(i) = self.feature_bits.iter().position(|f| f == feature) {
            return Some(1 << i);
        }
        if self.feature_bits.len() >= 64 {
            return None;
        }
        self.feature_bits.push(feature.to_string());
        Some(1 << (self.feature_bits.len() - 1))
    }

    fn named_slot(&mut self, name: &str) -> Option<usize> {
        if let Some(i) = self.named_slots.iter().position(|n| n == name) {
            return Some(i);
        }
        if self.named_slots.len() >= MAX_NAMED {
            return None;
        }
        self.named_slots.push(name.to_string());
        Some(self.named_slots.len() - 1)
    }

    /// Names of the features a mask stands for.
    pub fn feature_names(&self, mask: u64) -> Vec<&str> {
        self.feature_bits
            .iter()
            .enumerate()
            .filter(|(i, _)| mask & (1 << i) != 0)
            .map(|(_, f)| f.as_str())
            .collect()
    }

    /// Checks a spec against what this cluster can ever run; `known_pools` are the pools that
    /// exist even when none of their nodes is connected.
    pub fn validate(&self, spec: &JobSpec, known_pools: &[String]) -> Result<(), SpecError> {
        if spec.per_task.cpu_millis == 0 {
            return Err(SpecError::new("cpus", "must be at least 1"));
        }
        for dep in &spec.dependencies.on {
            if !self.jobs.contains_key(&dep.job) {
                return Err(SpecError::new("dependency", format!("job {} does not exist", dep.job)));
            }
        }
        if let Some(gang) = &spec.gang {
            if gang.n_nodes == 0 || gang.tasks_per_node == 0 {
                return Err(SpecError::new("nodes", "a gang needs at least 1 node and 1 task per node"));
            }
            if spec.array.n_tasks() != gang.n_nodes * gang.tasks_per_node {
                return Err(SpecError::new("array", "a gang job is not an array"));
            }
        }
        let named_new = spec.named.iter().filter(|(n, _)| !self.named_slots.contains(n)).count();
        if self.named_slots.len() + named_new > MAX_NAMED {
            return Err(SpecError::new("resources", format!("at most {MAX_NAMED} named resources per cluster")));
        }
        let new_features = spec.requires.iter().filter(|f| !self.feature_bits.contains(f)).count();
        if self.feature_bits.len() + new_features > 64 {
            return Err(SpecError::new("constraint", "at most 64 distinct node features per cluster"));
        }
        for pool in spec.pool.iter().flat_map(|list| list.split(',')) {
            let exists = known_pools.iter().any(|p| p == pool) || self.nodes.iter().any(|n| n.pool == pool);
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
        self.check_some_node_could_hold(spec)
    }

    /// Accepts a job (already validated and journaled).
    pub fn submit(&mut self, job_id: JobId, spec: JobSpec, now_ms: u64) {
        let n = spec.array.n_tasks();
        let mut demand = spec.per_task;
        for (name, amount) in &spec.named {
            if let Some(slot) = self.named_slot(name) {
                demand.named[slot] = *amount;
            }
        }
        let mut feature_mask = 0;
        for f in &spec.requires {
            feature_mask |= self.feature_bit(f).unwrap_or(0);
        }
        let project_idx = self.project_idx(&spec.project);
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
            started_ms: None,
            demand,
            feature_mask,
            project_idx,
            n_timed: 0,
            timed_ms: 0,
            spec,
        };
        self.queue.insert((job.spec.tier, job_id));
        self.live.insert(job_id);
        self.jobs.insert(job_id, job);
    }

    /// The job with this id.
    pub fn job(&self, job_id: JobId) -> Option<&Job> {
        self.jobs.get(&job_id)
    }

    /// Forgets the jobs that finished at or before `ended_by_ms`, except those an unfinished job
    /// still depends on: from then on the journal alone answers for them, and neither a pass
    /// nor memory grows with history. The ids forgotten.
    pub fn forget_finished(&mut self, ended_by_ms: u64) -> Vec<JobId> {
        let needed: std::collections::HashSet<JobId> = self.live_jobs().flat_map(|j| j.spec.dependencies.on.iter().map(|d| d.job)).collect();
        let mut forgotten = Vec::new();
        let mut kept = Vec::new();
        while let Some(&id) = self.ended.front() {
            let Some(job) = self.jobs.get(&id) else {
                self.ended.pop_front();
                continue;
            };
            if job.ended_ms.unwrap_or(0) > ended_by_ms {
                break;
            }
            self.ended.pop_front();
            if needed.contains(&id) {
                kept.push(id);
                continue;
            }
            if let Some(job) = self.jobs.remove(&id) {
                self.queue.remove(&(job.spec.tier, id));
                forgotten.push(id);
            }
        }
        for id in kept.into_iter().rev() {
            self.ended.push_front(id);
        }
        forgotten
    }

    /// How many jobs the core holds (live ones and those finished but not yet forgotten).
    pub fn n_jobs(&self) -> usize {
        self.jobs.len()
    }

    /// The jobs not finished, oldest first.
    pub fn live_jobs(&self) -> impl DoubleEndedIterator<Item = &Job> {
        self.live.iter().filter_map(|id| self.jobs.get(id)).filter(|j| !j.is_finished())
    }

    /// Every job, oldest first.
    pub fn jobs(&self) -> impl DoubleEndedIterator<Item = &Job> {
        self.jobs.values()
    }

    /// The first job id no job holds (an array holds one per task).
    pub fn next_free_job_id(&self) -> u64 {
        self.jobs.last_key_value().map_or(1, |(id, job)| id.0 + job.spec().ids_held())
    }

    /// The job whose ids include `id`, and which of its tasks has it as its own, if it is not
    /// the job's own id (an array task's).
    pub fn job_holding_id(&self, id: u64) -> Option<(JobId, Option<u32>)> {
        let (job_id, job) = self.jobs.range(..=JobId(id)).next_back()?;
        let offset = id - job_id.0;
        if offset == 0 {
            return Some((*job_id, None));
        }
        if offset >= job.spec().ids_held() {
            return None;
        }
        let pos = u32::try_from(offset).ok()?;
        Some((*job_id, Some(job.spec().array.index_at(pos)?)))
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

    /// Adds a node, or updates one known by name; it starts offline.
    pub fn add_node(&mut self, name: &str, pool: &str, capacity: Resources) -> NodeId {
        self.add_node_with(name, pool, capacity, &[], &[])
    }

    /// Adds a node with features (`avx512`, `rdma`, `gpu=h100`) and named resources.
    pub fn add_node_with(
        &mut self,
        name: &str,
        pool: &str,
        capacity: Resources,
        features: &[String],
        named: &[(String, u64)],
    ) -> NodeId {
        let mut capacity = capacity;
        for (n, amount) in named {
            if let Some(slot) = self.named_slot(n) {
                capacity.named[slot] = *amount;
            }
        }
        let mut mask = 0;
        for f in features {
            mask |= self.feature_bit(f).unwrap_or(0);
        }
        let id = match self.node_by_name.get(name) {
            Some(id) => *id,
            None => {
                let id = NodeId(self.nodes.len() as u32);
                self.nodes.push(Node {
                    name: name.to_string(),
                    pool: pool.to_string(),
                    capacity: Resources::default(),
                    allocated: Resources::default(),
                    online: false,
                    features: 0,
                    running: BTreeSet::new(),
                    queued: VecDeque::new(),
                    queued_cpu_millis: 0,
                    held_for: None,
                    draining: false,
                    overflow: false,
                    identities: IdentityOffer::default(),
                    gpus_busy: 0,
                    gpus_failed: 0,
                });
                self.node_by_name.insert(name.to_string(), id);
                id
            }
        };
        let grew = self.nodes[id.0 as usize].capacity != capacity;
        self.update_node(id, |node| {
            node.capacity = capacity;
            node.pool = pool.to_string();
            node.features = mask;
        });
        // Attempts replayed onto a node whose size was unknown waited in its queue: they run
        // there, and now hold what they use (their GPUs those their agent was told).
        if grew {
            self.promote_queued(id, None);
        }
        id
    }

    /// Changes a node and keeps the free index in step.
    pub(crate) fn update_node(&mut self, id: NodeId, change: impl FnOnce(&mut Node)) {
        let Some(node) = self.nodes.get_mut(id.0 as usize) else { return };
        let before = (node.online, node.free().cpu_millis);
        change(node);
        let after = (node.online, node.free().cpu_millis);
        if before != after {
            if before.0 {
                self.free_index.remove(&(before.1, id));
            }
            if after.0 && after.1 > 0 {
                self.free_index.insert((after.1, id));
            }
        }
    }

    /// Sets the warm keys (images) a node holds, replacing what it held before.
    pub fn set_node_warm(&mut self, node_id: NodeId, keys: &[String]) {
        for nodes in self.warm.values_mut() {
            nodes.remove(&node_id);
        }
        self.warm.retain(|_, nodes| !nodes.is_empty());
        for key in keys {
            self.warm.entry(key.clone()).or_default().insert(node_id);
        }
    }

    /// Marks a node as an overflow site: it gets work only when no other node can take it now.
    pub fn set_node_overflow(&mut self, node_id: NodeId, overflow: bool) {
        if let Some(node) = self.nodes.get_mut(node_id.0 as usize) {
            node.overflow = overflow;
        }
    }

    /// Marks a node as reachable or not; only reachable nodes get new work.
    pub fn set_node_online(&mut self, node_id: NodeId, online: bool) {
        self.update_node(node_id, |n| n.online = online);
    }

    /// Drains a node (it finishes what it runs and takes nothing new) or puts it back.
    pub fn set_node_draining(&mut self, node_id: NodeId, draining: bool) {
        if let Some(node) = self.nodes.get_mut(node_id.0 as usize) {
            node.draining = draining;
        }
    }

    /// Every attempt running on a node, or queued there: (job, position, attempt).
    pub fn running_on(&self, node_id: NodeId) -> Vec<(JobId, u32, u32)> {
        let Some(node) = self.node(node_id) else { return vec![] };
        node.running
            .iter()
            .chain(node.queued.iter())
            .filter_map(|(job_id, pos)| {
                let run = self.jobs.get(job_id)?.running.get(pos)?;
                Some((*job_id, *pos, run.attempt))
            })
            .collect()
    }

    /// Records how an attempt ended. Returns false, changing nothing, when that attempt is not
    /// the one running (a stale or repeated report): a completion is recorded once.
    pub fn finish(&mut self, job_id: JobId, pos: u32, attempt: u32, outcome: TaskOutcome, now_ms: u64) -> bool {
        let started_ms = self.jobs.get(&job_id).and_then(|j| j.running.get(&pos)).map_or(now_ms, |r| r.started_ms);
        self.finish_after(job_id, pos, attempt, outcome, now_ms, now_ms.saturating_sub(started_ms))
    }

    /// `finish`, with how long the task really ran as its node measured it (the time from
    /// dispatch also holds the launch's and the report's way there and back).
    pub fn finish_after(&mut self, job_id: JobId, pos: u32, attempt: u32, outcome: TaskOutcome, now_ms: u64, ran_ms: u64) -> bool {
        if !self.release_attempt(job_id, pos, attempt, now_ms) {
            return false;
        }
        let Some(job) = self.jobs.get_mut(&job_id) else { return false };
        if outcome != TaskOutcome::Cancelled {
            job.n_timed += 1;
            job.timed_ms += ran_ms;
        }
        job.set_state(pos, outcome.state());
        if job.is_finished() {
            job.ended_ms = Some(now_ms);
        }
        true
    }

    /// Puts a running attempt back in the queue (its node lost it, or it was preempted); the
    /// next try is a new attempt. Returns false when that attempt is not running.
    pub fn requeue(&mut self, job_id: JobId, pos: u32, attempt: u32, now_ms: u64) -> bool {
        if !self.release_attempt(job_id, pos, attempt, now_ms) {
            return false;
        }
        let Some(job) = self.jobs.get_mut(&job_id) else { return false };
        job.set_state(pos, TaskState::Pending);
        job.requeued.push_back(pos);
        self.queue.insert((job.spec.tier, job_id));
        true
    }

    /// Records a checkpoint: work before `now_ms` is no longer lost if the attempt is preempted.
    pub fn on_checkpoint(&mut self, job_id: JobId, pos: u32, attempt: u32, now_ms: u64) {
        if let Some(run) = self.jobs.get_mut(&job_id).and_then(|j| j.running.get_mut(&pos)) {
            if run.attempt == attempt {
                run.checkpoint_ms = run.checkpoint_ms.max(now_ms);
            }
        }
    }

    /// Cancels a whole job (`index` None) or one task. Pending tasks end at once; running
    /// ones get a kill order and end when their node reports. Returns the kill orders.
    pub fn cancel(&mut self, job_id: JobId, index: Option<u32>, now_ms: u64) -> Result<Vec<KillOrder>, SpecError> {
        let job = self
            .jobs
            .get_mut(&job_id)
            .ok_or_else(|| SpecError::new("job", format!("job {job_id} does not exist")))?;
        let positions: Vec<u32> = match index {
            Some(i) => vec![job
                .spec
                .array
                .position_of(i)
                .ok_or_else(|| SpecError::new("index", format!("job {job_id} has no task {i}")))?],
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
            for node in self.nodes.iter_mut().filter(|n| n.held_for == Some(job_id)) {
                node.held_for = None;
            }
        }
        let Some(job) = self.jobs.get_mut(&job_id) else { return Ok(kills) };
        if job.is_finished() && job.ended_ms.is_none() {
            job.ended_ms = Some(now_ms);
        }
        Ok(kills)
    }

    /// The attempt number the task at `pos` ran last, if it ran.
    pub fn last_attempt(&self, job_id: JobId, pos: u32) -> Option<u32> {
        self.jobs.get(&job_id)?.last_attempt.get(&pos).copied()
    }

    /// True when `node` may ever run a task of `job` (pool and features), ignoring load.
    pub(crate) fn node_suits(&self, node: &Node, job: &Job) -> bool {
        !node.draining
            && job.spec.allows_pool(&node.pool)
            && node.features & job.feature_mask == job.feature_mask
            && node.capacity.fits(&job.demand)
            && node.identities.serves(self.projects[job.project_idx].identity)
    }

    /// The connected nodes that may run a task of the job (pool, features, identity, size),
    /// whatever they run now.
    pub fn nodes_that_could_run(&self, job_id: JobId) -> Vec<NodeId> {
        let Some(job) = self.jobs.get(&job_id) else { return Vec::new() };
        self.nodes
            .iter()
            .enumerate()
            .filter(|(_, n)| n.online && self.node_suits(n, job))
            .map(|(i, _)| NodeId(i as u32))
            .collect()
    }

    /// Features the job requires that no node has at all.
    pub(crate) fn missing_features(&self, job: &Job) -> Vec<String> {
        let offered = self.nodes.iter().fold(0u64, |m, n| m | n.features);
        self.feature_names(job.feature_mask & !offered).into_iter().map(str::to_string).collect()
    }
}

mod dispatch;
mod dependencies;
mod feasible;
mod gpus;
mod projects;
pub mod pending;
mod sanity;
pub mod scale;
pub mod schedule;
mod snapshot;
mod task;
mod trial;

pub use gpus::{gpu_indexes, gpu_mask};
pub use snapshot::{task_state_from_u8, TaskSnapshot};
pub use task::{TaskCounts, TaskOutcome, TaskState};
pub use trial::Trial;

pub use crate::decisions::{Decisions, KillOrder, Placement};
#[cfg(test)]
mod tests;
