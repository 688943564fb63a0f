//! A writable overlay over a read-only snapshot: writes go to a sparse
//! file as large as the image (`FILE`), which blocks were written is kept
//! in an extent map beside it (`FILE.map`, format in docs/FORMAT.md).
//! Reads come from the overlay where written, from the snapshot elsewhere.
//!
//! Guarantees:
//! - `flush` makes every write answered before it durable: the data file
//!   is fsynced, then the map is written to `FILE.map.tmp`, fsynced,
//!   renamed over `FILE.map`, and the directory fsynced. A kill loses only
//!   writes after the last flush (their blocks are not in the map).
//! - The map names the snapshot it was made for (name, id, size, BLAKE3);
//!   reopening it with another snapshot is refused, naming both.
//! - A file that exists without its map is not taken for an overlay.
//! - After a failed fsync every later write and flush fails: what reached
//!   the disk is unknown.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use crate::{Extent, Source, SourceError};

/// The overlay's unit: a partial write of a block copies the rest of the
/// block from the snapshot first.
pub const BLOCK: u64 = 4096;
const MAGIC: &[u8; 8] = b"BUNKOVL\0";
/// Map format versions:
/// 1: the first (magic, version, block size, size, id, BLAKE3, name,
///    extents, BLAKE3 of the rest).
const VERSION: u32 = 1;

/// The snapshot an overlay belongs to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OverlayIdentity {
    pub name: String,
    pub id: u64,
    /// The image's BLAKE3, hex.
    pub blake3: String,
    pub size: u64,
}

impl std::fmt::Display for OverlayIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}@{} ({} bytes, BLAKE3 {})",
            self.name, self.id, self.size, self.blake3
        )
    }
}

/// Why an overlay cannot be opened or written, by what the user does next.
#[derive(Debug, thiserror::Error)]
pub enum OverlayError {
    /// Made for another snapshot: export that one, or use another file.
    #[error("the overlay {path} was made for {made_for}, not {this}: export {made_for} with it, or give another --overlay file")]
    OtherSnapshot {
        path: PathBuf,
        made_for: Box<OverlayIdentity>,
        this: Box<OverlayIdentity>,
    },
    /// Not an overlay (or not whole): choose another path.
    #[error("{path} is not a usable bunker overlay: {reason}")]
    NotOverlay { path: PathBuf, reason: String },
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    /// An fsync failed earlier: restart the export (writes since the last
    /// successful flush may be lost).
    #[error("the overlay {0} failed to sync earlier; restart the export")]
    Poisoned(PathBuf),
}

pub struct Overlay {
    path: PathBuf,
    map_path: PathBuf,
    file: File,
    identity: OverlayIdentity,
    state: Mutex<State>,
    poisoned: AtomicBool,
}

#[derive(Default)]
struct State {
    /// Written blocks: first block -> end block (exclusive), disjoint and
    /// not adjacent (merged).
    map: BTreeMap<u64, u64>,
    /// Written since the map was last saved.
    dirty: bool,
}

