//! Verification during the copy (`vmshift_copy::readback`) against real images: the digest
//! built from chunks read back equals a full re-read of the synced target; data written
//! outside the chunks after they were read back is still caught; and a qcow2 whose mapping
//! on disk differs from the reader's is digested again in full.

mod common;
use common::*;

use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use vmshift_copy::{copy_image_with, digest_image, CopyHooks, Counters, ReadBack};
use vmshift_image::chain::LayerFormat;
use vmshift_image::{ImageReader, TargetImage};

const M: u64 = 1 << 20;
const SIZE: u64 = 24 * M;
const CHUNK: u64 = 2 * M;

/// A 24 MiB qcow2 with data in three places, one of them across a chunk boundary, and a
/// zeroed range inside data.
fn source(dir: &Path) -> PathBuf {
    let p = dir.join("src.qcow2");
    create_qcow2(&p, "24M");
    let s = p.to_str().unwrap();
    run(&[
        "qemu-io",
        "-f",
        "qcow2",
        "-c",
        "write -P 0x11 1M 3M",
        "-c",
        "write -P 0 2M 64k",
        "-c",
        "write -P 0x22 9M 512k",
        "-c",
        "write -P 0x33 20M 4M",
        s,
    ]);
    p
}

fn digest(r: &ImageReader) -> String {
    digest_image(
        r,
        SIZE,
        2,
        CHUNK,
        &AtomicBool::new(false),
        &Counters::default(),
    )
    .unwrap()
    .hex()
}

/// Copies `src` into a new target of `format` with read-back on; returns the target path
/// and the (unfinished) read-back.
fn copy_with_read_back(dir: &Path, src: &ImageReader, format: LayerFormat) -> (PathBuf, ReadBack) {
    let path = dir.join(format!("t.{}", format.as_str()));
    let target = new_target(&path, format, SIZE, false);
    let rb = ReadBack::new(target.reader(SIZE).unwrap(), SIZE, CHUNK, false);
    let extents = src.extents(0, SIZE, false).unwrap();
    let opts = copy_opts(CHUNK, 65536, false);
    let hooks = CopyHooks {
        read_back: Some(&rb),
        ..CopyHooks::default()
    };
    let stats = copy_image_with(
        src,
        &extents,
        &target,
        &opts,
        &hooks,
        &AtomicBool::new(false),
        &Counters::default(),
    )
    .unwrap();
    target.sync().unwrap();
    assert_eq!(stats.source_digest.unwrap().hex(), digest(src));
    (path, rb)
}

fn finish(rb: ReadBack, target: &Path) -> String {
    rb.finish(
        &open(target),
        2,
        &AtomicBool::new(false),
        &Counters::default(),
    )
    .unwrap()
    .hex()
}

#[test]
fn read_back_digest_equals_a_full_re_read_for_raw_and_qcow2_targets() {
    let dir = tempfile::tempdir().unwrap();
    let src = open(&source(dir.path()));
    let want = digest(&src);
    for format in [LayerFormat::Raw, LayerFormat::Qcow2] {
        let (path, rb) = copy_with_read_back(dir.path(), &src, format);
        assert_eq!(finish(rb, &path), want, "{format:?}");
        assert_eq!(digest(&open(&path)), want, "{format:?}");
    }
}

#[test]
fn data_written_outside_the_chunks_read_back_is_caught() {
    let dir = tempfile::tempdir().unwrap();
    let src = open(&source(dir.path()));
    let want = digest(&src);
    // Raw: a stray byte in a hole (14 MiB: no data chunk there).
    let (path, rb) = copy_with_read_back(dir.path(), &src, LayerFormat::Raw);
    let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    f.write_all_at(&[7], 14 * M + 3).unwrap();
    f.sync_all().unwrap();
    assert_ne!(finish(rb, &path), want);
    // qcow2: a cluster allocated later by another writer, as a fresh reader sees it.
    let (path, rb) = copy_with_read_back(dir.path(), &src, LayerFormat::Qcow2);
    run(&[
        "qemu-io",
        "-f",
        "qcow2",
        "-c",
        "write -P 0x44 14M 64k",
        path.to_str().unwrap(),
    ]);
    assert_ne!(finish(rb, &path), want);
}

