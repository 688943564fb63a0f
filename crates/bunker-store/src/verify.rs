//! Verifying a repository: every record of every pack (or a sample of the
//! packs, or the chunks of one snapshot), the index runs, and every manifest
//! against what is stored.
//!
//! Packs are read in id order with their records decoded and BLAKE3-checked
//! in parallel. Damage is reported by location (pack, offset, chunk), then
//! mapped to the snapshots that reference it, exactly: a snapshot is listed
//! if and only if it references a damaged or missing chunk or its manifest
//! is itself damaged.
//!
//! A damaged record the index points at is quarantined (a record tombstone,
//! docs/FORMAT.md): lookups stop returning it, so the next backup of the
//! same data stores the chunk again, and every snapshot that needs it reads
//! the new copy. A quarantined record is reported once as damage; later
//! verifies count it under `quarantined` and report only the snapshots that
//! still lack the chunk.
//!
//! Only a record proven corrupt is quarantined: its checksum or BLAKE3
//! mismatches on two reads. GC treats a quarantined record as dead, so a
//! quarantine on a transient error (EIO, EMFILE, ENOMEM, a pack briefly
//! missing) would delete the only good copy. A record that cannot be read,
//! or reads corrupt once and intact the second time, is reported as
//! `unreadable` with its pack and offset and changes nothing stored.
//!
//! In an encrypted repository packs and the index know chunks only by their
//! at-rest ids (`crate::crypt`): damage is found and mapped to snapshots by
//! those, then reported under the true chunk id when a manifest names the
//! chunk, else under the at-rest id, saying so.

use std::collections::{HashMap, HashSet};

use bunker_chunk::ChunkId;
use rayon::prelude::*;

use crate::format::pack::RECORD_HEADER_LEN;
use crate::pack::read_trailer;
use crate::{Error, Location, PackId, Repository, Result, SnapshotId};

/// Names the chunk of a damage report found by at-rest id: the true id a
/// manifest gave it, else the at-rest id, saying so.
fn name_true_chunk(d: &mut Damage, names: &HashMap<ChunkId, ChunkId>) {
    let Some(kid) = d.chunk else { return };
    match names.get(&kid) {
        Some(id) => d.chunk = Some(*id),
        None => d
            .reason
            .push_str(" (chunk named by its at-rest id: no snapshot references it)"),
    }
}

/// One damaged thing: a record, a pack's trailer, an index run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Damage {
    pub file: String,
    pub pack: Option<PackId>,
    pub offset: Option<u64>,
    pub chunk: Option<ChunkId>,
    pub reason: String,
}

impl Damage {
    fn from_error(e: Error) -> Damage {
        match e {
            Error::Corrupt {
                file,
                pack,
                offset,
                chunk,
                reason,
            } => Damage {
                file,
                pack,
                offset,
                chunk,
                reason,
            },
            other => Damage {
                file: String::new(),
                pack: None,
                offset: None,
                chunk: None,
                reason: other.to_string(),
            },
        }
    }
}

/// A snapshot that cannot be restored bit for bit, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DamagedSnapshot {
    pub name: String,
    pub id: SnapshotId,
    pub bad_chunks: u64,
    pub reason: String,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct VerifyReport {
    pub packs: u64,
    pub chunks: u64,
    pub stored_bytes: u64,
    pub snapshots: u64,
    pub damage: Vec<Damage>,
    /// Records (or trailers) that could not be read, or read differently
    /// twice: not proven damaged, so nothing was quarantined.
    pub unreadable: Vec<Damage>,
    pub damaged_snapshots: Vec<DamagedSnapshot>,
    /// Damaged records taken out of the index by this verify.
    pub newly_quarantined: u64,
    /// Damaged records quarantined by an earlier verify (not counted as
    /// damage again; the snapshots still lacking them are).
    pub quarantined: u64,
}

/// What to verify.
#[derive(Clone, Debug)]
pub struct VerifyOptions {
    /// Only the chunks of this snapshot (latest of the name when no id);
    /// every manifest is still checked for the damage found.
    pub snapshot: Option<(String, Option<SnapshotId>)>,
    /// Read this percentage of the packs (or of the snapshot's chunks),
    /// chosen at random by `seed`; 100 reads everything.
    pub sample_percent: f64,
    pub seed: u64,
    /// Take damaged records out of the index (default).
    pub quarantine: bool,
}

impl Default for VerifyOptions {
    fn default() -> Self {
        VerifyOptions {
            snapshot: None,
            sample_percent: 100.0,
            seed: 0,
            quarantine: true,
        }
    }
}

