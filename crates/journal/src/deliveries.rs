//! Delivery records: each notification (a webhook call or the notify command) sent for a
//! job's event, with its attempts and how it ended.

use crate::error::JournalError;
use crate::store::{now, Journal};
use rusqlite::params;
use serde::Serialize;

/// A notification about to be sent (recorded `pending`, no attempt yet).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewDelivery {
    /// Delivery id (a UUID; the webhook's `X-Vmshift-Delivery` header).
    pub id: String,
    /// The job the event belongs to.
    pub job_id: String,
    /// The hook's name, or `command` for the notify command.
    pub target: String,
    /// The event name (`job.started`, `job.phase`, `job.succeeded`, …).
    pub event: String,
}

/// What one attempt (or giving up) changed about a delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeliveryUpdate {
    /// Attempts made so far.
    pub attempts: u32,
    /// `pending` (will be retried), `delivered`, `failed` (retried for the configured time)
    /// or `abandoned` (the process ended before it could be delivered).
    pub state: String,
    /// The last HTTP status, or the command's exit status.
    pub last_status: Option<i64>,
    /// The last error, one line (`None` when the last attempt succeeded).
    pub last_error: Option<String>,
}

/// A delivery as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DeliveryRecord {
    /// Delivery id.
    pub id: String,
    /// The job.
    pub job_id: String,
    /// The hook's name, or `command`.
    pub target: String,
    /// The event name.
    pub event: String,
    /// Attempts made.
    pub attempts: u32,
    /// `pending`, `delivered`, `failed` or `abandoned`.
    pub state: String,
    /// The last HTTP status, or the command's exit status.
    pub last_status: Option<i64>,
    /// The last error, one line.
    pub last_error: Option<String>,
    /// RFC 3339 time the event was queued.
    pub created_at: String,
    /// RFC 3339 time of the last attempt or state change.
    pub updated_at: String,
}

impl Journal {
    /// Records a new delivery, state `pending`, no attempts.
    ///
    /// # Errors
    /// [`JournalError`] on a database error (a duplicate id included).
    pub fn record_delivery(&self, d: &NewDelivery) -> Result<(), JournalError> {
        let t = now();
        self.conn
            .execute(
                "INSERT INTO deliveries (id, job_id, target, event, attempts, state, created_at, updated_at)
                 VALUES (?1, ?2, ?3, ?4, 0, 'pending', ?5, ?5)",
                params![d.id, d.job_id, d.target, d.event, t],
            )
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    /// Records an attempt's result (or the end of the delivery) for delivery `id`; an
    /// unknown id changes nothing.
    ///
    /// # Errors
    /// [`JournalError`] on a database error.
    pub fn update_delivery(&self, id: &str, u: &DeliveryUpdate) -> Result<(), JournalError> {
        self.conn
            .execute(
                "UPDATE deliveries SET attempts = ?1, state = ?2, last_status = ?3, last_error = ?4,
                    updated_at = ?5 WHERE id = ?6",
                params![u.attempts, u.state, u.last_status, u.last_error, now(), id],
            )
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    /// The job's deliveries, in the order they were queued.
    ///
    /// # Errors
    /// [`JournalError`] on a database error (a journal older than schema 3, opened
    /// read-only, has no `deliveries` table).
    pub fn deliveries(&self, job_id: &str) -> Result<Vec<DeliveryRecord>, JournalError> {
        let mut stmt = self
            .conn
            .prepare(
                "SELECT id, job_id, target, event, attempts, state, last_status, last_error,
                    created_at, updated_at
                 FROM deliveries WHERE job_id = ?1 ORDER BY created_at, rowid",
            )
            .map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map(params![job_id], |r| {
                Ok(DeliveryRecord {
                    id: r.get(0)?,
                    job_id: r.get(1)?,
                    target: r.get(2)?,
                    event: r.get(3)?,
                    attempts: u32::try_from(r.get::<_, i64>(4)?).unwrap_or(0),
                    state: r.get(5)?,
                    last_status: r.get(6)?,
                    last_error: r.get(7)?,
                    created_at: r.get(8)?,
                    updated_at: r.get(9)?,
                })
            })
            .map_err(|e| self.err(e))?;
        rows.collect::<Result<_, _>>().map_err(|e| self.err(e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn new(id: &str, job: &str, event: &str) -> NewDelivery {
        NewDelivery {
            id: id.into(),
            job_id: job.into(),
            target: "chat".into(),
            event: event.into(),
        }
    }

    #[test]
    fn deliveries_are_listed_per_job_in_queue_order_with_their_last_attempt() {
        let dir = tempfile::tempdir().unwrap();
        let j = Journal::open(&dir.path().join("journal.sqlite")).unwrap();
        j.record_delivery(&new("d1", "job-a", "job.started"))
            .unwrap();
        j.record_delivery(&new("d2", "job-b", "job.started"))
            .unwrap();
        j.record_delivery(&new("d3", "job-a", "job.succeeded"))
            .unwrap();
        j.update_delivery(
            "d1",
            &DeliveryUpdate {
                attempts: 3,
                state: "delivered".into(),
                last_status: Some(200),
                last_error: None,
            },
        )
        .unwrap();
        j.update_delivery(
            "d3",
            &DeliveryUpdate {
                attempts: 1,
                state: "pending".into(),
                last_status: Some(500),
                last_error: Some("HTTP 500 Internal Server Error".into()),
            },
        )
        .unwrap();
        let a = j.deliveries("job-a").unwrap();
        assert_eq!(a.len(), 2);
        assert_eq!(
            (a[0].id.as_str(), a[0].attempts, a[0].state.as_str()),
            ("d1", 3, "delivered")
        );
        assert_eq!(a[0].last_status, Some(200));
        assert_eq!(a[0].last_error, None);
        assert_eq!(a[1].event, "job.succeeded");
        assert_eq!(a[1].last_status, Some(500));
        assert_eq!(
            a[1].last_error.as_deref(),
            Some("HTTP 500 Internal Server Error")
        );
        assert_eq!(j.deliveries("job-b").unwrap()[0].state, "pending");
        assert!(j.deliveries("job-c").unwrap().is_empty());
    }
}
