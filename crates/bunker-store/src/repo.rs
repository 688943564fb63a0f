//! Opening, creating and recovering a repository; snapshot commit, listing,
//! deletion and chunk reads.
//!
//! Opening recovers from any crash without a manual step: temp files are
//! removed, staging packs have their torn tails cut and are sealed, sealed
//! packs the index does not cover are re-indexed from their trailers, and
//! index runs no state lists are removed. Only committed manifests are ever
//! listed, so a partial snapshot is never visible.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Instant;

use bunker_chunk::{ChunkId, Chunker, ChunkerParams};

use crate::backend::{LocalPacks, PackBackend, ReadMode};
use crate::compress::{compress, decompress};
use crate::error::IoContext;
use crate::format::config::RepoConfig;
use crate::format::deleted_hwm::DeletedHwm;
use crate::format::manifest::ManifestHeader;
use crate::format::space::{Space, Usage};
use crate::format::Le;
use crate::index::{Index, Reservation, Tombstones};
use crate::pack::{read_trailer, recover_staged, NewRecord, Packs, SealedPack, TornTail};
use crate::pins::{PinBoard, Pins};
use crate::snapshot::manifest::{ManifestReader, ManifestWriter};
use crate::snapshot::{self, SnapshotInfo};
use crate::{durable, Error, Location, Result, SnapshotId};

/// Parameters fixed when a repository is created.
#[derive(Clone, Copy, Debug)]
pub struct CreateOptions {
    pub chunker: ChunkerParams,
    /// zstd level for chunks worth compressing (1..=19). Default 1: on
    /// SAN-like images level 3 saved under 1% more space and cost 11% of
    /// day-0 ingest speed (docs/BENCHMARKS.md).
    pub zstd_level: i32,
    /// A pack is sealed once it reaches this length.
    pub pack_target_len: u64,
}

/// Default pack length, 256 MiB: 100 TB of unique data is ~400 000 packs,
/// which the two-level fan-out lists quickly; a pack is still a reasonable
/// unit to rewrite in GC and to move to object storage.
pub const DEFAULT_PACK_LEN: u64 = 256 << 20;

impl Default for CreateOptions {
    fn default() -> Self {
        CreateOptions {
            chunker: ChunkerParams::DEFAULT,
            zstd_level: 1,
            pack_target_len: DEFAULT_PACK_LEN,
        }
    }
}

/// Choices of this process, not stored in the repository.
#[derive(Clone, Copy, Debug)]
pub struct OpenOptions {
    pub read_mode: ReadMode,
    /// Index entries kept in memory before they are flushed to runs.
    pub index_flush_at: usize,
}

impl Default for OpenOptions {
    fn default() -> Self {
        OpenOptions {
            read_mode: ReadMode::Pread,
            index_flush_at: 16 * 1024,
        }
    }
}

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

/// Chunks a backup stored that the repository did not hold before.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NewData {
    pub chunks: u64,
    /// Their uncompressed bytes.
    pub raw_bytes: u64,
    /// Their bytes in packs (after compression, record headers excluded).
    pub stored_bytes: u64,
}

impl NewData {
    pub fn add(&mut self, raw_bytes: u64, stored_bytes: u64) {
        self.chunks += 1;
        self.raw_bytes += raw_bytes;
        self.stored_bytes += stored_bytes;
    }
}

/// An open repository. Cheap to clone; all clones share one writer.
#[derive(Clone)]
pub struct Repository {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pub(crate) root: PathBuf,
    pub(crate) config: RepoConfig,
    pub(crate) chunker: Chunker,
    pub(crate) packs: Packs,
    pub(crate) index: Index,
    next_snapshot: AtomicU64,
    /// Writers hold the read side from a lookup to the pin it produces; GC
    /// takes the write side to start protecting and to condemn (pins.rs).
    pub(crate) gate: RwLock<()>,
    pub(crate) pins: Arc<PinBoard>,
    /// One GC or verify at a time: verify reads every pack GC may delete.
    pub(crate) maintenance: Mutex<()>,
    /// Serializes deletes (read-modify-write of the deleted-id mark).
    deletes: Mutex<()>,
    recovery: Recovery,
    _lock: File,
}

