//! The storage seam for pack files.
//!
//! The engine writes a new pack into a local staging file, seals and syncs
//! it, then hands it to a [`PackBackend`] with `store_sealed`; after that the
//! pack is immutable and only read by byte range, listed or deleted. That is
//! all an object store (S3 and the like) offers, so packs can move there
//! without touching the rest of the engine. [`LocalPacks`] is the default:
//! the staging file is already in place and sealing is a rename.
//! [`MemPacks`] holds sealed packs in memory, for tests. Every backend must
//! pass the suite in [`conformance`] (feature `conformance` outside this
//! crate's tests).

use std::collections::HashMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use crate::error::IoContext;
use crate::mmap::SealedMap;
use crate::{durable, Error, PackId, Result};

#[cfg(any(test, feature = "conformance"))]
pub mod conformance;
mod mem;
pub mod meta;
pub use mem::MemPacks;
pub use meta::{MemMeta, MetaBackend};

pub trait PackBackend: Send + Sync {
    /// Where a new pack is staged while it is written.
    fn staging_path(&self, pack: PackId) -> PathBuf;
    /// Publishes a sealed and synced staging file as `pack`. Durable on return.
    fn store_sealed(&self, pack: PackId, staged: &Path) -> Result<()>;
    /// `len` bytes of sealed pack `pack` at `offset`, owned.
    fn read(&self, pack: PackId, offset: u64, len: usize) -> Result<Vec<u8>>;
    /// A record at `offset`: its header into `head` and the `stored_len`
    /// bytes after it, in one request where the backend can.
    fn read_record(
        &self,
        pack: PackId,
        offset: u64,
        head: &mut [u8],
        stored_len: usize,
    ) -> Result<Vec<u8>> {
        read_record_in_two(self, pack, offset, head, stored_len)
    }
    /// Length of sealed pack `pack`.
    fn pack_len(&self, pack: PackId) -> Result<u64>;
    /// Ids of all sealed packs.
    fn list(&self) -> Result<Vec<PackId>>;
    /// Ids of all sealed packs with their lengths, sorted by id. A remote
    /// backend answers from its one listing (which carries the sizes)
    /// instead of a request per pack: GC and the space accounting need
    /// the length of every pack.
    fn list_sized(&self) -> Result<Vec<(PackId, u64)>> {
        let mut packs = self.list()?;
        packs.sort();
        packs
            .into_iter()
            .map(|p| Ok((p, self.pack_len(p)?)))
            .collect()
    }
    /// Ids of staging files left by an earlier process (to recover).
    fn list_staged(&self) -> Result<Vec<PackId>>;
    /// Tells the backend that `len` bytes at `offset` were consumed, so a
    /// mapped backend can drop those pages from the resident set.
    fn done_with(&self, _pack: PackId, _offset: u64, _len: usize) {}
    /// Tells the backend that these records (pack, offset, header and
    /// stored length together) will be read soon, in this order, so a
    /// remote backend can fetch them with many requests in flight. Only a
    /// hint: reads must work without it.
    fn will_need(&self, _records: &[(PackId, u64, usize)]) {}
    /// Whether [`PackBackend::will_need`] does anything: callers skip
    /// locating the records (an index lookup per chunk, on the restore
    /// path) for a backend that ignores the hint.
    fn reads_ahead(&self) -> bool {
        false
    }
    /// Deletes sealed pack `pack` (durable on return).
    fn delete(&self, pack: PackId) -> Result<()>;
    /// A short name for error messages, e.g. `packs/3a/00/000000000000003a.pack`.
    fn describe(&self, pack: PackId) -> String;
}

