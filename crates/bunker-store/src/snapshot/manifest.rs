//! Writing and reading manifests without holding them in memory.
//!
//! A manifest is written to `tmp/` entry by entry through a buffer, its
//! header is filled in at the end, and it is synced and renamed into
//! `snapshots/<name>/<id>.snap`: it is either absent or complete. Readers
//! use positioned reads: a binary search for byte offsets, a buffered
//! sequential scan for restores, so a 10 TB image's 400 MB manifest costs a
//! fixed buffer either way. In a repository that seals manifests the same
//! plaintext is read and written through `super::plain` (the header is the
//! sealed file's head, bound to the snapshot).

use std::collections::HashMap;
use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use bunker_chunk::ChunkId;

use super::plain::{read_error, Owner, PlainFile, PlainRead, PlainWrite};
use crate::error::IoContext;
use crate::format::manifest::{
    decode_entry, decode_footer, encode_entry, encode_footer, ManifestHeader, ENTRY_LEN,
    FOOTER_LEN, HEADER_LEN, MAX_IMAGE_LEN,
};
use crate::sealed_file::FileSeal;
use crate::{durable, Error, Result};

pub(crate) struct ManifestWriter {
    tmp: PathBuf,
    /// `None` once completed.
    out: Option<PlainWrite>,
    hasher: xxhash_rust::xxh3::Xxh3,
    count: u64,
    end: u64,
}

impl ManifestWriter {
    /// Creates the manifest at `tmp`, sealed when `seal` is given.
    pub(crate) fn create(tmp: PathBuf, seal: Option<&FileSeal>) -> Result<ManifestWriter> {
        let mut out = PlainWrite::create(&tmp, seal, HEADER_LEN, 1 << 20)?;
        out.write_all(&[0u8; HEADER_LEN]).at(&tmp)?;
        Ok(ManifestWriter {
            tmp,
            out: Some(out),
            hasher: xxhash_rust::xxh3::Xxh3::new(),
            count: 0,
            end: 0,
        })
    }

    /// Appends the next chunk, `len` bytes long (at least 1; the image may
    /// not grow past [`MAX_IMAGE_LEN`]). A refused chunk leaves the writer
    /// as it was.
    pub(crate) fn push(&mut self, len: u64, id: &ChunkId) -> Result<()> {
        if len == 0 {
            return Err(Error::Invalid(format!(
                "chunk {id} has length 0 (entry {})",
                self.count
            )));
        }
        self.end = self
            .end
            .checked_add(len)
            .filter(|&end| end <= MAX_IMAGE_LEN)
            .ok_or_else(|| {
                Error::Invalid(format!(
                    "entry {} would make the image larger than {MAX_IMAGE_LEN} bytes, the largest snapshot bunker stores",
                    self.count
                ))
            })?;
        let e = encode_entry(self.end, id);
        self.hasher.update(&e);
        self.count += 1;
        self.out
            .as_mut()
            .expect("pushed after complete")
            .write_all(&e)
            .at(&self.tmp)
    }

    pub(crate) fn len(&self) -> u64 {
        self.end
    }

    pub(crate) fn count(&self) -> u64 {
        self.count
    }

    /// Completes the manifest in its temp file: footer, header, synced.
    /// Returns the temp file's path (for an upload before [`Self::publish`]).
    pub(crate) fn complete(&mut self, mut header: ManifestHeader) -> Result<&Path> {
        header.entries = self.count;
        header.size = self.end;
        let mut out = self.out.take().expect("completed once");
        out.write_all(&encode_footer(self.hasher.digest(), self.count))
            .at(&self.tmp)?;
        let owner = Owner::new(header.repo_id, &header.name, header.id);
        out.finish(&header.encode(), &owner, &self.tmp)?;
        Ok(&self.tmp)
    }

