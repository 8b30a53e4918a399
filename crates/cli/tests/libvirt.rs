//! `vmshift info|check|migrate --domain` end to end: the real binary against the real
//! libvirtd (started by the harness when none answers) running `type='qemu'` (TCG) domains
//! of the test guest, which stamps blocks on its disks throughout.

mod libvirt_support;

use libvirt_support::*;
use serde_json::Value;

const RATE: &str = "vmshift.rate=1048576";

fn disk<'a>(report: &'a Value, dev: &str) -> &'a Value {
    report["disks"]
        .as_array()
        .expect("disks")
        .iter()
        .find(|d| d["device"] == dev)
        .unwrap_or_else(|| panic!("no {dev} in {report}"))
}

fn assert_succeeded(out: &std::process::Output) -> Value {
    let r = report(out);
    assert_eq!(out.status.code(), Some(0), "{}", text(out));
    assert_eq!(r["status"], "succeeded", "{r}");
    assert_eq!(r["kind"], "domain", "{r}");
    r
}

#[test]
fn running_persistent_domain_with_qcow2_and_raw_disks_moves_live() {
    let lab = Lab::new();
    let xml = lab.xml(&two_disks(&lab), "vda,vdb", RATE);
    lab.define(&xml);
    lab.start_writing();
    let (old1, old2) = (lab.path("a/d1.qcow2"), lab.path("a/d2.raw"));
    let (new1, new2) = (lab.path("b/d1.qcow2"), lab.path("b/d2.raw"));

    let out = lab.migrate(&["--to", s(&lab.path("b"))]);
    let r = assert_succeeded(&out);
    let (da, db) = (disk(&r, "vda"), disk(&r, "vdb"));
    assert_eq!(da["old_path"], s(&old1));
    assert_eq!(da["new_path"], s(&new1));
    assert_eq!(da["format"], "qcow2");
    assert_eq!(db["old_path"], s(&old2));
    assert_eq!(db["new_path"], s(&new2));
    assert_eq!(db["format"], "raw");
    for d in [da, db] {
        assert!(d["pivot_ms"].as_u64().is_some(), "{d}");
        assert!(d["time_to_ready_ms"].as_u64().is_some(), "{d}");
    }
    let refs: Vec<&str> = r["references"]
        .as_array()
        .expect("references")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert!(
        refs.contains(
            &format!(
                "definition of {}: vda {} (qcow2) -> {} (qcow2)",
                lab.name,
                old1.display(),
                new1.display()
            )
            .as_str()
        ),
        "{refs:?}"
    );
    assert_eq!(lab.state(), "running");
    assert_eq!(
        lab.domblklist(),
        [
            ("vda".to_owned(), s(&new1).to_owned()),
            ("vdb".to_owned(), s(&new2).to_owned())
        ]
    );
    let def = lab.inactive_xml();
    for new in [&new1, &new2] {
        assert!(def.contains(&format!("'{}'", new.display())), "{def}");
    }
    for old in [&old1, &old2] {
        assert!(!def.contains(s(old)), "{def}");
    }

    // Every block of the region rewritten after the pivot: the floor passes the last
    // sequence number the guest had logged when the move ended.
    let at_move = lab.wait_full_pass(&["vda", "vdb"]);
    lab.destroy();
    let ra = lab.verify_stamps(&new1, "qcow2", "vda");
    let rb = lab.verify_stamps(&new2, "raw", "vdb");
    assert!(
        ra.min_seq > at_move && rb.min_seq > at_move,
        "{ra:?} {rb:?}"
    );
    assert!(
        old1.exists() && old2.exists(),
        "sources kept without --delete-source"
    );

    // The definition boots on the new files.
    lab.start();
    assert_eq!(
        lab.domblklist(),
        [
            ("vda".to_owned(), s(&new1).to_owned()),
            ("vdb".to_owned(), s(&new2).to_owned())
        ]
    );
}

fn refs(r: &Value) -> Vec<String> {
    r["references"]
        .as_array()
        .expect("references")
        .iter()
        .filter_map(|v| v.as_str().map(str::to_owned))
        .collect()
}

