//! `bunker snapshots [NAME]` and `bunker stats`.

use crate::output::{bytes, check, time};
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
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64);
    println!(
        "{:<24} {:>8} {:<21} {:>12} {:>12}  {:<16} {:<16}",
        "NAME", "ID", "TIME (UTC)", "SIZE", "NEW BYTES", "VERIFIED", "DRILLED"
    );
    for s in &list {
        println!(
            "{:<24} {:>8} {:<21} {:>12} {:>12}  {:<16} {:<16}",
            s.name,
            s.id,
            time(s.created_unix_ms),
            bytes(s.size_bytes),
            bytes(s.new_bytes),
            check(s.last_verify.as_ref(), now),
            check(s.last_drill.as_ref(), now)
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
    println!("unique bytes       {}", bytes(s.unique_bytes));
    println!("stored bytes       {}", bytes(s.stored_bytes));
    println!("dedup ratio        {:.2}x", s.dedup_ratio);
    println!("compression ratio  {:.2}x", s.compression_ratio);
    println!("chunks             {}", s.chunks);
    println!("packs              {}", s.packs);
    Ok(())
}
