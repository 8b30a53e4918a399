//! Command-line definitions (clap). Parsing only: commands are carried out elsewhere.

use clap::{Parser, Subcommand};
use std::path::PathBuf;
use vmshift_runner::{DomainRequest, JobRequest, LiveRequest, OfflineRequest};

/// Move a VM's disk storage, offline or live, and prove nothing was lost.
#[derive(Debug, Parser)]
#[command(name = "vmshift", version, about, long_about = None)]
pub struct Cli {
    /// Config file (TOML): `serve` reads all of it, `datastores`, `evacuate`, `check` and
    /// `migrate` its datastores (`--to NAME`); its [notify] table sends notifications
    /// for the jobs that serve, migrate, resume, rollback, cancel and demo run (default:
    /// $VMSHIFT_CONFIG, else /etc/vmshift/config.toml when it exists).
    #[arg(long, global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// The command.
    #[command(subcommand)]
    pub command: Command,
}

pub use vmshift_runner::{CopyMode, DropProperty, ImageFormat as FormatArg, IoMode, VerifyMode};

/// Options only the live path uses (flattened into `check`/`migrate`).
#[derive(Debug, Clone, Default, clap::Args)]
pub struct LiveFlags {
    /// QMP socket of a running QEMU: move its disks live (blockdev-mirror + pivot) instead of
    /// copying an image file.
    #[arg(long, value_name = "SOCKET")]
    pub qmp: Option<PathBuf>,
    /// Live: disk to move (device id like vd0, qdev path or node name); repeat for several.
    /// Default: every writable disk.
    /// With --domain: the disk's target dev (vda).
    #[arg(long = "disk", value_name = "ID", requires = "vm")]
    pub disks: Vec<String>,
    /// Live: mirror copy mode.
    #[arg(long, value_enum, default_value_t = CopyMode::Auto)]
    pub copy_mode: CopyMode,
    /// Live: give up cleanly if the disks are not all ready after this many seconds.
    #[arg(long, value_name = "SECONDS", requires = "vm")]
    pub ready_timeout: Option<u64>,
    /// A libvirt domain: move its disks (live through libvirt's block copy when it runs,
    /// offline when it is shut off) and update its definition.
    #[arg(long, value_name = "NAME", conflicts_with = "qmp")]
    pub domain: Option<String>,
    /// libvirt URI (default: $LIBVIRT_DEFAULT_URI, else qemu:///system, as virsh).
    #[arg(long, value_name = "URI", requires = "domain")]
    pub connect: Option<String>,
    /// With --domain: a directory storage pool as the destination (refreshed afterwards).
    #[arg(long, value_name = "POOL", requires = "domain", conflicts_with = "to")]
    pub pool: Option<String>,
}

