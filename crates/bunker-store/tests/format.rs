//! The on-disk format against its specification, and what opening a
//! repository does with files a crash left behind.
//!
//! `field_tables_of_format_md_match_the_encoders` parses every field table
//! (offset, width, field) of docs/FORMAT.md, encodes a value with distinct
//! field values through the real encoder (or writes a real index run), and
//! checks that each documented field's bytes sit at the documented offset
//! with the documented width, that the rows tile the bytes without gaps,
//! and that no table goes unchecked. A change to a layout that forgets the
//! document (or the reverse) fails here.

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Range;
use std::path::{Path, PathBuf};

use bunker_store::format::{self, checksum};
use bunker_store::index::{Index, Tombstones};
use bunker_store::{ChunkId, ChunkerParams, Location, OpenOptions, PackId, Repository, SnapshotId};

mod common;
use common::*;

// ---------------------------------------------------------------------
// FORMAT.md field tables

struct Row {
    offset: String,
    width: String,
    field: String,
}

struct Table {
    section: String,
    caption: String,
    rows: Vec<Row>,
}

fn format_md() -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/FORMAT.md");
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Every `| offset | width | field |` table, with the `## ` section it is
/// in and the line of text before it (its caption).
fn field_tables(doc: &str) -> Vec<Table> {
    let mut tables = Vec::new();
    let (mut section, mut caption) = (String::new(), String::new());
    let mut current: Option<Table> = None;
    for line in doc.lines() {
        let line = line.trim_end();
        if let Some(t) = current.as_mut() {
            if line.starts_with('|') {
                if !line.starts_with("|---") {
                    let cells: Vec<&str> =
                        line.trim_matches('|').split('|').map(str::trim).collect();
                    let [offset, width, field] = cells[..] else {
                        panic!("FORMAT.md: a field table row without 3 cells: {line}")
                    };
                    t.rows.push(Row {
                        offset: offset.into(),
                        width: width.into(),
                        field: field.into(),
                    });
                }
                continue;
            }
            tables.push(current.take().unwrap());
        }
        if let Some(h) = line.strip_prefix("## ") {
            section = h.to_string();
            caption = h.to_string();
        } else if line.replace(' ', "") == "|offset|width|field|" {
            current = Some(Table {
                section: section.clone(),
                caption: caption.clone(),
                rows: Vec::new(),
            });
        } else if !line.is_empty() {
            caption = line.to_string();
        }
    }
    tables.extend(current);
    tables
}

/// Evaluates an offset or width of a table: sums and differences of
/// products (`·`) of numbers, one-letter counts and `end`.
fn eval(expr: &str, vars: &[(char, u64)], end: u64) -> u64 {
    let factor = |f: &str| -> u64 {
        let f = f.trim();
        if f == "end" {
            return end;
        }
        if let Ok(n) = f.parse() {
            return n;
        }
        let mut chars = f.chars();
        match (chars.next(), chars.next()) {
            (Some(c), None) => {
                vars.iter()
                    .find(|(v, _)| *v == c)
                    .unwrap_or_else(|| panic!("FORMAT.md: no value given for {c} in {expr:?}"))
                    .1
            }
            _ => panic!("FORMAT.md: cannot evaluate {f:?} in {expr:?}"),
        }
    };
    let mut total: i128 = 0;
    let mut sign = 1i128;
    let mut term = String::new();
    let flush = |term: &mut String, sign: i128| {
        let v: u64 = term.split(['·', '×']).map(factor).product();
        term.clear();
        sign * i128::from(v)
    };
    for c in expr.chars() {
        match c {
            '+' | '-' => {
                total += flush(&mut term, sign);
                sign = if c == '+' { 1 } else { -1 };
            }
            c => term.push(c),
        }
    }
    total += flush(&mut term, sign);
    u64::try_from(total).unwrap_or_else(|_| panic!("FORMAT.md: {expr:?} is negative"))
}

/// What a documented field must hold.
enum Want {
    Bytes(Vec<u8>),
    Zero,
    /// The xxh3-64 of these ranges; `None`: of the range the field text
    /// names (`of bytes A..B`, or `of all preceding bytes`).
    Checksum(Option<Vec<Range<usize>>>),
    /// Checked by another table (a variable-length region).
    Elsewhere,
}

fn le(v: u64, width: usize) -> Want {
    Want::Bytes(v.to_le_bytes()[..width].to_vec())
}

/// Checks every row of `table` against `bytes` (the specimen the table
/// describes, starting at offset 0); `fields` maps a prefix of the field
/// text to what it must hold. Rows must follow each other without gaps.
/// Returns where the last row ends.
fn check(table: &Table, bytes: &[u8], vars: &[(char, u64)], fields: &[(String, Want)]) -> usize {
    let name = format!("FORMAT.md, {} / {}", table.section, table.caption);
    let end = bytes.len() as u64;
    let mut used = BTreeSet::new();
    let mut at = 0usize;
    for (i, row) in table.rows.iter().enumerate() {
        let offset = eval(&row.offset, vars, end) as usize;
        let width = if row.width == "…" {
            let next = table.rows.get(i + 1).expect("a … width needs a next row");
            eval(&next.offset, vars, end) as usize - offset
        } else {
            eval(&row.width, vars, end) as usize
        };
        assert_eq!(
            offset, at,
            "{name}: field {:?} is at {offset}, but the previous one ends at {at}",
            row.field
        );
        at = offset + width;
        let got = bytes.get(offset..at).unwrap_or_else(|| {
            panic!(
                "{name}: field {:?} ({offset}, {width}) is outside the {} bytes the encoder wrote",
                row.field,
                bytes.len()
            )
        });
        let matching: Vec<usize> = (0..fields.len())
            .filter(|&k| row.field.starts_with(fields[k].0.as_str()))
            .collect();
        let [k] = matching[..] else {
            panic!(
                "{name}: field {:?} matches {} of the fields this test knows; the document or the code changed",
                row.field,
                matching.len()
            )
        };
        used.insert(k);
        let expected = match &fields[k].1 {
            Want::Bytes(b) => b.clone(),
            Want::Zero => vec![0; width],
            Want::Checksum(ranges) => {
                let ranges = ranges
                    .clone()
                    .unwrap_or_else(|| vec![doc_checksum_range(&row.field, offset)]);
                let parts: Vec<&[u8]> = ranges.iter().map(|r| &bytes[r.clone()]).collect();
                checksum(&parts).to_le_bytes().to_vec()
            }
            Want::Elsewhere => got.to_vec(),
        };
        assert_eq!(
            got,
            &expected[..],
            "{name}: field {:?} at {offset}, width {width}: the encoder wrote {got:02x?}, expected {expected:02x?}",
            row.field
        );
    }
    for (k, (prefix, _)) in fields.iter().enumerate() {
        assert!(
            used.contains(&k),
            "{name}: the encoder has a field {prefix:?} the table does not list"
        );
    }
    at
}

