//! Domain XML: the disks a definition names, and a rewrite that changes only the moved
//! disks' `<source>` and `<driver type>`.
//!
//! The rewrite edits the text libvirt returned in place (byte ranges found by the parser)
//! instead of a round trip through typed structs, which would drop every element and
//! attribute libvirt knows and vmshift does not. Element and attribute names follow
//! <https://libvirt.org/formatdomain.html#hard-drives-floppy-disks-cdroms>.

use quick_xml::events::{BytesStart, Event};
use quick_xml::Reader;
use std::ops::Range;
use std::path::{Path, PathBuf};

/// Where a disk's data is (`<disk type=…>` and its `<source>`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DiskSource {
    /// `type='file'`: `<source file=…>`.
    File(PathBuf),
    /// `type='block'`: `<source dev=…>`.
    Block(PathBuf),
    /// `type='volume'`: `<source pool=… volume=…>`.
    Volume {
        /// Storage pool name.
        pool: String,
        /// Volume name in the pool.
        volume: String,
    },
    /// `type='network'`: `<source protocol=… name=…>`.
    Network {
        /// `nbd`, `rbd`, `iscsi`, …
        protocol: String,
        /// The export, image or target name.
        name: String,
    },
    /// No `<source>` (an empty CD-ROM drive).
    Empty,
    /// A type vmshift does not know (`dir`, `nvme`, `vhostuser`); the string is the `type`
    /// attribute.
    Other(String),
}

impl DiskSource {
    /// The local path, for file and block disks.
    pub fn path(&self) -> Option<&Path> {
        match self {
            DiskSource::File(p) | DiskSource::Block(p) => Some(p),
            _ => None,
        }
    }

    /// How the source is shown to people: a path, `pool/volume` or `protocol:name`.
    pub fn describe(&self) -> String {
        match self {
            DiskSource::File(p) | DiskSource::Block(p) => p.display().to_string(),
            DiskSource::Volume { pool, volume } => format!("{pool}/{volume} (volume)"),
            DiskSource::Network { protocol, name } => format!("{protocol}:{name} (network)"),
            DiskSource::Empty => "(none)".into(),
            DiskSource::Other(t) => format!("({t})"),
        }
    }
}

/// One layer of a disk's `<backingStore>` chain as the definition states it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackingLayer {
    /// Its source.
    pub source: DiskSource,
    /// `<format type=…>`: the layer's format (`raw`, `qcow2`), if stated.
    pub format: Option<String>,
}

/// One `<disk>` of a domain definition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskDef {
    /// `<target dev=…>`: the guest device name (`vda`, `sdb`); what `--disk` names.
    pub target: String,
    /// `<target bus=…>` (`virtio`, `sata`, `scsi`), if stated.
    pub bus: Option<String>,
    /// `<disk device=…>`: `disk`, `cdrom`, `floppy` or `lun` (libvirt's default: `disk`).
    pub device: String,
    /// `<driver type=…>`: the image format (`raw`, `qcow2`), if stated. The format vmshift
    /// uses: never probed from the file's header.
    pub format: Option<String>,
    /// The disk's source.
    pub source: DiskSource,
    /// `<readonly/>`.
    pub readonly: bool,
    /// `<shareable/>`.
    pub shareable: bool,
    /// The `<backingStore>` chain below the top image, nearest first (a live definition
    /// states all of it; an inactive one usually none).
    pub backing: Vec<BackingLayer>,
    /// Byte range of the `<disk>` start tag.
    disk_tag: Range<usize>,
    /// Byte range of the `<source>` start (or empty) tag, if any.
    source_tag: Option<Range<usize>>,
    /// Byte range of the `<driver>` start (or empty) tag, if any.
    driver_tag: Option<Range<usize>>,
    /// Byte range of the whole first-level `<backingStore>` element, if any.
    backing_elem: Option<Range<usize>>,
}

/// Failures reading or rewriting domain XML.
#[derive(Debug, thiserror::Error)]
pub enum XmlError {
    /// The text is not well-formed XML.
    #[error("domain XML is not well-formed at byte {offset}: {message}")]
    Malformed {
        /// Byte offset of the problem.
        offset: u64,
        /// The parser's message.
        message: String,
    },
    /// A change names a disk the definition does not have.
    #[error("the domain definition has no disk with target {0:?}")]
    NoSuchDisk(String),
}

