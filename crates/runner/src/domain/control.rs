//! `resume`, `cancel` and `rollback` of a recorded domain job.

use super::job::{run_with, Continue};
use super::recorded::{clear_live_leftovers, job_domain, refuse, JobDomain, Side};
use crate::handle::{ExitCode, JobCtx};
use crate::journal::{running_pid, JournalLink};
use crate::{JobEvent, Result};
use serde_json::json;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use vmshift_libvirt::{DiskChange, DomainState};

fn split(jd: &JobDomain) -> String {
    jd.plan
        .disks
        .iter()
        .zip(&jd.sides)
        .map(|(d, s)| format!("{} on its {s:?}", d.target).to_lowercase())
        .collect::<Vec<_>>()
        .join(", ")
}

/// `vmshift resume JOB` of a domain job. Live, interrupted before the pivot: ends the block
/// jobs the killed run left, removes its targets and copies again. Live, interrupted after
/// the pivot: updates the definition and finishes. Shut off: each disk's offline job goes on
/// where it stopped (a verified disk is kept), then the definition is rewritten.
///
/// # Errors
/// Journal errors; refusals print one line and return 2.
pub(crate) fn resume(
    ctx: &JobCtx,
    j: vmshift_journal::Journal,
    job: vmshift_journal::JobRecord,
    report: Option<PathBuf>,
) -> Result<ExitCode> {
    let mut jd = match job_domain(ctx, &job, "resume")? {
        Ok(jd) => jd,
        Err(code) => return Ok(code),
    };
    jd.request.report = report;
    let was_running = jd.plan.state == DomainState::Running;
    let mut notes = Vec::new();
    let mut after_pivot = None;
    let mut done = Vec::new();
    if was_running {
        if jd.sides.iter().all(|s| *s == Side::Target) {
            after_pivot = Some(jd.plan);
        } else if jd.sides.iter().all(|s| *s == Side::Source) {
            if jd.state != DomainState::Running {
                return refuse(ctx, "resume", &format!(
                    "domain {} ran when the job started and is {} now: start it again, or `vmshift cancel {}` and move it shut off",
                    jd.plan.name, jd.state.as_str(), job.id
                ));
            }
            match clear_live_leftovers(&jd) {
                Ok(n) => notes.extend(n.into_iter().map(|n| format!("resume: {n}"))),
                Err(e) => return refuse(ctx, "resume", &e),
            }
        } else {
            return refuse(ctx, "resume", &format!(
                "the disks are split between sources and targets ({}): move the remaining ones with `vmshift migrate --domain {} --disk DEV`",
                split(&jd), jd.plan.name
            ));
        }
    } else {
        if jd.state != DomainState::ShutOff {
            return refuse(ctx, "resume", &format!(
                "domain {} was shut off when the job started and is {} now: shut it off to resume, or `vmshift cancel {}`",
                jd.plan.name, jd.state.as_str(), job.id
            ));
        }
        for id in jd.children.values() {
            if let Ok(c) = j.job(id) {
                if c.status == "succeeded" {
                    done.push(PathBuf::from(&c.destination));
                }
            }
        }
        notes.push(format!(
            "resume: {} of {} disk(s) verified by the earlier run",
            done.len(),
            jd.plan.disks.len()
        ));
    }
    let run = j.start_run(&job.id)?;
    let link = JournalLink {
        journal: Arc::new(Mutex::new(j)),
        id: job.id.clone(),
        run,
    };
    let cont = Continue {
        link,
        locks: jd.locks,
        notes,
        children: jd.children,
        done,
        after_pivot,
    };
    run_with(ctx, &jd.request, Some(cont))
}

