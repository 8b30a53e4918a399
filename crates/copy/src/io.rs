//! The engine's fast I/O paths: page-aligned chunk buffers, `O_DIRECT` reads of the source
//! (raw files and the host clusters of qcow2 chains), and dropping a buffered copy's source
//! pages once read.
//!
//! Everything here is an optimisation with a plain fallback: when a file system refuses
//! `O_DIRECT`, or a request is not aligned, or a cluster is compressed, the read goes through
//! [`ImageReader::read_at`] as before. The data read is the same either way.
//!
//! `O_DIRECT` is opt-in: `--io direct` (the copy options' `direct` flag) for source
//! reads, target writes and verification reads together, or [`DIRECT_READS_ENV`] for source
//! reads alone. Buffered stays the default: on the virtio disk the engine is benchmarked on
//! (`scripts/bench.sh`) a verified buffered copy was faster, while direct I/O used a fifth
//! of the CPU and left the page cache alone (README, "Performance"). Disks differ: measure.

use rustix::fs::{Mode, OFlags};
use std::collections::HashMap;
use std::collections::VecDeque;
use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::Mutex;
use vmshift_image::storage::ImageFile;
use vmshift_image::ImageReader;

/// Environment variable that turns on `O_DIRECT` source reads when set to `1`.
pub const DIRECT_READS_ENV: &str = "VMSHIFT_DIRECT_READS";

/// True when [`DIRECT_READS_ENV`] asks for `O_DIRECT` source reads.
pub fn direct_reads_requested() -> bool {
    std::env::var_os(DIRECT_READS_ENV).is_some_and(|v| v == "1")
}

/// Alignment of chunk buffers, offsets and lengths for `O_DIRECT`, bytes (the page size,
/// a multiple of every logical block size in use).
pub const DIRECT_ALIGN: usize = 4096;

/// An offset or length inside one chunk buffer as an index. Chunk buffers are allocated in
/// memory, so their offsets always fit in `usize`.
pub fn buf_index(v: u64) -> usize {
    usize::try_from(v).expect("offset inside an in-memory chunk buffer")
}

/// A zero-filled byte buffer whose start is aligned to [`DIRECT_ALIGN`]. Safe code only: it
/// over-allocates by one alignment unit and exposes the aligned window.
#[derive(Debug)]
pub struct AlignedBuf {
    raw: Vec<u8>,
    start: usize,
    len: usize,
}

impl AlignedBuf {
    /// A buffer of `len` bytes.
    pub fn new(len: usize) -> Self {
        let raw = vec![0u8; len + DIRECT_ALIGN];
        let start = raw.as_ptr().align_offset(DIRECT_ALIGN);
        AlignedBuf { raw, start, len }
    }

    /// The aligned bytes.
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        &mut self.raw[self.start..self.start + self.len]
    }
}

fn aligned(v: u64) -> bool {
    v.is_multiple_of(DIRECT_ALIGN as u64)
}

fn buf_aligned(buf: &[u8]) -> bool {
    (buf.as_ptr() as usize).is_multiple_of(DIRECT_ALIGN) && buf.len().is_multiple_of(DIRECT_ALIGN)
}

