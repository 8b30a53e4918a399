//! Per-disk state of a running migration: what was created in QEMU and on disk (so that
//! cleanup undoes exactly that), the copy mode and the job's progress.

use std::collections::VecDeque;
use std::time::Instant;

use crate::policy::{self, CopyMode, CopyModeRequest, ModeDecision, Progress};

use super::plan::PlannedDisk;

/// Per-disk state of a running migration.
#[derive(Debug)]
pub(super) struct DiskRun {
    pub(super) planned: PlannedDisk,
    pub(super) file_node: String,
    pub(super) fmt_node: String,
    pub(super) job_id: String,
    pub(super) created_file: bool,
    /// What of the source's owner, group, mode and labels the target could not take.
    pub(super) attr_warnings: Vec<String>,
    pub(super) file_node_added: bool,
    pub(super) fmt_node_added: bool,
    pub(super) job_started: bool,
    pub(super) decision: ModeDecision,
    pub(super) mode: CopyMode,
    pub(super) reason: String,
    pub(super) write_rate: u64,
    pub(super) first_start: Option<Instant>,
    pub(super) started: Option<Instant>,
    pub(super) ready_at: Option<Instant>,
    pub(super) restarts: u32,
    pub(super) progress: Progress,
    /// The speed limit the job runs at, bytes/s (0 = unlimited).
    pub(super) speed: u64,
    /// `wr_bytes` samples taken during a background copy, oldest first.
    pub(super) wr_window: VecDeque<(Instant, u64)>,
}

impl DiskRun {
    /// Disk `i` of the run tagged `tag`: node and job names derive from both, so they never
    /// collide with the VM's own nodes or an earlier run's.
    pub(super) fn new(tag: &str, i: usize, planned: &PlannedDisk) -> DiskRun {
        DiskRun {
            planned: planned.clone(),
            file_node: format!("{tag}-{i}-file"),
            fmt_node: format!("{tag}-{i}"),
            job_id: format!("{tag}-{i}-job"),
            created_file: false,
            attr_warnings: Vec::new(),
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
            speed: 0,
            wr_window: VecDeque::new(),
        }
    }
}
