//! The offline job: check → copy → verify → cut over → references → clean up → report.
//! Decisions come from `vmshift_core::plan`; this module only gathers facts and does I/O.

use crate::cli::{FormatArg, MigrateArgs};
use crate::jobs::{lock_job, open_journal, test_kill_point, Checkpointer, JournalLink};
use crate::output::Output;
use crate::state::write_report;
use anyhow::Result;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;
use vmshift_copy::{
    copy_image_with, digest_image_with, first_difference, CopyError, CopyHooks, CopyOptions,
    Counters, ReadBack,
};
use vmshift_core::plan::{decide, DestFacts, Plan, PlanOptions, TargetFormat};
use vmshift_core::report::{ImageSide, JobError, PhaseTiming, Report};
use vmshift_core::{format_bytes, JobId, JobKind, JobStatus, Phase};
use vmshift_image::chain::{Chain, ChainOptions, LayerFormat};
use vmshift_image::target::target_chain;
use vmshift_image::{create_target, inspect, ImageReader, InspectOptions, TargetSpec};

/// Exit status of a job: 0 succeeded, 1 failed after starting, 2 refused.
pub type ExitCode = i32;

/// Chunk size of the digest passes, and of copies with direct I/O, bytes.
pub const CHUNK: u64 = 8 << 20;

/// Chunk size of buffered copies, bytes. Each chunk's buffer is read into, zero-checked,
/// written, hashed and read back into: at 2 MiB the workers' buffers stay in the CPU's
/// caches between those steps (tmpfs, 2 GiB raw→raw, 5 runs each: 1.02 s and 1.2
/// CPU-seconds against 1.13 s and 1.45 at 8 MiB; verified 1.33 s against 1.52 s). Direct
/// I/O keeps 8 MiB requests: the disk, not the CPU, is its limit (2.26 s against 2.59 s).
pub const BUFFERED_CHUNK: u64 = 2 << 20;

/// Chunk size of a new copy: [`BUFFERED_CHUNK`] or, with `direct`, [`CHUNK`]; limited to
/// `bwlimit` bytes/s, about a quarter second of data, so the limit holds within a short
/// window (1 MiB up to that size, whole MiB). A resumed job keeps the chunk size its journal
/// recorded: its chunk indices depend on it.
pub fn copy_chunk(bwlimit: u64, direct: bool) -> u64 {
    let base = if direct { CHUNK } else { BUFFERED_CHUNK };
    if bwlimit == 0 {
        base
    } else {
        (bwlimit / 4).clamp(1 << 20, base) >> 20 << 20
    }
}

fn layer_format(f: FormatArg) -> LayerFormat {
    match f {
        FormatArg::Raw => LayerFormat::Raw,
        FormatArg::Qcow2 => LayerFormat::Qcow2,
    }
}

fn layer_format_of(f: TargetFormat) -> LayerFormat {
    match f {
        TargetFormat::Raw => LayerFormat::Raw,
        TargetFormat::Qcow2 => LayerFormat::Qcow2,
    }
}

pub fn now_rfc3339() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// Everything the check phase learnt.
pub struct Checked {
    /// The source chain (None when it could not be resolved).
    pub chain: Option<Chain>,
    /// The plan.
    pub plan: Plan,
    /// The source as found.
    pub source: ImageSide,
    /// The final target path.
    pub target_path: PathBuf,
}

/// The final target path for `source` at `dest`: inside `dest` when it is a directory
/// (keeping the file name, with the extension following the format), else `dest` itself.
fn target_path_for(source: &Path, dest: &Path, format: Option<TargetFormat>) -> PathBuf {
    if dest.is_dir() {
        let name = source
            .file_name()
            .map(PathBuf::from)
            .unwrap_or_else(|| "disk".into());
        // The name never contradicts the format (vmshift_image::gate::format_of_name).
        let renamed = match (vmshift_image::gate::format_of_name(&name), format) {
            (Some(LayerFormat::Qcow2), Some(TargetFormat::Raw)) => name.with_extension("raw"),
            (Some(LayerFormat::Raw), Some(TargetFormat::Qcow2)) => name.with_extension("qcow2"),
            _ => name,
        };
        dest.join(renamed)
    } else {
        dest.to_path_buf()
    }
}

fn gather_dest(target: &Path, chain: Option<&Chain>, virtual_size: u64, raw: bool) -> DestFacts {
    let dir = match target.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let dir_exists = dir.is_dir();
    let dir_writable = dir_exists
        && rustix::fs::access(
            &dir,
            rustix::fs::Access::WRITE_OK | rustix::fs::Access::EXEC_OK,
        )
        .is_ok();
    let existing = std::fs::metadata(target).ok();
    let target_is_source = match (&existing, chain) {
        (Some(m), Some(c)) => c.layers.iter().any(|l| {
            std::fs::metadata(&l.path).is_ok_and(|lm| lm.dev() == m.dev() && lm.ino() == m.ino())
        }),
        _ => false,
    };
    let device_size = existing
        .as_ref()
        .filter(|m| std::os::unix::fs::FileTypeExt::is_block_device(&m.file_type()))
        .map(|_| device_size(target));
    let free_bytes = device_size.unwrap_or_else(|| {
        rustix::fs::statvfs(&dir)
            .map(|s| s.f_bavail.saturating_mul(s.f_frsize))
            .unwrap_or(0)
    });
    let file_too_large = (raw && dir_writable && device_size.is_none())
        .then(|| probe_file_too_large(&dir, virtual_size));
    DestFacts {
        target_path: target.display().to_string(),
        dir_exists,
        dir_writable,
        target_exists: existing.is_some(),
        target_is_source,
        free_bytes,
        file_too_large,
        reclaimable_bytes: existing.as_ref().map_or(0, |m| m.blocks() * 512),
        resumed_partial_bytes: 0,
        target_is_device: device_size.is_some(),
    }
}

