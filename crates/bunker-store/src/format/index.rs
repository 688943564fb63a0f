//! Index files: sorted runs of fixed-size entries, each with a blocked
//! Bloom filter, and the state file that says which runs are live and which
//! packs they cover.
//!
//! A run (`index/<shard>-<run>.run`, shard in hex, run id as 16 hex digits)
//! holds the entries of one shard (the top 4 bits of the chunk id) sorted by
//! id, so a lookup searches it in place; its filter lets a lookup skip a
//! run that does not hold the id after one cache line. Layout:
//! docs/FORMAT.md, "Index".

use bunker_chunk::ChunkId;

use super::{append_checksum, check_magic_version, checked_body, checksum, put_prefix, Le};
use crate::{Error, Location, PackId, Result};

pub const RUN_MAGIC: &[u8; 8] = b"BNKRIRUN";
pub const RUN_END_MAGIC: &[u8; 8] = b"BNKRIEND";
pub const STATE_MAGIC: &[u8; 8] = b"BNKRIDXS";
/// Version history: 1 — first format (2026-11).
pub const VERSION: u32 = 1;
pub const RUN_HEADER_LEN: usize = 64;
pub const RUN_FOOTER_LEN: usize = 16;
pub const ENTRY_LEN: usize = 56;
pub const STATE_HEADER_LEN: usize = 64;

pub fn encode_entry(id: &ChunkId, loc: &Location, b: &mut [u8]) {
    Le::put(b, 0, &id.0);
    Le::put_u64(b, 32, loc.pack.0);
    Le::put_u64(b, 40, loc.offset);
    Le::put_u32(b, 48, loc.raw_len);
    Le::put_u32(b, 52, loc.stored_len);
}

