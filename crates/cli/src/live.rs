//! `vmshift migrate|check --qmp SOCKET` and `vmshift info --qmp SOCKET`: live storage
//! migration of a running QEMU VM, driven by `vmshift-qmp`. This module only translates
//! arguments, prints progress and builds the report; the decisions live in the library.

use anyhow::{Context, Result};
use serde_json::json;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, Instant};
use vmshift_core::report::{DiskReport, ImageSide, JobError, PhaseTiming, Report};
use vmshift_core::{format_bytes, JobId, JobKind, JobStatus, Phase};
use vmshift_qmp::live::LiveError;
use vmshift_qmp::{
    CopyModeRequest, LiveMigration, LiveOptions, LiveOutcome, LivePlan, LiveProgress, Qmp,
};

use crate::jobs::{lock_job, open_journal, JournalLink};
use crate::state::write_report;

/// Records the live job in the journal and takes its locks, so `vmshift jobs` lists it and
/// `vmshift cancel JOB` (SIGTERM to this process) cancels it cleanly.
fn journal_start(
    job: &JobId,
    plan: &LivePlan,
    a: &LiveArgs,
    extra: &serde_json::Value,
) -> Result<(JournalLink, Vec<vmshift_journal::FileLock>)> {
    let j = open_journal()?;
    let first = plan.disks.first().context("the plan has no disk")?;
    let locks = lock_job(&job.0, &first.target)?;
    let new = vmshift_journal::NewJob {
        id: job.0.clone(),
        kind: "live".into(),
        source: first.disk.file.clone(),
        destination: first.target.display().to_string(),
        partial: String::new(),
        options: {
            let mut o = json!({"qmp": a.qmp, "to": a.to, "disks": a.disks, "bwlimit": a.bwlimit,
                        "copy_mode": a.copy_mode, "shallow": a.shallow, "delete_source": a.delete_source,
                        "format": a.format.map(vmshift_qmp::TargetFormat::as_str),
                        "ready_timeout": a.ready_timeout});
            if let (Some(o), Some(e)) = (o.as_object_mut(), extra.as_object()) {
                o.extend(e.clone());
            }
            o
        },
        facts: json!({"disks": plan.disks.iter().map(|d| json!({"device": d.disk.device,
            "source": d.disk.file, "target": d.target, "virtual_size": d.disk.virtual_size,
            "source_format": d.disk.format, "target_format": d.format.as_str()})).collect::<Vec<_>>()}),
        chunk_size: 0,
        total_bytes: plan.disks.iter().map(|d| d.disk.virtual_size).sum(),
    };
    j.create_job(&new).map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok((
        JournalLink {
            journal: std::sync::Arc::new(std::sync::Mutex::new(j)),
            id: job.0.clone(),
            run: 1,
        },
        locks,
    ))
}

/// Copy mode choices on the command line.
#[derive(
    Debug,
    Clone,
    Copy,
    Default,
    PartialEq,
    Eq,
    clap::ValueEnum,
    serde::Serialize,
    serde::Deserialize,
)]
#[serde(rename_all = "kebab-case")]
pub enum CopyModeArg {
    /// Pick from the measured guest write rate; fall back to write-blocking if the mirror does
    /// not become ready in time.
    #[default]
    Auto,
    /// Guest writes are copied later (may never converge under heavy writes).
    Background,
    /// Guest writes go to both sides synchronously (always converges; slower guest writes).
    WriteBlocking,
}

/// Options only the live path uses (flattened into `check`/`migrate`).
#[derive(Debug, Clone, Default, clap::Args, serde::Serialize, serde::Deserialize)]
pub struct LiveFlags {
    /// QMP socket of a running QEMU: move its disks live (blockdev-mirror + pivot) instead of
    /// copying an image file.
    #[arg(long, value_name = "SOCKET")]
    #[serde(default)]
    pub qmp: Option<PathBuf>,
    /// Live: disk to move (device id like vd0, qdev path or node name); repeat for several.
    /// Default: every writable disk.
    #[arg(long = "disk", value_name = "ID", requires = "qmp")]
    #[serde(default)]
    pub disks: Vec<String>,
    /// Live: mirror copy mode.
    #[arg(long, value_enum, default_value_t = CopyModeArg::Auto)]
    #[serde(default)]
    pub copy_mode: CopyModeArg,
    /// Live: give up cleanly if the disks are not all ready after this many seconds.
    #[arg(long, value_name = "SECONDS", requires = "qmp")]
    #[serde(default)]
    pub ready_timeout: Option<u64>,
}

/// Everything the live path needs, gathered from the parsed command line.
#[derive(Debug, Clone)]
pub struct LiveArgs {
    /// QMP socket.
    pub qmp: PathBuf,
    /// Destination directory.
    pub to: PathBuf,
    /// Disk selectors.
    pub disks: Vec<String>,
    /// Target format (`raw`/`qcow2`), `None` = the source's.
    pub format: Option<vmshift_qmp::TargetFormat>,
    /// `sync=top`, keeping the backing chain.
    pub shallow: bool,
    /// Bytes/s.
    pub bwlimit: Option<u64>,
    /// Copy mode.
    pub copy_mode: CopyModeArg,
    /// Seconds.
    pub ready_timeout: Option<u64>,
    /// Delete sources after the pivot.
    pub delete_source: bool,
    /// NDJSON on stdout.
    pub json: bool,
    /// Extra report file.
    pub report: Option<PathBuf>,
    /// Do not record the job in the journal (then `vmshift cancel JOB` cannot reach it).
    pub no_journal: bool,
}

