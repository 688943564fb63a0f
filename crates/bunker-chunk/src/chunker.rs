//! Gear-hash content-defined chunking in the style of FastCDC 2020.
//!
//! The rolling fingerprint is `fp = (fp << 1) + GEAR[byte]`; a chunk ends
//! after the byte at which `fp & mask == 0`. Speed comes from three FastCDC
//! techniques: the first `min_len` bytes of a chunk are skipped without
//! hashing (cut-point skipping); normalized chunking uses a harder mask
//! (`log2(avg) + 2` bits) before `avg_len` and an easier one (`log2(avg) - 2`
//! bits) after it, which narrows the size distribution; and the loop consumes
//! two bytes per step with a pre-shifted table (`GEAR_LS`), so the dependency
//! chain on `fp` is one shift and one add per two bytes and there is one
//! branch per two bytes.
//!
//! An all-zero run never produces a cut (a property of `GEAR[0]`, tested
//! below), so a chunk that starts with `max_len` zero bytes is exactly
//! `max_len` zero bytes. The chunker recognises that case by a zero test
//! instead of hashing: thin-provisioned space chunks at memory bandwidth.

use crate::gear::{GEAR, GEAR_LS};
use crate::lanes::{self, Rules};
use crate::{is_zero, Error};

/// Chunk size bounds, fixed for a repository at creation (changing them
/// would stop new backups from deduplicating against older ones).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ChunkerParams {
    pub min_len: u32,
    pub avg_len: u32,
    pub max_len: u32,
}

/// Smallest supported `avg_len`: keeps the easy mask at 8 bits or more,
/// where the zero-run property of the gear table is checked.
pub const MIN_AVG_LEN: u32 = 1 << 10;
/// Largest supported `max_len`: 16 MiB keeps chunk buffers and pack records
/// small enough to bound per-stream memory.
pub const MAX_MAX_LEN: u32 = 16 << 20;

impl ChunkerParams {
    /// The default: average 256 KiB, min 64 KiB, max 1 MiB. Chosen by the
    /// chunk-size sweep in `tools` on SAN-like images: next days store 2.4%
    /// of their size against 6.5% at 1 MiB, for about 4 index entries
    /// (230 bytes) per MiB of unique data (docs/OPERATIONS.md, "Chunk
    /// size").
    pub const DEFAULT: ChunkerParams = ChunkerParams {
        min_len: 64 << 10,
        avg_len: 256 << 10,
        max_len: 1 << 20,
    };

    /// Checked constructor: `avg_len` a power of two within
    /// [`MIN_AVG_LEN`]..; `64 <= min_len < avg_len < max_len <= MAX_MAX_LEN`.
    pub fn new(min_len: u32, avg_len: u32, max_len: u32) -> Result<Self, Error> {
        let fail = |reason| {
            Err(Error::InvalidParams {
                min_len,
                avg_len,
                max_len,
                reason,
            })
        };
        if !avg_len.is_power_of_two() {
            return fail("avg_len must be a power of two");
        }
        if avg_len < MIN_AVG_LEN {
            return fail("avg_len must be at least 1 KiB");
        }
        if min_len < 64 || min_len >= avg_len {
            return fail("min_len must be at least 64 and below avg_len");
        }
        if max_len <= avg_len || max_len > MAX_MAX_LEN {
            return fail("max_len must be above avg_len and at most 16 MiB");
        }
        Ok(ChunkerParams {
            min_len,
            avg_len,
            max_len,
        })
    }

    /// The usual shape: `min = avg / 4`, `max = avg * 4`.
    pub fn with_avg(avg_len: u32) -> Result<Self, Error> {
        Self::new(avg_len / 4, avg_len, avg_len.saturating_mul(4))
    }
}

impl Default for ChunkerParams {
    fn default() -> Self {
        Self::DEFAULT
    }
}

