//! Scheduling: when each placed [`Move`] may start, as a pure function.
//!
//! [`may_start`] answers one question — given what runs now, which waiting moves may start —
//! so a batch job calls it whenever a move ends. At no time do more than
//! [`Caps::per_host`] moves run, nor more than a datastore's cap touch it (as source or
//! target). [`simulate`] and [`waves`] run it over a clock for tests and previews.

use crate::placement::{Datastore, Move};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Concurrency limits. The defaults are VMware's Storage vMotion limits: 2 moves per host,
/// 8 per datastore.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Caps {
    /// Most moves running at once on this host (0 counts as 1).
    pub per_host: u32,
    /// Most moves touching one datastore at once, for datastores without their own
    /// [`Datastore::max_copies`] (0 counts as 1).
    pub per_datastore: u32,
}

impl Default for Caps {
    fn default() -> Self {
        Caps {
            per_host: 2,
            per_datastore: 8,
        }
    }
}

/// The limits in force: per host, and per datastore name.
struct Limits<'a> {
    host: usize,
    default: usize,
    by_name: BTreeMap<&'a str, usize>,
}

impl<'a> Limits<'a> {
    // A cap of 0 would never let a move start; it is read as 1 so that a batch always ends.
    fn new(datastores: &'a [Datastore], caps: &Caps) -> Self {
        let cap = |c: u32| usize::try_from(c.max(1)).unwrap_or(usize::MAX);
        Limits {
            host: cap(caps.per_host),
            default: cap(caps.per_datastore),
            by_name: datastores
                .iter()
                .map(|d| {
                    (
                        d.name.as_str(),
                        cap(d.max_copies.unwrap_or(caps.per_datastore)),
                    )
                })
                .collect(),
        }
    }

    fn datastore(&self, name: &str) -> usize {
        self.by_name.get(name).copied().unwrap_or(self.default)
    }
}

/// The datastores a move touches, each once (a move within one datastore touches it once).
fn touched(m: &Move) -> impl Iterator<Item = &str> {
    let target = (m.target != m.source).then_some(m.target.as_str());
    std::iter::once(m.source.as_str()).chain(target)
}

/// Indexes into `pending` of the moves that may start now, given the moves `running`.
///
/// Moves are taken in `pending` order (the plan's order); one that would exceed a cap is
/// passed over and the next tried, so a busy datastore does not hold up moves elsewhere.
/// With nothing running, the first pending move may always start. Datastores not in
/// `datastores` get [`Caps::per_datastore`].
pub fn may_start(
    pending: &[Move],
    running: &[Move],
    datastores: &[Datastore],
    caps: &Caps,
) -> Vec<usize> {
    let limits = Limits::new(datastores, caps);
    let mut busy: BTreeMap<&str, usize> = BTreeMap::new();
    for m in running {
        for d in touched(m) {
            *busy.entry(d).or_default() += 1;
        }
    }
    let mut host = running.len();
    let mut start = Vec::new();
    for (n, m) in pending.iter().enumerate() {
        if host >= limits.host {
            break;
        }
        let fits = touched(m).all(|d| busy.get(d).copied().unwrap_or(0) < limits.datastore(d));
        if fits {
            for d in touched(m) {
                *busy.entry(d).or_default() += 1;
            }
            host += 1;
            start.push(n);
        }
    }
    start
}

/// One move in a [`simulate`]d batch: it runs from `start` until `end` (exclusive), in the
/// caller's time unit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Run {
    /// The move's image id.
    pub id: String,
    /// When it started.
    pub start: u64,
    /// When it ended (`start` + its duration, at least 1).
    pub end: u64,
}

