//! Safety checks around the plan: what an operator's options could destroy (the report path
//! landing on an image, `--overwrite` over a running VM's disk or over somebody's backing
//! file, `--delete-source` of an image still in use), which images depend on a file, and
//! whether the source changed while it was copied.

use crate::request::OfflineRequest;
use std::io::Read;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use vmshift_core::plan::{LockState, Problem};
use vmshift_image::chain::Chain;
use vmshift_image::header::{Qcow2Header, AUTOCLEAR_BITMAPS};

/// Directories with more entries than this are not scanned for dependants (they are not
/// datastores of VM images, and scanning them would be slow).
const MAX_SCAN_ENTRIES: usize = 10_000;

/// (device, inode) of a path, following symlinks.
fn inode(p: &Path) -> Option<(u64, u64)> {
    std::fs::metadata(p).ok().map(|m| (m.dev(), m.ino()))
}

/// Problems with the operator's options that the plan itself does not see.
pub fn problems(
    args: &OfflineRequest,
    chain: Option<&Chain>,
    target: &Path,
    source_lock: &LockState,
) -> Vec<Problem> {
    let mut out = report_problems(args, chain, target);
    out.extend(state_dir_problem());
    out.extend(threads_problem(args));
    out.extend(partial_problem(target));
    out.extend(target_problems(args, target));
    out.extend(delete_source_problems(args, chain, source_lock));
    out
}

/// The report must never land on an image, nor overwrite what is not a report.
fn report_problems(args: &OfflineRequest, chain: Option<&Chain>, target: &Path) -> Vec<Problem> {
    let mut out = Vec::new();
    let chain_inodes: Vec<(u64, u64)> = chain
        .map(|c| c.layers.iter().filter_map(|l| inode(&l.path)).collect())
        .unwrap_or_default();

    // The report must never land on an image.
    if let Some(r) = &args.report {
        let lands_on_image = inode(r)
            .is_some_and(|i| chain_inodes.contains(&i) || Some(i) == inode(target))
            || r == target
            || r == &crate::files::partial_path(target);
        if lands_on_image {
            out.push(Problem::new(
                "report_path",
                format!(
                    "--report {} would overwrite an image of this migration",
                    r.display()
                ),
                "write the report to another file",
            ));
        } else if let Some(p) = report_file_problem(r) {
            out.push(p);
        } else if !parent_writable(r) {
            out.push(Problem::new(
                "report_path",
                format!(
                    "--report {}: its directory does not exist or is not writable",
                    r.display()
                ),
                "name a file in a writable directory",
            ));
        }
    }
    out
}

/// The state directory must be usable for the journal and reports.
fn state_dir_problem() -> Option<Problem> {
    if let Err(e) = crate::state::state_dir().and_then(|d| {
        let reports = d.join("reports");
        std::fs::create_dir_all(&reports).map_err(|source| crate::RunnerError::Io {
            message: format!("cannot create {}", reports.display()),
            source,
        })?;
        Ok(reports)
    }) {
        return Some(Problem::new(
            "state_dir",
            format!("the state directory cannot be used: {e}"),
            "set VMSHIFT_STATE_DIR to a writable directory",
        ));
    }
    None
}

/// Copy threads outside 1–256 (the CLI's parser refuses them; a JSON request may not).
fn threads_problem(args: &OfflineRequest) -> Option<Problem> {
    let t = args.threads?;
    (!(1..=MAX_THREADS).contains(&t)).then(|| {
        Problem::new(
            "threads",
            format!("threads {t} is outside 1-{MAX_THREADS}"),
            "give 1 to 256 copy threads, or leave it out (twice the CPUs, 8 to 16)",
        )
    })
}

/// The most copy worker threads a job may ask for.
pub const MAX_THREADS: usize = 256;

