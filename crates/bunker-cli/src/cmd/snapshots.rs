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
    let client = g.client()?;
    let s = client.stats()?;
    // Writers may not see pull jobs, and older servers have none.
    let jobs = match client.sync_jobs() {
        Ok(jobs) => jobs,
        Err(bunker_client::Error::Forbidden { .. } | bunker_client::Error::NotFound { .. }) => {
            Vec::new()
        }
        Err(e) => return Err(e.into()),
    };
    if g.json {
        let mut v = serde_json::to_value(&s)?;
        if let Some(o) = v.as_object_mut() {
            o.insert("sync".into(), serde_json::to_value(&jobs)?);
        }
        println!("{v}");
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
    if !jobs.is_empty() {
        println!();
        print_jobs(&jobs, bunker_store::clock::now_unix_ms());
    }
    Ok(())
}

/// The pull jobs' table: one row per job, then the last error of each
/// job whose last run failed.
fn print_jobs(jobs: &[bunker_api::SyncJob], now: i64) {
    let ago = |t: i64| crate::output::age(((now - t).max(0) / 1000) as u64);
    println!(
        "{:<16} {:<28} {:>8} {:<16} {:>9} {:>11} {:>11} {:>8} {:>6} {:<12}",
        "SYNC JOB",
        "FROM",
        "EVERY",
        "LAST RUN",
        "COPIED",
        "LOGICAL",
        "WIRE",
        "LAG",
        "HELD",
        "CHECKED"
    );
    for j in jobs {
        let (last, copied, logical, wire) = match &j.last_run {
            None if j.running => (
                "running".to_string(),
                String::new(),
                String::new(),
                String::new(),
            ),
            None => (
                "never".to_string(),
                String::new(),
                String::new(),
                String::new(),
            ),
            Some(r) => (
                format!(
                    "{} {} ago{}",
                    if r.ok { "ok" } else { "FAILED" },
                    ago(r.ended_unix_ms),
                    if j.running { "*" } else { "" }
                ),
                r.snapshots_copied.to_string(),
                bytes(r.logical_bytes),
                bytes(r.wire_bytes),
            ),
        };
        println!(
            "{:<16} {:<28} {:>8} {:<16} {:>9} {:>11} {:>11} {:>8} {:>6} {:<12}",
            j.name,
            j.from,
            crate::output::interval(j.interval_seconds),
            last,
            copied,
            logical,
            wire,
            j.lag_seconds.map_or("?".to_string(), crate::output::age),
            j.target_snapshots,
            j.newest_check_unix_ms
                .map_or("never".to_string(), |t| format!("{} ago", ago(t))),
        );
    }
    for j in jobs {
        if let Some(e) = j.last_run.as_ref().and_then(|r| r.error.as_ref()) {
            println!("{}: {e}", j.name);
        }
    }
}

/// The rest of `bunker snapshots --help`, after the options; also in docs/CLI.md.
pub(crate) const LONG_HELP: &str = r##"Lists the snapshots the token may see (all, or those of NAME), by name, then
id. An unknown name gives an empty list and exit 0. VERIFIED and DRILLED are
the last verify that covered the snapshot and its last restore drill, as the
server recorded them: ok or FAILED and how long ago (seconds, minutes, hours
or days), or never. DRILLED ends with who verified the data: (client) for a
drill a client ran and reported (the server cannot check it), (server) for
one the server ran itself (bunker drill --server-side).