/// Waits for `n` more batches on each of `devs`.
fn more_batches(lab: &Lab, devs: &[&str], n: usize) {
    for d in devs {
        let since = lab.batches(d);
        lab.wait_batches(d, since, n);
    }
}

#[test]
fn transient_domain_moves_live() {
    let lab = Lab::new();
    let xml = lab.xml(&two_disks(&lab), "vda,vdb", RATE);
    lab.create(&xml);
    let (new1, new2) = (lab.path("b/d1.qcow2"), lab.path("b/d2.raw"));
    let out = lab.migrate(&["--to", s(&lab.path("b"))]);
    let r = assert_succeeded(&out);
    assert_eq!(disk(&r, "vda")["new_path"], s(&new1));
    assert_eq!(disk(&r, "vdb")["new_path"], s(&new2));
    let refs = refs(&r);
    assert!(
        refs.iter()
            .any(|l| l.contains(&lab.name) && l.contains("transient")),
        "{refs:?}"
    );
    assert!(
        !refs.iter().any(|l| l.starts_with("definition of")),
        "{refs:?}"
    );
    assert_eq!(
        lab.domblklist(),
        [
            ("vda".to_owned(), s(&new1).to_owned()),
            ("vdb".to_owned(), s(&new2).to_owned())
        ]
    );
    more_batches(&lab, &["vda", "vdb"], 10);
    lab.destroy();
    lab.verify_stamps(&new1, "qcow2", "vda");
    lab.verify_stamps(&new2, "raw", "vdb");
    assert!(
        !virsh(&["dominfo", &lab.name]).status.success(),
        "a transient domain is gone once destroyed"
    );
}

#[test]
fn shut_off_domain_moves_offline_and_only_the_sources_change() {
    let lab = Lab::new();
    let xml = lab.xml(&two_disks(&lab), "vda,vdb", RATE);
    lab.define(&xml);
    let (old1, old2) = (lab.path("a/d1.qcow2"), lab.path("a/d2.raw"));
    let (new1, new2) = (lab.path("b/d1.qcow2"), lab.path("b/d2.raw"));
    let before = lab.inactive_xml();
    let out = lab.migrate(&["--to", s(&lab.path("b"))]);
    let r = assert_succeeded(&out);
    assert_eq!(r["verification"]["result"], "match", "{r}");
    for (dev, new) in [("vda", &new1), ("vdb", &new2)] {
        let d = disk(&r, dev);
        assert_eq!(d["new_path"], s(new), "{d}");
        assert_eq!(d["copy_mode"], "offline", "{d}");
    }
    let expected = before
        .replace(s(&old1), s(&new1))
        .replace(s(&old2), s(&new2));
    assert_ne!(expected, before);
    assert_eq!(lab.inactive_xml(), expected);
    assert_eq!(lab.state(), "shut off");
    assert!(same_content(&old1, "qcow2", &new1, "qcow2"));
    assert!(same_content(&old2, "raw", &new2, "raw"));
    assert_eq!(img_info(&new1, false)["format"], "qcow2");
    assert_eq!(
        std::fs::metadata(&new2).expect("stat").len(),
        32 * MIB,
        "raw target keeps the size"
    );
    lab.start_writing();
    assert_eq!(
        lab.domblklist(),
        [
            ("vda".to_owned(), s(&new1).to_owned()),
            ("vdb".to_owned(), s(&new2).to_owned())
        ]
    );
    more_batches(&lab, &["vda", "vdb"], 5);
    lab.destroy();
    lab.verify_stamps(&new1, "qcow2", "vda");
    lab.verify_stamps(&new2, "raw", "vdb");
}