impl LiveArgs {
    /// The live arguments of `check`/`migrate` (call only when `--qmp` is given).
    pub fn from_migrate(m: &crate::cli::MigrateArgs) -> LiveArgs {
        LiveArgs {
            qmp: m.live.qmp.clone().unwrap_or_default(),
            to: m.to.clone(),
            disks: m.live.disks.clone(),
            format: m.format.map(|f| match f {
                crate::cli::FormatArg::Raw => vmshift_qmp::TargetFormat::Raw,
                crate::cli::FormatArg::Qcow2 => vmshift_qmp::TargetFormat::Qcow2,
            }),
            shallow: m.keep_backing,
            bwlimit: m.bwlimit,
            copy_mode: m.live.copy_mode,
            ready_timeout: m.live.ready_timeout,
            delete_source: m.delete_source,
            json: m.json,
            report: m.report.clone(),
            no_journal: m.no_journal,
        }
    }

    fn options(&self) -> LiveOptions {
        let mut o = LiveOptions::new(&self.to);
        o.disks = self.disks.clone();
        o.format = self.format;
        o.shallow = self.shallow;
        o.bwlimit = self.bwlimit.filter(|&b| b > 0);
        o.copy_mode = match self.copy_mode {
            CopyModeArg::Auto => CopyModeRequest::Auto,
            CopyModeArg::Background => CopyModeRequest::Background,
            CopyModeArg::WriteBlocking => CopyModeRequest::WriteBlocking,
        };
        o.ready_timeout = self.ready_timeout.map(Duration::from_secs);
        o.delete_source = self.delete_source;
        o
    }
}

fn connect(sock: &Path) -> Result<Qmp> {
    let mut q = Qmp::connect(sock, Duration::from_secs(5))
        // The QMP error already names its cause; a context chain would print it twice.
        .map_err(|e| anyhow::anyhow!("cannot talk to QEMU at {}: {e}", sock.display()))?;
    // QEMU's main loop can stall for many seconds under a write-blocking mirror (case C25).
    q.set_timeout(Duration::from_secs(60));
    Ok(q)
}

fn event(json_mode: bool, v: serde_json::Value) {
    if json_mode {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{v}");
        let _ = out.flush();
    }
}

fn print_plan(plan: &LivePlan, say: &dyn Fn(&str)) {
    say(&format!(
        "QEMU {}; block-job-change: {}; destination free: {}",
        plan.features.version,
        if plan.features.block_job_change {
            "yes"
        } else {
            "no (7.2: restart to change copy mode)"
        },
        format_bytes(plan.dest_available)
    ));
    for d in &plan.disks {
        say(&format!(
            "  {} (node {}): {} [{} {}] -> {} [{}], sync {:?}, needs up to {}",
            d.disk.device,
            d.disk.node_name,
            d.disk.file,
            d.disk.format,
            format_bytes(d.disk.virtual_size),
            d.target.display(),
            d.format.as_str(),
            d.sync,
            format_bytes(d.needed_bytes)
        ));
    }
}

/// `vmshift check --qmp`: 0 when the live migration would go ahead, 2 when refused.
///
/// # Errors
/// When QEMU cannot be reached.
pub fn run_check(a: &LiveArgs) -> Result<i32> {
    let mut qmp = connect(&a.qmp)?;
    match LiveMigration::plan(&mut qmp, &a.options()) {
        Ok(plan) => {
            if a.json {
                event(
                    true,
                    json!({"event": "plan", "go": true, "disks": plan.disks.iter().map(|d| json!({
                    "device": d.disk.device, "node": d.disk.node_name, "source": d.disk.file,
                    "target": d.target, "format": d.format.as_str(), "virtual_size": d.disk.virtual_size,
                    "needed_bytes": d.needed_bytes})).collect::<Vec<_>>()}),
                );
            } else {
                print_plan(&plan, &|l| println!("{l}"));
                println!("check: the live migration would go ahead");
            }
            Ok(0)
        }
        Err(
            e @ (LiveError::Refused(_)
            | LiveError::NoSuchDisk { .. }
            | LiveError::Unsupported { .. }),
        ) => {
            if a.json {
                event(
                    true,
                    json!({"event": "plan", "go": false, "reason": e.to_string()}),
                );
            } else {
                println!("check: refused: {e}");
            }
            Ok(2)
        }
        Err(e) => Err(e.into()),
    }
}

/// `vmshift info --qmp`: the VM's disks as QEMU sees them.
///
/// # Errors
/// When QEMU cannot be reached.
pub fn run_info(sock: &Path, json_out: bool) -> Result<i32> {
    let mut qmp = connect(sock)?;
    let features = vmshift_qmp::Features::detect(&mut qmp)?;
    let disks = vmshift_qmp::disk::discover(&mut qmp)?;
    if json_out {
        let v = json!({
            "qemu_version": features.version.to_string(),
            "block_job_change": features.block_job_change,
            "disks": disks.iter().map(|d| json!({
                "device": d.device, "qdev": d.qdev, "node_name": d.node_name, "file": d.file,
                "format": d.format, "virtual_size": d.virtual_size, "allocated_bytes": d.actual_size,
                "backing_chain": d.backing_chain.iter().map(|b| json!({"file": b.filename, "format": b.format})).collect::<Vec<_>>(),
                "read_only": d.read_only, "shared": d.shared, "busy": d.busy,
                "protocol": d.protocol_driver})).collect::<Vec<_>>(),
        });
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        println!(
            "QEMU {} (block-job-change: {})",
            features.version, features.block_job_change
        );
        for d in &disks {
            println!(
                "{} node {}: {} [{}] virtual {} allocated {}{}{}{}",
                d.device,
                d.node_name,
                d.file,
                d.format,
                format_bytes(d.virtual_size),
                format_bytes(d.actual_size),
                if d.read_only { ", read-only" } else { "" },
                if d.shared { ", shared" } else { "" },
                d.busy
                    .as_deref()
                    .map(|b| format!(", busy: {b}"))
                    .unwrap_or_default()
            );
            for b in &d.backing_chain {
                println!("    backing {} [{}]", b.filename, b.format);
            }
        }
    }
    Ok(0)
}

