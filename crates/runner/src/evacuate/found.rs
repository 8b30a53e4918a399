//! What is on the source datastore: each image inspected (format, sizes, the backing layers
//! that lie on the source) and the backing files qcow2 headers name, read without opening
//! them as images.

use crate::files::allocated_bytes;
use std::path::{Path, PathBuf};

/// An image on the source, as inspected.
pub(super) struct Found {
    pub(super) path: PathBuf,
    pub(super) format: String,
    pub(super) virtual_size: u64,
    pub(super) allocated: u64,
    /// Its backing layers that lie on the source (canonical paths).
    pub(super) backing_here: Vec<PathBuf>,
    /// Why it cannot be planned (inspection failed).
    pub(super) problem: Option<String>,
}

/// Inspects `path`: format, sizes, and the layers of its backing chain under `source_root`.
pub(super) fn inspect(path: &Path, source_root: &Path) -> Found {
    let i = vmshift_image::inspect(
        path,
        &vmshift_image::InspectOptions {
            chain: vmshift_image::ChainOptions::default(),
            walk_extents: false,
        },
    );
    let problem = if i.chain.is_none() {
        Some(i.info.problems.first().map_or_else(
            || "its backing chain cannot be resolved".into(),
            |p| p.message.clone(),
        ))
    } else {
        None
    };
    let backing_here = i
        .info
        .backing_chain
        .iter()
        .map(|l| std::fs::canonicalize(&l.path).unwrap_or_else(|_| PathBuf::from(&l.path)))
        .filter(|p| p.starts_with(source_root))
        .collect();
    Found {
        path: path.to_path_buf(),
        format: i.info.format.clone(),
        virtual_size: i.info.virtual_size,
        allocated: allocated_bytes(path),
        backing_here,
        problem,
    }
}

/// The backing files `path` names, layer by layer (up to 16), as canonical paths: read
/// from the qcow2 headers' backing names only, never opened as images.
pub(super) fn recorded_backing(path: &Path) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = Vec::new();
    let mut cur = path.to_path_buf();
    for _ in 0..16 {
        let Some(name) = backing_name(&cur) else {
            break;
        };
        let dir = cur.parent().unwrap_or(Path::new("/"));
        let Ok(next) = std::fs::canonicalize(dir.join(name)) else {
            break;
        };
        if out.contains(&next) {
            break;
        }
        out.push(next.clone());
        cur = next;
    }
    out
}

/// The backing file name a qcow2 header records (it lies in the first cluster, ≤ 2 MiB;
/// the first 64 KiB hold it for every image qemu-img makes).
fn backing_name(path: &Path) -> Option<String> {
    use std::io::Read;
    let mut head = Vec::new();
    std::fs::File::open(path)
        .ok()?
        .take(64 << 10)
        .read_to_end(&mut head)
        .ok()?;
    vmshift_image::header::Qcow2Header::parse(&head)
        .ok()?
        .backing_file
}