/// The disks of a domain definition (`<domain><devices><disk>`), in document order.
///
/// # Errors
/// [`XmlError::Malformed`] for text that is not well-formed.
pub fn disks(xml: &str) -> Result<Vec<DiskDef>, XmlError> {
    let mut reader = Reader::from_str(xml);
    let mut stack: Vec<String> = Vec::new();
    let mut out = Vec::new();
    let mut cur: Option<DiskDef> = None;
    // Depth of the first-level <backingStore> inside the current disk, and the chain so far.
    let mut backing_start: Option<usize> = None;
    loop {
        let before = pos(&reader);
        let ev = reader.read_event().map_err(|e| XmlError::Malformed {
            offset: reader.error_position(),
            message: e.to_string(),
        })?;
        let after = pos(&reader);
        match ev {
            Event::Start(ref t) | Event::Empty(ref t) => {
                let empty = matches!(ev, Event::Empty(_));
                let name = String::from_utf8_lossy(t.name().as_ref()).into_owned();
                let path_ok = stack.len() >= 2 && stack[0] == "domain" && stack[1] == "devices";
                if name == "disk" && stack.len() == 2 && path_ok {
                    let kind = attr(t, "type").unwrap_or_else(|| "file".into());
                    cur = Some(DiskDef {
                        target: String::new(),
                        bus: None,
                        device: attr(t, "device").unwrap_or_else(|| "disk".into()),
                        format: None,
                        source: DiskSource::Other(kind),
                        readonly: false,
                        shareable: false,
                        backing: Vec::new(),
                        disk_tag: before..after,
                        source_tag: None,
                        driver_tag: None,
                        backing_elem: None,
                    });
                    if empty {
                        out.extend(cur.take());
                    }
                } else if let Some(d) = cur.as_mut() {
                    let depth = stack.len(); // 3: a direct child of <disk>
                    if depth == 3 {
                        match name.as_str() {
                            "driver" => {
                                d.format = attr(t, "type");
                                d.driver_tag = Some(before..after);
                            }
                            "source" => {
                                d.source = source_of(&d.source, t);
                                d.source_tag = Some(before..after);
                            }
                            "target" => {
                                d.target = attr(t, "dev").unwrap_or_default();
                                d.bus = attr(t, "bus");
                            }
                            "readonly" => d.readonly = true,
                            "shareable" => d.shareable = true,
                            "backingStore" => {
                                if empty {
                                    d.backing_elem = Some(before..after);
                                } else {
                                    backing_start = Some(before);
                                }
                            }
                            _ => {}
                        }
                    }
                    if name == "backingStore" && depth >= 3 && !empty {
                        let kind = attr(t, "type").unwrap_or_else(|| "file".into());
                        d.backing.push(BackingLayer {
                            source: DiskSource::Other(kind),
                            format: None,
                        });
                    } else if depth >= 4 && stack.last().is_some_and(|s| s == "backingStore") {
                        if let Some(layer) = d.backing.last_mut() {
                            match name.as_str() {
                                "format" => layer.format = attr(t, "type"),
                                "source" => layer.source = source_of(&layer.source, t),
                                _ => {}
                            }
                        }
                    }
                }
                if !empty {
                    stack.push(name);
                }
            }
            Event::End(_) => {
                let name = stack.pop().unwrap_or_default();
                if let Some(d) = cur.as_mut() {
                    if name == "backingStore" && stack.len() == 3 {
                        if let Some(s) = backing_start.take() {
                            d.backing_elem = Some(s..after);
                        }
                    }
                }
                if name == "disk" && stack.len() == 2 {
                    if let Some(d) = cur.as_mut().filter(|d| d.source_tag.is_none()) {
                        d.source = DiskSource::Empty;
                    }
                    out.extend(cur.take());
                }
            }
            Event::Eof => break,
            _ => {}
        }
    }
    Ok(out)
}

/// A change to one disk of a definition: its new source file and format.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskChange {
    /// The disk's `<target dev>`.
    pub target: String,
    /// The new image file (the disk becomes `type='file'`).
    pub path: PathBuf,
    /// The new `<driver type>` (`raw`, `qcow2`).
    pub format: String,
    /// Remove the disk's `<backingStore>` (the new image is flattened).
    pub drop_backing: bool,
}

