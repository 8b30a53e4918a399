//! The offline job after its check: copy (with checkpoints), then [`super::verify`], then
//! [`super::cutover`]. Each step returns `Err(message)` for a failure that ends the job.

use super::check::Checked;
use super::job::{copy_chunk, Resuming};
use crate::files::partial_path;
use crate::handle::JobCtx;
use crate::journal::{Checkpointer, JournalLink};
use crate::request::{IoMode, OfflineRequest, VerifyMode};
use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;
use vmshift_copy::{
    copy_image_with, CopyError, CopyHooks, CopyOptions, CopyStats, Counters, ReadBack,
};
use vmshift_core::plan::TargetFormat;
use vmshift_core::report::Report;
use vmshift_core::Phase;
use vmshift_image::chain::{Chain, LayerFormat};
use vmshift_image::{create_target, ImageReader, TargetImage, TargetSpec};

/// One run of an offline job past its check.
pub(crate) struct Run<'a> {
    /// The request.
    pub args: &'a OfflineRequest,
    /// What the check found (its plan says go).
    pub c: &'a Checked,
    /// Events and controls.
    pub ctx: &'a JobCtx,
    /// The journal, unless `--no-journal`.
    pub link: Option<&'a JournalLink>,
    /// The resume this run continues.
    pub resuming: Option<&'a Resuming>,
}

/// Removes the partial target unless disarmed (success) or told to keep it for resume.
pub(crate) struct PartialGuard {
    pub path: std::path::PathBuf,
    pub armed: bool,
    pub keep: bool,
}

impl Drop for PartialGuard {
    fn drop(&mut self) {
        if self.armed && !self.keep {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// What the copy engine works on.
struct Engine<'e> {
    reader: &'e ImageReader,
    extents: &'e [vmshift_core::Extent],
    target: &'e TargetImage,
    opts: &'e CopyOptions,
    hooks: &'e CopyHooks<'e>,
    counters: &'e Arc<Counters>,
}

/// What the copy step leaves for verification and cut-over.
pub(crate) struct Copied<'a> {
    /// The source chain.
    pub chain: &'a Chain,
    /// The source, opened.
    pub reader: ImageReader,
    /// The partial target's spec.
    pub spec: TargetSpec,
    /// Removes the partial target on failure.
    pub guard: PartialGuard,
    /// The copy's result.
    pub stats: CopyStats,
    /// The source's block status.
    pub extents: Vec<vmshift_core::Extent>,
    /// Chunks read back while copying, when verifying during the copy.
    pub read_back: Option<ReadBack>,
    /// Shared byte counters (progress).
    pub counters: Arc<Counters>,
    /// Copy workers.
    pub threads: usize,
    /// The read lock on the source, held until the job ends.
    pub _source_lock: Option<std::fs::File>,
}

impl Run<'_> {
    /// Copy, verify, cut over, update references, clean up.
    pub fn execute(
        &self,
        clock: &mut crate::phases::PhaseClock,
        report: &mut Report,
    ) -> Result<(), String> {
        let chain = self.c.chain.as_ref().ok_or("no chain")?;
        if self.c.plan.crash_consistent {
            report.consistency = "crash_consistent".into();
            report.warnings.push(
                "the source was in use by a running VM: the copy is only crash-consistent".into(),
            );
        }
        // Stamp the source before anything is read (and before the copy phase is announced):
        // any write after this point makes the job fail instead of claiming a verified copy.
        let stamp = crate::safety::SourceStamp::take(chain);
        clock.enter(Phase::Copy);
        let mut copied = self.copy(chain, report)?;
        if !self.args.no_verify {
            clock.enter(Phase::Verify);
        }
        super::verify::verify(self, &mut copied, report)?;
        if let Some(changed) = stamp.changed_since(chain) {
            report.verification.result = "source_changed".into();
            return Err(format!(
                "{} changed while it was copied (size or modification time): something wrote to it without taking QEMU's image lock, so the copy is not proven identical; the target was removed",
                changed.display()
            ));
        }
        // Verified: now the target may have the source's mode, owner, group and xattrs.
        report.warnings.extend(vmshift_image::attrs::copy_attrs(
            &chain.top().path,
            &copied.spec.path,
        ));
        super::cutover::finish(self, clock, copied, report)
    }

