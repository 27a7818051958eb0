//! The gateway's files and batches, in their own SQLite file. Batch objects are kept as the
//! JSON clients see; each finished request of a batch is a row, so a restart resumes where it
//! stopped.

use crate::Result;
use rusqlite::{params, Connection, OptionalExtension};
use std::path::Path;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS files (
    id TEXT PRIMARY KEY, tenant TEXT NOT NULL, purpose TEXT NOT NULL, filename TEXT NOT NULL,
    bytes INTEGER NOT NULL, created_at INTEGER NOT NULL, content BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS batches (
    id TEXT PRIMARY KEY, tenant TEXT NOT NULL, created_at INTEGER NOT NULL, object TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS batch_results (
    batch_id TEXT NOT NULL, line INTEGER NOT NULL, ok INTEGER NOT NULL, body TEXT NOT NULL,
    PRIMARY KEY (batch_id, line)
);
";

/// A stored file's description.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileMeta {
    /// `file-...`.
    pub id: String,
    /// Owner.
    pub tenant: String,
    /// `batch`, `batch_output`, ...
    pub purpose: String,
    /// Name given at upload.
    pub filename: String,
    /// Size.
    pub bytes: u64,
    /// Seconds since the epoch.
    pub created_at: u64,
}

/// The files-and-batches store.
pub struct BatchStore {
    conn: Connection,
}

impl BatchStore {
    /// Opens (creating) the store at `path`.
    pub fn open(path: &Path) -> Result<BatchStore> {
        let conn = Connection::open(path)?;
        conn.execute_batch("PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL; PRAGMA busy_timeout=5000;")?;
        conn.execute_batch(SCHEMA)?;
        Ok(BatchStore { conn })
    }

    /// Stores a file.
    pub fn put_file(&self, meta: &FileMeta, content: &[u8]) -> Result<()> {
        self.conn.execute(
            "INSERT INTO files (id, tenant, purpose, filename, bytes, created_at, content) VALUES (?1,?2,?3,?4,?5,?6,?7)",
            params![meta.id, meta.tenant, meta.purpose, meta.filename, meta.bytes as i64, meta.created_at as i64, content],
        )?;
        Ok(())
    }

    fn meta(row: &rusqlite::Row<'_>) -> rusqlite::Result<FileMeta> {
        Ok(FileMeta {
            id: row.get(0)?,
            tenant: row.get(1)?,
            purpose: row.get(2)?,
            filename: row.get(3)?,
            bytes: row.get::<_, i64>(4)? as u64,
            created_at: row.get::<_, i64>(5)? as u64,
        })
    }

    /// A file's description.
    pub fn file(&self, id: &str) -> Result<Option<FileMeta>> {
        Ok(self
            .conn
            .query_row("SELECT id, tenant, purpose, filename, bytes, created_at FROM files WHERE id = ?1", params![id], Self::meta)
            .optional()?)
    }

    /// A file's content.
    pub fn file_content(&self, id: &str) -> Result<Option<Vec<u8>>> {
        Ok(self.conn.query_row("SELECT content FROM files WHERE id = ?1", params![id], |r| r.get(0)).optional()?)
    }

    /// A tenant's files, newest first.
    pub fn files(&self, tenant: &str) -> Result<Vec<FileMeta>> {
        let mut stmt = self.conn.prepare(
            "SELECT id, tenant, purpose, filename, bytes, created_at FROM files WHERE tenant = ?1 ORDER BY created_at DESC, rowid DESC",
        )?;
        let rows = stmt.query_map(params![tenant], Self::meta)?;
        Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
    }

    /// Deletes a file.
    pub fn delete_file(&self, id: &str) -> Result<bool> {
        Ok(self.conn.execute("DELETE FROM files WHERE id = ?1", params![id])? > 0)
    }

    /// Creates or replaces a batch's object.
    pub fn put_batch(&self, id: &str, tenant: &str, created_at: u64, object: &str) -> Result<()> {
        self.conn.execute(
            "INSERT INTO batches (id, tenant, created_at, object) VALUES (?1,?2,?3,?4)
             ON CONFLICT(id) DO UPDATE SET object = excluded.object",
            params![id, tenant, created_at as i64, object],
        )?;
        Ok(())
    }

    /// A batch: (tenant, object).
    pub fn batch(&self, id: &str) -> Result<Option<(String, String)>> {
        Ok(self
            .conn
            .query_row("SELECT tenant, object FROM batches WHERE id = ?1", params![id], |r| Ok((r.get(0)?, r.get(1)?)))
            .optional()?)
    }

    /// A tenant's batches, newest first.
    pub fn batches(&self, tenant: &str) -> Result<Vec<String>> {
        let mut stmt = self.conn.prepare("SELECT object FROM batches WHERE tenant = ?1 ORDER BY created_at DESC, rowid DESC")?;
        let rows = stmt.query_map(params![tenant], |r| r.get(0))?;
        Ok(rows.collect::<rusqlite::Result<Vec<String>>>()?)
    }

    /// Every batch: (id, tenant, object).
    pub fn all_batches(&self) -> Result<Vec<(String, String, String)>> {
        let mut stmt = self.conn.prepare("SELECT id, tenant, object FROM batches ORDER BY created_at, rowid")?;
        let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
        Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
    }

    /// Records one request's result (first write wins: a result is recorded once).
    pub fn put_result(&self, batch_id: &str, line: u64, ok: bool, body: &str) -> Result<()> {
        self.conn.execute(
            "INSERT OR IGNORE INTO batch_results (batch_id, line, ok, body) VALUES (?1,?2,?3,?4)",
            params![batch_id, line as i64, ok, body],
        )?;
        Ok(())
    }

    /// A batch's results so far: (line, ok, body), by line.
    pub fn results(&self, batch_id: &str) -> Result<Vec<(u64, bool, String)>> {
        let mut stmt = self.conn.prepare("SELECT line, ok, body FROM batch_results WHERE batch_id = ?1 ORDER BY line")?;
        let rows = stmt.query_map(params![batch_id], |r| Ok((r.get::<_, i64>(0)? as u64, r.get(1)?, r.get(2)?)))?;
        Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_batches_and_results_round_trip() {
        let dir = std::env::temp_dir().join(format!("tidepool-batches-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let s = BatchStore::open(&dir.join("g.db")).unwrap();
        let meta = FileMeta { id: "file-1".into(), tenant: "t".into(), purpose: "batch".into(), filename: "in.jsonl".into(), bytes: 3, created_at: 1 };
        s.put_file(&meta, b"abc").unwrap();
        assert_eq!(s.file("file-1").unwrap(), Some(meta));
        assert_eq!(s.file_content("file-1").unwrap().unwrap(), b"abc");
        s.put_batch("batch_1", "t", 1, "{\"status\":\"validating\"}").unwrap();
        s.put_batch("batch_1", "t", 1, "{\"status\":\"completed\"}").unwrap();
        assert_eq!(s.batch("batch_1").unwrap().unwrap().1, "{\"status\":\"completed\"}");
        // Created in the same second, listed newest first all the same, even once updated,
        // whatever their random ids.
        s.put_batch("batch_0", "t", 1, "second").unwrap();
        s.put_batch("batch_1", "t", 1, "first, updated").unwrap();
        assert_eq!(s.batches("t").unwrap(), ["second", "first, updated"]);
        s.put_result("batch_1", 0, true, "a").unwrap();
        s.put_result("batch_1", 0, false, "b").unwrap();
        assert_eq!(s.results("batch_1").unwrap(), vec![(0, true, "a".to_string())]);
        assert!(s.delete_file("file-1").unwrap());
        drop(s);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
