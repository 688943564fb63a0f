//! Helpers shared by the store's integration tests.
#![allow(dead_code)]

use std::io::Read;

use bunker_store::{ChunkerParams, CreateOptions, Error, IngestOptions, Repository, SnapshotId};

pub use bunker_testdata::noise;

/// Random, text and zero regions: something like a small volume.
pub fn volume(seed: u64, len: usize) -> Vec<u8> {
    let mut v = noise(seed, len);
    let text: Vec<u8> = (0..)
        .flat_map(|i| format!("{i} INFO served /api/v1/items in 3ms\n").into_bytes())
        .take(len / 3)
        .collect();
    v[..text.len()].copy_from_slice(&text);
    let z0 = len / 2;
    v[z0..z0 + len / 5].fill(0);
    v
}

pub fn small_opts() -> CreateOptions {
    CreateOptions {
        chunker: ChunkerParams::new(16 << 10, 64 << 10, 256 << 10).unwrap(),
        zstd_level: 3,
        pack_target_len: 1 << 20,
        key: None,
    }
}

pub fn ingest(repo: &Repository, name: &str, data: &[u8]) -> bunker_store::SnapshotInfo {
    repo.ingest(name, data, &IngestOptions::default(), &mut |_| {})
        .unwrap()
}

pub fn read_all(
    repo: &Repository,
    name: &str,
    id: Option<SnapshotId>,
) -> bunker_store::Result<Vec<u8>> {
    let mut r = repo.reader(name, id, None)?;
    let mut out = Vec::new();
    r.read_to_end(&mut out)
        .map_err(|e| match e.into_inner().map(|b| b.downcast::<Error>()) {
            Some(Ok(e)) => *e,
            other => Error::Invalid(format!("{other:?}")),
        })?;
    Ok(out)
}

/// The pack files of the repository at `dir`, in id order.
pub fn packs(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for a in std::fs::read_dir(dir.join("packs")).unwrap().flatten() {
        for b in std::fs::read_dir(a.path()).unwrap().flatten() {
            for f in std::fs::read_dir(b.path()).unwrap().flatten() {
                out.push(f.path());
            }
        }
    }
    out.sort();
    out
}
