//! Issue 11: a file is never read as a format its owner did not mean, a backing name is
//! followed only to an image of the recorded format inside the datastore, and nothing the
//! source has is lost without the operator saying so.

mod common;
use common::*;
use serde_json::Value;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

/// `vmshift check ... --json`: (exit code, problem codes, whole output).
fn check(ws: &Ws, src: &Path, to: &Path, extra: &[&str]) -> (i32, Vec<String>, String) {
    let out = ws
        .vmshift()
        .arg("check")
        .arg(src)
        .arg("--to")
        .arg(to)
        .args(extra)
        .arg("--json")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string() + &stderr(&out);
    let plan: Value = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|v| v["event"] == "plan")
        .unwrap_or(Value::Null);
    let codes = plan["plan"]["problems"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|p| p["code"].as_str().unwrap_or_default().to_string())
                .collect()
        })
        .unwrap_or_default();
    (out.status.code().unwrap_or(-1), codes, text)
}

/// A raw guest disk whose first bytes are a qcow2 header naming `backing` as its raw
/// backing file (what a guest can write into its own disk).
fn raw_disk_with_qcow2_header(ws: &Ws, disk: &Path, backing: &Path) {
    let hdr = ws.path("hdr.qcow2");
    qemu_img(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-u",
        "-b",
        p(backing),
        "-F",
        "raw",
        p(&hdr),
        "1M",
    ]);
    let mut bytes = std::fs::read(&hdr).unwrap();
    bytes.resize(4 << 20, 0);
    std::fs::write(disk, bytes).unwrap();
}

#[test]
fn a_raw_disk_holding_a_qcow2_header_is_refused_naming_both_formats() {
    let ws = Ws::new();
    let vm = ws.mkdir("store/vm");
    let dest = ws.mkdir("dest");
    ws.mkdir("host");
    let secret = ws.path("host/secret");
    std::fs::write(&secret, "SECRET-HOST-DATA\n".repeat(64)).unwrap();
    let disk = vm.join("disk.raw");
    raw_disk_with_qcow2_header(&ws, &disk, &secret);

    let (code, codes, text) = check(&ws, &disk, &dest, &[]);
    assert_eq!(code, 2, "{text}");
    assert_eq!(codes, ["format_name_mismatch"], "{text}");
    assert!(
        text.contains("named as a raw image but its header says qcow2"),
        "{text}"
    );
    assert!(text.contains("--source-format raw"), "{text}");

    let (code, _, out) = ws.migrate(&disk, &dest, &[]);
    assert_eq!(code, 2, "{}", stderr(&out));
    assert!(listing(&dest).is_empty(), "{:?}", listing(&dest));

    // Stated as raw: a byte-identical raw copy, the host file never read into it.
    let (code, report, out) = ws.migrate(&disk, &dest, &["--source-format", "raw"]);
    assert_eq!(code, 0, "{}", stderr(&out));
    let target = dest.join("disk.raw");
    assert_eq!(report["destination"]["format"], "raw");
    assert_eq!(
        std::fs::read(&target).unwrap(),
        std::fs::read(&disk).unwrap()
    );
    let bytes = std::fs::read(&target).unwrap();
    assert!(!bytes.windows(16).any(|w| w == b"SECRET-HOST-DATA"));
}

#[test]
fn a_qcow2_name_without_a_qcow2_header_is_refused() {
    let ws = Ws::new();
    let vm = ws.mkdir("store/vm");
    let dest = ws.mkdir("dest");
    let disk = vm.join("disk.qcow2");
    std::fs::write(&disk, random_bytes(1 << 20, 3)).unwrap();
    let (code, codes, text) = check(&ws, &disk, &dest, &[]);
    assert_eq!(code, 2, "{text}");
    assert_eq!(codes, ["format_name_mismatch"], "{text}");
    assert!(
        text.contains("named as a qcow2 image but its header says raw"),
        "{text}"
    );
}

