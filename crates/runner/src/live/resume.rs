//! `vmshift resume JOB` of a live job: mirror again (interrupted before the pivot) or
//! finish the remaining phases (interrupted after it).

use super::migrate::{run_migrate_with, Continue, RunExtras};
use super::recorded::{job_vm, refuse, JobDisk, JobVm, Side};
use super::side;
use crate::error::IoContext;
use crate::handle::{ExitCode, JobCtx};
use crate::journal::JournalLink;
use crate::phases::now_rfc3339;
use crate::request::LiveRequest;
use crate::state::write_report;
use crate::Result;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;
use vmshift_core::report::{DiskReport, PhaseTiming, Report};
use vmshift_core::{JobKind, JobStatus, Phase};

/// `vmshift resume JOB` of a live job. Interrupted before the pivot (every disk still runs on
/// its source): clears what the killed process left in QEMU (its mirror jobs, waited for until
/// gone; its target nodes), deletes the partial target files and mirrors again under the same
/// job id. Interrupted after the pivot (every disk runs on its target): detaches the old nodes
/// still attached, deletes the sources only if the job asked for it, writes the report and
/// marks the job succeeded.
///
/// # Errors
/// Journal errors; refusals print one line and return 2.
pub(crate) fn resume_live(
    ctx: &JobCtx,
    j: vmshift_journal::Journal,
    job: vmshift_journal::JobRecord,
    report_file: Option<PathBuf>,
) -> Result<ExitCode> {
    let JobVm {
        locks,
        mut args,
        disks,
        mut qmp,
        sides,
    } = match job_vm(ctx, &job, "resume", " (stopped?)")? {
        Ok(v) => v,
        Err(code) => return Ok(code),
    };
    args.report = report_file;
    let cleared = vmshift_qmp::leftovers::clear(&mut qmp)?;
    if !cleared.problems.is_empty() {
        return refuse(
            ctx,
            "resume",
            &format!(
                "cannot clear what the interrupted run left in QEMU: {}",
                cleared.problems.join("; ")
            ),
        );
    }
    let mut notes = Vec::new();
    if !cleared.found.jobs.is_empty() || !cleared.found.nodes.is_empty() {
        notes.push(format!(
            "resume: cleared the interrupted run's leftovers in QEMU: jobs {:?} (cancelled and waited for, or dismissed), nodes {:?} (blockdev-del)",
            cleared.found.jobs.iter().map(|(id, st)| format!("{id} ({st})")).collect::<Vec<_>>(),
            cleared.found.nodes
        ));
    }
    if sides.iter().all(|s| *s == Side::Source) {
        // Before the pivot: the VM never left its sources; mirror again.
        for d in &disks {
            match std::fs::remove_file(&d.target) {
                Ok(()) => notes.push(format!(
                    "resume: removed the partial target {} of the interrupted run",
                    d.target.display()
                )),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    return refuse(
                        ctx,
                        "resume",
                        &format!(
                            "cannot remove the partial target {}: {e}",
                            d.target.display()
                        ),
                    )
                }
            }
        }
        for f in &cleared.found.files {
            if !disks.iter().any(|d| &d.target == f) {
                notes.push(format!(
                    "resume: {} was behind a node of another vmshift run; it was detached, not deleted",
                    f.display()
                ));
            }
        }
        notes.push(format!(
            "resume: the job was interrupted before the pivot (the VM still ran on its sources); mirrored again (run {})",
            job.runs + 1
        ));
        drop(qmp); // QEMU serves one QMP client at a time
        let run = j.start_run(&job.id)?;
        let link = JournalLink {
            journal: Arc::new(std::sync::Mutex::new(j)),
            id: job.id.clone(),
            run,
        };
        let cont = Continue {
            link,
            locks,
            targets: disks.iter().map(|d| d.target.clone()).collect(),
        };
        return run_migrate_with(
            ctx,
            &args,
            RunExtras {
                cont: Some(cont),
                notes,
                options: serde_json::Value::Null,
            },
        )
        .map(|(code, _)| code);
    }
    if sides.contains(&Side::Source) {
        let split: Vec<String> = disks
            .iter()
            .zip(&sides)
            .map(|(d, s)| format!("{} on its {:?}", d.device, s).to_lowercase())
            .collect();
        return refuse(ctx,
            "resume",
            &format!(
                "the disks are split between sources and targets ({}): a partial pivot cannot be resumed; move the remaining disks with `vmshift migrate --qmp {} --to {} --disk ID`",
                split.join(", "),
                args.qmp.display(),
                args.to.display()
            ),
        );
    }
    finish_after_pivot(ctx, &j, &job, &args, &disks, &mut qmp, notes)?;
    drop(locks);
    Ok(0)
}

