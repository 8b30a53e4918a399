//! The journal's one error type: what went wrong, with the database file it concerns.

use std::path::PathBuf;

/// Why a journal operation failed. Every variant names the database file.
#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    /// The file is not a SQLite database, or SQLite found it damaged or truncated.
    #[error("the job journal {p} is corrupt or truncated ({detail}): move it aside (mv {p} {p}.bad) to start a fresh journal; `vmshift jobs` lists what can still be read", p = path.display())]
    Corrupt {
        /// The database file.
        path: PathBuf,
        /// What SQLite reported.
        detail: String,
    },
    /// The database was written by a newer vmshift (schema version above ours).
    #[error("the job journal {} has schema version {found}, newer than this vmshift understands ({supported}): use a newer vmshift", path.display())]
    TooNew {
        /// The database file.
        path: PathBuf,
        /// `PRAGMA user_version` found.
        found: i64,
        /// The newest version this build understands.
        supported: i64,
    },
    /// No job has this id (or id prefix).
    #[error("no job {id} in the journal {}: `vmshift jobs` lists the known jobs", path.display())]
    NoSuchJob {
        /// The database file.
        path: PathBuf,
        /// The id or prefix asked for.
        id: String,
    },
    /// An id prefix matches several jobs.
    #[error("job id prefix {id} matches {count} jobs in {}: give more characters", path.display())]
    Ambiguous {
        /// The database file.
        path: PathBuf,
        /// The prefix asked for.
        id: String,
        /// How many jobs matched.
        count: usize,
    },
    /// Any other SQLite or I/O error (locked database, permissions, disk full).
    #[error("the job journal {}: {source}", path.display())]
    Sqlite {
        /// The database file.
        path: PathBuf,
        /// The SQLite error.
        source: rusqlite::Error,
    },
    /// A stored JSON column could not be decoded.
    #[error("the job journal {}: job {id} has unreadable options ({detail})", path.display())]
    BadRecord {
        /// The database file.
        path: PathBuf,
        /// The job.
        id: String,
        /// The decoding error.
        detail: String,
    },
}

impl JournalError {
    /// Wraps a SQLite error, classifying corruption (`SQLITE_CORRUPT`, `SQLITE_NOTADB`) apart.
    pub fn sqlite(path: &std::path::Path, e: rusqlite::Error) -> Self {
        use rusqlite::ErrorCode;
        match e.sqlite_error_code() {
            Some(ErrorCode::DatabaseCorrupt | ErrorCode::NotADatabase) => JournalError::Corrupt {
                path: path.to_path_buf(),
                detail: e.to_string(),
            },
            _ => JournalError::Sqlite {
                path: path.to_path_buf(),
                source: e,
            },
        }
    }

    /// True when the database file itself is damaged.
    pub fn is_corrupt(&self) -> bool {
        matches!(self, JournalError::Corrupt { .. })
    }
}
