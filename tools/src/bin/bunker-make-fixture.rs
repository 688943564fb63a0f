//! Writes the upgrade-drill fixture: a small repository in the current
//! format with two snapshots of deterministic data, and `expected.txt`
//! beside it (name, id, size, BLAKE3 per snapshot). Run once per format
//! version; the fixture is committed under tests/fixtures/ and must keep
//! opening, verifying and restoring in every later version.
//!
//! `cargo run --release -p bunker-tools --bin bunker-make-fixture -- tests/fixtures/repo-v1`
//! (clear), or `-- DIR KEYFILE` for an encrypted repository under that key
//! (a test key, committed beside the fixture as `DIR/key`).

use std::io::Write;

use anyhow::Context;
use bunker_store::{ChunkerParams, CreateOptions, IngestOptions, Repository};

fn data(seed: u64) -> Vec<u8> {
    let mut out = bunker_testdata::noise(seed, 512 << 10);
    for i in 0..12_000 {
        out.extend_from_slice(format!("{i:06} fixture log line, seed {seed}\n").as_bytes());
    }
    out.extend(std::iter::repeat_n(0u8, 256 << 10));
    out
}

fn main() -> anyhow::Result<()> {
    let dir = std::env::args()
        .nth(1)
        .context("usage: bunker-make-fixture DIR")?;
    let dir = std::path::Path::new(&dir);
    anyhow::ensure!(!dir.exists(), "{} exists; remove it first", dir.display());
    let key = match std::env::args().nth(2) {
        Some(file) => Some(std::sync::Arc::new(bunker_crypt::Key::load(
            std::path::Path::new(&file),
        )?)),
        None => None,
    };
    let repo = Repository::create(
        dir,
        CreateOptions {
            chunker: ChunkerParams::new(16 << 10, 64 << 10, 256 << 10)?,
            zstd_level: 3,
            pack_target_len: 1 << 20,
            key: key.clone(),
        },
    )?;
    let mut expected = String::new();
    let mut day0 = data(1);
    let mut day1 = day0.clone();
    day1[100_000..104_096].fill(7);
    day1.splice(600_000..600_000, *b"inserted");
    for (name, bytes) in [
        ("fix", &mut day0),
        ("fix", &mut day1),
        ("other", &mut data(2)),
    ] {
        let info = repo.ingest(name, &bytes[..], &IngestOptions::default(), &mut |_| {})?;
        expected.push_str(&format!(
            "{} {} {} {}\n",
            info.name,
            info.id,
            info.size,
            info.stream_hash_hex()
        ));
    }
    repo.close()?;
    drop(repo);
    std::fs::remove_file(dir.join("lock"))?;
    std::fs::File::create(dir.join("expected.txt"))?.write_all(expected.as_bytes())?;
    if let Some(key) = &key {
        key.create_file(&dir.join("key"))?;
    }
    print!("{expected}");
    Ok(())
}
