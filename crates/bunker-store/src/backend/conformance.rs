//! The behaviours every [`PackBackend`] must have, as one function each.
//!
//! The engine relies on these and on nothing else a backend does: GC and
//! verify treat only `NotFound` as "this pack is gone", recovery finds
//! unsealed packs through `list_staged` at the paths `staging_path` gives,
//! and a read of a damaged or short pack must be an error, never a panic or
//! short bytes. Each function takes a backend, panics on the first broken
//! promise, and uses its own pack ids, so all of them can run against one
//! backend (`run`) or one per test. Compiled for the crate's tests and,
//! with the `conformance` feature, for other backends' tests.

use std::path::PathBuf;

use crate::{Error, PackId};

use super::PackBackend;

/// Runs every behaviour below against `backend`, which may already hold
/// packs of its own (ids with a high 32-bit part of 1 to 16 are used here).
pub fn run(backend: &dyn PackBackend) {
    store_sealed_then_read(backend);
    read_record_matches_read(backend);
    missing_pack_is_not_found(backend);
    deleted_pack_is_not_found(backend);
    delete_is_idempotent(backend);
    read_past_the_end_is_an_error(backend);
    list_staged_shows_unsealed_packs(backend);
    store_sealed_without_a_staged_file_fails(backend);
    staging_path_is_stable_and_distinct(backend);
    describe_names_the_pack(backend);
    packs_across_the_fan_out_stay_apart(backend);
    done_with_is_only_a_hint(backend);
}

fn id(behaviour: u64, n: u64) -> PackId {
    PackId(behaviour << 32 | n)
}

/// Bytes that differ per pack and per offset, so a read of the wrong pack
/// or range cannot pass by accident.
fn contents(pack: PackId, len: usize) -> Vec<u8> {
    let seed = pack.0.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    (0..len as u64)
        .map(|i| (seed.wrapping_add(i.wrapping_mul(31)) >> 7) as u8 ^ i as u8)
        .collect()
}

/// Writes `bytes` as the staging file of `pack`, as the pack writer does.
fn stage(backend: &dyn PackBackend, pack: PackId, bytes: &[u8]) -> PathBuf {
    let path = backend.staging_path(pack);
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).unwrap();
    }
    std::fs::write(&path, bytes).unwrap();
    path
}

/// Stages and publishes `len` bytes as `pack`; returns the bytes.
fn seal(backend: &dyn PackBackend, pack: PackId, len: usize) -> Vec<u8> {
    let bytes = contents(pack, len);
    let staged = stage(backend, pack, &bytes);
    backend
        .store_sealed(pack, &staged)
        .unwrap_or_else(|e| panic!("store_sealed of {pack:?}: {e}"));
    bytes
}

fn assert_not_found<T: std::fmt::Debug>(what: &str, r: crate::Result<T>) {
    assert!(
        matches!(r, Err(Error::NotFound { .. })),
        "{what}: want NotFound (GC and verify take only NotFound to mean gone), got {r:?}"
    );
}

/// A sealed pack reads back byte for byte, at any range, and is listed;
/// its staging file no longer is.
pub fn store_sealed_then_read(backend: &dyn PackBackend) {
    let pack = id(1, 7);
    let bytes = seal(backend, pack, 100_000);
    assert_eq!(backend.pack_len(pack).unwrap(), bytes.len() as u64);
    assert_eq!(backend.read(pack, 0, bytes.len()).unwrap(), bytes);
    for (offset, len) in [
        (0, 1),
        (1, 4095),
        (4096, 4096),
        (65_535, 12_345),
        (99_999, 1),
    ] {
        let got = backend.read(pack, offset as u64, len).unwrap();
        assert_eq!(got, &bytes[offset..offset + len], "read {offset}+{len}");
    }
    assert_eq!(backend.read(pack, 500, 0).unwrap(), Vec::<u8>::new());
    assert!(
        backend.list().unwrap().contains(&pack),
        "sealed pack not listed"
    );
    assert!(
        !backend.list_staged().unwrap().contains(&pack),
        "a published pack must not be listed as staged (recovery would seal it again)"
    );
}

