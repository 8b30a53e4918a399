//! What a domain move would do: the domain's state and disks from libvirt, the disks to
//! move, where each goes, and every reason to refuse. Formats come from the definition
//! (`<driver type>`, `<backingStore><format>`), never from a file's header.

use crate::files::allocated_bytes;
use crate::request::{DomainRequest, ImageFormat};
use std::path::{Path, PathBuf};
use vmshift_libvirt::{BackingLayer, DiskDef, DiskSource, DomainRef, DomainState, Libvirt};

/// One disk a domain move copies.
#[derive(Debug, Clone)]
pub struct PlannedDisk {
    /// Target dev (`vda`).
    pub target: String,
    /// The image the disk uses now.
    pub source: PathBuf,
    /// Its format, from the definition.
    pub format: ImageFormat,
    /// The new image.
    pub dest: PathBuf,
    /// The new image's format.
    pub dest_format: ImageFormat,
    /// The definition's backing chain below the image (live definitions state it).
    pub backing: Vec<BackingLayer>,
    /// Bytes allocated by the image and (unless the chain is kept) its backing files.
    pub allocated: u64,
    /// The guest-visible size, bytes (from the image's header read as the stated format).
    pub virtual_size: u64,
}

/// A domain move that would go ahead.
pub struct DomainPlan {
    /// The connection's URI.
    pub uri: String,
    /// The domain's name.
    pub name: String,
    /// Its state when checked.
    pub state: DomainState,
    /// Whether it has a persistent definition.
    pub persistent: bool,
    /// The persistent definition as libvirt returned it (`None` for a transient domain).
    pub inactive_xml: Option<String>,
    /// Destination directory.
    pub dest_dir: PathBuf,
    /// Destination pool, if the request named one.
    pub pool: Option<String>,
    /// The disks to move, in definition order.
    pub disks: Vec<PlannedDisk>,
    /// Disks left where they are, and why (read-only, shareable, not named).
    pub skipped: Vec<String>,
}

fn format_of(name: Option<&str>, what: &str) -> Result<ImageFormat, String> {
    match name {
        Some("raw") => Ok(ImageFormat::Raw),
        Some("qcow2") => Ok(ImageFormat::Qcow2),
        Some(f) => Err(format!(
            "{what} has format {f}: vmshift moves raw and qcow2 disks (convert it with qemu-img first)"
        )),
        None => Err(format!(
            "{what} states no format (<driver type>) in the domain definition: add it, vmshift never probes formats"
        )),
    }
}

/// Where a disk's image is: a file, or a pool volume resolved to its path.
fn source_path(lv: &Libvirt, d: &DiskDef) -> Result<PathBuf, String> {
    let what = format!("disk {}", d.target);
    match &d.source {
        DiskSource::File(p) => Ok(p.clone()),
        DiskSource::Volume { pool, volume } => lv
            .volume_path(pool, volume)
            .map_err(|e| format!("{what}: {e}")),
        DiskSource::Block(p) => Err(format!(
            "{what} is the block device {}: vmshift moves file-backed disks for now (name others with --disk)",
            p.display()
        )),
        DiskSource::Network { protocol, name } => Err(format!(
            "{what} is on the network ({protocol}:{name}): vmshift moves local image files (name others with --disk)"
        )),
        DiskSource::Empty => Err(format!("{what} has no medium")),
        DiskSource::Other(t) => Err(format!(
            "{what} is of type {t}: vmshift moves file-backed disks (name others with --disk)"
        )),
    }
}

/// The domain's refusals that do not depend on its disks.
fn domain_problems(dom: &DomainRef, state: DomainState) -> Result<(), String> {
    let name = &dom.name;
    match state {
        DomainState::Running | DomainState::ShutOff => {}
        DomainState::Paused => {
            return Err(format!(
                "domain {name} is paused: resume it (virsh resume {name}) or shut it off, then move it"
            ))
        }
        DomainState::Crashed => {
            return Err(format!(
                "domain {name} has crashed: destroy it (virsh destroy {name}) to move its disks offline"
            ))
        }
        DomainState::Other => {
            return Err(format!(
                "domain {name} is neither running nor shut off: wait until it is"
            ))
        }
    }
    if let Some(kind) = dom.domain_job().map_err(|e| e.to_string())? {
        return Err(format!(
            "domain {name} has a libvirt job running (type {kind}: a migration, save or dump): wait for it to end (virsh domjobinfo {name})"
        ));
    }
    let snaps = dom.snapshots().map_err(|e| e.to_string())?;
    if snaps > 0 {
        return Err(format!(
            "domain {name} has {snaps} libvirt snapshot(s): moving its disks would orphan them (virsh snapshot-list {name}; delete or merge them first)"
        ));
    }
    Ok(())
}

