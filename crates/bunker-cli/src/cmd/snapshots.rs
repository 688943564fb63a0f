//! `bunker snapshots [NAME]` and `bunker stats`.

use crate::output::{bytes, check, drill_check, time};
use crate::{CmdResult, Global};

#[derive(clap::Args)]
pub struct Args {
    /// Only this name.
    name: Option<String>,
}

pub fn run(g: &Global, args: Args) -> CmdResult {
    let list = g.client()?.list(args.name.as_deref())?;
    if g.json {
        println!(
            "{}",
            serde_json::to_string(&bunker_api::SnapshotList { snapshots: list })?
        );
        return Ok(());
    }
    let now = bunker_store::clock::now_unix_ms();
    println!(
        "{:<24} {:>8} {:<21} {:>12} {:>12}  {:<16} DRILLED",
        "NAME", "ID", "TIME (UTC)", "SIZE", "NEW BYTES", "VERIFIED"
    );
    for s in &list {
        println!(
            "{:<24} {:>8} {:<21} {:>12} {:>12}  {:<16} {}",
            s.name,
            s.id,
            time(s.created_unix_ms),
            bytes(s.size_bytes),
            bytes(s.new_bytes),
            check(s.last_verify.as_ref(), now),
            drill_check(s.last_drill.as_ref(), now)
        );
    }
    Ok(())
}

pub fn stats(g: &Global) -> CmdResult {
    let s = g.client()?.stats()?;
    if g.json {
        println!("{}", serde_json::to_string(&s)?);
        return Ok(());
    }
    println!("snapshots          {}", s.snapshots);
    println!("logical bytes      {}", bytes(s.logical_bytes));
    println!("unique bytes       {} (after dedup)", bytes(s.unique_bytes));
    println!(
        "referenced stored  {} (after compression)",
        bytes(s.referenced_stored_bytes)
    );
    println!(
        "pack files         {} in {} packs",
        bytes(s.stored_bytes),
        s.packs
    );
    println!("dedup ratio        {:.2}x", s.dedup_ratio);
    println!("compression ratio  {:.2}x", s.compression_ratio);
    println!("chunks             {}", s.chunks);
    match s.accounted_unix_ms {
        Some(at) => println!("accounted by GC    {} (+ backups since)", time(at)),
        None => println!("accounted by GC    never (figures from backup headers)"),
    }
    if !s.names.is_empty() {
        println!();
        println!(
            "{:<24} {:>9} {:>12} {:>14} {:>14}",
            "NAME", "SNAPSHOTS", "LOGICAL", "UNIQUE", "FREES (STORED)"
        );
        for n in &s.names {
            let pending = if n.deleted_since_gc > 0 {
                format!("  ({} deleted, awaiting GC)", n.deleted_since_gc)
            } else {
                String::new()
            };
            println!(
                "{:<24} {:>9} {:>12} {:>14} {:>14}{pending}",
                n.name,
                n.snapshots,
                bytes(n.logical_bytes),
                bytes(n.unique_bytes),
                bytes(n.unique_stored_bytes)
            );
        }
    }
    Ok(())
}
