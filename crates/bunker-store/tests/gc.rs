//! Garbage collection through the public API: what it reclaims, what it
//! must keep (committed snapshots, backups and sessions in progress), and
//! GC racing concurrent backups.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use bunker_store::{GcOptions, GcReport, Repository};

mod common;
use common::*;

fn gc(repo: &Repository) -> GcReport {
    repo.gc(&GcOptions::default()).unwrap()
}

fn dry(repo: &Repository) -> GcReport {
    repo.gc(&GcOptions {
        dry_run: true,
        ..GcOptions::default()
    })
    .unwrap()
}

/// Every snapshot restores to bytes whose BLAKE3 is its recorded hash.
fn assert_all_restore(repo: &Repository) -> usize {
    let list = repo.list(None).unwrap();
    for s in &list {
        let data = read_all(repo, &s.name, Some(s.id))
            .unwrap_or_else(|e| panic!("{}@{} does not restore: {e}", s.name, s.id));
        assert_eq!(
            *blake3::hash(&data).as_bytes(),
            s.stream_hash,
            "{}@{} restored wrong bytes",
            s.name,
            s.id
        );
    }
    list.len()
}

fn assert_clean(repo: &Repository) {
    let v = repo.verify().unwrap();
    assert!(v.is_clean(), "verify: {v:?}");
}

#[test]
fn gc_reclaims_deleted_snapshots_and_keeps_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    let repo = Repository::create(dir.path(), small_opts()).unwrap();
    let a0 = volume(1, 6 << 20);
    let b = volume(2, 6 << 20);
    let mut a1 = a0.clone();
    // The last 1.75 MiB of a volume are random (see `volume`).
    a1[17 << 18..6 << 20].copy_from_slice(&noise(9, 7 << 18));
    let first = ingest(&repo, "a", &a0);
    ingest(&repo, "b", &b);
    ingest(&repo, "a", &a1);
    repo.delete("a", first.id).unwrap();
    let before = repo.stats().unwrap();
    let plan = dry(&repo);
    let unchanged = repo.stats().unwrap();
    assert_eq!(
        (unchanged.packs, unchanged.stored_bytes, unchanged.chunks),
        (before.packs, before.stored_bytes, before.chunks),
        "a dry run changes nothing"
    );
    let r = gc(&repo);
    assert_eq!(r.bytes_reclaimed(), plan.bytes_reclaimed());
    assert!(r.packs_deleted + r.packs_rewritten > 0, "{r:?}");
    let after = repo.stats().unwrap();
    // Freed: the deleted packs, less the new packs of rewritten records
    // (their bytes plus pack header and trailer).
    let freed = before.stored_bytes - after.stored_bytes;
    assert!(freed <= r.bytes_deleted, "{freed} {r:?}");
    assert!(freed >= r.bytes_reclaimed() * 95 / 100, "{freed} {r:?}");
    // What went is most of the random 1.75 MiB of a0 that a1 replaced.
    assert!(r.bytes_reclaimed() > 1 << 20, "{r:?}");
    assert_eq!(assert_all_restore(&repo), 2);
    assert_clean(&repo);

    let again = gc(&repo);
    assert_eq!(
        (again.packs_deleted, again.packs_rewritten),
        (0, 0),
        "{again:?}"
    );
    // Compaction left an index equal to one rebuilt from the packs.
    repo.close().unwrap();
    let digest = repo.index_digest();
    drop(repo);
    Repository::rebuild_index(dir.path()).unwrap();
    let repo = Repository::open(dir.path()).unwrap();
    assert_eq!(repo.index_digest(), digest);
    assert_eq!(assert_all_restore(&repo), 2);
}

