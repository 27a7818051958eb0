//! Snapshots of the server's state as plain data, and their versioned codec: a snapshot that
//! cannot be read exactly is an error (the server then replays the whole journal), never a
//! state with fields quietly zeroed.

use crate::{Error, Result};
use serde::{Deserialize, Serialize};
use tidepool_core::cluster::task_state_from_u8;
use tidepool_core::TaskState;

/// The snapshot version this build writes and reads.
pub const SNAPSHOT_VERSION: u32 = 1;

/// The state after some event: what replaying the events up to it built.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Snapshot {
    /// Jobs any of whose tasks ever left pending; the others are rebuilt from their submission.
    pub jobs: Vec<JobTasks>,
    /// Nodes drained by hand.
    pub draining: Vec<String>,
    /// Attempts told to stop for a cancel, whose end is still awaited: (job, index, attempt).
    pub cancel_pending: Vec<(u64, u32, u32)>,
    /// Attempts told to stop for a preemption, whose end is still awaited.
    pub preempt_pending: Vec<(u64, u32, u32)>,
    /// Jobs finished and no longer held in memory, as inclusive id ranges: the journal alone
    /// answers for them, and a restart does not rebuild them.
    pub forgotten: Vec<(u64, u64)>,
}

/// One job's tasks, run-length coded.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct JobTasks {
    /// The job.
    pub job_id: u64,
    /// (state, how many in a row), in position order.
    pub runs: Vec<(TaskState, u32)>,
    /// Positions below this were taken from the never-started cursor.
    pub next_fresh: u32,
    /// Positions waiting again after a requeue.
    pub requeued: Vec<u32>,
    /// (position, last attempt) of tasks whose attempt number must survive.
    pub attempts: Vec<(u32, u32)>,
    /// Attempts running when the snapshot was taken.
    pub running: Vec<RunningAttempt>,
    /// When the job ended.
    pub ended_ms: Option<u64>,
}

/// An attempt on a node.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RunningAttempt {
    /// The task's position in its array.
    pub position: u32,
    /// The node's name.
    pub node: String,
    /// The attempt number.
    pub attempt: u32,
    /// When it started.
    pub started_ms: u64,
    /// Its last checkpoint.
    pub checkpoint_ms: u64,
    /// The GPUs it holds, by index (bit i: GPU i).
    pub gpus: u64,
}

// The document: tuples as arrays, as version 1 has always been written.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Document {
    version: u32,
    jobs: Vec<JobDocument>,
    draining: Vec<String>,
    cancel_pending: Vec<(u64, u32, u32)>,
    preempt_pending: Vec<(u64, u32, u32)>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    forgotten: Vec<(u64, u64)>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct JobDocument {
    id: u64,
    runs: Vec<(u8, u32)>,
    next_fresh: u32,
    requeued: Vec<u32>,
    attempts: Vec<(u32, u32)>,
    running: Vec<(u32, String, u32, u64, u64)>,
    ended_ms: Option<u64>,
    /// (position, GPUs) of running attempts that hold GPUs; absent when none do.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    gpus: Vec<(u32, u64)>,
}

impl Snapshot {
    /// The snapshot as its stored text.
    pub fn encode(&self) -> String {
        let doc = Document {
            version: SNAPSHOT_VERSION,
            jobs: self
                .jobs
                .iter()
                .map(|job| JobDocument {
                    id: job.job_id,
                    runs: job.runs.iter().map(|(state, n)| (*state as u8, *n)).collect(),
                    next_fresh: job.next_fresh,
                    requeued: job.requeued.clone(),
                    attempts: job.attempts.clone(),
                    running: job
                        .running
                        .iter()
                        .map(|r| (r.position, r.node.clone(), r.attempt, r.started_ms, r.checkpoint_ms))
                        .collect(),
                    ended_ms: job.ended_ms,
                    gpus: job.running.iter().filter(|r| r.gpus != 0).map(|r| (r.position, r.gpus)).collect(),
                })
                .collect(),
            draining: self.draining.clone(),
            cancel_pending: self.cancel_pending.clone(),
            preempt_pending: self.preempt_pending.clone(),
            forgotten: self.forgotten.clone(),
        };
        // Plain numbers and strings always serialise; an empty text would be refused on read.
        serde_json::to_string(&doc).unwrap_or_default()
    }

