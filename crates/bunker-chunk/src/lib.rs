//! Content-defined chunking and chunk ids for bunker.
//!
//! # Brief overview
//! A backup stream is cut into chunks whose boundaries depend only on the
//! bytes near them ([`Chunker`]), so an insert or delete in a volume image moves
//! only the boundaries around it and every other chunk deduplicates against
//! what is already stored. Each chunk is named by the BLAKE3 hash of its bytes
//! ([`ChunkId`]); an all-zero chunk is named [`ChunkId::ZERO`] and never hashed.
//!
//! Guarantees:
//! - Boundaries are a pure function of the data, the [`ChunkerParams`] and the
//!   fixed gear table in `gear.rs`. They never depend on how the data was
//!   split into reads, nor on how many threads chunked it ([`seams`]), nor
//!   on the [`Scan`] that found them: the fingerprint depends only on the
//!   last 64 bytes, so lanes warmed up on those bytes see the same cut
//!   points as the one scalar loop (`lanes.rs`).
//! - Every chunk but the last of a stream is within `[min_len, max_len]`.
//! - [`digest`] computes an image's BLAKE3 from the chaining values of its
//!   aligned blocks, so a backup that reads only changed blocks still
//!   records the hash of every byte.
//! - This crate does no I/O and starts no threads (but for rayon's pool
//!   with the `rayon` feature); callers bring both.

pub mod blocks_file;
mod chunker;
pub mod digest;
mod gear;
mod id;
mod lanes;
pub mod seams;
mod zero;

pub use chunker::{Chunker, ChunkerParams, Cut, Scan, MAX_MAX_LEN};
pub use id::ChunkId;
pub use zero::is_zero;

/// Errors of this crate: both are caller input that cannot be used.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum Error {
    /// Chunker parameters outside what the chunker supports.
    #[error("invalid chunker parameters (min {min_len}, avg {avg_len}, max {max_len}): {reason}")]
    InvalidParams {
        min_len: u32,
        avg_len: u32,
        max_len: u32,
        reason: &'static str,
    },
    /// A chunk id that is not 64 hexadecimal characters.
    #[error("invalid chunk id {text:?}: expected 64 hexadecimal characters")]
    InvalidChunkId { text: String },
}