    fn copy<'c>(&self, chain: &'c Chain, report: &mut Report) -> Result<Copied<'c>, String> {
        let (args, plan) = (self.args, &self.c.plan);
        let shallow = plan.backing == "kept";
        let threads = args.threads.unwrap_or_else(vmshift_copy::default_threads);
        let source_lock = if plan.crash_consistent {
            None
        } else {
            Some(
                vmshift_image::lock::hold_for_reading(&chain.top().path).map_err(|e| {
                    format!(
                        "{} could not be locked for reading ({e}): a VM may have started using it",
                        chain.top().path.display()
                    )
                })?,
            )
        };
        let reader = ImageReader::open(chain).map_err(|e| e.to_string())?;
        let extents = reader
            .extents(0, reader.virtual_size(), shallow)
            .map_err(|e| format!("{}: block status failed: {e}", chain.top().path.display()))?;
        let partial = partial_path(&self.c.target_path);
        let reuse = self.resuming.is_some_and(|r| r.reuse_partial);
        if partial.exists() && !reuse {
            return Err(format!("{} exists: another vmshift job may be writing it, or an interrupted one left it (remove it if no job runs)", partial.display()));
        }
        let spec = self.target_spec(chain, report)?;
        let mut guard = PartialGuard {
            path: partial.clone(),
            armed: true,
            keep: false,
        };
        let target = if reuse {
            open_partial(&spec).map_err(|e| e.to_string())?
        } else {
            create_target(&spec).map_err(|e| e.to_string())?
        };
        let skip: HashSet<u64> = self
            .resuming
            .map(|r| r.chunks.iter().map(|ch| ch.index).collect())
            .unwrap_or_default();
        report.bytes_reused = self
            .resuming
            .map_or(0, |r| r.chunks.iter().map(|ch| ch.bytes).sum());
        let counters = Arc::new(Counters::default());
        let opts = self.copy_options(&spec, threads, skip.is_empty());
        if let Some(l) = self.link {
            let total = progress_total(&extents, opts.chunk, reader.virtual_size());
            l.note(|j, id| j.begin_copy(id, total));
        }
        let copy_started = Instant::now();
        let checkpointer = self.link.map(|l| Checkpointer::new(l, &target, &partial));
        let on_chunk = |d| match &checkpointer {
            Some(cp) => cp.chunk_done(d),
            None => Ok(()),
        };
        // Verify during the copy when the copy hashes the source (see vmshift_copy::readback).
        let read_back = if opts.hash && args.verify == VerifyMode::DuringCopy {
            let r = target
                .reader(spec.virtual_size)
                .map_err(|e| format!("{}: cannot be read back: {e}", partial.display()))?;
            Some(ReadBack::new(
                r,
                reader.virtual_size(),
                opts.chunk,
                spec.direct,
            ))
        } else {
            None
        };
        let hooks = CopyHooks {
            skip: Some(&skip),
            // Without a journal nothing needs per-chunk digests: no hook, no hashing.
            on_chunk: checkpointer
                .as_ref()
                .map(|_| &on_chunk as &(dyn Fn(_) -> _ + Sync)),
            chunks_not_zero: reuse,
            read_back: read_back.as_ref(),
            // Follows `vmshift set JOB --bwlimit` and JobControl::set_bwlimit.
            rate: Some(&self.ctx.control.rate),
        };
        let result = self.run_engine(
            Engine {
                reader: &reader,
                extents: &extents,
                target: &target,
                opts: &opts,
                hooks: &hooks,
                counters: &counters,
            },
            checkpointer.as_ref(),
        );
        let result = result.and_then(|s| match &checkpointer {
            Some(cp) => cp.flush().map(|()| s),
            None => Ok(s),
        });
        let stats = match result {
            Ok(s) => s,
            Err(e) => {
                // Chunks finished before the failure are real work: make them durable and
                // record them (best effort: after ENOSPC or an fsync error this may fail too).
                if let Some(cp) = &checkpointer {
                    if let Err(ce) = cp.flush() {
                        tracing::warn!("last checkpoint after the failure not recorded: {ce}");
                    }
                }
                guard.keep = self.keep_partial_after(&e);
                report.bytes_copied = counters.copied.load(Ordering::Relaxed);
                report.bytes_skipped_zero = counters.skipped.load(Ordering::Relaxed);
                report.data_bytes = counters.done.load(Ordering::Relaxed);
                // What this run wrote before it stopped, over its time.
                report.throughput_bytes_per_sec = vmshift_core::rate_bytes_per_sec(
                    report.bytes_copied,
                    copy_started.elapsed().as_secs_f64().max(1e-3),
                );
                return Err(failure_message(
                    &e,
                    guard.keep,
                    self.link.is_some(),
                    self.ctx.control.is_interrupted(),
                ));
            }
        };
        target
            .sync()
            .map_err(|e| format!("{}: fsync failed: {e}", partial.display()))?;
        drop(target);
        let secs = copy_started.elapsed().as_secs_f64().max(1e-3);
        report.bytes_copied = stats.bytes_copied;
        report.bytes_skipped_zero = stats.bytes_skipped_zero;
        report.data_bytes = stats.bytes_processed;
        report.throughput_bytes_per_sec =
            vmshift_core::rate_bytes_per_sec(stats.bytes_processed, secs);
        Ok(Copied {
            chain,
            reader,
            spec,
            guard,
            stats,
            extents,
            read_back,
            counters,
            threads,
            _source_lock: source_lock,
        })
    }

    /// Runs the copy engine with the checkpointer on a thread beside it, and progress
    /// events while it runs.
    fn run_engine(
        &self,
        e: Engine<'_>,
        checkpointer: Option<&Checkpointer<'_>>,
    ) -> Result<CopyStats, CopyError> {
        let _p = self.ctx.em.progress("copy", e.counters.clone());
        let stop = AtomicBool::new(false);
        std::thread::scope(|s| {
            if let Some(cp) = checkpointer {
                let stop = &stop;
                s.spawn(move || cp.run(stop));
            }
            let cancel = &self.ctx.control.cancel;
            let r = copy_image_with(
                e.reader, e.extents, e.target, e.opts, e.hooks, cancel, e.counters,
            );
            stop.store(true, Ordering::Relaxed);
            r
        })
    }

    /// The engine's options for this run: a resume keeps its journaled chunk size.
    fn copy_options(&self, spec: &TargetSpec, threads: usize, fresh: bool) -> CopyOptions {
        let args = self.args;
        let shallow = self.c.plan.backing == "kept";
        CopyOptions {
            threads,
            chunk: self
                .resuming
                .map(|r| r.chunk_size)
                .filter(|&c| c > 0)
                .unwrap_or_else(|| copy_chunk(args.bwlimit.unwrap_or(0), spec.direct)),
            bwlimit: args.bwlimit.unwrap_or(0),
            zero_granularity: match spec.format {
                LayerFormat::Raw => 4096,
                LayerFormat::Qcow2 => usize::try_from(spec.cluster_size)
                    .unwrap_or(65536)
                    .max(4096),
            },
            target_is_zero: true,
            shallow,
            hash: !args.no_verify && !shallow && fresh,
            direct: spec.direct,
        }
    }

    /// What becomes of the partial target after a failed copy (see README, "Resume"): kept
    /// for resume after read errors and other I/O failures when the journal records it;
    /// removed after cancellation (unless asked to keep it), when the destination ran out of
    /// space (it would keep the datastore full), or when nothing records it.
    fn keep_partial_after(&self, e: &CopyError) -> bool {
        let Some(l) = self.link else {
            return false;
        };
        let cancel_keep = l
            .journal
            .lock()
            .ok()
            .and_then(|j| j.job(&l.id).ok())
            .is_some_and(|job| job.cancel_request.as_deref() == Some("keep"));
        self.args.keep_partial
            || match e {
                CopyError::Cancelled => cancel_keep || self.ctx.control.is_interrupted(),
                e if e.is_no_space() => false,
                _ => true,
            }
    }

    /// The partial target to create: format, size, cluster size, backing reference.
    fn target_spec(&self, chain: &Chain, report: &mut Report) -> Result<TargetSpec, String> {
        let plan = &self.c.plan;
        let format = match plan.target_format {
            TargetFormat::Raw => LayerFormat::Raw,
            TargetFormat::Qcow2 => LayerFormat::Qcow2,
        };
        let backing = if plan.backing == "kept" {
            let below = Chain {
                layers: chain.backing().to_vec(),
            };
            let first = &below.layers[0];
            let name = std::fs::canonicalize(&first.path)
                .map_err(|e| format!("{}: {e}", first.path.display()))?;
            report.destination.backing_chain = below
                .layers
                .iter()
                .map(|l| crate::files::abs(&l.path))
                .collect();
            report.warnings.push(format!(
                "the target still depends on its backing file {} (kept in place): do not move or delete it",
                name.display()
            ));
            Some((name.display().to_string(), first.format, below))
        } else {
            None
        };
        let spec = TargetSpec {
            path: partial_path(&self.c.target_path),
            format,
            virtual_size: plan.target_virtual_size,
            cluster_size: chain
                .top()
                .header
                .as_ref()
                .map_or(65536, |h| h.cluster_size()),
            preallocate: plan.preallocate,
            backing,
            direct: self.args.io == IoMode::Direct,
            qcow2: chain.top().header.as_ref().map_or_else(
                vmshift_image::target::Qcow2Options::default,
                vmshift_image::target::Qcow2Options::from_header,
            ),
        };
        if spec.direct {
            report.notes.push(format!(
                "direct I/O (--io direct): {} used O_DIRECT where the file systems allow it, bypassing the page cache (a tmpfs lives in memory either way)",
                if self.args.no_verify {
                    "source reads and target writes"
                } else {
                    "source reads, target writes and the verification reads"
                }
            ));
        }
        Ok(spec)
    }
}

