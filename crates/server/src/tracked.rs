//! Jobs this service runs: each [`vmshift_runner::JobHandle`]'s events are pumped by a
//! thread of their own into a replay history and a broadcast channel (the SSE streams),
//! the metrics and the notification observers. Blocking job I/O never runs on the async
//! executor: jobs run on the runner's threads, pumps on theirs.

use crate::metrics::Metrics;
use serde_json::Value;
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::broadcast;
use vmshift_runner::{JobControl, JobEvent, JobHandle};

/// Something told about every event of every job the service runs (the notifier).
pub type Observer = Arc<dyn Fn(&str, &JobEvent) + Send + Sync>;

/// The most throughput samples kept per job (older ones are thinned out, not dropped).
pub const MAX_SAMPLES: usize = 512;
/// How many finished jobs keep their history in memory.
const KEEP_FINISHED: usize = 64;

/// One throughput sample, for the dashboard's chart.
#[derive(Debug, Clone, Copy, serde::Serialize, utoipa::ToSchema)]
pub struct Sample {
    /// Since the service started following the job, ms.
    pub t_ms: u64,
    /// Guest bytes done, bytes.
    pub done_bytes: u64,
    /// Rate, bytes/s.
    pub rate_bytes_per_sec: u64,
}

struct Inner {
    history: Vec<Arc<Value>>,
    samples: VecDeque<Sample>,
    /// Keep every n-th sample (doubles each time the buffer fills).
    stride: u64,
    seen: u64,
    tx: Option<broadcast::Sender<Arc<Value>>>,
    exit_code: Option<i32>,
    /// Lines for people (plans, summaries, refusals), the last [`MAX_LINES`].
    lines: VecDeque<String>,
}

/// How many lines for people are kept per job.
pub const MAX_LINES: usize = 200;

/// A job the service runs (or ran).
pub struct Tracked {
    /// The job id.
    pub id: String,
    /// What started it: `start`, `resume`, `rollback`, `cancel`, `set`.
    pub action: &'static str,
    control: JobControl,
    started: Instant,
    inner: Mutex<Inner>,
}

impl Tracked {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The events so far (each run of progress samples as its latest) and a receiver for the rest;
    /// `None` for the receiver once the job ended.
    pub fn subscribe(&self) -> (Vec<Arc<Value>>, Option<broadcast::Receiver<Arc<Value>>>) {
        let g = self.lock();
        (g.history.clone(), g.tx.as_ref().map(|t| t.subscribe()))
    }

    /// The throughput samples so far.
    pub fn samples(&self) -> Vec<Sample> {
        self.lock().samples.iter().copied().collect()
    }

    /// The job's exit code once it ended (0 succeeded, 1 failed, 2 refused).
    pub fn exit_code(&self) -> Option<i32> {
        self.lock().exit_code
    }

    /// The job's lines for people so far (what the CLI prints on stderr).
    pub fn lines(&self) -> Vec<String> {
        self.lock().lines.iter().cloned().collect()
    }

