//! Re-chunking only around changed extents, with exactly the manifest a
//! full read of the new image would give.
//!
//! Why it is exact: a chunk's end depends only on where it starts and on
//! its own bytes (the fingerprint restarts at every cut; `bunker-chunk`).
//! So from a boundary that the base and the new image share, both chunk
//! alike for as long as their bytes agree. The walk keeps that invariant:
//! - *reuse*: at a shared boundary, a base entry whose bytes the map calls
//!   unchanged is the entry a full read would cut, so it is taken as is,
//!   and its end is again a shared boundary;
//! - *re-chunk*: otherwise the new image is read and chunked from the
//!   shared boundary, through the changed bytes, until a new cut lands on a
//!   base boundary followed by a reusable entry; from there the two chains
//!   are the same again.
//!
//! Every base boundary before the first change is shared (induction on the
//! rule above), so the walk starts at offset 0 in reuse mode.
//!
//! Size changes: bytes beyond the base's end are read as changed, and the
//! base's last entry, cut by the end of its stream, is reused only when
//! the image kept its size. An entry is never reused past the new end.
//!
//! A wrong map (one that calls changed bytes unchanged) would give a wrong
//! manifest, so a share of the reused entries is read back and hashed
//! against its base id ([`Options::sample_percent`], spread evenly over
//! the volume); a mismatch fails the walk naming the range.

use bunker_chunk::{is_zero, ChunkId, Chunker};

use crate::map::{ChangeMap, Kind};

/// One manifest entry: a chunk's length and id (the zero id for a chunk of
/// zeros).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Entry {
    pub len: u64,
    pub id: ChunkId,
}

/// The next piece of the new manifest, in image order.
#[derive(Debug)]
pub enum Piece<'a> {
    /// A base entry taken without reading the source.
    Reused(Entry),
    /// A chunk read from the source at `offset`; the caller hashes it
    /// (unless `zero`) and stores it.
    Read {
        offset: u64,
        data: &'a [u8],
        zero: bool,
    },
}

/// How the walk runs.
#[derive(Clone, Copy, Debug)]
pub struct Options {
    /// Share of the reused bytes read back and checked against the base,
    /// 0 to 100.
    pub sample_percent: f64,
    /// Bytes read from the source per request while re-chunking: what a
    /// stretch reads beyond its last chunk is less than this.
    pub read_len: usize,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            sample_percent: 1.0,
            read_len: 256 << 10,
        }
    }
}

/// What the walk did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Report {
    pub chunks_reused: u64,
    pub bytes_reused: u64,
    pub chunks_read: u64,
    /// Bytes of the chunks read and chunked (the changed extents and the
    /// unchanged bytes around them up to the next shared boundary).
    pub bytes_chunked: u64,
    /// Bytes requested from the source: chunked bytes plus samples, less
    /// zero extents of the map, which are not read.
    pub bytes_read: u64,
    /// Reused bytes read back to check the map.
    pub bytes_sampled: u64,
    /// Of `bytes_chunked`, zeros cut without reading them (the map or
    /// the base says they are zeros); sampled like reused bytes.
    pub bytes_zeros: u64,
}

/// Why the walk stopped.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The map called this range unchanged, but the source's bytes there
    /// do not match the base's chunk: the map is wrong and nothing from
    /// this walk may be committed.
    #[error(
        "the changed-extent map is wrong: bytes {offset}..{} are listed as unchanged \
         but differ from the base snapshot (chunk {id})", offset + len
    )]
    MapWrong { offset: u64, len: u64, id: String },
    /// The base manifest does not describe an image of the base's size.
    #[error("base manifest: {0}")]
    BadBase(String),
    /// Reading the source failed.
    #[error("reading the source at offset {offset}: {source}")]
    Source {
        offset: u64,
        #[source]
        source: std::io::Error,
    },
    /// The base iterator or the piece consumer failed.
    #[error(transparent)]
    Caller(Box<dyn std::error::Error + Send + Sync>),
}

/// The base manifest, consumed in order, one entry ahead.
struct BaseCursor<I> {
    entries: I,
    /// Where `current` starts in the base image.
    start: u64,
    current: Option<Entry>,
    /// The entry before `current`, for what covers an offset inside it.
    previous: Option<Entry>,
    base_len: u64,
}

