//! Command-line definitions (clap). Parsing only: commands are carried out elsewhere.

use clap::{Parser, Subcommand, ValueEnum};
use std::path::PathBuf;

/// Move a VM's disk storage, offline or live, and prove nothing was lost.
#[derive(Debug, Parser)]
#[command(name = "vmshift", version, about, long_about = None)]
pub struct Cli {
    /// The command.
    #[command(subcommand)]
    pub command: Command,
}

/// Image formats vmshift writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FormatArg {
    /// Plain bytes, sparse.
    Raw,
    /// qcow2 v3.
    Qcow2,
}

/// A property of the source the copy may drop (`--drop`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DropArg {
    /// qcow2 internal snapshots.
    Snapshots,
    /// qcow2 persistent dirty bitmaps.
    Bitmaps,
    /// Compressed clusters are written uncompressed.
    Compression,
}

impl DropArg {
    /// The core's name for it.
    pub fn property(self) -> vmshift_core::fidelity::Property {
        match self {
            DropArg::Snapshots => vmshift_core::fidelity::Property::Snapshots,
            DropArg::Bitmaps => vmshift_core::fidelity::Property::Bitmaps,
            DropArg::Compression => vmshift_core::fidelity::Property::Compression,
        }
    }
}

/// How an offline copy does its I/O.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, ValueEnum, serde::Serialize, serde::Deserialize,
)]
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

/// When an offline copy's target is read back for verification.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, ValueEnum, serde::Serialize, serde::Deserialize,
)]
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

