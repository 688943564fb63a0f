//! The [`Repository`] handle: a thin facade over the operations, which live
//! in their own modules.
//!
//! - [`open`]: create, open (with crash recovery), rebuild the index;
//! - [`remote`]: open a repository whose truth is in an object store
//!   (create there, disaster recovery, reconcile);
//! - [`chunks`]: store chunks (reserve, compress, append, publish) and read
//!   them back verified;
//! - [`snapshots`]: list, look up, prune and delete committed snapshots;
//! - `snapshot::writer`: a snapshot being written and the commit protocol;
//! - `gc`, `verify`, `ingest`, `restore`, `stats`: the other operations.
//!
//! The handle's state is private to this module and its children; the
//! other operations go through the narrow accessors below, so what each
//! one touches (the index, the packs, the GC gate, the pins) is visible in
//! its signature.

mod chunks;
mod open;
mod remote;
mod snapshots;

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};

use bunker_chunk::{ChunkId, Chunker, ChunkerParams};

pub use chunks::NewData;
pub(crate) use chunks::{concurrent_writer_failed, naming_true};
pub use open::{
    chunker_for_size, CreateOptions, OpenOptions, Recovery, DEFAULT_PACK_LEN, MAX_CHUNK_SIZE,
    MIN_CHUNK_SIZE,
};
pub use remote::Remote;
pub(crate) use remote::{blocks_key, manifest_key};

use crate::backend::MetaBackend;
use crate::crypt::RepoCrypt;
use crate::format::config::RepoConfig;
use crate::index::Index;
use crate::pack::Packs;
use crate::pins::{PinBoard, Pins};
use crate::sealed_file::FileSeal;
use crate::{Error, Result, SnapshotId};

/// An open repository. Cheap to clone; all clones share one writer.
#[derive(Clone)]
pub struct Repository {
    inner: Arc<Inner>,
}

struct Inner {
    root: PathBuf,
    config: RepoConfig,
    chunker: Chunker,
    packs: Packs,
    index: Index,
    /// `OpenOptions::dedup_window`.
    dedup_window: bool,
    next_snapshot: AtomicU64,
    /// Writers hold the read side from a lookup to the pin it produces; GC
    /// takes the write side to start protecting and to condemn (pins.rs).
    gate: RwLock<()>,
    pins: Arc<PinBoard>,
    /// One GC or verify at a time: verify reads every pack GC may delete.
    maintenance: Mutex<()>,
    /// Serializes deletes (read-modify-write of the deleted-id mark).
    deletes: Mutex<()>,
    /// Serializes the commits of copies, from the check that their origin
    /// is not here yet to the publish: one copy per origin.
    copies: Mutex<()>,
    recovery: Recovery,
    /// The bucket's metadata objects, for a remote repository: every
    /// change to config, manifests, `.deleted-hwm` and `tombstones` goes
    /// there too, in the orders `remote` documents.
    meta: Option<Arc<dyn MetaBackend>>,
    _lock: File,
}

impl Repository {
    pub fn root(&self) -> &Path {
        &self.inner.root
    }

    /// What opening found and repaired (each item was also logged).
    pub fn recovery(&self) -> &Recovery {
        &self.inner.recovery
    }

    pub fn chunker_params(&self) -> ChunkerParams {
        self.inner.config.chunker
    }

    pub fn zstd_level(&self) -> i32 {
        self.inner.config.zstd_level
    }

    pub fn repo_id_hex(&self) -> String {
        self.inner
            .config
            .repo_id
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }

    /// The id of the key the repository is encrypted with; `None`: clear.
    pub fn key_id(&self) -> Option<bunker_crypt::KeyId> {
        self.crypt().map(|c| c.key_id())
    }

    /// The key at work, for an encrypted repository (`crate::crypt`); the
    /// pack writer holds it.
    pub(crate) fn crypt(&self) -> Option<&RepoCrypt> {
        self.inner.packs.crypt()
    }

    /// The id chunk `id` has at rest (in packs, the index and windows):
    /// keyed in an encrypted repository, `id` itself in a clear one.
    pub(crate) fn at_rest(&self, id: &ChunkId) -> ChunkId {
        match self.crypt() {
            Some(c) => c.at_rest(id),
            None => *id,
        }
    }

