//! `vmshift set JOB --bwlimit`: the bandwidth of a job running in another process changes
//! within a second, measured from the job's own progress events, and the change is in the
//! report.

mod common;

use common::*;
use serde_json::Value;
use std::io::{BufRead, BufReader};
use std::process::{Child, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};
use vmshift_qmp::testvm::{Disk, TestVm};

/// A `vmshift migrate --json` child whose events arrive, stamped with their arrival time.
struct Running {
    child: Child,
    events: mpsc::Receiver<(Instant, Value)>,
    id: String,
}

fn start(ws: &Ws, args: &[&str]) -> Running {
    let mut child = std::process::Command::new(assert_cmd::cargo::cargo_bin("vmshift"))
        .env("VMSHIFT_STATE_DIR", ws.path("state"))
        .arg("migrate")
        .args(args)
        .arg("--json")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let out = BufReader::new(child.stdout.take().unwrap());
    let (tx, events) = mpsc::channel();
    std::thread::spawn(move || {
        for line in out.lines().map_while(Result::ok) {
            if let Ok(v) = serde_json::from_str::<Value>(&line) {
                let _ = tx.send((Instant::now(), v));
            }
        }
    });
    let mut id = String::new();
    while id.is_empty() {
        let (_, v) = events
            .recv_timeout(Duration::from_secs(30))
            .expect("job event");
        if v["event"] == "job" {
            id = v["job_id"].as_str().unwrap_or_default().to_owned();
        }
    }
    Running { child, events, id }
}

/// Copy progress samples (arrival time, done bytes) until `until` or the report.
fn samples(r: &Running, until: Instant, report: &mut Value) -> Vec<(Instant, u64)> {
    let mut out = Vec::new();
    while Instant::now() < until {
        let Ok((t, v)) = r.events.recv_timeout(until - Instant::now()) else {
            break;
        };
        if v["event"] == "progress" && v["phase"] == "copy" {
            out.push((t, v["done_bytes"].as_u64().unwrap()));
        }
        if v["event"] == "report" {
            *report = v["report"].clone();
            break;
        }
    }
    out
}

/// Bytes/s between the first and last sample.
fn rate(s: &[(Instant, u64)]) -> f64 {
    let (a, b) = (s.first().unwrap(), s.last().unwrap());
    (b.1 - a.1) as f64 / (b.0 - a.0).as_secs_f64().max(1e-3)
}

fn set(ws: &Ws, id: &str, limit: &str) -> (i32, String) {
    let out = ws
        .vmshift()
        .args(["set", id, "--bwlimit", limit])
        .output()
        .unwrap();
    (out.status.code().unwrap_or(-1), stderr(&out))
}

#[test]
fn set_raises_a_running_offline_copy_within_a_second_and_the_report_lists_it() {
    let ws = Ws::new();
    let src = ws.path("web01.raw");
    std::fs::write(&src, random_bytes(usize::try_from(160 * M).unwrap(), 11)).unwrap();
    let dst = ws.mkdir("b");
    let mut r = start(&ws, &[p(&src), "--to", p(&dst), "--bwlimit", "8M"]);
    let mut report = Value::Null;
    let before = samples(
        &r,
        Instant::now() + Duration::from_millis(2500),
        &mut report,
    );
    let st = ws.vmshift().args(["status", &r.id]).output().unwrap();
    let text = String::from_utf8_lossy(&st.stdout);
    assert!(text.contains("now          copy "), "{text}");
    let (code, err) = set(&ws, &r.id, "64M");
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("bandwidth limit 64.0 MiB/s"), "{err}");
    // Half a second for the change to land (it takes effect within one), then measure.
    let _ = samples(&r, Instant::now() + Duration::from_millis(500), &mut report);
    let after = samples(&r, Instant::now() + Duration::from_secs(30), &mut report);
    assert!(r.child.wait().unwrap().success());
    let (rb, ra) = (rate(&before), rate(&after));
    eprintln!(
        "offline rate before {:.1} MiB/s, after {:.1} MiB/s",
        rb / M as f64,
        ra / M as f64
    );
    assert!(rb < 12.0 * M as f64, "the 8M limit held before: {rb}");
    assert!(ra >= 3.0 * rb, "after the set: {ra} vs {rb} before");
    assert_eq!(report["status"], "succeeded", "{report}");
    let changes = report["bwlimit_changes"]
        .as_array()
        .expect("changes listed");
    assert_eq!(changes.len(), 1, "{report}");
    assert_eq!(changes[0]["bytes_per_sec"], 64 * M);
    assert!(identical(&src, &dst.join("web01.raw")));
    // The journal keeps the change with the time it was applied.
    let status = ws
        .vmshift()
        .args(["status", &r.id, "--json"])
        .output()
        .unwrap();
    assert!(status.status.success());
}

