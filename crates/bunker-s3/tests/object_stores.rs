//! The S3 backends against real object stores (SeaweedFS and moto, started
//! per test by `bunker_testdata::stores`): both conformance suites on both stores, then the
//! behaviours only a remote store has (multipart, create-only, errors,
//! stalls, the read cache, the upload journal).

use std::path::Path;
use std::time::{Duration, Instant};

use bunker_s3::{Bucket, S3Config, S3Meta, S3Packs};
use bunker_store::backend::{conformance, MetaBackend, PackBackend};
use bunker_store::{Error, PackId};
use bunker_testdata::stores::{self, Store};

fn open(config: &S3Config, data: &Path) -> (S3Packs, S3Meta) {
    let bucket = Bucket::connect(config).unwrap();
    (
        S3Packs::open(&bucket, data).unwrap(),
        S3Meta::open(&bucket, data).unwrap(),
    )
}

fn bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn seal(packs: &S3Packs, pack: PackId, contents: &[u8]) -> bunker_store::Result<()> {
    let staged = packs.staging_path(pack);
    std::fs::write(&staged, contents).unwrap();
    packs.store_sealed(pack, &staged)
}

fn conformance_on(store: Store, other: S3Config) {
    let data = tempfile::tempdir().unwrap();
    let (packs, meta) = open(&store.config("conformance", "site/repo"), data.path());
    conformance::run(&packs);
    conformance::meta::run(&meta);
    // The prefix is honoured: a second repository in the same bucket sees
    // none of the first one's packs.
    let dir = tempfile::tempdir().unwrap();
    let (packs2, meta2) = open(&other, dir.path());
    assert!(packs2.list().unwrap().is_empty());
    assert!(meta2.list("").unwrap().is_empty());
    assert!(!packs.list().unwrap().is_empty());
}

#[test]
fn seaweedfs_passes_the_pack_and_meta_conformance_suites() {
    if let Some(store) = Store::seaweedfs() {
        // The second repository with unsigned requests.
        let other = store.anonymous_config("conformance", "site/other");
        conformance_on(store, other);
    }
}

#[test]
fn moto_passes_the_pack_and_meta_conformance_suites() {
    if let Some(store) = Store::moto() {
        let other = store.config("conformance", "site/other");
        conformance_on(store, other);
    }
}

#[test]
fn a_pack_above_the_part_size_round_trips_and_is_never_overwritten() {
    let Some(store) = Store::seaweedfs() else {
        return;
    };
    let data = tempfile::tempdir().unwrap();
    let config = store.config("multipart", "");
    let (packs, _) = open(&config, data.path());
    let pack = PackId(0x4242);
    let big = bytes(1, (12 << 20) + 12_345); // three parts of 5 MiB
    seal(&packs, pack, &big).unwrap();
    assert!(!packs.staging_path(pack).exists());
    assert!(
        std::fs::read_dir(data.path().join("staging/uploads"))
            .unwrap()
            .next()
            .is_none(),
        "a completed upload left its journal entry"
    );

    // Read back cold, through a second backend with an empty cache.
    let cold = tempfile::tempdir().unwrap();
    let (fresh, _) = open(&config, cold.path());
    assert_eq!(fresh.pack_len(pack).unwrap(), big.len() as u64);
    fresh.will_need(&[(pack, 5 << 20, 1 << 20), (pack, 11 << 20, 100_000)]);
    let mut head = [0u8; 24];
    let stored = fresh
        .read_record(pack, 5 << 20, &mut head, (1 << 20) - 24)
        .unwrap();
    assert_eq!(head[..], big[5 << 20..(5 << 20) + 24]);
    assert!(stored[..] == big[(5 << 20) + 24..6 << 20]);
    assert!(fresh.read(pack, 0, big.len()).unwrap() == big);

    // Create-only: another pack under the same id is refused, small or
    // multipart, and the stored pack is untouched.
    for other in [bytes(2, 1000), bytes(3, (6 << 20) + 1)] {
        let r = seal(&packs, pack, &other);
        assert!(matches!(r, Err(Error::AlreadyExists { .. })), "{r:?}");
    }
    assert!(fresh.read(pack, 0, big.len()).unwrap() == big);
    // The same bytes again (a retry after a lost answer) are accepted.
    seal(&packs, pack, &big).unwrap();
    let small = PackId(0x4343);
    seal(&packs, small, &bytes(4, 5000)).unwrap();
    seal(&packs, small, &bytes(4, 5000)).unwrap();
    let r = seal(&packs, small, &bytes(5, 5000));
    assert!(matches!(r, Err(Error::AlreadyExists { .. })), "{r:?}");
}

