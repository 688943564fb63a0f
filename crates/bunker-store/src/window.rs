//! The dedup window: day N of a volume mostly repeats day N - 1 in the same
//! order, so an ingest of a name first looks each chunk up among the chunks
//! the previous ingest of that name stored near the same stream offset, and
//! goes to the index only on a miss. The index's cost grows with the
//! repository (cold runs, page faults); the window's does not.
//!
//! The previous ingest's chunks and their locations are in `window/<name>`
//! (`format::window`), written by each ingest as it stores and renamed
//! into place after its commit. The file is read sequentially; only the
//! entries within [`SPAN`] bytes of the current offset are in memory.
//!
//! A location from the window is a claim that a record was once stored
//! there. It is used only after the same check a lookup makes, under the
//! GC gate together with the pin it produces: the location is not buried
//! (tombstoned pack or quarantined record), and its pack still exists. A
//! condemned pack stays tombstoned until it is deleted, so a pack that is
//! neither tombstoned nor gone was not condemned, and the pin keeps it.
//! Pack ids are never reused, except after an index rebuild, which removes
//! the window files (`repo::open`).

use std::collections::{HashMap, VecDeque};
use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use bunker_chunk::ChunkId;

use crate::format::window::{self, WindowEntry, ENTRY_LEN, HEADER_LEN};
use crate::{durable, Location, Result};

/// Bytes of the previous stream kept on each side of the current offset.
/// An insert or delete of less than this keeps the window in step (each hit
/// re-aligns it); with 64 KiB chunks this is 8 192 entries, about 1 MiB.
pub(crate) const SPAN: u64 = 256 << 20;

/// The directory of the window files, under the repository root.
pub(crate) fn dir(root: &Path) -> PathBuf {
    root.join("window")
}

/// The previous ingest of a name, as a sliding window over its file.
pub(crate) struct Window {
    source: Option<BufReader<File>>,
    held: VecDeque<WindowEntry>,
    /// Each id in `held`, with the stream ends of its entries there (an
    /// image repeats some chunks: the nearest occurrence is the one that
    /// re-aligns the window).
    by_id: HashMap<ChunkId, Vec<(Location, u64)>>,
    /// Offset in the previous stream minus offset in this one, as of the
    /// last hit.
    shift: i128,
}

impl Window {
    /// The window of `name`, or `None` when there is no usable file (first
    /// ingest, another repository's file, a damaged header).
    pub(crate) fn open(root: &Path, name: &str, repo_id: [u8; 16]) -> Option<Window> {
        let path = dir(root).join(name);
        let mut f = BufReader::with_capacity(64 << 10, File::open(&path).ok()?);
        let mut head = [0u8; HEADER_LEN];
        f.read_exact(&mut head).ok()?;
        match window::decode_header(&path.display().to_string(), &head) {
            Ok(id) if id == repo_id => {}
            Ok(_) => return None,
            Err(e) => {
                tracing::warn!("ignoring the dedup window of {name}: {e}");
                return None;
            }
        }
        Some(Window {
            source: Some(f),
            held: VecDeque::new(),
            by_id: HashMap::new(),
            shift: 0,
        })
    }

    /// Where the previous ingest stored `id`, if it did near the chunk of
    /// this stream that ends at `end`.
    pub(crate) fn find(&mut self, id: &ChunkId, end: u64) -> Option<Location> {
        let at = (i128::from(end) + self.shift).max(0) as u64;
        self.advance(at.saturating_add(SPAN));
        while self.held.front().is_some_and(|e| e.end + SPAN < at) {
            let e = self.held.pop_front().expect("front exists");
            if let Some(seen) = self.by_id.get_mut(&e.id) {
                seen.retain(|(_, end)| *end != e.end);
                if seen.is_empty() {
                    self.by_id.remove(&e.id);
                }
            }
        }
        let &(loc, prev_end) = self
            .by_id
            .get(id)?
            .iter()
            .min_by_key(|(_, prev)| prev.abs_diff(at))?;
        self.shift = i128::from(prev_end) - i128::from(end);
        Some(loc)
    }

