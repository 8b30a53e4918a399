//! The copy engine: `threads` workers pull work units in order, read each data chunk from the
//! source, write its non-zero runs to the target, zero what must read as zero, hash the chunk
//! for verification, and honour the bandwidth limit and cancellation between chunks. Buffered
//! copies drop each chunk's source pages and hand its target pages to the disk a few chunks
//! later ([`crate::writeback`]), so the page cache holds a few chunks, not the image.

use crate::digest::{block_hashes, chunk_digest_of, SparseDigest};
use crate::io::{AlignedBuf, FastSource};
use crate::plan::{clip, plan_units, Unit};
use crate::readback::ReadBack;
use crate::throttle::Throttle;
use crate::writeback::WriteBehind;
use crate::zero::zero_runs;
use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};
use vmshift_core::extent::{Extent, ExtentKind};
use vmshift_image::{ImageReader, TargetImage};

/// Why a copy stopped.
#[derive(Debug, thiserror::Error)]
pub enum CopyError {
    /// Reading the source failed at guest `offset`.
    #[error("read error in the source at guest offset {offset:#x}: {source}")]
    Read {
        /// Guest offset.
        offset: u64,
        /// The I/O error.
        source: io::Error,
    },
    /// Writing the target failed at guest `offset`.
    #[error("write error in the target at guest offset {offset:#x}: {source}")]
    Write {
        /// Guest offset.
        offset: u64,
        /// The I/O error (ENOSPC included).
        source: io::Error,
    },
    /// Reading a chunk back from the target for verification failed at guest `offset`.
    #[error("read-back error in the target at guest offset {offset:#x}: {source}")]
    ReadBack {
        /// Guest offset.
        offset: u64,
        /// The I/O error.
        source: io::Error,
    },
    /// The kernel could not write part of the target back to the disk: found by the
    /// write-behind of a buffered copy ([`crate::writeback`]; which range is not known) or
    /// by an `fsync` of the target (the message names it).
    #[error("writing the target back to disk failed: {0}")]
    Writeback(io::Error),
    /// The cancel flag was raised; stopped at a chunk boundary.
    #[error("cancelled")]
    Cancelled,
    /// A [`CopyHooks::on_chunk`] callback failed (e.g. the checkpoint could not be made
    /// durable); the message is the callback's, one line.
    #[error("{0}")]
    Hook(String),
}

impl CopyError {
    /// A read error at `offset`.
    pub fn read(offset: u64, source: io::Error) -> Self {
        CopyError::Read { offset, source }
    }

    /// A write error at `offset`.
    pub fn write(offset: u64, source: io::Error) -> Self {
        CopyError::Write { offset, source }
    }

    /// A read-back error at `offset`.
    pub fn read_back(offset: u64, source: io::Error) -> Self {
        CopyError::ReadBack { offset, source }
    }

    /// The target ran out of space (ENOSPC) or quota (EDQUOT), while writing or writing back.
    pub fn is_no_space(&self) -> bool {
        let source = match self {
            CopyError::Write { source, .. } | CopyError::Writeback(source) => source,
            _ => return false,
        };
        // By kind, not errno: a checkpoint's fsync error keeps its kind under its message.
        matches!(
            source.kind(),
            io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded
        )
    }
}

