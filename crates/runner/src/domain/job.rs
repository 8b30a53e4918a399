//! The domain job: check (libvirt state and disks) → copy (live: libvirt block copy and
//! pivot; shut off: one verified offline child job per disk) → references (the persistent
//! definition names the new files) → clean up → report.

use super::plan::{plan_lines, plan_resumed, DomainPlan};
use super::{live, shutoff};
use crate::event::JobEvent;
use crate::handle::{ExitCode, JobCtx};
use crate::journal::{lock_child_job, lock_domain_job, open_journal, JournalLink, Watch};
use crate::live::side;
use crate::phases::{now_rfc3339, PhaseClock};
use crate::request::DomainRequest;
use crate::state::write_report;
use crate::Result;
use serde_json::json;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Instant;
use vmshift_core::report::{DiskReport, JobError, Report};
use vmshift_core::{JobKind, JobStatus, Phase};
use vmshift_libvirt::{DiskChange, DomainState, Libvirt};

/// What the copy phase left: each moved disk and the report's per-disk lines.
pub struct Moved {
    /// Per disk: report line (old → new, bytes, mode).
    pub disks: Vec<DiskReport>,
    /// Bytes copied, all disks.
    pub bytes: u64,
    /// Whether every copy was proven by digest (offline) — live copies are QEMU's mirror.
    pub verified: bool,
    /// Bytes verified by digest.
    pub verified_bytes: u64,
    /// Bytes of zeroes and holes not written (offline).
    pub skipped: u64,
    /// Bytes reused from an interrupted run (offline resume).
    pub reused: u64,
    /// Pivot time of all disks, ms (live).
    pub pivot_ms: Option<u64>,
    /// Notes and warnings for the report.
    pub notes: Vec<String>,
    /// Warnings for the report.
    pub warnings: Vec<String>,
}

/// A failed copy phase: where, why, and the status (failed or cancelled).
pub struct Failed {
    /// The phase that failed.
    pub phase: Phase,
    /// One line.
    pub message: String,
    /// `Failed` or `Cancelled`.
    pub status: JobStatus,
}

fn record(
    ctx: &JobCtx,
    r: &DomainRequest,
    p: &DomainPlan,
) -> Result<(JournalLink, Vec<vmshift_journal::FileLock>)> {
    let j = open_journal()?;
    // A rollback's move back runs under its parent, which holds the domain's lock.
    let locks = if ctx.parent.is_some() {
        lock_child_job(&ctx.job_id)?
    } else {
        lock_domain_job(&ctx.job_id, &p.uri, &p.name)?
    };
    let mut options = serde_json::to_value(r)?;
    options["report"] = serde_json::Value::Null;
    let new = vmshift_journal::NewJob {
        id: ctx.job_id.clone(),
        kind: "domain".into(),
        // `jobs` shows "domain web01 (2 disks) → /srv/b"; each disk is in the facts.
        source: format!("domain {} ({} disk(s))", p.name, p.disks.len()),
        destination: p.dest_dir.display().to_string(),
        partial: String::new(),
        options,
        facts: json!({
            "uri": p.uri, "domain": p.name, "state": p.state.as_str(),
            "persistent": p.persistent, "old_xml": p.inactive_xml,
            "disks": p.disks.iter().map(|d| json!({"target": d.target, "source": d.source,
                "format": d.format.as_str(), "dest": d.dest, "dest_format": d.dest_format.as_str(),
                "virtual_size": d.virtual_size}))
                .collect::<Vec<_>>(),
        }),
        chunk_size: 0,
        total_bytes: p.disks.iter().map(|d| d.allocated).sum(),
    };
    j.create_job(&new)?;
    Ok((
        JournalLink {
            journal: Arc::new(Mutex::new(j)),
            id: ctx.job_id.clone(),
            run: 1,
        },
        locks,
    ))
}

