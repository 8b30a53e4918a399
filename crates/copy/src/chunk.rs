//! Filling one chunk buffer with a chunk's guest bytes, the first step of copying, digesting or
//! repairing it.

use crate::error::CopyError;
use crate::io::{buf_index, FastSource};
use crate::plan::clip;
use std::io;
use vmshift_core::extent::{Extent, ExtentKind};

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
