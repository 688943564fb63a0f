//! Replication: copies snapshots from a source bunker server to a target,
//! sending only the chunks the target lacks, as the source stores them
//! (zstd frames are never decompressed and recompressed on the way).
//!
//! [`sync`] is the whole engine: plain functions over a source
//! [`bunker_client::Client`] (a reader token is enough) and a [`Target`]
//! (a writer token is enough; [`HttpTarget`] speaks the HTTP API, a server
//! pulling into its own repository implements the trait in-process).
//! Nothing here deletes, on either side.
//!
//! Per snapshot, in creation order: its manifest is streamed to a temp
//! file (never held in memory); a target session is opened with the
//! snapshot's [`Origin`]; the manifest is read back in batches, each
//! batch's ids asked `missing` on the target, and the missing chunks are
//! fetched from the source and put to the target on a bounded number of
//! threads; then the session commits the (length, id) manifest and the
//! source's whole-image BLAKE3.
//!
//! What the target guarantees whatever the source sends (docs/API.md,
//! "Replication"): a chunk is stored only once its decoded bytes hash to
//! its id; a commit refers only to stored chunks whose stored length is
//! the entry's length; a snapshot appears only at commit, whole, and at
//! most once per origin. What this engine adds: the manifest's ends must
//! increase and sum to the source's announced size, and the committed
//! copy's size and BLAKE3 must equal the source's. The whole-image BLAKE3
//! itself cannot be checked without reading the image: the target records
//! the source's, and a drill of the copy proves it.
//!
//! Interrupted anywhere, the target shows no partial snapshot, and the
//! next run sends only what is still missing (chunks already put are
//! stored, and session pins keep them from GC, docs/GC.md).

mod engine;
mod error;
mod http;

pub use engine::{sync, Filter, SnapshotReport, SyncOptions, SyncProgress, SyncReport};
pub use error::{SyncError, TargetError};
pub use http::HttpTarget;

pub use bunker_api::Origin;
pub use bunker_chunk::ChunkId;
pub use bunker_client::{Committed, Frame};

use std::io::Read;

use bunker_api::Snapshot;

/// Where snapshots are copied to: a session of the chunk protocol, step by
/// step. Called from several threads at once (`put_frame`), hence `Sync`.
pub trait Target: Sync {
    /// The target's snapshots, or those the caller may see: the engine
    /// skips a source snapshot whose origin is among theirs.
    fn snapshots(&self) -> Result<Vec<Snapshot>, TargetError>;
    /// The largest chunk the target's repository stores (its chunker's
    /// `max_len`): a source cutting larger ones cannot be copied there.
    fn max_chunk(&self) -> Result<u64, TargetError>;
    /// Opens a session for a copy of `origin` named `name`; returns its id.
    fn begin(&self, name: &str, source: &str, origin: &Origin) -> Result<String, TargetError>;
    /// Which of `ids` the target lacks, in order.
    fn missing(&self, session: &str, ids: &[ChunkId]) -> Result<Vec<bool>, TargetError>;
    /// Stores one chunk from its frame once its bytes check against `id`.
    fn put_frame(&self, session: &str, id: &ChunkId, frame: &Frame) -> Result<(), TargetError>;
    /// Commits the manifest read from `manifest` (40-byte entries: raw
    /// length u64 little-endian, chunk id) with the image's BLAKE3 (hex).
    fn commit(
        &self,
        session: &str,
        manifest: &mut dyn Read,
        blake3: &str,
    ) -> Result<Committed, TargetError>;
    /// Ends a session without a commit (best effort).
    fn abort(&self, session: &str);
}
