//! A running domain's disks through libvirt's block copy ([`vmshift_libvirt::copy`]):
//! every disk mirrored, all pivoted once all are ready. Before the pivots any failure ends
//! every job and removes every target; the domain keeps running on its sources.

use super::job::{Failed, Moved};
use super::plan::DomainPlan;
use crate::event::{JobEvent, Progress};
use crate::handle::JobCtx;
use crate::phases::PhaseClock;
use crate::request::{CopyMode, DomainRequest};
use std::time::{Duration, Instant};
use vmshift_core::report::DiskReport;
use vmshift_core::{JobStatus, Phase};
use vmshift_libvirt::{copy_and_pivot, CopyOptions, CopyTarget, Libvirt};
use vmshift_qmp::CopyModeRequest;

/// Copies and pivots every planned disk.
pub(crate) fn run(
    ctx: &JobCtx,
    lv: &Libvirt,
    p: &DomainPlan,
    r: &DomainRequest,
    clock: &mut PhaseClock,
) -> Result<Moved, Failed> {
    let fail = |phase, message: String| Failed {
        phase,
        message,
        status: JobStatus::Failed,
    };
    let dom = lv
        .domain(&p.name)
        .map_err(|e| fail(Phase::Copy, e.to_string()))?;
    let targets: Vec<CopyTarget> = p
        .disks
        .iter()
        .map(|d| CopyTarget {
            disk: d.target.clone(),
            dest: d.dest.clone(),
            format: d.dest_format.as_str().into(),
            size: d.allocated,
        })
        .collect();
    let opts = CopyOptions {
        shallow: r.keep_backing,
        limit: &ctx.control.rate,
        copy_mode: match r.copy_mode {
            CopyMode::Auto => CopyModeRequest::Auto,
            CopyMode::Background => CopyModeRequest::Background,
            CopyMode::WriteBlocking => CopyModeRequest::WriteBlocking,
        },
        ready_timeout: r.ready_timeout.map(Duration::from_secs),
    };
    clock.enter(Phase::Copy);
    let t0 = Instant::now();
    let mut last = Instant::now() - Duration::from_secs(1);
    let mut pivoting = false;
    let mut on_progress = |c: &vmshift_libvirt::CopyProgress| {
        // Every disk ready: the pivot comes next, and its time is the cut-over's.
        if c.ready == c.disks && !pivoting {
            pivoting = true;
            clock.enter(Phase::Cutover);
        }
        if last.elapsed() < Duration::from_millis(250) {
            return;
        }
        last = Instant::now();
        let secs = t0.elapsed().as_secs_f64();
        // An average over at least a second: a shorter window gives no honest rate.
        let rate = if secs >= 1.0 {
            vmshift_core::rate_bytes_per_sec(c.done, secs)
        } else {
            0
        };
        ctx.em.emit(JobEvent::Progress(Progress {
            phase: "copy".into(),
            done_bytes: c.done,
            total_bytes: c.total,
            rate_bytes_per_sec: rate,
            eta_ms: (rate > 0).then(|| c.total.saturating_sub(c.done) * 1000 / rate),
            disks: Vec::new(),
        }));
    };
    let cancelled = || ctx.control.is_cancelled() || ctx.control.is_interrupted();
    let out =
        copy_and_pivot(lv, &dom, &targets, &opts, &mut on_progress, &cancelled).map_err(|e| {
            let phase = if e.pivoted.is_empty() {
                Phase::Copy
            } else {
                Phase::Cutover
            };
            Failed {
                phase,
                message: if e.pivoted.is_empty() && !e.cancelled {
                    format!(
                        "{e}; the domain still runs on its source disks, the targets were removed"
                    )
                } else if e.cancelled {
                    "cancelled; the domain still runs on its source disks, the targets were removed"
                        .into()
                } else {
                    e.message.clone()
                },
                status: if e.cancelled {
                    JobStatus::Cancelled
                } else {
                    JobStatus::Failed
                },
            }
        })?;
    if !pivoting {
        clock.enter(Phase::Cutover);
    }
    let disks = out
        .disks
        .iter()
        .zip(&p.disks)
        .map(|(c, d)| DiskReport {
            device: c.disk.clone(),
            old_path: d.source.display().to_string(),
            new_path: c.dest.display().to_string(),
            format: d.dest_format.as_str().into(),
            bytes: c.bytes,
            copy_mode: c.mode.as_qmp().into(),
            copy_mode_reason: c.reason.clone(),
            // The disks pivot together: each took the group's pivot time.
            pivot_ms: Some(out.pivot_ms),
            time_to_ready_ms: Some(c.ready_ms),
        })
        .collect();
    Ok(Moved {
        disks,
        bytes: out.disks.iter().map(|d| d.bytes).sum(),
        verified: false,
        verified_bytes: 0,
        skipped: 0,
        reused: 0,
        pivot_ms: Some(out.pivot_ms),
        notes: vec![format!(
            "libvirt block copy: all disks ready after {} ms, pivoted in {} ms",
            out.ready_ms, out.pivot_ms
        )],
        warnings: vec![
            "live: the copy is libvirt's block copy (QEMU's mirror: ready, then pivot); no independent digest of a disk the guest keeps writing".into(),
        ],
    })
}
