//! Inputs that must be refused: exit 2, one clear line naming the image, nothing written at
//! the destination, the source untouched.

mod common;
use common::*;
use std::path::Path;

fn assert_refused(ws: &Ws, src: &Path, extra: &[&str], needle: &str) {
    let dst = ws.mkdir(&format!("dst-{}", needle.len()));
    let before = std::fs::read(src).ok();
    let (code, r, out) = ws.migrate(src, &dst, extra);
    let err = stderr(&out);
    assert_eq!(code, 2, "not refused: {err}");
    assert_eq!(r["status"], "refused");
    // One line with the reason (plus the job id and where the report is).
    let lines: Vec<&str> = err.lines().collect();
    assert!(lines.len() <= 5, "refusal is not short: {err}");
    let line = lines
        .iter()
        .find(|l| l.starts_with("vmshift: refused: "))
        .unwrap_or_else(|| panic!("no refusal line: {err}"));
    assert!(line.contains(needle), "{line}");
    assert!(!err.contains("panicked"));
    assert!(listing(&dst).is_empty(), "{:?}", listing(&dst));
    assert_eq!(std::fs::read(src).ok(), before, "source changed");
}

#[test]
fn missing_backing_file_is_refused() {
    let ws = Ws::new();
    let base = ws.path("base.qcow2");
    let top = ws.path("top.qcow2");
    qemu_img(&["create", "-q", "-f", "qcow2", p(&base), "8M"]);
    overlay(ws.dir.path(), "base.qcow2", "top.qcow2");
    std::fs::remove_file(&base).unwrap();
    assert_refused(
        &ws,
        &top,
        &[],
        "base.qcow2 cannot be opened: No such file or directory (os error 2); it is the backing file of ",
    );
}

#[test]
fn backing_loop_is_refused() {
    let ws = Ws::new();
    let a = ws.path("a.qcow2");
    let b = ws.path("b.qcow2");
    run_in(
        ws.dir.path(),
        "qemu-img",
        &["create", "-q", "-f", "qcow2", "a.qcow2", "8M"],
    );
    overlay(ws.dir.path(), "a.qcow2", "b.qcow2");
    // Point a at b: a loop (made with -u, which does not open the backing file).
    run_in(
        ws.dir.path(),
        "qemu-img",
        &["rebase", "-u", "-b", "b.qcow2", "-F", "qcow2", "a.qcow2"],
    );
    assert_refused(&ws, &b, &[], "loop");
    let _ = a;
}

#[test]
fn a_source_held_by_a_running_qemu_is_refused_and_force_share_marks_the_copy() {
    let ws = Ws::new();
    let img = ws.path("vm.qcow2");
    qemu_img(&["create", "-q", "-f", "qcow2", p(&img), "16M"]);
    qemu_io("qcow2", &img, &["write -P 0x42 0 1M"]);
    let vm = RunningQemu::start(&img, "qcow2");
    assert_refused(&ws, &img, &[], "in use by a running VM");
    let (code, r, out) = ws.migrate(&img, &ws.mkdir("forced"), &["--force-share"]);
    drop(vm);
    assert_eq!(code, 0, "{}", stderr(&out));
    assert_eq!(r["consistency"], "crash_consistent");
    assert!(r["warnings"].to_string().contains("crash-consistent"));
}

#[test]
fn a_qcow2_with_a_broken_header_is_refused() {
    let ws = Ws::new();
    let img = ws.path("bad.qcow2");
    let mut bytes = vec![0u8; 4096];
    bytes[..4].copy_from_slice(b"QFI\xfb");
    bytes[4..8].copy_from_slice(&3u32.to_be_bytes());
    bytes[20..24].copy_from_slice(&99u32.to_be_bytes());
    std::fs::write(&img, bytes).unwrap();
    assert_refused(&ws, &img, &[], "invalid qcow2 header");
}

#[test]
fn other_formats_are_refused_with_a_conversion_hint() {
    let ws = Ws::new();
    let img = ws.path("disk.vmdk");
    qemu_img(&["create", "-q", "-f", "vmdk", p(&img), "8M"]);
    assert_refused(&ws, &img, &[], "vmdk");
}

