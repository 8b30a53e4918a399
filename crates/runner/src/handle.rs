//! A started job: its event stream, its controls (cancel, bandwidth) and its outcome.

use crate::event::{JobEvent, PhaseState, Progress};
use crate::Result;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use vmshift_copy::Counters;
use vmshift_core::report::Report;
use vmshift_core::{Phase, RateLimit};

/// Exit status of a job as the CLI maps it: 0 succeeded, 1 failed after starting (the
/// source intact, no target under its final name), 2 refused (nothing changed).
pub type ExitCode = i32;

/// How a job ended.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// The job id (empty when the request was refused before a job existed).
    pub job_id: String,
    /// 0 succeeded, 1 failed or cancelled after starting, 2 refused.
    pub code: ExitCode,
    /// The job's report, when it wrote one (the last one, when it wrote several).
    pub report: Option<Report>,
    /// Every report the job wrote, in order (the demo writes two: offline, then live).
    pub reports: Vec<Report>,
    /// Where the report was written.
    pub report_path: Option<PathBuf>,
}

/// The levers of a running job, cloneable and usable from any thread (a signal handler,
/// an HTTP request): cancel it, change its bandwidth limit.
#[derive(Debug, Clone, Default)]
pub struct JobControl {
    pub(crate) cancel: Arc<AtomicBool>,
    interrupted: Arc<AtomicBool>,
    pub(crate) rate: Arc<RateLimit>,
}

impl JobControl {
    /// Asks the job to stop: offline at the next chunk boundary, live at the next poll
    /// (before the pivot; a pivot in progress is finished, not undone).
    pub fn cancel(&self) {
        self.cancel.store(true, Ordering::Relaxed);
    }

    /// Interrupts the job (Ctrl-C, SIGTERM): it stops like [`JobControl::cancel`], but an
    /// offline job keeps its journaled partial target so `resume` continues from the last
    /// checkpoint (a cancel removes it unless asked to keep it).
    pub fn interrupt(&self) {
        self.interrupted.store(true, Ordering::Relaxed);
        self.cancel();
    }

    /// Whether [`JobControl::interrupt`] was called.
    pub fn is_interrupted(&self) -> bool {
        self.interrupted.load(Ordering::Relaxed)
    }

    /// Whether [`JobControl::cancel`] or [`JobControl::interrupt`] was called.
    pub fn is_cancelled(&self) -> bool {
        self.cancel.load(Ordering::Relaxed)
    }

    /// Changes the bandwidth limit to `bytes_per_sec` (0 lifts it): the offline engine's
    /// throttle at its next chunk, each live mirror through `block-job-set-speed` at the
    /// driver's next poll; both within a second.
    pub fn set_bwlimit(&self, bytes_per_sec: u64) {
        self.rate.set(bytes_per_sec);
    }

    /// The current bandwidth limit, bytes/s (0 = unlimited).
    pub fn bwlimit(&self) -> u64 {
        self.rate.get()
    }
}

/// A job running on its own thread. Read its events with [`JobHandle::events`] (they end
/// when the job does), steer it with [`JobHandle::control`], collect it with
/// [`JobHandle::wait`]. Dropping the handle without waiting lets the job run to its end.
pub struct JobHandle {
    job_id: String,
    events: Receiver<JobEvent>,
    control: JobControl,
    thread: std::thread::JoinHandle<Result<Outcome>>,
}

impl JobHandle {
    /// The job id (for a new job, the one its journal and report will carry).
    pub fn job_id(&self) -> &str {
        &self.job_id
    }

