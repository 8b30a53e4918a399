//! Resume repairs instead of failing: when a resumed copy's verification finds journaled
//! chunks whose target bytes no longer match (a stale or altered region the resume's sample
//! did not read), exactly those chunks are copied again and the target verified again.

use super::execute::open_partial;
use super::job::Resuming;
use vmshift_copy::CopyError;
use vmshift_core::report::Report;
use vmshift_image::chain::Chain;
use vmshift_image::{ImageReader, TargetSpec};

/// A resumed copy whose verification failed: the journaled chunks whose target bytes no
/// longer have their digest are copied again from the source (only those), the target is
/// synced and read afresh. Returns the fresh reader and its digest when a chunk was
/// repaired (the caller verifies again); `None` when this is no resume or nothing
/// journaled differed.
#[allow(clippy::too_many_arguments)]
pub(crate) fn repair_resumed(
    resuming: Option<&Resuming>,
    spec: &TargetSpec,
    reader: &ImageReader,
    extents: &[vmshift_core::Extent],
    treader: &ImageReader,
    tchain: &Chain,
    report: &mut Report,
    digest: &dyn Fn(&ImageReader) -> std::result::Result<vmshift_copy::SparseDigest, CopyError>,
) -> std::result::Result<Option<(ImageReader, vmshift_copy::SparseDigest)>, String> {
    let Some(r) = resuming.filter(|r| !r.chunks.is_empty()) else {
        return Ok(None);
    };
    let recorded: Vec<vmshift_copy::repair::RecordedChunk> = r
        .chunks
        .iter()
        .map(|c| vmshift_copy::repair::RecordedChunk {
            offset: c.offset,
            len: c.len,
            digest: c.digest,
        })
        .collect();
    let target = open_partial(spec)?;
    let fixed = vmshift_copy::repair::repair_chunks(reader, extents, &target, treader, &recorded)
        .map_err(|e| {
        format!(
            "{}: repair after a failed verification: {e}",
            spec.path.display()
        )
    })?;
    if fixed.is_empty() {
        return Ok(None);
    }
    target
        .sync()
        .map_err(|e| format!("{}: fsync failed: {e}", spec.path.display()))?;
    drop(target);
    let fresh = ImageReader::open(tchain).map_err(|e| e.to_string())?;
    let d = digest(&fresh).map_err(|e| e.to_string())?;
    let bytes: u64 = fixed.iter().map(|c| c.len).sum();
    // Those chunks were counted as reused: now they are copied (the two still add up).
    report.bytes_copied += bytes;
    report.bytes_reused = report.bytes_reused.saturating_sub(bytes);
    report.repaired_chunks = fixed.iter().map(|c| c.offset).collect();
    report.warnings.push(format!(
        "resume: {} journaled chunk(s) of the partial target no longer matched the source (guest offsets {}); they were copied again ({} bytes) and the target verified again",
        fixed.len(),
        fixed
            .iter()
            .map(|c| format!("{:#x}", c.offset))
            .collect::<Vec<_>>()
            .join(", "),
        bytes
    ));
    Ok(Some((fresh, d)))
}
