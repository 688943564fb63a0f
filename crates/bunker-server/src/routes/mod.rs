//! Routing, authentication and permissions.
//!
//! [`handle`] answers a request; `dispatch` is the route table, one arm per
//! `(method, path)` calling one handler in this directory (one file per
//! resource). Handlers check roles and names with `require`/`check_name`
//! and run store work on the blocking pool (`blocking`).
//!
//! Paths are matched segment by segment with no percent-decoding: snapshot
//! names may only contain `[A-Za-z0-9._-]`, so an encoded name is simply an
//! invalid one (400), and no request can name a file outside the data
//! directory.

mod admin;
mod drill;
mod gc;
mod prune;
pub(crate) mod sessions;
mod snapshots;
mod status;
mod sync;
mod verify;

use std::sync::Arc;
use std::time::Instant;

use bunker_api::{ErrorCode, Role};
use hyper::body::Incoming;
use hyper::{Method, Request, Response};

use crate::body::Body;
use crate::error::ApiError;
use crate::reply::{error_response, Reply};
use crate::state::State;
use crate::tokens::Principal;

/// Answers one request: routes it, turns its error into a JSON error
/// response, and counts it in the metrics under its route's label.
pub(crate) async fn handle(state: Arc<State>, req: Request<Incoming>) -> Response<Body> {
    let started = Instant::now();
    let (route, result) = dispatch(&state, req).await;
    let resp = result.unwrap_or_else(|e| {
        state.metrics.error(e.code.as_str());
        if e.code.status() >= 500 {
            tracing::warn!(route, "{e}");
        }
        error_response(&e)
    });
    state
        .metrics
        .observe(route, resp.status().as_u16(), started.elapsed());
    resp
}

