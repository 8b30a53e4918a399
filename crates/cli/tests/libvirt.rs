//! `vmshift info|check|migrate --domain` end to end: the real binary against the real
//! libvirtd (started by the harness when none answers) running `type='qemu'` (TCG) domains
//! of the test guest, which stamps blocks on its disks throughout.

mod libvirt_support;

use libvirt_support::*;
use serde_json::Value;

/// A qcow2 `a/d1.qcow2` (vda) and a raw `a/d2.raw` (vdb), 32 MiB each, stamped.
fn two_disks(lab: &Lab) -> Vec<DiskXml> {
    let d1 = lab.path("a/d1.qcow2");
    let d2 = lab.path("a/d2.raw");
    stamped_qcow2(&d1, 32 * MIB);
    stamped_raw(&d2, 32 * MIB);
    vec![
        DiskXml::file("vda", &d1, "qcow2"),
        DiskXml::file("vdb", &d2, "raw"),
    ]
}

const RATE: &str = "vmshift.rate=1048576";

fn disk<'a>(report: &'a Value, dev: &str) -> &'a Value {
    report["disks"]
        .as_array()
        .expect("disks")
        .iter()
        .find(|d| d["device"] == dev)
        .unwrap_or_else(|| panic!("no {dev} in {report}"))
}

fn assert_succeeded(out: &std::process::Output) -> Value {
    let r = report(out);
    assert_eq!(out.status.code(), Some(0), "{}", text(out));
    assert_eq!(r["status"], "succeeded", "{r}");
    assert_eq!(r["kind"], "domain", "{r}");
    r
}

#[test]
fn running_persistent_domain_with_qcow2_and_raw_disks_moves_live() {
    let lab = Lab::new();
    let xml = lab.xml(&two_disks(&lab), "vda,vdb", RATE);
    lab.define(&xml);
    lab.start_writing();
    let (old1, old2) = (lab.path("a/d1.qcow2"), lab.path("a/d2.raw"));
    let (new1, new2) = (lab.path("b/d1.qcow2"), lab.path("b/d2.raw"));

    let out = lab.migrate(&["--to", s(&lab.path("b"))]);
    let r = assert_succeeded(&out);
    let (da, db) = (disk(&r, "vda"), disk(&r, "vdb"));
    assert_eq!(da["old_path"], s(&old1));
    assert_eq!(da["new_path"], s(&new1));
    assert_eq!(da["format"], "qcow2");
    assert_eq!(db["old_path"], s(&old2));
    assert_eq!(db["new_path"], s(&new2));
    assert_eq!(db["format"], "raw");
    for d in [da, db] {
        assert!(d["pivot_ms"].as_u64().is_some(), "{d}");
        assert!(d["time_to_ready_ms"].as_u64().is_some(), "{d}");
    }
    let refs: Vec<&str> = r["references"]
        .as_array()
        .expect("references")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert!(
        refs.contains(
            &format!(
                "definition of {}: vda {} (qcow2) -> {} (qcow2)",
                lab.name,
                old1.display(),
                new1.display()
            )
            .as_str()
        ),
        "{refs:?}"
    );
    assert_eq!(lab.state(), "running");
    assert_eq!(
        lab.domblklist(),
        [
            ("vda".to_owned(), s(&new1).to_owned()),
            ("vdb".to_owned(), s(&new2).to_owned())
        ]
    );
    let def = lab.inactive_xml();
    for new in [&new1, &new2] {
        assert!(def.contains(&format!("'{}'", new.display())), "{def}");
    }
    for old in [&old1, &old2] {
        assert!(!def.contains(s(old)), "{def}");
    }

    // Every block of the region rewritten after the pivot: the floor passes the last
    // sequence number the guest had logged when the move ended.
    let at_move = lab.last_written("vda").max(lab.last_written("vdb"));
    wait_until("a full stamp pass after the pivot", 3 * TIMEOUT, || {
        let log = lab.serial_log();
        ["vda", "vdb"]
            .iter()
            .all(|d| vmshift_qmp::stamp::last_floor(&log, d).is_some_and(|f| f > at_move))
    });
    lab.destroy();
    let ra = lab.verify_stamps(&new1, "qcow2", "vda");
    let rb = lab.verify_stamps(&new2, "raw", "vdb");
    assert!(
        ra.min_seq > at_move && rb.min_seq > at_move,
        "{ra:?} {rb:?}"
    );
    assert!(
        old1.exists() && old2.exists(),
        "sources kept without --delete-source"
    );

    // The definition boots on the new files.
    lab.start();
    assert_eq!(
        lab.domblklist(),
        [
            ("vda".to_owned(), s(&new1).to_owned()),
            ("vdb".to_owned(), s(&new2).to_owned())
        ]
    );
}
