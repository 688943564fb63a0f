//! `bunker gc`: one garbage collection on the server (admin), beside any
//! backups that are running (docs/GC.md).

use crate::output::bytes;
use crate::{CmdResult, Global};

#[derive(clap::Args)]
pub struct Args {
    /// Plan and report what would be freed; change nothing.
    #[arg(long)]
    dry_run: bool,
    /// Rewrite packs whose live fraction is below this (0 to 1; default:
    /// the server's `gc_rewrite_below`, 0.5 unless configured).
    #[arg(long, value_parser = parse_fraction)]
    rewrite_below: Option<f64>,
}

fn parse_fraction(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(f) if (0.0..=1.0).contains(&f) => Ok(f),
        _ => Err(format!("{s:?}: expected a fraction from 0 to 1, like 0.5")),
    }
}

pub fn run(g: &Global, a: Args) -> CmdResult {
    let r = g.client()?.gc(&bunker_api::GcRequest {
        dry_run: a.dry_run,
        rewrite_below: a.rewrite_below,
    })?;
    if g.json {
        println!("{}", serde_json::to_string(&r)?);
        return Ok(());
    }
    let verb = if r.dry_run { "would free" } else { "freed" };
    println!(
        "{verb} {} ({} packs deleted, {} rewritten, {} copied) in {:.1} s",
        bytes(r.bytes_reclaimed),
        r.packs_deleted,
        r.packs_rewritten,
        bytes(r.bytes_rewritten),
        r.seconds
    );
    println!(
        "marked {} references from {} snapshots in {:.1} s ({} bitmap); {} packs examined, {} live",
        r.references,
        r.snapshots,
        r.mark_seconds,
        bytes(r.mark_bytes),
        r.packs_examined,
        bytes(r.live_bytes)
    );
    if r.packs_protected > 0 {
        println!(
            "{} packs left for a later GC: backups in progress depend on them",
            r.packs_protected
        );
    }
    if r.packs_unreadable > 0 {
        println!(
            "{} packs could not be read in full and were left alone: run `bunker verify`",
            r.packs_unreadable
        );
    }
    Ok(())
}

/// The rest of `bunker gc --help`, after the options; also in docs/CLI.md.
pub(crate) const LONG_HELP: &str = r##"Needs an admin token without a scope.

Garbage collection, beside running backups and restores: deletes packs no
committed snapshot (or backup in progress) needs and rewrites packs whose
live fraction is below 0.5 (or --rewrite-below). Prints the bytes freed and
the time taken; --dry-run only reports. One at a time: a second GC (or one
during a verify) gets busy (409). The server can also run it every
gc_interval_secs (config). Protocol, safety argument and crash behaviour:
docs/GC.md.

Each GC that is not a dry run also measures the data each snapshot name
alone references and writes it to the repository's space file, which bunker
stats reads (docs/GC.md, "Space accounting").

Seven days of a 256 MiB image (bunker-gen --size 256M --days 6 imgs), backed
up, pruned with --keep-last 2, then collected twice (the bitmap is the mark
state, 3 bits per index entry):

    $ bunker gc
    freed 6.47 MiB (0 packs deleted, 3 rewritten, 4.97 MiB copied) in 0.0 s
    marked 1267 references from 2 snapshots in 0.0 s (400 B bitmap); 7 packs examined, 87.69 MiB live
    $ bunker gc
    freed 0 B (0 packs deleted, 0 rewritten, 0 B copied) in 0.0 s
    marked 1267 references from 2 snapshots in 0.0 s (632 B bitmap); 5 packs examined, 87.69 MiB live"##;
