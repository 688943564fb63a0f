//! The walk's manifest equals a full read's, for random images, random
//! changes and exact maps; a map that hides a change is caught by sampling
//! every reused entry.

use bunker_changes::{walk, ChangeMap, Entry, Extent, Kind, Options, Piece};
use bunker_chunk::{ChunkId, Chunker, ChunkerParams};
use proptest::prelude::*;

fn chunker() -> Chunker {
    Chunker::new(ChunkerParams::new(256, 1024, 4096).unwrap())
}

fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

fn full_manifest(data: &[u8]) -> Vec<Entry> {
    let mut at = 0;
    chunker()
        .cuts(data, true)
        .into_iter()
        .map(|cut| {
            let bytes = &data[at..cut.end];
            at = cut.end;
            Entry {
                len: bytes.len() as u64,
                id: if cut.zero {
                    ChunkId::ZERO
                } else {
                    ChunkId::of(bytes)
                },
            }
        })
        .collect()
}

type Walked = Result<(Vec<Entry>, bunker_changes::Report), bunker_changes::rechunk::Error>;

fn walk_it(base: &[u8], new: &[u8], map: &ChangeMap, sample: f64) -> Walked {
    let base_entries = full_manifest(base);
    let mut out = Vec::new();
    let report = walk(
        &chunker(),
        base_entries.into_iter().map(Ok::<_, std::io::Error>),
        base.len() as u64,
        map,
        new.len() as u64,
        |offset: u64, buf: &mut [u8]| {
            let at = offset as usize;
            assert!(at + buf.len() <= new.len(), "read beyond the end");
            buf.copy_from_slice(&new[at..at + buf.len()]);
            Ok(())
        },
        Options {
            sample_percent: sample,
            read_len: 8192,
        },
        |piece| {
            out.push(match piece {
                Piece::Reused(entry) => entry,
                Piece::Read { data, zero, .. } => Entry {
                    len: data.len() as u64,
                    id: if zero {
                        ChunkId::ZERO
                    } else {
                        ChunkId::of(data)
                    },
                },
            });
            Ok(())
        },
    )?;
    Ok((out, report))
}

/// The extents of `changed` (a per-byte mask over the new image) as a map;
/// runs whose new bytes are all zero are typed `zero` when `zero_kind`.
fn exact_map(changed: &[bool], new: &[u8], zero_kind: bool) -> ChangeMap {
    let mut extents = Vec::new();
    let mut i = 0;
    while i < changed.len() {
        if !changed[i] {
            i += 1;
            continue;
        }
        let start = i;
        while i < changed.len() && changed[i] {
            i += 1;
        }
        let zero = zero_kind && new[start..i].iter().all(|&b| b == 0);
        extents.push(Extent {
            offset: start as u64,
            len: (i - start) as u64,
            kind: if zero { Kind::Zero } else { Kind::Data },
        });
    }
    ChangeMap::from_extents(extents, new.len() as u64).unwrap()
}

#[derive(Clone, Debug)]
struct Edit {
    at: f64,
    len: usize,
    how: u8,
}

fn edits() -> impl Strategy<Value = Vec<Edit>> {
    prop::collection::vec(
        (0.0f64..1.0, 1usize..6000, 0u8..4).prop_map(|(at, len, how)| Edit { at, len, how }),
        0..6,
    )
}

/// Applies the edits to a copy of `base` resized to `new_len`; returns the
/// new image and which of its bytes the edits touched (bytes past the
/// base's end count as touched).
fn apply(base: &[u8], new_len: usize, edits: &[Edit], seed: u64) -> (Vec<u8>, Vec<bool>) {
    let mut new = base.to_vec();
    new.resize(new_len, 0);
    let grow = noise(new_len.saturating_sub(base.len()), seed ^ 0x55);
    new[base.len().min(new_len)..].copy_from_slice(&grow);
    let mut changed = vec![false; new_len];
    for c in changed.iter_mut().skip(base.len()) {
        *c = true;
    }
    for (k, edit) in edits.iter().enumerate() {
        if new_len == 0 {
            break;
        }
        let start = ((edit.at * new_len as f64) as usize).min(new_len - 1);
        let end = (start + edit.len).min(new_len);
        let fresh = noise(end - start, seed.wrapping_add(k as u64 * 977));
        match edit.how {
            0 => new[start..end].copy_from_slice(&fresh),
            1 => new[start..end].fill(0),
            // Listed in the map but left as they were: maps may over-report.
            2 => {}
            _ => new[start] ^= 0x5a,
        }
        for c in &mut changed[start..end] {
            *c = true;
        }
    }
    (new, changed)
}

