//! The content digest (`blake3-sparse-1MiB`): proves two images hold the same guest view
//! without hashing terabytes of zeroes.
//!
//! The guest view of `size` bytes is cut into 1 MiB blocks (the last may be shorter). Blocks
//! that are entirely zero contribute nothing; every other block contributes its index
//! (u64 little-endian) and its BLAKE3 hash. The digest is BLAKE3 over those pairs in index
//! order followed by `size` (u64 little-endian). It depends on content only, never on how
//! either image allocates it, so a sparse qcow2 and a dense raw holding the same bytes match.

use crate::chunk::fill_pieces;
use crate::error::CopyError;
use crate::io::buf_index;
use crate::plan::{plan_units, Unit};
use crate::progress::Counters;
use crate::workers::for_each_unit;
use crate::zero::is_zero;
use std::collections::BTreeMap;
use std::sync::atomic::AtomicBool;
use std::sync::Mutex;
use vmshift_core::extent::Extent;
use vmshift_image::ImageReader;

/// Digest block size in bytes.
pub const DIGEST_BLOCK: u64 = 1 << 20;

/// Name recorded in reports.
pub const ALGORITHM: &str = "blake3-sparse-1MiB";

/// Per-block hashes of the non-zero blocks of a guest view, filled in any order.
#[derive(Debug)]
pub struct SparseDigest {
    size: u64,
    blocks: Mutex<BTreeMap<u64, [u8; 32]>>,
}

impl SparseDigest {
    /// An empty digest for a guest view of `size` bytes.
    pub fn new(size: u64) -> Self {
        SparseDigest {
            size,
            blocks: Mutex::new(BTreeMap::new()),
        }
    }

    /// Guest bytes covered.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Records `blocks` from [`block_hashes`]: hashes of bytes this guest view is known to
    /// hold (already computed over the same bytes, so they are not hashed again).
    pub fn extend(&self, blocks: &[BlockHash]) {
        if !blocks.is_empty() {
            let mut map = self.blocks.lock().unwrap_or_else(|p| p.into_inner());
            map.extend(blocks.iter().copied());
        }
    }

    /// Hashes `buf`, the guest bytes at `offset` (a multiple of [`DIGEST_BLOCK`]); bytes past
    /// `size` are ignored.
    pub fn add(&self, offset: u64, buf: &[u8]) {
        debug_assert_eq!(offset % DIGEST_BLOCK, 0);
        let usable = buf_index(self.size.saturating_sub(offset).min(buf.len() as u64));
        self.extend(&block_hashes(offset, &buf[..usable]));
    }

    /// The final digest as lowercase hex.
    pub fn hex(&self) -> String {
        let map = self.blocks.lock().unwrap_or_else(|p| p.into_inner());
        let mut h = blake3::Hasher::new();
        for (idx, hash) in map.iter() {
            h.update(&idx.to_le_bytes());
            h.update(hash);
        }
        h.update(&self.size.to_le_bytes());
        h.finalize().to_hex().to_string()
    }

    /// Index of the first block whose content differs between `self` and `other`.
    pub fn first_differing_block(&self, other: &SparseDigest) -> Option<u64> {
        let a = self.blocks.lock().unwrap_or_else(|p| p.into_inner());
        let b = other.blocks.lock().unwrap_or_else(|p| p.into_inner());
        let keys: std::collections::BTreeSet<u64> = a.keys().chain(b.keys()).copied().collect();
        keys.into_iter().find(|k| a.get(k) != b.get(k))
    }
}

/// One non-zero digest block: its index (guest offset / [`DIGEST_BLOCK`]) and BLAKE3 hash.
pub type BlockHash = (u64, [u8; 32]);

/// The [`BlockHash`]es of the non-zero blocks of `buf`, the guest bytes at `offset` (a
/// multiple of [`DIGEST_BLOCK`]), in index order. The one BLAKE3 pass a copy makes over a
/// chunk: the source digest, the journal's [`chunk_digest_of`] and, when the read-back
/// matches, the target digest are all built from it.
pub fn block_hashes(offset: u64, buf: &[u8]) -> Vec<BlockHash> {
    buf.chunks(buf_index(DIGEST_BLOCK))
        .enumerate()
        .filter(|(_, b)| !is_zero(b))
        .map(|(i, b)| {
            (
                offset / DIGEST_BLOCK + i as u64,
                *blake3::hash(b).as_bytes(),
            )
        })
        .collect()
}

/// [`chunk_digest`] of a chunk of `len` guest bytes from its [`block_hashes`].
pub fn chunk_digest_of(blocks: &[BlockHash], len: u64) -> [u8; 32] {
    let mut h = blake3::Hasher::new();
    for (idx, hash) in blocks {
        h.update(&idx.to_le_bytes());
        h.update(hash);
    }
    h.update(&len.to_le_bytes());
    *h.finalize().as_bytes()
}

/// The digest of one chunk of guest bytes at `offset` (a multiple of [`DIGEST_BLOCK`]): the
/// same per-block construction as the image digest, over `buf` only. Journals record it
/// per copied chunk so a resume can prove source and partial target still hold that chunk.
pub fn chunk_digest(offset: u64, buf: &[u8]) -> [u8; 32] {
    chunk_digest_of(&block_hashes(offset, buf), buf.len() as u64)
}

