//! What the copy would lose: properties of the source a new target cannot keep yet
//! (internal snapshots, persistent bitmaps, compression). Each refuses the job, naming it,
//! unless the operator drops it explicitly (`--drop snapshots,bitmaps,compression`); a
//! dropped property becomes a warning. Pure: facts in, decisions out.

use crate::plan::Problem;
use serde::{Deserialize, Serialize};

/// A property of the source the copy cannot keep.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Property {
    /// qcow2 internal snapshots.
    Snapshots,
    /// qcow2 persistent dirty bitmaps.
    Bitmaps,
    /// Compressed clusters (written uncompressed).
    Compression,
}

impl Property {
    /// The `--drop` value naming it.
    pub fn as_str(&self) -> &'static str {
        match self {
            Property::Snapshots => "snapshots",
            Property::Bitmaps => "bitmaps",
            Property::Compression => "compression",
        }
    }
}

/// One persistent bitmap as its directory entry records it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BitmapFact {
    /// The bitmap's name.
    pub name: String,
    /// The `in_use` flag is set: QEMU did not close it cleanly, its content is inconsistent.
    pub in_use: bool,
}

/// What the source has that a copy may lose.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FidelityFacts {
    /// Path of the source, for messages.
    pub path: String,
    /// Internal snapshots in the top image.
    pub snapshots: u32,
    /// The header says persistent bitmaps exist (autoclear bit or bitmaps extension).
    pub has_bitmaps: bool,
    /// The bitmaps, when their directory could be read (may be empty though `has_bitmaps`).
    pub bitmaps: Vec<BitmapFact>,
    /// Compressed clusters in the top image.
    pub compressed_clusters: u64,
}

/// The problems (properties that would be lost and are not dropped) and the warnings
/// (dropped properties) for `facts` under `drop`.
pub fn assess(facts: &FidelityFacts, drop: &[Property]) -> (Vec<Problem>, Vec<String>) {
    let mut lost: Vec<(Property, String)> = Vec::new();
    if facts.snapshots > 0 {
        lost.push((
            Property::Snapshots,
            format!(
                "{} has {} internal snapshot(s), which the copy does not keep",
                facts.path, facts.snapshots
            ),
        ));
    }
    if facts.has_bitmaps || !facts.bitmaps.is_empty() {
        let named = if facts.bitmaps.is_empty() {
            String::new()
        } else {
            let list: Vec<String> = facts
                .bitmaps
                .iter()
                .map(|b| {
                    if b.in_use {
                        format!("{:?} (marked in use: inconsistent)", b.name)
                    } else {
                        format!("{:?}", b.name)
                    }
                })
                .collect();
            format!(" ({})", list.join(", "))
        };
        lost.push((
            Property::Bitmaps,
            format!(
                "{} has persistent dirty bitmaps{named}, which the copy does not keep",
                facts.path
            ),
        ));
    }
    if facts.compressed_clusters > 0 {
        lost.push((
            Property::Compression,
            format!(
                "{} has {} compressed cluster(s), which the copy writes uncompressed",
                facts.path, facts.compressed_clusters
            ),
        ));
    }
    let mut problems = Vec::new();
    let mut warnings = Vec::new();
    for (prop, what) in lost {
        if drop.contains(&prop) {
            warnings.push(format!(
                "{what}: dropped as asked (--drop {})",
                prop.as_str()
            ));
        } else {
            problems.push(Problem::new(
                &format!("would_drop_{}", prop.as_str()),
                what,
                format!(
                    "pass --drop {} to copy without them, or keep the image where it is",
                    prop.as_str()
                ),
            ));
        }
    }
    (problems, warnings)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts() -> FidelityFacts {
        FidelityFacts {
            path: "/a/d.qcow2".into(),
            snapshots: 2,
            has_bitmaps: true,
            bitmaps: vec![
                BitmapFact {
                    name: "b0".into(),
                    in_use: false,
                },
                BitmapFact {
                    name: "b1".into(),
                    in_use: true,
                },
            ],
            compressed_clusters: 3,
        }
    }

    #[test]
    fn each_property_the_copy_loses_is_refused_by_name() {
        let (p, w) = assess(&facts(), &[]);
        let codes: Vec<&str> = p.iter().map(|p| p.code.as_str()).collect();
        assert_eq!(
            codes,
            [
                "would_drop_snapshots",
                "would_drop_bitmaps",
                "would_drop_compression"
            ]
        );
        assert!(p[1]
            .message
            .contains("\"b1\" (marked in use: inconsistent)"));
        assert!(p[0].hint.contains("--drop snapshots"));
        assert!(w.is_empty());
    }

    #[test]
    fn a_dropped_property_is_a_warning_not_a_problem() {
        let (p, w) = assess(&facts(), &[Property::Snapshots, Property::Compression]);
        assert_eq!(p.len(), 1);
        assert_eq!(p[0].code, "would_drop_bitmaps");
        assert_eq!(w.len(), 2);
        assert!(w[0].contains("2 internal snapshot(s)") && w[0].contains("--drop snapshots"));
    }

    #[test]
    fn a_plain_source_loses_nothing() {
        let (p, w) = assess(&FidelityFacts::default(), &[]);
        assert!(p.is_empty() && w.is_empty());
    }
}
