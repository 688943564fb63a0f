//! A repository whose truth is in an object store ("the bucket", here an
//! `Arc<MemPacks>` and an `Arc<MemMeta>` that outlive every repository on
//! them, as a bucket outlives a server): the bucket alone rebuilds a
//! server, commits reach it before they are acknowledged, and deletes and
//! GC leave it consistent.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use bunker_store::{
    Error, GcOptions, MemMeta, MemPacks, MetaBackend, PackBackend, PackId, Remote, Repository,
    SnapshotId,
};
use bunker_testdata::image::{Image, ImageSpec};

mod common;
use common::*;

/// A bucket: packs and metadata objects, shared by every server on it.
struct Bucket {
    packs: Arc<MemPacks>,
    meta: Arc<MemMeta>,
    _staging: tempfile::TempDir,
}

impl Bucket {
    fn new() -> Bucket {
        let staging = tempfile::tempdir().unwrap();
        Bucket {
            packs: Arc::new(MemPacks::new(staging.path().to_path_buf())),
            meta: Arc::new(MemMeta::new()),
            _staging: staging,
        }
    }

    fn remote(&self) -> Remote {
        Remote {
            packs: self.packs.clone(),
            meta: self.meta.clone(),
        }
    }

    fn open(&self, dir: &Path) -> Repository {
        Repository::open_remote_with(dir, Default::default(), small_opts(), self.remote()).unwrap()
    }

    /// `old` is lost with its disk: a new server opens the bucket in a
    /// new, empty data directory, and reads back each `(name, id, bytes)`
    /// exactly.
    fn new_server(&self, old: Repository, want: &[(&str, SnapshotId, &[u8])]) -> NewServer {
        drop(old);
        let dir = tempfile::tempdir().unwrap();
        let repo = self.open(&dir.path().join("data"));
        for (name, id, bytes) in want {
            let got = read_all(&repo, name, Some(*id)).unwrap();
            assert!(got == *bytes, "{name}@{id} on a new server differs");
        }
        NewServer { repo, _dir: dir }
    }
}

/// A repository on the bucket and its data directory, which lives as long
/// as it does.
struct NewServer {
    repo: Repository,
    _dir: tempfile::TempDir,
}

impl std::ops::Deref for NewServer {
    type Target = Repository;
    fn deref(&self) -> &Repository {
        &self.repo
    }
}

/// Days of a generated SAN-like volume, rendered.
fn days(seed: u64, n: u32) -> Vec<Vec<u8>> {
    let spec = ImageSpec::new(seed, 6 << 20);
    (0..n)
        .map(|d| {
            let mut out = Vec::new();
            Image::new(&spec, d).write_to(&mut out).unwrap();
            out
        })
        .collect()
}

fn max_pack(packs: &MemPacks) -> PackId {
    *packs.list().unwrap().last().unwrap()
}

#[test]
fn a_new_server_on_the_bucket_restores_every_snapshot_after_its_data_directory_is_lost() {
    let bucket = Bucket::new();
    let images = days(41, 3);
    let dir = tempfile::tempdir().unwrap();
    let repo = bucket.open(dir.path());
    let infos: Vec<_> = images.iter().map(|d| ingest(&repo, "vol", d)).collect();
    let first_id = repo.repo_id_hex();
    let old_max_pack = max_pack(&bucket.packs);
    let want: Vec<_> = infos
        .iter()
        .zip(&images)
        .map(|(info, image)| ("vol", info.id, &image[..]))
        .collect();
    let repo = bucket.new_server(repo, &want);
    assert_eq!(repo.repo_id_hex(), first_id);
    let r = repo.recovery();
    assert!(r.restored_from_remote, "{r:?}");
    assert_eq!(r.manifests_downloaded, 3, "{r:?}");
    assert!(r.packs_indexed > 1, "{r:?}");
    assert_eq!(repo.list(None).unwrap().len(), 3);
    for info in &infos {
        assert_eq!(repo.snapshot("vol", Some(info.id)).unwrap(), *info);
    }
    let report = repo.verify().unwrap();
    assert!(report.is_clean(), "{report:?}");

    // New backups deduplicate against the old data, with fresh ids.
    let mut day3 = images[2].clone();
    day3[1_000_000..1_200_000].copy_from_slice(&noise(5, 200_000));
    let new = ingest(&repo, "vol", &day3);
    assert!(
        new.new_chunks > 0 && new.new_chunks < new.chunks / 2,
        "{new:?}"
    );
    assert!(new.id > infos.last().unwrap().id, "{new:?}");
    assert!(max_pack(&bucket.packs) > old_max_pack);
    let other = ingest(&repo, "db", &images[0]);
    assert_eq!(other.new_chunks, 0, "{other:?}");
    assert!(other.id > new.id);
    assert_eq!(read_all(&repo, "vol", Some(new.id)).unwrap(), day3);
}