/// Digests the first `size` guest bytes of `reader` using its block status, with `threads`
/// workers reading `chunk`-byte chunks (a multiple of [`DIGEST_BLOCK`]).
///
/// # Errors
/// [`CopyError`] on a read error or cancellation.
pub fn digest_image(
    reader: &ImageReader,
    size: u64,
    threads: usize,
    chunk: u64,
    cancel: &AtomicBool,
    counters: &Counters,
) -> Result<SparseDigest, CopyError> {
    digest_image_with(reader, size, threads, chunk, false, cancel, counters)
}

/// [`digest_image`], reading with `O_DIRECT` where possible when `direct` is set (the
/// image's data does not pass through the page cache); buffered reads are dropped from it
/// once hashed ([`crate::io::FastSource::release`]), so neither way leaves the image cached.
///
/// # Errors
/// [`CopyError`] on a read error or cancellation.
pub fn digest_image_with(
    reader: &ImageReader,
    size: u64,
    threads: usize,
    chunk: u64,
    direct: bool,
    cancel: &AtomicBool,
    counters: &Counters,
) -> Result<SparseDigest, CopyError> {
    // Read once: dropped from the page cache a few chunks later, as the copy does.
    let fast = crate::io::FastSource::new(reader, direct).releasing_behind(threads);
    let extents: Vec<Extent> = reader
        .extents(0, size, false)
        .map_err(|e| CopyError::read(0, e))?;
    let units = plan_units(&extents, chunk, false);
    counters.start_pass(crate::plan::data_bytes(&extents, &units, chunk, size));
    let digest = SparseDigest::new(size);
    let read = for_each_unit(&units, threads, chunk, size, cancel, |unit, buf| {
        let Unit::Chunk(idx) = unit else {
            return Ok(());
        };
        let start = idx * chunk;
        let pieces = fill_pieces(&extents, start, buf, |dst, off| fast.read_at(dst, off))?;
        digest.add(start, buf);
        fast.done_reading(start, buf.len() as u64);
        let data: u64 = pieces
            .iter()
            .filter(|p| p.kind == vmshift_core::extent::ExtentKind::Data)
            .map(|p| p.len)
            .sum();
        counters.add_done(data);
        Ok(())
    });
    fast.release_all();
    read?;
    Ok(digest)
}

/// The first guest offset at which `a` and `b` differ, given their digests: the differing
/// block is read from both and compared byte by byte.
pub fn first_difference(
    da: &SparseDigest,
    db: &SparseDigest,
    a: &ImageReader,
    b: &ImageReader,
) -> Option<u64> {
    let block = da.first_differing_block(db)?;
    let start = block * DIGEST_BLOCK;
    let len = buf_index(DIGEST_BLOCK.min(da.size().saturating_sub(start)));
    let mut x = vec![0u8; len];
    let mut y = vec![0u8; len];
    if a.read_at(&mut x, start).is_err() || b.read_at(&mut y, start).is_err() {
        return Some(start);
    }
    let i = x.iter().zip(&y).position(|(p, q)| p != q).unwrap_or(0);
    Some(start + i as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digest_ignores_allocation_and_zero_blocks_but_not_content_or_size() {
        let a = SparseDigest::new(3 << 20);
        let mut buf = vec![0u8; 3 << 20];
        buf[(1 << 20) + 5] = 9;
        a.add(0, &buf);
        let b = SparseDigest::new(3 << 20);
        b.add(1 << 20, &buf[1 << 20..2 << 20]);
        assert_eq!(a.hex(), b.hex());
        let c = SparseDigest::new(4 << 20);
        c.add(1 << 20, &buf[1 << 20..2 << 20]);
        assert_ne!(a.hex(), c.hex(), "size is part of the digest");
        let d = SparseDigest::new(3 << 20);
        let mut other = buf.clone();
        other[(1 << 20) + 6] = 1;
        d.add(0, &other);
        assert_ne!(a.hex(), d.hex());
        assert_eq!(a.first_differing_block(&d), Some(1));
    }

    #[test]
    fn one_hash_pass_gives_the_chunk_digest_and_the_image_digest() {
        let mut buf = vec![0u8; 3 << 20];
        buf[(2 << 20) + 1] = 7;
        let blocks = block_hashes(8 << 20, &buf);
        assert_eq!(blocks.len(), 1, "zero blocks are not hashed");
        assert_eq!(blocks[0].0, 10);
        let d = chunk_digest_of(&blocks, buf.len() as u64);
        assert_eq!(d, chunk_digest(8 << 20, &buf));
        let (a, b) = (SparseDigest::new(16 << 20), SparseDigest::new(16 << 20));
        a.extend(&blocks);
        b.add(8 << 20, &buf);
        assert_eq!(a.hex(), b.hex());
        assert_ne!(
            d,
            chunk_digest(0, &buf),
            "the offset is part of a chunk digest"
        );
        buf[5] = 1;
        assert_ne!(d, chunk_digest(8 << 20, &buf));
    }
}
