//! The job report: the JSON contract (DESIGN.md §7) and its Markdown rendering for people.
//!
//! Sizes are bytes, durations milliseconds, rates bytes per second.

use crate::job::{JobKind, JobStatus, Phase};
use crate::size::format_bytes;
use serde::{Deserialize, Serialize};
use std::fmt::Write as _;

/// One side of a migration: where an image is and what it looks like.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ImageSide {
    /// Absolute path of the image file.
    pub path: String,
    /// `raw` or `qcow2`.
    pub format: String,
    /// Guest-visible size in bytes.
    pub virtual_size: u64,
    /// Bytes the file occupies on its filesystem (`st_blocks * 512`).
    pub allocated_bytes: u64,
    /// Backing files this image refers to, top first (empty when flat; always present).
    #[serde(default)]
    pub backing_chain: Vec<String>,
}

/// One phase's timing.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct PhaseTiming {
    /// Phase name ([`Phase::as_str`]).
    pub name: Phase,
    /// RFC 3339 UTC start time.
    pub started_at: String,
    /// Wall time in milliseconds.
    pub duration_ms: u64,
}

/// Outcome of the verify phase.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Verification {
    /// Digest construction, e.g. `blake3-sparse-1MiB` (see `vmshift-copy::digest`).
    pub algorithm: String,
    /// Hex digest of the source's guest-visible content (empty when skipped).
    pub source_digest: String,
    /// Hex digest of the target's guest-visible content (empty when skipped).
    pub destination_digest: String,
    /// Guest bytes covered (the virtual size).
    pub verified_bytes: u64,
    /// `match`, `mismatch` or `skipped`.
    pub result: String,
    /// First differing guest offset, when `result` is `mismatch`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_mismatch_offset: Option<u64>,
    /// How the target was read: `during-copy` (each chunk read back from the target file
    /// as it was written; after the fsync the target's mapping on disk and any data outside
    /// those chunks are checked through a fresh reader), `after-copy` (the synced target
    /// read in full), `none` when skipped (`--no-verify`), or empty for live jobs (whose
    /// `algorithm` is `qemu-mirror`).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub method: String,
}

/// Why a job failed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct JobError {
    /// The phase that failed.
    pub phase: Phase,
    /// One-line reason, naming the file and what to do.
    pub message: String,
}

/// One disk of a live job.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct DiskReport {
    /// QEMU device id (e.g. `vd0`) or node name.
    pub device: String,
    /// Image path before the move.
    pub old_path: String,
    /// Image path after the move.
    pub new_path: String,
    /// Target format.
    pub format: String,
    /// Bytes the mirror copied.
    pub bytes: u64,
    /// `background` or `write-blocking`.
    pub copy_mode: String,
    /// Why that copy mode ran.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub copy_mode_reason: String,
    /// Pivot pause: `job-complete` request to job concluded, ms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pivot_ms: Option<u64>,
    /// Mirror start to ready, ms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time_to_ready_ms: Option<u64>,
}

