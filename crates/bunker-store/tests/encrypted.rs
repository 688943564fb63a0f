//! An encrypted repository: what its files hold (no chunk id, no clear
//! payload), the key checks at open, and that damage, GC, recovery and an
//! index rebuild work on sealed records and at-rest ids.

mod common;

use std::sync::Arc;

use bunker_crypt::Key;
use bunker_store::{
    ChunkId, CreateOptions, Error, GcOptions, OpenOptions, Repository, VerifyOptions,
};
use common::{ingest, packs, read_all, small_opts, volume};

fn enc_opts(key: &Arc<Key>) -> CreateOptions {
    CreateOptions {
        key: Some(key.clone()),
        ..small_opts()
    }
}

fn open(root: &std::path::Path, key: Option<&Arc<Key>>) -> bunker_store::Result<Repository> {
    Repository::open_with(
        root,
        OpenOptions {
            key: key.cloned(),
            ..OpenOptions::default()
        },
    )
}

/// Every file below `dir`.
fn files_under(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        if e.path().is_dir() {
            out.extend(files_under(&e.path()));
        } else {
            out.push(e.path());
        }
    }
    out
}

/// What of `text` and `ids` the file `f` holds in clear, if anything.
fn leak(f: &std::path::Path, text: &[u8], ids: &[ChunkId]) -> Option<String> {
    let bytes = std::fs::read(f).unwrap();
    if contains(&bytes, text) {
        return Some(format!("{} holds clear text", f.display()));
    }
    ids.iter()
        .find(|id| contains(&bytes, &id.0))
        .map(|id| format!("{} holds chunk id {id}", f.display()))
}

/// The true ids of every stored chunk of `name`'s latest snapshot.
fn chunk_ids(repo: &Repository, name: &str) -> Vec<ChunkId> {
    let info = repo.snapshot(name, None).unwrap();
    let mut ids: Vec<ChunkId> = repo
        .manifest_entries(name, info.id)
        .unwrap()
        .map(|e| e.unwrap().id)
        .filter(|id| !id.is_zero())
        .collect();
    ids.sort();
    ids.dedup();
    ids
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

#[test]
fn an_encrypted_repository_round_trips_and_its_packs_hold_no_chunk_id_or_text() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let key = Arc::new(Key::generate());
    let data = volume(1, 3 << 20);
    let ids = {
        let repo = Repository::create(root, enc_opts(&key)).unwrap();
        assert_eq!(repo.key_id(), Some(key.id()));
        ingest(&repo, "vol", &data);
        assert_eq!(read_all(&repo, "vol", None).unwrap(), data);
        chunk_ids(&repo, "vol")
    };
    assert!(ids.len() > 10, "{}", ids.len());
    let config = std::fs::read(root.join("config")).unwrap();
    assert_eq!(&config[8..12], &3u32.to_le_bytes());
    assert_eq!(&config[64..80], &key.id().0);
    // The volume's text part compresses into records; clear, a line of it
    // would be visible in any pack. Every file is scanned: packs, index,
    // windows, manifests and block hashes.
    let text = b"INFO served /api/v1/items in 3ms";
    let files = files_under(root);
    assert!(files.len() > 3, "{files:?}");
    for f in &files {
        assert_eq!(leak(f, text, &ids), None);
    }
    // The same scan finds the ids in a clear repository of the same volume
    // (its text is compressed there too: the marker of the end-to-end test,
    // `encrypted::an_encrypted_server_keeps_no_text…`, is stored raw).
    let clear = tempfile::tempdir().unwrap();
    ingest(
        &Repository::create(clear.path(), small_opts()).unwrap(),
        "vol",
        &data,
    );
    let found: Vec<String> = files_under(clear.path())
        .iter()
        .filter_map(|f| leak(f, text, &ids))
        .collect();
    assert!(found.iter().any(|l| l.contains("chunk id")), "{found:?}");
    let repo = open(root, Some(&key)).unwrap();
    assert_eq!(read_all(&repo, "vol", None).unwrap(), data);
    for id in &ids {
        assert!(!repo.read_chunk(id).unwrap().is_empty());
    }
    // Dedup works through at-rest ids: the same data again adds nothing.
    let again = ingest(&repo, "vol", &data);
    assert_eq!(again.new_bytes, 0, "{again:?}");
    let report = repo.verify().unwrap();
    assert!(report.is_clean(), "{report:?}");
    assert_eq!(report.chunks as usize, ids.len());
}

