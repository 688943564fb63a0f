//! Snapshots: list, metadata, delete, raw upload (`PUT`) and verified,
//! streamed restore with `Range` support (`crate::restore`).

use std::sync::atomic::Ordering;
use std::sync::Arc;

use bunker_api::{ErrorCode, Role, SnapshotList};
use bunker_store::{IngestOptions, SnapshotId};
use bytes::Bytes;
use hyper::body::Incoming;
use hyper::header::{
    HeaderValue, ACCEPT_RANGES, CONTENT_LENGTH, CONTENT_RANGE, CONTENT_TYPE, RANGE,
};
use hyper::{Request, Response, StatusCode};
use tokio::sync::mpsc;

use super::{blocking, can_read, check_name, parse_hash, require};
use crate::body::{channel_body, full, pump_body, BodyItem, BodyReader};
use crate::convert;
use crate::error::ApiError;
use crate::reply::{json_response, no_content, Reply};
use crate::restore::{Held, ENTRY_BATCH};
use crate::state::{Counted, State};
use crate::tokens::Principal;

/// `GET /v1/snapshots` and `GET /v1/snapshots/{name}`: the snapshots `p`
/// may read.
pub(super) async fn list(state: &Arc<State>, p: &Principal, name: Option<&str>) -> Reply {
    let name = name.map(str::to_string);
    if let Some(n) = &name {
        check_name(p, n)?;
    }
    let st = state.clone();
    let principal = p.clone();
    let snapshots = blocking(move || {
        let all = st
            .repo
            .list(name.as_deref())
            .map_err(|e| st.store_error(e))?;
        Ok(all
            .iter()
            .filter(|s| can_read(&principal, &s.name, s.creator))
            .map(|s| convert::snapshot(&st.checks, s))
            .collect::<Vec<_>>())
    })
    .await?;
    Ok(json_response(StatusCode::OK, &SnapshotList { snapshots }))
}

/// `latest` or a decimal id.
fn parse_id(id: &str) -> Result<Option<SnapshotId>, ApiError> {
    if id == "latest" {
        return Ok(None);
    }
    id.parse::<u64>().map(|n| Some(SnapshotId(n))).map_err(|_| {
        ApiError::bad_request(format!(
            "snapshot id {:?} is neither a number nor 'latest'",
            id.chars().take(40).collect::<String>()
        ))
    })
}

/// Looks a snapshot up and checks that `p` may read it. A snapshot the
/// caller may not read is reported as absent.
pub(super) async fn readable(
    state: &Arc<State>,
    p: &Principal,
    name: &str,
    id: &str,
) -> Result<bunker_store::SnapshotInfo, ApiError> {
    check_name(p, name)?;
    let id = parse_id(id)?;
    let st = state.clone();
    let n = name.to_string();
    let principal = p.clone();
    blocking(move || {
        let info = match id {
            Some(id) => st
                .repo
                .snapshot(&n, Some(id))
                .map_err(|e| st.store_error(e))?,
            // A writer's `latest` is the latest it created.
            None if principal.role == Role::Writer => st
                .repo
                .list(Some(&n))
                .map_err(|e| st.store_error(e))?
                .into_iter()
                .rev()
                .find(|s| s.creator == principal.id)
                .ok_or_else(|| {
                    ApiError::not_found(format!("no snapshot of {n:?} created by this token"))
                })?,
            None => st.repo.snapshot(&n, None).map_err(|e| st.store_error(e))?,
        };
        if !can_read(&principal, &info.name, info.creator) {
            return Err(ApiError::not_found(format!(
                "snapshot {n}@{} not found",
                info.id
            )));
        }
        Ok(info)
    })
    .await
}

/// `GET /v1/snapshots/{name}/{id|latest}`: one snapshot's metadata.
pub(super) async fn one(state: &Arc<State>, p: &Principal, name: &str, id: &str) -> Reply {
    let info = readable(state, p, name, id).await?;
    Ok(json_response(
        StatusCode::OK,
        &convert::snapshot(&state.checks, &info),
    ))
}

/// `DELETE /v1/snapshots/{name}/{id}` (admin): removes the manifest; the
/// space comes back through GC.
pub(super) async fn delete(state: &Arc<State>, p: &Principal, name: &str, id: &str) -> Reply {
    require(
        p,
        &[Role::Admin],
        "delete snapshots (backups are append-only for writers)",
    )?;
    check_name(p, name)?;
    let id = parse_id(id)?
        .ok_or_else(|| ApiError::bad_request("delete a snapshot by its id, not 'latest'"))?;
    let st = state.clone();
    let n = name.to_string();
    blocking(move || {
        st.repo.delete(&n, id).map_err(|e| st.store_error(e))?;
        if let Err(e) = st.checks.forget(&[(n, id.0)]) {
            tracing::warn!("{e}");
        }
        Ok(())
    })
    .await?;
    tracing::info!(name, id = id.0, "snapshot deleted");
    Ok(no_content())
}

