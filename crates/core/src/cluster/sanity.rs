//! The cross-index invariants of [`Cluster`], checked: the tests run it after every step.

use super::*;

impl Cluster {
    /// Checks the cross-index invariants; tests run it after every step.
    pub fn sanity_check(&self) -> Result<(), String> {
        let mut allocated = vec![Resources::default(); self.nodes.len()];
        let mut n_running = vec![0u32; self.nodes.len()];
        let mut queued_cpu = vec![0u64; self.nodes.len()];
        let mut n_queued = vec![0u32; self.nodes.len()];
        let mut project_cpu = vec![0u64; self.projects.len()];
        let mut gpus_held = vec![0u64; self.nodes.len()];
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
                project_cpu[job.project_idx] += job.demand.cpu_millis;
                if run.queued {
                    queued_cpu[i] += job.demand.cpu_millis;
                    n_queued[i] += 1;
                    if !self.nodes[i].queued.contains(&(job.id, *pos)) {
                        return Err(format!("job {} task {pos}: missing from its node's queue", job.id));
                    }
                    continue;
                }
                allocated[i] = allocated[i].plus(&job.demand);
                n_running[i] += 1;
                // Each task holds as many GPUs as it asked for, none held by another.
                if run.gpus.count_ones() != job.demand.n_gpus || gpus_held[i] & run.gpus != 0 {
                    return Err(format!("job {} task {pos}: holds GPUs {:#b} for {} asked", job.id, run.gpus, job.demand.n_gpus));
                }
                gpus_held[i] |= run.gpus;
                if !self.nodes[i].running.contains(&(job.id, *pos)) {
                    return Err(format!("job {} task {pos}: missing from its node", job.id));
                }
            }
            let queued = self.queue.contains(&(job.spec.tier, job.id));
            if job.has_pending() != queued {
                return Err(format!("job {}: queued {queued} but pending {}", job.id, job.counts.pending));
            }
        }
        for (i, node) in self.nodes.iter().enumerate() {
            if node.allocated != allocated[i] || node.running.len() as u32 != n_running[i] {
                return Err(format!("node {}: allocation out of step", node.name));
            }
            if node.gpus_busy != gpus_held[i] || node.gpus_busy & !gpu_mask(node.capacity.n_gpus) != 0 {
                return Err(format!("node {}: GPUs held {:#b}, its tasks hold {:#b}", node.name, node.gpus_busy, gpus_held[i]));
            }
            if !node.capacity.fits(&node.allocated) {
                return Err(format!("node {}: over-committed", node.name));
            }
            if node.queued_cpu_millis != queued_cpu[i] || node.queued.len() as u32 != n_queued[i] {
                return Err(format!("node {}: queue out of step", node.name));
            }
            let indexed = self.free_index.contains(&(node.free().cpu_millis, NodeId(i as u32)));
            if indexed != (node.online && node.free().cpu_millis > 0) {
                return Err(format!("node {}: free index out of step", node.name));
            }
        }
        if self.free_index.len() != self.nodes.iter().filter(|n| n.online && n.free().cpu_millis > 0).count() {
            return Err("free index has stale entries".into());
        }
        for (i, p) in self.projects.iter().enumerate() {
            if p.allocated_cpu_millis != project_cpu[i] {
                return Err(format!("project {}: allocation out of step", p.name));
            }
        }
        Ok(())
    }
}
