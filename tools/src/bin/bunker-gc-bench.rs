//! GC and verify at scale: backs up `--volumes` SAN-like images for
//! `--days` days each (day N changes ~2% of day N-1), prunes every volume
//! to its newest `--keep-last` snapshots, then times one GC (and a second,
//! which must find nothing), and a full verify. Prints a markdown table.
//!
//! `cargo run --release -p bunker-tools --bin bunker-gc-bench -- --volumes 4 --days 25 --size 200M`
//! (100 snapshots, ~20 GiB logical).

use std::time::Instant;

use anyhow::Context;
use bunker_store::{CreateOptions, GcOptions, IngestOptions, Repository};
use bunker_testdata::image::{parse_size, Image, ImageSpec};
use bunker_tools::rss;
use clap::Parser;

#[derive(Parser)]
struct Args {
    #[arg(long, default_value_t = 4)]
    volumes: u64,
    #[arg(long, default_value_t = 25)]
    days: u32,
    /// Day-0 size of each volume (suffixes k, M, G).
    #[arg(long, default_value = "200M", value_parser = parse_size)]
    size: u64,
    #[arg(long, default_value_t = 5)]
    keep_last: usize,
    /// Repository directory (default: a temporary directory).
    #[arg(long)]
    dir: Option<std::path::PathBuf>,
}

fn gib(b: u64) -> f64 {
    b as f64 / (1u64 << 30) as f64
}

fn mib(b: u64) -> f64 {
    b as f64 / (1u64 << 20) as f64
}

/// Resets this process's peak RSS (VmHWM) to its current RSS.
fn reset_peak() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

fn main() -> anyhow::Result<()> {
    let a = Args::parse();
    let tmp = tempfile::tempdir()?;
    let dir = a.dir.clone().unwrap_or_else(|| tmp.path().join("repo"));
    let repo = Repository::create(&dir, CreateOptions::default()).context("creating")?;
    let started = Instant::now();
    for day in 0..a.days {
        for v in 0..a.volumes {
            let img = Image::new(&ImageSpec::new(1000 + v, a.size), day);
            repo.ingest(
                &format!("vol{v}"),
                img.reader(),
                &IngestOptions::default(),
                &mut |_| {},
            )?;
        }
    }
    let ingest_s = started.elapsed().as_secs_f64();
    let before = repo.stats()?;
    for v in 0..a.volumes {
        let name = format!("vol{v}");
        let list = repo.list(Some(&name))?;
        for s in &list[..list.len().saturating_sub(a.keep_last)] {
            repo.delete(&name, s.id)?;
        }
    }
    repo.release_memory();
    reset_peak();
    let rss_before = rss::peak_and_current().1;
    let t = Instant::now();
    let gc = repo.gc(&GcOptions::default())?;
    let gc_s = t.elapsed().as_secs_f64();
    let (gc_peak, _) = rss::peak_and_current();
    let again = repo.gc(&GcOptions::default())?;
    let t = Instant::now();
    let after = repo.stats()?;
    let stats_ms = t.elapsed().as_secs_f64() * 1000.0;
    let per_name: Vec<String> = after
        .names
        .iter()
        .map(|n| format!("{} {:.0} MiB", n.name, mib(n.unique.stored_bytes)))
        .collect();
    repo.release_memory();
    let t = Instant::now();
    let v = repo.verify()?;
    let verify_s = t.elapsed().as_secs_f64();
    anyhow::ensure!(v.is_clean(), "verify found damage: {v:?}");
    anyhow::ensure!(
        again.packs_deleted + again.packs_rewritten == 0,
        "a second GC still found work: {again:?}"
    );

    println!(
        "| measurement | value |\n|---|---|\n\
         | snapshots written / kept | {} / {} |\n\
         | logical bytes written | {:.1} GiB in {ingest_s:.0} s ({:.2} GB/s) |\n\
         | stored before GC / after | {:.0} MiB / {:.0} MiB |\n\
         | GC: time (mark / sweep) | {gc_s:.2} s ({:.2} / {:.2} s) |\n\
         | GC: references marked, packs examined | {} , {} |\n\
         | GC: packs deleted / rewritten, bytes reclaimed | {} / {}, {:.0} MiB |\n\
         | GC: mark bitmap, RSS before, peak RSS during | {} B, {:.0} MiB, {:.0} MiB |\n\
         | second GC: packs deleted + rewritten | {} |\n\
         | verify: stored bytes read, time, rate | {:.0} MiB, {verify_s:.2} s, {:.2} GB/s |\n\
         | verify: raw bytes checked per second | {:.2} GB/s |\n\
         | stats after GC (no scan): time; unique stored per name | {stats_ms:.1} ms; {} |",
        before.snapshots,
        after.snapshots,
        gib(before.logical_bytes),
        before.logical_bytes as f64 / ingest_s / 1e9,
        mib(before.stored_bytes),
        mib(after.stored_bytes),
        gc.mark_ms as f64 / 1000.0,
        gc.sweep_ms as f64 / 1000.0,
        gc.references,
        gc.packs_examined,
        gc.packs_deleted,
        gc.packs_rewritten,
        mib(gc.bytes_reclaimed()),
        gc.mark_bytes,
        mib(rss_before),
        mib(gc_peak),
        again.packs_deleted + again.packs_rewritten,
        mib(v.stored_bytes),
        v.stored_bytes as f64 / verify_s / 1e9,
        after.unique_bytes as f64 / verify_s / 1e9,
        per_name.join(", "),
    );
    Ok(())
}
