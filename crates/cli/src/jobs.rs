//! `vmshift jobs` and `vmshift status JOB`: what the journal records, read-only.

use anyhow::{anyhow, Result};
use vmshift_core::format_bytes;
use vmshift_journal::{DeliveryRecord, JobRecord, ProgressRecord};
use vmshift_runner::journal::{job_json, read_journal, running_pid, shown_status};
use vmshift_runner::ExitCode;

fn progress(j: &JobRecord, now: Option<&ProgressRecord>) -> String {
    if j.status == "succeeded" {
        return "100%".into();
    }
    // A running job's own latest sample (live jobs too), as its process recorded it.
    if let Some(p) = now.filter(|p| p.total_bytes > 0 && running_pid(&j.id).is_some()) {
        return format!("{}%", p.done_bytes.min(p.total_bytes) * 100 / p.total_bytes);
    }
    // Live jobs journal no chunks (QEMU's mirror tracks its own progress).
    if j.total_bytes == 0 || j.kind != "offline" {
        return "-".into();
    }
    let pct = j.done_bytes.min(j.total_bytes) * 100 / j.total_bytes;
    format!("{pct}%")
}

/// One notification of a job: target, event, state, attempts, last status or error.
fn delivery_line(d: &DeliveryRecord) -> String {
    let mut line = format!(
        "{} {} {} ({} attempt{})",
        d.target,
        d.event,
        d.state,
        d.attempts,
        if d.attempts == 1 { "" } else { "s" }
    );
    match (d.last_status, &d.last_error) {
        (_, Some(e)) => line.push_str(&format!(": {e}")),
        (Some(s), None) if d.target == "command" => line.push_str(&format!(": exit status {s}")),
        (Some(s), None) => line.push_str(&format!(": HTTP {s}")),
        (None, None) => {}
    }
    line
}

/// Which jobs `vmshift jobs` lists.
pub struct Filter {
    all: bool,
    status: Option<String>,
    /// RFC 3339 UTC: jobs created at or after it.
    since: Option<String>,
}

