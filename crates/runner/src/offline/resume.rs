//! `vmshift resume JOB` of an offline job.
//! It continues from its last
//! checkpoint. Before reusing anything it proves that the source is the one the job began
//! with (every layer's size and mtime, QEMU lock state through the check phase, and a digest
//! sample of journaled chunks) and that the partial target is the one the job wrote (the
//! same digest sample read back from it). Verification still digests the whole image.

use super::check::layer_format;
use super::job::{run_job, source_facts, Resuming, CHUNK};
use crate::handle::{ExitCode, JobCtx};
use crate::journal::{lock_job, JournalLink};
use crate::request::{IoMode, OfflineRequest};
use crate::{Result, RunnerError};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use vmshift_copy::engine::fill_chunk;
use vmshift_copy::io::{AlignedBuf, FastSource};
use vmshift_copy::{chunk_digest, engine::buf_index};
use vmshift_image::chain::{resolve_chain, ChainOptions, LayerFormat};
use vmshift_image::target::target_chain;
use vmshift_image::ImageReader;
use vmshift_journal::ChunkRecord;

/// Journaled chunks re-read from source and target before a resume reuses any: the first,
/// the last and up to six spread between them.
pub const SAMPLE_CHUNKS: usize = 8;

/// The chunks to re-read: the first, the last, and evenly spread ones between.
pub fn sample(chunks: &[ChunkRecord]) -> Vec<&ChunkRecord> {
    if chunks.len() <= SAMPLE_CHUNKS {
        return chunks.iter().collect();
    }
    let last = chunks.len() - 1;
    let mut picked: Vec<usize> = (0..SAMPLE_CHUNKS)
        .map(|i| i * last / (SAMPLE_CHUNKS - 1))
        .collect();
    picked.dedup();
    picked.into_iter().map(|i| &chunks[i]).collect()
}

fn refuse(ctx: &JobCtx, msg: String) -> Result<ExitCode> {
    ctx.em.say(format!("vmshift: resume refused: {msg}"));
    Ok(2)
}

/// Compares the recorded source facts with the files now. Returns the first difference.
pub(crate) fn source_changed(recorded: &serde_json::Value) -> Option<String> {
    let layers = recorded["layers"].as_array()?;
    for l in layers {
        let path = l["path"].as_str().unwrap_or_default();
        let Ok(m) = std::fs::metadata(path) else {
            return Some(format!("{path} is gone"));
        };
        let size = l["size"].as_u64().unwrap_or(0);
        if m.len() != size {
            return Some(format!(
                "{path} changed size since the job began ({size} → {} bytes)",
                m.len()
            ));
        }
        let mtime =
            (i128::from(m.mtime()) * 1_000_000_000 + i128::from(m.mtime_nsec())).to_string();
        if l["mtime_ns"].as_str() != Some(mtime.as_str()) {
            return Some(format!(
                "{path} was modified since the job began (mtime changed)"
            ));
        }
    }
    None
}

pub(crate) use crate::files::has_qcow2_magic as is_qcow2;

/// Repairs leaked clusters a killed writer may leave in a qcow2 partial target. Returns
/// false when `qemu-img check` finds real corruption.
fn repair_qcow2_leaks(path: &Path) -> bool {
    std::process::Command::new("qemu-img")
        .args(["check", "-q", "-r", "leaks", "-f", "qcow2"])
        .arg(path)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.code() == Some(0))
}

