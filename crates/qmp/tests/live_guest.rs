//! Live migration with the real test guest writing stamped blocks throughout the move.
mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use vmshift_qmp::live::LiveError;
use vmshift_qmp::stamp;
use vmshift_qmp::{
    CopyMode, CopyModeRequest, LiveMigration, LiveOptions, LiveOutcome, TargetFormat,
};

const BOOT: Duration = Duration::from_secs(30);

fn migrate(vm: &Vm, opts: &LiveOptions) -> (Result<LiveOutcome, LiveError>, usize, usize) {
    // Count guest batches during the copy: the guest must keep writing while it moves.
    let mut qmp = vm.qmp();
    let plan = LiveMigration::plan(&mut qmp, opts).expect("plan");
    let cancel = AtomicBool::new(false);
    let start = stamp::batches_logged(&vm.serial_log(), "vda");
    let mut at_ready = start;
    let serial = vm.serial.clone();
    let mut cb = |p: &vmshift_qmp::LiveProgress| {
        if let Some(n) = &p.note {
            eprintln!("[{:>6} ms] {}: {n}", p.elapsed.as_millis(), p.phase);
        }
        if p.phase == "pivoting" {
            at_ready =
                stamp::batches_logged(&std::fs::read_to_string(&serial).unwrap_or_default(), "vda");
        }
    };
    let r = LiveMigration::run(&mut qmp, &plan, &mut cb, &cancel);
    (r, start, at_ready)
}

/// Quits the VM and checks every block of `img` (format `fmt`) against the floor the guest
/// logged for `dev`; returns (floor, report).
fn verify_target(
    serial_log: &str,
    dev: &str,
    img: &std::path::Path,
    fmt: &str,
) -> (u64, stamp::StampReport) {
    if fmt != "raw" {
        qemu_img_check(img);
    }
    let floor = stamp::last_floor(serial_log, dev).expect("guest logged a floor");
    let raw = to_raw(img, fmt);
    let rep =
        stamp::verify_raw(&raw, None, floor).unwrap_or_else(|e| panic!("{}: {e}", img.display()));
    std::fs::remove_file(raw).expect("rm");
    (floor, rep)
}

