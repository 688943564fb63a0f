//! Opening a repository whose truth is in an object store ("the bucket").
//!
//! The bucket holds the sealed packs (a [`PackBackend`]) and, as keyed
//! objects (a [`MetaBackend`]), the config, every committed manifest,
//! `snapshots/.deleted-hwm` and `tombstones`. The data directory holds the
//! index, staging packs and local copies of those objects. Every change
//! reaches the bucket before it is acknowledged, so the bucket alone
//! rebuilds a server. Opening compares the two sides:
//!
//! | data directory | bucket | what opening does |
//! |---|---|---|
//! | no config | no config | creates the repository: config to the bucket, then locally |
//! | no config | config | disaster recovery: downloads everything, rebuilds the index from the pack trailers |
//! | config | config | same repository id or refused; then reconciles (below) |
//! | config | no config | refused: a bucket is never seeded from a data directory |
//!
//! Reconciling: manifests in the bucket but not local are downloaded (a
//! commit cut between its upload and its local rename); local manifests
//! not in the bucket are removed (a delete cut between the object's
//! deletion and the file's); the deleted-id mark is the higher of the two;
//! tombstones are the union of the two. Layout and rules: docs/FORMAT.md,
//! "Remote repositories".

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use super::open::{
    clear_tmp, lock_repository, new_config, write_layout, CreateOptions, OpenOptions, Recovery,
    PROGRESS_EVERY,
};
use super::snapshots::{read_deleted_hwm, DELETED_HWM};
use super::Repository;
use crate::backend::{MetaBackend, PackBackend};
use crate::crypt::RepoCrypt;
use crate::format::config::RepoConfig;
use crate::sealed_file::FileSeal;
use crate::snapshot::manifest::ManifestReader;
use crate::tombstones::{read_tombstones, TOMBSTONES};
use crate::{durable, snapshot, Error, Result, SnapshotId};

/// The bucket of a remote repository: its packs and its other objects.
/// Both outlive any one server (tests share them through the `Arc`s, as
/// a bucket is shared by a lost server and its replacement).
#[derive(Clone)]
pub struct Remote {
    pub packs: Arc<dyn PackBackend>,
    pub meta: Arc<dyn MetaBackend>,
}

/// The key of the deleted-id mark.
pub(crate) fn deleted_hwm_key() -> String {
    format!("snapshots/{DELETED_HWM}")
}

/// The key of `name@id`'s manifest: its path under the repository.
/// The object holding a snapshot's block hashes (`snapshot::blocks`).
pub(crate) fn blocks_key(name: &str, id: SnapshotId) -> String {
    format!("snapshots/{name}/{}.blocks", id.0)
}

pub(crate) fn manifest_key(name: &str, id: SnapshotId) -> String {
    format!("snapshots/{name}/{}.snap", id.0)
}

/// `(name, id)` of a manifest key; None for any other key.
fn parse_manifest_key(key: &str) -> Option<(String, SnapshotId)> {
    let (name, file) = key.strip_prefix("snapshots/")?.split_once('/')?;
    snapshot::validate_name(name).ok()?;
    let id = file.strip_suffix(".snap")?;
    if id.is_empty() || !id.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some((name.to_string(), SnapshotId(id.parse().ok()?)))
}

impl Repository {
    /// Opens the repository in `remote` with `path` as its data directory,
    /// creating it (default parameters) when both are empty. See the module
    /// documentation for the four cases.
    pub fn open_remote(path: &Path, remote: Remote) -> Result<Repository> {
        Self::open_remote_with(
            path,
            OpenOptions::default(),
            CreateOptions::default(),
            remote,
        )
    }

