//! Disk discovery over QMP (`query-block` + `query-named-block-nodes`).

use std::path::PathBuf;

use serde_json::{json, Value};

use crate::client::Qmp;
use crate::error::QmpError;

/// One image of a backing chain (the top image is not included).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackingImage {
    /// File name as QEMU reports it.
    pub filename: String,
    /// Format driver name, e.g. `qcow2`.
    pub format: String,
    /// Virtual size in bytes.
    pub virtual_size: u64,
    /// Allocated bytes on the host file system.
    pub actual_size: u64,
}

/// A block device of the running VM, as the live driver sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskInfo {
    /// Short device id: the qdev id (e.g. `vd0` from `/machine/peripheral/vd0/virtio-backend`)
    /// or the `-drive` id when there is no qdev path.
    pub device: String,
    /// The `query-block` device name (empty for `-blockdev` disks).
    pub block_device: String,
    /// The qdev path of the guest device, e.g. `/machine/peripheral/vd0/virtio-backend`.
    pub qdev: Option<String>,
    /// Node name of the root node the device is attached to (the format node).
    pub node_name: String,
    /// Driver of the root node, e.g. `qcow2`, `raw`, or a job filter such as `mirror_top`.
    pub driver: String,
    /// Node name of the protocol node below the format node, when it could be identified.
    pub protocol_node: Option<String>,
    /// Driver of that protocol node, e.g. `file`, `host_device`, `nbd`.
    pub protocol_driver: Option<String>,
    /// Image file name of the top image.
    pub file: String,
    /// Image format of the top image.
    pub format: String,
    /// Virtual (guest-visible) size in bytes.
    pub virtual_size: u64,
    /// Allocated bytes of the top image file.
    pub actual_size: u64,
    /// Backing images, nearest first.
    pub backing_chain: Vec<BackingImage>,
    /// The device is read-only.
    pub read_only: bool,
    /// Why the disk is busy (a block job owns it), if it is.
    pub busy: Option<String>,
    /// The guest device was created with `share-rw=on` (shared between VMs).
    pub shared: bool,
    /// `cache.direct` of the root node (O_DIRECT, `cache=none`): kept on the target nodes.
    pub cache_direct: bool,
    /// `cache.no-flush` of the root node (`cache=unsafe`): kept on the target nodes.
    pub cache_no_flush: bool,
    /// `detect-zeroes` of the root node (`off`, `on`, `unmap`): kept on the target node.
    pub detect_zeroes: String,
}

impl DiskInfo {
    /// True when `selector` names this disk: device id, qdev path, `query-block` device name
    /// or root node name.
    pub fn matches(&self, selector: &str) -> bool {
        !selector.is_empty()
            && (self.device == selector
                || self.block_device == selector
                || self.node_name == selector
                || self.qdev.as_deref() == Some(selector))
    }

    /// The top image's file name as a path.
    pub fn path(&self) -> PathBuf {
        PathBuf::from(&self.file)
    }

    /// Allocated bytes of the whole chain (what `sync=full` may have to copy at most).
    pub fn chain_allocated(&self) -> u64 {
        self.backing_chain
            .iter()
            .fold(self.actual_size, |a, b| a.saturating_add(b.actual_size))
    }
}

/// Lists the VM's disks that have a medium inserted.
pub fn discover(qmp: &mut Qmp) -> Result<Vec<DiskInfo>, QmpError> {
    let blocks = qmp.execute("query-block", None)?;
    let nodes = qmp.call("query-named-block-nodes", json!({"flat": true}))?;
    let mut disks = parse_disks(&blocks, &nodes);
    for d in &mut disks {
        if let Some(q) = d.qdev.clone() {
            // share-rw lives on the virtio/scsi/ide device; absent property = not shared.
            for path in [q.clone(), q.trim_end_matches("/virtio-backend").to_owned()] {
                if let Ok(v) = qmp.call("qom-get", json!({"path": path, "property": "share-rw"})) {
                    d.shared = v.as_bool().unwrap_or(false);
                    break;
                }
            }
        }
    }
    Ok(disks)
}

