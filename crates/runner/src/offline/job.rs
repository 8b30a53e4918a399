//! The offline job: check → copy → verify → cut over → references → clean up → report.
//! Decisions come from `vmshift_core::plan`; this module gathers facts, records the job and
//! writes its outcome. The copy and what follows it are in [`super::execute`].

use super::check::{check_with, plan_lines, Checked};
use crate::files::{abs, partial_path};
use crate::handle::{ExitCode, JobCtx};
use crate::journal::{lock_job, open_journal, JournalLink, Watch};
use crate::phases::{now_rfc3339, PhaseClock};
use crate::request::{IoMode, OfflineRequest};
use crate::state::write_report;
use crate::Result;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Instant;
use vmshift_core::report::{ImageSide, JobError, Report};
use vmshift_core::{format_bytes, JobKind, JobStatus, Phase};
use vmshift_image::chain::Chain;

/// Chunk size of the digest passes, and of copies with direct I/O, bytes.
pub const CHUNK: u64 = 8 << 20;

/// Chunk size of buffered copies, bytes. Each chunk's buffer is read into, zero-checked,
/// written, hashed and read back into: at 2 MiB the workers' buffers stay in the CPU's
/// caches between those steps (tmpfs, 2 GiB raw→raw, 5 runs each: 1.02 s and 1.2
/// CPU-seconds against 1.13 s and 1.45 at 8 MiB; verified 1.33 s against 1.52 s). Direct
/// I/O keeps 8 MiB requests: the disk, not the CPU, is its limit (2.26 s against 2.59 s).
pub const BUFFERED_CHUNK: u64 = 2 << 20;

/// Chunk size of a new copy: [`BUFFERED_CHUNK`] or, with `direct`, [`CHUNK`]; limited to
/// `bwlimit` bytes/s, about a quarter second of data, so the limit holds within a short
/// window (1 MiB up to that size, whole MiB). A resumed job keeps the chunk size its journal
/// recorded: its chunk indices depend on it.
pub fn copy_chunk(bwlimit: u64, direct: bool) -> u64 {
    let base = if direct { CHUNK } else { BUFFERED_CHUNK };
    if bwlimit == 0 {
        base
    } else {
        (bwlimit / 4).clamp(1 << 20, base) >> 20 << 20
    }
}

/// A resume in progress: the job's journal, its locks and what may be reused.
pub struct Resuming {
    /// The open journal (run already started).
    pub link: JournalLink,
    /// The job and target locks, held for the run.
    pub locks: Vec<vmshift_journal::FileLock>,
    /// Chunks proven reusable (empty: copy everything into a fresh target).
    pub chunks: Vec<vmshift_journal::ChunkRecord>,
    /// Reuse the existing partial target (else it is created anew).
    pub reuse_partial: bool,
    /// Bytes the partial target already occupies (credited in the space check).
    pub partial_credit: u64,
    /// Notes for the report (what was proven, what restarted).
    pub notes: Vec<String>,
    /// The chunk size the job's journal recorded, bytes (0: none recorded).
    pub chunk_size: u64,
}

/// The source facts recorded when a job starts, to prove on resume that it has not changed.
pub fn source_facts(chain: &Chain, crash_consistent: bool) -> serde_json::Value {
    let layers: Vec<serde_json::Value> = chain
        .layers
        .iter()
        .map(|l| {
            let m = std::fs::metadata(&l.path).ok();
            serde_json::json!({
                "path": abs(&l.path),
                "size": m.as_ref().map_or(0, |m| m.len()),
                "mtime_ns": m.as_ref().map_or(0, |m| i128::from(m.mtime()) * 1_000_000_000 + i128::from(m.mtime_nsec())).to_string(),
            })
        })
        .collect();
    serde_json::json!({"layers": layers, "crash_consistent": crash_consistent})
}

