//! Bandwidth limit shared by all workers: each worker charges the bytes it moved and sleeps
//! until they are due under the limit.
//!
//! The limit is fixed ([`Throttle::new`]) or follows a [`RateLimit`] that may change while
//! the copy runs ([`Throttle::live`]). Bytes are placed on one shared schedule ([`Schedule`]):
//! byte position `p` (the running total of charged bytes) is due at
//! `base + (p - base_pos) / rate`. When the limit changes the schedule is re-based at that
//! moment, so neither the allowance left unused at the old rate (a burst after a raise) nor
//! the bytes already moved at the old rate (a stall after a lowering) carry over; only bytes
//! still waiting are re-timed at the new rate. Waiting workers look at the limit again at
//! least every 100 ms, so a change takes effect within that.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use vmshift_core::RateLimit;

/// Longest single sleep of a waiting worker: bounds how late it sees a cancel or a new limit.
const SLICE: Duration = Duration::from_millis(100);

/// The shared byte schedule under one limit (pure: every instant is passed in).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Schedule {
    /// Limit in bytes/s (0 = unlimited).
    pub rate: u64,
    /// The instant at which byte position `base_pos` is due.
    pub base: Instant,
    /// Byte position due at `base`.
    pub base_pos: u64,
    /// Bytes charged so far (the position of the last charged byte).
    pub charged: u64,
}

impl Schedule {
    /// An empty schedule at `rate` bytes/s (0 = unlimited) starting at `now`.
    pub fn new(rate: u64, now: Instant) -> Self {
        Schedule {
            rate,
            base: now,
            base_pos: 0,
            charged: 0,
        }
    }

    /// Charges `bytes` more; returns the position that ends them.
    pub fn charge(&mut self, bytes: u64) -> u64 {
        self.charged = self.charged.saturating_add(bytes);
        self.charged
    }

    /// Switches to `rate` bytes/s at `now`. Bytes charged but not yet due under the old
    /// rate keep waiting, re-timed at the new rate from `now`; an allowance the old rate
    /// left unused (the copy was slower than the limit) is dropped.
    pub fn rebase(&mut self, rate: u64, now: Instant) {
        if rate == self.rate {
            return;
        }
        let due_now = if self.rate == 0 {
            self.charged
        } else {
            let elapsed = now.saturating_duration_since(self.base).as_nanos();
            let due = u128::from(self.rate) * elapsed / 1_000_000_000;
            let due = u64::try_from(due).unwrap_or(u64::MAX);
            self.base_pos.saturating_add(due).min(self.charged)
        };
        self.rate = rate;
        self.base = now.max(self.base);
        self.base_pos = due_now;
    }

    /// How long the worker whose bytes end at position `pos` must still wait at `now`.
    pub fn wait(&self, pos: u64, now: Instant) -> Duration {
        if self.rate == 0 || pos <= self.base_pos {
            return Duration::ZERO;
        }
        let after_base = Duration::from_secs_f64((pos - self.base_pos) as f64 / self.rate as f64);
        (self.base + after_base).saturating_duration_since(now)
    }
}

/// Where the limit comes from.
#[derive(Debug, Clone, Copy)]
enum Limit<'a> {
    Fixed(u64),
    Live(&'a RateLimit),
}

/// A shared byte-rate limit.
#[derive(Debug)]
pub struct Throttle<'a> {
    limit: Limit<'a>,
    schedule: Mutex<Schedule>,
}

impl Throttle<'static> {
    /// A fixed limit of `rate` bytes/s (0 = unlimited).
    pub fn new(rate: u64) -> Self {
        Throttle {
            limit: Limit::Fixed(rate),
            schedule: Mutex::new(Schedule::new(rate, Instant::now())),
        }
    }
}

impl<'a> Throttle<'a> {
    /// A limit that follows `limit` (bytes/s, 0 = unlimited), read at every charge and at
    /// least every 100 ms while a worker waits.
    pub fn live(limit: &'a RateLimit) -> Self {
        Throttle {
            limit: Limit::Live(limit),
            schedule: Mutex::new(Schedule::new(limit.get(), Instant::now())),
        }
    }

    /// The limit now, bytes/s (0 = unlimited).
    pub fn rate(&self) -> u64 {
        match self.limit {
            Limit::Fixed(r) => r,
            Limit::Live(l) => l.get(),
        }
    }

    fn schedule(&self) -> std::sync::MutexGuard<'_, Schedule> {
        // The schedule is plain data, valid whatever a panicking holder did.
        self.schedule.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Charges `bytes` at `now` under the current limit; returns their end position for
    /// [`Self::wait_for`].
    pub fn charge(&self, bytes: u64, now: Instant) -> u64 {
        let rate = self.rate();
        let mut s = self.schedule();
        s.rebase(rate, now);
        s.charge(bytes)
    }

    /// How long the bytes ending at `pos` must still wait at `now` under the current limit.
    pub fn wait_for(&self, pos: u64, now: Instant) -> Duration {
        let rate = self.rate();
        let mut s = self.schedule();
        s.rebase(rate, now);
        s.wait(pos, now)
    }

