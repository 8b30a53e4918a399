//! The copy engine: `threads` workers pull work units in order, read each data chunk from the
//! source, write its non-zero runs to the target, zero what must read as zero, hash the chunk
//! for verification, and honour the bandwidth limit and cancellation between chunks. Buffered
//! copies drop each chunk's source pages and hand its target pages to the disk a few chunks
//! later ([`crate::writeback`]), so the page cache holds a few chunks, not the image.

use crate::chunk::fill_pieces;
use crate::digest::{block_hashes, chunk_digest_of, SparseDigest};
use crate::io::FastSource;
use crate::plan::{clip, plan_units, Unit};
use crate::readback::ReadBack;
use crate::throttle::Throttle;
use crate::writeback::WriteBehind;
use crate::zero::zero_runs;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use vmshift_core::extent::{Extent, ExtentKind};
use vmshift_image::{ImageReader, TargetImage};

// The engine's building blocks, at the paths other crates have always used.
pub use crate::chunk::fill_chunk;
pub use crate::error::CopyError;
pub use crate::io::buf_index;
pub use crate::progress::Counters;
pub use crate::workers::for_each_unit;

/// How to copy.
#[derive(Debug, Clone)]
pub struct CopyOptions {
    /// Worker threads (≥ 1).
    pub threads: usize,
    /// Chunk size in bytes (a multiple of 1 MiB).
    pub chunk: u64,
    /// Bandwidth limit in bytes/s of guest data read (0 = unlimited), fixed for the whole
    /// copy unless [`CopyHooks::rate`] is set.
    pub bwlimit: u64,
    /// Zero detection granularity in bytes (4 KiB for raw, the cluster size for qcow2).
    pub zero_granularity: usize,
    /// The target was just created by us and reads as zeroes everywhere (never true for a
    /// reused file: then every zero range is written explicitly).
    pub target_is_zero: bool,
    /// Shallow copy: only the top layer; backing ranges left unallocated, zeroes written as
    /// zero clusters so the backing file does not show through.
    pub shallow: bool,
    /// Hash the guest view while copying (flattened copies only).
    pub hash: bool,
    /// Direct I/O: source reads with `O_DIRECT` where possible (the target, opened with
    /// `direct` in its [`vmshift_image::target::TargetSpec`], leaves no dirty pages behind).
    pub direct: bool,
}

/// What a copy did.
#[derive(Debug)]
pub struct CopyStats {
    /// Bytes written as data.
    pub bytes_copied: u64,
    /// Bytes skipped (holes, zero clusters, zero blocks found in data).
    pub bytes_skipped_zero: u64,
    /// Guest bytes processed: the data (per block status) in the data chunks copied.
    pub bytes_processed: u64,
    /// Wall time.
    pub elapsed: Duration,
    /// The source digest, when `hash` was set.
    pub source_digest: Option<SparseDigest>,
}

/// One data chunk finished: all its writes returned (not yet synced).
#[derive(Debug, Clone, Copy)]
pub struct ChunkDone {
    /// Chunk index (guest offset / chunk size).
    pub index: u64,
    /// Guest offset in bytes.
    pub offset: u64,
    /// Guest bytes the chunk covers.
    pub len: u64,
    /// Bytes written as data in this chunk (zeroes excluded).
    pub bytes: u64,
    /// Guest bytes of the chunk that block status reports as data (what progress counts).
    pub data: u64,
    /// [`crate::digest::chunk_digest`] of the chunk's guest bytes.
    pub digest: [u8; 32],
}

/// Optional checkpoint hooks for resumable copies (journal). The default does nothing.
#[derive(Default)]
pub struct CopyHooks<'a> {
    /// Data chunks (by index) already copied by an earlier run: not read, not written.
    pub skip: Option<&'a std::collections::HashSet<u64>>,
    /// Called on the worker thread after each data chunk's writes returned, in completion
    /// order. An error stops the copy like a write error.
    #[allow(clippy::type_complexity)]
    pub on_chunk: Option<&'a (dyn Fn(ChunkDone) -> Result<(), CopyError> + Sync)>,
    /// The data chunks may hold stale bytes (a reused partial target, restarted ranges):
    /// write their zero runs explicitly even when `target_is_zero` is set. Ranges outside
    /// data chunks still follow `target_is_zero`.
    pub chunks_not_zero: bool,
    /// Read each data chunk back from the target after writing it and hash it there
    /// (verification during the copy; see [`crate::readback`]).
    pub read_back: Option<&'a ReadBack>,
    /// A bandwidth limit (bytes/s of guest data read, 0 = unlimited) that may change while
    /// the copy runs; it replaces [`CopyOptions::bwlimit`]. A change takes effect within
    /// 100 ms, re-timing only the bytes still waiting ([`crate::throttle`]).
    pub rate: Option<&'a vmshift_core::RateLimit>,
}

