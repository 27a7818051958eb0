//! GPUs by index: which of a node's GPUs each task holds, and which failed their health check.

use crate::cluster::{Cluster, JobId, Node, NodeId};

impl Node {
    /// `n` of its GPUs that are neither held nor failed: those of `wanted` when it names `n`
    /// such, else the lowest.
    pub(crate) fn gpus_for(&self, n: u32, wanted: u64) -> u64 {
        let usable = !(self.gpus_busy | self.gpus_failed) & gpu_mask(self.capacity.n_gpus);
        if wanted.count_ones() == n && wanted & usable == wanted {
            return wanted;
        }
        let mut mask = 0u64;
        let mut left = usable;
        for _ in 0..n {
            if left == 0 {
                break;
            }
            let lowest = left & left.wrapping_neg();
            mask |= lowest;
            left &= !lowest;
        }
        mask
    }
}

impl Cluster {
    /// Sets which of a node's GPUs failed their health check; the attempts that hold one of
    /// them, to be stopped and run again elsewhere.
    pub fn set_gpus_failed(&mut self, node_id: NodeId, failed: u64) -> Vec<(JobId, u32, u32)> {
        let Some(node) = self.nodes.get_mut(node_id.0 as usize) else { return Vec::new() };
        node.gpus_failed = failed & gpu_mask(node.capacity.n_gpus);
        let failed = node.gpus_failed;
        node.running
            .iter()
            .filter_map(|(job_id, pos)| {
                let run = self.jobs.get(job_id)?.running.get(pos)?;
                (run.gpus & failed != 0).then_some((*job_id, *pos, run.attempt))
            })
            .collect()
    }
}

/// The bits of GPUs 0..n.
pub fn gpu_mask(n: u32) -> u64 {
    if n >= 64 {
        u64::MAX
    } else {
        (1u64 << n) - 1
    }
}

/// The indexes of a GPU mask, lowest first.
pub fn gpu_indexes(mask: u64) -> Vec<u32> {
    (0..64).filter(|i| mask & (1 << i) != 0).collect()
}