#[test]
fn guest_keeps_writing_through_the_move_and_the_target_holds_every_flushed_write() {
    let _g = serial();
    let t0 = Instant::now();
    let dir = tempfile::tempdir().expect("tmp");
    let src = dir.path().join("web01.qcow2");
    stamped_image(&src, 32 * MIB, "qcow2");
    let dest = dir.path().join("fast");
    std::fs::create_dir(&dest).expect("mkdir");
    let mut vm = Vm::boot(
        dir.path(),
        &[Disk {
            path: src.clone(),
            format: "qcow2",
        }],
        "vmshift.rate=1048576",
    );
    vm.wait_serial("VMSHIFT-SEQ", BOOT);
    let mut opts = LiveOptions::new(&dest);
    opts.rate_sample = Duration::from_millis(800);
    let (r, start, at_ready) = migrate(&vm, &opts);
    let out = r.expect("live migration");
    assert!(
        at_ready > start,
        "the guest wrote no batch while its disk moved ({start} → {at_ready})"
    );
    let d = &out.disks[0];
    eprintln!(
        "pivot_ms={:.3} time_to_ready_ms={} mode={} reason={} write_rate={}",
        d.pivot_ms, d.time_to_ready_ms, d.copy_mode, d.mode_reason, d.guest_write_rate
    );
    assert_eq!(d.device, "vd0");
    assert_eq!(
        d.new_path,
        dest.canonicalize().expect("canon").join("web01.qcow2")
    );
    assert_eq!(d.format, TargetFormat::Qcow2);
    assert_eq!(d.virtual_size, 32 * MIB);
    assert!(
        d.guest_write_rate > 256 * 1024,
        "guest write rate measured as {}",
        d.guest_write_rate
    );
    assert_eq!(
        d.copy_mode,
        CopyMode::Background,
        "1 MiB/s vs unlimited copy: {}",
        d.mode_reason
    );
    assert!(
        d.pivot_ms > 0.0 && d.pivot_ms < 2000.0,
        "pivot_ms {}",
        d.pivot_ms
    );
    assert!(d.old_nodes_detached, "old nodes still attached");
    let mut qmp = vm.qmp();
    assert_eq!(
        attached(&mut qmp, "vd0"),
        (d.node_name.clone(), d.new_path.display().to_string())
    );
    assert_no_leftovers(&mut qmp, &[&d.node_name]);
    // The source is closed and must not change any more while the guest keeps writing.
    let src_after_pivot = file_digest(&src);
    let n = stamp::batches_logged(&vm.serial_log(), "vda");
    let last_at_pivot = stamp::last_written(&vm.serial_log(), "vda").expect("last");
    vm.wait_batches("vda", n, 20, Duration::from_secs(30));
    vm.quit(&mut qmp);
    assert!(
        file_digest(&src) == src_after_pivot,
        "source changed after the pivot"
    );
    let log = vm.serial_log();
    let (floor, rep) = verify_target(&log, "vda", &d.new_path, "qcow2");
    assert_eq!(rep.blocks, 32 * MIB / 4096);
    assert!(rep.min_seq >= floor);
    let last = stamp::last_written(&log, "vda").expect("last");
    assert!(last > last_at_pivot, "guest did not write after the pivot");
    assert!(
        rep.max_seq >= last,
        "target lacks the last flushed batch {last} (max {})",
        rep.max_seq
    );
    // What the guest sees when it boots from the target.
    let mut v2 = Vm::boot(
        dir.path(),
        &[Disk {
            path: d.new_path.clone(),
            format: "qcow2",
        }],
        "vmshift.mode=verify",
    );
    v2.wait_exit(BOOT);
    let log2 = v2.serial_log();
    assert!(
        log2.contains(&format!("VMSHIFT-VERIFY OK blocks={}", 32 * MIB / 4096)),
        "guest verify: {log2}"
    );
    eprintln!("test wall time {:?}", t0.elapsed());
}

#[test]
fn two_disks_qcow2_and_raw_move_in_one_job() {
    let _g = serial();
    let dir = tempfile::tempdir().expect("tmp");
    let a = dir.path().join("sys.qcow2");
    let b = dir.path().join("data.raw");
    stamped_image(&a, 16 * MIB, "qcow2");
    stamped_image(&b, 16 * MIB, "raw");
    let dest = dir.path().join("dst");
    std::fs::create_dir(&dest).expect("mkdir");
    let mut vm = Vm::boot(
        dir.path(),
        &[
            Disk {
                path: a.clone(),
                format: "qcow2",
            },
            Disk {
                path: b.clone(),
                format: "raw",
            },
        ],
        "vmshift.devs=vda,vdb vmshift.rate=524288",
    );
    vm.wait_serial("VMSHIFT-SEQ", BOOT);
    let mut opts = LiveOptions::new(&dest);
    opts.rate_sample = Duration::from_millis(500);
    let (r, _, _) = migrate(&vm, &opts);
    let out = r.expect("live migration");
    assert_eq!(out.disks.len(), 2);
    let (da, db) = (&out.disks[0], &out.disks[1]);
    assert_eq!(
        (da.device.as_str(), da.format),
        ("vd0", TargetFormat::Qcow2)
    );
    assert_eq!((db.device.as_str(), db.format), ("vd1", TargetFormat::Raw));
    assert_eq!(out.pivot_ms, da.pivot_ms.max(db.pivot_ms));
    eprintln!(
        "two disks: pivot_ms {:.3} / {:.3}",
        da.pivot_ms, db.pivot_ms
    );
    let mut qmp = vm.qmp();
    assert_eq!(
        attached(&mut qmp, "vd0").1,
        da.new_path.display().to_string()
    );
    assert_eq!(
        attached(&mut qmp, "vd1").1,
        db.new_path.display().to_string()
    );
    let n = stamp::batches_logged(&vm.serial_log(), "vdb");
    vm.wait_batches("vdb", n, 8, Duration::from_secs(30));
    vm.quit(&mut qmp);
    let log = vm.serial_log();
    let (_, ra) = verify_target(&log, "vda", &da.new_path, "qcow2");
    let (_, rb) = verify_target(&log, "vdb", &db.new_path, "raw");
    assert_eq!((ra.blocks, rb.blocks), (4096, 4096));
    assert_eq!(virtual_size(&db.new_path), 16 * MIB);
    let info = run(
        "qemu-img",
        &["info", "-U", "--output=json", p(&da.new_path)],
    );
    assert!(info.contains("\"format\": \"qcow2\""), "{info}");
}

