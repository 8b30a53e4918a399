//! Job records: creating, resolving by id prefix, listing and updating a job's row.

use crate::error::JournalError;
use crate::store::{now, to_i64, to_u64, Journal};
use rusqlite::{params, Row};
use serde::Serialize;
use std::path::Path;

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
    /// Guest bytes the copy must process: the data (per block status) it copies.
    pub total_bytes: u64,
    /// Of those, the bytes in chunks recorded durable.
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

impl Journal {
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
        if id_or_prefix.trim().is_empty() {
            return Err(JournalError::NoSuchJob {
                path: self.path.clone(),
                id: "\"\"".into(),
            });
        }
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

    /// The columns of a [`JobRecord`]; `done_bytes` sums the recorded chunks' data.
    fn job_columns(&self) -> String {
        let data = if self.chunk_data {
            "COALESCE(c.data, c.len)"
        } else {
            "c.len"
        };
        format!(
            "j.id, j.kind, j.source, j.destination, j.partial,
        j.options, j.facts, j.status, j.error, j.pid, j.partial_state, j.cancel_request,
        j.chunk_size, j.total_bytes,
        (SELECT COALESCE(SUM({data}), 0) FROM chunks c WHERE c.job_id = j.id),
        j.runs, j.report, j.created_at, j.updated_at"
        )
    }

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
        let sql = format!("SELECT {} FROM jobs j WHERE j.id = ?1", self.job_columns());
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

    /// Forgets job `id` with its phases, chunks, bandwidth changes, progress and
    /// deliveries; also the deliveries of jobs the journal never had (`--no-journal`)
    /// last changed more than a day ago.
    ///
    /// # Errors
    /// [`JournalError`] on a database error.
    pub fn delete_job(&self, id: &str) -> Result<(), JournalError> {
        let day_ago = (chrono::Utc::now() - chrono::Duration::days(1))
            .to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
        self.conn
            .execute("DELETE FROM jobs WHERE id = ?1", params![id])
            .and_then(|_| {
                self.conn.execute(
                    "DELETE FROM deliveries WHERE job_id = ?1
                     OR (updated_at < ?2 AND job_id NOT IN (SELECT id FROM jobs))",
                    params![id, day_ago],
                )
            })
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
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn job(id: &str) -> NewJob {
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
    fn cancel_requests_are_recorded() {
        let dir = tempfile::tempdir().unwrap();
        let j = Journal::open(&dir.path().join("j.sqlite")).unwrap();
        j.create_job(&job("x1")).unwrap();
        j.request_cancel("x1", true).unwrap();
        assert_eq!(j.job("x1").unwrap().cancel_request.as_deref(), Some("keep"));
        assert!(j.request_cancel("nope", false).is_err());
    }
}
