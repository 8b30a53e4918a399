//! Placement: which datastore each image moves to, as a pure function over plain data.
//!
//! The I/O edges measure the datastores (statvfs, a latency probe) and inspect the images;
//! [`place`] decides. The disks of one VM (a group) move together to one target. A target is
//! chosen by the most free space after its reserve, then the lowest measured latency, then
//! the name, and is never overcommitted: what is placed on it never exceeds its free bytes
//! minus its reserve. Every image ends up either in [`Plan::moves`] or in
//! [`Plan::unplaceable`] with a one-line reason.

use crate::size::{format_bytes, parse_size};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use thiserror::Error;

/// Space a datastore keeps free: never counted as room for a move.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reserve {
    /// A fixed number of bytes.
    Bytes(u64),
    /// A share of the datastore's capacity, in percent (0-100).
    Percent(u8),
}

impl Default for Reserve {
    fn default() -> Self {
        Reserve::Bytes(0)
    }
}

/// A reserve could not be parsed.
#[derive(Debug, Error, PartialEq, Eq)]
#[error("invalid reserve {input:?}: {reason} (use a percentage of the capacity like \"10%\", or a size like \"20G\")")]
pub struct ReserveError {
    /// The text as given.
    pub input: String,
    /// What is wrong with it.
    pub reason: String,
}

impl Reserve {
    /// Parses `"10%"` (of the capacity, 0-100) or a size (`"20G"`, `"4096"`; binary units).
    ///
    /// # Errors
    /// [`ReserveError`] for a percentage outside 0-100 or a size [`parse_size`] refuses.
    pub fn parse(input: &str) -> Result<Reserve, ReserveError> {
        let err = |reason: String| ReserveError {
            input: input.to_string(),
            reason,
        };
        let s = input.trim();
        if let Some(pct) = s.strip_suffix('%') {
            let n: u8 = pct
                .trim()
                .parse()
                .map_err(|_| err("not a whole percentage".into()))?;
            if n > 100 {
                return Err(err("more than 100%".into()));
            }
            return Ok(Reserve::Percent(n));
        }
        parse_size(s)
            .map(Reserve::Bytes)
            .map_err(|e| err(e.reason.into()))
    }

    /// The reserve in bytes for a datastore of `capacity_bytes` (a percentage rounds up, so
    /// the reserve is never smaller than asked).
    pub fn bytes(&self, capacity_bytes: u64) -> u64 {
        match *self {
            Reserve::Bytes(b) => b,
            Reserve::Percent(p) => {
                let b = (u128::from(capacity_bytes) * u128::from(p.min(100))).div_ceil(100);
                u64::try_from(b).unwrap_or(u64::MAX)
            }
        }
    }
}

impl std::fmt::Display for Reserve {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Reserve::Bytes(b) => write!(f, "{b}"),
            Reserve::Percent(p) => write!(f, "{p}%"),
        }
    }
}

/// Serialized as `"10%"` or a number of bytes.
impl Serialize for Reserve {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Reserve::Bytes(b) => s.serialize_u64(*b),
            Reserve::Percent(_) => s.serialize_str(&self.to_string()),
        }
    }
}

/// Accepts a number of bytes, `"10%"` or a size string (`"20G"`).
impl<'de> Deserialize<'de> for Reserve {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Bytes(u64),
            Text(String),
        }
        match Raw::deserialize(d).map_err(|_| {
            serde::de::Error::custom(
                "a reserve is a number of bytes, a size like \"20G\" or a percentage like \"10%\"",
            )
        })? {
            Raw::Bytes(b) => Ok(Reserve::Bytes(b)),
            Raw::Text(t) => Reserve::parse(&t).map_err(serde::de::Error::custom),
        }
    }
}

