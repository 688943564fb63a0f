//! The crash, power-cut, GC-race and bit-flip faults against a repository
//! whose packs and objects live in a bucket (SeaweedFS, started per test
//! by `bunker_testdata::stores`): the CI subset of `crash`, `races` and
//! `corruption`, run by the same crash child with
//! `bunker_tests::bucket::ENV` set. A local power cut or a kill loses
//! nothing acknowledged, because a snapshot is acknowledged only once its
//! packs and manifest are objects; the bucket alone restores everything;
//! damage in an object is named and never restored. Skipped loudly when
//! `weed` is not installed, failed under CI.

use std::collections::HashSet;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use bunker_s3::S3Config;
use bunker_store::{CreateOptions, Repository};
use bunker_testdata::stores::Store;
use bunker_tests::{bucket, noise};
use rand::{Rng, SeedableRng};
use rand_xoshiro::Xoshiro256PlusPlus;

use crate::crash::{acks, check, child_lines_until_killed_on, read_all, KillAt};

const BUCKET: &str = "bunker-faults";

/// SeaweedFS with the bucket, the child's spec for `prefix` and the same
/// config for opening in this process.
fn weed(prefix: &str) -> Option<(Store, String, S3Config)> {
    let store = Store::seaweedfs()?;
    store.create_bucket(BUCKET);
    let spec = bucket::spec(&store.endpoint, BUCKET, prefix);
    let config = bucket::config(&spec);
    Some((store, spec, config))
}

fn reopen(path: &Path, config: &S3Config, reproduce: &str) -> Repository {
    bucket::open(path, config, CreateOptions::default())
        .unwrap_or_else(|e| panic!("open on the bucket: {e}; reproduce: {reproduce}"))
}

/// A child backing up to the bucket is SIGKILLed at seeded moments; after
/// each kill the repository reopens on the bucket with every acknowledged
/// snapshot exact. At the end a new, empty data directory on the bucket
/// alone lists and restores every one of them, and verifies clean.
#[test]
fn kill_during_ingest_to_a_bucket_loses_nothing_acknowledged() {
    let Some((_store, spec, config)) = weed("kill") else {
        return;
    };
    let seed = crate::seed(0x5_3C0F);
    let reproduce = format!("BUNKER_SEED={seed} cargo test --release -p bunker-tests --test suite s3_faults::kill_during");
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(seed);
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let (mut acked, mut checked) = (Vec::new(), HashSet::new());
    let trials = crate::scaled(10);
    for trial in 0..trials {
        let at = KillAt {
            after: (trial % 2 == 1).then_some("ACK"),
            delay: Duration::from_millis(rng.random_range(5..400)),
        };
        let lines = child_lines_until_killed_on(&data, Some(&spec), &[&trial.to_string()], at);
        acked.extend(acks(&lines));
        let repo = reopen(&data, &config, &reproduce);
        check(&repo, &acked, &mut checked, &reproduce);
    }
    assert!(
        acked.len() as u64 >= trials / 2,
        "too few commits ({}) to test anything",
        acked.len()
    );
    let report = reopen(&data, &config, &reproduce).verify().unwrap();
    assert!(report.is_clean(), "{report:?}; reproduce: {reproduce}");

    let elsewhere = dir.path().join("new-server");
    let repo = reopen(&elsewhere, &config, &reproduce);
    check(&repo, &acked, &mut HashSet::new(), &reproduce);
    let report = repo.verify().unwrap();
    assert!(report.is_clean(), "{report:?}; reproduce: {reproduce}");
    println!(
        "s3 kills: {trials}, acknowledged: {}, all restored from the bucket alone",
        acked.len()
    );
}

/// Power cuts of the data directory at the Nth durability step of a child
/// that backs up, deletes and collects garbage on the bucket: each image
/// opens on the bucket, and every acknowledged snapshot not deleted reads
/// back exactly (the bucket is the truth: the manifest is an object before
/// the local rename).
#[test]
fn power_cut_of_the_data_directory_loses_nothing_acknowledged_in_the_bucket() {
    let Some((_store, spec, config)) = weed("power") else {
        return;
    };
    let seed = crate::seed(0x5_3CE1);
    let runs = crate::scaled(25);
    let reproduce = format!(
        "BUNKER_SEED={seed} cargo test --release -p bunker-tests --test suite s3_faults::power_cut"
    );
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(seed);
    let dir = tempfile::tempdir().unwrap();
    let mut repo_dir = dir.path().join("img-0");
    let mut live: Vec<(String, u64)> = Vec::new();
    let (mut cuts, mut acked) = (0, 0);
    for run in 0..runs {
        let n: u64 = rng.random_range(1..60);
        let out = dir.path().join(format!("img-{}", run + 1));
        let o = Command::new(env!("CARGO_BIN_EXE_bunker-crash-child"))
            .env(bucket::ENV, &spec)
            .arg(&repo_dir)
            .args([&(run + 1).to_string(), "power", &n.to_string()])
            .arg(&out)
            .stderr(Stdio::piped())
            .output()
            .expect("run the power child");
        let stdout = String::from_utf8_lossy(&o.stdout);
        assert!(
            o.status.success(),
            "run {run}: child failed ({}): {stdout}\n{}; {reproduce}",
            o.status,
            String::from_utf8_lossy(&o.stderr)
        );
        for line in stdout.lines() {
            match line.split_whitespace().collect::<Vec<_>>()[..] {
                ["ACK", name, id] => {
                    live.push((name.to_string(), id.parse().unwrap()));
                    acked += 1;
                }
                ["DEL", name, id] => live.retain(|(n, i)| !(n == name && i.to_string() == id)),
                ["CUT"] => cuts += 1,
                _ => panic!("run {run}: child said {line:?}; {reproduce}"),
            }
        }
        let _ = std::fs::remove_dir_all(&repo_dir);
        repo_dir = out;
        let repo = reopen(&repo_dir, &config, &reproduce);
        let listed = repo.list(None).unwrap();
        for (name, id) in &live {
            let s = listed
                .iter()
                .find(|s| &s.name == name && s.id.0 == *id)
                .unwrap_or_else(|| {
                    panic!("acknowledged {name}@{id} lost at cut {run} (step {n}); {reproduce}")
                });
            let mut h = blake3::Hasher::new();
            std::io::copy(&mut repo.reader(name, Some(s.id), None).unwrap(), &mut h)
                .unwrap_or_else(|e| panic!("{name}@{id} after cut {run}: {e}; {reproduce}"));
            assert_eq!(
                h.finalize().as_bytes(),
                &s.stream_hash,
                "{name}@{id} wrong bytes after cut {run}; {reproduce}"
            );
        }
    }
    let v = reopen(&repo_dir, &config, &reproduce).verify().unwrap();
    assert!(
        v.is_clean(),
        "verify after the last cut: {v:?}; {reproduce}"
    );
    assert!(cuts > 0 && acked > 0, "cuts {cuts}, acknowledged {acked}");
    println!("s3 power cuts: {cuts} of {runs} runs cut; {acked} backups acknowledged; every acknowledged snapshot not deleted restored exactly after every cut");
}