/// A shared backend is a backend: tests hand one set of packs to two
/// repositories in turn (a server lost, a new one on the same bucket).
impl<T: PackBackend + ?Sized> PackBackend for Arc<T> {
    fn staging_path(&self, pack: PackId) -> PathBuf {
        (**self).staging_path(pack)
    }
    fn store_sealed(&self, pack: PackId, staged: &Path) -> Result<()> {
        (**self).store_sealed(pack, staged)
    }
    fn read(&self, pack: PackId, offset: u64, len: usize) -> Result<Vec<u8>> {
        (**self).read(pack, offset, len)
    }
    fn read_record(
        &self,
        pack: PackId,
        offset: u64,
        head: &mut [u8],
        stored_len: usize,
    ) -> Result<Vec<u8>> {
        (**self).read_record(pack, offset, head, stored_len)
    }
    fn pack_len(&self, pack: PackId) -> Result<u64> {
        (**self).pack_len(pack)
    }
    fn list(&self) -> Result<Vec<PackId>> {
        (**self).list()
    }
    fn list_sized(&self) -> Result<Vec<(PackId, u64)>> {
        (**self).list_sized()
    }
    fn list_staged(&self) -> Result<Vec<PackId>> {
        (**self).list_staged()
    }
    fn done_with(&self, pack: PackId, offset: u64, len: usize) {
        (**self).done_with(pack, offset, len)
    }
    fn will_need(&self, records: &[(PackId, u64, usize)]) {
        (**self).will_need(records)
    }
    fn reads_ahead(&self) -> bool {
        (**self).reads_ahead()
    }
    fn delete(&self, pack: PackId) -> Result<()> {
        (**self).delete(pack)
    }
    fn describe(&self, pack: PackId) -> String {
        (**self).describe(pack)
    }
}

/// A record read as two `read`s: its header, then its stored bytes.
fn read_record_in_two(
    backend: &(impl PackBackend + ?Sized),
    pack: PackId,
    offset: u64,
    head: &mut [u8],
    stored_len: usize,
) -> Result<Vec<u8>> {
    head.copy_from_slice(&backend.read(pack, offset, head.len())?);
    backend.read(pack, offset + head.len() as u64, stored_len)
}

/// How [`LocalPacks`] reads sealed packs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReadMode {
    /// Read-only memory maps, one per recently used pack. A bad sector or
    /// a pack truncated underneath the process is SIGBUS on access, which
    /// kills it: for benchmarks and comparison only.
    Mmap,
    /// `pread` on a file handle (the default): a bad sector is an I/O error
    /// and a truncated pack a short read, each reported for the record it
    /// hit, and the process stays up. Restores run at the same speed
    /// within noise (docs/BENCHMARKS.md).
    Pread,
}

/// Packs in `<repo>/packs/<aa>/<bb>/<id>.pack` with a two-level fan-out on
/// the low bits of the id, so hundreds of thousands of packs stay fast to
/// open and list (at most 256 entries per directory level until the leaves).
pub struct LocalPacks {
    root: PathBuf,
    mode: ReadMode,
    maps: Mutex<HashMap<PackId, Arc<Opened>>>,
}

enum Opened {
    Map(SealedMap),
    File(File),
}

/// Maps kept open at once; beyond it an arbitrary one is dropped.
const OPEN_PACKS: usize = 256;

impl LocalPacks {
    pub fn new(root: PathBuf, mode: ReadMode) -> LocalPacks {
        LocalPacks {
            root,
            mode,
            maps: Mutex::new(HashMap::new()),
        }
    }

    fn dir(&self, pack: PackId) -> PathBuf {
        self.root
            .join(format!("{:02x}", pack.0 & 0xff))
            .join(format!("{:02x}", (pack.0 >> 8) & 0xff))
    }

    fn sealed_path(&self, pack: PackId) -> PathBuf {
        self.dir(pack).join(format!("{:016x}.pack", pack.0))
    }

    fn opened(&self, pack: PackId) -> Result<Arc<Opened>> {
        let mut maps = self.maps.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(o) = maps.get(&pack) {
            return Ok(o.clone());
        }
        let path = self.sealed_path(pack);
        let file = File::open(&path).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => Error::NotFound {
                what: format!("pack {}", self.describe(pack)),
            },
            _ => Error::io(&path, e),
        })?;
        let opened = Arc::new(match self.mode {
            ReadMode::Mmap => Opened::Map(SealedMap::open(&file).at(&path)?),
            ReadMode::Pread => Opened::File(file),
        });
        if maps.len() >= OPEN_PACKS {
            if let Some(k) = maps.keys().next().copied() {
                maps.remove(&k);
            }
        }
        maps.insert(pack, opened.clone());
        Ok(opened)
    }

    fn walk(&self, ext: &str) -> Result<Vec<PackId>> {
        let mut out = Vec::new();
        for a in read_dir_names(&self.root)? {
            let da = self.root.join(&a);
            if !da.is_dir() {
                continue;
            }
            for b in read_dir_names(&da)? {
                let db = da.join(&b);
                if !db.is_dir() {
                    continue;
                }
                for name in read_dir_names(&db)? {
                    if let Some(hex) = name.strip_suffix(ext) {
                        if let Ok(id) = u64::from_str_radix(hex, 16) {
                            out.push(PackId(id));
                        }
                    }
                }
            }
        }
        out.sort();
        Ok(out)
    }
}

