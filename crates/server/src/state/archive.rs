//! Jobs that finished longer ago than the retention (`--keep-finished`) leave memory: the core
//! forgets them after a pass, and from then on the journal answers for them (show, sacct,
//! logs, cancel, and dependencies of jobs submitted later).

use super::*;
use std::collections::BTreeMap;

/// The ids of forgotten jobs, as inclusive ranges (they are mostly consecutive).
#[derive(Debug, Default)]
pub(crate) struct ForgottenIds {
    ranges: BTreeMap<u64, u64>,
}

impl ForgottenIds {
    /// From a snapshot's ranges.
    pub(crate) fn from_ranges(ranges: &[(u64, u64)]) -> ForgottenIds {
        let mut ids = ForgottenIds::default();
        for &(start, end) in ranges {
            ids.ranges.insert(start, end.max(start));
            ids.merge_around(start);
        }
        ids
    }

    /// Whether `id` was forgotten.
    pub(crate) fn contains(&self, id: u64) -> bool {
        self.ranges.range(..=id).next_back().is_some_and(|(_, end)| id <= *end)
    }

    /// Adds one id.
    pub(crate) fn insert(&mut self, id: u64) {
        if self.contains(id) {
            return;
        }
        self.ranges.insert(id, id);
        self.merge_around(id);
    }

    /// Joins the range holding `id` with its neighbours where they touch.
    fn merge_around(&mut self, id: u64) {
        let Some((&start, &end)) = self.ranges.range(..=id).next_back() else { return };
        let mut end = end;
        // Following ranges that start at or before end + 1 join this one.
        while let Some((&next_start, &next_end)) = self.ranges.range(start + 1..).next() {
            if next_start > end.saturating_add(1) {
                break;
            }
            self.ranges.remove(&next_start);
            end = end.max(next_end);
        }
        self.ranges.insert(start, end);
        // And the preceding one, if it reaches up to start - 1.
        if let Some((&prev_start, &prev_end)) = self.ranges.range(..start).next_back() {
            if prev_end.saturating_add(1) >= start {
                self.ranges.remove(&start);
                self.ranges.insert(prev_start, prev_end.max(end));
            }
        }
    }

    /// The ranges, for a snapshot.
    pub(crate) fn ranges(&self) -> Vec<(u64, u64)> {
        self.ranges.iter().map(|(s, e)| (*s, *e)).collect()
    }
}

/// A forgotten job as the journal holds it: its request, spec, submission time and each task's
/// last attempt.
pub(crate) struct Archived {
    pub(crate) req: SubmitRequest,
    pub(crate) spec: JobSpec,
    pub(crate) submitted_ms: u64,
    pub(crate) records: Vec<tidepool_store::TaskRecord>,
}

impl Archived {
    /// The final state of the task at `index`: its last attempt's outcome, or cancelled for a
    /// task that never ran (a cancel of the whole job is not recorded per task).
    fn state_of(&self, record: Option<&tidepool_store::TaskRecord>) -> TaskState {
        match record.and_then(|r| r.outcome) {
            Some(tidepool_store::Outcome::Succeeded) => TaskState::Succeeded,
            Some(tidepool_store::Outcome::Failed) => TaskState::Failed,
            Some(tidepool_store::Outcome::Timeout) => TaskState::Timeout,
            _ => TaskState::Cancelled,
        }
    }

    /// Its counts by final state.
    pub(crate) fn counts(&self) -> TaskCounts {
        let by_index: HashMap<u32, &tidepool_store::TaskRecord> = self.records.iter().map(|r| (r.index, r)).collect();
        let mut counts = TaskCounts::default();
        for pos in 0..self.spec.array.n_tasks() {
            let index = self.spec.array.index_at(pos).unwrap_or(pos);
            match self.state_of(by_index.get(&index).copied()) {
                TaskState::Succeeded => counts.succeeded += 1,
                TaskState::Failed => counts.failed += 1,
                TaskState::Timeout => counts.timeout += 1,
                _ => counts.cancelled += 1,
            }
        }
        counts
    }

    /// When its last task ended.
    pub(crate) fn ended_ms(&self) -> Option<u64> {
        self.records.iter().filter_map(|r| r.ended_ms).max()
    }

