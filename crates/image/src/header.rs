//! Pure parsing of image headers from untrusted bytes: format magic and the qcow2 header
//! (QEMU docs/interop/qcow2.txt). No I/O here; callers pass the first bytes of the file.

use std::fmt;

/// Bytes callers should read from the start of a file for [`detect_format`] and
/// [`Qcow2Header::parse`] (header extensions live inside the first cluster; 64 KiB covers the
/// default cluster size, and the parser reports when it needs more).
pub const HEADER_READ_BYTES: usize = 65536;

/// Image formats recognised by their magic bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DetectedFormat {
    /// QEMU copy-on-write v2/v3.
    Qcow2,
    /// Anything without a known magic: plain bytes.
    Raw,
    /// A format vmshift does not copy itself (named for the error message).
    Other(&'static str),
}

impl fmt::Display for DetectedFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DetectedFormat::Qcow2 => f.write_str("qcow2"),
            DetectedFormat::Raw => f.write_str("raw"),
            DetectedFormat::Other(n) => f.write_str(n),
        }
    }
}

/// Detects a format from the first bytes of a file (like QEMU's probes, but only ever used
/// on the image the operator named, never on backing files).
pub fn detect_format(head: &[u8]) -> DetectedFormat {
    let starts = |m: &[u8]| head.len() >= m.len() && &head[..m.len()] == m;
    if starts(b"QFI\xfb") {
        return match be32(head, 4) {
            Some(2) | Some(3) => DetectedFormat::Qcow2,
            Some(1) => DetectedFormat::Other("qcow (version 1)"),
            _ => DetectedFormat::Other("qcow2 with an unknown version"),
        };
    }
    if starts(b"QED\0") {
        return DetectedFormat::Other("qed");
    }
    if starts(b"KDMV") || starts(b"# Disk DescriptorFile") {
        return DetectedFormat::Other("vmdk");
    }
    if starts(b"vhdxfile") {
        return DetectedFormat::Other("vhdx");
    }
    if starts(b"conectix") {
        return DetectedFormat::Other("vpc (vhd)");
    }
    if head.len() >= 0x44 && be32(head, 0x40) == Some(0x7f10_dabe) {
        return DetectedFormat::Other("vdi");
    }
    if starts(b"LUKS\xba\xbe") {
        return DetectedFormat::Other("luks (encrypted raw)");
    }
    DetectedFormat::Raw
}

/// qcow2 incompatible feature bit: refcounts may be stale (lazy refcounts, unclean close).
pub const INCOMPAT_DIRTY: u64 = 1 << 0;
/// qcow2 incompatible feature bit: QEMU found corruption and marked the image.
pub const INCOMPAT_CORRUPT: u64 = 1 << 1;
/// qcow2 incompatible feature bit: guest data lives in an external data file.
pub const INCOMPAT_DATA_FILE: u64 = 1 << 2;
/// qcow2 incompatible feature bit: compression type field is not zlib.
pub const INCOMPAT_COMPRESSION: u64 = 1 << 3;
/// qcow2 incompatible feature bit: extended L2 entries (subclusters).
pub const INCOMPAT_EXTL2: u64 = 1 << 4;
/// qcow2 compatible feature bit: lazy refcounts.
pub const COMPAT_LAZY_REFCOUNTS: u64 = 1 << 0;
/// qcow2 autoclear feature bit: persistent bitmaps extension is consistent.
pub const AUTOCLEAR_BITMAPS: u64 = 1 << 0;
/// Byte offset of the incompatible-features field in a v3 header.
pub const INCOMPAT_FIELD_OFFSET: u64 = 72;

