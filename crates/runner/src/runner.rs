//! [`Runner`]: the one entry point front ends use.

use crate::handle::{spawn, JobControl, JobHandle};
use crate::live::LiveCheck;
use crate::request::JobRequest;
use crate::{Result, RunnerError};
use std::path::PathBuf;
use vmshift_core::JobId;

/// What a job would do, from [`Runner::check`] (nothing written).
pub enum Plan {
    /// An offline move: the check's facts and decisions.
    Offline(Box<crate::offline::Checked>),
    /// A live move that would go ahead.
    Live(Box<vmshift_qmp::LivePlan>),
    /// A live move that would be refused, and why (one line).
    LiveRefused(String),
    /// A libvirt domain move: whether it would go ahead, and the plan's lines.
    Domain(bool, Vec<String>),
}

impl Plan {
    /// Whether the job would go ahead.
    pub fn go(&self) -> bool {
        match self {
            Plan::Offline(c) => c.plan.go(),
            Plan::Live(_) => true,
            Plan::LiveRefused(_) => false,
            Plan::Domain(go, _) => *go,
        }
    }

    /// The plan as lines for people (what `vmshift check` prints).
    pub fn lines(&self) -> Vec<String> {
        match self {
            Plan::Offline(c) => crate::offline::plan_lines(c),
            Plan::Live(p) => crate::live::plan_lines(p),
            Plan::LiveRefused(why) => vec![format!("refused: {why}")],
            Plan::Domain(_, lines) => lines.clone(),
        }
    }
}

/// Starts and steers jobs. Cheap to create; holds no state of its own beyond the state
/// directory's journal, so a job started by one process can be steered from another.
#[derive(Debug, Clone, Default)]
pub struct Runner {
    /// The configured datastores: a request's `to` may name one.
    datastores: Vec<crate::datastore::DatastoreConfig>,
}

impl Runner {
    /// A runner over the state directory (see the crate docs).
    pub fn new() -> Self {
        Runner::default()
    }

    /// A runner that knows the configured `datastores`, so a request's destination may be
    /// a datastore's name (`--to fast`).
    pub fn with_datastores(datastores: Vec<crate::datastore::DatastoreConfig>) -> Self {
        Runner { datastores }
    }

    /// The configured datastores.
    pub fn datastores(&self) -> &[crate::datastore::DatastoreConfig] {
        &self.datastores
    }

    /// `request` with its destination resolved: a datastore's name becomes its root (see
    /// [`crate::datastore::resolve_to`]). [`Runner::check`] and [`Runner::start`] do this
    /// themselves; a front end that checks paths first (the service's gate) calls it before.
    ///
    /// # Errors
    /// [`RunnerError::Refused`]: the destination is neither a path nor a datastore's name.
    pub fn resolve(&self, request: &JobRequest) -> Result<JobRequest> {
        crate::datastore::resolve_request(request, &self.datastores).map_err(RunnerError::Refused)
    }

    /// The plan of a datastore evacuation over the configured datastores (see
    /// [`crate::evacuate::plan::build`]): nothing is moved.
    ///
    /// # Errors
    /// [`RunnerError::Refused`]: a datastore named is not configured; the state directory
    /// cannot be created.
    pub fn evacuation_plan(
        &self,
        request: &crate::evacuate::EvacuateRequest,
    ) -> Result<crate::evacuate::EvacuationPlan> {
        let state = crate::state::state_dir()?;
        let state = std::fs::canonicalize(&state).unwrap_or(state);
        crate::evacuate::build(request, &self.datastores, &state)
    }

    /// The check phase alone: what the job would do, with every problem. No side effects
    /// (an offline check may create and remove one probe file at the destination).
    ///
    /// # Errors
    /// A live check's QEMU cannot be reached; the destination names no datastore
    /// ([`RunnerError::Refused`]).
    pub fn check(&self, request: &JobRequest) -> Result<Plan> {
        let request = &self.resolve(request)?;
        Ok(match request {
            JobRequest::Offline(r) => {
                Plan::Offline(Box::new(crate::offline::check::check_with(r, None)))
            }
            JobRequest::Live(r) => match crate::live::check(r)? {
                LiveCheck::Go(p) => Plan::Live(p),
                LiveCheck::Refused(why) => Plan::LiveRefused(why),
            },
            JobRequest::Domain(r) => {
                let (go, lines) = crate::domain::check(r);
                Plan::Domain(go, lines)
            }
        })
    }

    /// Starts a job on a thread of its own. Its bandwidth limit starts at the request's.
    ///
    /// # Errors
    /// The job's thread cannot be started; the destination names no datastore
    /// ([`RunnerError::Refused`]).
    pub fn start(&self, request: JobRequest) -> Result<JobHandle> {
        let request = self.resolve(&request)?;
        let id = JobId::new().0;
        let control = JobControl::default();
        match request {
            JobRequest::Offline(r) => {
                control.set_bwlimit(r.bwlimit.unwrap_or(0));
                spawn(id, control, move |ctx| {
                    crate::offline::job::run_job(ctx, &r, None)
                })
            }
            JobRequest::Live(r) => {
                control.set_bwlimit(r.bwlimit.unwrap_or(0));
                spawn(id, control, move |ctx| {
                    crate::live::migrate::run_migrate_with(ctx, &r, Default::default())
                        .map(|(code, _)| code)
                })
            }
            JobRequest::Domain(r) => {
                control.set_bwlimit(r.bwlimit.unwrap_or(0));
                spawn(id, control, move |ctx| crate::domain::run(ctx, &r))
            }
        }
    }

