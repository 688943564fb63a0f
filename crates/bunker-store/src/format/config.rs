//! `config`: the repository's identity and the parameters fixed at its
//! creation (chunker sizes, zstd level, pack length), 128 bytes, checked
//! whole on every open. An encrypted repository's config is version 3 (2
//! for those made before records were sealed off the pack writer's lock)
//! and records its key id; a clear one stays version 1, byte for byte, so
//! older builds keep opening it (and refuse an encrypted one, into which
//! they would write clear data or records they cannot open). Layout:
//! docs/FORMAT.md, "config".

use bunker_chunk::ChunkerParams;

use super::{check_magic_version, checksum, put_prefix, Le};
use crate::{Error, Result};

pub const MAGIC: &[u8; 8] = b"BNKRREPO";
/// Version history: 1 — first format (2026-11); 2 — bytes 64..80 hold the
/// key id of an encrypted repository (2026-12-06); 3 — the same, and its
/// records are sealed with their identity, not their place, as associated
/// data (2026-12-07; docs/FORMAT.md, "Encryption"). Clear repositories
/// still write version 1; a version-2 repository stays version 2.
pub const VERSION: u32 = 3;
pub const VERSION_CLEAR: u32 = 1;
/// Encrypted, records sealed with their pack and offset.
pub const VERSION_PLACE_BOUND: u32 = 2;
pub const LEN: usize = 128;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RepoConfig {
    pub repo_id: [u8; 16],
    pub created_unix: i64,
    pub chunker: ChunkerParams,
    pub zstd_level: i32,
    pub pack_target_len: u64,
    /// The id of the key the repository is encrypted with; `None`: clear.
    pub key_id: Option<[u8; 16]>,
    /// With a key id: its records are sealed with their place
    /// ([`VERSION_PLACE_BOUND`]) rather than their identity ([`VERSION`]).
    /// Ignored without one. The version written follows from the two.
    pub place_bound: bool,
}

impl RepoConfig {
    pub fn encode(&self) -> [u8; LEN] {
        let mut b = [0u8; LEN];
        let version = match (self.key_id, self.place_bound) {
            (None, _) => VERSION_CLEAR,
            (Some(_), true) => VERSION_PLACE_BOUND,
            (Some(_), false) => VERSION,
        };
        put_prefix(&mut b, MAGIC, version, LEN);
        Le::put(&mut b, 16, &self.repo_id);
        Le::put_i64(&mut b, 32, self.created_unix);
        Le::put_u32(&mut b, 40, self.chunker.min_len);
        Le::put_u32(&mut b, 44, self.chunker.avg_len);
        Le::put_u32(&mut b, 48, self.chunker.max_len);
        Le::put_u32(&mut b, 52, self.zstd_level as u32);
        Le::put_u64(&mut b, 56, self.pack_target_len);
        if let Some(k) = &self.key_id {
            Le::put(&mut b, 64, k);
        }
        let sum = checksum(&[&b[..120]]);
        Le::put_u64(&mut b, 120, sum);
        b
    }

    pub fn decode(file: &str, b: &[u8]) -> Result<RepoConfig> {
        let found = if b.len() >= 12 { Le::u32(b, 8) } else { 0 };
        let version = match found {
            VERSION_CLEAR | VERSION_PLACE_BOUND => found,
            _ => VERSION,
        };
        let clear = version == VERSION_CLEAR;
        check_magic_version(file, "repository config", b, MAGIC, version)?;
        if b.len() != LEN || Le::u32(b, 12) as usize != LEN {
            return Err(Error::corrupt(
                file,
                format!("config is {} bytes, expected {LEN}", b.len()),
            ));
        }
        if Le::u64(b, 120) != checksum(&[&b[..120]]) {
            return Err(Error::corrupt(file, "config checksum mismatch"));
        }
        let chunker = ChunkerParams::new(Le::u32(b, 40), Le::u32(b, 44), Le::u32(b, 48))
            .map_err(|e| Error::corrupt(file, e.to_string()))?;
        let zstd_level = Le::u32(b, 52) as i32;
        let pack_target_len = Le::u64(b, 56);
        if !(1..=19).contains(&zstd_level) || pack_target_len < 1 << 20 {
            return Err(Error::corrupt(
                file,
                "zstd level or pack length out of range",
            ));
        }
        Ok(RepoConfig {
            repo_id: Le::bytes(b, 16),
            created_unix: Le::i64(b, 32),
            chunker,
            zstd_level,
            pack_target_len,
            key_id: (!clear).then(|| Le::bytes(b, 64)),
            place_bound: version == VERSION_PLACE_BOUND,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_clear_config_is_version_1_with_zero_key_bytes() {
        let c = RepoConfig {
            repo_id: [7; 16],
            created_unix: 1,
            chunker: ChunkerParams::DEFAULT,
            zstd_level: 1,
            pack_target_len: 256 << 20,
            key_id: None,
            place_bound: false,
        };
        let b = c.encode();
        assert_eq!(Le::u32(&b, 8), 1);
        assert!(b[64..120].iter().all(|&x| x == 0));
        let e = RepoConfig {
            key_id: Some([9; 16]),
            place_bound: false,
            ..c
        }
        .encode();
        assert_eq!(Le::u32(&e, 8), 3);
        assert_eq!(&e[64..80], &[9; 16]);
    }

    #[test]
    fn round_trip_and_bit_flips_are_caught() {
        let c = RepoConfig {
            repo_id: [7; 16],
            created_unix: 1_700_000_000,
            chunker: ChunkerParams::DEFAULT,
            zstd_level: 3,
            pack_target_len: 256 << 20,
            key_id: None,
            place_bound: false,
        };
        let encrypted = RepoConfig {
            key_id: Some([9; 16]),
            place_bound: false,
            ..c
        };
        let place_bound = RepoConfig {
            place_bound: true,
            ..encrypted
        };
        for c in [c, encrypted, place_bound] {
            let b = c.encode();
            assert_eq!(RepoConfig::decode("config", &b).unwrap(), c);
            for bit in 0..(LEN * 8) {
                let mut d = b;
                d[bit / 8] ^= 1 << (bit % 8);
                assert!(RepoConfig::decode("config", &d).is_err(), "bit {bit}");
            }
        }
    }
}
