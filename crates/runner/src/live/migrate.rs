//! A live move: plan, record, mirror every disk (`vmshift_qmp::LiveMigration`), pivot,
//! report. Before the pivot any failure leaves the VM on its sources.

use super::{connect, live_options, ms_ceil, plan_lines, side};
use crate::event::{DiskProgress, JobEvent, Progress};
use crate::handle::{ExitCode, JobCtx};
use crate::journal::{lock_job, open_journal, test_kill_point, JournalLink, Watch};
use crate::phases::{now_rfc3339, PhaseClock};
use crate::request::LiveRequest;
use crate::state::write_report;
use crate::{Result, RunnerError};
use serde_json::json;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use vmshift_core::report::{DiskReport, JobError, Report};
use vmshift_core::{format_bytes, JobKind, JobStatus, Phase};
use vmshift_qmp::live::LiveError;
use vmshift_qmp::{LiveMigration, LiveOutcome, LivePlan, LiveProgress};

/// An existing journaled job that a run continues (`vmshift resume` of a live job
/// interrupted before its pivot): its journal run and its locks.
pub struct Continue {
    /// The journal link (with the new run number).
    pub link: JournalLink,
    /// The job and target locks, already held.
    pub locks: Vec<vmshift_journal::FileLock>,
    /// The targets the job recorded: the new plan must name exactly these.
    pub targets: Vec<PathBuf>,
}

/// What `resume` and `rollback` add to a live run.
#[derive(Default)]
pub struct RunExtras {
    /// Continue this job instead of creating one.
    pub cont: Option<Continue>,
    /// Lines for the report's notes.
    pub notes: Vec<String>,
    /// Extra keys recorded in a new job's journaled options (e.g. `rollback_of`).
    pub options: serde_json::Value,
}

/// Records the live job in the journal and takes its locks, so `vmshift jobs` lists it and
/// `vmshift cancel JOB` reaches it.
fn journal_start(
    job_id: &str,
    plan: &LivePlan,
    a: &LiveRequest,
    extra: &serde_json::Value,
) -> Result<(JournalLink, Vec<vmshift_journal::FileLock>)> {
    let j = open_journal()?;
    let first = plan
        .disks
        .first()
        .ok_or_else(|| RunnerError::msg("the plan has no disk"))?;
    let locks = lock_job(job_id, &first.target)?;
    let mut options = json!({"qmp": a.qmp, "to": a.to, "disks": a.disks, "bwlimit": a.bwlimit,
                "copy_mode": a.copy_mode, "shallow": a.shallow, "delete_source": a.delete_source,
                "format": a.format, "ready_timeout": a.ready_timeout});
    if let (Some(o), Some(e)) = (options.as_object_mut(), extra.as_object()) {
        o.extend(e.clone());
    }
    let new = vmshift_journal::NewJob {
        id: job_id.to_owned(),
        kind: "live".into(),
        source: first.disk.file.clone(),
        destination: first.target.display().to_string(),
        partial: String::new(),
        options,
        facts: json!({"disks": plan.disks.iter().map(|d| json!({"device": d.disk.device,
            "source": d.disk.file, "target": d.target, "virtual_size": d.disk.virtual_size,
            "source_format": d.disk.format, "target_format": d.format.as_str()})).collect::<Vec<_>>()}),
        chunk_size: 0,
        total_bytes: plan.disks.iter().map(|d| d.disk.virtual_size).sum(),
    };
    j.create_job(&new)?;
    Ok((
        JournalLink {
            journal: Arc::new(Mutex::new(j)),
            id: job_id.to_owned(),
            run: 1,
        },
        locks,
    ))
}

/// Turns the driver's progress into events: phase changes, notes, progress (≤ 4/s).
struct ProgressRelay<'a> {
    ctx: &'a JobCtx,
    clock: &'a mut PhaseClock,
    last: Instant,
}

impl ProgressRelay<'_> {
    fn on(&mut self, p: &LiveProgress) {
        if p.phase == "pivoted" {
            test_kill_point("live:pivoted");
        }
        // After the pivot the old nodes are detached ("pivoted" → "done"): cleanup, as is the
        // undo of a failed job ("cleanup").
        self.clock.enter(match p.phase {
            "sampling" | "copying" => Phase::Copy,
            "pivoting" => Phase::Cutover,
            _ => Phase::Cleanup,
        });
        if let Some(n) = &p.note {
            self.ctx.em.note(n.clone());
        }
        if p.phase == "copying" && self.last.elapsed() >= Duration::from_millis(250) {
            self.last = Instant::now();
            self.ctx.em.emit(JobEvent::Progress(Progress {
                phase: "copy".into(),
                done_bytes: p.total.done,
                total_bytes: p.total.total,
                rate_bytes_per_sec: p.rate,
                eta_ms: p.eta.map(vmshift_core::millis),
                disks: p
                    .disks
                    .iter()
                    .map(|d| DiskProgress {
                        device: d.device.clone(),
                        done_bytes: d.progress.done,
                        total_bytes: d.progress.total,
                        ready: d.ready,
                        waiting_for_ready: d.waiting_for_ready,
                        copy_mode: d.copy_mode.as_qmp().to_owned(),
                    })
                    .collect(),
            }));
        }
    }
}

