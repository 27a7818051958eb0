//! Whether a job's dependencies let it start, as Slurm decides it: `after`, `afterok`,
//! `afterany`, `afternotok` (and `aftercorr`, held here until the whole job succeeded), all of
//! them or any one, each with an optional delay, and `singleton`.

use crate::cluster::{Cluster, Job};
use crate::job::{After, AfterKind, JobId};

/// Where a job stands with its dependencies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Readiness {
    /// It may start.
    Ready,
    /// Not yet: these jobs are still waited for.
    Waiting(Vec<JobId>),
    /// Not yet (`singleton`): this earlier job of the same name and project is still active.
    AfterSameName(JobId),
    /// Never: this dependency can no longer be met.
    Never(JobId),
}

impl Cluster {
    /// When one dependency was met (Ok(Some(time))), not yet (Ok(None)), or never (Err).
    fn met_at(&self, after: &After) -> Result<Option<u64>, ()> {
        let Some(dep) = self.jobs.get(&after.job) else { return Err(()) };
        let c = dep.counts;
        let failed = c.failed + c.cancelled + c.timeout;
        Ok(match after.kind {
            // A job cancelled before any task started counts as started, as in Slurm.
            AfterKind::Start => dep.started_ms.or(dep.ended_ms),
            AfterKind::Any => dep.ended_ms,
            AfterKind::Ok | AfterKind::Corr => {
                if failed > 0 {
                    return Err(());
                }
                dep.ended_ms
            }
            AfterKind::NotOk => match dep.ended_ms {
                Some(_) if failed == 0 => return Err(()),
                ended => ended,
            },
        })
    }

    /// Whether `job` may start now as far as its dependencies go.
    pub(crate) fn readiness(&self, job: &Job) -> Readiness {
        let deps = &job.spec.dependencies;
        let now = self.now_ms;
        let mut waiting = Vec::new();
        let mut never = None;
        let mut any_ready = false;
        for after in &deps.on {
            match self.met_at(after) {
                Err(()) => never = never.or(Some(after.job)),
                Ok(Some(at)) if at.saturating_add(after.delay_ms) <= now => any_ready = true,
                Ok(_) => waiting.push(after.job),
            }
        }
        let from_list = if deps.on.is_empty() {
            Readiness::Ready
        } else if deps.any_of {
            match (any_ready, waiting.is_empty(), never) {
                (true, _, _) => Readiness::Ready,
                (false, false, _) => Readiness::Waiting(waiting),
                (false, true, Some(dep)) => Readiness::Never(dep),
                (false, true, None) => Readiness::Ready,
            }
        } else {
            match (never, waiting.is_empty()) {
                (Some(dep), _) => Readiness::Never(dep),
                (None, false) => Readiness::Waiting(waiting),
                (None, true) => Readiness::Ready,
            }
        };
        if from_list != Readiness::Ready || !deps.singleton {
            return from_list;
        }
        // singleton: no earlier job of the same name and project may still be active.
        let earlier = self.live.range(..job.id).filter_map(|id| self.jobs.get(id)).find(|j| {
            j.spec.name == job.spec.name && j.spec.project == job.spec.project && !j.is_finished()
        });
        match earlier {
            Some(j) => Readiness::AfterSameName(j.id),
            None => Readiness::Ready,
        }
    }

    /// Jobs with tasks waiting whose dependencies can never be met.
    pub fn unsatisfiable(&self) -> Vec<JobId> {
        self.queue
            .iter()
            .filter_map(|(_, id)| self.jobs.get(id))
            .filter(|job| !job.spec.dependencies.on.is_empty() && matches!(self.readiness(job), Readiness::Never(_)))
            .map(|job| job.id)
            .collect()
    }

    /// Whether a job's dependencies allow it to start: Ok(true) yes, Ok(false) not yet,
    /// Err(dep) never (that dependency can no longer be met).
    pub(crate) fn dependencies_met(&self, job: &Job) -> Result<bool, JobId> {
        match self.readiness(job) {
            Readiness::Ready => Ok(true),
            Readiness::Waiting(_) | Readiness::AfterSameName(_) => Ok(false),
            Readiness::Never(dep) => Err(dep),
        }
    }
}
