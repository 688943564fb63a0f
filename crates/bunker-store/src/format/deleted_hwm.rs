//! `snapshots/.deleted-hwm`: the highest snapshot id ever deleted, so that
//! ids are never reused after the newest snapshots are deleted. Replaced
//! whole on each delete that raises it. Files written before this layout
//! hold the bare `u64` (8 bytes); they still read, and the next delete
//! rewrites them in this form. Layout: docs/FORMAT.md, "Deleted snapshot ids".

use super::{check_magic_version, checksum, put_prefix, Le};
use crate::{Error, Result};

pub const MAGIC: &[u8; 8] = b"BNKRDHWM";
/// Version history: 1 — magic, version and checksum (2026-12); before, the
/// file was the bare little-endian u64 ([`LEGACY_LEN`] bytes), still read.
pub const VERSION: u32 = 1;
pub const LEN: usize = 32;
/// The length of the unversioned form: the id alone.
pub const LEGACY_LEN: usize = 8;

/// The id a file holds, and whether it is in the unversioned form (to be
/// rewritten at the next delete).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DeletedHwm {
    pub id: u64,
    pub legacy: bool,
}

pub fn encode(id: u64) -> [u8; LEN] {
    let mut b = [0u8; LEN];
    put_prefix(&mut b, MAGIC, VERSION, LEN);
    Le::put_u64(&mut b, 16, id);
    let sum = checksum(&[&b[..24]]);
    Le::put_u64(&mut b, 24, sum);
    b
}

pub fn decode(file: &str, b: &[u8]) -> Result<DeletedHwm> {
    if b.len() == LEGACY_LEN {
        return Ok(DeletedHwm {
            id: Le::u64(b, 0),
            legacy: true,
        });
    }
    check_magic_version(file, "deleted snapshot id mark", b, MAGIC, VERSION)?;
    if b.len() != LEN || Le::u32(b, 12) as usize != LEN {
        return Err(Error::corrupt(
            file,
            format!("deleted-id mark is {} bytes, expected {LEN}", b.len()),
        ));
    }
    if Le::u64(b, 24) != checksum(&[&b[..24]]) {
        return Err(Error::corrupt(file, "deleted-id mark checksum mismatch"));
    }
    Ok(DeletedHwm {
        id: Le::u64(b, 16),
        legacy: false,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn the_unversioned_form_still_reads() {
        let old = 41u64.to_le_bytes();
        assert_eq!(
            decode("h", &old).unwrap(),
            DeletedHwm {
                id: 41,
                legacy: true
            }
        );
    }

    #[test]
    fn round_trip_and_every_bit_flip_is_caught() {
        let b = encode(0x0102_0304_0506_0708);
        assert_eq!(
            decode("h", &b).unwrap(),
            DeletedHwm {
                id: 0x0102_0304_0506_0708,
                legacy: false
            }
        );
        for bit in 0..LEN * 8 {
            let mut d = b;
            d[bit / 8] ^= 1 << (bit % 8);
            assert!(decode("h", &d).is_err(), "bit {bit}");
        }
        assert!(matches!(
            decode("h", &b[..LEN - 1]),
            Err(Error::Corrupt { .. })
        ));
        let mut newer = b;
        Le::put_u32(&mut newer, 8, 2);
        assert!(matches!(
            decode("h", &newer),
            Err(Error::UnsupportedVersion { found: 2, .. })
        ));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(10_000))]
        #[test]
        fn decoder_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..80)) {
            let _ = decode("h", &bytes);
        }
    }
}
