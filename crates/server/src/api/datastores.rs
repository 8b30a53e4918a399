//! `GET /api/v1/datastores`: each root's space and what its images allocate.

use super::{blocking, Shared};
use crate::problem::{ApiResult, Problem};
use axum::Json;
use serde::Serialize;
use std::path::{Path, PathBuf};
use utoipa::ToSchema;

/// How deep below a root images are looked for.
const MAX_DEPTH: usize = 4;

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
    let st = rustix::fs::statvfs(root)
        .map_err(|e| Problem::internal(format!("datastore {}: {e}", root.display())))?;
    let size = st.f_blocks.saturating_mul(st.f_frsize);
    let free = st.f_bavail.saturating_mul(st.f_frsize);
    let used = st
        .f_blocks
        .saturating_sub(st.f_bfree)
        .saturating_mul(st.f_frsize);
    let (mut images, mut allocated) = (0, 0);
    walk(root, state, 0, &mut |p| {
        images += 1;
        allocated += vmshift_runner::files::allocated_bytes(p);
    });
    Ok(Datastore {
        path: root.to_path_buf(),
        size_bytes: size,
        free_bytes: free,
        used_bytes: used,
        images,
        allocated_by_images_bytes: allocated,
    })
}

/// Image files below `dir`, never below `skip`: the state directory holds the journal,
/// which only SQLite may open (closing any other descriptor of it drops this process's
/// SQLite locks, and another process could then delete the journal's WAL under it).
fn walk(dir: &Path, skip: Option<&Path>, depth: usize, found: &mut dyn FnMut(&Path)) {
    if skip.is_some_and(|s| dir.starts_with(s)) {
        return;
    }
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    for e in rd.flatten() {
        let Ok(ft) = e.file_type() else { continue };
        let p = e.path();
        if ft.is_dir() && depth < MAX_DEPTH {
            walk(&p, skip, depth + 1, found);
        } else if ft.is_file() && is_image(&p) {
            found(&p);
        }
    }
}

fn is_image(p: &Path) -> bool {
    let by_name = p
        .extension()
        .is_some_and(|e| e == "raw" || e == "img" || e == "qcow2");
    by_name || vmshift_runner::files::has_qcow2_magic(p)
}
