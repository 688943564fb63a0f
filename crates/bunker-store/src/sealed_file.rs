//! Sealed files: a manifest or block hashes file encrypted and
//! authenticated in place, read through positioned reads of its plaintext.
//!
//! [`SealedWriter`] takes the plaintext as a stream (a `Write + Seek` whose
//! first `H` bytes, the head, stay in memory and may be rewritten, and
//! whose rest is append-only), seals each 64 KiB segment once the next byte
//! shows it is not the last, and seals the head last at its fixed place,
//! bound to the file's identity (repository, name, snapshot id), which may
//! be known only then. [`SealedReader`] checks the container header, the key
//! id and the head at open, then opens segments on demand behind a small
//! cache. Guarantee: no byte is handed out that was not sealed in this
//! file, at this place, under this key and identity; a damaged, moved,
//! reordered or missing segment or head is `Corrupt` naming the file and
//! the segment. Layout: docs/FORMAT.md, "Sealed files".

use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use bunker_crypt::{Key, KeyId, Purpose, Sealer};

use crate::error::IoContext;
use crate::format::sealed::{
    head_ad, segment_ad, FileKind, SealedHeader, HEADER_LEN, OVERHEAD, SEGMENT_SHIFT,
};
use crate::{durable, Error, Result};

const NONCE_LEN: usize = bunker_crypt::seal::NONCE_LEN;
const TAG_LEN: usize = bunker_crypt::seal::TAG_LEN;

/// The key of one kind of sealed file: its sealer and the key's id.
/// Cheap to clone.
#[derive(Clone, Debug)]
pub struct FileSeal {
    sealer: Arc<Sealer>,
    key_id: KeyId,
    kind: FileKind,
}

impl FileSeal {
    pub fn new(key: &Key, kind: FileKind) -> FileSeal {
        let purpose = match kind {
            FileKind::Manifest => Purpose::Manifest,
            FileKind::BlockHashes => Purpose::BlockHashes,
        };
        FileSeal {
            sealer: Arc::new(Sealer::new(key, purpose)),
            key_id: key.id(),
            kind,
        }
    }

    pub fn key_id(&self) -> KeyId {
        self.key_id
    }

    pub fn kind(&self) -> FileKind {
        self.kind
    }
}

/// Writes a sealed file. Plaintext positions below the head length are
/// held in memory until [`SealedWriter::finish`]; the rest is written once,
/// in order.
pub struct SealedWriter {
    file: File,
    path: PathBuf,
    seal: FileSeal,
    header: [u8; HEADER_LEN],
    file_id: [u8; 16],
    head: Vec<u8>,
    /// Room for a nonce, a segment's plaintext and a tag.
    segment: Vec<u8>,
    /// Plaintext bytes in `segment`.
    fill: usize,
    segment_len: usize,
    next_segment: u64,
    body_len: u64,
    /// The plaintext position the next write goes to.
    pos: u64,
}

impl SealedWriter {
    /// Starts a sealed file with a head of `head_len` bytes in `file` (new
    /// and empty), at `path` (for errors).
    pub fn create(file: File, path: &Path, seal: &FileSeal, head_len: usize) -> Result<Self> {
        let mut file_id = [0u8; 16];
        getrandom::fill(&mut file_id)
            .map_err(|e| Error::io(path, std::io::Error::other(e.to_string())))?;
        let header = SealedHeader {
            kind: seal.kind,
            segment_shift: SEGMENT_SHIFT,
            head_len: head_len as u32,
            key_id: seal.key_id.0,
            file_id,
        };
        let mut w = SealedWriter {
            file,
            path: path.to_path_buf(),
            seal: seal.clone(),
            header: header.encode(),
            file_id,
            head: vec![0; head_len],
            segment: vec![0; NONCE_LEN + header.segment_len() as usize + TAG_LEN],
            fill: 0,
            segment_len: header.segment_len() as usize,
            next_segment: 0,
            body_len: 0,
            pos: 0,
        };
        // The head's place, filled by `finish`.
        let mut start = w.header.to_vec();
        start.resize(header.first_segment_at() as usize, 0);
        w.file.write_all(&start).at(&w.path)?;
        Ok(w)
    }

    fn head_len(&self) -> u64 {
        self.head.len() as u64
    }

    fn end(&self) -> u64 {
        self.head_len() + self.body_len
    }

