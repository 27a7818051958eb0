//! The batch engine: jobs arrive at their submit times, the core schedules them on a pool of
//! nodes that an autoscaler grows (each node takes a provisioning delay) and shrinks (a node
//! idle for the release delay goes), tasks end after their run times. Virtual time advances from
//! event to event; the scheduler runs every [`TICK_MS`], as a real control loop would.
//!
//! With [`Compaction`] on, tasks checkpoint periodically and, once nothing waits, the core's
//! compaction plan moves the tasks of lightly used nodes (resuming from their last checkpoint,
//! after a restore time) into the free room of others, so the emptied nodes are released.
//!
//! With [`Faults`], a share of the nodes are spot instances (cheaper, reclaimed at random) and
//! any node may fail; the tasks of a lost node go back to the queue, resuming from their last
//! checkpoint when the policy checkpoints, else from the start.

use crate::rng::Rng;
use crate::svg::Series;
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use tidepool_core::{ArraySpec, Cluster, GangSpec, JobId, JobSpec, NodeId, Policy, Resources, TaskOutcome};

/// How often the scheduler and the autoscaler run, in virtual ms.
pub const TICK_MS: u64 = 5_000;

/// One job of a workload: an array of equal tasks (or a gang of them) with known run times.
#[derive(Debug, Clone, PartialEq)]
pub struct SimJob {
    /// When it is submitted, seconds from the start.
    pub submit_s: f64,
    /// Cores per task.
    pub cores: u64,
    /// Run time of each task, seconds (the array's size is its length).
    pub run_s: Vec<f64>,
    /// All tasks start together on this many distinct nodes (one task per node).
    pub gang_nodes: Option<u32>,
    /// The time limit the user asked for, seconds (backfilling plans with it).
    pub limit_s: Option<f64>,
}

/// A pool of nodes of one shape.
#[derive(Debug, Clone, PartialEq)]
pub struct Pool {
    /// Cores per node.
    pub node_cores: u64,
    /// Nodes at the start (and never fewer).
    pub min_nodes: u32,
    /// The most nodes it may have.
    pub max_nodes: u32,
    /// Seconds from asking for a node until it takes work.
    pub provision_s: f64,
    /// Spot instances and failures; None: nodes are on-demand and never fail.
    pub faults: Option<Faults>,
}

/// What goes wrong with nodes, drawn per new instance from a seeded generator.
#[derive(Debug, Clone, PartialEq)]
pub struct Faults {
    /// Seed of the draws.
    pub seed: u64,
    /// Share of new nodes that are spot instances.
    pub spot_share: f64,
    /// A spot node-hour's price as a share of an on-demand one.
    pub spot_price: f64,
    /// Reclaims per spot node-hour (a Poisson rate).
    pub spot_reclaims_per_node_h: f64,
    /// Failures per node-hour, spot or not.
    pub failures_per_node_h: f64,
}

/// The policy under test.
#[derive(Debug, Clone, PartialEq)]
pub struct SimPolicy {
    /// First fit instead of the core's best fit.
    pub first_fit: bool,
    /// Seconds a node stays idle, with nothing queued, before it is released.
    pub idle_release_s: f64,
    /// Long-tail compaction; None: tasks stay where they started.
    pub compaction: Option<Compaction>,
    /// A pass the moment a job arrives or a task ends, as the server runs one, instead of every
    /// [`TICK_MS`] (replays of logs, where waits are measured to the second).
    pub event_driven: bool,
}

/// How tasks checkpoint and how often the tail is compacted.
#[derive(Debug, Clone, PartialEq)]
pub struct Compaction {
    /// Seconds between two checkpoints of a task (the most work a move loses).
    pub checkpoint_s: f64,
    /// Seconds a moved task spends restoring its checkpoint before it goes on.
    pub restore_s: f64,
    /// Seconds between two compaction plans.
    pub every_s: f64,
    /// Nodes considered per plan, emptiest first (bounds the cost on a large fleet).
    pub max_candidates: usize,
}

