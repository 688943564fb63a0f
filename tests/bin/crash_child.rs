//! Child process for the crash and fault tests.
//!
//! `bunker-crash-child REPO SEED`: backs up deterministic snapshots one after
//! another, printing `ACK <name> <id>` after each commit returns, until it is
//! killed.
//!
//! `bunker-crash-child REPO SEED once`: one backup with the failpoints of
//! the FAILPOINTS environment variable active; prints `ACK <name> <id>` or
//! `ERR <message>`.

use std::io::Write;

use anyhow::Context;
use bunker_store::{ChunkerParams, CreateOptions, IngestOptions, Repository};
use bunker_tests::snapshot_data;

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let (repo, seed, once) = match &args[..] {
        [_, repo, seed] => (repo, seed, false),
        [_, repo, seed, mode] if mode == "once" => (repo, seed, true),
        _ => anyhow::bail!("usage: bunker-crash-child REPO SEED [once]"),
    };
    let seed: u64 = seed.parse().context("SEED must be a number")?;
    let opts = CreateOptions {
        chunker: ChunkerParams::new(16 << 10, 64 << 10, 256 << 10)?,
        zstd_level: 1,
        pack_target_len: 1 << 20,
    };
    let repo = Repository::open_or_create(repo.as_ref(), opts).context("opening the repository")?;
    let mut out = std::io::stdout().lock();
    if once {
        let scenario = fail::FailScenario::setup();
        let name = format!("f{seed}");
        let data = snapshot_data(&name);
        match repo.ingest(&name, &data[..], &IngestOptions::default(), &mut |_| {}) {
            Ok(info) => writeln!(out, "ACK {name} {}", info.id)?,
            Err(e) => writeln!(out, "ERR {e}")?,
        }
        out.flush()?;
        scenario.teardown();
        // Like a crash: no clean close (the repository's Drop would seal and
        // flush, which a real failure may not get to do).
        std::process::exit(0);
    }
    for k in 0.. {
        let name = format!("s{seed}-{k}");
        let data = snapshot_data(&name);
        let info = repo.ingest(&name, &data[..], &IngestOptions::default(), &mut |_| {})?;
        writeln!(out, "ACK {name} {}", info.id)?;
        out.flush()?;
    }
    Ok(())
}
