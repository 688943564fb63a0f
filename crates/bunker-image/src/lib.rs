//! A snapshot image read at any offset, over the server's HTTP API: what
//! the NBD export (`bunker-nbd`) and the FUSE mount serve.
//!
//! - The manifest is spooled once to an unlinked temporary file and mapped
//!   (`manifest.rs`); a byte offset maps to its chunk by binary search. No
//!   heap memory grows with the image.
//! - Every chunk is BLAKE3-checked here before its bytes are used (the
//!   server checks too, but the bytes crossed a wire since). A chunk that
//!   fails is [`ImageError::Damaged`] for the reads that touch it; the rest
//!   of the image reads on.
//! - Verified chunks are kept in an LRU bounded by bytes (`cache.rs`,
//!   [`ImageOptions::cache_bytes`]), so small random reads do not fetch a
//!   chunk each. Concurrent reads of one chunk fetch it once.
//! - Sequential reads are detected (a read starting where a recent one
//!   ended) and the next [`ImageOptions::read_ahead_chunks`] chunks are
//!   fetched by background threads; [`Image::prefetch`] asks for the same
//!   explicitly.
//! - Zero chunks are never fetched: they read as zeros and are reported as
//!   zero runs by [`Image::extents`].
//!
//! An [`Image`] is `Send + Sync`: one is shared by every connection.

mod cache;
mod error;
mod manifest;
mod mmap;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use bunker_api::Snapshot;
use bunker_chunk::ChunkId;
use bunker_client::{Client, ErrorKind};
use crossbeam_channel::{Receiver, Sender};

use cache::Lru;
use manifest::Manifest;

pub use error::ImageError;
pub use manifest::Chunk;

/// Extents reported by one [`Image::extents`] call, at most: bounds the
/// work of one block-status request over a huge range.
pub const MAX_EXTENTS: usize = 4096;

#[derive(Clone, Debug)]
pub struct ImageOptions {
    /// Bytes of verified chunks kept (default 256 MiB).
    pub cache_bytes: u64,
    /// Chunks fetched ahead of a sequential reader (default 16; 0: none).
    pub read_ahead_chunks: u32,
    /// Background threads fetching ahead (default 4).
    pub read_ahead_threads: usize,
    /// Chunk requests to the server at once, at most (default 8): the
    /// server allows a token 16 streams.
    pub max_fetches: usize,
    /// Where the manifest is spooled (default: the system's temporary
    /// directory). The file is unlinked at once.
    pub spool_dir: Option<PathBuf>,
}

impl Default for ImageOptions {
    fn default() -> Self {
        ImageOptions {
            cache_bytes: 256 << 20,
            read_ahead_chunks: 16,
            read_ahead_threads: 4,
            max_fetches: 8,
            spool_dir: None,
        }
    }
}

/// A run of the image: data, or zeros (a zero chunk, never stored).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Extent {
    pub offset: u64,
    pub len: u64,
    pub zero: bool,
}

/// The repository's chunk lengths (its chunker parameters): a reader's
/// preferred request size.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChunkSizes {
    pub min: u64,
    pub avg: u64,
    pub max: u64,
}

/// What an image has done since it was opened.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ImageStats {
    /// Chunks fetched from the server (read-ahead included).
    pub fetched_chunks: u64,
    pub fetched_bytes: u64,
    /// Chunk reads answered from the cache or by another read's fetch.
    pub cache_hits: u64,
    /// Chunks that failed verification (each attempt counts).
    pub damaged: u64,
    /// Bytes in the cache now.
    pub cached_bytes: u64,
}

pub struct Image {
    inner: Arc<Inner>,
    /// Chunk indexes for the read-ahead threads; dropped to stop them.
    ahead: Option<Sender<u64>>,
    threads: Vec<JoinHandle<()>>,
}

struct Inner {
    client: Client,
    snap: Snapshot,
    manifest: Manifest,
    sizes: ChunkSizes,
    read_ahead_chunks: u64,
    state: Mutex<State>,
    /// Recent sequential streams: (end of the last read, last chunk
    /// queued for read-ahead).
    streams: Mutex<Streams>,
    /// Fetches running now, at most `max_fetches`.
    fetching: Mutex<usize>,
    fetch_done: Condvar,
    max_fetches: usize,
    stats: Counters,
}

struct State {
    cache: Lru,
    /// Chunks being fetched now; other readers wait for the same fetch.
    flights: HashMap<ChunkId, Arc<Flight>>,
}

