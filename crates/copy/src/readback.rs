//! Verification while the copy runs: each data chunk is read back from the target right
//! after its writes returned, on the worker that wrote it, while other workers' reads and
//! writes are in flight, instead of a second pass over the whole target after the fsync.
//! Buffered copies read the chunk back from the page cache; direct ones (`--io direct`) from
//! the disk. The bytes read back are compared with the source bytes just written: where they
//! are equal, the source's block hashes are the target's too (one BLAKE3 pass, not two);
//! where they differ, the bytes read back are hashed, so the digests differ and the caller
//! reports the first differing offset as for any mismatch.
//!
//! What it proves is what the pass after the fsync proved: the target, read through the
//! target file, holds the source's guest bytes. [`ReadBack::finish`] closes the two gaps a
//! chunk-by-chunk read leaves, after the target is synced and opened afresh:
//! - data the target holds outside the chunks read back (there should be none: a stray write
//!   shows up here) is read and hashed through the fresh reader;
//! - for qcow2 the chunks were read through the writer's cached mapping tables, so the
//!   fresh reader's mapping (the tables on disk) must equal the writer's; if it does not,
//!   the whole target is digested again through the fresh reader.
//!
//! A chunk is never written again after it is read back: work units are disjoint
//! ([`crate::plan::plan_units`]).

use crate::digest::{digest_image_with, BlockHash, SparseDigest, DIGEST_BLOCK};
use crate::error::CopyError;
use crate::io::{buf_index, AlignedBuf};
use crate::progress::Counters;
use std::fs::File;
use std::sync::atomic::AtomicBool;
use std::sync::Mutex;
use vmshift_core::extent::ExtentKind;
use vmshift_image::ImageReader;

/// The target's digest, built from chunks read back during the copy.
#[derive(Debug)]
pub struct ReadBack {
    reader: ImageReader,
    /// Raw targets written with direct I/O: an `O_DIRECT` descriptor, so chunks are read
    /// back from the disk, not from the page cache (qcow2 targets opened with direct I/O
    /// read that way through their image already).
    direct: Option<File>,
    /// Direct I/O was asked for: a full re-read in [`ReadBack::finish`] uses it too.
    direct_io: bool,
    digest: SparseDigest,
    chunk: u64,
    /// Indices of the chunks read back.
    done: Mutex<Vec<u64>>,
    /// Read-back buffers of [`PIECE`] bytes, one per worker reading back at once.
    spare: Mutex<Vec<AlignedBuf>>,
}

/// Chunks are read back and compared in pieces of this many bytes (a multiple of
/// [`DIGEST_BLOCK`]): a worker's read-back buffer is one piece, whatever the chunk size.
const PIECE: usize = 2 << 20;

impl ReadBack {
    /// Reads back through `reader` (from [`vmshift_image::TargetImage::reader`]) a target of
    /// `size` guest bytes copied in `chunk`-byte chunks (a multiple of [`DIGEST_BLOCK`]).
    /// With `direct`, a raw target is read back with `O_DIRECT` where the file system allows.
    pub fn new(reader: ImageReader, size: u64, chunk: u64, direct: bool) -> Self {
        let direct_io = direct;
        let direct = match &reader {
            ImageReader::Raw { file, .. } if direct => crate::io::reopen_direct(file),
            _ => None,
        };
        ReadBack {
            reader,
            direct,
            direct_io,
            digest: SparseDigest::new(size),
            chunk,
            done: Mutex::new(Vec::new()),
            spare: Mutex::new(Vec::new()),
        }
    }

    /// Reads chunk `index` (guest offset `index × chunk`, `source.len()` bytes) back from the
    /// target and adds it to the target's digest: `source` holds the bytes written there and
    /// `source_blocks` their [`crate::digest::block_hashes`].
    ///
    /// # Errors
    /// [`CopyError::ReadBack`] when the target cannot be read.
    pub fn chunk(
        &self,
        index: u64,
        source: &[u8],
        source_blocks: &[BlockHash],
    ) -> Result<(), CopyError> {
        let start = index * self.chunk;
        let taken = self.spare.lock().unwrap_or_else(|p| p.into_inner()).pop();
        let mut buf = taken.unwrap_or_else(|| AlignedBuf::new(PIECE));
        let result = self.compare(start, source, source_blocks, buf.as_mut_slice());
        self.spare
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(buf);
        result?;
        self.done
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(index);
        Ok(())
    }

