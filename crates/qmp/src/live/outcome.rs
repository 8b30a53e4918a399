//! What a successful live migration reports.

use std::path::PathBuf;

use crate::features::QemuVersion;
use crate::policy::CopyMode;

use super::options::TargetFormat;

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
    /// What of the source file's owner, group, mode, xattrs and SELinux label the target
    /// could not take, one line each (empty when it took them all).
    pub warnings: Vec<String>,
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
    /// Each bandwidth limit applied to the running jobs during the copy, in order.
    pub bwlimit_changes: Vec<LimitChange>,
}

/// A bandwidth limit applied while the mirrors copied (`block-job-set-speed`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LimitChange {
    /// Time since the run started, ms.
    pub at_ms: u64,
    /// The new limit, bytes/s (0 = unlimited).
    pub bytes_per_sec: u64,
}
