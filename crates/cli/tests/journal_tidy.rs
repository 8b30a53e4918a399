//! A journal that stays readable: refusals are not listed by default, jobs filter by status
//! and age, and `jobs prune` forgets old finished jobs (never one kept for a resume).

mod common;

use common::*;
use serde_json::Value;
use std::time::Duration;

fn jobs(ws: &Ws, args: &[&str]) -> Vec<Value> {
    let out = ws
        .vmshift()
        .arg("jobs")
        .args(args)
        .arg("--json")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    serde_json::from_slice::<Vec<Value>>(&out.stdout).unwrap()
}

#[test]
fn refusals_are_listed_only_when_asked_and_jobs_filter_by_status_and_age() {
    let ws = Ws::new();
    let src = ws.path("d.raw");
    std::fs::write(&src, vec![7u8; 1 << 20]).unwrap();
    let (code, _, _) = ws.migrate(&src, &ws.mkdir("b"), &[]);
    assert_eq!(code, 0);
    // Refused: the target exists.
    let (code, _, _) = ws.migrate(&src, &ws.path("b"), &[]);
    assert_eq!(code, 2);
    assert_eq!(jobs(&ws, &[]).len(), 1);
    assert_eq!(jobs(&ws, &["--all"]).len(), 2);
    let refused = jobs(&ws, &["--status", "refused"]);
    assert_eq!(refused.len(), 1);
    assert_eq!(refused[0]["status"], "refused");
    assert_eq!(jobs(&ws, &["--all", "--since", "1h"]).len(), 2);
    assert_eq!(
        jobs(&ws, &["--all", "--since", "2999-01-01T00:00:00Z"]).len(),
        0
    );
    let out = ws
        .vmshift()
        .args(["jobs", "--since", "yesterday"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("--since \"yesterday\""),
        "{}",
        stderr(&out)
    );
}

#[test]
fn prune_forgets_old_finished_jobs_and_their_reports_but_not_a_kept_partial() {
    let ws = Ws::new();
    let small = ws.path("d.raw");
    std::fs::write(&small, vec![7u8; 1 << 20]).unwrap();
    let (code, done, _) = ws.migrate(&small, &ws.mkdir("b"), &[]);
    assert_eq!(code, 0);
    let report = ws
        .path("state/reports")
        .join(format!("{}.json", done["job_id"].as_str().unwrap()));
    assert!(report.exists());
    // An interrupted copy keeps its partial for resume.
    let big = ws.path("big.raw");
    std::fs::write(&big, random_bytes(usize::try_from(32 * M).unwrap(), 3)).unwrap();
    let job = ws.start_copying(&big, &ws.mkdir("c"), "4M");
    std::thread::sleep(Duration::from_millis(2500));
    let pid = rustix::process::Pid::from_raw(i32::try_from(job.pid()).unwrap()).unwrap();
    rustix::process::kill_process(pid, rustix::process::Signal::INT).unwrap();
    let _ = job.finish();
    std::thread::sleep(Duration::from_millis(20));
    let out = ws
        .vmshift()
        .args(["jobs", "prune", "--older-than", "0s"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stderr(&out).contains("pruned 1 job(s)"), "{}", stderr(&out));
    let left = jobs(&ws, &["--all"]);
    assert_eq!(left.len(), 1, "{left:?}");
    assert_eq!(left[0]["partial_state"], "kept");
    assert!(!report.exists() && !report.with_extension("md").exists());
    let out = ws
        .vmshift()
        .args(["jobs", "prune", "--older-than", "soon"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
}
