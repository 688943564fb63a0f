//! Verify beyond the whole-repository scrub: one snapshot, a sample, and
//! quarantine of damaged records healed by the next backup.

use bunker_store::{Repository, VerifyOptions};

mod common;
use common::*;

fn flip_middle(path: &std::path::Path) {
    let mut bytes = std::fs::read(path).unwrap();
    let at = bytes.len() / 2;
    bytes[at] ^= 0x10;
    std::fs::write(path, bytes).unwrap();
}

fn names(r: &bunker_store::VerifyReport) -> Vec<String> {
    let mut v: Vec<String> = r
        .damaged_snapshots
        .iter()
        .map(|d| format!("{}@{}", d.name, d.id))
        .collect();
    v.sort();
    v
}

#[test]
fn damage_is_named_exactly_quarantined_and_healed_by_the_next_backup() {
    let dir = tempfile::tempdir().unwrap();
    let repo = Repository::create(dir.path(), small_opts()).unwrap();
    let a = noise(1, 2 << 20);
    let mut b = a.clone();
    b.extend_from_slice(&noise(2, 2 << 20));
    let c = noise(3, 2 << 20);
    // One pack per snapshot: each commit seals the open pack.
    let sa = ingest(&repo, "a", &a);
    let sb = ingest(&repo, "b", &b);
    ingest(&repo, "c", &c);
    drop(repo);
    let first = packs(dir.path()).into_iter().next().unwrap();
    flip_middle(&first);
    let repo = Repository::open(dir.path()).unwrap();

    // Only c's chunks: clean, and nothing of the damaged pack is read.
    let only_c = repo
        .verify_with(&VerifyOptions {
            snapshot: Some(("c".into(), None)),
            ..Default::default()
        })
        .unwrap();
    assert!(only_c.is_clean(), "{only_c:?}");
    assert!(only_c.chunks > 0 && only_c.packs > 0, "{only_c:?}");

    // a's chunks: the damage, and every snapshot sharing it, exactly.
    let only_a = repo
        .verify_with(&VerifyOptions {
            snapshot: Some(("a".into(), None)),
            quarantine: false,
            ..Default::default()
        })
        .unwrap();
    assert_eq!(only_a.damage.len(), 1, "{only_a:?}");
    assert_eq!(
        names(&only_a),
        vec![format!("a@{}", sa.id), format!("b@{}", sb.id)]
    );
    assert_eq!(only_a.newly_quarantined, 0);

    let full = repo.verify().unwrap();
    assert_eq!(full.damage.len(), 1, "{full:?}");
    assert_eq!(full.newly_quarantined, 1);
    assert_eq!(
        names(&full),
        vec![format!("a@{}", sa.id), format!("b@{}", sb.id)]
    );
    // Quarantined: reported once; the snapshots still lack the chunk.
    let again = repo.verify().unwrap();
    assert!(again.damage.is_empty(), "{again:?}");
    assert_eq!((again.quarantined, again.newly_quarantined), (1, 0));
    assert_eq!(names(&again), names(&full));
    assert!(read_all(&repo, "a", None).is_err());

    // The next backup of the same data stores the chunk again: healed.
    let healed = ingest(&repo, "a", &a);
    assert!(healed.new_bytes > 0, "the damaged chunk is stored anew");
    let after = repo.verify().unwrap();
    assert!(after.is_clean(), "{after:?}");
    assert_eq!(read_all(&repo, "a", Some(sa.id)).unwrap(), a);
    assert_eq!(read_all(&repo, "b", Some(sb.id)).unwrap(), b);
    // And it survives reopening and an index rebuild.
    drop(repo);
    Repository::rebuild_index(dir.path()).unwrap();
    let repo = Repository::open(dir.path()).unwrap();
    assert_eq!(read_all(&repo, "b", Some(sb.id)).unwrap(), b);
    assert!(repo.verify().unwrap().is_clean());
}

#[test]
fn a_sample_reads_part_of_the_packs_and_a_bad_percentage_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let repo = Repository::create(dir.path(), small_opts()).unwrap();
    for seed in 0..6 {
        ingest(&repo, "v", &noise(seed, 3 << 20));
    }
    let all = repo.verify().unwrap();
    let mut seen = std::collections::HashSet::new();
    for seed in 0..8 {
        let part = repo
            .verify_with(&VerifyOptions {
                sample_percent: 30.0,
                seed,
                ..Default::default()
            })
            .unwrap();
        assert!(part.is_clean());
        assert!(part.packs < all.packs, "{} of {}", part.packs, all.packs);
        seen.insert(part.packs);
    }
    assert!(seen.len() > 1, "different seeds sample different packs");
    for bad in [0.0, -1.0, 101.0, f64::NAN] {
        let e = repo
            .verify_with(&VerifyOptions {
                sample_percent: bad,
                ..Default::default()
            })
            .unwrap_err();
        assert!(e.to_string().contains("sample percentage"), "{e}");
    }
}
