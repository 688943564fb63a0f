//! `bunker drill NAME[@ID] | --all [--server-side]`: a restore to nowhere with
//! full verification, timed, here (the result is reported to the server,
//! which records it as a client's report) or, with `--server-side`, on the
//! server (which reads every chunk itself and records a server-verified
//! result). Exit code 0 only if everything verified.

use bunker_client::Target;
use serde::Serialize;

use super::parse_ref;
use crate::output::{bytes, rate};
use crate::{CmdResult, Failure, Global};

#[derive(clap::Args)]
pub struct Args {
    /// NAME or NAME@ID.
    #[arg(required_unless_present = "all", conflicts_with = "all", value_parser = parse_ref)]
    snapshot: Option<super::SnapRef>,
    /// Drill the latest snapshot of every name.
    #[arg(long)]
    all: bool,
    /// Have the server read and verify the snapshot itself, and record
    /// the result as verified by the server (no image crosses the network).
    #[arg(long)]
    server_side: bool,
}

#[derive(Serialize)]
struct Drill {
    name: String,
    id: Option<u64>,
    bytes: u64,
    seconds: f64,
    gb_per_s: f64,
    estimated_restore_seconds: f64,
    /// Unknown for a server drill.
    chunks_verified: Option<u64>,
    verified: bool,
    error: Option<String>,
    /// `client` (this drill ran here) or `server`.
    verified_by: bunker_api::Verifier,
}

pub fn run(g: &Global, args: Args) -> CmdResult {
    let client = g.client()?;
    let targets: Vec<(String, Option<u64>)> = if args.all {
        let mut names: Vec<String> = client.list(None)?.into_iter().map(|s| s.name).collect();
        names.dedup();
        names.into_iter().map(|n| (n, None)).collect()
    } else {
        args.snapshot
            .iter()
            .map(|r| (r.name.clone(), r.id))
            .collect()
    };
    let mut results = Vec::new();
    let mut worst: Option<Failure> = None;
    for (name, id) in targets {
        if args.server_side {
            let outcome = client.server_drill(&name, id);
            let d = match outcome {
                Ok(d) => d,
                Err(e) => {
                    results.push(failed(
                        name,
                        id,
                        e.to_string(),
                        bunker_api::Verifier::Server,
                    ));
                    let f = Failure::from(e);
                    if worst.as_ref().is_none_or(|w| w.code < f.code) {
                        worst = Some(f);
                    }
                    continue;
                }
            };
            if let Some(e) = &d.error {
                let f = Failure::with_code(
                    4,
                    anyhow::anyhow!("the server's drill of {}@{} failed: {e}", d.name, d.id),
                );
                if worst.as_ref().is_none_or(|w| w.code < f.code) {
                    worst = Some(f);
                }
            }
            let gbps = rate(d.bytes, d.seconds);
            results.push(Drill {
                name: d.name,
                id: Some(d.id),
                bytes: d.bytes,
                seconds: d.seconds,
                gb_per_s: gbps,
                estimated_restore_seconds: d.seconds,
                chunks_verified: None,
                verified: d.ok,
                error: d.error,
                verified_by: bunker_api::Verifier::Server,
            });
            continue;
        }
        let outcome = client.restore(&name, id, Target::Null, &mut |_| {});
        // The server keeps each snapshot's last drill; a drill still counts
        // (and still fails) when this report cannot be delivered.
        let reported = match &outcome {
            Ok(r) => Some((
                r.snapshot.id,
                bunker_api::DrillResult {
                    ok: true,
                    bytes: r.bytes,
                    seconds: r.seconds,
                    error: None,
                    verify: None,
                },
            )),
            // A drill that never reached the data (no such snapshot, no
            // server, a refused token) says nothing about the snapshot.
            Err(
                bunker_client::Error::NotFound { .. }
                | bunker_client::Error::Unreachable { .. }
                | bunker_client::Error::Unauthorized { .. }
                | bunker_client::Error::Forbidden { .. },
            ) => None,
            Err(e) => id
                .or_else(|| client.snapshot(&name, None).ok().map(|s| s.id))
                .map(|id| {
                    (
                        id,
                        bunker_api::DrillResult {
                            ok: false,
                            bytes: 0,
                            seconds: 0.0,
                            error: Some(e.to_string()),
                            verify: None,
                        },
                    )
                }),
        };
        if let Some((id, result)) = reported {
            if let Err(e) = client.report_drill(&name, id, &result) {
                eprintln!("warning: the server did not record the drill of {name}@{id}: {e}");
            }
        }
        match outcome {
            Ok(r) => {
                let gbps = rate(r.bytes, r.seconds);
                results.push(Drill {
                    name,
                    id: Some(r.snapshot.id),
                    bytes: r.bytes,
                    seconds: r.seconds,
                    gb_per_s: gbps,
                    estimated_restore_seconds: if gbps > 0.0 {
                        r.snapshot.size_bytes as f64 / (gbps * 1e9)
                    } else {
                        0.0
                    },
                    chunks_verified: Some(r.chunks_verified),
                    verified: true,
                    error: None,
                    verified_by: bunker_api::Verifier::Client,
                });
            }
            Err(e) => {
                results.push(failed(
                    name,
                    id,
                    e.to_string(),
                    bunker_api::Verifier::Client,
                ));
                let f = Failure::from(e);
                if worst.as_ref().is_none_or(|w| w.code < f.code) {
                    worst = Some(f);
                }
            }
        }
    }
    if g.json {
        // One object for one snapshot, an array for --all.
        if args.all {
            println!("{}", serde_json::to_string(&results)?);
        } else if let Some(r) = results.first() {
            println!("{}", serde_json::to_string(r)?);
        }
    } else {
        for d in &results {
            match (&d.error, d.chunks_verified) {
                (None, Some(chunks)) => println!(
                    "drill {}@{}: OK, {} verified in {:.1} s ({:.2} GB/s, {} chunks); estimated full restore at this rate: {:.1} s",
                    d.name,
                    d.id.unwrap_or_default(),
                    bytes(d.bytes),
                    d.seconds,
                    d.gb_per_s,
                    chunks,
                    d.estimated_restore_seconds
                ),
                (None, None) => println!(
                    "drill {}@{}: OK, {} read and verified by the server in {:.1} s ({:.2} GB/s)",
                    d.name,
                    d.id.unwrap_or_default(),
                    bytes(d.bytes),
                    d.seconds,
                    d.gb_per_s,
                ),
                (Some(e), _) => match (d.verified_by, d.id) {
                    (bunker_api::Verifier::Server, Some(id)) => {
                        println!("drill {}@{id} (server): FAILED: {e}", d.name)
                    }
                    _ => println!("drill {}: FAILED: {e}", d.name),
                },
            }
        }
    }
    match worst {
        Some(f) => Err(f),
        None => Ok(()),
    }
}

