//! `/api/v1/jobs`: list, start, show, cancel, resume, roll back, change bandwidth.

use super::{blocking, ApiJson, Shared};
use crate::problem::{ApiResult, Problem};
use axum::extract::{Path, Query};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::time::Duration;
use utoipa::{IntoParams, ToSchema};
use vmshift_runner::journal::{job_json, read_journal, shown_status};
use vmshift_runner::{JobEvent, JobHandle, JobRequest};

/// How long a resume or rollback is given to be refused before the call returns.
const EARLY_REFUSAL: Duration = Duration::from_millis(1500);
/// How long a start waits for its job to be recorded in the journal.
const RECORDED: Duration = Duration::from_secs(30);

/// `GET /jobs` filters.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    /// Also list refused jobs (hidden by default, as `vmshift jobs`).
    #[serde(default)]
    pub all: bool,
    /// Only jobs with this status (`running`, `succeeded`, `failed`, `interrupted`, …).
    pub status: Option<String>,
}

/// A started job.
#[derive(Debug, Serialize, ToSchema)]
pub struct Started {
    /// The job id (UUID v7).
    pub job_id: String,
    /// The check's plan, as `vmshift check` prints it (start only).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub plan: Vec<String>,
    /// Where to follow it: the job and its event stream.
    pub links: Value,
}

/// Options of resume and rollback.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RunOptions {
    /// Bandwidth limit, bytes/s (0 = none); default: the job's recorded limit.
    pub bwlimit: Option<u64>,
}

/// Options of cancel.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CancelOptions {
    /// Keep the partial target of an offline job for a later resume.
    #[serde(default)]
    pub keep_partial: bool,
}

/// The change `PATCH /jobs/{id}` makes.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct JobPatch {
    /// New bandwidth limit, bytes/s (0 lifts it).
    pub bwlimit: u64,
}

fn links(id: &str) -> Value {
    json!({"job": format!("/api/v1/jobs/{id}"), "events": format!("/api/v1/jobs/{id}/events")})
}

/// Lists the journal's jobs, newest first; a running job adds its latest progress (`now`).
#[utoipa::path(get, path = "/api/v1/jobs", params(ListQuery),
    responses((status = 200, description = "Jobs, as `vmshift jobs --json`", body = Vec<Object>)),
    security(("bearer" = [])))]
pub async fn list(
    axum::extract::State(s): Shared,
    q: Result<Query<ListQuery>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<Json<Vec<Value>>> {
    let Query(q) = q.map_err(|e| Problem::bad_request(format!("query: {}", e.body_text())))?;
    if let Some(st) = q.status.as_deref() {
        if !vmshift_core::job::STATUS_NAMES.contains(&st) {
            return Err(Problem::bad_request(format!(
                "status {st:?}: a job is one of {}",
                vmshift_core::job::STATUS_NAMES.join(", ")
            )));
        }
    }
    let tracker = s.tracker.clone();
    blocking(move || {
        let Some(j) = read_journal()? else {
            return Ok(Json(Vec::new()));
        };
        let (mut jobs, _) = j.jobs()?;
        jobs.retain(|job| {
            let shown = shown_status(job);
            match &q.status {
                Some(st) => *st == shown,
                None => q.all || shown != "refused",
            }
        });
        jobs.reverse();
        let out = jobs
            .iter()
            .map(|job| {
                let mut v = job_json(job, &j);
                v["status"] = json!(shown_status(job));
                if let Some(t) = tracker.get(&job.id) {
                    v["served"] = json!(true);
                    v["action"] = json!(t.action);
                }
                v
            })
            .collect();
        Ok(Json(out))
    })
    .await
}

/// One job: its journal record, phases, notification deliveries, report (JSON, Markdown and
/// HTML) and, for jobs this service runs, throughput samples and lines for people.
#[utoipa::path(get, path = "/api/v1/jobs/{id}", params(("id" = String, Path, description = "Job id or a unique prefix")),
    responses((status = 200, description = "The job", body = Object), (status = 404, body = Problem)),
    security(("bearer" = [])))]
