//! Pure decisions of the live driver: copy mode, convergence bound, progress and ETA.
//!
//! Rates are bytes per second, sizes bytes, durations [`Duration`]s. Nothing here touches QMP.

use std::time::Duration;

/// Copy rate assumed when no bandwidth limit is set (bytes/s). Deliberately low: it only
/// sizes the convergence bound, and a too-long bound just delays a fallback.
pub const ASSUMED_COPY_RATE: u64 = 16 << 20;

/// Fixed slack added to every convergence bound (job start-up, rate-limit bursts).
pub const BOUND_SLACK: Duration = Duration::from_secs(10);

/// A guest writing faster than this fraction of the copy rate gets write-blocking up front
/// under `auto` (numerator / denominator = 3/4). Background converges in theory whenever the
/// guest writes slower than the copy; the margin covers rate jitter and dirty-bitmap
/// granularity (a 4 KiB write re-dirties a whole 64 KiB chunk).
pub const WRITE_BLOCKING_THRESHOLD: (u64, u64) = (3, 4);

/// How the mirror treats guest writes while it copies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CopyMode {
    /// Guest writes complete on the source; dirty areas are copied later (may never converge).
    Background,
    /// Guest writes are mirrored synchronously to the target (active mirror): always converges,
    /// at the cost of guest write latency.
    WriteBlocking,
}

impl CopyMode {
    /// The QMP `copy-mode` value.
    pub fn as_qmp(self) -> &'static str {
        match self {
            CopyMode::Background => "background",
            CopyMode::WriteBlocking => "write-blocking",
        }
    }
}

impl std::fmt::Display for CopyMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_qmp())
    }
}

/// The copy mode the operator asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CopyModeRequest {
    /// Choose from the measured guest write rate, and fall back to write-blocking if the job
    /// does not become ready within the convergence bound.
    #[default]
    Auto,
    /// Always background; abort if the job does not become ready within the bound.
    Background,
    /// Always write-blocking.
    WriteBlocking,
}

/// What to do when a background job misses its convergence bound.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fallback {
    /// Switch the running job with `block-job-change` (QEMU 8.2+).
    SwitchLive,
    /// Cancel the job, wait until it is gone, restart it in write-blocking mode (QEMU 7.2).
    Restart,
    /// Abort the migration cleanly (explicit mode, nothing else allowed).
    Abort,
}

/// A copy-mode decision with its reason, for the report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModeDecision {
    /// Mode to start the job in.
    pub mode: CopyMode,
    /// Human-readable reason, with the numbers it was based on.
    pub reason: String,
    /// Maximum time to wait for ready before `fallback` applies.
    pub bound: Duration,
    /// What happens when the bound is missed.
    pub fallback: Fallback,
}

/// Chooses the initial copy mode for one disk.
///
/// `write_rate` is the guest's measured write rate (bytes/s), `limit` the bandwidth limit
/// (bytes/s, `None` = unlimited), `size` the bytes to copy, `can_switch_live` whether
/// `block-job-change` exists.
pub fn choose_copy_mode(
    request: CopyModeRequest,
    write_rate: u64,
    limit: Option<u64>,
    size: u64,
    can_switch_live: bool,
) -> ModeDecision {
    let copy_rate = effective_copy_rate(limit);
    let (num, den) = WRITE_BLOCKING_THRESHOLD;
    let heavy = writes_too_fast(write_rate, limit);
    let rates = format!(
        "guest writes {write_rate} B/s, copy rate {copy_rate} B/s{}",
        if limit.is_some() {
            " (limit)"
        } else {
            " (assumed, no limit)"
        }
    );
    match request {
        CopyModeRequest::WriteBlocking => ModeDecision {
            mode: CopyMode::WriteBlocking,
            reason: format!("write-blocking requested; {rates}"),
            bound: convergence_bound(size, 0, limit),
            fallback: Fallback::Abort,
        },
        CopyModeRequest::Background => ModeDecision {
            mode: CopyMode::Background,
            reason: format!("background requested; {rates}"),
            bound: convergence_bound(size, write_rate, limit),
            fallback: Fallback::Abort,
        },
        CopyModeRequest::Auto if heavy => ModeDecision {
            mode: CopyMode::WriteBlocking,
            reason: format!("auto: {rates}; writes exceed {num}/{den} of the copy rate, background would not converge"),
            bound: convergence_bound(size, 0, limit),
            fallback: Fallback::Abort,
        },
        CopyModeRequest::Auto => {
            let bound = convergence_bound(size, write_rate, limit);
            ModeDecision {
                mode: CopyMode::Background,
                reason: format!(
                    "auto: {rates}; background expected to converge within {} s",
                    bound.as_secs()
                ),
                bound,
                fallback: if can_switch_live { Fallback::SwitchLive } else { Fallback::Restart },
            }
        }
    }
}