/// The destination directory the request names (`to` or a pool's target directory).
fn dest_dir(lv: &Libvirt, r: &DomainRequest) -> Result<PathBuf, String> {
    let dir = match (&r.to, &r.pool) {
        (Some(_), Some(_)) => return Err("give --to or --pool, not both".into()),
        (None, None) => return Err("give a destination: --to DIR or --pool POOL".into()),
        (Some(d), None) => d.clone(),
        (None, Some(p)) => lv.pool_dir(p).map_err(|e| e.to_string())?,
    };
    if dir.exists() && !dir.is_dir() {
        return Err(format!(
            "destination {} is a file, not a directory: name the directory the disks go to",
            dir.display()
        ));
    }
    if !dir.is_dir() {
        return Err(format!(
            "destination directory {} does not exist: create it first",
            dir.display()
        ));
    }
    Ok(std::fs::canonicalize(&dir).unwrap_or(dir))
}

/// Plans the move of `r.domain`: `Err` is the one-line refusal.
pub fn plan(lv: &Libvirt, r: &DomainRequest) -> Result<DomainPlan, String> {
    plan_resumed(lv, r, &[])
}

/// [`plan`] for a resumed job: the targets in `done` (verified by this job's earlier run)
/// may exist and need no room.
pub fn plan_resumed(
    lv: &Libvirt,
    r: &DomainRequest,
    done: &[PathBuf],
) -> Result<DomainPlan, String> {
    let dom = lv.domain(&r.domain).map_err(|e| e.to_string())?;
    let state = dom.state().map_err(|e| e.to_string())?;
    domain_problems(&dom, state)?;
    let persistent = dom.persistent().map_err(|e| e.to_string())?;
    let inactive_xml = if persistent {
        Some(dom.xml(true).map_err(|e| e.to_string())?)
    } else {
        None
    };
    let xml = if state == DomainState::Running {
        dom.xml(false).map_err(|e| e.to_string())?
    } else {
        inactive_xml.clone().unwrap_or_default()
    };
    let all = vmshift_libvirt::disks(&xml).map_err(|e| e.to_string())?;
    for n in &r.disks {
        if !all.iter().any(|d| &d.target == n) {
            let names: Vec<&str> = all.iter().map(|d| d.target.as_str()).collect();
            return Err(format!(
                "domain {} has no disk {n} (its disks: {})",
                r.domain,
                names.join(", ")
            ));
        }
    }
    let dest = dest_dir(lv, r)?;
    let mut disks = Vec::new();
    let mut skipped = Vec::new();
    for d in &all {
        let named = r.disks.contains(&d.target);
        if !r.disks.is_empty() && !named {
            skipped.push(format!("{}: not named by --disk", d.target));
            continue;
        }
        if d.readonly || d.shareable || d.device == "cdrom" || d.device == "floppy" {
            let why = if d.shareable {
                "shareable"
            } else {
                "read-only"
            };
            if named {
                return Err(format!(
                    "disk {} is {why}: vmshift does not move {why} disks (another VM or medium may use it)",
                    d.target
                ));
            }
            skipped.push(format!("{}: {why}, left in place", d.target));
            continue;
        }
        disks.push(plan_disk(lv, &dom, d, r, &dest, state, done)?);
    }
    if disks.is_empty() {
        return Err(format!("domain {} has no writable disk to move", r.domain));
    }
    capacity(&disks, &dest, done)?;
    Ok(DomainPlan {
        uri: lv.uri().to_owned(),
        name: r.domain.clone(),
        state,
        persistent,
        inactive_xml,
        dest_dir: dest,
        pool: r.pool.clone(),
        disks,
        skipped,
    })
}

