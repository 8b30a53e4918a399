//! Backing chains: names recorded inside images are untrusted. They are resolved relative to
//! the image's own directory (as QEMU does), their format is the one the parent recorded —
//! never probed — and loops, protocols and missing files are refused.

use crate::header::{detect_format, DetectedFormat, Qcow2Header, HEADER_READ_BYTES};
use crate::ImageError;
use std::collections::HashSet;
use std::fs::File;
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// Deepest chain we follow (QEMU's limit is similar in spirit; real chains are short).
pub const MAX_CHAIN_DEPTH: usize = 64;

/// Formats vmshift reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LayerFormat {
    /// Plain bytes.
    Raw,
    /// qcow2 v2/v3.
    Qcow2,
}

impl LayerFormat {
    /// `raw` or `qcow2`.
    pub fn as_str(&self) -> &'static str {
        match self {
            LayerFormat::Raw => "raw",
            LayerFormat::Qcow2 => "qcow2",
        }
    }

    /// Parses a recorded or operator-given format name.
    pub fn from_name(name: &str) -> Option<Self> {
        match name {
            "raw" => Some(LayerFormat::Raw),
            "qcow2" => Some(LayerFormat::Qcow2),
            _ => None,
        }
    }
}

/// One image of a chain.
#[derive(Debug, Clone)]
pub struct Layer {
    /// Path as resolved (relative names joined to the parent's directory, not canonicalised).
    pub path: PathBuf,
    /// The name the parent recorded for this layer (`None` for the top).
    pub recorded_name: Option<String>,
    /// Format of this layer.
    pub format: LayerFormat,
    /// Parsed header (qcow2 only).
    pub header: Option<Qcow2Header>,
    /// File length in bytes.
    pub file_size: u64,
    /// `st_blocks * 512`.
    pub allocated_bytes: u64,
}

impl Layer {
    /// Guest-visible size: the qcow2 header size, or the file length for raw.
    pub fn virtual_size(&self) -> u64 {
        self.header.as_ref().map_or(self.file_size, |h| h.size)
    }
}

/// A resolved chain, top first.
#[derive(Debug, Clone)]
pub struct Chain {
    /// The layers, top (the image named by the operator) first.
    pub layers: Vec<Layer>,
}

impl Chain {
    /// The image the operator named.
    pub fn top(&self) -> &Layer {
        &self.layers[0]
    }

    /// Layers below the top.
    pub fn backing(&self) -> &[Layer] {
        &self.layers[1..]
    }
}

/// How to treat formats while resolving.
#[derive(Debug, Clone)]
pub struct ChainOptions {
    /// Format of the top image as the operator stated it (`None`: read the header).
    pub top_format: Option<LayerFormat>,
    /// Format to use for backing files whose parent recorded none.
    pub backing_format: Option<LayerFormat>,
    /// Follow the backing names recorded in the images (through
    /// [`crate::gate::check_backing_file`]); `false` resolves the top image only (a target
    /// whose backing layers the caller already resolved).
    pub follow_backing: bool,
}

impl Default for ChainOptions {
    fn default() -> Self {
        ChainOptions {
            top_format: None,
            backing_format: None,
            follow_backing: true,
        }
    }
}

/// Resolves the chain below `top`.
///
/// # Errors
/// [`ImageError`] naming the image and the problem: unreadable file, unknown format,
/// missing or unrecorded backing format, protocol names, missing backing files, loops.
pub fn resolve_chain(top: &Path, opts: &ChainOptions) -> Result<Chain, ImageError> {
    let mut layers = Vec::new();
    let mut seen = HashSet::new();
    let mut path = top.to_path_buf();
    let mut recorded: Option<String> = None;
    if path.is_dir() {
        return Err(ImageError::new(
            "not_a_file",
            &path,
            "is a directory, not an image file",
            "name the image file itself",
        ));
    }
    // Before anything opens it: opening a FIFO blocks until a writer comes (forever).
    if let Ok(meta) = std::fs::metadata(&path) {
        if !meta.is_file() && !meta.file_type().is_block_device_like() {
            return Err(ImageError::new(
                "not_a_file",
                &path,
                format!("is {}, not an image file", file_kind(&meta.file_type())),
                "name an image file",
            ));
        }
    }
    let mut format = match opts.top_format {
        Some(f) => f,
        None => detect_top_format(&path)?,
    };
    loop {
        let referrer = layers.last().map(|l: &Layer| l.path.clone());
        let meta = layer_metadata(&path, referrer.as_deref(), &mut seen, layers.len())?;
        let stated = layers.is_empty() && opts.top_format.is_some();
        let header = read_header(&path, format, stated)?;
        let next = header.as_ref().and_then(|h| {
            h.backing_file
                .clone()
                .map(|name| (name, h.backing_format.clone()))
        });
        layers.push(Layer {
            path: path.clone(),
            recorded_name: recorded.clone(),
            format,
            header,
            file_size: meta.len(),
            allocated_bytes: meta.blocks() * 512,
        });
        let Some((name, fmt)) = next else { break };
        if !opts.follow_backing {
            break;
        }
        (path, format) = backing_layer(&path, &name, fmt.as_deref(), opts)?;
        recorded = Some(name);
    }
    Ok(Chain { layers })
}