#[test]
fn opening_with_a_missing_or_wrong_key_or_a_key_for_a_clear_repository_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let key = Arc::new(Key::generate());
    let other = Arc::new(Key::generate());
    let enc = dir.path().join("enc");
    drop(Repository::create(&enc, enc_opts(&key)).unwrap());
    let err = open(&enc, None).err().unwrap();
    assert!(matches!(err, Error::Key { given: None, .. }), "{err}");
    let msg = err.to_string();
    assert!(msg.contains(&key.id().to_string()), "{msg}");
    assert!(msg.contains("--key-file"), "{msg}");
    let err = open(&enc, Some(&other)).err().unwrap();
    let msg = err.to_string();
    assert!(matches!(err, Error::Key { .. }), "{msg}");
    assert!(msg.contains(&key.id().to_string()), "{msg}");
    assert!(msg.contains(&other.id().to_string()), "{msg}");
    let clear = dir.path().join("clear");
    drop(Repository::create(&clear, small_opts()).unwrap());
    let err = open(&clear, Some(&key)).err().unwrap();
    let msg = err.to_string();
    assert!(matches!(err, Error::Key { expected: None, .. }), "{msg}");
    assert!(msg.contains("not encrypted"), "{msg}");
    // Nothing was changed: both still open with the right key (or none).
    open(&enc, Some(&key)).unwrap();
    let clear = open(&clear, None).unwrap();
    assert_eq!(clear.key_id(), None);
    let config = std::fs::read(dir.path().join("clear/config")).unwrap();
    assert_eq!(&config[8..12], &1u32.to_le_bytes());
}

/// Chunks of exactly 16 KiB of noise each: incompressible, so stored raw
/// and of equal length (16 KiB + 40), two per snapshot.
fn equal_chunks(repo: &Repository) -> [(ChunkId, Vec<u8>); 2] {
    let a = bunker_testdata::noise(7, 16 << 10);
    let b = bunker_testdata::noise(8, 16 << 10);
    let pins = repo.pins();
    let mut w = repo.begin_snapshot("pair", "test", 0).unwrap();
    let mut all = Vec::new();
    for c in [&a, &b] {
        let id = ChunkId::of(c);
        repo.store_chunk(&id, c, &pins).unwrap();
        w.push_stored(&id, c.len() as u64).unwrap();
        all.extend_from_slice(c);
    }
    w.commit(*blake3::hash(&all).as_bytes(), None).unwrap();
    [(ChunkId::of(&a), a), (ChunkId::of(&b), b)]
}

/// Makes the checksum of the record at `at` (with `sealed` stored bytes)
/// match its bytes again, as a careful attacker would.
fn match_checksum(pack: &mut [u8], at: usize, sealed: usize) {
    let sum = xxhash_rust::xxh3::xxh3_64(
        &[&pack[at..at + 56], &pack[at + 64..at + 64 + sealed]].concat(),
    );
    pack[at + 56..at + 64].copy_from_slice(&sum.to_le_bytes());
}

/// Verify, leaving damaged records where they are.
fn verify_keeping(repo: &Repository) -> bunker_store::VerifyReport {
    repo.verify_with(&VerifyOptions {
        quarantine: false,
        ..VerifyOptions::default()
    })
    .unwrap()
}

