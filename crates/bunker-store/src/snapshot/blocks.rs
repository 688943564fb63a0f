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
//!
//! In a repository that seals them, the same plaintext goes through
//! `super::plain`; a file is sealed to [`Owner::unpublished`] while it is
//! written and rebound to its snapshot ([`BlocksFile::bind`]) at commit,
//! when the snapshot id is known.

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

use bunker_chunk::digest::TreeStack;

use super::plain::{read_error, Owner, PlainFile, PlainRead, PlainWrite};
use crate::durable;
use crate::error::IoContext;
use crate::sealed_file::FileSeal;
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
    encoder: Option<BlocksEncoder<PlainWrite>>,
    seal: Option<FileSeal>,
    repo_id: [u8; 16],
}

impl BlocksWriter {
    /// Creates `tmp` (which must not exist) for repository `repo_id`,
    /// sealed when `seal` is given.
    pub fn create(
        tmp: PathBuf,
        seal: Option<&FileSeal>,
        repo_id: [u8; 16],
    ) -> Result<BlocksWriter> {
        let out = PlainWrite::create(&tmp, seal, HEADER_LEN, 256 << 10)?;
        let encoder = BlocksEncoder::new(out).at(&tmp)?;
        Ok(BlocksWriter {
            tmp,
            encoder: Some(encoder),
            seal: seal.cloned(),
            repo_id,
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
        let owner = Owner::unpublished(self.repo_id);
        out.close(&owner, &self.tmp)?;
        let tmp = std::mem::take(&mut self.tmp);
        BlocksFile::open_owned(tmp, self.seal.as_ref(), &owner)
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
    /// Set when the file is sealed.
    seal: Option<FileSeal>,
    owner: Owner,
}

impl BlocksFile {
    /// Opens and checks the file at `path` (read through once); with
    /// `seal`, the file is sealed and must belong to `owner`.
    pub fn open(path: &Path, seal: Option<&FileSeal>, owner: &Owner) -> Result<BlocksFile> {
        let (header, root) = check(path, seal, owner)?;
        Ok(BlocksFile {
            path: path.to_path_buf(),
            owned: false,
            header,
            root,
            seal: seal.cloned(),
            owner: owner.clone(),
        })
    }

    /// Like [`BlocksFile::open`] for a temporary file this value then owns:
    /// removed on drop unless published, and also when the check fails.
    pub fn open_owned(path: PathBuf, seal: Option<&FileSeal>, owner: &Owner) -> Result<BlocksFile> {
        match check(&path, seal, owner) {
            Ok((header, root)) => Ok(BlocksFile {
                path,
                owned: true,
                header,
                root,
                seal: seal.cloned(),
                owner: owner.clone(),
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

    /// Makes the file `owner`'s: a sealed file's head is sealed again,
    /// bound to it (durable on return). Before an upload and publish.
    pub(crate) fn bind(&mut self, owner: Owner) -> Result<()> {
        if let Some(seal) = &self.seal {
            crate::sealed_file::rebind(
                &self.path,
                &self.path.display().to_string(),
                seal,
                &self.owner.identity(),
                &owner.identity(),
            )?;
        }
        self.owner = owner;
        Ok(())
    }

    /// The file's plaintext, the bytes of a clear block hashes file
    /// (docs/FORMAT.md, "Block hashes"), read sequentially.
    pub fn reader(&self) -> Result<impl Read + Send + 'static> {
        self.plain()?.reader_at(0, 256 << 10, &self.path)
    }

    fn plain(&self) -> Result<PlainFile> {
        let file = File::open(&self.path).at(&self.path)?;
        let shown = self.path.display().to_string();
        PlainFile::new(file, &self.path, &shown, self.seal.as_ref(), &self.owner)
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
        let reader = self
            .plain()?
            .reader_at(HEADER_LEN as u64, 256 << 10, &self.path)?;
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
    reader: PlainRead,
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
        Some(
            self.reader
                .read_exact(&mut cv)
                .map_err(|e| read_error(&self.path, &self.path.display().to_string(), e))
                .map(|_| cv),
        )
    }
}

/// Reads a block hashes file in the clear format from `body` into `out`,
/// checking its header, footer checksum and length on the way
/// ([`crate::Repository::receive_blocks`]).
pub(crate) fn receive(mut body: impl Read, mut out: BlocksWriter) -> Result<BlocksFile> {
    let bad = |what: String| Error::Invalid(format!("block hashes: {what}"));
    let mut head = [0u8; HEADER_LEN];
    body.read_exact(&mut head).map_err(Error::Source)?;
    let header = BlocksHeader::decode(&head).map_err(bad)?;
    let short = |e: std::io::Error| match e.kind() {
        std::io::ErrorKind::UnexpectedEof => bad(format!(
            "the body is shorter than the {} bytes its header announces",
            header.file_len()
        )),
        _ => Error::Source(e),
    };
    let mut sum = xxhash_rust::xxh3::Xxh3::new();
    let mut cv = [0u8; CV_LEN];
    for _ in 0..header.count {
        body.read_exact(&mut cv).map_err(short)?;
        sum.update(&cv);
        out.push(&cv)?;
    }
    let mut foot = [0u8; FOOTER_LEN];
    body.read_exact(&mut foot).map_err(short)?;
    let claimed = bunker_chunk::blocks_file::decode_footer(&foot).map_err(bad)?;
    if claimed != sum.digest() {
        return Err(bad("checksum mismatch".into()));
    }
    let mut extra = [0u8; 1];
    if body.read(&mut extra).map_err(Error::Source)? != 0 {
        return Err(bad(format!(
            "the body is longer than the {} bytes its header announces",
            header.file_len()
        )));
    }
    out.finish(header.block_len, header.image_len, header.tail)
}

/// Reads the file once: header, length, chaining values, footer; returns
/// the header and the root the values give.
fn check(
    path: &Path,
    seal: Option<&FileSeal>,
    owner: &Owner,
) -> Result<(BlocksHeader, Option<[u8; 32]>)> {
    let shown = path.display().to_string();
    let file = File::open(path).at(path)?;
    let file = PlainFile::new(file, path, &shown, seal, owner)?;
    let len = file.len(path)?;
    let mut reader = file.reader_at(0, 256 << 10, path)?;
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
        reader
            .read_exact(&mut cv)
            .map_err(|e| read_error(path, &shown, e))?;
        sum.update(&cv);
        tree.push(cv);
    }
    let mut foot = [0u8; FOOTER_LEN];
    reader
        .read_exact(&mut foot)
        .map_err(|e| read_error(path, &shown, e))?;
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
        let mut w = BlocksWriter::create(dir.join("b.tmp"), None, [0; 16])?;
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
        assert!(BlocksFile::open(&kept, None, &Owner::unpublished([0; 16]))
            .unwrap_err()
            .to_string()
            .contains("checksum"));
        bytes.pop();
        std::fs::write(&kept, &bytes).unwrap();
        assert!(BlocksFile::open(&kept, None, &Owner::unpublished([0; 16]))
            .unwrap_err()
            .to_string()
            .contains("header says"));
        let mut w = BlocksWriter::create(dir.path().join("c.tmp"), None, [0; 16]).unwrap();
        w.push(&[1; 32]).unwrap();
        let err = w.finish(4096, 3 * 4096, None).unwrap_err();
        assert!(err.to_string().contains("3 whole blocks"), "{err}");
        assert!(!dir.path().join("c.tmp").exists());
    }
}

#[cfg(test)]
mod sealed_tests {
    use super::*;
    use crate::format::sealed::FileKind;
    use crate::SnapshotId;
    use bunker_chunk::digest::BlockHasher;

    #[test]
    fn sealed_block_hashes_read_as_clear_ones_once_bound_to_their_snapshot() {
        let dir = tempfile::tempdir().unwrap();
        let seal = FileSeal::new(
            &bunker_crypt::Key::from_bytes([4; 32]),
            FileKind::BlockHashes,
        );
        let data: Vec<u8> = (0..(40 * 4096 + 77))
            .map(|i| (i * 13 % 241) as u8)
            .collect();
        let written = |name: &str, seal: Option<&FileSeal>| {
            let mut w = BlocksWriter::create(dir.path().join(name), seal, [1; 16]).unwrap();
            let mut hasher = BlockHasher::new(4096);
            hasher.update(&data, |_, cv| w.push(&cv).unwrap());
            let len = hasher.len();
            let (_, tail) = hasher.finalize_with_tail();
            w.finish(4096, len, tail).unwrap()
        };
        let clear = written("c.tmp", None);
        let mut sealed = written("s.tmp", Some(&seal));
        // A clear upload received into a sealed writer gives the same
        // values; a cut or grown one is refused and leaves nothing.
        let upload = std::fs::read(clear.path()).unwrap();
        let out = || BlocksWriter::create(dir.path().join("u.tmp"), Some(&seal), [1; 16]).unwrap();
        let received = receive(&upload[..], out()).unwrap();
        assert_eq!(received.header(), clear.header());
        assert_eq!(received.root(), sealed.root());
        drop(received);
        let cut = receive(&upload[..upload.len() - 1], out()).unwrap_err();
        assert!(cut.to_string().contains("shorter"), "{cut}");
        let mut grown = upload.clone();
        grown.push(0);
        let grown = receive(&grown[..], out()).unwrap_err();
        assert!(grown.to_string().contains("longer"), "{grown}");
        assert!(!dir.path().join("u.tmp").exists());
        assert_eq!(sealed.root(), Some(*blake3::hash(&data).as_bytes()));
        let owner = Owner::new([1; 16], "vol", SnapshotId(3));
        sealed.bind(owner.clone()).unwrap();
        let dest = dir.path().join("3.blocks");
        sealed.publish(&dest).unwrap();
        let opened = BlocksFile::open(&dest, Some(&seal), &owner).unwrap();
        assert_eq!(opened.header(), clear.header());
        let cvs = |f: &BlocksFile| -> Vec<[u8; 32]> {
            f.chaining_values().unwrap().map(|cv| cv.unwrap()).collect()
        };
        assert_eq!(cvs(&opened), cvs(&clear));
        let mut plain = Vec::new();
        opened.reader().unwrap().read_to_end(&mut plain).unwrap();
        assert_eq!(plain, std::fs::read(clear.path()).unwrap());
        let stored = std::fs::read(&dest).unwrap();
        assert!(!stored.windows(32).any(|w| w == cvs(&clear)[5]));
        for wrong in [
            Owner::unpublished([1; 16]),
            Owner::new([1; 16], "vol", SnapshotId(4)),
        ] {
            let err = BlocksFile::open(&dest, Some(&seal), &wrong).unwrap_err();
            assert!(err.is_corrupt(), "{err}");
        }
    }
}
