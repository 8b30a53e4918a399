//! `JobRequest`: what a front end asks the runner to do, as plain data. The CLI's flags and
//! the HTTP API's JSON body both become this type; the runner never sees either.

use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// One job to run: an offline image move or a live move of a running QEMU's disks.
/// Serialized with a `kind` tag: `{"kind": "offline", "source": "...", "to": "..."}`.
/// Later kinds (libvirt domains, batches) are new variants.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum JobRequest {
    /// Copy an image file (the VM is off).
    Offline(OfflineRequest),
    /// Mirror the disks of a running QEMU over QMP and pivot.
    Live(LiveRequest),
    /// Move the disks of a libvirt domain (live or shut off) and update its definition.
    Domain(DomainRequest),
}

/// Image formats vmshift writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
#[serde(rename_all = "snake_case")]
pub enum ImageFormat {
    /// Plain bytes, sparse.
    Raw,
    /// qcow2.
    Qcow2,
}

/// How an offline copy does its I/O.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
#[serde(rename_all = "snake_case")]
pub enum IoMode {
    /// Through the page cache, a few chunks of it at a time: the source's pages are dropped
    /// once read, the target's handed to the disk as each chunk is done and dropped once
    /// written; verification reads each chunk back from the cache before that.
    #[default]
    Buffered,
    /// `O_DIRECT` source reads and target writes where the file systems allow it, like
    /// `qemu-img convert -t none -T none`: the host's page cache is left to the VMs and the
    /// copy costs little CPU; verification reads the target back from the disk.
    Direct,
}

/// A property of the source that an offline copy may drop when asked (`--drop`); without
/// the request, a source that has it is refused by the check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
#[serde(rename_all = "snake_case")]
pub enum DropProperty {
    /// qcow2 internal snapshots.
    Snapshots,
    /// qcow2 persistent dirty bitmaps.
    Bitmaps,
    /// Compressed clusters are written uncompressed.
    Compression,
}

impl DropProperty {
    /// The core's name for it.
    pub fn property(self) -> vmshift_core::fidelity::Property {
        match self {
            DropProperty::Snapshots => vmshift_core::fidelity::Property::Snapshots,
            DropProperty::Bitmaps => vmshift_core::fidelity::Property::Bitmaps,
            DropProperty::Compression => vmshift_core::fidelity::Property::Compression,
        }
    }
}

/// When an offline copy's target is read back for verification.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
#[serde(rename_all = "snake_case")]
pub enum VerifyMode {
    /// Each chunk right after its writes, while the copy goes on: no second pass over the
    /// target. A write into a chunk by another process after its read-back is not seen.
    #[default]
    DuringCopy,
    /// The whole target again after the fsync, through a fresh reader: one more pass over the
    /// data, and it sees every byte the target ends up with.
    AfterCopy,
}

/// Live mirror copy mode (QEMU's `copy-mode`, qapi/block-core.json `MirrorCopyMode`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
#[serde(rename_all = "kebab-case")]
pub enum CopyMode {
    /// Pick from the measured guest write rate; fall back to write-blocking if the mirror does
    /// not become ready in time.
    #[default]
    Auto,
    /// Guest writes are copied later (may never converge under heavy writes).
    Background,
    /// Guest writes go to both sides synchronously (always converges; slower guest writes).
    WriteBlocking,
}