    /// Seals the segment in the buffer and writes it.
    fn seal_segment(&mut self, last: bool) -> std::io::Result<()> {
        let ad = segment_ad(&self.file_id, self.next_segment, last);
        let sealed = &mut self.segment[..NONCE_LEN + self.fill + TAG_LEN];
        self.seal.sealer.seal_in_place(&ad, sealed);
        self.file.write_all(sealed)?;
        self.next_segment += 1;
        self.fill = 0;
        Ok(())
    }

    fn append(&mut self, mut data: &[u8]) -> std::io::Result<()> {
        while !data.is_empty() {
            if self.fill == self.segment_len {
                // More follows: the full segment is not the last.
                self.seal_segment(false)?;
            }
            let n = data.len().min(self.segment_len - self.fill);
            self.segment[NONCE_LEN + self.fill..NONCE_LEN + self.fill + n]
                .copy_from_slice(&data[..n]);
            self.fill += n;
            self.body_len += n as u64;
            data = &data[n..];
        }
        Ok(())
    }

    /// Seals the last segment and the head (bound to `identity`), syncs,
    /// and returns the file. The head must have been written whole.
    pub fn finish(mut self, identity: &[u8]) -> Result<File> {
        self.seal_segment(true).at(&self.path)?;
        let ad = head_ad(&self.header, self.body_len, identity);
        let mut head = vec![0u8; NONCE_LEN];
        head.extend_from_slice(&self.head);
        head.extend_from_slice(&[0; TAG_LEN]);
        self.seal.sealer.seal_in_place(&ad, &mut head);
        self.file
            .write_all_at(&head, HEADER_LEN as u64)
            .at(&self.path)?;
        durable::sync_data(&self.file, &self.path)?;
        Ok(self.file)
    }
}

impl Write for SealedWriter {
    /// Writes into the head below its length, else appends at the end;
    /// any other position is refused (`Unsupported`).
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        let head_len = self.head_len();
        if self.pos < head_len {
            let at = self.pos as usize;
            let n = data.len().min(head_len as usize - at);
            self.head[at..at + n].copy_from_slice(&data[..n]);
            self.pos += n as u64;
            return Ok(n);
        }
        if self.pos != self.end() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::Unsupported,
                "a sealed file's body is written once, in order",
            ));
        }
        self.append(data)?;
        self.pos += data.len() as u64;
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Seek for SealedWriter {
    /// To a position in the head or to the end of what was written.
    fn seek(&mut self, to: SeekFrom) -> std::io::Result<u64> {
        let target = match to {
            SeekFrom::Start(p) => Some(p),
            SeekFrom::End(d) => self.end().checked_add_signed(d),
            SeekFrom::Current(d) => self.pos.checked_add_signed(d),
        };
        match target {
            Some(p) if p <= self.head_len() || p == self.end() => {
                self.pos = p;
                Ok(p)
            }
            _ => Err(std::io::Error::new(
                std::io::ErrorKind::Unsupported,
                "a sealed file seeks only within its head or to its end",
            )),
        }
    }
}

/// An open, checked sealed file: its plaintext by positioned reads.
#[derive(Debug)]
pub struct SealedReader {
    file: File,
    path: PathBuf,
    name: String,
    seal: FileSeal,
    header: SealedHeader,
    head: Vec<u8>,
    body_len: u64,
    segments: u64,
    /// The last few segments opened, most recent last.
    cache: Mutex<Vec<(u64, Arc<Vec<u8>>)>>,
}

/// Segments [`SealedReader`] keeps opened: a binary search ends within one
/// or two segments, and a reader alternating between two places keeps both.
const CACHED_SEGMENTS: usize = 4;