    /// The view clients are shown, with every task when `with_tasks`.
    pub(crate) fn view(&self, job_id: u64, with_tasks: bool) -> JobView {
        let c = self.counts();
        let spec = &self.spec;
        let by_index: HashMap<u32, &tidepool_store::TaskRecord> = self.records.iter().map(|r| (r.index, r)).collect();
        let tasks = if with_tasks {
            (0..spec.array.n_tasks())
                .map(|pos| {
                    let index = spec.array.index_at(pos).unwrap_or(pos);
                    let rec = by_index.get(&index).copied();
                    let ending = rec.and_then(|r| r.ending);
                    TaskView {
                        index,
                        state: self.state_of(rec).name().to_string(),
                        attempt: rec.map_or(0, |r| r.attempt),
                        node: rec.and_then(|r| r.node.clone()),
                        started_ms: ending.map(|e| e.started_ms).filter(|s| *s > 0).or(rec.and_then(|r| r.dispatched_ms)),
                        ended_ms: rec.and_then(|r| r.ended_ms),
                        exit_code: ending.and_then(|e| e.exit_code),
                        signal: ending.and_then(|e| e.signal),
                        cpu_ms: ending.map(|e| e.cpu_ms),
                        peak_mem_bytes: ending.map(|e| e.peak_mem_bytes),
                        message: rec.and_then(|r| r.message.clone()),
                        image: None,
                        job_id: spec.task_job_id(job_id, pos),
                    }
                })
                .collect()
        } else {
            Vec::new()
        };
        JobView {
            id: job_id,
            name: spec.name.clone(),
            project: spec.project.clone(),
            tier: spec.tier.name().to_string(),
            pool: spec.pool.clone(),
            state: views::job_state(&c).to_string(),
            array: self.req.array.as_ref().map(|_| spec.array.to_string()),
            n_tasks: c.total(),
            counts: TaskCountsView { pending: 0, running: 0, succeeded: c.succeeded, failed: c.failed, cancelled: c.cancelled, timeout: c.timeout },
            cpus: spec.per_task.cpu_millis as f64 / 1000.0,
            mem_bytes: spec.per_task.mem_bytes,
            gpus: spec.per_task.n_gpus,
            time_limit_s: spec.time_limit_s,
            submitted_ms: self.submitted_ms,
            ended_ms: self.ended_ms(),
            pending_code: None,
            pending_reason: None,
            pending_indices: String::new(),
            command: if self.req.command.is_empty() { vec!["(script)".into()] } else { self.req.command.clone() },
            workdir: self.req.workdir.clone().unwrap_or_default(),
            image: self.req.image.clone(),
            tasks,
        }
    }
}

/// The most jobs of history one request shows, and how many rows it reads looking for them.
pub(crate) const HISTORY_PAGE_MAX: usize = 1000;
const HISTORY_SCAN_MAX: usize = 20_000;

impl Shared {
    /// Forgotten jobs of id above `after` submitted at or after `since_ms`, visible to
    /// `project` (all for `None`), up to `limit`, by id; and the id to ask after for the next
    /// page, when there may be more.
    pub fn history_views(&self, project: Option<&str>, after: u64, since_ms: u64, limit: usize) -> Result<(Vec<JobView>, Option<u64>)> {
        let limit = limit.clamp(1, HISTORY_PAGE_MAX);
        let mut views = Vec::new();
        let mut cursor = after;
        let mut scanned = 0;
        loop {
            let page = self.reader.lock().unwrap_or_else(|p| p.into_inner()).jobs_page(cursor, since_ms, limit)?;
            let exhausted = page.len() < limit;
            for (id, submitted_ms, text) in page {
                cursor = id;
                scanned += 1;
                if !self.lock().forgotten.contains(id) {
                    continue;
                }
                let (req, spec) = Self::read_journaled(id, &text)?;
                // Another project's jobs are passed over before their tasks are read.
                if project.is_some_and(|p| p != spec.project) {
                    continue;
                }
                let records = self.reader.lock().unwrap_or_else(|p| p.into_inner()).task_records(id)?;
                views.push(Archived { req, spec, submitted_ms, records }.view(id, false));
                if views.len() == limit {
                    return Ok((views, Some(id)));
                }
            }
            if exhausted {
                return Ok((views, None));
            }
            if scanned >= HISTORY_SCAN_MAX {
                return Ok((views, Some(cursor)));
            }
        }
    }

