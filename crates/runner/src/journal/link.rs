//! Jobs in the journal: opening it, locking jobs and targets, checkpointing a running copy,
//! and the `jobs`, `status`, `cancel` and `rollback` commands.

use crate::offline::ExitCode;
use crate::state::state_dir;
use anyhow::{anyhow, Result};
use serde_json::json;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use vmshift_copy::{ChunkDone, CopyError};
use vmshift_core::format_bytes;
use vmshift_image::TargetImage;
use vmshift_journal::lock::{holder, target_lock_name};
use vmshift_journal::{ChunkRecord, FileLock, JobRecord, Journal, LockError, JOURNAL_FILE};

/// Checkpoint at least every this many guest bytes of copied chunks. 64 MiB is 8 default
/// chunks: a crash costs at most this (plus what was in flight) to copy again, while the
/// `fsync` + one SQLite commit per checkpoint stays far below 5% of copy time (measured: see
/// the README's "Journal overhead").
pub const CHECKPOINT_BYTES: u64 = 64 << 20;

/// Checkpoint at least every this long while chunks complete, so a slow (bandwidth-limited)
/// copy loses at most ~2 s of work; at 50 MiB/s that is 100 MiB → bounded by the byte rule
/// first. Two seconds keeps fsync calls rare enough on slow disks.
pub const CHECKPOINT_INTERVAL: Duration = Duration::from_secs(2);

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
    Journal::open(&path).map_err(|e| anyhow!("{e}"))
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
    let refuse = |e: LockError| match e {
        LockError::Held { what, pid, .. } => anyhow!(
            "{what} is in use by vmshift process {pid}: wait for it, or `vmshift cancel` its job"
        ),
        other => anyhow!("{other}"),
    };
    let job = FileLock::acquire(&job_lock_path(id)?, &format!("job {id}")).map_err(refuse)?;
    let tgt = FileLock::acquire(
        &lock_dir()?.join(target_lock_name(target)),
        &format!("target {}", target.display()),
    )
    .map_err(refuse)?;
    Ok(vec![job, tgt])
}

/// The pid of the live process running job `id`, if any.
pub fn running_pid(id: &str) -> Option<u32> {
    holder(&job_lock_path(id).ok()?)
}

/// A job's status as users see it: a `running` job whose process is gone is `interrupted`.
pub fn shown_status(j: &JobRecord) -> String {
    if j.status == "running" && running_pid(&j.id).is_none() {
        "interrupted".into()
    } else {
        j.status.clone()
    }
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

struct Pending {
    chunks: Vec<ChunkRecord>,
    bytes: u64,
    since: Instant,
    count: u32,
}

/// Records copied chunks in the journal: target `fsync` first, then one transaction, at
/// most every [`CHECKPOINT_BYTES`] or [`CHECKPOINT_INTERVAL`]. Checkpoints run on their own
/// thread ([`Checkpointer::run`]) so copy workers never wait for an fsync.
pub struct Checkpointer<'a> {
    link: &'a JournalLink,
    target: &'a TargetImage,
    partial: &'a Path,
    pending: Mutex<Pending>,
    flushing: Mutex<()>,
    /// The first checkpoint failure: its message, and the I/O error kind when the target's
    /// fsync failed (so running out of space is told as such).
    failed: Mutex<Option<(String, Option<std::io::ErrorKind>)>>,
}

impl<'a> Checkpointer<'a> {
    /// A checkpointer for `target` (the file at `partial`).
    pub fn new(link: &'a JournalLink, target: &'a TargetImage, partial: &'a Path) -> Self {
        Checkpointer {
            link,
            target,
            partial,
            pending: Mutex::new(Pending {
                chunks: Vec::new(),
                bytes: 0,
                since: Instant::now(),
                count: 0,
            }),
            flushing: Mutex::new(()),
            failed: Mutex::new(None),
        }
    }

    /// The engine's per-chunk callback: queues the chunk for the next checkpoint.
    ///
    /// # Errors
    /// The error of an earlier checkpoint that could not be made durable
    /// ([`CopyError::Writeback`] or [`CopyError::Hook`], as [`Checkpointer::flush`]).
    pub fn chunk_done(&self, c: ChunkDone) -> Result<(), CopyError> {
        if let Some((msg, kind)) = self
            .failed
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
        {
            return Err(match kind {
                Some(k) => CopyError::Writeback(std::io::Error::new(k, msg)),
                None => CopyError::Hook(msg),
            });
        }
        let mut p = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        p.chunks.push(ChunkRecord {
            index: c.index,
            offset: c.offset,
            len: c.len,
            bytes: c.bytes,
            digest: c.digest,
            run: self.link.run,
        });
        p.bytes += c.len;
        Ok(())
    }

