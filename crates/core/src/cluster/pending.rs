//! "Why is this pending": one reason per job, in Slurm's code and in words a user understands.

use crate::cluster::dependencies::Readiness;
use crate::cluster::{Cluster, Node, PendingReason};
use crate::job::JobId;
use crate::project::Identity;
use crate::resources::format_cores;

impl Cluster {
    /// Why the job's next pending task is not running; None when nothing of it is pending.
    pub fn why_pending(&self, job_id: JobId) -> Option<PendingReason> {
        let job = self.jobs.get(&job_id)?;
        if !job.has_pending() {
            return None;
        }
        let reason = |code: &'static str, text: String| Some(PendingReason { code, text });
        match self.readiness(job) {
            Readiness::Never(dep) => {
                return reason("DependencyNeverSatisfied", format!("job {dep} ended so that this job's dependency can never be met"))
            }
            Readiness::AfterSameName(earlier) => {
                return reason("Dependency", format!("singleton: waiting for job {earlier} of the same name to end"));
            }
            Readiness::Waiting(jobs) => {
                let names: Vec<String> = jobs.iter().map(ToString::to_string).collect();
                return reason("Dependency", format!("waiting for job {}", names.join(", ")));
            }
            Readiness::Ready => {}
        }
        if let Some(max) = job.spec.array.max_running.filter(|_| job.throttled()) {
            return reason("JobArrayTaskLimit", format!("array limit reached: {max} of {max} tasks running (%{max})"));
        }
        let n_needed = job.spec.gang.map_or(1, |g| u64::from(g.n_nodes * g.tasks_per_node));
        if !self.quota_allows(job, n_needed) {
            let p = &self.projects[job.project_idx];
            let cap = p.limits.cap().unwrap_or(0);
            return reason(
                "QOSGrpCpuLimit",
                format!(
                    "project {} quota used: {}/{} cores",
                    p.name,
                    format_cores(p.allocated_cpu_millis),
                    format_cores(cap)
                ),
            );
        }
        let missing = self.missing_features(job);
        if !missing.is_empty() {
            return reason("BadConstraints", format!("no node has the feature {}", missing.join(", ")));
        }
        let per_node = match job.spec.gang {
            Some(g) => job.demand.times(u64::from(g.tasks_per_node)),
            None => job.demand,
        };
        let eligible: Vec<&Node> = self
            .nodes
            .iter()
            .filter(|n| job.spec.allows_pool(&n.pool) && n.features & job.feature_mask == job.feature_mask)
            .collect();
        if eligible.is_empty() {
            let text = match &job.spec.pool {
                Some(pool) => format!("no node of pool(s) '{pool}' with the required features has joined"),
                None => "no node with the required features has joined".to_string(),
            };
            return reason("Nodes_required", text);
        }
        let project = &self.projects[job.project_idx];
        let eligible: Vec<&Node> = eligible.into_iter().filter(|n| n.identities.serves(project.identity)).collect();
        if eligible.is_empty() {
            let text = match project.identity {
                Identity::Missing => format!(
                    "project {} has no identity to run tasks as (tidepool project create {} --uid UID)",
                    project.name, project.name
                ),
                Identity::OwnUid => format!("no node can run tasks as project {}'s uid (their agents are not root)", project.name),
                _ => format!(
                    "no node runs the operator's tasks (project {} is not in the catalog; agents need --admin-runs-as USER or --allow-root-tasks)",
                    project.name
                ),
            };
            return reason("ProjectIdentity", text);
        }
        let connected: Vec<&&Node> = eligible.iter().filter(|n| n.online).collect();
        if connected.is_empty() {
            return reason("NodeDown", "every node that could run it is disconnected".to_string());
        }
        // A drained node takes no new work: its free cores are no reason to wait.
        let online: Vec<&&Node> = connected.into_iter().filter(|n| !n.draining).collect();
        if online.is_empty() {
            return reason("ReqNodeNotAvail", "every node that could run it is drained".to_string());
        }
        let big_enough = online.iter().filter(|n| n.capacity.fits(&per_node)).count();
        if let Some(gang) = job.spec.gang {
            let free_now = online.iter().filter(|n| n.free().fits(&per_node)).count();
            if big_enough < gang.n_nodes as usize {
                return reason(
                    "Resources",
                    format!("needs {} nodes with {} each; only {big_enough} nodes are that large", gang.n_nodes, per_node),
                );
            }
            let reserved = self.reservations.values().any(|(j, _)| *j == job_id);
            let tail = if reserved { "; nodes are reserved for it as they drain" } else { "" };
            return reason(
                "Resources",
                format!("needs {} nodes with {} free each; {free_now} have that now{tail}", gang.n_nodes, per_node),
            );
        }
        if big_enough == 0 {
            let largest = online.iter().map(|n| n.capacity).max_by_key(|c| c.cpu_millis);
            return reason(
                "Resources",
                format!(
                    "needs {} on one node; the largest node has {}",
                    per_node,
                    largest.map(|c| c.to_string()).unwrap_or_default()
                ),
            );
        }
        if self.nodes.iter().any(|n| n.held_for == Some(job_id)) {
            return reason("Resources", "lower-priority work is being preempted to make room for it".to_string());
        }
        let ahead: u64 = self
            .queue
            .iter()
            .take_while(|(_, id)| *id != job_id)
            .filter_map(|(_, id)| self.jobs.get(id))
            .filter(|j| self.dependencies_met(j) == Ok(true))
            .map(|j| u64::from(j.counts.pending))
            .sum();
        let fits_somewhere = online.iter().any(|n| n.free().fits(&per_node));
        if fits_somewhere {
            return reason("Reservation", "the free nodes are reserved for a multi-node job that starts first".to_string());
        }
        if ahead > 0 {
            return reason("Priority", format!("behind {ahead} tasks of higher priority or older jobs"));
        }
        let best_free = online.iter().map(|n| n.free()).max_by_key(|f| f.cpu_millis);
        let n_with_best = online.iter().filter(|n| Some(n.free()) == best_free).count();
        reason(
            "Resources",
            format!(
                "needs {} on one node; the largest free block is {} on {} of {} nodes",
                per_node,
                best_free.map(|f| f.to_string()).unwrap_or_default(),
                n_with_best,
                online.len()
            ),
        )
    }
}