/// The range an `xxh3-64 of bytes A..B` or `… of all preceding bytes` field names.
fn doc_checksum_range(field: &str, offset: usize) -> Range<usize> {
    if field.contains("all preceding bytes") {
        return 0..offset;
    }
    let spec = field
        .split("bytes ")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .and_then(|r| r.split_once(".."))
        .unwrap_or_else(|| panic!("FORMAT.md: which bytes does {field:?} cover?"));
    spec.0.parse().unwrap()..spec.1.parse().unwrap()
}

fn id(seed: u8) -> ChunkId {
    ChunkId(std::array::from_fn(|i| seed.wrapping_add(i as u8 * 7)))
}

fn string_field(s: &str, width: usize) -> Want {
    let mut b = s.as_bytes().to_vec();
    b.resize(width, 0);
    Want::Bytes(b)
}

fn w(prefix: impl Into<String>, want: Want) -> (String, Want) {
    (prefix.into(), want)
}

fn version(v: u32) -> (String, Want) {
    w(format!("version ({v})"), le(u64::from(v), 4))
}

fn magic(m: &[u8]) -> (String, Want) {
    w(
        format!("magic `{}`", String::from_utf8_lossy(m)),
        Want::Bytes(m.to_vec()),
    )
}

/// The filter of a run as FORMAT.md describes it (not the writer's code).
fn documented_bloom(ids: &[ChunkId], blocks: u64) -> Vec<u8> {
    let mut words = vec![0u64; blocks as usize * 8];
    for id in ids {
        let h1 = u64::from_le_bytes(id.0[8..16].try_into().unwrap());
        let h2 = u64::from_le_bytes(id.0[16..24].try_into().unwrap());
        let block = (h1 % blocks) as usize;
        for i in 0..7 {
            let b = ((h2 >> (9 * i)) & 511) as usize;
            words[block * 8 + b / 64] |= 1 << (b % 64);
        }
    }
    words.iter().flat_map(|w| w.to_le_bytes()).collect()
}

