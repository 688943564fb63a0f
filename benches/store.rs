//! Store throughput: compression decision, ingest (chunk, hash, dedup,
//! compress, append), index lookups, manifest offset lookups and verified
//! restore decode, in bytes or operations per second.
//!
//! `cargo bench -p bunker-benches --bench store`

use std::io::Read;

use bunker_benches::{random, text};
use bunker_store::{CreateOptions, IngestOptions, ReadMode, Repository};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};

const LEN: usize = 64 << 20;

/// An empty repository in a temporary directory (kept alive by the dir).
fn fresh_repo() -> (tempfile::TempDir, Repository) {
    let dir = tempfile::tempdir().expect("tempdir");
    let repo = Repository::create(dir.path(), CreateOptions::default()).expect("create");
    (dir, repo)
}

fn compression(c: &mut Criterion) {
    let mut g = c.benchmark_group("zstd");
    let chunk = 1 << 20;
    g.throughput(Throughput::Bytes(chunk as u64))
        .sample_size(20);
    for (name, data) in [("text", text(chunk)), ("random", random(chunk))] {
        g.bench_with_input(
            BenchmarkId::new("level 1 (default)", name),
            &data,
            |b, d| b.iter(|| zstd::bulk::compress(d, 1).map(|v| v.len())),
        );
    }
    g.finish();
}

fn ingest_and_restore(c: &mut Criterion) {
    let mut mixed = random(LEN / 2);
    mixed.extend_from_slice(&text(LEN / 4));
    mixed.extend_from_slice(&vec![0u8; LEN / 4]);
    let mut g = c.benchmark_group("repository");
    g.throughput(Throughput::Bytes(LEN as u64)).sample_size(10);
    g.bench_function("ingest new data (random, text, zeros)", |b| {
        b.iter_with_setup(fresh_repo, |(_dir, repo)| {
            repo.ingest("v", &mixed[..], &IngestOptions::default(), &mut |_| {})
                .expect("ingest")
                .new_bytes
        })
    });
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let repo = Repository::create(dir.path(), CreateOptions::default()).expect("create");
        repo.ingest("v", &mixed[..], &IngestOptions::default(), &mut |_| {})
            .expect("ingest");
    }
    for mode in [ReadMode::Mmap, ReadMode::Pread] {
        let repo = Repository::open_with(
            dir.path(),
            bunker_store::OpenOptions {
                read_mode: mode,
                ..Default::default()
            },
        )
        .expect("open");
        g.bench_function(
            format!("ingest unchanged data ({mode:?} repository)"),
            |b| {
                b.iter(|| {
                    repo.ingest("v", &mixed[..], &IngestOptions::default(), &mut |_| {})
                        .expect("ingest")
                        .new_bytes
                })
            },
        );
        g.bench_function(format!("restore, decode and verify ({mode:?})"), |b| {
            b.iter(|| {
                let mut r = repo.reader("v", None, None).expect("reader");
                let mut n = 0;
                while let Some(p) = r.next_piece().expect("piece") {
                    n += p.len();
                }
                n
            })
        });
        drop(repo);
    }
    g.finish();
    let repo = Repository::open(dir.path()).expect("open");
    let size = repo.snapshot("v", None).expect("snapshot").size;
    let mut g = c.benchmark_group("lookups");
    g.throughput(Throughput::Elements(1));
    g.bench_function("manifest offset -> chunk (4 KiB range read)", |b| {
        let mut x = 1u64;
        b.iter(|| {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1);
            let at = (x >> 20) % (size - 4096);
            let mut buf = [0u8; 4096];
            repo.reader("v", None, Some(at..at + 4096))
                .expect("reader")
                .read_exact(&mut buf)
                .expect("read");
            buf[0]
        })
    });
    g.finish();
}

/// Appending new chunks to packs (random chunks: the compression probe
/// decides "raw" after 32 KiB of samples, then one positioned write).
fn pack_append(c: &mut Criterion) {
    let chunk_len = 256 << 10;
    let data = random(64 << 20);
    let mut g = c.benchmark_group("pack");
    g.throughput(Throughput::Bytes(data.len() as u64))
        .sample_size(10);
    g.bench_function("append 256 KiB random chunks (probe + write)", |b| {
        b.iter_with_setup(fresh_repo, |(_dir, repo)| {
            let pins = repo.pins();
            for chunk in data.chunks(chunk_len) {
                repo.store_chunk(&bunker_store::ChunkId::of(chunk), chunk, &pins)
                    .expect("store");
            }
        })
    });
    g.finish();
}

/// Index lookups: 1 Mi entries in flushed runs, a hot set of 1000 ids,
/// random ids over the whole index, and absent ids.
fn index_lookups(c: &mut Criterion) {
    use bunker_store::index::Index;
    use bunker_store::{ChunkId, Location, PackId};
    let dir = tempfile::tempdir().expect("tempdir");
    let index = Index::open(dir.path(), 1 << 18).expect("index");
    let id = |n: u64| ChunkId::of(&n.to_le_bytes());
    let n = 1u64 << 20;
    for batch in 0..(n / 4096) {
        let entries = (batch * 4096..(batch + 1) * 4096)
            .map(|i| {
                (
                    id(i),
                    Location {
                        pack: PackId(batch),
                        offset: i,
                        raw_len: 1,
                        stored_len: 1,
                    },
                )
            })
            .collect();
        index.add_sealed(PackId(batch), entries);
        if index.needs_flush() {
            index.flush().expect("flush");
        }
    }
    index.flush().expect("flush");
    let hot: Vec<ChunkId> = (0..1000).map(|i| id(i * 997 % n)).collect();
    let random: Vec<ChunkId> = (0..65_536u64)
        .map(|i| id(i.wrapping_mul(0x9E37_79B9) % n))
        .collect();
    let absent: Vec<ChunkId> = (0..65_536u64).map(|i| id(n + i)).collect();
    let mut g = c.benchmark_group("index (1 Mi entries)");
    g.throughput(Throughput::Elements(1));
    for (name, ids, present) in [
        ("hot", &hot, true),
        ("random", &random, true),
        ("absent", &absent, false),
    ] {
        let mut i = 0;
        g.bench_function(format!("lookup, {name}"), |b| {
            b.iter(|| {
                i = (i + 1) % ids.len();
                assert_eq!(index.lookup(&ids[i]).is_some(), present);
            })
        });
    }
    g.finish();
}

criterion_group!(
    benches,
    compression,
    ingest_and_restore,
    pack_append,
    index_lookups
);
criterion_main!(benches);