/// `vmshift resume JOB` of an offline job (the caller has checked that it may be resumed).
///
/// # Errors
/// A journal error (named); refusals print one line and return 2.
pub(crate) fn run_resume(
    ctx: &JobCtx,
    j: vmshift_journal::Journal,
    job: vmshift_journal::JobRecord,
    report: Option<PathBuf>,
) -> Result<ExitCode> {
    let locks = match lock_job(&job.id, Path::new(&job.destination)) {
        Ok(l) => l,
        Err(e) => return refuse(ctx, e.to_string()),
    };
    let mut args: OfflineRequest = serde_json::from_value(job.options.clone()).map_err(|e| {
        RunnerError::msg(format!(
            "job {}: unreadable options in the journal: {e}",
            job.id
        ))
    })?;
    args.report = report;
    if let Some(why) = source_changed(&job.facts) {
        return refuse(ctx, format!(
            "{why}: the partial copy cannot be trusted; start a new migration (`vmshift cancel {}` removes the partial target)",
            job.id
        ));
    }
    let partial = PathBuf::from(&job.partial);
    let dest = Path::new(&job.destination);
    if !partial.exists()
        && dest.exists()
        && matches!(job.partial_state.as_str(), "writing" | "kept")
    {
        // Killed after the rename, before the journal heard of it: prove and finish.
        return finish_renamed(ctx, &j, &job, &args, dest);
    }
    let mut chunks = j
        .chunks(&job.id)
        .map_err(|e| RunnerError::msg(e.to_string()))?;
    let mut notes = Vec::new();
    let mut reuse = partial.exists();
    if !reuse {
        if !chunks.is_empty() {
            notes.push(format!(
                "resume: the partial target {} was gone; everything was copied again",
                partial.display()
            ));
        }
        chunks.clear();
    } else if args.keep_backing {
        notes
            .push("resume: shallow (--keep-backing) copies restart from the beginning".to_string());
        reuse = false;
        chunks.clear();
        std::fs::remove_file(&partial)
            .map_err(|e| RunnerError::msg(format!("cannot remove {}: {e}", partial.display())))?;
    } else if is_qcow2(&partial) && !repair_qcow2_leaks(&partial) {
        notes.push(format!(
            "resume: qemu-img check found the partial target {} damaged; it was recreated and everything copied again",
            partial.display()
        ));
        reuse = false;
        chunks.clear();
        std::fs::remove_file(&partial)
            .map_err(|e| RunnerError::msg(format!("cannot remove {}: {e}", partial.display())))?;
    }
    if reuse && !chunks.is_empty() {
        match prove_sample(&args, &partial, &chunks, &job.id)? {
            Ok(note) => notes.push(note),
            Err(why) => return refuse(ctx, why),
        }
    }
    if !reuse {
        j.clear_chunks(&job.id)
            .map_err(|e| RunnerError::msg(e.to_string()))?;
    }
    let partial_credit = if reuse {
        std::fs::metadata(&partial).map_or(0, |m| m.blocks() * 512)
    } else {
        0
    };
    let run = j
        .start_run(&job.id)
        .map_err(|e| RunnerError::msg(e.to_string()))?;
    // Refresh the facts so a later resume compares against this run's source.
    if let Ok(chain) = resolve_chain(
        &args.source,
        &ChainOptions {
            top_format: args.source_format.map(layer_format),
            backing_format: args.backing_format.map(layer_format),
            ..Default::default()
        },
    ) {
        let crash = job.facts["crash_consistent"].as_bool().unwrap_or(false);
        j.set_facts(&job.id, &source_facts(&chain, crash))
            .map_err(|e| RunnerError::msg(e.to_string()))?;
    }
    let link = JournalLink {
        journal: Arc::new(Mutex::new(j)),
        id: job.id.clone(),
        run,
    };
    run_job(
        ctx,
        &args,
        Some(Resuming {
            link,
            locks,
            chunks,
            reuse_partial: reuse,
            partial_credit,
            notes,
            chunk_size: job.chunk_size,
        }),
    )
}

/// Proves that the source and the partial target both still hold a sample of the journaled
/// chunks ([`sample`]). `Ok(Ok(note))` for the report, `Ok(Err(reason))` for a refusal.
fn prove_sample(
    args: &OfflineRequest,
    partial: &Path,
    chunks: &[ChunkRecord],
    job_id: &str,
) -> Result<std::result::Result<String, String>> {
    // Prove source and partial target both still hold the sampled chunks.
    let chain = resolve_chain(
        &args.source,
        &ChainOptions {
            top_format: args.source_format.map(layer_format),
            backing_format: args.backing_format.map(layer_format),
            ..Default::default()
        },
    )
    .map_err(|e| RunnerError::msg(e.to_string()))?;
    let reader = ImageReader::open(&chain).map_err(|e| RunnerError::msg(e.to_string()))?;
    let extents = reader
        .extents(0, reader.virtual_size(), false)
        .map_err(|e| {
            RunnerError::msg(format!(
                "{}: block status failed: {e}",
                args.source.display()
            ))
        })?;
    let tformat = if is_qcow2(partial) {
        LayerFormat::Qcow2
    } else {
        LayerFormat::Raw
    };
    let tchain =
        target_chain(partial, tformat, None).map_err(|e| RunnerError::msg(e.to_string()))?;
    let treader = ImageReader::open(&tchain).map_err(|e| RunnerError::msg(e.to_string()))?;
    // Under --io direct the sample stays out of the page cache too.
    let direct = args.io == IoMode::Direct;
    let (src_io, target_io) = (
        FastSource::new(&reader, direct),
        FastSource::new(&treader, direct),
    );
    for rec in sample(chunks) {
        let mut aligned = AlignedBuf::new(buf_index(rec.len));
        let buf = aligned.as_mut_slice();
        fill_chunk(&src_io, &extents, rec.offset, buf)
            .map_err(|e| RunnerError::msg(e.to_string()))?;
        if chunk_digest(rec.offset, buf) != rec.digest {
            return Ok(Err(format!(
                "the source {} differs from what the job copied at guest offset {:#x}: start a new migration (`vmshift cancel {}` removes the partial target)",
                args.source.display(),
                rec.offset,
                job_id
            )));
        }
        buf.fill(0);
        if target_io.read_at(buf, rec.offset).is_err()
            || chunk_digest(rec.offset, buf) != rec.digest
        {
            return Ok(Err(format!(
                "{} is not the partial target this job wrote (guest offset {:#x} differs): move it away and resume again to copy everything anew",
                partial.display(),
                rec.offset
            )));
        }
    }
    Ok(Ok(format!(
        "resume: source unchanged (size, mtime, lock, {} sampled chunks) and the partial target holds what the job wrote; {} chunks reused",
        sample(chunks).len(),
        chunks.len()
    )))
}

