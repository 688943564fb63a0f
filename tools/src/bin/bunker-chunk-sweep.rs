//! Chooses the chunk size by measurement: backs up the same SAN-like day-0
//! image and next days into one repository per average chunk size and
//! prints, per size, what each next day stored, the total, and the index
//! size.
//!
//! `cargo run --release -p bunker-tools --bin bunker-chunk-sweep -- --size 1G --days 3`

use std::time::Instant;

use anyhow::Context;
use bunker_store::{ChunkerParams, CreateOptions, IngestOptions, Repository};
use bunker_testdata::image::{parse_size, Image, ImageSpec};
use clap::Parser;

#[derive(Parser)]
struct Args {
    /// Day-0 image size.
    #[arg(long, default_value = "1G", value_parser = parse_size)]
    size: u64,
    /// Next days after day 0.
    #[arg(long, default_value_t = 3)]
    days: u32,
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Average chunk sizes to try.
    #[arg(long, value_delimiter = ',', default_value = "256k,512k,1M,2M", value_parser = parse_size)]
    avg: Vec<u64>,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let spec = ImageSpec::new(args.seed, args.size);
    println!("| avg chunk | chunks day 0 | day 1..{} stored / logical | stored total | reduction | index entries | index bytes | index bytes per GiB stored | ingest GB/s | ingest CPU s per GB | restore GB/s |", args.days);
    println!("|---|---|---|---|---|---|---|---|---|---|---|");
    for &avg in &args.avg {
        let dir = tempfile::tempdir()?;
        let opts = CreateOptions {
            chunker: ChunkerParams::with_avg(u32::try_from(avg)?).context("chunk size")?,
            ..CreateOptions::default()
        };
        let repo = Repository::create(dir.path(), opts)?;
        let mut day0_chunks = 0;
        let (mut later_new, mut later_logical) = (0u64, 0u64);
        let started = Instant::now();
        let cpu_before = cpu_seconds()?;
        let mut logical = 0;
        for day in 0..=args.days {
            let image = Image::new(&spec, day);
            let info = repo.ingest(
                "vol",
                image.reader(),
                &IngestOptions::default(),
                &mut |_| {},
            )?;
            logical += info.size;
            if day == 0 {
                day0_chunks = info.chunks;
            } else {
                later_new += info.new_bytes;
                later_logical += info.size;
            }
        }
        let secs = started.elapsed().as_secs_f64();
        let cpu = cpu_seconds()? - cpu_before;
        repo.close()?;
        let stats = repo.stats()?;
        // The last day read back whole, verified, into nothing.
        let t = Instant::now();
        let restored = std::io::copy(&mut repo.reader("vol", None, None)?, &mut std::io::sink())?;
        let restore = restored as f64 / t.elapsed().as_secs_f64() / 1e9;
        let index_bytes = dir_bytes(&dir.path().join("index"))?;
        println!(
            "| {} KiB | {} | {:.2}% | {} MiB | {:.2}x | {} | {} KiB | {} KiB | {:.2} | {:.2} | {:.2} |",
            avg >> 10,
            day0_chunks,
            100.0 * later_new as f64 / later_logical.max(1) as f64,
            stats.stored_bytes >> 20,
            stats.reduction_ratio(),
            stats.chunks,
            index_bytes >> 10,
            (index_bytes as f64 / (stats.stored_bytes as f64 / (1u64 << 30) as f64)) as u64 >> 10,
            logical as f64 / secs / 1e9,
            cpu / (logical as f64 / 1e9),
            restore,
        );
    }
    Ok(())
}

/// User plus system CPU time of this process so far (/proc/self/stat, at
/// the usual 100 ticks per second).
fn cpu_seconds() -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat")?;
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .context("/proc/self/stat")?
        .1
        .split_whitespace()
        .collect();
    let ticks: u64 = fields[11].parse::<u64>()? + fields[12].parse::<u64>()?;
    Ok(ticks as f64 / 100.0)
}

fn dir_bytes(dir: &std::path::Path) -> anyhow::Result<u64> {
    let mut total = 0;
    for e in std::fs::read_dir(dir)? {
        total += e?.metadata()?.len();
    }
    Ok(total)
}
