//! The repository through its public API: round trips, dedup, concurrency,
//! recovery, corruption and bad input.

use std::io::Read;

use bunker_store::{Error, IngestOptions, Piece, Repository};

mod common;
use common::*;

#[test]
fn round_trip_dedup_and_ranges() {
    let dir = tempfile::tempdir().unwrap();
    let repo = Repository::create(dir.path(), small_opts()).unwrap();
    let day0 = volume(1, 8 << 20);
    let a = ingest(&repo, "vol", &day0);
    assert_eq!(a.size, day0.len() as u64);
    assert_eq!(a.stream_hash, *blake3::hash(&day0).as_bytes());
    assert!(a.zero_chunks > 0);
    assert!(
        a.new_bytes < day0.len() as u64,
        "text and zeros must shrink"
    );
    let mut day1 = day0.clone();
    day1.splice(3_000_000..3_000_000, *b"inserted!");
    day1[6_000_000..6_004_096].fill(7);
    let b = ingest(&repo, "vol", &day1);
    assert!(b.id > a.id);
    assert!(
        b.new_chunks <= 4,
        "an insert and an overwrite touch a few chunks, not {}",
        b.new_chunks
    );
    assert_eq!(read_all(&repo, "vol", Some(a.id)).unwrap(), day0);
    assert_eq!(read_all(&repo, "vol", None).unwrap(), day1);
    for (start, end) in [
        (0u64, 1u64),
        (65_535, 200_000),
        (4_000_000, 4_000_001),
        (day1.len() as u64 - 10, day1.len() as u64),
    ] {
        let mut r = repo.reader("vol", None, Some(start..end)).unwrap();
        let mut got = Vec::new();
        r.read_to_end(&mut got).unwrap();
        assert_eq!(
            got,
            &day1[start as usize..end as usize],
            "range {start}..{end}"
        );
    }
    // Zero chunks come out as holes.
    let mut r = repo.reader("vol", None, None).unwrap();
    let mut holes = 0;
    while let Some(p) = r.next_piece().unwrap() {
        if let Piece::Zero(n) = p {
            holes += n;
        }
    }
    assert!(holes >= 1 << 20, "{holes}");
    let list = repo.list(Some("vol")).unwrap();
    assert_eq!(
        list.iter().map(|s| s.id).collect::<Vec<_>>(),
        vec![a.id, b.id]
    );
    assert!(repo.verify().unwrap().is_clean());
}

#[test]
fn reopen_keeps_everything_and_ids_are_not_reused() {
    let dir = tempfile::tempdir().unwrap();
    let data = volume(2, 3 << 20);
    let (a, b) = {
        let repo = Repository::create(dir.path(), small_opts()).unwrap();
        let a = ingest(&repo, "x", &data);
        let b = ingest(&repo, "y", &data[..1 << 20]);
        repo.delete("y", b.id).unwrap();
        (a, b)
    };
    let repo = Repository::open(dir.path()).unwrap();
    assert_eq!(read_all(&repo, "x", Some(a.id)).unwrap(), data);
    assert!(matches!(
        repo.snapshot("y", Some(b.id)),
        Err(Error::NotFound { .. })
    ));
    let c = ingest(&repo, "z", b"hello");
    assert!(c.id > b.id, "deleted id {} reused as {}", b.id, c.id);
    assert_eq!(c.new_chunks, 1);
    let again = ingest(&repo, "x", &data);
    assert_eq!(again.new_chunks, 0, "reopened index must deduplicate");
}