    /// Publishes the completed manifest at `dest` (durable on return).
    pub(crate) fn publish(mut self, dest: &Path) -> Result<()> {
        if let Some(dir) = dest.parent() {
            durable::create_dir_all(dir)?;
        }
        durable::rename(&self.tmp, dest)?;
        // Published: nothing for Drop to clean up.
        self.tmp = PathBuf::new();
        Ok(())
    }
}

impl Drop for ManifestWriter {
    /// An unfinished manifest is removed: an aborted backup leaves nothing
    /// behind but chunks for GC.
    fn drop(&mut self) {
        if !self.tmp.as_os_str().is_empty() {
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}

/// One chunk of a snapshot: bytes `start..end` of the image.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ManifestEntry {
    pub start: u64,
    pub end: u64,
    pub id: ChunkId,
}

pub(crate) struct ManifestReader {
    file: PlainFile,
    path: PathBuf,
    name: String,
    pub(crate) header: ManifestHeader,
    /// Sealed manifests only: the entry ends that the first
    /// [`PROBE_LEVELS`] steps of a binary search read, kept as they are
    /// read, so a [`Self::find`] opens a segment or two, not one per step.
    probes: Option<Mutex<HashMap<u64, u64>>>,
}

/// Binary-search steps whose probes a sealed manifest keeps: at most
/// 2^10 - 1 ends (16 KiB), after which the range left is under 1/1024 of
/// the manifest (one or two 64 KiB segments of a 10 TB image's).
const PROBE_LEVELS: u32 = 10;

impl ManifestReader {
    /// Opens a manifest, checking header, length and footer (not the
    /// entries' checksum: see [`Self::verify_entries`]). With `seal`, the
    /// file is sealed and must belong to `owner`.
    pub(crate) fn open(
        path: &Path,
        display: &str,
        seal: Option<&FileSeal>,
        owner: &Owner,
    ) -> Result<ManifestReader> {
        let file = File::open(path).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => Error::NotFound {
                what: format!("snapshot {display}"),
            },
            _ => Error::io(path, e),
        })?;
        let file = PlainFile::new(file, path, display, seal, owner)?;
        let len = file.len(path)?;
        let mut head = vec![0u8; HEADER_LEN.min(len as usize)];
        file.read_exact_at(&mut head, 0, path)?;
        let header = ManifestHeader::decode(display, &head)?;
        if header.file_len() != Some(len) {
            return Err(Error::corrupt(
                display,
                format!(
                    "manifest is {len} bytes, header announces {} entries",
                    header.entries
                ),
            ));
        }
        let mut foot = [0u8; FOOTER_LEN];
        file.read_exact_at(&mut foot, len - FOOTER_LEN as u64, path)?;
        let (_, count) = decode_footer(&foot).map_err(|r| Error::corrupt(display, r))?;
        if count != header.entries {
            return Err(Error::corrupt(
                display,
                "manifest footer and header disagree on the entry count",
            ));
        }
        let probes = matches!(file, PlainFile::Sealed(_)).then(Mutex::default);
        Ok(ManifestReader {
            file,
            path: path.to_path_buf(),
            name: display.to_string(),
            header,
            probes,
        })
    }

    fn corrupt(&self, reason: impl Into<String>) -> Error {
        Error::corrupt(self.name.clone(), reason)
    }

    /// Entry `i`, with its start taken from entry `i - 1`.
    pub(crate) fn entry(&self, i: u64) -> Result<ManifestEntry> {
        let start = if i == 0 { 0 } else { self.end_at(i - 1)?.0 };
        let (end, id) = self.end_at(i)?;
        if end <= start || end > self.header.size {
            return Err(self.corrupt(format!("entry {i} has end {end} after start {start}")));
        }
        Ok(ManifestEntry { start, end, id })
    }

    fn end_at(&self, i: u64) -> Result<(u64, ChunkId)> {
        let mut b = [0u8; ENTRY_LEN];
        self.file.read_exact_at(
            &mut b,
            self.header.header_len() as u64 + i * ENTRY_LEN as u64,
            &self.path,
        )?;
        Ok(decode_entry(&b))
    }

    /// Index of the entry holding byte `offset` (`offset < size`).
    pub(crate) fn find(&self, offset: u64) -> Result<u64> {
        let (mut lo, mut hi) = (0u64, self.header.entries);
        let mut level = 0;
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            let end = match &self.probes {
                Some(probes) if level < PROBE_LEVELS => {
                    let known = probes
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .get(&mid)
                        .copied();
                    match known {
                        Some(end) => end,
                        None => {
                            let end = self.end_at(mid)?.0;
                            probes
                                .lock()
                                .unwrap_or_else(|p| p.into_inner())
                                .insert(mid, end);
                            end
                        }
                    }
                }
                _ => self.end_at(mid)?.0,
            };
            level += 1;
            if end <= offset {
                lo = mid + 1;
            } else {
                hi = mid;
            }
        }
        if lo >= self.header.entries {
            return Err(Error::Invalid(format!(
                "offset {offset} is beyond the snapshot's {} bytes",
                self.header.size
            )));
        }
        Ok(lo)
    }

    /// Entries from `first` on, read sequentially through a buffer.
    pub(crate) fn entries_from(&self, first: u64) -> Result<Entries> {
        let start = if first == 0 {
            0
        } else {
            self.end_at(first - 1)?.0
        };
        let reader = self.file.reader_at(
            self.header.header_len() as u64 + first * ENTRY_LEN as u64,
            256 << 10,
            &self.path,
        )?;
        Ok(Entries {
            reader,
            path: self.path.clone(),
            name: self.name.clone(),
            next: first,
            count: self.header.entries,
            start,
            size: self.header.size,
            checksum: None,
        })
    }

    /// The entries' checksum the footer records.
    fn footer_checksum(&self) -> Result<u64> {
        let mut foot = [0u8; FOOTER_LEN];
        self.file.read_exact_at(
            &mut foot,
            self.header.header_len() as u64 + self.header.entries * ENTRY_LEN as u64,
            &self.path,
        )?;
        let (sum, _) = decode_footer(&foot).map_err(|r| self.corrupt(r))?;
        Ok(sum)
    }

    /// All entries, read sequentially and checked against the footer's
    /// checksum on the way: after the last entry, a mismatch is yielded as
    /// one more item, a `Corrupt` error. For callers that act on every
    /// entry (GC's mark) and must not act on a flipped one.
    pub(crate) fn entries_checked(&self) -> Result<Entries> {
        let sum = self.footer_checksum()?;
        let mut entries = self.entries_from(0)?;
        entries.checksum = Some((xxhash_rust::xxh3::Xxh3::new(), sum));
        Ok(entries)
    }

    /// Up to `max` entries from entry `first`, whose start is `start`, in
    /// one positioned read: for readers that keep no buffer between
    /// batches. Empty after the last entry.
    pub(crate) fn entries_at(
        &self,
        first: u64,
        start: u64,
        max: usize,
    ) -> Result<Vec<ManifestEntry>> {
        let n = self.header.entries.saturating_sub(first).min(max as u64) as usize;
        let mut buf = vec![0u8; n * ENTRY_LEN];
        self.file.read_exact_at(
            &mut buf,
            self.header.header_len() as u64 + first * ENTRY_LEN as u64,
            &self.path,
        )?;
        let mut out = Vec::with_capacity(n);
        let mut start = start;
        for (k, b) in buf.chunks_exact(ENTRY_LEN).enumerate() {
            let (end, id) = decode_entry(b);
            if end <= start || end > self.header.size {
                return Err(self.corrupt(format!(
                    "entry {} ends at {end}, out of order",
                    first + k as u64
                )));
            }
            out.push(ManifestEntry { start, end, id });
            start = end;
        }
        Ok(out)
    }

    /// Reads all entries and checks them against the footer's checksum,
    /// their order and the snapshot size.
    pub(crate) fn verify_entries(&self) -> Result<()> {
        let mut hasher = xxhash_rust::xxh3::Xxh3::new();
        let mut reader = self
            .file
            .reader_at(self.header.header_len() as u64, 256 << 10, &self.path)?
            .take(self.header.entries * ENTRY_LEN as u64);
        let mut b = [0u8; ENTRY_LEN];
        let mut last = 0;
        for _ in 0..self.header.entries {
            reader
                .read_exact(&mut b)
                .map_err(|e| read_error(&self.path, &self.name, e))?;
            hasher.update(&b);
            let (end, _) = decode_entry(&b);
            if end <= last {
                return Err(self.corrupt("manifest entries out of order"));
            }
            last = end;
        }
        let sum = self.footer_checksum()?;
        if sum != hasher.digest() || last != self.header.size {
            return Err(self.corrupt("manifest entries do not match their checksum"));
        }
        Ok(())
    }
}

