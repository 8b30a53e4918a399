//! The "inputs that must work": each built with qemu-img / qemu-io, migrated with the
//! real binary, then checked with `qemu-img compare`, an exact size check and the allocation.

mod common;
use common::*;

fn migrate_ok(
    ws: &Ws,
    src: &std::path::Path,
    extra: &[&str],
) -> (std::path::PathBuf, serde_json::Value) {
    let dst = ws.mkdir("dst");
    let (code, report, out) = ws.migrate(src, &dst, extra);
    assert_eq!(code, 0, "migrate failed: {}", stderr(&out));
    assert_eq!(report["status"], "succeeded");
    assert_eq!(report["verification"]["result"], "match");
    let target = std::path::PathBuf::from(report["destination"]["path"].as_str().unwrap());
    assert!(target.exists());
    assert!(listing(&dst).iter().all(|n| !n.contains("vmshift-partial")));
    (target, report)
}

#[test]
fn raw_dense_keeps_every_byte_and_allocation() {
    let ws = Ws::new();
    let src = ws.path("dense.raw");
    std::fs::write(&src, random_bytes(64 << 20, 1)).unwrap();
    let (dst, r) = migrate_ok(&ws, &src, &[]);
    assert_eq!(std::fs::read(&src).unwrap(), std::fs::read(&dst).unwrap());
    assert_eq!(r["bytes_copied"], 64 * M);
    assert!(allocated(&dst) >= 64 * M);
}

#[test]
fn raw_sparse_20g_stays_sparse() {
    let ws = Ws::new();
    let src = ws.path("sparse.raw");
    let f = std::fs::File::create(&src).unwrap();
    f.set_len(20 << 30).unwrap();
    drop(f);
    qemu_io(
        "raw",
        &src,
        &[
            "write -P 0x11 0 1M",
            "write -P 0x22 7G 2M",
            "write -P 0x33 19G 1M",
        ],
    );
    let (dst, r) = migrate_ok(&ws, &src, &[]);
    assert_eq!(std::fs::metadata(&dst).unwrap().len(), 20 << 30);
    assert!(identical_fmt(&src, "raw", &dst, "raw"));
    assert!(
        allocated(&dst) <= allocated(&src) + 64 * 1024,
        "{} > {}",
        allocated(&dst),
        allocated(&src)
    );
    assert_eq!(r["bytes_copied"], 4 * M);
}

#[test]
fn qcow2_v3_and_v2_round_trip_with_exact_size() {
    for compat in ["1.1", "0.10"] {
        let ws = Ws::new();
        let src = ws.path("disk.qcow2");
        qemu_img(&[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-o",
            &format!("compat={compat}"),
            p(&src),
            "64M",
        ]);
        qemu_io(
            "qcow2",
            &src,
            &["write -P 0xa1 0 3M", "write -P 0xa2 40M 64k"],
        );
        let (dst, _) = migrate_ok(&ws, &src, &[]);
        assert_same_image(&src, &dst);
        assert_eq!(info(&dst)["format"], "qcow2");
        // And to raw.
        let ws2 = Ws::new();
        let (dst2, _) = migrate_ok(&ws2, &src, &["--format", "raw"]);
        assert_eq!(std::fs::metadata(&dst2).unwrap().len(), 64 * M);
        assert!(identical_fmt(&src, "qcow2", &dst2, "raw"));
        assert!(dst2.extension().unwrap() == "raw");
    }
}

#[test]
fn zero_clusters_stay_zero_and_unallocated_data_is_not_inflated() {
    let ws = Ws::new();
    let src = ws.path("z.qcow2");
    qemu_img(&["create", "-q", "-f", "qcow2", p(&src), "32M"]);
    qemu_io(
        "qcow2",
        &src,
        &["write -P 0x5 0 4M", "write -z 1M 2M", "write -P 0 8M 4M"],
    );
    let (dst, r) = migrate_ok(&ws, &src, &[]);
    assert_same_image(&src, &dst);
    // 2 MiB of real data; the zero cluster range and the 4 MiB of written zeroes are not data.
    assert_eq!(r["bytes_copied"], 2 * M);
    assert!(allocated(&dst) < 4 * M, "{}", allocated(&dst));
}