/// A chunk boundary: the chunk ends at `end` (exclusive, relative to the
/// slice that was chunked). `zero` is true when every byte of the chunk is
/// zero; such chunks get [`crate::ChunkId::ZERO`] and are never stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cut {
    pub end: usize,
    pub zero: bool,
}

/// How a [`Chunker`] finds cut points. Both scans yield the same
/// boundaries (the tests compare them on every input they try); they differ
/// only in speed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum Scan {
    /// One fingerprint, two bytes per step: the specification, and the
    /// default because it was the fastest where measured
    /// (docs/BENCHMARKS.md, "Chunker scan").
    #[default]
    Scalar,
    /// Four independent lanes over consecutive strips (`lanes.rs`): no
    /// long dependency chain, for CPUs where that pays.
    Lanes,
}

impl Scan {
    pub const ALL: [Scan; 2] = [Scan::Scalar, Scan::Lanes];
}

/// A chunker for one set of parameters. Cheap to copy; holds no state
/// between chunks (every chunk starts from a zero fingerprint), which is
/// what lets [`crate::seams`] chunk pieces of a stream independently.
#[derive(Clone, Copy, Debug)]
pub struct Chunker {
    params: ChunkerParams,
    min: usize,
    avg: usize,
    max: usize,
    mask_s: u64,
    mask_s_ls: u64,
    mask_l: u64,
    mask_l_ls: u64,
    scan: Scan,
}

/// A mask of `bits` one-bits at positions `63 - bits ..= 62`: high bits of a
/// gear fingerprint depend on the most recent ~64 bytes (a wide window), and
/// bit 63 stays clear so `mask << 1` loses nothing.
const fn mask(bits: u32) -> u64 {
    ((1u64 << bits) - 1) << (63 - bits)
}

impl Chunker {
    /// A chunker with the default [`Scan`].
    pub fn new(params: ChunkerParams) -> Chunker {
        Chunker::with_scan(params, Scan::default())
    }

    /// A chunker that finds cut points with `scan`; the boundaries are the
    /// same with any scan.
    pub fn with_scan(params: ChunkerParams, scan: Scan) -> Chunker {
        let bits = params.avg_len.trailing_zeros();
        let mask_s = mask(bits + 2);
        let mask_l = mask(bits - 2);
        Chunker {
            params,
            min: params.min_len as usize,
            avg: params.avg_len as usize,
            max: params.max_len as usize,
            mask_s,
            mask_s_ls: mask_s << 1,
            mask_l,
            mask_l_ls: mask_l << 1,
            scan,
        }
    }

    pub fn params(&self) -> ChunkerParams {
        self.params
    }

    pub fn scan(&self) -> Scan {
        self.scan
    }

    /// The chunk that starts at `data[0]`.
    ///
    /// `eof` says that `data` holds everything left of the stream. Returns
    /// `None` when the cut may depend on bytes not yet in `data` (only when
    /// `!eof` and `data.len() < max_len`); the caller reads more and calls
    /// again. A `Some` answer never changes when more data is supplied.
    /// Returns `None` for empty data.
    pub fn next_cut(&self, data: &[u8], eof: bool) -> Option<Cut> {
        if data.is_empty() {
            return None;
        }
        let limit = data.len().min(self.max);
        let complete = eof || data.len() >= self.max;
        if limit == self.max && is_zero(&data[..limit]) {
            return Some(Cut {
                end: limit,
                zero: true,
            });
        }
        let end = match self.gear_cut(&data[..limit]) {
            Some(end) => end,
            None if complete => limit,
            None => return None,
        };
        Some(Cut {
            end,
            zero: is_zero(&data[..end]),
        })
    }

    /// All complete chunks at the front of `data`, as cuts relative to
    /// `data`. What follows the last cut is an incomplete chunk that needs
    /// more data (empty when `eof`).
    pub fn cuts(&self, data: &[u8], eof: bool) -> Vec<Cut> {
        self.cuts_until(data, 0, usize::MAX, eof)
    }

