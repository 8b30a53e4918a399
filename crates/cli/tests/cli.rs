//! The command line as an operator uses it: info, check, events, reports, cancellation,
//! bandwidth limit, source deletion.

mod common;
use common::*;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

fn sample(ws: &Ws) -> std::path::PathBuf {
    let img = ws.path("web01.qcow2");
    qemu_img(&["create", "-q", "-f", "qcow2", p(&img), "64M"]);
    qemu_io(
        "qcow2",
        &img,
        &["write -P 0x61 0 4M", "write -P 0x62 32M 4M"],
    );
    img
}

#[test]
fn info_shows_format_sizes_chain_and_lock_state() {
    let ws = Ws::new();
    let base = ws.path("base.qcow2");
    qemu_img(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-o",
        "cluster_size=128k",
        p(&base),
        "64M",
    ]);
    overlay(ws.dir.path(), "base.qcow2", "top.qcow2");
    let top = ws.path("top.qcow2");
    qemu_io("qcow2", &top, &["write -P 1 0 1M"]);
    let out = ws
        .vmshift()
        .args(["info", p(&top), "--json"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["format"], "qcow2");
    assert_eq!(v["virtual_size"], 64 * M);
    assert_eq!(v["cluster_size"], 65536);
    assert_eq!(v["data_bytes"], M);
    assert_eq!(v["backing_chain"][0]["recorded_name"], "base.qcow2");
    assert_eq!(v["backing_chain"][0]["format"], "qcow2");
    assert_eq!(v["lock"], "Free");
    assert_eq!(v["encryption"], "none");
    let text = ws.vmshift().args(["info", p(&top)]).output().unwrap();
    let t = String::from_utf8_lossy(&text.stdout);
    assert!(
        t.contains("backing[0]:") && t.contains("in use:           no"),
        "{t}"
    );
}

#[test]
fn check_prints_the_plan_and_exits_0_or_2() {
    let ws = Ws::new();
    let img = sample(&ws);
    let dst = ws.mkdir("dst");
    let out = ws
        .vmshift()
        .args(["check", p(&img), "--to", p(&dst)])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    let plan = String::from_utf8_lossy(&out.stdout);
    assert!(
        plan.contains("to copy      8.0 MiB") && plan.contains("free at destination"),
        "{plan}"
    );
    assert!(listing(&dst).is_empty(), "check must not write");
    std::fs::write(dst.join("web01.qcow2"), b"x").unwrap();
    let out = ws
        .vmshift()
        .args(["check", p(&img), "--to", p(&dst)])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("refused: ")
            && String::from_utf8_lossy(&out.stdout).contains("already exists")
    );
}

#[test]
fn json_events_come_in_phase_order_and_end_with_the_report_which_is_also_on_disk() {
    let ws = Ws::new();
    let img = sample(&ws);
    let md = ws.path("report.md");
    let (code, r, out) = ws.migrate(&img, &ws.mkdir("dst"), &["--report", p(&md)]);
    assert_eq!(code, 0);
    let events: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("every stdout line is JSON"))
        .collect();
    assert_eq!(events[0]["event"], "job");
    let phases: Vec<&str> = events
        .iter()
        .filter(|e| e["event"] == "phase" && e["state"] == "started")
        .map(|e| e["phase"].as_str().unwrap())
        .collect();
    assert_eq!(
        phases,
        [
            "check",
            "copy",
            "verify",
            "cutover",
            "references",
            "cleanup",
            "report"
        ]
    );
    assert!(events
        .iter()
        .any(|e| e["event"] == "progress" && e["total_bytes"].as_u64().unwrap() > 0));
    assert_eq!(events.last().unwrap()["event"], "report");
    for k in [
        "job_id",
        "kind",
        "status",
        "source",
        "destination",
        "phases",
        "bytes_copied",
        "bytes_skipped_zero",
        "throughput_bytes_per_sec",
        "verification",
    ] {
        assert!(!r[k].is_null(), "report lacks {k}");
    }
    assert_eq!(r["bytes_copied"], 8 * M);
    assert_eq!(r["verification"]["algorithm"], "blake3-sparse-1MiB");
    assert_eq!(r["verification"]["verified_bytes"], 64 * M);
    assert_eq!(r["verification"]["method"], "during-copy");
    let on_disk = ws.path(&format!(
        "state/reports/{}.json",
        r["job_id"].as_str().unwrap()
    ));
    let saved: serde_json::Value =
        serde_json::from_slice(&std::fs::read(on_disk).unwrap()).unwrap();
    assert_eq!(saved, r);
    assert!(std::fs::read_to_string(&md)
        .unwrap()
        .contains("**Status: succeeded**"));
    assert!(stderr(&out)
        .trim_end()
        .lines()
        .last()
        .unwrap()
        .starts_with("report: "));
}

