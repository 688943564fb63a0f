//! One immutable index run: a sorted array of 56-byte entries of one shard,
//! memory-mapped and searched in place.
//!
//! Chunk ids are BLAKE3 outputs, uniformly distributed, so interpolation
//! search finds an entry in two or three probes (a page or two touched)
//! where binary search would take ~20.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use bunker_chunk::ChunkId;

use crate::error::IoContext;
use crate::format::index::{
    bloom_bits, bloom_blocks_for, decode_entry, encode_entry, encode_run_footer, RunHeader,
    BLOOM_BLOCK_LEN, ENTRY_LEN, RUN_HEADER_LEN,
};
use crate::format::Le;
use crate::mmap::SealedMap;
use crate::{Error, Location, Result};

pub(crate) struct Run {
    pub shard: u8,
    pub run: u64,
    pub count: usize,
    bloom_blocks: u64,
    pub path: PathBuf,
    map: SealedMap,
}

impl Run {
    pub(crate) fn open(path: &Path, shard: u8, run: u64) -> Result<Run> {
        let file = File::open(path).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => Error::corrupt(
                path.display().to_string(),
                "index run listed in index/state is missing; rebuild the index from the packs",
            ),
            _ => Error::io(path, e),
        })?;
        let len = file.metadata().at(path)?.len();
        let map = SealedMap::open(&file).at(path)?;
        map.advise_random();
        let name = path.display().to_string();
        let header = RunHeader::decode(&name, map.bytes(), len)?;
        if header.shard != shard || header.run != run {
            return Err(Error::corrupt(name, "index run header names another run"));
        }
        let count = usize::try_from(header.count)
            .map_err(|_| Error::corrupt(path.display().to_string(), "entry count overflows"))?;
        Ok(Run {
            shard,
            run,
            count,
            bloom_blocks: header.bloom_blocks,
            path: path.to_path_buf(),
            map,
        })
    }

    fn entry(&self, i: usize) -> &[u8] {
        let at = RUN_HEADER_LEN + i * ENTRY_LEN;
        &self.map.bytes()[at..at + ENTRY_LEN]
    }

    /// The first 8 bytes of the id at `i`, big-endian: the sort order.
    fn key(&self, i: usize) -> u64 {
        u64::from_be_bytes(Le::bytes(self.entry(i), 0))
    }

    pub(crate) fn get(&self, i: usize) -> (ChunkId, Location) {
        decode_entry(self.entry(i))
    }

    /// False when the filter says `id` is certainly not in this run.
    fn may_contain(&self, id: &ChunkId) -> bool {
        let (block, bits) = bloom_bits(id, self.bloom_blocks);
        let at = RUN_HEADER_LEN + self.count * ENTRY_LEN + block as usize * BLOOM_BLOCK_LEN;
        let words = &self.map.bytes()[at..at + BLOOM_BLOCK_LEN];
        bits.iter()
            .all(|&b| Le::u64(words, (b as usize / 64) * 8) & (1 << (b % 64)) != 0)
    }

    /// The index of `id`'s entry in this run.
    pub(crate) fn position(&self, id: &ChunkId) -> Option<usize> {
        if !self.may_contain(id) {
            return None;
        }
        let target = id.prefix_u64();
        let (mut lo, mut hi) = (0usize, self.count);
        // Keys of this shard share their top SHARD_BITS bits.
        let low_bits = 64 - super::SHARD_BITS;
        let (mut lo_key, mut hi_key) = (
            u64::from(self.shard) << low_bits,
            (u64::from(self.shard) << low_bits) | ((1u64 << low_bits) - 1),
        );
        if target < lo_key || target > hi_key {
            return None;
        }
        let mut probes = 0;
        while hi - lo > 16 && probes < 6 {
            probes += 1;
            let span = (hi - lo) as u128;
            let width = u128::from(hi_key - lo_key) + 1;
            let guess = (u128::from(target.saturating_sub(lo_key)) * span / width) as usize;
            let mid = lo + guess.min(hi - lo - 1);
            let k = self.key(mid);
            match k
                .cmp(&target)
                .then_with(|| self.entry(mid)[..32].cmp(&id.0[..]))
            {
                std::cmp::Ordering::Equal => return Some(mid),
                std::cmp::Ordering::Less => {
                    lo = mid + 1;
                    lo_key = k;
                }
                std::cmp::Ordering::Greater => {
                    hi = mid;
                    hi_key = k;
                }
            }
        }
        // Binary search on what is left (also the fallback for skewed keys).
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            match self.entry(mid)[..32].cmp(&id.0[..]) {
                std::cmp::Ordering::Equal => return Some(mid),
                std::cmp::Ordering::Less => lo = mid + 1,
                std::cmp::Ordering::Greater => hi = mid,
            }
        }
        None
    }

    pub(crate) fn file_len(&self) -> u64 {
        self.map.bytes().len() as u64
    }

    /// Switches the map to sequential readahead for a merge that reads
    /// every entry (the run is deleted after the merge).
    pub(crate) fn prepare_scan(&self) {
        self.map.advise_sequential();
    }

    /// Drops this run's pages from the process's resident set.
    pub(crate) fn release(&self) {
        self.map.release_all();
    }

    /// Checks the entries' checksum against the footer (a full read).
    pub(crate) fn verify(&self) -> Result<()> {
        let bytes = self.map.bytes();
        let end =
            RUN_HEADER_LEN + self.count * ENTRY_LEN + self.bloom_blocks as usize * BLOOM_BLOCK_LEN;
        let body = &bytes[RUN_HEADER_LEN..end];
        let sum = crate::format::checksum(&[body]);
        let sorted = (1..self.count).all(|i| self.entry(i - 1)[..32] < self.entry(i)[..32]);
        let shard_ok = (0..self.count).all(|i| {
            usize::from(self.shard) == super::shard_of(&ChunkId(Le::bytes(self.entry(i), 0)))
        });
        let filter_ok =
            (0..self.count).all(|i| self.may_contain(&ChunkId(Le::bytes(self.entry(i), 0))));
        let end_magic =
            bytes.get(end + 8..end + 16) == Some(&crate::format::index::RUN_END_MAGIC[..]);
        if Le::u64(bytes, end) != sum || !end_magic || !sorted || !shard_ok || !filter_ok {
            return Err(Error::corrupt(
                self.path.display().to_string(),
                "index run entries do not match their checksum or order",
            ));
        }
        Ok(())
    }
}

