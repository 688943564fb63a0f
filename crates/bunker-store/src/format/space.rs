//! The `space` file: what the last GC measured (referenced data in total
//! and per name, pack bytes), so `stats` adds only what came after it
//! instead of scanning the repository. Replaced atomically by each GC; a
//! missing or damaged file costs accuracy of the figures, never data.
//! Layout: docs/FORMAT.md, "Space accounting".

use super::{append_checksum, check_magic_version, checked_body, put_prefix, Le};
use crate::{Error, Result};

pub const MAGIC: &[u8; 8] = b"BNKRSPAC";
/// Version history: 1 — new file, written by GC (2026-11).
pub const VERSION: u32 = 1;
pub const HEADER_LEN: usize = 32;
const TOTALS_LEN: usize = 64;
const MAX_NAME_LEN: usize = 128;

/// Chunks and their bytes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Usage {
    pub chunks: u64,
    /// Uncompressed.
    pub raw_bytes: u64,
    /// In packs (compressed record data, record headers excluded).
    pub stored_bytes: u64,
}

impl Usage {
    pub fn plus(self, o: Usage) -> Usage {
        // Saturating: the figures come from files a damaged or hostile
        // manifest may have written; a wrapped sum would be silently wrong.
        Usage {
            chunks: self.chunks.saturating_add(o.chunks),
            raw_bytes: self.raw_bytes.saturating_add(o.raw_bytes),
            stored_bytes: self.stored_bytes.saturating_add(o.stored_bytes),
        }
    }

    pub fn add(&mut self, raw_bytes: u64, stored_bytes: u64) {
        self.chunks = self.chunks.saturating_add(1);
        self.raw_bytes = self.raw_bytes.saturating_add(raw_bytes);
        self.stored_bytes = self.stored_bytes.saturating_add(stored_bytes);
    }
}

/// Data only one name's snapshots reference: what deleting them all frees.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NameSpace {
    pub name: String,
    pub unique: Usage,
    /// Snapshots of the name these figures include.
    pub snapshots: Vec<u64>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Space {
    pub written_unix_ms: i64,
    /// Distinct chunks referenced by the snapshots included.
    pub referenced: Usage,
    /// Bytes and count of the pack files after the GC.
    pub pack_bytes: u64,
    pub packs: u64,
    /// The next pack id then: packs with this id or larger came after.
    pub next_pack: u64,
    pub names: Vec<NameSpace>,
}

pub fn encode(s: &Space) -> Vec<u8> {
    let mut b = vec![0u8; HEADER_LEN + TOTALS_LEN];
    put_prefix(&mut b, MAGIC, VERSION, HEADER_LEN);
    Le::put_i64(&mut b, 16, s.written_unix_ms);
    Le::put_u64(&mut b, 24, s.names.len() as u64);
    let t = HEADER_LEN;
    for (i, v) in [
        s.referenced.chunks,
        s.referenced.raw_bytes,
        s.referenced.stored_bytes,
        s.pack_bytes,
        s.packs,
        s.next_pack,
    ]
    .into_iter()
    .enumerate()
    {
        Le::put_u64(&mut b, t + 8 * i, v);
    }
    for n in &s.names {
        let name = &n.name.as_bytes()[..n.name.len().min(MAX_NAME_LEN)];
        b.extend_from_slice(&(name.len() as u16).to_le_bytes());
        b.extend_from_slice(&[0u8; 6]);
        b.extend_from_slice(name);
        for v in [
            n.unique.chunks,
            n.unique.raw_bytes,
            n.unique.stored_bytes,
            n.snapshots.len() as u64,
        ] {
            b.extend_from_slice(&v.to_le_bytes());
        }
        for id in &n.snapshots {
            b.extend_from_slice(&id.to_le_bytes());
        }
    }
    append_checksum(&mut b);
    b
}

