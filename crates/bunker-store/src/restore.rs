//! Streaming a snapshot back, every chunk verified, decoding ahead on all
//! cores.
//!
//! A producer thread walks the manifest from the first chunk of the range,
//! groups chunks into batches of about [`BATCH_LEN`] bytes, reads, decodes
//! and BLAKE3-checks each batch on the rayon pool, and hands batches over a
//! channel of depth 2. It gathers the manifest entries of the next
//! [`ANNOUNCED_BATCHES`] batches ahead of the one it decodes and hints
//! their records to the pack backend ([`crate::PackBackend::will_need`]),
//! so a remote backend keeps many requests in flight.
//! Memory is bounded by three decoded batches whatever the snapshot size.
//! The first damaged chunk ends the stream with its error: bytes after it
//! are never delivered.

use std::collections::VecDeque;
use std::io::Read;
use std::ops::Range;

use crossbeam_channel::{bounded, Receiver};
use rayon::prelude::*;

use crate::format::pack::RECORD_HEADER_LEN;
use crate::snapshot::manifest::ManifestReader;
use crate::snapshot::ManifestEntry;
use crate::{Error, Repository, Result, SnapshotId, SnapshotInfo};

/// Raw bytes decoded per batch.
pub const BATCH_LEN: u64 = 8 << 20;
/// Batches announced to the backend ahead of the one being decoded: a
/// remote backend keeps its requests in flight over this many raw bytes
/// (manifest entries only are held for them, not data).
const ANNOUNCED_BATCHES: usize = 8;

/// A verified piece of a snapshot, in order.
#[derive(Debug, PartialEq, Eq)]
pub enum Piece {
    Data(Vec<u8>),
    /// `n` zero bytes (a hole in a sparse restore).
    Zero(u64),
}

