//! The sync loop: which snapshots to copy, and the copy of one.
//!
//! One function per step: `plan` (list, filter, skip origins the target
//! holds, creation order), `copy_one` (manifest to a temp file, session,
//! `send_batch` per batch of entries, commit), `tally` (what the target
//! holds of these names afterwards).

use std::collections::HashSet;
use std::io::{BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Instant;

use bunker_api::{Origin, Snapshot};
use bunker_client::{Client, Frame};
use serde::{Deserialize, Serialize};

use crate::{ChunkId, SyncError, Target};

/// Bytes of one entry of a source manifest (end offset, id) and of a
/// commit body (length, id).
const ENTRY_LEN: usize = 40;

/// Which snapshot names to copy: those equal to or starting with one of
/// the patterns; every name when there are none.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Filter {
    pub patterns: Vec<String>,
}

impl Filter {
    pub fn new(patterns: Vec<String>) -> Filter {
        Filter { patterns }
    }

    pub fn all() -> Filter {
        Filter::default()
    }

    pub fn matches(&self, name: &str) -> bool {
        self.patterns.is_empty() || self.patterns.iter().any(|p| name.starts_with(p.as_str()))
    }
}

#[derive(Clone, Debug)]
pub struct SyncOptions {
    /// Chunks in flight at once (each: one GET from the source, one PUT to
    /// the target).
    pub parallel: usize,
    /// Manifest entries per `missing` query (at most 65,536, the server's
    /// limit per query).
    pub batch: usize,
}

impl Default for SyncOptions {
    fn default() -> SyncOptions {
        SyncOptions {
            parallel: 8,
            batch: 8192,
        }
    }
}

/// Where a sync is, after each batch.
#[derive(Clone, Debug, Default)]
pub struct SyncProgress {
    /// `name@id` on the source.
    pub snapshot: String,
    /// 1-based position among the snapshots to copy.
    pub index: u64,
    pub count: u64,
    /// Bytes of the image covered so far, and its size.
    pub bytes_done: u64,
    pub bytes_total: u64,
    /// Over the whole run so far.
    pub chunks_sent: u64,
    pub wire_bytes: u64,
}

/// One source snapshot's outcome.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct SnapshotReport {
    pub name: String,
    pub source_id: u64,
    /// The copy's id on the target (`None` when skipped without asking it).
    pub target_id: Option<u64>,
    /// `false`: the target held it already.
    pub copied: bool,
    pub logical_bytes: u64,
    pub chunks: u64,
    pub chunks_sent: u64,
    /// Chunk bytes as sent (frames), plus the `missing` queries and the
    /// commit body.
    pub wire_bytes: u64,
    pub seconds: f64,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct SyncReport {
    pub source: String,
    pub snapshots: Vec<SnapshotReport>,
    pub copied: u64,
    pub skipped: u64,
    /// Bytes of the images copied (skipped ones not counted).
    pub logical_bytes: u64,
    pub chunks_sent: u64,
    pub wire_bytes: u64,
    pub seconds: f64,
    /// Snapshots of the matching names the target holds now (those its
    /// token may see).
    pub target_snapshots: u64,
    /// The newest verify or drill the target recorded of any of them,
    /// unix milliseconds.
    pub newest_check_unix_ms: Option<i64>,
}

/// The origin a copy of `snap` records: its own if it is a copy already
/// (so copies of copies are still recognised), else the source's.
pub fn origin_of(snap: &Snapshot, source_repo: &str) -> Origin {
    snap.origin.clone().unwrap_or_else(|| Origin {
        repository_id: source_repo.to_string(),
        snapshot_id: snap.id,
        name: snap.name.clone(),
        created_unix_ms: snap.created_unix_ms,
    })
}

fn origin_key(o: &Origin) -> (String, u64) {
    (o.repository_id.to_ascii_lowercase(), o.snapshot_id)
}