/// Whole milliseconds, rounded up, of a non-negative duration in ms.
fn ms_ceil(ms: f64) -> u64 {
    if ms.is_nan() || ms <= 0.0 {
        0
    } else if ms >= u64::MAX as f64 {
        u64::MAX
    } else {
        #[allow(clippy::cast_possible_truncation)] // range checked above
        let v = ms.ceil() as u64;
        v
    }
}

fn now_rfc3339() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

fn side(path: &Path, format: &str, virtual_size: u64) -> ImageSide {
    use std::os::unix::fs::MetadataExt;
    ImageSide {
        path: path.display().to_string(),
        format: format.to_owned(),
        virtual_size,
        allocated_bytes: std::fs::metadata(path)
            .map(|m| m.blocks() * 512)
            .unwrap_or(0),
        backing_chain: Vec::new(),
    }
}

/// Phase timings from the driver's progress phases (mirrored into the journal).
struct Phases {
    done: Vec<PhaseTiming>,
    cur: Option<(Phase, String, Instant)>,
    link: Option<JournalLink>,
}

impl Phases {
    fn enter(&mut self, p: Phase, json_mode: bool) {
        if self.cur.as_ref().is_some_and(|c| c.0 == p) {
            return;
        }
        self.end();
        event(
            json_mode,
            json!({"event": "phase", "phase": p.as_str(), "state": "started"}),
        );
        if !json_mode {
            eprintln!("vmshift: {p}");
        }
        // The journal shows how far a live job got (status, and resume after a crash).
        if let Some(l) = &self.link {
            l.note(|j, id| j.phase_started(id, l.run, p.as_str()));
        }
        self.cur = Some((p, now_rfc3339(), Instant::now()));
    }
    fn end(&mut self) {
        if let Some((name, started_at, t)) = self.cur.take() {
            self.done.push(PhaseTiming {
                name,
                started_at,
                duration_ms: vmshift_core::millis(t.elapsed()),
            });
        }
    }
}

/// `vmshift migrate --qmp`: mirrors, pivots, reports. Exit 0 succeeded, 1 failed or
/// cancelled after starting, 2 refused.
///
/// # Errors
/// When QEMU cannot be reached or the report cannot be written.
pub fn run_migrate(a: &LiveArgs, cancel: Arc<AtomicBool>) -> Result<i32> {
    run_migrate_with(a, cancel, RunExtras::default()).map(|(code, _)| code)
}

/// An existing journaled job that a run continues (`vmshift resume` of a live job
/// interrupted before its pivot): same job id, its journal run and its locks.
pub struct Continue {
    /// The job id.
    pub job_id: String,
    /// The journal link (with the new run number).
    pub link: JournalLink,
    /// The job and target locks, already held.
    pub locks: Vec<vmshift_journal::FileLock>,
    /// The targets the job recorded: the new plan must name exactly these.
    pub targets: Vec<PathBuf>,
}

/// What `resume` and `rollback` add to a live run.
#[derive(Default)]
pub struct RunExtras {
    /// Continue this job instead of creating one.
    pub cont: Option<Continue>,
    /// Lines for the report's notes.
    pub notes: Vec<String>,
    /// Extra keys recorded in a new job's journaled options (e.g. `rollback_of`).
    pub options: serde_json::Value,
}