/// Sequential iterator over manifest entries.
pub(crate) struct Entries {
    reader: PlainRead,
    path: PathBuf,
    name: String,
    next: u64,
    count: u64,
    start: u64,
    size: u64,
    /// With [`ManifestReader::entries_checked`]: the running checksum and
    /// the footer's, taken (and compared) after the last entry.
    checksum: Option<(xxhash_rust::xxh3::Xxh3, u64)>,
}

impl Iterator for Entries {
    type Item = Result<ManifestEntry>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.next >= self.count {
            let (hasher, footer) = self.checksum.take()?;
            if hasher.digest() == footer && self.start == self.size {
                return None;
            }
            return Some(Err(Error::corrupt(
                self.name.clone(),
                "manifest entries do not match their checksum",
            )));
        }
        let mut b = [0u8; ENTRY_LEN];
        if let Err(e) = self.reader.read_exact(&mut b) {
            self.next = self.count;
            self.checksum = None;
            return Some(Err(read_error(&self.path, &self.name, e)));
        }
        if let Some((hasher, _)) = &mut self.checksum {
            hasher.update(&b);
        }
        let (end, id) = decode_entry(&b);
        if end <= self.start || end > self.size {
            self.next = self.count;
            self.checksum = None;
            return Some(Err(Error::corrupt(
                self.name.clone(),
                format!("entry {} ends at {end}, out of order", self.next),
            )));
        }
        let e = ManifestEntry {
            start: self.start,
            end,
            id,
        };
        self.start = end;
        self.next += 1;
        Some(Ok(e))
    }
}

