//! The pieces of the chunk protocol a copy between servers needs
//! (`bunker-sync` drives them): a snapshot's manifest streamed to a
//! writer, a chunk fetched as the frame the source stores it as, and a
//! session on the target driven step by step (open with an origin,
//! `missing`, put a frame, commit a manifest read from a file).
//!
//! Nothing here trusts the server it reads from with sizes: a manifest is
//! cut at the length its chunk count makes it, a chunk frame at the
//! repository's largest chunk plus zstd's worst-case overhead. The target
//! checks every frame against its id before storing it.

use std::io::{Read, Write};

use bunker_api::{Session, SessionRequest, Snapshot};
use bunker_chunk::ChunkId;

use crate::{Client, Error, Result};

/// A chunk as it crossed the wire.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frame {
    /// The raw chunk, or its zstd frame when `zstd`.
    pub bytes: Vec<u8>,
    pub zstd: bool,
}

/// What a commit answered: the snapshot, and whether this commit created
/// it (`false`: the target held a copy of the same origin already).
#[derive(Clone, Debug)]
pub struct Committed {
    pub snapshot: Snapshot,
    pub created: bool,
}

impl Client {
    /// Streams the manifest of `snap` (`GET .../manifest`: 40-byte entries,
    /// end offset u64 little-endian then chunk id) into `out`; returns its
    /// length, which is `40 * snap.chunks` or an error.
    pub fn download_manifest(&self, snap: &Snapshot, out: &mut dyn Write) -> Result<u64> {
        let mut body = self.open_manifest(snap)?;
        let mut buf = vec![0u8; 256 << 10];
        let mut n = 0u64;
        loop {
            let got = match body.read(&mut buf) {
                Ok(0) => break,
                Ok(got) => got,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(self.read_error("sending the manifest", e)),
            };
            out.write_all(&buf[..got])
                .map_err(|e| Error::io("writing the manifest", e))?;
            n += got as u64;
        }
        let expected = snap
            .chunks
            .saturating_mul(crate::restore::MANIFEST_ENTRY_LEN);
        if n != expected {
            return Err(Error::Verification(format!(
                "the server sent {n} bytes of manifest for {}@{}, which has {} chunks ({expected} bytes)",
                snap.name, snap.id, snap.chunks
            )));
        }
        Ok(n)
    }

    /// Chunk `id` of `snap` as the server stores it (`Accept-Encoding:
    /// zstd`): its zstd frame, or the raw bytes. At most `max_raw` bytes
    /// of chunk (plus zstd's overhead) are read. Not checked here: the
    /// target decodes and checks it against `id`.
    pub fn chunk_frame(&self, snap: &Snapshot, id: &ChunkId, max_raw: u64) -> Result<Frame> {
        let path = format!(
            "/v1/snapshots/{}/{}/chunks/{}",
            snap.name,
            snap.id,
            id.to_hex()
        );
        let what = format!("sending chunk {id} of {}@{}", snap.name, snap.id);
        let resp = self.check(
            self.get(&path)
                .header("accept-encoding", bunker_api::ENCODING_ZSTD)
                .call(),
        )?;
        let zstd = match resp
            .headers()
            .get(http::header::CONTENT_ENCODING)
            .map(|v| v.as_bytes())
        {
            None | Some(b"identity") => false,
            Some(b"zstd") => true,
            Some(other) => {
                return Err(Error::Verification(format!(
                    "the server sent chunk {id} with an unknown Content-Encoding {:?}",
                    String::from_utf8_lossy(other)
                )))
            }
        };
        let limit = max_raw + max_raw / 64 + 4096;
        let mut bytes = Vec::new();
        resp.into_body()
            .into_reader()
            .take(limit + 1)
            .read_to_end(&mut bytes)
            .map_err(|e| self.read_error(&what, e))?;
        if bytes.len() as u64 > limit {
            return Err(Error::Verification(format!(
                "the server sent more than {limit} bytes for chunk {id}, larger than any chunk of its repository"
            )));
        }
        Ok(Frame { bytes, zstd })
    }

    /// Opens a chunk-protocol session (`POST /v1/sessions`).
    pub fn start_session(&self, req: &SessionRequest) -> Result<Session> {
        let mut resp = self.check(self.post("/v1/sessions").send_json(req))?;
        resp.body_mut()
            .read_json()
            .map_err(|e| Error::Interrupted(format!("reading the server's answer: {e}")))
    }

    /// Which of `ids` the server lacks (`POST .../missing`), in order.
    pub fn missing(&self, session: &str, ids: &[ChunkId]) -> Result<Vec<bool>> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let body: Vec<u8> = ids.iter().flat_map(|id| id.0).collect();
        let mut resp = in_session(
            self.check(
                self.post(&format!("/v1/sessions/{session}/missing"))
                    .header("content-type", "application/octet-stream")
                    .send(&body[..]),
            ),
        )?;
        let bitmap = resp
            .body_mut()
            .with_config()
            .limit(ids.len().div_ceil(8) as u64 + 1)
            .read_to_vec()
            .map_err(|e| Error::Interrupted(format!("reading the missing-chunk answer: {e}")))?;
        if bitmap.len() != ids.len().div_ceil(8) {
            return Err(Error::Interrupted(
                "the server's missing-chunk answer has the wrong length".into(),
            ));
        }
        Ok((0..ids.len())
            .map(|k| bitmap[k / 8] & (1 << (k % 8)) != 0)
            .collect())
    }

    /// Uploads one chunk as `frame` (`PUT .../chunks/{id}`); the server
    /// decodes it, checks it against `id` and stores it.
    pub fn put_frame(&self, session: &str, id: &ChunkId, frame: &Frame) -> Result<()> {
        let path = format!("/v1/sessions/{session}/chunks/{}", id.to_hex());
        let req = self.put(&path);
        let req = if frame.zstd {
            req.header("content-encoding", bunker_api::ENCODING_ZSTD)
        } else {
            req
        };
        in_session(self.check(req.send(&frame.bytes[..]))).map(|_| ())
    }

    /// Commits a session with the manifest read from `manifest` (40-byte
    /// entries: raw length u64 little-endian, chunk id) and the image's
    /// BLAKE3 (hex).
    pub fn commit_session(
        &self,
        session: &str,
        manifest: &mut dyn Read,
        stream_hash: &str,
    ) -> Result<Committed> {
        let resp = self
            .post(&format!("/v1/sessions/{session}/commit"))
            .header(bunker_api::HEADER_STREAM_HASH, stream_hash)
            .header("content-type", "application/octet-stream")
            .send(ureq::SendBody::from_reader(manifest));
        let mut resp = in_session(self.check(resp))?;
        let created = resp.status().as_u16() == 201;
        let snapshot = resp
            .body_mut()
            .read_json()
            .map_err(|e| Error::Interrupted(format!("reading the commit answer: {e}")))?;
        Ok(Committed { snapshot, created })
    }

    /// Ends a session without committing (`DELETE /v1/sessions/{id}`).
    pub fn abort_session(&self, session: &str) -> Result<()> {
        self.check(self.delete(&format!("/v1/sessions/{session}")).call())
            .map(|_| ())
    }
}

/// A session route answering 404 means the server lost the session
/// (restarted, or it expired): an interrupted transfer.
fn in_session<T>(r: Result<T>) -> Result<T> {
    r.map_err(|e| match e {
        Error::NotFound { message } => Error::Interrupted(format!(
            "the server no longer knows this upload session ({message}); it restarted or the session expired"
        )),
        other => other,
    })
}