/// [`run_migrate`] with a job to continue, report notes and extra journaled options.
/// Returns the exit status and the job id.
///
/// # Errors
/// When QEMU cannot be reached or the report cannot be written.
pub fn run_migrate_with(
    a: &LiveArgs,
    cancel: Arc<AtomicBool>,
    extras: RunExtras,
) -> Result<(i32, String)> {
    if let Some(p) = a
        .report
        .as_deref()
        .and_then(crate::safety::report_target_problem)
    {
        eprintln!("vmshift: refused: {}", p.one_line());
        return Ok((2, String::new()));
    }
    let started = Instant::now();
    let RunExtras {
        mut cont,
        notes,
        options: extra_options,
    } = extras;
    let job = match &cont {
        Some(c) => JobId(c.job_id.clone()),
        None => JobId::new(),
    };
    let mut report = Report::new(&job.0, JobKind::Live, &now_rfc3339());
    report.notes.extend(notes);
    let json_mode = a.json;
    event(
        json_mode,
        json!({"event": "job", "job_id": job.0, "kind": "live"}),
    );
    let mut phases = Phases {
        done: Vec::new(),
        cur: None,
        link: None,
    };
    let mut _locks = Vec::new();
    phases.enter(Phase::Check, json_mode);
    let mut qmp = connect(&a.qmp)?;
    let plan = LiveMigration::plan(&mut qmp, &a.options())
        .and_then(|p| crate::safety::check_live_plan(p, a.delete_source));
    let result: Result<(LivePlan, LiveOutcome), (Phase, LiveError)> = match plan {
        Err(e) => Err((Phase::Check, e)),
        Ok(plan) => {
            if !json_mode {
                print_plan(&plan, &|l| eprintln!("{l}"));
            }
            if let Some(c) = cont.take() {
                let planned: Vec<PathBuf> = plan.disks.iter().map(|d| d.target.clone()).collect();
                if planned != c.targets {
                    let msg = format!(
                        "the VM's disks now map to the targets {planned:?}, the job recorded {:?}: start a new migration",
                        c.targets
                    );
                    c.link.note(|j, id| j.set_status(id, "failed", Some(&msg)));
                    eprintln!("vmshift: resume refused: {msg}");
                    return Ok((2, job.0));
                }
                _locks = c.locks;
                c.link
                    .note(|j, id| j.phase_started(id, c.link.run, Phase::Check.as_str()));
                phases.link = Some(c.link);
            } else if !a.no_journal {
                match journal_start(&job, &plan, a, &extra_options) {
                    Ok((link, locks)) => {
                        _locks = locks;
                        link.note(|j, id| j.phase_started(id, link.run, Phase::Check.as_str()));
                        phases.link = Some(link);
                    }
                    Err(e) => {
                        eprintln!("vmshift: refused: {e:#}");
                        return Ok((2, job.0));
                    }
                }
            }
            if let Some(d) = plan.disks.first() {
                report.source = side(&d.disk.path(), &d.disk.format, d.disk.virtual_size);
                report.source.backing_chain = d
                    .disk
                    .backing_chain
                    .iter()
                    .map(|b| b.filename.clone())
                    .collect();
            }
            let mut last = Instant::now() - Duration::from_secs(5);
            let mut phase_now = Phase::Check;
            let mut cb = |p: &LiveProgress| {
                if p.phase == "pivoted" {
                    crate::jobs::test_kill_point("live:pivoted");
                }
                // After the pivot the old nodes are detached ("pivoted" → "done"): cleanup,
                // as is the undo of a failed job ("cleanup").
                let ph = match p.phase {
                    "sampling" | "copying" => Phase::Copy,
                    "pivoting" => Phase::Cutover,
                    _ => Phase::Cleanup,
                };
                if ph != phase_now {
                    phase_now = ph;
                    phases.enter(ph, json_mode);
                }
                if let Some(n) = &p.note {
                    event(json_mode, json!({"event": "note", "message": n}));
                    if !json_mode {
                        eprintln!("vmshift: {n}");
                    }
                }
                let every = if json_mode {
                    Duration::from_millis(250)
                } else {
                    Duration::from_secs(1)
                };
                if p.phase == "copying" && last.elapsed() >= every {
                    last = Instant::now();
                    let eta_ms = p.eta.map(vmshift_core::millis);
                    event(
                        json_mode,
                        json!({"event": "progress", "phase": "copy",
                        "done_bytes": p.total.done, "total_bytes": p.total.total,
                        "rate_bytes_per_sec": p.rate, "eta_ms": eta_ms,
                        "disks": p.disks.iter().map(|d| json!({"device": d.device, "done_bytes": d.progress.done,
                            "total_bytes": d.progress.total, "ready": d.ready, "waiting_for_ready": d.waiting_for_ready, "copy_mode": d.copy_mode.as_qmp()})).collect::<Vec<_>>()}),
                    );
                    if !json_mode {
                        let per: Vec<String> = p
                            .disks
                            .iter()
                            .map(|d| {
                                if d.ready {
                                    format!("{} ready", d.device)
                                } else if d.waiting_for_ready {
                                    format!("{} waiting for ready", d.device)
                                } else {
                                    format!(
                                        "{} {:.0}% {}",
                                        d.device,
                                        d.progress.fraction() * 100.0,
                                        d.copy_mode
                                    )
                                }
                            })
                            .collect();
                        eprintln!(
                            "copy {}/{} {}/s ETA {} [{}]",
                            format_bytes(p.total.done),
                            format_bytes(p.total.total),
                            format_bytes(p.rate),
                            p.eta
                                .map(|e| format!("{}s", e.as_secs()))
                                .unwrap_or_else(|| "?".into()),
                            per.join(", ")
                        );
                    }
                }
            };
            match LiveMigration::run(&mut qmp, &plan, &mut cb, &cancel) {
                Ok(out) => Ok((plan, out)),
                Err(e) => {
                    let ph = match &e {
                        LiveError::PivotFailed { .. } => Phase::Cutover,
                        _ => Phase::Copy,
                    };
                    Err((ph, e))
                }
            }
        }
    };
    phases.end();
    if let Some(c) = cont.take() {
        // Refused before the plan: still record the outcome on the continued job.
        phases.link = Some(c.link);
    }
    let code = match result {
        Ok((plan, out)) => {
            report.status = JobStatus::Succeeded;
            if let (Some(d), Some(p)) = (out.disks.first(), plan.disks.first()) {
                report.destination = side(&d.new_path, d.format.as_str(), d.virtual_size);
                if p.sync == vmshift_qmp::live::SyncMode::Top {
                    report.backing = "kept".into();
                    report.destination.backing_chain = report.source.backing_chain.clone();
                } else if !p.disk.backing_chain.is_empty() {
                    report.backing = "flattened".into();
                }
            }
            report.source_deleted =
                out.disks.iter().all(|d| d.source_deleted) && !out.disks.is_empty();
            report.bytes_copied = out.disks.iter().map(|d| d.bytes).sum();
            report.throughput_bytes_per_sec = vmshift_core::rate_bytes_per_sec(
                report.bytes_copied,
                (out.duration_ms as f64 / 1000.0).max(1e-3),
            );
            report.pivot_ms = Some(ms_ceil(out.pivot_ms));
            report.disks = out
                .disks
                .iter()
                .map(|d| DiskReport {
                    device: d.device.clone(),
                    old_path: d.old_path.display().to_string(),
                    new_path: d.new_path.display().to_string(),
                    format: d.format.as_str().to_owned(),
                    bytes: d.bytes,
                    copy_mode: d.copy_mode.as_qmp().to_owned(),
                    copy_mode_reason: d.mode_reason.clone(),
                    pivot_ms: Some(ms_ceil(d.pivot_ms)),
                    time_to_ready_ms: Some(d.time_to_ready_ms),
                })
                .collect();
            report.references = out.disks.iter().map(|d| d.next_start.clone()).collect();
            report.verification.algorithm = "qemu-mirror".into();
            report.verification.verified_bytes = 0;
            report.verification.result = "skipped".into();
            report.warnings.push(
                "live: the copy is QEMU's mirror (ready, then pivot); no independent digest of a disk the guest keeps writing"
                    .into(),
            );
            for d in &out.disks {
                if !d.old_nodes_detached {
                    report.warnings.push(format!(
                        "{}: QEMU still holds the old image {}",
                        d.device,
                        d.old_path.display()
                    ));
                }
            }
            report.notes.push(format!("QEMU {}", out.qemu_version));
            0
        }
        Err((phase, e)) => {
            report.status = match &e {
                LiveError::Refused(_)
                | LiveError::NoSuchDisk { .. }
                | LiveError::Unsupported { .. } => JobStatus::Refused,
                e if e.is_cancelled() => JobStatus::Cancelled,
                _ => JobStatus::Failed,
            };
            report.error = Some(JobError {
                phase,
                message: if report.status == JobStatus::Refused
                    || phase == Phase::Cutover
                    || matches!(e, LiveError::CleanupIncomplete { .. } | LiveError::Qmp(_))
                {
                    // Only claim the VM is safe on its sources when the undo was confirmed.
                    e.to_string()
                } else {
                    format!("{e}; the VM still runs on its source disks, the targets were removed")
                },
            });
            if report.status == JobStatus::Refused {
                2
            } else {
                1
            }
        }
    };
    report.phases = std::mem::take(&mut phases.done);
    report.duration_ms = vmshift_core::millis(started.elapsed());
    let path = write_report(&report, a.report.as_deref())?;
    if let Some(l) = &phases.link {
        let error = report.error.as_ref().map(|e| e.message.clone());
        let status = report.status.as_str();
        let path_s = path.display().to_string();
        l.note(|j, id| {
            j.phase_ended(id, 0)?;
            j.set_partial_state(id, "none")?;
            j.set_report(id, &path_s)?;
            j.set_status(id, status, error.as_deref())
        });
    }
    event(json_mode, json!({"event": "report", "report": report}));
    if !json_mode {
        match &report.error {
            Some(e) => eprintln!("vmshift: {}: {}", report.status.as_str(), e.message),
            None => {
                for d in &report.disks {
                    eprintln!(
                        "vmshift: {} moved {} -> {} ({}, {} copied, {} mode, ready after {} ms, pivot {} ms)",
                        d.device,
                        d.old_path,
                        d.new_path,
                        d.format,
                        format_bytes(d.bytes),
                        d.copy_mode,
                        d.time_to_ready_ms.unwrap_or(0),
                        d.pivot_ms.unwrap_or(0)
                    );
                }
                for r in &report.references {
                    eprintln!("vmshift: next start: {r}");
                }
            }
        }
        eprintln!("report: {}", path.display());
    }
    Ok((code, job.0))
}

