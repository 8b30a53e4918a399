//! What the user sees: human lines on stderr, a progress bar on a terminal, or NDJSON events
//! on stdout with `--json` (phase changes, progress at most 4 per second, the report last).

use indicatif::{ProgressBar, ProgressStyle};
use serde_json::json;
use std::io::{IsTerminal, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use vmshift_copy::Counters;
use vmshift_core::Phase;

/// Output mode for one job.
#[derive(Debug, Clone, Copy)]
pub struct Output {
    /// NDJSON on stdout.
    pub json: bool,
}

impl Output {
    /// A human line on stderr.
    pub fn say(&self, line: &str) {
        eprintln!("{line}");
    }

    /// One NDJSON event on stdout (only with `--json`).
    pub fn event(&self, value: serde_json::Value) {
        if self.json {
            let mut out = std::io::stdout().lock();
            let _ = writeln!(out, "{value}");
            let _ = out.flush();
        }
    }

    /// A phase started.
    pub fn phase(&self, phase: Phase) {
        self.event(json!({"event": "phase", "phase": phase.as_str(), "state": "started"}));
        self.say(&format!("vmshift: {phase}"));
    }

    /// Starts reporting progress of `counters` until the returned guard is dropped.
    pub fn progress(&self, label: &'static str, counters: Arc<Counters>) -> ProgressGuard {
        let stop = Arc::new(AtomicBool::new(false));
        let json_mode = self.json;
        let s = stop.clone();
        let handle = std::thread::spawn(move || {
            let bar = (!json_mode && std::io::stderr().is_terminal()).then(|| {
                let b = ProgressBar::new(0);
                b.set_style(
                    ProgressStyle::with_template(
                        "{msg:>8} [{bar:30}] {bytes}/{total_bytes} {binary_bytes_per_sec} ETA {eta}",
                    )
                    .expect("valid template")
                    .progress_chars("=> "),
                );
                b.set_message(label);
                b
            });
            let start = Instant::now();
            let mut last_json = Instant::now() - Duration::from_secs(1);
            loop {
                let stopping = s.load(Ordering::Relaxed);
                let total = counters.total.load(Ordering::Relaxed);
                let done = counters.done.load(Ordering::Relaxed).min(total);
                if let Some(b) = &bar {
                    b.set_length(total);
                    b.set_position(done);
                }
                if json_mode && (last_json.elapsed() >= Duration::from_millis(250) || stopping) {
                    last_json = Instant::now();
                    let secs = start.elapsed().as_secs_f64().max(1e-3);
                    let rate = vmshift_core::rate_bytes_per_sec(done, secs);
                    let eta_ms = ((total - done) * 1000).checked_div(rate).unwrap_or(0);
                    let line = json!({"event": "progress", "phase": label, "done_bytes": done,
                        "total_bytes": total, "rate_bytes_per_sec": rate, "eta_ms": eta_ms});
                    let mut out = std::io::stdout().lock();
                    let _ = writeln!(out, "{line}");
                    let _ = out.flush();
                }
                if stopping {
                    if let Some(b) = bar {
                        b.finish_and_clear();
                    }
                    return;
                }
                // Woken early by the guard's drop, so a phase never waits out the tick.
                std::thread::park_timeout(Duration::from_millis(100));
            }
        });
        ProgressGuard {
            stop,
            handle: Some(handle),
        }
    }
}

/// Stops the progress reporter when dropped (after one final update).
pub struct ProgressGuard {
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
