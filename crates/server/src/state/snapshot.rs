//! Snapshots of the state: taken every so many events, read back at start before the events after them.

use super::*;

impl Shared {
    /// Writes a snapshot of the state, so a restart replays only what came after it.
    pub async fn take_snapshot(&self) -> Result<()> {
        let _gate = self.apply_gate.write().await;
        let seq = self.reader.lock().unwrap_or_else(|p| p.into_inner()).max_seq()?;
        let data = self.lock().snapshot_json();
        self.reader.lock().unwrap_or_else(|p| p.into_inner()).save_snapshot(seq, now_ms(), &data)?;
        self.events_at_snapshot.store(self.writer.n_appended(), std::sync::atomic::Ordering::SeqCst);
        tracing::info!(seq, bytes = data.len(), "snapshot taken");
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
    pub(super) fn snapshot_json(&self) -> String {
        let mut jobs = Vec::new();
        for job in self.cluster.jobs() {
            let c = job.counts();
            let Some(snap) = self.cluster.task_snapshot(job.id()) else { continue };
            // A job none of whose tasks ever started is restored by its submission alone.
            if c.pending == c.total() && snap.next_fresh == 0 && snap.requeued.is_empty() && snap.attempts.is_empty() {
                continue;
            }
            let node_name = |id: NodeId| self.cluster.node(id).map(|n| n.name().to_string()).unwrap_or_default();
            jobs.push(serde_json::json!({
                "id": job.id().0,
                "runs": snap.runs.iter().map(|(s, n)| [*s as u8 as u64, u64::from(*n)]).collect::<Vec<_>>(),
                "next_fresh": snap.next_fresh,
                "requeued": snap.requeued,
                "attempts": snap.attempts,
                "running": snap.running.iter().map(|(pos, node, attempt, started, checkpoint)| serde_json::json!([pos, node_name(*node), attempt, started, checkpoint])).collect::<Vec<_>>(),
                "ended_ms": snap.ended_ms,
            }));
        }
        let draining: Vec<&str> = self.cluster.nodes().filter(|(_, n)| n.is_draining()).map(|(_, n)| n.name()).collect();
        let refs = |set: &HashSet<AttemptRef>| set.iter().map(|a| [a.job_id, u64::from(a.index), u64::from(a.attempt)]).collect::<Vec<_>>();
        serde_json::json!({
            "version": 1,
            "jobs": jobs,
            "draining": draining,
            "cancel_pending": refs(&self.cancel_pending),
            "preempt_pending": refs(&self.preempt_pending),
        })
        .to_string()
    }

    pub(super) fn restore_snapshot(&mut self, data: &str) -> std::result::Result<(), String> {
        use serde_json::Value;
        let v: Value = serde_json::from_str(data).map_err(|e| e.to_string())?;
        let num = |v: &Value| v.as_u64().unwrap_or(0);
        for job in v["jobs"].as_array().cloned().unwrap_or_default() {
            let job_id = JobId(num(&job["id"]));
            let mut running = Vec::new();
            for r in job["running"].as_array().cloned().unwrap_or_default() {
                let name = r[1].as_str().unwrap_or_default().to_string();
                let node_id = match self.cluster.node_id(&name) {
                    Some(id) => id,
                    None => self.cluster.add_node(&name, "", Resources::default()),
                };
                running.push((num(&r[0]) as u32, node_id, num(&r[2]) as u32, num(&r[3]), num(&r[4])));
            }
            let pairs = |key: &str| -> Vec<(u32, u32)> {
                job[key].as_array().map(|a| a.iter().map(|p| (num(&p[0]) as u32, num(&p[1]) as u32)).collect()).unwrap_or_default()
            };
            let runs: Vec<(TaskState, u32)> = job["runs"]
                .as_array()
                .map(|a| a.iter().filter_map(|p| Some((tidepool_core::cluster::task_state_from_u8(num(&p[0]) as u8)?, num(&p[1]) as u32))).collect())
                .unwrap_or_default();
            let snap = tidepool_core::TaskSnapshot {
                runs,
                next_fresh: num(&job["next_fresh"]) as u32,
                requeued: job["requeued"].as_array().map(|a| a.iter().map(|x| num(x) as u32).collect()).unwrap_or_default(),
                attempts: pairs("attempts"),
                running,
                ended_ms: job["ended_ms"].as_u64(),
            };
            if self.cluster.job(job_id).is_some() {
                self.cluster.restore_tasks(job_id, &snap)?;
            }
        }
        for name in v["draining"].as_array().cloned().unwrap_or_default() {
            if let Some(id) = name.as_str().and_then(|n| self.cluster.node_id(n)) {
                self.cluster.set_node_draining(id, true);
            }
        }
        let refs = |key: &str| -> HashSet<AttemptRef> {
            v[key].as_array().map(|a| a.iter().map(|r| AttemptRef { job_id: num(&r[0]), index: num(&r[1]) as u32, attempt: num(&r[2]) as u32 }).collect()).unwrap_or_default()
        };
        self.cancel_pending = refs("cancel_pending");
        self.preempt_pending = refs("preempt_pending");
        Ok(())
    }
}
