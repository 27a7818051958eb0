//! What clients are shown: jobs, tasks, nodes, and the states and pending ranges in them.

use super::*;

/// A job's state from its task counts, as `tidepool jobs` shows it.
pub fn job_state(c: &TaskCounts) -> &'static str {
    if c.running > 0 {
        "running"
    } else if c.pending > 0 {
        "pending"
    } else if c.failed > 0 {
        "failed"
    } else if c.timeout > 0 {
        "timeout"
    } else if c.cancelled > 0 {
        "cancelled"
    } else {
        "succeeded"
    }
}

pub(super) fn pending_ranges(job: &tidepool_core::cluster::Job) -> String {
    let spec = job.spec();
    let mut out: Vec<String> = Vec::new();
    let mut run: Option<(u32, u32)> = None;
    for pos in 0..job.counts().total() {
        let Some(index) = spec.array.index_at(pos) else { break };
        let pending = job.task_state(pos) == Some(TaskState::Pending);
        run = match (run, pending) {
            (Some((a, b)), true) if index == b + 1 => Some((a, index)),
            (prev, true) => {
                if let Some(r) = prev {
                    out.push(fmt_range(r));
                }
                Some((index, index))
            }
            (prev, false) => {
                if let Some(r) = prev {
                    out.push(fmt_range(r));
                }
                None
            }
        };
        if out.len() > 50 {
            out.push("...".into());
            return out.join(",");
        }
    }
    if let Some(r) = run {
        out.push(fmt_range(r));
    }
    out.join(",")
}

pub(super) fn fmt_range((a, b): (u32, u32)) -> String {
    if a == b {
        a.to_string()
    } else {
        format!("{a}-{b}")
    }
}

impl Shared {
    /// The jobs visible to `project` (all for `None`), active ones only when asked, and how many
    /// finished ones that left out.
    pub fn job_views(&self, active_only: bool, project: Option<&str>) -> (Vec<JobView>, usize) {
        let inner = self.lock();
        let mut hidden = 0;
        let views = inner
            .cluster
            .jobs()
            .filter(|j| project.is_none_or(|p| j.spec().project == p))
            .filter(|j| {
                let shown = !active_only || !j.is_finished();
                hidden += usize::from(!shown);
                shown
            })
            .filter_map(|j| inner.job_view(j.id()))
            .collect();
        (views, hidden)
    }

    /// One job; with `with_tasks`, every task's detail from the journal.
    pub fn job_view(&self, job_id: u64, with_tasks: bool) -> Result<JobView> {
        if let Some(archived) = self.archived(job_id)? {
            return Ok(archived.view(job_id, with_tasks));
        }
        let (mut view, states, variants) = {
            let inner = self.lock();
            let view = inner
                .job_view(JobId(job_id))
                .ok_or_else(|| Error::NotFound(format!("job {job_id} does not exist")))?;
            let states: Vec<(u32, TaskState, Option<RunOf>, u64)> = if with_tasks {
                let job = inner.cluster.job(JobId(job_id));
                job.map(|job| {
                    (0..job.counts().total())
                        .map(|pos| {
                            let run = job.running_task(pos).map(|r| {
                                let node = inner.cluster.node(r.node_id).map(|n| n.name().to_string()).unwrap_or_default();
                                (node, r.attempt, r.started_ms)
                            });
                            (
                                job.spec().array.index_at(pos).unwrap_or(pos),
                                job.task_state(pos).unwrap_or(TaskState::Pending),
                                run,
                                job.spec().task_job_id(job_id, pos),
                            )
                        })
                        .collect()
                })
                .unwrap_or_default()
            } else {
                Vec::new()
            };
            // Which image variant each node runs, for the tasks' view.
            let variants: HashMap<String, String> = match (&view.image, with_tasks) {
                (Some(image), true) => inner
                    .cluster
                    .nodes()
                    .filter_map(|(_, n)| Some((n.name().to_string(), crate::spec::image_for(image, &inner.cluster.feature_names(n.feature_mask()))?)))
                    .collect(),
                _ => HashMap::new(),
            };
            (view, states, variants)
        };
        if with_tasks {
            let records = self
                .reader
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .task_records(job_id)?;
            let by_index: HashMap<u32, &tidepool_store::TaskRecord> =
                records.iter().map(|r| (r.index, r)).collect();
            view.tasks = states
                .into_iter()
                .map(|(index, state, run, own_job_id)| {
                    let rec = by_index.get(&index);
                    let mut t = TaskView {
                        index,
                        state: state.name().to_string(),
                        attempt: rec.map_or(0, |r| r.attempt),
                        node: rec.and_then(|r| r.node.clone()),
                        started_ms: rec.and_then(|r| r.dispatched_ms),
                        ended_ms: None,
                        exit_code: None,
                        signal: None,
                        cpu_ms: None,
                        peak_mem_bytes: None,
                        message: None,
                        image: None,
                        job_id: own_job_id,
                    };
                    if let Some((node, attempt, started)) = run {
                        t.node = Some(node);
                        t.attempt = attempt;
                        t.started_ms = Some(started);
                    } else if let Some(ending) = rec.and_then(|r| r.ending) {
                        if ending.started_ms > 0 {
                            t.started_ms = Some(ending.started_ms);
                        }
                        t.ended_ms = rec.and_then(|r| r.ended_ms);
                        t.exit_code = ending.exit_code;
                        t.signal = ending.signal;
                        t.cpu_ms = Some(ending.cpu_ms);
                        t.peak_mem_bytes = Some(ending.peak_mem_bytes);
                        t.message = rec.and_then(|r| r.message.clone());
                    }
                    t.image = t.node.as_ref().and_then(|n| variants.get(n).cloned());
                    t
                })
                .collect();
        }
        Ok(view)
    }

