//! The chunker's cut scan on one core, each [`Scan`], in bytes
//! per second: random data and a SAN-like image from the project's
//! generator (zero runs, text, database pages, media).
//!
//! `cargo bench -p bunker-benches --bench scan`

use bunker_benches::random;
use bunker_chunk::{Chunker, ChunkerParams, Scan};
use bunker_testdata::image::{Image, ImageSpec};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use std::io::Read;

const LEN: usize = 64 << 20;

/// The first `len` bytes of the day-0 SAN-like image of seed 1.
fn san(len: usize) -> Vec<u8> {
    let mut out = vec![0u8; len];
    let image = Image::new(&ImageSpec::new(1, 4 * len as u64), 0);
    image
        .reader()
        .read_exact(&mut out)
        .expect("the image is longer than the buffer");
    out
}

fn scan(c: &mut Criterion) {
    let inputs = [("random", random(LEN)), ("san", san(LEN))];
    let mut g = c.benchmark_group("scan");
    g.throughput(Throughput::Bytes(LEN as u64)).sample_size(10);
    for scan in Scan::ALL {
        let chunker = Chunker::with_scan(ChunkerParams::DEFAULT, scan);
        for (name, data) in &inputs {
            let id = BenchmarkId::new(format!("{scan:?}"), name);
            g.bench_with_input(id, data, |b, d| b.iter(|| chunker.cuts(d, true).len()));
        }
    }
    g.finish();
}

criterion_group!(benches, scan);
criterion_main!(benches);
