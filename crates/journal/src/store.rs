//! The job store: jobs, their phase history and the chunks of offline copies already made
//! durable, in SQLite (WAL, `synchronous=NORMAL`, schema version in `PRAGMA user_version`).

use crate::error::JournalError;
use rusqlite::{params, Connection, OpenFlags, OptionalExtension, Row};
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The schema version this build writes and reads (`PRAGMA user_version`).
pub const SCHEMA_VERSION: i64 = 2;

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

/// A job to record.
#[derive(Debug, Clone)]
pub struct NewJob {
    /// Job id (UUID v7, hyphenated).
    pub id: String,
    /// `offline` or `live`.
    pub kind: String,
    /// Source image path (absolute).
    pub source: String,
    /// Final target path (absolute).
    pub destination: String,
    /// The temporary target path (`NAME.vmshift-partial`), empty for live jobs.
    pub partial: String,
    /// The options the job was started with, as JSON (enough to resume it).
    pub options: serde_json::Value,
    /// Facts about the source at the start (sizes, mtimes, lock state), as JSON.
    pub facts: serde_json::Value,
    /// Copy chunk size in bytes (0 for live jobs).
    pub chunk_size: u64,
    /// Guest bytes the copy must process (data chunks), for progress.
    pub total_bytes: u64,
}

/// A job as stored.
#[derive(Debug, Clone, Serialize)]
pub struct JobRecord {
    /// Job id.
    pub id: String,
    /// `offline` or `live`.
    pub kind: String,
    /// Source image path.
    pub source: String,
    /// Final target path.
    pub destination: String,
    /// Temporary target path.
    pub partial: String,
    /// Options as given at start.
    pub options: serde_json::Value,
    /// Source facts at start.
    pub facts: serde_json::Value,
    /// `running`, `succeeded`, `failed`, `cancelled`, `refused`, `rolled_back`.
    pub status: String,
    /// The last error, one line.
    pub error: Option<String>,
    /// Pid of the process that last ran the job.
    pub pid: Option<u32>,
    /// The partial target: `none`, `writing`, `kept` (for resume), `removed`, `final`.
    pub partial_state: String,
    /// A pending cancel request from `vmshift cancel`: `remove` or `keep` (the partial).
    pub cancel_request: Option<String>,
    /// Copy chunk size in bytes.
    pub chunk_size: u64,
    /// Guest bytes the copy must process.
    pub total_bytes: u64,
    /// Guest bytes of chunks recorded durable (sum of chunk lengths).
    pub done_bytes: u64,
    /// How many runs (first run plus resumes) started.
    pub runs: u32,
    /// Path of the last report written.
    pub report: Option<String>,
    /// RFC 3339 creation time.
    pub created_at: String,
    /// RFC 3339 time of the last update.
    pub updated_at: String,
}

/// One phase of one run.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PhaseRecord {
    /// Run number (1 = the first run, 2 = the first resume, …).
    pub run: u32,
    /// Phase name.
    pub phase: String,
    /// RFC 3339 start.
    pub started_at: String,
    /// RFC 3339 end, when it ended.
    pub ended_at: Option<String>,
    /// Duration in ms, when it ended.
    pub duration_ms: Option<u64>,
}

/// A chunk copied and made durable.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ChunkRecord {
    /// Chunk index (guest offset / chunk size).
    pub index: u64,
    /// Guest offset in bytes.
    pub offset: u64,
    /// Guest bytes the chunk covers.
    pub len: u64,
    /// Bytes written as data (zeroes excluded).
    pub bytes: u64,
    /// Content digest of the chunk's guest bytes (`vmshift_copy::digest::chunk_digest`).
    pub digest: [u8; 32],
    /// The run that copied it.
    pub run: u32,
}