/// Copies `source` (its block status `extents`, from [`ImageReader::extents`]) into `target`.
///
/// The target is not synced here: the caller syncs before trusting it.
///
/// # Errors
/// [`CopyError`]: the first read or write error (offset in hex), or `Cancelled`.
pub fn copy_image(
    source: &ImageReader,
    extents: &[Extent],
    target: &TargetImage,
    opts: &CopyOptions,
    cancel: &AtomicBool,
    counters: &Counters,
) -> Result<CopyStats, CopyError> {
    copy_image_with(
        source,
        extents,
        target,
        opts,
        &CopyHooks::default(),
        cancel,
        counters,
    )
}

/// [`copy_image`] with checkpoint hooks: chunks in `hooks.skip` are left alone, and
/// `hooks.on_chunk` hears of every chunk written. With `skip` set, `opts.hash` covers only
/// the chunks copied in this call (the caller digests the whole image to verify).
///
/// # Errors
/// As [`copy_image`], plus [`CopyError::Hook`] from the callback.
pub fn copy_image_with(
    source: &ImageReader,
    extents: &[Extent],
    target: &TargetImage,
    opts: &CopyOptions,
    hooks: &CopyHooks<'_>,
    cancel: &AtomicBool,
    counters: &Counters,
) -> Result<CopyStats, CopyError> {
    let started = Instant::now();
    let size = source.virtual_size();
    let need_zero_writes = !opts.target_is_zero;
    let units = plan_units(extents, opts.chunk, need_zero_writes);
    let (work, data_bytes) = pass_work(extents, &units, hooks.skip, opts.chunk, size);
    // A resumed copy's progress counts the whole job: the chunks an earlier run copied are
    // done already (the journal's durable count says the same).
    let all_data = crate::plan::data_bytes(extents, &units, opts.chunk, size);
    counters.start_pass_at(all_data, all_data.saturating_sub(data_bytes));
    let run = ChunkCopy {
        extents,
        target,
        opts,
        hooks,
        cancel,
        counters,
        zero_in_chunks: need_zero_writes || hooks.chunks_not_zero,
        digest: opts.hash.then(|| SparseDigest::new(size)),
        throttle: match hooks.rate {
            Some(limit) => Throttle::live(limit),
            None => Throttle::new(opts.bwlimit),
        },
        fast: FastSource::new(source, opts.direct || crate::io::direct_reads_requested())
            .releasing_behind(opts.threads),
        // One chunk per worker in writeback: enough to keep the disk busy (2 GiB raw→raw:
        // 1, 4, 8 and 16 measured alike; README, "Performance").
        behind: WriteBehind::new(target, opts.threads, !opts.direct),
    };
    let copied = for_each_unit(
        &work,
        opts.threads,
        opts.chunk,
        size,
        cancel,
        |unit, buf| match unit {
            Unit::Zero { offset, len, .. } => target
                .write_zeroes(offset, len)
                .map_err(|e| CopyError::write(offset, e)),
            Unit::Chunk(idx) => run.chunk(idx, buf),
        },
    );
    run.fast.release_all();
    let finished = run.behind.finish();
    copied?;
    finished?;
    // Zero extents outside data chunks were skipped too, written or not.
    counters.skipped.fetch_add(
        zero_outside_chunks(extents, &units, opts.chunk, size),
        Ordering::Relaxed,
    );
    Ok(CopyStats {
        bytes_copied: counters.copied.load(Ordering::Relaxed),
        bytes_skipped_zero: counters.skipped.load(Ordering::Relaxed),
        bytes_processed: data_bytes,
        elapsed: started.elapsed(),
        source_digest: run.digest,
    })
}

/// This pass's work: `units` less the data chunks in `skip`, and the data (per block status)
/// in the data chunks left: what the progress bar counts to, as the plan's "to copy" does.
fn pass_work(
    extents: &[Extent],
    units: &[Unit],
    skip: Option<&std::collections::HashSet<u64>>,
    chunk: u64,
    size: u64,
) -> (Vec<Unit>, u64) {
    let work: Vec<Unit> = match skip {
        Some(skip) => units
            .iter()
            .copied()
            .filter(|u| !matches!(u, Unit::Chunk(i) if skip.contains(i)))
            .collect(),
        None => units.to_vec(),
    };
    let data = crate::plan::data_bytes(extents, &work, chunk, size);
    (work, data)
}

/// Bytes of the zero extents that lie outside every data chunk of `units`: the end-of-copy
/// sweep counts them as skipped, since no worker saw them (written as zero ranges or not).
fn zero_outside_chunks(extents: &[Extent], units: &[Unit], chunk: u64, size: u64) -> u64 {
    let is_zero = |e: &Extent| matches!(e.kind, ExtentKind::Zero | ExtentKind::ExplicitZero);
    let zero_total: u64 = extents.iter().filter(|e| is_zero(e)).map(|e| e.len).sum();
    let in_chunks_zero: u64 = units
        .iter()
        .filter_map(|u| match u {
            Unit::Chunk(i) => Some(
                clip(extents, i * chunk, (i * chunk + chunk).min(size))
                    .iter()
                    .filter(|e| is_zero(e))
                    .map(|e| e.len)
                    .sum::<u64>(),
            ),
            Unit::Zero { .. } => None,
        })
        .sum();
    zero_total - in_chunks_zero
}

