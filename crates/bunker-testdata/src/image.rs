//! SAN-like block-device test images.
//!
//! Uniform random data makes every backup tool look the same: nothing dedups,
//! nothing compresses, and fixed-size and content-defined chunking score
//! identically. A real SAN volume is different, so this module models one:
//!
//! - long all-zero runs (thin-provisioned space), ~30 % of the volume;
//! - compressible filesystem content, ~35 %: log files, NDJSON records and
//!   fixed-width database pages, in 4 KiB-aligned files whose last block is
//!   zero-padded;
//! - incompressible data (media, encrypted blocks), ~25 %;
//! - duplicated files, ~10 %: copies of earlier files placed again at 4 KiB
//!   (not chunk) alignment.
//!
//! Each following day ([`Image::new`] with `day > 0`) is derived from the
//! previous one: about [`ImageSpec::change_percent`] of the 4 KiB blocks are
//! rewritten (mostly clustered runs of 8-512 blocks, plus a few hot metadata
//! zones rewritten every day), a few regions are shifted by inserting or
//! deleting 1-3000 bytes at unaligned offsets (a file edited in place: the
//! region up to the end of the "file" moves, alignment is restored after it),
//! and the volume grows by ~0.5 %.
//!
//! An image is an ordered list of extents, each a window into a pure content
//! stream (`(kind, seed)` → bytes, computable per 4 KiB block without generating
//! anything before it). Days are transformations of that list, so nothing but
//! the list (tens of thousands of entries) is ever held in memory and any image
//! streams at GB/s. Everything is derived from [`ImageSpec::seed`] with our own
//! integer range helpers, so output does not change with `rand`'s algorithms.

use std::io::{self, Read, Write};
use std::sync::{Arc, OnceLock};

use rand::{RngCore, SeedableRng};
use rand_xoshiro::Xoshiro256PlusPlus;

const KIB: u64 = 1024;
const MIB: u64 = 1024 * KIB;
const GIB: u64 = 1024 * MIB;
const TIB: u64 = 1024 * GIB;

/// Filesystem block size: files start on it, content streams are generated in it.
const BLOCK: u64 = 4096;
const BLOCK_USIZE: usize = BLOCK as usize;

/// Target share (percent of bytes) of a generated region, by category.
/// Log, JSON and database files make up the ~35 % of compressible content.
const TARGET: [u64; 6] = [30, 14, 7, 14, 25, 10];
const CAT_ZERO: usize = 0;
const CAT_LOG: usize = 1;
const CAT_JSON: usize = 2;
const CAT_RECORDS: usize = 3;
const CAT_RANDOM: usize = 4;
const CAT_DUP: usize = 5;

/// Unaligned insert/delete pairs per day.
const SHIFT_EDITS: usize = 3;
const SHIFT_MAX_BYTES: u64 = 3000;
/// Hot metadata zones, rewritten every day at fixed offsets.
const HOT_ZONES: u64 = 4;
const HOT_ZONE_MAX: u64 = MIB;
/// Minimum daily growth, so that day d+1 is always longer than day d.
const APPEND_MIN: u64 = 64 * KIB;

const WRITE_BUF: usize = MIB as usize;

const TAG_LAYOUT: u64 = 0x4c41_594f_5554;
const TAG_DAY: u64 = 0x0044_4159;

/// What to generate.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ImageSpec {
    /// Everything is derived from this seed.
    pub seed: u64,
    /// Day-0 size in bytes; later days grow by ~0.5 % a day.
    pub size: u64,
    /// Approximate percentage of 4 KiB blocks rewritten per day (default 2.0).
    pub change_percent: f64,
}

impl ImageSpec {
    /// A spec with the default daily change rate of 2 %.
    pub fn new(seed: u64, size: u64) -> Self {
        Self {
            seed,
            size,
            change_percent: 2.0,
        }
    }
}

/// The image of one day (0 = initial) as a stream whose length is known up front.
///
/// Cheap to clone; rendering never holds more than one buffer of the image.
#[derive(Debug, Clone)]
pub struct Image {
    extents: Arc<[Extent]>,
    len: u64,
}

impl Image {
    /// Builds the extent list of `day` by replaying days `1..=day` over day 0.
    pub fn new(spec: &ImageSpec, day: u32) -> Image {
        let (layout, _) = build(spec, day);
        Image {
            len: layout.len,
            extents: layout.extents.into(),
        }
    }

    /// Length of the image in bytes.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether the image has no bytes (only for a zero `size` on day 0).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The byte ranges of this image that may differ from `prev` at the
    /// same offsets, in order: `(offset, len, zero)`, `zero` when the
    /// range now reads as zeros. Bytes outside the ranges are equal by
    /// construction (the same stream at the same stream offset); bytes
    /// past `prev`'s end are all listed. This is the ground truth a
    /// changed-extent backup of the day is tested against: edits, shifted
    /// regions up to where alignment is restored, and growth.
    pub fn changes_since(&self, prev: &Image) -> Vec<(u64, u64, bool)> {
        let mut out: Vec<(u64, u64, bool)> = Vec::new();
        let mut push = |offset: u64, len: u64, zero: bool| {
            if len == 0 {
                return;
            }
            if let Some(last) = out.last_mut() {
                if last.0 + last.1 == offset && last.2 == zero {
                    last.1 += len;
                    return;
                }
            }
            out.push((offset, len, zero));
        };
        let (mut i, mut j) = (0usize, 0usize);
        // Start of extent i of `self` and of extent j of `prev`.
        let (mut si, mut sj) = (0u64, 0u64);
        let mut pos = 0u64;
        while pos < self.len {
            let new = self.extents[i];
            let new_end = si + new.len;
            let Some(&old) = prev.extents.get(j) else {
                push(pos, self.len - pos, false);
                break;
            };
            let old_end = sj + old.len;
            let end = new_end.min(old_end);
            let a = new.slice(pos - si, end - pos);
            let b = old.slice(pos - sj, end - pos);
            let same =
                a.content == b.content && (a.content == Content::Zero || a.offset == b.offset);
            if !same {
                push(pos, end - pos, a.content == Content::Zero);
            }
            pos = end;
            if pos == new_end {
                si = new_end;
                i += 1;
            }
            if pos == old_end {
                sj = old_end;
                j += 1;
            }
        }
        out
    }