impl SealedReader {
    /// Opens `file` (at `path`; `name` shows in errors), checking the
    /// container header, its kind and key id, and the head against
    /// `identity`.
    pub fn open(
        file: File,
        path: &Path,
        name: &str,
        seal: &FileSeal,
        identity: &[u8],
    ) -> Result<SealedReader> {
        let len = file.metadata().at(path)?.len();
        let mut raw = [0u8; HEADER_LEN];
        let n = (len as usize).min(HEADER_LEN);
        file.read_exact_at(&mut raw[..n], 0).at(path)?;
        let header = SealedHeader::decode(name, &raw[..n])?;
        if header.kind != seal.kind {
            return Err(Error::corrupt(
                name,
                format!(
                    "sealed {} file where a {} file belongs",
                    header.kind.name(),
                    seal.kind.name()
                ),
            ));
        }
        if header.key_id != seal.key_id.0 {
            return Err(Error::SealedWithOtherKey {
                file: name.to_string(),
                sealed_with: KeyId(header.key_id).to_string(),
                key: seal.key_id.to_string(),
            });
        }
        let body_len = header.body_len(len).ok_or_else(|| {
            Error::corrupt(
                name,
                format!(
                    "sealed file of {len} bytes is cut short or has bytes beyond its last segment"
                ),
            )
        })?;
        let mut head = vec![0u8; header.head_len as usize + OVERHEAD as usize];
        file.read_exact_at(&mut head, header.head_at()).at(path)?;
        let plain = seal
            .sealer
            .open_in_place(&head_ad(&raw, body_len, identity), &mut head)
            .map_err(|_| {
                Error::corrupt(
                    name,
                    "sealed head does not authenticate: damaged, cut short, or another \
                     snapshot's file",
                )
            })?
            .to_vec();
        Ok(SealedReader {
            file,
            path: path.to_path_buf(),
            name: name.to_string(),
            seal: seal.clone(),
            header,
            head: plain,
            body_len,
            segments: header.segments(body_len),
            cache: Mutex::new(Vec::with_capacity(CACHED_SEGMENTS)),
        })
    }

    /// Plaintext bytes: head and body.
    pub fn plain_len(&self) -> u64 {
        self.head.len() as u64 + self.body_len
    }

    /// The head's plaintext.
    pub fn head(&self) -> &[u8] {
        &self.head
    }

    /// Reads and opens segment `i` (not through the cache).
    fn open_segment(&self, i: u64) -> Result<Vec<u8>> {
        let (at, len) = self.header.segment_span(self.body_len, i);
        let mut sealed = vec![0u8; (len + OVERHEAD) as usize];
        self.file.read_exact_at(&mut sealed, at).at(&self.path)?;
        let ad = segment_ad(&self.header.file_id, i, i + 1 == self.segments);
        self.seal
            .sealer
            .open_in_place(&ad, &mut sealed)
            .map_err(|_| Error::Corrupt {
                file: self.name.clone(),
                pack: None,
                offset: Some(at),
                chunk: None,
                reason: format!(
                    "sealed segment {i} of {} does not authenticate: damaged, moved or reordered",
                    self.segments
                ),
            })?;
        sealed.truncate(NONCE_LEN + len as usize);
        sealed.drain(..NONCE_LEN);
        Ok(sealed)
    }

    fn cached_segment(&self, i: u64) -> Result<Arc<Vec<u8>>> {
        {
            let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(k) = cache.iter().position(|(j, _)| *j == i) {
                let hit = cache.remove(k);
                let seg = hit.1.clone();
                cache.push(hit);
                return Ok(seg);
            }
        }
        let seg = Arc::new(self.open_segment(i)?);
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        if cache.len() == CACHED_SEGMENTS {
            cache.remove(0);
        }
        cache.push((i, seg.clone()));
        Ok(seg)
    }

    /// Fills `buf` with the plaintext at `offset`; reading past the end is
    /// an `UnexpectedEof` I/O error, as for a clear file.
    pub fn read_exact_at(&self, mut offset: u64, mut buf: &mut [u8]) -> Result<()> {
        if offset
            .checked_add(buf.len() as u64)
            .is_none_or(|end| end > self.plain_len())
        {
            return Err(Error::io(
                &self.path,
                std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    format!(
                        "read past the end of the {} plaintext bytes",
                        self.plain_len()
                    ),
                ),
            ));
        }
        let head_len = self.head.len() as u64;
        if offset < head_len {
            let n = buf.len().min((head_len - offset) as usize);
            buf[..n].copy_from_slice(&self.head[offset as usize..offset as usize + n]);
            buf = &mut buf[n..];
            offset += n as u64;
        }
        let s = self.header.segment_len();
        while !buf.is_empty() {
            let body_at = offset - head_len;
            let seg = self.cached_segment(body_at / s)?;
            let within = (body_at % s) as usize;
            let n = buf.len().min(seg.len() - within);
            buf[..n].copy_from_slice(&seg[within..within + n]);
            buf = &mut buf[n..];
            offset += n as u64;
        }
        Ok(())
    }

    /// A sequential reader of the plaintext from `offset`, opening each
    /// segment once, past the shared cache (for scans).
    pub fn reader_at(self: &Arc<Self>, offset: u64) -> SealedRead {
        SealedRead {
            file: self.clone(),
            pos: offset.min(self.plain_len()),
            segment: None,
        }
    }
}