fn io_err(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> OverlayError {
    let what = what.into();
    move |source| OverlayError::Io { what, source }
}

impl Overlay {
    /// Opens the overlay at `path` for `identity`, or creates it (and its
    /// map, durably) if neither exists.
    pub fn open(path: &Path, identity: OverlayIdentity) -> Result<Overlay, OverlayError> {
        let mut map_path = path.as_os_str().to_owned();
        map_path.push(".map");
        let map_path = PathBuf::from(map_path);
        let not = |reason: String| OverlayError::NotOverlay {
            path: path.to_path_buf(),
            reason,
        };
        let (file, map) = match (path.exists(), map_path.exists()) {
            (false, false) => {
                let file = OpenOptions::new()
                    .read(true)
                    .write(true)
                    .create_new(true)
                    .open(path)
                    .map_err(io_err(format!("creating the overlay {}", path.display())))?;
                file.set_len(identity.size)
                    .map_err(io_err(format!("sizing the overlay {}", path.display())))?;
                file.sync_all()
                    .map_err(io_err(format!("syncing the overlay {}", path.display())))?;
                (file, BTreeMap::new())
            }
            (true, false) => {
                return Err(not(format!(
                    "it exists but {} does not (give a path that does not exist to start a new overlay)",
                    map_path.display()
                )))
            }
            (false, true) => {
                return Err(not(format!(
                    "its map {} exists but the data file does not",
                    map_path.display()
                )))
            }
            (true, true) => {
                let bytes = std::fs::read(&map_path)
                    .map_err(io_err(format!("reading {}", map_path.display())))?;
                let (made_for, map) = decode(&bytes).map_err(|r| {
                    not(format!("its map {} is unreadable: {r}", map_path.display()))
                })?;
                if made_for != identity {
                    return Err(OverlayError::OtherSnapshot {
                        path: path.to_path_buf(),
                        made_for: Box::new(made_for),
                        this: Box::new(identity),
                    });
                }
                let file = OpenOptions::new()
                    .read(true)
                    .write(true)
                    .open(path)
                    .map_err(io_err(format!("opening the overlay {}", path.display())))?;
                let len = file
                    .metadata()
                    .map_err(io_err(format!("reading {}", path.display())))?
                    .len();
                if len != identity.size {
                    return Err(not(format!(
                        "it is {len} bytes, the snapshot {} bytes",
                        identity.size
                    )));
                }
                (file, map)
            }
        };
        let overlay = Overlay {
            path: path.to_path_buf(),
            map_path,
            file,
            identity,
            state: Mutex::new(State { map, dirty: true }),
            poisoned: AtomicBool::new(false),
        };
        // A new overlay's map exists (and names its snapshot) before any
        // write is answered.
        overlay.flush()?;
        Ok(overlay)
    }

    pub fn identity(&self) -> &OverlayIdentity {
        &self.identity
    }

    /// The byte ranges written over the snapshot, `(offset, len)` in
    /// order: what a backup of the overlay reads (`bunker backup --base
    /// NAME@ID --overlay FILE`).
    pub fn written(&self) -> Vec<(u64, u64)> {
        let st = self.state.lock().expect("overlay lock");
        st.map
            .iter()
            .map(|(a, b)| {
                let end = (b * BLOCK).min(self.identity.size);
                (a * BLOCK, end - a * BLOCK)
            })
            .collect()
    }

    /// Bytes written over the snapshot (whole blocks).
    pub fn written_bytes(&self) -> u64 {
        let st = self.state.lock().expect("overlay lock");
        st.map.iter().map(|(a, b)| (b - a) * BLOCK).sum()
    }

    fn check(&self) -> Result<(), OverlayError> {
        if self.poisoned.load(Ordering::Acquire) {
            return Err(OverlayError::Poisoned(self.path.clone()));
        }
        Ok(())
    }

    /// Writes `data` at `offset` (within the image). A partly covered
    /// block not yet in the overlay is first copied from `base`.
    pub fn write(&self, base: &dyn Source, offset: u64, data: &[u8]) -> Result<(), OverlayError> {
        self.check()?;
        if data.is_empty() {
            return Ok(());
        }
        let end = offset + data.len() as u64;
        let (first, last) = (offset / BLOCK, (end - 1) / BLOCK);
        let mut st = self.state.lock().expect("overlay lock");
        let edges: &[u64] = if first == last {
            &[first]
        } else {
            &[first, last]
        };
        for &b in edges {
            let (bs, be) = (b * BLOCK, ((b + 1) * BLOCK).min(self.identity.size));
            let whole = offset <= bs && end >= be;
            if !whole && !covered(&st.map, b) {
                let mut block = vec![0u8; (be - bs) as usize];
                base.read_at(bs, &mut block).map_err(|e| OverlayError::Io {
                    what: format!("copying block {b} from the snapshot before a partial write"),
                    source: std::io::Error::other(e.to_string()),
                })?;
                self.file
                    .write_all_at(&block, bs)
                    .map_err(io_err(format!("writing {}", self.path.display())))?;
            }
        }
        self.file
            .write_all_at(data, offset)
            .map_err(io_err(format!("writing {}", self.path.display())))?;
        insert(&mut st.map, first, last + 1);
        st.dirty = true;
        Ok(())
    }

    /// Writes `len` zeros at `offset`.
    pub fn write_zeroes(
        &self,
        base: &dyn Source,
        offset: u64,
        len: u64,
    ) -> Result<(), OverlayError> {
        let zeros = vec![0u8; len.min(1 << 20) as usize];
        let mut at = offset;
        while at < offset + len {
            let n = (offset + len - at).min(zeros.len() as u64) as usize;
            self.write(base, at, &zeros[..n])?;
            at += n as u64;
        }
        Ok(())
    }

    /// Makes every write answered so far durable (module doc).
    pub fn flush(&self) -> Result<(), OverlayError> {
        self.check()?;
        let mut st = self.state.lock().expect("overlay lock");
        let r = self.sync(&st);
        if r.is_err() {
            self.poisoned.store(true, Ordering::Release);
        } else {
            st.dirty = false;
        }
        r
    }

    fn sync(&self, st: &State) -> Result<(), OverlayError> {
        self.file
            .sync_data()
            .map_err(io_err(format!("syncing {}", self.path.display())))?;
        if !st.dirty {
            return Ok(());
        }
        let bytes = encode(&self.identity, &st.map);
        let mut tmp = self.map_path.as_os_str().to_owned();
        tmp.push(".tmp");
        let tmp = PathBuf::from(tmp);
        let what = format!("writing {}", tmp.display());
        let mut f = File::create(&tmp).map_err(io_err(what.clone()))?;
        f.write_all(&bytes).map_err(io_err(what.clone()))?;
        f.sync_all().map_err(io_err(what))?;
        std::fs::rename(&tmp, &self.map_path)
            .map_err(io_err(format!("renaming {}", tmp.display())))?;
        let dir = self
            .map_path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(io_err(format!("syncing the directory {}", dir.display())))
    }

    /// `offset..offset+len` cut into runs from the overlay (`true`) and
    /// from the snapshot (`false`).
    fn pieces(&self, offset: u64, len: u64) -> Vec<(u64, u64, bool)> {
        let end = offset + len;
        let st = self.state.lock().expect("overlay lock");
        let mut out = Vec::new();
        let mut at = offset;
        let first = offset / BLOCK;
        // The run holding `first`, if any, starts at or before it.
        let start_key = st
            .map
            .range(..=first)
            .next_back()
            .map_or(first, |(&a, _)| a);
        for (&a, &b) in st.map.range(start_key..) {
            let (rs, re) = ((a * BLOCK).max(offset), (b * BLOCK).min(end));
            if rs >= end {
                break;
            }
            if re <= at {
                continue;
            }
            if rs > at {
                out.push((at, rs - at, false));
            }
            out.push((rs.max(at), re - rs.max(at), true));
            at = re;
        }
        if at < end {
            out.push((at, end - at, false));
        }
        out
    }

    /// Reads the exported image: the overlay where written, `base`
    /// elsewhere.
    pub fn read_at(
        &self,
        base: &dyn Source,
        offset: u64,
        buf: &mut [u8],
    ) -> Result<(), SourceError> {
        for (at, n, ours) in self.pieces(offset, buf.len() as u64) {
            let out = &mut buf[(at - offset) as usize..(at - offset + n) as usize];
            if ours {
                self.file.read_exact_at(out, at).map_err(|e| {
                    SourceError::Failed(format!("reading the overlay {}: {e}", self.path.display()))
                })?;
            } else {
                base.read_at(at, out)?;
            }
        }
        Ok(())
    }

    /// The snapshot's extents with the overlay's runs as data.
    pub(crate) fn extents(
        &self,
        base: &dyn Source,
        offset: u64,
        len: u64,
    ) -> Result<Vec<Extent>, SourceError> {
        let mut out: Vec<Extent> = Vec::new();
        let mut push = |e: Extent| match out.last_mut() {
            Some(l) if l.zero == e.zero && l.offset + l.len == e.offset => l.len += e.len,
            _ => out.push(e),
        };
        for (at, n, ours) in self.pieces(offset, len) {
            if ours {
                push(Extent {
                    offset: at,
                    len: n,
                    zero: false,
                });
                continue;
            }
            let base_ext = base.extents(at, n)?;
            let covered: u64 = base_ext.iter().map(|e| e.len).sum();
            for e in base_ext {
                push(e);
            }
            if covered < n {
                // The snapshot answered for a prefix only: so do we.
                break;
            }
        }
        Ok(out)
    }
}

fn covered(map: &BTreeMap<u64, u64>, block: u64) -> bool {
    map.range(..=block)
        .next_back()
        .is_some_and(|(_, &end)| end > block)
}

/// Adds blocks `a..b`, merging with overlapping or adjacent runs.
fn insert(map: &mut BTreeMap<u64, u64>, mut a: u64, mut b: u64) {
    if let Some((&s, &e)) = map.range(..=a).next_back() {
        if e >= a {
            a = s;
            b = b.max(e);
            map.remove(&s);
        }
    }
    while let Some((&s, &e)) = map.range(a..).next() {
        if s > b {
            break;
        }
        b = b.max(e);
        map.remove(&s);
    }
    map.insert(a, b);
}

/// The map file (docs/FORMAT.md, "Overlay map"), all integers
/// little-endian.
fn encode(id: &OverlayIdentity, map: &BTreeMap<u64, u64>) -> Vec<u8> {
    let mut out = Vec::with_capacity(128 + id.name.len() + 16 * map.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&VERSION.to_le_bytes());
    out.extend_from_slice(&(BLOCK as u32).to_le_bytes());
    out.extend_from_slice(&id.size.to_le_bytes());
    out.extend_from_slice(&id.id.to_le_bytes());
    let mut hash = [b'0'; 64];
    let h = id.blake3.as_bytes();
    hash[..h.len().min(64)].copy_from_slice(&h[..h.len().min(64)]);
    out.extend_from_slice(&hash);
    out.extend_from_slice(&(id.name.len() as u16).to_le_bytes());
    out.extend_from_slice(id.name.as_bytes());
    out.extend_from_slice(&(map.len() as u64).to_le_bytes());
    for (&a, &b) in map {
        out.extend_from_slice(&a.to_le_bytes());
        out.extend_from_slice(&(b - a).to_le_bytes());
    }
    let sum = blake3::hash(&out);
    out.extend_from_slice(sum.as_bytes());
    out
}

fn decode(bytes: &[u8]) -> Result<(OverlayIdentity, BTreeMap<u64, u64>), String> {
    if bytes.len() < 8 + 4 || &bytes[..8] != MAGIC {
        return Err("no overlay map magic".into());
    }
    let version = u32::from_le_bytes(bytes[8..12].try_into().expect("4"));
    if version != VERSION {
        return Err(format!(
            "map format version {version}; this bunker reads version {VERSION}"
        ));
    }
    if bytes.len() < 32 {
        return Err("too short".into());
    }
    let (body, sum) = bytes.split_at(bytes.len() - 32);
    if blake3::hash(body).as_bytes() != sum {
        return Err("its checksum does not match (torn or altered)".into());
    }
    let mut r = Reader { b: body, at: 12 };
    let block = r.u32()?;
    if u64::from(block) != BLOCK {
        return Err(format!("block size {block}, expected {BLOCK}"));
    }
    let size = r.u64()?;
    let id = r.u64()?;
    let blake3 = String::from_utf8(r.take(64)?.to_vec()).map_err(|_| "bad BLAKE3 text")?;
    let name_len = r.u16()? as usize;
    let name = String::from_utf8(r.take(name_len)?.to_vec()).map_err(|_| "bad name")?;
    let n = r.u64()?;
    let mut map = BTreeMap::new();
    let mut prev_end = 0u64;
    for i in 0..n {
        let (a, count) = (r.u64()?, r.u64()?);
        let b = a.checked_add(count).ok_or("extent overflows")?;
        if count == 0 || (i > 0 && a <= prev_end) || b.saturating_mul(BLOCK) > size + BLOCK - 1 {
            return Err(format!(
                "extent {i} (blocks {a}..{b}) is out of order or beyond the image"
            ));
        }
        map.insert(a, b);
        prev_end = b;
    }
    if r.at != body.len() {
        return Err("trailing bytes".into());
    }
    Ok((
        OverlayIdentity {
            name,
            id,
            blake3,
            size,
        },
        map,
    ))
}

struct Reader<'a> {
    b: &'a [u8],
    at: usize,
}

