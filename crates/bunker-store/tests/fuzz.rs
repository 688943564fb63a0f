//! The on-disk decoders against hostile bytes (bunker_store::fuzz): 10,000
//! proptest cases per file kind, mutating real files (bit flips, byte
//! writes, truncations, insertions, splices) or made of random bytes, and
//! the saved corpus in `fuzz/corpus/<target>/` replayed. Nothing may panic;
//! the untouched files must still be accepted. The same entry points are
//! cargo-fuzz targets (`fuzz/`, nightly).

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use bunker_store::fuzz;
use proptest::prelude::*;

mod common;
use common::*;

/// Real files of a small repository, by target: pack, run, state,
/// manifest, blocks, small (tombstones, space, deleted-id mark, config).
fn seeds() -> &'static Vec<(&'static str, Vec<u8>)> {
    static SEEDS: OnceLock<Vec<(&'static str, Vec<u8>)>> = OnceLock::new();
    SEEDS.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let repo = bunker_store::Repository::create(dir.path(), small_opts()).unwrap();
        for seed in 0..3 {
            ingest(&repo, "f", &volume(seed, 300 << 10));
        }
        let first = repo.list(None).unwrap()[0].id;
        repo.delete("f", first).unwrap();
        repo.gc(&Default::default()).unwrap();
        // Block hashes with values and a tail (the volumes above fit in
        // one 1 MiB block).
        ingest(&repo, "g", &volume(9, (5 << 20) / 2 + 7));
        repo.close().unwrap();
        let mut out = Vec::new();
        let mut add = |target, p: &Path| out.push((target, std::fs::read(p).unwrap()));
        add("pack", &packs(dir.path())[0]);
        for e in std::fs::read_dir(dir.path().join("index"))
            .unwrap()
            .flatten()
        {
            let p = e.path();
            if p.extension().is_some_and(|x| x == "run") {
                add("run", &p);
            } else if p.file_name().is_some_and(|n| n == "state") {
                add("state", &p);
            }
        }
        for e in std::fs::read_dir(dir.path().join("snapshots/f"))
            .unwrap()
            .flatten()
        {
            match e.path().extension().and_then(|x| x.to_str()) {
                Some("snap") => add("manifest", &e.path()),
                Some("blocks") => add("blocks", &e.path()),
                _ => {}
            }
        }
        for e in std::fs::read_dir(dir.path().join("snapshots/g"))
            .unwrap()
            .flatten()
        {
            if e.path().extension().is_some_and(|x| x == "blocks") {
                add("blocks", &e.path());
            }
        }
        for f in ["space", "config", "snapshots/.deleted-hwm"] {
            if dir.path().join(f).exists() {
                add("small", &dir.path().join(f));
            }
        }
        out
    })
}

/// Runs `bytes` through the decoder of `target`; whether it was accepted.
fn run(target: &str, scratch: &Path, bytes: &[u8]) -> bool {
    match target {
        "pack" => fuzz::pack_file(scratch, bytes).is_ok(),
        "run" => fuzz::index_run(scratch, bytes).is_ok(),
        "state" => fuzz::index_state(bytes).is_ok(),
        "manifest" => fuzz::manifest_file(scratch, bytes).is_ok(),
        "blocks" => fuzz::blocks_file(scratch, bytes).is_ok(),
        "small" => fuzz::small_files(bytes) > 0,
        other => panic!("no target {other}"),
    }
}

#[derive(Clone, Debug)]
enum Mutation {
    Flip(usize, u8),
    Set(usize, u8),
    Truncate(usize),
    Insert(usize, Vec<u8>),
    Splice(usize, usize, usize),
}