/// What a resumed run carries over from the interrupted one.
pub(crate) struct Continue {
    /// The job's journal record, with this run's number.
    pub link: JournalLink,
    /// The job and domain locks, already held.
    pub locks: Vec<vmshift_journal::FileLock>,
    /// What the resume did before this run (for the report).
    pub notes: Vec<String>,
    /// Shut off: each disk's offline job of the earlier run (target dev → job id).
    pub children: HashMap<String, String>,
    /// Targets the earlier run verified (they may exist).
    pub done: Vec<PathBuf>,
    /// Live, interrupted after the pivot: the recorded plan; only the definition, clean-up
    /// and report remain.
    pub after_pivot: Option<DomainPlan>,
}

/// Runs a domain move.
///
/// # Errors
/// The journal or the report cannot be written.
pub(crate) fn run(ctx: &JobCtx, r: &DomainRequest) -> Result<ExitCode> {
    run_with(ctx, r, None)
}

/// Runs a domain move, or continues an interrupted one under its job id.
///
/// # Errors
/// The journal or the report cannot be written.
pub(crate) fn run_with(
    ctx: &JobCtx,
    r: &DomainRequest,
    cont: Option<Continue>,
) -> Result<ExitCode> {
    let em = &ctx.em;
    let started = Instant::now();
    let mut report = Report::new(&ctx.job_id, JobKind::Domain, &now_rfc3339());
    em.emit(JobEvent::Job {
        job_id: ctx.job_id.clone(),
        kind: JobKind::Domain,
        resumed: cont.as_ref().map(|_| true),
    });
    let mut clock = PhaseClock::new(em);
    clock.enter(Phase::Check);
    if let Some(p) = r
        .report
        .as_deref()
        .and_then(crate::safety::report_target_problem)
    {
        em.say(format!("vmshift: refused: {}", p.one_line()));
        return Ok(2);
    }
    let done = cont.as_ref().map(|c| c.done.clone()).unwrap_or_default();
    let mut cont = cont;
    let after_pivot = cont.as_mut().and_then(|c| c.after_pivot.take());
    let pivoted = after_pivot.is_some();
    let checked = Libvirt::open(r.connect.as_deref())
        .map_err(|e| e.to_string())
        .and_then(|lv| match after_pivot {
            Some(p) => Ok((lv, p)),
            None => plan_resumed(&lv, r, &done).map(|p| (lv, p)),
        });
    let (lv, p) = match checked {
        Ok(x) => x,
        Err(why) => {
            em.say(format!("vmshift: refused: {why}"));
            return Ok(2);
        }
    };
    for l in plan_lines(&p) {
        em.say(l);
    }
    let mut _locks = Vec::new();
    let mut children = HashMap::new();
    if let Some(c) = cont {
        _locks = c.locks;
        report.notes = c.notes;
        children = c.children;
        c.link
            .note(|j, id| j.phase_started(id, c.link.run, Phase::Check.as_str()));
        clock.link = Some(c.link);
    } else if !r.no_journal {
        match record(ctx, r, &p) {
            Ok((link, locks)) => {
                _locks = locks;
                link.note(|j, id| j.phase_started(id, link.run, Phase::Check.as_str()));
                clock.link = Some(link);
            }
            Err(e) => {
                em.say(format!("vmshift: refused: {e}"));
                return Ok(2);
            }
        }
    }
    // Only a recorded job has an id worth printing: `status`, `resume` and `cancel` take it.
    if clock.link.is_some() {
        em.say(format!("vmshift: job {}", ctx.job_id));
    }
    let watch = Watch::start(clock.link.as_ref(), &ctx.control, em);
    let first = &p.disks[0];
    report.source = side(&first.source, first.format.as_str(), first.virtual_size);
    report.notes.push(format!(
        "domain {} ({}, {}) at {}",
        p.name,
        p.state.as_str(),
        if p.persistent {
            "persistent"
        } else {
            "transient"
        },
        p.uri
    ));
    let copied = if pivoted {
        report.notes.push(
            "resume: the disks were pivoted before the interruption; finished the remaining phases"
                .into(),
        );
        Ok(recorded_moves(&p))
    } else if p.state == DomainState::Running {
        live::run(ctx, &lv, &p, r, &mut clock)
    } else {
        shutoff::run(ctx, &p, r, &mut clock, &children)
    };
    let outcome = copied.and_then(|m| {
        clock.enter(Phase::References);
        match update_definition(&lv, &p, r) {
            Ok(refs) => Ok((m, refs)),
            Err(e) => Err(Failed {
                phase: Phase::References,
                message: e,
                status: JobStatus::Failed,
            }),
        }
    });
    let code = match outcome {
        Ok((m, refs)) => {
            clock.enter(Phase::Cleanup);
            finish(ctx, &lv, &p, r, &mut report, m, refs);
            0
        }
        Err(f) => {
            report.status = f.status;
            report.error = Some(JobError {
                phase: f.phase,
                message: f.message,
            });
            1
        }
    };
    clock.end();
    report.bwlimit_changes = watch.stop();
    report.phases = std::mem::take(&mut clock.done);
    let copy_ms = report
        .phases
        .iter()
        .find(|x| x.name == Phase::Copy)
        .map_or(0, |x| x.duration_ms);
    #[allow(clippy::cast_precision_loss)] // milliseconds of a job
    let copy_secs = copy_ms as f64 / 1000.0;
    report.throughput_bytes_per_sec =
        vmshift_core::rate_bytes_per_sec(report.bytes_copied, copy_secs);
    report.duration_ms = vmshift_core::millis(started.elapsed());
    let path = write_report(&report, r.report.as_deref())?;
    if let Some(l) = &clock.link {
        l.close(&report, &path);
    }
    match &report.error {
        Some(e) => em.say(format!(
            "vmshift: {}: {}",
            report.status.as_str(),
            e.message
        )),
        None => {
            for d in &report.disks {
                // As the --qmp path says it: what moved, how, and how long ready and pivot took.
                let mut how = vec![d.format.clone()];
                if d.copy_mode == "offline" {
                    how.push(format!(
                        "{} copied, verified",
                        vmshift_core::format_bytes(d.bytes)
                    ));
                } else if !d.copy_mode.is_empty() {
                    how.push(format!("{} mirrored", vmshift_core::format_bytes(d.bytes)));
                    how.push(format!("{} mode", d.copy_mode));
                }
                if let Some(ms) = d.time_to_ready_ms {
                    how.push(format!("ready after {ms} ms"));
                }
                if let Some(ms) = d.pivot_ms {
                    how.push(format!("pivot {ms} ms"));
                }
                em.say(format!(
                    "vmshift: {} moved {} -> {} ({})",
                    d.device,
                    d.old_path,
                    d.new_path,
                    how.join(", ")
                ));
            }
            if report.source_deleted {
                em.say("vmshift: the old image files were deleted");
            }
            for r in &report.references {
                em.say(format!("vmshift: {r}"));
            }
        }
    }
    em.say(format!("report: {}", path.display()));
    em.report(&report, &path);
    Ok(code)
}