#[test]
fn no_verify_is_reported_and_delete_source_removes_a_verified_source() {
    let ws = Ws::new();
    let img = sample(&ws);
    let (code, r, _) = ws.migrate(&img, &ws.mkdir("a"), &["--no-verify"]);
    assert_eq!(code, 0);
    assert_eq!(r["verification"]["result"], "skipped");
    assert_eq!(r["verification"]["method"], "none");
    assert!(r["warnings"].to_string().contains("--no-verify"));
    let (code, _, out) = ws.migrate(&img, &ws.mkdir("b"), &["--no-verify", "--delete-source"]);
    assert_eq!(code, 2, "deleting an unverified source must be refused");
    assert!(stderr(&out).contains("--delete-source needs verification"));
    let (code, r, _) = ws.migrate(&img, &ws.mkdir("c"), &["--delete-source"]);
    assert_eq!(code, 0);
    assert_eq!(r["source_deleted"], true);
    assert!(!img.exists());
}

#[test]
fn bwlimit_caps_the_copy_rate() {
    let ws = Ws::new();
    let img = ws.path("d.raw");
    std::fs::write(&img, random_bytes(12 << 20, 3)).unwrap();
    let t = Instant::now();
    let (code, r, _) = ws.migrate(&img, &ws.mkdir("dst"), &["--bwlimit", "6M"]);
    assert_eq!(code, 0);
    // 12 MiB at 6 MiB/s cannot finish in under ~2 s (lower bound only: machines are noisy).
    assert!(
        t.elapsed() >= Duration::from_millis(1800),
        "{:?}",
        t.elapsed()
    );
    assert!(r["throughput_bytes_per_sec"].as_u64().unwrap() <= 7 * M);
}

#[test]
fn sigterm_mid_copy_stops_and_leaves_no_target_under_its_final_name() {
    let ws = Ws::new();
    let img = ws.path("d.raw");
    std::fs::write(&img, random_bytes(16 << 20, 4)).unwrap();
    let dst = ws.mkdir("dst");
    let child = ws.start_copying(&img, &dst, "4M");
    run("kill", &["-TERM", &child.pid().to_string()]);
    let out = child.finish();
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let r = last_report(&out);
    assert_eq!(r["status"], "interrupted");
    assert_eq!(r["error"]["phase"], "copy");
    // An interrupt keeps the journaled partial for `vmshift resume` (tests/interrupt.rs).
    assert_eq!(
        listing(&dst),
        vec!["d.raw.vmshift-partial"],
        "{:?}",
        listing(&dst)
    );
    assert_eq!(std::fs::read(&img).unwrap(), random_bytes(16 << 20, 4));
}

#[test]
fn a_signal_ends_a_command_that_runs_no_job_at_once() {
    use std::os::unix::process::ExitStatusExt;
    let ws = Ws::new();
    let img = ws.path("d.raw");
    std::fs::write(&img, random_bytes(1 << 20, 5)).unwrap();
    let (code, _, _) = ws.migrate(&img, &ws.mkdir("dst"), &[]);
    assert_eq!(code, 0);
    // Another process holds the journal: `jobs` waits for it (up to SQLite's busy timeout).
    let held = rusqlite::Connection::open(ws.path("state/journal.sqlite")).unwrap();
    held.execute_batch("PRAGMA locking_mode=EXCLUSIVE; BEGIN EXCLUSIVE;")
        .unwrap();
    let mut child = std::process::Command::new(assert_cmd::cargo::cargo_bin("vmshift"))
        .arg("jobs")
        .env("VMSHIFT_STATE_DIR", ws.path("state"))
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let t = Instant::now();
    run("kill", &["-TERM", &child.id().to_string()]);
    let status = child.wait().unwrap();
    // SIGTERM kills it (the jobs' interrupt handler is only for commands that run jobs).
    assert_eq!(status.signal(), Some(SIGTERM), "{status:?}");
    assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());
    drop(held);
}

