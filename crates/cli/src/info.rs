//! `vmshift info`.

use crate::cli::FormatArg;
use anyhow::Result;
use std::path::Path;
use vmshift_core::format_bytes;
use vmshift_core::plan::LockState;
use vmshift_image::chain::{ChainOptions, LayerFormat};
use vmshift_image::{inspect, InspectOptions};

fn lf(f: FormatArg) -> LayerFormat {
    match f {
        FormatArg::Raw => LayerFormat::Raw,
        FormatArg::Qcow2 => LayerFormat::Qcow2,
    }
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
