//! Reading a source image's guest view and its block status.
//!
//! A plain raw file is read with `pread` and mapped with `SEEK_DATA`/`SEEK_HOLE`; qcow2 (and
//! any chain) goes through imago, opened bottom-up with every backing file named explicitly
//! so that imago never opens a file on its own.

use crate::chain::{Chain, LayerFormat};
use crate::storage::ImageFile;
use crate::ImageError;
use imago::qcow2::Qcow2;
use imago::raw::Raw;
use imago::{DenyImplicitOpenGate, FormatAccess, FormatDriverBuilder, Mapping, ShallowMapping};
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::sync::Arc;
use vmshift_core::extent::{coalesce, Extent, ExtentKind};

/// An opened image, shared by the copy workers (`Sync`).
pub type ImagoImage = Arc<FormatAccess<ImageFile>>;

/// A source image opened read-only.
#[derive(Debug)]
pub enum ImageReader {
    /// A raw file with no chain: direct `pread`, holes from `SEEK_DATA`/`SEEK_HOLE`.
    Raw {
        /// The file, read-only.
        file: File,
        /// Its length in bytes (= virtual size; not rounded).
        size: u64,
    },
    /// qcow2 or a chain, through imago.
    Imago {
        /// The top layer, with its backing chain attached.
        image: ImagoImage,
        /// Virtual size in bytes.
        size: u64,
    },
}

/// Opens one layer and everything below it, returning the top. A writable top is opened
/// with `O_DIRECT` when `direct_top` is set.
///
/// # Errors
/// [`ImageError`] naming the layer imago could not open.
pub fn open_chain_imago(
    chain: &Chain,
    writable_top: bool,
    direct_top: bool,
) -> Result<ImagoImage, ImageError> {
    let mut lower: Option<ImagoImage> = None;
    for (i, layer) in chain.layers.iter().enumerate().rev() {
        let is_top = i == 0;
        let dirty = layer.header.as_ref().is_some_and(|h| h.dirty());
        let storage = if is_top && writable_top {
            ImageFile::open_writable(&layer.path, direct_top)
        } else {
            ImageFile::open_read_only(&layer.path, dirty)
        }
        .map_err(|e| open_error(&layer.path, &e))?;
        let gate = DenyImplicitOpenGate::default();
        let fa = match layer.format {
            LayerFormat::Raw => Raw::builder(storage)
                .write(is_top && writable_top)
                .open(gate)
                .map(FormatAccess::new),
            LayerFormat::Qcow2 => Qcow2::<ImageFile, ImagoImage>::builder(storage)
                .backing(lower.take())
                .data_file(None)
                .write(is_top && writable_top)
                .open(gate)
                .map(FormatAccess::new),
        }
        .map_err(|e| open_error(&layer.path, &e))?;
        lower = Some(Arc::new(fa));
    }
    lower.ok_or_else(|| {
        ImageError::new(
            "empty_chain",
            std::path::Path::new(""),
            "no image to open",
            "",
        )
    })
}

fn open_error(path: &std::path::Path, e: &io::Error) -> ImageError {
    ImageError::new(
        "open_failed",
        path,
        format!("cannot be opened as an image: {e}"),
        "check that the file is a valid image (qemu-img check)",
    )
}

impl ImageReader {
    /// Opens the chain read-only.
    ///
    /// # Errors
    /// [`ImageError`] when a layer cannot be opened.
    pub fn open(chain: &Chain) -> Result<Self, ImageError> {
        let top = chain.top();
        if top.format == LayerFormat::Raw && chain.layers.len() == 1 {
            let file = File::open(&top.path).map_err(|e| open_error(&top.path, &e))?;
            return Ok(ImageReader::Raw {
                file,
                size: top.file_size,
            });
        }
        let image = open_chain_imago(chain, false, false)?;
        let size = image.size();
        Ok(ImageReader::Imago { image, size })
    }

    /// Wraps an imago image (targets opened for verification).
    pub fn from_imago(image: ImagoImage) -> Self {
        let size = image.size();
        ImageReader::Imago { image, size }
    }

    /// Guest-visible size in bytes.
    pub fn virtual_size(&self) -> u64 {
        match self {
            ImageReader::Raw { size, .. } | ImageReader::Imago { size, .. } => *size,
        }
    }