#[test]
fn pool_destination_and_a_volume_disk() {
    let lab = Lab::new();
    let src_pool = lab.pool("src", &lab.path("a"));
    let (old1, old2) = (lab.path("a/d1.qcow2"), lab.path("a/d2.raw"));
    stamped_qcow2(&old1, 32 * MIB);
    stamped_raw(&old2, 32 * MIB);
    virsh_ok(&["pool-refresh", &src_pool]);
    let xml = lab.xml(
        &[
            DiskXml::volume("vda", &src_pool, "d1.qcow2", "qcow2"),
            DiskXml::file("vdb", &old2, "raw"),
        ],
        "vda,vdb",
        RATE,
    );
    lab.define(&xml);
    lab.start_writing();
    let info = lab.info();
    assert_eq!(info["domain"], lab.name.as_str(), "{info}");
    assert_eq!(info["state"], "running", "{info}");
    assert_eq!(info["persistent"], true, "{info}");
    let vda = &info["disks"][0];
    assert_eq!(vda["target"], "vda", "{info}");
    assert_eq!(
        vda["source"],
        format!("{src_pool}/d1.qcow2 (volume)").as_str(),
        "{info}"
    );
    assert_eq!(vda["format"], "qcow2", "{info}");
    assert_eq!(info["disks"][1]["path"], s(&old2), "{info}");

    let dst_pool = lab.pool("dst", &lab.path("pool"));
    let (new1, new2) = (lab.path("pool/d1.qcow2"), lab.path("pool/d2.raw"));
    let out = lab.migrate(&["--pool", &dst_pool]);
    let r = assert_succeeded(&out);
    assert_eq!(disk(&r, "vda")["new_path"], s(&new1), "{r}");
    assert_eq!(disk(&r, "vdb")["new_path"], s(&new2), "{r}");
    let vols = virsh_ok(&["vol-list", &dst_pool]);
    for new in [&new1, &new2] {
        assert!(
            vols.lines().any(|l| l.trim_end().ends_with(s(new))),
            "{vols}"
        );
    }
    assert_eq!(
        lab.domblklist(),
        [
            ("vda".to_owned(), s(&new1).to_owned()),
            ("vdb".to_owned(), s(&new2).to_owned())
        ]
    );
    let def = lab.inactive_xml();
    assert!(def.contains(s(&new1)) && def.contains(s(&new2)), "{def}");
    assert!(!def.contains("volume='d1.qcow2'"), "{def}");
    more_batches(&lab, &["vda", "vdb"], 10);
    lab.destroy();
    lab.verify_stamps(&new1, "qcow2", "vda");
    lab.verify_stamps(&new2, "raw", "vdb");
}

#[test]
fn keep_backing_moves_only_the_overlay_of_a_running_domain() {
    let lab = Lab::new();
    let base = lab.path("a/base.qcow2");
    let top = lab.path("a/d1.qcow2");
    stamped_qcow2(&base, 32 * MIB);
    run(
        "qemu-img",
        &[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-b",
            s(&base),
            "-F",
            "qcow2",
            s(&top),
        ],
    );
    let xml = lab.xml(&[DiskXml::overlay("vda", &top, &base)], "vda", RATE);
    lab.define(&xml);
    lab.start_writing();
    more_batches(&lab, &["vda"], 5);
    let new = lab.path("b/d1.qcow2");
    let out = lab.migrate(&["--to", s(&lab.path("b")), "--keep-backing"]);
    let r = assert_succeeded(&out);
    assert_eq!(r["backing"], "kept", "{r}");
    assert_eq!(disk(&r, "vda")["new_path"], s(&new), "{r}");
    assert_eq!(lab.source_of("vda"), s(&new));
    assert_eq!(listing(&lab.path("b")), ["d1.qcow2"]);
    let chain = img_info(&new, true);
    let chain = chain.as_array().expect("chain");
    assert_eq!(chain.len(), 2, "{chain:?}");
    assert_eq!(chain[0]["filename"], s(&new), "{chain:?}");
    assert_eq!(chain[0]["full-backing-filename"], s(&base), "{chain:?}");
    assert_eq!(chain[0]["backing-filename-format"], "qcow2", "{chain:?}");
    assert_eq!(chain[1]["filename"], s(&base), "{chain:?}");
    assert!(
        allocated(&new) < allocated(&base) / 2,
        "the new top holds the overlay only: {} vs base {}",
        allocated(&new),
        allocated(&base)
    );
    let def = lab.inactive_xml();
    assert!(def.contains(s(&new)) && def.contains(s(&base)), "{def}");
    assert!(!def.contains(s(&top)), "{def}");
    more_batches(&lab, &["vda"], 10);
    lab.destroy();
    lab.verify_stamps(&new, "qcow2", "vda");
}