#[test]
fn a_deleted_snapshot_stays_deleted_on_a_new_server_and_its_id_is_never_reused() {
    let bucket = Bucket::new();
    let images = days(42, 2);
    let dir = tempfile::tempdir().unwrap();
    let repo = bucket.open(dir.path());
    let a = ingest(&repo, "vol", &images[0]);
    let b = ingest(&repo, "vol", &images[1]);
    // The newest: only the deleted-id mark keeps its id from coming back.
    repo.delete("vol", b.id).unwrap();
    let repo = bucket.new_server(repo, &[("vol", a.id, &images[0])]);
    let listed: Vec<SnapshotId> = repo.list(None).unwrap().iter().map(|s| s.id).collect();
    assert_eq!(listed, vec![a.id]);
    assert!(matches!(
        repo.snapshot("vol", Some(b.id)),
        Err(Error::NotFound { .. })
    ));
    let c = ingest(&repo, "vol", &images[1]);
    assert!(
        c.id > b.id,
        "{:?} reuses or precedes deleted {:?}",
        c.id,
        b.id
    );
}

/// MemMeta whose `put_file` (manifest uploads) fails while `failing` is
/// set, or copies the data directory right after a manifest upload (the
/// instant before the local rename) when `copy_to` is set.
struct Faulty {
    inner: Arc<MemMeta>,
    failing: AtomicBool,
    /// `put` (config, mark, tombstones) fails while set.
    failing_puts: AtomicBool,
    copy: Mutex<Option<(PathBuf, PathBuf)>>,
    /// The first read of `config` finds none (another process creates it
    /// between that read and our create).
    hide_config: AtomicBool,
}

impl MetaBackend for Faulty {
    fn put(&self, key: &str, bytes: &[u8]) -> bunker_store::Result<()> {
        if self.failing_puts.load(Ordering::SeqCst) {
            return Err(Error::Unavailable {
                store: self.describe(),
                reason: "injected: timeout after every retry".into(),
            });
        }
        self.inner.put(key, bytes)
    }
    fn put_new(&self, key: &str, bytes: &[u8]) -> bunker_store::Result<bool> {
        if self.failing_puts.load(Ordering::SeqCst) {
            return Err(Error::Unavailable {
                store: self.describe(),
                reason: "injected: timeout after every retry".into(),
            });
        }
        if key == "config" && self.hide_config.swap(false, Ordering::SeqCst) {
            // The other process's create lands between our read and ours.
            return self.inner.put_new(key, bytes);
        }
        self.inner.put_new(key, bytes)
    }
    fn put_file(&self, key: &str, path: &Path) -> bunker_store::Result<()> {
        if self.failing.load(Ordering::SeqCst) {
            return Err(Error::Unavailable {
                store: self.describe(),
                reason: "injected: 503 SlowDown after every retry".into(),
            });
        }
        self.inner.put_file(key, path)?;
        if let Some((from, to)) = self.copy.lock().unwrap().take() {
            copy_dir(&from, &to);
        }
        Ok(())
    }
    fn get(&self, key: &str) -> bunker_store::Result<Option<Vec<u8>>> {
        if key == "config" && self.hide_config.load(Ordering::SeqCst) {
            return Ok(None);
        }
        self.inner.get(key)
    }
    fn get_file(&self, key: &str, path: &Path) -> bunker_store::Result<bool> {
        self.inner.get_file(key, path)
    }
    fn list(&self, prefix: &str) -> bunker_store::Result<Vec<String>> {
        self.inner.list(prefix)
    }
    fn delete(&self, key: &str) -> bunker_store::Result<()> {
        self.inner.delete(key)
    }
    fn describe(&self) -> String {
        "faulty memory".into()
    }
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap().flatten() {
        let dest = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &dest);
        } else {
            std::fs::copy(entry.path(), &dest).unwrap();
        }
    }
}

