//! The chunk index: chunk id -> location of its record in a pack.
//!
//! Two layers. On disk, per shard (the top 4 bits of the id), a few
//! immutable sorted runs, memory-mapped and searched in place; a flush adds
//! one run per touched shard and merges a shard's smallest runs when it has
//! too many, so the index grows without a global rewrite and is never loaded
//! into heap memory. In memory, a striped table holds entries of packs not
//! yet flushed and the reservations of chunks being written right now.
//!
//! A reservation is how concurrent streams store a chunk once: the first
//! stream to `reserve` an unknown id gets [`Reservation::Mine`] and must
//! `publish` (or `abandon`) it; others get [`Reservation::Pending`] and may
//! reference the chunk, waiting for it at commit with [`Index::wait`].
//!
//! Tombstones hide locations that must not be handed out any more: packs GC
//! condemned and records verify quarantined. A lookup skips a buried entry
//! (an older entry for the same id may still answer); GC's compaction drops
//! them from the runs.
//!
//! The index is a cache of the packs. `index/state` lists the live runs and
//! the packs they cover; packs not covered are re-read from their trailers
//! at open. Layout: docs/FORMAT.md, "Index".

mod run;

use std::cmp::Reverse;
use std::collections::{BTreeSet, HashMap, HashSet};
use std::hash::{BuildHasherDefault, Hasher};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, RwLock};

use bunker_chunk::ChunkId;

use crate::format::index::IndexState;
use crate::format::index::RunRef;
use crate::{durable, Error, Location, PackId, Result};

use run::write_run;
pub(crate) use run::Run;

/// Shards by the top [`SHARD_BITS`] bits of the chunk id. Few shards keep
/// a flush to a handful of fsyncs; tiered merging within a shard keeps
/// rewrites logarithmic, so shards need not be small.
pub(crate) const SHARD_BITS: u32 = 4;
pub(crate) const SHARDS: usize = 1 << SHARD_BITS;

pub(crate) fn shard_of(id: &ChunkId) -> usize {
    usize::from(id.0[0] >> (8 - SHARD_BITS))
}

/// Size-tiered merging: [`MERGE_FAN_IN`] runs of a shard whose sizes are
/// within a factor of [`MERGE_SIZE_RATIO`] are merged into one, so an entry
/// is rewritten about log4(n / flush size) times in its life and a shard
/// holds a few runs per size tier.
const MERGE_FAN_IN: usize = 4;
const MERGE_SIZE_RATIO: usize = 4;
/// Beyond this many runs in a shard the smallest ones merge regardless.
const MAX_RUNS_PER_SHARD: usize = 12;
/// Lookups between checks of this process's file-backed resident memory.
const RESIDENCY_CHECK_EVERY: u64 = 256;
/// File-backed resident memory above which mapped index pages are dropped
/// from the resident set (they stay in the page cache). Between checks at
/// most ~256 lookups more can become resident (each fault may map up to 16
/// cached neighbour pages: the kernel's fault-around).
const RESIDENT_FILE_BUDGET: u64 = 256 << 20;

/// What `reserve` found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reservation {
    /// Stored already, here.
    Known(Location),
    /// Another writer is storing it; reference it and `wait` before commit.
    Pending,
    /// Unknown: the caller stores it, then `publish`es or `abandon`s.
    Mine,
}

#[derive(Clone, Copy, Debug)]
enum Slot {
    Pending,
    Stored(Location),
}

/// Hashes a chunk id by 8 of its bytes: they are uniformly random already.
#[derive(Default)]
struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        if bytes.len() >= 16 {
            let mut b = [0u8; 8];
            b.copy_from_slice(&bytes[8..16]);
            self.0 = u64::from_le_bytes(b);
        }
    }
}

/// Locations lookups must not return.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Tombstones {
    /// Packs GC condemned: deleted, or about to be.
    pub packs: BTreeSet<u64>,
    /// Records verify found damaged: (chunk, pack, offset).
    pub records: BTreeSet<(ChunkId, u64, u64)>,
}