/// `xml` with each change applied: the `<disk type>` becomes `file`; `<source>` names only the
/// new file (attributes other than `file`, `dev`, `pool`, `volume`, `mode`, `protocol`, `name`
/// and the element's children are kept); `<driver type>` is set (a `<driver name='qemu'>` is
/// added if the disk had none); with `drop_backing` a `<backingStore>` chain becomes
/// `<backingStore/>` (no backing file). Every other
/// byte stays as it was.
///
/// # Errors
/// [`XmlError::Malformed`], or [`XmlError::NoSuchDisk`] for a change naming no disk.
pub fn rewrite(xml: &str, changes: &[DiskChange]) -> Result<String, XmlError> {
    let all = disks(xml)?;
    let mut edits: Vec<(Range<usize>, String)> = Vec::new();
    for c in changes {
        let d = all
            .iter()
            .find(|d| d.target == c.target)
            .ok_or_else(|| XmlError::NoSuchDisk(c.target.clone()))?;
        let file = c.path.to_string_lossy();
        let disk_tag = &xml[d.disk_tag.clone()];
        edits.push((d.disk_tag.clone(), set_attr(disk_tag, "type", "file")));
        match &d.source_tag {
            Some(r) => {
                let mut tag = xml[r.clone()].to_owned();
                for a in ["dev", "pool", "volume", "mode", "protocol", "name"] {
                    tag = remove_attr(&tag, a);
                }
                edits.push((r.clone(), set_attr(&tag, "file", &file)));
            }
            None => {
                let at = d.disk_tag.end;
                edits.push((at..at, format!("<source file='{}'/>", escape(&file))));
            }
        }
        match &d.driver_tag {
            Some(r) => edits.push((r.clone(), set_attr(&xml[r.clone()], "type", &c.format))),
            None => {
                let at = d.disk_tag.end;
                edits.push((
                    at..at,
                    format!("<driver name='qemu' type='{}'/>", escape(&c.format)),
                ));
            }
        }
        // `<backingStore/>` states "no backing", as libvirt itself writes after a pivot.
        if c.drop_backing {
            if let Some(r) = &d.backing_elem {
                edits.push((r.clone(), "<backingStore/>".into()));
            }
        }
    }
    // Apply from the end so earlier ranges stay valid; insertions at one point keep order.
    edits.sort_by_key(|(r, _)| std::cmp::Reverse((r.start, r.end)));
    let mut out = xml.to_owned();
    for (r, text) in edits {
        out.replace_range(r, &text);
    }
    Ok(out)
}

/// A storage pool's `<target><path>`, from its XML.
pub fn pool_target(xml: &str) -> Option<PathBuf> {
    let mut reader = Reader::from_str(xml);
    let mut stack: Vec<String> = Vec::new();
    loop {
        match reader.read_event().ok()? {
            Event::Start(t) => stack.push(String::from_utf8_lossy(t.name().as_ref()).into()),
            Event::End(_) => {
                stack.pop();
            }
            Event::Text(t) if stack == ["pool", "target", "path"] => {
                return t.unescape().ok().map(|s| PathBuf::from(s.trim()));
            }
            Event::Eof => return None,
            _ => {}
        }
    }
}

fn pos(r: &Reader<&[u8]>) -> usize {
    usize::try_from(r.buffer_position()).unwrap_or(usize::MAX)
}

fn attr(t: &BytesStart<'_>, name: &str) -> Option<String> {
    t.attributes()
        .flatten()
        .find(|a| a.key.as_ref() == name.as_bytes())
        .and_then(|a| a.unescape_value().ok().map(|v| v.into_owned()))
}

