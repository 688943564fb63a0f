//! The chunk protocol for clients that chunk and hash themselves: only
//! missing chunks cross the wire. See `crate::sessions` for the lifecycle
//! and docs/API.md, "Chunk protocol", for the wire formats.

use std::io::Read;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use bunker_api::{
    ErrorCode, Origin, Role, Session as SessionJson, SessionRequest, CHUNK_ID_LEN, COMMIT_ENTRY_LEN,
};
use bunker_store::ChunkId;
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use tokio::sync::mpsc;

use super::{blocking, check_name, parse_hash, require};
use crate::body::{full, pump_body, read_small_body, BodyItem, BodyReader};
use crate::error::ApiError;
use crate::reply::{json_response, no_content, Reply};
use crate::sessions::Session;
use crate::state::State;
use crate::tokens::Principal;

/// Ids per `missing` request, at most.
const MAX_IDS_PER_QUERY: usize = 65_536;

/// The length a body of at most `max` bytes will have: its Content-Length,
/// or `max` when it is sent chunked. 413 when it announces more.
fn declared_len(req: &Request<Incoming>, max: usize) -> Result<u64, ApiError> {
    let announced = req
        .headers()
        .get(hyper::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    match announced {
        Some(n) if n > max as u64 => Err(ApiError::new(
            ErrorCode::PayloadTooLarge,
            format!("this request's body may be at most {max} bytes"),
        )),
        Some(n) => Ok(n),
        None => Ok(max as u64),
    }
}

/// Clears a session's `committing` flag when its commit worker ends,
/// however the request went.
struct Committing(Arc<Session>);

impl Drop for Committing {
    fn drop(&mut self) {
        self.0.committing.store(false, Ordering::SeqCst);
    }
}

fn session(state: &State, p: &Principal, sid: &str) -> Result<Arc<Session>, ApiError> {
    state.accepting()?;
    let s = state.sessions.get(sid).ok_or_else(|| {
        ApiError::not_found("no such upload session (it may have expired or been committed)")
    })?;
    // An admin may drive the sessions of tokens it can see (all of them
    // when unscoped), for names in its scope.
    let admin_may = p.role == Role::Admin
        && (p.scope.is_none() || (p.in_scope(&s.name) && state.tokens.sees(p, s.creator)));
    if s.creator != p.id && !admin_may {
        return Err(ApiError::forbidden(
            "this upload session belongs to another token",
        ));
    }
    Ok(s)
}

pub(super) async fn open(state: &Arc<State>, p: &Principal, req: Request<Incoming>) -> Reply {
    require(p, &[Role::Admin, Role::Writer], "create snapshots")?;
    let body = read_small_body(req.into_body(), 16 << 10).await?;
    let r: SessionRequest = serde_json::from_slice(&body)
        .map_err(|e| ApiError::bad_request(format!("session request: {e}")))?;
    check_name(p, &r.name)?;
    let origin = r.origin.as_ref().map(|o| origin(o, &r.name)).transpose()?;
    let mut raw = [0u8; 16];
    getrandom::fill(&mut raw).map_err(|e| ApiError::internal(format!("no randomness: {e}")))?;
    let id: String = raw.iter().map(|b| format!("{b:02x}")).collect();
    let source: String = r
        .source
        .unwrap_or_else(|| "bunker client".into())
        .chars()
        .take(192)
        .collect();
    let slot = state.stream_permit(p)?;
    state.sessions.open(
        id.clone(),
        r.name.clone(),
        source,
        p.id,
        origin,
        slot,
        state.repo.pins(),
    );
    Ok(json_response(
        StatusCode::CREATED,
        &SessionJson {
            id,
            name: r.name,
            idle_timeout_seconds: state.config.session_idle_secs,
        },
    ))
}

/// A copy's origin as the store keeps it; 400 unless it names this
/// session's snapshot name and a repository id of 32 hex digits.
pub(crate) fn origin(o: &Origin, name: &str) -> Result<(bunker_store::Origin, i64), ApiError> {
    if o.name != name {
        return Err(ApiError::bad_request(format!(
            "the origin is named {:?}: a copy keeps its name ({name:?})",
            o.name.chars().take(140).collect::<String>()
        )));
    }
    let hex = o.repository_id.as_bytes();
    let mut repo_id = [0u8; 16];
    let digit = |c: u8| (c as char).to_digit(16);
    if hex.len() != 32 || !hex.iter().all(|&c| digit(c).is_some()) {
        return Err(ApiError::bad_request(
            "origin.repository_id must be 32 hexadecimal digits (GET /v1/info of the source)",
        ));
    }
    for (k, pair) in hex.chunks_exact(2).enumerate() {
        repo_id[k] = (digit(pair[0]).unwrap_or(0) * 16 + digit(pair[1]).unwrap_or(0)) as u8;
    }
    Ok((
        bunker_store::Origin {
            repo_id,
            snapshot_id: o.snapshot_id,
        },
        o.created_unix_ms,
    ))
}

pub(super) fn abort(state: &State, p: &Principal, sid: &str) -> Reply {
    session(state, p, sid)?;
    state.sessions.remove(sid);
    Ok(no_content())
}

/// Body: N chunk ids of 32 bytes. Answer: a bitmap of ceil(N/8) bytes, bit
/// `i % 8` of byte `i / 8` set when chunk `i` is missing.
pub(super) async fn missing(
    state: &Arc<State>,
    p: &Principal,
    req: Request<Incoming>,
    sid: &str,
) -> Reply {
    let s = session(state, p, sid)?;
    let max = MAX_IDS_PER_QUERY * CHUNK_ID_LEN;
    // The body, then as many ids again.
    let memory = state.body_memory(2 * declared_len(&req, max)?).await?;
    let body = read_small_body(req.into_body(), max).await?;
    if body.len() % CHUNK_ID_LEN != 0 {
        return Err(ApiError::bad_request(format!(
            "the body must be a sequence of {CHUNK_ID_LEN}-byte chunk ids"
        )));
    }
    let st = state.clone();
    let bitmap = blocking(move || {
        let _memory = memory;
        let ids: Vec<ChunkId> = body
            .chunks_exact(CHUNK_ID_LEN)
            .map(|c| {
                let mut id = [0u8; 32];
                id.copy_from_slice(c);
                ChunkId(id)
            })
            .collect();
        let missing = st.repo.missing(&ids, &s.pins);
        let mut bitmap = vec![0u8; ids.len().div_ceil(8)];
        for (i, m) in missing.into_iter().enumerate() {
            if m {
                bitmap[i / 8] |= 1 << (i % 8);
            }
        }
        Ok(bitmap)
    })
    .await?;
    let mut r = Response::new(full(bitmap));
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/octet-stream"),
    );
    Ok(r)
}

