//! Plan/check decisions for an offline migration: pure functions over facts that the I/O
//! layer gathered. Every refusal is a [`Problem`] with a one-line message and a hint.

use crate::capacity::{qcow2_fully_allocated_bytes, qcow2_required_bytes, round_up};
use crate::size::format_bytes;
use serde::{Deserialize, Serialize};

/// Image formats vmshift writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TargetFormat {
    /// Plain bytes, sparse where the filesystem allows.
    Raw,
    /// QEMU copy-on-write v3 (compat 1.1).
    Qcow2,
}

impl TargetFormat {
    /// `raw` or `qcow2`.
    pub fn as_str(&self) -> &'static str {
        match self {
            TargetFormat::Raw => "raw",
            TargetFormat::Qcow2 => "qcow2",
        }
    }
}

/// Whether a running program holds QEMU's image locks on the source.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum LockState {
    /// Nobody holds an OFD lock on QEMU's lock bytes.
    #[default]
    Free,
    /// Locked; the pids that have the file open, when they could be found.
    Held {
        /// Processes that have the file open (may be empty if /proc is not readable).
        pids: Vec<u32>,
        /// Their command names, same order.
        names: Vec<String>,
    },
}

/// Facts about the source, gathered by `vmshift-image`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct SourceFacts {
    /// Path as the user gave it.
    pub path: String,
    /// `raw` or `qcow2` (read from the header).
    pub format: String,
    /// Guest-visible bytes.
    pub virtual_size: u64,
    /// Length of the file in bytes (raw: equals the virtual size).
    pub file_size: u64,
    /// `st_blocks * 512` of the top file.
    pub allocated_bytes: u64,
    /// Guest bytes that block status reports as data across the whole chain (flattened view),
    /// counting compressed clusters at their uncompressed size.
    pub data_bytes: u64,
    /// Number of data extents (bounds the L2 tables a qcow2 target needs).
    pub data_extents: u64,
    /// Guest bytes that are data in the top layer only (shallow copy).
    pub top_data_bytes: u64,
    /// Cluster size for qcow2 (bytes).
    pub cluster_size: Option<u64>,
    /// Backing chain below the top, top first: resolved absolute paths.
    pub backing_chain: Vec<String>,
    /// Whether the top image holds compressed clusters.
    pub has_compressed_clusters: bool,
    /// The file is fully allocated (preallocated / thick).
    pub thick: bool,
    /// Problems found while inspecting (unreadable, corrupt, encrypted, chain broken, …).
    pub problems: Vec<Problem>,
    /// Notes found while inspecting (dirty lazy-refcount image, …).
    pub notes: Vec<String>,
    /// Lock state of the top image.
    pub lock: LockState,
    /// What the source has that a copy may lose (snapshots, bitmaps, compression).
    #[serde(default)]
    pub fidelity: crate::fidelity::FidelityFacts,
}

/// Facts about the destination, gathered by the CLI/runner.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct DestFacts {
    /// Final target path.
    pub target_path: String,
    /// The directory that will hold it exists.
    pub dir_exists: bool,
    /// We may create files there.
    pub dir_writable: bool,
    /// A file already sits under the final name.
    pub target_exists: bool,
    /// The target path is the source itself (same inode) or one of its backing files.
    pub target_is_source: bool,
    /// Bytes free for us at the destination (`f_bavail * f_frsize`).
    pub free_bytes: u64,
    /// A raw target of the virtual size cannot exist on that filesystem (trial truncate failed
    /// with EFBIG). `None` when not probed.
    pub file_too_large: Option<bool>,
    /// When `file_too_large`: the largest file size that filesystem accepted, bytes.
    #[serde(default)]
    pub max_file_size: Option<u64>,
    /// Bytes the existing target occupies and would be given back when replaced.
    pub reclaimable_bytes: u64,
    /// Bytes the partial target of a resumed job already holds there: counted as free,
    /// since the resume writes into it.
    pub resumed_partial_bytes: u64,
    /// The target path is a block device: `free_bytes` is its size, and `--overwrite` does
    /// not apply (device targets are refused elsewhere).
    #[serde(default)]
    pub target_is_device: bool,
}

