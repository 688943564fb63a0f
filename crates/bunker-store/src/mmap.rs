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
    /// widened to whole pages of the running kernel (4 KiB on x86-64, 16 or
    /// 64 KiB on some arm64 and ppc64 kernels, where an unaligned start
    /// makes `madvise` fail): dropping a page another reader still uses
    /// only makes it fault in again. The page cache keeps the data.
    pub(crate) fn release(&self, offset: u64, len: usize) {
        let Some(span) = page_span(offset, len, self.map.len(), rustix::param::page_size()) else {
            return;
        };
        // SAFETY: MADV_DONTNEED on a read-only file mapping only discards
        // this process's page table entries; the next access faults the same
        // file bytes back in from the page cache. A read-only map has no
        // anonymous (copy-on-write) pages whose contents could be lost. The
        // range starts page aligned and lies inside the map (the kernel
        // rounds a partial last page up, within the mapping).
        let result = unsafe {
            self.map.unchecked_advise_range(
                memmap2::UncheckedAdvice::DontNeed,
                span.start,
                span.len(),
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

/// `offset..offset + len` widened to whole pages of `page` bytes and cut at
/// `map_len`: what `madvise` accepts (a page-aligned start). `None` when
/// nothing of the range lies in the map.
fn page_span(
    offset: u64,
    len: usize,
    map_len: usize,
    page: usize,
) -> Option<std::ops::Range<usize>> {
    let page = page as u64;
    let start = offset / page * page;
    let end = offset
        .saturating_add(len as u64)
        .div_ceil(page)
        .saturating_mul(page)
        .min(map_len as u64);
    (start < end).then_some(start as usize..end as usize)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Regression: `release` assumed 4 KiB pages, so on a 16 or 64 KiB
    /// page kernel most ranges started unaligned and `madvise` refused them.
    #[test]
    fn release_spans_start_on_the_kernels_page_size() {
        for page in [4096usize, 16 << 10, 64 << 10] {
            let map_len = 10 * page + 123;
            for (offset, len) in [
                (0, 1),
                (4096, 100),
                (page as u64 + 5, 3 * page),
                (9 * page as u64 + 7, page),
            ] {
                let span = page_span(offset, len, map_len, page).unwrap();
                assert_eq!(span.start % page, 0, "page {page}, offset {offset}");
                assert!(span.start as u64 <= offset);
                assert!(span.end as u64 >= (offset + len as u64).min(map_len as u64));
                assert!(span.end <= map_len);
            }
            assert_eq!(page_span(11 * page as u64, 10, map_len, page), None);
        }
    }

    #[test]
    fn release_of_a_real_map_keeps_its_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let bytes: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        std::fs::write(&path, &bytes).unwrap();
        let map = SealedMap::open(&std::fs::File::open(&path).unwrap()).unwrap();
        let page = rustix::param::page_size();
        assert!(page.is_power_of_two() && page >= 4096, "{page}");
        map.release(page as u64 + 17, 3 * page);
        map.release_all();
        assert_eq!(map.copy(0, bytes.len()).unwrap(), bytes);
    }
}