impl Tombstones {
    pub fn buries(&self, id: &ChunkId, loc: &Location) -> bool {
        self.packs.contains(&loc.pack.0) || self.records.contains(&(*id, loc.pack.0, loc.offset))
    }

    pub fn is_empty(&self) -> bool {
        self.packs.is_empty() && self.records.is_empty()
    }
}

/// Inclusive ranges of pack ids whose records are all in the runs.
pub(crate) type CoveredRanges = Vec<(u64, u64)>;

/// The records of one sealed pack, waiting for a flush.
type SealedEntries = (PackId, Vec<(ChunkId, Location)>);

type IdMap<V> = HashMap<ChunkId, V, BuildHasherDefault<IdHasher>>;

struct Stripe {
    slots: Mutex<IdMap<Slot>>,
    published: Condvar,
}

pub struct Index {
    dir: PathBuf,
    stripes: Vec<Stripe>,
    shards: Vec<RwLock<Vec<Arc<Run>>>>,
    /// Held for the whole of a flush: one flush at a time.
    state: Mutex<IndexState>,
    queued: Mutex<Vec<SealedEntries>>,
    queued_entries: AtomicUsize,
    flush_at: usize,
    lookups: AtomicU64,
    tombstones: RwLock<Tombstones>,
    /// False while there are no tombstones: lookups skip the lock.
    any_tombstones: AtomicBool,
    /// Set while GC holds the runs it marked: flushes add runs but merge none.
    merges_paused: AtomicBool,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Index {
    /// Opens (or creates) the index in `dir`, mapping every live run and
    /// removing run files that no state lists (left by a crashed flush).
    pub fn open(dir: &Path, flush_at: usize) -> Result<Index> {
        durable::create_dir_all(dir)?;
        let state_path = dir.join("state");
        let state = match std::fs::read(&state_path) {
            Ok(bytes) => IndexState::decode("index/state", &bytes)?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => IndexState::default(),
            Err(e) => return Err(Error::io(&state_path, e)),
        };
        let mut shards: Vec<Vec<Arc<Run>>> = (0..SHARDS).map(|_| Vec::new()).collect();
        let live: HashSet<RunRef> = state.runs.iter().copied().collect();
        for r in &state.runs {
            let run = Run::open(&run_path(dir, *r), r.shard, r.run)?;
            let shard = shards.get_mut(usize::from(r.shard)).ok_or_else(|| {
                Error::corrupt("index/state", format!("shard {} out of range", r.shard))
            })?;
            shard.push(Arc::new(run));
        }
        for runs in &mut shards {
            runs.sort_by_key(|r| std::cmp::Reverse(r.run));
        }
        remove_orphan_runs(dir, &live)?;
        Ok(Index {
            dir: dir.to_path_buf(),
            stripes: (0..256)
                .map(|_| Stripe {
                    slots: Mutex::new(IdMap::default()),
                    published: Condvar::new(),
                })
                .collect(),
            shards: shards.into_iter().map(RwLock::new).collect(),
            state: Mutex::new(state),
            queued: Mutex::new(Vec::new()),
            queued_entries: AtomicUsize::new(0),
            flush_at: flush_at.max(1),
            lookups: AtomicU64::new(0),
            tombstones: RwLock::new(Tombstones::default()),
            any_tombstones: AtomicBool::new(false),
            merges_paused: AtomicBool::new(false),
        })
    }

    fn stripe(&self, id: &ChunkId) -> &Stripe {
        &self.stripes[usize::from(id.0[0])]
    }

    fn lookup_runs(&self, id: &ChunkId) -> Option<Location> {
        if self.lookups.fetch_add(1, Ordering::Relaxed) % RESIDENCY_CHECK_EVERY
            == RESIDENCY_CHECK_EVERY - 1
            && resident_file_bytes() > RESIDENT_FILE_BUDGET
        {
            self.release_pages();
        }
        let runs = self.shards[shard_of(id)]
            .read()
            .unwrap_or_else(|p| p.into_inner());
        find_in(&runs, id, self.tombstones().as_deref()).map(|(_, _, loc)| loc)
    }

    /// The tombstones, or None when there are none (the common case).
    fn tombstones(&self) -> Option<std::sync::RwLockReadGuard<'_, Tombstones>> {
        self.any_tombstones
            .load(Ordering::Acquire)
            .then(|| self.tombstones.read().unwrap_or_else(|p| p.into_inner()))
    }