/// Every subcommand.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Show an image's format, sizes, backing chain, features and lock state.
    Info {
        /// The image file (not with --qmp or --domain).
        #[arg(
            required_unless_present_any = ["qmp", "domain"],
            conflicts_with_all = ["qmp", "domain"],
            default_value = ".",
            hide_default_value = true
        )]
        image: PathBuf,
        /// Show the disks of a running QEMU through its QMP socket instead of an image.
        #[arg(long, value_name = "SOCKET")]
        qmp: Option<PathBuf>,
        /// Show a libvirt domain: its state, disks and what a move would do.
        #[arg(long, value_name = "NAME", conflicts_with = "qmp")]
        domain: Option<String>,
        /// libvirt URI (default: $LIBVIRT_DEFAULT_URI, else qemu:///system).
        #[arg(long, value_name = "URI", requires = "domain")]
        connect: Option<String>,
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
        /// Skip the live parts (booting the test guest and moving its disk while it writes).
        #[arg(long)]
        offline_only: bool,
        /// Require the libvirt part (a domain moved through libvirt); by default it runs
        /// when libvirt is installed.
        #[arg(long, conflicts_with_all = ["offline_only", "no_libvirt"])]
        libvirt: bool,
        /// Skip the libvirt part.
        #[arg(long)]
        no_libvirt: bool,
    },
    /// List the jobs in the journal (id, kind, source, destination, status, progress).
    #[command(args_conflicts_with_subcommands = true)]
    Jobs {
        /// Print one JSON array instead of a table.
        #[arg(long)]
        json: bool,
        /// Also list jobs refused by their check (hidden by default: nothing happened).
        #[arg(long)]
        all: bool,
        /// Only jobs with this status (running, interrupted, succeeded, failed, cancelled,
        /// refused, rolled_back).
        #[arg(long, value_name = "STATUS")]
        status: Option<String>,
        /// Only jobs started since this long ago (30m, 12h, 7d) or this RFC 3339 time.
        #[arg(long, value_name = "AGE|TIME")]
        since: Option<String>,
        /// Housekeeping.
        #[command(subcommand)]
        action: Option<JobsAction>,
    },
    /// List the configured datastores (the config file's `datastores`): capacity, free
    /// space, reserve, what the images on each allocate, and a measured latency.
    ///
    /// The latency is one 4 KiB O_DIRECT write and read of a temp file in the root, median
    /// of 5 rounds, cached in the state directory for 10 minutes.
    Datastores {
        /// Print one JSON array instead of a table (sizes in bytes, latency in µs).
        #[arg(long)]
        json: bool,
        /// Measure every latency now instead of reusing one younger than 10 minutes.
        #[arg(long)]
        probe: bool,
    },
    /// Plan moving every image off a datastore (`--plan`): which images move together
    /// (backing chains, a libvirt domain's disks), where each goes, in which wave, what
    /// cannot move and why, and each datastore's free space before and after.
    ///
    /// Running the evacuation is not available yet: only `--plan`.
    Evacuate {
        /// The datastore to empty: its name in the config file, or its root.
        #[arg(value_name = "SOURCE_DS")]
        source: String,
        /// Target datastores, comma-separated names, or `auto`: every other configured one.
        #[arg(
            long,
            value_name = "DS[,DS...]|auto",
            value_delimiter = ',',
            required = true
        )]
        to: Vec<String>,
        /// Print the plan; move nothing.
        #[arg(long)]
        plan: bool,
        /// Print the plan as one JSON object (sizes in bytes, latency in µs).
        #[arg(long)]
        json: bool,
        /// Most moves at once on this host (default 2).
        #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=64))]
        max_parallel: Option<u32>,
        /// Keep the source images after their moves (the source's free space stays as is).
        #[arg(long)]
        keep_source: bool,
        /// libvirt URI whose domains are grouped (default qemu:///system).
        #[arg(long, value_name = "URI")]
        connect: Option<String>,
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
        /// Bandwidth limit for this run, e.g. 50M (binary units: MiB/s; 0: none), instead of
        /// the one the job recorded.
        #[arg(long, value_parser = parse_size_arg, allow_hyphen_values = true)]
        bwlimit: Option<u64>,
    },
    /// Stop a running job at the next chunk boundary (or close an interrupted one).
    Cancel {
        /// Job id or a unique prefix of it.
        job: String,
        /// Keep the partial target so `vmshift resume` can continue later.
        #[arg(long)]
        keep_partial: bool,
    },
    /// Change a running job's settings (in any process): `--bwlimit 20M`, `--bwlimit 0` lifts
    /// the limit. Takes effect within a second and is recorded in the journal and report.
    Set {
        /// Job id or a unique prefix of it.
        job: String,
        /// New bandwidth limit, e.g. 20M (binary units: MiB/s); 0 lifts it.
        #[arg(long, value_parser = parse_size_arg, allow_hyphen_values = true)]
        bwlimit: u64,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Undo a succeeded job: offline, delete its target (the source must still exist); live,
    /// mirror the disks back to their old place as a new job.
    Rollback {
        /// Job id or a unique prefix of it.
        job: String,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
        /// Bandwidth limit of a live move back, e.g. 50M (binary units; 0: none), instead of
        /// the one the job recorded.
        #[arg(long, value_parser = parse_size_arg, allow_hyphen_values = true)]
        bwlimit: Option<u64>,
    },
    /// Run the HTTP service: REST API under /api/v1, a live dashboard at /, Prometheus
    /// metrics at /metrics. Jobs it runs are journaled like the CLI's; SIGTERM interrupts
    /// them so that `resume` continues them.
    ///
    /// Configuration (TOML, the global --config FILE, else $VMSHIFT_CONFIG, else
    /// /etc/vmshift/config.toml): `listen` (default 127.0.0.1:8088); `tokens` (default
    /// /etc/vmshift/tokens); `datastores`, the directories the service may touch (a path
    /// outside them, through `..` or a symlink, gets 403); `[tls]` `cert` and `key` (PEM;
    /// required for a non-loopback address, the key file mode 0600 or 0400); `max_body_bytes`
    /// (default 65536); `[notify]`, webhooks and a command (see vmshift(1)).
    ///
    /// Tokens file (mode 0600, else the service refuses to start): one `NAME ROLE TOKEN` per
    /// line, ROLE `read` (GET, and POST /api/v1/check) or `operate` (everything). Requests
    /// carry `Authorization: Bearer TOKEN`; each mutating call is logged with the token's name.
    ///
    /// Endpoints: POST /api/v1/check, POST|GET /api/v1/jobs, GET|PATCH /api/v1/jobs/{id},
    /// POST /api/v1/jobs/{id}/cancel|resume|rollback, GET /api/v1/jobs/{id}/events
    /// (Server-Sent Events, the objects of --json), GET /api/v1/datastores, GET
    /// /api/v1/openapi.json (OpenAPI 3), GET /healthz (also /api/v1/healthz), GET /metrics (Prometheus), GET / (the
    /// dashboard). Errors are RFC 9457 application/problem+json.
    ///
    /// Signals: SIGTERM or SIGINT stops accepting requests, interrupts running jobs at their
    /// next checkpoint (they are journaled `interrupted`; POST .../resume or `vmshift resume`
    /// continues them) and exits 0 within 120 s.
    Serve {
        /// ADDR:PORT to listen on (default: the configuration's `listen`, else
        /// 127.0.0.1:8088; a non-loopback address needs [tls] in the configuration).
        #[arg(long, value_name = "ADDR")]
        listen: Option<String>,
    },
    /// Print a shell completion script on stdout.
    ///
    /// bash: save it as /usr/share/bash-completion/completions/vmshift (or source it from
    /// ~/.bashrc); zsh: as _vmshift in a directory of $fpath; fish: as
    /// ~/.config/fish/completions/vmshift.fish. The Debian package installs all three.
    Completions {
        /// The shell.
        #[arg(value_enum)]
        shell: crate::docs::CompletionShell,
    },
    /// Write man pages into a directory: vmshift.1 and one per subcommand (vmshift-migrate.1, ...).
    ///
    /// The directory is created if missing; pages of the same names are replaced. Prints the
    /// path of each page written.
    Man {
        /// Directory to write the pages into (e.g. /usr/local/share/man/man1).
        #[arg(long, value_name = "DIR")]
        dir: PathBuf,
    },
}