/// Seals the head of the file at `path` again, bound to identity `to`
/// instead of `from` (checked), and syncs: a file written before its
/// identity was known (block hashes, before the commit gives the snapshot
/// its id) is bound to it before it is published.
pub fn rebind(path: &Path, name: &str, seal: &FileSeal, from: &[u8], to: &[u8]) -> Result<()> {
    let file = File::options().read(true).write(true).open(path).at(path)?;
    let r = SealedReader::open(file.try_clone().at(path)?, path, name, seal, from)?;
    let mut head = vec![0u8; NONCE_LEN];
    head.extend_from_slice(&r.head);
    head.extend_from_slice(&[0; TAG_LEN]);
    seal.sealer
        .seal_in_place(&head_ad(&r.header.encode(), r.body_len, to), &mut head);
    file.write_all_at(&head, r.header.head_at()).at(path)?;
    durable::sync_data(&file, path)
}

/// Sequential plaintext of a [`SealedReader`]; a damaged segment is an
/// I/O error of kind `InvalidData` whose message names file and segment.
#[derive(Debug)]
pub struct SealedRead {
    file: Arc<SealedReader>,
    pos: u64,
    /// The segment the position is in, opened.
    segment: Option<(u64, Vec<u8>)>,
}

impl Read for SealedRead {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let f = &*self.file;
        if buf.is_empty() || self.pos >= f.plain_len() {
            return Ok(0);
        }
        let head_len = f.head.len() as u64;
        if self.pos < head_len {
            let at = self.pos as usize;
            let n = buf.len().min(f.head.len() - at);
            buf[..n].copy_from_slice(&f.head[at..at + n]);
            self.pos += n as u64;
            return Ok(n);
        }
        let s = f.header.segment_len();
        let body_at = self.pos - head_len;
        let i = body_at / s;
        if self.segment.as_ref().is_none_or(|(j, _)| *j != i) {
            let seg = f.open_segment(i).map_err(|e| match e {
                Error::Io { source, .. } => source,
                other => std::io::Error::new(std::io::ErrorKind::InvalidData, other.to_string()),
            })?;
            self.segment = Some((i, seg));
        }
        let seg = &self.segment.as_ref().expect("opened above").1;
        let within = (body_at % s) as usize;
        let n = buf.len().min(seg.len() - within);
        buf[..n].copy_from_slice(&seg[within..within + n]);
        self.pos += n as u64;
        Ok(n)
    }
}

