//! `bunker verify` (scrub, through the server) and `bunker repair
//! --rebuild-index` (offline, on the data directory).

use std::path::PathBuf;

use anyhow::Context;

use crate::output::bytes;
use crate::{CmdResult, Failure, Global};

pub fn verify(g: &Global) -> CmdResult {
    let r = g.client()?.verify()?;
    if g.json {
        println!("{}", serde_json::to_string(&r)?);
    } else {
        println!(
            "verified {} packs, {} chunks, {} in {:.1} s ({:.2} GB/s); {} snapshots checked",
            r.packs,
            r.chunks,
            bytes(r.stored_bytes),
            r.seconds,
            crate::output::rate(r.stored_bytes, r.seconds),
            r.snapshots
        );
        for d in &r.damage {
            let at = d
                .offset
                .map(|o| format!(" at offset {o}"))
                .unwrap_or_default();
            let chunk = d
                .chunk
                .as_deref()
                .map(|c| format!(" chunk {c}"))
                .unwrap_or_default();
            println!("DAMAGED {}{at}{chunk}: {}", d.file, d.reason);
        }
        for s in &r.damaged_snapshots {
            println!(
                "SNAPSHOT {}@{} cannot be restored bit for bit: {} bad chunk(s); {}",
                s.name, s.id, s.bad_chunks, s.reason
            );
        }
        if r.clean {
            println!("clean");
        }
    }
    if r.clean {
        Ok(())
    } else {
        Err(Failure::with_code(
            4,
            anyhow::anyhow!(
                "verify found {} damaged item(s) affecting {} snapshot(s)",
                r.damage.len(),
                r.damaged_snapshots.len()
            ),
        ))
    }
}

#[derive(clap::Args)]
pub struct RepairArgs {
    /// Rebuild the chunk index from the packs alone.
    #[arg(long, required = true)]
    rebuild_index: bool,
    /// The server's data directory (the server must be stopped).
    #[arg(long, default_value = "bunker-data")]
    data: PathBuf,
}

pub fn repair(g: &Global, a: RepairArgs) -> CmdResult {
    debug_assert!(a.rebuild_index);
    bunker_store::Repository::rebuild_index(&a.data).with_context(|| {
        format!(
            "rebuilding the index of {} (stop the server first: it holds the repository lock)",
            a.data.display()
        )
    })?;
    let repo = bunker_store::Repository::open(&a.data)?;
    let (_, entries) = repo.index_digest();
    if g.json {
        println!(
            "{}",
            serde_json::json!({ "rebuilt": true, "entries": entries })
        );
    } else {
        println!(
            "rebuilt the index of {} from its packs: {entries} entries",
            a.data.display()
        );
    }
    Ok(())
}
