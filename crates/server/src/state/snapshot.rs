//! Snapshots of the state: taken every so many events, read back at start before the events
//! after them. The store keeps and encodes them; here the state becomes a `store::Snapshot`
//! and back, and an unreadable snapshot falls back to replaying the whole journal.

use super::*;
use tidepool_store::{JobTasks, RunningAttempt, Snapshot};

impl Shared {
    /// Writes a snapshot of the state, so a restart replays only what came after it.
    pub async fn take_snapshot(&self) -> Result<()> {
        let _gate = self.apply_gate.write().await;
        let seq = self.reader.lock().unwrap_or_else(|p| p.into_inner()).last_seq()?;
        let snapshot = self.lock().snapshot();
        self.reader.lock().unwrap_or_else(|p| p.into_inner()).save_snapshot(seq, self.config.clock.now_ms(), &snapshot)?;
        self.events_at_snapshot.store(self.writer.n_appended(), std::sync::atomic::Ordering::SeqCst);
        tracing::info!(seq, n_jobs = snapshot.jobs.len(), "snapshot taken");
        Ok(())
    }

    /// Takes a snapshot when enough has been journaled since the last.
    pub async fn maybe_snapshot(&self) -> Result<()> {
        let last = self.events_at_snapshot.load(std::sync::atomic::Ordering::SeqCst);
        if last == u64::MAX || self.writer.n_appended().saturating_sub(last) >= self.config.snapshot_every {
            self.take_snapshot().await?;
        }
        Ok(())
    }
}

impl Inner {
    /// An empty state with the configured projects.
    fn new(config: &Config) -> Inner {
        let mut inner = Inner {
            cluster: Cluster::new(),
            requests: HashMap::new(),
            next_job_id: 1,
            sessions: HashMap::new(),
            next_session_id: 1,
            cancel_pending: HashSet::new(),
            preempt_pending: HashSet::new(),
            secrets: load_secrets(&config.data_dir.join("secrets")),
            secrets_dir: config.data_dir.join("secrets"),
            identities: HashMap::new(),
            registry_logins: super::registries::RegistryLogins::load(config.data_dir.join("registries")),
            forgotten: super::archive::ForgottenIds::default(),
            step_secret: String::new(),
        };
        // Only the admin submits to a project the catalog does not hold: its tasks are the
        // operator's, run as the user each agent was given for them.
        inner.cluster.set_new_project_identity(tidepool_core::Identity::Operator);
        for (name, limits) in &config.projects {
            inner.cluster.set_project(name, *limits);
        }
        inner
    }

    /// The state the store holds: its newest snapshot and the events after it, or, when there
    /// is none or it cannot be used, every event. Also how many events were replayed.
    pub(super) fn replayed(config: &Config, store: &dyn Store) -> Result<(Inner, u64)> {
        let mut n_events = 0u64;
        match store.latest_snapshot() {
            Ok(Some((seq, snapshot))) => {
                let mut inner = Inner::new(config);
                // Jobs forgotten before the snapshot stay forgotten: they are not rebuilt.
                inner.forgotten = super::archive::ForgottenIds::from_ranges(&snapshot.forgotten);
                store.replay_jobs(&mut |event| {
                    if !inner.forgotten.contains(event.job_id()) {
                        inner.replay(event);
                    }
                })?;
                match inner.restore(&snapshot) {
                    Ok(()) => {
                        store.replay_events_after(seq, &mut |event| {
                            n_events += 1;
                            if !inner.forgotten.contains(event.job_id()) {
                                inner.replay(event);
                            }
                        })?;
                        inner.forget_ended_secrets();
                        return Ok((inner, n_events));
                    }
                    Err(reason) => {
                        tracing::warn!(seq, %reason, "the snapshot does not fit the journal; replaying every event instead")
                    }
                }
            }
            Ok(None) => {}
            Err(tidepool_store::Error::CorruptSnapshot { seq, reason }) => {
                tracing::warn!(seq, %reason, "the snapshot cannot be read; replaying every event instead")
            }
            Err(other) => return Err(other.into()),
        }
        let mut inner = Inner::new(config);
        // Every end is replayed here, each forgetting its job's secrets: no sweep needed.
        store.replay(&mut |event| {
            n_events += 1;
            inner.replay(event);
        })?;
        Ok((inner, n_events))
    }