fn faulty(bucket: &Bucket) -> Arc<Faulty> {
    Arc::new(Faulty {
        inner: bucket.meta.clone(),
        failing: AtomicBool::new(false),
        failing_puts: AtomicBool::new(false),
        copy: Mutex::new(None),
        hide_config: AtomicBool::new(false),
    })
}

/// Two first starts on one empty bucket, or a first start whose create
/// lands late after its process died: the config object is created once
/// and never replaced, and the open that lost the race adopts it. (Found
/// by `s3_faults::kill_during_ingest_to_a_bucket…` on SeaweedFS: a killed
/// child's config replaced the next child's, whose data directory then
/// belonged to no repository in the bucket.)
#[test]
fn a_config_created_by_another_open_in_between_is_adopted_never_replaced() {
    let bucket = Bucket::new();
    let first = tempfile::tempdir().unwrap();
    let repo = bucket.open(first.path());
    let images = days(61, 1);
    let a = ingest(&repo, "vol", &images[0]);
    drop(repo);
    let config = bucket.meta.get("config").unwrap().unwrap();

    let meta = faulty(&bucket);
    meta.hide_config.store(true, Ordering::SeqCst);
    let second = tempfile::tempdir().unwrap();
    let repo = open_faulty(&bucket, &meta, second.path());
    assert_eq!(
        bucket.meta.get("config").unwrap().unwrap(),
        config,
        "the bucket's config was replaced"
    );
    assert_eq!(read_all(&repo, "vol", Some(a.id)).unwrap(), images[0]);
    drop(repo);
    // The first data directory still belongs to the bucket's repository.
    let repo = bucket.open(first.path());
    assert_eq!(read_all(&repo, "vol", Some(a.id)).unwrap(), images[0]);
}

fn open_faulty(bucket: &Bucket, meta: &Arc<Faulty>, dir: &Path) -> Repository {
    Repository::open_remote_with(
        dir,
        Default::default(),
        small_opts(),
        Remote {
            packs: bucket.packs.clone(),
            meta: meta.clone(),
        },
    )
    .unwrap()
}

#[test]
fn a_failed_manifest_upload_fails_the_commit_lists_nothing_and_the_next_commit_works() {
    let bucket = Bucket::new();
    let meta = faulty(&bucket);
    let images = days(43, 2);
    let dir = tempfile::tempdir().unwrap();
    let repo = open_faulty(&bucket, &meta, dir.path());

    meta.failing.store(true, Ordering::SeqCst);
    let failed = repo.ingest("vol", &images[0][..], &Default::default(), &mut |_| {});
    assert!(
        matches!(failed, Err(Error::Unavailable { .. })),
        "{failed:?}"
    );
    assert!(repo.list(None).unwrap().is_empty());
    assert!(
        std::fs::read_dir(dir.path().join("tmp"))
            .unwrap()
            .next()
            .is_none(),
        "the failed commit's manifest is left in tmp/"
    );
    assert!(bucket.meta.list("snapshots/").unwrap().is_empty());

    // The store is back: the next backup commits, on this server and in
    // the bucket.
    meta.failing.store(false, Ordering::SeqCst);
    let info = ingest(&repo, "vol", &images[1]);
    assert_eq!(repo.list(None).unwrap().len(), 1);
    assert_eq!(read_all(&repo, "vol", Some(info.id)).unwrap(), images[1]);
    let repo = bucket.new_server(repo, &[("vol", info.id, &images[1])]);
    let listed: Vec<SnapshotId> = repo.list(None).unwrap().iter().map(|s| s.id).collect();
    assert_eq!(listed, vec![info.id]);
}