#[test]
fn wrong_credentials_a_missing_bucket_or_no_store_are_clear_errors_at_connect() {
    let Some(store) = Store::seaweedfs() else {
        return;
    };
    let mut config = store.config("creds", "");
    config.secret_access_key = Some(bunker_s3::Secret("not-the-secret".into()));
    let start = Instant::now();
    let r = Bucket::connect(&config).map(drop);
    assert!(
        matches!(&r, Err(Error::Remote { store, .. }) if store.contains("s3://creds") && store.contains(&config.endpoint.clone().unwrap())),
        "wrong secret: {r:?}"
    );
    config.access_key_id = Some("nobody".into());
    let r = Bucket::connect(&config).map(drop);
    assert!(
        matches!(&r, Err(Error::Remote { .. })),
        "unknown key: {r:?}"
    );

    let mut config = store.config("creds", "");
    config.bucket = "no-such-bucket".into();
    let r = Bucket::connect(&config).map(drop);
    assert!(
        matches!(&r, Err(Error::Remote { store, reason }) if store.contains("s3://no-such-bucket") && reason.contains("does not exist")),
        "missing bucket: {r:?}"
    );
    assert!(
        start.elapsed() < Duration::from_secs(10),
        "took {:?}",
        start.elapsed()
    );

    // Nothing listening: retried, then Unavailable, within the bounds.
    let mut config = store.config("creds", "");
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    config.endpoint = Some(format!("http://{}", closed.local_addr().unwrap()));
    drop(closed);
    let start = Instant::now();
    let r = Bucket::connect(&config).map(drop);
    assert!(
        matches!(&r, Err(Error::Unavailable { .. })),
        "no store: {r:?}"
    );
    assert!(
        start.elapsed() < Duration::from_secs(10),
        "took {:?}",
        start.elapsed()
    );
}

#[test]
fn a_stalled_store_is_unavailable_within_the_bound_then_works_again() {
    let Some(store) = Store::seaweedfs() else {
        return;
    };
    let data = tempfile::tempdir().unwrap();
    let mut config = store.config("stall", "r");
    config.request_timeout_ms = 1_000;
    config.max_retries = 1;
    config.retry_timeout_ms = 3_000;
    let (packs, meta) = open(&config, data.path());
    let pack = PackId(7);
    let contents = bytes(7, 100_000);

    store.pause();
    let start = Instant::now();
    let r = seal(&packs, pack, &contents);
    assert!(matches!(r, Err(Error::Unavailable { .. })), "{r:?}");
    let r = packs.pack_len(PackId(8));
    assert!(matches!(r, Err(Error::Unavailable { .. })), "{r:?}");
    let r = meta.get("config");
    assert!(matches!(r, Err(Error::Unavailable { .. })), "{r:?}");
    assert!(
        start.elapsed() < Duration::from_secs(20),
        "took {:?}",
        start.elapsed()
    );
    assert!(
        packs.staging_path(pack).exists(),
        "a failed upload removed the staged pack"
    );

    store.resume();
    // The store's own parts (master, volume, filer) were frozen too and
    // take a moment to trust each other again: the same upload succeeds
    // within a bound, with the staged pack it kept.
    let start = Instant::now();
    while let Err(e) = packs.store_sealed(pack, &packs.staging_path(pack)) {
        assert!(matches!(e, Error::Unavailable { .. }), "{e:?}");
        assert!(start.elapsed() < Duration::from_secs(30), "still {e:?}");
        std::thread::sleep(Duration::from_millis(250));
    }
    eprintln!("upload works again {:?} after SIGCONT", start.elapsed());
    assert_eq!(packs.read(pack, 0, contents.len()).unwrap(), contents);
    meta.put("config", b"c").unwrap();
}

