//! The [`Notifier`]: turns a front end's job events into deliveries, queues them (bounded,
//! never blocking), and delivers them on one thread of its own, in order per target, with
//! retries, each recorded in the journal.
//!
//! Threads and locks: `observe` (the front end's thread) only takes the queue's lock, which
//! nobody holds across I/O. The delivery thread makes attempts without any lock, and
//! records them under the book's lock (the journal connection and the deliveries not
//! finished yet). `flush` waits, then abandons what is left under those same locks, so a
//! delivery ends exactly once: `delivered`, `failed` or `abandoned`.
//!
//! One thread serves every target: a hook that hangs holds the others up to 10 s per
//! attempt (the request timeout), never a job.

use crate::body::{body, Summary};
use crate::config::NotifyConfig;
use crate::deliver::{self, Attempt, AttemptResult, Target};
use crate::event::{EventKind, StreamMap};
use crate::retry;
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use vmshift_journal::{DeliveryUpdate, Journal, NewDelivery};
use vmshift_runner::JobEvent;

/// The bound `vmshift` (the CLI) waits at exit for deliveries still queued or retrying, s.
pub const DEFAULT_FLUSH_TIMEOUT: Duration = Duration::from_secs(10);

/// Deliveries queued or retrying at most; more are dropped (with a warning).
pub const MAX_UNFINISHED: usize = 1024;

/// Sends a job's notifications. Start one per process with [`Notifier::start`], call
/// [`Notifier::observe`] for every event of every job, [`Notifier::flush`] before exit.
/// `Send + Sync`: share it (`Arc`) between the threads that follow jobs.
pub struct Notifier {
    inner: Option<Arc<Inner>>,
    streams: Mutex<HashMap<String, Stream>>,
}

/// One job stream as the notifier follows it.
#[derive(Default)]
struct Stream {
    map: StreamMap,
    summaries: HashMap<String, Summary>,
}

struct Inner {
    targets: Vec<(Target, Vec<EventKind>)>,
    retry_for: Duration,
    queue: Mutex<VecDeque<Delivery>>,
    wake: Condvar,
    book: Mutex<Book>,
    /// Deliveries accepted and not yet delivered, failed or abandoned.
    unfinished: AtomicUsize,
    /// Deliveries queued before a flush gave up on them carry an older epoch.
    epoch: AtomicU64,
    /// One-line notes on deliveries that did not go through, for the front end.
    problems: Mutex<Vec<String>>,
}

/// A notification for one target.
struct Delivery {
    id: String,
    job_id: String,
    target: usize,
    event: EventKind,
    body: Arc<Vec<u8>>,
    queued: Instant,
    epoch: u64,
}

/// A delivery the thread is working on.
struct Pending {
    d: Delivery,
    next_at: Instant,
}

/// What is recorded: the journal, and the deliveries not finished yet.
struct Book {
    journal: JournalState,
    open: HashMap<String, Open>,
}

/// A delivery not finished yet, as last recorded.
struct Open {
    job_id: String,
    target: String,
    event: EventKind,
    update: DeliveryUpdate,
}

