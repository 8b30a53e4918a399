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
        d.new_path.file_stem(),
        src.file_stem(),
        "the target keeps the source's file name"
    );
    assert_eq!(
        d.new_path.extension().and_then(|e| e.to_str()),
        Some("qcow2"),
        "the extension follows the target format"
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

#[test]
fn one_failing_disk_cancels_all_and_the_vm_stays_on_every_source() {
    let _g = serial();
    let dir = tempfile::tempdir().expect("tmp");
    let a = dir.path().join("ok.qcow2");
    let b = dir.path().join("bad.raw");
    stamped_image(&a, 16 * MIB, "qcow2");
    stamped_image(&b, 8 * MIB, "raw");
    // A pre-existing volume that is larger than disk 2 and handed to QEMU whole: its mirror
    // dies asynchronously ("different sizes") while disk 1's mirror is fine.
    let vol = dir.path().join("volume.raw");
    std::fs::File::create(&vol)
        .expect("create")
        .set_len(12 * MIB)
        .expect("truncate");
    let dest = dir.path().join("dst");
    std::fs::create_dir(&dest).expect("mkdir");
    let _vm = Vm::paused(
        dir.path(),
        &[
            Disk {
                path: a.clone(),
                format: "qcow2",
            },
            Disk {
                path: b.clone(),
                format: "raw",
            },
        ],
    );
    let mut qmp = _vm.qmp();
    let mut o = opts(&dest);
    o.existing_targets = vec![vmshift_qmp::ExistingTarget {
        disk: "vd1".into(),
        path: vol.clone(),
        expose_exact_size: false,
    }];
    let plan = LiveMigration::plan(&mut qmp, &o).expect("plan");
    assert_eq!(plan.disks.len(), 2);
    let err = LiveMigration::run(
        &mut qmp,
        &plan,
        &mut quiet_progress(),
        &AtomicBool::new(false),
    )
    .expect_err("disk 2 fails");
    match &err {
        LiveError::JobFailed { device, message } => {
            assert_eq!(device, "vd1");
            assert!(message.contains("different sizes"), "{message}");
        }
        other => panic!("expected JobFailed, got {other:?}"),
    }
    assert_eq!(
        attached(&mut qmp, "vd0"),
        ("disk0".to_owned(), a.display().to_string())
    );
    assert_eq!(
        attached(&mut qmp, "vd1"),
        ("disk1".to_owned(), b.display().to_string())
    );
    assert_no_leftovers(&mut qmp, &[]);
    assert_eq!(
        std::fs::read_dir(&dest).expect("ls").count(),
        0,
        "disk 1's target left behind"
    );
    assert!(
        vol.exists(),
        "the pre-existing volume is not ours to delete"
    );
}

#[test]
fn disk_already_in_a_block_job_is_refused() {
    let _g = serial();
    let dir = tempfile::tempdir().expect("tmp");
    let src = dir.path().join("busy.raw");
    stamped_image(&src, 4 * MIB, "raw");
    let dest = dir.path().join("dst");
    std::fs::create_dir(&dest).expect("mkdir");
    let _vm = Vm::paused(
        dir.path(),
        &[Disk {
            path: src,
            format: "raw",
        }],
    );
    let mut qmp = _vm.qmp();
    // Someone else's mirror, throttled so it is still running when we check.
    let other = dir.path().join("other.raw");
    run("qemu-img", &["create", "-q", "-f", "raw", p(&other), "4M"]);
    qmp.call(
        "blockdev-add",
        serde_json::json!({"driver": "raw", "node-name": "other",
            "file": {"driver": "file", "filename": p(&other)}}),
    )
    .expect("add");
    qmp.call(
        "blockdev-mirror",
        serde_json::json!({"job-id": "theirs", "device": "disk0", "target": "other",
            "sync": "full", "speed": 65536}),
    )
    .expect("mirror");
    match LiveMigration::plan(&mut qmp, &opts(&dest)) {
        Err(LiveError::Refused(r)) => {
            assert!(r[0].reason.contains("block job"), "{r:?}");
            assert_eq!(r[0].device, "vd0");
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    vmshift_qmp::live::cancel_and_wait(&mut qmp, "theirs").expect("cancel theirs");
}

/// A QEMU started by hand for graph shapes the test VM helper does not build; killed on drop.
struct RawQemu(std::process::Child);

impl Drop for RawQemu {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn read_only_disks_are_skipped_by_default_and_shared_disks_refused() {
    let _g = serial();
    let dir = tempfile::tempdir().expect("tmp");
    let (ro, sh) = (dir.path().join("ro.raw"), dir.path().join("shared.raw"));
    stamped_image(&ro, MIB, "raw");
    stamped_image(&sh, MIB, "raw");
    let dest = dir.path().join("dst");
    std::fs::create_dir(&dest).expect("mkdir");
    let sock = dir.path().join("qmp.sock");
    let blockdev = |node: &str, path: &std::path::Path, ro: bool| {
        [
            serde_json::json!({"driver": "file", "node-name": format!("{node}-file"), "filename": path, "read-only": ro})
                .to_string(),
            serde_json::json!({"driver": "raw", "node-name": node, "file": format!("{node}-file"), "read-only": ro})
                .to_string(),
        ]
    };
    let [a0, a1] = blockdev("disk0", &ro, true);
    let [b0, b1] = blockdev("disk1", &sh, false);
    let child = std::process::Command::new("qemu-system-x86_64")
        .args([
            "-machine",
            "q35,accel=tcg",
            "-nodefaults",
            "-display",
            "none",
            "-S",
            "-m",
            "64",
        ])
        .args([
            "-blockdev",
            &a0,
            "-blockdev",
            &a1,
            "-device",
            "virtio-blk-pci,drive=disk0,id=vd0",
        ])
        .args(["-blockdev", &b0, "-blockdev", &b1])
        .args(["-device", "virtio-blk-pci,drive=disk1,id=vd1,share-rw=on"])
        .arg("-qmp")
        .arg(format!("unix:{},server=on,wait=off", sock.display()))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("qemu");
    let _q = RawQemu(child);
    let mut qmp = vmshift_qmp::Qmp::connect(&sock, Duration::from_secs(20)).expect("qmp");
    let disks = vmshift_qmp::disk::discover(&mut qmp).expect("discover");
    assert!(disks[0].read_only && !disks[0].shared);
    assert!(!disks[1].read_only && disks[1].shared);
    // Default selection: the read-only disk is not a candidate, the shared one is refused.
    match LiveMigration::plan(&mut qmp, &opts(&dest)) {
        Err(LiveError::Refused(r)) => {
            assert_eq!(r.len(), 1, "{r:?}");
            assert_eq!(r[0].device, "vd1");
            assert!(r[0].reason.contains("share-rw=on"), "{r:?}");
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    // Naming the read-only disk explicitly: refused with its reason.
    let mut o = opts(&dest);
    o.disks = vec!["vd0".into()];
    match LiveMigration::plan(&mut qmp, &o) {
        Err(LiveError::Refused(r)) => assert!(r[0].reason.contains("read-only"), "{r:?}"),
        other => panic!("expected a refusal, got {other:?}"),
    }
    assert_eq!(std::fs::read_dir(&dest).expect("ls").count(), 0);
}

#[test]
fn file_names_with_colons_spaces_quotes_and_dashes_move_without_a_shell() {
    let _g = serial();
    let dir = tempfile::tempdir().expect("tmp");
    let src_dir = dir.path().join("VM images");
    let dest = dir.path().join("new store");
    std::fs::create_dir_all(&src_dir).expect("mkdir");
    std::fs::create_dir_all(&dest).expect("mkdir");
    let src = src_dir.join("-disk:1 & 'q' $(touch PWNED) dísk.qcow2");
    stamped_image(&src, 2 * MIB, "qcow2");
    let mut vm = Vm::paused(
        dir.path(),
        &[Disk {
            path: src.clone(),
            format: "qcow2",
        }],
    );
    let mut qmp = vm.qmp();
    let plan = LiveMigration::plan(&mut qmp, &opts(&dest)).expect("plan");
    let out = LiveMigration::run(
        &mut qmp,
        &plan,
        &mut quiet_progress(),
        &AtomicBool::new(false),
    )
    .expect("run");
    let target = dest
        .canonicalize()
        .expect("canon")
        .join(src.file_name().expect("name"));
    assert_eq!(out.disks[0].new_path, target);
    vm.quit(&mut qmp);
    let raw = to_raw(&target, "qcow2");
    let rep = vmshift_qmp::stamp::verify_raw(&raw, None, 0).expect("stamps intact");
    assert_eq!(rep.blocks, 512);
    let pwned = std::process::Command::new("find")
        .arg(dir.path())
        .args(["-name", "PWNED"])
        .output()
        .expect("find");
    assert!(
        pwned.stdout.is_empty(),
        "a shell ran: {}",
        String::from_utf8_lossy(&pwned.stdout)
    );
}
