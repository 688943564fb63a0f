//! Pack files: a header, chunk records, and (once sealed) a trailer and
//! footer.
//!
//! A record's checksum covers its header and stored bytes, so a torn or
//! flipped record is found without decompressing. The trailer repeats each
//! record's id and location so sealing and re-indexing read a few KiB
//! instead of the pack. In an encrypted repository the header names the
//! key, record payloads and the trailer are sealed objects (40 bytes more
//! each) and record ids are at-rest ids; every other byte is laid out as in
//! a clear pack. Layout: docs/FORMAT.md, "Pack" and "Encryption".

use bunker_chunk::ChunkId;

use super::{check_magic_version, checksum, put_prefix, Le};
use crate::{Error, PackId, Result};

pub const MAGIC: &[u8; 8] = b"BNKRPACK";
/// Version history: 1 — first format (2026-11).
pub const VERSION: u32 = 1;
pub const HEADER_LEN: usize = 64;
pub const RECORD_HEADER_LEN: usize = 64;
pub const RECORD_MAGIC: &[u8; 4] = b"BREC";
pub const TRAILER_ENTRY_LEN: usize = 56;
pub const FOOTER_LEN: usize = 48;
pub const FOOTER_MAGIC: &[u8; 8] = b"BNKRSEAL";

/// How a record's bytes are stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Codec {
    Raw = 0,
    Zstd = 1,
}

impl TryFrom<u8> for Codec {
    type Error = u8;
    fn try_from(v: u8) -> Result<Codec, u8> {
        match v {
            0 => Ok(Codec::Raw),
            1 => Ok(Codec::Zstd),
            other => Err(other),
        }
    }
}

/// Bytes a sealed record payload or trailer has beyond its plaintext.
pub const SEAL_OVERHEAD: u32 = bunker_crypt::OVERHEAD as u32;

/// The first 64 bytes of a pack: which repository and pack it belongs to,
/// and in an encrypted repository the id of the key its contents are
/// sealed with (bytes 40..56, zero in a clear pack).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PackHeader {
    pub repo_id: [u8; 16],
    pub pack: PackId,
    pub key_id: Option<[u8; 16]>,
}

impl PackHeader {
    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let mut b = [0u8; HEADER_LEN];
        put_prefix(&mut b, MAGIC, VERSION, HEADER_LEN);
        Le::put(&mut b, 16, &self.repo_id);
        Le::put_u64(&mut b, 32, self.pack.0);
        if let Some(k) = &self.key_id {
            Le::put(&mut b, 40, k);
        }
        let sum = checksum(&[&b[..56]]);
        Le::put_u64(&mut b, 56, sum);
        b
    }

    pub fn decode(file: &str, b: &[u8]) -> Result<PackHeader> {
        check_magic_version(file, "pack", b, MAGIC, VERSION)?;
        if b.len() < HEADER_LEN || Le::u64(b, 56) != checksum(&[&b[..56]]) {
            return Err(Error::corrupt(file, "pack header checksum mismatch"));
        }
        let key: [u8; 16] = Le::bytes(b, 40);
        Ok(PackHeader {
            repo_id: Le::bytes(b, 16),
            pack: PackId(Le::u64(b, 32)),
            key_id: (key != [0; 16]).then_some(key),
        })
    }
}

/// The 64-byte header before a record's stored bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RecordHeader {
    pub codec: Codec,
    pub raw_len: u32,
    pub stored_len: u32,
    pub id: ChunkId,
    pub checksum: u64,
}

impl RecordHeader {
    pub fn new(id: ChunkId, codec: Codec, raw_len: u32, stored: &[u8]) -> RecordHeader {
        let mut h = RecordHeader {
            codec,
            raw_len,
            stored_len: stored.len() as u32,
            id,
            checksum: 0,
        };
        h.checksum = checksum(&[&h.encode()[..56], stored]);
        h
    }

    pub fn encode(&self) -> [u8; RECORD_HEADER_LEN] {
        let mut b = [0u8; RECORD_HEADER_LEN];
        Le::put(&mut b, 0, RECORD_MAGIC);
        b[4] = self.codec as u8;
        Le::put_u32(&mut b, 8, self.raw_len);
        Le::put_u32(&mut b, 12, self.stored_len);
        Le::put(&mut b, 16, &self.id.0);
        Le::put_u64(&mut b, 56, self.checksum);
        b
    }

    /// Parses the fixed part of a clear pack's record header.
    pub fn decode(b: &[u8]) -> std::result::Result<RecordHeader, String> {
        RecordHeader::decode_in(b, false)
    }

