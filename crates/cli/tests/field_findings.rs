//! What a fresh operator found trying this session's build, each kept from coming back.

mod common;

use common::*;
use serde_json::Value;

#[test]
fn rollback_keeps_a_target_written_since_the_move() {
    let ws = Ws::new();
    let src = ws.path("web01.qcow2");
    qemu_img(&["create", "-q", "-f", "qcow2", p(&src), "16M"]);
    qemu_io("qcow2", &src, &["write -P 0x11 0 2M"]);
    let dst = ws.mkdir("b");
    let (code, report, _) = ws.migrate(&src, &dst, &[]);
    assert_eq!(code, 0);
    let id = report["job_id"].as_str().unwrap();
    let target = dst.join("web01.qcow2");
    // The VM now runs on the new disk and writes.
    qemu_io("qcow2", &target, &["write -P 0x99 4M 1M"]);
    let out = ws.vmshift().args(["rollback", id]).output().unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("was written since the job verified it"),
        "{}",
        stderr(&out)
    );
    assert!(
        target.exists(),
        "the only copy of the new writes was deleted"
    );
    // Unchanged since the move: the rollback goes ahead.
    let dst2 = ws.mkdir("c");
    let (_, report2, _) = ws.migrate(&src, &dst2, &[]);
    let id2 = report2["job_id"].as_str().unwrap();
    let out = ws.vmshift().args(["rollback", id2]).output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(!dst2.join("web01.qcow2").exists());
}

#[test]
fn a_sector_of_text_named_as_a_raw_backing_file_is_refused() {
    let ws = Ws::new();
    let tpl = ws.mkdir("store/tpl");
    let vm = ws.mkdir("store/vm");
    let text = tpl.join("t512.txt");
    let lines = "not a disk, a note about one\n".repeat(18);
    std::fs::write(&text, &lines.as_bytes()[..512]).unwrap();
    let ovl = vm.join("ovl.qcow2");
    qemu_img(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-b",
        p(&text),
        "-F",
        "raw",
        p(&ovl),
        "1M",
    ]);
    let out = ws
        .vmshift()
        .args(["check", p(&ovl), "--to", p(&ws.mkdir("d"))])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let text_out = String::from_utf8_lossy(&out.stdout);
    assert!(text_out.contains("t512.txt"), "{text_out}");
    assert!(text_out.contains("lines of text"), "{text_out}");
}

#[test]
fn source_format_raw_over_a_qcow2_header_is_a_warning() {
    let ws = Ws::new();
    let src = ws.path("web01.qcow2");
    qemu_img(&["create", "-q", "-f", "qcow2", p(&src), "4M"]);
    let (code, r, out) = ws.migrate(&src, &ws.mkdir("b"), &["--source-format", "raw"]);
    assert_eq!(code, 0, "{}", stderr(&out));
    assert!(
        r["warnings"]
            .to_string()
            .contains("is stated to be raw (--source-format raw"),
        "{r}"
    );
    assert!(stderr(&out).contains("warning:"), "{}", stderr(&out));
}

#[test]
fn a_raw_target_of_a_compressed_qcow2_needs_no_drop_flag() {
    let ws = Ws::new();
    let src = compressed_qcow2(&ws, "c.qcow2");
    let dst = ws.mkdir("b");
    let (code, r, out) = ws.migrate(&src, &dst.join("c.raw"), &[]);
    assert_eq!(code, 0, "{}", stderr(&out));
    assert!(r["warnings"].to_string().contains("compress"), "{r}");
    assert!(identical_fmt(&src, "qcow2", &dst.join("c.raw"), "raw"));
    // A qcow2 target would keep nothing of it silently: still refused without --drop.
    let (code, _, _) = ws.migrate(&src, &dst.join("c2.qcow2"), &[]);
    assert_eq!(code, 2);
}

#[test]
fn an_unknown_job_and_an_empty_journal_are_said_once_and_plainly() {
    let ws = Ws::new();
    let src = ws.path("d.raw");
    std::fs::write(&src, vec![1u8; 4096]).unwrap();
    let (code, _, _) = ws.migrate(&src, &ws.mkdir("b"), &[]);
    assert_eq!(code, 0);
    for cmd in ["resume", "rollback", "cancel", "set"] {
        let mut c = ws.vmshift();
        c.args([cmd, "deadbeef"]);
        if cmd == "set" {
            c.args(["--bwlimit", "1M"]);
        }
        let out = c.output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{cmd}");
        let err = stderr(&out);
        assert_eq!(err.matches("no job deadbeef").count(), 1, "{cmd}: {err}");
        assert_eq!(err.lines().count(), 1, "{cmd}: {err}");
    }
    let journal = ws.path("state/journal.sqlite");
    std::fs::write(&journal, b"").unwrap();
    for f in ["journal.sqlite-wal", "journal.sqlite-shm"] {
        let _ = std::fs::remove_file(ws.path("state").join(f));
    }
    let out = ws.vmshift().arg("jobs").output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("no jobs yet"));
}

#[test]
fn live_mode_names_a_file_destination_and_a_missing_socket_with_a_hint() {
    let ws = Ws::new();
    let file = ws.path("vm.qcow2");
    std::fs::write(&file, b"").unwrap();
    let out = ws
        .vmshift()
        .args(["check", "--qmp", p(&ws.path("none.sock")), "--to", p(&file)])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("live moves need an existing destination directory"),
        "{text}"
    );
    let out = ws
        .vmshift()
        .args([
            "check",
            "--qmp",
            p(&ws.path("none.sock")),
            "--to",
            p(&ws.mkdir("d")),
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("-qmp unix:PATH,server=on,wait=off"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn cancel_keep_partial_of_a_killed_job_records_the_partial_kept() {
    let ws = Ws::new();
    let src = ws.path("d.raw");
    std::fs::write(&src, random_bytes(usize::try_from(48 * M).unwrap(), 8)).unwrap();
    let dst = ws.mkdir("b");
    let job = ws.start_copying(&src, &dst, "4M");
    std::thread::sleep(std::time::Duration::from_millis(300));
    let pid = rustix::process::Pid::from_raw(i32::try_from(job.pid()).unwrap()).unwrap();
    rustix::process::kill_process(pid, rustix::process::Signal::KILL).unwrap();
    let _ = job.finish();
    let jobs: Value = serde_json::from_slice(
        &ws.vmshift()
            .args(["jobs", "--json"])
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap();
    let id = jobs[0]["job_id"].as_str().unwrap().to_owned();
    let out = ws
        .vmshift()
        .args(["cancel", &id, "--keep-partial"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let st: Value = serde_json::from_slice(
        &ws.vmshift()
            .args(["status", &id, "--json"])
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap();
    assert_eq!(st["partial_state"], "kept", "{st}");
    assert!(dst.join("d.raw.vmshift-partial").exists());
}
