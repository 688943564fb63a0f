//! The one error type of the store.
//!
//! Policy: variants are what a caller does next, not where the error came
//! from. `NotFound` and `AlreadyExists` are the caller's mistakes; `Corrupt`
//! names the file, offset and chunk so an operator can act on it, and is
//! never hidden behind wrong bytes; `Io` carries the path; `Poisoned` means a
//! durability step failed and nothing more may be acknowledged until the
//! repository is reopened (and recovery re-checks what reached the disk).

use std::path::PathBuf;

use bunker_chunk::ChunkId;

use crate::PackId;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    #[error("I/O error on {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The disk (or quota) is full. Nothing acknowledged is affected.
    #[error("no space left on device writing {path}")]
    NoSpace { path: PathBuf },
    #[error("not found: {what}")]
    NotFound { what: String },
    #[error("already exists: {what}")]
    AlreadyExists { what: String },
    /// Stored data does not match its checksum or hash. `pack` and `offset`
    /// locate the record when the damage is in a pack.
    #[error("corrupt data in {file}{}{}: {reason}", offset.map(|o| format!(" at offset {o}")).unwrap_or_default(), chunk.map(|c| format!(" (chunk {c})")).unwrap_or_default())]
    Corrupt {
        file: String,
        pack: Option<PackId>,
        offset: Option<u64>,
        chunk: Option<ChunkId>,
        reason: String,
    },
    /// A file with a bunker magic but a format version this build cannot read.
    #[error(
        "{file}: unsupported {kind} format version {found} (this build reads version {supported})"
    )]
    UnsupportedVersion {
        file: String,
        kind: &'static str,
        found: u32,
        supported: u32,
    },
    /// A file that is not what it should be (wrong magic, truncated header).
    #[error("{file}: not a bunker {kind} file: {reason}")]
    NotBunkerFile {
        file: String,
        kind: &'static str,
        reason: String,
    },
    #[error("invalid argument: {0}")]
    Invalid(String),
    /// The whole-stream hash the client announced differs from the data.
    #[error("stream hash mismatch: client said {expected}, data hashes to {actual}")]
    StreamHashMismatch { expected: String, actual: String },
    /// Uploaded chunk bytes that do not hash to the id they were sent as.
    #[error("chunk bytes hash to {actual}, not to the id {claimed} they were sent as")]
    ChunkHashMismatch { claimed: ChunkId, actual: ChunkId },
    /// A previous durability failure; reopen the repository.
    #[error("repository writer is poisoned after a failed write or sync ({0}); reopen to recover")]
    Poisoned(String),
    /// Another maintenance job (GC, verify) is running in this process.
    #[error("busy: {0}")]
    Busy(String),
    /// Another process holds the repository lock.
    #[error("repository {path} is locked by another process")]
    Locked { path: PathBuf },
    /// The object store did not answer, or kept refusing (503, SlowDown,
    /// timeouts), through every configured retry. Nothing acknowledged is
    /// affected; the same request may succeed later.
    #[error("object store {store} is unavailable: {reason}")]
    Unavailable { store: String, reason: String },
    /// The object store refused for good: wrong credentials, no such
    /// bucket, no permission. Retrying does not help; fix the setup.
    #[error("object store {store} refused: {reason}")]
    Remote { store: String, reason: String },
    /// The key given does not fit the repository: it is encrypted and no
    /// key or another key was given, or it is clear and a key was given.
    /// Fix the server's key setup; nothing was changed.
    #[error("{}", key_mismatch(repo, expected, given))]
    Key {
        repo: PathBuf,
        /// The key the repository's config names (`None`: clear).
        expected: Option<bunker_crypt::KeyId>,
        /// The key given (`None`: none).
        given: Option<bunker_crypt::KeyId>,
    },
    /// The reader of an ingest stream failed (client went away, source
    /// unreadable). Nothing was committed.
    #[error("reading the backup source failed: {0}")]
    Source(#[source] std::io::Error),
    /// A sealed file (manifest, block hashes) written under another key
    /// than the one given: the wrong key file, or a file from another
    /// repository. Nothing was read from it.
    #[error("{file} is sealed with key {sealed_with}, the key given is {key}")]
    SealedWithOtherKey {
        file: String,
        sealed_with: String,
        key: String,
    },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// Wraps an I/O error with its path, recognising a full disk.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Error {
        let path = path.into();
        if is_no_space(&source) {
            return Error::NoSpace { path };
        }
        Error::Io { path, source }
    }

    pub(crate) fn corrupt(file: impl Into<String>, reason: impl Into<String>) -> Error {
        Error::Corrupt {
            file: file.into(),
            pack: None,
            offset: None,
            chunk: None,
            reason: reason.into(),
        }
    }

    pub fn is_corrupt(&self) -> bool {
        matches!(self, Error::Corrupt { .. })
    }
}

fn key_mismatch(
    repo: &std::path::Path,
    expected: &Option<bunker_crypt::KeyId>,
    given: &Option<bunker_crypt::KeyId>,
) -> String {
    let repo = repo.display();
    match (expected, given) {
        (Some(e), None) => {
            format!("repository {repo} is encrypted with key {e}; start the server with --key-file")
        }
        (Some(e), Some(g)) => {
            format!("repository {repo} is encrypted with key {e}, the key given is {g}")
        }
        (None, Some(g)) => format!(
            "repository {repo} is not encrypted; it was created without a key (key {g} given)"
        ),
        (None, None) => format!("repository {repo}: key check failed without a key"),
    }
}

fn is_no_space(e: &std::io::Error) -> bool {
    matches!(e.raw_os_error(), Some(code) if code == rustix::io::Errno::NOSPC.raw_os_error() || code == rustix::io::Errno::DQUOT.raw_os_error())
        || e.kind() == std::io::ErrorKind::StorageFull
}

/// Adds a path to I/O results.
pub(crate) trait IoContext<T> {
    fn at(self, path: impl Into<PathBuf>) -> Result<T>;
}

impl<T> IoContext<T> for std::io::Result<T> {
    fn at(self, path: impl Into<PathBuf>) -> Result<T> {
        self.map_err(|e| Error::io(path, e))
    }
}