    /// Parses the fixed part; `sealed`: the record is in an encrypted pack,
    /// its stored bytes a sealed object ([`SEAL_OVERHEAD`] more). The
    /// checksum is checked by [`Self::verify`] once the stored bytes are at
    /// hand.
    pub fn decode_in(b: &[u8], sealed: bool) -> std::result::Result<RecordHeader, String> {
        let overhead = if sealed { SEAL_OVERHEAD } else { 0 };
        if b.len() < RECORD_HEADER_LEN {
            return Err("record header truncated".into());
        }
        if &b[..4] != RECORD_MAGIC {
            return Err("record magic missing".into());
        }
        let codec = Codec::try_from(b[4]).map_err(|c| format!("unknown codec {c}"))?;
        let raw_len = Le::u32(b, 8);
        let stored_len = Le::u32(b, 12);
        if raw_len == 0
            || raw_len > MAX_RAW_LEN
            || stored_len > max_stored_len(raw_len) + overhead
            || (sealed && stored_len <= overhead)
        {
            return Err(format!(
                "implausible lengths raw {raw_len} stored {stored_len}"
            ));
        }
        if codec == Codec::Raw && stored_len != raw_len + overhead {
            return Err(if sealed {
                "sealed raw record with stored length != raw length + 40".into()
            } else {
                "raw record with stored length != raw length".into()
            });
        }
        Ok(RecordHeader {
            codec,
            raw_len,
            stored_len,
            id: ChunkId(Le::bytes(b, 16)),
            checksum: Le::u64(b, 56),
        })
    }

    pub fn verify(&self, header_bytes: &[u8], stored: &[u8]) -> bool {
        header_bytes.len() >= 56 && checksum(&[&header_bytes[..56], stored]) == self.checksum
    }
}

/// The largest raw chunk any repository may hold (the chunker's limit).
pub const MAX_RAW_LEN: u32 = 16 << 20;

/// The largest stored length a record of `raw_len` bytes may have: zstd's
/// worst-case expansion, rounded up generously (more can only be damage).
pub fn max_stored_len(raw_len: u32) -> u32 {
    raw_len.saturating_add(raw_len / 128).saturating_add(1024)
}

/// One trailer entry (56 bytes): a record's id, place and lengths.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TrailerEntry {
    pub id: ChunkId,
    pub offset: u64,
    pub raw_len: u32,
    pub stored_len: u32,
    pub codec: Codec,
}

impl TrailerEntry {
    /// The index entry of this record of pack `pack`.
    pub fn index_entry(&self, pack: PackId) -> (ChunkId, crate::Location) {
        (
            self.id,
            crate::Location {
                pack,
                offset: self.offset,
                raw_len: self.raw_len,
                stored_len: self.stored_len,
            },
        )
    }

    pub fn encode_into(&self, b: &mut [u8]) {
        Le::put(b, 0, &self.id.0);
        Le::put_u64(b, 32, self.offset);
        Le::put_u32(b, 40, self.raw_len);
        Le::put_u32(b, 44, self.stored_len);
        b[48] = self.codec as u8;
        b[49..56].fill(0);
    }

    pub fn decode(b: &[u8]) -> std::result::Result<TrailerEntry, String> {
        let codec = Codec::try_from(b[48]).map_err(|c| format!("unknown codec {c}"))?;
        Ok(TrailerEntry {
            id: ChunkId(Le::bytes(b, 0)),
            offset: Le::u64(b, 32),
            raw_len: Le::u32(b, 40),
            stored_len: Le::u32(b, 44),
            codec,
        })
    }
}

/// The last 48 bytes of a sealed pack: where its trailer is and its
/// checksum.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Footer {
    pub trailer_offset: u64,
    pub count: u64,
    pub trailer_checksum: u64,
}

impl Footer {
    pub fn encode(&self) -> [u8; FOOTER_LEN] {
        let mut b = [0u8; FOOTER_LEN];
        Le::put_u64(&mut b, 0, self.trailer_offset);
        Le::put_u64(&mut b, 8, self.count);
        Le::put_u64(&mut b, 16, self.trailer_checksum);
        let sum = checksum(&[&b[..32]]);
        Le::put_u64(&mut b, 32, sum);
        Le::put(&mut b, 40, FOOTER_MAGIC);
        b
    }

    /// Decodes the footer of a clear pack of `file_len` bytes and checks
    /// that it describes a layout that fits that length.
    pub fn decode(b: &[u8], file_len: u64) -> std::result::Result<Footer, String> {
        Footer::decode_in(b, file_len, false)
    }