/// What opening a repository found and repaired after a crash, a power cut
/// or damage. Every item is also logged when it happens.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Recovery {
    /// Staging packs whose torn tail (or whole file) was cut; the records
    /// before the cut were sealed into a pack.
    pub torn_tails: Vec<TornTail>,
    /// The index was damaged (this says how) and was rebuilt from the packs.
    pub index_rebuilt: Option<String>,
    /// Sealed or recovered packs the index did not cover, now indexed.
    pub packs_indexed: usize,
    /// Temp files of interrupted atomic replaces (`NAME.PID.SEQ.tmp` of
    /// `config`, `tombstones`, `space`, `index/state`,
    /// `snapshots/.deleted-hwm`) that were removed, relative to the root.
    pub temp_files_removed: Vec<PathBuf>,
}

impl Repository {
    /// Creates a new repository at `path` (an empty or missing directory).
    pub fn create(path: &Path, opts: CreateOptions) -> Result<Repository> {
        if !(1..=19).contains(&opts.zstd_level) {
            return Err(Error::Invalid(format!(
                "zstd level {} is outside 1..=19",
                opts.zstd_level
            )));
        }
        if opts.pack_target_len < 1 << 20 {
            return Err(Error::Invalid(
                "pack target length must be at least 1 MiB".into(),
            ));
        }
        durable::create_dir_all(path)?;
        let config_path = path.join("config");
        if config_path.exists() {
            return Err(Error::AlreadyExists {
                what: format!("a repository at {}", path.display()),
            });
        }
        let mut seed = blake3::Hasher::new();
        seed.update(&crate::clock::now_unix_ms().to_le_bytes());
        seed.update(&std::process::id().to_le_bytes());
        seed.update(path.as_os_str().as_encoded_bytes());
        seed.update(&format!("{:?}", Instant::now()).into_bytes());
        let config = RepoConfig {
            repo_id: Le::bytes(seed.finalize().as_bytes(), 0),
            created_unix: crate::clock::now_unix_ms() / 1000,
            chunker: opts.chunker,
            zstd_level: opts.zstd_level,
            pack_target_len: opts.pack_target_len,
        };
        for dir in ["packs", "index", "snapshots", "tmp"] {
            durable::create_dir_all(&path.join(dir))?;
        }
        durable::replace_file(&config_path, &config.encode())?;
        Self::open_with(path, OpenOptions::default())
    }

    pub fn open(path: &Path) -> Result<Repository> {
        Self::open_with(path, OpenOptions::default())
    }

    /// Opens the repository at `path`, creating it with `create` if there is none.
    pub fn open_or_create(path: &Path, create: CreateOptions) -> Result<Repository> {
        if path.join("config").exists() {
            Self::open(path)
        } else {
            Self::create(path, create)
        }
    }

    pub fn open_with(path: &Path, opts: OpenOptions) -> Result<Repository> {
        if !path.join("config").exists() {
            return Err(Error::NotFound {
                what: format!("bunker repository at {} (no config file)", path.display()),
            });
        }
        let lock = lock_repository(path)?;
        Self::open_locked(path, opts, lock)
    }

