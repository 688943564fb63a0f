//! Chunk ids: the BLAKE3 hash of a chunk's bytes.

use std::fmt;

/// The name of a chunk: BLAKE3 of its raw (uncompressed) bytes.
///
/// [`ChunkId::ZERO`] (32 zero bytes) is reserved for all-zero chunks of any
/// length; they are never hashed or stored. No real BLAKE3 output is expected
/// to collide with it.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ChunkId(pub [u8; 32]);

impl ChunkId {
    /// The reserved id of an all-zero chunk.
    pub const ZERO: ChunkId = ChunkId([0u8; 32]);

    /// The id of `data`. Callers decide zero-ness first (see [`crate::Cut`]).
    pub fn of(data: &[u8]) -> ChunkId {
        ChunkId(*blake3::hash(data).as_bytes())
    }

    pub fn is_zero(&self) -> bool {
        *self == Self::ZERO
    }

    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// The first 8 bytes as a big-endian integer: uniformly distributed, so
    /// it serves as a sort key prefix and for interpolation search.
    pub fn prefix_u64(&self) -> u64 {
        let b = &self.0;
        u64::from_be_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]])
    }

    pub fn to_hex(&self) -> String {
        let mut s = String::with_capacity(64);
        for b in self.0 {
            s.push(char::from(HEX[usize::from(b >> 4)]));
            s.push(char::from(HEX[usize::from(b & 0xf)]));
        }
        s
    }

    pub fn from_hex(text: &str) -> Result<ChunkId, crate::Error> {
        let bad = || crate::Error::InvalidChunkId {
            text: text.chars().take(80).collect(),
        };
        let bytes = text.as_bytes();
        if bytes.len() != 64 {
            return Err(bad());
        }
        let mut out = [0u8; 32];
        for (i, pair) in bytes.chunks_exact(2).enumerate() {
            let hi = hex_value(pair[0]).ok_or_else(bad)?;
            let lo = hex_value(pair[1]).ok_or_else(bad)?;
            out[i] = (hi << 4) | lo;
        }
        Ok(ChunkId(out))
    }
}

const HEX: &[u8; 16] = b"0123456789abcdef";

fn hex_value(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

impl fmt::Display for ChunkId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for ChunkId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ChunkId({})", &self.to_hex()[..16])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trip_and_rejects_garbage() {
        let id = ChunkId::of(b"hello");
        assert_eq!(ChunkId::from_hex(&id.to_hex()).unwrap(), id);
        assert_eq!(
            id.to_hex(),
            "ea8f163db38682925e4491c5e58d4bb3506ef8c14eb78a86e908c5624a67200f"
        );
        assert!(matches!(
            ChunkId::from_hex("zz"),
            Err(crate::Error::InvalidChunkId { .. })
        ));
        let mut bad = id.to_hex();
        bad.replace_range(10..11, "g");
        assert!(ChunkId::from_hex(&bad).is_err());
    }
}
