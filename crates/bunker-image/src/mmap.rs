//! The only unsafe code of the crate: mapping the spooled manifest.

use std::fs::File;

use memmap2::Mmap;

/// Maps `file` read-only.
///
/// The caller must own `file` exclusively (an unlinked temporary file no
/// other process can open) and must neither write nor truncate it while
/// the map lives.
#[allow(unsafe_code)]
pub(crate) fn map_private(file: &File) -> std::io::Result<Mmap> {
    // SAFETY: the contract above: the file is an unlinked temporary file
    // that only this process holds, written completely before it is mapped
    // and never written or truncated afterwards, so the mapped bytes cannot
    // change or vanish under the map (no SIGBUS, no torn reads).
    unsafe { Mmap::map(file) }
}