/// The one stderr line of a refused `migrate`; asserts it names every one of `words`.
fn refusal(out: &std::process::Output, words: &[&str]) -> String {
    assert_eq!(out.status.code(), Some(2), "{}", text(out));
    let err = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = err.lines().filter(|l| l.contains("refused")).collect();
    assert_eq!(lines.len(), 1, "one refusal line: {}", text(out));
    for w in words {
        assert!(lines[0].contains(w), "{w:?} not in {:?}", lines[0]);
    }
    lines[0].to_owned()
}

/// `check` refused (exit 2) with a stdout line naming every one of `words`.
fn check_refused(out: &std::process::Output, words: &[&str]) {
    assert_eq!(out.status.code(), Some(2), "{}", text(out));
    let o = String::from_utf8_lossy(&out.stdout);
    assert!(
        o.lines()
            .any(|l| l.contains("refused:") && words.iter().all(|w| l.contains(w))),
        "{words:?}: {}",
        text(out)
    );
}

#[test]
fn enospc_mid_mirror_fails_and_leaves_the_domain_on_its_source() {
    let lab = Lab::new();
    let src = lab.path("a/d1.raw");
    stamped_raw(&src, 64 * MIB);
    let xml = lab.xml(&[DiskXml::file("vda", &src, "raw")], "vda", RATE);
    lab.define(&xml);
    lab.start_writing();
    let before = lab.inactive_xml();
    let small = lab.path("small");
    let fs = Tmpfs::mount(&small, "80M");
    let mut child = lab
        .vmshift()
        .args(["migrate", "--domain", &lab.name, "--connect", URI])
        .args(["--to", s(&small), "--bwlimit", "1M", "--json"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn vmshift");
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    let reader = std::thread::spawn(move || {
        use std::io::BufRead;
        let mut all = String::new();
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            if line.contains(r#""phase":"copy""#) {
                let _ = tx.send(());
            }
            all.push_str(&line);
            all.push('\n');
        }
        all
    });
    rx.recv_timeout(TIMEOUT)
        .expect("the job never reached its copy phase");
    // Leave 2 MiB: the 1 MiB/s mirror runs out of space within seconds.
    let fill = fs.free() - 2 * MIB;
    run(
        "fallocate",
        &["-l", &fill.to_string(), s(&small.join("filler"))],
    );
    let t = std::time::Instant::now();
    let status = loop {
        if let Some(st) = child.try_wait().expect("wait") {
            break st;
        }
        if t.elapsed() > 4 * TIMEOUT {
            let _ = child.kill();
            panic!("vmshift did not end after the destination filled up");
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().expect("stderr"), &mut stderr)
        .expect("stderr");
    let all = reader.join().expect("reader");
    let r = all
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .rfind(|e| e["event"] == "report")
        .map_or(Value::Null, |e| e["report"].clone());
    assert_eq!(status.code(), Some(1), "{all}\n{stderr}");
    assert_eq!(r["status"], "failed", "{r}");
    assert_eq!(r["error"]["phase"], "copy", "{r}");
    let failed_at = lab.batches("vda");
    assert_eq!(listing(&small), ["filler"], "the target was removed");
    assert_eq!(lab.source_of("vda"), s(&src));
    assert_eq!(lab.inactive_xml(), before);
    let job = virsh_ok(&["blockjob", &lab.name, "vda", "--info"]);
    assert!(job.contains("No current block job"), "{job}");
    assert_eq!(lab.state(), "running");
    lab.wait_batches("vda", failed_at, 10);
    lab.destroy();
    lab.verify_stamps(&src, "raw", "vda");
}

#[test]
fn refuses_a_paused_domain_and_a_disk_in_a_block_job() {
    let lab = Lab::new();
    let xml = lab.xml(&two_disks(&lab), "vda,vdb", RATE);
    lab.define(&xml);
    lab.start_writing();
    let before = lab.inactive_xml();
    let b = lab.path("b");
    // A positive control: the same check goes ahead on the running domain.
    let ok = lab.check(&["--to", s(&b)]);
    assert_eq!(ok.status.code(), Some(0), "{}", text(&ok));

    virsh_ok(&["suspend", &lab.name]);
    check_refused(&lab.check(&["--to", s(&b)]), &["paused"]);
    refusal(&lab.migrate(&["--to", s(&b)]), &[&lab.name, "paused"]);
    assert_eq!(listing(&b), Vec::<String>::new());
    assert_eq!(lab.inactive_xml(), before);
    virsh_ok(&["resume", &lab.name]);

    let c = lab.path("c");
    std::fs::create_dir_all(&c).expect("mkdir");
    std::fs::set_permissions(&c, std::os::unix::fs::PermissionsExt::from_mode(0o755))
        .expect("chmod");
    let x = c.join("x.qcow2");
    virsh_ok(&[
        "blockcopy",
        &lab.name,
        "vda",
        s(&x),
        "--transient-job",
        "--bandwidth",
        "1",
    ]);
    check_refused(&lab.check(&["--to", s(&b)]), &["vda", "block job"]);
    refusal(&lab.migrate(&["--to", s(&b)]), &["vda", "block job"]);
    assert_eq!(listing(&b), Vec::<String>::new());
    assert_eq!(lab.inactive_xml(), before);
    virsh_ok(&["blockjob", &lab.name, "vda", "--abort"]);
    wait_until("the block job ends", TIMEOUT, || {
        virsh_ok(&["blockjob", &lab.name, "vda", "--info"]).contains("No current block job")
    });
    assert_eq!(lab.source_of("vda"), s(&lab.path("a/d1.qcow2")));
    let ok = lab.check(&["--to", s(&b)]);
    assert_eq!(ok.status.code(), Some(0), "{}", text(&ok));
}

#[test]
fn refuses_bad_disks_destinations_uris_and_snapshots_of_a_shut_off_domain() {
    let lab = Lab::new();
    let mut disks = two_disks(&lab);
    let shared = lab.path("a/d3.raw");
    stamped_raw(&shared, 32 * MIB);
    disks.push(DiskXml::shareable("vdc", &shared));
    let xml = lab.xml(&disks, "vda,vdb", RATE);
    lab.define(&xml);
    let before = lab.inactive_xml();
    let b = lab.path("b");
    let to = ["--to", s(&b)];
    let untouched = |what: &str| {
        assert_eq!(listing(&b), Vec::<String>::new(), "{what}: files created");
        assert_eq!(lab.inactive_xml(), before, "{what}: definition changed");
    };
    // Positive control: moving vda alone would go ahead (vdc is left in place).
    let ok = lab.check(&["--to", s(&b)]);
    assert_eq!(ok.status.code(), Some(0), "{}", text(&ok));
    assert!(
        String::from_utf8_lossy(&ok.stdout).contains("vdc: shareable, left in place"),
        "{}",
        text(&ok)
    );

    refusal(
        &lab.migrate(&[to[0], to[1], "--disk", "vdz"]),
        &["vdz", "vda, vdb, vdc"],
    );
    untouched("--disk vdz");
    check_refused(&lab.check(&[to[0], to[1], "--disk", "vdz"]), &["vdz"]);

    refusal(
        &lab.migrate(&[to[0], to[1], "--disk", "vdc"]),
        &["vdc", "shareable"],
    );
    untouched("--disk vdc");

    refusal(
        &lab.migrate(&["--to", s(&lab.path("a"))]),
        &["already in", s(&lab.path("a"))],
    );
    untouched("--to the source dir");

    std::fs::write(b.join("d2.raw"), b"in the way").expect("write");
    refusal(&lab.migrate(&to), &["already exists", s(&b.join("d2.raw"))]);
    assert_eq!(
        std::fs::read(b.join("d2.raw")).expect("read"),
        b"in the way"
    );
    std::fs::remove_file(b.join("d2.raw")).expect("rm");
    untouched("target exists");

    let bad = "qemu+unix:///system?socket=/nonexistent";
    let out = lab
        .vmshift()
        .args(["migrate", "--domain", &lab.name, "--connect", bad])
        .args(to)
        .arg("--json")
        .output()
        .expect("run vmshift");
    refusal(&out, &["/nonexistent"]);
    untouched("bad URI");

    // A libvirt-managed snapshot (external, of vda: an inactive internal one needs every
    // disk qcow2).
    let c = lab.path("c");
    std::fs::create_dir_all(&c).expect("mkdir");
    std::fs::set_permissions(&c, std::os::unix::fs::PermissionsExt::from_mode(0o755))
        .expect("chmod");
    virsh_ok(&[
        "snapshot-create-as",
        &lab.name,
        "s1",
        "--disk-only",
        "--diskspec",
        &format!(
            "vda,snapshot=external,file={}",
            c.join("s1.qcow2").display()
        ),
        "--diskspec",
        "vdb,snapshot=no",
        "--diskspec",
        "vdc,snapshot=no",
    ]);
    let before = lab.inactive_xml();
    let line = refusal(&lab.migrate(&to), &[&lab.name, "snapshot"]);
    assert!(line.contains("1 libvirt snapshot"), "{line}");
    assert_eq!(listing(&b), Vec::<String>::new());
    assert_eq!(lab.inactive_xml(), before);
    let info = lab.info();
    assert_eq!(info["snapshots"], 1, "{info}");
}

#[test]
fn info_and_migrate_of_a_missing_domain_exit_2() {
    let _d = daemon();
    let name = format!("vmshift-t-{}-nosuch", std::process::id());
    let dir = tempfile::tempdir().expect("tmp");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_vmshift"))
        .env("VMSHIFT_STATE_DIR", dir.path().join("state"))
        .args(["info", "--domain", &name, "--connect", URI, "--json"])
        .output()
        .expect("run vmshift");
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(out.stdout.is_empty(), "{}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains(&name), "{err}");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_vmshift"))
        .env("VMSHIFT_STATE_DIR", dir.path().join("state"))
        .args(["migrate", "--domain", &name, "--connect", URI, "--to"])
        .arg(dir.path())
        .output()
        .expect("run vmshift");
    refusal(&out, &[&name]);
}

/// `info` resolves a `type='volume'` disk to its file, as the plan does.
#[test]
fn info_resolves_the_path_of_a_volume_disk() {
    let lab = Lab::new();
    let pool = lab.pool("src", &lab.path("a"));
    let d1 = lab.path("a/d1.qcow2");
    stamped_qcow2(&d1, 32 * MIB);
    virsh_ok(&["pool-refresh", &pool]);
    let xml = lab.xml(
        &[DiskXml::volume("vda", &pool, "d1.qcow2", "qcow2")],
        "vda",
        RATE,
    );
    lab.define(&xml);
    let info = lab.info();
    assert_eq!(info["state"], "shut off", "{info}");
    assert_eq!(info["disks"][0]["path"], s(&d1), "{info}");
}

/// A user libvirt does not let in gets one line naming the URI and the question to ask.
#[test]
fn a_user_libvirt_denies_gets_one_line_naming_the_uri() {
    use std::os::unix::fs::PermissionsExt;
    let _d = daemon();
    // A copy nobody can run wherever the build tree is (a clone under /root is 0700).
    let dir = tempfile::tempdir().expect("tmp");
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let bin = dir.path().join("vmshift");
    std::fs::copy(env!("CARGO_BIN_EXE_vmshift"), &bin).expect("copy the binary");
    let out = std::process::Command::new("runuser")
        .args(["-u", "nobody", "--"])
        .arg(&bin)
        .args(["info", "--domain", "web01", "--connect", URI])
        .env("VMSHIFT_STATE_DIR", "/nonexistent/state")
        .output()
        .expect("run vmshift as nobody");
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains(&format!("cannot connect to libvirt at {URI}"))
            && err.contains("may this user use it?"),
        "{err}"
    );
}