pub async fn show(
    axum::extract::State(s): Shared,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    let tracker = s.tracker.clone();
    blocking(move || {
        let j = vmshift_runner::journal::open_journal()?;
        let job = j.job(&id).map_err(vmshift_runner::RunnerError::from)?;
        let job = vmshift_runner::journal::settled(&j, job);
        let mut v = job_json(&job, &j);
        v["phases"] = json!(j.phases(&job.id).unwrap_or_default());
        v["deliveries"] = json!(j.deliveries(&job.id).unwrap_or_default());
        v["options"] = job.options.clone();
        v["links"] = links(&job.id);
        if let Some(path) = job.report.as_deref().map(std::path::Path::new) {
            if let Ok(text) = std::fs::read_to_string(path) {
                v["report"] = serde_json::from_str(&text).unwrap_or(Value::Null);
            }
            if let Ok(md) = std::fs::read_to_string(path.with_extension("md")) {
                v["report_html"] = json!(crate::markdown::to_html(&md));
                v["report_markdown"] = json!(md);
            }
        }
        if let Some(t) = tracker.get(&job.id) {
            v["samples"] = json!(t.samples());
            v["lines"] = json!(t.lines());
            v["served"] = json!(true);
        }
        Ok(Json(v))
    })
    .await
}

/// Starts a job: the check runs first; a refusal is a 422 with the plan and nothing is
/// written. Paths must lie in the service's datastores; jobs are always journaled.
#[utoipa::path(post, path = "/api/v1/jobs", request_body = JobRequest,
    responses((status = 201, description = "Started", body = Started),
        (status = 400, body = Problem), (status = 403, body = Problem), (status = 422, description = "The check refused it", body = Problem)),
    security(("bearer" = [])))]
pub async fn start(
    axum::extract::State(s): Shared,
    ApiJson(request): ApiJson<JobRequest>,
) -> ApiResult<Response> {
    let st = s.clone();
    let (id, plan) = blocking(move || {
        let request = st.runner.resolve(&request)?;
        crate::guard::allowed(&st.gate, &request)?;
        let plan = st.runner.check(&request)?;
        crate::guard::allowed_plan(&st.gate, &plan)?;
        let lines = plan.lines();
        if !plan.go() {
            return Err(refused(lines));
        }
        let handle = st.runner.start(request)?;
        let t = st.tracker.track(handle, "start");
        // Answer once the journal has the job, so a GET right after the 201 finds it.
        wait_recorded(&t, RECORDED);
        Ok((t.id.clone(), lines))
    })
    .await?;
    let body = Started {
        links: links(&id),
        job_id: id.clone(),
        plan,
    };
    Ok((
        StatusCode::CREATED,
        [(header::LOCATION, format!("/api/v1/jobs/{id}"))],
        Json(body),
    )
        .into_response())
}

/// Waits up to `timeout` until the journal has the job (after its check) or it ended.
fn wait_recorded(t: &crate::tracked::Tracked, timeout: Duration) {
    let until = std::time::Instant::now() + timeout;
    while t.exit_code().is_none() && std::time::Instant::now() < until {
        let recorded = read_journal()
            .ok()
            .flatten()
            .is_some_and(|j| j.job(&t.id).is_ok());
        if recorded {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A refused check as a 422: the plan's refusal line as the detail, the plan as `lines`.
pub fn refused(lines: Vec<String>) -> Problem {
    let why = lines
        .iter()
        .find_map(|l| l.trim().strip_prefix("refused: "))
        .unwrap_or("the check refused the job (see lines)")
        .to_string();
    let mut p = Problem::new(StatusCode::UNPROCESSABLE_ENTITY, why);
    p.lines = lines;
    p
}

/// Cancels a job running here or in another process, or closes one whose process is gone.
#[utoipa::path(post, path = "/api/v1/jobs/{id}/cancel", params(("id" = String, Path, description = "Job id or a unique prefix")),
    request_body(content = Option<CancelOptions>, description = "Optional"),
    responses((status = 200, description = "Cancelled", body = Object), (status = 404, body = Problem), (status = 409, description = "It cannot be cancelled (finished)", body = Problem)),
    security(("bearer" = [])))]
pub async fn cancel(
    axum::extract::State(s): Shared,
    Path(id): Path<String>,
    body: axum::body::Bytes,
) -> ApiResult<Json<Value>> {
    let keep = optional_json::<CancelOptions>(&body)?.keep_partial;
    blocking(move || {
        // Its result only confirms; what counts is what became of the job.
        let _ = command(s.runner.cancel(&id, keep)?)?;
        // What became of it, as the journal now has it.
        let j = vmshift_runner::journal::open_journal()?;
        let job = j.job(&id)?;
        Ok(Json(json!({
            "job_id": job.id, "status": shown_status(&job),
            "partial": job.partial, "partial_state": job.partial_state,
        })))
    })
    .await
}

/// Changes a running job's bandwidth limit (here or in another process), bytes/s.
#[utoipa::path(patch, path = "/api/v1/jobs/{id}", params(("id" = String, Path, description = "Job id or a unique prefix")),
    request_body = JobPatch,
    responses((status = 200, description = "Applied", body = Object), (status = 404, body = Problem), (status = 409, body = Problem)),
    security(("bearer" = [])))]
