//! One entry of the config file's `datastores` list: a plain path, as older configs have
//! it, or a table naming the datastore and its limits.
//!
//! ```toml
//! datastores = [
//!   "/var/lib/libvirt/images",                        # named by its path
//!   { name = "fast", root = "/mnt/nvme", reserve = "10%", max_copies = 4, bwlimit = "200M" },
//! ]
//! ```

use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;
use std::path::PathBuf;
use vmshift_core::parse_size;
use vmshift_core::placement::{Datastore, Reserve};

/// What a datastore is. Only directories for now.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DatastoreKind {
    /// A directory on a mounted file system.
    #[default]
    Dir,
}

/// A configured datastore.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DatastoreConfig {
    /// Its name: the table's `name`, or the path as written for a plain path entry.
    pub name: String,
    /// `dir`.
    pub kind: DatastoreKind,
    /// The directory images live under.
    pub root: PathBuf,
    /// Space kept free: bytes or a percentage of the capacity (default 0).
    pub reserve: Reserve,
    /// Most copies touching it at once (default: the scheduler's per-datastore cap, 8).
    pub max_copies: Option<u32>,
    /// Bandwidth cap for the copies touching it, bytes/s (default: none).
    pub bwlimit_bytes_per_sec: Option<u64>,
}

/// The table form, as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Table {
    name: String,
    #[serde(default)]
    kind: DatastoreKind,
    root: PathBuf,
    #[serde(default)]
    reserve: Reserve,
    #[serde(default)]
    max_copies: Option<u32>,
    #[serde(default, deserialize_with = "bytes_per_sec")]
    bwlimit: Option<u64>,
}

/// A bandwidth as a number of bytes/s or a size string (`"200M"`: 200 MiB/s).
fn bytes_per_sec<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Bytes(u64),
        Text(String),
    }
    match Raw::deserialize(d).map_err(|_| {
        serde::de::Error::custom("bwlimit is bytes/s: a number or a size like \"200M\"")
    })? {
        Raw::Bytes(b) => Ok(Some(b)),
        Raw::Text(t) => parse_size(&t).map(Some).map_err(serde::de::Error::custom),
    }
}

/// A path string, or a table.
impl<'de> Deserialize<'de> for DatastoreConfig {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Entry;
        impl<'de> serde::de::Visitor<'de> for Entry {
            type Value = DatastoreConfig;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a datastore: a directory path, or a table { name, root, ... }")
            }
            fn visit_str<E: serde::de::Error>(self, path: &str) -> Result<Self::Value, E> {
                Ok(DatastoreConfig {
                    name: path.to_string(),
                    kind: DatastoreKind::Dir,
                    root: PathBuf::from(path),
                    reserve: Reserve::default(),
                    max_copies: None,
                    bwlimit_bytes_per_sec: None,
                })
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                map: A,
            ) -> Result<Self::Value, A::Error> {
                let t = Table::deserialize(serde::de::value::MapAccessDeserializer::new(map))?;
                if t.max_copies == Some(0) {
                    return Err(serde::de::Error::custom(format!(
                        "datastore {:?}: max_copies must be at least 1",
                        t.name
                    )));
                }
                if !valid_name(&t.name) {
                    return Err(serde::de::Error::custom(format!(
                        "datastore name {:?} must be letters, digits, '.', '_' or '-' (e.g. \"fast-ssd\")",
                        t.name
                    )));
                }
                Ok(DatastoreConfig {
                    name: t.name,
                    kind: t.kind,
                    root: t.root,
                    reserve: t.reserve,
                    max_copies: t.max_copies,
                    bwlimit_bytes_per_sec: t.bwlimit,
                })
            }
        }
        d.deserialize_any(Entry)
    }
}

/// Names are used on the command line: never empty, never a path.
fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
        && name != "."
        && name != ".."
}

impl DatastoreConfig {
    /// Checks a whole list: names and roots each appear once.
    ///
    /// # Errors
    /// One line naming the repeated name or root.
    pub fn check_list(list: &[DatastoreConfig]) -> Result<(), String> {
        let (mut names, mut roots) = (BTreeSet::new(), BTreeSet::new());
        for d in list {
            if !names.insert(d.name.as_str()) {
                return Err(format!(
                    "datastore {:?} is configured twice (give each datastore its own name)",
                    d.name
                ));
            }
            if !roots.insert(d.root.as_path()) {
                return Err(format!(
                    "datastore root {} is configured twice (list each directory once)",
                    d.root.display()
                ));
            }
        }
        Ok(())
    }

