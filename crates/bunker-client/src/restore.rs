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
//! One function per phase, in order:
//! 1. `fetch_snapshot`: the snapshot's description, refused if impossible;
//!    `limits`: the repository's largest chunk (`/v1/info`).
//! 2. `Output::open` (`output.rs`): prepare the target: the
//!    `.bunker-partial` file beside a regular file, or the checks of a
//!    block device.
//! 3. `transfer`: `feed` streams the manifest (`open_manifest`, `plan`,
//!    each entry checked by `parse_entry`) into runs; `fetch_loop` threads
//!    fetch them (`fetch_run`, or `fetch_chunk` and `verify_chunk` one by
//!    one after a failed run); `write_in_order` writes and hashes them.
//! 4. `check_image`: the size and whole-image BLAKE3.
//! 5. `Output::finish`: fsync, rename into place, fsync the directory.
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

use bunker_api::Snapshot;
use bunker_chunk::ChunkId;
use crossbeam_channel::{bounded, Receiver, Sender};

use crate::output::Output;
use crate::{Client, Error, Result};

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
pub(crate) struct Entry {
    pub(crate) index: u64,
    pub(crate) start: u64,
    pub(crate) end: u64,
    pub(crate) id: ChunkId,
}

/// The chunks in flight: fetchers deliver at most `WINDOW` chunks ahead
/// of the writer.
struct Window {
    /// Index of the next chunk the writer needs.
    next_to_write: u64,
    /// Delivered chunks (or their errors) by index, until the writer takes
    /// them.
    done: BTreeMap<u64, Result<Vec<u8>>>,
    /// The writer stopped: fetchers stop too.
    failed: bool,
}

/// What the fetchers and the writer share: the window, its signal and the
/// chunk buffers.
struct Shared {
    window: Mutex<Window>,
    /// Signalled when a chunk arrives or the window moves or fails.
    cv: Condvar,
    /// Chunk buffers go back here after the writer is done with them:
    /// fresh 256 KiB allocations per chunk were a quarter of the client's
    /// CPU samples (page faults and zeroing).
    pool: Mutex<Vec<Vec<u8>>>,
}

/// What the writer wrote.
struct Written {
    /// BLAKE3 of the whole image, zero chunks included.
    hasher: blake3::Hasher,
    /// End of the last entry written.
    bytes: u64,
    zero_bytes: u64,
    chunks_verified: u64,
}

