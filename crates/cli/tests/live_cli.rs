//! `vmshift migrate --qmp` end to end: the real binary against a real QEMU (TCG) running the
//! test guest, which writes stamped blocks throughout.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::Value;
use vmshift_qmp::stamp;
use vmshift_qmp::testvm::{Disk, Guest, TestVm};

const MIB: u64 = 1 << 20;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .expect("repo")
}

fn stamped_raw(path: &Path, size: u64) {
    let mut f = std::io::BufWriter::new(std::fs::File::create(path).expect("create"));
    for b in 0..size / stamp::BLOCK as u64 {
        f.write_all(&stamp::make_block(b, 0)).expect("write");
    }
    f.flush().expect("flush");
}

fn vmshift(state: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_vmshift"));
    c.env("VMSHIFT_STATE_DIR", state);
    c
}

fn attached_file(vm: &TestVm) -> String {
    let mut q = vm.qmp().expect("qmp");
    let b = q.execute("query-block", None).expect("query-block");
    b[0]["inserted"]["file"].as_str().unwrap_or("").to_owned()
}

/// Boots the guest writing 1 MiB/s on a 32 MiB raw disk in `dir/a`.
fn writing_guest(dir: &Path) -> (TestVm, PathBuf) {
    let guest = Guest::build(&repo()).expect("guest");
    std::fs::create_dir_all(dir.join("a")).expect("mkdir");
    std::fs::create_dir_all(dir.join("b")).expect("mkdir");
    let src = dir.join("a/web01.raw");
    stamped_raw(&src, 32 * MIB);
    let vm = TestVm::boot(
        dir,
        &guest,
        &[Disk {
            path: src.clone(),
            format: "raw",
        }],
        "vmshift.rate=1048576",
    )
    .expect("boot");
    vm.wait_serial("VMSHIFT-SEQ", Duration::from_secs(30))
        .expect("guest writes");
    (vm, src)
}

#[test]
fn migrate_qmp_json_moves_a_writing_guest_and_reports_pivot_ms() {
    let dir = tempfile::tempdir().expect("tmp");
    let (mut vm, src) = writing_guest(dir.path());
    let out = vmshift(&dir.path().join("state"))
        .args(["migrate", "--json", "--format", "qcow2", "--qmp"])
        .arg(&vm.qmp_path)
        .arg("--to")
        .arg(dir.path().join("b"))
        .output()
        .expect("run vmshift");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let events: Vec<Value> = stdout
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    // Each phase once, in the order they happen.
    let started: Vec<&str> = events
        .iter()
        .filter(|e| e["event"] == "phase" && e["state"] == "started")
        .filter_map(|e| e["phase"].as_str())
        .collect();
    assert_eq!(started, ["check", "copy", "cutover", "cleanup"], "{stdout}");
    let report = &events
        .iter()
        .rev()
        .find(|e| e["event"] == "report")
        .expect("report event")["report"];
    let recorded: Vec<&str> = report["phases"]
        .as_array()
        .expect("phases")
        .iter()
        .filter_map(|p| p["name"].as_str())
        .collect();
    assert_eq!(recorded, started);
    // The journal has every phase, each ended.
    let status = vmshift(&dir.path().join("state"))
        .args([
            "status",
            report["job_id"].as_str().expect("job id"),
            "--json",
        ])
        .output()
        .expect("run vmshift status");
    let st: Value = serde_json::from_slice(&status.stdout).expect("status json");
    let journaled: Vec<&str> = st["phases"]
        .as_array()
        .expect("phases")
        .iter()
        .filter_map(|p| p["phase"].as_str())
        .collect();
    assert_eq!(journaled, started, "{st}");
    assert!(
        st["phases"]
            .as_array()
            .expect("phases")
            .iter()
            .all(|p| !p["ended_at"].is_null()),
        "{st}"
    );
    let text = vmshift(&dir.path().join("state"))
        .args(["status", report["job_id"].as_str().expect("job id")])
        .output()
        .expect("run vmshift status");
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(
        text.contains("progress     100% (QEMU's mirror of"),
        "{text}"
    );
    assert_eq!(report["kind"], "live");
    assert_eq!(report["status"], "succeeded");
    let d = &report["disks"][0];
    let target = dir
        .path()
        .join("b/web01.qcow2") // the extension follows the target format
        .canonicalize()
        .expect("target");
    assert_eq!(d["device"], "vd0");
    assert_eq!(d["new_path"], target.display().to_string());
    assert_eq!(d["format"], "qcow2");
    assert_eq!(d["copy_mode"], "background");
    assert!(d["pivot_ms"].as_u64().is_some_and(|p| p < 1000), "{d}");
    assert!(d["time_to_ready_ms"].as_u64().is_some());
    assert_eq!(report["pivot_ms"], d["pivot_ms"]);
    assert_eq!(attached_file(&vm), target.display().to_string());
    let mut q = vm.qmp().expect("qmp");
    let n = stamp::batches_logged(&vm.serial_log(), "vda");
    vm.wait_batches("vda", n, 10, Duration::from_secs(30))
        .expect("writes after pivot");
    vm.quit(&mut q).expect("quit");
    let floor = stamp::last_floor(&vm.serial_log(), "vda").expect("floor");
    let raw = dir.path().join("check.raw");
    let st = Command::new("qemu-img")
        .args(["convert", "-q", "-f", "qcow2", "-O", "raw"])
        .arg(&target)
        .arg(&raw)
        .status()
        .expect("qemu-img");
    assert!(st.success());
    let rep =
        stamp::verify_raw(&raw, None, floor).expect("every flushed guest write is on the target");
    assert_eq!(rep.blocks, 32 * MIB / 4096);
    assert!(src.exists(), "source kept without --delete-source");
}