/// The route's metrics label and its answer. Every request but `/healthz`
/// is authenticated first; a known path with a method it does not take is
/// 405 `method_not_allowed` (the token routes check the role first). The
/// status page's files (`crate::ui`) are the other exception to the token.
async fn dispatch(state: &Arc<State>, req: Request<Incoming>) -> (&'static str, Reply) {
    let path = req.uri().path().to_string();
    let segs: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let method = req.method().clone();
    if segs == ["healthz"] {
        let reply = match method {
            Method::GET => Ok(admin::health()),
            _ => Err(not_allowed()),
        };
        return ("healthz", reply);
    }
    // The status page's files hold no data: served without a token.
    if let Some(answer) = crate::ui::answer(&method, &segs) {
        return ("ui", answer.map_err(|()| not_allowed()));
    }
    let p = &match authenticate(state, &req) {
        Ok(p) => p,
        Err(e) => return ("auth", Err(e)),
    };
    match (&method, segs.as_slice()) {
        (&Method::GET, ["metrics"]) => ("metrics", admin::metrics(state, p)),
        (&Method::GET, ["v1", "info"]) => ("info", admin::info(state)),
        (&Method::GET, ["v1", "stats"]) => ("stats", admin::stats(state, p).await),
        (&Method::GET, ["v1", "sync"]) => ("sync", sync::status(state, p).await),
        (&Method::GET, ["v1", "status"]) => ("status", status::status(state, p).await),
        (&Method::GET, ["v1", "tokens"]) => ("tokens", admin::list_tokens(state, p)),
        (&Method::POST, ["v1", "tokens"]) => ("tokens", admin::create_token(state, p, req).await),
        (&Method::DELETE, ["v1", "tokens", id]) => {
            ("token", admin::revoke_token(state, p, id).await)
        }
        (&Method::GET, ["v1", "snapshots"]) => {
            ("list_snapshots", snapshots::list(state, p, None).await)
        }
        (&Method::GET, ["v1", "snapshots", name]) => {
            ("list_name", snapshots::list(state, p, Some(name)).await)
        }
        (&Method::PUT, ["v1", "snapshots", name]) => {
            ("put_snapshot", snapshots::upload(state, p, name, req).await)
        }
        (&Method::GET, ["v1", "snapshots", name, id]) => {
            ("snapshot", snapshots::one(state, p, name, id).await)
        }
        (&Method::DELETE, ["v1", "snapshots", name, id]) => {
            ("snapshot", snapshots::delete(state, p, name, id).await)
        }
        (&Method::GET, ["v1", "snapshots", name, id, "data"]) => {
            ("get_data", snapshots::data(state, p, req, name, id).await)
        }
        (&Method::POST, ["v1", "snapshots", name, id, "drill"]) => {
            ("post_drill", drill::drill(state, p, req, name, id).await)
        }
        (&Method::GET, ["v1", "snapshots", name, id, "manifest"]) => (
            "get_manifest",
            snapshots::manifest(state, p, name, id).await,
        ),
        (&Method::GET, ["v1", "snapshots", name, id, "blocks"]) => {
            ("get_blocks", snapshots::blocks(state, p, name, id).await)
        }
        (&Method::GET, ["v1", "snapshots", name, id, "chunks", chunk]) => (
            "get_chunk",
            snapshots::chunk(state, p, req, name, id, chunk).await,
        ),
        (&Method::POST, ["v1", "verify"]) => ("verify", verify::verify(state, p, req).await),
        (&Method::POST, ["v1", "prune"]) => ("prune", prune::prune(state, p, req).await),
        (&Method::POST, ["v1", "gc"]) => ("gc", gc::gc(state, p, req).await),
        (&Method::POST, ["v1", "sessions"]) => {
            ("open_session", sessions::open(state, p, req).await)
        }
        (&Method::DELETE, ["v1", "sessions", sid]) => ("session", sessions::abort(state, p, sid)),
        (&Method::POST, ["v1", "sessions", sid, "missing"]) => {
            ("missing", sessions::missing(state, p, req, sid).await)
        }
        (&Method::PUT, ["v1", "sessions", sid, "chunks", id]) => (
            "put_chunk",
            sessions::put_chunk(state, p, req, sid, id).await,
        ),
        (&Method::PUT, ["v1", "sessions", sid, "blocks"]) => {
            ("put_blocks", sessions::put_blocks(state, p, req, sid).await)
        }
        (&Method::POST, ["v1", "sessions", sid, "commit"]) => {
            ("commit", sessions::commit(state, p, req, sid).await)
        }
        // Known paths, other methods.
        (_, ["v1", "tokens"]) => (
            "tokens",
            admin::may_manage_tokens(p).and(Err(not_allowed())),
        ),
        (_, ["v1", "tokens", _]) => ("token", admin::may_manage_tokens(p).and(Err(not_allowed()))),
        (_, segs) => match known(segs) {
            Some(route) => (route, Err(not_allowed())),
            None => (
                "unknown",
                Err(ApiError::not_found(format!(
                    "no route {method} {}",
                    truncate(&path)
                ))),
            ),
        },
    }
}

/// The label of a known path (any method), for the 405 of a method it
/// does not take.
fn known(segs: &[&str]) -> Option<&'static str> {
    Some(match segs {
        ["metrics"] => "metrics",
        ["v1", "info"] => "info",
        ["v1", "stats"] => "stats",
        ["v1", "sync"] => "sync",
        ["v1", "status"] => "status",
        ["v1", "snapshots"] => "list_snapshots",
        ["v1", "snapshots", _] => "list_name",
        ["v1", "snapshots", _, _] => "snapshot",
        ["v1", "snapshots", _, _, "data"] => "get_data",
        ["v1", "snapshots", _, _, "drill"] => "post_drill",
        ["v1", "snapshots", _, _, "manifest"] => "get_manifest",
        ["v1", "snapshots", _, _, "chunks", _] => "get_chunk",
        ["v1", "snapshots", _, _, "blocks"] => "get_blocks",
        ["v1", "verify"] => "verify",
        ["v1", "prune"] => "prune",
        ["v1", "gc"] => "gc",
        ["v1", "sessions"] => "open_session",
        ["v1", "sessions", _] => "session",
        ["v1", "sessions", _, "missing"] => "missing",
        ["v1", "sessions", _, "chunks", _] => "put_chunk",
        ["v1", "sessions", _, "commit"] => "commit",
        ["v1", "sessions", _, "blocks"] => "put_blocks",
        _ => return None,
    })
}

fn not_allowed() -> ApiError {
    ApiError::new(
        ErrorCode::MethodNotAllowed,
        "method not allowed on this route",
    )
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
pub(crate) fn check_name(p: &Principal, name: &str) -> Result<(), ApiError> {
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