/// Body: the chunk, raw or with `Content-Encoding: zstd`. The server
/// decompresses and checks its BLAKE3 against the id before storing it; a
/// zstd frame that saves space is stored as it came (never recompressed).
pub(super) async fn put_chunk(
    state: &Arc<State>,
    p: &Principal,
    req: Request<Incoming>,
    sid: &str,
    id: &str,
) -> Reply {
    let s = session(state, p, sid)?;
    let id = ChunkId::from_hex(id).map_err(|e| ApiError::bad_request(e.to_string()))?;
    let max = state.repo.chunker_params().max_len as usize;
    let zstd = match req
        .headers()
        .get(hyper::header::CONTENT_ENCODING)
        .map(|v| v.as_bytes())
    {
        None | Some(b"identity") => false,
        Some(b"zstd") => true,
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "unsupported Content-Encoding {:?}",
                String::from_utf8_lossy(other)
            )))
        }
    };
    let limit = max + max / 64 + 4096;
    // The body, and the chunk it decompresses to.
    let need = declared_len(&req, limit)? + if zstd { max as u64 } else { 0 };
    let memory = state.body_memory(need).await?;
    let body = read_small_body(req.into_body(), limit).await?;
    let st = state.clone();
    let session = s.clone();
    let (raw_len, stored) = blocking(move || {
        let _memory = memory;
        let pins = &session.pins;
        let stored = if zstd {
            st.repo.store_chunk_frame(&id, &body, pins)
        } else {
            let raw_len = body.len() as u64;
            st.repo.store_chunk(&id, &body, pins).map(|s| (raw_len, s))
        };
        stored.map_err(|e| st.store_error(e))
    })
    .await?;
    if stored > 0 {
        s.add_stored(raw_len, stored);
        state.metrics.chunks_stored.fetch_add(1, Ordering::Relaxed);
        state
            .metrics
            .bytes_stored
            .fetch_add(stored, Ordering::Relaxed);
    }
    let mut r = Response::new(full(""));
    *r.status_mut() = if stored > 0 {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok(r)
}

