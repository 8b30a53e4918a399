//! `qemu-img` as a subprocess: refcount checks and target creation. Arguments are passed as
//! separate `argv` entries (never a shell); file names go in as `json:` specifications or
//! `./`-prefixed paths so that `:` and leading `-` are never read as protocols or options.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Counts from `qemu-img check --output=json`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CheckCounts {
    /// Refcount or table corruptions.
    pub corruptions: u64,
    /// Leaked clusters.
    pub leaks: u64,
}

/// A path QEMU will read as a plain file name: absolute, or `./`-prefixed.
pub fn plain_file_name(path: &Path) -> PathBuf {
    if path.is_absolute() || path.starts_with(".") {
        path.to_path_buf()
    } else {
        Path::new(".").join(path)
    }
}

/// A `json:` specification for a qcow2 file with its backing chain disabled, so QEMU opens
/// exactly this file and probes nothing.
pub fn json_spec_qcow2_no_backing(path: &Path) -> String {
    let abs = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
    let v = serde_json::json!({
        "driver": "qcow2",
        "backing": null,
        "file": { "driver": "file", "filename": abs.to_string_lossy() },
    });
    format!("json:{v}")
}

/// How long `qemu-img check` may run. It reads every L2 table the image names, so a
/// hostile sparse file can keep it busy for hours; a real image of many TiB takes seconds.
pub const CHECK_TIMEOUT: Duration = Duration::from_secs(120);

/// Runs `qemu-img check` read-only with shared locks on a qcow2 file, backing disabled,
/// for at most [`CHECK_TIMEOUT`].
///
/// # Errors
/// A one-line description when qemu-img cannot run, does not finish in time, or its
/// output is not JSON.
pub fn check(path: &Path) -> Result<CheckCounts, String> {
    check_within(path, CHECK_TIMEOUT)
}

/// [`check`] with another time limit; on expiry qemu-img is killed.
///
/// # Errors
/// As [`check`].
pub fn check_within(path: &Path, timeout: Duration) -> Result<CheckCounts, String> {
    let mut child = Command::new("qemu-img")
        .args(["check", "-U", "--output=json"])
        .arg(json_spec_qcow2_no_backing(path))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run qemu-img: {e} (install qemu-utils)"))?;
    // Drained on threads so that a full pipe never stalls qemu-img while we wait.
    let stdout = drain(child.stdout.take());
    let stderr = drain(child.stderr.take());
    let deadline = Instant::now() + timeout;
    loop {
        match child.try_wait() {
            Ok(Some(_)) => break,
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("qemu-img check did not finish within {timeout:?}"));
            }
            Err(e) => return Err(format!("cannot wait for qemu-img: {e}")),
        }
    }
    let stdout = stdout.join().unwrap_or_default();
    let stderr = stderr.join().unwrap_or_default();
    let v: serde_json::Value = serde_json::from_slice(&stdout).map_err(|_| {
        String::from_utf8_lossy(&stderr)
            .lines()
            .next()
            .unwrap_or("no output")
            .to_string()
    })?;
    Ok(CheckCounts {
        corruptions: v["corruptions"].as_u64().unwrap_or(0),
        leaks: v["leaks"].as_u64().unwrap_or(0),
    })
}

/// Reads `pipe` to its end on a thread of its own.
fn drain<R: Read + Send + 'static>(pipe: Option<R>) -> std::thread::JoinHandle<Vec<u8>> {
    std::thread::spawn(move || {
        let mut buf = Vec::new();
        if let Some(mut p) = pipe {
            let _ = p.read_to_end(&mut buf);
        }
        buf
    })
}

/// qcow2 properties a new target keeps from its source.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Qcow2Options {
    /// 2 (`compat=0.10`) or 3 (`compat=1.1`).
    pub version: u32,
    /// Refcount width in bits (16 for v2).
    pub refcount_bits: u32,
    /// Lazy refcounts (v3 only).
    pub lazy_refcounts: bool,
}

