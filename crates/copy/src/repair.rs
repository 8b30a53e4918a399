//! Repair of a resumed copy: when verification finds that the target differs from the
//! source, the journaled chunks whose target bytes no longer have their recorded digest (a
//! region altered outside the sample resume reads) are copied again from the source, and
//! only those.

use crate::chunk::fill_chunk;
use crate::digest::chunk_digest;
use crate::error::CopyError;
use crate::io::{buf_index, AlignedBuf, FastSource};
use vmshift_core::Extent;
use vmshift_image::{ImageReader, TargetImage};

/// A chunk the journal recorded as copied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordedChunk {
    /// Guest offset, bytes.
    pub offset: u64,
    /// Length, bytes.
    pub len: u64,
    /// Its [`chunk_digest`] when it was copied.
    pub digest: [u8; 32],
}

/// Reads each of `chunks` from `target_reader`; those whose digest differs from the
/// recorded one are filled again from `source` (whose bytes must still have the recorded
/// digest) and written into `target`. Returns the repaired chunks. The caller syncs the
/// target and verifies again.
///
/// # Errors
/// [`CopyError::Read`] when the source cannot be read or no longer holds what the journal
/// recorded (the repair would copy other data); write and read-back errors as named.
pub fn repair_chunks(
    source: &ImageReader,
    extents: &[Extent],
    target: &TargetImage,
    target_reader: &ImageReader,
    chunks: &[RecordedChunk],
) -> Result<Vec<RecordedChunk>, CopyError> {
    let src = FastSource::new(source, false);
    let mut repaired = Vec::new();
    for c in chunks {
        let mut aligned = AlignedBuf::new(buf_index(c.len));
        let buf = aligned.as_mut_slice();
        target_reader
            .read_at(buf, c.offset)
            .map_err(|source| CopyError::ReadBack {
                offset: c.offset,
                source,
            })?;
        if chunk_digest(c.offset, buf) == c.digest {
            continue;
        }
        fill_chunk(&src, extents, c.offset, buf)?;
        if chunk_digest(c.offset, buf) != c.digest {
            return Err(CopyError::Read {
                offset: c.offset,
                source: std::io::Error::other(
                    "the source no longer holds what the journal recorded for this chunk",
                ),
            });
        }
        target
            .write_at(buf, c.offset)
            .map_err(|source| CopyError::Write {
                offset: c.offset,
                source,
            })?;
        repaired.push(*c);
    }
    Ok(repaired)
}