    /// Reads exactly `buf.len()` guest bytes at `offset`.
    ///
    /// # Errors
    /// The underlying read error, or `UnexpectedEof` past the virtual size.
    pub fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        match self {
            ImageReader::Raw { file, .. } => file.read_exact_at(buf, offset),
            ImageReader::Imago { image, .. } => image.read(buf, offset),
        }
    }

    /// The first guest offset in `[offset, offset+len)` at which `self` and `other` map
    /// guest bytes to different places: different host offsets or files, or data against
    /// zero. Two imago images of one qcow2 file (the writer's, with its cached tables, and a
    /// fresh one reading the tables on disk) agree everywhere when the tables were flushed.
    /// `None` when they agree. Plain raw files have no mapping: they always agree.
    ///
    /// # Errors
    /// The I/O error of reading either image's metadata.
    pub fn first_mapping_difference(
        &self,
        other: &ImageReader,
        offset: u64,
        len: u64,
    ) -> io::Result<Option<u64>> {
        use imago::Storage;
        let (a, b) = match (self, other) {
            (ImageReader::Imago { image: a, .. }, ImageReader::Imago { image: b, .. }) => (a, b),
            (ImageReader::Raw { .. }, ImageReader::Raw { .. }) => return Ok(None),
            _ => return Ok(Some(offset)),
        };
        let end = offset.saturating_add(len);
        let mut pos = offset;
        while pos < end {
            let (ma, na) = a.get_mapping(pos, end - pos)?;
            let (mb, nb) = b.get_mapping(pos, end - pos)?;
            let same = match (&ma, &mb) {
                (
                    Mapping::Raw {
                        storage: sa,
                        offset: ha,
                        ..
                    },
                    Mapping::Raw {
                        storage: sb,
                        offset: hb,
                        ..
                    },
                ) => ha == hb && sa.get_filename() == sb.get_filename(),
                (Mapping::Zero { .. }, Mapping::Zero { .. })
                | (Mapping::Eof { .. }, Mapping::Eof { .. }) => true,
                _ => false,
            };
            let n = na.min(nb);
            if !same || n == 0 {
                return Ok((!same).then_some(pos));
            }
            pos += n;
        }
        Ok(None)
    }

    /// Block status of `[offset, offset+len)`: a sorted, coalesced list of extents.
    ///
    /// With `shallow`, only the top layer is asked: ranges the backing chain supplies come
    /// back as [`ExtentKind::Backing`] and explicit zero clusters as
    /// [`ExtentKind::ExplicitZero`]. Otherwise the chain is resolved and only
    /// [`ExtentKind::Data`] and [`ExtentKind::Zero`] appear.
    ///
    /// # Errors
    /// The I/O error of reading metadata.
    pub fn extents(&self, offset: u64, len: u64, shallow: bool) -> io::Result<Vec<Extent>> {
        let end = offset.saturating_add(len).min(self.virtual_size());
        let mut out = Vec::new();
        match self {
            ImageReader::Raw { file, .. } => raw_extents(file, offset, end, &mut out)?,
            ImageReader::Imago { image, .. } => {
                let mut pos = offset;
                while pos < end {
                    let (kind, n) = if shallow {
                        let (m, n) = image.get_shallow_mapping(pos, end - pos)?;
                        let kind = match m {
                            ShallowMapping::Raw { .. } | ShallowMapping::Special { .. } => {
                                Some(ExtentKind::Data)
                            }
                            ShallowMapping::Indirect { .. } => Some(ExtentKind::Backing),
                            ShallowMapping::Zero { explicit: true, .. } => {
                                Some(ExtentKind::ExplicitZero)
                            }
                            ShallowMapping::Zero {
                                explicit: false, ..
                            } => Some(ExtentKind::Zero),
                            ShallowMapping::Eof { .. } => None,
                            // A mapping kind newer than this code: reading it is always right.
                            _ => Some(ExtentKind::Data),
                        };
                        (kind, n)
                    } else {
                        let (m, n) = image.get_mapping(pos, end - pos)?;
                        let kind = match m {
                            Mapping::Raw { .. } | Mapping::Special { .. } => Some(ExtentKind::Data),
                            Mapping::Zero { .. } => Some(ExtentKind::Zero),
                            Mapping::Eof { .. } => None,
                            _ => Some(ExtentKind::Data),
                        };
                        (kind, n)
                    };
                    let Some(kind) = kind else { break };
                    if n == 0 {
                        break;
                    }
                    out.push(Extent {
                        offset: pos,
                        len: n,
                        kind,
                    });
                    pos += n;
                }
                if pos < end {
                    out.push(Extent {
                        offset: pos,
                        len: end - pos,
                        kind: ExtentKind::Zero,
                    });
                }
            }
        }
        Ok(coalesce(out))
    }
}

/// Walks `SEEK_DATA`/`SEEK_HOLE` from `start` to `end`.
fn raw_extents(file: &File, start: u64, end: u64, out: &mut Vec<Extent>) -> io::Result<()> {
    use rustix::fs::{seek, SeekFrom};
    let mut pos = start;
    while pos < end {
        let data = match seek(file, SeekFrom::Data(pos)) {
            Ok(d) => d.min(end),
            Err(rustix::io::Errno::NXIO) => end,
            // Filesystems without SEEK_DATA: everything is data.
            Err(rustix::io::Errno::INVAL) | Err(rustix::io::Errno::OPNOTSUPP) => pos,
            Err(e) => return Err(e.into()),
        };
        if data > pos {
            out.push(Extent {
                offset: pos,
                len: data - pos,
                kind: ExtentKind::Zero,
            });
        }
        if data >= end {
            break;
        }
        let hole = match seek(file, SeekFrom::Hole(data)) {
            Ok(h) => h.min(end),
            Err(rustix::io::Errno::INVAL) | Err(rustix::io::Errno::OPNOTSUPP) => end,
            Err(e) => return Err(e.into()),
        };
        let hole = hole.max(data + 1).min(end);
        out.push(Extent {
            offset: data,
            len: hole - data,
            kind: ExtentKind::Data,
        });
        pos = hole;
    }
    Ok(())
}
