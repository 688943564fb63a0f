//! Chunker and per-chunk hashing throughput, in bytes per second.
//!
//! `cargo bench -p bunker-benches --bench chunker`

use bunker_benches::{random, text};
use bunker_chunk::{ChunkId, Chunker, ChunkerParams};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};

const LEN: usize = 64 << 20;

fn chunking(c: &mut Criterion) {
    let chunker = Chunker::new(ChunkerParams::DEFAULT);
    let inputs = [
        ("random", random(LEN)),
        ("text", text(LEN)),
        ("zeros", vec![0u8; LEN]),
    ];
    let mut g = c.benchmark_group("chunker");
    g.throughput(Throughput::Bytes(LEN as u64)).sample_size(10);
    for (name, data) in &inputs {
        g.bench_with_input(BenchmarkId::new("one core", name), data, |b, d| {
            b.iter(|| chunker.cuts(d, true).len())
        });
        g.bench_with_input(BenchmarkId::new("all cores", name), data, |b, d| {
            b.iter(|| bunker_chunk::seams::cuts_parallel(&chunker, d, true).len())
        });
    }
    g.finish();
}

fn hashing(c: &mut Criterion) {
    let data = random(LEN);
    let chunker = Chunker::new(ChunkerParams::DEFAULT);
    let cuts = chunker.cuts(&data, true);
    let mut g = c.benchmark_group("blake3");
    g.throughput(Throughput::Bytes(LEN as u64)).sample_size(10);
    g.bench_function("per chunk, one core", |b| {
        b.iter(|| {
            let mut start = 0;
            let mut x = 0u8;
            for cut in &cuts {
                x ^= ChunkId::of(&data[start..cut.end]).0[0];
                start = cut.end;
            }
            x
        })
    });
    g.bench_function("whole buffer, all cores (the machine's ceiling)", |b| {
        b.iter(|| {
            let mut h = blake3::Hasher::new();
            h.update_rayon(&data);
            h.finalize()
        })
    });
    g.finish();
}

criterion_group!(benches, chunking, hashing);
criterion_main!(benches);