/// `read_record` fills the header and returns the bytes after it, exactly
/// as two reads would.
pub fn read_record_matches_read(backend: &dyn PackBackend) {
    let pack = id(2, 1);
    let bytes = seal(backend, pack, 50_000);
    for (offset, head_len, stored_len) in [(0, 24, 0), (24, 24, 1000), (49_000, 40, 960)] {
        let mut head = vec![0u8; head_len];
        let stored = backend
            .read_record(pack, offset as u64, &mut head, stored_len)
            .unwrap();
        assert_eq!(head, &bytes[offset..offset + head_len], "head at {offset}");
        let data = offset + head_len;
        assert_eq!(
            stored,
            &bytes[data..data + stored_len],
            "record at {offset}"
        );
    }
}

/// A pack never stored is `NotFound` for every read and absent from `list`.
pub fn missing_pack_is_not_found(backend: &dyn PackBackend) {
    let pack = id(3, 1);
    assert_not_found("pack_len of a missing pack", backend.pack_len(pack));
    assert_not_found("read of a missing pack", backend.read(pack, 0, 1));
    let mut head = [0u8; 8];
    assert_not_found(
        "read_record of a missing pack",
        backend.read_record(pack, 0, &mut head, 8),
    );
    assert!(!backend.list().unwrap().contains(&pack));
}

/// After `delete` a pack is gone for every read, even one that was read
/// (and so perhaps cached or mapped) before.
pub fn deleted_pack_is_not_found(backend: &dyn PackBackend) {
    let pack = id(4, 1);
    let kept = id(4, 2);
    seal(backend, pack, 10_000);
    let kept_bytes = seal(backend, kept, 10_000);
    backend.read(pack, 0, 10).unwrap();
    backend.pack_len(pack).unwrap();
    backend.delete(pack).unwrap();
    assert_not_found("pack_len of a deleted pack", backend.pack_len(pack));
    assert_not_found("read of a deleted pack", backend.read(pack, 0, 10));
    let mut head = [0u8; 8];
    assert_not_found(
        "read_record of a deleted pack",
        backend.read_record(pack, 0, &mut head, 8),
    );
    let listed = backend.list().unwrap();
    assert!(!listed.contains(&pack), "deleted pack still listed");
    assert!(listed.contains(&kept), "delete took another pack with it");
    assert_eq!(backend.read(kept, 0, 10_000).unwrap(), kept_bytes);
}

/// Deleting a missing or already deleted pack succeeds: GC and recovery
/// repeat deletes that a crash interrupted.
pub fn delete_is_idempotent(backend: &dyn PackBackend) {
    let pack = id(5, 1);
    backend.delete(id(5, 2)).unwrap();
    seal(backend, pack, 1000);
    backend.delete(pack).unwrap();
    backend.delete(pack).unwrap();
    assert_not_found("pack_len after two deletes", backend.pack_len(pack));
}

/// A read that runs past the end of a pack is an error that is not
/// `NotFound` (the pack exists: it is short or the offset is damaged), and
/// the pack stays readable.
pub fn read_past_the_end_is_an_error(backend: &dyn PackBackend) {
    let pack = id(6, 1);
    let bytes = seal(backend, pack, 4096);
    let len = bytes.len() as u64;
    for (offset, n) in [
        (len - 1, 2),
        (len, 1),
        (len + 1000, 1),
        (0, bytes.len() + 1),
        (u64::MAX - 1, 4),
    ] {
        let r = backend.read(pack, offset, n);
        assert!(
            matches!(r, Err(ref e) if !matches!(e, Error::NotFound { .. })),
            "read {offset}+{n} of a {len}-byte pack: want an error other than NotFound, got {r:?}"
        );
    }
    let r = backend.read(pack, len + 1000, 1);
    assert!(
        matches!(r, Err(Error::Corrupt { pack: Some(p), .. }) if p == pack),
        "a read past the end names the pack: {r:?}"
    );
    for (offset, head_len, stored_len) in [(len - 10, 8, 8), (len - 4, 8, 0), (len + 1, 8, 8)] {
        let mut head = vec![0u8; head_len];
        let r = backend.read_record(pack, offset, &mut head, stored_len);
        assert!(
            matches!(r, Err(ref e) if !matches!(e, Error::NotFound { .. })),
            "read_record {offset}+{head_len}+{stored_len} of a {len}-byte pack: got {r:?}"
        );
    }
    assert_eq!(backend.read(pack, 0, bytes.len()).unwrap(), bytes);
}