/// Writes sorted, deduplicated entries as a run file (not synced: the
/// caller syncs all files of a flush together). Streams the entries: only
/// the filter (about 1.25 bytes per entry) is built in memory, sized for
/// `max_entries`; the count in the header is patched in at the end.
pub(crate) fn write_run(
    path: &Path,
    shard: u8,
    run: u64,
    max_entries: u64,
    entries: impl Iterator<Item = (ChunkId, Location)>,
) -> Result<()> {
    let file = File::create(path).at(path)?;
    let mut w = BufWriter::with_capacity(1 << 20, file);
    w.write_all(&[0u8; RUN_HEADER_LEN]).at(path)?;
    let bloom_blocks = bloom_blocks_for(max_entries);
    let mut bloom = vec![0u64; bloom_blocks as usize * 8];
    let mut hasher = xxhash_rust::xxh3::Xxh3::new();
    let mut buf = [0u8; ENTRY_LEN];
    let mut count = 0u64;
    for (id, loc) in entries {
        encode_entry(&id, &loc, &mut buf);
        hasher.update(&buf);
        w.write_all(&buf).at(path)?;
        let (block, bits) = bloom_bits(&id, bloom_blocks);
        for b in bits {
            bloom[block as usize * 8 + b as usize / 64] |= 1 << (b % 64);
        }
        count += 1;
    }
    // Encoded a slice at a time: a second copy of a large shard's filter
    // would double the merge's memory.
    let mut bytes = Vec::with_capacity(64 << 10);
    for words in bloom.chunks(8 << 10) {
        bytes.clear();
        bytes.extend(words.iter().flat_map(|w| w.to_le_bytes()));
        hasher.update(&bytes);
        w.write_all(&bytes).at(path)?;
    }
    w.write_all(&encode_run_footer(hasher.digest())).at(path)?;
    w.flush().at(path)?;
    let header = RunHeader {
        shard,
        run,
        count,
        bloom_blocks,
    };
    w.get_ref().write_all_at(&header.encode(), 0).at(path)?;
    Ok(())
}

/// Merges sorted runs (given newest first) into one sorted stream; on
/// equal ids the newest run's entry that `keep` accepts wins and the others
/// are skipped (an id none is kept for is dropped).
pub(crate) struct Merge<'a, F> {
    runs: &'a [std::sync::Arc<Run>],
    pos: Vec<usize>,
    keep: F,
}

impl<'a, F: FnMut(&ChunkId, &Location) -> bool> Merge<'a, F> {
    pub(crate) fn new(runs: &'a [std::sync::Arc<Run>], keep: F) -> Merge<'a, F> {
        Merge {
            runs,
            pos: vec![0; runs.len()],
            keep,
        }
    }
}

impl<F: FnMut(&ChunkId, &Location) -> bool> Iterator for Merge<'_, F> {
    type Item = (ChunkId, Location);

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            // Few runs (at most MAX_RUNS_PER_SHARD): a linear minimum is enough.
            let mut best: Option<ChunkId> = None;
            for (i, run) in self.runs.iter().enumerate() {
                if self.pos[i] < run.count {
                    let id = run.get(self.pos[i]).0;
                    if best.is_none_or(|b| id < b) {
                        best = Some(id);
                    }
                }
            }
            let id = best?;
            let mut chosen = None;
            for (j, run) in self.runs.iter().enumerate() {
                if self.pos[j] < run.count {
                    let (e, loc) = run.get(self.pos[j]);
                    if e == id {
                        self.pos[j] += 1;
                        if chosen.is_none() && (self.keep)(&e, &loc) {
                            chosen = Some((e, loc));
                        }
                    }
                }
            }
            if chosen.is_some() {
                return chosen;
            }
        }
    }
}