#[test]
fn a_commit_cut_after_its_manifest_upload_is_present_when_the_server_comes_back() {
    let bucket = Bucket::new();
    let meta = faulty(&bucket);
    let images = days(44, 2);
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let crashed = dir.path().join("crashed");
    let repo = open_faulty(&bucket, &meta, &data);
    let a = ingest(&repo, "vol", &images[0]);
    // The data directory as a crash right after the upload would leave it.
    *meta.copy.lock().unwrap() = Some((data.clone(), crashed.clone()));
    let b = ingest(&repo, "vol", &images[1]);
    drop(repo);
    let copied = std::fs::read_dir(crashed.join("snapshots/vol"))
        .unwrap()
        .flatten()
        .filter(|e| e.path().extension().is_some_and(|x| x == "snap"))
        .count();
    assert_eq!(copied, 1, "the copy was taken before the rename");

    let repo = bucket.open(&crashed);
    assert_eq!(
        repo.recovery().manifests_downloaded,
        1,
        "{:?}",
        repo.recovery()
    );
    let listed: Vec<SnapshotId> = repo.list(None).unwrap().iter().map(|s| s.id).collect();
    assert_eq!(listed, vec![a.id, b.id]);
    assert_eq!(read_all(&repo, "vol", Some(b.id)).unwrap(), images[1]);
    assert!(repo.verify().unwrap().is_clean());
    let c = ingest(&repo, "vol", &images[0]);
    assert!(c.id > b.id);
}

#[test]
fn a_data_directory_of_another_repository_is_refused_naming_both_ids() {
    let (one, two) = (Bucket::new(), Bucket::new());
    let (d1, d2) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let id1 = one.open(d1.path()).repo_id_hex();
    let id2 = two.open(d2.path()).repo_id_hex();
    assert_ne!(id1, id2);
    let refused = Repository::open_remote(d1.path(), two.remote());
    let Err(Error::Invalid(msg)) = refused else {
        panic!(
            "opened another repository's data directory: {refused:?}",
            refused = refused.map(|r| r.repo_id_hex())
        );
    };
    assert!(msg.contains(&id1) && msg.contains(&id2), "{msg}");
    assert!(msg.contains("memory"), "names the store: {msg}");
    // Still the first repository's, untouched.
    assert_eq!(one.open(d1.path()).repo_id_hex(), id1);
}

#[test]
fn a_local_repository_is_not_copied_into_an_empty_bucket() {
    let bucket = Bucket::new();
    let dir = tempfile::tempdir().unwrap();
    drop(Repository::create(dir.path(), small_opts()).unwrap());
    let refused = Repository::open_remote(dir.path(), bucket.remote());
    let Err(Error::Invalid(msg)) = refused else {
        panic!("seeded a bucket from a data directory");
    };
    assert!(msg.contains("never copies"), "{msg}");
    assert!(bucket.meta.get("config").unwrap().is_none());
}

#[test]
fn a_new_server_restores_bit_exact_after_a_gc_with_rewrites() {
    let bucket = Bucket::new();
    let images = days(45, 3);
    let dir = tempfile::tempdir().unwrap();
    let repo = bucket.open(dir.path());
    let infos: Vec<_> = images.iter().map(|d| ingest(&repo, "vol", d)).collect();
    repo.delete("vol", infos[0].id).unwrap();
    let gc = repo
        .gc(&GcOptions {
            rewrite_below: 0.99,
            dry_run: false,
        })
        .unwrap();
    assert!(gc.packs_rewritten > 0, "{gc:?}");
    let kept: Vec<_> = infos
        .iter()
        .zip(&images)
        .skip(1)
        .map(|(info, image)| ("vol", info.id, &image[..]))
        .collect();
    let repo = bucket.new_server(repo, &kept);
    let report = repo.verify().unwrap();
    assert!(report.is_clean(), "{report:?}");
    // A second GC on the new server finds nothing it must not touch.
    repo.gc(&GcOptions::default()).unwrap();
    assert!(read_all(&repo, "vol", Some(infos[2].id)).unwrap() == images[2]);
}

/// MemPacks that notes the records it was told of and the reads that
/// were not announced first.
struct Hinted {
    inner: MemPacks,
    hinted: Mutex<HashSet<(PackId, u64)>>,
    reads: Mutex<(u64, u64)>,
}

