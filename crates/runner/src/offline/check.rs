//! The offline check phase: gathers the facts about source and destination that
//! `vmshift_core::plan::decide` needs, adds the option checks of [`crate::safety`], and
//! renders the plan for people. Nothing is written (but a probe file that is removed at
//! once, to learn whether the destination's filesystem can hold a raw target).

pub use crate::files::abs;
use crate::request::{ImageFormat, OfflineRequest};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use vmshift_core::format_bytes;
use vmshift_core::plan::{decide, DestFacts, Plan, PlanOptions, TargetFormat};
use vmshift_core::report::ImageSide;
use vmshift_image::chain::{Chain, ChainOptions, LayerFormat};
use vmshift_image::{inspect, InspectOptions};

/// The image layer format of a planned target format.
pub fn layer_format_of(f: TargetFormat) -> LayerFormat {
    match f {
        TargetFormat::Raw => LayerFormat::Raw,
        TargetFormat::Qcow2 => LayerFormat::Qcow2,
    }
}

/// The image layer format of a request's format.
pub fn layer_format(f: ImageFormat) -> LayerFormat {
    match f {
        ImageFormat::Raw => LayerFormat::Raw,
        ImageFormat::Qcow2 => LayerFormat::Qcow2,
    }
}

/// Everything the check phase learnt.
#[derive(Debug, Clone)]
pub struct Checked {
    /// The source chain (None when it could not be resolved).
    pub chain: Option<Chain>,
    /// The plan.
    pub plan: Plan,
    /// The source as found.
    pub source: ImageSide,
    /// The final target path.
    pub target_path: PathBuf,
}

/// The final target path for `source` at `dest`: inside `dest` when it is a directory
/// (keeping the file name, with the extension following the format), else `dest` itself.
fn target_path_for(source: &Path, dest: &Path, format: Option<TargetFormat>) -> PathBuf {
    if dest.is_dir() {
        let name = source
            .file_name()
            .map(PathBuf::from)
            .unwrap_or_else(|| "disk".into());
        // The name never contradicts the format (vmshift_image::gate::format_of_name).
        let renamed = match (vmshift_image::gate::format_of_name(&name), format) {
            (Some(LayerFormat::Qcow2), Some(TargetFormat::Raw)) => name.with_extension("raw"),
            (Some(LayerFormat::Raw), Some(TargetFormat::Qcow2)) => name.with_extension("qcow2"),
            _ => name,
        };
        dest.join(renamed)
    } else {
        dest.to_path_buf()
    }
}

fn gather_dest(target: &Path, chain: Option<&Chain>, virtual_size: u64, raw: bool) -> DestFacts {
    let dir = match target.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let dir_exists = dir.is_dir();
    let dir_writable = dir_exists
        && rustix::fs::access(
            &dir,
            rustix::fs::Access::WRITE_OK | rustix::fs::Access::EXEC_OK,
        )
        .is_ok();
    let existing = std::fs::metadata(target).ok();
    let target_is_source = match (&existing, chain) {
        (Some(m), Some(c)) => c.layers.iter().any(|l| {
            std::fs::metadata(&l.path).is_ok_and(|lm| lm.dev() == m.dev() && lm.ino() == m.ino())
        }),
        _ => false,
    };
    let device_size = existing
        .as_ref()
        .filter(|m| std::os::unix::fs::FileTypeExt::is_block_device(&m.file_type()))
        .map(|_| device_size(target));
    let free_bytes = device_size.unwrap_or_else(|| {
        rustix::fs::statvfs(&dir)
            .map(|s| s.f_bavail.saturating_mul(s.f_frsize))
            .unwrap_or(0)
    });
    let max_file_size = (raw && dir_writable && device_size.is_none())
        .then(|| probe_file_too_large(&dir, virtual_size));
    let file_too_large = max_file_size.map(|m| m.is_some());
    let max_file_size = max_file_size.flatten();
    DestFacts {
        target_path: target.display().to_string(),
        dir_exists,
        dir_writable,
        target_exists: existing.is_some(),
        target_is_source,
        free_bytes,
        file_too_large,
        max_file_size,
        reclaimable_bytes: existing.as_ref().map_or(0, |m| m.blocks() * 512),
        resumed_partial_bytes: 0,
        target_is_device: device_size.is_some(),
    }
}

