//! Test support: the cached test guest, QEMU processes owned by the test, tmpfs guards,
//! case inputs. Every QEMU runs with `-accel tcg` (KVM crashes guests on the CI hosts).
#![allow(dead_code)]

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, MutexGuard, OnceLock};
use std::time::Duration;

use serde_json::{json, Value};
use vmshift_qmp::stamp;
use vmshift_qmp::Qmp;

pub const MIB: u64 = 1 << 20;

/// Live tests measure rates and times: run them one at a time on the 2-core CI machines.
pub fn serial() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .expect("repo root")
}

/// Builds (once, cached) the test guest; returns (kernel, initrd).
pub fn guest() -> (PathBuf, PathBuf) {
    static G: OnceLock<PathBuf> = OnceLock::new();
    let dir = G.get_or_init(|| {
        let out = Command::new(repo().join("scripts/build-guest.sh"))
            .output()
            .expect("run build-guest.sh");
        assert!(
            out.status.success(),
            "build-guest.sh failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        PathBuf::from(
            String::from_utf8_lossy(&out.stdout)
                .trim()
                .lines()
                .last()
                .expect("cache dir"),
        )
    });
    (dir.join("vmlinuz"), dir.join("initrd.gz"))
}

/// Runs a program (no shell) and returns stdout; panics with stderr on failure.
pub fn run(prog: &str, args: &[&str]) -> String {
    let out = Command::new(prog)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{prog}: {e}"));
    assert!(
        out.status.success(),
        "{prog} {args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub fn p(path: &Path) -> &str {
    path.to_str().expect("utf-8 path")
}

/// Writes a raw image of `size` bytes whose every block carries a seq-0 stamp, then converts
/// it to `format` at `path`.
pub fn stamped_image(path: &Path, size: u64, format: &str) {
    let raw = if format == "raw" {
        path.to_owned()
    } else {
        path.with_extension("stamping.raw")
    };
    {
        let mut f = std::io::BufWriter::new(std::fs::File::create(&raw).expect("create"));
        for b in 0..size / stamp::BLOCK as u64 {
            f.write_all(&stamp::make_block(b, 0)).expect("write");
        }
        f.flush().expect("flush");
    }
    if format != "raw" {
        run(
            "qemu-img",
            &["convert", "-q", "-f", "raw", "-O", format, p(&raw), p(path)],
        );
        std::fs::remove_file(&raw).expect("rm");
    }
}

/// Converts any image to a raw temp file next to it (for stamp verification).
pub fn to_raw(img: &Path, format: &str) -> PathBuf {
    let out = img.with_extension("verify.raw");
    run(
        "qemu-img",
        &[
            "convert",
            "-q",
            "-U",
            "-f",
            format,
            "-O",
            "raw",
            p(img),
            p(&out),
        ],
    );
    out
}

pub fn virtual_size(img: &Path) -> u64 {
    let v: Value = serde_json::from_str(&run("qemu-img", &["info", "-U", "--output=json", p(img)]))
        .expect("json");
    v["virtual-size"].as_u64().expect("virtual-size")
}

pub fn qemu_img_check(img: &Path) {
    run("qemu-img", &["check", "-q", p(img)]);
}

pub fn file_digest(path: &Path) -> Vec<u8> {
    // Plain content copy is enough for 16-64 MiB test images.
    std::fs::read(path).expect("read")
}

pub use vmshift_qmp::testvm::Disk;
use vmshift_qmp::testvm::{Guest, TestVm};

/// A QEMU process owned by the test (see [`TestVm`]); helpers panic instead of erroring.
pub struct Vm {
    inner: TestVm,
    pub serial: PathBuf,
}

impl Vm {
    /// Boots the test guest with `disks` and extra kernel parameters.
    pub fn boot(dir: &Path, disks: &[Disk], params: &str) -> Vm {
        let (kernel, initrd) = guest();
        let inner = TestVm::boot(dir, &Guest { kernel, initrd }, disks, params).expect("boot");
        Vm {
            serial: inner.serial.clone(),
            inner,
        }
    }

    /// Starts a guest-less VM (CPUs paused) with `disks`, like the cases' env_start.sh.
    pub fn paused(dir: &Path, disks: &[Disk]) -> Vm {
        let inner = TestVm::paused(dir, disks).expect("start");
        Vm {
            serial: inner.serial.clone(),
            inner,
        }
    }

    pub fn qmp(&self) -> Qmp {
        self.inner.qmp().expect("QMP connect")
    }

    pub fn serial_log(&self) -> String {
        self.inner.serial_log()
    }

    pub fn wait_serial(&self, needle: &str, timeout: Duration) {
        if let Err(e) = self.inner.wait_serial(needle, timeout) {
            panic!("{e}; serial log:\n{}", self.serial_log());
        }
    }

    pub fn wait_batches(&self, dev: &str, since: usize, n: usize, timeout: Duration) -> usize {
        self.inner
            .wait_batches(dev, since, n, timeout)
            .expect("guest writes")
    }

    /// Waits until the guest's logged floor for `dev` reaches `min` (a full pass done).
    pub fn wait_floor(&self, dev: &str, min: u64, timeout: Duration) {
        let t = std::time::Instant::now();
        while stamp::last_floor(&self.serial_log(), dev).unwrap_or(0) < min {
            assert!(
                t.elapsed() < timeout,
                "guest floor on {dev} stayed below {min} for {timeout:?}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn quit(&mut self, qmp: &mut Qmp) {
        self.inner.quit(qmp).expect("quit");
    }

    pub fn wait_exit(&mut self, timeout: Duration) {
        self.inner.wait_exit(timeout).expect("guest exit");
    }
}

/// Node name and image file the VM's device `vd{i}` is attached to (`query-block`).
pub fn attached(qmp: &mut Qmp, device: &str) -> (String, String) {
    let blocks = qmp.execute("query-block", None).expect("query-block");
    for b in blocks.as_array().expect("array") {
        if b["qdev"]
            .as_str()
            .is_some_and(|q| q.contains(&format!("/{device}/")))
        {
            return (
                b["inserted"]["node-name"].as_str().unwrap_or("").to_owned(),
                b["inserted"]["file"].as_str().unwrap_or("").to_owned(),
            );
        }
    }
    panic!("device {device} not in query-block: {blocks}");
}

/// Asserts no job and no vmshift node remain in QEMU, except the nodes named in `keep`
/// (and their `-file` protocol nodes), which the VM now runs on.
pub fn assert_no_leftovers(qmp: &mut Qmp, keep: &[&str]) {
    let jobs = qmp.execute("query-jobs", None).expect("query-jobs");
    assert_eq!(jobs, json!([]), "jobs left behind");
    let nodes = qmp
        .call("query-named-block-nodes", json!({"flat": true}))
        .expect("nodes");
    let ours: Vec<&str> = nodes
        .as_array()
        .expect("array")
        .iter()
        .filter_map(|n| n["node-name"].as_str())
        .filter(|n| n.starts_with("vmshift"))
        .filter(|n| {
            !keep
                .iter()
                .any(|k| *n == *k || n.strip_suffix("-file") == Some(*k))
        })
        .collect();
    assert!(ours.is_empty(), "vmshift nodes left behind: {ours:?}");
}

/// A tmpfs mounted for the test; unmounted on drop.
pub struct Tmpfs(pub PathBuf);

impl Tmpfs {
    pub fn mount(dir: &Path, size: &str) -> Tmpfs {
        std::fs::create_dir_all(dir).expect("mkdir");
        run(
            "mount",
            &[
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size}"),
                "vmshift-test",
                p(dir),
            ],
        );
        Tmpfs(dir.to_owned())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

/// Builds the shared input cases into `out` (the project's vendored copy of the script when
/// present, else the shared one); returns the case directory whose name starts with `id`.
pub fn make_case(out: &Path, id: &str) -> PathBuf {
    let vendored = repo().join("tests/cases/make_cases.sh");
    let script = if vendored.exists() {
        vendored
    } else {
        PathBuf::from("/work/shared/cases/make_cases.sh")
    };
    run("bash", &[p(&script), p(out), &id.to_lowercase()]);
    std::fs::read_dir(out)
        .expect("read_dir")
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(id))
        })
        .unwrap_or_else(|| panic!("case {id} not built in {}", out.display()))
}

/// Progress callback that prints notes (visible with --nocapture).
pub fn quiet_progress() -> impl FnMut(&vmshift_qmp::LiveProgress) {
    |p: &vmshift_qmp::LiveProgress| {
        if let Some(n) = &p.note {
            eprintln!("[{:>6} ms] {}: {n}", p.elapsed.as_millis(), p.phase);
        }
    }
}
