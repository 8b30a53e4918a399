//! Live jobs: the disks of a running QEMU mirrored over QMP (`vmshift_qmp`), one pivot for
//! all. [`migrate`] runs a move; [`resume`], [`cancel`] and [`rollback`] act on a recorded
//! job through [`recorded`], which finds out where its disks run now.

pub mod cancel;
pub mod migrate;
pub mod recorded;
pub mod resume;
pub mod rollback;

use crate::request::{CopyMode, ImageFormat, LiveRequest};
use crate::{Result, RunnerError};
use std::path::Path;
use std::time::Duration;
use vmshift_core::format_bytes;
use vmshift_core::report::ImageSide;
use vmshift_qmp::live::LiveError;
use vmshift_qmp::{CopyModeRequest, Features, LiveMigration, LiveOptions, LivePlan, Qmp};

/// Connects to the VM's QMP socket, with a timeout long enough for QEMU's main loop to
/// stall under a write-blocking mirror (case C25).
///
/// # Errors
/// One line naming the socket.
pub fn connect(sock: &Path) -> Result<Qmp> {
    if let Some(why) = libvirt_monitor(sock) {
        return Err(RunnerError::msg(why));
    }
    let mut q = Qmp::connect(sock, Duration::from_secs(5)).map_err(|e| {
        let hint = match &e {
            vmshift_qmp::QmpError::Connect { .. } => {
                " (is the VM running with -qmp unix:PATH,server=on,wait=off?)"
            }
            _ => "",
        };
        // Say the socket once: most QMP errors name it already.
        let e = e.to_string();
        let at = sock.display().to_string();
        RunnerError::msg(if e.contains(&at) {
            format!("cannot talk to QEMU: {e}{hint}")
        } else {
            format!("cannot talk to QEMU at {at}: {e}{hint}")
        })
    })?;
    q.set_timeout(Duration::from_secs(60));
    Ok(q)
}

/// Where libvirt keeps the monitors of the domains it runs.
const LIBVIRT_DIRS: [&str; 2] = ["/var/lib/libvirt/", "/run/libvirt/"];

/// A refusal when `sock` is the monitor of a libvirt-managed VM: moving its disks behind
/// libvirt's back would leave the domain definition on the old files.
fn libvirt_monitor(sock: &Path) -> Option<String> {
    let real = std::fs::canonicalize(sock).unwrap_or_else(|_| sock.to_path_buf());
    let s = real.to_string_lossy();
    // libvirt names the directory `domain-<id>-<name>`.
    let name = real
        .parent()
        .and_then(|d| d.file_name())
        .and_then(|n| n.to_str())
        .and_then(|n| n.strip_prefix("domain-"))
        .and_then(|n| n.split_once('-'))
        .map_or("NAME", |(_, name)| name)
        .to_owned();
    LIBVIRT_DIRS.iter().any(|d| s.starts_with(d)).then(|| {
        format!(
            "{} is the monitor of a libvirt-managed VM: a move behind libvirt's back would leave the domain's definition on the old files; move it through libvirt with `vmshift migrate --domain {name} --to DIR`",
            sock.display()
        )
    })
}

/// The live driver's format of a request format.
pub fn qmp_format(f: ImageFormat) -> vmshift_qmp::TargetFormat {
    match f {
        ImageFormat::Raw => vmshift_qmp::TargetFormat::Raw,
        ImageFormat::Qcow2 => vmshift_qmp::TargetFormat::Qcow2,
    }
}

/// The live driver's options for a request.
pub fn live_options(r: &LiveRequest) -> LiveOptions {
    let mut o = LiveOptions::new(&r.to);
    o.disks = r.disks.clone();
    o.format = r.format.map(qmp_format);
    o.shallow = r.shallow;
    o.bwlimit = r.bwlimit.filter(|&b| b > 0);
    o.copy_mode = match r.copy_mode {
        CopyMode::Auto => CopyModeRequest::Auto,
        CopyMode::Background => CopyModeRequest::Background,
        CopyMode::WriteBlocking => CopyModeRequest::WriteBlocking,
    };
    o.ready_timeout = r.ready_timeout.map(Duration::from_secs);
    o.delete_source = r.delete_source;
    o
}

/// The live plan as lines for people.
pub fn plan_lines(plan: &LivePlan) -> Vec<String> {
    let mut out = vec![format!(
        "QEMU {}; block-job-change: {}; destination free: {}",
        plan.features.version,
        if plan.features.block_job_change {
            "yes"
        } else {
            "no (7.2: restart to change copy mode)"
        },
        format_bytes(plan.dest_available)
    )];
    for d in &plan.disks {
        out.push(format!(
            "  {} (node {}): {} [{} {}] -> {} [{}], sync {:?}, needs up to {}",
            d.disk.device,
            d.disk.node_name,
            d.disk.file,
            d.disk.format,
            format_bytes(d.disk.virtual_size),
            d.target.display(),
            d.format.as_str(),
            d.sync,
            format_bytes(d.needed_bytes)
        ));
    }
    out
}

/// A live plan, or why the move would be refused.
pub enum LiveCheck {
    /// The move would go ahead.
    Go(Box<LivePlan>),
    /// Refused, with the reason (one line).
    Refused(String),
}

/// A live move's destination must be an existing directory (each target keeps its
/// source's file name): the refusal when it is not.
pub fn dest_problem(r: &LiveRequest) -> Option<String> {
    (!r.to.is_dir()).then(|| {
        format!(
            "--to {}: live moves need an existing destination directory (each target keeps its source's file name)",
            r.to.display()
        )
    })
}

/// Plans a live move without changing anything.
///
/// # Errors
/// QEMU cannot be reached or answers unexpectedly.
pub fn check(r: &LiveRequest) -> Result<LiveCheck> {
    if let Some(why) = dest_problem(r) {
        return Ok(LiveCheck::Refused(why));
    }
    let mut qmp = connect(&r.qmp)?;
    match LiveMigration::plan(&mut qmp, &live_options(r)) {
        Ok(plan) => Ok(LiveCheck::Go(Box::new(plan))),
        Err(
            e @ (LiveError::Refused(_)
            | LiveError::NoSuchDisk { .. }
            | LiveError::Unsupported { .. }),
        ) => Ok(LiveCheck::Refused(e.to_string())),
        Err(e) => Err(e.into()),
    }
}

/// The disks of a running QEMU as it sees them, and its features.
///
/// # Errors
/// QEMU cannot be reached or answers unexpectedly.
pub fn info(sock: &Path) -> Result<(Features, Vec<vmshift_qmp::DiskInfo>)> {
    let mut qmp = connect(sock)?;
    let features = Features::detect(&mut qmp)?;
    let disks = vmshift_qmp::disk::discover(&mut qmp)?;
    Ok((features, disks))
}

/// Whole milliseconds, rounded up, of a non-negative duration in ms.
fn ms_ceil(ms: f64) -> u64 {
    if ms.is_nan() || ms <= 0.0 {
        0
    } else if ms >= u64::MAX as f64 {
        u64::MAX
    } else {
        #[allow(clippy::cast_possible_truncation)] // range checked above
        let v = ms.ceil() as u64;
        v
    }
}

/// A report side for a file as it is now.
pub(crate) fn side(path: &Path, format: &str, virtual_size: u64) -> ImageSide {
    ImageSide {
        path: path.display().to_string(),
        format: format.to_owned(),
        virtual_size,
        allocated_bytes: crate::files::allocated_bytes(path),
        backing_chain: Vec::new(),
    }
}
