//! `POST /v1/gc` (unscoped admin): one garbage collection, beside running backups
//! (docs/GC.md). 409 `busy` while another GC or a verify runs.

use std::sync::Arc;

use bunker_api::{GcRequest, Role};
use hyper::body::Incoming;
use hyper::{Request, StatusCode};

use super::{blocking, require};
use crate::body::read_small_body;
use crate::error::ApiError;
use crate::maintenance::run_gc;
use crate::reply::{json_response, Reply};
use crate::state::State;
use crate::tokens::Principal;

pub(super) async fn gc(state: &Arc<State>, p: &Principal, req: Request<Incoming>) -> Reply {
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