impl PackBackend for Hinted {
    fn staging_path(&self, pack: PackId) -> PathBuf {
        self.inner.staging_path(pack)
    }
    fn store_sealed(&self, pack: PackId, staged: &Path) -> bunker_store::Result<()> {
        self.inner.store_sealed(pack, staged)
    }
    fn read(&self, pack: PackId, offset: u64, len: usize) -> bunker_store::Result<Vec<u8>> {
        self.inner.read(pack, offset, len)
    }
    fn read_record(
        &self,
        pack: PackId,
        offset: u64,
        head: &mut [u8],
        stored_len: usize,
    ) -> bunker_store::Result<Vec<u8>> {
        let announced = self.hinted.lock().unwrap().contains(&(pack, offset));
        let mut reads = self.reads.lock().unwrap();
        reads.0 += 1;
        reads.1 += u64::from(!announced);
        drop(reads);
        self.inner.read_record(pack, offset, head, stored_len)
    }
    fn pack_len(&self, pack: PackId) -> bunker_store::Result<u64> {
        self.inner.pack_len(pack)
    }
    fn list(&self) -> bunker_store::Result<Vec<PackId>> {
        self.inner.list()
    }
    fn list_staged(&self) -> bunker_store::Result<Vec<PackId>> {
        self.inner.list_staged()
    }
    fn reads_ahead(&self) -> bool {
        true
    }
    fn will_need(&self, records: &[(PackId, u64, usize)]) {
        let mut hinted = self.hinted.lock().unwrap();
        for &(pack, offset, len) in records {
            let stored = self.inner.pack_len(pack).unwrap();
            assert!(
                offset + len as u64 <= stored,
                "a hint past the end of {pack:?}"
            );
            hinted.insert((pack, offset));
        }
    }
    fn delete(&self, pack: PackId) -> bunker_store::Result<()> {
        self.inner.delete(pack)
    }
    fn describe(&self, pack: PackId) -> String {
        self.inner.describe(pack)
    }
}

#[test]
fn restore_and_verify_announce_every_record_before_reading_it() {
    let staging = tempfile::tempdir().unwrap();
    let packs = Arc::new(Hinted {
        inner: MemPacks::new(staging.path().to_path_buf()),
        hinted: Mutex::new(HashSet::new()),
        reads: Mutex::new((0, 0)),
    });
    let meta = Arc::new(MemMeta::new());
    let dir = tempfile::tempdir().unwrap();
    let remote = Remote {
        packs: packs.clone(),
        meta,
    };
    let repo =
        Repository::open_remote_with(dir.path(), Default::default(), small_opts(), remote).unwrap();
    // Several restore batches (8 MiB of image each).
    let image = volume(46, 20 << 20);
    let info = ingest(&repo, "vol", &image);
    assert_eq!(read_all(&repo, "vol", Some(info.id)).unwrap(), image);
    let (reads, unannounced) = *packs.reads.lock().unwrap();
    assert!(reads > 100, "{reads} reads");
    assert_eq!(
        unannounced, 0,
        "restore read {unannounced} of {reads} records unannounced"
    );

    packs.hinted.lock().unwrap().clear();
    *packs.reads.lock().unwrap() = (0, 0);
    assert!(repo.verify().unwrap().is_clean());
    let (reads, unannounced) = *packs.reads.lock().unwrap();
    assert!(reads > 100, "{reads} reads");
    assert_eq!(
        unannounced, 0,
        "verify read {unannounced} of {reads} records unannounced"
    );
}