#[test]
fn field_tables_of_format_md_match_the_encoders() {
    let doc = format_md();
    let mut tables: BTreeMap<(String, String), Table> = BTreeMap::new();
    for t in field_tables(&doc) {
        let key = (t.section.clone(), t.caption.clone());
        assert!(!t.rows.is_empty(), "FORMAT.md: empty table {key:?}");
        assert!(
            tables.insert(key.clone(), t).is_none(),
            "FORMAT.md: two tables {key:?}"
        );
    }
    let mut take = |section: &str, caption: &str| -> Table {
        let key = tables
            .keys()
            .find(|(s, c)| s == section && c.starts_with(caption))
            .unwrap_or_else(|| panic!("FORMAT.md has no table {caption:?} in section {section:?}"))
            .clone();
        tables.remove(&key).unwrap()
    };
    let repo_id: [u8; 16] = std::array::from_fn(|i| 0xa0 + i as u8);

    // config
    let chunker = ChunkerParams::new(12_345, 65_536, 300_001).unwrap();
    let c = format::config::RepoConfig {
        repo_id,
        created_unix: 0x0102_0304_0506_0708,
        chunker,
        zstd_level: 7,
        pack_target_len: 0x0000_0123_4567_89ab,
        key_id: None,
        place_bound: false,
    };
    let b = c.encode();
    let end = check(
        &take("config", "`config`"),
        &b,
        &[],
        &[
            magic(format::config::MAGIC),
            version(format::config::VERSION_CLEAR),
            w(
                format!("length of this file ({})", format::config::LEN),
                le(128, 4),
            ),
            w("repository id", Want::Bytes(repo_id.to_vec())),
            w("created, unix seconds", le(0x0102_0304_0506_0708, 8)),
            w("chunker `min_len`", le(12_345, 4)),
            w("chunker `avg_len`", le(65_536, 4)),
            w("chunker `max_len`", le(300_001, 4)),
            w("zstd level", le(7, 4)),
            w("pack target length", le(0x0000_0123_4567_89ab, 8)),
            w("key id", Want::Zero),
            w("reserved", Want::Zero),
            w("xxh3-64", Want::Checksum(None)),
        ],
    );
    assert_eq!(end, b.len());

    // Pack: header, record, trailer entry, footer.
    use format::pack::{Codec, Footer, PackHeader, RecordHeader, TrailerEntry};
    let b = PackHeader {
        repo_id,
        pack: PackId(0x1122_3344_5566_7788),
        key_id: None,
    }
    .encode();
    let end = check(
        &take("Pack", "Header"),
        &b,
        &[],
        &[
            magic(format::pack::MAGIC),
            version(format::pack::VERSION),
            w(
                format!("header length ({})", format::pack::HEADER_LEN),
                le(64, 4),
            ),
            w("repository id", Want::Bytes(repo_id.to_vec())),
            w("pack id", le(0x1122_3344_5566_7788, 8)),
            w("key id", Want::Zero),
            w("xxh3-64", Want::Checksum(None)),
        ],
    );
    assert_eq!(end, b.len());

    let stored: Vec<u8> = (0..37u8).map(|i| i ^ 0x5a).collect();
    let h = RecordHeader::new(id(3), Codec::Zstd, 0x00a1_b2c3, &stored);
    let mut b = h.encode().to_vec();
    b.extend_from_slice(&stored);
    let end = check(
        &take("Pack", "Record"),
        &b,
        &[],
        &[
            magic(format::pack::RECORD_MAGIC),
            w("codec: 0 raw, 1 zstd", Want::Bytes(vec![Codec::Zstd as u8])),
            w("reserved", Want::Zero),
            w("raw length", le(0x00a1_b2c3, 4)),
            w("stored length", le(37, 4)),
            w("chunk id", Want::Bytes(id(3).0.to_vec())),
            w(
                "xxh3-64 of bytes 0..56 of this header and of the stored bytes",
                Want::Checksum(Some(vec![0..56, 64..64 + 37])),
            ),
        ],
    );
    assert_eq!(end, format::pack::RECORD_HEADER_LEN);
    assert_eq!(
        format::pack::max_stored_len(0x00a1_b2c3),
        0x00a1_b2c3 + 0x00a1_b2c3 / 128 + 1024,
        "FORMAT.md, Pack: the stored length limit"
    );

    let mut b = vec![0xffu8; format::pack::TRAILER_ENTRY_LEN];
    TrailerEntry {
        id: id(4),
        offset: 0x0a0b_0c0d_0e0f_1011,
        raw_len: 0x1213_1415,
        stored_len: 0x1617_1819,
        codec: Codec::Zstd,
    }
    .encode_into(&mut b);
    let end = check(
        &take("Pack", "Trailer entry"),
        &b,
        &[],
        &[
            w("chunk id", Want::Bytes(id(4).0.to_vec())),
            w("record offset", le(0x0a0b_0c0d_0e0f_1011, 8)),
            w("raw length", le(0x1213_1415, 4)),
            w("stored length", le(0x1617_1819, 4)),
            w("codec", Want::Bytes(vec![1])),
            w("reserved", Want::Zero),
        ],
    );
    assert_eq!(end, b.len());

    let b = Footer {
        trailer_offset: 0x2122_2324_2526_2728,
        count: 0x3132_3334_3536_3738,
        trailer_checksum: 0x4142_4344_4546_4748,
    }
    .encode();
    let end = check(
        &take("Pack", "Footer"),
        &b,
        &[('N', 0x3132_3334_3536_3738)],
        &[
            w("trailer offset", le(0x2122_2324_2526_2728, 8)),
            w("record count N", le(0x3132_3334_3536_3738, 8)),
            w(
                "xxh3-64 of the trailer entries",
                le(0x4142_4344_4546_4748, 8),
            ),
            w("reserved", Want::Zero),
            w("xxh3-64 of bytes 0..32", Want::Checksum(None)),
            magic(format::pack::FOOTER_MAGIC),
        ],
    );
    assert_eq!(end, b.len());

    // Index: a real run written by a flush, an entry, the state.
    let loc = |n: u64| Location {
        pack: PackId(0x0100 + n),
        offset: 0x1000 * n + 64,
        raw_len: 0x2000 + n as u32,
        stored_len: 0x1000 + n as u32,
    };
    let ids: Vec<ChunkId> = (0..3u8)
        .map(|n| {
            let mut i = id(40 * n + 1);
            i.0[0] = 0xa0 | n;
            i
        })
        .collect();
    let dir = tempfile::tempdir().unwrap();
    {
        let index = Index::open(dir.path(), 1 << 20).unwrap();
        let mut entries: Vec<(ChunkId, Location)> = ids
            .iter()
            .enumerate()
            .map(|(n, i)| (*i, loc(n as u64)))
            .collect();
        entries.reverse();
        index.add_sealed(PackId(0x0100), entries);
        index.flush().unwrap();
    }
    let run_path = dir.path().join("a-0000000000000000.run");
    let b = std::fs::read(&run_path).unwrap_or_else(|e| panic!("{}: {e}", run_path.display()));
    let n = ids.len() as u64;
    let blocks = (10 * n).div_ceil(512).max(1);
    let mut entries = Vec::new();
    for (k, i) in ids.iter().enumerate() {
        let mut e = [0u8; format::index::ENTRY_LEN];
        format::index::encode_entry(i, &loc(k as u64), &mut e);
        entries.extend_from_slice(&e);
    }
    let body_end = 64 + 56 * n as usize + 64 * blocks as usize;
    let end = check(
        &take("Index", "Run file"),
        &b,
        &[('N', n), ('B', blocks)],
        &[
            magic(format::index::RUN_MAGIC),
            version(format::index::VERSION),
            w(
                format!("header length ({})", format::index::RUN_HEADER_LEN),
                le(64, 4),
            ),
            w("shard", Want::Bytes(vec![0x0a])),
            w("reserved", Want::Zero),
            w("run id", le(0, 8)),
            w("entry count N", le(n, 8)),
            w("Bloom filter blocks B", le(blocks, 8)),
            w("xxh3-64 of bytes 0..56", Want::Checksum(None)),
            w("entries, sorted by chunk id", Want::Bytes(entries)),
            w(
                "blocked Bloom filter",
                Want::Bytes(documented_bloom(&ids, blocks)),
            ),
            w(
                "xxh3-64 of the entries and the filter",
                Want::Checksum(Some(std::iter::once(64..body_end).collect())),
            ),
            magic(format::index::RUN_END_MAGIC),
        ],
    );
    assert_eq!(end, b.len());

    let mut b = [0u8; format::index::ENTRY_LEN];
    format::index::encode_entry(&id(5), &loc(9), &mut b);
    let end = check(
        &take("Index", "Entry"),
        &b,
        &[],
        &[
            w("chunk id", Want::Bytes(id(5).0.to_vec())),
            w("pack id", le(0x0109, 8)),
            w("record offset", le(0x9040, 8)),
            w("raw length", le(0x2009, 4)),
            w("stored length", le(0x1009, 4)),
        ],
    );
    assert_eq!(end, b.len());

    let state = format::index::IndexState {
        generation: 0x5152_5354_5556_5758,
        next_run: 0x6162_6364_6566_6768,
        runs: vec![
            format::index::RunRef {
                shard: 3,
                run: 0x0707,
            },
            format::index::RunRef {
                shard: 0x0c,
                run: 0x0909,
            },
        ],
        covered: vec![(0x0123, 0x0456)],
    };
    let b = state.encode();
    let runs: Vec<u8> = [(3u8, 0x0707u64), (0x0c, 0x0909)]
        .iter()
        .flat_map(|&(s, r)| [vec![s], vec![0; 7], r.to_le_bytes().to_vec()].concat())
        .collect();
    let covered = [0x0123u64.to_le_bytes(), 0x0456u64.to_le_bytes()].concat();
    let end = check(
        &take("Index", "`index/state`"),
        &b,
        &[('R', 2), ('C', 1)],
        &[
            magic(format::index::STATE_MAGIC),
            version(format::index::VERSION),
            w(
                format!("header length ({})", format::index::STATE_HEADER_LEN),
                le(64, 4),
            ),
            w("generation", le(0x5152_5354_5556_5758, 8)),
            w("next run id", le(0x6162_6364_6566_6768, 8)),
            w("live run count R", le(2, 4)),
            w("covered range count C", le(1, 4)),
            w("reserved", Want::Zero),
            w(
                "live runs: shard (1), reserved (7), run id (8)",
                Want::Bytes(runs),
            ),
            w(
                "covered pack ids: first, last (inclusive)",
                Want::Bytes(covered),
            ),
            w("xxh3-64 of all preceding bytes", Want::Checksum(None)),
        ],
    );
    assert_eq!(end, b.len());

    // Manifest: header, entry, footer.
    let m = format::manifest::ManifestHeader {
        repo_id,
        id: SnapshotId(0x0b0c_0d0e_0f10_1112),
        created_unix_ms: 0x1314_1516_1718_191a,
        size: 0x2122_2324_2526_2728,
        entries: 0x3132_3334_3536_3738,
        chunker,
        stream_hash: id(6).0,
        new_chunks: 0x4142_4344_4546_4748,
        new_bytes: 0x5152_5354_5556_5758,
        new_raw_bytes: 0x6162_6364_6566_6768,
        ingest_ms: 0x7172_7374_7576_7778,
        zero_chunks: 0x8182_8384_8586_8788,
        name: "vol-1.db".into(),
        source: "file:/dev/sdb".into(),
        creator: 0x9192_9394_9596_9798,
        version: format::manifest::VERSION,
        committed_unix_ms: 0x2324_2526_2728_292a,
        origin: Some(format::manifest::Origin {
            repo_id: id(9).0[..16].try_into().unwrap(),
            snapshot_id: 0x3334_3536_3738_393a,
        }),
    };
    let b = m.encode();
    let chunker_bytes = [12_345u32, 65_536, 300_001]
        .iter()
        .flat_map(|v| v.to_le_bytes())
        .collect();
    let end = check(
        &take("Manifest", "Header"),
        &b,
        &[('N', m.entries)],
        &[
            magic(format::manifest::MAGIC),
            version(format::manifest::VERSION),
            w(
                format!("header length ({})", format::manifest::HEADER_LEN),
                le(1024, 4),
            ),
            w("repository id", Want::Bytes(repo_id.to_vec())),
            w("snapshot id", le(m.id.0, 8)),
            w(
                "created, unix milliseconds",
                le(m.created_unix_ms as u64, 8),
            ),
            w("logical size in bytes", le(m.size, 8)),
            w("entry count N", le(m.entries, 8)),
            w(
                "chunker min, avg, max (u32 each)",
                Want::Bytes(chunker_bytes),
            ),
            w("reserved", Want::Zero),
            w("BLAKE3 of the whole stream", Want::Bytes(id(6).0.to_vec())),
            w("chunks newly stored", le(m.new_chunks, 8)),
            w("bytes newly stored", le(m.new_bytes, 8)),
            w("ingest duration", le(m.ingest_ms, 8)),
            w("zero chunks", le(m.zero_chunks, 8)),
            w("name length", le(8, 2)),
            w("source length", le(13, 2)),
            w("name, UTF-8, zero padded", string_field("vol-1.db", 128)),
            w("source description", string_field("file:/dev/sdb", 192)),
            w("creator", le(m.creator, 8)),
            w(
                "raw (uncompressed) bytes of the chunks newly stored",
                le(m.new_raw_bytes, 8),
            ),
            w("xxh3-64 of bytes 0..504", Want::Checksum(None)),
            w("flags: bit 0", le(1, 8)),
            w(
                "origin: the source repository",
                Want::Bytes(id(9).0[..16].to_vec()),
            ),
            w("origin: the snapshot's id", le(0x3334_3536_3738_393a, 8)),
            w("committed, unix milliseconds", le(0x2324_2526_2728_292a, 8)),
            w("xxh3-64 of bytes 512..1016", Want::Checksum(None)),
        ],
    );
    assert_eq!(end, b.len());

    let b = format::manifest::encode_entry(0x0102_0304_0506_0708, &id(7));
    let end = check(
        &take("Manifest", "Entry"),
        &b,
        &[],
        &[
            w("end offset", le(0x0102_0304_0506_0708, 8)),
            w("chunk id", Want::Bytes(id(7).0.to_vec())),
        ],
    );
    assert_eq!(end, b.len());

    let footer = take("Manifest", "Footer");
    assert!(footer.caption.contains(&format!(
        "at {}+{}·N",
        format::manifest::HEADER_LEN,
        format::manifest::ENTRY_LEN
    )));
    let b = format::manifest::encode_footer(0x1112_1314_1516_1718, 0x2122_2324_2526_2728);
    let end = check(
        &footer,
        &b,
        &[('N', 0x2122_2324_2526_2728)],
        &[
            w("xxh3-64 of the entries", le(0x1112_1314_1516_1718, 8)),
            w("entry count N", le(0x2122_2324_2526_2728, 8)),
            magic(format::manifest::END_MAGIC),
        ],
    );
    assert_eq!(end, b.len());

    // Block hashes.
    let h = format::blocks::BlocksHeader {
        block_len: 1 << 20,
        image_len: (5 << 20) + 17,
        count: 5,
        tail: Some(id(8).0),
    };
    let b = h.encode();
    let end = check(
        &take("Block hashes", "Header"),
        &b,
        &[],
        &[
            magic(bunker_chunk::blocks_file::MAGIC),
            version(bunker_chunk::blocks_file::VERSION),
            w(
                format!("header length ({})", format::blocks::HEADER_LEN),
                le(96, 4),
            ),
            w("block length", le(h.block_len, 8)),
            w("image length in bytes", le(h.image_len, 8)),
            w("CV count C", le(h.count, 8)),
            w("tail flag", le(1, 4)),
            w("reserved", Want::Zero),
            w("tail CV", Want::Bytes(id(8).0.to_vec())),
            w("xxh3-64 of bytes 0..88", Want::Checksum(None)),
        ],
    );
    assert_eq!(end, b.len());
    let footer = take("Block hashes", "Footer");
    assert!(footer.caption.contains(&format!(
        "at {}+{}·C",
        format::blocks::HEADER_LEN,
        format::blocks::CV_LEN
    )));
    let b = bunker_chunk::blocks_file::encode_footer(0x1112_1314_1516_1718);
    let end = check(
        &footer,
        &b,
        &[],
        &[
            w("xxh3-64 of the CVs", le(0x1112_1314_1516_1718, 8)),
            magic(bunker_chunk::blocks_file::END_MAGIC),
        ],
    );
    assert_eq!(end, b.len());

    // Deleted snapshot ids.
    let b = format::deleted_hwm::encode(0x0102_0304_0506_0708);
    let end = check(
        &take("Deleted snapshot ids", "`snapshots/.deleted-hwm`"),
        &b,
        &[],
        &[
            magic(format::deleted_hwm::MAGIC),
            version(format::deleted_hwm::VERSION),
            w(
                format!("length of this file ({})", format::deleted_hwm::LEN),
                le(32, 4),
            ),
            w(
                "highest snapshot id ever deleted",
                le(0x0102_0304_0506_0708, 8),
            ),
            w("xxh3-64 of bytes 0..24", Want::Checksum(None)),
        ],
    );
    assert_eq!(end, b.len());

    // Tombstones and their record.
    let t = Tombstones {
        packs: [0x0a0b_0c0d, 0x0e0f_1011].into_iter().collect(),
        records: [(id(8), 0x2122_2324, 0x3132_3334)].into_iter().collect(),
    };
    let b = format::tombstones::encode(&t);
    let record = [
        id(8).0.to_vec(),
        0x2122_2324u64.to_le_bytes().to_vec(),
        0x3132_3334u64.to_le_bytes().to_vec(),
    ]
    .concat();
    let end = check(
        &take("Tombstones", "`tombstones`"),
        &b,
        &[('P', 2), ('R', 1)],
        &[
            magic(format::tombstones::MAGIC),
            version(format::tombstones::VERSION),
            w(
                format!("header length ({})", format::tombstones::HEADER_LEN),
                le(32, 4),
            ),
            w("pack count P", le(2, 8)),
            w("record count R", le(1, 8)),
            w(
                "condemned pack ids (u64), ascending",
                Want::Bytes([0x0a0b_0c0du64.to_le_bytes(), 0x0e0f_1011u64.to_le_bytes()].concat()),
            ),
            w("records, ascending", Want::Bytes(record)),
            w("xxh3-64 of all preceding bytes", Want::Checksum(None)),
        ],
    );
    assert_eq!(end, b.len());
    let end = check(
        &take("Tombstones", "Record"),
        &b[32 + 16..32 + 16 + format::tombstones::RECORD_LEN],
        &[],
        &[
            w("chunk id", Want::Bytes(id(8).0.to_vec())),
            w("pack id", le(0x2122_2324, 8)),
            w("record offset", le(0x3132_3334, 8)),
        ],
    );
    assert_eq!(end, format::tombstones::RECORD_LEN);

    // Space accounting and its name record.
    use format::space::{NameSpace, Space, Usage};
    let s = Space {
        written_unix_ms: 0x0102_0304_0506_0708,
        referenced: Usage {
            chunks: 0x1112_1314_1516_1718,
            raw_bytes: 0x2122_2324_2526_2728,
            stored_bytes: 0x3132_3334_3536_3738,
        },
        pack_bytes: 0x4142_4344_4546_4748,
        packs: 0x5152_5354_5556_5758,
        next_pack: 0x6162_6364_6566_6768,
        names: vec![NameSpace {
            name: "db-7".into(),
            unique: Usage {
                chunks: 0x7172_7374_7576_7778,
                raw_bytes: 0x8182_8384_8586_8788,
                stored_bytes: 0x9192_9394_9596_9798,
            },
            snapshots: vec![5, 9],
        }],
    };
    let b = format::space::encode(&s);
    let space = take("Space accounting", "`space`");
    let end = check(
        &space,
        &b,
        &[('M', 1)],
        &[
            magic(format::space::MAGIC),
            version(format::space::VERSION),
            w(
                format!("header length ({})", format::space::HEADER_LEN),
                le(32, 4),
            ),
            w("measured, unix milliseconds", le(0x0102_0304_0506_0708, 8)),
            w("name count M", le(1, 8)),
            w("referenced chunks", le(0x1112_1314_1516_1718, 8)),
            w("referenced raw bytes", le(0x2122_2324_2526_2728, 8)),
            w("referenced stored bytes", le(0x3132_3334_3536_3738, 8)),
            w("pack bytes", le(0x4142_4344_4546_4748, 8)),
            w("pack count", le(0x5152_5354_5556_5758, 8)),
            w("next pack id then", le(0x6162_6364_6566_6768, 8)),
            w("reserved", Want::Zero),
            w("M name records", Want::Elsewhere),
            w("xxh3-64 of all preceding bytes", Want::Checksum(None)),
        ],
    );
    assert_eq!(end, b.len());
    let records_at = space
        .rows
        .iter()
        .find(|r| r.field.starts_with("M name records"))
        .map(|r| eval(&r.offset, &[], 0) as usize)
        .unwrap();
    let end = check(
        &take("Space accounting", "Name record"),
        &b[records_at..b.len() - 8],
        &[('L', 4), ('S', 2)],
        &[
            w("name length L", le(4, 2)),
            w("reserved", Want::Zero),
            w("name, UTF-8, no padding", Want::Bytes(b"db-7".to_vec())),
            w("unique chunks", le(0x7172_7374_7576_7778, 8)),
            w("unique raw bytes", le(0x8182_8384_8586_8788, 8)),
            w("unique stored bytes", le(0x9192_9394_9596_9798, 8)),
            w("snapshot count S", le(2, 8)),
            w(
                "ids of the snapshots",
                Want::Bytes([5u64.to_le_bytes(), 9u64.to_le_bytes()].concat()),
            ),
        ],
    );
    assert_eq!(end, b.len() - 8 - records_at);

    // Key file and sealed objects (bunker-crypt).
    let key = bunker_crypt::Key::from_bytes(std::array::from_fn(|i| 0x40 + i as u8));
    let b = key.encode();
    let end = check(
        &take("Key file", "Key file"),
        &b,
        &[],
        &[
            magic(bunker_crypt::key::MAGIC),
            version(bunker_crypt::key::VERSION),
            w("length of this file (64)", le(64, 4)),
            w("key id", Want::Bytes(key.id().0.to_vec())),
            w(
                "key: 256 random bits",
                Want::Bytes((0..32).map(|i| 0x40 + i).collect()),
            ),
        ],
    );
    assert_eq!(end, bunker_crypt::key::FILE_LEN);
    let pass = bunker_crypt::Passphrase::new(b"format table passphrase".to_vec(), "test").unwrap();
    let kdf = bunker_crypt::KdfParams {
        memory_kib: 8 * 1024 + 1,
        iterations: 2,
        lanes: 3,
    };
    let b = bunker_crypt::wrap::wrap(&key, &pass, kdf).unwrap();
    let end = check(
        &take("Wrapped key file", "Wrapped key file"),
        &b,
        &[],
        &[
            magic(bunker_crypt::wrap::MAGIC),
            version(bunker_crypt::wrap::VERSION),
            w("length of this file (136)", le(136, 4)),
            w("key id", Want::Bytes(key.id().0.to_vec())),
            w("KDF (1: argon2id", le(1, 4)),
            w("KDF memory, KiB", le(8 * 1024 + 1, 4)),
            w("KDF iterations", le(2, 4)),
            w("KDF lanes", le(3, 4)),
            w("salt", Want::Elsewhere),
            w("the key, sealed", Want::Elsewhere),
        ],
    );
    assert_eq!(end, bunker_crypt::wrap::FILE_LEN);
    let sealer = bunker_crypt::Sealer::new(&key, bunker_crypt::Purpose::Record);
    let plain = b"twenty-one bytes here";
    let b = sealer.seal(b"identity", plain);
    let end = check(
        &take("Sealed objects", "Sealed object ("),
        &b,
        &[],
        &[
            w("nonce", Want::Elsewhere),
            w("ciphertext", Want::Elsewhere),
            w("GCM tag", Want::Elsewhere),
        ],
    );
    assert_eq!(end, b.len());
    assert_eq!(b.len(), plain.len() + bunker_crypt::OVERHEAD);
    // Sealed files: the container header.
    use format::sealed::{FileKind, SealedHeader};
    let h = SealedHeader {
        kind: FileKind::Manifest,
        segment_shift: format::sealed::SEGMENT_SHIFT,
        head_len: 1024,
        key_id: [0x3c; 16],
        file_id: std::array::from_fn(|i| 0x70 + i as u8),
    };
    let b = h.encode();
    let end = check(
        &take("Sealed files", "Container header"),
        &b,
        &[],
        &[
            magic(format::sealed::MAGIC),
            version(format::sealed::VERSION),
            w("length of this header (64)", le(64, 4)),
            w("kind: 1 manifest, 2 block hashes", Want::Bytes(vec![1])),
            w("log2 of the segment length", Want::Bytes(vec![16])),
            w("zero", Want::Zero),
            w("H, plaintext bytes in the head", le(1024, 4)),
            w("key id", Want::Bytes(vec![0x3c; 16])),
            w("file id", Want::Bytes(h.file_id.to_vec())),
            w("xxh3-64 of bytes 0..56", Want::Checksum(None)),
        ],
    );
    assert_eq!(end, format::sealed::HEADER_LEN);
    // The dedup window: header and entry.
    use format::window::{WindowEntry, ENTRY_LEN, HEADER_LEN};
    let b = format::window::encode_header([0x5a; 16]);
    let end = check(
        &take("Dedup window", "`window/<name>`"),
        &b,
        &[],
        &[
            magic(format::window::MAGIC),
            version(format::window::VERSION),
            w(format!("header length ({HEADER_LEN})"), le(40, 4)),
            w("repository id", Want::Bytes(vec![0x5a; 16])),
            w("xxh3-64 of bytes 0..32", Want::Checksum(None)),
        ],
    );
    assert_eq!(end, b.len());
    let b = format::window::encode_entry(&WindowEntry {
        id: id(9),
        loc: Location {
            pack: PackId(0x0102_0304),
            offset: 0x1112_1314,
            raw_len: 0x2122_2324,
            stored_len: 0x3132_3334,
        },
        end: 0x4142_4344_4546,
    });
    let end = check(
        &take("Dedup window", "Entry"),
        &b,
        &[],
        &[
            w("chunk id", Want::Bytes(id(9).0.to_vec())),
            w("pack id", le(0x0102_0304, 8)),
            w("record offset", le(0x1112_1314, 8)),
            w("raw length", le(0x2122_2324, 4)),
            w("stored length", le(0x3132_3334, 4)),
            w("stream offset", le(0x4142_4344_4546, 8)),
            w("xxh3-64 of bytes 0..64", Want::Checksum(None)),
        ],
    );
    assert_eq!(end, ENTRY_LEN);

    assert!(
        tables.is_empty(),
        "FORMAT.md has field tables no test checks: {:?}",
        tables.keys().collect::<Vec<_>>()
    );
}

