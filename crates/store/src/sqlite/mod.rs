//! The SQLite backend: one file in WAL mode. Jobs are rows of their own (a submission carries
//! the spec); every other event is a row of (sequence, job, task index, payload).

mod v1;

use crate::snapshot::Snapshot;
use crate::{payload, task_records_of, Catalog, Error, Event, Journal, ProjectRow, Result, Store, TaskRecord, TokenRow};
use rusqlite::{params, Connection, OptionalExtension};
use std::path::{Path, PathBuf};

/// The schema version this build writes; older journals are migrated when opened.
pub const SCHEMA_VERSION: u32 = 3;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS jobs (
    id INTEGER PRIMARY KEY,
    submitted_ms INTEGER NOT NULL,
    spec TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS events (
    seq INTEGER PRIMARY KEY,
    job_id INTEGER NOT NULL,
    idx INTEGER,
    payload TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS events_by_task ON events (job_id, idx);
CREATE TABLE IF NOT EXISTS snapshots (
    seq INTEGER PRIMARY KEY, taken_ms INTEGER NOT NULL, data TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS projects (
    name TEXT PRIMARY KEY, quota_millis INTEGER, borrow_millis INTEGER, share INTEGER NOT NULL,
    created_ms INTEGER NOT NULL, uid INTEGER, gid INTEGER, groups TEXT NOT NULL DEFAULT ''
);
CREATE TABLE IF NOT EXISTS api_tokens (
    id TEXT PRIMARY KEY, hash TEXT NOT NULL UNIQUE, project TEXT NOT NULL,
    created_ms INTEGER NOT NULL, revoked INTEGER NOT NULL DEFAULT 0
);
";

/// The journal and catalog in one SQLite file.
pub struct SqliteStore {
    conn: Connection,
    path: PathBuf,
}

/// A unique or primary key refused the write: the same rule every backend keeps.
fn conflict(e: rusqlite::Error, what: &str) -> Error {
    match e {
        rusqlite::Error::SqliteFailure(f, _) if f.code == rusqlite::ErrorCode::ConstraintViolation => Error::Conflict(what.to_string()),
        other => Error::Sqlite(other),
    }
}

fn connect(path: &Path) -> Result<Connection> {
    let conn = Connection::open(path)?;
    // WAL with synchronous=NORMAL: a commit survives the process being killed; only losing
    // the machine's power can lose the last commits.
    conn.execute_batch("PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL; PRAGMA busy_timeout=5000;")?;
    Ok(conn)
}

impl SqliteStore {
    /// Opens (creating if needed) the store at `path`, migrating an older schema.
    pub fn open(path: &Path) -> Result<SqliteStore> {
        let mut conn = connect(path)?;
        conn.execute_batch("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);")?;
        let version: Option<String> =
            conn.query_row("SELECT value FROM meta WHERE key = 'schema_version'", [], |r| r.get(0)).optional()?;
        match version.as_deref() {
            None => {
                conn.execute_batch(SCHEMA)?;
                conn.execute("INSERT INTO meta (key, value) VALUES ('schema_version', ?1)", params![SCHEMA_VERSION.to_string()])?;
            }
            Some(old @ ("1" | "2")) => {
                if old == "1" {
                    let n = v1::migrate(&mut conn, SCHEMA)?;
                    tracing::info!(path = %path.display(), n_events = n, "migrated the journal's events from schema 1");
                }
                // Schema 3: projects gained the identity their tasks run as.
                let tx = conn.transaction()?;
                tx.execute_batch(
                    "ALTER TABLE projects ADD COLUMN uid INTEGER;
                     ALTER TABLE projects ADD COLUMN gid INTEGER;
                     ALTER TABLE projects ADD COLUMN groups TEXT NOT NULL DEFAULT '';",
                )?;
                tx.execute("UPDATE meta SET value = ?1 WHERE key = 'schema_version'", params![SCHEMA_VERSION.to_string()])?;
                tx.commit()?;
                tracing::info!(path = %path.display(), "migrated the journal from schema {old} to {SCHEMA_VERSION}");
            }
            Some(v) if v == SCHEMA_VERSION.to_string() => conn.execute_batch(SCHEMA)?,
            Some(v) => return Err(Error::Corrupt(format!("schema version {v}, this build reads {SCHEMA_VERSION} and older"))),
        }
        Ok(SqliteStore { conn, path: path.to_path_buf() })
    }

    fn read_events(&self, sql: &str, args: impl rusqlite::Params, apply: &mut dyn FnMut(Event)) -> Result<()> {
        let mut stmt = self.conn.prepare_cached(sql)?;
        let mut rows = stmt.query(args)?;
        while let Some(row) = rows.next()? {
            apply(event_of_row(row)?);
        }
        Ok(())
    }
}

/// The event of a `(seq, payload)` row, its payload read in place (no copy per row).
fn event_of_row(row: &rusqlite::Row<'_>) -> Result<Event> {
    let seq = row.get::<_, i64>(0)? as u64;
    let text = row.get_ref(1)?.as_str().map_err(|e| Error::Corrupt(format!("event {seq}: {e}")))?;
    payload::decode(seq, text)
}

fn job_of_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Event> {
    Ok(Event::JobSubmitted { job_id: r.get::<_, i64>(0)? as u64, at_ms: r.get::<_, i64>(1)? as u64, spec: r.get(2)? })
}

impl Journal for SqliteStore {
    fn append(&mut self, events: &[Event]) -> Result<()> {
        let tx = self.conn.transaction()?;
        {
            let mut insert_job = tx.prepare_cached("INSERT INTO jobs (id, submitted_ms, spec) VALUES (?1, ?2, ?3)")?;
            let mut insert_event = tx.prepare_cached("INSERT INTO events (job_id, idx, payload) VALUES (?1, ?2, ?3)")?;
            for event in events {
                match (event, payload::encode(event)) {
                    (Event::JobSubmitted { job_id, at_ms, spec }, _) => {
                        insert_job
                            .execute(params![*job_id as i64, *at_ms as i64, spec])
                            .map_err(|e| conflict(e, &format!("job {job_id} is already journaled")))?;
                    }
                    (_, Some(text)) => {
                        insert_event.execute(params![event.job_id() as i64, event.task_index(), text])?;
                    }
                    (_, None) => {}
                }
            }
        }
        tx.commit()?;
        Ok(())
    }

    fn replay(&self, apply: &mut dyn FnMut(Event)) -> Result<()> {
        // Streams both tables side by side, so a journal of millions of jobs is never held whole.
        let mut jobs = self.conn.prepare("SELECT id, submitted_ms, spec FROM jobs ORDER BY id")?;
        let mut job_rows = jobs.query([])?;
        let mut next_job = || -> Result<Option<Event>> { Ok(job_rows.next()?.map(job_of_row).transpose()?) };
        let mut pending_job = next_job()?;
        let mut stmt = self.conn.prepare("SELECT seq, payload FROM events ORDER BY seq")?;
        let mut rows = stmt.query([])?;
        while let Some(row) = rows.next()? {
            let event = event_of_row(row)?;
            while let Some(job) = pending_job.take_if(|job| job.job_id() <= event.job_id()) {
                apply(job);
                pending_job = next_job()?;
            }
            apply(event);
        }
        while let Some(job) = pending_job.take() {
            apply(job);
            pending_job = next_job()?;
        }
        Ok(())
    }

    fn replay_jobs(&self, apply: &mut dyn FnMut(Event)) -> Result<()> {
        let mut stmt = self.conn.prepare("SELECT id, submitted_ms, spec FROM jobs ORDER BY id")?;
        let mut rows = stmt.query([])?;
        while let Some(r) = rows.next()? {
            apply(job_of_row(r)?);
        }
        Ok(())
    }

    fn replay_events_after(&self, seq: u64, apply: &mut dyn FnMut(Event)) -> Result<()> {
        self.read_events("SELECT seq, payload FROM events WHERE seq > ?1 ORDER BY seq", params![seq as i64], apply)
    }

    fn last_seq(&self) -> Result<u64> {
        Ok(self.conn.query_row("SELECT COALESCE(MAX(seq), 0) FROM events", [], |r| r.get::<_, i64>(0))? as u64)
    }

    fn n_events(&self) -> Result<u64> {
        Ok(self.conn.query_row("SELECT COUNT(*) FROM events", [], |r| r.get::<_, i64>(0))? as u64)
    }

    fn save_snapshot(&mut self, seq: u64, taken_ms: u64, snapshot: &Snapshot) -> Result<()> {
        let tx = self.conn.transaction()?;
        tx.execute(
            "INSERT OR REPLACE INTO snapshots (seq, taken_ms, data) VALUES (?1, ?2, ?3)",
            params![seq as i64, taken_ms as i64, snapshot.encode()],
        )?;
        tx.execute("DELETE FROM snapshots WHERE seq < ?1", params![seq as i64])?;
        tx.commit()?;
        Ok(())
    }

    fn latest_snapshot(&self) -> Result<Option<(u64, Snapshot)>> {
        let row: Option<(u64, String)> = self
            .conn
            .query_row("SELECT seq, data FROM snapshots ORDER BY seq DESC LIMIT 1", [], |r| Ok((r.get::<_, i64>(0)? as u64, r.get(1)?)))
            .optional()?;
        row.map(|(seq, text)| Ok((seq, Snapshot::decode(seq, &text)?))).transpose()
    }

    fn job_submission(&self, job_id: u64) -> Result<Option<(u64, String)>> {
        let row = self
            .conn
            .query_row("SELECT submitted_ms, spec FROM jobs WHERE id = ?1", params![job_id as i64], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?)))
            .optional()?;
        Ok(row.map(|(at, spec)| (at as u64, spec)))
    }

    fn jobs_page(&self, after_id: u64, since_ms: u64, limit: usize) -> Result<Vec<(u64, u64, String)>> {
        let mut statement = self.conn.prepare_cached("SELECT id, submitted_ms, spec FROM jobs WHERE id > ?1 AND submitted_ms >= ?2 ORDER BY id LIMIT ?3")?;
        let rows = statement.query_map(params![after_id.min(i64::MAX as u64) as i64, since_ms.min(i64::MAX as u64) as i64, limit as i64], |r| {
            Ok((r.get::<_, i64>(0)? as u64, r.get::<_, i64>(1)? as u64, r.get::<_, String>(2)?))
        })?;
        Ok(rows.collect::<std::result::Result<_, _>>()?)
    }

    fn last_job(&self) -> Result<Option<(u64, String)>> {
        let row = self
            .conn
            .query_row("SELECT id, spec FROM jobs ORDER BY id DESC LIMIT 1", [], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?)))
            .optional()?;
        Ok(row.map(|(id, spec)| (id as u64, spec)))
    }

    fn task_records(&self, job_id: u64) -> Result<Vec<TaskRecord>> {
        let mut events = Vec::new();
        self.read_events(
            "SELECT seq, payload FROM events WHERE job_id = ?1 AND idx IS NOT NULL ORDER BY idx, seq",
            params![job_id as i64],
            &mut |event| events.push(event),
        )?;
        Ok(task_records_of(events))
    }
}

