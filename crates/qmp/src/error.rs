//! Errors of the QMP client.

use std::path::PathBuf;
use std::time::Duration;

/// A failure talking to QEMU over QMP.
#[derive(Debug, thiserror::Error)]
pub enum QmpError {
    /// Connecting to the QMP socket failed.
    #[error("cannot connect to QMP socket {path}: {source}")]
    Connect {
        /// The socket path.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// Reading from or writing to the socket failed.
    #[error("QMP socket I/O failed: {0}")]
    Io(#[from] std::io::Error),
    /// QEMU closed the connection (it quit or crashed).
    #[error("QEMU closed the QMP connection")]
    Closed,
    /// No reply arrived within the command timeout.
    #[error("no reply to {command} within {timeout:?}; QEMU may be busy or hung")]
    Timeout {
        /// The command that timed out.
        command: String,
        /// The timeout that expired.
        timeout: Duration,
    },
    /// The socket accepted the connection but no QMP greeting came: QEMU serves one monitor
    /// client at a time, so another one (libvirtd, a `socat` left open) holds it.
    #[error("no QMP greeting from {path} within {waited:?}: another client holds this monitor (QEMU serves one at a time); close it, or give QEMU a monitor of its own (-qmp unix:PATH,server=on,wait=off)")]
    NoGreeting {
        /// The socket path.
        path: PathBuf,
        /// How long the greeting was waited for.
        waited: Duration,
    },
    /// The peer closed the connection before a whole greeting line arrived.
    #[error("{path} closed the connection before a complete QMP greeting (got {partial}): it is not a QEMU monitor, or QEMU quit")]
    ClosedBeforeGreeting {
        /// The socket path.
        path: PathBuf,
        /// The start of what arrived, quoted.
        partial: String,
    },
    /// A message ran past [`crate::client::MAX_LINE_BYTES`] without a newline.
    #[error("QMP message longer than {} MiB without a newline: the socket is not a QEMU monitor, or QEMU misbehaves", limit >> 20)]
    LineTooLong {
        /// The limit in bytes.
        limit: usize,
    },
    /// A message was not valid JSON or not a QMP message.
    #[error("malformed QMP message: {0}")]
    Protocol(String),
    /// QEMU answered a command with an error.
    #[error("{command} failed: {desc} ({class})")]
    Command {
        /// The command that failed.
        command: String,
        /// QEMU's error class, e.g. `GenericError`.
        class: String,
        /// QEMU's human-readable description.
        desc: String,
    },
}
