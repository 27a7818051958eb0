//! Schema 1, read once to migrate: events as fixed columns with a `KIND_*` integer each, which
//! schema 2 replaced with one payload per event.

use crate::{payload, Ending, Error, Event, Outcome, Result};
use rusqlite::{params, Connection};

const KIND_DISPATCHED: i64 = 1;
const KIND_ENDED: i64 = 2;
const KIND_REQUEUED: i64 = 3;
const KIND_CANCELLED: i64 = 4;
const KIND_DRAINED: i64 = 5;

/// Rewrites schema 1's events as payloads, in one transaction with `schema` (the current
/// tables) created beside them; returns how many events moved.
pub(super) fn migrate(conn: &mut Connection, schema: &str) -> Result<u64> {
    let tx = conn.transaction()?;
    tx.execute_batch("DROP INDEX IF EXISTS events_by_task; ALTER TABLE events RENAME TO events_v1;")?;
    tx.execute_batch(schema)?;
    let mut moved = 0u64;
    {
        let mut read = tx.prepare(
            "SELECT seq, kind, at_ms, job_id, idx, attempt, node, outcome, exit_code, signal,
             started_ms, cpu_ms, peak_mem FROM events_v1 ORDER BY seq",
        )?;
        let mut write = tx.prepare("INSERT INTO events (seq, job_id, idx, payload) VALUES (?1, ?2, ?3, ?4)")?;
        let mut rows = read.query([])?;
        while let Some(row) = rows.next()? {
            let seq: i64 = row.get(0)?;
            let event = read_event(row)?;
            if let Some(text) = payload::encode(&event) {
                write.execute(params![seq, event.job_id() as i64, event.task_index(), text])?;
                moved += 1;
            }
        }
    }
    tx.execute_batch("DROP TABLE events_v1;")?;
    tx.commit()?;
    Ok(moved)
}

fn outcome_of_code(code: i64) -> Result<Outcome> {
    Ok(match code {
        1 => Outcome::Succeeded,
        2 => Outcome::Failed,
        3 => Outcome::Cancelled,
        4 => Outcome::Timeout,
        _ => return Err(Error::Corrupt(format!("outcome {code}"))),
    })
}

/// One schema 1 row (columns from `kind` on) as the event it recorded.
fn read_event(row: &rusqlite::Row<'_>) -> Result<Event> {
    let seq: i64 = row.get(0)?;
    let kind: i64 = row.get(1)?;
    let at_ms = row.get::<_, i64>(2)? as u64;
    let job_id = row.get::<_, i64>(3)? as u64;
    let index: Option<u32> = row.get(4)?;
    let attempt: Option<u32> = row.get(5)?;
    let need = |v: Option<u32>, what: &str| v.ok_or_else(|| Error::Corrupt(format!("event {seq}: {what} missing")));
    Ok(match kind {
        KIND_DISPATCHED => Event::TaskDispatched {
            job_id,
            index: need(index, "index")?,
            attempt: need(attempt, "attempt")?,
            node: row.get::<_, Option<String>>(6)?.unwrap_or_default(),
            at_ms,
            gpus: 0,
        },
        KIND_ENDED => Event::TaskEnded {
            job_id,
            index: need(index, "index")?,
            attempt: need(attempt, "attempt")?,
            outcome: outcome_of_code(row.get::<_, Option<i64>>(7)?.unwrap_or(0))?,
            ending: Ending {
                exit_code: row.get(8)?,
                signal: row.get(9)?,
                started_ms: row.get::<_, Option<i64>>(10)?.unwrap_or(0) as u64,
                cpu_ms: row.get::<_, Option<i64>>(11)?.unwrap_or(0) as u64,
                peak_mem_bytes: row.get::<_, Option<i64>>(12)?.unwrap_or(0) as u64,
            },
            at_ms,
            message: None,
        },
        KIND_REQUEUED => Event::TaskRequeued { job_id, index: need(index, "index")?, attempt: need(attempt, "attempt")?, at_ms },
        KIND_CANCELLED => Event::JobCancelled { job_id, index, at_ms },
        KIND_DRAINED => Event::NodeDrained {
            node: row.get::<_, Option<String>>(6)?.unwrap_or_default(),
            draining: row.get::<_, Option<i64>>(7)?.unwrap_or(0) != 0,
            at_ms,
        },
        other => return Err(Error::Corrupt(format!("event {seq}: kind {other}"))),
    })
}

#[cfg(test)]
mod tests {
    use crate::{Ending, Event, Journal, Outcome, SqliteStore};
    use rusqlite::Connection;

