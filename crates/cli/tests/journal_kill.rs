//! Crash safety with real process kills: `kill -9` the migrating process at seeded random
//! moments, then `vmshift resume`; and deterministic kills between a checkpoint's fsync and
//! its journal commit, and between the last commit and the final rename.

mod common;
use common::*;
use serde_json::Value;
use std::collections::HashSet;
use std::io::{BufRead, BufReader};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

const GIB: u64 = 1 << 30;
/// vmshift's chunk size for buffered copies (offline::BUFFERED_CHUNK).
const CHUNK: u64 = 2 * M;
/// One checkpoint interval (jobs::CHECKPOINT_BYTES) plus what is in flight: one chunk per
/// copy worker, and two more chunks' worth queued behind a running fsync.
fn recopy_bound() -> u64 {
    64 * M + (vmshift_copy::engine::default_threads() as u64 + 2) * CHUNK
}

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// A 1 GiB raw image: random data in 1–6 MiB runs (some with zero runs inside), zero-filled
/// allocated runs, and holes. About 12% data (keeps each run short in debug builds).
fn mixed_image(path: &Path, seed: u64) {
    let f = std::fs::File::create(path).unwrap();
    f.set_len(GIB).unwrap();
    let mut rng = Rng(seed | 1);
    let mut pos = 0u64;
    while pos < GIB {
        let len = ((rng.next() % 6) + 1) * M;
        let len = len.min(GIB - pos);
        match rng.next() % 10 {
            0 => {
                let mut data = random_bytes(usize::try_from(len).unwrap(), rng.next());
                if rng.next().is_multiple_of(2) {
                    // A zero run inside data.
                    let z = usize::try_from(len / 4).unwrap();
                    data[z..2 * z].fill(0);
                }
                f.write_all_at(&data, pos).unwrap();
            }
            1 => f
                .write_all_at(&vec![0u8; usize::try_from(len).unwrap()], pos)
                .unwrap(),
            _ => {}
        }
        pos += len;
    }
    f.sync_all().unwrap();
}

fn b3(path: &Path) -> String {
    run("sha256sum", &[p(path)])
        .split_whitespace()
        .next()
        .unwrap()
        .to_string()
}

fn spawn_migrate(ws: &Ws, src: &Path, dst: &Path, extra: &[&str], env: &[(&str, &str)]) -> Child {
    let mut c = std::process::Command::new(assert_cmd::cargo::cargo_bin("vmshift"));
    c.arg("migrate")
        .arg(src)
        .arg("--to")
        .arg(dst)
        .args(extra)
        .arg("--json")
        .env("VMSHIFT_STATE_DIR", ws.path("state"))
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    for (k, v) in env {
        c.env(k, v);
    }
    c.spawn().unwrap()
}

/// Reads the child's NDJSON until the copy phase starts; returns the job id.
fn wait_copy_started(child: &mut Child) -> (String, BufReader<std::process::ChildStdout>) {
    let mut r = BufReader::new(child.stdout.take().unwrap());
    let mut id = String::new();
    let mut line = String::new();
    loop {
        line.clear();
        if r.read_line(&mut line).unwrap() == 0 {
            panic!("vmshift ended before copying");
        }
        let v: Value = serde_json::from_str(&line).unwrap_or(Value::Null);
        if v["event"] == "job" {
            id = v["job_id"].as_str().unwrap().to_string();
        }
        if v["event"] == "phase" && v["phase"] == "copy" {
            return (id, r);
        }
    }
}

/// Runs a migration that kills itself with SIGKILL at the test kill point `point` (see
/// `jobs::test_kill_point`); returns the job id and how the process ended.
fn killed_at(
    ws: &Ws,
    src: &Path,
    dst: &Path,
    extra: &[&str],
    point: &str,
) -> (String, std::process::ExitStatus) {
    let mut child = spawn_migrate(ws, src, dst, extra, &[("VMSHIFT_TEST_SIGKILL_AT", point)]);
    let (id, _o) = wait_copy_started(&mut child);
    (id, child.wait().unwrap())
}

