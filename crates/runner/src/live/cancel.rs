//! `vmshift cancel JOB` of a live job whose process is gone.

use super::recorded::{job_vm, refuse, JobVm, Side};
use crate::handle::{ExitCode, JobCtx};
use crate::Result;

/// `vmshift cancel JOB` of a live job whose process is gone (killed, host crash). Before the
/// pivot (every disk still on its source): cancels the mirror jobs the dead process left in
/// QEMU and waits until they are gone, deletes our nodes and, unless `keep_partial`, the
/// partial target files; the job becomes `cancelled`. After the pivot the VM runs on the
/// targets, so nothing is undone: resume or rollback is the way on. An unreachable VM is
/// refused too: without QEMU there is no telling whether a target is already the live disk.
///
/// # Errors
/// Journal errors; refusals print one line and return 2.
pub(crate) fn cancel_live(
    ctx: &JobCtx,
    j: &vmshift_journal::Journal,
    job: &vmshift_journal::JobRecord,
    keep_partial: bool,
) -> Result<ExitCode> {
    let JobVm {
        locks: _locks,
        disks,
        mut qmp,
        sides,
        ..
    } = match job_vm(
        ctx,
        job,
        "cancel",
        ", so vmshift cannot tell whether a target is already its disk",
    )? {
        Ok(v) => v,
        Err(code) => return Ok(code),
    };
    if !sides.iter().all(|s| *s == Side::Source) {
        return refuse(ctx,
            "cancel",
            &format!(
                "the VM already runs on the targets of job {} (the pivot happened): `vmshift resume {}` finishes the job, `vmshift rollback {}` moves the disks back",
                job.id, job.id, job.id
            ),
        );
    }
    let cleared = vmshift_qmp::leftovers::clear(&mut qmp)?;
    if !cleared.problems.is_empty() {
        return refuse(
            ctx,
            "cancel",
            &format!(
                "cannot clear what the interrupted run left in QEMU: {}",
                cleared.problems.join("; ")
            ),
        );
    }
    let mut state = "none".to_string();
    if !keep_partial {
        for d in &disks {
            match std::fs::remove_file(&d.target) {
                Ok(()) => state = "removed".into(),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    return Err(crate::RunnerError::Io {
                        message: format!("cannot remove the partial target {}", d.target.display()),
                        source: e,
                    })
                }
            }
        }
    } else {
        state = "kept".into();
    }
    j.set_partial_state(&job.id, &state)
        .and_then(|()| j.set_status(&job.id, "cancelled", Some("cancelled by vmshift cancel")))?;
    ctx.em.say(format!(
        "vmshift: job {} cancelled: {} mirror job(s) and {} node(s) cleared in QEMU, the VM runs on its sources; partial targets {state}",
        job.id,
        cleared.found.jobs.len(),
        cleared.found.nodes.len()
    ));
    Ok(0)
}
