//! `POST /api/v1/check`: the pre-flight alone, nothing written.

use super::{blocking, ApiJson, Shared};
use crate::problem::ApiResult;
use axum::Json;
use serde::Serialize;
use utoipa::ToSchema;
use vmshift_runner::JobRequest;

/// What the check found.
#[derive(Debug, Serialize, ToSchema)]
pub struct CheckResult {
    /// Whether the job would go ahead.
    pub go: bool,
    /// The plan and every problem, as `vmshift check` prints them.
    pub lines: Vec<String>,
}

/// Checks a request (capacity, formats, locks, permissions) without starting it. A refusal
/// is a 200 with `go: false`; paths outside the datastores are a 403.
#[utoipa::path(post, path = "/api/v1/check", request_body = JobRequest,
    responses((status = 200, description = "The plan", body = CheckResult),
        (status = 400, body = crate::problem::Problem), (status = 403, body = crate::problem::Problem)),
    security(("bearer" = [])))]
pub async fn check(
    axum::extract::State(s): Shared,
    ApiJson(request): ApiJson<JobRequest>,
) -> ApiResult<Json<CheckResult>> {
    blocking(move || {
        let request = s.runner.resolve(&request)?;
        crate::guard::allowed(&s.gate, &request)?;
        let plan = s.runner.check(&request)?;
        crate::guard::allowed_plan(&s.gate, &plan)?;
        Ok(Json(CheckResult {
            go: plan.go(),
            lines: plan.lines(),
        }))
    })
    .await
}
