//! Helpers for the integration tests: the real `vmshift` binary, real `qemu-img`/`qemu-io`,
//! and the shared input cases built by `tests/cases/make_cases.sh`.
#![allow(dead_code, missing_docs)]

use assert_cmd::Command;
use serde_json::Value;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Output;

pub const M: u64 = 1 << 20;

/// A test workspace: a temp dir that also holds the state directory.
pub struct Ws {
    pub dir: tempfile::TempDir,
}

impl Ws {
    pub fn new() -> Self {
        Ws {
            dir: tempfile::Builder::new()
                .prefix("vmshift-test-")
                .tempdir_in(std::env::temp_dir())
                .unwrap(),
        }
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    pub fn mkdir(&self, rel: &str) -> PathBuf {
        let p = self.path(rel);
        std::fs::create_dir_all(&p).unwrap();
        p
    }

    /// `vmshift` with the state directory inside this workspace.
    pub fn vmshift(&self) -> Command {
        let mut c = Command::cargo_bin("vmshift").unwrap();
        c.env("VMSHIFT_STATE_DIR", self.path("state"));
        c
    }

    /// `vmshift status ID --json`, which must succeed.
    pub fn status(&self, id: &str) -> Value {
        let out = self
            .vmshift()
            .args(["status", id, "--json"])
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", stderr(&out));
        serde_json::from_slice(&out.stdout).unwrap()
    }

    /// Runs `vmshift migrate SRC --to DST EXTRA... --json` and returns (exit code, report).
    pub fn migrate(&self, src: &Path, dst: &Path, extra: &[&str]) -> (i32, Value, Output) {
        let out = self
            .vmshift()
            .arg("migrate")
            .arg(src)
            .arg("--to")
            .arg(dst)
            .args(extra)
            .arg("--json")
            .output()
            .unwrap();
        let code = out.status.code().unwrap_or(-1);
        let report = last_report(&out);
        (code, report, out)
    }

    /// Starts `vmshift migrate SRC --to DST --bwlimit LIMIT --json` in the background (for
    /// tests that act on a job while it copies).
    pub fn spawn_slow_migrate(&self, src: &Path, dst: &Path, limit: &str) -> std::process::Child {
        self.spawn_slow_migrate_with(src, dst, limit, &[])
    }

    /// [`Ws::spawn_slow_migrate`] with `extra` arguments.
    pub fn spawn_slow_migrate_with(
        &self,
        src: &Path,
        dst: &Path,
        limit: &str,
        extra: &[&str],
    ) -> std::process::Child {
        std::process::Command::new(assert_cmd::cargo::cargo_bin("vmshift"))
            .args([
                "migrate",
                p(src),
                "--to",
                p(dst),
                "--bwlimit",
                limit,
                "--json",
            ])
            .args(extra)
            .env("VMSHIFT_STATE_DIR", self.path("state"))
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    }

    /// [`Ws::spawn_slow_migrate`], returning once the job reports its copy phase (so a test
    /// acts mid-copy however slow the machine is).
    pub fn start_copying(&self, src: &Path, dst: &Path, limit: &str) -> Copying {
        let mut child = self.spawn_slow_migrate(src, dst, limit);
        let stdout = child.stdout.take().unwrap();
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
        rx.recv_timeout(std::time::Duration::from_secs(120))
            .expect("the job never reached its copy phase");
        Copying { child, reader }
    }

    /// Builds shared cases into this workspace; returns the folder of the first one.
    pub fn case(&self, id: &str) -> PathBuf {
        let script = repo_root().join("tests/cases/make_cases.sh");
        let out = std::process::Command::new("bash")
            .arg(&script)
            .arg(self.path("cases"))
            .arg(id)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "make_cases {id}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let prefix = id.to_uppercase();
        std::fs::read_dir(self.path("cases"))
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .find(|p| {
                p.file_name()
                    .unwrap()
                    .to_string_lossy()
                    .starts_with(&prefix)
            })
            .expect("case folder")
    }
}

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .unwrap()
}

/// The report: the last NDJSON line of stdout with `"event":"report"`.
pub fn last_report(out: &Output) -> Value {
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .rfind(|v| v["event"] == "report")
        .map(|v| v["report"].clone())
        .unwrap_or(Value::Null)
}

pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Runs a program, asserting success; returns stdout.
pub fn run(prog: &str, args: &[&str]) -> String {
    let out = std::process::Command::new(prog)
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{prog} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs a program in `dir`, asserting success.
pub fn run_in(dir: &Path, prog: &str, args: &[&str]) -> String {
    let out = std::process::Command::new(prog)
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{prog} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Creates qcow2 overlay `name` in `dir` on backing file `base` (a name relative to `dir`,
/// format qcow2 recorded), as an operator would with qemu-img; returns its path.
pub fn overlay(dir: &Path, base: &str, name: &str) -> PathBuf {
    run_in(
        dir,
        "qemu-img",
        &[
            "create", "-q", "-f", "qcow2", "-b", base, "-F", "qcow2", name,
        ],
    );
    dir.join(name)
}

pub fn p(path: &Path) -> &str {
    path.to_str().unwrap()
}

pub fn qemu_img(args: &[&str]) -> String {
    run("qemu-img", args)
}

/// Runs qemu-io on `img` with `flags` then one `-c` per command: (exit ok, stdout+stderr).
fn run_qemu_io(flags: &[&str], img: &Path, cmds: &[&str]) -> (bool, String) {
    let mut a: Vec<String> = flags.iter().map(|f| f.to_string()).collect();
    for c in cmds {
        a.push("-c".into());
        a.push((*c).into());
    }
    a.push(p(img).to_string());
    let out = std::process::Command::new("qemu-io")
        .args(&a)
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), text)
}

/// qemu-io with an explicit format, failing on any error text.
pub fn qemu_io(fmt: &str, img: &Path, cmds: &[&str]) {
    let (ok, text) = run_qemu_io(&["-f", fmt], img, cmds);
    assert!(
        ok && !text.to_lowercase().contains("fail") && !text.contains("rror"),
        "qemu-io {cmds:?} {}: {text}",
        img.display()
    );
}

/// Like [`qemu_io`] but read-only, returning whether all commands passed.
pub fn qemu_io_ro_ok(img: &Path, fmt: &str, cmds: &[&str]) -> bool {
    let (ok, text) = run_qemu_io(&["-r", "-f", fmt], img, cmds);
    ok && !text.contains("Pattern verification failed") && !text.contains("rror")
}

pub fn info(img: &Path) -> Value {
    serde_json::from_str(&qemu_img(&["info", "-U", "--output=json", p(img)])).unwrap()
}

pub fn virtual_size(img: &Path) -> u64 {
    info(img)["virtual-size"].as_u64().unwrap()
}

pub fn allocated(path: &Path) -> u64 {
    std::fs::metadata(path).unwrap().blocks() * 512
}

/// `qemu-img compare` says identical (exit 0).
pub fn identical(a: &Path, b: &Path) -> bool {
    std::process::Command::new("qemu-img")
        .args(["compare", "-U", p(a), p(b)])
        .status()
        .unwrap()
        .success()
}

/// `qemu-img compare` with explicit formats.
pub fn identical_fmt(a: &Path, fa: &str, b: &Path, fb: &str) -> bool {
    std::process::Command::new("qemu-img")
        .args(["compare", "-U", "-f", fa, "-F", fb, p(a), p(b)])
        .status()
        .unwrap()
        .success()
}

/// Identical content AND identical virtual size (compare alone calls padded images equal).
pub fn assert_same_image(a: &Path, b: &Path) {
    assert!(
        identical(a, b),
        "qemu-img compare: {} vs {}",
        a.display(),
        b.display()
    );
    assert_eq!(virtual_size(a), virtual_size(b), "virtual sizes differ");
}

/// Deterministic pseudo-random bytes.
pub fn random_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut v = Vec::with_capacity(len + 8);
    while v.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.extend_from_slice(&x.to_le_bytes());
    }
    v.truncate(len);
    v
}

/// Files left in `dir` (names), sorted.
/// A qcow2 image `name` in `ws` whose 8 MiB of compressible text is stored in compressed
/// clusters (`qemu-img convert -c`; random data would be stored uncompressed).
pub fn compressed_qcow2(ws: &Ws, name: &str) -> PathBuf {
    let raw = ws.path(&format!("{name}.plain"));
    let text: Vec<u8> = (0..320_000)
        .flat_map(|i| format!("{i:08} compressible text\n").into_bytes())
        .collect();
    std::fs::write(&raw, &text[..8 << 20]).unwrap();
    let src = ws.path(name);
    qemu_img(&[
        "convert",
        "-q",
        "-c",
        "-f",
        "raw",
        "-O",
        "qcow2",
        p(&raw),
        p(&src),
    ]);
    src
}

pub fn listing(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

pub fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

/// A small tmpfs mounted at `dir` for the life of the guard (root only).
pub struct Tmpfs(pub PathBuf);

impl Tmpfs {
    pub fn mount(dir: &Path, size: &str) -> Tmpfs {
        std::fs::create_dir_all(dir).unwrap();
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
        Tmpfs(dir.to_path_buf())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

/// A guest-less QEMU holding `img` open read-write (like a running VM), killed on drop.
pub struct RunningQemu(pub std::process::Child);

impl RunningQemu {
    pub fn start(img: &Path, fmt: &str) -> RunningQemu {
        let file = serde_json::json!({"driver": "file", "node-name": "f0", "filename": p(img)});
        let fmtn = serde_json::json!({"driver": fmt, "node-name": "d0", "file": "f0"});
        let child = std::process::Command::new("qemu-system-x86_64")
            .args([
                "-machine",
                "none",
                "-accel",
                "tcg",
                "-nodefaults",
                "-display",
                "none",
                "-S",
            ])
            .arg("-blockdev")
            .arg(file.to_string())
            .arg("-blockdev")
            .arg(fmtn.to_string())
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        // Wait until the lock is visible.
        for _ in 0..100 {
            if vmshift_image_locked(img) {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        RunningQemu(child)
    }
}

fn vmshift_image_locked(img: &Path) -> bool {
    // qemu-img info without -U fails while a writer holds the image.
    !std::process::Command::new("qemu-img")
        .args(["info", p(img)])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .unwrap()
        .success()
}

impl Drop for RunningQemu {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A background migration that is copying.
pub struct Copying {
    child: std::process::Child,
    reader: std::thread::JoinHandle<String>,
}

impl Copying {
    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits for the job to end and returns its output (stdout = every NDJSON line).
    pub fn finish(self) -> Output {
        let out = self.child.wait_with_output().unwrap();
        let stdout = self.reader.join().unwrap().into_bytes();
        Output { stdout, ..out }
    }
}
