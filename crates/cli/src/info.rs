//! `vmshift info IMAGE` and `vmshift info --qmp SOCKET`.

use crate::cli::FormatArg;
use anyhow::Result;
use serde_json::json;
use std::path::Path;
use vmshift_core::format_bytes;
use vmshift_core::plan::LockState;
use vmshift_image::chain::{ChainOptions, LayerFormat};
use vmshift_image::{inspect, InspectOptions};

fn lf(f: FormatArg) -> LayerFormat {
    vmshift_runner::offline::check::layer_format(f)
}

/// Prints what vmshift knows about an image. Exit 0 when it could be read, 2 otherwise.
pub fn run(
    image: &Path,
    source_format: Option<FormatArg>,
    backing_format: Option<FormatArg>,
    json: bool,
) -> Result<i32> {
    let i = inspect(
        image,
        &InspectOptions {
            chain: ChainOptions {
                top_format: source_format.map(lf),
                backing_format: backing_format.map(lf),
                ..Default::default()
            },
            walk_extents: true,
        },
    );
    let info = &i.info;
    let unreadable = info.format == "unknown";
    if json {
        println!("{}", serde_json::to_string_pretty(info)?);
    } else if unreadable {
        for p in &info.problems {
            eprintln!("vmshift: error: {}", p.one_line());
        }
    } else {
        println!("image:            {}", info.path);
        println!(
            "format:           {}{}",
            info.format,
            info.qcow2_version
                .map(|v| format!(
                    " (version {v}, compat {})",
                    if v == 2 { "0.10" } else { "1.1" }
                ))
                .unwrap_or_default()
        );
        println!(
            "virtual size:     {} ({} bytes)",
            format_bytes(info.virtual_size),
            info.virtual_size
        );
        println!(
            "file size:        {} ({} bytes)",
            format_bytes(info.file_size),
            info.file_size
        );
        println!(
            "allocated:        {} ({} bytes)",
            format_bytes(info.allocated_bytes),
            info.allocated_bytes
        );
        if let Some(d) = info.data_bytes {
            println!("data (guest):     {} ({} bytes)", format_bytes(d), d);
        }
        if let Some(c) = info.cluster_size {
            println!("cluster size:     {c}");
        }
        println!("encryption:       {}", info.encryption);
        if let Some(c) = &info.compression_type {
            println!(
                "compression:      {c} ({} compressed clusters)",
                info.compressed_clusters
            );
        }
        if !info.features.is_empty() {
            println!("features:         {}", info.features.join(", "));
        }
        if info.snapshots > 0 {
            println!("snapshots:        {}", info.snapshots);
        }
        if info.backing_chain.is_empty() {
            println!("backing chain:    none");
        }
        for (n, l) in info.backing_chain.iter().enumerate() {
            println!(
                "backing[{n}]:       {} ({}, recorded as {:?}, {} virtual)",
                l.path,
                l.format,
                l.recorded_name.clone().unwrap_or_default(),
                format_bytes(l.virtual_size)
            );
        }
        match &info.lock {
            LockState::Free => println!("in use:           no (no QEMU lock held)"),
            LockState::Held { pids, names } => println!(
                "in use:           yes, a running QEMU holds the image lock{}",
                if pids.is_empty() {
                    String::new()
                } else {
                    format!(" (pids {:?} {:?})", pids, names)
                }
            ),
        }
        for n in &info.notes {
            println!("note:             {n}");
        }
        for p in &info.problems {
            println!("problem:          {}", p.one_line());
        }
    }
    Ok(if unreadable { 2 } else { 0 })
}

/// `vmshift info --qmp`: the VM's disks as QEMU sees them.
///
/// # Errors
/// When QEMU cannot be reached.
pub fn run_qmp(sock: &Path, json_out: bool) -> Result<i32> {
    let (features, disks) = vmshift_runner::live::info(sock)?;
    if json_out {
        let v = json!({
            "qemu_version": features.version.to_string(),
            "block_job_change": features.block_job_change,
            "disks": disks.iter().map(|d| json!({
                "device": d.device, "qdev": d.qdev, "node_name": d.node_name, "file": d.file,
                "format": d.format, "virtual_size": d.virtual_size, "allocated_bytes": d.actual_size,
                "backing_chain": d.backing_chain.iter().map(|b| json!({"file": b.filename, "format": b.format})).collect::<Vec<_>>(),
                "read_only": d.read_only, "shared": d.shared, "busy": d.busy,
                "protocol": d.protocol_driver})).collect::<Vec<_>>(),
        });
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        println!(
            "QEMU {} (block-job-change: {})",
            features.version, features.block_job_change
        );
        for d in &disks {
            println!(
                "{} node {}: {} [{}] virtual {} allocated {}{}{}{}",
                d.device,
                d.node_name,
                d.file,
                d.format,
                format_bytes(d.virtual_size),
                format_bytes(d.actual_size),
                if d.read_only { ", read-only" } else { "" },
                if d.shared { ", shared" } else { "" },
                d.busy
                    .as_deref()
                    .map(|b| format!(", busy: {b}"))
                    .unwrap_or_default()
            );
            for b in &d.backing_chain {
                println!("    backing {} [{}]", b.filename, b.format);
            }
        }
    }
    Ok(0)
}

/// Prints a libvirt domain's state and disks. Exit 0 when libvirt answered, 2 otherwise.
pub fn run_domain(connect: Option<&str>, name: &str, json_out: bool) -> Result<i32> {
    match vmshift_runner::domain::info(connect, name) {
        Ok((v, lines)) => {
            if json_out {
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                for l in lines {
                    println!("{l}");
                }
            }
            Ok(0)
        }
        Err(e) => {
            eprintln!("vmshift: error: {e}");
            Ok(2)
        }
    }
}