/// GC paused at every phase boundary and inside a commit while four
/// streams back up to the bucket (the crash child's `gc-race`, fewer
/// rounds): nothing kept is lost and two GCs leave nothing to reclaim.
#[test]
fn gc_races_on_a_bucket_lose_nothing() {
    let Some((_store, spec, _)) = weed("race") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    crate::races::gc_race(
        &dir.path().join("data"),
        Some(&spec),
        crate::seed(0x5_6ACE),
        crate::scaled(14),
        "s3_faults::gc_races",
    );
}

/// A byte flipped inside a record of a pack object (behind the server's
/// back, in the bucket): verify names the snapshot that uses it and
/// quarantines the record, reading that snapshot fails instead of
/// returning wrong bytes, and the other snapshot restores exactly.
#[test]
fn a_byte_flipped_in_a_pack_object_is_named_and_never_restored() {
    let Some((store, _spec, config)) = weed("flip") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let opts = CreateOptions {
        chunker: bunker_store::ChunkerParams::new(16 << 10, 64 << 10, 256 << 10).unwrap(),
        zstd_level: 1,
        pack_target_len: 1 << 20,
    };
    let (a, b) = (noise(0xF11A, 3 << 20), noise(0xF11B, 3 << 20));
    let repo = bucket::open(&data, &config, opts).unwrap();
    let ingest = |name: &str, bytes: &[u8]| {
        repo.ingest(name, bytes, &Default::default(), &mut |_| {})
            .unwrap()
    };
    ingest("a", &a);
    let packs_of_a = pack_keys(&store);
    ingest("b", &b);
    drop(repo);
    let victim = &packs_of_a[packs_of_a.len() / 2];
    let url = format!("{}/{BUCKET}/{victim}", store.endpoint);
    let mut bytes = ureq::get(&url)
        .call()
        .unwrap()
        .into_body()
        .read_to_vec()
        .unwrap();
    // Inside the first record's stored bytes: past the pack header (64)
    // and the record header (64).
    bytes[64 + 64 + 100] ^= 0x10;
    ureq::put(&url).send(&bytes[..]).unwrap();

    // Opening empties the read cache, so the flipped object is what is read.
    let repo = bucket::open(&data, &config, CreateOptions::default()).unwrap();
    let report = repo.verify().unwrap();
    assert!(!report.is_clean(), "{report:?}");
    assert_eq!(report.newly_quarantined, 1, "{report:?}");
    let named: Vec<&str> = report
        .damaged_snapshots
        .iter()
        .map(|d| d.name.as_str())
        .collect();
    assert_eq!(named, ["a"], "{report:?}");
    let mut out = Vec::new();
    let r = repo.reader("a", None, None).and_then(|mut r| {
        std::io::Read::read_to_end(&mut r, &mut out).map_err(bunker_store::Error::Source)
    });
    assert!(
        r.is_err(),
        "snapshot a read back {} bytes from a damaged pack",
        out.len()
    );
    let b_id = repo.list(Some("b")).unwrap()[0].id;
    assert!(read_all(&repo, "b", b_id) == b, "b reads back wrong bytes");
}

/// Pack object keys in the bucket (under any prefix of this file's tests).
fn pack_keys(store: &Store) -> Vec<String> {
    let body = ureq::get(&format!(
        "{}/{BUCKET}?list-type=2&prefix=flip/packs/",
        store.endpoint
    ))
    .call()
    .unwrap()
    .into_body()
    .read_to_string()
    .unwrap();
    let keys: Vec<String> = body
        .split("<Key>")
        .skip(1)
        .filter_map(|s| s.split_once("</Key>").map(|(k, _)| k.to_string()))
        .collect();
    assert!(!keys.is_empty(), "no pack objects: {body}");
    keys
}