#[test]
fn the_read_cache_stays_within_cache_bytes_and_never_serves_a_damaged_block() {
    let Some(store) = Store::seaweedfs() else {
        return;
    };
    let data = tempfile::tempdir().unwrap();
    let mut config = store.config("cache", "");
    config.cache_bytes = Some(300_000);
    config.cache_block_bytes = 64 << 10;
    let cache = data.path().join("cache");
    let (packs, _) = open(&config, data.path());
    let mut all = Vec::new();
    for id in 0..4u64 {
        let contents = bytes(id, 200_000 + id as usize);
        seal(&packs, PackId(id), &contents).unwrap();
        assert!(du(&cache) <= 300_000, "{} bytes cached", du(&cache));
        all.push(contents);
    }
    for round in 0..3 {
        for (id, contents) in all.iter().enumerate() {
            let off = (round * 50_000 + id * 7) % 150_000;
            let got = packs.read(PackId(id as u64), off as u64, 40_000).unwrap();
            assert!(got[..] == contents[off..off + 40_000]);
            assert!(du(&cache) <= 300_000, "{} bytes cached", du(&cache));
        }
    }

    // Damage every cached block: flip a byte, or cut it short. Reads still
    // return the pack's bytes.
    for file in files(&cache) {
        let mut b = std::fs::read(&file).unwrap();
        if b.len() % 2 == 0 {
            let mid = b.len() / 2;
            b[mid] ^= 0x40;
        } else {
            b.truncate(b.len() / 2);
        }
        std::fs::write(&file, b).unwrap();
    }
    for (id, contents) in all.iter().enumerate() {
        let got = packs.read(PackId(id as u64), 0, contents.len()).unwrap();
        assert!(
            got == *contents,
            "pack {id}: a damaged cache block was served"
        );
    }
}

#[test]
fn uploads_journalled_by_a_dead_process_are_aborted_on_open() {
    use object_store::multipart::MultipartStore;
    let Some(store) = Store::seaweedfs() else {
        return;
    };
    let data = tempfile::tempdir().unwrap();
    let config = store.config("journal", "p");
    // A process that died after starting an upload and journalling it.
    let s3 = object_store::aws::AmazonS3Builder::new()
        .with_bucket_name("journal")
        .with_endpoint(&store.endpoint)
        .with_allow_http(true)
        .with_region("us-east-1")
        .with_access_key_id(stores::ACCESS_KEY)
        .with_secret_access_key(stores::SECRET_KEY)
        .build()
        .unwrap();
    let key = object_store::path::Path::from("p/packs/01/00/0000000000000001.pack");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let upload = rt.block_on(s3.create_multipart(&key)).unwrap();
    rt.block_on(s3.put_part(&key, &upload, 0, vec![1u8; 5 << 20].into()))
        .unwrap();
    let journal = data.path().join("staging/uploads");
    std::fs::create_dir_all(&journal).unwrap();
    std::fs::write(journal.join("1-0.upload"), format!("{key}\n{upload}\n")).unwrap();

    let (packs, _) = open(&config, data.path());
    assert!(std::fs::read_dir(&journal).unwrap().next().is_none());
    let r = rt.block_on(s3.put_part(&key, &upload, 1, vec![2u8; 10].into()));
    assert!(r.is_err(), "the journalled upload is still open");
    assert!(!packs.list().unwrap().contains(&PackId(1)));
}

fn files(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(files(&p));
        } else {
            out.push(p);
        }
    }
    out
}

fn du(dir: &Path) -> u64 {
    files(dir)
        .iter()
        .map(|f| std::fs::metadata(f).map(|m| m.len()).unwrap_or(0))
        .sum()
}