impl Compaction {
    /// The checkpoint period, ms (at least 1).
    fn period_ms(&self) -> u64 {
        ((self.checkpoint_s * 1000.0) as u64).max(1)
    }

    /// The restore time, ms.
    fn restore_ms(&self) -> u64 {
        (self.restore_s * 1000.0) as u64
    }

    /// When a task started at `started` last checkpointed, by `now`.
    fn last_checkpoint(&self, started: u64, now: u64) -> u64 {
        let period = self.period_ms();
        started + now.saturating_sub(started) / period * period
    }
}

/// What a run measured.
#[derive(Debug, Clone, PartialEq)]
pub struct Report {
    /// Tasks run.
    pub tasks: u64,
    /// Allocated cores over online cores while anything was queued.
    pub busy_share_while_queued: f64,
    /// Node-hours paid (provisioning included).
    pub node_hours: f64,
    /// Hours until the last task ended.
    pub makespan_h: f64,
    /// Node-hours paid after the last task started (the long tail).
    pub tail_node_hours: f64,
    /// Mean wait from submission to start, seconds.
    pub mean_wait_s: f64,
    /// 95th percentile of the wait, seconds.
    pub p95_wait_s: f64,
    /// Most nodes paid for at once.
    pub peak_nodes: u32,
    /// Nodes paid for over time (hours, nodes).
    pub nodes_over_time: Series,
    /// Busy share of online cores over time (hours, share).
    pub busy_over_time: Series,
    /// Tasks moved by compaction.
    pub moved_tasks: u64,
    /// Core-hours of work redone: since the moved or lost tasks' last checkpoints, plus restores.
    pub lost_core_hours: f64,
    /// Spot nodes reclaimed.
    pub spot_reclaims: u64,
    /// Nodes that failed.
    pub node_failures: u64,
    /// Tasks whose node was lost under them.
    pub tasks_lost_with_nodes: u64,
    /// When each job's first task started, seconds (infinite if it never did), in job order.
    pub job_starts_s: Vec<f64>,
    /// What the node-hours cost, in on-demand node-hours (spot hours at their price).
    pub cost_node_hours: f64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Event {
    Tick,
    Submit(usize),
    NodeUp(usize),
    End { job: usize, pos: u32, attempt: u32 },
    /// A node's instance goes: reclaimed (spot) or failed; `generation` names the instance.
    NodeLost { node: usize, generation: u32, reclaimed: bool },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum NodeState {
    Off,
    Provisioning,
    Up { idle_since_ms: Option<u64> },
}

struct Sim<'a> {
    jobs: &'a [SimJob],
    pool: &'a Pool,
    policy: &'a SimPolicy,
    cluster: Cluster,
    events: BinaryHeap<Reverse<(u64, u64, Event)>>,
    seq: u64,
    nodes: Vec<(Option<NodeId>, NodeState)>,
    /// The simulated node of each core node id.
    by_id: Vec<usize>,
    submitted: usize,
    pending_tasks: u64,
    pending_cores: u64,
    running_tasks: u64,
    allocated_cores: u64,
    last_ms: u64,
    last_start_ms: u64,
    node_ms: f64,
    tail_node_ms: f64,
    queued_alloc: f64,
    queued_online: f64,
    waits: Vec<f64>,
    job_starts_s: Vec<f64>,
    peak_nodes: u32,
    nodes_over_time: Series,
    busy_over_time: Series,
    /// When each running task (job, position) ends, in virtual ms.
    ends: HashMap<(usize, u32), u64>,
    /// Work left for a moved task (job, position), ms, restore included.
    left_after_move: HashMap<(usize, u32), u64>,
    next_compaction_ms: u64,
    moved_tasks: u64,
    lost_core_ms: f64,
    /// Per node slot: its current instance is spot, and which instance it is.
    spot: Vec<bool>,
    /// Spot instances paid for now (provisioning or up).
    paid_spot: u32,
    generation: Vec<u32>,
    rng: Rng,
    spot_reclaims: u64,
    node_failures: u64,
    tasks_lost_with_nodes: u64,
    spot_node_ms: f64,
}

impl Sim<'_> {
    fn push(&mut self, at_ms: u64, event: Event) {
        self.seq += 1;
        self.events.push(Reverse((at_ms, self.seq, event)));
    }