    /// Whether lookups must not hand out `loc` for `id` (a condemned pack,
    /// a quarantined record).
    pub(crate) fn is_buried(&self, id: &ChunkId, loc: &Location) -> bool {
        self.tombstones().is_some_and(|t| t.buries(id, loc))
    }

    /// Replaces the tombstones (the repository persists them first).
    pub(crate) fn set_tombstones(&self, t: Tombstones) {
        let mut cur = self.tombstones.write().unwrap_or_else(|p| p.into_inner());
        self.any_tombstones.store(!t.is_empty(), Ordering::Release);
        *cur = t;
    }

    pub(crate) fn current_tombstones(&self) -> Tombstones {
        self.tombstones
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The runs of every shard (newest first) and the pack ranges they
    /// cover, taken together under the flush lock: what GC marks against,
    /// and the packs it may sweep. (Taken apart, a flush in between could
    /// make a pack a candidate whose entries are not in the runs marked.)
    pub(crate) fn freeze(&self) -> (Vec<Vec<Arc<Run>>>, CoveredRanges) {
        let state = lock(&self.state);
        let runs = self
            .shards
            .iter()
            .map(|s| s.read().unwrap_or_else(|p| p.into_inner()).clone())
            .collect();
        (runs, state.covered.clone())
    }

    /// While paused, flushes add runs but never merge: the runs GC marked
    /// stay the runs lookups use.
    pub(crate) fn pause_merges(&self, paused: bool) {
        self.merges_paused.store(paused, Ordering::SeqCst);
    }

    /// Drops mapped index pages from the resident set (the page cache keeps
    /// them): resident memory stays flat however large the index grows.
    pub fn release_pages(&self) {
        for shard in &self.shards {
            for r in shard.read().unwrap_or_else(|p| p.into_inner()).iter() {
                r.release();
            }
        }
    }

    /// Where `id` is stored, if it is (pending chunks count as absent).
    pub fn lookup(&self, id: &ChunkId) -> Option<Location> {
        match lock(&self.stripe(id).slots).get(id) {
            Some(Slot::Stored(loc)) if !self.is_buried(id, loc) => return Some(*loc),
            Some(Slot::Stored(_)) => {}
            Some(Slot::Pending) => return None,
            None => {}
        }
        self.lookup_runs(id)
    }

    pub(crate) fn reserve(&self, id: &ChunkId) -> Reservation {
        let mut slots = lock(&self.stripe(id).slots);
        match slots.get(id) {
            Some(Slot::Stored(loc)) if !self.is_buried(id, loc) => Reservation::Known(*loc),
            Some(Slot::Pending) => Reservation::Pending,
            _ => {
                // Checked under the stripe lock: a flush removes entries from
                // the table only after their run is visible, so an id is
                // always in one of the two when this lock is held.
                if let Some(loc) = self.lookup_runs(id) {
                    return Reservation::Known(loc);
                }
                slots.insert(*id, Slot::Pending);
                Reservation::Mine
            }
        }
    }

    /// What `reserve` would answer for a chunk in the in-memory table,
    /// without reserving it.
    pub(crate) fn reserve_peek(&self, id: &ChunkId) -> Option<Reservation> {
        match lock(&self.stripe(id).slots).get(id) {
            Some(Slot::Stored(loc)) if !self.is_buried(id, loc) => Some(Reservation::Known(*loc)),
            Some(Slot::Pending) => Some(Reservation::Pending),
            _ => None,
        }
    }

    pub(crate) fn publish(&self, id: &ChunkId, loc: Location) {
        let stripe = self.stripe(id);
        lock(&stripe.slots).insert(*id, Slot::Stored(loc));
        stripe.published.notify_all();
    }

    /// Points `id` at a copy GC made (unless a writer holds a reservation
    /// for it, which cannot happen for a chunk the index knows).
    pub(crate) fn relocate(&self, id: &ChunkId, loc: Location) {
        let mut slots = lock(&self.stripe(id).slots);
        if !matches!(slots.get(id), Some(Slot::Pending)) {
            slots.insert(*id, Slot::Stored(loc));
        }
    }

    /// Gives up a reservation whose chunk was not stored (a failed write).
    pub(crate) fn abandon(&self, id: &ChunkId) {
        let stripe = self.stripe(id);
        let mut slots = lock(&stripe.slots);
        if matches!(slots.get(id), Some(Slot::Pending)) {
            slots.remove(id);
        }
        drop(slots);
        stripe.published.notify_all();
    }

    /// Waits until a pending chunk is published; `None` if its writer gave
    /// up and nobody stored it.
    pub(crate) fn wait(&self, id: &ChunkId) -> Option<Location> {
        let stripe = self.stripe(id);
        let mut slots = lock(&stripe.slots);
        loop {
            match slots.get(id) {
                Some(Slot::Stored(loc)) if !self.is_buried(id, loc) => return Some(*loc),
                Some(Slot::Pending) => {
                    slots = stripe
                        .published
                        .wait(slots)
                        .unwrap_or_else(|p| p.into_inner());
                }
                _ => {
                    drop(slots);
                    return self.lookup_runs(id);
                }
            }
        }
    }

    /// Queues the records of a sealed pack for the next flush and makes them
    /// visible to lookups (records found by recovery are in no table yet).
    pub fn add_sealed(&self, pack: PackId, mut entries: Vec<(ChunkId, Location)>) {
        if let Some(t) = self.tombstones() {
            entries.retain(|(id, loc)| !t.buries(id, loc));
        }
        for (id, loc) in &entries {
            let mut slots = lock(&self.stripe(id).slots);
            match slots.get(id) {
                // The same choice between copies a flush makes.
                Some(Slot::Stored(old))
                    if (old.pack, old.offset) >= (loc.pack, loc.offset)
                        && !self.is_buried(id, old) => {}
                Some(Slot::Pending) => {}
                _ => {
                    slots.insert(*id, Slot::Stored(*loc));
                }
            }
        }
        self.queued_entries
            .fetch_add(entries.len(), Ordering::Relaxed);
        lock(&self.queued).push((pack, entries));
    }

    pub fn needs_flush(&self) -> bool {
        self.queued_entries.load(Ordering::Relaxed) >= self.flush_at
    }

    pub(crate) fn is_covered(&self, pack: PackId) -> bool {
        lock(&self.state)
            .covered
            .iter()
            .any(|&(lo, hi)| lo <= pack.0 && pack.0 <= hi)
    }

    /// The highest pack id the index has ever covered.
    pub(crate) fn max_covered(&self) -> Option<u64> {
        lock(&self.state).covered.last().map(|&(_, hi)| hi)
    }

    /// Writes queued entries as new runs, merges crowded shards, publishes a
    /// new `index/state`, then drops the flushed entries from memory.
    pub fn flush(&self) -> Result<()> {
        let mut state = lock(&self.state);
        let batches = std::mem::take(&mut *lock(&self.queued));
        if batches.is_empty() {
            return Ok(());
        }
        let flushed_entries: usize = batches.iter().map(|(_, e)| e.len()).sum();
        match self.flush_locked(&mut state, &batches) {
            Ok(()) => {
                self.queued_entries
                    .fetch_sub(flushed_entries, Ordering::Relaxed);
                Ok(())
            }
            Err(e) => {
                // Keep the entries queued for the next attempt.
                let mut q = lock(&self.queued);
                let mut restored = batches;
                restored.append(&mut q);
                *q = restored;
                Err(e)
            }
        }
    }

    fn flush_locked(
        &self,
        state: &mut IndexState,
        batches: &[(PackId, Vec<(ChunkId, Location)>)],
    ) -> Result<()> {
        let mut by_shard: Vec<Vec<(ChunkId, Location)>> = (0..SHARDS).map(|_| Vec::new()).collect();
        for (_, entries) in batches {
            for e in entries {
                by_shard[shard_of(&e.0)].push(*e);
            }
        }
        let mut new_state = state.clone();
        let mut new_lists: Vec<(usize, Vec<Arc<Run>>)> = Vec::new();
        let mut obsolete: Vec<PathBuf> = Vec::new();
        let mut created: Vec<PathBuf> = Vec::new();
        let result = (|| -> Result<()> {
            for (shard, mut entries) in by_shard.into_iter().enumerate() {
                if entries.is_empty() {
                    continue;
                }
                // A chunk stored twice (docs/FORMAT.md, "Index"): the
                // highest (pack, offset) wins, as across runs, where newer
                // runs hold later packs; never whatever the sort left first.
                entries.sort_unstable_by_key(|(id, loc)| {
                    (*id, Reverse(loc.pack), Reverse(loc.offset))
                });
                entries.dedup_by(|a, b| a.0 == b.0);
                let r = new_state.allocate_run(shard as u8);
                let path = run_path(&self.dir, r);
                created.push(path.clone());
                write_run(
                    &path,
                    r.shard,
                    r.run,
                    entries.len() as u64,
                    entries.into_iter(),
                )?;
                let mut list = vec![Arc::new(Run::open(&path, r.shard, r.run)?)];
                list.extend(
                    self.shards[shard]
                        .read()
                        .unwrap_or_else(|p| p.into_inner())
                        .iter()
                        .cloned(),
                );
                while !self.merges_paused.load(Ordering::SeqCst) {
                    let Some(take) = plan_merge(&mut list) else {
                        break;
                    };
                    let merged_ref = new_state.allocate_run(shard as u8);
                    let merged_path = run_path(&self.dir, merged_ref);
                    created.push(merged_path.clone());
                    let (merged, gone) =
                        merge_runs(take, &merged_path, merged_ref, &self.current_tombstones())?;
                    obsolete.extend(gone);
                    list.push(merged);
                }
                list.sort_by_key(|r| std::cmp::Reverse(r.run));
                new_lists.push((shard, list));
            }
            // One pass of fsyncs after all writes: the first forces the
            // journal commit, the rest find their data mostly written.
            for p in &created {
                durable::sync_file_at(p)?;
                drop_from_page_cache(p);
            }
            durable::sync_dir(&self.dir)?;
            new_state.runs = self.run_refs_with(&new_lists);
            for (pack, _) in batches {
                add_covered(&mut new_state.covered, pack.0);
            }
            new_state.generation += 1;
            durable::replace_file(&self.dir.join("state"), &new_state.encode())
        })();
        if let Err(e) = result {
            for p in created {
                let _ = std::fs::remove_file(p);
            }
            return Err(e);
        }
        *state = new_state;
        for (shard, list) in new_lists {
            *self.shards[shard]
                .write()
                .unwrap_or_else(|p| p.into_inner()) = list;
        }
        for p in obsolete {
            let _ = std::fs::remove_file(p);
        }
        let flushed: HashSet<PackId> = batches.iter().map(|(p, _)| *p).collect();
        for stripe in &self.stripes {
            lock(&stripe.slots).retain(
                |_, slot| !matches!(slot, Slot::Stored(loc) if flushed.contains(&loc.pack)),
            );
        }
        Ok(())
    }

    /// Rewrites, shard by shard, those of `marked` (runs GC marked against)
    /// that are still live as one run without buried entries. One shard at
    /// a time under the flush lock: ingest flushes wait for one shard's
    /// merge at most. Returns the entries dropped.
    pub(crate) fn compact(&self, marked: &[Vec<Arc<Run>>]) -> Result<u64> {
        let mut dropped = 0u64;
        for (shard, marked) in marked.iter().enumerate() {
            let mut state = lock(&self.state);
            let current = self.shards[shard]
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .clone();
            let (take, keep): (Vec<Arc<Run>>, Vec<Arc<Run>>) = current
                .into_iter()
                .partition(|r| marked.iter().any(|m| m.run == r.run));
            if take.is_empty() {
                continue;
            }
            let mut new_state = state.clone();
            let r = new_state.allocate_run(shard as u8);
            let path = run_path(&self.dir, r);
            let before: usize = take.iter().map(|r| r.count).sum();
            let result = (|| -> Result<(Vec<Arc<Run>>, Vec<PathBuf>)> {
                let (merged, gone) = merge_runs(take, &path, r, &self.current_tombstones())?;
                durable::sync_file_at(&path)?;
                drop_from_page_cache(&path);
                durable::sync_dir(&self.dir)?;
                dropped += (before - merged.count) as u64;
                let mut list = keep;
                if merged.count > 0 {
                    list.push(merged);
                }
                list.sort_by_key(|r| std::cmp::Reverse(r.run));
                let replaced = [(shard, list)];
                new_state.runs = self.run_refs_with(&replaced);
                new_state.generation += 1;
                durable::replace_file(&self.dir.join("state"), &new_state.encode())?;
                let [(_, list)] = replaced;
                Ok((list, gone))
            })();
            let (list, gone) = match result {
                Ok(x) => x,
                Err(e) => {
                    let _ = std::fs::remove_file(&path);
                    return Err(e);
                }
            };
            *state = new_state;
            *self.shards[shard]
                .write()
                .unwrap_or_else(|p| p.into_inner()) = list;
            for p in gone {
                let _ = std::fs::remove_file(p);
            }
        }
        Ok(dropped)
    }

    /// The refs of all live runs, with the lists of some shards replaced.
    fn run_refs_with(&self, replaced: &[(usize, Vec<Arc<Run>>)]) -> Vec<RunRef> {
        let mut runs: Vec<RunRef> = Vec::new();
        for (shard, list) in self.shards.iter().enumerate() {
            match replaced.iter().find(|(s, _)| *s == shard) {
                Some((_, l)) => runs.extend(l.iter().map(|r| RunRef {
                    shard: r.shard,
                    run: r.run,
                })),
                None => runs.extend(shard_refs(list)),
            }
        }
        runs.sort();
        runs
    }

    /// Entries in runs (duplicates across runs counted once per run) plus
    /// entries waiting for a flush.
    pub fn entry_count(&self) -> u64 {
        let in_runs: usize = self
            .shards
            .iter()
            .map(|s| {
                s.read()
                    .unwrap_or_else(|p| p.into_inner())
                    .iter()
                    .map(|r| r.count)
                    .sum::<usize>()
            })
            .sum();
        (in_runs + self.queued_entries.load(Ordering::Relaxed)) as u64
    }

    /// Bytes of all run files.
    pub fn disk_bytes(&self) -> u64 {
        self.shards
            .iter()
            .map(|s| {
                s.read()
                    .unwrap_or_else(|p| p.into_inner())
                    .iter()
                    .map(|r| r.file_len())
                    .sum::<u64>()
            })
            .sum()
    }

    /// Checks every run's checksum and order.
    pub(crate) fn verify_runs(&self) -> Vec<Error> {
        let mut errors = Vec::new();
        for s in &self.shards {
            for r in s.read().unwrap_or_else(|p| p.into_inner()).iter() {
                if let Err(e) = r.verify() {
                    errors.push(e);
                }
            }
        }
        errors
    }

    /// Every (id, location) in the runs, shard by shard: for rebuild checks.
    pub(crate) fn for_each_run_entry(&self, mut f: impl FnMut(ChunkId, Location)) {
        for s in &self.shards {
            let runs = s.read().unwrap_or_else(|p| p.into_inner()).clone();
            for r in runs {
                for i in 0..r.count {
                    let (id, loc) = r.get(i);
                    f(id, loc);
                }
                r.release();
            }
        }
    }
}

/// The entry lookups answer with for `id` from `runs` (newest first):
/// which run, the entry's index in it, and its location; buried entries
/// are skipped. GC marks through this too, so it marks exactly the entries
/// lookups return.
pub(crate) fn find_in(
    runs: &[Arc<Run>],
    id: &ChunkId,
    tombs: Option<&Tombstones>,
) -> Option<(usize, usize, Location)> {
    runs.iter().enumerate().find_map(|(r, run)| {
        let i = run.position(id)?;
        let loc = run.get(i).1;
        (!tombs.is_some_and(|t| t.buries(id, &loc))).then_some((r, i, loc))
    })
}

/// Evicts a just-written (and synced) run from the page cache. Lookups then
/// fault in only the pages they touch: with the file cached, every fault
/// would also map up to 15 cached neighbours (fault-around), and a flush
/// would push useful pages out of the cache besides.
fn drop_from_page_cache(path: &Path) {
    if let Ok(f) = std::fs::File::open(path) {
        let _ = rustix::fs::fadvise(&f, 0, None, rustix::fs::Advice::DontNeed);
    }
}

/// File-backed resident bytes of this process (`shared` of
/// /proc/self/statm, counted in pages of the kernel's size); 0 where that
/// is not available.
fn resident_file_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| {
            s.split_whitespace()
                .nth(2)
                .and_then(|v| v.parse::<u64>().ok())
        })
        .map_or(0, |pages| pages * rustix::param::page_size() as u64)
}