/// An open journal.
#[derive(Debug)]
pub struct Journal {
    pub(crate) conn: Connection,
    pub(crate) path: PathBuf,
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
        let j = Journal {
            conn,
            path: path.to_path_buf(),
        };
        j.migrate()?;
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
        let j = Journal {
            conn,
            path: path.to_path_buf(),
        };
        let v = j.user_version()?;
        if v > SCHEMA_VERSION {
            return Err(JournalError::TooNew {
                path: j.path.clone(),
                found: v,
                supported: SCHEMA_VERSION,
            });
        }
        Ok(j)
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
            self.conn
                .execute_batch(&format!(
                    "BEGIN IMMEDIATE; {SCHEMA} PRAGMA user_version={SCHEMA_VERSION}; COMMIT;"
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

    /// Records a new job, status `running`, run 1, with this process as its pid.
    ///
    /// # Errors
    /// [`JournalError`] on a database error.
    pub fn create_job(&self, job: &NewJob) -> Result<(), JournalError> {
        let t = now();
        self.conn
            .execute(
                "INSERT INTO jobs (id, kind, source, destination, partial, options, facts, status,
                    pid, chunk_size, total_bytes, created_at, updated_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, 'running', ?8, ?9, ?10, ?11, ?11)",
                params![
                    job.id,
                    job.kind,
                    job.source,
                    job.destination,
                    job.partial,
                    job.options.to_string(),
                    job.facts.to_string(),
                    std::process::id(),
                    to_i64(job.chunk_size),
                    to_i64(job.total_bytes),
                    t
                ],
            )
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    /// Resolves a full id or a unique prefix of one.
    ///
    /// # Errors
    /// [`JournalError::NoSuchJob`], [`JournalError::Ambiguous`] or a database error.
    pub fn resolve(&self, id_or_prefix: &str) -> Result<String, JournalError> {
        let pattern = format!(
            "{}%",
            id_or_prefix.replace('\\', "\\\\").replace(['%', '_'], "")
        );
        let mut stmt = self
            .conn
            .prepare("SELECT id FROM jobs WHERE id = ?1 OR id LIKE ?2 ESCAPE '\\' LIMIT 3")
            .map_err(|e| self.err(e))?;
        let ids: Vec<String> = stmt
            .query_map(params![id_or_prefix, pattern], |r| r.get(0))
            .map_err(|e| self.err(e))?
            .collect::<Result<_, _>>()
            .map_err(|e| self.err(e))?;
        if let Some(exact) = ids.iter().find(|i| *i == id_or_prefix) {
            return Ok(exact.clone());
        }
        match ids.len() {
            0 => Err(JournalError::NoSuchJob {
                path: self.path.clone(),
                id: id_or_prefix.to_string(),
            }),
            1 if !id_or_prefix.is_empty() => Ok(ids[0].clone()),
            n => Err(JournalError::Ambiguous {
                path: self.path.clone(),
                id: id_or_prefix.to_string(),
                count: n,
            }),
        }
    }

    const JOB_COLUMNS: &'static str = "j.id, j.kind, j.source, j.destination, j.partial,
        j.options, j.facts, j.status, j.error, j.pid, j.partial_state, j.cancel_request,
        j.chunk_size, j.total_bytes,
        (SELECT COALESCE(SUM(c.len), 0) FROM chunks c WHERE c.job_id = j.id),
        j.runs, j.report, j.created_at, j.updated_at";

    fn job_from_row(path: &Path, r: &Row<'_>) -> rusqlite::Result<Result<JobRecord, JournalError>> {
        let id: String = r.get(0)?;
        let options: String = r.get(5)?;
        let facts: String = r.get(6)?;
        let parse = |s: &str| serde_json::from_str::<serde_json::Value>(s);
        let (options, facts) = match (parse(&options), parse(&facts)) {
            (Ok(o), Ok(f)) => (o, f),
            (Err(e), _) | (_, Err(e)) => {
                return Ok(Err(JournalError::BadRecord {
                    path: path.to_path_buf(),
                    id,
                    detail: e.to_string(),
                }))
            }
        };
        let pid: Option<i64> = r.get(9)?;
        Ok(Ok(JobRecord {
            id,
            kind: r.get(1)?,
            source: r.get(2)?,
            destination: r.get(3)?,
            partial: r.get(4)?,
            options,
            facts,
            status: r.get(7)?,
            error: r.get(8)?,
            pid: pid.and_then(|p| u32::try_from(p).ok()),
            partial_state: r.get(10)?,
            cancel_request: r.get(11)?,
            chunk_size: to_u64(r.get(12)?),
            total_bytes: to_u64(r.get(13)?),
            done_bytes: to_u64(r.get(14)?),
            runs: u32::try_from(r.get::<_, i64>(15)?).unwrap_or(1),
            report: r.get(16)?,
            created_at: r.get(17)?,
            updated_at: r.get(18)?,
        }))
    }

    /// One job by full id or unique prefix.
    ///
    /// # Errors
    /// As [`Journal::resolve`], or [`JournalError::BadRecord`].
    pub fn job(&self, id_or_prefix: &str) -> Result<JobRecord, JournalError> {
        let id = self.resolve(id_or_prefix)?;
        let sql = format!("SELECT {} FROM jobs j WHERE j.id = ?1", Self::JOB_COLUMNS);
        self.conn
            .query_row(&sql, params![id], |r| Self::job_from_row(&self.path, r))
            .map_err(|e| self.err(e))?
    }

    /// Every job, oldest first. Rows that cannot be read (a damaged page) are skipped and
    /// described in the second list, so one bad record never hides the others.
    ///
    /// # Errors
    /// [`JournalError`] when not even the list of ids can be read.
    pub fn jobs(&self) -> Result<(Vec<JobRecord>, Vec<String>), JournalError> {
        let mut stmt = self
            .conn
            .prepare("SELECT id FROM jobs ORDER BY created_at, id")
            .map_err(|e| self.err(e))?;
        let mut ids = Vec::new();
        let mut problems = Vec::new();
        let rows = stmt
            .query_map([], |r| r.get::<_, String>(0))
            .map_err(|e| self.err(e))?;
        for r in rows {
            match r {
                Ok(id) => ids.push(id),
                Err(e) => {
                    problems.push(self.err(e).to_string());
                    break;
                }
            }
        }
        let mut jobs = Vec::new();
        for id in ids {
            match self.job(&id) {
                Ok(j) => jobs.push(j),
                Err(e) => problems.push(format!("job {id}: {e}")),
            }
        }
        Ok((jobs, problems))
    }

    fn touch(&self, id: &str, set: &str, value: &dyn rusqlite::ToSql) -> Result<(), JournalError> {
        let sql = format!("UPDATE jobs SET {set} = ?1, updated_at = ?2 WHERE id = ?3");
        let n = self
            .conn
            .execute(&sql, params![value, now(), id])
            .map_err(|e| self.err(e))?;
        if n == 0 {
            return Err(JournalError::NoSuchJob {
                path: self.path.clone(),
                id: id.to_string(),
            });
        }
        Ok(())
    }

    /// Sets the status (and the error line, cleared when `None`).
    ///
    /// # Errors
    /// [`JournalError`] on a database error or an unknown job.
    pub fn set_status(
        &self,
        id: &str,
        status: &str,
        error: Option<&str>,
    ) -> Result<(), JournalError> {
        self.conn
            .execute(
                "UPDATE jobs SET status = ?1, error = ?2, updated_at = ?3 WHERE id = ?4",
                params![status, error, now(), id],
            )
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    /// Records what became of the partial target (`writing`, `kept`, `removed`, `final`).
    ///
    /// # Errors
    /// [`JournalError`] on a database error or an unknown job.
    pub fn set_partial_state(&self, id: &str, state: &str) -> Result<(), JournalError> {
        self.touch(id, "partial_state", &state)
    }

    /// Records the path of the job's latest report.
    ///
    /// # Errors
    /// [`JournalError`] on a database error or an unknown job.
    pub fn set_report(&self, id: &str, report: &str) -> Result<(), JournalError> {
        self.touch(id, "report", &report)
    }

    /// Replaces the source facts (JSON).
    ///
    /// # Errors
    /// [`JournalError`] on a database error or an unknown job.
    pub fn set_facts(&self, id: &str, facts: &serde_json::Value) -> Result<(), JournalError> {
        self.touch(id, "facts", &facts.to_string())
    }

    /// Marks the copy started: the partial target is being written and the copy must
    /// process `total` guest bytes. One commit.
    ///
    /// # Errors
    /// [`JournalError`] on a database error or an unknown job.
    pub fn begin_copy(&self, id: &str, total: u64) -> Result<(), JournalError> {
        self.conn
            .execute(
                "UPDATE jobs SET partial_state = 'writing', total_bytes = ?1, updated_at = ?2
                 WHERE id = ?3",
                params![to_i64(total), now(), id],
            )
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    /// Sets the guest bytes the copy must process.
    ///
    /// # Errors
    /// [`JournalError`] on a database error or an unknown job.
    pub fn set_total_bytes(&self, id: &str, total: u64) -> Result<(), JournalError> {
        self.touch(id, "total_bytes", &to_i64(total))
    }

    /// Starts a new run of the job in this process: status `running`, pid ours, cancel
    /// request cleared, run counter incremented. Returns the new run number.
    ///
    /// # Errors
    /// [`JournalError`] on a database error or an unknown job.
    pub fn start_run(&self, id: &str) -> Result<u32, JournalError> {
        self.conn
            .execute(
                "UPDATE jobs SET runs = runs + 1, status = 'running', error = NULL, pid = ?1,
                    cancel_request = NULL, updated_at = ?2 WHERE id = ?3",
                params![std::process::id(), now(), id],
            )
            .map_err(|e| self.err(e))?;
        Ok(self.job(id)?.runs)
    }

    /// Asks the running job to cancel: `keep_partial` decides what becomes of its partial
    /// target. The caller then signals the job's process.
    ///
    /// # Errors
    /// [`JournalError`] on a database error or an unknown job.
    pub fn request_cancel(&self, id: &str, keep_partial: bool) -> Result<(), JournalError> {
        self.touch(
            id,
            "cancel_request",
            &if keep_partial { "keep" } else { "remove" },
        )
    }

    /// Marks the start of `phase` in run `run` (ending the phase before it).
    ///
    /// # Errors
    /// [`JournalError`] on a database error.
    pub fn phase_started(&self, id: &str, run: u32, phase: &str) -> Result<(), JournalError> {
        self.phase_ended(id, 0)?;
        self.conn
            .execute(
                "INSERT INTO phases (job_id, seq, run, phase, started_at)
                 VALUES (?1, (SELECT COALESCE(MAX(seq), 0) + 1 FROM phases WHERE job_id = ?1), ?2, ?3, ?4)",
                params![id, run, phase, now()],
            )
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    /// Ends the job's open phase, if any, with its duration in ms (0: computed from now).
    ///
    /// # Errors
    /// [`JournalError`] on a database error.
    pub fn phase_ended(&self, id: &str, duration_ms: u64) -> Result<(), JournalError> {
        let t = now();
        let open: Option<(i64, String)> = self
            .conn
            .query_row(
                "SELECT seq, started_at FROM phases WHERE job_id = ?1 AND ended_at IS NULL
                 ORDER BY seq DESC LIMIT 1",
                params![id],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()
            .map_err(|e| self.err(e))?;
        if let Some((seq, started)) = open {
            let ms = if duration_ms > 0 {
                duration_ms
            } else {
                chrono::DateTime::parse_from_rfc3339(&started)
                    .ok()
                    .and_then(|s| {
                        u64::try_from((chrono::Utc::now() - s.to_utc()).num_milliseconds()).ok()
                    })
                    .unwrap_or(0)
            };
            self.conn
                .execute(
                    "UPDATE phases SET ended_at = ?1, duration_ms = ?2 WHERE job_id = ?3 AND seq = ?4",
                    params![t, to_i64(ms), id, seq],
                )
                .map_err(|e| self.err(e))?;
        }
        Ok(())
    }

    /// The job's phase history, in order.
    ///
    /// # Errors
    /// [`JournalError`] on a database error.
    pub fn phases(&self, id: &str) -> Result<Vec<PhaseRecord>, JournalError> {
        let mut stmt = self
            .conn
            .prepare(
                "SELECT run, phase, started_at, ended_at, duration_ms FROM phases
                 WHERE job_id = ?1 ORDER BY seq",
            )
            .map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map(params![id], |r| {
                Ok(PhaseRecord {
                    run: u32::try_from(r.get::<_, i64>(0)?).unwrap_or(0),
                    phase: r.get(1)?,
                    started_at: r.get(2)?,
                    ended_at: r.get(3)?,
                    duration_ms: r.get::<_, Option<i64>>(4)?.map(to_u64),
                })
            })
            .map_err(|e| self.err(e))?;
        rows.collect::<Result<_, _>>().map_err(|e| self.err(e))
    }

    /// Records chunks as copied and durable, all in one transaction. The caller must have
    /// `fsync`'d the target after writing them.
    ///
    /// # Errors
    /// [`JournalError`] on a database error (nothing is recorded then).
    pub fn record_chunks(&mut self, id: &str, chunks: &[ChunkRecord]) -> Result<(), JournalError> {
        let path = self.path.clone();
        let e = |err| JournalError::sqlite(&path, err);
        let tx = self.conn.transaction().map_err(e)?;
        {
            let mut stmt = tx
                .prepare_cached(
                    "INSERT OR REPLACE INTO chunks (job_id, idx, offset, len, bytes, digest, run)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                )
                .map_err(e)?;
            for c in chunks {
                stmt.execute(params![
                    id,
                    to_i64(c.index),
                    to_i64(c.offset),
                    to_i64(c.len),
                    to_i64(c.bytes),
                    &c.digest[..],
                    c.run
                ])
                .map_err(e)?;
            }
        }
        tx.execute(
            "UPDATE jobs SET updated_at = ?1 WHERE id = ?2",
            params![now(), id],
        )
        .map_err(e)?;
        tx.commit().map_err(e)
    }

    /// The chunks recorded for the job, by index.
    ///
    /// # Errors
    /// [`JournalError`] on a database error.
    pub fn chunks(&self, id: &str) -> Result<Vec<ChunkRecord>, JournalError> {
        let mut stmt = self
            .conn
            .prepare(
                "SELECT idx, offset, len, bytes, digest, run FROM chunks WHERE job_id = ?1
                 ORDER BY idx",
            )
            .map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map(params![id], |r| {
                let d: Vec<u8> = r.get(4)?;
                let mut digest = [0u8; 32];
                if d.len() == 32 {
                    digest.copy_from_slice(&d);
                }
                Ok(ChunkRecord {
                    index: to_u64(r.get(0)?),
                    offset: to_u64(r.get(1)?),
                    len: to_u64(r.get(2)?),
                    bytes: to_u64(r.get(3)?),
                    digest,
                    run: u32::try_from(r.get::<_, i64>(5)?).unwrap_or(0),
                })
            })
            .map_err(|e| self.err(e))?;
        rows.collect::<Result<_, _>>().map_err(|e| self.err(e))
    }

    /// Forgets every chunk of the job (the partial target is gone or not trusted).
    ///
    /// # Errors
    /// [`JournalError`] on a database error.
    pub fn clear_chunks(&self, id: &str) -> Result<(), JournalError> {
        self.conn
            .execute("DELETE FROM chunks WHERE job_id = ?1", params![id])
            .map_err(|e| self.err(e))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(id: &str) -> NewJob {
        NewJob {
            id: id.into(),
            kind: "offline".into(),
            source: "/a/src.raw".into(),
            destination: "/b/src.raw".into(),
            partial: "/b/src.raw.vmshift-partial".into(),
            options: serde_json::json!({"format": "raw", "bwlimit": 0}),
            facts: serde_json::json!({"size": 42}),
            chunk_size: 8 << 20,
            total_bytes: 64 << 20,
        }
    }

    fn chunk(index: u64, run: u32) -> ChunkRecord {
        ChunkRecord {
            index,
            offset: index * (8 << 20),
            len: 8 << 20,
            bytes: 4 << 20,
            digest: [u8::try_from(index % 256).unwrap(); 32],
            run,
        }
    }

    #[test]
    fn jobs_phases_and_chunks_round_trip_through_a_real_file_in_wal_mode() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("journal.sqlite");
        let mut j = Journal::open(&path).unwrap();
        j.create_job(&job("01aa-1")).unwrap();
        j.phase_started("01aa-1", 1, "check").unwrap();
        j.phase_started("01aa-1", 1, "copy").unwrap();
        j.record_chunks("01aa-1", &[chunk(0, 1), chunk(3, 1)])
            .unwrap();
        j.record_chunks("01aa-1", &[chunk(5, 1)]).unwrap();
        j.set_status("01aa-1", "failed", Some("boom")).unwrap();
        j.set_partial_state("01aa-1", "kept").unwrap();
        drop(j);

        let j = Journal::open(&path).unwrap();
        let mode: String = j
            .conn
            .query_row("PRAGMA journal_mode", [], |r| r.get(0))
            .unwrap();
        assert_eq!(mode, "wal");
        let r = j.job("01aa").unwrap();
        assert_eq!(r.status, "failed");
        assert_eq!(r.error.as_deref(), Some("boom"));
        assert_eq!(r.partial_state, "kept");
        assert_eq!(r.done_bytes, 3 * (8 << 20));
        assert_eq!(r.options["format"], "raw");
        assert_eq!(r.pid, Some(std::process::id()));
        let c = j.chunks("01aa-1").unwrap();
        assert_eq!(c.iter().map(|c| c.index).collect::<Vec<_>>(), vec![0, 3, 5]);
        assert_eq!(c[1], chunk(3, 1));
        let ph = j.phases("01aa-1").unwrap();
        assert_eq!(ph.len(), 2);
        assert_eq!(ph[0].phase, "check");
        assert!(ph[0].ended_at.is_some());
        assert!(ph[1].ended_at.is_none());
        assert_eq!(j.start_run("01aa-1").unwrap(), 2);
        j.clear_chunks("01aa-1").unwrap();
        assert_eq!(j.job("01aa-1").unwrap().done_bytes, 0);
        assert_eq!(j.job("01aa-1").unwrap().status, "running");
    }

    #[test]
    fn prefixes_resolve_uniquely_or_fail_clearly() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("journal.sqlite");
        let j = Journal::open(&path).unwrap();
        j.create_job(&job("0193-aaaa")).unwrap();
        j.create_job(&job("0193-bbbb")).unwrap();
        assert_eq!(j.resolve("0193-a").unwrap(), "0193-aaaa");
        let amb = j.resolve("0193").unwrap_err().to_string();
        assert!(amb.contains("matches 2 jobs"), "{amb}");
        let none = j.resolve("ffff").unwrap_err().to_string();
        assert!(
            none.contains("no job ffff") && none.contains("journal.sqlite"),
            "{none}"
        );
        assert!(j.resolve("").is_err());
    }

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
    fn a_truncated_journal_fails_clearly_or_keeps_the_readable_jobs() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("journal.sqlite");
        {
            let mut j = Journal::open(&path).unwrap();
            for i in 0..40 {
                let id = format!("job-{i:03}");
                j.create_job(&job(&id)).unwrap();
                let chunks: Vec<ChunkRecord> = (0..50).map(|c| chunk(c, 1)).collect();
                j.record_chunks(&id, &chunks).unwrap();
            }
            // Fold the WAL into the main file so truncating it loses real pages.
            j.conn
                .execute_batch("PRAGMA wal_checkpoint(TRUNCATE)")
                .unwrap();
        }
        let len = std::fs::metadata(&path).unwrap().len();
        let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        f.set_len(len / 2).unwrap();
        drop(f);
        // Never a panic: either a clear corruption error naming the file, or the jobs that
        // are still readable plus a description of what is not.
        match Journal::open_read_only(&path) {
            Err(e) => assert!(e.to_string().contains(&path.display().to_string())),
            Ok(j) => {
                assert!(j.integrity_check().is_err());
                match j.jobs() {
                    Ok((jobs, problems)) => {
                        assert!(jobs.len() + problems.len() > 0);
                        for p in &problems {
                            assert!(p.contains("journal.sqlite"), "{p}");
                        }
                    }
                    Err(e) => assert!(e.to_string().contains("journal.sqlite"), "{e}"),
                }
            }
        }
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

    #[test]
    fn cancel_requests_are_recorded() {
        let dir = tempfile::tempdir().unwrap();
        let j = Journal::open(&dir.path().join("j.sqlite")).unwrap();
        j.create_job(&job("x1")).unwrap();
        j.request_cancel("x1", true).unwrap();
        assert_eq!(j.job("x1").unwrap().cancel_request.as_deref(), Some("keep"));
        assert!(j.request_cancel("nope", false).is_err());
    }
}