/// The report every job writes (JSON is the contract; Markdown is for people).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Report {
    /// Job id (UUID v7).
    pub job_id: String,
    /// `offline` or `live`.
    pub kind: JobKind,
    /// Final status.
    pub status: JobStatus,
    /// vmshift version that ran the job.
    pub vmshift_version: String,
    /// RFC 3339 UTC start time.
    pub started_at: String,
    /// Wall time of the whole job, ms.
    pub duration_ms: u64,
    /// The image as it was found.
    pub source: ImageSide,
    /// The image as it was written (or would have been).
    pub destination: ImageSide,
    /// Phase timings in order.
    pub phases: Vec<PhaseTiming>,
    /// Bytes written as data to the target in this run (offline). Live and domain moves:
    /// the final mirror jobs' progress, which QEMU counts over the whole virtual size (zero
    /// and unallocated areas included) plus areas the guest dirtied again.
    pub bytes_copied: u64,
    /// Bytes not written because they were holes or zeroes.
    pub bytes_skipped_zero: u64,
    /// Offline: guest bytes that block status reported as data and this run read (the
    /// plan's "to copy", less chunks reused from earlier runs). `bytes_copied` is what of
    /// them was written as data; the rest were zero blocks found in them, written as zeroes
    /// or left as holes, and counted in `bytes_skipped_zero`. 0 for live and domain moves.
    #[serde(default)]
    pub data_bytes: u64,
    /// Bytes reused from an earlier interrupted run (resume).
    #[serde(default)]
    pub bytes_reused: u64,
    /// Guest offsets of journaled chunks a resume found altered and copied again.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub repaired_chunks: Vec<u64>,
    /// Copy throughput: guest bytes processed per second of copy phase.
    pub throughput_bytes_per_sec: u64,
    /// Verification outcome.
    pub verification: Verification,
    /// `consistent`, or `crash_consistent` when the source was copied while a VM held it.
    pub consistency: String,
    /// `flattened`, `kept` (shallow copy over the same backing files) or `none`.
    pub backing: String,
    /// What changed about the image's shape (rounding, compression dropped, thick kept, …).
    #[serde(default)]
    pub notes: Vec<String>,
    /// Things the operator should look at.
    #[serde(default)]
    pub warnings: Vec<String>,
    /// What still points at the old path and must change (VM configs, other images).
    #[serde(default)]
    pub references: Vec<String>,
    /// Whether the source was deleted (`--delete-source`).
    #[serde(default)]
    pub source_deleted: bool,
    /// Live jobs: one entry per disk.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub disks: Vec<DiskReport>,
    /// Live jobs: the largest per-disk pivot pause, ms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pivot_ms: Option<u64>,
    /// Bandwidth limit changes made while the job ran (`vmshift set JOB --bwlimit`), in
    /// order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub bwlimit_changes: Vec<BwlimitChange>,
    /// Set when the job did not succeed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<JobError>,
}

/// One bandwidth limit change of a running job.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct BwlimitChange {
    /// RFC 3339 UTC time the job applied it.
    pub at: String,
    /// The new limit, bytes/s (0: unlimited).
    pub bytes_per_sec: u64,
}

impl Report {
    /// A report skeleton for a job that is about to start.
    pub fn new(job_id: &str, kind: JobKind, started_at: &str) -> Self {
        Report {
            job_id: job_id.to_string(),
            kind,
            status: JobStatus::Running,
            vmshift_version: env!("CARGO_PKG_VERSION").to_string(),
            started_at: started_at.to_string(),
            duration_ms: 0,
            source: ImageSide::default(),
            destination: ImageSide::default(),
            phases: Vec::new(),
            bytes_copied: 0,
            bytes_skipped_zero: 0,
            data_bytes: 0,
            bytes_reused: 0,
            repaired_chunks: Vec::new(),
            throughput_bytes_per_sec: 0,
            verification: Verification {
                algorithm: String::new(),
                source_digest: String::new(),
                destination_digest: String::new(),
                verified_bytes: 0,
                result: "skipped".into(),
                first_mismatch_offset: None,
                method: String::new(),
            },
            consistency: "consistent".into(),
            backing: "none".into(),
            notes: Vec::new(),
            warnings: Vec::new(),
            references: Vec::new(),
            source_deleted: false,
            disks: Vec::new(),
            pivot_ms: None,
            bwlimit_changes: Vec::new(),
            error: None,
        }
    }

    /// Renders the report as Markdown for people.
    pub fn to_markdown(&self) -> String {
        let mut md = String::new();
        self.write_heading(&mut md);
        self.write_sides(&mut md);
        self.write_copy_summary(&mut md);
        self.write_verification(&mut md);
        self.write_disks(&mut md);
        self.write_phases(&mut md);
        self.write_lists(&mut md);
        md
    }

