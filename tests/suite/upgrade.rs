//! Upgrade drill: repositories written by earlier formats (committed under
//! tests/fixtures by `bunker-make-fixture`) must open, verify, restore
//! bit-exactly, take new backups and rebuild their index in every later
//! version of bunker: repo-v1 (clear, format version 1) and
//! repo-v2-encrypted (config version 2, records sealed with their pack and
//! offset in the associated data; its test key is beside it).

use std::io::Read;
use std::path::Path;

use std::sync::Arc;

use bunker_store::{IngestOptions, OpenOptions, Repository, SnapshotId};

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap().flatten() {
        let target = to.join(e.file_name());
        if e.path().is_dir() {
            copy_dir(&e.path(), &target);
        } else {
            std::fs::copy(e.path(), target).unwrap();
        }
    }
}

fn restored_hash(repo: &Repository, name: &str, id: u64) -> (u64, String) {
    let (hash, n) =
        bunker_tests::hash_reader(repo.reader(name, Some(SnapshotId(id)), None).unwrap());
    (n, blake3::Hash::from_bytes(hash).to_hex().to_string())
}

#[test]
fn version_1_repository_opens_verifies_restores_and_takes_backups() {
    drill("repo-v1", false);
}

#[test]
fn version_2_encrypted_repository_opens_verifies_restores_and_takes_backups() {
    drill("repo-v2-encrypted", true);
}

fn drill(fixture: &str, encrypted: bool) {
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures")
        .join(fixture);
    let expected = std::fs::read_to_string(fixture.join("expected.txt")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let repo_dir = dir.path().join("repo");
    copy_dir(&fixture, &repo_dir);
    let opts = || OpenOptions {
        key: encrypted.then(|| Arc::new(bunker_crypt::Key::load(&fixture.join("key")).unwrap())),
        ..OpenOptions::default()
    };
    let repo = Repository::open_with(&repo_dir, opts()).expect("the fixture must open");
    assert_eq!(repo.key_id().is_some(), encrypted);
    let report = repo.verify().unwrap();
    assert!(report.is_clean(), "{report:?}");
    let listed = repo.list(None).unwrap();
    assert_eq!(listed.len(), expected.lines().count());
    for line in expected.lines() {
        let [name, id, size, hash] = line.split(' ').collect::<Vec<_>>()[..] else {
            panic!("bad line {line}")
        };
        let id: u64 = id.parse().unwrap();
        let info = repo.snapshot(name, Some(SnapshotId(id))).unwrap();
        assert_eq!(
            (info.size.to_string(), info.stream_hash_hex()),
            (size.to_string(), hash.to_string())
        );
        assert_eq!(
            restored_hash(&repo, name, id),
            (size.parse().unwrap(), hash.to_string()),
            "{name}@{id}"
        );
    }
    // New backups go into the old repository and deduplicate against it.
    let mut data = Vec::new();
    repo.reader("fix", Some(SnapshotId(2)), None)
        .unwrap()
        .read_to_end(&mut data)
        .unwrap();
    data.extend_from_slice(b"one more day");
    let info = repo
        .ingest("fix", &data[..], &IngestOptions::default(), &mut |_| {})
        .unwrap();
    assert!(info.id.0 > 3, "ids continue after the fixture's");
    assert!(
        info.new_bytes < data.len() as u64 / 10,
        "dedup against version-1 data: {} new bytes",
        info.new_bytes
    );
    assert_eq!(
        restored_hash(&repo, "fix", info.id.0).1,
        blake3::hash(&data).to_hex().to_string()
    );
    // GC copies live records out of the packs it rewrites (in an encrypted
    // repository sealing them again in the repository's own form).
    repo.delete("other", SnapshotId(3)).unwrap();
    let gc = repo
        .gc(&bunker_store::GcOptions {
            rewrite_below: 0.99,
            ..bunker_store::GcOptions::default()
        })
        .unwrap();
    assert!(gc.packs_rewritten + gc.packs_deleted > 0, "{gc:?}");
    assert!(repo.verify().unwrap().is_clean());
    assert_eq!(
        restored_hash(&repo, "fix", 2),
        (
            expected
                .lines()
                .nth(1)
                .unwrap()
                .split(' ')
                .nth(2)
                .unwrap()
                .parse()
                .unwrap(),
            expected
                .lines()
                .nth(1)
                .unwrap()
                .split(' ')
                .nth(3)
                .unwrap()
                .to_string()
        )
    );
    repo.close().unwrap();
    // An older build must still open it: the config keeps its version.
    let config = std::fs::read(repo_dir.join("config")).unwrap();
    let fixture_config = std::fs::read(fixture.join("config")).unwrap();
    assert_eq!(config[8..12], fixture_config[8..12]);
    let digest = repo.index_digest();
    drop(repo);
    Repository::rebuild_index_with(&repo_dir, opts()).unwrap();
    let repo = Repository::open_with(&repo_dir, opts()).unwrap();
    assert_eq!(repo.index_digest(), digest);
    assert!(repo.verify().unwrap().is_clean());
}
