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

/// The records of every sealed pack, which must fill it up to its trailer.
fn records(repo: &Path) -> Vec<Record> {
    let mut out = Vec::new();
    for pack in bunker_tests::pack_files(repo, "pack") {
        let bytes = std::fs::read(&pack).unwrap();
        let trailer = bunker_tests::trailer_offset(&bytes);
        let recs = bunker_tests::pack_records(&bytes, trailer as usize);
        assert_eq!(
            recs.last().map_or(64, |r| r.end),
            trailer,
            "{}: records do not reach the trailer",
            pack.display()
        );
        out.extend(recs.into_iter().map(|r| Record {
            pack: pack.clone(),
            start: r.start,
            end: r.end,
            id: r.id,
        }));
    }
    out
}

#[test]
fn flipped_bits_fail_exactly_the_chunk_that_holds_them() {
    let seed = crate::seed(0xB17F11);
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(seed);
    let dir = bunker_tests::scratch();
    let names = ["f0", "f1", "f2"];
    let mut ids = HashSet::new();
    {
        let repo = Repository::create(
            dir.path(),
            CreateOptions {
                chunker: ChunkerParams::new(16 << 10, 64 << 10, 256 << 10).unwrap(),
                zstd_level: 3,
                pack_target_len: 1 << 20,
                key: None,
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
    for trial in 0..crate::scaled(25) {
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

/// Day `day` of volume `name`: the name's base image with a 128 KiB window
/// rewritten each day.
fn day_data(name: &str, day: u64) -> Vec<u8> {
    let mut data = snapshot_data(name);
    if day > 0 {
        let at = (day as usize * (200 << 10)) % (data.len() - (128 << 10));
        let seed = u64::from_le_bytes(
            blake3::hash(format!("{name}/{day}").as_bytes()).as_bytes()[..8]
                .try_into()
                .unwrap(),
        );
        data[at..at + (128 << 10)].copy_from_slice(&bunker_tests::noise(seed, 128 << 10));
    }
    data
}

/// The files under `dir`, less hidden ones (`.deleted-hwm`).
fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut files = bunker_tests::files_under(dir);
    files.retain(|p| !p.file_name().unwrap().to_str().unwrap().starts_with('.'));
    files
}

fn flip(path: &Path, at: u64, bit: u8) {
    use std::os::unix::fs::FileExt;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap();
    let mut b = [0u8; 1];
    f.read_exact_at(&mut b, at).unwrap();
    b[0] ^= 1 << bit;
    f.write_all_at(&b, at).unwrap();
}

type Snap = (String, u64);

/// 1,000 single-bit flips across pack records, pack headers and trailers,
/// index files and manifests of a 20-snapshot repository. Every flip is
/// detected by verify, which names exactly the snapshots that cannot be
/// restored (none for a header, trailer or index flip: the records are
/// intact); index damage is repaired by a rebuild; clean runs raise no
/// alarm; damaged records are healed by backing the same data up again.
#[test]
fn bit_rot_is_always_detected_and_names_exactly_the_damaged_snapshots() {
    let seed = crate::seed(0xB17_2070);
    bit_rot(None, seed, crate::scaled(700), "corruption::bit_rot_is");
}

/// The same 300 flips in an encrypted repository: sealed records,
/// trailers and manifests, keyed ids in record headers and the index.
#[test]
fn bit_rot_in_an_encrypted_repository_is_detected_and_names_exactly_the_damaged_snapshots() {
    let seed = crate::seed(0xB17_E2C7);
    bit_rot(
        Some(bunker_tests::test_key()),
        seed,
        crate::scaled(300),
        "corruption::bit_rot_in_an_encrypted",
    );
}

fn bit_rot(key: Option<std::sync::Arc<bunker_crypt::Key>>, seed: u64, trials: u64, test: &str) {
    let reproduce =
        format!("BUNKER_SEED={seed} cargo test --release -p bunker-tests --test suite {test}");
    // Record headers hold at-rest ids (keyed in an encrypted repository).
    let crypt = key.as_deref().map(bunker_store::crypt::RepoCrypt::new);
    let at_rest = |id: &ChunkId| crypt.as_ref().map_or(*id, |c| c.at_rest(id));
    let open = |root: &Path| {
        Repository::open_with(
            root,
            bunker_store::OpenOptions {
                key: key.clone(),
                ..Default::default()
            },
        )
    };
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(seed);
    let dir = bunker_tests::scratch();
    let root = dir.path();
    let names = ["vol-a", "vol-b", "vol-c", "vol-d"];
    // By at-rest id, as record headers name chunks; `truth` maps back.
    let mut owners: std::collections::HashMap<ChunkId, HashSet<Snap>> = Default::default();
    let mut truth: std::collections::HashMap<ChunkId, ChunkId> = Default::default();
    let digest = {
        let repo = Repository::create(
            root,
            CreateOptions {
                chunker: ChunkerParams::new(16 << 10, 64 << 10, 256 << 10).unwrap(),
                zstd_level: 1,
                pack_target_len: 1 << 20,
                key: key.clone(),
            },
        )
        .unwrap();
        for day in 0..5 {
            for n in names {
                repo.ingest(n, &day_data(n, day)[..], &Default::default(), &mut |_| {})
                    .unwrap();
            }
        }
        for s in repo.list(None).unwrap() {
            for e in repo.manifest_entries(&s.name, s.id).unwrap() {
                let e = e.unwrap();
                if !e.id.is_zero() {
                    truth.insert(at_rest(&e.id), e.id);
                    owners
                        .entry(at_rest(&e.id))
                        .or_default()
                        .insert((s.name.clone(), s.id.0));
                }
            }
        }
        repo.close().unwrap();
        assert_eq!(repo.list(None).unwrap().len(), 20);
        assert!(repo.verify().unwrap().is_clean());
        repo.index_digest()
    };
    let recs = records(root);
    let packs: Vec<PathBuf> = {
        let mut p: Vec<PathBuf> = recs.iter().map(|r| r.pack.clone()).collect();
        p.dedup();
        p
    };
    // Manifests only: a flipped block hashes file (`.blocks`) leaves every
    // snapshot restorable and is refused, named, by the changed-extent
    // backup that reads it (`snapshot::blocks` checks both checksums).
    let manifests: Vec<_> = files_under(&root.join("snapshots"))
        .into_iter()
        .filter(|p| p.extension().is_some_and(|x| x == "snap"))
        .collect();
    assert_eq!(manifests.len(), 20);
    let index_files = files_under(&root.join("index"));
    let index_saved: Vec<(PathBuf, Vec<u8>)> = index_files
        .iter()
        .map(|p| (p.clone(), std::fs::read(p).unwrap()))
        .collect();
    let restore_index = || {
        std::fs::remove_dir_all(root.join("index")).unwrap();
        for (p, b) in &index_saved {
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, b).unwrap();
        }
    };
    let manifest_snap = |p: &Path| -> Snap {
        let name = p
            .parent()
            .unwrap()
            .file_name()
            .unwrap()
            .to_str()
            .unwrap()
            .to_string();
        let stem = p.file_stem().unwrap().to_str().unwrap();
        let id = stem.trim_start_matches('0');
        (
            name,
            id.parse()
                .unwrap_or_else(|_| panic!("manifest file name {p:?}")),
        )
    };
    let verify = |quarantine: bool| {
        let repo = open(root)?;
        repo.verify_with(&bunker_store::VerifyOptions {
            quarantine,
            ..Default::default()
        })
    };
    // A rebuilt index equals the original, and the repository verifies.
    let check_rebuilt = |repo: &Repository, what: &str| {
        assert_eq!(
            repo.index_digest(),
            digest,
            "{what}: the rebuilt index differs"
        );
        assert!(repo.verify().unwrap().is_clean(), "{what}: after rebuild");
    };
    let rebuild = |what: &str| {
        Repository::rebuild_index_with(
            root,
            bunker_store::OpenOptions {
                key: key.clone(),
                ..Default::default()
            },
        )
        .unwrap_or_else(|e| panic!("{what}: rebuild: {e}"));
        check_rebuilt(&open(root).unwrap(), what);
    };
    let mut counts = [0u64; 5];
    let (mut rebuilt, mut rebuilt_on_open) = (0, 0);
    for trial in 0..trials {
        if trial % 100 == 0 {
            let clean = verify(false).unwrap();
            assert!(
                clean.is_clean(),
                "false alarm before trial {trial}: {clean:?}; {reproduce}"
            );
        }
        let kind = rng.random_range(0..5usize);
        counts[kind] += 1;
        let bit = rng.random_range(0..8u8);
        let (path, at, expected): (PathBuf, u64, HashSet<Snap>) = match kind {
            // A record: exactly the snapshots referencing its chunk.
            0 => {
                let r = &recs[rng.random_range(0..recs.len())];
                (
                    r.pack.clone(),
                    rng.random_range(r.start..r.end),
                    owners[&r.id].clone(),
                )
            }
            // A pack header: records intact, nothing unrestorable.
            1 => (
                packs[rng.random_range(0..packs.len())].clone(),
                rng.random_range(0..64),
                HashSet::new(),
            ),
            // Trailer or footer.
            2 => {
                let p = &packs[rng.random_range(0..packs.len())];
                let last = recs
                    .iter()
                    .filter(|r| &r.pack == p)
                    .map(|r| r.end)
                    .max()
                    .unwrap();
                let len = std::fs::metadata(p).unwrap().len();
                (p.clone(), rng.random_range(last..len), HashSet::new())
            }
            3 => {
                let p = &index_files[rng.random_range(0..index_files.len())];
                let len = std::fs::metadata(p).unwrap().len();
                (p.clone(), rng.random_range(0..len), HashSet::new())
            }
            _ => {
                let p = &manifests[rng.random_range(0..manifests.len())];
                let len = std::fs::metadata(p).unwrap().len();
                (
                    p.clone(),
                    rng.random_range(0..len),
                    HashSet::from([manifest_snap(p)]),
                )
            }
        };
        flip(&path, at, bit);
        let what = format!(
            "trial {trial}: bit {bit} of byte {at} of {}; {reproduce}",
            path.display()
        );
        let mut expected = expected;
        if kind == 3 {
            let repo = match open(root) {
                Ok(repo) => repo,
                // A flipped version field reads as a newer format: refused
                // by name (not this build's to throw away), then rebuilt.
                Err(e) => {
                    assert!(
                        matches!(e, Error::Corrupt { .. })
                            && e.to_string().contains("unsupported index")
                            && e.to_string().contains("--rebuild-index"),
                        "{what}: open: {e}"
                    );
                    rebuild(&what);
                    rebuilt += 1;
                    restore_index();
                    continue;
                }
            };
            // Damage found on open: the index is rebuilt from the packs
            // there and then, with no manual step.
            if repo.recovery().index_rebuilt.is_some() {
                check_rebuilt(&repo, &what);
                rebuilt_on_open += 1;
                drop(repo);
                restore_index();
                continue;
            }
            // Otherwise verify finds it, and it breaks exactly the
            // snapshots with a chunk that no longer reads through the index
            // (the path restores take).
            expected = owners
                .iter()
                .filter(|(id, _)| repo.read_chunk(&truth[*id]).is_err())
                .flat_map(|(_, snaps)| snaps.iter().cloned())
                .collect();
        }
        let report = verify(false).unwrap_or_else(|e| panic!("{what}: open failed: {e}"));
        assert!(!report.is_clean(), "not detected: {what}");
        let named: HashSet<Snap> = report
            .damaged_snapshots
            .iter()
            .map(|d| (d.name.clone(), d.id.0))
            .collect();
        assert_eq!(named, expected, "{what}: {report:?}");
        if kind == 3 {
            if counts[3] % 5 == 1 {
                rebuild(&what);
                rebuilt += 1;
            }
            restore_index();
        } else {
            flip(&path, at, bit);
        }
    }
    assert!(
        verify(false).unwrap().is_clean(),
        "false alarm at the end; {reproduce}"
    );

    // Healing: a damaged record is quarantined; backing the same data up
    // again stores the chunk anew and every snapshot restores exactly.
    let mut healed = 0;
    for _ in 0..5 {
        let r = &recs[rng.random_range(0..recs.len())];
        flip(
            &r.pack,
            rng.random_range(r.start..r.end),
            rng.random_range(0..8),
        );
        let report = verify(true).unwrap();
        assert_eq!(report.newly_quarantined, 1, "{report:?}; {reproduce}");
        let repo = open(root).unwrap();
        let mut again: Vec<Snap> = owners[&r.id].iter().cloned().collect();
        again.sort();
        let (name, id) = &again[0];
        let day = (0..5u64)
            .find(|&d| {
                repo.snapshot(name, Some(bunker_store::SnapshotId(*id)))
                    .unwrap()
                    .stream_hash
                    == *blake3::hash(&day_data(name, d)).as_bytes()
            })
            .unwrap();
        repo.ingest(
            name,
            &day_data(name, day)[..],
            &Default::default(),
            &mut |_| {},
        )
        .unwrap();
        let after = repo.verify().unwrap();
        assert!(after.is_clean(), "not healed: {after:?}; {reproduce}");
        for (n, i) in &again {
            let mut out = Vec::new();
            std::io::Read::read_to_end(
                &mut repo
                    .reader(n, Some(bunker_store::SnapshotId(*i)), None)
                    .unwrap(),
                &mut out,
            )
            .unwrap();
            assert_eq!(
                *blake3::hash(&out).as_bytes(),
                repo.snapshot(n, Some(bunker_store::SnapshotId(*i)))
                    .unwrap()
                    .stream_hash
            );
        }
        healed += 1;
    }
    println!(
        "bit rot: {trials} flips (records {}, pack headers {}, trailers {}, index {}, manifests {}), all detected, snapshots named exactly; index damage found on open {rebuilt_on_open} times and rebuilt there, {rebuilt} rebuilds after verify, all equal to the original; {healed} damaged records healed by a new backup",
        counts[0], counts[1], counts[2], counts[3], counts[4]
    );
}
