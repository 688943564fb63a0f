//! The plaintext of a manifest or block hashes file, stored clear or
//! sealed (`crate::sealed_file`): one type for readers and writers, so the
//! formats above see the same bytes either way.
//!
//! The clear variants are the plain `File` (buffered where scanned), the
//! code path and bytes of a clear repository unchanged. A sealed file's
//! head is bound to its [`Owner`]: a file renamed to another snapshot or
//! copied from another repository does not open.

use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;

use crate::error::IoContext;
use crate::format::sealed::identity;
use crate::sealed_file::{FileSeal, SealedRead, SealedReader, SealedWriter};
use crate::{Result, SnapshotId};

/// The snapshot a sealed manifest or block hashes file belongs to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Owner {
    pub repo_id: [u8; 16],
    pub name: String,
    pub snapshot: SnapshotId,
}

impl Owner {
    pub fn new(repo_id: [u8; 16], name: &str, snapshot: SnapshotId) -> Owner {
        Owner {
            repo_id,
            name: name.to_string(),
            snapshot,
        }
    }

    /// The owner of a block hashes file not yet committed with a snapshot
    /// (no snapshot has id 0 or an empty name).
    pub fn unpublished(repo_id: [u8; 16]) -> Owner {
        Owner::new(repo_id, "", SnapshotId(0))
    }

    pub(crate) fn identity(&self) -> Vec<u8> {
        identity(&self.repo_id, self.snapshot.0, &self.name)
    }
}

/// A manifest or block hashes file open for reading.
#[derive(Debug)]
pub(crate) enum PlainFile {
    Clear(File),
    Sealed(Arc<SealedReader>),
}

impl PlainFile {
    /// `file` at `path` (`name` in errors), opened through `seal` when the
    /// repository seals this kind of file.
    pub(crate) fn new(
        file: File,
        path: &Path,
        name: &str,
        seal: Option<&FileSeal>,
        owner: &Owner,
    ) -> Result<PlainFile> {
        Ok(match seal {
            None => PlainFile::Clear(file),
            Some(seal) => PlainFile::Sealed(Arc::new(SealedReader::open(
                file,
                path,
                name,
                seal,
                &owner.identity(),
            )?)),
        })
    }

    /// Plaintext bytes.
    pub(crate) fn len(&self, path: &Path) -> Result<u64> {
        match self {
            PlainFile::Clear(f) => Ok(f.metadata().at(path)?.len()),
            PlainFile::Sealed(s) => Ok(s.plain_len()),
        }
    }

    pub(crate) fn read_exact_at(&self, buf: &mut [u8], offset: u64, path: &Path) -> Result<()> {
        match self {
            PlainFile::Clear(f) => f.read_exact_at(buf, offset).at(path),
            PlainFile::Sealed(s) => s.read_exact_at(offset, buf),
        }
    }

    /// A sequential reader from `offset`, buffered by `capacity` bytes when
    /// clear (a sealed reader buffers a segment).
    pub(crate) fn reader_at(&self, offset: u64, capacity: usize, path: &Path) -> Result<PlainRead> {
        Ok(match self {
            PlainFile::Clear(f) => {
                let mut f = f.try_clone().at(path)?;
                f.seek(SeekFrom::Start(offset)).at(path)?;
                PlainRead::Clear(BufReader::with_capacity(capacity, f))
            }
            PlainFile::Sealed(s) => PlainRead::Sealed(s.reader_at(offset)),
        })
    }
}

/// Sequential plaintext; a damaged sealed segment reads as an error of
/// kind `InvalidData` ([`read_error`] turns it back into `Corrupt`).
#[derive(Debug)]
pub(crate) enum PlainRead {
    Clear(BufReader<File>),
    Sealed(SealedRead),
}

impl Read for PlainRead {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            PlainRead::Clear(r) => r.read(buf),
            PlainRead::Sealed(r) => r.read(buf),
        }
    }

    fn read_exact(&mut self, buf: &mut [u8]) -> std::io::Result<()> {
        match self {
            PlainRead::Clear(r) => r.read_exact(buf),
            PlainRead::Sealed(r) => r.read_exact(buf),
        }
    }
}

/// The store's error for a failed [`PlainRead`]: damage stays `Corrupt`
/// (naming the file and the segment), the rest is I/O.
pub(crate) use crate::sealed_file::read_error;

/// A manifest or block hashes file being written: positions below the
/// head length may be rewritten until [`PlainWrite::finish`]; the rest is
/// written in order.
pub(crate) enum PlainWrite {
    Clear(BufWriter<File>),
    Sealed(SealedWriter),
}

impl PlainWrite {
    /// Creates `path` (which must not exist), sealed when `seal` is given,
    /// with a head of `head_len` bytes.
    pub(crate) fn create(
        path: &Path,
        seal: Option<&FileSeal>,
        head_len: usize,
        capacity: usize,
    ) -> Result<PlainWrite> {
        let file = File::options()
            .write(true)
            .create_new(true)
            .open(path)
            .at(path)?;
        Ok(match seal {
            None => PlainWrite::Clear(BufWriter::with_capacity(capacity, file)),
            Some(seal) => PlainWrite::Sealed(SealedWriter::create(file, path, seal, head_len)?),
        })
    }

    /// Writes `head` at offset 0, then [`Self::close`]s.
    pub(crate) fn finish(self, head: &[u8], owner: &Owner, path: &Path) -> Result<()> {
        match self {
            PlainWrite::Clear(mut out) => {
                out.flush().at(path)?;
                let file = out.get_ref();
                file.write_all_at(head, 0).at(path)?;
                crate::durable::sync_data(file, path)
            }
            PlainWrite::Sealed(mut w) => {
                w.seek(SeekFrom::Start(0)).at(path)?;
                w.write_all(head).at(path)?;
                w.finish(&owner.identity()).map(drop)
            }
        }
    }

    /// Flushes, seals (the head bound to `owner`) and syncs the file.
    pub(crate) fn close(self, owner: &Owner, path: &Path) -> Result<()> {
        match self {
            PlainWrite::Clear(mut out) => {
                out.flush().at(path)?;
                crate::durable::sync_data(out.get_ref(), path)
            }
            PlainWrite::Sealed(w) => w.finish(&owner.identity()).map(drop),
        }
    }
}

impl Write for PlainWrite {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self {
            PlainWrite::Clear(w) => w.write(buf),
            PlainWrite::Sealed(w) => w.write(buf),
        }
    }

    fn write_all(&mut self, buf: &[u8]) -> std::io::Result<()> {
        match self {
            PlainWrite::Clear(w) => w.write_all(buf),
            PlainWrite::Sealed(w) => w.write_all(buf),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            PlainWrite::Clear(w) => w.flush(),
            PlainWrite::Sealed(w) => w.flush(),
        }
    }
}

impl Seek for PlainWrite {
    fn seek(&mut self, to: SeekFrom) -> std::io::Result<u64> {
        match self {
            PlainWrite::Clear(w) => w.seek(to),
            PlainWrite::Sealed(w) => w.seek(to),
        }
    }
}