Three volumes, each backed up for two to four days (the day images of
bunker-gen --days, backed up within seconds), and vol1-test, a copy of
vol1's latest image; then bunker gc, vol1 pruned to its last 2, bunker gc
again, bunker verify and, half a minute later, bunker drill --all (which
drills the latest snapshot of each name):

    NAME                           ID TIME (UTC)                    SIZE    NEW BYTES  VERIFIED         DRILLED
    db1                             3 2026-11-22 04:05:37Z     32.00 MiB     7.51 MiB  ok 34s ago       never
    db1                             6 2026-11-22 04:05:37Z     32.16 MiB     1.17 MiB  ok 34s ago       ok 0s ago
    vol1                            7 2026-11-22 04:05:37Z     64.64 MiB     3.45 MiB  ok 34s ago       never
    vol1                            9 2026-11-22 04:05:37Z     64.97 MiB     4.40 MiB  ok 34s ago       ok 0s ago
    vol1-test                      10 2026-11-22 04:05:42Z     64.97 MiB          0 B  ok 34s ago       ok 0s ago
    vol2                            2 2026-11-22 04:05:37Z     64.00 MiB    20.29 MiB  ok 34s ago       never
    vol2                            5 2026-11-22 04:05:37Z     64.32 MiB     2.03 MiB  ok 34s ago       never
    vol2                            8 2026-11-22 04:05:37Z     64.64 MiB     3.18 MiB  ok 34s ago       ok 0s ago

With --json: the GET /v1/snapshots body, where the details are in
last_verify, last_drill and last_server_drill."##;

/// The rest of `bunker stats --help`, after the options; also in docs/CLI.md.
pub(crate) const STATS_LONG_HELP: &str = r##"Repository figures, for any token, without a scan: the server reads the
space file the last GC wrote, the snapshot headers and the list of pack
files (docs/GC.md, "Space accounting"). The same repository as the example of
bunker snapshots --help:

    $ bunker stats
    snapshots          8
    logical bytes      451.71 MiB
    unique bytes       164.14 MiB (after dedup)
    referenced stored  58.56 MiB (after compression)
    pack files         63.20 MiB in 9 packs
    dedup ratio        2.75x
    compression ratio  2.80x
    chunks             459
    accounted by GC    2026-11-22 04:05:45Z (+ backups since)

    NAME                     SNAPSHOTS      LOGICAL         UNIQUE FREES (STORED)
    db1                              2    64.16 MiB      34.26 MiB       8.68 MiB
    vol1                             2   129.61 MiB       9.12 MiB       3.72 MiB
    vol1-test                        1    64.97 MiB            0 B            0 B
    vol2                             3   192.96 MiB      67.31 MiB      25.50 MiB
- logical bytes: the sum of snapshot sizes;
- unique bytes: raw bytes of the distinct chunks the snapshots reference
  (after dedup, before compression);
- referenced stored: the same chunks' bytes in packs (after compression);
- pack files: the size of all pack files, which also holds garbage that GC
  has not reclaimed (dead records in packs kept whole) and record headers
  and trailers;
- dedup ratio is logical/unique, compression ratio unique/referenced stored;
- accounted by GC: when the last GC measured the data; snapshots and packs
  written since are added from their headers and lengths. never before the
  first GC: then every chunk counts for the backup that stored it.

The table has one row per snapshot name. UNIQUE is the raw size of the
chunks that only that name's snapshots reference; FREES (STORED) their
stored size, what deleting all of the name's snapshots frees once GC
reclaims it (at pack granularity). Data names share counts for none of them:
vol1-test is a copy of vol1's latest image, so it frees nothing, and vol1
frees only the chunks of vol1@7 that the copy does not hold. A name whose
snapshots were deleted after the last GC shows (N deleted, awaiting GC):
their data counts until the next GC.

On a server with pull jobs ([[sync]] in its config, docs/OPERATIONS.md,
"Scheduled pull jobs"), admin and reader tokens also get one row per job:
its source, interval, how its last run ended (* while the next runs), the
snapshots, logical bytes and wire bytes that run copied, LAG (the age of
the newest source snapshot not copied yet; 0 when up to date, ? before a
run reached the source), HELD (snapshots of the job's names here) and
CHECKED (the newest verify or drill of any of them); then the error of each
job whose last run failed:

    SYNC JOB         FROM                            EVERY LAST RUN            COPIED     LOGICAL        WIRE      LAG   HELD CHECKED
    site-a           http://10.0.0.5:7711               1h ok 12m ago               1   64.32 MiB    2.03 MiB       0      9 3h ago

With --json: the GET /v1/stats body, which adds index_bytes, with the
GET /v1/sync jobs under "sync"."##;
