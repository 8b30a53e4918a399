//! Progress reports of a running live migration.

use std::time::Duration;

use crate::policy::{CopyMode, Progress};

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

/// `d` in whole milliseconds (saturating).
pub(super) fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}
