//! The journal as running jobs use it: opening it, locking jobs and targets, recording
//! progress ([`checkpoint`]) and hearing requests from other processes ([`watch`]).

pub mod checkpoint;
pub mod watch;

pub use checkpoint::{Checkpointer, CHECKPOINT_BYTES, CHECKPOINT_INTERVAL};
pub use watch::Watch;

use crate::state::state_dir;
use crate::{Result, RunnerError};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use vmshift_journal::lock::{holder, target_lock_name};
use vmshift_journal::{FileLock, JobRecord, Journal, LockError, JOURNAL_FILE};

/// The journal file in the state directory.
///
/// # Errors
/// When the state directory cannot be created.
pub fn journal_path() -> Result<PathBuf> {
    Ok(state_dir()?.join(JOURNAL_FILE))
}

/// Opens the journal read-write.
///
/// # Errors
/// The journal's one-line error (corrupt file named, with a hint).
pub fn open_journal() -> Result<Journal> {
    let path = journal_path()?;
    Ok(Journal::open(&path)?)
}

/// Opens the journal for reading: read-only when it exists, so a damaged one is never
/// touched; `None` when no job has run with this state directory.
///
/// # Errors
/// The journal's one-line error.
pub fn read_journal() -> Result<Option<Journal>> {
    let path = journal_path()?;
    // Missing, or empty (created but never written, or emptied): no jobs.
    if std::fs::metadata(&path).map_or(true, |m| m.len() == 0) {
        return Ok(None);
    }
    let j = Journal::open_read_only(&path)?;
    // Another process created it a moment ago and is writing its schema.
    if j.is_blank()? {
        return Ok(None);
    }
    Ok(Some(j))
}

fn lock_dir() -> Result<PathBuf> {
    Ok(state_dir()?.join("locks"))
}

/// The lock file of a job.
///
/// # Errors
/// When the state directory cannot be created.
pub fn job_lock_path(id: &str) -> Result<PathBuf> {
    Ok(lock_dir()?.join(format!("job-{id}.lock")))
}

/// Takes the job lock and the target-path lock (in that order).
///
/// # Errors
/// A one-line refusal naming the holder's pid.
pub fn lock_job(id: &str, target: &Path) -> Result<Vec<FileLock>> {
    lock_job_on(id, target, &format!("target {}", target.display()))
}

/// Takes the job lock and the lock of a libvirt domain (one vmshift job per domain: its
/// disks' own offline child jobs lock their targets).
///
/// # Errors
/// A one-line refusal naming the holder's pid.
pub fn lock_domain_job(id: &str, uri: &str, name: &str) -> Result<Vec<FileLock>> {
    let key = PathBuf::from(format!("libvirt:{uri}#{name}"));
    lock_job_on(id, &key, &format!("domain {name}"))
}

/// Takes the job lock alone: a job its parent started, which holds the other locks.
///
/// # Errors
/// A one-line refusal naming the holder's pid.
pub fn lock_child_job(id: &str) -> Result<Vec<FileLock>> {
    FileLock::acquire(&job_lock_path(id)?, &format!("job {id}"))
        .map(|l| vec![l])
        .map_err(|e| RunnerError::msg(e.to_string()))
}

fn lock_job_on(id: &str, key: &Path, what: &str) -> Result<Vec<FileLock>> {
    let refuse = |e: LockError| match e {
        LockError::Held { what, pid, .. } => RunnerError::msg(format!(
            "{what} is in use by vmshift process {pid}: wait for it, or `vmshift cancel` its job"
        )),
        other => RunnerError::msg(other.to_string()),
    };
    let job = FileLock::acquire(&job_lock_path(id)?, &format!("job {id}")).map_err(refuse)?;
    let tgt = FileLock::acquire(&lock_dir()?.join(target_lock_name(key)), what).map_err(refuse)?;
    Ok(vec![job, tgt])
}

/// The pid of the live process running job `id`, if any.
pub fn running_pid(id: &str) -> Option<u32> {
    holder(&job_lock_path(id).ok()?)
}

