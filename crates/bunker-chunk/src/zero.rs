//! Fast all-zero test, used to recognise thin-provisioned space cheaply.

/// True when every byte of `data` is zero.
///
/// Works in 256-byte blocks that the compiler turns into wide ORs, and exits at
/// the first block holding a non-zero byte, so non-zero data costs almost
/// nothing and zero runs are checked at memory bandwidth.
pub fn is_zero(data: &[u8]) -> bool {
    let mut blocks = data.chunks_exact(256);
    for block in &mut blocks {
        if block.iter().fold(0u8, |acc, &b| acc | b) != 0 {
            return false;
        }
    }
    blocks.remainder().iter().all(|&b| b == 0)
}

#[cfg(test)]
mod tests {
    use super::is_zero;

    #[test]
    fn finds_a_single_non_zero_byte_anywhere() {
        for len in [0usize, 1, 255, 256, 257, 1000, 4096] {
            let mut v = vec![0u8; len];
            assert!(is_zero(&v));
            for pos in [0, len / 2, len.saturating_sub(1)] {
                if len == 0 {
                    continue;
                }
                v[pos] = 0x10;
                assert!(!is_zero(&v), "len {len} pos {pos}");
                v[pos] = 0;
            }
        }
    }
}
