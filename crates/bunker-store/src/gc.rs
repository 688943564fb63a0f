//! Garbage collection: reclaims the space of chunks no snapshot references,
//! beside running backups. Protocol and safety argument: docs/GC.md.
//!
//! 1. Freeze: flush the index and pause its merges; the packs the index
//!    covers now are the candidates, its runs the mark space. Every frozen
//!    run's checksum is checked first: a flipped pack id or offset would
//!    make a live record look dead, so a mismatch aborts the GC.
//! 2. Protect: under the GC gate, every pack a writer or session has
//!    pinned, or pins from now on, is protected ([`crate::pins`]).
//! 3. Mark: every chunk of every committed manifest marks its entry, keyed
//!    by its position in the runs (3 bits per index entry: owner
//!    state for the space accounting and "seen by this name"; no set of
//!    chunk hashes in memory). Manifests are checked against their
//!    checksum as they are read; a mismatch aborts the GC.
//! 4. Plan: per candidate pack (trailer only), live bytes = records whose
//!    index entry is marked and points at that record, and records the
//!    frozen runs do not locate at all (only a damaged index loses an
//!    entry; a quarantined record is the one known-dead exception).
//! 5. Rewrite packs below the live threshold: copy their live records
//!    (verified) into new packs, seal them, point the index at the copies.
//! 6. Condemn, under the gate: unprotected packs with no live record and
//!    rewritten packs go into the durable `tombstones` file; lookups stop
//!    handing them out at that instant.
//! 7. Delete the condemned pack files.
//! 8. Compact the marked runs without tombstoned entries; clear the pack
//!    tombstones.
//! 9. Account: write the `space` file (referenced data, per name what only
//!    that name references, pack bytes) that `stats` starts from.
//!
//! A crash anywhere leaves a repository that opens and verifies: before 6
//! nothing is lost (at worst chunks exist twice), after 6 opening finishes
//! the deletes and lookups skip tombstoned entries until the next GC's
//! compaction.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use bunker_chunk::ChunkId;
use rayon::prelude::*;

use crate::format::space::{NameSpace, Space, Usage};
use crate::index::{find_in, shard_of, Run, Tombstones};
use crate::pack::{read_trailer, NewRecord, Payload};
use crate::tombstones::{put_tombstones, write_tombstones};
use crate::{Error, Location, PackId, Repository, Result};

/// The space accounting file GC writes (docs/FORMAT.md).
pub(crate) const SPACE_FILE: &str = "space";

/// Packs whose live bytes are below this fraction of their size are
/// rewritten: copying at most half a pack to free at least half of it.
pub const DEFAULT_REWRITE_BELOW: f64 = 0.5;

#[derive(Clone, Copy, Debug)]
pub struct GcOptions {
    /// Rewrite packs whose live fraction (of their bytes) is below this;
    /// 0 rewrites nothing (only wholly dead packs go).
    pub rewrite_below: f64,
    /// Plan and report, change nothing.
    pub dry_run: bool,
}

impl Default for GcOptions {
    fn default() -> Self {
        GcOptions {
            rewrite_below: DEFAULT_REWRITE_BELOW,
            dry_run: false,
        }
    }
}

/// What a GC run did (or, dry, would do).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct GcReport {
    pub dry_run: bool,
    /// Committed snapshots marked.
    pub snapshots: u64,
    /// Manifest entries marked (chunk references, zero chunks excluded).
    pub references: u64,
    /// Sealed packs considered.
    pub packs_examined: u64,
    pub packs_deleted: u64,
    pub packs_rewritten: u64,
    /// Packs left alone because a backup in progress depends on them.
    pub packs_protected: u64,
    /// Packs left alone because they could not be read in full (verify
    /// reports them).
    pub packs_unreadable: u64,
    /// Bytes of the pack files removed.
    pub bytes_deleted: u64,
    /// Bytes of live records copied into new packs.
    pub bytes_rewritten: u64,
    /// Live bytes in the packs examined (records plus headers).
    pub live_bytes: u64,
    /// Index entries dropped by the compaction.
    pub index_entries_dropped: u64,
    /// Memory of the mark bitmap.
    pub mark_bytes: u64,
    pub mark_ms: u64,
    pub sweep_ms: u64,
    pub total_ms: u64,
}

impl GcReport {
    /// Net bytes freed: pack bytes removed minus bytes written again.
    pub fn bytes_reclaimed(&self) -> u64 {
        self.bytes_deleted.saturating_sub(self.bytes_rewritten)
    }

