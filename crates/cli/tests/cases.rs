//! The handed cases from tests/cases (a copy of ../shared/cases): each built by the shared
//! script and checked against what its EXPECT.txt asks for.

mod common;
use common::*;
use std::path::{Path, PathBuf};

fn target_of(report: &serde_json::Value) -> PathBuf {
    PathBuf::from(report["destination"]["path"].as_str().unwrap())
}

fn sha256(path: &Path) -> String {
    run("sha256sum", &[p(path)])
        .split_whitespace()
        .next()
        .unwrap()
        .to_string()
}

#[test]
fn c01_raw_length_not_a_multiple_of_512_keeps_every_byte() {
    let ws = Ws::new();
    let case = ws.case("c01");
    let src = case.join("disk.raw");
    let (code, r, out) = ws.migrate(&src, &ws.mkdir("raw"), &[]);
    assert_eq!(code, 0, "{}", stderr(&out));
    let dst = target_of(&r);
    assert_eq!(std::fs::metadata(&dst).unwrap().len(), 5_000_001);
    assert_eq!(std::fs::read(&src).unwrap(), std::fs::read(&dst).unwrap());
    assert!(std::fs::read(&dst).unwrap().ends_with(b"TAIL-MARKER-C01!"));

    let (code, r, out) = ws.migrate(&src, &ws.mkdir("q"), &["--format", "qcow2"]);
    assert_eq!(code, 0, "{}", stderr(&out));
    let dst = target_of(&r);
    assert_eq!(virtual_size(&dst), 5_000_192);
    assert!(r["notes"]
        .to_string()
        .contains("rounded up from 5000001 to 5000192"));
    let back = ws.path("back.raw");
    qemu_img(&["convert", "-f", "qcow2", "-O", "raw", p(&dst), p(&back)]);
    let original = std::fs::read(&src).unwrap();
    assert_eq!(
        &std::fs::read(&back).unwrap()[..original.len()],
        &original[..]
    );
}

#[test]
fn c04_relative_backing_chain_is_flattened_or_kept_resolvable() {
    let ws = Ws::new();
    let case = ws.case("c04");
    let top = case.join("src/overlay.qcow2");
    let dst = ws.mkdir("dst");
    let (code, r, out) = ws.migrate(&top, &dst, &[]);
    assert_eq!(code, 0, "{}", stderr(&out));
    assert_eq!(r["backing"], "flattened");
    let t = target_of(&r);
    assert_same_image(&top, &t);
    qemu_img(&["info", "--backing-chain", p(&t)]);
    assert!(info(&t).get("backing-filename").is_none());

    let (code, r, out) = ws.migrate(&top, &ws.mkdir("dst2"), &["--keep-backing"]);
    assert_eq!(code, 0, "{}", stderr(&out));
    let t = target_of(&r);
    qemu_img(&["info", "--backing-chain", p(&t)]); // every reference resolves
    assert_same_image(&top, &t);
}

#[test]
fn c05_absolute_backing_into_the_old_datastore_is_flattened_and_referenced_source_kept() {
    let ws = Ws::new();
    let case = ws.case("c05");
    let vm = case.join("src/vm.qcow2");
    let flat_ref = ws.path("flat.raw");
    qemu_img(&["convert", "-O", "raw", p(&vm), p(&flat_ref)]);
    let (code, r, out) = ws.migrate(&vm, &ws.mkdir("dst"), &[]);
    assert_eq!(code, 0, "{}", stderr(&out));
    let t = target_of(&r);
    let chain = qemu_img(&["info", "--backing-chain", p(&t)]);
    assert!(!chain.contains(p(&case.join("src"))), "{chain}");
    // Retire the old datastore: the target still opens and holds the same data.
    std::fs::rename(case.join("src"), case.join("src.gone")).unwrap();
    assert!(identical_fmt(&t, "qcow2", &flat_ref, "raw"));
    std::fs::rename(case.join("src.gone"), case.join("src")).unwrap();

    // The base cannot be deleted while vm.qcow2 still uses it.
    let base = case.join("src/base.qcow2");
    let (code, r, out) = ws.migrate(&base, &ws.mkdir("dst-base"), &["--delete-source"]);
    assert_eq!(code, 0, "{}", stderr(&out));
    assert!(base.exists(), "a referenced backing file was deleted");
    assert_eq!(r["source_deleted"], false);
    assert!(r["warnings"].to_string().contains("NOT deleted"));
    assert!(r["references"].to_string().contains("vm.qcow2"));
}

