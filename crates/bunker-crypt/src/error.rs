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
    /// A passphrase-wrapped key file where a plain one was expected
    /// (`bunker key export` of a wrapped file, a reader without a
    /// passphrase path).
    #[error("{path} is a passphrase-wrapped key file (key id {key_id}), not a plain key file")]
    Wrapped { path: PathBuf, key_id: KeyId },
    /// A plain key file given to be unwrapped: it is the key already.
    #[error("{path} is a plain key file, not a passphrase-wrapped one: use it as it is")]
    NotWrapped { path: PathBuf },
    /// A wrapped key file was given without a passphrase.
    #[error(
        "{path} is a passphrase-wrapped key file (key id {key_id}) and no passphrase was given"
    )]
    NeedsPassphrase { path: PathBuf, key_id: KeyId },
    /// The sealed key did not open: the passphrase is wrong, or the file
    /// was changed (its header is authenticated with the key).
    #[error("{path}: wrong passphrase or damaged wrapped key file (key id {key_id})")]
    WrongPassphrase { path: PathBuf, key_id: KeyId },
    /// A wrapped key file's KDF or its parameters are unknown or outside
    /// the bounds this build accepts; refused before any work.
    #[error("{path}: wrapped key file (key id {key_id}) refused: {reason}")]
    KdfParams {
        path: PathBuf,
        key_id: KeyId,
        reason: String,
    },
    /// A passphrase that is empty, or too weak to wrap a key with.
    #[error("{reason}")]
    BadPassphrase { reason: String },
    /// A sealed object failed authentication: flipped bits, truncation, or
    /// an object opened as another (its associated data differs).
    #[error("damaged: {reason}")]
    Damaged { reason: &'static str },
}
