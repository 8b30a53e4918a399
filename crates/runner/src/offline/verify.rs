//! The offline verify phase: BLAKE3 of the guest-visible content of source and target
//! (`vmshift_copy::digest`), virtual size included; a mismatch names the first differing
//! guest offset.

use super::execute::{Copied, Run};
use super::job::CHUNK;
use vmshift_copy::{digest_image_with, first_difference};
use vmshift_core::report::Report;
use vmshift_image::target::target_chain;
use vmshift_image::ImageReader;

/// Verifies the synced partial target against the source (or records that verification
/// was skipped). `Err(message)` on a mismatch; the guard then removes the target.
pub(crate) fn verify(
    run: &Run<'_>,
    cp: &mut Copied<'_>,
    report: &mut Report,
) -> Result<(), String> {
    let src_size = cp.reader.virtual_size();
    report.verification.algorithm = vmshift_copy::digest::ALGORITHM.into();
    if run.args.no_verify {
        report.verification.result = "skipped".into();
        report.verification.method = "none".into();
        report.warnings.push(
            "verification was skipped (--no-verify): the copy is not proven identical".into(),
        );
        return Ok(());
    }
    let (spec, cancel, counters) = (&cp.spec, &run.ctx.control.cancel, &cp.counters);
    let tchain = target_chain(&spec.path, spec.format, spec.backing.as_ref().map(|b| &b.2))
        .map_err(|e| e.to_string())?;
    let mut treader = ImageReader::open(&tchain).map_err(|e| e.to_string())?;
    let digest = |r: &ImageReader| {
        digest_image_with(
            r,
            src_size,
            cp.threads,
            CHUNK,
            spec.direct,
            cancel,
            counters,
        )
    };
    let source_digest = match cp.stats.source_digest.take() {
        Some(d) => d,
        None => {
            let _p = run.ctx.em.progress("verify-source", counters.clone());
            digest(&cp.reader).map_err(|e| e.to_string())?
        }
    };
    let target_digest = {
        let _p = run.ctx.em.progress("verify", counters.clone());
        report.verification.method = if cp.read_back.is_some() {
            "during-copy"
        } else {
            "after-copy"
        }
        .into();
        match cp.read_back.take() {
            Some(rb) => rb.finish(&treader, cp.threads, cancel, counters),
            None => digest(&treader),
        }
        .map_err(|e| e.to_string())?
    };
    let mut target_digest = target_digest;
    if source_digest.hex() != target_digest.hex() {
        if let Some((t, d)) = super::repair::repair_resumed(
            run.resuming,
            spec,
            &cp.reader,
            &cp.extents,
            &treader,
            &tchain,
            report,
            &digest,
        )? {
            treader = t;
            target_digest = d;
        }
    }
    report.verification.source_digest = source_digest.hex();
    report.verification.destination_digest = target_digest.hex();
    report.verification.verified_bytes = src_size;
    let tsize = treader.virtual_size();
    let tail_ok =
        tsize == src_size || (tsize > src_size && tail_is_zero(&treader, src_size, tsize));
    if report.verification.source_digest != report.verification.destination_digest || !tail_ok {
        let off = if tail_ok {
            first_difference(&source_digest, &target_digest, &cp.reader, &treader).unwrap_or(0)
        } else {
            src_size.min(tsize)
        };
        report.verification.result = "mismatch".into();
        report.verification.first_mismatch_offset = Some(off);
        return Err(format!("verification failed: target differs from source at guest offset {off:#x} (sizes {src_size} vs {tsize}); the target was removed"));
    }
    report.verification.result = "match".into();
    Ok(())
}

/// Whether the target's bytes past the source's size (at most 1 MiB) read as zeroes.
fn tail_is_zero(r: &ImageReader, from: u64, to: u64) -> bool {
    let Ok(len) = usize::try_from((to - from).min(1 << 20)) else {
        return false;
    };
    let mut buf = vec![0u8; len];
    to - from <= 1 << 20 && r.read_at(&mut buf, from).is_ok() && vmshift_copy::zero::is_zero(&buf)
}