/// The error a [`SealedRead`] returned, as the store reports it: damage
/// stays `Corrupt`, anything else is I/O on `path`.
pub(crate) fn read_error(path: &Path, name: &str, e: std::io::Error) -> Error {
    if e.kind() == std::io::ErrorKind::InvalidData {
        Error::corrupt(name, e.to_string())
    } else {
        Error::io(path, e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const S: usize = 1 << SEGMENT_SHIFT;

    fn seal(kind: FileKind) -> FileSeal {
        FileSeal::new(&Key::from_bytes([7; 32]), kind)
    }

    fn plaintext(len: usize, salt: u8) -> Vec<u8> {
        (0..len)
            .map(|i| (i as u8).wrapping_mul(31) ^ salt ^ (i >> 9) as u8)
            .collect()
    }

    /// Writes `plain` (head of `head_len` bytes, written last as the
    /// writers do) sealed at `path` for `identity`.
    fn write(path: &Path, s: &FileSeal, plain: &[u8], head_len: usize, identity: &[u8]) {
        let file = File::create_new(path).unwrap();
        let mut w = SealedWriter::create(file, path, s, head_len).unwrap();
        w.write_all(&vec![0; head_len]).unwrap();
        for piece in plain[head_len..].chunks(7777) {
            w.write_all(piece).unwrap();
        }
        w.seek(SeekFrom::Start(0)).unwrap();
        w.write_all(&plain[..head_len]).unwrap();
        w.seek(SeekFrom::End(0)).unwrap();
        w.finish(identity).unwrap();
    }

    fn open(path: &Path, s: &FileSeal, identity: &[u8]) -> Result<SealedReader> {
        SealedReader::open(File::open(path).unwrap(), path, "f", s, identity)
    }

    /// Reads everything: positioned in one go, then sequentially.
    fn read_all(r: SealedReader) -> Result<Vec<u8>> {
        let mut whole = vec![0u8; r.plain_len() as usize];
        r.read_exact_at(0, &mut whole)?;
        let r = Arc::new(r);
        let mut seq = Vec::new();
        r.reader_at(0)
            .read_to_end(&mut seq)
            .map_err(|e| read_error(Path::new("f"), "f", e))?;
        assert_eq!(seq, whole);
        Ok(whole)
    }

    #[test]
    fn round_trips_at_the_segment_edges() {
        let dir = tempfile::tempdir().unwrap();
        let s = seal(FileKind::Manifest);
        for body in [0, 1, S - 1, S, S + 1, 2 * S, 3 * S + 5] {
            let plain = plaintext(100 + body, body as u8);
            let path = dir.path().join(format!("f{body}"));
            write(&path, &s, &plain, 100, b"id");
            let len = std::fs::metadata(&path).unwrap().len();
            let want = 64 + 140 + body as u64 + 40 * body.div_ceil(S).max(1) as u64;
            assert_eq!(len, want, "body {body}");
            assert_eq!(read_all(open(&path, &s, b"id").unwrap()).unwrap(), plain);
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(24))]
        #[test]
        fn positioned_reads_equal_the_plaintext(
            body in 0usize..(3 * S + 100),
            head in 0usize..1100,
            reads in proptest::collection::vec((0.0f64..1.0, 0usize..(S + 300)), 1..20),
        ) {
            let dir = tempfile::tempdir().unwrap();
            let s = seal(FileKind::BlockHashes);
            let plain = plaintext(head + body, 3);
            let path = dir.path().join("f");
            write(&path, &s, &plain, head, b"x");
            let r = Arc::new(open(&path, &s, b"x").unwrap());
            prop_assert_eq!(r.plain_len(), plain.len() as u64);
            for (at, len) in reads {
                let at = (at * plain.len() as f64) as usize;
                let len = len.min(plain.len() - at);
                let mut buf = vec![0u8; len];
                r.read_exact_at(at as u64, &mut buf).unwrap();
                prop_assert_eq!(&buf[..], &plain[at..at + len]);
                let mut seq = vec![0u8; len];
                r.reader_at(at as u64).read_exact(&mut seq).unwrap();
                prop_assert_eq!(&seq[..], &plain[at..at + len]);
            }
            let mut past = [0u8; 1];
            prop_assert!(r.read_exact_at(plain.len() as u64, &mut past).is_err());
        }
    }

    #[test]
    fn every_bit_flip_is_refused_never_read() {
        let dir = tempfile::tempdir().unwrap();
        let s = seal(FileKind::Manifest);
        let plain = plaintext(40 + 30, 1);
        let path = dir.path().join("f");
        write(&path, &s, &plain, 40, b"id");
        let good = std::fs::read(&path).unwrap();
        let out = File::options().write(true).open(&path).unwrap();
        for bit in 0..good.len() * 8 {
            let at = bit / 8;
            out.write_all_at(&[good[at] ^ (1 << (bit % 8))], at as u64)
                .unwrap();
            let got = open(&path, &s, b"id").and_then(read_all);
            assert!(got.is_err(), "bit {bit} went unnoticed");
            out.write_all_at(&good[at..at + 1], at as u64).unwrap();
        }
    }

    #[test]
    fn a_damaged_segment_is_named_and_the_others_still_read() {
        let dir = tempfile::tempdir().unwrap();
        let s = seal(FileKind::Manifest);
        let plain = plaintext(16 + 3 * S, 2);
        let path = dir.path().join("f");
        write(&path, &s, &plain, 16, b"id");
        let mut b = std::fs::read(&path).unwrap();
        let seg1 = 64 + 56 + (S + 40) + 100;
        b[seg1] ^= 1;
        std::fs::write(&path, &b).unwrap();
        let r = open(&path, &s, b"id").unwrap();
        let mut buf = vec![0u8; 10];
        r.read_exact_at(16, &mut buf).unwrap();
        assert_eq!(buf, plain[16..26]);
        let err = r.read_exact_at(16 + S as u64, &mut buf).unwrap_err();
        assert!(err.is_corrupt(), "{err}");
        assert!(err.to_string().contains("segment 1 of 3"), "{err}");
    }

    #[test]
    fn segments_moved_between_files_or_reordered_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let s = seal(FileKind::Manifest);
        let (a, b) = (dir.path().join("a"), dir.path().join("b"));
        write(&a, &s, &plaintext(16 + 2 * S, 1), 16, b"id");
        write(&b, &s, &plaintext(16 + 2 * S, 2), 16, b"id");
        let (fa, fb) = (std::fs::read(&a).unwrap(), std::fs::read(&b).unwrap());
        let seg0 = 64 + 56;
        let seg_len = S + 40;
        // Segment 0 of b in a.
        let mut mixed = fa.clone();
        mixed[seg0..seg0 + seg_len].copy_from_slice(&fb[seg0..seg0 + seg_len]);
        std::fs::write(&a, &mixed).unwrap();
        assert!(open(&a, &s, b"id")
            .and_then(read_all)
            .unwrap_err()
            .is_corrupt());
        // a's segments 0 and 1 swapped (both full).
        let mut swapped = fa.clone();
        swapped[seg0..seg0 + seg_len].copy_from_slice(&fa[seg0 + seg_len..seg0 + 2 * seg_len]);
        swapped[seg0 + seg_len..seg0 + 2 * seg_len].copy_from_slice(&fa[seg0..seg0 + seg_len]);
        std::fs::write(&a, &swapped).unwrap();
        assert!(open(&a, &s, b"id")
            .and_then(read_all)
            .unwrap_err()
            .is_corrupt());
        // b's header and head before a's segments: they carry a's file id.
        let mut head = fa.clone();
        head[..seg0].copy_from_slice(&fb[..seg0]);
        std::fs::write(&a, &head).unwrap();
        assert!(open(&a, &s, b"id")
            .and_then(read_all)
            .unwrap_err()
            .is_corrupt());
    }

    #[test]
    fn a_file_cut_at_a_segment_boundary_is_refused_at_open() {
        let dir = tempfile::tempdir().unwrap();
        let s = seal(FileKind::Manifest);
        let path = dir.path().join("f");
        write(&path, &s, &plaintext(16 + 3 * S, 1), 16, b"id");
        let b = std::fs::read(&path).unwrap();
        for segments in [0, 1, 2] {
            std::fs::write(&path, &b[..64 + 56 + segments * (S + 40)]).unwrap();
            let err = open(&path, &s, b"id").unwrap_err();
            assert!(err.is_corrupt(), "{segments} segments kept: {err}");
        }
        // The last segment alone, sealed as the last one, still is not it.
        let mut last_dropped = b[..64 + 56 + 2 * (S + 40)].to_vec();
        last_dropped.extend_from_slice(&b[64 + 56 + 3 * (S + 40)..]);
        std::fs::write(&path, &last_dropped).unwrap();
        assert!(open(&path, &s, b"id").and_then(read_all).is_err());
    }

    #[test]
    fn another_key_identity_or_kind_is_refused_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let s = seal(FileKind::Manifest);
        let path = dir.path().join("f");
        write(&path, &s, &plaintext(100, 1), 50, b"vol@1");
        let other = FileSeal::new(&Key::from_bytes([8; 32]), FileKind::Manifest);
        let err = open(&path, &other, b"vol@1").unwrap_err();
        let shown = err.to_string();
        assert!(matches!(err, Error::SealedWithOtherKey { .. }), "{err}");
        assert!(shown.contains(&s.key_id().to_string()), "{shown}");
        assert!(shown.contains(&other.key_id().to_string()), "{shown}");
        assert!(open(&path, &s, b"vol@2").unwrap_err().is_corrupt());
        let blocks = seal(FileKind::BlockHashes);
        assert!(open(&path, &blocks, b"vol@1").unwrap_err().is_corrupt());
        assert_eq!(
            read_all(open(&path, &s, b"vol@1").unwrap()).unwrap(),
            plaintext(100, 1)
        );
    }

    #[test]
    fn the_body_is_written_in_order_only() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let s = seal(FileKind::Manifest);
        let mut w = SealedWriter::create(File::create_new(&path).unwrap(), &path, &s, 8).unwrap();
        w.write_all(&[1; 20]).unwrap();
        assert!(w.seek(SeekFrom::Start(12)).is_err());
        assert_eq!(w.seek(SeekFrom::Start(4)).unwrap(), 4);
        assert!(w.write_all(&[2; 8]).is_err(), "past the head into the body");
    }
}
