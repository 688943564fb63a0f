//! Backup with client-side deduplication (the chunk protocol).
//!
//! Per 16 MiB block of the source: content-defined cuts on all cores (the
//! server's parameters, so chunk ids match what the server stores), BLAKE3
//! of each chunk in parallel, one `missing` query for the block's ids,
//! parallel uploads of the missing chunks (zstd at the repository's level
//! when it saves space; the server verifies each frame and stores it as it
//! came, so the compression is paid here, once), and the block's manifest
//! entries appended to a temporary file. The commit streams that file.
//! Memory: one block buffer plus the compressed chunks of one block.
//!
//! One function per phase, in order: `chunker` (the server's parameters),
//! `open_session`, `upload_all` (per block: `send_missing`, which uploads
//! with `put_chunk`, then `append_entries`), `commit`. A failure before
//! the commit deletes the session; nothing is committed.

use std::collections::HashSet;
use std::io::{BufWriter, Read, Seek, SeekFrom, Write};
use std::time::Instant;

use bunker_api::{Session, SessionRequest, Snapshot, COMMIT_ENTRY_LEN};
use bunker_chunk::blocks_file::BlocksEncoder;
use bunker_chunk::digest::BlockHasher;
use bunker_chunk::seams::{self, Span};
use bunker_chunk::{ChunkId, Chunker, ChunkerParams};
use rayon::prelude::*;

use crate::{Client, Error, Result};

/// Bytes read from the source per block.
const BLOCK_LEN: usize = 16 << 20;

#[derive(Clone, Debug, Default)]
pub struct BackupOptions {
    /// Kept in the snapshot (e.g. `host:/dev/sdb`).
    pub source: String,
    /// Total bytes, when known (for progress).
    pub size_hint: Option<u64>,
}

#[derive(Clone, Copy, Debug, Default)]
pub struct BackupProgress {
    pub bytes_read: u64,
    pub total: Option<u64>,
    pub chunks: u64,
    pub chunks_uploaded: u64,
    /// Bytes sent over the wire for chunk uploads (after compression).
    pub bytes_uploaded: u64,
    /// Bytes of chunks the server already had, plus zero runs.
    pub bytes_deduplicated: u64,
}

#[derive(Clone, Debug)]
pub struct BackupReport {
    pub snapshot: Snapshot,
    pub progress: BackupProgress,
    pub seconds: f64,
}

/// Where the chunks of a backup go and how they are compressed.
pub(crate) struct Sending<'a> {
    pub(crate) session: &'a Session,
    /// The repository's zstd level: the server keeps the frames as sent.
    pub(crate) level: i32,
}

/// What `upload_all` leaves for the commit.
pub(crate) struct Upload {
    /// The commit body, written as the blocks went.
    pub(crate) manifest: tempfile::NamedTempFile,
    /// BLAKE3 of the whole source.
    pub(crate) stream_hash: blake3::Hash,
    /// Its block hashes file (docs/FORMAT.md, "Block hashes").
    pub(crate) blocks: tempfile::NamedTempFile,
    pub(crate) stats: BackupProgress,
}

impl Client {
    /// Backs `source` up as a new snapshot of `name`. On error nothing is
    /// committed; chunks already uploaded stay and make a retry cheaper.
    pub fn backup(
        &self,
        name: &str,
        mut source: impl Read,
        opts: &BackupOptions,
        progress: &mut dyn FnMut(&BackupProgress),
    ) -> Result<BackupReport> {
        let started = Instant::now();
        let (chunker, level, block_hashes) = self.server_params()?;
        let session = self.open_session(name, opts)?;
        let sending = Sending {
            session: &session,
            level,
        };
        let upload = match self.upload_all(&sending, &chunker, &mut source, opts, progress) {
            Ok(u) => u,
            Err(e) => {
                let _ = self.delete(&format!("/v1/sessions/{}", session.id)).call();
                return Err(e);
            }
        };
        if block_hashes {
            self.put_blocks(&session, &upload.blocks)?;
        }
        let snapshot = self.commit(&session, &upload)?;
        Ok(BackupReport {
            snapshot,
            progress: upload.stats,
            seconds: started.elapsed().as_secs_f64(),
        })
    }

    /// A chunker with the server's parameters, so chunk ids match what it
    /// stores, the repository's zstd level, and whether the server keeps
    /// block hashes.
    pub(crate) fn server_params(&self) -> Result<(Chunker, i32, bool)> {
        let info = self.info()?;
        let params = ChunkerParams::new(
            info.chunker.min_bytes,
            info.chunker.avg_bytes,
            info.chunker.max_bytes,
        )
        .map_err(|e| {
            Error::Interrupted(format!(
                "the server announced unusable chunker parameters: {e}"
            ))
        })?;
        Ok((Chunker::new(params), info.zstd_level, info.block_hashes))
    }

