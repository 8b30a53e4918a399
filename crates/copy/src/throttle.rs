//! Bandwidth limit shared by all workers: each worker adds the bytes it moved and sleeps
//! until the running total is back under `rate * elapsed`.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// A shared byte-rate limit.
#[derive(Debug)]
pub struct Throttle {
    rate: u64,
    start: Instant,
    total: AtomicU64,
}

impl Throttle {
    /// A limit of `rate` bytes/s (0 = unlimited).
    pub fn new(rate: u64) -> Self {
        Throttle {
            rate,
            start: Instant::now(),
            total: AtomicU64::new(0),
        }
    }

    /// How long the caller must wait after moving `bytes` more (pure; used by [`Self::take`]).
    pub fn delay_after(&self, bytes: u64, now: Instant) -> Duration {
        if self.rate == 0 {
            return Duration::ZERO;
        }
        let total = self.total.fetch_add(bytes, Ordering::Relaxed) + bytes;
        let due = Duration::from_secs_f64(total as f64 / self.rate as f64);
        due.saturating_sub(now.duration_since(self.start))
    }

    /// Accounts `bytes` and sleeps as long as the limit requires, in slices of at most
    /// 100 ms so that a raised `cancel` flag ends the wait promptly even at tiny rates.
    pub fn take(&self, bytes: u64, cancel: &AtomicBool) {
        let deadline = Instant::now() + self.delay_after(bytes, Instant::now());
        loop {
            let now = Instant::now();
            if now >= deadline || cancel.load(Ordering::Relaxed) {
                return;
            }
            std::thread::sleep((deadline - now).min(Duration::from_millis(100)));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delay_grows_with_bytes_over_the_rate() {
        let t = Throttle::new(1 << 20);
        let now = t.start;
        assert_eq!(t.delay_after(1 << 20, now), Duration::from_secs(1));
        assert_eq!(t.delay_after(1 << 20, now), Duration::from_secs(2));
        let unlimited = Throttle::new(0);
        assert_eq!(unlimited.delay_after(1 << 40, now), Duration::ZERO);
    }

    #[test]
    fn a_raised_cancel_flag_ends_a_long_wait() {
        let t = Throttle::new(50); // 50 B/s: one MiB would wait for hours
        let start = Instant::now();
        t.take(1 << 20, &AtomicBool::new(true));
        assert!(start.elapsed() < Duration::from_secs(1));
    }
}