/// Parses a single `bytes=` range against `size`: `Ok(None)` for no (or an
/// ignored multi-) range, 416 for an unsatisfiable one.
fn parse_range(value: Option<&HeaderValue>, size: u64) -> Result<Option<(u64, u64)>, ApiError> {
    let Some(v) = value else { return Ok(None) };
    let unsatisfiable = || {
        ApiError::new(
            ErrorCode::RangeNotSatisfiable,
            format!("range {v:?} is not satisfiable for {size} bytes"),
        )
    };
    let text = v.to_str().map_err(|_| unsatisfiable())?;
    let Some(spec) = text.trim().strip_prefix("bytes=") else {
        // RFC 9110 14.2: a range in a unit we do not know is ignored.
        return Ok(None);
    };
    if spec.contains(',') {
        return Ok(None);
    }
    let (a, b) = spec.split_once('-').ok_or_else(unsatisfiable)?;
    let (start, end) = match (a.trim(), b.trim()) {
        ("", suffix) => {
            let n: u64 = suffix.parse().map_err(|_| unsatisfiable())?;
            if n == 0 {
                return Err(unsatisfiable());
            }
            (size.saturating_sub(n), size)
        }
        (s, "") => (s.parse().map_err(|_| unsatisfiable())?, size),
        (s, e) => {
            let s: u64 = s.parse().map_err(|_| unsatisfiable())?;
            let e: u64 = e.parse().map_err(|_| unsatisfiable())?;
            if e < s {
                return Err(unsatisfiable());
            }
            (s, e.saturating_add(1).min(size))
        }
    };
    if start >= size {
        return Err(unsatisfiable());
    }
    Ok(Some((start, end)))
}

