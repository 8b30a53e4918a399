//! The copy's one error type: what stopped a copy, a digest or a read-back, and where.

use std::io;

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
    /// write-behind of a buffered copy (which range is not known) or by an `fsync` of the
    /// target (the message names it).
    #[error("writing the target back to disk failed: {0}")]
    Writeback(io::Error),
    /// The cancel flag was raised; stopped at a chunk boundary.
    #[error("cancelled")]
    Cancelled,
    /// A `CopyHooks::on_chunk` callback failed (e.g. the checkpoint could not be made
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
