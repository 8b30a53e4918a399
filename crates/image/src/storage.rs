//! The imago storage vmshift opens images through.
//!
//! Opened read-only (every source, every backing file) it refuses all writes, so the source
//! is never modified. For qcow2 images left dirty by
//! lazy refcounts, hides the dirty bit from imago: imago refuses dirty images at open because
//! a writer would have to rebuild the refcounts first, but a reader does not need refcounts at
//! all (QEMU opens such images read-only the same way, and `qemu-img check -r` repairs them).

use crate::header::{INCOMPAT_DIRTY, INCOMPAT_FIELD_OFFSET};
use imago::io_buffers::{IoVector, IoVectorMut};
use imago::storage::drivers::CommonStorageHelper;
use imago::{Storage, StorageOpenOptions};
use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

/// An image file for imago: read-only (sources) or writable (targets); a read-only one may
/// present its dirty bit as clear.
#[derive(Debug)]
pub struct ImageFile {
    inner: imago::file::File,
    mask_dirty: bool,
    writable: bool,
    path: PathBuf,
}

impl ImageFile {
    /// Opens `path` read-only. With `mask_dirty`, reads of the qcow2 header return the
    /// dirty bit (incompatible feature bit 0) cleared.
    ///
    /// # Errors
    /// The `io::Error` of opening the file.
    pub fn open_read_only(path: &Path, mask_dirty: bool) -> io::Result<Self> {
        let inner = imago::file::File::open(
            StorageOpenOptions::new()
                .filename(path)
                .write(false)
                .direct(false),
        )?;
        Ok(ImageFile {
            inner,
            mask_dirty,
            writable: false,
            path: path.to_path_buf(),
        })
    }

    /// Opens an existing file read-write (targets only); with `direct`, with `O_DIRECT`
    /// (imago aligns requests to what the file system needs).
    ///
    /// # Errors
    /// The `io::Error` of opening the file (`EINVAL` where the file system refuses
    /// `O_DIRECT`).
    pub fn open_writable(path: &Path, direct: bool) -> io::Result<Self> {
        let inner = imago::file::File::open(
            StorageOpenOptions::new()
                .filename(path)
                .write(true)
                .direct(direct),
        )?;
        Ok(ImageFile {
            inner,
            mask_dirty: false,
            writable: true,
            path: path.to_path_buf(),
        })
    }
}

impl fmt::Display for ImageFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.path.display())
    }
}

fn read_only_error() -> io::Error {
    io::Error::new(
        io::ErrorKind::PermissionDenied,
        "source images are opened read-only",
    )
}

impl Storage for ImageFile {
    fn mem_align(&self) -> usize {
        self.inner.mem_align()
    }

    fn req_align(&self) -> usize {
        self.inner.req_align()
    }

    fn size(&self) -> io::Result<u64> {
        self.inner.size()
    }

    fn resolve_relative_path<P: AsRef<Path>>(&self, relative: P) -> io::Result<PathBuf> {
        self.inner.resolve_relative_path(relative)
    }

    fn get_filename(&self) -> Option<PathBuf> {
        Some(self.path.clone())
    }

    unsafe fn pure_readv(&self, bufv: IoVectorMut<'_>, offset: u64) -> io::Result<()> {
        let dirty_byte = INCOMPAT_FIELD_OFFSET + 7; // big-endian: bit 0 lives in the last byte
        let len = bufv.len();
        if !self.mask_dirty || offset > dirty_byte || offset + len <= dirty_byte {
            // SAFETY: forwarded unchanged; the caller upholds pure_readv's contract.
            return unsafe { self.inner.pure_readv(bufv, offset) };
        }
        // SAFETY: the iovecs describe the buffers `bufv` mutably borrows for this call.
        let iovs: Vec<libc::iovec> = unsafe { bufv.as_iovec() }.to_vec();
        // SAFETY: forwarded unchanged; the caller upholds pure_readv's contract.
        unsafe { self.inner.pure_readv(bufv, offset) }?;
        let mut pos = dirty_byte - offset;
        for iov in iovs {
            if pos < iov.iov_len as u64 {
                // SAFETY: pos < iov_len, and the buffer is still mutably borrowed by our caller
                // for the duration of this call, with nobody else accessing it.
                unsafe {
                    let p =
                        (iov.iov_base as *mut u8).add(usize::try_from(pos).unwrap_or(usize::MAX));
                    *p &= !(INCOMPAT_DIRTY.to_be_bytes()[7]);
                }
                break;
            }
            pos -= iov.iov_len as u64;
        }
        Ok(())
    }

    fn zero_align(&self) -> usize {
        self.inner.zero_align()
    }

    fn discard_align(&self) -> usize {
        self.inner.discard_align()
    }

    unsafe fn pure_writev(&self, bufv: IoVector<'_>, offset: u64) -> io::Result<()> {
        if !self.writable {
            return Err(read_only_error());
        }
        // SAFETY: forwarded unchanged; the caller upholds the contract.
        unsafe { self.inner.pure_writev(bufv, offset) }
    }

    unsafe fn pure_write_zeroes(&self, offset: u64, length: u64) -> io::Result<()> {
        if !self.writable {
            return Err(read_only_error());
        }
        // SAFETY: forwarded unchanged; the caller upholds the contract.
        unsafe { self.inner.pure_write_zeroes(offset, length) }
    }

    unsafe fn pure_write_allocated_zeroes(&self, offset: u64, length: u64) -> io::Result<()> {
        if !self.writable {
            return Err(read_only_error());
        }
        // SAFETY: forwarded unchanged; the caller upholds the contract.
        unsafe { self.inner.pure_write_allocated_zeroes(offset, length) }
    }

    unsafe fn pure_discard(&self, offset: u64, length: u64) -> io::Result<()> {
        if !self.writable {
            return Err(read_only_error());
        }
        // SAFETY: forwarded unchanged; the caller upholds the contract.
        unsafe { self.inner.pure_discard(offset, length) }
    }

    fn flush(&self) -> io::Result<()> {
        if self.writable {
            self.inner.flush()
        } else {
            Ok(())
        }
    }

    fn sync(&self) -> io::Result<()> {
        if self.writable {
            self.inner.sync()
        } else {
            Ok(())
        }
    }

    fn resize(
        &self,
        new_size: u64,
        prealloc_mode: imago::storage::PreallocateMode,
    ) -> io::Result<()> {
        if !self.writable {
            return Err(read_only_error());
        }
        self.inner.resize(new_size, prealloc_mode)
    }

    unsafe fn invalidate_cache(&self) -> io::Result<()> {
        // SAFETY: forwarded; the caller upholds the contract.
        unsafe { self.inner.invalidate_cache() }
    }

    fn get_storage_helper(&self) -> &CommonStorageHelper {
        self.inner.get_storage_helper()
    }
}