    /// [`Footer::decode`]; `sealed`: the pack is encrypted and its trailer
    /// a sealed object ([`SEAL_OVERHEAD`] more bytes).
    pub fn decode_in(b: &[u8], file_len: u64, sealed: bool) -> std::result::Result<Footer, String> {
        let overhead = if sealed { u64::from(SEAL_OVERHEAD) } else { 0 };
        if b.len() != FOOTER_LEN || &b[40..48] != FOOTER_MAGIC {
            return Err("no seal footer".into());
        }
        if Le::u64(b, 32) != checksum(&[&b[..32]]) {
            return Err("footer checksum mismatch".into());
        }
        let f = Footer {
            trailer_offset: Le::u64(b, 0),
            count: Le::u64(b, 8),
            trailer_checksum: Le::u64(b, 16),
        };
        let expect = f
            .count
            .checked_mul(TRAILER_ENTRY_LEN as u64)
            .and_then(|t| t.checked_add(f.trailer_offset))
            .and_then(|t| t.checked_add(overhead + FOOTER_LEN as u64));
        if f.trailer_offset < HEADER_LEN as u64 || expect != Some(file_len) {
            return Err(format!(
                "footer describes {} records ending at {}, file is {file_len} bytes",
                f.count, f.trailer_offset
            ));
        }
        Ok(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn header_round_trip() {
        let h = PackHeader {
            repo_id: [3; 16],
            pack: PackId(99),
            key_id: None,
        };
        assert_eq!(PackHeader::decode("p", &h.encode()).unwrap(), h);
        let sealed = PackHeader {
            key_id: Some([5; 16]),
            ..h
        };
        assert_eq!(PackHeader::decode("p", &sealed.encode()).unwrap(), sealed);
        let mut b = h.encode();
        b[33] ^= 1;
        assert!(PackHeader::decode("p", &b).unwrap_err().is_corrupt());
    }

    #[test]
    fn record_checksum_covers_header_and_bytes() {
        let data = b"some stored bytes";
        let h = RecordHeader::new(ChunkId::of(b"x"), Codec::Zstd, 100, data);
        let enc = h.encode();
        let back = RecordHeader::decode(&enc).unwrap();
        assert_eq!(back, h);
        assert!(back.verify(&enc, data));
        assert!(!back.verify(&enc, b"some stored bytez"));
        let mut flipped = enc;
        flipped[20] ^= 0x80;
        let parsed = RecordHeader::decode(&flipped).unwrap();
        assert!(!parsed.verify(&flipped, data));
    }

    #[test]
    fn footer_must_fit_the_file() {
        let f = Footer {
            trailer_offset: 1000,
            count: 2,
            trailer_checksum: 5,
        };
        let len = 1000 + 2 * TRAILER_ENTRY_LEN as u64 + FOOTER_LEN as u64;
        assert_eq!(Footer::decode(&f.encode(), len).unwrap(), f);
        assert!(Footer::decode(&f.encode(), len + 1).is_err());
        assert!(Footer::decode_in(&f.encode(), len, true).is_err());
        assert_eq!(Footer::decode_in(&f.encode(), len + 40, true).unwrap(), f);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(10_000))]
        #[test]
        fn decoders_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..200), len in any::<u64>()) {
            let _ = PackHeader::decode("fuzz", &bytes);
            let _ = RecordHeader::decode(&bytes);
            let _ = RecordHeader::decode_in(&bytes, true);
            if bytes.len() >= FOOTER_LEN {
                let _ = Footer::decode(&bytes[..FOOTER_LEN], len);
                let _ = Footer::decode_in(&bytes[..FOOTER_LEN], len, true);
            }
            if bytes.len() >= TRAILER_ENTRY_LEN {
                let _ = TrailerEntry::decode(&bytes[..TRAILER_ENTRY_LEN]);
            }
        }

        #[test]
        fn trailer_round_trip(id in any::<[u8; 32]>(), offset in any::<u64>(), raw in any::<u32>(), stored in any::<u32>(), zstd in any::<bool>()) {
            let e = TrailerEntry { id: ChunkId(id), offset, raw_len: raw, stored_len: stored, codec: if zstd { Codec::Zstd } else { Codec::Raw } };
            let mut b = [0u8; TRAILER_ENTRY_LEN];
            e.encode_into(&mut b);
            prop_assert_eq!(TrailerEntry::decode(&b).unwrap(), e);
        }
    }
}