#[test]
fn set_refuses_a_job_that_is_not_running() {
    let ws = Ws::new();
    let src = ws.path("d.raw");
    std::fs::write(&src, random_bytes(usize::try_from(2 * M).unwrap(), 3)).unwrap();
    let dst = ws.mkdir("b");
    let (code, report, _) = ws.migrate(&src, &dst, &[]);
    assert_eq!(code, 0);
    let id = report["job_id"].as_str().unwrap();
    let (code, err) = set(&ws, id, "10M");
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("is succeeded, not running"), "{err}");
    let (code, err) = set(&ws, "nosuchjob", "10M");
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("nosuchjob"), "{err}");
}

#[test]
fn set_raises_a_running_live_mirror_through_block_job_set_speed() {
    let ws = Ws::new();
    let src = ws.mkdir("a").join("web01.raw");
    std::fs::write(&src, random_bytes(usize::try_from(192 * M).unwrap(), 7)).unwrap();
    let vm = TestVm::paused(
        &ws.mkdir("vm"),
        &[Disk {
            path: src.clone(),
            format: "raw",
        }],
    )
    .unwrap();
    drop(vm.qmp().unwrap()); // QEMU is up; QMP serves one client at a time
    let dst = ws.mkdir("b");
    let mut r = start(
        &ws,
        &[
            "--qmp",
            p(&vm.qmp_path),
            "--to",
            p(&dst),
            "--bwlimit",
            "8M",
            "--copy-mode",
            "background",
        ],
    );
    let mut report = Value::Null;
    let before = samples(&r, Instant::now() + Duration::from_secs(4), &mut report);
    // Progress from anywhere: another process sees the live job's latest sample.
    let st = ws
        .vmshift()
        .args(["status", &r.id, "--json"])
        .output()
        .unwrap();
    let v: Value = serde_json::from_slice(&st.stdout).unwrap();
    assert!(v["now"]["done_bytes"].as_u64().unwrap_or(0) > 0, "{v}");
    assert_eq!(v["now"]["total_bytes"].as_u64(), Some(192 * M), "{v}");
    let (code, err) = set(&ws, &r.id, "96M");
    assert_eq!(code, 0, "{err}");
    let _ = samples(&r, Instant::now() + Duration::from_secs(1), &mut report);
    let after = samples(&r, Instant::now() + Duration::from_secs(60), &mut report);
    assert!(r.child.wait().unwrap().success(), "{report}");
    // QEMU 7.2 copies in 16 MiB bursts: "before" counts from the first sample.
    let (rb, ra) = (rate(&before), rate(&after));
    eprintln!(
        "live rate before {:.1} MiB/s, after {:.1} MiB/s",
        rb / M as f64,
        ra / M as f64
    );
    assert!(ra >= 3.0 * rb, "after the set: {ra} vs {rb} before");
    assert_eq!(report["status"], "succeeded", "{report}");
    let changes = report["bwlimit_changes"]
        .as_array()
        .expect("changes listed");
    assert_eq!(changes[0]["bytes_per_sec"], 96 * M, "{report}");
    assert!(identical(&src, &dst.join("web01.raw")));
}
