//! The page cache: a direct copy (`--io direct`) and its read-back bypass it, and the target
//! still holds exactly the source's guest view, for raw and qcow2 targets, with an unaligned
//! tail that has to go through the buffered path. A buffered copy drops the source's data
//! once read (raw files and qcow2 data clusters) and the target's once written back
//! (write-behind): `fincore` finds neither cached afterwards.

mod common;
use common::*;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::AtomicBool;
use vmshift_copy::writeback::WriteBehind;
use vmshift_copy::{copy_image_with, digest_image, CopyHooks, Counters, ReadBack};
use vmshift_image::chain::LayerFormat;
use vmshift_image::ImageReader;

const M: u64 = 1 << 20;
/// Not a multiple of 4 KiB: the last 1000 bytes cannot be written with `O_DIRECT`, the 2 MiB
/// before them in the same (last) chunk can.
const SIZE: u64 = 14 * M + 1000;

/// The digest of the whole guest view of `r`, read through the page cache.
fn digest(r: &ImageReader) -> String {
    digest_image(
        r,
        SIZE,
        2,
        4 * M,
        &AtomicBool::new(false),
        &Counters::default(),
    )
    .unwrap()
    .hex()
}

/// Bytes of `path` in the page cache.
fn cached(path: &Path) -> u64 {
    run(&[
        "fincore",
        "--bytes",
        "--noheadings",
        "--output",
        "RES",
        path.to_str().unwrap(),
    ])
    .trim()
    .parse()
    .unwrap()
}

/// A raw source of `SIZE` bytes: patterned data up to the last byte, with a hole at 6–8 MiB.
fn source(dir: &Path) -> PathBuf {
    let p = dir.join("src.raw");
    let mut data: Vec<u8> = (0..SIZE).map(|i| (i % 251) as u8 + 1).collect();
    data[usize::try_from(6 * M).unwrap()..usize::try_from(8 * M).unwrap()].fill(0);
    std::fs::write(&p, &data).unwrap();
    p
}

/// Copies `src` into a new target; returns its path and how many of its bytes were in the
/// page cache right after the copy and its fsync.
fn copy(dir: &Path, src: &ImageReader, format: LayerFormat, direct: bool) -> (PathBuf, u64) {
    let path = dir.join(format!("t-{direct}.{}", format.as_str()));
    let size = match format {
        LayerFormat::Raw => SIZE,
        LayerFormat::Qcow2 => SIZE.div_ceil(512) * 512,
    };
    let target = new_target(&path, format, size, direct);
    let rb = ReadBack::new(target.reader(size).unwrap(), SIZE, 4 * M, direct);
    let opts = copy_opts(4 * M, 4096, direct);
    let hooks = CopyHooks {
        read_back: Some(&rb),
        ..CopyHooks::default()
    };
    let cancel = AtomicBool::new(false);
    let stats = copy_image_with(
        src,
        &src.extents(0, SIZE, false).unwrap(),
        &target,
        &opts,
        &hooks,
        &cancel,
        &Counters::default(),
    )
    .unwrap();
    target.sync().unwrap();
    // Before anything opens the target again (reading its header reads ahead).
    let in_cache = cached(&path);
    let got = rb
        .finish(&open(&path), 2, &cancel, &Counters::default())
        .unwrap();
    assert_eq!(got.hex(), stats.source_digest.unwrap().hex(), "{path:?}");
    (path, in_cache)
}

#[test]
fn direct_copies_bypass_the_page_cache_and_stay_identical() {
    let base = Path::new(env!("CARGO_TARGET_TMPDIR"));
    let dir = tempfile::tempdir_in(base).unwrap();
    let src_path = source(dir.path());
    let src = open(&src_path);
    let want = digest(&src);
    for format in [LayerFormat::Raw, LayerFormat::Qcow2] {
        let (buffered, _) = copy(dir.path(), &src, format, false);
        let (direct, _) = copy(dir.path(), &src, format, true);
        for t in [&buffered, &direct] {
            assert_eq!(digest(&open(t)), want, "{t:?}");
        }
        let out = Command::new("qemu-img")
            .args(["compare", "-f", "raw", "-F", format.as_str()])
            .args([&src_path, &direct])
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
    }
}

#[test]
fn no_copy_leaves_the_targets_data_in_the_page_cache() {
    let base = Path::new(env!("CARGO_TARGET_TMPDIR"));
    let dir = tempfile::tempdir_in(base).unwrap();
    let src = open(&source(dir.path()));
    for format in [LayerFormat::Raw, LayerFormat::Qcow2] {
        let (_, b) = copy(dir.path(), &src, format, false);
        let (_, d) = copy(dir.path(), &src, format, true);
        // Direct writes bypass the cache: at most the qcow2 header read at creation and the
        // raw tail page (not a whole block: written through the page cache) are cached.
        assert!(d <= 64 << 10, "{format:?}: direct copy cached {d} bytes");
        // Buffered writes are dropped once on the disk (write-behind); the qcow2 tables
        // written by the final sync stay.
        assert!(b <= 512 << 10, "{format:?}: buffered copy cached {b} bytes");
    }
}