/// Interrupted after the pivot: detaches the old nodes, deletes the sources if asked,
/// writes the report and marks the job succeeded.
fn finish_after_pivot(
    ctx: &JobCtx,
    j: &vmshift_journal::Journal,
    job: &vmshift_journal::JobRecord,
    args: &LiveRequest,
    disks: &[JobDisk],
    qmp: &mut vmshift_qmp::Qmp,
    notes: Vec<String>,
) -> Result<()> {
    let started = Instant::now();
    let run = j.start_run(&job.id)?;
    let _ = j.phase_started(&job.id, run, Phase::Cleanup.as_str());
    let mut report = Report::new(&job.id, JobKind::Live, &now_rfc3339());
    report.notes = notes;
    report.notes.push(
        "resume: the job was interrupted after the pivot (the VM already ran on its targets); finished its remaining phases"
            .into(),
    );
    let cleanup_started = now_rfc3339();
    for d in disks {
        let detached = vmshift_qmp::leftovers::detach_file(qmp, &d.source)?;
        let mut deleted = false;
        if !detached {
            report.warnings.push(format!(
                "{}: QEMU still holds the old image {}",
                d.device, d.source
            ));
        } else if args.delete_source && Path::new(&d.source).exists() {
            std::fs::remove_file(&d.source)
                .io_context(|| format!("cannot delete the source {}", d.source))?;
            deleted = true;
        }
        report.source_deleted |= deleted;
        let format = if crate::files::has_qcow2_magic(&d.target) {
            "qcow2"
        } else {
            "raw"
        };
        report.disks.push(DiskReport {
            device: d.device.clone(),
            old_path: d.source.clone(),
            new_path: d.target.display().to_string(),
            format: format.into(),
            bytes: 0,
            copy_mode: String::new(),
            copy_mode_reason: String::new(),
            pivot_ms: None,
            time_to_ready_ms: None,
        });
        report.references.push(format!(
            "start the VM with {} (format {format}) instead of {} for device {}",
            d.target.display(),
            d.source,
            d.device
        ));
    }
    if let Some(d) = disks.first() {
        let virtual_size = job.facts["disks"][0]["virtual_size"].as_u64().unwrap_or(0);
        report.source = side(Path::new(&d.source), "", virtual_size);
        report.destination = side(
            &d.target,
            report.disks.first().map_or("", |r| r.format.as_str()),
            virtual_size,
        );
    }
    report.status = JobStatus::Succeeded;
    report.verification.algorithm = "qemu-mirror".into();
    report.verification.result = "skipped".into();
    report.phases.push(PhaseTiming {
        name: Phase::Cleanup,
        started_at: cleanup_started,
        duration_ms: vmshift_core::millis(started.elapsed()),
    });
    report.duration_ms = vmshift_core::millis(started.elapsed());
    let path = write_report(&report, args.report.as_deref())?;
    let _ = j.phase_ended(&job.id, vmshift_core::millis(started.elapsed()));
    j.set_partial_state(&job.id, "none")
        .and_then(|()| j.set_report(&job.id, &path.display().to_string()))
        .and_then(|()| j.set_status(&job.id, "succeeded", None))?;
    for n in &report.notes {
        ctx.em.say(format!("vmshift: {n}"));
    }
    ctx.em.say(format!(
        "vmshift: job {} succeeded; report: {}",
        job.id,
        path.display()
    ));
    ctx.em.report(&report, &path);
    Ok(())
}
