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

/// Replaces the file, then (remote) the object. Opening takes the union
/// of both, so a failure between them loses nothing.
pub(crate) fn write_tombstones(
    root: &Path,
    meta: Option<&dyn MetaBackend>,
    t: &Tombstones,
) -> Result<()> {
    let bytes = crate::format::tombstones::encode(t);
    durable::replace_file(&root.join(TOMBSTONES), &bytes)?;
    match meta {
        Some(meta) => meta.put(TOMBSTONES, &bytes),
        None => Ok(()),
    }
}

pub(crate) const TOMBSTONES: &str = "tombstones";
