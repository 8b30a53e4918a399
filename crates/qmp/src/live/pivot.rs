//! The pivot: complete every job together, measure the pause, detach the old graph.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::client::Qmp;
use crate::policy::CopyMode;

use super::cleanup::undo;
use super::driver::Driver;
use super::error::LiveError;
use super::jobs::CLEANUP_WAIT;
use super::outcome::{DiskOutcome, LiveOutcome};
use super::plan::SyncMode;
use super::progress::{ms, LiveProgress};

/// Pivot time in µs of each disk that pivoted (by index), and the (device, message) of each
/// that did not.
type Completions = (BTreeMap<usize, u64>, Vec<(String, String)>);

impl Driver<'_> {
    pub(super) fn pivot(
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
        self.lift_speed_limits(qmp);
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
        let (pivot_us, failures) = self.await_completions(qmp, &requested)?;
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
            let problems = undo(qmp, &mut self.runs, &rest);
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
        let disks = self.detach_old(qmp, &pivot_us);
        let pivot_ms = disks.iter().map(|d| d.pivot_ms).fold(0.0, f64::max);
        self.report("done", None, cb);
        Ok(LiveOutcome {
            qemu_version: self.plan.features.version,
            disks,
            pivot_ms,
            duration_ms: ms(self.t0.elapsed()),
            bwlimit_changes: self.changes.clone(),
        })
    }

    /// Lifts the speed limit of background jobs before `job-complete`.
    fn lift_speed_limits(&self, qmp: &mut Qmp) {
        // The bandwidth limit is for the bulk copy. At completion a background mirror first
        // copies what is still dirty, throttled by the job speed: lift it so the pivot is
        // quick. Never for write-blocking jobs: there is no backlog, and QEMU 7.2 aborts
        // (`bdrv_co_write_req_prepare: Assertion child->perm & BLK_PERM_WRITE`) when the
        // speed of an active mirror changes while guest writes are in flight and the job
        // completes (reproduced 3 of 5 times under case C25's load).
        let limited = self
            .runs
            .iter()
            .filter(|r| r.speed != 0 && r.mode == CopyMode::Background);
        for r in limited {
            if let Err(e) = qmp.call(
                "block-job-set-speed",
                json!({"device": r.job_id, "speed": 0}),
            ) {
                tracing::warn!(job = %r.job_id, %e, "cannot lift the speed limit before the pivot");
            }
        }
    }

    /// Waits (at most [`CLEANUP_WAIT`]) for the conclusion of each job whose `job-complete`
    /// was accepted at the paired instant. Returns the pivot time in µs of each disk that
    /// pivoted (by index) and the (device, message) of each that did not.
    fn await_completions(
        &self,
        qmp: &mut Qmp,
        requested: &[(usize, Instant)],
    ) -> Result<Completions, LiveError> {
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
        Ok((pivot_us, failures))
    }

    /// Deletes the old nodes of every pivoted disk (and of its chain for full syncs) so QEMU
    /// closes the sources, deletes a source when asked and it is closed, and describes each
    /// disk's outcome.
    fn detach_old(&self, qmp: &mut Qmp, pivot_us: &BTreeMap<usize, u64>) -> Vec<DiskOutcome> {
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
                warnings: r.attr_warnings.clone(),
            });
        }
        disks
    }
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