/// One fetch of a chunk that several readers may be waiting for.
struct Flight {
    result: Mutex<Option<Result<Arc<[u8]>, Failure>>>,
    done: Condvar,
}

/// Why a fetch failed, as every reader waiting for it is told.
#[derive(Clone)]
enum Failure {
    Damaged(String),
    Unavailable(String),
}

#[derive(Default)]
struct Counters {
    fetched_chunks: AtomicU64,
    fetched_bytes: AtomicU64,
    cache_hits: AtomicU64,
    damaged: AtomicU64,
}

/// Streams tracked for sequential detection, at most.
const STREAMS: usize = 16;
/// A read starting this far after a stream's end still continues it
/// (a reader skipping a hole, or requests handled slightly out of order).
const SEQUENTIAL_SLACK: u64 = 1 << 20;

#[derive(Default)]
struct Streams {
    /// (end of the last read, last chunk index queued ahead).
    slots: Vec<(u64, u64)>,
    next: usize,
}

impl Image {
    /// Opens `name@id` (the latest of `name` when `id` is None): fetches
    /// its description and the repository's chunk sizes, spools and checks
    /// its manifest, and starts the read-ahead threads.
    pub fn open(
        client: Client,
        name: &str,
        id: Option<u64>,
        options: ImageOptions,
    ) -> Result<Image, ImageError> {
        let snap = client.snapshot(name, id)?;
        let chunker = client.info()?.chunker;
        let sizes = ChunkSizes {
            min: u64::from(chunker.min_bytes),
            avg: u64::from(chunker.avg_bytes),
            max: u64::from(chunker.max_bytes.min(bunker_chunk::MAX_MAX_LEN)),
        };
        let what = format!("{}@{}", snap.name, snap.id);
        if snap.chunks > snap.size_bytes || (snap.chunks == 0) != (snap.size_bytes == 0) {
            return Err(ImageError::BadManifest {
                snapshot: what,
                reason: format!(
                    "the server describes it as {} chunks in {} bytes",
                    snap.chunks, snap.size_bytes
                ),
            });
        }
        let manifest = Manifest::spool(
            client.manifest(&snap)?,
            &what,
            snap.chunks,
            snap.size_bytes,
            sizes.max,
            options.spool_dir.as_deref(),
        )?;
        let inner = Arc::new(Inner {
            client,
            snap,
            manifest,
            sizes,
            read_ahead_chunks: u64::from(options.read_ahead_chunks),
            state: Mutex::new(State {
                cache: Lru::new(options.cache_bytes),
                flights: HashMap::new(),
            }),
            streams: Mutex::new(Streams::default()),
            fetching: Mutex::new(0),
            fetch_done: Condvar::new(),
            max_fetches: options.max_fetches.max(1),
            stats: Counters::default(),
        });
        let mut image = Image {
            inner,
            ahead: None,
            threads: Vec::new(),
        };
        if options.read_ahead_chunks > 0 && options.read_ahead_threads > 0 {
            let (tx, rx) = crossbeam_channel::bounded(options.read_ahead_chunks as usize * 4);
            for _ in 0..options.read_ahead_threads {
                let inner = image.inner.clone();
                let rx: Receiver<u64> = rx.clone();
                image.threads.push(std::thread::spawn(move || {
                    while let Ok(index) = rx.recv() {
                        // A failure is the reader's to report when it gets
                        // there.
                        let _ = inner.chunk_data(&inner.manifest.chunk(index));
                    }
                }));
            }
            image.ahead = Some(tx);
        }
        Ok(image)
    }

    pub fn snapshot(&self) -> &Snapshot {
        &self.inner.snap
    }

    /// Bytes in the image.
    pub fn size(&self) -> u64 {
        self.inner.snap.size_bytes
    }

    pub fn chunk_sizes(&self) -> ChunkSizes {
        self.inner.sizes
    }

    /// Chunks in the image.
    pub fn chunks(&self) -> u64 {
        self.inner.manifest.count()
    }

    /// The chunk holding byte `offset`.
    pub fn chunk_at(&self, offset: u64) -> Result<Chunk, ImageError> {
        self.check_range(offset, 1)?;
        Ok(self.inner.manifest.chunk(self.inner.manifest.find(offset)))
    }