/// The live part of `vmshift demo`: boots the test guest (built and cached by
/// `scripts/build-guest.sh`) on a 64 MiB disk, lets it write stamped blocks, moves the disk
/// live while it writes, shuts the guest down and checks every block of the target against
/// the last sequence the guest logged. Returns the migrate exit status.
///
/// # Errors
/// When the guest cannot be built or booted, or the report cannot be written.
pub fn run_demo_live(json_mode: bool, cancel: Arc<AtomicBool>) -> Result<i32> {
    use vmshift_qmp::stamp;
    use vmshift_qmp::testvm::{Disk, Guest, TestVm};
    let root = crate::state::state_dir()?.join("demo-live");
    let _ = std::fs::remove_dir_all(&root);
    let (a, b) = (root.join("datastore-a"), root.join("datastore-b"));
    std::fs::create_dir_all(&a)?;
    std::fs::create_dir_all(&b)?;
    let repo = std::env::var_os("VMSHIFT_REPO")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../.."));
    let guest = Guest::build(&repo).context("building the test guest (scripts/build-guest.sh)")?;
    let disk = a.join("web01.raw");
    {
        let mut f = std::io::BufWriter::new(std::fs::File::create(&disk)?);
        for blk in 0..(64u64 << 20) / stamp::BLOCK as u64 {
            f.write_all(&stamp::make_block(blk, 0))?;
        }
        f.flush()?;
    }
    let mut vm = TestVm::boot(
        &root,
        &guest,
        &[Disk {
            path: disk.clone(),
            format: "raw",
        }],
        "vmshift.rate=2097152 vmshift.blocks=2048",
    )?;
    vm.wait_serial("VMSHIFT-SEQ", Duration::from_secs(60))?;
    if !json_mode {
        eprintln!(
            "vmshift demo (live): guest running on {} and writing 2 MiB/s (first 8 MiB); moving it to {}",
            disk.display(),
            b.display()
        );
    }
    let report = root.join("report.md");
    let args = LiveArgs {
        qmp: vm.qmp_path.clone(),
        to: b.clone(),
        disks: Vec::new(),
        format: None,
        shallow: false,
        bwlimit: None,
        copy_mode: CopyModeArg::Auto,
        ready_timeout: Some(300),
        delete_source: false,
        json: json_mode,
        report: Some(report.clone()),
        no_journal: false,
    };
    let code = run_migrate(&args, cancel)?;
    let mut qmp = vm.qmp()?;
    let before = stamp::batches_logged(&vm.serial_log(), "vda");
    // Let the guest finish more than one full pass over its 8 MiB region on the new disk.
    vm.wait_batches("vda", before, 150, Duration::from_secs(120))?;
    vm.quit(&mut qmp)?;
    if code == 0 {
        let target = b.join("web01.raw");
        let floor = stamp::last_floor(&vm.serial_log(), "vda").unwrap_or(0);
        // The guest writes the first 2048 blocks; every block must hold a valid stamp, and
        // those of the written region one no older than the last floor the guest logged.
        let whole = stamp::verify_raw(&target, None, 0).context("the moved disk is damaged")?;
        let rep = stamp::verify_raw(&target, Some(2048), floor)
            .context("the moved disk lost guest writes")?;
        let line = format!(
            "guest check: all {} blocks of {} hold valid stamps; the {} the guest writes are >= its last logged sequence {floor} (newest {})",
            whole.blocks,
            target.display(),
            rep.blocks,
            rep.max_seq
        );
        event(
            json_mode,
            json!({"event": "guest_check", "blocks": rep.blocks, "disk_blocks": whole.blocks, "floor": floor, "max_seq": rep.max_seq}),
        );
        if !json_mode {
            eprintln!("{line}");
        }
    }
    if !json_mode {
        println!("{}", std::fs::read_to_string(&report)?);
    }
    Ok(code)
}

