//! Hears what other processes ask of a running job through the journal (`vmshift cancel`,
//! `vmshift set --bwlimit`) and records the bandwidth changes made in this process
//! ([`crate::JobControl::set_bwlimit`]), so every change is in the journal and the report.

use super::JournalLink;
use crate::handle::{Emitter, JobControl};
use crate::state::now_rfc3339;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use vmshift_core::format_bytes;
use vmshift_core::report::BwlimitChange;

/// How often the journal is asked for requests: a request takes effect within this (plus
/// one chunk or one live poll).
pub const POLL: Duration = Duration::from_millis(200);

/// A running watcher; [`Watch::stop`] ends it and returns the bandwidth changes it saw.
pub struct Watch {
    stop: Arc<AtomicBool>,
    changes: Arc<Mutex<Vec<BwlimitChange>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Watch {
    /// Starts watching the job behind `link` (without a journal, only in-process changes
    /// are seen) on behalf of `control`.
    pub(crate) fn start(link: Option<&JournalLink>, control: &JobControl, em: &Emitter) -> Watch {
        let stop = Arc::new(AtomicBool::new(false));
        let changes = Arc::new(Mutex::new(Vec::new()));
        let (s, c, control, em) = (stop.clone(), changes.clone(), control.clone(), em.clone());
        // Its own connection: the job's one is busy with checkpoints.
        let journal = link.and_then(|l| {
            vmshift_journal::Journal::open(l.journal.lock().ok()?.path())
                .ok()
                .map(|j| (j, l.id.clone()))
        });
        let thread = std::thread::spawn(move || {
            let mut last = control.bwlimit();
            while !s.load(Ordering::Relaxed) {
                std::thread::park_timeout(POLL);
                let seen = |bps: u64| {
                    c.lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .push(BwlimitChange {
                            at: now_rfc3339(),
                            bytes_per_sec: bps,
                        });
                    em.note(if bps == 0 {
                        "bandwidth limit lifted".to_string()
                    } else {
                        format!("bandwidth limit changed to {}/s", format_bytes(bps))
                    });
                };
                let Some((j, id)) = &journal else {
                    if control.bwlimit() != last {
                        last = control.bwlimit();
                        seen(last);
                    }
                    continue;
                };
                if let Some(p) = em.take_progress() {
                    let _ = j.set_progress(id, &record(&p));
                }
                if j.job(id).is_ok_and(|r| r.cancel_request.is_some()) {
                    control.cancel();
                }
                let pending = j.bwlimit_changes(id).unwrap_or_default();
                for ch in pending.into_iter().filter(|ch| ch.applied_at.is_none()) {
                    control.set_bwlimit(ch.bytes_per_sec);
                    last = ch.bytes_per_sec;
                    let _ = j.bwlimit_applied(id, ch.seq);
                    seen(last);
                }
                if control.bwlimit() != last {
                    // Changed in this process: record it like a request, applied at once.
                    last = control.bwlimit();
                    if let Ok(seq) = j.request_bwlimit(id, last) {
                        let _ = j.bwlimit_applied(id, seq);
                    }
                    seen(last);
                }
            }
        });
        Watch {
            stop,
            changes,
            thread: Some(thread),
        }
    }

    /// Stops watching; returns every bandwidth change applied while it ran, oldest first.
    pub fn stop(mut self) -> Vec<BwlimitChange> {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            t.thread().unpark();
            let _ = t.join();
        }
        std::mem::take(&mut *self.changes.lock().unwrap_or_else(|p| p.into_inner()))
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            t.thread().unpark();
            let _ = t.join();
        }
    }
}

/// The journal's form of a progress sample.
fn record(p: &crate::event::Progress) -> vmshift_journal::ProgressRecord {
    vmshift_journal::ProgressRecord {
        phase: p.phase.clone(),
        done_bytes: p.done_bytes,
        total_bytes: p.total_bytes,
        rate_bytes_per_sec: p.rate_bytes_per_sec,
        eta_ms: p.eta_ms,
        updated_at: String::new(),
    }
}