/// A datastore as placement and scheduling see it: measured facts plus configured limits.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Datastore {
    /// Its configured name; unique among the datastores given to [`place`].
    pub name: String,
    /// The file system's size, bytes.
    pub capacity_bytes: u64,
    /// Free for unprivileged users now (`f_bavail * f_frsize`), bytes.
    pub free_bytes: u64,
    /// What is kept free and never used for moves.
    pub reserve: Reserve,
    /// Measured latency of a small direct-I/O write+read, µs; `None` when not measured
    /// (ranked after every measured one).
    pub latency_us: Option<u64>,
    /// Most copies that may touch it at once, as source or target; `None`: the default
    /// of [`Caps::per_datastore`].
    pub max_copies: Option<u32>,
    /// Bandwidth cap for copies touching it, bytes/s; `None`: unlimited.
    pub bwlimit_bytes_per_sec: Option<u64>,
}

impl Datastore {
    /// Bytes that moves may use: free minus the reserve (0 when the reserve exceeds it).
    pub fn usable_bytes(&self) -> u64 {
        self.free_bytes
            .saturating_sub(self.reserve.bytes(self.capacity_bytes))
    }
}

/// One image to move.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Image {
    /// Its id (typically the path); unique among the images given to [`place`].
    pub id: String,
    /// Bytes the copy will need on the target (allocated size plus metadata), bytes.
    pub allocated_bytes: u64,
    /// Guest-visible size, bytes (reported, not used to decide).
    pub virtual_size: u64,
    /// The VM (or other group) it belongs to: images of one group move to one target.
    /// `None`: the image is a group of its own.
    pub group: Option<String>,
    /// Name of the datastore it is on now; never chosen as its target.
    pub source: String,
}

impl Image {
    /// Its group's key: a named group, or the image alone (an id never merges with a
    /// group of the same name).
    fn group_key(&self) -> (bool, &str) {
        match &self.group {
            Some(g) => (true, g),
            None => (false, &self.id),
        }
    }
}

/// A decided move: one image, from its source to a target datastore.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Move {
    /// The image's id.
    pub id: String,
    /// The image's group, as given.
    pub group: Option<String>,
    /// Datastore it is on.
    pub source: String,
    /// Datastore it moves to.
    pub target: String,
    /// Bytes it takes on the target, bytes.
    pub allocated_bytes: u64,
}

/// An image no datastore can take, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Unplaceable {
    /// The image's id.
    pub id: String,
    /// The image's group, as given.
    pub group: Option<String>,
    /// One line for people, e.g. "needs 40.0 GiB, the most any target has after its
    /// reserve is 12.0 GiB (on b)".
    pub reason: String,
}

/// The outcome of [`place`]: every image given is in exactly one of the two lists.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Plan {
    /// Moves in the order they were decided (largest group first; members by id).
    pub moves: Vec<Move>,
    /// Images left where they are, by id.
    pub unplaceable: Vec<Unplaceable>,
}

/// The input to [`place`] is not well formed.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum PlacementError {
    /// Two datastores share a name.
    #[error("datastore {0:?} is named twice (give each datastore its own name)")]
    DuplicateDatastore(String),
    /// Two images share an id.
    #[error("image {0:?} is listed twice (move each image once)")]
    DuplicateImage(String),
}