/// The parts of a qcow2 header vmshift acts on.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Qcow2Header {
    /// 2 or 3.
    pub version: u32,
    /// Backing file name as recorded (untrusted; resolve relative to the image's directory).
    pub backing_file: Option<String>,
    /// Backing format from the header extension, when recorded.
    pub backing_format: Option<String>,
    /// log2 of the cluster size.
    pub cluster_bits: u32,
    /// Guest-visible size in bytes.
    pub size: u64,
    /// 0 none, 1 AES, 2 LUKS.
    pub crypt_method: u32,
    /// L1 entries.
    pub l1_size: u32,
    /// Host offset of the L1 table.
    pub l1_table_offset: u64,
    /// Host offset of the refcount table.
    pub refcount_table_offset: u64,
    /// Clusters of the refcount table.
    pub refcount_table_clusters: u32,
    /// Internal snapshots.
    pub nb_snapshots: u32,
    /// Incompatible feature bits (v3; 0 for v2).
    pub incompatible_features: u64,
    /// Compatible feature bits.
    pub compatible_features: u64,
    /// Autoclear feature bits.
    pub autoclear_features: u64,
    /// log2 of the refcount width in bits (4 for v2).
    pub refcount_order: u32,
    /// 0 zlib, 1 zstd.
    pub compression_type: u8,
    /// External data file name, when recorded.
    pub data_file: Option<String>,
    /// The bitmaps extension, when present.
    pub bitmaps: Option<BitmapsExtension>,
}

/// The qcow2 bitmaps header extension: where the bitmap directory is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct BitmapsExtension {
    /// Bitmaps in the directory.
    pub nb_bitmaps: u32,
    /// Directory size in bytes.
    pub directory_size: u64,
    /// Host offset of the directory.
    pub directory_offset: u64,
}

/// Most L1 entries accepted (QEMU's `QCOW_MAX_L1_SIZE`, 32 MiB of table): the table is read
/// into memory, so a larger count is refused before anything is allocated.
pub const MAX_L1_ENTRIES: u32 = (32 << 20) / 8;

/// Largest refcount table accepted, in bytes (QEMU's `QCOW_MAX_REFTABLE_SIZE`).
pub const MAX_REFTABLE_BYTES: u64 = 8 << 20;

/// Largest virtual size accepted: QEMU's block layer counts bytes in an `int64_t`.
pub const MAX_VIRTUAL_SIZE: u64 = i64::MAX as u64;

/// Largest bitmap directory read (QEMU's limit is 64 MiB; real ones are a few KiB).
pub const MAX_BITMAP_DIRECTORY: u64 = 1 << 20;

/// qcow2 bitmap directory entry flag: the bitmap was not saved cleanly (inconsistent).
pub const BITMAP_IN_USE: u32 = 1 << 0;

/// Parses a bitmap directory (`buf` holds `nb` entries as qcow2.txt lays them out) into
/// (name, in_use) pairs.
///
/// # Errors
/// [`HeaderError::Truncated`] (offsets relative to the directory) when an entry runs past
/// the buffer. Never panics.
pub fn parse_bitmap_directory(buf: &[u8], nb: u32) -> Result<Vec<(String, bool)>, HeaderError> {
    let mut out = Vec::new();
    let mut off = 0usize;
    for _ in 0..nb {
        let t = |o: usize| HeaderError::Truncated(o as u64);
        let flags = be32(buf, off + 12).ok_or(t(off + 12))?;
        let name_size = usize::from(u16::from_be_bytes(
            buf.get(off + 18..off + 20)
                .ok_or(t(off + 18))?
                .try_into()
                .map_err(|_| t(off + 18))?,
        ));
        let extra = be32(buf, off + 20).ok_or(t(off + 20))? as usize;
        let name_at = off + 24 + extra;
        let name = string_at(buf, name_at as u64, name_size as u64)?;
        out.push((name, flags & BITMAP_IN_USE != 0));
        off = (name_at + name_size).next_multiple_of(8);
    }
    Ok(out)
}