fn resume(ws: &Ws, id: &str) -> (i32, Value, std::process::Output) {
    let out = ws
        .vmshift()
        .args(["resume", id, "--json"])
        .output()
        .unwrap();
    (out.status.code().unwrap_or(-1), last_report(&out), out)
}

fn journal(ws: &Ws) -> vmshift_journal::Journal {
    vmshift_journal::Journal::open_read_only(&ws.path("state/journal.sqlite")).unwrap()
}

/// Bytes of data chunks that the killed run wrote (non-zero in the partial target) but the
/// journal does not record: exactly what the resume copies a second time. Only chunks that
/// `qemu-img map` shows allocated are read (the partial target is sparse).
fn unrecorded_written(partial: &Path, recorded: &HashSet<u64>) -> u64 {
    let map: Value = serde_json::from_str(&qemu_img(&[
        "map",
        "-f",
        "raw",
        "--output=json",
        p(partial),
    ]))
    .unwrap();
    let mut allocated = std::collections::BTreeSet::new();
    for e in map.as_array().unwrap() {
        if e["data"] == true {
            let (start, len) = (e["start"].as_u64().unwrap(), e["length"].as_u64().unwrap());
            allocated.extend(start / CHUNK..(start + len).div_ceil(CHUNK));
        }
    }
    let f = std::fs::File::open(partial).unwrap();
    let mut buf = vec![0u8; usize::try_from(CHUNK).unwrap()];
    let mut total = 0;
    for idx in allocated.into_iter().filter(|i| !recorded.contains(i)) {
        f.read_exact_at(&mut buf, idx * CHUNK).unwrap();
        if buf.chunks_exact(8).any(|w| w != [0u8; 8]) {
            total += CHUNK;
        }
    }
    total
}

#[test]
fn kill_9_at_20_seeded_random_points_then_resume_gives_identical_targets() {
    let ws = Ws::new();
    let src = ws.path("disk.raw");
    mixed_image(&src, 0x5eed);
    let src_hash = b3(&src);
    let src_mtime = std::fs::metadata(&src).unwrap().modified().unwrap();

    // Reference run: how long the copy takes and how many data bytes a whole copy writes.
    let refdst = ws.mkdir("ref");
    let t = Instant::now();
    let (code, r, out) = ws.migrate(&src, &refdst, &[]);
    assert_eq!(code, 0, "{}", stderr(&out));
    let full_copied = r["bytes_copied"].as_u64().unwrap();
    let copy_ms = r["phases"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["phase"] == "copy" || p["name"] == "copy")
        .map_or(u64::try_from(t.elapsed().as_millis()).unwrap() / 2, |p| {
            p["duration_ms"].as_u64().unwrap()
        })
        .max(200);
    eprintln!("reference copy: {copy_ms} ms, {full_copied} data bytes");

    let mut rng = Rng(20_2611);
    let mut kills = 0;
    let mut max_recopy = 0;
    let mut attempts = 0;
    while kills < 20 {
        attempts += 1;
        assert!(attempts < 60, "could not land 20 kills mid-copy");
        let dst = ws.mkdir(&format!("dst{attempts}"));
        let mut child = spawn_migrate(&ws, &src, &dst, &[], &[]);
        let (id, _stdout) = wait_copy_started(&mut child);
        let delay = rng.next() % copy_ms;
        std::thread::sleep(Duration::from_millis(delay));
        let _ = child.kill(); // SIGKILL
        let status = child.wait().unwrap();
        let target = dst.join("disk.raw");
        let partial = dst.join("disk.raw.vmshift-partial");
        if status.success() || target.exists() || !partial.exists() {
            // Finished before the kill landed: not a mid-copy kill.
            continue;
        }
        kills += 1;
        let j = journal(&ws);
        let recorded: HashSet<u64> = j.chunks(&id).unwrap().iter().map(|c| c.index).collect();
        let recopy = unrecorded_written(&partial, &recorded);
        max_recopy = max_recopy.max(recopy);
        assert!(
            recopy <= recopy_bound(),
            "kill {kills} after {delay} ms: {recopy} bytes written but not journaled"
        );
        let (code, r, out) = resume(&ws, &id);
        assert_eq!(code, 0, "resume after kill at {delay} ms: {}", stderr(&out));
        assert_eq!(r["status"], "succeeded");
        assert_eq!(r["verification"]["result"], "match");
        assert_eq!(
            r["bytes_copied"].as_u64().unwrap() + r["bytes_reused"].as_u64().unwrap(),
            full_copied,
            "reused + copied = one whole copy"
        );
        assert!(identical_fmt(&src, "raw", &target, "raw"));
        assert_eq!(std::fs::metadata(&target).unwrap().len(), GIB);
        assert!(!partial.exists());
        assert_eq!(j.job(&id).unwrap().status, "succeeded");
        assert_eq!(
            std::fs::metadata(&src).unwrap().modified().unwrap(),
            src_mtime
        );
        std::fs::remove_dir_all(&dst).unwrap();
    }
    assert_eq!(b3(&src), src_hash, "the source never changes");
    eprintln!("{kills} kills in {attempts} attempts; max bytes recopied {max_recopy}");
}

