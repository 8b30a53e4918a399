//! The live mirror driver: move every selected disk of a running VM with `blockdev-mirror`,
//! pivot them together, or leave the VM entirely on its source.
//!
//! Contract of [`LiveMigration::run`]:
//! * targets are created with exactly the source's virtual size and attached under node names
//!   this driver owns; nothing of the VM's own graph is touched before the pivot;
//! * jobs run with `auto-dismiss=false`, so a job that ended (even on its own, e.g. "different
//!   sizes" or ENOSPC) stays listed by `query-jobs` with its error until dismissed: a job that
//!   is missing from the list is a failure, never "done";
//! * the pivot (`job-complete`) is requested only when every job reports `ready`;
//! * on any failure or cancellation before the pivot every job is cancelled and waited for
//!   until `query-jobs` no longer lists it, the target nodes are deleted (`blockdev-del`) and
//!   the target files this driver created are removed; pre-existing target volumes are kept.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::client::{Event, Qmp};
use crate::disk::{discover, DiskInfo};
use crate::error::QmpError;
use crate::features::{Features, QemuVersion};
use crate::policy::{self, CopyMode, CopyModeRequest, Fallback, ModeDecision, Progress, RateMeter};

/// Format of a target image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TargetFormat {
    /// Raw image.
    Raw,
    /// qcow2 image.
    Qcow2,
}

impl TargetFormat {
    /// The QEMU driver / `qemu-img -f` name.
    pub fn as_str(self) -> &'static str {
        match self {
            TargetFormat::Raw => "raw",
            TargetFormat::Qcow2 => "qcow2",
        }
    }

    /// Parses `raw` or `qcow2`.
    pub fn parse(s: &str) -> Option<TargetFormat> {
        match s {
            "raw" => Some(TargetFormat::Raw),
            "qcow2" => Some(TargetFormat::Qcow2),
            _ => None,
        }
    }
}

/// A pre-existing raw volume to mirror into instead of a new file (e.g. an LV or zvol).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExistingTarget {
    /// Disk selector (device id, qdev path or node name) this volume is for.
    pub disk: String,
    /// Path of the volume. It must be at least the source's virtual size.
    pub path: PathBuf,
    /// Expose exactly the source's virtual size of a larger volume (raw driver `size`
    /// option). `false` hands QEMU the whole volume, which makes the mirror fail with
    /// "different sizes" (kept to test that the driver catches that asynchronous failure).
    pub expose_exact_size: bool,
}

/// What the operator asked for.
#[derive(Debug, Clone)]
pub struct LiveOptions {
    /// Destination directory; each target keeps its source's file name there.
    pub dest_dir: PathBuf,
    /// Disk selectors (device id, qdev path or node name); empty = every writable disk.
    pub disks: Vec<String>,
    /// Target format; `None` keeps the source format (raw or qcow2; others become qcow2).
    pub format: Option<TargetFormat>,
    /// Copy only the top image (`sync=top`); the target is a qcow2 whose backing file is the
    /// source's backing file, which must stay reachable.
    pub shallow: bool,
    /// Mirror speed limit in bytes/s (`None` = unlimited).
    pub bwlimit: Option<u64>,
    /// Copy mode policy.
    pub copy_mode: CopyModeRequest,
    /// Operator deadline for all disks to become ready; missing it aborts cleanly.
    pub ready_timeout: Option<Duration>,
    /// How long to sample the guest write rate (`query-blockstats`) before starting.
    pub rate_sample: Duration,
    /// Interval between `query-jobs` polls.
    pub poll_interval: Duration,
    /// Replace the computed convergence bound of the initial job (what `auto` waits for
    /// before falling back, or explicit modes before aborting). `None` = derive it from the
    /// measured write rate, the limit and the size ([`policy::convergence_bound`]).
    pub bound_override: Option<Duration>,
    /// Skip the free-space pre-check (for tests of the mid-copy ENOSPC path).
    pub skip_space_check: bool,
    /// Pre-existing volumes to use as targets.
    pub existing_targets: Vec<ExistingTarget>,
    /// Delete each source image file after a successful pivot once QEMU has closed it.
    pub delete_source: bool,
    /// The `qemu-img` program used to create targets.
    pub qemu_img: PathBuf,
}

impl LiveOptions {
    /// Options with defaults: every disk, same format, full sync, no limit, `auto`,
    /// 1 s rate sample, 200 ms polls.
    pub fn new(dest_dir: impl Into<PathBuf>) -> LiveOptions {
        LiveOptions {
            dest_dir: dest_dir.into(),
            disks: Vec::new(),
            format: None,
            shallow: false,
            bwlimit: None,
            copy_mode: CopyModeRequest::Auto,
            ready_timeout: None,
            bound_override: None,
            rate_sample: Duration::from_secs(1),
            poll_interval: Duration::from_millis(200),
            skip_space_check: false,
            existing_targets: Vec::new(),
            delete_source: false,
            qemu_img: PathBuf::from("qemu-img"),
        }
    }
}

/// Why a disk cannot be moved, found before anything is changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// Device id of the disk (or the selector / destination it is about).
    pub device: String,
    /// What is wrong and what to do.
    pub reason: String,
}

/// A failure of the live migration. Unless stated otherwise the VM runs on its sources.
#[derive(Debug, thiserror::Error)]
pub enum LiveError {
    /// QMP communication failed.
    #[error(transparent)]
    Qmp(#[from] QmpError),
    /// This QEMU lacks commands the driver needs.
    #[error("QEMU {version} lacks the QMP commands {missing:?}")]
    Unsupported {
        /// QEMU version.
        version: QemuVersion,
        /// Missing command names.
        missing: Vec<String>,
    },
    /// A selector matched no disk.
    #[error("no disk named {selector:?}; the VM has: {available}")]
    NoSuchDisk {
        /// The selector given.
        selector: String,
        /// Device ids / node names that exist.
        available: String,
    },
    /// The pre-flight check refused.
    #[error("check refused: {}", .0.iter().map(|r| format!("{}: {}", r.device, r.reason)).collect::<Vec<_>>().join("; "))]
    Refused(Vec<Refusal>),
    /// Creating a target image failed.
    #[error("cannot create target {}: {message}", path.display())]
    CreateTarget {
        /// Target path.
        path: PathBuf,
        /// What `qemu-img` or the OS said.
        message: String,
    },
    /// A mirror job failed (often asynchronously: target I/O error, size mismatch).
    #[error("mirror of {device} failed: {message}")]
    JobFailed {
        /// Device id.
        device: String,
        /// QEMU's error message.
        message: String,
    },
    /// A job did not become ready in time and no fallback was allowed.
    #[error("mirror of {device} did not become ready within {waited_ms} ms in {mode} mode")]
    NotConverged {
        /// Device id.
        device: String,
        /// Time waited (ms).
        waited_ms: u64,
        /// Copy mode of the job.
        mode: CopyMode,
    },
    /// The operator cancelled.
    #[error("cancelled by the operator")]
    Cancelled,
    /// The pivot of a disk failed; disks listed in `pivoted` already run on their targets.
    #[error("pivot of {device} failed: {message} (already pivoted: {pivoted:?})")]
    PivotFailed {
        /// Device id.
        device: String,
        /// QEMU's message.
        message: String,
        /// Devices that did pivot.
        pivoted: Vec<String>,
    },
    /// The migration failed and cleaning up did not fully succeed.
    #[error("{cause}; cleanup incomplete: {}", problems.join("; "))]
    CleanupIncomplete {
        /// The original failure.
        cause: Box<LiveError>,
        /// What could not be cleaned up.
        problems: Vec<String>,
    },
}

impl LiveError {
    /// True when the failure is an operator cancellation.
    pub fn is_cancelled(&self) -> bool {
        match self {
            LiveError::Cancelled => true,
            LiveError::CleanupIncomplete { cause, .. } => cause.is_cancelled(),
            _ => false,
        }
    }
}

/// Mirror sync mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyncMode {
    /// Copy the whole chain into one image.
    Full,
    /// Copy only the top image; the target keeps the source's backing file.
    Top,
}

