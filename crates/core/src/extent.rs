//! Extents: what a range of the guest-visible disk holds, from block status.

use serde::{Deserialize, Serialize};

/// What a range of an image holds, as far as block status can tell without reading it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ExtentKind {
    /// Allocated data (may still turn out to be zeroes when read).
    Data,
    /// Reads as zeroes: a hole, an unallocated cluster with no backing, or a zero cluster.
    Zero,
    /// Explicit zero cluster in the top layer (qcow2): must stay zero over a backing file.
    ExplicitZero,
    /// Not allocated in the top layer: the backing file supplies it (shallow copies only).
    Backing,
}

/// A guest-offset range with one [`ExtentKind`]. Offsets and lengths are bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Extent {
    /// Guest offset of the first byte.
    pub offset: u64,
    /// Length in bytes (never 0 in a normalised list).
    pub len: u64,
    /// What the range holds.
    pub kind: ExtentKind,
}

impl Extent {
    /// One past the last byte.
    pub fn end(&self) -> u64 {
        self.offset + self.len
    }
}

/// Merges adjacent extents of the same kind and drops empty ones.
///
/// Input must be sorted by offset and non-overlapping (block status walks produce that).
pub fn coalesce(extents: impl IntoIterator<Item = Extent>) -> Vec<Extent> {
    let mut out: Vec<Extent> = Vec::new();
    for e in extents.into_iter().filter(|e| e.len > 0) {
        match out.last_mut() {
            Some(last) if last.kind == e.kind && last.end() == e.offset => last.len += e.len,
            _ => out.push(e),
        }
    }
    out
}

/// Sum of the lengths of the extents of `kind`.
pub fn bytes_of(extents: &[Extent], kind: ExtentKind) -> u64 {
    extents
        .iter()
        .filter(|e| e.kind == kind)
        .map(|e| e.len)
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ext(offset: u64, len: u64, kind: ExtentKind) -> Extent {
        Extent { offset, len, kind }
    }

    #[test]
    fn coalesce_merges_touching_extents_of_one_kind_only() {
        let got = coalesce([
            ext(0, 10, ExtentKind::Data),
            ext(10, 5, ExtentKind::Data),
            ext(15, 0, ExtentKind::Zero),
            ext(15, 5, ExtentKind::Zero),
            ext(20, 5, ExtentKind::Data),
        ]);
        assert_eq!(
            got,
            vec![
                ext(0, 15, ExtentKind::Data),
                ext(15, 5, ExtentKind::Zero),
                ext(20, 5, ExtentKind::Data)
            ]
        );
        assert_eq!(bytes_of(&got, ExtentKind::Data), 20);
    }
}
