//! `POST /v1/verify` (admin): reads every record of every pack, checks the
//! index runs and every manifest, and names damaged chunks and exactly the
//! snapshots that reference them.

use std::sync::Arc;
use std::time::Instant;

use bunker_api::Role;
use hyper::body::Incoming;
use hyper::{Method, Request, StatusCode};

use super::{blocking, require};
use crate::tokens::Principal;
use crate::{json_response, not_allowed, Reply, State};

pub(super) async fn verify(state: &Arc<State>, p: &Principal, req: Request<Incoming>) -> Reply {
    if req.method() != Method::POST {
        return Err(not_allowed());
    }
    require(p, &[Role::Admin], "verify the repository")?;
    let st = state.clone();
    let started = Instant::now();
    let r = blocking(move || st.repo.verify().map_err(|e| st.store_error(e))).await?;
    let report = bunker_api::VerifyReport {
        clean: r.is_clean(),
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