#[test]
fn swapped_sealed_records_are_damage_of_exactly_those_two_chunks() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let key = Arc::new(Key::generate());
    let repo = Repository::create(root, enc_opts(&key)).unwrap();
    let chunks = equal_chunks(&repo);
    ingest(&repo, "other", &volume(2, 1 << 20));
    drop(repo);
    // The pair's records are the first pack's two, both 16 KiB stored raw.
    let pack = packs(root).into_iter().next().unwrap();
    let mut bytes = std::fs::read(&pack).unwrap();
    let len = 16 << 10;
    let (a, b) = (64, 64 + 64 + len + 40);
    assert_eq!(&bytes[b..b + 4], b"BREC");
    // Swap the sealed payloads and make each record's checksum match its
    // new bytes, as a careful attacker would: only the AEAD can tell.
    let sealed = len + 40;
    let pa = bytes[a + 64..a + 64 + sealed].to_vec();
    let pb = bytes[b + 64..b + 64 + sealed].to_vec();
    bytes[a + 64..a + 64 + sealed].copy_from_slice(&pb);
    bytes[b + 64..b + 64 + sealed].copy_from_slice(&pa);
    for at in [a, b] {
        match_checksum(&mut bytes, at, sealed);
    }
    std::fs::write(&pack, &bytes).unwrap();
    let repo = open(root, Some(&key)).unwrap();
    let report = verify_keeping(&repo);
    let mut damaged: Vec<ChunkId> = report.damage.iter().filter_map(|d| d.chunk).collect();
    damaged.sort();
    let mut want = vec![chunks[0].0, chunks[1].0];
    want.sort();
    assert_eq!(damaged, want, "{report:?}");
    assert!(
        report
            .damage
            .iter()
            .all(|d| d.reason.contains("does not open")),
        "{report:?}"
    );
    assert_eq!(report.damaged_snapshots.len(), 1, "{report:?}");
    assert_eq!(report.damaged_snapshots[0].name, "pair");
    assert_eq!(report.damaged_snapshots[0].bad_chunks, 2);
    assert!(read_all(&repo, "pair", None).is_err());
    assert_eq!(read_all(&repo, "other", None).unwrap(), volume(2, 1 << 20));
}

/// The codec is part of a record's associated data: a header claiming
/// another codec, its checksum made to match, does not open.
#[test]
fn a_record_header_given_another_codec_is_damage_of_that_chunk() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let key = Arc::new(Key::generate());
    let repo = Repository::create(root, enc_opts(&key)).unwrap();
    let chunks = equal_chunks(&repo);
    drop(repo);
    let pack = packs(root).into_iter().next().unwrap();
    let mut bytes = std::fs::read(&pack).unwrap();
    let (at, sealed) = (64, (16 << 10) + 40);
    assert_eq!(&bytes[at..at + 4], b"BREC");
    assert_eq!(bytes[at + 4], 0, "stored raw");
    bytes[at + 4] = 1;
    match_checksum(&mut bytes, at, sealed);
    std::fs::write(&pack, &bytes).unwrap();
    let repo = open(root, Some(&key)).unwrap();
    let report = verify_keeping(&repo);
    let damaged: Vec<ChunkId> = report.damage.iter().filter_map(|d| d.chunk).collect();
    assert_eq!(damaged, vec![chunks[0].0], "{report:?}");
    assert!(
        report.damage[0].reason.contains("does not open"),
        "{report:?}"
    );
}

#[test]
fn a_flipped_bit_in_a_sealed_record_is_damage_of_that_chunk_and_its_snapshots() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let key = Arc::new(Key::generate());
    let repo = Repository::create(root, enc_opts(&key)).unwrap();
    let chunks = equal_chunks(&repo);
    drop(repo);
    let pack = packs(root).into_iter().next().unwrap();
    let mut bytes = std::fs::read(&pack).unwrap();
    // The first record's payload, past its nonce, with the record's
    // checksum made to match: only the AEAD can tell.
    bytes[64 + 64 + 100] ^= 0x10;
    match_checksum(&mut bytes, 64, (16 << 10) + 40);
    std::fs::write(&pack, &bytes).unwrap();
    let repo = open(root, Some(&key)).unwrap();
    let err = repo.read_chunk(&chunks[0].0).unwrap_err();
    assert!(err.is_corrupt(), "{err}");
    assert!(err.to_string().contains("does not open"), "{err}");
    assert!(err.to_string().contains(&chunks[0].0.to_string()), "{err}");
    assert_eq!(repo.read_chunk(&chunks[1].0).unwrap(), chunks[1].1);
    let report = repo.verify().unwrap();
    let damaged: Vec<ChunkId> = report.damage.iter().filter_map(|d| d.chunk).collect();
    assert_eq!(damaged, vec![chunks[0].0], "{report:?}");
    assert_eq!(report.damaged_snapshots.len(), 1, "{report:?}");
    assert_eq!(report.damaged_snapshots[0].bad_chunks, 1);
}