#[test]
fn c06_unrecorded_backing_format_is_refused_and_never_probed() {
    let ws = Ws::new();
    let case = ws.case("c06");
    let overlay = case.join("overlay.qcow2");
    let dst = ws.mkdir("dst");
    let (code, _, out) = ws.migrate(&overlay, &dst, &[]);
    assert_eq!(code, 2);
    let err = stderr(&out);
    assert!(
        err.contains("overlay.qcow2") && err.contains("does not record the format"),
        "{err}"
    );
    assert!(listing(&dst).is_empty());

    let (code, r, out) = ws.migrate(&overlay, &dst, &["--backing-format", "raw"]);
    assert_eq!(code, 0, "{}", stderr(&out));
    let t = target_of(&r);
    assert!(!String::from_utf8_lossy(&std::fs::read(&t).unwrap()).contains("HOST-SECRET-C06"));
    let spec = format!(
        "driver=qcow2,file.filename={},backing.driver=raw,backing.file.filename={}",
        p(&overlay),
        p(&case.join("base_raw_disk.img"))
    );
    let reference = ws.path("ref.raw");
    qemu_img(&["convert", "--image-opts", &spec, "-O", "raw", p(&reference)]);
    assert!(identical_fmt(&t, "qcow2", &reference, "raw"));
}

#[test]
fn c09_zero_clusters_over_a_non_zero_backing_file_stay_zero() {
    let ws = Ws::new();
    let case = ws.case("c09");
    let top = case.join("top.qcow2");
    for extra in [&["--keep-backing"][..], &[][..]] {
        let (code, r, out) = ws.migrate(&top, &ws.mkdir(&format!("dst{}", extra.len())), extra);
        assert_eq!(code, 0, "{}", stderr(&out));
        let t = target_of(&r);
        assert_same_image(&top, &t);
        assert!(qemu_io_ro_ok(
            &t,
            "qcow2",
            &[
                "read -P 0 0 1M",
                "read -P 0xbb 1M 1M",
                "read -P 0 2M 1M",
                "read -P 0xaa 3M 1M"
            ]
        ));
    }
}

#[test]
fn c11_sparse_stays_sparse_and_thick_stays_thick() {
    let ws = Ws::new();
    let case = ws.case("c11");
    let sparse = case.join("sparse.raw");
    let (code, r, out) = ws.migrate(&sparse, &ws.mkdir("s"), &[]);
    assert_eq!(code, 0, "{}", stderr(&out));
    let t = target_of(&r);
    assert!(identical_fmt(&sparse, "raw", &t, "raw"));
    assert!(
        allocated(&t) <= allocated(&sparse) + 64 * 1024,
        "{} vs {}",
        allocated(&t),
        allocated(&sparse)
    );
    for (name, fmt) in [("thick.raw", "raw"), ("thick.qcow2", "qcow2")] {
        let src = case.join(name);
        let (code, r, out) = ws.migrate(&src, &ws.mkdir(name), &[]);
        assert_eq!(code, 0, "{}", stderr(&out));
        let t = target_of(&r);
        assert!(identical_fmt(&src, fmt, &t, fmt));
        assert!(
            allocated(&t) >= 8 * M,
            "{name}: thick became thin ({} bytes)",
            allocated(&t)
        );
        assert!(r["notes"].to_string().contains("thick"));
    }
}

#[test]
fn c12_compressed_image_space_check_uses_the_uncompressed_need() {
    let ws = Ws::new();
    let case = ws.case("c12");
    let src = case.join("compressed.qcow2");
    // A qcow2 target could keep compression but does not: only with --drop compression.
    let (code, _, out) = ws.migrate(&src, &ws.mkdir("qcow2"), &["--format", "qcow2"]);
    assert_eq!(code, 2, "compression is lost only with --drop compression");
    assert!(
        stderr(&out).contains("128 compressed cluster(s)"),
        "{}",
        stderr(&out)
    );
    let (code, r, out) = ws.migrate(
        &src,
        &ws.mkdir("qcow2"),
        &["--format", "qcow2", "--drop", "compression"],
    );
    assert_eq!(code, 0, "{}", stderr(&out));
    assert!(identical(&src, &target_of(&r)));
    assert!(r["notes"].to_string().contains("compression is not kept"));
    assert!(r["warnings"].to_string().contains("--drop compression"));
    // A raw target was asked for and cannot hold compression: copied, with the warning.
    let (code, r, out) = ws.migrate(&src, &ws.mkdir("raw"), &["--format", "raw"]);
    assert_eq!(code, 0, "{}", stderr(&out));
    assert!(identical_fmt(&src, "qcow2", &target_of(&r), "raw"));
    assert!(
        r["warnings"]
            .to_string()
            .contains("128 compressed cluster(s)"),
        "{r}"
    );
    let out = ws
        .vmshift()
        .args([
            "check",
            p(&src),
            "--to",
            p(&ws.mkdir("chk")),
            "--json",
            "--drop",
            "compression",
        ])
        .output()
        .unwrap();
    let plan: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(plan["plan"]["target_bytes"], 8_716_288);
    if is_root() {
        let small = ws.path("small");
        let _m = Tmpfs::mount(&small, "2m");
        let (code, _, out) = ws.migrate(&src, &small, &["--drop", "compression"]);
        assert_eq!(code, 2);
        assert!(
            stderr(&out).contains("need 8716288 bytes"),
            "{}",
            stderr(&out)
        );
        assert!(listing(&small).is_empty());
    }
}

