//! The image crate's error: a stable code, the file it concerns, what is wrong, and a hint.

use std::fmt;
use std::path::{Path, PathBuf};

/// Something wrong with an image or its chain. Displayed as one line:
/// `PATH: message (hint)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageError {
    /// Stable machine-readable code (e.g. `backing_missing`), used in reports.
    pub code: &'static str,
    /// The file concerned.
    pub path: PathBuf,
    /// What is wrong, without the path.
    pub message: String,
    /// What the operator can do.
    pub hint: String,
}

impl ImageError {
    /// Builds an error.
    pub fn new(
        code: &'static str,
        path: &Path,
        message: impl Into<String>,
        hint: impl Into<String>,
    ) -> Self {
        ImageError {
            code,
            path: path.to_path_buf(),
            message: message.into(),
            hint: hint.into(),
        }
    }

    /// Converts to a plan problem (`PATH message`, hint kept apart).
    pub fn to_problem(&self) -> vmshift_core::plan::Problem {
        vmshift_core::plan::Problem::new(
            self.code,
            format!("{} {}", self.path.display(), self.message),
            self.hint.clone(),
        )
    }
}

impl fmt::Display for ImageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.path.display(), self.message)?;
        if !self.hint.is_empty() {
            write!(f, " ({})", self.hint)?;
        }
        Ok(())
    }
}

impl std::error::Error for ImageError {}
