//! The durable store: the journal of jobs and task events, its snapshots, and the catalog of
//! projects and tokens, behind traits so that a backend is a choice (SQLite today).
//!
//! **Invariant**: only this crate writes SQL. A job is one row whatever its array size; task
//! events are appended as tasks are dispatched and end, so a million-task array costs one row
//! at submission. An event is one versioned payload (`payload.rs`), so a new kind of event needs
//! no new column; a snapshot is one versioned document (`snapshot.rs`).

pub mod batches;
pub mod conformance;
pub mod memory;
mod payload;
pub mod snapshot;
pub mod sqlite;

pub use memory::MemoryStore;
pub use snapshot::{JobTasks, RunningAttempt, Snapshot};
pub use sqlite::SqliteStore;

/// What can go wrong with the store.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// SQLite refused.
    #[error("journal: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// A row could not be read back.
    #[error("journal: corrupt row: {0}")]
    Corrupt(String),
    /// The newest snapshot cannot be read: the caller replays the whole journal instead.
    #[error("snapshot {seq} cannot be read: {reason}")]
    CorruptSnapshot {
        /// The event sequence number the snapshot was taken at.
        seq: u64,
        /// What is wrong with it.
        reason: String,
    },
    /// A write broke a rule every backend keeps (a job id used twice, a token hash reused).
    #[error("journal: {0}")]
    Conflict(String),
}

/// This crate's result.
pub type Result<T> = std::result::Result<T, Error>;

/// How an attempt ended: the core's vocabulary, journaled by name.
pub use tidepool_core::TaskOutcome as Outcome;

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
    TaskDispatched { job_id: u64, index: u32, attempt: u32, node: String, at_ms: u64, gpus: u64 },
    /// An attempt ended.
    TaskEnded { job_id: u64, index: u32, attempt: u32, outcome: Outcome, ending: Ending, at_ms: u64, message: Option<String> },
    /// An attempt was lost by its node and the task went back to the queue.
    TaskRequeued { job_id: u64, index: u32, attempt: u32, at_ms: u64 },
    /// A user cancelled a job (`index` None) or one task.
    JobCancelled { job_id: u64, index: Option<u32>, at_ms: u64 },
    /// A node was drained by hand, or put back.
    NodeDrained { node: String, draining: bool, at_ms: u64 },
}

impl Event {
    /// The job the event is about (0 for a node's event).
    pub fn job_id(&self) -> u64 {
        match self {
            Event::JobSubmitted { job_id, .. }
            | Event::TaskDispatched { job_id, .. }
            | Event::TaskEnded { job_id, .. }
            | Event::TaskRequeued { job_id, .. }
            | Event::JobCancelled { job_id, .. } => *job_id,
            Event::NodeDrained { .. } => 0,
        }
    }

    /// The array index of the task the event is about, if it is about one task.
    pub fn task_index(&self) -> Option<u32> {
        match self {
            Event::TaskDispatched { index, .. } | Event::TaskEnded { index, .. } | Event::TaskRequeued { index, .. } => Some(*index),
            Event::JobCancelled { index, .. } => *index,
            Event::JobSubmitted { .. } | Event::NodeDrained { .. } => None,
        }
    }
}

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
    /// The user id its tasks run as.
    pub uid: Option<u32>,
    /// The group id its tasks run as.
    pub gid: Option<u32>,
    /// Supplementary groups of its tasks.
    pub groups: Vec<u32>,
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
    /// Why it could not start, when it could not (a path its identity may not use).
    pub message: Option<String>,
}

/// The journal: events appended in batches, read back in order, and snapshots of the state
/// they built.
pub trait Journal: Send {
    /// Appends events in one transaction: all or none are durable when it returns. A job id
    /// submitted twice is a `Conflict`, and nothing of the batch is kept.
    fn append(&mut self, events: &[Event]) -> Result<()>;

    /// Every job's submission, by id.
    fn replay_jobs(&self, apply: &mut dyn FnMut(Event)) -> Result<()>;

    /// Every event after sequence number `seq` (0: all), in order; submissions excluded.
    fn replay_events_after(&self, seq: u64, apply: &mut dyn FnMut(Event)) -> Result<()>;

