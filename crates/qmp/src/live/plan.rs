//! The pre-flight check: which disks move where, in which format and sync mode, and whether
//! they fit. Nothing in QEMU or on disk is changed here.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use crate::client::Qmp;
use crate::disk::{discover, DiskInfo};
use crate::features::Features;

use super::error::{LiveError, Refusal};
use super::options::{ExistingTarget, LiveOptions, TargetFormat};

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

/// [`super::LiveMigration::plan`]: checks everything that can be checked without changing
/// anything and returns every refusal at once.
pub(super) fn plan(qmp: &mut Qmp, options: &LiveOptions) -> Result<LivePlan, LiveError> {
    let features = Features::detect(qmp)?;
    let missing = features.missing_for_live();
    if !missing.is_empty() {
        return Err(LiveError::Unsupported {
            version: features.version,
            missing: missing.into_iter().map(str::to_owned).collect(),
        });
    }
    let all = discover(qmp)?;
    let selected = select_disks(&all, &options.disks)?;
    let mut refusals = Vec::new();
    if selected.is_empty() {
        refusals.push(Refusal {
            device: "-".into(),
            reason: "the VM has no writable disk to move".into(),
        });
    }
    let dest = destination(&options.dest_dir, &mut refusals);
    let dest_available = dest.as_deref().map(available_bytes).unwrap_or(0);
    let mut planned = Vec::new();
    let mut names: HashMap<PathBuf, String> = HashMap::new();
    for d in selected {
        let mut why = Vec::new();
        let p = plan_disk(d, options, dest.as_deref(), &mut why);
        if let Some(other) = names.insert(p.target.clone(), p.disk.device.clone()) {
            why.push(format!(
                "its target {} is also the target of {other} (two images share a file name)",
                p.target.display()
            ));
        }
        if why.is_empty() {
            planned.push(p);
        } else {
            refusals.extend(why.into_iter().map(|reason| Refusal {
                device: p.disk.device.clone(),
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

/// The disks `selectors` name (each once, in selector order), or every writable disk when
/// there are none.
fn select_disks(all: &[DiskInfo], selectors: &[String]) -> Result<Vec<DiskInfo>, LiveError> {
    if selectors.is_empty() {
        return Ok(all.iter().filter(|d| !d.read_only).cloned().collect());
    }
    let mut v: Vec<DiskInfo> = Vec::new();
    for sel in selectors {
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
    Ok(v)
}

/// The canonical destination directory, or a refusal saying why it is not usable.
fn destination(dir: &Path, refusals: &mut Vec<Refusal>) -> Option<PathBuf> {
    match std::fs::canonicalize(dir) {
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
                device: dir.display().to_string(),
                reason: format!("destination directory is not usable: {e}"),
            });
            None
        }
    }
}

/// What the source of disk `d` allows: adds to `why` what forbids moving it.
fn check_source(d: &DiskInfo, why: &mut Vec<String>) {
    if d.read_only {
        why.push("the disk is read-only".to_owned());
    }
    if d.shared {
        why.push(
            "the disk is shared (share-rw=on); moving it under another VM is unsafe".to_owned(),
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
}

/// Plans disk `d`: sync mode, format, target path; adds to `why` what forbids it.
fn plan_disk(
    d: DiskInfo,
    options: &LiveOptions,
    dest: Option<&Path>,
    why: &mut Vec<String>,
) -> PlannedDisk {
    check_source(&d, why);
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
            why.push("--shallow keeps a backing file, which a raw target cannot have".to_owned());
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
    if sync == SyncMode::Top && d.backing_chain.first().is_some_and(|b| b.format.is_empty()) {
        why.push("the backing format is unknown; refusing to probe it".to_owned());
    }
    let target = match (&existing, dest) {
        (Some(e), _) => {
            check_existing(&d, e, options.format, why);
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
    let needed_bytes = needed_bytes(&d, format, sync, existing.is_some());
    PlannedDisk {
        disk: d,
        target,
        format,
        sync,
        existing,
        needed_bytes,
    }
}

/// The target's file name: the source's, with a `.qcow2`/`.raw` extension following the
/// target format so that the name never contradicts the content.
pub fn target_file_name(source: &Path, format: TargetFormat) -> std::ffi::OsString {
    let name = PathBuf::from(source.file_name().unwrap_or_default());
    let renamed = match (name.extension().and_then(|e| e.to_str()), format) {
        (Some("qcow2" | "qcow"), TargetFormat::Raw) => name.with_extension("raw"),
        (Some("raw"), TargetFormat::Qcow2) => name.with_extension("qcow2"),
        _ => name,
    };
    renamed.into_os_string()
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

#[cfg(test)]
mod tests {
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