    /// Held by a copy's commit from its origin check to its publish.
    pub(crate) fn lock_copies(&self) -> MutexGuard<'_, ()> {
        self.inner.copies.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A holder of pins for an upload session: the packs of chunks it was
    /// told are present stay until it is dropped (and one GC start after).
    pub fn pins(&self) -> Pins {
        self.inner.pins.holder()
    }

    /// Seals the open pack and flushes the index: what a clean shutdown does
    /// (recovery would do it too, just more slowly).
    pub fn close(&self) -> Result<()> {
        let sealed = self.inner.packs.seal()?;
        self.index_sealed(sealed);
        self.inner.index.flush()
    }

    /// Drops mapped index pages from this process's resident set.
    pub fn release_memory(&self) {
        self.inner.index.release_pages();
    }

    /// An order-independent digest of the index's (chunk, location) pairs
    /// and their count: equal digests mean equal indexes. Flush first
    /// ([`Repository::close`]) to include entries still in memory.
    pub fn index_digest(&self) -> (u64, u64) {
        let index = &self.inner.index;
        let (mut sum, mut count) = (0u64, 0u64);
        index.for_each_run_entry(|id, loc| {
            if index.lookup(&id) == Some(loc) {
                let mut b = [0u8; 56];
                crate::format::index::encode_entry(&id, &loc, &mut b);
                sum = sum.wrapping_add(crate::format::checksum(&[&b]));
                count += 1;
            }
        });
        (sum, count)
    }

    // Accessors for the operations outside this module.

    pub(crate) fn snapshots_dir(&self) -> PathBuf {
        self.inner.root.join("snapshots")
    }

    /// Where a remote repository's metadata objects are (None: local).
    pub(crate) fn meta(&self) -> Option<&dyn MetaBackend> {
        self.inner.meta.as_deref()
    }

    /// The seal of manifests, `None` in a clear repository.
    pub(crate) fn manifest_seal(&self) -> Option<&FileSeal> {
        self.crypt().map(RepoCrypt::manifests)
    }

    /// The seal of block hashes files, `None` in a clear repository.
    pub(crate) fn blocks_seal(&self) -> Option<&FileSeal> {
        self.crypt().map(RepoCrypt::blocks)
    }

    pub(crate) fn repo_id(&self) -> [u8; 16] {
        self.inner.config.repo_id
    }

    pub(crate) fn chunker(&self) -> Chunker {
        self.inner.chunker
    }

    /// Whether ingests consult the dedup window (`crate::window`).
    pub(crate) fn dedup_window(&self) -> bool {
        self.inner.dedup_window
    }

    pub(crate) fn index(&self) -> &Index {
        &self.inner.index
    }

    pub(crate) fn packs(&self) -> &Packs {
        &self.inner.packs
    }

    pub(crate) fn pin_board(&self) -> &PinBoard {
        &self.inner.pins
    }

    /// Takes the next snapshot id (ids are never reused, gaps are fine).
    pub(crate) fn take_snapshot_id(&self) -> SnapshotId {
        SnapshotId(self.inner.next_snapshot.fetch_add(1, Ordering::SeqCst))
    }

    pub(crate) fn gate_read(&self) -> RwLockReadGuard<'_, ()> {
        self.inner.gate.read().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn gate_write(&self) -> RwLockWriteGuard<'_, ()> {
        self.inner.gate.write().unwrap_or_else(|p| p.into_inner())
    }

    /// Waits for the maintenance lock (verify).
    pub(crate) fn lock_maintenance(&self) -> MutexGuard<'_, ()> {
        self.inner
            .maintenance
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    /// Takes the maintenance lock, or fails with `Busy` (GC).
    pub(crate) fn try_lock_maintenance(&self) -> Result<MutexGuard<'_, ()>> {
        self.inner
            .maintenance
            .try_lock()
            .map_err(|_| Error::Busy("a GC or verify is running".into()))
    }
}

impl Drop for Inner {
    /// A clean close seals the open pack and flushes the index, so the next
    /// open has nothing to recover. Errors are logged: recovery handles
    /// whatever this could not do.
    fn drop(&mut self) {
        match self.packs.seal() {
            Ok(sealed) => {
                for s in sealed {
                    self.index.add_sealed(s.pack, s.index_entries());
                }
            }
            Err(e) => tracing::warn!("sealing the open pack at close failed: {e}"),
        }
        if let Err(e) = self.index.flush() {
            tracing::warn!("flushing the index at close failed: {e}");
        }
    }
}
