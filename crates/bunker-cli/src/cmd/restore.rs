//! `bunker restore NAME[@ID] TARGET`: parallel, verified, sparse; a file
//! appears under its name only complete and verified.

use std::path::PathBuf;

use bunker_client::Target;
use serde::Serialize;

use super::parse_ref;
use crate::output::{bar, bytes, rate};
use crate::{CmdResult, Global};

#[derive(clap::Args)]
pub struct Args {
    /// NAME or NAME@ID (default: the latest snapshot of NAME).
    #[arg(value_parser = parse_ref)]
    snapshot: super::SnapRef,
    /// File, block device, or - for stdout.
    target: PathBuf,
    /// Replace an existing regular file (once the new image is complete
    /// and verified), or write over a block device.
    #[arg(long)]
    force: bool,
}

#[derive(Serialize)]
pub struct Report<'a> {
    pub name: &'a str,
    pub id: u64,
    pub bytes: u64,
    pub seconds: f64,
    pub gb_per_s: f64,
    pub chunks_verified: u64,
    pub blake3: &'a str,
    pub verified: bool,
}

pub fn run(g: &Global, args: Args) -> CmdResult {
    let client = g.client()?;
    let super::SnapRef { name, id } = args.snapshot.clone();
    let mut stdout;
    let target = if args.target.as_os_str() == "-" {
        stdout = std::io::stdout().lock();
        Target::Stream(&mut stdout)
    } else {
        Target::File {
            path: args.target.clone(),
            force: args.force,
        }
    };
    let pb = bar(None, &format!("restore {name}"));
    let report = client.restore(&name, id, target, &mut |p| {
        pb.set_length(p.total);
        pb.set_position(p.bytes);
    });
    pb.finish_and_clear();
    let r = report?;
    let s = &r.snapshot;
    let line = Report {
        name: &s.name,
        id: s.id,
        bytes: r.bytes,
        seconds: r.seconds,
        gb_per_s: rate(r.bytes, r.seconds),
        chunks_verified: r.chunks_verified,
        blake3: &s.blake3,
        verified: true,
    };
    if g.json {
        eprintln!("{}", serde_json::to_string(&line)?);
    } else {
        eprintln!(
            "restored {}@{}: {} in {:.1} s ({:.2} GB/s), {} chunks verified, {} as holes, BLAKE3 {} ok",
            s.name,
            s.id,
            bytes(r.bytes),
            r.seconds,
            line.gb_per_s,
            r.chunks_verified,
            bytes(r.zero_bytes),
            &s.blake3[..16]
        );
    }
    Ok(())
}