/// Runs a live move (a new job, or `extras.cont` continued). Returns the exit status and
/// the job id.
///
/// # Errors
/// QEMU cannot be reached or the report cannot be written.
pub(crate) fn run_migrate_with(
    ctx: &JobCtx,
    a: &LiveRequest,
    extras: RunExtras,
) -> Result<(ExitCode, String)> {
    let em = &ctx.em;
    if let Some(why) = super::dest_problem(a) {
        em.say(format!("vmshift: refused: {why}"));
        return Ok((2, String::new()));
    }
    if let Some(p) = a
        .report
        .as_deref()
        .and_then(crate::safety::report_target_problem)
    {
        em.say(format!("vmshift: refused: {}", p.one_line()));
        return Ok((2, String::new()));
    }
    let started = Instant::now();
    let RunExtras {
        mut cont,
        notes,
        options: extra_options,
    } = extras;
    let job_id = ctx.job_id.clone();
    let mut report = Report::new(&job_id, JobKind::Live, &now_rfc3339());
    report.notes.extend(notes);
    em.emit(JobEvent::Job {
        job_id: job_id.clone(),
        kind: JobKind::Live,
        resumed: None,
    });
    // As offline: the id `status`, `set` and `cancel` take, before the (long) copy.
    em.say(format!("vmshift: job {job_id}"));
    let mut clock = PhaseClock::new(em);
    let mut _locks = Vec::new();
    clock.enter(Phase::Check);
    let mut qmp = connect(&a.qmp)?;
    let plan = LiveMigration::plan(&mut qmp, &live_options(a))
        .and_then(|p| crate::safety::check_live_plan(p, a.delete_source));
    let mut watch = None;
    let result: std::result::Result<(LivePlan, LiveOutcome), (Phase, LiveError)> = match plan {
        Err(e) => Err((Phase::Check, e)),
        Ok((plan, warnings)) => {
            for w in warnings {
                em.say(format!("vmshift: warning: {w}"));
            }
            for l in plan_lines(&plan) {
                em.say(l);
            }
            let link = match record(ctx, a, &plan, cont.take(), &extra_options, &mut _locks) {
                Ok(link) => link,
                Err(code) => return Ok((code, job_id)),
            };
            if let Some(l) = &link {
                l.note(|j, id| j.phase_started(id, l.run, Phase::Check.as_str()));
            }
            watch = Some(Watch::start(link.as_ref(), &ctx.control, em));
            clock.link = link;
            if let Some(d) = plan.disks.first() {
                report.source = side(&d.disk.path(), &d.disk.format, d.disk.virtual_size);
                report.source.backing_chain = d
                    .disk
                    .backing_chain
                    .iter()
                    .map(|b| b.filename.clone())
                    .collect();
            }
            let mut relay = ProgressRelay {
                ctx,
                clock: &mut clock,
                last: Instant::now() - Duration::from_secs(5),
            };
            match LiveMigration::run_with_limit(
                &mut qmp,
                &plan,
                Some(&ctx.control.rate),
                &mut |p| relay.on(p),
                &ctx.control.cancel,
            ) {
                Ok(out) => Ok((plan, out)),
                Err(e) => {
                    let ph = match &e {
                        LiveError::PivotFailed { .. } => Phase::Cutover,
                        _ => Phase::Copy,
                    };
                    Err((ph, e))
                }
            }
        }
    };
    clock.end();
    if let Some(c) = cont.take() {
        // Refused before the plan: still record the outcome on the continued job.
        clock.link = Some(c.link);
    }
    let code = match result {
        Ok((plan, out)) => {
            succeeded(&mut report, &plan, &out);
            for w in out.disks.iter().flat_map(|d| &d.warnings) {
                em.emit(JobEvent::Warning { message: w.clone() });
            }
            0
        }
        Err((phase, e)) => failed(&mut report, phase, &e),
    };
    report.bwlimit_changes = watch.map(Watch::stop).unwrap_or_default();
    report.phases = std::mem::take(&mut clock.done);
    report.duration_ms = vmshift_core::millis(started.elapsed());
    let path = write_report(&report, a.report.as_deref())?;
    if let Some(l) = &clock.link {
        l.close(&report, &path);
    }
    summarize(ctx, &report);
    em.say(format!("report: {}", path.display()));
    em.report(&report, &path);
    Ok((code, job_id))
}