impl Catalog for SqliteStore {
    fn create_project(&mut self, p: &ProjectRow, now_ms: u64) -> Result<bool> {
        let n = self.conn.execute(
            "INSERT OR IGNORE INTO projects (name, quota_millis, borrow_millis, share, created_ms, uid, gid, groups) VALUES (?1,?2,?3,?4,?5,?6,?7,?8)",
            params![
                p.name,
                p.quota_millis.map(|v| v as i64),
                p.borrow_millis.map(|v| v as i64),
                p.share,
                now_ms as i64,
                p.uid,
                p.gid,
                p.groups.iter().map(u32::to_string).collect::<Vec<_>>().join(",")
            ],
        )?;
        Ok(n > 0)
    }

    fn projects(&self) -> Result<Vec<ProjectRow>> {
        let mut stmt = self.conn.prepare("SELECT name, quota_millis, borrow_millis, share, uid, gid, groups FROM projects ORDER BY name")?;
        let rows = stmt.query_map([], |r| {
            Ok((
                ProjectRow {
                    name: r.get(0)?,
                    quota_millis: r.get::<_, Option<i64>>(1)?.map(|v| v as u64),
                    borrow_millis: r.get::<_, Option<i64>>(2)?.map(|v| v as u64),
                    share: r.get(3)?,
                    uid: r.get(4)?,
                    gid: r.get(5)?,
                    groups: Vec::new(),
                },
                r.get::<_, String>(6)?,
            ))
        })?;
        let mut projects = Vec::new();
        for row in rows {
            let (mut project, groups) = row?;
            project.groups = groups
                .split(',')
                .filter(|g| !g.is_empty())
                .map(|g| g.parse::<u32>().map_err(|_| Error::Corrupt(format!("project {}: group {g}", project.name))))
                .collect::<Result<Vec<u32>>>()?;
            projects.push(project);
        }
        Ok(projects)
    }