#[test]
fn deleting_every_snapshot_frees_every_pack() {
    let dir = tempfile::tempdir().unwrap();
    let repo = Repository::create(dir.path(), small_opts()).unwrap();
    for seed in 0..3 {
        ingest(&repo, "v", &volume(seed, 3 << 20));
    }
    for s in repo.list(None).unwrap() {
        repo.delete(&s.name, s.id).unwrap();
    }
    let r = gc(&repo);
    let st = repo.stats().unwrap();
    assert_eq!((st.packs, st.stored_bytes), (0, 0), "{r:?}");
    assert_eq!(st.chunks, 0, "the index holds nothing");
    assert!(r.index_entries_dropped > 0);
    // The same data stores again (nothing stale in the index).
    let data = volume(0, 3 << 20);
    let again = ingest(&repo, "v", &data);
    assert_eq!(read_all(&repo, "v", Some(again.id)).unwrap(), data);
    assert_clean(&repo);
}

#[test]
fn sparse_packs_are_rewritten_and_their_chunks_move() {
    let dir = tempfile::tempdir().unwrap();
    let repo = Repository::create(dir.path(), small_opts()).unwrap();
    // Interleave two images' chunks in the same packs: alternate 256 KiB
    // slices through one stream each, then keep only one image.
    let keep = noise(1, 4 << 20);
    let drop_ = noise(2, 4 << 20);
    let mut mixed = Vec::new();
    for (k, d) in keep.chunks(256 << 10).zip(drop_.chunks(256 << 10)) {
        mixed.extend_from_slice(k);
        mixed.extend_from_slice(d);
    }
    let gone = ingest(&repo, "mixed", &mixed);
    ingest(&repo, "keep", &keep);
    repo.delete("mixed", gone.id).unwrap();
    let r = repo
        .gc(&GcOptions {
            rewrite_below: 0.9,
            dry_run: false,
        })
        .unwrap();
    assert!(r.packs_rewritten > 0, "{r:?}");
    assert!(r.bytes_rewritten > 0 && r.bytes_reclaimed() > 0, "{r:?}");
    assert_eq!(read_all(&repo, "keep", None).unwrap(), keep);
    assert_clean(&repo);
    drop(repo);
    let repo = Repository::open(dir.path()).unwrap();
    assert_eq!(read_all(&repo, "keep", None).unwrap(), keep);
    assert_clean(&repo);
}

/// A backup that deduplicated against a snapshot's chunks commits intact
/// even though that snapshot was deleted and GC ran in between.
#[test]
fn a_backup_in_progress_keeps_what_it_deduplicated_against() {
    let dir = tempfile::tempdir().unwrap();
    let repo = Repository::create(dir.path(), small_opts()).unwrap();
    let data = volume(5, 4 << 20);
    let old = ingest(&repo, "old", &data);
    let entries: Vec<_> = repo
        .manifest_entries("old", old.id)
        .unwrap()
        .map(|e| e.unwrap())
        .collect();
    let mut w = repo.begin_snapshot("new", "test", 0).unwrap();
    for e in &entries {
        w.push_stored(&e.id, e.end - e.start).unwrap();
    }
    repo.delete("old", old.id).unwrap();
    let r = gc(&repo);
    assert!(r.packs_protected > 0, "{r:?}");
    assert_eq!(r.packs_deleted + r.packs_rewritten, 0, "{r:?}");
    let info = w.commit(old.stream_hash, None).unwrap();
    assert_eq!(read_all(&repo, "new", Some(info.id)).unwrap(), data);
    assert_eq!(gc(&repo).packs_deleted, 0);
    assert_clean(&repo);
}

/// An upload session told "present" keeps those chunks until it ends, and
/// one GC start after; the second GC after it ends reclaims them.
#[test]
fn session_pins_hold_until_the_session_ends() {
    let dir = tempfile::tempdir().unwrap();
    let repo = Repository::create(dir.path(), small_opts()).unwrap();
    let data = noise(6, 3 << 20);
    let old = ingest(&repo, "old", &data);
    let ids: Vec<_> = repo
        .manifest_entries("old", old.id)
        .unwrap()
        .map(|e| e.unwrap().id)
        .collect();
    let pins = repo.pins();
    assert!(repo.missing(&ids, &pins).iter().all(|m| !m));
    assert!(!pins.is_empty());
    repo.delete("old", old.id).unwrap();
    assert_eq!(gc(&repo).packs_deleted, 0, "the session pins them");
    assert!(repo.missing(&ids, &pins).iter().all(|m| !m));
    drop(pins);
    assert_eq!(gc(&repo).packs_deleted, 0, "one GC start after the session");
    assert!(gc(&repo).packs_deleted > 0, "reclaimed by the second GC");
    let fresh = repo.pins();
    assert!(repo.missing(&ids, &fresh).iter().all(|m| *m));
    assert_clean(&repo);
}