fn failed(
    name: String,
    id: Option<u64>,
    error: String,
    verified_by: bunker_api::Verifier,
) -> Drill {
    Drill {
        name,
        id,
        bytes: 0,
        seconds: 0.0,
        gb_per_s: 0.0,
        estimated_restore_seconds: 0.0,
        chunks_verified: match verified_by {
            bunker_api::Verifier::Client => Some(0),
            bunker_api::Verifier::Server => None,
        },
        verified: false,
        error: Some(error),
        verified_by,
    }
}

/// The rest of `bunker drill --help`, after the options; also in docs/CLI.md.
pub(crate) const LONG_HELP: &str = r##"A restore to nowhere: fetches and verifies every non-zero chunk and the
whole-image BLAKE3, writes nothing, reports the rate. --all drills the
latest snapshot of every name the token may see. Prints on stdout, one line
per snapshot:

    drill vol1@2: OK, 257.28 MiB verified in 0.2 s (1.23 GB/s, 579 chunks); estimated full restore at this rate: 0.2 s
    drill vol2: FAILED: verification failed: the restored image hashes to cac2…, the snapshot's BLAKE3 is 89fd…

The exit code is the worst over all drilled snapshots (4 over 3 over 1).

Each result is reported to the server (POST .../drill), which keeps it as
the snapshot's last drill (bunker snapshots, /metrics). A drill that never
reached the data (unknown snapshot, server unreachable, token refused or not
allowed) is not reported: it says nothing about the snapshot. If the report
itself fails, the drill's result and exit code stand and stderr says
warning: the server did not record the drill of vol1@2: …. The server
records such a report as the token's claim (verified_by: client, with the
token's id and label): it cannot tell whether the drill ran.

--server-side asks the server to drill the snapshot itself (POST .../drill
with {"verify": "server"}): it reads every chunk, checks each one and the
whole-image BLAKE3, and records the result as verified by the server, which
no client report replaces (last_server_drill). Nothing crosses the network
but the answer; the request takes as long as reading the snapshot on the
server. One server drill runs at a time (another gets 409 busy).

    drill vol1@2: OK, 257.28 MiB read and verified by the server in 0.2 s (1.31 GB/s)
    drill vol2@5 (server): FAILED: after 8388608 bytes: corrupt data in packs/02/00/0000000000000002.pack at offset 4194432 (chunk 5be2…): record checksum mismatch

With --json: one object
{"name","id","bytes","seconds","gb_per_s","estimated_restore_seconds","chunks_verified","verified","error","verified_by"}
(verified_by is client or server; chunks_verified is null for a server
drill), or an array of them when more than one snapshot was drilled."##;