    pub(crate) fn open_session(&self, name: &str, opts: &BackupOptions) -> Result<Session> {
        self.json_post(
            "/v1/sessions",
            &SessionRequest {
                name: name.to_string(),
                source: Some(opts.source.clone()),
                origin: None,
            },
        )
    }

    /// Sends the block hashes, which the server keeps with the snapshot
    /// once the commit has checked them against it.
    pub(crate) fn put_blocks(
        &self,
        session: &Session,
        blocks: &tempfile::NamedTempFile,
    ) -> Result<()> {
        let mut file = blocks
            .reopen()
            .map_err(|e| Error::io("reopening the temporary block hashes", e))?;
        let resp = self
            .put(&format!("/v1/sessions/{}/blocks", session.id))
            .header("content-type", "application/octet-stream")
            .send(ureq::SendBody::from_reader(&mut file));
        checked_in_session(self.check(resp)).map(|_| ())
    }

    /// Sends the manifest with the whole-stream hash; the server makes the
    /// snapshot visible only once it is durable.
    pub(crate) fn commit(&self, session: &Session, upload: &Upload) -> Result<Snapshot> {
        let mut file = upload
            .manifest
            .reopen()
            .map_err(|e| Error::io("reopening the temporary manifest", e))?;
        file.seek(SeekFrom::Start(0))
            .map_err(|e| Error::io("rewinding the temporary manifest", e))?;
        let resp = self
            .post(&format!("/v1/sessions/{}/commit", session.id))
            .header(
                bunker_api::HEADER_STREAM_HASH,
                &upload.stream_hash.to_hex().to_string(),
            )
            .header("content-type", "application/octet-stream")
            .send(ureq::SendBody::from_reader(&mut file));
        let mut resp = checked_in_session(self.check(resp))?;
        resp.body_mut()
            .read_json()
            .map_err(|e| Error::Interrupted(format!("reading the commit answer: {e}")))
    }

    fn json_post<T: serde::de::DeserializeOwned>(
        &self,
        path: &str,
        body: &impl serde::Serialize,
    ) -> Result<T> {
        let mut resp = self.check(self.post(path).send_json(body))?;
        resp.body_mut()
            .read_json()
            .map_err(|e| Error::Interrupted(format!("reading the server's answer: {e}")))
    }

    /// Reads, chunks, uploads (`send_missing`), block by block; the
    /// block's entries go to the temporary manifest.
    fn upload_all(
        &self,
        sending: &Sending<'_>,
        chunker: &Chunker,
        source: &mut impl Read,
        opts: &BackupOptions,
        progress: &mut dyn FnMut(&BackupProgress),
    ) -> Result<Upload> {
        let max = chunker.params().max_len as usize;
        let tmp = tempfile::NamedTempFile::new()
            .map_err(|e| Error::io("creating a temporary manifest", e))?;
        let mut manifest = BufWriter::with_capacity(
            1 << 20,
            tmp.reopen()
                .map_err(|e| Error::io("opening the temporary manifest", e))?,
        );
        let block_len = bunker_chunk::blocks_file::DEFAULT_BLOCK_LEN;
        let mut hasher = BlockHasher::new(block_len).on_all_cores();
        let blocks_tmp = tempfile::NamedTempFile::new()
            .map_err(|e| Error::io("creating temporary block hashes", e))?;
        let blocks_err = |e| Error::io("writing the temporary block hashes", e);
        let mut blocks = BlocksEncoder::new(BufWriter::with_capacity(
            256 << 10,
            blocks_tmp.reopen().map_err(blocks_err)?,
        ))
        .map_err(blocks_err)?;
        let mut blocks_written = Ok(());
        let mut buf = vec![0u8; max + BLOCK_LEN];
        let mut carry = 0usize;
        let mut stats = BackupProgress {
            total: opts.size_hint,
            ..Default::default()
        };
        loop {
            let (filled, eof) = fill(source, &mut buf[carry..])
                .map_err(|e| Error::io("reading the backup source", e))?;
            hasher.update(&buf[carry..carry + filled], |_, cv| {
                if blocks_written.is_ok() {
                    blocks_written = blocks.push(&cv);
                }
            });
            let data = &buf[..carry + filled];
            let spans = seams::chunk_parallel(chunker, data, eof);
            let at = spans.last().map_or(0, |s| s.end);
            self.send_missing(sending, data, &spans, &mut stats)?;
            append_entries(&mut manifest, &spans)?;
            stats.bytes_read += filled as u64;
            stats.chunks += spans.len() as u64;
            progress(&stats);
            let len = data.len();
            buf.copy_within(at..len, 0);
            carry = len - at;
            if eof {
                break;
            }
        }
        manifest
            .flush()
            .map_err(|e| Error::io("writing the temporary manifest", e))?;
        blocks_written.map_err(blocks_err)?;
        let len = hasher.len();
        let (stream_hash, tail) = hasher.finalize_with_tail();
        blocks.finish(block_len, len, tail).map_err(blocks_err)?;
        Ok(Upload {
            manifest: tmp,
            stream_hash,
            blocks: blocks_tmp,
            stats,
        })
    }

