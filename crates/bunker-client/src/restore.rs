//! Verified restore and restore drills.
//!
//! The manifest is streamed from the server as the restore goes (never held
//! whole: a 100 TB image has 400 million entries) and cut into runs of
//! consecutive chunks, which several threads fetch at once as byte ranges of
//! the image, within a bounded window ahead of the writer. The server checks
//! every chunk against its BLAKE3 id as it reads it and cuts the response at
//! a bad one; a run that fails is fetched again chunk by chunk, each checked
//! here, so a damaged chunk is named exactly (a run that stalled is not: it
//! would only stall again). The writer takes chunks in
//! order, hashes the whole image and writes with positioned writes, starting
//! the writeback of every 8 MiB behind it so the disk works during the
//! restore rather than all in the final sync. Zero
//! chunks are never fetched: on a regular file they stay holes. At the end
//! the whole-image BLAKE3 must equal the snapshot's, or the restore fails;
//! it covers every byte that crossed the wire. Only then is a file put in
//! place under its name (`output`).
//!
//! Nothing the server says sizes an allocation unchecked: a manifest entry
//! longer than the repository's largest chunk is refused before anything
//! is fetched, a body longer than what was asked for is an error, and a
//! server that sends nothing for the read timeout fails the restore.

use std::collections::BTreeMap;
use std::io::{BufReader, Read, Write};
use std::path::PathBuf;
use std::sync::{Condvar, Mutex};
use std::time::Instant;

use bunker_api::{ErrorCode, Snapshot};
use bunker_chunk::ChunkId;
use crossbeam_channel::{bounded, Receiver};

use crate::output::Output;
use crate::{Client, Error, Result, ServerCode};

/// Parallel fetches.
const FETCHERS: usize = 4;
/// Chunks fetched ahead of the writer, at most (bounds memory to about
/// WINDOW x max chunk length).
const WINDOW: u64 = 80;
/// A run fetched in one request: at most this many chunks and bytes (one
/// request per chunk bounds a restore over a link with latency to 4 chunks
/// per round trip).
const RUN_CHUNKS: usize = 16;
const RUN_BYTES: u64 = 4 << 20;
/// Chunk buffers kept for reuse, at most: what the window and the fetchers
/// can hold at once.
const POOL_MAX: usize = WINDOW as usize + FETCHERS * RUN_CHUNKS;
/// Runs read from the manifest ahead of the writer, at most: enough to fill
/// the window with runs of 4 chunks (1 MiB chunks), small enough that a
/// 256 MiB restore already fills the queues.
const QUEUED_RUNS: usize = 32;

/// Where a restore goes.
pub enum Target<'a> {
    /// A regular file, replaced only once the image is complete and
    /// verified (an existing one only with `force`); or a block device,
    /// written in place, only with `force`, only if it holds the image.
    File { path: PathBuf, force: bool },
    /// A stream such as stdout (written in order, zeros included).
    Stream(&'a mut dyn Write),
    /// Nowhere: a restore drill.
    Null,
}

#[derive(Clone, Copy, Debug, Default)]
pub struct RestoreProgress {
    pub bytes: u64,
    pub total: u64,
}

#[derive(Clone, Debug)]
pub struct RestoreReport {
    pub snapshot: Snapshot,
    pub bytes: u64,
    /// Bytes of zero chunks (holes on a regular file).
    pub zero_bytes: u64,
    pub chunks_verified: u64,
    pub seconds: f64,
}

#[derive(Clone)]
struct Entry {
    index: u64,
    start: u64,
    end: u64,
    id: ChunkId,
}

/// Shared between fetchers and the writer.
struct Window {
    /// Index of the next chunk the writer needs.
    next_to_write: u64,
    done: BTreeMap<u64, Result<Vec<u8>>>,
    failed: bool,
}

