//! Inspection: everything `vmshift info` shows and the plan needs, gathered from the image
//! headers, our table walk, `qemu-img check`, the lock bytes and block status.

use crate::chain::{resolve_chain, Chain, ChainOptions, Layer, LayerFormat};
use crate::header::{Qcow2Header, INCOMPAT_CORRUPT, INCOMPAT_DATA_FILE, INCOMPAT_EXTL2};
use crate::integrity::check_qcow2;
use crate::lock;
use crate::reader::ImageReader;
use serde::Serialize;
use std::path::Path;
use vmshift_core::extent::{bytes_of, ExtentKind};
use vmshift_core::plan::{LockState, Problem, SourceFacts};

/// How to inspect.
#[derive(Debug, Clone, Default)]
pub struct InspectOptions {
    /// Formats as the operator stated them.
    pub chain: ChainOptions,
    /// Walk block status to count data bytes (needed for plans; `info` does it too).
    pub walk_extents: bool,
}

/// One layer as `vmshift info` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct LayerInfo {
    /// Resolved path.
    pub path: String,
    /// Name as recorded by the layer above (absent for the top).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub recorded_name: Option<String>,
    /// `raw` or `qcow2`.
    pub format: String,
    /// Guest-visible size in bytes.
    pub virtual_size: u64,
    /// Bytes on disk.
    pub allocated_bytes: u64,
}

/// What `vmshift info` prints.
#[derive(Debug, Clone, Serialize)]
pub struct ImageInfo {
    /// Path as given.
    pub path: String,
    /// `raw`, `qcow2`, or `unknown` when the image could not be read.
    pub format: String,
    /// Guest-visible size in bytes.
    pub virtual_size: u64,
    /// File length in bytes.
    pub file_size: u64,
    /// Bytes on disk (`st_blocks * 512`) of the top file.
    pub allocated_bytes: u64,
    /// Guest bytes block status reports as data (whole chain), when walked.
    pub data_bytes: Option<u64>,
    /// qcow2 cluster size in bytes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cluster_size: Option<u64>,
    /// qcow2 version (2 = compat 0.10, 3 = compat 1.1).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub qcow2_version: Option<u32>,
    /// `none`, `aes`, `luks`.
    pub encryption: String,
    /// `zlib` or `zstd` (qcow2).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub compression_type: Option<String>,
    /// Compressed clusters found in the top layer.
    pub compressed_clusters: u64,
    /// Feature flags set in the header.
    pub features: Vec<String>,
    /// Internal snapshots.
    pub snapshots: u32,
    /// The chain below the top, top first.
    pub backing_chain: Vec<LayerInfo>,
    /// Whether a running QEMU holds the image lock.
    pub lock: LockState,
    /// Problems that would refuse a migration.
    pub problems: Vec<Problem>,
    /// Other findings.
    pub notes: Vec<String>,
}

/// Result of [`inspect`].
#[derive(Debug, Clone)]
pub struct Inspection {
    /// The resolved chain, when it could be resolved.
    pub chain: Option<Chain>,
    /// Facts for the plan.
    pub facts: SourceFacts,
    /// Facts for people.
    pub info: ImageInfo,
}

/// Inspects the image at `path` and its chain. Never fails: what cannot be learnt becomes a
/// [`Problem`] in the result.
pub fn inspect(path: &Path, opts: &InspectOptions) -> Inspection {
    let mut facts = SourceFacts {
        path: path.display().to_string(),
        format: "unknown".into(),
        ..Default::default()
    };
    let mut info = unknown_info(&facts.path);
    let chain = match resolve_chain(path, &opts.chain) {
        Ok(c) => c,
        Err(e) => {
            facts.problems.push(e.to_problem());
            info.problems = facts.problems.clone();
            return Inspection {
                chain: None,
                facts,
                info,
            };
        }
    };
    let top = chain.top();
    if let Some(stated) = opts.chain.top_format {
        facts.notes.extend(stated_format_note(top, stated));
    }
    describe_top(&chain, &mut facts, &mut info);
    check_layers(&chain, &mut facts, &mut info);

    match lock::probe(&top.path) {
        Ok(state) => facts.lock = state,
        Err(e) => facts
            .notes
            .push(format!("could not probe the image lock: {e}")),
    }
    info.lock = facts.lock.clone();

    facts.thick = is_thick(
        top.format,
        top.file_size,
        facts.virtual_size,
        top.allocated_bytes,
    );

    if opts.walk_extents && facts.problems.is_empty() {
        count_data(&chain, &mut facts, &mut info);
    }
    info.problems = facts.problems.clone();
    info.notes = facts.notes.clone();
    Inspection {
        chain: Some(chain),
        facts,
        info,
    }
}

