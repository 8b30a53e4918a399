//! Graph-shape cases with a guest-less VM: shallow (sync=top) moves, source deletion,
//! selection and refusals.
mod common;

use std::sync::atomic::AtomicBool;
use std::time::Duration;

use common::*;
use vmshift_qmp::live::{LiveError, SyncMode};
use vmshift_qmp::{LiveMigration, LiveOptions, TargetFormat};

fn opts(dest: &std::path::Path) -> LiveOptions {
    let mut o = LiveOptions::new(dest);
    o.rate_sample = Duration::from_millis(100);
    o
}

#[test]
fn shallow_move_copies_only_the_top_and_keeps_the_backing_file() {
    let _g = serial();
    let dir = tempfile::tempdir().expect("tmp");
    let base = dir.path().join("base.qcow2");
    let top = dir.path().join("top.qcow2");
    run(
        "qemu-img",
        &["create", "-q", "-f", "qcow2", p(&base), "16M"],
    );
    run(
        "qemu-io",
        &["-f", "qcow2", "-c", "write -P 0x11 0 8M", p(&base)],
    );
    run(
        "qemu-img",
        &[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-b",
            p(&base),
            "-F",
            "qcow2",
            p(&top),
        ],
    );
    run(
        "qemu-io",
        &["-f", "qcow2", "-c", "write -P 0x22 4M 1M", p(&top)],
    );
    let dest = dir.path().join("dst");
    std::fs::create_dir(&dest).expect("mkdir");
    let mut vm = Vm::paused(
        dir.path(),
        &[Disk {
            path: top.clone(),
            format: "qcow2",
        }],
    );
    let mut qmp = vm.qmp();
    let mut o = opts(&dest);
    o.shallow = true;
    let plan = LiveMigration::plan(&mut qmp, &o).expect("plan");
    assert_eq!(plan.disks[0].sync, SyncMode::Top);
    assert_eq!(
        plan.disks[0].disk.backing_chain[0].filename,
        base.display().to_string()
    );
    let out = LiveMigration::run(
        &mut qmp,
        &plan,
        &mut quiet_progress(),
        &AtomicBool::new(false),
    )
    .expect("run");
    let d = &out.disks[0];
    assert_eq!(d.format, TargetFormat::Qcow2);
    // Only the top layer moved: about 1 MiB of data, not the base's 8 MiB.
    assert!(d.bytes <= 2 * 1024 * 1024, "copied {} bytes", d.bytes);
    vm.quit(&mut qmp);
    let info = run("qemu-img", &["info", "--output=json", p(&d.new_path)]);
    assert!(
        info.contains(&format!("\"backing-filename\": \"{}\"", base.display())),
        "{info}"
    );
    let cmp = run(
        "qemu-img",
        &[
            "compare",
            "-f",
            "qcow2",
            "-F",
            "qcow2",
            p(&top),
            p(&d.new_path),
        ],
    );
    assert!(cmp.contains("Images are identical"), "{cmp}");
}

#[test]
fn delete_source_removes_the_closed_source_after_the_pivot() {
    let _g = serial();
    let dir = tempfile::tempdir().expect("tmp");
    let src = dir.path().join("gone.raw");
    stamped_image(&src, 8 * MIB, "raw");
    let dest = dir.path().join("dst");
    std::fs::create_dir(&dest).expect("mkdir");
    let mut vm = Vm::paused(
        dir.path(),
        &[Disk {
            path: src.clone(),
            format: "raw",
        }],
    );
    let mut qmp = vm.qmp();
    let mut o = opts(&dest);
    o.delete_source = true;
    o.format = Some(TargetFormat::Qcow2);
    let plan = LiveMigration::plan(&mut qmp, &o).expect("plan");
    let out = LiveMigration::run(
        &mut qmp,
        &plan,
        &mut quiet_progress(),
        &AtomicBool::new(false),
    )
    .expect("run");
    let d = &out.disks[0];
    assert!(d.old_nodes_detached && d.source_deleted);
    assert!(!src.exists(), "source still there");
    assert_eq!(
        d.new_path.file_name(),
        src.file_name(),
        "the target keeps the source's file name"
    );
    vm.quit(&mut qmp);
    let raw = to_raw(&d.new_path, "qcow2");
    let rep = vmshift_qmp::stamp::verify_raw(&raw, None, 0).expect("stamps intact");
    assert_eq!((rep.blocks, rep.max_seq), (2048, 0));
}

#[test]
fn check_refuses_existing_targets_clashing_names_and_unknown_selectors() {
    let _g = serial();
    let dir = tempfile::tempdir().expect("tmp");
    let a = dir.path().join("a");
    let b = dir.path().join("b");
    std::fs::create_dir_all(&a).expect("mkdir");
    std::fs::create_dir_all(&b).expect("mkdir");
    let (ia, ib) = (a.join("same.raw"), b.join("same.raw"));
    stamped_image(&ia, MIB, "raw");
    stamped_image(&ib, MIB, "raw");
    let dest = dir.path().join("dst");
    std::fs::create_dir(&dest).expect("mkdir");
    std::fs::write(dest.join("same.raw"), b"old").expect("write");
    let _vm = Vm::paused(
        dir.path(),
        &[
            Disk {
                path: ia,
                format: "raw",
            },
            Disk {
                path: ib,
                format: "raw",
            },
        ],
    );
    let mut qmp = _vm.qmp();
    match LiveMigration::plan(&mut qmp, &opts(&dest)) {
        Err(LiveError::Refused(r)) => {
            let all = format!("{r:?}");
            assert!(all.contains("already exists"), "{all}");
            assert!(all.contains("share a file name"), "{all}");
        }
        other => panic!("expected refusals, got {other:?}"),
    }
    let mut o = opts(&dest);
    o.disks = vec!["vd7".into()];
    match LiveMigration::plan(&mut qmp, &o) {
        Err(LiveError::NoSuchDisk {
            selector,
            available,
        }) => {
            assert_eq!(selector, "vd7");
            assert!(
                available.contains("vd0 (node disk0)") && available.contains("vd1 (node disk1)"),
                "{available}"
            );
        }
        other => panic!("expected NoSuchDisk, got {other:?}"),
    }
    // Selecting by node name picks just that disk.
    std::fs::remove_file(dest.join("same.raw")).expect("rm");
    let mut o = opts(&dest);
    o.disks = vec!["disk1".into()];
    let plan = LiveMigration::plan(&mut qmp, &o).expect("plan");
    assert_eq!(plan.disks.len(), 1);
    assert_eq!(plan.disks[0].disk.device, "vd1");
}