    /// Opens the repository whose lock the caller already holds.
    fn open_locked(path: &Path, opts: OpenOptions, lock: File) -> Result<Repository> {
        let config_path = path.join("config");
        let bytes = std::fs::read(&config_path).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => Error::NotFound {
                what: format!("bunker repository at {} (no config file)", path.display()),
            },
            _ => Error::io(&config_path, e),
        })?;
        let config = RepoConfig::decode("config", &bytes)?;
        for dir in ["packs", "index", "snapshots", "tmp"] {
            durable::create_dir_all(&path.join(dir))?;
        }
        clear_tmp(&path.join("tmp"))?;
        let mut recovery = Recovery {
            temp_files_removed: remove_replace_temps(path)?,
            ..Recovery::default()
        };
        let backend = LocalPacks::new(path.join("packs"), opts.read_mode);
        let index_dir = path.join("index");
        let index = match Index::open(&index_dir, opts.index_flush_at) {
            Ok(index) => index,
            // The index is a cache of the packs: a damaged one (torn, bit
            // rot, a run missing) is dropped and rebuilt from them, so a
            // restart needs no manual step.
            Err(e @ (Error::Corrupt { .. } | Error::NotBunkerFile { .. })) => {
                tracing::warn!("the index is damaged ({e}); rebuilding it from the packs");
                recovery.index_rebuilt = Some(e.to_string());
                std::fs::remove_dir_all(&index_dir).at(&index_dir)?;
                Index::open(&index_dir, opts.index_flush_at)?
            }
            // Written by a newer build: not ours to throw away.
            Err(e @ Error::UnsupportedVersion { .. }) => {
                return Err(Error::Corrupt {
                    file: "index".into(),
                    pack: None,
                    offset: None,
                    chunk: None,
                    reason: format!(
                        "{e} (the index is a cache of the packs: `bunker repair --rebuild-index` rebuilds it)"
                    ),
                })
            }
            Err(e) => return Err(e),
        };
        let tombstones = read_tombstones(path)?;
        let backend = finish_condemned(backend, &tombstones)?;
        index.set_tombstones(tombstones);
        let mut next_pack = recover_packs(&backend, &index, config.repo_id, &mut recovery)?;
        // Never reuse the id of a tombstoned pack (after an index rebuild
        // the covered ranges that would prevent it are gone).
        let tombs = index.current_tombstones();
        let tombstoned = tombs.packs.iter().chain(tombs.records.iter().map(|r| &r.1));
        next_pack = next_pack.max(tombstoned.max().map_or(0, |m| m + 1));
        if recovery.packs_indexed > 0 {
            tracing::info!(
                packs = recovery.packs_indexed,
                "indexed packs the index did not cover"
            );
        }
        index.flush()?;
        let next_snapshot = next_snapshot_id(&path.join("snapshots"))?;
        Ok(Repository {
            inner: Arc::new(Inner {
                root: path.to_path_buf(),
                chunker: Chunker::new(config.chunker),
                packs: Packs::new(
                    Box::new(backend),
                    config.repo_id,
                    config.pack_target_len,
                    next_pack,
                ),
                index,
                config,
                next_snapshot: AtomicU64::new(next_snapshot),
                gate: RwLock::new(()),
                pins: Arc::new(PinBoard::default()),
                maintenance: Mutex::new(()),
                deletes: Mutex::new(()),
                recovery,
                _lock: lock,
            }),
        })
        .inspect(|r| crate::reserve::ensure(r.root()))
    }

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

    fn snapshots_dir(&self) -> PathBuf {
        self.inner.root.join("snapshots")
    }

    /// Starts a snapshot of `name` that the caller fills chunk by chunk
    /// (the chunk protocol; [`Repository::ingest`] uses it too).
    pub fn begin_snapshot(&self, name: &str, source: &str, creator: u64) -> Result<SnapshotWriter> {
        snapshot::validate_name(name)?;
        let tmp = self.inner.root.join("tmp").join(format!(
            "{}-{}-{}.snap.tmp",
            name,
            std::process::id(),
            TMP_SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        Ok(SnapshotWriter {
            repo: self.clone(),
            name: name.to_string(),
            source: source.to_string(),
            creator,
            manifest: ManifestWriter::create(tmp)?,
            pins: self.pins(),
            new_chunks: 0,
            new_bytes: 0,
            new_raw_bytes: 0,
            zero_chunks: 0,
            started: Instant::now(),
        })
    }

    /// A holder of pins for an upload session: the packs of chunks it was
    /// told are present stay until it is dropped (and one GC start after).
    pub fn pins(&self) -> Pins {
        self.inner.pins.holder()
    }

    /// Which of `ids` the repository does not have (pending chunks count as
    /// present: another stream is storing them). The packs of those present
    /// are pinned in `pins`, so GC keeps them for the session's commit.
    pub fn missing(&self, ids: &[ChunkId], pins: &Pins) -> Vec<bool> {
        let _gate = self.gate_read();
        let mut packs = Vec::new();
        let out = ids
            .iter()
            .map(|id| {
                if id.is_zero() {
                    return false;
                }
                match self.inner.index.lookup(id) {
                    Some(loc) => {
                        packs.push(loc.pack);
                        false
                    }
                    None => !self.is_pending(id),
                }
            })
            .collect();
        pins.add(packs);
        out
    }

    pub(crate) fn gate_read(&self) -> std::sync::RwLockReadGuard<'_, ()> {
        self.inner.gate.read().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn gate_write(&self) -> std::sync::RwLockWriteGuard<'_, ()> {
        self.inner.gate.write().unwrap_or_else(|p| p.into_inner())
    }

    /// Looks `id` up and pins its pack: for a chunk a writer was told was
    /// pending, once its writer has published it.
    fn locate_pinned(&self, id: &ChunkId, pins: &Pins) -> Option<Location> {
        self.inner.index.wait(id)?;
        let _gate = self.gate_read();
        let loc = self.inner.index.lookup(id)?;
        pins.add([loc.pack]);
        Some(loc)
    }

    fn is_pending(&self, id: &ChunkId) -> bool {
        matches!(
            self.inner.index.reserve_peek(id),
            Some(Reservation::Pending)
        )
    }

    /// Stores one chunk given its raw bytes, after checking that they hash
    /// to `id`. Returns the bytes added to packs (0: it was stored already).
    pub fn store_chunk(&self, id: &ChunkId, raw: &[u8], pins: &Pins) -> Result<u64> {
        if raw.is_empty() || raw.len() > self.inner.config.chunker.max_len as usize {
            return Err(Error::Invalid(format!(
                "chunk of {} bytes is outside 1..=max_len",
                raw.len()
            )));
        }
        let actual = ChunkId::of(raw);
        if actual != *id {
            return Err(Error::ChunkHashMismatch {
                claimed: *id,
                actual,
            });
        }
        let (new, pending) = self.store_chunks(&[(*id, raw)], pins)?;
        for id in pending {
            self.locate_pinned(&id, pins)
                .ok_or_else(|| concurrent_writer_failed(&id))?;
        }
        Ok(new.stored_bytes)
    }

    /// Stores chunks that are not stored yet; returns what was stored
    /// and the ids another stream is storing right now. The
    /// packs of all the others are pinned in `pins`: the GC gate is held
    /// from the lookups to the pins, across the appends.
    pub(crate) fn store_chunks(
        &self,
        chunks: &[(ChunkId, &[u8])],
        pins: &Pins,
    ) -> Result<(NewData, Vec<ChunkId>)> {
        use rayon::prelude::*;
        let inner = &*self.inner;
        let gate = self.gate_read();
        let mut mine = Vec::new();
        let mut pending = Vec::new();
        let mut known = Vec::new();
        for (i, (id, _)) in chunks.iter().enumerate() {
            match inner.index.reserve(id) {
                Reservation::Mine => mine.push(i),
                Reservation::Pending => pending.push(*id),
                Reservation::Known(loc) => known.push(loc.pack),
            }
        }
        pins.add(known);
        if mine.is_empty() {
            return Ok((NewData::default(), pending));
        }
        let level = inner.config.zstd_level;
        let stored: Vec<_> = mine
            .par_iter()
            .map(|&i| compress(chunks[i].1, level))
            .collect();
        let records: Vec<NewRecord<'_>> = mine
            .iter()
            .zip(&stored)
            .map(|(&i, s)| NewRecord {
                id: chunks[i].0,
                raw_len: chunks[i].1.len() as u32,
                codec: s.codec(),
                stored: s.bytes(),
            })
            .collect();
        match inner.packs.append(&records) {
            Ok((locations, sealed)) => {
                pins.add(locations.iter().map(|l| l.pack));
                let mut new = NewData::default();
                for (r, loc) in records.iter().zip(&locations) {
                    new.add(u64::from(loc.raw_len), u64::from(loc.stored_len));
                    inner.index.publish(&r.id, *loc);
                }
                // Pinned: an index flush (fsyncs) need not hold GC back.
                drop(gate);
                self.index_sealed(sealed);
                Ok((new, pending))
            }
            Err(e) => {
                for r in &records {
                    inner.index.abandon(&r.id);
                }
                Err(e)
            }
        }
    }

    /// Hands sealed packs to the index, flushing it when its in-memory
    /// part is full: during one long stream too, so memory does not grow
    /// with the size of a backup. A failed flush loses nothing (the index
    /// is a cache; the entries stay queued) and is retried at the next one.
    pub(crate) fn index_sealed(&self, sealed: impl IntoIterator<Item = SealedPack>) {
        let index = &self.inner.index;
        for s in sealed {
            index.add_sealed(s.pack, s.index_entries());
        }
        if index.needs_flush() {
            if let Err(e) = index.flush() {
                tracing::warn!("index flush failed (will retry): {e}");
            }
        }
    }

    /// Reads one chunk, verified: record checksum, decompression, length
    /// and BLAKE3 against `id`.
    pub fn read_chunk(&self, id: &ChunkId) -> Result<Vec<u8>> {
        let loc = self.inner.index.lookup(id).ok_or_else(|| Error::NotFound {
            what: format!("chunk {id}"),
        })?;
        self.read_at(id, &loc)
    }

    pub(crate) fn read_at(&self, id: &ChunkId, loc: &Location) -> Result<Vec<u8>> {
        let (codec, stored) = self.inner.packs.read_record(id, loc)?;
        self.decode_verified(id, loc, codec, stored)
    }

    /// Decodes a record's stored bytes and checks length and BLAKE3.
    pub(crate) fn decode_verified(
        &self,
        id: &ChunkId,
        loc: &Location,
        codec: crate::format::pack::Codec,
        stored: Vec<u8>,
    ) -> Result<Vec<u8>> {
        let corrupt = |reason: String| Error::Corrupt {
            file: self.inner.packs.backend().describe(loc.pack),
            pack: Some(loc.pack),
            offset: Some(loc.offset),
            chunk: Some(*id),
            reason,
        };
        let raw = decompress(codec, stored, loc.raw_len as usize).map_err(corrupt)?;
        if ChunkId::of(&raw) != *id {
            return Err(corrupt("chunk bytes do not match their BLAKE3 id".into()));
        }
        Ok(raw)
    }

    /// Reads a chunk at `loc`, or where the index says it is now if the
    /// read fails and the chunk has moved meanwhile (GC rewrote its pack).
    pub(crate) fn read_moved(&self, id: &ChunkId, loc: &Location) -> Result<Vec<u8>> {
        match self.read_at(id, loc) {
            Err(e) => match self.locate(id) {
                Some(now) if now != *loc => self.read_at(id, &now),
                _ => Err(e),
            },
            ok => ok,
        }
    }

    pub(crate) fn locate(&self, id: &ChunkId) -> Option<Location> {
        self.inner.index.lookup(id)
    }

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
                Err(e @ Error::Corrupt { .. }) => {
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
        let r = ManifestReader::open(&path, &format!("{name}@{id}"))?;
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
        // Ids are never reused: remember the highest id ever deleted.
        let _one = self.inner.deletes.lock().unwrap_or_else(|p| p.into_inner());
        let hwm = read_deleted_hwm(&root)?;
        if id.0 > hwm.id || hwm.legacy {
            let mark = crate::format::deleted_hwm::encode(id.0.max(hwm.id));
            durable::replace_file(&root.join(DELETED_HWM), &mark)?;
        }
        durable::remove_file(&path)
    }

    /// Seals the open pack and flushes the index: what a clean shutdown does
    /// (recovery would do it too, just more slowly).
    pub fn close(&self) -> Result<()> {
        let sealed = self.inner.packs.seal()?;
        self.index_sealed(sealed);
        self.inner.index.flush()
    }

    /// Space figures without a scan: what the last GC measured (the
    /// `space` file), plus the new data recorded in the headers of the
    /// snapshots committed since and the packs written since. Without a
    /// GC yet, every figure comes from the snapshot headers and packs.
    pub fn stats(&self) -> Result<Stats> {
        let list = self.list(None)?;
        let space = self.read_space();
        let backend = self.inner.packs.backend();
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
            chunks: self.inner.index.entry_count(),
            index_bytes: self.inner.index.disk_bytes(),
            accounted_unix_ms: (space.written_unix_ms != 0).then_some(space.written_unix_ms),
            names: names.into_values().collect(),
        })
    }

    /// The last GC's space accounting; empty when there is none (or it
    /// cannot be read: it holds figures, not data, so that is logged).
    fn read_space(&self) -> Space {
        let path = self.inner.root.join(crate::gc::SPACE_FILE);
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

    /// Deletes the index and rebuilds it from the packs alone.
    /// The repository lock is taken first: a repository in use by another
    /// process is refused before anything is touched.
    pub fn rebuild_index(path: &Path) -> Result<()> {
        if !path.join("config").exists() {
            return Err(Error::NotFound {
                what: format!("bunker repository at {} (no config file)", path.display()),
            });
        }
        let lock = lock_repository(path)?;
        let index_dir = path.join("index");
        if index_dir.exists() {
            std::fs::remove_dir_all(&index_dir).at(&index_dir)?;
        }
        Repository::open_locked(path, OpenOptions::default(), lock)?.close()
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

fn concurrent_writer_failed(id: &ChunkId) -> Error {
    Error::Corrupt {
        file: "index".into(),
        pack: None,
        offset: None,
        chunk: Some(*id),
        reason: "a concurrent writer failed to store this chunk".into(),
    }
}

/// The repository's tombstones (an empty set when there is no file).
fn read_tombstones(root: &Path) -> Result<Tombstones> {
    let path = root.join(TOMBSTONES);
    match std::fs::read(&path) {
        Ok(b) => crate::format::tombstones::decode(TOMBSTONES, &b),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Tombstones::default()),
        Err(e) => Err(Error::io(path, e)),
    }
}

pub(crate) fn write_tombstones(root: &Path, t: &Tombstones) -> Result<()> {
    durable::replace_file(
        &root.join(TOMBSTONES),
        &crate::format::tombstones::encode(t),
    )
}

/// Deletes condemned packs a GC did not get to before it stopped: the
/// decision was durable, and no reader can depend on them (lookups never
/// hand out a tombstoned location).
fn finish_condemned(backend: LocalPacks, t: &Tombstones) -> Result<LocalPacks> {
    if t.packs.is_empty() {
        return Ok(backend);
    }
    let present: std::collections::HashSet<u64> = backend.list()?.iter().map(|p| p.0).collect();
    for &p in t.packs.iter().filter(|p| present.contains(p)) {
        tracing::info!(pack = p, "deleting a pack an interrupted GC condemned");
        backend.delete(crate::PackId(p))?;
    }
    Ok(backend)
}

pub(crate) const TOMBSTONES: &str = "tombstones";

static TMP_SEQ: AtomicU64 = AtomicU64::new(0);
/// Starts with a dot, which no snapshot name may: it can never collide
/// with a snapshot directory.
const DELETED_HWM: &str = ".deleted-hwm";

/// Takes the repository's exclusive lock (`flock` on `<repo>/lock`),
/// waiting up to [`LOCK_WAIT`] for it: a process that is exiting, or a
/// child another thread has forked and not yet exec'd (it shares the lock
/// until its exec closes the descriptor), holds it for a moment.
fn lock_repository(path: &Path) -> Result<File> {
    let lock_path = path.join("lock");
    let f = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .at(&lock_path)?;
    let deadline = Instant::now() + LOCK_WAIT;
    loop {
        match rustix::fs::flock(&f, rustix::fs::FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => return Ok(f),
            Err(rustix::io::Errno::WOULDBLOCK) if Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            Err(rustix::io::Errno::WOULDBLOCK) => {
                return Err(Error::Locked {
                    path: path.to_path_buf(),
                })
            }
            Err(e) => return Err(Error::io(&lock_path, e.into())),
        }
    }
}

/// How long opening waits for another holder of the repository lock.
const LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

fn clear_tmp(dir: &Path) -> Result<()> {
    for entry in std::fs::read_dir(dir).at(dir)?.flatten() {
        tracing::info!(file = %entry.path().display(), "removing temp file of an unfinished operation");
        let _ = std::fs::remove_file(entry.path());
    }
    Ok(())
}

/// The files replaced whole through `durable::replace_file`, by directory
/// under the root: a crash can leave their temp files beside them.
const REPLACED_FILES: [(&str, &[&str]); 3] = [
    ("", &["config", TOMBSTONES, crate::gc::SPACE_FILE]),
    ("index", &["state"]),
    ("snapshots", &[DELETED_HWM]),
];

/// Removes the temp files interrupted replaces of [`REPLACED_FILES`] left
/// (exactly their `NAME.PID.SEQ.tmp` names, in their directories); returns
/// them relative to `root`.
fn remove_replace_temps(root: &Path) -> Result<Vec<PathBuf>> {
    let mut removed = Vec::new();
    for (dir, names) in REPLACED_FILES {
        for p in durable::remove_stale_temps(&root.join(dir), names)? {
            removed.push(p.strip_prefix(root).map_or(p.clone(), Path::to_path_buf));
        }
    }
    Ok(removed)
}

/// Seals staging packs left by a crash and queues sealed packs the index
/// does not cover (both counted, and torn tails listed, in `recovery`).
/// Returns the next free pack id.
fn recover_packs(
    backend: &LocalPacks,
    index: &Index,
    repo_id: [u8; 16],
    recovery: &mut Recovery,
) -> Result<u64> {
    let staged = backend.list_staged()?;
    let sealed = backend.list()?;
    let mut next = sealed
        .iter()
        .chain(&staged)
        .map(|p| p.0 + 1)
        .max()
        .unwrap_or(1);
    next = next.max(index.max_covered().map_or(1, |m| m + 1));
    // Staging and sealed packs together in id order: of a chunk stored
    // twice, the highest pack's copy is indexed last and wins wherever the
    // flushes fall (docs/FORMAT.md, "Index").
    let mut packs: Vec<(crate::PackId, bool)> = sealed
        .into_iter()
        .map(|p| (p, false))
        .chain(staged.into_iter().map(|p| (p, true)))
        .collect();
    packs.sort();
    for (pack, staging) in packs {
        if staging {
            let (sealed, torn) = recover_staged(backend, repo_id, pack)?;
            if let Some(s) = sealed {
                index.add_sealed(s.pack, s.index_entries());
                recovery.packs_indexed += 1;
            }
            recovery.torn_tails.extend(torn);
        } else if !index.is_covered(pack) {
            match read_trailer(backend, pack) {
                Ok(entries) => {
                    index.add_sealed(pack, entries.iter().map(|e| e.index_entry(pack)).collect());
                    recovery.packs_indexed += 1;
                }
                // A damaged sealed pack is reported, not rewritten: verify names
                // the snapshots that need it.
                Err(e) => tracing::error!("cannot index {}: {e}", backend.describe(pack)),
            }
        }
        if index.needs_flush() {
            index.flush()?;
        }
    }
    Ok(next)
}

/// The deleted-id mark in the snapshots directory `root` (id 0 when no
/// snapshot was ever deleted).
fn read_deleted_hwm(root: &Path) -> Result<DeletedHwm> {
    match std::fs::read(root.join(DELETED_HWM)) {
        Ok(b) => crate::format::deleted_hwm::decode("snapshots/.deleted-hwm", &b),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(DeletedHwm {
            id: 0,
            legacy: false,
        }),
        Err(e) => Err(Error::io(root.join(DELETED_HWM), e)),
    }
}

fn next_snapshot_id(root: &Path) -> Result<u64> {
    let mut max = read_deleted_hwm(root)?.id;
    for name in snapshot::names(root)? {
        if let Some(id) = snapshot::ids(root, &name)?.last() {
            max = max.max(id.0);
        }
    }
    Ok(max + 1)
}

/// A snapshot being written. Chunks are added in stream order; nothing is
/// visible until [`SnapshotWriter::commit`] returns. Dropping it without a
/// commit removes the partial manifest (its chunks stay for GC).
pub struct SnapshotWriter {
    repo: Repository,
    name: String,
    source: String,
    creator: u64,
    manifest: ManifestWriter,
    pins: Pins,
    new_chunks: u64,
    new_bytes: u64,
    new_raw_bytes: u64,
    zero_chunks: u64,
    started: Instant,
}

impl SnapshotWriter {
    /// Adds an all-zero chunk of `len` bytes.
    pub fn push_zero(&mut self, len: u64) -> Result<()> {
        self.zero_chunks += 1;
        self.manifest.push(len, &ChunkId::ZERO)
    }

    /// Adds a chunk that the repository holds (or another stream is
    /// storing). Fails with `NotFound` for an unknown chunk, and for a
    /// known one whose stored length is not `len`.
    pub fn push_stored(&mut self, id: &ChunkId, len: u64) -> Result<()> {
        if id.is_zero() {
            return self.push_zero(len);
        }
        let found = {
            let _gate = self.repo.gate_read();
            let found = self.repo.inner.index.lookup(id);
            if let Some(loc) = found {
                self.pins.add([loc.pack]);
            }
            found
        };
        let loc = match found {
            Some(loc) => Some(loc),
            None if self.repo.is_pending(id) => self.repo.locate_pinned(id, &self.pins),
            None => None,
        };
        match loc {
            Some(loc) if u64::from(loc.raw_len) != len => Err(Error::Invalid(format!(
                "chunk {id} is {} bytes, not {len}",
                loc.raw_len
            ))),
            Some(_) => self.manifest.push(len, id),
            None => Err(Error::NotFound {
                what: format!("chunk {id}"),
            }),
        }
    }

    /// Adds chunks by content: stores those that are new. `zero` marks
    /// all-zero chunks, which are not stored.
    pub(crate) fn push_data(&mut self, chunks: &[(ChunkId, &[u8])], zero: &[bool]) -> Result<()> {
        let to_store: Vec<(ChunkId, &[u8])> = chunks
            .iter()
            .zip(zero)
            .filter(|(_, z)| !**z)
            .map(|(c, _)| *c)
            .collect();
        let (new, pending) = self.repo.store_chunks(&to_store, &self.pins)?;
        self.new_chunks += new.chunks;
        self.new_bytes += new.stored_bytes;
        self.new_raw_bytes += new.raw_bytes;
        // Chunks another stream is storing right now: wait for them here,
        // while that stream's pins still cover them, and pin them too.
        for id in pending {
            self.repo
                .locate_pinned(&id, &self.pins)
                .ok_or_else(|| concurrent_writer_failed(&id))?;
        }
        for ((id, data), z) in chunks.iter().zip(zero) {
            if *z {
                self.push_zero(data.len() as u64)?;
            } else {
                self.manifest.push(data.len() as u64, id)?;
            }
        }
        Ok(())
    }

    /// When the backup began (default: when the writer was created); the
    /// snapshot records the time from then to the commit.
    pub fn set_started(&mut self, started: Instant) {
        self.started = started;
    }

    /// Counts chunks stored for this snapshot outside [`Self::push_data`]
    /// (uploaded one by one in the chunk protocol) in its new-data figures.
    pub fn add_new(&mut self, new: NewData) {
        self.new_chunks += new.chunks;
        self.new_bytes += new.stored_bytes;
        self.new_raw_bytes += new.raw_bytes;
    }

    pub fn len(&self) -> u64 {
        self.manifest.len()
    }

    pub fn is_empty(&self) -> bool {
        self.manifest.len() == 0
    }

    pub fn new_bytes(&self) -> u64 {
        self.new_bytes
    }

    pub fn new_chunks(&self) -> u64 {
        self.new_chunks
    }

    pub fn chunks(&self) -> u64 {
        self.manifest.count()
    }

    /// Makes the snapshot durable and visible (docs/FORMAT.md, "Commit
    /// protocol"). With `expected_hash`, refuses a stream whose BLAKE3
    /// differs.
    pub fn commit(
        self,
        stream_hash: [u8; 32],
        expected_hash: Option<[u8; 32]>,
    ) -> Result<SnapshotInfo> {
        if let Some(expected) = expected_hash {
            if expected != stream_hash {
                return Err(Error::StreamHashMismatch {
                    expected: blake3::Hash::from_bytes(expected).to_hex().to_string(),
                    actual: blake3::Hash::from_bytes(stream_hash).to_hex().to_string(),
                });
            }
        }
        let inner = &*self.repo.inner;
        // 1. (Chunks other streams were storing were waited for when they
        //    were pushed.)
        // 2. Seal the open pack: every referenced chunk is now in a synced,
        //    sealed pack.
        let sealed = inner.packs.seal()?;
        self.repo.index_sealed(sealed);
        durable::failpoint!("commit::sealed", &inner.root);
        // 3. Publish the manifest: write, sync, rename, sync directory.
        let id = SnapshotId(inner.next_snapshot.fetch_add(1, Ordering::SeqCst));
        let header = ManifestHeader {
            repo_id: inner.config.repo_id,
            id,
            created_unix_ms: crate::clock::now_unix_ms(),
            size: 0,
            entries: 0,
            chunker: inner.config.chunker,
            stream_hash,
            new_chunks: self.new_chunks,
            new_bytes: self.new_bytes,
            new_raw_bytes: self.new_raw_bytes,
            ingest_ms: self.started.elapsed().as_millis() as u64,
            zero_chunks: self.zero_chunks,
            name: self.name.clone(),
            source: self.source.clone(),
            creator: self.creator,
        };
        let dest = snapshot::manifest_path(&self.repo.snapshots_dir(), &self.name, id);
        let mut info_header = header.clone();
        info_header.size = self.manifest.len();
        info_header.entries = self.manifest.count();
        self.manifest.finish(header, &dest)?;
        self.pins.committed();
        // Index entries were queued when the pack was sealed (step 2) and
        // are flushed by `index_sealed` when due: the index is a cache.
        tracing::info!(name = %self.name, id = id.0, bytes = info_header.size, new_bytes = self.new_bytes, "committed snapshot");
        Ok(SnapshotInfo::from_header(&info_header))
    }
}
