//! Creating and opening a repository, with crash recovery.
//!
//! Opening recovers from any crash without a manual step: temp files are
//! removed, staging packs have their torn tails cut and are sealed, sealed
//! packs the index does not cover are re-indexed from their trailers, packs
//! an interrupted GC condemned are deleted, and a damaged index is rebuilt
//! from the packs. The repository lock (`flock` on `<repo>/lock`) is held
//! from before the first change until the handle is dropped.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Instant;

use bunker_chunk::{Chunker, ChunkerParams};
use bunker_crypt::{Key, KeyId};

use super::snapshots::{read_deleted_hwm, DELETED_HWM};
use super::{Inner, Repository};
use crate::backend::{LocalPacks, MetaBackend, PackBackend, ReadMode};
use crate::crypt::{RecordBinding, RepoCrypt};
use crate::error::IoContext;
use crate::format::config::RepoConfig;
use crate::format::Le;
use crate::index::{Index, Tombstones};
use crate::pack::{read_trailer, recover_staged, Packs, TornTail};
use crate::pins::PinBoard;
use crate::tombstones::{read_tombstones, TOMBSTONES};
use crate::{durable, snapshot, Error, Result};

/// Parameters fixed when a repository is created.
#[derive(Clone, Debug)]
pub struct CreateOptions {
    pub chunker: ChunkerParams,
    /// zstd level for chunks worth compressing (1..=19). Default 1: on
    /// SAN-like images level 3 saved under 1% more space and cost 11% of
    /// day-0 ingest speed (docs/BENCHMARKS.md).
    pub zstd_level: i32,
    /// A pack is sealed once it reaches this length.
    pub pack_target_len: u64,
    /// The key to encrypt the new repository with; `None`: a clear
    /// repository, exactly as before encryption existed. Opening it later
    /// needs the same key (`OpenOptions::key`).
    pub key: Option<Arc<Key>>,
}

/// Bounds of the average chunk size an operator may choose for a new
/// repository (`bunker serve --chunk-size`): below 64 KiB the index and
/// manifests grow past 900 bytes per MiB of data, above 1 MiB next days
/// store several times more (docs/OPERATIONS.md, "Chunk size").
pub const MIN_CHUNK_SIZE: u32 = 64 << 10;
pub const MAX_CHUNK_SIZE: u32 = 1 << 20;

/// The chunker of a repository created with average chunks of `avg`
/// bytes: a power of two in [`MIN_CHUNK_SIZE`]..=[`MAX_CHUNK_SIZE`], with
/// chunks from a quarter to four times that. 256 KiB gives
/// [`ChunkerParams::DEFAULT`].
pub fn chunker_for_size(avg: u64) -> Result<ChunkerParams> {
    let ok = u32::try_from(avg)
        .ok()
        .filter(|a| (MIN_CHUNK_SIZE..=MAX_CHUNK_SIZE).contains(a) && a.is_power_of_two());
    let avg = ok.ok_or_else(|| {
        Error::Invalid(format!(
            "chunk size {avg} bytes: must be a power of two from 64 KiB (65536) to 1 MiB (1048576)"
        ))
    })?;
    ChunkerParams::with_avg(avg).map_err(|e| Error::Invalid(e.to_string()))
}

/// Default pack length, 256 MiB: 100 TB of unique data is ~400 000 packs,
/// which the two-level fan-out lists quickly; a pack is still a reasonable
/// unit to rewrite in GC and to move to object storage.
pub const DEFAULT_PACK_LEN: u64 = 256 << 20;
/// Bounds of a new repository's pack target length (64 MiB to 1 GiB suit
/// object storage, where each object costs requests).
pub const MIN_PACK_LEN: u64 = 1 << 20;
pub const MAX_PACK_LEN: u64 = 4 << 30;

impl Default for CreateOptions {
    fn default() -> Self {
        CreateOptions {
            chunker: ChunkerParams::DEFAULT,
            zstd_level: 1,
            pack_target_len: DEFAULT_PACK_LEN,
            key: None,
        }
    }
}