#[test]
fn the_table_reader_sees_offsets_widths_and_gaps() {
    assert_eq!(
        eval("72+56·N+64·B", &[('N', 3), ('B', 2)], 0),
        72 + 168 + 128
    );
    assert_eq!(eval("end-8", &[], 100), 92);
    let doc = "## X\n\nHead:\n\n| offset | width | field |\n|---|---|---|\n| 0 | 4 | a |\n| 8 | 4 | b |\n";
    let t = field_tables(doc);
    assert_eq!(
        (t.len(), t[0].caption.as_str(), t[0].rows.len()),
        (1, "Head:", 2)
    );
    let gap = std::panic::catch_unwind(|| {
        check(
            &t[0],
            &[0u8; 12],
            &[],
            &[w("a", Want::Zero), w("b", Want::Zero)],
        )
    });
    assert!(gap.is_err(), "a gap between fields must fail");
}

// ---------------------------------------------------------------------
// The deleted-id mark's upgrade path

/// Regression: `.deleted-hwm` was a bare u64 with no magic, version or
/// checksum. The old form still opens; the next delete rewrites it.
#[test]
fn an_unversioned_deleted_id_mark_still_opens_and_the_next_delete_rewrites_it() {
    let dir = tempfile::tempdir().unwrap();
    let mark = dir.path().join("snapshots/.deleted-hwm");
    {
        let repo = Repository::create(dir.path(), small_opts()).unwrap();
        for seed in 0..3 {
            ingest(&repo, "vol", &volume(seed, 200 << 10));
        }
    }
    // What a repository of the old format holds after deleting snapshot 9.
    std::fs::write(&mark, 9u64.to_le_bytes()).unwrap();
    let repo = Repository::open(dir.path()).unwrap();
    let next = ingest(&repo, "vol", &volume(7, 200 << 10));
    assert_eq!(next.id, SnapshotId(10), "ids continue above the old mark");
    repo.delete("vol", SnapshotId(1)).unwrap();
    let b = std::fs::read(&mark).unwrap();
    assert_eq!(
        b.len(),
        format::deleted_hwm::LEN,
        "rewritten in the new form"
    );
    assert_eq!(&b[..8], format::deleted_hwm::MAGIC);
    assert_eq!(
        format::deleted_hwm::decode("m", &b).unwrap(),
        format::deleted_hwm::DeletedHwm {
            id: 9,
            legacy: false
        }
    );
    repo.delete("vol", SnapshotId(10)).unwrap();
    drop(repo);
    let repo = Repository::open(dir.path()).unwrap();
    assert_eq!(
        ingest(&repo, "vol", &volume(8, 200 << 10)).id,
        SnapshotId(11)
    );
    drop(repo);
    // Damage is named, never guessed around (a guess could reuse an id).
    let mut b = std::fs::read(&mark).unwrap();
    b[17] ^= 1;
    std::fs::write(&mark, &b).unwrap();
    let err = Repository::open(dir.path())
        .err()
        .expect("a damaged mark must not open");
    assert!(matches!(err, bunker_store::Error::Corrupt { .. }), "{err}");
    assert!(err.to_string().contains(".deleted-hwm"), "{err}");
}