/// What the workers of one [`copy_image_with`] share: set up once, borrowed by every chunk.
struct ChunkCopy<'a, 'h> {
    extents: &'a [Extent],
    target: &'a TargetImage,
    opts: &'a CopyOptions,
    hooks: &'a CopyHooks<'h>,
    cancel: &'a AtomicBool,
    counters: &'a Counters,
    /// Zero runs inside data chunks must be written (the target may hold stale bytes).
    zero_in_chunks: bool,
    digest: Option<SparseDigest>,
    throttle: Throttle<'h>,
    fast: FastSource<'a>,
    behind: WriteBehind<'a>,
}

impl ChunkCopy<'_, '_> {
    /// Copies data chunk `idx` through `buf` (its length): read, throttle, write, hash,
    /// verify, hand to write-behind, report to the hook.
    fn chunk(&self, idx: u64, buf: &mut [u8]) -> Result<(), CopyError> {
        let start = idx * self.opts.chunk;
        let fast = &self.fast;
        let pieces = fill_pieces(self.extents, start, buf, |dst, off| fast.read_at(dst, off))?;
        fast.done_reading(start, buf.len() as u64);
        // Wait before writing, so a limited copy never bursts ahead of its rate.
        let data_read: u64 = pieces
            .iter()
            .filter(|p| p.kind == ExtentKind::Data)
            .map(|p| p.len)
            .sum();
        self.throttle.take(data_read, self.cancel);
        let written = self.write_pieces(&pieces, start, buf)?;
        let len = buf.len() as u64;
        let hooks = self.hooks;
        // One hash pass over the source bytes serves the source digest, the journal
        // and (when the read-back matches) the target digest.
        let blocks =
            if self.digest.is_some() || hooks.on_chunk.is_some() || hooks.read_back.is_some() {
                block_hashes(start, buf)
            } else {
                Vec::new()
            };
        if let Some(d) = &self.digest {
            d.extend(&blocks);
        }
        if let Some(rb) = hooks.read_back {
            rb.chunk(idx, buf, &blocks)?;
        }
        self.behind.chunk_done(start, len)?;
        if let Some(cb) = hooks.on_chunk {
            cb(ChunkDone {
                index: idx,
                offset: start,
                len,
                bytes: written,
                data: data_read,
                digest: chunk_digest_of(&blocks, len),
            })?;
        }
        self.counters.add_done(data_read);
        Ok(())
    }

    /// Writes the `pieces` of the chunk at `start` from `buf` (its guest bytes): non-zero runs
    /// of data as data, zero runs and zero pieces as zeroes where the target needs them.
    /// Returns the bytes written as data.
    fn write_pieces(&self, pieces: &[Extent], start: u64, buf: &[u8]) -> Result<u64, CopyError> {
        let (target, opts, counters) = (self.target, self.opts, self.counters);
        let mut written = 0u64;
        for p in pieces {
            let at = buf_index(p.offset - start);
            let data = &buf[at..at + buf_index(p.len)];
            match p.kind {
                ExtentKind::Data => {
                    for (zero, s, n) in zero_runs(data, opts.zero_granularity) {
                        let off = p.offset + s as u64;
                        if zero {
                            if self.zero_in_chunks || opts.shallow {
                                target
                                    .write_zeroes(off, n as u64)
                                    .map_err(|e| CopyError::write(off, e))?;
                            }
                            counters.skipped.fetch_add(n as u64, Ordering::Relaxed);
                        } else {
                            target
                                .write_at(&data[s..s + n], off)
                                .map_err(|e| CopyError::write(off, e))?;
                            counters.copied.fetch_add(n as u64, Ordering::Relaxed);
                            written += n as u64;
                        }
                    }
                }
                ExtentKind::Zero | ExtentKind::ExplicitZero => {
                    if self.zero_in_chunks || p.kind == ExtentKind::ExplicitZero {
                        target
                            .write_zeroes(p.offset, p.len)
                            .map_err(|e| CopyError::write(p.offset, e))?;
                    }
                    counters.skipped.fetch_add(p.len, Ordering::Relaxed);
                }
                ExtentKind::Backing => {}
            }
        }
        Ok(written)
    }
}

/// Copy workers when the user names none: the copy is I/O-bound, so there are more workers
/// than CPUs to keep several reads and writes in flight (each worker holds one chunk
/// buffer: 8 workers × 2 MiB buffered chunks = 16 MiB, × 8 MiB direct ones = 64 MiB).
pub fn default_threads() -> usize {
    let cpus = std::thread::available_parallelism().map_or(2, |n| n.get());
    (cpus * 2).clamp(8, 16)
}