pub(super) async fn data(
    state: &Arc<State>,
    p: &Principal,
    req: Request<Incoming>,
    name: &str,
    id: &str,
) -> Reply {
    let info = readable(state, p, name, id).await?;
    let range = parse_range(req.headers().get(RANGE), info.size)?;
    let (start, end) = range.unwrap_or((0, info.size));
    let quota = state.restore_permit(p)?;
    let st = state.clone();
    let n = info.name.clone();
    let sid = info.id;
    let (cursor, first) = blocking(move || {
        let mut c = st
            .repo
            .manifest_cursor(&n, sid, start)
            .map_err(|e| st.store_error(e))?;
        let first = c.next_batch(ENTRY_BATCH).map_err(|e| st.store_error(e))?;
        Ok((c, first))
    })
    .await?;
    let label = format!("{}@{}", info.name, info.id);
    let body = crate::restore::stream(state, label, cursor, first, start..end, quota);
    let mut r = Response::new(body);
    let h = r.headers_mut();
    h.insert(
        CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    h.insert(ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    h.insert(CONTENT_LENGTH, HeaderValue::from(end - start));
    if let Ok(v) = HeaderValue::from_str(&info.stream_hash_hex()) {
        h.insert(bunker_api::HEADER_STREAM_HASH, v);
    }
    if range.is_some() {
        if let Ok(v) = HeaderValue::from_str(&format!(
            "bytes {start}-{}/{}",
            end.saturating_sub(1),
            info.size
        )) {
            h.insert(CONTENT_RANGE, v);
        }
        *r.status_mut() = StatusCode::PARTIAL_CONTENT;
    }
    Ok(r)
}

/// `GET .../manifest`: the snapshot's chunks in stream order, 40 bytes
/// each: end offset (u64 little-endian) and chunk id (all zeros for a zero
/// chunk). Streamed from the manifest file.
pub(super) async fn manifest(state: &Arc<State>, p: &Principal, name: &str, id: &str) -> Reply {
    let info = readable(state, p, name, id).await?;
    let quota = state.restore_permit(p)?;
    let st = state.clone();
    let (n, sid) = (info.name.clone(), info.id);
    let cursor = blocking(move || {
        st.repo
            .manifest_cursor(&n, sid, 0)
            .map_err(|e| st.store_error(e))
    })
    .await?;
    // Batches are read on the blocking pool and sent from a task: a client
    // that stops reading holds one batch and no thread.
    let (tx, rx) = mpsc::channel::<std::io::Result<Bytes>>(1);
    let st = state.clone();
    tokio::spawn(async move {
        let _held = (quota, Counted::new(&st, |m| &m.active_restores));
        let mut cursor = Some(cursor);
        while let Some(mut c) = cursor.take() {
            let read = tokio::task::spawn_blocking(move || {
                let b = c.next_batch(ENTRY_BATCH);
                (c, b)
            })
            .await;
            let item = match read {
                Ok((c, Ok(batch))) if !batch.is_empty() => {
                    cursor = Some(c);
                    let mut buf = Vec::with_capacity(40 * batch.len());
                    for e in batch {
                        buf.extend_from_slice(&e.end.to_le_bytes());
                        buf.extend_from_slice(&e.id.0);
                    }
                    Ok(Bytes::from(buf))
                }
                Ok((_, Ok(_))) => break,
                Ok((_, Err(e))) => Err(std::io::Error::other(e.to_string())),
                Err(e) => Err(std::io::Error::other(format!(
                    "manifest reader failed: {e}"
                ))),
            };
            if tx.send(item).await.is_err() {
                break;
            }
        }
    });
    let mut r = Response::new(channel_body(rx));
    r.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    r.headers_mut()
        .insert(CONTENT_LENGTH, HeaderValue::from(info.chunks * 40));
    Ok(r)
}

/// `GET .../blocks`: the snapshot's block hashes file (checked when opened;
/// its plaintext when the repository seals it), for a changed-extent backup against this snapshot; 404
/// for a snapshot that has none.
pub(super) async fn blocks(state: &Arc<State>, p: &Principal, name: &str, id: &str) -> Reply {
    let info = readable(state, p, name, id).await?;
    let st = state.clone();
    let (n, sid) = (info.name.clone(), info.id);
    let file = blocking(move || {
        let blocks = st
            .repo
            .block_hashes(&n, sid)
            .map_err(|e| st.store_error(e))?
            .ok_or_else(|| {
                ApiError::not_found(format!(
                    "snapshot {n}@{sid} has no block hashes (it was written before bunker \
                     kept them, or by a client that sent none)"
                ))
            })?;
        let len = blocks.header().file_len();
        let f = blocks.reader().map_err(|e| st.store_error(e))?;
        Ok((f, len))
    })
    .await?;
    let (f, len) = file;
    let (tx, rx) = mpsc::channel::<std::io::Result<Bytes>>(2);
    tokio::task::spawn_blocking(move || {
        use std::io::Read;
        let mut f = f;
        loop {
            let mut buf = vec![0u8; 256 << 10];
            let item = match f.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    buf.truncate(n);
                    Ok(Bytes::from(buf))
                }
                Err(e) => Err(e),
            };
            let failed = item.is_err();
            if tx.blocking_send(item).is_err() || failed {
                break;
            }
        }
    });
    let mut r = Response::new(channel_body(rx));
    r.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    r.headers_mut()
        .insert(CONTENT_LENGTH, HeaderValue::from(len));
    Ok(r)
}

/// `GET .../chunks/{id}`: one chunk's raw bytes, BLAKE3-verified before the
/// response starts, so a damaged chunk is a 500 naming it.
pub(super) async fn chunk(
    state: &Arc<State>,
    p: &Principal,
    req: Request<Incoming>,
    name: &str,
    id: &str,
    chunk: &str,
) -> Reply {
    let chunk =
        bunker_store::ChunkId::from_hex(chunk).map_err(|e| ApiError::bad_request(e.to_string()))?;
    // `Accept-Encoding: zstd`: the record's zstd frame as it is stored
    // (a copy to another server keeps it without recompressing).
    let as_stored = req
        .headers()
        .get_all(hyper::header::ACCEPT_ENCODING)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|e| e.split(';').next().map(str::trim) == Some(bunker_api::ENCODING_ZSTD));
    let info = readable(state, p, name, id).await?;
    let quota = state.restore_permit(p)?;
    // The chunk's length is known once it is read: take room for the
    // longest and give back the rest.
    let max = u64::from(state.repo.chunker_params().max_len);
    let limit = state.config.write_timeout();
    let mut budget = state
        .restores
        .budget
        .take(max, limit)
        .await
        .ok_or_else(|| {
            ApiError::new(
                ErrorCode::Overloaded,
                format!(
                    "no restore memory came free within {} s; retry later",
                    limit.as_secs()
                ),
            )
        })?;
    let st = state.clone();
    let label = format!("{}@{}", info.name, info.id);
    let (data, zstd) = blocking(move || {
        let read = if as_stored {
            st.repo.read_chunk_stored(&chunk)
        } else {
            st.repo.read_chunk(&chunk).map(|d| (d, false))
        };
        read.map_err(|e| {
            if e.is_corrupt() {
                tracing::error!(snapshot = label, "damaged chunk requested: {e}");
            }
            st.store_error(e)
        })
    })
    .await?;
    let len = data.len().max(1);
    if budget.num_permits() > len {
        drop(budget.split(budget.num_permits() - len));
    }
    state
        .metrics
        .restore_bytes
        .fetch_add(data.len() as u64, Ordering::Relaxed);
    let mut r = Response::new(full(Held::bytes(data, budget, Some(quota))));
    r.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    if zstd {
        r.headers_mut().insert(
            hyper::header::CONTENT_ENCODING,
            HeaderValue::from_static(bunker_api::ENCODING_ZSTD),
        );
    }
    r.headers_mut().insert(
        hyper::header::VARY,
        HeaderValue::from_static("accept-encoding"),
    );
    Ok(r)
}