#[test]
fn concurrent_streams_store_shared_chunks_once() {
    let dir = tempfile::tempdir().unwrap();
    let repo = Repository::create(dir.path(), small_opts()).unwrap();
    let base = noise(3, 6 << 20);
    let infos: Vec<_> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..6)
            .map(|i| {
                let repo = repo.clone();
                let mut data = base.clone();
                data.extend_from_slice(&noise(100 + i, 1 << 20));
                s.spawn(move || {
                    (
                        data.clone(),
                        repo.ingest(
                            &format!("s{i}"),
                            &data[..],
                            &IngestOptions::default(),
                            &mut |_| {},
                        )
                        .unwrap(),
                    )
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let unique: u64 = infos.iter().map(|(_, i)| i.new_bytes).sum();
    // Shared base once (random: stored raw) + six unique MiB, plus record
    // headers; a duplicate base would add 6 MiB.
    assert!(unique < (6 + 6 + 1) << 20, "stored {unique} bytes");
    for (data, info) in &infos {
        assert_eq!(&read_all(&repo, &info.name, Some(info.id)).unwrap(), data);
    }
    repo.close().unwrap();
    let stats = repo.stats().unwrap();
    assert!(stats.stored_bytes < (6 + 6 + 2) << 20, "{stats:?}");
}

#[test]
fn stream_hash_mismatch_and_source_errors_commit_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let repo = Repository::create(dir.path(), small_opts()).unwrap();
    let data = noise(4, 1 << 20);
    let opts = IngestOptions {
        expected_hash: Some([1; 32]),
        ..Default::default()
    };
    let err = repo.ingest("v", &data[..], &opts, &mut |_| {}).unwrap_err();
    assert!(matches!(err, Error::StreamHashMismatch { .. }), "{err}");
    struct Failing(usize);
    impl Read for Failing {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            if self.0 == 0 {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::ConnectionReset,
                    "client went away",
                ));
            }
            let n = buf.len().min(self.0).min(100_000);
            buf[..n].fill(3);
            self.0 -= n;
            Ok(n)
        }
    }
    let err = repo
        .ingest(
            "v",
            Failing(20 << 20),
            &IngestOptions::default(),
            &mut |_| {},
        )
        .unwrap_err();
    assert!(matches!(err, Error::Source(_)), "{err}");
    assert!(repo.list(None).unwrap().is_empty());
    assert_eq!(
        std::fs::read_dir(dir.path().join("tmp")).unwrap().count(),
        0,
        "partial manifest left behind"
    );
    let ok = IngestOptions {
        expected_hash: Some(*blake3::hash(&data).as_bytes()),
        ..Default::default()
    };
    repo.ingest("v", &data[..], &ok, &mut |_| {}).unwrap();
}

#[test]
fn flipped_pack_bytes_fail_reads_of_that_chunk_only() {
    let dir = tempfile::tempdir().unwrap();
    let a_data = noise(5, 2 << 20);
    let b_data = noise(6, 2 << 20);
    let (a, b) = {
        let repo = Repository::create(dir.path(), small_opts()).unwrap();
        (ingest(&repo, "a", &a_data), ingest(&repo, "b", &b_data))
    };
    // Snapshot a's chunks are in the first pack(s); flip a byte in the
    // middle of the first pack's data.
    let first = packs(dir.path())[0].clone();
    let mut bytes = std::fs::read(&first).unwrap();
    let at = bytes.len() / 3;
    bytes[at] ^= 0x40;
    std::fs::write(&first, &bytes).unwrap();
    let repo = Repository::open(dir.path()).unwrap();
    let err = read_all(&repo, "a", Some(a.id)).unwrap_err();
    assert!(err.is_corrupt(), "{err}");
    let msg = err.to_string();
    assert!(
        msg.contains("packs/") && msg.contains("offset") && msg.contains("chunk"),
        "{msg}"
    );
    assert_eq!(read_all(&repo, "b", Some(b.id)).unwrap(), b_data);
    let report = repo.verify().unwrap();
    assert_eq!(report.damage.len(), 1, "{report:?}");
    assert_eq!(report.damaged_snapshots.len(), 1);
    assert_eq!(report.damaged_snapshots[0].name, "a");
}

#[test]
fn bad_files_give_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    {
        let repo = Repository::create(dir.path(), small_opts()).unwrap();
        ingest(&repo, "v", &noise(7, 3 << 20));
    }
    let config = dir.path().join("config");
    let good = std::fs::read(&config).unwrap();
    let mut wrong_magic = good.clone();
    wrong_magic[0] = b'X';
    std::fs::write(&config, &wrong_magic).unwrap();
    let e = Repository::open(dir.path()).err().unwrap();
    assert!(matches!(e, Error::NotBunkerFile { .. }), "{e}");
    let mut future = good.clone();
    future[8] = 99;
    std::fs::write(&config, &future).unwrap();
    let e = Repository::open(dir.path()).err().unwrap();
    assert!(
        matches!(e, Error::UnsupportedVersion { found: 99, .. }),
        "{e}"
    );
    assert!(e.to_string().contains("version 99"), "{e}");
    std::fs::write(&config, &good).unwrap();
    // A missing pack: open works, reads and verify name the damage.
    let pack = packs(dir.path())[0].clone();
    std::fs::remove_file(&pack).unwrap();
    let repo = Repository::open(dir.path()).unwrap();
    let e = read_all(&repo, "v", None).unwrap_err();
    assert!(matches!(e, Error::NotFound { .. }) || e.is_corrupt(), "{e}");
    assert!(e.to_string().contains("pack"), "{e}");
    assert!(!repo.verify().unwrap().is_clean());
    drop(repo);
    let e = Repository::open(&dir.path().join("nope")).err().unwrap();
    assert!(matches!(e, Error::NotFound { .. }), "{e}");
}

