//! Work the server does on its own, beside requests: GC every
//! `gc_interval_secs`, and expiry of idle upload sessions. Both run as
//! tasks of [`crate::run`] and stop with it.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bunker_api::GcReport;

use crate::error::ApiError;
use crate::state::State;

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
    Ok(crate::convert::gc_report(&r))
}

/// Runs GC every `gc_interval_secs` (a run already in progress, from
/// `POST /v1/gc`, makes this one skip).
pub(crate) async fn scheduled_gc(state: Arc<State>) {
    let every = Duration::from_secs(state.config.gc_interval_secs);
    loop {
        tokio::time::sleep(every).await;
        let st = state.clone();
        let opts = bunker_store::GcOptions {
            rewrite_below: state.config.gc_rewrite_below,
            dry_run: false,
        };
        match tokio::task::spawn_blocking(move || run_gc(&st, &opts)).await {
            Ok(Ok(r)) => tracing::info!(
                reclaimed = r.bytes_reclaimed,
                seconds = r.seconds,
                "scheduled GC finished"
            ),
            Ok(Err(e)) => tracing::warn!("scheduled GC: {e}"),
            Err(e) => tracing::error!("scheduled GC task failed: {e}"),
        }
    }
}

/// Removes upload sessions idle for `session_idle_secs`, every few seconds.
pub(crate) async fn reap_sessions(state: Arc<State>) {
    let idle = Duration::from_secs(state.config.session_idle_secs);
    loop {
        tokio::time::sleep(Duration::from_secs(5).min(idle)).await;
        let n = state.sessions.expire(idle);
        if n > 0 {
            tracing::info!(sessions = n, "expired idle upload sessions");
        }
    }
}
