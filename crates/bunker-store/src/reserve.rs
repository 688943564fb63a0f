//! The space reserve: a file of [`RESERVE_LEN`] bytes kept in the
//! repository so that deleting snapshots and GC, the operations that free
//! space, still work on a full disk. When one of them fails for lack of
//! space the reserve is released and the operation retried once; the
//! reserve is put back when space allows (after a GC, or at the next open).
//! Backups never use it: they fail with `NoSpace` (HTTP 507) instead.

use std::io::Write;
use std::path::{Path, PathBuf};

use crate::{Error, Result};

/// Enough for the small files a delete or a GC writes (the deleted-id
/// mark, tombstones, the space file, the state of a compacted index)
/// before the first pack is deleted.
pub const RESERVE_LEN: u64 = 8 << 20;

const FILE: &str = "reserve";

pub(crate) fn path(root: &Path) -> PathBuf {
    root.join(FILE)
}

/// Creates the reserve if it is missing (or short). A full disk leaves it
/// missing: logged, not an error.
pub(crate) fn ensure(root: &Path) {
    let p = path(root);
    if std::fs::metadata(&p).is_ok_and(|m| m.len() == RESERVE_LEN) {
        return;
    }
    let result = (|| -> std::io::Result<()> {
        let mut f = std::fs::File::create(&p)?;
        // Written, not just sized: a sparse file would reserve nothing.
        let zeros = vec![0u8; 1 << 20];
        for _ in 0..RESERVE_LEN / (1 << 20) {
            f.write_all(&zeros)?;
        }
        f.sync_all()
    })();
    if let Err(e) = result {
        let _ = std::fs::remove_file(&p);
        tracing::warn!(
            "no space reserve ({e}): deletes and GC may fail on a full disk until space is freed"
        );
    }
}

/// Runs `op`; if it fails for lack of space and the reserve exists,
/// releases the reserve and runs it once more.
pub(crate) fn retry_with<T>(root: &Path, mut op: impl FnMut() -> Result<T>) -> Result<T> {
    match op() {
        Err(Error::NoSpace { path }) => {
            if std::fs::remove_file(self::path(root)).is_err() {
                return Err(Error::NoSpace { path });
            }
            tracing::warn!("disk full: released the space reserve to free space");
            op()
        }
        other => other,
    }
}
