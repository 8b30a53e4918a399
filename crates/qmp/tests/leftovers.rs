//! Leftovers of a killed vmshift run in a real QEMU (TCG, guest-less): a throttled mirror
//! still copying, a rate bitmap, and a pivoted job never dismissed with its old nodes still
//! attached. `leftovers::clear` must remove exactly those, leave the nodes the VM runs on,
//! and the VM must be movable again afterwards.
mod common;

use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};
use vmshift_qmp::{leftovers, LiveMigration, LiveOptions, Qmp};

fn add_target(qmp: &mut Qmp, tag: &str, path: &std::path::Path) {
    run("qemu-img", &["create", "-q", "-f", "raw", p(path), "16M"]);
    qmp.call(
        "blockdev-add",
        json!({"driver": "file", "node-name": format!("{tag}-file"), "filename": p(path)}),
    )
    .expect("add file node");
    qmp.call(
        "blockdev-add",
        json!({"driver": "raw", "node-name": tag, "file": format!("{tag}-file")}),
    )
    .expect("add format node");
}

fn job_status(qmp: &mut Qmp, id: &str) -> Option<String> {
    let jobs = qmp.execute("query-jobs", None).expect("query-jobs");
    jobs.as_array()
        .expect("array")
        .iter()
        .find(|j| j["id"] == id)
        .map(|j| j["status"].as_str().unwrap_or("").to_owned())
}

fn wait_status(qmp: &mut Qmp, id: &str, want: &str) {
    let t = Instant::now();
    while job_status(qmp, id).as_deref() != Some(want) {
        assert!(t.elapsed() < Duration::from_secs(30), "{id} never {want}");
        qmp.pump(Duration::from_millis(50)).expect("pump");
        qmp.take_events();
    }
}

fn node_names(qmp: &mut Qmp) -> Vec<String> {
    let nodes = qmp
        .call("query-named-block-nodes", json!({"flat": true}))
        .expect("nodes");
    nodes
        .as_array()
        .expect("array")
        .iter()
        .filter_map(|n| n["node-name"].as_str().map(str::to_owned))
        .collect()
}