#[test]
fn a_second_process_cannot_open_a_locked_repository() {
    let dir = tempfile::tempdir().unwrap();
    let _repo = Repository::create(dir.path(), small_opts()).unwrap();
    let e = Repository::open(dir.path()).err().unwrap();
    assert!(matches!(e, Error::Locked { .. }), "{e}");
}

#[test]
fn rebuilt_index_equals_the_original() {
    let dir = tempfile::tempdir().unwrap();
    let original = {
        let repo = Repository::create(dir.path(), small_opts()).unwrap();
        for i in 0..4 {
            ingest(&repo, &format!("v{i}"), &volume(10 + i, 2 << 20));
        }
        repo.close().unwrap();
        repo.index_digest()
    };
    assert!(original.1 > 50, "{original:?}");
    Repository::rebuild_index(dir.path()).unwrap();
    let repo = Repository::open(dir.path()).unwrap();
    assert_eq!(repo.index_digest(), original);
    for i in 0..4 {
        assert_eq!(
            read_all(&repo, &format!("v{i}"), None).unwrap(),
            volume(10 + i, 2 << 20)
        );
    }
    // A truncated index run is found on open, which rebuilds the index from
    // the packs and says so.
    drop(repo);
    let file = std::fs::read_dir(dir.path().join("index"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|e| e == "run"))
        .unwrap();
    let len = std::fs::metadata(&file).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&file)
        .unwrap()
        .set_len(len / 2)
        .unwrap();
    let repo = Repository::open(dir.path()).unwrap();
    let why = repo
        .recovery()
        .index_rebuilt
        .clone()
        .expect("index rebuilt");
    assert!(why.contains("truncated"), "{why}");
    assert_eq!(repo.index_digest(), original);
    drop(repo);
    let repo = Repository::open(dir.path()).unwrap();
    assert_eq!(repo.recovery(), &bunker_store::Recovery::default());
    assert_eq!(repo.index_digest(), original);
}

#[test]
fn dropping_the_last_handle_releases_the_lock_even_right_after_a_read() {
    // Regression: a reader's read-ahead thread kept a repository handle
    // alive for a moment after the reader was dropped, so an immediate
    // reopen could fail with `Locked`.
    let dir = tempfile::tempdir().unwrap();
    // Several read-ahead batches, so the producer is still decoding when a
    // partial reader is dropped.
    let data = volume(60, 40 << 20);
    {
        let repo = Repository::create(dir.path(), small_opts()).unwrap();
        ingest(&repo, "v", &data);
    }
    assert_eq!(
        read_all(&Repository::open(dir.path()).unwrap(), "v", None).unwrap(),
        data
    );
    for round in 0..50 {
        let repo = Repository::open(dir.path()).unwrap_or_else(|e| panic!("round {round}: {e}"));
        // A partial read; then the reader and the repository are dropped and
        // the next round reopens at once.
        let mut first = [0u8; 10];
        repo.reader("v", None, None)
            .unwrap()
            .read_exact(&mut first)
            .unwrap();
        assert_eq!(first, data[..10]);
    }
}