    /// [`Repository::open_remote`] with this process's options, and the
    /// parameters to create the repository with if the bucket holds none
    /// (ignored otherwise: they are fixed at creation).
    pub fn open_remote_with(
        path: &Path,
        opts: OpenOptions,
        create: CreateOptions,
        remote: Remote,
    ) -> Result<Repository> {
        let started = Instant::now();
        let meta = &*remote.meta;
        durable::create_dir_all(path)?;
        let lock = lock_repository(path)?;
        let local = read_local_config(path)?;
        let bucket = match meta.get("config")? {
            Some(b) => Some((
                RepoConfig::decode(&format!("config in {}", meta.describe()), &b)?,
                b,
            )),
            None => None,
        };
        let mut recovery = Recovery::default();
        if local.is_none() {
            // An index here belongs to no repository we know: lookups in it
            // would name packs the bucket may not hold.
            let index = path.join("index");
            if index.exists() {
                std::fs::remove_dir_all(&index).map_err(|e| Error::io(&index, e))?;
            }
        }
        let bucket = match (&local, bucket) {
            (None, None) => {
                // The bucket first, create-only: a crash before the local
                // write leaves a bucket the next open recovers from, and a
                // create that lands late (its process killed mid-request)
                // or a second process can never replace a config another
                // open already adopted.
                let config = new_config(path, &create)?;
                if meta.put_new("config", &config.encode())? {
                    write_layout(path, &config)?;
                    tracing::info!(store = %meta.describe(), "created a repository in the object store");
                    None
                } else {
                    let b = meta.get("config")?.ok_or_else(|| Error::Remote {
                        store: meta.describe(),
                        reason:
                            "the config object exists for a conditional create but not for a read"
                                .into(),
                    })?;
                    Some((
                        RepoConfig::decode(&format!("config in {}", meta.describe()), &b)?,
                        b,
                    ))
                }
            }
            (_, bucket) => bucket,
        };
        match (local, bucket) {
            (None, None) => {}
            (None, Some((_, bytes))) => {
                tracing::info!(store = %meta.describe(), "the data directory holds no repository: recovering it from the object store");
                for dir in ["packs", "index", "snapshots", "tmp"] {
                    durable::create_dir_all(&path.join(dir))?;
                }
                clear_tmp(&path.join("tmp"))?;
                // Config first: a recovery cut short is finished by the
                // next open's reconcile.
                durable::replace_file(&path.join("config"), &bytes)?;
                recovery.restored_from_remote = true;
            }
            (Some(l), Some((b, _))) if l.repo_id != b.repo_id => {
                return Err(Error::Invalid(format!(
                    "the data directory {} belongs to repository {}, but the object store {} holds repository {}: point the server at the bucket of its own repository, or give it an empty data directory to recover the bucket's",
                    path.display(),
                    hex(&l.repo_id),
                    meta.describe(),
                    hex(&b.repo_id)
                )));
            }
            (Some(_), Some(_)) => {}
            (Some(l), None) => {
                return Err(Error::Invalid(format!(
                    "the data directory {} holds repository {}, but the object store {} holds no repository (no `config` object); bunker never copies a local repository into a bucket: point the server at the bucket it was created in, or move the data directory away to create a new repository there",
                    path.display(),
                    hex(&l.repo_id),
                    meta.describe()
                )));
            }
        }
        for dir in ["packs", "index", "snapshots", "tmp"] {
            durable::create_dir_all(&path.join(dir))?;
        }
        clear_tmp(&path.join("tmp"))?;
        // The key is checked against the config before any manifest is
        // downloaded: a wrong key must not make good manifests look damaged.
        let config = read_local_config(path)?.ok_or_else(|| Error::NotFound {
            what: format!("bunker repository at {} (no config file)", path.display()),
        })?;
        let crypt = super::open::check_key(path, &config, opts.key.as_deref())?;
        reconcile(
            path,
            meta,
            crypt.as_deref().map(RepoCrypt::manifests),
            &mut recovery,
        )?;
        let dr = recovery.restored_from_remote;
        let repo = Self::open_locked(
            path,
            opts,
            lock,
            Some(Box::new(remote.packs.clone())),
            Some(remote.meta.clone()),
            recovery,
        )?;
        let r = repo.recovery();
        if dr || r.manifests_downloaded > 0 || r.manifests_removed > 0 || r.packs_indexed > 0 {
            tracing::info!(
                store = %meta.describe(),
                disaster_recovery = dr,
                manifests_downloaded = r.manifests_downloaded,
                manifests_removed = r.manifests_removed,
                packs_indexed = r.packs_indexed,
                seconds = started.elapsed().as_secs_f64(),
                "opened the repository from the object store"
            );
        }
        Ok(repo)
    }
}