/// Runs `moves` over a clock from 0, starting what [`may_start`] allows whenever a move
/// ends; `duration` gives each move's length in any unit (e.g. ms; 0 counts as 1, so each
/// move holds its slot for a while). Returns one [`Run`] per move, in start order.
pub fn simulate(
    moves: &[Move],
    datastores: &[Datastore],
    caps: &Caps,
    duration: impl Fn(&Move) -> u64,
) -> Vec<Run> {
    let mut pending: Vec<Move> = moves.to_vec();
    let mut running: Vec<(Move, u64)> = Vec::new();
    let mut runs = Vec::with_capacity(moves.len());
    let mut now = 0u64;
    loop {
        let current: Vec<Move> = running.iter().map(|(m, _)| m.clone()).collect();
        let starts = may_start(&pending, &current, datastores, caps);
        // Removed back to front so the earlier indexes stay valid; started in plan order.
        let mut started: Vec<Move> = starts.iter().rev().map(|&n| pending.remove(n)).collect();
        started.reverse();
        for m in started {
            let end = now.saturating_add(duration(&m).max(1));
            runs.push(Run {
                id: m.id.clone(),
                start: now,
                end,
            });
            running.push((m, end));
        }
        let Some(next) = running.iter().map(|(_, end)| *end).min() else {
            // Nothing runs: every move has started (may_start always starts one when idle).
            break;
        };
        now = next;
        running.retain(|(_, end)| *end > now);
    }
    runs
}

