//! Scale benchmark of the chunk index: fills an index with synthetic
//! entries, then measures bytes per entry on disk, insert rate, lookups per
//! second (hot set, whole index with the page cache dropped, and misses)
//! and the process's peak resident memory.
//!
//! `cargo run --release -p bunker-tools --bin bunker-index-bench -- --entries 50M`

use std::time::Instant;

use anyhow::Context;
use bunker_store::index::Index;
use bunker_store::{ChunkId, Location, PackId};
use bunker_testdata::image::parse_size;
use bunker_tools::rss;
use clap::Parser;

#[derive(Parser)]
struct Args {
    /// Entries to insert (suffixes k, M, G count in powers of 1024).
    #[arg(long, default_value = "50M", value_parser = parse_size)]
    entries: u64,
    /// Entries held in memory between flushes.
    #[arg(long, default_value = "256k", value_parser = parse_size)]
    flush_at: u64,
    /// Lookups per measurement.
    #[arg(long, default_value = "2M", value_parser = parse_size)]
    lookups: u64,
    /// Directory for the index (default: a temporary directory).
    #[arg(long)]
    dir: Option<std::path::PathBuf>,
}

/// The n-th synthetic chunk id (uniform, like BLAKE3 output).
fn id(n: u64) -> ChunkId {
    let seed = n.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0x5EED;
    let mut out = [0u8; 32];
    bunker_testdata::fill_noise(seed, &mut out);
    ChunkId(out)
}

/// Entries per synthetic pack.
const BATCH: u64 = 4096;

fn loc(n: u64) -> Location {
    Location {
        pack: PackId(n / BATCH),
        offset: (n % BATCH) * 700_064,
        raw_len: 1 << 20,
        stored_len: 700_000,
    }
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let tmp = tempfile::tempdir()?;
    let dir = args.dir.clone().unwrap_or_else(|| tmp.path().join("index"));
    let index = Index::open(&dir, args.flush_at as usize).context("opening index")?;
    let started = Instant::now();
    let batch = BATCH;
    let mut n = 0;
    while n < args.entries {
        let end = (n + batch).min(args.entries);
        index.add_sealed(
            PackId(n / batch),
            (n..end).map(|i| (id(i), loc(i))).collect(),
        );
        if index.needs_flush() {
            index.flush()?;
        }
        n = end;
    }
    index.flush()?;
    let insert_s = started.elapsed().as_secs_f64();
    let disk = dir_bytes(&dir)?;
    let (peak, now) = rss::peak_and_current();
    let (anon, file) = rss::anon_and_file();
    println!(
        "after insert       peak RSS {} MiB, RSS {} MiB (heap {} MiB, mapped files {} MiB)",
        peak >> 20,
        now >> 20,
        anon >> 20,
        file >> 20
    );
    println!("entries            {}", args.entries);
    println!(
        "insert             {:.0} entries/s ({insert_s:.1} s, flushes every {} entries)",
        args.entries as f64 / insert_s,
        args.flush_at
    );
    println!(
        "disk               {} bytes, {:.1} bytes/entry",
        disk,
        disk as f64 / args.entries as f64
    );
    let hot: Vec<ChunkId> = (0..1_000).map(|i| id(i * 7919 % args.entries)).collect();
    let t = Instant::now();
    for i in 0..args.lookups {
        let k = &hot[(i % hot.len() as u64) as usize];
        anyhow::ensure!(index.lookup(k).is_some(), "hot lookup missed");
    }
    println!(
        "lookup hot         {:.2} M/s (1 000 ids looked up repeatedly, single thread)",
        args.lookups as f64 / t.elapsed().as_secs_f64() / 1e6
    );
    if std::env::var_os("BUNKER_DEBUG_RSS").is_some() {
        let (anon, file) = rss::anon_and_file();
        eprintln!(
            "after hot: heap {} MiB, file {} MiB; statm {}",
            anon >> 20,
            file >> 20,
            std::fs::read_to_string("/proc/self/statm")?
        );
        eprintln!("{}", std::fs::read_to_string("/proc/self/smaps_rollup")?);
    }
    drop_page_cache(&dir)?;
    let t = Instant::now();
    let mut x = 0x1234_5678u64;
    for _ in 0..args.lookups {
        x = x
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let k = id((x >> 11) % args.entries);
        anyhow::ensure!(index.lookup(&k).is_some(), "cold lookup missed");
    }
    println!(
        "lookup cold        {:.2} M/s (random ids over the whole index, page cache dropped first)",
        args.lookups as f64 / t.elapsed().as_secs_f64() / 1e6
    );
    let t = Instant::now();
    for i in 0..args.lookups {
        anyhow::ensure!(index.lookup(&id(args.entries + i)).is_none(), "false hit");
    }
    println!(
        "lookup miss        {:.2} M/s (absent ids)",
        args.lookups as f64 / t.elapsed().as_secs_f64() / 1e6
    );
    let (peak, now) = rss::peak_and_current();
    let (anon, file) = rss::anon_and_file();
    println!("(mapped index pages are dropped from the resident set past 256 MiB of file-backed RSS; the page cache keeps them)");
    println!("peak RSS           {} MiB (index is {} MiB on disk); RSS now {} MiB (heap {} MiB, mapped files {} MiB)", peak >> 20, disk >> 20, now >> 20, anon >> 20, file >> 20);
    Ok(())
}

fn dir_bytes(dir: &std::path::Path) -> anyhow::Result<u64> {
    let mut total = 0;
    for e in std::fs::read_dir(dir)? {
        total += e?.metadata()?.len();
    }
    Ok(total)
}

/// Asks the kernel to drop the index files from the page cache, so the
/// following lookups read from disk.
fn drop_page_cache(dir: &std::path::Path) -> anyhow::Result<()> {
    for e in std::fs::read_dir(dir)? {
        let f = std::fs::File::open(e?.path())?;
        rustix::fs::fadvise(&f, 0, None, rustix::fs::Advice::DontNeed)?;
    }
    Ok(())
}
