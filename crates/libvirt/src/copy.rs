//! A live move through libvirt's own block copy: `virDomainBlockCopy` per disk, readiness
//! from `BLOCK_JOB_2` events, then every disk pivoted (`virDomainBlockJobAbort` with
//! `PIVOT`). libvirt keeps its view of the disks right (the live XML, and with a transient
//! job on a persistent domain, the definition once pivoted); vmshift never speaks QMP here.
//!
//! Copy modes follow the QMP driver's policy ([`vmshift_qmp::policy`]): `auto` picks
//! write-blocking (`VIR_DOMAIN_BLOCK_COPY_SYNCHRONOUS_WRITES`) from the guest's measured write
//! rate; a background job that misses its convergence bound is cancelled and restarted
//! write-blocking (libvirt 9.0 cannot switch a running job).

use crate::conn::{DomainRef, Libvirt};
use crate::error::LibvirtError;
use crate::events::{BlockJobStatus, Subscription};
use std::collections::HashMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};
use virt::sys;
use vmshift_core::rate::RateLimit;
use vmshift_qmp::policy::{self, CopyMode, CopyModeRequest, Fallback, ModeDecision};

/// One disk to copy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CopyTarget {
    /// The disk's target dev (`vda`).
    pub disk: String,
    /// The new image file (created by libvirt; must not exist).
    pub dest: PathBuf,
    /// Its format (`raw`, `qcow2`).
    pub format: String,
    /// Bytes the copy is expected to move (sizes the convergence bound).
    pub size: u64,
}

/// How to copy.
pub struct CopyOptions<'a> {
    /// Copy only the top image (`VIR_DOMAIN_BLOCK_COPY_SHALLOW`); the copy keeps the chain.
    pub shallow: bool,
    /// Speed limit of each disk's job, bytes/s (0: none); followed while the copy runs.
    pub limit: &'a RateLimit,
    /// The requested copy mode.
    pub copy_mode: CopyModeRequest,
    /// Give up if not every disk is ready after this long.
    pub ready_timeout: Option<Duration>,
}

/// Progress of the whole copy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CopyProgress {
    /// Bytes copied, summed over the disks (libvirt's `cur`).
    pub done: u64,
    /// The jobs' totals, summed (grow while the guest re-dirties areas).
    pub total: u64,
    /// Disks that are ready.
    pub ready: usize,
    /// Disks in all.
    pub disks: usize,
}

/// What happened to one disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskCopied {
    /// Target dev.
    pub disk: String,
    /// Its new image.
    pub dest: PathBuf,
    /// The copy mode it finished in.
    pub mode: CopyMode,
    /// Why that mode (with the numbers).
    pub reason: String,
    /// Time from its (last) start to ready, ms.
    pub ready_ms: u64,
    /// Bytes its job reported copied at ready.
    pub bytes: u64,
    /// Whether it was restarted write-blocking after missing its bound.
    pub restarted: bool,
}

/// A finished copy: every disk pivoted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CopyOutcome {
    /// Per disk, in request order.
    pub disks: Vec<DiskCopied>,
    /// Time from the first start to the last ready, ms.
    pub ready_ms: u64,
    /// Time the pivots of all disks took together, ms.
    pub pivot_ms: u64,
}

/// A copy that did not pivot: every job was ended and every target removed.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct CopyFailure {
    /// One line: what failed.
    pub message: String,
    /// Whether the cause was a cancel request.
    pub cancelled: bool,
    /// Disks already pivoted when a later pivot failed (normally empty): these run on
    /// their new images.
    pub pivoted: Vec<String>,
}

#[derive(Clone)]
struct Running {
    target: CopyTarget,
    decision: ModeDecision,
    started: Instant,
    ready_at: Option<Instant>,
    restarted: bool,
    samples: (u64, Instant),
    bytes: u64,
}

/// The `<disk>` element describing a destination file (`virDomainBlockCopy`'s `destxml`).
pub fn dest_xml(t: &CopyTarget) -> String {
    let esc = |s: &str| {
        s.replace('&', "&amp;")
            .replace('<', "&lt;")
            .replace('\'', "&apos;")
    };
    format!(
        "<disk type='file'><source file='{}'/><driver type='{}'/></disk>",
        esc(&t.dest.to_string_lossy()),
        esc(&t.format)
    )
}

fn flags(shallow: bool, mode: CopyMode) -> u32 {
    let mut f = sys::VIR_DOMAIN_BLOCK_COPY_TRANSIENT_JOB;
    if shallow {
        f |= sys::VIR_DOMAIN_BLOCK_COPY_SHALLOW;
    }
    if mode == CopyMode::WriteBlocking {
        f |= sys::VIR_DOMAIN_BLOCK_COPY_SYNCHRONOUS_WRITES;
    }
    f
}