/// `PUT /v1/snapshots/{name}`: the body is the image.
pub(super) async fn upload(
    state: &Arc<State>,
    p: &Principal,
    name: &str,
    req: Request<Incoming>,
) -> Reply {
    require(p, &[Role::Admin, Role::Writer], "create snapshots")?;
    check_name(p, name)?;
    let max = state.config.max_body_bytes;
    if let Some(len) = req
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
    {
        if len > max {
            return Err(ApiError::new(
                ErrorCode::PayloadTooLarge,
                format!("{len} bytes is more than the server's limit of {max}"),
            ));
        }
    }
    let expected = parse_hash(
        req.headers().get(bunker_api::HEADER_STREAM_HASH),
        bunker_api::HEADER_STREAM_HASH,
    )?;
    let source = req
        .headers()
        .get(bunker_api::HEADER_SOURCE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("http upload")
        .chars()
        .take(192)
        .collect::<String>();
    let slot = state.stream_permit(p)?;
    let active = Counted::new(state, |m| &m.active_streams);
    let (tx, rx) = mpsc::channel::<BodyItem>(32);
    let st = state.clone();
    let n = name.to_string();
    let opts = IngestOptions {
        source,
        expected_hash: expected,
        creator: p.id,
    };
    // The slot and the gauge go with the ingest, which may outlive this
    // request (a client gone after its last byte).
    let ingest = tokio::task::spawn_blocking(move || {
        let _held = (slot, active);
        let mut last = bunker_store::Progress::default();
        let r = st.repo.ingest(&n, BodyReader::new(rx), &opts, &mut |pr| {
            let m = &st.metrics;
            m.bytes_ingested
                .fetch_add(pr.bytes_read - last.bytes_read, Ordering::Relaxed);
            m.chunks_stored
                .fetch_add(pr.new_chunks - last.new_chunks, Ordering::Relaxed);
            m.bytes_stored
                .fetch_add(pr.new_bytes - last.new_bytes, Ordering::Relaxed);
            last = *pr;
        });
        r.map_err(|e| st.store_error(e))
    });
    let pumped = pump_body(req.into_body(), tx, max, state.config.idle_timeout()).await;
    let result = ingest
        .await
        .map_err(|e| ApiError::internal(format!("ingest worker failed: {e}")));
    // A body failure explains an ingest failure better than "cut off".
    let info = match (pumped, result) {
        (_, Ok(Ok(info))) => info,
        (Err(body_err), _) => return Err(body_err),
        (Ok(_), Ok(Err(e))) | (Ok(_), Err(e)) => return Err(e),
    };
    let dedup = info.size.saturating_sub(info.new_bytes.min(info.size));
    state
        .metrics
        .bytes_deduplicated
        .fetch_add(dedup, Ordering::Relaxed);
    tracing::info!(
        name,
        id = info.id.0,
        bytes = info.size,
        new_bytes = info.new_bytes,
        "snapshot uploaded"
    );
    Ok(json_response(
        StatusCode::CREATED,
        &convert::snapshot(&state.checks, &info),
    ))
}

#[cfg(test)]
mod tests {
    use super::parse_range;
    use hyper::header::HeaderValue;

    #[test]
    fn ranges() {
        let r = |s: &str| parse_range(Some(&HeaderValue::from_str(s).unwrap()), 1000);
        assert_eq!(r("bytes=0-99").unwrap(), Some((0, 100)));
        assert_eq!(r("bytes=900-").unwrap(), Some((900, 1000)));
        assert_eq!(r("bytes=-10").unwrap(), Some((990, 1000)));
        assert_eq!(r("bytes=990-5000").unwrap(), Some((990, 1000)));
        assert_eq!(r("bytes=0-1,5-6").unwrap(), None);
        for bad in [
            "bytes=1000-",
            "bytes=5-1",
            "bytes=-0",
            "bytes=x-1",
            "bytes=-",
        ] {
            assert!(r(bad).is_err(), "{bad}");
        }
        assert_eq!(parse_range(None, 10).unwrap(), None);
    }
}