/// Size of a block device in bytes (its end, found by seeking), 0 when it cannot be opened.
fn device_size(path: &Path) -> u64 {
    use std::io::Seek;
    std::fs::File::open(path)
        .and_then(|mut f| f.seek(std::io::SeekFrom::End(0)))
        .unwrap_or(0)
}

/// Tries to size a temporary file to `size` bytes: EFBIG means the filesystem cannot hold a
/// raw target that large (ext4: 16 TiB). The probe file is removed at once.
fn probe_file_too_large(dir: &Path, size: u64) -> bool {
    let probe = dir.join(format!(".vmshift-probe-{}", std::process::id()));
    let Ok(f) = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&probe)
    else {
        return false;
    };
    let too_large = matches!(f.set_len(size), Err(e) if e.raw_os_error() == Some(libc::EFBIG));
    drop(f);
    let _ = std::fs::remove_file(&probe);
    too_large
}

fn check(args: &MigrateArgs) -> Checked {
    check_with(args, None)
}

/// The check phase. When resuming, `partial_credit` is `Some(bytes)`: the partial target the
/// resume reuses is expected, and its bytes count as free at the destination.
pub fn check_with(args: &MigrateArgs, partial_credit: Option<u64>) -> Checked {
    let inspection = inspect(
        &args.source,
        &InspectOptions {
            chain: ChainOptions {
                top_format: args.source_format.map(layer_format),
                backing_format: args.backing_format.map(layer_format),
                ..Default::default()
            },
            walk_extents: true,
        },
    );
    let requested = args
        .format
        .map(|f| match f {
            FormatArg::Raw => TargetFormat::Raw,
            FormatArg::Qcow2 => TargetFormat::Qcow2,
        })
        .or_else(|| format_from_name(&args.to));
    let src_format = if inspection.facts.format == "qcow2" {
        TargetFormat::Qcow2
    } else {
        TargetFormat::Raw
    };
    let target_path = target_path_for(
        &args.source,
        &args.to,
        Some(requested.unwrap_or(src_format)),
    );
    let raw_target = requested.unwrap_or(src_format) == TargetFormat::Raw;
    let mut dest = gather_dest(
        &target_path,
        inspection.chain.as_ref(),
        inspection.facts.virtual_size,
        raw_target && inspection.facts.problems.is_empty(),
    );
    dest.resumed_partial_bytes = partial_credit.unwrap_or(0);
    let mut plan = decide(
        &inspection.facts,
        &dest,
        &PlanOptions {
            target_format: requested,
            keep_backing: args.keep_backing,
            overwrite: args.overwrite,
            force_share: args.force_share,
        },
    );
    if let Err(e) =
        vmshift_image::gate::check_target_name(&target_path, layer_format_of(plan.target_format))
    {
        plan.problems.push(e.to_problem());
    }
    let dropped: Vec<_> = args.drop.iter().map(|d| d.property()).collect();
    let (lost, dropped) = vmshift_core::fidelity::assess(&inspection.facts.fidelity, &dropped);
    plan.problems.extend(lost);
    plan.warnings.extend(dropped);
    if args.delete_source && args.no_verify {
        plan.problems.push(vmshift_core::plan::Problem::new(
            "delete_unverified",
            "--delete-source needs verification: the source is deleted only after the copy is proven identical",
            "drop --no-verify or --delete-source",
        ));
    }
    let extra = crate::safety::problems(
        args,
        inspection.chain.as_ref(),
        &target_path,
        &inspection.facts.lock,
    );
    plan.problems.extend(
        extra
            .into_iter()
            .filter(|p| !(partial_credit.is_some() && p.code == "partial_exists")),
    );
    if args.to.as_os_str().to_string_lossy().ends_with('/') && !args.to.is_dir() {
        plan.problems.insert(
            0,
            vmshift_core::plan::Problem::new(
                "dest_missing",
                format!("destination directory {} does not exist", args.to.display()),
                "create it first",
            ),
        );
    }
    let source = ImageSide {
        path: abs(&args.source),
        format: inspection.facts.format.clone(),
        virtual_size: inspection.facts.virtual_size,
        allocated_bytes: inspection.facts.allocated_bytes,
        backing_chain: inspection.facts.backing_chain.clone(),
    };
    Checked {
        chain: inspection.chain,
        plan,
        source,
        target_path,
    }
}

