//! The OpenAPI 3 document at `/api/v1/openapi.json`, generated from the handlers' and the
//! runner's own types (utoipa).

use axum::Json;
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
use utoipa::{Modify, OpenApi};

/// The API description.
#[derive(OpenApi)]
#[openapi(
    info(title = "vmshift", description = "Move VM disk storage, offline or live, and prove nothing was lost."),
    paths(
        super::jobs::list, super::jobs::start, super::jobs::show, super::jobs::cancel,
        super::jobs::resume, super::jobs::rollback, super::jobs::patch,
        super::events::events, super::check::check, super::datastores::list, health,
    ),
    components(schemas(
        vmshift_runner::JobRequest, vmshift_runner::JobEvent, vmshift_core::report::Report,
        crate::problem::Problem, crate::tracked::Sample,
    )),
    modifiers(&Bearer),
)]
pub struct ApiDoc;

struct Bearer;

impl Modify for Bearer {
    fn modify(&self, api: &mut utoipa::openapi::OpenApi) {
        let c = api.components.get_or_insert_with(Default::default);
        c.add_security_scheme(
            "bearer",
            SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)),
        );
    }
}

/// Liveness: 200 `{"status":"ok","version":…}` while the service answers. No token needed.
#[utoipa::path(get, path = "/healthz", responses((status = 200, description = "Up", body = Object)))]
pub async fn health() -> Json<serde_json::Value> {
    Json(serde_json::json!({"status": "ok", "version": env!("CARGO_PKG_VERSION")}))
}

/// The document.
pub async fn document() -> Json<utoipa::openapi::OpenApi> {
    Json(ApiDoc::openapi())
}
