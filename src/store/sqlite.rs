//! The embedded SQLite store (WAL journal, one connection behind a mutex).

use std::path::Path;
use std::sync::Mutex;

use rusqlite::{params, Connection, ErrorCode, OptionalExtension};

use super::{DlqEntry, ExecutionRecord, JobVersion, RecordFilter, Store, StoreError};

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY);
CREATE TABLE IF NOT EXISTS execution_records (
    execution_id TEXT PRIMARY KEY,
    status TEXT NOT NULL,
    job_type TEXT NOT NULL,
    created_us INTEGER NOT NULL,
    idempotency_key TEXT UNIQUE,
    data TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS execution_records_created ON execution_records(created_us DESC);
CREATE INDEX IF NOT EXISTS execution_records_status ON execution_records(status);
CREATE TABLE IF NOT EXISTS job_versions (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    job_type TEXT NOT NULL,
    version TEXT NOT NULL,
    digest TEXT NOT NULL,
    image_ref TEXT NOT NULL,
    built_by TEXT NOT NULL,
    created_us INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS dead_letter_queue (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    job_id TEXT NOT NULL,
    job_data TEXT NOT NULL,
    error_type TEXT NOT NULL,
    error_message TEXT,
    retry_count INTEGER NOT NULL,
    created_us INTEGER NOT NULL,
    client_ip TEXT,
    correlation_id TEXT
);
INSERT OR IGNORE INTO schema_migrations(version) VALUES (1);
";

/// SQLite implementation of [`Store`].
pub struct SqliteStore {
    conn: Mutex<Connection>,
}

fn conflict(e: rusqlite::Error) -> StoreError {
    match &e {
        rusqlite::Error::SqliteFailure(f, _) if f.code == ErrorCode::ConstraintViolation => {
            StoreError::Conflict
        }
        _ => StoreError::Db(e),
    }
}

impl SqliteStore {
    /// Opens (creating) the database file and migrates the schema.
    pub fn open(path: &Path) -> Result<SqliteStore, StoreError> {
        if let Some(d) = path.parent() {
            std::fs::create_dir_all(d)?;
        }
        let conn = Connection::open(path)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        // FULL: every commit flushes the WAL, so a record the API has answered for (an
        // accepted job, a result) survives a power loss; NORMAL could roll the last ones
        // back. One fdatasync per commit, about 0.25 ms on this VM's disk.
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.busy_timeout(std::time::Duration::from_secs(10))?;
        conn.execute_batch(SCHEMA)?;
        Ok(SqliteStore {
            conn: Mutex::new(conn),
        })
    }

    fn db(&self) -> std::sync::MutexGuard<'_, Connection> {
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn one(&self, sql: &str, key: &str) -> Result<Option<ExecutionRecord>, StoreError> {
        let data: Option<String> = self.db().query_row(sql, [key], |r| r.get(0)).optional()?;
        data.map(decode).transpose()
    }
}

fn decode(data: String) -> Result<ExecutionRecord, StoreError> {
    Ok(serde_json::from_str(&data)?)
}

impl Store for SqliteStore {
    fn insert(&self, r: &ExecutionRecord) -> Result<(), StoreError> {
        let data = serde_json::to_string(r)?;
        self.db()
            .execute(
                "INSERT INTO execution_records(execution_id, status, job_type, created_us, idempotency_key, data) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![r.execution_id, r.status.as_str(), r.job_type, r.created_us, r.idempotency_key, data],
            )
            .map_err(conflict)?;
        Ok(())
    }

    fn update(&self, r: &ExecutionRecord) -> Result<bool, StoreError> {
        let data = serde_json::to_string(r)?;
        let db = self.db();
        let n = db.execute(
            "UPDATE execution_records SET status = ?2, job_type = ?3, data = ?4, idempotency_key = ?5 WHERE execution_id = ?1 AND status IN ('queued', 'running')",
            params![r.execution_id, r.status.as_str(), r.job_type, data, r.idempotency_key],
        )?;
        if n > 0 {
            return Ok(true);
        }
        let n = db.execute(
            "INSERT OR IGNORE INTO execution_records(execution_id, status, job_type, created_us, idempotency_key, data) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![r.execution_id, r.status.as_str(), r.job_type, r.created_us, r.idempotency_key, data],
        )?;
        Ok(n > 0)
    }

    fn get(&self, id: &str) -> Result<Option<ExecutionRecord>, StoreError> {
        self.one(
            "SELECT data FROM execution_records WHERE execution_id = ?1",
            id,
        )
    }

    fn find_by_idempotency_key(&self, key: &str) -> Result<Option<ExecutionRecord>, StoreError> {
        self.one(
            "SELECT data FROM execution_records WHERE idempotency_key = ?1",
            key,
        )
    }

    fn list(
        &self,
        f: &RecordFilter,
        limit: u32,
        offset: u64,
    ) -> Result<(Vec<ExecutionRecord>, bool), StoreError> {
        let db = self.db();
        let mut stmt = db.prepare(
            "SELECT data FROM execution_records WHERE (?1 IS NULL OR status = ?1) AND (?2 IS NULL OR job_type = ?2) ORDER BY created_us DESC, rowid DESC LIMIT ?3 OFFSET ?4",
        )?;
        let rows = stmt.query_map(
            params![f.status, f.job_type, i64::from(limit) + 1, offset as i64],
            |r| r.get::<_, String>(0),
        )?;
        let mut out = Vec::new();
        for row in rows {
            out.push(decode(row?)?);
        }
        let more = out.len() > limit as usize;
        out.truncate(limit as usize);
        Ok((out, more))
    }

    fn unfinished(&self) -> Result<Vec<ExecutionRecord>, StoreError> {
        let db = self.db();
        let mut stmt = db.prepare(
            "SELECT data FROM execution_records WHERE status IN ('queued', 'running') ORDER BY created_us ASC, rowid ASC",
        )?;
        let rows = stmt.query_map([], |r| r.get::<_, String>(0))?;
        let mut out = Vec::new();
        for row in rows {
            out.push(decode(row?)?);
        }
        Ok(out)
    }

    fn purge_records(&self, before_us: i64) -> Result<Vec<String>, StoreError> {
        let db = self.db();
        let ids: Vec<String> = {
            let mut stmt =
                db.prepare("SELECT execution_id FROM execution_records WHERE created_us < ?1")?;
            let rows = stmt.query_map([before_us], |r| r.get::<_, String>(0))?;
            rows.collect::<Result<_, _>>()?
        };
        db.execute(
            "DELETE FROM execution_records WHERE created_us < ?1",
            [before_us],
        )?;
        Ok(ids)
    }

    fn add_job_version(&self, v: &JobVersion) -> Result<(), StoreError> {
        self.db().execute(
            "INSERT INTO job_versions(job_type, version, digest, image_ref, built_by, created_us) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![v.job_type, v.version, v.digest, v.image_ref, v.built_by, v.created_us],
        )?;
        Ok(())
    }

    fn dlq_add(&self, e: &DlqEntry) -> Result<i64, StoreError> {
        let db = self.db();
        db.execute(
            "INSERT INTO dead_letter_queue(job_id, job_data, error_type, error_message, retry_count, created_us, client_ip, correlation_id) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            params![
                e.job_id,
                serde_json::to_string(&e.job_data)?,
                e.error_type,
                e.error_message,
                e.retry_count,
                e.created_us,
                e.client_ip,
                e.correlation_id
            ],
        )?;
        Ok(db.last_insert_rowid())
    }

    fn dlq_list(
        &self,
        error_type: Option<&str>,
        limit: u32,
        offset: u64,
    ) -> Result<(Vec<DlqEntry>, bool), StoreError> {
        let db = self.db();
        let mut stmt = db.prepare(
            "SELECT id, job_id, job_data, error_type, error_message, retry_count, created_us, client_ip, correlation_id FROM dead_letter_queue WHERE (?1 IS NULL OR error_type = ?1) ORDER BY created_us DESC, id DESC LIMIT ?2 OFFSET ?3",
        )?;
        let rows = stmt.query_map(
            params![error_type, i64::from(limit) + 1, offset as i64],
            |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, String>(2)?,
                    r.get::<_, String>(3)?,
                    r.get::<_, Option<String>>(4)?,
                    r.get::<_, i64>(5)?,
                    r.get::<_, i64>(6)?,
                    r.get::<_, Option<String>>(7)?,
                    r.get::<_, Option<String>>(8)?,
                ))
            },
        )?;
        let mut out = Vec::new();
        for row in rows {
            let (id, job_id, data, et, em, rc, cu, ip, cid) = row?;
            out.push(DlqEntry {
                id,
                job_id,
                job_data: serde_json::from_str(&data)?,
                error_type: et,
                error_message: em,
                retry_count: rc,
                created_us: cu,
                client_ip: ip,
                correlation_id: cid,
            });
        }
        let more = out.len() > limit as usize;
        out.truncate(limit as usize);
        Ok((out, more))
    }

    fn dlq_stats(&self) -> Result<Vec<(String, i64)>, StoreError> {
        let db = self.db();
        let mut stmt = db.prepare(
            "SELECT error_type, COUNT(*) AS n FROM dead_letter_queue GROUP BY error_type ORDER BY n DESC, error_type ASC",
        )?;
        let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn dlq_delete(&self, id: i64) -> Result<bool, StoreError> {
        Ok(self
            .db()
            .execute("DELETE FROM dead_letter_queue WHERE id = ?1", [id])?
            > 0)
    }

    fn purge_dlq(&self, before_us: i64) -> Result<usize, StoreError> {
        Ok(self.db().execute(
            "DELETE FROM dead_letter_queue WHERE created_us < ?1",
            [before_us],
        )?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::exec::record::Status;

    /// Commits are durable: WAL with `synchronous=FULL` (2), read back from SQLite itself.
    #[test]
    fn commits_are_flushed_to_disk() {
        let dir = tempfile::tempdir().unwrap();
        let s = SqliteStore::open(&dir.path().join("t.db")).unwrap();
        let db = s.db();
        let mode: String = db
            .query_row("PRAGMA journal_mode", [], |r| r.get(0))
            .unwrap();
        let sync: i64 = db
            .query_row("PRAGMA synchronous", [], |r| r.get(0))
            .unwrap();
        assert_eq!((mode.as_str(), sync), ("wal", 2));
    }

    #[test]
    fn terminal_records_are_never_overwritten_and_keys_are_unique() {
        let dir = tempfile::tempdir().unwrap();
        let s = SqliteStore::open(&dir.path().join("t.db")).unwrap();
        let mut r = ExecutionRecord::new("a", Status::Queued, "default", "default@latest", 1);
        r.idempotency_key = Some("key-12345".into());
        s.insert(&r).unwrap();
        let mut dup = r.clone();
        dup.execution_id = "b".into();
        assert!(matches!(s.insert(&dup), Err(StoreError::Conflict)));
        r.status = Status::Cancelled;
        assert!(s.update(&r).unwrap());
        r.status = Status::Succeeded;
        assert!(!s.update(&r).unwrap());
        assert_eq!(s.get("a").unwrap().unwrap().status, Status::Cancelled);
        assert_eq!(
            s.find_by_idempotency_key("key-12345")
                .unwrap()
                .unwrap()
                .execution_id,
            "a"
        );
        let (page, more) = s.list(&RecordFilter::default(), 1, 0).unwrap();
        assert_eq!(page.len(), 1);
        assert!(!more);
        assert_eq!(s.purge_records(2).unwrap(), ["a"]);
        assert!(s.get("a").unwrap().is_none());
        // A key dropped by an update is released (e.g. a job refused by a full queue).
        let mut q = ExecutionRecord::new("q", Status::Queued, "default", "default@latest", 1);
        q.idempotency_key = Some("key-67890".into());
        s.insert(&q).unwrap();
        q.status = Status::Failed;
        q.idempotency_key = None;
        assert!(s.update(&q).unwrap());
        assert!(s.find_by_idempotency_key("key-67890").unwrap().is_none());
        let mut again = q.clone();
        again.execution_id = "q2".into();
        again.status = Status::Queued;
        again.idempotency_key = Some("key-67890".into());
        s.insert(&again).unwrap();
    }
}