    /// Reads entries until one ends beyond `to`, or the file ends (or is
    /// torn: the rest is ignored).
    fn advance(&mut self, to: u64) {
        while self.held.back().is_none_or(|e| e.end <= to) {
            let Some(f) = self.source.as_mut() else {
                return;
            };
            let mut b = [0u8; ENTRY_LEN];
            let entry = f
                .read_exact(&mut b)
                .ok()
                .and_then(|_| window::decode_entry(&b));
            match entry {
                Some(e) => {
                    self.by_id.entry(e.id).or_default().push((e.loc, e.end));
                    self.held.push_back(e);
                }
                None => {
                    self.source = None;
                    return;
                }
            }
        }
    }
}

/// The window file of the ingest in progress, in `tmp/` until
/// [`WindowWriter::publish`]; removed if dropped before.
pub(crate) struct WindowWriter {
    out: Option<BufWriter<File>>,
    tmp: PathBuf,
}

impl WindowWriter {
    pub(crate) fn create(tmp: PathBuf, repo_id: [u8; 16]) -> Result<WindowWriter> {
        let mut out = BufWriter::with_capacity(
            64 << 10,
            File::create(&tmp).map_err(|e| crate::Error::io(&tmp, e))?,
        );
        out.write_all(&window::encode_header(repo_id))
            .map_err(|e| crate::Error::io(&tmp, e))?;
        Ok(WindowWriter {
            out: Some(out),
            tmp,
        })
    }

    pub(crate) fn push(&mut self, e: &WindowEntry) -> Result<()> {
        if let Some(out) = self.out.as_mut() {
            out.write_all(&window::encode_entry(e))
                .map_err(|err| crate::Error::io(&self.tmp, err))?;
        }
        Ok(())
    }

    /// Puts the file in place as the window of `name`'s next ingest. No
    /// fsync: it is a cache whose torn entries are detected.
    pub(crate) fn publish(mut self, root: &Path, name: &str) -> Result<()> {
        if let Some(out) = self.out.take() {
            out.into_inner()
                .map_err(|e| crate::Error::io(&self.tmp, e.into_error()))?;
        }
        let dir = dir(root);
        durable::create_dir_all(&dir)?;
        durable::rename(&self.tmp, &dir.join(name))?;
        self.tmp = PathBuf::new();
        Ok(())
    }
}

impl Drop for WindowWriter {
    fn drop(&mut self) {
        if !self.tmp.as_os_str().is_empty() {
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::PackId;

    fn entry(n: u64, end: u64) -> WindowEntry {
        let mut id = [0u8; 32];
        id[..8].copy_from_slice(&n.to_le_bytes());
        WindowEntry {
            id: ChunkId(id),
            loc: Location {
                pack: PackId(1),
                offset: n,
                raw_len: 1,
                stored_len: 1,
            },
            end,
        }
    }

    /// Far beyond one span, with a chunk repeated 200 MiB later in the
    /// image (a duplicated file): the window must stay in step.
    #[test]
    fn the_window_follows_a_long_stream_with_repeated_chunks() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("tmp")).unwrap();
        let step = 400_000u64;
        let n = 3_000u64;
        let ids = |i: u64| if i % 500 == 7 { 7 } else { i };
        let mut w = WindowWriter::create(dir.path().join("tmp").join("w"), [1; 16]).unwrap();
        for i in 0..n {
            w.push(&entry(ids(i), (i + 1) * step)).unwrap();
        }
        w.publish(dir.path(), "vol").unwrap();
        let mut window = Window::open(dir.path(), "vol", [1; 16]).unwrap();
        let hits = (0..n)
            .filter(|&i| window.find(&entry(ids(i), 0).id, (i + 1) * step).is_some())
            .count();
        assert_eq!(hits as u64, n);
        assert!(Window::open(dir.path(), "vol", [2; 16]).is_none());
    }
}