fn plan_disk(
    lv: &Libvirt,
    dom: &DomainRef,
    d: &DiskDef,
    r: &DomainRequest,
    dest: &Path,
    state: DomainState,
    done: &[PathBuf],
) -> Result<PlannedDisk, String> {
    let source = source_path(lv, d)?;
    let format = format_of(d.format.as_deref(), &format!("disk {}", d.target))?;
    for (i, b) in d.backing.iter().enumerate() {
        if b.source != DiskSource::Empty {
            format_of(
                b.format.as_deref(),
                &format!("backing file {} of {}", i + 1, d.target),
            )?;
        }
    }
    if state == DomainState::Running {
        if let Some(j) = dom.block_job(&d.target).map_err(|e| e.to_string())? {
            return Err(format!(
                "disk {} is already in a block job ({}): wait for it or end it (virsh blockjob {} {} --abort)",
                d.target, j.kind_name(), dom.name, d.target
            ));
        }
    }
    let dest_format = r.format.unwrap_or(format);
    let name = vmshift_qmp::live::target_file_name(&source, crate::live::qmp_format(dest_format));
    let dest_path = dest.join(name);
    if source
        .parent()
        .and_then(|p| std::fs::canonicalize(p).ok())
        .as_deref()
        == Some(dest)
    {
        return Err(format!(
            "disk {} is already in {}: choose another destination",
            d.target,
            dest.display()
        ));
    }
    if dest_path.exists() && !done.contains(&dest_path) {
        return Err(format!(
            "target {} already exists: remove it or choose another destination",
            dest_path.display()
        ));
    }
    let mut allocated = allocated_bytes(&source);
    if !r.keep_backing {
        allocated += d
            .backing
            .iter()
            .filter_map(|b| b.source.path())
            .map(allocated_bytes)
            .sum::<u64>();
    }
    let virtual_size = virtual_size(&source, format)?;
    Ok(PlannedDisk {
        target: d.target.clone(),
        source,
        format,
        dest: dest_path,
        dest_format,
        backing: d.backing.clone(),
        allocated,
        virtual_size,
    })
}

/// The image's virtual size read as the format the definition states (never probed).
fn virtual_size(source: &Path, format: ImageFormat) -> Result<u64, String> {
    let opts = vmshift_image::chain::ChainOptions {
        top_format: Some(match format {
            ImageFormat::Raw => vmshift_image::chain::LayerFormat::Raw,
            ImageFormat::Qcow2 => vmshift_image::chain::LayerFormat::Qcow2,
        }),
        follow_backing: false,
        ..Default::default()
    };
    vmshift_image::chain::resolve_chain(source, &opts)
        .map(|c| c.top().virtual_size())
        .map_err(|e| e.to_string())
}

/// Refuses a move whose disks' allocated bytes (plus 1 MiB each of metadata) exceed the
/// destination's free space.
fn capacity(disks: &[PlannedDisk], dest: &Path, done: &[PathBuf]) -> Result<(), String> {
    let need: u64 = disks
        .iter()
        .filter(|d| !done.contains(&d.dest))
        .map(|d| d.allocated + (1 << 20))
        .sum();
    let free = rustix::fs::statvfs(dest)
        .map(|s| s.f_bavail.saturating_mul(s.f_frsize))
        .unwrap_or(0);
    if need > free {
        return Err(format!(
            "{} needs {} but has {} free: free space or choose another destination",
            dest.display(),
            vmshift_core::format_bytes(need),
            vmshift_core::format_bytes(free)
        ));
    }
    Ok(())
}

/// The plan as lines for people.
pub fn plan_lines(p: &DomainPlan) -> Vec<String> {
    let mut out = vec![format!(
        "plan: domain {} ({}, {}) at {}: {} disk(s) to {}{}",
        p.name,
        p.state.as_str(),
        if p.persistent {
            "persistent"
        } else {
            "transient"
        },
        p.uri,
        p.disks.len(),
        p.dest_dir.display(),
        p.pool
            .as_ref()
            .map(|n| format!(" (pool {n})"))
            .unwrap_or_default()
    )];
    let how = if p.state == DomainState::Running {
        "live, libvirt block copy"
    } else {
        "offline, verified copy"
    };
    for d in &p.disks {
        out.push(format!(
            "plan:   {}: {} ({}) -> {} ({}), {} allocated, {how}",
            d.target,
            d.source.display(),
            d.format.as_str(),
            d.dest.display(),
            d.dest_format.as_str(),
            vmshift_core::format_bytes(d.allocated)
        ));
    }
    for s in &p.skipped {
        out.push(format!("plan:   {s}"));
    }
    out.push(if p.persistent {
        "plan: then the persistent definition names the new files (only <source> and <driver type> of the moved disks change)".into()
    } else {
        "plan: transient domain: no persistent definition to update".into()
    });
    out
}

impl ImageFormat {
    /// The format's name (`raw`, `qcow2`), as libvirt and QEMU spell it.
    pub fn as_str(self) -> &'static str {
        match self {
            ImageFormat::Raw => "raw",
            ImageFormat::Qcow2 => "qcow2",
        }
    }
}
