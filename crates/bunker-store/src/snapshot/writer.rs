//! A snapshot being written, and the commit protocol that makes it
//! visible (docs/FORMAT.md, "Commit protocol").
//!
//! The manifest is written to a temp file in `tmp/` as chunks are pushed;
//! nothing is visible until [`SnapshotWriter::commit`] has sealed the open
//! pack (every referenced chunk durable), uploaded the synced manifest to
//! the bucket (remote repositories) and renamed it into place. Every pack
//! a pushed chunk lives in is pinned until then, so GC running beside it
//! keeps them.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use bunker_chunk::ChunkId;

use super::manifest::ManifestWriter;
use super::SnapshotInfo;
use crate::cpu::{self, Stage};
use crate::format::manifest::{ManifestHeader, Origin, VERSION};
use crate::format::window::WindowEntry;
use crate::pins::Pins;
use crate::repo::{concurrent_writer_failed, NewData};
use crate::window::{Window, WindowWriter};
use crate::{durable, snapshot, Error, Location, Repository, Result};

impl Repository {
    /// Starts a snapshot of `name` that the caller fills chunk by chunk
    /// (the chunk protocol; [`Repository::ingest`] uses it too).
    pub fn begin_snapshot(&self, name: &str, source: &str, creator: u64) -> Result<SnapshotWriter> {
        snapshot::validate_name(name)?;
        let tmp = self.root().join("tmp").join(format!(
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
            manifest: ManifestWriter::create(tmp, self.manifest_seal())?,
            pins: self.pins(),
            new_chunks: 0,
            new_bytes: 0,
            new_raw_bytes: 0,
            zero_chunks: 0,
            started: Instant::now(),
            blocks: None,
            origin: None,
            window: None,
            window_out: None,
            stream_end: 0,
            window_hits: 0,
            live_packs: HashSet::new(),
            dead_packs: HashSet::new(),
        })
    }

    /// A writer for block hashes (`snapshot::blocks`) in `tmp/`, for
    /// [`SnapshotWriter::set_blocks`] or to check a client's upload.
    pub fn blocks_writer(&self) -> Result<super::BlocksWriter> {
        super::BlocksWriter::create(self.blocks_tmp_path(), self.blocks_seal(), self.repo_id())
    }

    /// Receives a block hashes file (a client's upload, in the clear
    /// format) from `body` into `tmp/`, sealed in a repository that seals
    /// them: the clear bytes never reach the disk there. Reads exactly the
    /// length the header announces, so a body cannot fill the disk beyond
    /// what it describes. A malformed body is `Invalid`, a failed read of
    /// it `Source`.
    pub fn receive_blocks(&self, body: impl std::io::Read) -> Result<super::BlocksFile> {
        super::blocks::receive(body, self.blocks_writer()?)
    }

    /// A fresh path in `tmp/` for a block hashes file being received.
    pub fn blocks_tmp_path(&self) -> std::path::PathBuf {
        self.root().join("tmp").join(format!(
            "{}-{}.blocks.tmp",
            std::process::id(),
            TMP_SEQ.fetch_add(1, Ordering::Relaxed)
        ))
    }
}

static TMP_SEQ: AtomicU64 = AtomicU64::new(0);

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
    blocks: Option<super::BlocksFile>,
    /// A copy's origin and the origin's creation time.
    origin: Option<(Origin, i64)>,
    /// The previous ingest of this name, and this one's window file
    /// (`crate::window`; only [`Repository::ingest`] uses them).
    window: Option<Window>,
    window_out: Option<WindowWriter>,
    /// Bytes pushed by [`Self::push_data`] so far.
    stream_end: u64,
    window_hits: u64,
    /// Packs a window location was checked in, alive (and pinned) or gone.
    live_packs: HashSet<u64>,
    dead_packs: HashSet<u64>,
}

/// What [`SnapshotWriter::commit_copy`] did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CopyCommit {
    /// Committed a new snapshot.
    New(SnapshotInfo),
    /// A snapshot of the same origin was here already: nothing committed.
    Existing(SnapshotInfo),
}