    /// The checkpoint loop: until `stop` is raised, checkpoints whenever
    /// [`CHECKPOINT_BYTES`] of chunks are queued or [`CHECKPOINT_INTERVAL`] has passed.
    /// A failure is remembered and stops the copy at its next chunk.
    pub fn run(&self, stop: &std::sync::atomic::AtomicBool) {
        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
            std::thread::sleep(Duration::from_millis(10));
            let due = {
                let p = self.pending.lock().unwrap_or_else(|e| e.into_inner());
                !p.chunks.is_empty()
                    && (p.bytes >= CHECKPOINT_BYTES || p.since.elapsed() >= CHECKPOINT_INTERVAL)
            };
            if due {
                if let Err(e) = self.flush() {
                    let kind = match &e {
                        CopyError::Writeback(io) => Some(io.kind()),
                        _ => None,
                    };
                    let msg = match e {
                        CopyError::Writeback(io) => io.to_string(),
                        e => e.to_string(),
                    };
                    *self.failed.lock().unwrap_or_else(|e| e.into_inner()) = Some((msg, kind));
                    return;
                }
            }
        }
    }

    /// Makes every completed chunk durable and records it (end of copy).
    ///
    /// # Errors
    /// [`CopyError::Writeback`] naming the file when its fsync failed (the error's kind
    /// kept: running out of space is told as such); [`CopyError::Hook`] when the journal
    /// could not record the checkpoint.
    pub fn flush(&self) -> Result<(), CopyError> {
        let _g = self.flushing.lock().unwrap_or_else(|e| e.into_inner());
        self.flush_now()
    }

    fn flush_now(&self) -> Result<(), CopyError> {
        let (batch, n) = {
            let mut p = self.pending.lock().unwrap_or_else(|e| e.into_inner());
            p.bytes = 0;
            p.since = Instant::now();
            p.count += 1;
            (std::mem::take(&mut p.chunks), p.count)
        };
        if batch.is_empty() {
            return Ok(());
        }
        // Data first: every chunk in `batch` finished its writes before it was queued.
        let t = Instant::now();
        self.target.sync().map_err(|e| {
            CopyError::Writeback(std::io::Error::new(
                e.kind(),
                format!(
                    "{}: fsync failed at a checkpoint: {e}",
                    self.partial.display()
                ),
            ))
        })?;
        test_kill_point(&format!("checkpoint:{n}"));
        let synced = t.elapsed();
        let mut j = self.link.journal.lock().unwrap_or_else(|e| e.into_inner());
        j.record_chunks(&self.link.id, &batch)
            .map_err(|e| CopyError::Hook(format!("checkpoint not recorded: {e}")))?;
        tracing::debug!(
            checkpoint = n,
            chunks = batch.len(),
            fsync_us = u64::try_from(synced.as_micros()).unwrap_or(u64::MAX),
            commit_us = u64::try_from((t.elapsed() - synced).as_micros()).unwrap_or(u64::MAX),
            "checkpoint recorded"
        );
        Ok(())
    }
}

fn progress(j: &JobRecord) -> String {
    if j.status == "succeeded" {
        return "100%".into();
    }
    // Live jobs journal no chunks (QEMU's mirror tracks its own progress).
    if j.total_bytes == 0 || j.kind != "offline" {
        return "-".into();
    }
    let pct = j.done_bytes.min(j.total_bytes) * 100 / j.total_bytes;
    format!("{pct}%")
}

fn job_json(j: &JobRecord) -> serde_json::Value {
    json!({
        "job_id": j.id, "kind": j.kind, "source": j.source, "destination": j.destination,
        "status": shown_status(j), "progress": {"done_bytes": j.done_bytes, "total_bytes": j.total_bytes},
        "started": j.created_at, "updated": j.updated_at, "error": j.error,
        "partial": j.partial, "partial_state": j.partial_state, "pid": running_pid(&j.id),
        "runs": j.runs, "report": j.report,
    })
}

/// Opens the journal for reading: read-only when it exists, so a damaged one is never
/// touched; a missing journal means no jobs.
fn read_journal() -> Result<Option<Journal>> {
    let path = journal_path()?;
    if !path.exists() {
        return Ok(None);
    }
    Journal::open_read_only(&path)
        .map(Some)
        .map_err(|e| anyhow!("{e}"))
}

