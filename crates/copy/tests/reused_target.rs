//! The engine never assumes a reused target reads as zeroes: holes and zero ranges of the
//! source are written as zeroes over old data (case C24's risk in our own copy path).

mod common;
use common::*;

use std::path::Path;
use std::process::Command;
use std::sync::atomic::AtomicBool;
use vmshift_copy::{copy_image, CopyOptions, Counters};
use vmshift_image::chain::{ChainOptions, LayerFormat};
use vmshift_image::target::open_qcow2_target;
use vmshift_image::{resolve_chain, ImageReader, TargetImage};

const M: u64 = 1 << 20;

fn opts() -> CopyOptions {
    CopyOptions {
        threads: 2,
        chunk: 2 * M,
        bwlimit: 0,
        zero_granularity: 4096,
        target_is_zero: false,
        shallow: false,
        hash: true,
        direct: false,
    }
}

fn sparse_source(dir: &Path) -> ImageReader {
    let src = dir.join("src.raw");
    let f = std::fs::File::create(&src).unwrap();
    f.set_len(8 * M).unwrap();
    drop(f);
    run(&[
        "qemu-io",
        "-f",
        "raw",
        "-c",
        "write -P 0x24 1M 1M",
        "-c",
        "write -P 0 3M 64k",
        "-c",
        "write -P 0x25 5M 100k",
        src.to_str().unwrap(),
    ]);
    let chain = resolve_chain(&src, &ChainOptions::default()).unwrap();
    ImageReader::open(&chain).unwrap()
}

#[test]
fn raw_target_full_of_old_data_ends_identical() {
    let dir = tempfile::tempdir().unwrap();
    let reader = sparse_source(dir.path());
    let tpath = dir.path().join("t.raw");
    std::fs::write(&tpath, vec![0xffu8; 8 << 20]).unwrap();
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&tpath)
        .unwrap();
    let target = TargetImage::Raw {
        file,
        thick: false,
        direct: None,
    };
    let extents = reader.extents(0, reader.virtual_size(), false).unwrap();
    let counters = Counters::default();
    copy_image(
        &reader,
        &extents,
        &target,
        &opts(),
        &AtomicBool::new(false),
        &counters,
    )
    .unwrap();
    target.sync().unwrap();
    let mut expect = vec![0u8; 8 << 20];
    reader.read_at(&mut expect, 0).unwrap();
    assert_eq!(std::fs::read(&tpath).unwrap(), expect);
}

#[test]
fn qcow2_target_full_of_old_data_ends_identical() {
    let dir = tempfile::tempdir().unwrap();
    let reader = sparse_source(dir.path());
    let tpath = dir.path().join("t.qcow2");
    create_qcow2(&tpath, "8M");
    run(&[
        "qemu-io",
        "-f",
        "qcow2",
        "-c",
        "write -P 0xee 0 8M",
        tpath.to_str().unwrap(),
    ]);
    let target = open_qcow2_target(&tpath, None, false).unwrap();
    let extents = reader.extents(0, reader.virtual_size(), false).unwrap();
    copy_image(
        &reader,
        &extents,
        &target,
        &opts(),
        &AtomicBool::new(false),
        &Counters::default(),
    )
    .unwrap();
    target.sync().unwrap();
    drop(target);
    let out = Command::new("qemu-img")
        .args([
            "compare",
            "-f",
            "raw",
            "-F",
            "qcow2",
            dir.path().join("src.raw").to_str().unwrap(),
            tpath.to_str().unwrap(),
        ])
        .status()
        .unwrap();
    assert!(out.success(), "target differs from source");
    let chain = resolve_chain(
        &tpath,
        &ChainOptions {
            top_format: Some(LayerFormat::Qcow2),
            backing_format: None,
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(ImageReader::open(&chain).unwrap().virtual_size(), 8 * M);
}

#[test]
fn a_raised_cancel_flag_stops_before_any_write() {
    let dir = tempfile::tempdir().unwrap();
    let reader = sparse_source(dir.path());
    let tpath = dir.path().join("t.raw");
    std::fs::write(&tpath, vec![0xffu8; 8 << 20]).unwrap();
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&tpath)
        .unwrap();
    let target = TargetImage::Raw {
        file,
        thick: false,
        direct: None,
    };
    let extents = reader.extents(0, reader.virtual_size(), false).unwrap();
    let err = copy_image(
        &reader,
        &extents,
        &target,
        &opts(),
        &AtomicBool::new(true),
        &Counters::default(),
    )
    .unwrap_err();
    assert!(matches!(err, vmshift_copy::CopyError::Cancelled));
    assert_eq!(std::fs::read(&tpath).unwrap(), vec![0xffu8; 8 << 20]);
}
