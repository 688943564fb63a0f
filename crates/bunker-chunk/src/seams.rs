//! Chunking one buffer on several cores with output identical to the
//! sequential chunker.
//!
//! The buffer is split into segments; each segment is chunked independently
//! as if a chunk started at its first byte ([`scan`]); then [`stitch`] walks
//! the true chain from the start and, at each seam, follows the sequential
//! chunker until one of its boundaries coincides with a boundary of the next
//! segment's chain. From a shared boundary the two chains are the same,
//! because a chunk's end depends only on where it starts (the fingerprint is
//! reset at every cut). With random data the chains meet within a chunk or
//! two, so almost all work is done in parallel.
//!
//! This module runs nothing in parallel itself unless the `rayon` feature is
//! on ([`cuts_parallel`]); otherwise the caller runs [`scan`] for each
//! segment on its own threads.

use crate::{ChunkId, Chunker, Cut};

/// One segment's speculative chain, as returned by [`scan`].
#[derive(Clone, Debug)]
pub struct SegmentCuts {
    pub start: usize,
    pub cuts: Vec<Cut>,
}

/// Start offsets of `segments` roughly equal pieces of a `len`-byte buffer.
/// Segments shorter than `min_segment` are not worth a thread and are merged.
pub fn split(len: usize, segments: usize, min_segment: usize) -> Vec<usize> {
    let n = segments.max(1).min(len / min_segment.max(1)).max(1);
    (0..n).map(|i| len / n * i).collect()
}

/// The chain that starts at `starts[index]`, running until a cut ends at or
/// beyond the next segment's start (or the data runs out).
pub fn scan(
    chunker: &Chunker,
    data: &[u8],
    starts: &[usize],
    index: usize,
    eof: bool,
) -> SegmentCuts {
    let start = starts[index];
    let stop = starts.get(index + 1).copied().unwrap_or(usize::MAX);
    SegmentCuts {
        start,
        cuts: chunker.cuts_until(data, start, stop, eof),
    }
}

/// Joins per-segment chains (in segment order, the first starting at 0) into
/// the sequential chunker's cuts of `data`.
pub fn stitch(chunker: &Chunker, data: &[u8], eof: bool, segments: Vec<SegmentCuts>) -> Vec<Cut> {
    let mut segments = segments.into_iter();
    let Some(first) = segments.next() else {
        return Vec::new();
    };
    debug_assert_eq!(first.start, 0);
    let mut out = first.cuts;
    let mut pos = out.last().map_or(0, |c| c.end);
    let mut exhausted = out.is_empty();
    for seg in segments {
        if exhausted {
            break;
        }
        loop {
            let adopt_from = if pos == seg.start {
                Some(0)
            } else {
                seg.cuts
                    .binary_search_by_key(&pos, |c| c.end)
                    .ok()
                    .map(|i| i + 1)
            };
            if let Some(i) = adopt_from {
                out.extend_from_slice(&seg.cuts[i..]);
                pos = out.last().map_or(pos, |c| c.end);
                break;
            }
            if seg.cuts.last().is_none_or(|c| pos >= c.end) {
                break;
            }
            match chunker.next_cut(&data[pos..], eof) {
                Some(cut) => {
                    pos += cut.end;
                    out.push(Cut {
                        end: pos,
                        zero: cut.zero,
                    });
                }
                None => {
                    exhausted = true;
                    break;
                }
            }
        }
    }
    // The last segment's chain may have stopped short of a sync; finish the
    // chain sequentially to the end of the data.
    if !exhausted {
        out.extend(chunker.cuts_until(data, pos, usize::MAX, eof));
    }
    out
}

/// The sequential chunker's cuts of `data`, computed on all rayon threads:
/// the buffer is split into about two segments per thread (none shorter
/// than four maximum chunks) and stitched.
#[cfg(feature = "rayon")]
pub fn cuts_parallel(chunker: &Chunker, data: &[u8], eof: bool) -> Vec<Cut> {
    cuts_timed(chunker, data, eof, &Clock::NONE)
}

/// A thread CPU clock (nanoseconds) and where [`chunk_parallel_timed`]
/// adds what each task spent: the caller's, so this crate stays free of
/// system calls.
pub struct Clock<'a> {
    pub now: fn() -> u64,
    pub scan: &'a std::sync::atomic::AtomicU64,
    pub hash: &'a std::sync::atomic::AtomicU64,
}

static UNUSED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

impl Clock<'static> {
    /// No timing.
    pub const NONE: Clock<'static> = Clock {
        now: || 0,
        scan: &UNUSED,
        hash: &UNUSED,
    };
}

impl Clock<'_> {
    fn time<T>(&self, to: &std::sync::atomic::AtomicU64, f: impl FnOnce() -> T) -> T {
        let t0 = (self.now)();
        let r = f();
        to.fetch_add(
            (self.now)().saturating_sub(t0),
            std::sync::atomic::Ordering::Relaxed,
        );
        r
    }
}

