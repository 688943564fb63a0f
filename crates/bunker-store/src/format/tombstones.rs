//! The `tombstones` file: locations the index must not hand out. Packs GC
//! condemned (deleted, or about to be: the decision is durable before the
//! first pack goes) and records verify quarantined. Replaced atomically;
//! small, because GC's compaction removes what no run refers to any more.
//! Layout: docs/FORMAT.md, "Tombstones".

use bunker_chunk::ChunkId;

use super::{append_checksum, check_magic_version, checked_body, put_prefix, Le};
use crate::index::Tombstones;
use crate::{Error, Result};

pub const MAGIC: &[u8; 8] = b"BNKRTOMB";
/// Version history: 1 — new file, written by GC (2026-11).
pub const VERSION: u32 = 1;
pub const HEADER_LEN: usize = 32;
pub const RECORD_LEN: usize = 48;

pub fn encode(t: &Tombstones) -> Vec<u8> {
    let mut b = vec![0u8; HEADER_LEN + 8 * t.packs.len() + RECORD_LEN * t.records.len()];
    put_prefix(&mut b, MAGIC, VERSION, HEADER_LEN);
    Le::put_u64(&mut b, 16, t.packs.len() as u64);
    Le::put_u64(&mut b, 24, t.records.len() as u64);
    let mut at = HEADER_LEN;
    for p in &t.packs {
        Le::put_u64(&mut b, at, *p);
        at += 8;
    }
    for (id, pack, offset) in &t.records {
        Le::put(&mut b, at, &id.0);
        Le::put_u64(&mut b, at + 32, *pack);
        Le::put_u64(&mut b, at + 40, *offset);
        at += RECORD_LEN;
    }
    append_checksum(&mut b);
    b
}

pub fn decode(file: &str, b: &[u8]) -> Result<Tombstones> {
    check_magic_version(file, "tombstones", b, MAGIC, VERSION)?;
    if b.len() < HEADER_LEN + 8 {
        return Err(Error::corrupt(file, "tombstones file truncated"));
    }
    let body =
        checked_body(b).ok_or_else(|| Error::corrupt(file, "tombstones checksum mismatch"))?;
    let packs = Le::u64(b, 16);
    let records = Le::u64(b, 24);
    let expect = packs
        .checked_mul(8)
        .zip(records.checked_mul(RECORD_LEN as u64))
        .and_then(|(p, r)| p.checked_add(r))
        .and_then(|n| n.checked_add(HEADER_LEN as u64));
    if expect != Some(body.len() as u64) {
        return Err(Error::corrupt(
            file,
            "tombstones length does not match its counts",
        ));
    }
    let mut t = Tombstones::default();
    let mut at = HEADER_LEN;
    for _ in 0..packs {
        t.packs.insert(Le::u64(b, at));
        at += 8;
    }
    for _ in 0..records {
        t.records.insert((
            ChunkId(Le::bytes(b, at)),
            Le::u64(b, at + 32),
            Le::u64(b, at + 40),
        ));
        at += RECORD_LEN;
    }
    Ok(t)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(10_000))]
        #[test]
        fn round_trip(packs in proptest::collection::btree_set(any::<u64>(), 0..20),
                      records in proptest::collection::btree_set((any::<[u8; 32]>(), any::<u64>(), any::<u64>()), 0..10)) {
            let t = Tombstones {
                packs,
                records: records.into_iter().map(|(i, p, o)| (ChunkId(i), p, o)).collect(),
            };
            prop_assert_eq!(decode("t", &encode(&t)).unwrap(), t);
        }

        #[test]
        fn decoder_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
            let _ = decode("t", &bytes);
        }

        #[test]
        fn any_flipped_bit_is_caught(packs in proptest::collection::btree_set(any::<u64>(), 1..8), bit in any::<prop::sample::Index>()) {
            let t = Tombstones { packs, records: Default::default() };
            let mut b = encode(&t);
            let i = bit.index(b.len() * 8);
            b[i / 8] ^= 1 << (i % 8);
            prop_assert!(decode("t", &b).is_err());
        }
    }
}
