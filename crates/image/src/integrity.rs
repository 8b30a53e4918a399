//! qcow2 consistency: our own walk of the L1/L2 tables (every table and data cluster must lie
//! inside the file) plus `qemu-img check` for refcounts. A dirty image with lazy refcounts has
//! stale refcounts by design; it is told apart from a corrupt one.

use crate::header::Qcow2Header;
use crate::qemu_img;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;

const OFFSET_MASK: u64 = 0x00ff_ffff_ffff_fe00;
const COMPRESSED_BIT: u64 = 1 << 62;

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
    let mut out = Integrity::default();
    if let Err(e) = walk_tables(path, header, file_size, &mut out) {
        out.errors.push(e);
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
        Err(e) => out.notes.push(format!("qemu-img check could not run: {e}")),
    }
    out
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
    let l1_bytes = u64::from(h.l1_size) * 8;
    let l1_end = h.l1_table_offset.saturating_add(l1_bytes);
    if h.l1_size > 0 && l1_end > file_size {
        return Err(format!(
            "L1 table at {:#x} ({l1_bytes} bytes) lies past the end of the file ({file_size:#x}): the image is truncated or corrupt",
            h.l1_table_offset
        ));
    }
    if h.refcount_table_offset >= file_size {
        return Err(format!(
            "refcount table at {:#x} lies past the end of the file ({file_size:#x})",
            h.refcount_table_offset
        ));
    }
    let file = File::open(path).map_err(|e| format!("cannot be read: {e}"))?;
    let mut l1 = vec![0u8; usize::try_from(l1_bytes).map_err(|_| "L1 table too large")?];
    file.read_exact_at(&mut l1, h.l1_table_offset)
        .map_err(|e| format!("L1 table at {:#x} cannot be read: {e}", h.l1_table_offset))?;
    let mut l2 = vec![0u8; usize::try_from(cluster).map_err(|_| "cluster too large")?];
    let csize_shift = 62 - (h.cluster_bits - 8);
    for (i, e) in l1.chunks_exact(8).enumerate() {
        let l2_off = u64::from_be_bytes(e.try_into().expect("8 bytes")) & OFFSET_MASK;
        if l2_off == 0 {
            continue;
        }
        if !l2_off.is_multiple_of(cluster) || l2_off.saturating_add(cluster) > file_size {
            return Err(format!(
                "L2 table {i} at {l2_off:#x} lies past the end of the file ({file_size:#x}) or is misaligned: the image is truncated or corrupt"
            ));
        }
        file.read_exact_at(&mut l2, l2_off)
            .map_err(|e| format!("L2 table at {l2_off:#x} cannot be read: {e}"))?;
        for (j, e) in l2.chunks_exact(8).enumerate() {
            let entry = u64::from_be_bytes(e.try_into().expect("8 bytes"));
            let guest = (i as u64 * l2_entries + j as u64) * cluster;
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
                continue;
            }
            let host = entry & OFFSET_MASK;
            if host == 0 {
                continue;
            }
            out.mapped_clusters += 1;
            if !host.is_multiple_of(cluster) || host.saturating_add(cluster) > file_size {
                return Err(format!(
                    "data cluster for guest offset {guest:#x} points at {host:#x}, which extends past the end of the file ({file_size:#x}) or is misaligned: its data is lost"
                ));
            }
        }
    }
    Ok(())
}
