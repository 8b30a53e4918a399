//! `vmshift info --domain`: a domain's state and disks as libvirt states them, and what a
//! move would do with each.

use serde_json::json;
use vmshift_libvirt::{DiskSource, DomainState, Libvirt};

/// The domain's facts as JSON and as lines for people; `Err` is a one-line message.
pub fn domain_info(
    connect: Option<&str>,
    name: &str,
) -> Result<(serde_json::Value, Vec<String>), String> {
    let lv = Libvirt::open(connect).map_err(|e| e.to_string())?;
    let dom = lv.domain(name).map_err(|e| e.to_string())?;
    let state = dom.state().map_err(|e| e.to_string())?;
    let persistent = dom.persistent().map_err(|e| e.to_string())?;
    let xml = dom
        .xml(state == DomainState::ShutOff)
        .map_err(|e| e.to_string())?;
    let disks = vmshift_libvirt::disks(&xml).map_err(|e| e.to_string())?;
    let snapshots = dom.snapshots().unwrap_or(0);
    let mut lines = vec![
        format!("domain:     {name} at {}", lv.uri()),
        format!(
            "state:      {}, {}",
            state.as_str(),
            if persistent {
                "persistent"
            } else {
                "transient"
            }
        ),
    ];
    if snapshots > 0 {
        lines.push(format!(
            "snapshots:  {snapshots} (a move is refused: it would orphan them)"
        ));
    }
    let mut out = Vec::new();
    for d in &disks {
        let chain: Vec<String> = d
            .backing
            .iter()
            .filter(|b| b.source != DiskSource::Empty)
            .map(|b| {
                format!(
                    "{} ({})",
                    b.source.describe(),
                    b.format.as_deref().unwrap_or("format not stated")
                )
            })
            .collect();
        let movable = matches!(d.source, DiskSource::File(_) | DiskSource::Volume { .. })
            && matches!(d.format.as_deref(), Some("raw" | "qcow2"));
        let would = if !matches!(state, DomainState::Running | DomainState::ShutOff) {
            format!("refused while the domain is {}", state.as_str())
        } else if snapshots > 0 {
            "refused: the domain has libvirt snapshots".to_string()
        } else if d.readonly || d.shareable || d.device != "disk" {
            "left in place (read-only, shareable or not a disk)".to_string()
        } else if !movable {
            "cannot be moved yet (vmshift moves raw and qcow2 files and pool volumes)".to_string()
        } else if state == DomainState::Running {
            "moved live: libvirt block copy, then pivot; the definition is updated".into()
        } else {
            "moved offline: verified copy; then the definition is updated".into()
        };
        // A pool volume's file, as the plan resolves it.
        let path = match &d.source {
            DiskSource::Volume { pool, volume } => lv.volume_path(pool, volume).ok(),
            other => other.path().map(std::path::Path::to_path_buf),
        };
        lines.push(format!(
            "disk {}:   {}{} ({}, {}{}{}) bus {}",
            d.target,
            d.source.describe(),
            match (&d.source, &path) {
                (DiskSource::Volume { .. }, Some(p)) => format!(" = {}", p.display()),
                _ => String::new(),
            },
            d.format.as_deref().unwrap_or("format not stated"),
            d.device,
            if d.readonly { ", read-only" } else { "" },
            if d.shareable { ", shareable" } else { "" },
            d.bus.as_deref().unwrap_or("-")
        ));
        for c in &chain {
            lines.push(format!("  backing:  {c}"));
        }
        lines.push(format!("  a move:   {would}"));
        out.push(json!({
            "target": d.target, "device": d.device, "bus": d.bus,
            "source": d.source.describe(), "path": path,
            "format": d.format, "readonly": d.readonly, "shareable": d.shareable,
            "backing_chain": chain, "move": would,
        }));
    }
    let v = json!({
        "domain": name, "uri": lv.uri(), "state": state.as_str(),
        "persistent": persistent, "snapshots": snapshots, "disks": out,
    });
    Ok((v, lines))
}