impl VerifyOptions {
    /// Whether the item keyed `key` is in the sample.
    fn sampled(&self, key: u64) -> bool {
        if self.sample_percent >= 100.0 {
            return true;
        }
        let mut h = key ^ self.seed.rotate_left(17);
        h = (h ^ (h >> 33)).wrapping_mul(0xff51_afd7_ed55_8ccd);
        h = (h ^ (h >> 33)).wrapping_mul(0xc4ce_b9fe_1a85_ec53);
        h ^= h >> 33;
        ((h % 1_000_000) as f64) < self.sample_percent * 10_000.0
    }
}

impl VerifyReport {
    pub fn is_clean(&self) -> bool {
        self.damage.is_empty() && self.damaged_snapshots.is_empty() && self.unreadable.is_empty()
    }
}

/// What reading one record found.
enum Check {
    Intact,
    /// Checksum, header or BLAKE3 mismatch, seen on two reads.
    Corrupt(Error),
    /// An I/O error, or a mismatch a second read did not confirm.
    Unreadable(Error),
}

/// What the scan found, for mapping damage to the snapshots it breaks.
struct Known {
    present: HashSet<PackId>,
    damaged: HashSet<ChunkId>,
    unreadable: HashSet<ChunkId>,
    bad_trailers: HashSet<PackId>,
    index_damaged: bool,
}

/// Records found bad, by kind.
#[derive(Default)]
struct Findings {
    corrupt: Vec<(ChunkId, Location)>,
    unreadable: Vec<(ChunkId, Location)>,
}

impl Repository {
    /// Checks everything; see the module documentation.
    pub fn verify(&self) -> Result<VerifyReport> {
        self.verify_with(&VerifyOptions::default())
    }

    pub fn verify_with(&self, opts: &VerifyOptions) -> Result<VerifyReport> {
        if !(opts.sample_percent > 0.0 && opts.sample_percent <= 100.0) {
            return Err(Error::Invalid(format!(
                "sample percentage {} is outside (0, 100]",
                opts.sample_percent
            )));
        }
        // Not beside a GC: it deletes packs this reads.
        let _one = self.lock_maintenance();
        let backend = self.packs().backend();
        let mut report = VerifyReport::default();
        let packs = backend.list()?;
        let present: HashSet<PackId> = packs.iter().copied().collect();
        let mut damaged_chunks: HashSet<ChunkId> = HashSet::new();
        let mut unreadable_chunks: HashSet<ChunkId> = HashSet::new();
        let mut bad_trailers: HashSet<PackId> = HashSet::new();
        let mut found = Findings::default();
        let tombs = self.index().current_tombstones();
        let only = match &opts.snapshot {
            Some((name, id)) => Some(self.snapshot(name, *id)?),
            None => None,
        };
        if let Some(info) = &only {
            self.verify_snapshot_chunks(&info.name, info.id, opts, &mut report, &mut found)?;
        }
        for &pack in packs.iter().filter(|p| only.is_none() && opts.sampled(p.0)) {
            report.packs += 1;
            let entries = match read_trailer(backend, self.packs().crypt(), pack) {
                Ok(e) => e,
                Err(e) => {
                    if e.is_corrupt() {
                        report.damage.push(Damage::from_error(e));
                    } else {
                        report.unreadable.push(Damage {
                            file: backend.describe(pack),
                            pack: Some(pack),
                            offset: None,
                            chunk: None,
                            reason: format!("trailer unreadable: {e}"),
                        });
                    }
                    bad_trailers.insert(pack);
                    continue;
                }
            };
            // The whole pack's records, announced before the pool reads
            // them, keep a remote backend's requests in flight.
            if backend.reads_ahead() {
                let records: Vec<(PackId, u64, usize)> = entries
                    .iter()
                    .map(|e| (pack, e.offset, RECORD_HEADER_LEN + e.stored_len as usize))
                    .collect();
                backend.will_need(&records);
            }
            // Decoded bytes are dropped as soon as they are checked: a pack
            // of 256 MiB can hold gigabytes of raw data.
            let results: Vec<Check> = entries
                .par_iter()
                .map(|e| {
                    let (id, loc) = e.index_entry(pack);
                    self.check_record(&id, &loc)
                })
                .collect();
            for (r, e) in results.into_iter().zip(&entries) {
                report.chunks += 1;
                report.stored_bytes += u64::from(e.stored_len);
                let (id, loc) = e.index_entry(pack);
                match r {
                    Check::Intact => {}
                    Check::Corrupt(err) => {
                        found.corrupt.push((id, loc));
                        if tombs.buries(&id, &loc) {
                            report.quarantined += 1;
                        } else {
                            report.damage.push(Damage::from_error(err));
                        }
                    }
                    Check::Unreadable(err) => {
                        found.unreadable.push((id, loc));
                        report.unreadable.push(self.unreadable(&id, &loc, err));
                    }
                }
            }
        }
        for (id, loc) in &found.unreadable {
            if self.locate(id) == Some(*loc) {
                unreadable_chunks.insert(*id);
            }
        }
        let bad_records = found.corrupt;
        for (id, loc) in &bad_records {
            // Only the copy lookups would use counts; a stray damaged copy
            // of a chunk stored intact elsewhere breaks no snapshot.
            if self.locate(id).is_none_or(|now| now == *loc) {
                damaged_chunks.insert(*id);
            }
        }
        if opts.quarantine {
            report.newly_quarantined = self.quarantine(&bad_records)?;
        }
        let mut index_damaged = false;
        for e in self.index().verify_runs() {
            report.damage.push(Damage::from_error(e));
            index_damaged = true;
        }
        let known = Known {
            present,
            damaged: damaged_chunks,
            unreadable: unreadable_chunks,
            bad_trailers,
            index_damaged,
        };
        let mut names = HashMap::new();
        for (name, id) in self.snapshot_keys(None)? {
            report.snapshots += 1;
            if let Some(d) = self.check_snapshot(&name, id, &known, &mut names)? {
                report.damaged_snapshots.push(d);
            }
        }
        if self.crypt().is_some() {
            for d in report.damage.iter_mut().chain(report.unreadable.iter_mut()) {
                name_true_chunk(d, &names);
            }
        }
        Ok(report)
    }

