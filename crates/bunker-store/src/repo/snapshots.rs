//! Committed snapshots: listing, lookup, manifests, prune and delete.
//!
//! Only committed manifests are listed, so a partial snapshot is never
//! visible. Ids are never reused: deleting records the highest id ever
//! deleted (`snapshots/.deleted-hwm`) before the manifest goes, in the
//! bucket first for a remote repository.

use std::path::Path;

use super::Repository;
use crate::format::deleted_hwm::DeletedHwm;
use crate::snapshot::manifest::ManifestReader;
use crate::snapshot::{self, SnapshotInfo};
use crate::{durable, Error, Result, SnapshotId};

impl Repository {
    /// Snapshots of `name`, or of every name, oldest first within a name.
    /// The snapshots (of `name`), by name then id. A snapshot whose
    /// manifest cannot be read is left out and logged (verify names it);
    /// one deleted while listing is left out.
    pub fn list(&self, name: Option<&str>) -> Result<Vec<SnapshotInfo>> {
        let mut out = Vec::new();
        for (n, id) in self.snapshot_keys(name)? {
            match self.manifest(&n, id) {
                Ok(m) => out.push(SnapshotInfo::from_header(&m.header)),
                Err(Error::NotFound { .. }) => {}
                // A manifest sealed with another key is foreign here: the
                // repository's own key was checked when it opened.
                Err(e @ (Error::Corrupt { .. } | Error::SealedWithOtherKey { .. })) => {
                    tracing::error!("snapshot {n}@{id} left out of the listing: {e}");
                }
                Err(e) => return Err(e),
            }
        }
        Ok(out)
    }

