//! `qemu-img` as a subprocess: refcount checks and target creation. Arguments are passed as
//! separate `argv` entries (never a shell); file names go in as `json:` specifications or
//! `./`-prefixed paths so that `:` and leading `-` are never read as protocols or options.

use std::path::{Path, PathBuf};
use std::process::Command;

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

/// Runs `qemu-img check` read-only with shared locks on a qcow2 file, backing disabled.
///
/// # Errors
/// A one-line description when qemu-img cannot run or its output is not JSON.
pub fn check(path: &Path) -> Result<CheckCounts, String> {
    let out = Command::new("qemu-img")
        .args(["check", "-U", "--output=json"])
        .arg(json_spec_qcow2_no_backing(path))
        .output()
        .map_err(|e| format!("cannot run qemu-img: {e} (install qemu-utils)"))?;
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).map_err(|_| {
        String::from_utf8_lossy(&out.stderr)
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
}

/// Creates a qcow2 v3 image with `qemu-img create`.
///
/// # Errors
/// qemu-img's first error line.
pub fn create_qcow2(spec: &Qcow2CreateSpec) -> Result<(), String> {
    let mut opts = format!("cluster_size={},compat=1.1", spec.cluster_size);
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
}