/// The copy phase of a run interrupted after its pivot, as the plan recorded it.
fn recorded_moves(p: &DomainPlan) -> Moved {
    Moved {
        disks: p
            .disks
            .iter()
            .map(|d| DiskReport {
                device: d.target.clone(),
                old_path: d.source.display().to_string(),
                new_path: d.dest.display().to_string(),
                format: d.dest_format.as_str().into(),
                bytes: 0,
                copy_mode: String::new(),
                copy_mode_reason: "copied and pivoted by the interrupted run".into(),
                pivot_ms: None,
                time_to_ready_ms: None,
            })
            .collect(),
        bytes: 0,
        verified: false,
        verified_bytes: 0,
        skipped: 0,
        reused: 0,
        pivot_ms: None,
        notes: Vec::new(),
        warnings: Vec::new(),
    }
}

/// Fills the report of a move whose definition now names the new files; refreshes the pool
/// and deletes the sources when asked.
fn finish(
    ctx: &JobCtx,
    lv: &Libvirt,
    p: &DomainPlan,
    r: &DomainRequest,
    report: &mut Report,
    m: Moved,
    refs: Vec<String>,
) {
    report.status = JobStatus::Succeeded;
    let first = &p.disks[0];
    report.destination = side(&first.dest, first.dest_format.as_str(), first.virtual_size);
    report.bytes_copied = m.bytes;
    report.bytes_skipped_zero = m.skipped;
    report.bytes_reused = m.reused;

    report.disks = m.disks;
    report.pivot_ms = m.pivot_ms;
    report.notes.extend(m.notes);
    report.warnings.extend(m.warnings);
    report.references = refs;
    // A running domain's XML states every backing chain (a shut-off one's may not).
    report.backing =
        if p.state == DomainState::Running && p.disks.iter().all(|d| d.backing.is_empty()) {
            "none"
        } else if r.keep_backing {
            "kept"
        } else {
            "flattened"
        }
        .into();
    report.verification.algorithm = if m.verified { "blake3" } else { "qemu-mirror" }.into();
    report.verification.verified_bytes = m.verified_bytes;
    report.verification.result = if m.verified { "match" } else { "skipped" }.into();
    if let Some(pool) = &p.pool {
        match lv.refresh_pool(pool) {
            Ok(()) => report.notes.push(format!("pool {pool} refreshed")),
            Err(e) => report.warnings.push(e.to_string()),
        }
    }
    if r.delete_source {
        let mut all = true;
        for d in &p.disks {
            if let Err(e) = std::fs::remove_file(&d.source) {
                all = false;
                report
                    .warnings
                    .push(format!("could not delete {}: {e}", d.source.display()));
            }
        }
        report.source_deleted = all;
    }
    ctx.em.note(format!(
        "domain {}: {} disk(s) moved",
        p.name,
        p.disks.len()
    ));
}