    /// A fresh stream over the image's bytes.
    pub fn reader(&self) -> ImageReader {
        ImageReader {
            extents: Arc::clone(&self.extents),
            idx: 0,
            off: 0,
            cache: BlockCache::default(),
        }
    }

    /// Writes the whole image to `out` (then flushes it) and returns the byte count.
    pub fn write_to(&self, out: &mut impl Write) -> io::Result<u64> {
        let mut reader = self.reader();
        let mut buf = vec![0u8; WRITE_BUF];
        let mut total = 0u64;
        loop {
            let n = reader.fill(&mut buf);
            if n == 0 {
                break;
            }
            out.write_all(&buf[..n])?;
            total += n as u64;
        }
        out.flush()?;
        Ok(total)
    }
}

/// Streams an [`Image`]; every `read` fills the buffer completely until the end.
#[derive(Debug)]
pub struct ImageReader {
    extents: Arc<[Extent]>,
    /// Current extent and the offset inside it.
    idx: usize,
    off: u64,
    cache: BlockCache,
}

impl ImageReader {
    fn fill(&mut self, buf: &mut [u8]) -> usize {
        let mut done = 0;
        while done < buf.len() {
            let Some(&e) = self.extents.get(self.idx) else {
                break;
            };
            let n = (e.len - self.off).min((buf.len() - done) as u64) as usize;
            render(
                e.content,
                e.offset + self.off,
                &mut buf[done..done + n],
                &mut self.cache,
            );
            done += n;
            self.off += n as u64;
            if self.off == e.len {
                self.idx += 1;
                self.off = 0;
            }
        }
        done
    }
}

impl Read for ImageReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        Ok(self.fill(buf))
    }
}

/// Parses sizes like "64M", "1G", "4GiB", "512k", "1.5G" or "1000" (bytes).
/// Suffixes are case-insensitive powers of 1024.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, suffix) = t.split_at(split);
    let mult = match suffix.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => KIB,
        "m" | "mb" | "mib" => MIB,
        "g" | "gb" | "gib" => GIB,
        "t" | "tb" | "tib" => TIB,
        other => return Err(format!("invalid size {s:?}: unknown unit {other:?}")),
    };
    if num.is_empty() {
        return Err(format!("invalid size {s:?}: missing number"));
    }
    if let Ok(n) = num.parse::<u64>() {
        return n
            .checked_mul(mult)
            .ok_or_else(|| format!("invalid size {s:?}: too large"));
    }
    let f: f64 = num
        .parse()
        .map_err(|_| format!("invalid size {s:?}: bad number {num:?}"))?;
    let bytes = (f * mult as f64).round();
    if !bytes.is_finite() || bytes >= u64::MAX as f64 {
        return Err(format!("invalid size {s:?}: too large"));
    }
    Ok(bytes as u64)
}

// ---------------------------------------------------------------------------
// Extents and layout

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Flavor {
    Log,
    Json,
}

/// A pure content stream: byte `i` depends only on the variant, its seed and `i`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Content {
    Zero,
    /// Media / encrypted data.
    Random {
        seed: u64,
    },
    /// Log lines or NDJSON records.
    Text {
        seed: u64,
        flavor: Flavor,
    },
    /// Database pages holding fixed-width rows of `width` bytes.
    Records {
        seed: u64,
        width: u16,
    },
}

/// `len` bytes of `content`'s stream starting at stream offset `offset`.
#[derive(Debug, Clone, Copy)]
struct Extent {
    len: u64,
    offset: u64,
    content: Content,
}

impl Extent {
    fn new(content: Content, offset: u64, len: u64) -> Self {
        Self {
            len,
            offset,
            content,
        }
    }

    fn zero(len: u64) -> Self {
        Self::new(Content::Zero, 0, len)
    }

    fn slice(&self, from: u64, len: u64) -> Self {
        let offset = match self.content {
            Content::Zero => 0,
            _ => self.offset + from,
        };
        Self::new(self.content, offset, len)
    }
}

/// Appends `e`, merging it into the previous extent when it continues it, so
/// that splitting and re-joining during daily edits does not bloat the list.
fn push_merged(v: &mut Vec<Extent>, e: Extent) {
    if e.len == 0 {
        return;
    }
    if let Some(last) = v.last_mut() {
        if last.content == e.content
            && (e.content == Content::Zero || last.offset + last.len == e.offset)
        {
            last.len += e.len;
            return;
        }
    }
    v.push(e);
}

#[derive(Debug, Default)]
struct Layout {
    extents: Vec<Extent>,
    len: u64,
    /// Files written so far: the sources of duplicates.
    files: Vec<Extent>,
}

/// An edit in the previous day's coordinates: drop `remove` bytes at `start`
/// and put `insert` there instead.
#[derive(Debug, Clone, Copy)]
struct Op {
    start: u64,
    remove: u64,
    insert: Option<Extent>,
}

impl Op {
    /// Range occupied by the edit; pure inserts occupy one byte so that two
    /// edits never land on the same spot.
    fn span(&self) -> (u64, u64) {
        (self.start, self.start + self.remove.max(1))
    }
}

fn overlaps(a: (u64, u64), b: (u64, u64)) -> bool {
    a.0 < b.1 && b.0 < a.1
}

/// Builds the layout of `day`; also returns the unaligned edit offsets of that
/// day (empty for day 0).
fn build(spec: &ImageSpec, day: u32) -> (Layout, Vec<u64>) {
    let mut layout = Layout::default();
    let mut rng = rng_for(spec.seed, TAG_LAYOUT, 0);
    layout.fill_region(&mut rng, spec.size);
    let mut shifts = Vec::new();
    for d in 1..=day {
        shifts = layout.advance_day(spec, d);
    }
    (layout, shifts)
}

impl Layout {
    fn push(&mut self, e: Extent) {
        self.len += e.len;
        push_merged(&mut self.extents, e);
    }

    /// Places a file at the (4 KiB-aligned) end, zero-padding its last block;
    /// returns the bytes used (at most `room`).
    fn add_file(&mut self, file: Extent, room: u64, catalog: bool) -> u64 {
        let len = file.len.min(room);
        let pad = (round_up(len, BLOCK) - len).min(room - len);
        let file = Extent { len, ..file };
        self.push(file);
        self.push(Extent::zero(pad));
        if catalog {
            self.files.push(file);
        }
        len + pad
    }

