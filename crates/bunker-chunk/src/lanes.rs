//! The cut scan on four independent hash lanes: the scalar loop's cut
//! points, found without waiting on one long dependency chain.
//!
//! The fingerprint after a shift-by-one update, `fp = (fp << 1) + GEAR[b]`,
//! holds each byte shifted left by its distance from the newest byte, so a
//! byte 64 or more positions back has left it. The chunker starts `fp` at
//! zero at `min_len`; hashing the 64 bytes before any later position `s`
//! from a zero `fp` (or all bytes from `min_len`, when fewer) therefore
//! gives exactly the chunker's `fp` at `s`. So the range `[min_len, end)` is
//! cut into blocks, each block into four strips, and each strip is hashed in
//! its own lane after that warm-up: four independent chains the CPU runs
//! side by side, where the scalar loop waits one shift and one add per step.
//!
//! A lane stops only where `fp & mask == 0` for the easier of the two masks
//! in force (the hard mask's bits include the easy one's, so no cut point is
//! missed); there the full rule is applied, the hard mask before `avg_len`
//! and the easy one after. The first qualifying position in lane order is
//! the scalar loop's first cut, because lanes cover consecutive positions in
//! order. Blocks are small (`strip_len`), so little is hashed past the cut.
//!
//! Measured on the project's 2-core AMD EPYC (Zen 3) machine, this is not
//! faster than the scalar loop, which stays the default; an AVX2 version
//! with gathers was slower still (docs/BENCHMARKS.md, "Chunker scan"). It
//! is kept, behind [`crate::Scan::Lanes`], as the seam and the identity
//! tests for a lane kernel that pays on other CPUs.

use crate::gear::GEAR;

/// Number of lanes: four chains keep the integer units busy and leave
/// enough registers for the strip pointers.
const LANES: usize = 4;

/// Bytes of history that fully determine a fingerprint.
const WINDOW: usize = 64;

/// A strip shorter than this is not worth its warm-up; the rest of the
/// range is scanned in one lane.
const MIN_STRIP: usize = 256;

/// The cut rules of one chunker, as `lanes` applies them.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Rules {
    pub min: usize,
    pub avg: usize,
    pub mask_s: u64,
    pub mask_l: u64,
}

impl Rules {
    /// Whether the fingerprint `fp` after the byte at `pos` ends a chunk.
    fn cuts(&self, pos: usize, fp: u64) -> bool {
        let mask = if pos < self.avg {
            self.mask_s
        } else {
            self.mask_l
        };
        fp & mask == 0
    }

    /// Strip length: about a sixty-fourth of the average chunk, so the
    /// block that holds the cut wastes little beyond it.
    fn strip_len(&self) -> usize {
        (self.avg / 64).clamp(MIN_STRIP, 4096)
    }
}

/// Position of the first cut in `data` (already limited to `max_len`), or
/// `None` when there is none before its end: the same answer as the scalar
/// loop.
pub(crate) fn first_cut(rules: &Rules, data: &[u8]) -> Option<usize> {
    let n = data.len();
    let block_len = rules.strip_len() * LANES;
    let mut pos = rules.min;
    while pos < n {
        let block = (n - pos).min(block_len);
        let strip = block / LANES;
        if strip < MIN_STRIP {
            let fp = warm(data, rules.min, pos);
            return one_lane(rules, data, pos, n, fp);
        }
        // Before `avg_len` only the hard mask cuts: stop on it alone.
        let stop_mask = if pos + block <= rules.avg {
            rules.mask_s
        } else {
            rules.mask_l
        };
        let starts: [usize; LANES] = std::array::from_fn(|j| pos + j * strip);
        let strips = starts.map(|s| &data[s..s + strip]);
        let mut fps = starts.map(|s| warm(data, rules.min, s));
        let mut first: [Option<usize>; LANES] = [None; LANES];
        let mut t = 0;
        while t < strip {
            t = run(strips, &mut fps, t, stop_mask);
            if t == strip {
                break;
            }
            for j in 0..LANES {
                let at = starts[j] + t;
                if first[j].is_none() && rules.cuts(at, fps[j]) {
                    first[j] = Some(at + 1);
                }
            }
            // Lane 0 holds the earliest positions: its cut is the answer.
            if let Some(end) = first[0] {
                return Some(end);
            }
            t += 1;
        }
        // The last strip continues over what `block / LANES` left over.
        let tail = starts[LANES - 1] + strip;
        if first[LANES - 1].is_none() && tail < pos + block {
            first[LANES - 1] = one_lane(rules, data, tail, pos + block, fps[LANES - 1]);
        }
        if let Some(end) = first.into_iter().flatten().next() {
            return Some(end);
        }
        pos += block;
    }
    None
}