    /// The job's events in order; the iterator ends when the job has finished.
    pub fn events(&self) -> impl Iterator<Item = JobEvent> + '_ {
        self.events.iter()
    }

    /// The job's controls.
    pub fn control(&self) -> JobControl {
        self.control.clone()
    }

    /// Asks the job to stop (see [`JobControl::cancel`]).
    pub fn cancel(&self) {
        self.control.cancel();
    }

    /// Changes the bandwidth limit, bytes/s (see [`JobControl::set_bwlimit`]).
    pub fn set_bwlimit(&self, bytes_per_sec: u64) {
        self.control.set_bwlimit(bytes_per_sec);
    }

    /// Waits for the job to end. Events not read yet are dropped.
    ///
    /// # Errors
    /// A [`crate::RunnerError`] when the runner could not do its own bookkeeping (journal,
    /// state directory, QEMU unreachable); refusals and failed jobs are an `Outcome`.
    pub fn wait(self) -> Result<Outcome> {
        drop(self.events);
        self.thread
            .join()
            .unwrap_or_else(|_| Err(crate::RunnerError::msg("the job's thread panicked")))
    }
}

/// The last report a job emitted, and where it was written.
type LastReport = Arc<Mutex<Vec<(Report, Option<PathBuf>)>>>;

/// Sends a job's events to its handle and remembers its report.
#[derive(Clone)]
pub(crate) struct Emitter {
    tx: Sender<JobEvent>,
    last_report: LastReport,
    /// The latest progress sample, for `vmshift status` in another process.
    last_progress: Arc<Mutex<Option<Progress>>>,
}

impl Emitter {
    /// Sends `e` (a front end that stopped listening loses nothing but the event).
    pub fn emit(&self, e: JobEvent) {
        if let JobEvent::Report { report, path } = &e {
            self.last_report
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(((**report).clone(), path.clone()));
        }
        if let JobEvent::Progress(p) = &e {
            *self.last_progress.lock().unwrap_or_else(|p| p.into_inner()) = Some(p.clone());
        }
        let _ = self.tx.send(e);
    }

    /// The last report job `job_id` emitted (a child job's, for its parent).
    #[cfg_attr(not(feature = "libvirt"), allow(dead_code))]
    pub fn report_of(&self, job_id: &str) -> Option<Report> {
        self.last_report
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .rev()
            .find(|(r, _)| r.job_id == job_id)
            .map(|(r, _)| r.clone())
    }

    /// Takes the latest progress sample (`None` when there was none since the last take).
    pub fn take_progress(&self) -> Option<Progress> {
        self.last_progress
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
    }

    /// A line for people.
    pub fn say(&self, line: impl Into<String>) {
        self.emit(JobEvent::Log { line: line.into() });
    }

    /// A phase started.
    pub fn phase(&self, phase: Phase) {
        self.emit(JobEvent::Phase {
            phase,
            state: PhaseState::Started,
            duration_ms: None,
        });
    }

    /// A phase ended after `duration_ms`.
    pub fn phase_ended(&self, phase: Phase, duration_ms: u64) {
        self.emit(JobEvent::Phase {
            phase,
            state: PhaseState::Ended,
            duration_ms: Some(duration_ms),
        });
    }

    /// A note (also a human line).
    pub fn note(&self, message: impl Into<String>) {
        self.emit(JobEvent::Note {
            message: message.into(),
        });
    }

    /// The report, written at `path`.
    pub fn report(&self, report: &Report, path: &std::path::Path) {
        self.emit(JobEvent::Report {
            report: Box::new(report.clone()),
            path: Some(path.to_path_buf()),
        });
    }