    /// Appends `region` bytes of new volume content with the target mix.
    fn fill_region(&mut self, rng: &mut Xoshiro256PlusPlus, region: u64) {
        // Scale run and file sizes down for small regions so that the mix
        // still holds on a 64 MiB image or a 1 MiB daily append.
        let zero_max = (region / 16).clamp(MIB, 64 * MIB);
        let file_cap = (region / 8).max(64 * KIB);
        let look = (region / 8).clamp(MIB, 256 * MIB);
        let mut have = [0u64; TARGET.len()];
        let mut pos = 0;
        while pos < region {
            let room = region - pos;
            // Pick categories in proportion to how far each lags its target
            // share (a little ahead of `pos`): random, yet on target by bytes.
            let mut weights = [0u64; TARGET.len()];
            for (i, w) in weights.iter_mut().enumerate() {
                *w = (TARGET[i] * (pos + look) / 100).saturating_sub(have[i]);
            }
            if weights.iter().all(|&w| w == 0) {
                weights = TARGET;
            }
            if self.files.is_empty() {
                weights[CAT_DUP] = 0;
            }
            let cat = pick(rng, &weights);
            let seed = rng.next_u64();
            let used = match cat {
                CAT_ZERO => {
                    let n = round_up(log_uniform(rng, MIB, zero_max), BLOCK).min(room);
                    self.push(Extent::zero(n));
                    n
                }
                CAT_LOG | CAT_JSON => {
                    let flavor = if cat == CAT_LOG {
                        Flavor::Log
                    } else {
                        Flavor::Json
                    };
                    let len = log_uniform(rng, 512, (2 * MIB).min(file_cap));
                    let file = Extent::new(Content::Text { seed, flavor }, 0, len);
                    self.add_file(file, room, true)
                }
                CAT_RECORDS => {
                    let width = RECORD_WIDTHS[below(rng, RECORD_WIDTHS.len() as u64) as usize];
                    let pages = log_uniform(rng, 4, 4096).min(file_cap / BLOCK).max(1);
                    // The last page is partly written; the file's pad zeroes the rest.
                    let len = pages * BLOCK - below(rng, BLOCK - 64);
                    let file = Extent::new(Content::Records { seed, width }, 0, len);
                    self.add_file(file, room, true)
                }
                CAT_RANDOM => {
                    let len = log_uniform(rng, 8 * KIB, (16 * MIB).min(file_cap));
                    self.add_file(Extent::new(Content::Random { seed }, 0, len), room, true)
                }
                _ => {
                    let f = self.files[below(rng, self.files.len() as u64) as usize];
                    let copy = if f.len > 2 * BLOCK && below(rng, 100) < 30 {
                        // Part of a file, starting on one of its blocks.
                        let from = below(rng, f.len / BLOCK) * BLOCK;
                        let len = between(rng, BLOCK, f.len - from);
                        f.slice(from, len)
                    } else {
                        f
                    };
                    self.add_file(copy, room, false)
                }
            };
            have[cat] += used;
            pos += used;
        }
    }

    /// Offsets at which each extent starts.
    fn starts(&self) -> Vec<u64> {
        let mut pos = 0;
        self.extents
            .iter()
            .map(|e| {
                let s = pos;
                pos += e.len;
                s
            })
            .collect()
    }

    /// Turns day `day - 1` into day `day`; returns the unaligned edit offsets.
    fn advance_day(&mut self, spec: &ImageSpec, day: u32) -> Vec<u64> {
        let mut rng = rng_for(spec.seed, TAG_DAY, u64::from(day));
        let len = self.len;
        let mut shift_ops: Vec<Op> = Vec::new();
        let mut shift_points = Vec::new();
        let mut ops: Vec<Op> = Vec::new();

        if len >= 64 * KIB {
            let starts = self.starts();
            let content_at = |pos: u64| {
                let i = starts.partition_point(|&s| s <= pos) - 1;
                self.extents[i].content
            };

            // Unaligned insert/delete pairs: the bytes between the edit and its
            // compensation (the rest of the edited "file") move by 1-3000 bytes.
            let region_max = (len / 64).clamp(64 * KIB, 16 * MIB);
            for _ in 0..SHIFT_EDITS {
                for _attempt in 0..32 {
                    let x = below(&mut rng, len);
                    // Edits happen in files, not in unallocated space.
                    if x % BLOCK == 0 || content_at(x) == Content::Zero {
                        continue;
                    }
                    let k = between(&mut rng, 1, SHIFT_MAX_BYTES);
                    let y =
                        x + log_uniform(&mut rng, 64 * KIB, region_max) + below(&mut rng, BLOCK);
                    if y + k > len {
                        continue;
                    }
                    let pair = if below(&mut rng, 2) == 0 {
                        let text = Content::Text {
                            seed: rng.next_u64(),
                            flavor: Flavor::Log,
                        };
                        [
                            Op {
                                start: x,
                                remove: 0,
                                insert: Some(Extent::new(text, 0, k)),
                            },
                            Op {
                                start: y,
                                remove: k,
                                insert: None,
                            },
                        ]
                    } else {
                        [
                            Op {
                                start: x,
                                remove: k,
                                insert: None,
                            },
                            Op {
                                start: y,
                                remove: 0,
                                insert: Some(Extent::zero(k)),
                            },
                        ]
                    };
                    if pair
                        .iter()
                        .any(|p| shift_ops.iter().any(|s| overlaps(p.span(), s.span())))
                    {
                        continue;
                    }
                    shift_ops.extend(pair);
                    shift_points.push(x);
                    break;
                }
            }

            let blocks = len / BLOCK;
            let pct = if spec.change_percent.is_finite() {
                spec.change_percent.clamp(0.0, 100.0)
            } else {
                0.0
            };
            let budget = (blocks as f64 * pct / 100.0) as u64;
            let mut spent = 0;
            // Rewrites never touch the shift edits, so every insert keeps its
            // compensating delete and alignment is restored after the region.
            let mut replace = |block: u64, n: u64, content: Content| {
                let span = (block * BLOCK, (block + n) * BLOCK);
                if shift_ops.iter().any(|s| overlaps(s.span(), span)) {
                    return;
                }
                ops.push(Op {
                    start: span.0,
                    remove: n * BLOCK,
                    insert: Some(Extent::new(content, 0, n * BLOCK)),
                });
            };

            // Hot metadata zones (think superblock, inode tables, DB journals):
            // the same offsets every day, at most a quarter of the budget.
            let zone = (budget / (4 * HOT_ZONES)).min(HOT_ZONE_MAX / BLOCK);
            let stride = spec.size / HOT_ZONES / BLOCK;
            if zone > 0 {
                for i in 0..HOT_ZONES {
                    let b = i * stride;
                    if b + zone <= blocks {
                        let seed = rng.next_u64();
                        replace(b, zone, Content::Records { seed, width: 128 });
                        spent += zone;
                    }
                }
            }
            // Mostly clustered rewrites, the rest scattered small ones.
            let clustered = spent + budget.saturating_sub(spent) * 9 / 10;
            while spent < budget {
                let n = if spent < clustered {
                    log_uniform(&mut rng, 8, 512)
                } else {
                    between(&mut rng, 1, 4)
                }
                .min(blocks);
                let b = below(&mut rng, blocks - n + 1);
                let content = fresh_like(&mut rng, content_at(b * BLOCK));
                replace(b, n, content);
                spent += n;
            }
        }

        ops.extend(shift_ops);
        ops.sort_by_key(|o| o.start);
        self.apply(&ops);

        // Growth: new files at the end, keeping the volume block-aligned.
        let grow = (self.len / 200).max(APPEND_MIN);
        let append = round_up(self.len + grow, BLOCK) - self.len;
        self.fill_region(&mut rng, append);
        shift_points
    }