#[test]
fn a_delete_cut_after_the_manifest_object_went_is_finished_on_reopen() {
    let bucket = Bucket::new();
    let images = days(47, 2);
    let dir = tempfile::tempdir().unwrap();
    let repo = bucket.open(dir.path());
    let a = ingest(&repo, "vol", &images[0]);
    let b = ingest(&repo, "vol", &images[1]);
    drop(repo);
    // What `delete` does in the bucket before it removes the local file.
    let mark = bunker_store::format::deleted_hwm::encode(b.id.0);
    bucket.meta.put("snapshots/.deleted-hwm", &mark).unwrap();
    bucket
        .meta
        .delete(&format!("snapshots/vol/{}.snap", b.id.0))
        .unwrap();

    let repo = bucket.open(dir.path());
    assert_eq!(
        repo.recovery().manifests_removed,
        1,
        "{:?}",
        repo.recovery()
    );
    let listed: Vec<SnapshotId> = repo.list(None).unwrap().iter().map(|s| s.id).collect();
    assert_eq!(listed, vec![a.id]);
    assert!(ingest(&repo, "vol", &images[1]).id > b.id);
}

/// Packs in the bucket whose deletes start failing after `deletes_left` of
/// them (a GC stopped midway through phase 7, deleting condemned pack
/// objects), and whose uploads fail while `failing_uploads` is set (the
/// store refusing after every retry).
struct FaultyPacks {
    inner: Arc<MemPacks>,
    deletes_left: std::sync::atomic::AtomicUsize,
    failing_uploads: AtomicBool,
}

impl FaultyPacks {
    fn new(bucket: &Bucket) -> Arc<FaultyPacks> {
        Arc::new(FaultyPacks {
            inner: bucket.packs.clone(),
            deletes_left: std::sync::atomic::AtomicUsize::new(usize::MAX),
            failing_uploads: AtomicBool::new(false),
        })
    }

    fn open(self: &Arc<Self>, bucket: &Bucket, dir: &Path) -> Repository {
        let remote = Remote {
            packs: self.clone(),
            meta: bucket.meta.clone(),
        };
        Repository::open_remote_with(dir, Default::default(), small_opts(), remote).unwrap()
    }
}

fn unavailable(reason: &str) -> Error {
    Error::Unavailable {
        store: "memory".into(),
        reason: format!("injected: {reason}"),
    }
}

impl PackBackend for FaultyPacks {
    fn staging_path(&self, pack: PackId) -> PathBuf {
        self.inner.staging_path(pack)
    }
    fn store_sealed(&self, pack: PackId, staged: &Path) -> bunker_store::Result<()> {
        if self.failing_uploads.load(Ordering::SeqCst) {
            return Err(unavailable("503 SlowDown after every retry"));
        }
        self.inner.store_sealed(pack, staged)
    }
    fn read(&self, pack: PackId, offset: u64, len: usize) -> bunker_store::Result<Vec<u8>> {
        self.inner.read(pack, offset, len)
    }
    fn pack_len(&self, pack: PackId) -> bunker_store::Result<u64> {
        self.inner.pack_len(pack)
    }
    fn list(&self) -> bunker_store::Result<Vec<PackId>> {
        self.inner.list()
    }
    fn list_staged(&self) -> bunker_store::Result<Vec<PackId>> {
        self.inner.list_staged()
    }
    fn delete(&self, pack: PackId) -> bunker_store::Result<()> {
        let left = self.deletes_left.load(Ordering::SeqCst);
        if left == 0 {
            return Err(unavailable("the store went away"));
        }
        self.deletes_left.store(left - 1, Ordering::SeqCst);
        self.inner.delete(pack)
    }
    fn describe(&self, pack: PackId) -> String {
        self.inner.describe(pack)
    }
}

