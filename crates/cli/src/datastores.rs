//! `vmshift datastores`: the config file's datastores with their space, the images on
//! them and a measured latency. Read-only; measuring is `vmshift_runner::datastore`.

use anyhow::{anyhow, Result};
use serde::Serialize;
use std::path::{Path, PathBuf};
use vmshift_core::format_bytes;
use vmshift_core::placement::Reserve;
use vmshift_runner::datastore::{self, DatastoreConfig, ProbeMethod, LATENCY_MAX_AGE};
use vmshift_server::config::ConfigFile;

/// One datastore as listed (`--json`: one object each; sizes in bytes, latency in µs).
#[derive(Serialize)]
struct Row {
    name: String,
    kind: datastore::DatastoreKind,
    root: PathBuf,
    /// As configured: bytes, or `"10%"`.
    reserve: Reserve,
    max_copies: Option<u32>,
    bwlimit_bytes_per_sec: Option<u64>,
    capacity_bytes: Option<u64>,
    free_bytes: Option<u64>,
    used_bytes: Option<u64>,
    reserve_bytes: Option<u64>,
    /// Free minus the reserve: what moves may use.
    usable_bytes: Option<u64>,
    images: Option<u64>,
    allocated_by_images_bytes: Option<u64>,
    latency_us: Option<u64>,
    latency_method: Option<ProbeMethod>,
    latency_measured_at: Option<String>,
    latency_cached: Option<bool>,
    /// Why the space could not be read (the datastore is unusable).
    error: Option<String>,
    /// Why the latency could not be measured (e.g. a read-only root).
    probe_error: Option<String>,
}

/// Lists the datastores of the config file at `config` (`None`: none was named and the
/// default does not exist). `probe`: measure every latency now rather than reuse one
/// younger than [`LATENCY_MAX_AGE`]. Exit status 1 when a datastore's root cannot be read.
///
/// # Errors
/// The config file does not load; the state directory cannot be created.
pub fn run(config: Option<&Path>, json: bool, probe: bool) -> Result<i32> {
    let list = match config {
        Some(p) => ConfigFile::read(p).map_err(|e| anyhow!(e))?.datastores,
        None => Vec::new(),
    };
    if list.is_empty() && !json {
        let hint = config.map_or_else(
            || "no configuration file: name one with --config FILE or $VMSHIFT_CONFIG".into(),
            |p| format!("add datastores = [...] to {}", p.display()),
        );
        println!("no datastores configured ({hint})");
        return Ok(0);
    }
    let state = vmshift_runner::state::state_dir()?;
    let state = std::fs::canonicalize(&state).unwrap_or(state);
    let rows: Vec<Row> = list.iter().map(|d| row(d, &state, probe)).collect();
    if json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
    } else {
        print_table(&rows);
    }
    for r in &rows {
        if let Some(e) = &r.error {
            eprintln!("vmshift: error: datastore {}: {e} (create it or fix its root in the configuration)", r.name);
        }
        if let Some(e) = &r.probe_error {
            eprintln!("vmshift: warning: datastore {}: {e}", r.name);
        }
    }
    Ok(i32::from(rows.iter().any(|r| r.error.is_some())))
}

fn row(d: &DatastoreConfig, state: &Path, probe: bool) -> Row {
    // Resolved, so the state directory is recognised and skipped whatever the spelling.
    let root = std::fs::canonicalize(&d.root).unwrap_or_else(|_| d.root.clone());
    let mut r = Row {
        name: d.name.clone(),
        kind: d.kind,
        root: d.root.clone(),
        reserve: d.reserve,
        max_copies: d.max_copies,
        bwlimit_bytes_per_sec: d.bwlimit_bytes_per_sec,
        capacity_bytes: None,
        free_bytes: None,
        used_bytes: None,
        reserve_bytes: None,
        usable_bytes: None,
        images: None,
        allocated_by_images_bytes: None,
        latency_us: None,
        latency_method: None,
        latency_measured_at: None,
        latency_cached: None,
        error: None,
        probe_error: None,
    };
    match datastore::usage(&root, Some(state)) {
        Ok(u) => {
            let placed = d.placement(u.capacity_bytes, u.free_bytes, None);
            r.capacity_bytes = Some(u.capacity_bytes);
            r.free_bytes = Some(u.free_bytes);
            r.used_bytes = Some(u.used_bytes);
            r.reserve_bytes = Some(d.reserve.bytes(u.capacity_bytes));
            r.usable_bytes = Some(placed.usable_bytes());
            r.images = Some(u.images);
            r.allocated_by_images_bytes = Some(u.allocated_by_images_bytes);
        }
        Err(e) => {
            r.error = Some(e.to_string());
            return r;
        }
    }
    match datastore::latency(state, &d.name, &root, LATENCY_MAX_AGE, probe) {
        Ok(l) => {
            r.latency_us = Some(l.latency_us);
            r.latency_method = Some(l.method);
            r.latency_measured_at = Some(l.measured_at);
            r.latency_cached = Some(l.cached);
        }
        Err(e) => r.probe_error = Some(e.to_string()),
    }
    r
}

fn print_table(rows: &[Row]) {
    let size = |b: Option<u64>| b.map_or_else(|| "-".into(), format_bytes);
    println!(
        "{:<16}  {:>10}  {:>10}  {:>10}  {:>10}  {:>6}  {:>10}  ROOT",
        "NAME", "CAPACITY", "FREE", "RESERVE", "ALLOCATED", "IMAGES", "LATENCY"
    );
    for r in rows {
        let latency = match (r.latency_us, r.latency_method) {
            (Some(us), Some(ProbeMethod::Buffered)) => format!("{us} µs*"),
            (Some(us), _) => format!("{us} µs"),
            _ => "-".into(),
        };
        println!(
            "{:<16}  {:>10}  {:>10}  {:>10}  {:>10}  {:>6}  {:>10}  {}",
            r.name,
            size(r.capacity_bytes),
            size(r.free_bytes),
            size(r.reserve_bytes),
            size(r.allocated_by_images_bytes),
            r.images.map_or_else(|| "-".into(), |n| n.to_string()),
            latency,
            r.root.display()
        );
    }
    println!(
        "latency: one 4 KiB O_DIRECT write + read, median of 5, measured again after {} min or with --probe",
        LATENCY_MAX_AGE.as_secs() / 60
    );
    if rows
        .iter()
        .any(|r| r.latency_method == Some(ProbeMethod::Buffered))
    {
        println!("*: the file system refused O_DIRECT; measured through the page cache");
    }
}