impl Client {
    /// Restores `name@id` (latest when `id` is None) to `target`.
    pub fn restore(
        &self,
        name: &str,
        id: Option<u64>,
        target: Target<'_>,
        progress: &mut dyn FnMut(&RestoreProgress),
    ) -> Result<RestoreReport> {
        let started = Instant::now();
        let snap = self.snapshot(name, id)?;
        check_snapshot(&snap)?;
        let limits = Limits {
            max_chunk_len: self.max_chunk_len()?,
        };
        let mut out = Output::open(target, snap.size_bytes)?;
        let result = self.restore_into(&snap, limits, &mut out, progress);
        if result.is_err() {
            // Only the partial file goes: the target was never touched.
            out.discard();
        }
        let mut report = result?;
        report.seconds = started.elapsed().as_secs_f64();
        Ok(report)
    }

    /// The longest chunk the repository can hold: its chunker's maximum,
    /// and never more than any repository allows.
    fn max_chunk_len(&self) -> Result<u64> {
        let max = self.info()?.chunker.max_bytes;
        Ok(u64::from(max.min(bunker_chunk::MAX_MAX_LEN)))
    }

    fn restore_into(
        &self,
        snap: &Snapshot,
        limits: Limits,
        out: &mut Output<'_>,
        progress: &mut dyn FnMut(&RestoreProgress),
    ) -> Result<RestoreReport> {
        let snap = snap.clone();
        let window = Mutex::new(Window {
            next_to_write: 0,
            done: BTreeMap::new(),
            failed: false,
        });
        let cv = Condvar::new();
        // Chunk buffers go back here after the writer is done with them:
        // fresh 256 KiB allocations per chunk were a quarter of the
        // client's CPU samples (page faults and zeroing).
        let pool: Mutex<Vec<Vec<u8>>> = Mutex::new(Vec::new());
        // The manifest is read as the restore goes: each run goes to the
        // fetchers and, in order, to the writer. Both queues are bounded, so
        // memory does not grow with the snapshot.
        let (order_tx, order_rx) = bounded::<Result<Vec<Entry>>>(QUEUED_RUNS);
        let (fetch_tx, fetch_rx) = bounded::<Vec<Entry>>(QUEUED_RUNS);
        let mut hasher = blake3::Hasher::new();
        let mut report = RestoreReport {
            snapshot: snap.clone(),
            bytes: 0,
            zero_bytes: 0,
            chunks_verified: 0,
            seconds: 0.0,
        };
        let write_result = std::thread::scope(|scope| -> Result<()> {
            let snap = &snap;
            scope.spawn(move || {
                let planned = self.plan(snap, limits, &mut |run| {
                    // To the writer first: a run is never fetched before
                    // the writer knows of it.
                    if order_tx.send(Ok(run.clone())).is_err() {
                        return false;
                    }
                    run[0].id.is_zero() || fetch_tx.send(run).is_ok()
                });
                if let Err(e) = planned {
                    let _ = order_tx.send(Err(e));
                }
            });
            for _ in 0..FETCHERS {
                let runs = fetch_rx.clone();
                let (window, cv, pool) = (&window, &cv, &pool);
                scope.spawn(move || self.fetch_loop(snap, runs, window, cv, pool));
            }
            // Only the fetchers hold the run queue: when they all stop, the
            // planner's sends fail instead of blocking.
            drop(fetch_rx);
            // Releases the fetchers when the writer stops, even by a panic
            // (a panicking progress callback), so the scope can end.
            let _stop = Stop(&window, &cv);
            let result = (|| -> Result<()> {
                for run in order_rx {
                    for e in run? {
                        let len = (e.end - e.start) as usize;
                        if e.id.is_zero() {
                            out.write_zero(e.start, len, &mut hasher)?;
                            report.zero_bytes += len as u64;
                        } else {
                            let data = {
                                let mut w = window.lock().map_err(|_| {
                                    Error::Interrupted("restore worker panicked".into())
                                })?;
                                loop {
                                    if let Some(d) = w.done.remove(&e.index) {
                                        break d;
                                    }
                                    w = cv.wait(w).map_err(|_| {
                                        Error::Interrupted("restore worker panicked".into())
                                    })?;
                                }
                            }?;
                            if data.len() != len {
                                return Err(Error::Verification(format!(
                                    "chunk {} at byte {} is {} bytes, the manifest says {len}",
                                    e.id,
                                    e.start,
                                    data.len()
                                )));
                            }
                            hasher.update(&data);
                            out.write(e.start, &data)?;
                            if let Ok(mut p) = pool.lock() {
                                // Chunks fetched one by one (after a failed
                                // run) come from fresh buffers: never keep
                                // more than can be in flight.
                                if p.len() < POOL_MAX {
                                    p.push(data);
                                }
                            }
                            report.chunks_verified += 1;
                        }
                        report.bytes = e.end;
                        if let Ok(mut w) = window.lock() {
                            w.next_to_write = e.index + 1;
                        }
                        cv.notify_all();
                        progress(&RestoreProgress {
                            bytes: e.end,
                            total: snap.size_bytes,
                        });
                    }
                }
                Ok(())
            })();
            result
        });
        write_result?;
        let actual = hasher.finalize().to_hex().to_string();
        if report.bytes != snap.size_bytes {
            return Err(Error::Verification(format!(
                "restored {} bytes, the snapshot has {}",
                report.bytes, snap.size_bytes
            )));
        }
        if actual != snap.blake3 {
            return Err(Error::Verification(format!(
                "the restored image hashes to {actual}, the snapshot's BLAKE3 is {}",
                snap.blake3
            )));
        }
        out.finish()?;
        Ok(report)
    }