/// An offline move of one image (and, flattened or kept, its backing chain).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct OfflineRequest {
    /// The source image file (qcow2 or raw). Opened read-only, never modified.
    #[cfg_attr(feature = "openapi", schema(value_type = String))]
    pub source: PathBuf,
    /// Destination: an existing directory (the image keeps its file name, the extension
    /// follows the format), a file path, or a configured datastore's name (its root; see
    /// [`crate::Runner::resolve`]).
    #[cfg_attr(feature = "openapi", schema(value_type = String))]
    pub to: PathBuf,
    /// Target format; `None`: the source's (or the one `to`'s file name asks for).
    #[serde(default)]
    pub format: Option<ImageFormat>,
    /// The source's format when the caller knows it; `None`: read from its header.
    #[serde(default)]
    pub source_format: Option<ImageFormat>,
    /// Format of backing files whose format the image does not record (never probed).
    #[serde(default)]
    pub backing_format: Option<ImageFormat>,
    /// Copy only the top layer and re-point the target at the backing chain (default:
    /// flatten the chain into one image).
    #[serde(default)]
    pub keep_backing: bool,
    /// Bandwidth limit in bytes/s of guest data read; `None` or 0: unlimited. Changeable
    /// while the job runs ([`crate::JobHandle::set_bwlimit`], `vmshift set`).
    #[serde(default)]
    pub bwlimit: Option<u64>,
    /// Skip verification (the report says so).
    #[serde(default)]
    pub no_verify: bool,
    /// When the target is read back to verify it.
    #[serde(default)]
    pub verify: VerifyMode,
    /// Delete the source after a successful verification (never while another image uses
    /// it as a backing file).
    #[serde(default)]
    pub delete_source: bool,
    /// Replace an existing target, only after the new copy is verified.
    #[serde(default)]
    pub overwrite: bool,
    /// Copy an image a running VM holds (the report marks the copy crash-consistent).
    #[serde(default)]
    pub force_share: bool,
    /// Properties of the source the copy may drop (each becomes a report warning); a
    /// source with a property not listed here that the copy cannot keep is refused.
    #[serde(default)]
    pub drop: Vec<DropProperty>,
    /// Copy worker threads, 1–256; `None`: twice the CPUs, 8 to 16.
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(minimum = 1, maximum = 256))]
    pub threads: Option<usize>,
    /// Offline copy I/O.
    #[serde(default)]
    pub io: IoMode,
    /// Also write the report here (Markdown if the name ends in `.md`, else JSON).
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<String>))]
    pub report: Option<PathBuf>,
    /// Keep the partial target on any failure or cancellation, for resume.
    #[serde(default)]
    pub keep_partial: bool,
    /// Do not record the job in the journal (no resume, no control from other processes;
    /// the partial target is removed on any failure).
    #[serde(default)]
    pub no_journal: bool,
}

impl OfflineRequest {
    /// A request to move `source` to `to` with every option at its default.
    pub fn new(source: impl Into<PathBuf>, to: impl Into<PathBuf>) -> Self {
        OfflineRequest {
            source: source.into(),
            to: to.into(),
            format: None,
            source_format: None,
            backing_format: None,
            keep_backing: false,
            bwlimit: None,
            no_verify: false,
            verify: VerifyMode::default(),
            delete_source: false,
            overwrite: false,
            force_share: false,
            drop: Vec::new(),
            threads: None,
            io: IoMode::default(),
            report: None,
            keep_partial: false,
            no_journal: false,
        }
    }
}

/// A live move of a running QEMU's disks: `blockdev-mirror` per disk, one pivot for all.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct LiveRequest {
    /// The VM's QMP socket (`-qmp unix:SOCKET,server=on,wait=off`).
    #[cfg_attr(feature = "openapi", schema(value_type = String))]
    pub qmp: PathBuf,
    /// Destination directory, or a configured datastore's name (its root); each target keeps
    /// its source's file name.
    #[cfg_attr(feature = "openapi", schema(value_type = String))]
    pub to: PathBuf,
    /// Disks to move (device id, qdev path or node name); empty: every writable disk.
    #[serde(default)]
    pub disks: Vec<String>,
    /// Target format; `None`: the source's.
    #[serde(default)]
    pub format: Option<ImageFormat>,
    /// Mirror with `sync=top`: only the top layer; the target keeps the backing chain.
    #[serde(default)]
    pub shallow: bool,
    /// The mirror jobs' `speed` in bytes/s; `None` or 0: unlimited. Changeable while the job
    /// runs (`block-job-set-speed`).
    #[serde(default)]
    pub bwlimit: Option<u64>,
    /// Mirror copy mode.
    #[serde(default)]
    pub copy_mode: CopyMode,
    /// Give up cleanly if not every disk is ready after this many seconds.
    #[serde(default)]
    pub ready_timeout: Option<u64>,
    /// Delete the old image files after the pivot.
    #[serde(default)]
    pub delete_source: bool,
    /// Also write the report here (Markdown if the name ends in `.md`, else JSON).
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<String>))]
    pub report: Option<PathBuf>,
    /// Do not record the job in the journal.
    #[serde(default)]
    pub no_journal: bool,
}