    /// Waits up to `timeout` for the job to end; its exit code if it did.
    pub fn wait_for(&self, timeout: Duration) -> Option<i32> {
        let until = Instant::now() + timeout;
        loop {
            if let Some(c) = self.exit_code() {
                return Some(c);
            }
            if Instant::now() >= until {
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The job's controls.
    pub fn control(&self) -> &JobControl {
        &self.control
    }

    fn push(&self, event: &JobEvent) {
        let Ok(v) = serde_json::to_value(event) else {
            return;
        };
        let v = Arc::new(v);
        let mut g = self.lock();
        // The chart is the copy's throughput: verification passes are not sampled.
        let copy = match event {
            JobEvent::Progress(p) if p.phase == "copy" => Some(p),
            _ => None,
        };
        if let Some(p) = copy {
            g.seen += 1;
            if g.seen.is_multiple_of(g.stride) {
                if g.samples.len() >= MAX_SAMPLES {
                    let kept: VecDeque<Sample> = g.samples.iter().step_by(2).copied().collect();
                    g.samples = kept;
                    g.stride *= 2;
                }
                let t_ms = u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX);
                g.samples.push_back(Sample {
                    t_ms,
                    done_bytes: p.done_bytes,
                    rate_bytes_per_sec: p.rate_bytes_per_sec,
                });
            }
        }
        // A run of progress samples is kept as its latest one: the history stays in order
        // and small, and a late subscriber sees where each phase stood.
        let replace = matches!(event, JobEvent::Progress(_))
            && g.history.last().is_some_and(|l| l["event"] == "progress");
        if replace {
            if let Some(last) = g.history.last_mut() {
                *last = v.clone();
            }
        } else {
            g.history.push(v.clone());
        }
        if let Some(tx) = &g.tx {
            let _ = tx.send(v);
        }
    }

    fn finish(&self, code: i32) {
        let mut g = self.lock();
        g.exit_code = Some(code);
        g.tx = None;
    }
}

/// Every job the service runs.
pub struct Tracker {
    jobs: Mutex<HashMap<String, Arc<Tracked>>>,
    order: Mutex<VecDeque<String>>,
    metrics: Arc<Metrics>,
    observers: Vec<Observer>,
}

impl Tracker {
    /// A tracker feeding `metrics` and `observers`.
    pub fn new(metrics: Arc<Metrics>, observers: Vec<Observer>) -> Tracker {
        Tracker {
            jobs: Mutex::new(HashMap::new()),
            order: Mutex::new(VecDeque::new()),
            metrics,
            observers,
        }
    }

    /// Follows `handle` on a thread of its own until its job ends.
    pub fn track(self: &Arc<Self>, handle: JobHandle, action: &'static str) -> Arc<Tracked> {
        let (tx, _) = broadcast::channel(1024);
        let t = Arc::new(Tracked {
            id: handle.job_id().to_string(),
            action,
            control: handle.control(),
            started: Instant::now(),
            inner: Mutex::new(Inner {
                history: Vec::new(),
                samples: VecDeque::new(),
                stride: 1,
                seen: 0,
                tx: Some(tx),
                exit_code: None,
                lines: VecDeque::new(),
            }),
        });
        // Commands on a job (cancel, set) are followed too, but do not replace the job's
        // own entry while it runs here.
        let replace = self.get(&t.id).is_none_or(|old| old.exit_code().is_some());
        if replace && !t.id.is_empty() {
            self.insert(t.clone());
        }
        let me = self.clone();
        let tracked = t.clone();
        let spawned = std::thread::Builder::new()
            .name(format!("pump-{}", short(&tracked.id)))
            .spawn(move || me.pump(handle, &tracked));
        if let Err(e) = spawned {
            tracing::error!("cannot follow job {}: {e}", t.id);
        }
        t
    }

    fn pump(&self, handle: JobHandle, t: &Tracked) {
        let mut id = t.id.clone();
        for event in handle.events() {
            if let JobEvent::Job { job_id, .. } = &event {
                id = job_id.clone();
            }
            if let JobEvent::Log { line } = &event {
                let mut g = t.lock();
                if g.lines.len() >= MAX_LINES {
                    g.lines.pop_front();
                }
                g.lines.push_back(line.clone());
                continue;
            }
            self.metrics.observe(&id, &event);
            for o in &self.observers {
                o(&id, &event);
            }
            t.push(&event);
        }
        let code = match handle.wait() {
            Ok(o) => o.code,
            Err(e) => {
                let ev = JobEvent::Warning {
                    message: e.to_string(),
                };
                t.push(&ev);
                1
            }
        };
        self.metrics.job_ended(&id);
        t.finish(code);
    }

    fn insert(&self, t: Arc<Tracked>) {
        let mut jobs = self.jobs.lock().unwrap_or_else(|e| e.into_inner());
        let mut order = self.order.lock().unwrap_or_else(|e| e.into_inner());
        order.retain(|i| *i != t.id);
        order.push_back(t.id.clone());
        jobs.insert(t.id.clone(), t);
        // Forget the oldest finished jobs beyond the bound (never a running one).
        while order.len() > KEEP_FINISHED {
            let Some(pos) = order
                .iter()
                .position(|i| jobs.get(i).is_none_or(|j| j.exit_code().is_some()))
            else {
                break;
            };
            if let Some(i) = order.remove(pos) {
                jobs.remove(&i);
            }
        }
    }

    /// A job the service runs or ran recently, by full id.
    pub fn get(&self, id: &str) -> Option<Arc<Tracked>> {
        self.jobs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(id)
            .cloned()
    }

    /// Interrupts every running job (they keep what a resume needs) and waits up to
    /// `timeout` for them to stop. Returns how many were still running then.
    pub fn interrupt_all(&self, timeout: Duration) -> usize {
        let running: Vec<Arc<Tracked>> = self
            .jobs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .filter(|t| t.exit_code().is_none())
            .cloned()
            .collect();
        for t in &running {
            t.control.interrupt();
        }
        let until = Instant::now() + timeout;
        loop {
            let left = running.iter().filter(|t| t.exit_code().is_none()).count();
            if left == 0 || Instant::now() >= until {
                return left;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

fn short(id: &str) -> &str {
    id.get(..8).unwrap_or(id)
}