/// `vmshift cancel JOB` of a domain job whose process is gone: ends its block jobs and
/// removes its targets (live, before the pivot), or cancels its disks' offline jobs and
/// removes the copies the definition does not name (shut off). The domain is not touched.
///
/// # Errors
/// Journal errors; refusals print one line and return 2.
pub(crate) fn cancel(
    ctx: &JobCtx,
    j: &vmshift_journal::Journal,
    job: &vmshift_journal::JobRecord,
) -> Result<ExitCode> {
    let jd = match job_domain(ctx, job, "cancel")? {
        Ok(jd) => jd,
        Err(code) => return Ok(code),
    };
    if jd.sides.contains(&Side::Target) {
        return refuse(ctx, "cancel", &format!(
            "domain {} already runs on the job's targets ({}): finish with `vmshift resume {}` or undo with a move back",
            jd.plan.name, split(&jd), job.id
        ));
    }
    let mut done = Vec::new();
    for id in jd.children.values() {
        if let Ok(c) = j.job(id) {
            if matches!(c.status.as_str(), "running" | "failed" | "interrupted")
                && running_pid(id).is_none()
            {
                if !c.partial.is_empty() {
                    let _ = std::fs::remove_file(&c.partial);
                }
                j.set_partial_state(id, "removed")?;
                j.set_status(id, "cancelled", Some("cancelled with its domain job"))?;
                done.push(format!("offline job {id} cancelled"));
            }
        }
    }
    match clear_live_leftovers(&jd) {
        Ok(n) => done.extend(n),
        Err(e) => return refuse(ctx, "cancel", &e),
    }
    j.set_partial_state(&job.id, "removed")?;
    j.set_status(&job.id, "cancelled", Some("cancelled by vmshift cancel"))?;
    ctx.em.say(format!(
        "vmshift: job {} cancelled; domain {} still uses its sources{}",
        job.id,
        jd.plan.name,
        if done.is_empty() {
            String::new()
        } else {
            format!(" ({})", done.join("; "))
        }
    ));
    Ok(0)
}

/// `vmshift rollback JOB` of a succeeded domain job: the domain goes back to its sources.
/// Shut off: the saved definition is defined again (exactly as it was, if nothing else in
/// it changed since; else only the disks are pointed back), then the copies are deleted.
/// Running: the disks are moved back live to their source directory (a new domain job that
/// deletes the copies once the definition names the sources again).
///
/// # Errors
/// Journal errors; refusals print one line and return 2.
pub(crate) fn rollback(
    ctx: &JobCtx,
    j: &vmshift_journal::Journal,
    job: &vmshift_journal::JobRecord,
) -> Result<ExitCode> {
    let jd = match job_domain(ctx, job, "rollback")? {
        Ok(jd) => jd,
        Err(code) => return Ok(code),
    };
    if let Some(d) = jd
        .plan
        .disks
        .iter()
        .zip(&jd.sides)
        .find(|(_, s)| **s != Side::Target)
    {
        return refuse(ctx, "rollback", &format!(
            "disk {} of domain {} no longer uses the job's target {}: the domain changed since; nothing was changed",
            d.0.target, jd.plan.name, d.0.dest.display()
        ));
    }
    let references = match jd.state {
        DomainState::ShutOff => rollback_offline(ctx, &jd)?,
        DomainState::Running => rollback_live(ctx, &jd, &job.id)?,
        other => Err(format!(
            "domain {} is {}: it must run or be shut off",
            jd.plan.name,
            other.as_str()
        )),
    };
    let references = match references {
        Ok(r) => r,
        Err(why) => return refuse(ctx, "rollback", &why),
    };
    crate::control::mark_rolled_back(j, job, &references)?;
    // The per-disk jobs' copies are gone with it.
    for id in jd.children.values() {
        if let Ok(c) = j.job(id) {
            crate::control::mark_rolled_back(j, &c, &references)?;
        }
    }
    if let Some(pool) = &jd.request.pool {
        if let Err(e) = jd.lv.refresh_pool(pool) {
            ctx.em.say(format!("vmshift: warning: {e}"));
        }
    }
    ctx.em.say(format!(
        "vmshift: job {} rolled back: domain {} uses its sources again",
        job.id, jd.plan.name
    ));
    for r in &references {
        ctx.em.say(format!("vmshift: {r}"));
    }
    ctx.em.emit(JobEvent::Result {
        value: json!({"job_id": job.id, "status": "rolled_back", "domain": jd.plan.name,
                      "references": references}),
    });
    Ok(0)
}

