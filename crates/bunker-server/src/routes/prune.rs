//! `POST /v1/prune`: retention policies (admin). Removes manifests only;
//! the space comes back through GC.

use std::sync::Arc;

use bunker_api::{PruneName, PruneRequest, PruneResult, Role};
use hyper::body::Incoming;
use hyper::{Request, StatusCode};

use super::{blocking, check_name, require};
use crate::body::read_small_body;
use crate::convert;
use crate::error::ApiError;
use crate::reply::{json_response, Reply};
use crate::state::State;
use crate::tokens::Principal;

pub(super) async fn prune(state: &Arc<State>, p: &Principal, req: Request<Incoming>) -> Reply {
    require(
        p,
        &[Role::Admin],
        "prune snapshots (backups are append-only for writers)",
    )?;
    let body = read_small_body(req.into_body(), 16 << 10).await?;
    let r: PruneRequest = serde_json::from_slice(&body)
        .map_err(|e| ApiError::bad_request(format!("prune request: {e}")))?;
    let policy = convert::retention_policy(&r);
    if policy.keeps_nothing() {
        return Err(ApiError::bad_request(
            "this retention policy keeps nothing: give at least one keep rule",
        ));
    }
    let names = match (&r.name, r.all) {
        (Some(n), false) => {
            check_name(p, n)?;
            vec![n.clone()]
        }
        (None, true) => {
            let st = state.clone();
            let all = blocking(move || st.repo.list(None).map_err(|e| st.store_error(e))).await?;
            let mut names: Vec<String> = all
                .into_iter()
                .map(|s| s.name)
                .filter(|n| p.in_scope(n))
                .collect();
            names.dedup();
            names
        }
        _ => return Err(ApiError::bad_request("give either a name or \"all\": true")),
    };
    let st = state.clone();
    let dry_run = r.dry_run;
    let result = blocking(move || {
        let mut out = Vec::new();
        for name in names {
            let decisions = st
                .repo
                .prune(&name, &policy, dry_run)
                .map_err(|e| st.store_error(e))?;
            let removed = decisions.iter().filter(|d| !d.keep).count();
            if !dry_run && removed > 0 {
                tracing::info!(name, removed, "pruned snapshots");
                let gone: Vec<(String, u64)> = decisions
                    .iter()
                    .filter(|d| !d.keep)
                    .map(|d| (name.clone(), d.id.0))
                    .collect();
                if let Err(e) = st.checks.forget(&gone) {
                    tracing::warn!("{e}");
                }
            }
            out.push(PruneName {
                name,
                snapshots: decisions.into_iter().map(convert::prune_decision).collect(),
            });
        }
        Ok(out)
    })
    .await?;
    Ok(json_response(
        StatusCode::OK,
        &PruneResult {
            dry_run,
            names: result,
        },
    ))
}