#[test]
fn auto_chooses_background_at_half_and_write_blocking_at_twice_the_limit() {
    let _g = serial();
    for (guest_rate, limit, want) in [
        (2 * MIB, 4 * MIB, CopyMode::Background),
        (4 * MIB, 2 * MIB, CopyMode::WriteBlocking),
    ] {
        let dir = tempfile::tempdir().expect("tmp");
        let src = dir.path().join("d.raw");
        stamped_image(&src, 16 * MIB, "raw");
        let dest = dir.path().join("dst");
        std::fs::create_dir(&dest).expect("mkdir");
        let mut vm = Vm::boot(
            dir.path(),
            &[Disk {
                path: src.clone(),
                format: "raw",
            }],
            &format!("vmshift.rate={guest_rate}"),
        );
        vm.wait_serial("VMSHIFT-SEQ", BOOT);
        let mut opts = LiveOptions::new(&dest);
        opts.bwlimit = Some(limit);
        // A longer sample smooths a TCG guest's rate on a busy 2-core host.
        opts.rate_sample = Duration::from_secs(2);
        let t = Instant::now();
        let (r, start, at_ready) = migrate(&vm, &opts);
        let out = r.unwrap_or_else(|e| panic!("guest {guest_rate} B/s, limit {limit} B/s: {e}"));
        let d = &out.disks[0];
        eprintln!(
            "guest {guest_rate} B/s, limit {limit} B/s: auto chose {} ({}); ready after {} ms, pivot_ms {:.3}, total {:?}",
            d.copy_mode,
            d.mode_reason,
            d.time_to_ready_ms,
            d.pivot_ms,
            t.elapsed()
        );
        assert_eq!(
            d.copy_mode, want,
            "guest {guest_rate} B/s (measured {}), limit {limit} B/s: {}",
            d.guest_write_rate, d.mode_reason
        );
        assert_eq!(d.restarts, 0);
        assert!(
            d.guest_write_rate > guest_rate / 2,
            "measured {}",
            d.guest_write_rate
        );
        assert!(at_ready > start, "guest stopped writing during the move");
        // One full pass on the new disk, so the floor checked below is a real one.
        vm.wait_floor("vda", 1, Duration::from_secs(60));
        let mut qmp = vm.qmp();
        vm.quit(&mut qmp);
        let (floor, rep) = verify_target(&vm.serial_log(), "vda", &d.new_path, "raw");
        assert!(rep.min_seq >= floor && floor > 0);
    }
}

