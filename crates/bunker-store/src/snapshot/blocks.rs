//! Block hashes files: `snapshots/<name>/<id>.blocks`, beside the manifest
//! (format: `format::blocks`, docs/FORMAT.md "Block hashes").
//!
//! Written before the manifest is published, so a listed snapshot that has
//! block hashes has them complete; a snapshot without them (written before
//! they existed, or committed by a client that sent none) still restores
//! and verifies as ever. Every file is checked when it is opened: header
//! and footer checksums, length, and that its chaining values merge into
//! the root it claims ([`BlocksFile::root`]), which a commit compares with
//! the snapshot's whole-image BLAKE3.

use std::fs::File;
use std::io::{BufReader, BufWriter, Read};
use std::path::{Path, PathBuf};

use bunker_chunk::digest::TreeStack;

use crate::durable;
use crate::error::IoContext;
use bunker_chunk::blocks_file::BlocksEncoder;

use crate::format::blocks::{
    decode_footer, decode_header, BlocksHeader, CV_LEN, FOOTER_LEN, HEADER_LEN,
};
use crate::{Error, Result, SnapshotId};

pub(crate) fn blocks_path(root: &Path, name: &str, id: SnapshotId) -> PathBuf {
    root.join(name).join(format!("{}.blocks", id.0))
}

/// Writes a block hashes file in a temporary place, one chaining value at
/// a time: nothing grows in memory with the image.
pub struct BlocksWriter {
    tmp: PathBuf,
    encoder: Option<BlocksEncoder<BufWriter<File>>>,
}

impl BlocksWriter {
    /// Creates `tmp` (which must not exist).
    pub fn create(tmp: PathBuf) -> Result<BlocksWriter> {
        let file = File::options()
            .write(true)
            .create_new(true)
            .open(&tmp)
            .at(&tmp)?;
        let encoder = BlocksEncoder::new(BufWriter::with_capacity(256 << 10, file)).at(&tmp)?;
        Ok(BlocksWriter {
            tmp,
            encoder: Some(encoder),
        })
    }

    /// Appends the next whole block's chaining value.
    pub fn push(&mut self, cv: &[u8; 32]) -> Result<()> {
        let encoder = self.encoder.as_mut().expect("pushed after finish");
        encoder.push(cv).at(&self.tmp)
    }

    /// Completes the file for an image of `image_len` bytes in blocks of
    /// `block_len`, with the tail's chaining value, and checks it.
    pub fn finish(
        mut self,
        block_len: u64,
        image_len: u64,
        tail: Option<[u8; 32]>,
    ) -> Result<BlocksFile> {
        let encoder = self.encoder.take().expect("finished once");
        let (out, _) = match encoder.finish(block_len, image_len, tail) {
            Ok(done) => done,
            Err(e) if e.kind() == std::io::ErrorKind::InvalidInput => {
                return Err(Error::Invalid(format!("block hashes: {e}")))
            }
            Err(e) => return Err(Error::io(&self.tmp, e)),
        };
        durable::sync_data(out.get_ref(), &self.tmp)?;
        drop(out);
        let tmp = std::mem::take(&mut self.tmp);
        BlocksFile::open_owned(tmp)
    }
}