fn mutate(mut b: Vec<u8>, ms: &[Mutation]) -> Vec<u8> {
    for m in ms {
        let len = b.len().max(1);
        match m {
            Mutation::Flip(at, bit) if !b.is_empty() => b[at % len] ^= 1 << (bit % 8),
            Mutation::Set(at, v) if !b.is_empty() => b[at % len] = *v,
            Mutation::Truncate(at) => b.truncate(at % (len + 1)),
            Mutation::Insert(at, bytes) => {
                let at = at % (b.len() + 1);
                b.splice(at..at, bytes.iter().copied());
            }
            Mutation::Splice(from, to, n) if !b.is_empty() => {
                let (from, to) = (from % len, to % len);
                let n = (*n % 64).min(b.len() - from).min(b.len() - to);
                let piece = b[from..from + n].to_vec();
                b[to..to + n].copy_from_slice(&piece);
            }
            _ => {}
        }
    }
    b
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (any::<usize>(), any::<u8>()).prop_map(|(a, b)| Mutation::Flip(a, b)),
        (any::<usize>(), any::<u8>()).prop_map(|(a, b)| Mutation::Set(a, b)),
        any::<usize>().prop_map(Mutation::Truncate),
        (
            any::<usize>(),
            proptest::collection::vec(any::<u8>(), 1..64)
        )
            .prop_map(|(a, b)| Mutation::Insert(a, b)),
        (any::<usize>(), any::<usize>(), any::<usize>())
            .prop_map(|(a, b, c)| Mutation::Splice(a, b, c)),
    ]
}

/// The directory each case overwrites its file in: tmpfs (`/dev/shm`)
/// where there is one. 10,000 truncate-and-rewrite cycles per target cost
/// 36 s on this project's ext4 (block frees are discarded one by one) and
/// 3 s in memory, and the decoders read the same bytes either way.
fn scratch() -> tempfile::TempDir {
    tempfile::Builder::new()
        .tempdir_in("/dev/shm")
        .or_else(|_| tempfile::tempdir())
        .unwrap()
}

fn check_target(target: &'static str) {
    let scratch = scratch();
    let seeds: Vec<Vec<u8>> = seeds()
        .iter()
        .filter(|(t, _)| *t == target)
        .map(|(_, b)| b.clone())
        .collect();
    assert!(!seeds.is_empty(), "no seed file for {target}");
    for s in &seeds {
        assert!(
            run(target, scratch.path(), s),
            "{target}: a real file is refused"
        );
    }
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig::with_cases(10_000));
    let strategy = (
        any::<prop::sample::Index>(),
        proptest::collection::vec(mutation(), 1..6),
        proptest::option::weighted(0.1, proptest::collection::vec(any::<u8>(), 0..2048)),
    );
    runner
        .run(&strategy, |(pick, ms, random)| {
            let bytes = random.unwrap_or_else(|| mutate(pick.get(&seeds).clone(), &ms));
            run(target, scratch.path(), &bytes);
            Ok(())
        })
        .unwrap();
}

#[test]
fn pack_decoder_survives_10_000_hostile_files() {
    check_target("pack");
}

#[test]
fn index_run_decoder_survives_10_000_hostile_files() {
    check_target("run");
}

#[test]
fn index_state_decoder_survives_10_000_hostile_files() {
    check_target("state");
}

#[test]
fn manifest_decoder_survives_10_000_hostile_files() {
    check_target("manifest");
}

#[test]
fn block_hashes_decoder_survives_10_000_hostile_files() {
    check_target("blocks");
}

#[test]
fn small_file_decoders_survive_10_000_hostile_files() {
    check_target("small");
}

fn corpus_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus")
}

/// Replays every saved input of every target (`fuzz/corpus/<target>/*`,
/// grown by `cargo +nightly fuzz run <target>`). With BUNKER_SAVE_SEEDS=1
/// it first writes the real files above into the corpus.
#[test]
fn saved_fuzz_corpus_replays_without_a_panic() {
    let scratch = scratch();
    if std::env::var("BUNKER_SAVE_SEEDS").is_ok_and(|v| v == "1") {
        for (i, (target, bytes)) in seeds().iter().enumerate() {
            let dir = corpus_dir().join(target);
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(dir.join(format!("seed-{i}")), bytes).unwrap();
        }
    }
    let mut replayed = 0;
    for target in ["pack", "run", "state", "manifest", "small"] {
        let dir = corpus_dir().join(target);
        let entries: Vec<_> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .flatten()
            .collect();
        assert!(!entries.is_empty(), "empty corpus for {target}");
        for e in entries {
            let bytes = std::fs::read(e.path()).unwrap();
            run(target, scratch.path(), &bytes);
            replayed += 1;
        }
    }
    println!("replayed {replayed} saved fuzz inputs");
}