    /// Applies sorted edits in one sweep; edits overlapping an earlier one are dropped.
    fn apply(&mut self, ops: &[Op]) {
        let old = std::mem::take(&mut self.extents);
        let mut out = Vec::with_capacity(old.len() + 2 * ops.len() + 8);
        let mut cur = Cursor {
            extents: &old,
            idx: 0,
            off: 0,
            pos: 0,
        };
        let mut end = 0;
        for op in ops {
            if op.start < end || op.start + op.remove > self.len {
                continue;
            }
            cur.advance(op.start - cur.pos, Some(&mut out));
            if let Some(e) = op.insert {
                push_merged(&mut out, e);
            }
            cur.advance(op.remove, None);
            end = op.start + op.remove;
        }
        cur.advance(self.len - cur.pos, Some(&mut out));
        self.len = out.iter().map(|e| e.len).sum();
        self.extents = out;
    }
}

struct Cursor<'a> {
    extents: &'a [Extent],
    idx: usize,
    off: u64,
    pos: u64,
}

impl Cursor<'_> {
    /// Moves `n` bytes forward, copying what it passes over to `out` if given.
    fn advance(&mut self, mut n: u64, mut out: Option<&mut Vec<Extent>>) {
        while n > 0 {
            let Some(e) = self.extents.get(self.idx) else {
                return;
            };
            let take = n.min(e.len - self.off);
            if let Some(out) = out.as_deref_mut() {
                push_merged(out, e.slice(self.off, take));
            }
            self.off += take;
            self.pos += take;
            n -= take;
            if self.off == e.len {
                self.idx += 1;
                self.off = 0;
            }
        }
    }
}

/// New content for a rewritten range: same kind as before (a DB page stays a
/// DB page), fresh data; unallocated space gets a random kind.
fn fresh_like(rng: &mut Xoshiro256PlusPlus, old: Content) -> Content {
    let seed = rng.next_u64();
    match old {
        Content::Random { .. } => Content::Random { seed },
        Content::Text { flavor, .. } => Content::Text { seed, flavor },
        Content::Records { width, .. } => Content::Records { seed, width },
        Content::Zero => match pick(rng, &[35, 15, 20, 30]) {
            0 => Content::Text {
                seed,
                flavor: Flavor::Log,
            },
            1 => Content::Text {
                seed,
                flavor: Flavor::Json,
            },
            2 => Content::Records { seed, width: 128 },
            _ => Content::Random { seed },
        },
    }
}

// ---------------------------------------------------------------------------
// Deterministic randomness

fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

fn rng_for(seed: u64, tag: u64, n: u64) -> Xoshiro256PlusPlus {
    Xoshiro256PlusPlus::seed_from_u64(splitmix64(seed ^ splitmix64(tag ^ splitmix64(n))))
}

/// Per-block generator: makes any block of a stream computable on its own.
fn block_rng(seed: u64, block: u64) -> Xoshiro256PlusPlus {
    Xoshiro256PlusPlus::seed_from_u64(seed ^ splitmix64(block))
}

/// Uniform in `0..n` (0 if `n == 0`), by multiply-shift.
fn below(rng: &mut impl RngCore, n: u64) -> u64 {
    ((u128::from(rng.next_u64()) * u128::from(n)) >> 64) as u64
}

/// Uniform in `lo..=hi`.
fn between(rng: &mut impl RngCore, lo: u64, hi: u64) -> u64 {
    lo + below(rng, hi.saturating_sub(lo) + 1)
}

/// Roughly log-uniform in `lo..=hi` (uniform power of two, then uniform
/// within it): many small items, a few large ones.
fn log_uniform(rng: &mut impl RngCore, lo: u64, hi: u64) -> u64 {
    let lo = lo.max(1);
    let hi = hi.max(lo);
    let (lo_e, hi_e) = (lo.ilog2(), hi.ilog2());
    let e = lo_e + below(rng, u64::from(hi_e - lo_e) + 1) as u32;
    let v = (1u64 << e) + below(rng, 1u64 << e);
    v.clamp(lo, hi)
}

/// Index picked with probability proportional to its weight.
fn pick(rng: &mut impl RngCore, weights: &[u64]) -> usize {
    let mut r = below(rng, weights.iter().sum());
    for (i, &w) in weights.iter().enumerate() {
        if r < w {
            return i;
        }
        r -= w;
    }
    0
}

fn round_up(x: u64, to: u64) -> u64 {
    x.div_ceil(to) * to
}

// ---------------------------------------------------------------------------
// Rendering

