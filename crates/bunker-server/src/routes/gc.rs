//! `POST /v1/gc` (unscoped admin): one garbage collection, beside running backups
//! (docs/GC.md). 409 `busy` while another GC or a verify runs.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use bunker_api::{GcReport, GcRequest, Role};
use hyper::body::Incoming;
use hyper::{Method, Request, StatusCode};

use super::admin::read_small_body;
use super::{blocking, require};
use crate::error::ApiError;
use crate::tokens::Principal;
use crate::{json_response, not_allowed, Reply, State};

pub(super) async fn gc(state: &Arc<State>, p: &Principal, req: Request<Incoming>) -> Reply {
    if req.method() != Method::POST {
        return Err(not_allowed());
    }
    require(p, &[Role::Admin], "run GC")?;
    if let Some(scope) = &p.scope {
        return Err(ApiError::forbidden(format!(
            "GC works on the whole repository: it needs an unscoped admin token, not one scoped to {scope:?}"
        )));
    }
    let body = read_small_body(req.into_body(), 4096).await?;
    let r: GcRequest = if body.iter().all(u8::is_ascii_whitespace) {
        GcRequest::default()
    } else {
        serde_json::from_slice(&body)
            .map_err(|e| ApiError::bad_request(format!("GC request: {e}")))?
    };
    let rewrite_below = r.rewrite_below.unwrap_or(state.config.gc_rewrite_below);
    if !(0.0..=1.0).contains(&rewrite_below) {
        return Err(ApiError::bad_request(format!(
            "rewrite_below is a fraction in 0..=1, not {rewrite_below}"
        )));
    }
    let opts = bunker_store::GcOptions {
        rewrite_below,
        dry_run: r.dry_run,
    };
    let st = state.clone();
    let report = blocking(move || run_gc(&st, &opts)).await?;
    Ok(json_response(StatusCode::OK, &report))
}

/// Runs one GC and records it in the metrics.
pub(crate) fn run_gc(state: &State, opts: &bunker_store::GcOptions) -> Result<GcReport, ApiError> {
    let r = state.repo.gc(opts).map_err(|e| state.store_error(e))?;
    let m = &state.metrics;
    if !r.dry_run {
        m.gc_runs.fetch_add(1, Ordering::Relaxed);
        m.gc_reclaimed_bytes
            .fetch_add(r.bytes_reclaimed(), Ordering::Relaxed);
        m.gc_last_ms.store(r.total_ms, Ordering::Relaxed);
        m.gc_last_unix.store(
            (bunker_store::clock::now_unix_ms() / 1000).max(0) as u64,
            Ordering::Relaxed,
        );
    }
    Ok(GcReport {
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
        mark_seconds: r.mark_ms as f64 / 1000.0,
        sweep_seconds: r.sweep_ms as f64 / 1000.0,
        seconds: r.total_ms as f64 / 1000.0,
    })
}