/// Opens `path` again read-only with `O_DIRECT`; `None` where the file system refuses it.
fn open_direct(path: &std::path::Path) -> Option<File> {
    rustix::fs::open(
        path,
        OFlags::RDONLY | OFlags::DIRECT | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .ok()
    .map(File::from)
}

/// Opens the very file `file` is (not its path, which could have been replaced) again,
/// read-only with `O_DIRECT`; `None` where the file system refuses it.
pub(crate) fn reopen_direct(file: &File) -> Option<File> {
    open_direct(std::path::Path::new(&format!(
        "/proc/self/fd/{}",
        file.as_raw_fd()
    )))
}

/// Layer files opened once each, by path, with `open` (`None` when it failed).
type LayerFiles = Mutex<HashMap<PathBuf, Option<std::sync::Arc<File>>>>;

/// The file of `storage` from `files`, opened with `open` the first time it is asked for.
fn layer_file(
    files: &LayerFiles,
    storage: &ImageFile,
    open: impl FnOnce(&std::path::Path) -> Option<File>,
) -> Option<std::sync::Arc<File>> {
    use imago::Storage;
    let path = storage.get_filename()?;
    let mut map = files.lock().unwrap_or_else(|p| p.into_inner());
    map.entry(path)
        .or_insert_with_key(|p| open(p).map(std::sync::Arc::new))
        .clone()
}

/// The largest page-cache folio on x86-64 (a PMD), in bytes.
pub(crate) const FOLIO_MAX: u64 = 2 << 20;

/// `[offset, offset + len)` widened to whole [`FOLIO_MAX`] blocks.
pub(crate) fn widened(offset: u64, len: u64) -> (u64, u64) {
    let from = offset - offset % FOLIO_MAX;
    (from, (offset + len).next_multiple_of(FOLIO_MAX) - from)
}

/// Calls `f(storage, file offset, len)` for each piece of guest `[offset, offset + len)`
/// that `image` maps to a file (data clusters of any layer; not zeroes, holes or
/// compressed clusters), in guest order. Stops early where the mapping cannot be read.
pub(crate) fn for_each_file_range(
    image: &vmshift_image::reader::ImagoImage,
    offset: u64,
    len: u64,
    mut f: impl FnMut(&ImageFile, u64, u64),
) {
    let mut pos = 0u64;
    while pos < len {
        let Ok((mapping, n)) = image.get_mapping(offset + pos, len - pos) else {
            return;
        };
        let n = n.min(len - pos);
        if n == 0 {
            return;
        }
        if let imago::Mapping::Raw {
            storage,
            offset: host,
            ..
        } = mapping
        {
            f(storage, host, n);
        }
        pos += n;
    }
}

/// `POSIX_FADV_DONTNEED` for `[offset, offset + len)` of `file` (`len` 0: to its end);
/// errors are ignored (the advice only frees memory early).
fn dont_need(file: &File, offset: u64, len: u64) {
    let _ = rustix::fs::fadvise(
        file,
        offset,
        std::num::NonZeroU64::new(len),
        rustix::fs::Advice::DontNeed,
    );
}

/// A queue that holds back the last `depth` items pushed: work that should happen a few
/// chunks late, when the workers have moved on (waiting for writeback, dropping pages a
/// neighbouring chunk may still be using).
#[derive(Debug)]
pub struct Lag<T> {
    items: Mutex<VecDeque<T>>,
    depth: usize,
}

impl<T> Lag<T> {
    /// A queue holding back `depth` items (at least 1).
    pub fn new(depth: usize) -> Self {
        Lag {
            items: Mutex::new(VecDeque::new()),
            depth: depth.max(1),
        }
    }

    /// Adds `item`; returns the items now older than the last `depth`, oldest first.
    pub fn push(&self, item: T) -> Vec<T> {
        let mut q = self.items.lock().unwrap_or_else(|p| p.into_inner());
        q.push_back(item);
        let over = q.len().saturating_sub(self.depth);
        q.drain(..over).collect()
    }

    /// Takes every item held back, oldest first.
    pub fn take_all(&self) -> Vec<T> {
        let mut q = self.items.lock().unwrap_or_else(|p| p.into_inner());
        q.drain(..).collect()
    }
}

/// Reads `buf.len()` bytes at `offset` with `pread` on a direct descriptor.
fn pread_exact(file: &File, buf: &mut [u8], offset: u64) -> io::Result<()> {
    file.read_exact_at(buf, offset)
}

/// Reads `buf` at `offset`: its block-aligned head with `pread` on the `O_DIRECT` descriptor
/// `direct`, the odd tail (and everything, when the head is not aligned or the direct read
/// fails) with `fallback`.
///
/// # Errors
/// The error of `fallback`.
pub(crate) fn read_direct_head(
    direct: &File,
    buf: &mut [u8],
    offset: u64,
    fallback: impl Fn(&mut [u8], u64) -> io::Result<()>,
) -> io::Result<()> {
    let head = buf.len() - buf.len() % DIRECT_ALIGN;
    let ok = head > 0
        && aligned(offset)
        && (buf.as_ptr() as usize).is_multiple_of(DIRECT_ALIGN)
        && pread_exact(direct, &mut buf[..head], offset).is_ok();
    if !ok {
        return fallback(buf, offset);
    }
    if head < buf.len() {
        fallback(&mut buf[head..], offset + head as u64)?;
    }
    Ok(())
}

/// Source reads for the copy engine: `O_DIRECT` where possible (no page-cache copy, no
/// readahead limit, many requests in flight from the workers), else the reader's own path.
#[derive(Debug)]
pub struct FastSource<'a> {
    reader: &'a ImageReader,
    /// Raw source: its direct descriptor.
    raw: Option<File>,
    /// qcow2 chains: a direct descriptor per layer file, by path (`None` when refused).
    layers: LayerFiles,
    /// qcow2 chains read through the page cache: a plain descriptor per layer file, by path,
    /// for [`FastSource::release`].
    cached_layers: LayerFiles,
    /// Ranges read and not yet released ([`FastSource::done_reading`]).
    read_behind: Lag<(u64, u64)>,
    enabled: bool,
}

