//! The shared input cases with a live part: C02, C21, C22, C25 (built by make_cases.sh).
mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use common::*;
use serde_json::json;
use vmshift_qmp::live::LiveError;
use vmshift_qmp::{
    CopyMode, CopyModeRequest, ExistingTarget, LiveMigration, LiveOptions, LiveOutcome, Qmp,
};

fn go(qmp: &mut Qmp, opts: &LiveOptions) -> Result<LiveOutcome, LiveError> {
    let plan = LiveMigration::plan(qmp, opts)?;
    LiveMigration::run(qmp, &plan, &mut quiet_progress(), &AtomicBool::new(false))
}

fn qemu_io_read(img: &Path, fmt: &str, pattern: &str, off: u64, len: u64) -> bool {
    let out = Command::new("qemu-io")
        .args(["-r", "-U", "-f", fmt, "-c"])
        .arg(format!("read -P {pattern} {off} {len}"))
        .arg(img)
        .output()
        .expect("qemu-io");
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    out.status.success()
        && text.contains(&format!("read {len}/{len} bytes"))
        && !text.contains("fail")
}

fn new_dir(base: &Path, name: &str) -> PathBuf {
    let d = base.join(name);
    std::fs::create_dir_all(&d).expect("mkdir");
    d
}

#[test]
fn c02_exact_virtual_size_and_rounded_existing_volume() {
    let _g = serial();
    let dir = tempfile::tempdir().expect("tmp");
    let case = make_case(dir.path(), "C02");
    let img = case.join("disk.qcow2");
    let rounded = case.join("rounded_target.raw");
    const SIZE: u64 = 10 * MIB + 1536;
    let vm = Vm::paused(
        &case,
        &[Disk {
            path: img.clone(),
            format: "qcow2",
        }],
    );
    let mut qmp = vm.qmp();

    // A smaller pre-existing volume is refused before anything starts, naming both sizes.
    let small = case.join("small.raw");
    std::fs::File::create(&small)
        .expect("create")
        .set_len(8 * MIB)
        .expect("truncate");
    let mut opts = LiveOptions::new(new_dir(&case, "unused"));
    opts.rate_sample = Duration::from_millis(100);
    opts.existing_targets = vec![ExistingTarget {
        disk: "vd0".into(),
        path: small,
        expose_exact_size: true,
    }];
    match LiveMigration::plan(&mut qmp, &opts) {
        Err(LiveError::Refused(r)) => {
            assert!(
                r[0].reason.contains("8388608") && r[0].reason.contains(&SIZE.to_string()),
                "{:?}",
                r
            )
        }
        other => panic!("expected a refusal, got {other:?}"),
    }

    // Handing QEMU the whole rounded 12 MiB volume: QEMU 7.2's mirror returns {} and then
    // aborts asynchronously with "different sizes". The driver must report that, not success.
    opts.existing_targets = vec![ExistingTarget {
        disk: "vd0".into(),
        path: rounded.clone(),
        expose_exact_size: false,
    }];
    let err = go(&mut qmp, &opts).expect_err("size mismatch must fail");
    match &err {
        LiveError::JobFailed { message, .. } => {
            assert!(message.contains("different sizes"), "{message}")
        }
        other => panic!("expected JobFailed, got {other:?}"),
    }
    assert_eq!(attached(&mut qmp, "vd0").0, "disk0");
    assert_no_leftovers(&mut qmp, &[]);
    assert_eq!(
        std::fs::metadata(&rounded).expect("kept").len(),
        12 * MIB,
        "a pre-existing volume is not ours to delete"
    );

    // A new file target gets exactly the source's virtual size.
    let dest = new_dir(&case, "dst");
    let mut opts2 = LiveOptions::new(&dest);
    opts2.rate_sample = Duration::from_millis(100);
    let out = go(&mut qmp, &opts2).expect("live migration to a new file");
    let t1 = out.disks[0].new_path.clone();
    assert_eq!(virtual_size(&t1), SIZE);
    assert!(
        qemu_io_read(&t1, "qcow2", "0x5a", 10 * MIB, 1536),
        "tail lost"
    );
    assert!(qemu_io_read(&t1, "qcow2", "0x21", 0, MIB), "head lost");

    // The rounded volume, exposed at exactly the virtual size (raw `size` option): works.
    opts.existing_targets = vec![ExistingTarget {
        disk: "vd0".into(),
        path: rounded.clone(),
        expose_exact_size: true,
    }];
    let out = go(&mut qmp, &opts).expect("live migration into the rounded volume");
    assert_eq!(
        out.disks[0].new_path,
        rounded.canonicalize().expect("canon")
    );
    assert_eq!(out.disks[0].virtual_size, SIZE);
    assert_eq!(attached(&mut qmp, "vd0").0, out.disks[0].node_name);
    assert_eq!(std::fs::metadata(&rounded).expect("meta").len(), 12 * MIB);
    assert!(
        qemu_io_read(&rounded, "raw", "0x5a", 10 * MIB, 1536),
        "tail lost in the rounded volume"
    );
    assert!(
        qemu_io_read(&rounded, "raw", "0x21", 0, MIB),
        "head lost in the rounded volume"
    );
}

