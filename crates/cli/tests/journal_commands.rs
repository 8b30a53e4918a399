//! `vmshift jobs`, `status`, `cancel` (from another process), `rollback`, and the job and
//! target locks, against real running `vmshift` processes.

mod common;
use common::*;
use serde_json::Value;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Stdio};
use std::time::Duration;

/// Starts a slow migration (4 MiB/s) and returns it once its copy phase runs, with its id.
fn slow_migrate(ws: &Ws, src: &Path, dst: &Path) -> (Child, String) {
    let mut child = std::process::Command::new(assert_cmd::cargo::cargo_bin("vmshift"))
        .args([
            "migrate",
            p(src),
            "--to",
            p(dst),
            "--bwlimit",
            "4M",
            "--json",
        ])
        .env("VMSHIFT_STATE_DIR", ws.path("state"))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut r = BufReader::new(child.stdout.take().unwrap());
    let mut id = String::new();
    let mut line = String::new();
    loop {
        line.clear();
        assert!(r.read_line(&mut line).unwrap() > 0, "vmshift ended early");
        let v: Value = serde_json::from_str(&line).unwrap_or(Value::Null);
        if v["event"] == "job" {
            id = v["job_id"].as_str().unwrap().to_string();
        }
        if v["event"] == "phase" && v["phase"] == "copy" {
            break;
        }
    }
    // Keep draining stdout so the job never blocks on a full pipe.
    std::thread::spawn(move || {
        let mut sink = String::new();
        while r.read_line(&mut sink).map(|n| n > 0).unwrap_or(false) {
            sink.clear();
        }
    });
    std::thread::sleep(Duration::from_millis(600));
    (child, id)
}

fn source(ws: &Ws) -> std::path::PathBuf {
    let src = ws.path("web01.raw");
    std::fs::write(&src, random_bytes(usize::try_from(32 * M).unwrap(), 5)).unwrap();
    src
}

#[test]
fn a_running_job_refuses_a_second_resume_and_a_second_job_on_its_target_naming_the_pid() {
    let ws = Ws::new();
    let src = source(&ws);
    let dst = ws.mkdir("dst");
    let (mut child, id) = slow_migrate(&ws, &src, &dst);
    let pid = child.id().to_string();

    let st = ws.status(&id);
    assert_eq!(st["status"], "running");
    assert_eq!(st["pid"].as_u64().unwrap().to_string(), pid);

    let out = ws.vmshift().args(["resume", &id]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains(&format!("process {pid}")),
        "{}",
        stderr(&out)
    );
    // Another job writing the same target is refused by the target lock.
    let (code, _, out) = ws.migrate(&src, &dst, &[]);
    assert_eq!(code, 2, "{}", stderr(&out));
    assert!(stderr(&out).contains(&pid), "{}", stderr(&out));

    let _ = child.kill();
    child.wait().unwrap();
    // Once the holder is dead its lock is gone: the job shows as interrupted.
    assert_eq!(ws.status(&id)["status"], "interrupted");
}

