//! The durable journal: jobs and task events in SQLite, appended in group commits.
//!
//! **Invariant**: only this crate writes SQL. A job is one row whatever its array size; task
//! events are appended as tasks are dispatched and end, so a million-task array costs one row
//! at submission.

pub mod batches;

use rusqlite::{params, Connection, OptionalExtension};
use std::path::Path;

/// What can go wrong with the journal.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// SQLite refused.
    #[error("journal: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// A row could not be read back.
    #[error("journal: corrupt row: {0}")]
    Corrupt(String),
}

/// This crate's result.
pub type Result<T> = std::result::Result<T, Error>;

/// How an attempt ended: the core's vocabulary, journaled as a small integer.
pub use tidepool_core::TaskOutcome as Outcome;

/// The journal's code of an outcome.
fn outcome_code(outcome: Outcome) -> i64 {
    match outcome {
        Outcome::Succeeded => 1,
        Outcome::Failed => 2,
        Outcome::Cancelled => 3,
        Outcome::Timeout => 4,
    }
}

/// The outcome of a journal code.
fn outcome_of_code(code: i64) -> Result<Outcome> {
    Ok(match code {
        1 => Outcome::Succeeded,
        2 => Outcome::Failed,
        3 => Outcome::Cancelled,
        4 => Outcome::Timeout,
        _ => return Err(Error::Corrupt(format!("outcome {code}"))),
    })
}

/// Usage and exit details of an ended attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Ending {
    /// Exit code.
    pub exit_code: Option<i32>,
    /// Killing signal.
    pub signal: Option<i32>,
    /// When the process started.
    pub started_ms: u64,
    /// CPU time, ms.
    pub cpu_ms: u64,
    /// Peak memory, bytes.
    pub peak_mem_bytes: u64,
}

/// One journal entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A job was accepted; `spec` is its JSON wire form.
    JobSubmitted { job_id: u64, at_ms: u64, spec: String },
    /// An attempt was handed to a node.
    TaskDispatched { job_id: u64, index: u32, attempt: u32, node: String, at_ms: u64 },
    /// An attempt ended.
    TaskEnded { job_id: u64, index: u32, attempt: u32, outcome: Outcome, ending: Ending, at_ms: u64 },
    /// An attempt was lost by its node and the task went back to the queue.
    TaskRequeued { job_id: u64, index: u32, attempt: u32, at_ms: u64 },
    /// A user cancelled a job (`index` None) or one task.
    JobCancelled { job_id: u64, index: Option<u32>, at_ms: u64 },
    /// A node was drained by hand, or put back.
    NodeDrained { node: String, draining: bool, at_ms: u64 },
}

const KIND_DISPATCHED: i64 = 1;
const KIND_ENDED: i64 = 2;
const KIND_REQUEUED: i64 = 3;
const KIND_CANCELLED: i64 = 4;
const KIND_DRAINED: i64 = 5;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS jobs (
    id INTEGER PRIMARY KEY,
    submitted_ms INTEGER NOT NULL,
    spec TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS events (
    seq INTEGER PRIMARY KEY,
    kind INTEGER NOT NULL,
    at_ms INTEGER NOT NULL,
    job_id INTEGER NOT NULL,
    idx INTEGER,
    attempt INTEGER,
    node TEXT,
    outcome INTEGER,
    exit_code INTEGER,
    signal INTEGER,
    started_ms INTEGER,
    cpu_ms INTEGER,
    peak_mem INTEGER
);
CREATE INDEX IF NOT EXISTS events_by_task ON events (job_id, idx);
CREATE TABLE IF NOT EXISTS snapshots (
    seq INTEGER PRIMARY KEY, taken_ms INTEGER NOT NULL, data TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS projects (
    name TEXT PRIMARY KEY, quota_millis INTEGER, borrow_millis INTEGER, share INTEGER NOT NULL,
    created_ms INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS api_tokens (
    id TEXT PRIMARY KEY, hash TEXT NOT NULL UNIQUE, project TEXT NOT NULL,
    created_ms INTEGER NOT NULL, revoked INTEGER NOT NULL DEFAULT 0
);
";

/// A project as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProjectRow {
    /// Name.
    pub name: String,
    /// Guaranteed millicores.
    pub quota_millis: Option<u64>,
    /// Borrowable millicores.
    pub borrow_millis: Option<u64>,
    /// Fair-share weight.
    pub share: u32,
}

/// A project-scoped API token as stored: never the token itself, only its hash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenRow {
    /// Public id, for listing and revoking.
    pub id: String,
    /// SHA-256 of the token, hex.
    pub hash: String,
    /// The project it acts for; empty for an agents' join token.
    pub project: String,
    /// Revoked tokens are refused.
    pub revoked: bool,
}

/// The schema version this build writes.
pub const SCHEMA_VERSION: u32 = 1;

/// The journal, open for appending and reading.
pub struct Journal {
    conn: Connection,
}

/// The last known facts about one task, from the journal.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TaskRecord {
    /// Array index.
    pub index: u32,
    /// Last attempt number.
    pub attempt: u32,
    /// Node of the last attempt.
    pub node: Option<String>,
    /// When it was dispatched.
    pub dispatched_ms: Option<u64>,
    /// How it ended, if it did.
    pub outcome: Option<Outcome>,
    /// Its exit details.
    pub ending: Option<Ending>,
    /// When it ended.
    pub ended_ms: Option<u64>,
}