/// One disk the plan will move.
#[derive(Debug, Clone)]
pub struct PlannedDisk {
    /// The disk as discovered.
    pub disk: DiskInfo,
    /// Target image path (absolute).
    pub target: PathBuf,
    /// Target format.
    pub format: TargetFormat,
    /// Mirror sync mode.
    pub sync: SyncMode,
    /// The pre-existing volume used as target, if any.
    pub existing: Option<ExistingTarget>,
    /// Bytes the target may need on the destination file system.
    pub needed_bytes: u64,
}

/// A checked plan: nothing has been changed yet.
#[derive(Debug, Clone)]
pub struct LivePlan {
    /// What the QEMU can do.
    pub features: Features,
    /// Disks to move, in VM order.
    pub disks: Vec<PlannedDisk>,
    /// Free bytes at the destination when checked.
    pub dest_available: u64,
    /// The options the plan was made with.
    pub options: LiveOptions,
}

/// Progress of one disk.
#[derive(Debug, Clone, PartialEq)]
pub struct DiskProgress {
    /// Device id.
    pub device: String,
    /// Bytes done / total of the job.
    pub progress: Progress,
    /// The job reports ready.
    pub ready: bool,
    /// Current copy mode.
    pub copy_mode: CopyMode,
}

/// A progress report passed to the callback of [`LiveMigration::run`].
#[derive(Debug, Clone, PartialEq)]
pub struct LiveProgress {
    /// What the driver is doing: `sampling`, `copying`, `pivoting`, `pivoted` (every disk
    /// runs on its target; old nodes not yet detached), `done`, `cleanup`.
    pub phase: &'static str,
    /// Time since `run` started.
    pub elapsed: Duration,
    /// Per disk.
    pub disks: Vec<DiskProgress>,
    /// Sum over disks.
    pub total: Progress,
    /// Smoothed copy rate in bytes/s.
    pub rate: u64,
    /// Estimated time to ready, when a rate is known.
    pub eta: Option<Duration>,
    /// A notable event, e.g. a copy-mode fallback.
    pub note: Option<String>,
}

/// Result of one moved disk.
#[derive(Debug, Clone, PartialEq)]
pub struct DiskOutcome {
    /// Device id.
    pub device: String,
    /// Node name the device now runs on.
    pub node_name: String,
    /// Source image path.
    pub old_path: PathBuf,
    /// Target image path.
    pub new_path: PathBuf,
    /// Target format.
    pub format: TargetFormat,
    /// Virtual size in bytes (source and target).
    pub virtual_size: u64,
    /// Bytes the final job copied (its `total-progress`, including re-copied dirty data).
    pub bytes: u64,
    /// Copy mode the final job ran in.
    pub copy_mode: CopyMode,
    /// Why that mode (with the measured rates, and any fallback).
    pub mode_reason: String,
    /// Guest write rate measured before the start, bytes/s.
    pub guest_write_rate: u64,
    /// Times the job was restarted in another mode.
    pub restarts: u32,
    /// From the first job start to ready, ms.
    pub time_to_ready_ms: u64,
    /// From the `job-complete` request to the job's conclusion, ms (sub-ms precision).
    pub pivot_ms: f64,
    /// The old nodes are gone from QEMU (the source file is closed).
    pub old_nodes_detached: bool,
    /// The source file was deleted (`delete_source`).
    pub source_deleted: bool,
    /// What must change in whatever starts this VM next time.
    pub next_start: String,
}

/// Result of a successful live migration.
#[derive(Debug, Clone, PartialEq)]
pub struct LiveOutcome {
    /// QEMU version.
    pub qemu_version: QemuVersion,
    /// Per disk.
    pub disks: Vec<DiskOutcome>,
    /// The largest per-disk pivot time, ms.
    pub pivot_ms: f64,
    /// Wall time of the whole run, ms.
    pub duration_ms: u64,
}

/// Entry points of the live driver.
#[derive(Debug)]
pub struct LiveMigration;

const CLEANUP_WAIT: Duration = Duration::from_secs(120);

