//! A recorded live job as it stands now: its disks, options, a QMP connection to its VM
//! and where each disk runs (source or target), for `resume`, `cancel` and `rollback`.

use super::connect;
use crate::error::OrMsg;
use crate::handle::{ExitCode, JobCtx};
use crate::journal::lock_job;
use crate::request::{ImageFormat, LiveRequest};
use crate::Result;
use std::path::{Path, PathBuf};
use vmshift_qmp::Qmp;

/// One disk of a journaled live job (its `facts`).
#[derive(Debug, Clone)]
pub(crate) struct JobDisk {
    pub device: String,
    pub source: String,
    pub target: PathBuf,
    pub source_format: Option<ImageFormat>,
}

pub(crate) fn job_disks(job: &vmshift_journal::JobRecord) -> Result<Vec<JobDisk>> {
    let disks = job.facts["disks"]
        .as_array()
        .filter(|d| !d.is_empty())
        .or_msg(|| format!("job {}: the journal records no disks", job.id))?;
    disks
        .iter()
        .map(|d| {
            Ok(JobDisk {
                device: d["device"].as_str().unwrap_or_default().to_owned(),
                source: d["source"]
                    .as_str()
                    .or_msg(|| format!("job {}: a disk has no recorded source", job.id))?
                    .to_owned(),
                target: PathBuf::from(
                    d["target"]
                        .as_str()
                        .or_msg(|| format!("job {}: a disk has no recorded target", job.id))?,
                ),
                source_format: serde_json::from_value(d["source_format"].clone()).ok(),
            })
        })
        .collect()
}

/// The live arguments a job was started with (its journaled `options`).
pub(crate) fn job_args(job: &vmshift_journal::JobRecord) -> Result<LiveRequest> {
    let o = &job.options;
    let qmp = o["qmp"]
        .as_str()
        .or_msg(|| format!("job {}: no QMP socket in the journal", job.id))?;
    Ok(LiveRequest {
        qmp: PathBuf::from(qmp),
        to: PathBuf::from(o["to"].as_str().unwrap_or_default()),
        disks: o["disks"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|v| v.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default(),
        format: serde_json::from_value(o["format"].clone()).ok().flatten(),
        shallow: o["shallow"].as_bool().unwrap_or(false),
        bwlimit: o["bwlimit"].as_u64(),
        copy_mode: serde_json::from_value(o["copy_mode"].clone()).unwrap_or_default(),
        ready_timeout: o["ready_timeout"].as_u64(),
        delete_source: o["delete_source"].as_bool().unwrap_or(false),
        report: None,
        no_journal: false,
    })
}

/// Where each recorded disk of a job runs now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Side {
    Source,
    Target,
}

pub(crate) fn where_disks_run(
    qmp: &mut Qmp,
    disks: &[JobDisk],
) -> std::result::Result<Vec<Side>, String> {
    let now = vmshift_qmp::disk::discover(qmp).map_err(|e| e.to_string())?;
    disks
        .iter()
        .map(|d| {
            let cur = now
                .iter()
                .find(|c| c.device == d.device)
                .ok_or_else(|| format!("the VM has no disk {} any more", d.device))?;
            if cur.file == d.source {
                Ok(Side::Source)
            } else if Path::new(&cur.file) == d.target {
                Ok(Side::Target)
            } else {
                Err(format!(
                    "{} runs on {}, neither the job's source {} nor its target {}",
                    d.device,
                    cur.file,
                    d.source,
                    d.target.display()
                ))
            }
        })
        .collect()
}

pub(crate) fn refuse(ctx: &JobCtx, what: &str, msg: &str) -> Result<ExitCode> {
    ctx.em.say(format!("vmshift: {what} refused: {msg}"));
    Ok(2)
}

/// What `resume` and `cancel` need to act on an interrupted live job: its locks, options,
/// disks, a QMP connection to its VM and where each disk runs now. `Err(code)` after printing
/// a one-line refusal (`what` names the command).
pub(crate) struct JobVm {
    pub locks: Vec<vmshift_journal::FileLock>,
    pub args: LiveRequest,
    pub disks: Vec<JobDisk>,
    pub qmp: Qmp,
    pub sides: Vec<Side>,
}

pub(crate) fn job_vm(
    ctx: &JobCtx,
    job: &vmshift_journal::JobRecord,
    what: &str,
    unreachable: &str,
) -> Result<std::result::Result<JobVm, i32>> {
    let locks = match lock_job(&job.id, Path::new(&job.destination)) {
        Ok(l) => l,
        Err(e) => return refuse(ctx, what, &e.to_string()).map(Err),
    };
    let args = job_args(job)?;
    let disks = job_disks(job)?;
    let mut qmp = match connect(&args.qmp) {
        Ok(q) => q,
        Err(e) => {
            return refuse(
                ctx,
                what,
                &format!(
                    "{e:#}: the VM of job {} is not reachable{unreachable}; nothing was changed",
                    job.id
                ),
            )
            .map(Err)
        }
    };
    let sides = match where_disks_run(&mut qmp, &disks) {
        Ok(s) => s,
        Err(m) => return refuse(ctx, what, &format!("{m}; nothing was changed")).map(Err),
    };
    Ok(Ok(JobVm {
        locks,
        args,
        disks,
        qmp,
        sides,
    }))
}