/// The last partially used block, so that small or unaligned reads do not
/// regenerate the same 4 KiB over and over.
#[derive(Debug)]
struct BlockCache {
    key: Option<(Content, u64)>,
    buf: Box<[u8; BLOCK_USIZE]>,
}

impl Default for BlockCache {
    fn default() -> Self {
        Self {
            key: None,
            buf: Box::new([0; BLOCK_USIZE]),
        }
    }
}

impl BlockCache {
    fn get(&mut self, content: Content, block: u64) -> &[u8; BLOCK_USIZE] {
        if self.key != Some((content, block)) {
            gen_block(content, block, &mut self.buf[..]);
            self.key = Some((content, block));
        }
        &self.buf
    }
}

/// Writes `out.len()` bytes of `content`'s stream starting at `offset`.
fn render(content: Content, offset: u64, out: &mut [u8], cache: &mut BlockCache) {
    if content == Content::Zero {
        out.fill(0);
        return;
    }
    let mut pos = offset;
    let mut done = 0;
    while done < out.len() {
        let block = pos / BLOCK;
        let within = (pos % BLOCK) as usize;
        let n = (BLOCK_USIZE - within).min(out.len() - done);
        let dst = &mut out[done..done + n];
        if n == BLOCK_USIZE {
            // Aligned whole block (the common case): generate in place.
            gen_block(content, block, dst);
        } else {
            dst.copy_from_slice(&cache.get(content, block)[within..within + n]);
        }
        pos += n as u64;
        done += n;
    }
}

/// Generates block `block` (4096 bytes) of a content stream into `out`.
fn gen_block(content: Content, block: u64, out: &mut [u8]) {
    match content {
        Content::Zero => out.fill(0),
        Content::Random { seed } => block_rng(seed, block).fill_bytes(out),
        Content::Text { seed, flavor } => fill_text(seed, flavor, block, out),
        Content::Records { seed, width } => fill_page(seed, width, block, out),
    }
}

/// Start of a stream's clock (epoch ms), somewhere in a year from Nov 2023.
fn base_ms(seed: u64) -> u64 {
    1_700_000_000_000 + seed % (365 * 86_400_000)
}

/// Average log time per 4 KiB block: keeps timestamps roughly increasing
/// through a file although every block is generated independently.
const MS_PER_BLOCK: u64 = 8_000;
const MAX_LINE: usize = 256;

fn fill_text(seed: u64, flavor: Flavor, block: u64, out: &mut [u8]) {
    let bank = templates(flavor);
    let mut rng = block_rng(seed, block);
    let mut clock = Clock::new(base_ms(seed) + block * MS_PER_BLOCK);
    let mut line = [0u8; MAX_LINE];
    let n = bank.len() as u64;

    // Lines straddle blocks in a real file: begin with the tail of one.
    let t = &bank[below(&mut rng, n) as usize];
    t.render(&mut line[..t.bytes.len()], &mut rng, &mut clock);
    let skip = below(&mut rng, t.bytes.len() as u64) as usize;
    let mut pos = (t.bytes.len() - skip).min(out.len());
    out[..pos].copy_from_slice(&line[skip..skip + pos]);

    while pos < out.len() {
        let t = &bank[below(&mut rng, n) as usize];
        let end = pos + t.bytes.len();
        if end <= out.len() {
            t.render(&mut out[pos..end], &mut rng, &mut clock);
            pos = end;
        } else {
            t.render(&mut line[..t.bytes.len()], &mut rng, &mut clock);
            let rest = out.len() - pos;
            out[pos..].copy_from_slice(&line[..rest]);
            pos = out.len();
        }
    }
}

/// Row widths of the generated database tables.
const RECORD_WIDTHS: [u16; 5] = [64, 96, 128, 192, 256];
const PAGE_HEADER: usize = 32;
const NAMES: [&[u8]; 16] = [
    b"alice.schmidt",
    b"bob.meyer",
    b"carol.weber",
    b"dave.fischer",
    b"eve.wagner",
    b"frank.becker",
    b"grace.hoffmann",
    b"heidi.koch",
    b"ivan.richter",
    b"judy.klein",
    b"mallory.wolf",
    b"niaj.neumann",
    b"olivia.braun",
    b"peggy.zimmer",
    b"rupert.krause",
    b"sybil.hartmann",
];

/// A database page: header, 60-100 % of its capacity in fixed-width rows
/// (sequential ids, a few varying columns, constant filler), zeroed free space.
fn fill_page(seed: u64, width: u16, page: u64, out: &mut [u8]) {
    let w = usize::from(width);
    let cap = (out.len() - PAGE_HEADER) / w;
    let mut rng = block_rng(seed, page);
    let rows = cap * 3 / 5 + below(&mut rng, (cap - cap * 3 / 5 + 1) as u64) as usize;

    out[..8].copy_from_slice(b"BNKPAGE1");
    out[8..16].copy_from_slice(&page.to_le_bytes());
    out[16..24].copy_from_slice(&rng.next_u64().to_le_bytes()); // LSN
    out[24..26].copy_from_slice(&(rows as u16).to_le_bytes());
    out[26..28].copy_from_slice(&width.to_le_bytes());
    out[28..32].copy_from_slice(&(rng.next_u64() as u32).to_le_bytes()); // checksum

    let filler = row_filler();
    let ts0 = base_ms(seed);
    let mut at = PAGE_HEADER;
    for i in 0..rows {
        let rec = &mut out[at..at + w];
        rec[40..].copy_from_slice(&filler[40..w]);
        let id = page * cap as u64 + i as u64;
        let r = rng.next_u64();
        rec[..8].copy_from_slice(&id.to_le_bytes());
        rec[8..12].copy_from_slice(&((r as u32) % 1_000_000).to_le_bytes());
        rec[12..16].copy_from_slice(&(((r >> 32) as u32) % 10_000_000).to_le_bytes());
        rec[16..24].copy_from_slice(&(ts0 + id * 1_337).to_le_bytes());
        let name = NAMES[(r >> 60) as usize];
        rec[24..24 + name.len()].copy_from_slice(name);
        rec[24 + name.len()..40].fill(b' ');
        at += w;
    }
    out[at..].fill(0);
}

