//! Sealed files: the clear container header and the layout arithmetic of a
//! file whose plaintext is sealed as a head and fixed-size segments.
//!
//! A sealed file is this 64-byte header, then the head (the first `H`
//! plaintext bytes: a manifest's or block hashes file's own header) sealed
//! as one object, then the rest of the plaintext in sealed segments of `S`
//! bytes, the last one shorter (or empty when the rest is empty, so every
//! file has a last segment). Every length follows from the file length,
//! `H` and `S`. Bytes only; sealing and opening live in `crate::sealed_file`.
//! Layout: docs/FORMAT.md, "Sealed files".

use super::{check_magic_version, checksum, put_prefix, Le};
use crate::{Error, Result};

pub const MAGIC: &[u8; 8] = b"BNKRSFIL";
/// Version history: 1 — first format (2026-12, issue 19).
pub const VERSION: u32 = 1;
pub const HEADER_LEN: usize = 64;
/// The bytes the head's associated data takes from the header: all but the
/// checksum, so every field is authenticated, not only checksummed.
pub const AUTHENTICATED_LEN: usize = 56;
/// Bytes a sealed object has beyond its plaintext (nonce and tag;
/// `bunker_crypt::OVERHEAD`, fixed by docs/FORMAT.md "Sealed objects").
pub const OVERHEAD: u64 = 40;
/// log2 of the segment length the writers use: 64 KiB, so a positioned
/// read opens at most a few 64 KiB objects and a scan seals in large steps.
pub const SEGMENT_SHIFT: u8 = 16;
/// Segment lengths a reader accepts: 4 KiB to 16 MiB.
const SEGMENT_SHIFTS: std::ops::RangeInclusive<u8> = 12..=24;
/// The largest head: manifest headers are 1024 bytes, block hashes 96.
pub const MAX_HEAD_LEN: u32 = 1 << 16;

/// What a sealed file holds; each seals under its own subkey.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FileKind {
    Manifest = 1,
    BlockHashes = 2,
}

impl FileKind {
    pub fn name(self) -> &'static str {
        match self {
            FileKind::Manifest => "manifest",
            FileKind::BlockHashes => "block hashes",
        }
    }
}

impl TryFrom<u8> for FileKind {
    type Error = u8;
    fn try_from(b: u8) -> std::result::Result<FileKind, u8> {
        match b {
            1 => Ok(FileKind::Manifest),
            2 => Ok(FileKind::BlockHashes),
            other => Err(other),
        }
    }
}

/// The clear container header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SealedHeader {
    pub kind: FileKind,
    pub segment_shift: u8,
    /// Plaintext bytes in the head.
    pub head_len: u32,
    pub key_id: [u8; 16],
    /// Random per file: binds the head and segments to this file.
    pub file_id: [u8; 16],
}

impl SealedHeader {
    pub fn segment_len(&self) -> u64 {
        1 << self.segment_shift
    }

    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let mut b = [0u8; HEADER_LEN];
        put_prefix(&mut b, MAGIC, VERSION, HEADER_LEN);
        b[16] = self.kind as u8;
        b[17] = self.segment_shift;
        Le::put_u32(&mut b, 20, self.head_len);
        Le::put(&mut b, 24, &self.key_id);
        Le::put(&mut b, 40, &self.file_id);
        let sum = checksum(&[&b[..AUTHENTICATED_LEN]]);
        Le::put_u64(&mut b, AUTHENTICATED_LEN, sum);
        b
    }

    /// Checks magic, version, checksum and fields; `file` names the file
    /// in errors.
    pub fn decode(file: &str, b: &[u8]) -> Result<SealedHeader> {
        check_magic_version(file, "sealed", b, MAGIC, VERSION)?;
        if b.len() < HEADER_LEN {
            return Err(Error::NotBunkerFile {
                file: file.to_string(),
                kind: "sealed",
                reason: format!("{} bytes is too short for the 64-byte header", b.len()),
            });
        }
        let bad = |reason: String| Err(Error::corrupt(file, reason));
        if Le::u64(b, AUTHENTICATED_LEN) != checksum(&[&b[..AUTHENTICATED_LEN]]) {
            return bad("sealed file header checksum mismatch".into());
        }
        if Le::u32(b, 12) as usize != HEADER_LEN || b[18..20] != [0, 0] {
            return bad("sealed file header has a bad length or reserved bytes".into());
        }
        let Ok(kind) = FileKind::try_from(b[16]) else {
            return bad(format!("sealed file of unknown kind {}", b[16]));
        };
        let segment_shift = b[17];
        if !SEGMENT_SHIFTS.contains(&segment_shift) {
            return bad(format!(
                "sealed file segment length 2^{segment_shift} is out of range"
            ));
        }
        let head_len = Le::u32(b, 20);
        if head_len > MAX_HEAD_LEN {
            return bad(format!("sealed file head of {head_len} bytes is too long"));
        }
        Ok(SealedHeader {
            kind,
            segment_shift,
            head_len,
            key_id: Le::bytes(b, 24),
            file_id: Le::bytes(b, 40),
        })
    }

    /// Where the sealed head starts, and where segment 0 starts.
    pub fn head_at(&self) -> u64 {
        HEADER_LEN as u64
    }

    pub fn first_segment_at(&self) -> u64 {
        HEADER_LEN as u64 + u64::from(self.head_len) + OVERHEAD
    }

    /// Segments of a body of `body_len` plaintext bytes (at least one).
    pub fn segments(&self, body_len: u64) -> u64 {
        body_len.div_ceil(self.segment_len()).max(1)
    }

    /// The file length of a body of `body_len` bytes.
    pub fn file_len(&self, body_len: u64) -> u64 {
        self.first_segment_at() + body_len + self.segments(body_len) * OVERHEAD
    }

    /// The body length a file of `file_len` bytes holds, or `None` if no
    /// body gives that length (a file cut short or grown).
    pub fn body_len(&self, file_len: u64) -> Option<u64> {
        let rest = file_len.checked_sub(self.first_segment_at())?;
        let sealed_segment = self.segment_len() + OVERHEAD;
        let n = rest.div_ceil(sealed_segment).max(1);
        let body = rest.checked_sub(n * OVERHEAD)?;
        (self.file_len(body) == file_len).then_some(body)
    }

    /// File offset and plaintext length of segment `i` of a body of
    /// `body_len` bytes.
    pub fn segment_span(&self, body_len: u64, i: u64) -> (u64, u64) {
        let s = self.segment_len();
        let at = self.first_segment_at() + i * (s + OVERHEAD);
        let len = (body_len - (i * s).min(body_len)).min(s);
        (at, len)
    }
}