// ---------------------------------------------------------------------
// Which copy of a chunk stored twice the index keeps

fn pack_path(root: &Path, pack: u64) -> PathBuf {
    root.join(format!(
        "packs/{:02x}/{:02x}/{pack:016x}.pack",
        pack & 0xff,
        (pack >> 8) & 0xff
    ))
}

fn pack_id(path: &Path) -> u64 {
    u64::from_str_radix(path.file_stem().unwrap().to_str().unwrap(), 16).unwrap()
}

/// (chunk, record offset) of every record of a sealed pack, from its trailer.
fn trailer(bytes: &[u8]) -> Vec<(ChunkId, u64)> {
    let footer =
        format::pack::Footer::decode(&bytes[bytes.len() - 48..], bytes.len() as u64).unwrap();
    bytes[footer.trailer_offset as usize..bytes.len() - 48]
        .chunks_exact(format::pack::TRAILER_ENTRY_LEN)
        .map(|e| {
            let e = format::pack::TrailerEntry::decode(e).unwrap();
            (e.id, e.offset)
        })
        .collect()
}

/// Regression: of a chunk stored in several packs (an interrupted GC copy),
/// the index rebuilt from the packs kept whichever copy an unstable sort
/// left first within one flush, and the newest across flushes, so the
/// answer depended on where the flushes fell. Now it is always the copy
/// in the highest pack (docs/FORMAT.md, "Index").
#[test]
fn a_rebuilt_index_keeps_the_copy_in_the_highest_pack_wherever_flushes_fall() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let data = volume(3, 3 << 20);
    {
        let repo = Repository::create(root, small_opts()).unwrap();
        ingest(&repo, "vol", &data);
    }
    let sealed = packs(root);
    assert!(sealed.len() >= 2, "{sealed:?}");
    let last = sealed.iter().map(|p| pack_id(p)).max().unwrap();
    // Two more copies of the first pack under new, higher ids: each of its
    // chunks is then stored three times, none tombstoned.
    let original = std::fs::read(&sealed[0]).unwrap();
    let records = trailer(&original);
    let header = format::pack::PackHeader::decode("p", &original).unwrap();
    for copy in [last + 1, last + 2] {
        let mut b = original.clone();
        let h = format::pack::PackHeader {
            pack: PackId(copy),
            ..header
        };
        b[..format::pack::HEADER_LEN].copy_from_slice(&h.encode());
        let path = pack_path(root, copy);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, b).unwrap();
    }
    let expect_all = |how: &str| {
        let index = Index::open(&root.join("index"), 1 << 20).unwrap();
        for (id, offset) in &records {
            let found = index.lookup(id).map(|l| (l.pack, l.offset));
            assert_eq!(
                found,
                Some((PackId(last + 2), *offset)),
                "{how}: chunk {id}"
            );
        }
    };
    // One flush for all packs, one per pack, and in between.
    for flush_at in [1 << 20, 1, records.len() + 1] {
        std::fs::remove_dir_all(root.join("index")).unwrap();
        let repo = Repository::open_with(
            root,
            OpenOptions {
                index_flush_at: flush_at,
                ..OpenOptions::default()
            },
        )
        .unwrap();
        assert_eq!(repo.recovery().packs_indexed, sealed.len() + 2);
        drop(repo);
        expect_all(&format!("rebuilt with flushes every {flush_at} entries"));
    }
    Repository::rebuild_index(root).unwrap();
    expect_all("Repository::rebuild_index");
    let repo = Repository::open(root).unwrap();
    assert!(repo.verify().unwrap().is_clean());
    assert_eq!(read_all(&repo, "vol", None).unwrap(), data);
}

