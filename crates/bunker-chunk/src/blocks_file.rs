//! The bytes of a block hashes file: what the server stores beside a
//! snapshot's manifest and what crosses the wire in `PUT .../blocks` and
//! `GET .../blocks` (docs/FORMAT.md, "Block hashes"). Here so that the
//! store, the server and the client share one encoder.
//!
//! A 96-byte header, `count` chaining values of 32 bytes in image order, a
//! 16-byte footer. The header carries the tail's chaining value (the bytes
//! after the last whole block), so the file alone gives the image's root.

use std::io::{Seek, SeekFrom, Write};

pub const MAGIC: &[u8; 8] = b"BNKRBLKS";
pub const END_MAGIC: &[u8; 8] = b"BNKRBEND";
/// Version history: 1 — first format (2026-12).
pub const VERSION: u32 = 1;
pub const HEADER_LEN: usize = 96;
pub const CV_LEN: usize = 32;
pub const FOOTER_LEN: usize = 16;
/// The block length every snapshot written now uses: 1 MiB. Smaller
/// blocks read less around a change but cost 32 bytes per block per
/// snapshot (32 KiB per GiB at 1 MiB, a fifth of the manifest's size).
pub const DEFAULT_BLOCK_LEN: u64 = 1 << 20;

/// xxh3-64, the checksum of header and values.
pub fn checksum(bytes: &[u8]) -> u64 {
    xxhash_rust::xxh3::xxh3_64(bytes)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlocksHeader {
    /// A power of two of at least 1 KiB.
    pub block_len: u64,
    pub image_len: u64,
    /// Whole blocks listed: 0 for an image of at most one block (hashed
    /// from its bytes), else `image_len / block_len`.
    pub count: u64,
    /// Chaining value of the bytes after the last whole block; `None`
    /// when there are none (or no blocks are listed).
    pub tail: Option<[u8; 32]>,
}

impl BlocksHeader {
    /// The header of an image of `image_len` bytes in `block_len` blocks.
    pub fn for_image(block_len: u64, image_len: u64, tail: Option<[u8; 32]>) -> BlocksHeader {
        let count = crate::digest::full_blocks(image_len, block_len);
        BlocksHeader {
            block_len,
            image_len,
            count,
            tail: tail.filter(|_| count > 0 && image_len % block_len != 0),
        }
    }

    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let mut b = [0u8; HEADER_LEN];
        b[..8].copy_from_slice(MAGIC);
        b[8..12].copy_from_slice(&VERSION.to_le_bytes());
        b[12..16].copy_from_slice(&(HEADER_LEN as u32).to_le_bytes());
        b[16..24].copy_from_slice(&self.block_len.to_le_bytes());
        b[24..32].copy_from_slice(&self.image_len.to_le_bytes());
        b[32..40].copy_from_slice(&self.count.to_le_bytes());
        if let Some(tail) = &self.tail {
            b[40..44].copy_from_slice(&1u32.to_le_bytes());
            b[48..80].copy_from_slice(tail);
        }
        let sum = checksum(&b[..88]);
        b[88..96].copy_from_slice(&sum.to_le_bytes());
        b
    }

    /// Checks magic, version, checksum and that the fields describe an
    /// image; the error says what is wrong.
    pub fn decode(b: &[u8]) -> Result<BlocksHeader, String> {
        if b.len() < HEADER_LEN {
            return Err(format!("{} bytes is too short for a header", b.len()));
        }
        if &b[..8] != MAGIC {
            return Err(format!(
                "wrong magic {:?}, expected {:?}",
                String::from_utf8_lossy(&b[..8]),
                String::from_utf8_lossy(MAGIC)
            ));
        }
        let version = u32_at(b, 8);
        if version != VERSION {
            return Err(format!("version {version}, this bunker reads {VERSION}"));
        }
        if u64_at(b, 88) != checksum(&b[..88]) {
            return Err("header checksum mismatch".into());
        }
        let tail = match u32_at(b, 40) {
            0 => None,
            1 => Some(b[48..80].try_into().expect("32 bytes")),
            other => return Err(format!("tail flag {other}")),
        };
        let header = BlocksHeader {
            block_len: u64_at(b, 16),
            image_len: u64_at(b, 24),
            count: u64_at(b, 32),
            tail,
        };
        let expected = BlocksHeader::for_image(header.block_len, header.image_len, tail);
        if !crate::digest::valid_block_len(header.block_len)
            || expected.count != header.count
            || expected.tail.is_some() != header.tail.is_some()
        {
            return Err(format!(
                "the header does not describe an image: block {}, image {}, count {}, tail {}",
                header.block_len,
                header.image_len,
                header.count,
                header.tail.is_some()
            ));
        }
        Ok(header)
    }

    /// Length of the whole file.
    pub fn file_len(&self) -> u64 {
        HEADER_LEN as u64 + self.count * CV_LEN as u64 + FOOTER_LEN as u64
    }
}