fn run_path(dir: &Path, r: RunRef) -> PathBuf {
    dir.join(format!("{:x}-{:016x}.run", r.shard, r.run))
}

fn shard_refs(list: &RwLock<Vec<Arc<Run>>>) -> Vec<RunRef> {
    list.read()
        .unwrap_or_else(|p| p.into_inner())
        .iter()
        .map(|r| RunRef {
            shard: r.shard,
            run: r.run,
        })
        .collect()
}

fn add_covered(covered: &mut Vec<(u64, u64)>, pack: u64) {
    covered.push((pack, pack));
    covered.sort_unstable();
    let mut merged: Vec<(u64, u64)> = Vec::with_capacity(covered.len());
    for &(lo, hi) in covered.iter() {
        match merged.last_mut() {
            Some(last) if lo <= last.1.saturating_add(1) => last.1 = last.1.max(hi),
            _ => merged.push((lo, hi)),
        }
    }
    *covered = merged;
}

/// Removes and returns the runs to merge next, if any: the first
/// [`MERGE_FAN_IN`] runs of similar size, smallest first; or the smallest
/// ones when the shard holds too many runs.
fn plan_merge(list: &mut Vec<Arc<Run>>) -> Option<Vec<Arc<Run>>> {
    list.sort_by_key(|r| r.count);
    let similar = (0..list.len().saturating_sub(MERGE_FAN_IN - 1))
        .find(|&i| list[i + MERGE_FAN_IN - 1].count <= MERGE_SIZE_RATIO * list[i].count.max(1));
    let start = match similar {
        Some(i) => i,
        None if list.len() > MAX_RUNS_PER_SHARD => 0,
        None => return None,
    };
    Some(list.drain(start..start + MERGE_FAN_IN).collect())
}

