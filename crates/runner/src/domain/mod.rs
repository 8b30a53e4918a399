//! libvirt domains (feature `libvirt`): plan (state, disks, refusals) → copy (live through
//! libvirt's block copy, shut off through offline child jobs) → the persistent definition
//! names the new files → report. Without the feature a domain request is refused.

#[cfg(feature = "libvirt")]
pub(crate) mod control;
#[cfg(not(feature = "libvirt"))]
pub(crate) mod control {
    //! Without libvirt, commands on a domain job are refused.
    use crate::handle::{ExitCode, JobCtx};
    use vmshift_journal::{JobRecord, Journal};

    fn refused(ctx: &JobCtx) -> crate::Result<ExitCode> {
        ctx.em
            .say(format!("vmshift: refused: {}", super::NOT_BUILT));
        Ok(2)
    }
    pub(crate) fn cancel(ctx: &JobCtx, _: &Journal, _: &JobRecord) -> crate::Result<ExitCode> {
        refused(ctx)
    }
    pub(crate) fn rollback(ctx: &JobCtx, _: &Journal, _: &JobRecord) -> crate::Result<ExitCode> {
        refused(ctx)
    }
    pub(crate) fn resume(
        ctx: &JobCtx,
        _: Journal,
        _: JobRecord,
        _: Option<std::path::PathBuf>,
    ) -> crate::Result<ExitCode> {
        refused(ctx)
    }
}
#[cfg(feature = "libvirt")]
pub(crate) mod demo;
#[cfg(feature = "libvirt")]
mod info;
#[cfg(feature = "libvirt")]
pub(crate) mod job;
#[cfg(feature = "libvirt")]
mod live;
#[cfg(feature = "libvirt")]
pub mod plan;
#[cfg(feature = "libvirt")]
mod recorded;
#[cfg(feature = "libvirt")]
mod shutoff;

use crate::handle::{ExitCode, JobCtx};
use crate::request::DomainRequest;

/// The refusal of a build without libvirt.
pub const NOT_BUILT: &str =
    "this vmshift was built without libvirt support (build with --features libvirt; needs libvirt-dev)";

/// Runs a domain move (refused without the `libvirt` feature).
///
/// # Errors
/// The journal or the report cannot be written.
pub(crate) fn run(ctx: &JobCtx, r: &DomainRequest) -> crate::Result<ExitCode> {
    #[cfg(feature = "libvirt")]
    {
        job::run(ctx, r)
    }
    #[cfg(not(feature = "libvirt"))]
    {
        let _ = r;
        ctx.em.say(format!("vmshift: refused: {NOT_BUILT}"));
        Ok(2)
    }
}

/// The check alone: plan lines and whether it would go ahead.
pub fn check(r: &DomainRequest) -> (bool, Vec<String>) {
    #[cfg(feature = "libvirt")]
    {
        let lv = match vmshift_libvirt::Libvirt::open(r.connect.as_deref()) {
            Ok(lv) => lv,
            Err(e) => return (false, vec![format!("refused: {e}")]),
        };
        match plan::plan(&lv, r) {
            Ok(p) => (true, plan::plan_lines(&p)),
            Err(why) => (false, vec![format!("refused: {why}")]),
        }
    }
    #[cfg(not(feature = "libvirt"))]
    {
        let _ = r;
        (false, vec![format!("refused: {NOT_BUILT}")])
    }
}

/// The directory of the storage pool `pool` (its target path), as libvirt at `connect`
/// names it.
///
/// # Errors
/// A one-line message: libvirt unreachable, no such pool, or a build without libvirt.
pub fn pool_dir(connect: Option<&str>, pool: &str) -> Result<std::path::PathBuf, String> {
    #[cfg(feature = "libvirt")]
    {
        let lv = vmshift_libvirt::Libvirt::open(connect).map_err(|e| e.to_string())?;
        lv.pool_dir(pool).map_err(|e| e.to_string())
    }
    #[cfg(not(feature = "libvirt"))]
    {
        let _ = (connect, pool);
        Err(NOT_BUILT.to_string())
    }
}

/// `vmshift info --domain`: the domain's state and disks as JSON and as lines for people.
///
/// # Errors
/// A one-line message: libvirt unreachable, no such domain, or a build without libvirt.
pub fn info(connect: Option<&str>, name: &str) -> Result<(serde_json::Value, Vec<String>), String> {
    #[cfg(feature = "libvirt")]
    {
        info::domain_info(connect, name)
    }
    #[cfg(not(feature = "libvirt"))]
    {
        let _ = (connect, name);
        Err(NOT_BUILT.to_string())
    }
}

/// A domain as an evacuation plan sees it: its name, whether it runs, and the local files
/// its disks name (top images; the chains below are found by inspecting them).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DomainDisks {
    /// The domain's name.
    pub name: String,
    /// Running or paused (its disks move live); else shut off (offline).
    pub running: bool,
    /// The file and block disks' paths, as the definition names them.
    pub disks: Vec<std::path::PathBuf>,
}

/// Every domain of `connect` (default `qemu:///system`) with its disks.
///
/// # Errors
/// One line: no daemon answers, or this vmshift was built without libvirt.
pub fn all_domains(connect: Option<&str>) -> Result<Vec<DomainDisks>, String> {
    #[cfg(feature = "libvirt")]
    {
        use vmshift_libvirt::DomainState;
        let lv = vmshift_libvirt::Libvirt::open(connect).map_err(|e| e.to_string())?;
        let mut out = Vec::new();
        for d in lv.domains().map_err(|e| e.to_string())? {
            let Ok(state) = d.state() else { continue };
            let running = matches!(state, DomainState::Running | DomainState::Paused);
            let Ok(xml) = d.xml(!running) else { continue };
            let disks = vmshift_libvirt::xml::disks(&xml)
                .map(|l| {
                    l.iter()
                        .filter_map(|x| x.source.path().map(std::path::Path::to_path_buf))
                        .collect()
                })
                .unwrap_or_default();
            out.push(DomainDisks {
                name: d.name.clone(),
                running,
                disks,
            });
        }
        Ok(out)
    }
    #[cfg(not(feature = "libvirt"))]
    {
        let _ = connect;
        Err(NOT_BUILT.to_string())
    }
}