impl LiveMigration {
    /// Checks everything that can be checked without changing anything: QEMU features, disk
    /// selection, read-only/shared/busy disks, protocols, target names and existence, free
    /// space. Returns every refusal at once.
    pub fn plan(qmp: &mut Qmp, options: &LiveOptions) -> Result<LivePlan, LiveError> {
        let features = Features::detect(qmp)?;
        let missing = features.missing_for_live();
        if !missing.is_empty() {
            return Err(LiveError::Unsupported {
                version: features.version,
                missing: missing.into_iter().map(str::to_owned).collect(),
            });
        }
        let all = discover(qmp)?;
        let mut refusals = Vec::new();
        let selected: Vec<DiskInfo> = if options.disks.is_empty() {
            all.iter().filter(|d| !d.read_only).cloned().collect()
        } else {
            let mut v: Vec<DiskInfo> = Vec::new();
            for sel in &options.disks {
                match all.iter().find(|d| d.matches(sel)) {
                    Some(d) if !v.iter().any(|x| x.node_name == d.node_name) => v.push(d.clone()),
                    Some(_) => {}
                    None => {
                        return Err(LiveError::NoSuchDisk {
                            selector: sel.clone(),
                            available: all
                                .iter()
                                .map(|d| format!("{} (node {})", d.device, d.node_name))
                                .collect::<Vec<_>>()
                                .join(", "),
                        })
                    }
                }
            }
            v
        };
        if selected.is_empty() {
            refusals.push(Refusal {
                device: "-".into(),
                reason: "the VM has no writable disk to move".into(),
            });
        }
        let dest = match std::fs::canonicalize(&options.dest_dir) {
            Ok(p) if p.is_dir() => Some(p),
            Ok(p) => {
                refusals.push(Refusal {
                    device: p.display().to_string(),
                    reason: "destination is not a directory".into(),
                });
                None
            }
            Err(e) => {
                refusals.push(Refusal {
                    device: options.dest_dir.display().to_string(),
                    reason: format!("destination directory is not usable: {e}"),
                });
                None
            }
        };
        let dest_available = dest.as_deref().map(available_bytes).unwrap_or(0);
        let mut planned = Vec::new();
        let mut names: HashMap<PathBuf, String> = HashMap::new();
        for d in selected {
            let mut why = Vec::new();
            if d.read_only {
                why.push("the disk is read-only".to_owned());
            }
            if d.shared {
                why.push(
                    "the disk is shared (share-rw=on); moving it under another VM is unsafe"
                        .to_owned(),
                );
            }
            if let Some(b) = &d.busy {
                why.push(format!("{b}; wait for that job to finish"));
            }
            match d.protocol_driver.as_deref() {
                Some("file") | Some("host_device") => {}
                Some(other) => why.push(format!(
                    "protocol driver {other} is not supported (file or host_device only)"
                )),
                None => why.push(format!(
                    "cannot identify a local file under node {} (file {:?})",
                    d.node_name, d.file
                )),
            }
            if !Path::new(&d.file).is_absolute() {
                why.push(format!(
                    "image file name {:?} is not a local absolute path",
                    d.file
                ));
            }
            let existing = options
                .existing_targets
                .iter()
                .find(|e| d.matches(&e.disk))
                .cloned();
            let sync = if options.shallow && !d.backing_chain.is_empty() {
                SyncMode::Top
            } else {
                SyncMode::Full
            };
            let format = if sync == SyncMode::Top {
                if options.format == Some(TargetFormat::Raw) {
                    why.push(
                        "--shallow keeps a backing file, which a raw target cannot have".to_owned(),
                    );
                }
                TargetFormat::Qcow2
            } else if existing.is_some() {
                TargetFormat::Raw
            } else {
                options
                    .format
                    .or_else(|| TargetFormat::parse(&d.format))
                    .unwrap_or(TargetFormat::Qcow2)
            };
            if sync == SyncMode::Top && d.backing_chain.first().is_some_and(|b| b.format.is_empty())
            {
                why.push("the backing format is unknown; refusing to probe it".to_owned());
            }
            let target = match (&existing, &dest) {
                (Some(e), _) => {
                    check_existing(&d, e, options.format, &mut why);
                    std::fs::canonicalize(&e.path).unwrap_or_else(|_| e.path.clone())
                }
                (None, Some(dest)) => {
                    let t = dest.join(target_file_name(Path::new(&d.file), format));
                    if t == Path::new(&d.file) {
                        why.push(format!("target {} is the source itself", t.display()));
                    } else if t.symlink_metadata().is_ok() {
                        why.push(format!(
                            "target {} already exists; remove it or choose another destination",
                            t.display()
                        ));
                    }
                    t
                }
                (None, None) => PathBuf::new(),
            };
            if let Some(other) = names.insert(target.clone(), d.device.clone()) {
                why.push(format!(
                    "its target {} is also the target of {other} (two images share a file name)",
                    target.display()
                ));
            }
            let needed_bytes = needed_bytes(&d, format, sync, existing.is_some());
            if why.is_empty() {
                planned.push(PlannedDisk {
                    disk: d,
                    target,
                    format,
                    sync,
                    existing,
                    needed_bytes,
                });
            } else {
                refusals.extend(why.into_iter().map(|reason| Refusal {
                    device: d.device.clone(),
                    reason,
                }));
            }
        }
        let needed: u64 = planned.iter().map(|p| p.needed_bytes).sum();
        if dest.is_some() && !options.skip_space_check && needed > dest_available {
            refusals.push(Refusal {
                device: options.dest_dir.display().to_string(),
                reason: format!("the targets need up to {needed} bytes, the destination has {dest_available} bytes free"),
            });
        }
        if !refusals.is_empty() {
            return Err(LiveError::Refused(refusals));
        }
        Ok(LivePlan {
            features,
            disks: planned,
            dest_available,
            options: options.clone(),
        })
    }

    /// Runs a plan: samples the guest write rate, creates and attaches targets, mirrors,
    /// converges, pivots every disk together. `progress` is called at every poll;
    /// `cancel` is checked at every poll until the pivot starts (after that the pivot is
    /// finished, not undone). On `Err` before the pivot the VM runs on its sources and the
    /// driver's nodes, jobs and created files are gone.
    pub fn run(
        qmp: &mut Qmp,
        plan: &LivePlan,
        progress: &mut dyn FnMut(&LiveProgress),
        cancel: &AtomicBool,
    ) -> Result<LiveOutcome, LiveError> {
        let mut d = Driver::new(plan);
        match d.copy(qmp, progress, cancel) {
            Ok(()) => {}
            Err(e) => return Err(d.abort(qmp, e, progress)),
        }
        d.pivot(qmp, progress)
    }
}

/// The target's file name: the source's, with a `.qcow2`/`.raw` extension following the
/// target format so that the name never contradicts the content.
fn target_file_name(source: &Path, format: TargetFormat) -> std::ffi::OsString {
    let name = PathBuf::from(source.file_name().unwrap_or_default());
    let renamed = match (name.extension().and_then(|e| e.to_str()), format) {
        (Some("qcow2" | "qcow"), TargetFormat::Raw) => name.with_extension("raw"),
        (Some("raw"), TargetFormat::Qcow2) => name.with_extension("qcow2"),
        _ => name,
    };
    renamed.into_os_string()
}

/// The cluster size recorded in a qcow2 header (bytes 20..24 hold log2 of it).
fn qcow2_cluster_size(path: &Path) -> Option<u64> {
    use std::io::Read;
    let mut head = [0u8; 24];
    std::fs::File::open(path).ok()?.read_exact(&mut head).ok()?;
    if &head[..4] != b"QFI\xfb" {
        return None;
    }
    let bits = u32::from_be_bytes(head[20..24].try_into().ok()?);
    (9..=21).contains(&bits).then(|| 1u64 << bits)
}