#[test]
fn auto_restarts_in_write_blocking_when_the_guest_starts_writing_after_sampling() {
    // QEMU 7.2 cannot switch a running job's copy mode: auto must cancel, wait for the job to
    // be gone, and restart in write-blocking mode on the same target nodes.
    let _g = serial();
    let dir = tempfile::tempdir().expect("tmp");
    let src = dir.path().join("d.raw");
    stamped_image(&src, 16 * MIB, "raw");
    let dest = dir.path().join("dst");
    std::fs::create_dir(&dest).expect("mkdir");
    let mut vm = Vm::boot(
        dir.path(),
        &[Disk {
            path: src.clone(),
            format: "raw",
        }],
        "vmshift.rate=4194304 vmshift.delay=2",
    );
    vm.wait_serial("VMSHIFT-BOOTED", BOOT);
    let mut opts = LiveOptions::new(&dest);
    opts.bwlimit = Some(2 * MIB);
    opts.rate_sample = Duration::from_millis(300);
    let mut qmp = vm.qmp();
    let plan = LiveMigration::plan(&mut qmp, &opts).expect("plan");
    let no_block_job_change = !plan.features.block_job_change;
    let out = LiveMigration::run(
        &mut qmp,
        &plan,
        &mut quiet_progress(),
        &AtomicBool::new(false),
    )
    .expect("migrate");
    let d = &out.disks[0];
    eprintln!(
        "restart: {} ready after {} ms; {}",
        d.copy_mode, d.time_to_ready_ms, d.mode_reason
    );
    assert_eq!(d.copy_mode, CopyMode::WriteBlocking);
    // Caught by watching the write rate during the copy, long before the bound
    // (10 s + 3 × 16 MiB / 2 MiB/s = 34 s) computed from the idle sample.
    assert!(
        d.mode_reason.contains("writes rose to"),
        "{}",
        d.mode_reason
    );
    assert!(
        d.time_to_ready_ms < 25_000,
        "ready after {} ms",
        d.time_to_ready_ms
    );
    if no_block_job_change {
        assert_eq!(d.restarts, 1);
        assert!(
            d.mode_reason.contains("cancelled and restarted"),
            "{}",
            d.mode_reason
        );
    } else {
        assert!(
            d.mode_reason.contains("block-job-change"),
            "{}",
            d.mode_reason
        );
    }
    assert_no_leftovers(&mut qmp, &[&d.node_name]);
    vm.wait_floor("vda", 1, Duration::from_secs(60));
    vm.quit(&mut qmp);
    let (floor, _) = verify_target(&vm.serial_log(), "vda", &d.new_path, "raw");
    assert!(floor > 0);
}

#[test]
fn target_out_of_space_fails_cleanly_and_the_guest_keeps_writing_on_its_source() {
    let _g = serial();
    let dir = tempfile::tempdir().expect("tmp");
    let src = dir.path().join("big.raw");
    stamped_image(&src, 16 * MIB, "raw");
    let small = Tmpfs::mount(&dir.path().join("small"), "8m");
    let vm = Vm::boot(
        dir.path(),
        &[Disk {
            path: src.clone(),
            format: "raw",
        }],
        "vmshift.rate=1048576",
    );
    vm.wait_serial("VMSHIFT-SEQ", BOOT);
    let mut qmp = vm.qmp();
    let mut opts = LiveOptions::new(&small.0);
    // Pre-flight refuses: 16 MiB of data cannot fit in 8 MiB.
    match LiveMigration::plan(&mut qmp, &opts) {
        Err(LiveError::Refused(r)) => {
            let msg = &r[0].reason;
            assert!(
                msg.contains(&format!("{} bytes", 16 * MIB)) && msg.contains("8388608 bytes free"),
                "{msg}"
            );
        }
        other => panic!("expected a space refusal, got {other:?}"),
    }
    // Bypassed pre-check (space raced away): the mirror hits ENOSPC mid-copy.
    opts.skip_space_check = true;
    opts.rate_sample = Duration::from_millis(300);
    let plan = LiveMigration::plan(&mut qmp, &opts).expect("plan");
    let err = LiveMigration::run(
        &mut qmp,
        &plan,
        &mut quiet_progress(),
        &AtomicBool::new(false),
    )
    .expect_err("must fail");
    eprintln!("ENOSPC: {err}");
    match &err {
        LiveError::JobFailed { device, message } => {
            assert_eq!(device, "vd0");
            assert!(message.contains("No space left on device"), "{message}");
        }
        other => panic!("expected JobFailed, got {other:?}"),
    }
    assert_eq!(
        attached(&mut qmp, "vd0"),
        ("disk0".to_owned(), src.display().to_string())
    );
    assert_no_leftovers(&mut qmp, &[]);
    assert_eq!(
        std::fs::read_dir(&small.0).expect("ls").count(),
        0,
        "partial target left behind"
    );
    let n = stamp::batches_logged(&vm.serial_log(), "vda");
    vm.wait_batches("vda", n, 5, Duration::from_secs(20));
    assert!(
        !vm.serial_log().contains("VMSHIFT-ERROR"),
        "guest saw an I/O error"
    );
}