impl Repository {
    /// Deletes the index of the remote repository at `path` and rebuilds
    /// it from the trailers of the packs in the bucket (after reconciling
    /// as any open does). Refused while another process has it open.
    pub fn rebuild_index_remote(path: &Path, opts: OpenOptions, remote: Remote) -> Result<()> {
        if !path.join("config").exists() {
            return Err(Error::NotFound {
                what: format!("bunker repository at {} (no config file)", path.display()),
            });
        }
        // Held across the removal. Another process that opens the
        // repository between the drop and `open_remote` finds no index and
        // rebuilds it the same way.
        let lock = lock_repository(path)?;
        let index = path.join("index");
        if index.exists() {
            std::fs::remove_dir_all(&index).map_err(|e| Error::io(&index, e))?;
        }
        drop(lock);
        Self::open_remote_with(path, opts, CreateOptions::default(), remote)?.close()
    }
}

fn hex(id: &[u8; 16]) -> String {
    id.iter().map(|b| format!("{b:02x}")).collect()
}

fn read_local_config(path: &Path) -> Result<Option<RepoConfig>> {
    let p = path.join("config");
    match std::fs::read(&p) {
        Ok(b) => Ok(Some(RepoConfig::decode("config", &b)?)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::io(p, e)),
    }
}

/// Brings the data directory's manifests, deleted-id mark and tombstones
/// in line with the bucket (module documentation), and the bucket's mark
/// and tombstones up to anything newer a cut-short write left locally.
fn reconcile(
    root: &Path,
    meta: &dyn MetaBackend,
    seal: Option<&FileSeal>,
    recovery: &mut Recovery,
) -> Result<()> {
    let snapshots = root.join("snapshots");
    // The deleted-id mark: the higher of the two, on both sides, before any
    // manifest moves, so no id below it can be handed out again.
    let key = deleted_hwm_key();
    let remote_hwm = match meta.get(&key)? {
        Some(b) => crate::format::deleted_hwm::decode(&key, &b)?.id,
        None => 0,
    };
    let local_hwm = read_deleted_hwm(&snapshots)?;
    let hwm = remote_hwm.max(local_hwm.id);
    let mark = crate::format::deleted_hwm::encode(hwm);
    if hwm > remote_hwm {
        meta.put(&key, &mark)?;
    }
    if hwm > local_hwm.id || (hwm > 0 && local_hwm.legacy) {
        durable::replace_file(&snapshots.join(DELETED_HWM), &mark)?;
    }

    // Tombstones: the union. A pack either side condemned stays condemned
    // (its live records were copied first), and a record either side
    // quarantined stays out of lookups.
    let remote_tombs = match meta.get(TOMBSTONES)? {
        Some(b) => Some(crate::format::tombstones::decode(TOMBSTONES, &b)?),
        None => None,
    };
    let local_tombs = read_tombstones(root)?;
    let mut tombs = local_tombs.clone();
    if let Some(r) = &remote_tombs {
        tombs.packs.extend(r.packs.iter().copied());
        tombs.records.extend(r.records.iter().copied());
    }
    let bytes = crate::format::tombstones::encode(&tombs);
    let empty = tombs == Default::default();
    if remote_tombs.as_ref() != Some(&tombs) && !(remote_tombs.is_none() && empty) {
        meta.put(TOMBSTONES, &bytes)?;
    }
    if local_tombs != tombs {
        durable::replace_file(&root.join(TOMBSTONES), &bytes)?;
    }

    // Manifests.
    let remote: BTreeSet<(String, SnapshotId)> = meta
        .list("snapshots/")?
        .iter()
        .filter_map(|k| parse_manifest_key(k))
        .collect();
    let mut local = BTreeSet::new();
    for name in snapshot::names(&snapshots)? {
        for id in snapshot::ids(&snapshots, &name)? {
            local.insert((name.clone(), id));
        }
    }
    for (name, id) in local.difference(&remote) {
        tracing::warn!(snapshot = %format!("{name}@{id}"), "removing a local manifest the object store no longer holds (a delete was cut short)");
        durable::remove_file(&snapshot::manifest_path(&snapshots, name, *id))?;
        recovery.manifests_removed += 1;
    }
    let missing: Vec<_> = remote.difference(&local).collect();
    let repo_id = read_local_config(root)?.map_or([0; 16], |c| c.repo_id);
    let mut damaged = 0usize;
    for (n, (name, id)) in missing.iter().enumerate() {
        if n > 0 && n % PROGRESS_EVERY == 0 {
            tracing::info!(done = n, total = missing.len(), "downloading manifests");
        }
        match download_manifest(root, meta, seal.map(|s| (s, repo_id)), name, *id)? {
            Downloaded::Valid => recovery.manifests_downloaded += 1,
            Downloaded::Damaged => {
                recovery.manifests_downloaded += 1;
                damaged += 1;
            }
            Downloaded::Gone => {}
        }
    }
    if !missing.is_empty() {
        tracing::info!(
            downloaded = recovery.manifests_downloaded,
            damaged,
            "downloaded the manifests the data directory lacked"
        );
    }
    Ok(())
}