impl Drop for BlocksWriter {
    fn drop(&mut self) {
        if !self.tmp.as_os_str().is_empty() {
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}

/// A complete, checked block hashes file.
#[derive(Debug)]
pub struct BlocksFile {
    path: PathBuf,
    /// Removed on drop (a temporary file not yet published).
    owned: bool,
    header: BlocksHeader,
    root: Option<[u8; 32]>,
}

impl BlocksFile {
    /// Opens and checks the file at `path` (read through once).
    pub fn open(path: &Path) -> Result<BlocksFile> {
        let (header, root) = check(path)?;
        Ok(BlocksFile {
            path: path.to_path_buf(),
            owned: false,
            header,
            root,
        })
    }

    /// Like [`BlocksFile::open`] for a temporary file this value then owns:
    /// removed on drop unless published, and also when the check fails.
    pub fn open_owned(path: PathBuf) -> Result<BlocksFile> {
        match check(&path) {
            Ok((header, root)) => Ok(BlocksFile {
                path,
                owned: true,
                header,
                root,
            }),
            Err(e) => {
                let _ = std::fs::remove_file(&path);
                Err(e)
            }
        }
    }

    pub fn header(&self) -> &BlocksHeader {
        &self.header
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The image's BLAKE3 as the chaining values give it; `None` for an
    /// image of at most one block, which lists none.
    pub fn root(&self) -> Option<[u8; 32]> {
        self.root
    }

    /// Renames the file to `dest` (durable on return).
    pub(crate) fn publish(mut self, dest: &Path) -> Result<()> {
        if let Some(dir) = dest.parent() {
            durable::create_dir_all(dir)?;
        }
        durable::rename(&self.path, dest)?;
        self.owned = false;
        Ok(())
    }

    /// The chaining values in order (`count` of them).
    pub fn chaining_values(&self) -> Result<ChainingValues> {
        let file = File::open(&self.path).at(&self.path)?;
        let mut reader = BufReader::with_capacity(256 << 10, file);
        let mut skip = [0u8; HEADER_LEN];
        reader.read_exact(&mut skip).at(&self.path)?;
        Ok(ChainingValues {
            reader,
            left: self.header.count,
            path: self.path.clone(),
        })
    }
}

impl Drop for BlocksFile {
    fn drop(&mut self) {
        if self.owned {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// The chaining values of a [`BlocksFile`], read as they are needed.
pub struct ChainingValues {
    reader: BufReader<File>,
    left: u64,
    path: PathBuf,
}

impl Iterator for ChainingValues {
    type Item = Result<[u8; 32]>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.left == 0 {
            return None;
        }
        self.left -= 1;
        let mut cv = [0u8; 32];
        Some(self.reader.read_exact(&mut cv).at(&self.path).map(|_| cv))
    }
}

/// Reads the file once: header, length, chaining values, footer; returns
/// the header and the root the values give.
fn check(path: &Path) -> Result<(BlocksHeader, Option<[u8; 32]>)> {
    let shown = path.display().to_string();
    let file = File::open(path).at(path)?;
    let len = file.metadata().at(path)?.len();
    let mut reader = BufReader::with_capacity(256 << 10, file);
    let mut head = [0u8; HEADER_LEN];
    reader
        .read_exact(&mut head)
        .map_err(|_| Error::corrupt(&shown, "block hashes file shorter than its header"))?;
    let header = decode_header(&shown, &head)?;
    if len != header.file_len() {
        return Err(Error::corrupt(
            &shown,
            format!(
                "block hashes file is {len} bytes, its header says {}",
                header.file_len()
            ),
        ));
    }
    let mut sum = xxhash_rust::xxh3::Xxh3::new();
    let mut tree = TreeStack::new();
    let mut cv = [0u8; CV_LEN];
    for _ in 0..header.count {
        reader.read_exact(&mut cv).at(path)?;
        sum.update(&cv);
        tree.push(cv);
    }
    let mut foot = [0u8; FOOTER_LEN];
    reader.read_exact(&mut foot).at(path)?;
    if decode_footer(&shown, &foot)? != sum.digest() {
        return Err(Error::corrupt(&shown, "block hashes checksum mismatch"));
    }
    let root = (header.count > 0).then(|| tree.finish(header.tail).map(|h| *h.as_bytes()));
    Ok((header, root.flatten()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use bunker_chunk::digest::BlockHasher;

    fn write(dir: &Path, data: &[u8], block: u64) -> Result<BlocksFile> {
        let mut hasher = BlockHasher::new(block);
        let mut w = BlocksWriter::create(dir.join("b.tmp"))?;
        let mut cvs = Vec::new();
        hasher.update(data, |_, cv| cvs.push(cv));
        for cv in &cvs {
            w.push(cv)?;
        }
        let start = bunker_chunk::digest::tail_start(data.len() as u64, block);
        let tail = (start < data.len() as u64 && start > 0)
            .then(|| bunker_chunk::digest::tail_cv(start, &data[start as usize..]));
        w.finish(block, data.len() as u64, tail)
    }

    #[test]
    fn a_written_file_gives_the_images_blake3_and_its_values_back() {
        let dir = tempfile::tempdir().unwrap();
        let data: Vec<u8> = (0..(5 * 4096 + 100)).map(|i| (i * 7 % 251) as u8).collect();
        for len in [0, 100, 4096, 4097, 8192, data.len()] {
            let f = write(dir.path(), &data[..len], 4096).unwrap();
            let want = *blake3::hash(&data[..len]).as_bytes();
            match f.root() {
                Some(root) => assert_eq!(root, want, "len {len}"),
                None => assert!(len <= 4096, "len {len} has no root"),
            }
            assert_eq!(
                f.chaining_values().unwrap().count() as u64,
                f.header().count
            );
            drop(f);
            assert!(
                !dir.path().join("b.tmp").exists(),
                "an unpublished file is removed"
            );
        }
    }

    #[test]
    fn damage_is_named_and_a_wrong_count_refused() {
        let dir = tempfile::tempdir().unwrap();
        let data = vec![3u8; 3 * 4096];
        let f = write(dir.path(), &data, 4096).unwrap();
        let kept = dir.path().join("kept");
        f.publish(&kept).unwrap();
        let mut bytes = std::fs::read(&kept).unwrap();
        bytes[HEADER_LEN + 5] ^= 1;
        std::fs::write(&kept, &bytes).unwrap();
        assert!(BlocksFile::open(&kept)
            .unwrap_err()
            .to_string()
            .contains("checksum"));
        bytes.pop();
        std::fs::write(&kept, &bytes).unwrap();
        assert!(BlocksFile::open(&kept)
            .unwrap_err()
            .to_string()
            .contains("header says"));
        let mut w = BlocksWriter::create(dir.path().join("c.tmp")).unwrap();
        w.push(&[1; 32]).unwrap();
        let err = w.finish(4096, 3 * 4096, None).unwrap_err();
        assert!(err.to_string().contains("3 whole blocks"), "{err}");
        assert!(!dir.path().join("c.tmp").exists());
    }
}
