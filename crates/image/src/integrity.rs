//! qcow2 consistency: our own walk of the L1/L2 tables (every table and data cluster must lie
//! inside the file) plus `qemu-img check` for refcounts. A dirty image with lazy refcounts has
//! stale refcounts by design; it is told apart from a corrupt one.

use crate::header::Qcow2Header;
use crate::qemu_img;
use std::collections::HashMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;

const OFFSET_MASK: u64 = 0x00ff_ffff_ffff_fe00;
const COMPRESSED_BIT: u64 = 1 << 62;
const COPIED_BIT: u64 = 1 << 63;

/// Most bytes of L2 tables in holes of the file accepted. A sparse copy (`cp --sparse`) of
/// a 16 TiB image with every L2 table allocated has 2 GiB of them; a crafted file can name
/// terabytes, which every reader would then read as zeroes.
pub const MAX_SPARSE_TABLE_BYTES: u64 = 4 << 30;

/// Result of checking one qcow2 file.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Integrity {
    /// Corruption that loses guest data (tables or clusters outside the file, …).
    pub errors: Vec<String>,
    /// Things to report that do not stop a copy.
    pub notes: Vec<String>,
    /// The image has compressed clusters.
    pub compressed_clusters: u64,
    /// Data clusters mapped (standard + compressed).
    pub mapped_clusters: u64,
}

/// Checks the tables of the qcow2 file at `path` against its length, then asks
/// `qemu-img check` (read-only, backing disabled) about refcounts unless the image is dirty
/// with lazy refcounts. Stops at the first table error: one precise message beats a flood.
pub fn check_qcow2(path: &Path, header: &Qcow2Header, file_size: u64) -> Integrity {
    let mut out = check_tables(path, header, file_size);
    if !out.errors.is_empty() {
        return out;
    }
    if header.dirty() {
        out.notes.push(if header.lazy_refcounts() {
            "the image is dirty with lazy refcounts (the VM did not shut down cleanly): its refcounts are stale by design, its tables are intact; the source is not repaired or modified and the target gets fresh refcounts".to_string()
        } else {
            "the image is marked dirty: refcounts may be stale; the tables were verified and the target gets fresh refcounts".to_string()
        });
        return out;
    }
    match qemu_img::check(path) {
        Ok(c) if c.corruptions > 0 => out.errors.push(format!(
            "qemu-img check reports {} refcount corruption(s)",
            c.corruptions
        )),
        Ok(c) => {
            if c.leaks > 0 {
                out.notes.push(format!(
                    "qemu-img check reports {} leaked cluster(s): harmless wasted space, not copied",
                    c.leaks
                ));
            }
        }
        Err(e) => out.notes.push(format!(
            "qemu-img check could not run: {e}; the tables were verified, refcounts were not"
        )),
    }
    out
}

/// Our own walk alone (no `qemu-img`): the L1, L2 and refcount tables against the file's
/// length and each other, every data cluster inside the file and outside metadata. Reads
/// at most the tables the virtual size needs, skipping those in holes of the file.
pub fn check_tables(path: &Path, header: &Qcow2Header, file_size: u64) -> Integrity {
    let mut out = Integrity::default();
    if let Err(e) = walk_tables(path, header, file_size, &mut out) {
        out.errors.push(e);
    }
    out
}

/// What a metadata cluster holds, for messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Meta {
    Header,
    L1,
    RefcountTable,
    /// The L2 table of this L1 index.
    L2(u32),
    /// The refcount block of this refcount-table index.
    RefcountBlock(u32),
}

impl std::fmt::Display for Meta {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Meta::Header => f.write_str("the header"),
            Meta::L1 => f.write_str("the L1 table"),
            Meta::RefcountTable => f.write_str("the refcount table"),
            Meta::L2(i) => write!(f, "L2 table {i}"),
            Meta::RefcountBlock(i) => write!(f, "refcount block {i}"),
        }
    }
}