/// The ingest pipeline cuts a stream in 16 MiB blocks on three threads and
/// carries each block's incomplete chunk to the next: the chunks it records
/// must be exactly those of the sequential chunker over the whole stream
/// (else raw uploads and client-side dedup would stop sharing chunks), with
/// the source read in odd pieces.
#[test]
fn ingest_cuts_across_blocks_equal_the_sequential_chunker() {
    struct Pieces<'a>(&'a [u8]);
    impl Read for Pieces<'_> {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            let n = buf.len().min(self.0.len()).min(77_777);
            buf[..n].copy_from_slice(&self.0[..n]);
            self.0 = &self.0[n..];
            Ok(n)
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let opts = small_opts();
    let chunker = bunker_chunk::Chunker::new(opts.chunker);
    let repo = Repository::create(dir.path(), opts).unwrap();
    // Three block seams and a short last block.
    let data = volume(11, (40 << 20) + 12_345);
    let info = repo
        .ingest("v", Pieces(&data), &IngestOptions::default(), &mut |_| {})
        .unwrap();
    let got: Vec<(u64, bunker_store::ChunkId)> = repo
        .manifest_entries("v", info.id)
        .unwrap()
        .map(|e| e.map(|e| (e.end, e.id)).unwrap())
        .collect();
    let mut start = 0;
    let want: Vec<(u64, bunker_store::ChunkId)> = chunker
        .cuts(&data, true)
        .iter()
        .map(|c| {
            let slice = &data[start..c.end];
            start = c.end;
            let id = if c.zero {
                bunker_store::ChunkId::ZERO
            } else {
                bunker_store::ChunkId::of(slice)
            };
            (c.end as u64, id)
        })
        .collect();
    assert_eq!(got.len(), want.len());
    assert!(got == want, "ingest cut the stream differently");
    assert_eq!(read_all(&repo, "v", None).unwrap(), data);
}

/// A chunk uploaded as a zstd frame is stored as that frame (no second
/// compression), reads back exact, and a frame that lies is refused
/// before anything is stored.
#[test]
fn a_zstd_frame_is_stored_as_it_came_and_a_lying_frame_is_refused() {
    use bunker_store::ChunkId;
    let dir = tempfile::tempdir().unwrap();
    let repo = Repository::create(dir.path(), small_opts()).unwrap();
    let pins = repo.pins();
    let text = volume(7, 200 << 10)[..100 << 10].to_vec();
    let id = ChunkId::of(&text);
    // Level 19 gives a frame the repository's level 3 would not: stored
    // as sent, its length is the frame's.
    let frame = zstd::bulk::compress(&text, 19).unwrap();
    let ours = zstd::bulk::compress(&text, 3).unwrap();
    assert_ne!(frame.len(), ours.len());
    let (raw_len, stored) = repo.store_chunk_frame(&id, &frame, &pins).unwrap();
    assert_eq!((raw_len, stored), (text.len() as u64, frame.len() as u64));
    assert_eq!(repo.read_chunk(&id).unwrap(), text);
    // Stored once.
    assert_eq!(
        repo.store_chunk_frame(&id, &frame, &pins).unwrap(),
        (text.len() as u64, 0)
    );

    // A frame that does not save space is kept raw, not recompressed.
    let noise = bunker_testdata::noise(9, 64 << 10);
    let nid = ChunkId::of(&noise);
    let nframe = zstd::bulk::compress(&noise, 1).unwrap();
    let (_, stored) = repo.store_chunk_frame(&nid, &nframe, &pins).unwrap();
    assert_eq!(stored, noise.len() as u64);
    assert_eq!(repo.read_chunk(&nid).unwrap(), noise);

    // Wrong bytes for the id, a broken frame, a frame past max_len.
    let other = ChunkId::of(b"something else");
    match repo.store_chunk_frame(&other, &frame, &pins) {
        Err(Error::ChunkHashMismatch { claimed, actual }) => {
            assert_eq!((claimed, actual), (other, id))
        }
        r => panic!("a frame of other bytes was not refused: {r:?}"),
    }
    let mut broken = frame.clone();
    broken.truncate(frame.len() / 2);
    let e = repo.store_chunk_frame(&id, &broken, &pins).unwrap_err();
    assert!(
        matches!(&e, Error::Invalid(m) if m.contains("not a zstd frame")),
        "{e}"
    );
    let big = vec![1u8; (256 << 10) + 1];
    let e = repo
        .store_chunk_frame(
            &ChunkId::of(&big),
            &zstd::bulk::compress(&big, 3).unwrap(),
            &pins,
        )
        .unwrap_err();
    assert!(
        matches!(&e, Error::Invalid(m) if m.contains("262144")),
        "{e}"
    );
    assert!(repo.read_chunk(&other).is_err());
}

/// Ingests `data` as `name`; the snapshot and the window hits it made.
fn ingest_counting(
    repo: &Repository,
    name: &str,
    data: &[u8],
) -> (bunker_store::SnapshotInfo, u64) {
    let mut hits = 0;
    let info = repo
        .ingest(name, data, &IngestOptions::default(), &mut |p| {
            hits = p.window_hits
        })
        .unwrap();
    (info, hits)
}