/// True when a guest writing `write_rate` bytes/s would keep a background mirror limited to
/// `limit` (or [`ASSUMED_COPY_RATE`]) from converging: more than
/// [`WRITE_BLOCKING_THRESHOLD`] of the copy rate.
pub fn writes_too_fast(write_rate: u64, limit: Option<u64>) -> bool {
    let (num, den) = WRITE_BLOCKING_THRESHOLD;
    u128::from(write_rate) * u128::from(den)
        > u128::from(effective_copy_rate(limit)) * u128::from(num)
}

/// Minimum span of write-rate samples taken during a background copy before
/// [`fall_back_early`] may act on them (seconds).
pub const WATCH_WINDOW: Duration = Duration::from_secs(3);

/// Whether a background job chosen by `auto` should fall back now rather than wait for its
/// bound: the guest's write rate measured over at least [`WATCH_WINDOW`] during the copy
/// (`observed`, bytes/s over `span`) is too fast for the limit (the rate sampled before the
/// start can be low when the guest starts writing later, or is starved during the sample).
pub fn fall_back_early(
    decision: &ModeDecision,
    observed: u64,
    span: Duration,
    limit: Option<u64>,
) -> bool {
    decision.mode == CopyMode::Background
        && decision.fallback != Fallback::Abort
        && span >= WATCH_WINDOW
        && writes_too_fast(observed, limit)
}

/// The copy rate used for planning: the limit, or [`ASSUMED_COPY_RATE`] without one.
pub fn effective_copy_rate(limit: Option<u64>) -> u64 {
    limit.filter(|&l| l > 0).unwrap_or(ASSUMED_COPY_RATE)
}

/// Time within which a mirror of `size` bytes should become ready while the guest writes
/// `write_rate` bytes/s and the copy runs at the limit (or [`ASSUMED_COPY_RATE`]):
/// `BOUND_SLACK + 3 × size / max(copy − write, copy / 4)`.
///
/// The net rate is floored at a quarter of the copy rate so a bound always exists; a job that
/// misses it is treated as not converging.
pub fn convergence_bound(size: u64, write_rate: u64, limit: Option<u64>) -> Duration {
    let copy = effective_copy_rate(limit);
    let net = copy.saturating_sub(write_rate).max(copy / 4).max(1);
    let secs = 3.0 * size as f64 / net as f64;
    BOUND_SLACK + Duration::from_secs_f64(secs.min(30.0 * 24.0 * 3600.0))
}

/// Guest write rate (bytes/s) from two `wr_bytes` samples `elapsed` apart (0 if the counter
/// went backwards, e.g. after a device reset).
pub fn write_rate(before: u64, after: u64, elapsed: Duration) -> u64 {
    let secs = elapsed.as_secs_f64();
    if secs <= 0.0 {
        return 0;
    }
    f64_to_u64(after.saturating_sub(before) as f64 / secs)
}

/// Saturating float → integer conversion for rates (NaN and negatives become 0).
fn f64_to_u64(v: f64) -> u64 {
    if v.is_nan() || v <= 0.0 {
        0
    } else if v >= u64::MAX as f64 {
        u64::MAX
    } else {
        #[allow(clippy::cast_possible_truncation)] // range checked above
        let r = v as u64;
        r
    }
}

/// Progress of a set of jobs, summed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Progress {
    /// Bytes done (sum of `current-progress`).
    pub done: u64,
    /// Bytes to do (sum of `total-progress`; grows when the guest dirties copied areas).
    pub total: u64,
}

impl Progress {
    /// Remaining bytes.
    pub fn remaining(&self) -> u64 {
        self.total.saturating_sub(self.done)
    }

    /// Completed fraction in [0, 1] (1 when there is nothing to do).
    pub fn fraction(&self) -> f64 {
        if self.total == 0 {
            1.0
        } else {
            (self.done.min(self.total) as f64) / self.total as f64
        }
    }
}

/// Estimated time to finish `remaining` bytes at `rate` bytes/s (`None` when the rate is 0).
pub fn eta(remaining: u64, rate: u64) -> Option<Duration> {
    (rate > 0).then(|| Duration::from_secs_f64(remaining as f64 / rate as f64))
}

/// Smoothed copy rate: exponential moving average over progress samples.
#[derive(Debug, Clone, Default)]
pub struct RateMeter {
    last: Option<(Duration, u64)>,
    rate: f64,
}

