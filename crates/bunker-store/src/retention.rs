//! Retention policies: which snapshots of one name to keep, and why.
//!
//! Pure: no I/O and no clock. Snapshots are taken newest first by id (commit
//! order, so a snapshot committed under a clock set years ahead never counts
//! as newer than later ones). Rules, as in restic and borg:
//! - `last N`: the N newest snapshots;
//! - `hourly|daily|weekly|monthly|yearly N`: the newest snapshot of each of
//!   the N most recent periods (UTC; weeks start on Monday) that have one;
//! - `within D`: every snapshot whose commit time is at most D before the
//!   newest one's (relative to the newest snapshot, not to the clock, so a
//!   clock jump cannot make it keep nothing; a snapshot dated after the
//!   newest, by a clock that was set ahead, is kept too).
//!
//! The newest snapshot is always kept, and a policy that keeps nothing is
//! refused: pruning never empties a name by accident.

use crate::calendar::civil_from_days;
use crate::{Error, Result, SnapshotId};

/// How many snapshots each rule keeps. All zero is refused.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Policy {
    pub last: u32,
    pub hourly: u32,
    pub daily: u32,
    pub weekly: u32,
    pub monthly: u32,
    pub yearly: u32,
    /// Keep everything committed within this many milliseconds of the newest.
    pub within_ms: Option<i64>,
}

impl Policy {
    pub fn keeps_nothing(&self) -> bool {
        self.last == 0
            && self.hourly == 0
            && self.daily == 0
            && self.weekly == 0
            && self.monthly == 0
            && self.yearly == 0
            && self.within_ms.is_none_or(|w| w <= 0)
    }
}

/// The fate of one snapshot, with the rules that keep it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decision {
    pub id: SnapshotId,
    pub created_unix_ms: i64,
    pub keep: bool,
    /// e.g. `["last", "daily"]`; empty for a snapshot that goes.
    pub reasons: Vec<&'static str>,
}

