//! Health, metrics, repository info and stats, and token management.

use std::sync::Arc;

use bunker_api::{Role, TokenList, TokenRequest};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};

use super::{blocking, method_is, require};
use crate::error::ApiError;
use crate::tokens::Principal;
use crate::{full, json_response, not_allowed, Reply, State};

pub(super) fn health(method: &Method) -> Reply {
    method_is(method, &Method::GET)?;
    Ok(Response::new(full("ok\n")))
}

pub(super) fn metrics(state: &State, p: &Principal, method: &Method) -> Reply {
    method_is(method, &Method::GET)?;
    let mut checks = state.checks.latest_per_name();
    checks.retain(|name, _| super::sees_name(p, name));
    let mut r = Response::new(full(state.metrics.render(state.sessions.len(), &checks)));
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("text/plain; version=0.0.4"),
    );
    Ok(r)
}

pub(super) fn info(state: &State, method: &Method) -> Reply {
    method_is(method, &Method::GET)?;
    let p = state.repo.chunker_params();
    Ok(json_response(
        StatusCode::OK,
        &bunker_api::Info {
            server_version: env!("CARGO_PKG_VERSION").to_string(),
            repository_id: state.repo.repo_id_hex(),
            chunker: bunker_api::ChunkerParams {
                min_bytes: p.min_len,
                avg_bytes: p.avg_len,
                max_bytes: p.max_len,
            },
            zstd_level: state.repo.zstd_level(),
        },
    ))
}

pub(super) async fn stats(state: &Arc<State>, p: &Principal, method: &Method) -> Reply {
    method_is(method, &Method::GET)?;
    let st = state.clone();
    let s = blocking(move || st.repo.stats().map_err(|e| st.store_error(e))).await?;
    let ratio = |a: u64, b: u64| if b == 0 { 0.0 } else { a as f64 / b as f64 };
    Ok(json_response(
        StatusCode::OK,
        &bunker_api::Stats {
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
                .filter(|n| super::sees_name(p, &n.name))
                .map(|n| bunker_api::NameStats {
                    name: n.name.clone(),
                    snapshots: n.snapshots,
                    logical_bytes: n.logical_bytes,
                    unique_chunks: n.unique.chunks,
                    unique_bytes: n.unique.raw_bytes,
                    unique_stored_bytes: n.unique.stored_bytes,
                    deleted_since_gc: n.deleted_since_gc,
                })
                .collect(),
        },
    ))
}

/// `GET /v1/tokens` lists, `POST /v1/tokens` creates (admin only). A
/// scoped admin sees and creates only tokens whose scope lies inside its
/// own.
pub(super) async fn tokens(state: &Arc<State>, p: &Principal, req: Request<Incoming>) -> Reply {
    require(p, &[Role::Admin], "manage tokens")?;
    match *req.method() {
        Method::GET => Ok(json_response(
            StatusCode::OK,
            &TokenList {
                tokens: state.tokens.list_for(p),
            },
        )),
        Method::POST => {
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
        _ => Err(not_allowed()),
    }
}

/// `DELETE /v1/tokens/{id}` revokes (admin only; a scoped admin only the
/// tokens it can list).
pub(super) async fn token(state: &Arc<State>, p: &Principal, method: &Method, id: &str) -> Reply {
    require(p, &[Role::Admin], "manage tokens")?;
    method_is(method, &Method::DELETE)?;
    let st = state.clone();
    let (principal, victim) = (p.clone(), id.to_string());
    if blocking(move || st.tokens.revoke(&principal, &victim)).await? {
        tracing::info!(%id, "token revoked");
        let mut r = Response::new(full(""));
        *r.status_mut() = StatusCode::NO_CONTENT;
        Ok(r)
    } else {
        Err(ApiError::not_found(format!(
            "no token with id {:?}",
            id.chars().take(40).collect::<String>()
        )))
    }
}

/// Reads a body of at most `max` bytes (JSON requests).
pub(super) async fn read_small_body(body: Incoming, max: usize) -> Result<bytes::Bytes, ApiError> {
    let limited = http_body_util::Limited::new(body, max);
    match tokio::time::timeout(std::time::Duration::from_secs(60), limited.collect()).await {
        Ok(Ok(c)) => Ok(c.to_bytes()),
        Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => Err(ApiError::new(
            bunker_api::ErrorCode::PayloadTooLarge,
            format!("this request's body may be at most {max} bytes"),
        )),
        Ok(Err(e)) => Err(ApiError::bad_request(format!(
            "reading the request body: {e}"
        ))),
        Err(_) => Err(ApiError::new(
            bunker_api::ErrorCode::Timeout,
            "the request body took too long",
        )),
    }
}
