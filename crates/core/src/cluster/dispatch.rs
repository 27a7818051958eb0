//! Attempts onto nodes and off them: a dispatch (live or replayed) holds its node's resources
//! and GPUs, or waits in the node's queue; an ended or requeued attempt gives them back and
//! lets the node's queue start.

use crate::cluster::{Cluster, JobId, NodeId, RunningTask, TaskState};

impl Cluster {
    /// Records that an attempt was handed to a node. Used by the scheduling pass and by replay.
    /// An attempt that does not fit the node's free resources waits in the node's queue.
    pub fn apply_dispatch(
        &mut self,
        job_id: JobId,
        pos: u32,
        attempt: u32,
        node_id: NodeId,
        now_ms: u64,
    ) -> Result<(), String> {
        self.replay_dispatch(job_id, pos, attempt, node_id, now_ms, 0)
    }

    /// `apply_dispatch` from the journal or a snapshot: the attempt gets the GPUs its agent was
    /// told (`gpus`) when they are free, else the lowest free ones; an attempt that waits (its
    /// node not yet back) keeps `gpus` for when it is seated.
    pub fn replay_dispatch(
        &mut self,
        job_id: JobId,
        pos: u32,
        attempt: u32,
        node_id: NodeId,
        now_ms: u64,
        gpus: u64,
    ) -> Result<(), String> {
        let job = self.jobs.get_mut(&job_id).ok_or(format!("no job {job_id}"))?;
        if (node_id.0 as usize) >= self.nodes.len() {
            return Err(format!("no node {}", node_id.0));
        }
        if job.task_state(pos) != Some(TaskState::Pending) {
            return Err(format!("task {job_id}@{pos} is not pending"));
        }
        let half_life = self.policy.fair_share_half_life_ms;
        self.projects[job.project_idx].advance(now_ms, half_life);
        let demand = job.demand;
        let node = &self.nodes[node_id.0 as usize];
        let queued = !node.free().fits(&demand);
        let gpus = if queued { gpus } else { node.gpus_for(demand.n_gpus, gpus) };
        job.set_state(pos, TaskState::Running);
        job.running.insert(
            pos,
            RunningTask { node_id, attempt, started_ms: now_ms, checkpoint_ms: now_ms, preempting: false, queued, gpus },
        );
        job.last_attempt.insert(pos, attempt);
        job.started_ms = Some(job.started_ms.map_or(now_ms, |s| s.min(now_ms)));
        let tier = job.spec.tier;
        let project_idx = job.project_idx;
        let drained = !job.has_pending();
        if drained {
            self.queue.remove(&(tier, job_id));
        }
        self.projects[project_idx].allocated_cpu_millis += demand.cpu_millis;
        self.update_node(node_id, |node| {
            if queued {
                node.queued.push_back((job_id, pos));
                node.queued_cpu_millis += demand.cpu_millis;
            } else {
                node.allocated = node.allocated.plus(&demand);
                node.running.insert((job_id, pos));
                node.gpus_busy |= gpus;
            }
            if node.held_for == Some(job_id) {
                node.held_for = None;
            }
        });
        Ok(())
    }

    /// Starts the node's queued tasks, oldest first, while the first fits what is free: what
    /// the node's agent does the moment a task ends there. With `now_ms` None they keep their
    /// start: they were running all along, on a node whose size was not yet known (replay).
    pub(crate) fn promote_queued(&mut self, node_id: NodeId, now_ms: Option<u64>) {
        loop {
            let Some(node) = self.nodes.get(node_id.0 as usize) else { return };
            let Some(&(job_id, pos)) = node.queued.front() else { return };
            let Some(job) = self.jobs.get_mut(&job_id) else { return };
            let demand = job.demand;
            if !node.free().fits(&demand) {
                return;
            }
            let gpus = node.gpus_for(demand.n_gpus, job.running.get(&pos).map_or(0, |r| r.gpus));
            if let Some(run) = job.running.get_mut(&pos) {
                run.queued = false;
                if let Some(now_ms) = now_ms {
                    run.started_ms = now_ms;
                    run.checkpoint_ms = now_ms;
                }
                run.gpus = gpus;
            }
            self.update_node(node_id, |node| {
                node.queued.pop_front();
                node.queued_cpu_millis -= demand.cpu_millis;
                node.allocated = node.allocated.plus(&demand);
                node.running.insert((job_id, pos));
                node.gpus_busy |= gpus;
            });
        }
    }

    /// Takes a running attempt off its node; false when that attempt is not the one running.
    pub(crate) fn release_attempt(&mut self, job_id: JobId, pos: u32, attempt: u32, now_ms: u64) -> bool {
        let Some(job) = self.jobs.get_mut(&job_id) else { return false };
        if job.running.get(&pos).is_none_or(|run| run.attempt != attempt) {
            return false;
        }
        let Some(run) = job.running.remove(&pos) else { return false };
        let demand = job.demand;
        let project_idx = job.project_idx;
        let half_life = self.policy.fair_share_half_life_ms;
        self.projects[project_idx].advance(now_ms, half_life);
        self.projects[project_idx].allocated_cpu_millis -= demand.cpu_millis;
        self.update_node(run.node_id, |node| {
            if run.queued {
                node.queued.retain(|t| *t != (job_id, pos));
                node.queued_cpu_millis -= demand.cpu_millis;
            } else {
                node.allocated = node.allocated.minus(&demand);
                node.running.remove(&(job_id, pos));
                node.gpus_busy &= !run.gpus;
            }
        });
        if !run.queued {
            self.promote_queued(run.node_id, Some(now_ms));
        }
        true
    }
}