/// The start waves of `moves` if every move took the same time: each inner list starts
/// together once the one before it has ended.
pub fn waves(moves: &[Move], datastores: &[Datastore], caps: &Caps) -> Vec<Vec<String>> {
    let mut waves: Vec<Vec<String>> = Vec::new();
    let mut at = None;
    for run in simulate(moves, datastores, caps, |_| 1) {
        if at != Some(run.start) {
            waves.push(Vec::new());
            at = Some(run.start);
        }
        if let Some(w) = waves.last_mut() {
            w.push(run.id);
        }
    }
    waves
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::placement::{place, tests::arb_input, Reserve};
    use proptest::prelude::*;

    fn mv(id: &str, source: &str, target: &str) -> Move {
        Move {
            id: id.into(),
            group: None,
            source: source.into(),
            target: target.into(),
            allocated_bytes: 1,
        }
    }

    fn ds(name: &str, max_copies: Option<u32>) -> Datastore {
        Datastore {
            name: name.into(),
            capacity_bytes: 0,
            free_bytes: 0,
            reserve: Reserve::Bytes(0),
            latency_us: None,
            max_copies,
            bwlimit_bytes_per_sec: None,
        }
    }

    #[test]
    fn defaults_are_two_per_host_and_eight_per_datastore() {
        assert_eq!(
            Caps::default(),
            Caps {
                per_host: 2,
                per_datastore: 8
            }
        );
    }

    #[test]
    fn the_host_cap_limits_a_wave() {
        let moves = [mv("a", "s", "t"), mv("b", "s", "t"), mv("c", "s", "t")];
        assert_eq!(may_start(&moves, &[], &[], &Caps::default()), vec![0, 1]);
        assert_eq!(
            may_start(&moves[1..], &moves[..1], &[], &Caps::default()),
            vec![0]
        );
        assert_eq!(
            waves(&moves, &[], &Caps::default()),
            vec![vec!["a", "b"], vec!["c"]]
        );
    }

    #[test]
    fn a_busy_datastore_is_passed_over_not_waited_for() {
        // t takes one copy at a time; u's move starts beside the first.
        let stores = [ds("t", Some(1))];
        let caps = Caps {
            per_host: 4,
            per_datastore: 8,
        };
        let moves = [
            mv("a", "s", "t"),
            mv("b", "s", "t"),
            mv("c", "s", "u"),
            mv("d", "s", "t"),
        ];
        assert_eq!(may_start(&moves, &[], &stores, &caps), vec![0, 2]);
        assert_eq!(
            waves(&moves, &stores, &caps),
            vec![vec!["a", "c"], vec!["b"], vec!["d"]]
        );
    }

    #[test]
    fn the_source_counts_against_its_cap_too() {
        let stores = [ds("s", Some(2))];
        let caps = Caps {
            per_host: 8,
            per_datastore: 8,
        };
        let moves = [mv("a", "s", "t"), mv("b", "s", "u"), mv("c", "s", "v")];
        assert_eq!(
            waves(&moves, &stores, &caps),
            vec![vec!["a", "b"], vec!["c"]]
        );
    }

    #[test]
    fn a_zero_cap_counts_as_one_so_the_batch_ends() {
        let stores = [ds("t", Some(0))];
        let caps = Caps {
            per_host: 0,
            per_datastore: 0,
        };
        let moves = [mv("a", "s", "t"), mv("b", "s", "t")];
        assert_eq!(waves(&moves, &stores, &caps), vec![vec!["a"], vec!["b"]]);
    }

    #[test]
    fn simulate_starts_the_next_move_when_one_ends() {
        let moves = [
            mv("long", "s", "t"),
            mv("short", "s", "t"),
            mv("c", "s", "t"),
        ];
        let runs = simulate(&moves, &[], &Caps::default(), |m| {
            if m.id == "long" {
                10
            } else {
                3
            }
        });
        let got: Vec<(&str, u64, u64)> = runs
            .iter()
            .map(|r| (r.id.as_str(), r.start, r.end))
            .collect();
        assert_eq!(got, vec![("long", 0, 10), ("short", 0, 3), ("c", 3, 6)]);
    }

    #[test]
    fn nothing_to_move_is_no_waves() {
        assert!(waves(&[], &[], &Caps::default()).is_empty());
    }

    fn arb_batch() -> impl Strategy<Value = (Vec<Datastore>, Vec<Move>, Caps, Vec<u64>)> {
        (
            arb_input(),
            (0u32..4, 0u32..10),
            prop::collection::vec(0u64..20, 20),
        )
            .prop_map(|((stores, images), (per_host, per_datastore), lengths)| {
                let plan = place(&stores, &images).unwrap();
                let caps = Caps {
                    per_host,
                    per_datastore,
                };
                (stores, plan.moves, caps, lengths)
            })
    }

    proptest! {
        #[test]
        fn never_over_a_cap_and_every_move_runs_once(
            (stores, moves, caps, lengths) in arb_batch()
        ) {
            let length = |m: &Move| {
                let n: usize = m.id.trim_start_matches("img").parse().unwrap_or(0);
                lengths[n % lengths.len()]
            };
            let runs = simulate(&moves, &stores, &caps, length);
            let mut ids: Vec<&str> = runs.iter().map(|r| r.id.as_str()).collect();
            ids.sort_unstable();
            let mut want: Vec<&str> = moves.iter().map(|m| m.id.as_str()).collect();
            want.sort_unstable();
            prop_assert_eq!(ids, want);

            let limits = Limits::new(&stores, &caps);
            let by_id: BTreeMap<&str, &Move> = moves.iter().map(|m| (m.id.as_str(), m)).collect();
            for at in runs.iter().map(|r| r.start) {
                let live: Vec<&Move> = runs.iter()
                    .filter(|r| r.start <= at && at < r.end)
                    .map(|r| by_id[r.id.as_str()])
                    .collect();
                prop_assert!(live.len() <= limits.host, "{} running at {at}", live.len());
                let mut per: BTreeMap<&str, usize> = BTreeMap::new();
                for m in &live {
                    for d in touched(m) {
                        *per.entry(d).or_default() += 1;
                    }
                }
                for (d, n) in per {
                    prop_assert!(n <= limits.datastore(d), "{n} on {d} at {at}");
                }
            }
        }

        #[test]
        fn scheduling_is_deterministic((stores, moves, caps, _l) in arb_batch()) {
            prop_assert_eq!(waves(&moves, &stores, &caps), waves(&moves, &stores, &caps));
        }
    }
}
