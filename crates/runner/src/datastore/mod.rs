//! Datastores: the named entries of the config file's `datastores` list, what each root
//! holds (statvfs, the images under it) and how fast it answers (a direct-I/O probe, cached
//! in the state directory). Every front end reads them through here; placement decisions
//! over them are `vmshift_core::placement`.

mod config;
mod probe;
mod resolve;
mod usage;

pub use config::{DatastoreConfig, DatastoreKind};
pub use probe::{latency, probe, Latency, ProbeMethod, LATENCY_CACHE_FILE, LATENCY_MAX_AGE};
pub use resolve::{resolve_request, resolve_to};
pub use usage::{images, usage, Usage};