#[test]
fn c21_image_locked_by_the_running_vm_moves_live() {
    let _g = serial();
    let dir = tempfile::tempdir().expect("tmp");
    let case = make_case(dir.path(), "C21");
    let img = case.join("vm.qcow2");
    let mut vm = Vm::paused(
        &case,
        &[Disk {
            path: img.clone(),
            format: "qcow2",
        }],
    );
    let mut qmp = vm.qmp();
    // The image is locked by the VM (QMP answers, so it is open): an offline copy is refused.
    let locked = Command::new("qemu-img")
        .args(["convert", "-O", "raw"])
        .arg(&img)
        .arg(case.join("offline-copy.raw"))
        .output()
        .expect("qemu-img");
    let why = String::from_utf8_lossy(&locked.stderr);
    assert!(!locked.status.success() && why.contains("lock"), "{why}");
    let dest = new_dir(&case, "dst");
    let mut opts = LiveOptions::new(&dest);
    opts.rate_sample = Duration::from_millis(100);
    let out = go(&mut qmp, &opts).expect("live migration");
    let d = &out.disks[0];
    assert_eq!((d.device.as_str(), d.virtual_size), ("vd0", 16 * MIB));
    assert!(d.old_nodes_detached);
    // The old image was closed at the pivot: no lock any more.
    run("qemu-img", &["info", p(&img)]);
    vm.quit(&mut qmp);
    let cmp = run(
        "qemu-img",
        &[
            "compare",
            "-f",
            "qcow2",
            "-F",
            "qcow2",
            p(&img),
            p(&d.new_path),
        ],
    );
    assert!(cmp.contains("Images are identical"), "{cmp}");
    assert!(qemu_io_read(&d.new_path, "qcow2", "0x42", 0, 4 * MIB));
}