/// Body: the snapshot's block hashes file (docs/FORMAT.md, "Block
/// hashes"), checked whole before it is kept; the commit then checks that
/// it describes the committed image. A second upload replaces the first.
pub(super) async fn put_blocks(
    state: &Arc<State>,
    p: &Principal,
    req: Request<Incoming>,
    sid: &str,
) -> Reply {
    let s = session(state, p, sid)?;
    let (tx, rx) = mpsc::channel::<BodyItem>(32);
    let st = state.clone();
    let sess = s.clone();
    let work = tokio::task::spawn_blocking(move || -> Result<(), ApiError> {
        let blocks = st
            .repo
            .receive_blocks(BodyReader::new(rx))
            .map_err(|e| match e {
                bunker_store::Error::Invalid(m) => ApiError::bad_request(m),
                bunker_store::Error::Source(e) => {
                    ApiError::bad_request(format!("block hashes: {e}"))
                }
                other => st.store_error(other),
            })?;
        *sess.blocks.lock().unwrap_or_else(|p| p.into_inner()) = Some(blocks);
        Ok(())
    });
    let pumped = pump_body(req.into_body(), tx, u64::MAX, state.config.idle_timeout()).await;
    let result = work
        .await
        .map_err(|e| ApiError::internal(format!("block hashes worker failed: {e}")));
    match (pumped, result) {
        (_, Ok(Ok(()))) => {}
        (Err(e), _) | (Ok(_), Ok(Err(e))) | (Ok(_), Err(e)) => return Err(e),
    }
    s.touch();
    Ok(no_content())
}

/// Body: the manifest, one 40-byte entry per chunk in stream order (raw
/// length u64 little-endian, chunk id); header `x-bunker-stream-hash`:
/// the BLAKE3 of the whole image. Refused (422 `missing_chunk`) if any
/// chunk is not stored.
pub(super) async fn commit(
    state: &Arc<State>,
    p: &Principal,
    req: Request<Incoming>,
    sid: &str,
) -> Reply {
    let s = session(state, p, sid)?;
    let stream_hash = parse_hash(
        req.headers().get(bunker_api::HEADER_STREAM_HASH),
        bunker_api::HEADER_STREAM_HASH,
    )?
    .ok_or_else(|| {
        ApiError::bad_request(format!(
            "a commit needs the {} header",
            bunker_api::HEADER_STREAM_HASH
        ))
    })?;
    if s.committing.swap(true, Ordering::SeqCst) {
        return Err(ApiError::new(
            ErrorCode::Conflict,
            "this session is already committing",
        ));
    }
    let committing = Committing(s.clone());
    let (tx, rx) = mpsc::channel::<BodyItem>(32);
    let st = state.clone();
    let sess = s.clone();
    // The worker ends the session itself once committed: it may outlive
    // this request (a client gone after its last byte).
    let work = tokio::task::spawn_blocking(move || {
        let _committing = committing;
        let (info, created) = commit_entries(&st, &sess, &mut BodyReader::new(rx), stream_hash)?;
        sess.pins.committed();
        st.sessions.remove(&sess.id);
        let m = &st.metrics;
        m.bytes_ingested.fetch_add(info.size, Ordering::Relaxed);
        m.bytes_deduplicated
            .fetch_add(info.size.saturating_sub(info.new_bytes), Ordering::Relaxed);
        Ok((info, created))
    });
    // However steadily it trickles, the body has `commit_timeout_secs`:
    // a commit holds an ingest slot, and its session does not expire.
    let deadline = state.config.commit_timeout();
    let pump = pump_body(req.into_body(), tx, u64::MAX, state.config.idle_timeout());
    let pumped = tokio::time::timeout(deadline, pump)
        .await
        .unwrap_or_else(|_| {
            Err(ApiError::new(
                ErrorCode::Timeout,
                format!(
                    "the commit body did not arrive within {} s (commit_timeout_secs); \
                     nothing was committed",
                    deadline.as_secs()
                ),
            ))
        });
    let result = work
        .await
        .map_err(|e| ApiError::internal(format!("commit worker failed: {e}")));
    let (info, created) = match (pumped, result) {
        (_, Ok(Ok(done))) => done,
        (Err(e), _) | (Ok(_), Ok(Err(e))) | (Ok(_), Err(e)) => return Err(e),
    };
    let status = if created {
        tracing::info!(name = %info.name, id = info.id.0, bytes = info.size, copy = info.origin.is_some(), "snapshot committed by chunk protocol");
        StatusCode::CREATED
    } else {
        tracing::info!(name = %info.name, id = info.id.0, "copy already here: nothing committed");
        StatusCode::OK
    };
    Ok(json_response(
        status,
        &crate::convert::snapshot(&state.checks, &info),
    ))
}

