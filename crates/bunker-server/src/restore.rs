//! Restore streaming: a snapshot's verified bytes into a response, in
//! bounded memory, holding no thread while the client is slow.
//!
//! Each response is fed by one async task. It reads the manifest in batches
//! and decodes chunks ahead of the client, each chunk a short job on the
//! blocking pool (a stalled client never holds a thread). Decoded bytes
//! count against the response's read-ahead and against the server-wide
//! [`Budget`]
//! (`restore_memory_bytes`) from decode until hyper has written and dropped
//! the last frame sliced from them; a restore waits for budget rather than
//! go beyond it. The read-ahead starts at [`FIRST_READ_AHEAD`] and grows
//! with what the client accepts, up to `restore_read_ahead_bytes` (one
//! chunk always fits). A client that accepts nothing for [`RECLAIM_AFTER`]
//! gives its read-ahead back (decoded again when it reads on) and starts
//! over small, so a stalled reader holds only the chunk being sent and the
//! frames its connection has queued; one that accepts nothing for
//! `write_timeout_secs` is disconnected (`crate::deadline`), which frees
//! those too.
//!
//! Frames are slices of the decoded chunk, never copies. A chunk that fails
//! verification aborts the response: no byte of it is ever sent.

use std::collections::VecDeque;
use std::ops::Range;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bunker_store::{ManifestCursor, ManifestEntry, Piece};
use bytes::Bytes;
use tokio::sync::{mpsc, OwnedSemaphorePermit};
use tokio::task::JoinHandle;

use crate::limits::{Budget, QuotaGuard};
use crate::state::State;

/// Manifest entries read at a time.
pub(crate) const ENTRY_BATCH: usize = 1024;
/// Largest frame handed to hyper (its write queue takes frames until it
/// holds 256 KiB).
const FRAME_LEN: u64 = 256 << 10;
/// A client that accepts nothing this long gives back its read-ahead.
const RECLAIM_AFTER: Duration = Duration::from_secs(1);
/// Read-ahead before the client has accepted anything: what a reader that
/// never reads makes the server decode.
const FIRST_READ_AHEAD: u64 = 1 << 20;

/// Zeros served for zero chunks, a slice at a time.
static ZEROS: [u8; FRAME_LEN as usize] = [0u8; FRAME_LEN as usize];

/// Decoded bytes with their share of a budget (and, for a single chunk,
/// the restore's place in its token's quota): given back when the last
/// frame sliced from them is dropped.
pub(crate) struct Held {
    data: Vec<u8>,
    _budget: OwnedSemaphorePermit,
    _quota: Option<QuotaGuard>,
}

impl AsRef<[u8]> for Held {
    fn as_ref(&self) -> &[u8] {
        &self.data
    }
}

impl Held {
    pub(crate) fn bytes(
        data: Vec<u8>,
        budget: OwnedSemaphorePermit,
        quota: Option<QuotaGuard>,
    ) -> Bytes {
        Bytes::from_owner(Held {
            data,
            _budget: budget,
            _quota: quota,
        })
    }
}

/// Tells the pack backend that the chunks of `entries` before byte `end`
/// will be read soon (blocking: it locates each in the index).
fn announce(state: &State, entries: &[ManifestEntry], end: u64) {
    let upto = entries.partition_point(|e| e.start < end);
    state.repo.will_need(&entries[..upto]);
}

/// The restores running now, and the memory they share.
pub(crate) struct Restores {
    pub(crate) budget: Budget,
    pub(crate) quota: Arc<crate::limits::Quota>,
}

/// A chunk scheduled for sending.
enum Chunk {
    Zero,
    Decoding(JoinHandle<bunker_store::Result<Bytes>>),
    Ready(Bytes),
}

struct Slot {
    entry: ManifestEntry,
    chunk: Chunk,
}

/// Why a restore stopped early.
enum Stop {
    /// The client went away (or its connection was cut).
    Gone,
    /// Damage or an internal failure: the response is aborted.
    Failed(String),
}

/// One response's producer.
pub(crate) struct Stream {
    state: Arc<State>,
    label: String,
    cursor: Option<ManifestCursor>,
    /// Entries read from the manifest, not yet scheduled.
    pending: VecDeque<ManifestEntry>,
    /// Scheduled chunks, in order; the first is being sent.
    slots: VecDeque<Slot>,
    /// Raw bytes of the scheduled chunks that hold (or will hold) data.
    ahead: u64,
    /// Bytes the client accepted since it last stalled.
    accepted: u64,
    read_ahead: u64,
    decoders: usize,
    /// Next byte to send, and the end of the range.
    pos: u64,
    end: u64,
    tx: mpsc::Sender<std::io::Result<Bytes>>,
    _quota: QuotaGuard,
}