/// A partial target under our temporary name belongs to a running or interrupted job.
fn partial_problem(target: &Path) -> Option<Problem> {
    let partial = crate::files::partial_path(target);
    if partial.exists() {
        let writer = crate::state::state_dir().ok().and_then(|d| {
            vmshift_journal::lock::holder(
                &d.join("locks")
                    .join(vmshift_journal::lock::target_lock_name(target)),
            )
        });
        return Some(match writer {
            Some(pid) => Problem::new(
                "partial_exists",
                format!("{} is being written by vmshift process {pid}", partial.display()),
                "wait for it, or `vmshift cancel` its job",
            ),
            None => Problem::new(
                "partial_exists",
                format!("{} exists: an interrupted vmshift job left it", partial.display()),
                "`vmshift jobs` lists it: resume or cancel that job; remove the file only if no job owns it",
            ),
        });
    }
    None
}

/// Targets vmshift does not write (devices), and `--overwrite` of a target in use.
fn target_problems(args: &OfflineRequest, target: &Path) -> Vec<Problem> {
    let mut out = Vec::new();
    // Targets vmshift does not write: devices.
    if let Ok(m) = std::fs::metadata(target) {
        let ft = m.file_type();
        if ft.is_block_device() || ft.is_char_device() {
            out.push(Problem::new(
                "target_device",
                format!(
                    "target {} is a device; vmshift writes image files only",
                    target.display()
                ),
                "name a file on a filesystem; block-device targets are not supported yet",
            ));
        } else if args.overwrite {
            // Replacing a file a VM runs on, or one that other images are built on, loses data.
            if let Ok(LockState::Held { pids, .. }) = vmshift_image::lock::probe(target) {
                out.push(Problem::new(
                    "target_in_use",
                    format!(
                        "target {} is in use by a running VM{}: --overwrite would pull the disk from under it",
                        target.display(),
                        if pids.is_empty() { String::new() } else { format!(" (pid {})", join(&pids)) }
                    ),
                    "shut the VM down or choose another target",
                ));
            }
            let users = dependants(target);
            if !users.is_empty() {
                out.push(Problem::new(
                    "target_is_backing",
                    format!(
                        "target {} is the backing file of {}: --overwrite would change what those images contain",
                        target.display(),
                        names(&users)
                    ),
                    "choose another target",
                ));
            }
        }
    }
    // /dev holds device nodes on a RAM file system: a new "image" there (a mistyped device
    // name) would fill memory and look like a device to the next reader.
    let parent = target.parent().and_then(|d| std::fs::canonicalize(d).ok());
    if out.is_empty() && parent.is_some_and(|d| d.starts_with("/dev")) {
        out.push(Problem::new(
            "target_device",
            format!(
                "target {} is not a device and lies in /dev, where vmshift creates nothing",
                target.display()
            ),
            "check the device name, or name a file on a filesystem; block-device targets are not supported yet",
        ));
    }

    out
}

/// `--delete-source` of an image in use or with metadata the copy does not keep.
fn delete_source_problems(
    args: &OfflineRequest,
    chain: Option<&Chain>,
    source_lock: &LockState,
) -> Vec<Problem> {
    let mut out = Vec::new();
    if args.delete_source {
        if matches!(source_lock, LockState::Held { .. }) {
            out.push(Problem::new(
                "delete_in_use",
                "--delete-source would delete an image a running VM is using",
                "shut the VM down first (or use live mode), or drop --delete-source",
            ));
        }
        if let Some(h) = chain.and_then(|c| c.top().header.as_ref()) {
            if h.nb_snapshots > 0 || h.autoclear_features & AUTOCLEAR_BITMAPS != 0 {
                out.push(Problem::new(
                    "delete_loses_metadata",
                    "--delete-source would lose the source's internal snapshots or persistent bitmaps, which are not copied",
                    "keep the source (drop --delete-source), or save the snapshots first (qemu-img snapshot / convert -l)",
                ));
            }
        }
    }
    out
}

