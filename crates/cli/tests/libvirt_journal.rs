//! Journal commands on libvirt domain jobs, against the real libvirtd: kill -9 of vmshift
//! mid-copy then `resume` or `cancel`, and `rollback` of live and shut-off moves.

mod libvirt_support;

use libvirt_support::*;
use serde_json::Value;
use std::io::{BufRead, BufReader};
use std::process::{Child, Stdio};
use std::time::Duration;

/// `vmshift migrate --domain … --json ARGS` in the background; returns the process once the
/// job id is known and an event line satisfies `until`, with that id.
fn migrate_until(lab: &Lab, args: &[&str], until: impl Fn(&Value) -> bool) -> (Child, String) {
    let mut child = lab
        .vmshift()
        .args(["migrate", "--domain", &lab.name, "--connect", URI, "--json"])
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn vmshift");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let mut id = String::new();
    for line in lines.by_ref() {
        let Ok(e) = serde_json::from_str::<Value>(&line.expect("read")) else {
            continue;
        };
        if e["event"] == "job" && id.is_empty() {
            id = e["job_id"].as_str().expect("job id").to_owned();
        }
        if until(&e) {
            return (child, id);
        }
    }
    let _ = child.wait();
    panic!("vmshift ended before the awaited event (job {id:?})");
}

fn kill9(mut child: Child) {
    child.kill().expect("kill -9");
    let _ = child.wait();
}

fn command(lab: &Lab, args: &[&str]) -> std::process::Output {
    lab.vmshift().args(args).output().expect("run vmshift")
}

fn status(lab: &Lab, id: &str) -> Value {
    let out = command(lab, &["status", id, "--json"]);
    serde_json::from_slice(&out.stdout).unwrap_or_else(|_| panic!("{}", text(&out)))
}

fn block_job(lab: &Lab, dev: &str) -> bool {
    !virsh_ok(&["blockjob", &lab.name, dev, "--info"]).contains("No current block job")
}

#[test]
fn kill_9_mid_live_copy_then_resume_ends_the_stale_jobs_and_moves_the_domain() {
    let lab = Lab::new();
    lab.define(&lab.xml(&two_disks(&lab), "vda,vdb", "vmshift.rate=1048576"));
    lab.start_writing();
    let b = lab.path("b");
    let (child, id) = migrate_until(&lab, &["--to", s(&b), "--bwlimit", "512K"], |e| {
        e["event"] == "progress" && e["done_bytes"].as_u64().is_some_and(|d| d > 0)
    });
    kill9(child);
    assert!(
        block_job(&lab, "vda"),
        "the killed run's copy job is still there"
    );
    assert_eq!(status(&lab, &id)["status"], "interrupted");

    let out = command(&lab, &["resume", &id, "--bwlimit", "0", "--json"]);
    let r = report(&out);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(r["status"], "succeeded", "{r}");
    assert_eq!(r["job_id"], id.as_str());
    let notes = r["notes"].to_string();
    assert!(
        notes.contains("ended the interrupted run's block job"),
        "{notes}"
    );
    let (new1, new2) = (lab.path("b/d1.qcow2"), lab.path("b/d2.raw"));
    assert_eq!(lab.source_of("vda"), s(&new1));
    assert_eq!(lab.source_of("vdb"), s(&new2));
    let def = lab.inactive_xml();
    assert!(def.contains(s(&new1)) && def.contains(s(&new2)), "{def}");
    assert!(!def.contains(s(&lab.path("a/d1.qcow2"))), "{def}");

    let at_move = lab.wait_full_pass(&["vda", "vdb"]);
    lab.destroy();
    for (img, fmt, dev) in [(&new1, "qcow2", "vda"), (&new2, "raw", "vdb")] {
        let r = lab.verify_stamps(img, fmt, dev);
        assert!(r.min_seq > at_move, "{dev}: {r:?} (at the move: {at_move})");
    }
    assert_eq!(status(&lab, &id)["status"], "succeeded");
}

