//! Changed-extent backups: `bunker backup NAME SOURCE --base NAME@ID
//! --changed MAP`. Only the extents the map lists (and the unchanged bytes
//! around them up to the next shared chunk boundary) are read, chunked,
//! hashed and offered to the server; every other chunk is the base
//! snapshot's entry, taken without reading SOURCE. The manifest is exactly
//! the one a full read would give (`bunker_changes::rechunk`), and the
//! whole-image BLAKE3 is computed from the base's block hashes for the
//! unchanged 1 MiB blocks and from SOURCE's bytes for the others
//! (`bunker_chunk::digest`), so the snapshot records the true hash of
//! every byte (docs/FORMAT.md, "Block hashes").
//!
//! A wrong map would give a wrong snapshot, so a share of the reused
//! chunks (`verify_percent`, spread over the volume) is read from SOURCE
//! and hashed against the base's ids; any difference fails the backup
//! before anything is committed ([`Error::Verification`], exit 4).
//!
//! Memory: the base manifest and block hashes are spooled to temporary
//! files and read in order; one batch of changed chunks is held for
//! upload. Nothing grows with the volume.

use std::io::{BufReader, BufWriter, Read, Write};
use std::time::Instant;

use bunker_api::{Snapshot, COMMIT_ENTRY_LEN};
use bunker_changes::{walk, ChangeMap, Entry, Options, Piece};
use bunker_chunk::blocks_file::{BlocksHeader, CV_LEN, HEADER_LEN};
use bunker_chunk::digest::TreeStack;
use bunker_chunk::seams::Span;
use bunker_chunk::ChunkId;

use crate::backup::{BackupOptions, BackupProgress, Sending, Upload};
use crate::new_blocks::{slack, NewBlocks};
use crate::{Client, Error, Result};

/// Changed chunks gathered before one `missing` query and their uploads.
const BATCH_BYTES: usize = 16 << 20;

/// What a changed-extent backup did, beside the snapshot.
#[derive(Clone, Debug)]
pub struct ChangedReport {
    pub snapshot: Snapshot,
    pub progress: BackupProgress,
    pub seconds: f64,
    /// Bytes the map lists as changed.
    pub changed_bytes: u64,
    /// Bytes read from SOURCE: re-chunked stretches, blocks hashed for the
    /// image digest, and samples.
    pub bytes_read: u64,
    /// Reused bytes read back and checked against the base.
    pub bytes_sampled: u64,
    pub chunks_reused: u64,
    pub chunks_read: u64,
}

/// The new image, read at any offset.
pub type Source<'a> = dyn FnMut(u64, &mut [u8]) -> std::io::Result<()> + 'a;

impl Client {
    /// Backs up `name` from `source` (`size` bytes) as `base` plus the
    /// extents of `map`. The base must have block hashes (any snapshot
    /// this server version wrote).
    #[allow(clippy::too_many_arguments)]
    pub fn backup_changed(
        &self,
        name: &str,
        source: &mut Source<'_>,
        size: u64,
        base: &Snapshot,
        map: &ChangeMap,
        verify_percent: f64,
        opts: &BackupOptions,
        progress: &mut dyn FnMut(&BackupProgress),
    ) -> Result<ChangedReport> {
        let started = Instant::now();
        let (chunker, level, block_hashes) = self.server_params()?;
        if !block_hashes {
            return Err(Error::Unsupported(
                "this server keeps no block hashes, which a changed-extent backup needs; \
                 upgrade it or back up without --changed"
                    .into(),
            ));
        }
        let manifest = self.spool_manifest(base)?;
        let blocks = self.spool_blocks(base)?;
        let session = self.open_session(name, opts)?;
        let sending = Sending {
            session: &session,
            level,
        };
        let result = self.changed_upload(
            &sending,
            &chunker,
            source,
            size,
            base,
            map,
            verify_percent,
            (&manifest, &blocks),
            opts,
            progress,
        );
        let (upload, walked, digest_read) = match result {
            Ok(done) => done,
            Err(e) => {
                let _ = self.delete(&format!("/v1/sessions/{}", session.id)).call();
                return Err(e);
            }
        };
        self.put_blocks(&session, &upload.blocks)?;
        let snapshot = self.commit(&session, &upload)?;
        Ok(ChangedReport {
            snapshot,
            progress: upload.stats,
            seconds: started.elapsed().as_secs_f64(),
            changed_bytes: map.changed_bytes(),
            bytes_read: walked.bytes_read + digest_read,
            bytes_sampled: walked.bytes_sampled,
            chunks_reused: walked.chunks_reused,
            chunks_read: walked.chunks_read,
        })
    }

