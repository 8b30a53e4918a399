//! Real faults during journaled jobs: the destination fills up (tmpfs), the source returns
//! read errors (nbdkit's error filter behind nbdfuse), the journal file is damaged.

mod common;
use common::*;
use serde_json::Value;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

fn job_id(report: &Value) -> String {
    report["job_id"].as_str().unwrap().to_string()
}

fn resume(ws: &Ws, id: &str) -> (i32, Value, std::process::Output) {
    let out = ws
        .vmshift()
        .args(["resume", id, "--json"])
        .output()
        .unwrap();
    (out.status.code().unwrap_or(-1), last_report(&out), out)
}

#[test]
fn out_of_space_fails_clearly_then_resume_completes_after_space_is_freed() {
    if !is_root() {
        eprintln!("needs root for tmpfs; skipped");
        return;
    }
    let ws = Ws::new();
    let src = ws.path("d.raw");
    // 48 MiB of data and a 16 MiB hole: a sparse source, so the target is not
    // preallocated and really runs out of space mid-copy.
    let mut data = random_bytes(usize::try_from(48 * M).unwrap(), 9);
    std::fs::write(&src, &data).unwrap();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&src)
        .unwrap()
        .set_len(64 * M)
        .unwrap();
    data.resize(usize::try_from(64 * M).unwrap(), 0);

    // --keep-partial: the 24 MiB written before the datastore filled are reused.
    let dst = ws.path("small");
    let _m = Tmpfs::mount(&dst, "56m");
    let filler = dst.join("filler");
    // The space check passes, then another writer takes the space away mid-copy.
    let child = std::process::Command::new(assert_cmd::cargo::cargo_bin("vmshift"))
        .args([
            "migrate",
            p(&src),
            "--to",
            p(&dst),
            "--keep-partial",
            "--bwlimit",
            "16M",
            "--json",
        ])
        .env("VMSHIFT_STATE_DIR", ws.path("state"))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(600));
    run("fallocate", &["-l", "24M", p(&filler)]);
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let r = last_report(&out);
    assert_eq!(r["status"], "failed");
    let msg = r["error"]["message"].as_str().unwrap();
    assert!(msg.contains("No space left"), "{msg}");
    assert!(msg.contains("partial target was kept"), "{msg}");
    assert!(dst.join("d.raw.vmshift-partial").exists());
    assert!(!dst.join("d.raw").exists());
    let id = job_id(&r);
    let status = ws
        .vmshift()
        .args(["status", &id, "--json"])
        .output()
        .unwrap();
    let st: Value = serde_json::from_slice(&status.stdout).unwrap();
    assert_eq!(st["status"], "failed");
    assert_eq!(st["partial_state"], "kept");
    // Still full: the resume is refused at the check, counting the partial's space, and
    // the job stays resumable with its partial target.
    let (code, rr, outr) = resume(&ws, &id);
    assert_eq!(code, 2, "{}", stderr(&outr));
    assert_eq!(rr["status"], "refused");
    let msg = rr["error"]["message"].as_str().unwrap();
    assert!(msg.contains("counting the"), "{msg}");
    let status = ws
        .vmshift()
        .args(["status", &id, "--json"])
        .output()
        .unwrap();
    let st: Value = serde_json::from_slice(&status.stdout).unwrap();
    assert_eq!(st["status"], "failed", "{st}");
    assert_eq!(st["partial_state"], "kept", "{st}");
    assert!(dst.join("d.raw.vmshift-partial").exists());
    // Space freed → resume completes, reusing what was journaled.
    std::fs::remove_file(&filler).unwrap();
    let (code, r2, out2) = resume(&ws, &id);
    assert_eq!(code, 0, "{}", stderr(&out2));
    assert_eq!(r2["status"], "succeeded");
    assert!(r2["bytes_reused"].as_u64().unwrap() > 0, "{r2}");
    assert_eq!(
        r2["bytes_reused"].as_u64().unwrap() + r2["bytes_copied"].as_u64().unwrap(),
        48 * M
    );
    assert_eq!(std::fs::read(dst.join("d.raw")).unwrap(), data);
    drop(_m);

    // Default: the partial is removed (it would keep the datastore full); resume still
    // completes after space is freed, copying everything again.
    let dst2 = ws.path("small2");
    let _m2 = Tmpfs::mount(&dst2, "56m");
    let filler2 = dst2.join("filler");
    let child = std::process::Command::new(assert_cmd::cargo::cargo_bin("vmshift"))
        .args([
            "migrate",
            p(&src),
            "--to",
            p(&dst2),
            "--bwlimit",
            "16M",
            "--json",
        ])
        .env("VMSHIFT_STATE_DIR", ws.path("state"))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(600));
    run("fallocate", &["-l", "24M", p(&filler2)]);
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let r = last_report(&out);
    assert!(
        r["error"]["message"]
            .as_str()
            .unwrap()
            .contains("partial target was removed"),
        "{}",
        r["error"]
    );
    assert_eq!(listing(&dst2), vec!["filler".to_string()]);
    std::fs::remove_file(&filler2).unwrap();
    let (code, r3, out3) = resume(&ws, &job_id(&r));
    assert_eq!(code, 0, "{}", stderr(&out3));
    assert_eq!(r3["bytes_reused"], 0);
    assert_eq!(std::fs::read(dst2.join("d.raw")).unwrap(), data);
}