impl LiveRequest {
    /// A request to move every writable disk of the VM at `qmp` to `to`, defaults otherwise.
    pub fn new(qmp: impl Into<PathBuf>, to: impl Into<PathBuf>) -> Self {
        LiveRequest {
            qmp: qmp.into(),
            to: to.into(),
            disks: Vec::new(),
            format: None,
            shallow: false,
            bwlimit: None,
            copy_mode: CopyMode::default(),
            ready_timeout: None,
            delete_source: false,
            report: None,
            no_journal: false,
        }
    }
}

/// A move of a libvirt domain's disks: through libvirt's block copy when the domain runs, by
/// the offline engine (checked, verified) when it is shut off; then the persistent
/// definition names the new files.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct DomainRequest {
    /// The domain's name.
    pub domain: String,
    /// libvirt URI; `None`: `$LIBVIRT_DEFAULT_URI`, else `qemu:///system` (as virsh).
    #[serde(default)]
    pub connect: Option<String>,
    /// Destination directory or a configured datastore's name (each disk keeps its file
    /// name). Exactly one of `to`, `pool`.
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<String>))]
    pub to: Option<PathBuf>,
    /// Destination storage pool (a directory pool); refreshed after the move.
    #[serde(default)]
    pub pool: Option<String>,
    /// Disks to move, by target dev (`vda`); empty: every writable disk.
    #[serde(default)]
    pub disks: Vec<String>,
    /// Target format; `None`: each disk's (from the definition's `<driver type>`).
    #[serde(default)]
    pub format: Option<ImageFormat>,
    /// Copy only the top image and keep the backing chain (live: a shallow copy).
    #[serde(default)]
    pub keep_backing: bool,
    /// Bandwidth limit, bytes/s (each disk's block job live); `None` or 0: unlimited.
    #[serde(default)]
    pub bwlimit: Option<u64>,
    /// Live copy mode.
    #[serde(default)]
    pub copy_mode: CopyMode,
    /// Give up cleanly if not every disk is ready after this many seconds (live).
    #[serde(default)]
    pub ready_timeout: Option<u64>,
    /// Delete the old image files once the definition names the new ones.
    #[serde(default)]
    pub delete_source: bool,
    /// Also write the report here (Markdown if the name ends in `.md`, else JSON).
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<String>))]
    pub report: Option<PathBuf>,
    /// Do not record the job in the journal.
    #[serde(default)]
    pub no_journal: bool,
}

impl DomainRequest {
    /// A request to move every writable disk of `domain` to directory `to`.
    pub fn new(domain: impl Into<String>, to: impl Into<PathBuf>) -> Self {
        DomainRequest {
            domain: domain.into(),
            connect: None,
            to: Some(to.into()),
            pool: None,
            disks: Vec::new(),
            format: None,
            keep_backing: false,
            bwlimit: None,
            copy_mode: CopyMode::default(),
            ready_timeout: None,
            delete_source: false,
            report: None,
            no_journal: false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_round_trips_through_json_with_its_kind_tag() {
        let r = JobRequest::Offline(OfflineRequest::new("/a/x.qcow2", "/b/"));
        let v = serde_json::to_value(&r).unwrap();
        assert_eq!(v["kind"], "offline");
        assert_eq!(serde_json::from_value::<JobRequest>(v).unwrap(), r);
    }

    #[test]
    fn an_unknown_field_is_refused() {
        let e = serde_json::from_str::<JobRequest>(
            r#"{"kind":"live","qmp":"/run/q.sock","to":"/b","speed":5}"#,
        )
        .unwrap_err();
        assert!(e.to_string().contains("unknown field `speed`"), "{e}");
    }

    #[test]
    fn omitted_options_take_their_defaults() {
        let r: JobRequest =
            serde_json::from_str(r#"{"kind":"offline","source":"/a/x.raw","to":"/b/"}"#).unwrap();
        assert_eq!(
            r,
            JobRequest::Offline(OfflineRequest::new("/a/x.raw", "/b/"))
        );
    }
}