/// The top's format from its header (the operator stated none); other formats are refused.
fn detect_top_format(path: &Path) -> Result<LayerFormat, ImageError> {
    let head = read_head(path)?;
    let detected = detect_format(&head);
    crate::gate::check_name_agrees(path, detected)?;
    match detected {
        DetectedFormat::Qcow2 => Ok(LayerFormat::Qcow2),
        DetectedFormat::Raw => Ok(LayerFormat::Raw),
        DetectedFormat::Other(name) => Err(ImageError::new(
            "unsupported_format",
            path,
            format!("is a {name} image, which vmshift does not copy"),
            if name.starts_with("luks") {
                "it is encrypted: unlock it with cryptsetup, or move the file as it is with the VM off"
            } else {
                "convert it first with qemu-img convert -O qcow2, then migrate the result"
            },
        )),
    }
}

/// "a FIFO (named pipe)", "a socket", "a character device", … for a refusal.
fn file_kind(t: &std::fs::FileType) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    if t.is_fifo() {
        "a FIFO (named pipe)"
    } else if t.is_socket() {
        "a socket"
    } else if t.is_char_device() {
        "a character device"
    } else if t.is_dir() {
        "a directory"
    } else {
        "not a regular file"
    }
}

/// The layer's metadata, refusing a missing file, a non-file, a loop (`seen` holds the
/// `(dev, ino)` of the layers above) and a chain deeper than [`MAX_CHAIN_DEPTH`].
/// `referrer` is the layer whose backing file this is.
fn layer_metadata(
    path: &Path,
    referrer: Option<&Path>,
    seen: &mut HashSet<(u64, u64)>,
    depth: usize,
) -> Result<std::fs::Metadata, ImageError> {
    let meta = std::fs::metadata(path).map_err(|e| match referrer {
        Some(r) => ImageError::new(
            "backing_missing",
            path,
            format!(
                "cannot be opened: {e}; it is the backing file of {}",
                r.display()
            ),
            "restore the backing file, or rebase the image with qemu-img rebase",
        ),
        None => ImageError::new(
            "unreadable",
            path,
            format!("cannot be opened: {e}"),
            "check the path and permissions",
        ),
    })?;
    if !meta.is_file() && !meta.file_type().is_block_device_like() {
        return Err(ImageError::new(
            "not_a_file",
            path,
            format!("is {}, not an image file", file_kind(&meta.file_type())),
            "name an image file",
        ));
    }
    if !seen.insert((meta.dev(), meta.ino())) {
        return Err(ImageError::new(
            "backing_loop",
            path,
            "appears twice in its own backing chain (a loop)",
            "rebase the image onto the right base with qemu-img rebase -u",
        ));
    }
    if depth >= MAX_CHAIN_DEPTH {
        return Err(ImageError::new(
            "chain_too_deep",
            path,
            format!("backing chain is deeper than {MAX_CHAIN_DEPTH} images"),
            "commit or flatten the chain first",
        ));
    }
    Ok(meta)
}