/// Makes the persistent definition name each moved disk's new file and format (re-reading
/// it first: libvirt may already have done so at the pivot) and proves it by reading it
/// back. Returns the report's references (old → new per disk).
fn update_definition(
    lv: &Libvirt,
    p: &DomainPlan,
    r: &DomainRequest,
) -> std::result::Result<Vec<String>, String> {
    if !p.persistent {
        return Ok(vec![format!(
            "domain {} is transient: no persistent definition to update; it runs on the new files until it stops",
            p.name
        )]);
    }
    let dom = lv.domain(&p.name).map_err(|e| e.to_string())?;
    let now = dom.xml(true).map_err(|e| e.to_string())?;
    let defs = vmshift_libvirt::disks(&now).map_err(|e| e.to_string())?;
    let mut changes = Vec::new();
    for d in &p.disks {
        let def = defs.iter().find(|x| x.target == d.target);
        let right = def.is_some_and(|x| {
            x.source.path() == Some(d.dest.as_path())
                && x.format.as_deref() == Some(d.dest_format.as_str())
        });
        if !right {
            changes.push(DiskChange {
                target: d.target.clone(),
                path: d.dest.clone(),
                format: d.dest_format.as_str().into(),
                drop_backing: !r.keep_backing,
            });
        }
    }
    if !changes.is_empty() {
        let new = vmshift_libvirt::rewrite(&now, &changes).map_err(|e| e.to_string())?;
        lv.define(&new).map_err(|e| e.to_string())?;
    }
    let after = vmshift_libvirt::disks(&dom.xml(true).map_err(|e| e.to_string())?)
        .map_err(|e| e.to_string())?;
    let old = p
        .inactive_xml
        .as_deref()
        .and_then(|x| vmshift_libvirt::disks(x).ok())
        .unwrap_or_default();
    let mut refs = Vec::new();
    for d in &p.disks {
        let ok = after.iter().any(|x| {
            x.target == d.target
                && x.source.path() == Some(d.dest.as_path())
                && x.format.as_deref() == Some(d.dest_format.as_str())
        });
        if !ok {
            return Err(format!(
                "the definition of {} still does not name {} for {} after redefining it",
                p.name,
                d.dest.display(),
                d.target
            ));
        }
        let was = old
            .iter()
            .find(|x| x.target == d.target)
            .map_or_else(|| d.source.display().to_string(), |x| x.source.describe());
        let fmt_was = old
            .iter()
            .find(|x| x.target == d.target)
            .and_then(|x| x.format.clone())
            .unwrap_or_else(|| d.format.as_str().into());
        refs.push(format!(
            "definition of {}: {} {} ({}) -> {} ({})",
            p.name,
            d.target,
            was,
            fmt_was,
            d.dest.display(),
            d.dest_format.as_str()
        ));
    }
    Ok(refs)
}
