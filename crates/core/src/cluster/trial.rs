//! A dry run of a submission (Slurm's `sbatch --test-only`): where and when it would start,
//! with nothing changed.

use super::{Cluster, JobId, NodeId, PendingReason};
use crate::JobSpec;

/// What a submission would meet if it came now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Trial {
    /// The id it would get.
    pub job_id: JobId,
    /// The nodes a pass now would start it on (empty when it would wait).
    pub nodes: Vec<NodeId>,
    /// When it is expected to start: now when it would, else when enough room is expected to
    /// free up on nodes that suit it, from the running tasks' time limits (work queued ahead
    /// of it not counted); `None` when nothing running there has a limit.
    pub start_ms: Option<u64>,
    /// Why it would wait.
    pub waits_for: Option<PendingReason>,
}

impl Cluster {
    /// Runs a pass on a copy with `spec` submitted: the nodes it would start on, or when and why
    /// it would wait. The cluster itself is left as it was.
    pub fn trial(&self, spec: JobSpec, now_ms: u64) -> Trial {
        let job_id = JobId(self.next_free_job_id());
        let mut copy = self.clone();
        copy.submit(job_id, spec, now_ms);
        let decisions = copy.schedule(now_ms);
        let mut nodes: Vec<NodeId> = decisions.placements.iter().filter(|p| p.job_id == job_id).map(|p| p.node_id).collect();
        nodes.sort_unstable();
        nodes.dedup();
        if !nodes.is_empty() {
            return Trial { job_id, nodes, start_ms: Some(now_ms), waits_for: None };
        }
        let waits_for = copy.why_pending(job_id);
        let start_ms = copy.jobs.get(&job_id).and_then(|job| {
            let per_node = match job.spec.gang {
                Some(g) => job.demand.times(u64::from(g.tasks_per_node)),
                None => job.demand,
            };
            let mut frees: Vec<u64> = copy
                .nodes
                .iter()
                .filter(|n| n.online && copy.node_suits(n, job) && n.capacity.fits(&per_node))
                .map(|n| copy.expected_free_at(n, &per_node, now_ms))
                .collect();
            frees.sort_unstable();
            let wanted = job.spec.gang.map_or(1, |g| g.n_nodes as usize);
            frees.get(wanted - 1).copied().filter(|t| *t != u64::MAX)
        });
        Trial { job_id, nodes, start_ms, waits_for }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{ArraySpec, GangSpec, Resources};

    fn job(n_cores: u64, limit_s: Option<u64>) -> JobSpec {
        JobSpec { time_limit_s: limit_s, ..JobSpec::new("t", "p", Resources::cores(n_cores), ArraySpec::single()) }
    }

    #[test]
    fn a_trial_says_where_and_when_and_changes_nothing() {
        let mut c = Cluster::new();
        for name in ["a", "b"] {
            let id = c.add_node(name, "local", Resources::cores(4));
            c.set_node_online(id, true);
        }
        let now = c.trial(job(2, None), 10);
        assert_eq!((now.job_id, now.nodes.len(), now.start_ms), (JobId(1), 1, Some(10)));
        assert!(c.jobs.is_empty(), "nothing was submitted");
        // Both nodes busy until 10 s + their limits: a 4-core job waits for the earlier end.
        c.submit(JobId(1), job(4, Some(100)), 0);
        c.submit(JobId(2), job(4, Some(50)), 0);
        assert_eq!(c.schedule(0).placements.len(), 2);
        let later = c.trial(job(4, None), 5);
        assert!(later.nodes.is_empty());
        assert_eq!((later.job_id, later.start_ms), (JobId(3), Some(50_000)));
        assert_eq!(later.waits_for.map(|r| r.code), Some("Resources"));
        // A gang of both nodes waits for the later one.
        let gang = JobSpec { gang: Some(GangSpec { n_nodes: 2, tasks_per_node: 1 }), ..JobSpec::new("g", "p", Resources::cores(4), ArraySpec::parse("0-1", 10).unwrap()) };
        assert_eq!(c.trial(gang, 5).start_ms, Some(100_000));
        assert_eq!(c.live_jobs().count(), 2, "the trials left the cluster as it was");
    }
}