/// `vmshift jobs [--json]`.
///
/// # Errors
/// A corrupt journal (named) when no job at all can be read.
pub fn run_jobs(json_out: bool) -> Result<ExitCode> {
    let Some(j) = read_journal()? else {
        if json_out {
            println!("[]");
        } else {
            println!("no jobs yet");
        }
        return Ok(0);
    };
    let (jobs, problems) = j.jobs().map_err(|e| anyhow!("{e}"))?;
    let damaged = j.integrity_check().err();
    if json_out {
        let v: Vec<_> = jobs.iter().map(job_json).collect();
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        println!(
            "{:<36}  {:<7}  {:<11}  {:>8}  {:<24}  SOURCE → DESTINATION",
            "JOB", "KIND", "STATUS", "PROGRESS", "STARTED"
        );
        for job in &jobs {
            println!(
                "{:<36}  {:<7}  {:<11}  {:>8}  {:<24}  {} → {}",
                job.id,
                job.kind,
                shown_status(job),
                progress(job),
                job.created_at,
                job.source,
                job.destination
            );
        }
    }
    for p in &problems {
        eprintln!("vmshift: warning: {p}");
    }
    if let Some(e) = &damaged {
        eprintln!("vmshift: warning: {e}");
    }
    Ok(if problems.is_empty() && damaged.is_none() {
        0
    } else {
        1
    })
}

/// `vmshift status JOB [--json]`.
///
/// # Errors
/// Unknown job, ambiguous prefix or an unreadable journal, named.
pub fn run_status(id: &str, json_out: bool) -> Result<ExitCode> {
    let j = read_journal()?.ok_or_else(|| {
        anyhow!("no job {id}: the journal does not exist yet (no job has run with this state directory)")
    })?;
    let job = j.job(id).map_err(|e| anyhow!("{e}"))?;
    let phases = j.phases(&job.id).map_err(|e| anyhow!("{e}"))?;
    if json_out {
        let mut v = job_json(&job);
        v["options"] = job.options.clone();
        v["phases"] = serde_json::to_value(&phases)?;
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(0);
    }
    println!("job          {}", job.id);
    println!("kind         {}", job.kind);
    println!("status       {}", shown_status(&job));
    if let Some(pid) = running_pid(&job.id) {
        println!("process      {pid}");
    }
    println!("source       {}", job.source);
    println!("destination  {}", job.destination);
    if job.kind == "offline" {
        println!(
            "progress     {} of {} durable ({})",
            format_bytes(job.done_bytes),
            format_bytes(job.total_bytes),
            progress(&job)
        );
    } else {
        println!(
            "progress     {} (QEMU's mirror of {}: the journal records its phases, not its bytes)",
            progress(&job),
            format_bytes(job.total_bytes)
        );
    }
    if !job.partial.is_empty() {
        println!("partial      {} ({})", job.partial, job.partial_state);
    }
    println!("runs         {}", job.runs);
    println!("started      {}", job.created_at);
    println!("updated      {}", job.updated_at);
    if let Some(e) = &job.error {
        println!("error        {e}");
    }
    if let Some(r) = &job.report {
        println!("report       {r}");
    }
    println!("phases:");
    for p in &phases {
        println!(
            "  run {} {:<10} {}  {}",
            p.run,
            p.phase,
            p.started_at,
            match p.duration_ms {
                Some(d) => format!("{d} ms"),
                None if p.run < job.runs || running_pid(&job.id).is_none() => {
                    "(interrupted)".to_string()
                }
                None => "(running)".to_string(),
            }
        );
    }
    Ok(0)
}

