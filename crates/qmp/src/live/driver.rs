//! The copy phase: sample the guest's write rate, attach targets, start the mirrors, poll
//! until every job is ready, falling back to write-blocking mode when a job does not
//! converge.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::client::{Event, Qmp};
use crate::policy::{self, CopyMode, Fallback, ModeDecision, Progress};
use vmshift_core::{format_bytes, RateLimit};

use super::cleanup::undo;
use super::error::LiveError;
use super::jobs::cancel_and_wait;
use super::outcome::LimitChange;
use super::plan::{LivePlan, SyncMode};
use super::progress::{ms, DiskProgress, LiveProgress, RateWindow, RATE_WINDOW};
use super::state::DiskRun;
use super::stats::{bitmap_count, blockstats, remove_bitmaps, stats_key};
use super::target::attach_target;

/// The state machine of one run: copy (sample, attach, mirror, converge), then
/// [`Driver::pivot`] or [`Driver::abort`].
pub(super) struct Driver<'a> {
    pub(super) plan: &'a LivePlan,
    pub(super) runs: Vec<DiskRun>,
    pub(super) t0: Instant,
    meter: RateWindow,
    /// The shared limit to follow, if any.
    rate: Option<&'a RateLimit>,
    /// The limit last applied to every job, bytes/s (0 = unlimited).
    applied: u64,
    /// Limits applied while copying.
    pub(super) changes: Vec<LimitChange>,
}