/// What the operator asked for.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PlanOptions {
    /// Requested target format (`None`: same as the source).
    pub target_format: Option<TargetFormat>,
    /// Copy only the top layer and keep pointing at the backing chain.
    pub keep_backing: bool,
    /// Replace an existing target file.
    pub overwrite: bool,
    /// Copy even though a VM holds the image (crash-consistent copy).
    pub force_share: bool,
}

/// Something that stops the job from going ahead.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Problem {
    /// Stable machine-readable code, e.g. `no_space`.
    pub code: String,
    /// One line that names the thing and what is wrong.
    pub message: String,
    /// What the operator can do about it.
    pub hint: String,
}

impl Problem {
    /// Builds a problem.
    pub fn new(code: &str, message: impl Into<String>, hint: impl Into<String>) -> Self {
        Problem {
            code: code.into(),
            message: message.into(),
            hint: hint.into(),
        }
    }

    /// `message (hint)` on one line.
    pub fn one_line(&self) -> String {
        if self.hint.is_empty() {
            self.message.clone()
        } else {
            format!("{} ({})", self.message, self.hint)
        }
    }
}

/// The decision: what would be done, and what stands in the way.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Plan {
    /// Final target path.
    pub target_path: String,
    /// Target format.
    pub target_format: TargetFormat,
    /// Guest bytes the copy will read as data.
    pub bytes_to_copy: u64,
    /// Upper bound of bytes the target will allocate, metadata included.
    pub target_bytes: u64,
    /// Bytes free at the destination, a resumed partial target's included.
    pub free_bytes: u64,
    /// Virtual size the target will have.
    pub target_virtual_size: u64,
    /// `flattened`, `kept` or `none`.
    pub backing: String,
    /// Preallocate the target fully (the source is thick).
    pub preallocate: bool,
    /// The copy will be only crash-consistent (`--force-share` on a locked image).
    pub crash_consistent: bool,
    /// Everything that refuses the job; empty means go.
    pub problems: Vec<Problem>,
    /// Facts the operator should know (rounding, compression dropped, …).
    pub notes: Vec<String>,
    /// What the job loses because the operator said so (`--drop`), one line each.
    #[serde(default)]
    pub warnings: Vec<String>,
}

impl Plan {
    /// True when nothing refuses the job.
    pub fn go(&self) -> bool {
        self.problems.is_empty()
    }
}

/// Decides whether and how to migrate, from facts only.
pub fn decide(src: &SourceFacts, dst: &DestFacts, opts: &PlanOptions) -> Plan {
    let mut problems = src.problems.clone();
    let mut notes = src.notes.clone();
    let shape = target_shape(src, opts, &mut problems, &mut notes);
    let (bytes_to_copy, target_bytes) = capacity(src, &shape);
    capacity_notes(src, target_bytes, &mut notes);
    let crash_consistent = lock_decision(src, opts, &mut problems, &mut notes);
    destination_problems(dst, opts, &shape, &mut problems);
    let free_bytes = space_problem(dst, target_bytes, &mut problems);

    Plan {
        target_path: dst.target_path.clone(),
        target_format: shape.format,
        bytes_to_copy,
        target_bytes,
        free_bytes,
        target_virtual_size: shape.virtual_size,
        backing: shape.backing.into(),
        preallocate: src.thick,
        crash_consistent,
        problems,
        notes,
        warnings: Vec::new(),
    }
}

/// The target's format, backing and virtual size, as [`target_shape`] decided them.
struct TargetShape {
    format: TargetFormat,
    /// The backing chain is kept (only the top layer is copied).
    keep: bool,
    /// `flattened`, `kept` or `none`.
    backing: &'static str,
    /// Guest-visible bytes of the target.
    virtual_size: u64,
}

