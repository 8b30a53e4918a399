//! The offline job's last phases: cut over (rename the verified partial target into place,
//! fsync its directory), references (what still points at the old path), clean up (the
//! source, only when asked and only after verification).

use super::execute::{Copied, Run};
use crate::files::allocated_bytes;
use crate::journal::test_kill_point;
use crate::phases::PhaseClock;
use std::path::Path;
use vmshift_core::report::Report;
use vmshift_core::Phase;

/// Cut over, references and clean up, after a verified copy.
pub(crate) fn finish(
    run: &Run<'_>,
    clock: &mut PhaseClock,
    mut cp: Copied<'_>,
    report: &mut Report,
) -> Result<(), String> {
    let target = &run.c.target_path;
    clock.enter(Phase::Cutover);
    test_kill_point("cutover");
    std::fs::rename(&cp.spec.path, target).map_err(|e| {
        format!(
            "cannot rename {} to {}: {e}",
            cp.spec.path.display(),
            target.display()
        )
    })?;
    cp.guard.armed = false;
    test_kill_point("renamed");
    if let Some(dir) = target.parent() {
        let d = if dir.as_os_str().is_empty() {
            Path::new(".")
        } else {
            dir
        };
        if let Ok(f) = std::fs::File::open(d) {
            let _ = f.sync_all();
        }
    }
    report.destination.allocated_bytes = allocated_bytes(target);

    clock.enter(Phase::References);
    let users = crate::safety::dependants(&cp.chain.top().path);
    report.references.push(match &run.ctx.parent {
        // A domain job's disk: that job rewrites the definition once every disk is verified.
        Some(parent) => format!("the domain's definition is updated by job {parent}"),
        None => format!(
            "point the VM at {} (format {}) instead of {}: e.g. virsh edit DOMAIN and change <source file=...> and <driver type=...>, or the -drive/-blockdev filename of your QEMU command line",
            report.destination.path, report.destination.format, report.source.path
        ),
    });
    for u in &users {
        report.references.push(format!("{} uses the source as its backing file: rebase it onto the new path (qemu-img rebase -u -b {} -F {} {})", u.display(), report.destination.path, report.destination.format, u.display()));
    }

    clock.enter(Phase::Cleanup);
    if run.args.delete_source {
        if !users.is_empty() {
            report.warnings.push(format!(
                "the source was NOT deleted: {} still use it as a backing file",
                crate::safety::names(&users)
            ));
        } else {
            // Through a symlink, delete the image itself, then the link.
            let top = &cp.chain.top().path;
            let real = std::fs::canonicalize(top).unwrap_or_else(|_| top.clone());
            std::fs::remove_file(&real)
                .map_err(|e| format!("copy verified, but the source could not be deleted: {e}"))?;
            if real != *top {
                let _ = std::fs::remove_file(top);
            }
            report.source_deleted = true;
            report
                .notes
                .push(format!("deleted the source {}", real.display()));
        }
    }
    Ok(())
}