#[test]
fn write_behind_keeps_only_its_last_chunks_in_the_page_cache() {
    let base = Path::new(env!("CARGO_TARGET_TMPDIR"));
    let dir = tempfile::tempdir_in(base).unwrap();
    let (chunk, chunks, depth) = (2 * M, 32u64, 4u64);
    let data: Vec<u8> = (0..chunk).map(|i| (i % 241) as u8 + 1).collect();
    for format in [LayerFormat::Raw, LayerFormat::Qcow2] {
        let path = dir.path().join(format!("wb.{}", format.as_str()));
        let target = new_target(&path, format, chunk * chunks, false);
        let wb = WriteBehind::new(&target, usize::try_from(depth).unwrap(), true);
        let mut most = 0;
        for i in 0..chunks {
            target.write_at(&data, i * chunk).unwrap();
            wb.chunk_done(i * chunk, chunk).unwrap();
            most = most.max(cached(&path));
        }
        // The chunks held back, a 2 MiB block of their neighbour and the qcow2 header and
        // tables, never the 64 MiB written.
        assert!(
            most <= (depth + 2) * chunk,
            "{format:?}: {most} bytes cached while writing"
        );
        wb.finish().unwrap();
        target.sync().unwrap();
        let left = cached(&path);
        assert!(
            left <= 512 << 10,
            "{format:?}: {left} bytes cached at the end"
        );
        let got = open(&path);
        let mut buf = vec![0u8; usize::try_from(chunk).unwrap()];
        got.read_at(&mut buf, (chunks - 1) * chunk).unwrap();
        assert!(buf == data, "{format:?}: last chunk reads back wrong");
    }
}

/// Reads all of `path` into the page cache, every page clean.
fn cache_clean(path: &Path) {
    let mut f = std::fs::File::open(path).unwrap();
    f.sync_all().unwrap();
    // Dropped first (coreutils: `dd iflag=nocache count=0` drops a whole file), then read
    // in order, so the pages come from readahead, in large folios, as after a `cat`.
    let p = path.to_str().unwrap();
    run(&[
        "dd",
        &format!("if={p}"),
        "iflag=nocache",
        "count=0",
        "status=none",
    ]);
    std::io::copy(&mut f, &mut std::io::sink()).unwrap();
}

/// `qemu-img convert` of the raw image `raw` into a new qcow2 at `qcow2`.
fn to_qcow2(raw: &Path, qcow2: &Path) {
    run(&[
        "qemu-img",
        "convert",
        "-f",
        "raw",
        "-O",
        "qcow2",
        raw.to_str().unwrap(),
        qcow2.to_str().unwrap(),
    ]);
}

/// A raw source (`source`) and a 256 MiB qcow2 in `dir`. Read through readahead, the qcow2's
/// data sits in large folios that its clusters (which start 320 KiB into the file) only
/// partly cover.
fn cacheable_sources(dir: &Path) -> [PathBuf; 2] {
    let raw = source(dir);
    let big = dir.join("big.raw");
    let block: Vec<u8> = (0..M).map(|i| (i % 253) as u8 + 1).collect();
    std::fs::write(&big, block.repeat(256)).unwrap();
    let qcow2 = dir.join("src.qcow2");
    to_qcow2(&big, &qcow2);
    [raw, qcow2]
}

#[test]
fn releasing_a_read_range_drops_its_pages_for_raw_and_qcow2_sources() {
    let base = Path::new(env!("CARGO_TARGET_TMPDIR"));
    let dir = tempfile::tempdir_in(base).unwrap();
    for src_path in cacheable_sources(dir.path()) {
        cache_clean(&src_path);
        assert!(cached(&src_path) >= 12 * M, "{src_path:?} not cached");
        let src = open(&src_path);
        let fast = vmshift_copy::io::FastSource::new(&src, false);
        // Chunk by chunk, as the engine releases them (not release_all).
        let size = src.virtual_size();
        for start in (0..size).step_by(4 << 20) {
            fast.release(start, (4 * M).min(size - start));
        }
        // The qcow2 header and mapping tables may stay; no data cluster does.
        let left = cached(&src_path);
        assert!(left <= 4 * M, "{src_path:?}: {left} bytes still cached");
    }
}

#[test]
fn a_buffered_copy_leaves_none_of_its_source_in_the_page_cache() {
    let base = Path::new(env!("CARGO_TARGET_TMPDIR"));
    let dir = tempfile::tempdir_in(base).unwrap();
    let [raw, big] = cacheable_sources(dir.path());
    // Fewer chunks than workers: every release happens once the copy is over.
    let small = dir.path().join("small.qcow2");
    to_qcow2(&raw, &small);
    for src_path in &[raw, big, small] {
        cache_clean(src_path);
        assert!(cached(src_path) >= 12 * M, "{src_path:?} not cached");
        let src = open(src_path);
        let size = src.virtual_size();
        let target = new_target(&dir.path().join("t.raw"), LayerFormat::Raw, size, false);
        let mut opts = copy_opts(4 * M, 4096, false);
        opts.threads = 8;
        let stats = vmshift_copy::copy_image(
            &src,
            &src.extents(0, size, false).unwrap(),
            &target,
            &opts,
            &AtomicBool::new(false),
            &Counters::default(),
        )
        .unwrap();
        assert!(stats.bytes_copied > 12 * M, "{src_path:?}: {stats:?}");
        std::fs::remove_file(dir.path().join("t.raw")).unwrap();
        let left = cached(src_path);
        assert!(left <= M, "{src_path:?}: {left} bytes still cached");
        // Digesting it (verification after the copy, resume) leaves nothing behind either.
        cache_clean(src_path);
        digest_image(
            &src,
            size,
            3,
            2 * M,
            &AtomicBool::new(false),
            &Counters::default(),
        )
        .unwrap();
        let left = cached(src_path);
        assert!(
            left <= M,
            "{src_path:?}: {left} bytes cached after a digest"
        );
    }
}