#[test]
fn kill_9_mid_live_copy_then_cancel_leaves_the_domain_on_its_sources() {
    let lab = Lab::new();
    lab.define(&lab.xml(&two_disks(&lab), "vda,vdb", "vmshift.rate=1048576"));
    lab.start_writing();
    let before = lab.inactive_xml();
    let b = lab.path("b");
    let (child, id) = migrate_until(&lab, &["--to", s(&b), "--bwlimit", "512K"], |e| {
        e["event"] == "progress" && e["done_bytes"].as_u64().is_some_and(|d| d > 0)
    });
    kill9(child);
    let out = command(&lab, &["cancel", &id]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(!block_job(&lab, "vda") && !block_job(&lab, "vdb"));
    assert!(listing(&b).is_empty(), "{:?}", listing(&b));
    assert_eq!(lab.source_of("vda"), s(&lab.path("a/d1.qcow2")));
    assert_eq!(lab.source_of("vdb"), s(&lab.path("a/d2.raw")));
    assert_eq!(lab.inactive_xml(), before);
    assert_eq!(status(&lab, &id)["status"], "cancelled");
    let n = lab.batches("vda");
    lab.wait_batches("vda", n, 3);
}

#[test]
fn kill_9_during_the_second_shut_off_disk_then_resume_keeps_the_first_and_finishes() {
    let lab = Lab::new();
    lab.define(&lab.xml(&two_disks(&lab), "vda,vdb", "vmshift.rate=1048576"));
    let before = lab.inactive_xml();
    let b = lab.path("b");
    let (child, id) = migrate_until(&lab, &["--to", s(&b), "--bwlimit", "4M"], |e| {
        e["event"] == "note"
            && e["message"]
                .as_str()
                .is_some_and(|m| m.starts_with("disk vdb: offline job"))
    });
    std::thread::sleep(Duration::from_secs(2));
    kill9(child);
    assert_eq!(
        lab.inactive_xml(),
        before,
        "no definition change before every disk is verified"
    );

    let out = command(&lab, &["resume", &id, "--bwlimit", "0", "--json"]);
    let r = report(&out);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(r["status"], "succeeded", "{r}");
    assert_eq!(r["verification"]["result"], "match", "{r}");
    let said = text(&out);
    assert!(
        said.contains("disk vda: verified by offline job"),
        "the first disk is not copied again: {said}"
    );
    let (old1, old2) = (lab.path("a/d1.qcow2"), lab.path("a/d2.raw"));
    let (new1, new2) = (lab.path("b/d1.qcow2"), lab.path("b/d2.raw"));
    assert!(same_content(&old1, "qcow2", &new1, "qcow2"));
    assert!(same_content(&old2, "raw", &new2, "raw"));
    let expected = before
        .replace(
            &format!("'{}'", old1.display()),
            &format!("'{}'", new1.display()),
        )
        .replace(
            &format!("'{}'", old2.display()),
            &format!("'{}'", new2.display()),
        );
    assert_eq!(lab.inactive_xml(), expected);
    assert!(!listing(&b).iter().any(|f| f.contains("vmshift-partial")));
}

#[test]
fn rollback_of_a_live_move_moves_the_disks_back_and_deletes_the_copies() {
    let lab = Lab::new();
    lab.define(&lab.xml(&two_disks(&lab), "vda,vdb", "vmshift.rate=1048576"));
    lab.start_writing();
    let b = lab.path("b");
    let out = lab.migrate(&["--to", s(&b)]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let id = report(&out)["job_id"].as_str().expect("id").to_owned();

    let out = command(&lab, &["rollback", &id]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let (old1, old2) = (lab.path("a/d1.qcow2"), lab.path("a/d2.raw"));
    assert_eq!(lab.source_of("vda"), s(&old1));
    assert_eq!(lab.source_of("vdb"), s(&old2));
    let def = lab.inactive_xml();
    assert!(def.contains(s(&old1)) && def.contains(s(&old2)), "{def}");
    assert!(!def.contains(s(&b)), "{def}");
    assert!(listing(&b).is_empty(), "{:?}", listing(&b));
    assert_eq!(status(&lab, &id)["status"], "rolled_back");

    let at_move = lab.wait_full_pass(&["vda", "vdb"]);
    lab.destroy();
    for (img, fmt, dev) in [(&old1, "qcow2", "vda"), (&old2, "raw", "vdb")] {
        let r = lab.verify_stamps(img, fmt, dev);
        assert!(
            r.min_seq > at_move,
            "{dev}: {r:?} (at the move back: {at_move})"
        );
    }
}

#[test]
fn rollback_of_a_shut_off_move_restores_the_definition_byte_for_byte() {
    let lab = Lab::new();
    lab.define(&lab.xml(&two_disks(&lab), "vda,vdb", "vmshift.rate=1048576"));
    let before = lab.inactive_xml();
    let b = lab.path("b");
    let out = lab.migrate(&["--to", s(&b)]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let id = report(&out)["job_id"].as_str().expect("id").to_owned();
    assert_ne!(lab.inactive_xml(), before);
    // The per-disk offline jobs are driven through the domain job, never on their own.
    let children: Vec<String> = events(&out)
        .iter()
        .filter(|e| e["event"] == "job" && e["job_id"] != id.as_str())
        .filter_map(|e| e["job_id"].as_str().map(str::to_owned))
        .collect();
    assert_eq!(children.len(), 2, "one offline job per disk");
    for verb in ["rollback", "resume", "cancel"] {
        let out = command(&lab, &[verb, &children[1]]);
        assert_eq!(out.status.code(), Some(2), "{verb}: {}", text(&out));
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(err.contains(&format!("domain job {id}")), "{verb}: {err}");
    }
    assert!(
        lab.path("b/d2.raw").exists(),
        "the refused rollback deleted nothing"
    );

    let out = command(&lab, &["rollback", &id]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(lab.inactive_xml(), before);
    assert!(listing(&b).is_empty(), "{:?}", listing(&b));
    assert_eq!(status(&lab, &id)["status"], "rolled_back");
    for c in &children {
        assert_eq!(status(&lab, c)["status"], "rolled_back", "per-disk job {c}");
    }
    // A second rollback is refused: the job is no longer succeeded.
    let again = command(&lab, &["rollback", &id]);
    assert_eq!(again.status.code(), Some(2), "{}", text(&again));
    lab.start();
}