#[test]
fn a_gc_stopped_while_deleting_pack_objects_leaves_a_bucket_a_new_server_verifies_and_finishes() {
    let bucket = Bucket::new();
    let images = days(48, 3);
    let dir = tempfile::tempdir().unwrap();
    let packs = FaultyPacks::new(&bucket);
    let repo = packs.open(&bucket, dir.path());
    let infos: Vec<_> = images.iter().map(|d| ingest(&repo, "vol", d)).collect();
    repo.delete("vol", infos[0].id).unwrap();
    repo.delete("vol", infos[1].id).unwrap();
    packs.deletes_left.store(1, Ordering::SeqCst);
    let stopped = repo.gc(&GcOptions {
        rewrite_below: 0.99,
        dry_run: false,
    });
    assert!(
        matches!(stopped, Err(Error::Unavailable { .. })),
        "{stopped:?}"
    );
    // The condemned packs are in the bucket's tombstones before any went.
    let tombs = bucket.meta.get("tombstones").unwrap().unwrap();
    let tombs = bunker_store::format::tombstones::decode("tombstones", &tombs).unwrap();
    assert!(tombs.packs.len() > 1, "{tombs:?}");
    let present: HashSet<u64> = bucket.packs.list().unwrap().iter().map(|p| p.0).collect();
    let condemned_left = tombs.packs.iter().filter(|p| present.contains(p)).count();
    assert_eq!(condemned_left, tombs.packs.len() - 1, "one was deleted");
    assert!(repo.verify().unwrap().is_clean());

    // The server is lost; its replacement finishes the deletions on open.
    let repo = bucket.new_server(repo, &[("vol", infos[2].id, &images[2])]);
    let left: HashSet<u64> = bucket.packs.list().unwrap().iter().map(|p| p.0).collect();
    assert!(tombs.packs.iter().all(|p| !left.contains(p)), "{tombs:?}");
    let report = repo.verify().unwrap();
    assert!(report.is_clean(), "{report:?}");
    repo.gc(&GcOptions::default()).unwrap();
    assert!(read_all(&repo, "vol", Some(infos[2].id)).unwrap() == images[2]);
    assert!(repo.verify().unwrap().is_clean());
}

#[test]
fn the_index_rebuilt_from_the_bucket_equals_the_one_built_by_ingest() {
    let bucket = Bucket::new();
    let images = days(49, 2);
    let dir = tempfile::tempdir().unwrap();
    let repo = bucket.open(dir.path());
    let infos: Vec<_> = images.iter().map(|d| ingest(&repo, "vol", d)).collect();
    repo.close().unwrap();
    let built = repo.index_digest();
    drop(repo);
    Repository::rebuild_index_remote(dir.path(), Default::default(), bucket.remote()).unwrap();
    let repo = bucket.open(dir.path());
    assert_eq!(repo.index_digest(), built);
    assert_eq!(
        read_all(&repo, "vol", Some(infos[1].id)).unwrap(),
        images[1]
    );
}

#[test]
fn an_index_left_in_a_data_directory_without_config_is_not_trusted() {
    let bucket = Bucket::new();
    let images = days(50, 1);
    let dir = tempfile::tempdir().unwrap();
    let repo = bucket.open(dir.path());
    let a = ingest(&repo, "vol", &images[0]);
    drop(repo);
    // A half-wiped data directory: the config went, the index stayed, and
    // the bucket is a new, empty one.
    std::fs::remove_file(dir.path().join("config")).unwrap();
    let fresh = Bucket::new();
    let repo = fresh.open(dir.path());
    assert!(repo.list(None).unwrap().is_empty());
    let b = ingest(&repo, "vol", &images[0]);
    assert_eq!(
        b.new_chunks, a.new_chunks,
        "deduplicated against another bucket's packs"
    );
    fresh.new_server(repo, &[("vol", b.id, &images[0])]);
}

