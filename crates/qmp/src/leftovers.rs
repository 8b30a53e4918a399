//! Leftovers of an interrupted live migration: what a killed vmshift process leaves in a
//! running QEMU, and how to clear it before mirroring again or finishing the job.
//!
//! The driver names everything it adds `vmshift<PID>r<RUN>-<DISK>` (format node), with the
//! suffixes `-file` (protocol node), `-job` (mirror job) and `-job-rate` (the temporary dirty
//! bitmap of the rate sample). Its jobs run with `auto-dismiss=false`, so after a `kill -9`
//! they keep copying (or sit `ready`, or `concluded` after a pivot) until someone cancels or
//! dismisses them, and their target nodes stay open.
//!
//! [`find`] is pure (three QMP replies in, the leftovers out); [`clear`] talks to QEMU:
//! cancels every vmshift job and waits until `query-jobs` no longer lists it, removes the
//! rate bitmaps and `blockdev-del`s the vmshift nodes no device uses. Nodes a device runs on
//! (after a pivot the VM runs on `vmshift…-N`) are never touched.

use std::collections::BTreeSet;
use std::path::PathBuf;

use serde_json::{json, Value};

use crate::client::Qmp;
use crate::error::QmpError;
use crate::live::cancel_and_wait;

/// What a vmshift-owned name is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NameKind {
    /// Format node of a target (`vmshift<PID>r<RUN>-<I>`).
    FormatNode,
    /// Protocol node of a target (`…-<I>-file`).
    FileNode,
    /// Mirror job (`…-<I>-job`).
    Job,
    /// Rate-sampling dirty bitmap (`…-<I>-job-rate`).
    RateBitmap,
}

/// Classifies `name` when it is one vmshift's live driver gives out, `None` otherwise.
pub fn classify(name: &str) -> Option<NameKind> {
    let rest = name.strip_prefix("vmshift")?;
    let digits = |s: &str| -> Option<usize> {
        let n = s.bytes().take_while(u8::is_ascii_digit).count();
        (n > 0).then_some(n)
    };
    let n = digits(rest)?;
    let rest = rest[n..].strip_prefix('r')?;
    let n = digits(rest)?;
    let rest = rest[n..].strip_prefix('-')?;
    let n = digits(rest)?;
    match &rest[n..] {
        "" => Some(NameKind::FormatNode),
        "-file" => Some(NameKind::FileNode),
        "-job" => Some(NameKind::Job),
        "-job-rate" => Some(NameKind::RateBitmap),
        _ => None,
    }
}

/// What an interrupted vmshift run left in QEMU.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Leftovers {
    /// vmshift mirror jobs still listed by `query-jobs`, with their status.
    pub jobs: Vec<(String, String)>,
    /// vmshift nodes no device uses, format nodes before protocol nodes (deletion order).
    pub nodes: Vec<String>,
    /// Files behind those nodes: target images of the interrupted run.
    pub files: Vec<PathBuf>,
    /// Rate-sampling bitmaps `(node, name)`.
    pub bitmaps: Vec<(String, String)>,
}

impl Leftovers {
    /// Nothing left.
    pub fn is_empty(&self) -> bool {
        self.jobs.is_empty() && self.nodes.is_empty() && self.bitmaps.is_empty()
    }
}

fn str_of<'a>(v: &'a Value, key: &str) -> Option<&'a str> {
    v.get(key).and_then(Value::as_str)
}

fn array(v: &Value) -> &[Value] {
    v.as_array().map(Vec::as_slice).unwrap_or(&[])
}