/// A staging file is listed by `list_staged` (so recovery finds it after a
/// crash) and by neither `list` nor a read until it is published.
pub fn list_staged_shows_unsealed_packs(backend: &dyn PackBackend) {
    let pack = id(7, 3);
    let bytes = contents(pack, 3000);
    let staged = stage(backend, pack, &bytes);
    assert!(
        backend.list_staged().unwrap().contains(&pack),
        "staging file not listed"
    );
    assert!(
        !backend.list().unwrap().contains(&pack),
        "unsealed pack listed as sealed"
    );
    assert_not_found("pack_len of an unsealed pack", backend.pack_len(pack));
    backend.store_sealed(pack, &staged).unwrap();
    assert!(!backend.list_staged().unwrap().contains(&pack));
    assert!(backend.list().unwrap().contains(&pack));
    assert_eq!(backend.read(pack, 0, bytes.len()).unwrap(), bytes);
}

/// Publishing a staging file that is not there is an error and publishes
/// nothing.
pub fn store_sealed_without_a_staged_file_fails(backend: &dyn PackBackend) {
    let pack = id(8, 1);
    let path = backend.staging_path(pack);
    let r = backend.store_sealed(pack, &path);
    assert!(r.is_err(), "store_sealed of a missing file: {r:?}");
    assert!(!backend.list().unwrap().contains(&pack));
    assert_not_found("pack_len after a failed store", backend.pack_len(pack));
}

/// The same pack always stages at the same path (recovery looks there),
/// and different packs never share one, whichever bits of the id differ.
pub fn staging_path_is_stable_and_distinct(backend: &dyn PackBackend) {
    let packs = fan_out_ids(9);
    for &p in &packs {
        assert_eq!(backend.staging_path(p), backend.staging_path(p));
    }
    let mut paths: Vec<PathBuf> = packs.iter().map(|&p| backend.staging_path(p)).collect();
    paths.sort();
    paths.dedup();
    assert_eq!(paths.len(), packs.len(), "two packs share a staging path");
}

/// `describe` names each pack distinctly, shows its id in hex for an
/// operator, and leaks no absolute filesystem path (it reaches clients in
/// error messages).
pub fn describe_names_the_pack(backend: &dyn PackBackend) {
    let packs = fan_out_ids(10);
    let mut names = Vec::new();
    for &p in &packs {
        let name = backend.describe(p);
        assert!(
            name.contains(&format!("{:016x}", p.0)),
            "{name:?} does not show pack id {:016x}",
            p.0
        );
        assert!(!name.starts_with('/'), "{name:?} is an absolute path");
        names.push(name);
    }
    names.sort();
    names.dedup();
    assert_eq!(names.len(), packs.len(), "two packs share a name");
}

/// Packs whose ids differ only in the low, middle or high bits (the ones a
/// fan-out splits on) are stored and read independently.
pub fn packs_across_the_fan_out_stay_apart(backend: &dyn PackBackend) {
    let packs = fan_out_ids(11);
    let stored: Vec<Vec<u8>> = packs.iter().map(|&p| seal(backend, p, 2000)).collect();
    let listed = backend.list().unwrap();
    for (&p, bytes) in packs.iter().zip(&stored) {
        assert!(listed.contains(&p), "{p:?} not listed");
        assert_eq!(backend.read(p, 0, bytes.len()).unwrap(), *bytes, "{p:?}");
    }
}

/// `done_with` is a hint about memory: the range stays readable.
pub fn done_with_is_only_a_hint(backend: &dyn PackBackend) {
    let pack = id(12, 1);
    let bytes = seal(backend, pack, 20_000);
    assert_eq!(backend.read(pack, 0, 8192).unwrap(), &bytes[..8192]);
    backend.done_with(pack, 0, 8192);
    assert_eq!(backend.read(pack, 0, 8192).unwrap(), &bytes[..8192]);
    assert_eq!(backend.pack_len(pack).unwrap(), bytes.len() as u64);
}

fn fan_out_ids(behaviour: u64) -> Vec<PackId> {
    [
        0,
        1,
        0xff,
        0x100,
        0x101,
        0xffff,
        0x1_0000,
        0xff_ffff,
        0xffff_ffff,
    ]
    .into_iter()
    .map(|n| id(behaviour, n))
    .collect()
}

/// The behaviours every [`super::MetaBackend`] must have. Keys used here
/// start with `conformance/`, so the suite can run against a bucket that
/// holds a repository.
pub mod meta {
    use crate::backend::MetaBackend;