/// The chunker's fingerprint just before `pos` for a chunk whose hashing
/// starts at `min`: the bytes from `max(min, pos - 64)` hashed from zero.
fn warm(data: &[u8], min: usize, pos: usize) -> u64 {
    let from = min.max(pos.saturating_sub(WINDOW));
    data[from..pos]
        .iter()
        .fold(0u64, |fp, &b| (fp << 1).wrapping_add(GEAR[usize::from(b)]))
}

/// One lane over `data[from..to]` starting from `fp`: the end of the first
/// cut.
fn one_lane(rules: &Rules, data: &[u8], from: usize, to: usize, mut fp: u64) -> Option<usize> {
    for (i, &b) in data[from..to].iter().enumerate() {
        fp = (fp << 1).wrapping_add(GEAR[usize::from(b)]);
        if rules.cuts(from + i, fp) {
            return Some(from + i + 1);
        }
    }
    None
}

/// Advances the four lanes from step `t`, one byte of each strip per step,
/// until some lane's `fp & mask == 0` (returns that step, with `fps` holding
/// the fingerprints after it) or the strips end (returns their length).
/// All strips have the same length. One branch per lane per step, almost
/// never taken.
fn run(strips: [&[u8]; LANES], fps: &mut [u64; LANES], t: usize, mask: u64) -> usize {
    let len = strips[0].len();
    let [s0, s1, s2, s3] = strips;
    let (s0, s1, s2, s3) = (&s0[..len], &s1[..len], &s2[..len], &s3[..len]);
    let [mut a, mut b, mut c, mut d] = *fps;
    let mut t = t;
    while t < len {
        a = (a << 1).wrapping_add(GEAR[usize::from(s0[t])]);
        b = (b << 1).wrapping_add(GEAR[usize::from(s1[t])]);
        c = (c << 1).wrapping_add(GEAR[usize::from(s2[t])]);
        d = (d << 1).wrapping_add(GEAR[usize::from(s3[t])]);
        if a & mask == 0 || b & mask == 0 || c & mask == 0 || d & mask == 0 {
            break;
        }
        t += 1;
    }
    *fps = [a, b, c, d];
    t
}

#[cfg(test)]
mod tests {
    use crate::chunker::tests::{ends, noise, reference_cuts, streamed_ends};
    use crate::{Chunker, ChunkerParams, Scan};
    use proptest::prelude::*;

    /// Any parameters the chunker accepts: `avg_len` from 1 KiB to 1 MiB,
    /// `min_len` and `max_len` anywhere in their allowed ranges.
    fn params() -> impl Strategy<Value = ChunkerParams> {
        (10u32..=20, any::<u32>(), any::<u32>()).prop_map(|(bits, a, b)| {
            let avg = 1u32 << bits;
            let min = 64 + a % (avg - 64);
            let max = avg + 1 + b % (avg * 3);
            ChunkerParams::new(min, avg, max).unwrap()
        })
    }

    /// Noise with runs of zeros and of short repeated patterns laid over it.
    fn data(seed: u64, len: usize, runs: &[(usize, usize, usize)]) -> Vec<u8> {
        let mut data = noise(seed, len);
        let pattern = noise(seed ^ 0x5a5a, 300);
        for &(at, run, period) in runs {
            let at = at % len.max(1);
            let end = (at + run).min(len);
            if period == 0 {
                data[at..end].fill(0);
            } else {
                for (i, b) in data[at..end].iter_mut().enumerate() {
                    *b = pattern[i % period];
                }
            }
        }
        data
    }

    fn runs() -> impl Strategy<Value = Vec<(usize, usize, usize)>> {
        proptest::collection::vec((any::<usize>(), 0usize..400_000, 0usize..300), 0..4)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]

