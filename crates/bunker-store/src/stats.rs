//! Space and content figures of a repository, without a scan.
//!
//! The shared part (what several names reference) is what the last GC
//! measured in the `space` file; snapshots committed and packs written
//! since are added from their headers and lengths. The figures are only
//! as exact as the last GC; nothing here reads a manifest's entries.

use crate::format::space::{Space, Usage};
use crate::{Repository, Result};

/// Space and content figures of a repository.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Stats {
    pub snapshots: u64,
    /// Sum of the sizes of all snapshots.
    pub logical_bytes: u64,
    /// Raw bytes of the distinct chunks the snapshots reference (after
    /// dedup, before compression); chunks of snapshots deleted since the
    /// last GC count until that GC runs.
    pub unique_bytes: u64,
    /// The same chunks' bytes in packs (after compression).
    pub referenced_stored_bytes: u64,
    /// Bytes of all pack files.
    pub stored_bytes: u64,
    pub packs: u64,
    /// Index entries (stored chunks).
    pub chunks: u64,
    pub index_bytes: u64,
    /// When the last GC measured the shared part of these figures; `None`
    /// before the first GC.
    pub accounted_unix_ms: Option<i64>,
    /// Per snapshot name, by name.
    pub names: Vec<NameStats>,
}

/// The space of one name's snapshots.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NameStats {
    pub name: String,
    pub snapshots: u64,
    pub logical_bytes: u64,
    /// Chunks no other name references: what deleting all of this name's
    /// snapshots (and a GC) would free.
    pub unique: Usage,
    /// Snapshots deleted since the last GC, whose chunks still count here
    /// until it runs.
    pub deleted_since_gc: u64,
}

impl Stats {
    /// Logical bytes per stored byte (dedup and compression together).
    pub fn reduction_ratio(&self) -> f64 {
        if self.stored_bytes == 0 {
            0.0
        } else {
            self.logical_bytes as f64 / self.stored_bytes as f64
        }
    }
}

impl Repository {
    /// Space figures without a scan: what the last GC measured (the
    /// `space` file), plus the new data recorded in the headers of the
    /// snapshots committed since and the packs written since. Without a
    /// GC yet, every figure comes from the snapshot headers and packs.
    pub fn stats(&self) -> Result<Stats> {
        let list = self.list(None)?;
        let space = self.read_space();
        let backend = self.packs().backend();
        let packs = backend.list()?;
        let mut stored_bytes = space.pack_bytes;
        for p in packs.iter().filter(|p| p.0 >= space.next_pack) {
            // One GC may be deleting right now: a vanished pack holds nothing.
            stored_bytes = stored_bytes.saturating_add(backend.pack_len(*p).unwrap_or(0));
        }
        let included: std::collections::HashSet<(&str, u64)> = space
            .names
            .iter()
            .flat_map(|n| n.snapshots.iter().map(move |&id| (n.name.as_str(), id)))
            .collect();
        let mut names: std::collections::BTreeMap<String, NameStats> = Default::default();
        let mut referenced = space.referenced;
        for s in &list {
            let n = names.entry(s.name.clone()).or_insert_with(|| NameStats {
                name: s.name.clone(),
                ..NameStats::default()
            });
            n.snapshots += 1;
            n.logical_bytes = n.logical_bytes.saturating_add(s.size);
            if !included.contains(&(s.name.as_str(), s.id.0)) {
                let new = Usage {
                    chunks: s.new_chunks,
                    raw_bytes: s.new_raw_bytes,
                    stored_bytes: s.new_bytes,
                };
                n.unique = n.unique.plus(new);
                referenced = referenced.plus(new);
            }
        }
        let current: std::collections::HashSet<(&str, u64)> =
            list.iter().map(|s| (s.name.as_str(), s.id.0)).collect();
        for m in &space.names {
            let n = names.entry(m.name.clone()).or_insert_with(|| NameStats {
                name: m.name.clone(),
                ..NameStats::default()
            });
            n.unique = n.unique.plus(m.unique);
            n.deleted_since_gc = m
                .snapshots
                .iter()
                .filter(|&&id| !current.contains(&(m.name.as_str(), id)))
                .count() as u64;
        }
        Ok(Stats {
            snapshots: list.len() as u64,
            logical_bytes: list.iter().fold(0u64, |t, s| t.saturating_add(s.size)),
            unique_bytes: referenced.raw_bytes,
            referenced_stored_bytes: referenced.stored_bytes,
            stored_bytes,
            packs: packs.len() as u64,
            chunks: self.index().entry_count(),
            index_bytes: self.index().disk_bytes(),
            accounted_unix_ms: (space.written_unix_ms != 0).then_some(space.written_unix_ms),
            names: names.into_values().collect(),
        })
    }

    /// The last GC's space accounting; empty when there is none (or it
    /// cannot be read: it holds figures, not data, so that is logged).
    fn read_space(&self) -> Space {
        let path = self.root().join(crate::gc::SPACE_FILE);
        match std::fs::read(&path) {
            Ok(b) => crate::format::space::decode(crate::gc::SPACE_FILE, &b).unwrap_or_else(|e| {
                tracing::warn!("ignoring the space accounting: {e}");
                Space::default()
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Space::default(),
            Err(e) => {
                tracing::warn!("ignoring the space accounting: {}: {e}", path.display());
                Space::default()
            }
        }
    }
}