/// The host clusters holding metadata: a table pointing into another table, or two tables
/// sharing a cluster, would make a reader follow (or a writer overwrite) the wrong bytes.
/// Entries grow with the tables found in the file, never with a count from the header.
struct MetadataMap {
    cluster_bits: u32,
    clusters: HashMap<u64, Meta>,
}

impl MetadataMap {
    /// Claims `[offset, offset+len)` for `what`; refuses (and claims nothing) when
    /// something else holds one of its clusters.
    fn claim(&mut self, offset: u64, len: u64, what: Meta) -> Result<(), String> {
        let first = offset >> self.cluster_bits;
        let last = (offset + len.max(1) - 1) >> self.cluster_bits;
        if let Some((c, other)) = (first..=last).find_map(|c| Some((c, *self.clusters.get(&c)?))) {
            let host = c << self.cluster_bits;
            let inside = if host == offset {
                String::new()
            } else {
                format!(" in host cluster {host:#x}")
            };
            return Err(format!("{what} at {offset:#x} overlaps {other}{inside}"));
        }
        self.clusters.extend((first..=last).map(|c| (c, what)));
        Ok(())
    }

    /// The metadata, if any, in `[offset, offset+len)`.
    fn holder(&self, offset: u64, len: u64) -> Option<Meta> {
        let first = offset >> self.cluster_bits;
        let last = (offset + len.max(1) - 1) >> self.cluster_bits;
        (first..=last).find_map(|c| self.clusters.get(&c).copied())
    }
}

/// Host clusters already mapped as guest data, as a sparse bitmap (64 clusters a word):
/// memory follows the data found, not the file size.
#[derive(Default)]
struct DataClusters(HashMap<u64, u64>);

impl DataClusters {
    /// Marks `cluster`; `false` when it was marked already.
    fn mark(&mut self, cluster: u64) -> bool {
        let word = self.0.entry(cluster / 64).or_insert(0);
        let bit = 1u64 << (cluster % 64);
        let fresh = *word & bit == 0;
        *word |= bit;
        fresh
    }
}

