//! What the user sees of a job: its events rendered as human lines on stderr (a progress bar
//! on a terminal), or as NDJSON on stdout with `--json` (human lines stay on stderr).

use indicatif::{ProgressBar, ProgressStyle};
use std::io::{IsTerminal, Write};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};
use vmshift_core::format_bytes;
use vmshift_runner::{JobControl, JobEvent, JobHandle, Outcome, PhaseState, Progress};

/// The controls of the jobs this process renders: Ctrl-C and SIGTERM cancel them.
fn running() -> &'static Mutex<Vec<JobControl>> {
    static RUNNING: OnceLock<Mutex<Vec<JobControl>>> = OnceLock::new();
    RUNNING.get_or_init(Mutex::default)
}

/// Interrupts every job this process follows (the Ctrl-C / SIGTERM handler): offline jobs
/// keep their journaled partial target for `vmshift resume`.
pub fn interrupt_all() {
    for c in running().lock().unwrap_or_else(|p| p.into_inner()).iter() {
        c.interrupt();
    }
}

fn json_line(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

/// Renders `job`'s events until it ends and returns its outcome; `notifier` (when the
/// config has notifications) sees every event.
///
/// # Errors
/// The runner's own error (journal, state directory, QEMU unreachable).
pub fn follow(
    job: JobHandle,
    json: bool,
    notifier: Option<&vmshift_notify::Notifier>,
) -> anyhow::Result<Outcome> {
    running()
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .push(job.control());
    let mut bar = Bar::default();
    for e in job.events() {
        if let Some(n) = notifier {
            n.observe(job.job_id(), &e);
        }
        if json {
            if let Some(l) = e.to_json_line() {
                json_line(&l);
            }
        }
        match &e {
            JobEvent::Log { line } => {
                bar.clear();
                eprintln!("{line}");
            }
            JobEvent::Phase {
                phase,
                state: PhaseState::Started,
                ..
            } => {
                bar.clear();
                eprintln!("vmshift: {phase}");
            }
            JobEvent::Warning { message } => eprintln!("warning: {message}"),
            JobEvent::Note { message } if !json => eprintln!("vmshift: {message}"),
            JobEvent::Progress(p) if !json => bar.show(p),
            _ => {}
        }
    }
    bar.clear();
    Ok(job.wait()?)
}

/// Progress for people: a bar on a terminal for offline copies; one line a second for live
/// mirrors (per disk: percent, copy mode, ready or waiting for ready).
#[derive(Default)]
struct Bar {
    bar: Option<(String, ProgressBar)>,
    last_line: Option<Instant>,
}

impl Bar {
    fn show(&mut self, p: &Progress) {
        if !p.disks.is_empty() {
            if self
                .last_line
                .is_some_and(|t| t.elapsed() < Duration::from_secs(1))
            {
                return;
            }
            self.last_line = Some(Instant::now());
            let per: Vec<String> = p
                .disks
                .iter()
                .map(|d| {
                    if d.ready {
                        format!("{} ready", d.device)
                    } else if d.waiting_for_ready {
                        format!("{} waiting for ready", d.device)
                    } else {
                        let pct = (d.done_bytes * 100).checked_div(d.total_bytes).unwrap_or(0);
                        format!("{} {pct}% {}", d.device, d.copy_mode)
                    }
                })
                .collect();
            eprintln!(
                "copy {}/{} {}/s ETA {} [{}]",
                format_bytes(p.done_bytes),
                format_bytes(p.total_bytes),
                format_bytes(p.rate_bytes_per_sec),
                p.eta_ms
                    .map(|e| format!("{}s", e / 1000))
                    .unwrap_or_else(|| "?".into()),
                per.join(", ")
            );
            return;
        }
        if !std::io::stderr().is_terminal() {
            return;
        }
        // Until the total is known a bar of 0 of 0 would draw full.
        if p.total_bytes == 0 {
            return;
        }
        if self.bar.as_ref().is_none_or(|(l, _)| *l != p.phase) {
            self.clear();
            let b = ProgressBar::new(p.total_bytes);
            // The rate and ETA are the runner's (bytes this phase moved), not indicatif's
            // position over time: a verification the copy already did jumps to its end.
            b.set_style(
                ProgressStyle::with_template("{msg:>8} [{bar:30}] {bytes}/{total_bytes} {prefix}")
                    .unwrap_or_else(|_| ProgressStyle::default_bar())
                    .progress_chars("=> "),
            );
            b.set_message(p.phase.clone());
            self.bar = Some((p.phase.clone(), b));
        }
        if let Some((_, b)) = &self.bar {
            b.set_length(p.total_bytes);
            b.set_position(p.done_bytes);
            b.set_prefix(rate_and_eta(p));
        }
    }

    fn clear(&mut self) {
        if let Some((_, b)) = self.bar.take() {
            b.finish_and_clear();
        }
    }
}

/// "12.0 MiB/s ETA 40s", or nothing when the phase moved no bytes (no rate to show).
fn rate_and_eta(p: &vmshift_runner::Progress) -> String {
    if p.rate_bytes_per_sec == 0 {
        return String::new();
    }
    let eta = p
        .eta_ms
        .map(|e| format!(" ETA {}s", e.div_ceil(1000)))
        .unwrap_or_default();
    format!("{}/s{eta}", format_bytes(p.rate_bytes_per_sec))
}
