//! Process locks: one process per job and per target path. A lock is an exclusive `flock` on
//! a small file holding the owner's pid; the kernel drops it when the owner exits or is
//! killed, so a crashed job never leaves a stale lock behind (the file stays, unlocked).

use rustix::fs::{flock, FlockOperation};
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, Write};
use std::path::{Path, PathBuf};

/// Why a lock could not be taken.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    /// Another live process holds it.
    #[error("{what} is held by process {pid} (lock file {})", path.display())]
    Held {
        /// What the lock protects, e.g. `job 01a2…` or `target /srv/b/web01.raw`.
        what: String,
        /// The holder's pid as it wrote it (0 when unreadable).
        pid: u32,
        /// The lock file.
        path: PathBuf,
    },
    /// The lock file could not be created or locked.
    #[error("cannot use the lock file {}: {source}", path.display())]
    Io {
        /// The lock file.
        path: PathBuf,
        /// The I/O error.
        source: io::Error,
    },
}

/// A held lock; released on drop (or when the process dies).
#[derive(Debug)]
pub struct FileLock {
    _file: File,
    path: PathBuf,
}

impl FileLock {
    /// Takes the exclusive lock at `path` without waiting and writes our pid into it.
    /// `what` names the protected thing in the error.
    ///
    /// # Errors
    /// [`LockError::Held`] with the holder's pid, or [`LockError::Io`].
    pub fn acquire(path: &Path, what: &str) -> Result<FileLock, LockError> {
        let io_err = |source| LockError::Io {
            path: path.to_path_buf(),
            source,
        };
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(io_err)?;
        }
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .map_err(io_err)?;
        match flock(&file, FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => {}
            Err(rustix::io::Errno::WOULDBLOCK) => {
                return Err(LockError::Held {
                    what: what.to_string(),
                    pid: read_pid(&mut file),
                    path: path.to_path_buf(),
                })
            }
            Err(e) => return Err(io_err(e.into())),
        }
        file.set_len(0).map_err(io_err)?;
        file.rewind().map_err(io_err)?;
        writeln!(file, "{}", std::process::id()).map_err(io_err)?;
        Ok(FileLock {
            _file: file,
            path: path.to_path_buf(),
        })
    }

    /// The lock file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// The pid of the live process holding the lock at `path`, or `None` when nobody holds it
/// (no file, or the file is unlocked: its last owner finished or died).
pub fn holder(path: &Path) -> Option<u32> {
    let mut file = OpenOptions::new().read(true).open(path).ok()?;
    match flock(&file, FlockOperation::NonBlockingLockShared) {
        Ok(()) => {
            let _ = flock(&file, FlockOperation::Unlock);
            None
        }
        Err(_) => Some(read_pid(&mut file)),
    }
}

fn read_pid(file: &mut File) -> u32 {
    let mut s = String::new();
    let _ = file.rewind();
    let _ = file.read_to_string(&mut s);
    s.trim().parse().unwrap_or(0)
}

/// The lock file name for a target path: a stable 64-bit FNV-1a hash of its bytes, so any
/// path (spaces, quotes, very long) maps to a short, safe file name.
pub fn target_lock_name(target: &Path) -> String {
    use std::os::unix::ffi::OsStrExt;
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in target.as_os_str().as_bytes() {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("target-{h:016x}.lock")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_holder_is_refused_with_the_first_ones_pid_and_a_dropped_lock_is_free() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("locks/job-x.lock");
        let first = FileLock::acquire(&p, "job x").unwrap();
        match FileLock::acquire(&p, "job x") {
            Err(LockError::Held { pid, what, .. }) => {
                assert_eq!(pid, std::process::id());
                assert_eq!(what, "job x");
            }
            other => panic!("expected Held, got {other:?}"),
        }
        assert_eq!(holder(&p), Some(std::process::id()));
        drop(first);
        assert_eq!(holder(&p), None);
        assert!(FileLock::acquire(&p, "job x").is_ok());
    }

    #[test]
    fn target_lock_names_are_stable_and_distinct() {
        let a = target_lock_name(Path::new("/srv/b/web01.raw"));
        assert_eq!(a, target_lock_name(Path::new("/srv/b/web01.raw")));
        assert_ne!(a, target_lock_name(Path::new("/srv/b/web02.raw")));
        assert!(a.starts_with("target-") && a.ends_with(".lock"));
    }
}