/// Builds and commits the snapshot; `false` with the snapshot already
/// here when the session copies an origin this repository holds.
pub(crate) fn commit_entries(
    state: &State,
    s: &Session,
    body: &mut dyn Read,
    stream_hash: [u8; 32],
) -> Result<(bunker_store::SnapshotInfo, bool), ApiError> {
    let max = u64::from(state.repo.chunker_params().max_len);
    let mut w = state
        .repo
        .begin_snapshot(&s.name, &s.source, s.creator)
        .map_err(|e| state.store_error(e))?;
    w.set_started(s.opened);
    if let Some((origin, created)) = s.origin {
        w.set_origin(origin, created);
    }
    let mut reader = std::io::BufReader::with_capacity(256 << 10, body);
    let mut entry = [0u8; COMMIT_ENTRY_LEN];
    let mut i = 0u64;
    loop {
        match read_entry(&mut reader, &mut entry) {
            Ok(false) => break,
            Ok(true) => {}
            Err(e) => return Err(ApiError::bad_request(format!("manifest entry {i}: {e}"))),
        }
        let mut len = [0u8; 8];
        len.copy_from_slice(&entry[..8]);
        let len = u64::from_le_bytes(len);
        let mut id = [0u8; 32];
        id.copy_from_slice(&entry[8..]);
        let id = ChunkId(id);
        if len == 0 || (len > max && !id.is_zero()) {
            return Err(ApiError::bad_request(format!(
                "manifest entry {i}: length {len} is outside 1..={max}"
            )));
        }
        w.push_stored(&id, len).map_err(|e| match e {
            bunker_store::Error::NotFound { .. } => ApiError::new(
                ErrorCode::MissingChunk,
                format!("manifest entry {i}: chunk {id} is not stored; upload it first"),
            ),
            other => state.store_error(other),
        })?;
        i += 1;
    }
    w.add_new(s.new_data());
    if let Some(blocks) = s.blocks.lock().unwrap_or_else(|p| p.into_inner()).take() {
        w.set_blocks(blocks);
    }
    if s.origin.is_none() {
        return w
            .commit(stream_hash, None)
            .map(|info| (info, true))
            .map_err(|e| state.store_error(e));
    }
    match w.commit_copy(stream_hash) {
        Ok(bunker_store::CopyCommit::New(info)) => Ok((info, true)),
        Ok(bunker_store::CopyCommit::Existing(info)) => Ok((info, false)),
        Err(e) => Err(state.store_error(e)),
    }
}

/// Reads one entry; `Ok(false)` at a clean end, an error for a torn one.
fn read_entry(r: &mut impl Read, buf: &mut [u8; COMMIT_ENTRY_LEN]) -> std::io::Result<bool> {
    let mut got = 0;
    while got < buf.len() {
        match r.read(&mut buf[got..])? {
            0 if got == 0 => return Ok(false),
            0 => {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "the body ends inside an entry",
                ))
            }
            n => got += n,
        }
    }
    Ok(true)
}