    /// The walk, the uploads and the new block hashes.
    #[allow(clippy::too_many_arguments)]
    fn changed_upload(
        &self,
        sending: &Sending<'_>,
        chunker: &bunker_chunk::Chunker,
        source: &mut Source<'_>,
        size: u64,
        base: &Snapshot,
        map: &ChangeMap,
        verify_percent: f64,
        (manifest, blocks): (&tempfile::NamedTempFile, &tempfile::NamedTempFile),
        opts: &BackupOptions,
        progress: &mut dyn FnMut(&BackupProgress),
    ) -> Result<(Upload, bunker_changes::Report, u64)> {
        let entries_tmp = tempfile::NamedTempFile::new()
            .map_err(|e| Error::io("creating a temporary manifest", e))?;
        let mut entries = BufWriter::with_capacity(
            1 << 20,
            entries_tmp
                .reopen()
                .map_err(|e| Error::io("opening the temporary manifest", e))?,
        );
        let mut stats = BackupProgress {
            total: opts.size_hint.or(Some(size)),
            ..Default::default()
        };
        let mut batch = Batch::default();
        let mut failed: Option<Error> = None;
        let base_entries = base_entries(manifest, base)?;
        let mut digest = NewBlocks::new(blocks, map, base, size)?;
        let mut digest_failed: Option<Error> = None;
        let behind = slack(u64::from(chunker.params().max_len));
        // The walk's reads also feed the block hashes, which hash a block
        // once the walk is past it.
        let mut reading = |offset: u64, buf: &mut [u8]| -> std::io::Result<()> {
            source(offset, buf)?;
            digest.seen(offset, buf);
            if let Err(e) = digest.advance(offset.saturating_sub(behind), source) {
                let text = e.to_string();
                digest_failed = Some(e);
                return Err(std::io::Error::other(text));
            }
            Ok(())
        };
        let walked = walk(
            chunker,
            base_entries,
            base.size_bytes,
            map,
            size,
            &mut reading,
            Options {
                sample_percent: verify_percent,
                ..Options::default()
            },
            |piece| {
                let (len, id) = match piece {
                    Piece::Reused(e) => {
                        stats.bytes_deduplicated += e.len;
                        (e.len, e.id)
                    }
                    Piece::Read { data, zero, .. } => {
                        let id = if zero {
                            ChunkId::ZERO
                        } else {
                            ChunkId::of(data)
                        };
                        batch.push(data, id, zero);
                        (data.len() as u64, id)
                    }
                };
                let mut entry = [0u8; COMMIT_ENTRY_LEN];
                entry[..8].copy_from_slice(&len.to_le_bytes());
                entry[8..].copy_from_slice(&id.0);
                entries.write_all(&entry)?;
                stats.bytes_read += len;
                stats.chunks += 1;
                if batch.data.len() >= BATCH_BYTES {
                    if let Err(e) = self.send_batch(sending, &mut batch, &mut stats) {
                        let text = e.to_string();
                        failed = Some(e);
                        return Err(text.into());
                    }
                    progress(&stats);
                }
                Ok(())
            },
        );
        let walked = match walked {
            Ok(r) => r,
            Err(e) => {
                return Err(match failed.or(digest_failed) {
                    Some(first) => first,
                    None => changed_error(e),
                })
            }
        };
        self.send_batch(sending, &mut batch, &mut stats)?;
        progress(&stats);
        entries
            .flush()
            .map_err(|e| Error::io("writing the temporary manifest", e))?;
        drop(entries);
        let (stream_hash, blocks_tmp, digest_read) = digest.finish(source)?;
        Ok((
            Upload {
                manifest: entries_tmp,
                stream_hash,
                blocks: blocks_tmp,
                stats,
            },
            walked,
            digest_read,
        ))
    }

    fn send_batch(
        &self,
        sending: &Sending<'_>,
        batch: &mut Batch,
        stats: &mut BackupProgress,
    ) -> Result<()> {
        if !batch.spans.is_empty() {
            self.send_missing(sending, &batch.data, &batch.spans, stats)?;
        }
        batch.data.clear();
        batch.spans.clear();
        Ok(())
    }

    /// The base's manifest in a temporary file.
    fn spool_manifest(&self, base: &Snapshot) -> Result<tempfile::NamedTempFile> {
        let mut tmp = tempfile::NamedTempFile::new()
            .map_err(|e| Error::io("creating a temporary file for the base manifest", e))?;
        self.download_manifest(base, tmp.as_file_mut())?;
        Ok(tmp)
    }