enum Downloaded {
    Valid,
    /// Installed anyway: listing leaves it out and logs it, verify names
    /// it, and its id is never handed out again.
    Damaged,
    /// Deleted from the bucket since it was listed.
    Gone,
}

/// Downloads `name@id` into `tmp/`, syncs, checks it and renames it into
/// place, as a commit publishes a manifest.
fn download_manifest(
    root: &Path,
    meta: &dyn MetaBackend,
    seal: Option<(&FileSeal, [u8; 16])>,
    name: &str,
    id: SnapshotId,
) -> Result<Downloaded> {
    let key = manifest_key(name, id);
    let tmp = root
        .join("tmp")
        .join(format!("{name}-{}.snap.download", id.0));
    if !meta.get_file(&key, &tmp)? {
        return Ok(Downloaded::Gone);
    }
    durable::sync_file_at(&tmp)?;
    let shown = format!("{name}@{id}");
    let owner = snapshot::Owner::new(seal.map_or([0; 16], |(_, r)| r), name, id);
    let outcome = match ManifestReader::open(&tmp, &shown, seal.map(|(s, _)| s), &owner) {
        Ok(m) if m.header.name == name && m.header.id == id => Downloaded::Valid,
        Ok(_) => {
            tracing::error!(snapshot = %shown, "the object store's manifest names another snapshot");
            Downloaded::Damaged
        }
        Err(e) => {
            tracing::error!(snapshot = %shown, "the object store's manifest is damaged: {e}");
            Downloaded::Damaged
        }
    };
    let dest = snapshot::manifest_path(&root.join("snapshots"), name, id);
    if let Some(dir) = dest.parent() {
        durable::create_dir_all(dir)?;
    }
    durable::rename(&tmp, &dest)?;
    Ok(outcome)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manifest_keys_round_trip_and_other_keys_are_not_manifests() {
        let key = manifest_key("vol-1", SnapshotId(42));
        assert_eq!(key, "snapshots/vol-1/42.snap");
        assert_eq!(
            parse_manifest_key(&key),
            Some(("vol-1".to_string(), SnapshotId(42)))
        );
        for other in [
            "snapshots/.deleted-hwm",
            "snapshots/vol/x.snap",
            "snapshots/vol/.snap",
            "snapshots/vol/1.snap.tmp",
            "snapshots/.hidden/1.snap",
            "snapshots/a/b/1.snap",
            "config",
            "tombstones",
        ] {
            assert_eq!(parse_manifest_key(other), None, "{other}");
        }
    }
}