fn rollback_offline(
    ctx: &JobCtx,
    jd: &JobDomain,
) -> Result<std::result::Result<Vec<String>, String>> {
    let p = &jd.plan;
    if let Some(d) = p.disks.iter().find(|d| !d.source.exists()) {
        return Ok(Err(format!(
            "the source {} no longer exists (deleted with --delete-source?): the copy is the only one, it is kept",
            d.source.display()
        )));
    }
    let Some(old) = &p.inactive_xml else {
        return Ok(Err(format!("job of {} recorded no definition", p.name)));
    };
    let now = jd
        .dom
        .xml(true)
        .map_err(|e| crate::RunnerError::msg(e.to_string()))?;
    let to_new: Vec<DiskChange> = p
        .disks
        .iter()
        .map(|d| DiskChange {
            target: d.target.clone(),
            path: d.dest.clone(),
            format: d.dest_format.as_str().into(),
            drop_backing: !jd.request.keep_backing,
        })
        .collect();
    // Nothing else changed since the move: the saved definition goes back byte for byte.
    let untouched = vmshift_libvirt::rewrite(old, &to_new).is_ok_and(|x| x == now);
    let restored = if untouched {
        old.clone()
    } else {
        let back: Vec<DiskChange> = p
            .disks
            .iter()
            .map(|d| DiskChange {
                target: d.target.clone(),
                path: d.source.clone(),
                format: d.format.as_str().into(),
                drop_backing: false,
            })
            .collect();
        match vmshift_libvirt::rewrite(&now, &back) {
            Ok(x) => x,
            Err(e) => return Ok(Err(e.to_string())),
        }
    };
    if let Err(e) = jd.lv.define(&restored) {
        return Ok(Err(format!("{e}; the copies are kept")));
    }
    let mut refs = vec![if untouched {
        format!(
            "definition of {}: restored as it was before the job",
            p.name
        )
    } else {
        format!(
            "definition of {}: edited since the job, so only its disks were pointed back",
            p.name
        )
    }];
    for d in &p.disks {
        match std::fs::remove_file(&d.dest) {
            Ok(()) => refs.push(format!(
                "{}: back on {} ({}); deleted {}",
                d.target,
                d.source.display(),
                d.format.as_str(),
                d.dest.display()
            )),
            Err(e) => ctx.em.say(format!(
                "vmshift: warning: cannot delete the copy {}: {e}",
                d.dest.display()
            )),
        }
    }
    Ok(Ok(refs))
}

fn rollback_live(
    ctx: &JobCtx,
    jd: &JobDomain,
    id: &str,
) -> Result<std::result::Result<Vec<String>, String>> {
    let p = &jd.plan;
    let mut dirs: Vec<PathBuf> = p
        .disks
        .iter()
        .filter_map(|d| d.source.parent().map(PathBuf::from))
        .collect();
    dirs.dedup();
    if dirs.len() != 1 {
        return Ok(Err(format!(
            "the disks came from several directories {dirs:?}: move each back with `vmshift migrate --domain {} --to DIR --disk DEV`",
            p.name
        )));
    }
    let mut formats: Vec<_> = p.disks.iter().map(|d| d.format).collect();
    formats.dedup();
    let format_changed = p.disks.iter().any(|d| d.format != d.dest_format);
    if format_changed && formats.len() != 1 {
        return Ok(Err(
            "the job changed the disks' formats and they were not all the same before: move each back with `vmshift migrate --domain NAME --disk DEV --format FMT`".into()
        ));
    }
    // The old sources are stale since the pivot: the move back replaces them.
    for d in &p.disks {
        match std::fs::remove_file(&d.source) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                return Ok(Err(format!(
                    "cannot remove the stale source {}: {e}",
                    d.source.display()
                )))
            }
        }
    }
    let mut back = jd.request.clone();
    back.to = Some(dirs.remove(0));
    back.pool = None;
    back.format = format_changed.then(|| formats[0]);
    back.delete_source = true;
    back.report = None;
    let child = vmshift_core::JobId::new().0;
    ctx.em.say(format!(
        "vmshift: rollback of {id}: moving the disks back live (job {child})"
    ));
    let code = super::job::run(&ctx.child(child.clone()), &back)?;
    if code != 0 {
        return Ok(Err(format!(
            "the move back (job {child}) did not succeed: the domain still runs on the job's targets"
        )));
    }
    Ok(Ok(p
        .disks
        .iter()
        .map(|d| {
            format!(
                "{}: back on {} (moved back live by job {child}); deleted {}",
                d.target,
                d.source.display(),
                d.dest.display()
            )
        })
        .collect()))
}