/// Choices of this process, not stored in the repository.
#[derive(Clone, Debug)]
pub struct OpenOptions {
    pub read_mode: ReadMode,
    /// Index entries kept in memory before they are flushed to runs.
    pub index_flush_at: usize,
    /// Ingests look chunks up in the previous ingest of the same name
    /// before the index (`crate::window`). Off only to measure the index.
    pub dedup_window: bool,
    /// The key of an encrypted repository. Must be `Some` with the key the
    /// config names for an encrypted repository and `None` for a clear one:
    /// a key is never silently ignored.
    pub key: Option<Arc<Key>>,
}

impl Default for OpenOptions {
    fn default() -> Self {
        OpenOptions {
            read_mode: ReadMode::Pread,
            index_flush_at: 16 * 1024,
            dedup_window: true,
            key: None,
        }
    }
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
    /// A remote repository's data directory was empty: config, manifests,
    /// deleted-id mark and tombstones came from the bucket and the index
    /// was rebuilt from the packs' trailers (disaster recovery).
    pub restored_from_remote: bool,
    /// Manifests the bucket holds and the data directory lacked, downloaded
    /// (every one in a disaster recovery; else a commit cut between its
    /// upload and its local rename).
    pub manifests_downloaded: usize,
    /// Local manifests the bucket no longer holds, removed (a delete cut
    /// between the object's deletion and the local file's).
    pub manifests_removed: usize,
}

impl Repository {
    /// Creates a new repository at `path` (an empty or missing directory).
    pub fn create(path: &Path, opts: CreateOptions) -> Result<Repository> {
        let config = new_config(path, &opts)?;
        durable::create_dir_all(path)?;
        if path.join("config").exists() {
            return Err(Error::AlreadyExists {
                what: format!("a repository at {}", path.display()),
            });
        }
        write_layout(path, &config)?;
        Self::open_with(
            path,
            OpenOptions {
                key: opts.key,
                ..OpenOptions::default()
            },
        )
    }

    pub fn open(path: &Path) -> Result<Repository> {
        Self::open_with(path, OpenOptions::default())
    }