/// Measures the guest's write rate per disk over `window`, bytes/s.
fn write_rates(dom: &DomainRef, disks: &[CopyTarget], window: Duration) -> HashMap<String, u64> {
    let before: Vec<u64> = disks
        .iter()
        .map(|d| dom.written_bytes(&d.disk).unwrap_or(0))
        .collect();
    let t = Instant::now();
    std::thread::sleep(window);
    disks
        .iter()
        .zip(before)
        .map(|(d, b)| {
            let a = dom.written_bytes(&d.disk).unwrap_or(b);
            (d.disk.clone(), policy::write_rate(b, a, t.elapsed()))
        })
        .collect()
}

/// Copies every disk of `targets`, waits until all are ready and pivots them all. Calls
/// `progress` about four times a second; `cancelled` is polled as often.
///
/// # Errors
/// [`CopyFailure`] for any failure before the pivots (jobs ended, targets removed, the
/// domain still on its sources) or a failing pivot.
pub fn copy_and_pivot(
    lv: &Libvirt,
    dom: &DomainRef,
    targets: &[CopyTarget],
    opts: &CopyOptions<'_>,
    progress: &mut dyn FnMut(&CopyProgress),
    cancelled: &dyn Fn() -> bool,
) -> Result<CopyOutcome, CopyFailure> {
    let fail = |message: String| CopyFailure {
        message,
        cancelled: false,
        pivoted: Vec::new(),
    };
    let sub = Subscription::subscribe(lv, dom).map_err(|e| fail(e.to_string()))?;
    let rates = write_rates(dom, targets, Duration::from_secs(1));
    let limit0 = opts.limit.get();
    let limit = (limit0 > 0).then_some(limit0);
    let mut running: Vec<Running> = Vec::new();
    let first = Instant::now();
    let mut outcome = (|| -> Result<(), CopyFailure> {
        for t in targets {
            let decision = policy::choose_copy_mode(
                opts.copy_mode,
                rates.get(&t.disk).copied().unwrap_or(0),
                limit,
                t.size,
                false,
            );
            start(dom, t, opts.shallow, decision.mode, limit0).map_err(|e| fail(e.to_string()))?;
            let w = dom.written_bytes(&t.disk).unwrap_or(0);
            running.push(Running {
                target: t.clone(),
                decision,
                started: Instant::now(),
                ready_at: None,
                restarted: false,
                samples: (w, Instant::now()),
                bytes: 0,
            });
        }
        wait_ready(dom, &sub, &mut running, opts, progress, cancelled, first)
    })();
    if outcome.is_ok() && cancelled() {
        outcome = Err(CopyFailure {
            message: "cancelled".into(),
            cancelled: true,
            pivoted: Vec::new(),
        });
    }
    if let Err(e) = outcome {
        abandon(dom, &running);
        return Err(e);
    }
    let ready_ms = ms(first.elapsed());
    let t = Instant::now();
    let mut pivoted = Vec::new();
    for r in &running {
        if let Err(e) = dom.end_job(&r.target.disk, true) {
            let rest: Vec<Running> = running
                .iter()
                .filter(|x| !pivoted.contains(&x.target.disk) && x.target.disk != r.target.disk)
                .cloned()
                .collect();
            abandon(dom, &rest);
            return Err(CopyFailure {
                message: format!("{e} (disks already on their new images: {pivoted:?})"),
                cancelled: false,
                pivoted,
            });
        }
        pivoted.push(r.target.disk.clone());
    }
    let pivot_ms = ms(t.elapsed());
    Ok(CopyOutcome {
        disks: running
            .iter()
            .map(|r| DiskCopied {
                disk: r.target.disk.clone(),
                dest: r.target.dest.clone(),
                mode: r.decision.mode,
                reason: r.decision.reason.clone(),
                ready_ms: r.ready_at.map_or(0, |at| ms(at - r.started)),
                bytes: r.bytes,
                restarted: r.restarted,
            })
            .collect(),
        ready_ms,
        pivot_ms,
    })
}

/// `VIR_DOMAIN_BLOCK_JOB_TYPE_COPY`.
const COPY_JOB: i32 = 2;

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

fn start(
    dom: &DomainRef,
    t: &CopyTarget,
    shallow: bool,
    mode: CopyMode,
    bandwidth: u64,
) -> Result<(), LibvirtError> {
    dom.block_copy(&t.disk, &dest_xml(t), bandwidth, flags(shallow, mode))
}

/// Ends every job (cancel, waiting) and removes its target.
fn abandon(dom: &DomainRef, running: &[Running]) {
    for r in running {
        if dom.block_job(&r.target.disk).ok().flatten().is_some() {
            if let Err(e) = dom.end_job(&r.target.disk, false) {
                tracing::warn!("{e}");
            }
        }
        let _ = std::fs::remove_file(&r.target.dest);
    }
}

