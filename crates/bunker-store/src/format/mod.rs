//! Bytes only: magics, versions and the layouts of every file kind.
//!
//! Nothing here does I/O. Each file kind starts with an 8-byte ASCII magic
//! (readable in a hexdump) and a little-endian `u32` version; decoders check
//! both and return [`crate::Error::NotBunkerFile`] or
//! [`crate::Error::UnsupportedVersion`], never panic, whatever the input.
//! All integers are little-endian. The specification is docs/FORMAT.md.

pub mod blocks;
pub mod config;
pub mod deleted_hwm;
pub mod index;
pub mod manifest;
pub mod pack;
pub mod sealed;
pub mod space;
pub mod tombstones;
pub mod window;

/// xxh3-64: the fast checksum used for torn-write and bit-rot detection of
/// headers, records and file tails. Chunk contents are also BLAKE3-verified.
pub fn checksum(parts: &[&[u8]]) -> u64 {
    let mut h = xxhash_rust::xxh3::Xxh3::new();
    for p in parts {
        h.update(p);
    }
    h.digest()
}

/// Appends the [`checksum`] of `b` as its 8-byte trailer: the framing of the
/// files that are a body and its checksum (index state, tombstones, space).
pub(crate) fn append_checksum(b: &mut Vec<u8>) {
    let sum = checksum(&[b.as_slice()]);
    b.extend_from_slice(&sum.to_le_bytes());
}

/// The body of a file framed by [`append_checksum`], or `None` if it is
/// shorter than the trailer or the trailer does not match.
pub(crate) fn checked_body(b: &[u8]) -> Option<&[u8]> {
    let (body, sum) = b.split_at_checked(b.len().checked_sub(8)?)?;
    (Le::u64(sum, 0) == checksum(&[body])).then_some(body)
}

/// Little-endian field access on fixed-size buffers. Offsets are constants
/// of the layouts below, so out-of-range access is a programming error that
/// tests catch; decoders check buffer lengths before reading fields.
pub(crate) struct Le;

impl Le {
    pub fn u16(b: &[u8], at: usize) -> u16 {
        u16::from_le_bytes([b[at], b[at + 1]])
    }
    pub fn u32(b: &[u8], at: usize) -> u32 {
        u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
    }
    pub fn u64(b: &[u8], at: usize) -> u64 {
        let mut x = [0u8; 8];
        x.copy_from_slice(&b[at..at + 8]);
        u64::from_le_bytes(x)
    }
    pub fn i64(b: &[u8], at: usize) -> i64 {
        Le::u64(b, at) as i64
    }
    pub fn bytes<const N: usize>(b: &[u8], at: usize) -> [u8; N] {
        let mut x = [0u8; N];
        x.copy_from_slice(&b[at..at + N]);
        x
    }
    pub fn put_u16(b: &mut [u8], at: usize, v: u16) {
        b[at..at + 2].copy_from_slice(&v.to_le_bytes());
    }
    pub fn put_u32(b: &mut [u8], at: usize, v: u32) {
        b[at..at + 4].copy_from_slice(&v.to_le_bytes());
    }
    pub fn put_u64(b: &mut [u8], at: usize, v: u64) {
        b[at..at + 8].copy_from_slice(&v.to_le_bytes());
    }
    pub fn put_i64(b: &mut [u8], at: usize, v: i64) {
        Le::put_u64(b, at, v as u64);
    }
    pub fn put(b: &mut [u8], at: usize, v: &[u8]) {
        b[at..at + v.len()].copy_from_slice(v);
    }
}

/// Writes the prefix every header starts with: magic, version, header length.
pub(crate) fn put_prefix(b: &mut [u8], magic: &[u8; 8], version: u32, header_len: usize) {
    Le::put(b, 0, magic);
    Le::put_u32(b, 8, version);
    Le::put_u32(b, 12, header_len as u32);
}

/// Checks magic and version of a header; `kind` names the file kind in errors.
pub(crate) fn check_magic_version(
    file: &str,
    kind: &'static str,
    b: &[u8],
    magic: &[u8; 8],
    supported: u32,
) -> crate::Result<()> {
    if b.len() < 12 {
        return Err(crate::Error::NotBunkerFile {
            file: file.to_string(),
            kind,
            reason: format!("{} bytes is too short for a header", b.len()),
        });
    }
    if &b[..8] != magic {
        return Err(crate::Error::NotBunkerFile {
            file: file.to_string(),
            kind,
            reason: format!(
                "wrong magic {:?}, expected {:?}",
                String::from_utf8_lossy(&b[..8]),
                String::from_utf8_lossy(magic)
            ),
        });
    }
    let found = Le::u32(b, 8);
    if found != supported {
        return Err(crate::Error::UnsupportedVersion {
            file: file.to_string(),
            kind,
            found,
            supported,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn magic_and_version_errors_are_distinct() {
        let mut b = [0u8; 16];
        b[..8].copy_from_slice(b"BNKRPACK");
        Le::put_u32(&mut b, 8, 1);
        assert!(check_magic_version("f", "pack", &b, b"BNKRPACK", 1).is_ok());
        assert!(matches!(
            check_magic_version("f", "pack", &b, b"BNKRPACK", 2),
            Err(crate::Error::UnsupportedVersion {
                found: 1,
                supported: 2,
                ..
            })
        ));
        assert!(matches!(
            check_magic_version("f", "pack", &b, b"BNKRSNAP", 1),
            Err(crate::Error::NotBunkerFile { .. })
        ));
        assert!(matches!(
            check_magic_version("f", "pack", &b[..5], b"BNKRPACK", 1),
            Err(crate::Error::NotBunkerFile { .. })
        ));
    }
}