    /// Sets the sweep and total times, at the end of a run.
    fn timed(mut self, started: Instant, sweep_started: Instant) -> GcReport {
        self.sweep_ms = sweep_started.elapsed().as_millis() as u64;
        self.total_ms = started.elapsed().as_millis() as u64;
        self
    }
}

/// Bits per entry of the frozen runs, one vector of words per run.
struct Bitmap<const BITS: usize>(Vec<Vec<Vec<AtomicU64>>>);

impl<const BITS: usize> Bitmap<BITS> {
    const PER_WORD: usize = 64 / BITS;
    const MASK: u64 = (1 << BITS) - 1;

    fn new(runs: &[Vec<Arc<Run>>]) -> Self {
        Bitmap(
            runs.iter()
                .map(|shard| {
                    shard
                        .iter()
                        .map(|r| {
                            (0..r.count.div_ceil(Self::PER_WORD))
                                .map(|_| AtomicU64::new(0))
                                .collect()
                        })
                        .collect()
                })
                .collect(),
        )
    }

    fn bytes(&self) -> u64 {
        self.0.iter().flatten().map(|v| v.len() as u64 * 8).sum()
    }

    fn word(&self, (shard, run, i): (usize, usize, usize)) -> (&AtomicU64, u32) {
        (
            &self.0[shard][run][i / Self::PER_WORD],
            ((i % Self::PER_WORD) * BITS) as u32,
        )
    }

    fn get(&self, at: (usize, usize, usize)) -> u64 {
        let (w, shift) = self.word(at);
        (w.load(Ordering::Relaxed) >> shift) & Self::MASK
    }

    /// Replaces the value at `at` by `f(old)` atomically; returns the old.
    fn update(&self, at: (usize, usize, usize), f: impl Fn(u64) -> u64) -> u64 {
        let (w, shift) = self.word(at);
        let old = w
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |word| {
                let v = (word >> shift) & Self::MASK;
                Some((word & !(Self::MASK << shift)) | ((f(v) & Self::MASK) << shift))
            })
            .unwrap_or_else(|w| w);
        (old >> shift) & Self::MASK
    }

    fn clear(&self) {
        for w in self.0.iter().flatten().flatten() {
            w.store(0, Ordering::Relaxed);
        }
    }
}

/// Who references an entry, 2 bits each: nobody, the snapshots of one
/// name, several names; then "counted" once the accounting pass has added
/// it up. Any non-zero state is live.
const NOBODY: u64 = 0;
const ONE_NAME: u64 = 1;
const SHARED: u64 = 2;
const COUNTED: u64 = 3;

/// The mark state of the frozen runs: 3 bits per index entry, no set of
/// chunk hashes in memory.
struct Marks {
    runs: Vec<Vec<Arc<Run>>>,
    owners: Bitmap<2>,
    /// Entries the name being marked has already visited.
    seen: Bitmap<1>,
    tombs: Tombstones,
}

impl Marks {
    fn new(runs: Vec<Vec<Arc<Run>>>, tombs: Tombstones) -> Marks {
        Marks {
            owners: Bitmap::new(&runs),
            seen: Bitmap::new(&runs),
            runs,
            tombs,
        }
    }

    fn bytes(&self) -> u64 {
        self.owners.bytes() + self.seen.bytes()
    }

    /// The entry lookups would answer for `id` from these runs.
    fn find(&self, id: &ChunkId) -> Option<((usize, usize, usize), Location)> {
        let shard = shard_of(id);
        find_in(&self.runs[shard], id, Some(&self.tombs)).map(|(r, i, loc)| ((shard, r, i), loc))
    }

    /// Marks `id` as referenced by the name being marked; false when the
    /// runs do not hold it (stored after the freeze).
    fn mark(&self, id: &ChunkId) -> bool {
        let Some((at, _)) = self.find(id) else {
            return false;
        };
        if self.seen.update(at, |_| 1) == 0 {
            self.owners
                .update(at, |o| if o == NOBODY { ONE_NAME } else { SHARED });
        }
        true
    }

    /// Counts `id` once: into `unique` too when only this name holds it.
    fn count(&self, id: &ChunkId, unique: &mut Usage, all: &mut Usage) {
        let Some((at, loc)) = self.find(id) else {
            return;
        };
        let (raw, stored) = (u64::from(loc.raw_len), u64::from(loc.stored_len));
        match self
            .owners
            .update(at, |o| if o == NOBODY { NOBODY } else { COUNTED })
        {
            ONE_NAME => {
                unique.add(raw, stored);
                all.add(raw, stored);
            }
            SHARED => all.add(raw, stored),
            _ => {}
        }
    }

