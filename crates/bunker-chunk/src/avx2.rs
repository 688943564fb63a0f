//! The AVX2 kernel for [`crate::lanes`]: the four lanes in one 256-bit
//! register, the four gear values of a step fetched with one gather.
//!
//! Same contract as `lanes::run`, so the same boundaries. It tests all four
//! lanes once per eight steps; after a block of eight with a hit, the
//! portable kernel replays that block from the saved fingerprints to find
//! the exact step. This is the only `unsafe` code of the crate: every call
//! of an intrinsic sits behind `is_x86_feature_detected!("avx2")`.
#![allow(unsafe_code)]

use crate::lanes::{self, LANES};

/// Whether this CPU can run the kernel.
pub(crate) fn detected() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx2")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// The kernel (see `lanes::Kernel`); on a CPU without AVX2 it runs the
/// portable one.
pub(crate) fn run(strips: [&[u8]; LANES], fps: &mut [u64; LANES], t: usize, mask: u64) -> usize {
    #[cfg(target_arch = "x86_64")]
    if detected() {
        // SAFETY: `run_avx2` needs AVX2, and `is_x86_feature_detected!`
        // just said this CPU has it.
        return unsafe { x86::run_avx2(strips, fps, t, mask) };
    }
    lanes::run(strips, fps, t, mask)
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::LANES;
    use crate::gear::GEAR;
    use crate::lanes;
    use std::arch::x86_64::*;

    /// Eight bytes of `strip` from `t`, as one little-endian word.
    #[inline(always)]
    fn word(strip: &[u8], t: usize) -> i64 {
        let mut bytes = [0u8; 8];
        bytes.copy_from_slice(&strip[t..t + 8]);
        i64::from_le_bytes(bytes)
    }

    #[target_feature(enable = "avx2")]
    pub(super) fn run_avx2(
        strips: [&[u8]; LANES],
        fps: &mut [u64; LANES],
        t: usize,
        mask: u64,
    ) -> usize {
        let len = strips[0].len();
        let [s0, s1, s2, s3] = strips;
        let (s0, s1, s2, s3) = (&s0[..len], &s1[..len], &s2[..len], &s3[..len]);
        let masks = _mm256_set1_epi64x(mask as i64);
        let low_byte = _mm256_set1_epi64x(0xff);
        let zero = _mm256_setzero_si256();
        let mut fp = _mm256_set_epi64x(fps[3] as i64, fps[2] as i64, fps[1] as i64, fps[0] as i64);
        let mut t = t;
        while t + 8 <= len {
            let mut bytes = _mm256_set_epi64x(word(s3, t), word(s2, t), word(s1, t), word(s0, t));
            let before = fp;
            let mut hit = zero;
            for _ in 0..8 {
                let index = _mm256_and_si256(bytes, low_byte);
                // SAFETY: AVX2 is enabled on this function (its callers
                // check it), and every index is a byte value, below 256,
                // so each 8-byte read lies inside `GEAR`.
                let gear =
                    unsafe { _mm256_i64gather_epi64::<8>(GEAR.as_ptr().cast::<i64>(), index) };
                fp = _mm256_add_epi64(_mm256_add_epi64(fp, fp), gear);
                hit = _mm256_or_si256(hit, _mm256_cmpeq_epi64(_mm256_and_si256(fp, masks), zero));
                bytes = _mm256_srli_epi64::<8>(bytes);
            }
            if _mm256_testz_si256(hit, hit) == 0 {
                // Some lane stops within these eight steps: find which
                // step with the portable kernel.
                *fps = lanes_of(before);
                return lanes::run(strips, fps, t, mask);
            }
            t += 8;
        }
        *fps = lanes_of(fp);
        lanes::run(strips, fps, t, mask)
    }

    #[target_feature(enable = "avx2")]
    fn lanes_of(v: __m256i) -> [u64; LANES] {
        [
            _mm256_extract_epi64::<0>(v) as u64,
            _mm256_extract_epi64::<1>(v) as u64,
            _mm256_extract_epi64::<2>(v) as u64,
            _mm256_extract_epi64::<3>(v) as u64,
        ]
    }
}