/// A `--report` path that already holds something other than a report (an image, say) is
/// never overwritten: only empty files and earlier JSON or Markdown reports are.
pub fn report_file_problem(r: &Path) -> Option<Problem> {
    let mut head = [0u8; 1];
    let n = std::fs::File::open(r).ok()?.read(&mut head).ok()?;
    if n == 0 || head[0] == b'{' || head[0] == b'#' {
        return None;
    }
    Some(Problem::new(
        "report_path",
        format!(
            "--report {} already holds something that is not a report",
            r.display()
        ),
        "write the report to a new file",
    ))
}

/// [`report_file_problem`], plus a report whose directory is missing or not writable.
pub fn report_target_problem(r: &Path) -> Option<Problem> {
    report_file_problem(r).or_else(|| {
        (!parent_writable(r)).then(|| {
            Problem::new(
                "report_path",
                format!(
                    "--report {}: its directory does not exist or is not writable",
                    r.display()
                ),
                "name a file in a writable directory",
            )
        })
    })
}

fn join(pids: &[u32]) -> String {
    pids.iter()
        .map(u32::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

/// `a, b and 2 more` for messages.
pub fn names(paths: &[PathBuf]) -> String {
    let shown: Vec<String> = paths
        .iter()
        .take(3)
        .map(|p| p.display().to_string())
        .collect();
    let more = paths.len().saturating_sub(3);
    if more > 0 {
        format!("{} and {more} more", shown.join(", "))
    } else {
        shown.join(", ")
    }
}

fn parent_writable(p: &Path) -> bool {
    let dir = match p.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    dir.is_dir() && rustix::fs::access(dir, rustix::fs::Access::WRITE_OK).is_ok()
}

/// qcow2 images whose backing chain names `image`, found in the places operators keep
/// datastores: `image`'s own directory, the directories beside it, and every target that
/// vmshift itself left pointing at a backing file (from the reports in the state directory).
/// It cannot see images elsewhere on the host; the report says so.
pub fn dependants(image: &Path) -> Vec<PathBuf> {
    let Some(target) = inode(image) else {
        return Vec::new();
    };
    let Ok(canon) = std::fs::canonicalize(image) else {
        return Vec::new();
    };
    let mut candidates: Vec<PathBuf> = Vec::new();
    if let Some(dir) = canon.parent() {
        candidates.extend(list(dir));
        if let Some(parent) = dir.parent() {
            for sibling in list(parent).into_iter().filter(|p| p.is_dir()) {
                if sibling != dir {
                    candidates.extend(list(&sibling));
                }
            }
        }
    }
    candidates.extend(recorded_shallow_targets());
    candidates.sort();
    candidates.dedup();
    candidates
        .into_iter()
        .filter(|p| p.is_file() && inode(p) != Some(target))
        .filter(|p| backing_of(p).is_some_and(|b| inode(&b) == Some(target)))
        .collect()
}

fn list(dir: &Path) -> Vec<PathBuf> {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    rd.take(MAX_SCAN_ENTRIES)
        .flatten()
        .map(|e| e.path())
        .collect()
}

/// The backing file a qcow2 image names, resolved like QEMU resolves it.
fn backing_of(p: &Path) -> Option<PathBuf> {
    let mut head = vec![0u8; 65536];
    let n = std::fs::File::open(p).ok()?.read(&mut head).ok()?;
    let name = Qcow2Header::parse(&head[..n]).ok()?.backing_file?;
    Some(if Path::new(&name).is_absolute() {
        PathBuf::from(name)
    } else {
        p.parent().unwrap_or(Path::new(".")).join(name)
    })
}

/// Targets of earlier vmshift jobs that kept a backing chain.
fn recorded_shallow_targets() -> Vec<PathBuf> {
    let Ok(dir) = crate::state::state_dir().map(|d| d.join("reports")) else {
        return Vec::new();
    };
    list(&dir)
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .filter_map(|p| std::fs::read(p).ok())
        .filter_map(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
        .filter(|r| r["backing"] == "kept" && r["status"] == "succeeded")
        .filter_map(|r| r["destination"]["path"].as_str().map(PathBuf::from))
        .collect()
}

/// Size, modification and change time of every file of a chain: taken before the copy and
/// compared after verification, so a writer that ignores QEMU's locks (`dd`, `cp`, a VM with
/// `locking=off`) cannot make a copy of changing data pass as proven.
#[derive(Debug, PartialEq, Eq)]
pub struct SourceStamp(Vec<(PathBuf, u64, i64, i64, i64, i64)>);

impl SourceStamp {
    /// Stamps every layer of `chain`.
    pub fn take(chain: &Chain) -> Self {
        SourceStamp(
            chain
                .layers
                .iter()
                .filter_map(|l| {
                    let m = std::fs::metadata(&l.path).ok()?;
                    Some((
                        l.path.clone(),
                        m.len(),
                        m.mtime(),
                        m.mtime_nsec(),
                        m.ctime(),
                        m.ctime_nsec(),
                    ))
                })
                .collect(),
        )
    }

    /// The first file that changed since `self`, if any.
    pub fn changed_since(&self, chain: &Chain) -> Option<PathBuf> {
        let now = SourceStamp::take(chain);
        self.0
            .iter()
            .zip(now.0.iter())
            .find(|(a, b)| a != b)
            .map(|(a, _)| a.0.clone())
            .or_else(|| (self.0.len() != now.0.len()).then(|| chain.top().path.clone()))
    }
}

/// Live plans get the same protection as offline ones: `--delete-source` is refused for a
/// disk whose image other images use as their backing file, or whose internal snapshots or
/// persistent bitmaps a mirror does not copy; without `--delete-source` those are warned
/// about (the returned warnings, one line each).
///
/// # Errors
/// `LiveError::Refused` listing every such disk.
pub fn check_live_plan(
    plan: vmshift_qmp::LivePlan,
    delete_source: bool,
) -> Result<(vmshift_qmp::LivePlan, Vec<String>), vmshift_qmp::LiveError> {
    let mut refusals = Vec::new();
    let mut warnings = Vec::new();
    for d in &plan.disks {
        let file = Path::new(&d.disk.file);
        let metadata = qcow2_metadata_not_copied(file);
        if delete_source {
            let users = dependants(file);
            if !users.is_empty() {
                refusals.push(vmshift_qmp::live::Refusal {
                    device: d.disk.device.clone(),
                    reason: format!(
                        "--delete-source would delete {}, the backing file of {}",
                        file.display(),
                        names(&users)
                    ),
                });
            }
            if let Some(what) = &metadata {
                refusals.push(vmshift_qmp::live::Refusal {
                    device: d.disk.device.clone(),
                    reason: format!(
                        "--delete-source would lose the {what} of {}, which a mirror does not copy",
                        file.display()
                    ),
                });
            }
        } else if let Some(what) = &metadata {
            warnings.push(format!(
                "{} has {what}; the mirror does not copy them and the source keeps them",
                file.display()
            ));
        }
    }
    if refusals.is_empty() {
        Ok((plan, warnings))
    } else {
        Err(vmshift_qmp::LiveError::Refused(refusals))
    }
}

/// "internal snapshots", "persistent bitmaps" or both, for a qcow2 file that has them.
fn qcow2_metadata_not_copied(file: &Path) -> Option<String> {
    let mut head = vec![0u8; 65536];
    let n = std::fs::File::open(file).ok()?.read(&mut head).ok()?;
    let h = Qcow2Header::parse(&head[..n]).ok()?;
    match (
        h.nb_snapshots > 0,
        h.autoclear_features & AUTOCLEAR_BITMAPS != 0,
    ) {
        (true, true) => Some("internal snapshots and persistent bitmaps".into()),
        (true, false) => Some("internal snapshots".into()),
        (false, true) => Some("persistent bitmaps".into()),
        (false, false) => None,
    }
}