#[test]
fn a_gc_whose_tombstones_cannot_reach_the_bucket_deletes_nothing_and_the_next_gc_finishes() {
    let bucket = Bucket::new();
    let meta = faulty(&bucket);
    let images = days(51, 3);
    let dir = tempfile::tempdir().unwrap();
    let repo = open_faulty(&bucket, &meta, dir.path());
    let infos: Vec<_> = images.iter().map(|d| ingest(&repo, "vol", d)).collect();
    repo.delete("vol", infos[0].id).unwrap();
    repo.delete("vol", infos[1].id).unwrap();
    let packs_before: HashSet<PackId> = bucket.packs.list().unwrap().into_iter().collect();
    meta.failing_puts.store(true, Ordering::SeqCst);
    let opts = GcOptions {
        rewrite_below: 0.99,
        dry_run: false,
    };
    let failed = repo.gc(&opts);
    assert!(
        matches!(failed, Err(Error::Unavailable { .. })),
        "{failed:?}"
    );
    let packs_after: HashSet<PackId> = bucket.packs.list().unwrap().into_iter().collect();
    assert!(
        packs_before.is_subset(&packs_after),
        "a pack object went before the bucket condemned it"
    );
    let local = std::fs::read(dir.path().join("tombstones")).unwrap();
    let condemned = bunker_store::format::tombstones::decode("tombstones", &local)
        .unwrap()
        .packs;
    assert!(!condemned.is_empty());
    // The failed GC's condemned packs stay out of lookups: a backup now
    // stores their chunks again rather than referencing them.
    assert!(repo.verify().unwrap().is_clean());
    let again = ingest(&repo, "again", &images[0]);

    meta.failing_puts.store(false, Ordering::SeqCst);
    let gc = repo.gc(&opts).unwrap();
    let left: HashSet<u64> = bucket.packs.list().unwrap().iter().map(|p| p.0).collect();
    assert!(condemned.iter().all(|p| !left.contains(p)), "{gc:?}");
    let tombs = bucket.meta.get("tombstones").unwrap().unwrap();
    let tombs = bunker_store::format::tombstones::decode("tombstones", &tombs).unwrap();
    assert!(
        tombs.packs.is_empty(),
        "cleared in the bucket too: {tombs:?}"
    );
    let repo = bucket.new_server(
        repo,
        &[
            ("vol", infos[2].id, &images[2]),
            ("again", again.id, &images[0]),
        ],
    );
    assert!(repo.verify().unwrap().is_clean());
}

/// A pack whose upload fails with `Unavailable` stays pending (its staged
/// file intact), not poisoning the writer: the commit that sealed it fails
/// and lists nothing, a commit of the same data while the store is still
/// down fails the same way (its chunks wait in that pack: acknowledging it
/// would acknowledge data not in the bucket), and the first commit once
/// the store is back uploads the pack before it is acknowledged. A new
/// server on the bucket then restores both snapshots.
#[test]
fn a_pack_whose_upload_failed_stays_pending_and_goes_up_with_the_next_commit() {
    let bucket = Bucket::new();
    let packs = FaultyPacks::new(&bucket);
    let images = days(52, 2);
    let dir = tempfile::tempdir().unwrap();
    let repo = packs.open(&bucket, dir.path());
    let a = ingest(&repo, "vol", &images[0]);
    let stored: HashSet<PackId> = bucket.packs.list().unwrap().into_iter().collect();
    let manifests = bucket.meta.list("snapshots/").unwrap();

    packs.failing_uploads.store(true, Ordering::SeqCst);
    for attempt in [
        "the commit that sealed it",
        "a commit while the store is down",
    ] {
        let failed = repo.ingest("vol", &images[1][..], &Default::default(), &mut |_| {});
        assert!(
            matches!(failed, Err(Error::Unavailable { .. })),
            "{attempt}: {failed:?}"
        );
        let listed: Vec<SnapshotId> = repo.list(None).unwrap().iter().map(|s| s.id).collect();
        assert_eq!(listed, vec![a.id], "{attempt}");
        let now: HashSet<PackId> = bucket.packs.list().unwrap().into_iter().collect();
        assert_eq!(now, stored, "{attempt}: a pack reached the bucket");
        assert_eq!(bucket.meta.list("snapshots/").unwrap(), manifests);
    }
    let staged = pending_packs(&packs);
    assert!(!staged.is_empty(), "no pack is pending");

    packs.failing_uploads.store(false, Ordering::SeqCst);
    let b = ingest(&repo, "vol", &images[1]);
    let now: HashSet<PackId> = bucket.packs.list().unwrap().into_iter().collect();
    for pack in &staged {
        assert!(
            now.contains(pack),
            "pending {pack:?} not uploaded by the commit"
        );
    }
    let repo = bucket.new_server(
        repo,
        &[("vol", a.id, &images[0]), ("vol", b.id, &images[1])],
    );
    assert!(repo.verify().unwrap().is_clean());
}

/// Packs staged (sealed, or being written) that the bucket does not hold.
fn pending_packs(packs: &FaultyPacks) -> Vec<PackId> {
    let stored: HashSet<PackId> = packs.inner.list().unwrap().into_iter().collect();
    let mut staged = packs.inner.list_staged().unwrap();
    staged.retain(|p| !stored.contains(p));
    staged
}