    /// Resumes an interrupted, failed or cancelled job (`id` or a unique prefix): offline
    /// from its last checkpoint, live by mirroring again or finishing after the pivot.
    /// `report` is an extra report file; `bwlimit` (bytes/s, 0 = none) replaces the limit
    /// the job recorded.
    ///
    /// # Errors
    /// The journal cannot be read, or the job's thread cannot be started.
    pub fn resume(
        &self,
        id: &str,
        report: Option<PathBuf>,
        bwlimit: Option<u64>,
    ) -> Result<JobHandle> {
        let (full, recorded_limit) = recorded(id)?;
        let control = JobControl::default();
        control.set_bwlimit(bwlimit.unwrap_or(recorded_limit));
        spawn(full.clone(), control, move |ctx| {
            crate::control::resume(ctx, &full, report)
        })
    }

    /// Undoes a succeeded job: offline, deletes its target; live, mirrors the disks back
    /// (at `bwlimit` bytes/s when given, else the job's recorded limit; 0 = none).
    ///
    /// # Errors
    /// The journal cannot be read, or the job's thread cannot be started.
    pub fn rollback(&self, id: &str, bwlimit: Option<u64>) -> Result<JobHandle> {
        let (full, recorded_limit) = recorded(id)?;
        let control = JobControl::default();
        control.set_bwlimit(bwlimit.unwrap_or(recorded_limit));
        spawn(full.clone(), control, move |ctx| {
            crate::control::rollback(ctx, &full)
        })
    }

    /// Cancels a job running in any process (through the journal), or closes one whose
    /// process is gone; `keep_partial` keeps its partial target for a later resume.
    ///
    /// # Errors
    /// The journal cannot be read, or the command's thread cannot be started.
    pub fn cancel(&self, id: &str, keep_partial: bool) -> Result<JobHandle> {
        let (full, _) = recorded(id)?;
        spawn(full.clone(), JobControl::default(), move |ctx| {
            crate::control::cancel(ctx, &full, keep_partial)
        })
    }

    /// Changes the bandwidth limit of a job running in any process, bytes/s (0 lifts it),
    /// and waits until that process applied it (within a second).
    ///
    /// # Errors
    /// The journal cannot be read, or the command's thread cannot be started.
    pub fn set_bwlimit(&self, id: &str, bytes_per_sec: u64) -> Result<JobHandle> {
        let (full, _) = recorded(id)?;
        spawn(full.clone(), JobControl::default(), move |ctx| {
            crate::control::set_bwlimit(ctx, &full, bytes_per_sec)
        })
    }

    /// Forgets finished jobs last changed more than `older_than` ago, with their reports;
    /// never a running job or one with a partial target kept for a resume.
    ///
    /// # Errors
    /// The command's thread cannot be started.
    pub fn prune(&self, older_than: std::time::Duration) -> Result<JobHandle> {
        spawn(String::new(), JobControl::default(), move |ctx| {
            crate::control::prune(ctx, older_than)
        })
    }

    /// Runs the demo (see [`crate::demo`]): the offline move of a sample VM disk, then,
    /// unless `offline_only` or a part failed, the live move of the test guest over QMP and
    /// (as `libvirt` says) the live move of a libvirt domain running it.
    ///
    /// # Errors
    /// The job's thread cannot be started.
    pub fn demo(&self, offline_only: bool, libvirt: DemoLibvirt) -> Result<JobHandle> {
        spawn(JobId::new().0, JobControl::default(), move |ctx| {
            let code = crate::demo::offline(ctx)?;
            if code != 0 || offline_only {
                return Ok(code);
            }
            let code = crate::demo::live(&ctx.next(JobId::new().0))?;
            if code != 0 || libvirt == DemoLibvirt::Skip {
                return Ok(code);
            }
            match crate::demo::libvirt(&ctx.next(JobId::new().0))? {
                Some(code) => Ok(code),
                None if libvirt == DemoLibvirt::Require => Err(RunnerError::msg(
                    "demo --libvirt: no libvirt daemon answers at qemu:///system and none could be started (install libvirt-daemon-system; this vmshift must be built with the libvirt feature)",
                )),
                None => {
                    ctx.em.say("vmshift demo: libvirt part skipped (libvirt is not installed)");
                    Ok(0)
                }
            }
        })
    }
}

/// Whether `vmshift demo` moves a libvirt domain too.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DemoLibvirt {
    /// When libvirt is installed (its daemon is started if none answers).
    Auto,
    /// Always: fail when libvirt cannot be reached.
    Require,
    /// Never.
    Skip,
}

/// The full id of a recorded job and its recorded bandwidth limit.
fn recorded(id: &str) -> Result<(String, u64)> {
    let j = crate::journal::open_journal()?;
    let job = j.job(id)?;
    Ok((job.id, job.options["bwlimit"].as_u64().unwrap_or(0)))
}
