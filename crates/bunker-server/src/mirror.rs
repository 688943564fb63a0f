//! The server's state files copied to the bucket, so that a server rebuilt
//! from the bucket keeps its tokens and check history.
//!
//! On a bucket, `<data>/server/tokens.json` and `checks.json` are also the
//! objects `server/tokens.json` and `server/checks.json` (format in
//! docs/FORMAT.md, "Server state in the bucket"). Each change is saved
//! locally first, then put to the bucket: a token change is acknowledged
//! only once the bucket has it, and rolled back locally when the bucket
//! refuses it (`tokens`); a check record the bucket refuses stays local and
//! goes up with the next save (`checks`). At start, before anything reads
//! them, [`reconcile`] brings the two copies together: a missing local file
//! is restored from the bucket (disaster recovery), and which copy wins
//! when both exist and differ is the file's [`Winner`].

use std::path::Path;
use std::sync::Arc;

use bunker_store::MetaBackend;

use crate::error::StartError;

/// Which copy a start keeps when both exist and differ.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Winner {
    /// The bucket's: a change the bucket never took was never acknowledged
    /// (tokens).
    Bucket,
    /// The local file's: it can only be newer (check history).
    Local,
}

/// What [`reconcile`] did.
#[derive(Debug, PartialEq, Eq)]
pub enum Reconciled {
    /// Both copies were equal, or neither existed.
    Same,
    /// The local file was missing, or lost to the bucket's copy, and was
    /// replaced by it.
    Restored,
    /// The bucket had no copy, or lost to the local file, and was given it.
    Uploaded,
}

/// The object key of a server state file.
pub fn key(file: &str) -> String {
    format!("server/{file}")
}

/// Brings the local file `<dir>/<file>` and its object together (module
/// documentation).
pub fn reconcile(
    meta: &dyn MetaBackend,
    dir: &Path,
    file: &str,
    winner: Winner,
) -> Result<Reconciled, StartError> {
    let bucket = |source| StartError::Bucket {
        store: meta.describe(),
        source: Box::new(source),
    };
    let path = dir.join(file);
    let local = match std::fs::read(&path) {
        Ok(b) => Some(b),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(StartError::io("reading", path, e)),
    };
    let remote = meta.get(&key(file)).map_err(bucket)?;
    let restore = match (&local, &remote) {
        (Some(l), Some(r)) if l == r => return Ok(Reconciled::Same),
        (None, None) => return Ok(Reconciled::Same),
        (None, Some(_)) => true,
        (Some(_), None) => false,
        (Some(_), Some(_)) => winner == Winner::Bucket,
    };
    match remote {
        Some(bytes) if restore => {
            std::fs::create_dir_all(dir)
                .map_err(|e| StartError::io("creating the server state directory", dir, e))?;
            bunker_store::write_file_atomically(&path, &bytes).map_err(|e| {
                StartError::Repository {
                    path: path.clone(),
                    source: Box::new(e),
                }
            })?;
            Ok(Reconciled::Restored)
        }
        _ => {
            let bytes = local.unwrap_or_default();
            meta.put(&key(file), &bytes).map_err(bucket)?;
            Ok(Reconciled::Uploaded)
        }
    }
}

/// Where a state file is mirrored, once the server knows its bucket.
pub type Target = std::sync::OnceLock<Arc<dyn MetaBackend>>;
