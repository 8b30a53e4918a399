//! When a failed delivery is tried again: exponential backoff (1 s, 2 s, 4 s, … capped at
//! 60 s) for as long as the config's `retry_for_secs` allows, counted from when the
//! notification was queued. Pure; the delivery thread keeps the clock.

use std::time::Duration;

/// The longest wait between two attempts, s.
pub const MAX_BACKOFF_SECS: u64 = 60;

/// The wait after the `attempts`-th failed attempt (1-based): 1 s, 2 s, 4 s, … 60 s.
pub fn backoff(attempts: u32) -> Duration {
    let exp = attempts.saturating_sub(1).min(16);
    Duration::from_secs((1u64 << exp).min(MAX_BACKOFF_SECS))
}

/// The wait before the next attempt after `attempts` failed ones, `elapsed` after the
/// notification was queued, or `None` when that attempt would start after `retry_for`
/// (the delivery has then `failed`).
pub fn next_attempt(attempts: u32, elapsed: Duration, retry_for: Duration) -> Option<Duration> {
    let wait = backoff(attempts);
    (elapsed.saturating_add(wait) <= retry_for).then_some(wait)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_from_one_second_and_stops_at_sixty() {
        let secs: Vec<u64> = (1..=9).map(|a| backoff(a).as_secs()).collect();
        assert_eq!(secs, vec![1, 2, 4, 8, 16, 32, 60, 60, 60]);
        assert_eq!(backoff(u32::MAX).as_secs(), 60);
        assert_eq!(backoff(0).as_secs(), 1);
    }

    #[test]
    fn retries_go_on_until_the_window_closes_then_the_delivery_fails() {
        // Attempts that fail at once: the schedule over the default 300 s.
        let window = Duration::from_secs(300);
        let (mut elapsed, mut attempts, mut waits) = (Duration::ZERO, 0u32, Vec::new());
        loop {
            attempts += 1;
            match next_attempt(attempts, elapsed, window) {
                Some(w) => {
                    waits.push(w.as_secs());
                    elapsed += w;
                }
                None => break,
            }
        }
        assert_eq!(waits, vec![1, 2, 4, 8, 16, 32, 60, 60, 60]);
        assert_eq!(elapsed.as_secs(), 243);
        assert_eq!(attempts, 10);
        // No window: one attempt only.
        assert_eq!(next_attempt(1, Duration::ZERO, Duration::ZERO), None);
        // A slow attempt eats into the window.
        assert_eq!(
            next_attempt(1, Duration::from_secs(10), Duration::from_secs(10)),
            None
        );
    }
}
