//! `vmshift serve` driving a live move: the real test guest (QEMU, TCG) writes to its disk
//! while a job started over HTTP mirrors it and pivots; the SSE stream carries per-disk
//! progress and the report; the guest then runs on the new file.

mod serve_support;

use serde_json::json;
use serve_support::Service;
use std::io::Write;
use std::path::Path;
use std::time::Duration;
use vmshift_qmp::stamp;
use vmshift_qmp::testvm::{Disk, Guest, TestVm};

const MIB: u64 = 1 << 20;

fn stamped_raw(path: &Path, size: u64) {
    let mut f = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    for b in 0..size / stamp::BLOCK as u64 {
        f.write_all(&stamp::make_block(b, 0)).unwrap();
    }
    f.flush().unwrap();
}

#[test]
fn a_live_move_over_http_pivots_the_writing_guest_and_gates_its_disks() {
    let root = tempfile::tempdir().unwrap();
    let svc = Service::start(root.path());
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let guest = Guest::build(&repo).unwrap();
    let (a, b) = (svc.store.join("a"), svc.store.join("b"));
    std::fs::create_dir_all(&a).unwrap();
    std::fs::create_dir_all(&b).unwrap();
    let src = a.join("web01.raw");
    stamped_raw(&src, 32 * MIB);
    let vm = TestVm::boot(
        root.path(),
        &guest,
        &[Disk {
            path: src.clone(),
            format: "raw",
        }],
        "vmshift.rate=1048576",
    )
    .unwrap();
    vm.wait_serial("VMSHIFT-SEQ", Duration::from_secs(30))
        .unwrap();

    // A target outside the datastores is refused before any mirror starts.
    let outside = root.path().join("outside");
    std::fs::create_dir_all(&outside).unwrap();
    let (s, v) = svc.post(
        "/api/v1/jobs",
        &json!({"kind": "live", "qmp": vm.qmp_path, "to": outside}),
    );
    assert_eq!(s, 403, "{v}");

    let (s, v) = svc.post(
        "/api/v1/jobs",
        &json!({"kind": "live", "qmp": vm.qmp_path, "to": b, "format": "qcow2"}),
    );
    assert_eq!(s, 201, "{v}");
    let id = v["job_id"].as_str().unwrap().to_string();
    let events = svc.events(&id, Duration::from_secs(300));
    let report = &events.last().unwrap()["report"];
    assert_eq!(report["status"], "succeeded", "{report}");
    assert!(report["pivot_ms"].as_u64().is_some(), "{report}");
    assert!(
        events
            .iter()
            .any(|e| e["event"] == "progress" && e["disks"][0]["device"].is_string()),
        "per-disk progress: {events:?}"
    );
    let new = b.join("web01.qcow2");
    let mut q = vm.qmp().unwrap();
    let blk = q.execute("query-block", None).unwrap();
    assert_eq!(
        blk[0]["inserted"]["file"].as_str().unwrap(),
        new.to_str().unwrap()
    );
    let job = svc.wait_job(&id, 30, |v| v["status"] == "succeeded");
    assert_eq!(job["kind"], "live");
    let m = svc.text("/metrics");
    assert!(m.contains("vmshift_pivot_duration_seconds_count 1"), "{m}");
    assert!(
        m.contains("vmshift_jobs{kind=\"live\",status=\"succeeded\"} 1"),
        "{m}"
    );
}
