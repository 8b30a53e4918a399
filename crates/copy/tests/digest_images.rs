//! The content digest over real images: equal for the same guest view whatever the format
//! and allocation, and a difference is located to the byte.

mod common;
use common::*;

use std::sync::atomic::AtomicBool;
use vmshift_copy::{digest_image, first_difference, Counters};

const M: u64 = 1 << 20;

#[test]
fn same_content_in_sparse_qcow2_and_dense_raw_has_one_digest_and_a_change_is_located() {
    let dir = tempfile::tempdir().unwrap();
    let q = dir.path().join("a.qcow2");
    let r = dir.path().join("b.raw");
    create_qcow2(&q, "16M");
    run(&[
        "qemu-io",
        "-f",
        "qcow2",
        "-c",
        "write -P 0x5a 1M 2M",
        q.to_str().unwrap(),
    ]);
    run(&[
        "qemu-img",
        "convert",
        "-S",
        "0",
        "-f",
        "qcow2",
        "-O",
        "raw",
        q.to_str().unwrap(),
        r.to_str().unwrap(),
    ]);
    let (a, b) = (open(&q), open(&r));
    let cancel = AtomicBool::new(false);
    let da = digest_image(&a, 16 * M, 2, 4 * M, &cancel, &Counters::default()).unwrap();
    let db = digest_image(&b, 16 * M, 2, 4 * M, &cancel, &Counters::default()).unwrap();
    assert_eq!(da.hex(), db.hex());

    run(&[
        "qemu-io",
        "-f",
        "raw",
        "-c",
        "write -P 0x01 0x230005 1",
        r.to_str().unwrap(),
    ]);
    let b = open(&r);
    let db = digest_image(&b, 16 * M, 2, 4 * M, &cancel, &Counters::default()).unwrap();
    assert_ne!(da.hex(), db.hex());
    assert_eq!(first_difference(&da, &db, &a, &b), Some(0x23_0005));
}
