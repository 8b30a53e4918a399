//! `GET /api/v1/datastores`: each root's space and what its images allocate.

use super::{blocking, Shared};
use crate::problem::{ApiResult, Problem};
use axum::Json;
use serde::Serialize;
use std::path::{Path, PathBuf};
use utoipa::ToSchema;

/// One datastore.
#[derive(Debug, Serialize, ToSchema)]
pub struct Datastore {
    /// The root, resolved.
    #[schema(value_type = String)]
    pub path: PathBuf,
    /// The file system's size, bytes.
    pub size_bytes: u64,
    /// Free for unprivileged users (`f_bavail`), bytes.
    pub free_bytes: u64,
    /// Used, bytes.
    pub used_bytes: u64,
    /// Image files found (qcow2 by magic; `.raw`, `.img` by name), up to 4 levels down.
    pub images: u64,
    /// What those images allocate on disk, bytes.
    pub allocated_by_images_bytes: u64,
}

/// The datastores the service may touch.
#[utoipa::path(get, path = "/api/v1/datastores",
    responses((status = 200, description = "Datastores", body = Vec<Datastore>)),
    security(("bearer" = [])))]
pub async fn list(axum::extract::State(s): Shared) -> ApiResult<Json<Vec<Datastore>>> {
    blocking(move || {
        s.gate
            .roots()
            .iter()
            .map(|r| one(r, s.gate.state_dir()))
            .collect::<Result<Vec<_>, _>>()
            .map(Json)
    })
    .await
}

fn one(root: &Path, state: Option<&Path>) -> Result<Datastore, Problem> {
    let u = vmshift_runner::datastore::usage(root, state)
        .map_err(|e| Problem::internal(e.to_string()))?;
    Ok(Datastore {
        path: root.to_path_buf(),
        size_bytes: u.capacity_bytes,
        free_bytes: u.free_bytes,
        used_bytes: u.used_bytes,
        images: u.images,
        allocated_by_images_bytes: u.allocated_by_images_bytes,
    })
}
