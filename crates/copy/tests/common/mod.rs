//! Helpers shared by the copy engine's integration tests.
#![allow(dead_code)]

use std::path::Path;
use std::process::Command;
use vmshift_image::{resolve_chain, ChainOptions, ImageReader};

/// Runs a tool (`qemu-img`, `qemu-io`, `fincore`) and returns its stdout; panics with its
/// stderr when it fails.
pub fn run(args: &[&str]) -> String {
    let out = Command::new(args[0]).args(&args[1..]).output().unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Creates an empty qcow2 image of `size` (qemu-img units, e.g. `16M`) at `path`.
pub fn create_qcow2(path: &Path, size: &str) {
    run(&[
        "qemu-img",
        "create",
        "-q",
        "-f",
        "qcow2",
        path.to_str().unwrap(),
        size,
    ]);
}

/// Opens an image and its backing chain read-only, as the engine does.
pub fn open(p: &Path) -> ImageReader {
    ImageReader::open(&resolve_chain(p, &ChainOptions::default()).unwrap()).unwrap()
}

/// Creates a new thin target of `format` and `size` guest bytes at `path` (64 KiB clusters,
/// no backing file), with `O_DIRECT` writes when `direct`.
pub fn new_target(
    path: &Path,
    format: vmshift_image::chain::LayerFormat,
    size: u64,
    direct: bool,
) -> vmshift_image::TargetImage {
    vmshift_image::target::create_target(&vmshift_image::target::TargetSpec {
        path: path.to_path_buf(),
        format,
        virtual_size: size,
        cluster_size: 65536,
        preallocate: false,
        backing: None,
        direct,
        qcow2: Default::default(),
    })
    .unwrap()
}

/// Options for a flattened, hashed copy into a new (zeroed) target: 3 workers, `chunk`-byte
/// chunks, zero runs found at `zero_granularity` bytes.
pub fn copy_opts(chunk: u64, zero_granularity: usize, direct: bool) -> vmshift_copy::CopyOptions {
    vmshift_copy::CopyOptions {
        threads: 3,
        chunk,
        bwlimit: 0,
        zero_granularity,
        target_is_zero: true,
        shallow: false,
        hash: true,
        direct,
    }
}
