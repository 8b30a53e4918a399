//! `GET /api/v1/jobs/{id}/events`: Server-Sent Events carrying the same event objects as
//! `vmshift migrate --json` (one per SSE `data:` line, the SSE event name = the object's
//! `event`). A job this service runs streams its own events (a late subscriber first gets
//! the ones so far, with the latest progress sample); a job another process runs (the CLI)
//! is followed through the journal: its phases and progress samples as the journal records
//! them, then its report. The stream ends when the job does.

use super::{blocking, Shared};
use crate::problem::ApiResult;
use axum::extract::Path;
use axum::response::sse::{Event, KeepAlive, KeepAliveStream, Sse};
use futures_util::stream::{self, BoxStream, StreamExt};
use serde_json::{json, Value};
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;
use tokio_stream::wrappers::BroadcastStream;
use vmshift_runner::journal::{open_journal, running_pid};

/// How often a job of another process is looked up in the journal.
const POLL: Duration = Duration::from_millis(500);

type Events = BoxStream<'static, Result<Event, Infallible>>;

fn sse(v: &Value) -> Result<Event, Infallible> {
    let name = v["event"].as_str().unwrap_or("message").to_string();
    Ok(Event::default().event(name).data(v.to_string()))
}

/// The job's events as they happen.
#[utoipa::path(get, path = "/api/v1/jobs/{id}/events", params(("id" = String, Path, description = "Job id or a unique prefix")),
    responses((status = 200, description = "text/event-stream of JobEvent objects", content_type = "text/event-stream", body = vmshift_runner::JobEvent),
        (status = 404, body = crate::problem::Problem)),
    security(("bearer" = [])))]
pub async fn events(
    axum::extract::State(s): Shared,
    Path(id): Path<String>,
) -> ApiResult<Sse<KeepAliveStream<Events>>> {
    let full = blocking(move || {
        Ok(open_journal()?
            .job(&id)
            .map_err(vmshift_runner::RunnerError::from)?
            .id)
    })
    .await?;
    let stream: Events = match s.tracker.get(&full) {
        Some(t) => {
            let (past, rx) = t.subscribe();
            let past = stream::iter(past).map(|v| sse(&v));
            match rx {
                Some(rx) => past
                    .chain(
                        BroadcastStream::new(rx)
                            .filter_map(|r| async move { r.ok().map(|v: Arc<Value>| sse(&v)) }),
                    )
                    .boxed(),
                None => past.boxed(),
            }
        }
        None => from_journal(full),
    };
    Ok(Sse::new(stream).keep_alive(KeepAlive::default()))
}

struct Follow {
    id: String,
    first: bool,
    phases: Vec<(bool, Option<u64>)>,
    progress: Option<String>,
    done: bool,
}

fn from_journal(id: String) -> Events {
    let start = Follow {
        id,
        first: true,
        phases: Vec::new(),
        progress: None,
        done: false,
    };
    stream::unfold(start, |mut f| async move {
        if f.done {
            return None;
        }
        if !f.first {
            tokio::time::sleep(POLL).await;
        }
        let (batch, f) = tokio::task::spawn_blocking(move || {
            let batch = poll(&mut f);
            (batch, f)
        })
        .await
        .ok()?;
        Some((stream::iter(batch.into_iter().map(|v| sse(&v))), f))
    })
    .flatten()
    .boxed()
}

/// New events of a job another process runs, from its journal rows.
fn poll(f: &mut Follow) -> Vec<Value> {
    let mut out = Vec::new();
    let Ok(j) = open_journal() else {
        f.done = true;
        return out;
    };
    let Ok(job) = j.job(&f.id) else {
        f.done = true;
        return out;
    };
    if f.first {
        out.push(json!({"event": "job", "job_id": job.id, "kind": job.kind}));
        f.first = false;
    }
    for (i, p) in j.phases(&job.id).unwrap_or_default().iter().enumerate() {
        let now = (true, p.duration_ms);
        let seen = f.phases.get(i).copied();
        if seen.is_none() {
            out.push(json!({"event": "phase", "phase": p.phase, "state": "started"}));
        }
        if p.duration_ms.is_some() && seen.is_none_or(|s| s.1.is_none()) {
            out.push(json!({"event": "phase", "phase": p.phase, "state": "ended", "duration_ms": p.duration_ms}));
        }
        if i < f.phases.len() {
            f.phases[i] = now;
        } else {
            f.phases.push(now);
        }
    }
    let running = job.status == "running" && running_pid(&job.id).is_some();
    if running {
        if let Ok(Some(p)) = j.progress(&job.id) {
            if f.progress.as_deref() != Some(p.updated_at.as_str()) {
                f.progress = Some(p.updated_at.clone());
                out.push(json!({"event": "progress", "phase": p.phase, "done_bytes": p.done_bytes,
                    "total_bytes": p.total_bytes, "rate_bytes_per_sec": p.rate_bytes_per_sec, "eta_ms": p.eta_ms}));
            }
        }
        return out;
    }
    if let Some(report) = job
        .report
        .as_deref()
        .and_then(|p| std::fs::read_to_string(p).ok())
        .and_then(|t| serde_json::from_str::<Value>(&t).ok())
    {
        out.push(json!({"event": "report", "report": report, "path": job.report}));
    }
    f.done = true;
    out
}
