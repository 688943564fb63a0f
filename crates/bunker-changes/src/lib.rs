//! Changed-extent backups: back up day N of a volume by reading only what
//! changed since the base snapshot, and still record exactly the manifest
//! and the whole-image BLAKE3 that a full read would have recorded.
//!
//! - [`map`]: the changed-extent maps storage systems emit (`rbd diff`,
//!   plain and JSON, and the generic `START LENGTH [data|zero]`), checked
//!   and normalised;
//! - [`rechunk`]: the walk that reuses the base's entries where the map
//!   says nothing changed and re-chunks from the last shared boundary
//!   before each change to the first one after it;
//! - the whole-image BLAKE3 without reading unchanged blocks comes from
//!   `bunker_chunk::digest` and the base snapshot's block hashes.
//!
//! The crate does no I/O of its own: the caller brings the source reader,
//! the base manifest and what happens to each piece.

pub mod map;
pub mod rechunk;

pub use map::{ChangeMap, Extent, Kind, MapError};
pub use rechunk::{walk, Entry, Options, Piece, Report};