/// The source an element describes, given the disk (or layer) type recorded so far.
fn source_of(so_far: &DiskSource, t: &BytesStart<'_>) -> DiskSource {
    let kind = match so_far {
        DiskSource::Other(k) => k.as_str(),
        DiskSource::File(_) => "file",
        DiskSource::Block(_) => "block",
        DiskSource::Volume { .. } => "volume",
        DiskSource::Network { .. } => "network",
        DiskSource::Empty => "",
    };
    let path = |a: &str| attr(t, a).map(PathBuf::from);
    match kind {
        "file" => path("file").map_or(DiskSource::Empty, DiskSource::File),
        "block" => path("dev").map_or(DiskSource::Empty, DiskSource::Block),
        "volume" => DiskSource::Volume {
            pool: attr(t, "pool").unwrap_or_default(),
            volume: attr(t, "volume").unwrap_or_default(),
        },
        "network" => DiskSource::Network {
            protocol: attr(t, "protocol").unwrap_or_default(),
            name: attr(t, "name").unwrap_or_default(),
        },
        other => DiskSource::Other(other.into()),
    }
}

/// XML-escapes an attribute value written between single quotes.
fn escape(v: &str) -> String {
    v.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('\'', "&apos;")
        .replace('"', "&quot;")
}

/// Byte range of attribute `name`'s whole `name='value'` text inside a tag, if present.
fn find_attr(tag: &str, name: &str) -> Option<Range<usize>> {
    let b = tag.as_bytes();
    let mut i = 0;
    while let Some(off) = tag[i..].find(name) {
        let s = i + off;
        let before_ok = s > 0 && b[s - 1].is_ascii_whitespace();
        let mut j = s + name.len();
        while j < b.len() && b[j].is_ascii_whitespace() {
            j += 1;
        }
        if before_ok && j < b.len() && b[j] == b'=' {
            j += 1;
            while j < b.len() && b[j].is_ascii_whitespace() {
                j += 1;
            }
            if j < b.len() && (b[j] == b'\'' || b[j] == b'"') {
                let q = b[j];
                let end = tag[j + 1..].find(q as char)? + j + 2;
                return Some(s..end);
            }
        }
        i = s + name.len();
    }
    None
}

fn remove_attr(tag: &str, name: &str) -> String {
    match find_attr(tag, name) {
        Some(r) => {
            let mut start = r.start;
            while start > 0 && tag.as_bytes()[start - 1].is_ascii_whitespace() {
                start -= 1;
            }
            format!("{}{}", &tag[..start], &tag[r.end..])
        }
        None => tag.to_owned(),
    }
}