/// Copies every snapshot of `source` whose name `filter` matches and that
/// `target` does not hold yet, oldest first. Stops at the first error:
/// what was committed stays, the rest is sent by the next run.
pub fn sync(
    source: &Client,
    target: &dyn Target,
    filter: &Filter,
    opts: &SyncOptions,
    progress: &dyn Fn(&SyncProgress),
) -> Result<SyncReport, SyncError> {
    let started = Instant::now();
    let info = source.info()?;
    let max_chunk = u64::from(info.chunker.max_bytes);
    let target_max = target.max_chunk().map_err(|e| SyncError::Target {
        message: e.to_string(),
    })?;
    if target_max < max_chunk {
        return Err(SyncError::ChunkSize {
            source_max: max_chunk,
            target_max,
        });
    }
    let (todo, mut report) = plan(source, target, filter, &info.repository_id)?;
    report.source = source.server().to_string();
    let totals = Totals::default();
    let count = todo.len() as u64;
    for (k, snap) in todo.iter().enumerate() {
        let origin = origin_of(snap, &info.repository_id);
        let at = Position {
            index: k as u64 + 1,
            count,
            max_chunk,
        };
        let one = copy_one(source, target, snap, &origin, opts, &at, &totals, progress)?;
        report.copied += u64::from(one.copied);
        report.skipped += u64::from(!one.copied);
        if one.copied {
            report.logical_bytes += one.logical_bytes;
        }
        report.chunks_sent += one.chunks_sent;
        report.wire_bytes += one.wire_bytes;
        report.snapshots.push(one);
    }
    report
        .snapshots
        .sort_by_key(|s| (s.name.clone(), s.source_id));
    tally(target, filter, &mut report);
    report.seconds = started.elapsed().as_secs_f64();
    Ok(report)
}

/// The source snapshots to copy, oldest first, and a report listing those
/// skipped because the target holds their origin (one listing of each).
fn plan(
    source: &Client,
    target: &dyn Target,
    filter: &Filter,
    source_repo: &str,
) -> Result<(Vec<Snapshot>, SyncReport), SyncError> {
    let mut wanted: Vec<Snapshot> = source
        .list(None)?
        .into_iter()
        .filter(|s| filter.matches(&s.name))
        .collect();
    wanted.sort_by_key(|s| (s.created_unix_ms, s.id));
    let present: HashSet<(String, u64)> = target
        .snapshots()
        .map_err(|e| SyncError::target("listing the target", e))?
        .iter()
        .filter_map(|s| s.origin.as_ref().map(origin_key))
        .collect();
    let mut report = SyncReport::default();
    let mut todo = Vec::new();
    for s in wanted {
        if present.contains(&origin_key(&origin_of(&s, source_repo))) {
            report.skipped += 1;
            report.snapshots.push(SnapshotReport {
                name: s.name.clone(),
                source_id: s.id,
                logical_bytes: s.size_bytes,
                chunks: s.chunks,
                ..Default::default()
            });
        } else {
            todo.push(s);
        }
    }
    Ok((todo, report))
}

/// Counts over the whole run, shared by the sending threads.
#[derive(Default)]
struct Totals {
    chunks_sent: AtomicU64,
    wire_bytes: AtomicU64,
}

struct Position {
    index: u64,
    count: u64,
    max_chunk: u64,
}