    /// Schema 1 as servers created it, with one event of every kind written as they wrote it.
    const SCHEMA_1_JOURNAL: &str = "
        CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
        INSERT INTO meta VALUES ('schema_version', '1');
        CREATE TABLE jobs (id INTEGER PRIMARY KEY, submitted_ms INTEGER NOT NULL, spec TEXT NOT NULL);
        CREATE TABLE events (seq INTEGER PRIMARY KEY, kind INTEGER NOT NULL, at_ms INTEGER NOT NULL,
            job_id INTEGER NOT NULL, idx INTEGER, attempt INTEGER, node TEXT, outcome INTEGER,
            exit_code INTEGER, signal INTEGER, started_ms INTEGER, cpu_ms INTEGER, peak_mem INTEGER);
        CREATE INDEX events_by_task ON events (job_id, idx);
        CREATE TABLE snapshots (seq INTEGER PRIMARY KEY, taken_ms INTEGER NOT NULL, data TEXT NOT NULL);
        CREATE TABLE projects (name TEXT PRIMARY KEY, quota_millis INTEGER, borrow_millis INTEGER,
            share INTEGER NOT NULL, created_ms INTEGER NOT NULL);
        CREATE TABLE api_tokens (id TEXT PRIMARY KEY, hash TEXT NOT NULL UNIQUE, project TEXT NOT NULL,
            created_ms INTEGER NOT NULL, revoked INTEGER NOT NULL DEFAULT 0);
        INSERT INTO jobs VALUES (1, 10, '{\"command\":[\"true\"]}');
        INSERT INTO events VALUES (1, 1, 11, 1, 5, 1, 'n1', NULL, NULL, NULL, NULL, NULL, NULL);
        INSERT INTO events VALUES (2, 3, 12, 1, 5, 1, NULL, NULL, NULL, NULL, NULL, NULL, NULL);
        INSERT INTO events VALUES (3, 1, 13, 1, 5, 2, 'n2', NULL, NULL, NULL, NULL, NULL, NULL);
        INSERT INTO events VALUES (4, 2, 14, 1, 5, 2, NULL, 4, NULL, 9, 13, 70, 4096);
        INSERT INTO events VALUES (5, 4, 15, 1, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL);
        INSERT INTO events VALUES (6, 5, 16, 0, NULL, NULL, 'n2', 1, NULL, NULL, NULL, NULL, NULL);
        INSERT INTO projects VALUES ('chem', 4000, NULL, 2, 1);
        INSERT INTO api_tokens VALUES ('t1', 'abc', 'chem', 1, 0);
    ";

    #[test]
    fn a_schema_1_journal_is_migrated_on_open_and_replays_the_same_events() {
        let dir = std::env::temp_dir().join(format!("tidepool-v1-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("journal.db");
        Connection::open(&path).unwrap().execute_batch(SCHEMA_1_JOURNAL).unwrap();

        let mut store = SqliteStore::open(&path).unwrap();
        let mut seen = Vec::new();
        store.replay(&mut |e| seen.push(e)).unwrap();
        assert_eq!(
            seen,
            vec![
                Event::JobSubmitted { job_id: 1, at_ms: 10, spec: "{\"command\":[\"true\"]}".into() },
                Event::TaskDispatched { job_id: 1, index: 5, attempt: 1, node: "n1".into(), at_ms: 11, gpus: 0 },
                Event::TaskRequeued { job_id: 1, index: 5, attempt: 1, at_ms: 12 },
                Event::TaskDispatched { job_id: 1, index: 5, attempt: 2, node: "n2".into(), at_ms: 13, gpus: 0 },
                Event::TaskEnded {
                    job_id: 1,
                    index: 5,
                    attempt: 2,
                    outcome: Outcome::Timeout,
                    ending: Ending { exit_code: None, signal: Some(9), started_ms: 13, cpu_ms: 70, peak_mem_bytes: 4096 },
                    at_ms: 14,
                    message: None,
                },
                Event::JobCancelled { job_id: 1, index: None, at_ms: 15 },
                Event::NodeDrained { node: "n2".into(), draining: true, at_ms: 16 },
            ]
        );
        assert_eq!(store.last_seq().unwrap(), 6, "sequence numbers are kept, so a snapshot's position still holds");
        // New events follow on, and the file opens again as schema 2.
        store.append(&[Event::TaskRequeued { job_id: 1, index: 5, attempt: 2, at_ms: 17 }]).unwrap();
        drop(store);
        let store = SqliteStore::open(&path).unwrap();
        assert_eq!(store.n_events().unwrap(), 7);
        assert_eq!(crate::Catalog::projects(&store).unwrap()[0].quota_millis, Some(4000));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
