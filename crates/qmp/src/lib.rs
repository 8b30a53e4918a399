//! vmshift's QMP layer: a small synchronous QMP client and the live block-mirror driver.
//!
//! * [`client`]: JSON lines over a Unix socket, command ids and timeouts, an event queue that
//!   keeps every event (unknown ones as raw JSON).
//! * [`features`]: QEMU version and schema-based feature detection (7.2 has no
//!   `block-job-change`; it is detected, never assumed).
//! * [`disk`]: disk discovery from `query-block` and `query-named-block-nodes`.
//! * [`policy`]: the pure decisions (copy mode, convergence bound, ETA), unit tested.
//! * [`live`]: plan and run a live migration of a running VM's disks.
//! * [`leftovers`]: find and clear what an interrupted (killed) run left in QEMU.
//! * [`stamp`]: the test guest's block stamp format and an image verifier.
//! * [`testvm`]: build the test guest and run QEMU processes for tests and the demo.

#![warn(missing_docs)]

pub mod client;
pub mod disk;
pub mod error;
pub mod features;
pub mod leftovers;
pub mod live;
pub mod policy;
pub mod stamp;
pub mod testvm;

pub use client::{Event, Qmp};
pub use disk::DiskInfo;
pub use error::QmpError;
pub use features::{Features, QemuVersion};
pub use live::{
    DiskOutcome, ExistingTarget, LiveError, LiveMigration, LiveOptions, LiveOutcome, LivePlan,
    LiveProgress, TargetFormat,
};
pub use policy::{CopyMode, CopyModeRequest};