/// Copies one snapshot; the session is aborted if anything fails before
/// its commit.
#[allow(clippy::too_many_arguments)]
fn copy_one(
    source: &Client,
    target: &dyn Target,
    snap: &Snapshot,
    origin: &Origin,
    opts: &SyncOptions,
    at: &Position,
    totals: &Totals,
    progress: &dyn Fn(&SyncProgress),
) -> Result<SnapshotReport, SyncError> {
    let started = Instant::now();
    let label = format!("{}@{}", snap.name, snap.id);
    let before = (
        totals.chunks_sent.load(Ordering::Relaxed),
        totals.wire_bytes.load(Ordering::Relaxed),
    );
    let mut manifest =
        tempfile::tempfile().map_err(|e| SyncError::io("creating a temporary manifest", e))?;
    {
        let mut w = BufWriter::with_capacity(1 << 20, &mut manifest);
        source.download_manifest(snap, &mut w)?;
        w.flush()
            .map_err(|e| SyncError::io("writing the temporary manifest", e))?;
    }
    manifest
        .seek(SeekFrom::Start(0))
        .map_err(|e| SyncError::io("rewinding the temporary manifest", e))?;
    let session = target
        .begin(&snap.name, &snap.source, origin)
        .map_err(|e| SyncError::target(&label, e))?;
    let sent = send_all(
        source, target, &session, snap, &label, manifest, opts, at, totals, progress,
    );
    let mut commit_body = match sent {
        Ok(body) => body,
        Err(e) => {
            target.abort(&session);
            return Err(e);
        }
    };
    let commit_len = snap.chunks * ENTRY_LEN as u64;
    let committed = target
        .commit(&session, &mut commit_body, &snap.blake3)
        .map_err(|e| SyncError::target(&label, e))?;
    totals.wire_bytes.fetch_add(commit_len, Ordering::Relaxed);
    let copy = &committed.snapshot;
    if copy.size_bytes != snap.size_bytes || !copy.blake3.eq_ignore_ascii_case(&snap.blake3) {
        return Err(SyncError::Target {
            message: format!(
                "{label}: the target committed {}@{} of {} bytes with BLAKE3 {}, the source's is {} bytes with {}",
                copy.name, copy.id, copy.size_bytes, copy.blake3, snap.size_bytes, snap.blake3
            ),
        });
    }
    Ok(SnapshotReport {
        name: snap.name.clone(),
        source_id: snap.id,
        target_id: Some(copy.id),
        copied: committed.created,
        logical_bytes: snap.size_bytes,
        chunks: snap.chunks,
        chunks_sent: totals.chunks_sent.load(Ordering::Relaxed) - before.0,
        wire_bytes: totals.wire_bytes.load(Ordering::Relaxed) - before.1,
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// Reads the source manifest batch by batch, sends each batch's missing
/// chunks, and writes the commit body (length, id) to a temp file, which
/// it returns rewound. Refuses a manifest whose ends do not increase or
/// do not reach the snapshot's size.
#[allow(clippy::too_many_arguments)]
fn send_all(
    source: &Client,
    target: &dyn Target,
    session: &str,
    snap: &Snapshot,
    label: &str,
    manifest: std::fs::File,
    opts: &SyncOptions,
    at: &Position,
    totals: &Totals,
    progress: &dyn Fn(&SyncProgress),
) -> Result<BufReader<std::fs::File>, SyncError> {
    let bad = |reason: String| SyncError::BadSource {
        snapshot: label.to_string(),
        reason,
    };
    let mut reader = BufReader::with_capacity(1 << 20, manifest);
    let mut body_file =
        tempfile::tempfile().map_err(|e| SyncError::io("creating a temporary commit body", e))?;
    let mut body = BufWriter::with_capacity(1 << 20, &mut body_file);
    let batch = opts.batch.clamp(1, 65_536);
    let mut end = 0u64;
    let mut index = 0u64;
    let mut entry = [0u8; ENTRY_LEN];
    loop {
        let mut ids: Vec<ChunkId> = Vec::with_capacity(batch.min(snap.chunks as usize));
        let mut seen = HashSet::new();
        while ids.len() < batch && index < snap.chunks {
            reader
                .read_exact(&mut entry)
                .map_err(|e| SyncError::io("reading the temporary manifest", e))?;
            let mut e8 = [0u8; 8];
            e8.copy_from_slice(&entry[..8]);
            let next = u64::from_le_bytes(e8);
            let mut id = [0u8; 32];
            id.copy_from_slice(&entry[8..]);
            let id = ChunkId(id);
            if next <= end {
                return Err(bad(format!(
                    "manifest entry {index} ends at {next}, not after {end}"
                )));
            }
            let len = next - end;
            if len > at.max_chunk && !id.is_zero() {
                return Err(bad(format!(
                    "manifest entry {index} is a chunk of {len} bytes; the source's chunks are at most {}",
                    at.max_chunk
                )));
            }
            body.write_all(&len.to_le_bytes())
                .and_then(|_| body.write_all(&id.0))
                .map_err(|e| SyncError::io("writing the temporary commit body", e))?;
            if !id.is_zero() && seen.insert(id) {
                ids.push(id);
            }
            end = next;
            index += 1;
        }
        send_batch(source, target, session, snap, label, &ids, opts, at, totals)?;
        progress(&SyncProgress {
            snapshot: label.to_string(),
            index: at.index,
            count: at.count,
            bytes_done: end,
            bytes_total: snap.size_bytes,
            chunks_sent: totals.chunks_sent.load(Ordering::Relaxed),
            wire_bytes: totals.wire_bytes.load(Ordering::Relaxed),
        });
        if index >= snap.chunks {
            break;
        }
    }
    if end != snap.size_bytes {
        return Err(bad(format!(
            "its manifest covers {end} bytes, the snapshot announces {}",
            snap.size_bytes
        )));
    }
    body.flush()
        .map_err(|e| SyncError::io("writing the temporary commit body", e))?;
    drop(body);
    body_file
        .seek(SeekFrom::Start(0))
        .map_err(|e| SyncError::io("rewinding the temporary commit body", e))?;
    Ok(BufReader::with_capacity(1 << 20, body_file))
}

/// Asks the target which of `ids` it lacks and copies those, on up to
/// `opts.parallel` threads. The first failure stops the others.
#[allow(clippy::too_many_arguments)]
fn send_batch(
    source: &Client,
    target: &dyn Target,
    session: &str,
    snap: &Snapshot,
    label: &str,
    ids: &[ChunkId],
    opts: &SyncOptions,
    at: &Position,
    totals: &Totals,
) -> Result<(), SyncError> {
    if ids.is_empty() {
        return Ok(());
    }
    let missing = target
        .missing(session, ids)
        .map_err(|e| SyncError::target(label, e))?;
    totals
        .wire_bytes
        .fetch_add(32 * ids.len() as u64, Ordering::Relaxed);
    let todo: Vec<ChunkId> = ids
        .iter()
        .zip(&missing)
        .filter(|(_, m)| **m)
        .map(|(id, _)| *id)
        .collect();
    let next = AtomicU64::new(0);
    let stop = AtomicBool::new(false);
    let first_error: Mutex<Option<SyncError>> = Mutex::new(None);
    let threads = opts.parallel.clamp(1, todo.len().max(1));
    std::thread::scope(|scope| {
        for _ in 0..threads {
            scope.spawn(|| loop {
                if stop.load(Ordering::Relaxed) {
                    return;
                }
                let k = next.fetch_add(1, Ordering::Relaxed) as usize;
                let Some(id) = todo.get(k) else { return };
                match copy_chunk(source, target, session, snap, label, id, at.max_chunk) {
                    Ok(sent) => {
                        totals.chunks_sent.fetch_add(1, Ordering::Relaxed);
                        totals.wire_bytes.fetch_add(sent, Ordering::Relaxed);
                    }
                    Err(e) => {
                        stop.store(true, Ordering::Relaxed);
                        let mut first = first_error.lock().unwrap_or_else(|p| p.into_inner());
                        first.get_or_insert(e);
                        return;
                    }
                }
            });
        }
    });
    match first_error.into_inner().unwrap_or_else(|p| p.into_inner()) {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// One chunk from the source, as stored, to the target; returns the bytes
/// sent. A chunk the source's manifest lists but it does not serve is the
/// source's fault.
fn copy_chunk(
    source: &Client,
    target: &dyn Target,
    session: &str,
    snap: &Snapshot,
    label: &str,
    id: &ChunkId,
    max_chunk: u64,
) -> Result<u64, SyncError> {
    let frame: Frame = source
        .chunk_frame(snap, id, max_chunk)
        .map_err(|e| match e {
            bunker_client::Error::NotFound { message } => SyncError::BadSource {
                snapshot: label.to_string(),
                reason: format!(
                    "its manifest lists chunk {id}, which it does not serve: {message}"
                ),
            },
            e if e.kind() == bunker_client::ErrorKind::Verification => SyncError::BadSource {
                snapshot: label.to_string(),
                reason: e.to_string(),
            },
            other => SyncError::Source(other),
        })?;
    target
        .put_frame(session, id, &frame)
        .map_err(|e| SyncError::target(label, e))?;
    Ok(frame.bytes.len() as u64)
}

/// Fills in what the target holds of the matching names, and their
/// newest check. A failure here does not fail the sync: the copies are
/// committed; the figures stay empty.
fn tally(target: &dyn Target, filter: &Filter, report: &mut SyncReport) {
    let Ok(all) = target.snapshots() else { return };
    let mine: Vec<&Snapshot> = all.iter().filter(|s| filter.matches(&s.name)).collect();
    report.target_snapshots = mine.len() as u64;
    report.newest_check_unix_ms = mine
        .iter()
        .flat_map(|s| [&s.last_verify, &s.last_drill, &s.last_server_drill])
        .filter_map(|c| c.as_ref().filter(|c| c.ok).map(|c| c.at_unix_ms))
        .max();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filter_takes_names_and_prefixes() {
        let f = Filter::new(vec!["db-".into(), "web".into()]);
        assert!(f.matches("db-1"));
        assert!(f.matches("web"));
        assert!(f.matches("web2"));
        assert!(!f.matches("db"));
        assert!(!f.matches("mail"));
        assert!(Filter::all().matches("anything"));
    }
}