impl Default for Qcow2Options {
    fn default() -> Self {
        Qcow2Options {
            version: 3,
            refcount_bits: 16,
            lazy_refcounts: false,
        }
    }
}

impl Qcow2Options {
    /// The options of the image whose header is `h`.
    pub fn from_header(h: &crate::header::Qcow2Header) -> Self {
        Qcow2Options {
            version: h.version,
            refcount_bits: 1 << h.refcount_order.min(6),
            lazy_refcounts: h.lazy_refcounts(),
        }
    }

    /// The `-o` options for `qemu-img create`.
    pub fn create_options(&self) -> String {
        if self.version == 2 {
            // compat=0.10 has 16-bit refcounts and no lazy refcounts by definition.
            "compat=0.10".into()
        } else {
            format!(
                "compat=1.1,refcount_bits={},lazy_refcounts={}",
                self.refcount_bits,
                if self.lazy_refcounts { "on" } else { "off" }
            )
        }
    }
}

/// How to create a qcow2 target.
#[derive(Debug, Clone)]
pub struct Qcow2CreateSpec {
    /// Where to create it.
    pub path: PathBuf,
    /// Virtual size in bytes.
    pub virtual_size: u64,
    /// Cluster size in bytes (512 B – 2 MiB, power of two).
    pub cluster_size: u64,
    /// Preallocate every cluster (`preallocation=falloc`).
    pub preallocate: bool,
    /// Backing reference to record: (name as written into the header, format).
    pub backing: Option<(String, String)>,
    /// Compat level, refcount width and lazy refcounts.
    pub options: Qcow2Options,
}

/// Creates a qcow2 image with `qemu-img create` (compat level and refcount options from
/// `spec.options`). The file may exist already (empty, created by the caller with the mode
/// it wants); qemu-img keeps its mode.
///
/// # Errors
/// qemu-img's first error line.
pub fn create_qcow2(spec: &Qcow2CreateSpec) -> Result<(), String> {
    let mut opts = format!(
        "cluster_size={},{}",
        spec.cluster_size,
        spec.options.create_options()
    );
    if spec.preallocate {
        opts.push_str(",preallocation=falloc");
    }
    let mut cmd = Command::new("qemu-img");
    cmd.args(["create", "-q", "-f", "qcow2", "-o", &opts]);
    if let Some((name, fmt)) = &spec.backing {
        // -u: the backing file is not opened (and so not probed) at creation.
        cmd.arg("-u").arg("-b").arg(name).arg("-F").arg(fmt);
    }
    cmd.arg(plain_file_name(&spec.path))
        .arg(spec.virtual_size.to_string());
    let out = cmd
        .output()
        .map_err(|e| format!("cannot run qemu-img: {e} (install qemu-utils)"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&out.stderr)
            .lines()
            .next()
            .unwrap_or("qemu-img create failed")
            .to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_never_look_like_options_or_protocols() {
        assert_eq!(plain_file_name(Path::new("-x:y")), PathBuf::from("./-x:y"));
        assert_eq!(
            plain_file_name(Path::new("/a/b:c")),
            PathBuf::from("/a/b:c")
        );
        let j = json_spec_qcow2_no_backing(Path::new("/a/x\"y.qcow2"));
        assert!(j.starts_with("json:{"));
        assert!(j.contains("\\\"y.qcow2"));
        assert!(j.contains("\"backing\":null"));
    }

    #[test]
    fn a_compat_0_10_source_gives_a_compat_0_10_target() {
        let v2 = Qcow2Options {
            version: 2,
            ..Default::default()
        };
        assert_eq!(v2.create_options(), "compat=0.10");
        let v3 = Qcow2Options {
            version: 3,
            refcount_bits: 64,
            lazy_refcounts: true,
        };
        assert_eq!(
            v3.create_options(),
            "compat=1.1,refcount_bits=64,lazy_refcounts=on"
        );
    }
}
