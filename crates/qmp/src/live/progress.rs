//! Progress reports of a running live migration, and the sliding-window copy rate.

use std::collections::VecDeque;
use std::time::Duration;

use crate::policy::{CopyMode, Progress};

/// Progress of one disk.
#[derive(Debug, Clone, PartialEq)]
pub struct DiskProgress {
    /// Device id.
    pub device: String,
    /// Bytes done / total of the job (QEMU's `current-progress` / `total-progress`).
    pub progress: Progress,
    /// The job reports ready.
    pub ready: bool,
    /// The job's offset has reached its length but QEMU has not yet reported ready (a
    /// mirror sits there, e.g. under a bandwidth limit, until its dirty bitmap is clean and
    /// nothing is in flight): its time to ready is unknown, not 0.
    pub waiting_for_ready: bool,
    /// Current copy mode.
    pub copy_mode: CopyMode,
}

/// A progress report passed to the callback of [`super::LiveMigration::run`].
#[derive(Debug, Clone, PartialEq)]
pub struct LiveProgress {
    /// What the driver is doing: `sampling`, `copying`, `pivoting`, `pivoted` (every disk
    /// runs on its target; old nodes not yet detached), `done`, `cleanup`.
    pub phase: &'static str,
    /// Time since `run` started.
    pub elapsed: Duration,
    /// Per disk.
    pub disks: Vec<DiskProgress>,
    /// Sum over disks.
    pub total: Progress,
    /// Copy rate in bytes/s over the last [`RATE_WINDOW`] of QEMU's reported offsets.
    pub rate: u64,
    /// Estimated time to ready; `None` when no rate is known or a disk waits for ready.
    pub eta: Option<Duration>,
    /// A notable event, e.g. a copy-mode fallback or a changed bandwidth limit.
    pub note: Option<String>,
}

/// The span of offsets [`RateWindow`] averages over.
pub const RATE_WINDOW: Duration = Duration::from_secs(3);

/// Copy rate over a sliding window of (time, bytes done) samples: the bytes between the
/// newest sample and the newest one at least `span` older, over the time between them.
/// Not an average since the start, and 0 (not a slow decay) once the offset stops moving.
#[derive(Debug, Clone)]
pub struct RateWindow {
    span: Duration,
    samples: VecDeque<(Duration, u64)>,
}

impl RateWindow {
    /// A window of `span`.
    pub fn new(span: Duration) -> Self {
        RateWindow {
            span,
            samples: VecDeque::new(),
        }
    }

    /// Feeds the bytes done at `at` (since any fixed origin); returns bytes/s over the
    /// window. Bytes done going down (a job restarted from 0) starts the window again.
    pub fn sample(&mut self, at: Duration, done: u64) -> u64 {
        if self
            .samples
            .back()
            .is_some_and(|&(t, d)| done < d || at < t)
        {
            self.samples.clear();
        }
        self.samples.push_back((at, done));
        while self.samples.len() > 2
            && self
                .samples
                .get(1)
                .is_some_and(|&(t, _)| at.saturating_sub(t) >= self.span)
        {
            self.samples.pop_front();
        }
        match (self.samples.front(), self.samples.back()) {
            (Some(&(t0, d0)), Some(&(t1, d1))) if t1 > t0 => {
                let bytes = u128::from(d1 - d0) * 1_000_000_000;
                u64::try_from(bytes / (t1 - t0).as_nanos()).unwrap_or(u64::MAX)
            }
            _ => 0,
        }
    }
}

/// `d` in whole milliseconds (saturating).
pub(super) fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    fn at(ms: u64) -> Duration {
        Duration::from_millis(ms)
    }

    #[test]
    fn the_rate_follows_the_last_seconds_not_the_average_since_start() {
        let mut w = RateWindow::new(RATE_WINDOW);
        // 10 s at 1 MiB/s, then 64 MiB/s
        for s in 0..=10 {
            w.sample(at(s * 1000), s * MIB);
        }
        let mut rate = 0;
        for s in 1..=4 {
            rate = w.sample(at(10_000 + s * 1000), 10 * MIB + s * 64 * MIB);
        }
        assert_eq!(rate, 64 * MIB);
    }

    #[test]
    fn a_stalled_offset_reads_zero_after_the_window_not_a_slow_decay() {
        let mut w = RateWindow::new(RATE_WINDOW);
        for i in 0..=10 {
            w.sample(at(i * 200), i * MIB); // 5 MiB/s
        }
        assert_eq!(w.sample(at(2200), 11 * MIB), 5 * MIB);
        let mut rate = u64::MAX;
        for i in 12..=30 {
            rate = w.sample(at(i * 200), 11 * MIB);
        }
        assert_eq!(rate, 0);
    }

    #[test]
    fn a_restarted_job_starts_the_window_again() {
        let mut w = RateWindow::new(RATE_WINDOW);
        w.sample(at(0), 0);
        w.sample(at(1000), 100 * MIB);
        assert_eq!(w.sample(at(1200), 0), 0);
        assert_eq!(w.sample(at(2200), 2 * MIB), 2 * MIB);
    }
}