/// Four streams back up overlapping, changing images and delete their
/// older snapshots while GC runs in a loop. Every snapshot left restores
/// bit for bit, verify is clean, and two quiet GCs leave no garbage.
#[test]
fn gc_races_four_backups() {
    let dir = tempfile::tempdir().unwrap();
    let repo = Repository::create(dir.path(), small_opts()).unwrap();
    let base = volume(100, 3 << 20);
    let done = Arc::new(AtomicBool::new(false));
    let failures = Arc::new(Mutex::new(Vec::<String>::new()));
    let gc_runs = std::thread::scope(|s| {
        let mut streams = Vec::new();
        for t in 0..4u64 {
            let repo = repo.clone();
            let base = &base;
            let failures = failures.clone();
            streams.push(s.spawn(move || {
                for round in 0..6u64 {
                    let mut img = base.clone();
                    let at = ((t * 7 + round * 3) % 10) as usize * (256 << 10);
                    img[at..at + (256 << 10)].copy_from_slice(&noise(t * 100 + round, 256 << 10));
                    let name = format!("vol{t}");
                    if let Err(e) = repo.ingest(&name, &img[..], &Default::default(), &mut |_| {}) {
                        failures
                            .lock()
                            .unwrap()
                            .push(format!("{name} round {round}: {e}"));
                    }
                    let list = repo.list(Some(&name)).unwrap();
                    if list.len() > 2 {
                        repo.delete(&name, list[0].id).unwrap();
                    }
                }
            }));
        }
        let gcs = {
            let repo = repo.clone();
            let done = done.clone();
            s.spawn(move || {
                let mut runs = 0;
                while !done.load(Ordering::SeqCst) {
                    repo.gc(&GcOptions::default()).unwrap();
                    runs += 1;
                }
                runs
            })
        };
        let streams: Vec<_> = streams.into_iter().map(|h| h.join()).collect();
        done.store(true, Ordering::SeqCst);
        let runs = gcs.join().unwrap();
        for r in streams {
            r.unwrap();
        }
        runs
    });
    assert!(gc_runs > 0);
    assert_eq!(*failures.lock().unwrap(), Vec::<String>::new());
    assert_eq!(assert_all_restore(&repo), 8);
    assert_clean(&repo);
    gc(&repo);
    gc(&repo);
    let left = dry(&repo);
    assert_eq!(
        (left.packs_deleted, left.packs_rewritten),
        (0, 0),
        "{left:?}"
    );
    assert_eq!(assert_all_restore(&repo), 8);
    assert_clean(&repo);
}

/// Per name, the raw bytes of the distinct chunks only that name's
/// snapshots reference, and of all distinct chunks: by brute force.
fn expected_space(repo: &Repository) -> (std::collections::BTreeMap<String, u64>, u64) {
    use std::collections::{BTreeMap, HashMap, HashSet};
    let mut owners: HashMap<bunker_store::ChunkId, (HashSet<String>, u64)> = HashMap::new();
    for s in repo.list(None).unwrap() {
        for e in repo.manifest_entries(&s.name, s.id).unwrap() {
            let e = e.unwrap();
            if !e.id.is_zero() {
                let o = owners.entry(e.id).or_default();
                o.0.insert(s.name.clone());
                o.1 = e.end - e.start;
            }
        }
    }
    let mut unique: BTreeMap<String, u64> = BTreeMap::new();
    for (names, len) in owners.values() {
        if names.len() == 1 {
            *unique
                .entry(names.iter().next().unwrap().clone())
                .or_default() += len;
        }
    }
    (unique, owners.values().map(|o| o.1).sum())
}

