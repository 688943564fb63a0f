//! Snapshot manifests: a 512-byte header, fixed-size entries, a footer.
//!
//! Entries are `(end offset, chunk id)` in stream order, so the chunk
//! holding byte `x` is the first entry with `end > x` (binary search, no
//! need to load the manifest). A chunk id of all zeros is an all-zero chunk
//! that was never stored. Layout: docs/FORMAT.md, "Manifest".
//!
//! Version 2 headers are 1024 bytes: the 512 bytes of version 1 (with the
//! version field 2), then an extension holding the origin of a copy
//! (`bunker sync`) and the local commit time, with its own checksum.
//! Version 1 manifests are still read (no origin; committed = created).

use bunker_chunk::{ChunkId, ChunkerParams};

use super::{check_magic_version, checksum, put_prefix, Le};
use crate::{Error, Result, SnapshotId};

pub const MAGIC: &[u8; 8] = b"BNKRSNAP";
pub const END_MAGIC: &[u8; 8] = b"BNKRMEND";
/// Version history: 1 — first format (2026-11); 2 — 1024-byte header with
/// the origin extension (2026-12, replication).
pub const VERSION: u32 = 2;
/// The header length of the current version.
pub const HEADER_LEN: usize = 1024;
/// The header length of version 1, and of the base part of version 2.
pub const HEADER_LEN_V1: usize = 512;
/// Bit of the extension's flags: the origin fields are set.
const HAS_ORIGIN: u64 = 1;
pub const ENTRY_LEN: usize = 40;
pub const FOOTER_LEN: usize = 24;
pub const MAX_NAME_LEN: usize = 128;
/// The largest image a snapshot may hold, 2^56 bytes (64 PiB): far beyond
/// any volume, and far enough below 2^64 that sums of sizes and offsets
/// across snapshots cannot wrap.
pub const MAX_IMAGE_LEN: u64 = 1 << 56;
pub const MAX_SOURCE_LEN: usize = 192;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ManifestHeader {
    pub repo_id: [u8; 16],
    pub id: SnapshotId,
    pub created_unix_ms: i64,
    pub size: u64,
    pub entries: u64,
    pub chunker: ChunkerParams,
    pub stream_hash: [u8; 32],
    pub new_chunks: u64,
    pub new_bytes: u64,
    /// Raw (uncompressed) bytes of the chunks newly stored; 0 when unknown.
    pub new_raw_bytes: u64,
    pub ingest_ms: u64,
    pub zero_chunks: u64,
    pub name: String,
    pub source: String,
    pub creator: u64,
    /// The version read (encoding always writes [`VERSION`]).
    pub version: u32,
    /// When this repository committed it (unix ms); for a copy,
    /// `created_unix_ms` is the origin's creation time.
    pub committed_unix_ms: i64,
    /// Set on a copy made by `bunker sync`.
    pub origin: Option<Origin>,
}

/// The snapshot a copy was made from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Origin {
    pub repo_id: [u8; 16],
    pub snapshot_id: u64,
}

impl ManifestHeader {
    /// Bytes before the first entry.
    pub fn header_len(&self) -> usize {
        if self.version == 1 {
            HEADER_LEN_V1
        } else {
            HEADER_LEN
        }
    }

