//! Progress counters, shared between the copy's workers and whoever draws the progress bar.

use std::sync::atomic::{AtomicU64, Ordering};

/// Progress counters shared with whoever draws the progress bar. All values are bytes.
#[derive(Debug, Default)]
pub struct Counters {
    /// Guest bytes the current pass must process: the data (per block status) in its data
    /// chunks, the unit of the plan's "to copy".
    pub total: AtomicU64,
    /// Of those, the bytes processed so far in the current pass.
    pub done: AtomicU64,
    /// Bytes written to the target as data.
    pub copied: AtomicU64,
    /// Bytes not written because they were zero.
    pub skipped: AtomicU64,
}

impl Counters {
    /// Adds processed bytes.
    pub fn add_done(&self, n: u64) {
        self.done.fetch_add(n, Ordering::Relaxed);
    }

    /// Starts a new pass of `total` bytes.
    pub fn start_pass(&self, total: u64) {
        self.start_pass_at(total, 0);
    }

    /// Starts a new pass of `total` bytes of which `done` are done already (a resumed copy's
    /// reused chunks). `done` is stored first, so a reader that sees the new total sees it.
    pub fn start_pass_at(&self, total: u64, done: u64) {
        self.done.store(done, Ordering::SeqCst);
        self.total.store(total, Ordering::SeqCst);
    }
}
