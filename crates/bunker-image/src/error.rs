//! Errors of an image, by what the caller does next.
//!
//! - [`ImageError::Damaged`]: this chunk cannot be read correctly; fail
//!   the requests that touch it (NBD `EIO`), serve the rest.
//! - [`ImageError::Unavailable`]: the server could not be asked (down,
//!   overloaded, stalled); the same request may work later.
//! - [`ImageError::OutOfRange`]: the caller asked past the end; its bug
//!   (NBD `EINVAL`).
//! - [`ImageError::Open`], [`ImageError::BadManifest`],
//!   [`ImageError::Spool`]: the image cannot be opened at all.

use bunker_chunk::ChunkId;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ImageError {
    #[error("chunk {chunk} at byte {offset} is damaged: {reason}")]
    Damaged {
        chunk: ChunkId,
        /// Where the chunk starts in the image.
        offset: u64,
        reason: String,
    },
    #[error("chunk {chunk} at byte {offset} could not be fetched: {reason}")]
    Unavailable {
        chunk: ChunkId,
        offset: u64,
        reason: String,
    },
    #[error("bytes {offset}..{} are beyond the end of the image ({size} bytes)", offset.saturating_add(*len))]
    OutOfRange { offset: u64, len: u64, size: u64 },
    #[error(transparent)]
    Open(#[from] bunker_client::Error),
    #[error("the server's manifest of {snapshot} is unusable: {reason}")]
    BadManifest { snapshot: String, reason: String },
    #[error("cannot spool the manifest to a temporary file: {0}")]
    Spool(#[source] std::io::Error),
}

impl ImageError {
    /// The chunk a read failed on, if it failed on one.
    pub fn chunk(&self) -> Option<(ChunkId, u64)> {
        match self {
            ImageError::Damaged { chunk, offset, .. }
            | ImageError::Unavailable { chunk, offset, .. } => Some((*chunk, *offset)),
            _ => None,
        }
    }
}