/// Decides for the snapshots of one name, given as (id, commit time).
/// Returns decisions newest first.
pub fn plan(snapshots: &[(SnapshotId, i64)], policy: &Policy) -> Result<Vec<Decision>> {
    if policy.keeps_nothing() {
        return Err(Error::Invalid(
            "this retention policy keeps nothing: give at least one --keep-* rule".into(),
        ));
    }
    let mut sorted: Vec<(SnapshotId, i64)> = snapshots.to_vec();
    sorted.sort_by_key(|s| std::cmp::Reverse(s.0));
    let mut out: Vec<Decision> = sorted
        .iter()
        .map(|&(id, t)| Decision {
            id,
            created_unix_ms: t,
            keep: false,
            reasons: Vec::new(),
        })
        .collect();
    let keep = |out: &mut Vec<Decision>, i: usize, why: &'static str| {
        out[i].keep = true;
        out[i].reasons.push(why);
    };
    for i in 0..(policy.last as usize).min(out.len()) {
        keep(&mut out, i, "last");
    }
    /// A bucket rule: its name, how many buckets it keeps, the bucket of a time.
    type Rule = (&'static str, u32, fn(i64) -> i64);
    let rules: [Rule; 5] = [
        ("hourly", policy.hourly, |t| t.div_euclid(3_600_000)),
        ("daily", policy.daily, |t| t.div_euclid(86_400_000)),
        // Day 0 (1970-01-01) was a Thursday: shift so weeks start on Monday.
        ("weekly", policy.weekly, |t| {
            (t.div_euclid(86_400_000) + 3).div_euclid(7)
        }),
        ("monthly", policy.monthly, |t| {
            let (y, m, _) = civil_from_days(t.div_euclid(86_400_000));
            y * 12 + m
        }),
        ("yearly", policy.yearly, |t| {
            civil_from_days(t.div_euclid(86_400_000)).0
        }),
    ];
    for (why, count, bucket) in rules {
        let mut last_bucket = None;
        let mut kept = 0;
        for i in 0..out.len() {
            if kept >= count {
                break;
            }
            let b = bucket(out[i].created_unix_ms);
            if last_bucket != Some(b) {
                last_bucket = Some(b);
                kept += 1;
                keep(&mut out, i, why);
            }
        }
    }
    if let (Some(within), Some(newest)) = (
        policy.within_ms.filter(|w| *w > 0),
        out.first().map(|d| d.created_unix_ms),
    ) {
        for i in 0..out.len() {
            if newest.saturating_sub(out[i].created_unix_ms) <= within {
                keep(&mut out, i, "within");
            }
        }
    }
    if let Some(first) = out.first_mut() {
        if !first.keep {
            first.keep = true;
            first.reasons.push("newest");
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const H: i64 = 3_600_000;
    const D: i64 = 24 * H;

    fn ids(decisions: &[Decision]) -> Vec<u64> {
        decisions
            .iter()
            .filter(|d| d.keep)
            .map(|d| d.id.0)
            .collect()
    }

    #[test]
    fn rules_keep_what_they_say() {
        // Ten days, two snapshots a day (09:00 and 21:00), ids in time order.
        let base = 20_000 * D;
        let snaps: Vec<(SnapshotId, i64)> = (0..20)
            .map(|i| {
                (
                    SnapshotId(i as u64 + 1),
                    base + (i / 2) * D + if i % 2 == 0 { 9 * H } else { 21 * H },
                )
            })
            .collect();
        let p = |f: fn(&mut Policy)| {
            let mut p = Policy::default();
            f(&mut p);
            ids(&plan(&snaps, &p).unwrap())
        };
        assert_eq!(p(|p| p.last = 3), vec![20, 19, 18]);
        assert_eq!(p(|p| p.daily = 3), vec![20, 18, 16]);
        assert_eq!(p(|p| p.hourly = 2), vec![20, 19]);
        assert_eq!(p(|p| p.within_ms = Some(D)), vec![20, 19, 18]);
        assert_eq!(p(|p| p.yearly = 5), vec![20]);
        let both = plan(
            &snaps,
            &Policy {
                last: 1,
                daily: 2,
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(both[0].reasons, vec!["last", "daily"]);
        assert_eq!(both[2].reasons, vec!["daily"]);
        assert!(!both[1].keep && both[1].reasons.is_empty());
    }

    #[test]
    fn a_policy_that_keeps_nothing_is_refused() {
        let e = plan(&[(SnapshotId(1), 0)], &Policy::default()).unwrap_err();
        assert!(e.to_string().contains("keeps nothing"), "{e}");
        assert!(plan(
            &[(SnapshotId(1), 0)],
            &Policy {
                within_ms: Some(0),
                ..Default::default()
            }
        )
        .is_err());
    }

    #[test]
    fn the_newest_survives_a_future_dated_older_snapshot() {
        // Snapshot 1 was committed with the clock 10 years ahead; 2 and 3
        // are later commits with a correct clock.
        let now = 20_000 * D;
        let snaps = [
            (SnapshotId(1), now + 3650 * D),
            (SnapshotId(2), now),
            (SnapshotId(3), now + H),
        ];
        let d = plan(
            &snaps,
            &Policy {
                daily: 1,
                ..Default::default()
            },
        )
        .unwrap();
        assert!(d.iter().find(|d| d.id == SnapshotId(3)).unwrap().keep);
        let d = plan(
            &snaps,
            &Policy {
                within_ms: Some(2 * H),
                ..Default::default()
            },
        )
        .unwrap();
        // `within` keeps the recent ones and, conservatively, the one dated
        // in the future.
        assert_eq!(ids(&d), vec![3, 2, 1]);
        // Snapshot 3 is the newest (highest id) whatever the clocks said.
        let d = plan(
            &snaps,
            &Policy {
                last: 1,
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(ids(&d), vec![3]);
    }

    /// Reference model: for bucket rules, a snapshot is kept by a rule iff it
    /// is the newest of its bucket and its bucket is among the N newest
    /// buckets that have a snapshot.
    fn model_bucket(snaps: &[(SnapshotId, i64)], n: u32, bucket: impl Fn(i64) -> i64) -> Vec<u64> {
        let mut sorted = snaps.to_vec();
        sorted.sort_by_key(|s| std::cmp::Reverse(s.0));
        let mut seen = Vec::new();
        let mut kept = Vec::new();
        for (id, t) in sorted {
            let b = bucket(t);
            if seen.last() != Some(&b) && (seen.len() as u32) < n {
                seen.push(b);
                kept.push(id.0);
            }
        }
        kept
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]
        #[test]
        fn newest_always_kept_and_rules_keep_exactly_their_share(
            gaps in proptest::collection::vec(0i64..(3 * D), 1..60),
            last in 0u32..5, daily in 0u32..5, hourly in 0u32..5, within_h in proptest::option::of(0i64..72),
        ) {
            let mut t = 20_000 * D;
            let snaps: Vec<(SnapshotId, i64)> = gaps.iter().enumerate().map(|(i, g)| { t += g; (SnapshotId(i as u64 + 1), t) }).collect();
            let policy = Policy { last, daily, hourly, within_ms: within_h.map(|h| h * H), ..Default::default() };
            match plan(&snaps, &policy) {
                Err(_) => prop_assert!(policy.keeps_nothing()),
                Ok(d) => {
                    prop_assert!(d[0].keep, "newest dropped");
                    prop_assert_eq!(d.len(), snaps.len());
                    let by_rule = |why: &str| -> Vec<u64> { d.iter().filter(|x| x.reasons.contains(&why)).map(|x| x.id.0).collect() };
                    prop_assert_eq!(by_rule("last"), snaps.iter().rev().take(last as usize).map(|s| s.0 .0).collect::<Vec<_>>());
                    prop_assert_eq!(by_rule("daily"), model_bucket(&snaps, daily, |t| t.div_euclid(D)));
                    prop_assert_eq!(by_rule("hourly"), model_bucket(&snaps, hourly, |t| t.div_euclid(H)));
                    let newest = snaps.last().unwrap().1;
                    let within: Vec<u64> = match within_h { Some(h) if h > 0 => snaps.iter().rev().filter(|s| newest - s.1 <= h * H).map(|s| s.0 .0).collect(), _ => Vec::new() };
                    prop_assert_eq!(by_rule("within"), within);
                    for x in &d {
                        prop_assert_eq!(x.keep, !x.reasons.is_empty());
                    }
                }
            }
        }
    }
}