#[test]
fn clear_removes_a_killed_runs_jobs_nodes_and_bitmaps_but_not_what_the_vm_runs_on() {
    let _g = serial();
    let dir = tempfile::tempdir().expect("tmp");
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    std::fs::create_dir_all(&a).expect("mkdir");
    std::fs::create_dir_all(&b).expect("mkdir");
    let (web, db) = (a.join("web.raw"), a.join("db.raw"));
    for (f, pat) in [(&web, "0x5a"), (&db, "0x3c")] {
        run("qemu-img", &["create", "-q", "-f", "raw", p(f), "16M"]);
        run(
            "qemu-io",
            &["-f", "raw", "-c", &format!("write -P {pat} 0 12M"), p(f)],
        );
    }
    let mut vm = Vm::paused(
        dir.path(),
        &[
            Disk {
                path: web.clone(),
                format: "raw",
            },
            Disk {
                path: db.clone(),
                format: "raw",
            },
        ],
    );
    {
        // What a vmshift process killed with -9 leaves, built with the driver's names.
        let mut qmp = vm.qmp();
        // vd1: mirrored, pivoted, never dismissed; its old nodes still attached.
        add_target(&mut qmp, "vmshift4242r0-1", &b.join("db.raw"));
        qmp.call(
            "blockdev-mirror",
            json!({"job-id": "vmshift4242r0-1-job", "device": "disk1",
            "target": "vmshift4242r0-1", "sync": "full", "auto-dismiss": false}),
        )
        .expect("mirror vd1");
        wait_status(&mut qmp, "vmshift4242r0-1-job", "ready");
        qmp.call("job-complete", json!({"id": "vmshift4242r0-1-job"}))
            .expect("pivot vd1");
        wait_status(&mut qmp, "vmshift4242r0-1-job", "concluded");
        // vd0: a throttled mirror still copying, plus a rate-sampling bitmap.
        add_target(&mut qmp, "vmshift4242r1-0", &b.join("web.raw"));
        qmp.call(
            "block-dirty-bitmap-add",
            json!({"node": "disk0", "name": "vmshift4242r1-0-job-rate", "persistent": false}),
        )
        .expect("bitmap");
        qmp.call(
            "blockdev-mirror",
            json!({"job-id": "vmshift4242r1-0-job", "device": "disk0",
            "target": "vmshift4242r1-0", "sync": "full", "auto-dismiss": false, "speed": 1 << 20}),
        )
        .expect("mirror vd0");
        wait_status(&mut qmp, "vmshift4242r1-0-job", "running");
        // The process dies: its QMP connection just closes.
    }
    let mut qmp = vm.qmp();
    let before = leftovers::inspect(&mut qmp).expect("inspect");
    assert_eq!(
        before.jobs,
        vec![
            ("vmshift4242r0-1-job".to_owned(), "concluded".to_owned()),
            ("vmshift4242r1-0-job".to_owned(), "running".to_owned())
        ]
    );
    assert_eq!(
        before.nodes,
        vec!["vmshift4242r1-0", "vmshift4242r1-0-file"]
    );
    assert_eq!(before.files, vec![b.join("web.raw")]);
    assert_eq!(
        before.bitmaps,
        vec![("disk0".to_owned(), "vmshift4242r1-0-job-rate".to_owned())]
    );

    let t = Instant::now();
    let cleared = leftovers::clear(&mut qmp).expect("clear");
    assert!(cleared.problems.is_empty(), "{:?}", cleared.problems);
    assert!(
        t.elapsed() < Duration::from_secs(10),
        "clear took {:?}",
        t.elapsed()
    );
    assert_eq!(cleared.found.files, vec![b.join("web.raw")]);
    assert_eq!(
        qmp.execute("query-jobs", None).expect("jobs"),
        json!([]),
        "jobs left"
    );
    let names = node_names(&mut qmp);
    assert!(
        !names.iter().any(|n| n.starts_with("vmshift4242r1")),
        "{names:?}"
    );
    // vd0 still runs on its source, vd1 on its target (kept).
    assert_eq!(attached(&mut qmp, "vd0"), ("disk0".into(), p(&web).into()));
    assert_eq!(
        attached(&mut qmp, "vd1"),
        ("vmshift4242r0-1".into(), p(&b.join("db.raw")).into())
    );
    assert!(leftovers::inspect(&mut qmp).expect("inspect").is_empty());
    let bitmaps: Vec<Value> = qmp
        .call("query-named-block-nodes", json!({"flat": true}))
        .expect("nodes")
        .as_array()
        .expect("array")
        .iter()
        .flat_map(|n| n["dirty-bitmaps"].as_array().cloned().unwrap_or_default())
        .collect();
    assert!(bitmaps.is_empty(), "{bitmaps:?}");

    // The pivoted disk's old graph: detach_file closes the source; a device's file is kept.
    assert!(names.iter().any(|n| n == "disk1"));
    assert!(leftovers::detach_file(&mut qmp, p(&db)).expect("detach"));
    let names = node_names(&mut qmp);
    assert!(
        !names.iter().any(|n| n == "disk1" || n == "disk1-file"),
        "{names:?}"
    );
    assert!(!leftovers::detach_file(&mut qmp, p(&web)).expect("detach in use"));
    assert!(node_names(&mut qmp).iter().any(|n| n == "disk0"));

    // The VM can be moved again: the reported target file is ours to delete.
    std::fs::remove_file(b.join("web.raw")).expect("remove our partial target");
    let mut o = LiveOptions::new(&b);
    o.disks = vec!["vd0".into()];
    o.rate_sample = Duration::from_millis(100);
    let plan = LiveMigration::plan(&mut qmp, &o).expect("plan");
    let out = LiveMigration::run(
        &mut qmp,
        &plan,
        &mut quiet_progress(),
        &AtomicBool::new(false),
    )
    .expect("move again");
    assert_eq!(out.disks[0].new_path, b.join("web.raw"));
    assert_eq!(attached(&mut qmp, "vd0").1, p(&b.join("web.raw")));
    vm.quit(&mut qmp);
    run(
        "qemu-img",
        &[
            "compare",
            "-q",
            "-f",
            "raw",
            "-F",
            "raw",
            p(&web),
            p(&b.join("web.raw")),
        ],
    );
    run(
        "qemu-img",
        &[
            "compare",
            "-q",
            "-f",
            "raw",
            "-F",
            "raw",
            p(&db),
            p(&b.join("db.raw")),
        ],
    );
}
