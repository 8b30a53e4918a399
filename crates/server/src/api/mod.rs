//! The REST API under `/api/v1`: JSON in and out, errors as problem details, tokens checked
//! by [`require_token`]. Handlers only translate: a body becomes a `JobRequest`, the
//! runner does the work on its own threads.

pub mod check;
pub mod datastores;
pub mod events;
pub mod jobs;
pub mod openapi;

use crate::auth::{Role, Tokens};
use crate::gate::Gate;
use crate::metrics::Metrics;
use crate::problem::Problem;
use crate::tracked::Tracker;
use axum::extract::rejection::JsonRejection;
use axum::extract::{FromRequest, Request, State};
use axum::http::{header, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use std::sync::Arc;
use vmshift_runner::Runner;

/// What every handler shares.
pub struct AppState {
    /// The job runner.
    pub runner: Runner,
    /// Jobs this service runs.
    pub tracker: Arc<Tracker>,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// The datastore roots.
    pub gate: Gate,
    /// Accepted tokens.
    pub tokens: Tokens,
}

/// The shared state as handlers take it.
pub type Shared = State<Arc<AppState>>;

/// Checks the bearer token of every `/api/v1` call but `openapi.json`; a `read` token on a
/// mutating method (any but GET, HEAD, OPTIONS and `POST /check`) gets 403; mutating calls
/// are logged with the token's name.
pub async fn require_token(State(s): Shared, mut req: Request, next: Next) -> Response {
    let path = full_path(&req);
    if path == "/api/v1/openapi.json" {
        return next.run(req).await;
    }
    let token = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            // The scheme name is case-insensitive (RFC 9110 §11.1).
            let (scheme, token) = v.split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then_some(token)
        })
        .map(str::trim);
    let Some(caller) = token.and_then(|t| s.tokens.caller(t)) else {
        let mut r = Problem::new(
            StatusCode::UNAUTHORIZED,
            if token.is_some() {
                "the bearer token is not known: check the tokens file"
            } else {
                "no bearer token: send Authorization: Bearer TOKEN (a token from the tokens file)"
            },
        )
        .into_response();
        r.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            header::HeaderValue::from_static("Bearer realm=\"vmshift\""),
        );
        return r;
    };
    // The check writes nothing (an offline one at most a probe file it removes): read
    // tokens may see plans too.
    let mutating = !matches!(*req.method(), Method::GET | Method::HEAD | Method::OPTIONS)
        && path != "/api/v1/check";
    if mutating && caller.role != Role::Operate {
        return Problem::forbidden(format!(
            "token {} has the read role: {} {} needs an operate token",
            caller.name,
            req.method(),
            path
        ))
        .into_response();
    }
    let (method, name) = (req.method().clone(), caller.name.clone());
    req.extensions_mut().insert(caller);
    let resp = next.run(req).await;
    // A call that reached a handler, with its answer (a 404 or 405 touched nothing).
    let status = resp.status();
    if mutating && status != StatusCode::NOT_FOUND && status != StatusCode::METHOD_NOT_ALLOWED {
        eprintln!(
            "vmshift serve: {method} {path} by token {name}: {}",
            status.as_u16()
        );
    }
    resp
}

/// A JSON body whose rejections are problem details with the right status (400 bad JSON
/// or unknown field, 413 too large, 415 not JSON).
pub struct ApiJson<T>(pub T);

impl<S, T> FromRequest<S> for ApiJson<T>
where
    axum::Json<T>: FromRequest<S, Rejection = JsonRejection>,
    S: Send + Sync,
{
    type Rejection = Problem;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        match axum::Json::<T>::from_request(req, state).await {
            Ok(axum::Json(v)) => Ok(ApiJson(v)),
            Err(e) => {
                let status = e.status();
                let detail = match &e {
                    JsonRejection::MissingJsonContentType(_) => {
                        "the body must be JSON: send Content-Type: application/json".to_string()
                    }
                    _ if status == StatusCode::PAYLOAD_TOO_LARGE => {
                        "the body is too large (max_body_bytes in the configuration)".to_string()
                    }
                    _ => format!("the body is not a valid request: {}", e.body_text()),
                };
                Err(Problem::new(status, detail))
            }
        }
    }
}

/// Runs blocking runner work off the async executor.
pub async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, Problem> + Send + 'static,
) -> Result<T, Problem> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Problem::internal(format!("a worker thread failed: {e}")))?
}

/// 404 for unknown API paths, as a problem.
pub async fn not_found(req: Request) -> Problem {
    Problem::not_found(format!(
        "no such endpoint: {} {} (see /api/v1/openapi.json)",
        req.method(),
        full_path(&req)
    ))
}

/// 405 for a known API path with another method, as a problem.
pub async fn not_allowed(req: Request) -> Problem {
    Problem::new(
        StatusCode::METHOD_NOT_ALLOWED,
        format!(
            "{} is not allowed on {} (see /api/v1/openapi.json)",
            req.method(),
            full_path(&req)
        ),
    )
}

/// The request's path as the client sent it (a nested router sees it without `/api/v1`).
fn full_path(req: &Request) -> String {
    req.extensions()
        .get::<axum::extract::OriginalUri>()
        .map(|u| u.0.path().to_string())
        .unwrap_or_else(|| req.uri().path().to_string())
}