    pub fn stats(&self) -> ImageStats {
        let s = &self.inner.stats;
        ImageStats {
            fetched_chunks: s.fetched_chunks.load(Ordering::Relaxed),
            fetched_bytes: s.fetched_bytes.load(Ordering::Relaxed),
            cache_hits: s.cache_hits.load(Ordering::Relaxed),
            damaged: s.damaged.load(Ordering::Relaxed),
            cached_bytes: self.inner.state.lock().expect("image lock").cache.bytes(),
        }
    }

    fn check_range(&self, offset: u64, len: u64) -> Result<(), ImageError> {
        let size = self.size();
        if offset.checked_add(len).is_none_or(|end| end > size) {
            return Err(ImageError::OutOfRange { offset, len, size });
        }
        Ok(())
    }

    /// Fills `buf` with the bytes at `offset`, all of them or an error: the
    /// first chunk that failed, or a range beyond the end.
    pub fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<(), ImageError> {
        self.check_range(offset, buf.len() as u64)?;
        if buf.is_empty() {
            return Ok(());
        }
        let m = &self.inner.manifest;
        let mut index = m.find(offset);
        let mut at = offset;
        let mut done = 0usize;
        while done < buf.len() {
            let c = m.chunk(index);
            let from = (at - c.start) as usize;
            let n = ((c.end - at) as usize).min(buf.len() - done);
            let out = &mut buf[done..done + n];
            if c.is_zero() {
                out.fill(0);
            } else {
                let data = self.inner.chunk_data(&c)?;
                out.copy_from_slice(&data[from..from + n]);
            }
            done += n;
            at += n as u64;
            index += 1;
        }
        self.note_read(offset, at, index - 1);
        Ok(())
    }

    /// Sequential detection: a read that starts where a recent one ended
    /// (within `SEQUENTIAL_SLACK`) continues that stream, and the chunks
    /// after `last` up to the read-ahead distance are queued.
    fn note_read(&self, offset: u64, end: u64, last: u64) {
        let Some(ahead) = &self.ahead else { return };
        let want = (last + self.inner.read_ahead_chunks).min(self.chunks() - 1);
        let from = {
            let mut s = self.inner.streams.lock().expect("streams lock");
            let hit = s
                .slots
                .iter()
                .position(|&(e, _)| offset >= e && offset - e <= SEQUENTIAL_SLACK);
            match hit {
                Some(i) => {
                    let queued = s.slots[i].1;
                    s.slots[i] = (end, queued.max(want));
                    if want <= queued {
                        return;
                    }
                    queued.max(last) + 1
                }
                None => {
                    // A new stream: remembered, nothing queued yet.
                    if s.slots.len() < STREAMS {
                        s.slots.push((end, last));
                    } else {
                        let i = s.next;
                        s.slots[i] = (end, last);
                        s.next = (i + 1) % STREAMS;
                    }
                    return;
                }
            }
        };
        self.queue(ahead, from, want);
    }

    /// Queues data chunks `from..=to` not cached or being fetched; stops
    /// when the queue is full (read-ahead is a hint).
    fn queue(&self, ahead: &Sender<u64>, from: u64, to: u64) {
        let m = &self.inner.manifest;
        for index in from..=to {
            let c = m.chunk(index);
            if c.is_zero() {
                continue;
            }
            {
                let st = self.inner.state.lock().expect("image lock");
                if st.cache.contains(&c.id) || st.flights.contains_key(&c.id) {
                    continue;
                }
            }
            if ahead.try_send(index).is_err() {
                return;
            }
        }
    }

    /// Fetches the chunks of `offset..offset+len` in the background (NBD
    /// `CACHE`), as many as fit in the read-ahead queue.
    pub fn prefetch(&self, offset: u64, len: u64) -> Result<(), ImageError> {
        self.check_range(offset, len)?;
        let (Some(ahead), true) = (&self.ahead, len > 0) else {
            return Ok(());
        };
        let m = &self.inner.manifest;
        self.queue(ahead, m.find(offset), m.find(offset + len - 1));
        Ok(())
    }

    /// The data and zero runs of `offset..offset+len`, chunk-granular,
    /// adjacent runs of a kind merged, cut to the range. Covers the whole
    /// range or, past [`MAX_EXTENTS`] runs, a prefix of it.
    pub fn extents(&self, offset: u64, len: u64) -> Result<Vec<Extent>, ImageError> {
        self.check_range(offset, len)?;
        let mut out: Vec<Extent> = Vec::new();
        if len == 0 {
            return Ok(out);
        }
        let m = &self.inner.manifest;
        let end = offset + len;
        let mut index = m.find(offset);
        let mut at = offset;
        while at < end {
            let c = m.chunk(index);
            let n = c.end.min(end) - at;
            match out.last_mut() {
                Some(last) if last.zero == c.is_zero() => last.len += n,
                _ => {
                    if out.len() == MAX_EXTENTS {
                        break;
                    }
                    out.push(Extent {
                        offset: at,
                        len: n,
                        zero: c.is_zero(),
                    });
                }
            }
            at += n;
            index += 1;
        }
        Ok(out)
    }
}

