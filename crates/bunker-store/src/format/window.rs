//! `window/<name>`: where the chunks of the last ingest of a name were
//! stored, in stream order, so that the next ingest of that name finds
//! repeated chunks without the index (`crate::window`). A cache: a file that
//! is missing, of another repository or damaged only costs index lookups.
//! Each entry carries its own checksum, so a torn tail (the file is renamed
//! into place without an fsync) ends the window instead of misleading it.
//! Layout: docs/FORMAT.md, "Dedup window".

use bunker_chunk::ChunkId;

use super::{check_magic_version, checksum, put_prefix, Le};
use crate::{Error, Location, PackId, Result};

pub const MAGIC: &[u8; 8] = b"BNKRWNDW";
/// Version history: 1 — first version (2026-12).
pub const VERSION: u32 = 1;
/// Magic, version, header length, repository id, checksum.
pub const HEADER_LEN: usize = 40;
/// Chunk id, pack, offset, raw and stored length, stream end, checksum.
pub const ENTRY_LEN: usize = 72;

/// One stored chunk of the stream: its id, where its record was, and the
/// stream offset at which the chunk ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WindowEntry {
    pub id: ChunkId,
    pub loc: Location,
    pub end: u64,
}

pub fn encode_header(repo_id: [u8; 16]) -> [u8; HEADER_LEN] {
    let mut b = [0u8; HEADER_LEN];
    put_prefix(&mut b, MAGIC, VERSION, HEADER_LEN);
    Le::put(&mut b, 16, &repo_id);
    let sum = checksum(&[&b[..32]]);
    Le::put_u64(&mut b, 32, sum);
    b
}

/// The repository id a window file was written for.
pub fn decode_header(file: &str, b: &[u8]) -> Result<[u8; 16]> {
    check_magic_version(file, "dedup window", b, MAGIC, VERSION)?;
    if b.len() < HEADER_LEN || Le::u64(b, 32) != checksum(&[&b[..32]]) {
        return Err(Error::corrupt(file, "window header checksum mismatch"));
    }
    Ok(Le::bytes(b, 16))
}

pub fn encode_entry(e: &WindowEntry) -> [u8; ENTRY_LEN] {
    let mut b = [0u8; ENTRY_LEN];
    Le::put(&mut b, 0, &e.id.0);
    Le::put_u64(&mut b, 32, e.loc.pack.0);
    Le::put_u64(&mut b, 40, e.loc.offset);
    Le::put_u32(&mut b, 48, e.loc.raw_len);
    Le::put_u32(&mut b, 52, e.loc.stored_len);
    Le::put_u64(&mut b, 56, e.end);
    let sum = checksum(&[&b[..64]]);
    Le::put_u64(&mut b, 64, sum);
    b
}

/// The entry, or `None` when its checksum does not match (a torn tail).
pub fn decode_entry(b: &[u8; ENTRY_LEN]) -> Option<WindowEntry> {
    (Le::u64(b, 64) == checksum(&[&b[..64]])).then(|| WindowEntry {
        id: ChunkId(Le::bytes(b, 0)),
        loc: Location {
            pack: PackId(Le::u64(b, 32)),
            offset: Le::u64(b, 40),
            raw_len: Le::u32(b, 48),
            stored_len: Le::u32(b, 52),
        },
        end: Le::u64(b, 56),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_round_trip_and_damage_is_seen() {
        let e = WindowEntry {
            id: ChunkId([7; 32]),
            loc: Location {
                pack: PackId(12),
                offset: 4096,
                raw_len: 65_536,
                stored_len: 1000,
            },
            end: 1 << 40,
        };
        let mut b = encode_entry(&e);
        assert_eq!(decode_entry(&b), Some(e));
        b[40] ^= 1;
        assert_eq!(decode_entry(&b), None);
        let h = encode_header([3; 16]);
        assert_eq!(decode_header("w", &h).unwrap(), [3; 16]);
        let mut bad = h;
        bad[20] ^= 1;
        assert!(matches!(
            decode_header("w", &bad),
            Err(Error::Corrupt { .. })
        ));
    }
}
