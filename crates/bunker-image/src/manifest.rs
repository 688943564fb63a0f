//! A snapshot's manifest spooled to an unlinked temporary file and mapped:
//! a 100 TB image has 400 million entries (16 GB), which must not sit in
//! heap memory. Every entry is checked once while spooling, so lookups
//! trust the map: end offsets strictly increase, the last is the image's
//! size, and no data chunk is longer than the repository allows.

use std::io::{BufWriter, Read, Write};
use std::path::Path;

use bunker_chunk::ChunkId;
use memmap2::Mmap;

use crate::mmap::map_private;
use crate::ImageError;

/// Bytes of one entry: end offset (u64 little-endian), then the chunk id.
pub(crate) const ENTRY_LEN: usize = 40;

/// One chunk of the image: bytes `start..end`, `id` zero for a zero chunk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Chunk {
    pub index: u64,
    pub start: u64,
    pub end: u64,
    pub id: ChunkId,
}

impl Chunk {
    pub fn len(&self) -> u64 {
        self.end - self.start
    }

    pub fn is_empty(&self) -> bool {
        self.end == self.start
    }

    pub fn is_zero(&self) -> bool {
        self.id.is_zero()
    }
}

pub(crate) struct Manifest {
    /// `None` for an empty image (a zero-length file cannot be mapped).
    map: Option<Mmap>,
    count: u64,
}

impl Manifest {
    /// Copies `count` entries from `src` into a temporary file (in `dir`,
    /// or the system's temporary directory), checking each, and maps it.
    /// `what` names the snapshot in errors.
    pub(crate) fn spool(
        mut src: impl Read,
        what: &str,
        count: u64,
        size: u64,
        max_chunk_len: u64,
        dir: Option<&Path>,
    ) -> Result<Manifest, ImageError> {
        let bad = |reason: String| ImageError::BadManifest {
            snapshot: what.to_string(),
            reason,
        };
        let file = match dir {
            Some(d) => tempfile::tempfile_in(d),
            None => tempfile::tempfile(),
        }
        .map_err(ImageError::Spool)?;
        let mut out = BufWriter::with_capacity(1 << 20, &file);
        let mut buf = [0u8; ENTRY_LEN];
        let mut start = 0u64;
        for index in 0..count {
            src.read_exact(&mut buf).map_err(|e| {
                bad(format!(
                    "it ends after {index} of its {count} entries ({e})"
                ))
            })?;
            let (end, id) = parse(&buf);
            if end <= start || end > size {
                return Err(bad(format!(
                    "entry {index} ends at byte {end}, not after {start} and within {size}"
                )));
            }
            if !id.is_zero() && end - start > max_chunk_len {
                return Err(bad(format!(
                    "entry {index} is a chunk of {} bytes; the repository's chunks are at most {max_chunk_len}",
                    end - start
                )));
            }
            out.write_all(&buf).map_err(ImageError::Spool)?;
            start = end;
        }
        if start != size {
            return Err(bad(format!(
                "its entries end at byte {start}, the image has {size}"
            )));
        }
        out.flush().map_err(ImageError::Spool)?;
        drop(out);
        let map = if count == 0 {
            None
        } else {
            Some(map_private(&file).map_err(ImageError::Spool)?)
        };
        Ok(Manifest { map, count })
    }

    pub(crate) fn count(&self) -> u64 {
        self.count
    }

    fn raw(&self, index: u64) -> &[u8; ENTRY_LEN] {
        let map = self.map.as_deref().expect("an entry of an empty manifest");
        let at = index as usize * ENTRY_LEN;
        map[at..at + ENTRY_LEN].try_into().expect("40 bytes")
    }

    fn end(&self, index: u64) -> u64 {
        parse(self.raw(index)).0
    }

    /// Chunk `index` (< count).
    pub(crate) fn chunk(&self, index: u64) -> Chunk {
        let (end, id) = parse(self.raw(index));
        let start = if index == 0 { 0 } else { self.end(index - 1) };
        Chunk {
            index,
            start,
            end,
            id,
        }
    }

    /// The index of the chunk holding byte `offset` (< the image's size),
    /// by binary search over the end offsets.
    pub(crate) fn find(&self, offset: u64) -> u64 {
        let (mut lo, mut hi) = (0u64, self.count);
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            if self.end(mid) <= offset {
                lo = mid + 1;
            } else {
                hi = mid;
            }
        }
        lo
    }
}

fn parse(buf: &[u8; ENTRY_LEN]) -> (u64, ChunkId) {
    let end = u64::from_le_bytes(buf[..8].try_into().expect("8 bytes"));
    let id = ChunkId(buf[8..].try_into().expect("32 bytes"));
    (end, id)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entries(list: &[(u64, u8)]) -> Vec<u8> {
        let mut out = Vec::new();
        for &(end, id) in list {
            out.extend_from_slice(&end.to_le_bytes());
            out.extend_from_slice(&[id; 32]);
        }
        out
    }

    #[test]
    fn find_maps_every_byte_to_its_chunk() {
        let bytes = entries(&[(10, 1), (30, 0), (31, 2), (100, 3)]);
        let m = Manifest::spool(&bytes[..], "t@1", 4, 100, 100, None).unwrap();
        for (offset, index) in [(0, 0), (9, 0), (10, 1), (29, 1), (30, 2), (31, 3), (99, 3)] {
            assert_eq!(m.find(offset), index, "byte {offset}");
        }
        assert_eq!(
            m.chunk(1),
            Chunk {
                index: 1,
                start: 10,
                end: 30,
                id: ChunkId::ZERO
            }
        );
        assert_eq!(m.chunk(3).start, 31);
    }

    #[test]
    fn bad_manifests_are_refused_naming_the_entry() {
        type Case<'a> = (&'a [(u64, u8)], u64, &'a str);
        let cases: [Case; 4] = [
            (&[(10, 1), (10, 2)], 20, "entry 1 ends at byte 10"),
            (&[(10, 1), (30, 2)], 20, "entry 1 ends at byte 30"),
            (&[(10, 1), (15, 2)], 20, "entries end at byte 15"),
            (&[(10, 1), (20, 2)], 20, "entry 0 is a chunk of 10 bytes"),
        ];
        for (list, size, want) in cases {
            let bytes = entries(list);
            let max = if want.contains("chunk of") { 5 } else { 100 };
            let e = Manifest::spool(&bytes[..], "t@1", list.len() as u64, size, max, None)
                .err()
                .unwrap();
            assert!(e.to_string().contains(want), "{e}");
        }
        let short = entries(&[(10, 1)]);
        let e = Manifest::spool(&short[..], "t@1", 2, 20, 100, None)
            .err()
            .unwrap();
        assert!(
            e.to_string().contains("ends after 1 of its 2 entries"),
            "{e}"
        );
    }

    #[test]
    fn a_long_zero_chunk_is_allowed() {
        let bytes = entries(&[(1000, 0), (1010, 1)]);
        Manifest::spool(&bytes[..], "t@1", 2, 1010, 100, None).unwrap();
    }

    #[test]
    fn an_empty_image_has_no_chunks() {
        let m = Manifest::spool(&[][..], "t@1", 0, 0, 100, None).unwrap();
        assert_eq!(m.count(), 0);
    }
}