/// Guest bytes of all data chunks, reused ones included: the job's progress total.
fn progress_total(extents: &[vmshift_core::Extent], chunk: u64, size: u64) -> u64 {
    let units = vmshift_copy::plan::plan_units(extents, chunk, false);
    vmshift_copy::plan::data_bytes(extents, &units, chunk, size)
}

/// The copy's failure as one line: what happened, the partial target and what to do next.
/// A stop says only how it came (the job's status already says interrupted or cancelled).
fn failure_message(e: &CopyError, kept: bool, journaled: bool, interrupted: bool) -> String {
    match (e, kept) {
        (CopyError::Cancelled, true) if interrupted => {
            "stopped at a chunk boundary by Ctrl-C or SIGTERM; the source is untouched and the partial target was kept".into()
        }
        (CopyError::Cancelled, true) => {
            "stopped at a chunk boundary (vmshift cancel or a signal); the source is untouched and the partial target was kept".into()
        }
        (CopyError::Cancelled, false) => {
            "stopped at a chunk boundary (vmshift cancel or a signal); the source is untouched and the partial target was removed".into()
        }
        _ => format!("{e}{}", failure_hint(e, kept, journaled)),
    }
}

/// What a copy error's message adds about the partial target and what to do next.
fn failure_hint(e: &CopyError, kept: bool, journaled: bool) -> &'static str {
    match (e, kept) {
        // No journal (--no-journal): nothing to resume.
        (e, false) if e.is_no_space() && !journaled => {
            " (the destination ran out of space; the partial target was removed: free space, then migrate again)"
        }
        (e, false) if e.is_no_space() => {
            " (the destination ran out of space; the partial target was removed: free space, then `vmshift resume` copies it again, or migrate with --keep-partial to keep it)"
        }
        (e, true) if e.is_no_space() => {
            " (the destination ran out of space; the partial target was kept: free space, then `vmshift resume`)"
        }
        (_, true) => " (the partial target was kept: fix the cause, then `vmshift resume`)",
        (_, false) => "",
    }
}

/// Opens an existing partial target written by an earlier run of the job.
pub(crate) fn open_partial(spec: &TargetSpec) -> Result<TargetImage, String> {
    match spec.format {
        LayerFormat::Raw => {
            let file = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open(&spec.path)
                .map_err(|e| {
                    format!(
                        "{}: cannot reopen the partial target: {e}",
                        spec.path.display()
                    )
                })?;
            let direct = if spec.direct {
                vmshift_image::target::open_direct_writer(&file)
            } else {
                None
            };
            Ok(TargetImage::Raw {
                file,
                thick: spec.preallocate,
                direct,
            })
        }
        LayerFormat::Qcow2 => vmshift_image::target::open_qcow2_target(
            &spec.path,
            spec.backing.as_ref().map(|b| &b.2),
            spec.direct,
        )
        .map_err(|e| e.to_string()),
    }
}