    pub fn run(backend: &dyn MetaBackend) {
        put_then_get(backend);
        put_replaces(backend);
        put_new_never_replaces(backend);
        absent_is_none(backend);
        files_round_trip(backend);
        list_is_sorted_and_bounded_by_the_prefix(backend);
        delete_is_idempotent(backend);
        hostile_keys_are_refused(backend);
        describe_is_not_empty(backend);
    }

    pub fn put_then_get(backend: &dyn MetaBackend) {
        backend.put("conformance/a/one", b"first").unwrap();
        assert_eq!(
            backend.get("conformance/a/one").unwrap().as_deref(),
            Some(&b"first"[..])
        );
        backend.put("conformance/a/empty", b"").unwrap();
        assert_eq!(
            backend.get("conformance/a/empty").unwrap().as_deref(),
            Some(&b""[..])
        );
    }

    pub fn put_replaces(backend: &dyn MetaBackend) {
        backend.put("conformance/b/x", b"old").unwrap();
        backend.put("conformance/b/x", b"new and longer").unwrap();
        assert_eq!(
            backend.get("conformance/b/x").unwrap().as_deref(),
            Some(&b"new and longer"[..])
        );
    }

    pub fn put_new_never_replaces(backend: &dyn MetaBackend) {
        backend.delete("conformance/g/once").unwrap();
        assert!(backend.put_new("conformance/g/once", b"first").unwrap());
        assert!(!backend.put_new("conformance/g/once", b"second").unwrap());
        assert_eq!(
            backend.get("conformance/g/once").unwrap().as_deref(),
            Some(&b"first"[..])
        );
    }

    pub fn absent_is_none(backend: &dyn MetaBackend) {
        assert_eq!(backend.get("conformance/c/never").unwrap(), None);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out");
        assert!(!backend.get_file("conformance/c/never", &path).unwrap());
        assert!(!path.exists(), "get_file of an absent key created {path:?}");
    }

    /// Large enough that a remote backend must stream it in parts.
    pub fn files_round_trip(backend: &dyn MetaBackend) {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("in");
        let bytes: Vec<u8> = (0..13u64 << 20)
            .map(|i| (i.wrapping_mul(0x9e37_79b9) >> 11) as u8)
            .collect();
        std::fs::write(&src, &bytes).unwrap();
        backend.put_file("conformance/d/big", &src).unwrap();
        let out = dir.path().join("out");
        std::fs::write(&out, b"stale bytes that must go").unwrap();
        assert!(backend.get_file("conformance/d/big", &out).unwrap());
        let got = std::fs::read(&out).unwrap();
        assert!(
            got == bytes,
            "get_file returned {} bytes, want the {} put",
            got.len(),
            bytes.len()
        );
        assert_eq!(
            backend.get("conformance/d/big").unwrap().map(|b| b.len()),
            Some(bytes.len())
        );
    }

    pub fn list_is_sorted_and_bounded_by_the_prefix(backend: &dyn MetaBackend) {
        for k in [
            "conformance/e/b/2",
            "conformance/e/a",
            "conformance/e/b/1",
            "conformance/ee",
        ] {
            backend.put(k, k.as_bytes()).unwrap();
        }
        assert_eq!(
            backend.list("conformance/e/").unwrap(),
            ["conformance/e/a", "conformance/e/b/1", "conformance/e/b/2"]
        );
        assert_eq!(backend.list("conformance/e/b/").unwrap().len(), 2);
        assert!(backend.list("conformance/none/").unwrap().is_empty());
    }

    pub fn delete_is_idempotent(backend: &dyn MetaBackend) {
        backend.put("conformance/f/x", b"x").unwrap();
        backend.delete("conformance/f/x").unwrap();
        assert_eq!(backend.get("conformance/f/x").unwrap(), None);
        backend.delete("conformance/f/x").unwrap();
        assert!(backend.list("conformance/f/").unwrap().is_empty());
    }

    pub fn hostile_keys_are_refused(backend: &dyn MetaBackend) {
        for k in [
            "",
            "/abs",
            "conformance/../x",
            "conformance//x",
            "conformance/./x",
            "conformance/x/",
        ] {
            let r = backend.put(k, b"x");
            assert!(
                matches!(r, Err(crate::Error::Invalid(_))),
                "put of key {k:?}: want Invalid, got {r:?}"
            );
        }
    }

    pub fn describe_is_not_empty(backend: &dyn MetaBackend) {
        assert!(!backend.describe().is_empty());
    }
}