/// Why a qcow2 header could not be parsed. Offsets are byte offsets in the file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HeaderError {
    /// The buffer ends before a field.
    #[error("header is cut short at offset {0:#x}")]
    Truncated(u64),
    /// A field holds a value the format does not allow.
    #[error("invalid header field {field} at offset {at:#x}: {value:#x}")]
    Invalid {
        /// Field name as in qcow2.txt.
        field: &'static str,
        /// Byte offset of the field in the file.
        at: u64,
        /// The value found.
        value: u64,
    },
    /// A header extension's length runs past the end of the first cluster, where QEMU
    /// keeps all of them (past the end of the bytes read is [`HeaderError::Truncated`]).
    #[error("header extension {kind:#x} at offset {at:#x} has length {len:#x}, running past {limit:#x} (the end of the first cluster)")]
    ExtensionTooLong {
        /// The extension type.
        kind: u32,
        /// Byte offset of the extension's type field.
        at: u64,
        /// The length it records.
        len: u64,
        /// Where its data must end at the latest.
        limit: u64,
    },
    /// The backing file name holds bytes no plain file name should (NUL, control
    /// characters, invalid UTF-8): QEMU stops at a NUL, so it and vmshift would read
    /// different names.
    #[error("backing file name at offset {at:#x} holds {what}: {name:?}")]
    BadBackingName {
        /// Byte offset of the name.
        at: u64,
        /// What is wrong with it.
        what: &'static str,
        /// The name, lossily decoded (Debug-escaped when displayed).
        name: String,
    },
}

fn invalid(field: &'static str, at: u64, value: u64) -> HeaderError {
    HeaderError::Invalid { field, at, value }
}

impl Qcow2Header {
    /// Parses a qcow2 header and its extensions from the first bytes of the file.
    ///
    /// # Errors
    /// [`HeaderError`] when the buffer is short or a field is out of range. Never panics.
    pub fn parse(buf: &[u8]) -> Result<Self, HeaderError> {
        let u32_at = |o: usize| be32(buf, o).ok_or(HeaderError::Truncated(o as u64));
        let u64_at = |o: usize| be64(buf, o).ok_or(HeaderError::Truncated(o as u64));
        if buf.get(..4) != Some(b"QFI\xfb".as_slice()) {
            return Err(invalid("magic", 0, u64::from(u32_at(0)?)));
        }
        let version = u32_at(4)?;
        if version != 2 && version != 3 {
            return Err(invalid("version", 4, u64::from(version)));
        }
        let cluster_bits = u32_at(20)?;
        if !(9..=21).contains(&cluster_bits) {
            return Err(invalid("cluster_bits", 20, u64::from(cluster_bits)));
        }
        let cluster = 1u64 << cluster_bits;
        let mut h = Qcow2Header {
            version,
            cluster_bits,
            size: u64_at(24)?,
            crypt_method: u32_at(32)?,
            l1_size: u32_at(36)?,
            l1_table_offset: u64_at(40)?,
            refcount_table_offset: u64_at(48)?,
            refcount_table_clusters: u32_at(56)?,
            nb_snapshots: u32_at(60)?,
            refcount_order: 4,
            ..Default::default()
        };
        h.check_tables()?;
        let mut ext_start = 72usize;
        if version == 3 {
            h.incompatible_features = u64_at(72)?;
            h.compatible_features = u64_at(80)?;
            h.autoclear_features = u64_at(88)?;
            h.refcount_order = u32_at(96)?;
            if h.refcount_order > 6 {
                return Err(invalid("refcount_order", 96, u64::from(h.refcount_order)));
            }
            let header_length = u32_at(100)?;
            if header_length < 104 || u64::from(header_length) > cluster {
                return Err(invalid("header_length", 100, u64::from(header_length)));
            }
            if header_length > 104 {
                h.compression_type = *buf.get(104).ok_or(HeaderError::Truncated(104))?;
            }
            ext_start = (header_length as usize).next_multiple_of(8);
        }
        let backing_offset = u64_at(8)?;
        let backing_size = u32_at(16)?;
        if backing_offset != 0 && backing_size > 0 {
            if backing_size > 1023 {
                return Err(invalid("backing_file_size", 16, u64::from(backing_size)));
            }
            // QEMU reads the name from the first cluster only.
            if backing_offset.saturating_add(u64::from(backing_size)) > cluster {
                return Err(invalid("backing_file_offset", 8, backing_offset));
            }
            h.backing_file = Some(backing_name_at(buf, backing_offset, backing_size)?);
        }
        h.parse_extensions(buf, ext_start)?;
        Ok(h)
    }