/// What `info` shows of an image nothing could be learnt about yet.
fn unknown_info(path: &str) -> ImageInfo {
    ImageInfo {
        path: path.to_string(),
        format: "unknown".into(),
        virtual_size: 0,
        file_size: 0,
        allocated_bytes: 0,
        data_bytes: None,
        cluster_size: None,
        qcow2_version: None,
        encryption: "none".into(),
        compression_type: None,
        compressed_clusters: 0,
        features: Vec::new(),
        snapshots: 0,
        backing_chain: Vec::new(),
        lock: LockState::Free,
        problems: Vec::new(),
        notes: Vec::new(),
    }
}

/// A note when the operator's stated format overrides what the top's header says: the
/// header's structure is then copied as plain data.
fn stated_format_note(top: &Layer, stated: LayerFormat) -> Option<String> {
    let detected = std::fs::File::open(&top.path).ok().and_then(|f| {
        use std::io::Read;
        let mut head = Vec::with_capacity(4096);
        f.take(4096).read_to_end(&mut head).ok()?;
        Some(crate::header::detect_format(&head))
    });
    detected.filter(|d| d.to_string() != stated.as_str()).map(|d| {
        format!(
            "{} was read as {} as you stated, although its header says {d}: its {d} structure (and any encryption) is copied as plain data",
            top.path.display(),
            stated.as_str()
        )
    })
}

/// Sizes, format and chain of the top layer, and its qcow2 header fields.
fn describe_top(chain: &Chain, facts: &mut SourceFacts, info: &mut ImageInfo) {
    let top = chain.top();
    facts.format = top.format.as_str().into();
    facts.virtual_size = top.virtual_size();
    facts.file_size = top.file_size;
    facts.allocated_bytes = top.allocated_bytes;
    facts.backing_chain = chain
        .backing()
        .iter()
        .map(|l| l.path.display().to_string())
        .collect();
    info.format = facts.format.clone();
    info.virtual_size = facts.virtual_size;
    info.file_size = top.file_size;
    info.allocated_bytes = top.allocated_bytes;
    info.backing_chain = chain
        .backing()
        .iter()
        .map(|l| LayerInfo {
            path: l.path.display().to_string(),
            recorded_name: l.recorded_name.clone(),
            format: l.format.as_str().into(),
            virtual_size: l.virtual_size(),
            allocated_bytes: l.allocated_bytes,
        })
        .collect();
    if let Some(h) = &top.header {
        facts.cluster_size = Some(h.cluster_size());
        info.cluster_size = Some(h.cluster_size());
        info.qcow2_version = Some(h.version);
        info.encryption = h.encryption().into();
        info.compression_type = Some(h.compression().into());
        info.features = h.feature_names().iter().map(|s| s.to_string()).collect();
        info.snapshots = h.nb_snapshots;
    }
}

/// Blockers, corruption and notes of every qcow2 layer; the top's fidelity facts
/// (snapshots, bitmaps, compression).
fn check_layers(chain: &Chain, facts: &mut SourceFacts, info: &mut ImageInfo) {
    for (depth, layer) in chain.layers.iter().enumerate() {
        let Some(h) = &layer.header else { continue };
        let name = layer.path.display();
        let refuse = |code: &str, what: String, hint: &str| {
            Problem::new(code, format!("{name} {what}"), hint)
        };
        if let Some((code, what, hint)) = layer_blocker(h) {
            facts.problems.push(refuse(code, what, hint));
            continue;
        }
        let integrity = check_qcow2(&layer.path, h, layer.file_size);
        for e in &integrity.errors {
            facts.problems.push(refuse("corrupt", format!("is corrupt: {e}"), "restore it from a backup, or salvage a copy with qemu-img check -r all; vmshift will not copy zeroes in place of lost data"));
        }
        for n in integrity.notes {
            facts.notes.push(format!("{name}: {n}"));
        }
        if depth == 0 {
            facts.has_compressed_clusters = integrity.compressed_clusters > 0;
            info.compressed_clusters = integrity.compressed_clusters;
            facts.fidelity = vmshift_core::fidelity::FidelityFacts {
                path: name.to_string(),
                snapshots: h.nb_snapshots,
                has_bitmaps: h.autoclear_features & crate::header::AUTOCLEAR_BITMAPS != 0
                    || h.bitmaps.is_some_and(|b| b.nb_bitmaps > 0),
                bitmaps: read_bitmaps(&layer.path, h),
                compressed_clusters: integrity.compressed_clusters,
            };
        }
    }
}