/// Constant trailing columns of a row (status, region, tier, padding).
fn row_filler() -> &'static [u8] {
    static FILLER: OnceLock<Vec<u8>> = OnceLock::new();
    FILLER.get_or_init(|| {
        b"ACTIVE  eu-central-1    standard  EUR \x01\x00\x00\x00"
            .iter()
            .copied()
            .cycle()
            .take(usize::from(RECORD_WIDTHS[RECORD_WIDTHS.len() - 1]))
            .collect()
    })
}

// Text templates: '#' runs are decimal digits, '$' runs hex digits, '@' a
// "YYYY-MM-DD HH:MM:SS.mmm" timestamp and '^' epoch milliseconds. Parsed once;
// rendering copies a line and stamps its fields, which is far cheaper than
// formatting every byte.
const LOG_TEMPLATES: &[&str] = &[
    "@ INFO  [http-worker-##] GET /api/v2/orders/####### 200 ## ms bytes=#####\n",
    "@ INFO  [http-worker-##] GET /api/v2/orders/####### 200 ### ms bytes=####\n",
    "@ INFO  [http-worker-##] POST /api/v2/checkout 201 ### ms req=$$$$$$$$-$$$$-$$$$\n",
    "@ INFO  [http-worker-##] GET /static/img/product_#####.jpg 304 # ms\n",
    "@ DEBUG [db-pool] acquired connection conn-### after # ms (active=##, idle=#)\n",
    "@ DEBUG [db] plan cache hit for stmt_$$$$$$$$ rows=#### elapsed=### us\n",
    "@ WARN  [scheduler] job backup-#### exceeded soft deadline by ### s\n",
    "@ ERROR [storage] write failed on /vol/data/seg-######.dat: errno=## (retry #/5)\n",
    "@ INFO  [auth] user u####### logged in from 10.##.##.### session=$$$$$$$$$$$$$$$$\n",
    "@ INFO  [gc] young collection freed ##### KiB in ## ms, heap ####/8192 MiB\n",
    "@ INFO  [replication] shipped segment ######## lsn=########## lag=### ms\n",
    "@ TRACE [net] conn $$$$$$$$ rx=####### tx=####### rtt=### us\n",
    "@ INFO  [kafka-consumer-#] committed offset ######### for partition orders-##\n",
    "@ WARN  [http-worker-##] slow request GET /api/v2/search?q=$$$$$$ took #### ms\n",
    "@ INFO  [cron] rotated /var/log/app/access.log.# (##### lines)\n",
];

const JSON_TEMPLATES: &[&str] = &[
    "{\"ts\":^,\"level\":\"info\",\"svc\":\"orders\",\"event\":\"order_created\",\"order_id\":#########,\"customer_id\":#######,\"items\":#,\"total\":####.##,\"currency\":\"EUR\"}\n",
    "{\"ts\":^,\"level\":\"info\",\"svc\":\"payments\",\"event\":\"payment_captured\",\"payment_id\":\"pay_$$$$$$$$$$$$$$$$\",\"amount\":###.##,\"psp\":\"acme\",\"latency_ms\":###}\n",
    "{\"ts\":^,\"level\":\"debug\",\"svc\":\"inventory\",\"event\":\"stock_update\",\"sku\":\"SKU-######\",\"warehouse\":\"WH-##\",\"delta\":-##,\"on_hand\":#####}\n",
    "{\"ts\":^,\"level\":\"warn\",\"svc\":\"gateway\",\"event\":\"rate_limited\",\"client\":\"$$$$$$$$\",\"path\":\"/v1/quotes\",\"limit\":####,\"window_s\":##}\n",
    "{\"ts\":^,\"level\":\"info\",\"svc\":\"search\",\"event\":\"query\",\"query_id\":\"$$$$$$$$-$$$$-$$$$-$$$$-$$$$$$$$$$$$\",\"hits\":####,\"took_ms\":##,\"shard\":#}\n",
    "{\"ts\":^,\"level\":\"info\",\"svc\":\"orders\",\"event\":\"order_shipped\",\"order_id\":#########,\"carrier\":\"dhl\",\"tracking\":\"JD##############\"}\n",
];

#[derive(Debug, Clone, Copy)]
enum FieldKind {
    Dec,
    Hex,
    DateTime,
    EpochMs,
}

#[derive(Debug, Clone, Copy)]
struct Field {
    at: usize,
    width: usize,
    kind: FieldKind,
}

#[derive(Debug)]
struct Template {
    bytes: Vec<u8>,
    fields: Vec<Field>,
}

impl Template {
    fn parse(src: &str) -> Template {
        let src = src.as_bytes();
        let mut bytes = Vec::with_capacity(src.len() + 32);
        let mut fields = Vec::new();
        let mut i = 0;
        while i < src.len() {
            let c = src[i];
            let (kind, width, consumed) = match c {
                b'#' | b'$' => {
                    let run = src[i..].iter().take_while(|&&b| b == c).count();
                    let kind = if c == b'#' {
                        FieldKind::Dec
                    } else {
                        FieldKind::Hex
                    };
                    (kind, run, run)
                }
                b'@' => (FieldKind::DateTime, 23, 1),
                b'^' => (FieldKind::EpochMs, 13, 1),
                _ => {
                    bytes.push(c);
                    i += 1;
                    continue;
                }
            };
            fields.push(Field {
                at: bytes.len(),
                width,
                kind,
            });
            bytes.resize(bytes.len() + width, b'0');
            i += consumed;
        }
        Template { bytes, fields }
    }

    /// Renders one line into `dst` (exactly `self.bytes.len()` long).
    fn render(&self, dst: &mut [u8], rng: &mut Xoshiro256PlusPlus, clock: &mut Clock) {
        dst.copy_from_slice(&self.bytes);
        clock.ms += 1 + below(rng, 2 * MS_PER_BLOCK / 40);
        for f in &self.fields {
            let d = &mut dst[f.at..f.at + f.width];
            match f.kind {
                FieldKind::Dec => stamp_dec(d, rng.next_u64()),
                FieldKind::Hex => stamp_hex(d, rng),
                FieldKind::DateTime => clock.stamp_datetime(d),
                FieldKind::EpochMs => write_dec(d, clock.ms),
            }
        }
    }
}