#[test]
fn zlib_compressed_clusters_are_copied_with_drop_compression_and_the_report_warns() {
    let ws = Ws::new();
    let src = compressed_qcow2(&ws, "c.qcow2");
    let (code, _, _) = ws.migrate(&src, &ws.mkdir("refused"), &[]);
    assert_eq!(
        code, 2,
        "compression is dropped only with --drop compression"
    );
    let (dst, r) = migrate_ok(&ws, &src, &["--drop", "compression"]);
    assert_same_image(&src, &dst);
    assert!(r["notes"].to_string().contains("compression is not kept"));
    assert!(r["warnings"].to_string().contains("compressed cluster(s)"));
}

#[test]
fn two_level_chain_with_relative_names_flattened_and_kept() {
    let ws = Ws::new();
    let dir = ws.mkdir("src");
    let base = dir.join("base.qcow2");
    let mid = dir.join("mid.qcow2");
    let top = dir.join("top.qcow2");
    qemu_img(&["create", "-q", "-f", "qcow2", p(&base), "16M"]);
    qemu_io("qcow2", &base, &["write -P 0x11 0 8M"]);
    overlay(&dir, "base.qcow2", "mid.qcow2");
    overlay(&dir, "mid.qcow2", "top.qcow2");
    qemu_io("qcow2", &mid, &["write -P 0x22 2M 2M"]);
    qemu_io("qcow2", &top, &["write -P 0x33 3M 512k", "write -z 6M 1M"]);

    // Flattened (default).
    let (flat, r) = migrate_ok(&ws, &top, &[]);
    assert_same_image(&top, &flat);
    assert_eq!(r["backing"], "flattened");
    assert!(info(&flat).get("backing-filename").is_none());

    // Shallow: only the top layer, backing re-pointed to the source's mid (absolute).
    let ws2 = Ws::new();
    let (kept, r) = migrate_ok(&ws2, &top, &["--keep-backing"]);
    assert_eq!(r["backing"], "kept");
    assert_same_image(&top, &kept);
    let i = info(&kept);
    assert_eq!(i["backing-filename"], p(&mid.canonicalize().unwrap()));
    assert_eq!(i["backing-filename-format"], "qcow2");
    // The zero cluster over non-zero backing data stays zero.
    assert!(qemu_io_ro_ok(&kept, "qcow2", &["read -P 0 6M 1M"]));
    assert!(allocated(&kept) < 2 * M);
}

#[test]
fn cluster_sizes_512_and_2m_and_unaligned_virtual_sizes() {
    for (cluster, size) in [("512", "10485761"), ("2M", "5000192"), ("64k", "1000000")] {
        let ws = Ws::new();
        let src = ws.path("c.qcow2");
        qemu_img(&[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-o",
            &format!("cluster_size={cluster}"),
            p(&src),
            size,
        ]);
        qemu_io("qcow2", &src, &["write -P 0x7e 0 300k"]);
        let (dst, _) = migrate_ok(&ws, &src, &[]);
        assert_same_image(&src, &dst);
        assert_eq!(info(&dst)["cluster-size"], info(&src)["cluster-size"]);
    }
}

#[test]
fn empty_image_migrates() {
    let ws = Ws::new();
    let src = ws.path("empty.qcow2");
    qemu_img(&["create", "-q", "-f", "qcow2", p(&src), "0"]);
    let (dst, r) = migrate_ok(&ws, &src, &[]);
    assert_eq!(virtual_size(&dst), 0);
    assert_eq!(r["bytes_copied"], 0);
    let ws2 = Ws::new();
    let raw = ws2.path("empty.raw");
    std::fs::write(&raw, b"").unwrap();
    let (dst, _) = migrate_ok(&ws2, &raw, &[]);
    assert_eq!(std::fs::metadata(&dst).unwrap().len(), 0);
}

#[test]
fn qcow2_of_20_tib_with_2_mib_of_data_copies_only_the_data() {
    let ws = Ws::new();
    let src = ws.path("huge.qcow2");
    qemu_img(&["create", "-q", "-f", "qcow2", p(&src), "20T"]);
    qemu_io(
        "qcow2",
        &src,
        &["write -P 0x48 0 1M", "write -P 0x49 10T 1M"],
    );
    let (dst, r) = migrate_ok(&ws, &src, &[]);
    assert_eq!(virtual_size(&dst), 20 << 40);
    assert_eq!(r["bytes_copied"], 2 * M);
    assert!(qemu_io_ro_ok(
        &dst,
        "qcow2",
        &["read -P 0x48 0 1M", "read -P 0x49 10T 1M"]
    ));
    assert!(allocated(&dst) < allocated(&src) + 4 * M);
}