/// A job's status as users see it: a `running` job whose process is gone is `interrupted`.
/// The record may have been read just before its job ended and let go of its lock (the
/// final status is journaled before the lock goes): then the journal is read again, so a
/// job that just succeeded never shows as interrupted.
pub fn shown_status(j: &JobRecord) -> String {
    if j.status != "running" || running_pid(&j.id).is_some() {
        return j.status.clone();
    }
    match open_journal().map(|jr| settled(&jr, j.clone())) {
        Ok(now) if now.status != "running" => now.status,
        _ => "interrupted".into(),
    }
}

/// `rec` as the journal has it now when it was read just before its job ended (a
/// `running` record no process holds): its final status, report and error, not a mix of
/// the old record and the new status.
pub fn settled(journal: &Journal, rec: JobRecord) -> JobRecord {
    if rec.status != "running" || running_pid(&rec.id).is_some() {
        return rec;
    }
    journal.job(&rec.id).unwrap_or(rec)
}

/// A job as JSON, as `vmshift jobs --json` and `GET /api/v1/jobs` show it: id, kind,
/// source, destination, status (as [`shown_status`]), journaled `progress` {done_bytes,
/// total_bytes}, times (RFC 3339), error, partial target, pid, runs, report path; a running
/// job adds its process's latest progress sample (`now`).
pub fn job_json(j: &JobRecord, journal: &Journal) -> serde_json::Value {
    let now = journal
        .progress(&j.id)
        .ok()
        .flatten()
        .filter(|_| running_pid(&j.id).is_some());
    serde_json::json!({
        "now": now,
        "job_id": j.id, "kind": j.kind, "source": j.source, "destination": j.destination,
        "status": shown_status(j), "progress": {"done_bytes": j.done_bytes, "total_bytes": j.total_bytes},
        "started": j.created_at, "updated": j.updated_at, "error": j.error,
        "partial": j.partial, "partial_state": j.partial_state, "pid": running_pid(&j.id),
        "runs": j.runs, "report": j.report,
    })
}

/// The journal as a running job uses it: shared between the job and its checkpointer.
#[derive(Clone)]
pub struct JournalLink {
    /// The open journal.
    pub journal: Arc<Mutex<Journal>>,
    /// The job.
    pub id: String,
    /// This run's number (1 = first run).
    pub run: u32,
}

impl JournalLink {
    /// Closes a job that keeps no partial target (live and domain jobs): the last phase
    /// ends, the report at `report_path` and the report's status and error are recorded.
    pub fn close(&self, report: &vmshift_core::report::Report, report_path: &Path) {
        let error = report.error.as_ref().map(|e| e.message.clone());
        let status = report.status.as_str();
        let path = report_path.display().to_string();
        self.note(|j, id| {
            j.phase_ended(id, 0)?;
            j.set_partial_state(id, "none")?;
            j.set_report(id, &path)?;
            j.set_status(id, status, error.as_deref())
        });
    }

    /// Runs `f` on the journal; errors are logged, not fatal (status bookkeeping only).
    pub fn note(
        &self,
        f: impl FnOnce(&Journal, &str) -> Result<(), vmshift_journal::JournalError>,
    ) {
        let j = self.journal.lock().unwrap_or_else(|p| p.into_inner());
        if let Err(e) = f(&j, &self.id) {
            tracing::warn!("journal update failed: {e}");
            eprintln!("vmshift: warning: {e}");
        }
    }
}

/// A test-only crash point: when `VMSHIFT_TEST_SIGKILL_AT` equals `point` in a debug build,
/// the process sends itself SIGKILL right here (a real kill, no cleanup). Release builds
/// ignore the variable. Points: `checkpoint:N` (after the Nth checkpoint's fsync, before its
/// journal commit), `cutover` (after the last commit and verification, before the rename)
/// and `renamed` (after the rename, before the journal records success); live jobs:
/// `live:pivoted` (every disk pivoted, old nodes still attached, nothing recorded yet).
pub fn test_kill_point(point: &str) {
    if cfg!(debug_assertions) && std::env::var("VMSHIFT_TEST_SIGKILL_AT").is_ok_and(|v| v == point)
    {
        let _ =
            rustix::process::kill_process(rustix::process::getpid(), rustix::process::Signal::KILL);
        std::thread::sleep(Duration::from_secs(10));
    }
}