/// SIGTERM's number on Linux.
const SIGTERM: i32 = 15;

#[test]
fn demo_runs_the_main_job_on_a_sample_vm_disk() {
    let ws = Ws::new();
    let out = ws
        .vmshift()
        .args(["demo", "--json", "--offline-only"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let r = last_report(&out);
    assert_eq!(r["status"], "succeeded");
    assert_eq!(r["verification"]["result"], "match");
    let src = std::path::PathBuf::from(r["source"]["path"].as_str().unwrap());
    let dst = std::path::PathBuf::from(r["destination"]["path"].as_str().unwrap());
    assert_same_image(&src, &dst);
    // The sample really is a VM disk with an ext4 filesystem holding files.
    let raw = ws.path("fs.raw");
    qemu_img(&["convert", "-O", "raw", p(&dst), p(&raw)]);
    let listing = run("debugfs", &["-R", "ls -l /etc", p(&raw)]);
    assert!(listing.contains("hostname"), "{listing}");
}

/// The `.vmshift-partial` target in `dst`, if there is one yet.
fn partial_in(dst: &Path) -> Option<PathBuf> {
    std::fs::read_dir(dst)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.to_string_lossy().ends_with(".vmshift-partial"))
}

/// The job failed verification at guest `offset` (error, report) and left `dst` empty.
fn assert_verification_failed(out: &std::process::Output, dst: &Path, offset: u64) {
    assert_eq!(out.status.code(), Some(1), "{}", stderr(out));
    let err = stderr(out);
    assert!(
        err.contains("verification failed") && err.contains(&format!("offset {offset:#x} ")),
        "{err}"
    );
    let r = last_report(out);
    assert_eq!(r["verification"]["result"], "mismatch");
    assert_eq!(r["verification"]["first_mismatch_offset"], offset);
    assert!(listing(dst).is_empty(), "{:?}", listing(dst));
}

#[test]
fn a_stray_write_into_the_target_mid_copy_fails_verification_and_removes_it() {
    let ws = Ws::new();
    let img = ws.path("d.raw");
    let data = random_bytes(16 << 20, 6);
    let f = std::fs::File::create(&img).unwrap();
    f.set_len(32 * M).unwrap();
    drop(f);
    std::fs::OpenOptions::new()
        .write(true)
        .open(&img)
        .map(|f| std::os::unix::fs::FileExt::write_all_at(&f, &data, 0).unwrap())
        .unwrap();
    let dst = ws.mkdir("dst");
    let child = ws.start_copying(&img, &dst, "4M");
    // The source's hole at 28 MiB is never a data chunk: only the check after the fsync
    // reads it.
    let t = Instant::now();
    let partial = loop {
        match partial_in(&dst) {
            Some(p) => break p,
            None if t.elapsed() < Duration::from_secs(30) => {
                std::thread::sleep(Duration::from_millis(20))
            }
            None => panic!("no partial target in {}", dst.display()),
        }
    };
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(&partial)
        .unwrap();
    std::os::unix::fs::FileExt::write_all_at(&f, b"stray", 28 * M + 5).unwrap();
    drop(f);
    let out = child.finish();
    assert_verification_failed(&out, &dst, 28 * M + 5);
    assert_eq!(std::fs::read(&img).unwrap()[..16 << 20], data[..]);
}

#[test]
fn after_copy_verification_sees_a_write_into_a_chunk_already_copied() {
    let ws = Ws::new();
    let img = ws.path("d.raw");
    let data = random_bytes(16 << 20, 7);
    std::fs::write(&img, &data).unwrap();
    let dst = ws.mkdir("dst");
    let child = ws.spawn_slow_migrate_with(&img, &dst, "4M", &["--verify", "after-copy"]);
    // Another process keeps writing into the first chunk while the job runs, so its bytes
    // are there after the copy wrote that chunk (and read it back, were it verifying during
    // the copy).
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let (stop, dst) = (stop.clone(), dst.clone());
        std::thread::spawn(move || {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                if let Some(f) = partial_in(&dst)
                    .and_then(|p| std::fs::OpenOptions::new().write(true).open(p).ok())
                {
                    let _ = std::os::unix::fs::FileExt::write_all_at(&f, b"stray", 5);
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        })
    };
    let out = child.wait_with_output().unwrap();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    writer.join().unwrap();
    assert_verification_failed(&out, &dst, 5);
    assert_eq!(last_report(&out)["verification"]["method"], "after-copy");
    assert_eq!(std::fs::read(&img).unwrap(), data);
}

#[test]
fn io_direct_copies_verifies_and_says_so() {
    let ws = Ws::new();
    let img = ws.path("d.qcow2");
    qemu_img(&["create", "-q", "-f", "qcow2", p(&img), "40M"]);
    qemu_io(
        "qcow2",
        &img,
        &[
            "write -P 0x3c 0 5M",
            "write -P 0x3d 20M 64k",
            "write -P 0x3e 39M 1M",
        ],
    );
    let dst = ws.mkdir("dst");
    let (code, r, out) = ws.migrate(&img, &dst, &["--format", "raw", "--io", "direct"]);
    assert_eq!(code, 0, "{}", stderr(&out));
    assert_eq!(r["verification"]["result"], "match");
    assert_eq!(r["verification"]["method"], "during-copy");
    assert!(
        r["notes"]
            .as_array()
            .unwrap()
            .iter()
            .any(|n| n.as_str().unwrap().starts_with("direct I/O (--io direct)")),
        "{r}"
    );
    let target = std::path::PathBuf::from(r["destination"]["path"].as_str().unwrap());
    assert_eq!(r["destination"]["format"], "raw");
    assert_same_image(&img, &target);
    let (code, _, out) = ws.migrate(&img, &dst, &["--io", "sideways"]);
    assert_eq!(code, 2, "{}", stderr(&out));
    assert!(stderr(&out).contains("--io"), "{}", stderr(&out));
}

#[test]
fn io_direct_keeps_a_shallow_copy_and_its_after_copy_verification_out_of_the_page_cache() {
    let ws = Ws::new();
    let src = ws.mkdir("src");
    let base = src.join("base.qcow2");
    qemu_img(&["create", "-q", "-f", "qcow2", p(&base), "32M"]);
    qemu_io("qcow2", &base, &["write -P 0x41 0 8M"]);
    let top = overlay(&src, "base.qcow2", "top.qcow2");
    qemu_io("qcow2", &top, &["write -P 0x42 8M 16M"]);
    let dst = ws.mkdir("dst");
    let (code, r, out) = ws.migrate(&top, &dst, &["--keep-backing", "--io", "direct"]);
    assert_eq!(code, 0, "{}", stderr(&out));
    assert_eq!(r["verification"]["result"], "match");
    assert_eq!(r["verification"]["method"], "after-copy");
    let target = dst.join("top.qcow2");
    // Measured before anything else reads it: header and tables at most, not the 16 MiB.
    let cached: u64 = run(
        "fincore",
        &["--bytes", "--noheadings", "--output", "RES", p(&target)],
    )
    .trim()
    .parse()
    .unwrap();
    assert!(cached < 2 << 20, "{cached} bytes of the target cached");
    assert_same_image(&top, &target);
}

#[test]
fn offline_only_flags_are_refused_with_qmp_or_domain_instead_of_ignored() {
    let ws = Ws::new();
    let b = ws.mkdir("b");
    for (vm, flag) in [
        (["--qmp", "/run/none.sock"], ["--threads", "4"]),
        (["--qmp", "/run/none.sock"], ["--io", "direct"]),
        (["--domain", "web01"], ["--threads", "4"]),
        (["--domain", "web01"], ["--drop", "bitmaps"]),
        (["--domain", "web01"], ["--source-format", "raw"]),
    ] {
        let out = ws
            .vmshift()
            .arg("migrate")
            .args(vm)
            .args(["--to", p(&b)])
            .args(flag)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{vm:?} {flag:?}");
        let err = stderr(&out);
        assert!(
            err.contains(&format!("'{} ", flag[0])) && err.contains("cannot be used with"),
            "{vm:?} {flag:?}: {err}"
        );
    }
    // An image named beside --domain or --qmp is refused, not ignored.
    for vm in [["--domain", "web01"], ["--qmp", "/run/none.sock"]] {
        let out = ws
            .vmshift()
            .arg("migrate")
            .args(vm)
            .args([p(&ws.path("web01.qcow2")), "--to", p(&b)])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{vm:?}");
        assert!(
            stderr(&out).contains("cannot be used with '[SOURCE]'"),
            "{}",
            stderr(&out)
        );
    }
    assert!(listing(&b).is_empty());
}

#[test]
fn progress_totals_match_the_report_and_a_verification_done_during_the_copy_shows_no_rate() {
    let ws = Ws::new();
    let img = sample(&ws);
    let b = ws.mkdir("b");
    let (code, report, out) = ws.migrate(&img, &b, &[]);
    assert_eq!(code, 0, "{}", stderr(&out));
    let events: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .filter(|e: &serde_json::Value| e["event"] == "progress")
        .collect();
    let copied = report["bytes_copied"].as_u64().unwrap();
    assert_eq!(copied, 8 * M, "the sample holds 8 MiB of data");
    let copy: Vec<_> = events.iter().filter(|e| e["phase"] == "copy").collect();
    let last = copy.last().expect("copy progress");
    assert_eq!(last["total_bytes"].as_u64(), Some(copied));
    assert_eq!(last["done_bytes"].as_u64(), Some(copied));
    let verify: Vec<_> = events.iter().filter(|e| e["phase"] == "verify").collect();
    assert!(!verify.is_empty());
    for e in verify {
        assert_eq!(e["rate_bytes_per_sec"], 0, "{e}");
        assert!(e["eta_ms"].is_null(), "{e}");
    }
}

#[test]
fn scattered_small_writes_count_the_same_bytes_in_the_plan_progress_journal_and_report() {
    // 51 writes of 8 KiB, 7 MiB apart, in a 2 GiB qcow2: each lands in its own 1 MiB copy
    // chunk, so counting chunks would give 51 MiB where the data is 51 clusters.
    let ws = Ws::new();
    let img = ws.path("scattered.qcow2");
    qemu_img(&["create", "-q", "-f", "qcow2", p(&img), "2G"]);
    let writes: Vec<String> = (0..51)
        .map(|i| format!("write -P 1 {}M 8k", i * 7))
        .collect();
    let cmds: Vec<&str> = writes.iter().map(String::as_str).collect();
    qemu_io("qcow2", &img, &cmds);
    let b = ws.mkdir("b");
    let out = ws
        .vmshift()
        .args(["check", p(&img), "--to", p(&b), "--json"])
        .output()
        .unwrap();
    let plan: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let to_copy = plan["plan"]["bytes_to_copy"].as_u64().unwrap();
    assert_eq!(to_copy, 51 * 65536, "51 qcow2 clusters of data: {plan}");

    let (code, report, out) = ws.migrate(&img, &b, &[]);
    assert_eq!(code, 0, "{}", stderr(&out));
    let last_copy = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .rfind(|e| e["event"] == "progress" && e["phase"] == "copy")
        .expect("copy progress");
    assert_eq!(
        last_copy["total_bytes"].as_u64(),
        Some(to_copy),
        "{last_copy}"
    );
    assert_eq!(
        last_copy["done_bytes"].as_u64(),
        Some(to_copy),
        "{last_copy}"
    );
    assert_eq!(report["bytes_copied"].as_u64(), Some(to_copy), "{report}");
    let jobs = ws.vmshift().args(["jobs", "--json"]).output().unwrap();
    let jobs: serde_json::Value = serde_json::from_slice(&jobs.stdout).unwrap();
    assert_eq!(
        jobs[0]["progress"]["total_bytes"].as_u64(),
        Some(to_copy),
        "{jobs}"
    );
    assert_eq!(
        jobs[0]["progress"]["done_bytes"].as_u64(),
        Some(to_copy),
        "{jobs}"
    );
}