        #[test]
        fn every_scan_cuts_where_the_scalar_scan_does(p in params(), seed in any::<u64>(), len in 0usize..1_200_000, runs in runs()) {
            let data = data(seed, len, &runs);
            let want = Chunker::with_scan(p, Scan::Scalar).cuts(&data, true);
            prop_assert_eq!(ends(&want), reference_cuts(p, &data));
            for scan in Scan::ALL {
                let c = Chunker::with_scan(p, scan);
                prop_assert_eq!(&c.cuts(&data, true), &want, "{:?}", scan);
            }
        }

        #[test]
        fn every_scan_streams_like_the_scalar_scan(p in params(), seed in any::<u64>(), len in 0usize..600_000, runs in runs(), reads in proptest::collection::vec(1usize..200_000, 1..20)) {
            let data = data(seed, len, &runs);
            let want = ends(&Chunker::with_scan(p, Scan::Scalar).cuts(&data, true));
            for scan in Scan::ALL {
                let got = streamed_ends(&Chunker::with_scan(p, scan), &data, &reads);
                prop_assert_eq!(&got, &want, "{:?}", scan);
            }
        }
    }

    #[test]
    fn a_warmed_lane_holds_the_chunkers_fingerprint() {
        // All 64 bits, at every distance from `min`: the window is exactly
        // as long as the fingerprint's memory.
        let data = noise(3, 4096);
        let gear = |fp: u64, &b: &u8| (fp << 1).wrapping_add(crate::gear::GEAR[usize::from(b)]);
        for min in [64, 100, 1000] {
            for pos in min..min + 300 {
                let want = data[min..pos].iter().fold(0u64, gear);
                assert_eq!(super::warm(&data, min, pos), want, "min {min} pos {pos}");
            }
        }
    }

    #[test]
    fn every_length_cuts_where_the_scalar_scan_does() {
        // Each length moves the block ends, the strip ends and the leftover
        // bytes after the last strip over the data.
        let p = ChunkerParams::new(64, 1024, 3000).unwrap();
        let scalar = Chunker::with_scan(p, Scan::Scalar);
        for seed in 0..4 {
            let data = noise(seed, 3000);
            for len in 0..=data.len() {
                for eof in [false, true] {
                    let want = scalar.next_cut(&data[..len], eof);
                    for scan in Scan::ALL {
                        let c = Chunker::with_scan(p, scan);
                        assert_eq!(c.next_cut(&data[..len], eof), want, "{scan:?} {len}");
                    }
                }
            }
        }
    }

    #[test]
    fn a_cut_in_the_last_bytes_of_the_data_is_found() {
        // Data that ends one to four bytes after a true cut: the cut lies
        // in whatever the strips leave at the end of the last block.
        let p = ChunkerParams::new(64, 64 << 10, 256 << 10).unwrap();
        let scalar = Chunker::with_scan(p, Scan::Scalar);
        let data = noise(11, 2 << 20);
        let mut start = 0;
        for cut in scalar.cuts(&data, true) {
            for len in cut.end - start..(cut.end - start + 4).min(data.len() - start) {
                let piece = &data[start..start + len];
                let want = scalar.next_cut(piece, false);
                for scan in Scan::ALL {
                    let c = Chunker::with_scan(p, scan);
                    assert_eq!(c.next_cut(piece, false), want, "{scan:?} {start} {len}");
                }
            }
            start = cut.end;
        }
    }

    #[test]
    fn a_pattern_that_stops_every_lane_often_still_cuts_like_the_scalar_scan() {
        // With a 1 KiB average the easy mask has 8 bits: a repeated
        // pattern whose window matches it stops the lanes every period.
        let p = ChunkerParams::new(64, 1024, 2000).unwrap();
        let scalar = Chunker::with_scan(p, Scan::Scalar);
        let mut stopped = 0;
        for period in 1..=64usize {
            let pattern = noise(period as u64, period);
            let data: Vec<u8> = (0..200_000).map(|i| pattern[i % period]).collect();
            let want = scalar.cuts(&data, true);
            if want.iter().any(|c| c.end % 2000 != 0) {
                stopped += 1;
            }
            for scan in Scan::ALL {
                let c = Chunker::with_scan(p, scan);
                assert_eq!(c.cuts(&data, true), want, "{scan:?} period {period}");
            }
        }
        assert!(stopped > 0, "no pattern cut before max_len");
    }
}
