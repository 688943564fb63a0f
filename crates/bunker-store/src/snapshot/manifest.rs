//! Writing and reading manifests without holding them in memory.
//!
//! A manifest is written to `tmp/` entry by entry through a buffer, its
//! header is filled in at the end, and it is synced and renamed into
//! `snapshots/<name>/<id>.snap`: it is either absent or complete. Readers
//! use positioned reads: a binary search for byte offsets, a buffered
//! sequential scan for restores, so a 10 TB image's 400 MB manifest costs a
//! fixed buffer either way.

use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use bunker_chunk::ChunkId;

use crate::error::IoContext;
use crate::format::manifest::{
    decode_entry, decode_footer, encode_entry, encode_footer, ManifestHeader, ENTRY_LEN,
    FOOTER_LEN, HEADER_LEN, MAX_IMAGE_LEN,
};
use crate::{durable, Error, Result};

pub(crate) struct ManifestWriter {
    tmp: PathBuf,
    out: BufWriter<File>,
    hasher: xxhash_rust::xxh3::Xxh3,
    count: u64,
    end: u64,
}

impl ManifestWriter {
    pub(crate) fn create(tmp: PathBuf) -> Result<ManifestWriter> {
        let file = File::options()
            .write(true)
            .create_new(true)
            .open(&tmp)
            .at(&tmp)?;
        let mut out = BufWriter::with_capacity(1 << 20, file);
        out.write_all(&[0u8; HEADER_LEN]).at(&tmp)?;
        Ok(ManifestWriter {
            tmp,
            out,
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
        self.out.write_all(&e).at(&self.tmp)
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
        self.out
            .write_all(&encode_footer(self.hasher.digest(), self.count))
            .at(&self.tmp)?;
        self.out.flush().at(&self.tmp)?;
        let file = self.out.get_ref();
        file.write_all_at(&header.encode(), 0).at(&self.tmp)?;
        durable::sync_data(file, &self.tmp)?;
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
    file: File,
    path: PathBuf,
    name: String,
    pub(crate) header: ManifestHeader,
}

impl ManifestReader {
    /// Opens a manifest, checking header, length and footer (not the
    /// entries' checksum: see [`Self::verify_entries`]).
    pub(crate) fn open(path: &Path, display: &str) -> Result<ManifestReader> {
        let file = File::open(path).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => Error::NotFound {
                what: format!("snapshot {display}"),
            },
            _ => Error::io(path, e),
        })?;
        let len = file.metadata().at(path)?.len();
        let mut head = vec![0u8; HEADER_LEN.min(len as usize)];
        file.read_exact_at(&mut head, 0).at(path)?;
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
        file.read_exact_at(&mut foot, len - FOOTER_LEN as u64)
            .at(path)?;
        let (_, count) = decode_footer(&foot).map_err(|r| Error::corrupt(display, r))?;
        if count != header.entries {
            return Err(Error::corrupt(
                display,
                "manifest footer and header disagree on the entry count",
            ));
        }
        Ok(ManifestReader {
            file,
            path: path.to_path_buf(),
            name: display.to_string(),
            header,
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
        self.file
            .read_exact_at(
                &mut b,
                self.header.header_len() as u64 + i * ENTRY_LEN as u64,
            )
            .at(&self.path)?;
        Ok(decode_entry(&b))
    }

    /// Index of the entry holding byte `offset` (`offset < size`).
    pub(crate) fn find(&self, offset: u64) -> Result<u64> {
        let (mut lo, mut hi) = (0u64, self.header.entries);
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            if self.end_at(mid)?.0 <= offset {
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
        let mut file = self.file.try_clone().at(&self.path)?;
        let start = if first == 0 {
            0
        } else {
            self.end_at(first - 1)?.0
        };
        file.seek(SeekFrom::Start(
            self.header.header_len() as u64 + first * ENTRY_LEN as u64,
        ))
        .at(&self.path)?;
        Ok(Entries {
            reader: BufReader::with_capacity(256 << 10, file),
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
        self.file
            .read_exact_at(
                &mut foot,
                self.header.header_len() as u64 + self.header.entries * ENTRY_LEN as u64,
            )
            .at(&self.path)?;
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
        self.file
            .read_exact_at(
                &mut buf,
                self.header.header_len() as u64 + first * ENTRY_LEN as u64,
            )
            .at(&self.path)?;
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
        let mut file = self.file.try_clone().at(&self.path)?;
        file.seek(SeekFrom::Start(self.header.header_len() as u64))
            .at(&self.path)?;
        let mut reader =
            BufReader::with_capacity(256 << 10, file).take(self.header.entries * ENTRY_LEN as u64);
        let mut b = [0u8; ENTRY_LEN];
        let mut last = 0;
        for _ in 0..self.header.entries {
            reader.read_exact(&mut b).at(&self.path)?;
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
    reader: BufReader<File>,
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
            return Some(Err(Error::io(&self.path, e)));
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
