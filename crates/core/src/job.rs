//! The job model: ids, kinds, statuses and phases of a storage migration.

use serde::{Deserialize, Serialize};
use std::fmt;

/// A job id: a UUID v7 (time-ordered), shown in its hyphenated form.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct JobId(pub String);

impl JobId {
    /// A fresh time-ordered id.
    pub fn new() -> Self {
        JobId(uuid::Uuid::now_v7().hyphenated().to_string())
    }
}

impl Default for JobId {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Display for JobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Offline (the VM is off; our copy engine) or live (QEMU block mirror over QMP).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum JobKind {
    /// The VM is off; vmshift copies the image itself.
    Offline,
    /// The VM runs; QEMU mirrors its disks and pivots.
    Live,
    /// A libvirt domain's disks: through libvirt's block copy when it runs, the offline
    /// engine when it is shut off; then its definition names the new files.
    Domain,
}

/// Where a job stands. The terminal ones are `Succeeded`, `Failed`, `Cancelled`, `RolledBack`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum JobStatus {
    /// Created or running.
    Running,
    /// Every phase finished; the target is final.
    Succeeded,
    /// A phase failed; the source is intact and no target sits under the final name.
    Failed,
    /// Stopped on request; same guarantees as `Failed`.
    Cancelled,
    /// Stopped by Ctrl-C or SIGTERM (a service that stops, a host that shuts down): what a
    /// resume needs is kept, and `vmshift resume` continues it; same guarantees as
    /// `Failed` otherwise. Also shown for a `running` job whose process is gone.
    Interrupted,
    /// Succeeded once, then undone by `vmshift rollback`.
    RolledBack,
    /// Refused by the plan/check phase before anything was written.
    Refused,
}

/// Every status a job can be shown with (`jobs --status`, `GET /jobs?status=`).
pub const STATUS_NAMES: [&str; 7] = [
    "running",
    "interrupted",
    "succeeded",
    "failed",
    "cancelled",
    "refused",
    "rolled_back",
];

impl JobStatus {
    /// The string used in reports and the journal.
    pub fn as_str(&self) -> &'static str {
        match self {
            JobStatus::Running => "running",
            JobStatus::Succeeded => "succeeded",
            JobStatus::Failed => "failed",
            JobStatus::Cancelled => "cancelled",
            JobStatus::Interrupted => "interrupted",
            JobStatus::RolledBack => "rolled_back",
            JobStatus::Refused => "refused",
        }
    }
}

/// The phases a job walks through, in order (see DESIGN.md §2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// Inspect source and destination; decide whether the job may go ahead.
    Check,
    /// Optional point-in-time copy before the move.
    Backup,
    /// Copy data (offline engine or QEMU mirror), monitored.
    Copy,
    /// Prove the target holds the same guest-visible content as the source.
    Verify,
    /// Pivot the VM (live) or rename the target into place (offline).
    Cutover,
    /// Report or rewrite what points at the old path.
    References,
    /// Remove temporary files (and the source, only if asked and verified).
    Cleanup,
    /// Write the JSON and Markdown reports.
    Report,
}

impl Phase {
    /// The name used in events, reports and the journal.
    pub fn as_str(&self) -> &'static str {
        match self {
            Phase::Check => "check",
            Phase::Backup => "backup",
            Phase::Copy => "copy",
            Phase::Verify => "verify",
            Phase::Cutover => "cutover",
            Phase::References => "references",
            Phase::Cleanup => "cleanup",
            Phase::Report => "report",
        }
    }
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Whether a recorded job may be pruned (`vmshift jobs prune`): it is finished, last
/// changed before `cutoff` (RFC 3339 UTC, compared as text: the journal writes one format),
/// and holds no partial target kept for a resume.
pub fn prunable(status: &str, partial_state: &str, updated_at: &str, cutoff: &str) -> bool {
    matches!(
        status,
        "succeeded" | "failed" | "cancelled" | "refused" | "rolled_back"
    ) && partial_state != "kept"
        && partial_state != "writing"
        && updated_at < cutoff
}

#[cfg(test)]
mod prune_tests {
    use super::prunable;

    #[test]
    fn only_old_finished_jobs_without_a_kept_partial_are_pruned() {
        let (old, cut) = ("2026-01-01T00:00:00.000Z", "2026-02-01T00:00:00.000Z");
        assert!(prunable("succeeded", "final", old, cut));
        assert!(prunable("refused", "none", old, cut));
        assert!(!prunable("failed", "kept", old, cut));
        assert!(!prunable("running", "writing", old, cut));
        assert!(!prunable(
            "succeeded",
            "final",
            "2026-03-01T00:00:00.000Z",
            cut
        ));
    }
}
