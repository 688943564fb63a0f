//! `bunker sync --from URL --from-token-file F [NAME-or-PREFIX...]`: copies
//! snapshots from another server to this one (`--server`/`--to`), sending
//! only the chunks it lacks. The work is `bunker_sync::sync`.

use std::path::PathBuf;

use bunker_sync::{Filter, HttpTarget, SyncError, SyncOptions};

use crate::output::{bar, bytes, rate, time};
use crate::{CmdResult, Failure, Global};

#[derive(clap::Args)]
pub struct Args {
    /// The source server's URL (a reader token is enough there).
    #[arg(long, value_name = "URL")]
    from: String,
    /// File holding the source server's token.
    #[arg(long, value_name = "FILE")]
    from_token_file: PathBuf,
    /// The target server's URL (default: --server, BUNKER_SERVER).
    #[arg(long, value_name = "URL")]
    to: Option<String>,
    /// File holding the target server's token, a writer's is enough
    /// (default: --token-file, --token, BUNKER_TOKEN).
    #[arg(long, value_name = "FILE")]
    to_token_file: Option<PathBuf>,
    /// Chunks copied at once.
    #[arg(long, default_value_t = SyncOptions::default().parallel, value_name = "N")]
    parallel: usize,
    /// Names to copy, each a name or a prefix of names (default: every
    /// name the source token may read).
    names: Vec<String>,
}

pub fn run(g: &Global, args: Args) -> CmdResult {
    let mut from = g.clone();
    from.server = args.from.clone();
    from.token = None;
    from.token_file = Some(args.from_token_file.clone());
    let source = from.client()?;
    let mut to = g.clone();
    if let Some(url) = &args.to {
        to.server = url.clone();
    }
    if let Some(f) = &args.to_token_file {
        to.token_file = Some(f.clone());
    }
    let target = HttpTarget::new(to.client()?);
    let opts = SyncOptions {
        parallel: args.parallel.max(1),
        ..SyncOptions::default()
    };
    let pb = bar(None, "sync");
    let report = bunker_sync::sync(
        &source,
        &target,
        &Filter::new(args.names.clone()),
        &opts,
        &|p| {
            pb.set_length(p.bytes_total);
            pb.set_position(p.bytes_done);
            pb.set_message(format!("sync {}/{} {}", p.index, p.count, p.snapshot));
            pb.set_prefix(format!("{} sent", bytes(p.wire_bytes)));
        },
    );
    pb.finish_and_clear();
    let report = report.map_err(failure)?;
    if g.json {
        println!("{}", serde_json::to_string(&report)?);
        return Ok(());
    }
    for s in report.snapshots.iter().filter(|s| s.copied) {
        println!(
            "{}@{} -> @{}: {} in {:.1} s, {} of {} chunks sent ({})",
            s.name,
            s.source_id,
            s.target_id.map_or("?".into(), |i| i.to_string()),
            bytes(s.logical_bytes),
            s.seconds,
            s.chunks_sent,
            s.chunks,
            bytes(s.wire_bytes)
        );
    }
    println!(
        "copied {}, already there {}: {} in {:.1} s ({:.2} GB/s), {} sent ({:.3} GB/s on the wire)",
        report.copied,
        report.skipped,
        bytes(report.logical_bytes),
        report.seconds,
        rate(report.logical_bytes, report.seconds),
        bytes(report.wire_bytes),
        rate(report.wire_bytes, report.seconds),
    );
    println!(
        "target holds {} snapshots of these names; newest verify or drill: {}",
        report.target_snapshots,
        report.newest_check_unix_ms.map_or("never".into(), time)
    );
    Ok(())
}

/// Exit 4 when the source sent bad data, 3 for a source name or snapshot
/// not found, else 1.
fn failure(e: SyncError) -> Failure {
    let code = match &e {
        e if e.is_bad_data() => 4,
        SyncError::Source(c) if c.kind() == bunker_client::ErrorKind::NotFound => 3,
        _ => 1,
    };
    Failure::with_code(code, anyhow::Error::new(e))
}

/// The rest of `bunker sync --help`, after the options; also in docs/CLI.md.
pub(crate) const LONG_HELP: &str = r##"Copies snapshots from the server at --from to the target (--to, default
--server), oldest first: every snapshot of the source whose name equals or
starts with one of the NAME-or-PREFIX arguments (all when none) and that the
target does not hold yet. A copy keeps its name, creation time, size,
whole-image BLAKE3 and source text, and records its origin (the source's
repository id and snapshot id), so no snapshot is copied twice, also by a
rerun or by two syncs at once.

Only the chunks the target lacks cross the wire, as the source stores them
(zstd frames are not recompressed); the target checks every chunk against
its BLAKE3 id before storing it, and every manifest entry against the stored
chunk's length. The source token needs only the reader role, the target
token only the writer role (append-only): nothing in a sync deletes, on
either side. Prune and delete on the source never touch the target.

Interrupted at any point, the target shows no partial snapshot; the next run
sends only what is still missing. Each manifest is spooled to a temporary
file (TMPDIR), 80 bytes per chunk.

Prints one line per snapshot copied, then:

    copied 20, already there 0: 96.00 MiB in 1.2 s (0.08 GB/s), 41.30 MiB sent (0.036 GB/s on the wire)
    target holds 20 snapshots of these names; newest verify or drill: never

With --json: {"source","snapshots":[{"name","source_id","target_id",
"copied","logical_bytes","chunks","chunks_sent","wire_bytes","seconds"}],
"copied","skipped","logical_bytes","chunks_sent","wire_bytes","seconds",
"target_snapshots","newest_check_unix_ms"}. wire_bytes counts chunk frames,
missing-chunk queries and commit bodies (not HTTP headers).

Exit 4 when the source sent bad data (a chunk not matching its id, a
manifest entry the target refuses, sizes or hashes that do not add up):
nothing wrong was stored. Exit 1 for a refused token or scope (403 from the
target) and for unreachable or failing servers: run it again."##;
