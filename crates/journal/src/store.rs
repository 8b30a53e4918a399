//! The journal file: opening it in SQLite (WAL, `synchronous=NORMAL`), the schema and its
//! version (`PRAGMA user_version`), the integrity check. Each kind of record adds its
//! `impl Journal` block in a sibling file: `jobs`, `phases`, `chunks`, `control`,
//! `deliveries`.

use crate::error::JournalError;
use rusqlite::{Connection, OpenFlags};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The schema version this build writes and reads (`PRAGMA user_version`).
/// Version 3 added `deliveries` (notifications); older journals are migrated on open by
/// creating the missing tables, their rows untouched.
pub const SCHEMA_VERSION: i64 = 4;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS jobs (
    id            TEXT PRIMARY KEY,
    kind          TEXT NOT NULL,
    source        TEXT NOT NULL,
    destination   TEXT NOT NULL,
    partial       TEXT NOT NULL DEFAULT '',
    options       TEXT NOT NULL DEFAULT '{}',
    facts         TEXT NOT NULL DEFAULT '{}',
    status        TEXT NOT NULL,
    error         TEXT,
    pid           INTEGER,
    partial_state TEXT NOT NULL DEFAULT 'none',
    cancel_request TEXT,
    chunk_size    INTEGER NOT NULL DEFAULT 0,
    total_bytes   INTEGER NOT NULL DEFAULT 0,
    runs          INTEGER NOT NULL DEFAULT 1,
    report        TEXT,
    created_at    TEXT NOT NULL,
    updated_at    TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS phases (
    job_id     TEXT NOT NULL REFERENCES jobs(id) ON DELETE CASCADE,
    seq        INTEGER NOT NULL,
    run        INTEGER NOT NULL,
    phase      TEXT NOT NULL,
    started_at TEXT NOT NULL,
    ended_at   TEXT,
    duration_ms INTEGER,
    PRIMARY KEY (job_id, seq)
);
CREATE TABLE IF NOT EXISTS chunks (
    job_id  TEXT NOT NULL REFERENCES jobs(id) ON DELETE CASCADE,
    idx     INTEGER NOT NULL,
    offset  INTEGER NOT NULL,
    len     INTEGER NOT NULL,
    bytes   INTEGER NOT NULL,
    digest  BLOB NOT NULL,
    run     INTEGER NOT NULL,
    data    INTEGER,
    PRIMARY KEY (job_id, idx)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS progress (
    job_id             TEXT PRIMARY KEY REFERENCES jobs(id) ON DELETE CASCADE,
    phase              TEXT NOT NULL,
    done_bytes         INTEGER NOT NULL,
    total_bytes        INTEGER NOT NULL,
    rate_bytes_per_sec INTEGER NOT NULL,
    eta_ms             INTEGER,
    updated_at         TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS bwlimit_changes (
    job_id        TEXT NOT NULL REFERENCES jobs(id) ON DELETE CASCADE,
    seq           INTEGER NOT NULL,
    bytes_per_sec INTEGER NOT NULL,
    requested_at  TEXT NOT NULL,
    applied_at    TEXT,
    PRIMARY KEY (job_id, seq)
);
-- No foreign key: a job's first notification (job.started) is recorded before its job
-- row exists (the event precedes the check), and --no-journal jobs have no row at all.
CREATE TABLE IF NOT EXISTS deliveries (
    id          TEXT PRIMARY KEY,
    job_id      TEXT NOT NULL,
    target      TEXT NOT NULL,
    event       TEXT NOT NULL,
    attempts    INTEGER NOT NULL DEFAULT 0,
    state       TEXT NOT NULL,
    last_status INTEGER,
    last_error  TEXT,
    created_at  TEXT NOT NULL,
    updated_at  TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS deliveries_by_job ON deliveries(job_id);
";

pub(crate) fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

pub(crate) fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

pub(crate) fn to_u64(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

/// An open journal.
#[derive(Debug)]
pub struct Journal {
    pub(crate) conn: Connection,
    pub(crate) path: PathBuf,
    /// The chunks table has the `data` column (schema 4; a journal of an older build
    /// opened read-only has not).
    pub(crate) chunk_data: bool,
}

impl Journal {
    /// Opens (creating if missing) the journal at `path` read-write, in WAL mode, and checks
    /// the schema version.
    ///
    /// # Errors
    /// [`JournalError::Corrupt`] for a damaged or non-SQLite file, [`JournalError::TooNew`],
    /// or [`JournalError::Sqlite`].
    pub fn open(path: &Path) -> Result<Journal, JournalError> {
        let e = |err| JournalError::sqlite(path, err);
        let conn = Connection::open(path).map_err(e)?;
        conn.busy_timeout(Duration::from_secs(10)).map_err(e)?;
        // The first statement that reads the file is where a damaged header shows.
        let mode: String = conn
            .query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))
            .map_err(e)?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(JournalError::Corrupt {
                path: path.to_path_buf(),
                detail: format!("journal mode is {mode}, not wal"),
            });
        }
        // NORMAL in WAL mode: a commit is not fsync'd, so a checkpoint costs no disk flush
        // beyond the target's own. Safe for the copy contract: a chunk is appended to the WAL
        // only after the target data was fsync'd, so the journal can lose its latest
        // commits on power loss (those chunks are copied again) but never claim data the
        // target does not hold; a process crash loses nothing (the WAL is in the page cache).
        conn.execute_batch("PRAGMA synchronous=NORMAL; PRAGMA foreign_keys=ON;")
            .map_err(e)?;
        let mut j = Journal {
            conn,
            path: path.to_path_buf(),
            chunk_data: true,
        };
        j.migrate()?;
        j.chunk_data = j.has_chunk_data()?;
        Ok(j)
    }

    /// Opens an existing journal read-only (listing jobs never writes).
    ///
    /// # Errors
    /// As [`Journal::open`]; a missing file is a [`JournalError::Sqlite`] error.
    pub fn open_read_only(path: &Path) -> Result<Journal, JournalError> {
        let e = |err| JournalError::sqlite(path, err);
        let conn = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(e)?;
        conn.busy_timeout(Duration::from_secs(10)).map_err(e)?;
        let mut j = Journal {
            conn,
            path: path.to_path_buf(),
            chunk_data: true,
        };
        let v = j.user_version()?;
        if v > SCHEMA_VERSION {
            return Err(JournalError::TooNew {
                path: j.path.clone(),
                found: v,
                supported: SCHEMA_VERSION,
            });
        }
        j.chunk_data = j.has_chunk_data()?;
        Ok(j)
    }

    /// Whether the chunks table has the `data` column.
    fn has_chunk_data(&self) -> Result<bool, JournalError> {
        let mut stmt = self
            .conn
            .prepare("SELECT name FROM pragma_table_info('chunks')")
            .map_err(|e| self.err(e))?;
        let names = stmt
            .query_map([], |r| r.get::<_, String>(0))
            .map_err(|e| self.err(e))?;
        for n in names {
            if n.map_err(|e| self.err(e))? == "data" {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// Whether the schema is not there yet: a journal another process has just created
    /// and not yet written its tables into (readers treat it as holding no jobs).
    ///
    /// # Errors
    /// [`JournalError`] when the version cannot be read.
    pub fn is_blank(&self) -> Result<bool, JournalError> {
        Ok(self.user_version()? == 0)
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    pub(crate) fn err(&self, e: rusqlite::Error) -> JournalError {
        JournalError::sqlite(&self.path, e)
    }

    fn user_version(&self) -> Result<i64, JournalError> {
        self.conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .map_err(|e| self.err(e))
    }

    fn migrate(&self) -> Result<(), JournalError> {
        let v = self.user_version()?;
        if v > SCHEMA_VERSION {
            return Err(JournalError::TooNew {
                path: self.path.clone(),
                found: v,
                supported: SCHEMA_VERSION,
            });
        }
        if v < SCHEMA_VERSION {
            // Schema 4 adds chunks.data; rows from older runs keep NULL there (their chunk
            // length stands in for it).
            let add_data = if v > 0 && !self.has_chunk_data()? {
                "ALTER TABLE chunks ADD COLUMN data INTEGER;"
            } else {
                ""
            };
            self.conn
                .execute_batch(&format!(
                    "BEGIN IMMEDIATE; {SCHEMA} {add_data} PRAGMA user_version={SCHEMA_VERSION}; COMMIT;"
                ))
                .map_err(|e| self.err(e))?;
        }
        Ok(())
    }

    /// Runs SQLite's `integrity_check`.
    ///
    /// # Errors
    /// [`JournalError::Corrupt`] with SQLite's first complaint.
    pub fn integrity_check(&self) -> Result<(), JournalError> {
        let msg: String = self
            .conn
            .query_row("PRAGMA integrity_check(1)", [], |r| r.get(0))
            .map_err(|e| self.err(e))?;
        if msg == "ok" {
            Ok(())
        } else {
            Err(JournalError::Corrupt {
                path: self.path.clone(),
                detail: msg,
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_garbage_file_is_reported_as_corrupt_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("journal.sqlite");
        std::fs::write(&path, vec![0x5a; 8192]).unwrap();
        let e = Journal::open(&path).unwrap_err();
        assert!(e.is_corrupt(), "{e:?}");
        let msg = e.to_string();
        assert!(msg.contains(&path.display().to_string()), "{msg}");
        assert!(msg.contains("move it aside"), "{msg}");
    }

    #[test]
    fn a_newer_schema_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("journal.sqlite");
        {
            let j = Journal::open(&path).unwrap();
            j.conn.execute_batch("PRAGMA user_version=99").unwrap();
        }
        let e = Journal::open(&path).unwrap_err().to_string();
        assert!(e.contains("schema version 99"), "{e}");
    }
}
