//! Say what to change, every time, and say a thing once.

mod common;

use common::*;
use vmshift_qmp::testvm::{Disk, TestVm};

#[test]
fn an_offline_move_ends_with_what_to_change_next() {
    let ws = Ws::new();
    let src = ws.path("web01.raw");
    std::fs::write(&src, random_bytes(usize::try_from(2 * M).unwrap(), 1)).unwrap();
    let dst = ws.mkdir("b");
    let (code, _, out) = ws.migrate(&src, &dst, &[]);
    assert_eq!(code, 0);
    let err = stderr(&out);
    let lines: Vec<&str> = err.lines().collect();
    let n = lines.len();
    assert!(
        lines[n - 2].starts_with("vmshift: next: point the VM at ")
            && lines[n - 2].contains(&dst.join("web01.raw").display().to_string()),
        "{err}"
    );
    assert!(lines[n - 1].starts_with("report: "), "{err}");
}

#[test]
fn a_missing_destination_directory_is_said_once() {
    let ws = Ws::new();
    let src = ws.path("web01.raw");
    std::fs::write(&src, b"x".repeat(4096)).unwrap();
    let to = format!("{}/", ws.path("nope/sub").display());
    let out = ws
        .vmshift()
        .args(["check", p(&src), "--to", &to])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(text.matches("does not exist").count(), 1, "{text}");
}

#[test]
fn a_live_refusal_says_refused_once() {
    let ws = Ws::new();
    let a = ws.mkdir("a");
    let src = a.join("web01.raw");
    std::fs::write(&src, random_bytes(usize::try_from(4 * M).unwrap(), 2)).unwrap();
    let vm = TestVm::paused(
        &ws.mkdir("vm"),
        &[Disk {
            path: src,
            format: "raw",
        }],
    )
    .unwrap();
    drop(vm.qmp().unwrap());
    // The target would be the source itself.
    let out = ws
        .vmshift()
        .args(["check", "--qmp", p(&vm.qmp_path), "--to", p(&a)])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("is the source itself"), "{text}");
    assert_eq!(text.matches("refused").count(), 2, "{text}"); // the reason, then the verdict
    assert!(!text.contains("refused: check refused"), "{text}");
}

#[test]
fn a_live_target_gets_the_source_owner_and_mode_before_qemu_opens_it() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let ws = Ws::new();
    let a = ws.mkdir("a");
    let src = a.join("web01.raw");
    std::fs::write(&src, random_bytes(usize::try_from(4 * M).unwrap(), 3)).unwrap();
    // As libvirt leaves a disk for its libvirt-qemu user.
    rustix::fs::chown(
        &src,
        Some(rustix::fs::Uid::from_raw(1234)),
        Some(rustix::fs::Gid::from_raw(1235)),
    )
    .unwrap();
    std::fs::set_permissions(&src, std::fs::Permissions::from_mode(0o640)).unwrap();
    let vm = TestVm::paused(
        &ws.mkdir("vm"),
        &[Disk {
            path: src.clone(),
            format: "raw",
        }],
    )
    .unwrap();
    drop(vm.qmp().unwrap());
    let b = ws.mkdir("b");
    let out = ws
        .vmshift()
        .args(["migrate", "--qmp", p(&vm.qmp_path), "--to", p(&b), "--json"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let m = std::fs::metadata(b.join("web01.raw")).unwrap();
    assert_eq!((m.uid(), m.gid(), m.mode() & 0o7777), (1234, 1235, 0o640));
}

/// A listening socket that never sends a QMP greeting (as when another client holds it).
fn silent_monitor(path: &std::path::Path) -> std::os::unix::net::UnixListener {
    let l = std::os::unix::net::UnixListener::bind(path).unwrap();
    l.set_nonblocking(true).unwrap();
    l
}

#[test]
fn a_monitor_nobody_answers_on_is_named_without_a_hint_for_an_option_that_does_not_exist() {
    let ws = Ws::new();
    let sock = ws.path("held.sock");
    let _l = silent_monitor(&sock);
    let out = ws
        .vmshift()
        .args(["check", "--qmp", p(&sock), "--to", p(&ws.mkdir("b"))])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    assert!(err.contains("another client holds this monitor"), "{err}");
    assert!(!err.contains("raise the QMP timeout"), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
}

#[test]
fn a_libvirt_domain_monitor_is_refused_as_libvirt_managed() {
    if !is_root() {
        eprintln!("skipped: needs root to create a directory under /run/libvirt");
        return;
    }
    let dir =
        std::path::Path::new("/run/libvirt/vmshift-test").join(std::process::id().to_string());
    std::fs::create_dir_all(&dir).unwrap();
    let sock = dir.join("monitor.sock");
    let _ = std::fs::remove_file(&sock);
    let _l = silent_monitor(&sock);
    let ws = Ws::new();
    let out = ws
        .vmshift()
        .args(["migrate", "--qmp", p(&sock), "--to", p(&ws.mkdir("b"))])
        .output()
        .unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    assert!(err.contains("libvirt-managed VM"), "{err}");
    assert!(err.contains("vmshift migrate --domain"), "{err}");
}

#[test]
fn command_line_mistakes_are_one_line_with_the_usage_and_exit_2() {
    let ws = Ws::new();
    for (args, says) in [
        (
            &["migrate", "--foo"][..],
            "unexpected argument '--foo' found",
        ),
        (
            &["migrate"][..],
            "required arguments were not provided: --to <DIR|FILE|DATASTORE>, <SOURCE>",
        ),
        (
            &["migrate", "a", "--to", "b", "--bwlimit", "xx"][..],
            "invalid size \"xx\"",
        ),
        (&["frob"][..], "unrecognized subcommand 'frob'"),
    ] {
        let out = ws.vmshift().args(args).output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(err.trim_end().lines().count(), 1, "{args:?}: {err}");
        assert!(err.starts_with("vmshift: error: "), "{err}");
        assert!(err.contains(says), "{args:?}: {err}");
        assert!(err.contains("--help"), "{err}");
    }
    // Help and version still print as they are.
    let out = ws.vmshift().arg("--help").output().unwrap();
    assert_eq!(out.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&out.stdout).contains("Usage: vmshift"));
}
