//! Checkpoints of a running offline copy: the target is fsync'd, then the chunks finished
//! since the last checkpoint are recorded in one transaction.

use super::{test_kill_point, JournalLink};
use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, Instant};
use vmshift_copy::{ChunkDone, CopyError};
use vmshift_image::TargetImage;
use vmshift_journal::ChunkRecord;

/// Checkpoint at least every this many guest bytes of copied chunks. 64 MiB is 8 default
/// chunks: a crash costs at most this (plus what was in flight) to copy again, while the
/// `fsync` + one SQLite commit per checkpoint stays far below 5% of copy time (measured: see
/// the README's "Journal overhead").
pub const CHECKPOINT_BYTES: u64 = 64 << 20;

/// Checkpoint at least every this long while chunks complete, so a slow (bandwidth-limited)
/// copy loses at most ~2 s of work; at 50 MiB/s that is 100 MiB → bounded by the byte rule
/// first. Two seconds keeps fsync calls rare enough on slow disks.
pub const CHECKPOINT_INTERVAL: Duration = Duration::from_secs(2);

struct Pending {
    chunks: Vec<ChunkRecord>,
    bytes: u64,
    since: Instant,
    count: u32,
}

/// Records copied chunks in the journal: target `fsync` first, then one transaction, at
/// most every [`CHECKPOINT_BYTES`] or [`CHECKPOINT_INTERVAL`]. Checkpoints run on their own
/// thread ([`Checkpointer::run`]) so copy workers never wait for an fsync.
pub struct Checkpointer<'a> {
    link: &'a JournalLink,
    target: &'a TargetImage,
    partial: &'a Path,
    pending: Mutex<Pending>,
    flushing: Mutex<()>,
    /// The first checkpoint failure: its message, and the I/O error kind when the target's
    /// fsync failed (so running out of space is told as such).
    failed: Mutex<Option<(String, Option<std::io::ErrorKind>)>>,
}

impl<'a> Checkpointer<'a> {
    /// A checkpointer for `target` (the file at `partial`).
    pub fn new(link: &'a JournalLink, target: &'a TargetImage, partial: &'a Path) -> Self {
        Checkpointer {
            link,
            target,
            partial,
            pending: Mutex::new(Pending {
                chunks: Vec::new(),
                bytes: 0,
                since: Instant::now(),
                count: 0,
            }),
            flushing: Mutex::new(()),
            failed: Mutex::new(None),
        }
    }

    /// The engine's per-chunk callback: queues the chunk for the next checkpoint.
    ///
    /// # Errors
    /// The error of an earlier checkpoint that could not be made durable
    /// ([`CopyError::Writeback`] or [`CopyError::Hook`], as [`Checkpointer::flush`]).
    pub fn chunk_done(&self, c: ChunkDone) -> Result<(), CopyError> {
        if let Some((msg, kind)) = self
            .failed
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
        {
            return Err(match kind {
                Some(k) => CopyError::Writeback(std::io::Error::new(k, msg)),
                None => CopyError::Hook(msg),
            });
        }
        let mut p = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        p.chunks.push(ChunkRecord {
            index: c.index,
            offset: c.offset,
            len: c.len,
            bytes: c.bytes,
            data: c.data,
            digest: c.digest,
            run: self.link.run,
        });
        p.bytes += c.len;
        Ok(())
    }

    /// The checkpoint loop: until `stop` is raised, checkpoints whenever
    /// [`CHECKPOINT_BYTES`] of chunks are queued or [`CHECKPOINT_INTERVAL`] has passed.
    /// A failure is remembered and stops the copy at its next chunk.
    pub fn run(&self, stop: &std::sync::atomic::AtomicBool) {
        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
            std::thread::sleep(Duration::from_millis(10));
            let due = {
                let p = self.pending.lock().unwrap_or_else(|e| e.into_inner());
                !p.chunks.is_empty()
                    && (p.bytes >= CHECKPOINT_BYTES || p.since.elapsed() >= CHECKPOINT_INTERVAL)
            };
            if due {
                if let Err(e) = self.flush() {
                    let kind = match &e {
                        CopyError::Writeback(io) => Some(io.kind()),
                        _ => None,
                    };
                    let msg = match e {
                        CopyError::Writeback(io) => io.to_string(),
                        e => e.to_string(),
                    };
                    *self.failed.lock().unwrap_or_else(|e| e.into_inner()) = Some((msg, kind));
                    return;
                }
            }
        }
    }

    /// Makes every completed chunk durable and records it (end of copy).
    ///
    /// # Errors
    /// [`CopyError::Writeback`] naming the file when its fsync failed (the error's kind
    /// kept: running out of space is told as such); [`CopyError::Hook`] when the journal
    /// could not record the checkpoint.
    pub fn flush(&self) -> Result<(), CopyError> {
        let _g = self.flushing.lock().unwrap_or_else(|e| e.into_inner());
        self.flush_now()
    }

    fn flush_now(&self) -> Result<(), CopyError> {
        let (batch, n) = {
            let mut p = self.pending.lock().unwrap_or_else(|e| e.into_inner());
            p.bytes = 0;
            p.since = Instant::now();
            p.count += 1;
            (std::mem::take(&mut p.chunks), p.count)
        };
        if batch.is_empty() {
            return Ok(());
        }
        // Data first: every chunk in `batch` finished its writes before it was queued.
        let t = Instant::now();
        self.target.sync().map_err(|e| {
            CopyError::Writeback(std::io::Error::new(
                e.kind(),
                format!(
                    "{}: fsync failed at a checkpoint: {e}",
                    self.partial.display()
                ),
            ))
        })?;
        test_kill_point(&format!("checkpoint:{n}"));
        let synced = t.elapsed();
        let mut j = self.link.journal.lock().unwrap_or_else(|e| e.into_inner());
        j.record_chunks(&self.link.id, &batch)
            .map_err(|e| CopyError::Hook(format!("checkpoint not recorded: {e}")))?;
        tracing::debug!(
            checkpoint = n,
            chunks = batch.len(),
            fsync_us = u64::try_from(synced.as_micros()).unwrap_or(u64::MAX),
            commit_us = u64::try_from((t.elapsed() - synced).as_micros()).unwrap_or(u64::MAX),
            "checkpoint recorded"
        );
        Ok(())
    }
}