pub async fn patch(
    axum::extract::State(s): Shared,
    Path(id): Path<String>,
    ApiJson(p): ApiJson<JobPatch>,
) -> ApiResult<Json<Value>> {
    blocking(move || command(s.runner.set_bwlimit(&id, p.bwlimit)?)).await
}

/// Resumes an interrupted, failed or cancelled job.
#[utoipa::path(post, path = "/api/v1/jobs/{id}/resume", params(("id" = String, Path, description = "Job id or a unique prefix")),
    request_body(content = Option<RunOptions>, description = "Optional"),
    responses((status = 202, description = "Resuming", body = Started), (status = 404, body = Problem), (status = 409, description = "Refused", body = Problem)),
    security(("bearer" = [])))]
pub async fn resume(
    axum::extract::State(s): Shared,
    Path(id): Path<String>,
    body: axum::body::Bytes,
) -> ApiResult<Response> {
    let bw = optional_json::<RunOptions>(&body)?.bwlimit;
    let st = s.clone();
    run_again(
        blocking(move || Ok(st.runner.resume(&id, None, bw)?)).await?,
        &s,
        "resume",
    )
    .await
}

/// Rolls a succeeded job back (offline: deletes the target; live: mirrors the disks back).
#[utoipa::path(post, path = "/api/v1/jobs/{id}/rollback", params(("id" = String, Path, description = "Job id or a unique prefix")),
    request_body(content = Option<RunOptions>, description = "Optional"),
    responses((status = 202, description = "Rolling back", body = Started), (status = 404, body = Problem), (status = 409, description = "Refused", body = Problem)),
    security(("bearer" = [])))]
pub async fn rollback(
    axum::extract::State(s): Shared,
    Path(id): Path<String>,
    body: axum::body::Bytes,
) -> ApiResult<Response> {
    let bw = optional_json::<RunOptions>(&body)?.bwlimit;
    let st = s.clone();
    run_again(
        blocking(move || Ok(st.runner.rollback(&id, bw)?)).await?,
        &s,
        "rollback",
    )
    .await
}

async fn run_again(
    handle: JobHandle,
    s: &std::sync::Arc<super::AppState>,
    action: &'static str,
) -> ApiResult<Response> {
    let t = s.tracker.track(handle, action);
    let t2 = t.clone();
    let early = blocking(move || Ok(t2.wait_for(EARLY_REFUSAL))).await?;
    if early == Some(2) {
        return Err(conflict(&t.lines()));
    }
    let body = Started {
        links: links(&t.id),
        job_id: t.id.clone(),
        plan: Vec::new(),
    };
    Ok((StatusCode::ACCEPTED, Json(body)).into_response())
}

/// Runs a command on a job (cancel, set) to its end: its result object, or a 409 with its
/// refusal line.
fn command(handle: JobHandle) -> ApiResult<Json<Value>> {
    let mut lines = Vec::new();
    let mut result = Value::Null;
    for e in handle.events() {
        match e {
            JobEvent::Log { line } => lines.push(line),
            JobEvent::Result { value } => result = value,
            _ => {}
        }
    }
    let outcome = handle.wait()?;
    if outcome.code != 0 {
        return Err(conflict(&lines));
    }
    Ok(Json(result))
}

/// A 409 from a command's refusal line (`vmshift: cancel refused: …`).
fn conflict(lines: &[String]) -> Problem {
    let line = lines
        .iter()
        .rev()
        .find(|l| l.starts_with("vmshift: "))
        .or(lines.last())
        .map(|l| l.trim_start_matches("vmshift: ").to_string())
        .unwrap_or_else(|| "the job refused the request".into());
    let mut p = Problem::new(StatusCode::CONFLICT, line);
    p.lines = lines.to_vec();
    p
}

/// An optional JSON body: empty means every option at its default.
fn optional_json<T: serde::de::DeserializeOwned + Default>(body: &[u8]) -> ApiResult<T> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    serde_json::from_slice(body)
        .map_err(|e| Problem::bad_request(format!("the body is not a valid request: {e}")))
}