fn templates(flavor: Flavor) -> &'static [Template] {
    static BANKS: OnceLock<[Vec<Template>; 2]> = OnceLock::new();
    let banks = BANKS.get_or_init(|| {
        let parse = |src: &[&str]| src.iter().map(|s| Template::parse(s)).collect();
        [parse(LOG_TEMPLATES), parse(JSON_TEMPLATES)]
    });
    match flavor {
        Flavor::Log => &banks[0],
        Flavor::Json => &banks[1],
    }
}

/// Random decimal digits without a leading zero, one multiply per digit
/// (peels digits off `r` read as a binary fraction).
fn stamp_dec(dst: &mut [u8], mut r: u64) {
    let mut mul = 9;
    let mut base = b'1';
    for b in dst {
        let m = u128::from(r) * mul;
        *b = base + (m >> 64) as u8;
        r = m as u64;
        mul = 10;
        base = b'0';
    }
}

fn stamp_hex(dst: &mut [u8], rng: &mut Xoshiro256PlusPlus) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    for chunk in dst.chunks_mut(16) {
        let mut r = rng.next_u64();
        for b in chunk {
            *b = HEX[(r >> 60) as usize];
            r <<= 4;
        }
    }
}

/// `v` as exactly `dst.len()` decimal digits (zero-padded, truncated on the left).
fn write_dec(dst: &mut [u8], mut v: u64) {
    for b in dst.iter_mut().rev() {
        *b = b'0' + (v % 10) as u8;
        v /= 10;
    }
}

/// A stream's wall clock; the date text is recomputed only when the day changes.
struct Clock {
    ms: u64,
    day: u64,
    date: [u8; 10],
}

impl Clock {
    fn new(ms: u64) -> Self {
        Self {
            ms,
            day: u64::MAX,
            date: *b"0000-00-00",
        }
    }

    fn stamp_datetime(&mut self, dst: &mut [u8]) {
        let day = self.ms / 86_400_000;
        if day != self.day {
            self.day = day;
            let (y, m, d) = civil_from_days(day);
            write_dec(&mut self.date[0..4], y);
            write_dec(&mut self.date[5..7], m);
            write_dec(&mut self.date[8..10], d);
        }
        let t = self.ms % 86_400_000;
        dst[..10].copy_from_slice(&self.date);
        dst[10] = b' ';
        write_dec(&mut dst[11..13], t / 3_600_000);
        dst[13] = b':';
        write_dec(&mut dst[14..16], t / 60_000 % 60);
        dst[16] = b':';
        write_dec(&mut dst[17..19], t / 1000 % 60);
        dst[19] = b'.';
        write_dec(&mut dst[20..23], t % 1000);
    }
}

