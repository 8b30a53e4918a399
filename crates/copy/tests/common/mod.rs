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