/// One disk of a journaled live job (its `facts`).
#[derive(Debug, Clone)]
struct JobDisk {
    device: String,
    source: String,
    target: PathBuf,
    source_format: Option<vmshift_qmp::TargetFormat>,
}

fn job_disks(job: &vmshift_journal::JobRecord) -> Result<Vec<JobDisk>> {
    let disks = job.facts["disks"]
        .as_array()
        .filter(|d| !d.is_empty())
        .with_context(|| format!("job {}: the journal records no disks", job.id))?;
    disks
        .iter()
        .map(|d| {
            Ok(JobDisk {
                device: d["device"].as_str().unwrap_or_default().to_owned(),
                source: d["source"]
                    .as_str()
                    .with_context(|| format!("job {}: a disk has no recorded source", job.id))?
                    .to_owned(),
                target: PathBuf::from(
                    d["target"].as_str().with_context(|| {
                        format!("job {}: a disk has no recorded target", job.id)
                    })?,
                ),
                source_format: d["source_format"]
                    .as_str()
                    .and_then(vmshift_qmp::TargetFormat::parse),
            })
        })
        .collect()
}

/// The live arguments a job was started with (its journaled `options`).
fn job_args(job: &vmshift_journal::JobRecord) -> Result<LiveArgs> {
    let o = &job.options;
    let qmp = o["qmp"]
        .as_str()
        .with_context(|| format!("job {}: no QMP socket in the journal", job.id))?;
    Ok(LiveArgs {
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
        format: o["format"]
            .as_str()
            .and_then(vmshift_qmp::TargetFormat::parse),
        shallow: o["shallow"].as_bool().unwrap_or(false),
        bwlimit: o["bwlimit"].as_u64(),
        copy_mode: serde_json::from_value(o["copy_mode"].clone()).unwrap_or_default(),
        ready_timeout: o["ready_timeout"].as_u64(),
        delete_source: o["delete_source"].as_bool().unwrap_or(false),
        json: false,
        report: None,
        no_journal: false,
    })
}

/// Where each recorded disk of a job runs now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Side {
    Source,
    Target,
}

