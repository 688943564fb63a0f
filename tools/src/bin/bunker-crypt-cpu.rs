//! CPU cost of encryption at rest, in core-seconds per GB: seals and opens
//! records of 64 KiB to 1 MiB through `bunker-crypt` on one thread and reads
//! that thread's CPU clock, so the figure holds on a loaded machine where
//! wall-clock throughput (benches/crypt.rs) does not. BLAKE3 over the same
//! bytes is the yardstick: ingest already pays it for every chunk.
//!
//! `cargo run --release -p bunker-tools --bin bunker-crypt-cpu -- --gib 2`

use std::time::Duration;

use clap::Parser;

#[derive(Parser)]
struct Args {
    /// GiB to process per record size and operation.
    #[arg(long, default_value_t = 1)]
    gib: u64,
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
    let key = bunker_crypt::Key::generate();
    let sealer = bunker_crypt::Sealer::new(&key, bunker_crypt::Purpose::Record);
    let ad = [7u8; 48];
    println!("record     seal  open  blake3   (core-seconds per GB, one thread)");
    for len in [64usize << 10, 256 << 10, 1 << 20] {
        let data = bunker_testdata::noise(1, len);
        let mut sealed = Vec::with_capacity(len + bunker_crypt::OVERHEAD);
        let seal = cost(total, len, || {
            sealed.clear();
            sealer.seal_into(&ad, &data, &mut sealed);
        });
        let mut opened = Vec::with_capacity(len);
        let open = cost(total, len, || {
            opened.clear();
            sealer
                .open_into(&ad, &sealed, &mut opened)
                .expect("opens what it sealed");
        });
        assert_eq!(opened, data);
        let hash = cost(total, len, || {
            std::hint::black_box(blake3::hash(&data));
        });
        println!("{:>4} KiB  {seal:.3} {open:.3} {hash:.3}", len >> 10);
    }
}