    pub(super) fn snapshot(&self) -> Snapshot {
        let mut jobs = Vec::new();
        for job in self.cluster.jobs() {
            let c = job.counts();
            let Some(snap) = self.cluster.task_snapshot(job.id()) else { continue };
            // A job none of whose tasks ever started is restored by its submission alone.
            if c.pending == c.total() && snap.next_fresh == 0 && snap.requeued.is_empty() && snap.attempts.is_empty() {
                continue;
            }
            let node_name = |id: NodeId| self.cluster.node(id).map(|n| n.name().to_string()).unwrap_or_default();
            jobs.push(JobTasks {
                job_id: job.id().0,
                runs: snap.runs,
                next_fresh: snap.next_fresh,
                requeued: snap.requeued,
                attempts: snap.attempts,
                running: snap
                    .running
                    .iter()
                    .map(|(position, node, attempt, started_ms, checkpoint_ms)| RunningAttempt {
                        position: *position,
                        node: node_name(*node),
                        attempt: *attempt,
                        started_ms: *started_ms,
                        checkpoint_ms: *checkpoint_ms,
                        gpus: snap.gpus.iter().find(|(p, _)| p == position).map_or(0, |(_, g)| *g),
                    })
                    .collect(),
                ended_ms: snap.ended_ms,
            });
        }
        let refs = |set: &HashSet<AttemptRef>| {
            let mut refs: Vec<(u64, u32, u32)> = set.iter().map(|a| (a.job_id, a.index, a.attempt)).collect();
            refs.sort_unstable();
            refs
        };
        Snapshot {
            jobs,
            draining: self.cluster.nodes().filter(|(_, n)| n.is_draining()).map(|(_, n)| n.name().to_string()).collect(),
            cancel_pending: refs(&self.cancel_pending),
            preempt_pending: refs(&self.preempt_pending),
            forgotten: self.forgotten.ranges(),
        }
    }

    /// Puts the snapshot's tasks onto the jobs replayed from their submissions.
    fn restore(&mut self, snapshot: &Snapshot) -> std::result::Result<(), String> {
        for job in &snapshot.jobs {
            let job_id = JobId(job.job_id);
            if self.cluster.job(job_id).is_none() {
                return Err(format!("job {} is in the snapshot but not in the journal", job.job_id));
            }
            let mut running = Vec::with_capacity(job.running.len());
            for r in &job.running {
                let node_id = match self.cluster.node_id(&r.node) {
                    Some(id) => id,
                    None => self.cluster.add_node(&r.node, "", Resources::default()),
                };
                running.push((r.position, node_id, r.attempt, r.started_ms, r.checkpoint_ms));
            }
            let tasks = tidepool_core::TaskSnapshot {
                runs: job.runs.clone(),
                next_fresh: job.next_fresh,
                requeued: job.requeued.clone(),
                attempts: job.attempts.clone(),
                running,
                ended_ms: job.ended_ms,
                gpus: job.running.iter().filter(|r| r.gpus != 0).map(|r| (r.position, r.gpus)).collect(),
            };
            self.cluster.restore_tasks(job_id, &tasks).map_err(|e| format!("job {}: {e}", job.job_id))?;
        }
        for name in &snapshot.draining {
            if let Some(id) = self.cluster.node_id(name) {
                self.cluster.set_node_draining(id, true);
            }
        }
        let refs = |list: &[(u64, u32, u32)]| -> HashSet<AttemptRef> {
            list.iter().map(|&(job_id, index, attempt)| AttemptRef { job_id, index, attempt }).collect()
        };
        self.cancel_pending = refs(&snapshot.cancel_pending);
        self.preempt_pending = refs(&snapshot.preempt_pending);
        Ok(())
    }
}
