//! The evacuation plan: what is on the source datastore, what moves together, where each
//! group goes and in which wave, what cannot move and why, and each datastore's free space
//! before and after. Built from measurements (the datastores' usage and latency, image
//! inspection, libvirt's domains) by [`build`]; the decisions are `vmshift_core`'s.

use crate::datastore::{self, DatastoreConfig, LATENCY_MAX_AGE};
use crate::{Result, RunnerError};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use vmshift_core::placement::{self, Datastore, Image};
use vmshift_core::schedule::{self, Caps};

use super::found::{inspect, recorded_backing, Found};

/// What to evacuate, and where to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EvacuateRequest {
    /// The datastore to empty: a configured name, or its root path.
    pub source: String,
    /// Candidate target datastores by name; empty: every other configured datastore.
    #[serde(default)]
    pub to: Vec<String>,
    /// Most moves at once on this host (default [`Caps::default`]'s, 2).
    #[serde(default)]
    pub max_parallel: Option<u32>,
    /// Keep the source images after their moves are verified (the plan's "after" free
    /// space of the source is then unchanged).
    #[serde(default)]
    pub keep_source: bool,
    /// libvirt URI whose domains are grouped (default `qemu:///system`).
    #[serde(default)]
    pub connect: Option<String>,
}

/// How a group moves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum MoveKind {
    /// An image file copy (no VM runs it).
    Offline,
    /// A running domain's disks, by libvirt's block copy.
    Live,
}

/// One image that moves.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PlannedMove {
    /// The image's path.
    pub path: PathBuf,
    /// `qcow2`, `raw`.
    pub format: String,
    /// Guest-visible size, bytes.
    pub virtual_size: u64,
    /// On disk now, bytes: what the target needs.
    pub allocated_bytes: u64,
    /// What it moves with: `chain:BASE` (a backing file and its overlays), `vm:NAME` (a
    /// domain's disks); `None` alone.
    pub group: Option<String>,
    /// The domains using it.
    pub vms: Vec<String>,
    /// Offline or live.
    pub kind: MoveKind,
    /// The target datastore's name.
    pub target: String,
    /// Where it will be: the same path below the target's root.
    pub target_path: PathBuf,
    /// Its start wave (1 first), if every move took the same time.
    pub wave: usize,
}

/// One image that cannot move.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Unmovable {
    /// The image's path.
    pub path: PathBuf,
    /// On disk, bytes.
    pub allocated_bytes: u64,
    /// Its group, as in [`PlannedMove::group`].
    pub group: Option<String>,
    /// Why, one line: `stays: backing file of X`, no target has room, it cannot be read.
    pub reason: String,
}

/// A datastore's space now and after the plan.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Space {
    /// Name.
    pub name: String,
    /// Root directory.
    pub root: PathBuf,
    /// `source` or `target`.
    pub role: &'static str,
    /// File system size, bytes.
    pub capacity_bytes: u64,
    /// Free now (statvfs `f_bavail`), bytes.
    pub free_before_bytes: u64,
    /// Free once every planned move is done (sources deleted unless `keep_source`), bytes.
    pub free_after_bytes: u64,
    /// Kept free by its reserve, bytes.
    pub reserve_bytes: u64,
    /// Measured latency, µs.
    pub latency_us: Option<u64>,
    /// Moves touching it at once (its `max_copies`, else the default cap).
    pub max_copies: u32,
}

/// Whether libvirt's domains were seen.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LibvirtView {
    /// A daemon answered and its domains were grouped.
    pub reachable: bool,
    /// What was seen, or why not (one line).
    pub note: String,
}

/// The whole plan. `--json` prints it as is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EvacuationPlan {
    /// The source datastore's name.
    pub source: String,
    /// Its root.
    pub source_root: PathBuf,
    /// The candidate targets, by name.
    pub targets: Vec<String>,
    /// The host cap used.
    pub max_parallel: u32,
    /// Source images are kept.
    pub keep_source: bool,
    /// libvirt's part.
    pub libvirt: LibvirtView,
    /// Images that move, in wave order.
    pub moves: Vec<PlannedMove>,
    /// Images that cannot move, with why.
    pub unplaceable: Vec<Unmovable>,
    /// The groups (or lone images) starting together, wave by wave.
    pub waves: Vec<Vec<String>>,
    /// Every datastore involved, source first.
    pub datastores: Vec<Space>,
    /// Things worth knowing (a target left out, an image not inspected).
    pub notes: Vec<String>,
}

