//! The one error type of bunker-crypt.
//!
//! Policy: variants are what the caller does next. `WrongKey` and the key
//! file variants are operator mistakes to report at start, naming the file
//! and key ids; `Damaged` is stored data that failed authentication, to be
//! reported as damage of the object the caller was opening.

use std::path::PathBuf;

use crate::KeyId;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    #[error("I/O error on {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// `key create` never overwrites a key: that would lose the data it
    /// encrypts.
    #[error("{path} already exists; a key file is never overwritten")]
    AlreadyExists { path: PathBuf },
    /// Not a bunker key file at all (wrong magic, wrong length).
    #[error("{path}: not a bunker key file: {reason}")]
    NotKeyFile { path: PathBuf, reason: String },
    #[error(
        "{path}: unsupported key file format version {found} (this build reads version {supported})"
    )]
    UnsupportedVersion {
        path: PathBuf,
        found: u32,
        supported: u32,
    },
    /// A key file whose key does not hash to the id stored beside it.
    #[error("{path}: key file is damaged: the key does not match its stored key id {stored}")]
    KeyFileDamaged { path: PathBuf, stored: KeyId },
    /// The repository was encrypted with another key.
    #[error(
        "wrong key: the repository is encrypted with key {expected}, the key given is {given}"
    )]
    WrongKey { expected: KeyId, given: KeyId },
    /// A sealed object failed authentication: flipped bits, truncation, or
    /// an object moved from another place (another pack, offset or chunk).
    #[error("damaged: {reason}")]
    Damaged { reason: &'static str },
}