fn unique_raw(st: &bunker_store::Stats) -> std::collections::BTreeMap<String, u64> {
    st.names
        .iter()
        .filter(|n| n.unique.raw_bytes > 0)
        .map(|n| (n.name.clone(), n.unique.raw_bytes))
        .collect()
}

#[test]
fn stats_per_name_are_exact_after_gc_and_follow_backups_and_deletes_after() {
    let dir = tempfile::tempdir().unwrap();
    let repo = Repository::create(dir.path(), small_opts()).unwrap();
    let base = volume(11, 4 << 20);
    let mut a1 = base.clone();
    a1[3 << 20..].copy_from_slice(&noise(12, 1 << 20));
    let mut c0 = base.clone();
    c0[..1 << 20].copy_from_slice(&noise(13, 1 << 20));
    ingest(&repo, "a", &base);
    ingest(&repo, "a", &a1);
    for seed in [14, 15] {
        ingest(&repo, "b", &volume(seed, 2 << 20));
    }
    ingest(&repo, "c", &c0);

    // Before any GC: every chunk counts for the backup that stored it.
    let st = repo.stats().unwrap();
    assert_eq!(st.accounted_unix_ms, None);
    let (_, total) = expected_space(&repo);
    assert_eq!(st.unique_bytes, total, "new raw bytes of all backups");
    assert!(st.referenced_stored_bytes > 0 && st.referenced_stored_bytes <= st.stored_bytes);

    // After a GC: exactly what only each name references.
    gc(&repo);
    let st = repo.stats().unwrap();
    assert!(st.accounted_unix_ms.is_some());
    let (unique, total) = expected_space(&repo);
    assert_eq!(unique_raw(&st), unique);
    assert_eq!(st.unique_bytes, total);
    assert!(unique["a"] > 0 && unique["b"] > 0 && unique["c"] > 0);
    let names: Vec<(&str, u64, u64)> = st
        .names
        .iter()
        .map(|n| (n.name.as_str(), n.snapshots, n.deleted_since_gc))
        .collect();
    assert_eq!(names, [("a", 2, 0), ("b", 2, 0), ("c", 1, 0)]);

    // A backup after the GC is added from its header, without a scan.
    let d = ingest(&repo, "d", &noise(16, 1 << 20));
    let st2 = repo.stats().unwrap();
    let dn = st2.names.iter().find(|n| n.name == "d").unwrap();
    assert_eq!(
        (
            dn.unique.chunks,
            dn.unique.raw_bytes,
            dn.unique.stored_bytes
        ),
        (d.new_chunks, d.new_raw_bytes, d.new_bytes)
    );
    assert_eq!(st2.unique_bytes, st.unique_bytes + d.new_raw_bytes);
    assert_eq!(st2.accounted_unix_ms, st.accounted_unix_ms);

    // Deleting all of b frees what stats said b alone holds.
    let b_frees = st2.names.iter().find(|n| n.name == "b").unwrap().unique;
    for s in repo.list(Some("b")).unwrap() {
        repo.delete("b", s.id).unwrap();
    }
    let pending = repo.stats().unwrap();
    let bn = pending.names.iter().find(|n| n.name == "b").unwrap();
    assert_eq!((bn.snapshots, bn.deleted_since_gc), (0, 2));
    assert_eq!(bn.unique, b_frees, "b's data counts until the GC runs");
    repo.gc(&GcOptions {
        rewrite_below: 1.0,
        ..GcOptions::default()
    })
    .unwrap();
    let after = repo.stats().unwrap();
    assert!(after.names.iter().all(|n| n.name != "b"), "{after:?}");
    assert_eq!(
        after.referenced_stored_bytes,
        st2.referenced_stored_bytes - b_frees.stored_bytes
    );
    let freed = st2.stored_bytes - after.stored_bytes;
    assert!(
        freed >= b_frees.stored_bytes,
        "freed {freed} < b's unique {b_frees:?}"
    );
    let (unique, total) = expected_space(&repo);
    assert_eq!(unique_raw(&after), unique);
    assert_eq!(after.unique_bytes, total);
    assert_eq!(assert_all_restore(&repo), 4);
}