fn walk_tables(
    path: &Path,
    h: &Qcow2Header,
    file_size: u64,
    out: &mut Integrity,
) -> Result<(), String> {
    let cluster = h.cluster_size();
    let l2_entries = cluster / 8;
    let coverage = cluster * l2_entries;
    let needed_l1 = h.size.div_ceil(coverage);
    if u64::from(h.l1_size) < needed_l1 {
        return Err(format!(
            "L1 table has {} entries but the virtual size needs {needed_l1}",
            h.l1_size
        ));
    }
    // The header parser capped l1_size and the refcount table: both fit in memory.
    let l1_bytes = u64::from(h.l1_size) * 8;
    let l1_end = h.l1_table_offset.saturating_add(l1_bytes);
    if h.l1_size > 0 && l1_end > file_size {
        return Err(format!(
            "L1 table at {:#x} ({l1_bytes} bytes) lies past the end of the file ({file_size:#x}): the image is truncated or corrupt",
            h.l1_table_offset
        ));
    }
    let rt_bytes = u64::from(h.refcount_table_clusters) * cluster;
    if rt_bytes == 0 {
        return Err("header field refcount_table_clusters at offset 0x38 is 0: the image has no refcount table".into());
    }
    if h.refcount_table_offset.saturating_add(rt_bytes) > file_size {
        return Err(format!(
            "refcount table at {:#x} ({rt_bytes} bytes) lies past the end of the file ({file_size:#x})",
            h.refcount_table_offset
        ));
    }
    let mut meta = MetadataMap {
        cluster_bits: h.cluster_bits,
        clusters: HashMap::new(),
    };
    meta.claim(0, cluster, Meta::Header)?;
    if h.l1_size > 0 {
        meta.claim(h.l1_table_offset, l1_bytes, Meta::L1)?;
    }
    meta.claim(h.refcount_table_offset, rt_bytes, Meta::RefcountTable)?;

    let file = File::open(path).map_err(|e| format!("cannot be read: {e}"))?;
    let read_table = |offset: u64, bytes: u64, what: Meta| -> Result<Vec<u8>, String> {
        let mut buf = vec![0u8; usize::try_from(bytes).map_err(|_| format!("{what} too large"))?];
        file.read_exact_at(&mut buf, offset)
            .map_err(|e| format!("{what} at {offset:#x} cannot be read: {e}"))?;
        Ok(buf)
    };
    claim_refcount_blocks(
        &read_table(h.refcount_table_offset, rt_bytes, Meta::RefcountTable)?,
        cluster,
        file_size,
        &mut meta,
    )?;
    let l1 = read_table(h.l1_table_offset, l1_bytes, Meta::L1)?;
    let l2_tables = claim_l2_tables(&l1, cluster, file_size, &mut meta)?;

    let mut data = DataClusters::default();
    let csize_shift = 62 - (h.cluster_bits - 8);
    // Tables past the virtual size map no guest data (QEMU keeps VM state there): they are
    // claimed above, but not read, so reading is bounded by the virtual size too.
    let mut sparse_table_bytes = 0u64;
    for (i, l2_off) in l2_tables
        .into_iter()
        .filter(|&(i, _)| u64::from(i) < needed_l1)
    {
        // A table in a hole of the file reads as zeroes (maps nothing): not reading it keeps
        // a sparse file full of "tables" from costing a read of its whole length here. The
        // copy's reader (imago) does read them all, so past a bound they are refused.
        if is_hole(&file, l2_off, cluster) {
            sparse_table_bytes += cluster;
            if sparse_table_bytes > MAX_SPARSE_TABLE_BYTES {
                return Err(format!(
                    "its L1 table names more than {} GiB of L2 tables that lie in holes of the file (never written; L2 table {i} at {l2_off:#x} is one): reading them would cost as much as reading that much data",
                    MAX_SPARSE_TABLE_BYTES >> 30
                ));
            }
            continue;
        }
        let l2 = read_table(l2_off, cluster, Meta::L2(i))?;
        for (j, e) in l2.chunks_exact(8).enumerate() {
            let entry = u64::from_be_bytes(e.try_into().expect("8 bytes"));
            let guest = (u64::from(i) * l2_entries + j as u64) * cluster;
            if guest >= h.size {
                break;
            }
            if entry & COMPRESSED_BIT != 0 {
                let host = entry & ((1u64 << csize_shift) - 1);
                out.compressed_clusters += 1;
                out.mapped_clusters += 1;
                if host >= file_size {
                    return Err(format!(
                        "compressed cluster for guest offset {guest:#x} points at {host:#x}, past the end of the file ({file_size:#x})"
                    ));
                }
                // Several compressed clusters may share a host cluster, but none may start
                // in metadata. (Its sector count is only an upper bound, so its end is not
                // held against the next cluster.)
                if let Some(m) = meta.holder(host, 1) {
                    return Err(format!(
                        "compressed cluster for guest offset {guest:#x} at {host:#x} overlaps {m}: its data would be read from metadata"
                    ));
                }
                continue;
            }
            let host = entry & OFFSET_MASK;
            if host == 0 {
                if entry & COPIED_BIT != 0 {
                    // Offset 0 with the copied bit is valid only with an external data
                    // file (refused earlier): here it would map the header as guest data.
                    return Err(format!(
                        "data cluster for guest offset {guest:#x} (L2 table {i} at {l2_off:#x}, entry {j}) points at offset 0x0, the header"
                    ));
                }
                continue;
            }
            out.mapped_clusters += 1;
            if !host.is_multiple_of(cluster) || host.saturating_add(cluster) > file_size {
                return Err(format!(
                    "data cluster for guest offset {guest:#x} points at {host:#x}, which extends past the end of the file ({file_size:#x}) or is misaligned: its data is lost"
                ));
            }
            if let Some(m) = meta.holder(host, cluster) {
                return Err(format!(
                    "data cluster for guest offset {guest:#x} at {host:#x} overlaps {m}: its data would be read from metadata"
                ));
            }
            if !data.mark(host >> h.cluster_bits) {
                return Err(format!(
                    "data cluster at {host:#x} is mapped again by guest offset {guest:#x}: two guest clusters share it (a refcount overflow), so a write to one changes the other"
                ));
            }
        }
    }
    Ok(())
}