impl Piece {
    pub fn len(&self) -> u64 {
        match self {
            Piece::Data(d) => d.len() as u64,
            Piece::Zero(n) => *n,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Reads a snapshot (or a byte range of it) as verified pieces or as bytes.
pub struct SnapshotReader {
    info: SnapshotInfo,
    range: Range<u64>,
    /// Snapshot offset where the next piece from the producer starts.
    next_start: u64,
    rx: Receiver<Result<Vec<Piece>>>,
    batch: std::vec::IntoIter<Piece>,
    current: Option<(Piece, usize)>,
    /// The read-ahead thread. It holds a clone of the repository, so it is
    /// joined on drop: once a reader is gone, so is its hold on the
    /// repository (and, with the last handle, the repository lock).
    producer: Option<std::thread::JoinHandle<()>>,
}

impl Drop for SnapshotReader {
    fn drop(&mut self) {
        // Disconnect first, so a producer blocked on a full channel stops.
        let (_, dead) = bounded(1);
        self.rx = dead;
        if let Some(p) = self.producer.take() {
            let _ = p.join();
        }
    }
}

impl Repository {
    /// A reader for `name@id` (latest when `id` is None), for `range` of its
    /// bytes (all of it when None). The range is clamped to the snapshot.
    pub fn reader(
        &self,
        name: &str,
        id: Option<SnapshotId>,
        range: Option<Range<u64>>,
    ) -> Result<SnapshotReader> {
        let info = self.snapshot(name, id)?;
        let manifest = self.manifest(name, info.id)?;
        let range = match range {
            Some(r) if r.start > r.end || r.start > info.size => {
                return Err(Error::Invalid(format!(
                    "range {}..{} is outside the snapshot's {} bytes",
                    r.start, r.end, info.size
                )))
            }
            Some(r) => r.start..r.end.min(info.size),
            None => 0..info.size,
        };
        let (tx, rx) = bounded(2);
        if range.start < range.end {
            let first = manifest.find(range.start)?;
            let mut entries = manifest.entries_from(first)?;
            let repo = self.clone();
            let end = range.end;
            let producer = std::thread::Builder::new()
                .name("bunker-restore".into())
                .spawn(move || {
                    // The batches after the one being decoded are gathered
                    // first and announced to the backend (`will_need`), so
                    // a remote one fetches them while this one decodes.
                    let mut done = false;
                    let mut next_batch = || -> Result<Vec<ManifestEntry>> {
                        let mut batch = Vec::new();
                        let mut batch_len = 0;
                        while batch_len < BATCH_LEN && !done {
                            match entries.next() {
                                Some(Ok(e)) if e.start < end => {
                                    batch_len += e.end - e.start;
                                    batch.push(e);
                                }
                                Some(Err(e)) => return Err(e),
                                // Past the range: read no further.
                                _ => done = true,
                            }
                        }
                        Ok(batch)
                    };
                    // Batches gathered and announced, not decoded yet;
                    // a manifest error is sent after the batches before it.
                    let mut queue = VecDeque::new();
                    let mut failed = None;
                    loop {
                        while failed.is_none() && queue.len() < ANNOUNCED_BATCHES {
                            match next_batch() {
                                Ok(b) if b.is_empty() => break,
                                Ok(b) => {
                                    repo.will_need(&b);
                                    queue.push_back(b);
                                }
                                Err(e) => failed = Some(e),
                            }
                        }
                        let Some(batch) = queue.pop_front() else {
                            break;
                        };
                        let decoded = decode_batch(&repo, &batch);
                        let bad = decoded.is_err();
                        if tx.send(decoded).is_err() || bad {
                            return;
                        }
                    }
                    if let Some(e) = failed {
                        let _ = tx.send(Err(e));
                    }
                })
                .map_err(|e| Error::io("restore thread", e))?;
            let next_start = manifest.entry(first)?.start;
            return Ok(SnapshotReader {
                info,
                range,
                next_start,
                rx,
                batch: Vec::new().into_iter(),
                current: None,
                producer: Some(producer),
            });
        }
        drop(tx);
        Ok(SnapshotReader {
            info,
            next_start: range.start,
            range,
            rx,
            batch: Vec::new().into_iter(),
            current: None,
            producer: None,
        })
    }

    /// The verified contents of one manifest entry: a zero piece, or the
    /// chunk read, decoded and checked against its id and the entry's
    /// length. Corruption is an error naming the pack, offset and chunk.
    pub fn load(&self, e: &ManifestEntry) -> Result<Piece> {
        let len = e.end - e.start;
        if e.id.is_zero() {
            return Ok(Piece::Zero(len));
        }
        let kid = self.at_rest(&e.id);
        let loc = self.locate(&kid).ok_or_else(|| Error::Corrupt {
            file: "index".into(),
            pack: None,
            offset: None,
            chunk: Some(e.id),
            reason: format!(
                "chunk at bytes {}..{} of the snapshot is not in the repository",
                e.start, e.end
            ),
        })?;
        if u64::from(loc.raw_len) != len {
            return Err(Error::Corrupt {
                file: self.packs().backend().describe(loc.pack),
                pack: Some(loc.pack),
                offset: Some(loc.offset),
                chunk: Some(e.id),
                reason: format!("chunk is {} bytes, the manifest says {len}", loc.raw_len),
            });
        }
        let data = self
            .read_moved(&kid, &loc)
            .map_err(|err| crate::repo::naming_true(err, &e.id))?;
        Ok(Piece::Data(data))
    }
}

impl Repository {
    /// Tells the pack backend that the chunks of `entries` will be read
    /// soon, in this order (their records: pack, offset, header and stored
    /// length), so a remote backend fetches them with many requests in
    /// flight. Only a hint: local backends ignore it. For callers that
    /// read a snapshot batch by batch ([`ManifestCursor`]): announce the
    /// next batch before loading the current one.
    pub fn will_need(&self, entries: &[ManifestEntry]) {
        if !self.packs().backend().reads_ahead() {
            return;
        }
        let records: Vec<(crate::PackId, u64, usize)> = entries
            .iter()
            .filter(|e| !e.id.is_zero())
            .filter_map(|e| self.locate(&self.at_rest(&e.id)))
            .map(|l| (l.pack, l.offset, RECORD_HEADER_LEN + l.stored_len as usize))
            .collect();
        if !records.is_empty() {
            self.packs().backend().will_need(&records);
        }
    }
}

fn decode_batch(repo: &Repository, batch: &[ManifestEntry]) -> Result<Vec<Piece>> {
    let pieces: Vec<Result<Piece>> = batch.par_iter().map(|e| repo.load(e)).collect();
    let mut out = Vec::with_capacity(pieces.len());
    for (p, e) in pieces.into_iter().zip(batch) {
        match p {
            Ok(p) => out.push(p),
            Err(err) => {
                tracing::error!(chunk = %e.id, start = e.start, "restore stopped at a damaged chunk: {err}");
                return Err(err);
            }
        }
    }
    Ok(out)
}

/// A snapshot's manifest entries from a byte offset on, read in batches by
/// positioned reads: for callers that decode at their own pace (the
/// server's restore streaming). It holds the manifest open, so a delete
/// does not cut a restore in progress, and no buffer between batches.
pub struct ManifestCursor {
    manifest: ManifestReader,
    next: u64,
    start: u64,
}

impl Repository {
    /// A cursor over the entries of `name@id` from the one holding byte
    /// `offset` (none when `offset` is at or past the end).
    pub fn manifest_cursor(
        &self,
        name: &str,
        id: SnapshotId,
        offset: u64,
    ) -> Result<ManifestCursor> {
        crate::snapshot::validate_name(name)?;
        let manifest = self.manifest(name, id)?;
        let (next, start) = if offset >= manifest.header.size {
            (manifest.header.entries, manifest.header.size)
        } else {
            let first = manifest.find(offset)?;
            (first, manifest.entry(first)?.start)
        };
        Ok(ManifestCursor {
            manifest,
            next,
            start,
        })
    }
}

impl ManifestCursor {
    /// The next (at most) `max` entries; empty at the end.
    pub fn next_batch(&mut self, max: usize) -> Result<Vec<ManifestEntry>> {
        let batch = self.manifest.entries_at(self.next, self.start, max)?;
        if let Some(last) = batch.last() {
            self.next += batch.len() as u64;
            self.start = last.end;
        } else if self.start != self.manifest.header.size {
            return Err(Error::corrupt(
                format!("{}@{}", self.manifest.header.name, self.manifest.header.id),
                format!(
                    "manifest ends at byte {}, before the snapshot size {}",
                    self.start, self.manifest.header.size
                ),
            ));
        }
        Ok(batch)
    }
}

impl SnapshotReader {
    pub fn info(&self) -> &SnapshotInfo {
        &self.info
    }

    /// The byte range this reader delivers.
    pub fn range(&self) -> Range<u64> {
        self.range.clone()
    }

    /// The next verified piece, clipped to the range; `None` at the end.
    pub fn next_piece(&mut self) -> Result<Option<Piece>> {
        loop {
            if self.next_start >= self.range.end {
                return Ok(None);
            }
            let piece = match self.batch.next() {
                Some(p) => p,
                None => match self.rx.recv() {
                    Ok(Ok(batch)) => {
                        self.batch = batch.into_iter();
                        continue;
                    }
                    Ok(Err(e)) => {
                        self.next_start = self.range.end;
                        return Err(e);
                    }
                    Err(_) => {
                        let at = self.next_start;
                        self.next_start = self.range.end;
                        return Err(Error::corrupt(
                            format!("{}@{}", self.info.name, self.info.id),
                            format!(
                                "manifest ends at byte {at}, before the snapshot size {}",
                                self.info.size
                            ),
                        ));
                    }
                },
            };
            let start = self.next_start;
            let end = start + piece.len();
            self.next_start = end;
            let lo = start.max(self.range.start);
            let hi = end.min(self.range.end);
            if lo >= hi {
                continue;
            }
            let (from, to) = ((lo - start) as usize, (hi - start) as usize);
            return Ok(Some(match piece {
                Piece::Zero(_) => Piece::Zero((hi - lo) as u64),
                Piece::Data(mut d) if from > 0 || to < d.len() => {
                    d.truncate(to);
                    d.drain(..from);
                    Piece::Data(d)
                }
                data => data,
            }));
        }
    }
}

impl Read for SnapshotReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        loop {
            if let Some((piece, used)) = &mut self.current {
                let left = piece.len() as usize - *used;
                if left > 0 {
                    let n = left.min(buf.len());
                    match piece {
                        Piece::Data(d) => buf[..n].copy_from_slice(&d[*used..*used + n]),
                        Piece::Zero(_) => buf[..n].fill(0),
                    }
                    *used += n;
                    return Ok(n);
                }
            }
            match self.next_piece() {
                Ok(Some(p)) => self.current = Some((p, 0)),
                Ok(None) => return Ok(0),
                Err(e) => return Err(std::io::Error::other(e)),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A cursor from any offset yields exactly the entries of the full
    /// manifest from the one holding that offset, in batches of any size.
    #[test]
    fn a_cursor_from_any_offset_yields_the_manifest_from_there() {
        let dir = tempfile::tempdir().unwrap();
        let repo = Repository::create(dir.path(), crate::CreateOptions::default()).unwrap();
        let mut image = vec![0u8; 3 << 20];
        let mut x = 1u64;
        for b in image.iter_mut().skip(1 << 20) {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            *b = (x >> 56) as u8;
        }
        let info = repo
            .ingest(
                "c",
                &image[..],
                &crate::IngestOptions::default(),
                &mut |_| {},
            )
            .unwrap();
        let all: Vec<ManifestEntry> = repo
            .manifest_entries("c", info.id)
            .unwrap()
            .map(|e| e.unwrap())
            .collect();
        assert!(all.len() > 4, "{} entries", all.len());
        for offset in [
            0,
            1,
            all[2].start,
            all[2].start + 7,
            info.size - 1,
            info.size,
        ] {
            for batch in [1, 3, 1024] {
                let mut c = repo.manifest_cursor("c", info.id, offset).unwrap();
                let mut got = Vec::new();
                loop {
                    let b = c.next_batch(batch).unwrap();
                    if b.is_empty() {
                        break;
                    }
                    got.extend(b);
                }
                let want: Vec<ManifestEntry> =
                    all.iter().copied().filter(|e| e.end > offset).collect();
                assert_eq!(got, want, "offset {offset}, batches of {batch}");
            }
        }
        for e in &all {
            let piece = repo.load(e).unwrap();
            assert_eq!(piece.len(), e.end - e.start);
        }
    }
}