#[test]
fn bad_usage_exits_2_with_one_line() {
    let ws = Ws::new();
    let out = ws
        .vmshift()
        .args(["migrate", "/nonexistent/disk.qcow2", "--to", "/tmp"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("/nonexistent/disk.qcow2 cannot be opened"));
    let src = ws.path("d.raw");
    std::fs::write(&src, [1u8; 4096]).unwrap();
    let out = ws
        .vmshift()
        .args([
            "migrate",
            p(&src),
            "--to",
            p(ws.dir.path()),
            "--bwlimit",
            "fast",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("invalid size \"fast\""),
        "{}",
        stderr(&out)
    );
    // Destination directory missing.
    let out = ws
        .vmshift()
        .args(["migrate", p(&src), "--to", "/nonexistent-dir/"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("does not exist"));
    // Source onto itself.
    let out = ws
        .vmshift()
        .args(["migrate", p(&src), "--to", p(&src), "--overwrite"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("is the source image"));
    assert_eq!(std::fs::read(&src).unwrap(), vec![1u8; 4096]);
}

#[test]
fn offline_io_and_verify_modes_are_refused_for_a_live_copy() {
    let ws = Ws::new();
    for (flag, value) in [("--io", "direct"), ("--verify", "after-copy")] {
        let out = ws
            .vmshift()
            .args([
                "migrate",
                "--qmp",
                "/tmp/x.sock",
                "--to",
                "/tmp",
                flag,
                value,
            ])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{flag}");
        assert!(stderr(&out).contains(flag), "{}", stderr(&out));
    }
}

#[test]
fn a_missing_qmp_socket_is_named_once_with_its_cause() {
    let ws = Ws::new();
    let sock = ws.path("no-such.sock");
    let out = ws
        .vmshift()
        .args(["migrate", "--qmp", p(&sock), "--to", p(&ws.mkdir("dst"))])
        .output()
        .unwrap();
    assert_ne!(out.status.code(), Some(0));
    let err = stderr(&out);
    let line = err
        .lines()
        .find(|l| l.contains("cannot talk to QEMU"))
        .unwrap_or_else(|| panic!("{err}"));
    assert!(line.contains(p(&sock)), "{line}");
    assert_eq!(
        line.matches("No such file or directory").count(),
        1,
        "{line}"
    );
}

#[test]
fn a_fifo_source_is_refused_without_being_opened() {
    let ws = Ws::new();
    let fifo = ws.path("pipe.raw");
    run("mkfifo", &[p(&fifo)]);
    let dst = ws.mkdir("dst");
    for args in [
        vec!["info", p(&fifo)],
        vec!["check", p(&fifo), "--to", p(&dst)],
        vec!["migrate", p(&fifo), "--to", p(&dst)],
    ] {
        // Opening a FIFO blocks until a writer comes: a hang here is the bug.
        let out = ws
            .vmshift()
            .args(&args)
            .timeout(std::time::Duration::from_secs(20))
            .output()
            .unwrap();
        let text = format!("{}{}", stderr(&out), String::from_utf8_lossy(&out.stdout));
        assert_eq!(out.status.code(), Some(2), "{args:?}: {text}");
        assert!(
            text.contains("pipe.raw is a FIFO (named pipe), not an image file"),
            "{args:?}: {text}"
        );
    }
    assert!(listing(&dst).is_empty(), "{:?}", listing(&dst));
}

#[test]
fn a_target_in_dev_that_is_no_device_is_refused() {
    let ws = Ws::new();
    let src = ws.path("d.raw");
    std::fs::write(&src, [7u8; 65536]).unwrap();
    let name = format!("/dev/vmshift-test-{}", std::process::id());
    for to in [name.as_str(), "/dev/"] {
        let out = ws
            .vmshift()
            .args(["migrate", p(&src), "--to", to])
            .output()
            .unwrap();
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(2), "{to}: {err}");
        assert!(
            err.contains("lies in /dev, where vmshift creates nothing"),
            "{err}"
        );
    }
    assert!(!Path::new(&name).exists());
    assert!(!Path::new("/dev/d.raw").exists());
}

#[test]
fn a_negative_bandwidth_limit_is_named_as_a_bad_size_not_an_unknown_flag() {
    let ws = Ws::new();
    let src = ws.path("d.raw");
    std::fs::write(&src, [7u8; 4096]).unwrap();
    let out = ws
        .vmshift()
        .args([
            "migrate",
            p(&src),
            "--to",
            p(ws.dir.path()),
            "--bwlimit",
            "-5M",
        ])
        .output()
        .unwrap();
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("invalid size \"-5M\""), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
}