/// `vmshift cancel JOB [--keep-partial]`: asks the running process (SIGTERM, after recording
/// the request) to stop at the next chunk boundary and waits up to 60 s for it; a job whose
/// process is gone is closed here.
///
/// # Errors
/// Unknown job or a journal error.
pub fn run_cancel(id: &str, keep_partial: bool) -> Result<ExitCode> {
    let j = open_journal()?;
    let job = j.job(id).map_err(|e| anyhow!("{e}"))?;
    if !matches!(job.status.as_str(), "running" | "failed") {
        eprintln!(
            "vmshift: job {} is {}: nothing to cancel",
            job.id, job.status
        );
        return Ok(2);
    }
    if let Some(pid) = running_pid(&job.id) {
        j.request_cancel(&job.id, keep_partial)
            .map_err(|e| anyhow!("{e}"))?;
        let p = rustix::process::Pid::from_raw(i32::try_from(pid).unwrap_or(0))
            .ok_or_else(|| anyhow!("job {} has no valid pid in its lock file", job.id))?;
        rustix::process::kill_process(p, rustix::process::Signal::TERM)
            .map_err(|e| anyhow!("cannot signal process {pid} running job {}: {e}", job.id))?;
        eprintln!("vmshift: asked process {pid} to cancel job {}", job.id);
        let t = Instant::now();
        while running_pid(&job.id).is_some() {
            if t.elapsed() > Duration::from_secs(60) {
                eprintln!("vmshift: job {} still running after 60 s", job.id);
                return Ok(1);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let after = j.job(&job.id).map_err(|e| anyhow!("{e}"))?;
        eprintln!(
            "vmshift: job {} is {}; partial target {}",
            after.id, after.status, after.partial_state
        );
        return Ok(if after.status == "cancelled" { 0 } else { 1 });
    }
    if job.kind == "live" {
        return crate::live::cancel_live(&j, &job, keep_partial);
    }
    // Nobody runs it: close it here, holding its lock so no resume starts meanwhile.
    let _locks = lock_job(&job.id, Path::new(&job.destination))?;
    let state = if keep_partial || job.partial.is_empty() {
        job.partial_state.clone()
    } else {
        match std::fs::remove_file(&job.partial) {
            Ok(()) => "removed".into(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => "removed".into(),
            Err(e) => return Err(anyhow!("cannot remove {}: {e}", job.partial)),
        }
    };
    j.set_partial_state(&job.id, &state)
        .and_then(|()| j.set_status(&job.id, "cancelled", Some("cancelled by vmshift cancel")))
        .map_err(|e| anyhow!("{e}"))?;
    eprintln!("vmshift: job {} cancelled; partial target {state}", job.id);
    Ok(0)
}

/// `vmshift rollback JOB`: undoes a succeeded job. Offline: the source must still exist and
/// no VM may hold the target; the target is deleted, the job (and its report) become
/// `rolled_back`, and the references to restore are printed. Live: see
/// [`crate::live::rollback_live`].
///
/// # Errors
/// Unknown job or a journal error; refusals return exit status 2.
pub fn run_rollback(
    id: &str,
    json_out: bool,
    cancel: Arc<std::sync::atomic::AtomicBool>,
) -> Result<ExitCode> {
    let j = open_journal()?;
    let job = j.job(id).map_err(|e| anyhow!("{e}"))?;
    let refuse = |msg: String| {
        eprintln!("vmshift: rollback refused: {msg}");
        Ok(2)
    };
    if job.status != "succeeded" {
        return refuse(format!(
            "job {} is {}, only a succeeded job can be rolled back",
            job.id,
            shown_status(&job)
        ));
    }
    if job.kind == "live" {
        return crate::live::rollback_live(&j, &job, json_out, cancel);
    }
    let _locks = lock_job(&job.id, Path::new(&job.destination))?;
    let source = Path::new(&job.source);
    if !source.exists() {
        return refuse(format!(
            "the source {} no longer exists (deleted with --delete-source?): the target {} is the only copy, it is kept",
            job.source, job.destination
        ));
    }
    let dest = Path::new(&job.destination);
    if dest.exists() {
        if let Ok(vmshift_core::plan::LockState::Held { pids, .. }) =
            vmshift_image::lock::probe(dest)
        {
            return refuse(format!(
                "{} is in use by a running VM (pids {pids:?}): stop it or point it back at {} first",
                job.destination, job.source
            ));
        }
        std::fs::remove_file(dest)
            .map_err(|e| anyhow!("cannot delete the target {}: {e}", job.destination))?;
    }
    let format = job.options["format"]
        .as_str()
        .map(str::to_string)
        .unwrap_or_default();
    let references = vec![format!(
        "point the VM back at {} instead of {} (e.g. virsh edit DOMAIN: <source file=...> and <driver type=...>, or the -drive/-blockdev filename of your QEMU command line)",
        job.source, job.destination
    )];
    j.set_status(&job.id, "rolled_back", None)
        .and_then(|()| j.set_partial_state(&job.id, "removed"))
        .map_err(|e| anyhow!("{e}"))?;
    j.phase_started(&job.id, job.runs, "rollback")
        .and_then(|()| j.phase_ended(&job.id, 0))
        .map_err(|e| anyhow!("{e}"))?;
    if let Some(r) = &job.report {
        update_report_status(Path::new(r), &references);
    }
    if json_out {
        println!(
            "{}",
            json!({"job_id": job.id, "status": "rolled_back", "deleted": job.destination,
                   "source": job.source, "format": format, "references": references})
        );
    } else {
        eprintln!(
            "vmshift: job {} rolled back: deleted {}; the source {} is unchanged",
            job.id, job.destination, job.source
        );
        for r in &references {
            eprintln!("restore: {r}");
        }
    }
    Ok(0)
}

/// Marks the stored report (JSON and Markdown beside it) `rolled_back`.
pub(crate) fn update_report_status(json_path: &Path, references: &[String]) {
    let Ok(text) = std::fs::read_to_string(json_path) else {
        return;
    };
    let Ok(mut report) = serde_json::from_str::<vmshift_core::report::Report>(&text) else {
        return;
    };
    report.status = vmshift_core::JobStatus::RolledBack;
    report.references = references.to_vec();
    if let Ok(s) = serde_json::to_string_pretty(&report) {
        let _ = std::fs::write(json_path, s);
        let _ = std::fs::write(json_path.with_extension("md"), report.to_markdown());
    }
}