    /// Cuts of the chain that starts at `start`, stopping after the first
    /// cut that ends at or beyond `stop`, or when the data runs out.
    pub(crate) fn cuts_until(&self, data: &[u8], start: usize, stop: usize, eof: bool) -> Vec<Cut> {
        let mut out = Vec::new();
        let mut pos = start;
        while pos < stop {
            match self.next_cut(&data[pos..], eof) {
                Some(cut) => {
                    pos += cut.end;
                    out.push(Cut {
                        end: pos,
                        zero: cut.zero,
                    });
                }
                None => break,
            }
        }
        out
    }

    /// Position of the first cut in `data` (already limited to `max_len`),
    /// or `None` when there is none before its end.
    fn gear_cut(&self, data: &[u8]) -> Option<usize> {
        let rules = Rules {
            min: self.min,
            avg: self.avg,
            mask_s: self.mask_s,
            mask_l: self.mask_l,
        };
        match self.scan {
            Scan::Scalar => self.scalar_cut(data),
            Scan::Lanes => lanes::first_cut(&rules, data),
        }
    }

    /// `gear_cut` with one fingerprint, two bytes per step.
    fn scalar_cut(&self, data: &[u8]) -> Option<usize> {
        let n = data.len();
        if n <= self.min {
            return None;
        }
        let center = self.avg.min(n);
        let fp = match scan(data, self.min, center, 0, self.mask_s, self.mask_s_ls) {
            Ok(end) => return Some(end),
            Err(fp) => fp,
        };
        if center == n {
            return None;
        }
        scan(data, center, n, fp, self.mask_l, self.mask_l_ls).ok()
    }
}