fn base_image(len: usize, zero_run: (f64, usize), seed: u64) -> Vec<u8> {
    let mut data = noise(len, seed);
    if len > 0 {
        let start = ((zero_run.0 * len as f64) as usize).min(len - 1);
        let end = (start + zero_run.1).min(len);
        data[start..end].fill(0);
    }
    data
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    #[test]
    fn the_walk_gives_the_full_read_manifest(
        base_len in 0usize..60_000,
        size_change in -8000i64..8000,
        zero_run in (0.0f64..1.0, 0usize..20_000),
        edits in edits(),
        zero_kind in any::<bool>(),
        seed in any::<u64>(),
    ) {
        let base = base_image(base_len, zero_run, seed);
        let new_len = (base_len as i64 + size_change).max(0) as usize;
        let (new, changed) = apply(&base, new_len, &edits, seed);
        let map = exact_map(&changed, &new, zero_kind);
        let (manifest, report) = walk_it(&base, &new, &map, 1.0).unwrap();
        prop_assert_eq!(&manifest, &full_manifest(&new));
        prop_assert_eq!(report.bytes_reused + report.bytes_chunked, new.len() as u64);
        // Sampling everything finds nothing wrong with an exact map.
        let (again, _) = walk_it(&base, &new, &map, 100.0).unwrap();
        prop_assert_eq!(again, manifest);
    }

    #[test]
    fn a_map_that_hides_a_change_is_caught_or_harmless(
        base_len in 1usize..60_000,
        zero_run in (0.0f64..1.0, 0usize..20_000),
        edits in edits(),
        hide in any::<prop::sample::Index>(),
        seed in any::<u64>(),
    ) {
        let base = base_image(base_len, zero_run, seed);
        let (new, mut changed) = apply(&base, base_len, &edits, seed);
        // Forget one run of the exact map.
        let runs: Vec<usize> = (0..changed.len())
            .filter(|&i| changed[i] && (i == 0 || !changed[i - 1]))
            .collect();
        if !runs.is_empty() {
            let mut i = runs[hide.index(runs.len())];
            while i < changed.len() && changed[i] {
                changed[i] = false;
                i += 1;
            }
        }
        let map = exact_map(&changed, &new, false);
        match walk_it(&base, &new, &map, 100.0) {
            // The hidden bytes fell inside a re-chunked stretch, or did
            // not change: the manifest is still the full read's.
            Ok((manifest, _)) => prop_assert_eq!(manifest, full_manifest(&new)),
            Err(bunker_changes::rechunk::Error::MapWrong { .. }) => {}
            Err(other) => prop_assert!(false, "unexpected error {other}"),
        }
    }
}

#[test]
fn a_small_change_in_a_large_image_reads_a_few_chunks() {
    let base = noise(4 << 20, 3);
    let mut new = base.clone();
    new[2_000_000..2_000_100].fill(7);
    let map = ChangeMap::from_extents(
        [Extent {
            offset: 2_000_000,
            len: 100,
            kind: Kind::Data,
        }],
        new.len() as u64,
    )
    .unwrap();
    let (manifest, report) = walk_it(&base, &new, &map, 0.0).unwrap();
    assert_eq!(manifest, full_manifest(&new));
    // From the boundary before the change to a shared one after it: a few
    // chunks of at most 4 KiB, read in 8 KiB pieces.
    assert!(report.bytes_chunked < 5 * 4096, "{report:?}");
    assert!(
        report.bytes_read <= report.bytes_chunked + 2 * 8192,
        "{report:?}"
    );
    assert!(report.chunks_reused > 900, "{report:?}");
}

#[test]
fn zero_extents_are_not_read() {
    let base = noise(1 << 20, 9);
    let mut new = base.clone();
    new[100_000..400_000].fill(0);
    let map = ChangeMap::from_extents(
        [Extent {
            offset: 100_000,
            len: 300_000,
            kind: Kind::Zero,
        }],
        new.len() as u64,
    )
    .unwrap();
    let (manifest, report) = walk_it(&base, &new, &map, 0.0).unwrap();
    assert_eq!(manifest, full_manifest(&new));
    assert!(report.bytes_read < 40_000, "{report:?}");
}

#[test]
fn a_wrong_map_is_caught_by_a_full_sample_and_named() {
    let base = noise(256 << 10, 5);
    let mut new = base.clone();
    new[200_000] ^= 1;
    let err = walk_it(&base, &new, &ChangeMap::default(), 100.0).unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains("map is wrong") && text.contains("unchanged"),
        "{text}"
    );
}

#[test]
fn a_base_manifest_of_the_wrong_size_is_refused() {
    let base = noise(100_000, 1);
    let entries = full_manifest(&base);
    let short = entries[..entries.len() - 1].to_vec();
    let err = walk(
        &chunker(),
        short.into_iter().map(Ok::<_, std::io::Error>),
        base.len() as u64,
        &ChangeMap::default(),
        base.len() as u64,
        |offset: u64, buf: &mut [u8]| {
            buf.copy_from_slice(&base[offset as usize..offset as usize + buf.len()]);
            Ok(())
        },
        Options::default(),
        |_| Ok(()),
    )
    .unwrap_err();
    assert!(err.to_string().contains("base manifest"), "{err}");
}

/// Data written at the start of a long zero run moves where the new cuts
/// through the run fall (every chunk there is `max_len` zeros from the last
/// cut), so they never meet the base's again before the run ends: the
/// zeros must be cut without being read.
#[test]
fn a_change_that_shifts_the_cuts_of_a_zero_run_does_not_read_it() {
    let mut base = noise(100_000, 11);
    base.extend(std::iter::repeat_n(0u8, 1 << 20));
    base.extend(noise(100_000, 12));
    let mut new = base.clone();
    new[100_000..103_000].copy_from_slice(&noise(3_000, 13));
    let map = ChangeMap::from_extents(
        [Extent {
            offset: 100_000,
            len: 3_000,
            kind: Kind::Data,
        }],
        new.len() as u64,
    )
    .unwrap();
    let (manifest, report) = walk_it(&base, &new, &map, 0.0).unwrap();
    assert_eq!(manifest, full_manifest(&new));
    assert!(report.bytes_zeros > 1_000_000, "{report:?}");
    assert!(report.bytes_read < 50_000, "{report:?}");
    // A full sample reads the zeros back and finds them zeros.
    let (again, report) = walk_it(&base, &new, &map, 100.0).unwrap();
    assert_eq!(again, manifest);
    assert!(report.bytes_sampled >= report.bytes_zeros, "{report:?}");
}