enum JournalState {
    NotOpened,
    Open(Journal),
    Unavailable,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Notifier {
    /// Starts the notifier for `config`: one delivery thread when anything is configured
    /// (nothing at all otherwise: `observe` then does nothing). Webhooks without a secret
    /// (a config not loaded through [`NotifyConfig::from_config_file`]) are skipped with a
    /// warning. The journal (`vmshift_runner::journal::open_journal`) is opened by the
    /// delivery thread when it records its first delivery; when it cannot be opened,
    /// deliveries go on unrecorded.
    pub fn start(config: NotifyConfig) -> Notifier {
        let mut targets = Vec::new();
        for h in config.webhooks {
            let name = h
                .name
                .clone()
                .or_else(|| crate::config::url_host(&h.url))
                .unwrap_or_else(|| h.url.clone());
            match h.secret {
                Some(s) => targets.push((
                    Target::Webhook {
                        name,
                        url: h.url,
                        secret: s.0.into_bytes(),
                    },
                    h.events,
                )),
                None => tracing::warn!("webhook {name}: no secret loaded: skipped"),
            }
        }
        if let Some(argv) = config.command.filter(|a| !a.is_empty()) {
            targets.push((Target::Command { argv }, config.command_events));
        }
        let streams = Mutex::default();
        if targets.is_empty() {
            return Notifier {
                inner: None,
                streams,
            };
        }
        let inner = Arc::new(Inner {
            targets,
            retry_for: Duration::from_secs(config.retry_for_secs),
            queue: Mutex::default(),
            wake: Condvar::new(),
            book: Mutex::new(Book {
                journal: JournalState::NotOpened,
                open: HashMap::new(),
            }),
            unfinished: AtomicUsize::new(0),
            epoch: AtomicU64::new(0),
            problems: Mutex::default(),
        });
        let worker = Arc::downgrade(&inner);
        let spawned = std::thread::Builder::new()
            .name("vmshift-notify".into())
            .spawn(move || deliver_loop(&worker));
        if let Err(e) = spawned {
            tracing::warn!("cannot start the notification thread: {e}; nothing will be sent");
            return Notifier {
                inner: None,
                streams,
            };
        }
        Notifier {
            inner: Some(inner),
            streams,
        }
    }

    /// Whether anything is configured.
    pub fn is_active(&self) -> bool {
        self.inner.is_some()
    }

    /// Looks at `event` of the job a front end knows as `job_id` (call it for every event
    /// of the job's stream, in order) and queues the notifications it gives (see
    /// [`crate::event`] for which). Never blocks on delivery: it serializes the body and
    /// appends it to the queue; when [`MAX_UNFINISHED`] deliveries are already waiting,
    /// the new ones are dropped with a warning.
    pub fn observe(&self, job_id: &str, event: &JobEvent) {
        let Some(inner) = &self.inner else {
            return;
        };
        let (job, kind, summary) = {
            let mut streams = lock(&self.streams);
            let stream = streams.entry(job_id.to_string()).or_default();
            let Some((job, kind)) = stream.map.map(job_id, event) else {
                if matches!(event, JobEvent::Report { .. }) && stream.map.is_idle() {
                    streams.remove(job_id);
                }
                return;
            };
            if let JobEvent::Report { report, .. } = event {
                stream
                    .summaries
                    .insert(report.job_id.clone(), Summary::of(report));
            }
            let summary = stream.summaries.get(&job).cloned();
            if matches!(event, JobEvent::Report { .. }) && stream.map.is_idle() {
                streams.remove(job_id);
            }
            (job, kind, summary)
        };
        let wanted: Vec<usize> = (0..inner.targets.len())
            .filter(|&i| inner.targets[i].1.contains(&kind))
            .collect();
        if wanted.is_empty() {
            return;
        }
        let sent_at = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
        let bytes = Arc::new(body(kind, &job, &sent_at, event, summary.as_ref()));
        let epoch = inner.epoch.load(Ordering::SeqCst);
        let mut queue = lock(&inner.queue);
        for target in wanted {
            if inner.unfinished.load(Ordering::SeqCst) >= MAX_UNFINISHED {
                inner.note(&format!(
                    "{}: {kind} of job {job} dropped: {MAX_UNFINISHED} notifications are already waiting",
                    inner.targets[target].0.name()
                ));
                continue;
            }
            inner.unfinished.fetch_add(1, Ordering::SeqCst);
            queue.push_back(Delivery {
                id: uuid::Uuid::now_v7().to_string(),
                job_id: job.clone(),
                target,
                event: kind,
                body: bytes.clone(),
                queued: Instant::now(),
                epoch,
            });
        }
        drop(queue);
        inner.wake.notify_one();
    }

    /// Waits up to `timeout` for every queued or retrying delivery to end (`delivered` or
    /// `failed`); what is still unfinished then is recorded `abandoned` and not tried
    /// again (an attempt in progress is left to end on its own; its result is not
    /// recorded). Returns one line for each delivery since the last flush that did not go
    /// through (failed, abandoned, dropped). The notifier stays usable.
    pub fn flush(&self, timeout: Duration) -> Vec<String> {
        let Some(inner) = &self.inner else {
            return Vec::new();
        };
        let deadline = Instant::now() + timeout;
        while inner.unfinished.load(Ordering::SeqCst) > 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        if inner.unfinished.load(Ordering::SeqCst) > 0 {
            inner.abandon(&format!(
                "not delivered within the {} s vmshift waited before it stopped",
                timeout.as_secs()
            ));
            // A command still running would outlive the front end.
            deliver::kill_running_commands();
        }
        std::mem::take(&mut *lock(&inner.problems))
    }
}

impl Drop for Notifier {
    /// Records what is still unfinished `abandoned` (without waiting: call
    /// [`Notifier::flush`] first to give it time); the delivery thread then ends.
    fn drop(&mut self) {
        if let Some(inner) = &self.inner {
            if inner.unfinished.load(Ordering::SeqCst) > 0 {
                inner.abandon("not delivered before the notifier stopped");
            }
            inner.wake.notify_all();
        }
    }
}

impl Inner {
    /// Records every unfinished delivery `abandoned`, `why` (one line), and notes them once
    /// per target and job (a dead webhook would otherwise repeat one line per event).
    fn abandon(&self, why: &str) {
        self.epoch.fetch_add(1, Ordering::SeqCst);
        let mut gone = Abandoned::default();
        let mut book = lock(&self.book);
        let open: Vec<(String, Open)> = book.open.drain().collect();
        for (id, o) in open {
            let last = o.update.last_error.clone();
            let update = DeliveryUpdate {
                state: "abandoned".into(),
                last_error: Some(match &last {
                    Some(l) => format!("{why} (last attempt: {l})"),
                    None => why.to_string(),
                }),
                ..o.update
            };
            gone.add(
                &o.target,
                &o.job_id,
                &o.event.to_string(),
                update.attempts,
                last,
            );
            book.write(|j| j.update_delivery(&id, &update));
            self.unfinished.fetch_sub(1, Ordering::SeqCst);
        }
        let queued: Vec<Delivery> = lock(&self.queue).drain(..).collect();
        for d in queued {
            let update = DeliveryUpdate {
                attempts: 0,
                state: "abandoned".into(),
                last_status: None,
                last_error: Some(why.to_string()),
            };
            let target = self.targets[d.target].0.name().to_string();
            gone.add(&target, &d.job_id, &d.event.to_string(), 0, None);
            book.record(&d, &target);
            book.write(|j| j.update_delivery(&d.id, &update));
            self.unfinished.fetch_sub(1, Ordering::SeqCst);
        }
        drop(book);
        for line in gone.lines(why) {
            self.note(&line);
        }
    }

