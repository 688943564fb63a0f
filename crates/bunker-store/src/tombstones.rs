//! Reading and replacing the `tombstones` file (its bytes:
//! `format/tombstones.rs`). GC writes condemned packs, verify quarantined
//! records; opening reads them. Replaced atomically through `durable`.

use std::path::Path;

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

pub(crate) fn write_tombstones(root: &Path, t: &Tombstones) -> Result<()> {
    durable::replace_file(
        &root.join(TOMBSTONES),
        &crate::format::tombstones::encode(t),
    )
}

pub(crate) const TOMBSTONES: &str = "tombstones";