    /// Streams the manifest of `snap` from the server and hands it to
    /// `emit` in order as runs: one zero entry, or up to `RUN_CHUNKS`
    /// consecutive non-zero entries spanning at most `RUN_BYTES`. Stops
    /// early, without error, when `emit` returns false.
    fn plan(
        &self,
        snap: &Snapshot,
        limits: Limits,
        emit: &mut dyn FnMut(Vec<Entry>) -> bool,
    ) -> Result<()> {
        let resp = self
            .check(
                self.get(&format!("/v1/snapshots/{}/{}/manifest", snap.name, snap.id))
                    .call(),
            )
            .map_err(|e| match e {
                Error::TimedOut { after, .. } => Error::TimedOut {
                    what: "sending the manifest".into(),
                    after,
                },
                e => e,
            })?;
        let expected = snap.chunks.saturating_mul(MANIFEST_ENTRY_LEN);
        if let Some(len) = content_length(&resp) {
            if len != expected {
                return Err(Error::Verification(format!(
                    "the server sends a manifest of {len} bytes for {}@{}, which has {} chunks ({expected} bytes)",
                    snap.name, snap.id, snap.chunks
                )));
            }
        }
        let mut reader =
            BufReader::with_capacity(1 << 20, resp.into_body().into_reader().take(expected));
        let mut buf = [0u8; 40];
        let mut start = 0u64;
        let mut run: Vec<Entry> = Vec::with_capacity(RUN_CHUNKS);
        for index in 0..snap.chunks {
            reader
                .read_exact(&mut buf)
                .map_err(|e| self.read_error("sending the manifest", e))?;
            let mut end = [0u8; 8];
            end.copy_from_slice(&buf[..8]);
            let end = u64::from_le_bytes(end);
            let mut id = [0u8; 32];
            id.copy_from_slice(&buf[8..]);
            if end <= start || end > snap.size_bytes {
                return Err(Error::Verification(format!(
                    "manifest entry {index} ends at {end}, after {start}"
                )));
            }
            let e = Entry {
                index,
                start,
                end,
                id: ChunkId(id),
            };
            // Zero chunks are never fetched or held, so any length is fine.
            if !e.id.is_zero() && end - start > limits.max_chunk_len {
                return Err(Error::Verification(format!(
                    "manifest entry {index} is a chunk of {} bytes (bytes {start}..{end}); the repository's chunks are at most {} bytes",
                    end - start,
                    limits.max_chunk_len
                )));
            }
            start = end;
            let joins = !e.id.is_zero()
                && run.len() < RUN_CHUNKS
                && run.first().is_none_or(|f| e.end - f.start <= RUN_BYTES);
            if !joins && !run.is_empty() && !emit(std::mem::take(&mut run)) {
                return Ok(());
            }
            if e.id.is_zero() {
                if !emit(vec![e]) {
                    return Ok(());
                }
            } else {
                run.push(e);
            }
        }
        if !run.is_empty() {
            emit(run);
        }
        Ok(())
    }

