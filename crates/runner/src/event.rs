//! `JobEvent`: what a running job tells its front end. The CLI's `--json` output is these
//! events serialized one per line (NDJSON); the HTTP service streams the same values.

use serde::Serialize;
use std::path::PathBuf;
use vmshift_core::report::Report;
use vmshift_core::{JobKind, Phase};

/// One event of a job, serialized with an `event` tag:
/// `{"event": "phase", "phase": "copy", "state": "started"}`.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum JobEvent {
    /// The job exists: its id and kind (first event of every migration).
    Job {
        /// The job id (UUID v7).
        job_id: String,
        /// Offline or live.
        kind: JobKind,
        /// The job continues an earlier run (`resume`); absent for live jobs.
        #[serde(skip_serializing_if = "Option::is_none")]
        resumed: Option<bool>,
    },
    /// A phase started or ended.
    Phase {
        /// The phase.
        phase: Phase,
        /// `started` or `ended`.
        state: PhaseState,
        /// How long the phase took, ms (`ended` only).
        #[serde(skip_serializing_if = "Option::is_none")]
        duration_ms: Option<u64>,
    },
    /// Progress of the copy or verification, at most 4 per second.
    Progress(Progress),
    /// Something notable happened (a copy-mode fallback, a bandwidth change).
    Note {
        /// One line.
        message: String,
    },
    /// Something the operator must know about the result (also in the report's `warnings`).
    Warning {
        /// One line.
        message: String,
    },
    /// The demo's guest checked every block of the moved disk.
    GuestCheck {
        /// Blocks of the region the guest writes, all checked.
        blocks: u64,
        /// Blocks of the whole disk, all holding valid stamps.
        disk_blocks: u64,
        /// The oldest sequence a written block may hold.
        floor: u64,
        /// The newest sequence seen.
        max_seq: u64,
    },
    /// The job's report (last event of a migration).
    Report {
        /// The report.
        report: Box<Report>,
        /// Where it was written (`<state>/reports/<job_id>.json`).
        #[serde(skip_serializing_if = "Option::is_none")]
        #[cfg_attr(feature = "openapi", schema(value_type = Option<String>))]
        path: Option<PathBuf>,
    },
    /// A command's machine-readable result that is not a migration report (rollback, set,
    /// cancel); the CLI prints `value` itself with `--json`.
    Result {
        /// The result object.
        value: serde_json::Value,
    },
    /// A line for people (plans, summaries, hints). Not part of the NDJSON stream: the CLI
    /// prints it on stderr.
    Log {
        /// The line.
        line: String,
    },
}

/// Whether a [`JobEvent::Phase`] starts or ends the phase.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum PhaseState {
    /// The phase began.
    Started,
    /// The phase is over.
    Ended,
}

/// A progress sample.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Progress {
    /// What progresses: `copy`, `verify`, `verify-source`.
    pub phase: String,
    /// Guest bytes done, bytes.
    pub done_bytes: u64,
    /// Guest bytes to do, bytes.
    pub total_bytes: u64,
    /// Current rate, bytes/s (offline: since the phase began; live: a sliding window over
    /// QEMU's job offset).
    pub rate_bytes_per_sec: u64,
    /// Estimated time left, ms; `None` when no rate is known (or a mirror waits for ready).
    pub eta_ms: Option<u64>,
    /// Live jobs: per disk.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub disks: Vec<DiskProgress>,
}

/// Progress of one disk of a live job.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct DiskProgress {
    /// Device id (`vd0`).
    pub device: String,
    /// QEMU's job offset, bytes.
    pub done_bytes: u64,
    /// QEMU's job length, bytes.
    pub total_bytes: u64,
    /// The mirror reported ready.
    pub ready: bool,
    /// The mirror copied everything it knows of (offset = length) but is not ready yet.
    pub waiting_for_ready: bool,
    /// QEMU's copy mode (`background`, `write-blocking`).
    pub copy_mode: String,
}

impl JobEvent {
    /// The event's NDJSON line, or `None` for [`JobEvent::Log`] (human text only).
    pub fn to_json_line(&self) -> Option<String> {
        match self {
            JobEvent::Log { .. } => None,
            JobEvent::Result { value } => Some(value.to_string()),
            e => serde_json::to_string(e).ok(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_serialize_as_the_ndjson_wire_format() {
        let e = JobEvent::Phase {
            phase: Phase::Copy,
            state: PhaseState::Started,
            duration_ms: None,
        };
        assert_eq!(
            e.to_json_line().unwrap(),
            r#"{"event":"phase","phase":"copy","state":"started"}"#
        );
        let p = JobEvent::Progress(Progress {
            phase: "copy".into(),
            done_bytes: 1,
            total_bytes: 2,
            rate_bytes_per_sec: 3,
            eta_ms: Some(4),
            disks: Vec::new(),
        });
        let v: serde_json::Value = serde_json::from_str(&p.to_json_line().unwrap()).unwrap();
        assert_eq!(v["event"], "progress");
        assert_eq!(v["done_bytes"], 1);
        assert_eq!(v["eta_ms"], 4);
        assert!(v.get("disks").is_none());
        assert!(JobEvent::Log { line: "x".into() }.to_json_line().is_none());
    }
}