    /// Whether the record of `id` at `pack`/`offset` may be referenced:
    /// it is the one the index answers with and a snapshot references it,
    /// or the runs do not locate `id` at all. Every record of a candidate
    /// pack has a run entry, so a missing one means damage GC cannot see
    /// (the runs' checksums passed): keep the record, unless it is a
    /// quarantined one, which verify proved corrupt.
    fn is_live(&self, id: &ChunkId, pack: PackId, offset: u64) -> bool {
        match self.find(id) {
            Some((at, loc)) => {
                loc.pack == pack && loc.offset == offset && self.owners.get(at) != NOBODY
            }
            None => !self.tombs.records.contains(&(*id, pack.0, offset)),
        }
    }

    fn release(&self) {
        for run in self.runs.iter().flatten() {
            run.release();
        }
    }
}

/// Puts back what GC paused, on every way out.
struct Resume<'a>(&'a Repository);

impl Drop for Resume<'_> {
    fn drop(&mut self) {
        self.0.index().pause_merges(false);
        self.0.pin_board().gc_end();
    }
}

/// The packs to condemn: pack -> (rewritten, length).
type Condemn = std::collections::BTreeMap<u64, (bool, u64)>;

enum Fate {
    Keep,
    Delete,
    Rewrite(Vec<crate::format::pack::TrailerEntry>),
}

impl Repository {
    /// Runs one garbage collection (see the module documentation). Fails
    /// with `Busy` while another GC or a verify runs. Works on a full disk:
    /// it releases the space reserve if it must, and puts it back after.
    pub fn gc(&self, opts: &GcOptions) -> Result<GcReport> {
        let report = crate::reserve::retry_with(self.root(), || self.gc_once(opts))?;
        if !opts.dry_run {
            crate::reserve::ensure(self.root());
        }
        Ok(report)
    }

    /// The phases in order (numbered as in the module documentation). The
    /// failpoints between them are where the crash and race tests pause
    /// and kill a GC: keep each between the same two phases.
    fn gc_once(&self, opts: &GcOptions) -> Result<GcReport> {
        let started = Instant::now();
        let _one = self.try_lock_maintenance()?;
        let mut report = GcReport {
            dry_run: opts.dry_run,
            ..GcReport::default()
        };

        // 1. Freeze (merges stay paused, and pins protected, until `_resume`
        //    drops, on every way out).
        self.index().pause_merges(true);
        let _resume = Resume(self);
        let (marks, candidates) = self.freeze()?;
        // 2. Protect.
        self.protect();
        crate::durable::failpoint!("gc::marked", self.root());

        // 3. Mark, then count what each name alone references.
        report.mark_bytes = marks.bytes();
        let snapshots = self.list_strict()?;
        let groups: Vec<&[crate::SnapshotInfo]> =
            snapshots.chunk_by(|a, b| a.name == b.name).collect();
        let (references, complete) = self.mark(&marks, &groups)?;
        let space = self.count(&marks, &groups, &complete)?;
        report.snapshots = snapshots.len() as u64;
        report.references = references;
        report.mark_ms = started.elapsed().as_millis() as u64;
        crate::durable::failpoint!("gc::mark", self.root());

        // 4. Plan, 5. rewrite.
        let sweep_started = Instant::now();
        let condemn = self.plan_and_rewrite(&marks, &candidates, opts, &mut report)?;
        marks.release();
        if opts.dry_run {
            return Ok(report.timed(started, sweep_started));
        }
        self.seal_copies(&report)?;
        crate::durable::failpoint!("gc::rewritten", self.root());

        // 6. Condemn.
        let tombs = self.condemn(&condemn, &mut report)?;
        crate::durable::failpoint!("gc::condemned", self.root());
        if tombs.packs.is_empty() {
            // Nothing condemned, now or by an interrupted GC: the index
            // holds no entry to drop.
            self.write_space(space);
            return Ok(report.timed(started, sweep_started));
        }

        // 7. Delete (failpoint `gc::deleted` after each pack).
        self.delete_condemned(&tombs)?;
        // 8. Compact (failpoint `gc::compacted` before the tombstones are
        //    cleared).
        report.index_entries_dropped = self.compact(&marks, tombs)?;
        // 9. Account.
        self.write_space(space);
        let report = report.timed(started, sweep_started);
        tracing::info!(
            deleted = report.packs_deleted,
            rewritten = report.packs_rewritten,
            protected = report.packs_protected,
            reclaimed = report.bytes_reclaimed(),
            ms = report.total_ms,
            "GC finished"
        );
        Ok(report)
    }