impl Drop for Image {
    fn drop(&mut self) {
        self.ahead = None;
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

impl Inner {
    /// The verified bytes of data chunk `c`: from the cache, from a fetch
    /// already running, or fetched now.
    fn chunk_data(&self, c: &Chunk) -> Result<Arc<[u8]>, ImageError> {
        let (flight, leader) = {
            let mut st = self.state.lock().expect("image lock");
            if let Some(data) = st.cache.get(&c.id) {
                self.stats.cache_hits.fetch_add(1, Ordering::Relaxed);
                return Ok(data);
            }
            match st.flights.get(&c.id) {
                Some(f) => (f.clone(), false),
                None => {
                    let f = Arc::new(Flight {
                        result: Mutex::new(None),
                        done: Condvar::new(),
                    });
                    st.flights.insert(c.id, f.clone());
                    (f, true)
                }
            }
        };
        let result = if leader {
            let r = self.fetch(c);
            let mut st = self.state.lock().expect("image lock");
            st.flights.remove(&c.id);
            if let Ok(data) = &r {
                st.cache.insert(c.id, data.clone());
            }
            drop(st);
            *flight.result.lock().expect("flight lock") = Some(r.clone());
            flight.done.notify_all();
            r
        } else {
            self.stats.cache_hits.fetch_add(1, Ordering::Relaxed);
            let mut slot = flight.result.lock().expect("flight lock");
            while slot.is_none() {
                slot = flight.done.wait(slot).expect("flight lock");
            }
            slot.clone().expect("a finished flight")
        };
        result.map_err(|f| match f {
            Failure::Damaged(reason) => ImageError::Damaged {
                chunk: c.id,
                offset: c.start,
                reason,
            },
            Failure::Unavailable(reason) => ImageError::Unavailable {
                chunk: c.id,
                offset: c.start,
                reason,
            },
        })
    }

    /// One fetch of `c` from the server, at most `max_fetches` at once,
    /// checked against its id. A server busy with other streams (503) is
    /// asked again a few times.
    fn fetch(&self, c: &Chunk) -> Result<Arc<[u8]>, Failure> {
        let _permit = self.permit();
        let mut tries = 0u32;
        let data = loop {
            match self.client.chunk(&self.snap, &c.id, c.len()) {
                Ok(d) => break d,
                Err(e) if e.kind() == ErrorKind::Verification => {
                    self.stats.damaged.fetch_add(1, Ordering::Relaxed);
                    return Err(Failure::Damaged(e.to_string()));
                }
                Err(bunker_client::Error::Api { status: 503, .. }) if tries < 5 => {
                    tries += 1;
                    std::thread::sleep(Duration::from_millis(100 << tries));
                }
                Err(e) => return Err(Failure::Unavailable(e.to_string())),
            }
        };
        if ChunkId::of(&data) != c.id {
            self.stats.damaged.fetch_add(1, Ordering::Relaxed);
            return Err(Failure::Damaged(
                "its bytes do not hash to its id".to_string(),
            ));
        }
        self.stats.fetched_chunks.fetch_add(1, Ordering::Relaxed);
        self.stats
            .fetched_bytes
            .fetch_add(data.len() as u64, Ordering::Relaxed);
        Ok(data.into())
    }

    fn permit(&self) -> Permit<'_> {
        let mut n = self.fetching.lock().expect("fetch lock");
        while *n >= self.max_fetches {
            n = self.fetch_done.wait(n).expect("fetch lock");
        }
        *n += 1;
        Permit(self)
    }
}

/// One of the `max_fetches` fetch slots, given back on drop.
struct Permit<'a>(&'a Inner);

impl Drop for Permit<'_> {
    fn drop(&mut self) {
        *self.0.fetching.lock().expect("fetch lock") -= 1;
        self.0.fetch_done.notify_one();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assert_send_sync<T: Send + Sync>() {}

    #[test]
    fn an_image_is_shared_between_threads() {
        assert_send_sync::<Image>();
    }
}