#[test]
fn c16_encrypted_qcow2_is_refused_without_creating_a_target() {
    let ws = Ws::new();
    let case = ws.case("c16");
    let dst = ws.mkdir("dst");
    let (code, r, out) = ws.migrate(&case.join("enc.qcow2"), &dst, &[]);
    assert_eq!(code, 2);
    assert!(
        stderr(&out).contains("is encrypted (luks)"),
        "{}",
        stderr(&out)
    );
    assert_eq!(r["status"], "refused");
    assert!(listing(&dst).is_empty());
}

#[test]
fn c18_truncated_and_out_of_file_tables_are_refused_good_image_migrates() {
    let ws = Ws::new();
    let case = ws.case("c18");
    for (name, needle) in [
        ("truncated.qcow2", "past the end of the file"),
        ("l1_beyond_eof.qcow2", "L1 table at 0x40000000"),
        ("l2_entry_beyond_eof.qcow2", "guest offset 0x30000"),
    ] {
        let dst = ws.mkdir(name);
        let (code, _, out) = ws.migrate(&case.join(name), &dst, &[]);
        assert_eq!(code, 2, "{name} was not refused");
        let err = stderr(&out);
        assert!(err.contains(name) && err.contains(needle), "{name}: {err}");
        assert!(listing(&dst).is_empty());
    }
    let (code, r, out) = ws.migrate(
        &case.join("good.qcow2"),
        &ws.mkdir("good"),
        &["--format", "raw"],
    );
    assert_eq!(code, 0, "{}", stderr(&out));
    let t = target_of(&r);
    let data = std::fs::read(case.join("data.bin")).unwrap();
    assert_eq!(&std::fs::read(&t).unwrap()[..data.len()], &data[..]);
}

#[test]
fn c19_dirty_lazy_refcount_source_migrates_untouched_to_a_clean_target() {
    let ws = Ws::new();
    let case = ws.case("c19");
    let src = case.join("dirty.qcow2");
    let before = sha256(&src);
    let (code, r, out) = ws.migrate(&src, &ws.mkdir("dst"), &[]);
    assert_eq!(code, 0, "{}", stderr(&out));
    assert_eq!(sha256(&src), before, "the source was modified");
    assert!(r["notes"].to_string().contains("lazy refcounts"));
    let t = target_of(&r);
    let check = std::process::Command::new("qemu-img")
        .args(["check", p(&t)])
        .output()
        .unwrap();
    assert!(check.status.success() && String::from_utf8_lossy(&check.stdout).contains("No errors"));
    assert_eq!(info(&t)["dirty-flag"], false);
    assert!(qemu_io_ro_ok(
        &t,
        "qcow2",
        &["read -P 0x61 0 2M", "read -P 0x62 8M 1M"]
    ));
}

