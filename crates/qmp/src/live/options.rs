//! What the operator asks of a live migration: destination, disks, format, limits, modes.

use std::path::PathBuf;
use std::time::Duration;

use crate::policy::CopyModeRequest;

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
