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