impl Journal {
    /// Opens (creating if needed) the journal at `path`.
    pub fn open(path: &Path) -> Result<Journal> {
        let conn = Connection::open(path)?;
        // WAL with synchronous=NORMAL: a commit survives the process being killed; only
        // losing the machine's power can lose the last commits.
        conn.execute_batch(
            "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL; PRAGMA busy_timeout=5000;",
        )?;
        conn.execute_batch(SCHEMA)?;
        let version: Option<String> = conn
            .query_row("SELECT value FROM meta WHERE key = 'schema_version'", [], |r| r.get(0))
            .optional()?;
        match version {
            None => {
                conn.execute(
                    "INSERT INTO meta (key, value) VALUES ('schema_version', ?1)",
                    params![SCHEMA_VERSION.to_string()],
                )?;
            }
            Some(v) if v == SCHEMA_VERSION.to_string() => {}
            Some(v) => {
                return Err(Error::Corrupt(format!(
                    "schema version {v}, this build reads {SCHEMA_VERSION}"
                )))
            }
        }
        Ok(Journal { conn })
    }

    /// Appends events in one transaction: all or none are durable when it returns.
    pub fn append(&mut self, events: &[Event]) -> Result<()> {
        let tx = self.conn.transaction()?;
        {
            let mut insert_job =
                tx.prepare_cached("INSERT INTO jobs (id, submitted_ms, spec) VALUES (?1, ?2, ?3)")?;
            let mut insert_event = tx.prepare_cached(
                "INSERT INTO events (kind, at_ms, job_id, idx, attempt, node, outcome, exit_code,
                 signal, started_ms, cpu_ms, peak_mem) VALUES (?1,?2,?3,?4,?5,?6,?7,?8,?9,?10,?11,?12)",
            )?;
            for event in events {
                match event {
                    Event::JobSubmitted { job_id, at_ms, spec } => {
                        insert_job.execute(params![*job_id as i64, *at_ms as i64, spec])?;
                    }
                    Event::TaskDispatched { job_id, index, attempt, node, at_ms } => {
                        insert_event.execute(params![
                            KIND_DISPATCHED, *at_ms as i64, *job_id as i64, index, attempt, node,
                            None::<i64>, None::<i64>, None::<i64>, None::<i64>, None::<i64>, None::<i64>
                        ])?;
                    }
                    Event::TaskEnded { job_id, index, attempt, outcome, ending, at_ms } => {
                        insert_event.execute(params![
                            KIND_ENDED, *at_ms as i64, *job_id as i64, index, attempt, None::<String>,
                            outcome_code(*outcome), ending.exit_code, ending.signal,
                            ending.started_ms as i64, ending.cpu_ms as i64, ending.peak_mem_bytes as i64
                        ])?;
                    }
                    Event::TaskRequeued { job_id, index, attempt, at_ms } => {
                        insert_event.execute(params![
                            KIND_REQUEUED, *at_ms as i64, *job_id as i64, index, attempt, None::<String>,
                            None::<i64>, None::<i64>, None::<i64>, None::<i64>, None::<i64>, None::<i64>
                        ])?;
                    }
                    Event::JobCancelled { job_id, index, at_ms } => {
                        insert_event.execute(params![
                            KIND_CANCELLED, *at_ms as i64, *job_id as i64, index, None::<i64>, None::<String>,
                            None::<i64>, None::<i64>, None::<i64>, None::<i64>, None::<i64>, None::<i64>
                        ])?;
                    }
                    Event::NodeDrained { node, draining, at_ms } => {
                        insert_event.execute(params![
                            KIND_DRAINED, *at_ms as i64, 0i64, None::<i64>, None::<i64>, node,
                            i64::from(*draining), None::<i64>, None::<i64>, None::<i64>, None::<i64>, None::<i64>
                        ])?;
                    }
                }
            }
        }
        tx.commit()?;
        Ok(())
    }

    /// Replays the whole journal in order: jobs first by id interleaved with their events by
    /// sequence, so that a job exists before any event names it.
    pub fn replay(&self, mut apply: impl FnMut(Event)) -> Result<()> {
        let mut jobs = self.conn.prepare("SELECT id, submitted_ms, spec FROM jobs ORDER BY id")?;
        let mut job_rows = jobs.query([])?;
        let mut events = self.conn.prepare(
            "SELECT kind, at_ms, job_id, idx, attempt, node, outcome, exit_code, signal,
             started_ms, cpu_ms, peak_mem FROM events ORDER BY seq",
        )?;
        let mut event_rows = events.query([])?;
        let mut pending_job: Option<Event> = None;
        let next_job = |rows: &mut rusqlite::Rows<'_>| -> Result<Option<Event>> {
            Ok(match rows.next()? {
                Some(r) => Some(Event::JobSubmitted {
                    job_id: r.get::<_, i64>(0)? as u64,
                    at_ms: r.get::<_, i64>(1)? as u64,
                    spec: r.get(2)?,
                }),
                None => None,
            })
        };
        pending_job = pending_job.or(next_job(&mut job_rows)?);
        while let Some(row) = event_rows.next()? {
            let event = read_event(row)?;
            let needed = event_job_id(&event);
            while let Some(Event::JobSubmitted { job_id, .. }) = &pending_job {
                if *job_id > needed {
                    break;
                }
                if let Some(job) = pending_job.take() {
                    apply(job);
                }
                pending_job = next_job(&mut job_rows)?;
            }
            apply(event);
        }
        while let Some(job) = pending_job.take() {
            apply(job);
            pending_job = next_job(&mut job_rows)?;
        }
        Ok(())
    }

    /// The sequence number of the last event journaled (0 when none).
    pub fn max_seq(&self) -> Result<u64> {
        Ok(self.conn.query_row("SELECT COALESCE(MAX(seq), 0) FROM events", [], |r| r.get::<_, i64>(0))? as u64)
    }

    /// Saves a snapshot of the state as of event `seq`, and drops older ones.
    pub fn save_snapshot(&self, seq: u64, taken_ms: u64, data: &str) -> Result<()> {
        self.conn.execute(
            "INSERT OR REPLACE INTO snapshots (seq, taken_ms, data) VALUES (?1, ?2, ?3)",
            params![seq as i64, taken_ms as i64, data],
        )?;
        self.conn.execute("DELETE FROM snapshots WHERE seq < ?1", params![seq as i64])?;
        Ok(())
    }

    /// The newest snapshot: (seq, data).
    pub fn latest_snapshot(&self) -> Result<Option<(u64, String)>> {
        Ok(self
            .conn
            .query_row("SELECT seq, data FROM snapshots ORDER BY seq DESC LIMIT 1", [], |r| {
                Ok((r.get::<_, i64>(0)? as u64, r.get(1)?))
            })
            .optional()?)
    }

    /// Every job, by id.
    pub fn replay_jobs(&self, mut apply: impl FnMut(Event)) -> Result<()> {
        let mut stmt = self.conn.prepare("SELECT id, submitted_ms, spec FROM jobs ORDER BY id")?;
        let mut rows = stmt.query([])?;
        while let Some(r) = rows.next()? {
            apply(Event::JobSubmitted { job_id: r.get::<_, i64>(0)? as u64, at_ms: r.get::<_, i64>(1)? as u64, spec: r.get(2)? });
        }
        Ok(())
    }

    /// Every event after `seq`, in order.
    pub fn replay_events_after(&self, seq: u64, mut apply: impl FnMut(Event)) -> Result<()> {
        let mut stmt = self.conn.prepare(
            "SELECT kind, at_ms, job_id, idx, attempt, node, outcome, exit_code, signal,
             started_ms, cpu_ms, peak_mem FROM events WHERE seq > ?1 ORDER BY seq",
        )?;
        let mut rows = stmt.query(params![seq as i64])?;
        while let Some(row) = rows.next()? {
            apply(read_event(row)?);
        }
        Ok(())
    }

    /// The spec of one job.
    pub fn job_spec(&self, job_id: u64) -> Result<Option<String>> {
        Ok(self
            .conn
            .query_row("SELECT spec FROM jobs WHERE id = ?1", params![job_id as i64], |r| r.get(0))
            .optional()?)
    }

    /// The last attempt of every task of a job that was ever dispatched or cancelled.
    pub fn task_records(&self, job_id: u64) -> Result<Vec<TaskRecord>> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT kind, at_ms, job_id, idx, attempt, node, outcome, exit_code, signal,
             started_ms, cpu_ms, peak_mem FROM events WHERE job_id = ?1 AND idx IS NOT NULL
             ORDER BY idx, seq",
        )?;
        let mut rows = stmt.query(params![job_id as i64])?;
        let mut out: Vec<TaskRecord> = Vec::new();
        while let Some(row) = rows.next()? {
            let event = read_event(row)?;
            let index = match &event {
                Event::TaskDispatched { index, .. }
                | Event::TaskEnded { index, .. }
                | Event::TaskRequeued { index, .. } => *index,
                Event::JobCancelled { index: Some(index), .. } => *index,
                _ => continue,
            };
            if out.last().map(|r| r.index) != Some(index) {
                out.push(TaskRecord { index, ..TaskRecord::default() });
            }
            let Some(rec) = out.last_mut() else { continue };
            match event {
                Event::TaskDispatched { attempt, node, at_ms, .. } => {
                    *rec = TaskRecord {
                        index,
                        attempt,
                        node: Some(node),
                        dispatched_ms: Some(at_ms),
                        ..TaskRecord::default()
                    };
                }
                Event::TaskEnded { attempt, outcome, ending, at_ms, .. } if attempt == rec.attempt => {
                    rec.outcome = Some(outcome);
                    rec.ending = Some(ending);
                    rec.ended_ms = Some(at_ms);
                }
                _ => {}
            }
        }
        Ok(out)
    }

    /// Creates a project; false if it exists.
    pub fn create_project(&self, p: &ProjectRow, now_ms: u64) -> Result<bool> {
        let n = self.conn.execute(
            "INSERT OR IGNORE INTO projects (name, quota_millis, borrow_millis, share, created_ms) VALUES (?1,?2,?3,?4,?5)",
            params![p.name, p.quota_millis.map(|v| v as i64), p.borrow_millis.map(|v| v as i64), p.share, now_ms as i64],
        )?;
        Ok(n > 0)
    }

    /// Every project.
    pub fn projects(&self) -> Result<Vec<ProjectRow>> {
        let mut stmt = self.conn.prepare("SELECT name, quota_millis, borrow_millis, share FROM projects ORDER BY name")?;
        let rows = stmt.query_map([], |r| {
            Ok(ProjectRow {
                name: r.get(0)?,
                quota_millis: r.get::<_, Option<i64>>(1)?.map(|v| v as u64),
                borrow_millis: r.get::<_, Option<i64>>(2)?.map(|v| v as u64),
                share: r.get(3)?,
            })
        })?;
        Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
    }

    /// Stores a new token's hash.
    pub fn insert_token(&self, t: &TokenRow, now_ms: u64) -> Result<()> {
        self.conn.execute(
            "INSERT INTO api_tokens (id, hash, project, created_ms, revoked) VALUES (?1,?2,?3,?4,0)",
            params![t.id, t.hash, t.project, now_ms as i64],
        )?;
        Ok(())
    }

    /// Revokes a token by id; false if there is none.
    pub fn revoke_token(&self, id: &str) -> Result<bool> {
        Ok(self.conn.execute("UPDATE api_tokens SET revoked = 1 WHERE id = ?1", params![id])? > 0)
    }

    /// Every token.
    pub fn tokens(&self) -> Result<Vec<TokenRow>> {
        let mut stmt = self.conn.prepare("SELECT id, hash, project, revoked FROM api_tokens ORDER BY created_ms")?;
        let rows = stmt.query_map([], |r| {
            Ok(TokenRow { id: r.get(0)?, hash: r.get(1)?, project: r.get(2)?, revoked: r.get::<_, i64>(3)? != 0 })
        })?;
        Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
    }

    /// How many events are journaled.
    pub fn n_events(&self) -> Result<u64> {
        Ok(self.conn.query_row("SELECT COUNT(*) FROM events", [], |r| r.get::<_, i64>(0))? as u64)
    }
}