/// The format a target file name asks for (`x.qcow2`, `x.raw`), when `--to` names a file.
fn format_from_name(to: &Path) -> Option<TargetFormat> {
    if to.is_dir() {
        return None;
    }
    match to.extension()?.to_str()? {
        "qcow2" => Some(TargetFormat::Qcow2),
        "raw" => Some(TargetFormat::Raw),
        _ => None,
    }
}

/// Absolute form of `p` (not resolving symlinks).
pub fn abs(p: &Path) -> String {
    std::path::absolute(p)
        .unwrap_or_else(|_| p.to_path_buf())
        .display()
        .to_string()
}

fn print_plan(out: &Output, c: &Checked) {
    print_plan_with(&|l: &str| out.say(l), c);
}

fn print_plan_with(say: &dyn Fn(&str), c: &Checked) {
    let p = &c.plan;
    say(&format!(
        "source       {} ({}, {} virtual, {} allocated)",
        c.source.path,
        c.source.format,
        format_bytes(c.source.virtual_size),
        format_bytes(c.source.allocated_bytes)
    ));
    say(&format!(
        "target       {} ({}, {} virtual)",
        abs(&c.target_path),
        p.target_format.as_str(),
        format_bytes(p.target_virtual_size)
    ));
    say(&format!("backing      {}", p.backing));
    say(&format!(
        "to copy      {} of data",
        format_bytes(p.bytes_to_copy)
    ));
    say(&format!(
        "target needs up to {} ({} bytes); free at destination {} ({} bytes)",
        format_bytes(p.target_bytes),
        p.target_bytes,
        format_bytes(p.free_bytes),
        p.free_bytes
    ));
    for n in &p.notes {
        say(&format!("note: {n}"));
    }
    for w in &p.warnings {
        say(&format!("warning: {w}"));
    }
    for pr in &p.problems {
        say(&format!("refused: {}", pr.one_line()));
    }
}

/// `vmshift check`: prints the plan; 0 when it would go ahead, 2 when refused.
pub fn run_check(args: &MigrateArgs) -> Result<ExitCode> {
    let out = Output { json: args.json };
    let c = check(args);
    if args.json {
        out.event(serde_json::json!({"event": "plan", "go": c.plan.go(), "source": c.source, "plan": c.plan}));
    } else {
        // The plan is what `check` produces: stdout.
        print_plan_with(&|l: &str| println!("{l}"), &c);
        println!(
            "{}",
            if c.plan.go() {
                "check: the migration would go ahead"
            } else {
                "check: refused"
            }
        );
    }
    Ok(if c.plan.go() { 0 } else { 2 })
}

/// Removes the partial target unless disarmed (success) or told to keep it for resume.
struct PartialGuard {
    path: PathBuf,
    armed: bool,
    keep: bool,
}

