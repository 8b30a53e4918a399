//! Gates for what an image's bytes claim about files: a header is untrusted guest-writable
//! data, so it may never change the format its owner meant, and a backing file it names is
//! followed only when it is an image of the recorded format inside the image's datastore.
//!
//! The **datastore** of an image is the tree of the directory that holds the image's
//! directory: `/srv/store/vm1/disk.qcow2` may use backing files anywhere under `/srv/store`
//! (`vm1/base.qcow2`, `templates/debian.qcow2`), never `/etc/shadow` or `/root/...`. Paths
//! are compared after resolving symlinks, so a link inside the datastore to a file outside it
//! is refused too.

use crate::chain::LayerFormat;
use crate::header::DetectedFormat;
use crate::ImageError;
use std::path::{Path, PathBuf};

/// The format a file name asks for: `.qcow2`/`.qcow` qcow2, `.raw`/`.img`/`.bin` raw;
/// `None` for other names.
pub fn format_of_name(path: &Path) -> Option<LayerFormat> {
    let ext = path.extension()?.to_str()?.to_ascii_lowercase();
    match ext.as_str() {
        "qcow2" | "qcow" => Some(LayerFormat::Qcow2),
        "raw" | "img" | "bin" => Some(LayerFormat::Raw),
        _ => None,
    }
}

/// An image format vmshift reads nowhere and writes never, as its file name says it
/// (`.vmdk`, `.vhdx`, `.vhd`, `.vdi`, `.qed`, `.vpc`).
fn foreign_format_of_name(path: &Path) -> Option<&'static str> {
    let ext = path.extension()?.to_str()?.to_ascii_lowercase();
    ["vmdk", "vhdx", "vhd", "vdi", "qed", "vpc"]
        .into_iter()
        .find(|f| *f == ext)
}

/// Refuses a source whose header says one format and whose name says another (a raw disk
/// whose guest wrote a qcow2 header, a `.qcow2` without qcow2 magic). Only consulted when the
/// operator did not state the format.
///
/// # Errors
/// `format_name_mismatch` naming both formats, with a hint to pass `--source-format`.
pub fn check_name_agrees(path: &Path, detected: DetectedFormat) -> Result<(), ImageError> {
    let Some(named) = format_of_name(path) else {
        return Ok(());
    };
    let header = match detected {
        DetectedFormat::Qcow2 => LayerFormat::Qcow2,
        DetectedFormat::Raw => LayerFormat::Raw,
        DetectedFormat::Other(_) => return Ok(()),
    };
    if header == named {
        return Ok(());
    }
    Err(ImageError::new(
        "format_name_mismatch",
        path,
        format!(
            "is named as a {} image but its header says {}: a guest can write a {} header into a raw disk, so vmshift will not pick one",
            named.as_str(),
            header.as_str(),
            LayerFormat::Qcow2.as_str()
        ),
        format!(
            "pass --source-format {} if the name is right (the file is copied as plain bytes), or --source-format {} if the header is",
            named.as_str(),
            header.as_str()
        ),
    ))
}

/// The datastore root of `image`: the parent of its directory, or the directory itself when
/// that is a top-level one (see the module docs).
pub fn datastore_root(image: &Path) -> PathBuf {
    let canon = std::fs::canonicalize(image)
        .unwrap_or_else(|_| std::path::absolute(image).unwrap_or_else(|_| image.to_path_buf()));
    let dir = canon.parent().unwrap_or(Path::new("/"));
    // An image in a top-level directory (`/images/d.qcow2`): that directory, never `/`.
    match dir.parent() {
        Some(p) if p != Path::new("/") => p.to_path_buf(),
        _ => dir.to_path_buf(),
    }
}

/// Whether `backing` (after resolving symlinks) lies inside the datastore of `image`.
pub fn inside_datastore(image: &Path, backing: &Path) -> bool {
    let Ok(real) = std::fs::canonicalize(backing) else {
        return false;
    };
    let root = datastore_root(image);
    real != root && real.starts_with(&root)
}

