//! `vmshift rollback JOB` of a succeeded live job: the disks are mirrored back live.

use super::connect;
use super::migrate::{run_migrate_with, RunExtras};
use super::recorded::{job_args, job_disks, refuse, where_disks_run, JobDisk, Side};
use crate::error::IoContext;
use crate::handle::{ExitCode, JobCtx};
use crate::journal::lock_job;
use crate::request::LiveRequest;
use crate::{JobEvent, Result};
use serde_json::json;
use std::path::{Path, PathBuf};

/// `vmshift rollback JOB` of a succeeded live job: the VM must run on the job's targets; each
/// disk is mirrored back live to its recorded source directory (a new job, `rollback_of` the
/// original), the stale old source files are removed first, the copies at the job's
/// destination are deleted after the pivot back, and the original job becomes `rolled_back`.
///
/// # Errors
/// Journal errors; refusals print one line and return 2.
pub(crate) fn rollback_live(
    ctx: &JobCtx,
    j: &vmshift_journal::Journal,
    job: &vmshift_journal::JobRecord,
) -> Result<ExitCode> {
    let orig = job_args(job)?;
    let disks = job_disks(job)?;
    let _locks = match lock_job(&job.id, Path::new(&job.destination)) {
        Ok(l) => l,
        Err(e) => return refuse(ctx, "rollback", &e.to_string()),
    };
    let mut dirs: Vec<PathBuf> = disks
        .iter()
        .map(|d| {
            Path::new(&d.source)
                .parent()
                .map(Path::to_path_buf)
                .unwrap_or_default()
        })
        .collect();
    dirs.dedup();
    if dirs.len() != 1 {
        return refuse(ctx,
            "rollback",
            &format!(
                "the disks came from several directories {dirs:?}: move each back with `vmshift migrate --qmp {} --to DIR --disk ID`",
                orig.qmp.display()
            ),
        );
    }
    let mut qmp = match connect(&orig.qmp) {
        Ok(q) => q,
        Err(e) => {
            return refuse(
                ctx,
                "rollback",
                &format!(
                    "{e:#}: the VM of job {} is not reachable; nothing was changed",
                    job.id
                ),
            )
        }
    };
    match where_disks_run(&mut qmp, &disks) {
        Ok(s) if s.iter().all(|s| *s == Side::Target) => {}
        Ok(_) => {
            return refuse(
                ctx,
                "rollback",
                &format!(
                    "the VM does not run on the job's targets {:?}; nothing was changed",
                    disks
                        .iter()
                        .map(|d| d.target.display().to_string())
                        .collect::<Vec<_>>()
                ),
            )
        }
        Err(m) => return refuse(ctx, "rollback", &format!("{m}; nothing was changed")),
    }
    let mut notes = vec![format!("rollback of live job {}", job.id)];
    if let Some(code) = remove_stale_sources(ctx, &mut qmp, &disks, &mut notes)? {
        return Ok(code);
    }
    drop(qmp);
    let back = move_back_request(&orig, &disks, dirs.remove(0));
    notes.push(format!(
        "rollback: the copies at {} are deleted after the pivot back (the VM runs on the old paths again)",
        orig.to.display()
    ));
    // The move back is a job of its own, with its own id.
    let back_ctx = ctx.child(vmshift_core::JobId::new().0);
    let (code, new_id) = run_migrate_with(
        &back_ctx,
        &back,
        RunExtras {
            cont: None,
            notes,
            options: json!({"rollback_of": job.id}),
        },
    )?;
    if code != 0 {
        ctx.em.say(format!(
            "vmshift: rollback of job {} did not complete (job {new_id}); job {} stays succeeded",
            job.id, job.id
        ));
        return Ok(code);
    }
    let references: Vec<String> = disks
        .iter()
        .map(|d| {
            format!(
                "start the VM with {} instead of {} for device {} (rolled back by job {new_id})",
                d.source,
                d.target.display(),
                d.device
            )
        })
        .collect();
    j.set_status(&job.id, "rolled_back", None)?;
    let _ = j
        .phase_started(&job.id, job.runs, "rollback")
        .and_then(|()| j.phase_ended(&job.id, 0));
    if let Some(r) = &job.report {
        crate::state::update_report_status(Path::new(r), &references);
    }
    ctx.em.say(format!(
        "vmshift: job {} rolled back by job {new_id}: the VM runs on {} again",
        job.id,
        disks
            .iter()
            .map(|d| d.source.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    ));
    ctx.em.emit(JobEvent::Result {
        value: json!({"job_id": job.id, "status": "rolled_back", "rollback_job": new_id,
               "references": references}),
    });
    Ok(0)
}

/// Detaches and deletes each disk's old source (stale since the pivot: the guest wrote to
/// the target). `Ok(Some(2))` after a refusal, with nothing changed for that disk.
fn remove_stale_sources(
    ctx: &JobCtx,
    qmp: &mut vmshift_qmp::Qmp,
    disks: &[JobDisk],
    notes: &mut Vec<String>,
) -> Result<Option<ExitCode>> {
    for d in disks {
        if !Path::new(&d.source).exists() {
            notes.push(format!(
                "rollback: {} was deleted after the move (--delete-source); the whole disk was mirrored back",
                d.source
            ));
            continue;
        }
        // The old source is stale: the guest has written to the target since the pivot.
        if !vmshift_qmp::leftovers::detach_file(qmp, &d.source)? {
            return refuse(
                ctx,
                "rollback",
                &format!(
                    "QEMU still holds the old source {}; nothing was changed",
                    d.source
                ),
            )
            .map(Some);
        }
        if let Ok(vmshift_core::plan::LockState::Held { pids, .. }) =
            vmshift_image::lock::probe(Path::new(&d.source))
        {
            return refuse(
                ctx,
                "rollback",
                &format!(
                    "the old source {} is in use by processes {pids:?}; nothing was changed",
                    d.source
                ),
            )
            .map(Some);
        }
        std::fs::remove_file(&d.source)
            .io_context(|| format!("cannot remove the stale source {}", d.source))?;
        notes.push(format!(
            "rollback: removed the stale old source {} before mirroring back: it stopped receiving guest writes at the pivot, so it cannot seed the copy (no dirty bitmap spans the time since), and the mirror needs its name and space",
            d.source
        ));
    }
    Ok(None)
}

/// The live move back: every disk of the job to its old directory, in the source format
/// when all disks agree on it, deleting the job's copies after the pivot back.
fn move_back_request(orig: &LiveRequest, disks: &[JobDisk], to: PathBuf) -> LiveRequest {
    let mut back = LiveRequest {
        qmp: orig.qmp.clone(),
        to,
        disks: disks.iter().map(|d| d.device.clone()).collect(),
        format: None,
        shallow: orig.shallow,
        bwlimit: orig.bwlimit,
        copy_mode: orig.copy_mode,
        ready_timeout: orig.ready_timeout,
        delete_source: true,
        report: None,
        no_journal: false,
    };
    // One format for all disks: the recorded source format when they agree.
    let formats: Vec<_> = disks.iter().map(|d| d.source_format).collect();
    if formats.windows(2).all(|w| w[0] == w[1]) {
        back.format = formats.first().copied().flatten();
    }
    back
}
