//! A bandwidth limit that can change while a job runs (`vmshift set JOB --bwlimit`).

use std::sync::atomic::{AtomicU64, Ordering};

/// A shared bandwidth limit in bytes/s; 0 means no limit. Readers (the offline copy
/// engine's throttle, the live driver's poll loop) load it at each chunk or poll, so a
/// [`RateLimit::set`] takes effect within one chunk or poll interval.
#[derive(Debug, Default)]
pub struct RateLimit(AtomicU64);

impl RateLimit {
    /// A limit of `bytes_per_sec` (0 = unlimited).
    pub fn new(bytes_per_sec: u64) -> Self {
        RateLimit(AtomicU64::new(bytes_per_sec))
    }

    /// The current limit, bytes/s (0 = unlimited).
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }

    /// Changes the limit to `bytes_per_sec` (0 lifts it).
    pub fn set(&self, bytes_per_sec: u64) {
        self.0.store(bytes_per_sec, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_set_limit_is_what_readers_see_and_zero_lifts_it() {
        let r = RateLimit::new(20 << 20);
        assert_eq!(r.get(), 20 << 20);
        r.set(0);
        assert_eq!(r.get(), 0);
    }
}