/// nbdkit's `file` plugin behind its `error` filter, exposed as a plain file by nbdfuse.
/// Errors start when `trigger` exists.
struct FaultySource {
    mnt: std::path::PathBuf,
    child: std::process::Child,
}

impl FaultySource {
    fn start(backing: &Path, mnt: &Path, trigger: &Path) -> FaultySource {
        std::fs::create_dir_all(mnt).unwrap();
        let child = std::process::Command::new("nbdfuse")
            .arg(mnt)
            .args(["--command", "nbdkit", "-s", "--filter=error", "file"])
            .arg(backing)
            .args(["error-rate=100%", "error=EIO"])
            .arg(format!("error-file={}", p(trigger)))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let t = Instant::now();
        while !mnt.join("nbd").exists() {
            assert!(
                t.elapsed() < Duration::from_secs(10),
                "nbdfuse did not come up"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        FaultySource {
            mnt: mnt.to_path_buf(),
            child,
        }
    }

    fn file(&self) -> std::path::PathBuf {
        self.mnt.join("nbd")
    }
}

impl Drop for FaultySource {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(&self.mnt).status();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn source_read_errors_fail_clearly_keep_the_partial_and_resume_completes() {
    if !is_root()
        || std::process::Command::new("nbdfuse")
            .arg("--version")
            .output()
            .is_err()
    {
        eprintln!("needs root and nbdfuse; skipped");
        return;
    }
    let ws = Ws::new();
    let backing = ws.path("backing.raw");
    let data = random_bytes(usize::try_from(64 * M).unwrap(), 21);
    std::fs::write(&backing, &data).unwrap();
    let trigger = ws.path("errors-on");
    let src = FaultySource::start(&backing, &ws.path("mnt"), &trigger);
    let dst = ws.mkdir("dst");
    let child = std::process::Command::new(assert_cmd::cargo::cargo_bin("vmshift"))
        .args(["migrate"])
        .arg(src.file())
        .args(["--to", p(&dst.join("d.raw")), "--bwlimit", "16M", "--json"])
        .env("VMSHIFT_STATE_DIR", ws.path("state"))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    std::fs::write(&trigger, b"").unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let r = last_report(&out);
    assert_eq!(r["status"], "failed");
    let msg = r["error"]["message"].as_str().unwrap();
    assert!(
        msg.contains("read error in the source at guest offset 0x")
            && msg.contains("Input/output error"),
        "{msg}"
    );
    assert!(msg.contains("vmshift resume"), "{msg}");
    assert!(dst.join("d.raw.vmshift-partial").exists(), "nothing lost");
    assert!(!dst.join("d.raw").exists());
    // The fault goes away; resume finishes, reusing what was copied.
    std::fs::remove_file(&trigger).unwrap();
    let (code, r2, out2) = resume(&ws, &job_id(&r));
    assert_eq!(code, 0, "{}", stderr(&out2));
    assert!(r2["bytes_reused"].as_u64().unwrap() > 0, "{r2}");
    assert_eq!(
        r2["bytes_reused"].as_u64().unwrap() + r2["bytes_copied"].as_u64().unwrap(),
        64 * M
    );
    assert_eq!(r2["verification"]["result"], "match");
    assert_eq!(
        r2["verification"]["method"], "after-copy",
        "a resume reads it all"
    );
    assert_eq!(std::fs::read(dst.join("d.raw")).unwrap(), data);
    assert_eq!(std::fs::read(&backing).unwrap(), data, "source unchanged");
}

fn two_jobs(ws: &Ws) -> Vec<String> {
    let src = ws.path("a.raw");
    std::fs::write(&src, random_bytes(usize::try_from(4 * M).unwrap(), 3)).unwrap();
    (0..2)
        .map(|i| {
            let (code, r, out) = ws.migrate(&src, &ws.mkdir(&format!("d{i}")), &[]);
            assert_eq!(code, 0, "{}", stderr(&out));
            job_id(&r)
        })
        .collect()
}

#[test]
fn a_corrupt_journal_is_named_never_panics_and_blocks_new_jobs() {
    let ws = Ws::new();
    two_jobs(&ws);
    let db = ws.path("state/journal.sqlite");
    // Overwrite the header and first pages with garbage.
    let mut bytes = std::fs::read(&db).unwrap();
    bytes[..4096].fill(0xa5);
    std::fs::write(&db, &bytes).unwrap();
    let _ = std::fs::remove_file(ws.path("state/journal.sqlite-wal"));
    let _ = std::fs::remove_file(ws.path("state/journal.sqlite-shm"));
    for args in [vec!["jobs"], vec!["jobs", "--json"], vec!["status", "x"]] {
        let out = ws.vmshift().args(&args).output().unwrap();
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains(p(&db)) && err.contains("corrupt"), "{err}");
        assert!(!err.contains("panicked"), "{err}");
        assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
    }
    let src = ws.path("a.raw");
    let (code, _, out) = ws.migrate(&src, &ws.mkdir("d9"), &[]);
    assert_eq!(code, 2);
    assert!(stderr(&out).contains("move it aside"), "{}", stderr(&out));
    assert!(listing(&ws.path("d9")).is_empty());
    // --no-journal still migrates, and says its job id is not one `status` knows.
    let (code, _, out) = ws.migrate(&src, &ws.path("d9"), &["--no-journal"]);
    assert_eq!(code, 0, "{}", stderr(&out));
    assert!(
        stderr(&out).contains("(--no-journal: names the report only)"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn a_truncated_journal_is_named_and_readable_jobs_are_still_listed() {
    let ws = Ws::new();
    let ids = two_jobs(&ws);
    let db = ws.path("state/journal.sqlite");
    {
        // Fold the WAL in so the main file holds everything, then cut its tail off.
        let c = vmshift_journal::Journal::open(&db).unwrap();
        drop(c);
    }
    let len = std::fs::metadata(&db).unwrap().len();
    let f = std::fs::OpenOptions::new().write(true).open(&db).unwrap();
    f.set_len(len - 4096).unwrap();
    drop(f);
    let out = ws.vmshift().args(["jobs", "--json"]).output().unwrap();
    let err = stderr(&out);
    assert!(!err.contains("panicked"), "{err}");
    match out.status.code() {
        // Readable: both jobs listed (or some, with the damage named on stderr).
        Some(0) | Some(1) => {
            let v: Value = serde_json::from_slice(&out.stdout).unwrap();
            let listed: Vec<&str> = v
                .as_array()
                .unwrap()
                .iter()
                .map(|j| j["job_id"].as_str().unwrap())
                .collect();
            assert!(!listed.is_empty(), "{err}");
            assert!(listed.iter().all(|l| ids.iter().any(|i| i == l)));
            if out.status.code() == Some(1) {
                assert!(err.contains(p(&db)), "{err}");
            }
        }
        _ => assert!(err.contains(p(&db)), "{err}"),
    }
}

/// A thin-provisioned datastore: ext4 on a loop device whose backing file is sparse on a
/// tmpfs of `pool` (e.g. `96m`), far smaller than the 1 GiB file system. Writes are accepted
/// into the page cache and fail only when written back, as on thin LVM, iSCSI or NFS with a
/// quota.
struct ThinDatastore {
    /// Unmounted last: fields drop after `Drop::drop` has unmounted the file system.
    _pool: Tmpfs,
    dev: String,
    mnt: std::path::PathBuf,
}

impl ThinDatastore {
    fn mount(ws: &Ws, pool: &str) -> ThinDatastore {
        let pool = Tmpfs::mount(&ws.path("pool"), pool);
        let back = pool.0.join("disk.img");
        run("truncate", &["-s", "1G", p(&back)]);
        let dev = run("losetup", &["-f", "--show", p(&back)])
            .trim()
            .to_string();
        run(
            "mkfs.ext4",
            &[
                "-q",
                "-J",
                "size=16",
                "-E",
                "lazy_itable_init=0,lazy_journal_init=0,nodiscard",
                &dev,
            ],
        );
        let mnt = ws.path("thin");
        std::fs::create_dir_all(&mnt).unwrap();
        run("mount", &[&dev, p(&mnt)]);
        ThinDatastore {
            _pool: pool,
            dev,
            mnt,
        }
    }
}

impl Drop for ThinDatastore {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(&self.mnt).status();
        let _ = std::process::Command::new("losetup")
            .args(["-d", &self.dev])
            .status();
    }
}

#[test]
fn a_datastore_failing_at_writeback_fails_the_job_and_loses_nothing() {
    if !is_root() {
        eprintln!("needs root for loop devices; skipped");
        return;
    }
    let ws = Ws::new();
    let src = ws.path("d.raw");
    let data = random_bytes(usize::try_from(160 * M).unwrap(), 21);
    std::fs::write(&src, &data).unwrap();
    // ~35 MiB of the pool go to the file system's own tables: the copy fails past ~60 MiB.
    let thin = ThinDatastore::mount(&ws, "96m");
    for extra in [&[][..], &["--no-journal"][..]] {
        let out = ws
            .vmshift()
            .args(["migrate", p(&src), "--to", p(&thin.mnt), "--json"])
            .args(extra)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1), "{extra:?}: {}", stderr(&out));
        let r = last_report(&out);
        assert_eq!(r["status"], "failed", "{extra:?}");
        let msg = r["error"]["message"].as_str().unwrap();
        assert!(
            msg.contains("No space left") || msg.contains("Input/output error"),
            "{extra:?}: {msg}"
        );
        // Without a journal there is no job to resume, and the hint does not offer one.
        assert_eq!(
            extra.is_empty(),
            msg.contains("vmshift resume"),
            "{extra:?}: {msg}"
        );
        // No target, no partial (nothing was asked to be kept).
        assert_eq!(
            listing(&thin.mnt),
            vec!["lost+found".to_string()],
            "{extra:?}"
        );
        assert_eq!(
            std::fs::read(&src).unwrap(),
            data,
            "{extra:?}: source changed"
        );
    }
}