    /// Keeps a one-line problem for the front end (and logs it).
    fn note(&self, what: &str) {
        tracing::warn!("notification {what}");
        lock(&self.problems).push(format!("notification {what}"));
    }
}

impl Book {
    fn journal(&mut self) -> Option<&Journal> {
        if matches!(self.journal, JournalState::NotOpened) {
            self.journal = match vmshift_runner::journal::open_journal() {
                Ok(j) => JournalState::Open(j),
                Err(e) => {
                    tracing::warn!("notifications are not recorded: {e}");
                    JournalState::Unavailable
                }
            };
        }
        match &self.journal {
            JournalState::Open(j) => Some(j),
            _ => None,
        }
    }

    fn write(&mut self, f: impl FnOnce(&Journal) -> Result<(), vmshift_journal::JournalError>) {
        if let Some(j) = self.journal() {
            if let Err(e) = f(j) {
                tracing::warn!("cannot record a notification: {e}");
            }
        }
    }

    fn record(&mut self, d: &Delivery, target: &str) {
        let new = NewDelivery {
            id: d.id.clone(),
            job_id: d.job_id.clone(),
            target: target.to_string(),
            event: d.event.as_str().to_string(),
        };
        self.write(|j| j.record_delivery(&new));
    }
}

/// The delivery thread: takes queued deliveries, attempts the due head of each target's
/// lane, schedules retries. Ends when the notifier is dropped and nothing is left.
fn deliver_loop(weak: &std::sync::Weak<Inner>) {
    let agent = deliver::agent();
    let mut lanes: Vec<VecDeque<Pending>> = Vec::new();
    loop {
        let Some(inner) = weak.upgrade() else {
            // The notifier is gone (and recorded what was left abandoned).
            return;
        };
        if lanes.len() < inner.targets.len() {
            lanes.resize_with(inner.targets.len(), VecDeque::new);
        }
        let now = Instant::now();
        let next_due = lanes
            .iter()
            .filter_map(|l| l.front().map(|p| p.next_at))
            .min();
        let taken: Vec<Delivery> = {
            let mut q = lock(&inner.queue);
            if q.is_empty() && next_due.is_none_or(|t| t > now) {
                // Sleep until something is queued or a retry is due; wake at least every
                // second to notice a dropped notifier.
                let wait = next_due
                    .map_or(Duration::from_secs(1), |t| t - now)
                    .min(Duration::from_secs(1));
                q = inner
                    .wake
                    .wait_timeout(q, wait)
                    .unwrap_or_else(|p| p.into_inner())
                    .0;
            }
            q.drain(..).collect()
        };
        if !taken.is_empty() {
            let mut book = lock(&inner.book);
            for d in taken {
                let target = inner.targets[d.target].0.name().to_string();
                book.record(&d, &target);
                if d.epoch < inner.epoch.load(Ordering::SeqCst) {
                    // A flush gave up on it while it was on its way here.
                    book.write(|j| {
                        j.update_delivery(
                            &d.id,
                            &DeliveryUpdate {
                                attempts: 0,
                                state: "abandoned".into(),
                                last_status: None,
                                last_error: Some("not delivered before vmshift exited".into()),
                            },
                        )
                    });
                    inner.unfinished.fetch_sub(1, Ordering::SeqCst);
                    continue;
                }
                book.open.insert(
                    d.id.clone(),
                    Open {
                        job_id: d.job_id.clone(),
                        target,
                        event: d.event,
                        update: DeliveryUpdate {
                            attempts: 0,
                            state: "pending".into(),
                            last_status: None,
                            last_error: None,
                        },
                    },
                );
                let lane = d.target;
                lanes[lane].push_back(Pending {
                    d,
                    next_at: Instant::now(),
                });
            }
        }
        // Forget what a flush abandoned.
        {
            let book = lock(&inner.book);
            for lane in &mut lanes {
                lane.retain(|p| book.open.contains_key(&p.d.id));
            }
        }
        for lane in &mut lanes {
            let Some(p) = lane.front_mut() else {
                continue;
            };
            if p.next_at > Instant::now() {
                continue;
            }
            let target = &inner.targets[p.d.target].0;
            let result = deliver::attempt(
                &agent,
                target,
                Attempt {
                    id: &p.d.id,
                    job_id: &p.d.job_id,
                    event: p.d.event,
                    body: &p.d.body,
                },
            );
            if settle(&inner, p, &result) {
                lane.pop_front();
            }
        }
    }
}

/// Records `result` of an attempt of `p`; returns whether `p` is finished (delivered,
/// failed, or abandoned meanwhile).
fn settle(inner: &Inner, p: &mut Pending, result: &AttemptResult) -> bool {
    let mut book = lock(&inner.book);
    let Some(open) = book.open.get_mut(&p.d.id) else {
        return true;
    };
    let attempts = open.update.attempts + 1;
    let retry = if result.delivered {
        None
    } else {
        retry::next_attempt(attempts, p.d.queued.elapsed(), inner.retry_for)
    };
    let state = match (result.delivered, retry) {
        (true, _) => "delivered",
        (false, Some(_)) => "pending",
        (false, None) => "failed",
    };
    open.update = DeliveryUpdate {
        attempts,
        state: state.into(),
        last_status: result.status,
        last_error: result.error.clone(),
    };
    let update = open.update.clone();
    let what = format!("{}: {}", open.target, open.event);
    let id = p.d.id.clone();
    book.write(|j| j.update_delivery(&id, &update));
    match retry {
        Some(wait) => {
            p.next_at = Instant::now() + wait;
            false
        }
        None => {
            book.open.remove(&id);
            drop(book);
            if state == "failed" {
                inner.note(&format!(
                    "{what} of job {} failed after {attempts} attempt{}: {}",
                    p.d.job_id,
                    if attempts == 1 { "" } else { "s" },
                    update.last_error.as_deref().unwrap_or("")
                ));
            }
            inner.unfinished.fetch_sub(1, Ordering::SeqCst);
            true
        }
    }
}

/// Abandoned deliveries grouped by target and job, in the order first seen.
#[derive(Default)]
struct Abandoned {
    groups: Vec<AbandonedGroup>,
}

struct AbandonedGroup {
    target: String,
    job_id: String,
    events: Vec<String>,
    attempts: u32,
    last_error: Option<String>,
}

impl Abandoned {
    fn add(
        &mut self,
        target: &str,
        job_id: &str,
        event: &str,
        attempts: u32,
        last: Option<String>,
    ) {
        let g = match self
            .groups
            .iter_mut()
            .position(|g| g.target == target && g.job_id == job_id)
        {
            Some(i) => &mut self.groups[i],
            None => {
                self.groups.push(AbandonedGroup {
                    target: target.to_string(),
                    job_id: job_id.to_string(),
                    events: Vec::new(),
                    attempts: 0,
                    last_error: None,
                });
                self.groups.last_mut().expect("just pushed")
            }
        };
        g.events.push(event.to_string());
        g.attempts += attempts;
        if last.is_some() {
            g.last_error = last;
        }
    }

