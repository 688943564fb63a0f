//! Routing, authentication and permissions.
//!
//! Paths are matched segment by segment with no percent-decoding: snapshot
//! names may only contain `[A-Za-z0-9._-]`, so an encoded name is simply an
//! invalid one (400), and no request can name a file outside the data
//! directory.

mod admin;
mod drill;
mod gc;
pub(crate) use gc::run_gc;
mod prune;
mod sessions;
mod snapshots;
mod verify;

use std::sync::Arc;

use bunker_api::{ErrorCode, Role};
use hyper::body::Incoming;
use hyper::{Method, Request};

use crate::error::ApiError;
use crate::tokens::Principal;
use crate::{not_allowed, Reply, State};

pub(crate) async fn dispatch(state: &Arc<State>, req: Request<Incoming>) -> (&'static str, Reply) {
    let path = req.uri().path().to_string();
    let segs: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let method = req.method().clone();
    if segs == ["healthz"] {
        return ("healthz", admin::health(&method));
    }
    let principal = match authenticate(state, &req) {
        Ok(p) => p,
        Err(e) => return ("auth", Err(e)),
    };
    match segs.as_slice() {
        ["metrics"] => ("metrics", admin::metrics(state, &principal, &method)),
        ["v1", "info"] => ("info", admin::info(state, &method)),
        ["v1", "stats"] => ("stats", admin::stats(state, &principal, &method).await),
        ["v1", "tokens"] => ("tokens", admin::tokens(state, &principal, req).await),
        ["v1", "tokens", id] => ("token", admin::token(state, &principal, &method, id).await),
        ["v1", "snapshots"] => (
            "list_snapshots",
            snapshots::list(state, &principal, &method, None).await,
        ),
        ["v1", "snapshots", name] => match method {
            Method::PUT => (
                "put_snapshot",
                snapshots::upload(state, &principal, name, req).await,
            ),
            _ => (
                "list_name",
                snapshots::list(state, &principal, &method, Some(name)).await,
            ),
        },
        ["v1", "snapshots", name, id] => (
            "snapshot",
            snapshots::one(state, &principal, &method, name, id).await,
        ),
        ["v1", "snapshots", name, id, "data"] => (
            "get_data",
            snapshots::data(state, &principal, req, name, id).await,
        ),
        ["v1", "snapshots", name, id, "drill"] => (
            "post_drill",
            drill::drill(state, &principal, req, name, id).await,
        ),
        ["v1", "snapshots", name, id, "manifest"] => (
            "get_manifest",
            snapshots::manifest(state, &principal, req, name, id).await,
        ),
        ["v1", "snapshots", name, id, "chunks", chunk] => (
            "get_chunk",
            snapshots::chunk(state, &principal, req, name, id, chunk).await,
        ),
        ["v1", "verify"] => ("verify", verify::verify(state, &principal, req).await),
        ["v1", "prune"] => ("prune", prune::prune(state, &principal, req).await),
        ["v1", "gc"] => ("gc", gc::gc(state, &principal, req).await),
        ["v1", "sessions"] => ("open_session", sessions::open(state, &principal, req).await),
        ["v1", "sessions", sid] => ("session", sessions::abort(state, &principal, &method, sid)),
        ["v1", "sessions", sid, "missing"] => (
            "missing",
            sessions::missing(state, &principal, req, sid).await,
        ),
        ["v1", "sessions", sid, "chunks", id] => (
            "put_chunk",
            sessions::put_chunk(state, &principal, req, sid, id).await,
        ),
        ["v1", "sessions", sid, "commit"] => (
            "commit",
            sessions::commit(state, &principal, req, sid).await,
        ),
        _ => (
            "unknown",
            Err(ApiError::not_found(format!(
                "no route {method} {}",
                truncate(&path)
            ))),
        ),
    }
}

fn truncate(s: &str) -> String {
    s.chars().take(200).collect()
}

fn authenticate(state: &State, req: &Request<Incoming>) -> Result<Principal, ApiError> {
    let Some(value) = req.headers().get(hyper::header::AUTHORIZATION) else {
        return Err(ApiError::new(
            ErrorCode::Unauthorized,
            "missing token: send 'Authorization: Bearer <token>'",
        ));
    };
    let token = value
        .to_str()
        .ok()
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .ok_or_else(|| {
            ApiError::new(
                ErrorCode::Unauthorized,
                "the Authorization header must be 'Bearer <token>'",
            )
        })?;
    state
        .tokens
        .authenticate(token)
        .ok_or_else(|| ApiError::new(ErrorCode::Unauthorized, "unknown or revoked token"))
}

/// 403 unless the caller has one of `roles`.
fn require(p: &Principal, roles: &[Role], what: &str) -> Result<(), ApiError> {
    if roles.contains(&p.role) {
        Ok(())
    } else {
        Err(ApiError::forbidden(format!(
            "a {} token may not {what}",
            p.role.as_str()
        )))
    }
}

/// 400 for a bad name, 403 for a name outside the caller's scope.
fn check_name(p: &Principal, name: &str) -> Result<(), ApiError> {
    bunker_store::validate_name(name).map_err(|e| {
        let msg = match e {
            bunker_store::Error::Invalid(m) => m,
            other => other.to_string(),
        };
        ApiError::new(ErrorCode::InvalidName, msg)
    })?;
    if !p.in_scope(name) {
        return Err(ApiError::forbidden(format!(
            "snapshot name {name:?} is outside this token's scope"
        )));
    }
    Ok(())
}

/// Whether `p` may read a snapshot created by token `creator`: admins and
/// readers in scope; writers only what they created.
fn can_read(p: &Principal, name: &str, creator: u64) -> bool {
    p.in_scope(name)
        && match p.role {
            Role::Admin | Role::Reader => true,
            Role::Writer => creator == p.id,
        }
}

/// Whether per-name figures (stats, metrics) of `name` are shown to `p`:
/// admins and readers in scope; writers see only their own snapshots.
fn sees_name(p: &Principal, name: &str) -> bool {
    p.in_scope(name) && p.role != Role::Writer
}

/// Runs blocking store work off the async threads.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ApiError::internal(format!("worker failed: {e}")))?
}

fn method_is(method: &Method, allowed: &Method) -> Result<(), ApiError> {
    if method == allowed {
        Ok(())
    } else {
        Err(not_allowed())
    }
}

/// The API view of a snapshot, with its recorded checks.
pub(crate) fn to_api(
    checks: &crate::checks::Checks,
    s: &bunker_store::SnapshotInfo,
) -> bunker_api::Snapshot {
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
        seconds: s.ingest_ms as f64 / 1000.0,
        blake3: s.stream_hash_hex(),
        source: s.source.clone(),
        creator: (s.creator != 0).then(|| format!("{:016x}", s.creator)),
        last_verify: recorded.verify,
        last_drill: recorded.drill,
        last_server_drill: recorded.server_drill,
    }
}

/// Parses a hex BLAKE3 header value.
fn parse_hash(
    value: Option<&hyper::header::HeaderValue>,
    header: &str,
) -> Result<Option<[u8; 32]>, ApiError> {
    let Some(v) = value else { return Ok(None) };
    let text = v
        .to_str()
        .map_err(|_| ApiError::bad_request(format!("{header} is not text")))?;
    blake3::Hash::from_hex(text.trim())
        .map(|h| Some(*h.as_bytes()))
        .map_err(|_| {
            ApiError::bad_request(format!(
                "{header} must be 64 hexadecimal characters (a BLAKE3 hash)"
            ))
        })
}
