//! Child process for the crash and fault tests.
//!
//! `bunker-crash-child REPO SEED`: backs up deterministic snapshots one after
//! another, printing `ACK <name> <id>` after each commit returns, until it is
//! killed.
//!
//! `bunker-crash-child REPO SEED once`: one backup with the failpoints of
//! the FAILPOINTS environment variable active; prints `ACK <name> <id>` or
//! `ERR <message>`.
//!
//! `bunker-crash-child REPO SEED gc`: the backup loop, deleting all but the
//! newest two of its snapshots (`DEL <name> <id>` before each delete), with
//! GC running in a loop on a second thread (`GC start` / `GC end`).

use std::io::Write;

use anyhow::Context;
use bunker_store::{ChunkerParams, CreateOptions, GcOptions, IngestOptions, Repository};
use bunker_tests::snapshot_data;

fn open(path: &str) -> anyhow::Result<Repository> {
    let opts = CreateOptions {
        chunker: ChunkerParams::new(16 << 10, 64 << 10, 256 << 10)?,
        zstd_level: 1,
        pack_target_len: 1 << 20,
    };
    Repository::open_or_create(path.as_ref(), opts).context("opening the repository")
}

fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

fn gc_loop(path: &str, seed: &str) -> anyhow::Result<()> {
    let repo = open(path)?;
    let gc_repo = repo.clone();
    std::thread::spawn(move || loop {
        say("GC start");
        match gc_repo.gc(&GcOptions::default()) {
            Ok(_) => say("GC end"),
            Err(e) => say(&format!("GC ERR {e}")),
        }
    });
    for k in 0.. {
        let name = format!("g{seed}-{k}");
        let data = snapshot_data(&name);
        let info = repo.ingest(&name, &data[..], &IngestOptions::default(), &mut |_| {})?;
        say(&format!("ACK {name} {}", info.id));
        if k >= 2 {
            let old = format!("g{seed}-{}", k - 2);
            for s in repo.list(Some(&old))? {
                say(&format!("DEL {old} {}", s.id));
                repo.delete(&old, s.id)?;
            }
        }
    }
    Ok(())
}

/// One GC (rewriting packs under 90% live) with the FAILPOINTS active;
/// prints `GC OK` or `GC ERR <message>`, then exits without a clean close.
fn gc_once(path: &str) -> anyhow::Result<()> {
    let repo = open(path)?;
    let scenario = fail::FailScenario::setup();
    match repo.gc(&GcOptions {
        rewrite_below: 0.9,
        dry_run: false,
    }) {
        Ok(_) => say("GC OK"),
        Err(e) => say(&format!("GC ERR {e}")),
    }
    scenario.teardown();
    std::process::exit(0);
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let (repo, seed, once) = match &args[..] {
        [_, repo, seed] => (repo, seed, false),
        [_, repo, seed, mode] if mode == "once" => (repo, seed, true),
        [_, repo, seed, mode] if mode == "gc" => return gc_loop(repo, seed),
        [_, repo, _, mode] if mode == "gc-once" => return gc_once(repo),
        _ => anyhow::bail!("usage: bunker-crash-child REPO SEED [once|gc]"),
    };
    let seed: u64 = seed.parse().context("SEED must be a number")?;
    let repo = open(repo)?;
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