/// The job was killed between renaming its verified target into place and recording
/// success: digests the source and the target again and, when they match, records the job
/// `succeeded`. A mismatch is refused and the file left alone.
fn finish_renamed(
    ctx: &JobCtx,
    j: &vmshift_journal::Journal,
    job: &vmshift_journal::JobRecord,
    args: &OfflineRequest,
    dest: &Path,
) -> Result<ExitCode> {
    let opts = |f: Option<crate::request::ImageFormat>| ChainOptions {
        top_format: f.map(layer_format),
        backing_format: args.backing_format.map(layer_format),
        ..Default::default()
    };
    let chain = resolve_chain(&args.source, &opts(args.source_format))
        .map_err(|e| RunnerError::msg(e.to_string()))?;
    let reader = ImageReader::open(&chain).map_err(|e| RunnerError::msg(e.to_string()))?;
    let tformat = if is_qcow2(dest) {
        LayerFormat::Qcow2
    } else {
        LayerFormat::Raw
    };
    let tchain = target_chain(dest, tformat, None).map_err(|e| RunnerError::msg(e.to_string()))?;
    let treader = ImageReader::open(&tchain).map_err(|e| RunnerError::msg(e.to_string()))?;
    let size = reader.virtual_size();
    let never = AtomicBool::new(false);
    let counters = vmshift_copy::Counters::default();
    let digest = |r: &ImageReader| {
        let direct = args.io == IoMode::Direct;
        vmshift_copy::digest_image_with(r, size, 2, CHUNK, direct, &never, &counters)
            .map(|d| d.hex())
            .map_err(|e| RunnerError::msg(e.to_string()))
    };
    let (a, b) = (digest(&reader)?, digest(&treader)?);
    if a != b || treader.virtual_size() < size {
        return refuse(ctx, format!(
            "{} exists but does not match the source: the job was interrupted after its rename and the file changed since; it is left alone",
            dest.display()
        ));
    }
    j.set_partial_state(&job.id, "final")
        .and_then(|()| j.set_status(&job.id, "succeeded", None))
        .map_err(|e| RunnerError::msg(e.to_string()))?;
    ctx.em.say(format!(
        "vmshift: job {} had already put {} in place before it was interrupted; verified again (blake3 {a}): succeeded",
        job.id,
        dest.display()
    ));
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(i: u64) -> ChunkRecord {
        ChunkRecord {
            index: i,
            offset: i << 23,
            len: 1 << 23,
            bytes: 1,
            data: 1,
            digest: [0; 32],
            run: 1,
        }
    }

    #[test]
    fn the_sample_takes_first_last_and_spread_chunks() {
        let few: Vec<_> = (0..5).map(rec).collect();
        assert_eq!(sample(&few).len(), 5);
        let many: Vec<_> = (0..100).map(rec).collect();
        let s: Vec<u64> = sample(&many).iter().map(|c| c.index).collect();
        assert_eq!(s.len(), SAMPLE_CHUNKS);
        assert_eq!(s[0], 0);
        assert_eq!(*s.last().unwrap(), 99);
        assert!(s.windows(2).all(|w| w[0] < w[1]));
    }
}