/// Writes `src`'s guest view to a new qcow2 `dst` with 4 KiB clusters (so every cluster
/// sits elsewhere than in a 64 KiB-cluster copy); returns `dst`.
fn relayout(src: &Path, dst: &Path) -> PathBuf {
    run(&[
        "qemu-img",
        "convert",
        "-f",
        "qcow2",
        "-O",
        "qcow2",
        "-o",
        "cluster_size=4096",
        src.to_str().unwrap(),
        dst.to_str().unwrap(),
    ]);
    dst.to_path_buf()
}

#[test]
fn a_mapping_that_differs_on_disk_falls_back_to_a_full_re_read() {
    let dir = tempfile::tempdir().unwrap();
    let src_path = source(dir.path());
    let src = open(&src_path);
    let want = digest(&src);
    let (path, rb) = copy_with_read_back(dir.path(), &src, LayerFormat::Qcow2);
    // Same guest content, other layout: rewrite the target with qemu-img (clusters move).
    let other = relayout(&src_path, &dir.path().join("other.qcow2"));
    std::fs::rename(&other, &path).unwrap();
    assert_eq!(
        finish(rb, &path),
        want,
        "the full re-read finds the same content"
    );

    // And when the content on disk differs too, inside a chunk that was read back (so only
    // the full re-read can see it), it shows. (Targets are created new, never over a file.)
    std::fs::remove_file(&path).unwrap();
    let (path, rb) = copy_with_read_back(dir.path(), &src, LayerFormat::Qcow2);
    let other = relayout(&src_path, &dir.path().join("other2.qcow2"));
    run(&[
        "qemu-io",
        "-f",
        "qcow2",
        "-c",
        "write -P 0x55 1M 4k",
        other.to_str().unwrap(),
    ]);
    std::fs::rename(&other, &path).unwrap();
    assert_ne!(finish(rb, &path), want);
}

#[test]
fn a_raw_target_reads_back_through_a_second_descriptor() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("r.raw");
    let target = new_target(&path, LayerFormat::Raw, 3 * M, false);
    target.write_at(&[9u8; 4096], M).unwrap();
    let r = target.reader(3 * M).unwrap();
    let mut buf = vec![0u8; 4096];
    r.read_at(&mut buf, M).unwrap();
    assert!(buf.iter().all(|&b| b == 9));
    assert!(matches!(target, TargetImage::Raw { .. }));
}

#[test]
fn a_chunk_read_back_unlike_the_bytes_written_is_hashed_as_read() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("r.raw");
    let size = 4 * M;
    let target = new_target(&path, LayerFormat::Raw, size, false);
    let written = vec![0x11u8; 4 << 20];
    target.write_at(&written, 0).unwrap();
    // What the target holds differs from what the copy wrote in the second 2 MiB piece.
    target.write_at(&[0x99], 3 * M + 5).unwrap();
    let rb = ReadBack::new(target.reader(size).unwrap(), size, 4 * M, false);
    let blocks = vmshift_copy::digest::block_hashes(0, &written);
    rb.chunk(0, &written, &blocks).unwrap();
    target.sync().unwrap();
    let got = rb
        .finish(
            &open(&path),
            2,
            &AtomicBool::new(false),
            &Counters::default(),
        )
        .unwrap();
    let source = vmshift_copy::SparseDigest::new(size);
    source.extend(&blocks);
    assert_eq!(source.first_differing_block(&got), Some(3));
    let reread = digest_image(
        &open(&path),
        size,
        2,
        CHUNK,
        &AtomicBool::new(false),
        &Counters::default(),
    )
    .unwrap();
    assert_eq!(
        got.hex(),
        reread.hex(),
        "the target digest is the target's content"
    );
}