    fn fetch_loop(
        &self,
        snap: &Snapshot,
        runs: Receiver<Vec<Entry>>,
        window: &Mutex<Window>,
        cv: &Condvar,
        pool: &Mutex<Vec<Vec<u8>>>,
    ) {
        while let Ok(run) = runs.recv() {
            let run = &run[..];
            {
                let last = run[run.len() - 1].index;
                let Ok(mut w) = window.lock() else { return };
                while last >= w.next_to_write + WINDOW && !w.failed {
                    w = match cv.wait(w) {
                        Ok(w) => w,
                        Err(_) => return,
                    };
                }
                if w.failed {
                    return;
                }
            }
            // A fetcher that panics still answers for its run: the writer
            // would otherwise wait for it forever.
            let mut pending = Pending {
                run,
                window,
                cv,
                armed: true,
            };
            let results: Vec<Result<Vec<u8>>> = match self.fetch_run(snap, run, pool) {
                Ok(Some(chunks)) => chunks.into_iter().map(Ok).collect(),
                // Again chunk by chunk: names exactly what is wrong. The
                // writer stops at the first error, so the rest can wait.
                Ok(None) => {
                    let mut results = Vec::with_capacity(run.len());
                    for e in run {
                        let r = self.fetch_chunk(snap, e);
                        let failed = r.is_err();
                        results.push(r);
                        if failed {
                            break;
                        }
                    }
                    results
                }
                // A stalled server: asking again chunk by chunk would only
                // wait that long again for each.
                Err(e) => vec![Err(e)],
            };
            let stop = results.iter().any(|r| r.is_err());
            pending.armed = false;
            if let Ok(mut w) = window.lock() {
                for (e, r) in run.iter().zip(results) {
                    w.done.insert(e.index, r);
                }
            }
            cv.notify_all();
            if stop {
                return;
            }
        }
    }

    /// The chunks of `run` (consecutive entries) as one range of the image;
    /// `None` if anything went wrong but a stall (an error: the server sent
    /// nothing for the read timeout). The server checks every chunk against
    /// its id as it reads it and cuts the response at the first bad one;
    /// what crosses the wire is covered by the whole-image hash.
    fn fetch_run(
        &self,
        snap: &Snapshot,
        run: &[Entry],
        pool: &Mutex<Vec<Vec<u8>>>,
    ) -> Result<Option<Vec<Vec<u8>>>> {
        let (start, end) = (run[0].start, run[run.len() - 1].end);
        let what = format!("sending bytes {start}..{end} of {}@{}", snap.name, snap.id);
        let stalled = |e: Error| match e {
            Error::TimedOut { after, .. } => Err(Error::TimedOut {
                what: what.clone(),
                after,
            }),
            _ => Ok(None),
        };
        let resp = match self
            .get(&format!("/v1/snapshots/{}/{}/data", snap.name, snap.id))
            .header("Range", &format!("bytes={start}-{}", end - 1))
            .call()
        {
            Ok(resp) => resp,
            Err(e) => return stalled(self.transport(e)),
        };
        // Anything but exactly the range asked for is not used.
        if resp.status().as_u16() != 206 || content_length(&resp).is_some_and(|n| n != end - start)
        {
            return Ok(None);
        }
        let mut body = resp.into_body().into_reader();
        let mut out = Vec::with_capacity(run.len());
        for e in run {
            let len = (e.end - e.start) as usize;
            let mut data = pool
                .lock()
                .ok()
                .and_then(|mut p| p.pop())
                .unwrap_or_default();
            data.clear();
            data.reserve(len);
            if let Err(err) = (&mut body).take(len as u64).read_to_end(&mut data) {
                return stalled(self.read_error(&what, err));
            }
            if data.len() != len {
                return Ok(None);
            }
            out.push(data);
        }
        Ok(Some(out))
    }