    fn check_snapshot(
        &self,
        name: &str,
        id: SnapshotId,
        known: &Known,
        names: &mut HashMap<ChunkId, ChunkId>,
    ) -> Result<Option<DamagedSnapshot>> {
        let damaged_snapshot = |bad_chunks, reason: String| DamagedSnapshot {
            name: name.to_string(),
            id,
            bad_chunks,
            reason,
        };
        let manifest = match self.manifest(name, id) {
            Ok(m) => m,
            // Deleted while verify ran.
            Err(Error::NotFound { .. }) => return Ok(None),
            Err(e) => return Ok(Some(damaged_snapshot(0, e.to_string()))),
        };
        if let Err(e) = manifest.verify_entries() {
            return Ok(Some(damaged_snapshot(0, e.to_string())));
        }
        let mut bad = 0;
        let mut first_reason = None;
        for entry in manifest.entries_from(0)? {
            let entry = match entry {
                Ok(e) => e,
                Err(e) => return Ok(Some(damaged_snapshot(bad, e.to_string()))),
            };
            if entry.id.is_zero() {
                continue;
            }
            let kid = self.at_rest(&entry.id);
            if known.damaged.contains(&kid) || known.unreadable.contains(&kid) {
                names.insert(kid, entry.id);
            }
            if known.damaged.contains(&kid) {
                bad += 1;
                first_reason.get_or_insert(format!(
                    "chunk {} is damaged (quarantined: a backup of the same data heals it)",
                    entry.id
                ));
                continue;
            }
            if known.unreadable.contains(&kid) {
                bad += 1;
                first_reason.get_or_insert(format!(
                    "chunk {} could not be read (not proven damaged, nothing quarantined: verify again once the disk answers)",
                    entry.id
                ));
                continue;
            }
            let problem = match self.locate(&kid) {
                None => Some(format!("chunk {} is not in the repository", entry.id)),
                Some(loc) if !known.present.contains(&loc.pack) => Some(format!(
                    "chunk {} is in missing pack {}",
                    entry.id, loc.pack.0
                )),
                Some(loc) if u64::from(loc.raw_len) != entry.end - entry.start => {
                    Some(format!("chunk {} has the wrong length", entry.id))
                }
                // A damaged index may answer with a wrong location, and a
                // damaged trailer leaves records unchecked: read them.
                Some(loc) if known.index_damaged || known.bad_trailers.contains(&loc.pack) => {
                    self.read_at(&kid, &loc).err().map(|e| {
                        let e = crate::repo::naming_true(e, &entry.id);
                        format!("{e} (if the index is damaged, `bunker repair --rebuild-index`)")
                    })
                }
                Some(_) => None,
            };
            if let Some(p) = problem {
                bad += 1;
                first_reason.get_or_insert(p);
            }
        }
        Ok(first_reason.map(|r| damaged_snapshot(bad, r)))
    }
}