// ---------------------------------------------------------------------
// Temp files of interrupted replaces

/// Every file under `root` with its contents, and every symlink and
/// directory by name.
fn tree(root: &Path) -> BTreeMap<PathBuf, Option<Vec<u8>>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            let t = e.file_type().unwrap();
            let rel = p.strip_prefix(root).unwrap().to_path_buf();
            if t.is_dir() {
                stack.push(p);
                out.insert(rel, None);
            } else if t.is_symlink() {
                out.insert(
                    rel,
                    Some(
                        std::fs::read_link(&p)
                            .unwrap()
                            .into_os_string()
                            .into_encoded_bytes(),
                    ),
                );
            } else {
                out.insert(rel, Some(std::fs::read(&p).unwrap()));
            }
        }
    }
    out
}

/// Regression: a crash in an atomic replace (`NAME.PID.SEQ.tmp` of the
/// index state, tombstones, space, config or the deleted-id mark) left its
/// temp file forever. Open removes exactly those, and touches nothing else.
#[test]
fn open_removes_the_temp_files_of_interrupted_replaces_and_nothing_else() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    {
        let repo = Repository::create(root, small_opts()).unwrap();
        ingest(&repo, "vol", &volume(1, 500 << 10));
        let b = ingest(&repo, "vol", &volume(2, 500 << 10));
        repo.delete("vol", b.id).unwrap();
        repo.gc(&Default::default()).unwrap();
    }
    drop(Repository::open(root).unwrap());
    let settled = tree(root);
    assert!(settled.contains_key(Path::new("snapshots/.deleted-hwm")));
    let stale = [
        "config.123.0.tmp",
        "tombstones.4242.7.tmp",
        "space.1.18446744073709551615.tmp",
        "index/state.99.3.tmp",
        "snapshots/.deleted-hwm.5.6.tmp",
    ];
    // Names that are not exactly a temp name of a replaced file, or not
    // in that file's directory, or not a regular file.
    let kept = [
        "config.tmp",
        "tombstones.12.tmp",
        "space.1.2.tmp.bak",
        "space.1.2.3.tmp",
        "space.-1.2.tmp",
        "reserve.1.2.tmp",
        "lock.1.2.tmp",
        "notes.1.2.tmp",
        "index/state.x.1.tmp",
        "index/state.1.2.TMP",
        "index/tombstones.1.2.tmp",
        "snapshots/.deleted-hwm.1.+2.tmp",
        "snapshots/vol/state.1.2.tmp",
        "packs/space.1.2.tmp",
    ];
    for (i, f) in stale.iter().chain(&kept).enumerate() {
        std::fs::write(root.join(f), format!("planted {i}")).unwrap();
    }
    std::fs::create_dir(root.join("space.8.9.tmp")).unwrap();
    std::os::unix::fs::symlink(root.join("config"), root.join("config.7.8.tmp")).unwrap();
    let mut expected = tree(root);
    for f in stale {
        expected.remove(Path::new(f));
    }

    let repo = Repository::open(root).unwrap();
    let removed: BTreeSet<PathBuf> = repo.recovery().temp_files_removed.iter().cloned().collect();
    assert_eq!(removed, stale.iter().map(PathBuf::from).collect());
    assert!(repo.verify().unwrap().is_clean());
    drop(repo);
    assert_eq!(tree(root), expected);
    let again = Repository::open(root).unwrap();
    assert_eq!(again.recovery(), &bunker_store::Recovery::default());
}
