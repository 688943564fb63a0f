//! Where ingest spends CPU: thread CPU time per stage, summed over every
//! thread and stream since the process started.
//!
//! Each stage is timed on the thread that does its work (the reader, the
//! cutting thread, the rayon workers that scan, hash and compress, the
//! storing thread) with the thread's own CPU clock, so time a thread spends
//! waiting or preempted is not counted. What no stage covers (HTTP, the
//! kernel's socket copies, scheduling, allocation) is the process's CPU time
//! minus the sum. The clock costs one system call (about 0.2 µs); stages
//! are timed per 16 MiB block or per chunk: about six reads per new chunk,
//! some 25,000 (5 ms) per GB of new data at 256 KiB chunks.

use std::cell::Cell;
use std::sync::atomic::{AtomicU64, Ordering};

/// An ingest stage, as `GET /metrics` names it
/// (`bunker_ingest_cpu_seconds_total{stage="..."}`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stage {
    /// Copying the source's bytes into block buffers (for the server: from
    /// the request body).
    Receive,
    /// BLAKE3 of the whole stream and the block hashes, on the reader.
    StreamHash,
    /// Finding content-defined cuts (the gear scan), on all cores.
    Cut,
    /// BLAKE3 of each chunk, on all cores.
    ChunkHash,
    /// Dedup: the window and the index.
    Lookup,
    /// zstd and the compressibility probe, on all cores.
    Compress,
    /// Appending records to packs, publishing them to the index, sealing
    /// full packs (their encryption apart).
    Append,
    /// Encrypting records (an encrypted repository only).
    Encrypt,
    /// Manifest entries and the dedup window being written.
    Manifest,
    /// The commit: flushes, fsyncs, renames.
    Commit,
}

impl Stage {
    pub const ALL: [Stage; 10] = [
        Stage::Receive,
        Stage::StreamHash,
        Stage::Cut,
        Stage::ChunkHash,
        Stage::Lookup,
        Stage::Compress,
        Stage::Append,
        Stage::Encrypt,
        Stage::Manifest,
        Stage::Commit,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Stage::Receive => "receive",
            Stage::StreamHash => "stream_hash",
            Stage::Cut => "cut",
            Stage::ChunkHash => "chunk_hash",
            Stage::Lookup => "lookup",
            Stage::Compress => "compress",
            Stage::Append => "append",
            Stage::Encrypt => "encrypt",
            Stage::Manifest => "manifest",
            Stage::Commit => "commit",
        }
    }
}

static TOTALS: [AtomicU64; 10] = [const { AtomicU64::new(0) }; 10];

/// The cut scan's and the chunk hashes' counters, for
/// `bunker_chunk::seams::chunk_parallel_timed`.
pub(crate) static CHUNKING: bunker_chunk::seams::Clock<'static> = bunker_chunk::seams::Clock {
    now: thread_ns,
    scan: &TOTALS[Stage::Cut as usize],
    hash: &TOTALS[Stage::ChunkHash as usize],
};

/// This thread's CPU time in nanoseconds.
pub fn thread_ns() -> u64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::ThreadCPUTime);
    t.tv_sec as u64 * 1_000_000_000 + t.tv_nsec as u64
}

thread_local! {
    /// CPU time of the spans that ended inside the current one on this
    /// thread: the outer span leaves it to them (appends include the
    /// records' encryption, counted apart).
    static NESTED: Cell<u64> = const { Cell::new(0) };
}

/// Counts this thread's CPU time from `start` until dropped to a stage,
/// less what spans nested in it counted.
pub(crate) struct Span {
    stage: Stage,
    t0: u64,
    outer: u64,
}

impl Span {
    pub(crate) fn start(stage: Stage) -> Span {
        Span {
            stage,
            outer: NESTED.replace(0),
            t0: thread_ns(),
        }
    }
}

impl Drop for Span {
    fn drop(&mut self) {
        let spent = thread_ns().saturating_sub(self.t0);
        let inner = NESTED.get();
        TOTALS[self.stage as usize].fetch_add(spent.saturating_sub(inner), Ordering::Relaxed);
        NESTED.set(self.outer + spent);
    }
}

/// Runs `f`, counting this thread's CPU time in it to `stage`.
pub(crate) fn timed<T>(stage: Stage, f: impl FnOnce() -> T) -> T {
    let _span = Span::start(stage);
    f()
}

/// CPU seconds spent in each stage since the process started.
pub fn ingest_cpu() -> Vec<(Stage, f64)> {
    Stage::ALL
        .iter()
        .map(|&s| (s, TOTALS[s as usize].load(Ordering::Relaxed) as f64 / 1e9))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_busy_thread_is_counted_and_a_sleeping_one_is_not() {
        let t0 = thread_ns();
        std::thread::sleep(std::time::Duration::from_millis(50));
        let slept = thread_ns() - t0;
        let before = ingest_cpu()[Stage::Commit as usize].1;
        let sum = timed(Stage::Commit, || {
            let mut h = blake3::Hasher::new();
            for _ in 0..200 {
                h.update(&[7u8; 64 << 10]);
            }
            h.finalize()
        });
        assert_ne!(sum.as_bytes(), &[0u8; 32]);
        let busy = ingest_cpu()[Stage::Commit as usize].1 - before;
        assert!(slept < 20_000_000, "a 50 ms sleep used {slept} ns of CPU");
        assert!(busy > 0.0005, "12.5 MiB of BLAKE3 counted as {busy} s");
    }

    #[test]
    fn a_nested_span_is_not_counted_twice() {
        let hash = || {
            let mut h = blake3::Hasher::new();
            for _ in 0..100 {
                h.update(&[9u8; 64 << 10]);
            }
            h.finalize()
        };
        let before = ingest_cpu();
        timed(Stage::Manifest, || timed(Stage::Encrypt, hash));
        let after = ingest_cpu();
        let outer = after[Stage::Manifest as usize].1 - before[Stage::Manifest as usize].1;
        let inner = after[Stage::Encrypt as usize].1 - before[Stage::Encrypt as usize].1;
        assert!(inner > 0.0002, "the nested hash counted {inner} s");
        assert!(
            outer < inner,
            "the outer span counted {outer} s, the nested {inner} s"
        );
    }
}
