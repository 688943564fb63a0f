//! CPU cost of encryption at rest, in core-seconds per GB: seals and opens
//! records of 64 KiB to 1 MiB through `bunker-crypt` on one thread and reads
//! that thread's CPU clock, so the figure holds on a loaded machine where
//! wall-clock throughput (benches/crypt.rs) does not. BLAKE3 over the same
//! bytes is the yardstick: ingest already pays it for every chunk; ring
//! alone with one key shows what the per-object key adds. Everything is in
//! place: copies of 64 KiB-1 MiB buffers whose addresses differ by a few
//! bytes modulo 4 KiB cost more than the cipher on this CPU.
//!
//! `cargo run --release -p bunker-tools --bin bunker-crypt-cpu -- --gib 2 [--threads 2]`

use std::time::Duration;

use clap::Parser;

#[derive(Parser)]
struct Args {
    /// GiB to process per record size and operation.
    #[arg(long, default_value_t = 1)]
    gib: u64,
    /// Threads measuring at once, each on its own buffers: 2 on this
    /// 2-core machine shows what the cipher costs while the other core is
    /// busy too, as it is during ingest.
    #[arg(long, default_value_t = 1)]
    threads: usize,
}

fn thread_cpu() -> Duration {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::ThreadCPUTime);
    Duration::new(t.tv_sec as u64, t.tv_nsec as u32)
}

/// Core-seconds per GB (10^9 bytes) of running `f` over `total` bytes in
/// `len`-byte calls.
fn cost(total: u64, len: usize, mut f: impl FnMut()) -> f64 {
    let calls = total / len as u64;
    let start = thread_cpu();
    for _ in 0..calls {
        f();
    }
    let secs = (thread_cpu() - start).as_secs_f64();
    secs / (calls * len as u64) as f64 * 1e9
}

fn main() {
    let args = Args::parse();
    let total = args.gib << 30;
    println!(
        "record     seal  seal-cold open  blake3  ring-seal ring-open (core-seconds per GB, per thread, {} at once)",
        args.threads
    );
    for len in [64usize << 10, 256 << 10, 1 << 20] {
        // Each thread runs the whole row; they start together and the
        // rows are printed per thread.
        let rows: Vec<String> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..args.threads)
                .map(|_| s.spawn(move || row(total, len)))
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().expect("measuring thread"))
                .collect()
        });
        for r in rows {
            println!("{r}");
        }
    }
}

/// One line of the table: every operation on `len`-byte records.
fn row(total: u64, len: usize) -> String {
    let key = bunker_crypt::Key::generate();
    let sealer = bunker_crypt::Sealer::new(&key, bunker_crypt::Purpose::Record);
    let ad = [7u8; 48];
    {
        let data = bunker_testdata::noise(1, len);
        // In place, as the store will: the plaintext lies with room for the
        // nonce before it and the tag after it, and is opened where it was
        // read. Sealing again over the last ciphertext costs what sealing
        // plaintext does, so the loop copies nothing; opening destroys its
        // input, so it is timed as seal+open less seal.
        let mut buf = vec![0u8; len + bunker_crypt::OVERHEAD];
        buf[bunker_crypt::seal::NONCE_LEN..][..len].copy_from_slice(&data);
        let seal = cost(total, len, || sealer.seal_in_place(&ad, &mut buf));
        buf[bunker_crypt::seal::NONCE_LEN..][..len].copy_from_slice(&data);
        let both = cost(total, len, || {
            sealer.seal_in_place(&ad, &mut buf);
            let plain = sealer
                .open_in_place(&ad, &mut buf)
                .expect("opens what it sealed");
            std::hint::black_box(plain);
        });
        assert!(
            buf[bunker_crypt::seal::NONCE_LEN..][..len] == data[..],
            "open gave back other bytes"
        );
        let open = both - seal;
        // Cold: records spread over 256 MiB, far more than the caches, each
        // sealed once per pass: what a record costs when its bytes were
        // written a while ago (by zstd on another thread, say).
        let count = (256usize << 20) / len;
        let mut pool: Vec<Vec<u8>> = (0..count).map(|_| buf.clone()).collect();
        let mut next = 0;
        let seal_cold = cost(total, len, || {
            sealer.seal_in_place(&ad, &mut pool[next]);
            next = (next + 1) % count;
        });
        drop(pool);
        let hash = cost(total, len, || {
            std::hint::black_box(blake3::hash(&data));
        });
        // ring alone, one key: what the per-object key adds.
        let fixed = ring::aead::LessSafeKey::new(
            ring::aead::UnboundKey::new(&ring::aead::AES_256_GCM, &[5; 32]).expect("key"),
        );
        let nonce = || ring::aead::Nonce::assume_unique_for_key([1; 12]);
        let aad = || ring::aead::Aad::from(&ad);
        let mut plain = data.clone();
        let ring_seal = cost(total, len, || {
            let tag = fixed
                .seal_in_place_separate_tag(nonce(), aad(), &mut plain)
                .expect("seal");
            std::hint::black_box(tag.as_ref()[0]);
        });
        let mut sealed = data.clone();
        sealed.extend_from_slice(&[0; 16]);
        let ring_both = cost(total, len, || {
            let tag = fixed
                .seal_in_place_separate_tag(nonce(), aad(), &mut sealed[..len])
                .expect("seal");
            sealed[len..].copy_from_slice(tag.as_ref());
            let opened = fixed
                .open_in_place(nonce(), aad(), &mut sealed)
                .expect("open");
            std::hint::black_box(opened);
        });
        let ring_open = ring_both - ring_seal;
        format!(
            "{:>4} KiB  {seal:.3} {seal_cold:.3}     {open:.3} {hash:.3}   {ring_seal:.3}     {ring_open:.3}",
            len >> 10
        )
    }
}