impl<'a> FastSource<'a> {
    /// Wraps `reader`. With `direct` false every read takes the reader's buffered path.
    pub fn new(reader: &'a ImageReader, direct: bool) -> Self {
        let raw = match reader {
            ImageReader::Raw { file, .. } if direct => reopen_direct(file),
            _ => None,
        };
        FastSource {
            reader,
            raw,
            layers: Mutex::new(HashMap::new()),
            cached_layers: Mutex::new(HashMap::new()),
            read_behind: Lag::new(1),
            enabled: direct,
        }
    }

    /// Holds back the last `depth` ranges given to [`FastSource::done_reading`] (at least
    /// 1; the engine uses one per worker).
    #[must_use]
    pub fn releasing_behind(mut self, depth: usize) -> Self {
        self.read_behind = Lag::new(depth);
        self
    }

    /// The caller has read guest `[offset, offset + len)` and will not read it again: it is
    /// released ([`FastSource::release`]) a few ranges later, because the widened ranges of
    /// a qcow2 source reach into neighbouring chunks, which must have been read by then.
    pub fn done_reading(&self, offset: u64, len: u64) {
        if self.enabled {
            return;
        }
        for (o, n) in self.read_behind.push((offset, len)) {
            self.release(o, n);
        }
    }

    fn layer_fd(&self, storage: &ImageFile) -> Option<std::sync::Arc<File>> {
        layer_file(&self.layers, storage, open_direct)
    }

    /// Drops from the page cache the source's pages that hold guest bytes
    /// `[offset, offset + len)` (`POSIX_FADV_DONTNEED`, as `dd iflag=nocache` does), once a
    /// buffered copy has read them: a copy reads each byte once, and keeping them would push
    /// the host's other cached data (its VMs') out and, for an image larger than free memory,
    /// make the kernel reclaim while the copy runs. For qcow2 chains the data clusters of each
    /// layer are dropped (metadata stays cached). Best effort; nothing to do for direct reads.
    pub fn release(&self, offset: u64, len: u64) {
        if self.enabled {
            return;
        }
        match self.reader {
            ImageReader::Raw { file, .. } => dont_need(file, offset, len),
            ImageReader::Imago { image, .. } => {
                for_each_file_range(image, offset, len, |storage, host, n| {
                    if let Some(f) = self.cached_layer_fd(storage) {
                        // Clusters need not start on a folio boundary, and the kernel keeps
                        // a large folio (up to 2 MiB) that the range only partly covers.
                        let (from, n) = widened(host, n);
                        dont_need(&f, from, n);
                    }
                });
            }
        }
    }