#[test]
fn ctrl_c_mid_copy_cancels_and_leaves_the_vm_on_its_source() {
    let dir = tempfile::tempdir().expect("tmp");
    let (vm, src) = writing_guest(dir.path());
    let mut child = vmshift(&dir.path().join("state"))
        .args(["migrate", "--json", "--bwlimit", "1M", "--qmp"])
        .arg(&vm.qmp_path)
        .arg("--to")
        .arg(dir.path().join("b"))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn vmshift");
    let stdout = child.stdout.take().expect("stdout");
    let mut lines = BufReader::new(stdout).lines();
    let mut interrupted = false;
    let mut report = Value::Null;
    for line in lines.by_ref() {
        let Ok(v) = serde_json::from_str::<Value>(&line.expect("line")) else {
            continue;
        };
        if !interrupted
            && v["event"] == "progress"
            && v["done_bytes"].as_u64().is_some_and(|d| d > 0)
        {
            // Ctrl-C: SIGINT to the vmshift process this test started.
            let pid = rustix::process::Pid::from_child(&child);
            rustix::process::kill_process(pid, rustix::process::Signal::INT).expect("SIGINT");
            interrupted = true;
        }
        if v["event"] == "report" {
            report = v["report"].clone();
        }
    }
    let status = child.wait().expect("wait");
    assert!(interrupted, "no copy progress seen");
    assert_eq!(status.code(), Some(1));
    assert_eq!(report["status"], "cancelled", "{report}");
    assert!(
        report["error"]["message"]
            .as_str()
            .unwrap_or("")
            .contains("still runs on its source"),
        "{report}"
    );
    assert_eq!(attached_file(&vm), src.display().to_string());
    assert_eq!(
        std::fs::read_dir(dir.path().join("b")).expect("ls").count(),
        0,
        "target left behind"
    );
    let n = stamp::batches_logged(&vm.serial_log(), "vda");
    vm.wait_batches("vda", n, 5, Duration::from_secs(30))
        .expect("guest still writing");
}