impl<I, E> BaseCursor<I>
where
    I: Iterator<Item = Result<Entry, E>>,
    E: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    fn new(entries: I, base_len: u64) -> Result<Self, Error> {
        let mut cursor = BaseCursor {
            entries,
            start: 0,
            current: None,
            previous: None,
            base_len,
        };
        cursor.load()?;
        Ok(cursor)
    }

    fn load(&mut self) -> Result<(), Error> {
        self.current = match self.entries.next() {
            None if self.start < self.base_len => {
                return Err(Error::BadBase(format!(
                    "entries end at {} of {} bytes",
                    self.start, self.base_len
                )))
            }
            None => None,
            Some(Err(e)) => return Err(Error::Caller(e.into())),
            Some(Ok(entry)) => {
                if entry.len == 0 || self.start + entry.len > self.base_len {
                    return Err(Error::BadBase(format!(
                        "entry at {} of length {} does not fit in {} bytes",
                        self.start, entry.len, self.base_len
                    )));
                }
                Some(entry)
            }
        };
        Ok(())
    }

    fn step(&mut self) -> Result<(), Error> {
        if let Some(entry) = self.current {
            self.start += entry.len;
            self.previous = Some(entry);
            self.load()?;
        }
        Ok(())
    }

    /// Moves to the first base boundary at or after `pos`.
    fn skip_to(&mut self, pos: u64) -> Result<(), Error> {
        while self.current.is_some() && self.start < pos {
            self.step()?;
        }
        Ok(())
    }
}

impl<I> BaseCursor<I> {
    /// Whether the base's bytes `pos..pos + len` are all zeros, judged by
    /// the zero entries `previous` and `current` (after `skip_to(pos)`);
    /// `false` when they do not cover the range.
    fn zeros(&self, pos: u64, len: u64) -> bool {
        let Some(current) = self.current.filter(|e| e.id.is_zero()) else {
            return false;
        };
        let from = match self.previous {
            Some(p) if self.start > pos && p.id.is_zero() => self.start - p.len,
            _ => self.start,
        };
        from <= pos && pos + len <= self.start + current.len
    }
}

/// The new image as the walk reads it: zero extents of the map are
/// filled in, everything else comes from `source`.
struct Reader<'a, S> {
    source: S,
    map: &'a ChangeMap,
    bytes_read: u64,
}

impl<S> Reader<'_, S>
where
    S: FnMut(u64, &mut [u8]) -> std::io::Result<()>,
{
    fn read(&mut self, offset: u64, buf: &mut [u8]) -> Result<(), Error> {
        let end = offset + buf.len() as u64;
        let extents = self.map.extents();
        let mut i = self.map.first_ending_after(offset);
        let mut at = offset;
        while at < end {
            while extents
                .get(i)
                .is_some_and(|e| e.kind != Kind::Zero && e.offset < end)
            {
                i += 1;
            }
            let (read_to, zero_to) = match extents.get(i).filter(|e| e.offset < end) {
                Some(zero) => (zero.offset.max(at), zero.end().min(end)),
                None => (end, end),
            };
            if read_to > at {
                let piece = &mut buf[(at - offset) as usize..(read_to - offset) as usize];
                (self.source)(at, piece).map_err(|source| Error::Source { offset: at, source })?;
                self.bytes_read += piece.len() as u64;
            }
            buf[(read_to - offset) as usize..(zero_to - offset) as usize].fill(0);
            at = zero_to;
            i += 1;
        }
        Ok(())
    }
}

/// Whether the new image's bytes `pos..pos + len` are known to be zeros
/// without reading them: a zero extent of the map covers them, or the base
/// has zeros there and the map lists no data change in the range.
fn known_zeros<I>(base: &BaseCursor<I>, map: &ChangeMap, pos: u64, len: u64, new_len: u64) -> bool {
    let end = pos + len;
    if end > new_len {
        return false;
    }
    let extents = map.extents();
    let mut i = map.first_ending_after(pos);
    let mut zero_extents_cover = false;
    while let Some(e) = extents.get(i).filter(|e| e.offset < end) {
        if e.kind != Kind::Zero {
            return false;
        }
        zero_extents_cover |= e.offset <= pos && end <= e.end();
        i += 1;
    }
    zero_extents_cover || (end <= base.base_len && base.zeros(pos, len))
}