#[cfg(test)]
mod tests_support {
    use super::*;
    use crate::format::sealed::FileKind;
    use crate::SnapshotId;
    use bunker_chunk::ChunkerParams;
    use bunker_crypt::Key;

    pub(super) const REPO: [u8; 16] = [5; 16];

    /// A repeatable stream of numbers (xorshift), so a failure reproduces.
    pub(super) struct Numbers(pub(super) u64);

    impl Numbers {
        pub(super) fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
    }

    pub(super) fn header(name: &str, id: u64) -> ManifestHeader {
        ManifestHeader {
            repo_id: REPO,
            id: SnapshotId(id),
            created_unix_ms: 1,
            committed_unix_ms: 2,
            origin: None,
            version: crate::format::manifest::VERSION,
            size: 0,
            entries: 0,
            chunker: ChunkerParams::DEFAULT,
            stream_hash: [9; 32],
            new_chunks: 0,
            new_bytes: 0,
            new_raw_bytes: 0,
            ingest_ms: 0,
            zero_chunks: 0,
            name: name.to_string(),
            source: "test".into(),
            creator: 0,
        }
    }

    /// The chunk ids and lengths of a manifest of `count` entries.
    pub(super) fn entries(count: u64) -> Vec<(u64, ChunkId)> {
        let mut n = Numbers(0x9e37_79b9_7f4a_7c15);
        (0..count)
            .map(|i| {
                let id = *blake3::hash(&i.to_le_bytes()).as_bytes();
                (1 + n.next() % (1 << 20), ChunkId(id))
            })
            .collect()
    }