    /// One line per target and job: "T: 3 notifications of job J abandoned (a, b, c)
    /// after 5 attempts: why (last attempt: e)".
    fn lines(&self, why: &str) -> Vec<String> {
        self.groups
            .iter()
            .map(|g| {
                let what = match g.events.len() {
                    1 => g.events[0].clone(),
                    n => {
                        let mut counts = std::collections::BTreeMap::<&str, usize>::new();
                        for e in &g.events {
                            *counts.entry(e.as_str()).or_default() += 1;
                        }
                        let kinds: Vec<String> =
                            counts.iter().map(|(e, c)| format!("{c} {e}")).collect();
                        format!("{n} notifications ({})", kinds.join(", "))
                    }
                };
                // An attempt still waiting for its answer is not counted: say nothing then.
                let tried = match g.attempts {
                    0 => String::new(),
                    1 => " after 1 failed attempt".to_string(),
                    n => format!(" after {n} failed attempts"),
                };
                let last = g
                    .last_error
                    .as_deref()
                    .map(|l| format!(" (last attempt: {l})"))
                    .unwrap_or_default();
                format!(
                    "{}: {what} of job {} abandoned{tried}: {why}{last}",
                    g.target, g.job_id
                )
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Secret, WebhookConfig};
    use crate::event::tests::{job, phase};
    use vmshift_core::Phase;
    use vmshift_runner::PhaseState;

    #[test]
    fn observe_never_waits_on_a_hook_that_never_answers_and_drops_past_the_bound() {
        let state = tempfile::tempdir().unwrap();
        // The only test in this crate that opens a journal.
        std::env::set_var("VMSHIFT_STATE_DIR", state.path());
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/", listener.local_addr().unwrap());
        // Accept and never answer.
        let held = std::thread::spawn(move || {
            let conns: Vec<_> = listener.incoming().take(1).collect();
            std::thread::sleep(Duration::from_secs(15));
            drop(conns);
        });
        let n = Notifier::start(NotifyConfig {
            webhooks: vec![WebhookConfig {
                url,
                events: EventKind::ALL.to_vec(),
                secret: Some(Secret("s".into())),
                secret_file: None,
                name: Some("stuck".into()),
            }],
            ..NotifyConfig::default()
        });
        let t = Instant::now();
        n.observe("j1", &job("j1"));
        for _ in 0..MAX_UNFINISHED + 10 {
            n.observe("j1", &phase(Phase::Copy, PhaseState::Started));
        }
        assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
        let problems = n.flush(Duration::from_millis(200));
        let dropped = problems.iter().filter(|p| p.contains("dropped")).count();
        let abandoned: Vec<_> = problems
            .iter()
            .filter(|p| p.contains("abandoned"))
            .collect();
        assert_eq!(dropped, 11, "{problems:?}");
        // One line for the target and job, not one per event.
        assert_eq!(abandoned.len(), 1, "{problems:?}");
        assert!(
            abandoned[0].starts_with(&format!(
                "notification stuck: {MAX_UNFINISHED} notifications ({} job.phase, 1 job.started)",
                MAX_UNFINISHED - 1
            )),
            "{abandoned:?}"
        );
        assert!(
            abandoned[0].contains("of job j1 abandoned: "),
            "{abandoned:?}"
        );
        assert!(!abandoned[0].contains("0 failed attempts"), "{abandoned:?}");
        assert!(problems[0].starts_with("notification stuck: job.phase of job j1 dropped"));
        let j = Journal::open(&state.path().join("journal.sqlite")).unwrap();
        let d = j.deliveries("j1").unwrap();
        assert_eq!(d.len(), MAX_UNFINISHED);
        assert_eq!(d[0].event, "job.started");
        assert!(d.iter().all(|x| x.state == "abandoned"));
        // Usable again after a flush gave up.
        assert!(n.flush(Duration::ZERO).is_empty());
        drop(n);
        drop(held);
    }
}