/// Plans the evacuation `r` over the configured `datastores`; `state_dir` is skipped by the
/// walks and holds the latency cache. Reads only: images are inspected, targets probed.
///
/// # Errors
/// [`RunnerError::Refused`]: the source or a target is not a configured datastore, a
/// target is the source, or no target is left.
pub fn build(
    r: &EvacuateRequest,
    datastores: &[DatastoreConfig],
    state_dir: &Path,
) -> Result<EvacuationPlan> {
    let names = || {
        let n: Vec<&str> = datastores.iter().map(|d| d.name.as_str()).collect();
        if n.is_empty() {
            "none are configured (--config FILE, datastores = [...])".to_string()
        } else {
            format!("configured: {}", n.join(", "))
        }
    };
    let canon = |p: &Path| std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf());
    let source = datastores
        .iter()
        .find(|d| d.name == r.source)
        .or_else(|| {
            let want = canon(Path::new(&r.source));
            datastores.iter().find(|d| canon(&d.root) == want)
        })
        .ok_or_else(|| {
            RunnerError::Refused(format!(
                "datastore {:?} is not configured ({})",
                r.source,
                names()
            ))
        })?;
    let mut targets: Vec<&DatastoreConfig> = Vec::new();
    if r.to.is_empty() || r.to == ["auto"] {
        targets.extend(datastores.iter().filter(|d| d.name != source.name));
    } else {
        for t in &r.to {
            let d = datastores.iter().find(|d| &d.name == t).ok_or_else(|| {
                RunnerError::Refused(format!(
                    "target datastore {t:?} is not configured ({})",
                    names()
                ))
            })?;
            if d.name == source.name {
                return Err(RunnerError::Refused(format!(
                    "target datastore {t:?} is the datastore being evacuated"
                )));
            }
            if !targets.iter().any(|x| x.name == d.name) {
                targets.push(d);
            }
        }
    }
    if targets.is_empty() {
        return Err(RunnerError::Refused(format!(
            "no target datastore: configure another besides {:?} or name one with --to",
            source.name
        )));
    }
    let caps = Caps {
        per_host: r.max_parallel.unwrap_or(Caps::default().per_host).max(1),
        ..Caps::default()
    };
    let mut notes = Vec::new();
    let source_root = canon(&source.root);

    // What is on the source, and what each image's chain is.
    let found: Vec<Found> = datastore::images(&source_root, Some(state_dir))
        .into_iter()
        .map(|p| inspect(&p, &source_root))
        .collect();
    let index: BTreeMap<PathBuf, usize> = found
        .iter()
        .enumerate()
        .map(|(i, f)| (canon(&f.path), i))
        .collect();
    let mut sets = UnionFind::new(found.len());
    for (i, f) in found.iter().enumerate() {
        for b in &f.backing_here {
            if let Some(&j) = index.get(b) {
                sets.union(i, j);
            }
        }
    }

    // Overlays elsewhere keep their backing files here.
    let mut stays: BTreeMap<usize, String> = BTreeMap::new();
    for d in datastores.iter().filter(|d| d.name != source.name) {
        let root = canon(&d.root);
        if root.starts_with(&source_root) || source_root.starts_with(&root) {
            continue;
        }
        for p in datastore::images(&root, Some(state_dir)) {
            // By the names in the headers, not through inspection: its gate follows
            // backing names only inside the overlay's own datastore, and this one is not.
            for b in recorded_backing(&p) {
                if let Some(&j) = index.get(&b) {
                    stays
                        .entry(j)
                        .or_insert_with(|| format!("stays: backing file of {}", p.display()));
                }
            }
        }
    }

    // Domains using the images: their disks move together, live when the domain runs.
    let mut vms: BTreeMap<usize, Vec<(String, bool)>> = BTreeMap::new();
    let libvirt = match crate::domain::all_domains(r.connect.as_deref()) {
        Ok(domains) => {
            for d in &domains {
                let used: Vec<usize> = d
                    .disks
                    .iter()
                    .filter_map(|p| index.get(&canon(p)).copied())
                    .collect();
                for w in used.windows(2) {
                    sets.union(w[0], w[1]);
                }
                for &i in &used {
                    vms.entry(i).or_default().push((d.name.clone(), d.running));
                }
            }
            let using = domains
                .iter()
                .filter(|d| d.disks.iter().any(|p| index.contains_key(&canon(p))))
                .count();
            LibvirtView {
                reachable: true,
                note: format!(
                    "{} domain(s) seen, {using} using images on {}",
                    domains.len(),
                    source.name
                ),
            }
        }
        Err(why) => LibvirtView {
            reachable: false,
            note: format!("not consulted, images grouped by backing chain only: {why}"),
        },
    };

    // Each set: its group name, kind, and whether it stays.
    let mut members: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
    for i in 0..found.len() {
        members.entry(sets.find(i)).or_default().push(i);
    }
    let rel = |p: &Path| {
        p.strip_prefix(&source_root)
            .unwrap_or(p)
            .display()
            .to_string()
    };
    let mut group_of: Vec<Option<String>> = vec![None; found.len()];
    let mut kind_of = vec![MoveKind::Offline; found.len()];
    let mut vms_of: Vec<Vec<String>> = vec![Vec::new(); found.len()];
    let mut blocked: BTreeMap<usize, String> = BTreeMap::new();
    for list in members.values() {
        let mut names: BTreeSet<String> = BTreeSet::new();
        let mut live = false;
        for i in list {
            for (n, running) in vms.get(i).into_iter().flatten() {
                names.insert(n.clone());
                live |= running;
            }
        }
        let group = if !names.is_empty() {
            Some(format!(
                "vm:{}",
                names.iter().cloned().collect::<Vec<_>>().join("+")
            ))
        } else if list.len() > 1 {
            // The chain's base: the member no other member's chain lacks.
            let base = list
                .iter()
                .find(|&&i| found[i].backing_here.is_empty())
                .unwrap_or(&list[0]);
            Some(format!("chain:{}", rel(&found[*base].path)))
        } else {
            None
        };
        let stay = list.iter().find_map(|i| stays.get(i).cloned());
        let problem = list.iter().find_map(|i| {
            found[*i]
                .problem
                .as_ref()
                .map(|p| format!("{}: {p}", rel(&found[*i].path)))
        });
        for &i in list {
            group_of[i].clone_from(&group);
            kind_of[i] = if live {
                MoveKind::Live
            } else {
                MoveKind::Offline
            };
            vms_of[i] = names.iter().cloned().collect();
            let why = match (&stay, &problem) {
                (Some(s), _) if stays.contains_key(&i) => Some(s.clone()),
                (Some(s), _) => Some(format!(
                    "stays with its group ({})",
                    s.trim_start_matches("stays: ")
                )),
                (None, Some(p)) => Some(format!("cannot be inspected ({p})")),
                (None, None) => None,
            };
            if let Some(w) = why {
                blocked.insert(i, w);
            }
        }
    }

    // Measure the targets and the source.
    let measure = |d: &DatastoreConfig| -> std::result::Result<Datastore, String> {
        let root = canon(&d.root);
        let u = datastore::usage(&root, Some(state_dir)).map_err(|e| e.to_string())?;
        let lat = datastore::latency(state_dir, &d.name, &root, LATENCY_MAX_AGE, false)
            .ok()
            .map(|l| l.latency_us);
        Ok(d.placement(u.capacity_bytes, u.free_bytes, lat))
    };
    let source_ds = measure(source).map_err(RunnerError::Refused)?;
    let mut target_ds = Vec::new();
    for t in &targets {
        match measure(t) {
            Ok(d) => target_ds.push(d),
            Err(e) => notes.push(format!("target {} left out: {e}", t.name)),
        }
    }

    // Datastores on one file system share its free space; placement counts it for each.
    {
        use std::os::unix::fs::MetadataExt;
        let mut by_dev: BTreeMap<u64, Vec<&str>> = BTreeMap::new();
        for d in std::iter::once(source).chain(targets.iter().copied()) {
            if let Ok(m) = std::fs::metadata(&d.root) {
                by_dev.entry(m.dev()).or_default().push(&d.name);
            }
        }
        for names in by_dev.values().filter(|n| n.len() > 1) {
            notes.push(format!(
                "{} share one file system: each is planned with all of its free space",
                names.join(", ")
            ));
        }
    }

    // Place what may move.
    let images: Vec<Image> = found
        .iter()
        .enumerate()
        .filter(|(i, _)| !blocked.contains_key(i))
        .map(|(i, f)| Image {
            id: rel(&f.path),
            allocated_bytes: f.allocated,
            virtual_size: f.virtual_size,
            group: group_of[i].clone(),
            source: source.name.clone(),
        })
        .collect();
    let placed =
        placement::place(&target_ds, &images).map_err(|e| RunnerError::msg(e.to_string()))?;
    let by_id: BTreeMap<String, usize> = found
        .iter()
        .enumerate()
        .map(|(i, f)| (rel(&f.path), i))
        .collect();

    // One scheduled move per group: a group is one job.
    let mut group_moves: BTreeMap<String, placement::Move> = BTreeMap::new();
    for m in &placed.moves {
        let key = m.group.clone().unwrap_or_else(|| m.id.clone());
        let e = group_moves
            .entry(key.clone())
            .or_insert_with(|| placement::Move {
                id: key,
                group: m.group.clone(),
                source: m.source.clone(),
                target: m.target.clone(),
                allocated_bytes: 0,
            });
        e.allocated_bytes = e.allocated_bytes.saturating_add(m.allocated_bytes);
    }
    // Largest first, as placement orders groups.
    let mut ordered: Vec<placement::Move> = group_moves.into_values().collect();
    ordered.sort_by(|a, b| {
        b.allocated_bytes
            .cmp(&a.allocated_bytes)
            .then(a.id.cmp(&b.id))
    });
    let mut all_ds = vec![source_ds.clone()];
    all_ds.extend(target_ds.iter().cloned());
    let waves = schedule::waves(&ordered, &all_ds, &caps);
    let wave_of: BTreeMap<&str, usize> = waves
        .iter()
        .enumerate()
        .flat_map(|(w, ids)| ids.iter().map(move |id| (id.as_str(), w)))
        .collect();

    let root_of = |name: &str| {
        targets
            .iter()
            .find(|t| t.name == name)
            .map(|t| t.root.clone())
            .unwrap_or_default()
    };
    let mut moves: Vec<PlannedMove> = placed
        .moves
        .iter()
        .filter_map(|m| {
            let i = *by_id.get(&m.id)?;
            let f = &found[i];
            let key = m.group.clone().unwrap_or_else(|| m.id.clone());
            Some(PlannedMove {
                path: f.path.clone(),
                format: f.format.clone(),
                virtual_size: f.virtual_size,
                allocated_bytes: f.allocated,
                group: m.group.clone(),
                vms: vms_of[i].clone(),
                kind: kind_of[i],
                target: m.target.clone(),
                target_path: root_of(&m.target).join(&m.id),
                wave: wave_of.get(key.as_str()).copied().unwrap_or(0) + 1,
            })
        })
        .collect();
    moves.sort_by(|a, b| a.wave.cmp(&b.wave).then(a.path.cmp(&b.path)));

    let mut unplaceable: Vec<Unmovable> = blocked
        .iter()
        .map(|(&i, why)| Unmovable {
            path: found[i].path.clone(),
            allocated_bytes: found[i].allocated,
            group: group_of[i].clone(),
            reason: why.clone(),
        })
        .collect();
    unplaceable.extend(placed.unplaceable.iter().filter_map(|u| {
        let i = *by_id.get(&u.id)?;
        Some(Unmovable {
            path: found[i].path.clone(),
            allocated_bytes: found[i].allocated,
            group: u.group.clone(),
            reason: u.reason.clone(),
        })
    }));
    unplaceable.sort_by(|a, b| a.path.cmp(&b.path));

    let moved: u64 = moves.iter().map(|m| m.allocated_bytes).sum();
    let space = |d: &Datastore, root: PathBuf, role: &'static str, delta: i128| Space {
        name: d.name.clone(),
        root,
        role,
        capacity_bytes: d.capacity_bytes,
        free_before_bytes: d.free_bytes,
        free_after_bytes: u64::try_from((i128::from(d.free_bytes) + delta).max(0))
            .unwrap_or(u64::MAX),
        reserve_bytes: d.reserve.bytes(d.capacity_bytes),
        latency_us: d.latency_us,
        max_copies: d.max_copies.unwrap_or(caps.per_datastore),
    };
    let mut spaces = vec![space(
        &source_ds,
        source_root.clone(),
        "source",
        if r.keep_source { 0 } else { i128::from(moved) },
    )];
    for d in &target_ds {
        let into: u64 = moves
            .iter()
            .filter(|m| m.target == d.name)
            .map(|m| m.allocated_bytes)
            .sum();
        spaces.push(space(d, root_of(&d.name), "target", -i128::from(into)));
    }
    Ok(EvacuationPlan {
        source: source.name.clone(),
        source_root: source_root.clone(),
        targets: targets.iter().map(|t| t.name.clone()).collect(),
        max_parallel: caps.per_host,
        keep_source: r.keep_source,
        libvirt,
        moves,
        unplaceable,
        waves,
        datastores: spaces,
        notes,
    })
}