    /// Phase 1: flushes the index and freezes its runs (the mark space), after
    /// checking every run's checksum; returns the marks and the candidate
    /// packs: those the frozen runs cover, less the tombstoned ones.
    fn freeze(&self) -> Result<(Marks, Vec<(PackId, u64)>)> {
        let index = self.index();
        index.flush()?;
        let (runs, covered) = index.freeze();
        check_runs(&runs)?;
        let marks = Marks::new(runs, index.current_tombstones());
        // With their lengths: on a bucket, one listing rather than a HEAD
        // per candidate.
        let candidates: Vec<(PackId, u64)> = self
            .packs()
            .backend()
            .list_sized()?
            .into_iter()
            .filter(|(p, _)| {
                covered.iter().any(|&(lo, hi)| lo <= p.0 && p.0 <= hi)
                    && !marks.tombs.packs.contains(&p.0)
            })
            .collect();
        Ok((marks, candidates))
    }

    /// Phase 2: from now on, every pack pinned (before or after) is protected.
    fn protect(&self) {
        let _gate = self.gate_write();
        self.pin_board().gc_begin();
    }

    /// Phase 3: marks every chunk of every committed snapshot, a name at a time
    /// (its snapshots in parallel). Returns the references marked and, per
    /// name and snapshot, whether every chunk was in the frozen runs (the
    /// accounting includes only those; `stats` adds the others).
    fn mark(
        &self,
        marks: &Marks,
        groups: &[&[crate::SnapshotInfo]],
    ) -> Result<(u64, Vec<Vec<bool>>)> {
        let references = AtomicU64::new(0);
        let mut complete = Vec::with_capacity(groups.len());
        for group in groups {
            marks.seen.clear();
            let found: Vec<bool> = group
                .par_iter()
                .map(|s| -> Result<bool> {
                    let entries = match self.manifest_checked(&s.name, s.id) {
                        Ok(e) => e,
                        // Deleted since it was listed: nothing to keep for it.
                        Err(Error::NotFound { .. }) => return Ok(false),
                        Err(e) => return Err(e),
                    };
                    let (mut n, mut all) = (0, true);
                    for e in entries {
                        let e = e?;
                        if !e.id.is_zero() {
                            all &= marks.mark(&self.at_rest(&e.id));
                            n += 1;
                        }
                    }
                    references.fetch_add(n, Ordering::Relaxed);
                    Ok(all)
                })
                .collect::<Result<_>>()?;
            complete.push(found);
        }
        Ok((references.into_inner(), complete))
    }

    /// Phase 3, continued: counts each marked chunk once: into the referenced
    /// total, and into its name's unique figures when only one name holds
    /// it. The `space` file's content, written in phase 9.
    fn count(
        &self,
        marks: &Marks,
        groups: &[&[crate::SnapshotInfo]],
        complete: &[Vec<bool>],
    ) -> Result<Space> {
        let mut space = Space {
            written_unix_ms: crate::clock::now_unix_ms(),
            ..Space::default()
        };
        for (group, found) in groups.iter().zip(complete) {
            let zero = || (Usage::default(), Usage::default());
            let (unique, all) = group
                .par_iter()
                .map(|s| -> Result<(Usage, Usage)> {
                    let mut u = zero();
                    let entries = match self.manifest_checked(&s.name, s.id) {
                        Ok(e) => e,
                        Err(Error::NotFound { .. }) => return Ok(u),
                        Err(e) => return Err(e),
                    };
                    for e in entries {
                        let e = e?;
                        if !e.id.is_zero() {
                            marks.count(&self.at_rest(&e.id), &mut u.0, &mut u.1);
                        }
                    }
                    Ok(u)
                })
                .try_reduce(zero, |a, b| Ok((a.0.plus(b.0), a.1.plus(b.1))))?;
            space.referenced = space.referenced.plus(all);
            space.names.push(NameSpace {
                name: group[0].name.clone(),
                unique,
                snapshots: group
                    .iter()
                    .zip(found)
                    .filter(|(_, &f)| f)
                    .map(|(s, _)| s.id.0)
                    .collect(),
            });
        }
        Ok(space)
    }

