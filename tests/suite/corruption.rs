//! Bit flips in packs: every read of the chunk whose record holds the
//! flipped bit fails with a corruption error naming pack, offset and chunk;
//! every other chunk still reads; wrong bytes are never returned.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use bunker_store::{ChunkId, ChunkerParams, CreateOptions, Error, Repository};
use bunker_tests::snapshot_data;
use rand::{Rng, SeedableRng};
use rand_xoshiro::Xoshiro256PlusPlus;

/// A record as found by parsing a pack file per docs/FORMAT.md.
struct Record {
    pack: PathBuf,
    start: u64,
    end: u64,
    id: ChunkId,
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
}

/// Walks the records of every sealed pack: header (64), then records of a
/// 64-byte header with the stored length at offset 12 and the id at 16.
fn records(repo: &Path) -> Vec<Record> {
    let mut out = Vec::new();
    let mut packs = Vec::new();
    for a in std::fs::read_dir(repo.join("packs")).unwrap().flatten() {
        for b in std::fs::read_dir(a.path()).unwrap().flatten() {
            for f in std::fs::read_dir(b.path()).unwrap().flatten() {
                packs.push(f.path());
            }
        }
    }
    for pack in packs {
        let bytes = std::fs::read(&pack).unwrap();
        let trailer = u64::from_le_bytes(
            bytes[bytes.len() - 48..bytes.len() - 40]
                .try_into()
                .unwrap(),
        );
        let mut at = 64u64;
        while at < trailer {
            let h = at as usize;
            assert_eq!(&bytes[h..h + 4], b"BREC", "{} at {at}", pack.display());
            let end = at + 64 + u64::from(u32_at(&bytes, h + 12));
            out.push(Record {
                pack: pack.clone(),
                start: at,
                end,
                id: ChunkId(bytes[h + 16..h + 48].try_into().unwrap()),
            });
            at = end;
        }
    }
    out
}

#[test]
fn flipped_bits_fail_exactly_the_chunk_that_holds_them() {
    let seed = crate::seed(0xB17F11);
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(seed);
    let dir = tempfile::tempdir().unwrap();
    let names = ["f0", "f1", "f2"];
    let mut ids = HashSet::new();
    {
        let repo = Repository::create(
            dir.path(),
            CreateOptions {
                chunker: ChunkerParams::new(16 << 10, 64 << 10, 256 << 10).unwrap(),
                zstd_level: 3,
                pack_target_len: 1 << 20,
            },
        )
        .unwrap();
        for n in names {
            let info = repo
                .ingest(n, &snapshot_data(n)[..], &Default::default(), &mut |_| {})
                .unwrap();
            for e in repo.manifest_entries(n, info.id).unwrap() {
                let e = e.unwrap();
                if !e.id.is_zero() {
                    ids.insert(e.id);
                }
            }
        }
    }
    let recs = records(dir.path());
    assert_eq!(
        recs.iter().map(|r| r.id).collect::<HashSet<_>>(),
        ids,
        "every referenced chunk has exactly one record"
    );
    for trial in 0..25 {
        let rec = &recs[rng.random_range(0..recs.len())];
        let at = rng.random_range(rec.start..rec.end);
        let bit = rng.random_range(0..8);
        let original = std::fs::read(&rec.pack).unwrap();
        let mut flipped = original.clone();
        flipped[at as usize] ^= 1 << bit;
        std::fs::write(&rec.pack, &flipped).unwrap();
        {
            let repo = Repository::open(dir.path()).unwrap();
            for id in &ids {
                match repo.read_chunk(id) {
                    Ok(bytes) => {
                        assert_ne!(id, &rec.id, "trial {trial}: flip at {at} bit {bit} not detected (BUNKER_SEED={seed})");
                        assert_eq!(ChunkId::of(&bytes), *id);
                    }
                    Err(e) => {
                        assert_eq!(
                            id, &rec.id,
                            "trial {trial}: unaffected chunk failed: {e} (BUNKER_SEED={seed})"
                        );
                        assert!(matches!(e, Error::Corrupt { .. }), "{e}");
                        let msg = e.to_string();
                        let pack_name = rec.pack.file_name().unwrap().to_str().unwrap();
                        assert!(
                            msg.contains(pack_name)
                                && msg.contains(&format!("offset {}", rec.start))
                                && msg.contains(&id.to_hex()),
                            "{msg}"
                        );
                    }
                }
            }
        }
        std::fs::write(&rec.pack, &original).unwrap();
    }
}