fn read_dir_names(dir: &Path) -> Result<Vec<String>> {
    let rd = match std::fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(Error::io(dir, e)),
    };
    let mut out = Vec::new();
    for entry in rd {
        let entry = entry.at(dir)?;
        if let Ok(name) = entry.file_name().into_string() {
            out.push(name);
        }
    }
    Ok(out)
}

impl PackBackend for LocalPacks {
    fn staging_path(&self, pack: PackId) -> PathBuf {
        self.dir(pack).join(format!("{:016x}.open", pack.0))
    }

    fn store_sealed(&self, pack: PackId, staged: &Path) -> Result<()> {
        durable::rename(staged, &self.sealed_path(pack))
    }

    fn read(&self, pack: PackId, offset: u64, len: usize) -> Result<Vec<u8>> {
        let out_of_range = || Error::Corrupt {
            file: self.describe(pack),
            pack: Some(pack),
            offset: Some(offset),
            chunk: None,
            reason: format!("read of {len} bytes is beyond the end of the pack"),
        };
        match &*self.opened(pack)? {
            Opened::Map(map) => map.copy(offset, len).ok_or_else(out_of_range),
            Opened::File(file) => {
                let mut buf = vec![0u8; len];
                file.read_exact_at(&mut buf, offset)
                    .map_err(|e| match e.kind() {
                        std::io::ErrorKind::UnexpectedEof => out_of_range(),
                        _ => Error::io(self.sealed_path(pack), e),
                    })?;
                Ok(buf)
            }
        }
    }

    fn read_record(
        &self,
        pack: PackId,
        offset: u64,
        head: &mut [u8],
        stored_len: usize,
    ) -> Result<Vec<u8>> {
        durable::failpoint!("pack::read", self.sealed_path(pack));
        let opened = self.opened(pack)?;
        let Opened::File(file) = &*opened else {
            return read_record_in_two(self, pack, offset, head, stored_len);
        };
        let mut stored = vec![0u8; stored_len];
        let want = head.len() + stored_len;
        // One preadv for both; a short read (rare: a signal, or the end
        // of a truncated pack) is finished piece by piece.
        let got = rustix::io::preadv(
            file,
            &mut [
                std::io::IoSliceMut::new(head),
                std::io::IoSliceMut::new(&mut stored),
            ],
            offset,
        )
        .map_err(|e| Error::io(self.sealed_path(pack), e.into()))?;
        if got < want {
            let short = |e: std::io::Error| match e.kind() {
                std::io::ErrorKind::UnexpectedEof => Error::Corrupt {
                    file: self.describe(pack),
                    pack: Some(pack),
                    offset: Some(offset),
                    chunk: None,
                    reason: format!("record of {want} bytes runs beyond the end of the pack"),
                },
                _ => Error::io(self.sealed_path(pack), e),
            };
            if got < head.len() {
                file.read_exact_at(&mut head[got..], offset + got as u64)
                    .map_err(short)?;
            }
            let done = got.saturating_sub(head.len());
            file.read_exact_at(&mut stored[done..], offset + (head.len() + done) as u64)
                .map_err(short)?;
        }
        Ok(stored)
    }