/// Pure part of [`discover`]: builds [`DiskInfo`]s from the two query replies.
pub fn parse_disks(query_block: &Value, named_nodes: &Value) -> Vec<DiskInfo> {
    let nodes = named_nodes.as_array().map(Vec::as_slice).unwrap_or(&[]);
    let mut out = Vec::new();
    for b in query_block.as_array().map(Vec::as_slice).unwrap_or(&[]) {
        let Some(ins) = b.get("inserted") else {
            continue;
        };
        let s = |v: &Value, k: &str| v.get(k).and_then(Value::as_str).unwrap_or("").to_owned();
        let u = |v: &Value, k: &str| v.get(k).and_then(Value::as_u64).unwrap_or(0);
        let block_device = s(b, "device");
        let qdev = b.get("qdev").and_then(Value::as_str).map(str::to_owned);
        let device = qdev
            .as_deref()
            .and_then(short_qdev_id)
            .map(str::to_owned)
            .unwrap_or_else(|| block_device.clone());
        let node_name = s(ins, "node-name");
        let driver = s(ins, "drv");
        let image = ins.get("image").cloned().unwrap_or(Value::Null);
        let mut file = s(ins, "file");
        let mut format = s(&image, "format");
        let mut virtual_size = u(&image, "virtual-size");
        let mut actual_size = u(&image, "actual-size");
        let mut top = &image;
        let busy = is_job_filter(&driver)
            .then(|| format!("a block job owns it (root node driver {driver})"));
        if busy.is_some() {
            // The job filter sits on top; the real image is its backing.
            if let Some(bi) = image.get("backing-image") {
                top = bi;
                file = s(bi, "filename");
                format = s(bi, "format");
                virtual_size = u(bi, "virtual-size");
                actual_size = u(bi, "actual-size");
            }
        }
        // QEMU 7.2's query-block hides implicit job filters (blockdev-mirror without
        // filter-node-name); query-named-block-nodes still lists them, over the same file.
        let busy = busy.or_else(|| {
            nodes
                .iter()
                .find(|n| {
                    n.get("drv")
                        .and_then(Value::as_str)
                        .is_some_and(is_job_filter)
                        && n.get("file").and_then(Value::as_str) == Some(file.as_str())
                })
                .map(|n| {
                    format!(
                        "a block job owns it (filter node {} of driver {})",
                        s(n, "node-name"),
                        s(n, "drv")
                    )
                })
        });
        let mut backing_chain = Vec::new();
        let mut cur = top.get("backing-image");
        while let Some(bi) = cur {
            backing_chain.push(BackingImage {
                filename: s(bi, "filename"),
                format: s(bi, "format"),
                virtual_size: u(bi, "virtual-size"),
                actual_size: u(bi, "actual-size"),
            });
            cur = bi.get("backing-image");
        }
        // The protocol node: a named node other than the root whose file is the top image and
        // whose image format is a protocol driver name (what QEMU reports for protocol nodes).
        let proto = nodes.iter().find(|n| {
            n.get("node-name").and_then(Value::as_str) != Some(node_name.as_str())
                && n.get("file").and_then(Value::as_str) == Some(file.as_str())
                && n.get("drv")
                    .and_then(Value::as_str)
                    .is_some_and(is_protocol_driver)
        });
        out.push(DiskInfo {
            device,
            block_device,
            qdev,
            node_name,
            driver,
            protocol_node: proto.map(|n| s(n, "node-name")).filter(|n| !n.is_empty()),
            protocol_driver: proto.map(|n| s(n, "drv")),
            file,
            format,
            virtual_size,
            actual_size,
            backing_chain,
            read_only: ins.get("ro").and_then(Value::as_bool).unwrap_or(false),
            busy,
            shared: false,
            cache_direct: ins["cache"]["direct"].as_bool().unwrap_or(false),
            cache_no_flush: ins["cache"]["no-flush"].as_bool().unwrap_or(false),
            detect_zeroes: s(ins, "detect_zeroes"),
        });
    }
    out
}