fn dense_source(ws: &Ws) -> PathBuf {
    let src = ws.path("d.raw");
    std::fs::write(&src, random_bytes(usize::try_from(160 * M).unwrap(), 77)).unwrap();
    src
}

#[test]
fn kill_between_a_checkpoints_fsync_and_its_commit_loses_only_that_checkpoint() {
    let ws = Ws::new();
    let src = dense_source(&ws);
    let dst = ws.mkdir("dst");
    // Checkpoint 2's data is fsync'd, then the process dies before the journal commit.
    let (id, st) = killed_at(&ws, &src, &dst, &[], "checkpoint:2");
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&st),
        Some(9),
        "killed by SIGKILL"
    );
    let j = journal(&ws);
    let chunks = j.chunks(&id).unwrap();
    // Only checkpoint 1 (≥ 64 MiB of chunks) is recorded; checkpoint 2 was durable on disk
    // but never committed, so it is copied again.
    let recorded: u64 = chunks.iter().map(|c| c.len).sum();
    assert!((64 * M..160 * M).contains(&recorded), "{recorded}");
    let status = ws.vmshift().args(["status", &id]).output().unwrap();
    assert!(
        String::from_utf8_lossy(&status.stdout).contains("interrupted"),
        "{}",
        String::from_utf8_lossy(&status.stdout)
    );
    let (code, r, out) = resume(&ws, &id);
    assert_eq!(code, 0, "{}", stderr(&out));
    assert_eq!(r["bytes_reused"].as_u64().unwrap(), recorded);
    assert_eq!(r["bytes_copied"].as_u64().unwrap(), 160 * M - recorded);
    assert_same_image(&src, &dst.join("d.raw"));
}

#[test]
fn kill_between_the_last_commit_and_the_rename_resumes_without_copying() {
    let ws = Ws::new();
    let src = dense_source(&ws);
    let dst = ws.mkdir("dst");
    let (id, _) = killed_at(&ws, &src, &dst, &["--format", "qcow2"], "cutover");
    assert!(dst.join("d.qcow2.vmshift-partial").exists());
    assert!(
        !dst.join("d.qcow2").exists(),
        "no file under the final name"
    );
    let (code, r, out) = resume(&ws, &id);
    assert_eq!(code, 0, "{}", stderr(&out));
    assert_eq!(r["bytes_copied"], 0, "everything was journaled");
    assert_eq!(r["bytes_reused"].as_u64().unwrap(), 160 * M);
    assert_eq!(r["verification"]["result"], "match");
    assert!(identical_fmt(&src, "raw", &dst.join("d.qcow2"), "qcow2"));
    assert_eq!(virtual_size(&dst.join("d.qcow2")), 160 * M);
    // The journaled job is done and cannot be resumed twice.
    let again = ws.vmshift().args(["resume", &id]).output().unwrap();
    assert_eq!(again.status.code(), Some(2));
    assert!(stderr(&again).contains("succeeded"), "{}", stderr(&again));
}

