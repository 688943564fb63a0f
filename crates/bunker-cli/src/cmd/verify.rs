//! `bunker verify` (scrub, through the server) and `bunker repair
//! --rebuild-index` (offline, on the data directory).

use std::path::PathBuf;

use anyhow::Context;

use crate::output::bytes;
use crate::{CmdResult, Failure, Global};

#[derive(clap::Args)]
pub struct Args {
    /// Read only the chunks of this snapshot (NAME for its latest, or
    /// NAME@ID); every manifest is still checked for the damage found.
    #[arg(long, value_parser = super::parse_ref)]
    snapshot: Option<super::SnapRef>,
    /// Read this percentage of the packs (or of the snapshot's chunks),
    /// chosen at random on each run.
    #[arg(long, value_parser = parse_percent)]
    sample: Option<f64>,
}

fn parse_percent(s: &str) -> Result<f64, String> {
    match s.trim_end_matches('%').parse::<f64>() {
        Ok(p) if p > 0.0 && p <= 100.0 => Ok(p),
        _ => Err(format!(
            "{s:?}: expected a percentage above 0 and at most 100"
        )),
    }
}

pub fn verify(g: &Global, a: Args) -> CmdResult {
    let r = g.client()?.verify(&bunker_api::VerifyRequest {
        snapshot: a.snapshot.map(|s| match s.id {
            Some(id) => format!("{}@{id}", s.name),
            None => s.name,
        }),
        sample_percent: a.sample,
    })?;
    if g.json {
        println!("{}", serde_json::to_string(&r)?);
    } else {
        let scope = match (&r.snapshot, r.sample_percent < 100.0) {
            (Some(s), true) => format!(" ({}% sample of {s})", r.sample_percent),
            (Some(s), false) => format!(" (the chunks of {s})"),
            (None, true) => format!(" ({}% sample)", r.sample_percent),
            (None, false) => String::new(),
        };
        println!(
            "verified {} packs{scope}, {} chunks, {} in {:.1} s ({:.2} GB/s); {} snapshots checked",
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
        for d in &r.unreadable {
            let at = d
                .offset
                .map(|o| format!(" at offset {o}"))
                .unwrap_or_default();
            println!(
                "UNREADABLE {}{at}: {} (nothing quarantined)",
                d.file, d.reason
            );
        }
        for s in &r.damaged_snapshots {
            println!(
                "SNAPSHOT {}@{} cannot be restored bit for bit: {} bad chunk(s); {}",
                s.name, s.id, s.bad_chunks, s.reason
            );
        }
        if r.newly_quarantined > 0 {
            println!(
                "quarantined {} damaged record(s): the next backup of the same data heals the snapshots above",
                r.newly_quarantined
            );
        }
        if r.quarantined > 0 {
            println!("{} record(s) quarantined earlier", r.quarantined);
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
                "verify found {} damaged and {} unreadable item(s) affecting {} snapshot(s)",
                r.damage.len(),
                r.unreadable.len(),
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
    /// The server's data directory (the server must be stopped); default
    /// the config file's `data`, else bunker-data.
    #[arg(long)]
    data: Option<PathBuf>,
    /// The server's TOML config file: its `data`, `[storage]` and
    /// `[encryption]`.
    #[arg(long)]
    config: Option<PathBuf>,
    /// The repository's key file, plain or passphrase-wrapped, for an
    /// encrypted repository (default: the config file's `[encryption]
    /// key_file`).
    #[arg(long)]
    key_file: Option<PathBuf>,
    /// For a passphrase-wrapped --key-file: a file whose first line is
    /// the passphrase (default: the config file's `[encryption]
    /// passphrase_file`, else the environment variable
    /// BUNKER_KEY_PASSPHRASE).
    #[arg(long)]
    key_passphrase_file: Option<PathBuf>,
    #[command(flatten)]
    s3: super::settings::S3Args,
}

pub fn repair(g: &Global, a: RepairArgs) -> CmdResult {
    debug_assert!(a.rebuild_index);
    let mut config = super::settings::load(a.config.as_deref(), &a.s3)?;
    if let Some(d) = a.data {
        config.data = d;
    }
    if let Some(k) = a.key_file {
        config.encryption.key_file = Some(k);
    }
    if let Some(p) = a.key_passphrase_file {
        config.encryption.passphrase_file = Some(p);
    }
    let opts = bunker_store::OpenOptions {
        // `StartError` names its cause in its message: `Error::msg` keeps
        // `{:#}` from printing the cause a second time.
        key: bunker_server::load_key(&config).map_err(anyhow::Error::msg)?,
        ..Default::default()
    };
    let data = config.data.clone();
    let stop_first = || {
        format!(
            "rebuilding the index of {} (stop the server first: it holds the repository lock)",
            data.display()
        )
    };
    let repo = match config.storage.s3_config().map_err(anyhow::Error::msg)? {
        None => {
            bunker_store::Repository::rebuild_index_with(&data, opts.clone())
                .with_context(stop_first)?;
            (bunker_store::Repository::open_with(&data, opts)?, None)
        }
        Some(s3) => {
            // Refused while another server holds the bucket; held until
            // the repair ends.
            let (remote, lease) =
                bunker_server::hold_remote(&config, &s3).map_err(anyhow::Error::msg)?;
            bunker_store::Repository::rebuild_index_remote(&data, opts.clone(), remote.clone())
                .with_context(stop_first)?;
            let repo = bunker_store::Repository::open_remote_with(
                &data,
                opts,
                Default::default(),
                remote,
            )?;
            (repo, Some(lease))
        }
    };
    let (repo, lease) = repo;
    let (_, entries) = repo.index_digest();
    if g.json {
        println!(
            "{}",
            serde_json::json!({ "rebuilt": true, "entries": entries })
        );
    } else {
        println!(
            "rebuilt the index of {} from its packs: {entries} entries",
            data.display()
        );
    }
    // The repository first: the lease is released only once it is closed.
    repo.close()?;
    drop(lease);
    Ok(())
}

/// The rest of `bunker verify --help`, after the options; also in docs/CLI.md.
pub(crate) const LONG_HELP: &str = r##"Needs an admin token. An admin token with a scope may only verify one snapshot in its scope
(--snapshot); verifying the whole repository needs an unscoped admin.

Scrubs the repository through the server: every record of every pack is
read, decompressed and checked against its BLAKE3 id (in parallel), the
index runs are checked against their checksums, and every manifest is read
and its chunks looked up. --snapshot reads only the chunks of one snapshot
(in pack order); --sample 10 reads a random 10% of the packs (or of the
snapshot's chunks); every manifest is still checked against the damage
found. Prints each damaged item (file, offset, chunk, reason) and each
snapshot that cannot be restored bit for bit, exactly (no misses, no
extras). A damaged record is quarantined (taken out of the index): the next
backup of the same data stores the chunk again, which heals every snapshot
that needs it; later verifies count it as quarantined, not as new damage,
and list the snapshots until they are healed. Exit 0 when clean, 4 when
anything is damaged; --json prints the VerifyReport. The server records the
verify as the last one of every snapshot it covered (all of them, or the one
of --snapshot; the detail says when it was a sample): clean, or failed for
each snapshot it names (bunker snapshots, /metrics).

    $ bunker verify
    verified 3 packs, 57 chunks, 12.42 MiB in 0.0 s (0.61 GB/s); 2 snapshots checked
    DAMAGED packs/01/00/0000000000000001.pack at offset 64 chunk 5be2…: record checksum mismatch
    SNAPSHOT a@1 cannot be restored bit for bit: 1 bad chunk(s); chunk 5be2… is damaged
    bunker: verify found 1 damaged item(s) affecting 1 snapshot(s)"##;

/// The rest of `bunker repair --help`, after the options; also in docs/CLI.md.
pub(crate) const REPAIR_LONG_HELP: &str = r##"Offline: rebuilds the chunk index of the data directory from the packs alone
(the index is a cache of the packs). Opening the repository (the server's
start) already does this by itself, with a warning in the log, when it finds
the index torn, truncated or missing a file; this command is for damage only
verify finds (a bad entry inside an intact index file). Stop the server
first; a running server holds the repository lock and the repair is refused
before anything is touched. With --s3 (or a --config whose [storage] names
a bucket) the index is rebuilt from the packs in the bucket."##;