/// Progress counters shared with whoever draws the progress bar. All values are bytes.
#[derive(Debug, Default)]
pub struct Counters {
    /// Guest bytes the current pass must process (data chunks).
    pub total: AtomicU64,
    /// Guest bytes processed so far in the current pass.
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
        self.total.store(total, Ordering::Relaxed);
        self.done.store(0, Ordering::Relaxed);
    }
}

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
    /// Guest bytes processed in data chunks.
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
    let zero_in_chunks = need_zero_writes || hooks.chunks_not_zero;
    let units = plan_units(extents, opts.chunk, need_zero_writes);
    let work: Vec<Unit> = match hooks.skip {
        Some(skip) => units
            .iter()
            .copied()
            .filter(|u| !matches!(u, Unit::Chunk(i) if skip.contains(i)))
            .collect(),
        None => units.clone(),
    };
    let chunk_bytes: u64 = work
        .iter()
        .map(|u| match u {
            Unit::Chunk(i) => opts.chunk.min(size - i * opts.chunk),
            Unit::Zero { .. } => 0,
        })
        .sum();
    counters.start_pass(chunk_bytes);
    let digest = opts.hash.then(|| SparseDigest::new(size));
    let throttle = match hooks.rate {
        Some(limit) => Throttle::live(limit),
        None => Throttle::new(opts.bwlimit),
    };
    let fast = FastSource::new(source, opts.direct || crate::io::direct_reads_requested())
        .releasing_behind(opts.threads);
    // One chunk per worker in writeback: enough to keep the disk busy (2 GiB raw→raw:
    // 1, 4, 8 and 16 measured alike; README, "Performance").
    let behind = WriteBehind::new(target, opts.threads, !opts.direct);
    let copied = for_each_unit(
        &work,
        opts.threads,
        opts.chunk,
        size,
        cancel,
        |unit, buf| match unit {
            Unit::Zero { offset, len, .. } => {
                target
                    .write_zeroes(offset, len)
                    .map_err(|e| CopyError::write(offset, e))?;
                Ok(())
            }
            Unit::Chunk(idx) => {
                let start = idx * opts.chunk;
                let pieces = fill_pieces(extents, start, buf, |dst, off| fast.read_at(dst, off))?;
                fast.done_reading(start, buf.len() as u64);
                // Wait before writing, so a limited copy never bursts ahead of its rate.
                let data_read: u64 = pieces
                    .iter()
                    .filter(|p| p.kind == ExtentKind::Data)
                    .map(|p| p.len)
                    .sum();
                throttle.take(data_read, cancel);
                let mut written = 0u64;
                for p in &pieces {
                    let at = buf_index(p.offset - start);
                    let data = &buf[at..at + buf_index(p.len)];
                    match p.kind {
                        ExtentKind::Data => {
                            for (zero, s, n) in zero_runs(data, opts.zero_granularity) {
                                let off = p.offset + s as u64;
                                if zero {
                                    if zero_in_chunks || opts.shallow {
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
                            if zero_in_chunks || p.kind == ExtentKind::ExplicitZero {
                                target
                                    .write_zeroes(p.offset, p.len)
                                    .map_err(|e| CopyError::write(p.offset, e))?;
                            }
                            counters.skipped.fetch_add(p.len, Ordering::Relaxed);
                        }
                        ExtentKind::Backing => {}
                    }
                }
                let len = buf.len() as u64;
                // One hash pass over the source bytes serves the source digest, the journal
                // and (when the read-back matches) the target digest.
                let blocks =
                    if digest.is_some() || hooks.on_chunk.is_some() || hooks.read_back.is_some() {
                        block_hashes(start, buf)
                    } else {
                        Vec::new()
                    };
                if let Some(d) = &digest {
                    d.extend(&blocks);
                }
                if let Some(rb) = hooks.read_back {
                    rb.chunk(idx, buf, &blocks)?;
                }
                behind.chunk_done(start, len)?;
                if let Some(cb) = hooks.on_chunk {
                    cb(ChunkDone {
                        index: idx,
                        offset: start,
                        len,
                        bytes: written,
                        digest: chunk_digest_of(&blocks, len),
                    })?;
                }
                counters.add_done(len);
                Ok(())
            }
        },
    );
    fast.release_all();
    let finished = behind.finish();
    copied?;
    finished?;
    // Zero extents outside data chunks were skipped too, written or not.
    let zero_total: u64 = extents
        .iter()
        .filter(|e| matches!(e.kind, ExtentKind::Zero | ExtentKind::ExplicitZero))
        .map(|e| e.len)
        .sum();
    let in_chunks_zero: u64 = units
        .iter()
        .filter_map(|u| match u {
            Unit::Chunk(i) => Some(
                clip(
                    extents,
                    i * opts.chunk,
                    (i * opts.chunk + opts.chunk).min(size),
                )
                .iter()
                .filter(|e| matches!(e.kind, ExtentKind::Zero | ExtentKind::ExplicitZero))
                .map(|e| e.len)
                .sum::<u64>(),
            ),
            Unit::Zero { .. } => None,
        })
        .sum();
    counters
        .skipped
        .fetch_add(zero_total - in_chunks_zero, Ordering::Relaxed);
    Ok(CopyStats {
        bytes_copied: counters.copied.load(Ordering::Relaxed),
        bytes_skipped_zero: counters.skipped.load(Ordering::Relaxed),
        bytes_processed: chunk_bytes,
        elapsed: started.elapsed(),
        source_digest: digest,
    })
}

/// Copy workers when the user names none: the copy is I/O-bound, so there are more workers
/// than CPUs to keep several reads and writes in flight (each worker holds one chunk
/// buffer: 8 workers × 2 MiB buffered chunks = 16 MiB, × 8 MiB direct ones = 64 MiB).
pub fn default_threads() -> usize {
    let cpus = std::thread::available_parallelism().map_or(2, |n| n.get());
    (cpus * 2).clamp(8, 16)
}

/// An offset or length inside one chunk buffer as an index. Chunk buffers are allocated in
/// memory, so their offsets always fit in `usize`.
pub fn buf_index(v: u64) -> usize {
    usize::try_from(v).expect("offset inside an in-memory chunk buffer")
}

/// Fills `buf` with the guest bytes of the chunk at `start`: data pieces are read, zero
/// pieces zero-filled; backing pieces are left as they are (shallow copies do not use them).
/// Returns the pieces. Reads go through `source` (`O_DIRECT` where it was enabled and `buf`
/// is page-aligned, e.g. an [`crate::io::AlignedBuf`]).
///
/// # Errors
/// [`CopyError::Read`] with the offset of the failed read.
pub fn fill_chunk(
    source: &FastSource<'_>,
    extents: &[Extent],
    start: u64,
    buf: &mut [u8],
) -> Result<Vec<Extent>, CopyError> {
    fill_pieces(extents, start, buf, |dst, off| source.read_at(dst, off))
}

/// [`fill_chunk`] with the data reads done by `read`.
pub(crate) fn fill_pieces(
    extents: &[Extent],
    start: u64,
    buf: &mut [u8],
    read: impl Fn(&mut [u8], u64) -> io::Result<()>,
) -> Result<Vec<Extent>, CopyError> {
    let end = start + buf.len() as u64;
    let pieces = clip(extents, start, end);
    for p in &pieces {
        let at = buf_index(p.offset - start);
        let dst = &mut buf[at..at + buf_index(p.len)];
        match p.kind {
            ExtentKind::Data => read(dst, p.offset).map_err(|e| CopyError::read(p.offset, e))?,
            _ => dst.fill(0),
        }
    }
    Ok(pieces)
}

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