    fn paid_nodes(&self) -> u32 {
        self.nodes.iter().filter(|(_, s)| !matches!(s, NodeState::Off)).count() as u32
    }

    fn up_nodes(&self) -> u32 {
        self.nodes.iter().filter(|(_, s)| matches!(s, NodeState::Up { .. })).count() as u32
    }

    /// Integrates the measures from the last event to `now`.
    fn advance(&mut self, now: u64) {
        let dt = now.saturating_sub(self.last_ms) as f64;
        if dt > 0.0 {
            let paid = f64::from(self.paid_nodes());
            self.node_ms += paid * dt;
            self.spot_node_ms += f64::from(self.paid_spot) * dt;
            if self.pending_tasks > 0 {
                self.queued_alloc += self.allocated_cores as f64 * dt;
                self.queued_online += f64::from(self.up_nodes()) * self.pool.node_cores as f64 * dt;
            } else if self.submitted == self.jobs.len() {
                self.tail_node_ms += paid * dt;
            }
        }
        self.last_ms = now;
    }

    fn node_up(&mut self, i: usize, now: u64) {
        let name = format!("sim{i:05}");
        let id = match self.nodes[i].0 {
            Some(id) => id,
            None => {
                let id = self.cluster.add_node(&name, "sim", Resources::cores(self.pool.node_cores));
                if self.by_id.len() <= id.0 as usize {
                    self.by_id.resize(id.0 as usize + 1, usize::MAX);
                }
                self.by_id[id.0 as usize] = i;
                id
            }
        };
        self.cluster.set_node_online(id, true);
        self.cluster.set_node_draining(id, false);
        self.nodes[i] = (Some(id), NodeState::Up { idle_since_ms: Some(now) });
    }