impl<'a> Driver<'a> {
    pub(super) fn new(plan: &'a LivePlan, rate: Option<&'a RateLimit>) -> Driver<'a> {
        // Unique per run: a VM may already run on nodes of an earlier run of this process.
        static RUNS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = RUNS.fetch_add(1, Ordering::Relaxed);
        let tag = format!("vmshift{}r{n}", std::process::id());
        let runs = plan
            .disks
            .iter()
            .enumerate()
            .map(|(i, p)| DiskRun::new(&tag, i, p))
            .collect();
        Driver {
            plan,
            runs,
            t0: Instant::now(),
            meter: RateWindow::new(RATE_WINDOW),
            rate,
            applied: rate.map_or(0, RateLimit::get),
            changes: Vec::new(),
        }
    }

    /// The speed limit jobs should run at now, bytes/s (`None` = unlimited): the shared
    /// limit when following one, else the plan's fixed `bwlimit`.
    fn limit(&self) -> Option<u64> {
        match self.rate {
            Some(r) => Some(r.get()).filter(|&v| v > 0),
            None => self.plan.options.bwlimit,
        }
    }

    /// Applies a changed shared limit to every started job (`block-job-set-speed`,
    /// `speed` in bytes/s, 0 = unlimited). A job that refuses keeps its speed and is retried
    /// at the next poll; the change is recorded once every job runs at it. Returns a note.
    fn apply_limit(&mut self, qmp: &mut Qmp) -> Option<String> {
        let want = self.rate?.get();
        if want == self.applied {
            return None;
        }
        let mut all = true;
        for r in self
            .runs
            .iter_mut()
            .filter(|r| r.job_started && r.speed != want)
        {
            match qmp.call(
                "block-job-set-speed",
                json!({"device": r.job_id, "speed": want}),
            ) {
                Ok(_) => r.speed = want,
                Err(e) => {
                    all = false;
                    tracing::warn!(job = %r.job_id, %e, "cannot change the speed limit");
                }
            }
        }
        if !all {
            return None;
        }
        self.applied = want;
        self.changes.push(LimitChange {
            at_ms: ms(self.t0.elapsed()),
            bytes_per_sec: want,
        });
        // The runner already said the limit changed; this confirms QEMU took it, per mirror.
        let devices: Vec<&str> = self
            .runs
            .iter()
            .filter(|r| r.job_started)
            .map(|r| r.planned.disk.device.as_str())
            .collect();
        Some(if want == 0 {
            format!(
                "no bandwidth limit on the mirrors of {}",
                devices.join(", ")
            )
        } else {
            format!(
                "{}/s applied to the mirrors of {}",
                format_bytes(want),
                devices.join(", ")
            )
        })
    }

    pub(super) fn report(
        &mut self,
        phase: &'static str,
        note: Option<String>,
        cb: &mut dyn FnMut(&LiveProgress),
    ) {
        let total = self.runs.iter().fold(Progress::default(), |a, r| Progress {
            done: a.done + r.progress.done,
            total: a.total + r.progress.total,
        });
        let elapsed = self.t0.elapsed();
        let rate = self.meter.sample(elapsed, total.done);
        let disks: Vec<DiskProgress> = self
            .runs
            .iter()
            .map(|r| DiskProgress {
                device: r.planned.disk.device.clone(),
                progress: r.progress,
                ready: r.ready_at.is_some(),
                waiting_for_ready: r.job_started
                    && r.ready_at.is_none()
                    && r.progress.total > 0
                    && r.progress.done >= r.progress.total,
                copy_mode: r.mode,
            })
            .collect();
        // A disk waiting for ready has no remaining bytes but an unknown time to ready.
        let eta = if disks.iter().any(|d| d.waiting_for_ready) {
            None
        } else {
            policy::eta(total.remaining(), rate)
        };
        cb(&LiveProgress {
            phase,
            elapsed,
            disks,
            total,
            rate,
            eta,
            note,
        });
    }

    pub(super) fn copy(
        &mut self,
        qmp: &mut Qmp,
        cb: &mut dyn FnMut(&LiveProgress),
        cancel: &AtomicBool,
    ) -> Result<(), LiveError> {
        // 1. guest write rate per disk, sampled before anything starts
        self.report("sampling", None, cb);
        self.sample_write_rates(qmp, cancel)?;
        // 2. targets and jobs
        for i in 0..self.runs.len() {
            if cancel.load(Ordering::SeqCst) {
                return Err(LiveError::Cancelled);
            }
            attach_target(qmp, &self.plan.options, &mut self.runs[i])?;
            self.start_job(qmp, i)?;
        }
        // 3. monitor until every job is ready
        loop {
            if cancel.load(Ordering::SeqCst) {
                return Err(LiveError::Cancelled);
            }
            qmp.pump(self.plan.options.poll_interval)?;
            // Give QEMU a moment to emit more events, then look at everything we have.
            for ev in qmp.take_events() {
                self.on_event(&ev)?;
            }
            let jobs = qmp.execute("query-jobs", None)?;
            self.on_jobs(&jobs)?;
            for ev in qmp.take_events() {
                self.on_event(&ev)?;
            }
            let limited = self.apply_limit(qmp);
            let note = match (limited, self.converge(qmp)?) {
                (Some(a), Some(b)) => Some(format!("{a}; {b}")),
                (a, b) => a.or(b),
            };
            self.report("copying", note, cb);
            if self.runs.iter().all(|r| r.ready_at.is_some()) {
                return Ok(());
            }
        }
    }

    /// Measures each disk's guest write rate over `rate_sample` and chooses its copy mode.
    fn sample_write_rates(&mut self, qmp: &mut Qmp, cancel: &AtomicBool) -> Result<(), LiveError> {
        let opts = &self.plan.options;
        // Two views of the guest's writes: the device's wr_bytes counter, and a temporary
        // dirty bitmap on the node, which also sees writes that bypass the device's
        // accounting (e.g. HMP qemu-io, block jobs of others). The larger rate wins.
        let mut bitmaps = Vec::new();
        for r in &self.runs {
            let name = format!("{}-rate", r.job_id);
            let node = r.planned.disk.node_name.clone();
            if qmp
                .call(
                    "block-dirty-bitmap-add",
                    json!({"node": node, "name": name, "persistent": false}),
                )
                .is_ok()
            {
                bitmaps.push((node, name));
            }
        }
        // Sample, then always drop the bitmaps, whatever happened meanwhile.
        let sampled = (|| -> Result<_, LiveError> {
            let before = blockstats(qmp)?;
            let t = Instant::now();
            while t.elapsed() < opts.rate_sample {
                if cancel.load(Ordering::SeqCst) {
                    return Err(LiveError::Cancelled);
                }
                std::thread::sleep(Duration::from_millis(50).min(opts.rate_sample));
            }
            let after = blockstats(qmp)?;
            let elapsed = t.elapsed();
            let nodes = qmp.call("query-named-block-nodes", json!({"flat": true}))?;
            Ok((before, after, elapsed, nodes))
        })();
        remove_bitmaps(qmp, &bitmaps);
        let (before, after, elapsed, nodes) = sampled?;
        let limit = self.limit();
        for r in &mut self.runs {
            let key = stats_key(&r.planned.disk);
            let b = before.get(&key).copied().unwrap_or(0);
            let a = after.get(&key).copied().unwrap_or(b);
            let counted = policy::write_rate(b, a, elapsed);
            let dirtied = bitmap_count(
                &nodes,
                &r.planned.disk.node_name,
                &format!("{}-rate", r.job_id),
            )
            .map(|c| policy::write_rate(0, c, elapsed))
            .unwrap_or(0);
            r.write_rate = counted.max(dirtied);
            r.decision = policy::choose_copy_mode(
                opts.copy_mode,
                r.write_rate,
                limit,
                r.planned.disk.virtual_size,
                self.plan.features.block_job_change,
            );
            r.mode = r.decision.mode;
            if let Some(b) = opts.bound_override {
                r.decision.bound = b;
            }
            r.reason = r.decision.reason.clone();
            if r.mode == CopyMode::WriteBlocking && !self.plan.features.mirror_copy_mode {
                return Err(LiveError::Unsupported {
                    version: self.plan.features.version,
                    missing: vec!["blockdev-mirror copy-mode".into()],
                });
            }
        }
        Ok(())
    }

    /// One convergence check of every job not yet ready: falls back to write-blocking when
    /// the guest's writes rose past what a background copy can follow or a job missed its
    /// bound; fails on the operator's ready timeout. Returns a note on a fallback.
    fn converge(&mut self, qmp: &mut Qmp) -> Result<Option<String>, LiveError> {
        let limit = self.limit();
        let mut note = None;
        // Watch the guest's write rate while background jobs copy: it may rise after the
        // sample taken before the start.
        let watching = self.runs.iter().any(|r| {
            r.ready_at.is_none()
                && r.mode == CopyMode::Background
                && r.decision.fallback != Fallback::Abort
        });
        let stats = if watching { blockstats(qmp).ok() } else { None };
        for i in 0..self.runs.len() {
            let r = &mut self.runs[i];
            if r.ready_at.is_some() {
                continue;
            }
            if let Some(&wr) = stats
                .as_ref()
                .and_then(|st| st.get(&stats_key(&r.planned.disk)))
            {
                let now = Instant::now();
                r.wr_window.push_back((now, wr));
                while r.wr_window.len() > 2
                    && r.wr_window
                        .get(1)
                        .is_some_and(|&(t, _)| now.duration_since(t) >= policy::WATCH_WINDOW)
                {
                    r.wr_window.pop_front();
                }
            }
            if let (Some(&(t0, w0)), Some(&(t1, w1))) = (r.wr_window.front(), r.wr_window.back()) {
                let span = t1.saturating_duration_since(t0);
                let observed = policy::write_rate(w0, w1, span);
                if policy::fall_back_early(&r.decision, observed, span, limit) {
                    let since = r.started.map(|s| s.elapsed()).unwrap_or_default();
                    r.reason = format!(
                        "{}; the guest's writes rose to {observed} B/s during the copy",
                        r.reason
                    );
                    r.wr_window.clear();
                    note = Some(self.fall_back(qmp, i, since)?);
                    continue;
                }
            }
            let r = &self.runs[i];
            let since = r.started.map(|s| s.elapsed()).unwrap_or_default();
            if let Some(limit) = self.plan.options.ready_timeout {
                let waited = r.first_start.map(|s| s.elapsed()).unwrap_or_default();
                if waited > limit {
                    return Err(LiveError::NotConverged {
                        device: r.planned.disk.device.clone(),
                        waited_ms: ms(waited),
                        mode: r.mode,
                    });
                }
            }
            if since > r.decision.bound {
                note = Some(self.fall_back(qmp, i, since)?);
            }
        }
        Ok(note)
    }

    fn start_job(&mut self, qmp: &mut Qmp, i: usize) -> Result<(), LiveError> {
        let limit = self.limit();
        let features = &self.plan.features;
        let r = &mut self.runs[i];
        let mut args = json!({
            "job-id": r.job_id,
            "device": r.planned.disk.node_name,
            "target": r.fmt_node,
            "sync": if r.planned.sync == SyncMode::Top { "top" } else { "full" },
            "auto-finalize": true,
            "auto-dismiss": false,
        });
        if features.mirror_copy_mode {
            args["copy-mode"] = json!(r.mode.as_qmp());
        }
        // A job (re)started after a fallback runs at the limit in force now.
        if let Some(speed) = limit {
            args["speed"] = json!(speed);
        }
        r.speed = limit.unwrap_or(0);
        qmp.call("blockdev-mirror", args)?;
        let now = Instant::now();
        r.job_started = true;
        r.started = Some(now);
        r.first_start.get_or_insert(now);
        tracing::info!(device = %r.planned.disk.device, mode = %r.mode, "mirror started");
        Ok(())
    }

    pub(super) fn on_event(&mut self, ev: &Event) -> Result<(), LiveError> {
        let Some(id) = ev.job_id() else { return Ok(()) };
        let Some(r) = self.runs.iter_mut().find(|r| r.job_id == id) else {
            return Ok(());
        };
        match ev.name.as_str() {
            "BLOCK_JOB_READY" => {
                r.ready_at.get_or_insert(ev.received);
            }
            "BLOCK_JOB_COMPLETED" | "BLOCK_JOB_CANCELLED" => {
                let msg = ev
                    .data
                    .get("error")
                    .and_then(Value::as_str)
                    .map(str::to_owned)
                    .unwrap_or_else(|| {
                        format!("the job ended on its own before the pivot ({})", ev.name)
                    });
                return Err(LiveError::JobFailed {
                    device: r.planned.disk.device.clone(),
                    message: msg,
                });
            }
            "BLOCK_JOB_ERROR" => {
                tracing::warn!(job = id, data = %ev.data, "block job I/O error");
            }
            _ => {}
        }
        Ok(())
    }

    fn on_jobs(&mut self, jobs: &Value) -> Result<(), LiveError> {
        let list = jobs.as_array().map(Vec::as_slice).unwrap_or(&[]);
        for r in &mut self.runs {
            if !r.job_started {
                continue;
            }
            let Some(j) = list
                .iter()
                .find(|j| j.get("id").and_then(Value::as_str) == Some(r.job_id.as_str()))
            else {
                return Err(LiveError::JobFailed {
                    device: r.planned.disk.device.clone(),
                    message:
                        "the job is no longer listed by query-jobs (dismissed by someone else?)"
                            .into(),
                });
            };
            let status = j.get("status").and_then(Value::as_str).unwrap_or("");
            r.progress = Progress {
                done: j
                    .get("current-progress")
                    .and_then(Value::as_u64)
                    .unwrap_or(0),
                total: j.get("total-progress").and_then(Value::as_u64).unwrap_or(0),
            };
            if let Some(e) = j.get("error").and_then(Value::as_str) {
                return Err(LiveError::JobFailed {
                    device: r.planned.disk.device.clone(),
                    message: e.to_owned(),
                });
            }
            match status {
                "ready" => {
                    r.ready_at.get_or_insert_with(Instant::now);
                }
                "concluded" | "null" | "aborting" => {
                    return Err(LiveError::JobFailed {
                        device: r.planned.disk.device.clone(),
                        message: format!("the job ended before the pivot (status {status})"),
                    })
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// The job of disk `i` missed its convergence bound after `since`.
    fn fall_back(&mut self, qmp: &mut Qmp, i: usize, since: Duration) -> Result<String, LiveError> {
        let r = &self.runs[i];
        let device = r.planned.disk.device.clone();
        let size = r.planned.disk.virtual_size;
        let limit = self.limit();
        match r.decision.fallback {
            Fallback::Abort => Err(LiveError::NotConverged {
                device,
                waited_ms: ms(since),
                mode: r.mode,
            }),
            Fallback::SwitchLive => {
                qmp.call(
                    "block-job-change",
                    json!({"id": r.job_id, "type": "mirror", "copy-mode": "write-blocking"}),
                )?;
                let r = &mut self.runs[i];
                let note = format!(
                    "not ready after {} ms in background mode; switched to write-blocking with block-job-change",
                    ms(since)
                );
                r.reason = format!("{}; {note}", r.reason);
                r.mode = CopyMode::WriteBlocking;
                r.decision = ModeDecision {
                    mode: CopyMode::WriteBlocking,
                    reason: r.reason.clone(),
                    bound: policy::convergence_bound(size, 0, limit),
                    fallback: Fallback::Abort,
                };
                r.started = Some(Instant::now());
                Ok(format!("{device}: {note}"))
            }
            Fallback::Restart => {
                let job = r.job_id.clone();
                cancel_and_wait(qmp, &job)?;
                let note = format!(
                    "not ready after {} ms in background mode; QEMU {} cannot switch a running job, \
                     so it was cancelled and restarted in write-blocking mode",
                    ms(since),
                    self.plan.features.version
                );
                {
                    let r = &mut self.runs[i];
                    r.job_started = false;
                    r.reason = format!("{}; {note}", r.reason);
                    r.mode = CopyMode::WriteBlocking;
                    r.restarts += 1;
                    r.progress = Progress::default();
                    r.decision = ModeDecision {
                        mode: CopyMode::WriteBlocking,
                        reason: r.reason.clone(),
                        bound: policy::convergence_bound(size, 0, limit),
                        fallback: Fallback::Abort,
                    };
                }
                self.start_job(qmp, i)?;
                Ok(format!("{device}: {note}"))
            }
        }
    }

    /// Undo everything after a failure before the pivot; returns the error to report.
    pub(super) fn abort(
        &mut self,
        qmp: &mut Qmp,
        cause: LiveError,
        cb: &mut dyn FnMut(&LiveProgress),
    ) -> LiveError {
        tracing::warn!(%cause, "live migration failed before the pivot; cleaning up");
        // The cause is the job's closing line; this note says what happens meanwhile.
        self.report(
            "cleanup",
            Some("ending the mirrors and removing the targets".to_string()),
            cb,
        );
        let all: Vec<usize> = (0..self.runs.len()).collect();
        let problems = undo(qmp, &mut self.runs, &all);
        if problems.is_empty() {
            cause
        } else {
            LiveError::CleanupIncomplete {
                cause: Box::new(cause),
                problems,
            }
        }
    }
}