#[test]
fn a_backing_file_that_is_a_text_file_or_outside_the_datastore_is_refused_naming_it() {
    let ws = Ws::new();
    let vm = ws.mkdir("store/vm");
    let dest = ws.mkdir("dest");
    std::fs::write(vm.join("notes.txt"), "root:x:0:0:root:/root:/bin/bash\n").unwrap();
    run_in(
        &vm,
        "qemu-img",
        &[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-u",
            "-b",
            "notes.txt",
            "-F",
            "raw",
            "top.qcow2",
            "1M",
        ],
    );
    let (code, codes, text) = check(&ws, &vm.join("top.qcow2"), &dest, &[]);
    assert_eq!(code, 2, "{text}");
    assert_eq!(codes, ["backing_not_image"], "{text}");
    assert!(text.contains("notes.txt"), "{text}");

    // An image, but outside the datastore (store/): refused naming it.
    ws.mkdir("host");
    let outside = ws.path("host/base.raw");
    std::fs::write(&outside, vec![7u8; 1 << 20]).unwrap();
    run_in(
        &vm,
        "qemu-img",
        &[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-u",
            "-b",
            p(&outside),
            "-F",
            "raw",
            "top2.qcow2",
            "1M",
        ],
    );
    let (code, codes, text) = check(&ws, &vm.join("top2.qcow2"), &dest, &[]);
    assert_eq!(code, 2, "{text}");
    assert_eq!(codes, ["backing_outside"], "{text}");
    assert!(text.contains(p(&outside)), "{text}");

    // The same base inside the datastore is followed.
    let tpl = ws.mkdir("store/tpl");
    std::fs::copy(&outside, tpl.join("base.raw")).unwrap();
    run_in(
        &vm,
        "qemu-img",
        &[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-u",
            "-b",
            "../tpl/base.raw",
            "-F",
            "raw",
            "top3.qcow2",
            "1M",
        ],
    );
    let (code, _, text) = check(&ws, &vm.join("top3.qcow2"), &dest, &[]);
    assert_eq!(code, 0, "{text}");
}

#[test]
fn a_target_name_never_contradicts_its_format() {
    let ws = Ws::new();
    let vm = ws.mkdir("store/vm");
    let disk = vm.join("disk.qcow2");
    qemu_img(&["create", "-q", "-f", "qcow2", p(&disk), "4M"]);
    let (code, codes, text) = check(&ws, &disk, &ws.path("x.raw"), &["--format", "qcow2"]);
    assert_eq!(code, 2, "{text}");
    assert_eq!(codes, ["target_name_format"], "{text}");
}

/// Sets the `in_use` flag of bitmap `name` in its directory entry (as a QEMU killed while
/// the bitmap was live leaves it).
fn mark_bitmap_in_use(img: &Path, name: &str) {
    let mut b = std::fs::read(img).unwrap();
    let at = b
        .windows(name.len())
        .position(|w| w == name.as_bytes())
        .expect("bitmap name in the directory");
    let flags = at - 24 + 12;
    b[flags + 3] |= 1;
    std::fs::write(img, b).unwrap();
}