    /// The datastore as placement sees it, from measured `capacity_bytes` and `free_bytes`
    /// (bytes) and `latency_us` (µs).
    pub fn placement(
        &self,
        capacity_bytes: u64,
        free_bytes: u64,
        latency_us: Option<u64>,
    ) -> Datastore {
        Datastore {
            name: self.name.clone(),
            capacity_bytes,
            free_bytes,
            reserve: self.reserve,
            latency_us,
            max_copies: self.max_copies,
            bwlimit_bytes_per_sec: self.bwlimit_bytes_per_sec,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Deserialize)]
    struct File {
        datastores: Vec<DatastoreConfig>,
    }

    fn parse(json: &str) -> Result<Vec<DatastoreConfig>, String> {
        serde_json::from_str::<File>(json)
            .map(|f| f.datastores)
            .map_err(|e| e.to_string())
    }

    #[test]
    fn a_plain_path_is_a_dir_datastore_named_by_its_path() {
        let l = parse(r#"{"datastores": ["/srv/images"]}"#).unwrap();
        assert_eq!(l[0].name, "/srv/images");
        assert_eq!(l[0].root, PathBuf::from("/srv/images"));
        assert_eq!(l[0].kind, DatastoreKind::Dir);
        assert_eq!(l[0].reserve, Reserve::Bytes(0));
        assert_eq!((l[0].max_copies, l[0].bwlimit_bytes_per_sec), (None, None));
    }

    #[test]
    fn a_table_names_its_limits() {
        let l = parse(
            r#"{"datastores": [{"name": "fast", "kind": "dir", "root": "/mnt/nvme",
                "reserve": "10%", "max_copies": 4, "bwlimit": "200M"},
               {"name": "slow", "root": "/mnt/hdd", "reserve": 1024, "bwlimit": 1000}]}"#,
        )
        .unwrap();
        assert_eq!(l[0].name, "fast");
        assert_eq!(l[0].reserve, Reserve::Percent(10));
        assert_eq!(l[0].max_copies, Some(4));
        assert_eq!(l[0].bwlimit_bytes_per_sec, Some(200 << 20));
        assert_eq!(l[1].reserve, Reserve::Bytes(1024));
        assert_eq!(l[1].bwlimit_bytes_per_sec, Some(1000));
        assert!(DatastoreConfig::check_list(&l).is_ok());
        let d = l[0].placement(1000, 500, Some(80));
        assert_eq!(
            (d.name.as_str(), d.capacity_bytes, d.free_bytes),
            ("fast", 1000, 500)
        );
        assert_eq!((d.latency_us, d.max_copies), (Some(80), Some(4)));
    }

    #[test]
    fn bad_entries_say_what_is_wrong() {
        let e =
            parse(r#"{"datastores": [{"name": "x", "root": "/a", "kind": "nfs"}]}"#).unwrap_err();
        assert!(e.contains("unknown variant `nfs`"), "{e}");
        let e = parse(r#"{"datastores": [{"name": "x", "root": "/a", "reserve": "200%"}]}"#)
            .unwrap_err();
        assert!(e.contains("more than 100%"), "{e}");
        let e =
            parse(r#"{"datastores": [{"name": "x", "root": "/a", "max_copies": 0}]}"#).unwrap_err();
        assert!(e.contains("max_copies must be at least 1"), "{e}");
        let e = parse(r#"{"datastores": [{"name": "a/b", "root": "/a"}]}"#).unwrap_err();
        assert!(e.contains("letters, digits"), "{e}");
        let e = parse(r#"{"datastores": [{"name": "x", "root": "/a", "size": 1}]}"#).unwrap_err();
        assert!(e.contains("unknown field `size`"), "{e}");
        let e = parse(r#"{"datastores": [{"root": "/a"}]}"#).unwrap_err();
        assert!(e.contains("missing field `name`"), "{e}");
        let e = parse(r#"{"datastores": [5]}"#).unwrap_err();
        assert!(e.contains("a directory path, or a table"), "{e}");
    }

    #[test]
    fn repeated_names_and_roots_are_refused() {
        let l =
            parse(r#"{"datastores": [{"name": "a", "root": "/x"}, {"name": "a", "root": "/y"}]}"#)
                .unwrap();
        let e = DatastoreConfig::check_list(&l).unwrap_err();
        assert!(e.contains("\"a\" is configured twice"), "{e}");
        let l = parse(r#"{"datastores": ["/x", {"name": "b", "root": "/x"}]}"#).unwrap();
        let e = DatastoreConfig::check_list(&l).unwrap_err();
        assert!(e.contains("root /x is configured twice"), "{e}");
    }
}
