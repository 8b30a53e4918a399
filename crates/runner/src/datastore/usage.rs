//! What a datastore root holds: its file system's space (statvfs) and the images under it.

use crate::error::IoContext;
use crate::files::{allocated_bytes, has_qcow2_magic};
use crate::Result;
use serde::Serialize;
use std::path::Path;

/// How deep below a root images are looked for.
const MAX_DEPTH: usize = 4;

/// A datastore root's space and images.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Usage {
    /// The file system's size (`f_blocks * f_frsize`), bytes.
    pub capacity_bytes: u64,
    /// Free for unprivileged users (`f_bavail * f_frsize`), bytes.
    pub free_bytes: u64,
    /// Used (`(f_blocks - f_bfree) * f_frsize`), bytes.
    pub used_bytes: u64,
    /// Image files found (qcow2 by magic; `.raw`, `.img`, `.qcow2` by name), up to 4
    /// levels down.
    pub images: u64,
    /// What those images allocate on disk (`st_blocks * 512`), bytes.
    pub allocated_by_images_bytes: u64,
}

/// Measures `root`; nothing below `skip` is opened (see [`walk`]).
///
/// # Errors
/// When statvfs of `root` fails (it does not exist, is not reachable).
pub fn usage(root: &Path, skip: Option<&Path>) -> Result<Usage> {
    let st = rustix::fs::statvfs(root)
        .map_err(std::io::Error::from)
        .io_context(|| format!("cannot read the datastore {}", root.display()))?;
    let (mut images, mut allocated) = (0u64, 0u64);
    walk(root, skip, 0, &mut |p| {
        images += 1;
        allocated = allocated.saturating_add(allocated_bytes(p));
    });
    Ok(Usage {
        capacity_bytes: st.f_blocks.saturating_mul(st.f_frsize),
        free_bytes: st.f_bavail.saturating_mul(st.f_frsize),
        used_bytes: st
            .f_blocks
            .saturating_sub(st.f_bfree)
            .saturating_mul(st.f_frsize),
        images,
        allocated_by_images_bytes: allocated,
    })
}

/// The image files under `root` (as [`usage`] counts them), sorted; nothing below `skip`,
/// no partial targets (`*.vmshift-partial`).
pub fn images(root: &Path, skip: Option<&Path>) -> Vec<std::path::PathBuf> {
    let mut found = Vec::new();
    walk(root, skip, 0, &mut |p| {
        if !p.to_string_lossy().contains(".vmshift-partial") {
            found.push(p.to_path_buf());
        }
    });
    found.sort();
    found
}

/// Image files below `dir`, never below `skip`: the state directory holds the journal,
/// which only SQLite may open (closing any other descriptor of it drops this process's
/// SQLite locks, and another process could then delete the journal's WAL under it).
fn walk(dir: &Path, skip: Option<&Path>, depth: usize, found: &mut dyn FnMut(&Path)) {
    if skip.is_some_and(|s| dir.starts_with(s)) {
        return;
    }
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    for e in rd.flatten() {
        let Ok(ft) = e.file_type() else { continue };
        let p = e.path();
        if ft.is_dir() && depth < MAX_DEPTH {
            walk(&p, skip, depth + 1, found);
        } else if ft.is_file() && is_image(&p) {
            found(&p);
        }
    }
}

fn is_image(p: &Path) -> bool {
    let by_name = p
        .extension()
        .is_some_and(|e| e == "raw" || e == "img" || e == "qcow2");
    by_name || has_qcow2_magic(p)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_images_by_name_and_magic_and_skips_the_state_dir() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("a.raw"), vec![1u8; 8192]).unwrap();
        std::fs::write(d.path().join("b"), b"QFI\xfbrest").unwrap();
        std::fs::write(d.path().join("notes.txt"), b"not an image").unwrap();
        std::fs::create_dir_all(d.path().join("state")).unwrap();
        std::fs::write(d.path().join("state/c.img"), vec![1u8; 4096]).unwrap();
        let u = usage(d.path(), Some(&d.path().join("state"))).unwrap();
        assert_eq!(u.images, 2);
        assert_eq!(
            u.allocated_by_images_bytes,
            allocated_bytes(&d.path().join("a.raw")) + allocated_bytes(&d.path().join("b"))
        );
        assert!(u.capacity_bytes >= u.free_bytes && u.capacity_bytes > 0);
    }

    #[test]
    fn a_missing_root_is_one_line_naming_it() {
        let e = usage(Path::new("/nonexistent/vmshift-ds"), None).unwrap_err();
        let s = e.to_string();
        assert!(s.contains("/nonexistent/vmshift-ds"), "{s}");
        assert!(!s.contains('\n'));
    }
}
