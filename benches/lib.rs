//! Inputs shared by the benchmarks: random, text-like and zero buffers.

/// Deterministic pseudo-random bytes, incompressible.
pub fn random(len: usize) -> Vec<u8> {
    bunker_testdata::noise(0x5EED, len)
}

/// Log-line text with varying numbers: compressible, but not trivially.
pub fn text(len: usize) -> Vec<u8> {
    let levels = ["INFO", "WARN", "DEBUG", "ERROR"];
    let mut out = Vec::with_capacity(len + 200);
    let mut i: u64 = 0;
    while out.len() < len {
        let x = i.wrapping_mul(0x9E37_79B9_7F4A_7C15);
        out.extend_from_slice(
            format!(
                "2026-11-22T{:02}:{:02}:{:02}.{:03}Z {} req={:x} user={} path=/api/v1/items/{} status={} bytes={}\n",
                (x >> 8) % 24,
                (x >> 16) % 60,
                (x >> 24) % 60,
                (x >> 32) % 1000,
                levels[(x % 4) as usize],
                x >> 20,
                (x >> 40) % 5000,
                (x >> 12) % 100_000,
                [200, 200, 200, 404, 500][((x >> 3) % 5) as usize],
                (x >> 44) % 65_536
            )
            .as_bytes(),
        );
        i += 1;
    }
    out.truncate(len);
    out
}