#[test]
fn cancel_from_another_process_stops_the_job_and_removes_or_keeps_the_partial() {
    let ws = Ws::new();
    let src = source(&ws);

    let dst = ws.mkdir("dst");
    let (mut child, id) = slow_migrate(&ws, &src, &dst);
    let out = ws.vmshift().args(["cancel", &id]).output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(child.wait().unwrap().code(), Some(1));
    let st = ws.status(&id);
    assert_eq!(st["status"], "cancelled");
    assert_eq!(st["partial_state"], "removed");
    assert!(listing(&dst).is_empty(), "{:?}", listing(&dst));

    let dst2 = ws.mkdir("dst2");
    let (mut child, id2) = slow_migrate(&ws, &src, &dst2);
    let out = ws
        .vmshift()
        .args(["cancel", &id2, "--keep-partial"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    child.wait().unwrap();
    let st = ws.status(&id2);
    assert_eq!(st["status"], "cancelled");
    assert_eq!(st["partial_state"], "kept");
    assert!(st["progress"]["done_bytes"].as_u64().unwrap() > 0);
    assert_eq!(
        listing(&dst2),
        vec!["web01.raw.vmshift-partial".to_string()]
    );
    // A kept partial resumes.
    let out = ws
        .vmshift()
        .args(["resume", &id2, "--json"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let r = last_report(&out);
    assert!(r["bytes_reused"].as_u64().unwrap() > 0);
    assert_same_image(&src, &dst2.join("web01.raw"));
    // Nothing left to cancel.
    let out = ws.vmshift().args(["cancel", &id2]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn rollback_deletes_the_target_marks_the_job_and_names_the_references() {
    let ws = Ws::new();
    let src = source(&ws);
    let before = std::fs::read(&src).unwrap();
    let dst = ws.mkdir("dst");
    let (code, r, out) = ws.migrate(&src, &dst, &["--format", "qcow2"]);
    assert_eq!(code, 0, "{}", stderr(&out));
    let id = r["job_id"].as_str().unwrap().to_string();
    let target = dst.join("web01.qcow2");
    assert!(target.exists());

    let out = ws
        .vmshift()
        .args(["rollback", &id[..13], "--json"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["status"], "rolled_back");
    assert!(v["references"][0]
        .as_str()
        .unwrap()
        .contains(&format!("back at {}", p(&src))));
    assert!(!target.exists());
    assert_eq!(std::fs::read(&src).unwrap(), before);
    assert_eq!(ws.status(&id)["status"], "rolled_back");
    let report: Value = serde_json::from_str(
        &std::fs::read_to_string(ws.path(&format!("state/reports/{id}.json"))).unwrap(),
    )
    .unwrap();
    assert_eq!(report["status"], "rolled_back");
    // Twice is refused; so is a job whose source is gone.
    let out = ws.vmshift().args(["rollback", &id]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let (code, r, _) = ws.migrate(&src, &dst, &["--delete-source"]);
    assert_eq!(code, 0);
    let out = ws
        .vmshift()
        .args(["rollback", r["job_id"].as_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("no longer exists"),
        "{}",
        stderr(&out)
    );
    assert!(dst.join("web01.raw").exists(), "the only copy is kept");
}

#[test]
fn jobs_and_status_list_what_happened() {
    let ws = Ws::new();
    let out = ws.vmshift().args(["jobs"]).output().unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("no jobs yet"));
    let src = source(&ws);
    let (code, r, _) = ws.migrate(&src, &ws.mkdir("dst"), &[]);
    assert_eq!(code, 0);
    let id = r["job_id"].as_str().unwrap();
    let out = ws.vmshift().args(["jobs", "--json"]).output().unwrap();
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v[0]["job_id"], id);
    assert_eq!(v[0]["status"], "succeeded");
    assert_eq!(v[0]["kind"], "offline");
    assert_eq!(v[0]["progress"]["done_bytes"], 32 * M);
    assert_eq!(v[0]["progress"]["total_bytes"], 32 * M);
    let text = ws.vmshift().args(["jobs"]).output().unwrap();
    let t = String::from_utf8_lossy(&text.stdout);
    assert!(
        t.contains(id) && t.contains("succeeded") && t.contains("100%"),
        "{t}"
    );
    let st = ws.status(id);
    let phases: Vec<&str> = st["phases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["phase"].as_str().unwrap())
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
    assert!(st["phases"][1]["duration_ms"].is_u64());
    let out = ws.vmshift().args(["status", "nope"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("no job nope"), "{}", stderr(&out));
}

/// An interrupted job: the migration SIGKILLs itself after its first checkpoint's fsync
/// (debug-build test hook), leaving a partial target and a `running` record behind.
fn interrupted(ws: &Ws, src: &Path, dst: &Path) -> String {
    let out = std::process::Command::new(assert_cmd::cargo::cargo_bin("vmshift"))
        .args(["migrate", p(src), "--to", p(dst), "--json"])
        .env("VMSHIFT_STATE_DIR", ws.path("state"))
        .env("VMSHIFT_TEST_SIGKILL_AT", "checkpoint:2")
        .output()
        .unwrap();
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&out.status),
        Some(9)
    );
    let id = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|v| v["event"] == "job")
        .unwrap()["job_id"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(ws.status(&id)["status"], "interrupted");
    id
}

#[test]
fn resume_refuses_a_changed_source_and_cancel_closes_an_interrupted_job() {
    let ws = Ws::new();
    let src = ws.path("big.raw");
    std::fs::write(&src, random_bytes(usize::try_from(160 * M).unwrap(), 8)).unwrap();
    let dst = ws.mkdir("dst");
    let id = interrupted(&ws, &src, &dst);
    // The source is written after the job began: resume refuses, touching nothing.
    let f = std::fs::OpenOptions::new().write(true).open(&src).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&f, b"changed", 4096).unwrap();
    drop(f);
    let out = ws.vmshift().args(["resume", &id]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    assert!(
        err.contains("was modified since the job began") && err.contains(p(&src)),
        "{err}"
    );
    assert!(dst.join("big.raw.vmshift-partial").exists());
    // Nobody runs it: cancel closes it and removes the partial target.
    let out = ws.vmshift().args(["cancel", &id]).output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let st = ws.status(&id);
    assert_eq!(st["status"], "cancelled");
    assert_eq!(st["partial_state"], "removed");
    assert!(listing(&dst).is_empty());
}

#[test]
fn resume_refuses_a_partial_target_it_did_not_write() {
    let ws = Ws::new();
    let src = ws.path("big.raw");
    std::fs::write(&src, random_bytes(usize::try_from(160 * M).unwrap(), 8)).unwrap();
    let dst = ws.mkdir("dst");
    let id = interrupted(&ws, &src, &dst);
    let partial = dst.join("big.raw.vmshift-partial");
    // Someone else's bytes at the start of every MiB, so of every chunk: whichever chunks
    // the journal recorded (parallel workers finish them in any order), the sample re-reads
    // one of them.
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(&partial)
        .unwrap();
    for mib in 0..160u64 {
        std::os::unix::fs::FileExt::write_all_at(&f, &[0x55; 4096], mib * M).unwrap();
    }
    drop(f);
    let out = ws.vmshift().args(["resume", &id]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    assert!(
        err.contains("is not the partial target this job wrote") && err.contains(" 0x"),
        "{err}"
    );
    assert!(
        partial.exists(),
        "a file we cannot prove ours is left alone"
    );
}