/// Finds the leftovers in the replies of `query-jobs`, `query-block` and
/// `query-named-block-nodes` (`flat: true`). A vmshift node is in use (kept) when a device
/// runs on it, when it is the `-file` node of such a format node, or when its file is a
/// device's current image.
pub fn find(jobs: &Value, query_block: &Value, nodes: &Value) -> Leftovers {
    let mut used_nodes = BTreeSet::new();
    let mut used_files = BTreeSet::new();
    for b in array(query_block) {
        let Some(ins) = b.get("inserted") else {
            continue;
        };
        if let Some(n) = str_of(ins, "node-name") {
            used_nodes.insert(n.to_owned());
            if classify(n) == Some(NameKind::FormatNode) {
                used_nodes.insert(format!("{n}-file"));
            }
        }
        if let Some(f) = str_of(ins, "file") {
            used_files.insert(f.to_owned());
        }
    }
    let mut out = Leftovers::default();
    for j in array(jobs) {
        if let Some(id) = str_of(j, "id").filter(|id| classify(id) == Some(NameKind::Job)) {
            out.jobs
                .push((id.to_owned(), str_of(j, "status").unwrap_or("").to_owned()));
        }
    }
    out.jobs.sort();
    let mut fmt = Vec::new();
    let mut proto = Vec::new();
    let mut files = BTreeSet::new();
    for n in array(nodes) {
        let name = str_of(n, "node-name").unwrap_or("");
        for b in n
            .get("dirty-bitmaps")
            .map(array)
            .unwrap_or(&[])
            .iter()
            .filter_map(|b| str_of(b, "name"))
        {
            if classify(b) == Some(NameKind::RateBitmap) {
                out.bitmaps.push((name.to_owned(), b.to_owned()));
            }
        }
        let kind = classify(name);
        if !matches!(kind, Some(NameKind::FormatNode | NameKind::FileNode)) {
            continue;
        }
        let file = str_of(n, "file").unwrap_or("");
        if used_nodes.contains(name) || used_files.contains(file) {
            continue;
        }
        if !file.is_empty() && !file.starts_with("json:") {
            files.insert(PathBuf::from(file));
        }
        if kind == Some(NameKind::FormatNode) {
            fmt.push(name.to_owned());
        } else {
            proto.push(name.to_owned());
        }
    }
    fmt.sort();
    fmt.dedup();
    proto.sort();
    proto.dedup();
    out.nodes = fmt.into_iter().chain(proto).collect();
    out.files = files.into_iter().collect();
    out
}

/// What [`clear`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Cleared {
    /// What was found.
    pub found: Leftovers,
    /// What could not be cleared (empty when everything is gone).
    pub problems: Vec<String>,
}

/// Looks up the leftovers of the VM behind `qmp`.
///
/// # Errors
/// QMP failures.
pub fn inspect(qmp: &mut Qmp) -> Result<Leftovers, QmpError> {
    let jobs = qmp.execute("query-jobs", None)?;
    let block = qmp.execute("query-block", None)?;
    let nodes = qmp.call("query-named-block-nodes", json!({"flat": true}))?;
    Ok(find(&jobs, &block, &nodes))
}

/// Clears every leftover of interrupted vmshift runs: cancels their mirror jobs (a job that
/// did not pivot leaves the VM on its source) and waits until `query-jobs` no longer lists
/// them, dismissing concluded ones; removes rate bitmaps; `blockdev-del`s the vmshift nodes
/// no device uses. The files behind those nodes are reported in `found.files`, never deleted
/// here: the caller knows which of them it created.
///
/// # Errors
/// QMP failures while looking; failures to clear one item go to `problems`.
pub fn clear(qmp: &mut Qmp) -> Result<Cleared, QmpError> {
    let first = inspect(qmp)?;
    let mut problems = Vec::new();
    for (id, status) in &first.jobs {
        if !matches!(status.as_str(), "concluded" | "aborting" | "null") {
            let _ = qmp.call("job-cancel", json!({"id": id}));
        }
    }
    for (id, _) in &first.jobs {
        if let Err(e) = cancel_and_wait(qmp, id) {
            problems.push(format!("job {id}: {e}"));
        }
    }
    // Look again: the cancelled jobs released their target nodes.
    let now = inspect(qmp)?;
    for (node, name) in &now.bitmaps {
        if let Err(e) = qmp.call(
            "block-dirty-bitmap-remove",
            json!({"node": node, "name": name}),
        ) {
            problems.push(format!("bitmap {name} on {node}: {e}"));
        }
    }
    let mut left: Vec<String> = now.nodes.clone();
    // Format nodes first; a second pass catches any order QEMU still refused.
    for _ in 0..2 {
        let mut again = Vec::new();
        for n in left {
            if qmp.call("blockdev-del", json!({"node-name": n})).is_err() {
                again.push(n);
            }
        }
        left = again;
    }
    for n in &left {
        problems.push(format!("node {n}: blockdev-del refused"));
    }
    let mut found = now;
    found.jobs = first.jobs;
    for f in first.files {
        if !found.files.contains(&f) {
            found.files.push(f);
        }
    }
    Ok(Cleared { found, problems })
}