impl Client {
    /// Restores `name@id` (latest when `id` is None) to `target`: the
    /// phases of the module doc, in order.
    pub fn restore(
        &self,
        name: &str,
        id: Option<u64>,
        target: Target<'_>,
        progress: &mut dyn FnMut(&RestoreProgress),
    ) -> Result<RestoreReport> {
        let started = Instant::now();
        let snap = self.fetch_snapshot(name, id)?;
        let limits = self.limits()?;
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

    /// The snapshot's description, refused before anything is read or
    /// created if it is impossible.
    pub(crate) fn fetch_snapshot(&self, name: &str, id: Option<u64>) -> Result<Snapshot> {
        let snap = self.snapshot(name, id)?;
        check_snapshot(&snap)?;
        Ok(snap)
    }

    /// What the repository allows. The longest chunk is its chunker's
    /// maximum, and never more than any repository allows.
    pub(crate) fn limits(&self) -> Result<Limits> {
        let max = self.info()?.chunker.max_bytes;
        Ok(Limits {
            max_chunk_len: u64::from(max.min(bunker_chunk::MAX_MAX_LEN)),
        })
    }

    /// Transfers the image into `out`, checks it whole, and makes it
    /// durable and visible (`Output::finish`: fsync, rename, directory
    /// fsync).
    fn restore_into(
        &self,
        snap: &Snapshot,
        limits: Limits,
        out: &mut Output<'_>,
        progress: &mut dyn FnMut(&RestoreProgress),
    ) -> Result<RestoreReport> {
        let written = self.transfer(snap, limits, out, progress)?;
        check_image(snap, written.bytes, &written.hasher.finalize())?;
        out.finish()?;
        Ok(RestoreReport {
            snapshot: snap.clone(),
            bytes: written.bytes,
            zero_bytes: written.zero_bytes,
            chunks_verified: written.chunks_verified,
            seconds: 0.0,
        })
    }

    /// Streams the manifest ([`Client::feed`], one thread), fetches its
    /// runs ([`Client::fetch_loop`], `FETCHERS` threads) and writes them
    /// in order ([`write_in_order`], this thread).
    fn transfer(
        &self,
        snap: &Snapshot,
        limits: Limits,
        out: &mut Output<'_>,
        progress: &mut dyn FnMut(&RestoreProgress),
    ) -> Result<Written> {
        let shared = Shared {
            window: Mutex::new(Window {
                next_to_write: 0,
                done: BTreeMap::new(),
                failed: false,
            }),
            cv: Condvar::new(),
            pool: Mutex::new(Vec::new()),
        };
        // The manifest is read as the restore goes: each run goes to the
        // fetchers and, in order, to the writer. Both queues are bounded, so
        // memory does not grow with the snapshot.
        let (order_tx, order_rx) = bounded::<Result<Vec<Entry>>>(QUEUED_RUNS);
        let (fetch_tx, fetch_rx) = bounded::<Vec<Entry>>(QUEUED_RUNS);
        std::thread::scope(|scope| {
            scope.spawn(move || self.feed(snap, limits, order_tx, fetch_tx));
            for _ in 0..FETCHERS {
                let runs = fetch_rx.clone();
                let shared = &shared;
                scope.spawn(move || self.fetch_loop(snap, runs, shared));
            }
            // Only the fetchers hold the run queue: when they all stop, the
            // planner's sends fail instead of blocking.
            drop(fetch_rx);
            // Releases the fetchers when the writer stops, even by a panic
            // (a panicking progress callback), so the scope can end.
            let _stop = Stop(&shared);
            write_in_order(snap, order_rx, &shared, out, progress)
        })
    }

    /// The planner thread: every run to the writer, then, unless it is a
    /// zero chunk, to the fetchers. An error of the manifest goes to the
    /// writer, which stops there.
    fn feed(
        &self,
        snap: &Snapshot,
        limits: Limits,
        order: Sender<Result<Vec<Entry>>>,
        fetch: Sender<Vec<Entry>>,
    ) {
        let planned = self.plan(snap, limits, &mut |run| {
            // To the writer first: a run is never fetched before the
            // writer knows of it.
            if order.send(Ok(run.clone())).is_err() {
                return false;
            }
            run[0].id.is_zero() || fetch.send(run).is_ok()
        });
        if let Err(e) = planned {
            let _ = order.send(Err(e));
        }
    }

    /// Streams the manifest of `snap` from the server and hands it to
    /// `emit` in order as runs: one zero entry, or up to `RUN_CHUNKS`
    /// consecutive non-zero entries spanning at most `RUN_BYTES`. Stops
    /// early, without error, when `emit` returns false.
    pub(crate) fn plan(
        &self,
        snap: &Snapshot,
        limits: Limits,
        emit: &mut dyn FnMut(Vec<Entry>) -> bool,
    ) -> Result<()> {
        let mut manifest = self.open_manifest(snap)?;
        let mut buf = [0u8; MANIFEST_ENTRY_LEN as usize];
        let mut start = 0u64;
        let mut run: Vec<Entry> = Vec::with_capacity(RUN_CHUNKS);
        for index in 0..snap.chunks {
            manifest
                .read_exact(&mut buf)
                .map_err(|e| self.read_error("sending the manifest", e))?;
            let e = parse_entry(&buf, index, start, snap, limits)?;
            start = e.end;
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

    /// The manifest's body (`GET .../manifest`), cut at the length its
    /// chunk count makes it; a server announcing another length is
    /// refused.
    pub(crate) fn open_manifest(&self, snap: &Snapshot) -> Result<impl Read + Send + use<>> {
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
        Ok(BufReader::with_capacity(
            1 << 20,
            resp.into_body().into_reader().take(expected),
        ))
    }

    /// A fetcher thread: takes runs until the queue closes or a fetch
    /// fails, waiting for room in the window before each, and answers for
    /// every chunk of a run it took.
    fn fetch_loop(&self, snap: &Snapshot, runs: Receiver<Vec<Entry>>, shared: &Shared) {
        while let Ok(run) = runs.recv() {
            let run = &run[..];
            if !shared.wait_for_room(run[run.len() - 1].index) {
                return;
            }
            // A fetcher that panics still answers for its run: the writer
            // would otherwise wait for it forever.
            let mut pending = Pending {
                run,
                shared,
                armed: true,
            };
            let results = self.fetch(snap, run, shared);
            let stop = results.iter().any(|r| r.is_err());
            pending.armed = false;
            shared.deliver(run, results);
            if stop {
                return;
            }
        }
    }

    /// The chunks of `run`: as one range read, or, if that went wrong,
    /// chunk by chunk up to the first error.
    fn fetch(&self, snap: &Snapshot, run: &[Entry], shared: &Shared) -> Vec<Result<Vec<u8>>> {
        match self.fetch_run(snap, run, shared) {
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
        shared: &Shared,
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
            let mut data = shared.buffer();
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

    /// One chunk (`GET .../chunks/<id>`, [`Client::chunk`]), checked here
    /// against its length and id ([`verify_chunk`]); errors name the
    /// chunk's place in the image.
    pub(crate) fn fetch_chunk(&self, snap: &Snapshot, e: &Entry) -> Result<Vec<u8>> {
        let data = self
            .chunk(snap, &e.id, e.end - e.start)
            .map_err(|err| match err {
                Error::Verification(why) => Error::Verification(format!(
                    "{why} (bytes {}..{} of the image)",
                    e.start, e.end
                )),
                other => other,
            })?;
        verify_chunk(e, &data)?;
        Ok(data)
    }
}

impl Shared {
    /// Waits until the chunk at `last` fits in the window; false if the
    /// restore stopped meanwhile.
    fn wait_for_room(&self, last: u64) -> bool {
        let Ok(mut w) = self.window.lock() else {
            return false;
        };
        while last >= w.next_to_write + WINDOW && !w.failed {
            w = match self.cv.wait(w) {
                Ok(w) => w,
                Err(_) => return false,
            };
        }
        !w.failed
    }

    /// Hands a fetcher's results for `run` to the writer.
    fn deliver(&self, run: &[Entry], results: Vec<Result<Vec<u8>>>) {
        if let Ok(mut w) = self.window.lock() {
            for (e, r) in run.iter().zip(results) {
                w.done.insert(e.index, r);
            }
        }
        self.cv.notify_all();
    }

    /// Waits for the chunk at `index` to be delivered and takes it.
    fn take(&self, index: u64) -> Result<Vec<u8>> {
        let panicked = |_| Error::Interrupted("restore worker panicked".into());
        let mut w = self.window.lock().map_err(panicked)?;
        loop {
            if let Some(d) = w.done.remove(&index) {
                return d;
            }
            w = self.cv.wait(w).map_err(panicked)?;
        }
    }

    /// The writer is done with every chunk before `next`: room for more.
    fn advance(&self, next: u64) {
        if let Ok(mut w) = self.window.lock() {
            w.next_to_write = next;
        }
        self.cv.notify_all();
    }

    /// A buffer for a chunk, reused if one is free.
    fn buffer(&self) -> Vec<u8> {
        self.pool
            .lock()
            .ok()
            .and_then(|mut p| p.pop())
            .unwrap_or_default()
    }

    /// Keeps a written chunk's buffer for reuse.
    fn recycle(&self, data: Vec<u8>) {
        if let Ok(mut p) = self.pool.lock() {
            // Chunks fetched one by one (after a failed run) come from
            // fresh buffers: never keep more than can be in flight.
            if p.len() < POOL_MAX {
                p.push(data);
            }
        }
    }
}

/// The writer: takes the runs in manifest order and each of their chunks as
/// its fetcher delivers it, checks its length, hashes it and writes it at
/// its offset; zero chunks are hashed and written as zeros or holes.
fn write_in_order(
    snap: &Snapshot,
    runs: Receiver<Result<Vec<Entry>>>,
    shared: &Shared,
    out: &mut Output<'_>,
    progress: &mut dyn FnMut(&RestoreProgress),
) -> Result<Written> {
    let mut written = Written {
        hasher: blake3::Hasher::new(),
        bytes: 0,
        zero_bytes: 0,
        chunks_verified: 0,
    };
    for run in runs {
        for e in run? {
            let len = (e.end - e.start) as usize;
            if e.id.is_zero() {
                out.write_zero(e.start, len, &mut written.hasher)?;
                written.zero_bytes += len as u64;
            } else {
                let data = shared.take(e.index)?;
                if data.len() != len {
                    return Err(Error::Verification(format!(
                        "chunk {} at byte {} is {} bytes, the manifest says {len}",
                        e.id,
                        e.start,
                        data.len()
                    )));
                }
                written.hasher.update(&data);
                out.write(e.start, &data)?;
                shared.recycle(data);
                written.chunks_verified += 1;
            }
            written.bytes = e.end;
            shared.advance(e.index + 1);
            progress(&RestoreProgress {
                bytes: e.end,
                total: snap.size_bytes,
            });
        }
    }
    Ok(written)
}

/// What the repository allows, as the server says (`/v1/info`).
#[derive(Clone, Copy)]
pub(crate) struct Limits {
    max_chunk_len: u64,
}

/// Bytes of one manifest entry: end offset (u64) and chunk id.
pub(crate) const MANIFEST_ENTRY_LEN: u64 = 40;

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

/// One manifest entry (end offset, chunk id), refused unless it ends after
/// `start` and within the image, and, unless a zero chunk (never fetched or
/// held), is no longer than the repository's largest chunk.
fn parse_entry(
    buf: &[u8; MANIFEST_ENTRY_LEN as usize],
    index: u64,
    start: u64,
    snap: &Snapshot,
    limits: Limits,
) -> Result<Entry> {
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
    if !e.id.is_zero() && end - start > limits.max_chunk_len {
        return Err(Error::Verification(format!(
            "manifest entry {index} is a chunk of {} bytes (bytes {start}..{end}); the repository's chunks are at most {} bytes",
            end - start,
            limits.max_chunk_len
        )));
    }
    Ok(e)
}

/// A chunk fetched alone has exactly its length and hashes to its id.
fn verify_chunk(e: &Entry, data: &[u8]) -> Result<()> {
    let len = e.end - e.start;
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
    if ChunkId::of(data) != e.id {
        return Err(Error::Verification(format!(
            "chunk {} (bytes {}..{}) arrived with different contents",
            e.id, e.start, e.end
        )));
    }
    Ok(())
}

/// The whole image: as long as the snapshot, and hashing to its BLAKE3.
/// This covers every byte that crossed the wire.
pub(crate) fn check_image(snap: &Snapshot, bytes: u64, hash: &blake3::Hash) -> Result<()> {
    if bytes != snap.size_bytes {
        return Err(Error::Verification(format!(
            "restored {bytes} bytes, the snapshot has {}",
            snap.size_bytes
        )));
    }
    let actual = hash.to_hex();
    if actual.as_str() != snap.blake3 {
        return Err(Error::Verification(format!(
            "the restored image hashes to {actual}, the snapshot's BLAKE3 is {}",
            snap.blake3
        )));
    }
    Ok(())
}

/// The `Content-Length` the server announced, if any.
pub(crate) fn content_length(resp: &http::Response<ureq::Body>) -> Option<u64> {
    resp.headers()
        .get(http::header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .parse()
        .ok()
}

/// Marks the window failed and wakes every waiter when dropped: the writer
/// holds one, so fetchers waiting for room stop whatever way it ends.
struct Stop<'a>(&'a Shared);

impl Drop for Stop<'_> {
    fn drop(&mut self) {
        let mut w = self.0.window.lock().unwrap_or_else(|p| p.into_inner());
        w.failed = true;
        drop(w);
        self.0.cv.notify_all();
    }
}

/// A run a fetcher has taken; if the fetcher unwinds before answering for
/// it, its entries are answered with an error.
struct Pending<'a> {
    run: &'a [Entry],
    shared: &'a Shared,
    armed: bool,
}

impl Drop for Pending<'_> {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let mut w = self.shared.window.lock().unwrap_or_else(|p| p.into_inner());
        for e in self.run {
            w.done.entry(e.index).or_insert_with(|| {
                Err(Error::Interrupted(format!(
                    "the thread fetching chunk {} panicked",
                    e.id
                )))
            });
        }
        drop(w);
        self.shared.cv.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snap(size_bytes: u64, blake3: String) -> Snapshot {
        Snapshot {
            name: "vol1".into(),
            id: 1,
            created_unix_ms: 0,
            size_bytes,
            chunks: 2,
            zero_chunks: 0,
            new_chunks: 0,
            new_bytes: 0,
            seconds: 0.0,
            blake3,
            source: String::new(),
            creator: None,
            last_verify: None,
            last_drill: None,
            last_server_drill: None,
            origin: None,
        }
    }

    fn entry_bytes(end: u64, id: ChunkId) -> [u8; MANIFEST_ENTRY_LEN as usize] {
        let mut buf = [0u8; MANIFEST_ENTRY_LEN as usize];
        buf[..8].copy_from_slice(&end.to_le_bytes());
        buf[8..].copy_from_slice(&id.0);
        buf
    }

    #[test]
    fn parse_entry_refuses_what_cannot_be() {
        let s = snap(1000, String::new());
        let limits = Limits { max_chunk_len: 100 };
        let id = ChunkId::of(b"x");
        let e = parse_entry(&entry_bytes(150, id), 1, 100, &s, limits).unwrap();
        assert_eq!((e.index, e.start, e.end), (1, 100, 150));
        // Not after the previous entry, past the image, longer than a chunk.
        for end in [100, 1001, 201] {
            let r = parse_entry(&entry_bytes(end, id), 1, 100, &s, limits);
            assert!(matches!(r, Err(Error::Verification(_))), "{end}");
        }
        // A zero chunk may be any length.
        let zero = ChunkId([0u8; 32]);
        assert!(zero.is_zero());
        assert!(parse_entry(&entry_bytes(1000, zero), 1, 100, &s, limits).is_ok());
    }

    #[test]
    fn verify_chunk_checks_length_and_id() {
        let data = b"some chunk".to_vec();
        let e = Entry {
            index: 0,
            start: 10,
            end: 10 + data.len() as u64,
            id: ChunkId::of(&data),
        };
        assert!(verify_chunk(&e, &data).is_ok());
        let mut longer = data.clone();
        longer.push(0);
        assert!(matches!(
            verify_chunk(&e, &longer),
            Err(Error::Verification(_))
        ));
        assert!(matches!(
            verify_chunk(&e, &data[1..]),
            Err(Error::Verification(_))
        ));
        let mut other = data.clone();
        other[0] ^= 1;
        assert!(matches!(
            verify_chunk(&e, &other),
            Err(Error::Verification(_))
        ));
    }

    #[test]
    fn check_image_wants_the_size_and_the_hash() {
        let hash = blake3::hash(b"image");
        let s = snap(5, hash.to_hex().to_string());
        assert!(check_image(&s, 5, &hash).is_ok());
        assert!(matches!(
            check_image(&s, 4, &hash),
            Err(Error::Verification(_))
        ));
        assert!(matches!(
            check_image(&s, 5, &blake3::hash(b"other")),
            Err(Error::Verification(_))
        ));
    }
}
