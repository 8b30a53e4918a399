//! vmshift's job journal: every job, its phases and, for offline copies, the chunks already
//! copied and made durable, in one SQLite database (`<state>/journal.sqlite`, WAL mode).
//!
//! Contract with the copy engine (see `vmshift-runner`'s checkpointer): a chunk is recorded only
//! after the target's data for it was `fsync`'d, so every recorded chunk is on stable storage
//! in the partial target; a chunk written but not yet recorded is simply copied again on
//! resume. Commits use WAL with `synchronous=NORMAL`: a crash of the process loses no
//! commit; a power loss may lose the latest ones (their chunks are copied again), never
//! record a chunk whose data is not on disk.
//!
//! - [`store`]: the [`Journal`]: opening, schema and migration, integrity check.
//! - [`jobs`]: job records ([`NewJob`], [`JobRecord`]): create, resolve, list, update.
//! - [`phases`]: phase records ([`PhaseRecord`]) of each run.
//! - [`chunks`]: chunk records ([`ChunkRecord`]) of offline copies made durable.
//! - [`control`]: bandwidth changes asked of a running job by another process.
//! - [`deliveries`]: notifications sent for a job's events ([`DeliveryRecord`]).
//! - [`lock`]: per-job and per-target OS file locks (released when a process dies).
//! - [`error`]: [`JournalError`], naming the database file.

pub mod chunks;
pub mod control;
pub mod deliveries;
pub mod error;
pub mod jobs;
pub mod lock;
pub mod phases;
pub mod store;
#[cfg(test)]
mod tests;

pub use chunks::ChunkRecord;
pub use control::{BwlimitChange, ProgressRecord};
pub use deliveries::{DeliveryRecord, DeliveryUpdate, NewDelivery};
pub use error::JournalError;
pub use jobs::{JobRecord, NewJob};
pub use lock::{FileLock, LockError};
pub use phases::PhaseRecord;
pub use store::{Journal, SCHEMA_VERSION};

/// File name of the journal inside the state directory.
pub const JOURNAL_FILE: &str = "journal.sqlite";