    fn done_with(&self, pack: PackId, offset: u64, len: usize) {
        let opened = self
            .maps
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&pack)
            .cloned();
        if let Some(o) = opened {
            if let Opened::Map(map) = &*o {
                map.release(offset, len);
            }
        }
    }

    fn pack_len(&self, pack: PackId) -> Result<u64> {
        durable::failpoint!("pack::len", self.sealed_path(pack));
        match &*self.opened(pack)? {
            Opened::Map(map) => Ok(map.bytes().len() as u64),
            Opened::File(f) => Ok(f.metadata().at(self.sealed_path(pack))?.len()),
        }
    }

    fn list(&self) -> Result<Vec<PackId>> {
        self.walk(".pack")
    }

    fn list_staged(&self) -> Result<Vec<PackId>> {
        self.walk(".open")
    }

    fn delete(&self, pack: PackId) -> Result<()> {
        // Under the cache's lock (which `opened` holds while it opens): no
        // reader can open the file between dropping its entry and the
        // unlink and cache a handle that would make the deleted pack look
        // present to `pack_len` (the dedup window's liveness check).
        let mut maps = self.maps.lock().unwrap_or_else(|p| p.into_inner());
        maps.remove(&pack);
        durable::remove_file(&self.sealed_path(pack))
    }

    fn describe(&self, pack: PackId) -> String {
        format!(
            "packs/{:02x}/{:02x}/{:016x}.pack",
            pack.0 & 0xff,
            (pack.0 >> 8) & 0xff,
            pack.0
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_packs_pass_the_conformance_suite_with_pread() {
        let dir = tempfile::tempdir().unwrap();
        conformance::run(&LocalPacks::new(dir.path().join("packs"), ReadMode::Pread));
    }

    #[test]
    fn local_packs_pass_the_conformance_suite_with_mmap() {
        let dir = tempfile::tempdir().unwrap();
        conformance::run(&LocalPacks::new(dir.path().join("packs"), ReadMode::Mmap));
    }

    #[test]
    fn mem_meta_passes_the_conformance_suite() {
        conformance::meta::run(&MemMeta::new());
    }

    #[test]
    fn mem_packs_pass_the_conformance_suite() {
        let dir = tempfile::tempdir().unwrap();
        conformance::run(&MemPacks::new(dir.path().join("staging")));
    }

    /// MemPacks with one broken promise, to show the suite catches it.
    struct Broken {
        inner: MemPacks,
        gone_is_io: bool,
        short_reads: bool,
    }

    impl PackBackend for Broken {
        fn staging_path(&self, pack: PackId) -> PathBuf {
            self.inner.staging_path(pack)
        }
        fn store_sealed(&self, pack: PackId, staged: &Path) -> Result<()> {
            self.inner.store_sealed(pack, staged)
        }
        fn read(&self, pack: PackId, offset: u64, len: usize) -> Result<Vec<u8>> {
            if self.short_reads {
                let have = self.inner.pack_len(pack)?;
                let len = len.min(have.saturating_sub(offset) as usize);
                return self.inner.read(pack, offset.min(have), len);
            }
            self.inner.read(pack, offset, len)
        }
        fn pack_len(&self, pack: PackId) -> Result<u64> {
            match self.inner.pack_len(pack) {
                Err(Error::NotFound { .. }) if self.gone_is_io => Err(Error::io(
                    self.staging_path(pack),
                    std::io::Error::other("gone"),
                )),
                r => r,
            }
        }
        fn list(&self) -> Result<Vec<PackId>> {
            self.inner.list()
        }
        fn list_staged(&self) -> Result<Vec<PackId>> {
            self.inner.list_staged()
        }
        fn delete(&self, pack: PackId) -> Result<()> {
            self.inner.delete(pack)
        }
        fn describe(&self, pack: PackId) -> String {
            self.inner.describe(pack)
        }
    }

    fn broken(dir: &Path, gone_is_io: bool, short_reads: bool) -> Broken {
        Broken {
            inner: MemPacks::new(dir.join("staging")),
            gone_is_io,
            short_reads,
        }
    }

    // GC would keep a pack it deleted as "may still exist" forever.
    #[test]
    #[should_panic(expected = "want NotFound")]
    fn the_suite_rejects_a_backend_that_reports_a_deleted_pack_as_io() {
        let dir = tempfile::tempdir().unwrap();
        conformance::deleted_pack_is_not_found(&broken(dir.path(), true, false));
    }

    // A short pack would hand back fewer bytes than the record needs.
    #[test]
    #[should_panic(expected = "want an error other than NotFound")]
    fn the_suite_rejects_a_backend_whose_reads_past_the_end_are_short() {
        let dir = tempfile::tempdir().unwrap();
        conformance::read_past_the_end_is_an_error(&broken(dir.path(), false, true));
    }
}
