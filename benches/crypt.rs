//! AEAD throughput for encryption at rest: AES-256-GCM against
//! (X)ChaCha20-Poly1305, RustCrypto's pure-Rust crates and ring's assembly,
//! seal then open, over record-sized buffers (64 KiB to
//! 1 MiB), one core; then the chosen construction through `bunker-crypt`.
//! Figures and the choice: docs/BENCHMARKS.md, "Encryption".
//!
//! `cargo bench -p bunker-benches --bench crypt`

use aes_gcm::aead::{AeadInPlace, KeyInit};
use bunker_benches::random;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};

const SIZES: [usize; 3] = [64 << 10, 256 << 10, 1 << 20];

fn aeads(c: &mut Criterion) {
    let mut g = c.benchmark_group("seal+open");
    g.sample_size(20);
    let aes = aes_gcm::Aes256Gcm::new(&[7u8; 32].into());
    let xchacha = chacha20poly1305::XChaCha20Poly1305::new(&[7u8; 32].into());
    let key = bunker_crypt::Key::from_bytes([7u8; 32]);
    let sealer = bunker_crypt::Sealer::new(&key, bunker_crypt::Purpose::Record);
    for len in SIZES {
        let data = random(len);
        g.throughput(Throughput::Bytes(len as u64));
        g.bench_with_input(BenchmarkId::new("AES-256-GCM", len), &data, |b, d| {
            let mut buf = d.clone();
            b.iter(|| {
                let nonce = [1u8; 12].into();
                let tag = aes
                    .encrypt_in_place_detached(&nonce, b"ad", &mut buf)
                    .unwrap();
                aes.decrypt_in_place_detached(&nonce, b"ad", &mut buf, &tag)
                    .unwrap();
            })
        });
        g.bench_with_input(
            BenchmarkId::new("XChaCha20-Poly1305", len),
            &data,
            |b, d| {
                let mut buf = d.clone();
                b.iter(|| {
                    let nonce = [1u8; 24].into();
                    let tag = xchacha
                        .encrypt_in_place_detached(&nonce, b"ad", &mut buf)
                        .unwrap();
                    xchacha
                        .decrypt_in_place_detached(&nonce, b"ad", &mut buf, &tag)
                        .unwrap();
                })
            },
        );
        for (name, alg) in [
            ("ring AES-256-GCM", &ring::aead::AES_256_GCM),
            ("ring ChaCha20-Poly1305", &ring::aead::CHACHA20_POLY1305),
        ] {
            let key =
                ring::aead::LessSafeKey::new(ring::aead::UnboundKey::new(alg, &[7u8; 32]).unwrap());
            g.bench_with_input(BenchmarkId::new(name, len), &data, |b, d| {
                let mut buf = d.clone();
                b.iter(|| {
                    let nonce = || ring::aead::Nonce::assume_unique_for_key([1u8; 12]);
                    let ad = || ring::aead::Aad::from(b"ad");
                    let tag = key
                        .seal_in_place_separate_tag(nonce(), ad(), &mut buf)
                        .unwrap();
                    buf.extend_from_slice(tag.as_ref());
                    let len = key.open_in_place(nonce(), ad(), &mut buf).unwrap().len();
                    buf.truncate(len);
                })
            });
        }
        // In place, as the store will call it (a copy of a 64 KiB-1 MiB
        // buffer costs as much as the cipher here: docs/BENCHMARKS.md).
        let mut buf = vec![0u8; len + bunker_crypt::OVERHEAD];
        buf[bunker_crypt::seal::NONCE_LEN..][..len].copy_from_slice(&data);
        g.bench_function(BenchmarkId::new("bunker-crypt seal only", len), |b| {
            b.iter(|| sealer.seal_in_place(b"ad", &mut buf))
        });
        buf[bunker_crypt::seal::NONCE_LEN..][..len].copy_from_slice(&data);
        g.bench_function(BenchmarkId::new("bunker-crypt", len), |b| {
            b.iter(|| {
                sealer.seal_in_place(b"ad", &mut buf);
                sealer.open_in_place(b"ad", &mut buf).unwrap().len()
            })
        });
    }
    g.finish();
}

criterion_group!(benches, aeads);
criterion_main!(benches);