/// Fills the report of a live move that pivoted.
fn succeeded(report: &mut Report, plan: &LivePlan, out: &LiveOutcome) {
    report.status = JobStatus::Succeeded;
    if let (Some(d), Some(p)) = (out.disks.first(), plan.disks.first()) {
        report.destination = side(&d.new_path, d.format.as_str(), d.virtual_size);
        if p.sync == vmshift_qmp::live::SyncMode::Top {
            report.backing = "kept".into();
            report.destination.backing_chain = report.source.backing_chain.clone();
        } else if !p.disk.backing_chain.is_empty() {
            report.backing = "flattened".into();
        }
    }
    report.source_deleted = out.disks.iter().all(|d| d.source_deleted) && !out.disks.is_empty();
    report.bytes_copied = out.disks.iter().map(|d| d.bytes).sum();
    report.throughput_bytes_per_sec = vmshift_core::rate_bytes_per_sec(
        report.bytes_copied,
        (out.duration_ms as f64 / 1000.0).max(1e-3),
    );
    report.pivot_ms = Some(ms_ceil(out.pivot_ms));
    report.disks = out
        .disks
        .iter()
        .map(|d| DiskReport {
            device: d.device.clone(),
            old_path: d.old_path.display().to_string(),
            new_path: d.new_path.display().to_string(),
            format: d.format.as_str().to_owned(),
            bytes: d.bytes,
            copy_mode: d.copy_mode.as_qmp().to_owned(),
            copy_mode_reason: d.mode_reason.clone(),
            pivot_ms: Some(ms_ceil(d.pivot_ms)),
            time_to_ready_ms: Some(d.time_to_ready_ms),
        })
        .collect();
    report.references = out.disks.iter().map(|d| d.next_start.clone()).collect();
    report.verification.algorithm = "qemu-mirror".into();
    report.verification.verified_bytes = 0;
    report.verification.result = "skipped".into();
    report.warnings.push(
        "live: the copy is QEMU's mirror (ready, then pivot); no independent digest of a disk the guest keeps writing"
            .into(),
    );
    for d in &out.disks {
        report.warnings.extend(d.warnings.iter().cloned());
        if !d.old_nodes_detached {
            report.warnings.push(format!(
                "{}: QEMU still holds the old image {}",
                d.device,
                d.old_path.display()
            ));
        }
    }
    report.notes.push(format!("QEMU {}", out.qemu_version));
}

/// Fills the report of a live move that was refused, failed or cancelled; returns the exit
/// status (2 refused, 1 otherwise).
fn failed(report: &mut Report, phase: Phase, e: &LiveError) -> ExitCode {
    report.status = match e {
        LiveError::Refused(_) | LiveError::NoSuchDisk { .. } | LiveError::Unsupported { .. } => {
            JobStatus::Refused
        }
        e if e.is_cancelled() => JobStatus::Cancelled,
        _ => JobStatus::Failed,
    };
    report.error = Some(JobError {
        phase,
        message: if report.status == JobStatus::Refused
            || phase == Phase::Cutover
            || matches!(e, LiveError::CleanupIncomplete { .. } | LiveError::Qmp(_))
        {
            // Only claim the VM is safe on its sources when the undo was confirmed.
            e.to_string()
        } else {
            format!("{e}; the VM still runs on its source disks, the targets were removed")
        },
    });
    if report.status == JobStatus::Refused {
        2
    } else {
        1
    }
}

/// The closing lines for people.
fn summarize(ctx: &JobCtx, report: &Report) {
    let em = &ctx.em;
    match &report.error {
        Some(e) => em.say(format!(
            "vmshift: {}: {}",
            report.status.as_str(),
            e.message
        )),
        None => {
            for d in &report.disks {
                em.say(format!(
                    "vmshift: {} moved {} -> {} ({}, {} copied, {} mode, ready after {} ms, pivot {} ms)",
                    d.device,
                    d.old_path,
                    d.new_path,
                    d.format,
                    format_bytes(d.bytes),
                    d.copy_mode,
                    d.time_to_ready_ms.unwrap_or(0),
                    d.pivot_ms.unwrap_or(0)
                ));
            }
            for r in &report.references {
                em.say(format!("vmshift: next start: {r}"));
            }
        }
    }
}

/// The job's journal link: the continued job's (its targets must be the plan's), a new
/// job recorded with its locks, or none with `--no-journal`. `Err(2)` after a refusal.
fn record(
    ctx: &JobCtx,
    a: &LiveRequest,
    plan: &LivePlan,
    cont: Option<Continue>,
    extra: &serde_json::Value,
    locks: &mut Vec<vmshift_journal::FileLock>,
) -> std::result::Result<Option<JournalLink>, ExitCode> {
    if let Some(c) = cont {
        let planned: Vec<PathBuf> = plan.disks.iter().map(|d| d.target.clone()).collect();
        if planned != c.targets {
            let msg = format!(
                "the VM's disks now map to the targets {planned:?}, the job recorded {:?}: start a new migration",
                c.targets
            );
            c.link.note(|j, id| j.set_status(id, "failed", Some(&msg)));
            ctx.em.say(format!("vmshift: resume refused: {msg}"));
            return Err(2);
        }
        *locks = c.locks;
        Ok(Some(c.link))
    } else if !a.no_journal {
        match journal_start(&ctx.job_id, plan, a, extra) {
            Ok((link, l)) => {
                *locks = l;
                Ok(Some(link))
            }
            Err(e) => {
                ctx.em.say(format!("vmshift: refused: {e}"));
                Err(2)
            }
        }
    } else {
        Ok(None)
    }
}
