//! A repository over a pack backend other than its own directory: the
//! engine reaches packs only through the `PackBackend` seam.

use bunker_store::{GcOptions, MemPacks, OpenOptions, Repository};

mod common;
use common::*;

#[test]
fn repository_ingests_restores_verifies_and_collects_on_mem_packs() {
    let dir = tempfile::tempdir().unwrap();
    let staging = tempfile::tempdir().unwrap();
    drop(Repository::create(dir.path(), small_opts()).unwrap());
    // A staging file left by a crash is found through the backend and cut
    // (it has no valid header), as recovery does for local packs.
    std::fs::write(staging.path().join("00000000000000ff.open"), b"torn").unwrap();
    let backend = MemPacks::new(staging.path().to_path_buf());
    let repo = Repository::open_with_backend(dir.path(), OpenOptions::default(), Box::new(backend))
        .unwrap();
    assert_eq!(repo.recovery().torn_tails.len(), 1, "{:?}", repo.recovery());

    let day0 = volume(3, 6 << 20);
    let mut day1 = day0.clone();
    day1.splice(1_000_000..1_000_000, *b"an insert");
    day1[4_000_000..4_100_000].copy_from_slice(&noise(9, 100_000));
    let a = ingest(&repo, "vol", &day0);
    let b = ingest(&repo, "vol", &day1);
    assert!(b.new_chunks < b.chunks, "day 1 dedups against day 0");
    assert!(
        packs(dir.path()).is_empty(),
        "packs went to the repository directory, not the backend"
    );
    assert_eq!(read_all(&repo, "vol", Some(a.id)).unwrap(), day0);
    assert_eq!(read_all(&repo, "vol", Some(b.id)).unwrap(), day1);
    let report = repo.verify().unwrap();
    assert!(report.is_clean(), "{report:?}");
    assert!(report.packs > 1, "{report:?}");

    // GC deletes and rewrites packs through the backend too.
    repo.delete("vol", a.id).unwrap();
    let gc = repo
        .gc(&GcOptions {
            rewrite_below: 0.99,
            dry_run: false,
        })
        .unwrap();
    assert!(gc.packs_deleted + gc.packs_rewritten > 0, "{gc:?}");
    assert_eq!(read_all(&repo, "vol", Some(b.id)).unwrap(), day1);
    let report = repo.verify().unwrap();
    assert!(report.is_clean(), "{report:?}");
    assert!(std::fs::read_dir(staging.path()).unwrap().next().is_none());
}