    fn read_journaled(job_id: u64, text: &str) -> Result<(SubmitRequest, JobSpec)> {
        spec::journaled(text).map_err(|e| Error::Internal(format!("job {job_id} in the journal: {e}")))
    }

    /// A forgotten job's submission (time, request, spec) from the journal, without its tasks;
    /// None when the core still holds it or it never existed.
    fn archived_submission(&self, job_id: u64) -> Result<Option<(u64, SubmitRequest, JobSpec)>> {
        if !self.lock().forgotten.contains(job_id) {
            return Ok(None);
        }
        let Some((submitted_ms, text)) = self.reader.lock().unwrap_or_else(|p| p.into_inner()).job_submission(job_id)? else { return Ok(None) };
        let (req, spec) = Self::read_journaled(job_id, &text)?;
        Ok(Some((submitted_ms, req, spec)))
    }

    /// The project of a forgotten job, read from its submission alone.
    pub(crate) fn archived_project(&self, job_id: u64) -> Result<Option<String>> {
        Ok(self.archived_submission(job_id)?.map(|(_, _, spec)| spec.project))
    }

    /// A job the core has forgotten, read back from the journal with its tasks; None when the
    /// core still holds it or it never existed.
    pub(crate) fn archived(&self, job_id: u64) -> Result<Option<Archived>> {
        let Some((submitted_ms, req, spec)) = self.archived_submission(job_id)? else { return Ok(None) };
        let records = self.reader.lock().unwrap_or_else(|p| p.into_inner()).task_records(job_id)?;
        Ok(Some(Archived { req, spec, submitted_ms, records }))
    }

    /// Settles a new job's dependencies on forgotten jobs from the journal: one met is dropped
    /// (all of a `?` list, when it is met), one that can never be met refuses the job, as
    /// Slurm refuses a dependency it cannot satisfy.
    pub(crate) fn settle_forgotten_dependencies(&self, spec: &mut JobSpec) -> Result<()> {
        use tidepool_core::AfterKind;
        let deps = &spec.dependencies;
        let forgotten: Vec<usize> = {
            let inner = self.lock();
            deps.on.iter().enumerate().filter(|(_, d)| inner.cluster.job(d.job).is_none() && inner.forgotten.contains(d.job.0)).map(|(i, _)| i).collect()
        };
        if forgotten.is_empty() {
            return Ok(());
        }
        let mut met = Vec::new();
        let mut unmet = Vec::new();
        for &i in &forgotten {
            let after = &spec.dependencies.on[i];
            let Some(job) = self.archived(after.job.0)? else { continue };
            let c = job.counts();
            let ok = c.succeeded == c.total();
            let verdict = match after.kind {
                // It ended: it started, or was cancelled before it could.
                AfterKind::Start => true,
                AfterKind::Any => true,
                AfterKind::Ok | AfterKind::Corr => ok,
                AfterKind::NotOk => !ok,
            };
            if verdict {
                met.push(i);
            } else if spec.dependencies.any_of {
                unmet.push(i);
            } else {
                return Err(Error::field("dependency", format!("job {} ended {} long ago: this dependency can never be met", after.job.0, views::job_state(&c))));
            }
        }
        if spec.dependencies.any_of && !met.is_empty() {
            // One of a `?` list met: the whole list is.
            spec.dependencies.on.clear();
            return Ok(());
        }
        let mut position = 0;
        spec.dependencies.on.retain(|_| {
            let keep = !met.contains(&position) && !unmet.contains(&position);
            position += 1;
            keep
        });
        if spec.dependencies.any_of && !unmet.is_empty() && spec.dependencies.on.is_empty() {
            return Err(Error::field("dependency", "every job of this '?' list ended long ago without meeting it"));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forgotten_ids_are_kept_as_merged_ranges() {
        let mut ids = ForgottenIds::default();
        for id in [5, 3, 4, 10, 12, 11, 1] {
            ids.insert(id);
        }
        assert_eq!(ids.ranges(), [(1, 1), (3, 5), (10, 12)]);
        assert!(ids.contains(4) && ids.contains(12) && !ids.contains(2) && !ids.contains(13) && !ids.contains(0));
        ids.insert(2);
        assert_eq!(ids.ranges(), [(1, 5), (10, 12)]);
        let again = ForgottenIds::from_ranges(&ids.ranges());
        assert_eq!(again.ranges(), ids.ranges());
    }
}