impl SnapshotWriter {
    /// Keeps `blocks` with the snapshot. The commit checks that they
    /// describe an image of the snapshot's size whose BLAKE3 is the
    /// stream hash, and refuses the snapshot otherwise.
    pub fn set_blocks(&mut self, blocks: super::BlocksFile) {
        self.blocks = Some(blocks);
    }

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
        let kid = self.repo.at_rest(id);
        let found = {
            let _gate = self.repo.gate_read();
            let found = self.repo.locate(&kid);
            if let Some(loc) = found {
                self.pins.add([loc.pack]);
            }
            found
        };
        let loc = match found {
            Some(loc) => Some(loc),
            None if self.repo.is_pending(&kid) => self.repo.locate_pinned(&kid, &self.pins),
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

    /// Makes [`Self::push_data`] look chunks up in the previous ingest of
    /// this name first (unless the repository was opened without the
    /// window), and record this one's for the next.
    pub(crate) fn use_window(&mut self) -> Result<()> {
        let repo_id = self.repo.repo_id();
        if self.repo.dedup_window() {
            self.window = Window::open(self.repo.root(), &self.name, repo_id);
        }
        let tmp = self.repo.root().join("tmp").join(format!(
            "{}-{}-{}.window.tmp",
            self.name,
            std::process::id(),
            TMP_SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        self.window_out = Some(WindowWriter::create(tmp, repo_id)?);
        Ok(())
    }

    /// Chunks found through the dedup window so far.
    pub fn window_hits(&self) -> u64 {
        self.window_hits
    }

    /// Adds chunks by content: stores those that are new. `zero` marks
    /// all-zero chunks, which are not stored.
    pub(crate) fn push_data(&mut self, chunks: &[(ChunkId, &[u8])], zero: &[bool]) -> Result<()> {
        let mut ends = Vec::with_capacity(chunks.len());
        for (_, data) in chunks {
            self.stream_end += data.len() as u64;
            ends.push(self.stream_end);
        }
        // Below the manifest, chunks go by their at-rest ids (crate::crypt).
        let at_rest: Vec<ChunkId> = match self.repo.crypt() {
            Some(c) => chunks.iter().map(|(id, _)| c.at_rest(id)).collect(),
            None => chunks.iter().map(|(id, _)| *id).collect(),
        };
        let mut found = cpu::timed(Stage::Lookup, || {
            self.window_lookup(chunks, &at_rest, zero, &ends)
        });
        let todo: Vec<usize> = (0..chunks.len())
            .filter(|&i| !zero[i] && found[i].is_none())
            .collect();
        let to_store: Vec<(ChunkId, &[u8])> =
            todo.iter().map(|&i| (at_rest[i], chunks[i].1)).collect();
        let (new, pending, stored) = self.repo.store_chunks_located(&to_store, &self.pins)?;
        self.new_chunks += new.chunks;
        self.new_bytes += new.stored_bytes;
        self.new_raw_bytes += new.raw_bytes;
        for (&i, loc) in todo.iter().zip(stored) {
            found[i] = loc;
        }
        // Chunks another stream is storing right now: wait for them here,
        // while that stream's pins still cover them, and pin them too.
        let mut waited = HashMap::new();
        for id in pending {
            let loc = self
                .repo
                .locate_pinned(&id, &self.pins)
                .ok_or_else(|| concurrent_writer_failed(&id))?;
            waited.insert(id, loc);
        }
        let _manifest = cpu::Span::start(Stage::Manifest);
        for (i, ((id, data), z)) in chunks.iter().zip(zero).enumerate() {
            if *z {
                self.push_zero(data.len() as u64)?;
                continue;
            }
            self.manifest.push(data.len() as u64, id)?;
            if let Some(out) = self.window_out.as_mut() {
                let kid = &at_rest[i];
                if let Some(loc) = found[i].or_else(|| waited.get(kid).copied()) {
                    out.push(&WindowEntry {
                        id: *kid,
                        loc,
                        end: ends[i],
                    })?;
                }
            }
        }
        Ok(())
    }

    /// The chunks the window answers for, with the same guarantee as an
    /// index lookup: checked under the GC gate to be neither buried nor in
    /// a pack that is gone, and their packs pinned (`crate::window`).
    fn window_lookup(
        &mut self,
        chunks: &[(ChunkId, &[u8])],
        at_rest: &[ChunkId],
        zero: &[bool],
        ends: &[u64],
    ) -> Vec<Option<Location>> {
        let mut found = vec![None; chunks.len()];
        let Some(window) = self.window.as_mut() else {
            return found;
        };
        let candidates: Vec<(usize, Location)> = chunks
            .iter()
            .enumerate()
            .filter(|&(i, (_, data))| !zero[i] && !data.is_empty())
            .filter_map(|(i, (_, data))| {
                window
                    .find(&at_rest[i], ends[i])
                    .filter(|loc| loc.raw_len as usize == data.len())
                    .map(|loc| (i, loc))
            })
            .collect();
        if candidates.is_empty() {
            return found;
        }
        let _gate = self.repo.gate_read();
        for (i, loc) in candidates {
            if self.repo.index().is_buried(&at_rest[i], &loc) {
                continue;
            }
            let pack = loc.pack.0;
            if !self.live_packs.contains(&pack) {
                if self.dead_packs.contains(&pack) {
                    continue;
                }
                if self.repo.packs().backend().pack_len(loc.pack).is_err() {
                    self.dead_packs.insert(pack);
                    continue;
                }
                self.pins.add([loc.pack]);
                self.live_packs.insert(pack);
            }
            found[i] = Some(loc);
            self.window_hits += 1;
        }
        found
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

    /// Makes this snapshot a copy of `origin` (`bunker sync`), created at
    /// `created_unix_ms` there: commit it with [`Self::commit_copy`].
    pub fn set_origin(&mut self, origin: Origin, created_unix_ms: i64) {
        self.origin = Some((origin, created_unix_ms));
    }

    /// Commits a copy (after [`Self::set_origin`]) unless a snapshot of
    /// the same name and origin is here already: then nothing is
    /// committed and that one is answered. Commits of copies are
    /// serialized, so two concurrent copies of one origin make one
    /// snapshot.
    pub fn commit_copy(self, stream_hash: [u8; 32]) -> Result<CopyCommit> {
        let Some((origin, _)) = self.origin else {
            return Err(Error::Invalid(
                "a copy's commit needs its origin (set_origin)".into(),
            ));
        };
        let repo = self.repo.clone();
        let _one = repo.lock_copies();
        if let Some(existing) = repo
            .list(Some(&self.name))?
            .into_iter()
            .find(|s| s.origin == Some(origin))
        {
            return Ok(CopyCommit::Existing(existing));
        }
        self.commit(stream_hash, None).map(CopyCommit::New)
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
        // Steps as numbered in docs/FORMAT.md, "Commit protocol".
        // 1. (Chunks were appended and manifest entries written by the
        //    `push_*` calls.)
        // 2. (Chunks other streams were storing were waited for when they
        //    were pushed.)
        // 3. Seal the open pack: every referenced chunk is now in a synced,
        //    sealed pack.
        let sealed = self.repo.packs().seal()?;
        self.repo.index_sealed(sealed);
        durable::failpoint!("commit::sealed", self.repo.root());
        // 4. Complete the manifest in `tmp/`: footer, header, sync.
        let id = self.repo.take_snapshot_id();
        let now = crate::clock::now_unix_ms();
        let header = ManifestHeader {
            repo_id: self.repo.repo_id(),
            id,
            created_unix_ms: self.origin.map_or(now, |(_, created)| created),
            committed_unix_ms: now,
            origin: self.origin.map(|(o, _)| o),
            version: VERSION,
            size: 0,
            entries: 0,
            chunker: self.repo.chunker_params(),
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
        if let Some(blocks) = &self.blocks {
            let h = blocks.header();
            if h.image_len != self.manifest.len()
                || blocks.root().is_some_and(|root| root != stream_hash)
            {
                return Err(Error::Invalid(format!(
                    "the block hashes do not describe this snapshot: they are of {} bytes \
                     hashing to {}, the snapshot has {} bytes and stream hash {}",
                    h.image_len,
                    blocks
                        .root()
                        .map_or("(one block)".into(), |r| blake3::Hash::from_bytes(r)
                            .to_hex()
                            .to_string()),
                    self.manifest.len(),
                    blake3::Hash::from_bytes(stream_hash).to_hex()
                )));
            }
        }
        let dest = snapshot::manifest_path(&self.repo.snapshots_dir(), &self.name, id);
        let mut info_header = header.clone();
        info_header.size = self.manifest.len();
        info_header.entries = self.manifest.count();
        let mut manifest = self.manifest;
        let tmp = manifest.complete(header)?;
        // 4b. Block hashes go first, to the bucket and into place: a
        //     listed snapshot has them whole or not at all. A crash here
        //     leaves a file no snapshot lists (ids are never reused).
        let blocks_dest = snapshot::blocks::blocks_path(&self.repo.snapshots_dir(), &self.name, id);
        let has_blocks = self.blocks.is_some();
        if let Some(mut blocks) = self.blocks {
            blocks.bind(snapshot::Owner::new(self.repo.repo_id(), &self.name, id))?;
            if let Some(meta) = self.repo.meta() {
                meta.put_file(&crate::repo::blocks_key(&self.name, id), blocks.path())?;
            }
            blocks.publish(&blocks_dest)?;
        }
        // 5. Remote repository: upload the manifest. The bucket is the
        //    truth, so it must hold the snapshot before anything local
        //    lists it. A failed upload fails the commit (the temp file
        //    goes with the writer) and its key is deleted, in case the PUT
        //    landed although it reported failure; if that delete fails
        //    too, the next open's reconcile lists the snapshot.
        if let Some(meta) = self.repo.meta() {
            let key = crate::repo::manifest_key(&self.name, id);
            if let Err(e) = meta.put_file(&key, tmp) {
                if let Err(d) = meta.delete(&key) {
                    tracing::warn!("removing the manifest object {key} of a failed commit: {d}");
                }
                if has_blocks {
                    // Best effort: no snapshot lists them either way.
                    let _ = meta.delete(&crate::repo::blocks_key(&self.name, id));
                    let _ = std::fs::remove_file(&blocks_dest);
                }
                return Err(e);
            }
            durable::failpoint!("commit::uploaded", self.repo.root());
        }
        // 6. Rename into place, sync the directory: the snapshot is listed.
        manifest.publish(&dest)?;
        self.pins.committed();
        if let Some(out) = self.window_out {
            // A cache: without it the next ingest uses the index.
            if let Err(e) = out.publish(self.repo.root(), &self.name) {
                tracing::warn!(name = %self.name, "keeping the dedup window: {e}");
            }
        }
        // 7. Acknowledge. Index entries were queued when the pack was
        //    sealed (step 3) and are flushed by `index_sealed` when due:
        //    the index is a cache.
        tracing::info!(name = %self.name, id = id.0, bytes = info_header.size, new_bytes = self.new_bytes, "committed snapshot");
        Ok(SnapshotInfo::from_header(&info_header))
    }
}