    /// Title, status and the error, if any.
    fn write_heading(&self, md: &mut String) {
        let kind = match self.kind {
            JobKind::Offline => "offline",
            JobKind::Live => "live",
            JobKind::Domain => "libvirt domain",
        };
        let _ = writeln!(md, "# vmshift {kind} migration {}\n", self.job_id);
        let _ = writeln!(md, "**Status: {}**\n", self.status.as_str());
        if let Some(e) = &self.error {
            let _ = writeln!(md, "Error in phase `{}`: {}\n", e.phase, e.message);
        }
    }

    /// The source/destination table.
    fn write_sides(&self, md: &mut String) {
        let _ = writeln!(md, "| | source | destination |\n|---|---|---|");
        let _ = writeln!(
            md,
            "| path | `{}` | `{}` |",
            self.source.path, self.destination.path
        );
        let _ = writeln!(
            md,
            "| format | {} | {} |",
            self.source.format, self.destination.format
        );
        let _ = writeln!(
            md,
            "| virtual size | {} ({} B) | {} ({} B) |",
            format_bytes(self.source.virtual_size),
            self.source.virtual_size,
            format_bytes(self.destination.virtual_size),
            self.destination.virtual_size
        );
        let _ = writeln!(
            md,
            "| allocated | {} | {} |",
            format_bytes(self.source.allocated_bytes),
            format_bytes(self.destination.allocated_bytes)
        );
        let _ = writeln!(
            md,
            "| backing chain | {} | {} |\n",
            chain_cell(&self.source.backing_chain),
            chain_cell(&self.destination.backing_chain)
        );
    }

    /// One paragraph: bytes copied, skipped and reused, speed, backing, consistency.
    fn write_copy_summary(&self, md: &mut String) {
        if matches!(self.kind, JobKind::Live | JobKind::Domain)
            && self.verification.algorithm == "qemu-mirror"
        {
            // QEMU's mirror counts every byte of the disk it has processed (zero and
            // unallocated areas included, dirtied areas again): it is not "data written".
            let _ = writeln!(
                md,
                "Mirrored {} (QEMU's count: the disks' virtual size plus areas the guest dirtied again), at {}/s. Backing: {}.\n",
                format_bytes(self.bytes_copied),
                format_bytes(self.throughput_bytes_per_sec),
                self.backing,
            );
            return;
        }
        let _ = writeln!(
            md,
            "{}Copied {} as data, skipped {} of zeroes/holes{}, at {}/s. Backing: {}. Consistency: {}.\n",
            self.data_read_note(),
            format_bytes(self.bytes_copied),
            format_bytes(self.bytes_skipped_zero),
            if self.bytes_reused > 0 {
                format!(", reused {} from an earlier run", format_bytes(self.bytes_reused))
            } else {
                String::new()
            },
            format_bytes(self.throughput_bytes_per_sec),
            self.backing,
            self.consistency
        );
    }

    /// "Read X of data (Y of it zero blocks). " when the data read holds zero blocks, which
    /// are then not copied as data: the plan's "to copy" and `bytes_copied` differ by them.
    pub fn data_read_note(&self) -> String {
        if self.data_bytes > self.bytes_copied {
            format!(
                "Read {} of data ({} of it zero blocks). ",
                format_bytes(self.data_bytes),
                format_bytes(self.data_bytes - self.bytes_copied)
            )
        } else {
            String::new()
        }
    }

    /// The verification result, digests and first mismatch.
    fn write_verification(&self, md: &mut String) {
        let v = &self.verification;
        let algorithm = if v.algorithm.is_empty() {
            "none"
        } else {
            &v.algorithm
        };
        // Nothing was hashed: no byte count to claim.
        let _ = if v.verified_bytes == 0 {
            writeln!(md, "Verification ({algorithm}): **{}**", v.result)
        } else {
            writeln!(
                md,
                "Verification ({algorithm}): **{}** over {} guest bytes",
                v.result, v.verified_bytes
            )
        };
        if !v.source_digest.is_empty() {
            let _ = writeln!(
                md,
                "\n- source `{}`\n- destination `{}`",
                v.source_digest, v.destination_digest
            );
        }
        if matches!(v.method.as_str(), "during-copy" | "after-copy") {
            let _ = writeln!(md, "\nTarget read back {}.", v.method.replace('-', " "));
        }
        if let Some(off) = v.first_mismatch_offset {
            let _ = writeln!(md, "\nFirst difference at guest offset {off:#x}.");
        }
    }