/// Flips `mask` into byte `at` of every entry of every index run (count at
/// header offset 32, 56-byte entries after the 64-byte header,
/// docs/FORMAT.md "Index run").
fn flip_run_entries(dir: &std::path::Path, at: usize, mask: u8) -> usize {
    let mut flipped = 0;
    for f in std::fs::read_dir(dir.join("index")).unwrap().flatten() {
        if f.path().extension().is_none_or(|e| e != "run") {
            continue;
        }
        let mut b = std::fs::read(f.path()).unwrap();
        let count = u64::from_le_bytes(b[32..40].try_into().unwrap()) as usize;
        for i in 0..count {
            b[64 + i * 56 + at] ^= mask;
            flipped += 1;
        }
        std::fs::write(f.path(), b).unwrap();
    }
    flipped
}

/// Regression (issue 12, item 2): GC marked through index runs without
/// checking their checksums, so a flipped pack id in a run entry made the
/// record it names look dead, and GC deleted the only copy.
#[test]
fn gc_refuses_index_runs_that_fail_their_checksum_and_deletes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let a = noise(21, 3 << 20);
    {
        let repo = Repository::create(dir.path(), small_opts()).unwrap();
        ingest(&repo, "a", &a);
    }
    let packs_before = packs(dir.path());
    // The pack id's high byte: every entry now names a pack that does not
    // exist, and every real record is unreferenced by the runs.
    assert!(flip_run_entries(dir.path(), 32 + 7, 0x80) > 0);
    let repo = Repository::open(dir.path()).unwrap();
    let err = repo.gc(&GcOptions::default()).unwrap_err();
    let text = err.to_string();
    assert!(
        err.is_corrupt() && text.contains("index/") && text.contains("GC stopped"),
        "{text}"
    );
    assert_eq!(packs(dir.path()), packs_before, "GC deleted packs");
    drop(repo);
    Repository::rebuild_index(dir.path()).unwrap();
    let repo = Repository::open(dir.path()).unwrap();
    assert_eq!(read_all(&repo, "a", None).unwrap(), a);
    gc(&repo);
    assert_eq!(assert_all_restore(&repo), 1);
    assert_clean(&repo);
}

/// Regression (issue 12, item 2): a flipped chunk id in a manifest entry
/// marked a chunk nobody stores and left the real one unmarked: GC
/// deleted it. The manifest's checksum now stops the GC.
#[test]
fn gc_refuses_a_manifest_that_fails_its_checksum_and_deletes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let a = noise(22, 3 << 20);
    {
        let repo = Repository::create(dir.path(), small_opts()).unwrap();
        ingest(&repo, "a", &a);
    }
    let snap = std::fs::read_dir(dir.path().join("snapshots/a"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|e| e == "snap"))
        .unwrap();
    let mut b = std::fs::read(&snap).unwrap();
    // Entries follow the header: 8 bytes of end, then the id.
    let header = bunker_store::format::manifest::HEADER_LEN;
    let entries = (b.len() - header - 24) / 40;
    for i in 0..entries {
        b[header + i * 40 + 8] ^= 0x01;
    }
    std::fs::write(&snap, b).unwrap();
    let packs_before = packs(dir.path());
    let repo = Repository::open(dir.path()).unwrap();
    let err = repo.gc(&GcOptions::default()).unwrap_err();
    assert!(err.is_corrupt() && err.to_string().contains("a@"), "{err}");
    assert_eq!(packs(dir.path()), packs_before, "GC deleted packs");
}
