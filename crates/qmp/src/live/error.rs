//! Failures of the live driver and the refusals of its pre-flight check.

use std::path::PathBuf;

use crate::error::QmpError;
use crate::features::QemuVersion;
use crate::policy::CopyMode;

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
    #[error("{}", .0.iter().map(|r| format!("{}: {}", r.device, r.reason)).collect::<Vec<_>>().join("; "))]
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
    #[error("stopped by the operator (vmshift cancel, Ctrl-C or SIGTERM)")]
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