    fn tick(&mut self, now: u64) {
        let decisions = self.cluster.schedule(now);
        // Nothing reads a finished job back: memory follows live work, as the server's does.
        self.cluster.forget_finished(now);
        for p in decisions.placements {
            let job_idx = p.job_id.0 as usize - 1;
            let job = &self.jobs[job_idx];
            let run_ms = self.left_after_move.remove(&(job_idx, p.pos)).unwrap_or_else(|| {
                (job.run_s.get(p.index as usize).copied().unwrap_or(1.0) * 1000.0).max(1.0) as u64
            });
            self.ends.insert((job_idx, p.pos), now + run_ms);
            self.push(now + run_ms, Event::End { job: job_idx, pos: p.pos, attempt: p.attempt });
            self.pending_tasks -= 1;
            self.pending_cores -= job.cores;
            self.running_tasks += 1;
            self.allocated_cores += job.cores;
            if p.attempt == 1 {
                self.waits.push((now as f64 / 1000.0 - job.submit_s).max(0.0));
                let first = &mut self.job_starts_s[job_idx];
                *first = first.min(now as f64 / 1000.0);
            }
            self.last_start_ms = now;
            if let Some(slot) = self.by_id.get(p.node_id.0 as usize).and_then(|i| self.nodes.get_mut(*i)) {
                slot.1 = NodeState::Up { idle_since_ms: None };
            }
        }
        // Grow: enough nodes for what waits, counting the free cores already there or coming.
        let free_cores: u64 = self
            .nodes
            .iter()
            .filter_map(|(id, s)| match s {
                NodeState::Up { .. } => id.and_then(|id| self.cluster.node(id)).map(|n| n.free().cpu_millis / 1000),
                NodeState::Provisioning => Some(self.pool.node_cores),
                NodeState::Off => None,
            })
            .sum();
        let short = self.pending_cores.saturating_sub(free_cores);
        let room = self.pool.max_nodes.saturating_sub(self.paid_nodes());
        let wanted = (short.div_ceil(self.pool.node_cores.max(1)) as u32).min(room);
        let provision_ms = (self.pool.provision_s * 1000.0) as u64;
        for _ in 0..wanted {
            let Some(i) = self.nodes.iter().position(|(_, s)| *s == NodeState::Off) else { break };
            self.nodes[i].1 = NodeState::Provisioning;
            self.new_instance(i, now);
            self.push(now + provision_ms, Event::NodeUp(i));
        }
        // Shrink: nodes idle long enough while nothing waits.
        let release_ms = (self.policy.idle_release_s * 1000.0) as u64;
        let mut up = self.up_nodes();
        for i in 0..self.nodes.len() {
            let (Some(id), NodeState::Up { idle_since_ms }) = self.nodes[i] else { continue };
            let running = self.cluster.node(id).map_or(0, |n| n.n_running());
            let idle_since = match (running, idle_since_ms) {
                (0, Some(t)) => t,
                (0, None) => {
                    self.nodes[i].1 = NodeState::Up { idle_since_ms: Some(now) };
                    now
                }
                _ => {
                    self.nodes[i].1 = NodeState::Up { idle_since_ms: None };
                    continue;
                }
            };
            if self.pending_tasks == 0 && now.saturating_sub(idle_since) >= release_ms && up > self.pool.min_nodes {
                self.cluster.set_node_online(id, false);
                self.release(i);
                up -= 1;
            }
        }
        self.compact(now);
        self.peak_nodes = self.peak_nodes.max(self.paid_nodes());
        let hours = now as f64 / 3_600_000.0;
        self.nodes_over_time.points.push((hours, f64::from(self.paid_nodes())));
        let online = f64::from(self.up_nodes()) * self.pool.node_cores as f64;
        self.busy_over_time.points.push((hours, if online > 0.0 { self.allocated_cores as f64 / online } else { 0.0 }));
    }

    /// Once nothing waits, moves the tasks of lightly used nodes into the room of others and
    /// drains the emptied nodes, which the shrink step then releases.
    fn compact(&mut self, now: u64) {
        let Some(c) = self.policy.compaction.clone() else { return };
        if self.pending_tasks > 0 || self.submitted < self.jobs.len() || now < self.next_compaction_ms {
            return;
        }
        self.next_compaction_ms = now + (c.every_s * 1000.0) as u64;
        let period_ms = c.period_ms();
        // Periodic checkpoints: tell the core the last one of every running task.
        let running: Vec<(JobId, u32, u32)> =
            self.nodes.iter().filter_map(|(id, _)| *id).flat_map(|id| self.cluster.running_on(id)).collect();
        for (job_id, pos, attempt) in &running {
            let Some(started) = self.cluster.job(*job_id).and_then(|j| j.running_task(*pos)).map(|r| r.started_ms) else { continue };
            self.cluster.on_checkpoint(*job_id, *pos, *attempt, c.last_checkpoint(started, now));
        }
        let plan = self.cluster.compaction_of(now, period_ms, c.max_candidates);
        if plan.moves.is_empty() {
            return;
        }
        for node_id in &plan.emptied {
            self.cluster.set_node_draining(*node_id, true);
        }
        let restore_ms = c.restore_ms();
        for (job_id, pos, attempt) in plan.moves {
            let checkpoint = self.cluster.job(job_id).and_then(|j| j.running_task(pos)).map_or(now, |r| r.checkpoint_ms);
            if self.requeue_from(job_id, pos, attempt, checkpoint, restore_ms, now) {
                self.moved_tasks += 1;
            }
        }
    }

