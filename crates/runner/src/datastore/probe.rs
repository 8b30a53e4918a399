//! A datastore's latency: one 4 KiB block written (`O_DIRECT | O_DSYNC`) and read back
//! (`O_DIRECT`) in a temp file under its root, a few rounds, the median kept. Results are
//! cached in the state directory with their time, so listing datastores stays cheap.

use crate::error::IoContext;
use crate::Result;
use rustix::fs::{Mode, OFlags};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// A cached latency older than this is measured again.
pub const LATENCY_MAX_AGE: Duration = Duration::from_secs(600);
/// The cache's file name in the state directory.
pub const LATENCY_CACHE_FILE: &str = "datastore-latency.json";
/// The probe's block, bytes: the largest logical block size of common devices.
const BLOCK: usize = 4096;
/// Measured rounds (after one that allocates the block).
const ROUNDS: usize = 5;

/// How the probe reached the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ProbeMethod {
    /// `O_DIRECT`: the write and the read went to the device.
    Direct,
    /// The file system refused `O_DIRECT` (tmpfs): `O_DSYNC` writes, reads from the page
    /// cache. Comparable only with other buffered results.
    Buffered,
}

/// A measured latency.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Latency {
    /// Median of one 4 KiB write plus its read back, µs (rounded up, so never 0).
    pub latency_us: u64,
    /// How it was measured.
    pub method: ProbeMethod,
    /// When, RFC 3339 UTC.
    pub measured_at: String,
    /// When, ms since the Unix epoch (for the cache's age).
    pub measured_at_unix_ms: u64,
    /// It came from the cache rather than a probe just now.
    #[serde(default)]
    pub cached: bool,
}

/// A cache entry: the latency of the root a datastore name had.
#[derive(Serialize, Deserialize)]
struct Entry {
    root: PathBuf,
    #[serde(flatten)]
    latency: Latency,
}

/// The latency of datastore `name` at `root`: from the cache in `state_dir` when it is
/// younger than `max_age` and was measured at the same root, else probed now (`force`:
/// always probed) and cached.
///
/// # Errors
/// When the probe fails (see [`probe`]). A cache that cannot be read is measured over; one
/// that cannot be written is not an error.
pub fn latency(
    state_dir: &Path,
    name: &str,
    root: &Path,
    max_age: Duration,
    force: bool,
) -> Result<Latency> {
    let path = state_dir.join(LATENCY_CACHE_FILE);
    let mut cache: BTreeMap<String, Entry> = std::fs::read(&path)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default();
    let now = unix_ms();
    if let Some(e) = cache.get(name) {
        let age = Duration::from_millis(now.saturating_sub(e.latency.measured_at_unix_ms));
        if !force && e.root == root && age < max_age {
            return Ok(Latency {
                cached: true,
                ..e.latency.clone()
            });
        }
    }
    let fresh = probe(root)?;
    cache.insert(
        name.to_string(),
        Entry {
            root: root.to_path_buf(),
            latency: fresh.clone(),
        },
    );
    // Best effort: a lost cache only costs a probe next time.
    if let Ok(body) = serde_json::to_vec_pretty(&cache) {
        let tmp = state_dir.join(format!(".{LATENCY_CACHE_FILE}.{}", std::process::id()));
        if std::fs::write(&tmp, body).is_ok() && std::fs::rename(&tmp, &path).is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
    }
    Ok(fresh)
}