/// Disjoint sets over `0..n`.
struct UnionFind(Vec<usize>);

impl UnionFind {
    fn new(n: usize) -> Self {
        UnionFind((0..n).collect())
    }
    fn find(&mut self, mut i: usize) -> usize {
        while self.0[i] != i {
            self.0[i] = self.0[self.0[i]];
            i = self.0[i];
        }
        i
    }
    fn union(&mut self, a: usize, b: usize) {
        let (a, b) = (self.find(a), self.find(b));
        if a != b {
            self.0[a.max(b)] = a.min(b);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recorded_backing_follows_header_names_across_directories() {
        let d = tempfile::tempdir().unwrap();
        let (x, y) = (d.path().join("x/deep"), d.path().join("y"));
        std::fs::create_dir_all(&x).unwrap();
        std::fs::create_dir_all(&y).unwrap();
        let base = y.join("base.qcow2");
        let top = x.join("top.qcow2");
        let ok = |args: &[&str]| {
            assert!(std::process::Command::new("qemu-img")
                .args(args)
                .status()
                .unwrap()
                .success());
        };
        ok(&["create", "-q", "-f", "qcow2", base.to_str().unwrap(), "1M"]);
        ok(&[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-b",
            "../../y/base.qcow2",
            "-F",
            "qcow2",
            top.to_str().unwrap(),
        ]);
        assert_eq!(
            recorded_backing(&top),
            vec![std::fs::canonicalize(&base).unwrap()]
        );
        assert!(recorded_backing(&base).is_empty());
    }

    #[test]
    fn union_find_joins_chains_and_domains_into_one_set() {
        let mut u = UnionFind::new(5);
        u.union(3, 1);
        u.union(1, 4);
        assert_eq!(u.find(4), u.find(3));
        assert_eq!(u.find(4), 1);
        assert_ne!(u.find(0), u.find(1));
        assert_eq!(u.find(2), 2);
    }

    #[test]
    fn an_unknown_source_is_refused_naming_the_configured_datastores() {
        let d = tempfile::tempdir().unwrap();
        let r = EvacuateRequest {
            source: "nosuch".into(),
            to: vec![],
            max_parallel: None,
            keep_source: false,
            connect: None,
        };
        let e = build(&r, &[], d.path()).unwrap_err().to_string();
        assert!(
            e.contains("\"nosuch\" is not configured (none are configured"),
            "{e}"
        );
        assert!(!e.contains('\n'));
    }
}