    /// A new instance in slot `i`: spot or not, and when it will be lost, if ever.
    fn new_instance(&mut self, i: usize, now: u64) {
        self.generation[i] += 1;
        let Some(f) = self.pool.faults.clone() else { return };
        let spot = self.rng.unit() < f.spot_share;
        self.spot[i] = spot;
        self.paid_spot += u32::from(spot);
        let mut draw = |rate_per_h: f64| {
            (rate_per_h > 0.0).then(|| now + (-(1.0 - self.rng.unit()).ln() / rate_per_h * 3_600_000.0) as u64)
        };
        let reclaim = if spot { draw(f.spot_reclaims_per_node_h) } else { None };
        let failure = draw(f.failures_per_node_h);
        let generation = self.generation[i];
        let first = match (reclaim, failure) {
            (Some(r), Some(x)) if r <= x => Some((r, true)),
            (_, Some(x)) => Some((x, false)),
            (Some(r), None) => Some((r, true)),
            (None, None) => None,
        };
        if let Some((at, reclaimed)) = first {
            self.push(at, Event::NodeLost { node: i, generation, reclaimed });
        }
    }

    /// The instance in slot `i` is gone: its tasks go back to the queue.
    fn node_lost(&mut self, i: usize, generation: u32, reclaimed: bool, now: u64) {
        if self.generation[i] != generation || self.nodes[i].1 == NodeState::Off {
            return; // released before it could be lost
        }
        if reclaimed {
            self.spot_reclaims += 1;
        } else {
            self.node_failures += 1;
        }
        if let Some(id) = self.nodes[i].0 {
            let checkpoints = self.policy.compaction.clone();
            let restore_ms = checkpoints.as_ref().map_or(0, Compaction::restore_ms);
            for (job_id, pos, attempt) in self.cluster.running_on(id) {
                let started = self.cluster.job(job_id).and_then(|j| j.running_task(pos)).map_or(now, |r| r.started_ms);
                // Without checkpoints a task starts over; with them, from the last one.
                let resume_from = checkpoints.as_ref().map_or(started, |c| c.last_checkpoint(started, now));
                if self.requeue_from(job_id, pos, attempt, resume_from, restore_ms, now) {
                    self.tasks_lost_with_nodes += 1;
                }
            }
            self.cluster.set_node_online(id, false);
        }
        self.release(i);
    }

    /// Slot `i` stops being paid for: released, reclaimed or failed.
    fn release(&mut self, i: usize) {
        self.nodes[i].1 = NodeState::Off;
        if std::mem::take(&mut self.spot[i]) {
            self.paid_spot -= 1;
        }
    }

    /// Puts a running task back in the queue; it resumes from `resume_from` (a checkpoint, or
    /// its start) after `restore_ms`. False when that attempt was not running.
    fn requeue_from(&mut self, job_id: JobId, pos: u32, attempt: u32, resume_from: u64, restore_ms: u64, now: u64) -> bool {
        let job_idx = job_id.0 as usize - 1;
        if !self.cluster.requeue(job_id, pos, attempt, now) {
            return false;
        }
        let end = self.ends.remove(&(job_idx, pos)).unwrap_or(now);
        self.left_after_move.insert((job_idx, pos), end.saturating_sub(resume_from) + restore_ms);
        let cores = self.jobs[job_idx].cores;
        self.lost_core_ms += ((now.saturating_sub(resume_from) + restore_ms) * cores) as f64;
        self.running_tasks -= 1;
        self.allocated_cores -= cores;
        self.pending_tasks += 1;
        self.pending_cores += cores;
        true
    }

    fn work_left(&self) -> bool {
        self.submitted < self.jobs.len() || self.pending_tasks > 0 || self.running_tasks > 0
    }
}