    /// Encodes the header as the current version.
    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let mut b = [0u8; HEADER_LEN];
        put_prefix(&mut b, MAGIC, VERSION, HEADER_LEN);
        Le::put(&mut b, 16, &self.repo_id);
        Le::put_u64(&mut b, 32, self.id.0);
        Le::put_i64(&mut b, 40, self.created_unix_ms);
        Le::put_u64(&mut b, 48, self.size);
        Le::put_u64(&mut b, 56, self.entries);
        Le::put_u32(&mut b, 64, self.chunker.min_len);
        Le::put_u32(&mut b, 68, self.chunker.avg_len);
        Le::put_u32(&mut b, 72, self.chunker.max_len);
        Le::put(&mut b, 80, &self.stream_hash);
        Le::put_u64(&mut b, 112, self.new_chunks);
        Le::put_u64(&mut b, 120, self.new_bytes);
        Le::put_u64(&mut b, 128, self.ingest_ms);
        Le::put_u64(&mut b, 136, self.zero_chunks);
        let name = truncate_utf8(&self.name, MAX_NAME_LEN);
        let source = truncate_utf8(&self.source, MAX_SOURCE_LEN);
        Le::put_u16(&mut b, 144, name.len() as u16);
        Le::put_u16(&mut b, 146, source.len() as u16);
        Le::put(&mut b, 152, name.as_bytes());
        Le::put(&mut b, 280, source.as_bytes());
        Le::put_u64(&mut b, 472, self.creator);
        Le::put_u64(&mut b, 480, self.new_raw_bytes);
        let sum = checksum(&[&b[..504]]);
        Le::put_u64(&mut b, 504, sum);
        // The extension (version 2).
        if let Some(o) = &self.origin {
            Le::put_u64(&mut b, 512, HAS_ORIGIN);
            Le::put(&mut b, 520, &o.repo_id);
            Le::put_u64(&mut b, 536, o.snapshot_id);
        }
        Le::put_i64(&mut b, 544, self.committed_unix_ms);
        let sum = checksum(&[&b[512..1016]]);
        Le::put_u64(&mut b, 1016, sum);
        b
    }

    /// Decodes a header of either version; `b` holds the first
    /// [`HEADER_LEN`] bytes of the file (fewer if the file is shorter).
    pub fn decode(file: &str, b: &[u8]) -> Result<ManifestHeader> {
        let version = if b.len() >= 12 && Le::u32(b, 8) == 1 {
            1
        } else {
            VERSION
        };
        check_magic_version(file, "snapshot manifest", b, MAGIC, version)?;
        if b.len() < HEADER_LEN_V1 || Le::u64(b, 504) != checksum(&[&b[..504]]) {
            return Err(Error::corrupt(file, "manifest header checksum mismatch"));
        }
        let mut committed_unix_ms = Le::i64(b, 40);
        let mut origin = None;
        if version >= 2 {
            if b.len() < HEADER_LEN || Le::u64(b, 1016) != checksum(&[&b[512..1016]]) {
                return Err(Error::corrupt(
                    file,
                    "manifest header extension checksum mismatch",
                ));
            }
            let flags = Le::u64(b, 512);
            if flags & !HAS_ORIGIN != 0 {
                return Err(Error::corrupt(
                    file,
                    format!("manifest header has unknown flags {flags:#x}"),
                ));
            }
            if flags & HAS_ORIGIN != 0 {
                origin = Some(Origin {
                    repo_id: Le::bytes(b, 520),
                    snapshot_id: Le::u64(b, 536),
                });
            }
            committed_unix_ms = Le::i64(b, 544);
        }
        let name_len = usize::from(Le::u16(b, 144));
        let source_len = usize::from(Le::u16(b, 146));
        if name_len == 0 || name_len > MAX_NAME_LEN || source_len > MAX_SOURCE_LEN {
            return Err(Error::corrupt(
                file,
                "manifest name or source length out of range",
            ));
        }
        let text = |at: usize, len: usize| {
            String::from_utf8(b[at..at + len].to_vec())
                .map_err(|_| Error::corrupt(file, "manifest text is not UTF-8"))
        };
        let chunker = ChunkerParams::new(Le::u32(b, 64), Le::u32(b, 68), Le::u32(b, 72))
            .map_err(|e| Error::corrupt(file, e.to_string()))?;
        Ok(ManifestHeader {
            repo_id: Le::bytes(b, 16),
            id: SnapshotId(Le::u64(b, 32)),
            created_unix_ms: Le::i64(b, 40),
            size: Le::u64(b, 48),
            entries: Le::u64(b, 56),
            chunker,
            stream_hash: Le::bytes(b, 80),
            new_chunks: Le::u64(b, 112),
            new_bytes: Le::u64(b, 120),
            ingest_ms: Le::u64(b, 128),
            zero_chunks: Le::u64(b, 136),
            name: text(152, name_len)?,
            source: text(280, source_len)?,
            creator: Le::u64(b, 472),
            new_raw_bytes: Le::u64(b, 480),
            version,
            committed_unix_ms,
            origin,
        })
    }

    /// Total file length this header implies.
    pub fn file_len(&self) -> Option<u64> {
        self.entries
            .checked_mul(ENTRY_LEN as u64)?
            .checked_add((self.header_len() + FOOTER_LEN) as u64)
    }
}