/// Probes `root` now: a temp file `.vmshift-probe-PID-N` is created there, written and
/// read [`ROUNDS`] + 1 times and removed.
///
/// # Errors
/// One line naming the root when the file cannot be created, written or read (a read-only
/// or full datastore).
pub fn probe(root: &Path) -> Result<Latency> {
    let file = ProbeFile(root.join(format!(
        ".vmshift-probe-{}-{}",
        std::process::id(),
        unix_ms()
    )));
    let context = || format!("cannot probe the latency of {}", root.display());
    let (ns, method) = match measure(&file.0, true) {
        // tmpfs and some FUSE file systems refuse O_DIRECT.
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
            let _ = std::fs::remove_file(&file.0);
            (
                measure(&file.0, false).io_context(context)?,
                ProbeMethod::Buffered,
            )
        }
        r => (r.io_context(context)?, ProbeMethod::Direct),
    };
    let now = unix_ms();
    Ok(Latency {
        latency_us: ns.div_ceil(1000).max(1),
        method,
        measured_at: crate::state::now_rfc3339(),
        measured_at_unix_ms: now,
        cached: false,
    })
}

/// A block aligned for `O_DIRECT`.
#[repr(C, align(4096))]
struct Block([u8; BLOCK]);

/// Removes the probe file however the probe ends.
struct ProbeFile(PathBuf);

impl Drop for ProbeFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Median ns of a write + read of one block at offset 0 of a new file at `path`.
fn measure(path: &Path, direct: bool) -> std::io::Result<u64> {
    let mut flags = OFlags::RDWR | OFlags::CREATE | OFlags::EXCL | OFlags::CLOEXEC | OFlags::DSYNC;
    if direct {
        flags |= OFlags::DIRECT;
    }
    let fd = rustix::fs::open(path, flags, Mode::from_raw_mode(0o600))?;
    let mut block = Box::new(Block([0u8; BLOCK]));
    let mut samples = Vec::with_capacity(ROUNDS);
    for round in 0..=ROUNDS {
        block.0.fill(u8::try_from(round % 256).unwrap_or(0) ^ 0x5a);
        let t = Instant::now();
        let n = rustix::io::pwrite(&fd, &block.0, 0)?;
        let m = rustix::io::pread(&fd, &mut block.0, 0)?;
        let ns = u64::try_from(t.elapsed().as_nanos()).unwrap_or(u64::MAX);
        if n != BLOCK || m != BLOCK {
            return Err(std::io::Error::other(format!(
                "short transfer ({n} bytes written, {m} read of {BLOCK})"
            )));
        }
        // The first round allocates the block; it measures the file system, not the disk.
        if round > 0 {
            samples.push(ns);
        }
    }
    samples.sort_unstable();
    samples
        .get(samples.len() / 2)
        .copied()
        .ok_or_else(|| std::io::Error::other("no sample"))
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probes_leave_nothing_behind_and_measure_time() {
        let d = tempfile::tempdir().unwrap();
        let l = probe(d.path()).unwrap();
        assert!(l.latency_us > 0);
        assert!(!l.cached);
        assert_eq!(std::fs::read_dir(d.path()).unwrap().count(), 0);
    }

    #[test]
    fn a_fresh_cached_latency_is_reused_and_force_or_a_new_root_probes_again() {
        let (state, root) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let first = latency(state.path(), "a", root.path(), LATENCY_MAX_AGE, false).unwrap();
        assert!(!first.cached);
        let again = latency(state.path(), "a", root.path(), LATENCY_MAX_AGE, false).unwrap();
        assert!(again.cached);
        assert_eq!(again.measured_at_unix_ms, first.measured_at_unix_ms);
        assert!(
            !latency(state.path(), "a", root.path(), LATENCY_MAX_AGE, true)
                .unwrap()
                .cached
        );
        assert!(
            !latency(state.path(), "a", root.path(), Duration::ZERO, false)
                .unwrap()
                .cached
        );
        let other = tempfile::tempdir().unwrap();
        assert!(
            !latency(state.path(), "a", other.path(), LATENCY_MAX_AGE, false)
                .unwrap()
                .cached
        );
    }

    #[test]
    fn an_unwritable_root_is_one_line_naming_it() {
        let e = probe(Path::new("/nonexistent/vmshift-ds"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("cannot probe the latency of /nonexistent/vmshift-ds"),
            "{e}"
        );
    }
}
