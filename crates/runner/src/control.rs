//! Commands on recorded jobs: cancel, roll back, change the bandwidth of a running job.
//! A job running in another process is reached through the journal: the request is
//! recorded there and that process's [`crate::journal::Watch`] applies it.

use crate::error::IoContext;
use crate::handle::{ExitCode, JobCtx};
use crate::journal::{lock_job, open_journal, running_pid, shown_status};
use crate::state::update_report_status;
use crate::{JobEvent, Result};
use serde_json::json;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// How long `cancel` and `set` wait for the job's process to act on the request.
const WAIT_FOR_JOB: Duration = Duration::from_secs(60);

/// The refusal of a command on a domain job's per-disk offline job: the domain job owns the
/// definition, so the command must go through it.
fn child_refusal(job: &vmshift_journal::JobRecord, what: &str) -> Option<String> {
    let parent = job.facts["parent"].as_str()?;
    Some(format!(
        "job {} copies one disk of domain job {parent}: {what} {parent} instead (it keeps the domain's definition in step with its disks)",
        job.id
    ))
}

/// `vmshift cancel JOB [--keep-partial]`: a running job (in any process) is asked through
/// the journal to stop at its next chunk boundary or poll, and waited for (up to 60 s); a
/// job whose process is gone is closed here.
///
/// # Errors
/// Unknown job or a journal error; refusals return exit status 2.
pub(crate) fn cancel(ctx: &JobCtx, id: &str, keep_partial: bool) -> Result<ExitCode> {
    let j = open_journal()?;
    let job = j.job(id)?;
    if let Some(why) = child_refusal(&job, "cancel") {
        ctx.em.say(format!("vmshift: cancel refused: {why}"));
        return Ok(2);
    }
    // A cancelled job whose partial target was kept (`--keep-partial`) may be cancelled
    // again to discard it, as its closing line says.
    let discard = job.status == "cancelled" && job.partial_state == "kept" && !keep_partial;
    if !matches!(job.status.as_str(), "running" | "failed" | "interrupted") && !discard {
        ctx.em.say(format!(
            "vmshift: job {} is {}: nothing to cancel",
            job.id, job.status
        ));
        return Ok(2);
    }
    if let Some(pid) = running_pid(&job.id) {
        j.request_cancel(&job.id, keep_partial)?;
        ctx.em.say(format!(
            "vmshift: asked process {pid} to cancel job {}",
            job.id
        ));
        let t = Instant::now();
        while running_pid(&job.id).is_some() && j.job(&job.id)?.status == "running" {
            if t.elapsed() > WAIT_FOR_JOB {
                ctx.em
                    .say(format!("vmshift: job {} still running after 60 s", job.id));
                return Ok(1);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let after = j.job(&job.id)?;
        // A live job has no partial target (its targets are QEMU's, removed by the job).
        let partial = if after.partial.is_empty() || after.partial_state == "none" {
            String::new()
        } else {
            format!("; partial target {}", after.partial_state)
        };
        ctx.em.say(format!(
            "vmshift: job {} is {}{partial}",
            after.id, after.status
        ));
        return Ok(if after.status == "cancelled" { 0 } else { 1 });
    }
    if job.kind == "live" {
        return crate::live::cancel::cancel_live(ctx, &j, &job, keep_partial);
    }
    if job.kind == "domain" {
        return crate::domain::control::cancel(ctx, &j, &job);
    }
    // Nobody runs it: close it here, holding its lock so no resume starts meanwhile.
    let _locks = lock_job(&job.id, Path::new(&job.destination))?;
    let state = if job.partial.is_empty() {
        job.partial_state.clone()
    } else if keep_partial {
        // Kept for a later resume, whatever the killed run left it as.
        if Path::new(&job.partial).exists() {
            "kept".to_string()
        } else {
            "removed".to_string()
        }
    } else {
        match std::fs::remove_file(&job.partial) {
            Ok(()) => "removed".into(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => "removed".into(),
            Err(e) => {
                return Err(crate::RunnerError::Io {
                    message: format!("cannot remove {}", job.partial),
                    source: e,
                })
            }
        }
    };
    j.set_partial_state(&job.id, &state)
        .and_then(|()| j.set_status(&job.id, "cancelled", Some("cancelled by vmshift cancel")))?;
    ctx.em.say(format!(
        "vmshift: job {} cancelled; partial target {state}",
        job.id
    ));
    Ok(0)
}

/// `vmshift resume JOB`: refuses a job that runs or cannot be resumed, then continues it
/// by its kind (see [`crate::offline::resume`] and [`crate::live::resume`]).
///
/// # Errors
/// A journal error (named); refusals print one line and return 2.
pub(crate) fn resume(ctx: &JobCtx, id: &str, report: Option<PathBuf>) -> Result<ExitCode> {
    let j = open_journal()?;
    let job = j.job(id)?;
    let refuse = |msg: String| {
        ctx.em.say(format!("vmshift: resume refused: {msg}"));
        Ok(2)
    };
    if let Some(why) = child_refusal(&job, "resume") {
        return refuse(why);
    }
    if let Some(pid) = running_pid(&job.id) {
        return refuse(format!(
            "job {} is running in vmshift process {pid}: wait for it or `vmshift cancel {}`",
            job.id, job.id
        ));
    }
    if !matches!(
        job.status.as_str(),
        "running" | "failed" | "cancelled" | "interrupted"
    ) {
        return refuse(format!(
            "job {} is {}: only interrupted, failed or cancelled jobs can be resumed",
            job.id,
            shown_status(&job)
        ));
    }
    match job.kind.as_str() {
        "live" => crate::live::resume::resume_live(ctx, j, job, report),
        "offline" => crate::offline::resume::run_resume(ctx, j, job, report),
        "domain" => crate::domain::control::resume(ctx, j, job, report),
        other => refuse(format!("job {} has an unknown kind {other:?}", job.id)),
    }
}

/// `vmshift set JOB --bwlimit N`: records the change in the journal and waits (up to 60 s)
/// until the job's process has applied it (offline: the engine's throttle; live:
/// `block-job-set-speed` on each mirror). 0 lifts the limit.
///
/// # Errors
/// Unknown job or a journal error; a job that is not running is refused (exit status 2).
pub(crate) fn set_bwlimit(ctx: &JobCtx, id: &str, bytes_per_sec: u64) -> Result<ExitCode> {
    let j = open_journal()?;
    let job = j.job(id)?;
    let Some(pid) = running_pid(&job.id).filter(|_| job.status == "running") else {
        ctx.em.say(format!(
            "vmshift: set refused: job {} is {}, not running: only a running job's bandwidth can change (a resume takes --bwlimit from the job's options)",
            job.id,
            shown_status(&job)
        ));
        return Ok(2);
    };
    let seq = j.request_bwlimit(&job.id, bytes_per_sec)?;
    let shown = vmshift_core::format_limit(bytes_per_sec);
    let t = Instant::now();
    loop {
        let applied = j
            .bwlimit_changes(&job.id)?
            .into_iter()
            .find(|c| c.seq == seq)
            .and_then(|c| c.applied_at);
        if let Some(at) = applied {
            ctx.em.say(format!(
                "vmshift: job {} bandwidth limit {shown} (applied by process {pid} at {at})",
                job.id
            ));
            ctx.em.emit(JobEvent::Result {
                value: json!({"job_id": job.id, "bwlimit_bytes_per_sec": bytes_per_sec, "applied_at": at, "pid": pid}),
            });
            return Ok(0);
        }
        if running_pid(&job.id).is_none() || t.elapsed() > WAIT_FOR_JOB {
            ctx.em.say(format!(
                "vmshift: job {} did not apply the bandwidth limit {shown} (it ended or does not answer)",
                job.id
            ));
            return Ok(1);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `vmshift rollback JOB`: undoes a succeeded job. Offline: the source must still exist and
/// no VM may hold the target; the target is deleted, the job (and its report) become
/// `rolled_back`, and the references to restore are printed. Live: see
/// [`crate::live::rollback::rollback_live`].
///
/// # Errors
/// Unknown job or a journal error; refusals return exit status 2.
pub(crate) fn rollback(ctx: &JobCtx, id: &str) -> Result<ExitCode> {
    let j = open_journal()?;
    let job = j.job(id)?;
    let refuse = |msg: String| {
        ctx.em.say(format!("vmshift: rollback refused: {msg}"));
        Ok(2)
    };
    if let Some(why) = child_refusal(&job, "roll back") {
        return refuse(why);
    }
    if job.status != "succeeded" {
        return refuse(format!(
            "job {} is {}, only a succeeded job can be rolled back",
            job.id,
            shown_status(&job)
        ));
    }
    if job.kind == "live" {
        return crate::live::rollback::rollback_live(ctx, &j, &job);
    }
    if job.kind == "domain" {
        return crate::domain::control::rollback(ctx, &j, &job);
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
        if let Some(why) = crate::offline::rollback::refusal(&job) {
            return refuse(why);
        }
        if let Ok(vmshift_core::plan::LockState::Held { pids, .. }) =
            vmshift_image::lock::probe(dest)
        {
            return refuse(format!(
                "{} is in use by a running VM (pids {pids:?}): stop it or point it back at {} first",
                job.destination, job.source
            ));
        }
        std::fs::remove_file(dest)
            .io_context(|| format!("cannot delete the target {}", job.destination))?;
    }
    let format = job.options["format"]
        .as_str()
        .map(str::to_string)
        .unwrap_or_default();
    let references = vec![format!(
        "point the VM back at {} instead of {} (e.g. virsh edit DOMAIN: <source file=...> and <driver type=...>, or the -drive/-blockdev filename of your QEMU command line)",
        job.source, job.destination
    )];
    mark_rolled_back(&j, &job, &references)?;
    ctx.em.say(format!(
        "vmshift: job {} rolled back: deleted {}; the source {} is unchanged",
        job.id, job.destination, job.source
    ));
    for r in &references {
        ctx.em.say(format!("restore: {r}"));
    }
    ctx.em.emit(JobEvent::Result {
        value: json!({"job_id": job.id, "status": "rolled_back", "deleted": job.destination,
               "source": job.source, "format": format, "references": references}),
    });
    Ok(0)
}

/// Records a rollback that removed the job's copies: the job becomes `rolled_back` with its
/// partial target `removed`, a `rollback` phase row is added, and its report says what to
/// restore (`references`).
///
/// # Errors
/// The journal cannot be written.
pub(crate) fn mark_rolled_back(
    j: &vmshift_journal::Journal,
    job: &vmshift_journal::JobRecord,
    references: &[String],
) -> Result<()> {
    j.set_status(&job.id, "rolled_back", None)
        .and_then(|()| j.set_partial_state(&job.id, "removed"))?;
    j.phase_started(&job.id, job.runs, "rollback")
        .and_then(|()| j.phase_ended(&job.id, 0))?;
    if let Some(r) = &job.report {
        update_report_status(Path::new(r), references);
    }
    Ok(())
}

/// `vmshift jobs prune --older-than AGE`: forgets finished jobs last changed more than
/// `older_than` ago, with their reports (`<state>/reports/<job>.json` and `.md`); never a
/// running job or one whose partial target is kept for a resume.
///
/// # Errors
/// The journal cannot be opened or written.
pub(crate) fn prune(ctx: &JobCtx, older_than: Duration) -> Result<ExitCode> {
    let j = open_journal()?;
    let age = chrono::Duration::from_std(older_than).unwrap_or(chrono::Duration::MAX);
    let cutoff = chrono::Utc::now()
        .checked_sub_signed(age)
        .unwrap_or(chrono::DateTime::<chrono::Utc>::MIN_UTC)
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    let (jobs, _) = j.jobs()?;
    let mut pruned = Vec::new();
    for job in jobs.iter().filter(|job| {
        vmshift_core::job::prunable(&job.status, &job.partial_state, &job.updated_at, &cutoff)
            && running_pid(&job.id).is_none()
    }) {
        if let Some(r) = &job.report {
            let r = Path::new(r);
            let _ = std::fs::remove_file(r);
            let _ = std::fs::remove_file(r.with_extension("md"));
        }
        j.delete_job(&job.id)?;
        pruned.push(job.id.clone());
    }
    ctx.em.say(format!(
        "vmshift: pruned {} job(s) last changed before {cutoff}, with their reports",
        pruned.len()
    ));
    ctx.em.emit(JobEvent::Result {
        value: json!({"pruned": pruned, "before": cutoff}),
    });
    Ok(0)
}