/// The footer after chaining values whose [`checksum`] (streamed) is `sum`.
pub fn encode_footer(sum: u64) -> [u8; FOOTER_LEN] {
    let mut b = [0u8; FOOTER_LEN];
    b[..8].copy_from_slice(&sum.to_le_bytes());
    b[8..].copy_from_slice(END_MAGIC);
    b
}

/// The checksum a footer holds, after checking its magic.
pub fn decode_footer(b: &[u8]) -> Result<u64, String> {
    if b.len() != FOOTER_LEN || &b[8..] != END_MAGIC {
        return Err("footer missing or torn".into());
    }
    Ok(u64_at(b, 0))
}

/// Writes a block hashes file one chaining value at a time (nothing grows
/// with the image); the header goes in last, at the start.
pub struct BlocksEncoder<W: Write + Seek> {
    out: W,
    sum: xxhash_rust::xxh3::Xxh3,
    count: u64,
    /// The last value pushed, written when the next arrives or at the
    /// end: an image of exactly one block keeps none.
    pending: Option<[u8; 32]>,
}

impl<W: Write + Seek> BlocksEncoder<W> {
    /// Starts the file at `out`'s current position 0.
    pub fn new(mut out: W) -> std::io::Result<BlocksEncoder<W>> {
        out.write_all(&[0u8; HEADER_LEN])?;
        Ok(BlocksEncoder {
            out,
            sum: xxhash_rust::xxh3::Xxh3::new(),
            count: 0,
            pending: None,
        })
    }

    /// Appends the next whole block's chaining value.
    pub fn push(&mut self, cv: &[u8; 32]) -> std::io::Result<()> {
        self.count += 1;
        match self.pending.replace(*cv) {
            Some(before) => self.write(&before),
            None => Ok(()),
        }
    }

    fn write(&mut self, cv: &[u8; 32]) -> std::io::Result<()> {
        self.sum.update(cv);
        self.out.write_all(cv)
    }

    /// Completes the file for an image of `image_len` bytes in blocks of
    /// `block_len` with the tail's chaining value. `Err(InvalidInput)`
    /// when the values pushed do not match the image.
    pub fn finish(
        mut self,
        block_len: u64,
        image_len: u64,
        tail: Option<[u8; 32]>,
    ) -> std::io::Result<(W, BlocksHeader)> {
        let header = BlocksHeader::for_image(block_len, image_len, tail);
        if header.count == 0 && self.count <= 1 {
            self.count = 0;
        } else if let Some(last) = self.pending.take() {
            self.write(&last)?;
        }
        if header.count != self.count {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!(
                    "{} chaining values for an image of {image_len} bytes in blocks of \
                     {block_len}, which has {} whole blocks",
                    self.count, header.count
                ),
            ));
        }
        let footer = encode_footer(self.sum.digest());
        self.out.write_all(&footer)?;
        self.out.seek(SeekFrom::Start(0))?;
        self.out.write_all(&header.encode())?;
        self.out.flush()?;
        Ok((self.out, header))
    }
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_round_trip_and_refuse_what_does_not_describe_an_image() {
        for (block, len) in [
            (1u64 << 20, 0u64),
            (1 << 20, 1 << 20),
            (1 << 20, (5 << 20) + 7),
            (1024, 4096),
        ] {
            let h = BlocksHeader::for_image(block, len, Some([7; 32]));
            assert_eq!(BlocksHeader::decode(&h.encode()).unwrap(), h);
        }
        let mut bad = BlocksHeader::for_image(1 << 20, 5 << 20, None);
        bad.count = 4;
        let mut b = bad.encode();
        assert!(BlocksHeader::decode(&b)
            .unwrap_err()
            .contains("does not describe"));
        b[20] ^= 1;
        assert!(BlocksHeader::decode(&b).unwrap_err().contains("checksum"));
        b[0] = b'X';
        assert!(BlocksHeader::decode(&b).unwrap_err().contains("magic"));
        assert_eq!(decode_footer(&encode_footer(9)), Ok(9));
        assert!(decode_footer(&[0; 16]).is_err());
    }
}