fn entries(repo: &Repository, s: &bunker_store::SnapshotInfo) -> Vec<bunker_store::ManifestEntry> {
    repo.manifest_entries(&s.name, s.id)
        .unwrap()
        .map(|e| e.unwrap())
        .collect()
}

fn san_day(seed: u64, day: u32) -> Vec<u8> {
    use bunker_testdata::image::{Image, ImageSpec};
    let mut out = Vec::new();
    Image::new(&ImageSpec::new(seed, 6 << 20), day)
        .write_to(&mut out)
        .unwrap();
    out
}

#[test]
fn the_dedup_window_gives_the_index_paths_manifests_and_stored_bytes() {
    for seed in [3, 11] {
        let a = tempfile::tempdir().unwrap();
        let b = tempfile::tempdir().unwrap();
        let with = Repository::create(a.path(), small_opts()).unwrap();
        Repository::create(b.path(), small_opts()).unwrap();
        let without = Repository::open_with(
            b.path(),
            bunker_store::OpenOptions {
                dedup_window: false,
                ..Default::default()
            },
        )
        .unwrap();
        for day in 0..4 {
            let data = san_day(seed, day);
            let (x, hits) = ingest_counting(&with, "vol", &data);
            let (y, none) = ingest_counting(&without, "vol", &data);
            assert_eq!(none, 0, "seed {seed} day {day}: the window was off");
            let ex = entries(&with, &x);
            let stored = ex.iter().filter(|e| !e.id.is_zero()).count() as u64;
            if day == 0 {
                assert_eq!(hits, 0);
            } else {
                // Most chunks repeat the day before; the new ones cannot hit.
                assert!(
                    hits >= stored.saturating_sub(x.new_chunks + stored / 10),
                    "seed {seed} day {day}: {hits} window hits of {stored} chunks"
                );
            }
            assert_eq!(ex, entries(&without, &y), "seed {seed} day {day}");
            assert_eq!(
                (x.new_chunks, x.new_bytes, x.stream_hash),
                (y.new_chunks, y.new_bytes, y.stream_hash),
                "seed {seed} day {day}"
            );
            assert_eq!(read_all(&with, "vol", Some(x.id)).unwrap(), data);
        }
        // A second name never uses another name's window.
        let (_, hits) = ingest_counting(&with, "other", &san_day(seed, 3));
        assert_eq!(hits, 0);
        let (va, vb) = (with.verify().unwrap(), without.verify().unwrap());
        assert_eq!((va.chunks, va.stored_bytes), (vb.chunks, vb.stored_bytes));
        assert!(va.damage.is_empty());
    }
}

#[test]
fn a_window_into_packs_gc_deleted_falls_back_to_the_index() {
    let dir = tempfile::tempdir().unwrap();
    let repo = Repository::create(dir.path(), small_opts()).unwrap();
    let data = san_day(5, 0);
    let (first, _) = ingest_counting(&repo, "vol", &data);
    repo.delete("vol", first.id).unwrap();
    let report = repo.gc(&bunker_store::GcOptions::default()).unwrap();
    assert!(report.packs_deleted > 0, "{report:?}");
    // Every location in the window is in a deleted pack: none may be used.
    let (again, hits) = ingest_counting(&repo, "vol", &data);
    assert_eq!(hits, 0);
    assert_eq!(again.new_chunks, first.new_chunks);
    assert_eq!(read_all(&repo, "vol", Some(again.id)).unwrap(), data);
    assert!(repo.verify().unwrap().damage.is_empty());
    // The next day uses the window this ingest wrote.
    let (_, hits) = ingest_counting(&repo, "vol", &san_day(5, 1));
    assert!(hits > 0);
}

#[test]
fn an_index_rebuild_drops_the_dedup_windows() {
    let dir = tempfile::tempdir().unwrap();
    let repo = Repository::create(dir.path(), small_opts()).unwrap();
    ingest(&repo, "vol", &san_day(7, 0));
    assert!(dir.path().join("window").join("vol").exists());
    drop(repo);
    Repository::rebuild_index(dir.path()).unwrap();
    assert!(!dir.path().join("window").exists());
    let repo = Repository::open(dir.path()).unwrap();
    let (_, hits) = ingest_counting(&repo, "vol", &san_day(7, 1));
    assert_eq!(hits, 0);
}
