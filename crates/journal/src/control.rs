//! What a running job and other processes tell each other through the journal: bandwidth
//! changes (`vmshift set JOB --bwlimit`) and the job's latest progress (`vmshift status`).
//! Bandwidth changes: The requester records a change; the job's process polls for changes it has
//! not applied, applies them and marks them applied with the time, so `vmshift set` can
//! tell when the change took effect and the report can list every change.

use crate::error::JournalError;
use crate::store::{now, to_i64, to_u64, Journal};
use rusqlite::params;
use serde::Serialize;

/// One bandwidth change of a job.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BwlimitChange {
    /// Order of the change within the job (1, 2, …).
    pub seq: u32,
    /// The new limit, bytes/s (0 lifts it).
    pub bytes_per_sec: u64,
    /// RFC 3339 time of the request.
    pub requested_at: String,
    /// RFC 3339 time the job applied it; `None` while pending.
    pub applied_at: Option<String>,
}

/// A running job's latest progress, as `vmshift status` shows it from another process.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ProgressRecord {
    /// What progresses (`copy`, `verify`, …).
    pub phase: String,
    /// Guest bytes done, bytes.
    pub done_bytes: u64,
    /// Guest bytes to do, bytes.
    pub total_bytes: u64,
    /// Current rate, bytes/s.
    pub rate_bytes_per_sec: u64,
    /// Estimated time left, ms; `None` when unknown.
    pub eta_ms: Option<u64>,
    /// RFC 3339 time of the sample.
    pub updated_at: String,
}

impl Journal {
    /// Records job `id`'s latest progress (replacing the one before); `updated_at` is now.
    ///
    /// # Errors
    /// A database error.
    pub fn set_progress(&self, id: &str, p: &ProgressRecord) -> Result<(), JournalError> {
        self.conn
            .execute(
                "INSERT INTO progress (job_id, phase, done_bytes, total_bytes, rate_bytes_per_sec, eta_ms, updated_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
                 ON CONFLICT(job_id) DO UPDATE SET phase = ?2, done_bytes = ?3, total_bytes = ?4,
                    rate_bytes_per_sec = ?5, eta_ms = ?6, updated_at = ?7",
                params![
                    id,
                    p.phase,
                    to_i64(p.done_bytes),
                    to_i64(p.total_bytes),
                    to_i64(p.rate_bytes_per_sec),
                    p.eta_ms.map(to_i64),
                    now()
                ],
            )
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    /// Job `id`'s latest recorded progress, if it recorded any.
    ///
    /// # Errors
    /// A database error (a journal without the table reads as no progress).
    pub fn progress(&self, id: &str) -> Result<Option<ProgressRecord>, JournalError> {
        use rusqlite::OptionalExtension;
        self.conn
            .query_row(
                "SELECT phase, done_bytes, total_bytes, rate_bytes_per_sec, eta_ms, updated_at
                 FROM progress WHERE job_id = ?1",
                params![id],
                |r| {
                    Ok(ProgressRecord {
                        phase: r.get(0)?,
                        done_bytes: to_u64(r.get(1)?),
                        total_bytes: to_u64(r.get(2)?),
                        rate_bytes_per_sec: to_u64(r.get(3)?),
                        eta_ms: r.get::<_, Option<i64>>(4)?.map(to_u64),
                        updated_at: r.get(5)?,
                    })
                },
            )
            .optional()
            .map_err(|e| self.err(e))
    }

    /// Records a bandwidth change for job `id` (pending until the job applies it).
    /// Returns its sequence number.
    ///
    /// # Errors
    /// [`JournalError::NoSuchJob`] or a database error.
    pub fn request_bwlimit(&self, id: &str, bytes_per_sec: u64) -> Result<u32, JournalError> {
        self.job(id)?;
        let seq: u32 = self
            .conn
            .query_row(
                "INSERT INTO bwlimit_changes (job_id, seq, bytes_per_sec, requested_at)
                 VALUES (?1, (SELECT COALESCE(MAX(seq), 0) + 1 FROM bwlimit_changes WHERE job_id = ?1), ?2, ?3)
                 RETURNING seq",
                params![id, to_i64(bytes_per_sec), now()],
                |r| r.get(0),
            )
            .map_err(|e| self.err(e))?;
        Ok(seq)
    }

    /// Every bandwidth change of job `id`, oldest first.
    ///
    /// # Errors
    /// A database error.
    pub fn bwlimit_changes(&self, id: &str) -> Result<Vec<BwlimitChange>, JournalError> {
        let mut st = self
            .conn
            .prepare(
                "SELECT seq, bytes_per_sec, requested_at, applied_at FROM bwlimit_changes
                 WHERE job_id = ?1 ORDER BY seq",
            )
            .map_err(|e| self.err(e))?;
        let rows = st
            .query_map(params![id], |r| {
                Ok(BwlimitChange {
                    seq: r.get(0)?,
                    bytes_per_sec: to_u64(r.get(1)?),
                    requested_at: r.get(2)?,
                    applied_at: r.get(3)?,
                })
            })
            .map_err(|e| self.err(e))?;
        rows.collect::<Result<_, _>>().map_err(|e| self.err(e))
    }

    /// Marks change `seq` of job `id` applied now.
    ///
    /// # Errors
    /// A database error.
    pub fn bwlimit_applied(&self, id: &str, seq: u32) -> Result<(), JournalError> {
        self.conn
            .execute(
                "UPDATE bwlimit_changes SET applied_at = ?1 WHERE job_id = ?2 AND seq = ?3",
                params![now(), id, seq],
            )
            .map_err(|e| self.err(e))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::ProgressRecord;
    use crate::{Journal, NewJob};

    #[test]
    fn bandwidth_changes_are_numbered_pending_then_applied() {
        let dir = tempfile::tempdir().unwrap();
        let j = Journal::open(&dir.path().join("j.sqlite")).unwrap();
        j.create_job(&NewJob {
            id: "j1".into(),
            kind: "offline".into(),
            source: "/a".into(),
            destination: "/b".into(),
            partial: String::new(),
            options: serde_json::json!({}),
            facts: serde_json::json!({}),
            chunk_size: 0,
            total_bytes: 0,
        })
        .unwrap();
        assert_eq!(j.request_bwlimit("j1", 20 << 20).unwrap(), 1);
        assert_eq!(j.request_bwlimit("j1", 0).unwrap(), 2);
        j.bwlimit_applied("j1", 1).unwrap();
        let c = j.bwlimit_changes("j1").unwrap();
        assert_eq!(c.len(), 2);
        assert_eq!((c[0].bytes_per_sec, c[1].bytes_per_sec), (20 << 20, 0));
        assert!(c[0].applied_at.is_some() && c[1].applied_at.is_none());
        assert!(j.request_bwlimit("nope", 1).is_err());
        assert_eq!(j.progress("j1").unwrap(), None);
        let p = ProgressRecord {
            phase: "copy".into(),
            done_bytes: 5,
            total_bytes: 10,
            rate_bytes_per_sec: 2,
            eta_ms: Some(2500),
            updated_at: String::new(),
        };
        j.set_progress("j1", &p).unwrap();
        j.set_progress("j1", &ProgressRecord { done_bytes: 6, ..p })
            .unwrap();
        let got = j.progress("j1").unwrap().unwrap();
        assert_eq!(
            (got.done_bytes, got.total_bytes, got.eta_ms),
            (6, 10, Some(2500))
        );
    }
}