    /// The live job's disks, when there are any.
    fn write_disks(&self, md: &mut String) {
        if !self.disks.is_empty() {
            let _ = writeln!(
                md,
                "\n| device | old path | new path | format | copy mode | ready ms | pivot ms |\n|---|---|---|---|---|---|---|"
            );
            for d in &self.disks {
                let _ = writeln!(
                    md,
                    "| {} | `{}` | `{}` | {} | {} | {} | {} |",
                    d.device,
                    d.old_path,
                    d.new_path,
                    d.format,
                    d.copy_mode,
                    opt_ms(d.time_to_ready_ms),
                    opt_ms(d.pivot_ms)
                );
            }
        }
    }

    /// Phase timings and bandwidth changes.
    fn write_phases(&self, md: &mut String) {
        let _ = writeln!(md, "\n## Phases\n\n| phase | started | ms |\n|---|---|---|");
        for p in &self.phases {
            let _ = writeln!(md, "| {} | {} | {} |", p.name, p.started_at, p.duration_ms);
        }
        if !self.bwlimit_changes.is_empty() {
            let _ = writeln!(md, "\n## Bandwidth changes\n\n| at | limit |\n|---|---|");
            for c in &self.bwlimit_changes {
                let _ = writeln!(
                    md,
                    "| {} | {} |",
                    c.at,
                    crate::format_limit(c.bytes_per_sec)
                );
            }
        }
    }

    /// Notes, warnings and references (what vmshift changed, as "definition of DOMAIN: …",
    /// or what is left to change by hand), each list only when not empty.
    fn write_lists(&self, md: &mut String) {
        for (title, items) in [
            ("Notes", &self.notes),
            ("Warnings", &self.warnings),
            ("References", &self.references),
        ] {
            if !items.is_empty() {
                let _ = writeln!(md, "\n## {title}\n");
                for i in items {
                    let _ = writeln!(md, "- {i}");
                }
            }
        }
    }
}

fn chain_cell(chain: &[String]) -> String {
    if chain.is_empty() {
        "—".into()
    } else {
        chain
            .iter()
            .map(|c| format!("`{c}`"))
            .collect::<Vec<_>>()
            .join(" → ")
    }
}

fn opt_ms(v: Option<u64>) -> String {
    v.map(|v| v.to_string()).unwrap_or_else(|| "—".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_has_the_design_fields_with_snake_case_values() {
        let mut r = Report::new("j1", JobKind::Offline, "2026-01-01T00:00:00Z");
        r.status = JobStatus::RolledBack;
        let v = serde_json::to_value(&r).unwrap();
        for k in [
            "job_id",
            "kind",
            "status",
            "source",
            "destination",
            "phases",
            "bytes_copied",
            "bytes_skipped_zero",
            "throughput_bytes_per_sec",
            "verification",
        ] {
            assert!(v.get(k).is_some(), "missing {k}");
        }
        assert_eq!(v["status"], "rolled_back");
        assert_eq!(v["kind"], "offline");
        let back: Report = serde_json::from_value(v).unwrap();
        assert_eq!(back, r);
    }

    #[test]
    fn markdown_says_when_the_target_was_read_back() {
        let mut r = Report::new("j", JobKind::Offline, "2026-01-01T00:00:00Z");
        r.verification.method = "during-copy".into();
        assert!(r.to_markdown().contains("Target read back during copy."));
        r.verification.method = "none".into();
        assert!(!r.to_markdown().contains("read back"));
    }

    #[test]
    fn markdown_names_the_mismatch_offset_in_hex() {
        let mut r = Report::new("j1", JobKind::Offline, "t");
        r.verification.result = "mismatch".into();
        r.verification.first_mismatch_offset = Some(0x30000);
        assert!(r.to_markdown().contains("0x30000"));
    }
}
