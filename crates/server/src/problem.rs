//! Errors as RFC 9457 problem details (`application/problem+json`): `type`, `title`,
//! `status`, and a `detail` that is the same one line the CLI prints.

use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

/// A problem details object.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Problem {
    /// A URI naming the kind of problem (`about:blank` plus the status, RFC 9457 §4.2.1).
    #[serde(rename = "type")]
    pub kind: String,
    /// The status's reason phrase.
    pub title: String,
    /// The HTTP status.
    pub status: u16,
    /// What went wrong, one line, with a hint.
    pub detail: String,
    /// Extra lines (a refused check's plan).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub lines: Vec<String>,
}

impl Problem {
    /// A problem with `status` and `detail`.
    pub fn new(status: StatusCode, detail: impl Into<String>) -> Problem {
        Problem {
            kind: "about:blank".into(),
            title: status.canonical_reason().unwrap_or("Error").into(),
            status: status.as_u16(),
            detail: detail.into(),
            lines: Vec::new(),
        }
    }

    /// 400.
    pub fn bad_request(detail: impl Into<String>) -> Problem {
        Problem::new(StatusCode::BAD_REQUEST, detail)
    }

    /// 403.
    pub fn forbidden(detail: impl Into<String>) -> Problem {
        Problem::new(StatusCode::FORBIDDEN, detail)
    }

    /// 404.
    pub fn not_found(detail: impl Into<String>) -> Problem {
        Problem::new(StatusCode::NOT_FOUND, detail)
    }

    /// 500.
    pub fn internal(detail: impl Into<String>) -> Problem {
        Problem::new(StatusCode::INTERNAL_SERVER_ERROR, detail)
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let body = serde_json::to_string(&self).unwrap_or_default();
        (
            status,
            [(header::CONTENT_TYPE, "application/problem+json")],
            body,
        )
            .into_response()
    }
}

/// A runner error as a problem: an unknown job is 404, an ambiguous one or a refused request 400, everything else 500.
impl From<vmshift_runner::RunnerError> for Problem {
    fn from(e: vmshift_runner::RunnerError) -> Problem {
        use vmshift_journal::JournalError;
        match &e {
            // In the API's words: neither the service's journal path nor a CLI command.
            vmshift_runner::RunnerError::Journal(JournalError::NoSuchJob { id, .. }) => {
                Problem::not_found(format!(
                    "no job {id}: GET /api/v1/jobs?all=true lists the known jobs"
                ))
            }
            vmshift_runner::RunnerError::Journal(JournalError::Ambiguous { id, count, .. }) => {
                Problem::bad_request(format!(
                    "job id prefix {id} matches {count} jobs: give more characters"
                ))
            }
            vmshift_runner::RunnerError::Refused(_) => Problem::bad_request(e.to_string()),
            _ => Problem::internal(e.to_string()),
        }
    }
}

/// A journal error as a problem (through the runner's mapping).
impl From<vmshift_journal::JournalError> for Problem {
    fn from(e: vmshift_journal::JournalError) -> Problem {
        Problem::from(vmshift_runner::RunnerError::from(e))
    }
}

/// A handler's result.
pub type ApiResult<T> = Result<T, Problem>;
