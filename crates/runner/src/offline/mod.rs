//! Offline jobs: an image file moved by vmshift's own copy engine, verified, renamed into
//! place. [`check`] plans, [`job`] records and reports, [`execute`] copies, [`verify`]
//! proves, [`cutover`] finishes, [`resume`] continues an interrupted job.

pub mod check;
pub mod cutover;
pub mod execute;
pub mod job;
pub mod repair;
pub mod resume;
pub mod rollback;
pub mod verify;

pub use crate::files::partial_path;
pub use check::{plan_lines, Checked};
pub use job::{copy_chunk, BUFFERED_CHUNK, CHUNK};