#[test]
fn cancel_mid_copy_leaves_the_vm_on_its_source() {
    let _g = serial();
    let dir = tempfile::tempdir().expect("tmp");
    let src = dir.path().join("c.qcow2");
    stamped_image(&src, 32 * MIB, "qcow2");
    let dest = dir.path().join("dst");
    std::fs::create_dir(&dest).expect("mkdir");
    let vm = Vm::boot(
        dir.path(),
        &[Disk {
            path: src.clone(),
            format: "qcow2",
        }],
        "vmshift.rate=1048576",
    );
    vm.wait_serial("VMSHIFT-SEQ", BOOT);
    let mut qmp = vm.qmp();
    let mut opts = LiveOptions::new(&dest);
    opts.bwlimit = Some(MIB);
    opts.rate_sample = Duration::from_millis(300);
    let plan = LiveMigration::plan(&mut qmp, &opts).expect("plan");
    let cancel = Arc::new(AtomicBool::new(false));
    let mut seen_copy = 0u64;
    let c2 = Arc::clone(&cancel);
    let mut cb = |p: &vmshift_qmp::LiveProgress| {
        // Like Ctrl-C or `vmshift cancel`: raise the flag once the copy is under way.
        if p.phase == "copying" && p.total.done >= 2 * MIB && !c2.load(Ordering::SeqCst) {
            seen_copy = p.total.done;
            c2.store(true, Ordering::SeqCst);
        }
    };
    let t = Instant::now();
    let err = LiveMigration::run(&mut qmp, &plan, &mut cb, &cancel).expect_err("cancelled");
    eprintln!(
        "cancelled after {seen_copy} bytes, cleanup done {:?} after start",
        t.elapsed()
    );
    assert!(err.is_cancelled(), "{err}");
    assert!(
        (2 * MIB..32 * MIB).contains(&seen_copy),
        "cancelled at {seen_copy}"
    );
    assert_eq!(
        attached(&mut qmp, "vd0"),
        ("disk0".to_owned(), src.display().to_string())
    );
    assert_no_leftovers(&mut qmp, &[]);
    assert_eq!(
        std::fs::read_dir(&dest).expect("ls").count(),
        0,
        "target file left behind"
    );
    let n = stamp::batches_logged(&vm.serial_log(), "vda");
    vm.wait_batches("vda", n, 5, Duration::from_secs(20));
}

#[test]
fn explicit_background_mode_aborts_cleanly_at_the_operator_deadline() {
    let _g = serial();
    let dir = tempfile::tempdir().expect("tmp");
    let src = dir.path().join("d.raw");
    stamped_image(&src, 16 * MIB, "raw");
    let dest = dir.path().join("dst");
    std::fs::create_dir(&dest).expect("mkdir");
    let vm = Vm::boot(
        dir.path(),
        &[Disk {
            path: src.clone(),
            format: "raw",
        }],
        "vmshift.rate=4194304",
    );
    vm.wait_serial("VMSHIFT-SEQ", BOOT);
    let mut qmp = vm.qmp();
    let mut opts = LiveOptions::new(&dest);
    opts.bwlimit = Some(MIB);
    opts.copy_mode = CopyModeRequest::Background;
    opts.ready_timeout = Some(Duration::from_secs(4));
    opts.rate_sample = Duration::from_millis(300);
    let plan = LiveMigration::plan(&mut qmp, &opts).expect("plan");
    let t = Instant::now();
    let err = LiveMigration::run(
        &mut qmp,
        &plan,
        &mut quiet_progress(),
        &AtomicBool::new(false),
    )
    .expect_err("cannot converge");
    assert!(
        t.elapsed() < Duration::from_secs(60),
        "took {:?}",
        t.elapsed()
    );
    match err {
        LiveError::NotConverged {
            device,
            mode,
            waited_ms,
        } => {
            assert_eq!((device.as_str(), mode), ("vd0", CopyMode::Background));
            assert!(waited_ms >= 4000);
        }
        other => panic!("expected NotConverged, got {other:?}"),
    }
    assert_eq!(attached(&mut qmp, "vd0").0, "disk0");
    assert_no_leftovers(&mut qmp, &[]);
    assert_eq!(std::fs::read_dir(&dest).expect("ls").count(), 0);
}