/// Refuses a backing file named by `image` that is outside its datastore, not a regular
/// file, or not an image of the recorded `format`: a qcow2 backing file must carry qcow2
/// magic, a raw one must not carry another format's magic and must hold whole 512-byte
/// sectors (a text file such as `/etc/passwd` does not). When the operator `stated` the
/// format (`--backing-format`), the header is not consulted (the sector rule still holds).
/// A missing file is left to the caller (it reports `backing_missing`).
///
/// # Errors
/// `backing_outside` or `backing_not_image`, naming the backing file and the image.
pub fn check_backing_file(
    image: &Path,
    backing: &Path,
    format: LayerFormat,
    stated: bool,
) -> Result<(), ImageError> {
    let Ok(meta) = std::fs::metadata(backing) else {
        return Ok(());
    };
    if !inside_datastore(image, backing) {
        return Err(ImageError::new(
            "backing_outside",
            backing,
            format!(
                "is named as the backing file of {}, but lies outside its datastore {}: vmshift follows backing names only inside the image's datastore",
                image.display(),
                datastore_root(image).display()
            ),
            "if this really is the base image, move it into the datastore and rebase (qemu-img rebase -u -b NAME -F FORMAT)",
        ));
    }
    let not_image = |why: String| {
        ImageError::new(
            "backing_not_image",
            backing,
            format!(
                "is named as the {} backing file of {}, but {why}",
                format.as_str(),
                image.display()
            ),
            "check the image's backing reference (vmshift info); rebase it onto the right base with qemu-img rebase -u",
        )
    };
    if !meta.is_file() {
        return Err(not_image("it is not a regular file".into()));
    }
    let head = read_head(backing).map_err(|e| not_image(format!("it cannot be read: {e}")))?;
    let detected = crate::header::detect_format(&head);
    match format {
        _ if stated && (format != LayerFormat::Raw || meta.len().is_multiple_of(512)) => Ok(()),
        LayerFormat::Qcow2 if detected != DetectedFormat::Qcow2 => Err(not_image(format!(
            "it has no qcow2 header (it reads as {detected})"
        ))),
        LayerFormat::Raw if detected != DetectedFormat::Raw => {
            Err(not_image(format!("its header says {detected}")))
        }
        LayerFormat::Raw if !meta.len().is_multiple_of(512) => Err(not_image(format!(
            "its {} bytes are not whole 512-byte sectors, as a disk image's are",
            meta.len()
        ))),
        LayerFormat::Raw if looks_like_text(&head) => Err(not_image(
            "its first sector is lines of text, not a disk's (a boot sector, a partition table or zeroes)"
                .into(),
        )),
        _ => Ok(()),
    }
}

/// Whether `head` (a file's first sector) is nothing but printable text with line breaks:
/// a configuration file or a log, never the start of a disk.
fn looks_like_text(head: &[u8]) -> bool {
    !head.is_empty()
        && head.contains(&b'\n')
        && head
            .iter()
            .all(|&b| matches!(b, b'\t' | b'\n' | b'\r' | 0x20..=0x7e))
}

/// Refuses a target whose file name asks for another format than the one written
/// (`disk.raw` holding qcow2).
///
/// # Errors
/// `target_name_format` naming the target and both formats.
pub fn check_target_name(target: &Path, format: LayerFormat) -> Result<(), ImageError> {
    // Names of formats vmshift does not write: a .vmdk holding qcow2 misleads every reader.
    if let Some(other) = foreign_format_of_name(target) {
        return Err(ImageError::new(
            "target_name_format",
            target,
            format!(
                "would hold a {} image under a name that says {other}, a format vmshift does not write",
                format.as_str()
            ),
            format!("name the target .{}", format.as_str()),
        ));
    }
    match format_of_name(target) {
        Some(named) if named != format => Err(ImageError::new(
            "target_name_format",
            target,
            format!(
                "would hold a {} image under a name that says {}",
                format.as_str(),
                named.as_str()
            ),
            format!(
                "name the target .{} or pass --format {}",
                format.as_str(),
                named.as_str()
            ),
        )),
        _ => Ok(()),
    }
}

