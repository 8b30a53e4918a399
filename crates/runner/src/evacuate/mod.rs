//! Datastore evacuation (issue #17): every image off one datastore onto others. For now the
//! planning half: [`plan::build`] finds the images, groups what must move together, measures
//! the targets and asks `vmshift_core::placement` and `vmshift_core::schedule` where and
//! when each group goes. Running the plan (a batch job whose children are the moves) is the
//! next step.

mod found;
pub mod plan;

pub use plan::{build, EvacuateRequest, EvacuationPlan};
