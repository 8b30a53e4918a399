//! Ctrl-C interrupts, `cancel` abandons: an interrupted offline copy keeps its journaled
//! partial target and `resume` continues it (with its own `--bwlimit`); `vmshift cancel`
//! still removes the partial.

mod common;

use common::*;
use std::time::Duration;

fn signal(pid: u32, sig: rustix::process::Signal) {
    let pid = rustix::process::Pid::from_raw(i32::try_from(pid).unwrap()).unwrap();
    rustix::process::kill_process(pid, sig).unwrap();
}

#[test]
fn ctrl_c_keeps_the_partial_and_resume_with_its_own_bwlimit_finishes_it() {
    for sig in [rustix::process::Signal::INT, rustix::process::Signal::TERM] {
        let ws = Ws::new();
        let src = ws.path("web01.raw");
        std::fs::write(&src, random_bytes(usize::try_from(48 * M).unwrap(), 9)).unwrap();
        let dst = ws.mkdir("b");
        let job = ws.start_copying(&src, &dst, "8M");
        std::thread::sleep(Duration::from_millis(2500)); // past the first checkpoint (2 s)
        signal(job.pid(), sig);
        let out = job.finish();
        assert_eq!(out.status.code(), Some(1), "{sig:?}: {}", stderr(&out));
        let report = last_report(&out);
        assert_eq!(report["status"], "cancelled", "{report}");
        let err = stderr(&out);
        assert!(err.contains("interrupted: Ctrl-C or SIGTERM"), "{err}");
        assert!(err.contains("`vmshift resume"), "{err}");
        let partial = dst.join("web01.raw.vmshift-partial");
        assert!(partial.exists(), "{sig:?}: the partial target was removed");
        assert!(!dst.join("web01.raw").exists());
        let id = report["job_id"].as_str().unwrap();
        let out = ws
            .vmshift()
            .args(["resume", id, "--bwlimit", "0", "--json"])
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", stderr(&out));
        let r = last_report(&out);
        assert_eq!(r["status"], "succeeded", "{r}");
        assert!(r["bytes_reused"].as_u64().unwrap() > 0, "{r}");
        assert!(identical(&src, &dst.join("web01.raw")));
        assert!(!partial.exists());
    }
}

#[test]
fn cancel_still_removes_the_partial_of_a_running_job() {
    let ws = Ws::new();
    let src = ws.path("web01.raw");
    std::fs::write(&src, random_bytes(usize::try_from(48 * M).unwrap(), 4)).unwrap();
    let dst = ws.mkdir("b");
    let job = ws.start_copying(&src, &dst, "4M");
    std::thread::sleep(Duration::from_millis(500));
    let jobs = ws.vmshift().args(["jobs", "--json"]).output().unwrap();
    let v: serde_json::Value = serde_json::from_slice(&jobs.stdout).unwrap();
    let id = v[0]["job_id"].as_str().unwrap().to_owned();
    let out = ws.vmshift().args(["cancel", &id]).output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let out = job.finish();
    assert_eq!(last_report(&out)["status"], "cancelled");
    assert!(!dst.join("web01.raw.vmshift-partial").exists());
    assert_eq!(listing(&dst), Vec::<String>::new());
}