/// Format, backing and virtual size of the target, with the problems and notes they raise.
fn target_shape(
    src: &SourceFacts,
    opts: &PlanOptions,
    problems: &mut Vec<Problem>,
    notes: &mut Vec<String>,
) -> TargetShape {
    let source_format = if src.format == "qcow2" {
        TargetFormat::Qcow2
    } else {
        TargetFormat::Raw
    };
    let format = opts.target_format.unwrap_or(source_format);
    let has_chain = !src.backing_chain.is_empty();
    let keep = opts.keep_backing && has_chain;
    let backing = match (has_chain, keep) {
        (false, _) => "none",
        (true, true) => "kept",
        (true, false) => "flattened",
    };
    if opts.keep_backing && !has_chain {
        notes
            .push("--keep-backing given but the image has no backing file: nothing to keep".into());
    }
    if keep && format == TargetFormat::Raw {
        problems.push(Problem::new(
            "keep_backing_raw",
            "--keep-backing needs a qcow2 target: a raw image cannot refer to a backing file",
            "drop --format raw, or drop --keep-backing to flatten the chain",
        ));
    }

    // Virtual size: raw keeps every byte; qcow2 rounds up to 512 like QEMU.
    let virtual_size = match format {
        TargetFormat::Raw => src.virtual_size,
        TargetFormat::Qcow2 => round_up(src.virtual_size, 512),
    };
    if virtual_size != src.virtual_size {
        notes.push(format!(
            "virtual size rounded up from {} to {} bytes: qcow2 sizes are multiples of 512; the extra {} bytes read as zeroes",
            src.virtual_size,
            virtual_size,
            virtual_size - src.virtual_size
        ));
    }
    TargetShape {
        format,
        keep,
        backing,
        virtual_size,
    }
}

/// `(bytes_to_copy, target_bytes)`: guest data bytes the copy reads, and an upper bound of
/// what the target allocates, metadata included.
fn capacity(src: &SourceFacts, shape: &TargetShape) -> (u64, u64) {
    let bytes_to_copy = if shape.keep {
        src.top_data_bytes
    } else {
        src.data_bytes
    };
    let cluster = src.cluster_size.unwrap_or(65536).clamp(512, 2 << 20);
    let preallocate = src.thick;
    let target_bytes = match shape.format {
        TargetFormat::Raw if preallocate => shape.virtual_size,
        TargetFormat::Raw => bytes_to_copy,
        TargetFormat::Qcow2 if preallocate => {
            qcow2_fully_allocated_bytes(shape.virtual_size, cluster)
        }
        TargetFormat::Qcow2 => qcow2_required_bytes(
            shape.virtual_size,
            round_up(bytes_to_copy, cluster),
            src.data_extents,
            cluster,
        ),
    };
    (bytes_to_copy, target_bytes)
}

/// Notes on how the target's allocation differs from the source's (compression, thickness).
fn capacity_notes(src: &SourceFacts, target_bytes: u64, notes: &mut Vec<String>) {
    if src.has_compressed_clusters {
        notes.push(format!(
            "compression is not kept: compressed clusters are written uncompressed ({} on the source may need up to {} at the destination)",
            format_bytes(src.allocated_bytes),
            format_bytes(target_bytes)
        ));
    }
    if src.thick {
        notes.push("the source is fully allocated (thick): the target is preallocated too (preallocation=falloc)".into());
    }
}

/// Whether the copy is only crash-consistent; a held lock without `--force-share` refuses.
fn lock_decision(
    src: &SourceFacts,
    opts: &PlanOptions,
    problems: &mut Vec<Problem>,
    notes: &mut Vec<String>,
) -> bool {
    let LockState::Held { pids, names } = &src.lock else {
        return false;
    };
    if opts.force_share {
        notes.push("the image is in use by a running VM: --force-share copies it anyway, so the copy is only crash-consistent".into());
        return true;
    }
    problems.push(Problem::new(
        "in_use",
        format!(
            "{} is in use by a running VM: {} holds its image lock",
            src.path,
            lock_holder(pids, names)
        ),
        "shut the VM down, use live mode (vmshift migrate --qmp SOCKET), or pass --force-share for a crash-consistent copy",
    ));
    false
}

