//! vmshift core: the job model, plan/check decisions, capacity math and report types.
//!
//! Everything here is pure: no files, no sockets, no clocks except where a caller passes
//! timestamps in. The I/O edges (`vmshift-image`, `vmshift-copy`, `vmshift-qmp`,
//! `vmshift-journal`) gather facts into the plain structs defined here, and the decisions
//! (is there room, is the source safe to read, what will the target look like) are made by
//! the functions in [`plan`] and [`capacity`]; which datastore each image of a batch moves
//! to and when each move starts, by [`placement`] and [`schedule`].

pub mod capacity;
pub mod extent;
pub mod fidelity;
pub mod job;
pub mod placement;
pub mod plan;
pub mod rate;
pub mod report;
pub mod schedule;
pub mod size;

pub use extent::{Extent, ExtentKind};
pub use job::{JobId, JobKind, JobStatus, Phase};
pub use rate::RateLimit;
pub use size::{format_bytes, format_limit, millis, parse_size, rate_bytes_per_sec, SizeError};
