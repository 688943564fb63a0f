//! `GET /v1/status`: per snapshot name, what the status page shows beyond
//! `stats` and `sync`: stored bytes per day over the last 30 days, the
//! latest snapshot, the newest verify and drill, and the space left with
//! its forecast (docs/API.md, "GET /v1/status").
//!
//! Cost: one listing of the snapshot headers (what `GET /v1/snapshots`
//! reads), a lookup in the in-memory checks per snapshot, and one
//! `statvfs`. The answer holds one entry per name, not per snapshot, so it
//! stays small however many snapshots a name has. Scoped like the
//! listing: only snapshots the token may read count, so a scoped token
//! learns nothing of other names (the growth forecast, like the totals of
//! `stats`, is repository-wide and names none).

use std::collections::BTreeMap;
use std::sync::Arc;

use bunker_api::{Check, LatestSnapshot, NameStatus, Space, Status, STATUS_DAYS};
use hyper::StatusCode;

use super::{blocking, can_read};
use crate::config::StorageKind;
use crate::reply::{json_response, Reply};
use crate::state::State;
use crate::tokens::Principal;

const DAY_MS: i64 = 86_400_000;

pub(super) async fn status(state: &Arc<State>, p: &Principal) -> Reply {
    let st = state.clone();
    let p = p.clone();
    let status = blocking(move || {
        let all = st.repo.list(None).map_err(|e| st.store_error(e))?;
        // The store's clock: the one snapshots' creation times come from.
        let now = bunker_store::clock::now_unix_ms();
        let space = space(&st, &all, now);
        let mut names: BTreeMap<&str, NameStatus> = BTreeMap::new();
        let first_day = first_day(now);
        for s in all.iter().filter(|s| can_read(&p, &s.name, s.creator)) {
            let n = names.entry(&s.name).or_insert_with(|| NameStatus {
                name: s.name.clone(),
                snapshots: 0,
                logical_bytes: 0,
                latest: latest(s),
                stored_bytes_per_day: vec![0; STATUS_DAYS],
                new_raw_bytes: 0,
                new_stored_bytes: 0,
                dedup_ratio: 0.0,
                compression_ratio: 0.0,
                last_verify: None,
                last_drill: None,
                last_server_drill: None,
            });
            n.snapshots += 1;
            n.logical_bytes += s.size;
            n.new_raw_bytes += s.new_raw_bytes;
            n.new_stored_bytes += s.new_bytes;
            if s.created_unix_ms >= n.latest.created_unix_ms {
                n.latest = latest(s);
            }
            if let Some(day) = day_index(first_day, s.created_unix_ms) {
                n.stored_bytes_per_day[day] += s.new_bytes;
            }
            let r = st.checks.get(&s.name, s.id.0);
            newer(&mut n.last_verify, r.verify);
            newer(&mut n.last_drill, r.drill);
            newer(&mut n.last_server_drill, r.server_drill);
        }
        let ratio = |a: u64, b: u64| if b == 0 { 0.0 } else { a as f64 / b as f64 };
        let names = names
            .into_values()
            .map(|mut n| {
                n.dedup_ratio = ratio(n.logical_bytes, n.new_raw_bytes);
                n.compression_ratio = ratio(n.new_raw_bytes, n.new_stored_bytes);
                n
            })
            .collect();
        Ok(Status {
            now_unix_ms: now,
            drill_interval_seconds: st.config.drill_interval_secs,
            first_day_unix_ms: first_day,
            names,
            space,
        })
    })
    .await?;
    Ok(json_response(StatusCode::OK, &status))
}

fn latest(s: &bunker_store::SnapshotInfo) -> LatestSnapshot {
    LatestSnapshot {
        id: s.id.0,
        created_unix_ms: s.created_unix_ms,
        size_bytes: s.size,
        source: s.source.clone(),
    }
}

fn newer(slot: &mut Option<Check>, c: Option<Check>) {
    if let Some(c) = c {
        if slot.as_ref().is_none_or(|s| s.at_unix_ms <= c.at_unix_ms) {
            *slot = Some(c);
        }
    }
}

/// UTC midnight starting the first of the `STATUS_DAYS` days ending today.
fn first_day(now_ms: i64) -> i64 {
    now_ms.div_euclid(DAY_MS) * DAY_MS - (STATUS_DAYS as i64 - 1) * DAY_MS
}

/// Which of the days from `first_day` holds `at_ms`; `None` outside them
/// (older, or in the future by the server's clock).
fn day_index(first_day: i64, at_ms: i64) -> Option<usize> {
    let d = (at_ms - first_day).div_euclid(DAY_MS);
    usize::try_from(d).ok().filter(|&d| d < STATUS_DAYS)
}

/// Free space of the data directory and the days it lasts at the pack
/// growth of the snapshots of the last `STATUS_DAYS` days (every name).
fn space(st: &State, all: &[bunker_store::SnapshotInfo], now: i64) -> Space {
    let (free, total) = match st.config.storage.kind {
        StorageKind::Local => match rustix::fs::statvfs(&st.config.data) {
            Ok(v) => (
                Some(v.f_bavail.saturating_mul(v.f_frsize)),
                Some(v.f_blocks.saturating_mul(v.f_frsize)),
            ),
            Err(e) => {
                tracing::warn!("statvfs of the data directory: {e}");
                (None, None)
            }
        },
        StorageKind::S3 => (None, None),
    };
    let since = now - STATUS_DAYS as i64 * DAY_MS;
    let recent = all.iter().filter(|s| s.created_unix_ms > since);
    let oldest = recent.clone().map(|s| s.created_unix_ms).min();
    let added: u64 = recent.map(|s| s.new_bytes).sum();
    // Over the days the window really covers: a repository a week old
    // grows by its week's bytes over seven days, not thirty.
    let days = oldest.map_or(1.0, |o| ((now - o) as f64 / DAY_MS as f64).max(1.0));
    let growth = added as f64 / days;
    let full_in_days = match free {
        Some(f) if growth > 0.0 => Some(f as f64 / growth),
        _ => None,
    };
    Space {
        free_bytes: free,
        total_bytes: total,
        growth_bytes_per_day: growth,
        full_in_days,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn days_are_utc_and_thirty_ending_today() {
        let now = 20_000 * DAY_MS + 5 * 3_600_000;
        let first = first_day(now);
        assert_eq!(first, (20_000 - 29) * DAY_MS);
        assert_eq!(day_index(first, now), Some(29));
        assert_eq!(day_index(first, 20_000 * DAY_MS), Some(29));
        assert_eq!(day_index(first, 20_000 * DAY_MS - 1), Some(28));
        assert_eq!(day_index(first, first), Some(0));
        assert_eq!(day_index(first, first - 1), None);
        assert_eq!(day_index(first, 20_001 * DAY_MS), None);
    }
}
