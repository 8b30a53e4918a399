//! What an operator's options could destroy is refused, and a source that changes under the
//! copy is caught (found by a fresh user trying to break vmshift).

mod common;
use common::*;
use std::time::Duration;

fn qcow2(ws: &Ws, name: &str) -> std::path::PathBuf {
    let img = ws.path(name);
    qemu_img(&["create", "-q", "-f", "qcow2", p(&img), "16M"]);
    qemu_io("qcow2", &img, &["write -P 0x42 0 2M"]);
    img
}

#[test]
fn a_report_path_on_the_source_or_target_is_refused() {
    let ws = Ws::new();
    let src = qcow2(&ws, "victim.qcow2");
    let before = std::fs::read(&src).unwrap();
    let (code, _, out) = ws.migrate(&src, &ws.mkdir("d"), &["--report", p(&src)]);
    assert_eq!(code, 2);
    assert!(
        stderr(&out).contains("would overwrite an image"),
        "{}",
        stderr(&out)
    );
    assert!(
        std::fs::read(&src).unwrap() == before,
        "the source was overwritten"
    );
    let tgt = ws.path("d/new.qcow2");
    let (code, _, _) = ws.migrate(&src, &tgt, &["--report", p(&tgt)]);
    assert_eq!(code, 2);
    assert!(!tgt.exists());
    // Any existing file that is not a report is left alone, offline and live.
    let other = qcow2(&ws, "other.qcow2");
    let (code, _, _) = ws.migrate(&src, &ws.mkdir("o"), &["--report", p(&other)]);
    assert_eq!(code, 2);
    let out = ws
        .vmshift()
        .args([
            "migrate",
            "--qmp",
            "/nonexistent.sock",
            "--to",
            p(&ws.mkdir("l")),
            "--report",
            p(&other),
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(std::fs::read(&other).unwrap()[..4], *b"QFI\xfb");
    let (code, _, out) = ws.migrate(
        &src,
        &ws.mkdir("e"),
        &["--report", "/nonexistent-dir/r.json"],
    );
    assert_eq!(
        code, 2,
        "a report that cannot be written must be refused before copying"
    );
    assert!(stderr(&out).contains("not writable"));
    assert!(listing(&ws.path("e")).is_empty());
}

#[test]
fn delete_source_is_refused_for_a_running_vms_disk_and_for_snapshots() {
    let ws = Ws::new();
    let src = qcow2(&ws, "vm.qcow2");
    let vm = RunningQemu::start(&src, "qcow2");
    let (code, _, out) = ws.migrate(&src, &ws.mkdir("d"), &["--force-share", "--delete-source"]);
    drop(vm);
    assert_eq!(code, 2);
    assert!(
        stderr(&out).contains("running VM is using"),
        "{}",
        stderr(&out)
    );
    assert!(src.exists());
    qemu_img(&["snapshot", "-c", "before-upgrade", p(&src)]);
    let (code, _, out) = ws.migrate(&src, &ws.mkdir("s"), &["--delete-source"]);
    assert_eq!(code, 2);
    assert!(
        stderr(&out).contains("internal snapshots"),
        "{}",
        stderr(&out)
    );
    assert!(src.exists());
}

#[test]
fn overwrite_never_replaces_a_running_vms_disk_or_a_backing_file() {
    let ws = Ws::new();
    let src = qcow2(&ws, "src.qcow2");
    let running = qcow2(&ws, "running.qcow2");
    let vm = RunningQemu::start(&running, "qcow2");
    let (code, _, out) = ws.migrate(&src, &running, &["--overwrite"]);
    drop(vm);
    assert_eq!(code, 2);
    assert!(
        stderr(&out).contains("in use by a running VM"),
        "{}",
        stderr(&out)
    );

    let dir = ws.mkdir("ow");
    let base = dir.join("base.qcow2");
    qemu_img(&["create", "-q", "-f", "qcow2", p(&base), "16M"]);
    overlay(&dir, "base.qcow2", "top.qcow2");
    let (code, _, out) = ws.migrate(&src, &base, &["--overwrite"]);
    assert_eq!(code, 2);
    assert!(
        stderr(&out).contains("is the backing file of"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn device_targets_are_refused() {
    let ws = Ws::new();
    let src = qcow2(&ws, "src.qcow2");
    let (code, _, out) = ws.migrate(
        &src,
        std::path::Path::new("/dev/null"),
        &["--overwrite", "--format", "raw"],
    );
    assert_eq!(code, 2);
    assert!(stderr(&out).contains("is a device"), "{}", stderr(&out));
    assert!(std::fs::metadata("/dev/null")
        .unwrap()
        .file_type()
        .is_char_device_like());
}

trait CharDev {
    fn is_char_device_like(&self) -> bool;
}
impl CharDev for std::fs::FileType {
    fn is_char_device_like(&self) -> bool {
        use std::os::unix::fs::FileTypeExt;
        self.is_char_device()
    }
}

#[test]
fn a_base_kept_by_a_shallow_copy_elsewhere_is_not_deleted() {
    let ws = Ws::new();
    let src = ws.mkdir("a");
    let base = src.join("base.qcow2");
    qemu_img(&["create", "-q", "-f", "qcow2", p(&base), "16M"]);
    qemu_io("qcow2", &base, &["write -P 0x11 0 1M"]);
    overlay(&src, "base.qcow2", "vm.qcow2");
    let (code, _, _) = ws.migrate(
        &src.join("vm.qcow2"),
        &ws.mkdir("elsewhere/far"),
        &["--keep-backing", "--delete-source"],
    );
    assert_eq!(code, 0);
    let (code, r, _) = ws.migrate(&base, &ws.mkdir("b"), &["--delete-source"]);
    assert_eq!(code, 0);
    assert!(
        base.exists(),
        "a base that a kept chain still uses was deleted"
    );
    assert!(
        r["warnings"].to_string().contains("far/vm.qcow2"),
        "{}",
        r["warnings"]
    );
}

#[test]
fn a_source_written_behind_the_locks_during_the_copy_fails_verification() {
    let ws = Ws::new();
    let src = ws.path("d.raw");
    std::fs::write(&src, random_bytes(16 << 20, 9)).unwrap();
    let dst = ws.mkdir("dst");
    let child = ws.start_copying(&src, &dst, "8M");
    // A writer that ignores QEMU's locks (like dd) changes an early block.
    use std::os::unix::fs::FileExt;
    let f = std::fs::OpenOptions::new().write(true).open(&src).unwrap();
    f.write_all_at(b"CHANGED!", 100).unwrap();
    drop(f);
    let out = child.finish();
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("changed while it was copied"),
        "{}",
        stderr(&out)
    );
    assert!(listing(&dst).is_empty(), "{:?}", listing(&dst));
}

#[test]
fn a_target_file_name_sets_the_format_unless_told_otherwise() {
    let ws = Ws::new();
    let src = qcow2(&ws, "vm.qcow2");
    let (code, r, _) = ws.migrate(&src, &ws.path("vm.raw"), &[]);
    assert_eq!(code, 0);
    assert_eq!(r["destination"]["format"], "raw");
    assert_eq!(std::fs::metadata(ws.path("vm.raw")).unwrap().len(), 16 * M);
}

/// A paused q35 VM with `img` as virtio disk `vd0` and QMP at `dir/qmp.sock`.
struct PausedVm(std::process::Child, std::path::PathBuf);

impl PausedVm {
    fn start(dir: &std::path::Path, img: &std::path::Path) -> PausedVm {
        let sock = dir.join("qmp.sock");
        let file = serde_json::json!({"driver": "file", "node-name": "f0", "filename": p(img)});
        let fmt = serde_json::json!({"driver": "qcow2", "node-name": "d0", "file": "f0"});
        let child = std::process::Command::new("qemu-system-x86_64")
            .args([
                "-machine",
                "q35,accel=tcg",
                "-m",
                "64",
                "-nodefaults",
                "-display",
                "none",
                "-S",
            ])
            .arg("-blockdev")
            .arg(file.to_string())
            .arg("-blockdev")
            .arg(fmt.to_string())
            .args(["-device", "virtio-blk-pci,drive=d0,id=vd0"])
            .arg("-qmp")
            .arg(format!("unix:{},server=on,wait=off", p(&sock)))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        for _ in 0..200 {
            if sock.exists() {
                break;
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        PausedVm(child, sock)
    }
}

impl Drop for PausedVm {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Runs `vmshift migrate --qmp … --delete-source` against a paused VM on `img`.
fn live_delete(
    ws: &Ws,
    dir: &std::path::Path,
    img: &std::path::Path,
    dst: &str,
) -> std::process::Output {
    let vm = PausedVm::start(dir, img);
    ws.vmshift()
        .args([
            "migrate",
            "--qmp",
            p(&vm.1),
            "--to",
            p(&ws.mkdir(dst)),
            "--delete-source",
        ])
        .output()
        .unwrap()
}

#[test]
fn live_delete_source_is_refused_for_a_backing_file_or_an_image_with_snapshots() {
    let ws = Ws::new();
    let dir = ws.mkdir("store");
    let base = dir.join("base.qcow2");
    qemu_img(&["create", "-q", "-f", "qcow2", p(&base), "16M"]);
    overlay(&dir, "base.qcow2", "child.qcow2");
    let out = live_delete(&ws, &dir, &base, "dst");
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("the backing file of"),
        "{}",
        stderr(&out)
    );
    assert!(base.exists());
    assert!(listing(&ws.path("dst")).is_empty());

    let snap = ws.mkdir("s").join("vm.qcow2");
    qemu_img(&["create", "-q", "-f", "qcow2", p(&snap), "16M"]);
    qemu_img(&["snapshot", "-c", "before-upgrade", p(&snap)]);
    let out = live_delete(&ws, &ws.path("s"), &snap, "dst2");
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("internal snapshots"),
        "{}",
        stderr(&out)
    );
    assert!(snap.exists());
}