#[test]
fn c22_destination_out_of_space_live() {
    let _g = serial();
    let dir = tempfile::tempdir().expect("tmp");
    let case = make_case(dir.path(), "C22");
    let img = case.join("vm_disk.raw");
    let before = std::fs::read(&img).expect("read");
    let dst = Tmpfs::mount(&case.join("dst"), "8m");
    let mut vm = Vm::paused(
        &case,
        &[Disk {
            path: img.clone(),
            format: "raw",
        }],
    );
    let mut qmp = vm.qmp();
    let mut opts = LiveOptions::new(&dst.0);
    opts.rate_sample = Duration::from_millis(100);
    match LiveMigration::plan(&mut qmp, &opts) {
        Err(LiveError::Refused(r)) => {
            assert!(
                r[0].reason.contains("12582912 bytes")
                    && r[0].reason.contains("8388608 bytes free"),
                "{r:?}"
            )
        }
        other => panic!("expected the pre-flight to refuse, got {other:?}"),
    }
    assert_eq!(
        std::fs::read_dir(&dst.0).expect("ls").count(),
        0,
        "the refusal wrote something"
    );
    opts.skip_space_check = true;
    let err = go(&mut qmp, &opts).expect_err("ENOSPC");
    assert!(
        matches!(&err, LiveError::JobFailed { message, .. } if message.contains("No space left on device")),
        "{err}"
    );
    assert_eq!(
        attached(&mut qmp, "vd0"),
        ("disk0".to_owned(), img.display().to_string())
    );
    assert_no_leftovers(&mut qmp, &[]);
    assert_eq!(
        std::fs::read_dir(&dst.0).expect("ls").count(),
        0,
        "partial target left behind"
    );
    // Guest-style writes through the device still succeed on the source.
    let r = qmp
        .call(
            "human-monitor-command",
            json!({"command-line": "qemu-io -d /machine/peripheral/vd0/virtio-backend \"write -P 0x77 0 64k\""}),
        )
        .expect("hmp");
    // HMP qemu-io answers "" (or "wrote ...") on success, an error text otherwise.
    let r = r.as_str().unwrap_or("");
    assert!(r.is_empty() || r.contains("wrote 65536/65536"), "{r}");
    vm.quit(&mut qmp);
    let after = std::fs::read(&img).expect("read");
    assert!(
        after[..65536].iter().all(|&b| b == 0x77),
        "the write did not reach the source"
    );
    assert_eq!(
        after[65536..],
        before[65536..],
        "the source changed beyond the guest write"
    );
}

/// Stops the case VM through the case's own env_stop.sh (only that VM's pid).
struct CaseVm(PathBuf);

impl Drop for CaseVm {
    fn drop(&mut self) {
        let _ = Command::new(self.0.join("env_stop.sh"))
            .stdout(Stdio::null())
            .status();
    }
}

/// Starts the case's load.sh (random 64 KiB writes through the guest device via HMP qemu-io).
fn start_load(case: &Path, secs: &str, out: &str) -> std::process::Child {
    let f = std::fs::File::create(case.join(out)).expect("create");
    Command::new(case.join("load.sh"))
        .args([secs, "4"])
        .stdout(f)
        .stderr(Stdio::null())
        .spawn()
        .expect("load.sh")
}

/// Waits for a load and returns how many writes it had acknowledged.
fn finish_load(case: &Path, mut child: std::process::Child, out: &str) -> u64 {
    assert!(child.wait().expect("load").success());
    let summary = std::fs::read_to_string(case.join(out)).expect("load output");
    summary
        .split_whitespace()
        .find_map(|w| w.strip_prefix("writes="))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("load summary: {summary}"))
}

