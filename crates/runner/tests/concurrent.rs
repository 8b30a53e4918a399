//! Two jobs in one process at once through the library (what the service does): an offline
//! image move and a live mirror of a running QEMU, both succeeding with their own reports.

use std::process::Command;
use vmshift_qmp::testvm::{Disk, TestVm};
use vmshift_runner::{JobEvent, JobRequest, LiveRequest, OfflineRequest, Runner};

fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x.to_le_bytes()[2]
        })
        .collect()
}

fn identical(a: &std::path::Path, b: &std::path::Path) -> bool {
    Command::new("qemu-img")
        .args(["compare", "-q"])
        .arg(a)
        .arg(b)
        .status()
        .is_ok_and(|s| s.success())
}

#[test]
fn an_offline_and_a_live_job_run_at_once_in_one_process() {
    let dir = tempfile::tempdir().unwrap();
    std::env::set_var("VMSHIFT_STATE_DIR", dir.path().join("state"));
    let (a, b, c) = (
        dir.path().join("a"),
        dir.path().join("b"),
        dir.path().join("c"),
    );
    for d in [&a, &b, &c, &dir.path().join("vm")] {
        std::fs::create_dir_all(d).unwrap();
    }
    let offline_src = a.join("db01.raw");
    std::fs::write(&offline_src, pattern(48 << 20, 3)).unwrap();
    let live_src = a.join("web01.raw");
    std::fs::write(&live_src, pattern(32 << 20, 5)).unwrap();
    let vm = TestVm::paused(
        &dir.path().join("vm"),
        &[Disk {
            path: live_src.clone(),
            format: "raw",
        }],
    )
    .unwrap();
    drop(vm.qmp().unwrap()); // QEMU is up; QMP serves one client at a time

    let runner = Runner::new();
    // The offline job is slowed so that the two overlap.
    let mut offline = OfflineRequest::new(&offline_src, &b);
    offline.bwlimit = Some(24 << 20);
    let first = runner.start(JobRequest::Offline(offline)).unwrap();
    let second = runner
        .start(JobRequest::Live(LiveRequest::new(&vm.qmp_path, &c)))
        .unwrap();
    assert_ne!(first.job_id(), second.job_id());
    let watch = |h: vmshift_runner::JobHandle| {
        std::thread::spawn(move || {
            let phases: Vec<String> = h
                .events()
                .filter_map(|e| match e {
                    JobEvent::Phase { phase, .. } => Some(phase.to_string()),
                    _ => None,
                })
                .collect();
            (phases, h.wait().unwrap())
        })
    };
    let (t1, t2) = (watch(first), watch(second));
    let (p1, o1) = t1.join().unwrap();
    let (p2, o2) = t2.join().unwrap();

    assert_eq!(o1.code, 0, "{:?}", o1.report);
    let r1 = o1.report.unwrap();
    assert_eq!(r1.verification.result, "match");
    assert_eq!(r1.source.path, offline_src.display().to_string());
    assert!(identical(&offline_src, &b.join("db01.raw")));
    assert!(p1.iter().any(|p| p == "verify"), "{p1:?}");

    assert_eq!(o2.code, 0, "{:?}", o2.report);
    let r2 = o2.report.unwrap();
    assert_eq!(r2.disks.len(), 1);
    assert_eq!(
        r2.disks[0].new_path,
        c.join("web01.raw").display().to_string()
    );
    assert!(p2.iter().any(|p| p == "cutover"), "{p2:?}");
    assert!(identical(&live_src, &c.join("web01.raw")));
    assert_ne!(r1.job_id, r2.job_id);
}