    pub(super) fn write(path: &Path, seal: Option<&FileSeal>, entries: &[(u64, ChunkId)]) {
        let mut w = ManifestWriter::create(path.with_extension("tmp"), seal).unwrap();
        for (len, id) in entries {
            w.push(*len, id).unwrap();
        }
        w.complete(header("vol-marker", 7)).unwrap();
        w.publish(path).unwrap();
    }

    pub(super) fn owner() -> Owner {
        Owner::new(REPO, "vol-marker", SnapshotId(7))
    }

    pub(super) fn seal() -> FileSeal {
        FileSeal::new(&Key::from_bytes([1; 32]), FileKind::Manifest)
    }
}

#[cfg(test)]
mod tests {
    use super::tests_support::*;
    use super::*;
    use crate::format::sealed::FileKind;
    use crate::SnapshotId;
    use bunker_crypt::Key;

    const ENTRIES: u64 = 100_000;

    #[test]
    fn a_sealed_manifest_reads_as_the_clear_one() {
        let dir = tempfile::tempdir().unwrap();
        let list = entries(ENTRIES);
        let (clear_at, sealed_at) = (dir.path().join("clear"), dir.path().join("sealed"));
        let seal = seal();
        write(&clear_at, None, &list);
        write(&sealed_at, Some(&seal), &list);
        let clear = ManifestReader::open(&clear_at, "c", None, &owner()).unwrap();
        let sealed = ManifestReader::open(&sealed_at, "s", Some(&seal), &owner()).unwrap();
        assert_eq!(clear.header, sealed.header);
        let size = clear.header.size;
        let mut n = Numbers(7);
        for _ in 0..2000 {
            let offset = n.next() % size;
            let i = clear.find(offset).unwrap();
            assert_eq!(sealed.find(offset).unwrap(), i, "offset {offset}");
            assert_eq!(sealed.entry(i).unwrap(), clear.entry(i).unwrap());
        }
        for _ in 0..20 {
            let first = n.next() % ENTRIES;
            let a: Vec<_> = clear.entries_from(first).unwrap().take(300).collect();
            let b: Vec<_> = sealed.entries_from(first).unwrap().take(300).collect();
            assert_eq!(format!("{a:?}"), format!("{b:?}"), "from {first}");
            let start = a[0].as_ref().unwrap().start;
            assert_eq!(
                sealed.entries_at(first, start, 300).unwrap(),
                clear.entries_at(first, start, 300).unwrap()
            );
        }
        let all: Vec<ManifestEntry> = sealed
            .entries_checked()
            .unwrap()
            .collect::<Result<_>>()
            .unwrap();
        assert_eq!(all.len() as u64, ENTRIES);
        assert!(all
            .iter()
            .zip(&list)
            .all(|(e, (len, id))| e.id == *id && e.end - e.start == *len));
        sealed.verify_entries().unwrap();
        clear.verify_entries().unwrap();
    }

    #[test]
    fn no_chunk_id_or_name_shows_in_a_sealed_manifest() {
        let dir = tempfile::tempdir().unwrap();
        let list = entries(ENTRIES);
        let path = dir.path().join("sealed");
        write(&path, Some(&seal()), &list);
        let bytes = std::fs::read(&path).unwrap();
        let prefixes: std::collections::HashSet<[u8; 8]> = list
            .iter()
            .map(|(_, id)| id.0[..8].try_into().unwrap())
            .collect();
        let shown = bytes
            .windows(8)
            .filter(|w| prefixes.contains(&<[u8; 8]>::try_from(*w).unwrap()))
            .count();
        assert_eq!(shown, 0, "chunk ids in the clear");
        assert!(!bytes.windows(10).any(|w| w == b"vol-marker"));
        // The clear manifest does hold them: the check can fail.
        let clear = dir.path().join("clear");
        write(&clear, None, &list[..10]);
        let clear = std::fs::read(&clear).unwrap();
        assert!(clear.windows(32).any(|w| w == list[3].1 .0));
    }