    /// Asks which chunks of a block are missing and uploads them.
    pub(crate) fn send_missing(
        &self,
        sending: &Sending<'_>,
        data: &[u8],
        spans: &[Span],
        stats: &mut BackupProgress,
    ) -> Result<()> {
        let mut seen = HashSet::new();
        let query: Vec<&Span> = spans
            .iter()
            .filter(|s| !s.zero && seen.insert(s.id))
            .collect();
        let len = |s: &Span| (s.end - s.start) as u64;
        stats.bytes_deduplicated += spans.iter().filter(|s| s.zero).map(len).sum::<u64>();
        if query.is_empty() {
            return Ok(());
        }
        let body: Vec<u8> = query.iter().flat_map(|s| s.id.0).collect();
        let mut resp = checked_in_session(
            self.check(
                self.post(&format!("/v1/sessions/{}/missing", sending.session.id))
                    .header("content-type", "application/octet-stream")
                    .send(&body[..]),
            ),
        )?;
        let bitmap = resp
            .body_mut()
            .read_to_vec()
            .map_err(|e| Error::Interrupted(format!("reading the missing-chunk answer: {e}")))?;
        if bitmap.len() != query.len().div_ceil(8) {
            return Err(Error::Interrupted(
                "the server's missing-chunk answer has the wrong length".into(),
            ));
        }
        let missing: Vec<&Span> = query
            .iter()
            .enumerate()
            .filter(|(k, _)| bitmap[k / 8] & (1 << (k % 8)) != 0)
            .map(|(_, s)| *s)
            .collect();
        let sent: Vec<Result<u64>> = missing
            .par_iter()
            .map(|s| self.put_chunk(sending, &s.id, &data[s.start..s.end]))
            .collect();
        for r in sent {
            stats.bytes_uploaded += r?;
            stats.chunks_uploaded += 1;
        }
        let uploaded_raw: u64 = missing.iter().map(|s| len(s)).sum();
        let block_bytes: u64 = spans.iter().filter(|s| !s.zero).map(len).sum();
        stats.bytes_deduplicated += block_bytes - uploaded_raw;
        Ok(())
    }

    /// Uploads one chunk, compressed when that helps; returns bytes sent.
    fn put_chunk(&self, sending: &Sending<'_>, id: &ChunkId, raw: &[u8]) -> Result<u64> {
        let path = format!("/v1/sessions/{}/chunks/{}", sending.session.id, id.to_hex());
        let packed = zstd::bulk::compress(raw, sending.level)
            .ok()
            .filter(|c| c.len() < raw.len() - raw.len() / 32);
        let resp = match &packed {
            Some(c) => self
                .put(&path)
                .header("content-encoding", "zstd")
                .send(&c[..]),
            None => self.put(&path).send(raw),
        };
        checked_in_session(self.check(resp))?;
        Ok(packed.map_or(raw.len(), |c| c.len()) as u64)
    }
}

/// A session route answering 404 means the server lost the session
/// (restarted, or the session expired): an interrupted transfer, not a
/// missing snapshot.
fn checked_in_session<T>(r: Result<T>) -> Result<T> {
    r.map_err(|e| match e {
        Error::NotFound { message } => Error::Interrupted(format!(
            "the server no longer knows this upload session ({message}); it restarted or the session expired"
        )),
        other => other,
    })
}

/// Appends the commit entries of `spans` (raw length, chunk id) to the
/// temporary manifest.
fn append_entries(manifest: &mut impl Write, spans: &[Span]) -> Result<()> {
    for s in spans {
        let mut entry = [0u8; COMMIT_ENTRY_LEN];
        entry[..8].copy_from_slice(&((s.end - s.start) as u64).to_le_bytes());
        entry[8..].copy_from_slice(&s.id.0);
        manifest
            .write_all(&entry)
            .map_err(|e| Error::io("writing the temporary manifest", e))?;
    }
    Ok(())
}

/// Reads until `buf` is full or the source ends: `(bytes, eof)`.
fn fill(source: &mut impl Read, buf: &mut [u8]) -> std::io::Result<(usize, bool)> {
    let mut filled = 0;
    while filled < buf.len() {
        match source.read(&mut buf[filled..]) {
            Ok(0) => return Ok((filled, true)),
            Ok(n) => filled += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok((filled, false))
}
