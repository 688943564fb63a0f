//! Ingesting a stream as a snapshot: read, chunk, hash, deduplicate,
//! compress, append, commit.
//!
//! Three stages run at once on consecutive blocks of the stream: a reader
//! thread fills block k + 2 and feeds it to the whole-stream BLAKE3; a
//! cutting thread finds the content-defined cuts of block k + 1 and hashes
//! its chunks (both on all cores, see `bunker_chunk::seams`); the calling
//! thread stores block k: one reservation per chunk in the index, zstd for
//! the new ones (on the rayon pool), one append of the new records, the
//! manifest entries. Overlapping the stages keeps both cores busy while a
//! block's serial parts (appends, manifest) run.
//!
//! Memory per stream is bounded by three buffers of `max_len + BLOCK_LEN`
//! bytes (grown as data arrives) plus the compressed output of one block:
//! with the default 1 MiB maximum chunk, 3 x 17 MiB + 16 MiB = 67 MiB at
//! most, whatever the size of the stream.

use std::io::Read;
use std::time::Instant;

use bunker_chunk::digest::BlockHasher;
use bunker_chunk::{seams, ChunkId, Chunker};
use crossbeam_channel::{bounded, Receiver, Sender};

use crate::cpu::{self, Stage};
use crate::snapshot::{BlocksFile, BlocksWriter, SnapshotWriter};
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
    /// Chunks found in the previous ingest of the name, without the index
    /// (`crate::window`).
    pub window_hits: u64,
}

/// Block buffers per stream: one being filled, one being cut, one being
/// stored.
const BUFFERS: usize = 3;

struct Block {
    buf: Vec<u8>,
    filled: usize,
    eof: bool,
}

/// A block with its chunk boundaries and ids: `spans` are relative to
/// `buf[start..]`, which begins with the bytes carried from the block before.
struct CutBlock {
    buf: Vec<u8>,
    start: usize,
    spans: Vec<seams::Span>,
    filled: usize,
    eof: bool,
}

impl Repository {
    /// Backs up `source` as a new snapshot of `name`. Nothing is visible
    /// unless this returns `Ok`; on error (including a source that fails
    /// mid-stream) no snapshot exists and the chunks written are garbage for
    /// GC.
    ///
    /// The stages: `read_blocks` and `cut_blocks` on their own threads,
    /// `store_blocks` on this one, then `SnapshotWriter::commit`.
    pub fn ingest(
        &self,
        name: &str,
        source: impl Read + Send,
        opts: &IngestOptions,
        progress: &mut dyn FnMut(&Progress),
    ) -> Result<SnapshotInfo> {
        let mut writer = self.begin_snapshot(name, &opts.source, opts.creator)?;
        writer.use_window()?;
        let blocks = self.blocks_writer()?;
        let chunker = self.chunker();
        let max = chunker.params().max_len as usize;
        let (full_tx, full_rx) = bounded::<std::io::Result<Block>>(1);
        let (cut_tx, cut_rx) = bounded::<std::io::Result<CutBlock>>(1);
        let (free_tx, free_rx) = bounded::<Vec<u8>>(BUFFERS);
        for _ in 0..BUFFERS {
            // Grown by `fill` as data arrives.
            let _ = free_tx.send(Vec::new());
        }
        let started = Instant::now();
        let result = std::thread::scope(|scope| -> Result<(blake3::Hash, BlocksFile)> {
            // Owned by this closure, so an early return drops them and
            // unblocks the other stages before the scope joins them.
            let (cut_rx, free_tx) = (cut_rx, free_tx);
            let reader = scope.spawn(move || read_blocks(source, free_rx, full_tx, max, blocks));
            let cutter = scope.spawn(move || cut_blocks(&chunker, full_rx, cut_tx, max));
            store_blocks(&mut writer, &cut_rx, &free_tx, progress)?;
            cutter
                .join()
                .map_err(|_| Error::Source(std::io::Error::other("cutting thread panicked")))?;
            reader
                .join()
                .map_err(|_| Error::Source(std::io::Error::other("reader thread panicked")))?
        });
        let (stream_hash, blocks) = result?;
        writer.set_blocks(blocks);
        let info = cpu::timed(Stage::Commit, || {
            writer.commit(*stream_hash.as_bytes(), opts.expected_hash)
        })?;
        tracing::debug!(seconds = started.elapsed().as_secs_f64(), "ingest done");
        Ok(info)
    }
}