    /// Refuses table sizes and offsets that would make a reader allocate from an untrusted
    /// count or read tables that cannot exist: limits as QEMU's (qcow2.c, `validate_table_offset`).
    fn check_tables(&self) -> Result<(), HeaderError> {
        let cluster = self.cluster_size();
        if self.size > MAX_VIRTUAL_SIZE {
            return Err(invalid("size", 24, self.size));
        }
        if self.l1_size > MAX_L1_ENTRIES {
            return Err(invalid("l1_size", 36, u64::from(self.l1_size)));
        }
        if !self.l1_table_offset.is_multiple_of(cluster) {
            return Err(invalid("l1_table_offset", 40, self.l1_table_offset));
        }
        if !self.refcount_table_offset.is_multiple_of(cluster) {
            return Err(invalid(
                "refcount_table_offset",
                48,
                self.refcount_table_offset,
            ));
        }
        if u64::from(self.refcount_table_clusters) * cluster > MAX_REFTABLE_BYTES {
            return Err(invalid(
                "refcount_table_clusters",
                56,
                u64::from(self.refcount_table_clusters),
            ));
        }
        Ok(())
    }

    /// Reads the header extensions from `ext_start` (type u32, length u32, data padded to
    /// 8, ended by type 0) into `self`; bounded by the first cluster and the buffer.
    fn parse_extensions(&mut self, buf: &[u8], ext_start: usize) -> Result<(), HeaderError> {
        let u32_at = |o: usize| be32(buf, o).ok_or(HeaderError::Truncated(o as u64));
        let u64_at = |o: usize| be64(buf, o).ok_or(HeaderError::Truncated(o as u64));
        let mut off = ext_start;
        let cluster = 1usize << self.cluster_bits;
        let limit = cluster.min(buf.len());
        while off + 8 <= limit {
            let kind = u32_at(off)?;
            let len = u32_at(off + 4)? as usize;
            if kind == 0 {
                break;
            }
            let data = off + 8;
            let next = data
                .checked_add(len.next_multiple_of(8))
                .ok_or(HeaderError::Truncated(data as u64))?;
            if data + len > cluster {
                return Err(HeaderError::ExtensionTooLong {
                    kind,
                    at: off as u64,
                    len: len as u64,
                    limit: cluster as u64,
                });
            }
            if data + len > buf.len() {
                return Err(HeaderError::Truncated(data as u64));
            }
            match kind {
                0xE279_2ACA => self.backing_format = Some(string_at(buf, data as u64, len as u64)?),
                0x4441_5441 => self.data_file = Some(string_at(buf, data as u64, len as u64)?),
                0x2385_2875 if len >= 24 => {
                    self.bitmaps = Some(BitmapsExtension {
                        nb_bitmaps: u32_at(data)?,
                        directory_size: u64_at(data + 8)?,
                        directory_offset: u64_at(data + 16)?,
                    });
                }
                _ => {}
            }
            off = next;
        }
        Ok(())
    }

    /// Cluster size in bytes.
    pub fn cluster_size(&self) -> u64 {
        1u64 << self.cluster_bits
    }

    /// The dirty bit is set (refcounts may be stale).
    pub fn dirty(&self) -> bool {
        self.incompatible_features & INCOMPAT_DIRTY != 0
    }

    /// Lazy refcounts are enabled.
    pub fn lazy_refcounts(&self) -> bool {
        self.compatible_features & COMPAT_LAZY_REFCOUNTS != 0
    }