#[cfg(feature = "rayon")]
fn cuts_timed(chunker: &Chunker, data: &[u8], eof: bool, clock: &Clock<'_>) -> Vec<Cut> {
    use rayon::prelude::*;
    let threads = rayon::current_num_threads();
    let min_segment = 4 * chunker.params().max_len as usize;
    let starts = split(data.len(), threads * 2, min_segment);
    if starts.len() <= 1 {
        return clock.time(clock.scan, || chunker.cuts(data, eof));
    }
    let scans: Vec<SegmentCuts> = (0..starts.len())
        .into_par_iter()
        .map(|i| clock.time(clock.scan, || scan(chunker, data, &starts, i, eof)))
        .collect();
    clock.time(clock.scan, || stitch(chunker, data, eof, scans))
}

/// One chunk of a buffer: bytes `start..end`, its id ([`ChunkId::ZERO`]
/// for an all-zero chunk, which is not hashed).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Span {
    pub start: usize,
    pub end: usize,
    pub zero: bool,
    pub id: ChunkId,
}

/// Cuts `data` on all rayon threads ([`cuts_parallel`]) and hashes its
/// chunks in parallel: what ingest and client-side dedup do with each block.
#[cfg(feature = "rayon")]
pub fn chunk_parallel(chunker: &Chunker, data: &[u8], eof: bool) -> Vec<Span> {
    chunk_parallel_timed(chunker, data, eof, &Clock::NONE)
}

/// [`chunk_parallel`], adding each task's time to `clock.scan` (finding
/// the cuts) or `clock.hash` (the chunks' BLAKE3).
#[cfg(feature = "rayon")]
pub fn chunk_parallel_timed(
    chunker: &Chunker,
    data: &[u8],
    eof: bool,
    clock: &Clock<'_>,
) -> Vec<Span> {
    use rayon::prelude::*;
    let cuts = cuts_timed(chunker, data, eof, clock);
    let starts = std::iter::once(0).chain(cuts.iter().map(|c| c.end));
    let bounds: Vec<(usize, Cut)> = starts.zip(cuts.iter().copied()).collect();
    bounds
        .par_iter()
        .map(|&(start, c)| Span {
            start,
            end: c.end,
            zero: c.zero,
            id: if c.zero {
                ChunkId::ZERO
            } else {
                clock.time(clock.hash, || ChunkId::of(&data[start..c.end]))
            },
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chunker::tests::noise;
    use crate::ChunkerParams;
    use proptest::prelude::*;

    fn parallel(c: &Chunker, data: &[u8], eof: bool, segments: usize) -> Vec<Cut> {
        let starts = split(data.len(), segments, 1);
        let scans = std::thread::scope(|s| {
            let handles: Vec<_> = (0..starts.len())
                .map(|i| {
                    s.spawn({
                        let starts = &starts;
                        move || scan(c, data, starts, i, eof)
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().unwrap())
                .collect::<Vec<_>>()
        });
        stitch(c, data, eof, scans)
    }

    #[test]
    fn identical_to_sequential_on_a_large_buffer() {
        let c = Chunker::new(ChunkerParams::DEFAULT);
        let mut data = noise(9, 48 << 20);
        data[10 << 20..(19 << 20) + 12345].fill(0);
        for eof in [true, false] {
            let seq = c.cuts(&data, eof);
            for segments in [2, 3, 8] {
                assert_eq!(
                    parallel(&c, &data, eof, segments),
                    seq,
                    "segments {segments} eof {eof}"
                );
            }
        }
    }

    #[cfg(feature = "rayon")]
    #[test]
    fn chunk_parallel_is_the_sequential_chunks_and_their_ids() {
        let c = Chunker::new(ChunkerParams::new(1024, 4096, 16384).unwrap());
        let mut data = noise(5, 3 << 20);
        data[1 << 20..(1 << 20) + 100_000].fill(0);
        let spans = chunk_parallel(&c, &data, true);
        let mut start = 0;
        assert_eq!(spans.len(), c.cuts(&data, true).len());
        for (s, cut) in spans.iter().zip(c.cuts(&data, true)) {
            assert_eq!((s.start, s.end, s.zero), (start, cut.end, cut.zero));
            let want = if cut.zero {
                ChunkId::ZERO
            } else {
                ChunkId::of(&data[start..cut.end])
            };
            assert_eq!(s.id, want);
            start = cut.end;
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]
        #[test]
        fn identical_to_sequential(seed in any::<u64>(), len in 0usize..400_000, segments in 1usize..12, eof in any::<bool>(), zero_at in 0usize..400_000) {
            let c = Chunker::new(ChunkerParams::new(1024, 4096, 16384).unwrap());
            let mut data = noise(seed, len);
            let z0 = zero_at.min(len);
            let z1 = (z0 + 60_000).min(len);
            data[z0..z1].fill(0);
            prop_assert_eq!(parallel(&c, &data, eof, segments), c.cuts(&data, eof));
        }
    }
}
