//! `vmshift evacuate SOURCE_DS --to DS,...|auto --plan`: renders the runner's evacuation
//! plan (`vmshift_runner::evacuate`). Running it is not available yet.

use anyhow::Result;
use vmshift_core::format_bytes;
use vmshift_runner::evacuate::{EvacuateRequest, EvacuationPlan};
use vmshift_runner::Runner;

/// Prints the plan (a table, or one JSON object with `json`); exit 0. Without `plan`,
/// refuses (exit 2): only planning exists so far.
///
/// # Errors
/// A datastore named is not configured (the caller exits 2 with the one line).
pub fn run(runner: &Runner, request: &EvacuateRequest, plan: bool, json: bool) -> Result<i32> {
    if !plan {
        eprintln!(
            "vmshift: refused: running an evacuation is not available yet; use --plan to see what it would do"
        );
        return Ok(2);
    }
    let p = runner.evacuation_plan(request)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&p)?);
    } else {
        print_plan(&p);
    }
    Ok(0)
}

fn print_plan(p: &EvacuationPlan) {
    println!(
        "evacuate {} ({}) to {}; at most {} moves at once{}",
        p.source,
        p.source_root.display(),
        p.targets.join(", "),
        p.max_parallel,
        if p.keep_source {
            "; source images kept"
        } else {
            ""
        }
    );
    println!("libvirt: {}", p.libvirt.note);
    if p.moves.is_empty() {
        println!("nothing to move");
    } else {
        println!(
            "{:<32}  {:>10}  {:<24}  {:<7}  {:<16}  {:>4}",
            "IMAGE", "SIZE", "GROUP/VM", "KIND", "TARGET", "WAVE"
        );
        for m in &p.moves {
            let kind = serde_json::to_value(m.kind)
                .ok()
                .and_then(|v| v.as_str().map(str::to_owned))
                .unwrap_or_default();
            println!(
                "{:<32}  {:>10}  {:<24}  {:<7}  {:<16}  {:>4}",
                rel(p, &m.path),
                format_bytes(m.allocated_bytes),
                m.group.as_deref().unwrap_or("-"),
                kind,
                m.target,
                m.wave
            );
        }
    }
    if !p.unplaceable.is_empty() {
        println!("not moving:");
        for u in &p.unplaceable {
            println!(
                "  {} ({}): {}",
                rel(p, &u.path),
                format_bytes(u.allocated_bytes),
                u.reason
            );
        }
    }
    println!(
        "{:<16}  {:<6}  {:>12}  {:>12}  {:>10}",
        "DATASTORE", "ROLE", "FREE BEFORE", "FREE AFTER", "RESERVE"
    );
    for d in &p.datastores {
        println!(
            "{:<16}  {:<6}  {:>12}  {:>12}  {:>10}",
            d.name,
            d.role,
            format_bytes(d.free_before_bytes),
            format_bytes(d.free_after_bytes),
            format_bytes(d.reserve_bytes)
        );
    }
    for n in &p.notes {
        println!("note: {n}");
    }
    println!(
        "plan only: nothing was moved ({} wave(s); running an evacuation is not available yet)",
        p.waves.len()
    );
}

fn rel(p: &EvacuationPlan, path: &std::path::Path) -> String {
    path.strip_prefix(&p.source_root)
        .unwrap_or(path)
        .display()
        .to_string()
}