    fn insert_token(&mut self, t: &TokenRow, now_ms: u64) -> Result<()> {
        self.conn
            .execute(
                "INSERT INTO api_tokens (id, hash, project, created_ms, revoked) VALUES (?1,?2,?3,?4,?5)",
                params![t.id, t.hash, t.project, now_ms as i64, i64::from(t.revoked)],
            )
            .map_err(|e| conflict(e, &format!("token {} is already stored", t.id)))?;
        Ok(())
    }

    fn revoke_token(&mut self, id: &str) -> Result<bool> {
        Ok(self.conn.execute("UPDATE api_tokens SET revoked = 1 WHERE id = ?1", params![id])? > 0)
    }

    fn tokens(&self) -> Result<Vec<TokenRow>> {
        let mut stmt = self.conn.prepare("SELECT id, hash, project, revoked FROM api_tokens ORDER BY created_ms, rowid")?;
        let rows = stmt.query_map([], |r| {
            Ok(TokenRow { id: r.get(0)?, hash: r.get(1)?, project: r.get(2)?, revoked: r.get::<_, i64>(3)? != 0 })
        })?;
        Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
    }
}

impl Store for SqliteStore {
    fn reopen(&self) -> Result<Box<dyn Store>> {
        Ok(Box::new(SqliteStore::open(&self.path)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_path(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("tidepool-sqlite-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir.join("journal.db")
    }

    #[test]
    fn what_was_appended_survives_closing_the_file() {
        let path = temp_path("reopen");
        let mut store = SqliteStore::open(&path).unwrap();
        store.append(&[Event::JobSubmitted { job_id: 1, at_ms: 1, spec: "{}".into() }]).unwrap();
        store.append(&[Event::TaskRequeued { job_id: 1, index: 0, attempt: 1, at_ms: 2 }]).unwrap();
        drop(store);
        let store = SqliteStore::open(&path).unwrap();
        let mut seen = Vec::new();
        store.replay(&mut |e| seen.push(e)).unwrap();
        assert_eq!(seen.len(), 2);
        let _ = std::fs::remove_dir_all(path.parent().unwrap());
    }

    #[test]
    fn a_damaged_snapshot_row_is_reported_as_such() {
        let path = temp_path("snapshot");
        let store = SqliteStore::open(&path).unwrap();
        store.conn.execute("INSERT INTO snapshots (seq, taken_ms, data) VALUES (5, 1, '{\"version\":1,\"jobs\":[{\"id\":\"x\"}]}')", []).unwrap();
        match store.latest_snapshot() {
            Err(Error::CorruptSnapshot { seq: 5, .. }) => {}
            other => panic!("{other:?}"),
        }
        let _ = std::fs::remove_dir_all(path.parent().unwrap());
    }

    #[test]
    fn a_journal_of_a_newer_schema_is_refused() {
        let path = temp_path("newer");
        drop(SqliteStore::open(&path).unwrap());
        Connection::open(&path).unwrap().execute("UPDATE meta SET value = '99' WHERE key = 'schema_version'", []).unwrap();
        let err = SqliteStore::open(&path).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(err.contains("schema version 99"), "{err}");
        let _ = std::fs::remove_dir_all(path.parent().unwrap());
    }
}