fn where_disks_run(qmp: &mut Qmp, disks: &[JobDisk]) -> std::result::Result<Vec<Side>, String> {
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

fn live_refuse(what: &str, msg: &str) -> Result<i32> {
    eprintln!("vmshift: {what} refused: {msg}");
    Ok(2)
}

/// What `resume` and `cancel` need to act on an interrupted live job: its locks, options,
/// disks, a QMP connection to its VM and where each disk runs now. `Err(code)` after printing
/// a one-line refusal (`what` names the command).
struct JobVm {
    locks: Vec<vmshift_journal::FileLock>,
    args: LiveArgs,
    disks: Vec<JobDisk>,
    qmp: Qmp,
    sides: Vec<Side>,
}

fn job_vm(
    job: &vmshift_journal::JobRecord,
    what: &str,
    unreachable: &str,
) -> Result<std::result::Result<JobVm, i32>> {
    let locks = match crate::jobs::lock_job(&job.id, Path::new(&job.destination)) {
        Ok(l) => l,
        Err(e) => return live_refuse(what, &e.to_string()).map(Err),
    };
    let args = job_args(job)?;
    let disks = job_disks(job)?;
    let mut qmp = match connect(&args.qmp) {
        Ok(q) => q,
        Err(e) => {
            return live_refuse(
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
        Err(m) => return live_refuse(what, &format!("{m}; nothing was changed")).map(Err),
    };
    Ok(Ok(JobVm {
        locks,
        args,
        disks,
        qmp,
        sides,
    }))
}

/// `vmshift cancel JOB` of a live job whose process is gone (killed, host crash). Before the
/// pivot (every disk still on its source): cancels the mirror jobs the dead process left in
/// QEMU and waits until they are gone, deletes our nodes and, unless `keep_partial`, the
/// partial target files; the job becomes `cancelled`. After the pivot the VM runs on the
/// targets, so nothing is undone: resume or rollback is the way on. An unreachable VM is
/// refused too: without QEMU there is no telling whether a target is already the live disk.
///
/// # Errors
/// Journal errors; refusals print one line and return 2.
pub fn cancel_live(
    j: &vmshift_journal::Journal,
    job: &vmshift_journal::JobRecord,
    keep_partial: bool,
) -> Result<i32> {
    let JobVm {
        locks: _locks,
        disks,
        mut qmp,
        sides,
        ..
    } = match job_vm(
        job,
        "cancel",
        ", so vmshift cannot tell whether a target is already its disk",
    )? {
        Ok(v) => v,
        Err(code) => return Ok(code),
    };
    if !sides.iter().all(|s| *s == Side::Source) {
        return live_refuse(
            "cancel",
            &format!(
                "the VM already runs on the targets of job {} (the pivot happened): `vmshift resume {}` finishes the job, `vmshift rollback {}` moves the disks back",
                job.id, job.id, job.id
            ),
        );
    }
    let cleared = vmshift_qmp::leftovers::clear(&mut qmp)?;
    if !cleared.problems.is_empty() {
        return live_refuse(
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
                    return Err(anyhow::anyhow!(
                        "cannot remove the partial target {}: {e}",
                        d.target.display()
                    ))
                }
            }
        }
    } else {
        state = "kept".into();
    }
    j.set_partial_state(&job.id, &state)
        .and_then(|()| j.set_status(&job.id, "cancelled", Some("cancelled by vmshift cancel")))
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    eprintln!(
        "vmshift: job {} cancelled: {} mirror job(s) and {} node(s) cleared in QEMU, the VM runs on its sources; partial targets {state}",
        job.id,
        cleared.found.jobs.len(),
        cleared.found.nodes.len()
    );
    Ok(0)
}

/// `vmshift resume JOB` of a live job. Interrupted before the pivot (every disk still runs on
/// its source): clears what the killed process left in QEMU (its mirror jobs, waited for until
/// gone; its target nodes), deletes the partial target files and mirrors again under the same
/// job id. Interrupted after the pivot (every disk runs on its target): detaches the old nodes
/// still attached, deletes the sources only if the job asked for it, writes the report and
/// marks the job succeeded.
///
/// # Errors
/// Journal errors; refusals print one line and return 2.
pub fn resume_live(
    j: vmshift_journal::Journal,
    job: vmshift_journal::JobRecord,
    report_file: Option<PathBuf>,
    json_mode: bool,
    cancel: Arc<AtomicBool>,
) -> Result<i32> {
    let JobVm {
        locks,
        mut args,
        disks,
        mut qmp,
        sides,
    } = match job_vm(&job, "resume", " (stopped?)")? {
        Ok(v) => v,
        Err(code) => return Ok(code),
    };
    args.json = json_mode;
    args.report = report_file;
    let cleared = vmshift_qmp::leftovers::clear(&mut qmp)?;
    if !cleared.problems.is_empty() {
        return live_refuse(
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
                    return live_refuse(
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
        let run = j.start_run(&job.id).map_err(|e| anyhow::anyhow!("{e}"))?;
        let link = JournalLink {
            journal: Arc::new(std::sync::Mutex::new(j)),
            id: job.id.clone(),
            run,
        };
        let cont = Continue {
            job_id: job.id.clone(),
            link,
            locks,
            targets: disks.iter().map(|d| d.target.clone()).collect(),
        };
        return run_migrate_with(
            &args,
            cancel,
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
        return live_refuse(
            "resume",
            &format!(
                "the disks are split between sources and targets ({}): a partial pivot cannot be resumed; move the remaining disks with `vmshift migrate --qmp {} --to {} --disk ID`",
                split.join(", "),
                args.qmp.display(),
                args.to.display()
            ),
        );
    }
    // After the pivot: finish the remaining phases.
    let started = Instant::now();
    let run = j.start_run(&job.id).map_err(|e| anyhow::anyhow!("{e}"))?;
    let _ = j.phase_started(&job.id, run, Phase::Cleanup.as_str());
    let mut report = Report::new(&job.id, JobKind::Live, &now_rfc3339());
    report.notes = notes;
    report.notes.push(
        "resume: the job was interrupted after the pivot (the VM already ran on its targets); finished its remaining phases"
            .into(),
    );
    let cleanup_started = now_rfc3339();
    for d in &disks {
        let detached = vmshift_qmp::leftovers::detach_file(&mut qmp, &d.source)?;
        let mut deleted = false;
        if !detached {
            report.warnings.push(format!(
                "{}: QEMU still holds the old image {}",
                d.device, d.source
            ));
        } else if args.delete_source && Path::new(&d.source).exists() {
            std::fs::remove_file(&d.source)
                .with_context(|| format!("cannot delete the source {}", d.source))?;
            deleted = true;
        }
        report.source_deleted |= deleted;
        let format = std::fs::File::open(&d.target)
            .and_then(|mut f| {
                use std::io::Read;
                let mut m = [0u8; 4];
                f.read_exact(&mut m).map(|()| m)
            })
            .map(|m| if &m == b"QFI\xfb" { "qcow2" } else { "raw" })
            .unwrap_or("raw");
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
        .and_then(|()| j.set_status(&job.id, "succeeded", None))
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    drop(locks);
    event(json_mode, json!({"event": "report", "report": report}));
    if !json_mode {
        for n in &report.notes {
            eprintln!("vmshift: {n}");
        }
        eprintln!(
            "vmshift: job {} succeeded; report: {}",
            job.id,
            path.display()
        );
    }
    Ok(0)
}

/// `vmshift rollback JOB` of a succeeded live job: the VM must run on the job's targets; each
/// disk is mirrored back live to its recorded source directory (a new job, `rollback_of` the
/// original), the stale old source files are removed first, the copies at the job's
/// destination are deleted after the pivot back, and the original job becomes `rolled_back`.
///
/// # Errors
/// Journal errors; refusals print one line and return 2.
pub fn rollback_live(
    j: &vmshift_journal::Journal,
    job: &vmshift_journal::JobRecord,
    json_mode: bool,
    cancel: Arc<AtomicBool>,
) -> Result<i32> {
    let orig = job_args(job)?;
    let disks = job_disks(job)?;
    let _locks = match crate::jobs::lock_job(&job.id, Path::new(&job.destination)) {
        Ok(l) => l,
        Err(e) => return live_refuse("rollback", &e.to_string()),
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
        return live_refuse(
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
            return live_refuse(
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
            return live_refuse(
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
        Err(m) => return live_refuse("rollback", &format!("{m}; nothing was changed")),
    }
    let mut notes = vec![format!("rollback of live job {}", job.id)];
    for d in &disks {
        if !Path::new(&d.source).exists() {
            notes.push(format!(
                "rollback: {} was deleted after the move (--delete-source); the whole disk was mirrored back",
                d.source
            ));
            continue;
        }
        // The old source is stale: the guest has written to the target since the pivot.
        if !vmshift_qmp::leftovers::detach_file(&mut qmp, &d.source)? {
            return live_refuse(
                "rollback",
                &format!(
                    "QEMU still holds the old source {}; nothing was changed",
                    d.source
                ),
            );
        }
        if let Ok(vmshift_core::plan::LockState::Held { pids, .. }) =
            vmshift_image::lock::probe(Path::new(&d.source))
        {
            return live_refuse(
                "rollback",
                &format!(
                    "the old source {} is in use by processes {pids:?}; nothing was changed",
                    d.source
                ),
            );
        }
        std::fs::remove_file(&d.source)
            .with_context(|| format!("cannot remove the stale source {}", d.source))?;
        notes.push(format!(
            "rollback: removed the stale old source {} before mirroring back: it stopped receiving guest writes at the pivot, so it cannot seed the copy (no dirty bitmap spans the time since), and the mirror needs its name and space",
            d.source
        ));
    }
    drop(qmp);
    let mut back = LiveArgs {
        qmp: orig.qmp.clone(),
        to: dirs.remove(0),
        disks: disks.iter().map(|d| d.device.clone()).collect(),
        format: None,
        shallow: orig.shallow,
        bwlimit: orig.bwlimit,
        copy_mode: orig.copy_mode,
        ready_timeout: orig.ready_timeout,
        delete_source: true,
        json: json_mode,
        report: None,
        no_journal: false,
    };
    // One format for all disks: the recorded source format when they agree.
    let formats: Vec<_> = disks.iter().map(|d| d.source_format).collect();
    if formats.windows(2).all(|w| w[0] == w[1]) {
        back.format = formats.first().copied().flatten();
    }
    notes.push(format!(
        "rollback: the copies at {} are deleted after the pivot back (the VM runs on the old paths again)",
        orig.to.display()
    ));
    let (code, new_id) = run_migrate_with(
        &back,
        cancel,
        RunExtras {
            cont: None,
            notes,
            options: json!({"rollback_of": job.id}),
        },
    )?;
    if code != 0 {
        eprintln!(
            "vmshift: rollback of job {} did not complete (job {new_id}); job {} stays succeeded",
            job.id, job.id
        );
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
    j.set_status(&job.id, "rolled_back", None)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let _ = j
        .phase_started(&job.id, job.runs, "rollback")
        .and_then(|()| j.phase_ended(&job.id, 0));
    if let Some(r) = &job.report {
        crate::jobs::update_report_status(Path::new(r), &references);
    }
    if json_mode {
        println!(
            "{}",
            json!({"job_id": job.id, "status": "rolled_back", "rollback_job": new_id,
                   "references": references})
        );
    } else {
        eprintln!(
            "vmshift: job {} rolled back by job {new_id}: the VM runs on {} again",
            job.id,
            disks
                .iter()
                .map(|d| d.source.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    Ok(0)
}
