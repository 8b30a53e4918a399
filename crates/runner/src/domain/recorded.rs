//! A domain job as the journal recorded it: its request, its plan, the libvirt domain it
//! moved and where each disk runs now. Shared by `resume`, `cancel` and `rollback`.

use super::plan::{DomainPlan, PlannedDisk};
use crate::handle::{ExitCode, JobCtx};
use crate::journal::lock_domain_job;
use crate::request::{DomainRequest, ImageFormat};
use crate::{Result, RunnerError};
use std::collections::HashMap;
use std::path::PathBuf;
use vmshift_libvirt::{DomainRef, DomainState, Libvirt};

/// Where a recorded disk runs now (live XML of a running domain, else the definition).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Side {
    /// On the job's source file.
    Source,
    /// On the job's target file.
    Target,
    /// On neither: changed since.
    Elsewhere,
}

/// A recorded domain job opened again: locks held, libvirt reached.
pub(crate) struct JobDomain {
    pub locks: Vec<vmshift_journal::FileLock>,
    pub request: DomainRequest,
    pub plan: DomainPlan,
    pub lv: Libvirt,
    pub dom: DomainRef,
    pub state: DomainState,
    /// Per planned disk, where it runs now.
    pub sides: Vec<Side>,
    /// Shut off: each disk's offline job (target dev → job id).
    pub children: HashMap<String, String>,
}

/// Prints `vmshift WHAT refused: MSG` and returns exit status 2.
pub(crate) fn refuse(ctx: &JobCtx, what: &str, msg: &str) -> Result<ExitCode> {
    ctx.em.say(format!("vmshift: {what} refused: {msg}"));
    Ok(2)
}

fn format_of(v: &serde_json::Value) -> ImageFormat {
    if v.as_str() == Some("qcow2") {
        ImageFormat::Qcow2
    } else {
        ImageFormat::Raw
    }
}

fn plan_of(job: &vmshift_journal::JobRecord, r: &DomainRequest) -> Result<DomainPlan> {
    let f = &job.facts;
    let bad = || RunnerError::msg(format!("job {}: unreadable facts in the journal", job.id));
    let mut disks = Vec::new();
    for d in f["disks"].as_array().ok_or_else(bad)? {
        let path = |k: &str| d[k].as_str().map(PathBuf::from).ok_or_else(bad);
        disks.push(PlannedDisk {
            target: d["target"].as_str().ok_or_else(bad)?.to_owned(),
            source: path("source")?,
            format: format_of(&d["format"]),
            dest: path("dest")?,
            dest_format: format_of(&d["dest_format"]),
            backing: Vec::new(),
            allocated: 0,
            virtual_size: d["virtual_size"].as_u64().unwrap_or(0),
        });
    }
    let dest_dir = disks
        .first()
        .and_then(|d| d.dest.parent().map(PathBuf::from))
        .ok_or_else(bad)?;
    Ok(DomainPlan {
        uri: f["uri"].as_str().unwrap_or_default().to_owned(),
        name: f["domain"].as_str().ok_or_else(bad)?.to_owned(),
        state: if f["state"].as_str() == Some("running") {
            DomainState::Running
        } else {
            DomainState::ShutOff
        },
        persistent: f["persistent"].as_bool().unwrap_or(true),
        inactive_xml: f["old_xml"].as_str().map(str::to_owned),
        dest_dir,
        pool: r.pool.clone(),
        disks,
        skipped: Vec::new(),
    })
}

/// Opens the recorded job `job` for `what` (resume, cancel, rollback): its locks, request,
/// plan, and the domain as libvirt shows it now. `Err(code)` after a one-line refusal.
///
/// # Errors
/// Unreadable options or facts in the journal.
pub(crate) fn job_domain(
    ctx: &JobCtx,
    job: &vmshift_journal::JobRecord,
    what: &str,
) -> Result<std::result::Result<JobDomain, ExitCode>> {
    let mut request: DomainRequest = serde_json::from_value(job.options.clone()).map_err(|e| {
        RunnerError::msg(format!(
            "job {}: unreadable options in the journal: {e}",
            job.id
        ))
    })?;
    let plan = plan_of(job, &request)?;
    // The same disks as the first run, whatever the definition holds now.
    request.disks = plan.disks.iter().map(|d| d.target.clone()).collect();
    request.connect = Some(plan.uri.clone());
    let locks = match lock_domain_job(&job.id, &plan.uri, &plan.name) {
        Ok(l) => l,
        Err(e) => return refuse(ctx, what, &e.to_string()).map(Err),
    };
    let reached = Libvirt::open(Some(&plan.uri))
        .and_then(|lv| lv.domain(&plan.name).map(|d| (lv, d)))
        .and_then(|(lv, d)| d.state().map(|s| (lv, d, s)));
    let (lv, dom, state) = match reached {
        Ok(x) => x,
        Err(e) => {
            return refuse(ctx, what, &format!("{e}; nothing was changed")).map(Err);
        }
    };
    let xml = dom.xml(state != DomainState::Running);
    let now = xml
        .ok()
        .and_then(|x| vmshift_libvirt::disks(&x).ok())
        .unwrap_or_default();
    let sides = plan
        .disks
        .iter()
        .map(|d| {
            match now
                .iter()
                .find(|x| x.target == d.target)
                .and_then(|x| x.source.path())
            {
                Some(p) if p == d.dest => Side::Target,
                Some(p) if p == d.source => Side::Source,
                _ => Side::Elsewhere,
            }
        })
        .collect();
    let children = job.facts["children"]
        .as_object()
        .map(|m| {
            m.iter()
                .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_owned())))
                .collect()
        })
        .unwrap_or_default();
    Ok(Ok(JobDomain {
        locks,
        request,
        plan,
        lv,
        dom,
        state,
        sides,
        children,
    }))
}

/// Ends the block jobs the interrupted run left on the disks still on their sources
/// (without pivot) and removes their targets; returns what it did, for the report.
///
/// # Errors
/// A one-line message: a job that cannot be ended or a target that cannot be removed.
pub(crate) fn clear_live_leftovers(jd: &JobDomain) -> std::result::Result<Vec<String>, String> {
    let mut notes = Vec::new();
    for (d, side) in jd.plan.disks.iter().zip(&jd.sides) {
        if *side != Side::Source {
            continue;
        }
        if jd.state == DomainState::Running {
            if let Some(j) = jd.dom.block_job(&d.target).map_err(|e| e.to_string())? {
                match jd.dom.end_job(&d.target, false) {
                    Ok(()) => notes.push(format!(
                        "ended the interrupted run's block job ({}) on {} without pivot",
                        j.kind_name(),
                        d.target
                    )),
                    // A domain that stopped meanwhile took its block jobs with it.
                    Err(_) if !jd.dom.state().is_ok_and(|s| s == DomainState::Running) => notes
                        .push(format!(
                            "the domain stopped: its block job on {} ended with it",
                            d.target
                        )),
                    Err(e) => return Err(format!("cannot end the block job on {}: {e}", d.target)),
                }
            }
        }
        match std::fs::remove_file(&d.dest) {
            Ok(()) => notes.push(format!(
                "removed the interrupted run's target {}",
                d.dest.display()
            )),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(format!("cannot remove {}: {e}", d.dest.display())),
        }
    }
    Ok(notes)
}
