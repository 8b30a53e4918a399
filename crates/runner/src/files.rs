//! Small facts about files that every kind of job needs.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// Absolute form of `p` (not resolving symlinks).
pub fn abs(p: &Path) -> String {
    std::path::absolute(p)
        .unwrap_or_else(|_| p.to_path_buf())
        .display()
        .to_string()
}

/// `NAME.vmshift-partial` beside the final target: the name an offline target is written
/// under until it is verified.
pub fn partial_path(target: &Path) -> PathBuf {
    let mut name = target.file_name().unwrap_or_default().to_os_string();
    name.push(".vmshift-partial");
    target.with_file_name(name)
}

/// The allocated bytes of a file (`st_blocks` × 512), 0 when it cannot be read.
pub fn allocated_bytes(p: &Path) -> u64 {
    std::fs::metadata(p).map_or(0, |m| m.blocks() * 512)
}

/// Whether the file at `path` starts with the qcow2 magic (`QFI\xfb`).
pub fn has_qcow2_magic(path: &Path) -> bool {
    use std::io::Read;
    let mut magic = [0u8; 4];
    std::fs::File::open(path)
        .and_then(|mut f| f.read_exact(&mut magic))
        .is_ok_and(|()| magic == *b"QFI\xfb")
}