/// Records a new job whose check passed (status `running`) and takes its locks.
/// `Ok(Err(message))` when another process holds the job or its target.
fn record_new_job(
    ctx: &JobCtx,
    args: &OfflineRequest,
    c: &Checked,
    journal: vmshift_journal::Journal,
) -> Result<std::result::Result<(JournalLink, Vec<vmshift_journal::FileLock>), String>> {
    let locks = if c.plan.go() {
        match lock_job(&ctx.job_id, &c.target_path) {
            Ok(l) => l,
            Err(e) => return Ok(Err(e.to_string())),
        }
    } else {
        Vec::new()
    };
    let mut options = args.clone();
    options.source = PathBuf::from(abs(&args.source));
    options.to = PathBuf::from(abs(&c.target_path));
    options.report = None;
    let new = vmshift_journal::NewJob {
        id: ctx.job_id.clone(),
        kind: "offline".into(),
        source: abs(&args.source),
        destination: abs(&c.target_path),
        partial: abs(&partial_path(&c.target_path)),
        options: serde_json::to_value(&options)?,
        facts: {
            let mut f = c.chain.as_ref().map_or(serde_json::json!({}), |ch| {
                source_facts(ch, c.plan.crash_consistent)
            });
            // A domain job's disk: `resume`, `cancel` and `rollback` go through that job.
            if let Some(parent) = &ctx.parent {
                f["parent"] = serde_json::Value::String(parent.clone());
            }
            f
        },
        chunk_size: copy_chunk(args.bwlimit.unwrap_or(0), args.io == IoMode::Direct),
        total_bytes: 0,
    };
    journal.create_job(&new)?;
    let link = JournalLink {
        journal: Arc::new(Mutex::new(journal)),
        id: ctx.job_id.clone(),
        run: 1,
    };
    Ok(Ok((link, locks)))
}

/// Runs an offline job: a new one, or `resuming` an interrupted one.
///
/// # Errors
/// The journal cannot be opened or written, or the report cannot be written.
pub(crate) fn run_job(
    ctx: &JobCtx,
    args: &OfflineRequest,
    resuming: Option<Resuming>,
) -> Result<ExitCode> {
    let em = &ctx.em;
    // Open the journal first: a damaged one stops the job before anything happens.
    let journal = match (&resuming, args.no_journal) {
        (None, false) => Some(open_journal()?),
        _ => None,
    };
    let started = Instant::now();
    let mut report = Report::new(&ctx.job_id, JobKind::Offline, &now_rfc3339());
    let mut clock = PhaseClock::new(em);
    em.emit(crate::JobEvent::Job {
        job_id: ctx.job_id.clone(),
        kind: JobKind::Offline,
        resumed: Some(resuming.is_some()),
    });
    em.say(format!(
        "vmshift: job {}{}",
        ctx.job_id,
        if resuming.is_some() {
            " (resumed)"
        } else if args.no_journal {
            // Not in the journal: `status`, `resume` and `cancel` will not know this id.
            " (--no-journal: names the report only)"
        } else {
            ""
        }
    ));
    clock.enter(Phase::Check);
    let c = check_with(args, resuming.as_ref().map(|r| r.partial_credit));
    let mut _locks = Vec::new();
    let link = match (resuming.as_ref(), journal) {
        (Some(r), _) => Some(r.link.clone()),
        (None, Some(j)) => match record_new_job(ctx, args, &c, j)? {
            Ok((link, locks)) => {
                _locks = locks;
                Some(link)
            }
            Err(e) => {
                em.say(format!("vmshift: refused: {e}"));
                return Ok(2);
            }
        },
        (None, None) => None,
    };
    if let Some(l) = &link {
        l.note(|j, id| j.phase_started(id, l.run, "check"));
    }
    // Cancel requests and bandwidth changes from other processes (`vmshift cancel|set`).
    let watch = Watch::start(link.as_ref(), &ctx.control, em);
    clock.link = link.clone();
    report.source = c.source.clone();
    report.backing = c.plan.backing.clone();
    report.notes = c.plan.notes.clone();
    report.warnings.extend(c.plan.warnings.iter().cloned());
    if let Some(r) = &resuming {
        report.notes.extend(r.notes.iter().cloned());
    }
    report.destination = ImageSide {
        path: abs(&c.target_path),
        format: c.plan.target_format.as_str().into(),
        virtual_size: c.plan.target_virtual_size,
        allocated_bytes: 0,
        backing_chain: Vec::new(),
    };
    let code = if !c.plan.go() {
        report.status = JobStatus::Refused;
        report.error = Some(JobError {
            phase: Phase::Check,
            message: c
                .plan
                .problems
                .iter()
                .map(|p| p.one_line())
                .collect::<Vec<_>>()
                .join("; "),
        });
        2
    } else {
        for l in plan_lines(&c) {
            em.say(l);
        }
        // The plan counts the whole image; a resume copies only what no checkpoint holds.
        if let Some(r) = resuming.as_ref().filter(|r| !r.chunks.is_empty()) {
            let reused: u64 = r.chunks.iter().map(|ch| ch.data).sum();
            em.say(format!(
                "reused       {} of it from earlier runs ({} journaled chunks); the rest is copied now",
                vmshift_core::format_bytes(reused),
                r.chunks.len()
            ));
        }
        let run = super::execute::Run {
            args,
            c: &c,
            ctx,
            link: link.as_ref(),
            resuming: resuming.as_ref(),
        };
        match run.execute(&mut clock, &mut report) {
            Ok(()) => {
                report.status = JobStatus::Succeeded;
                0
            }
            Err(message) => {
                report.status = if ctx.control.is_interrupted() {
                    JobStatus::Interrupted
                } else if ctx.control.is_cancelled() {
                    JobStatus::Cancelled
                } else {
                    JobStatus::Failed
                };
                report.error = Some(JobError {
                    phase: clock.current(),
                    message,
                });
                1
            }
        }
    };
    report.bwlimit_changes = watch.stop();
    clock.enter(Phase::Report);
    clock.end();
    report.phases = std::mem::take(&mut clock.done);
    report.duration_ms = vmshift_core::millis(started.elapsed());
    finish(
        ctx,
        args,
        &c,
        &mut report,
        link.as_ref(),
        resuming.is_some(),
    )?;
    Ok(code)
}