#[test]
fn snapshots_and_bitmaps_refuse_the_copy_unless_dropped_then_each_is_a_warning() {
    let ws = Ws::new();
    let vm = ws.mkdir("store/vm");
    let dest = ws.mkdir("dest");
    let disk = vm.join("disk.qcow2");
    qemu_img(&["create", "-q", "-f", "qcow2", p(&disk), "8M"]);
    qemu_io("qcow2", &disk, &["write -P 0x5a 0 1M"]);
    qemu_img(&["snapshot", "-c", "before-upgrade", p(&disk)]);
    qemu_img(&["bitmap", "--add", p(&disk), "backup-inc"]);
    qemu_img(&["bitmap", "--add", p(&disk), "stale-bitmap-x"]);
    mark_bitmap_in_use(&disk, "stale-bitmap-x");

    let (code, codes, text) = check(&ws, &disk, &dest, &[]);
    assert_eq!(code, 2, "{text}");
    assert_eq!(
        codes,
        ["would_drop_snapshots", "would_drop_bitmaps"],
        "{text}"
    );
    assert!(text.contains("1 internal snapshot(s)"), "{text}");
    assert!(text.contains("\\\"backup-inc\\\""), "{text}");
    assert!(
        text.contains("\\\"stale-bitmap-x\\\" (marked in use: inconsistent)"),
        "{text}"
    );
    assert!(text.contains("--drop snapshots"), "{text}");
    let (code, _, out) = ws.migrate(&disk, &dest, &[]);
    assert_eq!(code, 2, "{}", stderr(&out));
    assert!(listing(&dest).is_empty());

    let (code, report, out) = ws.migrate(&disk, &dest, &["--drop", "snapshots,bitmaps"]);
    assert_eq!(code, 0, "{}", stderr(&out));
    let warnings: Vec<&str> = report["warnings"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert!(
        warnings
            .iter()
            .any(|w| w.contains("internal snapshot") && w.contains("--drop snapshots")),
        "{warnings:?}"
    );
    assert!(
        warnings
            .iter()
            .any(|w| w.contains("persistent dirty bitmaps") && w.contains("--drop bitmaps")),
        "{warnings:?}"
    );
    assert!(stderr(&out).contains("warning: "), "{}", stderr(&out));
    assert!(identical(&disk, &dest.join("disk.qcow2")));
}

#[test]
fn a_compat_0_10_source_stays_compat_0_10_and_v3_options_are_kept() {
    let ws = Ws::new();
    let vm = ws.mkdir("store/vm");
    let dest = ws.mkdir("dest");
    let v2 = vm.join("old.qcow2");
    qemu_img(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-o",
        "compat=0.10,cluster_size=131072",
        p(&v2),
        "8M",
    ]);
    qemu_io("qcow2", &v2, &["write -P 0x11 0 1M"]);
    let (code, _, out) = ws.migrate(&v2, &dest, &[]);
    assert_eq!(code, 0, "{}", stderr(&out));
    let t = info(&dest.join("old.qcow2"));
    assert_eq!(t["format-specific"]["data"]["compat"], "0.10", "{t}");
    assert_eq!(t["cluster-size"], 131072);
    assert!(identical(&v2, &dest.join("old.qcow2")));

    let v3 = vm.join("new.qcow2");
    qemu_img(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-o",
        "refcount_bits=64,lazy_refcounts=on",
        p(&v3),
        "8M",
    ]);
    qemu_io("qcow2", &v3, &["write -P 0x22 0 1M"]);
    let (code, _, out) = ws.migrate(&v3, &dest, &[]);
    assert_eq!(code, 0, "{}", stderr(&out));
    let t = info(&dest.join("new.qcow2"));
    let d = &t["format-specific"]["data"];
    assert_eq!(d["compat"], "1.1", "{t}");
    assert_eq!(d["refcount-bits"], 64, "{t}");
    assert_eq!(d["lazy-refcounts"], true, "{t}");
}