/// Size of a block device in bytes (its end, found by seeking), 0 when it cannot be opened.
fn device_size(path: &Path) -> u64 {
    use std::io::Seek;
    std::fs::File::open(path)
        .and_then(|mut f| f.seek(std::io::SeekFrom::End(0)))
        .unwrap_or(0)
}

/// Tries to size a temporary file to `size` bytes: EFBIG means the filesystem cannot hold a
/// raw target that large (ext4 with 4 KiB blocks: 16 TiB − 4 KiB). Then `Some(limit)`: the
/// largest size it accepts, found by bisection (sparse truncates, no data written). `None`
/// when it fits. The probe file is removed at once.
fn probe_file_too_large(dir: &Path, size: u64) -> Option<u64> {
    let probe = dir.join(format!(".vmshift-probe-{}", std::process::id()));
    let f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&probe)
        .ok()?;
    let efbig = |n: u64| matches!(f.set_len(n), Err(e) if e.raw_os_error() == Some(libc::EFBIG));
    let limit = efbig(size).then(|| {
        let (mut ok, mut bad) = (0u64, size);
        while bad - ok > 1 {
            let mid = ok + (bad - ok) / 2;
            if efbig(mid) {
                bad = mid;
            } else {
                ok = mid;
            }
        }
        ok
    });
    drop(f);
    let _ = std::fs::remove_file(&probe);
    limit
}

/// The check phase. When resuming, `partial_credit` is `Some(bytes)`: the partial target the
/// resume reuses is expected, and its bytes count as free at the destination.
pub fn check_with(args: &OfflineRequest, partial_credit: Option<u64>) -> Checked {
    let inspection = inspect(
        &args.source,
        &InspectOptions {
            chain: ChainOptions {
                top_format: args.source_format.map(layer_format),
                backing_format: args.backing_format.map(layer_format),
                ..Default::default()
            },
            walk_extents: true,
        },
    );
    let requested = args
        .format
        .map(|f| match f {
            ImageFormat::Raw => TargetFormat::Raw,
            ImageFormat::Qcow2 => TargetFormat::Qcow2,
        })
        .or_else(|| format_from_name(&args.to));
    let src_format = if inspection.facts.format == "qcow2" {
        TargetFormat::Qcow2
    } else {
        TargetFormat::Raw
    };
    let target_path = target_path_for(
        &args.source,
        &args.to,
        Some(requested.unwrap_or(src_format)),
    );
    let raw_target = requested.unwrap_or(src_format) == TargetFormat::Raw;
    let mut dest = gather_dest(
        &target_path,
        inspection.chain.as_ref(),
        inspection.facts.virtual_size,
        raw_target && inspection.facts.problems.is_empty(),
    );
    dest.resumed_partial_bytes = partial_credit.unwrap_or(0);
    let mut plan = decide(
        &inspection.facts,
        &dest,
        &PlanOptions {
            target_format: requested,
            keep_backing: args.keep_backing,
            overwrite: args.overwrite,
            force_share: args.force_share,
        },
    );
    if let Err(e) =
        vmshift_image::gate::check_target_name(&target_path, layer_format_of(plan.target_format))
    {
        plan.problems.push(e.to_problem());
    }
    let mut dropped: Vec<_> = args.drop.iter().map(|d| d.property()).collect();
    // A raw target was asked for: it cannot hold compressed clusters, so that is no surprise
    // (still a warning in the report).
    if plan.target_format == TargetFormat::Raw {
        dropped.push(vmshift_core::fidelity::Property::Compression);
    }
    let (lost, dropped) = vmshift_core::fidelity::assess(&inspection.facts.fidelity, &dropped);
    plan.problems.extend(lost);
    plan.warnings.extend(dropped);
    if args.delete_source && args.no_verify {
        plan.problems.push(vmshift_core::plan::Problem::new(
            "delete_unverified",
            "--delete-source needs verification: the source is deleted only after the copy is proven identical",
            "drop --no-verify or --delete-source",
        ));
    }
    let extra = crate::safety::problems(
        args,
        inspection.chain.as_ref(),
        &target_path,
        &inspection.facts.lock,
    );
    plan.problems.extend(
        extra
            .into_iter()
            .filter(|p| !(partial_credit.is_some() && p.code == "partial_exists")),
    );
    if args.to.as_os_str().to_string_lossy().ends_with('/') && !args.to.is_dir() {
        // Said once: the plan's own "destination directory of … does not exist" goes.
        plan.problems.retain(|p| p.code != "dest_missing");
        plan.problems.insert(
            0,
            vmshift_core::plan::Problem::new(
                "dest_missing",
                format!("destination directory {} does not exist", args.to.display()),
                "create it first",
            ),
        );
    }
    if args.source_format == Some(ImageFormat::Raw) && crate::files::has_qcow2_magic(&args.source) {
        plan.warnings.push(format!(
            "{} is stated to be raw (--source-format raw, or a domain definition's <driver type='raw'>) but has a qcow2 header: it is copied as raw data, so the target holds the qcow2 container's bytes (encrypted ones included), as the guest sees them",
            args.source.display()
        ));
    }
    let source = ImageSide {
        path: abs(&args.source),
        format: inspection.facts.format.clone(),
        virtual_size: inspection.facts.virtual_size,
        allocated_bytes: inspection.facts.allocated_bytes,
        backing_chain: inspection.facts.backing_chain.clone(),
    };
    Checked {
        chain: inspection.chain,
        plan,
        source,
        target_path,
    }
}

