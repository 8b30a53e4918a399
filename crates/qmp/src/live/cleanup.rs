//! Undoing what a failed or cancelled run created: jobs, target nodes, target files.

use serde_json::json;

use crate::client::Qmp;

use super::jobs::cancel_and_wait;
use super::state::DiskRun;

/// Cancels the jobs of the disks `idx` (waiting until they are gone), deletes their
/// target nodes and the target files this driver created. Returns what could not be undone.
pub(super) fn undo(qmp: &mut Qmp, runs: &mut [DiskRun], idx: &[usize]) -> Vec<String> {
    let mut problems = Vec::new();
    // Cancel every job first (they may all be copying), then wait for each.
    for &i in idx {
        let r = &runs[i];
        if r.job_started {
            let _ = qmp.call("job-cancel", json!({"id": r.job_id}));
        }
    }
    for &i in idx {
        let r = &mut runs[i];
        if r.job_started {
            match cancel_and_wait(qmp, &r.job_id) {
                Ok(()) => r.job_started = false,
                Err(e) => problems.push(format!("job {}: {e}", r.job_id)),
            }
        }
    }
    for &i in idx {
        let r = &mut runs[i];
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