    /// Names of the feature flags that are set, for `vmshift info`.
    pub fn feature_names(&self) -> Vec<&'static str> {
        let mut v = Vec::new();
        let bits = [
            (self.incompatible_features, INCOMPAT_DIRTY, "dirty"),
            (self.incompatible_features, INCOMPAT_CORRUPT, "corrupt"),
            (
                self.incompatible_features,
                INCOMPAT_DATA_FILE,
                "external-data-file",
            ),
            (
                self.incompatible_features,
                INCOMPAT_COMPRESSION,
                "compression-type",
            ),
            (self.incompatible_features, INCOMPAT_EXTL2, "extended-l2"),
            (
                self.compatible_features,
                COMPAT_LAZY_REFCOUNTS,
                "lazy-refcounts",
            ),
            (self.autoclear_features, AUTOCLEAR_BITMAPS, "bitmaps"),
        ];
        for (field, bit, name) in bits {
            if field & bit != 0 {
                v.push(name);
            }
        }
        v
    }

    /// `none`, `aes` or `luks`.
    pub fn encryption(&self) -> &'static str {
        match self.crypt_method {
            0 => "none",
            1 => "aes",
            2 => "luks",
            _ => "unknown",
        }
    }

    /// `zlib` or `zstd`.
    pub fn compression(&self) -> &'static str {
        match self.compression_type {
            0 => "zlib",
            1 => "zstd",
            _ => "unknown",
        }
    }
}

fn be32(buf: &[u8], off: usize) -> Option<u32> {
    let b = buf.get(off..off.checked_add(4)?)?;
    Some(u32::from_be_bytes(b.try_into().ok()?))
}

fn be64(buf: &[u8], off: usize) -> Option<u64> {
    let b = buf.get(off..off.checked_add(8)?)?;
    Some(u64::from_be_bytes(b.try_into().ok()?))
}

/// The backing file name at `off`: refused when it holds a NUL or another control
/// character (a newline would also split every message that names it) or is not UTF-8.
fn backing_name_at(buf: &[u8], off: u64, len: u32) -> Result<String, HeaderError> {
    let name = string_at(buf, off, u64::from(len))?;
    let bytes = usize::try_from(off)
        .ok()
        .and_then(|o| buf.get(o..o + len as usize))
        .ok_or(HeaderError::Truncated(off))?;
    let what = if bytes.contains(&0) {
        Some("a NUL byte")
    } else if bytes.iter().any(|b| b.is_ascii_control()) {
        Some("a control character")
    } else if std::str::from_utf8(bytes).is_err() {
        Some("bytes that are not UTF-8")
    } else {
        None
    };
    match what {
        Some(what) => Err(HeaderError::BadBackingName {
            at: off,
            what,
            name,
        }),
        None => Ok(name),
    }
}

