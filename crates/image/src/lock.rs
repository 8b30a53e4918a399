//! QEMU image locking: a running QEMU holds OFD byte-range locks on its image files
//! (bytes 100.. for permissions it uses, 200.. for permissions it does not share; see
//! QEMU block/file-posix.c, `raw_apply_lock_bytes`). We probe those bytes to tell whether a
//! VM uses an image, and take the same locks qemu-img takes while we read a source.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::path::Path;
use vmshift_core::plan::LockState;

/// First lock byte for permissions in use.
const LOCK_PERM_BASE: i64 = 100;
/// First lock byte for permissions not shared.
const LOCK_SHARED_BASE: i64 = 200;
/// QEMU permission bit: consistent read.
const PERM_CONSISTENT_READ: i64 = 0;
/// QEMU permission bit: write.
const PERM_WRITE: i64 = 1;
/// QEMU permission bit: resize.
const PERM_RESIZE: i64 = 3;

/// Lock bytes whose holder makes a copy unsafe: somebody may write or resize the image
/// (QEMU holds these for a writable disk), or somebody does not share consistent reads.
/// Readers — a VM using the image as a read-only backing file, another vmshift copy — hold
/// none of them.
const UNSAFE_FOR_COPY: [i64; 3] = [
    LOCK_PERM_BASE + PERM_WRITE,
    LOCK_PERM_BASE + PERM_RESIZE,
    LOCK_SHARED_BASE + PERM_CONSISTENT_READ,
];

// The F_* lock constants are small positive values; libc types them c_int, flock wants c_short.
#[allow(clippy::cast_possible_truncation)]
const WRLCK: libc::c_short = libc::F_WRLCK as libc::c_short;
#[allow(clippy::cast_possible_truncation)]
const RDLCK: libc::c_short = libc::F_RDLCK as libc::c_short;
#[allow(clippy::cast_possible_truncation)]
const UNLCK: libc::c_short = libc::F_UNLCK as libc::c_short;
#[allow(clippy::cast_possible_truncation)]
const SEEK_SET: libc::c_short = libc::SEEK_SET as libc::c_short;

fn ofd_lock(
    file: &File,
    cmd: libc::c_int,
    kind: libc::c_short,
    start: i64,
    len: i64,
) -> io::Result<libc::flock> {
    // SAFETY: flock is plain old data; all-zero is a valid value.
    let mut fl: libc::flock = unsafe { std::mem::zeroed() };
    fl.l_type = kind;
    fl.l_whence = SEEK_SET;
    fl.l_start = start;
    fl.l_len = len;
    fl.l_pid = 0;
    // SAFETY: fd is valid for the life of `file`; `fl` is a valid flock for F_OFD_* commands.
    let rc = unsafe { libc::fcntl(file.as_raw_fd(), cmd, &mut fl) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(fl)
}

/// Tells whether a process holds QEMU's lock bytes on `path` in a way that makes copying it
/// unsafe (it may write or resize the image: a running VM's writable disk), and which
/// processes have it open (from `/proc/*/fd`; OFD locks carry no pid).
///
/// # Errors
/// The error of opening the file or of `fcntl(F_OFD_GETLK)`.
pub fn probe(path: &Path) -> io::Result<LockState> {
    let file = File::open(path)?;
    let mut held = false;
    for byte in UNSAFE_FOR_COPY {
        let fl = ofd_lock(&file, libc::F_OFD_GETLK, WRLCK, byte, 1)?;
        held |= fl.l_type != UNLCK;
    }
    if !held {
        return Ok(LockState::Free);
    }
    let (pids, names) = holders(path);
    Ok(LockState::Held { pids, names })
}

/// Processes (other than us) with `path` open, and their command names.
pub fn holders(path: &Path) -> (Vec<u32>, Vec<String>) {
    let Ok(target) = std::fs::canonicalize(path) else {
        return (Vec::new(), Vec::new());
    };
    let me = std::process::id();
    let mut pids = Vec::new();
    let mut names = Vec::new();
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return (pids, names);
    };
    for p in procs.flatten() {
        let Some(pid) = p.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        if pid == me {
            continue;
        }
        let Ok(fds) = std::fs::read_dir(p.path().join("fd")) else {
            continue;
        };
        if fds
            .flatten()
            .any(|fd| std::fs::read_link(fd.path()).is_ok_and(|l| l == target))
        {
            let name = std::fs::read_to_string(p.path().join("comm"))
                .map(|s| s.trim().to_string())
                .unwrap_or_default();
            pids.push(pid);
            names.push(name);
        }
    }
    (pids, names)
}

/// Takes the locks `qemu-img convert` takes on a source while we read it: "consistent read in
/// use" and "write not shared", so a VM cannot start writing the image under the copy.
/// The locks last as long as the returned file stays open.
///
/// # Errors
/// `WouldBlock`-like errors when a VM holds a conflicting lock.
pub fn hold_for_reading(path: &Path) -> io::Result<File> {
    let file = File::open(path)?;
    for byte in [
        LOCK_PERM_BASE + PERM_CONSISTENT_READ,
        LOCK_SHARED_BASE + PERM_WRITE,
    ] {
        ofd_lock(&file, libc::F_OFD_SETLK, RDLCK, byte, 1)?;
    }
    // Like QEMU's raw_check_lock_bytes(): our locks do not conflict with a writer's, so check
    // that nobody holds a permission we refuse to share.
    for byte in UNSAFE_FOR_COPY {
        if ofd_lock(&file, libc::F_OFD_GETLK, WRLCK, byte, 1)?.l_type != UNLCK {
            return Err(io::Error::new(
                io::ErrorKind::WouldBlock,
                "another process holds the image's write lock",
            ));
        }
    }
    Ok(file)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_writer_lock_is_seen_but_a_reader_lock_is_not() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("img");
        std::fs::write(&p, vec![0u8; 4096]).unwrap();
        assert_eq!(probe(&p).unwrap(), LockState::Free);
        // Another vmshift copy (or a VM reading a backing file) does not make copying unsafe.
        let reader = hold_for_reading(&p).unwrap();
        assert_eq!(probe(&p).unwrap(), LockState::Free);
        // A VM with the image writable holds the WRITE permission byte.
        let vm = File::open(&p).unwrap();
        ofd_lock(
            &vm,
            libc::F_OFD_SETLK,
            RDLCK,
            LOCK_PERM_BASE + PERM_WRITE,
            1,
        )
        .unwrap();
        assert!(matches!(probe(&p).unwrap(), LockState::Held { .. }));
        // ... and then our reading lock (unshare write) cannot be taken.
        drop(reader);
        assert!(hold_for_reading(&p).is_err());
        drop(vm);
        assert_eq!(probe(&p).unwrap(), LockState::Free);
    }
}