/// The head's associated data: the authenticated header bytes, the body
/// length (so a file cut at a segment boundary fails at open), then the
/// file's identity (for a manifest: [`identity`]).
pub fn head_ad(header: &[u8; HEADER_LEN], body_len: u64, identity: &[u8]) -> Vec<u8> {
    let mut ad = Vec::with_capacity(AUTHENTICATED_LEN + 8 + identity.len());
    ad.extend_from_slice(&header[..AUTHENTICATED_LEN]);
    ad.extend_from_slice(&body_len.to_le_bytes());
    ad.extend_from_slice(identity);
    ad
}

/// Segment `i`'s associated data: file id, index and whether it is the
/// last, so segments cannot be reordered, moved between files or dropped
/// at the end.
pub fn segment_ad(file_id: &[u8; 16], i: u64, last: bool) -> [u8; 25] {
    let mut ad = [0u8; 25];
    ad[..16].copy_from_slice(file_id);
    ad[16..24].copy_from_slice(&i.to_le_bytes());
    ad[24] = u8::from(last);
    ad
}

/// The identity of a snapshot's manifest or block hashes file: repository
/// id, snapshot id, name length (u8) and name.
pub fn identity(repo_id: &[u8; 16], snapshot_id: u64, name: &str) -> Vec<u8> {
    let mut b = Vec::with_capacity(16 + 8 + 1 + name.len());
    b.extend_from_slice(repo_id);
    b.extend_from_slice(&snapshot_id.to_le_bytes());
    b.push(name.len().min(255) as u8);
    b.extend_from_slice(name.as_bytes());
    b
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn header(head_len: u32) -> SealedHeader {
        SealedHeader {
            kind: FileKind::Manifest,
            segment_shift: 12,
            head_len,
            key_id: [1; 16],
            file_id: [2; 16],
        }
    }

    #[test]
    fn header_round_trips_and_every_bad_field_is_refused() {
        let h = header(1024);
        let b = h.encode();
        assert_eq!(&b[..8], b"BNKRSFIL");
        assert_eq!(SealedHeader::decode("f", &b).unwrap(), h);
        for at in 0..HEADER_LEN {
            let mut x = b;
            x[at] ^= 0x10;
            assert!(SealedHeader::decode("f", &x).is_err(), "byte {at}");
        }
        assert!(matches!(
            SealedHeader::decode("f", &b[..40]),
            Err(Error::NotBunkerFile { .. })
        ));
    }

    proptest! {
        #[test]
        fn lengths_invert(head in 0u32..2000, body in 0u64..100_000) {
            let h = header(head);
            let len = h.file_len(body);
            prop_assert_eq!(h.body_len(len), Some(body));
            let n = h.segments(body);
            let (at, last) = h.segment_span(body, n - 1);
            prop_assert_eq!(at + last + OVERHEAD, len);
            prop_assert!(last > 0 || body == 0);
            // Lengths no body gives are refused.
            for cut in [1, OVERHEAD, h.segment_len() + OVERHEAD] {
                if let Some(shorter) = len.checked_sub(cut) {
                    if let Some(b) = h.body_len(shorter) {
                        prop_assert_eq!(h.file_len(b), shorter);
                        prop_assert!(b < body);
                    }
                }
            }
        }
    }

    #[test]
    fn a_file_without_its_last_segment_has_no_body_length() {
        let h = header(100);
        assert_eq!(h.body_len(h.first_segment_at()), None);
        assert_eq!(h.body_len(h.first_segment_at() + OVERHEAD), Some(0));
        assert_eq!(h.body_len(h.first_segment_at() + OVERHEAD - 1), None);
    }
}