fn truncate_utf8(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

pub fn encode_entry(end: u64, id: &ChunkId) -> [u8; ENTRY_LEN] {
    let mut b = [0u8; ENTRY_LEN];
    Le::put_u64(&mut b, 0, end);
    Le::put(&mut b, 8, &id.0);
    b
}

pub fn decode_entry(b: &[u8]) -> (u64, ChunkId) {
    (Le::u64(b, 0), ChunkId(Le::bytes(b, 8)))
}

pub fn encode_footer(entries_checksum: u64, count: u64) -> [u8; FOOTER_LEN] {
    let mut b = [0u8; FOOTER_LEN];
    Le::put_u64(&mut b, 0, entries_checksum);
    Le::put_u64(&mut b, 8, count);
    Le::put(&mut b, 16, END_MAGIC);
    b
}

/// `(entries checksum, count)` from a footer, or why it is not one.
pub fn decode_footer(b: &[u8]) -> std::result::Result<(u64, u64), String> {
    if b.len() != FOOTER_LEN || &b[16..24] != END_MAGIC {
        return Err("manifest footer missing".into());
    }
    Ok((Le::u64(b, 0), Le::u64(b, 8)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sample() -> ManifestHeader {
        ManifestHeader {
            repo_id: [1; 16],
            id: SnapshotId(42),
            created_unix_ms: 1_763_000_000_000,
            size: 10 << 40,
            entries: 10_000_000,
            chunker: ChunkerParams::DEFAULT,
            stream_hash: [9; 32],
            new_chunks: 5,
            new_bytes: 1234,
            new_raw_bytes: 777,
            ingest_ms: 99,
            zero_chunks: 3,
            name: "vol-1.db".into(),
            source: "file:/dev/sdb".into(),
            creator: 0x1234,
            version: VERSION,
            committed_unix_ms: 1_763_000_000_500,
            origin: Some(Origin {
                repo_id: [7; 16],
                snapshot_id: 11,
            }),
        }
    }

    /// A version-1 header: the first 512 bytes of version 2's layout.
    fn as_v1(h: &ManifestHeader) -> Vec<u8> {
        let mut b = h.encode()[..HEADER_LEN_V1].to_vec();
        Le::put_u32(&mut b, 8, 1);
        Le::put_u32(&mut b, 12, HEADER_LEN_V1 as u32);
        let sum = checksum(&[&b[..504]]);
        Le::put_u64(&mut b, 504, sum);
        b
    }

    #[test]
    fn version_1_headers_still_read_without_origin() {
        let h = sample();
        let old = ManifestHeader::decode("m", &as_v1(&h)).unwrap();
        assert_eq!(old.version, 1);
        assert_eq!(old.header_len(), HEADER_LEN_V1);
        assert_eq!(old.origin, None);
        assert_eq!(old.committed_unix_ms, h.created_unix_ms);
        assert_eq!((old.name.as_str(), old.size), (h.name.as_str(), h.size));
        assert_eq!(
            old.file_len(),
            Some(h.entries * ENTRY_LEN as u64 + (HEADER_LEN_V1 + FOOTER_LEN) as u64)
        );
        let mut no_origin = sample();
        no_origin.origin = None;
        let back = ManifestHeader::decode("m", &no_origin.encode()).unwrap();
        assert_eq!(back, no_origin);
    }

    #[test]
    fn header_round_trip_and_every_bit_flip_is_caught() {
        let h = sample();
        let b = h.encode();
        assert_eq!(ManifestHeader::decode("m", &b).unwrap(), h);
        for bit in 0..(HEADER_LEN * 8) {
            let mut d = b;
            d[bit / 8] ^= 1 << (bit % 8);
            assert!(ManifestHeader::decode("m", &d).is_err(), "bit {bit}");
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(10_000))]
        #[test]
        fn decoders_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
            let _ = ManifestHeader::decode("fuzz", &bytes);
            if bytes.len() >= FOOTER_LEN {
                let _ = decode_footer(&bytes[..FOOTER_LEN]);
            }
        }

        #[test]
        fn names_round_trip(name in "[A-Za-z0-9._-]{1,128}", source in "\\PC{0,60}") {
            let mut h = sample();
            h.name = name;
            h.source = source;
            let back = ManifestHeader::decode("m", &h.encode()).unwrap();
            prop_assert_eq!(&back.name, &h.name);
            prop_assert!(h.source.starts_with(&back.source));
        }
    }
}
