//! A job's tasks in a compact form for the server's snapshots, and back: runs of equal states
//! and the few tasks that run, wait again or are on a later attempt.

use super::*;

/// The state of a job's tasks in a compact form, for snapshots: runs of equal states, and the
/// few tasks that are running, requeued or on a later attempt.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TaskSnapshot {
    /// (state, how many in a row), in position order; running tasks appear as running.
    pub runs: Vec<(TaskState, u32)>,
    /// Positions below this were taken from the never-started cursor.
    pub next_fresh: u32,
    /// Positions waiting again after a requeue.
    pub requeued: Vec<u32>,
    /// (position, last attempt) for tasks that ran, except finished first attempts.
    pub attempts: Vec<(u32, u32)>,
    /// Running attempts: (position, node, attempt, started, checkpoint).
    pub running: Vec<(u32, NodeId, u32, u64, u64)>,
    /// When the job ended.
    pub ended_ms: Option<u64>,
    /// (position, GPUs by index) of running attempts that hold GPUs.
    pub gpus: Vec<(u32, u64)>,
}

/// A state from its wire number.
pub fn task_state_from_u8(v: u8) -> Option<TaskState> {
    Some(match v {
        0 => TaskState::Pending,
        1 => TaskState::Running,
        2 => TaskState::Succeeded,
        3 => TaskState::Failed,
        4 => TaskState::Cancelled,
        5 => TaskState::Timeout,
        _ => return None,
    })
}

impl Cluster {
    /// A job's tasks, compactly, for a snapshot.
    pub fn task_snapshot(&self, job_id: JobId) -> Option<TaskSnapshot> {
        let job = self.jobs.get(&job_id)?;
        let mut runs: Vec<(TaskState, u32)> = Vec::new();
        for state in &job.states {
            match runs.last_mut() {
                Some((s, n)) if s == state => *n += 1,
                _ => runs.push((*state, 1)),
            }
        }
        let mut running: Vec<(u32, NodeId, u32, u64, u64)> =
            job.running.iter().map(|(pos, r)| (*pos, r.node_id, r.attempt, r.started_ms, r.checkpoint_ms)).collect();
        running.sort_unstable();
        let mut gpus: Vec<(u32, u64)> = job.running.iter().filter(|(_, r)| r.gpus != 0).map(|(pos, r)| (*pos, r.gpus)).collect();
        gpus.sort_unstable();
        // A finished task's first attempt need not be kept: it never runs again. Any other
        // attempt number must survive, or a stale report could match a new attempt.
        let mut attempts: Vec<(u32, u32)> = job
            .last_attempt
            .iter()
            .filter(|(p, a)| **a > 1 || !job.states[**p as usize].is_final())
            .map(|(p, a)| (*p, *a))
            .collect();
        attempts.sort_unstable();
        Some(TaskSnapshot {
            runs,
            next_fresh: job.next_fresh,
            requeued: job.requeued.iter().copied().collect(),
            attempts,
            running,
            ended_ms: job.ended_ms,
            gpus,
        })
    }

    /// Restores a submitted job's tasks from a snapshot (the job must have no running task).
    pub fn restore_tasks(&mut self, job_id: JobId, snap: &TaskSnapshot) -> Result<(), String> {
        let job = self.jobs.get_mut(&job_id).ok_or(format!("no job {job_id}"))?;
        if job.counts.running > 0 {
            return Err(format!("job {job_id} has running tasks"));
        }
        let mut states = Vec::with_capacity(job.states.len());
        for (state, n) in &snap.runs {
            let state = if *state == TaskState::Running { TaskState::Pending } else { *state };
            states.extend(std::iter::repeat_n(state, *n as usize));
        }
        if states.len() != job.states.len() {
            return Err(format!("job {job_id}: snapshot has {} tasks, job has {}", states.len(), job.states.len()));
        }
        let mut counts = TaskCounts::default();
        for s in &states {
            *counts.slot(*s) += 1;
        }
        job.states = states;
        job.counts = counts;
        job.next_fresh = snap.next_fresh;
        job.requeued = snap.requeued.iter().copied().collect();
        job.last_attempt = snap.attempts.iter().copied().collect();
        job.ended_ms = snap.ended_ms;
        let tier = job.spec.tier;
        let held: std::collections::HashMap<u32, u64> = snap.gpus.iter().copied().collect();
        for (pos, node_id, attempt, started, checkpoint) in &snap.running {
            // Running tasks were restored as pending; dispatching them again keeps every index,
            // and the GPUs their agents were told.
            self.queue.insert((tier, job_id));
            self.replay_dispatch(job_id, *pos, *attempt, *node_id, *started, held.get(pos).copied().unwrap_or(0))?;
            if let Some(run) = self.jobs.get_mut(&job_id).and_then(|j| j.running.get_mut(pos)) {
                run.checkpoint_ms = *checkpoint;
            }
        }
        let Some(job) = self.jobs.get(&job_id) else { return Ok(()) };
        if job.has_pending() {
            self.queue.insert((tier, job_id));
        } else {
            self.queue.remove(&(tier, job_id));
        }
        Ok(())
    }
}