    /// The base's block hashes in a temporary file, checked: they must
    /// describe the base image and merge into its BLAKE3.
    fn spool_blocks(&self, base: &Snapshot) -> Result<tempfile::NamedTempFile> {
        let path = format!("/v1/snapshots/{}/{}/blocks", base.name, base.id);
        let resp = self.check(self.get(&path).call()).map_err(|e| match e {
            Error::NotFound { message } => Error::Unsupported(format!(
                "the base {}@{} has no block hashes ({message}); back it up once without \
                 --changed, then use that snapshot as the base",
                base.name, base.id
            )),
            other => other,
        })?;
        let mut tmp = tempfile::NamedTempFile::new()
            .map_err(|e| Error::io("creating a temporary file for the base's block hashes", e))?;
        std::io::copy(&mut resp.into_body().into_reader(), tmp.as_file_mut())
            .map_err(|e| self.read_error("reading the base's block hashes", e))?;
        let bad = |why: String| {
            Error::Verification(format!(
                "the block hashes of {}@{} {why}",
                base.name, base.id
            ))
        };
        let (header, cvs) = read_blocks(&tmp).map_err(|e| Error::io("reading block hashes", e))?;
        let header = header.map_err(&bad)?;
        if header.image_len != base.size_bytes {
            return Err(bad(format!(
                "describe {} bytes, the snapshot has {}",
                header.image_len, base.size_bytes
            )));
        }
        if header.count > 0 {
            let mut tree = TreeStack::new();
            for cv in cvs {
                tree.push(cv.map_err(|e| Error::io("reading block hashes", e))?);
            }
            let root = tree.finish(header.tail).map(|h| h.to_hex().to_string());
            if root.as_deref() != Some(base.blake3.as_str()) {
                return Err(bad("do not merge into its BLAKE3".into()));
            }
        }
        Ok(tmp)
    }
}

/// Changed chunks waiting for their `missing` query.
#[derive(Default)]
struct Batch {
    data: Vec<u8>,
    spans: Vec<Span>,
}

impl Batch {
    fn push(&mut self, data: &[u8], id: ChunkId, zero: bool) {
        let start = self.data.len();
        if !zero {
            self.data.extend_from_slice(data);
        }
        self.spans.push(Span {
            start,
            end: if zero {
                start + data.len()
            } else {
                self.data.len()
            },
            id,
            zero,
        });
    }
}

/// A walk error as the client reports it.
fn changed_error(e: bunker_changes::rechunk::Error) -> Error {
    use bunker_changes::rechunk::Error as W;
    match e {
        W::MapWrong { .. } => Error::Verification(e.to_string()),
        W::Source { offset, source } => {
            Error::io(format!("reading the backup source at {offset}"), source)
        }
        W::BadBase(_) => Error::Verification(e.to_string()),
        other => Error::Interrupted(other.to_string()),
    }
}

/// The base manifest's entries (end offset, id) as lengths and ids.
fn base_entries(
    manifest: &tempfile::NamedTempFile,
    base: &Snapshot,
) -> Result<impl Iterator<Item = std::io::Result<Entry>>> {
    let file = manifest
        .reopen()
        .map_err(|e| Error::io("reopening the base manifest", e))?;
    let mut reader = BufReader::with_capacity(1 << 20, file);
    let mut end = 0u64;
    let mut left = base.chunks;
    Ok(std::iter::from_fn(move || {
        if left == 0 {
            return None;
        }
        left -= 1;
        let mut e = [0u8; 40];
        Some(reader.read_exact(&mut e).and_then(|()| {
            let next = u64::from_le_bytes(e[..8].try_into().expect("8 bytes"));
            let len = next.checked_sub(end).filter(|&l| l > 0).ok_or_else(|| {
                std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!("base manifest entry ends at {next}, before {end}"),
                )
            })?;
            end = next;
            Ok(Entry {
                len,
                id: ChunkId(e[8..].try_into().expect("32 bytes")),
            })
        }))
    }))
}

pub(crate) type Cvs = Box<dyn Iterator<Item = std::io::Result<[u8; 32]>>>;

/// The header (or what is wrong with it) and the chaining values of a
/// block hashes file.
pub(crate) fn read_blocks(
    file: &tempfile::NamedTempFile,
) -> std::io::Result<(std::result::Result<BlocksHeader, String>, Cvs)> {
    let mut reader = BufReader::with_capacity(256 << 10, file.reopen()?);
    let mut head = [0u8; HEADER_LEN];
    reader.read_exact(&mut head)?;
    let header = BlocksHeader::decode(&head);
    let mut left = header.as_ref().map_or(0, |h| h.count);
    let cvs = std::iter::from_fn(move || {
        if left == 0 {
            return None;
        }
        left -= 1;
        let mut cv = [0u8; CV_LEN];
        Some(reader.read_exact(&mut cv).map(|()| cv))
    });
    Ok((header, Box::new(cvs)))
}