pub fn decode_entry(b: &[u8]) -> (ChunkId, Location) {
    (
        ChunkId(Le::bytes(b, 0)),
        Location {
            pack: PackId(Le::u64(b, 32)),
            offset: Le::u64(b, 40),
            raw_len: Le::u32(b, 48),
            stored_len: Le::u32(b, 52),
        },
    )
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RunHeader {
    pub shard: u8,
    pub run: u64,
    pub count: u64,
    pub bloom_blocks: u64,
}

pub const BLOOM_BLOCK_LEN: usize = 64;

/// Filter blocks for a run of up to `entries` entries (about 10 bits each).
pub fn bloom_blocks_for(entries: u64) -> u64 {
    (entries * 10).div_ceil(512).max(1)
}

/// The block and the seven bit positions (0..512) of `id` in a filter.
pub fn bloom_bits(id: &ChunkId, blocks: u64) -> (u64, [u32; 7]) {
    let h1 = Le::u64(&id.0, 8);
    let h2 = Le::u64(&id.0, 16);
    let mut bits = [0u32; 7];
    for (i, b) in bits.iter_mut().enumerate() {
        *b = ((h2 >> (9 * i)) & 511) as u32;
    }
    (h1 % blocks.max(1), bits)
}

impl RunHeader {
    pub fn encode(&self) -> [u8; RUN_HEADER_LEN] {
        let mut b = [0u8; RUN_HEADER_LEN];
        put_prefix(&mut b, RUN_MAGIC, VERSION, RUN_HEADER_LEN);
        b[16] = self.shard;
        Le::put_u64(&mut b, 24, self.run);
        Le::put_u64(&mut b, 32, self.count);
        Le::put_u64(&mut b, 40, self.bloom_blocks);
        let sum = checksum(&[&b[..56]]);
        Le::put_u64(&mut b, 56, sum);
        b
    }

    /// Decodes a header and checks that a file of `file_len` bytes holds
    /// exactly the entries and footer it announces.
    pub fn decode(file: &str, b: &[u8], file_len: u64) -> Result<RunHeader> {
        check_magic_version(file, "index run", b, RUN_MAGIC, VERSION)?;
        if b.len() < RUN_HEADER_LEN || Le::u64(b, 56) != checksum(&[&b[..56]]) {
            return Err(Error::corrupt(file, "index run header checksum mismatch"));
        }
        let h = RunHeader {
            shard: b[16],
            run: Le::u64(b, 24),
            count: Le::u64(b, 32),
            bloom_blocks: Le::u64(b, 40),
        };
        let expect = h
            .count
            .checked_mul(ENTRY_LEN as u64)
            .and_then(|n| n.checked_add(h.bloom_blocks.checked_mul(BLOOM_BLOCK_LEN as u64)?))
            .and_then(|n| n.checked_add((RUN_HEADER_LEN + RUN_FOOTER_LEN) as u64));
        if expect != Some(file_len) {
            return Err(Error::corrupt(
                file,
                format!(
                    "index run announces {} entries but is {file_len} bytes (truncated?)",
                    h.count
                ),
            ));
        }
        Ok(h)
    }
}

pub fn encode_run_footer(entries_checksum: u64) -> [u8; RUN_FOOTER_LEN] {
    let mut b = [0u8; RUN_FOOTER_LEN];
    Le::put_u64(&mut b, 0, entries_checksum);
    Le::put(&mut b, 8, RUN_END_MAGIC);
    b
}

/// A live run as listed in the state file.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RunRef {
    pub shard: u8,
    pub run: u64,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct IndexState {
    pub generation: u64,
    pub next_run: u64,
    pub runs: Vec<RunRef>,
    /// Inclusive ranges of pack ids whose records are all in the runs.
    pub covered: Vec<(u64, u64)>,
}

impl IndexState {
    /// A new run of `shard`, with the next unused run id.
    pub fn allocate_run(&mut self, shard: u8) -> RunRef {
        let r = RunRef {
            shard,
            run: self.next_run,
        };
        self.next_run += 1;
        r
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut b = vec![0u8; STATE_HEADER_LEN + 16 * (self.runs.len() + self.covered.len())];
        put_prefix(&mut b, STATE_MAGIC, VERSION, STATE_HEADER_LEN);
        Le::put_u64(&mut b, 16, self.generation);
        Le::put_u64(&mut b, 24, self.next_run);
        Le::put_u32(&mut b, 32, self.runs.len() as u32);
        Le::put_u32(&mut b, 36, self.covered.len() as u32);
        let mut at = STATE_HEADER_LEN;
        for r in &self.runs {
            b[at] = r.shard;
            Le::put_u64(&mut b, at + 8, r.run);
            at += 16;
        }
        for &(lo, hi) in &self.covered {
            Le::put_u64(&mut b, at, lo);
            Le::put_u64(&mut b, at + 8, hi);
            at += 16;
        }
        append_checksum(&mut b);
        b
    }

    pub fn decode(file: &str, b: &[u8]) -> Result<IndexState> {
        check_magic_version(file, "index state", b, STATE_MAGIC, VERSION)?;
        if b.len() < STATE_HEADER_LEN + 8 {
            return Err(Error::corrupt(file, "index state truncated"));
        }
        let body =
            checked_body(b).ok_or_else(|| Error::corrupt(file, "index state checksum mismatch"))?;
        let runs_n = Le::u32(b, 32) as usize;
        let ranges_n = Le::u32(b, 36) as usize;
        if body.len() != STATE_HEADER_LEN + 16 * (runs_n + ranges_n) {
            return Err(Error::corrupt(
                file,
                "index state length does not match its counts",
            ));
        }
        let mut at = STATE_HEADER_LEN;
        let mut runs = Vec::with_capacity(runs_n);
        for _ in 0..runs_n {
            runs.push(RunRef {
                shard: b[at],
                run: Le::u64(b, at + 8),
            });
            at += 16;
        }
        let mut covered = Vec::with_capacity(ranges_n);
        for _ in 0..ranges_n {
            covered.push((Le::u64(b, at), Le::u64(b, at + 8)));
            at += 16;
        }
        Ok(IndexState {
            generation: Le::u64(b, 16),
            next_run: Le::u64(b, 24),
            runs,
            covered,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2_000))]
        #[test]
        fn state_round_trip(gen in any::<u64>(), runs in proptest::collection::vec((any::<u8>(), any::<u64>()), 0..50), covered in proptest::collection::vec((any::<u64>(), any::<u64>()), 0..20)) {
            let s = IndexState { generation: gen, next_run: 5, runs: runs.into_iter().map(|(shard, run)| RunRef { shard, run }).collect(), covered };
            let b = s.encode();
            prop_assert_eq!(IndexState::decode("state", &b).unwrap(), s);
        }

        #[test]
        fn decoders_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..300), len in any::<u64>()) {
            let _ = IndexState::decode("fuzz", &bytes);
            let _ = RunHeader::decode("fuzz", &bytes, len);
            if bytes.len() >= ENTRY_LEN {
                let _ = decode_entry(&bytes[..ENTRY_LEN]);
            }
        }
    }

    #[test]
    fn truncated_run_is_named() {
        let h = RunHeader {
            shard: 3,
            run: 9,
            count: 10,
            bloom_blocks: 1,
        };
        let full = (RUN_HEADER_LEN + RUN_FOOTER_LEN + 10 * ENTRY_LEN + BLOOM_BLOCK_LEN) as u64;
        assert_eq!(RunHeader::decode("r", &h.encode(), full).unwrap(), h);
        let e = RunHeader::decode("r", &h.encode(), full - 1).unwrap_err();
        assert!(e.to_string().contains("truncated"), "{e}");
    }
}
