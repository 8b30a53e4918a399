//! Target images: created fresh under a temporary name, written by the copy engine, synced.

use crate::chain::{resolve_chain, Chain, ChainOptions, LayerFormat};
pub use crate::qemu_img::Qcow2Options;
use crate::qemu_img::{create_qcow2, Qcow2CreateSpec};
use crate::reader::{open_chain_imago, ImageReader, ImagoImage};
use crate::ImageError;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// What to create.
#[derive(Debug, Clone)]
pub struct TargetSpec {
    /// Path to create (the temporary name).
    pub path: PathBuf,
    /// `raw` or `qcow2`.
    pub format: LayerFormat,
    /// Exact virtual size in bytes (raw keeps every byte; qcow2 must be a multiple of 512).
    pub virtual_size: u64,
    /// qcow2 cluster size in bytes.
    pub cluster_size: u64,
    /// Allocate every byte up front (thick source).
    pub preallocate: bool,
    /// qcow2 only: backing reference to record (name, format) and the resolved chain below it,
    /// opened read-only so zero clusters over it stay distinct from unallocated ones.
    pub backing: Option<(String, LayerFormat, Chain)>,
    /// Write with `O_DIRECT` (bypassing the page cache) where the file system allows it;
    /// silently buffered where it does not.
    pub direct: bool,
    /// qcow2 only: compat level, refcount width, lazy refcounts (kept from the source).
    pub qcow2: Qcow2Options,
}

/// An open target.
#[derive(Debug)]
pub enum TargetImage {
    /// A raw file written with `pwrite`; zeroes become holes (or zeroed ranges when thick).
    Raw {
        /// The file.
        file: File,
        /// Keep the allocation: zero with `FALLOC_FL_ZERO_RANGE`, never punch holes.
        thick: bool,
        /// A second, `O_DIRECT` descriptor of the file for page-aligned writes (`None`:
        /// every write is buffered).
        direct: Option<File>,
    },
    /// A qcow2 image written through imago.
    Qcow2 {
        /// The image, with its backing chain attached when it has one.
        image: ImagoImage,
        /// The image's file.
        path: PathBuf,
    },
}

/// Mode of a target while it is written: readable by its owner only. It gets the source's
/// mode, owner and group only after verification ([`crate::attrs::copy_attrs`]).
pub const PARTIAL_MODE: u32 = 0o600;

/// Creates the target file (which must not exist) with mode [`PARTIAL_MODE`] and opens it
/// for writing.
///
/// # Errors
/// [`ImageError`] naming the target: creation refused, no space, qemu-img failure.
pub fn create_target(spec: &TargetSpec) -> Result<TargetImage, ImageError> {
    let fail = |what: String| {
        ImageError::new(
            "target_create",
            &spec.path,
            what,
            "check space and permissions at the destination",
        )
    };
    match spec.format {
        LayerFormat::Raw => {
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .create_new(true)
                .mode(PARTIAL_MODE)
                .open(&spec.path)
                .map_err(|e| fail(format!("cannot be created: {e}")))?;
            file.set_len(spec.virtual_size).map_err(|e| {
                fail(format!(
                    "cannot be sized to {} bytes: {e}",
                    spec.virtual_size
                ))
            })?;
            if spec.preallocate && spec.virtual_size > 0 {
                rustix::fs::fallocate(
                    &file,
                    rustix::fs::FallocateFlags::empty(),
                    0,
                    spec.virtual_size,
                )
                .map_err(|e| fail(format!("cannot be preallocated: {e}")))?;
            }
            let direct = spec.direct.then(|| open_direct_writer(&file)).flatten();
            Ok(TargetImage::Raw {
                file,
                thick: spec.preallocate,
                direct,
            })
        }
        LayerFormat::Qcow2 => {
            // Created here first so that qemu-img writes into a file only its owner reads.
            OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(PARTIAL_MODE)
                .open(&spec.path)
                .map_err(|e| fail(format!("cannot be created: {e}")))?;
            create_qcow2(&Qcow2CreateSpec {
                path: spec.path.clone(),
                virtual_size: spec.virtual_size,
                cluster_size: spec.cluster_size,
                preallocate: spec.preallocate,
                backing: spec
                    .backing
                    .as_ref()
                    .map(|(name, fmt, _)| (name.clone(), fmt.as_str().to_string())),
                options: spec.qcow2,
            })
            .map_err(|e| {
                let _ = std::fs::remove_file(&spec.path);
                fail(e)
            })?;
            open_qcow2_target(
                &spec.path,
                spec.backing.as_ref().map(|(_, _, c)| c),
                spec.direct,
            )
        }
    }
}

/// Opens an existing qcow2 target writable, attaching `backing` (read-only) when given;
/// with `direct`, with `O_DIRECT` where the file system allows it (else buffered).
///
/// # Errors
/// [`ImageError`] when imago cannot open it.
pub fn open_qcow2_target(
    path: &Path,
    backing: Option<&Chain>,
    direct: bool,
) -> Result<TargetImage, ImageError> {
    let chain = target_chain(path, LayerFormat::Qcow2, backing)?;
    let image = match open_chain_imago(&chain, true, direct) {
        Err(_) if direct => open_chain_imago(&chain, true, false)?,
        other => other?,
    };
    Ok(TargetImage::Qcow2 {
        image,
        path: path.to_path_buf(),
    })
}

