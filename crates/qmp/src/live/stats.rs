//! The guest's write rate as QEMU counts it: `query-blockstats` counters and temporary
//! dirty bitmaps read from `query-named-block-nodes`.

use std::collections::HashMap;

use serde_json::{json, Value};

use crate::client::Qmp;
use crate::disk::DiskInfo;
use crate::error::QmpError;

pub(super) fn stats_key(d: &DiskInfo) -> String {
    d.qdev.clone().unwrap_or_else(|| d.block_device.clone())
}

pub(super) fn remove_bitmaps(qmp: &mut Qmp, bitmaps: &[(String, String)]) {
    for (node, name) in bitmaps {
        if let Err(e) = qmp.call(
            "block-dirty-bitmap-remove",
            json!({"node": node, "name": name}),
        ) {
            tracing::warn!(%node, %name, %e, "cannot remove the rate-sampling dirty bitmap");
        }
    }
}

/// Dirty bytes counted by bitmap `name` on node `node` in a `query-named-block-nodes` reply.
pub(super) fn bitmap_count(nodes: &Value, node: &str, name: &str) -> Option<u64> {
    nodes
        .as_array()?
        .iter()
        .find(|n| n.get("node-name").and_then(Value::as_str) == Some(node))?
        .get("dirty-bitmaps")?
        .as_array()?
        .iter()
        .find(|b| b.get("name").and_then(Value::as_str) == Some(name))?
        .get("count")?
        .as_u64()
}

/// `wr_bytes` of every device, keyed by qdev path (or device name when there is none).
pub(super) fn blockstats(qmp: &mut Qmp) -> Result<HashMap<String, u64>, QmpError> {
    let v = qmp.execute("query-blockstats", None)?;
    let mut out = HashMap::new();
    for s in v.as_array().map(Vec::as_slice).unwrap_or(&[]) {
        let key = s
            .get("qdev")
            .and_then(Value::as_str)
            .filter(|q| !q.is_empty())
            .or_else(|| s.get("device").and_then(Value::as_str))
            .unwrap_or("")
            .to_owned();
        let wr = s
            .pointer("/stats/wr_bytes")
            .and_then(Value::as_u64)
            .unwrap_or(0);
        out.insert(key, wr);
    }
    Ok(out)
}