    /// Phases 4 and 5: decides each candidate's fate and, unless dry, copies the
    /// live records of the packs to rewrite. Returns the packs to condemn:
    /// pack -> (rewritten, length), to undo the figures of any pack spared
    /// at the last moment.
    fn plan_and_rewrite(
        &self,
        marks: &Marks,
        candidates: &[(PackId, u64)],
        opts: &GcOptions,
        report: &mut GcReport,
    ) -> Result<Condemn> {
        let backend = self.packs().backend();
        let mut condemn = Condemn::default();
        for &(pack, pack_len) in candidates {
            report.packs_examined += 1;
            if self.pin_board().gc_protects(pack) {
                report.packs_protected += 1;
                continue;
            }
            let (fate, live) = match plan_pack(self, marks, pack, pack_len, opts.rewrite_below) {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!("GC leaves {} alone: {e}", backend.describe(pack));
                    report.packs_unreadable += 1;
                    continue;
                }
            };
            report.live_bytes += live;
            match fate {
                Fate::Keep => {}
                Fate::Delete => {
                    condemn.insert(pack.0, (false, pack_len));
                    report.packs_deleted += 1;
                    report.bytes_deleted += pack_len;
                }
                Fate::Rewrite(live_records) => {
                    if !opts.dry_run {
                        if let Err(e) = self.copy_records(pack, &live_records) {
                            tracing::warn!("GC could not rewrite {}: {e}", backend.describe(pack));
                            report.packs_unreadable += 1;
                            continue;
                        }
                    }
                    condemn.insert(pack.0, (true, pack_len));
                    report.packs_rewritten += 1;
                    report.bytes_deleted += pack_len;
                    report.bytes_rewritten += live;
                }
            }
        }
        Ok(condemn)
    }

    /// End of phase 5: the copies are durable before any original is condemned.
    /// (No rewrite, no seal: it would cut ingest's open pack short.)
    fn seal_copies(&self, report: &GcReport) -> Result<()> {
        if report.packs_rewritten > 0 {
            let sealed = self.packs().seal()?;
            self.index_sealed(sealed);
        }
        Ok(())
    }

    /// Phase 6: under the gate, tombstones the planned packs no one pinned
    /// meanwhile, durably, and stops lookups handing them out. Returns the
    /// tombstones now in force (with any an interrupted GC left).
    fn condemn(&self, condemn: &Condemn, report: &mut GcReport) -> Result<Tombstones> {
        let index = self.index();
        let mut tombs = index.current_tombstones();
        let _gate = self.gate_write();
        let before = tombs.packs.len();
        for (&p, &(rewritten, len)) in condemn {
            if self.pin_board().gc_protects(PackId(p)) {
                // Pinned while GC was planning: spared, whole (the
                // copies of a rewrite stay as duplicates until a later
                // GC finds the originals dead).
                report.packs_protected += 1;
                report.bytes_deleted -= len;
                if rewritten {
                    report.packs_rewritten -= 1;
                } else {
                    report.packs_deleted -= 1;
                }
            } else {
                tombs.packs.insert(p);
            }
        }
        // Remote: written also when nothing new was condemned but packs
        // are, since an earlier GC of this process may have replaced the
        // file and then failed to put the object, and phase 7 deletes
        // nothing the bucket does not condemn.
        let remote_left = self.meta().is_some() && !tombs.packs.is_empty();
        if tombs.packs.len() > before || remote_left {
            write_tombstones(self.root(), &tombs)?;
            // The file condemns them now: this directory's next open would
            // finish the deletion, so no lookup may hand them out from here
            // on, even if the put below fails.
            index.set_tombstones(tombs.clone());
            put_tombstones(self.meta(), &tombs)?;
        }
        Ok(tombs)
    }

    /// Phase 7: deletes the condemned packs (also what an earlier failed GC of
    /// this process left).
    fn delete_condemned(&self, tombs: &Tombstones) -> Result<()> {
        for &p in tombs.packs.iter().filter(|&&p| self.pack_exists(p)) {
            self.packs().backend().delete(PackId(p))?;
            crate::durable::failpoint!("gc::deleted", self.root());
        }
        Ok(())
    }

    /// Phase 8: compacts the frozen runs without tombstoned entries, then forgets
    /// pack tombstones no run refers to any more, and record tombstones
    /// whose pack is gone. Returns the index entries dropped.
    fn compact(&self, marks: &Marks, mut tombs: Tombstones) -> Result<u64> {
        let index = self.index();
        let dropped = index.compact(&marks.runs)?;
        crate::durable::failpoint!("gc::compacted", self.root());
        let _gate = self.gate_write();
        tombs.packs.clear();
        tombs.records.retain(|(_, pack, _)| self.pack_exists(*pack));
        write_tombstones(self.root(), &tombs)?;
        index.set_tombstones(tombs.clone());
        // A bucket still condemning packs already gone is harmless.
        put_tombstones(self.meta(), &tombs)?;
        Ok(dropped)
    }

    /// Whether pack `p` may still exist. Only NotFound means a pack is
    /// gone: after any other error (EIO, EMFILE) its damage markers must
    /// stay.
    fn pack_exists(&self, p: u64) -> bool {
        !matches!(
            self.packs().backend().pack_len(PackId(p)),
            Err(Error::NotFound { .. })
        )
    }

    /// Completes the space accounting with the packs as they are now and
    /// replaces the `space` file. A failure is logged, not returned: the
    /// GC's work stands, and `stats` is only less exact until the next GC.
    fn write_space(&self, mut space: Space) {
        let backend = self.packs().backend();
        // Read before listing: a pack sealed meanwhile is either below
        // `next_pack` and listed, or counted by `stats` as new, never both.
        space.next_pack = self.packs().next_id();
        let result = backend.list_sized().and_then(|packs| {
            for (_, len) in packs.into_iter().filter(|(p, _)| p.0 < space.next_pack) {
                space.pack_bytes += len;
                space.packs += 1;
            }
            crate::durable::replace_file(
                &self.root().join(SPACE_FILE),
                &crate::format::space::encode(&space),
            )
        });
        if let Err(e) = result {
            tracing::warn!("GC could not update the space accounting: {e}");
        }
    }

    /// Copies records of `pack` into the open pack, verified, and points
    /// the index at the copies.
    fn copy_records(
        &self,
        pack: PackId,
        records: &[crate::format::pack::TrailerEntry],
    ) -> Result<()> {
        let read: Vec<Result<(crate::format::pack::Codec, Vec<u8>)>> = records
            .par_iter()
            .map(|e| {
                let loc = e.index_entry(pack).1;
                let (codec, stored) = self.packs().read_record(&e.id, &loc)?;
                self.decode_verified(&e.id, &loc, codec, stored.clone())?;
                Ok((codec, stored))
            })
            .collect();
        let read: Vec<(crate::format::pack::Codec, Vec<u8>)> =
            read.into_iter().collect::<Result<_>>()?;
        let mut new: Vec<NewRecord<'_>> = records
            .iter()
            .zip(&read)
            .map(|(e, (codec, stored))| NewRecord {
                id: e.id,
                raw_len: e.raw_len,
                codec: *codec,
                stored: Payload::Bytes(stored),
            })
            .collect();
        let (locations, sealed) = self.packs().append(&mut new)?;
        for (e, loc) in records.iter().zip(locations) {
            self.index().relocate(&e.id, loc);
        }
        self.index_sealed(sealed);
        Ok(())
    }
}