    /// Opens the repository at `path`, creating it with `create` if there
    /// is none (an existing one is opened with `create.key`).
    pub fn open_or_create(path: &Path, create: CreateOptions) -> Result<Repository> {
        if path.join("config").exists() {
            Self::open_with(
                path,
                OpenOptions {
                    key: create.key,
                    ..OpenOptions::default()
                },
            )
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
        Self::open_locked(path, opts, lock, None, None, Recovery::default())
    }

    /// Opens the repository at `path` with its sealed packs in `backend`
    /// instead of `<path>/packs` (`opts.read_mode` is then unused). The
    /// index, manifests and config stay under `path`; the index must
    /// describe the packs `backend` holds (an empty repository, or one whose
    /// packs were always there), else reads fail as damage.
    pub fn open_with_backend(
        path: &Path,
        opts: OpenOptions,
        backend: Box<dyn PackBackend>,
    ) -> Result<Repository> {
        if !path.join("config").exists() {
            return Err(Error::NotFound {
                what: format!("bunker repository at {} (no config file)", path.display()),
            });
        }
        let lock = lock_repository(path)?;
        Self::open_locked(path, opts, lock, Some(backend), None, Recovery::default())
    }

    /// Opens the repository whose lock the caller already holds, with its
    /// packs in `backend` or, when None, under `<path>/packs`, and its
    /// metadata objects in `meta` when it is remote (`super::remote`).
    pub(super) fn open_locked(
        path: &Path,
        opts: OpenOptions,
        lock: File,
        backend: Option<Box<dyn PackBackend>>,
        meta: Option<Arc<dyn MetaBackend>>,
        mut recovery: Recovery,
    ) -> Result<Repository> {
        let config_path = path.join("config");
        let bytes = std::fs::read(&config_path).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => Error::NotFound {
                what: format!("bunker repository at {} (no config file)", path.display()),
            },
            _ => Error::io(&config_path, e),
        })?;
        let config = RepoConfig::decode("config", &bytes)?;
        let crypt = check_key(path, &config, opts.key.as_deref())?;
        for dir in ["packs", "index", "snapshots", "tmp"] {
            durable::create_dir_all(&path.join(dir))?;
        }
        clear_tmp(&path.join("tmp"))?;
        recovery.temp_files_removed = remove_replace_temps(path)?;
        let backend = backend
            .unwrap_or_else(|| Box::new(LocalPacks::new(path.join("packs"), opts.read_mode)));
        let index_dir = path.join("index");
        // A new index may hand out pack ids a window file still names (its
        // covered ranges kept them from reuse): the windows go with it.
        let mut drop_windows = !index_dir.join("state").exists();
        let index = match Index::open(&index_dir, opts.index_flush_at) {
            Ok(index) => index,
            // The index is a cache of the packs: a damaged one (torn, bit
            // rot, a run missing) is dropped and rebuilt from them, so a
            // restart needs no manual step.
            Err(e @ (Error::Corrupt { .. } | Error::NotBunkerFile { .. })) => {
                tracing::warn!("the index is damaged ({e}); rebuilding it from the packs");
                recovery.index_rebuilt = Some(e.to_string());
                drop_windows = true;
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
        let windows = crate::window::dir(path);
        if drop_windows && windows.exists() {
            std::fs::remove_dir_all(&windows).at(&windows)?;
        }
        let tombstones = read_tombstones(path)?;
        finish_condemned(&*backend, &tombstones)?;
        index.set_tombstones(tombstones);
        let mut next_pack = recover_packs(
            &*backend,
            &index,
            config.repo_id,
            crypt.as_deref(),
            &mut recovery,
        )?;
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
                    backend,
                    config.repo_id,
                    config.pack_target_len,
                    next_pack,
                    crypt,
                ),
                index,
                dedup_window: opts.dedup_window,
                config,
                next_snapshot: AtomicU64::new(next_snapshot),
                gate: RwLock::new(()),
                pins: Arc::new(PinBoard::default()),
                maintenance: Mutex::new(()),
                deletes: Mutex::new(()),
                copies: Mutex::new(()),
                recovery,
                meta,
                _lock: lock,
            }),
        })
        .inspect(|r| crate::reserve::ensure(r.root()))
    }

    /// Deletes the index and rebuilds it from the packs alone.
    /// The repository lock is taken first: a repository in use by another
    /// process is refused before anything is touched.
    pub fn rebuild_index(path: &Path) -> Result<()> {
        Self::rebuild_index_with(path, OpenOptions::default())
    }

    /// [`Repository::rebuild_index`] with options: an encrypted
    /// repository's key (its trailers are sealed).
    pub fn rebuild_index_with(path: &Path, opts: OpenOptions) -> Result<()> {
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
        Repository::open_locked(path, opts, lock, None, None, Recovery::default())?.close()
    }
}

/// A new repository's config: checked options, a fresh random id.
pub(super) fn new_config(path: &Path, opts: &CreateOptions) -> Result<RepoConfig> {
    if !(1..=19).contains(&opts.zstd_level) {
        return Err(Error::Invalid(format!(
            "zstd level {} is outside 1..=19",
            opts.zstd_level
        )));
    }
    if !(MIN_PACK_LEN..=MAX_PACK_LEN).contains(&opts.pack_target_len) {
        return Err(Error::Invalid(format!(
            "pack target length {} is outside 1 MiB..=4 GiB",
            opts.pack_target_len
        )));
    }
    let mut seed = blake3::Hasher::new();
    seed.update(&crate::clock::now_unix_ms().to_le_bytes());
    seed.update(&std::process::id().to_le_bytes());
    seed.update(path.as_os_str().as_encoded_bytes());
    seed.update(&format!("{:?}", Instant::now()).into_bytes());
    Ok(RepoConfig {
        repo_id: Le::bytes(seed.finalize().as_bytes(), 0),
        created_unix: crate::clock::now_unix_ms() / 1000,
        chunker: opts.chunker,
        zstd_level: opts.zstd_level,
        pack_target_len: opts.pack_target_len,
        key_id: opts.key.as_ref().map(|k| k.id().0),
        place_bound: false,
    })
}

