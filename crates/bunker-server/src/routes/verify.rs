//! `POST /v1/verify` (admin): reads every record of every pack, checks the
//! index runs and every manifest, and names damaged chunks and exactly the
//! snapshots that reference them.

use std::sync::Arc;
use std::time::Instant;

use bunker_api::{Role, VerifyRequest};
use hyper::body::Incoming;
use hyper::{Method, Request, StatusCode};

use super::{blocking, require};
use crate::error::ApiError;
use crate::tokens::Principal;
use crate::{json_response, not_allowed, Reply, State};

pub(super) async fn verify(state: &Arc<State>, p: &Principal, req: Request<Incoming>) -> Reply {
    if req.method() != Method::POST {
        return Err(not_allowed());
    }
    require(p, &[Role::Admin], "verify the repository")?;
    let body = super::admin::read_small_body(req.into_body(), 4096).await?;
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
    let opts = bunker_store::VerifyOptions {
        snapshot,
        sample_percent: q.sample_percent.unwrap_or(100.0),
        seed: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64),
        quarantine: true,
    };
    let st = state.clone();
    let started = Instant::now();
    let o = opts.clone();
    let r = blocking(move || st.repo.verify_with(&o).map_err(|e| st.store_error(e))).await?;
    let report = bunker_api::VerifyReport {
        clean: r.is_clean(),
        snapshot: q.snapshot.clone(),
        sample_percent: opts.sample_percent,
        newly_quarantined: r.newly_quarantined,
        quarantined: r.quarantined,
        packs: r.packs,
        chunks: r.chunks,
        stored_bytes: r.stored_bytes,
        snapshots: r.snapshots,
        seconds: started.elapsed().as_secs_f64(),
        damage: r
            .damage
            .into_iter()
            .map(|d| bunker_api::Damage {
                file: d.file,
                pack: d.pack.map(|p| p.0),
                offset: d.offset,
                chunk: d.chunk.map(|c| c.to_hex()),
                reason: d.reason,
            })
            .collect(),
        damaged_snapshots: r
            .damaged_snapshots
            .into_iter()
            .map(|d| bunker_api::DamagedSnapshot {
                name: d.name,
                id: d.id.0,
                bad_chunks: d.bad_chunks,
                reason: d.reason,
            })
            .collect(),
    };
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