/// Walks the new image of `new_len` bytes against the base manifest
/// (`base`, describing `base_len` bytes) and the map of what changed,
/// handing each piece of the new manifest to `emit` in order.
///
/// `source(offset, buf)` fills `buf` with the new image's bytes at
/// `offset` (exactly; it is never asked beyond `new_len`).
#[allow(clippy::too_many_arguments)]
pub fn walk<I, E, S, F>(
    chunker: &Chunker,
    base: I,
    base_len: u64,
    map: &ChangeMap,
    new_len: u64,
    source: S,
    options: Options,
    mut emit: F,
) -> Result<Report, Error>
where
    I: Iterator<Item = Result<Entry, E>>,
    E: Into<Box<dyn std::error::Error + Send + Sync>>,
    S: FnMut(u64, &mut [u8]) -> std::io::Result<()>,
    F: FnMut(Piece<'_>) -> Result<(), Box<dyn std::error::Error + Send + Sync>>,
{
    let read_len = options.read_len.max(4096);
    let mut base = BaseCursor::new(base, base_len)?;
    let mut reader = Reader {
        source,
        map,
        bytes_read: 0,
    };
    let mut report = Report::default();
    let mut buf: Vec<u8> = Vec::new();
    let mut zeros: Vec<u8> = Vec::new();
    let mut pos = 0u64;

    // The entry at a shared boundary `at` can be reused when its bytes are
    // unchanged and it is cut the same way in the new image.
    let reusable = |base: &BaseCursor<I>, at: u64| -> Option<Entry> {
        let entry = base.current.filter(|_| base.start == at)?;
        let end = at + entry.len;
        let cut_by_end = end == base_len && base_len != new_len;
        let changed = match map.extents().get(map.first_ending_after(at)) {
            Some(e) => e.offset < end,
            None => false,
        };
        let grown = end > base_len.min(new_len);
        (!cut_by_end && !changed && !grown).then_some(entry)
    };

    while pos < new_len {
        if let Some(entry) = reusable(&base, pos) {
            let sampled = report.bytes_sampled as f64 * 100.0;
            let due = options.sample_percent
                * (report.bytes_reused + report.bytes_zeros + entry.len) as f64;
            if sampled < due {
                check(&mut reader, &mut buf, pos, entry)?;
                report.bytes_sampled += entry.len;
            }
            emit(Piece::Reused(entry)).map_err(Error::Caller)?;
            report.chunks_reused += 1;
            report.bytes_reused += entry.len;
            pos += entry.len;
            base.step()?;
            continue;
        }
        // Re-chunk from `pos` until the chains meet again.
        let mut start = pos; // image offset of buf[0]
        buf.clear();
        loop {
            let at = (pos - start) as usize;
            // In a run of zeros every chunk is `max_len` zeros (the
            // chunker's contract), but the new cuts may keep a different
            // phase from the base's to the run's end: through a volume's
            // holes that can be most of it. Cut what is known to be zeros
            // without reading or scanning it.
            let max = chunker.params().max_len as u64;
            if ((buf.len() - at) as u64) < max && known_zeros(&base, map, pos, max, new_len) {
                let sampled = report.bytes_sampled as f64 * 100.0;
                let due = options.sample_percent
                    * (report.bytes_reused + report.bytes_zeros + max) as f64;
                if sampled < due {
                    check(
                        &mut reader,
                        &mut buf,
                        pos,
                        Entry {
                            len: max,
                            id: ChunkId::ZERO,
                        },
                    )?;
                    report.bytes_sampled += max;
                }
                zeros.resize(max as usize, 0);
                emit(Piece::Read {
                    offset: pos,
                    data: &zeros,
                    zero: true,
                })
                .map_err(Error::Caller)?;
                report.chunks_read += 1;
                report.bytes_chunked += max;
                report.bytes_zeros += max;
                pos += max;
                buf.clear();
                start = pos;
                if pos == new_len {
                    break;
                }
                base.skip_to(pos)?;
                if reusable(&base, pos).is_some() {
                    break;
                }
                continue;
            }
            let eof = start + buf.len() as u64 == new_len;
            // A cut found in fewer than `max_len` bytes is final (the
            // chunker's contract), so read ahead only as far as needed.
            let Some(cut) = chunker.next_cut(&buf[at..], eof) else {
                buf.drain(..at);
                start = pos;
                let from = start + buf.len() as u64;
                let want = (read_len as u64).min(new_len - from) as usize;
                let old = buf.len();
                buf.resize(old + want, 0);
                reader.read(from, &mut buf[old..])?;
                continue;
            };
            let data = &buf[at..at + cut.end];
            emit(Piece::Read {
                offset: pos,
                data,
                zero: cut.zero,
            })
            .map_err(Error::Caller)?;
            report.chunks_read += 1;
            report.bytes_chunked += cut.end as u64;
            pos += cut.end as u64;
            if pos == new_len {
                break;
            }
            base.skip_to(pos)?;
            if reusable(&base, pos).is_some() {
                break;
            }
        }
    }
    report.bytes_read = reader.bytes_read;
    Ok(report)
}

/// Reads a reused entry back from the source and checks it against its id.
fn check<S>(
    reader: &mut Reader<'_, S>,
    buf: &mut Vec<u8>,
    offset: u64,
    entry: Entry,
) -> Result<(), Error>
where
    S: FnMut(u64, &mut [u8]) -> std::io::Result<()>,
{
    buf.clear();
    buf.resize(entry.len as usize, 0);
    reader.read(offset, buf)?;
    let same = if entry.id.is_zero() {
        is_zero(buf)
    } else {
        ChunkId::of(buf) == entry.id
    };
    if same {
        Ok(())
    } else {
        Err(Error::MapWrong {
            offset,
            len: entry.len,
            id: entry.id.to_hex(),
        })
    }
}
