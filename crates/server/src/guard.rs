//! What a request may ask of the service: every path it names, and every image the check
//! finds it would touch, lies in a datastore ([`crate::gate`]); jobs are journaled.

use crate::gate::Gate;
use crate::problem::Problem;
use std::path::Path;
use vmshift_runner::{JobRequest, Plan};

/// Checks the paths the request names.
///
/// # Errors
/// 403 for a path outside the datastores; 400 for `no_journal` (a job the service runs must
/// be followable, cancellable and resumable).
pub fn allowed(gate: &Gate, r: &JobRequest) -> Result<(), Problem> {
    let check = |what: &str, p: &Path| gate.check(what, p).map(|_| ()).map_err(Problem::forbidden);
    let (no_journal, report) = match r {
        JobRequest::Offline(o) => {
            check("source", &o.source)?;
            check("to", &o.to)?;
            (o.no_journal, &o.report)
        }
        JobRequest::Live(l) => {
            check("to", &l.to)?;
            (l.no_journal, &l.report)
        }
        JobRequest::Domain(d) => {
            if let Some(to) = &d.to {
                check("to", to)?;
            }
            // A pool's directory is where the disks go: it must be a datastore's too. A
            // pool libvirt cannot show is refused by the check itself.
            if let Some(pool) = &d.pool {
                if let Ok(dir) = vmshift_runner::domain::pool_dir(d.connect.as_deref(), pool) {
                    check(&format!("pool {pool}"), &dir)?;
                }
            }
            (d.no_journal, &d.report)
        }
    };
    if let Some(p) = report {
        check("report", p)?;
    }
    if no_journal {
        return Err(Problem::bad_request(
            "no_journal: jobs the service runs are always journaled (so they can be followed, cancelled and resumed); drop the field",
        ));
    }
    if let JobRequest::Domain(d) = r {
        domain_disks(gate, d)?;
    }
    Ok(())
}

/// Checks the images a plan would read or write: every layer of an offline source's backing
/// chain (an image may name a backing file anywhere), the target, and each disk a live
/// plan would mirror with its target.
///
/// # Errors
/// 403 for an image outside the datastores.
pub fn allowed_plan(gate: &Gate, plan: &Plan) -> Result<(), Problem> {
    if let Plan::Offline(c) = plan {
        for layer in c.chain.iter().flat_map(|ch| ch.layers.iter()).skip(1) {
            gate.check("backing file", &layer.path)
                .map_err(Problem::forbidden)?;
        }
        gate.check("target", &c.target_path)
            .map_err(Problem::forbidden)?;
    }
    if let Plan::Live(p) = plan {
        for d in &p.disks {
            gate.check(&format!("disk {}", d.disk.device), Path::new(&d.disk.file))
                .map_err(Problem::forbidden)?;
            gate.check(&format!("target of {}", d.disk.device), &d.target)
                .map_err(Problem::forbidden)?;
        }
    }
    Ok(())
}

/// The domain's file-backed disks that would move must lie in the datastores too.
fn domain_disks(gate: &Gate, d: &vmshift_runner::DomainRequest) -> Result<(), Problem> {
    // A domain libvirt cannot show is refused by the check itself, with libvirt's words.
    let Ok((info, _)) = vmshift_runner::domain::info(d.connect.as_deref(), &d.domain) else {
        return Ok(());
    };
    for disk in info["disks"].as_array().into_iter().flatten() {
        let (Some(target), Some(path)) = (disk["target"].as_str(), disk["path"].as_str()) else {
            continue;
        };
        let asked = d.disks.is_empty() || d.disks.iter().any(|t| t == target);
        if asked && !disk["readonly"].as_bool().unwrap_or(false) {
            gate.check(&format!("disk {target} of {}", d.domain), Path::new(path))
                .map_err(Problem::forbidden)?;
        }
    }
    Ok(())
}