impl Repository {
    /// Reads the chunks of one snapshot (or a sample of them), a window of
    /// the manifest at a time in pack order, decoding in parallel.
    fn verify_snapshot_chunks(
        &self,
        name: &str,
        id: SnapshotId,
        opts: &VerifyOptions,
        report: &mut VerifyReport,
        found: &mut Findings,
    ) -> Result<()> {
        const WINDOW: usize = 1 << 16;
        let mut packs: HashSet<PackId> = HashSet::new();
        let mut window: Vec<(ChunkId, Location)> = Vec::with_capacity(WINDOW);
        let mut entries = self.manifest(name, id)?.entries_from(0)?.peekable();
        while entries.peek().is_some() {
            window.clear();
            for e in entries.by_ref() {
                let e = e?;
                if e.id.is_zero() || !opts.sampled(e.id.prefix_u64()) {
                    continue;
                }
                // A missing chunk is reported with the manifest check.
                let kid = self.at_rest(&e.id);
                if let Some(loc) = self.locate(&kid) {
                    window.push((kid, loc));
                }
                if window.len() == WINDOW {
                    break;
                }
            }
            window.sort_unstable_by_key(|(_, l)| (l.pack, l.offset));
            window.dedup_by_key(|(id, _)| *id);
            // A window is up to 65,536 records: announced whole, it keeps a
            // remote backend's requests in flight while the pool checks.
            let backend = self.packs().backend();
            if backend.reads_ahead() {
                let records: Vec<(PackId, u64, usize)> = window
                    .iter()
                    .map(|(_, l)| (l.pack, l.offset, RECORD_HEADER_LEN + l.stored_len as usize))
                    .collect();
                backend.will_need(&records);
            }
            // Only the outcome is kept: the window's decoded bytes would be
            // up to 65,536 chunks (16 GiB at the default chunk size).
            let results: Vec<Check> = window
                .par_iter()
                .map(|(id, loc)| self.check_record(id, loc))
                .collect();
            for ((id, loc), r) in window.iter().zip(results) {
                packs.insert(loc.pack);
                report.chunks += 1;
                report.stored_bytes += u64::from(loc.stored_len);
                match r {
                    Check::Intact => {}
                    Check::Corrupt(e) => {
                        found.corrupt.push((*id, *loc));
                        report.damage.push(Damage::from_error(e));
                    }
                    Check::Unreadable(e) => {
                        found.unreadable.push((*id, *loc));
                        report.unreadable.push(self.unreadable(id, loc, e));
                    }
                }
            }
        }
        report.packs = packs.len() as u64;
        Ok(())
    }

    /// Reads one record, twice when the first read finds it corrupt: only a
    /// mismatch seen both times is damage.
    fn check_record(&self, id: &ChunkId, loc: &Location) -> Check {
        match self.read_at(id, loc) {
            Ok(_) => Check::Intact,
            Err(first) if first.is_corrupt() => match self.read_at(id, loc) {
                Err(second) if second.is_corrupt() => Check::Corrupt(second),
                Err(other) => Check::Unreadable(other),
                Ok(_) => Check::Unreadable(Error::Invalid(format!(
                    "read corrupt once ({first}) and intact on a second read: a flaky disk, controller or memory"
                ))),
            },
            Err(e) => Check::Unreadable(e),
        }
    }

    fn unreadable(&self, id: &ChunkId, loc: &Location, e: Error) -> Damage {
        Damage {
            file: self.packs().backend().describe(loc.pack),
            pack: Some(loc.pack),
            offset: Some(loc.offset),
            chunk: Some(*id),
            reason: format!("unreadable: {e}"),
        }
    }

    /// Takes damaged records out of the index; returns how many were not
    /// quarantined before.
    fn quarantine(&self, records: &[(ChunkId, Location)]) -> Result<u64> {
        if records.is_empty() {
            return Ok(0);
        }
        let _gate = self.gate_write();
        let mut t = self.index().current_tombstones();
        let before = t.records.len();
        for (id, loc) in records {
            t.records.insert((*id, loc.pack.0, loc.offset));
        }
        let added = (t.records.len() - before) as u64;
        if added > 0 {
            crate::tombstones::write_tombstones(self.root(), &t)?;
            tracing::warn!(records = added, "quarantined damaged chunk records");
            self.index().set_tombstones(t.clone());
            crate::tombstones::put_tombstones(self.meta(), &t)?;
        }
        Ok(added)
    }
}