    /// The snapshot of its stored text; `seq` names it in the error.
    pub fn decode(seq: u64, text: &str) -> Result<Snapshot> {
        let corrupt = |reason: String| Error::CorruptSnapshot { seq, reason };
        let version = serde_json::from_str::<serde_json::Value>(text)
            .map_err(|e| corrupt(e.to_string()))?
            .get("version")
            .and_then(serde_json::Value::as_u64);
        if version != Some(u64::from(SNAPSHOT_VERSION)) {
            return Err(corrupt(format!("version {version:?}, this build reads {SNAPSHOT_VERSION}")));
        }
        let doc: Document = serde_json::from_str(text).map_err(|e| corrupt(e.to_string()))?;
        let mut jobs = Vec::with_capacity(doc.jobs.len());
        for job in doc.jobs {
            let mut runs = Vec::with_capacity(job.runs.len());
            for (code, n) in job.runs {
                let state = task_state_from_u8(code).ok_or_else(|| corrupt(format!("job {}: task state {code}", job.id)))?;
                runs.push((state, n));
            }
            let held: std::collections::HashMap<u32, u64> = job.gpus.iter().copied().collect();
            if held.len() != job.gpus.len() || held.keys().any(|p| !job.running.iter().any(|r| r.0 == *p)) {
                return Err(corrupt(format!("job {}: GPUs of attempts it does not run", job.id)));
            }
            let running = job
                .running
                .into_iter()
                .map(|(position, node, attempt, started_ms, checkpoint_ms)| RunningAttempt {
                    position,
                    node,
                    attempt,
                    started_ms,
                    checkpoint_ms,
                    gpus: held.get(&position).copied().unwrap_or(0),
                })
                .collect();
            jobs.push(JobTasks {
                job_id: job.id,
                runs,
                next_fresh: job.next_fresh,
                requeued: job.requeued,
                attempts: job.attempts,
                running,
                ended_ms: job.ended_ms,
            });
        }
        Ok(Snapshot { jobs, draining: doc.draining, cancel_pending: doc.cancel_pending, preempt_pending: doc.preempt_pending, forgotten: doc.forgotten })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Snapshot {
        Snapshot {
            jobs: vec![JobTasks {
                job_id: 4,
                runs: vec![(TaskState::Succeeded, 3), (TaskState::Running, 1), (TaskState::Pending, 6)],
                next_fresh: 4,
                requeued: vec![],
                attempts: vec![(3, 2)],
                running: vec![RunningAttempt { position: 3, node: "n1".into(), attempt: 2, started_ms: 10, checkpoint_ms: 0, gpus: 0 }],
                ended_ms: None,
            }],
            draining: vec!["n2".into()],
            cancel_pending: vec![(4, 3, 2)],
            preempt_pending: vec![],
            forgotten: vec![(1, 3), (7, 7)],
        }
    }

    #[test]
    fn a_snapshot_reads_back_as_written() {
        let snap = sample();
        assert_eq!(Snapshot::decode(1, &snap.encode()).unwrap(), snap);
    }

    #[test]
    fn a_snapshot_as_earlier_servers_wrote_it_reads_the_same() {
        // Keys in the order `serde_json::json!` wrote them: alphabetical.
        let stored = r#"{"cancel_pending":[[4,3,2]],"draining":["n2"],"jobs":[{"attempts":[[3,2]],"ended_ms":null,"id":4,"next_fresh":4,"requeued":[],"running":[[3,"n1",2,10,0]],"runs":[[2,3],[1,1],[0,6]]}],"preempt_pending":[],"version":1}"#;
        assert_eq!(Snapshot::decode(1, stored).unwrap(), Snapshot { forgotten: vec![], ..sample() }, "no forgotten jobs before they were written");
    }

    #[test]
    fn a_damaged_snapshot_is_an_error_never_zeros() {
        let good = sample().encode();
        for bad in [
            good.replace("\"next_fresh\":4", "\"next_fresh\":\"four\""),
            good.replace("[2,3]", "[9,3]"),
            good.replace("\"version\":1", "\"version\":2"),
            good.replace(",\"draining\":[\"n2\"]", ""),
            good[..good.len() / 2].to_string(),
        ] {
            match Snapshot::decode(12, &bad) {
                Err(Error::CorruptSnapshot { seq: 12, reason }) => assert!(!reason.is_empty()),
                other => panic!("{bad}: {other:?}"),
            }
        }
    }
}