/// The format a target file name asks for (`x.qcow2`, `x.raw`), when `--to` names a file.
fn format_from_name(to: &Path) -> Option<TargetFormat> {
    if to.is_dir() {
        return None;
    }
    match to.extension()?.to_str()? {
        "qcow2" => Some(TargetFormat::Qcow2),
        "raw" => Some(TargetFormat::Raw),
        _ => None,
    }
}

/// The plan as lines for people (the `check` output and the start of a migration). A
/// source that could not be read gets its problems only, not a plan of zeroes.
pub fn plan_lines(c: &Checked) -> Vec<String> {
    let mut out = Vec::new();
    let p = &c.plan;
    if c.chain.is_none() {
        for pr in &p.problems {
            out.push(format!("refused: {}", pr.one_line()));
        }
        return out;
    }
    let mut say = |l: String| out.push(l);
    say(format!(
        "source       {} ({}, {} virtual, {} allocated)",
        c.source.path,
        c.source.format,
        format_bytes(c.source.virtual_size),
        format_bytes(c.source.allocated_bytes)
    ));
    say(format!(
        "target       {} ({}, {} virtual)",
        abs(&c.target_path),
        p.target_format.as_str(),
        format_bytes(p.target_virtual_size)
    ));
    say(format!("backing      {}", p.backing));
    say(format!(
        "to copy      {} of data",
        format_bytes(p.bytes_to_copy)
    ));
    say(format!(
        "target needs up to {} ({} bytes); free at destination {} ({} bytes)",
        format_bytes(p.target_bytes),
        p.target_bytes,
        format_bytes(p.free_bytes),
        p.free_bytes
    ));
    for n in &p.notes {
        say(format!("note: {n}"));
    }
    for w in &p.warnings {
        say(format!("warning: {w}"));
    }
    for pr in &p.problems {
        say(format!("refused: {}", pr.one_line()));
    }
    out
}
