//! `bunker demo`: the whole job end to end on a temporary embedded server:
//! generate a SAN-like image and its next day, back both up (client-side
//! dedup), restore the latest to a file and drill it, print the figures.

use std::time::Instant;

use anyhow::Context;
use bunker_client::{BackupOptions, Client, Target};
use bunker_testdata::image::{parse_size, Image, ImageSpec};

use crate::output::{bar, bytes, rate};
use crate::CmdResult;

#[derive(clap::Args)]
pub struct Args {
    /// Size of the day-0 image (e.g. 64M, 1G).
    #[arg(long, default_value = "1G", value_parser = parse_size)]
    size: u64,
    /// Seed of the image generator.
    #[arg(long, default_value_t = 1)]
    seed: u64,
}

pub fn run(args: Args) -> CmdResult {
    let dir = tempfile::tempdir().context("creating a temporary directory")?;
    let config = bunker_server::Config {
        data: dir.path().join("data"),
        listen: "127.0.0.1:0".parse().context("loopback address")?,
        ..Default::default()
    };
    let server = bunker_server::spawn(config).map_err(anyhow::Error::msg)?;
    let client = Client::new(&server.url, server.admin_token.clone());
    println!(
        "bunker demo: embedded server at {} (data in a temporary directory)",
        server.url
    );
    let spec = ImageSpec::new(args.seed, args.size);
    let mut rows: Vec<(String, u64, f64, String)> = Vec::new();
    for day in 0..2u32 {
        let image = Image::new(&spec, day);
        let pb = bar(Some(image.len()), &format!("backup day {day}"));
        let opts = BackupOptions {
            source: format!("generated SAN image, seed {}, day {day}", args.seed),
            size_hint: Some(image.len()),
        };
        let r = client.backup("demo-volume", image.reader(), &opts, &mut |p| {
            pb.set_position(p.bytes_read)
        });
        pb.finish_and_clear();
        let r = r?;
        let what = if day == 0 {
            "backup day 0 (new volume)"
        } else {
            "backup day 1 (changed day)"
        };
        rows.push((
            what.into(),
            r.snapshot.size_bytes,
            r.seconds,
            format!(
                "{} stored, {} sent",
                bytes(r.snapshot.new_bytes),
                bytes(r.progress.bytes_uploaded)
            ),
        ));
    }
    let target = dir.path().join("restore.img");
    let started = Instant::now();
    let r = client.restore(
        "demo-volume",
        None,
        Target::File {
            path: target.clone(),
            force: false,
        },
        &mut |_| {},
    )?;
    rows.push((
        "restore latest to a file (verified)".into(),
        r.bytes,
        started.elapsed().as_secs_f64(),
        format!(
            "{} chunks verified, {} holes",
            r.chunks_verified,
            bytes(r.zero_bytes)
        ),
    ));
    let d = client.restore("demo-volume", None, Target::Null, &mut |_| {})?;
    rows.push((
        "drill: restore to nowhere (verified)".into(),
        d.bytes,
        d.seconds,
        format!("{} chunks verified", d.chunks_verified),
    ));
    let stats = client.stats()?;
    println!();
    println!("| step | bytes | seconds | GB/s | notes |");
    println!("|---|---|---|---|---|");
    for (what, n, secs, note) in &rows {
        println!(
            "| {what} | {} | {secs:.2} | {:.2} | {note} |",
            bytes(*n),
            rate(*n, *secs)
        );
    }
    println!();
    println!("logical bytes backed up  {}", bytes(stats.logical_bytes));
    println!("stored bytes (packs)     {}", bytes(stats.stored_bytes));
    println!(
        "dedup ratio              {:.2}x, compression {:.2}x, together {:.2}x",
        stats.dedup_ratio,
        stats.compression_ratio,
        stats.logical_bytes as f64 / stats.stored_bytes.max(1) as f64
    );
    println!(
        "verification             OK: every chunk BLAKE3-checked, whole-image BLAKE3 {} matches",
        &r.snapshot.blake3[..16]
    );
    drop(server);
    Ok(())
}

/// The rest of `bunker demo --help`, after the options; also in docs/CLI.md.
pub(crate) const LONG_HELP: &str = r##"Starts a server on 127.0.0.1:0 with its data in a temporary directory,
generates a SAN-like image (--size, default 1G; seed default 1) and its next
day, backs both up as demo-volume, restores the latest to a file, drills it,
prints a table and the dedup and compression ratios, and deletes everything."##;