/// Starts streaming `range` of a snapshot whose first manifest entries are
/// `first` (from `cursor`); returns the response body.
pub(crate) fn stream(
    state: &Arc<State>,
    label: String,
    cursor: ManifestCursor,
    first: Vec<ManifestEntry>,
    range: Range<u64>,
    quota: QuotaGuard,
) -> crate::body::Body {
    // Four frames queued for the connection: with one, the task and hyper
    // woke each other for every frame (about a tenth more CPU per GB).
    let (tx, rx) = mpsc::channel(4);
    let max_chunk = u64::from(state.repo.chunker_params().max_len);
    let s = Stream {
        state: state.clone(),
        label,
        cursor: Some(cursor),
        pending: first.into(),
        slots: VecDeque::new(),
        ahead: 0,
        accepted: 0,
        decoders: std::thread::available_parallelism().map_or(2, |n| n.get()),
        read_ahead: state.config.restore_read_ahead_bytes.max(max_chunk),
        pos: range.start,
        end: range.end,
        tx,
        _quota: quota,
    };
    tokio::spawn(s.run());
    crate::body::channel_body(rx)
}

impl Stream {
    async fn run(mut self) {
        let active = crate::state::Counted::new(&self.state, |m| &m.active_restores);
        // The first batch came with the request: announced here, as
        // `read_entries` announces the others.
        let first: Vec<ManifestEntry> = self.pending.iter().copied().collect();
        let (st, end) = (self.state.clone(), self.end);
        let _ = tokio::task::spawn_blocking(move || announce(&st, &first, end)).await;
        let outcome = self.pump().await;
        drop(active);
        if let Err(Stop::Failed(why)) = outcome {
            tracing::error!(snapshot = self.label, "restore aborted: {why}");
            let _ = self
                .tx
                .send(Err(std::io::Error::other(format!(
                    "restore of {} aborted: {why}",
                    self.label
                ))))
                .await;
        }
    }

    async fn pump(&mut self) -> Result<(), Stop> {
        while self.pos < self.end {
            self.schedule(true).await?;
            let (entry, data) = self.front().await?;
            let to = entry.end.min(self.end);
            while self.pos < to {
                let at = self.pos - entry.start;
                let n = (to - self.pos).min(FRAME_LEN);
                let frame = match &data {
                    Some(d) => d.slice(at as usize..(at + n) as usize),
                    None => Bytes::from_static(&ZEROS[..n as usize]),
                };
                self.send(frame).await?;
                self.pos += n;
                self.accepted += n;
                self.state
                    .metrics
                    .restore_bytes
                    .fetch_add(n, Ordering::Relaxed);
                // Keep decoding ahead while this chunk goes out, with the
                // budget there is now.
                self.schedule(false).await?;
            }
            if let Some(s) = self.slots.pop_front() {
                if !matches!(s.chunk, Chunk::Zero) {
                    self.ahead -= s.entry.end - s.entry.start;
                }
            }
        }
        Ok(())
    }

