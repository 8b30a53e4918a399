//! The engine's fast read path (`O_DIRECT` on raw files and on the host clusters of qcow2
//! chains) returns exactly what the plain reader returns, aligned or not, across layers,
//! zero clusters and an odd-sized raw file's tail.

mod common;
use common::*;

use vmshift_copy::io::{AlignedBuf, FastSource};
use vmshift_image::ImageReader;

const M: usize = 1 << 20;

/// Every (offset, len) window read through the fast path equals the plain read.
fn assert_same_reads(reader: &ImageReader, size: u64) {
    let fast = FastSource::new(reader, true);
    let mut windows: Vec<(u64, usize)> = vec![
        (0, 4096),
        (0, 2 * M),
        (4096, M),
        (M as u64 - 4096, 3 * M),
        (512, 4096),
        (12_345, 70_000),
    ];
    let tail = size - (size % 4096);
    windows.push((
        tail.saturating_sub(M as u64),
        usize::try_from(size - tail.saturating_sub(M as u64)).unwrap(),
    ));
    for (off, len) in windows {
        if off + len as u64 > size {
            continue;
        }
        let mut a = AlignedBuf::new(len);
        let fast_buf = a.as_mut_slice();
        fast.read_at(fast_buf, off).unwrap();
        let mut plain = vec![0u8; len];
        reader.read_at(&mut plain, off).unwrap();
        assert!(fast_buf == &plain[..], "window {off:#x}+{len:#x} differs");
    }
}

#[test]
fn direct_reads_of_raw_files_match_plain_reads_including_an_odd_tail() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("odd.raw");
    let size = 4 * M + 4097;
    let data: Vec<u8> = (0..size)
        .map(|i| u8::try_from(i * 7 % 251).unwrap() + 1)
        .collect();
    std::fs::write(&p, &data).unwrap();
    let r = open(&p);
    assert_same_reads(&r, size as u64);
}

#[test]
fn direct_reads_of_a_qcow2_chain_match_plain_reads() {
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().join("base.qcow2");
    let top = dir.path().join("top.qcow2");
    create_qcow2(&base, "8M");
    run(&[
        "qemu-io",
        "-f",
        "qcow2",
        "-c",
        "write -P 0x11 0 3M",
        "-c",
        "write -P 0x12 5M 2M",
        base.to_str().unwrap(),
    ]);
    run(&[
        "qemu-img",
        "create",
        "-q",
        "-f",
        "qcow2",
        "-b",
        "base.qcow2",
        "-F",
        "qcow2",
        top.to_str().unwrap(),
    ]);
    run(&[
        "qemu-io",
        "-f",
        "qcow2",
        "-c",
        "write -P 0x22 1M 1M",
        "-c",
        "write -z 5M 64k",
        "-c",
        "write -P 0x23 1536k 4k",
        top.to_str().unwrap(),
    ]);
    let r = open(&top);
    assert_same_reads(&r, 8 * M as u64);
}
