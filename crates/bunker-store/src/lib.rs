//! The bunker repository on disk.
//!
//! # Brief overview
//! A repository is a directory holding:
//! - `config`: identity and fixed parameters (chunker sizes, zstd level);
//! - `packs/`: append-only pack files of compressed chunk records, sealed
//!   and then immutable, read with `pread` (or memory maps, [`backend`]);
//! - `index/`: the chunk index, chunk id -> record location, as sorted
//!   memory-mapped runs sharded by id prefix (a cache of the packs);
//! - `snapshots/<name>/<id>.snap`: one manifest per backup, the ordered
//!   chunk list of the image.
//!
//! A remote repository ([`Repository::open_remote`]) keeps its packs, and
//! the truth of everything but the index, in an object store; the
//! directory then holds the index, staging packs and local copies
//! (docs/FORMAT.md, "Remote repositories").
//!
//! [`Repository::ingest`] chunks a stream (content-defined, several cores
//! per stream), stores each unknown chunk once and commits a snapshot;
//! [`Repository::reader`] streams a snapshot back, verifying the BLAKE3 of
//! every chunk on parallel threads.
//!
//! Invariants the layout cannot show:
//! - a snapshot is visible only once its chunks and manifest are durable,
//!   and a crash at any instant leaves every committed snapshot readable
//!   (commit protocol in docs/FORMAT.md);
//! - every byte handed out was verified against its chunk's BLAKE3;
//!   damage is an error naming pack, offset and chunk, never wrong bytes;
//! - memory per ingest stream is bounded (see [`ingest`]) and nothing holds
//!   the index or a manifest in heap memory;
//! - durability goes through `durable.rs`; `unsafe` lives in `mmap.rs`;
//!   `format/` is bytes only.
//!
//! Where each operation lives, and the ingest and restore paths step by
//! step: docs/ARCHITECTURE.md.

pub mod backend;
pub mod calendar;
pub mod clock;
mod compress;
pub mod cpu;
pub mod crypt;
mod durable;
#[cfg(feature = "failpoints")]
pub use durable::observe;
mod error;
pub mod format;
#[doc(hidden)]
pub mod fuzz;
mod gc;
pub mod index;
pub mod ingest;
mod mmap;
mod pack;
mod pins;
mod repo;
pub mod reserve;
mod restore;
pub mod retention;
pub mod sealed_file;
pub mod snapshot;
mod stats;
mod tombstones;
mod verify;
mod window;

pub use backend::{LocalPacks, MemMeta, MemPacks, MetaBackend, PackBackend, ReadMode};
pub use bunker_chunk::{ChunkId, ChunkerParams};
pub use error::{Error, Result};
pub use format::manifest::MAX_IMAGE_LEN;
pub use format::space::Usage;
pub use gc::{GcOptions, GcReport, DEFAULT_REWRITE_BELOW};
pub use ingest::{IngestOptions, Progress};
pub use pack::TornTail;
pub use pins::Pins;
pub use repo::{
    chunker_for_size, CreateOptions, NewData, OpenOptions, Recovery, Remote, Repository,
    DEFAULT_PACK_LEN, MAX_CHUNK_SIZE, MIN_CHUNK_SIZE,
};
pub use restore::{ManifestCursor, Piece, SnapshotReader};
pub use snapshot::{validate_name, CopyCommit, ManifestEntry, Origin, SnapshotInfo};
pub use stats::{NameStats, Stats};
pub use verify::{Damage, DamagedSnapshot, VerifyOptions, VerifyReport};

/// Replaces a small file atomically and durably (temp file, sync, rename,
/// sync directory): for servers keeping their own state next to a
/// repository.
pub fn write_file_atomically(path: &std::path::Path, bytes: &[u8]) -> Result<()> {
    durable::replace_file(path, bytes)
}

/// Removes the temp files that interrupted [`write_file_atomically`]s of
/// `path` left beside it: regular files named exactly `NAME.PID.SEQ.tmp`,
/// nothing else. Call it while holding the repository open, so no other
/// process is writing them. Returns the paths removed.
pub fn remove_stale_temps_of(path: &std::path::Path) -> Result<Vec<std::path::PathBuf>> {
    let (Some(dir), Some(name)) = (path.parent(), path.file_name().and_then(|n| n.to_str())) else {
        return Err(Error::Invalid(format!(
            "{} is not a file name in a directory",
            path.display()
        )));
    };
    durable::remove_stale_temps(dir, &[name])
}

/// A pack file's number, unique in its repository, never reused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PackId(pub u64);

/// A snapshot's number: unique in its repository, increasing in commit order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SnapshotId(pub u64);

impl std::fmt::Display for SnapshotId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// Where a chunk's record is: pack, offset of the record header, lengths.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Location {
    pub pack: PackId,
    pub offset: u64,
    pub raw_len: u32,
    pub stored_len: u32,
}