#[test]
fn c25_auto_converges_under_write_load_and_background_aborts_cleanly() {
    // Harness note: load.sh writes through HMP qemu-io, which runs in QEMU's main loop. If a
    // write-blocking mirror completes while such a write is in flight, QEMU 7.2 aborts
    // (`bdrv_co_write_req_prepare: Assertion child->perm & BLK_PERM_WRITE`; seen 1 in 4 runs,
    // never with guest I/O: see tests/live_guest.rs). As EXPECT.txt suggests, the first load
    // therefore ends before the mirror can be ready (16 MiB at 1 MiB/s), and the pivot follows.
    let _g = serial();
    let t0 = Instant::now();
    let dir = tempfile::tempdir().expect("tmp");
    let case = make_case(dir.path(), "C25");
    let orig = case.join("orig.raw");
    std::fs::copy(case.join("disk.raw"), &orig).expect("copy");
    run(p(&case.join("env_start.sh")), &[]);
    let stop = CaseVm(case.clone());
    let load1 = start_load(&case, "9", "load1.out");
    std::thread::sleep(Duration::from_millis(1500));
    let mut qmp = Qmp::connect(&case.join("run/qmp.sock"), Duration::from_secs(10)).expect("qmp");
    // HMP qemu-io writes block QEMU's main loop under write-blocking: replies can take 10+ s.
    qmp.set_timeout(Duration::from_secs(60));

    let dest = new_dir(&case, "dst");
    let mut opts = LiveOptions::new(&dest);
    opts.bwlimit = Some(MIB);
    let out =
        go(&mut qmp, &opts).expect("auto must converge under 4 MiB/s writes with a 1 MiB/s limit");
    let d = &out.disks[0];
    eprintln!(
        "C25: auto chose {} after measuring {} B/s; ready after {} ms; pivot_ms {:.3}; {}",
        d.copy_mode, d.guest_write_rate, d.time_to_ready_ms, d.pivot_ms, d.mode_reason
    );
    assert_eq!(d.copy_mode, CopyMode::WriteBlocking, "{}", d.mode_reason);
    assert!(d.guest_write_rate > 2 * MIB, "{}", d.guest_write_rate);
    assert!(
        d.time_to_ready_ms > 9_000,
        "ready before the load ended: {} ms",
        d.time_to_ready_ms
    );
    let target = d.new_path.clone();
    assert_eq!(attached(&mut qmp, "vd0").1, target.display().to_string());
    let writes1 = finish_load(&case, load1, "load1.out");

    // Background only, with an operator deadline, under the same load: a clean abort.
    let load2 = start_load(&case, "12", "load2.out");
    std::thread::sleep(Duration::from_millis(1000));
    let dest2 = new_dir(&case, "dst2");
    let mut opts2 = LiveOptions::new(&dest2);
    opts2.bwlimit = Some(MIB);
    opts2.copy_mode = CopyModeRequest::Background;
    opts2.ready_timeout = Some(Duration::from_secs(5));
    opts2.rate_sample = Duration::from_millis(200);
    let t = Instant::now();
    let err = go(&mut qmp, &opts2).expect_err("background cannot converge");
    assert!(
        matches!(
            err,
            LiveError::NotConverged {
                mode: CopyMode::Background,
                ..
            }
        ),
        "{err}"
    );
    assert!(
        t.elapsed() < Duration::from_secs(60),
        "abort took {:?}",
        t.elapsed()
    );
    assert_eq!(
        attached(&mut qmp, "vd0").1,
        target.display().to_string(),
        "VM left its current disk"
    );
    assert_no_leftovers(&mut qmp, &[&d.node_name]);
    assert_eq!(std::fs::read_dir(&dest2).expect("ls").count(), 0);
    let writes2 = finish_load(&case, load2, "load2.out");
    assert!(writes1 > 50 && writes2 > 50, "{writes1} / {writes2} writes");
    drop(qmp);
    drop(stop);

    // Every write acknowledged to the guest device is in the target: replay both loads'
    // deterministic write sequences (same seed) onto the original content and compare.
    let expected = case.join("expected.raw");
    run(
        "python3",
        &[
            "-c",
            "import random,sys\n\
             d=bytearray(open(sys.argv[1],'rb').read())\n\
             for n in map(int,sys.argv[3:]):\n  r=random.Random(1234)\n  \
             for i in range(n):\n    o=r.randrange(0,len(d)//65536)*65536;d[o:o+65536]=bytes([(i%254)+1])*65536\n\
             open(sys.argv[2],'wb').write(d)",
            p(&orig),
            p(&expected),
            &writes1.to_string(),
            &writes2.to_string(),
        ],
    );
    let got = std::fs::read(&target).expect("target");
    let want = std::fs::read(&expected).expect("expected");
    assert_eq!(got.len(), want.len());
    let first_diff = got.iter().zip(&want).position(|(a, b)| a != b);
    assert_eq!(
        first_diff, None,
        "target differs from the acknowledged writes ({writes1} + {writes2} writes)"
    );
    eprintln!("C25 wall time {:?}", t0.elapsed());
}