impl Reader<'_> {
    fn take(&mut self, n: usize) -> Result<&[u8], String> {
        let s = self
            .b
            .get(self.at..self.at + n)
            .ok_or_else(|| "truncated".to_string())?;
        self.at += n;
        Ok(s)
    }
    fn u16(&mut self) -> Result<u16, String> {
        Ok(u16::from_le_bytes(self.take(2)?.try_into().expect("2")))
    }
    fn u32(&mut self) -> Result<u32, String> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().expect("4")))
    }
    fn u64(&mut self) -> Result<u64, String> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().expect("8")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::FileSource;

    fn identity(id: u64) -> OverlayIdentity {
        OverlayIdentity {
            name: "vol1".into(),
            id,
            blake3: "ab".repeat(32),
            size: 50_000,
        }
    }

    fn base(dir: &Path) -> FileSource {
        let p = dir.join("base");
        std::fs::write(
            &p,
            (0..50_000u32).map(|i| (i % 253) as u8).collect::<Vec<_>>(),
        )
        .unwrap();
        FileSource::new(File::open(p).unwrap()).unwrap()
    }

    fn read(o: &Overlay, b: &FileSource, offset: u64, len: usize) -> Vec<u8> {
        let mut buf = vec![0u8; len];
        o.read_at(b, offset, &mut buf).unwrap();
        buf
    }

    #[test]
    fn flushed_writes_survive_a_reopen_and_unflushed_ones_do_not() {
        let dir = tempfile::tempdir().unwrap();
        let b = base(dir.path());
        let path = dir.path().join("ov");
        let o = Overlay::open(&path, identity(2)).unwrap();
        o.write(&b, 10, b"kept").unwrap();
        o.flush().unwrap();
        o.write(&b, 20_000, b"lost").unwrap();
        // No flush: as if the process were killed here.
        drop(o);
        let o = Overlay::open(&path, identity(2)).unwrap();
        assert_eq!(read(&o, &b, 10, 4), b"kept");
        let mut orig = vec![0u8; 4];
        b.read_at(20_000, &mut orig).unwrap();
        assert_eq!(read(&o, &b, 20_000, 4), orig, "an unflushed write is gone");
        // The rest of the written block is the base's.
        let mut around = vec![0u8; 4096];
        b.read_at(0, &mut around).unwrap();
        around[10..14].copy_from_slice(b"kept");
        assert_eq!(read(&o, &b, 0, 4096), around);
        assert_eq!(o.written_bytes(), BLOCK);
    }

    #[test]
    fn another_snapshot_is_refused_naming_both() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ov");
        drop(Overlay::open(&path, identity(2)).unwrap());
        let e = Overlay::open(&path, identity(3)).err().unwrap().to_string();
        assert!(e.contains("vol1@2") && e.contains("vol1@3"), "{e}");
    }

    #[test]
    fn a_file_without_a_map_or_a_damaged_map_is_not_taken() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("disk.img");
        std::fs::write(&path, b"precious").unwrap();
        let e = Overlay::open(&path, identity(2)).err().unwrap().to_string();
        assert!(e.contains("disk.img.map does not"), "{e}");
        assert_eq!(std::fs::read(&path).unwrap(), b"precious");
        let path = dir.path().join("ov");
        let b = base(dir.path());
        let o = Overlay::open(&path, identity(2)).unwrap();
        o.write(&b, 0, b"x").unwrap();
        o.flush().unwrap();
        drop(o);
        let map = dir.path().join("ov.map");
        let mut bytes = std::fs::read(&map).unwrap();
        let n = bytes.len();
        bytes[n - 40] ^= 1;
        std::fs::write(&map, bytes).unwrap();
        let e = Overlay::open(&path, identity(2)).err().unwrap().to_string();
        assert!(e.contains("checksum"), "{e}");
    }

    #[test]
    fn the_map_merges_runs_and_round_trips() {
        let mut m = BTreeMap::new();
        for (a, b) in [(5, 7), (1, 2), (2, 3), (9, 10), (6, 9)] {
            insert(&mut m, a, b);
        }
        assert_eq!(m.into_iter().collect::<Vec<_>>(), vec![(1, 3), (5, 10)]);
        let mut m = BTreeMap::new();
        insert(&mut m, 0, 3);
        insert(&mut m, 7, 13);
        let bytes = encode(&identity(4), &m);
        let (id, back) = decode(&bytes).unwrap();
        assert_eq!((id, back), (identity(4), m));
        let mut newer = bytes.clone();
        newer[8] = 2;
        assert!(decode(&newer).unwrap_err().contains("version 2"));
    }
}

