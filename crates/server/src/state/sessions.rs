//! Agent sessions: registration, the long poll, leaving, leases, and log reads handed to agents.

use super::*;

impl Shared {
    /// An agent (re)joins: its finished results are recorded, attempts it no longer has are
    /// requeued, attempts the server no longer wants are to be killed.
    pub async fn on_register(&self, req: RegisterRequest) -> Result<RegisterResponse> {
        if req.name.is_empty() || req.name.len() > 200 {
            return Err(Error::field("name", "must be 1 to 200 characters"));
        }
        if req.cpu_millis == 0 {
            return Err(Error::field("cpu_millis", "must be at least 1"));
        }
        if req.gpus > 64 {
            return Err(Error::field("gpus", "at most 64 GPUs per node"));
        }
        let acked = self.on_results(&req.finished).await?;
        let known: HashSet<AttemptRef> = req
            .running
            .iter()
            .copied()
            .chain(req.finished.iter().map(|r| r.attempt))
            .collect();
        let _gate = self.apply_gate.read().await;
        let capacity = Resources {
            cpu_millis: req.cpu_millis,
            mem_bytes: req.mem_bytes,
            n_gpus: req.gpus,
            ..Resources::default()
        };
        let named: Vec<(String, u64)> = req.resources.iter().map(|(k, v)| (k.clone(), *v)).collect();
        let (session, requeues, kills) = {
            let mut inner = self.lock();
            // Failed GPUs stay failed across a reconnection, until the agent's check says otherwise.
            let gpus_failed = inner.cluster.node_id(&req.name).and_then(|id| inner.sessions.get(&id)).map(|s| s.gpus_failed.clone()).unwrap_or_default();
            let node_id = inner.cluster.add_node_with(&req.name, &req.pool, capacity, &req.features, &named);
            inner.cluster.set_node_overflow(node_id, req.overflow);
            let offer = tidepool_core::IdentityOffer { own_uids: req.identities.project_uids, operator: req.identities.operator_uid.is_some() };
            inner.cluster.set_node_identities(node_id, offer);
            inner.cluster.set_node_online(node_id, true);
            let session = inner.next_session_id;
            inner.next_session_id += 1;
            if let Some(old) = inner.sessions.insert(
                node_id,
                Session {
                    id: session,
                    launches: Vec::new(),
                    kills: Vec::new(),
                    log_reads: Vec::new(),
                    wake: Arc::new(Notify::new()),
                    last_seen_ms: self.config.clock.now_ms(),
                    identities: req.identities,
                    gpus_failed,
                    images: Vec::new(),
                    pulls: Vec::new(),
                    pulls_with_login: Vec::new(),
                    signals: Vec::new(),
                },
            ) {
                old.wake.notify_one();
            }
            let mut requeues = Vec::new();
            let mut wanted = HashSet::new();
            for (job_id, pos, attempt) in inner.cluster.running_on(node_id) {
                let index = inner.index_of(job_id, pos);
                let a = AttemptRef { job_id: job_id.0, index, attempt };
                wanted.insert(a);
                if !known.contains(&a) {
                    requeues.push(inner.lost_attempt(a, self.config.clock.now_ms(), "its node came back without it"));
                }
            }
            let kills: Vec<AttemptRef> = req
                .running
                .iter()
                .filter(|a| !wanted.contains(a) || inner.cancel_pending.contains(a))
                .copied()
                .collect();
            (session, requeues, kills)
        };
        if !requeues.is_empty() {
            tracing::warn!(node = %req.name, n = requeues.len(), "agent lost attempts; requeued");
        }
        self.journal_then_apply(requeues).await?;
        tracing::info!(node = %req.name, cpus = %format_cores(req.cpu_millis), "agent registered");
        // A node came online: there may be work for it.
        self.schedule_wanted.notify_one();
        Ok(RegisterResponse { session, acked, kill: kills })
    }