    fn fetch_chunk(&self, snap: &Snapshot, e: &Entry) -> Result<Vec<u8>> {
        let path = format!(
            "/v1/snapshots/{}/{}/chunks/{}",
            snap.name,
            snap.id,
            e.id.to_hex()
        );
        let what = format!("sending chunk {} (bytes {}..{})", e.id, e.start, e.end);
        let len = e.end - e.start;
        let resp = self
            .check(self.get(&path).call())
            .map_err(|err| match err {
                Error::Api {
                    code: ServerCode::Known(ErrorCode::CorruptData),
                    message,
                    ..
                } => Error::Verification(format!(
                    "the server reports chunk {} (bytes {}..{}) damaged: {message}",
                    e.id, e.start, e.end
                )),
                // The manifest lists it, so a missing chunk is damage (lost
                // or quarantined), not a wrong name.
                Error::NotFound { message } => Error::Verification(format!(
                    "chunk {} (bytes {}..{}) is missing from the repository: {message}",
                    e.id, e.start, e.end
                )),
                Error::TimedOut { after, .. } => Error::TimedOut {
                    what: what.clone(),
                    after,
                },
                other => other,
            })?;
        if let Some(n) = content_length(&resp).filter(|&n| n != len) {
            return Err(Error::Verification(format!(
                "the server announces {n} bytes for chunk {} (bytes {}..{}), which has {len}",
                e.id, e.start, e.end
            )));
        }
        // One byte more than the chunk tells a longer body from a whole one.
        let mut data = Vec::with_capacity(len as usize + 1);
        resp.into_body()
            .into_reader()
            .take(len + 1)
            .read_to_end(&mut data)
            .map_err(|err| self.read_error(&what, err))?;
        if data.len() as u64 > len {
            return Err(Error::Verification(format!(
                "the server sends more than the {len} bytes of chunk {} (bytes {}..{})",
                e.id, e.start, e.end
            )));
        }
        if (data.len() as u64) < len {
            return Err(Error::Verification(format!(
                "chunk {} (bytes {}..{}) arrived with only {} of its {len} bytes",
                e.id,
                e.start,
                e.end,
                data.len()
            )));
        }
        if ChunkId::of(&data) != e.id {
            return Err(Error::Verification(format!(
                "chunk {} (bytes {}..{}) arrived with different contents",
                e.id, e.start, e.end
            )));
        }
        Ok(data)
    }
}

/// What the repository allows, as the server says (`/v1/info`).
#[derive(Clone, Copy)]
struct Limits {
    max_chunk_len: u64,
}

/// Bytes of one manifest entry: end offset (u64) and chunk id.
const MANIFEST_ENTRY_LEN: u64 = 40;

/// A snapshot the server describes impossibly is refused before anything
/// is read or created.
fn check_snapshot(snap: &Snapshot) -> Result<()> {
    if snap.chunks > snap.size_bytes || (snap.chunks == 0) != (snap.size_bytes == 0) {
        return Err(Error::Verification(format!(
            "the server describes {}@{} as {} chunks in {} bytes, which cannot be (a chunk has 1 byte or more)",
            snap.name, snap.id, snap.chunks, snap.size_bytes
        )));
    }
    Ok(())
}

/// The `Content-Length` the server announced, if any.
fn content_length(resp: &http::Response<ureq::Body>) -> Option<u64> {
    resp.headers()
        .get(http::header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .parse()
        .ok()
}

/// Marks the window failed and wakes every waiter when dropped: the writer
/// holds one, so fetchers waiting for room stop whatever way it ends.
struct Stop<'a>(&'a Mutex<Window>, &'a Condvar);

impl Drop for Stop<'_> {
    fn drop(&mut self) {
        let mut w = self.0.lock().unwrap_or_else(|p| p.into_inner());
        w.failed = true;
        drop(w);
        self.1.notify_all();
    }
}

/// A run a fetcher has taken; if the fetcher unwinds before answering for
/// it, its entries are answered with an error.
struct Pending<'a> {
    run: &'a [Entry],
    window: &'a Mutex<Window>,
    cv: &'a Condvar,
    armed: bool,
}

impl Drop for Pending<'_> {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let mut w = self.window.lock().unwrap_or_else(|p| p.into_inner());
        for e in self.run {
            w.done.entry(e.index).or_insert_with(|| {
                Err(Error::Interrupted(format!(
                    "the thread fetching chunk {} panicked",
                    e.id
                )))
            });
        }
        drop(w);
        self.cv.notify_all();
    }
}
