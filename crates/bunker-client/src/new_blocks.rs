//! The new image's block hashes and whole-image BLAKE3 for a
//! changed-extent backup, computed while the walk reads: a block that no
//! changed extent touches and that the base holds whole keeps the base's
//! chaining value; every other block (and the tail) is hashed from the
//! bytes the walk already read, and only the parts it did not read are
//! read from the source, so no byte of a changed block is read twice.
//!
//! Memory: the blocks the walk has bytes of and that are not yet hashed,
//! up to [`slack`] behind its read position (3 MiB at the default chunk
//! size); nothing grows with the volume.

use std::collections::VecDeque;
use std::io::BufWriter;

use bunker_api::Snapshot;
use bunker_changes::{ChangeMap, Kind};
use bunker_chunk::blocks_file::{BlocksEncoder, DEFAULT_BLOCK_LEN};
use bunker_chunk::digest::{block_cv, full_blocks, tail_cv, tail_start, TreeStack};

use crate::changed::{read_blocks, Cvs, Source};
use crate::{Error, Result};

/// How far behind the latest read a block stays open for more bytes: the
/// walk reads ahead of its position by less than a chunk (`max_len`) and
/// a read (256 KiB), and reads reused chunks back (samples) from its
/// position, so a block further behind is never read again.
pub(crate) fn slack(max_len: u64) -> u64 {
    2 * max_len + (1 << 20)
}

/// A block that must be hashed from the source, with the ranges of it the
/// walk has read so far.
struct Open {
    index: u64,
    bytes: Vec<u8>,
    /// Read ranges within the block, sorted and disjoint.
    have: Vec<(usize, usize)>,
}

/// The new block hashes, built in block order.
pub(crate) struct NewBlocks<'m> {
    map: &'m ChangeMap,
    block: u64,
    size: u64,
    base_size: u64,
    base_count: u64,
    base_cvs: Cvs,
    encoder: BlocksEncoder<BufWriter<std::fs::File>>,
    file: tempfile::NamedTempFile,
    tree: TreeStack,
    /// The next block to hash; `whole` (the tail) once all whole ones are.
    next: u64,
    whole: u64,
    open: VecDeque<Open>,
    /// Bytes read from the source here (what the walk had not).
    pub(crate) read: u64,
}

fn io(e: std::io::Error) -> Error {
    Error::io("writing the temporary block hashes", e)
}

impl<'m> NewBlocks<'m> {
    pub(crate) fn new(
        base_blocks: &tempfile::NamedTempFile,
        map: &'m ChangeMap,
        base: &Snapshot,
        size: u64,
    ) -> Result<Self> {
        let block = DEFAULT_BLOCK_LEN;
        let file = tempfile::NamedTempFile::new().map_err(io)?;
        let encoder = BlocksEncoder::new(BufWriter::with_capacity(
            256 << 10,
            file.reopen().map_err(io)?,
        ))
        .map_err(io)?;
        let (header, base_cvs) =
            read_blocks(base_blocks).map_err(|e| Error::io("reading block hashes", e))?;
        let base_count = header.map_or(0, |h| if h.block_len == block { h.count } else { 0 });
        Ok(NewBlocks {
            map,
            block,
            size,
            base_size: base.size_bytes,
            base_count,
            base_cvs,
            encoder,
            file,
            tree: TreeStack::new(),
            next: 0,
            whole: full_blocks(size, block),
            open: VecDeque::new(),
            read: 0,
        })
    }

    /// The byte range of block `index` (the tail's when `index == whole`).
    fn range(&self, index: u64) -> (u64, u64) {
        if index < self.whole {
            (index * self.block, (index + 1) * self.block)
        } else {
            (tail_start(self.size, self.block), self.size)
        }
    }

    /// Whether block `index` is hashed from the source: a changed extent
    /// touches it, the base does not hold it whole, or it is the tail.
    fn read_from_source(&self, index: u64) -> bool {
        if index >= self.whole || index >= self.base_count {
            return true;
        }
        let (start, end) = self.range(index);
        let touched = self
            .map
            .extents()
            .get(self.map.first_ending_after(start))
            .is_some_and(|e| e.offset < end);
        touched || end > self.base_size
    }

    /// Takes note of bytes the walk read at `offset`.
    pub(crate) fn seen(&mut self, offset: u64, bytes: &[u8]) {
        let end = (offset + bytes.len() as u64).min(self.size);
        if offset >= end {
            return;
        }
        let first = (offset / self.block).max(self.next).min(self.whole);
        let last = ((end - 1) / self.block).min(self.whole);
        for index in first..=last {
            if !self.read_from_source(index) {
                continue;
            }
            let (start, stop) = self.range(index);
            let (from, to) = (offset.max(start), end.min(stop));
            if from >= to {
                continue;
            }
            let at = match self.open.iter().position(|o| o.index >= index) {
                Some(i) if self.open[i].index == index => i,
                Some(i) => {
                    self.open.insert(i, Open::new(index, stop - start));
                    i
                }
                None => {
                    self.open.push_back(Open::new(index, stop - start));
                    self.open.len() - 1
                }
            };
            let o = &mut self.open[at];
            let (a, b) = ((from - start) as usize, (to - start) as usize);
            o.bytes[a..b].copy_from_slice(&bytes[(from - offset) as usize..(to - offset) as usize]);
            o.add(a, b);
        }
    }