#[test]
fn the_target_gets_the_source_owner_mode_and_xattrs_and_the_partial_is_private() {
    let ws = Ws::new();
    let vm = ws.mkdir("store/vm");
    let dest = ws.mkdir("dest");
    let disk = vm.join("disk.raw");
    std::fs::write(&disk, random_bytes(4 << 20, 9)).unwrap();
    std::fs::set_permissions(&disk, std::fs::Permissions::from_mode(0o640)).unwrap();
    if is_root() {
        run("chown", &["1234:5678", p(&disk)]);
    }
    let xattr =
        rustix::fs::setxattr(&disk, "user.vm", b"web01", rustix::fs::XattrFlags::empty()).is_ok();
    let (code, _, out) = ws.migrate(&disk, &dest, &[]);
    assert_eq!(code, 0, "{}", stderr(&out));
    let m = std::fs::metadata(dest.join("disk.raw")).unwrap();
    assert_eq!(m.mode() & 0o7777, 0o640);
    if is_root() {
        assert_eq!((m.uid(), m.gid()), (1234, 5678));
    }
    if xattr {
        let mut v = [0u8; 16];
        let n = rustix::fs::getxattr(dest.join("disk.raw"), "user.vm", &mut v[..]).unwrap();
        assert_eq!(&v[..n], b"web01");
    } else {
        eprintln!(
            "user xattrs not supported on {}: xattr part skipped",
            vm.display()
        );
    }

    // While the copy runs, the partial target is readable by its owner only.
    let big = vm.join("big.raw");
    std::fs::write(&big, random_bytes(24 << 20, 5)).unwrap();
    let dest2 = ws.mkdir("dest2");
    let copying = ws.start_copying(&big, &dest2, "2M");
    let partial = dest2.join("big.raw.vmshift-partial");
    let mut mode = None;
    for _ in 0..200 {
        if let Ok(m) = std::fs::metadata(&partial) {
            mode = Some(m.mode() & 0o777);
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(25));
    }
    run("kill", &["-9", &copying.pid().to_string()]);
    let _ = copying.finish();
    assert_eq!(mode, Some(0o600));
}

#[test]
fn the_report_destination_always_carries_its_backing_chain() {
    let ws = Ws::new();
    let vm = ws.mkdir("store/vm");
    let dest = ws.mkdir("store/dest");
    let base = vm.join("base.qcow2");
    qemu_img(&["create", "-q", "-f", "qcow2", p(&base), "4M"]);
    let top = overlay(&vm, "base.qcow2", "top.qcow2");
    qemu_io("qcow2", &top, &["write -P 0x33 0 64k"]);
    let (code, report, out) = ws.migrate(&top, &dest, &[]);
    assert_eq!(code, 0, "{}", stderr(&out));
    assert_eq!(
        report["destination"]["backing_chain"],
        serde_json::json!([])
    );
    std::fs::remove_file(dest.join("top.qcow2")).unwrap();
    let (code, report, out) = ws.migrate(&top, &dest, &["--keep-backing"]);
    assert_eq!(code, 0, "{}", stderr(&out));
    let chain = report["destination"]["backing_chain"].as_array().unwrap();
    assert_eq!(chain.len(), 1);
    assert!(
        chain[0].as_str().unwrap().ends_with("store/vm/base.qcow2"),
        "{chain:?}"
    );
}

#[test]
fn check_of_a_device_reports_its_size_and_does_not_suggest_overwrite() {
    if !is_root() {
        eprintln!("skipped: losetup needs root");
        return;
    }
    let ws = Ws::new();
    let vm = ws.mkdir("store/vm");
    let disk = vm.join("disk.raw");
    std::fs::write(&disk, random_bytes(32 << 20, 1)).unwrap();
    let backing = ws.path("dev.img");
    std::fs::File::create(&backing)
        .unwrap()
        .set_len(8 << 20)
        .unwrap();
    let out = std::process::Command::new("losetup")
        .args(["-f", "--show", p(&backing)])
        .output()
        .unwrap();
    if !out.status.success() {
        eprintln!("skipped: losetup failed: {}", stderr(&out));
        return;
    }
    let dev = String::from_utf8_lossy(&out.stdout).trim().to_string();
    struct Detach(String);
    impl Drop for Detach {
        fn drop(&mut self) {
            let _ = std::process::Command::new("losetup")
                .args(["-d", &self.0])
                .status();
        }
    }
    let _d = Detach(dev.clone());
    let (code, codes, text) = check(&ws, &disk, Path::new(&dev), &[]);
    assert_eq!(code, 2, "{text}");
    assert!(codes.contains(&"target_device".to_string()), "{codes:?}");
    assert!(
        text.contains("8388608 bytes (8.0 MiB) on the device"),
        "{text}"
    );
    assert!(!text.contains("--overwrite"), "{text}");
}