#[test]
fn kill_after_the_rename_before_success_is_recorded_is_finished_by_resume() {
    let ws = Ws::new();
    let src = dense_source(&ws);
    let dst = ws.mkdir("dst");
    let (id, _) = killed_at(&ws, &src, &dst, &[], "renamed");
    assert!(dst.join("d.raw").exists());
    assert_eq!(journal(&ws).job(&id).unwrap().status, "running");
    let out = ws.vmshift().args(["resume", &id]).output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(stderr(&out).contains("verified again"), "{}", stderr(&out));
    assert_eq!(journal(&ws).job(&id).unwrap().status, "succeeded");
    assert_same_image(&src, &dst.join("d.raw"));
}

#[test]
fn a_killed_direct_io_job_resumes_without_filling_the_page_cache() {
    if !is_root() {
        eprintln!("needs root to drop the page cache; skipped");
        return;
    }
    let ws = Ws::new();
    let src = dense_source(&ws);
    let dst = ws.mkdir("dst");
    let (id, _) = killed_at(&ws, &src, &dst, &["--io", "direct"], "checkpoint:2");
    let cached = |p: &Path| -> u64 {
        run(
            "fincore",
            &[
                "--bytes",
                "--noheadings",
                "--output",
                "RES",
                p.to_str().unwrap(),
            ],
        )
        .trim()
        .parse()
        .unwrap()
    };
    // Drop what the dead job and the test left cached, then resume: the sample check, the
    // copy and the whole-image verification all read with O_DIRECT.
    run("sync", &[]);
    std::fs::write("/proc/sys/vm/drop_caches", "1").unwrap();
    let (code, r, out) = resume(&ws, &id);
    assert_eq!(code, 0, "{}", stderr(&out));
    assert!(r["bytes_reused"].as_u64().unwrap() >= 64 * M, "{r}");
    assert_eq!(r["verification"]["method"], "after-copy");
    let target = dst.join("d.raw");
    let (t, s) = (cached(&target), cached(&src));
    assert!(t < 4 * M && s < 4 * M, "cached: target {t}, source {s}");
    assert_same_image(&src, &target);
}

#[test]
fn resume_repairs_a_journaled_chunk_altered_outside_the_sample_instead_of_failing() {
    let ws = Ws::new();
    let src = dense_source(&ws);
    let dst = ws.mkdir("dst");
    let (id, _) = killed_at(&ws, &src, &dst, &[], "checkpoint:2");
    let mut chunks = journal(&ws).chunks(&id).unwrap();
    chunks.sort_by_key(|c| c.index);
    let recorded: u64 = chunks.iter().map(|c| c.len).sum();
    // resume's sample: the first, the last and six spread between (resume::sample).
    let last = chunks.len() - 1;
    let sampled: HashSet<usize> = (0..8).map(|i| i * last / 7).collect();
    let victim = (0..chunks.len())
        .find(|i| !sampled.contains(i))
        .expect("a journaled chunk outside the sample");
    let victim = &chunks[victim];
    // A stale region inside that chunk of the partial target.
    let partial = dst.join("d.raw.vmshift-partial");
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(&partial)
        .unwrap();
    f.write_all_at(&[0xee; 4096], victim.offset + 8192).unwrap();
    f.sync_all().unwrap();
    drop(f);

    let (code, r, out) = resume(&ws, &id);
    assert_eq!(code, 0, "{}", stderr(&out));
    assert_eq!(r["verification"]["result"], "match");
    assert_eq!(r["repaired_chunks"], serde_json::json!([victim.offset]));
    assert!(
        r["warnings"]
            .to_string()
            .contains(&format!("{:#x}", victim.offset)),
        "{}",
        r["warnings"]
    );
    // This run's copy plus exactly the repaired chunk, not everything again.
    assert_eq!(
        r["bytes_copied"].as_u64().unwrap(),
        160 * M - recorded + victim.len
    );
    // The repaired chunk is copied, no longer reused: the two still add up to one run's copy.
    assert_eq!(
        r["bytes_copied"].as_u64().unwrap() + r["bytes_reused"].as_u64().unwrap(),
        160 * M,
        "{r}"
    );
    assert_same_image(&src, &dst.join("d.raw"));
}
