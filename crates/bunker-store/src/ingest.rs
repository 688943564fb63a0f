//! Ingesting a stream as a snapshot: read, chunk, hash, deduplicate,
//! compress, append, commit.
//!
//! One reader thread fills fixed buffers from the source while the calling
//! thread processes the previous buffer in parallel stages on the rayon
//! pool: content-defined cuts (the buffer split into segments chunked on
//! all cores, see `bunker_chunk::seams`), BLAKE3 of each chunk, one
//! reservation per chunk in the index, zstd for the new ones, and one
//! append of the new records. The whole-stream BLAKE3 is computed on the
//! same pool as data arrives.
//!
//! Memory per stream is bounded by two buffers of `max_len + BLOCK_LEN`
//! bytes (grown as data arrives) plus the compressed output of one block: with the default 1 MiB
//! maximum chunk, 2 x 17 MiB + 16 MiB = 50 MiB at most, whatever the size
//! of the stream.

use std::io::Read;
use std::time::Instant;

use bunker_chunk::{seams, ChunkId};
use crossbeam_channel::bounded;

use crate::{Error, Repository, Result, SnapshotInfo};

/// Bytes read from the source per block.
pub const BLOCK_LEN: usize = 16 << 20;

/// Options of one ingest.
#[derive(Clone, Debug, Default)]
pub struct IngestOptions {
    /// Free text kept in the manifest (e.g. `file:/dev/sdb`).
    pub source: String,
    /// The client's BLAKE3 of the whole stream: the snapshot is refused
    /// if the data received hashes differently.
    pub expected_hash: Option<[u8; 32]>,
    /// Id of the API token doing the backup, kept in the manifest (0: none).
    pub creator: u64,
}

/// Running figures reported after each block.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Progress {
    pub bytes_read: u64,
    pub chunks: u64,
    pub new_chunks: u64,
    /// Bytes added to packs (after compression).
    pub new_bytes: u64,
}

struct Block {
    buf: Vec<u8>,
    filled: usize,
    eof: bool,
}

impl Repository {
    /// Backs up `source` as a new snapshot of `name`. Nothing is visible
    /// unless this returns `Ok`; on error (including a source that fails
    /// mid-stream) no snapshot exists and the chunks written are garbage for
    /// GC.
    pub fn ingest(
        &self,
        name: &str,
        source: impl Read + Send,
        opts: &IngestOptions,
        progress: &mut dyn FnMut(&Progress),
    ) -> Result<SnapshotInfo> {
        let mut writer = self.begin_snapshot(name, &opts.source, opts.creator)?;
        let chunker = self.inner.chunker;
        let max = chunker.params().max_len as usize;
        let (full_tx, full_rx) = bounded::<std::io::Result<Block>>(1);
        let (free_tx, free_rx) = bounded::<Vec<u8>>(2);
        for _ in 0..2 {
            // Grown by `fill` as data arrives.
            let _ = free_tx.send(Vec::new());
        }
        let mut stats = Progress::default();
        let started = Instant::now();
        let result = std::thread::scope(|scope| -> Result<blake3::Hash> {
            // Owned by this closure, so an early return drops them and
            // unblocks the reader thread before the scope joins it.
            let (full_rx, free_tx) = (full_rx, free_tx);
            let mut source = source;
            let reader = scope.spawn(move || {
                // Ends when the source ends or fails, or when the consumer
                // hangs up (error or done). The whole-stream hash is computed
                // here, overlapped with the processing of the previous block.
                let mut hasher = blake3::Hasher::new();
                while let Ok(mut buf) = free_rx.recv() {
                    let block =
                        fill(&mut source, &mut buf, max, max + BLOCK_LEN).map(|(filled, eof)| {
                            hasher.update(&buf[max..max + filled]);
                            Block { buf, filled, eof }
                        });
                    let stop = !matches!(block, Ok(Block { eof: false, .. }));
                    if full_tx.send(block).is_err() || stop {
                        break;
                    }
                }
                hasher.finalize()
            });
            let mut carry: Vec<u8> = Vec::with_capacity(max);
            loop {
                let block = match full_rx.recv() {
                    Ok(Ok(b)) => b,
                    Ok(Err(e)) => return Err(Error::Source(e)),
                    Err(_) => {
                        return Err(Error::Source(std::io::Error::other(
                            "reader thread stopped",
                        )))
                    }
                };
                let Block {
                    mut buf,
                    filled,
                    eof,
                } = block;
                let start = max - carry.len();
                buf[start..max].copy_from_slice(&carry);
                let data = &buf[start..max + filled];
                let spans = seams::chunk_parallel(&chunker, data, eof);
                let at = spans.last().map_or(0, |s| s.end);
                let chunks: Vec<(ChunkId, &[u8])> = spans
                    .iter()
                    .map(|s| (s.id, &data[s.start..s.end]))
                    .collect();
                let zero: Vec<bool> = spans.iter().map(|s| s.zero).collect();
                writer.push_data(&chunks, &zero)?;
                carry.clear();
                carry.extend_from_slice(&data[at..]);
                stats.bytes_read += filled as u64;
                stats.chunks = writer.chunks();
                stats.new_chunks = writer.new_chunks();
                stats.new_bytes = writer.new_bytes();
                progress(&stats);
                let _ = free_tx.send(buf);
                if eof {
                    debug_assert!(carry.is_empty());
                    return reader.join().map_err(|_| {
                        Error::Source(std::io::Error::other("reader thread panicked"))
                    });
                }
            }
        });
        let stream_hash = result?;
        let info = writer.commit(*stream_hash.as_bytes(), opts.expected_hash)?;
        tracing::debug!(seconds = started.elapsed().as_secs_f64(), "ingest done");
        Ok(info)
    }
}

/// Reads into `buf[from..end]` until it is full or the source ends:
/// `(bytes, eof)`. `buf` is grown (and zeroed) only as far as data arrives,
/// so a stream that ends or fails early, such as a refused upload, costs
/// what it sent rather than two whole blocks; recycled buffers are full
/// size already.
fn fill(
    source: &mut impl Read,
    buf: &mut Vec<u8>,
    from: usize,
    end: usize,
) -> std::io::Result<(usize, bool)> {
    if buf.len() < from {
        buf.reserve_exact(end - buf.len());
        buf.resize(from, 0);
    }
    let mut at = from;
    while at < end {
        if at == buf.len() {
            let grow = (at - from).max(64 << 10);
            buf.resize((at + grow).min(end), 0);
        }
        match source.read(&mut buf[at..]) {
            Ok(0) => return Ok((at - from, true)),
            Ok(n) => at += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok((at - from, false))
}