impl Filter {
    /// `--all`, `--status S`, `--since AGE|TIME`.
    ///
    /// # Errors
    /// `since` is neither an age (30m, 12h, 7d) nor an RFC 3339 time.
    pub fn new(all: bool, status: Option<String>, since: Option<&str>) -> Result<Filter> {
        if let Some(s) = status.as_deref() {
            if !vmshift_core::job::STATUS_NAMES.contains(&s) {
                return Err(anyhow!(
                    "--status {s:?}: a job is one of {}",
                    vmshift_core::job::STATUS_NAMES.join(", ")
                ));
            }
        }
        let since = since
            .map(|s| {
                if let Ok(age) = crate::cli::parse_age(s) {
                    let age = chrono::Duration::from_std(age).unwrap_or(chrono::Duration::MAX);
                    let t = chrono::Utc::now()
                        .checked_sub_signed(age)
                        .unwrap_or(chrono::DateTime::<chrono::Utc>::MIN_UTC);
                    Ok(t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
                } else {
                    chrono::DateTime::parse_from_rfc3339(s)
                        .map(|t| {
                            t.with_timezone(&chrono::Utc)
                                .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
                        })
                        .map_err(|_| {
                            anyhow!("--since {s:?}: give an age (30m, 12h, 7d) or an RFC 3339 time (2026-12-01T00:00:00Z)")
                        })
                }
            })
            .transpose()?;
        Ok(Filter { all, status, since })
    }

    fn keeps(&self, j: &JobRecord) -> bool {
        let shown = shown_status(j);
        let by_status = match &self.status {
            Some(s) => *s == shown,
            // Refused jobs did nothing: listed with --all or when asked for by status.
            None => self.all || shown != "refused",
        };
        by_status && self.since.as_ref().is_none_or(|t| j.created_at >= *t)
    }
}

/// `vmshift jobs [--all] [--status S] [--since T] [--json]`.
///
/// # Errors
/// A corrupt journal (named) when no job at all can be read.
pub fn run_jobs(filter: &Filter, json_out: bool) -> Result<ExitCode> {
    let Some(j) = read_journal()? else {
        if json_out {
            println!("[]");
        } else {
            println!("no jobs yet");
        }
        return Ok(0);
    };
    let (mut jobs, problems) = j.jobs()?;
    jobs.retain(|job| filter.keeps(job));
    let damaged = j.integrity_check().err();
    if json_out {
        let v: Vec<_> = jobs.iter().map(|job| job_json(job, &j)).collect();
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        println!(
            "{:<36}  {:<7}  {:<11}  {:>8}  {:<24}  SOURCE → DESTINATION",
            "JOB", "KIND", "STATUS", "PROGRESS", "STARTED"
        );
        for job in &jobs {
            println!(
                "{:<36}  {:<7}  {:<11}  {:>8}  {:<24}  {} → {}",
                job.id,
                job.kind,
                shown_status(job),
                progress(job, j.progress(&job.id).ok().flatten().as_ref()),
                job.created_at,
                job.source,
                job.destination
            );
        }
    }
    for p in &problems {
        eprintln!("vmshift: warning: {p}");
    }
    if let Some(e) = &damaged {
        eprintln!("vmshift: warning: {e}");
    }
    Ok(if problems.is_empty() && damaged.is_none() {
        0
    } else {
        1
    })
}

/// `vmshift status JOB [--json]`.
///
/// # Errors
/// Unknown job, ambiguous prefix or an unreadable journal, named.
pub fn run_status(id: &str, json_out: bool) -> Result<ExitCode> {
    let j = read_journal()?.ok_or_else(|| {
        anyhow!("no job {id}: the journal does not exist yet (no job has run with this state directory)")
    })?;
    let job = vmshift_runner::journal::settled(&j, j.job(id)?);
    let phases = j.phases(&job.id)?;
    // A journal written before bandwidth changes existed has no such table: none then.
    let changes = j.bwlimit_changes(&job.id).unwrap_or_default();
    // Nor deliveries before notifications existed (schema 3).
    let deliveries = j.deliveries(&job.id).unwrap_or_default();
    let now = j
        .progress(&job.id)
        .ok()
        .flatten()
        .filter(|_| running_pid(&job.id).is_some());
    if json_out {
        let mut v = job_json(&job, &j);
        v["options"] = job.options.clone();
        v["phases"] = serde_json::to_value(&phases)?;
        v["bwlimit_changes"] = serde_json::to_value(&changes)?;
        v["deliveries"] = serde_json::to_value(&deliveries)?;
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(0);
    }
    println!("job          {}", job.id);
    println!("kind         {}", job.kind);
    println!("status       {}", shown_status(&job));
    if let Some(pid) = running_pid(&job.id) {
        println!("process      {pid}");
    }
    println!("source       {}", job.source);
    println!("destination  {}", job.destination);
    if job.kind == "offline" {
        println!(
            "progress     {} of {} durable ({})",
            format_bytes(job.done_bytes),
            format_bytes(job.total_bytes),
            progress(&job, None)
        );
    } else if job.kind == "domain" && now.is_none() {
        // Shut off, each disk's offline job records its own chunks; live, QEMU's mirror.
        let disks: Vec<String> = job.facts["children"]
            .as_object()
            .map(|m| {
                m.iter()
                    .map(|(d, id)| format!("{d}: job {}", id.as_str().unwrap_or("?")))
                    .collect()
            })
            .unwrap_or_default();
        println!(
            "progress     {} ({} allocated{})",
            progress(&job, None),
            format_bytes(job.total_bytes),
            if disks.is_empty() {
                String::new()
            } else {
                format!("; per disk: {}", disks.join(", "))
            }
        );
    } else if now.is_none() {
        println!(
            "progress     {} (QEMU's mirror of {}: the journal records its phases, not its bytes)",
            progress(&job, None),
            format_bytes(job.total_bytes)
        );
    }
    if let Some(p) = &now {
        println!(
            "now          {} {} of {} ({}), {}/s, ETA {} (at {})",
            p.phase,
            format_bytes(p.done_bytes),
            format_bytes(p.total_bytes),
            progress(&job, Some(p)),
            format_bytes(p.rate_bytes_per_sec),
            p.eta_ms.map_or_else(
                || "unknown".to_string(),
                |e| format!("{}s", e.div_ceil(1000))
            ),
            p.updated_at
        );
    }
    if !job.partial.is_empty() {
        println!("partial      {} ({})", job.partial, job.partial_state);
    }
    println!("runs         {}", job.runs);
    println!("started      {}", job.created_at);
    println!("updated      {}", job.updated_at);
    if let Some(e) = &job.error {
        println!("error        {e}");
    }
    if let Some(r) = &job.report {
        println!("report       {r}");
    }
    for c in &changes {
        println!(
            "bwlimit      {} asked {}, {}",
            vmshift_core::format_limit(c.bytes_per_sec),
            c.requested_at,
            c.applied_at
                .as_deref()
                .map_or("not applied yet".to_string(), |a| format!("applied {a}"))
        );
    }
    for d in &deliveries {
        println!("notify       {}", delivery_line(d));
    }
    println!("phases:");
    for p in &phases {
        println!(
            "  run {} {:<10} {}  {}",
            p.run,
            p.phase,
            p.started_at,
            match p.duration_ms {
                Some(d) => format!("{d} ms"),
                None if p.run < job.runs || running_pid(&job.id).is_none() => {
                    "(interrupted)".to_string()
                }
                None => "(running)".to_string(),
            }
        );
    }
    Ok(0)
}