/// `[offset, offset+len)` holds no data (`SEEK_DATA`); `false` when the file system cannot
/// tell.
fn is_hole(file: &File, offset: u64, len: u64) -> bool {
    use rustix::fs::{seek, SeekFrom};
    match seek(file, SeekFrom::Data(offset)) {
        Ok(data) => data >= offset.saturating_add(len),
        Err(rustix::io::Errno::NXIO) => true,
        Err(_) => false,
    }
}

/// Claims every refcount block the refcount table points at.
fn claim_refcount_blocks(
    table: &[u8],
    cluster: u64,
    file_size: u64,
    meta: &mut MetadataMap,
) -> Result<(), String> {
    for (i, e) in table.chunks_exact(8).enumerate() {
        let off = u64::from_be_bytes(e.try_into().expect("8 bytes"));
        if off == 0 {
            continue;
        }
        let what = Meta::RefcountBlock(u32::try_from(i).unwrap_or(u32::MAX));
        if !off.is_multiple_of(cluster) || off.saturating_add(cluster) > file_size {
            return Err(format!(
                "{what} at {off:#x} lies past the end of the file ({file_size:#x}) or is misaligned"
            ));
        }
        meta.claim(off, cluster, what)?;
    }
    Ok(())
}

/// The allocated L2 tables as (L1 index, host offset), each checked to lie inside the file
/// on a cluster of its own: before any is read, so that no table is followed twice.
fn claim_l2_tables(
    l1: &[u8],
    cluster: u64,
    file_size: u64,
    meta: &mut MetadataMap,
) -> Result<Vec<(u32, u64)>, String> {
    let mut tables = Vec::new();
    for (i, e) in l1.chunks_exact(8).enumerate() {
        // l1_size is capped at MAX_L1_ENTRIES, so every index fits.
        let i = u32::try_from(i).unwrap_or(u32::MAX);
        let entry = u64::from_be_bytes(e.try_into().expect("8 bytes"));
        let l2_off = entry & OFFSET_MASK;
        if l2_off == 0 && entry != 0 {
            // An unallocated entry is all zeroes; flags on offset 0 claim the header as a
            // table (QEMU's check counts it as corruption too).
            return Err(format!(
                "L1 entry {i} is {entry:#x}: an L2 table at offset 0x0, the header"
            ));
        }
        if l2_off == 0 {
            continue;
        }
        if !l2_off.is_multiple_of(cluster) || l2_off.saturating_add(cluster) > file_size {
            return Err(format!(
                "L2 table {i} at {l2_off:#x} lies past the end of the file ({file_size:#x}) or is misaligned: the image is truncated or corrupt"
            ));
        }
        meta.claim(l2_off, cluster, Meta::L2(i))?;
        tables.push((i, l2_off));
    }
    Ok(tables)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_claim_on_a_cluster_names_its_holder() {
        let mut m = MetadataMap {
            cluster_bits: 16,
            clusters: HashMap::new(),
        };
        m.claim(0x30000, 0x18000, Meta::L1).unwrap();
        assert_eq!(
            m.claim(0x40000, 0x10000, Meta::L2(3)),
            Err("L2 table 3 at 0x40000 overlaps the L1 table".to_string())
        );
        assert_eq!(
            m.claim(0x20000, 0x20000, Meta::RefcountTable),
            Err(
                "the refcount table at 0x20000 overlaps the L1 table in host cluster 0x30000"
                    .to_string()
            )
        );
        assert_eq!(m.holder(0x3fff0, 1), Some(Meta::L1));
        assert_eq!(m.holder(0x50000, 0x10000), None);
    }

    #[test]
    fn a_data_cluster_is_marked_once() {
        let mut d = DataClusters::default();
        assert!(d.mark(5) && d.mark(64) && d.mark(u64::MAX >> 16));
        assert!(!d.mark(5) && !d.mark(64));
        assert_eq!(d.0.len(), 3, "one word per 64 clusters, only where data is");
    }
}