#[cfg(test)]
mod layout {
    use super::*;

    /// The `(offset, width, field)` rows of FORMAT.md's overlay map table.
    fn documented() -> Vec<(String, String, String)> {
        let doc =
            std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/FORMAT.md"))
                .unwrap();
        let section = doc.split("## Overlay map").nth(1).expect("the section");
        section
            .lines()
            .skip_while(|l| !l.starts_with("| offset"))
            .skip(2)
            .take_while(|l| l.starts_with('|'))
            .map(|l| {
                let c: Vec<String> = l
                    .trim_matches('|')
                    .split('|')
                    .map(|c| c.trim().to_string())
                    .collect();
                (c[0].clone(), c[1].clone(), c[2].clone())
            })
            .collect()
    }

    #[test]
    fn the_map_layout_is_the_one_format_md_gives() {
        let id = OverlayIdentity {
            name: "vol".into(),
            id: 0x0102_0304_0506_0708,
            blake3: "c".repeat(64),
            size: 0x1122_3344,
        };
        let mut map = BTreeMap::new();
        map.insert(5u64, 7u64);
        let b = encode(&id, &map);
        let le = |v: u64, w: usize| v.to_le_bytes()[..w].to_vec();
        let (l, n) = (3usize, 1usize);
        let want: Vec<(usize, Vec<u8>)> = vec![
            (0, MAGIC.to_vec()),
            (8, le(1, 4)),
            (12, le(4096, 4)),
            (16, le(id.size, 8)),
            (24, le(id.id, 8)),
            (32, id.blake3.as_bytes().to_vec()),
            (96, le(3, 2)),
            (98, b"vol".to_vec()),
            (98 + l, le(1, 8)),
            (106 + l, [le(5, 8), le(2, 8)].concat()),
            (
                106 + l + 16 * n,
                blake3::hash(&b[..b.len() - 32]).as_bytes().to_vec(),
            ),
        ];
        let rows = documented();
        assert_eq!(rows.len(), want.len(), "{rows:?}");
        let eval = |e: &str| -> usize {
            e.split('+')
                .map(|t| match t {
                    "L" => l,
                    "16·N" => 16 * n,
                    t => t.parse().unwrap(),
                })
                .sum()
        };
        for ((offset, width, field), (at, bytes)) in rows.iter().zip(&want) {
            assert_eq!(eval(offset), *at, "{field}");
            assert_eq!(eval(width), bytes.len(), "{field}");
            assert_eq!(&b[*at..*at + bytes.len()], &bytes[..], "{field}");
        }
        assert_eq!(b.len(), 106 + l + 16 * n + 32);
    }
}
