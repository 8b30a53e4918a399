//! The path gate: the service touches images only under its configured datastore roots.
//! A path is resolved the way the kernel will (symlinks followed, for the part that exists)
//! before it is compared, so a symlink leading out of a datastore is refused like `..`.

use std::path::{Component, Path, PathBuf};

/// The datastore roots, resolved, and the state directory, which is never a datastore's.
#[derive(Debug, Clone)]
pub struct Gate {
    roots: Vec<PathBuf>,
    state: Option<PathBuf>,
}

impl Gate {
    /// Resolves each root (it must exist and be a directory).
    ///
    /// # Errors
    /// A root that does not exist or is not a directory, named.
    pub fn new(roots: &[PathBuf]) -> Result<Gate, String> {
        let mut out = Vec::new();
        for r in roots {
            let c = r
                .canonicalize()
                .map_err(|e| format!("datastore {}: {e}", r.display()))?;
            if !c.is_dir() {
                return Err(format!("datastore {} is not a directory", r.display()));
            }
            out.push(c);
        }
        let state = vmshift_runner::state::state_dir().ok().map(|d| resolve(&d));
        Ok(Gate { roots: out, state })
    }

    /// The state directory (journal, locks, reports), resolved.
    pub fn state_dir(&self) -> Option<&Path> {
        self.state.as_deref()
    }

    /// The resolved roots.
    pub fn roots(&self) -> &[PathBuf] {
        &self.roots
    }

    /// Whether `path` (`what` names it in the error) lies under a datastore root.
    ///
    /// # Errors
    /// One line: the path is relative, has a `..`, or resolves outside every root.
    pub fn check(&self, what: &str, path: &Path) -> Result<PathBuf, String> {
        if !path.is_absolute() {
            return Err(format!("{what} {}: give an absolute path", path.display()));
        }
        if path.components().any(|c| c == Component::ParentDir) {
            return Err(format!("{what} {}: \"..\" is not allowed", path.display()));
        }
        let resolved = resolve(path);
        // The journal must only ever be opened by SQLite: a plain open and close of it in
        // this process would drop SQLite's locks (POSIX locks are per process).
        if let Some(state) = self.state.as_deref().filter(|s| resolved.starts_with(s)) {
            return Err(format!(
                "{what} {} is inside vmshift's state directory {}; name an image elsewhere",
                path.display(),
                state.display()
            ));
        }
        if self.roots.iter().any(|r| resolved.starts_with(r)) {
            Ok(resolved)
        } else {
            Err(format!(
                "{what} {} is outside the service's datastores ({}); add its datastore to the configuration",
                path.display(),
                self.roots
                    .iter()
                    .map(|r| r.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            ))
        }
    }
}

/// The longest existing ancestor canonicalized, the rest appended as given.
fn resolve(path: &Path) -> PathBuf {
    let mut rest = Vec::new();
    let mut p = path;
    loop {
        if let Ok(c) = p.canonicalize() {
            let mut out = c;
            for r in rest.iter().rev() {
                out.push(r);
            }
            return out;
        }
        match (p.parent(), p.file_name()) {
            (Some(parent), Some(name)) => {
                rest.push(name.to_os_string());
                p = parent;
            }
            _ => return path.to_path_buf(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_inside_pass_and_escapes_are_refused() {
        let d = tempfile::tempdir().unwrap();
        let store = d.path().join("store");
        let outside = d.path().join("outside");
        std::fs::create_dir_all(store.join("vm")).unwrap();
        std::fs::create_dir_all(&outside).unwrap();
        std::os::unix::fs::symlink(&outside, store.join("link")).unwrap();
        let g = Gate::new(std::slice::from_ref(&store)).unwrap();
        assert!(g.check("source", &store.join("vm/disk.qcow2")).is_ok());
        assert!(g.check("to", &store.join("new/dir/x.raw")).is_ok());
        let e = g.check("source", &outside.join("d.raw")).unwrap_err();
        assert!(e.contains("outside the service's datastores"), "{e}");
        let e = g.check("to", &store.join("link/d.raw")).unwrap_err();
        assert!(e.contains("outside"), "{e}");
        let e = g.check("to", &store.join("vm/../../outside")).unwrap_err();
        assert!(e.contains("\"..\""), "{e}");
        let e = g.check("to", Path::new("vm/d.raw")).unwrap_err();
        assert!(e.contains("absolute"), "{e}");
        // A sibling whose name starts with the root's is not inside it.
        std::fs::create_dir_all(d.path().join("store2")).unwrap();
        assert!(g.check("to", &d.path().join("store2/x")).is_err());
    }

    #[test]
    fn the_state_directory_is_refused_even_inside_a_datastore() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(d.path().join("state")).unwrap();
        let mut g = Gate::new(&[d.path().to_path_buf()]).unwrap();
        g.state = Some(d.path().join("state").canonicalize().unwrap());
        let e = g
            .check("source", &d.path().join("state/journal.sqlite"))
            .unwrap_err();
        assert!(e.contains("inside vmshift's state directory"), "{e}");
        assert!(g.check("source", &d.path().join("vm.raw")).is_ok());
    }

    #[test]
    fn a_missing_root_is_named() {
        let e = Gate::new(&[PathBuf::from("/nonexistent/vmshift")]).unwrap_err();
        assert!(e.starts_with("datastore /nonexistent/vmshift:"), "{e}");
    }
}
