//! Reading and replacing the `tombstones` file (its bytes:
//! `format/tombstones.rs`). GC writes condemned packs, verify quarantined
//! records; opening reads them. Replaced atomically through `durable`, and
//! in a remote repository put to the bucket right after, before GC deletes
//! any pack object they condemn (a lost server's replacement must finish
//! the same deletions, not index packs half gone).

use std::path::Path;

use crate::backend::MetaBackend;
use crate::index::Tombstones;
use crate::{durable, Error, Result};

/// The repository's tombstones (an empty set when there is no file).
pub(crate) fn read_tombstones(root: &Path) -> Result<Tombstones> {
    let path = root.join(TOMBSTONES);
    match std::fs::read(&path) {
        Ok(b) => crate::format::tombstones::decode(TOMBSTONES, &b),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Tombstones::default()),
        Err(e) => Err(Error::io(path, e)),
    }
}

/// Replaces the file. In a remote repository the caller then applies the
/// set in memory (this data directory's next open acts on the file
/// anyway) and puts the object with [`put_tombstones`].
pub(crate) fn write_tombstones(root: &Path, t: &Tombstones) -> Result<()> {
    durable::replace_file(
        &root.join(TOMBSTONES),
        &crate::format::tombstones::encode(t),
    )
}

/// Puts the object of a remote repository (nothing for a local one).
/// Opening takes the union of file and object, so a failure after the
/// file was replaced loses nothing.
pub(crate) fn put_tombstones(meta: Option<&dyn MetaBackend>, t: &Tombstones) -> Result<()> {
    match meta {
        Some(meta) => meta.put(TOMBSTONES, &crate::format::tombstones::encode(t)),
        None => Ok(()),
    }
}

pub(crate) const TOMBSTONES: &str = "tombstones";
