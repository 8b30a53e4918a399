//! The live mirror driver: move every selected disk of a running VM with `blockdev-mirror`,
//! pivot them together, or leave the VM entirely on its source.
//!
//! Contract of [`LiveMigration::run`]:
//! * targets are created with exactly the source's virtual size and attached under node names
//!   this driver owns; nothing of the VM's own graph is touched before the pivot;
//! * jobs run with `auto-dismiss=false`, so a job that ended (even on its own, e.g. "different
//!   sizes" or ENOSPC) stays listed by `query-jobs` with its error until dismissed: a job that
//!   is missing from the list is a failure, never "done";
//! * the pivot (`job-complete`) is requested only when every job reports `ready`;
//! * on any failure or cancellation before the pivot every job is cancelled and waited for
//!   until `query-jobs` no longer lists it, the target nodes are deleted (`blockdev-del`) and
//!   the target files this driver created are removed; pre-existing target volumes are kept.

mod cleanup;
mod driver;
mod error;
mod jobs;
mod options;
mod outcome;
mod pivot;
mod plan;
mod progress;
mod state;
mod stats;
mod target;

use std::sync::atomic::AtomicBool;

use crate::client::Qmp;
use vmshift_core::RateLimit;

use driver::Driver;

pub use error::{LiveError, Refusal};
pub use jobs::cancel_and_wait;
pub use options::{ExistingTarget, LiveOptions, TargetFormat};
pub use outcome::LimitChange;
pub use outcome::{DiskOutcome, LiveOutcome};
pub use plan::{target_file_name, LivePlan, PlannedDisk, SyncMode};
pub use progress::{DiskProgress, LiveProgress, RateWindow, RATE_WINDOW};

/// Entry points of the live driver.
#[derive(Debug)]
pub struct LiveMigration;

impl LiveMigration {
    /// Checks everything that can be checked without changing anything: QEMU features, disk
    /// selection, read-only/shared/busy disks, protocols, target names and existence, free
    /// space. Returns every refusal at once.
    pub fn plan(qmp: &mut Qmp, options: &LiveOptions) -> Result<LivePlan, LiveError> {
        plan::plan(qmp, options)
    }

    /// Runs a plan: samples the guest write rate, creates and attaches targets, mirrors,
    /// converges, pivots every disk together. `progress` is called at every poll;
    /// `cancel` is checked at every poll until the pivot starts (after that the pivot is
    /// finished, not undone). On `Err` before the pivot the VM runs on its sources and the
    /// driver's nodes, jobs and created files are gone. The speed limit is the plan's fixed
    /// `bwlimit`; [`LiveMigration::run_with_limit`] follows one that changes.
    pub fn run(
        qmp: &mut Qmp,
        plan: &LivePlan,
        progress: &mut dyn FnMut(&LiveProgress),
        cancel: &AtomicBool,
    ) -> Result<LiveOutcome, LiveError> {
        Self::run_with_limit(qmp, plan, None, progress, cancel)
    }

    /// [`LiveMigration::run`] under a bandwidth limit that may change while the mirrors
    /// copy. With `rate` set, jobs start at `rate.get()` bytes/s (0 = unlimited) instead of
    /// the plan's `bwlimit`, and at every poll until the pivot a changed limit is applied to
    /// every running mirror job with `block-job-set-speed` (QEMU qapi/block-core.json; in
    /// 7.2), reported as a progress note and recorded in [`LiveOutcome::bwlimit_changes`].
    pub fn run_with_limit(
        qmp: &mut Qmp,
        plan: &LivePlan,
        rate: Option<&RateLimit>,
        progress: &mut dyn FnMut(&LiveProgress),
        cancel: &AtomicBool,
    ) -> Result<LiveOutcome, LiveError> {
        let mut d = Driver::new(plan, rate);
        match d.copy(qmp, progress, cancel) {
            Ok(()) => {}
            Err(e) => return Err(d.abort(qmp, e, progress)),
        }
        d.pivot(qmp, progress)
    }
}