    /// Drops what is left of the source in the page cache once the copy is over: the ranges
    /// [`FastSource::done_reading`] still holds back, pages that readahead brought in after
    /// their range was released, and pages that were busy (being read by another worker)
    /// when it was. Whole files: every layer the copy released from.
    pub fn release_all(&self) {
        if self.enabled {
            return;
        }
        for (o, n) in self.read_behind.take_all() {
            self.release(o, n);
        }
        match self.reader {
            ImageReader::Raw { file, .. } => dont_need(file, 0, 0),
            ImageReader::Imago { .. } => {
                let layers = self.cached_layers.lock().unwrap_or_else(|p| p.into_inner());
                for f in layers.values().flatten() {
                    dont_need(f, 0, 0);
                }
            }
        }
    }

    fn cached_layer_fd(&self, storage: &ImageFile) -> Option<std::sync::Arc<File>> {
        layer_file(&self.cached_layers, storage, |p| File::open(p).ok())
    }

    /// Reads exactly `buf.len()` guest bytes at `offset` (all inside the virtual size).
    ///
    /// # Errors
    /// The read error of the path taken.
    pub fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        if !self.enabled {
            return self.reader.read_at(buf, offset);
        }
        match self.reader {
            // Any failure of the direct path (a short file, an odd file system) is retried on
            // the plain path, whose error is the one reported; an odd tail takes it too.
            ImageReader::Raw { .. } => match &self.raw {
                Some(f) => read_direct_head(f, buf, offset, |b, o| self.reader.read_at(b, o)),
                None => self.reader.read_at(buf, offset),
            },
            _ if !buf_aligned(buf) || !aligned(offset) => self.reader.read_at(buf, offset),
            ImageReader::Imago { image, .. } => {
                let mut pos = 0usize;
                while pos < buf.len() {
                    let rest = &mut buf[pos..];
                    let goff = offset + pos as u64;
                    let (mapping, n) = image.get_mapping(goff, rest.len() as u64)?;
                    let n = buf_index(n.min(rest.len() as u64));
                    if n == 0 {
                        // Past the end of every layer: reads as zero.
                        rest.fill(0);
                        return Ok(());
                    }
                    let part = &mut rest[..n];
                    match mapping {
                        imago::Mapping::Zero { .. } => part.fill(0),
                        imago::Mapping::Raw {
                            storage,
                            offset: host,
                            ..
                        } if buf_aligned(part) && aligned(host) => match self.layer_fd(storage) {
                            Some(f) if pread_exact(&f, part, host).is_ok() => {}
                            _ => image.read(&mut *part, goff)?,
                        },
                        _ => image.read(&mut *part, goff)?,
                    }
                    pos += n;
                }
                Ok(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lag_holds_back_the_last_items_and_gives_the_older_ones_in_order() {
        let lag = Lag::new(2);
        assert!(lag.push(1).is_empty());
        assert!(lag.push(2).is_empty());
        assert_eq!(lag.push(3), vec![1]);
        assert_eq!(lag.push(4), vec![2]);
        assert_eq!(lag.take_all(), vec![3, 4]);
        assert!(lag.take_all().is_empty());
        // Depth 0 still holds one item back.
        let lag = Lag::new(0);
        assert!(lag.push('a').is_empty());
        assert_eq!(lag.push('b'), vec!['a']);
    }

    #[test]
    fn ranges_widen_to_whole_large_folios() {
        assert_eq!(widened(0, FOLIO_MAX), (0, FOLIO_MAX));
        assert_eq!(widened(320 << 10, FOLIO_MAX), (0, 2 * FOLIO_MAX));
        assert_eq!(widened(FOLIO_MAX + 1, 1), (FOLIO_MAX, FOLIO_MAX));
    }

    #[test]
    fn aligned_buffers_start_on_a_page_and_are_zeroed() {
        for len in [0, 1, 4096, 3 << 20] {
            let mut b = AlignedBuf::new(len);
            let s = b.as_mut_slice();
            assert_eq!(s.len(), len);
            assert_eq!(s.as_ptr() as usize % DIRECT_ALIGN, 0);
            assert!(s.iter().all(|&x| x == 0));
        }
    }
}