    /// Like [`Repository::list`], but a damaged manifest is an error: for
    /// GC, which must not sweep what a snapshot it cannot read references.
    pub(crate) fn list_strict(&self) -> Result<Vec<SnapshotInfo>> {
        let mut out = Vec::new();
        for (n, id) in self.snapshot_keys(None)? {
            match self.manifest(&n, id) {
                Ok(m) => out.push(SnapshotInfo::from_header(&m.header)),
                Err(Error::NotFound { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(out)
    }

    /// (name, id) of every snapshot file, by name then id, without reading
    /// the manifests.
    pub(crate) fn snapshot_keys(&self, name: Option<&str>) -> Result<Vec<(String, SnapshotId)>> {
        let root = self.snapshots_dir();
        let names = match name {
            Some(n) => {
                snapshot::validate_name(n)?;
                vec![n.to_string()]
            }
            None => snapshot::names(&root)?,
        };
        let mut out = Vec::new();
        for n in names {
            for id in snapshot::ids(&root, &n)? {
                out.push((n.clone(), id));
            }
        }
        Ok(out)
    }

    /// The snapshot `name@id`, or the latest of `name` when `id` is None.
    pub fn snapshot(&self, name: &str, id: Option<SnapshotId>) -> Result<SnapshotInfo> {
        snapshot::validate_name(name)?;
        let id = match id {
            Some(id) => id,
            None => self.latest(name)?,
        };
        Ok(SnapshotInfo::from_header(&self.manifest(name, id)?.header))
    }

    fn latest(&self, name: &str) -> Result<SnapshotId> {
        snapshot::ids(&self.snapshots_dir(), name)?
            .last()
            .copied()
            .ok_or_else(|| Error::NotFound {
                what: format!("snapshots of {name:?}"),
            })
    }

    pub(crate) fn manifest(&self, name: &str, id: SnapshotId) -> Result<ManifestReader> {
        let path = snapshot::manifest_path(&self.snapshots_dir(), name, id);
        let owner = snapshot::Owner::new(self.inner.config.repo_id, name, id);
        let r = ManifestReader::open(&path, &format!("{name}@{id}"), self.manifest_seal(), &owner)?;
        if r.header.name != name
            || r.header.id != id
            || r.header.repo_id != self.inner.config.repo_id
        {
            return Err(Error::corrupt(
                format!("{name}@{id}"),
                "manifest header names another snapshot or repository",
            ));
        }
        Ok(r)
    }

    /// The chunks of `name@id` in stream order, read from the manifest
    /// through a buffer (never all in memory).
    pub fn manifest_entries(
        &self,
        name: &str,
        id: SnapshotId,
    ) -> Result<impl Iterator<Item = Result<crate::ManifestEntry>>> {
        snapshot::validate_name(name)?;
        self.manifest(name, id)?.entries_from(0)
    }

    /// Like [`Self::manifest_entries`], with the entries checked against
    /// the manifest's checksum: a mismatch comes as a last `Corrupt` item.
    pub(crate) fn manifest_checked(
        &self,
        name: &str,
        id: SnapshotId,
    ) -> Result<impl Iterator<Item = Result<crate::ManifestEntry>>> {
        snapshot::validate_name(name)?;
        self.manifest(name, id)?.entries_checked()
    }

    /// Applies a retention policy to the snapshots of `name`: returns the
    /// decisions (newest first) and, unless `dry_run`, deletes the manifests
    /// of the snapshots that go. Their chunks stay until GC.
    pub fn prune(
        &self,
        name: &str,
        policy: &crate::retention::Policy,
        dry_run: bool,
    ) -> Result<Vec<crate::retention::Decision>> {
        let snaps: Vec<(SnapshotId, i64)> = self
            .list(Some(name))?
            .iter()
            .map(|s| (s.id, s.created_unix_ms))
            .collect();
        let decisions = crate::retention::plan(&snaps, policy)?;
        if !dry_run {
            for d in decisions.iter().filter(|d| !d.keep) {
                self.delete(name, d.id)?;
            }
        }
        Ok(decisions)
    }

    /// Removes a snapshot's manifest. Its chunks stay until GC. Works on a
    /// full disk (through the space reserve, [`crate::reserve`]).
    pub fn delete(&self, name: &str, id: SnapshotId) -> Result<()> {
        crate::reserve::retry_with(self.root(), || self.delete_once(name, id))
    }

    fn delete_once(&self, name: &str, id: SnapshotId) -> Result<()> {
        snapshot::validate_name(name)?;
        let root = self.snapshots_dir();
        let path = snapshot::manifest_path(&root, name, id);
        if !path.exists() {
            return Err(Error::NotFound {
                what: format!("snapshot {name}@{id}"),
            });
        }
        // Ids are never reused: remember the highest id ever deleted. In a
        // remote repository the bucket goes first at each step (mark, then
        // manifest object, then the local file), so a delete cut short is
        // finished by the next open's reconcile and the id stays used.
        let _one = self.inner.deletes.lock().unwrap_or_else(|p| p.into_inner());
        let hwm = read_deleted_hwm(&root)?;
        if id.0 > hwm.id || hwm.legacy {
            let mark = crate::format::deleted_hwm::encode(id.0.max(hwm.id));
            if let Some(meta) = self.meta() {
                meta.put(&super::remote::deleted_hwm_key(), &mark)?;
            }
            durable::replace_file(&root.join(DELETED_HWM), &mark)?;
        }
        if let Some(meta) = self.meta() {
            meta.delete(&super::manifest_key(name, id))?;
        }
        durable::remove_file(&path)?;
        // Block hashes after the manifest: a delete cut short here leaves
        // a file no snapshot lists, never a snapshot without them.
        if let Some(meta) = self.meta() {
            meta.delete(&super::blocks_key(name, id))?;
        }
        let blocks = snapshot::blocks::blocks_path(&root, name, id);
        match std::fs::remove_file(&blocks) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(Error::io(&blocks, e)),
            _ => Ok(()),
        }
    }

    /// The block hashes of `name@id`, checked, or `None` for a snapshot
    /// that has none. In a remote repository they are fetched from the
    /// bucket into the data directory the first time.
    pub fn block_hashes(&self, name: &str, id: SnapshotId) -> Result<Option<snapshot::BlocksFile>> {
        snapshot::validate_name(name)?;
        let root = self.snapshots_dir();
        if !snapshot::manifest_path(&root, name, id).exists() {
            return Err(Error::NotFound {
                what: format!("snapshot {name}@{id}"),
            });
        }
        let path = snapshot::blocks::blocks_path(&root, name, id);
        let owner = snapshot::Owner::new(self.repo_id(), name, id);
        if !path.exists() {
            let Some(meta) = self.meta() else {
                return Ok(None);
            };
            let tmp = self.blocks_tmp_path();
            if !meta.get_file(&super::blocks_key(name, id), &tmp)? {
                return Ok(None);
            }
            durable::sync_file_at(&tmp)?;
            snapshot::BlocksFile::open_owned(tmp, self.blocks_seal(), &owner)?.publish(&path)?;
        }
        snapshot::BlocksFile::open(&path, self.blocks_seal(), &owner).map(Some)
    }
}

/// Starts with a dot, which no snapshot name may: it can never collide
/// with a snapshot directory.
pub(super) const DELETED_HWM: &str = ".deleted-hwm";

/// The deleted-id mark in the snapshots directory `root` (id 0 when no
/// snapshot was ever deleted).
pub(super) fn read_deleted_hwm(root: &Path) -> Result<DeletedHwm> {
    match std::fs::read(root.join(DELETED_HWM)) {
        Ok(b) => crate::format::deleted_hwm::decode("snapshots/.deleted-hwm", &b),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(DeletedHwm {
            id: 0,
            legacy: false,
        }),
        Err(e) => Err(Error::io(root.join(DELETED_HWM), e)),
    }
}
