//! Creating a target image and attaching it to QEMU under nodes the driver owns.

use std::path::Path;
use std::process::Command;

use serde_json::{json, Value};

use crate::client::Qmp;

use super::error::LiveError;
use super::options::{LiveOptions, TargetFormat};
use super::plan::SyncMode;
use super::state::DiskRun;

/// The cluster size recorded in a qcow2 header (bytes 20..24 hold log2 of it).
fn qcow2_cluster_size(path: &Path) -> Option<u64> {
    use std::io::Read;
    let mut head = [0u8; 24];
    std::fs::File::open(path).ok()?.read_exact(&mut head).ok()?;
    if &head[..4] != b"QFI\xfb" {
        return None;
    }
    let bits = u32::from_be_bytes(head[20..24].try_into().ok()?);
    (9..=21).contains(&bits).then(|| 1u64 << bits)
}

/// Creates the target file of `r` (unless it is a pre-existing volume) and adds its protocol
/// and format nodes, recording each step in `r` for cleanup.
pub(super) fn attach_target(
    qmp: &mut Qmp,
    opts: &LiveOptions,
    r: &mut DiskRun,
) -> Result<(), LiveError> {
    if r.planned.existing.is_none() {
        create_file(opts, r)?;
    }
    let p = &r.planned;
    let filename = p.target.to_str().ok_or_else(|| LiveError::CreateTarget {
        path: p.target.clone(),
        message: "path is not valid UTF-8, which QMP cannot carry".into(),
    })?;
    let proto = if p
        .target
        .metadata()
        .map(|m| m.file_type().is_file())
        .unwrap_or(true)
    {
        "file"
    } else {
        "host_device"
    };
    // The target keeps the source's cache mode (e.g. cache=none → O_DIRECT) and
    // detect-zeroes, so the pivot does not silently change how the VM's disk behaves.
    let cache = json!({"direct": p.disk.cache_direct, "no-flush": p.disk.cache_no_flush});
    qmp.call(
        "blockdev-add",
        json!({"driver": proto, "node-name": r.file_node, "filename": filename, "discard": "unmap", "cache": cache}),
    )?;
    r.file_node_added = true;
    let mut fmt = json!({"driver": p.format.as_str(), "node-name": r.fmt_node, "file": r.file_node, "discard": "unmap", "cache": cache});
    if matches!(p.disk.detect_zeroes.as_str(), "on" | "unmap") {
        fmt["detect-zeroes"] = json!(p.disk.detect_zeroes);
    }
    if let Some(e) = &p.existing {
        if e.expose_exact_size {
            fmt["size"] = json!(p.disk.virtual_size);
        }
    }
    if p.format == TargetFormat::Qcow2 && p.sync == SyncMode::Full {
        fmt["backing"] = Value::Null;
    }
    qmp.call("blockdev-add", fmt)?;
    r.fmt_node_added = true;
    Ok(())
}

/// Creates the target image of `r` with `qemu-img create`: exactly the source's virtual
/// size, the source's cluster size for qcow2, the source's backing file for `sync=top`.
fn create_file(opts: &LiveOptions, r: &mut DiskRun) -> Result<(), LiveError> {
    let p = &r.planned;
    // `qemu-img create` truncates an existing file: never let a file that appeared
    // since the check be overwritten.
    if p.target.symlink_metadata().is_ok() {
        return Err(LiveError::CreateTarget {
            path: p.target.clone(),
            message: "the file appeared after the check; refusing to overwrite it".into(),
        });
    }
    let mut cmd = Command::new(&opts.qemu_img);
    cmd.arg("create").arg("-q").arg("-f").arg(p.format.as_str());
    // Keep the source's cluster size for qcow2 → qcow2.
    if p.format == TargetFormat::Qcow2 {
        if let Some(c) = qcow2_cluster_size(Path::new(&p.disk.file)) {
            cmd.arg("-o").arg(format!("cluster_size={c}"));
        }
    }
    if p.sync == SyncMode::Top {
        let b = &p.disk.backing_chain[0];
        cmd.arg("-u")
            .arg("-b")
            .arg(&b.filename)
            .arg("-F")
            .arg(&b.format);
    }
    // Absolute paths: a ':' after the first '/' is never taken for a protocol prefix,
    // and a leading '-' cannot occur.
    cmd.arg(&p.target).arg(p.disk.virtual_size.to_string());
    let out = cmd.output().map_err(|e| LiveError::CreateTarget {
        path: p.target.clone(),
        message: format!("cannot run {}: {e}", opts.qemu_img.display()),
    })?;
    r.created_file = p.target.exists();
    if !out.status.success() {
        return Err(LiveError::CreateTarget {
            path: p.target.clone(),
            message: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        });
    }
    // Before QEMU opens it: a QEMU that runs as another user (libvirt's libvirt-qemu, any
    // -runas) must be able to, as it could open the source.
    r.attr_warnings = vmshift_image::attrs::copy_attrs(Path::new(&p.disk.file), &p.target);
    Ok(())
}
