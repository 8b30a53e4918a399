//! The state directory (`$VMSHIFT_STATE_DIR`, else `/var/lib/vmshift` as root, else
//! `$XDG_STATE_HOME/vmshift`) and report files.

use crate::error::IoContext;
use crate::{Result, RunnerError};
use std::path::{Path, PathBuf};
use vmshift_core::report::Report;

/// The state directory, created if missing.
///
/// # Errors
/// When it cannot be created.
pub fn state_dir() -> Result<PathBuf> {
    let dir = if let Some(d) = std::env::var_os("VMSHIFT_STATE_DIR") {
        PathBuf::from(d)
    } else if rustix::process::geteuid().is_root() {
        PathBuf::from("/var/lib/vmshift")
    } else if let Some(x) = std::env::var_os("XDG_STATE_HOME") {
        PathBuf::from(x).join("vmshift")
    } else {
        let home = std::env::var_os("HOME")
            .ok_or_else(|| RunnerError::msg("neither VMSHIFT_STATE_DIR nor HOME is set"))?;
        PathBuf::from(home).join(".local/state/vmshift")
    };
    std::fs::create_dir_all(&dir)
        .io_context(|| format!("cannot create the state directory {}", dir.display()))?;
    Ok(dir)
}

/// Writes the report as `<state>/reports/<job>.json` and `.md`, plus `extra` when given
/// (Markdown if it ends in `.md`, JSON otherwise). Returns the JSON path in the state dir.
///
/// # Errors
/// When a file cannot be written.
pub fn write_report(report: &Report, extra: Option<&Path>) -> Result<PathBuf> {
    let dir = state_dir()?.join("reports");
    std::fs::create_dir_all(&dir).io_context(|| format!("cannot create {}", dir.display()))?;
    let json = serde_json::to_string_pretty(report)?;
    let md = report.to_markdown();
    let json_path = dir.join(format!("{}.json", report.job_id));
    std::fs::write(&json_path, &json)
        .io_context(|| format!("cannot write {}", json_path.display()))?;
    let md_path = dir.join(format!("{}.md", report.job_id));
    std::fs::write(&md_path, &md).io_context(|| format!("cannot write {}", md_path.display()))?;
    if let Some(p) = extra {
        let body = if p.extension().is_some_and(|e| e == "md") {
            md
        } else {
            json
        };
        std::fs::write(p, body)
            .io_context(|| format!("cannot write the report to {}", p.display()))?;
    }
    Ok(json_path)
}

/// Marks the stored report (JSON and Markdown beside it) `rolled_back`.
pub fn update_report_status(json_path: &Path, references: &[String]) {
    let Ok(text) = std::fs::read_to_string(json_path) else {
        return;
    };
    let Ok(mut report) = serde_json::from_str::<vmshift_core::report::Report>(&text) else {
        return;
    };
    report.status = vmshift_core::JobStatus::RolledBack;
    report.references = references.to_vec();
    if let Ok(s) = serde_json::to_string_pretty(&report) {
        let _ = std::fs::write(json_path, s);
        let _ = std::fs::write(json_path.with_extension("md"), report.to_markdown());
    }
}

/// The current UTC time as RFC 3339 with milliseconds (the journal's and reports' format).
pub fn now_rfc3339() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}
