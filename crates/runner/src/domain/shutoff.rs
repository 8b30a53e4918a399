//! A shut-off domain's disks by the offline engine: one child job per disk (checked,
//! copied, verified, journaled and resumable on its own). The definition changes only once
//! every disk is verified; a failing disk removes the copies already made.

use super::job::{Failed, Moved};
use super::plan::DomainPlan;
use crate::handle::{ExitCode, JobCtx};
use crate::journal::{open_journal, JournalLink};
use crate::phases::PhaseClock;
use crate::request::{DomainRequest, ImageFormat, OfflineRequest};
use std::collections::HashMap;
use std::path::Path;
use vmshift_core::report::{DiskReport, Report};
use vmshift_core::{JobId, JobStatus, Phase};

/// The offline job of one disk: the earlier run's (a resume) when it finished or can go
/// on, else a new one. Its id is recorded in the domain job's facts before it starts.
fn disk_job(
    ctx: &JobCtx,
    link: Option<&JournalLink>,
    target: &str,
    earlier: Option<&String>,
    req: &OfflineRequest,
) -> (String, crate::Result<ExitCode>) {
    // An earlier run's job is only known through the journal.
    if let Some(id) = earlier.filter(|_| link.is_some()) {
        let j = open_journal();
        let rec = j.as_ref().ok().and_then(|j| j.job(id).ok());
        if let (Ok(j), Some(rec)) = (j, rec) {
            if rec.status == "succeeded" && Path::new(&rec.destination).exists() {
                // Verified by the earlier run: its report says so.
                let rep = rec
                    .report
                    .as_ref()
                    .and_then(|f| std::fs::read(f).ok())
                    .and_then(|b| serde_json::from_slice::<Report>(&b).ok());
                if let Some(rep) = rep {
                    ctx.em.note(format!(
                        "disk {target}: verified by offline job {id} of the earlier run"
                    ));
                    ctx.em
                        .report(&rep, Path::new(rec.report.as_deref().unwrap_or_default()));
                    return (id.clone(), Ok(0));
                }
            }
            if matches!(
                rec.status.as_str(),
                "running" | "failed" | "cancelled" | "interrupted"
            ) && crate::journal::running_pid(id).is_none()
            {
                ctx.em
                    .note(format!("disk {target}: resuming offline job {id}"));
                let code = crate::offline::resume::run_resume(&ctx.child(id.clone()), j, rec, None);
                if !matches!(code, Ok(2)) {
                    return (id.clone(), code);
                }
            }
        }
    }
    let child = JobId::new().0;
    if let Some(link) = link {
        link.note(|j, id| {
            let mut facts = j.job(id)?.facts;
            facts["children"][target] = serde_json::Value::String(child.clone());
            j.set_facts(id, &facts)
        });
    }
    ctx.em.note(format!("disk {target}: offline job {child}"));
    let code = crate::offline::job::run_job(&ctx.child(child.clone()), req, None);
    (child, code)
}

/// Copies and verifies every planned disk; `earlier` maps disks to the offline jobs of an
/// interrupted run (a resume).
pub(crate) fn run(
    ctx: &JobCtx,
    p: &DomainPlan,
    r: &DomainRequest,
    clock: &mut PhaseClock,
    earlier: &HashMap<String, String>,
) -> Result<Moved, Failed> {
    clock.enter(Phase::Copy);
    let mut moved = Moved {
        disks: Vec::new(),
        bytes: 0,
        verified: true,
        verified_bytes: 0,
        skipped: 0,
        reused: 0,
        pivot_ms: None,
        notes: Vec::new(),
        warnings: Vec::new(),
    };
    let mut done: Vec<&std::path::Path> = Vec::new();
    for d in &p.disks {
        let mut req = OfflineRequest::new(&d.source, &d.dest);
        req.format = Some(d.dest_format);
        req.source_format = Some(d.format);
        req.backing_format = d.backing.first().and_then(|b| match b.format.as_deref() {
            Some("raw") => Some(ImageFormat::Raw),
            Some("qcow2") => Some(ImageFormat::Qcow2),
            _ => None,
        });
        req.keep_backing = r.keep_backing;
        req.bwlimit = r.bwlimit;
        req.no_journal = r.no_journal;
        let (child, code) = disk_job(
            ctx,
            clock.link.as_ref(),
            &d.target,
            earlier.get(&d.target),
            &req,
        );
        let rep = ctx.em.report_of(&child);
        let ok = matches!(code, Ok(0))
            && rep.as_ref().is_some_and(|r| {
                r.verification.result == "match" || r.verification.result == "skipped"
            });
        if !ok {
            for f in &done {
                let _ = std::fs::remove_file(f);
            }
            let why = rep
                .and_then(|r| r.error.map(|e| e.message))
                .or_else(|| code.err().map(|e| e.to_string()))
                .unwrap_or_else(|| "failed".into());
            let cancelled = ctx.control.is_cancelled();
            return Err(Failed {
                phase: Phase::Copy,
                message: format!(
                    "disk {} (offline job {child}): {why}; the definition is unchanged{}",
                    d.target,
                    if done.is_empty() {
                        String::new()
                    } else {
                        ", the disks copied before it were removed".into()
                    }
                ),
                status: if cancelled {
                    JobStatus::Cancelled
                } else {
                    JobStatus::Failed
                },
            });
        }
        let rep = rep.unwrap_or_else(|| unreachable_report(&child));
        done.push(&d.dest);
        moved.bytes += rep.bytes_copied;
        moved.skipped += rep.bytes_skipped_zero;
        moved.reused += rep.bytes_reused;
        moved.verified_bytes += rep.verification.verified_bytes;
        moved.verified &= rep.verification.result == "match";
        moved.warnings.extend(rep.warnings.iter().cloned());
        moved
            .notes
            .push(format!("disk {}: offline job {child}", d.target));
        moved.disks.push(DiskReport {
            device: d.target.clone(),
            old_path: d.source.display().to_string(),
            new_path: d.dest.display().to_string(),
            format: d.dest_format.as_str().into(),
            bytes: rep.bytes_copied,
            copy_mode: "offline".into(),
            copy_mode_reason: "the domain is shut off".into(),
            pivot_ms: None,
            time_to_ready_ms: None,
        });
    }
    clock.enter(Phase::Verify);
    Ok(moved)
}

fn unreachable_report(id: &str) -> vmshift_core::report::Report {
    vmshift_core::report::Report::new(id, vmshift_core::JobKind::Offline, "")
}