/// The first header feature that stops a copy outright, as `(code, what, hint)`.
fn layer_blocker(h: &Qcow2Header) -> Option<(&'static str, String, &'static str)> {
    if h.crypt_method != 0 {
        Some((
            "encrypted",
            format!("is encrypted ({}): vmshift does not copy encrypted images, and never writes their ciphertext as data", h.encryption()),
            "move the file as it is with the VM off (cp keeps the LUKS header), or decrypt it first with qemu-img convert and a --object secret",
        ))
    } else if h.incompatible_features & INCOMPAT_CORRUPT != 0 {
        Some((
            "corrupt",
            "is marked corrupt by QEMU".into(),
            "repair a copy with qemu-img check -r all, then migrate the copy",
        ))
    } else if h.incompatible_features & INCOMPAT_DATA_FILE != 0 {
        Some((
            "data_file",
            "keeps its data in an external data file, which vmshift does not copy yet".into(),
            "convert it with qemu-img convert -O qcow2 first",
        ))
    } else if h.compression_type != 0 || h.incompatible_features & INCOMPAT_EXTL2 != 0 {
        Some((
            "unsupported_feature",
            format!(
                "uses {} which vmshift's reader does not support",
                if h.compression_type != 0 {
                    "zstd compression"
                } else {
                    "extended L2 entries"
                }
            ),
            "convert it with qemu-img convert -O qcow2 first",
        ))
    } else {
        None
    }
}

/// Data bytes and extents of the flattened chain, and data bytes of the top layer alone,
/// from block status; a failed walk becomes a problem.
fn count_data(chain: &Chain, facts: &mut SourceFacts, info: &mut ImageInfo) {
    let top = chain.top();
    let block_status_error = |e: std::io::Error| {
        crate::ImageError::new(
            "block_status",
            &top.path,
            format!("block status failed: {e}"),
            "check the image with qemu-img check",
        )
    };
    let walked = ImageReader::open(chain).and_then(|r| {
        let size = r.virtual_size();
        let flat = r.extents(0, size, false).map_err(block_status_error)?;
        let shallow = if chain.layers.len() > 1 {
            Some(r.extents(0, size, true).map_err(block_status_error)?)
        } else {
            None
        };
        Ok((flat, shallow))
    });
    match walked {
        Ok((flat, shallow)) => {
            facts.data_bytes = bytes_of(&flat, ExtentKind::Data);
            facts.data_extents = flat.iter().filter(|e| e.kind == ExtentKind::Data).count() as u64;
            facts.top_data_bytes = match &shallow {
                Some(s) => bytes_of(s, ExtentKind::Data),
                None => facts.data_bytes,
            };
            info.data_bytes = Some(facts.data_bytes);
        }
        Err(e) => facts.problems.push(e.to_problem()),
    }
}

/// The persistent bitmaps of a qcow2 image, from its bitmap directory (empty when it has
/// none or the directory cannot be read: the header's flag still says they exist).
fn read_bitmaps(
    path: &Path,
    h: &crate::header::Qcow2Header,
) -> Vec<vmshift_core::fidelity::BitmapFact> {
    use std::os::unix::fs::FileExt;
    let Some(ext) = h.bitmaps.filter(|b| b.nb_bitmaps > 0) else {
        return Vec::new();
    };
    let Ok(len) = usize::try_from(ext.directory_size.min(crate::header::MAX_BITMAP_DIRECTORY))
    else {
        return Vec::new();
    };
    let mut buf = vec![0u8; len];
    let Ok(f) = std::fs::File::open(path) else {
        return Vec::new();
    };
    if f.read_exact_at(&mut buf, ext.directory_offset).is_err() {
        return Vec::new();
    }
    crate::header::parse_bitmap_directory(&buf, ext.nb_bitmaps)
        .unwrap_or_default()
        .into_iter()
        .map(|(name, in_use)| vmshift_core::fidelity::BitmapFact { name, in_use })
        .collect()
}

/// A file whose every byte is allocated (preallocated or dense): `qemu-img` calls it
/// preallocation; it is not recorded in metadata, so it is detected from `st_blocks`.
fn is_thick(format: LayerFormat, file_size: u64, virtual_size: u64, allocated: u64) -> bool {
    match format {
        LayerFormat::Raw => file_size >= 1 << 20 && allocated >= file_size.next_multiple_of(4096),
        LayerFormat::Qcow2 => virtual_size >= 1 << 20 && allocated >= virtual_size,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thick_means_every_byte_allocated() {
        assert!(is_thick(LayerFormat::Raw, 8 << 20, 8 << 20, 8 << 20));
        assert!(!is_thick(LayerFormat::Raw, 48 << 20, 48 << 20, 4 << 20));
        assert!(is_thick(LayerFormat::Qcow2, 8 << 20, 8 << 20, 8_452 << 10));
        assert!(!is_thick(LayerFormat::Qcow2, 8 << 20, 8 << 20, 1_284 << 10));
    }
}