/// Rolls the fingerprint over `data[start..end]`; `Ok(cut_end)` at the first
/// match of `mask`, or `Err(fp)` to continue with another mask.
#[inline(always)]
fn scan(
    data: &[u8],
    start: usize,
    end: usize,
    mut fp: u64,
    mask: u64,
    mask_ls: u64,
) -> Result<usize, u64> {
    let mut pos = start;
    let mut pairs = data[start..end].chunks_exact(2);
    for pair in &mut pairs {
        // fp' = fp_i << 1 (tested against mask << 1) and fp = fp_{i+1}.
        let shifted = fp << 2;
        let first = GEAR_LS[usize::from(pair[0])];
        let half = shifted.wrapping_add(first);
        fp = shifted.wrapping_add(first.wrapping_add(GEAR[usize::from(pair[1])]));
        if (half & mask_ls == 0) | (fp & mask == 0) {
            return Ok(if half & mask_ls == 0 {
                pos + 1
            } else {
                pos + 2
            });
        }
        pos += 2;
    }
    if let [last] = pairs.remainder() {
        fp = (fp << 1).wrapping_add(GEAR[usize::from(*last)]);
        if fp & mask == 0 {
            return Ok(pos + 1);
        }
    }
    Err(fp)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The textbook byte-at-a-time loop, the specification `scan` must match.
    pub(crate) fn reference_cuts(p: ChunkerParams, data: &[u8]) -> Vec<usize> {
        let bits = p.avg_len.trailing_zeros();
        let (mask_s, mask_l) = (mask(bits + 2), mask(bits - 2));
        let (min, avg, max) = (p.min_len as usize, p.avg_len as usize, p.max_len as usize);
        let mut out = Vec::new();
        let mut start = 0;
        while start < data.len() {
            let rest = &data[start..];
            let n = rest.len().min(max);
            let mut len = n;
            if n > min {
                let mut fp = 0u64;
                for (i, &b) in rest[..n].iter().enumerate().skip(min) {
                    fp = (fp << 1).wrapping_add(GEAR[usize::from(b)]);
                    let m = if i < avg { mask_s } else { mask_l };
                    if fp & m == 0 {
                        len = i + 1;
                        break;
                    }
                }
            }
            start += len;
            out.push(start);
        }
        out
    }

    pub(crate) use bunker_testdata::noise;

    fn small() -> ChunkerParams {
        ChunkerParams::new(1024, 4096, 16384).unwrap()
    }

    pub(crate) fn ends(cuts: &[Cut]) -> Vec<usize> {
        cuts.iter().map(|c| c.end).collect()
    }

    #[test]
    fn zero_runs_never_cut() {
        // For every mask width the parameters allow, the fingerprint of a
        // zero run started from 0 never matches (it reaches -GEAR[0] after
        // 64 bytes and stays there).
        for bits in 8..=26u32 {
            let m = mask(bits);
            let mut fp = 0u64;
            for k in 0..200 {
                fp = (fp << 1).wrapping_add(GEAR[0]);
                assert_ne!(fp & m, 0, "bits {bits} zero byte {k}");
            }
        }
    }

    #[test]
    fn matches_the_reference_loop() {
        let p = small();
        let c = Chunker::new(p);
        let mut data = noise(7, 1 << 20);
        data[300_000..420_000].fill(0);
        data[700_000..700_100].fill(b'a');
        assert_eq!(ends(&c.cuts(&data, true)), reference_cuts(p, &data));
    }

    #[test]
    fn default_params_are_valid_and_bad_ones_are_named() {
        let d = ChunkerParams::DEFAULT;
        assert_eq!(ChunkerParams::new(d.min_len, d.avg_len, d.max_len), Ok(d));
        assert_eq!(ChunkerParams::with_avg(256 << 10), Ok(d));
        for (min, avg, max) in [
            (1, 4096, 8192),
            (2048, 3000, 9000),
            (100, 512, 4096),
            (1024, 4096, 4096),
            (4096, 4096, 8192),
            (1 << 20, 4 << 20, 32 << 20),
        ] {
            assert!(matches!(
                ChunkerParams::new(min, avg, max),
                Err(Error::InvalidParams { .. })
            ));
        }
    }

    #[test]
    fn zero_chunks_are_flagged_and_full_length() {
        let p = small();
        let c = Chunker::new(p);
        let mut data = noise(1, 200_000);
        data[50_000..150_000].fill(0);
        let cuts = c.cuts(&data, true);
        let mut start = 0;
        let mut zero_chunks = 0;
        for cut in &cuts {
            let chunk = &data[start..cut.end];
            assert_eq!(cut.zero, chunk.iter().all(|&b| b == 0));
            if cut.zero {
                zero_chunks += 1;
            }
            start = cut.end;
        }
        // 100 000 zero bytes hold at least four whole 16 KiB zero chunks.
        assert!(zero_chunks >= 4, "{zero_chunks}");
        let all_zero = vec![0u8; 100_000];
        let z = c.cuts(&all_zero, true);
        assert!(z.iter().all(|c| c.zero));
        assert_eq!(z[0].end, p.max_len as usize);
    }

    #[test]
    fn golden_boundaries() {
        // Pinned: these ends are part of the on-disk contract. If this test
        // fails, the chunker changed and old repositories stop deduplicating.
        // Every scan must give them.
        let mut data = noise(0x00b0_0c4e, 2 << 20);
        data[1_000_000..1_400_000].fill(0);
        let big = noise(0x5eed, 4 << 20);
        for scan in Scan::ALL {
            let p = ChunkerParams::new(16 << 10, 64 << 10, 256 << 10).unwrap();
            let c = Chunker::with_scan(p, scan);
            assert_eq!(c.scan(), scan);
            assert_eq!(ends(&c.cuts(&data, true)), GOLDEN_64K, "{scan:?}");
            let d = Chunker::with_scan(ChunkerParams::DEFAULT, scan);
            assert_eq!(ends(&d.cuts(&big, true)), GOLDEN_DEFAULT, "{scan:?}");
        }
    }

    const GOLDEN_64K: &[usize] = &[
        91861, 167277, 216908, 310959, 383935, 459031, 531920, 607692, 715550, 790206, 869273,
        934999, 1197143, 1414567, 1484194, 1558343, 1627022, 1710576, 1777354, 1818464, 1854970,
        1933432, 1974246, 2053596, 2097152,
    ];
    const GOLDEN_DEFAULT: &[usize] = &[
        417611, 699391, 1029025, 1339364, 1788519, 2113902, 2498458, 2842959, 3236465, 3543677,
        3644513, 3929401, 4194304,
    ];

    /// The cut ends `c` finds in `data` fed in reads of the sizes in
    /// `reads` (cycled), as a stream reader would.
    pub(crate) fn streamed_ends(c: &Chunker, data: &[u8], reads: &[usize]) -> Vec<usize> {
        let (mut got, mut buf, mut base, mut fed) = (Vec::new(), Vec::new(), 0, 0);
        let mut reads = reads.iter().copied().cycle();
        loop {
            let eof = fed == data.len();
            let cuts = c.cuts(&buf, eof);
            let used = cuts.last().map_or(0, |c| c.end);
            got.extend(cuts.iter().map(|c| base + c.end));
            buf.drain(..used);
            base += used;
            if eof {
                return got;
            }
            let n = reads.next().unwrap_or(1).min(data.len() - fed);
            buf.extend_from_slice(&data[fed..fed + n]);
            fed += n;
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        #[test]
        fn chunks_concatenate_and_respect_bounds(seed in any::<u64>(), len in 0usize..300_000, zero_at in 0usize..300_000, zero_len in 0usize..80_000) {
            let p = small();
            let c = Chunker::new(p);
            let mut data = noise(seed, len);
            let z0 = zero_at.min(len);
            let z1 = (z0 + zero_len).min(len);
            data[z0..z1].fill(0);
            let cuts = c.cuts(&data, true);
            let mut start = 0;
            for (i, cut) in cuts.iter().enumerate() {
                let n = cut.end - start;
                prop_assert!(n <= p.max_len as usize);
                if i + 1 < cuts.len() {
                    prop_assert!(n >= p.min_len as usize);
                }
                start = cut.end;
            }
            prop_assert_eq!(start, len);
            prop_assert_eq!(ends(&cuts), reference_cuts(p, &data));
        }

        #[test]
        fn boundaries_do_not_depend_on_read_sizes(seed in any::<u64>(), reads in proptest::collection::vec(1usize..40_000, 1..40)) {
            let c = Chunker::new(small());
            let data = noise(seed, 250_000);
            let whole = ends(&c.cuts(&data, true));
            let got = streamed_ends(&c, &data, &reads);
            prop_assert_eq!(got, whole);
        }
    }

    #[test]
    fn an_edit_changes_at_most_three_chunks() {
        // 64 MiB of random data, default parameters; insert and delete a few
        // bytes at several places and count chunks that are not shared.
        let c = Chunker::new(ChunkerParams::DEFAULT);
        let data = noise(42, 64 << 20);
        let before = chunk_set(&c, &data);
        for (i, at) in [1usize << 20, 17 << 20, 40_000_000, 63 << 20]
            .into_iter()
            .enumerate()
        {
            let mut edited = data.clone();
            if i % 2 == 0 {
                edited.splice(at..at, [1u8, 2, 3, 4, 5, 6, 7].into_iter().take(1 + i));
            } else {
                edited.drain(at..at + 1 + i);
            }
            let after = chunk_set(&c, &edited);
            let new = after.iter().filter(|h| !before.contains(*h)).count();
            assert!(new <= 3, "edit at {at}: {new} chunks differ");
        }
    }

    fn chunk_set(c: &Chunker, data: &[u8]) -> std::collections::HashSet<[u8; 32]> {
        let mut start = 0;
        let mut set = std::collections::HashSet::new();
        for cut in c.cuts(data, true) {
            set.insert(*blake3::hash(&data[start..cut.end]).as_bytes());
            start = cut.end;
        }
        set
    }
}