/// Checks every frozen run against its checksum, order and filter (a full
/// read of the index, in parallel); the first mismatch aborts the GC.
fn check_runs(runs: &[Vec<Arc<Run>>]) -> Result<()> {
    let all: Vec<&Arc<Run>> = runs.iter().flatten().collect();
    let result = all.par_iter().try_for_each(|run| {
        let checked = run.verify();
        run.release();
        checked
    });
    result.map_err(|e| match e {
        Error::Corrupt { file, reason, .. } => Error::Corrupt {
            file,
            pack: None,
            offset: None,
            chunk: None,
            reason: format!(
                "{reason}; GC stopped before deleting anything (`bunker repair --rebuild-index` rebuilds the index from the packs)"
            ),
        },
        other => other,
    })
}

/// What to do with one pack, and its live bytes.
fn plan_pack(
    repo: &Repository,
    marks: &Marks,
    pack: PackId,
    pack_len: u64,
    rewrite_below: f64,
) -> Result<(Fate, u64)> {
    let entries = read_trailer(repo.packs().backend(), repo.packs().crypt(), pack)?;
    let live: Vec<_> = entries
        .into_iter()
        .filter(|e| marks.is_live(&e.id, pack, e.offset))
        .collect();
    let live_bytes: u64 = live
        .iter()
        .map(|e| (crate::format::pack::RECORD_HEADER_LEN as u64) + u64::from(e.stored_len))
        .sum();
    let fate = if live.is_empty() {
        Fate::Delete
    } else if (live_bytes as f64) < rewrite_below * pack_len as f64 {
        Fate::Rewrite(live)
    } else {
        Fate::Keep
    };
    Ok((fate, live_bytes))
}