fn event_job_id(event: &Event) -> u64 {
    match event {
        Event::JobSubmitted { job_id, .. }
        | Event::TaskDispatched { job_id, .. }
        | Event::TaskEnded { job_id, .. }
        | Event::TaskRequeued { job_id, .. }
        | Event::JobCancelled { job_id, .. } => *job_id,
        Event::NodeDrained { .. } => 0,
    }
}

fn read_event(row: &rusqlite::Row<'_>) -> Result<Event> {
    let kind: i64 = row.get(0)?;
    let at_ms = row.get::<_, i64>(1)? as u64;
    let job_id = row.get::<_, i64>(2)? as u64;
    let index: Option<u32> = row.get(3)?;
    let attempt: Option<u32> = row.get(4)?;
    let need = |v: Option<u32>, what: &str| v.ok_or_else(|| Error::Corrupt(format!("{what} missing")));
    Ok(match kind {
        KIND_DISPATCHED => Event::TaskDispatched {
            job_id,
            index: need(index, "index")?,
            attempt: need(attempt, "attempt")?,
            node: row.get::<_, Option<String>>(5)?.unwrap_or_default(),
            at_ms,
        },
        KIND_ENDED => Event::TaskEnded {
            job_id,
            index: need(index, "index")?,
            attempt: need(attempt, "attempt")?,
            outcome: outcome_of_code(row.get::<_, Option<i64>>(6)?.unwrap_or(0))?,
            ending: Ending {
                exit_code: row.get(7)?,
                signal: row.get(8)?,
                started_ms: row.get::<_, Option<i64>>(9)?.unwrap_or(0) as u64,
                cpu_ms: row.get::<_, Option<i64>>(10)?.unwrap_or(0) as u64,
                peak_mem_bytes: row.get::<_, Option<i64>>(11)?.unwrap_or(0) as u64,
            },
            at_ms,
        },
        KIND_REQUEUED => Event::TaskRequeued {
            job_id,
            index: need(index, "index")?,
            attempt: need(attempt, "attempt")?,
            at_ms,
        },
        KIND_CANCELLED => Event::JobCancelled { job_id, index, at_ms },
        KIND_DRAINED => Event::NodeDrained {
            node: row.get::<_, Option<String>>(5)?.unwrap_or_default(),
            draining: row.get::<_, Option<i64>>(6)?.unwrap_or(0) != 0,
            at_ms,
        },
        other => return Err(Error::Corrupt(format!("event kind {other}"))),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_path(name: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("tidepool-store-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir.join("journal.db")
    }

    #[test]
    fn replays_jobs_before_their_events_and_reads_records() {
        let path = temp_path("replay");
        let mut j = Journal::open(&path).unwrap();
        j.append(&[
            Event::JobSubmitted { job_id: 1, at_ms: 10, spec: "{}".into() },
            Event::TaskDispatched { job_id: 1, index: 5, attempt: 1, node: "n".into(), at_ms: 11 },
        ])
        .unwrap();
        j.append(&[
            Event::TaskRequeued { job_id: 1, index: 5, attempt: 1, at_ms: 12 },
            Event::JobSubmitted { job_id: 2, at_ms: 12, spec: "{}".into() },
            Event::TaskDispatched { job_id: 1, index: 5, attempt: 2, node: "m".into(), at_ms: 13 },
            Event::TaskEnded {
                job_id: 1,
                index: 5,
                attempt: 2,
                outcome: Outcome::Succeeded,
                ending: Ending { exit_code: Some(0), cpu_ms: 7, ..Ending::default() },
                at_ms: 14,
            },
            Event::JobCancelled { job_id: 2, index: None, at_ms: 15 },
        ])
        .unwrap();
        drop(j);
        let j = Journal::open(&path).unwrap();
        let mut seen = Vec::new();
        j.replay(|e| seen.push(event_job_id(&e))).unwrap();
        assert_eq!(seen, vec![1, 1, 1, 1, 1, 2, 2]);
        let recs = j.task_records(1).unwrap();
        assert_eq!(recs.len(), 1);
        assert_eq!(recs[0].attempt, 2);
        assert_eq!(recs[0].node.as_deref(), Some("m"));
        assert_eq!(recs[0].outcome, Some(Outcome::Succeeded));
        assert_eq!(recs[0].ending.map(|e| e.cpu_ms), Some(7));
        assert_eq!(j.n_events().unwrap(), 5);
        drop(j);
        let _ = std::fs::remove_dir_all(path.parent().unwrap());
    }

    #[test]
    fn a_failed_batch_writes_nothing() {
        let path = temp_path("atomic");
        let mut j = Journal::open(&path).unwrap();
        j.append(&[Event::JobSubmitted { job_id: 1, at_ms: 1, spec: "{}".into() }]).unwrap();
        let dup = j.append(&[
            Event::TaskDispatched { job_id: 1, index: 0, attempt: 1, node: "n".into(), at_ms: 2 },
            Event::JobSubmitted { job_id: 1, at_ms: 3, spec: "{}".into() },
        ]);
        assert!(dup.is_err());
        assert_eq!(j.n_events().unwrap(), 0);
        drop(j);
        let _ = std::fs::remove_dir_all(path.parent().unwrap());
    }
}