impl RateMeter {
    /// Feeds the bytes done at time `at` (since any fixed origin); returns the rate in bytes/s.
    pub fn sample(&mut self, at: Duration, done: u64) -> u64 {
        if let Some((t, d)) = self.last {
            let dt = at.saturating_sub(t).as_secs_f64();
            if dt > 0.0 {
                let inst = done.saturating_sub(d) as f64 / dt;
                self.rate = if self.rate == 0.0 {
                    inst
                } else {
                    0.7 * self.rate + 0.3 * inst
                };
            }
        }
        self.last = Some((at, done));
        f64_to_u64(self.rate)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    #[test]
    fn auto_picks_write_blocking_when_guest_writes_twice_the_limit() {
        let d = choose_copy_mode(CopyModeRequest::Auto, 2 * MIB, Some(MIB), 64 * MIB, false);
        assert_eq!(d.mode, CopyMode::WriteBlocking);
        assert!(d.reason.contains("2097152 B/s"), "{}", d.reason);
    }

    #[test]
    fn auto_picks_background_at_half_the_limit_with_restart_fallback_on_7_2() {
        let d = choose_copy_mode(CopyModeRequest::Auto, MIB / 2, Some(MIB), 64 * MIB, false);
        assert_eq!(d.mode, CopyMode::Background);
        assert_eq!(d.fallback, Fallback::Restart);
        // 3 × 64 MiB / 0.5 MiB/s = 384 s, plus slack
        assert_eq!(d.bound, BOUND_SLACK + Duration::from_secs(384));
    }

    #[test]
    fn auto_switches_live_when_block_job_change_exists() {
        let d = choose_copy_mode(CopyModeRequest::Auto, 0, None, 64 * MIB, true);
        assert_eq!(d.fallback, Fallback::SwitchLive);
    }

    #[test]
    fn explicit_modes_never_fall_back_to_another_mode() {
        for r in [CopyModeRequest::Background, CopyModeRequest::WriteBlocking] {
            assert_eq!(
                choose_copy_mode(r, 10 * MIB, Some(MIB), MIB, false).fallback,
                Fallback::Abort
            );
        }
    }

    #[test]
    fn auto_background_falls_back_early_when_writes_rise_during_the_copy() {
        let d = choose_copy_mode(CopyModeRequest::Auto, 0, Some(MIB), 64 * MIB, false);
        let w = Duration::from_secs(3);
        assert!(fall_back_early(&d, 2 * MIB, w, Some(MIB)));
        assert!(
            !fall_back_early(&d, MIB / 2, w, Some(MIB)),
            "slow writes: keep going"
        );
        assert!(
            !fall_back_early(&d, 2 * MIB, Duration::from_secs(1), Some(MIB)),
            "window too short"
        );
        let explicit = choose_copy_mode(CopyModeRequest::Background, 0, Some(MIB), 64 * MIB, false);
        assert!(
            !fall_back_early(&explicit, 2 * MIB, w, Some(MIB)),
            "explicit modes never change"
        );
    }

    #[test]
    fn bound_floors_net_rate_at_quarter_of_copy_rate() {
        // writes exceed the copy rate: net floored at 1/4 MiB/s → 3 × 1 MiB / 0.25 MiB/s = 12 s
        assert_eq!(
            convergence_bound(MIB, 5 * MIB, Some(MIB)),
            BOUND_SLACK + Duration::from_secs(12)
        );
    }

    #[test]
    fn bound_of_empty_disk_is_the_slack() {
        assert_eq!(convergence_bound(0, 0, None), BOUND_SLACK);
    }

    #[test]
    fn write_rate_handles_counter_reset_and_zero_interval() {
        assert_eq!(write_rate(10, 5, Duration::from_secs(1)), 0);
        assert_eq!(write_rate(0, 100, Duration::ZERO), 0);
        assert_eq!(write_rate(0, 3 * MIB, Duration::from_secs(2)), 3 * MIB / 2);
    }

    #[test]
    fn progress_and_eta() {
        let p = Progress {
            done: 30,
            total: 120,
        };
        assert_eq!(p.remaining(), 90);
        assert_eq!(eta(p.remaining(), 30), Some(Duration::from_secs(3)));
        assert_eq!(eta(1, 0), None);
        assert_eq!(Progress::default().fraction(), 1.0);
    }

    #[test]
    fn rate_meter_smooths() {
        let mut m = RateMeter::default();
        assert_eq!(m.sample(Duration::ZERO, 0), 0);
        assert_eq!(m.sample(Duration::from_secs(1), 100), 100);
        assert_eq!(m.sample(Duration::from_secs(2), 100), 70);
    }
}