/// Detaches every node of `file` that no device uses (the old graph a pivot left behind when
/// the process died before deleting it), so QEMU closes and unlocks the file. Returns true
/// when QEMU no longer has the file open; false when a device still runs on it or a node
/// could not be deleted.
///
/// # Errors
/// QMP failures.
pub fn detach_file(qmp: &mut Qmp, file: &str) -> Result<bool, QmpError> {
    let block = qmp.execute("query-block", None)?;
    if array(&block).iter().any(|b| {
        b.get("inserted")
            .and_then(|i| str_of(i, "file"))
            .is_some_and(|f| f == file)
    }) {
        return Ok(false);
    }
    for _ in 0..3 {
        let nodes = qmp.call("query-named-block-nodes", json!({"flat": true}))?;
        let names: Vec<String> = array(&nodes)
            .iter()
            .filter(|n| str_of(n, "file") == Some(file))
            .filter_map(|n| str_of(n, "node-name").map(str::to_owned))
            .collect();
        if names.is_empty() {
            return Ok(true);
        }
        for n in names {
            let _ = qmp.call("blockdev-del", json!({"node-name": n}));
        }
    }
    let nodes = qmp.call("query-named-block-nodes", json!({"flat": true}))?;
    Ok(!array(&nodes)
        .iter()
        .any(|n| str_of(n, "file") == Some(file)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classify_knows_every_name_the_driver_gives_out() {
        assert_eq!(classify("vmshift123r0-0"), Some(NameKind::FormatNode));
        assert_eq!(classify("vmshift123r4-12-file"), Some(NameKind::FileNode));
        assert_eq!(classify("vmshift9r0-1-job"), Some(NameKind::Job));
        assert_eq!(
            classify("vmshift9r0-1-job-rate"),
            Some(NameKind::RateBitmap)
        );
        for other in [
            "disk0",
            "vmshift",
            "vmshiftr0-0",
            "vmshift12r-0",
            "vmshift12r0-",
            "vmshift12r0-0-jobx",
            "vmshift12r0-0-file2",
            "#block123",
            "myvmshift1r0-0",
        ] {
            assert_eq!(classify(other), None, "{other}");
        }
    }

    fn node(name: &str, file: &str) -> Value {
        json!({"node-name": name, "file": file, "dirty-bitmaps": []})
    }

    #[test]
    fn find_lists_our_jobs_unused_nodes_files_and_bitmaps_in_deletion_order() {
        let jobs = json!([
            {"id": "vmshift77r0-0-job", "status": "running", "type": "mirror"},
            {"id": "vmshift77r0-1-job", "status": "concluded", "type": "mirror"},
            {"id": "backup0", "status": "running", "type": "backup"}
        ]);
        let block = json!([
            {"qdev": "/machine/peripheral/vd0/virtio-backend",
             "inserted": {"node-name": "disk0", "file": "/a/web.raw"}},
            {"qdev": "/machine/peripheral/vd1/virtio-backend",
             "inserted": {"node-name": "vmshift5r0-0", "file": "/b/db.qcow2"}},
            {"device": "ide1-cd0"}
        ]);
        let mut src = node("disk0", "/a/web.raw");
        src["dirty-bitmaps"] = json!([{"name": "vmshift77r0-0-job-rate", "count": 0},
                                      {"name": "user-bitmap", "count": 0}]);
        let nodes = json!([
            src,
            node("disk0-file", "/a/web.raw"),
            node("vmshift77r0-0-file", "/b/web.raw"),
            node("vmshift77r0-0", "/b/web.raw"),
            // the VM runs on these after an earlier pivot: kept
            node("vmshift5r0-0", "/b/db.qcow2"),
            node("vmshift5r0-0-file", "/b/db.qcow2"),
            node("#block311", "/b/other.raw")
        ]);
        let l = find(&jobs, &block, &nodes);
        assert_eq!(
            l.jobs,
            vec![
                ("vmshift77r0-0-job".to_owned(), "running".to_owned()),
                ("vmshift77r0-1-job".to_owned(), "concluded".to_owned())
            ]
        );
        assert_eq!(l.nodes, vec!["vmshift77r0-0", "vmshift77r0-0-file"]);
        assert_eq!(l.files, vec![PathBuf::from("/b/web.raw")]);
        assert_eq!(
            l.bitmaps,
            vec![("disk0".to_owned(), "vmshift77r0-0-job-rate".to_owned())]
        );
        assert!(!l.is_empty());
    }

    #[test]
    fn find_on_a_clean_vm_finds_nothing() {
        let block = json!([{"inserted": {"node-name": "disk0", "file": "/a/x.raw"}}]);
        let nodes = json!([node("disk0", "/a/x.raw"), node("disk0-file", "/a/x.raw")]);
        let l = find(&json!([]), &block, &nodes);
        assert!(l.is_empty());
        assert!(l.files.is_empty());
    }
}
