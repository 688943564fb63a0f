//! Read-only memory maps of sealed files: the only `unsafe` code of bunker.
//!
//! Contract for every file mapped here: it is sealed (complete, synced and
//! never written again), it is never truncated or rewritten in place (it is
//! replaced by publishing a new file under a new name, or deleted whole,
//! which leaves existing maps valid on Linux), and no other program modifies
//! the repository. Mapped bytes are still treated as untrusted input: callers
//! copy fields out, validate them, bounds-check every offset, and hand out
//! owned, checksum- or BLAKE3-verified bytes, never map-backed slices.
#![allow(unsafe_code)]

use std::fs::File;

use memmap2::{Mmap, MmapOptions};

pub(crate) struct SealedMap {
    map: Mmap,
}

impl SealedMap {
    /// Maps all of `file` read-only.
    pub(crate) fn open(file: &File) -> std::io::Result<SealedMap> {
        // SAFETY: the caller opened a sealed file of the repository (see the
        // module contract): it is not truncated or modified while mapped, so
        // the mapped bytes stay valid and do not change under us. A violation
        // (an outside program truncating the file) would raise SIGBUS on
        // access, not undefined values; writers never map files.
        let map = unsafe { MmapOptions::new().map(file)? };
        Ok(SealedMap { map })
    }

    /// Declares random access: no readahead and no fault-around, so a
    /// lookup maps the page it touches and not the 15 cached pages around
    /// it (which would inflate resident memory 16-fold).
    pub(crate) fn advise_random(&self) {
        if let Err(e) = self.map.advise(memmap2::Advice::Random) {
            tracing::debug!("madvise(RANDOM) failed: {e}");
        }
    }

    /// Declares a front-to-back scan (a merge): full readahead.
    pub(crate) fn advise_sequential(&self) {
        if let Err(e) = self.map.advise(memmap2::Advice::Sequential) {
            tracing::debug!("madvise(SEQUENTIAL) failed: {e}");
        }
    }

    pub(crate) fn bytes(&self) -> &[u8] {
        &self.map
    }

    /// Copies `len` bytes at `offset` out of the map, or `None` when the
    /// range is outside the file.
    pub(crate) fn copy(&self, offset: u64, len: usize) -> Option<Vec<u8>> {
        let start = usize::try_from(offset).ok()?;
        let end = start.checked_add(len)?;
        self.map.get(start..end).map(<[u8]>::to_vec)
    }

    /// Drops the pages holding a range from this process's page tables
    /// after it was copied out, so resident memory stays flat while
    /// streaming through packs many times larger than RAM. The range is
    /// widened to whole pages: dropping a page another reader still uses
    /// only makes it fault in again. The page cache keeps the data.
    pub(crate) fn release(&self, offset: u64, len: usize) {
        const PAGE: u64 = 4096;
        let map_len = self.map.len() as u64;
        let start = offset / PAGE * PAGE;
        let end = offset
            .saturating_add(len as u64)
            .div_ceil(PAGE)
            .saturating_mul(PAGE)
            .min(map_len);
        if end <= start {
            return;
        }
        // SAFETY: MADV_DONTNEED on a read-only file mapping only discards
        // this process's page table entries; the next access faults the same
        // file bytes back in from the page cache. A read-only map has no
        // anonymous (copy-on-write) pages whose contents could be lost. The
        // range starts page aligned and lies inside the map (the kernel
        // rounds a partial last page up, within the mapping).
        let result = unsafe {
            self.map.unchecked_advise_range(
                memmap2::UncheckedAdvice::DontNeed,
                start as usize,
                (end - start) as usize,
            )
        };
        if let Err(e) = result {
            tracing::debug!("madvise(DONTNEED) failed: {e}");
        }
    }

    /// Drops all resident pages of the map (see [`Self::release`]).
    pub(crate) fn release_all(&self) {
        self.release(0, self.map.len());
    }
}
