//! vmshift's job runner: every front end (the `vmshift` CLI, the HTTP service) turns its
//! input into a [`JobRequest`], hands it to a [`Runner`], and renders the [`JobEvent`]s of
//! the [`JobHandle`] it gets back. The runner does the orchestration — check, copy or
//! mirror, verify, cut over, references, clean up, report — over the journal; decisions are
//! pure functions in `vmshift-core`, I/O lives in `vmshift-image`, `vmshift-copy` and
//! `vmshift-qmp`.
//!
//! Jobs run on threads of their own, so one process can run several at once. The state
//! directory (journal, locks, reports) is `$VMSHIFT_STATE_DIR`, else `/var/lib/vmshift` as
//! root, else `$XDG_STATE_HOME/vmshift`.
//!
//! ```
//! use vmshift_runner::{JobRequest, OfflineRequest, Runner};
//! # let dir = tempfile::tempdir().unwrap();
//! # std::env::set_var("VMSHIFT_STATE_DIR", dir.path().join("state"));
//! # let (a, b) = (dir.path().join("a"), dir.path().join("b"));
//! # std::fs::create_dir_all(&a).unwrap();
//! # std::fs::create_dir_all(&b).unwrap();
//! // A 4 MiB raw disk with some data in it.
//! let disk = a.join("disk.raw");
//! let mut data = vec![0u8; 4 << 20];
//! data[..5].copy_from_slice(b"hello");
//! std::fs::write(&disk, &data).unwrap();
//!
//! let runner = Runner::new();
//! let request = JobRequest::Offline(OfflineRequest::new(&disk, &b));
//! assert!(runner.check(&request).unwrap().go());
//! let job = runner.start(request).unwrap();
//! for event in job.events() {
//!     if let Some(line) = event.to_json_line() {
//!         println!("{line}"); // what `vmshift migrate --json` prints
//!     }
//! }
//! let outcome = job.wait().unwrap();
//! assert_eq!(outcome.code, 0);
//! let report = outcome.report.unwrap();
//! assert_eq!(report.verification.result, "match");
//! assert_eq!(std::fs::read(b.join("disk.raw")).unwrap(), data);
//! ```

pub mod control;
pub mod datastore;
pub mod demo;
pub mod domain;
pub mod error;
pub mod evacuate;
pub mod event;
pub mod files;
pub mod handle;
pub mod journal;
pub mod live;
pub mod offline;
pub mod phases;
pub mod request;
mod runner;
pub mod safety;
pub mod state;

pub use error::{Result, RunnerError};
pub use event::{DiskProgress, JobEvent, PhaseState, Progress};
pub use handle::{ExitCode, JobControl, JobHandle, Outcome};
pub use request::{
    CopyMode, DomainRequest, DropProperty, ImageFormat, IoMode, JobRequest, LiveRequest,
    OfflineRequest, VerifyMode,
};
pub use runner::{DemoLibvirt, Plan, Runner};