fn read_head(path: &Path) -> std::io::Result<Vec<u8>> {
    use std::io::Read;
    let mut buf = Vec::with_capacity(512);
    std::fs::File::open(path)?.take(512).read_to_end(&mut buf)?;
    Ok(buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sector_of_text_lines_is_text_and_a_disk_sector_is_not() {
        let text = "root:x:0:0:root:/root:/bin/bash\n".repeat(16);
        assert!(looks_like_text(&text.as_bytes()[..512]));
        assert!(!looks_like_text(&[0u8; 512]));
        let mut mbr = [0u8; 512];
        mbr[510] = 0x55;
        mbr[511] = 0xaa;
        assert!(!looks_like_text(&mbr));
    }

    #[test]
    fn a_raw_name_with_a_qcow2_header_is_refused_naming_both() {
        let e = check_name_agrees(Path::new("/s/disk.raw"), DetectedFormat::Qcow2).unwrap_err();
        assert_eq!(e.code, "format_name_mismatch");
        assert!(e.message.contains("raw") && e.message.contains("qcow2"));
        assert!(e.hint.contains("--source-format raw"));
        assert!(check_name_agrees(Path::new("/s/disk.qcow2"), DetectedFormat::Raw).is_err());
        assert!(check_name_agrees(Path::new("/s/disk.IMG"), DetectedFormat::Qcow2).is_err());
        assert!(check_name_agrees(Path::new("/s/disk"), DetectedFormat::Qcow2).is_ok());
        assert!(check_name_agrees(Path::new("/s/disk.qcow2"), DetectedFormat::Qcow2).is_ok());
    }

    #[test]
    fn target_names_follow_their_format() {
        assert!(check_target_name(Path::new("/t/a.raw"), LayerFormat::Qcow2).is_err());
        assert!(check_target_name(Path::new("/t/a.qcow2"), LayerFormat::Raw).is_err());
        assert!(check_target_name(Path::new("/t/a.qcow2"), LayerFormat::Qcow2).is_ok());
        assert!(check_target_name(Path::new("/t/a"), LayerFormat::Raw).is_ok());
        let e = check_target_name(Path::new("/t/a.VMDK"), LayerFormat::Qcow2).unwrap_err();
        assert!(
            e.to_string()
                .contains("says vmdk, a format vmshift does not write"),
            "{e}"
        );
        assert!(check_target_name(Path::new("/t/a.vhdx"), LayerFormat::Raw).is_err());
    }

    #[test]
    fn the_datastore_is_the_tree_above_the_image_directory() {
        let t = tempfile::tempdir().unwrap();
        let vm = t.path().join("store/vm");
        std::fs::create_dir_all(&vm).unwrap();
        std::fs::create_dir_all(t.path().join("store/tpl")).unwrap();
        let img = vm.join("d.qcow2");
        std::fs::write(&img, b"x").unwrap();
        let inside = t.path().join("store/tpl/base.raw");
        std::fs::write(&inside, vec![0u8; 512]).unwrap();
        let outside = t.path().join("secret");
        std::fs::write(&outside, vec![0u8; 512]).unwrap();
        assert!(check_backing_file(&img, &inside, LayerFormat::Raw, false).is_ok());
        assert_eq!(
            check_backing_file(&img, &outside, LayerFormat::Raw, false)
                .unwrap_err()
                .code,
            "backing_outside"
        );
        std::fs::write(&inside, b"SECRET\n").unwrap();
        assert_eq!(
            check_backing_file(&img, &inside, LayerFormat::Raw, false)
                .unwrap_err()
                .code,
            "backing_not_image"
        );
        assert!(check_backing_file(&img, &inside, LayerFormat::Qcow2, false).is_err());
    }
}