#[test]
fn c20_huge_virtual_size_copies_fast_and_raw_beyond_the_fs_limit_is_refused() {
    let ws = Ws::new();
    let case = ws.case("c20");
    let src = case.join("huge.qcow2");
    let (code, r, out) = ws.migrate(&src, &ws.mkdir("q"), &[]);
    assert_eq!(code, 0, "{}", stderr(&out));
    let t = target_of(&r);
    assert!(qemu_io_ro_ok(
        &t,
        "qcow2",
        &["read -P 0x48 0 1M", "read -P 0x49 10T 1M"]
    ));
    assert!(allocated(&t) < allocated(&src) + 4 * M);
    let dst = ws.mkdir("raw");
    let (code, _, out) = ws.migrate(&src, &dst, &["--format", "raw"]);
    assert_eq!(code, 2, "{}", stderr(&out));
    let err = stderr(&out);
    // The refusal states the filesystem's limit, found by probing it.
    let limit: u64 = err
        .split("maximum file size (")
        .nth(1)
        .and_then(|rest| rest.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no limit in the refusal: {err}"));
    assert!(limit > (1 << 40) && limit < 20 << 40, "{limit}: {err}");
    assert!(listing(&dst).is_empty(), "{:?}", listing(&dst));
}

#[test]
fn c21_image_locked_by_a_running_vm_is_refused_offline_naming_the_holder() {
    let ws = Ws::new();
    let case = ws.case("c21");
    run(p(&case.join("env_start.sh")), &[]);
    let dst = ws.mkdir("dst");
    let (code, _, out) = ws.migrate(&case.join("vm.qcow2"), &dst, &[]);
    let info_out = ws
        .vmshift()
        .args(["info", p(&case.join("vm.qcow2"))])
        .output()
        .unwrap();
    run(p(&case.join("env_stop.sh")), &[]);
    assert_eq!(code, 2);
    let err = stderr(&out);
    assert!(
        err.contains("in use by a running VM") && err.contains("pid"),
        "{err}"
    );
    assert!(err.contains("--qmp"), "should suggest live mode: {err}");
    assert!(listing(&dst).is_empty());
    assert!(String::from_utf8_lossy(&info_out.stdout).contains("in use:           yes"));
}

#[test]
fn c22_destination_out_of_space_is_refused_up_front_or_cleaned_up() {
    if !is_root() {
        eprintln!("c22 needs root for tmpfs; skipped");
        return;
    }
    let ws = Ws::new();
    let case = ws.case("c22");
    let dst = case.join("dst");
    let _m = Tmpfs::mount(&dst, "8m");
    let (code, _, out) = ws.migrate(&case.join("src.qcow2"), &dst, &[]);
    assert_eq!(code, 2);
    assert!(
        stderr(&out).contains("need 12910592 bytes"),
        "{}",
        stderr(&out)
    );
    assert!(listing(&dst).is_empty());
    drop(_m);

    // Space vanishes mid-copy (another writer fills the datastore): failed, nothing left.
    let mid = ws.path("mid");
    let _m = Tmpfs::mount(&mid, "20m");
    let proc = ws.start_copying(&case.join("src.qcow2"), &mid, "4M");
    let filler = mid.join("filler");
    let _ = std::process::Command::new("fallocate")
        .args(["-l", "19M", p(&filler)])
        .status();
    let _ = std::process::Command::new("dd")
        .args([
            "if=/dev/zero",
            &format!("of={}", p(&mid.join("filler2"))),
            "bs=64k",
        ])
        .stderr(std::process::Stdio::null())
        .status();
    let out = proc.finish();
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let r = last_report(&out);
    assert_eq!(r["status"], "failed");
    assert!(
        r["error"]["message"].to_string().contains("No space left"),
        "{}",
        r["error"]
    );
    let left: Vec<String> = listing(&mid)
        .into_iter()
        .filter(|n| !n.starts_with("filler"))
        .collect();
    assert!(left.is_empty(), "{left:?}");
}

#[test]
fn c24_existing_target_full_of_old_data_is_replaced_with_exact_content() {
    let ws = Ws::new();
    let case = ws.case("c24");
    let src = case.join("src.raw");
    let ff = case.join("target_ff.raw");
    let (code, _, out) = ws.migrate(&src, &ff, &[]);
    assert_eq!(code, 2, "an existing target needs --overwrite");
    assert!(stderr(&out).contains("--overwrite"));
    let (code, _, out) = ws.migrate(&src, &ff, &["--overwrite"]);
    assert_eq!(code, 0, "{}", stderr(&out));
    assert!(identical_fmt(&src, "raw", &ff, "raw"));
    let old = case.join("target_old.qcow2");
    let (code, _, out) = ws.migrate(&src, &old, &["--overwrite", "--format", "qcow2"]);
    assert_eq!(code, 0, "{}", stderr(&out));
    assert!(identical_fmt(&src, "raw", &old, "qcow2"));
}

#[test]
fn c27_names_with_spaces_colons_quotes_and_dashes_work_without_a_shell() {
    let ws = Ws::new();
    let case = ws.case("c27");
    let src_dir = case.join("src/VM images");
    let dst = case.join("dst/new store");
    for name in ["disk:1 & 'q' $(touch PWNED).qcow2", "-dash dísk.qcow2"] {
        let src = src_dir.join(name);
        for extra in [&[][..], &["--keep-backing"][..]] {
            let d = dst.join(format!("k{}", extra.len()));
            std::fs::create_dir_all(&d).unwrap();
            let (code, r, out) = ws.migrate(&src, &d, extra);
            assert_eq!(code, 0, "{name}: {}", stderr(&out));
            let t = target_of(&r);
            assert_eq!(t.file_name().unwrap(), std::ffi::OsStr::new(name));
            let spec = |f: &Path| {
                format!(
                    "json:{}",
                    serde_json::json!({"driver": "qcow2", "file": {"driver": "file", "filename": p(f)}})
                )
            };
            assert!(run("qemu-img", &["compare", &spec(&src), &spec(&t)]).contains("identical"));
        }
    }
    let found = run("find", &[p(&case), p(&ws.path("state")), "-name", "PWNED"]);
    assert!(found.trim().is_empty(), "{found}");
}