/// `vmshift jobs` subcommands.
#[derive(Debug, Subcommand)]
pub enum JobsAction {
    /// Forget finished jobs (and their reports) last changed more than AGE ago; never a
    /// running job or one whose partial target is kept for a resume.
    Prune {
        /// Age, e.g. 30d, 12h, 45m.
        #[arg(long, value_name = "AGE", value_parser = parse_age)]
        older_than: std::time::Duration,
    },
}

/// `30d`, `12h`, `45m`, `90s` as a duration.
pub fn parse_age(s: &str) -> Result<std::time::Duration, String> {
    let (n, unit) = s.split_at(s.trim_end_matches(|c: char| c.is_ascii_alphabetic()).len());
    let n: u64 = n
        .parse()
        .map_err(|_| format!("invalid age {s:?}: use a number and a unit, e.g. 30d, 12h, 45m"))?;
    let secs = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => {
            return Err(format!(
                "invalid age {s:?}: the unit is s, m, h or d (e.g. 30d)"
            ))
        }
    };
    Ok(std::time::Duration::from_secs(n.saturating_mul(secs)))
}

/// Arguments shared by `check` and `migrate`; they become a [`vmshift_runner::JobRequest`].
#[derive(Debug, Clone, clap::Args)]
#[command(group(clap::ArgGroup::new("vm").args(["qmp", "domain"]).multiple(false)))]
pub struct MigrateArgs {
    /// The source image (qcow2 or raw); not with --qmp or --domain.
    #[arg(
        required_unless_present_any = ["qmp", "domain"],
        conflicts_with_all = ["qmp", "domain"],
        default_value = ".",
        hide_default_value = true
    )]
    pub source: PathBuf,
    /// Live migration options (`--qmp SOCKET` moves the disks of a running QEMU).
    #[command(flatten)]
    pub live: LiveFlags,
    /// Destination: an existing directory (the image keeps its file name), a file path, or
    /// the name of a datastore in the config file (its root).
    #[arg(
        long,
        required_unless_present = "pool",
        value_name = "DIR|FILE|DATASTORE"
    )]
    pub to: Option<PathBuf>,
    /// Target format (default: the source's).
    #[arg(long, value_enum)]
    pub format: Option<FormatArg>,
    /// Format of the source if you know it (default: read from its header).
    #[arg(long, value_enum, conflicts_with_all = ["qmp", "domain"])]
    pub source_format: Option<FormatArg>,
    /// Format of backing files whose format the image does not record (never guessed).
    #[arg(long, value_enum, conflicts_with_all = ["qmp", "domain"])]
    pub backing_format: Option<FormatArg>,
    /// Copy only the top layer and keep referring to the backing chain (default: flatten).
    /// Live: mirror with sync=top (`--shallow` is the same flag).
    #[arg(long, visible_alias = "shallow")]
    pub keep_backing: bool,
    /// Bandwidth limit, e.g. 50M (binary units: MiB/s).
    #[arg(long, value_parser = parse_size_arg, allow_hyphen_values = true)]
    pub bwlimit: Option<u64>,
    /// Skip verification (the report says so).
    #[arg(long, conflicts_with_all = ["qmp", "domain"])]
    pub no_verify: bool,
    /// When an offline copy's target is read back to verify it: `during-copy` (each chunk
    /// right after its writes) or `after-copy` (the whole target again once it is synced).
    #[arg(long, value_enum, default_value_t = VerifyMode::DuringCopy, conflicts_with_all = ["no_verify", "qmp", "domain"])]
    pub verify: VerifyMode,
    /// Delete the source after a successful verification (never while another image uses
    /// it as a backing file).
    #[arg(long)]
    pub delete_source: bool,
    /// Replace an existing target (only after the new copy is verified).
    #[arg(long, conflicts_with_all = ["qmp", "domain"])]
    pub overwrite: bool,
    /// Copy an image a running VM holds (crash-consistent copy).
    #[arg(long, conflicts_with_all = ["qmp", "domain"])]
    pub force_share: bool,
    /// Copy although the target cannot keep these properties of the source (comma list:
    /// snapshots, bitmaps, compression); each dropped one is a warning in the report.
    /// Without it, such a source is refused.
    #[arg(long, value_enum, value_delimiter = ',', conflicts_with_all = ["qmp", "domain"])]
    pub drop: Vec<DropProperty>,
    /// Worker threads for the copy (default: twice the CPUs, 8 to 16: the copy is I/O-bound).
    #[arg(long, value_parser = parse_threads, conflicts_with_all = ["qmp", "domain"])]
    pub threads: Option<usize>,
    /// Offline copy I/O: `buffered` (page cache) or `direct` (O_DIRECT, page cache bypassed;
    /// verification then reads the target back from the disk). Not with --qmp: a live copy
    /// uses the cache mode QEMU has for the disk.
    #[arg(long, value_enum, default_value_t = IoMode::Buffered, conflicts_with_all = ["qmp", "domain"])]
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
    #[arg(long, conflicts_with_all = ["qmp", "domain"])]
    pub keep_partial: bool,
    /// Do not record the job in the journal (no resume; the partial target is removed on
    /// any failure).
    #[arg(long)]
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

