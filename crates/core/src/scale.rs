//! Scale advice: how many nodes of which pool would run the pending work, and which nodes are
//! idle and may go. A node running anything is never proposed for removal.

use crate::cluster::{Cluster, NodeId};
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