/// Every subcommand.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Show an image's format, sizes, backing chain, features and lock state.
    Info {
        /// The image file (not with --qmp).
        #[arg(
            required_unless_present = "qmp",
            default_value = ".",
            hide_default_value = true
        )]
        image: PathBuf,
        /// Show the disks of a running QEMU through its QMP socket instead of an image.
        #[arg(long, value_name = "SOCKET")]
        qmp: Option<PathBuf>,
        /// Format of the image if you know it (default: read from its header).
        #[arg(long, value_enum)]
        source_format: Option<FormatArg>,
        /// Format of backing files whose format the image does not record.
        #[arg(long, value_enum)]
        backing_format: Option<FormatArg>,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Pre-flight only: print the plan and every problem; exit 0 if the migration would go
    /// ahead, 2 if refused.
    Check(MigrateArgs),
    /// Copy, verify, finalize and report (offline: the VM must be off).
    Migrate(MigrateArgs),
    /// Run the main job on a bundled sample VM disk and print the report.
    Demo {
        /// Print NDJSON events and the report on stdout.
        #[arg(long)]
        json: bool,
        /// Skip the live part (booting the test guest and moving its disk while it writes).
        #[arg(long)]
        offline_only: bool,
    },
    /// List the jobs in the journal (id, kind, source, destination, status, progress).
    Jobs {
        /// Print one JSON array instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Show one job (id or unique prefix) with its phase history.
    Status {
        /// Job id or a unique prefix of it.
        job: String,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Continue an interrupted, failed or cancelled job: offline from its last checkpoint; live by
    /// mirroring again (before the pivot) or finishing its phases (after it).
    Resume {
        /// Job id or a unique prefix of it.
        job: String,
        /// Also write the report here (JSON, or Markdown when the name ends in .md).
        #[arg(long)]
        report: Option<PathBuf>,
        /// Print NDJSON events on stdout (human text goes to stderr).
        #[arg(long)]
        json: bool,
    },
    /// Stop a running job at the next chunk boundary (or close an interrupted one).
    Cancel {
        /// Job id or a unique prefix of it.
        job: String,
        /// Keep the partial target so `vmshift resume` can continue later.
        #[arg(long)]
        keep_partial: bool,
    },
    /// Undo a succeeded job: offline, delete its target (the source must still exist); live,
    /// mirror the disks back to their old place as a new job.
    Rollback {
        /// Job id or a unique prefix of it.
        job: String,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
}

/// Arguments shared by `check` and `migrate` (also stored in the journal to resume a job).
#[derive(Debug, Clone, clap::Args, serde::Serialize, serde::Deserialize)]
pub struct MigrateArgs {
    /// The source image (qcow2 or raw); not with --qmp.
    #[arg(
        required_unless_present = "qmp",
        default_value = ".",
        hide_default_value = true
    )]
    pub source: PathBuf,
    /// Live migration options (`--qmp SOCKET` moves the disks of a running QEMU).
    #[command(flatten)]
    #[serde(default)]
    pub live: crate::live::LiveFlags,
    /// Destination: an existing directory (the image keeps its file name) or a file path.
    #[arg(long)]
    pub to: PathBuf,
    /// Target format (default: the source's).
    #[arg(long, value_enum)]
    pub format: Option<FormatArg>,
    /// Format of the source if you know it (default: read from its header).
    #[arg(long, value_enum)]
    pub source_format: Option<FormatArg>,
    /// Format of backing files whose format the image does not record (never guessed).
    #[arg(long, value_enum)]
    pub backing_format: Option<FormatArg>,
    /// Copy only the top layer and keep referring to the backing chain (default: flatten).
    /// Live: mirror with sync=top (`--shallow` is the same flag).
    #[arg(long, visible_alias = "shallow")]
    pub keep_backing: bool,
    /// Bandwidth limit, e.g. 50M (binary units: MiB/s).
    #[arg(long, value_parser = parse_size_arg)]
    pub bwlimit: Option<u64>,
    /// Skip verification (the report says so).
    #[arg(long)]
    pub no_verify: bool,
    /// When an offline copy's target is read back to verify it: `during-copy` (each chunk
    /// right after its writes) or `after-copy` (the whole target again once it is synced).
    #[arg(long, value_enum, default_value_t = VerifyMode::DuringCopy, conflicts_with_all = ["no_verify", "qmp"])]
    #[serde(default)]
    pub verify: VerifyMode,
    /// Delete the source after a successful verification (never while another image uses
    /// it as a backing file).
    #[arg(long)]
    pub delete_source: bool,
    /// Replace an existing target (only after the new copy is verified).
    #[arg(long)]
    pub overwrite: bool,
    /// Copy an image a running VM holds (crash-consistent copy).
    #[arg(long)]
    pub force_share: bool,
    /// Copy although the target cannot keep these properties of the source (comma list:
    /// snapshots, bitmaps, compression); each dropped one is a warning in the report.
    /// Without it, such a source is refused.
    #[arg(long, value_enum, value_delimiter = ',')]
    #[serde(default)]
    pub drop: Vec<DropArg>,
    /// Worker threads for the copy (default: twice the CPUs, 8 to 16: the copy is I/O-bound).
    #[arg(long, value_parser = parse_threads)]
    pub threads: Option<usize>,
    /// Offline copy I/O: `buffered` (page cache) or `direct` (O_DIRECT, page cache bypassed;
    /// verification then reads the target back from the disk). Not with --qmp: a live copy
    /// uses the cache mode QEMU has for the disk.
    #[arg(long, value_enum, default_value_t = IoMode::Buffered, conflicts_with = "qmp")]
    #[serde(default)]
    pub io: IoMode,
    /// Print NDJSON events on stdout (human text goes to stderr).
    #[arg(long)]
    pub json: bool,
    /// Also write the report here (JSON, or Markdown when the name ends in .md).
    #[arg(long)]
    pub report: Option<PathBuf>,
    /// Keep the partial target on any failure or cancellation (default: kept after a crash
    /// or a read/write error, removed after cancellation, out-of-space or a verification
    /// mismatch), so `vmshift resume` continues from the last checkpoint.
    #[arg(long)]
    #[serde(default)]
    pub keep_partial: bool,
    /// Do not record the job in the journal (no resume; the partial target is removed on
    /// any failure).
    #[arg(long)]
    #[serde(default)]
    pub no_journal: bool,
}

fn parse_size_arg(s: &str) -> Result<u64, String> {
    vmshift_core::parse_size(s).map_err(|e| e.to_string())
}

fn parse_threads(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(n @ 1..=256) => Ok(n),
        _ => Err(format!(
            "invalid thread count {s:?}: use a number from 1 to 256"
        )),
    }
}
