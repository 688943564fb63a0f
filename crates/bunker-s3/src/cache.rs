//! A bounded local read cache of sealed pack objects, in fixed-size blocks.
//!
//! Block `i` of pack `p` holds bytes `i * block_bytes ..` of the object, in
//! the file `<dir>/<p as 16 hex>/<i as 8 hex>`. Guarantees:
//! - The block files add up to at most `capacity` bytes at every instant:
//!   room is made (least recently used blocks first) and reserved before a
//!   block is written.
//! - A block is served only if its file has the length and the xxh3 the
//!   cache recorded when it wrote it: a partial, truncated or flipped file
//!   is dropped and fetched again, never handed to the engine (which would
//!   quarantine a healthy pack on the BLAKE3 mismatch). Files are written
//!   to a temporary name and renamed.
//! - Concurrent misses of one block fetch it once: the first reader claims
//!   it, the others wait for it. Consecutive blocks a reader claims are
//!   fetched with one ranged GET.
//! - Contents are disposable: the record of what is cached lives in
//!   memory, so opening the cache removes every block a previous process
//!   left (only directories with pack-id names: the directory may be
//!   shared).

use std::collections::{BTreeMap, HashSet};
use std::fs::File;
use std::ops::{Range, RangeInclusive};
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard};

use bunker_store::{Error, PackId, Result};
use xxhash_rust::xxh3::xxh3_64;

type BlockKey = (PackId, u64);

pub(crate) struct Cache {
    dir: PathBuf,
    block_bytes: u64,
    capacity: u64,
    state: Mutex<State>,
    /// Signalled whenever a claimed block is stored or released.
    settled: Condvar,
}

#[derive(Default)]
struct State {
    blocks: BTreeMap<BlockKey, Block>,
    /// Last use → block, oldest first.
    lru: BTreeMap<u64, BlockKey>,
    tick: u64,
    /// Bytes of the block files, and of those being written.
    bytes: u64,
    /// Blocks a reader is fetching.
    claimed: HashSet<BlockKey>,
}

#[derive(Clone, Copy)]
struct Block {
    len: u64,
    hash: u64,
    tick: u64,
}

/// What a reader found for the blocks it asked about.
#[derive(Default)]
pub(crate) struct Claim {
    /// Stored blocks, to load.
    cached: Vec<(u64, Block)>,
    /// Blocks now claimed by the caller, to fetch and then `fill` or
    /// `release`.
    pub(crate) mine: Vec<u64>,
    /// Blocks another reader is fetching.
    waiting: Vec<u64>,
}

static NEXT_TMP: AtomicU64 = AtomicU64::new(0);

impl Cache {
    /// A cache in `dir` of at most `capacity` bytes, emptied of what an
    /// earlier process left.
    pub(crate) fn open(dir: PathBuf, capacity: u64, block_bytes: u64) -> Result<Cache> {
        std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
        for entry in std::fs::read_dir(&dir).map_err(|e| Error::io(&dir, e))? {
            let entry = entry.map_err(|e| Error::io(&dir, e))?;
            let name = entry.file_name();
            let ours = name
                .to_str()
                .is_some_and(|n| n.len() == 16 && n.bytes().all(|c| c.is_ascii_hexdigit()));
            if ours {
                std::fs::remove_dir_all(entry.path()).map_err(|e| Error::io(entry.path(), e))?;
            }
        }
        Ok(Cache {
            dir,
            block_bytes,
            capacity,
            state: Mutex::new(State::default()),
            settled: Condvar::new(),
        })
    }

    pub(crate) fn capacity(&self) -> u64 {
        self.capacity
    }

