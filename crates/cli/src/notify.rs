//! Notifications from the command line: the config file (`--config FILE`, else
//! `$VMSHIFT_CONFIG`, else `/etc/vmshift/config.toml` when it exists) read by the commands
//! that run a job, a `Notifier` observing the job's events, and a bounded wait at exit.

use crate::cli::{Cli, Command};
use anyhow::Result;
use std::path::PathBuf;
use std::time::Duration;
use vmshift_notify::{Notifier, NotifyConfig};

/// The config file used when neither `--config` nor `$VMSHIFT_CONFIG` names one.
pub const DEFAULT_CONFIG: &str = "/etc/vmshift/config.toml";

/// How long `vmshift` waits at exit for notifications still queued or retrying, s; what
/// is left then is recorded `abandoned`.
pub const FLUSH_TIMEOUT: Duration = vmshift_notify::DEFAULT_FLUSH_TIMEOUT;

/// The config file that applies: `--config`, `$VMSHIFT_CONFIG` (when not empty), or the
/// default one when it exists.
pub fn config_path(cli: &Cli) -> Option<PathBuf> {
    if let Some(p) = &cli.config {
        return Some(p.clone());
    }
    if let Some(p) = std::env::var_os("VMSHIFT_CONFIG").filter(|p| !p.is_empty()) {
        return Some(PathBuf::from(p));
    }
    let default = PathBuf::from(DEFAULT_CONFIG);
    default.exists().then_some(default)
}

/// The notifier for `cli`'s command: `None` for commands that run no job, or when the
/// config configures no notification.
///
/// # Errors
/// The config file cannot be read or is wrong (one line naming it and the position).
pub fn start(cli: &Cli) -> Result<Option<Notifier>> {
    let runs_a_job = matches!(
        cli.command,
        Command::Migrate(_)
            | Command::Resume { .. }
            | Command::Rollback { .. }
            | Command::Cancel { .. }
            | Command::Demo { .. }
    );
    if !runs_a_job {
        return Ok(None);
    }
    let Some(path) = config_path(cli) else {
        return Ok(None);
    };
    let config = NotifyConfig::from_config_file(&path)?;
    if config.is_empty() {
        return Ok(None);
    }
    Ok(Some(Notifier::start(config)))
}

/// Waits (at most [`FLUSH_TIMEOUT`]) for the notifications still on their way and says
/// which did not go through.
pub fn finish(notifier: Option<Notifier>) {
    let Some(n) = notifier else {
        return;
    };
    for problem in n.flush(FLUSH_TIMEOUT) {
        eprintln!("vmshift: warning: {problem}");
    }
}