/// Places `images` on `datastores`.
///
/// Groups are placed largest first (their summed `allocated_bytes`; ties by group name),
/// which packs better than input order and makes the result independent of it. Each group
/// goes to the datastore, other than any of its members' sources, with the most usable
/// bytes left after the reserve and what was already placed there, then the lowest
/// `latency_us` (unmeasured last), then the name. A group that fits nowhere is named
/// unplaceable, member by member, and takes no space.
///
/// # Errors
/// [`PlacementError`] when names or ids repeat.
pub fn place(datastores: &[Datastore], images: &[Image]) -> Result<Plan, PlacementError> {
    let mut left: BTreeMap<&str, (u64, &Datastore)> = BTreeMap::new();
    for d in datastores {
        if left.insert(&d.name, (d.usable_bytes(), d)).is_some() {
            return Err(PlacementError::DuplicateDatastore(d.name.clone()));
        }
    }
    let mut groups: BTreeMap<(bool, &str), Vec<&Image>> = BTreeMap::new();
    let mut ids = BTreeSet::new();
    for i in images {
        if !ids.insert(i.id.as_str()) {
            return Err(PlacementError::DuplicateImage(i.id.clone()));
        }
        groups.entry(i.group_key()).or_default().push(i);
    }
    let mut order: Vec<((bool, &str), Vec<&Image>, u64)> = groups
        .into_iter()
        .map(|(k, mut members)| {
            members.sort_by(|a, b| a.id.cmp(&b.id));
            let need = members
                .iter()
                .fold(0u64, |s, i| s.saturating_add(i.allocated_bytes));
            (k, members, need)
        })
        .collect();
    order.sort_by(|a, b| b.2.cmp(&a.2).then_with(|| a.0.cmp(&b.0)));

    let mut plan = Plan::default();
    for (key, members, need) in order {
        let sources: BTreeSet<&str> = members.iter().map(|i| i.source.as_str()).collect();
        let candidates: Vec<(&str, u64, Option<u64>)> = left
            .iter()
            .filter(|(name, _)| !sources.contains(*name))
            .map(|(name, (room, d))| (*name, *room, d.latency_us))
            .collect();
        let best = candidates.iter().filter(|c| c.1 >= need).min_by(|a, b| {
            b.1.cmp(&a.1)
                .then_with(|| latency_rank(a.2).cmp(&latency_rank(b.2)))
                .then_with(|| a.0.cmp(b.0))
        });
        match best {
            Some(&(target, _, _)) => {
                if let Some((room, _)) = left.get_mut(target) {
                    *room -= need;
                }
                plan.moves.extend(members.iter().map(|i| Move {
                    id: i.id.clone(),
                    group: i.group.clone(),
                    source: i.source.clone(),
                    target: target.to_string(),
                    allocated_bytes: i.allocated_bytes,
                }));
            }
            None => {
                let reason = why_unplaceable(key.1, &members, need, &sources, &candidates);
                plan.unplaceable.extend(members.iter().map(|i| Unplaceable {
                    id: i.id.clone(),
                    group: i.group.clone(),
                    reason: reason.clone(),
                }));
            }
        }
    }
    plan.unplaceable.sort_by(|a, b| a.id.cmp(&b.id));
    Ok(plan)
}

/// Measured latencies first, lowest first.
fn latency_rank(latency_us: Option<u64>) -> (bool, u64) {
    (latency_us.is_none(), latency_us.unwrap_or(0))
}