    pub(crate) fn block_bytes(&self) -> u64 {
        self.block_bytes
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn pack_dir(&self, pack: PackId) -> PathBuf {
        self.dir.join(format!("{:016x}", pack.0))
    }

    fn block_path(&self, pack: PackId, index: u64) -> PathBuf {
        self.pack_dir(pack).join(format!("{index:08x}"))
    }

    /// The blocks that hold `offset..offset + len` (len > 0).
    pub(crate) fn blocks(&self, offset: u64, len: u64) -> RangeInclusive<u64> {
        offset / self.block_bytes..=(offset + len - 1) / self.block_bytes
    }

    /// The bytes of blocks `blocks` in a pack of `pack_len` bytes.
    pub(crate) fn byte_range(&self, blocks: &Range<u64>, pack_len: u64) -> Range<u64> {
        let start = (blocks.start * self.block_bytes).min(pack_len);
        start..(blocks.end * self.block_bytes).min(pack_len)
    }

    /// Whether every block holding `offset..offset + len` (len > 0) of
    /// `pack` is stored (they may still fail their check when loaded).
    pub(crate) fn holds(&self, pack: PackId, offset: u64, len: u64) -> bool {
        let state = self.lock();
        self.blocks(offset, len)
            .all(|i| state.blocks.contains_key(&(pack, i)))
    }

    /// Sorts `wanted` blocks of `pack` into stored, claimed now by the
    /// caller, and being fetched by someone else.
    pub(crate) fn claim(&self, pack: PackId, wanted: impl Iterator<Item = u64>) -> Claim {
        let mut state = self.lock();
        let mut claim = Claim::default();
        for index in wanted {
            let key = (pack, index);
            if let Some(mut block) = state.blocks.get(&key).copied() {
                block.tick = state.touch(key, block.tick);
                claim.cached.push((index, block));
            } else if state.claimed.contains(&key) {
                claim.waiting.push(index);
            } else {
                state.claimed.insert(key);
                claim.mine.push(index);
            }
        }
        claim
    }

    /// Stores the fetched bytes of consecutive blocks from `first` on and
    /// settles their claims.
    pub(crate) fn fill(&self, pack: PackId, first: u64, bytes: &[u8]) {
        for (i, block) in bytes.chunks(self.block_bytes as usize).enumerate() {
            self.store(pack, first + i as u64, block);
        }
        let n = bytes.len().div_ceil(self.block_bytes as usize) as u64;
        self.release(pack, first..first + n);
    }

    /// Gives up claims (the fetch failed, or `fill` is done).
    pub(crate) fn release(&self, pack: PackId, blocks: impl IntoIterator<Item = u64>) {
        let mut state = self.lock();
        for index in blocks {
            state.claimed.remove(&(pack, index));
        }
        drop(state);
        self.settled.notify_all();
    }

    /// Waits until none of `blocks` is being fetched.
    fn wait(&self, pack: PackId, blocks: &[u64]) {
        let mut state = self.lock();
        while blocks.iter().any(|&i| state.claimed.contains(&(pack, i))) {
            state = self.settled.wait(state).unwrap_or_else(|p| p.into_inner());
        }
    }

    /// Writes one block, making room first; a block larger than the whole
    /// cache, or one already stored, is not written.
    fn store(&self, pack: PackId, index: u64, bytes: &[u8]) {
        let len = bytes.len() as u64;
        let key = (pack, index);
        {
            let mut state = self.lock();
            if len > self.capacity || state.blocks.contains_key(&key) {
                return;
            }
            while state.bytes + len > self.capacity {
                if !state.evict_oldest(self) {
                    return;
                }
            }
            state.bytes += len;
        }
        let path = self.block_path(pack, index);
        let tmp = path.with_extension(format!("tmp{}", NEXT_TMP.fetch_add(1, Ordering::Relaxed)));
        let written = std::fs::create_dir_all(self.pack_dir(pack))
            .and_then(|()| std::fs::write(&tmp, bytes))
            .and_then(|()| std::fs::rename(&tmp, &path));
        let mut state = self.lock();
        match written {
            Ok(()) => {
                state.tick += 1;
                let tick = state.tick;
                state.blocks.insert(
                    key,
                    Block {
                        len,
                        hash: xxh3_64(bytes),
                        tick,
                    },
                );
                state.lru.insert(tick, key);
            }
            Err(e) => {
                state.bytes -= len;
                let _ = std::fs::remove_file(&tmp);
                tracing::warn!("read cache: writing {}: {e}", path.display());
            }
        }
    }

    /// The bytes of a stored block, if its file is intact; otherwise the
    /// block is dropped (and fetched again by the caller).
    fn load(&self, pack: PackId, index: u64, block: Block) -> Option<Vec<u8>> {
        let path = self.block_path(pack, index);
        let read = || -> std::io::Result<Vec<u8>> {
            let f = File::open(&path)?;
            if f.metadata()?.len() != block.len {
                return Err(std::io::Error::other("wrong length"));
            }
            let mut buf = vec![0u8; block.len as usize];
            f.read_exact_at(&mut buf, 0)?;
            Ok(buf)
        };
        match read() {
            Ok(buf) if xxh3_64(&buf) == block.hash => Some(buf),
            r => {
                if let Err(e) = r {
                    tracing::warn!("read cache: dropping {}: {e}", path.display());
                } else {
                    tracing::warn!("read cache: dropping {}: contents changed", path.display());
                }
                let mut state = self.lock();
                // Only if it is still the block we looked at.
                if state
                    .blocks
                    .get(&(pack, index))
                    .is_some_and(|b| b.tick == block.tick)
                {
                    state.remove(self, (pack, index));
                }
                None
            }
        }
    }

    /// `len` bytes at `offset` of a pack of `pack_len` bytes (the range is
    /// within it), from the cache, with `fetch` for the missing bytes.
    pub(crate) fn read(
        &self,
        pack: PackId,
        pack_len: u64,
        offset: u64,
        len: u64,
        fetch: &dyn Fn(Range<u64>) -> Result<bytes::Bytes>,
    ) -> Result<Vec<u8>> {
        if len == 0 {
            return Ok(Vec::new());
        }
        let wanted = self.blocks(offset, len);
        let mut got: BTreeMap<u64, Vec<u8>> = BTreeMap::new();
        while got.len() as u64 != wanted.end() - wanted.start() + 1 {
            let todo = wanted.clone().filter(|i| !got.contains_key(i));
            let claim = self.claim(pack, todo);
            for (index, block) in claim.cached {
                if let Some(bytes) = self.load(pack, index, block) {
                    got.insert(index, bytes);
                }
            }
            let mut mine = claim.mine.as_slice();
            while let Some(&first) = mine.first() {
                let run = mine
                    .iter()
                    .zip(first..)
                    .take_while(|(&i, want)| i == *want)
                    .count();
                let blocks = first..first + run as u64;
                let bytes = match fetch(self.byte_range(&blocks, pack_len)) {
                    Ok(b) => b,
                    Err(e) => {
                        self.release(pack, mine.iter().copied());
                        return Err(e);
                    }
                };
                self.fill(pack, first, &bytes);
                for (i, chunk) in bytes.chunks(self.block_bytes as usize).enumerate() {
                    got.insert(first + i as u64, chunk.to_vec());
                }
                mine = &mine[run..];
            }
            if !claim.waiting.is_empty() {
                self.wait(pack, &claim.waiting);
            }
        }
        let mut out = Vec::with_capacity(len as usize);
        let end = offset + len;
        for (index, bytes) in got {
            let start = index * self.block_bytes;
            let from = offset.max(start) - start;
            let to = end.min(start + bytes.len() as u64) - start;
            out.extend_from_slice(&bytes[from as usize..to as usize]);
        }
        if out.len() as u64 != len {
            // The object is shorter than the length the caller checked.
            return Err(Error::Corrupt {
                file: format!("{:016x}", pack.0),
                pack: Some(pack),
                offset: Some(offset),
                chunk: None,
                reason: format!(
                    "read {} of {len} bytes: the object is shorter than its listed length",
                    out.len()
                ),
            });
        }
        Ok(out)
    }

    /// Forgets every block of `pack` (deleted).
    pub(crate) fn forget(&self, pack: PackId) {
        let mut state = self.lock();
        let keys: Vec<BlockKey> = state
            .blocks
            .range((pack, 0)..=(pack, u64::MAX))
            .map(|(k, _)| *k)
            .collect();
        for key in keys {
            state.remove(self, key);
        }
        let _ = std::fs::remove_dir(self.pack_dir(pack));
    }

    /// Bytes of the stored blocks (and of those being written).
    #[cfg(test)]
    pub(crate) fn bytes(&self) -> u64 {
        self.lock().bytes
    }
}

impl State {
    /// Marks `key` as just used; returns its new tick.
    fn touch(&mut self, key: BlockKey, old: u64) -> u64 {
        self.lru.remove(&old);
        self.tick += 1;
        self.lru.insert(self.tick, key);
        if let Some(b) = self.blocks.get_mut(&key) {
            b.tick = self.tick;
        }
        self.tick
    }

