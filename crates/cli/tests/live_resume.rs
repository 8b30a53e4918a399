//! Live jobs across a real `kill -9` of vmshift and back again: `vmshift resume JOB` of a
//! live job interrupted mid-copy, and `vmshift rollback JOB` of a succeeded live job, against
//! a real guest-less QEMU (TCG, `-S`) whose disks hold data written beforehand.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use serde_json::{json, Value};
use vmshift_qmp::testvm::{Disk, TestVm};

fn vmshift(state: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_vmshift"));
    c.env("VMSHIFT_STATE_DIR", state);
    c
}

fn run(prog: &str, args: &[&str]) {
    let out = Command::new(prog).args(args).output().expect(prog);
    assert!(
        out.status.success(),
        "{prog} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn p(path: &Path) -> &str {
    path.to_str().expect("utf-8")
}

/// A raw image of `mib` MiB whose first `data` MiB hold `pattern` and a distinct last MiB.
/// A temp dir with datastores `a` (sources) and `b` (targets) and the state dir path.
fn datastores() -> (tempfile::TempDir, PathBuf, PathBuf, PathBuf) {
    let dir = tempfile::tempdir().expect("tmp");
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    std::fs::create_dir_all(&a).expect("mkdir");
    std::fs::create_dir_all(&b).expect("mkdir");
    let state = dir.path().join("state");
    (dir, a, b, state)
}

fn image(path: &Path, mib: u64, data: u64, pattern: &str) {
    run(
        "qemu-img",
        &["create", "-q", "-f", "raw", p(path), &format!("{mib}M")],
    );
    run(
        "qemu-io",
        &[
            "-f",
            "raw",
            "-c",
            &format!("write -P {pattern} 0 {data}M"),
            "-c",
            &format!("write -P 0x77 {}M 1M", mib - 1),
            p(path),
        ],
    );
}

fn attached(vm: &TestVm) -> String {
    let mut q = vm.qmp().expect("qmp");
    let b = q.execute("query-block", None).expect("query-block");
    b[0]["inserted"]["file"].as_str().unwrap_or("").to_owned()
}

fn status(state: &Path, job: &str) -> Value {
    let out = vmshift(state)
        .args(["status", "--json", job])
        .output()
        .expect("status");
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "status --json: {e}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

/// The `report` event of an NDJSON stdout.
fn report_of(stdout: &[u8]) -> Value {
    String::from_utf8_lossy(stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|v| v["event"] == "report")
        .map(|v| v["report"].clone())
        .unwrap_or(Value::Null)
}

fn compare(a: &Path, b: &Path) {
    run(
        "qemu-img",
        &["compare", "-q", "-f", "raw", "-F", "raw", p(a), p(b)],
    );
}

#[test]
fn resume_after_kill_9_mid_copy_mirrors_again_under_the_same_job() {
    let t0 = Instant::now();
    let (dir, a, b, state) = datastores();
    let src = a.join("web.raw");
    let dst = b.join("web.raw");
    image(&src, 8, 6, "0x5a");
    let mut vm = TestVm::paused(
        dir.path(),
        &[Disk {
            path: src.clone(),
            format: "raw",
        }],
    )
    .expect("qemu");
    assert_eq!(attached(&vm), p(&src));

    // 8 MiB at 1 MiB/s: kill -9 as soon as the mirror reports progress.
    let mut child = vmshift(&state)
        .args(["migrate", "--json", "--bwlimit", "1M", "--qmp"])
        .arg(&vm.qmp_path)
        .arg("--to")
        .arg(&b)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn vmshift");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let mut job = String::new();
    // (QEMU's throttled mirror issues its first 16 MiB buffer at once, then waits out the
    // limit: the job is mid-copy, not ready, for about 8 s.)
    let mut copying = Value::Null;
    for line in lines.by_ref() {
        let v: Value = serde_json::from_str(&line.expect("line")).expect("ndjson");
        if v["event"] == "job" {
            job = v["job_id"].as_str().expect("job id").to_owned();
        }
        if v["event"] == "progress" {
            copying = v;
            break;
        }
        assert_ne!(v["event"], "report", "finished before the kill: {v}");
    }
    child.kill().expect("kill -9");
    child.wait().expect("reap");
    assert!(!job.is_empty(), "no job event");
    assert_eq!(copying["disks"][0]["ready"], false, "{copying}");
    assert!(dst.exists(), "the partial target exists after the kill");
    assert_eq!(status(&state, &job)["status"], "interrupted");
    {
        // QEMU still runs the killed process's throttled mirror.
        let mut q = vm.qmp().expect("qmp");
        let jobs = q.execute("query-jobs", None).expect("jobs");
        assert_eq!(jobs.as_array().map(Vec::len), Some(1), "{jobs}");
        assert!(jobs[0]["id"].as_str().unwrap_or("").starts_with("vmshift"));
        assert_eq!(jobs[0]["status"], "running", "{jobs}");
    }

    let out = vmshift(&state)
        .args(["resume", "--json", &job])
        .output()
        .expect("resume");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    let report = report_of(&out.stdout);
    assert_eq!(report["job_id"], job.as_str());
    assert_eq!(report["status"], "succeeded");
    assert_eq!(report["disks"][0]["new_path"], p(&dst));
    let notes = report["notes"].to_string();
    assert!(notes.contains("interrupted before the pivot"), "{notes}");
    assert!(
        notes.contains("cleared the interrupted run's leftovers"),
        "{notes}"
    );
    assert!(notes.contains("removed the partial target"), "{notes}");
    let st = status(&state, &job);
    assert_eq!(st["status"], "succeeded", "{st}");
    assert_eq!(attached(&vm), p(&dst));
    {
        let mut q = vm.qmp().expect("qmp");
        assert_eq!(q.execute("query-jobs", None).expect("jobs"), json!([]));
        vm.quit(&mut q).expect("quit");
    }
    compare(&src, &dst);
    eprintln!("resume test took {:?}", t0.elapsed());
}

#[test]
fn rollback_moves_a_live_job_back_to_its_old_paths() {
    let t0 = Instant::now();
    let (dir, a, b, state) = datastores();
    let src = a.join("db.raw");
    image(&src, 8, 4, "0x3c");
    let pristine: PathBuf = dir.path().join("pristine.raw");
    std::fs::copy(&src, &pristine).expect("copy");
    let mut vm = TestVm::paused(
        dir.path(),
        &[Disk {
            path: src.clone(),
            format: "raw",
        }],
    )
    .expect("qemu");
    let out = vmshift(&state)
        .args(["migrate", "--json", "--format", "qcow2", "--qmp"])
        .arg(&vm.qmp_path)
        .arg("--to")
        .arg(&b)
        .output()
        .expect("migrate");
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let first = report_of(&out.stdout);
    let job = first["job_id"].as_str().expect("job id").to_owned();
    // (The target's name follows the source's unless a format change renames its extension.)
    let moved = PathBuf::from(first["disks"][0]["new_path"].as_str().expect("new path"));
    assert_eq!(moved.parent(), Some(b.as_path()));
    assert_eq!(first["disks"][0]["format"], "qcow2");
    assert_eq!(attached(&vm), p(&moved));
    assert!(src.exists(), "the source is kept by default");
    // The guest (here: QMP's qemu-io) writes after the pivot: the old source is now stale.
    {
        let mut q = vm.qmp().expect("qmp");
        let said = q
            .call(
                "human-monitor-command",
                json!({"command-line": "qemu-io -d /machine/peripheral/vd0/virtio-backend \"write -P 0x99 1M 64k\""}),
            )
            .expect("qemu-io");
        // HMP qemu-io answers "" (or "wrote ...") on success, an error text otherwise.
        let said = said.as_str().unwrap_or("");
        assert!(said.is_empty() || said.contains("wrote"), "{said}");
    }
    run(
        "qemu-io",
        &["-f", "raw", "-c", "write -P 0x99 1M 64k", p(&pristine)],
    );

    let out = vmshift(&state)
        .args(["rollback", "--json", &job])
        .output()
        .expect("rollback");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let summary: Value = stdout
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|v| v["status"] == "rolled_back")
        .unwrap_or_else(|| panic!("no rollback summary: {stdout}"));
    let back_job = summary["rollback_job"]
        .as_str()
        .expect("new job")
        .to_owned();
    assert_ne!(back_job, job);
    let back = report_of(&out.stdout);
    assert_eq!(back["job_id"], back_job.as_str());
    assert_eq!(back["status"], "succeeded");
    assert_eq!(back["disks"][0]["new_path"], p(&src));
    assert_eq!(back["disks"][0]["format"], "raw");
    let notes = back["notes"].to_string();
    assert!(notes.contains("removed the stale old source"), "{notes}");
    assert!(
        notes.contains(&format!("rollback of live job {job}")),
        "{notes}"
    );

    assert_eq!(attached(&vm), p(&src));
    assert!(!moved.exists(), "the copy at the destination is deleted");
    assert_eq!(status(&state, &job)["status"], "rolled_back");
    let st_back = status(&state, &back_job);
    assert_eq!(st_back["status"], "succeeded", "{st_back}");
    let orig_report: Value = serde_json::from_str(
        &std::fs::read_to_string(state.join(format!("reports/{job}.json"))).expect("report"),
    )
    .expect("json");
    assert_eq!(orig_report["status"], "rolled_back");
    {
        let mut q = vm.qmp().expect("qmp");
        assert_eq!(q.execute("query-jobs", None).expect("jobs"), json!([]));
        vm.quit(&mut q).expect("quit");
    }
    // Data intact: the old path holds what the guest saw, including its write after the move.
    compare(&pristine, &src);
    // A second rollback is refused.
    let again = vmshift(&state)
        .args(["rollback", &job])
        .output()
        .expect("rollback again");
    assert_eq!(again.status.code(), Some(2));
    eprintln!("rollback test took {:?}", t0.elapsed());
}

#[test]
fn resume_after_kill_9_past_the_pivot_finishes_the_remaining_phases() {
    let t0 = Instant::now();
    let (dir, a, b, state) = datastores();
    let src = a.join("app.raw");
    let dst = b.join("app.raw");
    image(&src, 8, 5, "0x42");
    let pristine = dir.path().join("pristine.raw");
    std::fs::copy(&src, &pristine).expect("copy");
    let mut vm = TestVm::paused(
        dir.path(),
        &[Disk {
            path: src.clone(),
            format: "raw",
        }],
    )
    .expect("qemu");
    // A real SIGKILL right after every disk pivoted, before the old nodes are detached and
    // before anything is recorded (debug builds honour VMSHIFT_TEST_SIGKILL_AT).
    let out = vmshift(&state)
        .env("VMSHIFT_TEST_SIGKILL_AT", "live:pivoted")
        .args(["migrate", "--json", "--delete-source", "--qmp"])
        .arg(&vm.qmp_path)
        .arg("--to")
        .arg(&b)
        .output()
        .expect("migrate");
    assert_eq!(out.status.code(), None, "killed by a signal");
    let job = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|v| v["event"] == "job")
        .and_then(|v| v["job_id"].as_str().map(str::to_owned))
        .expect("job id");
    assert_eq!(status(&state, &job)["status"], "interrupted");
    assert_eq!(attached(&vm), p(&dst), "the VM already runs on the target");
    {
        let mut q = vm.qmp().expect("qmp");
        let nodes = q
            .call("query-named-block-nodes", json!({"flat": true}))
            .expect("nodes");
        assert!(
            nodes
                .as_array()
                .expect("array")
                .iter()
                .any(|n| n["file"] == p(&src)),
            "the old nodes are still attached"
        );
    }
    assert!(src.exists());

    let out = vmshift(&state)
        .args(["resume", "--json", &job])
        .output()
        .expect("resume");
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report = report_of(&out.stdout);
    assert_eq!(report["job_id"], job.as_str());
    assert_eq!(report["status"], "succeeded");
    assert_eq!(report["source_deleted"], true);
    assert_eq!(report["disks"][0]["old_path"], p(&src));
    assert_eq!(report["disks"][0]["new_path"], p(&dst));
    assert!(
        report["notes"]
            .to_string()
            .contains("interrupted after the pivot"),
        "{report}"
    );
    assert_eq!(status(&state, &job)["status"], "succeeded");
    assert!(
        !src.exists(),
        "--delete-source was recorded: the source is deleted"
    );
    {
        let mut q = vm.qmp().expect("qmp");
        assert_eq!(q.execute("query-jobs", None).expect("jobs"), json!([]));
        let nodes = q
            .call("query-named-block-nodes", json!({"flat": true}))
            .expect("nodes");
        assert!(
            !nodes
                .as_array()
                .expect("array")
                .iter()
                .any(|n| n["file"] == p(&src)),
            "{nodes}"
        );
        vm.quit(&mut q).expect("quit");
    }
    compare(&pristine, &dst);
    eprintln!("post-pivot resume test took {:?}", t0.elapsed());
}

