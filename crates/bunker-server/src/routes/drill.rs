//! `POST /v1/snapshots/{name}/{id|latest}/drill`: a snapshot's restore
//! drill, reported by a client or run by the server.
//!
//! A client's report is recorded as the snapshot's last drill with the
//! token that sent it, marked `verified_by: client`: the server cannot tell
//! whether that drill ran. With `{"verify": "server"}` the server reads the
//! whole snapshot itself, through the verified reader restores use, checks
//! the whole-image BLAKE3, and records the outcome, marked `verified_by:
//! server`, both as the last drill and as the last server drill, which no
//! report replaces. One server drill runs at a time: it reads on every
//! core.

use std::sync::Arc;
use std::time::Instant;

use bunker_api::{Check, DrillResult, ErrorCode, ServerDrill, Verifier};
use bunker_store::{Piece, SnapshotInfo};
use hyper::body::Incoming;
use hyper::{Request, StatusCode};

use super::blocking;
use super::snapshots::readable;
use crate::body::read_small_body;
use crate::checks::Kind;
use crate::error::ApiError;
use crate::reply::{json_response, Reply};
use crate::state::State;
use crate::tokens::Principal;

/// Zeros hashed for zero chunks, a slice at a time.
static ZEROS: [u8; 64 << 10] = [0u8; 64 << 10];

/// Failure details are cut to this many characters.
const MAX_DETAIL_CHARS: usize = 500;

pub(super) async fn drill(
    state: &Arc<State>,
    p: &Principal,
    req: Request<Incoming>,
    name: &str,
    id: &str,
) -> Reply {
    let info = readable(state, p, name, id).await?;
    let body = read_small_body(req.into_body(), 16 << 10).await?;
    let value: serde_json::Value =
        serde_json::from_slice(&body).map_err(|e| ApiError::bad_request(format!("drill: {e}")))?;
    let verifier = match value.get("verify") {
        None => Verifier::Client,
        Some(v) => serde_json::from_value(v.clone()).map_err(|_| {
            ApiError::bad_request(
                "\"verify\" is \"client\" (this is a report) or \"server\" (the server drills the snapshot itself)",
            )
        })?,
    };
    match verifier {
        Verifier::Client => {
            let r: DrillResult = serde_json::from_value(value)
                .map_err(|e| ApiError::bad_request(format!("drill result: {e}")))?;
            record_report(state, p, &info, r).await
        }
        Verifier::Server => run_server_drill(state, p, info).await,
    }
}

fn check(p: &Principal, ok: bool, detail: String, verified_by: Verifier) -> Check {
    Check {
        at_unix_ms: bunker_store::clock::now_unix_ms(),
        ok,
        detail,
        verified_by,
        token: Some(p.id_hex()),
        token_name: p.name.clone(),
    }
}

async fn save(
    state: &Arc<State>,
    kind: Kind,
    info: &SnapshotInfo,
    c: Check,
) -> Result<(), ApiError> {
    let st = state.clone();
    let key = (info.name.clone(), info.id.0);
    blocking(move || {
        st.checks
            .record(kind, [(key, c)])
            .map_err(|e| st.save_error(e))
    })
    .await
}

async fn record_report(
    state: &Arc<State>,
    p: &Principal,
    info: &SnapshotInfo,
    r: DrillResult,
) -> Reply {
    if r.ok && r.bytes != info.size {
        return Err(ApiError::bad_request(format!(
            "a drill that restored {} of the snapshot's {} bytes did not pass",
            r.bytes, info.size
        )));
    }
    if !r.seconds.is_finite() || r.seconds < 0.0 {
        return Err(ApiError::bad_request(
            "drill seconds must be a finite number >= 0",
        ));
    }
    let detail = if r.ok {
        format!(
            "restored and verified {} bytes in {:.1} s ({:.2} GB/s)",
            r.bytes,
            r.seconds,
            gb_per_s(r.bytes, r.seconds)
        )
    } else {
        let why = r.error.unwrap_or_else(|| "failed".into());
        why.chars().take(MAX_DETAIL_CHARS).collect()
    };
    save(
        state,
        Kind::Drill,
        info,
        check(p, r.ok, detail, Verifier::Client),
    )
    .await?;
    let last_drill = state.checks.get(&info.name, info.id.0).drill;
    tracing::info!(
        name = info.name,
        id = info.id.0,
        ok = r.ok,
        token = %p.id_hex(),
        "drill reported by a client recorded"
    );
    Ok(json_response(StatusCode::OK, &last_drill))
}