fn string_at(buf: &[u8], off: u64, len: u64) -> Result<String, HeaderError> {
    let start = usize::try_from(off).map_err(|_| HeaderError::Truncated(off))?;
    let n = usize::try_from(len).map_err(|_| HeaderError::Truncated(off))?;
    let bytes = start
        .checked_add(n)
        .and_then(|end| buf.get(start..end))
        .ok_or(HeaderError::Truncated(off))?;
    Ok(String::from_utf8_lossy(bytes).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v3_header() -> Vec<u8> {
        let mut b = vec![0u8; 4096];
        b[..4].copy_from_slice(b"QFI\xfb");
        b[4..8].copy_from_slice(&3u32.to_be_bytes());
        b[20..24].copy_from_slice(&16u32.to_be_bytes());
        b[24..32].copy_from_slice(&(1u64 << 30).to_be_bytes());
        b[96..100].copy_from_slice(&4u32.to_be_bytes());
        b[100..104].copy_from_slice(&112u32.to_be_bytes());
        b
    }

    #[test]
    fn parses_backing_name_and_recorded_format() {
        let mut b = v3_header();
        // extension at 112: backing format "qcow2"
        b[112..116].copy_from_slice(&0xE279_2ACAu32.to_be_bytes());
        b[116..120].copy_from_slice(&5u32.to_be_bytes());
        b[120..125].copy_from_slice(b"qcow2");
        b[128..136].fill(0);
        b[8..16].copy_from_slice(&512u64.to_be_bytes());
        b[16..20].copy_from_slice(&10u32.to_be_bytes());
        b[512..522].copy_from_slice(b"base.qcow2");
        let h = Qcow2Header::parse(&b).unwrap();
        assert_eq!(h.backing_file.as_deref(), Some("base.qcow2"));
        assert_eq!(h.backing_format.as_deref(), Some("qcow2"));
        assert_eq!(h.cluster_size(), 65536);
        assert_eq!(h.size, 1 << 30);
    }

    #[test]
    fn reports_dirty_lazy_and_encryption() {
        let mut b = v3_header();
        b[72..80].copy_from_slice(&INCOMPAT_DIRTY.to_be_bytes());
        b[80..88].copy_from_slice(&COMPAT_LAZY_REFCOUNTS.to_be_bytes());
        b[32..36].copy_from_slice(&2u32.to_be_bytes());
        let h = Qcow2Header::parse(&b).unwrap();
        assert!(h.dirty() && h.lazy_refcounts());
        assert_eq!(h.encryption(), "luks");
        assert_eq!(h.feature_names(), vec!["dirty", "lazy-refcounts"]);
    }

    #[test]
    fn rejects_bad_cluster_bits_and_short_buffers() {
        let mut b = v3_header();
        b[20..24].copy_from_slice(&40u32.to_be_bytes());
        assert!(matches!(
            Qcow2Header::parse(&b),
            Err(HeaderError::Invalid {
                field: "cluster_bits",
                ..
            })
        ));
        assert!(matches!(
            Qcow2Header::parse(&v3_header()[..50]),
            Err(HeaderError::Truncated(_))
        ));
    }

    #[test]
    fn bitmap_directory_names_in_use_bitmaps() {
        // Two entries: "b0" clean, "stale" in use; 24-byte fixed part, name, pad to 8.
        let mut d = Vec::new();
        for (name, flags) in [("b0", 2u32), ("stale", 3u32)] {
            let mut e = vec![0u8; 24];
            e[12..16].copy_from_slice(&flags.to_be_bytes());
            e[18..20].copy_from_slice(&u16::try_from(name.len()).unwrap().to_be_bytes());
            e.extend_from_slice(name.as_bytes());
            e.resize(e.len().next_multiple_of(8), 0);
            d.extend(e);
        }
        assert_eq!(
            parse_bitmap_directory(&d, 2).unwrap(),
            vec![("b0".to_string(), false), ("stale".to_string(), true)]
        );
        assert!(matches!(
            parse_bitmap_directory(&d[..30], 2),
            Err(HeaderError::Truncated(_))
        ));
    }

    #[test]
    fn detects_formats_by_magic_only() {
        assert_eq!(detect_format(&v3_header()), DetectedFormat::Qcow2);
        assert_eq!(
            detect_format(b"vhdxfile...."),
            DetectedFormat::Other("vhdx")
        );
        assert_eq!(detect_format(&[0u8; 512]), DetectedFormat::Raw);
        assert_eq!(detect_format(&[]), DetectedFormat::Raw);
    }

    proptest::proptest! {
        #[test]
        fn parse_never_panics_on_arbitrary_bytes(mut bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..2048)) {
            let _ = Qcow2Header::parse(&bytes);
            if bytes.len() >= 8 {
                bytes[..4].copy_from_slice(b"QFI\xfb");
                bytes[4..8].copy_from_slice(&3u32.to_be_bytes());
                let _ = Qcow2Header::parse(&bytes);
            }
            let _ = detect_format(&bytes);
            let _ = parse_bitmap_directory(&bytes, 4);
        }
    }
}