impl MigrateArgs {
    /// The job these arguments ask for: a libvirt domain with `--domain`, live with
    /// `--qmp`, else offline.
    pub fn request(&self) -> JobRequest {
        let to = self.to.clone().unwrap_or_default();
        if let Some(domain) = &self.live.domain {
            return JobRequest::Domain(DomainRequest {
                domain: domain.clone(),
                connect: self.live.connect.clone(),
                to: self.to.clone(),
                pool: self.live.pool.clone(),
                disks: self.live.disks.clone(),
                format: self.format,
                keep_backing: self.keep_backing,
                bwlimit: self.bwlimit,
                copy_mode: self.live.copy_mode,
                ready_timeout: self.live.ready_timeout,
                delete_source: self.delete_source,
                report: self.report.clone(),
                no_journal: self.no_journal,
            });
        }
        match &self.live.qmp {
            Some(qmp) => JobRequest::Live(LiveRequest {
                qmp: qmp.clone(),
                to,
                disks: self.live.disks.clone(),
                format: self.format,
                shallow: self.keep_backing,
                bwlimit: self.bwlimit,
                copy_mode: self.live.copy_mode,
                ready_timeout: self.live.ready_timeout,
                delete_source: self.delete_source,
                report: self.report.clone(),
                no_journal: self.no_journal,
            }),
            None => JobRequest::Offline(OfflineRequest {
                source: self.source.clone(),
                to,
                format: self.format,
                source_format: self.source_format,
                backing_format: self.backing_format,
                keep_backing: self.keep_backing,
                bwlimit: self.bwlimit,
                no_verify: self.no_verify,
                verify: self.verify,
                delete_source: self.delete_source,
                overwrite: self.overwrite,
                force_share: self.force_share,
                drop: self.drop.clone(),
                threads: self.threads,
                io: self.io,
                report: self.report.clone(),
                keep_partial: self.keep_partial,
                no_journal: self.no_journal,
            }),
        }
    }
}
