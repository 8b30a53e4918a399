//! Crafted qcow2 images reach the operator as one line (issue #18): `vmshift check` and
//! `vmshift migrate` exit 2 with the offset named, the source stays byte-identical and
//! nothing appears at the destination. The full set of crafted images is tested against
//! the parser in crates/image/tests/crafted.rs; here two of them go through the binary.

mod common;
use common::*;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

/// A fresh `qemu-img create` image (64 KiB clusters, 4 MiB) with the bytes `patch` returns
/// written at the offset it returns (`patch` sees the image first, to find its tables).
fn patched(ws: &Ws, name: &str, patch: impl FnOnce(&[u8]) -> (u64, Vec<u8>)) -> PathBuf {
    let img = ws.path(name);
    qemu_img(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-o",
        "cluster_size=65536",
        p(&img),
        "4M",
    ]);
    let head = std::fs::read(&img).unwrap();
    let (offset, bytes) = patch(&head);
    let f = std::fs::File::options().write(true).open(&img).unwrap();
    f.write_all_at(&bytes, offset).unwrap();
    img
}

fn be64(b: &[u8], off: usize) -> u64 {
    u64::from_be_bytes(b[off..off + 8].try_into().unwrap())
}

/// Runs `vmshift CMD SRC --to DST` with a time limit.
fn run_vmshift(ws: &Ws, cmd: &str, src: &Path, dst: &Path) -> std::process::Output {
    ws.vmshift()
        .arg(cmd)
        .arg(src)
        .arg("--to")
        .arg(dst)
        .timeout(std::time::Duration::from_secs(60))
        .output()
        .unwrap()
}

fn assert_refused_in_one_line(ws: &Ws, src: &Path, needle: &str) {
    let before = std::fs::read(src).unwrap();
    let dst = ws.mkdir(&format!(
        "dst-{}",
        src.file_name().unwrap().to_string_lossy()
    ));

    // check: the plan on stdout, the refusal one line of it; nothing on stderr.
    let out = run_vmshift(ws, "check", src, &dst);
    let (stdout, err) = (String::from_utf8_lossy(&out.stdout), stderr(&out));
    assert_eq!(out.status.code(), Some(2), "check: {stdout}{err}");
    assert!(err.is_empty(), "check wrote to stderr: {err}");
    let hits: Vec<&str> = stdout.lines().filter(|l| l.contains(needle)).collect();
    assert_eq!(hits.len(), 1, "check: {stdout}");
    assert!(hits[0].starts_with("refused: "), "{}", hits[0]);

    // migrate: progress lines, and the reason in exactly one of them.
    let out = run_vmshift(ws, "migrate", src, &dst);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "migrate: {err}");
    assert!(!err.contains("panicked"), "{err}");
    let hits: Vec<&str> = err.lines().filter(|l| l.contains(needle)).collect();
    assert_eq!(hits.len(), 1, "migrate: {err}");
    assert!(hits[0].starts_with("vmshift: refused: "), "{}", hits[0]);
    let reasons = err.lines().filter(|l| l.contains("refused")).count();
    assert_eq!(reasons, 1, "the reason is said once: {err}");

    assert_eq!(std::fs::read(src).unwrap(), before, "the source changed");
    assert!(listing(&dst).is_empty(), "{:?}", listing(&dst));
}

#[test]
fn crafted_qcow2_images_are_refused_in_one_line_naming_the_offset() {
    let ws = Ws::new();
    // An L1 size of 2^31 entries (a 16 GiB table): refused from the header.
    let huge_l1 = patched(&ws, "huge-l1.qcow2", |_| {
        (36, (1u32 << 31).to_be_bytes().to_vec())
    });
    assert_refused_in_one_line(
        &ws,
        &huge_l1,
        "invalid header field l1_size at offset 0x24: 0x80000000",
    );
    // The L2 table of L1 entry 0 placed on the refcount table: refused by the table walk.
    let l2_on_reftable = patched(&ws, "l2-on-reftable.qcow2", |h| {
        let (l1, reftable) = (be64(h, 40), be64(h, 48));
        (l1, ((1u64 << 63) | reftable).to_be_bytes().to_vec())
    });
    assert_refused_in_one_line(
        &ws,
        &l2_on_reftable,
        "L2 table 0 at 0x10000 overlaps the refcount table",
    );
}