fn check_existing(
    d: &DiskInfo,
    e: &ExistingTarget,
    format: Option<TargetFormat>,
    why: &mut Vec<String>,
) {
    if format == Some(TargetFormat::Qcow2) {
        why.push(
            "a pre-existing target volume is used as raw; --format qcow2 does not apply".into(),
        );
    }
    match std::fs::metadata(&e.path) {
        Ok(m) => {
            let len = if m.file_type().is_file() {
                m.len()
            } else {
                block_device_len(&e.path).unwrap_or(0)
            };
            if len < d.virtual_size {
                why.push(format!(
                    "existing target {} holds {len} bytes, smaller than the disk's virtual size {} bytes",
                    e.path.display(),
                    d.virtual_size
                ));
            }
        }
        Err(err) => why.push(format!(
            "existing target {} is not usable: {err}",
            e.path.display()
        )),
    }
}

fn block_device_len(path: &Path) -> Option<u64> {
    use std::io::{Seek, SeekFrom};
    std::fs::File::open(path).ok()?.seek(SeekFrom::End(0)).ok()
}

/// Upper estimate of the bytes a target needs: allocated data (bounded by the virtual size)
/// plus qcow2 metadata (L2 tables and refcounts, about 1/4096 of the virtual size, + 1 MiB).
fn needed_bytes(d: &DiskInfo, format: TargetFormat, sync: SyncMode, existing: bool) -> u64 {
    if existing {
        return 0;
    }
    let data = match sync {
        SyncMode::Full => d.chain_allocated().min(d.virtual_size),
        SyncMode::Top => d.actual_size.min(d.virtual_size),
    };
    match format {
        TargetFormat::Raw => data,
        TargetFormat::Qcow2 => data + d.virtual_size / 4096 + (1 << 20),
    }
}

fn available_bytes(dir: &Path) -> u64 {
    match rustix::fs::statvfs(dir) {
        Ok(s) => s.f_bavail.saturating_mul(s.f_frsize),
        Err(_) => 0,
    }
}

/// Per-disk state of a running migration.
#[derive(Debug)]
struct DiskRun {
    planned: PlannedDisk,
    file_node: String,
    fmt_node: String,
    job_id: String,
    created_file: bool,
    file_node_added: bool,
    fmt_node_added: bool,
    job_started: bool,
    decision: ModeDecision,
    mode: CopyMode,
    reason: String,
    write_rate: u64,
    first_start: Option<Instant>,
    started: Option<Instant>,
    ready_at: Option<Instant>,
    restarts: u32,
    progress: Progress,
    /// `wr_bytes` samples taken during a background copy, oldest first.
    wr_window: std::collections::VecDeque<(Instant, u64)>,
}

struct Driver<'a> {
    plan: &'a LivePlan,
    runs: Vec<DiskRun>,
    t0: Instant,
    meter: RateMeter,
}