/// `/machine/peripheral/vd0/virtio-backend` → `vd0`; anonymous devices keep no short id.
fn short_qdev_id(qdev: &str) -> Option<&str> {
    let rest = qdev.strip_prefix("/machine/peripheral/")?;
    rest.split('/').next().filter(|s| !s.is_empty())
}

fn is_job_filter(drv: &str) -> bool {
    matches!(
        drv,
        "mirror_top" | "commit_top" | "backup-top" | "copy-before-write" | "stream"
    )
}

fn is_protocol_driver(drv: &str) -> bool {
    matches!(
        drv,
        "file"
            | "host_device"
            | "host_cdrom"
            | "nbd"
            | "iscsi"
            | "rbd"
            | "nfs"
            | "ssh"
            | "http"
            | "https"
            | "gluster"
            | "null-co"
            | "null-aio"
            | "nvme"
            | "io_uring"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> (Value, Value) {
        let qb = json!([{
            "device": "", "qdev": "/machine/peripheral/vd0/virtio-backend",
            "inserted": {"node-name": "disk0", "drv": "qcow2", "ro": false, "file": "/a/vm.qcow2",
                "image": {"virtual-size": 16777216, "filename": "/a/vm.qcow2", "format": "qcow2",
                          "actual-size": 4460544,
                          "backing-image": {"virtual-size": 16777216, "filename": "/a/base.qcow2",
                                            "format": "qcow2", "actual-size": 1000}}}
        }, {"device": "cd0", "qdev": "/machine/peripheral/cd0"}]);
        let nodes = json!([
            {"node-name": "disk0", "drv": "qcow2", "file": "/a/vm.qcow2"},
            {"node-name": "disk0-file", "drv": "file", "file": "/a/vm.qcow2"},
        ]);
        (qb, nodes)
    }

    #[test]
    fn discovers_blockdev_disk_with_chain_and_protocol_node() {
        let (qb, nodes) = sample();
        let d = parse_disks(&qb, &nodes);
        assert_eq!(d.len(), 1, "empty drives are skipped");
        let d = &d[0];
        assert_eq!(d.device, "vd0");
        assert_eq!(d.node_name, "disk0");
        assert_eq!(d.protocol_node.as_deref(), Some("disk0-file"));
        assert_eq!(d.protocol_driver.as_deref(), Some("file"));
        assert_eq!(d.virtual_size, 16_777_216);
        assert_eq!(d.backing_chain.len(), 1);
        assert_eq!(d.chain_allocated(), 4_461_544);
        assert!(d.busy.is_none());
        assert!(
            d.matches("vd0")
                && d.matches("disk0")
                && d.matches("/machine/peripheral/vd0/virtio-backend")
        );
        assert!(!d.matches(""));
    }

    #[test]
    fn disk_with_an_implicit_mirror_filter_is_busy() {
        let (qb, _) = sample();
        let nodes = json!([
            {"node-name": "#block173", "drv": "mirror_top", "file": "/a/vm.qcow2"},
            {"node-name": "disk0", "drv": "qcow2", "file": "/a/vm.qcow2"},
            {"node-name": "disk0-file", "drv": "file", "file": "/a/vm.qcow2"},
        ]);
        let d = &parse_disks(&qb, &nodes)[0];
        assert!(
            d.busy.as_deref().is_some_and(|b| b.contains("#block173")),
            "{:?}",
            d.busy
        );
        assert_eq!(d.protocol_node.as_deref(), Some("disk0-file"));
    }

    #[test]
    fn disk_under_a_mirror_filter_is_busy_and_reports_the_real_image() {
        let qb = json!([{"device": "drive0", "inserted": {"node-name": "f", "drv": "mirror_top",
            "file": "json:{}", "image": {"format": "mirror_top", "filename": "json:{}",
            "backing-image": {"filename": "/b/d.raw", "format": "raw", "virtual-size": 512, "actual-size": 512}}}}]);
        let d = &parse_disks(&qb, &json!([]))[0];
        assert_eq!(d.device, "drive0");
        assert!(d.busy.is_some());
        assert_eq!(d.file, "/b/d.raw");
        assert!(d.backing_chain.is_empty());
    }
}