    /// Every node.
    pub fn node_views(&self) -> Vec<NodeView> {
        let inner = self.lock();
        inner
            .cluster
            .nodes()
            .map(|(id, n)| {
                let cap = n.capacity();
                let alloc = n.allocated();
                let state = if !n.is_online() {
                    "down"
                } else if n.is_draining() && n.n_running() > 0 {
                    "draining"
                } else if n.is_draining() {
                    "drained"
                } else if n.n_running() == 0 {
                    "idle"
                } else if n.free().cpu_millis == 0 {
                    "allocated"
                } else {
                    "mixed"
                };
                NodeView {
                    name: n.name().to_string(),
                    pool: n.pool().to_string(),
                    state: state.to_string(),
                    cpus: cap.cpu_millis as f64 / 1000.0,
                    cpus_allocated: alloc.cpu_millis as f64 / 1000.0,
                    mem_bytes: cap.mem_bytes,
                    mem_allocated_bytes: alloc.mem_bytes,
                    gpus: cap.n_gpus,
                    n_running: n.n_running(),
                    n_queued: n.n_queued(),
                    identities: inner.sessions.get(&id).filter(|_| n.is_online()).map(|s| s.identities).unwrap_or_default(),
                    gpus_failed: inner
                        .sessions
                        .get(&id)
                        .map(|s| s.gpus_failed.iter().map(|(index, reason)| tidepool_api::GpuFailure { index: *index, reason: reason.clone() }).collect())
                        .unwrap_or_default(),
                    images: inner.sessions.get(&id).filter(|_| n.is_online()).map(|s| s.images.clone()).unwrap_or_default(),
                }
            })
            .collect()
    }
}

impl Inner {
    pub(super) fn job_view(&self, job_id: JobId) -> Option<JobView> {
        let job = self.cluster.job(job_id)?;
        let req = self.requests.get(&job_id)?;
        let spec = job.spec();
        let c = job.counts();
        let reason = self.cluster.why_pending(job_id);
        let mut pending = String::new();
        if c.pending > 0 {
            pending = pending_ranges(job);
        }
        let tasks = job
            .running_tasks()
            .map(|(pos, r)| TaskView {
                job_id: spec.task_job_id(job_id.0, pos),
                index: spec.array.index_at(pos).unwrap_or(pos),
                state: "running".into(),
                attempt: r.attempt,
                node: self.cluster.node(r.node_id).map(|n| n.name().to_string()),
                started_ms: Some(r.started_ms),
                ended_ms: None,
                exit_code: None,
                signal: None,
                cpu_ms: None,
                peak_mem_bytes: None,
                message: None,
                image: None,
            })
            .collect::<Vec<_>>();
        let mut tasks = tasks;
        tasks.sort_by_key(|t| t.index);
        Some(JobView {
            id: job_id.0,
            name: spec.name.clone(),
            project: spec.project.clone(),
            tier: spec.tier.name().to_string(),
            pool: spec.pool.clone(),
            state: job_state(&c).to_string(),
            array: req.array.as_ref().map(|_| spec.array.to_string()),
            n_tasks: c.total(),
            counts: TaskCountsView {
                pending: c.pending,
                running: c.running,
                succeeded: c.succeeded,
                failed: c.failed,
                cancelled: c.cancelled,
                timeout: c.timeout,
            },
            cpus: spec.per_task.cpu_millis as f64 / 1000.0,
            mem_bytes: spec.per_task.mem_bytes,
            gpus: spec.per_task.n_gpus,
            time_limit_s: spec.time_limit_s,
            submitted_ms: job.submitted_ms(),
            ended_ms: job.ended_ms(),
            pending_code: reason.as_ref().map(|r| r.code.to_string()),
            pending_reason: reason.map(|r| r.text),
            pending_indices: pending,
            command: if req.command.is_empty() { vec!["(script)".into()] } else { req.command.clone() },
            workdir: req.workdir.clone().unwrap_or_default(),
            image: req.image.clone(),
            tasks,
        })
    }
}
