//! The worker pool: `threads` scoped threads pull work units in order, each with its own
//! page-aligned chunk buffer, until the work runs out, one fails, or the copy is cancelled.

use crate::error::CopyError;
use crate::io::{buf_index, AlignedBuf};
use crate::plan::Unit;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Mutex;

/// Runs `work` over `units` on `threads` scoped threads, in order of index, each thread with
/// its own chunk buffer (resized to the unit's length for chunks). Stops at the first error
/// or when `cancel` is raised.
///
/// # Errors
/// The first error any worker returned, or [`CopyError::Cancelled`].
pub fn for_each_unit<F>(
    units: &[Unit],
    threads: usize,
    chunk: u64,
    size: u64,
    cancel: &AtomicBool,
    work: F,
) -> Result<(), CopyError>
where
    F: Fn(Unit, &mut [u8]) -> Result<(), CopyError> + Sync,
{
    let next = AtomicUsize::new(0);
    let failed = AtomicBool::new(false);
    let first_error: Mutex<Option<CopyError>> = Mutex::new(None);
    let chunk_len = usize::try_from(chunk).expect("chunk fits in memory");
    std::thread::scope(|s| {
        for _ in 0..threads.max(1) {
            s.spawn(|| {
                let mut aligned = AlignedBuf::new(chunk_len);
                let buf = aligned.as_mut_slice();
                loop {
                    if failed.load(Ordering::Relaxed) {
                        return;
                    }
                    if cancel.load(Ordering::Relaxed) {
                        failed.store(true, Ordering::Relaxed);
                        let mut e = first_error.lock().unwrap_or_else(|p| p.into_inner());
                        e.get_or_insert(CopyError::Cancelled);
                        return;
                    }
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(&unit) = units.get(i) else { return };
                    let len = match unit {
                        Unit::Chunk(idx) => buf_index(chunk.min(size - idx * chunk)),
                        Unit::Zero { .. } => 0,
                    };
                    if let Err(err) = work(unit, &mut buf[..len]) {
                        failed.store(true, Ordering::Relaxed);
                        let mut e = first_error.lock().unwrap_or_else(|p| p.into_inner());
                        e.get_or_insert(err);
                        return;
                    }
                }
            });
        }
    });
    match first_error.into_inner().unwrap_or_else(|p| p.into_inner()) {
        Some(e) => Err(e),
        None => Ok(()),
    }
}