    /// Emits progress of `counters` every 250 ms until the guard is dropped (then once more).
    pub fn progress(&self, label: &'static str, counters: Arc<Counters>) -> ProgressGuard {
        let stop = Arc::new(AtomicBool::new(false));
        let (s, em) = (stop.clone(), self.clone());
        let handle = std::thread::spawn(move || {
            let start = Instant::now();
            // The rate counts only bytes this phase moved: a phase that starts with the
            // counters full (verification done during the copy) shows none.
            // A new pass (its total set) starts counting from where it starts: a resumed
            // copy begins with its reused chunks done.
            let mut base = u64::MAX;
            let mut pass_total = None;
            loop {
                let stopping = s.load(Ordering::Relaxed);
                let total = counters.total.load(Ordering::SeqCst);
                let done = counters.done.load(Ordering::SeqCst).min(total);
                if pass_total != Some(total) {
                    pass_total = Some(total);
                    base = done;
                }
                base = base.min(done);
                let secs = start.elapsed().as_secs_f64().max(1e-3);
                let rate = vmshift_core::rate_bytes_per_sec(done - base, secs);
                em.emit(JobEvent::Progress(Progress {
                    phase: label.into(),
                    done_bytes: done,
                    total_bytes: total,
                    rate_bytes_per_sec: rate,
                    // No rate yet, no estimate (not 0).
                    eta_ms: ((total - done) * 1000).checked_div(rate),
                    disks: Vec::new(),
                }));
                if stopping {
                    return;
                }
                // Woken early by the guard's drop, so a phase never waits out the tick.
                std::thread::park_timeout(Duration::from_millis(250));
            }
        });
        ProgressGuard {
            stop,
            handle: Some(handle),
        }
    }
}

/// Stops a progress reporter when dropped (after one final sample).
pub(crate) struct ProgressGuard {
    stop: Arc<AtomicBool>,
    handle: Option<std::thread::JoinHandle<()>>,
}

impl Drop for ProgressGuard {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            h.thread().unpark();
            let _ = h.join();
        }
    }
}

/// What a job body gets: where to send events, and its controls.
pub(crate) struct JobCtx {
    /// The job id.
    pub job_id: String,
    /// Event sink.
    pub em: Emitter,
    /// Cancel flag and bandwidth limit.
    pub control: JobControl,
    /// The job that started this one (a domain job's per-disk offline jobs), if any.
    pub parent: Option<String>,
}

impl JobCtx {
    /// The context of a job this one starts (a live rollback's move back): same events and
    /// controls, its own id.
    pub fn child(&self, job_id: String) -> JobCtx {
        JobCtx {
            parent: Some(self.job_id.clone()),
            ..self.next(job_id)
        }
    }

    /// Another job of its own sharing this one's events and controls (the demo's parts).
    pub fn next(&self, job_id: String) -> JobCtx {
        JobCtx {
            job_id,
            em: self.em.clone(),
            control: self.control.clone(),
            parent: None,
        }
    }
}

/// Runs `body` on a thread of its own and returns its handle.
///
/// # Errors
/// The thread cannot be started.
pub(crate) fn spawn(
    job_id: String,
    control: JobControl,
    body: impl FnOnce(&JobCtx) -> Result<ExitCode> + Send + 'static,
) -> Result<JobHandle> {
    let (tx, rx) = std::sync::mpsc::channel();
    let em = Emitter {
        tx,
        last_report: Arc::default(),
        last_progress: Arc::default(),
    };
    let ctx = JobCtx {
        job_id: job_id.clone(),
        em,
        control: control.clone(),
        parent: None,
    };
    let thread = std::thread::Builder::new()
        .name(format!("vmshift-job-{}", &job_id[..job_id.len().min(8)]))
        .spawn(move || {
            let code = body(&ctx)?;
            let all =
                std::mem::take(&mut *ctx.em.last_report.lock().unwrap_or_else(|p| p.into_inner()));
            let (report, report_path) = match all.last() {
                Some((r, p)) => (Some(r.clone()), p.clone()),
                None => (None, None),
            };
            let reports = all.into_iter().map(|(r, _)| r).collect();
            Ok(Outcome {
                job_id: report
                    .as_ref()
                    .map_or_else(|| ctx.job_id.clone(), |r| r.job_id.clone()),
                code,
                report,
                reports,
                report_path,
            })
        })
        .map_err(|source| crate::RunnerError::Io {
            message: "cannot start a job thread".into(),
            source,
        })?;
    Ok(JobHandle {
        job_id,
        events: rx,
        control,
        thread,
    })
}