fn wait_ready(
    dom: &DomainRef,
    sub: &Subscription<'_>,
    running: &mut [Running],
    opts: &CopyOptions<'_>,
    progress: &mut dyn FnMut(&CopyProgress),
    cancelled: &dyn Fn() -> bool,
    first: Instant,
) -> Result<(), CopyFailure> {
    let fail = |message: String| CopyFailure {
        message,
        cancelled: false,
        pivoted: Vec::new(),
    };
    let mut speed = opts.limit.get();
    loop {
        if cancelled() {
            return Err(CopyFailure {
                message: "cancelled".into(),
                cancelled: true,
                pivoted: Vec::new(),
            });
        }
        for ev in sub.drain() {
            let Some(r) = running.iter_mut().find(|r| r.target.disk == ev.disk) else {
                continue;
            };
            // Only copy jobs are ours; an end event while a copy job still runs on the disk
            // is a late one of a job that was replaced (a restart in another mode).
            let ended = matches!(
                ev.status,
                BlockJobStatus::Failed | BlockJobStatus::Cancelled | BlockJobStatus::Completed
            );
            if ev.kind != COPY_JOB
                || (ended
                    && dom
                        .block_job(&r.target.disk)
                        .ok()
                        .flatten()
                        .is_some_and(|j| j.kind == COPY_JOB))
            {
                tracing::debug!("ignored block-job event {ev:?}");
                continue;
            }
            match ev.status {
                BlockJobStatus::Ready => {
                    r.ready_at.get_or_insert_with(Instant::now);
                }
                BlockJobStatus::Failed => {
                    return Err(fail(format!(
                        "the block copy of {} to {} failed (libvirt's log for the domain says why; often the destination is full)",
                        r.target.disk,
                        r.target.dest.display()
                    )))
                }
                BlockJobStatus::Cancelled | BlockJobStatus::Completed if r.ready_at.is_none() => {
                    return Err(fail(format!(
                        "the block copy of {} ended before it was ready (cancelled outside vmshift?)",
                        r.target.disk
                    )))
                }
                _ => {}
            }
        }
        let now_limit = opts.limit.get();
        if now_limit != speed {
            for r in running.iter() {
                dom.set_job_speed(&r.target.disk, now_limit)
                    .map_err(|e| fail(e.to_string()))?;
            }
            speed = now_limit;
        }
        let mut p = CopyProgress {
            done: 0,
            total: 0,
            ready: 0,
            disks: running.len(),
        };
        for r in running.iter_mut() {
            match dom
                .block_job(&r.target.disk)
                .map_err(|e| fail(e.to_string()))?
            {
                Some(i) => {
                    r.bytes = i.cur;
                    p.done += i.cur;
                    p.total += i.end;
                }
                None if r.ready_at.is_none() => {
                    return Err(fail(format!(
                        "the block copy of {} is gone before it was ready",
                        r.target.disk
                    )))
                }
                None => {}
            }
            if r.ready_at.is_some() {
                p.ready += 1;
                continue;
            }
            // A background job that will not converge restarts write-blocking.
            let w = dom.written_bytes(&r.target.disk).unwrap_or(r.samples.0);
            let span = r.samples.1.elapsed();
            let observed = policy::write_rate(r.samples.0, w, span);
            let limit = (speed > 0).then_some(speed);
            let late = r.started.elapsed() > r.decision.bound;
            let early = policy::fall_back_early(&r.decision, observed, span, limit);
            if r.decision.mode == CopyMode::Background && (late || early) {
                if r.decision.fallback != Fallback::Restart {
                    return Err(fail(format!(
                        "{} did not become ready within {} s in background mode (try --copy-mode write-blocking or a higher --bwlimit)",
                        r.target.disk,
                        r.decision.bound.as_secs()
                    )));
                }
                dom.end_job(&r.target.disk, false)
                    .map_err(|e| fail(e.to_string()))?;
                let _ = std::fs::remove_file(&r.target.dest);
                r.decision = policy::choose_copy_mode(
                    CopyModeRequest::WriteBlocking,
                    observed,
                    limit,
                    r.target.size,
                    false,
                );
                r.decision.reason = format!(
                    "auto: restarted write-blocking after background missed its bound (guest writes {observed} B/s)"
                );
                start(dom, &r.target, opts.shallow, CopyMode::WriteBlocking, speed)
                    .map_err(|e| fail(e.to_string()))?;
                r.started = Instant::now();
                r.restarted = true;
            }
            if span >= policy::WATCH_WINDOW {
                r.samples = (w, Instant::now());
            }
        }
        progress(&p);
        if p.ready == p.disks {
            return Ok(());
        }
        if let Some(t) = opts.ready_timeout {
            if first.elapsed() > t {
                return Err(fail(format!(
                    "not every disk was ready after {} s (--ready-timeout)",
                    t.as_secs()
                )));
            }
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}
