//! vmshift's offline copy engine.
//!
//! - [`plan`]: turns block status into work units (data chunks and zero ranges).
//! - [`engine`]: parallel workers that read, skip zeroes, write, throttle and hash.
//! - [`digest`]: the content digest that proves source and target hold the same guest view.
//! - [`readback`]: verification during the copy (chunks read back from the target).
//! - [`repair`]: a resumed copy's journaled chunks that no longer match, copied again.
//! - [`zero`]: zero detection.
//! - [`io`]: aligned buffers, `O_DIRECT` source reads, dropping source pages once read.
//! - [`throttle`]: the bandwidth limit, fixed or following a [`vmshift_core::RateLimit`].
//! - [`writeback`]: write-behind, so a buffered copy's target pages never pile up.
//!
//! [`engine`] sits on top and no module below it imports it: what they share with it (the
//! error type, the progress counters, filling a chunk buffer, the worker pool) lives in
//! private files below it (`error`, `progress`, `chunk`, `workers`), re-exported from
//! [`engine`] and here at the paths callers use.

mod chunk;
pub mod digest;
pub mod engine;
mod error;
pub mod io;
pub mod plan;
mod progress;
pub mod readback;
pub mod repair;
pub mod throttle;
mod workers;
pub mod writeback;
pub mod zero;

pub use digest::{
    chunk_digest, digest_image, digest_image_with, first_difference, SparseDigest, DIGEST_BLOCK,
};
pub use engine::{
    copy_image, copy_image_with, default_threads, ChunkDone, CopyError, CopyHooks, CopyOptions,
    CopyStats, Counters,
};
pub use readback::ReadBack;