/// Writes the report, records the outcome in the journal and tells the front end.
fn finish(
    ctx: &JobCtx,
    args: &OfflineRequest,
    c: &Checked,
    report: &mut Report,
    link: Option<&JournalLink>,
    resumed: bool,
) -> Result<()> {
    let em = &ctx.em;
    // Never write the extra report where the check found it would destroy something.
    let extra_report = if c.plan.problems.iter().any(|p| p.code == "report_path") {
        None
    } else {
        args.report.as_deref()
    };
    let path = write_report(report, extra_report)?;
    if let Some(l) = link {
        let partial = partial_path(&c.target_path);
        // A resume refused at the check changed nothing: the job stays resumable (failed,
        // its partial target kept) once the cause is fixed.
        let resume_refused = resumed && report.status == JobStatus::Refused;
        let partial_state = match report.status {
            JobStatus::Succeeded => "final",
            JobStatus::Refused if !resume_refused => "none",
            _ if partial.exists() => "kept",
            _ => "removed",
        };
        let error = report.error.as_ref().map(|e| e.message.clone());
        let status = if resume_refused {
            JobStatus::Failed.as_str()
        } else {
            report.status.as_str()
        };
        let path_s = path.display().to_string();
        l.note(|j, id| {
            j.phase_ended(id, 0)?;
            j.set_partial_state(id, partial_state)?;
            j.set_report(id, &path_s)?;
            j.set_status(id, status, error.as_deref())
        });
        if partial_state == "kept" {
            em.say(format!(
                "vmshift: the partial target {} was kept: `vmshift resume {}` continues from the last checkpoint, `vmshift cancel {}` removes it",
                partial.display(),
                ctx.job_id,
                ctx.job_id
            ));
        }
    }
    match &report.error {
        Some(e) => em.say(format!(
            "vmshift: {}: {}",
            report.status.as_str(),
            e.message
        )),
        None => em.say(format!(
            "vmshift: succeeded: {} → {} ({}{} copied, {}{} zero skipped, verification {})",
            report.source.path,
            report.destination.path,
            if report.data_bytes > report.bytes_copied {
                format!(
                    "{} of data read, {} of it zero blocks; ",
                    format_bytes(report.data_bytes),
                    format_bytes(report.data_bytes - report.bytes_copied)
                )
            } else {
                String::new()
            },
            format_bytes(report.bytes_copied),
            if report.bytes_reused > 0 {
                format!(
                    "{} reused from earlier runs, ",
                    format_bytes(report.bytes_reused)
                )
            } else {
                String::new()
            },
            format_bytes(report.bytes_skipped_zero),
            report.verification.result
        )),
    }
    for w in &report.warnings {
        em.emit(crate::JobEvent::Warning { message: w.clone() });
    }
    // What to change next ends the console, as for live moves, not only the report.
    if report.status == JobStatus::Succeeded {
        for r in &report.references {
            em.say(format!("vmshift: next: {r}"));
        }
    }
    em.say(format!("report: {}", path.display()));
    em.report(report, &path);
    Ok(())
}