/// A second descriptor of `file` opened `O_DIRECT` for writing; `None` where the file system
/// refuses it. Reopened through `/proc/self/fd`, so it is the same file whatever its name.
pub fn open_direct_writer(file: &File) -> Option<File> {
    use std::os::fd::AsRawFd;
    rustix::fs::open(
        format!("/proc/self/fd/{}", file.as_raw_fd()).as_str(),
        rustix::fs::OFlags::WRONLY | rustix::fs::OFlags::DIRECT | rustix::fs::OFlags::CLOEXEC,
        rustix::fs::Mode::empty(),
    )
    .ok()
    .map(File::from)
}

/// `O_DIRECT` needs the buffer address, the offset and the length aligned to the logical
/// block size; the page size covers every block size in use.
const DIRECT_ALIGN: usize = 4096;

/// Whether `buf` at `offset` has at least one block to write with `O_DIRECT` (its length
/// need not be aligned: the tail is written buffered).
fn direct_aligned(buf: &[u8], offset: u64) -> bool {
    (buf.as_ptr() as usize).is_multiple_of(DIRECT_ALIGN)
        && buf.len() >= DIRECT_ALIGN
        && offset.is_multiple_of(DIRECT_ALIGN as u64)
}

/// The chain of a target for reading it back: the target itself plus, for shallow copies,
/// the backing layers it shares with the source.
///
/// # Errors
/// [`ImageError`] when the target cannot be inspected.
pub fn target_chain(
    path: &Path,
    format: LayerFormat,
    backing: Option<&Chain>,
) -> Result<Chain, ImageError> {
    let mut chain = resolve_chain(
        path,
        &ChainOptions {
            top_format: Some(format),
            backing_format: None,
            follow_backing: backing.is_none(),
        },
    )?;
    // A shallow target shares the source's backing layers: reuse that resolution.
    if let Some(b) = backing {
        chain.layers.truncate(1);
        chain.layers.extend(b.layers.iter().cloned());
    }
    Ok(chain)
}

impl TargetImage {
    /// Writes `buf` at guest `offset`.
    ///
    /// # Errors
    /// The write error (ENOSPC included).
    pub fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        match self {
            TargetImage::Raw {
                file,
                direct: Some(d),
                ..
            } if direct_aligned(buf, offset) => {
                // The block-aligned head goes around the page cache; an odd tail (the end
                // of an image whose size is not a multiple of 4 KiB) through it.
                let head = buf.len() - buf.len() % DIRECT_ALIGN;
                d.write_all_at(&buf[..head], offset)?;
                file.write_all_at(&buf[head..], offset + head as u64)
            }
            TargetImage::Raw { file, .. } => file.write_all_at(buf, offset),
            TargetImage::Qcow2 { image, .. } => image.write(buf, offset),
        }
    }

    /// Makes `[offset, offset+len)` read as zeroes, whatever it held before.
    ///
    /// # Errors
    /// The error of the zeroing operation.
    pub fn write_zeroes(&self, offset: u64, len: u64) -> io::Result<()> {
        match self {
            TargetImage::Raw { file, thick, .. } => {
                use rustix::fs::{fallocate, FallocateFlags};
                let flags = if *thick {
                    FallocateFlags::ZERO_RANGE
                } else {
                    FallocateFlags::PUNCH_HOLE | FallocateFlags::KEEP_SIZE
                };
                match fallocate(file, flags, offset, len) {
                    Ok(()) => Ok(()),
                    Err(rustix::io::Errno::OPNOTSUPP) | Err(rustix::io::Errno::INVAL) => {
                        write_zero_buffer(file, offset, len)
                    }
                    Err(e) => Err(e.into()),
                }
            }
            TargetImage::Qcow2 { image, .. } => image.write_zeroes(offset, len),
        }
    }

    /// A reader of what has been written so far, for reading chunks back while the copy
    /// runs: a second descriptor of the raw file, or the writer's own qcow2 image (its
    /// mapping tables may not be on disk yet; see
    /// [`ImageReader::first_mapping_difference`]). `size` is the guest size in bytes.
    ///
    /// # Errors
    /// The error of duplicating the raw file's descriptor.
    pub fn reader(&self, size: u64) -> io::Result<ImageReader> {
        Ok(match self {
            TargetImage::Raw { file, .. } => ImageReader::Raw {
                file: file.try_clone()?,
                size,
            },
            TargetImage::Qcow2 { image, .. } => ImageReader::Imago {
                image: image.clone(),
                size,
            },
        })
    }

    /// Flushes metadata caches and `fsync`s the file.
    ///
    /// # Errors
    /// The flush or fsync error.
    pub fn sync(&self) -> io::Result<()> {
        match self {
            TargetImage::Raw { file, .. } => file.sync_all(),
            TargetImage::Qcow2 { image, .. } => {
                image.flush()?;
                image.sync()
            }
        }
    }
}

fn write_zero_buffer(file: &File, mut offset: u64, len: u64) -> io::Result<()> {
    let zeroes = vec![0u8; 1 << 20];
    let end = offset + len;
    while offset < end {
        let n = usize::try_from(end - offset).map_or(zeroes.len(), |r| r.min(zeroes.len()));
        file.write_all_at(&zeroes[..n], offset)?;
        offset += n as u64;
    }
    Ok(())
}