    /// A node's GPU health: failed GPUs get no task, and the attempts on them are stopped to run
    /// again as new attempts elsewhere; GPUs no longer named are given work again. False when
    /// the session is not current.
    pub fn on_gpu_health(&self, report: &tidepool_api::GpuHealthReport) -> Result<bool> {
        let mut inner = self.lock();
        let Some((node_id, _)) = inner.sessions.iter().find(|(_, s)| s.id == report.session) else { return Ok(false) };
        let node_id = *node_id;
        let n_gpus = inner.cluster.node(node_id).map_or(0, |n| n.capacity().n_gpus);
        if let Some(bad) = report.failed.iter().find(|f| f.index >= n_gpus) {
            return Err(Error::field("failed", format!("GPU {} is not one of this node's {n_gpus}", bad.index)));
        }
        let failed: std::collections::BTreeMap<u32, String> =
            report.failed.iter().map(|f| (f.index, f.reason.chars().take(200).collect())).collect();
        let mask = failed.keys().fold(0u64, |m, i| m | 1 << i);
        let before = inner.cluster.node(node_id).map_or(0, |n| n.gpus_failed());
        if mask != before {
            let name = inner.cluster.node(node_id).map(|n| n.name().to_string()).unwrap_or_default();
            tracing::warn!(node = %name, failed = ?failed, "GPU health changed");
        }
        for (job_id, pos, attempt) in inner.cluster.set_gpus_failed(node_id, mask) {
            let index = inner.index_of(job_id, pos);
            let a = AttemptRef { job_id: job_id.0, index, attempt };
            // Stopped as a preemption is: its end is journaled as a requeue, not a failure.
            if inner.preempt_pending.insert(a) {
                if let Some(session) = inner.sessions.get_mut(&node_id) {
                    session.kills.push(a);
                    session.wake.notify_one();
                }
            }
        }
        if let Some(session) = inner.sessions.get_mut(&node_id) {
            session.gpus_failed = failed;
        }
        drop(inner);
        self.schedule_wanted.notify_one();
        Ok(true)
    }

    /// The images a node holds unpacked, as its agent reports after each pull; false when the
    /// session is not current.
    pub fn on_images(&self, report: tidepool_api::ImagesReport) -> Result<bool> {
        if report.images.len() > 10_000 {
            return Err(Error::field("images", "at most 10,000 images per node"));
        }
        let mut inner = self.lock();
        let Some((node_id, session)) = inner.sessions.iter_mut().find(|(_, s)| s.id == report.session) else { return Ok(false) };
        let node_id = *node_id;
        let held: Vec<String> = report.images.iter().map(|i| i.reference.clone()).collect();
        session.images = report.images;
        inner.cluster.set_node_warm(node_id, &held);
        Ok(true)
    }

    /// Gives a node's failed GPU work again, until its health check fails it anew.
    pub fn on_resume_gpu(&self, node: &str, index: u32) -> Result<()> {
        let mut inner = self.lock();
        let node_id = inner.cluster.node_id(node).ok_or_else(|| Error::NotFound(format!("node {node} does not exist")))?;
        let failed = inner.cluster.node(node_id).map_or(0, |n| n.gpus_failed());
        if failed & (1 << index.min(63)) == 0 || index >= 64 {
            return Err(Error::field("gpu", format!("GPU {index} of {node} has not failed")));
        }
        inner.cluster.set_gpus_failed(node_id, failed & !(1 << index));
        if let Some(session) = inner.sessions.get_mut(&node_id) {
            session.gpus_failed.remove(&index);
        }
        drop(inner);
        self.schedule_wanted.notify_one();
        Ok(())
    }

    /// Hands an agent its work, waiting up to the hold time for some.
    pub async fn on_poll(&self, session: u64) -> Result<PollResponse> {
        let wake = {
            let mut inner = self.lock();
            let Some(s) = inner.session_mut(session) else {
                return Ok(PollResponse { reregister: true, ..PollResponse::default() });
            };
            s.last_seen_ms = self.config.clock.now_ms();
            if !s.launches.is_empty() || !s.kills.is_empty() || !s.log_reads.is_empty() || !s.pulls.is_empty() {
                return Ok(s.take_work());
            }
            s.wake.clone()
        };
        let hold = self.config.poll_hold_ms.min(self.config.agent_lease_ms / 3).max(100);
        let _ = tokio::time::timeout(Duration::from_millis(hold), wake.notified()).await;
        let mut inner = self.lock();
        let Some(s) = inner.session_mut(session) else {
            return Ok(PollResponse { reregister: true, ..PollResponse::default() });
        };
        s.last_seen_ms = self.config.clock.now_ms();
        Ok(s.take_work())
    }