/// `qemu (pid 12), pid 13`, or `a running QEMU` when no pid could be found.
fn lock_holder(pids: &[u32], names: &[String]) -> String {
    if pids.is_empty() {
        return "a running QEMU".to_string();
    }
    pids.iter()
        .zip(names.iter().chain(std::iter::repeat(&String::new())))
        .map(|(p, n)| {
            if n.is_empty() {
                format!("pid {p}")
            } else {
                format!("{n} (pid {p})")
            }
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// Problems with the destination path itself: missing or read-only directory, the source
/// as target, an existing target, a raw file the filesystem cannot hold.
fn destination_problems(
    dst: &DestFacts,
    opts: &PlanOptions,
    shape: &TargetShape,
    problems: &mut Vec<Problem>,
) {
    if !dst.dir_exists {
        problems.push(Problem::new(
            "dest_missing",
            format!(
                "destination directory of {} does not exist",
                dst.target_path
            ),
            "create it first or name an existing directory",
        ));
    } else if !dst.dir_writable {
        problems.push(Problem::new(
            "dest_not_writable",
            format!("cannot create files next to {}", dst.target_path),
            "check permissions and read-only mounts at the destination",
        ));
    }
    if dst.target_is_source {
        problems.push(Problem::new(
            "same_file",
            format!(
                "target {} is the source image (or one of its backing files)",
                dst.target_path
            ),
            "choose another destination",
        ));
    } else if dst.target_exists && !opts.overwrite && !dst.target_is_device {
        problems.push(Problem::new(
            "target_exists",
            format!("target {} already exists", dst.target_path),
            "pass --overwrite to replace it; the old file is replaced only after the copy is verified",
        ));
    }
    if shape.format == TargetFormat::Raw && dst.file_too_large == Some(true) {
        problems.push(Problem::new(
            "file_too_large",
            format!(
                "a raw target of {} bytes ({}) is larger than the destination filesystem's maximum file size{}",
                shape.virtual_size,
                format_bytes(shape.virtual_size),
                dst.max_file_size.map_or_else(String::new, |m| format!(
                    " ({m} bytes, {})",
                    format_bytes(m)
                ))
            ),
            "use --format qcow2, or a filesystem with larger files (XFS, btrfs)",
        ));
    }
}

/// Bytes free at the destination (a resumed partial's included); refuses when the target's
/// `target_bytes` do not fit.
fn space_problem(dst: &DestFacts, target_bytes: u64, problems: &mut Vec<Problem>) -> u64 {
    // The old target is replaced only after the new one is verified, so both coexist.
    let free_bytes = dst.free_bytes.saturating_add(dst.resumed_partial_bytes);
    if dst.dir_exists && target_bytes > free_bytes {
        let counted = if dst.resumed_partial_bytes > 0 {
            format!(
                ", counting the {} the partial target being resumed already holds",
                format_bytes(dst.resumed_partial_bytes)
            )
        } else {
            String::new()
        };
        problems.push(Problem::new(
            "no_space",
            format!(
                "not enough space at the destination of {}: need {} bytes ({}), {} bytes ({}) {}{counted}",
                dst.target_path,
                target_bytes,
                format_bytes(target_bytes),
                free_bytes,
                format_bytes(free_bytes),
                if dst.target_is_device {
                    "on the device"
                } else {
                    "free"
                }
            ),
            if dst.target_is_device {
                "the device is smaller than the image: choose a larger device or a file on a filesystem"
            } else {
                "free space or choose another datastore"
            },
        ));
    }
    free_bytes
}

#[cfg(test)]
mod tests {
    use super::*;

    fn src() -> SourceFacts {
        SourceFacts {
            path: "/a/disk.qcow2".into(),
            format: "qcow2".into(),
            virtual_size: 32 << 20,
            file_size: 13 << 20,
            allocated_bytes: 13 << 20,
            data_bytes: 12 << 20,
            top_data_bytes: 12 << 20,
            cluster_size: Some(65536),
            ..Default::default()
        }
    }

    fn dst() -> DestFacts {
        DestFacts {
            target_path: "/b/disk.qcow2".into(),
            dir_exists: true,
            dir_writable: true,
            free_bytes: 1 << 40,
            ..Default::default()
        }
    }

    #[test]
    fn a_resumed_partial_counts_as_free_and_the_refusal_says_so() {
        let mut d = dst();
        d.free_bytes = 2 << 20;
        d.resumed_partial_bytes = 4 << 20;
        let p = decide(&src(), &d, &opts());
        assert_eq!(p.free_bytes, 6 << 20);
        assert_eq!(p.problems[0].code, "no_space");
        assert!(
            p.problems[0].message.ends_with(
                "6291456 bytes (6.0 MiB) free, counting the 4.0 MiB the partial target being resumed already holds"
            ),
            "{}",
            p.problems[0].message
        );
        d.resumed_partial_bytes = 64 << 20;
        assert!(decide(&src(), &d, &opts()).problems.is_empty());
    }

    fn opts() -> PlanOptions {
        PlanOptions {
            target_format: None,
            keep_backing: false,
            overwrite: false,
            force_share: false,
        }
    }

    #[test]
    fn plan_goes_ahead_when_everything_fits() {
        let p = decide(&src(), &dst(), &opts());
        assert!(p.go(), "{:?}", p.problems);
        assert_eq!(p.target_format, TargetFormat::Qcow2);
        assert_eq!(p.target_bytes, 12_910_592);
    }

    #[test]
    fn plan_refuses_target_smaller_than_allocated_size() {
        let mut d = dst();
        d.free_bytes = 8 << 20;
        let p = decide(&src(), &d, &opts());
        assert_eq!(p.problems.len(), 1);
        assert_eq!(p.problems[0].code, "no_space");
        assert!(p.problems[0].message.contains("12910592"));
        assert!(p.problems[0].message.contains("8388608"));
    }

    #[test]
    fn plan_refuses_locked_source_unless_forced_then_marks_crash_consistent() {
        let mut s = src();
        s.lock = LockState::Held {
            pids: vec![42],
            names: vec!["qemu-system-x86".into()],
        };
        let p = decide(&s, &dst(), &opts());
        assert_eq!(p.problems[0].code, "in_use");
        assert!(p.problems[0].message.contains("pid 42"));
        let mut o = opts();
        o.force_share = true;
        let p = decide(&s, &dst(), &o);
        assert!(p.go());
        assert!(p.crash_consistent);
    }

    #[test]
    fn plan_refuses_existing_target_without_overwrite() {
        let mut d = dst();
        d.target_exists = true;
        assert_eq!(
            decide(&src(), &d, &opts()).problems[0].code,
            "target_exists"
        );
        let mut o = opts();
        o.overwrite = true;
        assert!(decide(&src(), &d, &o).go());
    }

    #[test]
    fn a_device_target_is_measured_by_its_size_and_never_told_to_overwrite() {
        let mut d = dst();
        d.target_exists = true;
        d.target_is_device = true;
        d.free_bytes = 4 << 20;
        let p = decide(&src(), &d, &opts());
        assert_eq!(p.problems.len(), 1, "{:?}", p.problems);
        assert_eq!(p.problems[0].code, "no_space");
        assert!(p.problems[0]
            .message
            .contains("4194304 bytes (4.0 MiB) on the device"));
        assert!(!p.problems[0].one_line().contains("--overwrite"));
    }

    #[test]
    fn plan_refuses_raw_target_the_filesystem_cannot_hold() {
        let mut d = dst();
        d.file_too_large = Some(true);
        d.max_file_size = Some(17_592_186_040_320);
        let mut o = opts();
        o.target_format = Some(TargetFormat::Raw);
        assert_eq!(decide(&src(), &d, &o).problems[0].code, "file_too_large");
    }

    #[test]
    fn plan_keeps_raw_size_exact_and_notes_qcow2_rounding() {
        let mut s = src();
        s.format = "raw".into();
        s.virtual_size = 5_000_001;
        let p = decide(&s, &dst(), &opts());
        assert_eq!(p.target_virtual_size, 5_000_001);
        let mut o = opts();
        o.target_format = Some(TargetFormat::Qcow2);
        let p = decide(&s, &dst(), &o);
        assert_eq!(p.target_virtual_size, 5_000_192);
        assert!(p.notes.iter().any(|n| n.contains("rounded up")));
    }

    #[test]
    fn plan_uses_uncompressed_need_for_compressed_sources() {
        let mut s = src();
        s.virtual_size = 8 << 20;
        s.data_bytes = 8 << 20;
        s.allocated_bytes = 800 << 10;
        s.has_compressed_clusters = true;
        let mut d = dst();
        d.free_bytes = 2 << 20;
        let p = decide(&s, &d, &opts());
        assert_eq!(p.target_bytes, 8_716_288);
        assert_eq!(p.problems[0].code, "no_space");
        assert!(p
            .notes
            .iter()
            .any(|n| n.contains("compression is not kept")));
    }

    #[test]
    fn keep_backing_with_raw_target_is_refused() {
        let mut s = src();
        s.backing_chain = vec!["/a/base.qcow2".into()];
        let o = PlanOptions {
            target_format: Some(TargetFormat::Raw),
            keep_backing: true,
            ..opts()
        };
        assert_eq!(decide(&s, &dst(), &o).problems[0].code, "keep_backing_raw");
    }
}