/// Bytes/s between the first progress sample at or after `from` and the last at or before
/// `to` (elapsed, bytes done).
fn rate_between(samples: &[(Duration, u64)], from: Duration, to: Duration) -> f64 {
    let a = samples
        .iter()
        .find(|s| s.0 >= from)
        .expect("a sample after from");
    let b = samples
        .iter()
        .rev()
        .find(|s| s.0 <= to)
        .expect("a sample before to");
    assert!(b.0 > a.0, "no time between {a:?} and {b:?}");
    b.1.saturating_sub(a.1) as f64 / (b.0 - a.0).as_secs_f64()
}

#[test]
fn a_bandwidth_limit_raised_mid_mirror_speeds_the_copy_up() {
    let _g = serial();
    let dir = tempfile::tempdir().expect("tmp");
    let src = dir.path().join("bulk.raw");
    stamped_image(&src, 256 * MIB, "raw");
    let dest = dir.path().join("fast");
    std::fs::create_dir(&dest).expect("mkdir");
    let vm = Vm::boot(
        dir.path(),
        &[Disk {
            path: src.clone(),
            format: "raw",
        }],
        "vmshift.rate=65536",
    );
    vm.wait_serial("VMSHIFT-SEQ", BOOT);
    let mut opts = LiveOptions::new(&dest);
    opts.rate_sample = Duration::from_millis(300);
    opts.copy_mode = CopyModeRequest::Background;
    opts.bwlimit = Some(4 * MIB);
    let limit = vmshift_core::RateLimit::new(4 * MIB);
    let mut qmp = vm.qmp();
    let plan = LiveMigration::plan(&mut qmp, &opts).expect("plan");
    let mut samples: Vec<(Duration, u64)> = Vec::new();
    let mut first_progress: Option<Duration> = None;
    let mut raised_at: Option<Duration> = None;
    let mut notes = Vec::new();
    let mut cb = |p: &vmshift_qmp::LiveProgress| {
        if let Some(n) = &p.note {
            notes.push(n.clone());
        }
        if p.phase != "copying" {
            return;
        }
        samples.push((p.elapsed, p.total.done));
        // QEMU's mirror copies in bursts of its buffer (16 MiB) and then sleeps to keep to
        // the limit: measure "before" from the start of the job, not from the first burst.
        let first = *first_progress.get_or_insert(p.elapsed);
        if raised_at.is_none() && p.total.done > 0 && p.elapsed >= first + Duration::from_secs(2) {
            limit.set(64 * MIB);
            raised_at = Some(p.elapsed);
        }
    };
    let out = LiveMigration::run_with_limit(
        &mut qmp,
        &plan,
        Some(&limit),
        &mut cb,
        &AtomicBool::new(false),
    )
    .expect("live migration");
    let raised = raised_at.expect("the limit was raised during the copy");
    let first = first_progress.expect("progress");
    let end = samples.last().expect("samples").0;
    // The job started at most one poll before the first report of the copy, with 0 bytes.
    let started = first.saturating_sub(opts.poll_interval);
    samples.insert(0, (started, 0));
    let before = rate_between(&samples, started, raised);
    // The first poll after the raise applies it; measure from the one after.
    let after = rate_between(&samples, raised + Duration::from_millis(500), end);
    eprintln!(
        "before {:.1} MiB/s, after {:.1} MiB/s (raised at {raised:?}, ready at {end:?}); changes {:?}",
        before / MIB as f64,
        after / MIB as f64,
        out.bwlimit_changes
    );
    assert!(
        after >= 3.0 * before,
        "after {after:.0} B/s, before {before:.0} B/s"
    );
    assert_eq!(out.bwlimit_changes.len(), 1, "{:?}", out.bwlimit_changes);
    assert_eq!(out.bwlimit_changes[0].bytes_per_sec, 64 * MIB);
    assert!(
        notes
            .iter()
            .any(|n| n.contains("64.0 MiB/s applied to the mirrors of vd0")),
        "{notes:?}"
    );
    let mut vm = vm;
    vm.quit(&mut qmp);
}