    /// An agent stopping in order: its node takes no new work (the attempts it still runs
    /// report as they stop); its next registration brings it back. False for a stale session.
    pub fn on_leave(&self, session: u64) -> bool {
        let mut inner = self.lock();
        let Some(node_id) = inner.sessions.iter().find(|(_, s)| s.id == session).map(|(id, _)| *id) else { return false };
        inner.cluster.set_node_online(node_id, false);
        true
    }

    /// True when `session` is an agent's current session.
    pub fn session_is_current(&self, session: u64) -> bool {
        self.lock().sessions.values().any(|s| s.id == session)
    }

    /// Nodes whose agent has been silent past the lease are lost: their sessions end and every
    /// attempt they ran goes back to the queue as a new attempt. If the agent comes back, its
    /// registration kills those stale attempts and their reports change nothing.
    pub async fn expire_leases(&self) -> Result<()> {
        let _gate = self.apply_gate.read().await;
        let now = self.config.clock.now_ms();
        let events: Vec<Event> = {
            let mut inner = self.lock();
            let lost: Vec<NodeId> = inner
                .sessions
                .iter()
                .filter(|(_, s)| now.saturating_sub(s.last_seen_ms) > self.config.agent_lease_ms)
                .map(|(id, _)| *id)
                .collect();
            let mut events = Vec::new();
            for node_id in lost {
                if let Some(old) = inner.sessions.remove(&node_id) {
                    old.wake.notify_one();
                }
                inner.cluster.set_node_online(node_id, false);
                let name = inner.cluster.node(node_id).map(|n| n.name().to_string()).unwrap_or_default();
                let running = inner.cluster.running_on(node_id);
                tracing::warn!(node = %name, n_requeued = running.len(), "agent lease expired; node lost");
                for (job_id, pos, attempt) in running {
                    let index = inner.index_of(job_id, pos);
                    events.push(inner.lost_attempt(AttemptRef { job_id: job_id.0, index, attempt }, self.config.clock.now_ms(), "its node was lost"));
                }
            }
            events
        };
        self.journal_then_apply(events).await
    }

    /// The node that holds a task's output (where it runs, or where it last ran), and whether
    /// the task has ended for good.
    pub fn log_node(&self, job_id: u64, index: u32) -> Result<(String, bool)> {
        if let Some(archived) = self.archived(job_id)? {
            let node = archived.records.into_iter().find(|r| r.index == index).and_then(|r| r.node);
            return node.map(|n| (n, true)).ok_or_else(|| Error::NotFound(format!("task {job_id}.{index} never ran")));
        }
        let inner = self.lock();
        let job = inner.cluster.job(JobId(job_id)).ok_or_else(|| Error::NotFound(format!("job {job_id} does not exist")))?;
        let pos = pos_of(&inner.cluster, JobId(job_id), index)
            .ok_or_else(|| Error::NotFound(format!("job {job_id} has no task {index}")))?;
        let ended = job.task_state(pos).is_some_and(|s| !matches!(s, TaskState::Pending | TaskState::Running));
        let running_on = job.running_task(pos).and_then(|r| inner.cluster.node(r.node_id)).map(|n| n.name().to_string());
        drop(inner);
        let node = match running_on {
            Some(n) => n,
            None => self
                .reader
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .task_records(job_id)?
                .into_iter()
                .find(|r| r.index == index)
                .and_then(|r| r.node)
                .ok_or_else(|| Error::NotFound(format!("task {job_id}.{index} has not run yet")))?,
        };
        Ok((node, ended))
    }

    /// Hands `read` to the agent of `node` and wakes it, its answer to go to `answer`; false when
    /// no agent of that node is connected.
    pub fn ask_agent(&self, node: &str, read: tidepool_api::LogRead, answer: crate::logs::AnswerTo) -> bool {
        let mut inner = self.lock();
        let Some(session) = inner.cluster.node_id(node).and_then(|id| inner.sessions.get_mut(&id)) else { return false };
        // Awaited before the agent can see the read, so its answer always finds it.
        self.log_relay.expect(read.request, session.id, answer);
        session.log_reads.push(read);
        session.wake.notify_one();
        true
    }
}

impl Inner {
    pub(super) fn session_mut(&mut self, session: u64) -> Option<&mut Session> {
        self.sessions.values_mut().find(|s| s.id == session)
    }
}