/// The layer's qcow2 header (`None` for raw); `stated`: the operator named the format.
fn read_header(
    path: &Path,
    format: LayerFormat,
    stated: bool,
) -> Result<Option<Qcow2Header>, ImageError> {
    match format {
        LayerFormat::Raw => Ok(None),
        LayerFormat::Qcow2 => {
            let head = read_head(path)?;
            Qcow2Header::parse(&head).map(Some).map_err(|e| {
                ImageError::new(
                    "bad_header",
                    path,
                    format!("has an invalid qcow2 header: {e}"),
                    if stated {
                        "check --source-format: the file may not be qcow2"
                    } else {
                        "the image is damaged; restore it from a backup"
                    },
                )
            })
        }
    }
}

/// Path and format of the backing file that `image` records as `name` (format `fmt`),
/// after the name and the file passed their gates.
fn backing_layer(
    image: &Path,
    name: &str,
    fmt: Option<&str>,
    opts: &ChainOptions,
) -> Result<(PathBuf, LayerFormat), ImageError> {
    check_backing_name(image, name)?;
    // A format the operator stated (--backing-format) is never checked against the
    // header; one the image recorded must match the backing file's own header.
    let stated = fmt.is_none();
    let format = match fmt {
        Some(f) => LayerFormat::from_name(f).ok_or_else(|| {
            ImageError::new(
                "backing_format_unsupported",
                image,
                format!("has backing file {name:?} in format {f:?}, which vmshift does not read"),
                "convert the backing file to qcow2 or raw first",
            )
        })?,
        None => opts.backing_format.ok_or_else(|| {
            ImageError::new(
                "backing_format_missing",
                image,
                format!("does not record the format of its backing file {name:?}, and vmshift never guesses it"),
                "pass --backing-format raw|qcow2 if you know it, or record it with qemu-img rebase -u -b NAME -F FORMAT",
            )
        })?,
    };
    let dir = image.parent().unwrap_or(Path::new("."));
    let next_path = if Path::new(name).is_absolute() {
        PathBuf::from(name)
    } else {
        dir.join(name)
    };
    crate::gate::check_backing_file(image, &next_path, format, stated)?;
    Ok((next_path, format))
}

/// Refuses backing names that QEMU would not read as plain file names.
fn check_backing_name(image: &Path, name: &str) -> Result<(), ImageError> {
    if name.starts_with("json:") {
        return Err(ImageError::new(
            "backing_protocol",
            image,
            format!("refers to its backing file with a json: specification ({name:?})"),
            "rebase it onto a plain file name with qemu-img rebase -u",
        ));
    }
    // QEMU reads "proto:rest" as a protocol when ':' comes before any '/'.
    if let Some(colon) = name.find(':') {
        let first_slash = name.find('/').unwrap_or(usize::MAX);
        if colon < first_slash {
            return Err(ImageError::new(
                "backing_protocol",
                image,
                format!(
                    "refers to its backing file as {name:?}, which QEMU reads as protocol {:?}",
                    &name[..colon]
                ),
                "rebase it with a ./-prefixed name (qemu-img rebase -u -b ./NAME)",
            ));
        }
    }
    Ok(())
}

fn read_head(path: &Path) -> Result<Vec<u8>, ImageError> {
    let mut f = File::open(path).map_err(|e| {
        ImageError::new(
            "unreadable",
            path,
            format!("cannot be opened: {e}"),
            "check the path and permissions",
        )
    })?;
    let mut buf = Vec::with_capacity(HEADER_READ_BYTES);
    f.by_ref()
        .take(HEADER_READ_BYTES as u64)
        .read_to_end(&mut buf)
        .map_err(|e| {
            ImageError::new(
                "unreadable",
                path,
                format!("cannot be read: {e}"),
                "check the disk and permissions",
            )
        })?;
    Ok(buf)
}

trait BlockDeviceLike {
    fn is_block_device_like(&self) -> bool;
}

impl BlockDeviceLike for std::fs::FileType {
    fn is_block_device_like(&self) -> bool {
        use std::os::unix::fs::FileTypeExt;
        self.is_block_device()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn protocol_like_backing_names_are_refused() {
        let img = Path::new("/x/top.qcow2");
        assert!(check_backing_name(img, "col:base.qcow2").is_err());
        assert!(check_backing_name(img, "json:{}").is_err());
        assert!(check_backing_name(img, "./col:base.qcow2").is_ok());
        assert!(check_backing_name(img, "/abs/col:base.qcow2").is_ok());
        assert!(check_backing_name(img, "base.qcow2").is_ok());
    }
}
