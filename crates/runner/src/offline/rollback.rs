//! What an offline rollback must prove before it deletes a target: that the target still
//! holds exactly what the job verified (a VM that ran on it since wrote data that exists
//! nowhere else) and that the source is still the image the job copied.

use super::job::CHUNK;
use super::resume::{is_qcow2, source_changed};
use std::path::Path;
use std::sync::atomic::AtomicBool;
use vmshift_image::chain::LayerFormat;
use vmshift_image::target::target_chain;
use vmshift_image::ImageReader;

/// Why the target of `job` must not be deleted, or `None` when rolling back loses nothing.
pub(crate) fn refusal(job: &vmshift_journal::JobRecord) -> Option<String> {
    if let Some(why) = source_changed(&job.facts) {
        return Some(format!(
            "{why}: the source is no longer the image the job copied, so the target {} may be the only copy of its data; it is kept",
            job.destination
        ));
    }
    let verified = job
        .report
        .as_deref()
        .and_then(|r| std::fs::read_to_string(r).ok())
        .and_then(|t| serde_json::from_str::<vmshift_core::report::Report>(&t).ok())
        .map(|r| r.verification)
        .filter(|v| v.result == "match" && !v.destination_digest.is_empty());
    let Some(verified) = verified else {
        return Some(format!(
            "job {} has no verified digest of its target (run with --no-verify, or its report is gone), so vmshift cannot tell whether {} changed since; point the VM back at {} and delete the target yourself if you are sure",
            job.id, job.destination, job.source
        ));
    };
    let dest = Path::new(&job.destination);
    let now = digest(dest, verified.verified_bytes);
    match now {
        Ok(d) if d == verified.destination_digest => None,
        Ok(_) => Some(format!(
            "{} was written since the job verified it (a VM ran on it?): rolling back would lose those writes; move it back with a new migration instead",
            job.destination
        )),
        Err(e) => Some(format!(
            "{} cannot be read to prove it is unchanged ({e}); it is kept",
            job.destination
        )),
    }
}

/// BLAKE3 guest-view digest of the image at `path` over `size` bytes, as verification
/// computes it.
fn digest(path: &Path, size: u64) -> Result<String, String> {
    let format = if is_qcow2(path) {
        LayerFormat::Qcow2
    } else {
        LayerFormat::Raw
    };
    let chain = target_chain(path, format, None).map_err(|e| e.to_string())?;
    let reader = ImageReader::open(&chain).map_err(|e| e.to_string())?;
    if reader.virtual_size() < size {
        return Ok(String::new());
    }
    let never = AtomicBool::new(false);
    let counters = vmshift_copy::Counters::default();
    vmshift_copy::digest_image_with(&reader, size, 2, CHUNK, false, &never, &counters)
        .map(|d| d.hex())
        .map_err(|e| e.to_string())
}
