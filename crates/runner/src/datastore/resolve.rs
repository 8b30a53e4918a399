//! `--to NAME`: a destination that is not a path but a configured datastore's name stands
//! for that datastore's root. Every front end gets this through [`crate::Runner`], which
//! resolves a request before its check (and journals the resolved path).

use super::DatastoreConfig;
use crate::request::JobRequest;
use std::path::{Path, PathBuf};

/// Resolves `to` against `datastores`. A value with a `/`, or naming an existing
/// directory or file, is a path and is returned as given. Otherwise it must be a
/// configured datastore's name (its root is returned) — except that an offline move
/// (`file_ok`) may name a new image file in the current directory by its extension
/// (`.qcow2`, `.raw`, `.img`).
///
/// # Errors
/// One line naming the value and the configured names.
pub fn resolve_to(
    to: &Path,
    datastores: &[DatastoreConfig],
    file_ok: bool,
) -> Result<PathBuf, String> {
    let text = to.to_string_lossy();
    if text.is_empty() || text.contains('/') || to.exists() {
        return Ok(to.to_path_buf());
    }
    if let Some(d) = datastores.iter().find(|d| d.name == text) {
        return Ok(d.root.clone());
    }
    let image_name = to
        .extension()
        .is_some_and(|e| e == "qcow2" || e == "raw" || e == "img");
    if file_ok && image_name {
        return Ok(to.to_path_buf());
    }
    let names: Vec<&str> = datastores
        .iter()
        .filter(|d| !d.name.contains('/'))
        .map(|d| d.name.as_str())
        .collect();
    let configured = if names.is_empty() {
        "no named datastores are configured (--config FILE, datastores = [...])".to_string()
    } else {
        format!("configured: {}", names.join(", "))
    };
    Err(format!(
        "destination {text:?} is neither a directory nor a configured datastore ({configured}); a new directory or file here is ./{text}"
    ))
}

/// The request with its destination resolved (see [`resolve_to`]); a domain request
/// without `to` (a pool) is returned as is.
///
/// # Errors
/// As [`resolve_to`].
pub fn resolve_request(
    request: &JobRequest,
    datastores: &[DatastoreConfig],
) -> Result<JobRequest, String> {
    let mut r = request.clone();
    match &mut r {
        JobRequest::Offline(o) => o.to = resolve_to(&o.to, datastores, true)?,
        JobRequest::Live(l) => l.to = resolve_to(&l.to, datastores, false)?,
        JobRequest::Domain(d) => {
            if let Some(to) = &mut d.to {
                *to = resolve_to(to, datastores, false)?;
            }
        }
    }
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;
    use vmshift_core::placement::Reserve;

    fn ds(name: &str, root: &str) -> DatastoreConfig {
        DatastoreConfig {
            name: name.into(),
            kind: super::super::DatastoreKind::Dir,
            root: root.into(),
            reserve: Reserve::default(),
            max_copies: None,
            bwlimit_bytes_per_sec: None,
        }
    }

    #[test]
    fn a_configured_name_resolves_to_its_root_and_paths_stay_paths() {
        let l = [ds("fast", "/mnt/nvme"), ds("/srv/images", "/srv/images")];
        assert_eq!(
            resolve_to(Path::new("fast"), &l, false).unwrap(),
            PathBuf::from("/mnt/nvme")
        );
        assert_eq!(
            resolve_to(Path::new("/x/fast"), &l, false).unwrap(),
            PathBuf::from("/x/fast")
        );
        assert_eq!(
            resolve_to(Path::new("./fast"), &l, false).unwrap(),
            PathBuf::from("./fast")
        );
        assert_eq!(
            resolve_to(Path::new("new.qcow2"), &l, true).unwrap(),
            PathBuf::from("new.qcow2")
        );
    }

    #[test]
    fn an_unknown_name_is_one_line_naming_it_and_the_configured_names() {
        let l = [
            ds("fast", "/mnt/nvme"),
            ds("slow", "/mnt/hdd"),
            ds("/srv", "/srv"),
        ];
        let e = resolve_to(Path::new("fsat"), &l, true).unwrap_err();
        assert!(e.contains("\"fsat\""), "{e}");
        assert!(e.contains("configured: fast, slow)"), "{e}");
        assert!(!e.contains('\n'));
        let e = resolve_to(Path::new("new.qcow2"), &l, false).unwrap_err();
        assert!(e.contains("\"new.qcow2\""), "{e}");
        let e = resolve_to(Path::new("x"), &[], false).unwrap_err();
        assert!(e.contains("no named datastores are configured"), "{e}");
    }
}
