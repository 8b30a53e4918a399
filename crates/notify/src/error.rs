//! The notifications' one error type: a config file that cannot be used, named.

use std::path::PathBuf;

/// Why a notification config cannot be used. Every variant names the config file.
#[derive(Debug, thiserror::Error)]
pub enum NotifyError {
    /// The config file cannot be read.
    #[error("cannot read the config file {}: {source}", path.display())]
    Read {
        /// The config file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The config file is not valid TOML, or its `[notify]` table is wrong.
    #[error("config file {}: {message}", path.display())]
    Config {
        /// The config file.
        path: PathBuf,
        /// What is wrong, where (line and column when known), and what to do.
        message: String,
    },
}
