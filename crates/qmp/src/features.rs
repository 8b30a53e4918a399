//! QEMU version and QMP feature detection (`query-version`, `query-qmp-schema`).
//!
//! Features are detected from the schema, never assumed from the version: distributions
//! backport commands, and QEMU 7.2 (Debian 12) lacks `block-job-change` (8.2+).

use std::collections::{BTreeSet, HashMap};

use serde_json::Value;

use crate::client::Qmp;
use crate::error::QmpError;

/// A QEMU version as reported by `query-version`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct QemuVersion {
    /// Major version, e.g. 7.
    pub major: u64,
    /// Minor version, e.g. 2.
    pub minor: u64,
    /// Micro version, e.g. 22.
    pub micro: u64,
}

impl std::fmt::Display for QemuVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.micro)
    }
}

/// What the connected QEMU can do, as far as the live driver cares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Features {
    /// The QEMU version.
    pub version: QemuVersion,
    /// Every command name the schema lists.
    pub commands: BTreeSet<String>,
    /// `blockdev-mirror` accepts `copy-mode` (write-blocking / active mirror, 3.0+).
    pub mirror_copy_mode: bool,
    /// `block-job-change` exists: a running mirror can switch copy mode (8.2+).
    pub block_job_change: bool,
    /// `query-jobs`, `job-complete`, `job-cancel`, `job-dismiss` exist (3.0+).
    pub job_commands: bool,
}

impl Features {
    /// Queries version and schema and derives the feature set.
    pub fn detect(qmp: &mut Qmp) -> Result<Features, QmpError> {
        let v = qmp.execute("query-version", None)?;
        let schema = qmp.execute("query-qmp-schema", None)?;
        Ok(Features::from_replies(&v, &schema))
    }

    /// Derives the feature set from the replies of `query-version` and `query-qmp-schema`.
    pub fn from_replies(version: &Value, schema: &Value) -> Features {
        let q = &version["qemu"];
        let n = |k: &str| q.get(k).and_then(Value::as_u64).unwrap_or(0);
        let version = QemuVersion {
            major: n("major"),
            minor: n("minor"),
            micro: n("micro"),
        };
        let entries = schema.as_array().map(Vec::as_slice).unwrap_or(&[]);
        let by_name: HashMap<&str, &Value> = entries
            .iter()
            .filter_map(|e| Some((e.get("name")?.as_str()?, e)))
            .collect();
        let commands: BTreeSet<String> = entries
            .iter()
            .filter(|e| e.get("meta-type").and_then(Value::as_str) == Some("command"))
            .filter_map(|e| e.get("name")?.as_str().map(str::to_owned))
            .collect();
        let arg_has = |cmd: &str, member: &str| -> bool {
            let Some(c) = entries.iter().find(|e| {
                e.get("meta-type").and_then(Value::as_str) == Some("command")
                    && e.get("name").and_then(Value::as_str) == Some(cmd)
            }) else {
                return false;
            };
            let Some(arg_ty) = c.get("arg-type").and_then(Value::as_str) else {
                return false;
            };
            by_name
                .get(arg_ty)
                .and_then(|t| t.get("members"))
                .and_then(Value::as_array)
                .is_some_and(|ms| {
                    ms.iter()
                        .any(|m| m.get("name").and_then(Value::as_str) == Some(member))
                })
        };
        let has = |c: &str| commands.contains(c);
        Features {
            version,
            mirror_copy_mode: arg_has("blockdev-mirror", "copy-mode"),
            block_job_change: has("block-job-change"),
            job_commands: ["query-jobs", "job-complete", "job-cancel", "job-dismiss"]
                .iter()
                .all(|c| has(c)),
            commands,
        }
    }

    /// Names of commands the live driver needs that this QEMU lacks (empty = all present).
    pub fn missing_for_live(&self) -> Vec<&'static str> {
        const NEEDED: [&str; 10] = [
            "query-block",
            "query-named-block-nodes",
            "query-blockstats",
            "blockdev-add",
            "blockdev-del",
            "blockdev-mirror",
            "query-jobs",
            "job-complete",
            "job-cancel",
            "job-dismiss",
        ];
        NEEDED
            .iter()
            .copied()
            .filter(|c| !self.commands.contains(*c))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn schema(with_change: bool) -> Value {
        let mut s = vec![
            json!({"name": "blockdev-mirror", "meta-type": "command", "arg-type": "42"}),
            json!({"name": "42", "meta-type": "object", "members": [{"name": "job-id"}, {"name": "copy-mode"}]}),
            json!({"name": "query-jobs", "meta-type": "command"}),
            json!({"name": "job-complete", "meta-type": "command"}),
            json!({"name": "job-cancel", "meta-type": "command"}),
            json!({"name": "job-dismiss", "meta-type": "command"}),
            json!({"name": "BLOCK_JOB_READY", "meta-type": "event"}),
        ];
        if with_change {
            s.push(json!({"name": "block-job-change", "meta-type": "command"}));
        }
        Value::Array(s)
    }

    #[test]
    fn qemu_7_2_schema_has_no_block_job_change() {
        let f = Features::from_replies(
            &json!({"qemu": {"major": 7, "minor": 2, "micro": 22}}),
            &schema(false),
        );
        assert_eq!(f.version.to_string(), "7.2.22");
        assert!(f.mirror_copy_mode);
        assert!(!f.block_job_change);
        assert!(f.job_commands);
        assert!(
            !f.commands.contains("BLOCK_JOB_READY"),
            "events are not commands"
        );
    }

    #[test]
    fn block_job_change_detected_from_schema_not_version() {
        let f = Features::from_replies(
            &json!({"qemu": {"major": 7, "minor": 2, "micro": 0}}),
            &schema(true),
        );
        assert!(f.block_job_change);
    }

    #[test]
    fn missing_commands_are_listed() {
        let f = Features::from_replies(&json!({}), &schema(false));
        let missing = f.missing_for_live();
        assert!(missing.contains(&"blockdev-add"));
        assert!(!missing.contains(&"query-jobs"));
    }
}