#[test]
fn vmshift_cancel_job_mid_copy_cancels_the_live_job() {
    let dir = tempfile::tempdir().expect("tmp");
    let state = dir.path().join("state");
    let (vm, src) = writing_guest(dir.path());
    let mut child = vmshift(&state)
        .args(["migrate", "--json", "--bwlimit", "1M", "--qmp"])
        .arg(&vm.qmp_path)
        .arg("--to")
        .arg(dir.path().join("b"))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn vmshift");
    let stdout = child.stdout.take().expect("stdout");
    let mut job = String::new();
    let mut cancel_status = None;
    let mut report = Value::Null;
    for line in BufReader::new(stdout).lines() {
        let Ok(v) = serde_json::from_str::<Value>(&line.expect("line")) else {
            continue;
        };
        if v["event"] == "job" {
            job = v["job_id"].as_str().expect("job id").to_owned();
        }
        if cancel_status.is_none()
            && v["event"] == "progress"
            && v["done_bytes"].as_u64().is_some_and(|d| d > 0)
        {
            // A second vmshift asks the running one to cancel (in the background: it waits
            // for the job to end while we keep draining this one's output).
            let c = vmshift(&state)
                .args(["cancel", &job])
                .stderr(Stdio::null())
                .spawn()
                .expect("vmshift cancel");
            cancel_status = Some(c);
        }
        if v["event"] == "report" {
            report = v["report"].clone();
        }
    }
    let status = child.wait().expect("wait");
    let cancel = cancel_status
        .expect("no copy progress seen")
        .wait()
        .expect("cancel");
    assert_eq!(cancel.code(), Some(0), "vmshift cancel failed");
    assert_eq!(status.code(), Some(1));
    assert_eq!(report["status"], "cancelled", "{report}");
    assert_eq!(attached_file(&vm), src.display().to_string());
    assert_eq!(
        std::fs::read_dir(dir.path().join("b")).expect("ls").count(),
        0
    );
    let jobs = vmshift(&state)
        .args(["jobs", "--json"])
        .output()
        .expect("jobs");
    let list: Value = serde_json::from_slice(&jobs.stdout).expect("jobs json");
    let rec = list
        .as_array()
        .expect("array")
        .iter()
        .find(|j| j["job_id"] == job.as_str())
        .unwrap_or_else(|| panic!("job {job} not listed: {list}"));
    assert_eq!(rec["kind"], "live");
    assert_eq!(rec["status"], "cancelled");
}

#[test]
fn demo_moves_the_writing_guest_live_and_as_a_libvirt_domain_and_checks_every_block() {
    let dir = tempfile::tempdir().expect("tmp");
    let out = vmshift(dir.path())
        .args(["demo", "--json"])
        .output()
        .expect("run vmshift demo");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let events: Vec<Value> = stdout
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    let live = events
        .iter()
        .filter(|e| e["event"] == "report")
        .map(|e| &e["report"])
        .find(|r| r["kind"] == "live")
        .expect("a live report");
    assert_eq!(live["status"], "succeeded");
    assert!(live["pivot_ms"].as_u64().is_some(), "{live}");
    let check = events
        .iter()
        .find(|e| e["event"] == "guest_check")
        .expect("guest check");
    assert_eq!(check["blocks"], 2048);
    assert!(check["floor"].as_u64().is_some_and(|f| f > 0), "{check}");
    // The libvirt part (libvirt is installed here): a domain moved live, its definition
    // rewritten, both disks' stamps checked after the plug was pulled.
    let domain = events
        .iter()
        .filter(|e| e["event"] == "report")
        .map(|e| &e["report"])
        .find(|r| r["kind"] == "domain")
        .expect("a domain report");
    assert_eq!(domain["status"], "succeeded", "{domain}");
    assert_eq!(domain["references"].as_array().map(Vec::len), Some(2));
    let checks: Vec<&Value> = events
        .iter()
        .filter(|e| e["event"] == "guest_check")
        .collect();
    assert_eq!(checks.len(), 3, "one QMP and two libvirt disk checks");
    assert!(checks[1..]
        .iter()
        .all(|c| c["blocks"] == 2048 && c["floor"].as_u64().is_some_and(|f| f > 0)));
}
