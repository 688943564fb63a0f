//! `POST /v1/verify` (admin): reads every record of every pack, checks the
//! index runs and every manifest, and names damaged chunks and exactly the
//! snapshots that reference them. A scoped admin may verify one snapshot
//! in its scope; the whole repository needs an unscoped admin.

use std::sync::Arc;
use std::time::Instant;

use bunker_api::{Role, VerifyRequest};
use hyper::body::Incoming;
use hyper::{Request, StatusCode};

use super::{blocking, require};
use crate::body::read_small_body;
use crate::error::ApiError;
use crate::reply::{json_response, Reply};
use crate::state::State;
use crate::tokens::Principal;

pub(super) async fn verify(state: &Arc<State>, p: &Principal, req: Request<Incoming>) -> Reply {
    require(p, &[Role::Admin], "verify the repository")?;
    let body = read_small_body(req.into_body(), 4096).await?;
    let q: VerifyRequest = if body.iter().all(u8::is_ascii_whitespace) {
        VerifyRequest::default()
    } else {
        serde_json::from_slice(&body)
            .map_err(|e| ApiError::bad_request(format!("verify request: {e}")))?
    };
    let snapshot = match &q.snapshot {
        None => None,
        Some(s) => Some(parse_snapshot_ref(s)?),
    };
    match (&p.scope, &snapshot) {
        (Some(scope), None) => {
            return Err(ApiError::forbidden(format!(
                "a token scoped to {scope:?} may verify only a snapshot in its scope; verifying the whole repository needs an unscoped admin token"
            )))
        }
        (Some(_), Some((name, _))) => super::check_name(p, name)?,
        (None, _) => {}
    }
    let opts = bunker_store::VerifyOptions {
        snapshot,
        sample_percent: q.sample_percent.unwrap_or(100.0),
        // A fresh sample each run, not a time anything records or compares:
        // the wall clock's nanoseconds are only entropy here.
        seed: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64),
        quarantine: true,
    };
    let st = state.clone();
    let started = Instant::now();
    let o = opts.clone();
    let (r, covered) = blocking(move || {
        // The snapshots this verify speaks for: listed before it starts (a
        // snapshot committed during it is not covered).
        let covered = match &o.snapshot {
            Some((name, id)) => vec![st.repo.snapshot(name, *id).map_err(|e| st.store_error(e))?],
            None => st.repo.list(None).map_err(|e| st.store_error(e))?,
        };
        let r = st.repo.verify_with(&o).map_err(|e| st.store_error(e))?;
        Ok((r, covered))
    })
    .await?;
    let mut r = r;
    // A scoped admin's verify speaks only for snapshots in its scope: the
    // others sharing a damaged chunk are neither named nor recorded here.
    r.damaged_snapshots.retain(|d| p.in_scope(&d.name));
    record_checks(state, p, &opts, &r, &covered).await;
    let report = crate::convert::verify_report(
        r,
        q.snapshot.clone(),
        opts.sample_percent,
        started.elapsed().as_secs_f64(),
    );
    if report.clean {
        tracing::info!(
            packs = report.packs,
            chunks = report.chunks,
            "verify: clean"
        );
    } else {
        tracing::error!(
            damaged = report.damage.len(),
            snapshots = report.damaged_snapshots.len(),
            "verify found damage"
        );
    }
    Ok(json_response(StatusCode::OK, &report))
}

/// Records this verify as the last one of every snapshot it covered (and
/// of every snapshot it found damaged). A failure to save is logged: the
/// verify's own answer matters more than its history.
async fn record_checks(
    state: &Arc<State>,
    p: &Principal,
    opts: &bunker_store::VerifyOptions,
    r: &bunker_store::VerifyReport,
    covered: &[bunker_store::SnapshotInfo],
) {
    let at_unix_ms = bunker_store::clock::now_unix_ms();
    let check = |ok: bool, detail: String| bunker_api::Check {
        at_unix_ms,
        ok,
        detail,
        verified_by: bunker_api::Verifier::Server,
        token: Some(p.id_hex()),
        token_name: p.name.clone(),
    };
    let scope = match (&opts.snapshot, opts.sample_percent >= 100.0) {
        (Some(_), true) => "verify of this snapshot".to_string(),
        (Some(_), false) => format!(
            "verify of a {}% sample of this snapshot",
            opts.sample_percent
        ),
        (None, true) => "full verify".to_string(),
        (None, false) => format!("verify of a {}% sample", opts.sample_percent),
    };
    let mut results: Vec<((String, u64), bunker_api::Check)> = covered
        .iter()
        .filter(|s| {
            !r.damaged_snapshots
                .iter()
                .any(|d| d.name == s.name && d.id == s.id)
        })
        .map(|s| {
            (
                (s.name.clone(), s.id.0),
                check(true, format!("{scope}: clean")),
            )
        })
        .collect();
    results.extend(r.damaged_snapshots.iter().map(|d| {
        (
            (d.name.clone(), d.id.0),
            check(
                false,
                format!("{scope}: {} damaged chunks ({})", d.bad_chunks, d.reason),
            ),
        )
    }));
    let st = state.clone();
    let saved = blocking(move || {
        st.checks
            .record(crate::checks::Kind::Verify, results)
            .map_err(|e| st.save_error(e))
    })
    .await;
    if let Err(e) = saved {
        tracing::warn!("recording verify results: {}", e.message);
    }
}

/// `NAME` or `NAME@ID` (`NAME@latest` too).
fn parse_snapshot_ref(s: &str) -> Result<(String, Option<bunker_store::SnapshotId>), ApiError> {
    let (name, id) = match s.split_once('@') {
        None | Some((_, "latest")) => (s.split('@').next().unwrap_or(s), None),
        Some((name, id)) => (
            name,
            Some(bunker_store::SnapshotId(id.parse().map_err(|_| {
                ApiError::bad_request(format!("{s:?}: the part after @ must be a snapshot id"))
            })?)),
        ),
    };
    bunker_store::validate_name(name).map_err(|e| ApiError::bad_request(e.to_string()))?;
    Ok((name.to_string(), id))
}
