//! Scale benchmark of the chunk index: fills an index with synthetic
//! entries, then measures bytes per entry on disk, insert rate, lookups per
//! second (hot set, whole index with the page cache dropped, and misses)
//! and the process's peak resident memory.
//!
//! `cargo run --release -p bunker-tools --bin bunker-index-bench -- --entries 50M`
//!
//! With `--reingest SIZE`, the index is a real repository's instead, and
//! what is measured is ingest: a SAN-like image of SIZE (day 0, then the
//! next day) is backed up twice under two names, and the next day is backed
//! up again (every chunk known) with the index files dropped from the page
//! cache first, through the index alone and then through the dedup window;
//! the same in a small repository without the synthetic entries, warm.

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
    /// Measure the re-ingest of a SAN-like image of this size against a
    /// repository holding `--entries` synthetic entries (see above).
    #[arg(long, value_parser = parse_size)]
    reingest: Option<u64>,
    /// With `--reingest` and `--dir`: measure again on the repositories an
    /// earlier run left there (no fill, no setup backups).
    #[arg(long)]
    reuse: bool,
    /// Average chunk size of the repositories `--reingest` creates.
    #[arg(long, default_value = "256k", value_parser = parse_size)]
    chunk_size: u64,
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

/// Adds `entries` synthetic entries (packs from 1 up) and flushes.
fn fill(index: &Index, entries: u64) -> anyhow::Result<()> {
    let mut n = 0;
    while n < entries {
        let end = (n + BATCH).min(entries);
        index.add_sealed(
            PackId(1 + n / BATCH),
            (n..end).map(|i| (id(i), loc(i))).collect(),
        );
        if index.needs_flush() {
            index.flush()?;
        }
        n = end;
    }
    index.flush()?;
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if let Some(size) = args.reingest {
        return reingest(&args, size);
    }
    let tmp = tempfile::tempdir()?;
    let dir = args.dir.clone().unwrap_or_else(|| tmp.path().join("index"));
    let index = Index::open(&dir, args.flush_at as usize).context("opening index")?;
    let started = Instant::now();
    fill(&index, args.entries)?;
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

/// `--reingest`: day 1 backed up again through the index and through the
/// dedup window, in a repository of `--entries` synthetic entries with its
/// index dropped from the page cache, and in a small warm one.
fn reingest(args: &Args, size: u64) -> anyhow::Result<()> {
    use bunker_store::{ChunkerParams, CreateOptions, IngestOptions, OpenOptions, Repository};
    use bunker_testdata::image::{Image, ImageSpec};
    let tmp = tempfile::tempdir()?;
    let base = args.dir.clone().unwrap_or_else(|| tmp.path().to_path_buf());
    let render = |day| -> anyhow::Result<Vec<u8>> {
        let mut out = Vec::with_capacity(size as usize + (64 << 20));
        Image::new(&ImageSpec::new(1, size), day).write_to(&mut out)?;
        Ok(out)
    };
    let days = [render(0)?, render(1)?];
    let chunker = ChunkerParams::with_avg(u32::try_from(args.chunk_size)?)?;
    for (label, entries) in [("large", args.entries), ("small", 0)] {
        let root = base.join(format!("repo-{label}"));
        let create = CreateOptions {
            chunker,
            ..CreateOptions::default()
        };
        let reuse = args.reuse && root.join("config").exists();
        if !reuse {
            drop(Repository::create(&root, create).context("creating the repository")?);
        }
        if entries > 0 && !reuse {
            let t = Instant::now();
            let index = Index::open(&root.join("index"), args.flush_at as usize)?;
            fill(&index, entries)?;
            drop(index);
            println!(
                "{label}: {entries} synthetic entries in {:.0} s, index {} MiB on disk",
                t.elapsed().as_secs_f64(),
                dir_bytes(&root.join("index"))? >> 20
            );
        }
        let open = |window: bool| {
            Repository::open_with(
                &root,
                OpenOptions {
                    dedup_window: window,
                    ..OpenOptions::default()
                },
            )
            .context("opening the repository")
        };
        if !reuse {
            let repo = open(true)?;
            for name in ["by-index", "by-window"] {
                for day in &days {
                    repo.ingest(name, &day[..], &IngestOptions::default(), &mut |_| {})?;
                }
            }
        }
        for (name, window) in [("by-index", false), ("by-window", true)] {
            // Cold only for the large repository: the small one is the
            // warm reference.
            if entries > 0 {
                drop_page_cache(&root.join("index"))?;
            }
            let repo = open(window)?;
            let mut hits = 0;
            let t = Instant::now();
            let info = repo.ingest(name, &days[1][..], &IngestOptions::default(), &mut |p| {
                hits = p.window_hits
            })?;
            let secs = t.elapsed().as_secs_f64();
            println!(
                "{label:5} {name:9} {:.3} GB/s ({:.2} s for {} MB, {} chunks, {} new, {hits} window hits)",
                info.size as f64 / secs / 1e9,
                secs,
                info.size / 1_000_000,
                info.chunks,
                info.new_chunks
            );
        }
        if args.dir.is_none() {
            std::fs::remove_dir_all(&root)?;
        }
    }
    Ok(())
}