/// Merges `inputs` (newest entry not buried wins on equal ids; buried entries
/// are dropped) into one run at `path`;
/// returns it and the paths of the inputs, to delete once the new state is
/// published.
fn merge_runs(
    mut inputs: Vec<Arc<Run>>,
    path: &Path,
    r: RunRef,
    tombs: &Tombstones,
) -> Result<(Arc<Run>, Vec<PathBuf>)> {
    inputs.sort_by_key(|r| std::cmp::Reverse(r.run));
    for input in &inputs {
        input.prepare_scan();
    }
    let max_entries = inputs.iter().map(|r| r.count as u64).sum();
    write_run(
        path,
        r.shard,
        r.run,
        max_entries,
        run::Merge::new(&inputs, |id, loc| !tombs.buries(id, loc)),
    )?;
    for input in &inputs {
        input.release();
    }
    let run = Arc::new(Run::open(path, r.shard, r.run)?);
    Ok((run, inputs.iter().map(|r| r.path.clone()).collect()))
}

fn remove_orphan_runs(dir: &Path, live: &HashSet<RunRef>) -> Result<()> {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return Ok(());
    };
    for f in rd.flatten() {
        let name = f.file_name();
        let Some((shard, run)) = name
            .to_str()
            .and_then(|n| n.strip_suffix(".run"))
            .and_then(|n| n.split_once('-'))
        else {
            continue;
        };
        let (Ok(shard), Ok(run)) = (u8::from_str_radix(shard, 16), u64::from_str_radix(run, 16))
        else {
            continue;
        };
        if !live.contains(&RunRef { shard, run }) {
            tracing::info!(
                shard,
                run,
                "removing index run left by an interrupted flush"
            );
            std::fs::remove_file(f.path()).map_err(|e| Error::io(f.path(), e))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    fn loc(n: u64) -> Location {
        Location {
            pack: PackId(n % 7),
            offset: n,
            raw_len: n as u32 + 1,
            stored_len: n as u32,
        }
    }

    fn id(n: u64) -> ChunkId {
        ChunkId::of(&n.to_le_bytes())
    }

    #[test]
    fn reservations_store_a_chunk_once() {
        let dir = tempfile::tempdir().unwrap();
        let index = Index::open(dir.path(), 100).unwrap();
        let a = id(1);
        assert_eq!(index.reserve(&a), Reservation::Mine);
        assert_eq!(index.reserve(&a), Reservation::Pending);
        assert_eq!(index.lookup(&a), None);
        let waiter = std::thread::scope(|s| {
            let h = s.spawn(|| index.wait(&a));
            index.publish(&a, loc(5));
            h.join().unwrap()
        });
        assert_eq!(waiter, Some(loc(5)));
        assert_eq!(index.reserve(&a), Reservation::Known(loc(5)));
        let b = id(2);
        assert_eq!(index.reserve(&b), Reservation::Mine);
        index.abandon(&b);
        assert_eq!(index.wait(&b), None);
        assert_eq!(index.reserve(&b), Reservation::Mine);
    }

    proptest! {
        // Each case does a dozen flushes, each a few real fsyncs.
        #![proptest_config(ProptestConfig::with_cases(12))]
        /// The index against a BTreeMap model, across flushes, merges and
        /// reopening.
        #[test]
        fn behaves_like_a_map(batches in proptest::collection::vec(proptest::collection::vec(0u64..3000, 1..200), 1..20)) {
            let dir = tempfile::tempdir().unwrap();
            let mut model = BTreeMap::new();
            {
                let index = Index::open(dir.path(), 50).unwrap();
                for (p, batch) in batches.iter().enumerate() {
                    let mut entries = Vec::new();
                    for &n in batch {
                        // First writer of an id wins, as with real packs.
                        if model.contains_key(&id(n)) || entries.iter().any(|(i, _)| *i == id(n)) { continue; }
                        entries.push((id(n), Location { pack: PackId(p as u64), ..loc(n) }));
                    }
                    for (i, l) in &entries { model.insert(*i, *l); }
                    index.add_sealed(PackId(p as u64), entries);
                    if index.needs_flush() { index.flush().unwrap(); }
                    prop_assert!(index.is_covered(PackId(0)) || p == 0 || !index.needs_flush());
                }
                for (i, l) in &model { prop_assert_eq!(index.lookup(i), Some(*l)); }
                index.flush().unwrap();
            }
            let index = Index::open(dir.path(), 50).unwrap();
            for (i, l) in &model { prop_assert_eq!(index.lookup(i), Some(*l)); }
            prop_assert_eq!(index.lookup(&id(99_999)), None);
            for p in 0..batches.len() as u64 { prop_assert!(index.is_covered(PackId(p))); }
            prop_assert!(index.verify_runs().is_empty());
            for s in &index.shards { prop_assert!(s.read().unwrap().len() <= MAX_RUNS_PER_SHARD); }
        }
    }

    #[test]
    fn truncated_run_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        {
            let index = Index::open(dir.path(), 10).unwrap();
            index.add_sealed(PackId(1), (0..100).map(|n| (id(n), loc(n))).collect());
            index.flush().unwrap();
        }
        let run = std::fs::read_dir(dir.path())
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .find(|p| p.extension().is_some_and(|e| e == "run"))
            .unwrap();
        let len = std::fs::metadata(&run).unwrap().len();
        std::fs::OpenOptions::new()
            .write(true)
            .open(&run)
            .unwrap()
            .set_len(len - 10)
            .unwrap();
        let err = Index::open(dir.path(), 10)
            .err()
            .expect("truncated run must not open");
        assert!(err.is_corrupt(), "{err}");
        assert!(err.to_string().contains("truncated"), "{err}");
    }
}
