//! Verifying a repository: every record of every pack, the index runs, and
//! every manifest against what is stored.
//!
//! Packs are read in id order with their records decoded and BLAKE3-checked
//! in parallel. Damage is reported by location (pack, offset, chunk), then
//! mapped to the snapshots that reference it, exactly: a snapshot is listed
//! if and only if it references a damaged or missing chunk or its manifest
//! is itself damaged.

use std::collections::HashSet;

use bunker_chunk::ChunkId;
use rayon::prelude::*;

use crate::pack::read_trailer;
use crate::{Error, Location, PackId, Repository, Result, SnapshotId};

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
    pub damaged_snapshots: Vec<DamagedSnapshot>,
}

impl VerifyReport {
    pub fn is_clean(&self) -> bool {
        self.damage.is_empty() && self.damaged_snapshots.is_empty()
    }
}

impl Repository {
    /// Checks everything; see the module documentation.
    pub fn verify(&self) -> Result<VerifyReport> {
        // Not beside a GC: it deletes packs this reads.
        let _one = self
            .inner
            .maintenance
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let backend = self.inner.packs.backend();
        let mut report = VerifyReport::default();
        let packs = backend.list()?;
        let present: HashSet<PackId> = packs.iter().copied().collect();
        let mut damaged_chunks: HashSet<ChunkId> = HashSet::new();
        let mut bad_trailers: HashSet<PackId> = HashSet::new();
        for &pack in &packs {
            report.packs += 1;
            let entries = match read_trailer(backend, pack) {
                Ok(e) => e,
                Err(e) => {
                    report.damage.push(Damage::from_error(e));
                    bad_trailers.insert(pack);
                    continue;
                }
            };
            let results: Vec<(u64, Result<Vec<u8>>)> = entries
                .par_iter()
                .map(|e| {
                    let loc = Location {
                        pack,
                        offset: e.offset,
                        raw_len: e.raw_len,
                        stored_len: e.stored_len,
                    };
                    (u64::from(e.stored_len), self.read_at(&e.id, &loc))
                })
                .collect();
            for ((stored, r), e) in results.into_iter().zip(&entries) {
                report.chunks += 1;
                report.stored_bytes += stored;
                if let Err(err) = r {
                    damaged_chunks.insert(e.id);
                    report.damage.push(Damage::from_error(err));
                }
            }
        }
        for e in self.inner.index.verify_runs() {
            report.damage.push(Damage::from_error(e));
        }
        for info in self.list(None)? {
            report.snapshots += 1;
            if let Some(d) = self.check_snapshot(
                &info.name,
                info.id,
                &present,
                &damaged_chunks,
                &bad_trailers,
            )? {
                report.damaged_snapshots.push(d);
            }
        }
        Ok(report)
    }

    fn check_snapshot(
        &self,
        name: &str,
        id: SnapshotId,
        present: &HashSet<PackId>,
        damaged: &HashSet<ChunkId>,
        bad_trailers: &HashSet<PackId>,
    ) -> Result<Option<DamagedSnapshot>> {
        let damaged_snapshot = |bad_chunks, reason: String| DamagedSnapshot {
            name: name.to_string(),
            id,
            bad_chunks,
            reason,
        };
        let manifest = match self.manifest(name, id) {
            Ok(m) => m,
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
            let problem = match self.locate(&entry.id) {
                None => Some(format!("chunk {} is not in the repository", entry.id)),
                Some(loc) if !present.contains(&loc.pack) => Some(format!(
                    "chunk {} is in missing pack {}",
                    entry.id, loc.pack.0
                )),
                Some(loc) if u64::from(loc.raw_len) != entry.end - entry.start => {
                    Some(format!("chunk {} has the wrong length", entry.id))
                }
                Some(_) if damaged.contains(&entry.id) => {
                    Some(format!("chunk {} is damaged", entry.id))
                }
                Some(loc) if bad_trailers.contains(&loc.pack) => {
                    self.read_at(&entry.id, &loc).err().map(|e| e.to_string())
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