    /// Hashes every block that ends at or before `upto`.
    pub(crate) fn advance(&mut self, upto: u64, source: &mut Source<'_>) -> Result<()> {
        while self.next < self.whole && (self.next + 1) * self.block <= upto {
            self.hash_next(source)?;
        }
        Ok(())
    }

    /// Hashes what is left; the image's BLAKE3 and the block hashes file.
    pub(crate) fn finish(
        mut self,
        source: &mut Source<'_>,
    ) -> Result<(blake3::Hash, tempfile::NamedTempFile, u64)> {
        if self.whole == 0 {
            let all = self.take(0, source)?;
            self.encoder
                .finish(self.block, self.size, None)
                .map_err(io)?;
            return Ok((blake3::hash(&all), self.file, self.read));
        }
        while self.next < self.whole {
            self.hash_next(source)?;
        }
        let start = tail_start(self.size, self.block);
        let tail = if start < self.size {
            let bytes = self.take(self.whole, source)?;
            Some(tail_cv(start, &bytes))
        } else {
            None
        };
        self.encoder
            .finish(self.block, self.size, tail)
            .map_err(io)?;
        let root = self.tree.finish(tail).expect("more than one block");
        Ok((root, self.file, self.read))
    }

    fn hash_next(&mut self, source: &mut Source<'_>) -> Result<()> {
        let index = self.next;
        let base_cv = if index < self.base_count {
            Some(
                self.base_cvs
                    .next()
                    .expect("count values")
                    .map_err(|e| Error::io("reading block hashes", e))?,
            )
        } else {
            None
        };
        let cv = match base_cv.filter(|_| !self.read_from_source(index)) {
            Some(cv) => cv,
            None => block_cv(self.block, index, &self.take(index, source)?),
        };
        self.encoder.push(&cv).map_err(io)?;
        self.tree.push(cv);
        self.next += 1;
        Ok(())
    }

    /// Block `index`'s bytes: what the walk read, the rest from `source`.
    fn take(&mut self, index: u64, source: &mut Source<'_>) -> Result<Vec<u8>> {
        let (start, end) = self.range(index);
        while self.open.front().is_some_and(|o| o.index < index) {
            self.open.pop_front();
        }
        let mut open = match self.open.front() {
            Some(o) if o.index == index => self.open.pop_front().expect("front"),
            _ => Open::new(index, end - start),
        };
        let mut at = 0usize;
        let len = (end - start) as usize;
        let gaps: Vec<(usize, usize)> = open
            .have
            .iter()
            .chain(std::iter::once(&(len, len)))
            .filter_map(|&(a, b)| {
                let gap = (at < a).then_some((at, a));
                at = at.max(b);
                gap
            })
            .collect();
        for (a, b) in gaps {
            let offset = start + a as u64;
            self.read += fill(source, self.map, offset, &mut open.bytes[a..b])
                .map_err(|e| Error::io(format!("reading the backup source at {offset}"), e))?;
        }
        Ok(open.bytes)
    }
}

impl Open {
    fn new(index: u64, len: u64) -> Open {
        Open {
            index,
            bytes: vec![0; len as usize],
            have: Vec::new(),
        }
    }

    /// Adds `a..b` to the read ranges, merging what touches.
    fn add(&mut self, a: usize, b: usize) {
        self.have.push((a, b));
        self.have.sort_unstable();
        let mut merged: Vec<(usize, usize)> = Vec::with_capacity(self.have.len());
        for &(a, b) in &self.have {
            match merged.last_mut() {
                Some(last) if a <= last.1 => last.1 = last.1.max(b),
                _ => merged.push((a, b)),
            }
        }
        self.have = merged;
    }
}

/// Reads `buf.len()` bytes at `offset`, taking the map's zero extents as
/// zeros without reading them; how many bytes were read.
fn fill(
    source: &mut Source<'_>,
    map: &ChangeMap,
    offset: u64,
    buf: &mut [u8],
) -> std::io::Result<u64> {
    let end = offset + buf.len() as u64;
    let mut at = offset;
    let mut read = 0;
    let first = map.first_ending_after(offset);
    for e in map.extents()[first..].iter().take_while(|e| e.offset < end) {
        if e.kind != Kind::Zero {
            continue;
        }
        let (zs, ze) = (e.offset.max(at), (e.offset + e.len).min(end));
        if zs > at {
            source(at, &mut buf[(at - offset) as usize..(zs - offset) as usize])?;
            read += zs - at;
        }
        buf[(zs - offset) as usize..(ze - offset) as usize].fill(0);
        at = ze.max(at);
    }
    if at < end {
        source(at, &mut buf[(at - offset) as usize..])?;
        read += end - at;
    }
    Ok(read)
}
