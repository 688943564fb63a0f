//! The API's view of the store's values: every conversion between a
//! `bunker_store` type and a `bunker_api` type, in one place.
//!
//! Free functions, not `From` impls: both types belong to other crates
//! (the orphan rule), and `bunker-api` must not depend on the store. Units
//! change here and only here (the store counts milliseconds, the API
//! reports seconds as `f64`); ids become plain numbers or hex.

use bunker_store::retention::{Decision, Policy};

use crate::checks::Checks;

/// A snapshot as the API shows it, with its recorded checks.
pub(crate) fn snapshot(checks: &Checks, s: &bunker_store::SnapshotInfo) -> bunker_api::Snapshot {
    let recorded = checks.get(&s.name, s.id.0);
    bunker_api::Snapshot {
        name: s.name.clone(),
        id: s.id.0,
        created_unix_ms: s.created_unix_ms,
        size_bytes: s.size,
        chunks: s.chunks,
        zero_chunks: s.zero_chunks,
        new_chunks: s.new_chunks,
        new_bytes: s.new_bytes,
        seconds: seconds(s.ingest_ms),
        blake3: s.stream_hash_hex(),
        source: s.source.clone(),
        creator: (s.creator != 0).then(|| format!("{:016x}", s.creator)),
        last_verify: recorded.verify,
        last_drill: recorded.drill,
        last_server_drill: recorded.server_drill,
        origin: s.origin.map(|o| bunker_api::Origin {
            repository_id: o.repo_id.iter().map(|b| format!("{b:02x}")).collect(),
            snapshot_id: o.snapshot_id,
            name: s.name.clone(),
            created_unix_ms: s.created_unix_ms,
        }),
    }
}

pub(crate) fn chunker_params(p: bunker_store::ChunkerParams) -> bunker_api::ChunkerParams {
    bunker_api::ChunkerParams {
        min_bytes: p.min_len,
        avg_bytes: p.avg_len,
        max_bytes: p.max_len,
    }
}

/// Repository statistics, with only the names `shown` lets through.
pub(crate) fn stats(s: &bunker_store::Stats, shown: impl Fn(&str) -> bool) -> bunker_api::Stats {
    let ratio = |a: u64, b: u64| if b == 0 { 0.0 } else { a as f64 / b as f64 };
    bunker_api::Stats {
        snapshots: s.snapshots,
        logical_bytes: s.logical_bytes,
        unique_bytes: s.unique_bytes,
        referenced_stored_bytes: s.referenced_stored_bytes,
        stored_bytes: s.stored_bytes,
        dedup_ratio: ratio(s.logical_bytes, s.unique_bytes),
        compression_ratio: ratio(s.unique_bytes, s.referenced_stored_bytes),
        chunks: s.chunks,
        packs: s.packs,
        index_bytes: s.index_bytes,
        accounted_unix_ms: s.accounted_unix_ms,
        names: s
            .names
            .iter()
            .filter(|n| shown(&n.name))
            .map(name_stats)
            .collect(),
    }
}

fn name_stats(n: &bunker_store::NameStats) -> bunker_api::NameStats {
    bunker_api::NameStats {
        name: n.name.clone(),
        snapshots: n.snapshots,
        logical_bytes: n.logical_bytes,
        unique_chunks: n.unique.chunks,
        unique_bytes: n.unique.raw_bytes,
        unique_stored_bytes: n.unique.stored_bytes,
        deleted_since_gc: n.deleted_since_gc,
    }
}

pub(crate) fn gc_report(r: &bunker_store::GcReport) -> bunker_api::GcReport {
    bunker_api::GcReport {
        dry_run: r.dry_run,
        snapshots: r.snapshots,
        references: r.references,
        packs_examined: r.packs_examined,
        packs_deleted: r.packs_deleted,
        packs_rewritten: r.packs_rewritten,
        packs_protected: r.packs_protected,
        packs_unreadable: r.packs_unreadable,
        bytes_deleted: r.bytes_deleted,
        bytes_rewritten: r.bytes_rewritten,
        bytes_reclaimed: r.bytes_reclaimed(),
        live_bytes: r.live_bytes,
        index_entries_dropped: r.index_entries_dropped,
        mark_bytes: r.mark_bytes,
        mark_seconds: seconds(r.mark_ms),
        sweep_seconds: seconds(r.sweep_ms),
        seconds: seconds(r.total_ms),
    }
}

/// A verify's report. `snapshot` and `sample_percent` echo the request;
/// `seconds` is the time the request took.
pub(crate) fn verify_report(
    r: bunker_store::VerifyReport,
    snapshot: Option<String>,
    sample_percent: f64,
    seconds: f64,
) -> bunker_api::VerifyReport {
    bunker_api::VerifyReport {
        clean: r.is_clean(),
        snapshot,
        sample_percent,
        newly_quarantined: r.newly_quarantined,
        quarantined: r.quarantined,
        packs: r.packs,
        chunks: r.chunks,
        stored_bytes: r.stored_bytes,
        snapshots: r.snapshots,
        seconds,
        damage: r.damage.into_iter().map(damage).collect(),
        unreadable: r.unreadable.into_iter().map(damage).collect(),
        damaged_snapshots: r
            .damaged_snapshots
            .into_iter()
            .map(damaged_snapshot)
            .collect(),
    }
}

fn damage(d: bunker_store::Damage) -> bunker_api::Damage {
    bunker_api::Damage {
        file: d.file,
        pack: d.pack.map(|p| p.0),
        offset: d.offset,
        chunk: d.chunk.map(|c| c.to_hex()),
        reason: d.reason,
    }
}

fn damaged_snapshot(d: bunker_store::DamagedSnapshot) -> bunker_api::DamagedSnapshot {
    bunker_api::DamagedSnapshot {
        name: d.name,
        id: d.id.0,
        bad_chunks: d.bad_chunks,
        reason: d.reason,
    }
}

/// The retention policy a prune request asks for.
pub(crate) fn retention_policy(r: &bunker_api::PruneRequest) -> Policy {
    Policy {
        last: r.keep_last,
        hourly: r.keep_hourly,
        daily: r.keep_daily,
        weekly: r.keep_weekly,
        monthly: r.keep_monthly,
        yearly: r.keep_yearly,
        within_ms: r.keep_within_secs.map(|s| (s as i64).saturating_mul(1000)),
    }
}

pub(crate) fn prune_decision(d: Decision) -> bunker_api::PruneDecision {
    bunker_api::PruneDecision {
        id: d.id.0,
        created_unix_ms: d.created_unix_ms,
        keep: d.keep,
        reasons: d.reasons.iter().map(|r| r.to_string()).collect(),
    }
}

/// Milliseconds as the API's seconds.
fn seconds(ms: u64) -> f64 {
    ms as f64 / 1000.0
}