impl<'a> Driver<'a> {
    fn new(plan: &'a LivePlan) -> Driver<'a> {
        // Unique per run: a VM may already run on nodes of an earlier run of this process.
        static RUNS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = RUNS.fetch_add(1, Ordering::Relaxed);
        let tag = format!("vmshift{}r{n}", std::process::id());
        let runs = plan
            .disks
            .iter()
            .enumerate()
            .map(|(i, p)| DiskRun {
                planned: p.clone(),
                file_node: format!("{tag}-{i}-file"),
                fmt_node: format!("{tag}-{i}"),
                job_id: format!("{tag}-{i}-job"),
                created_file: false,
                file_node_added: false,
                fmt_node_added: false,
                job_started: false,
                decision: policy::choose_copy_mode(CopyModeRequest::Auto, 0, None, 0, false),
                mode: CopyMode::Background,
                reason: String::new(),
                write_rate: 0,
                first_start: None,
                started: None,
                ready_at: None,
                restarts: 0,
                progress: Progress::default(),
                wr_window: std::collections::VecDeque::new(),
            })
            .collect();
        Driver {
            plan,
            runs,
            t0: Instant::now(),
            meter: RateMeter::default(),
        }
    }

    fn report(
        &mut self,
        phase: &'static str,
        note: Option<String>,
        cb: &mut dyn FnMut(&LiveProgress),
    ) {
        let total = self.runs.iter().fold(Progress::default(), |a, r| Progress {
            done: a.done + r.progress.done,
            total: a.total + r.progress.total,
        });
        let elapsed = self.t0.elapsed();
        let rate = self.meter.sample(elapsed, total.done);
        cb(&LiveProgress {
            phase,
            elapsed,
            disks: self
                .runs
                .iter()
                .map(|r| DiskProgress {
                    device: r.planned.disk.device.clone(),
                    progress: r.progress,
                    ready: r.ready_at.is_some(),
                    copy_mode: r.mode,
                })
                .collect(),
            total,
            rate,
            eta: policy::eta(total.remaining(), rate),
            note,
        });
    }

    fn copy(
        &mut self,
        qmp: &mut Qmp,
        cb: &mut dyn FnMut(&LiveProgress),
        cancel: &AtomicBool,
    ) -> Result<(), LiveError> {
        let opts = &self.plan.options;
        // 1. guest write rate per disk, sampled before anything starts
        self.report("sampling", None, cb);
        // Two views of the guest's writes: the device's wr_bytes counter, and a temporary
        // dirty bitmap on the node, which also sees writes that bypass the device's
        // accounting (e.g. HMP qemu-io, block jobs of others). The larger rate wins.
        let mut bitmaps = Vec::new();
        for r in &self.runs {
            let name = format!("{}-rate", r.job_id);
            let node = r.planned.disk.node_name.clone();
            if qmp
                .call(
                    "block-dirty-bitmap-add",
                    json!({"node": node, "name": name, "persistent": false}),
                )
                .is_ok()
            {
                bitmaps.push((node, name));
            }
        }
        // Sample, then always drop the bitmaps, whatever happened meanwhile.
        let sampled = (|| -> Result<_, LiveError> {
            let before = blockstats(qmp)?;
            let t = Instant::now();
            while t.elapsed() < opts.rate_sample {
                if cancel.load(Ordering::SeqCst) {
                    return Err(LiveError::Cancelled);
                }
                std::thread::sleep(Duration::from_millis(50).min(opts.rate_sample));
            }
            let after = blockstats(qmp)?;
            let elapsed = t.elapsed();
            let nodes = qmp.call("query-named-block-nodes", json!({"flat": true}))?;
            Ok((before, after, elapsed, nodes))
        })();
        remove_bitmaps(qmp, &bitmaps);
        let (before, after, elapsed, nodes) = sampled?;
        for r in &mut self.runs {
            let key = stats_key(&r.planned.disk);
            let b = before.get(&key).copied().unwrap_or(0);
            let a = after.get(&key).copied().unwrap_or(b);
            let counted = policy::write_rate(b, a, elapsed);
            let dirtied = bitmap_count(
                &nodes,
                &r.planned.disk.node_name,
                &format!("{}-rate", r.job_id),
            )
            .map(|c| policy::write_rate(0, c, elapsed))
            .unwrap_or(0);
            r.write_rate = counted.max(dirtied);
            r.decision = policy::choose_copy_mode(
                opts.copy_mode,
                r.write_rate,
                opts.bwlimit,
                r.planned.disk.virtual_size,
                self.plan.features.block_job_change,
            );
            r.mode = r.decision.mode;
            if let Some(b) = opts.bound_override {
                r.decision.bound = b;
            }
            r.reason = r.decision.reason.clone();
            if r.mode == CopyMode::WriteBlocking && !self.plan.features.mirror_copy_mode {
                return Err(LiveError::Unsupported {
                    version: self.plan.features.version,
                    missing: vec!["blockdev-mirror copy-mode".into()],
                });
            }
        }
        // 2. targets and jobs
        for i in 0..self.runs.len() {
            if cancel.load(Ordering::SeqCst) {
                return Err(LiveError::Cancelled);
            }
            self.attach_target(qmp, i)?;
            self.start_job(qmp, i)?;
        }
        // 3. monitor until every job is ready
        loop {
            if cancel.load(Ordering::SeqCst) {
                return Err(LiveError::Cancelled);
            }
            qmp.pump(opts.poll_interval)?;
            // Give QEMU a moment to emit more events, then look at everything we have.
            for ev in qmp.take_events() {
                self.on_event(&ev)?;
            }
            let jobs = qmp.execute("query-jobs", None)?;
            self.on_jobs(&jobs)?;
            for ev in qmp.take_events() {
                self.on_event(&ev)?;
            }
            let mut note = None;
            // Watch the guest's write rate while background jobs copy: it may rise after the
            // sample taken before the start.
            let watching = self.runs.iter().any(|r| {
                r.ready_at.is_none()
                    && r.mode == CopyMode::Background
                    && r.decision.fallback != Fallback::Abort
            });
            let stats = if watching { blockstats(qmp).ok() } else { None };
            for i in 0..self.runs.len() {
                let r = &mut self.runs[i];
                if r.ready_at.is_some() {
                    continue;
                }
                if let Some(st) = &stats {
                    if let Some(&wr) = st.get(&stats_key(&r.planned.disk)) {
                        let now = Instant::now();
                        r.wr_window.push_back((now, wr));
                        while r.wr_window.len() > 2
                            && r.wr_window.get(1).is_some_and(|&(t, _)| {
                                now.duration_since(t) >= policy::WATCH_WINDOW
                            })
                        {
                            r.wr_window.pop_front();
                        }
                    }
                }
                if let (Some(&(t0, w0)), Some(&(t1, w1))) =
                    (r.wr_window.front(), r.wr_window.back())
                {
                    let span = t1.saturating_duration_since(t0);
                    let observed = policy::write_rate(w0, w1, span);
                    if policy::fall_back_early(&r.decision, observed, span, opts.bwlimit) {
                        let since = r.started.map(|s| s.elapsed()).unwrap_or_default();
                        r.reason = format!(
                            "{}; the guest's writes rose to {observed} B/s during the copy",
                            r.reason
                        );
                        r.wr_window.clear();
                        note = Some(self.fall_back(qmp, i, since)?);
                        continue;
                    }
                }
                let r = &self.runs[i];
                let since = r.started.map(|s| s.elapsed()).unwrap_or_default();
                if let Some(limit) = opts.ready_timeout {
                    let waited = r.first_start.map(|s| s.elapsed()).unwrap_or_default();
                    if waited > limit {
                        return Err(LiveError::NotConverged {
                            device: r.planned.disk.device.clone(),
                            waited_ms: ms(waited),
                            mode: r.mode,
                        });
                    }
                }
                if since > r.decision.bound {
                    note = Some(self.fall_back(qmp, i, since)?);
                }
            }
            self.report("copying", note, cb);
            if self.runs.iter().all(|r| r.ready_at.is_some()) {
                return Ok(());
            }
        }
    }

    fn attach_target(&mut self, qmp: &mut Qmp, i: usize) -> Result<(), LiveError> {
        let opts = &self.plan.options;
        let r = &mut self.runs[i];
        let p = &r.planned;
        if p.existing.is_none() {
            // `qemu-img create` truncates an existing file: never let a file that appeared
            // since the check be overwritten.
            if p.target.symlink_metadata().is_ok() {
                return Err(LiveError::CreateTarget {
                    path: p.target.clone(),
                    message: "the file appeared after the check; refusing to overwrite it".into(),
                });
            }
            let mut cmd = Command::new(&opts.qemu_img);
            cmd.arg("create").arg("-q").arg("-f").arg(p.format.as_str());
            // Keep the source's cluster size for qcow2 → qcow2.
            if p.format == TargetFormat::Qcow2 {
                if let Some(c) = qcow2_cluster_size(Path::new(&p.disk.file)) {
                    cmd.arg("-o").arg(format!("cluster_size={c}"));
                }
            }
            if p.sync == SyncMode::Top {
                let b = &p.disk.backing_chain[0];
                cmd.arg("-u")
                    .arg("-b")
                    .arg(&b.filename)
                    .arg("-F")
                    .arg(&b.format);
            }
            // Absolute paths: a ':' after the first '/' is never taken for a protocol prefix,
            // and a leading '-' cannot occur.
            cmd.arg(&p.target).arg(p.disk.virtual_size.to_string());
            let out = cmd.output().map_err(|e| LiveError::CreateTarget {
                path: p.target.clone(),
                message: format!("cannot run {}: {e}", opts.qemu_img.display()),
            })?;
            r.created_file = p.target.exists();
            if !out.status.success() {
                return Err(LiveError::CreateTarget {
                    path: p.target.clone(),
                    message: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
                });
            }
        }
        let filename = p.target.to_str().ok_or_else(|| LiveError::CreateTarget {
            path: p.target.clone(),
            message: "path is not valid UTF-8, which QMP cannot carry".into(),
        })?;
        let proto = if p
            .target
            .metadata()
            .map(|m| m.file_type().is_file())
            .unwrap_or(true)
        {
            "file"
        } else {
            "host_device"
        };
        // The target keeps the source's cache mode (e.g. cache=none → O_DIRECT) and
        // detect-zeroes, so the pivot does not silently change how the VM's disk behaves.
        let cache = json!({"direct": p.disk.cache_direct, "no-flush": p.disk.cache_no_flush});
        qmp.call(
            "blockdev-add",
            json!({"driver": proto, "node-name": r.file_node, "filename": filename, "discard": "unmap", "cache": cache}),
        )?;
        r.file_node_added = true;
        let mut fmt = json!({"driver": p.format.as_str(), "node-name": r.fmt_node, "file": r.file_node, "discard": "unmap", "cache": cache});
        if matches!(p.disk.detect_zeroes.as_str(), "on" | "unmap") {
            fmt["detect-zeroes"] = json!(p.disk.detect_zeroes);
        }
        if let Some(e) = &p.existing {
            if e.expose_exact_size {
                fmt["size"] = json!(p.disk.virtual_size);
            }
        }
        if p.format == TargetFormat::Qcow2 && p.sync == SyncMode::Full {
            fmt["backing"] = Value::Null;
        }
        qmp.call("blockdev-add", fmt)?;
        r.fmt_node_added = true;
        Ok(())
    }

    fn start_job(&mut self, qmp: &mut Qmp, i: usize) -> Result<(), LiveError> {
        let opts = &self.plan.options;
        let features = &self.plan.features;
        let r = &mut self.runs[i];
        let mut args = json!({
            "job-id": r.job_id,
            "device": r.planned.disk.node_name,
            "target": r.fmt_node,
            "sync": if r.planned.sync == SyncMode::Top { "top" } else { "full" },
            "auto-finalize": true,
            "auto-dismiss": false,
        });
        if features.mirror_copy_mode {
            args["copy-mode"] = json!(r.mode.as_qmp());
        }
        if let Some(speed) = opts.bwlimit {
            args["speed"] = json!(speed);
        }
        qmp.call("blockdev-mirror", args)?;
        let now = Instant::now();
        r.job_started = true;
        r.started = Some(now);
        r.first_start.get_or_insert(now);
        tracing::info!(device = %r.planned.disk.device, mode = %r.mode, "mirror started");
        Ok(())
    }

    fn on_event(&mut self, ev: &Event) -> Result<(), LiveError> {
        let Some(id) = ev.job_id() else { return Ok(()) };
        let Some(r) = self.runs.iter_mut().find(|r| r.job_id == id) else {
            return Ok(());
        };
        match ev.name.as_str() {
            "BLOCK_JOB_READY" => {
                r.ready_at.get_or_insert(ev.received);
            }
            "BLOCK_JOB_COMPLETED" | "BLOCK_JOB_CANCELLED" => {
                let msg = ev
                    .data
                    .get("error")
                    .and_then(Value::as_str)
                    .map(str::to_owned)
                    .unwrap_or_else(|| {
                        format!("the job ended on its own before the pivot ({})", ev.name)
                    });
                return Err(LiveError::JobFailed {
                    device: r.planned.disk.device.clone(),
                    message: msg,
                });
            }
            "BLOCK_JOB_ERROR" => {
                tracing::warn!(job = id, data = %ev.data, "block job I/O error");
            }
            _ => {}
        }
        Ok(())
    }

    fn on_jobs(&mut self, jobs: &Value) -> Result<(), LiveError> {
        let list = jobs.as_array().map(Vec::as_slice).unwrap_or(&[]);
        for r in &mut self.runs {
            if !r.job_started {
                continue;
            }
            let Some(j) = list
                .iter()
                .find(|j| j.get("id").and_then(Value::as_str) == Some(r.job_id.as_str()))
            else {
                return Err(LiveError::JobFailed {
                    device: r.planned.disk.device.clone(),
                    message:
                        "the job is no longer listed by query-jobs (dismissed by someone else?)"
                            .into(),
                });
            };
            let status = j.get("status").and_then(Value::as_str).unwrap_or("");
            r.progress = Progress {
                done: j
                    .get("current-progress")
                    .and_then(Value::as_u64)
                    .unwrap_or(0),
                total: j.get("total-progress").and_then(Value::as_u64).unwrap_or(0),
            };
            if let Some(e) = j.get("error").and_then(Value::as_str) {
                return Err(LiveError::JobFailed {
                    device: r.planned.disk.device.clone(),
                    message: e.to_owned(),
                });
            }
            match status {
                "ready" => {
                    r.ready_at.get_or_insert_with(Instant::now);
                }
                "concluded" | "null" | "aborting" => {
                    return Err(LiveError::JobFailed {
                        device: r.planned.disk.device.clone(),
                        message: format!("the job ended before the pivot (status {status})"),
                    })
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// The job of disk `i` missed its convergence bound after `since`.
    fn fall_back(&mut self, qmp: &mut Qmp, i: usize, since: Duration) -> Result<String, LiveError> {
        let r = &self.runs[i];
        let device = r.planned.disk.device.clone();
        let size = r.planned.disk.virtual_size;
        let limit = self.plan.options.bwlimit;
        match r.decision.fallback {
            Fallback::Abort => Err(LiveError::NotConverged {
                device,
                waited_ms: ms(since),
                mode: r.mode,
            }),
            Fallback::SwitchLive => {
                qmp.call(
                    "block-job-change",
                    json!({"id": r.job_id, "type": "mirror", "copy-mode": "write-blocking"}),
                )?;
                let r = &mut self.runs[i];
                let note = format!(
                    "not ready after {} ms in background mode; switched to write-blocking with block-job-change",
                    ms(since)
                );
                r.reason = format!("{}; {note}", r.reason);
                r.mode = CopyMode::WriteBlocking;
                r.decision = ModeDecision {
                    mode: CopyMode::WriteBlocking,
                    reason: r.reason.clone(),
                    bound: policy::convergence_bound(size, 0, limit),
                    fallback: Fallback::Abort,
                };
                r.started = Some(Instant::now());
                Ok(format!("{device}: {note}"))
            }
            Fallback::Restart => {
                let job = r.job_id.clone();
                cancel_and_wait(qmp, &job)?;
                let note = format!(
                    "not ready after {} ms in background mode; QEMU {} cannot switch a running job, \
                     so it was cancelled and restarted in write-blocking mode",
                    ms(since),
                    self.plan.features.version
                );
                {
                    let r = &mut self.runs[i];
                    r.job_started = false;
                    r.reason = format!("{}; {note}", r.reason);
                    r.mode = CopyMode::WriteBlocking;
                    r.restarts += 1;
                    r.progress = Progress::default();
                    r.decision = ModeDecision {
                        mode: CopyMode::WriteBlocking,
                        reason: r.reason.clone(),
                        bound: policy::convergence_bound(size, 0, limit),
                        fallback: Fallback::Abort,
                    };
                }
                self.start_job(qmp, i)?;
                Ok(format!("{device}: {note}"))
            }
        }
    }

    /// Undo everything after a failure before the pivot; returns the error to report.
    fn abort(
        &mut self,
        qmp: &mut Qmp,
        cause: LiveError,
        cb: &mut dyn FnMut(&LiveProgress),
    ) -> LiveError {
        tracing::warn!(%cause, "live migration failed before the pivot; cleaning up");
        self.report("cleanup", Some(cause.to_string()), cb);
        let all: Vec<usize> = (0..self.runs.len()).collect();
        let problems = self.undo(qmp, &all);
        if problems.is_empty() {
            cause
        } else {
            LiveError::CleanupIncomplete {
                cause: Box::new(cause),
                problems,
            }
        }
    }

    /// Cancels the jobs of the disks `idx` (waiting until they are gone), deletes their
    /// target nodes and the target files this driver created. Returns what could not be undone.
    fn undo(&mut self, qmp: &mut Qmp, idx: &[usize]) -> Vec<String> {
        let mut problems = Vec::new();
        // Cancel every job first (they may all be copying), then wait for each.
        for &i in idx {
            let r = &self.runs[i];
            if r.job_started {
                let _ = qmp.call("job-cancel", json!({"id": r.job_id}));
            }
        }
        for &i in idx {
            let r = &mut self.runs[i];
            if r.job_started {
                match cancel_and_wait(qmp, &r.job_id) {
                    Ok(()) => r.job_started = false,
                    Err(e) => problems.push(format!("job {}: {e}", r.job_id)),
                }
            }
        }
        for &i in idx {
            let r = &mut self.runs[i];
            if r.job_started {
                continue; // nodes are still used by a job that did not end
            }
            for (added, node) in [
                (&mut r.fmt_node_added, &r.fmt_node),
                (&mut r.file_node_added, &r.file_node),
            ] {
                if *added {
                    match qmp.call("blockdev-del", json!({"node-name": node})) {
                        Ok(_) => *added = false,
                        Err(e) => problems.push(format!("node {node}: {e}")),
                    }
                }
            }
            if r.created_file && !r.fmt_node_added && !r.file_node_added {
                match std::fs::remove_file(&r.planned.target) {
                    Ok(()) => r.created_file = false,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => r.created_file = false,
                    Err(e) => problems.push(format!("file {}: {e}", r.planned.target.display())),
                }
            }
        }
        problems
    }

    fn pivot(
        mut self,
        qmp: &mut Qmp,
        cb: &mut dyn FnMut(&LiveProgress),
    ) -> Result<LiveOutcome, LiveError> {
        self.report("pivoting", None, cb);
        // Drop stale events so the conclusion events below are this pivot's.
        for ev in qmp.take_events() {
            if let Err(e) = self.on_event(&ev) {
                return Err(self.abort(qmp, e, cb));
            }
        }
        // The bandwidth limit is for the bulk copy. At completion a background mirror first
        // copies what is still dirty, throttled by the job speed: lift it so the pivot is
        // quick. Never for write-blocking jobs: there is no backlog, and QEMU 7.2 aborts
        // (`bdrv_co_write_req_prepare: Assertion child->perm & BLK_PERM_WRITE`) when the
        // speed of an active mirror changes while guest writes are in flight and the job
        // completes (reproduced 3 of 5 times under case C25's load).
        if self.plan.options.bwlimit.is_some() {
            for r in self.runs.iter().filter(|r| r.mode == CopyMode::Background) {
                if let Err(e) = qmp.call(
                    "block-job-set-speed",
                    json!({"device": r.job_id, "speed": 0}),
                ) {
                    tracing::warn!(job = %r.job_id, %e, "cannot lift the speed limit before the pivot");
                }
            }
        }
        let mut requested: Vec<(usize, Instant)> = Vec::new();
        let mut pivot_err: Option<(String, String)> = None;
        for (i, r) in self.runs.iter().enumerate() {
            let t = Instant::now();
            match qmp.call("job-complete", json!({"id": r.job_id})) {
                Ok(_) => requested.push((i, t)),
                Err(e) => {
                    pivot_err = Some((r.planned.disk.device.clone(), e.to_string()));
                    break;
                }
            }
        }
        if let Some((device, message)) = pivot_err.clone() {
            if requested.is_empty() {
                // Nothing pivoted yet: the VM is still entirely on its sources.
                return Err(self.abort(
                    qmp,
                    LiveError::PivotFailed {
                        device,
                        message,
                        pivoted: vec![],
                    },
                    cb,
                ));
            }
        }
        let mut pivot_us: BTreeMap<usize, u64> = BTreeMap::new();
        let mut failures: Vec<(String, String)> = Vec::new();
        let deadline = Instant::now() + CLEANUP_WAIT;
        while pivot_us.len() + failures.len() < requested.len() && Instant::now() < deadline {
            let ev = qmp.wait_event(Duration::from_millis(500), |e| {
                e.name == "BLOCK_JOB_COMPLETED" || e.name == "BLOCK_JOB_CANCELLED"
            })?;
            let Some(ev) = ev else { continue };
            let Some(&(i, t)) = requested
                .iter()
                .find(|(i, _)| Some(self.runs[*i].job_id.as_str()) == ev.job_id())
            else {
                continue;
            };
            match ev.data.get("error").and_then(Value::as_str) {
                None if ev.name == "BLOCK_JOB_COMPLETED" => {
                    let us = ev.received.saturating_duration_since(t).as_micros();
                    pivot_us.insert(i, u64::try_from(us).unwrap_or(u64::MAX));
                }
                err => failures.push((
                    self.runs[i].planned.disk.device.clone(),
                    err.unwrap_or("cancelled").to_owned(),
                )),
            }
        }
        for r in &self.runs {
            let _ = qmp.call("job-dismiss", json!({"id": r.job_id}));
        }
        let pivoted: Vec<String> = pivot_us
            .keys()
            .map(|&i| self.runs[i].planned.disk.device.clone())
            .collect();
        if pivot_us.len() < self.runs.len() {
            // Disks that did not pivot stay on their sources: drop their jobs and targets.
            let rest: Vec<usize> = (0..self.runs.len())
                .filter(|i| !pivot_us.contains_key(i))
                .collect();
            let problems = self.undo(qmp, &rest);
            if !problems.is_empty() {
                tracing::warn!(?problems, "cleanup after a failed pivot is incomplete");
            }
        }
        if let Some((device, message)) = pivot_err.or_else(|| failures.into_iter().next()) {
            return Err(LiveError::PivotFailed {
                device,
                message,
                pivoted,
            });
        }
        if pivot_us.len() < self.runs.len() {
            return Err(LiveError::PivotFailed {
                device: self
                    .runs
                    .iter()
                    .enumerate()
                    .find(|(i, _)| !pivot_us.contains_key(i))
                    .map(|(_, r)| r.planned.disk.device.clone())
                    .unwrap_or_default(),
                message: format!("no completion event within {} s", CLEANUP_WAIT.as_secs()),
                pivoted,
            });
        }
        // Every disk runs on its target now (a process killed from here on leaves a job
        // that `vmshift resume` finishes instead of mirroring again).
        self.report("pivoted", None, cb);
        // After the pivot: detach the old graph, so QEMU closes (and unlocks) the sources.
        let mut disks = Vec::new();
        let nodes = qmp
            .call("query-named-block-nodes", json!({"flat": true}))
            .unwrap_or(Value::Null);
        for (i, r) in self.runs.iter().enumerate() {
            let d = &r.planned.disk;
            let mut old: Vec<String> = vec![d.node_name.clone()];
            old.extend(d.protocol_node.clone());
            if r.planned.sync == SyncMode::Full {
                for b in &d.backing_chain {
                    old.extend(nodes_for_file(&nodes, &b.filename));
                }
            }
            for n in &old {
                let _ = qmp.call("blockdev-del", json!({"node-name": n}));
            }
            let still = qmp
                .call("query-named-block-nodes", json!({"flat": true}))
                .unwrap_or(Value::Null);
            let detached = !nodes_for_file(&still, &d.file).iter().any(|_| true);
            let mut source_deleted = false;
            if self.plan.options.delete_source && detached {
                source_deleted = std::fs::remove_file(&d.file).is_ok();
            }
            let us = pivot_us.get(&i).copied().unwrap_or(0);
            disks.push(DiskOutcome {
                device: d.device.clone(),
                node_name: r.fmt_node.clone(),
                old_path: d.path(),
                new_path: r.planned.target.clone(),
                format: r.planned.format,
                virtual_size: d.virtual_size,
                bytes: r.progress.total,
                copy_mode: r.mode,
                mode_reason: r.reason.clone(),
                guest_write_rate: r.write_rate,
                restarts: r.restarts,
                time_to_ready_ms: match (r.first_start, r.ready_at) {
                    (Some(s), Some(t)) => ms(t.saturating_duration_since(s)),
                    _ => 0,
                },
                pivot_ms: us as f64 / 1000.0,
                old_nodes_detached: detached,
                source_deleted,
                next_start: format!(
                    "start the VM with {} (format {}) instead of {} for device {}",
                    r.planned.target.display(),
                    r.planned.format.as_str(),
                    d.file,
                    d.device
                ),
            });
        }
        let pivot_ms = disks.iter().map(|d| d.pivot_ms).fold(0.0, f64::max);
        self.report("done", None, cb);
        Ok(LiveOutcome {
            qemu_version: self.plan.features.version,
            disks,
            pivot_ms,
            duration_ms: ms(self.t0.elapsed()),
        })
    }
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

fn nodes_for_file(nodes: &Value, file: &str) -> Vec<String> {
    nodes
        .as_array()
        .map(|a| {
            a.iter()
                .filter(|n| n.get("file").and_then(Value::as_str) == Some(file))
                .filter_map(|n| {
                    n.get("node-name")
                        .and_then(Value::as_str)
                        .map(str::to_owned)
                })
                .collect()
        })
        .unwrap_or_default()
}

fn stats_key(d: &DiskInfo) -> String {
    d.qdev.clone().unwrap_or_else(|| d.block_device.clone())
}

fn remove_bitmaps(qmp: &mut Qmp, bitmaps: &[(String, String)]) {
    for (node, name) in bitmaps {
        if let Err(e) = qmp.call(
            "block-dirty-bitmap-remove",
            json!({"node": node, "name": name}),
        ) {
            tracing::warn!(%node, %name, %e, "cannot remove the rate-sampling dirty bitmap");
        }
    }
}

/// Dirty bytes counted by bitmap `name` on node `node` in a `query-named-block-nodes` reply.
fn bitmap_count(nodes: &Value, node: &str, name: &str) -> Option<u64> {
    nodes
        .as_array()?
        .iter()
        .find(|n| n.get("node-name").and_then(Value::as_str) == Some(node))?
        .get("dirty-bitmaps")?
        .as_array()?
        .iter()
        .find(|b| b.get("name").and_then(Value::as_str) == Some(name))?
        .get("count")?
        .as_u64()
}

/// `wr_bytes` of every device, keyed by qdev path (or device name when there is none).
fn blockstats(qmp: &mut Qmp) -> Result<HashMap<String, u64>, QmpError> {
    let v = qmp.execute("query-blockstats", None)?;
    let mut out = HashMap::new();
    for s in v.as_array().map(Vec::as_slice).unwrap_or(&[]) {
        let key = s
            .get("qdev")
            .and_then(Value::as_str)
            .filter(|q| !q.is_empty())
            .or_else(|| s.get("device").and_then(Value::as_str))
            .unwrap_or("")
            .to_owned();
        let wr = s
            .pointer("/stats/wr_bytes")
            .and_then(Value::as_u64)
            .unwrap_or(0);
        out.insert(key, wr);
    }
    Ok(out)
}

/// Cancels job `id` (if still running) and waits until `query-jobs` no longer lists it,
/// dismissing it once concluded. Bounded by two minutes; QEMU can take seconds to cancel a
/// throttled or write-blocking mirror, and target nodes must not be reused before.
pub fn cancel_and_wait(qmp: &mut Qmp, id: &str) -> Result<(), QmpError> {
    let deadline = Instant::now() + CLEANUP_WAIT;
    let mut cancelled = false;
    loop {
        let jobs = qmp.execute("query-jobs", None)?;
        let status = jobs.as_array().and_then(|a| {
            a.iter()
                .find(|j| j.get("id").and_then(Value::as_str) == Some(id))
                .map(|j| {
                    j.get("status")
                        .and_then(Value::as_str)
                        .unwrap_or("")
                        .to_owned()
                })
        });
        match status.as_deref() {
            None => return Ok(()),
            Some("concluded") => {
                qmp.call("job-dismiss", json!({"id": id}))?;
            }
            Some("aborting") | Some("null") | Some("pending") | Some("waiting") => {}
            Some(_) if !cancelled => {
                match qmp.call("job-cancel", json!({"id": id})) {
                    Ok(_) => {}
                    Err(QmpError::Command { .. }) => {} // raced with its own end
                    Err(e) => return Err(e),
                }
                cancelled = true;
            }
            Some(_) => {}
        }
        if Instant::now() > deadline {
            return Err(QmpError::Timeout {
                command: format!("job-cancel {id} (job still listed)"),
                timeout: CLEANUP_WAIT,
            });
        }
        qmp.pump(Duration::from_millis(100))?;
        qmp.take_events();
    }
}

#[cfg(test)]
mod naming_tests {
    use super::*;

    #[test]
    fn target_names_follow_the_target_format() {
        assert_eq!(
            target_file_name(Path::new("/a/top disk:1.qcow2"), TargetFormat::Raw),
            "top disk:1.raw"
        );
        assert_eq!(
            target_file_name(Path::new("/a/data b.raw"), TargetFormat::Qcow2),
            "data b.qcow2"
        );
        assert_eq!(
            target_file_name(Path::new("/a/disk.img"), TargetFormat::Qcow2),
            "disk.img"
        );
        assert_eq!(
            target_file_name(Path::new("/a/vm.qcow2"), TargetFormat::Qcow2),
            "vm.qcow2"
        );
    }
}