    fn remove(&mut self, cache: &Cache, key: BlockKey) {
        if let Some(b) = self.blocks.remove(&key) {
            self.lru.remove(&b.tick);
            self.bytes -= b.len;
            let path = cache.block_path(key.0, key.1);
            if let Err(e) = std::fs::remove_file(&path) {
                if e.kind() != std::io::ErrorKind::NotFound {
                    tracing::warn!("read cache: removing {}: {e}", path.display());
                }
            }
        }
    }

    /// Removes the least recently used block; false when there is none.
    fn evict_oldest(&mut self, cache: &Cache) -> bool {
        match self.lru.first_key_value().map(|(_, k)| *k) {
            Some(key) => {
                self.remove(cache, key);
                true
            }
            None => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    fn object(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 7 + i / 251) as u8).collect()
    }

    fn files_bytes(dir: &std::path::Path) -> u64 {
        let mut total = 0;
        for pack in std::fs::read_dir(dir).unwrap() {
            for f in std::fs::read_dir(pack.unwrap().path()).unwrap() {
                total += f.unwrap().metadata().unwrap().len();
            }
        }
        total
    }

    #[test]
    fn the_cache_stays_within_its_bound() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::open(dir.path().to_path_buf(), 10_000, 1000).unwrap();
        let obj = object(50_000);
        let fetch = |r: Range<u64>| {
            Ok(bytes::Bytes::copy_from_slice(
                &obj[r.start as usize..r.end as usize],
            ))
        };
        for pack in 0..5u64 {
            for offset in (0..49_000u64).step_by(3_333) {
                let got = cache
                    .read(PackId(pack), 50_000, offset, 1500, &fetch)
                    .unwrap();
                assert_eq!(got, &obj[offset as usize..offset as usize + 1500]);
                assert!(cache.bytes() <= 10_000);
                assert!(files_bytes(dir.path()) <= 10_000);
            }
        }
    }

