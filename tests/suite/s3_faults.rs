//! The crash, power-cut, GC-race and bit-flip faults against a repository
//! whose packs and objects live in a bucket (SeaweedFS, started per test
//! by `bunker_testdata::stores`): the CI subset of `crash`, `races` and
//! `corruption`, run by the same crash child with
//! `bunker_tests::bucket::ENV` set. A local power cut or a kill loses
//! nothing acknowledged, because a snapshot is acknowledged only once its
//! packs and manifest are objects; the bucket alone restores everything;
//! damage in an object is named and never restored. And the object store
//! itself failing under the real server: weed stopped (SIGSTOP) or killed
//! (SIGKILL, then restarted on its directory) in the middle of a pack's
//! multipart upload, caught there through the fault proxy's request
//! counts. Skipped loudly when `weed` is not installed, failed under CI.

use std::collections::HashSet;
use std::path::Path;
use std::time::{Duration, Instant};

use bunker_s3::S3Config;
use bunker_store::{CreateOptions, Repository};
use bunker_testdata::stores::{Proxy, Store};
use bunker_tests::server::Server;
use bunker_tests::{bucket, noise};
use rand::{Rng, SeedableRng};
use rand_xoshiro::Xoshiro256PlusPlus;

use crate::crash::{acks, check, child_lines_until_killed_on, read_all, KillAt};
use crate::s3::{self, assert_restores, listed, try_raw_upload};

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
    let dir = bunker_tests::scratch();
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
/// that backs up, deletes and collects garbage on the bucket
/// (`crash::power_cuts`): each image opens on the bucket, and every
/// acknowledged snapshot not deleted reads back exactly (the bucket is the
/// truth: the manifest is an object before the local rename). The
/// repository is encrypted.
#[test]
fn power_cut_of_the_data_directory_loses_nothing_acknowledged_in_the_bucket() {
    let Some((_store, spec, _)) = weed("power") else {
        return;
    };
    let runs = crate::scaled(25);
    // Encrypted: the bucket's copy of a sealed repository survives too.
    let (cuts, acked) = crate::crash::power_cuts(
        Some(&spec),
        true,
        crate::seed(0x5_3CE1),
        runs,
        "s3_faults::power_cut",
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
    let dir = bunker_tests::scratch();
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
    let dir = bunker_tests::scratch();
    let data = dir.path().join("data");
    let opts = CreateOptions {
        chunker: bunker_store::ChunkerParams::new(16 << 10, 64 << 10, 256 << 10).unwrap(),
        zstd_level: 1,
        pack_target_len: 1 << 20,
        key: None,
    };
    let (a, b) = (noise(0xF11A, 3 << 20), noise(0xF11B, 3 << 20));
    let repo = bucket::open(&data, &config, opts).unwrap();
    let ingest = |name: &str, bytes: &[u8]| {
        repo.ingest(name, bytes, &Default::default(), &mut |_| {})
            .unwrap()
    };
    ingest("a", &a);
    let packs_of_a = store.keys(BUCKET, "flip/packs/");
    assert!(!packs_of_a.is_empty(), "no pack objects");
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

/// `[storage]` keys for the stall and kill tests: a request times out
/// after 2 s and is retried once, and packs go up in 5 MiB parts one at a
/// time, so a 12 MiB pack is a multipart upload of three parts that can
/// be caught between them.
const SHORT_RETRIES: &str = "max_retries = 1\nretry_timeout_ms = 4000\nbackoff_initial_ms = 10\n\
    backoff_max_ms = 50\nrequest_timeout_ms = 2000\npart_bytes = 5242880\nparts_in_flight = 1\n";

/// A raw upload of `data` as `vol` through which `fault` runs once the
/// proxy has seen the second PUT of the upload (a pack's second part: the
/// pack is sealed, and its upload is started, by the commit). The answer,
/// and how long it took from the fault.
fn upload_with_fault(
    server: &Server,
    proxy: &Proxy,
    data: &[u8],
    fault: impl FnOnce(),
) -> (u16, String, Duration) {
    let puts = || proxy.counts().get("PUT").copied().unwrap_or(0);
    let first = puts();
    std::thread::scope(|s| {
        let upload = s.spawn(|| try_raw_upload(server, "vol", data));
        let started = Instant::now();
        while puts() < first + 2 {
            assert!(
                !upload.is_finished(),
                "the upload ended before its second part"
            );
            assert!(
                started.elapsed() < Duration::from_secs(120),
                "no second part"
            );
            std::thread::sleep(Duration::from_millis(2));
        }
        let faulted = Instant::now();
        fault();
        let (status, body) = upload.join().unwrap();
        (status, body, faulted.elapsed())
    })
}

/// The snapshots of `vol` are exactly those acknowledged (`ids`), in the
/// server's list and as manifest objects in the bucket under `prefix`.
fn only_acknowledged_are_listed(store: &Store, server: &Server, prefix: &str, ids: &[u64]) {
    assert_eq!(listed(server, "vol"), ids);
    let keys: HashSet<String> = store
        .keys(s3::BUCKET, &format!("{prefix}/snapshots/"))
        .into_iter()
        .filter(|k| k.ends_with(".snap"))
        .collect();
    let manifests: HashSet<String> = ids
        .iter()
        .map(|id| format!("{prefix}/snapshots/vol/{id}.snap"))
        .collect();
    assert_eq!(keys, manifests, "the bucket's manifests");
}

/// weed stopped (SIGSTOP) while the server uploads a pack in parts. A
/// stall shorter than a request's timeout is waited out: the backup
/// completes once weed is thawed. A stall past the retry bound fails the
/// upload with 503 `store_unavailable` within it and acknowledges nothing;
/// thawed, the next backup succeeds, and every acknowledged snapshot's
/// manifest is an object and restores bit-exact.
#[test]
fn weed_stopped_mid_upload_is_waited_out_or_fails_the_backup_with_503_within_the_retry_bound() {
    let Some(store) = Store::seaweedfs() else {
        return;
    };
    store.create_bucket(s3::BUCKET);
    let proxy = Proxy::start(&store.endpoint);
    let dir = bunker_tests::scratch();
    let flags = s3::flags_via(&store, &proxy.endpoint, dir.path(), "stall", SHORT_RETRIES);
    let server = s3::start(&dir.path().join("data"), &flags);
    let days: Vec<Vec<u8>> = (0..3).map(|d| noise(0x57A1 + d, 12 << 20)).collect();

    let (status, body, took) = upload_with_fault(&server, &proxy, &days[0], || {
        store.pause();
        std::thread::sleep(Duration::from_secs(1));
        store.resume();
    });
    assert_eq!(status, 201, "a 1 s stall failed the backup: {body}");
    let id0 = serde_json::from_str::<serde_json::Value>(&body).unwrap()["id"]
        .as_u64()
        .unwrap();
    println!("a 1 s stall of weed: the backup completed {took:?} after it began");
    only_acknowledged_are_listed(&store, &server, "stall", &[id0]);

    let (status, body, took) = upload_with_fault(&server, &proxy, &days[1], || store.pause());
    store.resume();
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("store_unavailable"), "{body}");
    // Configured: two attempts of 2 s for the part, as many for the abort.
    println!("weed stopped for good: 503 after {took:?}");
    assert!(took < Duration::from_secs(60), "503 only after {took:?}");
    only_acknowledged_are_listed(&store, &server, "stall", &[id0]);

    let id2 = s3::raw_upload(&server, "vol", &days[2]);
    only_acknowledged_are_listed(&store, &server, "stall", &[id0, id2]);
    assert_restores(&server, dir.path(), "vol", id0, &days[0]);
    assert_restores(&server, dir.path(), "vol", id2, &days[2]);
    s3::bunker(&server, &["drill", "--all"]);
    assert!(server.stop().success());
}

/// weed killed (SIGKILL) while the server uploads a pack in parts, then
/// restarted on the same directory: the upload fails with 503 and is not
/// acknowledged, the snapshot before it is kept, the next backup (of the
/// same data, whose chunks wait in the pack whose upload failed) succeeds,
/// and after the server restarts no multipart upload is left in the bucket
/// (listed through the S3 API) and every snapshot restores bit-exact from
/// the bucket (opening empties the read cache).
#[test]
fn weed_killed_mid_upload_and_restarted_loses_nothing_and_leaves_no_multipart_upload() {
    let Some(mut store) = Store::seaweedfs() else {
        return;
    };
    store.create_bucket(s3::BUCKET);
    let proxy = Proxy::start(&store.endpoint);
    let dir = bunker_tests::scratch();
    let data = dir.path().join("data");
    let flags = s3::flags_via(&store, &proxy.endpoint, dir.path(), "kill", SHORT_RETRIES);
    let server = s3::start(&data, &flags);
    let days: Vec<Vec<u8>> = (0..2).map(|d| noise(0xC111 + d, 12 << 20)).collect();
    let id0 = s3::raw_upload(&server, "vol", &days[0]);

    let (status, body, took) = upload_with_fault(&server, &proxy, &days[1], || store.kill());
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("store_unavailable"), "{body}");
    println!("weed killed: 503 after {took:?}");
    store.restart();
    let left = store.multipart_uploads(s3::BUCKET, "kill/");
    println!("multipart uploads in the bucket after weed's restart: {left:?}");
    only_acknowledged_are_listed(&store, &server, "kill", &[id0]);

    let id1 = s3::raw_upload(&server, "vol", &days[1]);
    only_acknowledged_are_listed(&store, &server, "kill", &[id0, id1]);
    assert!(server.stop().success());

    let server = s3::start(&data, &flags);
    let left = store.multipart_uploads(s3::BUCKET, "kill/");
    assert!(left.is_empty(), "multipart uploads left behind: {left:?}");
    only_acknowledged_are_listed(&store, &server, "kill", &[id0, id1]);
    assert_restores(&server, dir.path(), "vol", id0, &days[0]);
    assert_restores(&server, dir.path(), "vol", id1, &days[1]);
    s3::bunker(&server, &["drill", "--all"]);
    assert!(server.stop().success());
}