    #[test]
    fn damage_in_a_sealed_manifest_is_reported_never_read() {
        let dir = tempfile::tempdir().unwrap();
        let list = &entries(20_000)[..];
        let path = dir.path().join("sealed");
        let seal = seal();
        write(&path, Some(&seal), list);
        let good = std::fs::read(&path).unwrap();
        // A bit in segment 3 of 13 (800 KB of entries).
        let mut bad = good.clone();
        bad[64 + 1024 + 40 + 3 * (65_536 + 40) + 999] ^= 0x20;
        std::fs::write(&path, &bad).unwrap();
        let m = ManifestReader::open(&path, "vol@7", Some(&seal), &owner()).unwrap();
        let err = m.verify_entries().unwrap_err();
        assert!(
            err.is_corrupt() && err.to_string().contains("segment 3"),
            "{err}"
        );
        let last = m.entries_checked().unwrap().last().unwrap().unwrap_err();
        assert!(last.is_corrupt(), "{last}");
        let inside = m.entries_from(0).unwrap().find(|e| e.is_err()).unwrap();
        assert!(inside.unwrap_err().is_corrupt());
        // Another snapshot's name or id, or another key: refused at open.
        std::fs::write(&path, &good).unwrap();
        let other = Owner::new(REPO, "vol-marker", SnapshotId(8));
        let err = ManifestReader::open(&path, "vol@8", Some(&seal), &other)
            .err()
            .unwrap();
        assert!(err.is_corrupt(), "{err}");
        let key = FileSeal::new(&Key::from_bytes([2; 32]), FileKind::Manifest);
        let err = ManifestReader::open(&path, "vol@7", Some(&key), &owner())
            .err()
            .unwrap();
        assert!(matches!(err, Error::SealedWithOtherKey { .. }), "{err}");
    }
}

/// Figures for docs/BENCHMARKS.md, "Encryption", run by hand:
/// `cargo test --release -p bunker-store --lib -- --ignored --nocapture sealed_manifest_figures`
#[cfg(test)]
mod figures {
    use super::tests_support::*;
    use super::*;
    use std::time::Instant;

    #[test]
    #[ignore = "prints figures; run by hand"]
    fn sealed_manifest_figures() {
        let dir = tempfile::Builder::new()
            .prefix("bunker-manifest-figures")
            .tempdir_in(std::env::var_os("FIGURES_DIR").unwrap_or_else(|| "/dev/shm".into()))
            .unwrap();
        let list = entries(1_000_000);
        let seal = seal();
        for (label, seal) in [("clear", None), ("sealed", Some(&seal))] {
            let path = dir.path().join(label);
            let t = Instant::now();
            write(&path, seal, &list);
            let write_s = t.elapsed().as_secs_f64();
            let mb = std::fs::metadata(&path).unwrap().len() as f64 / 1e6;
            let m = ManifestReader::open(&path, label, seal, &owner()).unwrap();
            let t = Instant::now();
            let n = m
                .entries_checked()
                .unwrap()
                .try_fold(0usize, |n, e| e.map(|_| n + 1))
                .unwrap();
            let scan_s = t.elapsed().as_secs_f64();
            assert_eq!(n, list.len());
            let mut x = Numbers(3);
            let finds = 20_000;
            let t = Instant::now();
            for _ in 0..finds {
                m.find(x.next() % m.header.size).unwrap();
            }
            let find_s = t.elapsed().as_secs_f64();
            println!(
                "{label}: {mb:.1} MB, write {:.0} MB/s ({write_s:.3} s), scan {:.0} MB/s \
                 ({scan_s:.3} s), {:.0} random finds/s",
                mb / write_s,
                mb / scan_s,
                finds as f64 / find_s
            );
        }
    }
}