    /// Charges `bytes` at `now` and returns how long the caller must wait (used by
    /// [`Self::take`]; the limit is looked at once).
    pub fn delay_after(&self, bytes: u64, now: Instant) -> Duration {
        let pos = self.charge(bytes, now);
        self.wait_for(pos, now)
    }

    /// Accounts `bytes` and sleeps as long as the limit requires, in slices of at most
    /// 100 ms so that a raised `cancel` flag ends the wait promptly even at tiny rates and a
    /// changed limit re-times the wait.
    pub fn take(&self, bytes: u64, cancel: &AtomicBool) {
        if self.rate() == 0 && matches!(self.limit, Limit::Fixed(_)) {
            return;
        }
        let pos = self.charge(bytes, Instant::now());
        loop {
            let wait = self.wait_for(pos, Instant::now());
            if wait.is_zero() || cancel.load(Ordering::Relaxed) {
                return;
            }
            std::thread::sleep(wait.min(SLICE));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    fn secs(s: f64) -> Duration {
        Duration::from_secs_f64(s)
    }

    #[test]
    fn delay_grows_with_bytes_over_the_rate() {
        let t = Throttle::new(MIB);
        let now = t.schedule().base;
        assert_eq!(t.delay_after(MIB, now), Duration::from_secs(1));
        assert_eq!(t.delay_after(MIB, now), Duration::from_secs(2));
        let unlimited = Throttle::new(0);
        assert_eq!(unlimited.delay_after(1 << 40, now), Duration::ZERO);
    }

    #[test]
    fn a_raise_retimes_waiting_bytes_without_a_burst() {
        let t0 = Instant::now();
        let mut s = Schedule::new(8 * MIB, t0);
        // 16 MiB charged at once: due at 2 s under 8 MiB/s
        let pos = s.charge(16 * MIB);
        assert_eq!(s.wait(pos, t0), secs(2.0));
        // at 1 s, 8 MiB are due; the other 8 MiB now go at 64 MiB/s: 1/8 s from then
        let t1 = t0 + secs(1.0);
        s.rebase(64 * MIB, t1);
        assert_eq!(s.wait(pos, t1), secs(0.125));
        // a fresh chunk after that waits only for its own bytes at the new rate
        let next = s.charge(64 * MIB);
        assert_eq!(s.wait(next, t1), secs(1.125));
    }

    #[test]
    fn an_allowance_unused_at_the_old_rate_is_not_a_burst_after_a_raise() {
        let t0 = Instant::now();
        let mut s = Schedule::new(MIB, t0);
        s.charge(MIB); // 1 MiB in 10 s: 9 s of allowance unused
        let t1 = t0 + secs(10.0);
        s.rebase(2 * MIB, t1);
        let pos = s.charge(20 * MIB);
        assert_eq!(s.wait(pos, t1), secs(10.0));
    }

    #[test]
    fn a_lowering_does_not_charge_bytes_already_moved_at_the_old_rate() {
        let t0 = Instant::now();
        let mut s = Schedule::new(64 * MIB, t0);
        s.charge(640 * MIB); // exactly on schedule at 10 s
        let t1 = t0 + secs(10.0);
        s.rebase(MIB, t1);
        let pos = s.charge(MIB);
        assert_eq!(s.wait(pos, t1), secs(1.0));
    }

    #[test]
    fn zero_lifts_the_limit_and_a_later_limit_applies_from_then() {
        let t0 = Instant::now();
        let mut s = Schedule::new(MIB, t0);
        let pos = s.charge(100 * MIB);
        s.rebase(0, t0);
        assert_eq!(s.wait(pos, t0), Duration::ZERO);
        let moved = s.charge(1000 * MIB); // unlimited: due at once
        assert_eq!(s.wait(moved, t0), Duration::ZERO);
        let t1 = t0 + secs(1.0);
        s.rebase(4 * MIB, t1);
        let pos = s.charge(4 * MIB);
        assert_eq!(s.wait(pos, t1), secs(1.0));
    }

    #[test]
    fn a_live_throttle_follows_its_rate_limit() {
        let limit = RateLimit::new(0);
        let t = Throttle::live(&limit);
        let t0 = t.schedule().base;
        assert_eq!(t.delay_after(64 * MIB, t0), Duration::ZERO);
        limit.set(MIB); // set on a copy that started unlimited
        let pos = t.charge(2 * MIB, t0);
        assert_eq!(t.wait_for(pos, t0), secs(2.0));
        limit.set(4 * MIB);
        assert_eq!(t.wait_for(pos, t0), secs(0.5));
        limit.set(0);
        assert_eq!(t.wait_for(pos, t0), Duration::ZERO);
    }

    #[test]
    fn a_raised_cancel_flag_ends_a_long_wait() {
        let t = Throttle::new(50); // 50 B/s: one MiB would wait for hours
        let start = Instant::now();
        t.take(1 << 20, &AtomicBool::new(true));
        assert!(start.elapsed() < Duration::from_secs(1));
    }
}
