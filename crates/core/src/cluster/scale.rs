//! Scale advice: how many nodes of which pool would run the pending work, and which nodes are
//! idle and may go. A node running anything is never proposed for removal; to release such a
//! node, [`Cluster::compaction`] first plans to move its tasks (from their last checkpoint)
//! into the free room of the nodes that stay.

use crate::cluster::{Cluster, NodeId};
use crate::job::JobId;
use crate::resources::Resources;

/// The shape of a pool that can grow.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolShape {
    /// Pool name.
    pub pool: String,
    /// What one new node offers.
    pub node_capacity: Resources,
    /// Features of its nodes.
    pub features: Vec<String>,
    /// The most nodes it may have.
    pub max_nodes: u32,
}

/// What to add and what may go.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ScaleAdvice {
    /// Nodes to add, per pool.
    pub add: Vec<(String, u32)>,
    /// Online nodes with nothing running, held or reserved.
    pub removable: Vec<NodeId>,
}

/// Tasks considered per job when sizing; bounds the cost with million-task arrays.
const MAX_TASKS_SIZED_PER_JOB: u64 = 1_000_000;

impl Cluster {
    /// Advice from the pending work and the pools' shapes.
    pub fn scale_advice(&self, pools: &[PoolShape]) -> ScaleAdvice {
        let mut advice = ScaleAdvice::default();
        for shape in pools {
            let current = self.nodes.iter().filter(|n| n.pool == shape.pool).count() as u32;
            let room = shape.max_nodes.saturating_sub(current);
            let mut pool_mask = 0u64;
            for f in &shape.features {
                if let Some(i) = self.feature_bits.iter().position(|b| b == f) {
                    pool_mask |= 1 << i;
                }
            }
            // Open bins: free blocks of existing online nodes first, then new nodes.
            let mut bins: Vec<Resources> = self
                .nodes
                .iter()
                .filter(|n| n.pool == shape.pool && n.online)
                .map(|n| n.free())
                .collect();
            let n_existing = bins.len();
            for (_, job_id) in &self.queue {
                let Some(job) = self.jobs.get(job_id) else { continue };
                if self.dependencies_met(job) != Ok(true) || !self.quota_allows(job, 1) {
                    continue;
                }
                if job.spec.pool.as_ref().is_some_and(|p| p != &shape.pool)
                    || job.feature_mask & pool_mask != job.feature_mask
                    || !shape.node_capacity.fits(&job.demand)
                {
                    continue;
                }
                let mut left = u64::from(job.counts.pending).min(MAX_TASKS_SIZED_PER_JOB);
                for bin in bins.iter_mut() {
                    while left > 0 && bin.fits(&job.demand) {
                        *bin = bin.minus(&job.demand);
                        left -= 1;
                    }
                }
                while left > 0 && (bins.len() - n_existing) < room as usize {
                    let mut bin = shape.node_capacity;
                    while left > 0 && bin.fits(&job.demand) {
                        bin = bin.minus(&job.demand);
                        left -= 1;
                    }
                    bins.push(bin);
                }
            }
            let n_new = (bins.len() - n_existing) as u32;
            if n_new > 0 {
                advice.add.push((shape.pool.clone(), n_new));
            }
        }
        advice.removable = self
            .nodes
            .iter()
            .enumerate()
            .filter(|(i, n)| {
                n.online && n.running.is_empty() && n.held_for.is_none() && !self.reservations.contains_key(&NodeId(*i as u32))
            })
            .map(|(i, _)| NodeId(i as u32))
            .collect();
        advice
    }
}

/// Moves that empty lightly used nodes into the free room of others, so they can be released.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Compaction {
    /// Attempts to stop and requeue, (job, position, attempt); each resumes from its last
    /// checkpoint on one of the nodes that stay.
    pub moves: Vec<(JobId, u32, u32)>,
    /// Nodes the moves empty: drain them, then release them once idle.
    pub emptied: Vec<NodeId>,
}

impl Cluster {
    /// Plans to empty the least used online nodes whose every task fits in the free room of the
    /// nodes that stay and has checkpointed within `max_lost_ms` (so a move loses at most that
    /// much work per task). Gangs and overflow sites are left alone. Meant for the long tail,
    /// when nothing waits: the moved tasks are the only pending work, and the room they need
    /// is there.
    pub fn compaction(&self, now_ms: u64, max_lost_ms: u64) -> Compaction {
        self.compaction_of(now_ms, max_lost_ms, usize::MAX)
    }

    /// [`Cluster::compaction`] over at most `max_candidates` nodes, the emptiest first.
    pub fn compaction_of(&self, now_ms: u64, max_lost_ms: u64, max_candidates: usize) -> Compaction {
        let mut plan = Compaction::default();
        let usable = |n: &crate::cluster::Node| n.online && !n.draining && !n.overflow;
        let mut free: Vec<Option<Resources>> =
            self.nodes.iter().map(|n| usable(n).then(|| n.free())).collect();
        let mut candidates: Vec<usize> =
            (0..self.nodes.len()).filter(|i| usable(&self.nodes[*i]) && !self.nodes[*i].running.is_empty()).collect();
        // Emptiest first: they cost a whole node for the least work.
        candidates.sort_by_key(|i| (self.nodes[*i].allocated.cpu_millis, *i));
        candidates.truncate(max_candidates);
        let mut receiving = vec![false; self.nodes.len()];
        for node_idx in candidates {
            if receiving[node_idx] {
                continue;
            }
            // Every task of the node, or None when one of them may not move.
            let movable: Option<Vec<_>> = self.nodes[node_idx]
                .running
                .iter()
                .map(|(job_id, pos)| {
                    let job = self.jobs.get(job_id)?;
                    let run = job.running.get(pos)?;
                    let recent = now_ms.saturating_sub(run.checkpoint_ms) <= max_lost_ms;
                    (job.spec.gang.is_none() && !run.preempting && recent).then_some((*job_id, *pos, run.attempt, job))
                })
                .collect();
            let Some(mut tasks) = movable else { continue };
            // Largest first, each into the tightest node that suits it.
            tasks.sort_by_key(|(job_id, pos, _, job)| (std::cmp::Reverse(job.demand.cpu_millis), *job_id, *pos));
            let mut trial = free.clone();
            trial[node_idx] = None;
            let mut targets = Vec::with_capacity(tasks.len());
            for (_, _, _, job) in &tasks {
                let best = trial
                    .iter()
                    .enumerate()
                    .filter_map(|(i, f)| f.map(|f| (i, f)))
                    .filter(|(i, f)| f.fits(&job.demand) && self.node_suits(&self.nodes[*i], job))
                    .min_by_key(|(i, f)| (f.cpu_millis, *i));
                let Some((target, room)) = best else { break };
                trial[target] = Some(room.minus(&job.demand));
                targets.push(target);
            }
            if targets.len() < tasks.len() {
                continue;
            }
            free = trial;
            for t in targets {
                receiving[t] = true;
            }
            plan.emptied.push(NodeId(node_idx as u32));
            plan.moves.extend(tasks.iter().map(|(job_id, pos, attempt, _)| (*job_id, *pos, *attempt)));
        }
        plan
    }
}