    /// The sequence number of the last event journaled (0 when none).
    fn last_seq(&self) -> Result<u64>;

    /// How many task and node events are journaled.
    fn n_events(&self) -> Result<u64>;

    /// Saves a snapshot of the state as of event `seq`, and drops older ones.
    fn save_snapshot(&mut self, seq: u64, taken_ms: u64, snapshot: &Snapshot) -> Result<()>;

    /// The newest snapshot with its sequence number; `CorruptSnapshot` when it cannot be read.
    fn latest_snapshot(&self) -> Result<Option<(u64, Snapshot)>>;

    /// The spec of one job.
    fn job_spec(&self, job_id: u64) -> Result<Option<String>> {
        Ok(self.job_submission(job_id)?.map(|(_, spec)| spec))
    }

    /// When one job was submitted, and its spec.
    fn job_submission(&self, job_id: u64) -> Result<Option<(u64, String)>>;

    /// Up to `limit` jobs of id above `after_id` submitted at or after `since_ms`, by id:
    /// (id, submitted ms, spec). Pages of history, read by key.
    fn jobs_page(&self, after_id: u64, since_ms: u64, limit: usize) -> Result<Vec<(u64, u64, String)>>;

    /// The job of the highest id ever submitted, with its spec: where new ids start, whatever
    /// the server still holds in memory.
    fn last_job(&self) -> Result<Option<(u64, String)>>;

    /// The last attempt of every task of a job that was ever dispatched or cancelled, by index.
    fn task_records(&self, job_id: u64) -> Result<Vec<TaskRecord>>;

    /// Replays the whole journal in order: jobs by id interleaved with events by sequence, so
    /// that a job exists before any event names it.
    fn replay(&self, apply: &mut dyn FnMut(Event)) -> Result<()> {
        let mut jobs = Vec::new();
        self.replay_jobs(&mut |job| jobs.push(job))?;
        let mut jobs = jobs.into_iter().peekable();
        self.replay_events_after(0, &mut |event| {
            let needed = event.job_id();
            while let Some(job) = jobs.next_if(|job| job.job_id() <= needed) {
                apply(job);
            }
            apply(event);
        })?;
        jobs.for_each(apply);
        Ok(())
    }
}

/// The catalog: projects and their tokens.
pub trait Catalog: Send {
    /// Creates a project; false if it exists.
    fn create_project(&mut self, project: &ProjectRow, now_ms: u64) -> Result<bool>;

    /// Every project, by name.
    fn projects(&self) -> Result<Vec<ProjectRow>>;

    /// Stores a new token's hash; a hash or id stored before is a `Conflict`.
    fn insert_token(&mut self, token: &TokenRow, now_ms: u64) -> Result<()>;

    /// Revokes a token by id; false if there is none.
    fn revoke_token(&mut self, id: &str) -> Result<bool>;

    /// Every token, oldest first.
    fn tokens(&self) -> Result<Vec<TokenRow>>;
}

/// A backend: journal and catalog of one data store.
pub trait Store: Journal + Catalog {
    /// Another handle on the same store, for another thread (the server's group-commit writer).
    fn reopen(&self) -> Result<Box<dyn Store>>;
}

/// Builds each task's last-attempt record from its events, in index then journal order.
pub(crate) fn task_records_of(events: impl IntoIterator<Item = Event>) -> Vec<TaskRecord> {
    let mut by_index: std::collections::BTreeMap<u32, TaskRecord> = std::collections::BTreeMap::new();
    for event in events {
        let Some(index) = event.task_index() else { continue };
        let rec = by_index.entry(index).or_insert_with(|| TaskRecord { index, ..TaskRecord::default() });
        match event {
            Event::TaskDispatched { attempt, node, at_ms, .. } => {
                *rec = TaskRecord { index, attempt, node: Some(node), dispatched_ms: Some(at_ms), ..TaskRecord::default() };
            }
            Event::TaskEnded { attempt, outcome, ending, at_ms, message, .. } if attempt == rec.attempt => {
                rec.outcome = Some(outcome);
                rec.ending = Some(ending);
                rec.ended_ms = Some(at_ms);
                rec.message = message;
            }
            _ => {}
        }
    }
    by_index.into_values().collect()
}