#[test]
fn gc_keeps_every_live_chunk_and_reseals_the_records_it_copies() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let key = Arc::new(Key::generate());
    let repo = Repository::create(root, enc_opts(&key)).unwrap();
    let keep = volume(3, 2 << 20);
    let mut gone = volume(4, 2 << 20);
    // Half of `gone` is `keep`'s: its packs become partly dead.
    gone[..1 << 20].copy_from_slice(&keep[..1 << 20]);
    ingest(&repo, "gone", &gone);
    ingest(&repo, "keep", &keep);
    let id = repo.snapshot("gone", None).unwrap().id;
    repo.delete("gone", id).unwrap();
    let report = repo
        .gc(&GcOptions {
            rewrite_below: 0.99,
            ..GcOptions::default()
        })
        .unwrap();
    assert!(
        report.packs_rewritten + report.packs_deleted > 0,
        "{report:?}"
    );
    assert_eq!(read_all(&repo, "keep", None).unwrap(), keep);
    let v = repo.verify().unwrap();
    assert!(v.is_clean(), "{v:?}");
    drop(repo);
    let repo = open(root, Some(&key)).unwrap();
    assert_eq!(read_all(&repo, "keep", None).unwrap(), keep);
}

#[test]
fn a_torn_staging_pack_is_recovered_and_a_lost_index_rebuilt_in_an_encrypted_repository() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let key = Arc::new(Key::generate());
    let data = volume(5, 2 << 20);
    {
        let repo = Repository::create(root, enc_opts(&key)).unwrap();
        ingest(&repo, "vol", &data);
    }
    // The last pack as a crash would leave it: records, no trailer, and a
    // torn record after them.
    let last = packs(root).into_iter().last().unwrap();
    let bytes = std::fs::read(&last).unwrap();
    let footer = &bytes[bytes.len() - 48..];
    let trailer_at = u64::from_le_bytes(footer[..8].try_into().unwrap()) as usize;
    let mut staged = bytes[..trailer_at].to_vec();
    staged.extend_from_slice(&bytes[64..64 + 100]);
    std::fs::remove_file(&last).unwrap();
    std::fs::write(last.with_extension("open"), &staged).unwrap();
    let repo = open(root, Some(&key)).unwrap();
    assert_eq!(repo.recovery().torn_tails.len(), 1, "{:?}", repo.recovery());
    assert_eq!(read_all(&repo, "vol", None).unwrap(), data);
    drop(repo);
    std::fs::remove_dir_all(root.join("index")).unwrap();
    let repo = open(root, Some(&key)).unwrap();
    assert_eq!(read_all(&repo, "vol", None).unwrap(), data);
    let v = repo.verify().unwrap();
    assert!(v.is_clean(), "{v:?}");
}

#[test]
fn a_pack_sealed_with_another_key_is_named_with_both_key_ids() {
    let dir = tempfile::tempdir().unwrap();
    let key = Arc::new(Key::generate());
    let other = Arc::new(Key::generate());
    let a = dir.path().join("a");
    let b = dir.path().join("b");
    drop(Repository::create(&a, enc_opts(&key)).unwrap());
    {
        let repo = Repository::create(&b, enc_opts(&other)).unwrap();
        ingest(&repo, "vol", &volume(6, 1 << 20));
    }
    // b's pack dropped into a: its header names the other key.
    let pack = packs(&b).into_iter().next().unwrap();
    let rel = pack.strip_prefix(&b).unwrap();
    std::fs::create_dir_all(a.join(rel).parent().unwrap()).unwrap();
    let mut bytes = std::fs::read(&pack).unwrap();
    let repo_id = std::fs::read(a.join("config")).unwrap()[16..32].to_vec();
    bytes[16..32].copy_from_slice(&repo_id);
    let sum = xxhash_rust::xxh3::xxh3_64(&bytes[..56]);
    bytes[56..64].copy_from_slice(&sum.to_le_bytes());
    std::fs::write(a.join(rel), &bytes).unwrap();
    let repo = open(&a, Some(&key)).unwrap();
    let report = repo.verify().unwrap();
    let reason = &report.damage[0].reason;
    assert!(reason.contains(&key.id().to_string()), "{report:?}");
    assert!(reason.contains(&other.id().to_string()), "{report:?}");
}
