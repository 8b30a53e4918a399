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
        assert_eq!(report["status"], "interrupted", "{report}");
        // The rate of what it copied before it stopped, not 0.
        let rate = report["throughput_bytes_per_sec"].as_u64().unwrap() as f64;
        let copied = report["bytes_copied"].as_u64().unwrap() as f64;
        let secs = report["phases"][1]["duration_ms"].as_u64().unwrap() as f64 / 1000.0;
        assert!(
            copied > 0.0 && (rate / (copied / secs) - 1.0).abs() < 0.2,
            "{report}"
        );
        let err = stderr(&out);
        // Said once: the status, then how it stopped.
        assert!(
            err.contains("vmshift: interrupted: stopped at a chunk boundary by Ctrl-C or SIGTERM"),
            "{err}"
        );
        assert_eq!(err.matches("interrupted").count(), 1, "{err}");
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
        // The resumed run's progress counts the whole job, its reused chunks done already,
        // and its rate only what this run copies.
        let copy: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|e| e["event"] == "progress" && e["phase"] == "copy")
            .collect();
        let reused = r["bytes_reused"].as_u64().unwrap();
        // The plan says how much of it is already there.
        let err = stderr(&out);
        assert!(
            err.contains(&format!(
                "reused       {:.1} MiB of it from earlier runs",
                reused as f64 / M as f64
            )),
            "{reused} {err}"
        );
        let first = copy
            .iter()
            .find(|e| e["total_bytes"] == 48 * M)
            .expect("copy progress");
        assert!(first["done_bytes"].as_u64().unwrap() >= reused, "{first}");
        assert_eq!(copy.last().unwrap()["done_bytes"], 48 * M);
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

#[test]
fn an_interrupted_or_kept_partial_is_discarded_by_cancel_as_the_hint_says() {
    let ws = Ws::new();
    let src = ws.path("web01.raw");
    std::fs::write(&src, random_bytes(usize::try_from(48 * M).unwrap(), 5)).unwrap();
    let dst = ws.mkdir("b");
    let partial = dst.join("web01.raw.vmshift-partial");
    // Ctrl-C: interrupted, partial kept; the closing lines say how to resume or discard.
    let job = ws.start_copying(&src, &dst, "8M");
    std::thread::sleep(Duration::from_millis(500));
    signal(job.pid(), rustix::process::Signal::INT);
    let out = job.finish();
    let id = last_report(&out)["job_id"].as_str().unwrap().to_owned();
    assert!(
        stderr(&out).contains(&format!("`vmshift cancel {id}` removes it")),
        "{}",
        stderr(&out)
    );
    assert_eq!(ws.status(&id)["status"], "interrupted");
    assert!(partial.exists());
    let out = ws.vmshift().args(["cancel", &id]).output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let st = ws.status(&id);
    assert_eq!(
        (st["status"].as_str(), st["partial_state"].as_str()),
        (Some("cancelled"), Some("removed"))
    );
    assert!(listing(&dst).is_empty());

    // cancel --keep-partial, then cancel: the kept partial goes too.
    let job = ws.start_copying(&src, &dst, "8M");
    std::thread::sleep(Duration::from_millis(500));
    let jobs = ws.vmshift().args(["jobs", "--json"]).output().unwrap();
    let v: serde_json::Value = serde_json::from_slice(&jobs.stdout).unwrap();
    let id = v[1]["job_id"].as_str().unwrap().to_owned();
    let out = ws
        .vmshift()
        .args(["cancel", &id, "--keep-partial"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    job.finish();
    assert_eq!(ws.status(&id)["partial_state"], "kept");
    assert!(partial.exists());
    let out = ws.vmshift().args(["cancel", &id]).output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(ws.status(&id)["partial_state"], "removed");
    assert!(listing(&dst).is_empty());
    // A third cancel has nothing left to do.
    let out = ws.vmshift().args(["cancel", &id]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
}
