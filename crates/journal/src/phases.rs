//! Phase records: when each phase of each run started and ended.

use crate::error::JournalError;
use crate::store::{now, to_i64, to_u64, Journal};
use rusqlite::{params, OptionalExtension};
use serde::Serialize;

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

impl Journal {
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
}