pub fn decode(file: &str, b: &[u8]) -> Result<Space> {
    check_magic_version(file, "space accounting", b, MAGIC, VERSION)?;
    if b.len() < HEADER_LEN + TOTALS_LEN + 8 {
        return Err(Error::corrupt(file, "space file truncated"));
    }
    let body =
        checked_body(b).ok_or_else(|| Error::corrupt(file, "space file checksum mismatch"))?;
    let short = || Error::corrupt(file, "space file shorter than its counts");
    let t = HEADER_LEN;
    let mut s = Space {
        written_unix_ms: Le::i64(b, 16),
        referenced: Usage {
            chunks: Le::u64(b, t),
            raw_bytes: Le::u64(b, t + 8),
            stored_bytes: Le::u64(b, t + 16),
        },
        pack_bytes: Le::u64(b, t + 24),
        packs: Le::u64(b, t + 32),
        next_pack: Le::u64(b, t + 40),
        names: Vec::new(),
    };
    let count = Le::u64(b, 24);
    let mut at = HEADER_LEN + TOTALS_LEN;
    for _ in 0..count {
        if body.len() < at + 8 {
            return Err(short());
        }
        let len = usize::from(Le::u16(body, at));
        if len == 0 || len > MAX_NAME_LEN {
            return Err(Error::corrupt(file, "space file name length out of range"));
        }
        at += 8;
        if body.len() < at + len + 32 {
            return Err(short());
        }
        let name = String::from_utf8(body[at..at + len].to_vec())
            .map_err(|_| Error::corrupt(file, "space file name is not UTF-8"))?;
        at += len;
        let unique = Usage {
            chunks: Le::u64(body, at),
            raw_bytes: Le::u64(body, at + 8),
            stored_bytes: Le::u64(body, at + 16),
        };
        let ids = Le::u64(body, at + 24);
        at += 32;
        let end = ids
            .checked_mul(8)
            .and_then(|n| n.checked_add(at as u64))
            .filter(|&end| end <= body.len() as u64)
            .ok_or_else(short)? as usize;
        let snapshots = body[at..end]
            .chunks_exact(8)
            .map(|c| Le::u64(c, 0))
            .collect();
        at = end;
        s.names.push(NameSpace {
            name,
            unique,
            snapshots,
        });
    }
    if at != body.len() {
        return Err(Error::corrupt(file, "space file longer than its counts"));
    }
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn usage() -> impl Strategy<Value = Usage> {
        (any::<u64>(), any::<u64>(), any::<u64>()).prop_map(|(c, r, s)| Usage {
            chunks: c,
            raw_bytes: r,
            stored_bytes: s,
        })
    }

    fn space() -> impl Strategy<Value = Space> {
        (
            any::<i64>(),
            usage(),
            any::<[u64; 3]>(),
            proptest::collection::vec(
                (
                    "[a-z0-9._-]{1,20}",
                    usage(),
                    proptest::collection::vec(any::<u64>(), 0..5),
                ),
                0..6,
            ),
        )
            .prop_map(
                |(at, referenced, [pack_bytes, packs, next_pack], names)| Space {
                    written_unix_ms: at,
                    referenced,
                    pack_bytes,
                    packs,
                    next_pack,
                    names: names
                        .into_iter()
                        .map(|(name, unique, snapshots)| NameSpace {
                            name,
                            unique,
                            snapshots,
                        })
                        .collect(),
                },
            )
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(10_000))]
        #[test]
        fn round_trip(s in space()) {
            prop_assert_eq!(decode("s", &encode(&s)).unwrap(), s);
        }

        #[test]
        fn decoder_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
            let _ = decode("s", &bytes);
        }

        #[test]
        fn any_flipped_bit_is_caught(s in space(), bit in any::<prop::sample::Index>()) {
            let mut b = encode(&s);
            let i = bit.index(b.len() * 8);
            b[i / 8] ^= 1 << (i % 8);
            prop_assert!(decode("s", &b).is_err());
        }
    }
}