    #[test]
    fn consecutive_missing_blocks_are_one_fetch_and_hits_are_none() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::open(dir.path().to_path_buf(), 1 << 20, 1000).unwrap();
        let obj = object(10_500);
        let fetches = AtomicUsize::new(0);
        let fetch = |r: Range<u64>| {
            fetches.fetch_add(1, Ordering::Relaxed);
            Ok(bytes::Bytes::copy_from_slice(
                &obj[r.start as usize..r.end as usize],
            ))
        };
        assert_eq!(
            cache.read(PackId(1), 10_500, 10, 10_490, &fetch).unwrap(),
            &obj[10..]
        );
        assert_eq!(fetches.load(Ordering::Relaxed), 1);
        assert_eq!(
            cache.read(PackId(1), 10_500, 2500, 5000, &fetch).unwrap(),
            &obj[2500..7500]
        );
        assert_eq!(fetches.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn a_damaged_block_file_is_fetched_again_not_served() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::open(dir.path().to_path_buf(), 1 << 20, 1000).unwrap();
        let obj = object(3000);
        let fetch = |r: Range<u64>| {
            Ok(bytes::Bytes::copy_from_slice(
                &obj[r.start as usize..r.end as usize],
            ))
        };
        cache.read(PackId(2), 3000, 0, 3000, &fetch).unwrap();
        let flipped = cache.block_path(PackId(2), 1);
        let mut bytes = std::fs::read(&flipped).unwrap();
        bytes[10] ^= 1;
        std::fs::write(&flipped, bytes).unwrap();
        std::fs::write(cache.block_path(PackId(2), 2), b"short").unwrap();
        assert_eq!(cache.read(PackId(2), 3000, 0, 3000, &fetch).unwrap(), obj);
    }

    #[test]
    fn concurrent_misses_of_one_block_fetch_it_once() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::open(dir.path().to_path_buf(), 1 << 20, 1 << 16).unwrap();
        let obj = object(1 << 16);
        let fetches = AtomicUsize::new(0);
        let fetch = |r: Range<u64>| {
            fetches.fetch_add(1, Ordering::Relaxed);
            std::thread::sleep(std::time::Duration::from_millis(50));
            Ok(bytes::Bytes::copy_from_slice(
                &obj[r.start as usize..r.end as usize],
            ))
        };
        std::thread::scope(|s| {
            for _ in 0..8 {
                s.spawn(|| {
                    let got = cache.read(PackId(3), 1 << 16, 100, 1000, &fetch).unwrap();
                    assert_eq!(got, &obj[100..1100]);
                });
            }
        });
        assert_eq!(fetches.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn opening_removes_what_an_earlier_process_left_and_nothing_else() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("00000000000000aa")).unwrap();
        std::fs::write(dir.path().join("00000000000000aa/00000000"), b"old").unwrap();
        std::fs::write(dir.path().join("keep-me"), b"x").unwrap();
        Cache::open(dir.path().to_path_buf(), 1000, 100).unwrap();
        assert!(!dir.path().join("00000000000000aa").exists());
        assert!(dir.path().join("keep-me").exists());
    }
}
