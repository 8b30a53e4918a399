//! Work planning: block status in, work units out. A data chunk is a `chunk`-aligned range
//! that holds some data and is read as a whole (so hashing sees aligned blocks); zero ranges
//! outside data chunks are handled without reading.

use vmshift_core::extent::{Extent, ExtentKind};

/// One unit of work for a worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unit {
    /// Chunk `index` covers `[index*chunk, min((index+1)*chunk, size))` and contains data.
    Chunk(u64),
    /// A range outside data chunks that must read as zero (explicitly zeroed on the target
    /// when the target is not known to be zero, or for explicit zero clusters).
    Zero {
        /// Guest offset.
        offset: u64,
        /// Bytes.
        len: u64,
        /// The source has an explicit zero cluster here (shallow copies must keep it).
        explicit: bool,
    },
}

/// Plans the units for `extents` (sorted, covering the image) with `chunk`-byte chunks.
/// Zero ranges are emitted only when `need_zero_writes` or when explicit.
pub fn plan_units(extents: &[Extent], chunk: u64, need_zero_writes: bool) -> Vec<Unit> {
    let mut chunks: Vec<u64> = Vec::new();
    for e in extents
        .iter()
        .filter(|e| e.kind == ExtentKind::Data && e.len > 0)
    {
        let first = e.offset / chunk;
        let last = (e.end() - 1) / chunk;
        let from = match chunks.last() {
            Some(&l) if l >= first => l + 1,
            _ => first,
        };
        chunks.extend(from..=last);
    }
    let mut units: Vec<Unit> = chunks.iter().map(|&c| Unit::Chunk(c)).collect();
    // Zero extents, minus the parts inside data chunks (those chunks handle them).
    let in_chunk = |off: u64| chunks.binary_search(&(off / chunk)).is_ok();
    for e in extents {
        let explicit = e.kind == ExtentKind::ExplicitZero;
        if !(explicit || (need_zero_writes && e.kind == ExtentKind::Zero)) {
            continue;
        }
        let mut pos = e.offset;
        while pos < e.end() {
            let chunk_end = ((pos / chunk) + 1) * chunk;
            if in_chunk(pos) {
                pos = chunk_end.min(e.end());
                continue;
            }
            let mut end = chunk_end.min(e.end());
            while end < e.end() && !in_chunk(end) {
                end = (end + chunk).min(e.end());
            }
            match units.last_mut() {
                Some(Unit::Zero {
                    offset,
                    len,
                    explicit: x,
                }) if *offset + *len == pos && *x == explicit => *len += end - pos,
                _ => units.push(Unit::Zero {
                    offset: pos,
                    len: end - pos,
                    explicit,
                }),
            }
            pos = end;
        }
    }
    units
}

/// The extents of `extents` clipped to `[start, end)`.
pub fn clip(extents: &[Extent], start: u64, end: u64) -> Vec<Extent> {
    let first = extents.partition_point(|e| e.end() <= start);
    extents[first..]
        .iter()
        .take_while(|e| e.offset < end)
        .map(|e| {
            let s = e.offset.max(start);
            let t = e.end().min(end);
            Extent {
                offset: s,
                len: t - s,
                kind: e.kind,
            }
        })
        .collect()
}

/// Guest bytes that block status reports as data (`ExtentKind::Data`) inside the data
/// chunks of `units`: what a pass's progress counts to, the unit of the plan's "to copy".
pub fn data_bytes(extents: &[Extent], units: &[Unit], chunk: u64, size: u64) -> u64 {
    units
        .iter()
        .map(|u| match u {
            Unit::Chunk(i) => chunk_data_bytes(extents, *i, chunk, size),
            Unit::Zero { .. } => 0,
        })
        .sum()
}

/// Guest bytes reported as data inside data chunk `idx`.
pub fn chunk_data_bytes(extents: &[Extent], idx: u64, chunk: u64, size: u64) -> u64 {
    let start = idx * chunk;
    clip(extents, start, (start + chunk).min(size))
        .iter()
        .filter(|e| e.kind == ExtentKind::Data)
        .map(|e| e.len)
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    const M: u64 = 1 << 20;

    fn ext(offset: u64, len: u64, kind: ExtentKind) -> Extent {
        Extent { offset, len, kind }
    }

    #[test]
    fn data_extents_become_chunks_and_zero_ranges_skip_them() {
        let exts = [
            ext(0, M, ExtentKind::Data),
            ext(M, 30 * M, ExtentKind::Zero),
            ext(31 * M, M, ExtentKind::Data),
        ];
        let u = plan_units(&exts, 8 * M, true);
        assert_eq!(
            u,
            vec![
                Unit::Chunk(0),
                Unit::Chunk(3),
                Unit::Zero {
                    offset: 8 * M,
                    len: 16 * M,
                    explicit: false
                }
            ]
        );
        assert_eq!(
            plan_units(&exts, 8 * M, false),
            vec![Unit::Chunk(0), Unit::Chunk(3)]
        );
    }

    #[test]
    fn huge_sparse_images_plan_few_units() {
        let exts = [
            ext(0, M, ExtentKind::Data),
            ext(M, (20 << 40) - M, ExtentKind::Zero),
        ];
        assert_eq!(plan_units(&exts, 8 * M, false).len(), 1);
        assert_eq!(plan_units(&exts, 8 * M, true).len(), 2);
    }

    #[test]
    fn explicit_zeroes_are_always_planned() {
        let exts = [
            ext(0, M, ExtentKind::ExplicitZero),
            ext(M, M, ExtentKind::Backing),
        ];
        assert_eq!(
            plan_units(&exts, 8 * M, false),
            vec![Unit::Zero {
                offset: 0,
                len: M,
                explicit: true
            }]
        );
    }

    #[test]
    fn clip_cuts_extents_to_a_window() {
        let exts = [ext(0, 10, ExtentKind::Data), ext(10, 10, ExtentKind::Zero)];
        assert_eq!(
            clip(&exts, 5, 15),
            vec![ext(5, 5, ExtentKind::Data), ext(10, 5, ExtentKind::Zero)]
        );
    }
}
