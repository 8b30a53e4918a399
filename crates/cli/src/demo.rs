//! `vmshift demo`: the main job on a bundled default. Builds a real sample VM disk (a qcow2
//! holding an ext4 filesystem with real files, made with mkfs.ext4 -d and qemu-img), then
//! migrates it between two demo datastores under the state directory and prints the report.

use crate::cli::{FormatArg, MigrateArgs};
use crate::offline::run_migrate;
use crate::state::state_dir;
use anyhow::{bail, Context, Result};
use std::path::Path;
use std::process::Command;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

fn run(cmd: &mut Command) -> Result<()> {
    let out = cmd.output().with_context(|| {
        format!(
            "cannot run {:?} (run scripts/install-deps.sh)",
            cmd.get_program()
        )
    })?;
    if !out.status.success() {
        bail!(
            "{:?} failed: {}",
            cmd.get_program(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// Builds `<state>/demo/datastore-a/web01.qcow2` (256 MiB virtual ext4 with files).
fn build_sample(root: &Path) -> Result<std::path::PathBuf> {
    let src_store = root.join("datastore-a");
    let stage = root.join("rootfs");
    let _ = std::fs::remove_dir_all(root);
    for d in [
        &src_store,
        &stage.join("etc"),
        &stage.join("var/www"),
        &stage.join("var/lib/app"),
    ] {
        std::fs::create_dir_all(d)?;
    }
    std::fs::write(stage.join("etc/hostname"), "web01\n")?;
    std::fs::write(
        stage.join("etc/motd"),
        "Moved by vmshift: storage migration with proof.\n",
    )?;
    let page: String = (0..2000)
        .map(|i| format!("<p>line {i} of the demo site</p>\n"))
        .collect();
    std::fs::write(stage.join("var/www/index.html"), page)?;
    // 8 MiB of incompressible application data, deterministic (xorshift).
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let blob: Vec<u8> = (0..8 << 20)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x.to_le_bytes()[3]
        })
        .collect();
    std::fs::write(stage.join("var/lib/app/data.bin"), blob)?;
    let raw = root.join("web01.raw");
    run(Command::new("mkfs.ext4")
        .args(["-q", "-F", "-L", "web01-root", "-d"])
        .arg(&stage)
        .arg(&raw)
        .arg("256M"))?;
    let qcow2 = src_store.join("web01.qcow2");
    run(Command::new("qemu-img")
        .args(["convert", "-q", "-f", "raw", "-O", "qcow2"])
        .arg(&raw)
        .arg(&qcow2))?;
    std::fs::remove_file(&raw)?;
    std::fs::remove_dir_all(&stage)?;
    Ok(qcow2)
}

/// Runs the demo; returns the migrate exit status.
pub fn run_demo(json: bool, cancel: Arc<AtomicBool>) -> Result<i32> {
    let root = state_dir()?.join("demo");
    let disk = build_sample(&root)?;
    let dest = root.join("datastore-b");
    std::fs::create_dir_all(&dest)?;
    let report = root.join("report.md");
    if !json {
        eprintln!(
            "vmshift demo: sample VM disk {} (qcow2 with an ext4 filesystem) → {}",
            disk.display(),
            dest.display()
        );
    }
    let args = MigrateArgs {
        live: Default::default(),
        source: disk,
        to: dest,
        format: Some(FormatArg::Qcow2),
        source_format: None,
        backing_format: None,
        keep_backing: false,
        bwlimit: None,
        no_verify: false,
        delete_source: false,
        overwrite: false,
        force_share: false,
        drop: Vec::new(),
        threads: None,
        io: Default::default(),
        verify: Default::default(),
        json,
        report: Some(report.clone()),
        keep_partial: false,
        no_journal: false,
    };
    let code = run_migrate(&args, cancel)?;
    if !json {
        println!("{}", std::fs::read_to_string(&report)?);
    }
    Ok(code)
}