#[test]
fn cancel_after_kill_9_mid_copy_clears_qemu_and_the_partial_target() {
    let (dir, a, b, state) = datastores();
    let src = a.join("web.raw");
    let dst = b.join("web.raw");
    image(&src, 8, 6, "0x5a");
    let vm = TestVm::paused(
        dir.path(),
        &[Disk {
            path: src.clone(),
            format: "raw",
        }],
    )
    .expect("qemu");
    let mut child = vmshift(&state)
        .args(["migrate", "--json", "--bwlimit", "1M", "--qmp"])
        .arg(&vm.qmp_path)
        .arg("--to")
        .arg(&b)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn vmshift");
    let mut job = String::new();
    for line in BufReader::new(child.stdout.take().expect("stdout")).lines() {
        let v: Value = serde_json::from_str(&line.expect("line")).expect("ndjson");
        if v["event"] == "job" {
            job = v["job_id"].as_str().expect("job id").to_owned();
        }
        if v["event"] == "progress" {
            break;
        }
    }
    child.kill().expect("kill -9");
    child.wait().expect("reap");
    assert!(dst.exists(), "the partial target exists after the kill");

    let out = vmshift(&state)
        .args(["cancel", &job])
        .output()
        .expect("cancel");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert!(err.contains("1 mirror job(s)"), "{err}");
    assert!(!dst.exists(), "the partial target was not removed");
    assert_eq!(status(&state, &job)["status"], "cancelled");
    let mut q = vm.qmp().expect("qmp");
    let jobs = q.execute("query-jobs", None).expect("jobs");
    assert_eq!(jobs.as_array().map(Vec::len), Some(0), "{jobs}");
    drop(q);
    assert_eq!(attached(&vm), p(&src), "the VM left its source");
}
