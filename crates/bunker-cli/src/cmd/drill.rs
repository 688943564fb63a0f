//! `bunker drill NAME[@ID] | --all`: a restore to nowhere with full
//! verification, timed. Exit code 0 only if everything verified.

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
}

#[derive(Serialize)]
struct Drill {
    name: String,
    id: Option<u64>,
    bytes: u64,
    seconds: f64,
    gb_per_s: f64,
    estimated_restore_seconds: f64,
    chunks_verified: u64,
    verified: bool,
    error: Option<String>,
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
                    chunks_verified: r.chunks_verified,
                    verified: true,
                    error: None,
                });
            }
            Err(e) => {
                results.push(Drill {
                    name,
                    id,
                    bytes: 0,
                    seconds: 0.0,
                    gb_per_s: 0.0,
                    estimated_restore_seconds: 0.0,
                    chunks_verified: 0,
                    verified: false,
                    error: Some(e.to_string()),
                });
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
            match &d.error {
                None => println!(
                    "drill {}@{}: OK, {} verified in {:.1} s ({:.2} GB/s, {} chunks); estimated full restore at this rate: {:.1} s",
                    d.name,
                    d.id.unwrap_or_default(),
                    bytes(d.bytes),
                    d.seconds,
                    d.gb_per_s,
                    d.chunks_verified,
                    d.estimated_restore_seconds
                ),
                Some(e) => println!("drill {}: FAILED: {e}", d.name),
            }
        }
    }
    match worst {
        Some(f) => Err(f),
        None => Ok(()),
    }
}
