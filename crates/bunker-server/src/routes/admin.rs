//! Health, metrics, repository info and stats, and token management.

use std::sync::Arc;

use bunker_api::{Role, TokenList, TokenRequest};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};

use super::{blocking, require};
use crate::body::{full, read_small_body, Body};
use crate::error::ApiError;
use crate::reply::{json_response, no_content, Reply};
use crate::state::State;
use crate::tokens::Principal;

pub(super) fn health() -> Response<Body> {
    Response::new(full("ok\n"))
}

pub(super) fn metrics(state: &State, p: &Principal) -> Reply {
    let mut checks = state.checks.latest_per_name();
    checks.retain(|name, _| super::sees_name(p, name));
    let mut text = state.metrics.render(state.sessions.len(), &checks);
    if super::sync::sees_jobs(p) {
        state.sync_jobs.render_metrics(&mut text);
    }
    let mut r = Response::new(full(text));
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("text/plain; version=0.0.4"),
    );
    Ok(r)
}

pub(super) fn info(state: &State) -> Reply {
    Ok(json_response(
        StatusCode::OK,
        &bunker_api::Info {
            server_version: env!("CARGO_PKG_VERSION").to_string(),
            repository_id: state.repo.repo_id_hex(),
            chunker: crate::convert::chunker_params(state.repo.chunker_params()),
            zstd_level: state.repo.zstd_level(),
            storage: state.config.storage.describe(),
            block_hashes: true,
            encrypted: state.repo.key_id().is_some(),
            key_id: state.repo.key_id().map(|k| k.to_string()),
        },
    ))
}

pub(super) async fn stats(state: &Arc<State>, p: &Principal) -> Reply {
    let st = state.clone();
    let s = blocking(move || st.repo.stats().map_err(|e| st.store_error(e))).await?;
    Ok(json_response(
        StatusCode::OK,
        &crate::convert::stats(&s, |name| super::sees_name(p, name)),
    ))
}

/// 403 unless `p` may manage tokens (admins only).
pub(super) fn may_manage_tokens(p: &Principal) -> Result<(), ApiError> {
    require(p, &[Role::Admin], "manage tokens")
}

/// `GET /v1/tokens`. A scoped admin sees only tokens whose scope lies
/// inside its own.
pub(super) fn list_tokens(state: &State, p: &Principal) -> Reply {
    may_manage_tokens(p)?;
    Ok(json_response(
        StatusCode::OK,
        &TokenList {
            tokens: state.tokens.list_for(p),
        },
    ))
}

/// `POST /v1/tokens`. A scoped admin creates only tokens whose scope lies
/// inside its own.
pub(super) async fn create_token(
    state: &Arc<State>,
    p: &Principal,
    req: Request<Incoming>,
) -> Reply {
    may_manage_tokens(p)?;
    let body = read_small_body(req.into_body(), 64 << 10).await?;
    let r: TokenRequest = serde_json::from_slice(&body)
        .map_err(|e| ApiError::bad_request(format!("token request: {e}")))?;
    if let Some(scope) = &r.scope {
        if scope.is_empty()
            || scope.len() > 128
            || !scope
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
        {
            return Err(ApiError::bad_request(
                "a scope is a snapshot name (or name prefix ending in - . or _) of 1 to 128 characters of [A-Za-z0-9._-]",
            ));
        }
    }
    if !p.reaches(r.scope.as_deref()) {
        return Err(ApiError::forbidden(format!(
            "a token scoped to {:?} may only create tokens scoped inside it",
            p.scope.as_deref().unwrap_or_default()
        )));
    }
    let st = state.clone();
    let (role, scope, name) = (r.role, r.scope, r.name);
    let (token, info) = blocking(move || st.tokens.create(role, scope, name)).await?;
    tracing::info!(id = %info.id, role = role.as_str(), "token created");
    Ok(json_response(
        StatusCode::CREATED,
        &bunker_api::TokenCreated { token, info },
    ))
}

/// `DELETE /v1/tokens/{id}` revokes (admin only; a scoped admin only the
/// tokens it can list).
pub(super) async fn revoke_token(state: &Arc<State>, p: &Principal, id: &str) -> Reply {
    may_manage_tokens(p)?;
    let st = state.clone();
    let (principal, victim) = (p.clone(), id.to_string());
    if blocking(move || st.tokens.revoke(&principal, &victim)).await? {
        tracing::info!(%id, "token revoked");
        Ok(no_content())
    } else {
        Err(ApiError::not_found(format!(
            "no token with id {:?}",
            id.chars().take(40).collect::<String>()
        )))
    }
}