fn why_unplaceable(
    key: &str,
    members: &[&Image],
    need: u64,
    sources: &BTreeSet<&str>,
    candidates: &[(&str, u64, Option<u64>)],
) -> String {
    let what = if members.len() > 1 {
        format!(
            "{key} needs {} for its {} disks",
            format_bytes(need),
            members.len()
        )
    } else {
        format!("needs {}", format_bytes(need))
    };
    let most = candidates
        .iter()
        .max_by(|a, b| a.1.cmp(&b.1).then_with(|| b.0.cmp(a.0)));
    match most {
        Some((name, room, _)) => format!(
            "{what}, the most any target has after its reserve is {} (on {name})",
            format_bytes(*room)
        ),
        None => {
            let list: Vec<&str> = sources.iter().copied().collect();
            format!(
                "{what}, and there is no datastore other than its source {} (configure another datastore)",
                list.join(", ")
            )
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use proptest::prelude::*;

    const GIB: u64 = 1 << 30;

    fn ds(name: &str, free_gib: u64, latency_us: Option<u64>) -> Datastore {
        Datastore {
            name: name.into(),
            capacity_bytes: 100 * GIB,
            free_bytes: free_gib * GIB,
            reserve: Reserve::Bytes(0),
            latency_us,
            max_copies: None,
            bwlimit_bytes_per_sec: None,
        }
    }

    fn img(id: &str, gib: u64, group: Option<&str>, source: &str) -> Image {
        Image {
            id: id.into(),
            allocated_bytes: gib * GIB,
            virtual_size: 2 * gib * GIB,
            group: group.map(Into::into),
            source: source.into(),
        }
    }

    fn targets(plan: &Plan) -> Vec<(&str, &str)> {
        plan.moves
            .iter()
            .map(|m| (m.id.as_str(), m.target.as_str()))
            .collect()
    }

    #[test]
    fn reserve_parses_percent_and_sizes() {
        assert_eq!(Reserve::parse("10%"), Ok(Reserve::Percent(10)));
        assert_eq!(Reserve::parse(" 0% "), Ok(Reserve::Percent(0)));
        assert_eq!(Reserve::parse("20G"), Ok(Reserve::Bytes(20 * GIB)));
        assert_eq!(Reserve::parse("4096"), Ok(Reserve::Bytes(4096)));
        let e = Reserve::parse("120%").unwrap_err();
        assert!(e.to_string().contains("\"120%\""), "{e}");
        assert!(e.to_string().contains("more than 100%"), "{e}");
        assert!(Reserve::parse("ten%").is_err());
        assert!(Reserve::parse("12X").is_err());
    }

    #[test]
    fn reserve_percent_rounds_up_and_never_overflows() {
        assert_eq!(Reserve::Percent(10).bytes(1000), 100);
        assert_eq!(Reserve::Percent(10).bytes(1001), 101);
        assert_eq!(Reserve::Percent(100).bytes(u64::MAX), u64::MAX);
        assert_eq!(Reserve::Bytes(7).bytes(0), 7);
    }

    #[test]
    fn reserve_deserializes_from_numbers_and_strings() {
        let r: Reserve = serde_json::from_str("\"10%\"").unwrap();
        assert_eq!(r, Reserve::Percent(10));
        let r: Reserve = serde_json::from_str("1024").unwrap();
        assert_eq!(r, Reserve::Bytes(1024));
        let r: Reserve = serde_json::from_str("\"1K\"").unwrap();
        assert_eq!(r, Reserve::Bytes(1024));
        assert!(serde_json::from_str::<Reserve>("-3").is_err());
        assert_eq!(
            serde_json::to_string(&Reserve::Percent(5)).unwrap(),
            "\"5%\""
        );
    }

    #[test]
    fn usable_bytes_subtract_the_reserve_and_stop_at_zero() {
        let mut d = ds("a", 50, None);
        d.reserve = Reserve::Percent(10);
        assert_eq!(d.usable_bytes(), 40 * GIB);
        d.reserve = Reserve::Bytes(60 * GIB);
        assert_eq!(d.usable_bytes(), 0);
    }

    #[test]
    fn places_on_the_target_with_most_room_after_the_reserve() {
        let mut b = ds("b", 60, Some(100));
        b.reserve = Reserve::Percent(30); // 60 - 30 = 30 GiB usable
        let stores = [ds("src", 90, None), ds("a", 40, Some(900)), b];
        let plan = place(&stores, &[img("x", 10, None, "src")]).unwrap();
        assert_eq!(targets(&plan), vec![("x", "a")]);
        assert!(plan.unplaceable.is_empty());
    }

    #[test]
    fn equal_room_goes_to_the_lowest_latency_then_the_name() {
        let stores = [
            ds("src", 90, None),
            ds("c", 40, None),
            ds("b", 40, Some(300)),
            ds("a", 40, Some(500)),
        ];
        let plan = place(&stores, &[img("x", 1, None, "src")]).unwrap();
        assert_eq!(targets(&plan), vec![("x", "b")]);

        let stores = [ds("src", 90, None), ds("d", 40, None), ds("c", 40, None)];
        let plan = place(&stores, &[img("x", 1, None, "src")]).unwrap();
        assert_eq!(targets(&plan), vec![("x", "c")]);
    }

    #[test]
    fn never_places_on_the_source_even_with_most_room() {
        let stores = [ds("src", 99, Some(1)), ds("a", 5, Some(900))];
        let plan = place(&stores, &[img("x", 4, None, "src")]).unwrap();
        assert_eq!(targets(&plan), vec![("x", "a")]);
    }

    #[test]
    fn places_largest_groups_first_and_spreads_by_room_left() {
        // a: 30 GiB, b: 25 GiB. vm1 (20) → a (30 → 10); vm2 (15) → b (25 → 10);
        // y (8): a and b have 10 left, a has the lower latency.
        let stores = [
            ds("src", 0, None),
            ds("a", 30, Some(100)),
            ds("b", 25, Some(200)),
        ];
        let images = [
            img("y", 8, None, "src"),
            img("vm2-disk0", 15, Some("vm2"), "src"),
            img("vm1-disk1", 5, Some("vm1"), "src"),
            img("vm1-disk0", 15, Some("vm1"), "src"),
        ];
        let plan = place(&stores, &images).unwrap();
        assert_eq!(
            targets(&plan),
            vec![
                ("vm1-disk0", "a"),
                ("vm1-disk1", "a"),
                ("vm2-disk0", "b"),
                ("y", "a"),
            ]
        );
        assert!(plan.unplaceable.is_empty());
    }

    #[test]
    fn a_group_too_big_for_any_target_is_unplaceable_with_the_numbers() {
        let mut b = ds("b", 20, None);
        b.reserve = Reserve::Bytes(8 * GIB);
        let stores = [ds("src", 0, None), ds("a", 10, None), b];
        let images = [
            img("d0", 30, Some("web01"), "src"),
            img("d1", 10, Some("web01"), "src"),
            img("small", 40, None, "src"),
        ];
        let plan = place(&stores, &images).unwrap();
        assert!(plan.moves.is_empty());
        assert_eq!(plan.unplaceable.len(), 3);
        assert_eq!(plan.unplaceable[0].id, "d0");
        assert_eq!(
            plan.unplaceable[0].reason,
            "web01 needs 40.0 GiB for its 2 disks, the most any target has after its reserve is 12.0 GiB (on b)"
        );
        assert_eq!(plan.unplaceable[1].reason, plan.unplaceable[0].reason);
        assert_eq!(
            plan.unplaceable[2].reason,
            "needs 40.0 GiB, the most any target has after its reserve is 12.0 GiB (on b)"
        );
    }

    #[test]
    fn an_image_with_only_its_source_configured_says_so() {
        let plan = place(&[ds("src", 90, None)], &[img("x", 1, None, "src")]).unwrap();
        assert_eq!(
            plan.unplaceable[0].reason,
            "needs 1.0 GiB, and there is no datastore other than its source src (configure another datastore)"
        );
    }

    #[test]
    fn a_group_spanning_two_sources_avoids_both() {
        let stores = [ds("s1", 90, None), ds("s2", 80, None), ds("t", 10, None)];
        let images = [
            img("d0", 2, Some("vm"), "s1"),
            img("d1", 2, Some("vm"), "s2"),
        ];
        let plan = place(&stores, &images).unwrap();
        assert_eq!(targets(&plan), vec![("d0", "t"), ("d1", "t")]);
    }

    #[test]
    fn repeated_names_are_refused() {
        let stores = [ds("a", 1, None), ds("a", 2, None)];
        assert_eq!(
            place(&stores, &[]),
            Err(PlacementError::DuplicateDatastore("a".into()))
        );
        let images = [img("x", 1, None, "a"), img("x", 1, None, "a")];
        assert_eq!(
            place(&[ds("a", 1, None)], &images),
            Err(PlacementError::DuplicateImage("x".into()))
        );
    }

    pub(crate) fn arb_datastores() -> impl Strategy<Value = Vec<Datastore>> {
        prop::collection::vec(
            (
                0u64..200,
                0u64..100,
                prop_oneof![
                    (0u64..50).prop_map(|g| Reserve::Bytes(g * GIB / 4)),
                    (0u8..=100).prop_map(Reserve::Percent)
                ],
                prop::option::of(1u64..5000),
                prop::option::of(0u32..5),
            ),
            1..6,
        )
        .prop_map(|v| {
            v.into_iter()
                .enumerate()
                .map(|(n, (cap, free_pct, reserve, latency_us, max_copies))| {
                    let capacity_bytes = cap * GIB;
                    Datastore {
                        name: format!("ds{n}"),
                        capacity_bytes,
                        free_bytes: capacity_bytes / 100 * free_pct,
                        reserve,
                        latency_us,
                        max_copies,
                        bwlimit_bytes_per_sec: None,
                    }
                })
                .collect()
        })
    }

    pub(crate) fn arb_images(stores: usize) -> impl Strategy<Value = Vec<Image>> {
        prop::collection::vec((0u64..64 * GIB, prop::option::of(0u8..6), 0..stores), 0..20)
            .prop_map(|v| {
                v.into_iter()
                    .enumerate()
                    .map(|(n, (bytes, group, src))| Image {
                        id: format!("img{n:02}"),
                        allocated_bytes: bytes,
                        virtual_size: bytes * 2,
                        group: group.map(|g| format!("vm{g}")),
                        source: format!("ds{src}"),
                    })
                    .collect()
            })
    }

    pub(crate) fn arb_input() -> impl Strategy<Value = (Vec<Datastore>, Vec<Image>)> {
        arb_datastores().prop_flat_map(|d| {
            let n = d.len();
            (Just(d), arb_images(n))
        })
    }

    proptest! {
        #[test]
        fn reserve_parse_never_panics(s in ".{0,24}") {
            let _ = Reserve::parse(&s);
        }

        #[test]
        fn reserve_never_exceeds_the_capacity_as_a_percentage(cap in any::<u64>(), p in 0u8..=100) {
            prop_assert!(Reserve::Percent(p).bytes(cap) <= cap);
        }

        #[test]
        fn never_over_the_reserve_nor_on_the_source((stores, images) in arb_input()) {
            let plan = place(&stores, &images).unwrap();
            for d in &stores {
                let placed: u64 = plan.moves.iter()
                    .filter(|m| m.target == d.name)
                    .map(|m| m.allocated_bytes)
                    .sum();
                prop_assert!(placed <= d.usable_bytes(), "{} over: {placed}", d.name);
            }
            for m in &plan.moves {
                prop_assert_ne!(&m.source, &m.target);
            }
        }

        #[test]
        fn every_image_placed_or_named_with_a_reason((stores, images) in arb_input()) {
            let plan = place(&stores, &images).unwrap();
            let mut seen: Vec<&str> = plan.moves.iter().map(|m| m.id.as_str())
                .chain(plan.unplaceable.iter().map(|u| u.id.as_str()))
                .collect();
            seen.sort_unstable();
            let mut want: Vec<&str> = images.iter().map(|i| i.id.as_str()).collect();
            want.sort_unstable();
            prop_assert_eq!(seen, want);
            for u in &plan.unplaceable {
                prop_assert!(u.reason.starts_with("needs") || u.reason.contains(" needs "));
                prop_assert!(!u.reason.contains('\n'));
            }
        }

        #[test]
        fn group_members_land_together((stores, images) in arb_input()) {
            let plan = place(&stores, &images).unwrap();
            let mut target_of: BTreeMap<&str, &str> = BTreeMap::new();
            for m in &plan.moves {
                if let Some(g) = &m.group {
                    let t = target_of.entry(g).or_insert(&m.target);
                    prop_assert_eq!(*t, m.target.as_str());
                }
            }
            for u in &plan.unplaceable {
                if let Some(g) = &u.group {
                    prop_assert!(!target_of.contains_key(g.as_str()), "{g} split");
                }
            }
        }

        #[test]
        fn deterministic_whatever_the_input_order(
            (stores, images) in arb_input(),
            (rs, ri, rev) in (0usize..8, 0usize..32, any::<bool>()),
        ) {
            let plan = place(&stores, &images).unwrap();
            prop_assert_eq!(&place(&stores, &images).unwrap(), &plan);
            // Reordered input: rotated, and maybe reversed.
            let (mut s2, mut i2) = (stores.clone(), images.clone());
            let (rs, ri) = (rs % s2.len(), ri % i2.len().max(1));
            s2.rotate_left(rs);
            i2.rotate_left(ri);
            if rev {
                i2.reverse();
                s2.reverse();
            }
            prop_assert_eq!(place(&s2, &i2).unwrap(), plan);
        }
    }
}