/// (year, month, day) of a day count since 1970-01-01 (H. Hinnant's algorithm).
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z % 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + u64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn bytes(spec: &ImageSpec, day: u32) -> Vec<u8> {
        let img = Image::new(spec, day);
        let mut out = Vec::with_capacity(img.len() as usize);
        let n = img.write_to(&mut out).unwrap();
        assert_eq!(n, out.len() as u64);
        out
    }

    fn hash(spec: &ImageSpec, day: u32) -> blake3::Hash {
        let mut h = blake3::Hasher::new();
        Image::new(spec, day).write_to(&mut h).unwrap();
        h.finalize()
    }

    fn blocks(data: &[u8]) -> impl Iterator<Item = &[u8]> {
        data.chunks_exact(BLOCK_USIZE)
    }

    fn is_zero(b: &[u8]) -> bool {
        b.iter().all(|&x| x == 0)
    }

    #[test]
    fn changes_since_lists_every_differing_byte_and_little_else() {
        let spec = ImageSpec::new(11, 8 * MIB);
        for day in 1..=3 {
            let (prev, new) = (bytes(&spec, day - 1), bytes(&spec, day));
            let map = Image::new(&spec, day).changes_since(&Image::new(&spec, day - 1));
            let mut listed = vec![false; new.len()];
            let mut at = 0;
            for &(offset, len, zero) in &map {
                assert!(offset >= at, "day {day}: ranges out of order");
                at = offset + len;
                let range = offset as usize..at as usize;
                if zero {
                    assert!(
                        is_zero(&new[range.clone()]),
                        "day {day}: zero range holds data"
                    );
                }
                listed[range].fill(true);
            }
            assert!(at <= new.len() as u64);
            for k in 0..new.len() {
                if !listed[k] {
                    assert_eq!(
                        Some(&new[k]),
                        prev.get(k),
                        "day {day}: byte {k} differs unlisted"
                    );
                }
            }
            let differing = (0..new.len())
                .filter(|&k| prev.get(k) != Some(&new[k]))
                .count();
            let listed_total: u64 = map.iter().map(|m| m.1).sum();
            assert!(differing > 0);
            // Shifted regions list bytes that moved; equal bytes listed come
            // mostly from moved zero padding: the map stays near the truth.
            assert!(
                listed_total < 2 * differing as u64 + MIB,
                "day {day}: {listed_total} listed for {differing} differing"
            );
        }
    }

    #[test]
    fn deterministic_and_seed_dependent() {
        let spec = ImageSpec::new(7, 16 * MIB);
        for day in [0, 2] {
            assert_eq!(hash(&spec, day), hash(&spec, day), "day {day}");
        }
        assert_ne!(hash(&spec, 0), hash(&ImageSpec::new(8, 16 * MIB), 0));
        assert_ne!(hash(&spec, 0), hash(&spec, 1));
        let faster = ImageSpec {
            change_percent: 5.0,
            ..spec
        };
        assert_ne!(hash(&spec, 1), hash(&faster, 1));
    }

    #[test]
    fn odd_read_sizes_match_write_to() {
        // Day 2 has unaligned shifts, so reads start and end mid-block.
        let spec = ImageSpec::new(3, 4 * MIB);
        let expected = bytes(&spec, 2);
        for size in [1, 7, 4097, MIB as usize] {
            let mut reader = Image::new(&spec, 2).reader();
            let mut got = Vec::with_capacity(expected.len());
            let mut buf = vec![0u8; size];
            loop {
                let n = reader.read(&mut buf).unwrap();
                if n == 0 {
                    break;
                }
                got.extend_from_slice(&buf[..n]);
            }
            assert!(got == expected, "buffer size {size}");
        }
        let mut all = Vec::new();
        Image::new(&spec, 2).reader().read_to_end(&mut all).unwrap();
        assert!(all == expected);
    }

    #[test]
    fn len_matches_and_grows() {
        let spec = ImageSpec::new(11, 10 * MIB + 12_345);
        let mut prev = 0;
        for day in 0..4 {
            let img = Image::new(&spec, day);
            let data = bytes(&spec, day);
            assert_eq!(img.len(), data.len() as u64, "day {day}");
            if day == 0 {
                assert_eq!(img.len(), spec.size);
            } else {
                assert!(img.len() > prev, "day {day} did not grow");
            }
            prev = img.len();
        }
        assert!(Image::new(&ImageSpec::new(1, 0), 0).is_empty());
        assert_eq!(bytes(&ImageSpec::new(1, 1), 0).len(), 1);
    }

    #[test]
    fn day0_composition() {
        let data = bytes(&ImageSpec::new(42, 64 * MIB), 0);
        let n = (data.len() / BLOCK_USIZE) as f64;
        let zero = blocks(&data).filter(|b| is_zero(b)).count() as f64 / n;
        assert!((0.15..=0.45).contains(&zero), "zero fraction {zero}");

        // Text: ASCII lines. Random: nearly all 256 byte values present.
        let text = blocks(&data)
            .filter(|b| b.contains(&b'\n') && b.iter().all(|&x| x.is_ascii()))
            .count() as f64
            / n;
        assert!((0.10..=0.40).contains(&text), "text fraction {text}");
        let random = blocks(&data)
            .filter(|b| {
                let mut seen = [false; 256];
                b.iter().for_each(|&x| seen[usize::from(x)] = true);
                seen.iter().filter(|&&s| s).count() > 240
            })
            .count() as f64
            / n;
        assert!((0.15..=0.40).contains(&random), "random fraction {random}");

        // Duplicated files are visible as repeated aligned 4 KiB blocks.
        let mut seen: HashMap<blake3::Hash, u32> = HashMap::new();
        let mut dups = 0;
        for b in blocks(&data).filter(|b| !is_zero(b)) {
            let c = seen.entry(blake3::hash(b)).or_default();
            dups += u32::from(*c > 0);
            *c += 1;
        }
        let dups = f64::from(dups) / n;
        assert!((0.03..=0.25).contains(&dups), "duplicate fraction {dups}");
    }

    #[test]
    fn day1_mostly_unchanged_in_place() {
        let spec = ImageSpec::new(42, 64 * MIB);
        let d0 = bytes(&spec, 0);
        let d1 = bytes(&spec, 1);
        let (_, shifts) = build(&spec, 1);
        assert_eq!(shifts.len(), SHIFT_EDITS);
        let first = *shifts.iter().min().unwrap() as usize / BLOCK_USIZE;
        assert!(
            first >= 1024,
            "first shift at block {first}: pick another seed"
        );

        let same = |range: std::ops::Range<usize>| {
            let n = range.len();
            let same = range
                .filter(|&i| {
                    let r = i * BLOCK_USIZE..(i + 1) * BLOCK_USIZE;
                    d0[r.clone()] == d1[r]
                })
                .count();
            same as f64 / n as f64
        };
        let before = same(0..first);
        assert!(before >= 0.90, "unchanged before first shift: {before}");
        // Shifted regions end: alignment (and sameness) is restored after them.
        let overall = same(0..d0.len() / BLOCK_USIZE);
        assert!(
            (0.85..0.995).contains(&overall),
            "unchanged overall: {overall}"
        );
    }

    #[test]
    fn day1_has_unaligned_shifts() {
        let spec = ImageSpec::new(42, 64 * MIB);
        let d0 = bytes(&spec, 0);
        let d1 = bytes(&spec, 1);
        let (_, shifts) = build(&spec, 1);
        let max = SHIFT_MAX_BYTES as usize;
        let mut found = 0;
        for &x in &shifts {
            // A few blocks after the edit, look for a day-0 block nearby in day 1.
            let first = x as usize / BLOCK_USIZE + 2;
            let hit = (first..first + 8).any(|i| {
                let p = i * BLOCK_USIZE;
                let block = &d0[p..p + BLOCK_USIZE];
                !is_zero(block)
                    && (p.saturating_sub(max)..=p + max).any(|q| {
                        (q as isize - p as isize) % BLOCK_USIZE as isize != 0
                            && d1.get(q..q + BLOCK_USIZE) == Some(block)
                    })
            });
            found += usize::from(hit);
        }
        assert!(found >= 2, "only {found} of {} shifts found", shifts.len());
    }

    #[test]
    fn extent_list_stays_small() {
        // 32 GiB after a week: the list must stay far below "tens of MiB".
        let spec = ImageSpec::new(5, 32 * GIB);
        let (layout, _) = build(&spec, 7);
        let bytes = layout.extents.len() * std::mem::size_of::<Extent>();
        assert!(
            bytes < 16 * MIB as usize,
            "{} extents",
            layout.extents.len()
        );
        assert!(layout.len > spec.size);
    }

    #[test]
    fn templates_fit_line_buffer() {
        for t in templates(Flavor::Log).iter().chain(templates(Flavor::Json)) {
            assert!(t.bytes.len() <= MAX_LINE && t.bytes.last() == Some(&b'\n'));
        }
    }

    #[test]
    fn timestamps_render() {
        let mut c = Clock::new(1_700_000_000_123);
        let mut d = [0u8; 23];
        c.stamp_datetime(&mut d);
        assert_eq!(&d, b"2023-11-14 22:13:20.123");
    }

    #[test]
    fn sizes_parse() {
        assert_eq!(parse_size("1000"), Ok(1000));
        assert_eq!(parse_size("512k"), Ok(512 * KIB));
        assert_eq!(parse_size("64M"), Ok(64 * MIB));
        assert_eq!(parse_size("1G"), Ok(GIB));
        assert_eq!(parse_size("4GiB"), Ok(4 * GIB));
        assert_eq!(parse_size("1.5g"), Ok(3 * GIB / 2));
        assert!(parse_size("").is_err());
        assert!(parse_size("12x").is_err());
        assert!(parse_size("G").is_err());
        assert!(parse_size("99999999999T").is_err());
    }
}