async fn run_server_drill(state: &Arc<State>, p: &Principal, info: SnapshotInfo) -> Reply {
    let Ok(_running) = state.server_drills.try_acquire() else {
        return Err(ApiError::new(
            ErrorCode::Busy,
            "another server-side drill is running; retry when it ends",
        ));
    };
    let st = state.clone();
    let snapshot = info.clone();
    let (bytes, seconds, error) = blocking(move || Ok(read_whole(&st, &snapshot))).await?;
    let ok = error.is_none();
    let detail = match &error {
        None => format!(
            "the server read and verified {bytes} bytes in {seconds:.1} s ({:.2} GB/s); the image's BLAKE3 matches",
            gb_per_s(bytes, seconds)
        ),
        Some(e) => format!("server drill: {e}")
            .chars()
            .take(MAX_DETAIL_CHARS)
            .collect(),
    };
    let c = check(p, ok, detail, Verifier::Server);
    save(state, Kind::ServerDrill, &info, c.clone()).await?;
    if ok {
        tracing::info!(
            name = info.name,
            id = info.id.0,
            bytes,
            "server drill passed"
        );
    } else {
        tracing::error!(
            name = info.name,
            id = info.id.0,
            "server drill failed: {}",
            error.as_deref().unwrap_or_default()
        );
    }
    Ok(json_response(
        StatusCode::OK,
        &ServerDrill {
            name: info.name,
            id: info.id.0,
            ok,
            bytes,
            seconds,
            error,
            check: c,
        },
    ))
}

/// Reads every byte of the snapshot (each chunk BLAKE3-checked by the
/// reader) and checks the whole-image BLAKE3: bytes read, seconds, and
/// why it failed, if it did.
fn read_whole(state: &State, info: &SnapshotInfo) -> (u64, f64, Option<String>) {
    let started = Instant::now();
    let mut bytes = 0u64;
    let failed = |bytes: u64, why: String| (bytes, started.elapsed().as_secs_f64(), Some(why));
    let mut reader = match state.repo.reader(&info.name, Some(info.id), None) {
        Ok(r) => r,
        Err(e) => return failed(0, state.store_error(e).message),
    };
    let mut hasher = blake3::Hasher::new();
    loop {
        match reader.next_piece() {
            Ok(Some(Piece::Data(d))) => {
                hasher.update(&d);
                bytes += d.len() as u64;
            }
            Ok(Some(Piece::Zero(n))) => {
                let mut left = n;
                while left > 0 {
                    let k = left.min(ZEROS.len() as u64) as usize;
                    hasher.update(&ZEROS[..k]);
                    left -= k as u64;
                }
                bytes += n;
            }
            Ok(None) => break,
            Err(e) => {
                let why = format!("after {bytes} bytes: {}", state.store_error(e).message);
                return failed(bytes, why);
            }
        }
    }
    if bytes != info.size {
        let why = format!(
            "the manifest covers {bytes} bytes, the snapshot is {} bytes",
            info.size
        );
        return failed(bytes, why);
    }
    let hash = hasher.finalize();
    if *hash.as_bytes() != info.stream_hash {
        let why = format!(
            "verification failed: the restored image hashes to {}, the snapshot's BLAKE3 is {}",
            hash.to_hex(),
            info.stream_hash_hex()
        );
        return failed(bytes, why);
    }
    (bytes, started.elapsed().as_secs_f64(), None)
}

fn gb_per_s(bytes: u64, seconds: f64) -> f64 {
    if seconds > 0.0 {
        bytes as f64 / seconds / 1e9
    } else {
        0.0
    }
}