fn set_attr(tag: &str, name: &str, value: &str) -> String {
    let new = format!("{name}='{}'", escape(value));
    match find_attr(tag, name) {
        Some(r) => format!("{}{new}{}", &tag[..r.start], &tag[r.end..]),
        None => {
            // After the element name: `<source` + ` file='…'` + rest.
            let name_end = tag[1..]
                .find(|c: char| c.is_ascii_whitespace() || c == '/' || c == '>')
                .map_or(tag.len(), |i| i + 1);
            format!("{} {new}{}", &tag[..name_end], &tag[name_end..])
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DOM: &str = r#"<domain type='qemu'>
  <name>web01</name>
  <!-- a comment libvirt would not keep, but we do -->
  <metadata><app:x xmlns:app="urn:x">keep&amp;me</app:x></metadata>
  <devices>
    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2' cache='none' discard='unmap'/>
      <source file='/old/a.qcow2' index='2'>
        <seclabel model='dac' relabel='no'/>
      </source>
      <backingStore type='file' index='3'>
        <format type='raw'/>
        <source file='/old/base.raw'/>
        <backingStore/>
      </backingStore>
      <target dev='vda' bus='virtio'/>
      <address type='pci' domain='0x0000' bus='0x04' slot='0x00' function='0x0'/>
    </disk>
    <disk type="volume" device="disk">
      <driver name="qemu" type="raw"/>
      <source pool="default" volume="b.img" mode="host"/>
      <target dev="vdb" bus="virtio"/>
      <shareable/>
    </disk>
    <disk type='file' device='cdrom'>
      <target dev='sda' bus='sata'/>
      <readonly/>
    </disk>
    <disk type='network' device='disk'>
      <source protocol='rbd' name='pool/img'/>
      <target dev='vdc' bus='virtio'/>
    </disk>
  </devices>
</domain>
"#;

    #[test]
    fn every_disk_is_read_with_its_source_format_and_chain() {
        let d = disks(DOM).unwrap();
        assert_eq!(d.len(), 4);
        assert_eq!(d[0].target, "vda");
        assert_eq!(d[0].format.as_deref(), Some("qcow2"));
        assert_eq!(d[0].source, DiskSource::File("/old/a.qcow2".into()));
        assert_eq!(
            d[0].backing,
            vec![BackingLayer {
                source: DiskSource::File("/old/base.raw".into()),
                format: Some("raw".into())
            }]
        );
        assert_eq!(
            d[1].source,
            DiskSource::Volume {
                pool: "default".into(),
                volume: "b.img".into()
            }
        );
        assert!(d[1].shareable && !d[1].readonly);
        assert_eq!(d[2].device, "cdrom");
        assert_eq!(d[2].source, DiskSource::Empty);
        assert!(d[2].readonly);
        assert_eq!(
            d[3].source,
            DiskSource::Network {
                protocol: "rbd".into(),
                name: "pool/img".into()
            }
        );
    }

    #[test]
    fn a_rewrite_changes_only_the_moved_disks_source_and_driver_type() {
        let out = rewrite(
            DOM,
            &[DiskChange {
                target: "vda".into(),
                path: "/new/a'1.raw".into(),
                format: "raw".into(),
                drop_backing: true,
            }],
        )
        .unwrap();
        let expected = DOM
            .replace(
                "type='qcow2' cache",
                "type='raw' cache",
            )
            .replace("file='/old/a.qcow2'", "file='/new/a&apos;1.raw'")
            .replace(
                "<backingStore type='file' index='3'>\n        <format type='raw'/>\n        <source file='/old/base.raw'/>\n        <backingStore/>\n      </backingStore>",
                "<backingStore/>",
            );
        assert_eq!(out, expected);
        let d = disks(&out).unwrap();
        assert_eq!(d[0].source, DiskSource::File("/new/a'1.raw".into()));
        assert!(d[0].backing.is_empty());
        let facts = |d: &[DiskDef]| -> Vec<(String, DiskSource, Option<String>)> {
            d.iter()
                .map(|d| (d.target.clone(), d.source.clone(), d.format.clone()))
                .collect()
        };
        assert_eq!(facts(&d[1..]), facts(&disks(DOM).unwrap()[1..]));
    }

    #[test]
    fn a_volume_disk_becomes_a_file_disk_keeping_its_other_attributes() {
        let out = rewrite(
            DOM,
            &[DiskChange {
                target: "vdb".into(),
                path: "/new/b.qcow2".into(),
                format: "qcow2".into(),
                drop_backing: false,
            }],
        )
        .unwrap();
        assert!(out.contains(r#"<disk type='file' device="disk">"#), "{out}");
        assert!(out.contains("<source file='/new/b.qcow2'/>"), "{out}");
        assert!(
            out.contains(r#"<driver name="qemu" type='qcow2'/>"#),
            "{out}"
        );
        assert!(out.contains("keep&amp;me") && out.contains("<!-- a comment"));
    }

    #[test]
    fn a_disk_without_source_or_driver_gets_both() {
        let out = rewrite(
            DOM,
            &[DiskChange {
                target: "sda".into(),
                path: "/new/cd.raw".into(),
                format: "raw".into(),
                drop_backing: false,
            }],
        )
        .unwrap();
        let d = disks(&out).unwrap();
        assert_eq!(d[2].source, DiskSource::File("/new/cd.raw".into()));
        assert_eq!(d[2].format.as_deref(), Some("raw"));
    }

    #[test]
    fn a_pool_target_path_is_read() {
        let x = "<pool type='dir'><name>p</name><target><path>/var/lib/p</path></target></pool>";
        assert_eq!(pool_target(x), Some(PathBuf::from("/var/lib/p")));
        assert_eq!(pool_target("<pool/>"), None);
    }

    #[test]
    fn an_unknown_target_and_broken_xml_are_errors() {
        let e = rewrite(
            DOM,
            &[DiskChange {
                target: "vdz".into(),
                path: "/x".into(),
                format: "raw".into(),
                drop_backing: false,
            }],
        )
        .unwrap_err();
        assert!(matches!(e, XmlError::NoSuchDisk(t) if t == "vdz"));
        assert!(matches!(
            disks("<domain><devices><disk></devices>"),
            Err(XmlError::Malformed { .. })
        ));
    }
}