    /// Reads `source.len()` target bytes at `start` piece by piece into `buf` and adds them
    /// to the digest (see the module documentation).
    fn compare(
        &self,
        start: u64,
        source: &[u8],
        source_blocks: &[BlockHash],
        buf: &mut [u8],
    ) -> Result<(), CopyError> {
        for (i, want) in source.chunks(PIECE).enumerate() {
            let at = start + (i * PIECE) as u64;
            let got = &mut buf[..want.len()];
            match &self.direct {
                Some(f) => {
                    crate::io::read_direct_head(f, got, at, |b, o| self.reader.read_at(b, o))
                }
                None => self.reader.read_at(got, at),
            }
            .map_err(|e| CopyError::read_back(at, e))?;
            if got == want {
                let first = at / DIGEST_BLOCK;
                let end = first + (want.len() as u64).div_ceil(DIGEST_BLOCK);
                let from = source_blocks.partition_point(|b| b.0 < first);
                let to = source_blocks.partition_point(|b| b.0 < end);
                self.digest.extend(&source_blocks[from..to]);
            } else {
                self.digest.add(at, got);
            }
        }
        Ok(())
    }

    /// The target's digest, once the target is synced: `fresh` is the target opened again
    /// (tables read from disk). Adds the target's data outside the chunks read back, and
    /// falls back to digesting all of `fresh` (with `threads` workers) when its mapping
    /// differs from the writer's.
    ///
    /// # Errors
    /// [`CopyError`] when reading the target fails or on cancellation.
    pub fn finish(
        self,
        fresh: &ImageReader,
        threads: usize,
        cancel: &AtomicBool,
        counters: &Counters,
    ) -> Result<SparseDigest, CopyError> {
        let size = self.digest.size();
        let mut done = self.done.into_inner().unwrap_or_else(|p| p.into_inner());
        done.sort_unstable();
        let ranges = coalesce_chunks(&done, self.chunk, size);
        for &(start, end) in &ranges {
            let differs = self
                .reader
                .first_mapping_difference(fresh, start, end - start)
                .map_err(|e| CopyError::read_back(start, e))?;
            if let Some(at) = differs {
                tracing::warn!(
                    "the target's mapping on disk differs from the writer's at guest offset {at:#x}: reading the whole target again"
                );
                return digest_image_with(
                    fresh,
                    size,
                    threads,
                    self.chunk,
                    self.direct_io,
                    cancel,
                    counters,
                );
            }
        }
        let extents = fresh
            .extents(0, size, false)
            .map_err(|e| CopyError::read_back(0, e))?;
        let mut buf = vec![0u8; buf_index(DIGEST_BLOCK)];
        for e in extents.iter().filter(|e| e.kind == ExtentKind::Data) {
            let first = e.offset / DIGEST_BLOCK;
            let last = (e.offset + e.len).div_ceil(DIGEST_BLOCK);
            for block in first..last {
                let start = block * DIGEST_BLOCK;
                if covered(&ranges, start) {
                    continue;
                }
                let len = buf_index(DIGEST_BLOCK.min(size - start));
                fresh
                    .read_at(&mut buf[..len], start)
                    .map_err(|e| CopyError::read_back(start, e))?;
                self.digest.add(start, &buf[..len]);
            }
        }
        Ok(self.digest)
    }
}

/// Sorted chunk indices → sorted, merged `[start, end)` guest ranges.
fn coalesce_chunks(done: &[u64], chunk: u64, size: u64) -> Vec<(u64, u64)> {
    let mut out: Vec<(u64, u64)> = Vec::new();
    for &i in done {
        let (s, e) = (i * chunk, ((i + 1) * chunk).min(size));
        match out.last_mut() {
            Some(last) if last.1 == s => last.1 = e,
            _ => out.push((s, e)),
        }
    }
    out
}

/// True when the digest block at `start` lies in one of the sorted `ranges`.
fn covered(ranges: &[(u64, u64)], start: u64) -> bool {
    let i = ranges.partition_point(|r| r.1 <= start);
    ranges.get(i).is_some_and(|r| r.0 <= start)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_merge_into_ranges_and_blocks_are_found_in_them() {
        let r = coalesce_chunks(&[0, 1, 3, 4, 7], 8, 60);
        assert_eq!(r, vec![(0, 16), (24, 40), (56, 60)]);
        assert!(covered(&r, 0) && covered(&r, 15) && covered(&r, 24) && covered(&r, 59));
        assert!(!covered(&r, 16) && !covered(&r, 23) && !covered(&r, 40) && !covered(&r, 60));
        assert!(!covered(&[], 0));
    }
}