impl Drop for PartialGuard {
    fn drop(&mut self) {
        if self.armed && !self.keep {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

struct Timer {
    phases: Vec<PhaseTiming>,
    current: Option<(Phase, String, Instant)>,
    link: Option<JournalLink>,
}

impl Timer {
    fn start(&mut self, out: &Output, p: Phase) {
        self.end();
        out.phase(p);
        if let Some(l) = &self.link {
            l.note(|j, id| j.phase_started(id, l.run, p.as_str()));
        }
        self.current = Some((p, now_rfc3339(), Instant::now()));
    }
    fn end(&mut self) {
        if let Some((name, started_at, t)) = self.current.take() {
            self.phases.push(PhaseTiming {
                name,
                started_at,
                duration_ms: vmshift_core::millis(t.elapsed()),
            });
        }
    }
    fn current(&self) -> Phase {
        self.current.as_ref().map_or(Phase::Check, |c| c.0)
    }
}

/// A resume in progress: the job's journal, its locks and what may be reused.
pub struct Resuming {
    /// The job.
    pub job_id: String,
    /// The open journal (run already started).
    pub link: JournalLink,
    /// The job and target locks, held for the run.
    #[allow(dead_code)]
    pub locks: Vec<vmshift_journal::FileLock>,
    /// Chunks proven reusable (empty: copy everything into a fresh target).
    pub chunks: Vec<vmshift_journal::ChunkRecord>,
    /// Reuse the existing partial target (else it is created anew).
    pub reuse_partial: bool,
    /// Bytes the partial target already occupies (credited in the space check).
    pub partial_credit: u64,
    /// Notes for the report (what was proven, what restarted).
    pub notes: Vec<String>,
    /// The chunk size the job's journal recorded, bytes (0: none recorded).
    pub chunk_size: u64,
}

/// The source facts recorded when a job starts, to prove on resume that it has not changed.
pub fn source_facts(chain: &Chain, crash_consistent: bool) -> serde_json::Value {
    let layers: Vec<serde_json::Value> = chain
        .layers
        .iter()
        .map(|l| {
            let m = std::fs::metadata(&l.path).ok();
            serde_json::json!({
                "path": abs(&l.path),
                "size": m.as_ref().map_or(0, |m| m.len()),
                "mtime_ns": m.as_ref().map_or(0, |m| i128::from(m.mtime()) * 1_000_000_000 + i128::from(m.mtime_nsec())).to_string(),
            })
        })
        .collect();
    serde_json::json!({"layers": layers, "crash_consistent": crash_consistent})
}

/// `vmshift migrate` (offline). Returns the exit status and writes the report.
pub fn run_migrate(args: &MigrateArgs, cancel: Arc<AtomicBool>) -> Result<ExitCode> {
    run_job(args, cancel, None)
}

/// Runs an offline job: a new one, or `resuming` an interrupted one.
pub fn run_job(
    args: &MigrateArgs,
    cancel: Arc<AtomicBool>,
    resuming: Option<Resuming>,
) -> Result<ExitCode> {
    let out = Output { json: args.json };
    let job = resuming
        .as_ref()
        .map_or_else(JobId::new, |r| JobId(r.job_id.clone()));
    // Open the journal first: a damaged one stops the job before anything happens.
    let journal = match (&resuming, args.no_journal) {
        (None, false) => Some(open_journal()?),
        _ => None,
    };
    let started = Instant::now();
    let mut report = Report::new(&job.0, JobKind::Offline, &now_rfc3339());
    let mut timer = Timer {
        phases: Vec::new(),
        current: None,
        link: None,
    };
    out.event(serde_json::json!({"event": "job", "job_id": job.0, "kind": "offline", "resumed": resuming.is_some()}));
    out.say(&format!(
        "vmshift: job {job}{}",
        if resuming.is_some() { " (resumed)" } else { "" }
    ));
    timer.start(&out, Phase::Check);
    let c = check_with(args, resuming.as_ref().map(|r| r.partial_credit));
    let mut _locks = Vec::new();
    let link = match (resuming.as_ref(), journal) {
        (Some(r), _) => Some(r.link.clone()),
        (None, Some(j)) => {
            if c.plan.go() {
                _locks = match lock_job(&job.0, &c.target_path) {
                    Ok(l) => l,
                    Err(e) => {
                        out.say(&format!("vmshift: refused: {e}"));
                        return Ok(2);
                    }
                };
            }
            let mut options = args.clone();
            options.source = PathBuf::from(abs(&args.source));
            options.to = PathBuf::from(abs(&c.target_path));
            options.json = false;
            options.report = None;
            let new = vmshift_journal::NewJob {
                id: job.0.clone(),
                kind: "offline".into(),
                source: abs(&args.source),
                destination: abs(&c.target_path),
                partial: abs(&partial_path(&c.target_path)),
                options: serde_json::to_value(&options)?,
                facts: c.chain.as_ref().map_or(serde_json::Value::Null, |ch| {
                    source_facts(ch, c.plan.crash_consistent)
                }),
                chunk_size: copy_chunk(
                    args.bwlimit.unwrap_or(0),
                    args.io == crate::cli::IoMode::Direct,
                ),
                total_bytes: 0,
            };
            j.create_job(&new).map_err(|e| anyhow::anyhow!("{e}"))?;
            Some(JournalLink {
                journal: Arc::new(Mutex::new(j)),
                id: job.0.clone(),
                run: 1,
            })
        }
        (None, None) => None,
    };
    if let Some(l) = &link {
        l.note(|j, id| j.phase_started(id, l.run, "check"));
    }
    timer.link = link.clone();
    report.source = c.source.clone();
    report.backing = c.plan.backing.clone();
    report.notes = c.plan.notes.clone();
    report.warnings.extend(c.plan.warnings.iter().cloned());
    if let Some(r) = &resuming {
        report.notes.extend(r.notes.iter().cloned());
    }
    report.destination = ImageSide {
        path: abs(&c.target_path),
        format: c.plan.target_format.as_str().into(),
        virtual_size: c.plan.target_virtual_size,
        allocated_bytes: 0,
        backing_chain: Vec::new(),
    };
    if c.plan.go() {
        print_plan(&out, &c);
    }
    let code = if !c.plan.go() {
        let msg = c
            .plan
            .problems
            .iter()
            .map(|p| p.one_line())
            .collect::<Vec<_>>()
            .join("; ");
        report.status = JobStatus::Refused;
        report.error = Some(JobError {
            phase: Phase::Check,
            message: msg,
        });
        2
    } else {
        match execute(
            args,
            &c,
            &out,
            &mut timer,
            &mut report,
            &cancel,
            link.as_ref(),
            resuming.as_ref(),
        ) {
            Ok(()) => {
                report.status = JobStatus::Succeeded;
                0
            }
            Err(message) => {
                let cancelled = cancel.load(Ordering::Relaxed);
                report.status = if cancelled {
                    JobStatus::Cancelled
                } else {
                    JobStatus::Failed
                };
                report.error = Some(JobError {
                    phase: timer.current(),
                    message,
                });
                1
            }
        }
    };
    timer.start(&out, Phase::Report);
    timer.end();
    report.phases = std::mem::take(&mut timer.phases);
    report.duration_ms = vmshift_core::millis(started.elapsed());
    // Never write the extra report where the check found it would destroy something.
    let extra_report = if c.plan.problems.iter().any(|p| p.code == "report_path") {
        None
    } else {
        args.report.as_deref()
    };
    let path = write_report(&report, extra_report)?;
    if let Some(l) = &link {
        let partial = partial_path(&c.target_path);
        // A resume refused at the check changed nothing: the job stays resumable (failed,
        // its partial target kept) once the cause is fixed.
        let resume_refused = resuming.is_some() && report.status == JobStatus::Refused;
        let partial_state = match report.status {
            JobStatus::Succeeded => "final",
            JobStatus::Refused if !resume_refused => "none",
            _ if partial.exists() => "kept",
            _ => "removed",
        };
        let error = report.error.as_ref().map(|e| e.message.clone());
        let status = if resume_refused {
            JobStatus::Failed.as_str()
        } else {
            report.status.as_str()
        };
        let path_s = path.display().to_string();
        l.note(|j, id| {
            j.phase_ended(id, 0)?;
            j.set_partial_state(id, partial_state)?;
            j.set_report(id, &path_s)?;
            j.set_status(id, status, error.as_deref())
        });
        if partial_state == "kept" {
            out.say(&format!(
                "vmshift: the partial target {} was kept: `vmshift resume {}` continues from the last checkpoint, `vmshift cancel {}` removes it",
                partial.display(),
                job.0,
                job.0
            ));
        }
    }
    out.event(serde_json::json!({"event": "report", "report": report}));
    {
        if let Some(e) = &report.error {
            out.say(&format!(
                "vmshift: {}: {}",
                report.status.as_str(),
                e.message
            ));
        } else {
            out.say(&format!(
                "vmshift: succeeded: {} → {} ({} copied, {}{} zero skipped, verification {})",
                report.source.path,
                report.destination.path,
                format_bytes(report.bytes_copied),
                if report.bytes_reused > 0 {
                    format!(
                        "{} reused from earlier runs, ",
                        format_bytes(report.bytes_reused)
                    )
                } else {
                    String::new()
                },
                format_bytes(report.bytes_skipped_zero),
                report.verification.result
            ));
        }
        for w in &report.warnings {
            out.say(&format!("warning: {w}"));
        }
        out.say(&format!("report: {}", path.display()));
    }
    Ok(code)
}

/// `NAME.vmshift-partial` beside the final target.
pub fn partial_path(target: &Path) -> PathBuf {
    let mut name = target.file_name().unwrap_or_default().to_os_string();
    name.push(".vmshift-partial");
    target.with_file_name(name)
}

#[allow(clippy::too_many_arguments)]
fn execute(
    args: &MigrateArgs,
    c: &Checked,
    out: &Output,
    timer: &mut Timer,
    report: &mut Report,
    cancel: &Arc<AtomicBool>,
    link: Option<&JournalLink>,
    resuming: Option<&Resuming>,
) -> std::result::Result<(), String> {
    let chain = c.chain.as_ref().ok_or("no chain")?;
    let plan = &c.plan;
    let shallow = plan.backing == "kept";
    let threads = args.threads.unwrap_or_else(vmshift_copy::default_threads);
    if plan.crash_consistent {
        report.consistency = "crash_consistent".into();
        report.warnings.push(
            "the source was in use by a running VM: the copy is only crash-consistent".into(),
        );
    }

    // Stamp the source before anything is read (and before the copy phase is announced):
    // any write after this point makes the job fail instead of claiming a verified copy.
    let stamp = crate::safety::SourceStamp::take(chain);

    // Copy.
    timer.start(out, Phase::Copy);
    let _source_lock = if plan.crash_consistent {
        None
    } else {
        Some(
            vmshift_image::lock::hold_for_reading(&chain.top().path).map_err(|e| {
                format!(
                    "{} could not be locked for reading ({e}): a VM may have started using it",
                    chain.top().path.display()
                )
            })?,
        )
    };
    let reader = ImageReader::open(chain).map_err(|e| e.to_string())?;
    let extents = reader
        .extents(0, reader.virtual_size(), shallow)
        .map_err(|e| format!("{}: block status failed: {e}", chain.top().path.display()))?;
    let partial = partial_path(&c.target_path);
    let reuse = resuming.is_some_and(|r| r.reuse_partial);
    if partial.exists() && !reuse {
        return Err(format!("{} exists: another vmshift job may be writing it, or an interrupted one left it (remove it if no job runs)", partial.display()));
    }
    let target_format = match plan.target_format {
        TargetFormat::Raw => LayerFormat::Raw,
        TargetFormat::Qcow2 => LayerFormat::Qcow2,
    };
    let backing = if shallow {
        let below = Chain {
            layers: chain.backing().to_vec(),
        };
        let first = &below.layers[0];
        let name = std::fs::canonicalize(&first.path)
            .map_err(|e| format!("{}: {e}", first.path.display()))?;
        report.destination.backing_chain = below.layers.iter().map(|l| abs(&l.path)).collect();
        report.warnings.push(format!(
            "the target still depends on its backing file {} (kept in place): do not move or delete it",
            name.display()
        ));
        Some((name.display().to_string(), first.format, below))
    } else {
        None
    };
    let spec = TargetSpec {
        path: partial.clone(),
        format: target_format,
        virtual_size: plan.target_virtual_size,
        cluster_size: chain
            .top()
            .header
            .as_ref()
            .map_or(65536, |h| h.cluster_size()),
        preallocate: plan.preallocate,
        backing,
        direct: args.io == crate::cli::IoMode::Direct,
        qcow2: chain.top().header.as_ref().map_or_else(
            vmshift_image::target::Qcow2Options::default,
            vmshift_image::target::Qcow2Options::from_header,
        ),
    };
    if spec.direct {
        report.notes.push(format!(
            "direct I/O (--io direct): {} used O_DIRECT where the file systems allow it, bypassing the page cache (a tmpfs lives in memory either way)",
            if args.no_verify {
                "source reads and target writes"
            } else {
                "source reads, target writes and the verification reads"
            }
        ));
    }
    let mut guard = PartialGuard {
        path: partial.clone(),
        armed: true,
        keep: false,
    };
    let target = if reuse {
        open_partial(&spec).map_err(|e| e.to_string())?
    } else {
        create_target(&spec).map_err(|e| e.to_string())?
    };
    let skip: std::collections::HashSet<u64> = resuming
        .map(|r| r.chunks.iter().map(|ch| ch.index).collect())
        .unwrap_or_default();
    report.bytes_reused = resuming.map_or(0, |r| r.chunks.iter().map(|ch| ch.bytes).sum());
    let counters = Arc::new(Counters::default());
    let opts = CopyOptions {
        threads,
        chunk: resuming
            .map(|r| r.chunk_size)
            .filter(|&c| c > 0)
            .unwrap_or_else(|| copy_chunk(args.bwlimit.unwrap_or(0), spec.direct)),
        bwlimit: args.bwlimit.unwrap_or(0),
        zero_granularity: match target_format {
            LayerFormat::Raw => 4096,
            LayerFormat::Qcow2 => usize::try_from(spec.cluster_size)
                .unwrap_or(65536)
                .max(4096),
        },
        target_is_zero: true,
        shallow,
        hash: !args.no_verify && !shallow && skip.is_empty(),
        direct: spec.direct,
    };
    if let Some(l) = link {
        // Guest bytes of all data chunks, reused ones included: the job's progress total.
        let size = reader.virtual_size();
        let total: u64 = vmshift_copy::plan::plan_units(&extents, opts.chunk, false)
            .iter()
            .filter_map(|u| match u {
                vmshift_copy::plan::Unit::Chunk(i) => Some(opts.chunk.min(size - i * opts.chunk)),
                vmshift_copy::plan::Unit::Zero { .. } => None,
            })
            .sum();
        l.note(|j, id| j.begin_copy(id, total));
    }
    let copy_started = Instant::now();
    let checkpointer = link.map(|l| Checkpointer::new(l, &target, &partial));
    let on_chunk = |d| match &checkpointer {
        Some(cp) => cp.chunk_done(d),
        None => Ok(()),
    };
    // Verify during the copy when the copy hashes the source (see vmshift_copy::readback).
    let read_back = if opts.hash && args.verify == crate::cli::VerifyMode::DuringCopy {
        let r = target
            .reader(spec.virtual_size)
            .map_err(|e| format!("{}: cannot be read back: {e}", partial.display()))?;
        Some(ReadBack::new(
            r,
            reader.virtual_size(),
            opts.chunk,
            spec.direct,
        ))
    } else {
        None
    };
    let hooks = CopyHooks {
        skip: Some(&skip),
        // Without a journal nothing needs per-chunk digests: no hook, no hashing.
        on_chunk: checkpointer
            .as_ref()
            .map(|_| &on_chunk as &(dyn Fn(_) -> _ + Sync)),
        chunks_not_zero: reuse,
        read_back: read_back.as_ref(),
    };
    let result = {
        let _p = out.progress("copy", counters.clone());
        let stop = AtomicBool::new(false);
        std::thread::scope(|s| {
            if let Some(cp) = &checkpointer {
                let stop = &stop;
                s.spawn(move || cp.run(stop));
            }
            let r = copy_image_with(&reader, &extents, &target, &opts, &hooks, cancel, &counters);
            stop.store(true, Ordering::Relaxed);
            r
        })
    };
    let result = result.and_then(|s| match &checkpointer {
        Some(cp) => cp.flush().map(|()| s),
        None => Ok(s),
    });
    let stats = match result {
        Ok(s) => s,
        Err(e) => {
            // Chunks finished before the failure are real work: make them durable and
            // record them (best effort: after ENOSPC or an fsync error this may fail too).
            if let Some(cp) = &checkpointer {
                if let Err(ce) = cp.flush() {
                    tracing::warn!("last checkpoint after the failure not recorded: {ce}");
                }
            }
            // What becomes of the partial target (see README, "Resume"): kept for resume
            // after read errors and other I/O failures when the journal records it; removed
            // after cancellation (unless asked to keep it), when the destination ran out of
            // space (it would keep the datastore full), or when nothing records it.
            let cancel_keep = link.is_some_and(|l| {
                l.journal
                    .lock()
                    .ok()
                    .and_then(|j| j.job(&l.id).ok())
                    .is_some_and(|job| job.cancel_request.as_deref() == Some("keep"))
            });
            guard.keep = link.is_some()
                && (args.keep_partial
                    || match &e {
                        CopyError::Cancelled => cancel_keep,
                        e if e.is_no_space() => false,
                        _ => true,
                    });
            let hint = match (&e, guard.keep) {
                // No journal (--no-journal): nothing to resume.
                (e, false) if e.is_no_space() && link.is_none() => {
                    " (the destination ran out of space; the partial target was removed: free space, then migrate again)"
                }
                (e, false) if e.is_no_space() => {
                    " (the destination ran out of space; the partial target was removed: free space, then `vmshift resume` copies it again, or migrate with --keep-partial to keep it)"
                }
                (e, true) if e.is_no_space() => {
                    " (the destination ran out of space; the partial target was kept: free space, then `vmshift resume`)"
                }
                (CopyError::Cancelled, true) => {
                    " at a chunk boundary (signal or vmshift cancel); the source is untouched and the partial target was kept"
                }
                (CopyError::Cancelled, false) => {
                    " at a chunk boundary (signal or vmshift cancel); the source is untouched and the partial target was removed"
                }
                (_, true) => " (the partial target was kept: fix the cause, then `vmshift resume`)",
                (_, false) => "",
            };
            report.bytes_copied = counters.copied.load(Ordering::Relaxed);
            report.bytes_skipped_zero = counters.skipped.load(Ordering::Relaxed);
            return Err(format!("{e}{hint}"));
        }
    };
    target
        .sync()
        .map_err(|e| format!("{}: fsync failed: {e}", partial.display()))?;
    drop(target);
    let secs = copy_started.elapsed().as_secs_f64().max(1e-3);
    report.bytes_copied = stats.bytes_copied;
    report.bytes_skipped_zero = stats.bytes_skipped_zero;
    report.throughput_bytes_per_sec = vmshift_core::rate_bytes_per_sec(stats.bytes_processed, secs);

    // Verify.
    if !args.no_verify {
        timer.start(out, Phase::Verify);
    }
    let src_size = reader.virtual_size();
    if args.no_verify {
        report.verification.algorithm = vmshift_copy::digest::ALGORITHM.into();
        report.verification.result = "skipped".into();
        report.verification.method = "none".into();
        report.warnings.push(
            "verification was skipped (--no-verify): the copy is not proven identical".into(),
        );
    } else {
        let tchain = target_chain(&partial, target_format, spec.backing.as_ref().map(|b| &b.2))
            .map_err(|e| e.to_string())?;
        let mut treader = ImageReader::open(&tchain).map_err(|e| e.to_string())?;
        let digest = |r: &ImageReader| {
            digest_image_with(r, src_size, threads, CHUNK, spec.direct, cancel, &counters)
        };
        let source_digest = match stats.source_digest {
            Some(d) => d,
            None => {
                let _p = out.progress("verify-source", counters.clone());
                digest(&reader).map_err(|e| e.to_string())?
            }
        };
        let target_digest = {
            let _p = out.progress("verify", counters.clone());
            report.verification.method = if read_back.is_some() {
                "during-copy"
            } else {
                "after-copy"
            }
            .into();
            match read_back {
                Some(rb) => rb.finish(&treader, threads, cancel, &counters),
                None => digest(&treader),
            }
            .map_err(|e| e.to_string())?
        };
        let mut target_digest = target_digest;
        if source_digest.hex() != target_digest.hex() {
            if let Some((t, d)) = repair_resumed(
                resuming, &spec, &reader, &extents, &treader, &tchain, report, &digest,
            )? {
                treader = t;
                target_digest = d;
            }
        }
        report.verification.algorithm = vmshift_copy::digest::ALGORITHM.into();
        report.verification.source_digest = source_digest.hex();
        report.verification.destination_digest = target_digest.hex();
        report.verification.verified_bytes = src_size;
        let tsize = treader.virtual_size();
        let tail_ok =
            tsize == src_size || (tsize > src_size && tail_is_zero(&treader, src_size, tsize));
        if report.verification.source_digest != report.verification.destination_digest || !tail_ok {
            let off = if tail_ok {
                first_difference(&source_digest, &target_digest, &reader, &treader).unwrap_or(0)
            } else {
                src_size.min(tsize)
            };
            report.verification.result = "mismatch".into();
            report.verification.first_mismatch_offset = Some(off);
            return Err(format!("verification failed: target differs from source at guest offset {off:#x} (sizes {src_size} vs {tsize}); the target was removed"));
        }
        report.verification.result = "match".into();
    }
    if let Some(changed) = stamp.changed_since(chain) {
        report.verification.result = "source_changed".into();
        return Err(format!(
            "{} changed while it was copied (size or modification time): something wrote to it without taking QEMU's image lock, so the copy is not proven identical; the target was removed",
            changed.display()
        ));
    }

    // Verified: now the target may have the source's mode, owner, group and xattrs.
    report.warnings.extend(vmshift_image::attrs::copy_attrs(
        &chain.top().path,
        &partial,
    ));

    // Cut over.
    timer.start(out, Phase::Cutover);
    test_kill_point("cutover");
    std::fs::rename(&partial, &c.target_path).map_err(|e| {
        format!(
            "cannot rename {} to {}: {e}",
            partial.display(),
            c.target_path.display()
        )
    })?;
    guard.armed = false;
    test_kill_point("renamed");
    if let Some(dir) = c.target_path.parent() {
        let d = if dir.as_os_str().is_empty() {
            Path::new(".")
        } else {
            dir
        };
        if let Ok(f) = std::fs::File::open(d) {
            let _ = f.sync_all();
        }
    }
    report.destination.allocated_bytes = std::fs::metadata(&c.target_path)
        .map(|m| m.blocks() * 512)
        .unwrap_or(0);

    // References.
    timer.start(out, Phase::References);
    let users = crate::safety::dependants(&chain.top().path);
    report.references.push(format!(
        "point the VM at {} (format {}) instead of {}: e.g. virsh edit DOMAIN and change <source file=...> and <driver type=...>, or the -drive/-blockdev filename of your QEMU command line",
        report.destination.path, report.destination.format, report.source.path
    ));
    for u in &users {
        report.references.push(format!("{} uses the source as its backing file: rebase it onto the new path (qemu-img rebase -u -b {} -F {} {})", u.display(), report.destination.path, report.destination.format, u.display()));
    }

    // Clean up.
    timer.start(out, Phase::Cleanup);
    if args.delete_source {
        if !users.is_empty() {
            report.warnings.push(format!(
                "the source was NOT deleted: {} still use it as a backing file",
                crate::safety::names(&users)
            ));
        } else {
            // Through a symlink, delete the image itself, then the link.
            let top = &chain.top().path;
            let real = std::fs::canonicalize(top).unwrap_or_else(|_| top.clone());
            std::fs::remove_file(&real)
                .map_err(|e| format!("copy verified, but the source could not be deleted: {e}"))?;
            if real != *top {
                let _ = std::fs::remove_file(top);
            }
            report.source_deleted = true;
            report
                .notes
                .push(format!("deleted the source {}", real.display()));
        }
    }
    Ok(())
}

/// A resumed copy whose verification failed: the journaled chunks whose target bytes no
/// longer have their digest are copied again from the source (only those), the target is
/// synced and read afresh. Returns the fresh reader and its digest when a chunk was
/// repaired (the caller verifies again); `None` when this is no resume or nothing
/// journaled differed.
#[allow(clippy::too_many_arguments)]
fn repair_resumed(
    resuming: Option<&Resuming>,
    spec: &TargetSpec,
    reader: &ImageReader,
    extents: &[vmshift_core::Extent],
    treader: &ImageReader,
    tchain: &Chain,
    report: &mut Report,
    digest: &dyn Fn(&ImageReader) -> std::result::Result<vmshift_copy::SparseDigest, CopyError>,
) -> std::result::Result<Option<(ImageReader, vmshift_copy::SparseDigest)>, String> {
    let Some(r) = resuming.filter(|r| !r.chunks.is_empty()) else {
        return Ok(None);
    };
    let recorded: Vec<vmshift_copy::repair::RecordedChunk> = r
        .chunks
        .iter()
        .map(|c| vmshift_copy::repair::RecordedChunk {
            offset: c.offset,
            len: c.len,
            digest: c.digest,
        })
        .collect();
    let target = open_partial(spec)?;
    let fixed = vmshift_copy::repair::repair_chunks(reader, extents, &target, treader, &recorded)
        .map_err(|e| {
        format!(
            "{}: repair after a failed verification: {e}",
            spec.path.display()
        )
    })?;
    if fixed.is_empty() {
        return Ok(None);
    }
    target
        .sync()
        .map_err(|e| format!("{}: fsync failed: {e}", spec.path.display()))?;
    drop(target);
    let fresh = ImageReader::open(tchain).map_err(|e| e.to_string())?;
    let d = digest(&fresh).map_err(|e| e.to_string())?;
    let bytes: u64 = fixed.iter().map(|c| c.len).sum();
    report.bytes_copied += bytes;
    report.repaired_chunks = fixed.iter().map(|c| c.offset).collect();
    report.warnings.push(format!(
        "resume: {} journaled chunk(s) of the partial target no longer matched the source (guest offsets {}); they were copied again ({} bytes) and the target verified again",
        fixed.len(),
        fixed
            .iter()
            .map(|c| format!("{:#x}", c.offset))
            .collect::<Vec<_>>()
            .join(", "),
        bytes
    ));
    Ok(Some((fresh, d)))
}

/// Opens an existing partial target written by an earlier run of the job.
fn open_partial(spec: &TargetSpec) -> std::result::Result<vmshift_image::TargetImage, String> {
    match spec.format {
        LayerFormat::Raw => {
            let file = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open(&spec.path)
                .map_err(|e| {
                    format!(
                        "{}: cannot reopen the partial target: {e}",
                        spec.path.display()
                    )
                })?;
            let direct = if spec.direct {
                vmshift_image::target::open_direct_writer(&file)
            } else {
                None
            };
            Ok(vmshift_image::TargetImage::Raw {
                file,
                thick: spec.preallocate,
                direct,
            })
        }
        LayerFormat::Qcow2 => vmshift_image::target::open_qcow2_target(
            &spec.path,
            spec.backing.as_ref().map(|b| &b.2),
            spec.direct,
        )
        .map_err(|e| e.to_string()),
    }
}

fn tail_is_zero(r: &ImageReader, from: u64, to: u64) -> bool {
    let len = (to - from).min(1 << 20) as usize;
    let mut buf = vec![0u8; len];
    to - from <= 1 << 20 && r.read_at(&mut buf, from).is_ok() && vmshift_copy::zero::is_zero(&buf)
}