/// Stage 1 (its own thread): fills free buffers from `source` and hands
/// them on; returns the whole-stream BLAKE3 and the block hashes
/// (`snapshot::blocks`), computed here, overlapped with the cutting and
/// storing of earlier blocks. Ends when the source ends or fails, or when
/// the next stage hangs up (error or done).
fn read_blocks(
    mut source: impl Read,
    free_rx: Receiver<Vec<u8>>,
    full_tx: Sender<std::io::Result<Block>>,
    max: usize,
    mut blocks: BlocksWriter,
) -> Result<(blake3::Hash, BlocksFile)> {
    let block_len = crate::format::blocks::DEFAULT_BLOCK_LEN;
    let mut hasher = BlockHasher::new(block_len);
    let mut written = Ok(());
    while let Ok(mut buf) = free_rx.recv() {
        let block = cpu::timed(Stage::Receive, || {
            fill(&mut source, &mut buf, max, max + BLOCK_LEN)
        })
        .map(|(filled, eof)| {
            cpu::timed(Stage::StreamHash, || {
                hasher.update(&buf[max..max + filled], |_, cv| {
                    if written.is_ok() {
                        written = blocks.push(&cv);
                    }
                })
            });
            Block { buf, filled, eof }
        });
        let stop = !matches!(block, Ok(Block { eof: false, .. }));
        if full_tx.send(block).is_err() || stop {
            break;
        }
    }
    written?;
    let len = hasher.len();
    let (root, tail) = hasher.finalize_with_tail();
    Ok((root, blocks.finish(block_len, len, tail)?))
}

/// Stage 2 (its own thread): cuts block k + 1 while the caller stores
/// block k. The incomplete chunk at the end of a block is carried to the
/// front of the next one (the `max` bytes reserved before its data).
fn cut_blocks(
    chunker: &Chunker,
    full_rx: Receiver<std::io::Result<Block>>,
    cut_tx: Sender<std::io::Result<CutBlock>>,
    max: usize,
) {
    let mut carry: Vec<u8> = Vec::with_capacity(max);
    while let Ok(block) = full_rx.recv() {
        let cut = block.map(
            |Block {
                 mut buf,
                 filled,
                 eof,
             }| {
                let start = max - carry.len();
                buf[start..max].copy_from_slice(&carry);
                let data = &buf[start..max + filled];
                let spans = seams::chunk_parallel_timed(chunker, data, eof, &cpu::CHUNKING);
                let at = spans.last().map_or(0, |s| s.end);
                carry.clear();
                carry.extend_from_slice(&data[at..]);
                debug_assert!(!eof || carry.is_empty());
                CutBlock {
                    buf,
                    start,
                    spans,
                    filled,
                    eof,
                }
            },
        );
        let stop = !matches!(cut, Ok(CutBlock { eof: false, .. }));
        if cut_tx.send(cut).is_err() || stop {
            break;
        }
    }
}

/// Stage 3 (the caller's thread): stores each cut block through
/// `SnapshotWriter::push_data` (dedup, compress, append, manifest entries),
/// reports progress and recycles the buffer; returns at the last block.
fn store_blocks(
    writer: &mut SnapshotWriter,
    cut_rx: &Receiver<std::io::Result<CutBlock>>,
    free_tx: &Sender<Vec<u8>>,
    progress: &mut dyn FnMut(&Progress),
) -> Result<()> {
    let mut stats = Progress::default();
    loop {
        let CutBlock {
            buf,
            start,
            spans,
            filled,
            eof,
        } = match cut_rx.recv() {
            Ok(Ok(b)) => b,
            Ok(Err(e)) => return Err(Error::Source(e)),
            Err(_) => {
                return Err(Error::Source(std::io::Error::other(
                    "reader thread stopped",
                )))
            }
        };
        let data = &buf[start..];
        let chunks: Vec<(ChunkId, &[u8])> = spans
            .iter()
            .map(|s| (s.id, &data[s.start..s.end]))
            .collect();
        let zero: Vec<bool> = spans.iter().map(|s| s.zero).collect();
        writer.push_data(&chunks, &zero)?;
        stats.bytes_read += filled as u64;
        stats.chunks = writer.chunks();
        stats.new_chunks = writer.new_chunks();
        stats.new_bytes = writer.new_bytes();
        stats.window_hits = writer.window_hits();
        progress(&stats);
        let _ = free_tx.send(buf);
        if eof {
            return Ok(());
        }
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
