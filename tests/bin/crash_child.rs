//! Child process for the crash tests: backs up deterministic snapshots into
//! a repository, one after another, printing `ACK <name> <id>` after each
//! commit returns, until it is killed.
//!
//! Usage: bunker-crash-child REPO SEED

use std::io::Write;

use anyhow::Context;
use bunker_store::{ChunkerParams, CreateOptions, IngestOptions, Repository};
use bunker_tests::snapshot_data;

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let [_, repo, seed] = &args[..] else {
        anyhow::bail!("usage: bunker-crash-child REPO SEED");
    };
    let seed: u64 = seed.parse().context("SEED must be a number")?;
    let opts = CreateOptions {
        chunker: ChunkerParams::new(16 << 10, 64 << 10, 256 << 10)?,
        zstd_level: 1,
        pack_target_len: 1 << 20,
    };
    let repo = Repository::open_or_create(repo.as_ref(), opts).context("opening the repository")?;
    let mut out = std::io::stdout().lock();
    for k in 0.. {
        let name = format!("s{seed}-{k}");
        let data = snapshot_data(&name);
        let info = repo.ingest(&name, &data[..], &IngestOptions::default(), &mut |_| {})?;
        writeln!(out, "ACK {name} {}", info.id)?;
        out.flush()?;
    }
    Ok(())
}