/// Runs `jobs` on `pool` under `policy`.
pub fn run(jobs: &[SimJob], pool: &Pool, policy: &SimPolicy) -> Report {
    // Virtual time has no round trip between a task's end and the next launch to hide, and a
    // placement here starts at once: nothing is sent ahead of free cores.
    let cluster_policy = Policy { first_fit: policy.first_fit, prefetch_ms: 0, ..Policy::default() };
    let mut sim = Sim {
        jobs,
        pool,
        policy,
        cluster: Cluster::with_policy(cluster_policy),
        events: BinaryHeap::new(),
        seq: 0,
        nodes: vec![(None, NodeState::Off); pool.max_nodes.max(pool.min_nodes) as usize],
        by_id: Vec::new(),
        submitted: 0,
        pending_tasks: 0,
        pending_cores: 0,
        running_tasks: 0,
        allocated_cores: 0,
        last_ms: 0,
        last_start_ms: 0,
        node_ms: 0.0,
        tail_node_ms: 0.0,
        queued_alloc: 0.0,
        queued_online: 0.0,
        waits: Vec::new(),
        job_starts_s: vec![f64::INFINITY; jobs.len()],
        peak_nodes: 0,
        nodes_over_time: Series { name: "nodes paid".into(), points: Vec::new() },
        busy_over_time: Series { name: "busy share".into(), points: Vec::new() },
        ends: HashMap::new(),
        left_after_move: HashMap::new(),
        next_compaction_ms: 0,
        moved_tasks: 0,
        lost_core_ms: 0.0,
        spot: vec![false; pool.max_nodes.max(pool.min_nodes) as usize],
        paid_spot: 0,
        generation: vec![0; pool.max_nodes.max(pool.min_nodes) as usize],
        rng: Rng::new(pool.faults.as_ref().map_or(0, |f| f.seed)),
        spot_reclaims: 0,
        node_failures: 0,
        tasks_lost_with_nodes: 0,
        spot_node_ms: 0.0,
    };
    for i in 0..pool.min_nodes as usize {
        sim.new_instance(i, 0);
        sim.node_up(i, 0);
    }
    for (i, job) in jobs.iter().enumerate() {
        sim.push((job.submit_s.max(0.0) * 1000.0) as u64, Event::Submit(i));
    }
    sim.push(0, Event::Tick);
    let mut end_ms = 0;
    // Something a pass should see happened since the last one.
    let mut changed = false;
    // Room was freed or added since the last pass.
    let mut room_came = false;
    while let Some(Reverse((now, _, event))) = sim.events.pop() {
        sim.advance(now);
        changed |= matches!(event, Event::Submit(_) | Event::End { .. } | Event::NodeUp(_));
        room_came |= matches!(event, Event::End { .. } | Event::NodeUp(_));
        match event {
            Event::Submit(i) => {
                let job = &jobs[i];
                let n = job.run_s.len().max(1) as u32;
                let mut spec = JobSpec::new(&format!("job{i}"), "sim", Resources::cores(job.cores), ArraySpec::first(n));
                spec.gang = job.gang_nodes.map(|n_nodes| GangSpec { n_nodes, tasks_per_node: 1 });
                spec.time_limit_s = job.limit_s.map(|s| s.ceil() as u64);
                sim.cluster.submit(JobId(i as u64 + 1), spec, now);
                sim.submitted += 1;
                sim.pending_tasks += u64::from(n);
                sim.pending_cores += u64::from(n) * job.cores;
            }
            Event::NodeUp(i) => {
                if sim.nodes[i].1 == NodeState::Provisioning {
                    sim.node_up(i, now);
                }
            }
            Event::NodeLost { node, generation, reclaimed } => sim.node_lost(node, generation, reclaimed, now),
            Event::End { job, pos, attempt } => {
                // A moved task's old attempt ends nowhere: the core fences it out.
                if sim.cluster.finish(JobId(job as u64 + 1), pos, attempt, TaskOutcome::Succeeded, now) {
                    sim.ends.remove(&(job, pos));
                    sim.running_tasks -= 1;
                    sim.allocated_cores -= jobs[job].cores;
                    end_ms = end_ms.max(now);
                }
            }
            Event::Tick => {
                sim.tick(now);
                changed = false;
                if policy.event_driven {
                    // Passes follow arrivals and ends; the pool does not change in a replay.
                } else if sim.work_left() {
                    sim.push(now + TICK_MS, Event::Tick);
                } else if sim.paid_nodes() > pool.min_nodes {
                    // Keep ticking until the idle nodes are released, so their cost counts.
                    sim.push(now + TICK_MS, Event::Tick);
                }
            }
        }
        // Once every event of this instant is in, one pass, as the server's reactor runs.
        if policy.event_driven && changed && sim.events.peek().is_none_or(|Reverse((next, _, _))| *next > now) {
            // Arrivals alone start nothing on a fleet without a free core: every job needs one,
            // and a replay has one tier, so nothing is preempted for them.
            // Nor does freed room start anything when nothing waits.
            let full = sim.allocated_cores >= u64::from(sim.up_nodes()) * pool.node_cores;
            if sim.pending_tasks == 0 {
                changed = false;
                room_came = false;
            } else if room_came || !full {
                sim.tick(now);
                changed = false;
                room_came = false;
            }
        }
    }
    let mut waits = sim.waits.clone();
    waits.sort_by(f64::total_cmp);
    let p95 = waits.get(((waits.len() as f64 - 1.0) * 0.95).round().max(0.0) as usize).copied().unwrap_or(0.0);
    Report {
        tasks: waits.len() as u64,
        busy_share_while_queued: if sim.queued_online > 0.0 { sim.queued_alloc / sim.queued_online } else { 1.0 },
        node_hours: sim.node_ms / 3_600_000.0,
        makespan_h: end_ms as f64 / 3_600_000.0,
        tail_node_hours: sim.tail_node_ms / 3_600_000.0,
        mean_wait_s: if waits.is_empty() { 0.0 } else { waits.iter().sum::<f64>() / waits.len() as f64 },
        p95_wait_s: p95,
        peak_nodes: sim.peak_nodes,
        nodes_over_time: sim.nodes_over_time,
        busy_over_time: sim.busy_over_time,
        moved_tasks: sim.moved_tasks,
        lost_core_hours: sim.lost_core_ms / 3_600_000.0,
        spot_reclaims: sim.spot_reclaims,
        node_failures: sim.node_failures,
        tasks_lost_with_nodes: sim.tasks_lost_with_nodes,
        job_starts_s: sim.job_starts_s.clone(),
        cost_node_hours: (sim.node_ms - sim.spot_node_ms * (1.0 - pool.faults.as_ref().map_or(1.0, |f| f.spot_price))) / 3_600_000.0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool() -> Pool {
        Pool { node_cores: 4, min_nodes: 0, max_nodes: 10, provision_s: 60.0, faults: None }
    }

    #[test]
    fn a_small_burst_runs_whole_and_the_pool_goes_back_to_zero() {
        let jobs = vec![SimJob { submit_s: 0.0, cores: 1, run_s: vec![600.0; 40], gang_nodes: None, limit_s: None }];
        let r = run(&jobs, &pool(), &SimPolicy { first_fit: false, idle_release_s: 60.0, compaction: None, event_driven: false });
        assert_eq!(r.tasks, 40);
        assert_eq!(r.peak_nodes, 10, "forty one-core tasks on four-core nodes");
        // 60 s provisioning, then one round of 600 s: about 0.19 h, and 10 nodes for it.
        assert!((0.18..0.22).contains(&r.makespan_h), "{}", r.makespan_h);
        assert!(r.node_hours > 1.8 && r.node_hours < 2.2, "{}", r.node_hours);
        assert!(r.busy_share_while_queued > 0.0);
        assert_eq!(r.nodes_over_time.points.last().map(|p| p.1), Some(0.0), "every node released");
    }

    #[test]
    fn compaction_moves_the_long_tail_onto_fewer_nodes() {
        // Two nodes of four cores, each left with one ten-hour task after ten minutes.
        let mut run_s = vec![600.0; 8];
        run_s[0] = 36_000.0;
        run_s[4] = 36_000.0;
        let jobs = vec![SimJob { submit_s: 0.0, cores: 1, run_s, gang_nodes: None, limit_s: None }];
        let pool = Pool { node_cores: 4, min_nodes: 0, max_nodes: 2, provision_s: 60.0, faults: None };
        let plain = SimPolicy { first_fit: false, idle_release_s: 60.0, compaction: None, event_driven: false };
        let compacting = SimPolicy {
            compaction: Some(Compaction { checkpoint_s: 600.0, restore_s: 60.0, every_s: 300.0, max_candidates: 64 }),
            ..plain.clone()
        };
        let (a, b) = (run(&jobs, &pool, &plain), run(&jobs, &pool, &compacting));
        assert_eq!((a.tasks, b.tasks), (8, 8), "every task once, moves not counted as new tasks");
        assert_eq!(a.moved_tasks, 0);
        assert_eq!(b.moved_tasks, 1, "one tail task joins the other");
        assert!(b.node_hours < 0.6 * a.node_hours, "{} vs {}", b.node_hours, a.node_hours);
        // The move redoes at most a checkpoint period plus the restore, and the work still ends.
        assert!(b.lost_core_hours > 0.0 && b.lost_core_hours <= (600.0 + 60.0) / 3600.0, "{}", b.lost_core_hours);
        assert!(b.makespan_h >= a.makespan_h && b.makespan_h < a.makespan_h + 0.2);
    }

    #[test]
    fn lost_nodes_lose_no_task_and_checkpoints_save_most_of_the_work() {
        let jobs = vec![SimJob { submit_s: 0.0, cores: 1, run_s: vec![4.0 * 3600.0; 20], gang_nodes: None, limit_s: None }];
        let faults = Faults { seed: 7, spot_share: 0.5, spot_price: 0.3, spot_reclaims_per_node_h: 0.3, failures_per_node_h: 0.1 };
        let pool = Pool { node_cores: 4, min_nodes: 0, max_nodes: 5, provision_s: 60.0, faults: Some(faults) };
        let plain = SimPolicy { first_fit: false, idle_release_s: 60.0, compaction: None, event_driven: false };
        let checkpointing = SimPolicy {
            compaction: Some(Compaction { checkpoint_s: 600.0, restore_s: 60.0, every_s: 300.0, max_candidates: 64 }),
            ..plain.clone()
        };
        let (a, b) = (run(&jobs, &pool, &plain), run(&jobs, &pool, &checkpointing));
        for r in [&a, &b] {
            assert_eq!(r.tasks, 20, "each task started once as a first attempt, and finished");
            assert!(r.spot_reclaims + r.node_failures > 0 && r.tasks_lost_with_nodes > 0, "{r:?}");
            assert!(r.makespan_h >= 4.0);
            assert!(r.cost_node_hours < r.node_hours, "spot hours are cheaper");
        }
        let per_loss = |r: &Report| r.lost_core_hours / r.tasks_lost_with_nodes as f64;
        assert!(per_loss(&b) < 0.5 * per_loss(&a), "{} vs {} core-hours per lost task", per_loss(&b), per_loss(&a));
        assert_eq!(run(&jobs, &pool, &checkpointing), b, "same seed, same report");
    }

    #[test]
    fn the_same_inputs_give_the_same_report() {
        let jobs = vec![
            SimJob { submit_s: 0.0, cores: 2, run_s: (0..30).map(|i| 100.0 + f64::from(i) * 37.0).collect(), gang_nodes: None, limit_s: None },
            SimJob { submit_s: 50.0, cores: 4, run_s: vec![300.0; 2], gang_nodes: Some(2), limit_s: None },
        ];
        let policy = SimPolicy { first_fit: true, idle_release_s: 600.0, compaction: None, event_driven: false };
        assert_eq!(run(&jobs, &pool(), &policy), run(&jobs, &pool(), &policy));
    }
}