    /// Schedules decodes within the read-ahead, with the budget that is
    /// free. With `wait` and nothing scheduled, waits for budget (at most
    /// `write_timeout_secs`) instead.
    async fn schedule(&mut self, wait: bool) -> Result<(), Stop> {
        loop {
            // The next batch is read (and announced to the backend) before
            // this one runs out, so a remote backend's read-ahead does not
            // drain at each batch boundary.
            if self.pending.len() < ENTRY_BATCH / 4 && self.cursor.is_some() {
                if !self.read_entries().await? && self.pending.is_empty() {
                    return Ok(());
                }
                continue;
            }
            let Some(&e) = self.pending.front() else {
                return Ok(());
            };
            if e.start >= self.end {
                self.pending.clear();
                self.cursor = None;
                return Ok(());
            }
            if e.id.is_zero() {
                self.pending.pop_front();
                self.slots.push_back(Slot {
                    entry: e,
                    chunk: Chunk::Zero,
                });
                continue;
            }
            // As many decodes at once as there are cores: more would only
            // take turns on them.
            let decoding = self
                .slots
                .iter()
                .filter(|s| matches!(&s.chunk, Chunk::Decoding(job) if !job.is_finished()))
                .count();
            if decoding >= self.decoders {
                return Ok(());
            }
            let len = e.end - e.start;
            // One chunk always fits, whatever the read-ahead.
            let window = self.read_ahead.min(FIRST_READ_AHEAD + self.accepted);
            if self.ahead > 0 && self.ahead + len > window {
                return Ok(());
            }
            let budget = &self.state.restores.budget;
            let permit = if wait && self.slots.is_empty() {
                let limit = self.state.config.write_timeout();
                tokio::select! {
                    p = budget.take(len, limit) => p.ok_or_else(|| {
                        Stop::Failed(format!(
                            "no restore memory came free within {} s (restore_memory_bytes {})",
                            limit.as_secs(),
                            budget.bytes()
                        ))
                    })?,
                    _ = self.tx.closed() => return Err(Stop::Gone),
                }
            } else {
                match budget.try_take(len) {
                    Some(p) => p,
                    None => return Ok(()),
                }
            };
            self.pending.pop_front();
            let st = self.state.clone();
            let job = tokio::task::spawn_blocking(move || match st.repo.load(&e)? {
                Piece::Data(d) => Ok(Held::bytes(d, permit, None)),
                Piece::Zero(_) => Ok(Bytes::new()),
            });
            self.ahead += len;
            self.slots.push_back(Slot {
                entry: e,
                chunk: Chunk::Decoding(job),
            });
        }
    }

    /// Reads the next batch of entries; `false` at the end of the manifest.
    async fn read_entries(&mut self) -> Result<bool, Stop> {
        let Some(mut cursor) = self.cursor.take() else {
            return Ok(false);
        };
        let (st, end) = (self.state.clone(), self.end);
        let (cursor, batch) = tokio::task::spawn_blocking(move || {
            let b = cursor.next_batch(ENTRY_BATCH);
            // Announced as soon as read, ahead of the loads that follow,
            // so a remote backend fetches them with many requests in flight.
            if let Ok(entries) = &b {
                announce(&st, entries, end);
            }
            (cursor, b)
        })
        .await
        .map_err(|e| Stop::Failed(format!("manifest reader failed: {e}")))?;
        let batch = batch.map_err(|e| Stop::Failed(e.to_string()))?;
        if batch.is_empty() {
            return Ok(false);
        }
        self.cursor = Some(cursor);
        self.pending.extend(batch);
        Ok(true)
    }

    /// The chunk being sent: its entry and bytes (`None`: zeros).
    async fn front(&mut self) -> Result<(ManifestEntry, Option<Bytes>), Stop> {
        let Some(slot) = self.slots.front_mut() else {
            return Err(Stop::Failed(format!(
                "manifest ends at byte {}, before {}",
                self.pos, self.end
            )));
        };
        let data = match &mut slot.chunk {
            Chunk::Zero => None,
            Chunk::Ready(b) => Some(b.clone()),
            Chunk::Decoding(job) => {
                let b = job
                    .await
                    .map_err(|e| Stop::Failed(format!("chunk reader failed: {e}")))?
                    .map_err(|e| {
                        if e.is_corrupt() {
                            self.state.metrics.error("corrupt_data");
                        }
                        Stop::Failed(e.to_string())
                    })?;
                slot.chunk = Chunk::Ready(b.clone());
                Some(b)
            }
        };
        Ok((slot.entry, data))
    }

    /// Hands `frame` to the connection. While the client accepts nothing,
    /// the read-ahead behind the chunk being sent is given back.
    async fn send(&mut self, frame: Bytes) -> Result<(), Stop> {
        let first = tokio::time::timeout(RECLAIM_AFTER, self.tx.clone().reserve_owned()).await;
        let permit = match first {
            Ok(p) => p,
            Err(_) => {
                self.reclaim();
                self.tx.clone().reserve_owned().await
            }
        };
        permit.map_err(|_| Stop::Gone)?.send(Ok(frame));
        Ok(())
    }

    /// Puts every scheduled chunk but the first back to `pending`: their
    /// decodes (and budget) are dropped, to be done again when needed.
    fn reclaim(&mut self) {
        self.accepted = 0;
        while self.slots.len() > 1 {
            let Some(s) = self.slots.pop_back() else {
                break;
            };
            if !matches!(s.chunk, Chunk::Zero) {
                self.ahead -= s.entry.end - s.entry.start;
            }
            self.pending.push_front(s.entry);
        }
    }
}
