//! The runner's error type. Refusals and job failures are not errors: they are outcomes
//! (exit status 2 or 1, with a report). A `RunnerError` means the runner could not do its
//! own bookkeeping: the journal, the state directory, QEMU unreachable, a report unwritable.

/// What stopped the runner itself. Messages are one line and name the file or socket.
#[derive(Debug, thiserror::Error)]
pub enum RunnerError {
    /// The journal could not be opened, read or written.
    #[error(transparent)]
    Journal(#[from] vmshift_journal::JournalError),
    /// A QMP conversation failed.
    #[error(transparent)]
    Qmp(#[from] vmshift_qmp::QmpError),
    /// The live driver failed outside a job (e.g. while inspecting the VM).
    #[error(transparent)]
    Live(#[from] vmshift_qmp::live::LiveError),
    /// A file operation failed; the message names the file.
    #[error("{message}: {source}")]
    Io {
        /// What was being done, naming the file.
        message: String,
        /// The cause.
        source: std::io::Error,
    },
    /// The request cannot be run as written (a destination that is neither a path nor a
    /// configured datastore): nothing was started. Front ends exit 2 / answer 400.
    #[error("{0}")]
    Refused(String),
    /// Anything else, as one line.
    #[error("{0}")]
    Other(String),
}

impl RunnerError {
    /// An error from a one-line message.
    pub fn msg(message: impl Into<String>) -> Self {
        RunnerError::Other(message.into())
    }
}

impl From<serde_json::Error> for RunnerError {
    fn from(e: serde_json::Error) -> Self {
        RunnerError::Other(e.to_string())
    }
}

/// `Result` with [`RunnerError`].
pub type Result<T, E = RunnerError> = std::result::Result<T, E>;

/// Adds a message to an I/O error (`.with_path(|| format!("cannot write {}", p.display()))`).
pub(crate) trait IoContext<T> {
    /// Wraps the error as [`RunnerError::Io`] with the message `f` gives.
    fn io_context(self, f: impl FnOnce() -> String) -> Result<T>;
}

impl<T> IoContext<T> for std::result::Result<T, std::io::Error> {
    fn io_context(self, f: impl FnOnce() -> String) -> Result<T> {
        self.map_err(|source| RunnerError::Io {
            message: f(),
            source,
        })
    }
}

/// Turns a missing value into a [`RunnerError::Other`] with the message `f` gives.
pub(crate) trait OrMsg<T> {
    /// `Some(v)` → `Ok(v)`; `None` → the error.
    fn or_msg(self, f: impl FnOnce() -> String) -> Result<T>;
}

impl<T> OrMsg<T> for Option<T> {
    fn or_msg(self, f: impl FnOnce() -> String) -> Result<T> {
        self.ok_or_else(|| RunnerError::Other(f()))
    }
}