/// The repository's crypt when the key given is the one its config names;
/// a typed error naming the key ids otherwise (a missing key, another key,
/// or a key for a clear repository: never silently ignored).
pub(super) fn check_key(
    path: &Path,
    config: &RepoConfig,
    key: Option<&Key>,
) -> Result<Option<Arc<RepoCrypt>>> {
    let expected = config.key_id.map(KeyId);
    let given = key.map(Key::id);
    if expected != given {
        return Err(Error::Key {
            repo: path.to_path_buf(),
            expected,
            given,
        });
    }
    let binding = if config.place_bound {
        RecordBinding::Place
    } else {
        RecordBinding::Identity
    };
    Ok(key.map(|k| Arc::new(RepoCrypt::with_binding(k, binding))))
}

/// Creates the directories of a repository at `path` and writes its
/// config last: a directory without `config` is not a repository yet.
pub(super) fn write_layout(path: &Path, config: &RepoConfig) -> Result<()> {
    for dir in ["packs", "index", "snapshots", "tmp"] {
        durable::create_dir_all(&path.join(dir))?;
    }
    durable::replace_file(&path.join("config"), &config.encode())
}

/// Deletes condemned packs a GC did not get to before it stopped: the
/// decision was durable, and no reader can depend on them (lookups never
/// hand out a tombstoned location).
fn finish_condemned(backend: &dyn PackBackend, t: &Tombstones) -> Result<()> {
    if t.packs.is_empty() {
        return Ok(());
    }
    let present: std::collections::HashSet<u64> = backend.list()?.iter().map(|p| p.0).collect();
    for &p in t.packs.iter().filter(|p| present.contains(p)) {
        tracing::info!(pack = p, "deleting a pack an interrupted GC condemned");
        backend.delete(crate::PackId(p))?;
    }
    Ok(())
}

/// Takes the repository's exclusive lock (`flock` on `<repo>/lock`),
/// waiting up to [`LOCK_WAIT`] for it: a process that is exiting, or a
/// child another thread has forked and not yet exec'd (it shares the lock
/// until its exec closes the descriptor), holds it for a moment.
pub(super) fn lock_repository(path: &Path) -> Result<File> {
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

pub(super) fn clear_tmp(dir: &Path) -> Result<()> {
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
    backend: &dyn PackBackend,
    index: &Index,
    repo_id: [u8; 16],
    crypt: Option<&RepoCrypt>,
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
    let total = packs.len();
    for (done, (pack, staging)) in packs.into_iter().enumerate() {
        // A rebuild from a bucket reads every trailer: say how far it is.
        if done > 0 && done % PROGRESS_EVERY == 0 && recovery.packs_indexed > 0 {
            tracing::info!(
                done,
                total,
                indexed = recovery.packs_indexed,
                "reading pack trailers"
            );
        }
        if staging {
            let (sealed, torn) = recover_staged(backend, repo_id, crypt, pack)?;
            if let Some(s) = sealed {
                index.add_sealed(s.pack, s.index_entries());
                recovery.packs_indexed += 1;
            }
            recovery.torn_tails.extend(torn);
        } else if !index.is_covered(pack) {
            match read_trailer(backend, crypt, pack) {
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

/// Packs (and, in `remote`, manifests) between two progress lines.
pub(super) const PROGRESS_EVERY: usize = 1000;

fn next_snapshot_id(root: &Path) -> Result<u64> {
    let mut max = read_deleted_hwm(root)?.id;
    for name in snapshot::names(root)? {
        if let Some(id) = snapshot::ids(root, &name)?.last() {
            max = max.max(id.0);
        }
    }
    Ok(max + 1)
}
